//! Measures deployment coordination at scale against real peers on loopback (a benchmark, not
//! a test): the time from trigger to `completed` for N webhook environments in one deployment
//! (with the status view polled every 200 ms meanwhile, as a dashboard does), and the latency of
//! the 202 answer to a trigger, on a quiet host and right after that deployment. The last line,
//! `scale: …`, holds the figures for `benches/scale.sh`.
//!
//! ```sh
//! cargo build --release --workspace
//! cargo run --release -p e2e --example deploy_scale -- 1000 200
//! ```
//! Arguments: environments in the big deployment (default 1000), single-environment triggers
//! timed for the 202 latency (default 200).

use std::time::{Duration, Instant};

use e2e::{
    bench::percentile,
    targets::{Behaviour, Target},
    HostOptions, TestHost, ADMIN_KEY, DEVELOPER_KEY,
};
use serde_json::{json, Value};

/// Waits for the end of the newest deployment through its one-line history entry, which costs
/// the same whatever the deployment's size, so the polling does not weigh on what is measured.
async fn wait_newest_finished(host: &TestHost, id: &str) -> Value {
    loop {
        let (_, page) = host
            .get("/api/deployment/history?limit=1", Some(DEVELOPER_KEY))
            .await;
        let entry = page["history"][0].clone();
        assert_eq!(
            entry["deployment_id"], id,
            "another deployment started meanwhile"
        );
        if is_terminal(entry["status"].as_str().unwrap_or_default()) {
            return entry;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits for the end of a small deployment through its summary.
async fn wait_finished(host: &TestHost, id: &str) -> Value {
    loop {
        let (_, summary) = host
            .get(
                &format!("/api/deployment/status?id={id}"),
                Some(DEVELOPER_KEY),
            )
            .await;
        if is_terminal(summary["status"].as_str().unwrap_or_default()) {
            return summary;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn is_terminal(status: &str) -> bool {
    matches!(status, "completed" | "failed" | "cancelled" | "interrupted")
}

/// Sequential one-environment triggers, each answered 202 while the ones before still run;
/// prints the latency percentiles, waits for all of them to end, and returns the p99.
async fn trigger_latency(host: &TestHost, triggers: usize, when: &str) -> Duration {
    let mut latencies = Vec::with_capacity(triggers);
    let mut started_ids = Vec::with_capacity(triggers);
    for n in 0..triggers {
        let began = Instant::now();
        let (status, answer) = host
            .call(
                reqwest::Method::POST,
                "/api/deployment/trigger-local",
                Some(ADMIN_KEY),
                Some(json!({ "environments": [format!("hook_{n:05}")] })),
            )
            .await;
        latencies.push(began.elapsed());
        assert_eq!(status, 202, "{answer}");
        started_ids.push(
            answer["deployment_id"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        );
    }
    latencies.sort();
    let p99 = percentile(&latencies, 0.99);
    println!(
        "trigger 202 latency over {triggers} triggers, {when}: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        percentile(&latencies, 0.50).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3,
        latencies.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
    );
    for id in started_ids {
        wait_finished(host, &id).await;
    }
    p99
}

/// Polls the status view every 200 ms until `done` fires; returns the latencies.
async fn poll_status(
    address: String,
    mut done: tokio::sync::oneshot::Receiver<()>,
) -> Vec<Duration> {
    let client = reqwest::Client::new();
    let mut latencies = Vec::new();
    let mut ticks = tokio::time::interval(Duration::from_millis(200));
    loop {
        tokio::select! {
            _ = &mut done => return latencies,
            _ = ticks.tick() => {}
        }
        let began = Instant::now();
        let answer = client
            .get(format!("{address}/api/deployment/status"))
            .header("X-API-Key", DEVELOPER_KEY)
            .send()
            .await;
        if let Ok(answer) = answer {
            let _ = answer.bytes().await;
            latencies.push(began.elapsed());
        }
    }
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let environments: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(1000);
    let triggers: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(200);

    let target = Target::start(Behaviour::default()).await;
    let list: Vec<Value> = (0..environments.max(triggers))
        .map(|n| {
            json!({"environment_id": format!("hook_{n:05}"), "environment_type": "docker_container",
                   "connection_method": "webhook", "webhook_url": target.url("/webhook/deploy"),
                   "timeout": 30})
        })
        .collect();
    let dir = tempfile::tempdir().expect("temp dir");
    let host = TestHost::start(
        dir.path(),
        HostOptions {
            environments: json!({ "environments": list }).to_string(),
            settings: "health_check_interval_secs = 0\nmax_parallel = 64".into(),
            ..HostOptions::default()
        },
    )
    .await;

    // Trigger latency with the catalog loaded and nothing else running, then the big
    // deployment, then the latency again while the store still digests it (its log, results and
    // history were just written, and the checkpoint runs behind them).
    let quiet_p99 = trigger_latency(&host, triggers, "a quiet host").await;

    // One deployment of every environment.
    let calls_before = target.received().len();
    let (polling_done, done) = tokio::sync::oneshot::channel();
    let poller = tokio::spawn(poll_status(host.url.clone(), done));
    let ids: Vec<String> = (0..environments).map(|n| format!("hook_{n:05}")).collect();
    let started = Instant::now();
    let (status, answer) = host
        .call(
            reqwest::Method::POST,
            "/api/deployment/trigger-local",
            Some(ADMIN_KEY),
            Some(json!({ "environments": ids })),
        )
        .await;
    assert_eq!(status, 202, "{answer}");
    let id = answer["deployment_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let record = wait_newest_finished(&host, &id).await;
    let elapsed = started.elapsed();
    let _ = polling_done.send(());
    let mut polls = poller.await.unwrap_or_default();
    polls.sort();
    let calls = target.received().len() - calls_before;
    println!(
        "{environments} webhook environments: {} in {:.2} s (trigger to completed; {calls} webhook calls received)",
        record["status"],
        elapsed.as_secs_f64()
    );

    println!(
        "status view polled every 200 ms meanwhile: {} polls, p50 {:.2} ms, p99 {:.2} ms",
        polls.len(),
        percentile(&polls, 0.50).as_secs_f64() * 1e3,
        percentile(&polls, 0.99).as_secs_f64() * 1e3,
    );

    let after_p99 = trigger_latency(&host, triggers, "right after the big deployment").await;
    println!(
        "scale: environments={environments} seconds={:.3} trigger_p99_quiet_ms={:.2} trigger_p99_after_ms={:.2} status_p99_ms={:.2}",
        elapsed.as_secs_f64(),
        quiet_p99.as_secs_f64() * 1e3,
        after_p99.as_secs_f64() * 1e3,
        percentile(&polls, 0.99).as_secs_f64() * 1e3,
    );
    host.stop();
}
