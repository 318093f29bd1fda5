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

use super::{Coordinator, RunFrom};
use crate::{
    deployment::{DeploymentRecord, Phase, TargetStatus},
    environments::ConnectionMethod,
    model::{DeploymentId, Ec2Phase, EnvironmentId, LogStream, Timestamp},
    persist::{
        self, deployments::ActiveEntry, records::StoreError, Lease, NodeTag, Outcome, Writes,
    },
    run::Start,
    wire::{self, Event, TakeoverEvent},
};

/// A run whose node is gone, as found.
#[derive(Clone, Copy)]
struct Lost<'a> {
    id: &'a DeploymentId,
    /// Its running entry as read: the lease of the node that lost it.
    entry_text: &'a str,
    entry: &'a ActiveEntry,
    /// Its record as read.
    text: &'a str,
    /// The node that ran it.
    from: &'a str,
}

/// Phases a run is continued from on another node: before its EC2 phase ended, its batches and
/// their verification (a gate that was baking bakes again). A rollback in progress is ended
/// interrupted instead: which environments it had returned is not known well enough to run it
/// again.
fn resumable(phase: Phase) -> bool {
    matches!(
        phase,
        Phase::Pending
            | Phase::Ec2Deploying
            | Phase::Ec2Completed
            | Phase::LocalTriggering
            | Phase::LocalDeploying
            | Phase::LocalCompleted
            | Phase::Verifying
            | Phase::AwaitingWindow
    )
}

