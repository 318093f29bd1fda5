//! The API's answers as the OpenAPI document describes them. Handlers assemble these answers
//! from several stored records; the structs here give them a name and a schema (the schemathesis
//! run in CI checks every answer against them). Leaves are the stored types themselves
//! (`HistoryEntry`, `TargetRecord`, `LogLine`, `Environment`…).

#![allow(dead_code)] // The answer structs are read by the derive, never built.

use std::collections::BTreeMap;

use serde::Serialize;
use utoipa::{IntoParams, ToSchema};

use crate::{
    deployment::{HealthReport, HistoryEntry, Phase, TargetRecord, TargetStatus},
    environments::{ConnectionMethod, EnvironmentType},
    triggers::LogLine,
};

/// The path parameter of `/deployments/{id}…`.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
pub struct DeploymentId {
    /// Deployment id (`dep-<ms>-<8 hex>`).
    #[param(pattern = "^dep-[0-9]+-[0-9a-f]{8}$")]
    id: String,
}

/// The path parameter of `/environments/{id}…`.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
pub struct EnvironmentId {
    /// Environment id.
    #[param(pattern = "^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]
    id: String,
}

/// `POST /trigger-local` and `/one-click`. An empty body deploys every enabled environment.
#[derive(Serialize, ToSchema)]
pub struct TriggerRequest {
    /// Environment ids; all enabled environments when absent.
    environments: Option<Vec<String>>,
    /// The version to deploy; `platform_version` (or `DEPLOYMENT_VERSION`) when absent.
    version: Option<String>,
    /// Run the EC2 phase; the configured default when absent.
    ec2: Option<bool>,
}

/// A started deployment (202).
#[derive(Serialize, ToSchema)]
pub struct Accepted {
    deployment_id: String,
    status: String,
    /// Where to follow it; also in `Location`.
    status_url: String,
}

/// `GET /status` without `id`.
#[derive(Serialize, ToSchema)]
pub struct StatusOverview {
    /// `idle` or `running`.
    status: String,
    active: Vec<HistoryEntry>,
    latest: Option<HistoryEntry>,
    plugin_version: String,
}

/// One deployment's summary: its history entry plus each environment's status.
#[derive(Serialize, ToSchema)]
pub struct DeploymentSummary {
    deployment_id: String,
    status: Phase,
    progress: u8,
    version: String,
    triggered_by: String,
    environments: Vec<String>,
    failed_environments: Vec<String>,
    created_at: String,
    finished_at: Option<String>,
    duration_ms: Option<u64>,
    retry_of: Option<String>,
    error: Option<String>,
    environment_status: BTreeMap<String, TargetStatus>,
}

/// `GET /status`: the overview, or with `?id=` one deployment's summary.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
pub enum StatusAnswer {
    Overview(StatusOverview),
    One(DeploymentSummary),
}

/// `POST /deployments/{id}/cancel` while the run has not recorded its end within 10 s.
#[derive(Serialize, ToSchema)]
pub struct Cancelling {
    deployment_id: String,
    /// `cancelling`.
    status: String,
}

/// `GET /deployments/{id}`: the full record.
#[derive(Serialize, ToSchema)]
pub struct DeploymentDetail {
    deployment_id: String,
    status: Phase,
    /// The same as `status`.
    phase: Phase,
    /// 0–100.
    progress: u8,
    version: String,
    triggered_by: String,
    /// The id of the request that started it.
    request_id: Option<String>,
    environments: Vec<String>,
    /// The EC2 phase's result: `skipped`, or the instances found and started.
    #[schema(value_type = Object)]
    ec2: serde_json::Value,
    errors: Vec<String>,
    created_at: String,
    finished_at: Option<String>,
    duration_ms: Option<u64>,
    retry_of: Option<String>,
    /// Lines recorded so far (all of them are at `/logs`).
    log_lines: u64,
    results: Vec<TargetRecord>,
    /// The last 200 lines.
    logs: Vec<LogLine>,
    logs_truncated: bool,
}

/// `GET /deployments/{id}/logs`.
#[derive(Serialize, ToSchema)]
pub struct LogsAnswer {
    deployment_id: String,
    status: Phase,
    /// Whether the deployment has ended (no more lines will come).
    complete: bool,
    total_lines: u64,
    lines: Vec<LogLine>,
}

/// `GET /history`: newest first.
#[derive(Serialize, ToSchema)]
pub struct HistoryPage {
    history: Vec<HistoryEntry>,
    /// Matching deployments over all pages.
    total_count: u64,
    /// Pass as `cursor` for the next page; null on the last.
    next_cursor: Option<String>,
}

/// An environment as shown: secrets are replaced by whether they are set.
#[derive(Serialize, ToSchema)]
pub struct EnvironmentView {
    environment_id: String,
    environment_type: EnvironmentType,
    connection_method: ConnectionMethod,
    host: Option<String>,
    port: Option<u16>,
    username: Option<String>,
    ssh_key_path: Option<String>,
    known_hosts_path: Option<String>,
    init_script_path: Option<String>,
    working_directory: Option<String>,
    health_check_url: Option<String>,
    timeout: u64,
    webhook_url: Option<String>,
    command: Option<Vec<String>>,
    enabled: bool,
    tags: BTreeMap<String, String>,
    description: Option<String>,
    has_api_token: bool,
    has_webhook_secret: bool,
    /// `file` (from `environments_file`) or `api`.
    source: String,
    updated_at: String,
    last_health: Option<HealthReport>,
}

/// `GET /environments`.
#[derive(Serialize, ToSchema)]
pub struct EnvironmentList {
    environments: Vec<EnvironmentView>,
    total_count: u64,
}

/// `DELETE /environments/{id}`.
#[derive(Serialize, ToSchema)]
pub struct Deleted {
    deleted: String,
}

/// `POST /environments/{id}/health-check`.
#[derive(Serialize, ToSchema)]
pub struct HealthCheckAnswer {
    environment_id: String,
    health: HealthReport,
}

/// An environment's last deployment, on the dashboard.
#[derive(Serialize, ToSchema)]
pub struct LastDeployment {
    deployment_id: String,
    status: Phase,
    /// Whether this environment succeeded in it; null while it runs.
    succeeded: Option<bool>,
    finished_at: Option<String>,
}

/// An environment card of the dashboard.
#[derive(Serialize, ToSchema)]
pub struct DashboardEnvironment {
    #[serde(flatten)]
    environment: EnvironmentView,
    last_deployment: Option<LastDeployment>,
}

/// Success rate and mean duration over the last `window` finished deployments.
#[derive(Serialize, ToSchema)]
pub struct RecentFigures {
    window: u64,
    finished: u64,
    success_rate: Option<f64>,
    mean_duration_ms: Option<u64>,
}

/// `GET /dashboard`: what the page draws.
#[derive(Serialize, ToSchema)]
pub struct DashboardAnswer {
    /// Deployments by status.
    counts: BTreeMap<String, u64>,
    total_count: u64,
    environments: Vec<DashboardEnvironment>,
    active: Vec<HistoryEntry>,
    recent: RecentFigures,
    plugin_version: String,
}
