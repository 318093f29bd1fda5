//! A deployment while it runs: its phases (EC2, triggering, verifying), one task per
//! environment under the parallel limit with its deadline and cancel token, and the end. The run
//! keeps its record and results in memory; its [`writer::RunWriter`] stores them in batches and
//! publishes what it stored.

mod batch;
mod ec2_phase;
mod end;
mod gate;
pub mod reach;
mod rollback;
#[cfg(test)]
pub mod script;
mod stop;
mod verify;
mod window_wait;
pub mod writer;

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use tokio::sync::Semaphore;

use crate::model::{DeploymentId, EnvironmentId};
use crate::{
    deployment::{DeploymentRecord, HealthReport, Phase, TargetRecord, TargetStatus},
    ec2::Ec2Settings,
    environments::Environment,
    model::{LogSink, LogStream},
    persist::{self, catalog::Catalog, records::Records, Lease},
    rollout::{OnFailure, RollbackMode},
    settings::Settings,
    triggers::TriggerContext,
};
use gate::GateOutcome;
use rollback::rolls_back;
pub(crate) use rollback::rolls_back_by_hand;
pub(crate) use stop::{Stop, StopReason};
use writer::RunWriter;

/// How long past its timeout (or a cancel) a trigger that stops itself may take to do so.
const SELF_STOP_GRACE: Duration = Duration::from_secs(10);
/// How often a run looks for a cancel request made through another copy, and checks its lease.
const CANCEL_POLL: Duration = Duration::from_millis(500);

/// A run's stop state, shared with the registry of live runs (its identity tells one run of a
/// deployment from another).
pub(crate) type StopHandle = Arc<Stop>;

/// Where a run is. Each step does its part and names the next; [`Run::execute`], the run's one
/// task, drives them, so the order of a deployment's phases is written down in one place.
enum Step {
    /// A new deployment: the EC2 phase when it is on, then `local_triggering`.
    Ec2,
    /// Batch `n` next (its pause, its triggers, its verification).
    Batch(usize),
    /// The canary's gate, between the first batch and the next.
    Gate,
    /// Every batch ran or the run stopped: the outcome, with the rollback a failure asks for.
    Conclude,
    /// A finished deployment rolled back by hand.
    RollBackByHand,
}

/// What a run needs from the service that started it. The coordinator implements it: it owns
/// admission, the claims and the registry of live runs, and a run reaches those only through
/// this interface (so this module does not depend on the coordinator).
pub(crate) trait RunOwner: Send + Sync + 'static {
    fn records(&self) -> &Records;
    fn settings(&self) -> &Settings;
    /// How the run reaches its environments (triggers, health checks).
    fn reach(&self) -> &reach::Reach;
    fn catalog(&self) -> &Catalog;
    /// The instance this plugin runs on, when known (asks IMDS only when `ask_imds`).
    fn platform_identity(
        &self,
        ask_imds: bool,
    ) -> impl std::future::Future<Output = Option<(String, Option<String>)>> + Send;
    fn record_health(
        &self,
        id: &EnvironmentId,
        report: &HealthReport,
    ) -> impl std::future::Future<Output = Result<(), crate::persist::records::StoreError>> + Send;
    /// The run (the one `stop` belongs to) has ended and is no longer live.
    fn forget_run(&self, deployment_id: &str, stop: &StopHandle);
    /// A cancel reached a run as it parked at its gate: end the parked deployment.
    fn cancel_parked(
        &self,
        deployment_id: &DeploymentId,
    ) -> impl std::future::Future<Output = ()> + Send;
    /// Something that status answers show has changed.
    fn changed(&self);
}

/// Where a run begins: a new deployment, one whose canary gate was approved, or a finished
/// one rolled back by hand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Start {
    Fresh,
    AfterGate,
    Rollback,
    /// Taken over from a node that was lost: from where its record says it was (its EC2
    /// phase, a gate that was baking, or its first batch not ended), finished environments
    /// kept.
    Resume,
}

/// Progress points between two stores of the record for progress alone: the record holds every
/// environment's id, so storing it at each of the 100 points cost 100 copies of a list as long
/// as the deployment (the largest share of a 10,000-environment run's time). Phases, batches,
/// gates and the end store it whatever the progress; environment events carry the progress
/// last stored.
const PROGRESS_STORE_STEP: u8 = 5;

/// Whether progress moving from `old` to `new` crosses a step worth storing the record for.
fn progress_worth_storing(old: u8, new: u8) -> bool {
    new / PROGRESS_STORE_STEP > old / PROGRESS_STORE_STEP
}

