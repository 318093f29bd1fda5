//! The SQLite store: one `records` table keyed by `(collection, key)`, WAL mode.
//!
//! Writes go through one connection; reads use a small pool so readers never queue behind each
//! other or behind a writer. Every write is its own transaction, and [`Store::apply`] makes a
//! batch one transaction whose conditions are checked inside it.
//!
//! Durability: `synchronous = FULL`. A write that returned is on disk, also after a power cut,
//! not only after a process crash; callers batch where they write much (log lines, environment
//! claims) so the cost is one sync per batch.
//!
//! Checkpoints (copying the write-ahead log back into the database) run on a background thread
//! with its own connection, not inside a writer's commit, so a write never waits for one.

use std::{
    fs::OpenOptions,
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Mutex, MutexGuard,
    },
};

use rusqlite::{params, Connection, OpenFlags, OptionalExtension, TransactionBehavior};

const READERS: usize = 4;
/// Collection and key limits keep one caller from filling the disk with keys nobody can list.
const MAX_NAME_LEN: usize = 256;
pub const MAX_VALUE_LEN: usize = 16 * 1024 * 1024;
/// The largest page [`Store::list`] returns.
pub const MAX_LIST: u32 = 10_000;
/// The most operations one [`Store::apply`] batch may hold.
const MAX_BATCH: usize = 100_000;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store {what} must be 1 to {MAX_NAME_LEN} bytes (got {len})")]
    BadName { what: &'static str, len: usize },
    #[error("value of {collection}/{key} is {len} bytes; the limit is {MAX_VALUE_LEN}")]
    TooLarge {
        collection: String,
        key: String,
        len: usize,
    },
    #[error("a batch of {0} operations is over the limit of {MAX_BATCH}")]
    BatchTooLarge(usize),
    #[error("{collection}/{key} does not hold an integer; it cannot be added to")]
    NotANumber { collection: String, key: String },
    #[error("cannot create the store file {path}: {source}")]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("store {action}: {source}")]
    Sqlite {
        action: String,
        source: rusqlite::Error,
    },
    /// An audit draft outside its limits (which field, what was expected).
    #[error("audit entry {0}")]
    BadAudit(String),
    /// The PostgreSQL server refused or could not be reached; `message` is the server's (with
    /// its SQLSTATE code) or the connection's.
    #[error("store {action}: {message}")]
    Postgres { action: String, message: String },
}

impl StoreError {
    pub(crate) fn sqlite(action: impl Into<String>) -> impl FnOnce(rusqlite::Error) -> StoreError {
        let action = action.into();
        move |source| StoreError::Sqlite { action, source }
    }
}

/// What must hold for one operation of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Condition<'a> {
    Always,
    /// The key does not exist.
    Absent,
    /// The key exists and holds exactly this value.
    Equals(&'a str),
}

/// What one operation of a batch does once every condition held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Write<'a> {
    Put(&'a str),
    Delete,
    /// Only the condition: the key is checked, not changed.
    Keep,
    /// Adds to the key's integer value (absent: 0); the key then holds the sum.
    Add(i64),
}

/// One operation of an atomic batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Op<'a> {
    pub collection: &'a str,
    pub key: &'a str,
    pub condition: Condition<'a>,
    pub write: Write<'a>,
}

