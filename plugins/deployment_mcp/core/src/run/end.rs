//! The end of a run: its final record written, its environments released and its last phase
//! published, in that order (by the writer); and the end of a run whose task panicked.

use std::time::Instant;

use crate::model::EnvironmentId;
use crate::{
    deployment::{Phase, TargetStatus},
    model::{LogStream, Timestamp},
};

use super::{Run, RunOwner};

impl<O: RunOwner> Run<O> {
    /// Records the end, frees the environments, then tells the world: whoever sees the final
    /// phase can start the next deployment of these environments at once.
    pub(super) async fn finish(&self, phase: Phase, message: Option<String>, started: Instant) {
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
            record.finished_at = Some(Timestamp::now());
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
        self.owner.forget_run(&record.deployment_id, &self.stop);
    }

    /// The environments that have not succeeded (so far).
    pub(super) fn failed_environments(&self) -> Vec<EnvironmentId> {
        let targets = self
            .targets
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut failed: Vec<EnvironmentId> = targets
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
            record.finished_at = Some(Timestamp::now());
            record.clone()
        };
        self.writer.finished(record.clone(), None, failed).await;
        self.writer.flush().await;
        owner.forget_run(&record.deployment_id, &self.stop);
    }
}
