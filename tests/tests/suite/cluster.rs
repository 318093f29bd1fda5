//! Several hosts (nodes) on one PostgreSQL server the test starts: each node sees the others in
//! `GET /api/cluster`; a node killed with SIGKILL is seen lost and a node that watches takes its
//! running deployment over and finishes it (an `http_api` request in flight sent again with the
//! same `Idempotency-Key` and a higher `X-PowerAutomation-Fence`, a `local` one interrupted, the
//! environments not started started); a node paused past its lease (SIGSTOP) that wakes writes
//! nothing more to the run it lost; a draining node queues what it admits for the others; a
//! drain names unknown nodes; a cancel and an idempotency key reach across nodes; concurrent
//! triggers on three nodes start an environment once; a node at `max_running_deployments`
//! queues, and a node with room starts what it queued.

use std::time::Duration;

use e2e::{
    postgres::TestPostgres,
    scenario::{detail, local, options, started, status_within, trigger},
    targets::{Behaviour, Target},
    HostOptions, TestHost, ADMIN_KEY, USER_KEY,
};
use nix::sys::signal::Signal;
use reqwest::Method;
use serde_json::Value;

/// How long a node may stay silent before the others see it lost, in these tests.
const LEASE_SECS: u64 = 1;
/// Bound on waits for what the cluster does on its own (seen lost, runs ended): the lease and
/// the watchers' periods are a few seconds at most; a slow machine gets plenty more.
pub(crate) const CLUSTER_WAIT: Duration = Duration::from_secs(30);

/// A node on `server` named `node`, in `dir`, with a slow and a stuck `local` environment.
async fn node(dir: &std::path::Path, server: &TestPostgres, node: &str) -> TestHost {
    node_with(dir, server, node, Vec::new()).await
}

/// A node with `more` environments besides those of [`node`].
pub(crate) async fn node_with(
    dir: &std::path::Path,
    server: &TestPostgres,
    node: &str,
    more: Vec<Value>,
) -> TestHost {
    TestHost::start(dir, node_options(server, node, more)).await
}

fn node_options(server: &TestPostgres, node: &str, more: Vec<Value>) -> HostOptions {
    let mut environments = vec![
        local("slow", &["sleep", "3"], 120),
        local("stuck", &["sleep", "20"], 600),
    ];
    environments.extend(more);
    server.node_options(node, Some(LEASE_SECS), options(environments))
}

/// The nodes `host` sees, by id: (state, runs).
async fn nodes(host: &TestHost) -> Vec<(String, String, u64)> {
    let (status, answer) = host.get("/api/cluster", Some(USER_KEY)).await;
    assert_eq!(status, 200, "{answer}");
    answer["nodes"]
        .as_array()
        .expect("a list of nodes")
        .iter()
        .map(|node| {
            (
                node["node_id"].as_str().unwrap_or_default().to_owned(),
                node["state"].as_str().unwrap_or_default().to_owned(),
                node["runs"].as_u64().unwrap_or_default(),
            )
        })
        .collect()
}

/// Waits (bounded) until `host` sees `node` in `state`.
pub(crate) async fn until_seen(host: &TestHost, node: &str, state: &str) {
    let seen = e2e::wait_until(CLUSTER_WAIT, || async {
        nodes(host)
            .await
            .iter()
            .any(|(id, seen, _)| id == node && seen == state)
    })
    .await;
    assert!(
        seen,
        "{node} was not seen {state}: {:?}\n{}",
        nodes(host).await,
        host.logs()
    );
}

