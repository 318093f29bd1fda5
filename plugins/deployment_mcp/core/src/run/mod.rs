//! A deployment while it runs: its phases (EC2, triggering, verifying), one task per
//! environment under the parallel limit with its deadline and cancel token, and the end. The run
//! keeps its record and results in memory; its [`writer::RunWriter`] stores them in batches and
//! publishes what it stored.

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
    catalog::Catalog,
    deployment::{DeploymentRecord, HealthReport, Phase, TargetRecord, TargetStatus},
    ec2::{self, Ec2Settings},
    environments::Environment,
    health,
    records::{collection, Records},
    settings::Settings,
    triggers::{
        timestamp, AnyTrigger, FailureKind, LogSink, LogStream, TriggerContext, TriggerFailure,
    },
};
use writer::RunWriter;

/// How long past its timeout (or a cancel) a trigger that stops itself may take to do so.
const SELF_STOP_GRACE: Duration = Duration::from_secs(10);
/// How often a run looks for a cancel request made through another copy.
const CANCEL_POLL: Duration = Duration::from_millis(500);

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
    fn http(&self) -> &reqwest::Client;
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
    ) -> impl std::future::Future<Output = Result<(), crate::records::StoreError>> + Send;
    /// Frees the environments the run claimed.
    fn release(
        &self,
        deployment_id: &str,
        environments: &[String],
    ) -> impl std::future::Future<Output = ()> + Send;
    /// The run has ended and is no longer live.
    fn forget_run(&self, deployment_id: &str);
    fn publish_phase(&self, record: &DeploymentRecord, previous: Option<Phase>);
    /// Something that status answers show has changed.
    fn changed(&self);
}

/// One deployment in progress. Its record and environment results are kept here, in memory,
/// and handed to the run's writer, which stores them in batches.
pub(crate) struct Run<O: RunOwner> {
    pub(crate) owner: Arc<O>,
    pub(crate) record: tokio::sync::Mutex<DeploymentRecord>,
    pub(crate) targets: Mutex<HashMap<String, TargetRecord>>,
    pub(crate) cancel: CancellationToken,
    pub(crate) reason: Arc<Mutex<Option<StopReason>>>,
    pub(crate) finished_targets: AtomicUsize,
    pub(crate) total_targets: usize,
    /// The EC2 phase to run first, when it is on for this deployment.
    pub(crate) ec2: Option<Ec2Settings>,
    pub(crate) writer: RunWriter,
}

/// Progress at the start of each phase; triggering and verification fill the gaps in between.
const PROGRESS_EC2: u8 = 2;
const PROGRESS_TRIGGERING: u8 = 10;
const PROGRESS_TRIGGERED: u8 = 80;
const PROGRESS_VERIFIED: u8 = 95;

