//! Events on every node: hosts on one PostgreSQL server the test starts serve a run's events
//! with the same ids in the same order, whichever node runs it, and a client resumes with
//! `Last-Event-ID` on the other node; a node whose listening connection goes silent (its server
//! process stopped, the connection still open) notices, replaces it and misses nothing; a
//! database restart costs the calls made during it, and events flow again to streams opened
//! before it.

use e2e::{
    postgres::TestPostgres,
    scenario::{finished_within, local, started, subscribe_after, trigger},
    TestHost, DEVELOPER_KEY, USER_KEY,
};
use nix::sys::signal::Signal;
use serde_json::{json, Value};
use tokio::sync::mpsc::UnboundedReceiver;

use crate::cluster::{node_with, until_seen, CLUSTER_WAIT};

type Events = UnboundedReceiver<(u64, String, Value)>;

/// Two nodes that both know a quick `local` environment, each seeing the other.
async fn two_nodes(
    server: &TestPostgres,
    dirs: &(tempfile::TempDir, tempfile::TempDir),
) -> (TestHost, TestHost) {
    let quick = || vec![local("quick", &["echo", "hello from a run"], 30)];
    let a = node_with(dirs.0.path(), server, "node-a", quick()).await;
    let b = node_with(dirs.1.path(), server, "node-b", quick()).await;
    until_seen(&a, "node-b", "active").await;
    until_seen(&b, "node-a", "active").await;
    (a, b)
}

fn dirs() -> (tempfile::TempDir, tempfile::TempDir) {
    (
        tempfile::tempdir().expect("a temporary directory"),
        tempfile::tempdir().expect("a temporary directory"),
    )
}

/// The events `events` brings from the first one about deployment `id` to its final phase.
async fn run_of(events: &mut Events, id: &str) -> Vec<(u64, String, Value)> {
    let mut seen: Vec<(u64, String, Value)> = Vec::new();
    loop {
        let next = tokio::time::timeout(CLUSTER_WAIT, events.recv()).await;
        let Ok(Some((event_id, kind, data))) = next else {
            panic!("the events of {id} end with its final phase: {seen:?}")
        };
        let about_it = data["deployment_id"] == id;
        if seen.is_empty() && !about_it {
            continue;
        }
        let last = about_it
            && kind == "deployment.phase"
            && matches!(
                data["status"].as_str(),
                Some("completed" | "failed" | "cancelled" | "interrupted")
            );
        seen.push((event_id, kind, data));
        if last {
            return seen;
        }
    }
}

#[tokio::test]
async fn every_node_serves_a_runs_events_with_the_same_ids_and_resumes_on_another() {
    let server = TestPostgres::start("events-everywhere");
    let dirs = dirs();
    let (a, b) = two_nodes(&server, &dirs).await;
    let c_dir = tempfile::tempdir().expect("a temporary directory");
    let quick = vec![local("quick", &["echo", "hello from a run"], 30)];
    let c = node_with(c_dir.path(), &server, "node-c", quick).await;
    until_seen(&c, "node-a", "active").await;
    let (_, mut on_a) = subscribe_after(&a, DEVELOPER_KEY, None).await;
    let (_, mut on_b) = subscribe_after(&b, DEVELOPER_KEY, None).await;
    let (_, mut on_c) = subscribe_after(&c, DEVELOPER_KEY, None).await;
    let (_, mut user_on_b) = subscribe_after(&b, USER_KEY, None).await;

    let id = started(&a, json!({"environments": ["quick"]})).await;
    let seen_on_a = run_of(&mut on_a, &id).await;
    let seen_on_b = run_of(&mut on_b, &id).await;
    let seen_on_c = run_of(&mut on_c, &id).await;
    assert_eq!(
        seen_on_a, seen_on_b,
        "node-b serves node-a's run as node-a does"
    );
    assert_eq!(seen_on_a, seen_on_c, "so does node-c");
    let ids: Vec<u64> = seen_on_a.iter().map(|(id, _, _)| *id).collect();
    assert!(ids.windows(2).all(|pair| pair[0] < pair[1]), "{ids:?}");
    assert!(
        seen_on_b
            .iter()
            .any(|(_, kind, data)| kind == "deployment.log"
                && data.to_string().contains("hello from a run")),
        "a developer on node-b gets node-a's log lines: {seen_on_b:?}"
    );
    // A user's view is kept across nodes: no log lines.
    let user_view = run_of(&mut user_on_b, &id).await;
    assert!(
        user_view
            .iter()
            .all(|(_, kind, _)| kind != "deployment.log"),
        "{user_view:?}"
    );

    // A client that saw the first events on node-a resumes on node-b with exactly the rest.
    let (status, mut resumed) = subscribe_after(&b, DEVELOPER_KEY, Some(ids[0])).await;
    assert_eq!(status, 200);
    let mut rest = Vec::new();
    while rest.len() < seen_on_a.len() - 1 {
        let next = tokio::time::timeout(CLUSTER_WAIT, resumed.recv()).await;
        let Ok(Some(event)) = next else {
            panic!("node-b replays what came after {}: {rest:?}", ids[0])
        };
        rest.push(event);
    }
    assert_eq!(rest, seen_on_a[1..]);
}

