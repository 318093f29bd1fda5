//! The audit log: who did what, through which door, and how it ended, as one append-only chain
//! per store (per cluster, on a shared PostgreSQL).
//!
//! An entry is written by the store itself, inside the transaction of the change it records
//! ([`crate::RecordStore::apply_audited`]): a crash can leave neither a change without its entry
//! nor an entry of a change that did not happen. The caller hands a [`AuditDraft`]; the store
//! gives it the next `seq` and the time, and seals it: `hash = sha256(prev_hash ‖ canonical
//! entry)`, where the canonical entry is the entry's JSON without `prev_hash` and `hash`, keys
//! sorted, no spaces. A head row (the last `seq` and `hash`) moves in the same transaction, so
//! an entry cut off the end is noticed too.
//!
//! Retention prunes the oldest entries behind a checkpoint (the last pruned entry's `seq` and
//! `hash`), from which [`verify`] starts. Both stores refuse to update an entry and to delete one
//! in front of the checkpoint (triggers), so the chain is only changed by someone who first
//! removes those.

pub(crate) mod postgres;
mod query;
pub(crate) mod sqlite;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::StoreError;

pub(crate) use query::{select, Param};
pub use query::{AuditQuery, MAX_AUDIT_PAGE};

/// The `prev_hash` of the first entry ever written.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
/// The largest draft, as JSON.
const MAX_DRAFT_BYTES: usize = 1024 * 1024;
/// The most environments one entry names.
const MAX_ENVIRONMENTS: usize = 100_000;

/// Whose key made the call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditActor {
    pub key_name: String,
    pub role: String,
}

/// Through which door the call came.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuditVia {
    Rest,
    Mcp,
    Cli,
    Dashboard,
    Schedule,
    Auto,
}

impl AuditVia {
    pub fn as_str(self) -> &'static str {
        match self {
            AuditVia::Rest => "rest",
            AuditVia::Mcp => "mcp",
            AuditVia::Cli => "cli",
            AuditVia::Dashboard => "dashboard",
            AuditVia::Schedule => "schedule",
            AuditVia::Auto => "auto",
        }
    }
}

/// How the call ended: done, refused (401/403), or tried and failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuditStatus {
    Ok,
    Denied,
    Failed,
}

impl AuditStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            AuditStatus::Ok => "ok",
            AuditStatus::Denied => "denied",
            AuditStatus::Failed => "failed",
        }
    }

    /// The outcome an HTTP answer's status means.
    pub fn of_http(status: u16) -> AuditStatus {
        match status {
            200..=399 => AuditStatus::Ok,
            401 | 403 => AuditStatus::Denied,
            _ => AuditStatus::Failed,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditOutcome {
    pub status: AuditStatus,
    /// The error's machine code (never its message, which may name paths or settings).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The HTTP status the caller got, for calls over HTTP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_status: Option<u16>,
}

/// What a caller hands the store: an entry without its place in the chain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditDraft {
    /// `None`: no key (a refused call without one, or the host's own schedule).
    pub actor: Option<AuditActor>,
    pub via: AuditVia,
    /// The MCP tool, for calls through MCP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool: Option<String>,
    /// What was asked, `subject.verb` (`deployment.trigger`, `environment.update`).
    pub action: String,
    /// What it was asked of (`deployment:<id>`, `environment:<id>`, `node:<id>`).
    pub resource: String,
    pub outcome: AuditOutcome,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Before and after of what changed, secrets as `***`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changes: Option<Value>,
    /// Every environment the call concerned (the `environment` filter reads an index of them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub environments: Vec<String>,
}

impl AuditDraft {
    /// Checks the draft's limits, naming the field that is out of them.
    pub fn check(&self) -> Result<(), StoreError> {
        let bad = |field: &'static str, expected: &str| {
            Err(StoreError::BadAudit(format!(
                "{field}: expected {expected}"
            )))
        };
        let action_ok = !self.action.is_empty()
            && self.action.len() <= 128
            && self
                .action
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
        if !action_ok {
            return bad("action", "1 to 128 of a-z, 0-9, '.', '_', '-'");
        }
        if self.resource.is_empty() || self.resource.len() > 512 {
            return bad("resource", "1 to 512 bytes");
        }
        let short =
            |text: &Option<String>, limit: usize| text.as_ref().is_some_and(|t| t.len() > limit);
        if short(&self.tool, 128) {
            return bad("tool", "at most 128 bytes");
        }
        if short(&self.request_id, 128) {
            return bad("request_id", "at most 128 bytes");
        }
        if short(&self.reason, 4096) {
            return bad("reason", "at most 4096 bytes");
        }
        if short(&self.outcome.error, 256) {
            return bad("outcome.error", "at most 256 bytes");
        }
        if let Some(actor) = &self.actor {
            if actor.key_name.is_empty() || actor.key_name.len() > 128 || actor.role.len() > 32 {
                return bad("actor", "a key name of 1 to 128 bytes and a role");
            }
        }
        if self.environments.len() > MAX_ENVIRONMENTS
            || self
                .environments
                .iter()
                .any(|id| id.is_empty() || id.len() > 256)
        {
            return bad("environments", "at most 100000 ids of 1 to 256 bytes");
        }
        Ok(())
    }
}

