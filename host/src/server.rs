//! Starting and stopping the server: store, keys, plugin slots, watchers, HTTP.

use std::{sync::Arc, time::Duration};

use plugin_api::Role;
use tracing_subscriber::EnvFilter;

use record_store::{
    AuditBounds, AuditDraft, AuditQuery, AuditRecord, AuditRow, Conflict, DataDir, Op, PgStore,
    RecordStore, Store, StoreCounts, StoreError,
};
use tokio_util::sync::CancellationToken;

use crate::{
    auth,
    cluster::Membership,
    config::{self, Config, LogFormat},
    http,
    plugin::{
        loader::{self, Retirements},
        slot::{LoadContext, PluginSlot},
        watch,
    },
    services::{cluster_events::ClusterEvents, events::EventBus},
};

pub fn init_logging(config: &Config) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.log.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match config.log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Pretty => builder.init(),
    }
}

/// The lock file in `data_dir` that makes one process its only user.
pub const LOCK_FILE: &str = "powerautomation.lock";
/// The database file in `data_dir`.
pub const DATABASE_FILE: &str = "powerautomation.db";

pub async fn serve(
    config: Config,
    source: config::ConfigSource,
    no_plugins: bool,
) -> Result<(), String> {
    let started = std::time::Instant::now();
    if let Some(file) = &source.file {
        tracing::info!(config = %file.display(), "configuration loaded");
    }
    // Before anything touches the directory: a second process on the same data must not mark
    // the first one's runs interrupted, free its environments or replace its records.
    let data_dir = {
        let path = config.storage.data_dir.clone();
        tokio::task::spawn_blocking(move || DataDir::open(&path, LOCK_FILE, "powerautomation"))
            .await
            .map_err(|error| format!("opening the data directory failed: {error}"))?
            .map_err(|error| error.to_string())?
    };
    for path in data_dir.tightened() {
        tracing::warn!(path = %path.display(), "permissions tightened to owner-only: the data directory holds credentials and deployment records");
    }
    if let Err(error) = loader::fatal::install() {
        tracing::warn!("{error}; a crash in plugin code will not be reported");
    }
    // A busy port fails here, before any plugin starts.
    let listener = tokio::net::TcpListener::bind(config.server.listen)
        .await
        .map_err(|error| format!("cannot listen on {}: {error}; set server.listen (or PA_SERVER__LISTEN) to a free address", config.server.listen))?;
    let address = listener
        .local_addr()
        .map_err(|error| format!("cannot read the listening address: {error}"))?;
    let (store, shared) = open_store(&config.storage.url, data_dir.path()).await?;
    // Named after the configured port, not the one bound: a host on port 0 keeps its id across
    // restarts, so its own earlier runs are recovered at start rather than by the watch.
    let node_id = config.cluster.node_id(config.server.listen);
    config::check_node_id(&node_id).map_err(|error| format!("cluster.node_id: {error}"))?;
    let lifecycle =
        Lifecycle::begin(Arc::clone(&store), &node_id, config.cluster.lease_secs).await?;
    let membership = Membership::join(
        Arc::clone(&store),
        node_id.clone(),
        lifecycle.boot_id().to_owned(),
        config.cluster.lease_secs,
    )
    .await?;
    let shutdown = CancellationToken::new();
    let id_taken = CancellationToken::new();
    let beating = CancellationToken::new();
    tokio::spawn(Arc::clone(&membership).run(beating.clone(), id_taken.clone()));
    // Before plugins start, so what they publish at start reaches every node.
    let bus = Arc::new(EventBus::new());
    let cluster_events = match shared {
        Some(shared) => {
            let (bus, node_id, boot_id) = (
                Arc::clone(&bus),
                node_id.clone(),
                lifecycle.boot_id().to_owned(),
            );
            let started = tokio::task::spawn_blocking(move || {
                ClusterEvents::start(shared, bus, node_id, boot_id)
            })
            .await
            .map_err(|error| format!("starting the event log failed: {error}"))?
            .map_err(|error| format!("cannot read the event log: {error}"))?;
            Some(started)
        }
        None => None,
    };
    // Plugins see this node's lifecycle record where they look for the host's.
    let store: Arc<dyn RecordStore> = Arc::new(NodeStore {
        inner: store,
        lifecycle_key: Lifecycle::key(&node_id),
    });

    let mut keys = auth::KeyRing::from_config(&config.auth.keys)?;
    if keys.is_empty() {
        let (key, created) = auth::bootstrap_admin_key(data_dir.path())?;
        keys.add("admin", Role::Admin, &key);
        let path = data_dir.path().join("admin.key");
        if created {
            tracing::warn!(path = %path.display(), "no [auth] keys configured: created an admin key in this file (mode 0600); add keys with `powerautomation keygen`");
        } else {
            tracing::info!(path = %path.display(), "no [auth] keys configured: using the admin key in this file");
        }
    }

    let retirements = Retirements::default();
    let copies_dir = data_dir
        .private_subdir("plugin-copies")
        .map_err(|error| error.to_string())?;
    loader::clean_stale_copies(&copies_dir);
    let context = LoadContext {
        copies_dir,
        store: Arc::clone(&store),
        bus: Arc::clone(&bus),
        retirements: retirements.clone(),
        log_level: config.log.level.clone(),
        log_json: config.log.format == LogFormat::Json,
    };
    let slots: Vec<Arc<PluginSlot>> = config
        .plugins
        .iter()
        .map(|(name, plugin)| {
            let enabled = plugin.enabled && !no_plugins;
            Arc::new(PluginSlot::new(
                name,
                plugin.clone(),
                context.clone(),
                enabled,
            ))
        })
        .collect();
    let mut watchers = Vec::new();
    for slot in &slots {
        if !slot.is_enabled() {
            tracing::info!(plugin = %slot.name, "plugin disabled");
            continue;
        }
        // A plugin that fails to load is reported in /api/plugins; the host serves regardless.
        let _ = slot.reload("startup").await;
        if slot.config.watch {
            match watch::watch_file(Arc::clone(slot)) {
                Ok(guard) => watchers.push(guard),
                Err(error) => {
                    tracing::warn!(plugin = %slot.name, "{error}; hot swap by file change is off")
                }
            }
        }
    }
    watch::reload_on_sighup(slots.clone())?;

    let stop_requested = Arc::new(std::sync::OnceLock::new());
    tokio::spawn({
        let shutdown = shutdown.clone();
        let stop_requested = Arc::clone(&stop_requested);
        let id_taken = id_taken.clone();
        async move {
            let signal = tokio::select! {
                signal = shutdown_signal() => signal,
                _ = id_taken.cancelled() => "node id taken",
            };
            let _ = stop_requested.set(std::time::Instant::now());
            tracing::info!(signal, "stopping: open streams end now, then requests and plugins get server.shutdown_grace_secs");
            shutdown.cancel();
        }
    });
    let metrics = Arc::new(http::metrics::Metrics::new());
    Arc::clone(&metrics).observe(&bus);
    let state = http::AppState::new(
        slots.clone(),
        bus,
        metrics,
        Arc::clone(&membership),
        shutdown.clone(),
        config.server.max_streams,
        config.server.max_streams_per_client,
    );
    let auditor = crate::audit::Auditor::start(
        Arc::clone(&store),
        config.audit.retention_days,
        shutdown.clone(),
    );
    let state = state.audited(Arc::clone(&auditor));
    let app = http::router(state, Arc::new(keys), &config.server);
    tracing::info!(%address, ready_ms = started.elapsed().as_millis() as u64, "listening");

    let grace = Duration::from_secs(config.server.shutdown_grace_secs);
    let drained = http::serve::serve(
        listener,
        app,
        http::serve::ServeOptions {
            header_read_timeout: Duration::from_secs(config.server.header_read_timeout_secs),
            max_connections: config.server.max_connections,
            max_connections_per_address: config.server.max_connections_per_address,
            shutdown: shutdown.clone(),
            grace,
        },
    )
    .await;
    if drained.abandoned > 0 {
        tracing::warn!(
            connections = drained.abandoned,
            "connections still busy after server.shutdown_grace_secs were closed"
        );
    }

    // Refusals of the last requests are in the log before the host goes.
    auditor.flush(EVENTS_FLUSH).await;
    tracing::info!("shutting down: stopping plugins");
    lifecycle.stopping().await;
    drop(watchers);
    for slot in &slots {
        slot.unload();
    }
    // Plugins get what is left of the grace period, and at least a moment to record their runs.
    let spent = stop_requested
        .get()
        .map(|at| at.elapsed())
        .unwrap_or_default();
    let remaining = grace.saturating_sub(spent).max(Duration::from_secs(1));
    let pending = tokio::task::spawn_blocking(move || retirements.wait(remaining))
        .await
        .unwrap_or(0);
    if pending > 0 {
        tracing::warn!(pending, "plugin instances still stopping at exit");
    }
    // What the plugins published last reaches the other nodes before this one leaves.
    if let Some(cluster_events) = cluster_events {
        let _ = tokio::task::spawn_blocking(move || cluster_events.stop(EVENTS_FLUSH)).await;
    }
    // The node leaves once its runs are recorded; where another host took its id, that host's
    // record stays.
    beating.cancel();
    membership.leave().await;
    tracing::info!("stopped");
    drop(data_dir);
    if id_taken.is_cancelled() {
        return Err(format!(
            "another host took node id {node_id:?}; give each host its own cluster.node_id"
        ));
    }
    Ok(())
}

