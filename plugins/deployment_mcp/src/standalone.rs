//! The host's services without the host: what the standalone CLI (`deployment-mcp`) lends the
//! plugin when it runs in-process.
//!
//! - the store is an SQLite file with the host's table shape (`records`, WAL), so the same
//!   plugin code reads and writes it the same way;
//! - published events go into a `tokio::sync::broadcast` channel the CLI subscribes to;
//! - log records go to stderr when verbose, and nowhere otherwise.
//!
//! At open it writes the `host/lifecycle` record with a fresh `boot_id`, exactly like the host:
//! the plugin marks runs recorded under any other boot as interrupted (a CLI killed mid-run).
//! For the same reason only one process may use a data directory at a time: a second one would
//! take the first one's running deployment for an interrupted one. An exclusive lock on
//! `<data_dir>/deployment-mcp.lock` enforces that.

use std::{
    fs::File,
    io::Write as _,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, MutexGuard,
    },
    time::SystemTime,
};

use abi_stable::{
    sabi_trait::TD_Opaque,
    std_types::{ROption, RResult, RStr, RString, RVec},
};
use plugin_api::{HostServices, HostServices_TO, LogLevel, StoreEntry};
use rusqlite::{params, Connection, OptionalExtension};
use tokio::sync::broadcast;

/// The database file inside the data directory. Not the host's `powerautomation.db`: a CLI
/// pointed at the host's data directory must not replace the running host's lifecycle record.
pub const DATABASE_FILE: &str = "deployment-mcp.db";
const LOCK_FILE: &str = "deployment-mcp.lock";
/// Events a slow subscriber may fall behind before it is told it lagged.
const EVENT_CAPACITY: usize = 4096;
/// The host's limits, so a record the CLI accepts is one the host would accept too.
const MAX_NAME_LEN: usize = 256;
const MAX_VALUE_LEN: usize = 16 * 1024 * 1024;
const MAX_LIST: u32 = 10_000;

/// One published event, numbered in publish order from 1.
#[derive(Debug, Clone)]
pub struct Event {
    pub id: u64,
    pub kind: String,
    pub data: serde_json::Value,
}

/// The plugin's host, in this process.
pub struct StandaloneHost {
    /// What `deployment_mcp::build` takes.
    pub host: plugin_guest::Host,
    /// Every event the plugin publishes; subscribe before starting what you want to watch.
    pub events: broadcast::Sender<Event>,
    pub boot_id: String,
    pub database: PathBuf,
    store: Arc<Store>,
    lifecycle: serde_json::Value,
    /// Held open for the lifetime of this value: the lock goes with it.
    _lock: File,
}

impl StandaloneHost {
    /// Opens (creating when missing) the store in `data_dir`, takes the directory's lock and
    /// records this process as the running boot. `verbose` sends plugin log records to stderr.
    pub fn open(data_dir: &Path, verbose: bool) -> Result<StandaloneHost, String> {
        std::fs::create_dir_all(data_dir).map_err(|error| {
            format!(
                "cannot create the data directory {}: {error}; pass --data-dir with a writable directory",
                data_dir.display()
            )
        })?;
        let lock = lock_data_dir(data_dir)?;
        let database = data_dir.join(DATABASE_FILE);
        let store = Arc::new(Store::open(&database)?);
        let mut bytes = [0u8; 16];
        getrandom::fill(&mut bytes).map_err(|error| format!("no system randomness: {error}"))?;
        let boot_id = hex::encode(bytes);
        let lifecycle = serde_json::json!({
            "boot_id": boot_id,
            "pid": std::process::id(),
            "state": "running",
        });
        store.put("host", "lifecycle", &lifecycle.to_string())?;
        let (events, _) = broadcast::channel(EVENT_CAPACITY);
        let services = Services {
            store: Arc::clone(&store),
            events: events.clone(),
            next_event: AtomicU64::new(1),
            verbose,
        };
        let host = plugin_guest::Host::new(HostServices_TO::from_value(services, TD_Opaque));
        Ok(StandaloneHost {
            host,
            events,
            boot_id,
            database,
            store,
            lifecycle,
            _lock: lock,
        })
    }

