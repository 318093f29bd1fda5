//! The canary's gate after the first batch: a failed canary stops the run, an `auto` gate bakes
//! and checks the canary's health, a `manual` one parks the deployment in the store (the run
//! ends; a decision starts the next one).

use std::{
    collections::HashMap,
    time::{Duration, SystemTime},
};

use crate::model::EnvironmentId;
use crate::{
    deployment::{GateRecord, GateStatus, Phase, TargetStatus},
    environments::Environment,
    model::{LogSink, LogStream, Timestamp},
    rollout::{Canary, GateKind},
};

use super::{writer::Announcement, Run, RunOwner, StopReason};

/// What a canary's gate decided.
pub(super) enum GateOutcome {
    Continue,
    /// Waiting for a person: the run parks (its state is in the store) and ends here.
    Park,
    Stop,
}

impl<O: RunOwner> Run<O> {
    /// The canary's gate, after the first batch. A failed canary stops the deployment; an
    /// `auto` gate waits `bake_secs` and checks the canary's health; a `manual` one parks.
    pub(super) async fn gate(
        &self,
        log: &LogSink,
        canary: Canary,
        by_id: &HashMap<EnvironmentId, Environment>,
    ) -> GateOutcome {
        if self.stop_reason().is_some() {
            return GateOutcome::Stop;
        }
        let now = SystemTime::now();
        let canary_ids = self.record.lock().await.batch_environments(0).to_vec();
        let canary_failed = {
            let targets = self
                .targets
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            canary_ids.iter().any(|id| {
                targets
                    .get(id)
                    .is_none_or(|target| target.status != TargetStatus::Succeeded)
            })
        };
        let triggered_by = self.record.lock().await.triggered_by.clone();
        let mut gate = GateRecord {
            kind: canary.gate,
            status: GateStatus::Waiting,
            opened_at: Timestamp::from(now),
            deadline_ms: None,
            decided_by: None,
            decided_at: None,
            not_by: self
                .owner
                .settings()
                .approvals
                .excluded_approver(&triggered_by),
        };
        if canary_failed {
            gate.status = GateStatus::Failed;
            gate.decided_by = Some("gate".into());
            gate.decided_at = Some(Timestamp::from(now));
            self.record.lock().await.gate = Some(gate);
            self.halt("the canary batch failed; the rest is not started".into());
            log.line(
                LogStream::Error,
                "gate: the canary batch failed; the rest is not started",
            )
            .await;
            self.announce_gate().await;
            return GateOutcome::Stop;
        }
        match canary.gate {
            GateKind::Manual => {
                let deadline = now + Duration::from_secs(canary.gate_timeout_secs);
                gate.deadline_ms = Some(
                    deadline
                        .duration_since(SystemTime::UNIX_EPOCH)
                        .unwrap_or_default()
                        .as_millis() as u64,
                );
                self.record.lock().await.gate = Some(gate);
                log.info(format!(
                    "gate: the canary succeeded; waiting until {} for an admin to approve or reject it",
                    Timestamp::from(deadline)
                ))
                .await;
                GateOutcome::Park
            }
            GateKind::Auto => {
                self.record.lock().await.gate = Some(gate.clone());
                self.announce_gate().await;
                if canary.bake_secs > 0 {
                    log.info(format!(
                        "gate: the canary succeeded; baking {} s before checking it again",
                        canary.bake_secs
                    ))
                    .await;
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(canary.bake_secs)) => {}
                        _ = self.stop.requested().cancelled() => return GateOutcome::Stop,
                    }
                }
                let mut unhealthy = Vec::new();
                let per_request =
                    Duration::from_secs(self.owner.settings().health_check_timeout_secs);
                for id in &canary_ids {
                    let Some(url) = by_id
                        .get(id)
                        .and_then(|environment| environment.health_check_url.clone())
                    else {
                        continue;
                    };
                    let report = self.owner.reach().check(&url, per_request).await;
                    if !report.healthy {
                        unhealthy.push(id.clone());
                    }
                    if let Err(error) = self.owner.record_health(id, &report).await {
                        tracing::warn!("{error}");
                    }
                }
                gate.decided_by = Some("gate".into());
                gate.decided_at = Some(Timestamp::now());
                let outcome = if unhealthy.is_empty() {
                    gate.status = GateStatus::Passed;
                    log.info("gate: the canary is healthy; continuing").await;
                    GateOutcome::Continue
                } else {
                    gate.status = GateStatus::Failed;
                    let why = format!(
                        "the canary is unhealthy after baking: {}",
                        unhealthy.join(", ")
                    );
                    log.line(LogStream::Error, format!("gate: {why}")).await;
                    self.halt(why);
                    GateOutcome::Stop
                };
                self.record.lock().await.gate = Some(gate);
                self.announce_gate().await;
                outcome
            }
        }
    }

    /// Stores the record now and publishes its gate's state.
    pub(super) async fn announce_gate(&self) {
        let record = self.record.lock().await.clone();
        self.writer.announce(record, Announcement::Gate).await;
        self.owner.changed();
    }

    /// Leaves the deployment waiting at its gate: the record (phase `awaiting_approval`, the
    /// gate, its deadline) is stored, the environments stay claimed, and the run ends here. An
    /// approval resumes it from the store, in whichever copy (or process) takes it.
    ///
    /// The parked record is the run's last write (with the log lines before it, and the phase
    /// and gate events after it): a decision taken as soon as it is visible is never
    /// overwritten. A cancel that reached the run meanwhile ends the parked deployment.
    pub(super) async fn park(&self, log: &LogSink) {
        log.info("parked at the gate: nothing runs until it is decided")
            .await;
        let (record, previous) = {
            let mut record = self.record.lock().await;
            let previous = record.status;
            record.status = Phase::AwaitingApproval;
            (record.clone(), previous)
        };
        self.writer.phase_and_gate(record.clone(), previous).await;
        self.writer.flush().await;
        self.owner.forget_run(&record.deployment_id, &self.stop);
        let cancel_requested = matches!(self.stop_reason(), Some(StopReason::Cancelled))
            || matches!(
                crate::persist::runs::cancel_requested(self.owner.records(), &record.deployment_id)
                    .await,
                Ok(true)
            );
        if cancel_requested {
            self.owner.cancel_parked(&record.deployment_id).await;
        }
    }
}
