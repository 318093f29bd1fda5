//! Admission through the deployment windows: a trigger whose environments a window closes is
//! refused naming the window and when it opens, unless an admin overrides with a reason (kept
//! on the record and in the audit entry).

use super::{Coordinator, StartError, StartRequest};
use crate::{
    deployment::WindowOverride, environments::Environment, environments::FieldError,
    model::Timestamp, persist,
};

impl Coordinator {
    /// Checks `targets` against the windows now; the override to keep on the record.
    pub(super) async fn check_windows(
        &self,
        request: &StartRequest,
        targets: &[Environment],
    ) -> Result<Option<Box<WindowOverride>>, StartError> {
        if let Some(reason) = &request.override_reason {
            if reason.trim().is_empty()
                || reason.len() > 1024
                || reason.chars().any(char::is_control)
            {
                return Err(StartError::BadField(FieldError::new(
                    "override.reason",
                    "must say why, in 1 to 1024 printable characters",
                )));
            }
        }
        let windows = persist::windows::windows(&self.records).await?;
        let now = Timestamp::now();
        let closed = windows.closed(targets, now);
        if let (Some((environment, _)), None) = (closed.first(), &request.override_reason) {
            // The whole answer for the first one: its window and when it opens.
            let verdict = windows.explain(environment, now);
            return Err(StartError::WindowClosed {
                environment: environment.environment_id.to_string(),
                window: verdict.window.unwrap_or_else(|| closed[0].1.clone()),
                opens_at: verdict.opens_at,
            });
        }
        let mut names: Vec<String> = closed.into_iter().map(|(_, window)| window).collect();
        names.sort();
        names.dedup();
        Ok(request.override_reason.as_ref().map(|reason| {
            Box::new(WindowOverride {
                by: request.triggered_by.clone(),
                reason: reason.clone(),
                windows: names,
            })
        }))
    }
}
