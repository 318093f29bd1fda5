//! Membership: this host as one node among those that share its store. Each node keeps one
//! record in `cluster_nodes` (its id, the boot that holds the id, a heartbeat counter, its
//! state) and beats three times per `lease_secs`. Every node watches the others' records; one
//! whose counter has not moved for `lease_secs` *as this node's own clock measures it* is
//! marked `lost` in the store (a conditional write, so one observer does it), and the plugins
//! move its runs to the living nodes. Measuring on the observer's clock means no two nodes
//! need agreeing clocks: only the rate of each clock matters.
//!
//! Invariants:
//! - a node's record exists from before its plugins start until after they stopped, so a run
//!   recorded under a node always names a record, and a missing record means the node left;
//! - a node writes its own record only when it still names this boot: a second host started
//!   with the same `node_id` takes the record, and the first one stops, naming the id;
//! - `draining` survives heartbeats and ends with the process (a restart is active again).
//!
//! The number of runs each node holds is read from the running entries each plugin keeps in
//! the store (`<plugin>.active`, each naming the `node_id` of the node that runs it).

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use record_store::{Condition, Op, RecordStore, StoreError, Write};
use serde::{Deserialize, Serialize};
// The runtime's clock: tests pause it.
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use utoipa::ToSchema;

/// The collection of node records, keyed by node id.
pub const NODES: &str = "cluster_nodes";
/// The collection of a plugin's running entries: `{"node_id": …}` names the node that runs
/// each.
fn runs_of(plugin: &str) -> String {
    format!("{plugin}.active")
}
/// How often a node reads the others' records, at most.
const WATCH_PERIOD: Duration = Duration::from_millis(250);
/// Rows read per page of a collection.
const PAGE: u32 = 1000;

/// What a node is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum NodeState {
    /// It beats and claims runs.
    Active,
    /// It beats and finishes its runs, but claims no new ones.
    Draining,
    /// It stopped beating: its runs belong to the others now.
    Lost,
}

/// A node's record in the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub node_id: String,
    /// The host process that holds the id now.
    pub boot_id: String,
    /// Raised at every heartbeat.
    pub beat: u64,
    /// Wall-clock time of the last heartbeat, for people (nodes decide on their own clocks).
    pub heartbeat_at: String,
    pub state: NodeState,
    pub lease_secs: u64,
}

/// A node as `GET /api/cluster` shows it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct NodeView {
    pub node_id: String,
    pub state: NodeState,
    /// How long ago this node saw the node's heartbeat change (its own: its last heartbeat).
    pub heartbeat_age_ms: u64,
    /// Deployments running on it.
    pub runs: u64,
    /// Whether it is the node that answered.
    #[serde(rename = "self")]
    pub this: bool,
}

/// `GET /api/cluster`'s answer.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ClusterView {
    pub nodes: Vec<NodeView>,
}

/// Why a drain did not happen.
#[derive(Debug, thiserror::Error)]
pub enum DrainError {
    #[error("no node {0:?} in the cluster")]
    NotFound(String),
    #[error("node {0:?} is lost: its runs already move to the other nodes")]
    Lost(String),
    #[error("the store: {0}")]
    Store(String),
}

/// A record as this node last saw it, and when its heartbeat last changed by this node's clock.
struct Seen {
    record: NodeRecord,
    changed: Instant,
}

struct View {
    nodes: BTreeMap<String, Seen>,
    /// When this node's last heartbeat was stored.
    beat_stored: Instant,
}

/// This node's membership.
pub struct Membership {
    store: Arc<dyn RecordStore>,
    node_id: String,
    boot_id: String,
    lease: Duration,
    view: Mutex<View>,
}

fn now_text() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

fn encode(record: &NodeRecord) -> Result<String, String> {
    serde_json::to_string(record).map_err(|error| error.to_string())
}

/// Runs a store call on the blocking pool (each blocks on its file or server).
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, String> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|error| error.to_string())?
        .map_err(|error| error.to_string())
}

