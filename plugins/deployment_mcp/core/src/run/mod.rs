//! A deployment while it runs: its phases (EC2, triggering, verifying), one task per
//! environment under the parallel limit with its deadline and cancel token, and the end. The run
//! keeps its record and results in memory; its [`writer::RunWriter`] stores them in batches and
//! publishes what it stored.

pub mod reach;
#[cfg(test)]
pub mod script;
pub mod writer;

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant, SystemTime},
};

use serde_json::json;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::{
    deployment::{
        BatchStatus, DeploymentRecord, GateRecord, GateStatus, HealthReport, Phase,
        RollbackOutcome, TargetRecord, TargetStatus,
    },
    ec2::{self, Ec2Settings},
    environments::Environment,
    persist::catalog::{Catalog, EnvironmentVersions},
    persist::{self, records::Records},
    rollout::{Canary, GateKind, OnFailure, RollbackMode},
    settings::Settings,
    triggers::{
        timestamp, AnyTrigger, FailureKind, LogSink, LogStream, TriggerContext, TriggerFailure,
        TriggerSuccess,
    },
};
use writer::{Announcement, RunWriter};

/// How long past its timeout (or a cancel) a trigger that stops itself may take to do so.
const SELF_STOP_GRACE: Duration = Duration::from_secs(10);
/// How often a run looks for a cancel request made through another copy.
const CANCEL_POLL: Duration = Duration::from_millis(500);

/// A run's stop reason, shared with the registry of live runs (its identity tells one run of
/// a deployment from another).
pub(crate) type StopHandle = Arc<Mutex<Option<StopReason>>>;

/// Why a run stops early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StopReason {
    Cancelled,
    HostStopping,
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
        id: &str,
        report: &HealthReport,
    ) -> impl std::future::Future<Output = Result<(), crate::persist::records::StoreError>> + Send;
    /// The run (the one `stop` belongs to) has ended and is no longer live.
    fn forget_run(&self, deployment_id: &str, stop: &StopHandle);
    /// A cancel reached a run as it parked at its gate: end the parked deployment.
    fn cancel_parked(&self, deployment_id: &str) -> impl std::future::Future<Output = ()> + Send;
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
}

/// Whether a rollback by hand returns this environment: it was triggered, has a version to
/// return to, and was not rolled back already.
pub(crate) fn rolls_back_by_hand(target: &TargetRecord) -> bool {
    // A failed rollback may be tried again.
    target.started_at.is_some()
        && target.previous_version.is_some()
        && target.status != TargetStatus::RolledBack
}

/// Whether a failed deployment with rollback `mode` rolls this environment back. One
/// deployed for the first time has no version to return to and is left as it is (the log
/// says so).
fn rolls_back(mode: RollbackMode, target: &TargetRecord) -> bool {
    target.previous_version.is_some()
        && match mode {
            RollbackMode::None => false,
            RollbackMode::Failed => target.status.is_failure(),
            // Every environment it changed: whatever was triggered, whatever its outcome.
            RollbackMode::All => {
                target.started_at.is_some()
                    && !matches!(
                        target.status,
                        TargetStatus::RolledBack | TargetStatus::RollbackFailed
                    )
            }
        }
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
    pub(crate) targets: Mutex<HashMap<String, TargetRecord>>,
    /// A cancel request or the host stopping: everything stops.
    pub(crate) cancel: CancellationToken,
    pub(crate) reason: Arc<Mutex<Option<StopReason>>>,
    /// Failures exceeded `max_failures`: nothing new starts (a child of `cancel`).
    pub(crate) no_new: CancellationToken,
    /// What stops running triggers: `cancel`, or the threshold with `cancel_running`.
    pub(crate) running: CancellationToken,
    /// Why the run stopped starting environments (the threshold, a failed canary).
    pub(crate) halted: Mutex<Option<String>>,
    pub(crate) finished_targets: AtomicUsize,
    /// Environments whose latest state is a failure, kept as states change, so the failure
    /// threshold is checked without counting over every environment.
    pub(crate) failed_targets: AtomicUsize,
    pub(crate) total_targets: usize,
    /// The EC2 phase to run first, when it is on for this deployment.
    pub(crate) ec2: Option<Ec2Settings>,
    pub(crate) writer: RunWriter,
}

impl<O: RunOwner> Run<O> {
    /// A run of `record` whose environments' results so far are `targets`.
    pub(crate) fn new(
        owner: Arc<O>,
        record: DeploymentRecord,
        targets: HashMap<String, TargetRecord>,
        ec2: Option<Ec2Settings>,
        writer: RunWriter,
    ) -> Run<O> {
        let cancel = CancellationToken::new();
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
            no_new: cancel.child_token(),
            running: cancel.child_token(),
            cancel,
            reason: Arc::new(Mutex::new(None)),
            halted: Mutex::new(None),
            finished_targets: AtomicUsize::new(finished),
            failed_targets: AtomicUsize::new(failed),
            ec2,
            writer,
        }
    }
}

