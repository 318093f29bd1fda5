//! The Model Context Protocol face of the deployment API: tools and resources an AI agent
//! calls, served over Streamable HTTP at `{mount}/mcp` (inside the plugin's router) and over
//! stdio by `deployment-mcp mcp`.
//!
//! Every tool is a call of the REST API as the caller: through the plugin's own router (HTTP)
//! or the CLI's backend (stdio), so the same validation, role checks and role views apply, and
//! nothing here can show more than the API would. [`TOOLS`] declares each tool once (name,
//! least role, whether it writes, schemas); `tools/list` shows what the caller's role may call,
//! and hides every write tool when `mcp.read_only` is set.

use std::{future::Future, sync::Arc, time::Duration};

use plugin_guest::{Caller, Refusal, Role};
use rmcp::{
    model::{
        CallToolRequestParams, CallToolResponse, CallToolResult, Implementation,
        ListResourceTemplatesResult, ListResourcesResult, ListToolsResult, PaginatedRequestParams,
        ProgressNotificationParam, ReadResourceRequestParams, ReadResourceResponse,
        ReadResourceResult, Resource, ResourceContents, ResourceTemplate, ServerCapabilities,
        ServerConfig, Tool, ToolAnnotations,
    },
    service::RequestContext,
    ErrorData, RoleServer, ServerHandler,
};
use serde::{de::DeserializeOwned, Deserialize};
use serde_json::{json, Map, Value};
use tokio_util::sync::CancellationToken;

use crate::environments::field_error;

/// Log lines a tool or resource returns at most.
pub const MAX_LOG_LINES: usize = 1000;
/// How often `trigger_deployment` with `wait` reads the deployment.
const WAIT_POLL: Duration = Duration::from_millis(250);
/// How long `trigger_deployment` with `wait` follows the deployment by default (and at most).
const DEFAULT_WAIT_SECS: u64 = 600;
const MAX_WAIT_SECS: u64 = 3600;
/// How long `wait` follows a deployment when the client asked for no progress notifications
/// (below common HTTP request timeouts: nothing is sent before the answer).
const QUIET_WAIT_SECS: u64 = 25;
/// Deployments listed as resources.
const LISTED_DEPLOYMENTS: usize = 20;

/// How the tools reach the deployment API, as `caller`: the answer's status and JSON body,
/// or why there is none.
pub trait ApiClient: Send + Sync + 'static {
    fn call(
        &self,
        caller: Option<&Caller>,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> impl Future<Output = Result<(u16, Value), String>> + Send;
}

/// Browser origins the endpoint accepts: `scheme://host` with `:port`, `:*` (any port), or no
/// port (the scheme's default).
#[derive(Debug, Clone)]
pub struct OriginRule {
    scheme: String,
    host: String,
    /// `None`: any port.
    port: Option<u16>,
}

impl OriginRule {
    /// The loopback origins, always accepted.
    pub fn loopback() -> Vec<OriginRule> {
        ["http://localhost:*", "http://127.0.0.1:*", "http://[::1]:*"]
            .iter()
            .filter_map(|rule| OriginRule::parse(rule).ok())
            .collect()
    }

    pub fn parse(text: &str) -> Result<OriginRule, String> {
        let (text, any_port) = match text.strip_suffix(":*") {
            Some(rest) => (rest, true),
            None => (text, false),
        };
        let url = url::Url::parse(text).map_err(|error| {
            format!("{text:?} is not an origin like https://ops.example.com:443 ({error})")
        })?;
        let host = url
            .host_str()
            .filter(|_| url.path() == "/" && url.query().is_none())
            .ok_or_else(|| format!("{text:?} is not an origin: scheme://host[:port], no path"))?;
        Ok(OriginRule {
            scheme: url.scheme().to_owned(),
            host: host.to_ascii_lowercase(),
            port: if any_port {
                None
            } else {
                url.port_or_known_default()
            },
        })
    }

    fn allows(&self, origin: &url::Url) -> bool {
        origin.scheme() == self.scheme
            && origin.host_str().map(str::to_ascii_lowercase).as_deref() == Some(self.host.as_str())
            && self
                .port
                .is_none_or(|port| origin.port_or_known_default() == Some(port))
    }
}

/// Whether a request's `Origin` header is acceptable: absent (not a browser), or matching a
/// rule. `null` and unparsable origins are refused.
pub fn origin_allowed(origin: Option<&str>, rules: &[OriginRule]) -> bool {
    let Some(origin) = origin else { return true };
    match url::Url::parse(origin) {
        Ok(origin) => rules.iter().any(|rule| rule.allows(&origin)),
        Err(_) => false,
    }
}

