//! The store on a PostgreSQL server: the same operations as the SQLite [`crate::Store`], with
//! the same limits, conditions, conflicts and sums, so the host and its plugins do not know
//! which one they have.
//!
//! - Records live in one table, `pa_records (collection, key, value)`, keys compared byte by
//!   byte (`COLLATE "C"`, as SQLite compares them), so a listing's order and its `after` cursor
//!   are the same on both stores. The schema is created at open, under an advisory lock, so
//!   several hosts starting at once do not race on it.
//! - A batch is one `SERIALIZABLE` transaction: conditions are read first (the state before the
//!   batch's own writes), then the writes run in order. Two batches that would each have seen
//!   the other's absence cannot both commit; the loser is run again from the start, and then
//!   sees the winner's rows and reports the conflict.
//! - Connections come from a bounded pool. A connection that broke is dropped, not reused; new
//!   ones are made with backoff, so a database restart costs the calls made during it, not the
//!   host.

use std::{
    sync::{Condvar, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use postgres::{error::SqlState, Client, GenericClient, IsolationLevel, NoTls};

use crate::{
    store::{check, check_batch, Counters},
    Condition, Conflict, Op, RecordStore, StoreCounts, StoreError, Write, MAX_LIST,
};

/// Connections one store keeps at most.
const POOL_SIZE: usize = 8;
/// How long a call waits for a connection of a full pool.
const POOL_WAIT: Duration = Duration::from_secs(30);
/// Attempts to connect before a call fails, waiting twice as long after each failure.
const CONNECT_ATTEMPTS: u32 = 6;
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// How long one connection attempt may take, unless the URL sets `connect_timeout`.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Idle time after which a connection's peer is probed.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(30);
/// Times a batch is run again after it lost a race with another transaction.
const RACE_RETRIES: u32 = 16;
/// Ties the schema's creation to one host at a time (an arbitrary, fixed advisory lock key).
const SCHEMA_LOCK: i64 = 0x7061_5f73_6368_656d;

const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS pa_records (
        collection TEXT NOT NULL,
        key TEXT COLLATE \"C\" NOT NULL,
        value TEXT NOT NULL,
        PRIMARY KEY (collection, key)
    );
    CREATE TABLE IF NOT EXISTS pa_events (
        id BIGSERIAL PRIMARY KEY,
        node_id TEXT NOT NULL,
        boot_id TEXT NOT NULL,
        seq BIGINT NOT NULL,
        kind TEXT NOT NULL,
        data TEXT NOT NULL,
        user_data TEXT,
        for_users BOOLEAN NOT NULL,
        at TIMESTAMPTZ NOT NULL DEFAULT now(),
        UNIQUE (boot_id, seq)
    )";

pub struct PgStore {
    pub(crate) config: postgres::Config,
    /// The server as it may be shown: host, port and database, never the password.
    shown: String,
    pool: Mutex<Pool>,
    returned: Condvar,
    counters: Counters,
}

#[derive(Default)]
struct Pool {
    idle: Vec<Client>,
    /// Connections made and not yet dropped, idle or lent.
    open: usize,
}

/// A pooled connection, given back when dropped. One that broke (a server restart) is
/// forgotten together with every idle one: those were made before it, and are as stale.
pub(crate) struct Lent<'a> {
    store: &'a PgStore,
    client: Option<Client>,
}

impl Lent<'_> {
    pub(crate) fn client(&mut self) -> Result<&mut Client, StoreError> {
        self.client.as_mut().ok_or_else(|| StoreError::Postgres {
            action: "use a pooled connection".into(),
            message: "the connection was already given back".into(),
        })
    }
}

impl Drop for Lent<'_> {
    fn drop(&mut self) {
        let mut pool = self.store.pool();
        let mut stale = Vec::new();
        match self.client.take() {
            Some(client) if !client.is_closed() => pool.idle.push(client),
            broken => {
                stale = std::mem::take(&mut pool.idle);
                stale.extend(broken);
                pool.open = pool.open.saturating_sub(stale.len().max(1));
            }
        }
        drop(pool);
        // Closed outside the lock (closing runs the client's runtime).
        drop(stale);
        self.store.returned.notify_all();
    }
}

impl Drop for PgStore {
    /// Closes the connections on a thread of its own: the client closes by running its
    /// runtime, which cannot be done on a thread that drives async tasks (where the host may
    /// drop its store at shutdown).
    fn drop(&mut self) {
        let clients = std::mem::take(&mut self.pool().idle);
        if clients.is_empty() {
            return;
        }
        let closing = std::thread::Builder::new()
            .name("pa-pg-close".into())
            .spawn(move || drop(clients));
        if let Ok(closing) = closing {
            let _ = closing.join();
        }
    }
}

