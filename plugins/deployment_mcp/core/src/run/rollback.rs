//! Rollbacks: a failed deployment returning the environments it changed to their previous
//! version (`rollback` in its rollout), and a rollback by hand of a finished one.

use std::{collections::HashMap, sync::Arc};

use tokio::sync::Semaphore;

use crate::model::EnvironmentId;
use crate::{
    deployment::{Phase, RollbackOutcome, TargetRecord, TargetStatus},
    environments::Environment,
    model::{LogStream, Timestamp},
    persist::catalog::EnvironmentVersions,
    rollout::RollbackMode,
    triggers::TriggerContext,
};

use super::{Run, RunOwner, PROGRESS_VERIFIED};

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
pub(super) fn rolls_back(mode: RollbackMode, target: &TargetRecord) -> bool {
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

impl<O: RunOwner> Run<O> {
    /// Rolls back the environments `chosen` accepts (phase `rolling_back`): each runs its
    /// rollback with its previous version. Returns the final phase and message: `rolled_back`
    /// when every rollback succeeded, else `failed` naming them.
    pub(crate) async fn roll_back(
        self: &Arc<Self>,
        chosen: impl Fn(&TargetRecord) -> bool,
        by_id: &HashMap<EnvironmentId, Environment>,
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
    pub(super) async fn roll_back_one(
        self: Arc<Self>,
        mut target: TargetRecord,
        environment: Option<Environment>,
        mut context: TriggerContext,
        limit: Arc<Semaphore>,
    ) -> Result<(), String> {
        let id = target.environment_id.to_string();
        let _permit = limit.acquire_owned().await.ok();
        let outcome = match (environment, target.previous_version.clone()) {
            (None, _) => Err(("the environment no longer exists".to_owned(), None)),
            (_, None) => Err((
                "no previous version to roll back to: this was its first deployment".to_owned(),
                None,
            )),
            (Some(_), _) if self.stop.requested().is_cancelled() => {
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
                    .run_trigger(&environment, &context, self.stop.requested().clone())
                    .await
                {
                    Ok(success) => Ok(success.exit_code),
                    Err((_, message, exit_code)) => Err((message, exit_code)),
                }
            }
        };
        let finished_at = Timestamp::now();
        let result = match outcome {
            Ok(exit_code) => {
                context.log.info("rollback succeeded").await;
                target.status = TargetStatus::RolledBack;
                target.rollback = Some(RollbackOutcome {
                    version: context.version.clone(),
                    succeeded: true,
                    exit_code,
                    error: None,
                    finished_at,
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
                self.writer.versions(&target.environment_id, after).await;
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
}
