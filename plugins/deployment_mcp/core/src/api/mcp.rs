//! `/mcp`, the Model Context Protocol endpoint inside the plugin's router. Its tools reach the
//! REST API through the typed client over the same router ([`crate::client::InProcess`]), as
//! the tool call's caller.

use std::sync::Arc;

use axum::{
    body::Body,
    http::{self, header},
    response::IntoResponse,
    Router,
};
use plugin_guest::Role;
use tokio_util::sync::CancellationToken;

use super::{routes::NeedsRole, ApiError, ApiState};

/// `/mcp`, the Model Context Protocol endpoint (Streamable HTTP, stateless: no session to
/// lose in a hot swap), unless `mcp.enabled` is off. It is not in [`super::routes::ROUTES`]: it speaks
/// JSON-RPC, not the REST API the OpenAPI document describes. Its tools call `rest` as the
/// caller, so the routes' own role checks and views apply to them; the endpoint itself needs
/// a key (any role), and a browser `Origin` must be loopback or in `mcp.allowed_origins`.
pub(super) fn mcp_route(state: &ApiState, rest: Router) -> Option<Router> {
    use rmcp::transport::streamable_http_server::{
        session::never::NeverSessionManager, StreamableHttpServerConfig, StreamableHttpService,
    };
    let settings = &state.coordinator.settings().mcp;
    if !settings.enabled {
        return None;
    }
    // Each tool call goes through the REST router as the MCP request's caller.
    let client = crate::client::InProcess::new(rest, None, format!("mcp-{}", random_id()));
    let server = crate::mcp::McpServer::new(
        client,
        settings.read_only,
        state.version,
        state.stop.clone(),
    )
    .audited(state.coordinator.records().clone());
    let rules: Arc<Vec<crate::mcp::OriginRule>> = Arc::new(
        crate::mcp::OriginRule::loopback()
            .into_iter()
            .chain(
                settings
                    .allowed_origins
                    .iter()
                    .filter_map(|origin| crate::mcp::OriginRule::parse(origin).ok()),
            )
            .collect(),
    );
    let config = StreamableHttpServerConfig::default()
        .with_legacy_session_mode(false)
        // Answers stream (SSE), so a long `wait` is not cut by the host's request timeout.
        .with_json_response(false)
        // Not the instance's stop token: at a swap, answers in flight (a `wait` the stop ends)
        // must still reach the client. Stateless, so there are no sessions to end.
        .with_cancellation_token(CancellationToken::new())
        // The host's own `server.body_limit_bytes` applies before this.
        .with_max_request_body_bytes(usize::MAX)
        // Which names the host answers to is the operator's business; keys guard the door.
        // The Origin is checked before the key (below), as the MCP specification asks.
        .disable_allowed_hosts();
    let service = StreamableHttpService::new(
        move || Ok(server.clone()),
        Arc::new(NeverSessionManager::default()),
        config,
    );
    let service = tower::ServiceBuilder::new()
        .layer(NeedsRole {
            needs: Role::User,
            action: "mcp.call",
        })
        .map_response(|response: http::Response<_>| response.map(Body::new))
        .service(service);
    // A browser page of another origin gets 403 before anything else, key or not.
    let check_origin = move |request: axum::extract::Request, next: axum::middleware::Next| {
        let rules = Arc::clone(&rules);
        async move {
            let origin = request
                .headers()
                .get(header::ORIGIN)
                .map(|value| value.to_str().unwrap_or("\u{0}"));
            if crate::mcp::origin_allowed(origin, &rules) {
                next.run(request).await
            } else {
                ApiError::ForbiddenOrigin(origin.unwrap_or_default().to_owned()).into_response()
            }
        }
    };
    Some(
        Router::new()
            .route_service("/mcp", service)
            .layer(axum::middleware::from_fn(check_origin)),
    )
}

/// A short random id for the requests MCP tools make (`mcp-<id>-<n>`).
fn random_id() -> String {
    let mut random = [0u8; 6];
    if getrandom::fill(&mut random).is_err() {
        random = [0; 6];
    }
    hex::encode(random)
}
