//! `GET /api/openapi.json`: the host's own operations, described by the `#[utoipa::path]`
//! attributes on their handlers, merged with the document each active plugin serves at
//! `{mount}/openapi.json` (its paths are relative to the mount). A plugin that is not active
//! contributes its event stream only, and the document says which plugins are missing.

use axum::{
    body::Body,
    extract::{Request, State},
    http::Method,
    response::IntoResponse,
    Json,
};
use serde::Serialize;
use serde_json::{json, Value};
use utoipa::{
    openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme},
    Modify, OpenApi, ToSchema,
};

use super::{dispatch, AppState};
use crate::plugin::slot::{PluginSlot, PluginState, PluginStatus};

/// Largest plugin document the host accepts.
const MAX_FRAGMENT_BYTES: usize = 4 << 20;

/// The error shape of every 4xx/5xx answer.
#[derive(Serialize, ToSchema)]
#[schema(as = Error)]
#[allow(dead_code)] // Read by the derive, never built.
pub struct ErrorBody {
    /// Machine-readable code, e.g. `unauthorized`, `plugin_unavailable`.
    error: String,
    /// What happened and what to do about it.
    message: String,
    /// The offending field, for a 400 about one field.
    field: Option<String>,
}

struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "X-API-Key",
                "An API key from the key ring (`powerautomation keygen`)",
            ))),
        );
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("The same API key as `Authorization: Bearer <key>`"))
                    .build(),
            ),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "PowerAutomation",
        description = "The PowerAutomation host and the plugins it serves. Errors always have the `Error` shape; \
                       plugin endpoints answer 503 with `Retry-After` while their plugin is not active.",
    ),
    paths(
        super::core::health,
        super::metrics::scrape,
        super::core::list_plugins,
        super::core::whoami,
        super::core::reload_plugin,
        super::cluster::cluster,
        super::cluster::drain,
        super::audit_log::list,
        document,
        super::dashboard::index,
        super::dashboard::asset,
    ),
    components(schemas(ErrorBody, PluginState, PluginStatus, crate::cluster::NodeState)),
    modifiers(&SecuritySchemes),
    tags(
        (name = "host", description = "The host: health, the caller's key, metrics, this document"),
        (name = "plugins", description = "The plugins the host serves, and their hot swap"),
        (name = "cluster", description = "The nodes that share this host's store"),
        (name = "audit", description = "Who did what, through which door, refused or not: the chained audit log"),
        (name = "events", description = "Server-Sent Events of each plugin"),
        (name = "dashboard", description = "The operator page"),
    ),
)]
struct CoreDoc;

/// The whole API description: the host's operations and every active plugin's.
#[utoipa::path(
    get, path = "/api/openapi.json", operation_id = "getOpenApiDocument", tag = "host",
    responses(
        (status = 200, description = "This document (OpenAPI 3.1)", content_type = "application/json", body = Object),
    )
)]
pub async fn document(State(state): State<AppState>) -> impl IntoResponse {
    let mut document = serde_json::to_value(CoreDoc::openapi()).unwrap_or_default();
    document["info"]["version"] = json!(env!("CARGO_PKG_VERSION"));
    let mut inactive = Vec::new();
    for slot in state.slots.iter() {
        let mount = slot.config.mount.as_str();
        insert_path(
            &mut document,
            &format!("{mount}/events"),
            event_stream(slot),
        );
        match fragment(slot).await {
            Some(fragment) => merge(&mut document, mount, fragment),
            None => inactive.push(format!("{} ({})", slot.name, mount)),
        }
    }
    apply_conventions(&mut document, &state);
    if !inactive.is_empty() {
        let note = format!(
            "\n\nNot described now, because their plugin is not active: {}.",
            inactive.join(", ")
        );
        if let Some(description) = document["info"]["description"].as_str() {
            document["info"]["description"] = json!(format!("{description}{note}"));
        }
    }
    Json(document)
}

/// The plugin's own document, asked through the same path as any request under its mount.
async fn fragment(slot: &std::sync::Arc<PluginSlot>) -> Option<Value> {
    slot.active()?;
    let mount = dispatch::MountState {
        slot: std::sync::Arc::clone(slot),
        body_limit: 0,
        // A document is a whole answer: no stream, so no stream slot is ever taken.
        shutdown: std::sync::Arc::new(tokio_util::sync::CancellationToken::new()),
        streams: std::sync::Arc::new(tokio::sync::Semaphore::new(1)),
        max_streams: 1,
        stream_shares: std::sync::Arc::new(super::shares::StreamShares::new(1)),
    };
    let request = Request::builder()
        .method(Method::GET)
        .uri(format!("{}/openapi.json", slot.config.mount))
        .body(Body::empty())
        .ok()?;
    let response = dispatch::dispatch(State(std::sync::Arc::new(mount)), request).await;
    if !response.status().is_success() {
        tracing::warn!(plugin = %slot.name, status = %response.status(), "the plugin did not serve its OpenAPI document");
        return None;
    }
    let bytes = axum::body::to_bytes(response.into_body(), MAX_FRAGMENT_BYTES)
        .await
        .ok()?;
    match serde_json::from_slice(&bytes) {
        Ok(fragment) => Some(fragment),
        Err(error) => {
            tracing::warn!(plugin = %slot.name, "the plugin's OpenAPI document is not JSON: {error}");
            None
        }
    }
}

