//! Admission and the queue: a deployment is admitted in one transaction (its claims, its first
//! records, its running entry), and starts at once on the node that admitted it unless that
//! node drains or already runs `max_running_deployments`. Then it is *queued*: its entry names no node,
//! and the first node with room (this one, or another on the same store) starts it, oldest
//! first, with one transaction conditional on the queued entry, so one node does.
//!
//! A queued deployment is nobody's run: recovery leaves it alone, and a cancel ends it at once
//! (conditional on the same entry, so a cancel and a start cannot both happen). Every copy
//! looks at the queue, and at the nodes, every [`WATCH`], and at the queue again as soon as one
//! of its runs ends.

use std::{sync::Arc, time::SystemTime};

use plugin_guest::StoreOp;

use tokio_util::sync::CancellationToken;

use super::{Coordinator, RunFrom};
use crate::{
    deployment::{BatchStatus, DeploymentRecord, Phase, TargetRecord, TargetStatus},
    environments::{Environment, FieldError},
    model::{DeploymentId, Ec2Phase, LogStream, Timestamp},
    persist::{self, deployments::ActiveEntry, records::StoreError, Lease, Outcome, Writes},
    run::Start,
};

/// How often a copy looks at the queue and at the nodes. A node is seen lost `lease_secs`
/// after its last heartbeat (plus a third of it, the watchers' period); this adds at most half
/// a second to the `lease_secs + 2 s` within which its runs are dealt with.
const WATCH: std::time::Duration = std::time::Duration::from_millis(500);

/// Why a deployment did not start.
#[derive(Debug)]
pub enum StartError {
    /// A field of the request is wrong (400).
    BadField(FieldError),
    /// Well-formed but cannot be done (422).
    Invalid { code: &'static str, message: String },
    /// A target is already being deployed (409).
    Busy {
        environment: String,
        deployment: String,
    },
    /// A deployment window closes a target (423).
    WindowClosed {
        environment: String,
        window: String,
        opens_at: Option<Timestamp>,
    },
    /// A guard of the start failed (a schedule's occurrence handled elsewhere, or the schedule
    /// changed): nothing was created (409).
    Superseded,
    /// The store failed (500).
    Store(StoreError),
}

impl From<StoreError> for StartError {
    fn from(error: StoreError) -> StartError {
        StartError::Store(error)
    }
}

impl Coordinator {
    /// This node, for a log line: `node <id>`, or `this node` where the host has no nodes.
    fn node_name(&self) -> String {
        self.node().map_or_else(
            || "this node".to_owned(),
            |node| format!("node {}", node.node_id),
        )
    }

    /// Why this copy starts no new run now: it stops (a swap or the host stopping), its node
    /// drains, or it runs as many as it may
    /// (`max_running_deployments`, 0: no limit). `None`: it has room.
    fn no_room(&self) -> Option<String> {
        if self.background.is_cancelled() {
            return Some(format!("{} is stopping", self.node_name()));
        }
        if self.draining.load(std::sync::atomic::Ordering::Relaxed) {
            return Some(format!("{} drains", self.node_name()));
        }
        let max = self.settings.max_running_deployments;
        (max > 0 && self.runs().len() >= max).then(|| {
            format!(
                "{} runs {max} deployment(s) at once (max_running_deployments)",
                self.node_name()
            )
        })
    }

    /// Claims every target and writes the deployment's first records, in one transaction: either
    /// all of it happens, or (a target is claimed already) nothing and `Busy`. Returns the
    /// run's lease, or `None` when this copy has no room and the deployment was queued.
    pub(super) async fn claim_and_record(
        &self,
        record: &mut DeploymentRecord,
        targets: &[Environment],
        guard: Vec<StoreOp>,
    ) -> Result<Option<Lease>, StartError> {
        let id = record.deployment_id.clone();
        let id = &id;
        let mut writes = Writes::new(&self.records, &self.lease());
        // First: a failed guard is named before a claim another start of it took.
        writes.guard(guard);
        writes.claim(id, &record.environments)?;
        let no_room = self.no_room();
        let lease = match &no_room {
            None => Some(writes.running(record, 1)?),
            Some(why) => {
                writes.queued(record)?;
                let why = format!("queued: {why}; the first node with room starts it");
                self.log_line(&mut writes, record, LogStream::Stdout, &why)
                    .await?;
                None
            }
        };
        for target in targets {
            let pending = TargetRecord::new(
                &target.environment_id,
                target.connection_method().as_str(),
                TargetStatus::Pending,
            );
            writes.target(id, &pending)?;
        }
        writes.created(record)?;
        // The phase event the start publishes is the deployment's first.
        writes.events_published(id, 1)?;
        match writes.commit().await? {
            Outcome::Committed => {}
            Outcome::ClaimHeld {
                environment,
                deployment,
            } => {
                return Err(StartError::Busy {
                    environment,
                    deployment,
                })
            }
            Outcome::Superseded => return Err(StartError::Superseded),
            Outcome::Changed | Outcome::LeaseLost => {
                return Err(StartError::Store(StoreError::Host(format!(
                    "starting {id}: an unexpected store conflict"
                ))))
            }
        }
        if let Some(why) = no_room {
            tracing::info!(deployment = %id, "deployment queued: {why}");
            self.changed();
            self.publish_phase(1, record, None);
        }
        Ok(lease)
    }

