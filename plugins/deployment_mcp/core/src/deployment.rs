//! What a deployment is, as stored and shown: the run record, one result per environment, and
//! the history entry.

use serde::{Deserialize, Serialize};

use crate::triggers::LogLine;

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
    Completed,
    Failed,
    Cancelled,
    Interrupted,
}

impl Phase {
    /// Every phase, in state-machine order.
    pub const ALL: [Phase; 11] = [
        Phase::Pending,
        Phase::Ec2Deploying,
        Phase::Ec2Completed,
        Phase::LocalTriggering,
        Phase::LocalDeploying,
        Phase::LocalCompleted,
        Phase::Verifying,
        Phase::Completed,
        Phase::Failed,
        Phase::Cancelled,
        Phase::Interrupted,
    ];

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Phase::Completed | Phase::Failed | Phase::Cancelled | Phase::Interrupted
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
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            TargetStatus::Succeeded
                | TargetStatus::Failed
                | TargetStatus::TimedOut
                | TargetStatus::Cancelled
        )
    }
}

/// The health of an environment as last seen, by a deployment's verification or the periodic
/// check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HealthReport {
    pub healthy: bool,
    pub url: String,
    pub checked_at: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub http_status: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub error: Option<String>,
    pub latency_ms: u64,
}

/// One environment's result in a deployment (stored under `<deployment>/<environment>`).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TargetRecord {
    pub environment_id: String,
    pub connection_method: String,
    pub status: TargetStatus,
    #[serde(default)]
    pub started_at: Option<String>,
    #[serde(default)]
    pub finished_at: Option<String>,
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
}

impl TargetRecord {
    /// An environment's result before anything happened to it.
    pub fn new(
        environment_id: &str,
        connection_method: &str,
        status: TargetStatus,
    ) -> TargetRecord {
        TargetRecord {
            environment_id: environment_id.to_owned(),
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
        }
    }
}

/// A deployment run (stored under its id).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeploymentRecord {
    pub deployment_id: String,
    pub status: Phase,
    pub progress: u8,
    pub version: String,
    pub triggered_by: String,
    #[serde(default)]
    pub request_id: Option<String>,
    /// Environment ids in the order they were requested.
    pub environments: Vec<String>,
    /// The EC2 phase's result, or why it was skipped.
    pub ec2: serde_json::Value,
    #[serde(default)]
    pub errors: Vec<String>,
    pub created_at: String,
    #[serde(default)]
    pub finished_at: Option<String>,
    #[serde(default)]
    pub duration_ms: Option<u64>,
    #[serde(default)]
    pub retry_of: Option<String>,
    /// Lines written to the log, including any beyond the stored limit.
    #[serde(default)]
    pub log_lines: u64,
    /// The host process that runs (or ran) it; see the host's `host/lifecycle` record.
    pub boot_id: String,
    /// Milliseconds since the epoch at creation; orders the history.
    pub created_ms: u64,
}

/// What the history lists per deployment.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HistoryEntry {
    pub deployment_id: String,
    pub status: Phase,
    pub progress: u8,
    pub version: String,
    pub triggered_by: String,
    pub environments: Vec<String>,
    #[serde(default)]
    pub failed_environments: Vec<String>,
    pub created_at: String,
    #[serde(default)]
    pub finished_at: Option<String>,
    #[serde(default)]
    pub duration_ms: Option<u64>,
    #[serde(default)]
    pub retry_of: Option<String>,
    #[serde(default)]
    pub error: Option<String>,
}

impl DeploymentRecord {
    pub fn history_entry(&self, failed_environments: Vec<String>) -> HistoryEntry {
        HistoryEntry {
            deployment_id: self.deployment_id.clone(),
            status: self.status,
            progress: self.progress,
            version: self.version.clone(),
            triggered_by: self.triggered_by.clone(),
            environments: self.environments.clone(),
            failed_environments,
            created_at: self.created_at.clone(),
            finished_at: self.finished_at.clone(),
            duration_ms: self.duration_ms,
            retry_of: self.retry_of.clone(),
            error: self.errors.last().cloned(),
        }
    }

    /// The history index key: newest first in key order.
    pub fn history_key(&self) -> String {
        history_key(self.created_ms, &self.deployment_id)
    }
}

pub fn history_key(created_ms: u64, deployment_id: &str) -> String {
    format!("{:020}/{deployment_id}", u64::MAX - created_ms)
}

/// A new deployment id: time-ordered and unguessable enough not to collide.
pub fn new_deployment_id(now_ms: u64) -> String {
    let mut random = [0u8; 4];
    // Without system randomness the id still is unique per millisecond and process.
    if getrandom::fill(&mut random).is_err() {
        random = (std::process::id() ^ now_ms as u32).to_be_bytes();
    }
    format!("dep-{now_ms}-{}", hex::encode(random))
}

/// Checks that a path segment can be a deployment id before it is used as a store key.
pub fn is_deployment_id(text: &str) -> bool {
    text.len() <= 64
        && text.starts_with("dep-")
        && text[4..].chars().all(|c| c.is_ascii_hexdigit() || c == '-')
}

/// Event kinds published on the host's bus.
pub mod event {
    pub const PHASE: &str = "deployment.phase";
    pub const ENVIRONMENT: &str = "deployment.environment";
    pub const LOG: &str = "deployment.log";
    pub const HEALTH: &str = "environment.health";
    pub const DELETED: &str = "environment.deleted";
}

/// Who holds an environment (the value of its `CLAIMS` record).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    pub deployment_id: String,
    pub boot_id: String,
}
