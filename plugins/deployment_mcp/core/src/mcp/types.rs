//! The tools' arguments and results as Rust types: serde reads the arguments (errors name the
//! field) and writes the results, and their `ToSchema` descriptions are the tools' input and
//! output schemas. Results are the API's `wire` types, or thin wrappers of them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::{
    deployment::Phase,
    model::LogLine,
    rollout::{Amount, OnFailure, RollbackMode, StrategyJson},
    wire::{
        any_of_schema, Accepted, DashboardEnvironment, DeploymentState, DeploymentSummary,
        HistoryPage, StatusOverview, TriggerRequest,
    },
};

/// Log lines a tool or resource returns at most.
pub const MAX_LOG_LINES: usize = 1000;
/// How long `trigger_deployment` with `wait` follows the deployment at most.
pub(super) const MAX_WAIT_SECS: u64 = 3600;

/// No arguments.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NoArguments {}

/// One environment.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EnvironmentArguments {
    /// The environment id
    pub id: String,
}

/// One deployment.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeploymentArguments {
    /// The deployment id (dep-<ms>-<8 hex>)
    pub id: String,
}

/// `list_deployments`' filters (the history's; developers and above).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ListDeploymentsArguments {
    /// Page size (default 20)
    #[serde(default)]
    #[schema(minimum = 1, maximum = 100)]
    pub limit: Option<u32>,
    /// next_cursor of the previous page
    #[serde(default)]
    pub cursor: Option<String>,
    /// Only this status: completed, failed, cancelled, interrupted, rolled_back, awaiting_approval, local_deploying, …
    #[serde(default)]
    pub status: Option<String>,
    /// Only deployments that include this environment
    #[serde(default)]
    pub environment: Option<String>,
}

/// `list_audit_entries`' filters: those of `GET /api/audit`.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AuditArguments {
    /// Only entries of this key name
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    /// Only this action, e.g. deployment.trigger, environment.update
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    /// Only this resource, e.g. deployment:<id>, environment:<id>
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
    /// Only entries that concern this environment
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
    /// ok, denied or failed
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
    /// rest, mcp, cli, dashboard, schedule or auto
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<String>,
    /// RFC 3339: entries at or after this time
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    /// RFC 3339: entries at or before this time
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<String>,
    /// Only the entries of this request
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// Page size (default 50)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 100)]
    pub limit: Option<u32>,
    /// next_cursor of the previous page
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
}

/// A page of the audit log, newest first: each entry's seq, at, actor, via, tool, action,
/// resource, outcome, request_id, reason, changes, environments, prev_hash and hash.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
pub struct AuditOutput {
    pub entries: Vec<serde_json::Value>,
    /// The cursor of the next page; null on the last.
    pub next_cursor: Option<String>,
}

/// Which lines of a deployment's log.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LogArguments {
    /// The deployment id
    pub id: String,
    /// The last N lines (default 100)
    #[serde(default)]
    #[schema(minimum = 1, maximum = 1000)]
    pub tail: Option<usize>,
    /// Instead of tail: the first line to return (0-based)
    #[serde(default)]
    #[schema(minimum = 0)]
    pub offset: Option<usize>,
    /// With offset: lines to return (default 100)
    #[serde(default)]
    #[schema(minimum = 1, maximum = 1000)]
    pub limit: Option<usize>,
}

