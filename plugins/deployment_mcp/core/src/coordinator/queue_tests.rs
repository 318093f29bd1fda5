//! The queue, in-process with the clock paused: a node at `max_running_deployments` queues
//! what it admits and starts it when a run ends; another node with room starts it first; a
//! cancel ends a queued deployment at once, its environments free and never triggered; the
//! queue outlives a restart; the room a run leaves goes to the queue at once.

use std::sync::Arc;

use plugin_local_host::LocalHost;
use serde_json::json;

use super::{
    tests::{coordinator_with, environment, request, PATIENCE},
    Cancelled, Coordinator,
};
use crate::{
    deployment::{Phase, TargetStatus},
    environments::parse_one,
    model::DeploymentId,
    persist::{deployments::DeploymentStore, test_records},
    run::script::{Script, Step},
};

/// A node (`node`, on `host`) that runs one deployment at a time, knowing `environments`.
async fn one_at_a_time(
    host: &LocalHost,
    script: &Arc<Script>,
    node: &str,
    environments: &[&str],
) -> Arc<Coordinator> {
    let coordinator = coordinator_with(
        host,
        script,
        Some(node),
        json!({"max_running_deployments": 1}),
    );
    for id in environments {
        let environment = parse_one(environment(id, 600, None).to_string().as_bytes())
            .expect("a valid environment");
        // Another coordinator on the same store may have stored it already.
        let _ = coordinator.catalog().create(environment).await;
    }
    coordinator
}

/// Node `a`, one at a time, running `busy` (which hangs) with `waiting` queued behind it.
async fn busy_and_waiting(
    host: &LocalHost,
    script: &Arc<Script>,
) -> (Arc<Coordinator>, DeploymentId, DeploymentId) {
    script.on("busy", Step::Hang);
    let a = one_at_a_time(host, script, "a", &["busy", "waiting"]).await;
    let busy = start(&a, "busy").await;
    // Its trigger runs (and hangs) before anything else happens to it.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !script.calls().iter().any(|call| call.environment == "busy") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "busy was never triggered"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let waiting = start(&a, "waiting").await;
    (a, busy, waiting)
}

async fn start(coordinator: &Arc<Coordinator>, environment: &str) -> DeploymentId {
    coordinator
        .start(request(&[environment], "v1", json!({})))
        .await
        .expect("admitted")
        .deployment_id
}

async fn status(coordinator: &Coordinator, id: &DeploymentId) -> Phase {
    DeploymentStore::new(coordinator.records().clone())
        .record(id)
        .await
        .expect("readable")
        .expect("recorded")
        .status
}

