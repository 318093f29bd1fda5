//! Routes requests under a plugin's mount to the copy serving now.

use std::sync::Arc;

use axum::{
    body::{Body, Bytes},
    extract::{Request, State},
    http::{header, request::Parts, HeaderName, StatusCode},
    response::{IntoResponse, Response},
};
use futures_util::StreamExt;
use plugin_api::Role;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::{
    error::ApiError,
    shares::{ClientAddress, StreamHolder},
    RequestId,
};
use crate::{
    auth::Principal,
    plugin::{
        bridge,
        call::{CallError, Death, HostRequest},
        slot::PluginSlot,
    },
};

/// What the routes under one mount share; handed to them as an `Arc` (one reference count
/// per request, not one per field).
pub struct MountState {
    pub slot: Arc<PluginSlot>,
    pub body_limit: usize,
    /// Cancelled when the host stops: streamed answers end at once (shared with `AppState`).
    pub shutdown: Arc<CancellationToken>,
    /// Streamed answers open at once, at most `max_streams`.
    pub streams: Arc<Semaphore>,
    pub max_streams: usize,
    /// Each key's and each client address's share of all open streams.
    pub stream_shares: Arc<super::shares::StreamShares>,
}

/// The 503 for a plugin that is not serving. The reason (which names the library's path and
/// the plugin's settings) only for an admin, who can also read it in `GET /api/plugins`; any
/// other caller, with or without a key, learns only that it is unavailable and its state.
pub fn unavailable(slot: &PluginSlot, caller: Option<&Principal>) -> ApiError {
    let status = slot.status();
    let state = status.state.as_str();
    let message = if caller.is_some_and(|caller| caller.role == Role::Admin) {
        let reason = status
            .last_error
            .clone()
            .unwrap_or_else(|| "it is not loaded".to_owned());
        format!("plugin {} is {state}: {reason}", status.name)
    } else {
        format!(
            "plugin {} is {state}; an admin can see why in GET /api/plugins",
            status.name
        )
    };
    ApiError::unavailable("plugin_unavailable", message, 10)
        .with_extra(serde_json::json!({ "plugin": status.name, "state": status.state }))
}

pub async fn dispatch(State(mount): State<Arc<MountState>>, request: Request) -> Response {
    match forward(&mount, request).await {
        Ok(response) => response,
        Err(error) => error.into_response(),
    }
}

async fn forward(mount: &MountState, request: Request) -> Result<Response, ApiError> {
    let Some(plugin) = mount.slot.active() else {
        return Err(unavailable(
            &mount.slot,
            request.extensions().get::<Principal>(),
        ));
    };
    // Who would hold a streamed answer: known only once the plugin has answered.
    let holder = stream_holder(&request);
    let (parts, body) = request.into_parts();
    // Declared lengths over the limit were refused by the limit layer; this catches streams.
    let body = axum::body::to_bytes(body, mount.body_limit)
        .await
        .map_err(|error| {
            // The limit may trip in the limit layer's body or in this read: the error is
            // wrapped once or twice, so look through the whole chain.
            let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&error);
            let mut limit_hit = false;
            while let Some(cause) = source {
                if cause.is::<http_body_util::LengthLimitError>() {
                    limit_hit = true;
                    break;
                }
                source = cause.source();
            }
            if limit_hit {
                too_large(mount.body_limit)
            } else {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    "the request body could not be read",
                )
            }
        })?;

    // The request's parts (headers, extensions) are dropped here, while they are still in the
    // cache, not after the plugin's answer.
    let request = host_request(parts, body, mount);
    let answer = plugin.call(request).await.map_err(|error| match error {
        CallError::Unanswered => {
            ApiError::internal("the plugin dropped the request without answering; see the host log")
        }
        CallError::Crashed { plugin, death } => crashed(&plugin, &death),
    })?;
    // `plugin` (the copy) stays alive until here, so a swap never cuts an in-flight request.
    drop(plugin);
    build_response(answer, mount, &holder)
}

/// The key and client address of a request, for the per-client share of open streams.
pub fn stream_holder(request: &Request) -> StreamHolder {
    StreamHolder {
        key: request
            .extensions()
            .get::<Principal>()
            .map(|principal| Arc::clone(&principal.name)),
        address: request
            .extensions()
            .get::<ClientAddress>()
            .map(|client| client.0),
    }
}

