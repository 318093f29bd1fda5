//! The one record store of powerautomation: collections of JSON records kept in an embedded
//! SQLite file, used by the host (which lends it to plugins) and by the in-process host the
//! standalone CLI and the tests run plugins on.
//!
//! - [`Store`]: `put`/`get`/`delete`/`list` by key within a collection, and [`Store::apply`], an
//!   atomic batch whose writes happen only if every condition holds (insert-if-absent,
//!   compare-and-set). Everything a second copy of a plugin, or a second host on the same
//!   database, must not race on goes through it. The operations are plain SQL transactions, so
//!   a PostgreSQL backend can offer the same ones.
//! - [`RecordStore`]: those operations as a trait, which [`Store`], [`PgStore`] (a shared
//!   PostgreSQL server, for several hosts on one database) and the in-memory [`MemoryStore`]
//!   (for tests without a disk) implement alike; on PostgreSQL, also the cluster's event log
//!   (`pa_events`, [`PgStore::append_events`], [`EventListener`]), one order for every node;
//! - [`DataDir`]: the data directory, private (0700, files 0600) and locked for one process:
//!   a second process exits naming the holder instead of touching what the first one runs.

#![forbid(unsafe_code)]

#[cfg(feature = "plugin-api")]
mod abi;
pub mod audit;
mod data_dir;
mod failpoint;
mod memory;
mod pg_events;
mod postgres;
mod store;

#[cfg(feature = "plugin-api")]
pub use abi::{apply_abi, audit_query_abi, delete_abi, get_abi, list_abi, op_from_parts, put_abi};
pub use audit::{
    AuditActor, AuditBounds, AuditDraft, AuditEntry, AuditOutcome, AuditQuery, AuditRecord,
    AuditRow, AuditStatus, AuditVia, Verdict, MAX_AUDIT_PAGE,
};
pub use data_dir::{DataDir, DataDirError};
pub use memory::MemoryStore;
pub use pg_events::{
    EventListener, LoggedEvent, NewEvent, UserView, EVENTS_CHANNEL, LISTENER_NAME,
};
pub use postgres::PgStore;
pub use store::{
    Condition, Conflict, Op, Store, StoreCounts, StoreError, Write, MAX_LIST, MAX_VALUE_LEN,
};

/// The operations of a record store, whatever keeps the records.
pub trait RecordStore: Send + Sync {
    fn put(&self, collection: &str, key: &str, value: &str) -> Result<(), StoreError>;
    fn get(&self, collection: &str, key: &str) -> Result<Option<String>, StoreError>;
    /// Removes `key`; `true` when it existed.
    fn delete(&self, collection: &str, key: &str) -> Result<bool, StoreError>;
    /// Rows of `collection` in key order, after `after`, at most `limit` (capped at
    /// [`MAX_LIST`]).
    fn list(
        &self,
        collection: &str,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<(String, String)>, StoreError>;
    /// Applies every operation at once if every condition holds (checked in order, against the
    /// state before the batch's own writes), else none of them, and returns the first conflict.
    fn apply(&self, ops: &[Op<'_>]) -> Result<Option<Conflict>, StoreError> {
        self.apply_audited(ops, &[])
    }
    /// [`RecordStore::apply`], with `audit` chained onto the audit log in the same transaction
    /// when the batch applies (nothing of either when it does not). With no operations, an
    /// append of entries alone.
    fn apply_audited(
        &self,
        ops: &[Op<'_>],
        audit: &[AuditDraft],
    ) -> Result<Option<Conflict>, StoreError>;
    /// A page of the audit log, newest first.
    fn audit_query(&self, query: &AuditQuery) -> Result<Vec<AuditRecord>, StoreError>;
    /// Entries after `after` in chain order, at most `limit` (capped at [`audit::SCAN_PAGE`]),
    /// with their indexed columns: what `audit verify` and `audit export` read.
    fn audit_scan(&self, after: u64, limit: u32) -> Result<Vec<AuditRow>, StoreError>;
    /// The chain's checkpoint and head.
    fn audit_bounds(&self) -> Result<AuditBounds, StoreError>;
    /// Prunes at most `chunk` of the oldest entries written before `before` (the entries' time
    /// form), moving the checkpoint over them; how many went.
    fn audit_prune(&self, before: &str, chunk: u32) -> Result<u64, StoreError>;
    /// What the store was asked to do since it was opened.
    fn counts(&self) -> StoreCounts;
}