impl<'a> Op<'a> {
    pub fn put(collection: &'a str, key: &'a str, value: &'a str) -> Op<'a> {
        Op {
            collection,
            key,
            condition: Condition::Always,
            write: Write::Put(value),
        }
    }

    pub fn insert(collection: &'a str, key: &'a str, value: &'a str) -> Op<'a> {
        Op {
            condition: Condition::Absent,
            ..Op::put(collection, key, value)
        }
    }

    pub fn delete(collection: &'a str, key: &'a str) -> Op<'a> {
        Op {
            collection,
            key,
            condition: Condition::Always,
            write: Write::Delete,
        }
    }

    pub fn when(mut self, condition: Condition<'a>) -> Op<'a> {
        self.condition = condition;
        self
    }
}

/// Why a batch was not applied: the first operation whose condition failed, and the value its
/// key holds now (`None`: absent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    pub index: usize,
    pub current: Option<String>,
}

pub struct Store {
    path: PathBuf,
    writer: Mutex<Connection>,
    readers: Vec<Mutex<Connection>>,
    next_reader: AtomicUsize,
    counters: Counters,
    _checkpoints: Checkpoints,
}

/// What the store has been asked to do since it was opened: calls, and the rows and value bytes
/// that went in and out. A guard against superlinear access: a step whose calls or bytes per
/// environment grow with the environment count shows here as counts, whatever the machine's
/// speed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreCounts {
    /// Every call: get, list, put, delete, apply (a batch is one call).
    pub calls: u64,
    /// Rows returned by reads (a get that finds its key is one).
    pub rows_read: u64,
    /// Value bytes returned by reads.
    pub bytes_read: u64,
    /// Operations in writes (a batch counts each of its operations).
    pub rows_written: u64,
    /// Value bytes written.
    pub bytes_written: u64,
}

impl StoreCounts {
    /// What happened between `earlier` and `self`.
    pub fn since(&self, earlier: &StoreCounts) -> StoreCounts {
        StoreCounts {
            calls: self.calls.saturating_sub(earlier.calls),
            rows_read: self.rows_read.saturating_sub(earlier.rows_read),
            bytes_read: self.bytes_read.saturating_sub(earlier.bytes_read),
            rows_written: self.rows_written.saturating_sub(earlier.rows_written),
            bytes_written: self.bytes_written.saturating_sub(earlier.bytes_written),
        }
    }
}

/// The live counters behind [`StoreCounts`]; relaxed adds, next to a SQLite call's cost.
#[derive(Default)]
pub(crate) struct Counters {
    calls: AtomicU64,
    rows_read: AtomicU64,
    bytes_read: AtomicU64,
    rows_written: AtomicU64,
    bytes_written: AtomicU64,
}

