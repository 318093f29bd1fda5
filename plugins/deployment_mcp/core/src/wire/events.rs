//! The events a deployment and the catalog publish (phase, environment, batch, gate, log,
//! health, deletion), each built in the subscriber's [`View`], and [`publish`], which sends both
//! views.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{BatchView, GateView, HealthView, TargetResult, View};
use crate::{
    deployment::{DeploymentRecord, Phase, LISTED_ENVIRONMENTS},
    model::{LogLine, Timestamp},
};

/// Event `deployment.batch`: a batch started or ended. Its `batch.environments` names the first
/// [`LISTED_ENVIRONMENTS`] (`environment_count` counts them all), so the event stays small
/// whatever the batch's size (an all-at-once deployment is one batch).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BatchEvent {
    pub deployment_id: String,
    pub batches: usize,
    pub batch: BatchView,
    #[serde(default)]
    pub environment_count: usize,
}

impl BatchEvent {
    pub fn new(record: &DeploymentRecord, index: usize) -> Option<BatchEvent> {
        let mut batch = BatchView::new(record, index)?;
        let environment_count = batch.environments.len();
        batch.environments.truncate(LISTED_ENVIRONMENTS);
        Some(BatchEvent {
            deployment_id: record.deployment_id.clone(),
            batches: record.batches.len(),
            batch,
            environment_count,
        })
    }
}

/// The most bytes of output lines an environment event carries; the result in the store keeps
/// its whole tail.
pub const EVENT_TAIL_BYTES: usize = 16 * 1024;

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
    pub at: Timestamp,
}

/// Errors a phase event lists.
pub const LISTED_ERRORS: usize = 20;

impl PhaseEvent {
    pub fn new(
        record: &DeploymentRecord,
        previous: Option<Phase>,
        at: Timestamp,
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

/// Event `deployment.environment`: one environment of a deployment moved. Its output tail is
/// the last lines that fit in [`EVENT_TAIL_BYTES`].
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct EnvironmentEvent {
    pub deployment_id: String,
    pub progress: u8,
    pub environment: TargetResult,
}

impl EnvironmentEvent {
    pub fn new(
        deployment_id: &str,
        progress: u8,
        mut environment: TargetResult,
    ) -> EnvironmentEvent {
        if let Some(tail) = &mut environment.output_tail {
            let mut bytes = 0;
            let keep = tail
                .iter()
                .rev()
                .take_while(|line| {
                    bytes += line.line.len();
                    bytes <= EVENT_TAIL_BYTES
                })
                .count();
            tail.drain(..tail.len() - keep);
        }
        EnvironmentEvent {
            deployment_id: deployment_id.to_owned(),
            progress,
            environment,
        }
    }
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