/// One tool, declared once.
pub struct ToolSpec {
    pub name: &'static str,
    pub title: &'static str,
    pub description: &'static str,
    /// The least role that may call it.
    pub needs: Role,
    /// It starts, stops or changes something (hidden by `mcp.read_only`).
    pub writes: bool,
    /// It can end or undo work (cancel, reject, roll back).
    pub destructive: bool,
    input: fn() -> Value,
    output: fn() -> Value,
}

fn id_input(what: &str) -> Value {
    json!({"type": "object", "properties": {"id": {"type": "string", "description": what}},
           "required": ["id"], "additionalProperties": false})
}

fn no_input() -> Value {
    json!({"type": "object", "properties": {}, "additionalProperties": false})
}

fn deployment_id_input() -> Value {
    id_input("The deployment id (dep-<ms>-<8 hex>)")
}

fn environment_id_input() -> Value {
    id_input("The environment id")
}

fn object_output(properties: Value) -> Value {
    json!({"type": "object", "properties": properties})
}

fn environments_output() -> Value {
    object_output(
        json!({"environments": {"type": "array", "items": {"type": "object"}},
                         "total_count": {"type": "integer"}}),
    )
}

fn environment_output() -> Value {
    object_output(
        json!({"environment_id": {"type": "string"}, "enabled": {"type": "boolean"},
                         "deployed_version": {"type": ["string", "null"]},
                         "last_health": {"type": ["object", "null"]}}),
    )
}

fn health_output() -> Value {
    object_output(json!({"environment_id": {"type": "string"}, "health": {"type": "object"}}))
}

fn deployments_output() -> Value {
    object_output(
        json!({"history": {"type": "array", "items": {"type": "object"}},
                         "active": {"type": "array", "items": {"type": "object"}},
                         "total_count": {"type": "integer"},
                         "next_cursor": {"type": ["string", "null"]}}),
    )
}

fn deployment_output() -> Value {
    object_output(
        json!({"deployment_id": {"type": "string"}, "status": {"type": "string"},
                         "progress": {"type": "integer"}, "version": {"type": "string"},
                         "results": {"type": "array", "items": {"type": "object"}},
                         "environment_status": {"type": "object"}}),
    )
}

fn logs_output() -> Value {
    object_output(
        json!({"deployment_id": {"type": "string"}, "status": {"type": "string"},
                         "total_lines": {"type": "integer"}, "first_line": {"type": "integer"},
                         "lines": {"type": "array", "items": {"type": "object"}},
                         "truncated": {"type": "boolean"}}),
    )
}

fn accepted_output() -> Value {
    object_output(
        json!({"deployment_id": {"type": "string"}, "status": {"type": "string"},
                         "status_url": {"type": "string"}}),
    )
}

fn list_deployments_input() -> Value {
    json!({"type": "object", "properties": {
        "limit": {"type": "integer", "minimum": 1, "maximum": 100, "description": "Page size (default 20)"},
        "cursor": {"type": "string", "description": "next_cursor of the previous page"},
        "status": {"type": "string", "description": "Only this status: completed, failed, cancelled, interrupted, rolled_back, awaiting_approval, local_deploying, …"},
        "environment": {"type": "string", "description": "Only deployments that include this environment"}},
        "additionalProperties": false})
}

fn logs_input() -> Value {
    json!({"type": "object", "properties": {
        "id": {"type": "string", "description": "The deployment id"},
        "tail": {"type": "integer", "minimum": 1, "maximum": MAX_LOG_LINES, "description": "The last N lines (default 100)"},
        "offset": {"type": "integer", "minimum": 0, "description": "Instead of tail: the first line to return (0-based)"},
        "limit": {"type": "integer", "minimum": 1, "maximum": MAX_LOG_LINES, "description": "With offset: lines to return (default 100)"}},
        "required": ["id"], "additionalProperties": false})
}

