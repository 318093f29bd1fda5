//! The host's own endpoints: they never depend on a plugin. Beside each handler, the shape of
//! its answer as the OpenAPI document describes it (the handlers build their JSON directly;
//! these types are read by the derive only).

use std::{collections::BTreeMap, sync::Arc};

use axum::{
    extract::{Path, State},
    http::StatusCode,
    Extension, Json,
};
use plugin_api::Role;
use serde::Serialize;
use serde_json::{json, Value};
use utoipa::ToSchema;

use super::{error::ApiError, AppState};
use crate::{
    auth::{require, Principal},
    plugin::slot::{PluginState, PluginStatus},
};

/// Liveness, and each plugin's state. 200 even with no plugin.
#[utoipa::path(get, path = "/health", operation_id = "getHealth", tag = "host",
    responses((status = 200, description = "The host serves", body = HealthAnswer)))]
pub async fn health(State(state): State<AppState>) -> Json<Value> {
    let plugins: serde_json::Map<String, Value> = state
        .slots
        .iter()
        .map(|slot| (slot.name.clone(), json!(slot.status().state.as_str())))
        .collect();
    Json(json!({ "status": "ok", "plugins": plugins }))
}

/// `GET /api/auth/whoami`: the name and role of the key sent, so a client can show what it may
/// do without probing.
#[utoipa::path(get, path = "/api/auth/whoami", operation_id = "getWhoami", tag = "host", security(("api_key" = []), ("bearer" = [])),
    responses((status = 200, description = "The caller's key name and role", body = WhoAmI)))]
pub async fn whoami(principal: Option<Extension<Principal>>) -> Result<Json<Value>, ApiError> {
    require(principal.as_deref(), Role::User)?;
    let principal = principal.as_deref();
    Ok(Json(json!({
        "name": principal.map(|p| &*p.name),
        "role": principal.map(|p| p.role.as_str()),
    })))
}

/// Each plugin: state, version, interface, path, sha256, swaps, last error.
#[utoipa::path(get, path = "/api/plugins", operation_id = "listPlugins", tag = "plugins", security(("api_key" = []), ("bearer" = [])),
    responses((status = 200, description = "Every configured plugin", body = PluginList)))]
pub async fn list_plugins(
    State(state): State<AppState>,
    principal: Option<Extension<Principal>>,
) -> Result<Json<Value>, ApiError> {
    require(principal.as_deref(), Role::User)?;
    let plugins: Vec<Value> = state
        .slots
        .iter()
        .map(|slot| json!(*slot.status()))
        .collect();
    Ok(Json(json!({ "plugins": plugins })))
}

/// Hot-swaps a plugin from its configured path. A failed reload keeps the old copy serving and
/// answers 422 with why.
#[utoipa::path(post, path = "/api/plugins/{name}/reload", operation_id = "reloadPlugin", tag = "plugins", security(("api_key" = []), ("bearer" = [])),
    params(("name" = String, Path, description = "The plugin's name, e.g. `deployment_mcp`")),
    responses((status = 200, description = "Swapped", body = ReloadAnswer)))]
pub async fn reload_plugin(
    State(state): State<AppState>,
    principal: Option<Extension<Principal>>,
    Path(name): Path<String>,
    headers: axum::http::HeaderMap,
    request_id: Option<Extension<super::RequestId>>,
) -> Result<Json<Value>, ApiError> {
    let caller = require(principal.as_deref(), Role::Admin)?;
    let answer = reload(&state, &name, caller).await;
    if let Some(auditor) = &state.auditor {
        // The swap is no store write: its entry follows it, with how it ended.
        let call = crate::audit::HostCall::of(
            Some(caller),
            &headers,
            request_id.as_deref().map(super::RequestId::as_str),
        );
        let (status, code) = match &answer {
            Ok(_) => (200, None),
            Err(error) => (error.status.as_u16(), Some(error.code)),
        };
        auditor
            .record(call.draft("plugin.reload", format!("plugin:{name}"), status, code))
            .await;
    }
    answer
}

async fn reload(state: &AppState, name: &str, caller: &Principal) -> Result<Json<Value>, ApiError> {
    let slot = state
        .slots
        .iter()
        .find(|slot| slot.name == name)
        .map(Arc::clone)
        .ok_or_else(|| ApiError::not_found(format!("no plugin named {name:?} is configured")))?;
    if !slot.is_enabled() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "plugin_disabled",
            format!("plugin {name} is disabled; set plugins.{name}.enabled = true and restart"),
        ));
    }
    tracing::info!(plugin = %name, by = %caller.name, "reload requested");
    match slot.reload("api").await {
        Ok(status) => Ok(Json(json!({ "plugin": *status }))),
        Err(error) => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "reload_failed",
            error.message,
        )
        .with_extra(json!({ "plugin": *slot.status() }))),
    }
}

/// `GET /health`.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)] // Read by the derive, never built.
pub struct HealthAnswer {
    /// Always `ok` while the host serves.
    status: String,
    /// Each configured plugin's state.
    plugins: BTreeMap<String, PluginState>,
}

/// `GET /api/plugins`.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)] // Read by the derive, never built.
pub struct PluginList {
    plugins: Vec<PluginStatus>,
}

/// `POST /api/plugins/{name}/reload`.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)] // Read by the derive, never built.
pub struct ReloadAnswer {
    /// The plugin after the swap.
    plugin: PluginStatus,
}

/// `GET /api/auth/whoami`.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)] // Read by the derive, never built.
pub struct WhoAmI {
    /// The key's name in the key ring.
    name: String,
    role: crate::config::RoleName,
}