/// `trigger_deployment`: the trigger body, and whether to follow the deployment.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TriggerArguments {
    /// Environment ids; every enabled environment when absent
    #[serde(default)]
    pub environments: Option<Vec<String>>,
    /// Instead of environments: every enabled environment whose tags hold all these pairs
    #[serde(default)]
    pub selector: Option<BTreeMap<String, String>>,
    /// The version to deploy
    #[serde(default)]
    pub version: Option<String>,
    /// Run the EC2 phase; the configured default when absent
    #[serde(default)]
    pub ec2: Option<bool>,
    /// {"type": "all_at_once"} (default), {"type": "rolling", "batch_size": 2 | "25%", "pause_secs": 0}, or {"type": "canary", "canary": 1, "gate": "manual" | "auto", "bake_secs": 0, "then": {...}}
    #[serde(default)]
    pub strategy: Option<StrategyJson>,
    /// Failures tolerated (a count, or a percentage like "10%"); one more stops the deployment
    #[serde(default)]
    pub max_failures: Option<Amount>,
    /// When failures exceed max_failures: stop (default) or cancel_running
    #[serde(default)]
    pub on_failure: Option<OnFailure>,
    /// When it fails: roll back none (default), the failed environments, or all it changed
    #[serde(default)]
    pub rollback: Option<RollbackMode>,
    /// Deploy through closed deployment windows: why (kept on the deployment and in the audit log)
    #[serde(default)]
    pub override_reason: Option<String>,
    /// Follow the deployment with progress notifications and return its final record (or its record when it waits at a gate)
    #[serde(default)]
    pub wait: bool,
    /// How long wait follows it (default 600)
    #[serde(default)]
    #[schema(minimum = 1, maximum = 3600)]
    pub wait_timeout_secs: Option<u64>,
}

impl TriggerArguments {
    /// The API's trigger body.
    pub fn request(&self) -> TriggerRequest {
        TriggerRequest {
            environments: self.environments.clone(),
            selector: self.selector.clone(),
            version: self.version.clone(),
            ec2: self.ec2,
            strategy: self.strategy.clone(),
            max_failures: self.max_failures,
            on_failure: self.on_failure,
            rollback: self.rollback,
            window_override: self
                .override_reason
                .clone()
                .map(|reason| crate::wire::WindowOverrideRequest { reason }),
        }
    }
}

/// One deployment window.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WindowArguments {
    /// The window id
    pub id: String,
}

/// One schedule.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScheduleArguments {
    /// The schedule id
    pub id: String,
}

/// What the windows say of one environment.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExplainWindowArguments {
    /// The environment id
    pub environment: String,
    /// An RFC 3339 instant; now when absent
    #[serde(default)]
    pub at: Option<String>,
}

/// `list_environments`: every environment in the caller's view.
#[derive(Debug, Serialize, ToSchema)]
pub struct EnvironmentsOutput {
    pub environments: Vec<DashboardEnvironment>,
    pub total_count: usize,
}

/// `list_deployments`: the history for developers and above, the overview for users.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum DeploymentsOutput {
    History(HistoryPage),
    Overview(Box<StatusOverview>),
}

any_of_schema!(DeploymentsOutput: HistoryPage, StatusOverview);

/// A deployment as the caller may see it: the record without its log for developers and above,
/// the summary for users.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum DeploymentOutput {
    Record(Box<DeploymentState>),
    Summary(Box<DeploymentSummary>),
}

any_of_schema!(DeploymentOutput: DeploymentState, DeploymentSummary);

/// A page of a deployment's log.
#[derive(Debug, Serialize, ToSchema)]
pub struct LogsOutput {
    pub deployment_id: crate::model::DeploymentId,
    pub status: Phase,
    /// Whether the deployment has ended (no more lines will come).
    pub complete: bool,
    /// Lines the deployment wrote.
    pub total_lines: u64,
    /// The number of the first line in `lines`.
    pub first_line: u64,
    /// Whether stored lines lie outside this page.
    pub truncated: bool,
    pub lines: Vec<LogLine>,
}

/// `trigger_deployment`: the started deployment, or with `wait` its record once followed.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum TriggerOutput {
    Started(Accepted),
    Followed(Box<Followed>),
}

any_of_schema!(TriggerOutput: Accepted, Followed);

/// A followed deployment's record, and why the following stopped before its end, if it did.
#[derive(Debug, Serialize, ToSchema)]
pub struct Followed {
    #[serde(flatten)]
    pub deployment: DeploymentState,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}