/// An entry as it is chained: its number, its time and what the draft said.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub seq: u64,
    /// UTC, to the millisecond: `2026-01-31T12:00:00.123Z` (ordered as text).
    pub at: String,
    #[serde(flatten)]
    pub draft: AuditDraft,
}

impl AuditEntry {
    /// The canonical text: JSON with every object's keys sorted (`serde_json`'s map is ordered
    /// by key; a unit test pins the bytes), no spaces.
    pub fn canonical(&self) -> Result<String, StoreError> {
        let value = serde_json::to_value(self)
            .map_err(|error| StoreError::BadAudit(format!("entry does not encode: {error}")))?;
        Ok(value.to_string())
    }
}

/// `sha256(prev_hash ‖ canonical)`, lowercase hex.
pub fn chain_hash(prev_hash: &str, canonical: &str) -> String {
    let mut digest = Sha256::new();
    digest.update(prev_hash.as_bytes());
    digest.update(canonical.as_bytes());
    hex::encode(digest.finalize())
}

/// An entry with its place in the chain, as a store keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRecord {
    pub seq: u64,
    /// The canonical entry, exactly the bytes that were hashed.
    pub entry: String,
    pub prev_hash: String,
    pub hash: String,
}

impl AuditRecord {
    /// The entry as the API shows it: its fields with `prev_hash` and `hash`, one line of JSON.
    pub fn to_json(&self) -> String {
        match serde_json::from_str::<Value>(&self.entry) {
            Ok(Value::Object(mut fields)) => {
                fields.insert("prev_hash".into(), Value::String(self.prev_hash.clone()));
                fields.insert("hash".into(), Value::String(self.hash.clone()));
                Value::Object(fields).to_string()
            }
            // Only a hand-edited row gets here; `audit verify` names it.
            _ => serde_json::json!({
                "seq": self.seq, "unreadable": true,
                "prev_hash": self.prev_hash, "hash": self.hash,
            })
            .to_string(),
        }
    }
}

/// The columns a store indexes beside the entry's text; [`verify`] checks they say what the
/// text says, so an edited column is caught like an edited entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditColumns {
    pub at: String,
    pub actor: Option<String>,
    pub role: Option<String>,
    pub via: String,
    pub tool: Option<String>,
    pub action: String,
    pub resource: String,
    pub outcome: String,
    pub request_id: Option<String>,
}

