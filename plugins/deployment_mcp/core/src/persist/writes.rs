//! One store transaction of a deployment's writes, said in the domain's words (claim these
//! environments, store this result, move the record from that phase) and turned into the
//! store's operations here, where the key layout lives.
//!
//! Every transaction is made under a [`Lease`]: the right to write the run's records. On one
//! node a process holds every run it started alone, and the lease fences nothing; with several
//! nodes on one database, [`Writes::commit`] is the one place that adds the condition which
//! makes a write of a lease that was taken over fail.

use plugin_guest::{Condition, StoreOp};

use super::{
    catalog::EnvironmentVersions,
    deployments::{log_chunk_op, ActiveEntry, LogPosition},
    history,
    records::{self, collection, target_key, Records, StoreError},
};
use crate::model::{DeploymentId, EnvironmentId};
use crate::{
    deployment::{Claim, DeploymentRecord, Phase, TargetRecord},
    model::LogLine,
};

/// The right to write a run's records, held by the process that runs it (its boot). Claims on
/// environments name the holder, so a claim can be released or moved only by the lease that
/// took it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    holder: String,
}

impl Lease {
    /// The lease of a process that owns its runs alone (one node).
    pub fn sole(holder: &str) -> Lease {
        Lease {
            holder: holder.to_owned(),
        }
    }

    /// The process (boot) that holds it.
    pub fn holder(&self) -> &str {
        &self.holder
    }

    /// The conditions a write under this lease carries. None on one node: nothing else can
    /// hold a run of this process.
    fn fence(&self) -> Vec<StoreOp> {
        Vec::new()
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
}

/// What each operation is, to name a conflict.
#[derive(Debug, Clone)]
enum Kind {
    Claim(EnvironmentId),
    Other,
}

/// A transaction being assembled.
pub struct Writes {
    records: Records,
    lease: Lease,
    ops: Vec<StoreOp>,
    kinds: Vec<Kind>,
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
        }
    }

    fn push(&mut self, op: StoreOp) {
        self.ops.push(op);
        self.kinds.push(Kind::Other);
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

    /// Records the deployment as running under this lease, for sibling copies and the lists.
    pub fn running(&mut self, record: &DeploymentRecord) -> Result<(), StoreError> {
        let id = &record.deployment_id;
        let entry = ActiveEntry {
            boot_id: self.lease.holder().to_owned(),
            history_key: Some(record.history_key()),
        };
        self.push(StoreOp::put(
            collection::ACTIVE,
            id,
            records::encode(collection::ACTIVE, id, &entry)?,
        ));
        // A cancel request left for an earlier run of it (one that ended meanwhile) is not for
        // this one.
        self.push(StoreOp::delete(collection::CANCEL, id));
        Ok(())
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
        Ok(())
    }

    /// The deployment's state events up to number `last` are published once this is stored.
    pub fn events_published(
        &mut self,
        deployment_id: &DeploymentId,
        last: u64,
    ) -> Result<(), StoreError> {
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
        let Some(conflict) = self.records.apply(ops).await? else {
            return Ok(Outcome::Committed);
        };
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
            Some(Kind::Other) | None => Outcome::Changed,
        })
    }
}
