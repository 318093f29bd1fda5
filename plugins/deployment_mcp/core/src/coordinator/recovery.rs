//! Recovery: runs whose process is gone are ended `interrupted` with everything recorded until
//! then, and what they held (running entries, claims) is freed. Deployments parked at a gate
//! have no run to lose and are left as they are.
//!
//! Two ways a run loses its process: this node's host (or the plugin's process) died while it
//! ran, found at the next start ([`Coordinator::recover`]); or another node sharing the store
//! was lost, left or started again, found by every node's watch
//! ([`Coordinator::recover_lost_nodes`]). Each ending is one transaction that holds only if
//! the record (and, for another node's run, its running entry) is still what was read, so two
//! nodes watching end a run once.

use std::{collections::HashSet, sync::Arc, time::SystemTime};

use tokio_util::sync::CancellationToken;

use super::Coordinator;
use crate::{
    deployment::{DeploymentRecord, Phase, TargetStatus},
    model::{DeploymentId, LogStream, Timestamp},
    persist::{self, records::StoreError, Lease, Outcome, Writes},
};

/// How often a copy looks for runs of nodes that are gone. A node is seen lost `lease_secs`
/// after its last heartbeat (plus a third of it, the watchers' period); this adds at most half
/// a second to the `lease_secs + 2 s` within which its runs are dealt with.
const LOST_NODE_WATCH: std::time::Duration = std::time::Duration::from_millis(500);

impl Coordinator {
    /// Marks runs of boots that are gone as interrupted: the host (or the plugin's process)
    /// died while they ran. Runs of this boot belong to a sibling copy (hot swap), and runs of
    /// a boot in `live_boots` to another process the host says is alive (an older one still
    /// finishing after a swap): both are left alone. The unfinished deployments are found
    /// through the status index, not by reading the whole history; each is closed in one
    /// transaction that holds only if its record is still what was read.
    pub async fn recover(&self, live_boots: &[String]) -> Result<usize, StoreError> {
        let alive = |boot: &str| boot == self.boot_id || live_boots.iter().any(|live| live == boot);
        let mut recovered = 0;
        let unfinished = crate::persist::history::History::new(self.records.clone())
            .unfinished()
            .await?;
        // A deployment waiting at its gate has no run to lose: it keeps waiting, with its
        // claims, until someone decides it (or its deadline passes).
        let parked: HashSet<String> = unfinished
            .iter()
            .filter(|(_, entry)| entry.status == Phase::AwaitingApproval)
            .map(|(_, entry)| entry.deployment_id.to_string())
            .collect();
        // Runs of other nodes are theirs, or (their node gone) the watch's.
        let elsewhere: HashSet<String> = persist::runs::running_entries(&self.records)
            .await?
            .into_iter()
            .filter(|(_, _, entry)| persist::runs::run_elsewhere(entry, self.node()))
            .map(|(id, _, _)| id)
            .collect();
        for (_, entry) in unfinished {
            if parked.contains(entry.deployment_id.as_str())
                || elsewhere.contains(entry.deployment_id.as_str())
            {
                continue;
            }
            // An unreadable record is left as it is; the others are still recovered.
            let (text, mut record) = match self
                .deployments()
                .read_for_update(&entry.deployment_id)
                .await
            {
                Ok(Some(read)) => read,
                Ok(None) | Err(StoreError::Decode { .. }) => continue,
                Err(error) => return Err(error),
            };
            if alive(&record.boot_id)
                || record.status.is_terminal()
                || record.status == Phase::AwaitingApproval
            {
                continue;
            }
            let phase = record.status;
            // Written under the lease of the process that died: the claims it held are its.
            let lease = Lease::of(&record.boot_id, None);
            let mut writes = Writes::new(&self.records, &lease);
            let message = format!(
                "interrupted: the host stopped during phase {}; everything recorded until then is kept",
                phase.as_str()
            );
            self.interrupt(&mut writes, &text, &mut record, message)
                .await?;
            // A conflict: the record changed since it was read (another copy ended it).
            if writes.commit().await? == Outcome::Committed {
                recovered += 1;
            }
        }
        // Running entries and claims of runs that died with an earlier boot free their
        // environments.
        persist::runs::forget_dead_runs(&self.records, alive, &parked, &elsewhere).await?;
        Ok(recovered)
    }