/// One deployment in progress. Its record and environment results are kept here, in memory,
/// and handed to the run's writer, which stores them in batches.
pub(crate) struct Run<O: RunOwner> {
    pub(crate) owner: Arc<O>,
    pub(crate) record: tokio::sync::Mutex<DeploymentRecord>,
    pub(crate) targets: Mutex<HashMap<EnvironmentId, TargetRecord>>,
    /// A cancel, the host stopping, or a halt (the threshold, a failed canary).
    pub(crate) stop: StopHandle,
    pub(crate) finished_targets: AtomicUsize,
    /// Environments whose latest state is a failure, kept as states change, so the failure
    /// threshold is checked without counting over every environment.
    pub(crate) failed_targets: AtomicUsize,
    pub(crate) total_targets: usize,
    /// The EC2 phase to run first, when it is on for this deployment.
    pub(crate) ec2: Option<Ec2Settings>,
    pub(crate) writer: RunWriter,
    /// The right to write the run's records (its writer holds the same).
    pub(crate) lease: Lease,
}

impl<O: RunOwner> Run<O> {
    /// A run of `record` whose environments' results so far are `targets`.
    pub(crate) fn new(
        owner: Arc<O>,
        record: DeploymentRecord,
        targets: HashMap<EnvironmentId, TargetRecord>,
        ec2: Option<Ec2Settings>,
        writer: RunWriter,
        stop: StopHandle,
        lease: Lease,
    ) -> Run<O> {
        let finished = targets
            .values()
            .filter(|target| target.status.is_terminal())
            .count();
        let failed = targets
            .values()
            .filter(|target| target.status.is_failure())
            .count();
        Run {
            owner,
            total_targets: record.environments.len(),
            record: tokio::sync::Mutex::new(record),
            targets: Mutex::new(targets),
            stop,
            finished_targets: AtomicUsize::new(finished),
            failed_targets: AtomicUsize::new(failed),
            ec2,
            writer,
            lease,
        }
    }
}

/// Progress at the start of each phase; triggering and verification fill the gaps in between.
const PROGRESS_EC2: u8 = 2;
const PROGRESS_TRIGGERING: u8 = 10;
const PROGRESS_TRIGGERED: u8 = 80;
const PROGRESS_VERIFIED: u8 = 95;

impl<O: RunOwner> Run<O> {
    fn stop_reason(&self) -> Option<StopReason> {
        self.stop.reason()
    }

    fn halted(&self) -> Option<String> {
        self.stop.halted()
    }

    /// Stops starting environments, saying why (the first reason stays).
    fn halt(&self, why: String) {
        tracing::info!("{why}");
        self.stop.halt(why);
    }

    /// Halts the run when its failures exceed `max_failures`.
    async fn check_threshold(&self) {
        let (rollout, total) = {
            let record = self.record.lock().await;
            (record.rollout, record.environments.len())
        };
        let Some(tolerated) = rollout.tolerated_failures(total) else {
            return;
        };
        let failures = self.failed_targets.load(Ordering::SeqCst);
        if failures > tolerated && self.halted().is_none() {
            let max = rollout
                .max_failures
                .map(|max| max.to_string())
                .unwrap_or_default();
            self.halt(format!(
                "max_failures {max} exceeded: {failures} environment(s) failed (at most {tolerated} tolerated); nothing new is started"
            ));
            self.writer
                .log()
                .line(LogStream::Error, self.halted().unwrap_or_default())
                .await;
            if rollout.on_failure == OnFailure::CancelRunning {
                self.writer
                    .log()
                    .info("on_failure is cancel_running: stopping the environments still running")
                    .await;
                self.stop.stop_running();
            }
        }
    }

