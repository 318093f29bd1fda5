//! One batch of a run: its triggers under the parallel limit, each with its timeout and cancel
//! token, the results kept and handed to the writer, and the environments a stopped run never
//! started.

use std::{
    collections::HashMap,
    sync::{atomic::Ordering, Arc},
    time::{Duration, Instant},
};

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::model::EnvironmentId;
use crate::{
    deployment::{BatchStatus, Phase, TargetRecord, TargetStatus},
    environments::Environment,
    model::{LogStream, Timestamp},
    persist::catalog::EnvironmentVersions,
    triggers::{AnyTrigger, FailureKind, TriggerContext, TriggerFailure, TriggerSuccess},
};

use super::{
    progress_worth_storing, writer::Announcement, Run, RunOwner, PROGRESS_TRIGGERED,
    PROGRESS_TRIGGERING, SELF_STOP_GRACE,
};

impl<O: RunOwner> Run<O> {
    /// Runs batch `index` of `count`: its triggers under the parallel limit, then the
    /// verification of what succeeded; records the batch's state and the versions deployed.
    pub(super) async fn run_batch(
        self: &Arc<Self>,
        index: usize,
        count: usize,
        by_id: &HashMap<EnvironmentId, Environment>,
        context: &TriggerContext,
        limit: &Arc<Semaphore>,
    ) {
        let log = &context.log;
        let ids = {
            let mut record = self.record.lock().await;
            let ids = record.batch_environments(index).to_vec();
            if let Some(batch) = record.batches.get_mut(index) {
                batch.status = BatchStatus::Running;
                batch.started_at = Some(Timestamp::now());
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
            // Ended before a takeover: its result stands.
            if self
                .targets
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .get(id)
                .is_some_and(|target| target.status.is_terminal())
            {
                continue;
            }
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
        let now = Timestamp::now();
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
                    deployment_id: deployment_id.clone(),
                    updated_at: now,
                });
            self.writer
                .versions(
                    &target.environment_id,
                    EnvironmentVersions::after(before.as_ref(), &version, &deployment_id, now),
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
    pub(super) async fn announce_batch(&self, index: usize) {
        let record = self.record.lock().await.clone();
        self.writer
            .announce(record, Announcement::Batch(index))
            .await;
        self.owner.changed();
    }

    /// Ends every environment of batch `from` onwards that has not started (`status`, with
    /// `why`), and marks those batches skipped.
    pub(super) async fn end_from(&self, from: usize, status: TargetStatus, why: &str) {
        let ids: Vec<EnvironmentId> = {
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
    pub(super) async fn end_unstarted(&self, id: &EnvironmentId, status: TargetStatus, why: &str) {
        let mut target = self
            .targets
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(id)
            .cloned()
            .unwrap_or_else(|| TargetRecord::new(id, "", TargetStatus::Pending));
        target.status = status;
        target.finished_at = Some(Timestamp::now());
        target.error = Some(why.to_owned());
        self.finished_targets.fetch_add(1, Ordering::SeqCst);
        self.save_target(&target).await;
    }

    /// Runs one environment's trigger under the parallel limit, its timeout and the cancel
    /// token. Returns the environment when it succeeded.
    pub(super) async fn trigger_one(
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
            _ = self.stop.no_new().cancelled() => None,
        };
        // The threshold may have been crossed while this one waited for its turn.
        let permit = permit.filter(|_| !self.stop.no_new().is_cancelled());
        let started = Instant::now();
        let outcome = match permit {
            None if self.stop.requested().is_cancelled() => Err((
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
                target.started_at = Some(Timestamp::now());
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
                if !environment.connection_method().resendable() {
                    // Stored before the command starts: a node that takes the run over must
                    // know it may have run, and never starts it a second time.
                    self.writer.flush().await;
                }
                if self.stop.requested().is_cancelled() {
                    Err((
                        TargetStatus::Cancelled,
                        "stopped before it started".to_owned(),
                        None,
                    ))
                } else {
                    self.run_trigger(&environment, &context, self.stop.running().clone())
                        .await
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
                if target.started_at.is_some() {
                    context.log.line(LogStream::Error, message.clone()).await;
                }
                target.error = Some(message);
                false
            }
        };
        target.finished_at = Some(Timestamp::now());
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
    pub(super) async fn run_trigger(
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
    pub(super) async fn run_trigger_with(
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
                Some(why) if !self.stop.requested().is_cancelled() => format!("stopped: {why}"),
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
    pub(super) async fn save_target(&self, target: &TargetRecord) {
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
    pub(super) async fn finish_target(&self, target: &mut TargetRecord, progress: u8) {
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
}
