//! What goes out on the wire: the API's bodies (what handlers answer, what the CLI reads back and
//! what the OpenAPI document describes) and the role views events carry, one type each. They are built from the stored records
//! (`deployment`, `catalog`) by the `From`/`new` functions here, so a stored record can change
//! without changing an answer, and an answer without migrating the store.
//!
//! Role views: a caller with the user role sees what runs and how it does, never how an
//! environment is reached or what went wrong in detail (error texts, output, URLs name hosts,
//! paths and commands). Those fields are `Option`s that are absent from a user's answer.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::{
    deployment::{
        BatchStatus, DeploymentRecord, GateStatus, HealthReport, HistoryEntry, Phase, TargetRecord,
        TargetStatus, LISTED_ENVIRONMENTS,
    },
    environments::{ConnectionMethod, EnvironmentJson, EnvironmentType},
    persist::catalog::{EnvironmentVersions, Source, StoredEnvironment},
    rollout::{Amount, BatchKind, GateKind, OnFailure, RollbackMode, RolloutJson, StrategyJson},
    triggers::LogLine,
};

/// A field the user role may not see: `None` leaves it out of the answer, `Some(None)` is `null`
/// (what developers and admins get when there is nothing to show).
pub type Hidden<T> = Option<Option<T>>;

/// Whether a caller sees details (developers and admins) or the user view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    User,
    Details,
}

impl View {
    fn details(self) -> bool {
        self == View::Details
    }

    /// `value` for details, left out for users.
    fn hide<T>(self, value: Option<T>) -> Hidden<T> {
        self.details().then_some(value)
    }
}

/// The path parameter of `/deployments/{id}…`.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
pub struct DeploymentId {
    /// Deployment id (`dep-<ms>-<8 hex>`).
    #[param(pattern = "^dep-[0-9]+-[0-9a-f]{8}$")]
    #[allow(dead_code)] // Read by the derive.
    id: String,
}

/// The path parameter of `/environments/{id}…`.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
pub struct EnvironmentId {
    /// Environment id.
    #[param(pattern = "^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]
    #[allow(dead_code)] // Read by the derive.
    id: String,
}

/// `POST /trigger-local` and `/one-click`. An empty body deploys every enabled environment.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TriggerRequest {
    /// Environment ids; all enabled environments when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environments: Option<Vec<String>>,
    /// Instead of `environments`: every enabled environment whose `tags` hold all of these
    /// pairs (`{"tier": "prod"}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<BTreeMap<String, String>>,
    /// The version to deploy; `platform_version` (or `DEPLOYMENT_VERSION`) when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Run the EC2 phase; the configured default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ec2: Option<bool>,
    /// How the environments roll out; all at once when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<StrategyJson>,
    /// Failures tolerated (a count, or a percentage of the environments); one more stops
    /// the deployment. Unlimited when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_failures: Option<Amount>,
    /// When failures exceed `max_failures`: `stop` (default) or `cancel_running`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_failure: Option<OnFailure>,
    /// When it fails: roll back `none` (default), the `failed` environments, or `all` it
    /// changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback: Option<RollbackMode>,
}

impl TriggerRequest {
    /// The rollout fields together. (They are the request's own fields rather than a
    /// flattened part: serde cannot name the field at fault inside a flattened one, nor
    /// refuse unknown fields next to it.)
    pub fn rollout(&self) -> RolloutJson {
        RolloutJson {
            strategy: self.strategy.clone(),
            max_failures: self.max_failures,
            on_failure: self.on_failure,
            rollback: self.rollback,
        }
    }

    /// Sets the rollout fields.
    pub fn with_rollout(mut self, rollout: RolloutJson) -> TriggerRequest {
        self.strategy = rollout.strategy;
        self.max_failures = rollout.max_failures;
        self.on_failure = rollout.on_failure;
        self.rollback = rollout.rollback;
        self
    }
}

/// A started deployment (202).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Accepted {
    pub deployment_id: String,
    /// `pending`.
    pub status: Phase,
    /// Where to follow it; also in `Location`.
    pub status_url: String,
}

/// `idle` or `running`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Activity {
    Idle,
    Running,
}