impl Counters {
    pub(crate) fn read(&self, rows: usize, bytes: usize) {
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.rows_read.fetch_add(rows as u64, Ordering::Relaxed);
        self.bytes_read.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// A read of one key, found (`Some`) or not.
    pub(crate) fn read_value(&self, value: Option<&str>) {
        self.read(usize::from(value.is_some()), value.map_or(0, str::len));
    }

    pub(crate) fn written(&self, rows: usize, bytes: usize) {
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.rows_written.fetch_add(rows as u64, Ordering::Relaxed);
        self.bytes_written
            .fetch_add(bytes as u64, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> StoreCounts {
        StoreCounts {
            calls: self.calls.load(Ordering::Relaxed),
            rows_read: self.rows_read.load(Ordering::Relaxed),
            bytes_read: self.bytes_read.load(Ordering::Relaxed),
            rows_written: self.rows_written.load(Ordering::Relaxed),
            bytes_written: self.bytes_written.load(Ordering::Relaxed),
        }
    }
}

/// How often the background thread copies the write-ahead log into the database.
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_millis(500);

/// The background checkpoint thread; it stops when the store is dropped.
struct Checkpoints {
    stop: std::sync::Arc<(Mutex<bool>, std::sync::Condvar)>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Checkpoints {
    fn start(path: &Path) -> Result<Checkpoints, StoreError> {
        let describe = format!("open {} for checkpoints", path.display());
        let connection = Connection::open(path).map_err(StoreError::sqlite(&describe))?;
        connection
            .execute_batch("PRAGMA busy_timeout = 5000;")
            .map_err(StoreError::sqlite(&describe))?;
        let stop = std::sync::Arc::new((Mutex::new(false), std::sync::Condvar::new()));
        let signal = std::sync::Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("store-checkpoint".into())
            .spawn(move || {
                let (stopped, wake) = &*signal;
                let mut stopped_now = stopped.lock().unwrap_or_else(|p| p.into_inner());
                while !*stopped_now {
                    stopped_now = wake
                        .wait_timeout(stopped_now, CHECKPOINT_EVERY)
                        .map(|(guard, _)| guard)
                        .unwrap_or_else(|p| p.into_inner().0);
                    // PASSIVE: copies what no reader still needs, never blocks the writer.
                    let _ = connection.execute_batch("PRAGMA wal_checkpoint(PASSIVE);");
                }
            })
            .map_err(|source| StoreError::Create {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(Checkpoints {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Checkpoints {
    fn drop(&mut self) {
        let (stopped, wake) = &*self.stop;
        *stopped.lock().unwrap_or_else(|p| p.into_inner()) = true;
        wake.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Store {
    /// Opens (creating when missing, mode 0600) the database `file_name` in `dir`, which must
    /// exist (see [`crate::DataDir`]).
    pub fn open(dir: &Path, file_name: &str) -> Result<Store, StoreError> {
        let path = dir.join(file_name);
        // Created private before SQLite opens it: SQLite gives its -wal and -shm files the
        // database file's permissions.
        OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&path)
            .map_err(|source| StoreError::Create {
                path: path.clone(),
                source,
            })?;
        let describe = format!("open {}", path.display());
        let writer = Connection::open(&path).map_err(StoreError::sqlite(&describe))?;
        writer
            .execute_batch(
                "PRAGMA journal_mode = WAL;
                 PRAGMA synchronous = FULL;
                 PRAGMA busy_timeout = 5000;
                 PRAGMA wal_autocheckpoint = 0;
                 CREATE TABLE IF NOT EXISTS records (
                     collection TEXT NOT NULL,
                     key        TEXT NOT NULL,
                     value      TEXT NOT NULL,
                     updated_at INTEGER NOT NULL,
                     PRIMARY KEY (collection, key)
                 ) WITHOUT ROWID;",
            )
            .map_err(StoreError::sqlite(&describe))?;
        writer
            .execute_batch(crate::audit::sqlite::SCHEMA)
            .map_err(StoreError::sqlite(&describe))?;
        let mut readers = Vec::with_capacity(READERS);
        for _ in 0..READERS {
            let reader = Connection::open_with_flags(
                &path,
                OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )
            .map_err(StoreError::sqlite(&describe))?;
            reader
                .execute_batch("PRAGMA busy_timeout = 5000;")
                .map_err(StoreError::sqlite(&describe))?;
            readers.push(Mutex::new(reader));
        }
        let checkpoints = Checkpoints::start(&path)?;
        Ok(Store {
            path,
            writer: Mutex::new(writer),
            readers,
            next_reader: AtomicUsize::new(0),
            counters: Counters::default(),
            _checkpoints: checkpoints,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What the store was asked to do since it was opened.
    pub fn counts(&self) -> StoreCounts {
        self.counters.snapshot()
    }

    fn writer(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves SQLite consistent (it has its own journal).
        self.writer
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn reader(&self) -> MutexGuard<'_, Connection> {
        let start = self.next_reader.fetch_add(1, Ordering::Relaxed);
        for offset in 0..self.readers.len() {
            if let Ok(guard) = self.readers[(start + offset) % self.readers.len()].try_lock() {
                return guard;
            }
        }
        self.readers[start % self.readers.len()]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn put(&self, collection: &str, key: &str, value: &str) -> Result<(), StoreError> {
        check(collection, key, Some(value))?;
        self.counters.written(1, value.len());
        self.writer()
            .prepare_cached(UPSERT)
            .and_then(|mut statement| statement.execute(params![collection, key, value, now_ms()]))
            .map(|_| ())
            .map_err(StoreError::sqlite(format!("write {collection}/{key}")))
    }

    pub fn get(&self, collection: &str, key: &str) -> Result<Option<String>, StoreError> {
        let value = read_value(&self.reader(), collection, key)?;
        self.counters.read_value(value.as_deref());
        Ok(value)
    }

    /// Removes `key`; `true` when it existed.
    pub fn delete(&self, collection: &str, key: &str) -> Result<bool, StoreError> {
        self.counters.written(1, 0);
        self.writer()
            .prepare_cached(DELETE)
            .and_then(|mut statement| statement.execute(params![collection, key]))
            .map(|changed| changed > 0)
            .map_err(StoreError::sqlite(format!("delete {collection}/{key}")))
    }

    /// Rows of `collection` in key order, after `after`, at most `limit` (capped at
    /// [`MAX_LIST`]).
    pub fn list(
        &self,
        collection: &str,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<(String, String)>, StoreError> {
        let limit = limit.min(MAX_LIST);
        let connection = self.reader();
        let mut statement = connection
            .prepare_cached(
                "SELECT key, value FROM records WHERE collection = ?1 AND key > ?2
                 ORDER BY key LIMIT ?3",
            )
            .map_err(StoreError::sqlite(format!("list {collection}")))?;
        let rows = statement
            .query_map(params![collection, after.unwrap_or(""), limit], |row| {
                Ok((row.get(0)?, row.get(1)?))
            })
            .and_then(|rows| rows.collect::<Result<Vec<(String, String)>, _>>())
            .map_err(StoreError::sqlite(format!("list {collection}")))?;
        self.counters
            .read(rows.len(), rows.iter().map(|(_, value)| value.len()).sum());
        Ok(rows)
    }

    /// Applies every operation in one transaction if every condition holds, else none of them
    /// and returns the first conflict. Conditions are checked in order, against the state
    /// before the batch's own writes.
    pub fn apply(&self, ops: &[Op<'_>]) -> Result<Option<Conflict>, StoreError> {
        self.apply_audited(ops, &[])
    }

    /// [`Store::apply`], and when the batch applies, `audit` appended to the audit chain in
    /// the same transaction: both are written or neither.
    pub fn apply_audited(
        &self,
        ops: &[Op<'_>],
        audit: &[crate::AuditDraft],
    ) -> Result<Option<Conflict>, StoreError> {
        check_batch(ops, &self.counters)?;
        for draft in audit {
            draft.check()?;
        }
        let mut writer = self.writer();
        let transaction = writer
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(StoreError::sqlite("begin a batch"))?;
        for (index, op) in ops.iter().enumerate() {
            let required = match op.condition {
                Condition::Always => continue,
                Condition::Absent => None,
                Condition::Equals(expected) => Some(expected),
            };
            let current = read_value(&transaction, op.collection, op.key)?;
            if current.as_deref() != required {
                // Dropping the transaction rolls it back: nothing was written.
                return Ok(Some(Conflict { index, current }));
            }
        }
        let now = now_ms();
        for op in ops {
            let action = || format!("batch write {}/{}", op.collection, op.key);
            match op.write {
                Write::Put(value) => transaction
                    .prepare_cached(UPSERT)
                    .and_then(|mut statement| {
                        statement.execute(params![op.collection, op.key, value, now])
                    })
                    .map(|_| ())
                    .map_err(StoreError::sqlite(action()))?,
                Write::Delete => transaction
                    .prepare_cached(DELETE)
                    .and_then(|mut statement| statement.execute(params![op.collection, op.key]))
                    .map(|_| ())
                    .map_err(StoreError::sqlite(action()))?,
                Write::Keep => {}
                Write::Add(amount) => {
                    let current = read_value(&transaction, op.collection, op.key)?
                        .map(|text| text.trim().parse::<i64>())
                        .transpose()
                        .map_err(|_| StoreError::NotANumber {
                            collection: op.collection.to_owned(),
                            key: op.key.to_owned(),
                        })?
                        .unwrap_or(0);
                    let sum = current.saturating_add(amount).to_string();
                    transaction
                        .prepare_cached(UPSERT)
                        .and_then(|mut statement| {
                            statement.execute(params![op.collection, op.key, sum, now])
                        })
                        .map(|_| ())
                        .map_err(StoreError::sqlite(action()))?;
                }
            }
        }
        if !audit.is_empty() {
            crate::audit::sqlite::append(&transaction, audit)?;
            crate::failpoint::reached("audit-before-commit");
        }
        transaction
            .commit()
            .map_err(StoreError::sqlite("commit a batch"))?;
        if !audit.is_empty() {
            crate::failpoint::reached("audit-after-commit");
        }
        Ok(None)
    }

    /// A page of the audit log, newest first.
    pub fn audit_query(
        &self,
        query: &crate::AuditQuery,
    ) -> Result<Vec<crate::AuditRecord>, StoreError> {
        let rows = crate::audit::sqlite::query(&self.reader(), query)?;
        self.counters
            .read(rows.len(), rows.iter().map(|row| row.entry.len()).sum());
        Ok(rows)
    }

    /// Prunes at most `chunk` of the oldest audit entries written before `before`.
    pub fn audit_prune(&self, before: &str, chunk: u32) -> Result<u64, StoreError> {
        crate::audit::sqlite::prune(&mut self.writer(), before, chunk)
    }
}

impl crate::RecordStore for Store {
    fn put(&self, collection: &str, key: &str, value: &str) -> Result<(), StoreError> {
        Store::put(self, collection, key, value)
    }

    fn get(&self, collection: &str, key: &str) -> Result<Option<String>, StoreError> {
        Store::get(self, collection, key)
    }

    fn delete(&self, collection: &str, key: &str) -> Result<bool, StoreError> {
        Store::delete(self, collection, key)
    }

    fn list(
        &self,
        collection: &str,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<(String, String)>, StoreError> {
        Store::list(self, collection, after, limit)
    }

    fn apply_audited(
        &self,
        ops: &[Op<'_>],
        audit: &[crate::AuditDraft],
    ) -> Result<Option<Conflict>, StoreError> {
        Store::apply_audited(self, ops, audit)
    }

    fn audit_query(
        &self,
        query: &crate::AuditQuery,
    ) -> Result<Vec<crate::AuditRecord>, StoreError> {
        Store::audit_query(self, query)
    }

    fn audit_scan(&self, after: u64, limit: u32) -> Result<Vec<crate::AuditRow>, StoreError> {
        crate::audit::sqlite::scan(&self.reader(), after, limit)
    }

    fn audit_bounds(&self) -> Result<crate::AuditBounds, StoreError> {
        crate::audit::sqlite::bounds(&self.reader())
    }

    fn audit_prune(&self, before: &str, chunk: u32) -> Result<u64, StoreError> {
        Store::audit_prune(self, before, chunk)
    }

    fn counts(&self) -> StoreCounts {
        Store::counts(self)
    }
}

const UPSERT: &str =
    "INSERT INTO records (collection, key, value, updated_at) VALUES (?1, ?2, ?3, ?4)
     ON CONFLICT (collection, key) DO UPDATE SET value = excluded.value,
                                                 updated_at = excluded.updated_at";
const DELETE: &str = "DELETE FROM records WHERE collection = ?1 AND key = ?2";

fn read_value(
    connection: &Connection,
    collection: &str,
    key: &str,
) -> Result<Option<String>, StoreError> {
    connection
        .prepare_cached("SELECT value FROM records WHERE collection = ?1 AND key = ?2")
        .and_then(|mut statement| {
            statement
                .query_row(params![collection, key], |row| row.get(0))
                .optional()
        })
        .map_err(StoreError::sqlite(format!("read {collection}/{key}")))
}

/// What every store checks and counts of a batch before it applies it: its size, each
/// operation's names and value, and the rows and bytes it writes.
pub(crate) fn check_batch(ops: &[Op<'_>], counters: &Counters) -> Result<(), StoreError> {
    if ops.len() > MAX_BATCH {
        return Err(StoreError::BatchTooLarge(ops.len()));
    }
    let mut bytes = 0;
    for op in ops {
        let value = match op.write {
            Write::Put(value) => Some(value),
            Write::Delete | Write::Keep | Write::Add(_) => None,
        };
        check(op.collection, op.key, value)?;
        bytes += value.map_or(0, str::len);
    }
    counters.written(ops.len(), bytes);
    Ok(())
}

pub(crate) fn check(collection: &str, key: &str, value: Option<&str>) -> Result<(), StoreError> {
    for (what, name) in [("collection", collection), ("key", key)] {
        if name.is_empty() || name.len() > MAX_NAME_LEN {
            return Err(StoreError::BadName {
                what,
                len: name.len(),
            });
        }
    }
    match value {
        Some(value) if value.len() > MAX_VALUE_LEN => Err(StoreError::TooLarge {
            collection: collection.to_owned(),
            key: key.to_owned(),
            len: value.len(),
        }),
        _ => Ok(()),
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests;
