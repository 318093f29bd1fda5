//! `trigger_deployment` with `wait`: follows the deployment it started by reading its summary,
//! sends a progress notification whenever its phase or progress moves (when the client asked
//! for them), and returns its record once it ends or stops at a gate, or with a note when the
//! wait ends first.

use std::time::Duration;

use rmcp::model::ProgressNotificationParam;

use super::{types::Followed, Call, ToolError};
use crate::{client::DeploymentApi, deployment::Phase};

/// How often the deployment is read.
const WAIT_POLL: Duration = Duration::from_millis(250);
/// How long it is followed by default.
pub(super) const DEFAULT_WAIT_SECS: u64 = 600;
/// How long it is followed when the client asked for no progress notifications (below common
/// HTTP request timeouts: nothing is sent before the answer).
const QUIET_WAIT_SECS: u64 = 25;

/// Follows deployment `id` for up to `timeout_secs`.
pub(super) async fn to_end<A: DeploymentApi>(
    call: &Call<'_, A>,
    id: &str,
    timeout_secs: u64,
) -> Result<Followed, ToolError> {
    let context = call.context;
    let token = context.meta.get_progress_token();
    // Without progress notifications nothing reaches the client before the answer, so a wait
    // longer than an HTTP request timeout would end in a timeout: wait less, and say so.
    let timeout_secs = match token {
        Some(_) => timeout_secs,
        None => timeout_secs.min(QUIET_WAIT_SECS),
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout_secs);
    let mut last: Option<(Phase, f64)> = None;
    loop {
        // The summary (no log) while following; the full record once at the end.
        let summary = call.api.summary(id).await?;
        let status = summary.entry.status;
        let progress = f64::from(summary.entry.progress);
        if let Some(token) = &token {
            let changed = last.is_none_or(|(seen, sent)| seen != status || progress > sent);
            if changed {
                let done = summary
                    .environment_status
                    .values()
                    .filter(|status| status.is_terminal())
                    .count();
                let total = summary.entry.environment_count;
                // Progress must increase with every notification, also when only the phase
                // changed.
                let value = last.map_or(progress, |(_, sent)| progress.max(sent + 0.01));
                let _ = context
                    .peer
                    .notify_progress(
                        ProgressNotificationParam::new(token.clone(), value)
                            .with_total(100.0)
                            .with_message(format!(
                                "{}: {done} of {total} environment(s) done",
                                status.as_str()
                            )),
                    )
                    .await;
                last = Some((status, value));
            }
        }
        let ended = status.is_terminal() || status == Phase::AwaitingApproval;
        let note = if ended {
            None
        } else if tokio::time::Instant::now() >= deadline {
            Some("still running after the wait; follow it with get_deployment (or wait with a progress token for up to wait_timeout_secs)")
        } else {
            tokio::select! {
                _ = tokio::time::sleep(WAIT_POLL) => continue,
                _ = context.ct.cancelled() => Some("the request was cancelled"),
                _ = call.stop.cancelled() => Some("the plugin is being replaced or stopped; follow it with get_deployment"),
            }
        };
        return Ok(Followed {
            deployment: call.api.deployment(id).await?.deployment,
            note: note.map(str::to_owned),
        });
    }
}
