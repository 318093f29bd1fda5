//! The plugin's HTTP API under its mount (`/api/deployment` by default). Handlers parse and
//! check input, call the coordinator or the catalog, and shape the answer; nothing here runs a
//! deployment.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use arc_swap::ArcSwap;
use plugin_guest::{Handler, Request, Response, Role};
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use crate::{
    catalog,
    coordinator::{Coordinator, StartError, StartRequest},
    deployment::{is_deployment_id, DeploymentRecord, HistoryEntry, Phase, TargetRecord},
    environments::{self, check_id, from_json_object, Environment, FieldError},
    health,
    store::{DeploymentStore, IdempotencyRecord, IdempotencyStore},
    triggers::LogLine,
};

/// How long a cached `/status` answer is served before it is rebuilt from the store.
const STATUS_MAX_AGE: Duration = Duration::from_millis(500);
/// How often a followed log looks for new lines.
const FOLLOW_POLL: Duration = Duration::from_millis(200);
/// Log lines included in a deployment's detail (all of them are at `/logs`).
const DETAIL_LOG_LINES: usize = 200;

struct CachedStatus {
    built: Instant,
    generation: usize,
    /// The answer for developers and admins, and for users (no error texts), serialized.
    full: Arc<Vec<u8>>,
    user: Arc<Vec<u8>>,
}

/// Whether the caller may see what users may not (connection details, errors, output).
fn sees_details(request: &Request) -> bool {
    request.role().is_some_and(|role| role >= Role::Developer)
}

/// The plugin's request handler; the library exports it through the root module, and the
/// `rlib` lets benchmarks and tests call it in-process.
pub struct Api {
    coordinator: Arc<Coordinator>,
    status: ArcSwap<CachedStatus>,
    refreshing: AtomicBool,
    stop: CancellationToken,
    /// The plugin build's version, reported in answers.
    version: &'static str,
    /// The OpenAPI document served at `openapi.json` (built from these handlers' descriptions).
    openapi: fn() -> &'static [u8],
}

type Answer = Result<Response, ApiError>;

