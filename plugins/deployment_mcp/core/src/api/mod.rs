//! The plugin's HTTP API under its mount (`/api/deployment` by default): an axum [`Router`]
//! served inside the plugin. The host hands each request over the ABI; [`Api::handle`] turns it
//! into an `http::Request`, runs the router, and turns the answer back (a streamed body stays
//! streamed).
//!
//! Layers, outermost first: routing (with the 405 answer made JSON, `Allow` kept), the per-route
//! role check, the handler. Handlers parse and check input, call the coordinator or the catalog, and
//! answer with a [`crate::wire`] type; nothing here runs a deployment.
//!
//! Code map: `routes` declares every route once in [`routes::ROUTES`] (path, method, least role,
//! handler) and builds the router with its role layer; `request` imports the host's request and
//! exports the answer; `extract` holds what handlers take from a request; `overview` (status,
//! dashboard), `deployments` (trigger, history, detail, logs, cancel, retry, gates, rollback),
//! `environments` (the catalog's CRUD and health checks) are the handlers; `error` maps every
//! failure to the JSON error answer; `openapi` the document built from the same handlers; `mcp`
//! the MCP endpoint beside them.

mod audited;
mod deployments;
pub mod endpoints;
mod environments;
mod error;
mod extract;
mod mcp;
pub mod openapi;
mod overview;
mod request;
mod routes;
mod schedules;
mod subscriptions;
mod windows;

use std::sync::Arc;

use axum::{
    extract::State,
    http::{HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    Router,
};
use plugin_guest::{Caller, Handler};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

pub(crate) use error::ApiError;
pub(crate) use extract::{DeploymentKey, Id, Mount, Params, RequestId, Who};
use mcp::mcp_route;
use request::from_http;
pub use request::ApiRequest;
#[cfg(test)]
pub(crate) use routes::ROUTES;
use routes::{method_not_allowed, router};
pub use routes::{route_roles, AUDIT_ACTION_HEADER, AUDIT_RESOURCE_HEADER};

use crate::{coordinator::Coordinator, persist::deployments::DeploymentStore};

type Answer = Result<Response, ApiError>;

/// What every handler shares: the coordinator, the cached status answer, and the token that
/// ends streams when the instance stops.
pub(crate) struct ApiState {
    coordinator: Arc<Coordinator>,
    status: overview::StatusCache,
    stop: CancellationToken,
    /// The plugin build's version, reported in answers.
    version: &'static str,
    /// The OpenAPI document served at `openapi.json` (built from these handlers' descriptions).
    openapi: fn() -> &'static [u8],
    /// Counts the `Idempotency-Key`s a request of this copy settled (its deployment started or
    /// the key freed): wakes the requests waiting on one.
    keys_settled: tokio::sync::watch::Sender<u64>,
}

impl ApiState {
    fn deployments(&self) -> DeploymentStore {
        DeploymentStore::new(self.coordinator.records().clone())
    }
}

type Shared = State<Arc<ApiState>>;

/// The plugin's request handler; the library exports it through the root module, and the
/// `rlib` lets benchmarks, the CLI and tests call it in-process.
pub struct Api {
    state: Arc<ApiState>,
    router: Router,
}

impl Api {
    pub fn new(
        coordinator: Arc<Coordinator>,
        version: &'static str,
        openapi: fn() -> &'static [u8],
    ) -> Api {
        // Ends the answers that stream (followed logs) at shutdown.
        let stop = CancellationToken::new();
        let state = Arc::new(ApiState {
            coordinator,
            status: overview::StatusCache::new(),
            stop,
            version,
            openapi,
            keys_settled: tokio::sync::watch::Sender::new(0),
        });
        let rest = router(Arc::clone(&state));
        let router = match mcp_route(&state, rest.clone()) {
            Some(mcp) => rest.merge(mcp),
            None => rest,
        };
        Api { router, state }
    }

    /// This API in this process as a transport of the typed client, calling as `caller` (the
    /// CLI's in-process mode); its requests are numbered `{id_prefix}-{n}`.
    pub fn in_process(
        &self,
        caller: Option<Caller>,
        id_prefix: String,
    ) -> crate::client::InProcess {
        crate::client::InProcess::new(self.router.clone(), caller, id_prefix)
    }

    /// The router every request runs through.
    #[cfg(test)]
    pub(crate) fn router(&self) -> &Router {
        &self.router
    }
}

impl Handler for Api {
    type Request = ApiRequest;

    async fn handle(&self, request: ApiRequest) -> plugin_guest::Response {
        let response = match request.0 {
            Ok(request) => {
                // Cheap handles (no copy of the text) for the message of a 405.
                let (method, uri) = (request.method().clone(), request.uri().clone());
                match self.router.clone().oneshot(request).await {
                    Ok(response) => method_not_allowed(&method, &uri, response),
                    Err(infallible) => match infallible {},
                }
            }
            Err(error) => error.into_response(),
        };
        from_http(response).await
    }

    async fn shutdown(&self) {
        let state = &self.state;
        state.stop.cancel();
        let host_stopping = crate::persist::runs::host_lifecycle(state.coordinator.records())
            .await
            .is_some_and(|lifecycle| lifecycle.state == "stopping");
        state.coordinator.shutdown(host_stopping).await;
    }
}

/// A JSON answer with a status.
pub(crate) fn json<T: serde::Serialize>(status: StatusCode, body: &T) -> Response {
    (status, axum::Json(body)).into_response()
}

/// A header value from text this API made (ids, mounts); an unusable one is left out.
pub(crate) fn header_value(text: &str) -> Option<HeaderValue> {
    HeaderValue::from_str(text).ok()
}
