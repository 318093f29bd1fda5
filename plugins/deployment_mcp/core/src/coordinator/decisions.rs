//! Decisions about a deployment that no run holds: one waiting at its canary gate (approve,
//! reject, cancel, the gate's timeout) or one that has ended (a rollback by hand).
//!
//! A deployment waiting at a gate has no task anywhere: its state (phase `awaiting_approval`,
//! the gate and its deadline, the claims on its environments) is in the store, so it survives a
//! hot swap and a restart, and any copy of the plugin can decide it. Each decision is one store
//! transaction conditional on the record as it was read, so an approve racing a reject, the
//! timeout, or another host, ends in exactly one outcome; the losers get `Conflict`.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, SystemTime},
};

use tokio_util::sync::CancellationToken;

use super::{Coordinator, RunFrom};
use crate::model::{DeploymentId, EnvironmentId};
use crate::{
    deployment::{BatchStatus, DeploymentRecord, GateStatus, Phase, TargetRecord, TargetStatus},
    environments::Environment,
    model::{LogLine, LogStream, Timestamp},
    persist::{
        self,
        deployments::LogPosition,
        history::{Filter, History},
        records::StoreError,
        Lease, Outcome, Writes,
    },
    run::{writer, Start},
    wire::GateEvent,
};

/// How often each copy looks for gates past their deadline.
const GATE_SWEEP: Duration = Duration::from_secs(1);
/// How long a decision waits for this copy's run of the deployment to publish its end.
const SETTLE_WAIT: Duration = Duration::from_secs(5);

