//! The host's services without the host (`LocalHost`): what the standalone CLI
//! (`deployment-mcp`) and the tests lend a plugin's code when it runs in-process.
//!
//! - the store is the host's own store (`record-store`) in its own file, so the same plugin
//!   code reads and writes it the same way, atomic batches included;
//! - published events go into a `tokio::sync::broadcast` channel the CLI subscribes to;
//! - log records go to stderr when verbose, and nowhere otherwise.
//!
//! At open it writes the `host/lifecycle` record with a fresh `boot_id`, exactly like the host:
//! the plugin marks runs recorded under any other boot as interrupted (a CLI killed mid-run).
//! For the same reason only one process may use a data directory at a time: a second one would
//! take the first one's running deployment for an interrupted one. An exclusive lock on
//! `<data_dir>/deployment-mcp.lock` enforces that (the directory is private, like the host's).

#![forbid(unsafe_code)]

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::SystemTime,
};

use abi_stable::{
    sabi_trait::TD_Opaque,
    std_types::{ROption, RResult, RSlice, RStr, RString, RVec},
};
use plugin_api::{HostServices, HostServices_TO, LogLevel, StoreConflict, StoreEntry, StoreOp};
use record_store::{DataDir, MemoryStore, RecordStore, Store};
use tokio::sync::broadcast;

/// The database file inside the data directory. Not the host's `powerautomation.db`: a CLI
/// pointed at the host's data directory must not replace the running host's lifecycle record.
pub const DATABASE_FILE: &str = "deployment-mcp.db";
const LOCK_FILE: &str = "deployment-mcp.lock";
/// Events a slow subscriber may fall behind before it is told it lagged.
const EVENT_CAPACITY: usize = 4096;

/// One published event, numbered in publish order from 1.
#[derive(Debug, Clone)]
pub struct Event {
    pub id: u64,
    pub kind: String,
    pub data: serde_json::Value,
}

/// The plugin's host, in this process.
pub struct LocalHost {
    /// What `deployment_mcp::build` takes.
    pub host: plugin_guest::Host,
    /// Every event the plugin publishes; subscribe before starting what you want to watch.
    pub events: broadcast::Sender<Event>,
    pub boot_id: String,
    /// The database file; `None` for a store in memory.
    pub database: Option<PathBuf>,
    store: Arc<dyn RecordStore>,
    lifecycle: serde_json::Value,
    /// Held for the lifetime of this value: the directory's lock goes with it (none in memory).
    _data_dir: Option<DataDir>,
}

impl LocalHost {
    /// What the plugin asked of the store since it was opened (calls, rows, bytes).
    pub fn store_counts(&self) -> record_store::StoreCounts {
        self.store.counts()
    }

    /// Opens (creating when missing) the store in `data_dir`, takes the directory's lock and
    /// records this process as the running boot. `verbose` sends plugin log records to stderr.
    pub fn open(data_dir: &Path, verbose: bool) -> Result<LocalHost, String> {
        let locked = DataDir::open(data_dir, LOCK_FILE, "deployment-mcp").map_err(|error| {
            format!("{error}; pass --data-dir with a writable directory that no other process uses")
        })?;
        let database = data_dir.join(DATABASE_FILE);
        let store = Arc::new(Store::open(data_dir, DATABASE_FILE).map_err(|e| e.to_string())?);
        LocalHost::with_store(store, Some(database), Some(locked), verbose)
    }

    /// A host whose store lives in memory and goes with it: for tests that run the plugin's
    /// code without a disk (and, with paused time, without waiting).
    pub fn in_memory() -> Result<LocalHost, String> {
        LocalHost::with_store(Arc::new(MemoryStore::new()), None, None, false)
    }

