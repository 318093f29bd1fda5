//! Typed access to the host's store. The store is the source of truth: another copy of this
//! plugin (during a hot swap) and the next start after a crash read exactly what is here.
//!
//! Store calls cross into the host and may wait on SQLite, so they run on the blocking pool,
//! never on the runtime's worker threads.

use plugin_guest::{Conflict, Host, StoreOp};
use serde::{de::DeserializeOwned, Serialize};

/// Collections, all prefixed so they stay apart from other plugins' records.
pub mod collection {
    pub const ENVIRONMENTS: &str = "deployment_mcp.environments";
    /// Secrets of environments (`api_token`, `webhook_secret`), kept apart from the records
    /// every view reads: only a trigger about to run reads them.
    pub const SECRETS: &str = "deployment_mcp.secrets";
    /// `<environment>` → the deployment running it now. Taken atomically for every target
    /// when a deployment starts (insert-if-absent in one batch), released when it ends: two
    /// copies of the plugin (a hot swap) or two hosts cannot both deploy one environment.
    pub const CLAIMS: &str = "deployment_mcp.claims";
    /// Ids of file environments deleted through the API, so a restart does not bring them back.
    pub const DELETED_FILE_ENVIRONMENTS: &str = "deployment_mcp.deleted_file_environments";
    pub const HEALTH: &str = "deployment_mcp.health";
    /// `<environment>` → its deployed and previous version.
    pub const VERSIONS: &str = "deployment_mcp.versions";
    pub const DEPLOYMENTS: &str = "deployment_mcp.deployments";
    /// `<deployment>/<environment>` → per-environment result.
    pub const TARGETS: &str = "deployment_mcp.targets";
    /// `<deployment>/<chunk number>` → a batch of log lines.
    pub const LOGS: &str = "deployment_mcp.logs";
    /// Newest-first index of deployments: `<inverted created ms>/<id>` → history entry.
    pub const HISTORY: &str = "deployment_mcp.history";
    /// Deployments still running: id → their environments and boot.
    pub const ACTIVE: &str = "deployment_mcp.active";
    /// Cancel requests, for a run owned by another copy of the plugin.
    pub const CANCEL: &str = "deployment_mcp.cancel";
    pub const IDEMPOTENCY: &str = "deployment_mcp.idempotency";
    /// `<deployment>` → the sequence number of its last published state event.
    pub const EVENT_SEQUENCES: &str = "deployment_mcp.event_sequences";
    /// Small state records of the plugin itself (e.g. which boot ran the automatic deployment).
    pub const META: &str = "deployment_mcp.meta";
    /// Deployment windows, by id.
    pub const WINDOWS: &str = "deployment_mcp.windows";
    /// Schedules, by id.
    pub const SCHEDULES: &str = "deployment_mcp.schedules";
    /// `<schedule>/<created ms>/<inverted occurrence ms>` → what became of the occurrence,
    /// newest first under each schedule. Taken insert-if-absent in the transaction that creates
    /// the occurrence's deployment (or records it refused or skipped): each occurrence once.
    pub const SCHEDULE_RUNS: &str = "deployment_mcp.schedule_runs";
    /// Subscriptions to notifications, by id (with their secrets).
    pub const SUBSCRIPTIONS: &str = "deployment_mcp.subscriptions";
    /// Notices and requests the notifier has still to turn into deliveries.
    pub const OUTBOX: &str = "deployment_mcp.outbox";
    /// `<subscription>/<delivery id>` → a delivery and its attempts.
    pub const DELIVERIES: &str = "deployment_mcp.deliveries";
    /// The keys of the deliveries still to be sent.
    pub const PENDING_DELIVERIES: &str = "deployment_mcp.pending_deliveries";
    /// The notifier's lease (`leader`) and its beat.
    pub const NOTIFIER: &str = "deployment_mcp.notifier";
    /// The host's own records, which it shares with its plugins (read only).
    pub const HOST: &str = "host";
    /// In [`HOST`]: which process is running and whether it is stopping.
    pub const HOST_LIFECYCLE: &str = "lifecycle";
    /// The host's records of the nodes that share the store (read only).
    pub const CLUSTER_NODES: &str = "cluster_nodes";
}

/// What went wrong with the store: the host's own message (it names the collection and the
/// cause), a call that did not finish, or a record that does not encode or decode (named).
/// Layers above keep it as text where they add their own context.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("{0}")]
    Host(String),
    #[error("store call did not finish: {0}")]
    Interrupted(String),
    #[error("cannot encode {collection}/{key}: {message}")]
    Encode {
        collection: String,
        key: String,
        message: String,
    },
    #[error("stored record {collection}/{key} is unreadable: {message}")]
    Decode {
        collection: String,
        key: String,
        message: String,
    },
}

