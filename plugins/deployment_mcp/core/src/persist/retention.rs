//! Retention: finished deployments (record, per-environment results, log) older than
//! `retention_days`, or beyond the newest `retention_max_deployments`, are deleted in the
//! background, so the store does not grow forever. A deployment that has not ended is never
//! touched. Each deployment goes in one store transaction: it is there whole, or gone.
//!
//! Nodes that share the store take turns (`persist::runs::take_turn`): one of them prunes each
//! hour.
//!
//! Idempotency keys are kept for a day: a client repeating a request later than that gets a new
//! deployment.

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use plugin_guest::StoreOp;
use tokio_util::sync::CancellationToken;

use crate::{
    deployment::{history_key, DeploymentRecord, HistoryEntry},
    persist::records::{collection, Records, StoreError},
    settings::Settings,
};

/// How often retention runs (and once shortly after start).
const INTERVAL: Duration = Duration::from_secs(3600);
const FIRST_RUN_DELAY: Duration = Duration::from_secs(30);
/// How long an `Idempotency-Key` repeats its first answer.
pub const IDEMPOTENCY_TTL: Duration = Duration::from_secs(24 * 3600);
/// Rows read per page.
const PAGE: u32 = 500;

/// Runs retention until `stop` is cancelled. On `node`, one of several that share the store,
/// only when it takes the hour's turn: retention runs once per period in the cluster.
pub async fn run(
    records: Records,
    settings: Arc<Settings>,
    node: Option<String>,
    stop: CancellationToken,
) {
    let mut wait = FIRST_RUN_DELAY;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        wait = INTERVAL;
        let now = SystemTime::now();
        if let Some(node) = &node {
            let now_ms = now
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default()
                .as_millis() as u64;
            match super::runs::take_turn(&records, "retention", INTERVAL, now_ms, node).await {
                Ok(true) => {}
                Ok(false) => continue,
                Err(error) => {
                    tracing::warn!("retention: {error}");
                    continue;
                }
            }
        }
        match prune(&records, &settings, now).await {
            Ok(outcome) if outcome.deployments + outcome.idempotency_keys > 0 => {
                tracing::info!(
                    deployments = outcome.deployments,
                    idempotency_keys = outcome.idempotency_keys,
                    "retention: deleted what is past its keep period"
                );
            }
            Ok(_) => {}
            Err(error) => tracing::warn!("retention: {error}"),
        }
    }
}

/// What one pass deleted.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pruned {
    pub deployments: usize,
    pub idempotency_keys: usize,
}

/// One retention pass as of `now`.
pub async fn prune(
    records: &Records,
    settings: &Settings,
    now: SystemTime,
) -> Result<Pruned, StoreError> {
    let now_ms = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64;
    let mut pruned = Pruned::default();
    // History keys sort newest first, so the deployments older than the cutoff are exactly the
    // keys after the cutoff's own key: a key range, not a scan of everything.
    if settings.retention_days > 0 {
        let cutoff_ms = now_ms.saturating_sub(u64::from(settings.retention_days) * 86_400_000);
        let from = history_key(cutoff_ms, "");
        pruned.deployments += prune_from(records, Some(from), 0).await?;
    }
    if let Some(keep) = settings.retention_max_deployments {
        pruned.deployments += prune_from(records, None, keep).await?;
    }
    pruned.idempotency_keys = prune_idempotency(records, now_ms).await?;
    Ok(pruned)
}

/// Deletes every finished deployment in history order after `after`, past the first `keep`.
async fn prune_from(
    records: &Records,
    after: Option<String>,
    keep: usize,
) -> Result<usize, StoreError> {
    let mut after = after;
    let mut seen = 0usize;
    let mut deleted = 0;
    loop {
        let page = records
            .page(collection::HISTORY, after.clone(), PAGE)
            .await?;
        let full = page.len() == PAGE as usize;
        for (key, text) in page {
            after = Some(key.clone());
            seen += 1;
            if seen <= keep {
                continue;
            }
            let Ok(entry) = serde_json::from_str::<HistoryEntry>(&text) else {
                continue;
            };
            if !entry.status.is_terminal() {
                continue;
            }
            delete_deployment(records, &key, &entry).await?;
            deleted += 1;
        }
        if !full {
            return Ok(deleted);
        }
    }
}

/// Every key of `collection` that starts with `prefix`.
async fn keys_with_prefix(
    records: &Records,
    collection: &'static str,
    prefix: &str,
) -> Result<Vec<String>, StoreError> {
    let mut keys = Vec::new();
    let mut after = Some(prefix.to_owned());
    loop {
        let page = records.page(collection, after.clone(), PAGE).await?;
        let full = page.len() == PAGE as usize;
        for (key, _) in page {
            if !key.starts_with(prefix) {
                return Ok(keys);
            }
            after = Some(key.clone());
            keys.push(key);
        }
        if !full {
            return Ok(keys);
        }
    }
}

/// Deletes one deployment's records, history entry and index entries in one transaction.
async fn delete_deployment(
    records: &Records,
    history: &str,
    entry: &HistoryEntry,
) -> Result<(), StoreError> {
    let id = &entry.deployment_id;
    let prefix = format!("{id}/");
    // The entry names only its first environments; the record names them all.
    let environments = match records
        .get::<DeploymentRecord>(collection::DEPLOYMENTS, id)
        .await?
    {
        Some(record) => record.environments,
        None => entry.environments.clone(),
    };
    let mut ops = crate::persist::history::deleted_ops(history, entry, &environments);
    ops.push(StoreOp::delete(collection::DEPLOYMENTS, id));
    ops.push(StoreOp::delete(collection::EVENT_SEQUENCES, id));
    for key in keys_with_prefix(records, collection::TARGETS, &prefix).await? {
        ops.push(StoreOp::delete(collection::TARGETS, &key));
    }
    for key in keys_with_prefix(records, collection::LOGS, &prefix).await? {
        ops.push(StoreOp::delete(collection::LOGS, &key));
    }
    records.apply(ops).await?;
    Ok(())
}

async fn prune_idempotency(records: &Records, now_ms: u64) -> Result<usize, StoreError> {
    let cutoff = now_ms.saturating_sub(IDEMPOTENCY_TTL.as_millis() as u64);
    let mut stale = Vec::new();
    let mut after = None;
    loop {
        let page = records
            .page(collection::IDEMPOTENCY, after.clone(), PAGE)
            .await?;
        let full = page.len() == PAGE as usize;
        for (key, text) in page {
            after = Some(key.clone());
            let created = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|value| value["created_ms"].as_u64())
                .unwrap_or(0);
            let started = !text.contains("\"state\":\"starting\"");
            if created < cutoff && started {
                stale.push(StoreOp::delete(collection::IDEMPOTENCY, &key));
            }
        }
        if !full {
            break;
        }
    }
    let count = stale.len();
    records.apply(stale).await?;
    Ok(count)
}
