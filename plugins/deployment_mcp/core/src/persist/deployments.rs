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
    deployment::{DeploymentRecord, HistoryEntry, TargetRecord},
    model::{DeploymentId, LogLine},
    persist::records::{self, collection, log_key, Records, StoreError},
};

#[derive(Clone)]
pub struct DeploymentStore {
    records: Records,
}

/// One chunk of a deployment's log as stored: the number of its first line among the stored
/// lines, so a page of the log is found by a binary search over the chunks' numbers (which are
/// dense: 0, 1, 2…) instead of a walk over every chunk before it. Chunks written before the
/// number was kept are a bare array; a log holding one is walked from its start.
#[derive(Debug, Serialize, Deserialize)]
#[serde(untagged)]
pub enum StoredChunk {
    Numbered { first: u64, lines: Vec<LogLine> },
    Unnumbered(Vec<LogLine>),
}

impl StoredChunk {
    fn first(&self) -> Option<u64> {
        match self {
            StoredChunk::Numbered { first, .. } => Some(*first),
            StoredChunk::Unnumbered(_) => None,
        }
    }

    fn lines(&self) -> &[LogLine] {
        match self {
            StoredChunk::Numbered { lines, .. } | StoredChunk::Unnumbered(lines) => lines,
        }
    }

    fn into_lines(self) -> Vec<LogLine> {
        match self {
            StoredChunk::Numbered { lines, .. } | StoredChunk::Unnumbered(lines) => lines,
        }
    }
}

/// A chunk as it is written: its first line's number and its lines, borrowed.
#[derive(Serialize)]
struct ChunkToStore<'a> {
    first: u64,
    lines: &'a [LogLine],
}

/// The write that stores `lines` as the deployment's chunk at `at` (the writer's batches and
/// the decisions' one-line chunks alike).
pub fn log_chunk_op(id: &str, at: LogPosition, lines: &[LogLine]) -> Result<StoreOp, StoreError> {
    let key = log_key(id, at.chunk);
    let chunk = ChunkToStore {
        first: at.line,
        lines,
    };
    Ok(StoreOp::put(
        collection::LOGS,
        &key,
        records::encode(collection::LOGS, &key, &chunk)?,
    ))
}

/// Where a deployment's log goes on: the number of the next chunk, and of the next stored line
/// (the number of lines stored so far).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogPosition {
    pub chunk: u64,
    pub line: u64,
}

impl LogPosition {
    /// Where the log goes on once a chunk of `lines` lines is stored here.
    pub fn after(self, lines: usize) -> LogPosition {
        LogPosition {
            chunk: self.chunk + 1,
            line: self.line + lines as u64,
        }
    }
}

/// A part of a deployment's log: its lines, the number of the first among the stored lines,
/// and the end of the log as it was read.
#[derive(Debug, Default)]
pub struct LogPage {
    pub first_line: u64,
    pub lines: Vec<LogLine>,
    pub end: LogPosition,
}

impl DeploymentStore {
    pub fn new(records: Records) -> DeploymentStore {
        DeploymentStore { records }
    }

    pub async fn record(&self, id: &str) -> Result<Option<DeploymentRecord>, StoreError> {
        self.records.get(collection::DEPLOYMENTS, id).await
    }

    /// The record and its stored text, for a decision that is written only if the record is
    /// still exactly that text ([`crate::persist::Writes::moved`] with `read`).
    pub async fn read_for_update(
        &self,
        id: &str,
    ) -> Result<Option<(String, DeploymentRecord)>, StoreError> {
        let Some(text) = self.records.get_raw(collection::DEPLOYMENTS, id).await? else {
            return Ok(None);
        };
        let record = serde_json::from_str(&text).map_err(|error| StoreError::Decode {
            collection: collection::DEPLOYMENTS.to_owned(),
            key: id.to_owned(),
            message: error.to_string(),
        })?;
        Ok(Some((text, record)))
    }

