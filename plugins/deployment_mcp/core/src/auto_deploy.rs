//! The deployment triggered once the host has started (`auto_deploy` in the settings).
//!
//! It runs at most once per host boot: a hot swap starts a new copy of the plugin in the same
//! boot (and in process mode a crash restart a new child of the same host), and that copy must
//! not deploy again. With `when = "version_changed"` it runs only when
//! the platform version differs from the last automatic deployment that completed.

use std::sync::Arc;

use crate::{
    coordinator::{Coordinator, StartRequest},
    deployment::Phase,
    persist::{self, records::StoreError},
    settings::{AutoDeployWhen, Settings},
};

/// Who automatic deployments are recorded as triggered by.
pub const TRIGGERED_BY: &str = "auto:startup";

/// Decides and, if due, starts the automatic deployment. Failures are logged and, when a
/// deployment started, recorded in it; none of them stops the plugin.
/// `boot_id` is the host process's (see [`crate::HostLifecycle::host_boot`]).
pub async fn run(coordinator: Arc<Coordinator>, settings: Arc<Settings>, boot_id: String) {
    let auto = &settings.auto_deploy;
    if !auto.enabled {
        return;
    }
    let records = coordinator.records();
    match persist::runs::auto_deploy_boot(records).await {
        Ok(Some(considered)) if considered == boot_id => return,
        Ok(_) => {}
        Err(error) => {
            tracing::warn!("auto_deploy: cannot read its state: {error}");
            return;
        }
    }
    if let Err(error) = persist::runs::set_auto_deploy_boot(records, &boot_id).await {
        tracing::warn!("auto_deploy: cannot record this boot: {error}");
        return;
    }
    let version = settings.deployed_version();
    if auto.when == AutoDeployWhen::VersionChanged {
        let last = match last_completed_version(&coordinator).await {
            Ok(last) => last,
            Err(error) => {
                tracing::warn!("auto_deploy: cannot read the history: {error}");
                return;
            }
        };
        let current = version.clone().unwrap_or_else(|| "unversioned".to_owned());
        if last.as_deref() == Some(current.as_str()) {
            tracing::info!(
                version = %current,
                "auto_deploy: version unchanged since the last automatic deployment; not deploying"
            );
            return;
        }
    }
    // The start is the call of no key: its entry says `via: auto`.
    let call = std::sync::Arc::new(crate::audit::AuditCall::new(
        None,
        crate::audit::Via::Auto,
        None,
        "deployment.trigger",
        None,
        None,
    ));
    let started = call
        .scope(coordinator.start(StartRequest {
            rollout: Default::default(),
            deployment_id: None,
            environments: auto.environments.clone(),
            selector: None,
            version,
            ec2: None,
            triggered_by: TRIGGERED_BY.to_owned(),
            request_id: None,
            retry_of: None,
            override_reason: None,
        }))
        .await;
    if !call.recorded() {
        let outcome = crate::audit::Outcome {
            status: crate::audit::Status::Failed,
            error: Some("start_failed".into()),
            http_status: None,
        };
        if let Err(error) = coordinator.records().record_call(&call, &outcome).await {
            tracing::error!("auto_deploy: cannot write the audit entry: {error}");
        }
    }
    match started {
        Ok(record) => tracing::info!(
            deployment = %record.deployment_id,
            version = %record.version,
            "auto_deploy: deployment started"
        ),
        Err(error) => tracing::error!("auto_deploy: the deployment could not start: {error:?}"),
    }
}

/// The version of the newest automatic deployment that completed (read newest first, so
/// usually from the first page of the history).
async fn last_completed_version(coordinator: &Coordinator) -> Result<Option<String>, StoreError> {
    let history = crate::persist::history::History::new(coordinator.records().clone());
    Ok(history
        .newest_where(1, |entry| {
            entry.triggered_by == TRIGGERED_BY && entry.status == Phase::Completed
        })
        .await?
        .pop()
        .map(|entry| entry.version))
}
