//! A rollout that reaches a closed deployment window between batches waits in phase
//! `awaiting_window` and goes on when the window opens. The windows are read again when the
//! one that closed it should open, and at least every [`RECHECK`], so a window deleted or
//! added meanwhile counts. The run keeps its task while it waits: a restart resumes it at the
//! same batch, which looks at the windows again. A deployment an admin triggered with an
//! override of the windows does not wait.

use std::{collections::HashMap, time::Duration};

use super::{Run, RunOwner};
use crate::{
    deployment::Phase,
    environments::Environment,
    model::{EnvironmentId, LogSink, Timestamp},
    persist,
};

/// The longest wait between two looks at the windows.
const RECHECK: Duration = Duration::from_secs(30);

impl<O: RunOwner> Run<O> {
    /// Waits before batch `index` while a window closes one of its environments. False when the
    /// run was stopped meanwhile.
    pub(super) async fn wait_for_window(
        &self,
        index: usize,
        log: &LogSink,
        by_id: &HashMap<EnvironmentId, Environment>,
    ) -> bool {
        let ids: Vec<EnvironmentId> = {
            let record = self.record.lock().await;
            if record.window_override.is_some() {
                return true;
            }
            match record.batches.get(index) {
                Some(batch) => record
                    .environments
                    .iter()
                    .skip(batch.start)
                    .take(batch.len)
                    .cloned()
                    .collect(),
                None => return true,
            }
        };
        let mut waiting_from: Option<Phase> = None;
        loop {
            let windows = match persist::windows::windows(self.owner.records()).await {
                Ok(windows) => windows,
                Err(error) => {
                    // The next write fails the same way; the windows cannot hold the run then.
                    tracing::warn!("cannot read the deployment windows before a batch: {error}");
                    break;
                }
            };
            let now = Timestamp::now();
            let batch = ids.iter().filter_map(|id| by_id.get(id));
            let Some((environment, _)) = windows.closed(batch, now).into_iter().next() else {
                break;
            };
            let verdict = windows.explain(environment, now);
            if waiting_from.is_none() {
                waiting_from = Some(self.record.lock().await.status);
                let opens = verdict
                    .opens_at
                    .map_or("not within 400 days".to_owned(), |at| format!("at {at}"));
                log.info(format!(
                    "batch {} waits: deployment window {} closes {}; it opens {opens}",
                    index + 1,
                    verdict.window.as_deref().unwrap_or("?"),
                    environment.environment_id,
                ))
                .await;
                self.set_phase(Phase::AwaitingWindow, 0).await;
            }
            let until_open = verdict.opens_at.map_or(RECHECK, |at| {
                Duration::from_millis(at.unix_ms().saturating_sub(now.unix_ms()))
            });
            let wait = until_open.clamp(Duration::from_millis(50), RECHECK);
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.stop.requested().cancelled() => return false,
            }
        }
        if let Some(previous) = waiting_from {
            log.info(format!("the window is open: batch {} starts", index + 1))
                .await;
            self.set_phase(previous, 0).await;
        }
        true
    }
}
