//! The notifications soak (a benchmark, not a test): DEPLOYMENTS deployments (default 1,000)
//! on LANES lanes at once (default 8), each canary-first behind a manual gate approved at once,
//! so three events each, all told to one webhook subscription whose receiver answers 30 % of
//! attempts with a 500 and holds 10 % without an answer (cut off after `attempt_timeout_secs`,
//! 2 s here; the first retry after at most 1 s, the default). It checks what a receiver that
//! dedupes on `Idempotency-Key` sees (every event once, none accepted twice, each deployment's
//! events in order) and measures, per delivery, the time to its first attempt: from its event
//! (the notice's `at`), and from when it could be sent (its event, or the acceptance of the
//! deployment's event before it, whichever is later: a subscription's deliveries of one
//! deployment go in order, so a later event waits for an earlier one that is being retried).
//! The last line, `notify: …`, holds the latter for `benches/notify.sh`.
//!
//! ```sh
//! cargo build --release --workspace --all-targets
//! cargo run --release -p e2e --example notify_soak -- 1000 8
//! ```

use std::time::{Duration, Instant};

use e2e::{
    bench::percentile,
    receiver::{gated_deployments, gated_environments, seen, Receiver, Script},
    scenario::options,
    wait_until, HostOptions, TestHost, ADMIN_KEY,
};
use serde_json::json;

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let deployments: usize = args.next().and_then(|n| n.parse().ok()).unwrap_or(1_000);
    let lanes: usize = args.next().and_then(|n| n.parse().ok()).unwrap_or(8).max(1);
    let rounds = deployments.div_ceil(lanes);
    let dir = tempfile::tempdir().expect("temp dir");
    let host = TestHost::start(
        dir.path(),
        HostOptions {
            settings:
                "health_check_interval_secs = 0\nnotifications = { attempt_timeout_secs = 2 }\n"
                    .to_owned(),
            ..options(gated_environments(lanes))
        },
    )
    .await;
    let receiver = Receiver::start(Script {
        error_percent: 30,
        hang_percent: 10,
        seed: 11,
        ..Script::default()
    })
    .await;
    let (status, created) = host
        .call(
            reqwest::Method::POST,
            "/api/deployment/subscriptions",
            Some(ADMIN_KEY),
            Some(
                json!({"id": "soak", "events": ["deployment.gate", "deployment.completed"],
                "channel": {"type": "webhook", "url": receiver.url()}}),
            ),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let started = Instant::now();
    let ids = gated_deployments(&host, lanes, rounds).await;
    let deployed = started.elapsed();
    let expected = ids.len() * 3;
    let all = wait_until(Duration::from_secs(600), || async {
        seen(&receiver).unique >= expected
    })
    .await;
    let drained = started.elapsed();
    let seen = seen(&receiver);
    println!(
        "{} deployments on {lanes} lanes in {:.1} s; every delivery accepted after {:.1} s",
        ids.len(),
        deployed.as_secs_f64(),
        drained.as_secs_f64()
    );
    println!(
        "attempts {} (failed {}), deliveries accepted {} of {expected}, accepted twice {}, out of order {}",
        receiver.deliveries().len(),
        seen.failed_attempts,
        seen.unique,
        seen.accepted_twice,
        seen.out_of_order.len()
    );
    for line in seen.out_of_order.iter().take(5) {
        println!("out of order: {line}");
    }
    let ms = |sorted: &[Duration], fraction: f64| percentile(sorted, fraction).as_secs_f64() * 1e3;
    println!(
        "from the event to its first attempt, with the wait for earlier events of the deployment: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        ms(&seen.to_first_attempt, 0.5),
        ms(&seen.to_first_attempt, 0.99),
        ms(&seen.to_first_attempt, 1.0),
    );
    let ready = &seen.ready_to_first_attempt;
    println!(
        "notify: deliveries={expected} lost={} duplicates={} out_of_order={} first_attempt_p50_ms={:.1} first_attempt_p99_ms={:.1} first_attempt_max_ms={:.1}",
        expected.saturating_sub(seen.unique),
        seen.accepted_twice,
        seen.out_of_order.len(),
        ms(ready, 0.5),
        ms(ready, 0.99),
        ms(ready, 1.0),
    );
    if !all || seen.accepted_twice > 0 || !seen.out_of_order.is_empty() {
        std::process::exit(1);
    }
}
