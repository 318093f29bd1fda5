//! Nodes on one store, in-process: a run that finds its lease gone stops and writes nothing
//! more; a node that watches takes over a lost node's run (finished environments kept, those
//! in flight sent again or interrupted by their kind, the rest started) or ends it when it
//! cannot go on. Two coordinators on one in-memory store stand for the nodes; the host's node
//! records are written as the host writes them.

use plugin_local_host::LocalHost;
use serde_json::json;

use super::tests::{coordinator_on_node, environment, harness, request, PATIENCE};
use crate::{
    deployment::{Phase, TargetStatus},
    environments::parse_one,
    persist::{deployments::DeploymentStore, test_records},
    run::script::{Script, Step},
};

/// Writes node `node`'s record as the host keeps it, in `state`.
fn node_record(host: &LocalHost, node: &str, state: &str) {
    test_records::put_node_record(&host.host, node, state);
}

#[tokio::test(start_paused = true)]
async fn a_run_whose_entry_another_node_took_stops_and_writes_nothing_more() {
    let host = LocalHost::in_memory().expect("an in-memory host");
    let script = Script::new();
    let coordinator = coordinator_on_node(&host, &script, Some("a"));
    let environment = parse_one(environment("held", 600, None).to_string().as_bytes())
        .expect("a valid environment");
    coordinator
        .catalog()
        .create(environment)
        .await
        .expect("stored");
    script.on("held", Step::Hang);
    let mut events = host.events.subscribe();
    let id = coordinator
        .start(request(&["held"], "v1", json!({})))
        .await
        .expect("started")
        .deployment_id;
    loop {
        let event = events.recv().await.expect("events");
        if event.kind == "deployment.environment"
            && event.data["environment"]["status"] == "running"
        {
            break;
        }
    }
    let store = DeploymentStore::new(coordinator.records().clone());
    let before = store
        .record(&id)
        .await
        .expect("readable")
        .expect("recorded");
    // Node b takes the run over: its entry replaces a's.
    let taken = json!({"boot_id": "b-boot", "node_id": "b", "node_boot": "b-boot", "epoch": 2});
    test_records::put_running_entry(&host.host, &id, &taken.to_string());
    let ended = coordinator.run_ended(&id).expect("a runs it");
    tokio::time::timeout(PATIENCE, ended.wait())
        .await
        .expect("the run stops once it sees its lease gone");
    // Nothing of its end was written: the record, the environment, the entry and the claim are
    // as node b found them.
    let after = store
        .record(&id)
        .await
        .expect("readable")
        .expect("recorded");
    assert_eq!(after.status, before.status);
    assert!(after.finished_at.is_none());
    let target = store.targets(&id).await.expect("readable");
    assert_eq!(target[0].status, TargetStatus::Running, "{target:?}");
    assert_eq!(
        test_records::running_entry(&host.host, &id),
        Some(taken.to_string())
    );
    assert!(test_records::claim(&host.host, "held").is_some());
}

#[tokio::test(start_paused = true)]
async fn a_lost_nodes_rollback_in_progress_is_ended_once_by_a_node_that_watches() {
    let mut harness = harness(Vec::new()).await;
    // The harness's coordinator stands for nothing here: nodes a and b share its store.
    let script = Script::new();
    let a = coordinator_on_node(&harness.host, &script, Some("a"));
    let environment = parse_one(environment("d1", 600, None).to_string().as_bytes())
        .expect("a valid environment");
    a.catalog().create(environment).await.expect("stored");
    let first = a
        .start(request(&["d1"], "v1", json!({})))
        .await
        .expect("started")
        .deployment_id;
    harness.until_end(&first).await;
    // v2 fails and its rollback hangs: node a is lost while it rolls back, which another
    // node cannot continue (what it had returned is not known well enough).
    script.on("d1", Step::Fail(std::time::Duration::ZERO));
    script.on_rollback("d1", Step::Hang);
    let id = a
        .start(request(&["d1"], "v2", json!({"rollback": "all"})))
        .await
        .expect("started")
        .deployment_id;
    harness.until_phase(&id, Phase::RollingBack).await;
    let b_host = harness.host.restarted().expect("a second process");
    let b = coordinator_on_node(&b_host, &Script::new(), Some("b"));
    node_record(&harness.host, "a", "active");
    node_record(&harness.host, "b", "active");
    assert_eq!(b.recover_lost_nodes().await.expect("watched"), 0);
    let busy = b.start(request(&["d1"], "v2", json!({}))).await;
    assert!(busy.is_err(), "d1 is a's while a beats");
    // a is seen lost: b ends its run, once, and frees its environment.
    let mut b_events = b_host.events.subscribe();
    node_record(&harness.host, "a", "lost");
    assert_eq!(b.recover_lost_nodes().await.expect("watched"), 1);
    assert_eq!(b.recover_lost_nodes().await.expect("watched"), 0);
    let published = b_events.try_recv().expect("b published the end");
    assert_eq!(
        (published.kind.as_str(), &published.data["status"]),
        ("deployment.phase", &json!("interrupted"))
    );
    let record = harness.record(&id).await;
    assert_eq!(record.status, Phase::Interrupted);
    assert!(
        record.errors.iter().any(|error| error.contains("node a")),
        "{:?}",
        record.errors
    );
    b.start(request(&["d1"], "v2", json!({})))
        .await
        .expect("the environment is free");
    // a's run, still going in its process, sees its entry gone and writes nothing more.
    if let Some(ended) = a.run_ended(&id) {
        tokio::time::timeout(PATIENCE, ended.wait())
            .await
            .expect("a's run stops");
    }
    assert_eq!(harness.record(&id).await.status, Phase::Interrupted);
}

