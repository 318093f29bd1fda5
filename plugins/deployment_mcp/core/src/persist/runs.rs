//! The transactions around a run that are not one of its batches: releasing what it held when
//! it ends, a cancel request for a run another copy owns, and the clean-up of runs whose
//! process is gone. Plus the two small records of the plugin and its host it reads at start.

use std::collections::{HashMap, HashSet};

use plugin_guest::{Condition, StoreOp};
use serde::{Deserialize, Serialize};

use super::{
    deployments::ActiveEntry,
    records::{collection, decode, encode, Records, StoreError},
    writes::{claim_text, Lease, NodeTag},
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
    let mut ops = lease.fence();
    let fenced = ops.len();
    ops.extend(environments.iter().map(|environment| {
        StoreOp::delete(collection::CLAIMS, environment).when(Condition::Equals(claim.clone()))
    }));
    ops.push(StoreOp::delete(collection::ACTIVE, deployment_id));
    ops.push(StoreOp::delete(collection::CANCEL, deployment_id));
    // Each conflict drops one claim that is not ours; the rest are released.
    for _ in 0..=environments.len() {
        match records.apply(ops.clone()).await? {
            None => return Ok(()),
            Some(conflict) if conflict.index < fenced => {
                tracing::warn!(deployment = %deployment_id, "another node took this run over: what it holds is that node's to release");
                return Ok(());
            }
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

/// Every running entry, with its text (the lease its run was given), by deployment id.
pub(crate) async fn running_entries(
    records: &Records,
) -> Result<Vec<(String, String, ActiveEntry)>, StoreError> {
    let mut entries = Vec::new();
    for (id, text) in records.rows(collection::ACTIVE).await? {
        match decode::<ActiveEntry>(collection::ACTIVE, &id, &text) {
            Ok(entry) => entries.push((id, text, entry)),
            Err(error) => tracing::warn!(%error, "a running entry does not read; left as it is"),
        }
    }
    Ok(entries)
}

/// The deployments a node other than `node` runs (by their running entries), and those queued
/// (nobody's run yet): this node's recovery leaves them to the nodes that watch it and to the
/// queue.
pub(crate) fn run_elsewhere(entry: &ActiveEntry, node: Option<&NodeTag>) -> bool {
    if entry.queued {
        return true;
    }
    match (&entry.node_id, node) {
        (Some(runs_on), Some(node)) => *runs_on != node.node_id,
        // On a host with no nodes, or an entry of an earlier release: this node's.
        _ => false,
    }
}

/// The queued deployments (their running entries, with their text), oldest first.
pub(crate) async fn queued_entries(
    records: &Records,
) -> Result<Vec<(String, String, ActiveEntry)>, StoreError> {
    let mut queued = running_entries(records).await?;
    queued.retain(|(_, _, entry)| entry.queued);
    // History keys sort newest first.
    queued.sort_by(|a, b| b.2.history_key.cmp(&a.2.history_key));
    Ok(queued)
}

/// Deployment `id`'s running entry: its text and what it says.
pub(crate) async fn entry_of(
    records: &Records,
    id: &DeploymentId,
) -> Result<Option<(String, ActiveEntry)>, StoreError> {
    let Some(text) = records.get_raw(collection::ACTIVE, id).await? else {
        return Ok(None);
    };
    let entry = decode::<ActiveEntry>(collection::ACTIVE, id, &text)?;
    Ok(Some((text, entry)))
}

/// Deployment `id`'s running entry if it is queued.
pub(crate) async fn queued_entry(
    records: &Records,
    id: &DeploymentId,
) -> Result<Option<(String, ActiveEntry)>, StoreError> {
    Ok(entry_of(records, id)
        .await?
        .filter(|(_, entry)| entry.queued))
}

/// A node's record as the host keeps it (`cluster_nodes`), as far as runs care: which host
/// process holds the id now, and whether the other nodes saw it lost.
#[derive(Debug, Deserialize)]
struct NodeSeen {
    boot_id: String,
    state: String,
}

/// What a look at the nodes found.
pub(crate) struct NodesSeen {
    /// The running entries whose node is gone (seen lost by the others, started again as
    /// another process, or left): their runs have no process any more. Runs of `me` as it is
    /// now are never among them, even while the others see it lost: the others take those.
    pub orphaned: Vec<(String, String, ActiveEntry)>,
    /// Whether `me` drains.
    pub draining: bool,
}

/// Looks at the nodes' records and the running entries.
pub(crate) async fn look_at_nodes(
    records: &Records,
    me: &NodeTag,
) -> Result<NodesSeen, StoreError> {
    let nodes: HashMap<String, NodeSeen> = records
        .rows(collection::CLUSTER_NODES)
        .await?
        .into_iter()
        .filter_map(|(id, text)| Some((id, serde_json::from_str::<NodeSeen>(&text).ok()?)))
        .collect();
    let mut orphaned = running_entries(records).await?;
    orphaned.retain(|(_, _, entry)| {
        let Some(node_id) = &entry.node_id else {
            return false;
        };
        if *node_id == me.node_id && entry.node_boot.as_deref() == Some(me.node_boot.as_str()) {
            return false;
        }
        match nodes.get(node_id) {
            None => true,
            Some(node) => {
                node.state == "lost" || entry.node_boot.as_deref() != Some(node.boot_id.as_str())
            }
        }
    });
    let draining = nodes
        .get(&me.node_id)
        .is_some_and(|node| node.state == "draining" && node.boot_id == me.node_boot);
    Ok(NodesSeen { orphaned, draining })
}

/// The environments whose claim `holder` holds for the deployment (one pass over the claims).
pub(crate) async fn claims_held(
    records: &Records,
    deployment_id: &DeploymentId,
    holder: &str,
) -> Result<Vec<EnvironmentId>, StoreError> {
    let claim = claim_text(deployment_id, holder)?;
    Ok(records
        .rows(collection::CLAIMS)
        .await?
        .into_iter()
        .filter(|(_, text)| *text == claim)
        .filter_map(|(environment, _)| EnvironmentId::parse(&environment).ok())
        .collect())
}

/// Forgets the running entries and claims of processes that are gone: `alive` says which
/// processes (boots) still run theirs, deployments in `parked` keep their entries (they wait at
/// a gate, with no process), and entries of runs on other nodes and of queued deployments are
/// left to the nodes that watch and to the queue (as each entry says when it is read: another
/// node may admit or take a deployment meanwhile). An entry goes only if it is still what was
/// read; a claim goes only if it is still what was read and its deployment has no entry, so a
/// deployment admitted anywhere meanwhile keeps its claims.
pub async fn forget_dead_runs(
    records: &Records,
    alive: impl Fn(&str) -> bool,
    parked: &HashSet<String>,
    node: Option<&NodeTag>,
) -> Result<(), StoreError> {
    for (id, text, entry) in running_entries(records).await? {
        if alive(&entry.boot_id) || parked.contains(&id) || run_elsewhere(&entry, node) {
            continue;
        }
        let ops = vec![
            StoreOp::delete(collection::ACTIVE, &id).when(Condition::Equals(text)),
            StoreOp::delete(collection::CANCEL, &id),
        ];
        // A conflict: the entry changed since it was read (taken, or started again).
        records.apply(ops).await?;
    }
    for (environment, text) in records.rows(collection::CLAIMS).await? {
        let claim = serde_json::from_str::<Claim>(&text).ok();
        let mut ops = Vec::new();
        match claim {
            Some(claim) if alive(&claim.boot_id) => continue,
            Some(claim) => ops.push(StoreOp::check(
                collection::ACTIVE,
                claim.deployment_id.as_str(),
                Condition::Absent,
            )),
            None => {}
        }
        ops.push(StoreOp::delete(collection::CLAIMS, &environment).when(Condition::Equals(text)));
        // A conflict: the claim changed, or its deployment runs, waits or is queued.
        records.apply(ops).await?;
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

/// A periodic job's turn, in [`collection::META`] under `turn:<job>`: when the job is next due
/// (ms since the epoch), and the node that took the last turn.
#[derive(Debug, Serialize, Deserialize)]
struct Turn {
    due_ms: u64,
    node: String,
}

/// Whether `node` takes `job`'s turn at `now_ms`: no node took it within the last `period`
/// (the stored due time has passed), and this node's write of the next due time won, being
/// conditional on the record as read. Nodes that share the store thus run a periodic job once
/// per period between them, whoever wakes first.
pub async fn take_turn(
    records: &Records,
    job: &str,
    period: std::time::Duration,
    now_ms: u64,
    node: &str,
) -> Result<bool, StoreError> {
    let key = format!("turn:{job}");
    let current = records.get_raw(collection::META, &key).await?;
    if let Some(text) = &current {
        // One that does not read is replaced.
        let due = decode::<Turn>(collection::META, &key, text).map(|turn| turn.due_ms);
        if due.is_ok_and(|due_ms| due_ms > now_ms) {
            return Ok(false);
        }
    }
    let next = Turn {
        due_ms: now_ms.saturating_add(period.as_millis() as u64),
        node: node.to_owned(),
    };
    let condition = match current {
        Some(text) => Condition::Equals(text),
        None => Condition::Absent,
    };
    let put = StoreOp::put(
        collection::META,
        &key,
        encode(collection::META, &key, &next)?,
    );
    Ok(records.apply(vec![put.when(condition)]).await?.is_none())
}

/// The host's `host/lifecycle` record, which the host writes at each start.
pub async fn host_lifecycle(records: &Records) -> Option<crate::HostLifecycle> {
    records
        .get(collection::HOST, collection::HOST_LIFECYCLE)
        .await
        .ok()
        .flatten()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use plugin_local_host::LocalHost;

    use super::*;

    #[tokio::test]
    async fn one_node_takes_each_turn_of_a_periodic_job() {
        let host = LocalHost::in_memory().expect("an in-memory host");
        let records = Records::new(host.host.clone());
        let hour = Duration::from_secs(3600);
        let (a, b) = (
            take_turn(&records, "retention", hour, 1_000, "a"),
            take_turn(&records, "retention", hour, 1_000, "b"),
        );
        let (a, b) = tokio::join!(a, b);
        let taken = [a.expect("a's try"), b.expect("b's try")];
        assert_eq!(taken.iter().filter(|taken| **taken).count(), 1, "{taken:?}");
        // Within the period, nobody; once it has passed, the first node that asks.
        assert!(!take_turn(&records, "retention", hour, 3_000_000, "b")
            .await
            .expect("b"));
        assert!(take_turn(&records, "retention", hour, 3_601_000, "b")
            .await
            .expect("b"));
        assert!(!take_turn(&records, "retention", hour, 3_601_000, "a")
            .await
            .expect("a"));
        // Another job has turns of its own.
        assert!(take_turn(&records, "gates", hour, 3_601_000, "a")
            .await
            .expect("a"));
    }

    #[tokio::test]
    async fn the_clean_up_of_dead_processes_keeps_what_runs_elsewhere_or_is_queued() {
        let host = LocalHost::in_memory().expect("an in-memory host");
        let records = Records::new(host.host.clone());
        let put = |collection: &'static str, key: &str, value: String| {
            let records = records.clone();
            let key = key.to_owned();
            async move {
                records
                    .apply(vec![StoreOp::put(collection, &key, value)])
                    .await
                    .expect("stored");
            }
        };
        let entry = |value: serde_json::Value| value.to_string();
        // Queued by a process that is gone; run by node b; run by this node's earlier process.
        let cases = [
            (
                "q-env",
                r#"{"boot_id":"gone","queued":true,"epoch":0}"#,
                "gone",
            ),
            (
                "b-env",
                r#"{"boot_id":"b-boot","node_id":"b","node_boot":"b-boot","epoch":1}"#,
                "b-boot",
            ),
            (
                "a-env",
                r#"{"boot_id":"gone","node_id":"a","node_boot":"a-old","epoch":1}"#,
                "gone",
            ),
        ];
        let mut ids = Vec::new();
        for (n, (environment, active, holder)) in cases.iter().enumerate() {
            let id = DeploymentId::generate(1_000 + n as u64);
            let active: serde_json::Value = serde_json::from_str(active).expect("json");
            put(collection::ACTIVE, &id, entry(active)).await;
            put(
                collection::CLAIMS,
                environment,
                claim_text(&id, holder).expect("a claim"),
            )
            .await;
            ids.push(id);
        }
        let me = NodeTag {
            node_id: "a".into(),
            node_boot: "a-new".into(),
        };
        forget_dead_runs(&records, |boot| boot == "new", &HashSet::new(), Some(&me))
            .await
            .expect("cleaned");
        let kept = |collection: &'static str, key: &str| {
            let records = records.clone();
            let key = key.to_owned();
            async move {
                records
                    .get_raw(collection, &key)
                    .await
                    .expect("read")
                    .is_some()
            }
        };
        assert!(kept(collection::ACTIVE, &ids[0]).await, "the queue is kept");
        assert!(kept(collection::CLAIMS, "q-env").await);
        assert!(
            kept(collection::ACTIVE, &ids[1]).await,
            "node b's run is b's"
        );
        assert!(kept(collection::CLAIMS, "b-env").await);
        assert!(
            !kept(collection::ACTIVE, &ids[2]).await,
            "this node's dead run goes"
        );
        assert!(!kept(collection::CLAIMS, "a-env").await);
    }
}
