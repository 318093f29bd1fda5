//! The transactions around a run that are not one of its batches: releasing what it held when
//! it ends, a cancel request for a run another copy owns, and the clean-up of runs whose
//! process is gone. Plus the two small records of the plugin and its host it reads at start.

use std::collections::HashSet;

use plugin_guest::{Condition, StoreOp};
use serde::{Deserialize, Serialize};

use super::{
    deployments::ActiveEntry,
    records::{collection, Records, StoreError},
    writes::{claim_text, Lease},
};
use crate::deployment::Claim;
use crate::model::{DeploymentId, EnvironmentId};

/// A cancel request left for the copy that runs the deployment.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CancelRequest {
    pub by: String,
}

/// Releases the claims a deployment holds under `lease` and its running entry. A claim that is
/// no longer this lease's (taken over by another process) is left alone and named in a warning.
pub async fn release(
    records: &Records,
    lease: &Lease,
    deployment_id: &DeploymentId,
    environments: &[EnvironmentId],
) -> Result<(), StoreError> {
    let claim = claim_text(deployment_id, lease.holder())?;
    let mut ops: Vec<StoreOp> = environments
        .iter()
        .map(|environment| {
            StoreOp::delete(collection::CLAIMS, environment).when(Condition::Equals(claim.clone()))
        })
        .collect();
    ops.push(StoreOp::delete(collection::ACTIVE, deployment_id));
    ops.push(StoreOp::delete(collection::CANCEL, deployment_id));
    // Each conflict drops one claim that is not ours; the rest are released.
    for _ in 0..=environments.len() {
        match records.apply(ops.clone()).await? {
            None => return Ok(()),
            Some(conflict) if conflict.index < ops.len() => {
                tracing::warn!(deployment = %deployment_id, environment = %ops[conflict.index].key, "the environment's claim is no longer this deployment's; left as it is");
                ops.remove(conflict.index);
            }
            Some(_) => return Ok(()),
        }
    }
    Ok(())
}

/// Asks the copy that runs a deployment to stop it (it watches for this record).
pub async fn request_cancel(
    records: &Records,
    deployment_id: &DeploymentId,
    by: &str,
) -> Result<(), StoreError> {
    records
        .put(
            collection::CANCEL,
            deployment_id,
            &CancelRequest { by: by.to_owned() },
        )
        .await
}

/// Whether someone asked, through another copy, to stop the deployment.
pub async fn cancel_requested(records: &Records, deployment_id: &str) -> Result<bool, StoreError> {
    Ok(records
        .get_raw(collection::CANCEL, deployment_id)
        .await?
        .is_some())
}

/// Forgets the running entries and claims of processes that are gone: `alive` says which
/// processes (boots) still run theirs, and deployments in `parked` keep their claims (they wait
/// at a gate, with no process). Each claim is released only if it still holds what was read.
pub async fn forget_dead_runs(
    records: &Records,
    alive: impl Fn(&str) -> bool,
    parked: &HashSet<String>,
) -> Result<(), StoreError> {
    for (id, active) in records.scan::<ActiveEntry>(collection::ACTIVE, "").await? {
        if !alive(&active.boot_id) && !parked.contains(&id) {
            records.delete(collection::ACTIVE, &id).await?;
            records.delete(collection::CANCEL, &id).await?;
        }
    }
    let mut stale = Vec::new();
    let mut after = None;
    loop {
        let page = records
            .page(collection::CLAIMS, after.clone(), 1000)
            .await?;
        let full = page.len() == 1000;
        for (environment, text) in page {
            after = Some(environment.clone());
            let claim = serde_json::from_str::<Claim>(&text).ok();
            let is_stale = claim.is_none_or(|claim| {
                !alive(&claim.boot_id) && !parked.contains(claim.deployment_id.as_str())
            });
            if is_stale {
                stale.push(
                    StoreOp::delete(collection::CLAIMS, &environment).when(Condition::Equals(text)),
                );
            }
        }
        if !full {
            break;
        }
    }
    for op in stale {
        // A conflict means the claim changed since it was read: it is not stale.
        records.apply(vec![op]).await?;
    }
    Ok(())
}

/// The plugin's own small state records.
const AUTO_DEPLOY_KEY: &str = "auto_deploy";

#[derive(Debug, Serialize, Deserialize)]
struct AutoDeployState {
    /// The boot that already considered an automatic deployment.
    boot_id: String,
}

/// The host boot that last considered the automatic deployment.
pub async fn auto_deploy_boot(records: &Records) -> Result<Option<String>, StoreError> {
    Ok(records
        .get::<AutoDeployState>(collection::META, AUTO_DEPLOY_KEY)
        .await?
        .map(|state| state.boot_id))
}

/// Records that `boot_id` considered the automatic deployment.
pub async fn set_auto_deploy_boot(records: &Records, boot_id: &str) -> Result<(), StoreError> {
    let state = AutoDeployState {
        boot_id: boot_id.to_owned(),
    };
    records.put(collection::META, AUTO_DEPLOY_KEY, &state).await
}

/// The host's `host/lifecycle` record, which the host writes at each start.
pub async fn host_lifecycle(records: &Records) -> Option<crate::HostLifecycle> {
    records
        .get(collection::HOST, collection::HOST_LIFECYCLE)
        .await
        .ok()
        .flatten()
}