fn trigger_input() -> Value {
    let amount = json!({"oneOf": [{"type": "integer", "minimum": 0}, {"type": "string", "pattern": "^[0-9]{1,3}%$"}]});
    json!({"type": "object", "properties": {
        "environments": {"type": "array", "items": {"type": "string"}, "description": "Environment ids; every enabled environment when absent"},
        "selector": {"type": "object", "additionalProperties": {"type": "string"}, "description": "Instead of environments: every enabled environment whose tags hold all these pairs"},
        "version": {"type": "string", "description": "The version to deploy"},
        "strategy": {"type": "object", "description": "{\"type\": \"all_at_once\"} (default), {\"type\": \"rolling\", \"batch_size\": 2 | \"25%\", \"pause_secs\": 0}, or {\"type\": \"canary\", \"canary\": 1, \"gate\": \"manual\" | \"auto\", \"bake_secs\": 0, \"then\": {...}}"},
        "max_failures": amount,
        "on_failure": {"enum": ["stop", "cancel_running"]},
        "rollback": {"enum": ["none", "failed", "all"]},
        "wait": {"type": "boolean", "description": "Follow the deployment with progress notifications and return its final record (or its record when it waits at a gate)"},
        "wait_timeout_secs": {"type": "integer", "minimum": 1, "maximum": MAX_WAIT_SECS, "description": "How long wait follows it (default 600)"}},
        "additionalProperties": false})
}

/// Every tool. Names are part of the contract.
pub const TOOLS: &[ToolSpec] = &[
    ToolSpec {
        name: "list_environments",
        title: "List environments",
        description: "Lists the target environments with their type, connection method, tags, deployed version and last health. Connection details (hosts, commands, URLs) only for the developer role and above.",
        needs: Role::User,
        writes: false,
        destructive: false,
        input: no_input,
        output: environments_output,
    },
    ToolSpec {
        name: "get_environment",
        title: "Get one environment",
        description: "One environment by id: type, connection method, tags, deployed and previous version, last health and last deployment.",
        needs: Role::User,
        writes: false,
        destructive: false,
        input: environment_id_input,
        output: environment_output,
    },
    ToolSpec {
        name: "check_environment_health",
        title: "Check an environment's health",
        description: "Runs the environment's health check (its health_check_url) now, records the report as its last health, and returns it.",
        needs: Role::Developer,
        // It records the report: not for a read-only endpoint.
        writes: true,
        destructive: false,
        input: environment_id_input,
        output: health_output,
    },
    ToolSpec {
        name: "list_deployments",
        title: "List deployments",
        description: "Deployments, newest first. With the developer role and above: the history, filtered by status or environment and paged with cursor. With the user role: the running ones and the latest finished one.",
        needs: Role::User,
        writes: false,
        destructive: false,
        input: list_deployments_input,
        output: deployments_output,
    },
    ToolSpec {
        name: "get_deployment",
        title: "Get a deployment",
        description: "One deployment: status (phase), progress 0-100, version, batches and gate, and each environment's result. Error texts and outputs only for the developer role and above; the log is get_deployment_logs.",
        needs: Role::User,
        writes: false,
        destructive: false,
        input: deployment_id_input,
        output: deployment_output,
    },
    ToolSpec {
        name: "get_deployment_logs",
        title: "Read a deployment's log",
        description: "Log lines of a deployment, at most 1000 per call: the last `tail` lines (default 100), or `limit` lines from `offset`. `total_lines` says how many there are.",
        needs: Role::Developer,
        writes: false,
        destructive: false,
        input: logs_input,
        output: logs_output,
    },
    ToolSpec {
        name: "trigger_deployment",
        title: "Start a deployment",
        description: "Deploys a version to environments (ids, or a tag selector; every enabled environment when neither is given), optionally with a rollout strategy, a failure threshold and rollback. Returns the new deployment's id; with wait: true, follows it (progress notifications) and returns its final record, or its record when it stops at a manual canary gate (then approve_deployment or reject_deployment).",
        needs: Role::Admin,
        writes: true,
        destructive: false,
        input: trigger_input,
        output: deployment_output,
    },
    ToolSpec {
        name: "cancel_deployment",
        title: "Cancel a deployment",
        description: "Stops a running deployment: running triggers are stopped, the rest is not started; it ends cancelled.",
        needs: Role::Admin,
        writes: true,
        destructive: true,
        input: deployment_id_input,
        output: deployment_output,
    },
    ToolSpec {
        name: "retry_deployment",
        title: "Retry a deployment",
        description: "Starts a new deployment of the environments that did not succeed in a finished one, with its version and rollout.",
        needs: Role::Admin,
        writes: true,
        destructive: false,
        input: deployment_id_input,
        output: accepted_output,
    },
    ToolSpec {
        name: "approve_deployment",
        title: "Approve a canary gate",
        description: "Continues a deployment waiting at its canary gate (status awaiting_approval): the rest of its environments roll out.",
        needs: Role::Admin,
        writes: true,
        destructive: false,
        input: deployment_id_input,
        output: deployment_output,
    },
    ToolSpec {
        name: "reject_deployment",
        title: "Reject a canary gate",
        description: "Ends a deployment waiting at its canary gate: it ends cancelled and the environments not started are skipped.",
        needs: Role::Admin,
        writes: true,
        destructive: true,
        input: deployment_id_input,
        output: deployment_output,
    },
    ToolSpec {
        name: "rollback_deployment",
        title: "Roll a deployment back",
        description: "Rolls a finished deployment's changed environments back to the version each had before it; the deployment ends rolled_back (or failed when a rollback failed).",
        needs: Role::Admin,
        writes: true,
        destructive: true,
        input: deployment_id_input,
        output: accepted_output,
    },
];

