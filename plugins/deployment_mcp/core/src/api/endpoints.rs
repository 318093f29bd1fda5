//! Every operation of the API as a method and a path after the mount, declared once: the router
//! (`routes::ROUTES`) serves them and the typed client (`crate::client`) calls them, so a path
//! cannot differ between the two.

use std::fmt;

use axum::http::Method;

/// One operation: its method and its path after the mount, in axum's syntax
/// (`/deployments/{id}`).
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub method: Method,
    pub path: &'static str,
}

impl Endpoint {
    const fn new(method: Method, path: &'static str) -> Endpoint {
        Endpoint { method, path }
    }

    /// The request target: the path with its parameters (`{id}`, then `{delivery}`) filled in
    /// order from `params`, each percent-encoded so that an argument cannot add segments, and
    /// `query` (already encoded) when not empty. A parameter without an argument stays as it is.
    pub fn target(&self, params: &[&str], query: &str) -> String {
        let mut target = String::with_capacity(self.path.len() + query.len() + 1);
        let mut params = params.iter();
        let mut rest = self.path;
        while let Some((before, after)) = rest.split_once('{') {
            let Some((name, after)) = after.split_once('}') else {
                break;
            };
            target.push_str(before);
            match params.next() {
                Some(param) => target.push_str(&encode_segment(param)),
                None => {
                    target.push('{');
                    target.push_str(name);
                    target.push('}');
                }
            }
            rest = after;
        }
        target.push_str(rest);
        if !query.is_empty() {
            target.push('?');
            target.push_str(query);
        }
        target
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.method, self.path)
    }
}

/// A path segment with every byte but the unreserved ones (`A-Z a-z 0-9 - . _ ~`)
/// percent-encoded.
fn encode_segment(text: &str) -> String {
    let mut encoded = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            encoded.push(char::from(byte));
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

pub static STATUS: Endpoint = Endpoint::new(Method::GET, "/status");
pub static DASHBOARD: Endpoint = Endpoint::new(Method::GET, "/dashboard");
pub static OPENAPI: Endpoint = Endpoint::new(Method::GET, "/openapi.json");
pub static TRIGGER: Endpoint = Endpoint::new(Method::POST, "/trigger-local");
/// The original's name for [`TRIGGER`].
pub static ONE_CLICK: Endpoint = Endpoint::new(Method::POST, "/one-click");
pub static HISTORY: Endpoint = Endpoint::new(Method::GET, "/history");
pub static DEPLOYMENT: Endpoint = Endpoint::new(Method::GET, "/deployments/{id}");
pub static LOGS: Endpoint = Endpoint::new(Method::GET, "/deployments/{id}/logs");
pub static CANCEL: Endpoint = Endpoint::new(Method::POST, "/deployments/{id}/cancel");
pub static RETRY: Endpoint = Endpoint::new(Method::POST, "/deployments/{id}/retry");
pub static APPROVE: Endpoint = Endpoint::new(Method::POST, "/deployments/{id}/approve");
pub static REJECT: Endpoint = Endpoint::new(Method::POST, "/deployments/{id}/reject");
pub static ROLLBACK: Endpoint = Endpoint::new(Method::POST, "/deployments/{id}/rollback");
pub static ENVIRONMENTS: Endpoint = Endpoint::new(Method::GET, "/environments");
pub static CREATE_ENVIRONMENT: Endpoint = Endpoint::new(Method::POST, "/environments");
pub static ENVIRONMENT: Endpoint = Endpoint::new(Method::GET, "/environments/{id}");
pub static REPLACE_ENVIRONMENT: Endpoint = Endpoint::new(Method::PUT, "/environments/{id}");
pub static DELETE_ENVIRONMENT: Endpoint = Endpoint::new(Method::DELETE, "/environments/{id}");
pub static WINDOWS: Endpoint = Endpoint::new(Method::GET, "/windows");
pub static CREATE_WINDOW: Endpoint = Endpoint::new(Method::POST, "/windows");
pub static WINDOW: Endpoint = Endpoint::new(Method::GET, "/windows/{id}");
pub static DELETE_WINDOW: Endpoint = Endpoint::new(Method::DELETE, "/windows/{id}");
pub static EXPLAIN_WINDOWS: Endpoint = Endpoint::new(Method::GET, "/windows/explain");
pub static CALENDAR: Endpoint = Endpoint::new(Method::GET, "/calendar");
pub static SCHEDULES: Endpoint = Endpoint::new(Method::GET, "/schedules");
pub static CREATE_SCHEDULE: Endpoint = Endpoint::new(Method::POST, "/schedules");
pub static SCHEDULE: Endpoint = Endpoint::new(Method::GET, "/schedules/{id}");
pub static DELETE_SCHEDULE: Endpoint = Endpoint::new(Method::DELETE, "/schedules/{id}");
pub static SCHEDULE_NEXT: Endpoint = Endpoint::new(Method::GET, "/schedules/{id}/next");
pub static SUBSCRIPTIONS: Endpoint = Endpoint::new(Method::GET, "/subscriptions");
pub static CREATE_SUBSCRIPTION: Endpoint = Endpoint::new(Method::POST, "/subscriptions");
pub static SUBSCRIPTION: Endpoint = Endpoint::new(Method::GET, "/subscriptions/{id}");
pub static DELETE_SUBSCRIPTION: Endpoint = Endpoint::new(Method::DELETE, "/subscriptions/{id}");
pub static DELIVERIES: Endpoint = Endpoint::new(Method::GET, "/subscriptions/{id}/deliveries");
pub static REDELIVER: Endpoint = Endpoint::new(
    Method::POST,
    "/subscriptions/{id}/deliveries/{delivery}/redeliver",
);
pub static HEALTH_CHECK: Endpoint = Endpoint::new(Method::POST, "/environments/{id}/health-check");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_fill_their_segments_and_cannot_add_one() {
        assert_eq!(
            DEPLOYMENT.target(&["dep-1-ab"], ""),
            "/deployments/dep-1-ab"
        );
        assert_eq!(
            LOGS.target(&["../x y"], "tail=5"),
            "/deployments/..%2Fx%20y/logs?tail=5"
        );
        assert_eq!(STATUS.to_string(), "GET /status");
        assert_eq!(
            REDELIVER.target(&["hooks", "d/1 {id}"], ""),
            "/subscriptions/hooks/deliveries/d%2F1%20%7Bid%7D/redeliver"
        );
        assert_eq!(STATUS.target(&[], "a=1"), "/status?a=1");
    }
}