impl Membership {
    /// Writes this node's record (taking the id from a host that held it before: a restart
    /// after a crash, or a second host given the same id, which then stops).
    pub async fn join(
        store: Arc<dyn RecordStore>,
        node_id: String,
        boot_id: String,
        lease_secs: u64,
    ) -> Result<Arc<Membership>, String> {
        let record = NodeRecord {
            node_id: node_id.clone(),
            boot_id: boot_id.clone(),
            beat: 0,
            heartbeat_at: now_text(),
            state: NodeState::Active,
            lease_secs,
        };
        let text = encode(&record)?;
        let previous = {
            let store = Arc::clone(&store);
            let (key, value) = (node_id.clone(), text);
            blocking(move || {
                let previous = store.get(NODES, &key)?;
                store.put(NODES, &key, &value)?;
                Ok(previous)
            })
            .await
            .map_err(|error| format!("cannot record this node in the store: {error}"))?
        };
        if let Some(previous) =
            previous.and_then(|text| serde_json::from_str::<NodeRecord>(&text).ok())
        {
            if previous.state != NodeState::Lost {
                tracing::warn!(node = %node_id, "this node id was held by another host process until now; if that host still runs, it stops: give each host its own cluster.node_id");
            }
        }
        let now = Instant::now();
        let mut nodes = BTreeMap::new();
        nodes.insert(
            node_id.clone(),
            Seen {
                record,
                changed: now,
            },
        );
        tracing::info!(node = %node_id, lease_secs, "joined the cluster");
        Ok(Arc::new(Membership {
            store,
            node_id,
            boot_id,
            lease: Duration::from_secs(lease_secs),
            view: Mutex::new(View {
                nodes,
                beat_stored: now,
            }),
        }))
    }

    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// Beats until `stop`; cancels `lost_id` (the host stops) when another host took the id.
    /// It watches the others more often than it beats: a change is seen at most a watch period
    /// after it was stored, which is what a lost node's verdict waits on beyond the lease.
    pub async fn run(self: Arc<Self>, stop: CancellationToken, lost_id: CancellationToken) {
        let mut beats = tokio::time::interval(self.lease / 3);
        beats.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut watches = tokio::time::interval(WATCH_PERIOD.min(self.lease / 3));
        watches.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = beats.tick() => match self.beat().await {
                    Ok(true) => {}
                    Ok(false) => {
                        tracing::error!(node = %self.node_id, "another host took this node id: stopping; give each host its own cluster.node_id");
                        lost_id.cancel();
                        return;
                    }
                    Err(error) => {
                        tracing::warn!(node = %self.node_id, %error, "heartbeat not stored; retrying")
                    }
                },
                _ = watches.tick() => {
                    if let Err(error) = self.watch().await {
                        tracing::warn!(%error, "cannot read the other nodes' heartbeats; retrying");
                    }
                }
            }
        }
    }

    /// One heartbeat: `false` when the record names another boot (the id was taken).
    async fn beat(&self) -> Result<bool, String> {
        let store = Arc::clone(&self.store);
        let key = self.node_id.clone();
        let Some(text) = blocking(move || store.get(NODES, &key)).await? else {
            // Removed by hand: written again, it is ours.
            return self
                .write_beat(None, 1, NodeState::Active)
                .await
                .map(|_| true);
        };
        let record: NodeRecord = serde_json::from_str(&text)
            .map_err(|error| format!("this node's record does not read: {error}"))?;
        if record.boot_id != self.boot_id {
            return Ok(false);
        }
        let state = match record.state {
            NodeState::Lost => {
                tracing::warn!(node = %self.node_id, "the other nodes saw this node as lost (it did not beat for cluster.lease_secs): the runs they took over are theirs; active again");
                NodeState::Active
            }
            state => state,
        };
        self.write_beat(Some(text), record.beat + 1, state).await?;
        Ok(true)
    }

    async fn write_beat(
        &self,
        read: Option<String>,
        beat: u64,
        state: NodeState,
    ) -> Result<(), String> {
        let record = NodeRecord {
            node_id: self.node_id.clone(),
            boot_id: self.boot_id.clone(),
            beat,
            heartbeat_at: now_text(),
            state,
            lease_secs: self.lease.as_secs(),
        };
        if !self.replace(&self.node_id, read, encode(&record)?).await? {
            // Changed since it was read (a drain, a verdict): the next beat reads it again.
            return Ok(());
        }
        let now = Instant::now();
        let mut view = self.lock();
        view.beat_stored = now;
        view.nodes.insert(
            self.node_id.clone(),
            Seen {
                record,
                changed: now,
            },
        );
        Ok(())
    }

    /// Writes `text` as node `key`'s record if the record is still `read` (absent: `None`);
    /// false when it changed meanwhile.
    async fn replace(&self, key: &str, read: Option<String>, text: String) -> Result<bool, String> {
        self.replace_audited(key, read, text, None).await
    }

    /// [`Membership::replace`], with the audit entry of the call that asked for it in the
    /// same transaction.
    async fn replace_audited(
        &self,
        key: &str,
        read: Option<String>,
        text: String,
        audit: Option<record_store::AuditDraft>,
    ) -> Result<bool, String> {
        let store = Arc::clone(&self.store);
        let key = key.to_owned();
        let conflict = blocking(move || {
            let condition = match &read {
                Some(read) => Condition::Equals(read),
                None => Condition::Absent,
            };
            let ops = [Op {
                collection: NODES,
                key: &key,
                condition,
                write: Write::Put(&text),
            }];
            store.apply_audited(&ops, audit.as_slice())
        })
        .await?;
        Ok(conflict.is_none())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, View> {
        self.view
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Reads every node's record, and marks lost those whose heartbeat did not move for the
    /// lease.
    async fn watch(&self) -> Result<(), String> {
        let store = Arc::clone(&self.store);
        let rows = blocking(move || store.list(NODES, None, PAGE)).await?;
        let now = Instant::now();
        let mut verdicts = Vec::new();
        {
            let mut view = self.lock();
            let mut nodes = BTreeMap::new();
            for (key, text) in rows {
                let Ok(record) = serde_json::from_str::<NodeRecord>(&text) else {
                    tracing::warn!(node = %key, "a node record does not read; left as it is");
                    continue;
                };
                let changed = match view.nodes.remove(&key) {
                    Some(seen)
                        if seen.record.boot_id == record.boot_id
                            && seen.record.beat == record.beat =>
                    {
                        seen.changed
                    }
                    _ => now,
                };
                if key != self.node_id
                    && record.state != NodeState::Lost
                    && now.duration_since(changed) >= self.lease
                {
                    verdicts.push((key.clone(), text.clone(), record.clone()));
                }
                nodes.insert(key, Seen { record, changed });
            }
            view.nodes = nodes;
        }
        for (key, read, mut record) in verdicts {
            record.state = NodeState::Lost;
            if self.replace(&key, Some(read), encode(&record)?).await? {
                if let Some(seen) = self.lock().nodes.get_mut(&key) {
                    seen.record.state = NodeState::Lost;
                }
                tracing::warn!(node = %key, lease_secs = self.lease.as_secs(), "node lost: no heartbeat for the lease; its runs go to the other nodes");
            }
        }
        Ok(())
    }

    /// Removes this node's record at a clean stop, if it still names this boot.
    pub async fn leave(&self) {
        let store = Arc::clone(&self.store);
        let key = self.node_id.clone();
        let boot = self.boot_id.clone();
        let left = blocking(move || {
            let Some(text) = store.get(NODES, &key)? else {
                return Ok(());
            };
            let ours = serde_json::from_str::<NodeRecord>(&text)
                .is_ok_and(|record| record.boot_id == boot);
            if ours {
                store.apply(&[Op {
                    collection: NODES,
                    key: &key,
                    condition: Condition::Equals(&text),
                    write: Write::Delete,
                }])?;
            }
            Ok(())
        })
        .await;
        if let Err(error) = left {
            tracing::warn!(%error, "cannot remove this node's record; the others see it lost after the lease");
        }
    }

    /// Every node as this one sees it, with the runs each holds in `plugins`.
    pub async fn view(&self, plugins: &[String]) -> Result<ClusterView, String> {
        let store = Arc::clone(&self.store);
        let collections: Vec<String> = plugins.iter().map(|plugin| runs_of(plugin)).collect();
        let runs = blocking(move || {
            let mut runs: BTreeMap<String, u64> = BTreeMap::new();
            for collection in &collections {
                count_runs(&*store, collection, &mut runs)?;
            }
            Ok(runs)
        })
        .await?;
        let now = Instant::now();
        let view = self.lock();
        let nodes = view
            .nodes
            .iter()
            .map(|(id, seen)| {
                let this = *id == self.node_id;
                let since = if this { view.beat_stored } else { seen.changed };
                NodeView {
                    node_id: id.clone(),
                    state: seen.record.state,
                    heartbeat_age_ms: u64::try_from(now.duration_since(since).as_millis())
                        .unwrap_or(u64::MAX),
                    runs: runs.get(id).copied().unwrap_or(0),
                    this,
                }
            })
            .collect();
        Ok(ClusterView { nodes })
    }

    /// Marks a node draining: it finishes its runs and claims no new ones.
    /// Marks `node_id` draining; `audit` (the call's entry) is written with the change. `false`:
    /// it was draining already, nothing was written (the entry neither).
    pub async fn drain(
        &self,
        node_id: &str,
        audit: Option<record_store::AuditDraft>,
    ) -> Result<bool, DrainError> {
        for _ in 0..8 {
            let store = Arc::clone(&self.store);
            let key = node_id.to_owned();
            let read = blocking(move || store.get(NODES, &key))
                .await
                .map_err(DrainError::Store)?;
            let Some(read) = read else {
                return Err(DrainError::NotFound(node_id.to_owned()));
            };
            let mut record: NodeRecord = serde_json::from_str(&read)
                .map_err(|error| DrainError::Store(error.to_string()))?;
            match record.state {
                NodeState::Lost => return Err(DrainError::Lost(node_id.to_owned())),
                NodeState::Draining => return Ok(false),
                NodeState::Active => {}
            }
            record.state = NodeState::Draining;
            let text = encode(&record).map_err(DrainError::Store)?;
            let replaced = self
                .replace_audited(node_id, Some(read), text, audit.clone())
                .await
                .map_err(DrainError::Store)?;
            if replaced {
                let changed = Instant::now();
                let mut view = self.lock();
                let seen = view.nodes.entry(node_id.to_owned()).or_insert(Seen {
                    record: record.clone(),
                    changed,
                });
                seen.record = record;
                drop(view);
                tracing::info!(node = %node_id, "node draining: it claims no new runs");
                return Ok(true);
            }
            // A heartbeat came between the read and the write: read it again.
        }
        Err(DrainError::Store(format!(
            "node {node_id:?}'s record kept changing; try again"
        )))
    }
}

/// Adds the runs of each node that `collection`'s running entries name.
fn count_runs(
    store: &dyn RecordStore,
    collection: &str,
    runs: &mut BTreeMap<String, u64>,
) -> Result<(), StoreError> {
    #[derive(Deserialize)]
    struct Running {
        node_id: Option<String>,
    }
    let mut after: Option<String> = None;
    loop {
        let rows = store.list(collection, after.as_deref(), PAGE)?;
        let full = rows.len() == PAGE as usize;
        for (key, text) in rows {
            after = Some(key);
            if let Some(node) = serde_json::from_str::<Running>(&text)
                .ok()
                .and_then(|running| running.node_id)
            {
                *runs.entry(node).or_default() += 1;
            }
        }
        if !full {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use record_store::MemoryStore;

    fn store() -> Arc<dyn RecordStore> {
        Arc::new(MemoryStore::new())
    }

    async fn record(store: &Arc<dyn RecordStore>, id: &str) -> NodeRecord {
        let text = store.get(NODES, id).unwrap().unwrap();
        serde_json::from_str(&text).unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_node_is_marked_lost_after_the_lease_on_the_watchers_clock() {
        let store = store();
        let a = Membership::join(Arc::clone(&store), "a".into(), "boot-a".into(), 3)
            .await
            .unwrap();
        let b = Membership::join(Arc::clone(&store), "b".into(), "boot-b".into(), 3)
            .await
            .unwrap();
        // Both beat for a while: neither is lost.
        for _ in 0..6 {
            a.beat().await.unwrap();
            b.beat().await.unwrap();
            a.watch().await.unwrap();
            tokio::time::advance(Duration::from_secs(1)).await;
        }
        assert_eq!(record(&store, "b").await.state, NodeState::Active);
        // b goes silent after one last beat: a's verdict comes once three seconds passed on a's
        // clock since a saw it, not before.
        b.beat().await.unwrap();
        a.watch().await.unwrap();
        tokio::time::advance(Duration::from_millis(2900)).await;
        a.beat().await.unwrap();
        a.watch().await.unwrap();
        assert_eq!(record(&store, "b").await.state, NodeState::Active);
        tokio::time::advance(Duration::from_millis(200)).await;
        a.watch().await.unwrap();
        assert_eq!(record(&store, "b").await.state, NodeState::Lost);
        let view = a.view(&[]).await.unwrap();
        let b_view = view.nodes.iter().find(|node| node.node_id == "b").unwrap();
        assert_eq!(b_view.state, NodeState::Lost);
        assert!(b_view.heartbeat_age_ms >= 3000);
        // b wakes: it is active again, and never marks itself lost.
        assert!(b.beat().await.unwrap());
        assert_eq!(record(&store, "b").await.state, NodeState::Active);
    }

    #[tokio::test]
    async fn a_second_host_with_the_same_id_takes_it_and_the_first_learns_it() {
        let store = store();
        let first = Membership::join(Arc::clone(&store), "n".into(), "boot-1".into(), 3)
            .await
            .unwrap();
        let second = Membership::join(Arc::clone(&store), "n".into(), "boot-2".into(), 3)
            .await
            .unwrap();
        assert!(!first.beat().await.unwrap());
        assert!(second.beat().await.unwrap());
        // The first one leaving does not remove the second's record.
        first.leave().await;
        assert_eq!(record(&store, "n").await.boot_id, "boot-2");
        second.leave().await;
        assert!(store.get(NODES, "n").unwrap().is_none());
    }

    #[tokio::test]
    async fn a_drain_survives_heartbeats_and_names_unknown_or_lost_nodes() {
        let store = store();
        let a = Membership::join(Arc::clone(&store), "a".into(), "boot-a".into(), 3)
            .await
            .unwrap();
        a.drain("a", None).await.unwrap();
        a.beat().await.unwrap();
        a.beat().await.unwrap();
        let stored = record(&store, "a").await;
        assert_eq!((stored.state, stored.beat), (NodeState::Draining, 2));
        assert!(matches!(
            a.drain("nowhere", None).await,
            Err(DrainError::NotFound(_))
        ));
        let mut lost = stored.clone();
        lost.node_id = "gone".into();
        lost.state = NodeState::Lost;
        store
            .put(NODES, "gone", &serde_json::to_string(&lost).unwrap())
            .unwrap();
        assert!(matches!(
            a.drain("gone", None).await,
            Err(DrainError::Lost(_))
        ));
        // Runs are counted by the node the running entries name.
        let runs = runs_of("plugin");
        store
            .put(&runs, "d1", r#"{"boot_id":"x","node_id":"a"}"#)
            .unwrap();
        store.put(&runs, "d2", r#"{"boot_id":"x"}"#).unwrap();
        a.watch().await.unwrap();
        let view = a.view(&["plugin".to_owned()]).await.unwrap();
        let mine = view.nodes.iter().find(|node| node.this).unwrap();
        assert_eq!((mine.node_id.as_str(), mine.runs), ("a", 1));
        assert_eq!(view.nodes.len(), 2);
    }
}