/// Why a request failed, as this API reports it. Handlers return it; its conversion into a
/// [`Response`] is the one place it becomes the JSON error answer (`error`, `message`, and
/// `field` when one field is at fault).
#[derive(Debug, thiserror::Error)]
pub(crate) enum ApiError {
    /// 400: a field of the request is wrong.
    #[error("{0}")]
    BadField(FieldError),
    /// 404: no such deployment or environment.
    #[error("no {what} {id:?}")]
    NotFound { what: &'static str, id: String },
    /// 404: no route has this path.
    #[error("no deployment endpoint at {0}")]
    NoRoute(String),
    /// 405, with the methods the path takes.
    #[error("{method} is not supported on {path}; use {}", allowed.join(" or "))]
    MethodNotAllowed {
        method: String,
        path: String,
        allowed: Vec<&'static str>,
    },
    /// 409: the request conflicts with what is going on (`field` when one field is the cause).
    #[error("{message}")]
    Conflict {
        code: &'static str,
        message: String,
        field: Option<&'static str>,
    },
    /// 422: well-formed, but it cannot be done.
    #[error("{message}")]
    Unprocessable { code: &'static str, message: String },
    /// 500: the store failed. The cause goes to the log; the caller gets a generic message.
    #[error("the deployment store could not be read or written; see the host log")]
    Store(String),
    /// An answer made before the handler ran (the role check).
    #[error("the caller may not do this")]
    Denied(Response),
}

impl ApiError {
    fn conflict(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::Conflict {
            code,
            message: message.into(),
            field: None,
        }
    }

    fn unprocessable(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::Unprocessable {
            code,
            message: message.into(),
        }
    }
}

impl From<ApiError> for Response {
    fn from(error: ApiError) -> Response {
        let message = error.to_string();
        let (status, code, field) = match error {
            ApiError::Denied(response) => return response,
            ApiError::BadField(error) => (400, "invalid_field", Some(error.field)),
            ApiError::NotFound { .. } | ApiError::NoRoute(_) => (404, "not_found", None),
            ApiError::MethodNotAllowed { allowed, .. } => {
                return Response::error(405, "method_not_allowed", message)
                    .with_header("allow", allowed.join(", "));
            }
            ApiError::Conflict { code, field, .. } => (409, code, field.map(str::to_owned)),
            ApiError::Unprocessable { code, .. } => (422, code, None),
            ApiError::Store(cause) => {
                tracing::error!("store: {cause}");
                (500, "store_error", None)
            }
        };
        let mut response = Response::error(status, code, message);
        if let Some(field) = field {
            if let Ok(mut body) = serde_json::from_slice::<serde_json::Value>(&response.body) {
                body["field"] = json!(field);
                response.body = serde_json::to_vec(&body).unwrap_or_default();
            }
        }
        response
    }
}

impl From<StartError> for ApiError {
    fn from(error: StartError) -> ApiError {
        match error {
            StartError::BadField(error) => ApiError::BadField(error),
            StartError::Invalid { code, message } => ApiError::unprocessable(code, message),
            StartError::Busy {
                environment,
                deployment,
            } => ApiError::conflict(
                "environment_busy",
                format!("environment {environment:?} is already being deployed by {deployment}; wait for it or cancel it"),
            ),
            StartError::Store(error) => ApiError::Store(error),
        }
    }
}

fn bad_field(error: FieldError) -> ApiError {
    ApiError::BadField(error)
}

fn store_error(error: impl Into<String>) -> ApiError {
    ApiError::Store(error.into())
}

fn not_found(what: &'static str, id: &str) -> ApiError {
    ApiError::NotFound {
        what,
        id: id.to_owned(),
    }
}

/// The mount the host serves this plugin under, for absolute links.
fn mount(request: &Request) -> String {
    request
        .header("x-forwarded-prefix")
        .unwrap_or("/api/deployment")
        .trim_end_matches('/')
        .to_owned()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TriggerBody {
    #[serde(default)]
    environments: Option<Vec<String>>,
    #[serde(default)]
    version: Option<String>,
    #[serde(default)]
    ec2: Option<bool>,
}

/// How long a request waits for a concurrent one with the same `Idempotency-Key` to start its
/// deployment.
const IDEMPOTENCY_WAIT: Duration = Duration::from_secs(10);

impl Api {
    pub fn new(
        coordinator: Arc<Coordinator>,
        version: &'static str,
        openapi: fn() -> &'static [u8],
    ) -> Api {
        let stop = CancellationToken::new();
        tokio::spawn(Arc::clone(&coordinator).health_loop(stop.clone()));
        tokio::spawn(crate::retention::run(
            coordinator.records().clone(),
            coordinator.settings_handle(),
            stop.clone(),
        ));
        Api {
            coordinator,
            status: ArcSwap::from_pointee(CachedStatus {
                built: Instant::now() - STATUS_MAX_AGE * 2,
                generation: usize::MAX,
                full: Arc::new(Vec::new()),
                user: Arc::new(Vec::new()),
            }),
            refreshing: AtomicBool::new(false),
            stop,
            version,
            openapi,
        }
    }

    /// Deployments running now (any copy's), from the small `ACTIVE` collection.
    async fn active_entries(&self) -> Result<Vec<HistoryEntry>, String> {
        Ok(self
            .deployments()
            .active()
            .await?
            .into_iter()
            .map(|record| record.history_entry(Vec::new()))
            .collect())
    }

    fn deployments(&self) -> DeploymentStore {
        DeploymentStore::new(self.coordinator.records().clone())
    }

    /// The overview, for developers and for users.
    async fn build_status(&self) -> Result<(serde_json::Value, serde_json::Value), String> {
        let active = self.active_entries().await?;
        let history = crate::history::History::new(self.coordinator.records().clone());
        let mut latest = None;
        let mut after = None;
        // The newest finished deployment; only running ones come before it.
        'pages: loop {
            let page = history.after(after.clone(), 50).await?;
            let full = page.len() == 50;
            for (key, entry) in page {
                after = Some(key);
                if entry.status.is_terminal() {
                    latest = Some(entry);
                    break 'pages;
                }
            }
            if !full {
                break;
            }
        }
        let status = if active.is_empty() { "idle" } else { "running" };
        let user = json!({
            "status": status,
            "active": active.iter().map(HistoryEntry::user_view).collect::<Vec<_>>(),
            "latest": latest.as_ref().map(HistoryEntry::user_view),
            "plugin_version": self.version,
        });
        let full = json!({
            "status": status,
            "active": active,
            "latest": latest,
            "plugin_version": self.version,
        });
        Ok((full, user))
    }

    async fn record(&self, id: &str) -> Result<DeploymentRecord, ApiError> {
        if !is_deployment_id(id) {
            return Err(not_found("deployment", id));
        }
        self.deployments()
            .record(id)
            .await
            .map_err(store_error)?
            .ok_or_else(|| not_found("deployment", id))
    }

    async fn targets(&self, id: &str) -> Result<Vec<TargetRecord>, ApiError> {
        self.deployments().targets(id).await.map_err(store_error)
    }

    /// One deployment's summary; without error texts unless `details`.
    async fn summary(&self, id: &str, details: bool) -> Result<serde_json::Value, ApiError> {
        let record = self.record(id).await?;
        let targets = self.targets(id).await?;
        let failed = targets
            .iter()
            .filter(|target| target.status != crate::deployment::TargetStatus::Succeeded)
            .map(|target| target.environment_id.clone())
            .collect::<Vec<_>>();
        let entry = record.history_entry(if record.status.is_terminal() {
            failed
        } else {
            Vec::new()
        });
        let mut entry = if details {
            serde_json::to_value(entry).unwrap_or_default()
        } else {
            entry.user_view()
        };
        entry["environment_status"] = targets
            .iter()
            .map(|target| (target.environment_id.clone(), json!(target.status)))
            .collect::<serde_json::Map<_, _>>()
            .into();
        Ok(entry)
    }

    async fn log_lines(&self, id: &str) -> Result<Vec<(String, Vec<LogLine>)>, ApiError> {
        self.deployments().log_chunks(id).await.map_err(store_error)
    }

    async fn route(&self, request: &Request) -> Answer {
        let path = request.path.trim_end_matches('/');
        let segments: Vec<&str> = path.split('/').filter(|part| !part.is_empty()).collect();
        let method = request.method.as_str();
        let mut allowed: Vec<&str> = Vec::new();
        for route in ROUTES {
            let Some(id) = route.matches(&segments) else {
                continue;
            };
            if route.method != method {
                allowed.push(route.method);
                continue;
            }
            if let Some(needed) = route.needs {
                Response::require(request, needed).map_err(ApiError::Denied)?;
            }
            return (route.handler)(self, request, id).await;
        }
        if allowed.is_empty() {
            return Err(ApiError::NoRoute(request.path.clone()));
        }
        Err(ApiError::MethodNotAllowed {
            method: method.to_owned(),
            path: request.path.clone(),
            allowed,
        })
    }
}

/// A route's handler: the API, the request, and the path's `{id}` when its pattern has one.
type RouteHandler =
    for<'a> fn(
        &'a Api,
        &'a Request,
        Option<&'a str>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Answer> + Send + 'a>>;

/// One route, declared once: routing, the `Allow` list of a 405 and the role check all read
/// [`ROUTES`]; `openapi` lists the same handlers (its unit test checks every route is there).
pub(crate) struct Route {
    pub(crate) method: &'static str,
    /// Segments after the mount; `{id}` matches any one segment and is handed to the handler.
    pub(crate) pattern: &'static [&'static str],
    /// The least role that may call it; `None`: anyone, even without a key.
    pub(crate) needs: Option<Role>,
    handler: RouteHandler,
}

impl Route {
    /// `Some(id)` (the `{id}` segment, if the pattern has one) when the path matches.
    fn matches<'a>(&self, segments: &[&'a str]) -> Option<Option<&'a str>> {
        if segments.len() != self.pattern.len() {
            return None;
        }
        let mut id = None;
        for (pattern, segment) in self.pattern.iter().zip(segments) {
            if *pattern == "{id}" {
                id = Some(*segment);
            } else if pattern != segment {
                return None;
            }
        }
        Some(id)
    }
}

