//! Starting and stopping the server: store, keys, plugin slots, watchers, HTTP.

use std::{sync::Arc, time::Duration};

use plugin_api::Role;
use tracing_subscriber::EnvFilter;

use crate::{
    auth,
    config::{self, Config, LogFormat},
    http,
    plugin::{
        loader::{self, Retirements},
        slot::{LoadContext, PluginSlot},
        watch,
    },
    services::{events::EventBus, store::Store},
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

pub async fn serve(
    config: Config,
    source: config::ConfigSource,
    no_plugins: bool,
) -> Result<(), String> {
    let started = std::time::Instant::now();
    if let Some(file) = &source.file {
        tracing::info!(config = %file.display(), "configuration loaded");
    }
    let data_dir = config.storage.data_dir.clone();
    let store = {
        let data_dir = data_dir.clone();
        tokio::task::spawn_blocking(move || Store::open(&data_dir))
            .await
            .map_err(|error| format!("opening the store failed: {error}"))??
    };
    let store = Arc::new(store);
    tracing::info!(path = %store.path().display(), "store open");
    let lifecycle = Lifecycle::begin(Arc::clone(&store))?;

    let mut keys = auth::KeyRing::from_config(&config.auth.keys)?;
    if keys.is_empty() {
        let (key, created) = auth::bootstrap_admin_key(&data_dir)?;
        keys.add("admin", Role::Admin, &key);
        let path = data_dir.join("admin.key");
        if created {
            tracing::warn!(path = %path.display(), "no [auth] keys configured: created an admin key in this file (mode 0600); add keys with `powerautomation keygen`");
        } else {
            tracing::info!(path = %path.display(), "no [auth] keys configured: using the admin key in this file");
        }
    }

    let bus = Arc::new(EventBus::new());
    let retirements = Retirements::default();
    let copies_dir = data_dir.join("plugin-copies");
    loader::clean_stale_copies(&copies_dir);
    let context = LoadContext {
        copies_dir,
        store: Arc::clone(&store),
        bus: Arc::clone(&bus),
        retirements: retirements.clone(),
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

    let metrics = Arc::new(http::metrics::Metrics::new());
    Arc::clone(&metrics).observe(&bus);
    let state = http::AppState {
        slots: Arc::new(slots.clone()),
        bus,
        metrics,
    };
    let app = http::router(state, Arc::new(keys), &config.server);
    let listener = tokio::net::TcpListener::bind(config.server.listen)
        .await
        .map_err(|error| format!("cannot listen on {}: {error}; set server.listen (or PA_SERVER__LISTEN) to a free address", config.server.listen))?;
    let address = listener
        .local_addr()
        .map_err(|error| format!("cannot read the listening address: {error}"))?;
    tracing::info!(%address, ready_ms = started.elapsed().as_millis() as u64, "listening");

    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await
        .map_err(|error| format!("server error: {error}"))?;

    tracing::info!("shutting down: stopping plugins");
    lifecycle.stopping();
    drop(watchers);
    for slot in &slots {
        slot.unload();
    }
    let grace = Duration::from_secs(config.server.shutdown_grace_secs);
    let pending = tokio::task::spawn_blocking(move || retirements.wait(grace))
        .await
        .unwrap_or(0);
    if pending > 0 {
        tracing::warn!(pending, "plugin instances still stopping at exit");
    }
    tracing::info!("stopped");
    Ok(())
}

async fn shutdown_signal() {
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
        _ = tokio::signal::ctrl_c() => {},
        _ = terminate => {},
    }
}

/// The host's lifecycle record (`host/lifecycle` in the store): a fresh `boot_id` per process and
/// its `state`. Plugins read it to tell a hot swap (same boot, work of the old copy is still
/// running) from a restart (work recorded under another boot was interrupted), and a swap from
/// a host shutdown.
struct Lifecycle {
    store: Arc<Store>,
    record: serde_json::Value,
}

impl Lifecycle {
    const COLLECTION: &'static str = "host";
    const KEY: &'static str = "lifecycle";

    fn begin(store: Arc<Store>) -> Result<Lifecycle, String> {
        let mut bytes = [0u8; 16];
        getrandom::fill(&mut bytes).map_err(|error| format!("no system randomness: {error}"))?;
        let record = serde_json::json!({
            "boot_id": hex::encode(bytes),
            "pid": std::process::id(),
            "state": "running",
        });
        store.put(Self::COLLECTION, Self::KEY, &record.to_string())?;
        Ok(Lifecycle { store, record })
    }

    /// Marks the host as stopping, before plugins are unloaded.
    fn stopping(&self) {
        let mut record = self.record.clone();
        record["state"] = "stopping".into();
        if let Err(error) = self
            .store
            .put(Self::COLLECTION, Self::KEY, &record.to_string())
        {
            tracing::warn!("{error}");
        }
    }
}