    /// Looks at the nodes (their lost runs) and at the queue every [`WATCH`], and at the queue
    /// as soon as a run of this copy ends, until `stop`.
    pub(super) async fn watch_loop(self: Arc<Self>, stop: CancellationToken) {
        // A schedule, not a sleep after each wake-up: runs that end often do not put the look
        // at the nodes off.
        let mut ticks = tokio::time::interval(WATCH);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await;
        loop {
            let watch = tokio::select! {
                _ = stop.cancelled() => return,
                _ = ticks.tick() => true,
                _ = self.room_freed.notified() => false,
            };
            if watch {
                if let Err(error) = self.recover_lost_nodes().await {
                    tracing::warn!(%error, "cannot look for the runs of lost nodes; trying again");
                }
            }
            if let Err(error) = self.start_queued().await {
                tracing::warn!(%error, "cannot look at the queue; trying again");
            }
        }
    }

    /// Starts queued deployments, oldest first, while this copy has room and its node does not
    /// drain. Returns how many it started.
    pub async fn start_queued(self: &Arc<Self>) -> Result<usize, StoreError> {
        if self.no_room().is_some() {
            return Ok(0);
        }
        let mut started = 0;
        for (id, entry_text, entry) in persist::runs::queued_entries(&self.records).await? {
            if self.no_room().is_some() {
                break;
            }
            let Ok(id) = DeploymentId::parse(&id) else {
                continue;
            };
            started += usize::from(self.start_one(&id, &entry_text, &entry).await?);
        }
        Ok(started)
    }

    /// Starts queued deployment `id` here: its claims and entry move to this process (the
    /// run's first epoch), with a log line. False when another node (or a cancel) came first.
    async fn start_one(
        self: &Arc<Self>,
        id: &DeploymentId,
        entry_text: &str,
        entry: &ActiveEntry,
    ) -> Result<bool, StoreError> {
        let (text, mut record) = match self.deployments().read_for_update(id).await {
            Ok(Some(read)) => read,
            Ok(None) | Err(StoreError::Decode { .. }) => return Ok(false),
            Err(error) => return Err(error),
        };
        if record.status != Phase::Pending {
            return Ok(false);
        }
        let results = self.results_of(id).await?;
        let environments = self.environments_of(&record.environments).await?;
        let mut writes = Writes::new(&self.records, &self.lease());
        writes.entry_unchanged(id, entry_text);
        writes.take_claims(id, &record.environments, &entry.boot_id)?;
        record.boot_id = self.boot_id.clone();
        let why = format!("{} started it from the queue", self.node_name());
        let (log, lease) = self
            .run_here(&mut writes, &text, Phase::Pending, &mut record, &why)
            .await?;
        if writes.commit().await? != Outcome::Committed {
            return Ok(false);
        }
        tracing::info!(deployment = %id, "started a queued deployment");
        self.changed();
        let ec2 = match record.ec2 {
            Ec2Phase::Pending => self.settings.ec2.clone(),
            _ => None,
        };
        let events = self.deployments().events_published(id).await?;
        let from = RunFrom { log, events, lease };
        self.spawn_run(record, environments, results, ec2, from, Start::Fresh);
        Ok(true)
    }

    /// Ends deployment `id` cancelled if it is queued (nothing started, its claims released);
    /// false when it is not queued (a run has it, or it ended).
    pub(super) async fn cancel_queued(
        &self,
        id: &DeploymentId,
        by: &str,
    ) -> Result<bool, StoreError> {
        let Some((entry_text, entry)) = persist::runs::queued_entry(&self.records, id).await?
        else {
            return Ok(false);
        };
        let Some((text, mut record)) = self.deployments().read_for_update(id).await? else {
            return Ok(false);
        };
        let now = SystemTime::now();
        let message = format!("cancelled by {by} while queued: nothing was started");
        let from = record.status;
        record.status = Phase::Cancelled;
        record.errors.push(message.clone());
        record.finished_at = Some(Timestamp::from(now));
        let now_ms = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as u64;
        record.duration_ms = Some(now_ms.saturating_sub(record.created_ms));
        for batch in &mut record.batches {
            batch.status = BatchStatus::Skipped;
        }
        // Under the lease of the process that admitted it: the claims are its.
        let lease = Lease::of(&entry.boot_id, None);
        let mut writes = Writes::new(&self.records, &lease);
        writes.entry_unchanged(id, &entry_text);
        for mut target in self.deployments().targets(id).await? {
            target.status = TargetStatus::Skipped;
            target.finished_at = Some(Timestamp::from(now));
            target.error = Some(format!("not started: {message}"));
            writes.target(id, &target)?;
        }
        writes.release_claims(id, &record.environments, &entry.boot_id)?;
        writes.not_running(id);
        self.log_line(&mut writes, &mut record, LogStream::Error, &message)
            .await?;
        writes.moved(&record, from, &record.environments, Some(&text))?;
        let seq = self.deployments().events_published(id).await? + 1;
        writes.events_published(id, seq)?;
        if writes.commit().await? != Outcome::Committed {
            return Ok(false);
        }
        tracing::info!(deployment = %id, by, "queued deployment cancelled");
        self.changed();
        self.publish_phase(seq, &record, Some(from));
        Ok(true)
    }
}