impl Activity {
    pub fn as_str(self) -> &'static str {
        match self {
            Activity::Idle => "idle",
            Activity::Running => "running",
        }
    }
}

/// A deployment as lists show it (history, status, dashboard).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DeploymentEntry {
    pub deployment_id: String,
    pub status: Phase,
    /// 0–100.
    pub progress: u8,
    pub version: String,
    pub triggered_by: String,
    /// The first 100 environments, in the order they were requested (the deployment's detail
    /// names them all).
    pub environments: Vec<String>,
    /// How many environments it has.
    pub environment_count: usize,
    /// The first 100 environments that did not succeed, once it ended.
    pub failed_environments: Vec<String>,
    /// How many environments did not succeed, once it ended.
    pub failed_count: usize,
    pub created_at: String,
    pub finished_at: Option<String>,
    pub duration_ms: Option<u64>,
    pub retry_of: Option<String>,
    /// Whether it recorded an error.
    #[serde(default)]
    pub has_error: bool,
    /// The last error (null when none); absent for the user role.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub error: Hidden<String>,
}

impl DeploymentEntry {
    pub fn new(entry: &HistoryEntry, view: View) -> DeploymentEntry {
        DeploymentEntry {
            deployment_id: entry.deployment_id.clone(),
            status: entry.status,
            progress: entry.progress,
            version: entry.version.clone(),
            triggered_by: entry.triggered_by.clone(),
            environments: entry
                .environments
                .iter()
                .take(LISTED_ENVIRONMENTS)
                .cloned()
                .collect(),
            environment_count: entry.total_environments(),
            failed_environments: entry
                .failed_environments
                .iter()
                .take(LISTED_ENVIRONMENTS)
                .cloned()
                .collect(),
            failed_count: entry.total_failed(),
            created_at: entry.created_at.clone(),
            finished_at: entry.finished_at.clone(),
            duration_ms: entry.duration_ms,
            retry_of: entry.retry_of.clone(),
            has_error: entry.error.is_some(),
            error: view.hide(entry.error.clone()),
        }
    }
}

/// `GET /status` without `id`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct StatusOverview {
    pub status: Activity,
    pub active: Vec<DeploymentEntry>,
    /// The newest finished deployment.
    pub latest: Option<DeploymentEntry>,
    pub plugin_version: String,
}

/// One deployment's summary: its entry plus each environment's status.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DeploymentSummary {
    #[serde(flatten)]
    pub entry: DeploymentEntry,
    pub environment_status: BTreeMap<String, TargetStatus>,
    /// Its batches (one for an all-at-once deployment).
    #[serde(default)]
    pub batches: Vec<BatchView>,
    /// A canary's gate, once the canary has run.
    #[serde(default)]
    pub gate: Option<GateView>,
}

/// One batch of a deployment.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BatchView {
    /// 1-based, in rollout order.
    pub number: usize,
    pub kind: BatchKind,
    pub status: BatchStatus,
    pub environments: Vec<String>,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
}

impl BatchView {
    pub fn all(record: &DeploymentRecord) -> Vec<BatchView> {
        (0..record.batches.len())
            .filter_map(|index| BatchView::new(record, index))
            .collect()
    }

    pub fn new(record: &DeploymentRecord, index: usize) -> Option<BatchView> {
        let batch = record.batches.get(index)?;
        Some(BatchView {
            number: index + 1,
            kind: batch.kind,
            status: batch.status,
            environments: record.batch_environments(index).to_vec(),
            started_at: batch.started_at.clone(),
            finished_at: batch.finished_at.clone(),
        })
    }
}

/// A canary's gate.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct GateView {
    pub kind: GateKind,
    pub status: GateStatus,
    pub opened_at: String,
    /// When a waiting manual gate ends the deployment `cancelled`.
    pub deadline_at: Option<String>,
    /// Who approved or rejected it (`gate` when the gate decided itself, `timeout`).
    pub decided_by: Option<String>,
    pub decided_at: Option<String>,
}

impl GateView {
    pub fn of(record: &DeploymentRecord) -> Option<GateView> {
        let gate = record.gate.as_ref()?;
        Some(GateView {
            kind: gate.kind,
            status: gate.status,
            opened_at: gate.opened_at.clone(),
            deadline_at: gate.deadline_ms.map(|ms| {
                crate::triggers::timestamp(
                    std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms),
                )
            }),
            decided_by: gate.decided_by.clone(),
            decided_at: gate.decided_at.clone(),
        })
    }
}

