//! The HTTP surface: routes, and the layers every request passes through (request id,
//! tracing, JSON errors, timeout, authentication, body limit), outermost first.

pub mod core;
pub mod dashboard;
pub mod dispatch;
pub mod error;
pub mod metrics;
pub mod openapi;
pub mod serve;
pub mod sse;
#[cfg(test)]
mod tests;

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, OnceLock,
    },
    time::Duration,
};

use axum::{
    body::Body,
    extract::Request,
    http::{header, HeaderValue, StatusCode},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{any, get, post},
    Router,
};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tower::ServiceBuilder;
use tower_http::{limit::RequestBodyLimitLayer, timeout::TimeoutLayer, trace::TraceLayer};

use crate::{
    auth::KeyRing, config::ServerConfig, plugin::slot::PluginSlot, services::events::EventBus,
};
use dispatch::MountState;
use error::ApiError;

#[derive(Clone)]
pub struct AppState {
    pub slots: Arc<Vec<Arc<PluginSlot>>>,
    pub bus: Arc<EventBus>,
    pub metrics: Arc<metrics::Metrics>,
    /// Cancelled when the host stops: streams end at once. Behind an `Arc`: the state is
    /// cloned for every request, and cloning a token takes a lock all requests would share.
    pub shutdown: Arc<CancellationToken>,
    /// Open SSE streams, at most `max_streams`.
    pub event_streams: Arc<Semaphore>,
    /// Streamed plugin answers (followed logs), at most `max_streams`.
    pub plugin_streams: Arc<Semaphore>,
    pub max_streams: usize,
}

impl AppState {
    pub fn new(
        slots: Vec<Arc<PluginSlot>>,
        bus: Arc<EventBus>,
        metrics: Arc<metrics::Metrics>,
        shutdown: CancellationToken,
        max_streams: usize,
    ) -> AppState {
        AppState {
            slots: Arc::new(slots),
            bus,
            metrics,
            shutdown: Arc::new(shutdown),
            event_streams: Arc::new(Semaphore::new(max_streams)),
            plugin_streams: Arc::new(Semaphore::new(max_streams)),
            max_streams,
        }
    }
}

/// The id of one request: the caller's `X-Request-Id` when it is sane, else a new one.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

pub fn router(state: AppState, keys: Arc<KeyRing>, server: &ServerConfig) -> Router {
    let mut app = Router::new()
        .route("/health", get(core::health))
        .route("/metrics", get(metrics::scrape))
        .route("/api/plugins", get(core::list_plugins))
        .route("/api/auth/whoami", get(core::whoami))
        .route("/api/openapi.json", get(openapi::document))
        .route("/api/plugins/{name}/reload", post(core::reload_plugin))
        .with_state(state.clone())
        .merge(dashboard::routes());
    for slot in state.slots.iter() {
        let mount = slot.config.mount.as_str();
        let mount_state = Arc::new(MountState {
            slot: Arc::clone(slot),
            body_limit: server.body_limit_bytes,
            shutdown: Arc::clone(&state.shutdown),
            streams: Arc::clone(&state.plugin_streams),
            max_streams: state.max_streams,
        });
        let events = Router::new()
            .route(&format!("{mount}/events"), get(sse::events))
            .with_state((state.clone(), mount_state.clone()));
        let forwarded = Router::new()
            .route(mount, any(dispatch::dispatch))
            .route(&format!("{mount}/{{*rest}}"), any(dispatch::dispatch))
            .with_state(mount_state);
        app = app.merge(events).merge(forwarded);
    }
    app.fallback(|| async { ApiError::not_found(error::default_message(StatusCode::NOT_FOUND)) })
        // Innermost: it changes the body type, which the middlewares above do not take.
        .layer(RequestBodyLimitLayer::new(server.body_limit_bytes))
        .layer(
            ServiceBuilder::new()
                .layer(middleware::from_fn(assign_request_id))
                .layer(middleware::from_fn_with_state(
                    Arc::clone(&state.metrics),
                    metrics::track,
                ))
                .layer(TraceLayer::new_for_http().make_span_with(|request: &Request| {
                    let id = request
                        .extensions()
                        .get::<RequestId>()
                        .map(|id| id.0.as_str())
                        .unwrap_or("");
                    tracing::debug_span!("request", id, method = %request.method(), path = %request.uri().path())
                }))
                .layer(middleware::map_response(json_errors))
                .layer(TimeoutLayer::with_status_code(
                    StatusCode::GATEWAY_TIMEOUT,
                    Duration::from_secs(server.request_timeout_secs),
                ))
                .layer(middleware::from_fn_with_state(keys, crate::auth::authenticate)),
        )
}

async fn assign_request_id(mut request: Request, next: Next) -> Response {
    let given = request
        .headers()
        .get("x-request-id")
        .and_then(|value| value.to_str().ok())
        .filter(|value| {
            !value.is_empty()
                && value.len() <= 128
                && value
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
        })
        .map(str::to_owned);
    let id = given.unwrap_or_else(new_request_id);
    request.extensions_mut().insert(RequestId(id.clone()));
    let mut response = next.run(request).await;
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert("x-request-id", value);
    }
    response
}

fn new_request_id() -> String {
    static PREFIX: OnceLock<String> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(1);
    let prefix = PREFIX.get_or_init(|| {
        let mut bytes = [0u8; 4];
        let _ = getrandom::fill(&mut bytes);
        hex::encode(bytes)
    });
    format!("{prefix}-{:x}", COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// Errors made outside our handlers (routing, limits, timeouts) come as bare statuses: give
/// them the JSON error shape too, so a client never sees an HTML or empty error page.
async fn json_errors(response: Response) -> Response {
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("application/json"));
    if is_json {
        return response;
    }
    let (mut parts, _) = response.into_parts();
    let replacement = ApiError::new(
        status,
        error::code_for(status),
        error::default_message(status),
    )
    .into_response();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    let (_, body) = replacement.into_parts();
    Response::from_parts(parts, Body::new(body))
}