impl From<StoreError> for String {
    fn from(error: StoreError) -> String {
        error.to_string()
    }
}

/// The largest page the store hands out.
const PAGE: u32 = 10_000;
/// The first page of a prefix scan. Pages grow fourfold up to [`PAGE`]: the store has no end
/// bound, so a page may run past the prefix into the next keys, and a small first page keeps a
/// scan of a few rows from reading thousands of others' (a deployment's rows are followed by
/// every later deployment's).
const FIRST_SCAN_PAGE: u32 = 64;

#[derive(Clone)]
pub struct Records {
    host: Host,
}

impl Records {
    pub fn new(host: Host) -> Records {
        Records { host }
    }

    pub fn host(&self) -> &Host {
        &self.host
    }

    async fn blocking<T: Send + 'static>(
        &self,
        call: impl FnOnce(&Host) -> Result<T, String> + Send + 'static,
    ) -> Result<T, StoreError> {
        let host = self.host.clone();
        tokio::task::spawn_blocking(move || call(&host))
            .await
            .map_err(|error| StoreError::Interrupted(error.to_string()))?
            .map_err(StoreError::Host)
    }

    pub async fn put<T: Serialize>(
        &self,
        collection: &'static str,
        key: &str,
        value: &T,
    ) -> Result<(), StoreError> {
        let text = encode(collection, key, value)?;
        let key = key.to_owned();
        self.blocking(move |host| host.store_put(collection, &key, &text))
            .await
    }

    pub async fn get<T: DeserializeOwned>(
        &self,
        collection: &'static str,
        key: &str,
    ) -> Result<Option<T>, StoreError> {
        let owned = key.to_owned();
        let text = self
            .blocking(move |host| host.store_get(collection, &owned))
            .await?;
        text.map(|text| decode(collection, key, &text)).transpose()
    }

    /// The stored text of a record, for a later compare-and-set on exactly that value.
    pub async fn get_raw(
        &self,
        collection: &'static str,
        key: &str,
    ) -> Result<Option<String>, StoreError> {
        let key = key.to_owned();
        self.blocking(move |host| host.store_get(collection, &key))
            .await
    }

    /// Applies `ops` in one transaction if every condition holds; else nothing, and the first
    /// conflict.
    pub async fn apply(&self, ops: Vec<StoreOp>) -> Result<Option<Conflict>, StoreError> {
        if ops.is_empty() {
            return Ok(None);
        }
        self.blocking(move |host| host.store_apply(&ops)).await
    }

    /// [`Records::apply`] as the change of the call this task serves (`crate::audit`): the
    /// call's entry, described further by `describe`, goes into the same transaction, so the
    /// change and its entry are written together or not at all. Outside a call, or once the
    /// call's entry is written, a plain batch.
    pub async fn apply_for_call(
        &self,
        ops: Vec<StoreOp>,
        describe: impl FnOnce(&mut crate::audit::Subject),
    ) -> Result<Option<Conflict>, StoreError> {
        let Some((call, draft)) = crate::audit::pending(describe) else {
            return self.apply(ops).await;
        };
        self.apply_with_entry(ops, &call, draft).await
    }

    /// `ops` with `draft`, the entry of `call`, marked written once the batch applies.
    async fn apply_with_entry(
        &self,
        ops: Vec<StoreOp>,
        call: &crate::audit::AuditCall,
        draft: String,
    ) -> Result<Option<Conflict>, StoreError> {
        let conflict = self
            .blocking(move |host| host.store_apply_audited(&ops, &[draft]))
            .await?;
        if conflict.is_none() {
            call.mark_recorded();
        }
        Ok(conflict)
    }

    /// Appends the entry of `call` with `outcome` alone (a call whose change went through no
    /// transaction of its own, or that failed).
    pub async fn record_call(
        &self,
        call: &crate::audit::AuditCall,
        outcome: &crate::audit::Outcome,
    ) -> Result<(), StoreError> {
        let draft = call.draft(outcome);
        self.blocking(move |host| host.store_apply_audited(&[], &[draft]).map(|_| ()))
            .await?;
        call.mark_recorded();
        Ok(())
    }

    /// Applies `ops` with the entry of `call` at `outcome` in the same transaction (a change
    /// that records a failure, such as a schedule's refused occurrence); the entry is written
    /// only if the batch applies.
    pub async fn apply_recording(
        &self,
        ops: Vec<StoreOp>,
        call: &crate::audit::AuditCall,
        outcome: &crate::audit::Outcome,
    ) -> Result<Option<Conflict>, StoreError> {
        self.apply_with_entry(ops, call, call.draft(outcome)).await
    }

    /// A page of the host's audit log (`query` and the answer as JSON).
    pub async fn audit_page(&self, query: String) -> Result<String, StoreError> {
        self.blocking(move |host| host.audit_query(&query)).await
    }

    pub async fn delete(&self, collection: &'static str, key: &str) -> Result<bool, StoreError> {
        let key = key.to_owned();
        self.blocking(move |host| host.store_delete(collection, &key))
            .await
    }

    /// Rows after `after` in key order, at most `limit`.
    pub async fn page(
        &self,
        collection: &'static str,
        after: Option<String>,
        limit: u32,
    ) -> Result<Vec<(String, String)>, StoreError> {
        self.blocking(move |host| host.store_list(collection, after.as_deref(), limit))
            .await
    }

    /// Every row of `collection` as stored, in key order (read a page at a time): for the
    /// small collections a look at the whole is made of (running entries, claims, nodes).
    pub async fn rows(
        &self,
        collection: &'static str,
    ) -> Result<Vec<(String, String)>, StoreError> {
        let mut rows: Vec<(String, String)> = Vec::new();
        loop {
            let after = rows.last().map(|(key, _)| key.clone());
            let page = self.page(collection, after, PAGE).await?;
            let full = page.len() == PAGE as usize;
            rows.extend(page);
            if !full {
                return Ok(rows);
            }
        }
    }

    /// The first `limit` rows whose key starts with `prefix`, in key order, as stored.
    pub async fn first_with_prefix(
        &self,
        collection: &'static str,
        prefix: &str,
        limit: usize,
    ) -> Result<Vec<(String, String)>, StoreError> {
        let mut rows = Vec::new();
        // Keys sort right after the prefix minus its last byte; start there and stop past it.
        let mut after = if prefix.is_empty() {
            None
        } else {
            Some(prefix_floor(prefix))
        };
        let mut size = FIRST_SCAN_PAGE;
        loop {
            let page = self.page(collection, after.clone(), size).await?;
            let full = page.len() == size as usize;
            size = size.saturating_mul(4).min(PAGE);
            for (key, text) in page {
                if !key.starts_with(prefix) {
                    if key.as_str() > prefix {
                        return Ok(rows);
                    }
                    after = Some(key);
                    continue;
                }
                after = Some(key.clone());
                rows.push((key, text));
                if rows.len() >= limit {
                    return Ok(rows);
                }
            }
            if !full {
                return Ok(rows);
            }
        }
    }

    /// Every row whose key starts with `prefix`, in key order, decoded.
    pub async fn scan<T: DeserializeOwned>(
        &self,
        collection: &'static str,
        prefix: &str,
    ) -> Result<Vec<(String, T)>, StoreError> {
        self.first_with_prefix(collection, prefix, usize::MAX)
            .await?
            .into_iter()
            .map(|(key, text)| {
                let value = decode(collection, &key, &text)?;
                Ok((key, value))
            })
            .collect()
    }
}