impl AuditColumns {
    pub fn of(entry: &AuditEntry) -> AuditColumns {
        let draft = &entry.draft;
        AuditColumns {
            at: entry.at.clone(),
            actor: draft.actor.as_ref().map(|actor| actor.key_name.clone()),
            role: draft.actor.as_ref().map(|actor| actor.role.clone()),
            via: draft.via.as_str().to_owned(),
            tool: draft.tool.clone(),
            action: draft.action.clone(),
            resource: draft.resource.clone(),
            outcome: draft.outcome.status.as_str().to_owned(),
            request_id: draft.request_id.clone(),
        }
    }
}

/// One stored row: the record and its indexed columns.
#[derive(Debug, Clone)]
pub struct AuditRow {
    pub record: AuditRecord,
    pub columns: AuditColumns,
}

/// An entry sealed for writing.
pub(crate) struct Sealed {
    pub(crate) entry: AuditEntry,
    pub(crate) record: AuditRecord,
    pub(crate) columns: AuditColumns,
}

/// The time an entry after one written at `previous` gets: the writer's clock, or the
/// predecessor's time when the clock is behind it (another node's, or stepped back), so times
/// never go backwards along the chain and a time range is a range of `seq`.
pub(crate) fn next_time(previous: &str) -> String {
    let now = now_text();
    if previous > now.as_str() {
        previous.to_owned()
    } else {
        now
    }
}

/// Seals `draft` after the chain's last entry (`prev`: its seq and hash).
pub(crate) fn seal(
    prev: &(u64, String),
    draft: &AuditDraft,
    at: &str,
) -> Result<Sealed, StoreError> {
    draft.check()?;
    let entry = AuditEntry {
        seq: prev.0 + 1,
        at: at.to_owned(),
        draft: draft.clone(),
    };
    let canonical = entry.canonical()?;
    if canonical.len() > MAX_DRAFT_BYTES {
        return Err(StoreError::BadAudit(format!(
            "entry is {} bytes; the limit is {MAX_DRAFT_BYTES}",
            canonical.len()
        )));
    }
    let hash = chain_hash(&prev.1, &canonical);
    let columns = AuditColumns::of(&entry);
    Ok(Sealed {
        record: AuditRecord {
            seq: entry.seq,
            entry: canonical,
            prev_hash: prev.1.clone(),
            hash,
        },
        columns,
        entry,
    })
}

/// The time an entry is written, as entries carry it.
pub fn now_text() -> String {
    format_time(time::OffsetDateTime::now_utc())
}

/// A UTC time in the entries' form (`2026-01-31T12:00:00.123Z`).
pub fn format_time(at: time::OffsetDateTime) -> String {
    let at = at.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        at.year(),
        u8::from(at.month()),
        at.day(),
        at.hour(),
        at.minute(),
        at.second(),
        at.millisecond()
    )
}

/// Where the chain starts and ends: the checkpoint retention left (the last pruned entry), and
/// the head (the last entry written).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditBounds {
    pub checkpoint: Option<(u64, String)>,
    pub head: Option<(u64, String)>,
}

/// What [`verify`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Every entry from the checkpoint to the head is there, unchanged and in order.
    Intact {
        entries: u64,
        /// The checkpoint's seq (0: nothing was pruned).
        from: u64,
        /// The head's seq (0: empty).
        to: u64,
    },
    /// The first entry that is changed, missing or out of order, and how.
    Broken { seq: u64, problem: String },
}

/// Rows a verify or an export reads at a time.
pub const SCAN_PAGE: u32 = 1000;