impl PgStore {
    /// Connects to `url` (`postgres://user[:password]@host[:port]/database`), creates the schema
    /// where it is missing, and keeps the connection for the pool.
    pub fn open(url: &str) -> Result<PgStore, StoreError> {
        let mut config: postgres::Config =
            url.parse()
                .map_err(|error: postgres::Error| StoreError::Postgres {
                    action: "read storage.url".into(),
                    message: format!(
                        "{error}; expected postgres://user[:password]@host[:port]/database"
                    ),
                })?;
        // A server that does not answer fails a connection in seconds, and one that vanished
        // is noticed by keepalives, unless the URL says otherwise.
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        config.keepalives(true).keepalives_idle(KEEPALIVE_IDLE);
        let store = PgStore {
            shown: shown(&config),
            config,
            pool: Mutex::default(),
            returned: Condvar::new(),
            counters: Counters::default(),
        };
        let mut lent = store.lend()?;
        let shown = store.shown.clone();
        let failed = |action: &str| {
            let action = format!("{action} on {shown}");
            move |error: postgres::Error| StoreError::postgres(action, &error)
        };
        let mut transaction = lent
            .client()?
            .transaction()
            .map_err(failed("begin the schema's creation"))?;
        transaction
            .execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK])
            .map_err(failed("lock the schema"))?;
        transaction
            .batch_execute(SCHEMA)
            .map_err(failed("create the schema"))?;
        transaction
            .batch_execute(crate::audit::postgres::SCHEMA)
            .map_err(failed("create the audit log's schema"))?;
        transaction.commit().map_err(failed("create the schema"))?;
        drop(lent);
        Ok(store)
    }

    /// The server, as it may be shown (no password).
    pub fn shown(&self) -> &str {
        &self.shown
    }

    fn pool(&self) -> MutexGuard<'_, Pool> {
        self.pool
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// An idle connection, a new one while the pool has room, or the next one given back.
    pub(crate) fn lend(&self) -> Result<Lent<'_>, StoreError> {
        let deadline = Instant::now() + POOL_WAIT;
        let mut pool = self.pool();
        loop {
            if let Some(client) = pool.idle.pop() {
                return Ok(Lent {
                    store: self,
                    client: Some(client),
                });
            }
            if pool.open < POOL_SIZE {
                pool.open += 1;
                drop(pool);
                return match self.connect() {
                    Ok(client) => Ok(Lent {
                        store: self,
                        client: Some(client),
                    }),
                    Err(error) => {
                        self.pool().open -= 1;
                        self.returned.notify_one();
                        Err(error)
                    }
                };
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(StoreError::Postgres {
                    action: format!("wait for a connection to {}", self.shown),
                    message: format!(
                        "all {POOL_SIZE} connections stayed busy for {} s",
                        POOL_WAIT.as_secs()
                    ),
                });
            }
            pool = self
                .returned
                .wait_timeout(pool, deadline - now)
                .map(|(pool, _)| pool)
                .unwrap_or_else(|poisoned| poisoned.into_inner().0);
        }
    }

    /// A new connection, retried with backoff (a server restarting refuses for a moment).
    fn connect(&self) -> Result<Client, StoreError> {
        let mut wait = FIRST_BACKOFF;
        let mut attempt = 1;
        loop {
            match self.config.connect(NoTls) {
                Ok(client) => return Ok(client),
                Err(error) if attempt >= CONNECT_ATTEMPTS => {
                    return Err(StoreError::postgres(
                        format!("connect to {} ({attempt} attempts)", self.shown),
                        &error,
                    ))
                }
                Err(_) => {
                    std::thread::sleep(wait);
                    wait *= 2;
                    attempt += 1;
                }
            }
        }
    }

    /// Runs a write on a pooled connection. Not run again when its connection broke: the
    /// server may have applied it.
    pub(crate) fn write<T>(
        &self,
        action: impl Fn() -> String,
        call: impl Fn(&mut Client) -> Result<T, postgres::Error>,
    ) -> Result<T, StoreError> {
        let mut lent = self.lend()?;
        call(lent.client()?).map_err(|error| StoreError::postgres(action(), &error))
    }

    /// Runs a read on a pooled connection; one that failed because its connection broke is run
    /// once more on a new one.
    pub(crate) fn read<T>(
        &self,
        action: impl Fn() -> String,
        call: impl Fn(&mut Client) -> Result<T, postgres::Error>,
    ) -> Result<T, StoreError> {
        let mut lent = self.lend()?;
        match call(lent.client()?) {
            Ok(value) => Ok(value),
            Err(error) if error.is_closed() || lent.client()?.is_closed() => {
                drop(lent);
                let mut lent = self.lend()?;
                call(lent.client()?).map_err(|error| StoreError::postgres(action(), &error))
            }
            Err(error) => Err(StoreError::postgres(action(), &error)),
        }
    }
}