/// The path's `{id}`; every pattern that hands one to its handler has it.
fn id(id: Option<&str>) -> &str {
    id.unwrap_or_default()
}

pub(crate) const ROUTES: &[Route] = &[
    Route {
        method: "GET",
        pattern: &["status"],
        needs: Some(Role::User),
        handler: |api, request, _| Box::pin(status(api, request)),
    },
    Route {
        method: "GET",
        pattern: &["dashboard"],
        needs: Some(Role::User),
        handler: |api, request, _| Box::pin(dashboard(api, request)),
    },
    Route {
        method: "GET",
        pattern: &["openapi.json"],
        // Public, like the host's `/api/openapi.json` it is merged into.
        needs: None,
        handler: |api, _, _| Box::pin(openapi_document(api)),
    },
    Route {
        method: "POST",
        pattern: &["trigger-local"],
        needs: Some(Role::Admin),
        handler: |api, request, _| Box::pin(trigger_local(api, request)),
    },
    Route {
        method: "POST",
        pattern: &["one-click"],
        needs: Some(Role::Admin),
        handler: |api, request, _| Box::pin(one_click(api, request)),
    },
    Route {
        method: "GET",
        pattern: &["history"],
        needs: Some(Role::Developer),
        handler: |api, request, _| Box::pin(history(api, request)),
    },
    Route {
        method: "GET",
        pattern: &["deployments", "{id}"],
        needs: Some(Role::Developer),
        handler: |api, _, path| Box::pin(detail(api, id(path))),
    },
    Route {
        method: "GET",
        pattern: &["deployments", "{id}", "logs"],
        needs: Some(Role::Developer),
        handler: |api, request, path| Box::pin(logs(api, request, id(path))),
    },
    Route {
        method: "POST",
        pattern: &["deployments", "{id}", "cancel"],
        needs: Some(Role::Admin),
        handler: |api, request, path| Box::pin(cancel(api, request, id(path))),
    },
    Route {
        method: "POST",
        pattern: &["deployments", "{id}", "retry"],
        needs: Some(Role::Admin),
        handler: |api, request, path| Box::pin(retry(api, request, id(path))),
    },
    Route {
        method: "GET",
        pattern: &["environments"],
        needs: Some(Role::Developer),
        handler: |api, _, _| Box::pin(list_environments(api)),
    },
    Route {
        method: "POST",
        pattern: &["environments"],
        needs: Some(Role::Admin),
        handler: |api, request, _| Box::pin(create_environment(api, request)),
    },
    Route {
        method: "GET",
        pattern: &["environments", "{id}"],
        needs: Some(Role::Developer),
        handler: |api, _, path| Box::pin(get_environment(api, id(path))),
    },
    Route {
        method: "PUT",
        pattern: &["environments", "{id}"],
        needs: Some(Role::Admin),
        handler: |api, request, path| Box::pin(replace_environment(api, request, id(path))),
    },
    Route {
        method: "DELETE",
        pattern: &["environments", "{id}"],
        needs: Some(Role::Admin),
        handler: |api, _, path| Box::pin(delete_environment(api, id(path))),
    },
    Route {
        method: "POST",
        pattern: &["environments", "{id}", "health-check"],
        needs: Some(Role::Developer),
        handler: |api, _, path| Box::pin(health_check(api, id(path))),
    },
];