    /// The sequence number of the deployment's last published state event (0: none yet).
    pub async fn events_published(&self, id: &str) -> Result<u64, StoreError> {
        Ok(self
            .records
            .get::<u64>(collection::EVENT_SEQUENCES, id)
            .await?
            .unwrap_or(0))
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

    /// Chunk `number` of the deployment's log, if it is stored.
    pub async fn log_chunk(
        &self,
        id: &str,
        number: u64,
    ) -> Result<Option<StoredChunk>, StoreError> {
        self.records
            .get(collection::LOGS, &log_key(id, number))
            .await
    }

    async fn has_log_chunk(&self, id: &str, number: u64) -> Result<bool, StoreError> {
        Ok(self
            .records
            .get_raw(collection::LOGS, &log_key(id, number))
            .await?
            .is_some())
    }

    /// The number of the deployment's last stored chunk, if any: a doubling search, then a
    /// binary one, over the dense chunk numbers (about 2·log₂ of the chunk count reads, none
    /// of them a scan).
    async fn last_log_chunk(&self, id: &str) -> Result<Option<u64>, StoreError> {
        if !self.has_log_chunk(id, 0).await? {
            return Ok(None);
        }
        // Invariant: chunk `present` is stored, chunk `absent` is not.
        let (mut present, mut absent) = (0u64, 1u64);
        while self.has_log_chunk(id, absent).await? {
            present = absent;
            absent = absent.saturating_mul(2);
        }
        while absent - present > 1 {
            let middle = present + (absent - present) / 2;
            if self.has_log_chunk(id, middle).await? {
                present = middle;
            } else {
                absent = middle;
            }
        }
        Ok(Some(present))
    }

    /// Where the deployment's log goes on, and its last chunk.
    async fn log_end(&self, id: &str) -> Result<(LogPosition, Option<StoredChunk>), StoreError> {
        let Some(last) = self.last_log_chunk(id).await? else {
            return Ok((LogPosition::default(), None));
        };
        let Some(chunk) = self.log_chunk(id, last).await? else {
            return Ok((LogPosition::default(), None));
        };
        let line = match chunk.first() {
            Some(first) => first + chunk.lines().len() as u64,
            // A log written before chunks were numbered: counted once, chunk by chunk.
            None => self.unnumbered_starts(id, last).await?.1,
        };
        Ok((
            LogPosition {
                chunk: last + 1,
                line,
            },
            Some(chunk),
        ))
    }

    /// Where the deployment's log goes on (after every stored chunk and line).
    pub async fn log_position(&self, id: &str) -> Result<LogPosition, StoreError> {
        Ok(self.log_end(id).await?.0)
    }

    /// For a log with unnumbered chunks: the first line of each of chunks `0..=last`, and the
    /// number of lines in them all (one pass over them).
    async fn unnumbered_starts(&self, id: &str, last: u64) -> Result<(Vec<u64>, u64), StoreError> {
        let mut starts = Vec::new();
        let mut line = 0u64;
        for number in 0..=last {
            let lines = self
                .log_chunk(id, number)
                .await?
                .map_or(0, |chunk| chunk.lines().len() as u64);
            starts.push(line);
            line += lines;
        }
        Ok((starts, line))
    }

    /// The last `count` stored lines of the deployment's log: the chunks read from the end
    /// back, only as many as hold them.
    pub async fn log_tail(&self, id: &str, count: usize) -> Result<LogPage, StoreError> {
        let (end, last) = self.log_end(id).await?;
        let Some(last) = last else {
            return Ok(LogPage::default());
        };
        let mut chunks = vec![last.into_lines()];
        let mut held = chunks[0].len();
        let mut number = end.chunk - 1;
        while held < count && number > 0 {
            number -= 1;
            let Some(chunk) = self.log_chunk(id, number).await? else {
                break;
            };
            let lines = chunk.into_lines();
            held += lines.len();
            chunks.push(lines);
        }
        let mut lines: Vec<LogLine> = chunks.into_iter().rev().flatten().collect();
        let lines = lines.split_off(lines.len().saturating_sub(count));
        Ok(LogPage {
            first_line: end.line.saturating_sub(lines.len() as u64),
            lines,
            end,
        })
    }

    /// Up to `limit` stored lines of the deployment's log from line `from` on: a binary search
    /// for the chunk that holds `from`, then the chunks from it on, only as many as hold the
    /// page.
    pub async fn log_page(&self, id: &str, from: u64, limit: usize) -> Result<LogPage, StoreError> {
        let (end, last) = self.log_end(id).await?;
        let Some(last) = last else {
            return Ok(LogPage::default());
        };
        if from >= end.line || limit == 0 {
            return Ok(LogPage {
                first_line: from.min(end.line),
                lines: Vec::new(),
                end,
            });
        }
        let last_number = end.chunk - 1;
        // A log whose first chunk is numbered has every chunk numbered (a log is numbered from
        // its start or continued from an unnumbered one, whose lines are then counted).
        let numbered = match last.first() {
            Some(_) => self
                .log_chunk(id, 0)
                .await?
                .is_none_or(|chunk| chunk.first().is_some()),
            None => false,
        };
        // The chunk holding line `from`, and its first line.
        let (mut number, mut first) = match numbered {
            true => self.numbered_chunk_holding(id, from, last_number).await?,
            false => {
                let (starts, _) = self.unnumbered_starts(id, last_number).await?;
                let number = starts
                    .partition_point(|start| *start <= from)
                    .saturating_sub(1);
                (number as u64, starts.get(number).copied().unwrap_or(0))
            }
        };
        let mut lines = Vec::new();
        while lines.len() < limit && number <= last_number {
            let Some(chunk) = self.log_chunk(id, number).await? else {
                break;
            };
            let held = chunk.into_lines();
            let count = held.len() as u64;
            let skip = from.saturating_sub(first) as usize;
            lines.extend(held.into_iter().skip(skip).take(limit - lines.len()));
            first += count;
            number += 1;
        }
        Ok(LogPage {
            first_line: from,
            lines,
            end,
        })
    }

    /// The number of the numbered chunk that holds line `line`, and its first line: the last
    /// chunk among `0..=last` whose first line is at most `line`.
    async fn numbered_chunk_holding(
        &self,
        id: &str,
        line: u64,
        last: u64,
    ) -> Result<(u64, u64), StoreError> {
        // Invariant: chunk `low` starts at or before `line`; chunks after `high` start after it.
        let (mut low, mut low_first, mut high) = (0u64, 0u64, last);
        while low < high {
            let middle = low + (high - low).div_ceil(2);
            let first = self
                .log_chunk(id, middle)
                .await?
                .and_then(|chunk| chunk.first())
                .unwrap_or(u64::MAX);
            if first <= line {
                (low, low_first) = (middle, first);
            } else {
                high = middle - 1;
            }
        }
        Ok((low, low_first))
    }

    /// The lines of up to `limit` chunks, in order from chunk number `from` on, stopping at the
    /// first one not stored: what a followed log reads next.
    pub async fn log_chunks_from(
        &self,
        id: &str,
        from: u64,
        limit: u64,
    ) -> Result<Vec<Vec<LogLine>>, StoreError> {
        let mut chunks = Vec::new();
        for number in from..from.saturating_add(limit) {
            match self.log_chunk(id, number).await? {
                Some(chunk) => chunks.push(chunk.into_lines()),
                None => break,
            }
        }
        Ok(chunks)
    }

    /// How many times the deployment's run was given to a process so far (0: never, or it is
    /// not running).
    pub async fn run_epoch(&self, id: &DeploymentId) -> Result<u64, StoreError> {
        Ok(self
            .records
            .get::<ActiveEntry>(collection::ACTIVE, id)
            .await?
            .map_or(0, |entry| entry.epoch))
    }

    /// The records of the deployments running now (any copy's), every environment included.
    pub async fn active(&self) -> Result<Vec<DeploymentRecord>, StoreError> {
        let mut active = Vec::new();
        for (id, _) in self
            .records
            .scan::<ActiveEntry>(collection::ACTIVE, "")
            .await?
        {
            if let Some(record) = self.record(&id).await? {
                active.push(record);
            }
        }
        Ok(active)
    }

    /// The deployments running now (any copy's) as lists show them: their history entries, a
    /// few kilobytes each whatever their size (the record names every environment).
    pub async fn active_entries(&self) -> Result<Vec<HistoryEntry>, StoreError> {
        let mut active = Vec::new();
        for (id, entry) in self
            .records
            .scan::<ActiveEntry>(collection::ACTIVE, "")
            .await?
        {
            let listed = match entry.history_key {
                Some(key) => self.records.get(collection::HISTORY, &key).await?,
                // Written by an earlier release, without the key.
                None => self
                    .record(&id)
                    .await?
                    .map(|record| record.history_entry(Vec::new())),
            };
            active.extend(listed);
        }
        Ok(active)
    }
}

/// A run recorded as active in the store (`ACTIVE`), so sibling copies and the status view see
/// it. Rows of earlier releases also list the run's environments; nothing reads them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ActiveEntry {
    /// The process that runs it (the host's, or its plugin child's).
    pub boot_id: String,
    /// Its history entry's key (absent in rows of earlier releases).
    #[serde(default)]
    pub history_key: Option<String>,
    /// The node that runs it, and the host process holding that node's id then (absent where
    /// the host has no nodes, and in rows of earlier releases: this node's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_boot: Option<String>,
    /// How many times the run was given to a process: a takeover gives it the next number.
    #[serde(default)]
    pub epoch: u64,
    /// Admitted, not started: no process runs it yet, and the first node with room starts it.
    /// It names no node (it is nobody's run), and its claims are those of the process that
    /// admitted it (`boot_id`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub queued: bool,
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
    pub deployment_id: DeploymentId,
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
    pub fn starting(fingerprint: String, deployment_id: DeploymentId, created_ms: u64) -> Self {
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
        crate::persist::records::encode(collection::IDEMPOTENCY, &self.deployment_id, self)
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