    /// The run's one task: drives its steps from `start` until the deployment ends or parks.
    pub(crate) async fn execute(self: Arc<Self>, targets: Vec<Environment>, start: Start) {
        let started = Instant::now();
        let (deployment_id, version, triggered_by, rollout, batches) = {
            let record = self.record.lock().await;
            (
                record.deployment_id.clone(),
                record.version.clone(),
                record.triggered_by.clone(),
                record.rollout,
                record.batches.len(),
            )
        };
        let log = self.writer.log().clone();
        let watcher = tokio::spawn(watch_cancel_requests(
            self.owner.records().clone(),
            deployment_id.to_string(),
            Arc::clone(&self.stop),
            self.lease.clone(),
        ));
        let limit = Arc::new(Semaphore::new(self.owner.settings().max_parallel));
        let by_id = by_id(targets);
        let mut step = match start {
            Start::Fresh => {
                log.info(format!(
                    "deployment {deployment_id} started by {triggered_by}: {} environment(s), version {version}",
                    by_id.len()
                ))
                .await;
                Step::Ec2
            }
            Start::AfterGate => Step::Batch(1),
            Start::Rollback => Step::RollBackByHand,
            Start::Resume => self.resume_at().await,
        };
        let end = loop {
            step = match step {
                Step::Ec2 => {
                    if self.ec2_phase(&log).await {
                        self.set_phase(Phase::LocalTriggering, PROGRESS_TRIGGERING)
                            .await;
                        Step::Batch(0)
                    } else {
                        // `cancelled`, as before rollouts existed: it stopped before any trigger.
                        self.end_from(
                            0,
                            TargetStatus::Cancelled,
                            "not triggered: the EC2 phase did not complete",
                        )
                        .await;
                        Step::Conclude
                    }
                }
                Step::Batch(index) if index >= batches => Step::Conclude,
                Step::Batch(index) => {
                    if self.batch_step(index, batches, &log, &by_id, &limit).await {
                        // The canary's gate comes between the first batch and the next.
                        if index == 0 && index + 1 < batches && rollout.gate().is_some() {
                            Step::Gate
                        } else {
                            Step::Batch(index + 1)
                        }
                    } else {
                        Step::Conclude
                    }
                }
                Step::Gate => match rollout.gate() {
                    Some(canary) => match self.gate(&log, canary, &by_id).await {
                        GateOutcome::Park => break None,
                        // A stopped gate halted the run: the next batch is skipped.
                        GateOutcome::Continue | GateOutcome::Stop => Step::Batch(1),
                    },
                    None => Step::Batch(1),
                },
                Step::Conclude => {
                    let (phase, message) = self.conclude(&log, &by_id, &limit).await;
                    break Some((phase, message));
                }
                Step::RollBackByHand => {
                    let context = self.context(log.clone()).await;
                    let (phase, message) = self
                        .roll_back(rolls_back_by_hand, &by_id, &context, &limit, None)
                        .await;
                    break Some((phase, message));
                }
            };
        };
        watcher.abort();
        match end {
            Some((phase, message)) => {
                drop(log);
                self.finish(phase, message, started).await;
            }
            None => self.park(&log).await,
        }
    }

