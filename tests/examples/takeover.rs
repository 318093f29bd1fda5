//! Measures how long a lost node's deployment waits for another node (a benchmark, not a test):
//! a PostgreSQL server of its own, a watching node that stays up, and K times a fresh node that
//! starts a deployment of a `local` environment, is killed with SIGKILL while it runs, and is
//! timed until the watching node has taken the run over (its environment marked `interrupted`
//! in the record). The bar is `lease_secs + 2 s` (SPEC §9).
//!
//! ```sh
//! cargo build --release --workspace --all-targets
//! cargo run --release -p e2e --example takeover -- 50 3
//! ```
//! Arguments: kills (default 50), `lease_secs` (default 3).

use std::time::{Duration, Instant};

use e2e::{
    bench::percentile,
    postgres::TestPostgres,
    scenario::{detail, local, options, started},
    HostOptions, TestHost,
};

fn node_options(server: &TestPostgres, node: &str, lease_secs: u64, kills: usize) -> HostOptions {
    // One environment per kill: a killed node's claim is its until the takeover.
    let environments = (0..kills)
        .map(|n| local(&format!("work-{n}"), &["sleep", "5"], 600))
        .collect();
    server.node_options(node, Some(lease_secs), options(environments))
}

/// The status of the deployment's one environment, as `host` reads it.
async fn environment_status(host: &TestHost, id: &str) -> String {
    let record = detail(host, id).await;
    record["results"][0]["status"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let kills: usize = args.next().and_then(|n| n.parse().ok()).unwrap_or(50);
    let lease_secs: u64 = args.next().and_then(|n| n.parse().ok()).unwrap_or(3);
    let server = TestPostgres::start("takeover-bench");
    let watcher_dir = tempfile::tempdir().expect("a temporary directory");
    let watcher = TestHost::start(
        watcher_dir.path(),
        node_options(&server, "watcher", lease_secs, kills),
    )
    .await;
    let mut times = Vec::with_capacity(kills);
    for n in 0..kills {
        let dir = tempfile::tempdir().expect("a temporary directory");
        // A new id each time: a node started again under its old id is known gone at once,
        // which is not what is measured here.
        let node = TestHost::start(
            dir.path(),
            node_options(&server, &format!("doomed-{n}"), lease_secs, kills),
        )
        .await;
        let id = started(
            &node,
            serde_json::json!({"environments": [format!("work-{n}")]}),
        )
        .await;
        let deadline = Instant::now() + Duration::from_secs(30);
        while environment_status(&node, &id).await != "running" {
            assert!(Instant::now() < deadline, "the deployment did not start");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let killed = Instant::now();
        node.kill();
        let deadline = killed + Duration::from_secs(lease_secs + 60);
        while environment_status(&watcher, &id).await != "interrupted" {
            assert!(
                Instant::now() < deadline,
                "no node took deployment {id} over"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let took = killed.elapsed();
        eprintln!("kill {} of {kills}: taken over after {took:?}", n + 1);
        times.push(took);
    }
    times.sort();
    let ms = |duration: Duration| duration.as_millis();
    println!(
        "takeover: kills={kills} lease_secs={lease_secs} p50_ms={} p99_ms={} max_ms={} bar_ms={}",
        ms(percentile(&times, 0.5)),
        ms(percentile(&times, 0.99)),
        ms(times.last().copied().unwrap_or_default()),
        (lease_secs + 2) * 1000
    );
    let _ = watcher.stop();
}