    /// Records that this process is stopping, as the host does before it unloads the plugin:
    /// the plugin's shutdown then stops unfinished runs and records them as interrupted.
    pub fn stopping(&self) -> Result<(), String> {
        let mut record = self.lifecycle.clone();
        record["state"] = "stopping".into();
        self.store.put("host", "lifecycle", &record.to_string())
    }
}

fn lock_data_dir(data_dir: &Path) -> Result<File, String> {
    let path = data_dir.join(LOCK_FILE);
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .map_err(|error| format!("cannot open the lock file {}: {error}", path.display()))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let holder = std::fs::read_to_string(&path).unwrap_or_default();
            let holder = holder.trim();
            let by = if holder.is_empty() {
                String::new()
            } else {
                format!(" (pid {holder})")
            };
            return Err(format!(
                "another deployment-mcp{by} is using the data directory {}; wait for it to finish, or pass another --data-dir",
                data_dir.display()
            ));
        }
        Err(std::fs::TryLockError::Error(error)) => {
            return Err(format!("cannot lock {}: {error}", path.display()))
        }
    }
    // Only informative (for the message above); the lock is what counts.
    let _ = file
        .set_len(0)
        .and_then(|()| write!(file, "{}", std::process::id()))
        .and_then(|()| file.flush());
    Ok(file)
}

/// The host's `records` table, behind one connection: a CLI has a handful of concurrent store
/// calls at most, and SQLite serialises writers anyway.
struct Store {
    path: PathBuf,
    connection: Mutex<Connection>,
}

impl Store {
    fn open(path: &Path) -> Result<Store, String> {
        let describe = |error: rusqlite::Error| format!("store {}: {error}", path.display());
        let connection = Connection::open(path).map_err(describe)?;
        connection
            .execute_batch(
                "PRAGMA journal_mode = WAL;
                 PRAGMA synchronous = NORMAL;
                 PRAGMA busy_timeout = 5000;
                 CREATE TABLE IF NOT EXISTS records (
                     collection TEXT NOT NULL,
                     key        TEXT NOT NULL,
                     value      TEXT NOT NULL,
                     updated_at INTEGER NOT NULL,
                     PRIMARY KEY (collection, key)
                 ) WITHOUT ROWID;",
            )
            .map_err(describe)?;
        Ok(Store {
            path: path.to_path_buf(),
            connection: Mutex::new(connection),
        })
    }

    fn connection(&self) -> MutexGuard<'_, Connection> {
        // SQLite keeps itself consistent (journal) even if a holder of the lock panicked.
        self.connection
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn put(&self, collection: &str, key: &str, value: &str) -> Result<(), String> {
        check_name("collection", collection)?;
        check_name("key", key)?;
        if value.len() > MAX_VALUE_LEN {
            return Err(format!(
                "value of {collection}/{key} is {} bytes; the limit is {MAX_VALUE_LEN}",
                value.len()
            ));
        }
        self.connection()
            .prepare_cached(
                "INSERT INTO records (collection, key, value, updated_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (collection, key) DO UPDATE SET value = excluded.value,
                                                             updated_at = excluded.updated_at",
            )
            .and_then(|mut statement| statement.execute(params![collection, key, value, now_ms()]))
            .map(|_| ())
            .map_err(|error| {
                format!(
                    "store write {collection}/{key} in {}: {error}",
                    self.path.display()
                )
            })
    }

    fn get(&self, collection: &str, key: &str) -> Result<Option<String>, String> {
        self.connection()
            .prepare_cached("SELECT value FROM records WHERE collection = ?1 AND key = ?2")
            .and_then(|mut statement| {
                statement
                    .query_row(params![collection, key], |row| row.get(0))
                    .optional()
            })
            .map_err(|error| format!("store read {collection}/{key}: {error}"))
    }

    fn delete(&self, collection: &str, key: &str) -> Result<bool, String> {
        self.connection()
            .prepare_cached("DELETE FROM records WHERE collection = ?1 AND key = ?2")
            .and_then(|mut statement| statement.execute(params![collection, key]))
            .map(|changed| changed > 0)
            .map_err(|error| format!("store delete {collection}/{key}: {error}"))
    }

