//! What a deployment is, as stored and shown: the run record, one result per environment, and
//! the history entry.

use serde::{Deserialize, Serialize};

use crate::{
    model::LogLine,
    model::{DeploymentId, Ec2Phase, EnvironmentId, Timestamp},
    rollout::{BatchKind, GateKind, Rollout},
};

/// The deployment state machine (the original's phases).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Pending,
    Ec2Deploying,
    Ec2Completed,
    LocalTriggering,
    LocalDeploying,
    LocalCompleted,
    Verifying,
    /// A canary's manual gate: waiting for approve or reject.
    AwaitingApproval,
    /// Between batches, a deployment window closes the next batch: waiting for it to open.
    AwaitingWindow,
    /// A failed deployment rolling its environments back.
    RollingBack,
    Completed,
    Failed,
    Cancelled,
    Interrupted,
    /// Failed, and every environment it rolled back is back on its previous version.
    RolledBack,
}

impl Phase {
    /// Every phase, in state-machine order.
    pub const ALL: [Phase; 15] = [
        Phase::Pending,
        Phase::Ec2Deploying,
        Phase::Ec2Completed,
        Phase::LocalTriggering,
        Phase::LocalDeploying,
        Phase::LocalCompleted,
        Phase::Verifying,
        Phase::AwaitingApproval,
        Phase::AwaitingWindow,
        Phase::RollingBack,
        Phase::Completed,
        Phase::Failed,
        Phase::Cancelled,
        Phase::Interrupted,
        Phase::RolledBack,
    ];

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Phase::Completed
                | Phase::Failed
                | Phase::Cancelled
                | Phase::Interrupted
                | Phase::RolledBack
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "pending",
            Phase::Ec2Deploying => "ec2_deploying",
            Phase::Ec2Completed => "ec2_completed",
            Phase::LocalTriggering => "local_triggering",
            Phase::LocalDeploying => "local_deploying",
            Phase::LocalCompleted => "local_completed",
            Phase::Verifying => "verifying",
            Phase::AwaitingApproval => "awaiting_approval",
            Phase::AwaitingWindow => "awaiting_window",
            Phase::RollingBack => "rolling_back",
            Phase::RolledBack => "rolled_back",
            Phase::Completed => "completed",
            Phase::Failed => "failed",
            Phase::Cancelled => "cancelled",
            Phase::Interrupted => "interrupted",
        }
    }

    pub fn parse(text: &str) -> Option<Phase> {
        serde_json::from_value(serde_json::Value::String(text.to_owned())).ok()
    }
}

/// One environment's state within a deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TargetStatus {
    Pending,
    Triggering,
    Running,
    Succeeded,
    Failed,
    TimedOut,
    Cancelled,
    /// Not started: the deployment stopped first (a failure threshold, a rejected gate).
    Skipped,
    /// Failed or changed, then rolled back to its previous version.
    RolledBack,
    /// Its rollback failed too.
    RollbackFailed,
    /// In flight over `ssh` or `local` on a node that was lost: not sent again (a command may
    /// have run in part), so its outcome is unknown.
    Interrupted,
}

impl TargetStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            TargetStatus::Pending => "pending",
            TargetStatus::Triggering => "triggering",
            TargetStatus::Running => "running",
            TargetStatus::Succeeded => "succeeded",
            TargetStatus::Failed => "failed",
            TargetStatus::TimedOut => "timed_out",
            TargetStatus::Cancelled => "cancelled",
            TargetStatus::Skipped => "skipped",
            TargetStatus::RolledBack => "rolled_back",
            TargetStatus::RollbackFailed => "rollback_failed",
            TargetStatus::Interrupted => "interrupted",
        }
    }

    pub fn is_terminal(self) -> bool {
        !matches!(
            self,
            TargetStatus::Pending | TargetStatus::Triggering | TargetStatus::Running
        )
    }

    /// Counts against `max_failures` (an interrupted one's outcome is unknown: it counts).
    pub fn is_failure(self) -> bool {
        matches!(
            self,
            TargetStatus::Failed | TargetStatus::TimedOut | TargetStatus::Interrupted
        )
    }
}

/// An environment's rollback within a deployment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RollbackOutcome {
    /// The version it was rolled back to.
    pub version: String,
    pub succeeded: bool,
    #[serde(default)]
    pub exit_code: Option<i32>,
    #[serde(default)]
    pub error: Option<String>,
    pub finished_at: Timestamp,
}

/// The health of an environment as last seen, by a deployment's verification or the periodic
/// check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HealthReport {
    pub healthy: bool,
    pub url: String,
    pub checked_at: Timestamp,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub http_status: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub error: Option<String>,
    pub latency_ms: u64,
}

