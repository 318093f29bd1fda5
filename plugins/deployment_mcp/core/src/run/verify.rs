//! The verification after a batch: each succeeded environment's health URL polled until it is
//! healthy or its timeout passes.

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use tokio::sync::Semaphore;

use crate::{
    deployment::TargetStatus,
    environments::Environment,
    model::{LogSink, LogStream},
};

use super::{progress_worth_storing, Run, RunOwner, PROGRESS_TRIGGERED, PROGRESS_VERIFIED};

impl<O: RunOwner> Run<O> {
    /// Polls each succeeded environment's health URL until healthy or its timeout. An unhealthy
    /// environment turns `failed`, with the URL and the answer in its error.
    pub(super) async fn verify(
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
                    _ = run.stop.requested().cancelled() => return,
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