    fn list(
        &self,
        collection: &str,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<(String, String)>, String> {
        let connection = self.connection();
        let mut statement = connection
            .prepare_cached(
                "SELECT key, value FROM records WHERE collection = ?1 AND key > ?2
                 ORDER BY key LIMIT ?3",
            )
            .map_err(|error| format!("store list {collection}: {error}"))?;
        let rows = statement
            .query_map(
                params![collection, after.unwrap_or(""), limit.min(MAX_LIST)],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
            .map_err(|error| format!("store list {collection}: {error}"))?;
        Ok(rows)
    }
}

fn check_name(what: &str, name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(format!("store {what} must be 1 to {MAX_NAME_LEN} bytes"));
    }
    Ok(())
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as i64)
        .unwrap_or(0)
}

struct Services {
    store: Arc<Store>,
    events: broadcast::Sender<Event>,
    next_event: AtomicU64,
    verbose: bool,
}

impl HostServices for Services {
    fn log(&self, level: LogLevel, target: RStr<'_>, message: RStr<'_>) {
        if self.verbose {
            write_log(level, target.as_str(), message.as_str());
        }
    }

    fn publish(&self, kind: RStr<'_>, data: RStr<'_>) -> u64 {
        let id = self.next_event.fetch_add(1, Ordering::SeqCst);
        let data = serde_json::from_str(data.as_str())
            .unwrap_or_else(|_| serde_json::Value::String(data.as_str().to_owned()));
        // No subscriber is fine: nobody is watching right now.
        let _ = self.events.send(Event {
            id,
            kind: kind.as_str().to_owned(),
            data,
        });
        id
    }

    fn store_put(
        &self,
        collection: RStr<'_>,
        key: RStr<'_>,
        value: RStr<'_>,
    ) -> RResult<(), RString> {
        self.store
            .put(collection.as_str(), key.as_str(), value.as_str())
            .map_err(RString::from)
            .into()
    }

    fn store_get(&self, collection: RStr<'_>, key: RStr<'_>) -> RResult<ROption<RString>, RString> {
        match self.store.get(collection.as_str(), key.as_str()) {
            Ok(value) => RResult::ROk(value.map(RString::from).into()),
            Err(error) => RResult::RErr(error.into()),
        }
    }

    fn store_delete(&self, collection: RStr<'_>, key: RStr<'_>) -> RResult<bool, RString> {
        self.store
            .delete(collection.as_str(), key.as_str())
            .map_err(RString::from)
            .into()
    }

    fn store_list(
        &self,
        collection: RStr<'_>,
        after: ROption<RStr<'_>>,
        limit: u32,
    ) -> RResult<RVec<StoreEntry>, RString> {
        let after = after.into_option().map(|key| key.as_str());
        match self.store.list(collection.as_str(), after, limit) {
            Ok(rows) => RResult::ROk(
                rows.into_iter()
                    .map(|(key, value)| StoreEntry {
                        key: key.into(),
                        value: value.into(),
                    })
                    .collect(),
            ),
            Err(error) => RResult::RErr(error.into()),
        }
    }
}

fn write_log(level: LogLevel, target: &str, message: &str) {
    let level = match level {
        LogLevel::Error => "ERROR",
        LogLevel::Warn => "WARN",
        LogLevel::Info => "INFO",
        LogLevel::Debug => "DEBUG",
        LogLevel::Trace => "TRACE",
    };
    let now = crate::triggers::timestamp(SystemTime::now());
    // A closed stderr is no reason to fail a deployment.
    let _ = writeln!(
        std::io::stderr().lock(),
        "{now} {level:5} {target}: {message}"
    );
}

/// A `tracing` dispatcher that writes events at `max` or more severe to stderr (other crates'
/// only from info up), in the same format as the plugin's log records. In-process, the plugin's own `tracing` calls reach the
/// process's global dispatcher, not the host's `log`: the CLI installs this one with --verbose.
pub fn stderr_dispatch(max: tracing::Level) -> tracing::Dispatch {
    tracing::Dispatch::new(StderrSubscriber {
        max,
        next_span: AtomicU64::new(1),
    })
}

struct StderrSubscriber {
    max: tracing::Level,
    next_span: AtomicU64,
}

