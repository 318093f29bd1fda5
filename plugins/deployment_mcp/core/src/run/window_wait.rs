//! A rollout that reaches a closed deployment window between batches waits in phase
//! `awaiting_window` and goes on when the window opens. The windows are read again when the
//! one that closed it should open, and at least every [`RECHECK`], so a window deleted or
//! added meanwhile counts. The run keeps its task while it waits: a restart resumes it at the
//! same batch, which looks at the windows again. A deployment an admin triggered with an
//! override of the windows does not wait. A window that does not open within the horizon ends
//! the rollout there (the rest skipped) rather than holding its environments for good; windows
//! that cannot be read hold the batch.

use std::{collections::HashMap, time::Duration};

use super::{Run, RunOwner};
use crate::{
    deployment::Phase,
    environments::Environment,
    model::{EnvironmentId, LogSink, LogStream, Timestamp},
    persist,
};

/// The longest wait between two looks at the windows.
const RECHECK: Duration = Duration::from_secs(30);

impl<O: RunOwner> Run<O> {
    /// Waits before batch `index` while a window closes one of its environments. `Err` with why
    /// the batch and the rest must not start: the run was stopped meanwhile, or the window that
    /// closes it does not open within the horizon.
    pub(super) async fn wait_for_window(
        &self,
        index: usize,
        log: &LogSink,
        by_id: &HashMap<EnvironmentId, Environment>,
    ) -> Result<(), String> {
        let stopped = || "not started: the deployment was stopped".to_owned();
        let ids: Vec<EnvironmentId> = {
            let record = self.record.lock().await;
            if record.window_override.is_some() {
                return Ok(());
            }
            match record.batches.get(index) {
                Some(batch) => record
                    .environments
                    .iter()
                    .skip(batch.start)
                    .take(batch.len)
                    .cloned()
                    .collect(),
                None => return Ok(()),
            }
        };
        let mut waiting_from: Option<Phase> = None;
        loop {
            let wait = match persist::windows::windows(self.owner.records()).await {
                Err(error) => {
                    // Unread windows hold the batch: a freeze must not be missed.
                    tracing::warn!(
                        "cannot read the deployment windows before a batch; trying again: {error}"
                    );
                    RECHECK
                }
                Ok(windows) => {
                    let now = Timestamp::now();
                    let batch = ids.iter().filter_map(|id| by_id.get(id));
                    let Some((environment, _)) = windows.closed(batch, now).into_iter().next()
                    else {
                        break;
                    };
                    let verdict = windows.explain(environment, now);
                    let window = verdict.window.as_deref().unwrap_or("?");
                    let Some(opens_at) = verdict.opens_at else {
                        let why = format!(
                            "not started: deployment window {window} closes {} and does not open within 400 days",
                            environment.environment_id
                        );
                        log.line(LogStream::Error, why.clone()).await;
                        return Err(why);
                    };
                    if waiting_from.is_none() {
                        waiting_from = Some(self.record.lock().await.status);
                        log.info(format!(
                            "batch {} waits: deployment window {window} closes {}; it opens at {opens_at}",
                            index + 1,
                            environment.environment_id,
                        ))
                        .await;
                        self.set_phase(Phase::AwaitingWindow, 0).await;
                    }
                    Duration::from_millis(opens_at.unix_ms().saturating_sub(now.unix_ms()))
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(wait.clamp(Duration::from_millis(50), RECHECK)) => {}
                _ = self.stop.requested().cancelled() => return Err(stopped()),
            }
        }
        if let Some(previous) = waiting_from {
            log.info(format!("the window is open: batch {} starts", index + 1))
                .await;
            // A run resumed while it waited comes back to the phase batches run in.
            let phase = match previous {
                Phase::AwaitingWindow => Phase::LocalDeploying,
                phase => phase,
            };
            self.set_phase(phase, 0).await;
        }
        Ok(())
    }
}