/// Waits for SIGTERM or SIGINT; returns its name.
async fn shutdown_signal() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let terminate = async {
        match signal(SignalKind::terminate()) {
            Ok(mut stream) => {
                stream.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => "SIGINT",
        _ = terminate => "SIGTERM",
    }
}

/// How long the events a stopping host's plugins published last may take to reach the log.
const EVENTS_FLUSH: Duration = Duration::from_secs(3);

/// The record store: the embedded SQLite file in the data directory, or the PostgreSQL server
/// `url` names, which other hosts (nodes) may share (then returned a second time, as the
/// server that also keeps the cluster's event log).
async fn open_store(
    url: &str,
    data_dir: &std::path::Path,
) -> Result<(Arc<dyn RecordStore>, Option<Arc<PgStore>>), String> {
    let url = url.to_owned();
    let path = data_dir.to_path_buf();
    type Opened = (Arc<dyn RecordStore>, Option<Arc<PgStore>>);
    tokio::task::spawn_blocking(move || -> Result<Opened, String> {
        if url.is_empty() {
            let store = Store::open(&path, DATABASE_FILE).map_err(|error| error.to_string())?;
            tracing::info!(path = %store.path().display(), "store open");
            return Ok((Arc::new(store), None));
        }
        let store = Arc::new(PgStore::open(&url).map_err(|error| error.to_string())?);
        tracing::info!(server = store.shown(), "store open on PostgreSQL");
        Ok((Arc::clone(&store) as Arc<dyn RecordStore>, Some(store)))
    })
    .await
    .map_err(|error| format!("opening the store failed: {error}"))?
}

/// The store `config` names, opened for a command that reads it beside a running host (`audit
/// verify`, `audit export`): SQLite's file is shared safely between processes, and nothing is
/// locked. A data directory without a store is an error, not a new store.
pub fn open_store_for_reading(config: &Config) -> Result<Arc<dyn RecordStore>, String> {
    if config.storage.url.is_empty() {
        let dir = &config.storage.data_dir;
        if !dir.join(DATABASE_FILE).exists() {
            return Err(format!(
                "no store in {} (storage.data_dir); start the host once, or pass --config",
                dir.display()
            ));
        }
        return Store::open(dir, DATABASE_FILE)
            .map(|store| Arc::new(store) as Arc<dyn RecordStore>)
            .map_err(|error| error.to_string());
    }
    PgStore::open(&config.storage.url)
        .map(|store| Arc::new(store) as Arc<dyn RecordStore>)
        .map_err(|error| error.to_string())
}

/// The host's lifecycle record (`host/lifecycle:<node_id>` in the store, which plugins read as
/// `host/lifecycle`): a fresh `boot_id` per process, its `state`, its node. Plugins read it to
/// tell a hot swap (same boot, work of the old copy is still running) from a restart (work
/// recorded under another boot was interrupted), and a swap from a host shutdown.
struct Lifecycle {
    store: Arc<dyn RecordStore>,
    key: String,
    record: serde_json::Value,
}

impl Lifecycle {
    const COLLECTION: &'static str = "host";
    /// The key plugins read.
    const KEY: &'static str = "lifecycle";

    /// Where a node's record is kept: nodes on one database each have their own.
    fn key(node_id: &str) -> String {
        format!("{}:{node_id}", Self::KEY)
    }

    async fn begin(
        store: Arc<dyn RecordStore>,
        node_id: &str,
        lease_secs: u64,
    ) -> Result<Lifecycle, String> {
        let mut bytes = [0u8; 16];
        getrandom::fill(&mut bytes).map_err(|error| format!("no system randomness: {error}"))?;
        let record = serde_json::json!({
            "boot_id": hex::encode(bytes),
            "pid": std::process::id(),
            "state": "running",
            "node_id": node_id,
            "lease_secs": lease_secs,
        });
        let lifecycle = Lifecycle {
            store,
            key: Self::key(node_id),
            record,
        };
        lifecycle.write(&lifecycle.record).await?;
        Ok(lifecycle)
    }

    fn boot_id(&self) -> &str {
        self.record["boot_id"].as_str().unwrap_or_default()
    }

    /// Writes the record on the blocking pool (a store call blocks on its file or server).
    async fn write(&self, record: &serde_json::Value) -> Result<(), String> {
        let store = Arc::clone(&self.store);
        let key = self.key.clone();
        let text = record.to_string();
        tokio::task::spawn_blocking(move || store.put(Self::COLLECTION, &key, &text))
            .await
            .map_err(|error| error.to_string())?
            .map_err(|error| error.to_string())
    }

    /// Marks the host as stopping, before plugins are unloaded.
    async fn stopping(&self) {
        let mut record = self.record.clone();
        record["state"] = "stopping".into();
        if let Err(error) = self.write(&record).await {
            tracing::warn!(%error, "cannot record that the host is stopping");
        }
    }
}

/// The store as this host lends it to plugins: the same records, except that `host/lifecycle`
/// is this node's lifecycle record (every node on one database has its own).
struct NodeStore {
    inner: Arc<dyn RecordStore>,
    lifecycle_key: String,
}

impl RecordStore for NodeStore {
    fn put(&self, collection: &str, key: &str, value: &str) -> Result<(), StoreError> {
        self.inner.put(collection, key, value)
    }

    fn get(&self, collection: &str, key: &str) -> Result<Option<String>, StoreError> {
        if (collection, key) == (Lifecycle::COLLECTION, Lifecycle::KEY) {
            return self.inner.get(collection, &self.lifecycle_key);
        }
        self.inner.get(collection, key)
    }

    fn delete(&self, collection: &str, key: &str) -> Result<bool, StoreError> {
        self.inner.delete(collection, key)
    }

    fn list(
        &self,
        collection: &str,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<(String, String)>, StoreError> {
        self.inner.list(collection, after, limit)
    }

    fn apply_audited(
        &self,
        ops: &[Op<'_>],
        audit: &[AuditDraft],
    ) -> Result<Option<Conflict>, StoreError> {
        self.inner.apply_audited(ops, audit)
    }

    fn audit_query(&self, query: &AuditQuery) -> Result<Vec<AuditRecord>, StoreError> {
        self.inner.audit_query(query)
    }

    fn audit_scan(&self, after: u64, limit: u32) -> Result<Vec<AuditRow>, StoreError> {
        self.inner.audit_scan(after, limit)
    }

    fn audit_bounds(&self) -> Result<AuditBounds, StoreError> {
        self.inner.audit_bounds()
    }

    fn audit_prune(&self, before: &str, chunk: u32) -> Result<u64, StoreError> {
        self.inner.audit_prune(before, chunk)
    }

    fn counts(&self) -> StoreCounts {
        self.inner.counts()
    }
}