/// An `http_api` environment (its requests never leave: the script answers for it).
fn http_api(id: &str) -> serde_json::Value {
    json!({"environment_id": id, "environment_type": "linux_local",
        "connection_method": "http_api", "host": "127.0.0.1", "port": 9, "timeout": 600})
}

#[tokio::test(start_paused = true)]
async fn a_node_that_watches_takes_over_a_lost_nodes_run_and_finishes_it() {
    let mut harness = harness(Vec::new()).await;
    let a_script = Script::new();
    let a = coordinator_on_node(&harness.host, &a_script, Some("a"));
    for environment in [
        environment("done", 600, None),
        http_api("api"),
        environment("cmd", 600, None),
        environment("later", 600, None),
    ] {
        let environment = parse_one(environment.to_string().as_bytes()).expect("valid");
        a.catalog().create(environment).await.expect("stored");
    }
    a_script.on("api", Step::Hang);
    a_script.on("cmd", Step::Hang);
    // Two batches: the first ends on node a (done) or is in flight there (api, cmd); the
    // second has not started. One failure is tolerated, so the interrupted `cmd` does not stop
    // the rest.
    let rollout = json!({"strategy": {"type": "rolling", "batch_size": 3}, "max_failures": 1});
    let id = a
        .start(request(&["done", "api", "cmd", "later"], "v1", rollout))
        .await
        .expect("started")
        .deployment_id;
    // Events are published once stored: wait until the store holds done's success and api and
    // cmd running.
    let wanted = [
        ("done", "succeeded"),
        ("api", "running"),
        ("cmd", "running"),
    ];
    let seen = std::cell::RefCell::new(Vec::new());
    harness
        .events_until(&id, |kind, data| {
            if kind == "deployment.environment" {
                let environment = &data["environment"];
                if let (Some(id), Some(status)) = (
                    environment["environment_id"].as_str(),
                    environment["status"].as_str(),
                ) {
                    seen.borrow_mut().push((id.to_owned(), status.to_owned()));
                }
            }
            wanted
                .iter()
                .all(|(id, status)| seen.borrow().iter().any(|(i, s)| i == id && s == status))
        })
        .await;
    node_record(&harness.host, "a", "active");
    node_record(&harness.host, "b", "active");
    let b_host = harness.host.restarted().expect("a second process");
    let b_script = Script::new();
    let b = coordinator_on_node(&b_host, &b_script, Some("b"));
    let mut b_events = b_host.events.subscribe();
    node_record(&harness.host, "a", "lost");
    assert_eq!(b.recover_lost_nodes().await.expect("watched"), 1);
    assert_eq!(b.recover_lost_nodes().await.expect("watched"), 0, "once");

    let takeover = b_events.recv().await.expect("the takeover event");
    assert_eq!(takeover.kind, "deployment.takeover");
    assert_eq!(takeover.data["from_node"], "a");
    assert_eq!(takeover.data["to_node"], "b");
    assert_eq!(takeover.data["epoch"], 2);
    assert_eq!(takeover.data["resent"], json!(["api"]));
    assert_eq!(takeover.data["interrupted"], json!(["cmd"]));
    // b runs the rest: api sent again, later started, done and cmd left as they were.
    let ended = b.run_ended(&id).expect("b runs it");
    tokio::time::timeout(PATIENCE, ended.wait())
        .await
        .expect("b's run ends");
    let called: Vec<String> = b_script
        .calls()
        .into_iter()
        .map(|call| call.environment)
        .collect();
    assert_eq!(called, ["api", "later"]);
    let store = DeploymentStore::new(b.records().clone());
    let record = store
        .record(&id)
        .await
        .expect("readable")
        .expect("recorded");
    assert_eq!(record.status, Phase::Failed, "cmd's outcome is unknown");
    let targets = store.targets(&id).await.expect("readable");
    let status = |environment: &str| {
        targets
            .iter()
            .find(|target| target.environment_id == environment)
            .map(|target| target.status)
    };
    assert_eq!(status("done"), Some(TargetStatus::Succeeded));
    assert_eq!(status("api"), Some(TargetStatus::Succeeded));
    assert_eq!(status("cmd"), Some(TargetStatus::Interrupted));
    assert_eq!(status("later"), Some(TargetStatus::Succeeded));
    let log = store
        .log_page(&id, 0, 100)
        .await
        .expect("readable")
        .lines
        .into_iter()
        .map(|line| line.line)
        .collect::<Vec<_>>()
        .join("\n");
    assert!(log.contains("node b took over from node a"), "{log}");
    // Node a's run, still going in its process, finds its lease gone and writes nothing more.
    if let Some(ended) = a.run_ended(&id) {
        tokio::time::timeout(PATIENCE, ended.wait())
            .await
            .expect("a's run stops");
    }
    let after = store
        .record(&id)
        .await
        .expect("readable")
        .expect("recorded");
    assert_eq!(after.status, Phase::Failed);
    assert_eq!(after.finished_at, record.finished_at);
}