/// Why a decision was not taken.
#[derive(Debug, thiserror::Error)]
pub enum DecisionError {
    #[error("no deployment {0}")]
    NotFound(String),
    /// The deployment is not in a state this decision applies to.
    #[error("deployment {id} is {status}: {what}")]
    Wrong {
        id: String,
        status: &'static str,
        what: &'static str,
    },
    /// Someone else decided first (or the record changed meanwhile).
    #[error("deployment {0} changed while this was decided; read it again")]
    Conflict(String),
    /// A rollback by hand found nothing it could do.
    #[error("{0}")]
    Nothing(String),
    /// An environment is being deployed by another deployment.
    #[error("environment {environment} is being deployed by {deployment}")]
    Busy {
        environment: String,
        deployment: String,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A record as read, with its stored text (the condition of the write that follows).
struct Read {
    text: String,
    record: DeploymentRecord,
}

impl Coordinator {
    /// Reads a deployment to decide on. A record that this copy's run has just parked or ended
    /// is read once that run has published its last events: a decision's events are numbered
    /// after them, and so must be published after them.
    async fn read_record(&self, id: &DeploymentId) -> Result<Read, DecisionError> {
        let read = self.read_once(id).await?;
        let settling =
            read.record.status == Phase::AwaitingApproval || read.record.status.is_terminal();
        let ending = settling.then(|| self.run_ended(id)).flatten();
        match ending {
            Some(ended) => {
                // Bounded: the run has stored its end and only publishes it now.
                let _ = tokio::time::timeout(SETTLE_WAIT, ended.wait()).await;
                self.read_once(id).await
            }
            None => Ok(read),
        }
    }

    async fn read_once(&self, id: &DeploymentId) -> Result<Read, DecisionError> {
        let (text, record) = self
            .deployments()
            .read_for_update(id)
            .await?
            .ok_or_else(|| DecisionError::NotFound(id.to_string()))?;
        Ok(Read { text, record })
    }

    /// Reads a deployment that must be waiting at its gate (else `Wrong`, saying `what`), and
    /// returns it as read and with its gate decided (`status`, by `by`, now).
    async fn decide_gate(
        &self,
        id: &DeploymentId,
        status: GateStatus,
        by: &str,
        what: &'static str,
    ) -> Result<(Read, DeploymentRecord, SystemTime), DecisionError> {
        let read = self.read_record(id).await?;
        if read.record.status != Phase::AwaitingApproval {
            return Err(DecisionError::Wrong {
                id: read.record.deployment_id.to_string(),
                status: read.record.status.as_str(),
                what,
            });
        }
        let mut record = read.record.clone();
        let now = SystemTime::now();
        if let Some(gate) = &mut record.gate {
            gate.status = status;
            gate.decided_by = Some(by.to_owned());
            gate.decided_at = Some(Timestamp::from(now));
        }
        Ok((read, record, now))
    }

    /// A log line appended as its own chunk, in the same transaction as a decision.
    pub(super) async fn log_line(
        &self,
        writes: &mut Writes,
        record: &mut DeploymentRecord,
        stream: LogStream,
        message: &str,
    ) -> Result<LogPosition, StoreError> {
        let end = self
            .deployments()
            .log_position(&record.deployment_id)
            .await?;
        let line = LogLine {
            ts: Timestamp::now(),
            environment: None,
            stream,
            line: message.to_owned(),
            request_id: record.request_id.clone(),
        };
        record.log_lines += 1;
        writes.log(&record.deployment_id, end, &[line])?;
        Ok(end.after(1))
    }

    /// The writes (after the claims) that make this copy run `record` again: its running
    /// entry, a log line saying why, the record (moved from `from`, only if unchanged since it
    /// was read as `read_text`) and its history. Returns where the log goes on and the run's
    /// lease (the next epoch of the deployment's run).
    pub(super) async fn run_here(
        &self,
        writes: &mut Writes,
        read_text: &str,
        from: Phase,
        record: &mut DeploymentRecord,
        why: &str,
    ) -> Result<(LogPosition, Lease), StoreError> {
        let epoch = self.deployments().run_epoch(&record.deployment_id).await? + 1;
        let lease = writes.running(record, epoch)?;
        let end = self
            .log_line(writes, record, LogStream::Stdout, why)
            .await?;
        writes.moved(record, from, &[], Some(read_text))?;
        Ok((end, lease))
    }

    /// A deployment's environment results so far, by environment.
    pub(super) async fn results_of(
        &self,
        id: &DeploymentId,
    ) -> Result<HashMap<EnvironmentId, TargetRecord>, StoreError> {
        Ok(self
            .deployments()
            .targets(id)
            .await?
            .into_iter()
            .map(|target| (target.environment_id.clone(), target))
            .collect())
    }

    /// The deployment's environments, as the catalog has them now (one read each, or one pass
    /// when there are many). Claims keep them from being deleted meanwhile.
    pub(super) async fn environments_of(
        &self,
        ids: &[EnvironmentId],
    ) -> Result<Vec<Environment>, StoreError> {
        if ids.len() > 64 {
            let wanted: std::collections::HashSet<&EnvironmentId> = ids.iter().collect();
            return Ok(self
                .catalog
                .list()
                .await?
                .into_iter()
                .map(|stored| stored.environment)
                .filter(|environment| wanted.contains(&environment.environment_id))
                .collect());
        }
        let mut found = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(stored) = self.catalog.get(id).await? {
                found.push(stored.environment);
            }
        }
        Ok(found)
    }

    /// Continues a deployment waiting at its gate: this copy takes it over (its claims and
    /// record move to this boot) and runs the batches after the canary.
    pub async fn approve(
        self: &Arc<Self>,
        id: &DeploymentId,
        by: &str,
    ) -> Result<(), DecisionError> {
        let (read, mut record, _) = self
            .decide_gate(
                id,
                GateStatus::Approved,
                by,
                "only a deployment waiting at its gate (awaiting_approval) can be approved",
            )
            .await?;
        // Everything the run needs is read before the decision is stored: once it is, a run
        // must start.
        let results = self.results_of(id).await?;
        let environments = self.environments_of(&record.environments).await?;
        let from = record.status;
        let holder = std::mem::replace(&mut record.boot_id, self.boot_id.clone());
        record.status = Phase::LocalDeploying;
        let mut writes = Writes::new(&self.records, &self.lease());
        writes.take_claims(id, &record.environments, &holder)?;
        let (log, lease) = self
            .run_here(
                &mut writes,
                &read.text,
                from,
                &mut record,
                &format!("gate approved by {by}; continuing with the next batch"),
            )
            .await?;
        // Published once stored: the gate's decision, then the phase it leads to.
        let gate = GateEvent::new(&record);
        let first = self.deployments().events_published(id).await? + 1;
        let last = first + u64::from(gate.is_some());
        writes.events_published(id, last)?;
        if writes.commit().await? != Outcome::Committed {
            return Err(DecisionError::Conflict(id.to_string()));
        }
        tracing::info!(deployment = %id, by, "gate approved");
        self.changed();
        if let Some(gate) = gate {
            writer::publish_gate(self.records.host(), first, gate);
        }
        self.publish_phase(last, &record, Some(from));
        let from = RunFrom {
            log,
            events: last,
            lease,
        };
        self.spawn_run(record, environments, results, None, from, Start::AfterGate);
        Ok(())
    }

    /// Ends a deployment waiting at its gate `cancelled`: the environments not started are
    /// `skipped`, the claims are released. `status` says how the gate ended (rejected, timed
    /// out), `message` why, for the record and the log.
    pub async fn close_gate(
        &self,
        id: &DeploymentId,
        status: GateStatus,
        by: &str,
        message: &str,
    ) -> Result<(), DecisionError> {
        let (read, mut record, now) = self
            .decide_gate(
                id,
                status,
                by,
                "only a deployment waiting at its gate (awaiting_approval) can be rejected",
            )
            .await?;
        for batch in &mut record.batches {
            if batch.status == BatchStatus::Pending {
                batch.status = BatchStatus::Skipped;
            }
        }
        let from = record.status;
        record.status = Phase::Cancelled;
        record.errors.push(message.to_owned());
        record.finished_at = Some(Timestamp::from(now));
        let now_ms = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as u64;
        record.duration_ms = Some(now_ms.saturating_sub(record.created_ms));
        let mut writes = Writes::new(&self.records, &self.lease());
        let mut failed = Vec::new();
        let mut skipped = Vec::new();
        for mut target in self.deployments().targets(id).await? {
            if target.status == TargetStatus::Pending {
                target.status = TargetStatus::Skipped;
                target.finished_at = Some(Timestamp::from(now));
                target.error = Some(format!("not started: {message}"));
                writes.target(id, &target)?;
                skipped.push(target.clone());
            }
            if target.status != TargetStatus::Succeeded {
                failed.push(target.environment_id.clone());
            }
        }
        failed.sort();
        writes.release_claims(id, &record.environments, &read.record.boot_id)?;
        writes.not_running(id);
        self.log_line(&mut writes, &mut record, LogStream::Error, message)
            .await?;
        writes.moved(&record, from, &failed, Some(&read.text))?;
        // Published once stored, in causal order: the environments skipped, the gate's
        // decision, the phase.
        let gate = GateEvent::new(&record);
        let first = self.deployments().events_published(id).await? + 1;
        let last = first + skipped.len() as u64 + u64::from(gate.is_some());
        writes.events_published(id, last)?;
        if writes.commit().await? != Outcome::Committed {
            return Err(DecisionError::Conflict(id.to_string()));
        }
        tracing::info!(deployment = %id, by, "{message}");
        self.changed();
        let host = self.records.host();
        let mut seq = first;
        for target in &skipped {
            writer::publish_target(host, seq, &record, target);
            seq += 1;
        }
        if let Some(gate) = gate {
            writer::publish_gate(host, seq, gate);
        }
        self.publish_phase(last, &record, Some(from));
        Ok(())
    }

    /// Ends, in every copy, the gates whose deadline has passed.
    pub async fn gate_loop(self: Arc<Self>, stop: CancellationToken) {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(GATE_SWEEP) => {}
            }
            if let Err(error) = self.close_expired_gates().await {
                tracing::warn!("checking gate deadlines: {error}");
            }
        }
    }

    async fn close_expired_gates(&self) -> Result<(), StoreError> {
        let waiting = History::new(self.records.clone())
            .page(
                &Filter {
                    status: Some(Phase::AwaitingApproval),
                    environment: None,
                },
                None,
                500,
            )
            .await?;
        let now_ms = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as u64;
        let mut turn: Option<bool> = None;
        for (_, entry) in waiting.entries {
            let Some(record) = self.deployments().record(&entry.deployment_id).await? else {
                continue;
            };
            let Some(gate) = &record.gate else { continue };
            if gate.deadline_ms.is_none_or(|deadline| deadline > now_ms) {
                continue;
            }
            // Of the nodes that share the store, the one that takes this sweep's turn closes
            // the expired gates (a decision is conditional anyway: this saves the others the
            // attempt and the conflict).
            if let Some(node) = self.node() {
                let mine = match turn {
                    Some(mine) => mine,
                    None => {
                        persist::runs::take_turn(
                            &self.records,
                            "gate_timeouts",
                            GATE_SWEEP,
                            now_ms,
                            &node.node_id,
                        )
                        .await?
                    }
                };
                if !mine {
                    return Ok(());
                }
                turn = Some(true);
            }
            let waited = record
                .rollout
                .gate()
                .map(|canary| canary.gate_timeout_secs)
                .unwrap_or_default();
            let message = format!(
                "the gate timed out: no approval within {waited} s (gate_timeout_secs); cancelled"
            );
            match self
                .close_gate(
                    &entry.deployment_id,
                    GateStatus::TimedOut,
                    "timeout",
                    &message,
                )
                .await
            {
                Ok(()) | Err(DecisionError::Conflict(_)) | Err(DecisionError::Wrong { .. }) => {}
                Err(DecisionError::Store(error)) => return Err(error),
                Err(error) => tracing::warn!("{error}"),
            }
        }
        Ok(())
    }

    /// Rolls a finished deployment's changed environments (those it triggered that have a
    /// previous version) back to that version, reopening it in phase `rolling_back`. It claims
    /// every environment of the deployment, like a deployment does.
    pub async fn rollback(
        self: &Arc<Self>,
        id: &DeploymentId,
        by: &str,
    ) -> Result<(), DecisionError> {
        let read = self.read_record(id).await?;
        if !read.record.status.is_terminal() {
            return Err(DecisionError::Wrong {
                id: id.to_string(),
                status: read.record.status.as_str(),
                what: "roll it back once it has ended",
            });
        }
        // The environments this deployment changed, less those a later deployment changed
        // since: returning those would undo the later one. The run is given only the rest.
        let versions = self.catalog.all_versions().await?;
        let mut redeployed = Vec::new();
        let results: HashMap<EnvironmentId, TargetRecord> = self
            .results_of(id)
            .await?
            .into_iter()
            .filter(|(_, target)| crate::run::rolls_back_by_hand(target))
            .filter(|(environment, _)| {
                let later = versions.get(environment.as_str()).is_some_and(|versions| {
                    versions.deployment_id != *id
                        && versions
                            .deployment_id
                            .created_ms()
                            .is_some_and(|ms| ms > read.record.created_ms)
                });
                if later {
                    redeployed.push(environment.clone());
                }
                !later
            })
            .collect();
        redeployed.sort();
        if results.is_empty() {
            let why = if redeployed.is_empty() {
                String::new()
            } else {
                format!(
                    "; deployed again since: {} (roll back the later deployment instead)",
                    redeployed.join(", ")
                )
            };
            return Err(DecisionError::Nothing(format!(
                "no environment of {id} was changed and has a previous version to return to{why}"
            )));
        }
        let chosen: Vec<EnvironmentId> = read
            .record
            .environments
            .iter()
            .filter(|environment| results.contains_key(*environment))
            .cloned()
            .collect();
        let environments = self.environments_of(&chosen).await?;
        let mut record = read.record.clone();
        let from = record.status;
        record.status = Phase::RollingBack;
        record.boot_id = self.boot_id.clone();
        record.finished_at = None;
        let mut writes = Writes::new(&self.records, &self.lease());
        writes.claim(id, &record.environments)?;
        let (log, lease) = self
            .run_here(
                &mut writes,
                &read.text,
                from,
                &mut record,
                &if redeployed.is_empty() {
                    format!("rollback requested by {by}")
                } else {
                    format!(
                        "rollback requested by {by}; left as they are, deployed again since: {}",
                        redeployed.join(", ")
                    )
                },
            )
            .await?;
        let events = self.deployments().events_published(id).await? + 1;
        writes.events_published(id, events)?;
        match writes.commit().await? {
            Outcome::Committed => {}
            Outcome::ClaimHeld {
                environment,
                deployment,
            } => {
                return Err(DecisionError::Busy {
                    environment,
                    deployment,
                })
            }
            Outcome::Changed | Outcome::LeaseLost | Outcome::Superseded => {
                return Err(DecisionError::Conflict(id.to_string()))
            }
        }
        tracing::info!(deployment = %id, by, "rollback by hand");
        self.changed();
        self.publish_phase(events, &record, Some(from));
        let from = RunFrom { log, events, lease };
        self.spawn_run(record, environments, results, None, from, Start::Rollback);
        Ok(())
    }
}