/// Event `deployment.batch`: a batch started or ended.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BatchEvent {
    pub deployment_id: String,
    pub batches: usize,
    pub batch: BatchView,
}

impl BatchEvent {
    pub fn new(record: &DeploymentRecord, index: usize) -> Option<BatchEvent> {
        Some(BatchEvent {
            deployment_id: record.deployment_id.clone(),
            batches: record.batches.len(),
            batch: BatchView::new(record, index)?,
        })
    }
}

/// Event `deployment.gate`: a gate opened (waiting) or was decided (with who).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct GateEvent {
    pub deployment_id: String,
    pub status: Phase,
    pub gate: GateView,
}

impl GateEvent {
    pub fn new(record: &DeploymentRecord) -> Option<GateEvent> {
        Some(GateEvent {
            deployment_id: record.deployment_id.clone(),
            status: record.status,
            gate: GateView::of(record)?,
        })
    }
}

/// `GET /status`: the overview, or with `?id=` one deployment's summary.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum StatusAnswer {
    One(DeploymentSummary),
    Overview(StatusOverview),
}

/// `POST /deployments/{id}/cancel` while the run has not recorded its end within 10 s.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Cancelling {
    pub deployment_id: String,
    /// `cancelling`.
    pub status: String,
}

/// A health report as shown; users see whether and when, not the URL or the error.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct HealthView {
    pub healthy: bool,
    pub checked_at: String,
    pub http_status: Option<u16>,
    pub latency_ms: u64,
    /// The checked URL (credentials masked); absent for the user role.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Why it is unhealthy; absent when healthy, and for the user role.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl HealthView {
    pub fn new(report: &HealthReport, view: View) -> HealthView {
        HealthView {
            healthy: report.healthy,
            checked_at: report.checked_at.clone(),
            http_status: report.http_status,
            latency_ms: report.latency_ms,
            url: Some(report.url.clone()).filter(|_| view.details()),
            error: report.error.clone().filter(|_| view.details()),
        }
    }
}

/// One environment's result in a deployment.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TargetResult {
    pub environment_id: String,
    pub connection_method: String,
    pub status: TargetStatus,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub duration_ms: Option<u64>,
    pub exit_code: Option<i32>,
    /// Whether the verification found it healthy; null when not checked.
    pub healthy: Option<bool>,
    /// What the trigger reported (for example the HTTP status); absent for the user role.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub detail: Hidden<String>,
    /// Why it failed; absent for the user role.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub error: Hidden<String>,
    /// The last lines it wrote (the full log is at `/logs`); absent for the user role.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_tail: Option<Vec<LogLine>>,
    /// The verification's report (null when not checked); absent for the user role.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<HealthView>)]
    pub health: Hidden<HealthView>,
    /// The version it had before this deployment (what a rollback returns it to).
    #[serde(default)]
    pub previous_version: Option<String>,
    /// Its rollback, when it was rolled back.
    #[serde(default)]
    pub rollback: Option<RollbackView>,
}

/// An environment's rollback; users do not see its error text.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RollbackView {
    /// The version it was rolled back to.
    pub version: String,
    pub succeeded: bool,
    pub exit_code: Option<i32>,
    pub finished_at: String,
    /// Why it failed; absent for the user role.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub error: Hidden<String>,
}

impl TargetResult {
    pub fn new(record: &TargetRecord, view: View) -> TargetResult {
        let details = view.details();
        TargetResult {
            environment_id: record.environment_id.clone(),
            connection_method: record.connection_method.clone(),
            status: record.status,
            started_at: record.started_at.clone(),
            finished_at: record.finished_at.clone(),
            duration_ms: record.duration_ms,
            exit_code: record.exit_code,
            healthy: record.health.as_ref().map(|health| health.healthy),
            detail: view.hide(record.detail.clone()),
            error: view.hide(record.error.clone()),
            output_tail: details.then(|| record.output_tail.clone()),
            health: view.hide(
                record
                    .health
                    .as_ref()
                    .map(|health| HealthView::new(health, view)),
            ),
            previous_version: record.previous_version.clone(),
            rollback: record.rollback.as_ref().map(|rollback| RollbackView {
                version: rollback.version.clone(),
                succeeded: rollback.succeeded,
                exit_code: rollback.exit_code,
                finished_at: rollback.finished_at.clone(),
                error: view.hide(rollback.error.clone()),
            }),
        }
    }
}

