//! `deployment_mcp`: deployment coordination for the PowerAutomation host, loaded as a plugin.
//!
//! The library is both the `cdylib` the host loads (through the root module exported at the
//! bottom of this file) and an `rlib`, so its logic stays usable and testable without the host.

pub mod environments;
pub mod triggers;
pub mod routes;
pub mod settings;

use abi_stable::std_types::{RResult, RString};
use plugin_api::{HostServicesBox, PluginInstanceBox};
use plugin_guest::{RuntimeOptions, Startup};

/// The version this build reports to the host.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

fn start(host: HostServicesBox, settings: RString) -> RResult<PluginInstanceBox, RString> {
    let options = RuntimeOptions {
        thread_name: "deployment_mcp",
        worker_threads: 1,
        drain_timeout: std::time::Duration::from_secs(30),
    };
    plugin_guest::start_instance(host, settings, options, |startup: Startup| async move {
        let settings = settings::Settings::from_json(&startup.settings)?;
        let environments = environments::load_file(&settings.environments_file)?;
        tracing::info!(
            environments = environments.len(),
            file = %settings.environments_file.display(),
            "deployment_mcp started"
        );
        Ok(routes::Api::new(startup.host, environments))
    })
}

plugin_guest::export_plugin! {
    name: "deployment_mcp",
    version: VERSION,
    description: "Coordinates deployments: EC2 phase, parallel environment triggers, health checks",
    start: start,
}
