//! The plugin's HTTP API under its mount (`/api/deployment` by default).

use std::sync::Arc;

use plugin_guest::{Handler, Host, Request, Response, Role};
use serde_json::json;

use crate::environments::Environment;

/// The plugin's request handler; the library exports it through the root module, and the
/// `rlib` lets benchmarks and tests call it in-process.
pub struct Api {
    #[allow(dead_code)] // The store and event bus are used by the coordinator.
    host: Host,
    environments: Arc<Vec<Environment>>,
}

impl Api {
    pub fn new(host: Host, environments: Vec<Environment>) -> Api {
        Api {
            host,
            environments: Arc::new(environments),
        }
    }

    fn status(&self) -> Response {
        Response::json(
            200,
            &json!({
                "status": "idle",
                "active": [],
                "latest": null,
                "plugin_version": crate::VERSION,
            }),
        )
    }

    fn environments(&self) -> Response {
        let list: Vec<_> = self
            .environments
            .iter()
            .map(Environment::public_view)
            .collect();
        Response::json(
            200,
            &json!({ "environments": list, "total_count": self.environments.len() }),
        )
    }
}

impl Handler for Api {
    async fn handle(&self, request: Request) -> Response {
        let route = (request.method.as_str(), request.path.trim_end_matches('/'));
        let (needed, answer): (Role, fn(&Api) -> Response) = match route {
            ("GET", "/status") => (Role::User, Api::status),
            ("GET", "/environments") => (Role::Developer, Api::environments),
            (_, "/status" | "/environments") => {
                return Response::error(
                    405,
                    "method_not_allowed",
                    format!("{} is not supported on {}", request.method, request.path),
                )
            }
            _ => {
                return Response::error(
                    404,
                    "not_found",
                    format!("no deployment endpoint at {}", request.path),
                )
            }
        };
        if let Err(denied) = Response::require(&request, needed) {
            return denied;
        }
        answer(self)
    }
}