#[tokio::test]
async fn a_node_whose_listening_connection_went_silent_replaces_it_and_misses_nothing() {
    let server = TestPostgres::start("events-silent");
    let dirs = dirs();
    let (a, b) = two_nodes(&server, &dirs).await;
    let name = "powerautomation-events node-b";
    let mut listening = Vec::new();
    let found = e2e::wait_until(CLUSTER_WAIT, || {
        listening = server.backends_named(name);
        std::future::ready(!listening.is_empty())
    })
    .await;
    assert!(found, "node-b listens on a connection named {name:?}");
    // The server process of node-b's listening connection stops: the connection stays open
    // (the kernel still answers for it), but nothing arrives on it any more.
    for pid in &listening {
        e2e::send_signal(*pid, Signal::SIGSTOP);
    }
    let (_, mut on_b) = subscribe_after(&b, USER_KEY, None).await;
    let id = started(&a, json!({"environments": ["quick"]})).await;
    let seen = run_of(&mut on_b, &id).await;
    assert!(!seen.is_empty());
    let noticed = b.wait_for_log("went silent", CLUSTER_WAIT).await;
    let replaced = e2e::wait_until(CLUSTER_WAIT, || {
        let now = server.backends_named(name);
        std::future::ready(now.iter().any(|pid| !listening.contains(pid)))
    })
    .await;
    for pid in &listening {
        e2e::send_signal(*pid, Signal::SIGCONT);
    }
    assert!(noticed, "node-b noticed the silence:\n{}", b.logs());
    assert!(replaced, "node-b listens on a new connection");
    // Events still reach node-b, now woken by notifications again.
    let id = started(&a, json!({"environments": ["quick"]})).await;
    assert!(!run_of(&mut on_b, &id).await.is_empty());
}

#[tokio::test]
async fn a_database_restart_costs_the_calls_made_during_it_and_events_flow_again() {
    let server = TestPostgres::start("events-restart");
    let dirs = dirs();
    let (a, b) = two_nodes(&server, &dirs).await;
    let (_, mut on_b) = subscribe_after(&b, USER_KEY, None).await;
    server.restart();
    // The first calls after the restart may meet connections the server ended; the nodes go on.
    let deadline = tokio::time::Instant::now() + CLUSTER_WAIT;
    let id = loop {
        let (status, answer) = trigger(&a, json!({"environments": ["quick"]})).await;
        if status == 202 {
            break answer["deployment_id"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "node-a takes deployments again: {status} {answer}\n{}",
            a.logs()
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    // node-b's stream, opened before the restart, sees the run on node-a end.
    let seen = run_of(&mut on_b, &id).await;
    assert_eq!(
        seen.last().map(|(_, _, data)| data["status"].clone()),
        Some("completed".into())
    );
    assert_eq!(
        finished_within(&b, &id, CLUSTER_WAIT).await["status"],
        "completed"
    );
    until_seen(&a, "node-b", "active").await;
    until_seen(&b, "node-a", "active").await;
}
