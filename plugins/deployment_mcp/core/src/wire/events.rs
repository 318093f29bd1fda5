//! The events a deployment and the catalog publish (phase, environment, batch, gate, log,
//! health, deletion), each built in the subscriber's [`View`], and [`publish`], which sends both
//! views.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{BatchView, GateView, HealthView, TargetResult, View};
use crate::{
    deployment::{DeploymentRecord, Phase, LISTED_ENVIRONMENTS},
    model::{DeploymentId, EnvironmentId, LogLine, Timestamp},
};

/// Event `deployment.batch`: a batch started or ended. Its `batch.environments` names the first
/// [`LISTED_ENVIRONMENTS`] (`environment_count` counts them all), so the event stays small
/// whatever the batch's size (an all-at-once deployment is one batch).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BatchEvent {
    pub deployment_id: DeploymentId,
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
    pub deployment_id: DeploymentId,
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
    pub deployment_id: DeploymentId,
    pub status: Phase,
    pub previous: Option<Phase>,
    pub progress: u8,
    /// The first [`LISTED_ENVIRONMENTS`] environments; `environment_count` says how many there
    /// are (an event stays a few kilobytes whatever the deployment's size).
    pub environments: Vec<EnvironmentId>,
    #[serde(default)]
    pub environment_count: usize,
    #[serde(default)]
    pub error_count: usize,
    /// The first [`crate::deployment::LISTED_ERRORS`] errors so far; absent for the user role
    /// (they name hosts and URLs). The deployment's record has them all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errors: Option<Vec<String>>,
    pub at: Timestamp,
}

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
            environments: record.listed_environments(),
            environment_count: record.environments.len(),
            error_count: record.errors.len(),
            errors: view.details().then(|| record.listed_errors()),
            at,
        }
    }
}

/// Event `deployment.environment`: one environment of a deployment moved. Its output tail is
/// the last lines that fit in [`EVENT_TAIL_BYTES`].
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct EnvironmentEvent {
    pub deployment_id: DeploymentId,
    pub progress: u8,
    pub environment: TargetResult,
}

impl EnvironmentEvent {
    pub fn new(
        deployment_id: &DeploymentId,
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
            deployment_id: deployment_id.clone(),
            progress,
            environment,
        }
    }
}

/// Event `deployment.log` (developers and admins only): lines stored in a deployment's log.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct LogEvent {
    pub deployment_id: DeploymentId,
    pub lines: Vec<LogLine>,
}

/// Event `environment.health`: an environment's health changed.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct HealthEvent {
    pub environment_id: EnvironmentId,
    pub health: HealthView,
}

/// Event `environment.deleted`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DeletedEvent {
    pub environment_id: EnvironmentId,
}

/// Event `deployment.takeover`: a node took over a deployment whose node was lost, and runs the
/// rest of it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TakeoverEvent {
    pub deployment_id: DeploymentId,
    /// The node that was lost.
    pub from_node: String,
    /// The node that runs it now.
    pub to_node: String,
    /// The run's new fencing token (`X-PowerAutomation-Fence` of what it sends).
    pub epoch: u64,
    /// Environments in flight at the loss and sent again (`http_api`, `webhook`).
    pub resent: Vec<EnvironmentId>,
    /// Environments in flight at the loss and not sent again (`ssh`, `local`).
    pub interrupted: Vec<EnvironmentId>,
}

/// Every event the plugin publishes on the host's bus, by kind: the publisher builds one, a
/// subscriber (the CLI) reads one back with [`Event::read`].
#[derive(Debug, Clone)]
pub enum Event {
    Phase(PhaseEvent),
    /// Boxed: it carries the environment's result, many times the size of the others.
    Environment(Box<EnvironmentEvent>),
    Batch(BatchEvent),
    Gate(GateEvent),
    Log(LogEvent),
    Health(HealthEvent),
    Deleted(DeletedEvent),
    Takeover(TakeoverEvent),
}