async fn openapi_document(api: &Api) -> Answer {
    Ok(Response {
        status: 200,
        headers: vec![("content-type".into(), "application/json".into())],
        body: (api.openapi)().to_vec(),
        stream: None,
    })
}

#[utoipa::path(
    get, path = "/status", tag = "deployment",
    params(("id" = Option<String>, Query, description = "One deployment's summary instead of the overview")),
    responses((status = 200, description = "Active deployments and the latest finished one, or one deployment", body = crate::wire::StatusAnswer))
)]
pub(crate) async fn status(api: &Api, request: &Request) -> Answer {
    let details = sees_details(request);
    if let Some(id) = request.query_param("id") {
        let entry = api.summary(&id, details).await?;
        return Ok(Response::json(200, &entry));
    }
    let answer = |cached: &CachedStatus| {
        let body = if details { &cached.full } else { &cached.user };
        Response {
            status: 200,
            headers: vec![("content-type".into(), "application/json".into())],
            body: body.as_ref().clone(),
            stream: None,
        }
    };
    let cached = api.status.load();
    let fresh = cached.generation == api.coordinator.generation()
        && cached.built.elapsed() < STATUS_MAX_AGE;
    // One request rebuilds a stale view; the others keep serving the previous one.
    if fresh || (!cached.full.is_empty() && api.refreshing.swap(true, Ordering::SeqCst)) {
        return Ok(answer(&cached));
    }
    let generation = api.coordinator.generation();
    let built = api.build_status().await;
    api.refreshing.store(false, Ordering::SeqCst);
    let (full, user) = built.map_err(store_error)?;
    let rebuilt = CachedStatus {
        built: Instant::now(),
        generation,
        full: Arc::new(serde_json::to_vec(&full).unwrap_or_default()),
        user: Arc::new(serde_json::to_vec(&user).unwrap_or_default()),
    };
    let response = answer(&rebuilt);
    api.status.store(Arc::new(rebuilt));
    Ok(response)
}

#[utoipa::path(
    get, path = "/deployments/{id}", tag = "deployment",
    params(crate::wire::DeploymentId),
    responses((status = 200, description = "The full record", body = crate::wire::DeploymentDetail))
)]
pub(crate) async fn detail(api: &Api, id: &str) -> Answer {
    let record = api.record(id).await?;
    let targets = api.targets(id).await?;
    let lines: Vec<LogLine> = api
        .log_lines(id)
        .await?
        .into_iter()
        .flat_map(|(_, chunk)| chunk)
        .collect();
    let skip = lines.len().saturating_sub(DETAIL_LOG_LINES);
    let mut body = serde_json::to_value(&record).unwrap_or_default();
    if let Some(object) = body.as_object_mut() {
        object.remove("boot_id");
        object.remove("created_ms");
    }
    body["phase"] = json!(record.status);
    body["results"] = json!(targets);
    body["logs"] = json!(lines[skip..]);
    body["logs_truncated"] = json!(skip > 0);
    Ok(Response::json(200, &body))
}

#[utoipa::path(
    get, path = "/deployments/{id}/logs", tag = "deployment",
    params(crate::wire::DeploymentId, ("follow" = Option<bool>, Query, description = "Stream NDJSON lines until the deployment ends")),
    responses(
        (status = 200, description = "The whole log, or with `follow` a stream of lines", content(
            (crate::wire::LogsAnswer = "application/json"),
            (crate::triggers::LogLine = "application/x-ndjson"),
        )),
    )
)]
pub(crate) async fn logs(api: &Api, request: &Request, id: &str) -> Answer {
    let record = api.record(id).await?;
    let follow = match request.query_param("follow").as_deref() {
        None | Some("false") | Some("0") => false,
        Some("true") | Some("1") | Some("") => true,
        Some(other) => {
            return Err(bad_field(FieldError::new(
                "follow",
                format!("{other:?} is not a boolean; use true or false"),
            )))
        }
    };
    if !follow {
        let lines: Vec<LogLine> = api
            .log_lines(id)
            .await?
            .into_iter()
            .flat_map(|(_, chunk)| chunk)
            .collect();
        return Ok(Response::json(
            200,
            &json!({
                "deployment_id": id,
                "status": record.status,
                "complete": record.status.is_terminal(),
                "total_lines": record.log_lines.max(lines.len() as u64),
                "lines": lines,
            }),
        ));
    }
    Ok(Response::streamed(
        200,
        "application/x-ndjson",
        follow_stream(api.deployments(), id.to_owned(), api.stop.clone()),
    ))
}

#[utoipa::path(
    post, path = "/trigger-local", tag = "deployment",
    params(("Idempotency-Key" = Option<String>, Header, description = "Repeats the first answer for the same key and body")),
    request_body(content = Option<crate::wire::TriggerRequest>, content_type = "application/json"),
    responses((status = 202, description = "Started; follow `status_url`", body = crate::wire::Accepted))
)]
pub(crate) async fn trigger_local(api: &Api, request: &Request) -> Answer {
    trigger(api, request).await
}