/// Progress at the start of each phase; triggering and verification fill the gaps in between.
const PROGRESS_EC2: u8 = 2;
const PROGRESS_TRIGGERING: u8 = 10;
const PROGRESS_TRIGGERED: u8 = 80;
const PROGRESS_VERIFIED: u8 = 95;

/// What a canary's gate decided.
enum GateOutcome {
    Continue,
    /// Waiting for a person: the run parks (its state is in the store) and ends here.
    Park,
    Stop,
}

impl<O: RunOwner> Run<O> {
    fn stop_reason(&self) -> Option<StopReason> {
        *self
            .reason
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn halted(&self) -> Option<String> {
        self.halted
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Stops starting environments, saying why (the first reason stays).
    fn halt(&self, why: String) {
        let mut halted = self
            .halted
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if halted.is_none() {
            tracing::info!("{why}");
            *halted = Some(why);
            self.no_new.cancel();
        }
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
                self.running.cancel();
            }
        }
    }

    pub(crate) async fn execute(self: Arc<Self>, targets: Vec<Environment>, start: Start) {
        let owner = Arc::clone(&self.owner);
        let started = Instant::now();
        let (deployment_id, version, triggered_by, rollout) = {
            let record = self.record.lock().await;
            (
                record.deployment_id.clone(),
                record.version.clone(),
                record.triggered_by.clone(),
                record.rollout,
            )
        };
        let log = self.writer.log().clone();
        let watcher = tokio::spawn(watch_cancel_requests(
            owner.records().clone(),
            deployment_id.clone(),
            self.cancel.clone(),
            Arc::clone(&self.reason),
        ));
        let ec2_ok = match start {
            Start::Rollback => {
                let limit = Arc::new(Semaphore::new(owner.settings().max_parallel));
                let context = self.context(log.clone()).await;
                let by_id = by_id(targets);
                let (phase, message) = self
                    .roll_back(rolls_back_by_hand, &by_id, &context, &limit, None)
                    .await;
                drop(context);
                watcher.abort();
                self.finish(phase, message, started).await;
                return;
            }
            Start::Fresh => {
                log.info(format!(
                    "deployment {deployment_id} started by {triggered_by}: {} environment(s), version {version}",
                    targets.len()
                ))
                .await;
                self.ec2_phase(&log).await
            }
            Start::AfterGate => true,
        };
        let limit = Arc::new(Semaphore::new(owner.settings().max_parallel));
        let context = self.context(log.clone()).await;
        let batches = self.record.lock().await.batches.len();
        let by_id = by_id(targets);
        let first = match start {
            Start::Fresh => 0,
            Start::AfterGate | Start::Rollback => 1,
        };
        if !ec2_ok {
            // `cancelled`, as before rollouts existed: the deployment stopped before any trigger.
            self.end_from(
                0,
                TargetStatus::Cancelled,
                "not triggered: the EC2 phase did not complete",
            )
            .await;
        } else {
            if start == Start::Fresh {
                self.set_phase(Phase::LocalTriggering, PROGRESS_TRIGGERING)
                    .await;
            }
            for index in first..batches {
                if index == 1 && start == Start::Fresh {
                    if let Some(canary) = rollout.gate() {
                        match self.gate(&log, canary, &by_id).await {
                            GateOutcome::Continue => {}
                            GateOutcome::Stop => {}
                            GateOutcome::Park => {
                                self.park(&log).await;
                                watcher.abort();
                                return;
                            }
                        }
                    }
                }
                if self.stop_reason().is_some() || self.halted().is_some() {
                    let why = match self.halted() {
                        Some(why) if self.stop_reason().is_none() => format!("not started: {why}"),
                        _ => "not started: the deployment was stopped".to_owned(),
                    };
                    self.end_from(index, TargetStatus::Skipped, &why).await;
                    break;
                }
                let pause = rollout.pause_before(index);
                if pause > 0 {
                    log.info(format!("pausing {pause} s before batch {}", index + 1))
                        .await;
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(pause)) => {}
                        _ = self.cancel.cancelled() => {}
                    }
                    if self.stop_reason().is_some() {
                        self.end_from(
                            index,
                            TargetStatus::Skipped,
                            "not started: the deployment was stopped",
                        )
                        .await;
                        break;
                    }
                }
                self.run_batch(index, batches, &by_id, &context, &limit)
                    .await;
            }
        }

        let failed_any = self
            .targets
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .values()
            .any(|target| target.status != TargetStatus::Succeeded);
        let (mut phase, mut message) = match self.stop_reason() {
            Some(StopReason::Cancelled) => {
                (Phase::Cancelled, Some("cancelled by request".to_owned()))
            }
            Some(StopReason::HostStopping) => (
                Phase::Interrupted,
                Some(
                    "interrupted: the host shut down while this deployment was running".to_owned(),
                ),
            ),
            None if failed_any => (Phase::Failed, self.halted()),
            None => (Phase::Completed, None),
        };
        if phase == Phase::Failed && rollout.rollback != RollbackMode::None {
            let mode = rollout.rollback;
            let first_time: Vec<String> = self
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
            (phase, message) = self
                .roll_back(
                    |target| rolls_back(mode, target),
                    &by_id,
                    &context,
                    &limit,
                    message,
                )
                .await;
        }
        drop(context);
        watcher.abort();
        self.finish(phase, message, started).await;
    }
    /// The EC2 phase, when it is on; false when it failed (or the run was cancelled in it).
    async fn ec2_phase(&self, log: &LogSink) -> bool {
        let mut platform = self.owner.platform_identity(self.ec2.is_some()).await;
        let ok = match &self.ec2 {
            None => {
                log.info("EC2 phase skipped: ec2 is off").await;
                true
            }
            Some(settings) => {
                self.set_phase(Phase::Ec2Deploying, PROGRESS_EC2).await;
                let outcome = tokio::select! {
                    outcome = ec2::ensure_running(settings, log) => Some(outcome),
                    _ = self.cancel.cancelled() => None,
                };
                match outcome {
                    Some(Ok(outcome)) => {
                        if platform.is_none() {
                            platform = outcome.platform();
                        }
                        self.record.lock().await.ec2 = json!({
                            "status": "completed",
                            "instances": outcome.instances,
                            "started": outcome.started,
                        });
                        self.set_phase(Phase::Ec2Completed, PROGRESS_TRIGGERING)
                            .await;
                        true
                    }
                    Some(Err(message)) => {
                        log.line(LogStream::Error, format!("EC2 phase failed: {message}"))
                            .await;
                        let mut record = self.record.lock().await;
                        record.ec2 = json!({ "status": "failed", "error": message });
                        record.errors.push(format!("ec2_deploying: {message}"));
                        false
                    }
                    None => false,
                }
            }
        };
        if let Some((id, ip)) = platform {
            log.info(format!(
                "platform instance {id}{}",
                ip.as_deref()
                    .map(|ip| format!(" at {ip}"))
                    .unwrap_or_default()
            ))
            .await;
            let mut record = self.record.lock().await;
            record.platform_instance_id = Some(id);
            record.platform_ip = ip;
        }
        ok
    }

    /// Runs batch `index` of `count`: its triggers under the parallel limit, then the
    /// verification of what succeeded; records the batch's state and the versions deployed.
    async fn run_batch(
        self: &Arc<Self>,
        index: usize,
        count: usize,
        by_id: &HashMap<String, Environment>,
        context: &TriggerContext,
        limit: &Arc<Semaphore>,
    ) {
        let log = &context.log;
        let ids = {
            let mut record = self.record.lock().await;
            let ids = record.batch_environments(index).to_vec();
            if let Some(batch) = record.batches.get_mut(index) {
                batch.status = BatchStatus::Running;
                batch.started_at = Some(timestamp(SystemTime::now()));
            }
            ids
        };
        if count > 1 {
            log.info(format!(
                "batch {} of {count} started: {}",
                index + 1,
                ids.join(", ")
            ))
            .await;
        }
        self.announce_batch(index).await;
        self.set_phase(Phase::LocalDeploying, PROGRESS_TRIGGERING)
            .await;
        let mut running = tokio::task::JoinSet::new();
        for id in &ids {
            let Some(environment) = by_id.get(id).cloned() else {
                self.end_unstarted(id, TargetStatus::Failed, "the environment no longer exists")
                    .await;
                continue;
            };
            let run = Arc::clone(self);
            let limit = Arc::clone(limit);
            let mut context = context.clone();
            context.log = log.for_environment(id);
            running.spawn(async move { run.trigger_one(environment, context, limit).await });
        }
        let mut succeeded = Vec::new();
        while let Some(done) = running.join_next().await {
            if let Ok(Some(environment)) = done {
                succeeded.push(environment);
            }
        }
        if self.stop_reason().is_none() {
            if index + 1 == count {
                self.set_phase(Phase::LocalCompleted, PROGRESS_TRIGGERED)
                    .await;
            }
            self.set_phase(Phase::Verifying, PROGRESS_TRIGGERED).await;
            self.verify(log, succeeded, limit).await;
        }
        let (version, deployment_id) = {
            let record = self.record.lock().await;
            (record.version.clone(), record.deployment_id.clone())
        };
        let results: Vec<TargetRecord> = {
            let targets = self
                .targets
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            ids.iter()
                .filter_map(|id| targets.get(id).cloned())
                .collect()
        };
        let now = timestamp(SystemTime::now());
        for target in results
            .iter()
            .filter(|target| target.status == TargetStatus::Succeeded)
        {
            let before = target
                .previous_version
                .as_ref()
                .map(|previous| EnvironmentVersions {
                    deployed_version: previous.clone(),
                    previous_version: None,
                    deployment_id: String::new(),
                    updated_at: String::new(),
                });
            self.writer
                .versions(
                    &target.environment_id,
                    EnvironmentVersions::after(
                        before.as_ref(),
                        &version,
                        &deployment_id,
                        now.clone(),
                    ),
                )
                .await;
        }
        let all_succeeded = results
            .iter()
            .all(|target| target.status == TargetStatus::Succeeded);
        let status = match self.stop_reason() {
            Some(_) => BatchStatus::Cancelled,
            None if all_succeeded => BatchStatus::Succeeded,
            None => BatchStatus::Failed,
        };
        {
            let mut record = self.record.lock().await;
            if let Some(batch) = record.batches.get_mut(index) {
                batch.status = status;
                batch.finished_at = Some(now);
            }
        }
        if count > 1 {
            log.info(format!(
                "batch {} of {count} ended: {}",
                index + 1,
                status.as_str()
            ))
            .await;
        }
        self.announce_batch(index).await;
    }

    /// Stores the record now and publishes batch `index`'s state.
    async fn announce_batch(&self, index: usize) {
        let record = self.record.lock().await.clone();
        self.writer
            .announce(record, Announcement::Batch(index))
            .await;
        self.owner.changed();
    }

    /// The canary's gate, after the first batch. A failed canary stops the deployment; an
    /// `auto` gate waits `bake_secs` and checks the canary's health; a `manual` one parks.
    async fn gate(
        &self,
        log: &LogSink,
        canary: Canary,
        by_id: &HashMap<String, Environment>,
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
        let mut gate = GateRecord {
            kind: canary.gate,
            status: GateStatus::Waiting,
            opened_at: timestamp(now),
            deadline_ms: None,
            decided_by: None,
            decided_at: None,
        };
        if canary_failed {
            gate.status = GateStatus::Failed;
            gate.decided_by = Some("gate".into());
            gate.decided_at = Some(timestamp(now));
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
                    timestamp(deadline)
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
                        _ = self.cancel.cancelled() => return GateOutcome::Stop,
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
                gate.decided_at = Some(timestamp(SystemTime::now()));
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
    async fn announce_gate(&self) {
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
    async fn park(&self, log: &LogSink) {
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
        self.owner.forget_run(&record.deployment_id, &self.reason);
        let cancel_requested = matches!(self.stop_reason(), Some(StopReason::Cancelled))
            || matches!(
                persist::runs::cancel_requested(self.owner.records(), &record.deployment_id).await,
                Ok(true)
            );
        if cancel_requested {
            self.owner.cancel_parked(&record.deployment_id).await;
        }
    }

    /// Ends every environment of batch `from` onwards that has not started (`status`, with
    /// `why`), and marks those batches skipped.
    async fn end_from(&self, from: usize, status: TargetStatus, why: &str) {
        let ids: Vec<String> = {
            let mut record = self.record.lock().await;
            let start = record
                .batches
                .get(from)
                .map_or(record.environments.len(), |batch| batch.start);
            for batch in record.batches.iter_mut().skip(from) {
                if batch.status == BatchStatus::Pending {
                    batch.status = BatchStatus::Skipped;
                }
            }
            record.environments.get(start..).unwrap_or(&[]).to_vec()
        };
        for id in ids {
            let pending = self
                .targets
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .get(&id)
                .is_none_or(|target| target.status == TargetStatus::Pending);
            if pending {
                self.end_unstarted(&id, status, why).await;
            }
        }
    }

    /// Records an environment that never started as ended, with the reason.
    async fn end_unstarted(&self, id: &str, status: TargetStatus, why: &str) {
        let mut target = self
            .targets
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(id)
            .cloned()
            .unwrap_or_else(|| TargetRecord::new(id, "", TargetStatus::Pending));
        target.status = status;
        target.finished_at = Some(timestamp(SystemTime::now()));
        target.error = Some(why.to_owned());
        self.finished_targets.fetch_add(1, Ordering::SeqCst);
        self.save_target(&target).await;
    }

    /// What every trigger of this run is told.
    async fn context(&self, log: LogSink) -> TriggerContext {
        let record = self.record.lock().await;
        TriggerContext {
            deployment_id: record.deployment_id.clone(),
            version: record.version.clone(),
            platform_instance_id: record.platform_instance_id.clone(),
            platform_ip: record.platform_ip.clone(),
            rollback: false,
            log,
            stop: Default::default(),
        }
    }

    /// Rolls back the environments `chosen` accepts (phase `rolling_back`): each runs its
    /// rollback with its previous version. Returns the final phase and message: `rolled_back`
    /// when every rollback succeeded, else `failed` naming them.
    pub(crate) async fn roll_back(
        self: &Arc<Self>,
        chosen: impl Fn(&TargetRecord) -> bool,
        by_id: &HashMap<String, Environment>,
        context: &TriggerContext,
        limit: &Arc<Semaphore>,
        message: Option<String>,
    ) -> (Phase, Option<String>) {
        let log = &context.log;
        let chosen: Vec<TargetRecord> = {
            let targets = self
                .targets
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let mut chosen: Vec<TargetRecord> = targets
                .values()
                .filter(|target| chosen(target))
                .cloned()
                .collect();
            chosen.sort_by(|a, b| a.environment_id.cmp(&b.environment_id));
            chosen
        };
        if chosen.is_empty() {
            log.info("rollback: no environment to roll back").await;
            return (Phase::Failed, message);
        }
        self.set_phase(Phase::RollingBack, PROGRESS_VERIFIED).await;
        log.info(format!(
            "rolling back {} environment(s) to their previous version: {}",
            chosen.len(),
            chosen
                .iter()
                .map(|target| target.environment_id.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))
        .await;
        let mut rollbacks = tokio::task::JoinSet::new();
        for target in chosen {
            let run = Arc::clone(self);
            let limit = Arc::clone(limit);
            let environment = by_id.get(&target.environment_id).cloned();
            let mut context = context.clone();
            context.log = log.for_environment(&target.environment_id);
            rollbacks
                .spawn(async move { run.roll_back_one(target, environment, context, limit).await });
        }
        let mut failed = Vec::new();
        while let Some(done) = rollbacks.join_next().await {
            match done {
                Ok(Ok(())) => {}
                Ok(Err(id)) => failed.push(id),
                Err(_) => failed.push("(a rollback task)".to_owned()),
            }
        }
        failed.sort();
        if failed.is_empty() {
            log.info("rollback: every environment is back on its previous version")
                .await;
            (Phase::RolledBack, message)
        } else {
            let why = format!("rollback failed for: {}", failed.join(", "));
            log.line(LogStream::Error, why.clone()).await;
            (Phase::Failed, Some(why))
        }
    }

    /// One environment's rollback: its trigger (or rollback program) with the previous
    /// version, under its timeout. `Err(id)` when it did not succeed.
    async fn roll_back_one(
        self: Arc<Self>,
        mut target: TargetRecord,
        environment: Option<Environment>,
        mut context: TriggerContext,
        limit: Arc<Semaphore>,
    ) -> Result<(), String> {
        let id = target.environment_id.clone();
        let _permit = limit.acquire_owned().await.ok();
        let outcome = match (environment, target.previous_version.clone()) {
            (None, _) => Err(("the environment no longer exists".to_owned(), None)),
            (_, None) => Err((
                "no previous version to roll back to: this was its first deployment".to_owned(),
                None,
            )),
            (Some(_), _) if self.cancel.is_cancelled() => {
                Err(("stopped: the deployment was cancelled".to_owned(), None))
            }
            (Some(environment), Some(previous)) => {
                context.version = previous;
                context.rollback = true;
                context
                    .log
                    .info(format!("rollback to version {}", context.version))
                    .await;
                match self
                    .run_trigger(&environment, &context, self.cancel.clone())
                    .await
                {
                    Ok(success) => Ok(success.exit_code),
                    Err((_, message, exit_code)) => Err((message, exit_code)),
                }
            }
        };
        let finished_at = timestamp(SystemTime::now());
        let result = match outcome {
            Ok(exit_code) => {
                context.log.info("rollback succeeded").await;
                target.status = TargetStatus::RolledBack;
                target.rollback = Some(RollbackOutcome {
                    version: context.version.clone(),
                    succeeded: true,
                    exit_code,
                    error: None,
                    finished_at: finished_at.clone(),
                });
                let versions = self.owner.catalog().versions(&id).await.ok().flatten();
                let deployment_id = self.record.lock().await.deployment_id.clone();
                let mut after = EnvironmentVersions::after(
                    versions.as_ref(),
                    &context.version,
                    &deployment_id,
                    finished_at,
                );
                if let Some(versions) =
                    versions.filter(|versions| versions.deployed_version != context.version)
                {
                    after.previous_version = Some(versions.deployed_version);
                }
                self.writer.versions(&id, after).await;
                Ok(())
            }
            Err((message, exit_code)) => {
                let message = crate::redact::urls_in(&message);
                context
                    .log
                    .line(LogStream::Error, format!("rollback failed: {message}"))
                    .await;
                target.status = TargetStatus::RollbackFailed;
                target.rollback = Some(RollbackOutcome {
                    version: target.previous_version.clone().unwrap_or_default(),
                    succeeded: false,
                    exit_code,
                    error: Some(message),
                    finished_at,
                });
                Err(id)
            }
        };
        target.output_tail = self.writer.tail(&target.environment_id);
        self.save_target(&target).await;
        result
    }

    /// Records the end, frees the environments, then tells the world: whoever sees the final
    /// phase can start the next deployment of these environments at once.
    async fn finish(&self, phase: Phase, message: Option<String>, started: Instant) {
        let log = self.writer.log();
        match &message {
            Some(message) => log.line(LogStream::Error, message.clone()).await,
            None => {
                log.info(format!(
                    "deployment {} after {:.1} s",
                    phase.as_str(),
                    started.elapsed().as_secs_f64()
                ))
                .await
            }
        }
        let total_lines = self.writer.flush().await;
        let failed = self.failed_environments();
        let (record, previous) = {
            let mut record = self.record.lock().await;
            record.log_lines = total_lines;
            if let Some(message) = message {
                record.errors.push(message);
            }
            record.finished_at = Some(timestamp(SystemTime::now()));
            record.duration_ms = Some(started.elapsed().as_millis() as u64);
            let previous = record.status;
            record.status = phase;
            if phase == Phase::Completed {
                record.progress = 100;
            }
            (record.clone(), previous)
        };
        self.writer
            .finished(record.clone(), Some(previous), failed)
            .await;
        self.writer.flush().await;
        self.owner.forget_run(&record.deployment_id, &self.reason);
    }

    /// The environments that have not succeeded (so far).
    fn failed_environments(&self) -> Vec<String> {
        let targets = self
            .targets
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut failed: Vec<String> = targets
            .values()
            .filter(|target| target.status != TargetStatus::Succeeded)
            .map(|target| target.environment_id.clone())
            .collect();
        failed.sort();
        failed
    }

    /// Ends a run whose task panicked: records it failed and frees its environments, so a bug
    /// cannot leave environments busy until the next restart.
    pub(crate) async fn abandon(&self, panic: &str) {
        let owner = &self.owner;
        let failed = self.failed_environments();
        let record = {
            let mut record = self.record.lock().await;
            tracing::error!(deployment = %record.deployment_id, panic, "deployment run panicked");
            record.status = Phase::Failed;
            record
                .errors
                .push("internal error: the run stopped unexpectedly; see the host log".into());
            record.finished_at = Some(timestamp(SystemTime::now()));
            record.clone()
        };
        self.writer.finished(record.clone(), None, failed).await;
        self.writer.flush().await;
        owner.forget_run(&record.deployment_id, &self.reason);
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

    /// Runs one environment's trigger under the parallel limit, its timeout and the cancel
    /// token. Returns the environment when it succeeded.
    async fn trigger_one(
        self: Arc<Self>,
        environment: Environment,
        context: TriggerContext,
        limit: Arc<Semaphore>,
    ) -> Option<Environment> {
        let id = environment.environment_id.clone();
        let mut target = TargetRecord::new(
            &id,
            environment.connection_method().as_str(),
            TargetStatus::Pending,
        );
        let permit = tokio::select! {
            permit = limit.acquire_owned() => permit.ok(),
            _ = self.no_new.cancelled() => None,
        };
        // The threshold may have been crossed while this one waited for its turn.
        let permit = permit.filter(|_| !self.no_new.is_cancelled());
        let started = Instant::now();
        let outcome = match permit {
            None if self.cancel.is_cancelled() => Err((
                TargetStatus::Cancelled,
                "stopped before it started".to_owned(),
                None,
            )),
            None => {
                let why = self
                    .halted()
                    .unwrap_or_else(|| "the deployment stopped".into());
                Err((TargetStatus::Skipped, format!("not started: {why}"), None))
            }
            Some(_permit) => {
                target.started_at = Some(timestamp(SystemTime::now()));
                target.status = TargetStatus::Triggering;
                target.previous_version = self
                    .owner
                    .catalog()
                    .versions(&id)
                    .await
                    .ok()
                    .flatten()
                    .map(|versions| versions.deployed_version);
                self.save_target(&target).await;
                target.status = TargetStatus::Running;
                self.save_target(&target).await;
                self.run_trigger(&environment, &context, self.running.clone())
                    .await
            }
        };
        let succeeded = match outcome {
            Ok(success) => {
                target.status = TargetStatus::Succeeded;
                target.exit_code = success.exit_code;
                target.detail = success.detail;
                context.log.info("trigger succeeded").await;
                true
            }
            Err((status, message, exit_code)) => {
                let message = crate::redact::urls_in(&message);
                target.status = status;
                target.exit_code = exit_code;
                if target.started_at.is_some() {
                    context.log.line(LogStream::Error, message.clone()).await;
                }
                target.error = Some(message);
                false
            }
        };
        target.finished_at = Some(timestamp(SystemTime::now()));
        if target.started_at.is_some() {
            target.duration_ms = Some(started.elapsed().as_millis() as u64);
        }
        // The tail includes this environment's last lines once the writer has seen them.
        let finished = self.finished_targets.fetch_add(1, Ordering::SeqCst) + 1;
        let progress = PROGRESS_TRIGGERING
            + ((PROGRESS_TRIGGERED - PROGRESS_TRIGGERING) as usize * finished
                / self.total_targets.max(1)) as u8;
        self.finish_target(&mut target, progress).await;
        if !succeeded {
            self.check_threshold().await;
        }
        succeeded.then_some(environment)
    }

    /// Runs an environment's trigger (a deployment or, with `context.rollback`, a rollback)
    /// under its timeout until it ends or `stop` is cancelled.
    async fn run_trigger(
        &self,
        environment: &Environment,
        context: &TriggerContext,
        stop: CancellationToken,
    ) -> Result<TriggerSuccess, (TargetStatus, String, Option<i32>)> {
        // Secrets are read only now, for the trigger, and live only as long as it. Without them
        // it fails: run anyway, it would go out unsigned or unauthenticated.
        let with_secrets = match self.owner.catalog().with_secrets(environment.clone()).await {
            Ok(with_secrets) => with_secrets,
            Err(error) => {
                tracing::error!(environment = %environment.environment_id, "cannot read the environment's secrets: {error}");
                return Err((
                    TargetStatus::Failed,
                    format!(
                        "not triggered: its secrets could not be read from the store ({error})"
                    ),
                    None,
                ));
            }
        };
        let trigger = self.owner.reach().trigger(&with_secrets);
        // What a script or a peer prints back of them is masked in the log, the result and
        // the error.
        let secrets = crate::redact::Secrets::new(with_secrets.secret_values());
        drop(with_secrets);
        let result = self
            .run_trigger_with(environment, trigger, context, &secrets, stop)
            .await;
        match result {
            Ok(mut success) => {
                success.detail = success.detail.map(|detail| secrets.mask(&detail));
                Ok(success)
            }
            Err((status, message, exit_code)) => Err((status, secrets.mask(&message), exit_code)),
        }
    }

    /// [`Run::run_trigger`] once the trigger is built.
    async fn run_trigger_with(
        &self,
        environment: &Environment,
        trigger: AnyTrigger,
        context: &TriggerContext,
        secrets: &crate::redact::Secrets,
        stop: CancellationToken,
    ) -> Result<TriggerSuccess, (TargetStatus, String, Option<i32>)> {
        let timeout = Duration::from_secs(environment.timeout);
        let mut context = context.clone();
        context.log = context.log.masking(secrets.clone());
        context.stop = crate::triggers::StopSignal {
            cancel: stop.clone(),
            deadline: Some(tokio::time::Instant::now() + timeout),
        };
        let timed_out = || {
            Err((
                TargetStatus::TimedOut,
                format!(
                    "no result within the environment's timeout of {} s; the trigger was stopped",
                    environment.timeout
                ),
                None,
            ))
        };
        let cancelled = |done: String, exit_code: Option<i32>| {
            let why = match self.halted() {
                Some(why) if !self.cancel.is_cancelled() => format!("stopped: {why}"),
                _ => "stopped: the deployment was cancelled".to_owned(),
            };
            let why = if done.is_empty() {
                why
            } else {
                format!("{why}; {done}")
            };
            Err((TargetStatus::Cancelled, why, exit_code))
        };
        let run = trigger.run(&context);
        tokio::pin!(run);
        let result = if trigger.stops_itself() {
            // It kills and reaps what it started when told to stop; the bound only guards
            // against a trigger that does not.
            tokio::time::timeout(timeout + SELF_STOP_GRACE, &mut run)
                .await
                .ok()
        } else {
            tokio::select! {
                result = tokio::time::timeout(timeout, &mut run) => result.ok(),
                _ = stop.cancelled() => Some(Err(TriggerFailure::cancelled(String::new()))),
            }
        };
        match result {
            Some(Ok(success)) => Ok(success),
            Some(Err(failure)) => match failure.kind {
                FailureKind::Failed => {
                    Err((TargetStatus::Failed, failure.message, failure.exit_code))
                }
                FailureKind::TimedOut => {
                    Err((TargetStatus::TimedOut, failure.message, failure.exit_code))
                }
                FailureKind::Cancelled => cancelled(failure.message, failure.exit_code),
            },
            None if stop.is_cancelled() => cancelled(String::new(), None),
            None => timed_out(),
        }
    }

    /// Keeps an environment's new state and hands it to the writer.
    async fn save_target(&self, target: &TargetRecord) {
        let was_failed = self
            .targets
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(target.environment_id.clone(), target.clone())
            .is_some_and(|previous| previous.status.is_failure());
        match (was_failed, target.status.is_failure()) {
            (false, true) => {
                self.failed_targets.fetch_add(1, Ordering::SeqCst);
            }
            (true, false) => {
                self.failed_targets.fetch_sub(1, Ordering::SeqCst);
            }
            _ => {}
        }
        self.owner.changed();
        self.writer.target(target.clone()).await;
    }

    /// Records an environment's final result and the deployment's progress.
    async fn finish_target(&self, target: &mut TargetRecord, progress: u8) {
        {
            let mut record = self.record.lock().await;
            if progress > record.progress {
                let stored = progress_worth_storing(record.progress, progress);
                record.progress = progress;
                if stored {
                    self.writer.record(record.clone(), Vec::new()).await;
                }
            }
        }
        // Every line the environment wrote before this was sent to the writer first.
        target.output_tail = self.writer.tail(&target.environment_id);
        self.save_target(target).await;
    }

    /// Polls each succeeded environment's health URL until healthy or its timeout. An unhealthy
    /// environment turns `failed`, with the URL and the answer in its error.
    async fn verify(
        self: &Arc<Self>,
        log: &LogSink,
        succeeded: Vec<Environment>,
        limit: &Arc<Semaphore>,
    ) {
        let checked: Vec<Environment> = succeeded
            .into_iter()
            .filter(|environment| environment.health_check_url.is_some())
            .collect();
        if checked.is_empty() {
            log.info("verifying: no environment has a health_check_url; nothing to check")
                .await;
            return;
        }
        let total = checked.len();
        let verified = Arc::new(AtomicUsize::new(0));
        let mut checks = tokio::task::JoinSet::new();
        for environment in checked {
            let run = Arc::clone(self);
            let limit = Arc::clone(limit);
            let log = log.for_environment(&environment.environment_id);
            let verified = Arc::clone(&verified);
            checks.spawn(async move {
                let _permit = limit.acquire_owned().await.ok();
                let url = environment.health_check_url.clone().unwrap_or_default();
                log.info(format!("verifying: polling {url}")).await;
                let deadline = Instant::now() + Duration::from_secs(environment.timeout);
                let per_request =
                    Duration::from_secs(run.owner.settings().health_check_timeout_secs);
                let report = tokio::select! {
                    report = run.owner.reach().wait_healthy(&url, per_request, deadline) => report,
                    _ = run.cancel.cancelled() => return,
                };
                let known = run
                    .targets
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .get(&environment.environment_id)
                    .cloned();
                let Some(mut target) = known else { return };
                if report.healthy {
                    log.info(format!(
                        "healthy: {url} answered {}",
                        report.http_status.unwrap_or_default()
                    ))
                    .await;
                } else {
                    let why = report
                        .error
                        .clone()
                        .unwrap_or_else(|| format!("{url} is unhealthy"));
                    let message = format!(
                        "verifying failed: {why} (polled until the timeout of {} s)",
                        environment.timeout
                    );
                    log.line(LogStream::Error, message.clone()).await;
                    target.status = TargetStatus::Failed;
                    target.error = Some(message.clone());
                    let mut record = run.record.lock().await;
                    record
                        .errors
                        .push(format!("{}: {message}", environment.environment_id));
                }
                target.health = Some(report.clone());
                if let Err(error) = run
                    .owner
                    .record_health(&environment.environment_id, &report)
                    .await
                {
                    tracing::warn!("{error}");
                }
                let done = verified.fetch_add(1, Ordering::SeqCst) + 1;
                let progress = PROGRESS_TRIGGERED
                    + ((PROGRESS_VERIFIED - PROGRESS_TRIGGERED) as usize * done / total) as u8;
                {
                    let mut record = run.record.lock().await;
                    if progress > record.progress {
                        let stored = progress_worth_storing(record.progress, progress);
                        record.progress = progress;
                        if stored {
                            run.writer.record(record.clone(), Vec::new()).await;
                        }
                    }
                }
                let failed = !report.healthy;
                run.save_target(&target).await;
                if failed {
                    run.check_threshold().await;
                }
            });
        }
        while checks.join_next().await.is_some() {}
    }
}

/// Environments by id.
fn by_id(environments: Vec<Environment>) -> HashMap<String, Environment> {
    environments
        .into_iter()
        .map(|environment| (environment.environment_id.clone(), environment))
        .collect()
}

/// Cancels a run when a cancel request for it appears in the store (made through another copy).
async fn watch_cancel_requests(
    records: Records,
    deployment_id: String,
    cancel: CancellationToken,
    reason: Arc<Mutex<Option<StopReason>>>,
) {
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(CANCEL_POLL) => {}
        }
        if let Ok(true) = persist::runs::cancel_requested(&records, &deployment_id).await {
            reason
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .get_or_insert(StopReason::Cancelled);
            cancel.cancel();
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
