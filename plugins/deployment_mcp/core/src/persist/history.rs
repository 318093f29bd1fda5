//! The deployment history and the indexes that answer questions about it in time independent of
//! its length: one history entry per deployment (newest first by key), an index by status and
//! one by environment (keyed ranges), a counter per status, and each environment's last
//! finished deployment.
//!
//! Key layout (this module owns it; nothing else builds these keys):
//! - `HISTORY`: `<inverted created ms>/<id>` → [`HistoryEntry`]
//! - `HISTORY_BY_STATUS`: `<status>/<history key>` → the [`HistoryEntry`] (a copy, so a page
//!   by status is one range read)
//! - `HISTORY_BY_ENVIRONMENT`: `<environment>/<history key>` → `""`
//! - `COUNTS`: `<status>` → deployments in that status; `COUNTS_BY_ENVIRONMENT`:
//!   `<environment>` → deployments that include it (kept with atomic additions)
//! - `LAST_DEPLOYMENT`: `<environment>` → [`LastDeployment`]
//!
//! The index entries are written in the same store transaction as the history entry they
//! describe, so they never disagree after a crash. An entry names only its first environments
//! ([`crate::deployment::LISTED_ENVIRONMENTS`]); the writes that index every environment take
//! the full lists from the deployment's record ([`Members`]).

use std::collections::BTreeMap;

use plugin_guest::StoreOp;
use serde::{Deserialize, Serialize};

use crate::{
    deployment::{HistoryEntry, Phase},
    model::{DeploymentId, EnvironmentId, Timestamp},
    persist::records::{self, collection, Records, StoreError},
};

/// Collections of the indexes.
pub mod index {
    pub const BY_STATUS: &str = "deployment_mcp.history_by_status";
    pub const BY_ENVIRONMENT: &str = "deployment_mcp.history_by_environment";
    pub const COUNTS: &str = "deployment_mcp.history_counts";
    pub const COUNTS_BY_ENVIRONMENT: &str = "deployment_mcp.history_counts_by_environment";
    pub const LAST_DEPLOYMENT: &str = "deployment_mcp.last_deployment";
}

/// The version of the index layout; a store without it (written by an older release) is indexed
/// once at start.
const INDEX_VERSION: &str = "2";
const INDEX_MARKER: &str = "history_index";
/// Rows read per page, and writes per transaction when indexing an existing history.
const PAGE: u32 = 500;

/// An environment's last finished deployment, for the dashboard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastDeployment {
    pub deployment_id: DeploymentId,
    pub status: Phase,
    pub succeeded: bool,
    #[serde(default)]
    pub finished_at: Option<Timestamp>,
}

/// What `/history` can filter on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    pub status: Option<Phase>,
    pub environment: Option<String>,
}

/// One page of history, newest first.
#[derive(Debug, Clone, Default)]
pub struct Page {
    pub entries: Vec<(String, HistoryEntry)>,
    /// Every entry that matches the filter.
    pub total: u64,
    /// The key to continue after, when there are more.
    pub next_cursor: Option<String>,
}

fn by_status_key(status: Phase, history_key: &str) -> String {
    format!("{}/{history_key}", status.as_str())
}

fn by_environment_key(environment: &str, history_key: &str) -> String {
    format!("{environment}/{history_key}")
}

/// The write that makes a finished deployment `environment`'s last one.
fn last_deployment_op(
    entry: &HistoryEntry,
    failed: &std::collections::HashSet<&str>,
    environment: &str,
) -> Result<StoreOp, StoreError> {
    let last = LastDeployment {
        deployment_id: entry.deployment_id.clone(),
        status: entry.status,
        succeeded: !failed.contains(environment),
        finished_at: entry.finished_at,
    };
    Ok(StoreOp::put(
        index::LAST_DEPLOYMENT,
        environment,
        records::encode(index::LAST_DEPLOYMENT, environment, &last)?,
    ))
}

/// A deployment's environments in full, for the index writes that name each of them (its
/// history entry lists only the first few).
#[derive(Debug, Clone, Copy)]
pub struct Members<'a> {
    /// Every environment, from the record.
    pub environments: &'a [EnvironmentId],
    /// Every environment that did not succeed, once it ended.
    pub failed: &'a [EnvironmentId],
}

/// A set, so a deployment of many environments with many failures is not quadratic.
fn failed_set(failed: &[EnvironmentId]) -> std::collections::HashSet<&str> {
    failed.iter().map(EnvironmentId::as_str).collect()
}