/// `GET /deployments/{id}`: the full record.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DeploymentDetail {
    pub deployment_id: String,
    pub status: Phase,
    /// The same as `status`.
    pub phase: Phase,
    /// 0–100.
    pub progress: u8,
    pub version: String,
    pub triggered_by: String,
    /// The id of the request that started it.
    pub request_id: Option<String>,
    pub environments: Vec<String>,
    /// The EC2 phase's result: `skipped`, or the instances found and started.
    #[schema(value_type = Object)]
    pub ec2: serde_json::Value,
    pub errors: Vec<String>,
    pub created_at: String,
    pub finished_at: Option<String>,
    pub duration_ms: Option<u64>,
    pub retry_of: Option<String>,
    /// Lines recorded so far (all of them are at `/logs`).
    pub log_lines: u64,
    pub results: Vec<TargetResult>,
    /// The last lines (all of them are at `/logs`).
    pub logs: Vec<LogLine>,
    pub logs_truncated: bool,
    /// Strategy, failure threshold and rollback, as given (with defaults filled in).
    #[serde(default)]
    pub rollout: RolloutJson,
    #[serde(default)]
    pub batches: Vec<BatchView>,
    #[serde(default)]
    pub gate: Option<GateView>,
}

impl DeploymentDetail {
    pub fn new(
        record: DeploymentRecord,
        results: Vec<TargetResult>,
        logs: Vec<LogLine>,
        logs_truncated: bool,
    ) -> DeploymentDetail {
        let batches = BatchView::all(&record);
        let gate = GateView::of(&record);
        DeploymentDetail {
            rollout: record.rollout.into(),
            batches,
            gate,
            deployment_id: record.deployment_id,
            status: record.status,
            phase: record.status,
            progress: record.progress,
            version: record.version,
            triggered_by: record.triggered_by,
            request_id: record.request_id,
            environments: record.environments,
            ec2: record.ec2,
            errors: record.errors,
            created_at: record.created_at,
            finished_at: record.finished_at,
            duration_ms: record.duration_ms,
            retry_of: record.retry_of,
            log_lines: record.log_lines,
            results,
            logs,
            logs_truncated,
        }
    }
}

/// `GET /deployments/{id}/logs`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct LogsAnswer {
    pub deployment_id: String,
    pub status: Phase,
    /// Whether the deployment has ended (no more lines will come).
    pub complete: bool,
    /// Lines the deployment wrote, kept or not (past `max_log_lines` they are counted only).
    pub total_lines: u64,
    /// Lines stored so far: the log's pages cover `0..stored_lines`.
    #[serde(default)]
    pub stored_lines: u64,
    /// The number of the first line in `lines` among the stored lines.
    #[serde(default)]
    pub first_line: u64,
    /// Where the next page starts (`?from=`), while stored lines follow this page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_from: Option<u64>,
    pub lines: Vec<LogLine>,
}

/// The last line of a followed log (`?follow=true`): the deployment ended, in this status.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct LogEnd {
    /// Always true.
    pub end: bool,
    pub status: Phase,
}

/// `GET /history`: newest first.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct HistoryPage {
    pub history: Vec<DeploymentEntry>,
    /// Matching deployments over all pages.
    pub total_count: u64,
    /// Pass as `cursor` for the next page; null on the last.
    pub next_cursor: Option<String>,
}

