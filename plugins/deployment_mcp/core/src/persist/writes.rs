//! One store transaction of a deployment's writes, said in the domain's words (claim these
//! environments, store this result, move the record from that phase) and turned into the
//! store's operations here, where the key layout lives.
//!
//! Every transaction is made under a [`Lease`]: the right to write the run's records. A run's
//! lease is its running entry (`ACTIVE`) as it was written when the run was given to this
//! process; every transaction of the run checks the entry is still that text, so a process whose
//! run another node took over (while it was paused or cut off) can no longer change anything:
//! [`Writes::commit`] is the one place that adds the check.

use plugin_guest::{Condition, StoreOp};

use super::{
    catalog::EnvironmentVersions,
    deployments::{log_chunk_op, ActiveEntry, LogPosition},
    history, outbox,
    records::{self, collection, target_key, Records, StoreError},
};
use crate::model::{DeploymentId, EnvironmentId};
use crate::{
    deployment::{Claim, DeploymentRecord, Phase, TargetRecord},
    model::LogLine,
    notifications::Notice,
};

/// A node among those that share the store: its id and the host process (boot) that holds the
/// id now. A run's entry names it, so the other nodes know whose runs they must take when a
/// node is lost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeTag {
    pub node_id: String,
    pub node_boot: String,
}

/// The right to write records: that of a process (its boot, which names the claims it takes)
/// on a node, and for a run, the running entry it was given (its fence).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    holder: String,
    node: Option<NodeTag>,
    fence: Option<Fence>,
}

/// A run's running entry as this process wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Fence {
    deployment_id: DeploymentId,
    entry: String,
    epoch: u64,
}

impl Lease {
    /// The lease of process `holder` (a boot) on `node` (none where the host has no nodes),
    /// which fences nothing: for what is not a run's (a start, a decision, a recovery).
    pub fn of(holder: &str, node: Option<NodeTag>) -> Lease {
        Lease {
            holder: holder.to_owned(),
            node,
            fence: None,
        }
    }

    /// The process (boot) that holds it.
    pub fn holder(&self) -> &str {
        &self.holder
    }

    /// How many times the run was given to a process (1 for the first): the fencing token a
    /// resent trigger carries. 0 for a lease that is not a run's.
    pub fn epoch(&self) -> u64 {
        self.fence.as_ref().map_or(0, |fence| fence.epoch)
    }

    /// Whether the run's entry is still the one this lease was given: false once another node
    /// took the run over (true for a lease that is not a run's).
    pub async fn held(&self, records: &Records) -> Result<bool, StoreError> {
        let Some(fence) = &self.fence else {
            return Ok(true);
        };
        Ok(records
            .get_raw(collection::ACTIVE, &fence.deployment_id)
            .await?
            .is_some_and(|entry| entry == fence.entry))
    }

    /// The conditions a write under this lease carries: the run's entry is unchanged.
    pub(super) fn fence(&self) -> Vec<StoreOp> {
        match &self.fence {
            Some(fence) => vec![StoreOp::check(
                collection::ACTIVE,
                &fence.deployment_id,
                Condition::Equals(fence.entry.clone()),
            )],
            None => Vec::new(),
        }
    }
}

/// What a transaction came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Everything was written.
    Committed,
    /// Nothing was written: `environment` is claimed by `deployment` (empty when the claim
    /// could not be read).
    ClaimHeld {
        environment: String,
        deployment: String,
    },
    /// Nothing was written: a record changed since it was read (another copy decided first).
    Changed,
    /// Nothing was written: the run's entry is no longer the one it was given (another node
    /// took it over); the run must stop without writing anything more.
    LeaseLost,
    /// Nothing was written: a guard of the transaction failed (a schedule's occurrence was
    /// handled by another node, or the schedule changed).
    Superseded,
}

/// What each operation is, to name a conflict.
#[derive(Debug, Clone)]
enum Kind {
    Claim(EnvironmentId),
    Guard,
    Other,
}

