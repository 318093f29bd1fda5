//! `GET /api/cluster` and `POST /api/cluster/nodes/{node_id}/drain`: the nodes that share this
//! host's store, as this node sees them (SPEC §4c).

use axum::{
    extract::{Path, State},
    http::{HeaderMap, StatusCode},
    Extension, Json,
};
use plugin_api::Role;

use super::{error::ApiError, AppState, RequestId};
use crate::{
    audit::HostCall,
    auth::{require, Principal},
    cluster::{ClusterView, DrainError, NodeView},
};

/// Every node: its state, how long ago its heartbeat changed, the runs it holds.
#[utoipa::path(get, path = "/api/cluster", operation_id = "getCluster", tag = "cluster", security(("api_key" = []), ("bearer" = [])),
    responses((status = 200, description = "The nodes on this store (on SQLite: this one)", body = ClusterView)))]
pub async fn cluster(
    State(state): State<AppState>,
    principal: Option<Extension<Principal>>,
) -> Result<Json<ClusterView>, ApiError> {
    require(principal.as_deref(), Role::User)?;
    state
        .membership
        .view(&state.plugin_names())
        .await
        .map(Json)
        .map_err(|error| {
            ApiError::unavailable("store_unavailable", format!("the store: {error}"), 1)
        })
}

/// Marks a node draining: it claims no new runs and finishes those it holds.
#[utoipa::path(post, path = "/api/cluster/nodes/{node_id}/drain", operation_id = "drainNode", tag = "cluster", security(("api_key" = []), ("bearer" = [])),
    params(("node_id" = String, Path, description = "The node's id, as `GET /api/cluster` names it")),
    responses((status = 200, description = "The node, draining", body = NodeView)))]
pub async fn drain(
    State(state): State<AppState>,
    principal: Option<Extension<Principal>>,
    Path(node_id): Path<String>,
    headers: HeaderMap,
    request_id: Option<Extension<RequestId>>,
) -> Result<Json<NodeView>, ApiError> {
    let caller = require(principal.as_deref(), Role::Admin)?;
    let call = HostCall::of(
        Some(caller),
        &headers,
        request_id.as_deref().map(super::RequestId::as_str),
    );
    let resource = format!("node:{node_id}");
    let entry = state
        .auditor
        .as_ref()
        .map(|_| call.draft("cluster.drain", resource.clone(), 200, None));
    let drained = state.membership.drain(&node_id, entry).await;
    if let Some(auditor) = &state.auditor {
        // Nothing changed (draining already, or failed): the call is recorded on its own.
        let unchanged = match &drained {
            Ok(true) => None,
            Ok(false) => Some((200, None)),
            Err(DrainError::NotFound(_)) => Some((404, Some("not_found"))),
            Err(DrainError::Lost(_)) => Some((409, Some("node_lost"))),
            Err(DrainError::Store(_)) => Some((503, Some("store_unavailable"))),
        };
        if let Some((status, code)) = unchanged {
            auditor
                .record(call.draft("cluster.drain", resource, status, code))
                .await;
        }
    }
    drained.map_err(|error| match error {
        DrainError::NotFound(_) => ApiError::not_found(error.to_string()),
        DrainError::Lost(_) => ApiError::new(StatusCode::CONFLICT, "node_lost", error.to_string()),
        DrainError::Store(_) => ApiError::unavailable("store_unavailable", error.to_string(), 1),
    })?;
    tracing::info!(node = %node_id, by = %caller.name, "drain requested");
    let view = state
        .membership
        .view(&state.plugin_names())
        .await
        .map_err(|error| {
            ApiError::unavailable("store_unavailable", format!("the store: {error}"), 1)
        })?;
    view.nodes
        .into_iter()
        .find(|node| node.node_id == node_id)
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("no node {node_id:?} in the cluster")))
}