/// Waits (virtual time, bounded) until `id` ends; returns how.
async fn ended(coordinator: &Coordinator, id: &DeploymentId) -> Phase {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let phase = status(coordinator, id).await;
        if phase.is_terminal() {
            return phase;
        }
        assert!(tokio::time::Instant::now() < deadline, "{id} did not end");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_node_at_its_limit_queues_and_starts_the_next_when_its_run_ends() {
    let host = LocalHost::in_memory().expect("an in-memory host");
    let script = Script::new();
    script.on("first", Step::Succeed(std::time::Duration::from_secs(10)));
    let a = one_at_a_time(&host, &script, "a", &["first", "second"]).await;
    let first = start(&a, "first").await;
    let second = start(&a, "second").await;
    assert_eq!(status(&a, &second).await, Phase::Pending);
    assert_eq!(a.start_queued().await.expect("looked"), 0, "no room yet");
    assert!(
        test_records::claim(&host.host, "second").is_some(),
        "claimed while queued"
    );
    assert_eq!(ended(&a, &first).await, Phase::Completed);
    assert_eq!(a.start_queued().await.expect("looked"), 1);
    assert_eq!(ended(&a, &second).await, Phase::Completed);
    let calls: Vec<String> = script
        .calls()
        .into_iter()
        .map(|call| call.environment)
        .collect();
    assert_eq!(calls, ["first", "second"]);
}

#[tokio::test(start_paused = true)]
async fn a_queued_deployment_is_started_by_another_node_with_room() {
    let host = LocalHost::in_memory().expect("an in-memory host");
    let script = Script::new();
    script.on("busy", Step::Hang);
    test_records::put_node_record(&host.host, "a", "active");
    test_records::put_node_record(&host.host, "b", "active");
    let a = one_at_a_time(&host, &script, "a", &["busy", "next"]).await;
    let b = one_at_a_time(&host, &script, "b", &[]).await;
    let busy = start(&a, "busy").await;
    let next = start(&a, "next").await;
    assert_eq!(b.start_queued().await.expect("looked"), 1);
    assert_eq!(a.start_queued().await.expect("looked"), 0, "once");
    assert!(b.run_ended(&next).is_some(), "node b runs it");
    assert_eq!(ended(&b, &next).await, Phase::Completed);
    let log = DeploymentStore::new(b.records().clone());
    let page = log.log_tail(&next, 50).await.expect("a log");
    let lines: Vec<&str> = page.lines.iter().map(|line| line.line.as_str()).collect();
    assert!(
        lines
            .iter()
            .any(|line| line.contains("queued: node a runs 1 deployment")),
        "{lines:?}"
    );
    assert!(
        lines
            .iter()
            .any(|line| line.contains("node b started it from the queue")),
        "{lines:?}"
    );
    a.cancel(&busy, "test").await.expect("cancelled");
    assert_eq!(ended(&a, &busy).await, Phase::Cancelled);
}

#[tokio::test(start_paused = true)]
async fn a_cancel_ends_a_queued_deployment_at_once_and_frees_its_environments() {
    let host = LocalHost::in_memory().expect("an in-memory host");
    let script = Script::new();
    let (a, busy, waiting) = busy_and_waiting(&host, &script).await;
    let cancelled = a.cancel(&waiting, "operator").await.expect("cancelled");
    assert!(matches!(cancelled, Cancelled::Ended));
    assert_eq!(status(&a, &waiting).await, Phase::Cancelled);
    let targets = DeploymentStore::new(a.records().clone())
        .targets(&waiting)
        .await
        .expect("readable");
    assert_eq!(targets[0].status, TargetStatus::Skipped, "{targets:?}");
    assert!(
        test_records::claim(&host.host, "waiting").is_none(),
        "freed"
    );
    assert!(test_records::running_entry(&host.host, &waiting).is_none());
    // Room again, and nothing queued: it is never started.
    a.cancel(&busy, "test").await.expect("cancelled");
    assert_eq!(ended(&a, &busy).await, Phase::Cancelled);
    assert_eq!(a.start_queued().await.expect("looked"), 0);
    let calls: Vec<String> = script
        .calls()
        .into_iter()
        .map(|call| call.environment)
        .collect();
    assert_eq!(calls, ["busy"]);
}

#[tokio::test(start_paused = true)]
async fn a_queued_deployment_outlives_a_restart_and_the_next_process_starts_it() {
    let host = LocalHost::in_memory().expect("an in-memory host");
    let script = Script::new();
    let (_gone, busy, waiting) = busy_and_waiting(&host, &script).await;
    // A new process on the same store: the run it had is interrupted, the queue is kept.
    let restarted = host.restarted().expect("a new boot");
    let next = one_at_a_time(&restarted, &script, "a", &[]).await;
    assert_eq!(next.recover(&[]).await.expect("recovered"), 1);
    assert_eq!(status(&next, &busy).await, Phase::Interrupted);
    assert_eq!(status(&next, &waiting).await, Phase::Pending);
    assert!(
        test_records::claim(&host.host, "waiting").is_some(),
        "still claimed"
    );
    assert_eq!(next.start_queued().await.expect("looked"), 1);
    assert_eq!(ended(&next, &waiting).await, Phase::Completed);
}

#[tokio::test(start_paused = true)]
async fn the_room_a_run_leaves_goes_to_the_queue_at_once() {
    let host = LocalHost::in_memory().expect("an in-memory host");
    let script = Script::new();
    script.on("first", Step::Succeed(std::time::Duration::from_secs(10)));
    let a = one_at_a_time(&host, &script, "a", &["first", "second"]).await;
    a.start_background();
    let first = start(&a, "first").await;
    let second = start(&a, "second").await;
    // Virtual time: the first run's end and the second's start, seen every 10 ms.
    let step = std::time::Duration::from_millis(10);
    let mut first_ended = None;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let second_started = loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the queue was not started"
        );
        if first_ended.is_none() && status(&a, &first).await.is_terminal() {
            first_ended = Some(tokio::time::Instant::now());
        }
        if status(&a, &second).await != Phase::Pending {
            break tokio::time::Instant::now();
        }
        tokio::time::sleep(step).await;
    };
    let first_ended = first_ended.expect("the first ended before the second started");
    assert!(
        second_started - first_ended < std::time::Duration::from_millis(100),
        "started {:?} after the room was freed (the watch's period is 500 ms)",
        second_started - first_ended
    );
    assert_eq!(ended(&a, &second).await, Phase::Completed);
}
