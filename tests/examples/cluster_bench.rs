//! Measures what a shared PostgreSQL server costs against the embedded SQLite store (a
//! benchmark, not a test), in one run on one machine:
//! - trigger → `202`: N triggers one after the other, each of a `local` environment of its own
//!   (so none is busy), on one node on SQLite and on one node on PostgreSQL (the harness's own
//!   server on loopback);
//! - phase change → delivery on `/api/deployment/events`: D deployments on the PostgreSQL node
//!   A, with a subscriber on A and one on a second node B (the event reaches B through the
//!   cluster's event log), and the same deployments on the SQLite node with a subscriber there.
//!   A phase event's `at` has millisecond resolution.
//!
//! ```sh
//! cargo build --release --workspace --all-targets
//! cargo run --release -p e2e --example cluster_bench -- 300 40
//! ```
//! Arguments: triggers per store (default 300), deployments for the delivery delay (default 40).

use std::time::{Duration, Instant};

use e2e::{
    bench::{percentile, phase_deliveries, summary, Delivery},
    postgres::TestPostgres,
    scenario::{local, options, trigger},
    HostOptions, TestHost, USER_KEY,
};
use serde_json::json;
use tokio::sync::mpsc;

fn environments(triggers: usize) -> HostOptions {
    let mut list: Vec<_> = (0..triggers)
        .map(|n| local(&format!("t{n:05}"), &["true"], 60))
        .collect();
    list.push(local("phase", &["true"], 60));
    options(list)
}

fn on_postgres(server: &TestPostgres, node: &str, triggers: usize) -> HostOptions {
    server.node_options(node, None, environments(triggers))
}

/// The time each of `count` triggers took to be answered `202`, sorted.
async fn trigger_latencies(host: &TestHost, count: usize) -> Vec<Duration> {
    let mut latencies = Vec::with_capacity(count);
    for n in 0..count {
        let body = json!({"environments": [format!("t{n:05}")]});
        let started = Instant::now();
        let (status, answer) = trigger(host, body).await;
        latencies.push(started.elapsed());
        assert_eq!(status, 202, "{answer}");
    }
    latencies.sort();
    latencies
}

/// Runs `deployments` deployments of `phase` on `runner` one after the other and returns each
/// subscriber's delivery delays (one list per subscriber, in `subscribers`' order).
async fn delivery_delays(
    runner: &TestHost,
    subscribers: &[&TestHost],
    deployments: usize,
) -> Vec<Vec<Duration>> {
    let mut receivers: Vec<mpsc::UnboundedReceiver<Delivery>> = Vec::new();
    for host in subscribers {
        let (sender, receiver) = mpsc::unbounded_channel();
        phase_deliveries(host, USER_KEY, sender).await;
        receivers.push(receiver);
    }
    let mut delays = vec![Vec::new(); subscribers.len()];
    for _ in 0..deployments {
        let (status, answer) = trigger(runner, json!({"environments": ["phase"]})).await;
        assert_eq!(status, 202, "{answer}");
        let id = answer["deployment_id"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        for (receiver, delays) in receivers.iter_mut().zip(&mut delays) {
            loop {
                let delivery = tokio::time::timeout(Duration::from_secs(30), receiver.recv())
                    .await
                    .expect("events keep coming")
                    .expect("the stream stays open");
                if delivery.deployment_id != id {
                    continue;
                }
                delays.push(delivery.latency);
                if delivery.status == "completed" {
                    break;
                }
            }
        }
    }
    for list in &mut delays {
        list.sort();
    }
    delays
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let triggers: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(300);
    let deployments: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(40);

    let server = TestPostgres::start("cluster-bench");
    let dirs: Vec<_> = (0..3)
        .map(|_| tempfile::tempdir().expect("a temporary directory"))
        .collect();
    let sqlite = TestHost::start(dirs[0].path(), environments(triggers)).await;
    let a = TestHost::start(dirs[1].path(), on_postgres(&server, "node-a", triggers)).await;

    println!("trigger → 202, {triggers} triggers one after the other, each of its own environment");
    let on_sqlite = trigger_latencies(&sqlite, triggers).await;
    println!("  one node, SQLite:      {}", summary(&on_sqlite));
    let on_pg = trigger_latencies(&a, triggers).await;
    println!("  one node, PostgreSQL:  {}", summary(&on_pg));
    println!(
        "  p99 ratio PostgreSQL : SQLite = {:.2}",
        percentile(&on_pg, 0.99).as_secs_f64() / percentile(&on_sqlite, 0.99).as_secs_f64()
    );

    let b = TestHost::start(dirs[2].path(), on_postgres(&server, "node-b", triggers)).await;
    println!("phase change → SSE delivery, {deployments} deployments");
    let alone = delivery_delays(&sqlite, &[&sqlite], deployments).await;
    println!("  SQLite, same node:          {}", summary(&alone[0]));
    let shared = delivery_delays(&a, &[&a, &b], deployments).await;
    println!("  PostgreSQL, same node (A):  {}", summary(&shared[0]));
    println!("  PostgreSQL, other node (B): {}", summary(&shared[1]));
    for host in [sqlite, a, b] {
        host.stop();
    }
}