/// `host:port/database` of a configuration.
fn shown(config: &postgres::Config) -> String {
    let host = match config.get_hosts().first() {
        Some(postgres::config::Host::Tcp(host)) => host.clone(),
        Some(postgres::config::Host::Unix(path)) => path.display().to_string(),
        None => "localhost".into(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let database = config.get_dbname().unwrap_or("(default database)");
    format!("postgres://{host}:{port}/{database}")
}

impl StoreError {
    pub(crate) fn postgres(action: impl Into<String>, error: &postgres::Error) -> StoreError {
        // The server's own message names what it refused; the client's wrapper alone says
        // only "db error".
        let message = match error.as_db_error() {
            Some(db) => format!("{}: {}", db.code().code(), db.message()),
            None => error.to_string(),
        };
        StoreError::Postgres {
            action: action.into(),
            message,
        }
    }
}

/// Whether `error` means another transaction got there first (the batch is run again). Under
/// `SERIALIZABLE` a race is reported as a serialization failure; the records' upserts never
/// raise a unique violation, so one means two appends to the audit chain met (it is run again,
/// and then chains after the other).
fn lost_race(error: &postgres::Error) -> bool {
    matches!(
        error.code(),
        Some(code) if *code == SqlState::T_R_SERIALIZATION_FAILURE
            || *code == SqlState::T_R_DEADLOCK_DETECTED
            // Two appenders to the audit chain of a store made before its head row existed.
            || *code == SqlState::UNIQUE_VIOLATION
    )
}

fn value_of(
    client: &mut impl GenericClient,
    collection: &str,
    key: &str,
) -> Result<Option<String>, postgres::Error> {
    client
        .query_opt(
            "SELECT value FROM pa_records WHERE collection = $1 AND key = $2",
            &[&collection, &key],
        )?
        .map(|row| row.try_get(0))
        .transpose()
}

fn upsert(
    client: &mut impl GenericClient,
    collection: &str,
    key: &str,
    value: &str,
) -> Result<(), postgres::Error> {
    client.execute(
        "INSERT INTO pa_records (collection, key, value) VALUES ($1, $2, $3)
         ON CONFLICT (collection, key) DO UPDATE SET value = EXCLUDED.value",
        &[&collection, &key, &value],
    )?;
    Ok(())
}

/// One attempt at a batch, in its own serializable transaction: the batch's answer, or the
/// server's error (a lost race among them).
fn attempt(
    client: &mut Client,
    ops: &[Op<'_>],
    audit: &[crate::AuditDraft],
) -> Result<Result<Option<Conflict>, StoreError>, postgres::Error> {
    let mut transaction = client
        .build_transaction()
        .isolation_level(IsolationLevel::Serializable)
        .start()?;
    // Conditions are checked against the state before the batch's own writes.
    for (index, op) in ops.iter().enumerate() {
        let required = match op.condition {
            Condition::Always => continue,
            Condition::Absent => None,
            Condition::Equals(expected) => Some(expected),
        };
        let current = value_of(&mut transaction, op.collection, op.key)?;
        if current.as_deref() != required {
            // Committed, not rolled back: a serializable transaction's reads are only known
            // to be consistent once it commits.
            transaction.commit()?;
            return Ok(Ok(Some(Conflict { index, current })));
        }
    }
    for op in ops {
        match op.write {
            Write::Put(value) => upsert(&mut transaction, op.collection, op.key, value)?,
            Write::Delete => {
                transaction.execute(
                    "DELETE FROM pa_records WHERE collection = $1 AND key = $2",
                    &[&op.collection, &op.key],
                )?;
            }
            Write::Keep => {}
            Write::Add(amount) => {
                let current = value_of(&mut transaction, op.collection, op.key)?;
                let parsed = current.map(|text| text.trim().parse::<i64>()).transpose();
                let Ok(current) = parsed else {
                    // Dropped without a commit: nothing of the batch is written.
                    return Ok(Err(StoreError::NotANumber {
                        collection: op.collection.to_owned(),
                        key: op.key.to_owned(),
                    }));
                };
                let sum = current.unwrap_or(0).saturating_add(amount).to_string();
                upsert(&mut transaction, op.collection, op.key, &sum)?;
            }
        }
    }
    if !audit.is_empty() {
        if let Err(error) = crate::audit::postgres::append(&mut transaction, audit)? {
            return Ok(Err(error));
        }
    }
    transaction.commit()?;
    Ok(Ok(None))
}

impl RecordStore for PgStore {
    fn put(&self, collection: &str, key: &str, value: &str) -> Result<(), StoreError> {
        check(collection, key, Some(value))?;
        self.counters.written(1, value.len());
        self.write(
            || format!("write {collection}/{key}"),
            |client| upsert(client, collection, key, value),
        )
    }

    fn get(&self, collection: &str, key: &str) -> Result<Option<String>, StoreError> {
        let value = self.read(
            || format!("read {collection}/{key}"),
            |client| value_of(client, collection, key),
        )?;
        self.counters.read_value(value.as_deref());
        Ok(value)
    }

    fn delete(&self, collection: &str, key: &str) -> Result<bool, StoreError> {
        self.counters.written(1, 0);
        let deleted = self.write(
            || format!("delete {collection}/{key}"),
            |client| {
                client.execute(
                    "DELETE FROM pa_records WHERE collection = $1 AND key = $2",
                    &[&collection, &key],
                )
            },
        )?;
        Ok(deleted > 0)
    }

    fn list(
        &self,
        collection: &str,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<(String, String)>, StoreError> {
        let limit = i64::from(limit.min(MAX_LIST));
        let after = after.unwrap_or("");
        let rows: Vec<(String, String)> = self.read(
            || format!("list {collection}"),
            |client| {
                client
                    .query(
                        "SELECT key, value FROM pa_records WHERE collection = $1 AND key > $2
                         ORDER BY key LIMIT $3",
                        &[&collection, &after, &limit],
                    )?
                    .into_iter()
                    .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
                    .collect::<Result<_, postgres::Error>>()
            },
        )?;
        self.counters
            .read(rows.len(), rows.iter().map(|(_, value)| value.len()).sum());
        Ok(rows)
    }

    fn apply_audited(
        &self,
        ops: &[Op<'_>],
        audit: &[crate::AuditDraft],
    ) -> Result<Option<Conflict>, StoreError> {
        check_batch(ops, &self.counters)?;
        for draft in audit {
            draft.check()?;
        }
        let mut wait = Duration::from_millis(1);
        for _ in 0..RACE_RETRIES {
            let mut lent = self.lend()?;
            match attempt(lent.client()?, ops, audit) {
                Ok(answer) => return answer,
                Err(error) if lost_race(&error) => {}
                // A batch whose connection broke may or may not have committed: the caller
                // hears so rather than have it run twice.
                Err(error) => {
                    return Err(StoreError::postgres(
                        format!("apply a batch of {} operations", ops.len()),
                        &error,
                    ));
                }
            }
            drop(lent);
            // Apart, so racing batches do not meet again at once.
            std::thread::sleep(wait);
            wait = (wait * 2).min(Duration::from_millis(50));
        }
        Err(StoreError::Postgres {
            action: format!("apply a batch of {} operations", ops.len()),
            message: format!("it lost {RACE_RETRIES} races with other transactions in a row"),
        })
    }

    fn audit_query(
        &self,
        query: &crate::AuditQuery,
    ) -> Result<Vec<crate::AuditRecord>, StoreError> {
        let rows = self.read(
            || "query the audit log".into(),
            |client| crate::audit::postgres::query(client, query),
        )?;
        self.counters
            .read(rows.len(), rows.iter().map(|row| row.entry.len()).sum());
        Ok(rows)
    }

    fn audit_scan(&self, after: u64, limit: u32) -> Result<Vec<crate::AuditRow>, StoreError> {
        self.read(
            || "read the audit log".into(),
            |client| crate::audit::postgres::scan(client, after, limit),
        )
    }

    fn audit_bounds(&self) -> Result<crate::AuditBounds, StoreError> {
        self.read(
            || "read the audit chain's bounds".into(),
            crate::audit::postgres::bounds,
        )
    }

    fn audit_prune(&self, before: &str, chunk: u32) -> Result<u64, StoreError> {
        self.write(
            || "prune the audit log".into(),
            |client| crate::audit::postgres::prune(client, before, chunk),
        )
    }

    fn counts(&self) -> StoreCounts {
        self.counters.snapshot()
    }
}