#[utoipa::path(
    post, path = "/one-click", tag = "deployment",
    params(("Idempotency-Key" = Option<String>, Header, description = "Repeats the first answer for the same key and body")),
    request_body(content = Option<crate::wire::TriggerRequest>, content_type = "application/json"),
    responses((status = 202, description = "Started (the original's name for trigger-local)", body = crate::wire::Accepted))
)]
pub(crate) async fn one_click(api: &Api, request: &Request) -> Answer {
    trigger(api, request).await
}

async fn trigger(api: &Api, request: &Request) -> Answer {
    let body: TriggerBody = if request.body.iter().all(u8::is_ascii_whitespace) {
        TriggerBody {
            environments: None,
            version: None,
            ec2: None,
        }
    } else {
        from_json_object(&request.body).map_err(bad_field)?
    };
    let caller = request
        .principal
        .as_ref()
        .map(|caller| caller.name.clone())
        .unwrap_or_default();
    let idempotency = match request.header("idempotency-key") {
        None => None,
        Some(key) if key.is_empty() || key.len() > 255 => {
            return Err(bad_field(FieldError::new(
                "Idempotency-Key",
                "must be 1 to 255 characters",
            )))
        }
        Some(key) => Some((
            format!("{caller}/{}", hex::encode(Sha256::digest(key.as_bytes()))),
            hex::encode(Sha256::digest(&request.body)),
        )),
    };
    let request_start = |deployment_id: Option<String>| StartRequest {
        deployment_id,
        environments: body.environments.clone(),
        version: body.version.clone(),
        ec2: body.ec2,
        triggered_by: format!("api:{caller}"),
        request_id: Some(request.request_id.clone()),
        retry_of: None,
    };
    let Some((key, fingerprint)) = idempotency else {
        let started = api
            .coordinator
            .start(request_start(None))
            .await
            .map_err(ApiError::from)?;
        return Ok(accepted(request, &started.deployment_id, "pending"));
    };
    let keys = IdempotencyStore::new(api.coordinator.records().clone());
    let deadline = Instant::now() + IDEMPOTENCY_WAIT;
    loop {
        let created_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as u64;
        let mine = IdempotencyRecord::starting(
            fingerprint.clone(),
            crate::deployment::new_deployment_id(created_ms),
            created_ms,
        );
        let Some(earlier) = keys.claim(&key, &mine).await.map_err(store_error)? else {
            // This request owns the key: start, then record the outcome for the others.
            return match api
                .coordinator
                .start(request_start(Some(mine.deployment_id.clone())))
                .await
            {
                Ok(started) => {
                    keys.started(&key, &mine).await.map_err(store_error)?;
                    Ok(accepted(request, &started.deployment_id, "pending"))
                }
                Err(error) => {
                    // Nothing started: free the key, so a retry can start it.
                    let _ = keys.release(&key, &mine).await;
                    Err(ApiError::from(error))
                }
            };
        };
        match earlier {
            Some(earlier) if earlier.fingerprint != fingerprint => {
                return Err(ApiError::unprocessable(
                    "idempotency_key_reused",
                    "this Idempotency-Key was used with a different body; use a new key for a new request",
                ))
            }
            Some(earlier) if !earlier.is_starting() => {
                return Ok(accepted(request, &earlier.deployment_id, "pending"))
            }
            // Another request with this key is starting it (or the key was just freed): wait
            // for its outcome, then answer the same.
            _ if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            _ => {
                return Err(ApiError::conflict(
                    "idempotency_key_in_use",
                    "a request with this Idempotency-Key is still starting its deployment; retry shortly",
                ))
            }
        }
    }
}

#[utoipa::path(
    post, path = "/deployments/{id}/cancel", tag = "deployment",
    params(crate::wire::DeploymentId),
    responses(
        (status = 200, description = "Cancelled; the summary as recorded", body = crate::wire::DeploymentSummary),
        (status = 202, description = "Cancel requested; the run has not recorded its end yet", body = crate::wire::Cancelling),
    )
)]
pub(crate) async fn cancel(api: &Api, request: &Request, id: &str) -> Answer {
    let record = api.record(id).await?;
    if record.status.is_terminal() {
        return Err(ApiError::conflict(
            "already_finished",
            format!(
                "deployment {id} already ended as {}",
                record.status.as_str()
            ),
        ));
    }
    let by = request
        .principal
        .as_ref()
        .map(|caller| caller.name.clone())
        .unwrap_or_default();
    api.coordinator.cancel(id, &by).await.map_err(store_error)?;
    // Wait (bounded) for the run to record the end, so the answer shows it.
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let record = api.record(id).await?;
        if record.status.is_terminal() {
            return Ok(Response::json(200, &api.summary(id, true).await?));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(Response::json(
        202,
        &json!({ "deployment_id": id, "status": "cancelling" }),
    ))
}

#[utoipa::path(
    post, path = "/deployments/{id}/retry", tag = "deployment",
    params(crate::wire::DeploymentId),
    responses((status = 202, description = "A new deployment of the environments that did not succeed", body = crate::wire::Accepted))
)]
pub(crate) async fn retry(api: &Api, request: &Request, id: &str) -> Answer {
    let record = api.record(id).await?;
    if !record.status.is_terminal() {
        return Err(ApiError::conflict(
            "still_running",
            format!(
                "deployment {id} is still {}; retry it once it ended",
                record.status.as_str()
            ),
        ));
    }
    let failed: Vec<String> = api
        .targets(id)
        .await?
        .into_iter()
        .filter(|target| target.status != crate::deployment::TargetStatus::Succeeded)
        .map(|target| target.environment_id)
        .collect();
    if failed.is_empty() {
        return Err(ApiError::unprocessable(
            "nothing_to_retry",
            format!("every environment of {id} succeeded; there is nothing to retry"),
        ));
    }
    let caller = request
        .principal
        .as_ref()
        .map(|caller| caller.name.clone())
        .unwrap_or_default();
    let started = api
        .coordinator
        .start(StartRequest {
            deployment_id: None,
            environments: Some(failed),
            version: Some(record.version),
            ec2: None,
            triggered_by: format!("retry:{caller}"),
            request_id: Some(request.request_id.clone()),
            retry_of: Some(id.to_owned()),
        })
        .await
        .map_err(ApiError::from)?;
    Ok(accepted(request, &started.deployment_id, "pending"))
}