/// A key that sorts just before every key starting with `prefix`.
fn prefix_floor(prefix: &str) -> String {
    // Keys are compared bytewise; "a/" < "a/<anything>", and nothing between them but "a/"
    // itself, which starts with the prefix and is therefore included by taking its predecessor.
    let mut floor = prefix.to_owned();
    floor.pop();
    floor
}

/// A target record's key: under its deployment, so one range holds a deployment's results.
pub fn target_key(deployment_id: &str, environment_id: &str) -> String {
    format!("{deployment_id}/{environment_id}")
}

/// A chunk of a deployment's log: under its deployment, in order.
pub fn log_key(deployment_id: &str, chunk: u64) -> String {
    format!("{deployment_id}/{chunk:010}")
}

/// A value as the store holds it.
pub fn encode<T: Serialize>(collection: &str, key: &str, value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|error| StoreError::Encode {
        collection: collection.to_owned(),
        key: key.to_owned(),
        message: error.to_string(),
    })
}

pub(super) fn decode<T: DeserializeOwned>(
    collection: &str,
    key: &str,
    text: &str,
) -> Result<T, StoreError> {
    serde_json::from_str(text).map_err(|error| StoreError::Decode {
        collection: collection.to_owned(),
        key: key.to_owned(),
        message: error.to_string(),
    })
}