/// The request as the plugin gets it: the path relative to the mount, no credentials, the
/// caller and the request id from the host's layers.
fn host_request(parts: Parts, body: Bytes, mount: &MountState) -> HostRequest {
    let relative = parts
        .uri
        .path()
        .strip_prefix(mount.slot.config.mount.as_str())
        .filter(|rest| !rest.is_empty())
        .unwrap_or("/");
    let principal = parts
        .extensions
        .get::<Principal>()
        .map(|principal| (principal.name.to_string(), principal.role));
    let request_id = parts
        .extensions
        .get::<RequestId>()
        .map(|id| id.as_str().to_owned())
        .unwrap_or_default();
    let headers: Vec<(String, String)> = parts
        .headers
        .iter()
        .filter(|(name, _)| !is_credential(name) && *name != FORWARDED_PREFIX)
        .filter_map(|(name, value)| {
            let value = value.to_str().ok()?;
            Some((name.as_str().to_owned(), value.to_owned()))
        })
        .chain(std::iter::once((
            FORWARDED_PREFIX.to_owned(),
            mount.slot.config.mount.clone(),
        )))
        .collect();
    HostRequest {
        request_id,
        method: parts.method.as_str().to_owned(),
        path: relative.to_owned(),
        query: parts.uri.query().unwrap_or("").to_owned(),
        headers,
        body,
        principal,
    }
}

/// The 502 for a request whose plugin process died under it.
fn crashed(plugin: &str, death: &Death) -> ApiError {
    ApiError::new(
        StatusCode::BAD_GATEWAY,
        "plugin_crashed",
        format!(
            "plugin {plugin} crashed while handling this request ({}); the host restarts it",
            death.cause
        ),
    )
    .with_extra(serde_json::json!({
        "plugin": plugin,
        "signal": death.signal,
        "exit_code": death.exit_code,
    }))
}

/// Tells the plugin where it is mounted, so it can build absolute links (`Location`). Set by
/// the host only: a client's own value is dropped.
const FORWARDED_PREFIX: &str = "x-forwarded-prefix";

/// Credentials are the host's business: plugins get the authenticated principal instead.
fn is_credential(name: &HeaderName) -> bool {
    name == header::AUTHORIZATION || name.as_str() == "x-api-key" || name == header::COOKIE
}

fn too_large(limit: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        format!("the request body exceeds server.body_limit_bytes ({limit} bytes)"),
    )
}

fn build_response(
    answer: bridge::HostResponse,
    mount: &MountState,
    holder: &StreamHolder,
) -> Result<Response, ApiError> {
    let status = StatusCode::from_u16(answer.status).map_err(|_| {
        ApiError::internal(format!(
            "the plugin answered with an invalid status {}",
            answer.status
        ))
    })?;
    let body = match answer.body {
        bridge::HostBody::Full(bytes) => Body::from(bytes),
        bridge::HostBody::Stream(chunks, cut) => {
            // Over the limit, the receiver is dropped here: the plugin sees its client gone.
            let Ok(slot) = Arc::clone(&mount.streams).try_acquire_owned() else {
                return Err(super::error::too_many_streams(mount.max_streams));
            };
            let share = mount.stream_shares.take(holder)?;
            // After the last chunk: an error when the answer was cut (its plugin's process died,
            // or it pushed a chunk over the limit), which aborts the answer instead of ending
            // it as complete.
            let plugin = mount.slot.name.clone();
            let tail = futures_util::stream::once(async move {
                cut.get().map(|cause| {
                    Err(std::io::Error::other(format!(
                        "plugin {plugin}'s answer was cut: {cause}"
                    )))
                })
            })
            .filter_map(std::future::ready);
            Body::from_stream(
                tokio_stream::wrappers::ReceiverStream::new(chunks)
                    .map(Ok)
                    .chain(tail)
                    // The host is stopping: end the stream, so the connection can close.
                    .take_until(CancellationToken::clone(&mount.shutdown).cancelled_owned())
                    .map(move |chunk| {
                        let _held = (&slot, &share);
                        chunk
                    }),
            )
        }
    };
    let mut response = Response::new(body);
    *response.status_mut() = status;
    *response.headers_mut() = answer.headers;
    Ok(response)
}