    /// Batch `index` of `batches`, unless the run stopped (or halted) before it: then it and
    /// the rest are skipped. Waits the pause before it, if any. False once nothing more runs.
    async fn batch_step(
        self: &Arc<Self>,
        index: usize,
        batches: usize,
        log: &LogSink,
        by_id: &HashMap<EnvironmentId, Environment>,
        limit: &Arc<Semaphore>,
    ) -> bool {
        if self.stop_reason().is_some() || self.halted().is_some() {
            let why = match self.halted() {
                Some(why) if self.stop_reason().is_none() => format!("not started: {why}"),
                _ => "not started: the deployment was stopped".to_owned(),
            };
            self.end_from(index, TargetStatus::Skipped, &why).await;
            return false;
        }
        let pause = self.record.lock().await.rollout.pause_before(index);
        if pause > 0 {
            log.info(format!("pausing {pause} s before batch {}", index + 1))
                .await;
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(pause)) => {}
                _ = self.stop.requested().cancelled() => {}
            }
        }
        // A closed window holds the batch until it opens (the first one too: a queued
        // deployment may start well after its admission looked at the windows).
        let ready = match self.stop_reason() {
            Some(_) => Err("not started: the deployment was stopped".to_owned()),
            None => self.wait_for_window(index, log, by_id).await,
        };
        if let Err(why) = ready {
            self.end_from(index, TargetStatus::Skipped, &why).await;
            return false;
        }
        let context = self.context(log.clone()).await;
        self.run_batch(index, batches, by_id, &context, limit).await;
        true
    }

    /// Every batch ran or the run stopped: the phase it ends in, after the rollback its rollout
    /// asks for when it failed.
    async fn conclude(
        self: &Arc<Self>,
        log: &LogSink,
        by_id: &HashMap<EnvironmentId, Environment>,
        limit: &Arc<Semaphore>,
    ) -> (Phase, Option<String>) {
        let failed_any = self
            .targets
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .values()
            .any(|target| target.status != TargetStatus::Succeeded);
        let (phase, message) = match self.stop_reason() {
            Some(StopReason::Cancelled) => {
                (Phase::Cancelled, Some("cancelled by request".to_owned()))
            }
            Some(StopReason::HostStopping) => (
                Phase::Interrupted,
                Some(
                    "interrupted: the host shut down while this deployment was running".to_owned(),
                ),
            ),
            // Nothing of this is written: the node that took the run over ends it.
            Some(StopReason::LeaseLost) => (
                Phase::Interrupted,
                Some("another node took this run over".to_owned()),
            ),
            None if failed_any => (Phase::Failed, self.halted()),
            None => (Phase::Completed, None),
        };
        let mode = self.record.lock().await.rollout.rollback;
        if phase != Phase::Failed || mode == RollbackMode::None {
            return (phase, message);
        }
        let first_time: Vec<EnvironmentId> = self
            .targets
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .values()
            .filter(|target| target.started_at.is_some() && target.previous_version.is_none())
            .map(|target| target.environment_id.clone())
            .collect();
        if !first_time.is_empty() {
            log.info(format!(
                "rollback: no previous version to return to (first deployment) for: {}",
                first_time.join(", ")
            ))
            .await;
        }
        let context = self.context(log.clone()).await;
        self.roll_back(
            |target| rolls_back(mode, target),
            by_id,
            &context,
            limit,
            message,
        )
        .await
    }
    /// Where a run taken over from a lost node goes on.
    async fn resume_at(&self) -> Step {
        let record = self.record.lock().await;
        if self.ec2.is_some() && record.ec2 == crate::model::Ec2Phase::Pending {
            return Step::Ec2;
        }
        if record
            .gate
            .as_ref()
            .is_some_and(|gate| gate.status == crate::deployment::GateStatus::Waiting)
        {
            return Step::Gate;
        }
        record
            .batches
            .iter()
            .position(|batch| {
                matches!(
                    batch.status,
                    crate::deployment::BatchStatus::Pending
                        | crate::deployment::BatchStatus::Running
                )
            })
            .map_or(Step::Conclude, Step::Batch)
    }

    /// What every trigger of this run is told.
    async fn context(&self, log: LogSink) -> TriggerContext {
        let record = self.record.lock().await;
        TriggerContext {
            deployment_id: record.deployment_id.to_string(),
            version: record.version.clone(),
            platform_instance_id: record.platform_instance_id.clone(),
            platform_ip: record.platform_ip.clone(),
            rollback: false,
            log,
            stop: Default::default(),
            fence: self.lease.epoch(),
        }
    }

    /// Hands a phase change to the writer, which stores it (after the log lines and results
    /// sent before it) and then publishes it.
    async fn set_phase(&self, phase: Phase, progress: u8) {
        let mut record = self.record.lock().await;
        let previous = record.status;
        record.status = phase;
        record.progress = record.progress.max(progress);
        self.writer.phase(record.clone(), previous).await;
        self.owner.changed();
    }
}

/// Environments by id.
fn by_id(environments: Vec<Environment>) -> HashMap<EnvironmentId, Environment> {
    environments
        .into_iter()
        .map(|environment| (environment.environment_id.clone(), environment))
        .collect()
}

/// Stops a run when a cancel request for it appears in the store (made through another copy
/// or node), or when its lease is gone (another node took it over while this one was paused or
/// cut off: it must not start anything more, even before its next write would fail).
async fn watch_cancel_requests(
    records: Records,
    deployment_id: String,
    stop: StopHandle,
    lease: Lease,
) {
    loop {
        tokio::select! {
            _ = stop.requested().cancelled() => return,
            _ = tokio::time::sleep(CANCEL_POLL) => {}
        }
        if let Ok(false) = lease.held(&records).await {
            tracing::warn!(deployment = %deployment_id, "another node took this run over: this process stops it and writes nothing more");
            stop.request(StopReason::LeaseLost);
            return;
        }
        if let Ok(true) = persist::runs::cancel_requested(&records, &deployment_id).await {
            stop.request(StopReason::Cancelled);
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::progress_worth_storing;

    #[test]
    fn progress_is_stored_once_per_step_however_small_the_moves() {
        let stored = (0u8..100)
            .filter(|point| progress_worth_storing(*point, point + 1))
            .count();
        assert_eq!(stored, 20, "one store per 5 points from 0 to 100");
        assert!(
            progress_worth_storing(3, 97),
            "a jump across steps is stored"
        );
        assert!(
            !progress_worth_storing(41, 44),
            "a move within a step is not"
        );
    }
}