/// One environment's result in a deployment (stored under `<deployment>/<environment>`).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TargetRecord {
    pub environment_id: EnvironmentId,
    pub connection_method: String,
    pub status: TargetStatus,
    #[serde(default)]
    pub started_at: Option<Timestamp>,
    #[serde(default)]
    pub finished_at: Option<Timestamp>,
    #[serde(default)]
    pub duration_ms: Option<u64>,
    #[serde(default)]
    pub exit_code: Option<i32>,
    #[serde(default)]
    pub detail: Option<String>,
    #[serde(default)]
    pub error: Option<String>,
    /// The last lines this environment wrote (the full log is in the deployment's log).
    #[serde(default)]
    pub output_tail: Vec<LogLine>,
    #[serde(default)]
    pub health: Option<HealthReport>,
    /// The version the environment had when this deployment triggered it (what a rollback
    /// returns it to).
    #[serde(default)]
    pub previous_version: Option<String>,
    #[serde(default)]
    pub rollback: Option<RollbackOutcome>,
}

impl TargetRecord {
    /// An environment's result before anything happened to it.
    pub fn new(
        environment_id: &EnvironmentId,
        connection_method: &str,
        status: TargetStatus,
    ) -> TargetRecord {
        TargetRecord {
            environment_id: environment_id.clone(),
            connection_method: connection_method.to_owned(),
            status,
            started_at: None,
            finished_at: None,
            duration_ms: None,
            exit_code: None,
            detail: None,
            error: None,
            output_tail: Vec::new(),
            health: None,
            previous_version: None,
            rollback: None,
        }
    }
}

/// A deployment run (stored under its id).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeploymentRecord {
    pub deployment_id: DeploymentId,
    pub status: Phase,
    pub progress: u8,
    pub version: String,
    pub triggered_by: String,
    #[serde(default)]
    pub request_id: Option<String>,
    /// Environment ids in the order they were requested.
    pub environments: Vec<EnvironmentId>,
    /// The EC2 phase's result, or why it was skipped.
    #[serde(default)]
    pub ec2: Ec2Phase,
    #[serde(default)]
    pub errors: Vec<String>,
    pub created_at: Timestamp,
    #[serde(default)]
    pub finished_at: Option<Timestamp>,
    #[serde(default)]
    pub duration_ms: Option<u64>,
    #[serde(default)]
    pub retry_of: Option<DeploymentId>,
    /// Lines written to the log, including any beyond the stored limit.
    #[serde(default)]
    pub log_lines: u64,
    /// The host process that runs (or ran) it; see the host's `host/lifecycle` record.
    pub boot_id: String,
    /// Milliseconds since the epoch at creation; orders the history.
    pub created_ms: u64,
    /// Strategy, failure threshold and rollback (a retry inherits them).
    #[serde(default)]
    pub rollout: Rollout,
    /// The environments (in `environments`' order) cut into batches.
    #[serde(default)]
    pub batches: Vec<BatchRecord>,
    /// A canary's gate, once the canary batch has run.
    #[serde(default)]
    pub gate: Option<GateRecord>,
    /// The platform instance the triggers were told about (kept so that a deployment resumed
    /// after its gate tells the rest the same).
    #[serde(default)]
    pub platform_instance_id: Option<String>,
    #[serde(default)]
    pub platform_ip: Option<String>,
    /// An admin's override of the deployment windows that were closed when it was triggered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_override: Option<Box<WindowOverride>>,
}

/// An override of closed deployment windows, kept on the deployment it let through.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WindowOverride {
    /// Who overrode (`api:<key name>`).
    pub by: String,
    pub reason: String,
    /// The windows that were closed for its environments (empty: none was).
    pub windows: Vec<String>,
}

/// A batch's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BatchStatus {
    Pending,
    Running,
    Succeeded,
    Failed,
    Skipped,
    Cancelled,
}

impl BatchStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            BatchStatus::Pending => "pending",
            BatchStatus::Running => "running",
            BatchStatus::Succeeded => "succeeded",
            BatchStatus::Failed => "failed",
            BatchStatus::Skipped => "skipped",
            BatchStatus::Cancelled => "cancelled",
        }
    }
}

/// One batch of a deployment: `len` environments from `start` in the record's `environments`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchRecord {
    pub kind: BatchKind,
    pub start: usize,
    pub len: usize,
    pub status: BatchStatus,
    #[serde(default)]
    pub started_at: Option<Timestamp>,
    #[serde(default)]
    pub finished_at: Option<Timestamp>,
}

/// A gate's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum GateStatus {
    /// Waiting for approve or reject (manual), or baking (auto).
    Waiting,
    Approved,
    Rejected,
    TimedOut,
    /// An auto gate found the canary healthy.
    Passed,
    /// An auto gate found the canary unhealthy, or the canary failed.
    Failed,
}

