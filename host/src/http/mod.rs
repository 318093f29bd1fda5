//! The HTTP surface: routes, and the layers every request passes through (request id,
//! metrics and JSON errors, tracing, timeout, authentication, body limit), outermost first.

pub mod audit_log;
pub mod cluster;
pub mod core;
pub mod dashboard;
pub mod dispatch;
pub mod error;
pub mod layers;
pub mod metrics;
pub mod openapi;
pub mod refusals;
pub mod serve;
pub mod shares;
pub mod sse;
#[cfg(test)]
mod tests;

pub use layers::RequestId;

use std::{sync::Arc, time::Duration};

use axum::{
    extract::Request,
    http::StatusCode,
    routing::{any, get, post},
    Router,
};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tower::ServiceBuilder;
use tower_http::{limit::RequestBodyLimitLayer, trace::TraceLayer};

use crate::{
    audit::Auditor, auth::KeyRing, cluster::Membership, config::ServerConfig,
    plugin::slot::PluginSlot, services::events::EventBus,
};
use dispatch::MountState;
use error::ApiError;

#[derive(Clone)]
pub struct AppState {
    pub slots: Arc<Vec<Arc<PluginSlot>>>,
    pub bus: Arc<EventBus>,
    pub metrics: Arc<metrics::Metrics>,
    /// This node among those on the store.
    pub membership: Arc<Membership>,
    /// Cancelled when the host stops: streams end at once. Behind an `Arc`: the state is
    /// cloned for every request, and cloning a token takes a lock all requests would share.
    pub shutdown: Arc<CancellationToken>,
    /// Open SSE streams, at most `max_streams`.
    pub event_streams: Arc<Semaphore>,
    /// Streamed plugin answers (followed logs), at most `max_streams`.
    pub plugin_streams: Arc<Semaphore>,
    pub max_streams: usize,
    /// Each key's and each client address's share of all open streams.
    pub stream_shares: Arc<shares::StreamShares>,
    /// Where changes and refusals are recorded (`None`: not recorded, in unit tests).
    pub auditor: Option<Arc<Auditor>>,
}

impl AppState {
    pub fn new(
        slots: Vec<Arc<PluginSlot>>,
        bus: Arc<EventBus>,
        metrics: Arc<metrics::Metrics>,
        membership: Arc<Membership>,
        shutdown: CancellationToken,
        max_streams: usize,
        max_streams_per_client: usize,
    ) -> AppState {
        AppState {
            slots: Arc::new(slots),
            bus,
            metrics,
            membership,
            shutdown: Arc::new(shutdown),
            event_streams: Arc::new(Semaphore::new(max_streams)),
            plugin_streams: Arc::new(Semaphore::new(max_streams)),
            max_streams,
            stream_shares: Arc::new(shares::StreamShares::new(max_streams_per_client)),
            auditor: None,
        }
    }

    /// Records changes and refusals with `auditor`.
    pub fn audited(mut self, auditor: Arc<Auditor>) -> AppState {
        self.auditor = Some(auditor);
        self
    }
}

impl AppState {
    /// The configured plugins' names.
    pub fn plugin_names(&self) -> Vec<String> {
        self.slots.iter().map(|slot| slot.name.clone()).collect()
    }
}

pub fn router(state: AppState, keys: Arc<KeyRing>, server: &ServerConfig) -> Router {
    let mut app = Router::new()
        .route("/health", get(core::health))
        .route("/metrics", get(metrics::scrape))
        .route("/api/plugins", get(core::list_plugins))
        .route("/api/auth/whoami", get(core::whoami))
        .route("/api/openapi.json", get(openapi::document))
        .route("/api/plugins/{name}/reload", post(core::reload_plugin))
        .route("/api/cluster", get(cluster::cluster))
        .route("/api/cluster/nodes/{node_id}/drain", post(cluster::drain))
        .route("/api/audit", get(audit_log::list))
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
            stream_shares: Arc::clone(&state.stream_shares),
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
                .layer(layers::EdgeLayer::new(Arc::clone(&state.metrics)))
                .layer(TraceLayer::new_for_http().make_span_with(|request: &Request| {
                    let id = request
                        .extensions()
                        .get::<RequestId>()
                        .map(RequestId::as_str)
                        .unwrap_or("");
                    tracing::debug_span!("request", id, method = %request.method(), path = %request.uri().path())
                }))
                .layer(layers::RequestTimeoutLayer::new(Duration::from_secs(
                    server.request_timeout_secs,
                )))
                .layer(layers::AuthLayer::new(keys, state.auditor.clone())),
        )
}
