//! What plugin code is written against: the request as a handler sees it ([`Request`],
//! [`Caller`], the [`Import`] trait for a handler's own request type), the answer it builds
//! ([`Response`], streamed or whole), role checks ([`Refusal`]) and the [`Handler`] trait itself.
//!
//! Plain std types only, no ABI types beyond the one `Import` takes: plugin authors use this
//! module and never see how requests cross the ABI (that is [`crate::runtime`]'s work).

use std::future::Future;

use abi_stable::std_types::Tuple2;
use plugin_api::PluginRequest;
pub use plugin_api::Role;

/// A request as plugin code sees it: plain std types, owned by this copy.
#[derive(Debug, Clone)]
pub struct Request {
    pub request_id: String,
    pub method: String,
    pub path: String,
    pub query: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub principal: Option<Caller>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub name: String,
    pub role: Role,
}

impl Request {
    /// The first value of a header, matched case-insensitively.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    /// The first value of a query parameter (no percent-decoding beyond `+` and `%XX`).
    pub fn query_param(&self, name: &str) -> Option<String> {
        query_param(&self.query, name)
    }

    /// The caller's role, or `None` for an anonymous request.
    pub fn role(&self) -> Option<Role> {
        self.principal.as_ref().map(|caller| caller.role)
    }
}

/// The first value of parameter `name` in a query string (`a=1&b=2`), decoded (`+` and `%XX`).
pub fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(key) == name).then(|| percent_decode(value))
    })
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(byte) => {
                        out.push(byte);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            byte => out.push(byte),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The rest of a streamed body, produced on the plugin's runtime.
pub type BodyStream = std::pin::Pin<Box<dyn futures_util::Stream<Item = Vec<u8>> + Send>>;

/// An answer as plugin code builds it.
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// When set, `body` goes out first and then every chunk of this stream, as it comes.
    pub stream: Option<BodyStream>,
}

impl std::fmt::Debug for Response {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Response")
            .field("status", &self.status)
            .field("headers", &self.headers)
            .field("body_len", &self.body.len())
            .field("streamed", &self.stream.is_some())
            .finish()
    }
}

impl Response {
    pub fn json(status: u16, value: &serde_json::Value) -> Response {
        Response {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: serde_json::to_vec(value).unwrap_or_default(),
            stream: None,
        }
    }

    /// A streamed answer: the client gets each chunk as `chunks` yields it.
    pub fn streamed(status: u16, content_type: &str, chunks: BodyStream) -> Response {
        Response {
            status,
            headers: vec![
                ("content-type".into(), content_type.into()),
                ("cache-control".into(), "no-cache".into()),
            ],
            body: Vec::new(),
            stream: Some(chunks),
        }
    }

    /// The host's error shape: `{"error": code, "message": message}`.
    pub fn error(status: u16, code: &str, message: impl Into<String>) -> Response {
        Response::json(
            status,
            &serde_json::json!({ "error": code, "message": message.into() }),
        )
    }

    pub fn with_header(mut self, name: &str, value: impl Into<String>) -> Response {
        self.headers.push((name.to_owned(), value.into()));
        self
    }

    /// 403 unless the caller holds at least `role`. The host authenticates; plugins decide
    /// which role each of their routes needs.
    pub fn require(request: &Request, role: Role) -> Result<(), Response> {
        match Refusal::of(request.role(), role) {
            Some(refusal) => Err(Response::error(
                refusal.status,
                refusal.code,
                refusal.message,
            )),
            None => Ok(()),
        }
    }
}

/// Why a caller may not call a route: 401 without a key, 403 below the route's role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
}

impl Refusal {
    /// `None` when a caller with role `caller` (`None`: no key) may call a route needing `needs`.
    pub fn of(caller: Option<Role>, needs: Role) -> Option<Refusal> {
        match caller {
            None => Some(Refusal {
                status: 401,
                code: "unauthorized",
                message: "send an API key in X-API-Key or Authorization: Bearer".into(),
            }),
            Some(has) if has < needs => Some(Refusal {
                status: 403,
                code: "forbidden",
                message: format!(
                    "this endpoint needs the {} role; your key has {}",
                    needs.as_str(),
                    has.as_str()
                ),
            }),
            Some(_) => None,
        }
    }
}

/// A request as a handler takes it, made from the host's with one copy of each field (the
/// request id is also kept apart, for the log lines of a streamed answer).
/// [`Request`] is the plain one. A handler built on a router imports into a type of its own
/// (an `http::Request`) straight from the host's, with no [`Request`] in between: on the
/// plugin route a copy of every field costs more than the route's own work.
pub trait Import: Sized + Send + 'static {
    fn import(request: PluginRequest) -> Self;
}

impl Import for Request {
    fn import(request: PluginRequest) -> Request {
        Request {
            request_id: request.request_id.into(),
            method: request.method.into(),
            path: request.path.into(),
            query: request.query.into(),
            headers: request
                .headers
                .into_iter()
                .map(|Tuple2(key, value)| (String::from(key), String::from(value)))
                .collect(),
            body: request.body.into(),
            principal: request.principal.into_option().map(|principal| Caller {
                name: principal.name.into(),
                role: principal.role,
            }),
        }
    }
}

/// What a plugin implements.
pub trait Handler: Send + Sync + 'static {
    /// What requests are imported as: [`Request`], or a type of the handler's own.
    type Request: Import;

    fn handle(&self, request: Self::Request) -> impl Future<Output = Response> + Send;

    /// Called once when the instance stops, after in-flight requests finished: finish or hand
    /// over long-running work here.
    fn shutdown(&self) -> impl Future<Output = ()> + Send {
        async {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(query: &str) -> Request {
        Request {
            request_id: String::new(),
            method: "GET".into(),
            path: "/".into(),
            query: query.into(),
            headers: vec![("X-Thing".into(), "1".into())],
            body: Vec::new(),
            principal: None,
        }
    }

    #[test]
    fn query_params_are_decoded() {
        let request = request("id=a%20b&x=1+2&flag");
        assert_eq!(request.query_param("id").as_deref(), Some("a b"));
        assert_eq!(request.query_param("x").as_deref(), Some("1 2"));
        assert_eq!(request.query_param("flag").as_deref(), Some(""));
        assert_eq!(request.query_param("nope"), None);
        assert_eq!(request.header("x-thing"), Some("1"));
    }

    #[test]
    fn truncated_escape_is_kept_literally() {
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%4"), "%4");
        assert_eq!(percent_decode("%zz"), "%zz");
    }

    #[test]
    fn role_gate() {
        let mut request = request("");
        assert_eq!(
            Response::require(&request, Role::User).map_err(|r| r.status),
            Err(401)
        );
        request.principal = Some(Caller {
            name: "u".into(),
            role: Role::User,
        });
        assert_eq!(
            Response::require(&request, Role::Admin).map_err(|r| r.status),
            Err(403)
        );
        assert!(Response::require(&request, Role::User).is_ok());
    }
}