fn schema(value: Value) -> Arc<Map<String, Value>> {
    Arc::new(match value {
        Value::Object(map) => map,
        _ => Map::new(),
    })
}

impl ToolSpec {
    fn tool(&self) -> Tool {
        Tool::new(self.name, self.description, schema((self.input)()))
            .with_title(self.title)
            .with_raw_output_schema(schema((self.output)()))
            .with_annotations(ToolAnnotations::from_raw(
                Some(self.title.to_owned()),
                Some(!self.writes),
                Some(self.destructive),
                Some(!self.writes || self.destructive),
                Some(false),
            ))
    }
}

/// A failed call, as the tool's error result: what happened and, where the API said, which
/// field.
struct ToolError(Value);

impl ToolError {
    fn new(code: &str, message: impl Into<String>) -> ToolError {
        ToolError(json!({"error": code, "message": message.into()}))
    }

    /// An argument at fault, named.
    fn field(field: &str, message: impl std::fmt::Display) -> ToolError {
        ToolError(json!({"error": "invalid_field", "field": field,
                         "message": format!("{field}: {message}")}))
    }

    fn from_api(status: u16, body: Value) -> ToolError {
        if body.get("error").is_some() {
            let mut body = body;
            body["status"] = json!(status);
            return ToolError(body);
        }
        ToolError::new("api_error", format!("the API answered {status}"))
    }
}

/// The tools' server; `C` reaches the API.
pub struct McpServer<C> {
    client: Arc<C>,
    read_only: bool,
    /// The caller of every request (stdio); over HTTP, each request's own.
    fixed: Option<Caller>,
    version: &'static str,
    /// Ends waits when the instance stops (a hot swap or shutdown), with an answer.
    stop: CancellationToken,
}

impl<C> Clone for McpServer<C> {
    fn clone(&self) -> Self {
        McpServer {
            client: Arc::clone(&self.client),
            read_only: self.read_only,
            fixed: self.fixed.clone(),
            version: self.version,
            stop: self.stop.clone(),
        }
    }
}