impl<O: RunOwner> Run<O> {
    fn stop_reason(&self) -> Option<StopReason> {
        *self
            .reason
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) async fn execute(self: Arc<Self>, targets: Vec<Environment>) {
        let owner = Arc::clone(&self.owner);
        let started = Instant::now();
        let (deployment_id, version, request_id) = {
            let record = self.record.lock().await;
            (
                record.deployment_id.clone(),
                record.version.clone(),
                record.request_id.clone().filter(|id| !id.is_empty()),
            )
        };
        let _ = request_id;
        let log = self.writer.log().clone();
        let watcher = tokio::spawn(watch_cancel_requests(
            owner.records().clone(),
            deployment_id.clone(),
            self.cancel.clone(),
            Arc::clone(&self.reason),
        ));

        let triggered_by = self.record.lock().await.triggered_by.clone();
        log.info(format!(
            "deployment {deployment_id} started by {triggered_by}: {} environment(s), version {version}",
            targets.len()
        ))
        .await;
        let mut platform = owner.platform_identity(self.ec2.is_some()).await;
        let ec2_ok = match &self.ec2 {
            None => {
                log.info("EC2 phase skipped: ec2 is off").await;
                true
            }
            Some(settings) => {
                self.set_phase(Phase::Ec2Deploying, PROGRESS_EC2).await;
                let outcome = tokio::select! {
                    outcome = ec2::ensure_running(settings, &log) => Some(outcome),
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
        if let Some((id, ip)) = &platform {
            log.info(format!(
                "platform instance {id}{}",
                ip.as_deref()
                    .map(|ip| format!(" at {ip}"))
                    .unwrap_or_default()
            ))
            .await;
        }
        let limit = Arc::new(Semaphore::new(owner.settings().max_parallel));
        let context = TriggerContext {
            deployment_id: deployment_id.clone(),
            version,
            platform_instance_id: platform.as_ref().map(|(id, _)| id.clone()),
            platform_ip: platform.and_then(|(_, ip)| ip),
            log: log.clone(),
            stop: Default::default(),
        };
        if ec2_ok {
            self.set_phase(Phase::LocalTriggering, PROGRESS_TRIGGERING)
                .await;
        } else {
            self.skip_targets(&targets, "not triggered: the EC2 phase did not complete")
                .await;
        }
        let mut running = tokio::task::JoinSet::new();
        for environment in targets.iter().filter(|_| ec2_ok) {
            let run = Arc::clone(&self);
            let limit = Arc::clone(&limit);
            let mut context = context.clone();
            context.log = log.for_environment(&environment.environment_id);
            let environment = environment.clone();
            running.spawn(async move { run.trigger_one(environment, context, limit).await });
        }
        if ec2_ok {
            self.set_phase(Phase::LocalDeploying, PROGRESS_TRIGGERING)
                .await;
        }
        let mut succeeded = Vec::new();
        while let Some(done) = running.join_next().await {
            if let Ok(Some(environment)) = done {
                succeeded.push(environment);
            }
        }

        if ec2_ok && self.stop_reason().is_none() {
            self.set_phase(Phase::LocalCompleted, PROGRESS_TRIGGERED)
                .await;
            self.set_phase(Phase::Verifying, PROGRESS_TRIGGERED).await;
            self.verify(&log, succeeded, &limit).await;
        }

        let failed = self.failed_environments();
        let failed_any = !failed.is_empty();
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
            None if failed_any => (Phase::Failed, None),
            None => (Phase::Completed, None),
        };
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
        watcher.abort();
        drop(context);
        drop(log);
        // Record the end, free the environments, then tell the world: whoever sees the final
        // phase can start the next deployment of these environments at once.
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
            self.writer.record(record.clone(), failed).await;
            self.writer.flush().await;
            (record.clone(), previous)
        };
        owner.release(&deployment_id, &record.environments).await;
        owner.forget_run(&deployment_id);
        owner.publish_phase(&record, Some(previous));
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
            self.writer.record(record.clone(), failed).await;
            self.writer.flush().await;
            record.clone()
        };
        owner
            .release(&record.deployment_id, &record.environments)
            .await;
        owner.forget_run(&record.deployment_id);
        owner.publish_phase(&record, None);
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
            _ = self.cancel.cancelled() => None,
        };
        let started = Instant::now();
        let outcome = match permit {
            None => Err((
                TargetStatus::Cancelled,
                "stopped before it started".to_owned(),
                None,
            )),
            Some(_permit) => {
                target.started_at = Some(timestamp(SystemTime::now()));
                target.status = TargetStatus::Triggering;
                self.save_target(&target).await;
                // Secrets are read only now, for the trigger, and live only as long as it.
                let with_secrets = match self
                    .owner
                    .catalog()
                    .with_secrets(environment.clone())
                    .await
                {
                    Ok(with_secrets) => with_secrets,
                    Err(error) => {
                        tracing::error!(environment = %id, "cannot read the environment's secrets: {error}");
                        environment.clone()
                    }
                };
                let trigger = AnyTrigger::for_environment(&with_secrets, self.owner.http());
                drop(with_secrets);
                target.status = TargetStatus::Running;
                self.save_target(&target).await;
                let timeout = Duration::from_secs(environment.timeout);
                let mut context = context.clone();
                context.stop = crate::triggers::StopSignal {
                    cancel: self.cancel.clone(),
                    deadline: Some(tokio::time::Instant::now() + timeout),
                };
                let timed_out = || {
                    Err((
                        TargetStatus::TimedOut,
                        format!("no result within the environment's timeout of {} s; the trigger was stopped", environment.timeout),
                        None,
                    ))
                };
                let cancelled = || {
                    Err((
                        TargetStatus::Cancelled,
                        "stopped: the deployment was cancelled".to_owned(),
                        None,
                    ))
                };
                let run = trigger.run(&context);
                tokio::pin!(run);
                let result = if trigger.stops_itself() {
                    // It kills and reaps what it started when told to stop; the bound only
                    // guards against a trigger that does not.
                    tokio::time::timeout(timeout + SELF_STOP_GRACE, &mut run)
                        .await
                        .ok()
                } else {
                    tokio::select! {
                        result = tokio::time::timeout(timeout, &mut run) => result.ok(),
                        _ = self.cancel.cancelled() => Some(Err(TriggerFailure::cancelled(String::new()))),
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
                        FailureKind::Cancelled if failure.message.is_empty() => cancelled(),
                        FailureKind::Cancelled => {
                            Err((TargetStatus::Cancelled, failure.message, failure.exit_code))
                        }
                    },
                    None if self.cancel.is_cancelled() => cancelled(),
                    None => timed_out(),
                }
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
                context.log.line(LogStream::Error, message.clone()).await;
                target.error = Some(message);
                false
            }
        };
        target.finished_at = Some(timestamp(SystemTime::now()));
        target.duration_ms = Some(started.elapsed().as_millis() as u64);
        // The tail includes this environment's last lines once the writer has seen them.
        let finished = self.finished_targets.fetch_add(1, Ordering::SeqCst) + 1;
        let progress = PROGRESS_TRIGGERING
            + ((PROGRESS_TRIGGERED - PROGRESS_TRIGGERING) as usize * finished
                / self.total_targets.max(1)) as u8;
        self.finish_target(&mut target, progress).await;
        succeeded.then_some(environment)
    }

    /// Records environments that were never triggered as cancelled, with the reason.
    async fn skip_targets(&self, targets: &[Environment], why: &str) {
        for environment in targets {
            let mut target = TargetRecord::new(
                &environment.environment_id,
                environment.connection_method().as_str(),
                TargetStatus::Cancelled,
            );
            target.finished_at = Some(timestamp(SystemTime::now()));
            target.error = Some(why.to_owned());
            self.save_target(&target).await;
        }
    }

    /// Keeps an environment's new state and hands it to the writer.
    async fn save_target(&self, target: &TargetRecord) {
        self.targets
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(target.environment_id.clone(), target.clone());
        self.owner.changed();
        self.writer.target(target.clone()).await;
    }

    /// Records an environment's final result and the deployment's progress.
    async fn finish_target(&self, target: &mut TargetRecord, progress: u8) {
        {
            let mut record = self.record.lock().await;
            if progress > record.progress {
                record.progress = progress;
                self.writer.record(record.clone(), Vec::new()).await;
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
                let per_request = Duration::from_secs(run.owner.settings().health_check_timeout_secs);
                let report = tokio::select! {
                    report = health::wait_healthy(run.owner.http(), &url, per_request, deadline) => report,
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
                    log.info(format!("healthy: {url} answered {}", report.http_status.unwrap_or_default())).await;
                } else {
                    let why = report.error.clone().unwrap_or_else(|| format!("{url} is unhealthy"));
                    let message = format!("verifying failed: {why} (polled until the timeout of {} s)", environment.timeout);
                    log.line(LogStream::Error, message.clone()).await;
                    target.status = TargetStatus::Failed;
                    target.error = Some(message.clone());
                    let mut record = run.record.lock().await;
                    record.errors.push(format!("{}: {message}", environment.environment_id));
                }
                target.health = Some(report.clone());
                if let Err(error) = run.owner.record_health(&environment.environment_id, &report).await {
                    tracing::warn!("{error}");
                }
                let done = verified.fetch_add(1, Ordering::SeqCst) + 1;
                let progress = PROGRESS_TRIGGERED + ((PROGRESS_VERIFIED - PROGRESS_TRIGGERED) as usize * done / total) as u8;
                {
                    let mut record = run.record.lock().await;
                    if progress > record.progress {
                        record.progress = progress;
                        run.writer.record(record.clone(), Vec::new()).await;
                    }
                }
                run.save_target(&target).await;
            });
        }
        while checks.join_next().await.is_some() {}
    }
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
        if let Ok(Some(_)) = records
            .get::<serde_json::Value>(collection::CANCEL, &deployment_id)
            .await
        {
            reason
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .get_or_insert(StopReason::Cancelled);
            cancel.cancel();
            return;
        }
    }
}