impl GateStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            GateStatus::Waiting => "waiting",
            GateStatus::Approved => "approved",
            GateStatus::Rejected => "rejected",
            GateStatus::TimedOut => "timed_out",
            GateStatus::Passed => "passed",
            GateStatus::Failed => "failed",
        }
    }
}

/// A canary's gate, as stored with the record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GateRecord {
    pub kind: GateKind,
    pub status: GateStatus,
    pub opened_at: Timestamp,
    /// When a waiting manual gate ends the deployment `cancelled`.
    #[serde(default)]
    pub deadline_ms: Option<u64>,
    #[serde(default)]
    pub decided_by: Option<String>,
    #[serde(default)]
    pub decided_at: Option<Timestamp>,
    /// Under four eyes (`approvals.distinct_approver`): the key that may not approve it (the
    /// one that triggered it), as the gate opened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_by: Option<String>,
}

impl DeploymentRecord {
    /// The environment ids of batch `index`.
    pub fn batch_environments(&self, index: usize) -> &[EnvironmentId] {
        self.batches
            .get(index)
            .and_then(|batch| self.environments.get(batch.start..batch.start + batch.len))
            .unwrap_or(&[])
    }
}

/// How many environment ids a list entry (history, status, dashboard) names: the first ones,
/// in the order they were requested. Its counts say how many there are, and the deployment's
/// detail names them all. A list then costs the same whatever the size of its deployments: a
/// client polling the history or the status while 10,000 environments deploy reads a few
/// kilobytes each time, not the whole list.
pub const LISTED_ENVIRONMENTS: usize = 100;

/// How many errors an event or a notice lists: the first ones. The record has them all.
pub const LISTED_ERRORS: usize = 20;

/// What the history lists per deployment.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HistoryEntry {
    pub deployment_id: DeploymentId,
    pub status: Phase,
    pub progress: u8,
    pub version: String,
    pub triggered_by: String,
    /// The first [`LISTED_ENVIRONMENTS`] environments (entries written before the counts were
    /// kept list them all).
    pub environments: Vec<EnvironmentId>,
    /// How many environments it has.
    #[serde(default)]
    pub environment_count: usize,
    /// The first [`LISTED_ENVIRONMENTS`] environments that did not succeed, once it ended.
    #[serde(default)]
    pub failed_environments: Vec<EnvironmentId>,
    /// How many environments did not succeed, once it ended.
    #[serde(default)]
    pub failed_count: usize,
    pub created_at: Timestamp,
    #[serde(default)]
    pub finished_at: Option<Timestamp>,
    #[serde(default)]
    pub duration_ms: Option<u64>,
    #[serde(default)]
    pub retry_of: Option<DeploymentId>,
    #[serde(default)]
    pub error: Option<String>,
}

impl HistoryEntry {
    /// How many environments it has, also for an entry written before the count was kept.
    pub fn total_environments(&self) -> usize {
        self.environment_count.max(self.environments.len())
    }

    /// How many environments did not succeed, also for an entry written before the count.
    pub fn total_failed(&self) -> usize {
        self.failed_count.max(self.failed_environments.len())
    }
}

impl DeploymentRecord {
    /// The record's history entry: its first environments and its counts (`failed_environments`
    /// lists every environment that did not succeed, once it ended).
    pub fn history_entry(&self, mut failed_environments: Vec<EnvironmentId>) -> HistoryEntry {
        let failed_count = failed_environments.len();
        failed_environments.truncate(LISTED_ENVIRONMENTS);
        HistoryEntry {
            deployment_id: self.deployment_id.clone(),
            status: self.status,
            progress: self.progress,
            version: self.version.clone(),
            triggered_by: self.triggered_by.clone(),
            environments: self.listed_environments(),
            environment_count: self.environments.len(),
            failed_environments,
            failed_count,
            created_at: self.created_at,
            finished_at: self.finished_at,
            duration_ms: self.duration_ms,
            retry_of: self.retry_of.clone(),
            error: self.errors.last().cloned(),
        }
    }

    /// Its first [`LISTED_ENVIRONMENTS`] environments, as a list entry or an event names them.
    pub fn listed_environments(&self) -> Vec<EnvironmentId> {
        self.environments
            .iter()
            .take(LISTED_ENVIRONMENTS)
            .cloned()
            .collect()
    }

    /// Its first [`LISTED_ERRORS`] errors.
    pub fn listed_errors(&self) -> Vec<String> {
        self.errors.iter().take(LISTED_ERRORS).cloned().collect()
    }

    /// The history index key: newest first in key order.
    pub fn history_key(&self) -> String {
        history_key(self.created_ms, &self.deployment_id)
    }
}

pub fn history_key(created_ms: u64, deployment_id: &str) -> String {
    format!("{:020}/{deployment_id}", u64::MAX - created_ms)
}

/// Who holds an environment (the value of its `CLAIMS` record).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    pub deployment_id: DeploymentId,
    pub boot_id: String,
}