fn arguments<T: DeserializeOwned>(arguments: Option<Map<String, Value>>) -> Result<T, ToolError> {
    let value = Value::Object(arguments.unwrap_or_default());
    serde_path_to_error::deserialize(value).map_err(|error| {
        let field = field_error(error.path().to_string(), error.inner().to_string());
        ToolError::field(&field.field, &field.message)
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IdArguments {
    id: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HistoryArguments {
    #[serde(default)]
    limit: Option<u32>,
    #[serde(default)]
    cursor: Option<String>,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    environment: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LogArguments {
    id: String,
    #[serde(default)]
    tail: Option<usize>,
    #[serde(default)]
    offset: Option<usize>,
    #[serde(default)]
    limit: Option<usize>,
}

/// A path segment as the API takes it (ids are plain, but never trust an argument).
fn segment(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

impl<C: ApiClient> McpServer<C> {
    /// Over HTTP: each request's caller is the one the host authenticated.
    pub fn new(
        client: Arc<C>,
        read_only: bool,
        version: &'static str,
        stop: CancellationToken,
    ) -> McpServer<C> {
        McpServer {
            client,
            read_only,
            fixed: None,
            version,
            stop,
        }
    }

    /// Over stdio: every request is `caller`'s.
    pub fn for_caller(
        client: Arc<C>,
        read_only: bool,
        version: &'static str,
        caller: Caller,
    ) -> McpServer<C> {
        McpServer {
            fixed: Some(caller),
            ..McpServer::new(client, read_only, version, CancellationToken::new())
        }
    }

    fn caller(&self, context: &RequestContext<RoleServer>) -> Option<Caller> {
        self.fixed.clone().or_else(|| {
            context
                .extensions
                .get::<axum::http::request::Parts>()
                .and_then(|parts| parts.extensions.get::<Caller>().cloned())
        })
    }

    /// The tools `role` may call here.
    pub fn visible(&self, role: Option<Role>) -> impl Iterator<Item = &'static ToolSpec> + '_ {
        TOOLS.iter().filter(move |spec| {
            Refusal::of(role, spec.needs).is_none() && !(self.read_only && spec.writes)
        })
    }

    async fn api(
        &self,
        caller: Option<&Caller>,
        method: &str,
        path: &str,
        body: Option<Value>,
        expected: u16,
    ) -> Result<Value, ToolError> {
        let (status, answer) = self
            .client
            .call(caller, method, path, body)
            .await
            .map_err(|error| ToolError::new("unavailable", error))?;
        if status == expected {
            Ok(answer)
        } else {
            Err(ToolError::from_api(status, answer))
        }
    }

    async fn get(&self, caller: Option<&Caller>, path: &str) -> Result<Value, ToolError> {
        self.api(caller, "GET", path, None, 200).await
    }

    /// The record of a deployment as the caller may see it: the full record (without the log
    /// tail) for developers and above, the summary for users.
    async fn deployment(&self, caller: Option<&Caller>, id: &str) -> Result<Value, ToolError> {
        let id = segment(id);
        if caller.is_some_and(|caller| caller.role >= Role::Developer) {
            let mut record = self.get(caller, &format!("/deployments/{id}")).await?;
            if let Some(object) = record.as_object_mut() {
                object.remove("logs");
                object.remove("logs_truncated");
            }
            Ok(record)
        } else {
            self.get(caller, &format!("/status?id={id}")).await
        }
    }

    async fn environment(&self, caller: Option<&Caller>, id: &str) -> Result<Value, ToolError> {
        let dashboard = self.get(caller, "/dashboard").await?;
        dashboard["environments"]
            .as_array()
            .and_then(|list| list.iter().find(|environment| environment["environment_id"] == id))
            .cloned()
            .ok_or_else(|| {
                ToolError(json!({"error": "not_found", "message": format!("no environment {id:?}; list_environments shows them")}))
            })
    }

    async fn logs(
        &self,
        caller: Option<&Caller>,
        arguments: LogArguments,
    ) -> Result<Value, ToolError> {
        let bounded = |value: Option<usize>, field: &str| match value {
            Some(0) => Err(ToolError::field(field, "must be at least 1")),
            Some(n) if n > MAX_LOG_LINES => Err(ToolError::field(
                field,
                format!("at most {MAX_LOG_LINES} lines per call; page with offset"),
            )),
            other => Ok(other.unwrap_or(100)),
        };
        // The API reads only the chunks that hold the lines asked for.
        let query = match arguments.offset {
            Some(offset) => format!("from={offset}&limit={}", bounded(arguments.limit, "limit")?),
            None => format!("tail={}", bounded(arguments.tail, "tail")?),
        };
        let mut answer = self
            .get(
                caller,
                &format!("/deployments/{}/logs?{query}", segment(&arguments.id)),
            )
            .await?;
        let first = answer["first_line"].as_u64().unwrap_or(0);
        let stored = answer["stored_lines"].as_u64().unwrap_or(0);
        let page = answer["lines"].take();
        let returned = page.as_array().map_or(0, Vec::len) as u64;
        Ok(json!({
            "deployment_id": answer["deployment_id"],
            "status": answer["status"],
            "complete": answer["complete"],
            "total_lines": answer["total_lines"],
            "first_line": first,
            "truncated": first > 0 || first + returned < stored,
            "lines": page,
        }))
    }

    async fn trigger(
        &self,
        caller: Option<&Caller>,
        arguments: Option<Map<String, Value>>,
        context: &RequestContext<RoleServer>,
    ) -> Result<Value, ToolError> {
        let mut body = arguments.unwrap_or_default();
        let wait = match body.remove("wait") {
            None | Some(Value::Bool(false)) => false,
            Some(Value::Bool(true)) => true,
            Some(_) => return Err(ToolError::field("wait", "must be true or false")),
        };
        let timeout = match body.remove("wait_timeout_secs") {
            None => DEFAULT_WAIT_SECS,
            Some(value) => match value.as_u64() {
                Some(secs @ 1..=MAX_WAIT_SECS) => secs,
                _ => {
                    return Err(ToolError::field(
                        "wait_timeout_secs",
                        format!("seconds from 1 to {MAX_WAIT_SECS}"),
                    ))
                }
            },
        };
        let accepted = self
            .api(
                caller,
                "POST",
                "/trigger-local",
                Some(Value::Object(body)),
                202,
            )
            .await?;
        let Some(id) = accepted["deployment_id"].as_str().map(str::to_owned) else {
            return Ok(accepted);
        };
        if !wait {
            return Ok(accepted);
        }
        let token = context.meta.get_progress_token();
        // Without progress notifications nothing reaches the client before the answer, so a
        // wait longer than an HTTP request timeout would end in a timeout: wait less, and say
        // so in the answer.
        let timeout = match token {
            Some(_) => timeout,
            None => timeout.min(QUIET_WAIT_SECS),
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout);
        let mut last: Option<(String, f64)> = None;
        loop {
            // The summary (no log) while following; the full record once at the end.
            let summary = self
                .get(caller, &format!("/status?id={}", segment(&id)))
                .await?;
            let status = summary["status"].as_str().unwrap_or_default().to_owned();
            let progress = summary["progress"].as_f64().unwrap_or_default();
            if let Some(token) = &token {
                let changed = last.as_ref().is_none_or(|(seen, _)| *seen != status)
                    || last.as_ref().is_some_and(|(_, sent)| progress > *sent);
                if changed {
                    let done = summary["environment_status"]
                        .as_object()
                        .map(|statuses| {
                            statuses
                                .values()
                                .filter(|status| {
                                    !matches!(
                                        status.as_str(),
                                        Some("pending" | "triggering" | "running")
                                    )
                                })
                                .count()
                        })
                        .unwrap_or_default();
                    let total = summary["environments"].as_array().map_or(0, Vec::len);
                    // Progress must increase with every notification, also when only the
                    // phase changed.
                    let value = last
                        .as_ref()
                        .map_or(progress, |(_, sent)| progress.max(sent + 0.01));
                    let _ = context
                        .peer
                        .notify_progress(
                            ProgressNotificationParam::new(token.clone(), value)
                                .with_total(100.0)
                                .with_message(format!(
                                    "{status}: {done} of {total} environment(s) done"
                                )),
                        )
                        .await;
                    last = Some((status.clone(), value));
                }
            }
            let ended = matches!(
                status.as_str(),
                "completed"
                    | "failed"
                    | "cancelled"
                    | "interrupted"
                    | "rolled_back"
                    | "awaiting_approval"
            );
            let stop = if ended {
                None
            } else if tokio::time::Instant::now() >= deadline {
                Some("still running after the wait; follow it with get_deployment (or wait with a progress token for up to wait_timeout_secs)")
            } else {
                tokio::select! {
                    _ = tokio::time::sleep(WAIT_POLL) => continue,
                    _ = context.ct.cancelled() => Some("the request was cancelled"),
                    _ = self.stop.cancelled() => Some("the plugin is being replaced or stopped; follow it with get_deployment"),
                }
            };
            let mut record = self.deployment(caller, &id).await?;
            if let (Some(note), Some(object)) = (stop, record.as_object_mut()) {
                object.insert("note".into(), json!(note));
            }
            return Ok(record);
        }
    }

    async fn run_tool(
        &self,
        spec: &ToolSpec,
        caller: Option<&Caller>,
        request: CallToolRequestParams,
        context: &RequestContext<RoleServer>,
    ) -> Result<Value, ToolError> {
        let arguments_of = request.arguments;
        match spec.name {
            "list_environments" => {
                arguments::<Map<String, Value>>(arguments_of).and_then(|given| {
                    given.keys().next().map_or(Ok(()), |field| {
                        Err(ToolError::field(field, "this tool takes no arguments"))
                    })
                })?;
                let dashboard = self.get(caller, "/dashboard").await?;
                let environments = dashboard["environments"].clone();
                let total = environments.as_array().map_or(0, Vec::len);
                Ok(json!({"environments": environments, "total_count": total}))
            }
            "get_environment" => {
                let IdArguments { id } = arguments(arguments_of)?;
                self.environment(caller, &id).await
            }
            "check_environment_health" => {
                let IdArguments { id } = arguments(arguments_of)?;
                self.api(
                    caller,
                    "POST",
                    &format!("/environments/{}/health-check", segment(&id)),
                    None,
                    200,
                )
                .await
            }
            "list_deployments" => {
                let filter: HistoryArguments = arguments(arguments_of)?;
                if caller.is_some_and(|caller| caller.role >= Role::Developer) {
                    let query = {
                        let mut query = url::form_urlencoded::Serializer::new(String::new());
                        query
                            .append_pair("limit", &filter.limit.unwrap_or(20).min(100).to_string());
                        for (name, value) in [
                            ("cursor", &filter.cursor),
                            ("status", &filter.status),
                            ("environment", &filter.environment),
                        ] {
                            if let Some(value) = value {
                                query.append_pair(name, value);
                            }
                        }
                        query.finish()
                    };
                    self.get(caller, &format!("/history?{query}")).await
                } else if filter.cursor.is_some()
                    || filter.status.is_some()
                    || filter.environment.is_some()
                {
                    Err(ToolError::new("forbidden", "history filters need the developer role; the user role sees the running deployments and the latest finished one"))
                } else {
                    self.get(caller, "/status").await
                }
            }
            "get_deployment" => {
                let IdArguments { id } = arguments(arguments_of)?;
                self.deployment(caller, &id).await
            }
            "get_deployment_logs" => self.logs(caller, arguments(arguments_of)?).await,
            "trigger_deployment" => self.trigger(caller, arguments_of, context).await,
            "cancel_deployment" | "approve_deployment" | "reject_deployment" => {
                let IdArguments { id } = arguments(arguments_of)?;
                let action = spec.name.trim_end_matches("_deployment");
                let path = format!("/deployments/{}/{action}", segment(&id));
                let (status, answer) = self
                    .client
                    .call(caller, "POST", &path, None)
                    .await
                    .map_err(|error| ToolError::new("unavailable", error))?;
                match status {
                    200 | 202 => Ok(answer),
                    _ => Err(ToolError::from_api(status, answer)),
                }
            }
            "retry_deployment" | "rollback_deployment" => {
                let IdArguments { id } = arguments(arguments_of)?;
                let action = spec.name.trim_end_matches("_deployment");
                self.api(
                    caller,
                    "POST",
                    &format!("/deployments/{}/{action}", segment(&id)),
                    None,
                    202,
                )
                .await
            }
            other => Err(ToolError::new("unknown_tool", format!("no tool {other:?}"))),
        }
    }

    /// Resources for the caller: each environment, and the newest deployments with their log
    /// (the log for developers and above).
    async fn resources(&self, caller: Option<&Caller>) -> Result<Vec<Resource>, ToolError> {
        let mut found = Vec::new();
        let dashboard = self.get(caller, "/dashboard").await?;
        for environment in dashboard["environments"].as_array().into_iter().flatten() {
            let Some(id) = environment["environment_id"].as_str() else {
                continue;
            };
            found.push(
                Resource::new(format!("environment://{id}"), format!("environment {id}"))
                    .with_mime_type("application/json"),
            );
        }
        let developer = caller.is_some_and(|caller| caller.role >= Role::Developer);
        let deployments: Vec<Value> = if developer {
            let page = self
                .get(caller, &format!("/history?limit={LISTED_DEPLOYMENTS}"))
                .await?;
            page["history"].as_array().cloned().unwrap_or_default()
        } else {
            let status = self.get(caller, "/status").await?;
            status["active"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .chain(
                    status["latest"]
                        .as_object()
                        .map(|latest| Value::Object(latest.clone())),
                )
                .collect()
        };
        for deployment in deployments {
            let Some(id) = deployment["deployment_id"].as_str() else {
                continue;
            };
            found.push(
                Resource::new(format!("deployment://{id}"), format!("deployment {id}"))
                    .with_mime_type("application/json"),
            );
            if developer {
                found.push(
                    Resource::new(
                        format!("deployment://{id}/log"),
                        format!("log of deployment {id}"),
                    )
                    .with_mime_type("application/json"),
                );
            }
        }
        Ok(found)
    }

    async fn read(&self, caller: Option<&Caller>, uri: &str) -> Result<Value, ToolError> {
        if let Some(id) = uri.strip_prefix("environment://") {
            return self.environment(caller, id).await;
        }
        if let Some(rest) = uri.strip_prefix("deployment://") {
            return match rest.strip_suffix("/log") {
                Some(id) => {
                    self.logs(
                        caller,
                        LogArguments {
                            id: id.to_owned(),
                            tail: Some(MAX_LOG_LINES),
                            offset: None,
                            limit: None,
                        },
                    )
                    .await
                }
                None => self.deployment(caller, rest).await,
            };
        }
        Err(ToolError::new(
            "not_found",
            format!("{uri:?} is not a resource here: environment://{{id}}, deployment://{{id}} or deployment://{{id}}/log"),
        ))
    }
}

impl<C: ApiClient> ServerHandler for McpServer<C> {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_resources()
                .build(),
        )
        .with_server_info(Implementation::new("deployment_mcp", self.version))
        .with_instructions(
            "Deployment coordination: list and inspect environments and deployments, read logs, and (with the admin role) start, follow, cancel, retry, approve, reject and roll back deployments. Tools your key's role may not call are not listed.",
        )
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        let role = self.caller(&context).map(|caller| caller.role);
        Ok(ListToolsResult::with_all_items(
            self.visible(role).map(ToolSpec::tool).collect(),
        ))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let caller = self.caller(&context);
        let Some(spec) = TOOLS.iter().find(|spec| spec.name == request.name) else {
            return Err(ErrorData::invalid_params(
                format!("no tool {:?}; tools/list shows the tools", request.name),
                None,
            ));
        };
        if let Some(refusal) = Refusal::of(caller.as_ref().map(|caller| caller.role), spec.needs) {
            let message = format!(
                "{} needs the {} role: {}",
                spec.name,
                spec.needs.as_str(),
                refusal.message
            );
            return Ok(CallToolResult::structured_error(
                json!({"error": refusal.code, "message": message, "needs": spec.needs.as_str()}),
            )
            .into());
        }
        if self.read_only && spec.writes {
            return Ok(CallToolResult::structured_error(json!({"error": "read_only", "message": format!("{} changes deployments, and this endpoint is read-only (mcp.read_only)", spec.name)})).into());
        }
        Ok(match self
            .run_tool(spec, caller.as_ref(), request, &context)
            .await
        {
            Ok(value) => CallToolResult::structured(value),
            Err(ToolError(error)) => CallToolResult::structured_error(error),
        }
        .into())
    }

    async fn list_resources(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, ErrorData> {
        let caller = self.caller(&context);
        match self.resources(caller.as_ref()).await {
            Ok(resources) => Ok(ListResourcesResult::with_all_items(resources)),
            Err(ToolError(error)) => Err(ErrorData::internal_error(
                error["message"]
                    .as_str()
                    .unwrap_or("the API failed")
                    .to_owned(),
                Some(error),
            )),
        }
    }

    async fn list_resource_templates(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, ErrorData> {
        Ok(ListResourceTemplatesResult::with_all_items(vec![
            ResourceTemplate::new("environment://{id}", "environment"),
            ResourceTemplate::new("deployment://{id}", "deployment"),
            ResourceTemplate::new("deployment://{id}/log", "deployment log"),
        ]))
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, ErrorData> {
        let caller = self.caller(&context);
        match self.read(caller.as_ref(), &request.uri).await {
            Ok(value) => Ok(ReadResourceResult::new(vec![ResourceContents::text(
                value.to_string(),
                request.uri.clone(),
            )
            .with_mime_type("application/json")])
            .into()),
            Err(ToolError(error)) => Err(ErrorData::resource_not_found(
                error["message"].as_str().unwrap_or("not found").to_owned(),
                Some(error),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_match_scheme_host_and_port() {
        let rules: Vec<OriginRule> = OriginRule::loopback()
            .into_iter()
            .chain(OriginRule::parse("https://ops.example.com"))
            .collect();
        let allowed = |origin| origin_allowed(Some(origin), &rules);
        assert!(origin_allowed(None, &rules), "no Origin: not a browser");
        assert!(allowed("http://127.0.0.1:8080") && allowed("http://localhost:3000"));
        assert!(allowed("https://ops.example.com") && allowed("https://ops.example.com:443"));
        assert!(!allowed("https://ops.example.com:8443"), "another port");
        assert!(!allowed("http://ops.example.com"), "another scheme");
        assert!(!allowed("http://127.0.0.1.evil.test") && !allowed("null"));
        assert!(
            OriginRule::parse("ops.example.com").is_err(),
            "a scheme is needed"
        );
        assert!(OriginRule::parse("https://ops.example.com/path").is_err());
    }
}
