//! Takeover soak: a watching node stays up while, round after round, a fresh node on the same
//! PostgreSQL server starts deployments and is killed with SIGKILL while every one of them is in
//! flight. `PA_CLUSTER_SOAK_RUNS` deployments in all (20 by default, the short form CI runs;
//! set 200 for the long one), ten per round, each of an environment of its own: half `http_api`
//! against a target that holds each call, half `local` commands that note each start in a file.
//!
//! At the end every deployment is terminal; every environment is free (one deployment of all
//! of them is accepted); every `local` command started once; every `http_api` environment was
//! called at most twice, the second time being the documented resend (the same
//! `Idempotency-Key`, a higher `X-PowerAutomation-Fence`).

use std::{collections::HashMap, path::Path, time::Duration};

use e2e::{
    postgres::TestPostgres,
    scenario::{finished_within, local, options, started},
    targets::{Behaviour, Target},
    HostOptions, TestHost,
};
use serde_json::{json, Value};

use crate::cluster::{until_seen, CLUSTER_WAIT};

const PER_ROUND: usize = 10;

fn soak_runs() -> usize {
    std::env::var("PA_CLUSTER_SOAK_RUNS")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(20)
}

/// Environment `n`: `http_api` when even, `local` when odd.
fn environment(n: usize, target: &Target, starts: &Path) -> Value {
    let id = format!("s{n:04}");
    if n.is_multiple_of(2) {
        json!({"environment_id": id, "environment_type": "linux_local",
            "connection_method": "http_api", "host": "127.0.0.1", "port": target.port(),
            "api_token": "target-token", "timeout": 60})
    } else {
        let note = format!("echo started >> {}/{id}; sleep 2", starts.display());
        local(&id, &["sh", "-c", &note], 60)
    }
}

fn node_options(server: &TestPostgres, node: &str, environments: &[Value]) -> HostOptions {
    server.node_options(node, Some(1), options(environments.to_vec()))
}

/// Whether environment `n` has started on its node (the target got its call, or its command
/// noted its start).
fn in_flight(n: usize, target: &Target, starts: &Path) -> bool {
    let id = format!("s{n:04}");
    if n.is_multiple_of(2) {
        target.received().iter().any(|call| {
            call.idempotency_key
                .as_deref()
                .is_some_and(|key| key.ends_with(&format!("/{id}")))
        })
    } else {
        starts.join(&id).exists()
    }
}

#[tokio::test]
async fn killed_nodes_leave_every_run_terminal_and_every_environment_triggered_once() {
    let runs = soak_runs().div_ceil(PER_ROUND) * PER_ROUND;
    let server = TestPostgres::start("cluster-soak");
    let target = Target::start(Behaviour {
        deploy_delay: Duration::from_secs(2),
        ..Behaviour::default()
    })
    .await;
    let starts = tempfile::tempdir().expect("a directory for the commands' notes");
    let environments: Vec<Value> = (0..runs)
        .map(|n| environment(n, &target, starts.path()))
        .collect();
    let watcher_dir = tempfile::tempdir().expect("a temporary directory");
    let watcher = TestHost::start(
        watcher_dir.path(),
        node_options(&server, "watcher", &environments),
    )
    .await;

    let mut deployments = Vec::new();
    for round in 0..runs / PER_ROUND {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let node = format!("node-{round}");
        let doomed = TestHost::start(dir.path(), node_options(&server, &node, &environments)).await;
        until_seen(&watcher, &node, "active").await;
        let mine: Vec<usize> = (round * PER_ROUND..(round + 1) * PER_ROUND).collect();
        for n in &mine {
            let id = started(&doomed, json!({"environments": [format!("s{n:04}")]})).await;
            deployments.push(id);
        }
        let all_in_flight = e2e::wait_until(CLUSTER_WAIT, || {
            std::future::ready(mine.iter().all(|n| in_flight(*n, &target, starts.path())))
        })
        .await;
        assert!(
            all_in_flight,
            "round {round}: every environment started:\n{}",
            doomed.logs()
        );
        doomed.kill();
    }

    let mut statuses: HashMap<String, usize> = HashMap::new();
    for id in &deployments {
        let record = finished_within(&watcher, id, CLUSTER_WAIT).await;
        *statuses
            .entry(record["status"].as_str().unwrap_or_default().to_owned())
            .or_default() += 1;
    }
    // Every local command started once: an interrupted one is not started again.
    for n in (1..runs).step_by(2) {
        let notes =
            std::fs::read_to_string(starts.path().join(format!("s{n:04}"))).unwrap_or_default();
        assert_eq!(notes.lines().count(), 1, "s{n:04} started {notes:?}");
    }
    // Every http_api call after the first is the resend: same key, a higher fence.
    let mut calls: HashMap<String, Vec<u64>> = HashMap::new();
    for call in target.received() {
        let key = call.idempotency_key.clone().unwrap_or_default();
        let fence = call
            .fence
            .as_deref()
            .and_then(|fence| fence.parse().ok())
            .unwrap_or(0);
        calls.entry(key).or_default().push(fence);
    }
    assert_eq!(
        calls.len(),
        runs / 2,
        "one key per http_api environment: {calls:?}"
    );
    for (key, fences) in &calls {
        assert!(
            fences.len() <= 2 && fences.windows(2).all(|pair| pair[0] < pair[1]),
            "{key}: fences {fences:?}"
        );
    }
    // Nothing is left claimed: one deployment of every environment is accepted.
    let everything: Vec<String> = (0..runs).map(|n| format!("s{n:04}")).collect();
    let (status, answer) =
        e2e::scenario::trigger(&watcher, json!({"environments": everything})).await;
    assert_eq!(status, 202, "every environment is free: {answer}");
    eprintln!(
        "{runs} deployments on killed nodes ended: {statuses:?}; http_api calls: {}",
        target.received().len()
    );
    assert!(watcher.stop().is_some_and(|status| status.success()));
}