    /// Watches for runs of nodes that are gone, every [`LOST_NODE_WATCH`], until `stop`.
    pub(super) async fn lost_node_loop(self: Arc<Self>, stop: CancellationToken) {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(LOST_NODE_WATCH) => {}
            }
            if let Err(error) = self.recover_lost_nodes().await {
                tracing::warn!(%error, "cannot look for the runs of lost nodes; trying again");
            }
        }
    }

    /// Notes whether this node drains, and ends the runs of nodes that are gone (seen lost,
    /// started again as another process, or left without ending them): each in one transaction that holds only while its running
    /// entry is the one the gone node was given, and publishes the new phase. Returns how many
    /// were ended.
    pub async fn recover_lost_nodes(&self) -> Result<usize, StoreError> {
        let Some(me) = self.node() else {
            return Ok(0);
        };
        let mut recovered = 0;
        let seen = persist::runs::look_at_nodes(&self.records, me).await?;
        self.draining
            .store(seen.draining, std::sync::atomic::Ordering::Relaxed);
        for (id, entry_text, entry) in seen.orphaned {
            let Ok(id) = DeploymentId::parse(&id) else {
                continue;
            };
            let (text, mut record) = match self.deployments().read_for_update(&id).await {
                Ok(Some(read)) => read,
                Ok(None) | Err(StoreError::Decode { .. }) => continue,
                Err(error) => return Err(error),
            };
            // A parked deployment waits at its gate on any node; an ended one is released by
            // the recovery at that node's next start, or here once its entry is alone.
            if record.status == Phase::AwaitingApproval {
                continue;
            }
            let node = entry.node_id.as_deref().unwrap_or_default();
            let lease = Lease::of(&entry.boot_id, None);
            let mut writes = Writes::new(&self.records, &lease);
            writes.entry_unchanged(&id, &entry_text);
            let phase = record.status;
            let published = self.deployments().events_published(&id).await?;
            if !phase.is_terminal() {
                let message = format!(
                    "interrupted: node {node}, which ran it, stopped during phase {}; everything recorded until then is kept",
                    phase.as_str()
                );
                self.interrupt(&mut writes, &text, &mut record, message)
                    .await?;
                writes.events_published(&id, published + 1)?;
            }
            let held = persist::runs::claims_held(&self.records, &id, &entry.boot_id).await?;
            writes.release_claims(&id, &held, &entry.boot_id)?;
            writes.not_running(&id);
            if writes.commit().await? != Outcome::Committed {
                // Another node ended it first, or something changed: the next watch looks again.
                continue;
            }
            if !phase.is_terminal() {
                tracing::warn!(deployment = %id, node, "the node that ran this deployment is gone: interrupted");
                self.changed();
                self.publish_phase(published + 1, &record, Some(phase));
                recovered += 1;
            }
        }
        Ok(recovered)
    }

    /// The writes that end `record` (read as `text`) interrupted: its unfinished environments
    /// cancelled, a log line with `message`, the record and its history.
    async fn interrupt(
        &self,
        writes: &mut Writes,
        text: &str,
        record: &mut DeploymentRecord,
        message: String,
    ) -> Result<(), StoreError> {
        let now = SystemTime::now();
        let phase = record.status;
        let mut failed = Vec::new();
        for mut target in self.deployments().targets(&record.deployment_id).await? {
            if !target.status.is_terminal() {
                target.error = Some(format!(
                    "the host stopped while this environment was {}",
                    target.status.as_str()
                ));
                target.status = TargetStatus::Cancelled;
                target.finished_at = Some(Timestamp::from(now));
                writes.target(&record.deployment_id, &target)?;
            }
            if target.status != TargetStatus::Succeeded {
                failed.push(target.environment_id.clone());
            }
        }
        self.log_line(writes, record, LogStream::Error, &message)
            .await?;
        record.status = Phase::Interrupted;
        record.errors.push(message);
        record.finished_at = Some(Timestamp::from(now));
        writes.moved(record, phase, &failed, Some(text))?;
        Ok(())
    }
}