impl tracing::Subscriber for StderrSubscriber {
    fn enabled(&self, metadata: &tracing::Metadata<'_>) -> bool {
        let level = *metadata.level();
        // Below info, only this crate: the HTTP and AWS stacks' debug records drown the rest.
        level <= self.max
            && (level <= tracing::Level::INFO || metadata.target().starts_with("deployment_mcp"))
    }

    fn new_span(&self, _span: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(self.next_span.fetch_add(1, Ordering::Relaxed))
    }

    fn record(&self, _span: &tracing::span::Id, _values: &tracing::span::Record<'_>) {}

    fn record_follows_from(&self, _span: &tracing::span::Id, _follows: &tracing::span::Id) {}

    fn event(&self, event: &tracing::Event<'_>) {
        let level = match *event.metadata().level() {
            tracing::Level::ERROR => LogLevel::Error,
            tracing::Level::WARN => LogLevel::Warn,
            tracing::Level::INFO => LogLevel::Info,
            tracing::Level::DEBUG => LogLevel::Debug,
            tracing::Level::TRACE => LogLevel::Trace,
        };
        let mut line = MessageLine::default();
        event.record(&mut line);
        line.text.push_str(&line.fields);
        write_log(level, event.metadata().target(), &line.text);
    }

    fn enter(&self, _span: &tracing::span::Id) {}

    fn exit(&self, _span: &tracing::span::Id) {}
}

#[derive(Default)]
struct MessageLine {
    text: String,
    fields: String,
}

impl tracing::field::Visit for MessageLine {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        use std::fmt::Write as _;
        if field.name() == "message" {
            let _ = write!(self.text, "{value:?}");
        } else {
            let _ = write!(self.fields, " {}={value:?}", field.name());
        }
    }

    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        use std::fmt::Write as _;
        if field.name() == "message" {
            self.text.push_str(value);
        } else {
            let _ = write!(self.fields, " {}={value}", field.name());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("deployment-mcp-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn store_roundtrip_lifecycle_and_events() -> Result<(), String> {
        let dir = temp_dir("standalone");
        let standalone = StandaloneHost::open(&dir, false)?;
        let host = &standalone.host;
        let lifecycle: serde_json::Value = serde_json::from_str(
            &host
                .store_get("host", "lifecycle")?
                .ok_or("no lifecycle record")?,
        )
        .map_err(|error| error.to_string())?;
        assert_eq!(lifecycle["boot_id"], standalone.boot_id.as_str());
        assert_eq!(lifecycle["state"], "running");

        host.store_put("c", "b", "2")?;
        host.store_put("c", "a", "1")?;
        host.store_put("c", "a", "3")?;
        assert_eq!(host.store_get("c", "a")?.as_deref(), Some("3"));
        let keys: Vec<String> = host
            .store_list("c", None, 10)?
            .into_iter()
            .map(|r| r.0)
            .collect();
        assert_eq!(keys, ["a", "b"]);
        assert_eq!(host.store_list("c", Some("a"), 10)?.len(), 1);
        assert!(host.store_delete("c", "b")?);
        assert!(!host.store_delete("c", "b")?);
        assert!(host.store_put("", "k", "v").is_err());

        let mut events = standalone.events.subscribe();
        let first = host.publish("deployment.phase", &serde_json::json!({"n": 1}));
        let second = host.publish("deployment.log", &serde_json::json!({"n": 2}));
        assert!(second > first);
        let received = events.try_recv().map_err(|error| error.to_string())?;
        assert_eq!(
            (received.id, received.kind.as_str()),
            (first, "deployment.phase")
        );
        assert_eq!(received.data["n"], 1);

        // A second process (here: a second open) must not take over a directory in use.
        let error = StandaloneHost::open(&dir, false).err().unwrap_or_default();
        assert!(error.contains("another deployment-mcp"), "{error}");
        standalone.stopping()?;
        drop(standalone);
        let reopened = StandaloneHost::open(&dir, false)?;
        assert_eq!(reopened.host.store_get("c", "a")?.as_deref(), Some("3"));
        let _ = std::fs::remove_dir_all(&dir);
        Ok(())
    }
}