    fn with_store(
        store: Arc<dyn RecordStore>,
        database: Option<PathBuf>,
        data_dir: Option<DataDir>,
        verbose: bool,
    ) -> Result<LocalHost, String> {
        let mut bytes = [0u8; 16];
        getrandom::fill(&mut bytes).map_err(|error| format!("no system randomness: {error}"))?;
        let boot_id = hex::encode(bytes);
        let lifecycle = serde_json::json!({
            "boot_id": boot_id,
            "pid": std::process::id(),
            "state": "running",
        });
        store
            .put("host", "lifecycle", &lifecycle.to_string())
            .map_err(|error| error.to_string())?;
        let (events, _) = broadcast::channel(EVENT_CAPACITY);
        let services = Services {
            store: Arc::clone(&store),
            events: events.clone(),
            next_event: AtomicU64::new(1),
            verbose,
        };
        let host = plugin_guest::Host::new(HostServices_TO::from_value(services, TD_Opaque));
        Ok(LocalHost {
            host,
            events,
            boot_id,
            database,
            store,
            lifecycle,
            _data_dir: data_dir,
        })
    }

    /// The same store seen by a new process (a restart): a fresh boot id, recorded as the
    /// running one; the earlier host's runs now belong to a boot that is gone.
    pub fn restarted(&self) -> Result<LocalHost, String> {
        LocalHost::with_store(Arc::clone(&self.store), self.database.clone(), None, false)
    }

    /// Records that this process is stopping, as the host does before it unloads the plugin:
    /// the plugin's shutdown then stops unfinished runs and records them as interrupted.
    pub fn stopping(&self) -> Result<(), String> {
        let mut record = self.lifecycle.clone();
        record["state"] = "stopping".into();
        self.store
            .put("host", "lifecycle", &record.to_string())
            .map_err(|error| error.to_string())
    }
}

struct Services {
    store: Arc<dyn RecordStore>,
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
        record_store::put_abi(&*self.store, collection, key, value)
    }

    fn store_get(&self, collection: RStr<'_>, key: RStr<'_>) -> RResult<ROption<RString>, RString> {
        record_store::get_abi(&*self.store, collection, key)
    }

    fn store_delete(&self, collection: RStr<'_>, key: RStr<'_>) -> RResult<bool, RString> {
        record_store::delete_abi(&*self.store, collection, key)
    }

    fn store_list(
        &self,
        collection: RStr<'_>,
        after: ROption<RStr<'_>>,
        limit: u32,
    ) -> RResult<RVec<StoreEntry>, RString> {
        record_store::list_abi(&*self.store, collection, after, limit)
    }

    fn store_apply(&self, ops: RSlice<'_, StoreOp>) -> RResult<ROption<StoreConflict>, RString> {
        record_store::apply_abi(&*self.store, ops, RSlice::from_slice(&[]))
    }

    fn store_apply_audited(
        &self,
        ops: RSlice<'_, StoreOp>,
        audit: RSlice<'_, RString>,
    ) -> RResult<ROption<StoreConflict>, RString> {
        record_store::apply_abi(&*self.store, ops, audit)
    }

    fn audit_query(&self, query: RStr<'_>) -> RResult<RString, RString> {
        record_store::audit_query_abi(&*self.store, query)
    }

    fn publish_by_role(
        &self,
        kind: RStr<'_>,
        data: RStr<'_>,
        _user_data: ROption<RStr<'_>>,
    ) -> u64 {
        // The CLI's reader is the operator at the terminal: the full view.
        self.publish(kind, data)
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
    let now = humantime::format_rfc3339_millis(SystemTime::now());
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
            std::env::temp_dir().join(format!("plugin-local-host-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn store_roundtrip_lifecycle_and_events() -> Result<(), String> {
        let dir = temp_dir("standalone");
        let standalone = LocalHost::open(&dir, false)?;
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
        let conflict = host.store_apply(&[
            plugin_guest::StoreOp::insert("c", "z", "1".into()),
            plugin_guest::StoreOp::insert("c", "a", "1".into()),
        ])?;
        assert_eq!(
            conflict.map(|c| (c.index, c.current)),
            Some((1, Some("3".into())))
        );
        assert_eq!(host.store_get("c", "z")?, None);

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
        let error = LocalHost::open(&dir, false).err().unwrap_or_default();
        assert!(
            error.contains("in use by another deployment-mcp"),
            "{error}"
        );
        standalone.stopping()?;
        drop(standalone);
        let reopened = LocalHost::open(&dir, false)?;
        assert_eq!(reopened.host.store_get("c", "a")?.as_deref(), Some("3"));
        let _ = std::fs::remove_dir_all(&dir);
        Ok(())
    }
}
