//! Measures whether history, dashboard and status answers depend on the history's length (a
//! benchmark, not a test): two hosts, one with a short and one with a long history, the same
//! requests against both, in one run.
//!
//! ```sh
//! cargo build --release --workspace
//! cargo run --release -p e2e --example history_scale -- 1000 20000 200
//! ```
//! Arguments: the short history, the long one (deployments), requests timed per endpoint.
//! The histories are written into the store before the host starts, as an earlier release
//! would have left them; the plugin indexes them once at start (its start time is printed).

use std::time::{Duration, Instant};

use deployment_mcp_core::{
    deployment::{DeploymentRecord, Phase},
    model::{DeploymentId, Ec2Phase, EnvironmentId, Timestamp},
};
use e2e::{bench::percentile, HostOptions, TestHost, DEVELOPER_KEY, USER_KEY};
use serde_json::json;

/// Writes `count` finished deployments (a fifth failed) over 20 environments.
fn seed(dir: &std::path::Path, count: usize) {
    let data = dir.join("data");
    let locked = record_store::DataDir::open(&data, "seed.lock", "seed").expect("data dir");
    let store = record_store::Store::open(locked.path(), "powerautomation.db").expect("store");
    let base_ms = 1_700_000_000_000u64;
    let mut ops_text = Vec::new();
    for n in 0..count {
        let created_ms = base_ms + n as u64 * 1000;
        let status = if n % 5 == 0 {
            Phase::Failed
        } else {
            Phase::Completed
        };
        let environment = EnvironmentId::parse(&format!("env_{:02}", n % 20)).expect("an id");
        let record = DeploymentRecord {
            deployment_id: DeploymentId::parse(&format!("dep-{created_ms}-{n:08x}"))
                .expect("an id"),
            status,
            progress: 100,
            version: format!("1.{n}"),
            triggered_by: "api:seed".into(),
            request_id: None,
            environments: vec![environment.clone()],
            ec2: Ec2Phase::Skipped {
                reason: "seeded".into(),
            },
            errors: Vec::new(),
            created_at: Timestamp::from_unix_ms(created_ms),
            finished_at: Some(Timestamp::from_unix_ms(created_ms + 1000)),
            duration_ms: Some(1000),
            retry_of: None,
            log_lines: 0,
            boot_id: "seed".into(),
            created_ms,
            rollout: Default::default(),
            batches: Vec::new(),
            gate: None,
            platform_instance_id: None,
            platform_ip: None,
            window_override: None,
        };
        let failed = if status == Phase::Failed {
            vec![environment]
        } else {
            Vec::new()
        };
        ops_text.push((
            record.deployment_id.clone(),
            serde_json::to_string(&record).expect("encode"),
            record.history_key(),
            serde_json::to_string(&record.history_entry(failed)).expect("encode"),
        ));
    }
    for chunk in ops_text.chunks(2000) {
        let mut ops = Vec::with_capacity(chunk.len() * 2);
        for (id, record, key, entry) in chunk {
            ops.push(record_store::Op::put(
                "deployment_mcp.deployments",
                id,
                record,
            ));
            ops.push(record_store::Op::put("deployment_mcp.history", key, entry));
        }
        store.apply(&ops).expect("seed the history");
    }
}

async fn timed(host: &TestHost, path: &str, key: &str, requests: usize) -> Vec<Duration> {
    let mut times = Vec::with_capacity(requests);
    for _ in 0..requests {
        let began = Instant::now();
        let (status, _) = host.get(path, Some(key)).await;
        times.push(began.elapsed());
        assert_eq!(status, 200, "{path}");
    }
    times.sort();
    times
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let short: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(1000);
    let long: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(20000);
    let requests: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(200);
    let environments = json!({"environments": (0..20).map(|n| json!({
        "environment_id": format!("env_{n:02}"), "environment_type": "linux_local",
        "connection_method": "local", "command": ["true"], "timeout": 30}))
        .collect::<Vec<_>>()});
    let mut hosts = Vec::new();
    for count in [short, long] {
        let dir = tempfile::tempdir().expect("temp dir");
        seed(dir.path(), count);
        let began = Instant::now();
        let host = TestHost::start(
            dir.path(),
            HostOptions {
                environments: environments.to_string(),
                settings: "health_check_interval_secs = 0".into(),
                ..HostOptions::default()
            },
        )
        .await;
        println!(
            "{count} deployments: host ready in {:.2} s (indexes the history once)",
            began.elapsed().as_secs_f64()
        );
        hosts.push((count, host, dir));
    }
    let endpoints = [
        ("/api/deployment/history?limit=50", DEVELOPER_KEY),
        (
            "/api/deployment/history?limit=50&status=failed",
            DEVELOPER_KEY,
        ),
        (
            "/api/deployment/history?limit=50&environment=env_07",
            DEVELOPER_KEY,
        ),
        ("/api/deployment/dashboard", USER_KEY),
        ("/api/deployment/status", USER_KEY),
    ];
    println!(
        "{:<58} {:>12} {:>12} {:>7}",
        "p50 latency", short, long, "ratio"
    );
    for (path, key) in endpoints {
        let mut p50 = Vec::new();
        for (_, host, _) in &hosts {
            p50.push(percentile(&timed(host, path, key, requests).await, 0.5));
        }
        println!(
            "{path:<58} {:>10.2}ms {:>10.2}ms {:>7.2}",
            p50[0].as_secs_f64() * 1e3,
            p50[1].as_secs_f64() * 1e3,
            p50[1].as_secs_f64() / p50[0].as_secs_f64().max(1e-9)
        );
    }
    let (_, host, _) = &hosts[1];
    let (_, page) = host
        .get(
            "/api/deployment/history?limit=1&status=failed",
            Some(DEVELOPER_KEY),
        )
        .await;
    println!(
        "check: {long} deployments, failed total_count = {}",
        page["total_count"]
    );
    for (_, host, _) in hosts {
        host.stop();
    }
}