/// A transaction being assembled.
pub struct Writes {
    records: Records,
    lease: Lease,
    ops: Vec<StoreOp>,
    kinds: Vec<Kind>,
    /// What the audit entry of the call committing this is about, when this transaction
    /// creates a deployment: its resource and environments.
    subject: Option<Created>,
    /// The notices of what this transaction records (an outcome, a gate, a takeover, an
    /// override), written to the outbox with it: their deployment and its creation time.
    notices: Vec<(DeploymentId, u64, Notice)>,
    /// The number of the last event this transaction's writes publish: the notices' place in
    /// their deployment's order.
    last_event: Option<u64>,
}

/// A deployment a transaction creates, as the audit entry of the call shows it.
struct Created {
    resource: String,
    environments: Vec<String>,
    changes: serde_json::Value,
    /// An override of closed windows: its reason is the entry's.
    reason: Option<String>,
}

/// The text of the claim `lease` holds on a deployment's environments.
pub(super) fn claim_text(deployment_id: &DeploymentId, holder: &str) -> Result<String, StoreError> {
    records::encode(
        collection::CLAIMS,
        deployment_id,
        &Claim {
            deployment_id: deployment_id.clone(),
            boot_id: holder.to_owned(),
        },
    )
}

impl Writes {
    pub fn new(records: &Records, lease: &Lease) -> Writes {
        Writes {
            records: records.clone(),
            lease: lease.clone(),
            ops: Vec::new(),
            kinds: Vec::new(),
            subject: None,
            notices: Vec::new(),
            last_event: None,
        }
    }

    fn notify(&mut self, record: &DeploymentRecord, notices: Vec<Notice>) {
        self.notices.extend(
            notices
                .into_iter()
                .map(|notice| (record.deployment_id.clone(), record.created_ms, notice)),
        );
    }

    /// Node `to_node` takes the deployment over from `from_node` (told to the subscriptions).
    pub fn took_over(&mut self, record: &DeploymentRecord, from_node: &str, to_node: &str) {
        self.notify(
            record,
            vec![Notice::of_takeover(record, from_node, to_node)],
        );
    }

    fn push(&mut self, op: StoreOp) {
        self.ops.push(op);
        self.kinds.push(Kind::Other);
    }

