//! Measures the time from a deployment's phase change to its delivery on the event stream (a
//! benchmark, not a test): the real host and plugin, real deployments of a local environment,
//! and S subscribers on `/api/deployment/events`. A phase event carries `at`, the moment the
//! plugin published it (millisecond resolution); each subscriber notes when the event arrived.
//! The run measures one subscriber first, then S, so the figures compare in one run.
//!
//! ```sh
//! cargo build --release --workspace
//! cargo run --release -p e2e --example sse_latency -- 100 40
//! ```
//! Arguments: subscribers (default 100), deployments per round (default 40).

use std::time::Duration;

use e2e::{
    bench::{percentile, phase_deliveries, summary},
    HostOptions, TestHost, ADMIN_KEY, USER_KEY,
};
use serde_json::json;
use tokio::sync::mpsc;

/// Runs `deployments` deployments one after the other with `subscribers` streams open and
/// returns every delivery's latency, checking that each subscriber saw every run end.
async fn round(host: &TestHost, subscribers: usize, deployments: usize) -> Vec<Duration> {
    let (sender, mut receiver) = mpsc::unbounded_channel();
    for _ in 0..subscribers {
        phase_deliveries(host, USER_KEY, sender.clone()).await;
    }
    drop(sender);
    let mut latencies = Vec::new();
    for _ in 0..deployments {
        let (status, answer) = host
            .call(
                reqwest::Method::POST,
                "/api/deployment/trigger-local",
                Some(ADMIN_KEY),
                Some(json!({ "environments": ["local_demo"] })),
            )
            .await;
        assert_eq!(status, 202, "{answer}");
        let id = answer["deployment_id"].as_str().expect("id").to_owned();
        let mut ended = 0;
        while ended < subscribers {
            let delivery = tokio::time::timeout(Duration::from_secs(30), receiver.recv())
                .await
                .expect("events keep coming")
                .expect("streams stay open");
            latencies.push(delivery.latency);
            if delivery.deployment_id == id && delivery.status == "completed" {
                ended += 1;
            }
        }
    }
    latencies.sort();
    latencies
}

fn report(label: &str, latencies: &[Duration]) -> Duration {
    println!(
        "{label:>16}: {:>6} deliveries  {}",
        latencies.len(),
        summary(latencies)
    );
    percentile(latencies, 0.99)
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let subscribers: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(100);
    let deployments: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(40);

    let dir = tempfile::tempdir().expect("temp dir");
    let environments = json!({ "environments": [{
        "environment_id": "local_demo", "environment_type": "linux_local",
        "connection_method": "local", "command": ["true"], "timeout": 30
    }]});
    let host = TestHost::start(
        dir.path(),
        HostOptions {
            environments: environments.to_string(),
            settings: "health_check_interval_secs = 0".into(),
            ..HostOptions::default()
        },
    )
    .await;

    println!("phase change → SSE delivery, {deployments} deployments per round (resolution 1 ms)");
    let one = round(&host, 1, deployments).await;
    let one_p99 = report("1 subscriber", &one);
    let many = round(&host, subscribers, deployments).await;
    let many_p99 = report(&format!("{subscribers} subscribers"), &many);
    println!(
        "p99 ratio {subscribers} : 1 = {:.2} (target: p99 < 100 ms at 100 subscribers)",
        many_p99.as_secs_f64() / one_p99.as_secs_f64().max(1e-3)
    );
}