/// How an environment is reached and where it came from: for developers and admins only, so
/// the schema requires none of it. Secrets are never shown, only whether they are set.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ConnectionDetails {
    pub host: Option<String>,
    pub port: Option<u16>,
    pub username: Option<String>,
    pub ssh_key_path: Option<String>,
    pub known_hosts_path: Option<String>,
    pub init_script_path: Option<String>,
    pub working_directory: Option<String>,
    /// Credentials masked.
    pub health_check_url: Option<String>,
    /// Seconds its trigger and verification may take.
    #[schema(required = false)]
    pub timeout: u64,
    /// Credentials masked.
    pub webhook_url: Option<String>,
    pub command: Option<Vec<String>>,
    pub rollback_command: Option<Vec<String>>,
    pub rollback_script_path: Option<String>,
    /// `local`: the variables its command gets besides the deployment's own.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schema(required = false)]
    pub env: BTreeMap<String, String>,
    #[schema(required = false)]
    pub has_api_token: bool,
    #[schema(required = false)]
    pub has_webhook_secret: bool,
    /// `file` (from `environments_file`) or `api`.
    #[schema(required = false)]
    pub source: EnvironmentSource,
    #[schema(required = false)]
    pub updated_at: String,
}

/// Where an environment's definition came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EnvironmentSource {
    File,
    Api,
}

/// An environment as shown.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct EnvironmentView {
    pub environment_id: String,
    pub environment_type: EnvironmentType,
    pub connection_method: ConnectionMethod,
    pub enabled: bool,
    pub tags: BTreeMap<String, String>,
    pub description: Option<String>,
    /// Rollout order (lower first, then by id).
    #[serde(default)]
    pub order: i64,
    /// The version of its last successful deployment (or rollback); null before the first.
    #[serde(default)]
    pub deployed_version: Option<String>,
    /// The version it had before that.
    #[serde(default)]
    pub previous_version: Option<String>,
    /// How it is reached; absent for the user role (so none of its fields is required).
    #[serde(flatten, default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = ConnectionDetails)]
    pub connection: Option<ConnectionDetails>,
    pub last_health: Option<HealthView>,
}

impl EnvironmentView {
    pub fn new(
        stored: &StoredEnvironment,
        health: Option<&HealthReport>,
        versions: Option<&EnvironmentVersions>,
        view: View,
    ) -> EnvironmentView {
        let flat = EnvironmentJson::from(stored.environment.clone());
        let connection = view.details().then(|| ConnectionDetails {
            host: flat.host,
            port: flat.port,
            username: flat.username,
            ssh_key_path: flat.ssh_key_path,
            known_hosts_path: flat.known_hosts_path,
            init_script_path: flat.init_script_path,
            working_directory: flat.working_directory,
            health_check_url: flat.health_check_url.as_deref().map(crate::redact::url),
            timeout: flat.timeout,
            webhook_url: flat.webhook_url.as_deref().map(crate::redact::url),
            command: flat.command,
            rollback_command: flat.rollback_command,
            rollback_script_path: flat.rollback_script_path,
            env: flat.env,
            has_api_token: stored.has_api_token,
            has_webhook_secret: stored.has_webhook_secret,
            source: match stored.source {
                Source::File => EnvironmentSource::File,
                Source::Api => EnvironmentSource::Api,
            },
            updated_at: stored.updated_at.clone(),
        });
        EnvironmentView {
            environment_id: flat.environment_id,
            environment_type: flat.environment_type,
            connection_method: flat.connection_method,
            enabled: flat.enabled,
            tags: flat.tags,
            description: flat.description,
            order: flat.order,
            deployed_version: versions.map(|versions| versions.deployed_version.clone()),
            previous_version: versions.and_then(|versions| versions.previous_version.clone()),
            connection,
            last_health: health.map(|report| HealthView::new(report, view)),
        }
    }
}

/// `GET /environments`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct EnvironmentList {
    pub environments: Vec<EnvironmentView>,
    pub total_count: u64,
}

/// `DELETE /environments/{id}`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Deleted {
    pub deleted: String,
}

/// `POST /environments/{id}/health-check`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct HealthCheckAnswer {
    pub environment_id: String,
    pub health: HealthView,
}

/// An environment's last deployment, on the dashboard.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct LastDeployment {
    pub deployment_id: String,
    pub status: Phase,
    /// Whether this environment succeeded in it; null while it runs.
    pub succeeded: Option<bool>,
    pub finished_at: Option<String>,
}

/// An environment card of the dashboard.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DashboardEnvironment {
    #[serde(flatten)]
    pub environment: EnvironmentView,
    pub last_deployment: Option<LastDeployment>,
}