/// Environment ids for a log line.
fn listed(ids: &[EnvironmentId]) -> String {
    if ids.is_empty() {
        return "none".into();
    }
    ids.iter()
        .map(|id| id.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

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
        persist::runs::forget_dead_runs(&self.records, alive, &parked, self.node()).await?;
        Ok(recovered)
    }

    /// Notes whether this node drains, and deals with the runs of nodes that are gone (seen
    /// lost, started again as another process, or left without ending them): this node takes
    /// each over and runs the rest of it ([`Coordinator::take_over`]), or, for a rollback in
    /// progress, ends it interrupted. Each in one transaction that holds only while its running
    /// entry is the one the gone node was given, so one node does it. Returns how many runs
    /// were taken over or ended.
    pub async fn recover_lost_nodes(self: &Arc<Self>) -> Result<usize, StoreError> {
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
            let (text, record) = match self.deployments().read_for_update(&id).await {
                Ok(Some(read)) => read,
                Ok(None) | Err(StoreError::Decode { .. }) => continue,
                Err(error) => return Err(error),
            };
            // A parked deployment waits at its gate on any node.
            if record.status == Phase::AwaitingApproval {
                continue;
            }
            let lost = Lost {
                id: &id,
                entry_text: &entry_text,
                entry: &entry,
                text: &text,
                from: entry.node_id.as_deref().unwrap_or_default(),
            };
            let done = if resumable(record.status) {
                self.take_over(lost, record, me).await?
            } else {
                self.end_lost_run(lost, record).await?
            };
            recovered += usize::from(done);
        }
        Ok(recovered)
    }

    /// Takes over the run of a lost node and runs the rest of it here: its claims and running
    /// entry move to this process under the next epoch, finished environments keep their
    /// results, those in flight are sent again (`http_api`, `webhook`: their receivers know
    /// the request by its `Idempotency-Key`) or marked `interrupted` (`ssh`, `local`: a command
    /// may have run in part), a log line and `deployment.takeover` say so. False when another
    /// node (or a change) came first.
    async fn take_over(
        self: &Arc<Self>,
        lost: Lost<'_>,
        mut record: DeploymentRecord,
        me: &NodeTag,
    ) -> Result<bool, StoreError> {
        let Lost { id, from, .. } = lost;
        let phase = record.status;
        let mut results = self.results_of(id).await?;
        let environments = self.environments_of(&record.environments).await?;
        let published = self.deployments().events_published(id).await?;
        let mut writes = Writes::new(&self.records, &self.lease());
        writes.entry_unchanged(id, lost.entry_text);
        let held = persist::runs::claims_held(&self.records, id, &lost.entry.boot_id).await?;
        writes.take_claims(id, &held, &lost.entry.boot_id)?;
        let now = Timestamp::now();
        let (mut resent, mut interrupted) = (Vec::new(), Vec::new());
        for target in results.values_mut() {
            if !matches!(
                target.status,
                TargetStatus::Triggering | TargetStatus::Running
            ) {
                continue;
            }
            if ConnectionMethod::parse(&target.connection_method)
                .is_some_and(ConnectionMethod::resendable)
            {
                target.status = TargetStatus::Pending;
                resent.push(target.environment_id.clone());
            } else {
                target.status = TargetStatus::Interrupted;
                target.error = Some(format!(
                    "node {from} was lost while this ran over {}: not sent again, as it may have run in part",
                    target.connection_method
                ));
                target.finished_at = Some(now);
                interrupted.push(target.environment_id.clone());
            }
            writes.target(id, target)?;
        }
        resent.sort();
        interrupted.sort();
        record.boot_id = self.boot_id.clone();
        let why = format!(
            "node {} took over from node {from}, which was lost during phase {}: finished environments keep their results; sent again: {}; interrupted: {}",
            me.node_id,
            phase.as_str(),
            listed(&resent),
            listed(&interrupted)
        );
        let (log, lease) = self
            .run_here(&mut writes, lost.text, phase, &mut record, &why)
            .await?;
        writes.events_published(id, published + 1)?;
        writes.took_over(&record, from, &me.node_id);
        if writes.commit().await? != Outcome::Committed {
            return Ok(false);
        }
        tracing::warn!(deployment = %id, from, "took over the deployment of a lost node");
        self.changed();
        let event = Event::Takeover(TakeoverEvent {
            deployment_id: id.clone(),
            from_node: from.to_owned(),
            to_node: me.node_id.clone(),
            epoch: lease.epoch(),
            resent,
            interrupted,
        });
        wire::publish(
            self.records.host(),
            Some(published + 1),
            &event,
            Some(&event),
        );
        // An EC2 phase the lost node had not finished runs again (starting instances that
        // run already changes nothing).
        let ec2 = match record.ec2 {
            Ec2Phase::Pending => self.settings.ec2.clone(),
            _ => None,
        };
        let from = RunFrom {
            log,
            events: published + 1,
            lease,
        };
        self.spawn_run(record, environments, results, ec2, from, Start::Resume);
        Ok(true)
    }

    /// Ends the run of a lost node interrupted (or, ended already, releases what it held).
    async fn end_lost_run(
        &self,
        lost: Lost<'_>,
        mut record: DeploymentRecord,
    ) -> Result<bool, StoreError> {
        let Lost { id, from, .. } = lost;
        let lease = Lease::of(&lost.entry.boot_id, None);
        let mut writes = Writes::new(&self.records, &lease);
        writes.entry_unchanged(id, lost.entry_text);
        let phase = record.status;
        let published = self.deployments().events_published(id).await?;
        if !phase.is_terminal() {
            let message = format!(
                "interrupted: node {from}, which ran it, stopped during phase {}; everything recorded until then is kept",
                phase.as_str()
            );
            self.interrupt(&mut writes, lost.text, &mut record, message)
                .await?;
            writes.events_published(id, published + 1)?;
        }
        let held = persist::runs::claims_held(&self.records, id, &lost.entry.boot_id).await?;
        writes.release_claims(id, &held, &lost.entry.boot_id)?;
        writes.not_running(id);
        // A conflict: another node dealt with it first, or something changed; the next watch
        // looks again.
        if writes.commit().await? != Outcome::Committed || phase.is_terminal() {
            return Ok(false);
        }
        tracing::warn!(deployment = %id, from, "the node that ran this deployment is gone: interrupted");
        self.changed();
        self.publish_phase(published + 1, &record, Some(phase));
        Ok(true)
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