#[utoipa::path(
    get, path = "/history", tag = "deployment",
    params(
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 500, description = "Page size (default 50)"),
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page"),
        ("status" = Option<crate::deployment::Phase>, Query, description = "Only deployments in this status"),
        ("environment" = Option<String>, Query, description = "Only deployments that include this environment"),
    ),
    responses((status = 200, description = "Deployments, newest first", body = crate::wire::HistoryPage))
)]
pub(crate) async fn history(api: &Api, request: &Request) -> Answer {
    let limit = number_param(request, "limit", 50, 1..=500)?;
    let status = match request.query_param("status") {
        None => None,
        Some(text) => match Phase::parse(&text) {
            Some(phase) => Some(phase),
            None => {
                return Err(bad_field(FieldError::new(
                    "status",
                    format!("{text:?} is not a deployment status (pending, local_deploying, completed, failed, cancelled, interrupted, …)"),
                )))
            }
        },
    };
    let environment = request.query_param("environment");
    if let Some(id) = &environment {
        check_id(id).map_err(|error| bad_field(FieldError::new("environment", error.message)))?;
    }
    let cursor = request.query_param("cursor");
    if let Some(cursor) = &cursor {
        let valid = cursor.split_once('/').is_some_and(|(time, id)| {
            time.len() == 20 && time.bytes().all(|b| b.is_ascii_digit()) && is_deployment_id(id)
        });
        if !valid {
            return Err(bad_field(FieldError::new(
                "cursor",
                "is not a cursor from an earlier page's next_cursor",
            )));
        }
    }
    let filter = crate::history::Filter {
        status,
        environment,
    };
    let page = crate::history::History::new(api.coordinator.records().clone())
        .page(&filter, cursor.as_deref(), limit)
        .await
        .map_err(store_error)?;
    Ok(Response::json(
        200,
        &json!({
            "history": page.entries.iter().map(|(_, entry)| entry).collect::<Vec<_>>(),
            "total_count": page.total,
            "next_cursor": page.next_cursor,
        }),
    ))
}

/// The aggregate the dashboard draws: counts by status, environments with their health and
/// last result, active runs, and success rate and mean duration over the last `window`.
#[utoipa::path(
    get, path = "/dashboard", tag = "deployment",
    params(("window" = Option<u32>, Query, minimum = 1, maximum = 1000, description = "Finished deployments the figures cover (default 50)")),
    responses((status = 200, description = "The aggregate the dashboard draws", body = crate::wire::DashboardAnswer))
)]
pub(crate) async fn dashboard(api: &Api, request: &Request) -> Answer {
    let window = number_param(request, "window", 50, 1..=1000)?;
    let details = sees_details(request);
    let history = crate::history::History::new(api.coordinator.records().clone());
    // Counters and keyed reads: the answer costs the same whatever the history's length.
    let counts = history.counts().await.map_err(store_error)?;
    let total_count: u64 = counts.values().sum();
    let last = history.last_deployments().await.map_err(store_error)?;
    let active = api.active_entries().await.map_err(store_error)?;
    let running: std::collections::HashMap<&str, &HistoryEntry> = active
        .iter()
        .flat_map(|entry| {
            entry
                .environments
                .iter()
                .map(move |environment| (environment.as_str(), entry))
        })
        .collect();
    let mut finished: Vec<HistoryEntry> = Vec::with_capacity(window);
    let mut after = None;
    // The newest `window` finished deployments; only running ones are skipped on the way.
    'pages: loop {
        let page = history
            .after(after.clone(), 200)
            .await
            .map_err(store_error)?;
        let full = page.len() == 200;
        for (key, entry) in page {
            after = Some(key);
            if entry.status.is_terminal() {
                finished.push(entry);
                if finished.len() == window {
                    break 'pages;
                }
            }
        }
        if !full {
            break;
        }
    }
    let succeeded = finished
        .iter()
        .filter(|entry| entry.status == Phase::Completed)
        .count();
    let durations: Vec<u64> = finished
        .iter()
        .filter_map(|entry| entry.duration_ms)
        .collect();
    let catalog = api.coordinator.catalog();
    let stored = catalog.list().await.map_err(store_error)?;
    let health = catalog.all_health().await.map_err(store_error)?;
    let environments: Vec<serde_json::Value> = stored
        .iter()
        .map(|stored| {
            let id = stored.environment.environment_id.as_str();
            // A user sees what runs and how it does, not how it is reached.
            let mut view = if details {
                catalog::public_view(stored, health.get(id))
            } else {
                catalog::user_view(stored, health.get(id))
            };
            view["last_deployment"] = match (running.get(id), last.get(id)) {
                (Some(entry), _) => json!({
                    "deployment_id": entry.deployment_id,
                    "status": entry.status,
                    "succeeded": null,
                    "finished_at": null,
                }),
                (None, Some(last)) => json!({
                    "deployment_id": last.deployment_id,
                    "status": last.status,
                    "succeeded": last.succeeded,
                    "finished_at": last.finished_at,
                }),
                (None, None) => json!(null),
            };
            view
        })
        .collect();
    let active: Vec<serde_json::Value> = active
        .iter()
        .map(|entry| {
            if details {
                serde_json::to_value(entry).unwrap_or_default()
            } else {
                entry.user_view()
            }
        })
        .collect();
    Ok(Response::json(
        200,
        &json!({
            "counts": counts,
            "total_count": total_count,
            "environments": environments,
            "active": active,
            "recent": {
                "window": window,
                "finished": finished.len(),
                "success_rate": if finished.is_empty() { json!(null) } else { json!(succeeded as f64 / finished.len() as f64) },
                "mean_duration_ms": if durations.is_empty() { json!(null) } else { json!(durations.iter().sum::<u64>() / durations.len() as u64) },
            },
            "plugin_version": api.version,
        }),
    ))
}