/// Success rate and mean duration over the last `window` finished deployments.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RecentFigures {
    pub window: u64,
    pub finished: u64,
    pub success_rate: Option<f64>,
    pub mean_duration_ms: Option<u64>,
}

/// `GET /dashboard`: what the page draws.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DashboardAnswer {
    /// Deployments by status.
    pub counts: BTreeMap<String, u64>,
    pub total_count: u64,
    pub environments: Vec<DashboardEnvironment>,
    pub active: Vec<DeploymentEntry>,
    pub recent: RecentFigures,
    pub plugin_version: String,
}

/// The error answer of every route: a code to branch on, a message to show, and the field at
/// fault when there is one.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ErrorAnswer {
    pub error: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// Event `deployment.phase`: a deployment moved to another phase.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PhaseEvent {
    pub deployment_id: String,
    pub status: Phase,
    pub previous: Option<Phase>,
    pub progress: u8,
    /// The first [`LISTED_ENVIRONMENTS`] environments; `environment_count` says how many there
    /// are (an event stays a few kilobytes whatever the deployment's size).
    pub environments: Vec<String>,
    #[serde(default)]
    pub environment_count: usize,
    #[serde(default)]
    pub error_count: usize,
    /// The first [`LISTED_ERRORS`] errors so far; absent for the user role (they name hosts and
    /// URLs). The deployment's record has them all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errors: Option<Vec<String>>,
    pub at: String,
}

/// Errors a phase event lists.
pub const LISTED_ERRORS: usize = 20;

impl PhaseEvent {
    pub fn new(
        record: &DeploymentRecord,
        previous: Option<Phase>,
        at: String,
        view: View,
    ) -> PhaseEvent {
        PhaseEvent {
            deployment_id: record.deployment_id.clone(),
            status: record.status,
            previous,
            progress: record.progress,
            environments: record
                .environments
                .iter()
                .take(LISTED_ENVIRONMENTS)
                .cloned()
                .collect(),
            environment_count: record.environments.len(),
            error_count: record.errors.len(),
            errors: view
                .details()
                .then(|| record.errors.iter().take(LISTED_ERRORS).cloned().collect()),
            at,
        }
    }
}

/// Event `deployment.environment`: one environment of a deployment moved.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct EnvironmentEvent {
    pub deployment_id: String,
    pub progress: u8,
    pub environment: TargetResult,
}

/// Event `deployment.log` (developers and admins only): lines stored in a deployment's log.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct LogEvent {
    pub deployment_id: String,
    pub lines: Vec<LogLine>,
}

/// Event `environment.health`: an environment's health changed.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct HealthEvent {
    pub environment_id: String,
    pub health: HealthView,
}

/// Event `environment.deleted`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DeletedEvent {
    pub environment_id: String,
}