/// Adds a plugin's paths under its mount, and the schemas and tags they use. The host's own
/// schemas win a name clash (both sides describe the one error shape the same way).
fn merge(document: &mut Value, mount: &str, fragment: Value) {
    if let Some(paths) = fragment["paths"].as_object() {
        for (path, item) in paths {
            let full = if path == "/" {
                mount.to_owned()
            } else {
                format!("{mount}{path}")
            };
            insert_path(document, &full, item.clone());
        }
    }
    if let Some(schemas) = fragment["components"]["schemas"].as_object() {
        let target = &mut document["components"]["schemas"];
        if let Some(target) = target.as_object_mut() {
            for (name, schema) in schemas {
                target.entry(name.clone()).or_insert_with(|| schema.clone());
            }
        }
    }
    if let Some(tags) = fragment["tags"].as_array() {
        if let Some(target) = document["tags"].as_array_mut() {
            target.extend(tags.iter().cloned());
        }
    }
}

fn insert_path(document: &mut Value, path: &str, item: Value) {
    if !document["paths"].is_object() {
        document["paths"] = json!({});
    }
    document["paths"][path] = item;
}

/// `stream<Plugin>Events` in the `verbNoun` style of the other operations:
/// `streamDeploymentMcpEvents` for `deployment_mcp`.
fn events_operation_id(plugin: &str) -> String {
    let words: String = plugin
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|word| !word.is_empty())
        .map(|word| {
            let mut chars = word.chars();
            chars
                .next()
                .map(|first| first.to_ascii_uppercase().to_string() + chars.as_str())
                .unwrap_or_default()
        })
        .collect();
    format!("stream{words}Events")
}

/// `{mount}/events` is served by the host for every plugin, active or not.
fn event_stream(slot: &PluginSlot) -> Value {
    json!({
        "get": {
            "tags": ["events"],
            "summary": format!("Server-Sent Events of plugin {}", slot.name),
            "description": "Every event has an `id`. A client reconnecting with `Last-Event-ID` first gets what it \
                            missed from the replay buffer, or a `reset` event when that is gone. \
                            503 while the plugin is not active.",
            "operationId": events_operation_id(&slot.name),
            "parameters": [{
                "name": "Last-Event-ID", "in": "header", "required": false,
                "description": "The last event id received", "schema": { "type": "string" }
            }],
            "responses": {
                "200": {
                    "description": "The event stream (never ends by itself)",
                    "content": { "text/event-stream": { "schema": { "type": "string" } } }
                }
            }
        }
    })
}

/// What holds for every operation, so no handler has to say it: any of them may answer with the
/// error shape (limits, timeouts, and for plugin routes 401/403/503 come from the host), and
/// every operation under a plugin's mount needs a key.
fn apply_conventions(document: &mut Value, state: &AppState) {
    let mounts: Vec<String> = state
        .slots
        .iter()
        .map(|slot| slot.config.mount.clone())
        .collect();
    let Some(paths) = document["paths"].as_object_mut() else {
        return;
    };
    for (path, item) in paths.iter_mut() {
        let under_mount = mounts
            .iter()
            .any(|mount| path == mount || path.starts_with(&format!("{mount}/")));
        let Some(item) = item.as_object_mut() else {
            continue;
        };
        for (method, operation) in item.iter_mut() {
            if !HTTP_METHODS.contains(&method.as_str()) {
                continue;
            }
            let Some(operation) = operation.as_object_mut() else {
                continue;
            };
            if let Some(responses) = operation
                .entry("responses")
                .or_insert_with(|| json!({}))
                .as_object_mut()
            {
                responses.entry("default").or_insert_with(error_response);
            }
            if under_mount {
                operation
                    .entry("security")
                    .or_insert_with(|| json!([{ "api_key": [] }, { "bearer": [] }]));
            }
        }
    }
}

const HTTP_METHODS: &[&str] = &[
    "get", "put", "post", "delete", "patch", "head", "options", "trace",
];

fn error_response() -> Value {
    json!({
        "description": "An error (see the `error` code and `message`)",
        "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } }
    })
}