/// Walks the chain from its checkpoint to its head and names the first entry that is changed,
/// missing or out of order.
pub fn verify(store: &dyn crate::RecordStore) -> Result<Verdict, StoreError> {
    let bounds = store.audit_bounds()?;
    let (from, from_hash) = bounds.checkpoint.clone().unwrap_or((0, GENESIS.to_owned()));
    let mut expected = from + 1;
    let mut prev_hash = from_hash;
    let mut entries = 0u64;
    let mut after = from;
    loop {
        let rows = store.audit_scan(after, SCAN_PAGE)?;
        let Some(last) = rows.last() else { break };
        after = last.record.seq;
        for row in rows {
            if let Some(problem) = check_row(&row, expected, &prev_hash) {
                return Ok(problem);
            }
            prev_hash = row.record.hash;
            expected += 1;
            entries += 1;
        }
    }
    let last = expected - 1;
    match bounds.head {
        Some((head, _)) if head > last => Ok(Verdict::Broken {
            seq: last + 1,
            problem: format!(
                "entry {} is missing (the chain's head is entry {head}, the last entry found is {last})",
                last + 1
            ),
        }),
        Some((head, hash)) if head == last && hash != prev_hash => Ok(Verdict::Broken {
            seq: last,
            problem: format!("entry {last} changed (its hash is not the one the chain's head holds)"),
        }),
        _ => Ok(Verdict::Intact {
            entries,
            from,
            to: last,
        }),
    }
}

fn check_row(row: &AuditRow, expected: u64, prev_hash: &str) -> Option<Verdict> {
    let seq = row.record.seq;
    if seq > expected {
        return Some(Verdict::Broken {
            seq: expected,
            problem: format!("entry {expected} is missing (the next entry found is {seq})"),
        });
    }
    let broken = |problem: String| Some(Verdict::Broken { seq, problem });
    let entry: AuditEntry = match serde_json::from_str(&row.record.entry) {
        Ok(entry) => entry,
        Err(error) => return broken(format!("entry {seq} changed (it does not read: {error})")),
    };
    if entry.seq != seq {
        return broken(format!(
            "entry {seq} is out of order (its text says it is entry {})",
            entry.seq
        ));
    }
    if row.record.prev_hash != prev_hash {
        return broken(format!(
            "entry {seq} does not follow entry {} (its prev_hash is not that entry's hash)",
            seq - 1
        ));
    }
    if chain_hash(prev_hash, &row.record.entry) != row.record.hash {
        return broken(format!(
            "entry {seq} changed (its hash does not match its content)"
        ));
    }
    if AuditColumns::of(&entry) != row.columns {
        return broken(format!(
            "entry {seq} changed (its indexed columns do not say what its content says)"
        ));
    }
    None
}

/// Drafts as they cross the plugin ABI (JSON), read; the error names the draft and field.
pub fn read_drafts<'a>(
    texts: impl IntoIterator<Item = &'a str>,
) -> Result<Vec<AuditDraft>, String> {
    texts
        .into_iter()
        .enumerate()
        .map(|(index, text)| {
            serde_json::from_str(text).map_err(|error| format!("audit draft {index}: {error}"))
        })
        .collect()
}

/// One page of a query, as `GET /api/audit` and the plugin ABI answer it:
/// `{"entries":[…],"next_cursor":"<seq>"|null}`, the cursor set when the page is full.
pub fn page_json(store: &dyn crate::RecordStore, query: &AuditQuery) -> Result<String, StoreError> {
    let records = store.audit_query(query)?;
    let full = records.len() >= query.limit.clamp(1, MAX_AUDIT_PAGE) as usize;
    let next_cursor = match records.last() {
        Some(last) if full => Value::String(last.seq.to_string()),
        _ => Value::Null,
    };
    let mut out = String::from("{\"entries\":[");
    for (index, record) in records.iter().enumerate() {
        if index > 0 {
            out.push(',');
        }
        out.push_str(&record.to_json());
    }
    out.push_str("],\"next_cursor\":");
    out.push_str(&next_cursor.to_string());
    out.push('}');
    Ok(out)
}

/// [`page_json`] of a query as JSON text (the plugin ABI's `audit_query`).
pub fn page_json_of(store: &dyn crate::RecordStore, query: &str) -> Result<String, String> {
    let query: AuditQuery =
        serde_json::from_str(query).map_err(|error| format!("audit query: {error}"))?;
    page_json(store, &query).map_err(|error| error.to_string())
}

#[cfg(test)]
mod tests;