#[utoipa::path(
    get, path = "/environments", tag = "deployment",
    responses((status = 200, description = "Every environment with its last health", body = crate::wire::EnvironmentList))
)]
pub(crate) async fn list_environments(api: &Api) -> Answer {
    let catalog = api.coordinator.catalog();
    let list = catalog.list().await.map_err(store_error)?;
    let health = catalog.all_health().await.map_err(store_error)?;
    let views: Vec<_> = list
        .iter()
        .map(|stored| catalog::public_view(stored, health.get(&stored.environment.environment_id)))
        .collect();
    Ok(Response::json(
        200,
        &json!({ "environments": views, "total_count": views.len() }),
    ))
}

#[utoipa::path(
    get, path = "/environments/{id}", tag = "deployment",
    params(crate::wire::EnvironmentId),
    responses((status = 200, description = "One environment (secrets shown as `has_*`)", body = crate::wire::EnvironmentView))
)]
pub(crate) async fn get_environment(api: &Api, id: &str) -> Answer {
    let catalog = api.coordinator.catalog();
    let stored = catalog
        .get(id)
        .await
        .map_err(store_error)?
        .ok_or_else(|| not_found("environment", id))?;
    let health = catalog.health(id).await.map_err(store_error)?;
    Ok(Response::json(
        200,
        &catalog::public_view(&stored, health.as_ref()),
    ))
}

#[utoipa::path(
    post, path = "/environments", tag = "deployment",
    request_body(content = crate::environments::EnvironmentJson, content_type = "application/json"),
    responses((status = 201, description = "Created; `Location` names it", body = crate::wire::EnvironmentView))
)]
pub(crate) async fn create_environment(api: &Api, request: &Request) -> Answer {
    let environment = environments::parse_one(&request.body).map_err(bad_field)?;
    environment.check_secrets_not_empty().map_err(bad_field)?;
    let id = environment.environment_id.clone();
    let created = api
        .coordinator
        .catalog()
        .create(environment)
        .await
        .map_err(store_error)?;
    if !created {
        return Err(ApiError::Conflict {
            code: "duplicate_environment",
            message: format!(
                "environment_id: {id:?} already exists; PUT /environments/{id} replaces it"
            ),
            field: Some("environment_id"),
        });
    }
    let mut answer = get_environment(api, &id).await?;
    answer.status = 201;
    Ok(answer.with_header("location", format!("{}/environments/{id}", mount(request))))
}

#[utoipa::path(
    put, path = "/environments/{id}", tag = "deployment",
    params(crate::wire::EnvironmentId),
    request_body(content = crate::environments::EnvironmentJson, content_type = "application/json", description = "The whole environment; an omitted secret is kept, an empty one cleared"),
    responses((status = 200, description = "Replaced", body = crate::wire::EnvironmentView))
)]
pub(crate) async fn replace_environment(api: &Api, request: &Request, id: &str) -> Answer {
    let mut body: serde_json::Value = serde_json::from_slice(&request.body)
        .map_err(|error| bad_field(FieldError::new("body", format!("malformed JSON: {error}"))))?;
    let Some(object) = body.as_object_mut() else {
        return Err(bad_field(FieldError::new("body", "expected a JSON object")));
    };
    match object.get("environment_id") {
        None => {
            object.insert("environment_id".into(), json!(id));
        }
        Some(given) if given == id => {}
        Some(_) => {
            return Err(bad_field(FieldError::new(
                "environment_id",
                format!("does not match the id in the path ({id:?}); ids cannot be changed"),
            )))
        }
    }
    let text = serde_json::to_vec(&body).unwrap_or_default();
    let environment: Environment = environments::parse_one(&text).map_err(bad_field)?;
    let replaced = api
        .coordinator
        .catalog()
        .replace(environment)
        .await
        .map_err(store_error)?;
    if replaced.is_none() {
        return Err(not_found("environment", id));
    }
    get_environment(api, id).await
}