/// The writes that index a deployment just recorded (its history entry is written beside them);
/// `environments` are all of its environments.
pub fn created_ops(
    history_key: &str,
    entry: &HistoryEntry,
    environments: &[EnvironmentId],
) -> Result<Vec<StoreOp>, StoreError> {
    let mut ops = Vec::with_capacity(environments.len() * 2 + 2);
    let status_key = by_status_key(entry.status, history_key);
    ops.push(StoreOp::put(
        index::BY_STATUS,
        &status_key,
        records::encode(index::BY_STATUS, &status_key, entry)?,
    ));
    ops.push(StoreOp::add(index::COUNTS, entry.status.as_str(), 1));
    for environment in environments {
        ops.push(StoreOp::put(
            index::BY_ENVIRONMENT,
            &by_environment_key(environment, history_key),
            String::new(),
        ));
        ops.push(StoreOp::add(index::COUNTS_BY_ENVIRONMENT, environment, 1));
    }
    Ok(ops)
}

/// The writes that keep the indexes in step with a deployment's entry, whose status was `from`
/// when last written: the status index's copy (moved when the status changed), the counters,
/// and, once it ended, its environments' last deployment.
pub fn moved_ops(
    history_key: &str,
    from: Phase,
    entry: &HistoryEntry,
    members: Members<'_>,
) -> Result<Vec<StoreOp>, StoreError> {
    let mut ops = Vec::new();
    if from != entry.status {
        ops.push(StoreOp::delete(
            index::BY_STATUS,
            &by_status_key(from, history_key),
        ));
        ops.push(StoreOp::add(index::COUNTS, from.as_str(), -1));
        ops.push(StoreOp::add(index::COUNTS, entry.status.as_str(), 1));
    }
    let status_key = by_status_key(entry.status, history_key);
    ops.push(StoreOp::put(
        index::BY_STATUS,
        &status_key,
        records::encode(index::BY_STATUS, &status_key, entry)?,
    ));
    if entry.status.is_terminal() && !from.is_terminal() {
        let failed = failed_set(members.failed);
        for environment in members.environments {
            ops.push(last_deployment_op(entry, &failed, environment)?);
        }
    }
    Ok(ops)
}

/// The writes that delete a deployment's history entry and its index entries; `environments`
/// are all of its environments.
pub fn deleted_ops(
    history_key: &str,
    entry: &HistoryEntry,
    environments: &[EnvironmentId],
) -> Vec<StoreOp> {
    let mut ops = Vec::with_capacity(environments.len() * 2 + 3);
    ops.push(StoreOp::delete(collection::HISTORY, history_key));
    ops.push(StoreOp::delete(
        index::BY_STATUS,
        &by_status_key(entry.status, history_key),
    ));
    ops.push(StoreOp::add(index::COUNTS, entry.status.as_str(), -1));
    for environment in environments {
        ops.push(StoreOp::delete(
            index::BY_ENVIRONMENT,
            &by_environment_key(environment, history_key),
        ));
        ops.push(StoreOp::add(index::COUNTS_BY_ENVIRONMENT, environment, -1));
    }
    ops
}

/// Typed access to the history and its indexes.
#[derive(Clone)]
pub struct History {
    records: Records,
}

impl History {
    pub fn new(records: Records) -> History {
        History { records }
    }

    /// Deployments by status.
    pub async fn counts(&self) -> Result<BTreeMap<String, u64>, StoreError> {
        Ok(self
            .records
            .page(index::COUNTS, None, 64)
            .await?
            .into_iter()
            .filter_map(|(status, text)| {
                let count = text.trim().parse::<u64>().ok()?;
                (count > 0).then_some((status, count))
            })
            .collect())
    }

    /// An environment's last finished deployment.
    pub async fn last_deployments(&self) -> Result<BTreeMap<String, LastDeployment>, StoreError> {
        Ok(self
            .records
            .scan::<LastDeployment>(index::LAST_DEPLOYMENT, "")
            .await?
            .into_iter()
            .collect())
    }

    /// The newest entries, first `limit` of them (key order is newest first).
    pub async fn newest(&self, limit: u32) -> Result<Vec<(String, HistoryEntry)>, StoreError> {
        self.decode_page(self.records.page(collection::HISTORY, None, limit).await?)
    }

    /// Entries after `after` (a history key), in order.
    /// The newest `count` entries that `wanted` accepts, newest first, reading pages newest
    /// first and stopping once there are `count`.
    pub async fn newest_where(
        &self,
        count: usize,
        wanted: impl Fn(&HistoryEntry) -> bool,
    ) -> Result<Vec<HistoryEntry>, StoreError> {
        if count == 0 {
            return Ok(Vec::new());
        }
        let page_size = count.clamp(16, 200);
        let mut found = Vec::with_capacity(count);
        let mut after = None;
        loop {
            let page = self.after(after.take(), page_size as u32).await?;
            let full = page.len() == page_size;
            for (key, entry) in page {
                after = Some(key);
                if wanted(&entry) {
                    found.push(entry);
                    if found.len() == count {
                        return Ok(found);
                    }
                }
            }
            if !full {
                return Ok(found);
            }
        }
    }