/// Publishes an event: `full` for developers and admins, `user` (when given) for the user role,
/// which otherwise does not receive it.
pub fn publish<T: Serialize>(host: &plugin_guest::Host, kind: &str, full: &T, user: Option<&T>) {
    let encode = |event: &T| serde_json::to_value(event).unwrap_or_default();
    match user {
        Some(user) => host.publish_by_role(kind, &encode(full), Some(&encode(user))),
        None => host.publish_by_role(kind, &encode(full), None),
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::environments::{parse, Environment};

    /// A catalog entry as the store keeps it.
    fn stored(environment: Environment, source: Source, secrets_set: bool) -> StoredEnvironment {
        StoredEnvironment {
            environment,
            source,
            updated_at: "2026-01-01T00:00:00.000Z".into(),
            file_version: None,
            file_secrets_sha256: None,
            has_api_token: secrets_set,
            has_webhook_secret: secrets_set,
        }
    }

    #[test]
    fn secrets_are_not_in_any_environment_view() {
        let text = r#"{"environments": [
            {"environment_id": "h", "environment_type": "linux_local", "connection_method": "http_api", "host": "127.0.0.1", "api_token": "tok-123"},
            {"environment_id": "w", "environment_type": "linux_local", "connection_method": "webhook", "webhook_url": "http://127.0.0.1:1/hook", "webhook_secret": "whs-456"}]}"#;
        let environments = parse(text).unwrap_or_default();
        assert_eq!(environments.len(), 2);
        assert_eq!(environments[0].api_token(), Some("tok-123"));
        assert_eq!(environments[1].webhook_secret(), Some("whs-456"));
        for environment in environments {
            // Even a stored environment that still held its secrets would not show them.
            let stored = stored(environment, Source::Api, true);
            for view in [View::Details, View::User] {
                let shown = serde_json::to_string(&EnvironmentView::new(&stored, None, None, view))
                    .unwrap_or_default();
                assert!(shown.contains("\"environment_id\""), "{shown}");
                assert!(
                    !shown.contains("tok-123") && !shown.contains("whs-456"),
                    "{shown}"
                );
            }
        }
    }

    #[test]
    fn a_user_sees_no_connection_detail() {
        let environment = crate::environments::parse_one(
            br#"{"environment_id": "s", "environment_type": "linux_local", "connection_method": "ssh", "host": "127.0.0.1", "username": "deployer", "ssh_key_path": "/keys/id", "init_script_path": "/opt/deploy.sh"}"#,
        )
        .expect("valid");
        let stored = stored(environment, Source::File, false);
        let report = HealthReport {
            healthy: false,
            url: "http://127.0.0.1:9/health".into(),
            checked_at: "2026-01-01T00:00:00.000Z".into(),
            http_status: None,
            error: Some("connection refused by 127.0.0.1".into()),
            latency_ms: 3,
        };
        let user = serde_json::to_value(EnvironmentView::new(
            &stored,
            Some(&report),
            None,
            View::User,
        ))
        .expect("serializes");
        let text = user.to_string();
        for detail in [
            "127.0.0.1",
            "deployer",
            "/opt/deploy.sh",
            "source",
            "timeout",
        ] {
            assert!(!text.contains(detail), "{detail} in {text}");
        }
        assert_eq!(user["last_health"]["healthy"], false);
        let full = serde_json::to_value(EnvironmentView::new(
            &stored,
            Some(&report),
            None,
            View::Details,
        ))
        .expect("serializes");
        assert_eq!(full["host"], "127.0.0.1");
        assert_eq!(full["source"], "file");
        assert_eq!(
            full["last_health"]["error"],
            "connection refused by 127.0.0.1"
        );
        // What a developer reads back is the same view.
        let read: EnvironmentView = serde_json::from_value(full).expect("reads back");
        assert!(read
            .connection
            .is_some_and(|details| details.username.as_deref() == Some("deployer")));
        let read: EnvironmentView = serde_json::from_value(user).expect("reads back");
        assert!(read.connection.is_none());
    }

    #[test]
    fn hidden_fields_are_null_for_details_and_absent_for_users() {
        let entry = HistoryEntry {
            deployment_id: "dep-1-00000000".into(),
            status: Phase::Completed,
            progress: 100,
            version: "1".into(),
            triggered_by: "test".into(),
            environments: vec!["a".into()],
            environment_count: 1,
            failed_environments: Vec::new(),
            failed_count: 0,
            created_at: "2026-01-01T00:00:00.000Z".into(),
            finished_at: None,
            duration_ms: None,
            retry_of: None,
            error: None,
        };
        let full = serde_json::to_value(DeploymentEntry::new(&entry, View::Details)).expect("json");
        assert!(
            full.as_object().is_some_and(|o| o.contains_key("error")),
            "{full}"
        );
        assert!(full["error"].is_null() && full["has_error"] == false);
        let user = serde_json::to_value(DeploymentEntry::new(&entry, View::User)).expect("json");
        assert!(
            user.as_object().is_some_and(|o| !o.contains_key("error")),
            "{user}"
        );
        let record = TargetRecord::new("a", "local", TargetStatus::Failed);
        let full = serde_json::to_value(TargetResult::new(&record, View::Details)).expect("json");
        for key in ["detail", "error", "health", "output_tail"] {
            assert!(
                full.as_object().is_some_and(|o| o.contains_key(key)),
                "{key}: {full}"
            );
        }
        let user = serde_json::to_value(TargetResult::new(&record, View::User)).expect("json");
        for key in ["detail", "error", "health", "output_tail"] {
            assert!(
                user.as_object().is_some_and(|o| !o.contains_key(key)),
                "{key}: {user}"
            );
        }
    }
}
