//! `deployment_mcp`'s core: deployment coordination for the PowerAutomation host, as a library.
//! The plugin the host loads (`plugins/deployment_mcp`, a cdylib) is [`export_deployment_mcp!`]
//! over it; the CLI runs [`build`] on an in-process host; tests drive either.
//!
//! Data flow: `api` (HTTP) → `coordinator` (runs) → `triggers` (one per connection method)
//! and `health`; `persist` is the only code that knows how records lie in the host's store,
//! which holds every record.

pub mod agenda;
pub mod api;
pub mod audit;
pub mod auto_deploy;
pub mod calendar;
pub mod client;
pub mod coordinator;
pub mod deployment;
pub mod ec2;
pub mod egress;
pub mod environments;
pub mod health;
pub mod mcp;
pub mod model;
pub mod notifications;
pub mod persist;
pub mod redact;
pub mod rollout;
pub mod run;
pub mod scheduler;
pub mod schedules;
pub mod settings;
pub mod triggers;
pub mod windows;
pub mod wire;

use std::sync::Arc;

use abi_stable::std_types::{RResult, RString};
use plugin_api::{HostServicesBox, PluginInstanceBox};
use plugin_guest::{RuntimeOptions, Startup};
use serde::Deserialize;

/// What the plugin says it does (its metadata for the host).
pub const DESCRIPTION: &str =
    "Coordinates deployments: EC2 phase, parallel environment triggers, health checks";

/// The host's `host/lifecycle` record: which process is running, and whether it is stopping.
#[derive(Debug, Clone, Deserialize)]
pub struct HostLifecycle {
    pub boot_id: String,
    pub state: String,
    /// Other boots whose runs are still being carried out: with the plugin in a child process,
    /// the host's other children of this plugin (an older one finishing after a swap).
    #[serde(default)]
    pub live_boot_ids: Vec<String>,
    /// The host process's own boot id where `boot_id` is a child process's: a new child is not
    /// a new start of the host.
    #[serde(default)]
    pub host_boot_id: Option<String>,
    /// The node this host is among those on one store (absent on a host without nodes).
    #[serde(default)]
    pub node_id: Option<String>,
}

impl HostLifecycle {
    /// The boot id of the host process, whichever process the plugin runs in.
    pub fn host_boot(&self) -> &str {
        self.host_boot_id.as_deref().unwrap_or(&self.boot_id)
    }
}

/// Why the plugin could not start; the host shows the message as the plugin's start error.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// `[plugins.deployment_mcp.settings]` is invalid (the message names the field).
    #[error("{0}")]
    Settings(String),
    #[error("{0}")]
    HttpClient(String),
    #[error(transparent)]
    Import(#[from] persist::catalog::ImportError),
    #[error(transparent)]
    Store(#[from] persist::records::StoreError),
}

/// Builds the plugin's handler on the current tokio runtime: imports the environments file,
/// marks runs of an earlier boot as interrupted, and starts the periodic health checks. The
/// exported plugin calls it at start; benchmarks and tests call it in-process.
pub async fn build(
    host: plugin_guest::Host,
    settings: &serde_json::Value,
    version: &'static str,
) -> Result<api::Api, BuildError> {
    let settings = Arc::new(settings::Settings::from_json(settings).map_err(BuildError::Settings)?);
    let records = persist::records::Records::new(host);
    // Without a lifecycle record (an older host), every unfinished run is from another boot.
    let (boot_id, live_boots, host_boot, node) = match persist::runs::host_lifecycle(&records).await
    {
        Some(lifecycle) => {
            let host_boot = lifecycle.host_boot().to_owned();
            let node = lifecycle.node_id.clone().map(|node_id| persist::NodeTag {
                node_id,
                node_boot: host_boot.clone(),
            });
            (lifecycle.boot_id, lifecycle.live_boot_ids, host_boot, node)
        }
        None => {
            let boot = format!("plugin-{}", std::process::id());
            (boot.clone(), Vec::new(), boot, None)
        }
    };
    let coordinator = Arc::new(coordinator::Coordinator::new(
        records,
        egress::Egress::new(settings.allowed_target_networks.clone())
            .map_err(BuildError::HttpClient)?,
        Arc::clone(&settings),
        boot_id,
        node,
    ));
    let imported = coordinator
        .catalog()
        .import_file(&settings.environments_file)
        .await?;
    let indexed = persist::history::History::new(coordinator.records().clone())
        .index_existing()
        .await?;
    if indexed > 0 {
        tracing::info!(
            deployments = indexed,
            "indexed the history written by an earlier release"
        );
    }
    let interrupted = coordinator.recover(&live_boots).await?;
    tracing::info!(
        added = imported.added,
        removed = imported.removed,
        updated = imported.updated,
        kept_api_edits = imported.kept_api_edits,
        interrupted,
        file = %settings.environments_file.display(),
        "deployment_mcp started"
    );
    coordinator.start_background();
    tokio::spawn(scheduler::run(Arc::clone(&coordinator)));
    tokio::spawn(notifications::notifier::run(
        Arc::clone(&coordinator),
        host_boot.clone(),
    ));
    tokio::spawn(auto_deploy::run(
        Arc::clone(&coordinator),
        Arc::clone(&settings),
        host_boot,
    ));
    Ok(api::Api::new(coordinator, version, api::openapi::document))
}

/// Starts an instance for the host: the plugin's own runtime, then [`build`]. `version` is the
/// plugin build's version, which the API reports.
pub fn start(
    host: HostServicesBox,
    settings: RString,
    version: &'static str,
) -> RResult<PluginInstanceBox, RString> {
    let options = RuntimeOptions {
        thread_name: "deployment_mcp",
        // Sized to the CPUs the host may use (a fixed count is too many on a small machine and
        // too few on a large one).
        worker_threads: 0,
        drain_timeout: std::time::Duration::from_secs(30),
    };
    plugin_guest::start_instance(
        host,
        settings,
        options,
        move |startup: Startup| async move {
            build(startup.host, &startup.settings, version)
                .await
                .map_err(|error| error.to_string())
        },
    )
}

/// Exports the plugin's root module from a cdylib, under that crate's version. The crate needs
/// `abi_stable`, `plugin-api` and `plugin-guest` as dependencies.
#[macro_export]
macro_rules! export_deployment_mcp {
    () => {
        fn __deployment_mcp_start(
            host: ::plugin_api::HostServicesBox,
            settings: ::abi_stable::std_types::RString,
        ) -> ::abi_stable::std_types::RResult<
            ::plugin_api::PluginInstanceBox,
            ::abi_stable::std_types::RString,
        > {
            $crate::start(host, settings, env!("CARGO_PKG_VERSION"))
        }

        ::plugin_guest::export_plugin! {
            name: "deployment_mcp",
            version: env!("CARGO_PKG_VERSION"),
            description: $crate::DESCRIPTION,
            start: __deployment_mcp_start,
        }
    };
}
