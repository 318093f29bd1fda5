//! One `GET /status` round trip through a loaded plugin copy (request built from host types,
//! enqueued across the ABI, handled on the plugin's runtime, answer copied back) against the
//! same handler called in-process (the same import from the ABI request, no queue, no thread
//! hop).
//!
//! Needs the release plugin: `cargo build --release --workspace`, then
//! `cargo bench -p powerautomation --bench plugin_call`. `PA_BENCH_PLUGIN` overrides its path.

use std::{path::PathBuf, sync::Arc};

use abi_stable::std_types::{ROption, RString, RVec};
use criterion::{criterion_group, criterion_main, Criterion};
use plugin_api::{PluginRequest, Principal, Role};
use plugin_guest::{Handler, Import};
use powerautomation::{
    plugin::{
        bridge,
        loader::{self, LoadRequest, LoadTarget, Retirements},
    },
    services::events::EventBus,
};
use record_store::Store;

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn abi_request() -> PluginRequest {
    PluginRequest {
        request_id: RString::from("bench-1"),
        method: RString::from("GET"),
        path: RString::from("/status"),
        query: RString::new(),
        headers: RVec::new(),
        body: RVec::new(),
        principal: ROption::RSome(Principal {
            name: RString::from("bench"),
            role: Role::User,
        }),
    }
}

fn plugin_call(c: &mut Criterion) {
    // Before any thread starts: the plugin must not ask the EC2 metadata service (off-machine).
    std::env::set_var("AWS_EC2_METADATA_DISABLED", "true");
    let library = std::env::var_os("PA_BENCH_PLUGIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/release/libdeployment_mcp.so"));
    let work = std::env::temp_dir().join(format!("pa-bench-{}", std::process::id()));
    std::fs::create_dir_all(&work).expect("create the bench directory");
    let store: Arc<dyn record_store::RecordStore> =
        Arc::new(Store::open(&work, "bench.db").expect("open the bench store"));
    let bus = Arc::new(EventBus::new());
    let environments_file = repo_root().join("config/remote_environments.json");
    let settings = serde_json::json!({ "environments_file": environments_file });
    let loaded = loader::load(
        LoadRequest {
            target: LoadTarget {
                name: "deployment_mcp".into(),
                configured: library.clone(),
                pin: String::new(),
                settings_json: settings.to_string(),
                copies_dir: work.join("plugin-copies"),
                sequence: 0,
            },
            services: bridge::host_services("deployment_mcp", store.clone(), Arc::clone(&bus)),
        },
        Retirements::default(),
    )
    .unwrap_or_else(|error| {
        panic!(
            "cannot load {}: {} (build it with `cargo build --release --workspace`)",
            library.display(),
            error.message
        )
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("bench runtime");
    let in_process = runtime
        .block_on(deployment_mcp_core::build(
            plugin_guest::Host::new(bridge::host_services("deployment_mcp", store, bus)),
            &settings,
            "bench",
        ))
        .expect("build the in-process handler");

    let mut group = c.benchmark_group("status_round_trip");
    group.bench_function("through_loaded_plugin", |b| {
        b.iter(|| {
            runtime.block_on(async {
                let (sink, answer) = bridge::reply_channel();
                loaded.handle(abi_request(), sink);
                let answer = answer.await.expect("the plugin answers");
                assert_eq!(answer.status, 200);
            })
        })
    });
    group.bench_function("in_process_handler", |b| {
        b.iter(|| {
            runtime.block_on(async {
                let answer = in_process.handle(Import::import(abi_request())).await;
                assert_eq!(answer.status, 200);
            })
        })
    });
    group.finish();
    drop(loaded);
    let _ = std::fs::remove_dir_all(&work);
}

criterion_group!(benches, plugin_call);
criterion_main!(benches);