    /// The newest `count` finished deployments, newest first. Only running ones are passed
    /// over on the way, and they are few and the newest: the cost does not grow with history.
    pub async fn newest_finished(&self, count: usize) -> Result<Vec<HistoryEntry>, StoreError> {
        self.newest_where(count, |entry| entry.status.is_terminal())
            .await
    }

    pub async fn after(
        &self,
        after: Option<String>,
        limit: u32,
    ) -> Result<Vec<(String, HistoryEntry)>, StoreError> {
        self.decode_page(self.records.page(collection::HISTORY, after, limit).await?)
    }

    fn decode_page(
        &self,
        rows: Vec<(String, String)>,
    ) -> Result<Vec<(String, HistoryEntry)>, StoreError> {
        rows.into_iter()
            .map(|(key, text)| {
                serde_json::from_str(&text)
                    .map(|entry| (key.clone(), entry))
                    .map_err(|error| StoreError::Decode {
                        collection: collection::HISTORY.to_owned(),
                        key: key.clone(),
                        message: error.to_string(),
                    })
            })
            .collect()
    }

    /// One page of the entries that match `filter`, newest first, after `cursor`.
    pub async fn page(
        &self,
        filter: &Filter,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Page, StoreError> {
        let counts = self.counts().await?;
        match (&filter.environment, filter.status) {
            (None, None) => {
                let mut entries = self
                    .after(cursor.map(str::to_owned), limit as u32 + 1)
                    .await?;
                Ok(Self::cut(&mut entries, limit, counts.values().sum()))
            }
            (None, Some(status)) => {
                let start = match cursor {
                    Some(cursor) => by_status_key(status, cursor),
                    None => format!("{}/", status.as_str()),
                };
                let head = format!("{}/", status.as_str());
                let rows = self
                    .records
                    .page(index::BY_STATUS, Some(start), limit as u32 + 1)
                    .await?
                    .into_iter()
                    .take_while(|(key, _)| key.starts_with(&head))
                    .map(|(key, text)| (key[head.len()..].to_owned(), text))
                    .collect();
                let mut entries = self.decode_page(rows)?;
                let total = counts.get(status.as_str()).copied().unwrap_or(0);
                Ok(Self::cut(&mut entries, limit, total))
            }
            (Some(environment), status) => {
                // Walk the environment's own index (its history, not everyone's), fetching
                // entries only as far as the page needs. Its count is a counter; with a status
                // too, the count walks the environment's history.
                let total = match status {
                    None => self
                        .records
                        .get_raw(index::COUNTS_BY_ENVIRONMENT, environment)
                        .await?
                        .and_then(|text| text.trim().parse().ok())
                        .unwrap_or(0),
                    Some(_) => self.count_environment(environment, status).await?,
                };
                let mut matching = Vec::new();
                let mut after = cursor.map(str::to_owned);
                // Without a status every entry matches: read just the page's keys.
                let step = if status.is_none() {
                    limit + 1
                } else {
                    PAGE as usize
                };
                while matching.len() <= limit {
                    let keys = self
                        .index_keys(index::BY_ENVIRONMENT, environment, after.as_deref(), step)
                        .await?;
                    let full = keys.len() == step;
                    after = keys.last().cloned();
                    for (key, entry) in self.entries(keys).await? {
                        if status.is_none_or(|status| entry.status == status) {
                            matching.push((key, entry));
                        }
                    }
                    if !full {
                        break;
                    }
                }
                Ok(Self::cut(&mut matching, limit, total))
            }
        }
    }

    async fn count_environment(
        &self,
        environment: &str,
        status: Option<Phase>,
    ) -> Result<u64, StoreError> {
        let mut total = 0;
        let mut after = None;
        loop {
            let keys = self
                .index_keys(
                    index::BY_ENVIRONMENT,
                    environment,
                    after.as_deref(),
                    PAGE as usize,
                )
                .await?;
            let full = keys.len() == PAGE as usize;
            after = keys.last().cloned();
            total += match status {
                None => keys.len() as u64,
                Some(status) => self
                    .entries(keys)
                    .await?
                    .iter()
                    .filter(|(_, entry)| entry.status == status)
                    .count() as u64,
            };
            if !full {
                return Ok(total);
            }
        }
    }

    fn cut(entries: &mut Vec<(String, HistoryEntry)>, limit: usize, total: u64) -> Page {
        let more = entries.len() > limit;
        entries.truncate(limit);
        Page {
            next_cursor: if more {
                entries.last().map(|(key, _)| key.clone())
            } else {
                None
            },
            entries: std::mem::take(entries),
            total,
        }
    }

    /// History keys from an index range `<prefix>/…`, after the history key `cursor`.
    async fn index_keys(
        &self,
        collection: &'static str,
        prefix: &str,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        let start = match cursor {
            Some(cursor) => format!("{prefix}/{cursor}"),
            None => format!("{prefix}/"),
        };
        let rows = self
            .records
            .page(collection, Some(start), limit as u32)
            .await?;
        let head = format!("{prefix}/");
        Ok(rows
            .into_iter()
            .map(|(key, _)| key)
            .take_while(|key| key.starts_with(&head))
            .map(|key| key[head.len()..].to_owned())
            .collect())
    }

    async fn entries(&self, keys: Vec<String>) -> Result<Vec<(String, HistoryEntry)>, StoreError> {
        let mut entries = Vec::with_capacity(keys.len());
        for key in keys {
            if let Some(entry) = self
                .records
                .get::<HistoryEntry>(collection::HISTORY, &key)
                .await?
            {
                entries.push((key, entry));
            }
        }
        Ok(entries)
    }

    /// Every deployment that has not ended, found through the status index.
    pub async fn unfinished(&self) -> Result<Vec<(String, HistoryEntry)>, StoreError> {
        let mut found = Vec::new();
        for status in Phase::ALL.iter().filter(|status| !status.is_terminal()) {
            let mut after: Option<String> = None;
            loop {
                let keys = self
                    .index_keys(
                        index::BY_STATUS,
                        status.as_str(),
                        after.as_deref(),
                        PAGE as usize,
                    )
                    .await?;
                let full = keys.len() == PAGE as usize;
                after = keys.last().cloned();
                found.extend(self.entries(keys).await?);
                if !full {
                    break;
                }
            }
        }
        Ok(found)
    }

    /// Indexes a history written by a release without these indexes, once.
    pub async fn index_existing(&self) -> Result<usize, StoreError> {
        if self
            .records
            .get_raw(collection::META, INDEX_MARKER)
            .await?
            .as_deref()
            == Some(INDEX_VERSION)
        {
            return Ok(0);
        }
        let mut counts: BTreeMap<&'static str, i64> = BTreeMap::new();
        let mut environment_counts: BTreeMap<String, i64> = BTreeMap::new();
        let mut last_seen = std::collections::HashSet::new();
        let mut ops = Vec::new();
        let mut indexed = 0;
        let mut after = None;
        loop {
            let page = self.after(after.clone(), PAGE).await?;
            let full = page.len() == PAGE as usize;
            for (key, entry) in page {
                after = Some(key.clone());
                let status_key = by_status_key(entry.status, &key);
                ops.push(StoreOp::put(
                    index::BY_STATUS,
                    &status_key,
                    records::encode(index::BY_STATUS, &status_key, &entry)?,
                ));
                *counts.entry(entry.status.as_str()).or_default() += 1;
                // Entries written before the indexes (the only ones this reads) list every
                // environment; later ones are indexed as they are written.
                let failed = failed_set(&entry.failed_environments);
                for environment in &entry.environments {
                    ops.push(StoreOp::put(
                        index::BY_ENVIRONMENT,
                        &by_environment_key(environment, &key),
                        String::new(),
                    ));
                    *environment_counts
                        .entry(environment.to_string())
                        .or_default() += 1;
                    // Newest first: the first finished entry seen is the last deployment.
                    if entry.status.is_terminal() && last_seen.insert(environment.clone()) {
                        ops.push(last_deployment_op(&entry, &failed, environment)?);
                    }
                }
                indexed += 1;
                if ops.len() >= PAGE as usize * 4 {
                    self.records.apply(std::mem::take(&mut ops)).await?;
                }
            }
            if !full {
                break;
            }
        }
        for (status, count) in counts {
            ops.push(StoreOp::put(index::COUNTS, status, count.to_string()));
        }
        for (environment, count) in environment_counts {
            ops.push(StoreOp::put(
                index::COUNTS_BY_ENVIRONMENT,
                &environment,
                count.to_string(),
            ));
            if ops.len() >= PAGE as usize * 4 {
                self.records.apply(std::mem::take(&mut ops)).await?;
            }
        }
        ops.push(StoreOp::put(
            collection::META,
            INDEX_MARKER,
            INDEX_VERSION.to_owned(),
        ));
        self.records.apply(ops).await?;
        Ok(indexed)
    }
}
