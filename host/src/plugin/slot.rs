//! A `PluginSlot` is one configured plugin: the copy serving now (swapped atomically, read
//! without locks on the request path) and the status operators see.

use std::{
    path::PathBuf,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::SystemTime,
};

use arc_swap::{ArcSwap, ArcSwapOption};
use record_store::Store;
use serde::Serialize;

use super::{
    bridge,
    loader::{self, LoadError, LoadFailure, LoadRequest, LoadedPlugin, Retirements},
};
use crate::{config::PluginConfig, services::events::EventBus};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum PluginState {
    Active,
    Disabled,
    Missing,
    Incompatible,
    Failed,
}

impl PluginState {
    pub fn as_str(self) -> &'static str {
        match self {
            PluginState::Active => "active",
            PluginState::Disabled => "disabled",
            PluginState::Missing => "missing",
            PluginState::Incompatible => "incompatible",
            PluginState::Failed => "failed",
        }
    }
}

impl From<LoadFailure> for PluginState {
    fn from(failure: LoadFailure) -> PluginState {
        match failure {
            LoadFailure::Missing => PluginState::Missing,
            LoadFailure::Incompatible => PluginState::Incompatible,
            LoadFailure::Failed => PluginState::Failed,
        }
    }
}

/// What `/api/plugins` shows for one plugin.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct PluginStatus {
    pub name: String,
    pub state: PluginState,
    pub enabled: bool,
    pub mount: String,
    /// The path the host loads from (the configured one, resolved when it is a directory).
    pub path: String,
    pub version: Option<String>,
    pub abi: Option<String>,
    pub description: Option<String>,
    pub sha256: Option<String>,
    pub loaded_at: Option<String>,
    pub swaps: u64,
    pub last_error: Option<String>,
    pub watch: bool,
}

/// Shared context every load needs.
#[derive(Clone)]
pub struct LoadContext {
    pub copies_dir: PathBuf,
    pub store: Arc<Store>,
    pub bus: Arc<EventBus>,
    pub retirements: Retirements,
}

pub struct PluginSlot {
    pub name: String,
    pub config: PluginConfig,
    current: ArcSwapOption<LoadedPlugin>,
    status: ArcSwap<PluginStatus>,
    reload_lock: tokio::sync::Mutex<()>,
    sequence: AtomicU64,
    context: LoadContext,
}

impl PluginSlot {
    pub fn new(
        name: &str,
        config: PluginConfig,
        context: LoadContext,
        enabled: bool,
    ) -> PluginSlot {
        let status = PluginStatus {
            name: name.to_owned(),
            state: if enabled {
                PluginState::Missing
            } else {
                PluginState::Disabled
            },
            enabled,
            mount: config.mount.clone(),
            path: config.path.display().to_string(),
            version: None,
            abi: None,
            description: None,
            sha256: None,
            loaded_at: None,
            swaps: 0,
            last_error: (!enabled).then(|| "disabled in the configuration".to_owned()),
            watch: config.watch && enabled,
        };
        PluginSlot {
            name: name.to_owned(),
            config,
            current: ArcSwapOption::empty(),
            status: ArcSwap::from_pointee(status),
            reload_lock: tokio::sync::Mutex::new(()),
            sequence: AtomicU64::new(0),
            context,
        }
    }

    /// The copy serving now, if any. Lock-free.
    pub fn active(&self) -> Option<Arc<LoadedPlugin>> {
        self.current.load_full()
    }

    pub fn status(&self) -> Arc<PluginStatus> {
        self.status.load_full()
    }

    pub fn is_enabled(&self) -> bool {
        self.status.load().enabled
    }

    /// Loads the configured file and switches new requests to it. On failure the copy serving
    /// before (if any) keeps serving. Reloads are serialized.
    pub async fn reload(&self, trigger: &str) -> Result<Arc<PluginStatus>, LoadError> {
        let _serialized = self.reload_lock.lock().await;
        let request = LoadRequest {
            name: self.name.clone(),
            configured: self.config.path.clone(),
            pin: self.config.sha256.clone(),
            settings_json: self.config.settings.to_string(),
            copies_dir: self.context.copies_dir.clone(),
            sequence: self.sequence.fetch_add(1, Ordering::Relaxed),
            services: bridge::host_services(
                &self.name,
                Arc::clone(&self.context.store),
                Arc::clone(&self.context.bus),
            ),
        };
        let retirements = self.context.retirements.clone();
        let outcome = tokio::task::spawn_blocking(move || loader::load(request, retirements))
            .await
            .unwrap_or_else(|_| {
                Err(LoadError {
                    kind: LoadFailure::Failed,
                    message: "the plugin load task panicked".into(),
                })
            });
        let previous = self.status.load_full();
        match outcome {
            Ok(loaded) => {
                let info = loaded.info.clone();
                let replaced = self.current.swap(Some(Arc::new(loaded)));
                let swaps = previous.swaps + u64::from(replaced.is_some());
                // The old copy retires when its last in-flight request lets go of it.
                drop(replaced);
                let status = PluginStatus {
                    state: PluginState::Active,
                    path: info.source.display().to_string(),
                    version: Some(info.version.clone()),
                    abi: Some(info.abi.clone()),
                    description: Some(info.description.clone()),
                    sha256: Some(info.sha256.clone()),
                    loaded_at: Some(rfc3339(info.loaded_at)),
                    swaps,
                    last_error: None,
                    ..(*previous).clone()
                };
                self.status.store(Arc::new(status));
                tracing::info!(
                    plugin = %self.name,
                    version = %info.version,
                    sha256 = %info.sha256,
                    trigger,
                    swaps,
                    "plugin active"
                );
                Ok(self.status())
            }
            Err(error) => {
                let serving = self.current.load().is_some();
                let status = PluginStatus {
                    state: if serving {
                        PluginState::Active
                    } else {
                        PluginState::from(error.kind)
                    },
                    last_error: Some(error.message.clone()),
                    ..(*previous).clone()
                };
                self.status.store(Arc::new(status));
                if serving {
                    tracing::warn!(plugin = %self.name, trigger, error = %error.message, "reload failed; the previous copy keeps serving");
                } else {
                    tracing::error!(plugin = %self.name, trigger, state = PluginState::from(error.kind).as_str(), error = %error.message, "plugin not loaded");
                }
                Err(error)
            }
        }
    }

    /// Stops serving: new requests get 503, the copy retires once in-flight requests finish.
    pub fn unload(&self) {
        if self.current.swap(None).is_some() {
            let previous = self.status.load_full();
            self.status.store(Arc::new(PluginStatus {
                state: PluginState::Disabled,
                last_error: Some("the host is shutting down".into()),
                ..(*previous).clone()
            }));
        }
    }
}

pub fn rfc3339(time: SystemTime) -> String {
    humantime::format_rfc3339_millis(time).to_string()
}