/// The node's log as one text.
async fn log_text(host: &TestHost, id: &str) -> String {
    let page = e2e::scenario::log_page(host, id).await;
    page["lines"]
        .as_array()
        .map(|lines| {
            lines
                .iter()
                .filter_map(|line| line["line"].as_str())
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn a_killed_nodes_run_is_taken_over_and_finished_by_a_node_that_watches() {
    let server = TestPostgres::start("cluster-kill");
    // The target holds each deploy call, so node-a dies with one in flight.
    let target = Target::start(Behaviour {
        deploy_delay: Duration::from_secs(2),
        ..Behaviour::default()
    })
    .await;
    let api = serde_json::json!({"environment_id": "k1-api", "environment_type": "linux_local",
        "connection_method": "http_api", "host": "127.0.0.1", "port": target.port(),
        "api_token": "target-token", "timeout": 60});
    let more = || {
        vec![
            api.clone(),
            local("k2-cmd", &["sleep", "20"], 600),
            local("k3-later", &["true"], 60),
        ]
    };
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = node_with(a_dir.path(), &server, "node-a", more()).await;
    let b = node_with(b_dir.path(), &server, "node-b", more()).await;
    until_seen(&a, "node-b", "active").await;
    until_seen(&b, "node-a", "active").await;

    // Batch 1 (k1-api, k2-cmd) is in flight on node-a when it dies; batch 2 (k3-later) has
    // not started. One failure is tolerated: k2-cmd's unknown outcome does not stop the rest.
    let body = serde_json::json!({"environments": ["k1-api", "k2-cmd", "k3-later"],
        "strategy": {"type": "rolling", "batch_size": 2}, "max_failures": 1});
    let id = started(&a, body).await;
    let in_flight = e2e::wait_until(CLUSTER_WAIT, || async {
        let record = detail(&b, &id).await;
        target.received().len() == 1
            && e2e::scenario::result(&record, "k2-cmd")["status"] == "running"
    })
    .await;
    assert!(in_flight, "node-a sent both triggers:\n{}", a.logs());
    let runs = nodes(&b).await;
    assert!(
        runs.iter()
            .any(|(node, _, runs)| node == "node-a" && *runs == 1),
        "node-a runs the deployment: {runs:?}"
    );
    // Any node answers busy for an environment a run holds.
    let (status, answer) = trigger(&b, serde_json::json!({"environments": ["k3-later"]})).await;
    assert_eq!(status, 409, "{answer}");

    a.kill();
    until_seen(&b, "node-a", "lost").await;
    let record = e2e::scenario::finished_within(&b, &id, CLUSTER_WAIT).await;
    assert_eq!(
        record["status"], "failed",
        "stuck's outcome is unknown: {record}"
    );
    let result = |environment: &str| e2e::scenario::result(&record, environment)["status"].clone();
    assert_eq!(result("k1-api"), "succeeded", "{record}");
    assert_eq!(result("k2-cmd"), "interrupted", "{record}");
    assert_eq!(result("k3-later"), "succeeded", "{record}");
    // The api call was sent again, once, as the same request with a higher fence.
    let received = target.received();
    assert_eq!(received.len(), 2, "{received:?}");
    let key = format!("{id}/k1-api");
    assert!(received
        .iter()
        .all(|call| call.idempotency_key.as_deref() == Some(key.as_str())));
    let fences: Vec<Option<&str>> = received.iter().map(|call| call.fence.as_deref()).collect();
    assert_eq!(fences, [Some("1"), Some("2")]);
    let log = log_text(&b, &id).await;
    assert!(
        log.contains("node node-b took over from node node-a"),
        "the log says who took over from whom:\n{log}"
    );
    assert!(b.stop().is_some_and(|status| status.success()));
}

#[tokio::test]
async fn a_node_paused_past_its_lease_writes_nothing_more_to_the_run_it_lost() {
    let server = TestPostgres::start("cluster-pause");
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = node(a_dir.path(), &server, "node-a").await;
    let b = node(b_dir.path(), &server, "node-b").await;
    until_seen(&b, "node-a", "active").await;

    // The trigger ends (3 s) while node-a is paused: when it wakes, its run has a result to
    // write, and must not.
    let id = started(&a, serde_json::json!({"environments": ["slow"]})).await;
    status_within(&b, &id, CLUSTER_WAIT, |status| status == "local_deploying").await;
    a.signal(Signal::SIGSTOP);
    until_seen(&b, "node-a", "lost").await;
    // Taken over: its one environment was in flight over `local`, so it is interrupted and the
    // deployment ends failed on node-b.
    let ended = e2e::scenario::finished_within(&b, &id, CLUSTER_WAIT).await;
    assert_eq!(ended["status"], "failed", "{ended}");
    a.signal(Signal::SIGCONT);
    assert!(
        a.wait_for_log("another node took this run over", CLUSTER_WAIT)
            .await,
        "the woken node sees it lost the run:\n{}",
        a.logs()
    );
    // It beats again, active, and the record is still what node-b wrote.
    until_seen(&b, "node-a", "active").await;
    let record = detail(&b, &id).await;
    assert_eq!(record["status"], "failed", "{record}");
    assert_eq!(record["finished_at"], ended["finished_at"], "{record}");
    assert_eq!(
        e2e::scenario::result(&record, "slow")["status"],
        "interrupted",
        "{record}"
    );
    assert!(a.stop().is_some_and(|status| status.success()));
    assert!(b.stop().is_some_and(|status| status.success()));
}

/// `POST /api/cluster/nodes/{node}/drain` on `host` with `key`.
async fn drain(host: &TestHost, node: &str, key: &str) -> (u16, Value) {
    let path = format!("/api/cluster/nodes/{node}/drain");
    host.call(Method::POST, &path, Some(key), None).await
}

#[tokio::test]
async fn a_draining_node_queues_what_it_admits_and_a_drain_names_unknown_nodes() {
    let server = TestPostgres::start("cluster-drain");
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = node(a_dir.path(), &server, "node-a").await;
    let b = node(b_dir.path(), &server, "node-b").await;
    until_seen(&a, "node-b", "active").await;

    let (status, answer) = drain(&a, "node-b", USER_KEY).await;
    assert_eq!(status, 403, "only admins drain: {answer}");
    let (status, answer) = drain(&a, "node-z", ADMIN_KEY).await;
    assert_eq!((status, answer["error"].as_str()), (404, Some("not_found")));
    let (status, answer) = drain(&a, "node-b", ADMIN_KEY).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["state"], "draining", "{answer}");
    until_seen(&b, "node-b", "draining").await;

    // node-b starts nothing new once it knows: what it admits is queued, and node-a, which has
    // room, starts it.
    let queued = e2e::wait_until(CLUSTER_WAIT, || async {
        let id = started(&b, serde_json::json!({"environments": ["slow"]})).await;
        let record = e2e::scenario::finished_within(&b, &id, CLUSTER_WAIT).await;
        assert_eq!(record["status"], "completed", "{record}");
        log_text(&b, &id)
            .await
            .contains("queued: node node-b drains")
    })
    .await;
    assert!(
        queued,
        "the draining node queues what it admits:\n{}",
        b.logs()
    );
    let id = started(&b, serde_json::json!({"environments": ["slow"]})).await;
    let record = e2e::scenario::finished_within(&b, &id, CLUSTER_WAIT).await;
    assert_eq!(record["status"], "completed", "{record}");
    let log = log_text(&b, &id).await;
    assert!(
        log.contains("node node-a started it from the queue"),
        "{log}"
    );
    assert!(a.stop().is_some_and(|status| status.success()));
    assert!(b.stop().is_some_and(|status| status.success()));
}

/// `POST /trigger-local` on `host` as admin with `Idempotency-Key: key`.
async fn trigger_with_key(host: &TestHost, key: &str, body: Value) -> (u16, Value) {
    let response = host
        .client()
        .post(format!("{}/api/deployment/trigger-local", host.url))
        .header("X-API-Key", ADMIN_KEY)
        .header("Idempotency-Key", key)
        .json(&body)
        .send()
        .await
        .expect("an answer");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn a_cancel_or_a_repeated_key_on_another_node_reaches_the_run_where_it_runs() {
    let server = TestPostgres::start("cluster-cancel");
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = node(a_dir.path(), &server, "node-a").await;
    let b = node(b_dir.path(), &server, "node-b").await;
    until_seen(&b, "node-a", "active").await;

    // One idempotency key sent to both nodes: one deployment, the same answer.
    let body = serde_json::json!({"environments": ["stuck"]});
    let (status, first) = trigger_with_key(&a, "cluster-key-1", body.clone()).await;
    assert_eq!(status, 202, "{first}");
    let (status, again) = trigger_with_key(&b, "cluster-key-1", body).await;
    assert_eq!(status, 202, "{again}");
    assert_eq!(again["deployment_id"], first["deployment_id"]);
    let id = first["deployment_id"].as_str().expect("an id").to_owned();
    status_within(&b, &id, CLUSTER_WAIT, |status| status == "local_deploying").await;

    // A cancel on node-b stops the run on node-a (which looks for cancels every 500 ms).
    let path = format!("/api/deployment/deployments/{id}/cancel");
    let (status, answer) = b.call(Method::POST, &path, Some(ADMIN_KEY), None).await;
    assert!(matches!(status, 200 | 202), "{status}: {answer}");
    let record = e2e::scenario::finished_within(&b, &id, CLUSTER_WAIT).await;
    assert_eq!(record["status"], "cancelled", "{record}");
    assert!(a.stop().is_some_and(|status| status.success()));
    assert!(b.stop().is_some_and(|status| status.success()));
}

#[tokio::test]
async fn concurrent_triggers_on_three_nodes_start_each_environment_once() {
    let server = TestPostgres::start("cluster-concurrent");
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut hosts = Vec::new();
    for (n, dir) in dirs.iter().enumerate() {
        hosts.push(node(dir.path(), &server, &format!("node-{n}")).await);
    }
    until_seen(&hosts[0], "node-2", "active").await;

    // One key, sent to every node at once, three times each: one deployment for all.
    let body = serde_json::json!({"environments": ["stuck"]});
    let keyed = futures_util::future::join_all(
        hosts
            .iter()
            .flat_map(|host| std::iter::repeat_n(host, 3))
            .map(|host| trigger_with_key(host, "cluster-key-2", body.clone())),
    )
    .await;
    let ids: Vec<&Value> = keyed
        .iter()
        .map(|(status, answer)| {
            assert_eq!(*status, 202, "{keyed:?}");
            &answer["deployment_id"]
        })
        .collect();
    assert!(ids.iter().all(|id| *id == ids[0]), "{keyed:?}");

    // Without a key, concurrent triggers of one environment on every node: one starts it, the
    // others are told it is busy.
    let body = serde_json::json!({"environments": ["slow"]});
    let answers = futures_util::future::join_all(
        hosts
            .iter()
            .flat_map(|host| std::iter::repeat_n(host, 3))
            .map(|host| trigger(host, body.clone())),
    )
    .await;
    let mut statuses: Vec<u16> = answers.iter().map(|(status, _)| *status).collect();
    statuses.sort();
    assert_eq!(
        statuses,
        [202, 409, 409, 409, 409, 409, 409, 409, 409],
        "{answers:?}"
    );
    for host in hosts {
        assert!(host.stop().is_some_and(|status| status.success()));
    }
}

#[tokio::test]
async fn a_node_at_its_limit_queues_and_a_node_with_room_starts_it() {
    let server = TestPostgres::start("cluster-queue");
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let full = HostOptions {
        settings: "health_check_interval_secs = 0\nmax_running_deployments = 1".into(),
        ..node_options(&server, "node-a", Vec::new())
    };
    let a = TestHost::start(a_dir.path(), full).await;
    let b = node(b_dir.path(), &server, "node-b").await;
    until_seen(&a, "node-b", "active").await;

    let first = started(&a, serde_json::json!({"environments": ["stuck"]})).await;
    status_within(&a, &first, CLUSTER_WAIT, |status| {
        status == "local_deploying"
    })
    .await;
    // Any node says who runs it, and under which fence.
    assert_eq!(
        detail(&b, &first).await["run"],
        serde_json::json!({"queued": false, "owner_node": "node-a", "lease_epoch": 1})
    );
    // node-a runs one already: the next one it admits is queued, and node-b starts it.
    let second = started(&a, serde_json::json!({"environments": ["slow"]})).await;
    let record = e2e::scenario::finished_within(&a, &second, CLUSTER_WAIT).await;
    assert_eq!(record["status"], "completed", "{record}");
    let log = log_text(&a, &second).await;
    assert!(
        log.contains("queued: node node-a runs 1 deployment"),
        "{log}"
    );
    assert!(
        log.contains("node node-b started it from the queue"),
        "{log}"
    );
    let path = format!("/api/deployment/deployments/{first}/cancel");
    let (status, answer) = a.call(Method::POST, &path, Some(ADMIN_KEY), None).await;
    assert!(matches!(status, 200 | 202), "{status}: {answer}");
    assert!(a.stop().is_some_and(|status| status.success()));
    assert!(b.stop().is_some_and(|status| status.success()));
}
