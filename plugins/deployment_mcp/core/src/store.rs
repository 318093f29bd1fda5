//! Typed repositories over the store's key layout.
//!
//! [`DeploymentStore`]: a deployment's record under its id, its environments' results under
//! `<id>/<environment>`, its log in numbered chunks under `<id>/<chunk>`, and the small `ACTIVE`
//! collection of running ones. Callers ask for a deployment's parts; only this module and the
//! writers (`run::writer`, the coordinator's start and recovery batches) know the keys.
//!
//! [`IdempotencyStore`]: the records of `Idempotency-Key`s, taken insert-if-absent and moved on
//! by compare-and-set, so concurrent requests with one key agree on one deployment.

use plugin_guest::{Condition, StoreOp};
use serde::{Deserialize, Serialize};

use crate::{
    deployment::{DeploymentRecord, TargetRecord},
    records::{collection, Records, StoreError},
    triggers::LogLine,
};

#[derive(Clone)]
pub struct DeploymentStore {
    records: Records,
}

/// One stored chunk of a deployment's log: its key (to continue after it) and its lines.
pub type LogChunk = (String, Vec<LogLine>);

impl DeploymentStore {
    pub fn new(records: Records) -> DeploymentStore {
        DeploymentStore { records }
    }

    pub async fn record(&self, id: &str) -> Result<Option<DeploymentRecord>, StoreError> {
        self.records.get(collection::DEPLOYMENTS, id).await
    }

    /// The deployment's per-environment results, in environment order.
    pub async fn targets(&self, id: &str) -> Result<Vec<TargetRecord>, StoreError> {
        Ok(self
            .records
            .scan::<TargetRecord>(collection::TARGETS, &prefix(id))
            .await?
            .into_iter()
            .map(|(_, target)| target)
            .collect())
    }

    /// Every stored chunk of the deployment's log, in order.
    pub async fn log_chunks(&self, id: &str) -> Result<Vec<LogChunk>, StoreError> {
        self.records.scan(collection::LOGS, &prefix(id)).await
    }

    /// Up to `limit` chunks after the chunk key `after` (from the start when `None`).
    pub async fn log_chunks_after(
        &self,
        id: &str,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<LogChunk>, StoreError> {
        let start = after.map_or_else(|| prefix(id), str::to_owned);
        let rows = self
            .records
            .page(collection::LOGS, Some(start), limit)
            .await?;
        let own = prefix(id);
        let mut chunks = Vec::with_capacity(rows.len());
        for (key, text) in rows {
            if !key.starts_with(&own) {
                break;
            }
            let lines = serde_json::from_str::<Vec<LogLine>>(&text).unwrap_or_default();
            chunks.push((key, lines));
        }
        Ok(chunks)
    }

    /// The number the deployment's next log chunk gets (after every stored one).
    pub async fn next_log_chunk(&self, id: &str) -> Result<u64, StoreError> {
        let chunks = self
            .records
            .scan::<serde_json::Value>(collection::LOGS, &prefix(id))
            .await?;
        Ok(chunks
            .last()
            .and_then(|(key, _)| key.rsplit('/').next()?.parse::<u64>().ok())
            .map_or(0, |last| last + 1))
    }

    /// The records of the deployments running now (any copy's).
    pub async fn active(&self) -> Result<Vec<DeploymentRecord>, StoreError> {
        let mut active = Vec::new();
        for (id, _) in self
            .records
            .scan::<serde_json::Value>(collection::ACTIVE, "")
            .await?
        {
            if let Some(record) = self.record(&id).await? {
                active.push(record);
            }
        }
        Ok(active)
    }
}

/// The key prefix of a deployment's results and log chunks.
fn prefix(id: &str) -> String {
    format!("{id}/")
}

/// The record of an `Idempotency-Key`: taken before the deployment starts, with the id it will
/// have.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IdempotencyRecord {
    /// SHA-256 of the request body: the same key with another body is refused.
    pub fingerprint: String,
    pub deployment_id: String,
    /// `starting` until the deployment is recorded, then `started`.
    #[serde(default = "started_state")]
    state: String,
    /// When the key was first used, for retention.
    #[serde(default)]
    created_ms: u64,
}

fn started_state() -> String {
    "started".to_owned()
}

impl IdempotencyRecord {
    pub fn starting(fingerprint: String, deployment_id: String, created_ms: u64) -> Self {
        IdempotencyRecord {
            fingerprint,
            deployment_id,
            state: "starting".to_owned(),
            created_ms,
        }
    }

    /// Whether the request that took the key has not recorded its deployment yet.
    pub fn is_starting(&self) -> bool {
        self.state == "starting"
    }

    fn text(&self) -> Result<String, StoreError> {
        crate::records::encode(collection::IDEMPOTENCY, &self.deployment_id, self)
    }
}

#[derive(Clone)]
pub struct IdempotencyStore {
    records: Records,
}

impl IdempotencyStore {
    pub fn new(records: Records) -> IdempotencyStore {
        IdempotencyStore { records }
    }

    /// Takes `key` with `mine` unless it is taken: `None` when this caller now holds it, else
    /// the holder's record (`Some(None)` when it cannot be read, e.g. freed meanwhile).
    pub async fn claim(
        &self,
        key: &str,
        mine: &IdempotencyRecord,
    ) -> Result<Option<Option<IdempotencyRecord>>, StoreError> {
        let taken = self
            .records
            .apply(vec![StoreOp::insert(
                collection::IDEMPOTENCY,
                key,
                mine.text()?,
            )])
            .await?;
        Ok(taken.map(|conflict| {
            conflict
                .current
                .and_then(|text| serde_json::from_str::<IdempotencyRecord>(&text).ok())
        }))
    }

    /// Records that the holder's deployment is recorded (only while the key holds `mine`).
    pub async fn started(&self, key: &str, mine: &IdempotencyRecord) -> Result<(), StoreError> {
        let done = IdempotencyRecord {
            state: started_state(),
            ..mine.clone()
        };
        self.records
            .apply(vec![StoreOp::put(
                collection::IDEMPOTENCY,
                key,
                done.text()?,
            )
            .when(Condition::Equals(mine.text()?))])
            .await
            .map(|_| ())
    }

    /// Frees the key when nothing started (only while it holds `mine`), so a retry can start.
    pub async fn release(&self, key: &str, mine: &IdempotencyRecord) -> Result<(), StoreError> {
        self.records
            .apply(vec![
                StoreOp::delete(collection::IDEMPOTENCY, key).when(Condition::Equals(mine.text()?))
            ])
            .await
            .map(|_| ())
    }
}