    /// Operations the whole transaction depends on (a schedule's run, taken once); if one
    /// fails, the transaction is [`Outcome::Superseded`].
    pub fn guard(&mut self, ops: Vec<StoreOp>) {
        self.kinds.extend(ops.iter().map(|_| Kind::Guard));
        self.ops.extend(ops);
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Claims each environment for the deployment, under this lease, if no one holds it.
    pub fn claim(
        &mut self,
        deployment_id: &DeploymentId,
        environments: &[EnvironmentId],
    ) -> Result<(), StoreError> {
        let claim = claim_text(deployment_id, self.lease.holder())?;
        self.ops.reserve(environments.len());
        for environment in environments {
            self.ops.push(StoreOp::insert(
                collection::CLAIMS,
                environment,
                claim.clone(),
            ));
            self.kinds.push(Kind::Claim(environment.clone()));
        }
        Ok(())
    }

    /// Moves the deployment's claims from the process `from` to this lease (only those `from`
    /// still holds; any other makes the transaction [`Outcome::Changed`]).
    pub fn take_claims(
        &mut self,
        deployment_id: &DeploymentId,
        environments: &[EnvironmentId],
        from: &str,
    ) -> Result<(), StoreError> {
        let old = claim_text(deployment_id, from)?;
        let new = claim_text(deployment_id, self.lease.holder())?;
        for environment in environments {
            self.push(
                StoreOp::put(collection::CLAIMS, environment, new.clone())
                    .when(Condition::Equals(old.clone())),
            );
        }
        Ok(())
    }

    /// Frees the deployment's claims that the process `holder` holds.
    pub fn release_claims(
        &mut self,
        deployment_id: &DeploymentId,
        environments: &[EnvironmentId],
        holder: &str,
    ) -> Result<(), StoreError> {
        let claim = claim_text(deployment_id, holder)?;
        for environment in environments {
            self.push(
                StoreOp::delete(collection::CLAIMS, environment)
                    .when(Condition::Equals(claim.clone())),
            );
        }
        Ok(())
    }

    /// Records the deployment as running under this lease (given to a process for the
    /// `epoch`th time), for the other copies and nodes and the lists; returns the run's
    /// lease, whose writes hold only while that entry does.
    pub fn running(&mut self, record: &DeploymentRecord, epoch: u64) -> Result<Lease, StoreError> {
        let id = &record.deployment_id;
        let entry = ActiveEntry {
            boot_id: self.lease.holder().to_owned(),
            history_key: Some(record.history_key()),
            node_id: self.lease.node.as_ref().map(|node| node.node_id.clone()),
            node_boot: self.lease.node.as_ref().map(|node| node.node_boot.clone()),
            epoch,
            queued: false,
        };
        let text = records::encode(collection::ACTIVE, id, &entry)?;
        self.push(StoreOp::put(collection::ACTIVE, id, text.clone()));
        // A cancel request left for an earlier run of it (one that ended meanwhile) is not for
        // this one.
        self.push(StoreOp::delete(collection::CANCEL, id));
        Ok(Lease {
            fence: Some(Fence {
                deployment_id: id.clone(),
                entry: text,
                epoch,
            }),
            ..self.lease.clone()
        })
    }

    /// Records the deployment as queued: admitted (its claims taken by this process), to be
    /// started by the first node with room.
    pub fn queued(&mut self, record: &DeploymentRecord) -> Result<(), StoreError> {
        let id = &record.deployment_id;
        let entry = ActiveEntry {
            boot_id: self.lease.holder().to_owned(),
            history_key: Some(record.history_key()),
            node_id: None,
            node_boot: None,
            epoch: 0,
            queued: true,
        };
        let text = records::encode(collection::ACTIVE, id, &entry)?;
        self.push(StoreOp::put(collection::ACTIVE, id, text));
        Ok(())
    }

    /// Holds only while the deployment's running entry is still `entry` (the lease of a run
    /// this process is ending for a node that is gone).
    pub fn entry_unchanged(&mut self, deployment_id: &DeploymentId, entry: &str) {
        self.push(StoreOp::check(
            collection::ACTIVE,
            deployment_id,
            Condition::Equals(entry.to_owned()),
        ));
    }

    /// The deployment no longer runs: its running entry and any cancel request go.
    pub fn not_running(&mut self, deployment_id: &DeploymentId) {
        self.push(StoreOp::delete(collection::ACTIVE, deployment_id));
        self.push(StoreOp::delete(collection::CANCEL, deployment_id));
    }

    /// An environment's result in the deployment.
    pub fn target(
        &mut self,
        deployment_id: &DeploymentId,
        target: &TargetRecord,
    ) -> Result<(), StoreError> {
        let key = target_key(deployment_id, &target.environment_id);
        self.push(StoreOp::put(
            collection::TARGETS,
            &key,
            records::encode(collection::TARGETS, &key, target)?,
        ));
        Ok(())
    }

    /// An environment's deployed and previous version.
    pub fn versions(
        &mut self,
        environment: &str,
        versions: &EnvironmentVersions,
    ) -> Result<(), StoreError> {
        self.push(StoreOp::put(
            collection::VERSIONS,
            environment,
            records::encode(collection::VERSIONS, environment, versions)?,
        ));
        Ok(())
    }

    /// Lines appended to the deployment's log as its chunk at `at`.
    pub fn log(
        &mut self,
        deployment_id: &DeploymentId,
        at: LogPosition,
        lines: &[LogLine],
    ) -> Result<(), StoreError> {
        self.push(log_chunk_op(deployment_id, at, lines)?);
        Ok(())
    }

    /// A new deployment's record, its history entry and the history's indexes.
    pub fn created(&mut self, record: &DeploymentRecord) -> Result<(), StoreError> {
        let id = &record.deployment_id;
        self.subject.get_or_insert_with(|| Created {
            resource: format!("deployment:{id}"),
            environments: record.environments.iter().map(|e| e.to_string()).collect(),
            changes: serde_json::json!({
                "version": record.version,
                "retry_of": record.retry_of,
                "window_override": record.window_override,
            }),
            reason: record
                .window_override
                .as_ref()
                .map(|overridden| overridden.reason.clone()),
        });
        self.push(StoreOp::put(
            collection::DEPLOYMENTS,
            id,
            records::encode(collection::DEPLOYMENTS, id, record)?,
        ));
        let key = record.history_key();
        let entry = record.history_entry(Vec::new());
        self.push(StoreOp::put(
            collection::HISTORY,
            &key,
            records::encode(collection::HISTORY, &key, &entry)?,
        ));
        for op in history::created_ops(&key, &entry, &record.environments)? {
            self.push(op);
        }
        self.notify(record, Notice::of_created(record));
        Ok(())
    }

    /// The record's new state (its status was `from` when last written), its history entry and
    /// the indexes; `failed` lists the environments that did not succeed once it ended.
    /// With `read`, only if the record is still that text (a decision made on what was read).
    pub fn moved(
        &mut self,
        record: &DeploymentRecord,
        from: Phase,
        failed: &[EnvironmentId],
        read: Option<&str>,
    ) -> Result<(), StoreError> {
        let id = &record.deployment_id;
        let put = StoreOp::put(
            collection::DEPLOYMENTS,
            id,
            records::encode(collection::DEPLOYMENTS, id, record)?,
        );
        self.push(match read {
            Some(text) => put.when(Condition::Equals(text.to_owned())),
            None => put,
        });
        let key = record.history_key();
        let entry = record.history_entry(failed.to_vec());
        self.push(StoreOp::put(
            collection::HISTORY,
            &key,
            records::encode(collection::HISTORY, &key, &entry)?,
        ));
        let members = history::Members {
            environments: &record.environments,
            failed,
        };
        for op in history::moved_ops(&key, from, &entry, members)? {
            self.push(op);
        }
        self.notify(record, Notice::of_move(record, from));
        Ok(())
    }

    /// The deployment's state events up to number `last` are published once this is stored.
    pub fn events_published(
        &mut self,
        deployment_id: &DeploymentId,
        last: u64,
    ) -> Result<(), StoreError> {
        self.last_event = Some(last);
        self.push(StoreOp::put(
            collection::EVENT_SEQUENCES,
            deployment_id,
            records::encode(collection::EVENT_SEQUENCES, deployment_id, &last)?,
        ));
        Ok(())
    }

    /// Applies every write at once, or none.
    pub async fn commit(self) -> Result<Outcome, StoreError> {
        let fence = self.lease.fence();
        let fenced = fence.len();
        let mut ops = fence;
        ops.extend(self.ops);
        // After every operation that may conflict: a conflict's index names one of those.
        let notified = !self.notices.is_empty();
        for (index, (deployment, created_ms, notice)) in self.notices.into_iter().enumerate() {
            // A transaction that publishes no event of its own (a run interrupted at a restart)
            // places its notices after those of the last one that did.
            let (event, first) = match self.last_event {
                Some(event) => (event, 0),
                None => (
                    self.records
                        .get::<u64>(collection::EVENT_SEQUENCES, &deployment)
                        .await?
                        .unwrap_or(0),
                    outbox::UNNUMBERED_INDEX,
                ),
            };
            let id = outbox::delivery_id(&deployment, created_ms, event, first + index);
            ops.push(outbox::notice_op(id, notice)?);
        }
        let subject = self.subject;
        let describe = move |call: &mut crate::audit::Subject| {
            if let Some(created) = subject {
                crate::audit::fill(&mut call.resource, || created.resource);
                crate::audit::fill(&mut call.changes, || created.changes);
                if let Some(reason) = created.reason {
                    crate::audit::fill(&mut call.reason, || reason);
                }
                if call.environments.is_empty() {
                    call.environments = created.environments;
                }
            }
        };
        let Some(conflict) = self.records.apply_for_call(ops, describe).await? else {
            if notified {
                crate::notifications::outbox_written();
            }
            return Ok(Outcome::Committed);
        };
        if conflict.index < fenced {
            return Ok(Outcome::LeaseLost);
        }
        let kind = conflict
            .index
            .checked_sub(fenced)
            .and_then(|index| self.kinds.get(index));
        Ok(match kind {
            Some(Kind::Claim(environment)) => Outcome::ClaimHeld {
                environment: environment.to_string(),
                deployment: conflict
                    .current
                    .and_then(|text| serde_json::from_str::<Claim>(&text).ok())
                    .map(|claim| claim.deployment_id.into_string())
                    .unwrap_or_default(),
            },
            Some(Kind::Guard) => Outcome::Superseded,
            Some(Kind::Other) | None => Outcome::Changed,
        })
    }
}
