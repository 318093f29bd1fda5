//! Deployments as answers show them: the 202 of a start, list entries, a deployment's summary
//! and full record with its batches, gate and per-environment results, log pages and the
//! history page. Error texts and output are [`Hidden`] from the user role.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{HealthView, Hidden, View};
use crate::{
    deployment::{
        BatchStatus, DeploymentRecord, GateStatus, HistoryEntry, Phase, TargetRecord, TargetStatus,
        LISTED_ENVIRONMENTS,
    },
    model::LogLine,
    model::{DeploymentId, EnvironmentId, Timestamp},
    rollout::{BatchKind, GateKind, RolloutJson},
};

/// A started deployment (202).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Accepted {
    pub deployment_id: DeploymentId,
    /// `pending`.
    pub status: Phase,
    /// Where to follow it; also in `Location`.
    pub status_url: String,
}

/// A deployment as lists show it (history, status, dashboard).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DeploymentEntry {
    pub deployment_id: DeploymentId,
    pub status: Phase,
    /// 0–100.
    pub progress: u8,
    pub version: String,
    pub triggered_by: String,
    /// The first 100 environments, in the order they were requested (the deployment's detail
    /// names them all).
    pub environments: Vec<EnvironmentId>,
    /// How many environments it has.
    pub environment_count: usize,
    /// The first 100 environments that did not succeed, once it ended.
    pub failed_environments: Vec<EnvironmentId>,
    /// How many environments did not succeed, once it ended.
    pub failed_count: usize,
    pub created_at: Timestamp,
    pub finished_at: Option<Timestamp>,
    pub duration_ms: Option<u64>,
    pub retry_of: Option<DeploymentId>,
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
            created_at: entry.created_at,
            finished_at: entry.finished_at,
            duration_ms: entry.duration_ms,
            retry_of: entry.retry_of.clone(),
            has_error: entry.error.is_some(),
            error: view.hide(entry.error.clone()),
        }
    }
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
    pub environments: Vec<EnvironmentId>,
    pub started_at: Option<Timestamp>,
    pub finished_at: Option<Timestamp>,
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
            started_at: batch.started_at,
            finished_at: batch.finished_at,
        })
    }
}

/// A canary's gate.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct GateView {
    pub kind: GateKind,
    pub status: GateStatus,
    pub opened_at: Timestamp,
    /// When a waiting manual gate ends the deployment `cancelled`.
    pub deadline_at: Option<Timestamp>,
    /// Who approved or rejected it (`gate` when the gate decided itself, `timeout`).
    pub decided_by: Option<String>,
    pub decided_at: Option<Timestamp>,
    /// Under four eyes (`approvals.distinct_approver`): the key that may not approve it (the
    /// one that triggered it); any other admin may. Absent: any admin may.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_by: Option<String>,
}

impl GateView {
    pub fn of(record: &DeploymentRecord) -> Option<GateView> {
        let gate = record.gate.as_ref()?;
        Some(GateView {
            kind: gate.kind,
            status: gate.status,
            opened_at: gate.opened_at,
            deadline_at: gate.deadline_ms.map(Timestamp::from_unix_ms),
            decided_by: gate.decided_by.clone(),
            decided_at: gate.decided_at,
            not_by: gate.not_by.clone(),
        })
    }
}

/// `POST /deployments/{id}/cancel` while the run has not recorded its end within 10 s.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Cancelling {
    pub deployment_id: DeploymentId,
    /// `cancelling`.
    pub status: String,
}

/// `POST /deployments/{id}/cancel`: ended (200, its summary), or still ending (202).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum CancelAnswer {
    Cancelled(Box<DeploymentSummary>),
    Cancelling(Cancelling),
}

super::any_of_schema!(CancelAnswer: DeploymentSummary, Cancelling);

/// One environment's result in a deployment.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TargetResult {
    pub environment_id: EnvironmentId,
    pub connection_method: String,
    pub status: TargetStatus,
    pub started_at: Option<Timestamp>,
    pub finished_at: Option<Timestamp>,
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
    pub finished_at: Timestamp,
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
            started_at: record.started_at,
            finished_at: record.finished_at,
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
                finished_at: rollback.finished_at,
                error: view.hide(rollback.error.clone()),
            }),
        }
    }
}

/// A deployment's record as shown: phase, progress, results, batches and gate, without its log
/// (MCP's `get_deployment` answers this; [`DeploymentDetail`] adds the log's last lines).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DeploymentState {
    pub deployment_id: DeploymentId,
    pub status: Phase,
    /// The same as `status`.
    pub phase: Phase,
    /// 0–100.
    pub progress: u8,
    pub version: String,
    pub triggered_by: String,
    /// The id of the request that started it.
    pub request_id: Option<String>,
    pub environments: Vec<EnvironmentId>,
    /// The EC2 phase's result: `skipped`, or the instances found and started.
    pub ec2: crate::model::Ec2Phase,
    pub errors: Vec<String>,
    pub created_at: Timestamp,
    pub finished_at: Option<Timestamp>,
    pub duration_ms: Option<u64>,
    pub retry_of: Option<DeploymentId>,
    /// Lines recorded so far (all of them are at `/logs`).
    pub log_lines: u64,
    pub results: Vec<TargetResult>,
    /// Strategy, failure threshold and rollback, as given (with defaults filled in).
    #[serde(default)]
    pub rollout: RolloutJson,
    #[serde(default)]
    pub batches: Vec<BatchView>,
    #[serde(default)]
    pub gate: Option<GateView>,
    /// An admin's override of the deployment windows closed when it was triggered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_override: Option<crate::deployment::WindowOverride>,
}

impl DeploymentState {
    pub fn new(record: DeploymentRecord, results: Vec<TargetResult>) -> DeploymentState {
        let batches = BatchView::all(&record);
        let gate = GateView::of(&record);
        DeploymentState {
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
            window_override: record.window_override.map(|overridden| *overridden),
        }
    }
}

/// `GET /deployments/{id}`: the full record with the log's last lines.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DeploymentDetail {
    #[serde(flatten)]
    pub deployment: DeploymentState,
    /// The last lines (all of them are at `/logs`).
    pub logs: Vec<LogLine>,
    pub logs_truncated: bool,
    /// Who runs it now: absent when nothing does (it ended or waits at its gate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<RunView>,
}

/// Who runs a deployment now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RunView {
    /// Admitted, waiting for a node with room (`max_running_deployments`).
    pub queued: bool,
    /// The node whose process runs it (absent while it is queued, and on a host without nodes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner_node: Option<String>,
    /// How many times the run was given to a process: one more after each takeover. The
    /// `X-PowerAutomation-Fence` its HTTP triggers carry (0 while it is queued).
    pub lease_epoch: u64,
}

impl DeploymentDetail {
    pub fn new(
        record: DeploymentRecord,
        results: Vec<TargetResult>,
        logs: Vec<LogLine>,
        logs_truncated: bool,
        run: Option<RunView>,
    ) -> DeploymentDetail {
        DeploymentDetail {
            deployment: DeploymentState::new(record, results),
            logs,
            logs_truncated,
            run,
        }
    }
}

/// `GET /deployments/{id}/logs`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct LogsAnswer {
    pub deployment_id: DeploymentId,
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