/// An event's data did not have its kind's shape.
#[derive(Debug, thiserror::Error)]
#[error("a {kind} event that cannot be read: {source}")]
pub struct BadEvent {
    pub kind: &'static str,
    #[source]
    pub source: serde_json::Error,
}

impl Event {
    /// The kinds, as subscribers see them (`event:` on the SSE stream).
    pub const KINDS: [&'static str; 8] = [
        "deployment.phase",
        "deployment.environment",
        "deployment.batch",
        "deployment.gate",
        "deployment.log",
        "environment.health",
        "environment.deleted",
        "deployment.takeover",
    ];

    pub fn kind(&self) -> &'static str {
        let index = match self {
            Event::Phase(_) => 0,
            Event::Environment(_) => 1,
            Event::Batch(_) => 2,
            Event::Gate(_) => 3,
            Event::Log(_) => 4,
            Event::Health(_) => 5,
            Event::Deleted(_) => 6,
            Event::Takeover(_) => 7,
        };
        Event::KINDS[index]
    }

    /// The deployment it is about (none for an environment's events).
    pub fn deployment_id(&self) -> Option<&str> {
        match self {
            Event::Phase(event) => Some(&event.deployment_id),
            Event::Environment(event) => Some(&event.deployment_id),
            Event::Batch(event) => Some(&event.deployment_id),
            Event::Gate(event) => Some(&event.deployment_id),
            Event::Log(event) => Some(&event.deployment_id),
            Event::Takeover(event) => Some(&event.deployment_id),
            Event::Health(_) | Event::Deleted(_) => None,
        }
    }

    /// Reads an event as the bus delivers it: `Ok(None)` for a kind this build does not know
    /// (a newer plugin's), an error for a known kind whose data has another shape.
    pub fn read(kind: &str, data: serde_json::Value) -> Result<Option<Event>, BadEvent> {
        fn parse<T: serde::de::DeserializeOwned>(
            kind: &'static str,
            data: serde_json::Value,
        ) -> Result<T, BadEvent> {
            serde_json::from_value(data).map_err(|source| BadEvent { kind, source })
        }
        let Some(&kind) = Event::KINDS.iter().find(|known| **known == kind) else {
            return Ok(None);
        };
        let event = match kind {
            "deployment.phase" => Event::Phase(parse(kind, data)?),
            "deployment.environment" => Event::Environment(Box::new(parse(kind, data)?)),
            "deployment.batch" => Event::Batch(parse(kind, data)?),
            "deployment.gate" => Event::Gate(parse(kind, data)?),
            "deployment.log" => Event::Log(parse(kind, data)?),
            "environment.health" => Event::Health(parse(kind, data)?),
            "deployment.takeover" => Event::Takeover(parse(kind, data)?),
            _ => Event::Deleted(parse(kind, data)?),
        };
        Ok(Some(event))
    }

    /// The event's data, with the deployment's sequence number `seq` beside its fields when
    /// it has one.
    pub(crate) fn data(&self, seq: Option<u64>) -> serde_json::Value {
        let encoded = match self {
            Event::Phase(event) => serde_json::to_value(event),
            Event::Environment(event) => serde_json::to_value(event),
            Event::Batch(event) => serde_json::to_value(event),
            Event::Gate(event) => serde_json::to_value(event),
            Event::Log(event) => serde_json::to_value(event),
            Event::Health(event) => serde_json::to_value(event),
            Event::Deleted(event) => serde_json::to_value(event),
            Event::Takeover(event) => serde_json::to_value(event),
        };
        let mut data = encoded.unwrap_or_default();
        if let (Some(seq), serde_json::Value::Object(fields)) = (seq, &mut data) {
            fields.insert("seq".into(), seq.into());
        }
        data
    }
}

/// Publishes an event (number `seq` of its deployment, when it has one): `full` for developers
/// and admins, `user` (when given) for the user role, which otherwise does not receive it. Both
/// are of one kind.
pub fn publish(host: &plugin_guest::Host, seq: Option<u64>, full: &Event, user: Option<&Event>) {
    let user = user.map(|user| user.data(seq));
    host.publish_by_role(full.kind(), &full.data(seq), user.as_ref());
}