#[utoipa::path(
    delete, path = "/environments/{id}", tag = "deployment",
    params(crate::wire::EnvironmentId),
    responses((status = 200, description = "Deleted", body = crate::wire::Deleted))
)]
pub(crate) async fn delete_environment(api: &Api, id: &str) -> Answer {
    match api
        .coordinator
        .catalog()
        .delete(id)
        .await
        .map_err(store_error)?
    {
        catalog::Deleted::Deleted => {
            api.coordinator.environment_deleted(id);
            Ok(Response::json(200, &json!({ "deleted": id })))
        }
        catalog::Deleted::Missing => Err(not_found("environment", id)),
        catalog::Deleted::Busy { deployment } => Err(ApiError::conflict(
            "environment_busy",
            format!(
                "environment {id:?} is part of running deployment {deployment}; cancel it or wait"
            ),
        )),
    }
}

#[utoipa::path(
    post, path = "/environments/{id}/health-check", tag = "deployment",
    params(crate::wire::EnvironmentId),
    responses((status = 200, description = "The check's result, also recorded", body = crate::wire::HealthCheckAnswer))
)]
pub(crate) async fn health_check(api: &Api, id: &str) -> Answer {
    let stored = api
        .coordinator
        .catalog()
        .get(id)
        .await
        .map_err(store_error)?
        .ok_or_else(|| not_found("environment", id))?;
    let Some(url) = stored.environment.health_check_url.clone() else {
        return Err(ApiError::unprocessable(
            "no_health_check_url",
            format!("environment {id:?} has no health_check_url to check"),
        ));
    };
    let timeout = Duration::from_secs(api.coordinator.settings().health_check_timeout_secs);
    let report = health::check(api.coordinator.http(), &url, timeout).await;
    api.coordinator
        .record_health(id, &report)
        .await
        .map_err(store_error)?;
    Ok(Response::json(
        200,
        &json!({ "environment_id": id, "health": report }),
    ))
}

/// A numeric query parameter within `range`, `default` when absent; the error names it.
fn number_param(
    request: &Request,
    name: &str,
    default: usize,
    range: std::ops::RangeInclusive<usize>,
) -> Result<usize, ApiError> {
    let Some(text) = request.query_param(name) else {
        return Ok(default);
    };
    match text.parse::<usize>() {
        Ok(value) if range.contains(&value) => Ok(value),
        _ => Err(bad_field(FieldError::new(
            name,
            format!(
                "{text:?} is not a number between {} and {}",
                range.start(),
                range.end()
            ),
        ))),
    }
}

/// The 202 of a started deployment.
fn accepted(request: &Request, deployment_id: &str, status: &str) -> Response {
    let status_url = format!("{}/deployments/{deployment_id}", mount(request));
    Response::json(
        202,
        &json!({
            "deployment_id": deployment_id,
            "status": status,
            "status_url": status_url,
        }),
    )
    .with_header("location", status_url)
}

/// NDJSON of a deployment's log: what is stored, then new lines as they are stored, until the
/// deployment ends (a last `{"end": …}` line says how).
fn follow_stream(
    deployments: DeploymentStore,
    id: String,
    stop: CancellationToken,
) -> plugin_guest::BodyStream {
    let state = (deployments, id, None::<String>, false, stop);
    Box::pin(futures_util::stream::unfold(
        state,
        |(deployments, id, mut after, ended, stop)| async move {
            if ended {
                return None;
            }
            loop {
                // Read the status first: lines stored before it ended are then all visible.
                let status = deployments
                    .record(&id)
                    .await
                    .ok()
                    .flatten()
                    .map(|record| record.status);
                let chunks = deployments
                    .log_chunks_after(&id, after.as_deref(), 100)
                    .await
                    .unwrap_or_default();
                let mut out = Vec::new();
                for (key, lines) in chunks {
                    for line in lines {
                        out.extend(serde_json::to_vec(&line).unwrap_or_default());
                        out.push(b'\n');
                    }
                    after = Some(key);
                }
                if !out.is_empty() {
                    return Some((out, (deployments, id, after, false, stop)));
                }
                match status {
                    Some(status) if status.is_terminal() => {
                        let mut end = serde_json::to_vec(&json!({ "end": true, "status": status }))
                            .unwrap_or_default();
                        end.push(b'\n');
                        return Some((end, (deployments, id, after, true, stop)));
                    }
                    None => return None,
                    Some(_) => {}
                }
                tokio::select! {
                    _ = stop.cancelled() => return None,
                    _ = tokio::time::sleep(FOLLOW_POLL) => {}
                }
            }
        },
    ))
}

impl Handler for Api {
    async fn handle(&self, request: Request) -> Response {
        match self.route(&request).await {
            Ok(response) => response,
            Err(error) => error.into(),
        }
    }

    async fn shutdown(&self) {
        self.stop.cancel();
        let host_stopping = crate::host_lifecycle(self.coordinator.records())
            .await
            .is_some_and(|lifecycle| lifecycle.state == "stopping");
        self.coordinator.shutdown(host_stopping).await;
    }
}
