//! The coordinator and its runs, in-process: an in-memory store, environments whose triggers and
//! health follow a script, and the runtime's clock paused, so timeouts, bakes and pauses of
//! minutes pass in virtual time and each test takes milliseconds. What is checked is what the
//! store holds and what was published: phases in order, numbered events, timeouts, cancels at
//! each phase, gates, failure thresholds, rollbacks and the recovery after a process died.

use std::{sync::Arc, time::Duration};

use plugin_local_host::LocalHost;
use serde_json::{json, Value};
use tokio::{sync::broadcast, time::Instant};

use super::{Coordinator, StartRequest};
use crate::{
    deployment::{DeploymentRecord, Phase, TargetRecord, TargetStatus},
    egress::Egress,
    environments::parse_one,
    persist::{deployments::DeploymentStore, records::Records, NodeTag},
    rollout::RolloutJson,
    run::{
        reach::Reach,
        script::{Call, Script, Step},
    },
    settings::Settings,
};

/// Longer than any test's virtual time: a test that waits for what never comes fails here.
pub(super) const PATIENCE: Duration = Duration::from_secs(24 * 3600);

pub(super) struct Harness {
    pub(super) host: LocalHost,
    pub(super) coordinator: Arc<Coordinator>,
    pub(super) script: Arc<Script>,
    events: broadcast::Receiver<plugin_local_host::Event>,
}

/// A `local` environment (its command never runs: the script answers for it).
pub(super) fn environment(id: &str, timeout: u64, health_url: Option<&str>) -> Value {
    let mut environment = json!({"environment_id": id, "environment_type": "linux_local",
        "connection_method": "local", "command": ["true"], "timeout": timeout});
    if let Some(url) = health_url {
        environment["health_check_url"] = json!(url);
    }
    environment
}

fn coordinator_on(host: &LocalHost, script: &Arc<Script>) -> Arc<Coordinator> {
    coordinator_on_node(host, script, None)
}

/// A coordinator whose host is node `node` (boot `node-boot`) among several on one store.
pub(super) fn coordinator_on_node(
    host: &LocalHost,
    script: &Arc<Script>,
    node: Option<&str>,
) -> Arc<Coordinator> {
    coordinator_with(host, script, node, json!({}))
}

/// [`coordinator_on_node`] with `settings` (health checks off unless they say otherwise).
pub(super) fn coordinator_with(
    host: &LocalHost,
    script: &Arc<Script>,
    node: Option<&str>,
    mut settings: Value,
) -> Arc<Coordinator> {
    if settings.get("health_check_interval_secs").is_none() {
        settings["health_check_interval_secs"] = json!(0);
    }
    let settings = Settings::from_json(&settings).expect("valid settings");
    let egress =
        Egress::new(Vec::<String>::new().try_into().expect("no networks")).expect("an HTTP client");
    Arc::new(Coordinator::reaching(
        Records::new(host.host.clone()),
        egress,
        Reach::Scripted(Arc::clone(script)),
        Arc::new(settings),
        host.boot_id.clone(),
        node.map(|node| NodeTag {
            node_id: node.to_owned(),
            node_boot: format!("{node}-boot"),
        }),
    ))
}

pub(super) async fn harness(environments: Vec<Value>) -> Harness {
    let host = LocalHost::in_memory().expect("an in-memory host");
    let script = Script::new();
    let coordinator = coordinator_on(&host, &script);
    for environment in environments {
        let environment =
            parse_one(environment.to_string().as_bytes()).expect("a valid environment");
        coordinator
            .catalog()
            .create(environment)
            .await
            .expect("stored");
    }
    let events = host.events.subscribe();
    Harness {
        host,
        coordinator,
        script,
        events,
    }
}

pub(super) fn request(environments: &[&str], version: &str, rollout: Value) -> StartRequest {
    let rollout: RolloutJson = serde_json::from_value(rollout).expect("a rollout");
    StartRequest {
        environments: Some(environments.iter().map(|id| (*id).to_owned()).collect()),
        version: Some(version.to_owned()),
        ec2: Some(false),
        triggered_by: "test".into(),
        rollout: rollout.to_rollout().expect("a valid rollout"),
        ..StartRequest::default()
    }
}

impl Harness {
    async fn start(
        &self,
        environments: &[&str],
        version: &str,
        rollout: Value,
    ) -> crate::model::DeploymentId {
        self.coordinator
            .start(request(environments, version, rollout))
            .await
            .expect("started")
            .deployment_id
    }

    /// The deployment's state events from now until one satisfies `until` (that one included).
    pub(super) async fn events_until(
        &mut self,
        id: &str,
        until: impl Fn(&str, &Value) -> bool,
    ) -> Vec<(String, Value)> {
        let mut seen = Vec::new();
        let deadline = Instant::now() + PATIENCE;
        loop {
            let event = tokio::time::timeout_at(deadline, self.events.recv())
                .await
                .unwrap_or_else(|_| panic!("no such event came; saw {seen:#?}"))
                .expect("the event channel is open and kept up with");
            if event.data["deployment_id"] != id || event.kind == "deployment.log" {
                continue;
            }
            let done = until(&event.kind, &event.data);
            seen.push((event.kind, event.data));
            if done {
                return seen;
            }
        }
    }

    /// Events until the deployment reaches `phase`.
    pub(super) async fn until_phase(&mut self, id: &str, phase: Phase) -> Vec<(String, Value)> {
        self.events_until(id, |kind, data| {
            kind == "deployment.phase" && data["status"] == phase.as_str()
        })
        .await
    }

    /// Events until the deployment ends.
    pub(super) async fn until_end(&mut self, id: &str) -> Vec<(String, Value)> {
        self.events_until(id, |kind, data| {
            kind == "deployment.phase"
                && data["status"]
                    .as_str()
                    .and_then(Phase::parse)
                    .is_some_and(Phase::is_terminal)
        })
        .await
    }

    pub(super) async fn record(&self, id: &str) -> DeploymentRecord {
        self.store()
            .record(id)
            .await
            .expect("readable")
            .expect("recorded")
    }

    async fn target(&self, id: &str, environment: &str) -> TargetRecord {
        self.store()
            .targets(id)
            .await
            .expect("readable")
            .into_iter()
            .find(|target| target.environment_id == environment)
            .expect("a result for the environment")
    }

    fn store(&self) -> DeploymentStore {
        DeploymentStore::new(self.coordinator.records().clone())
    }

    /// Environments the script was asked to deploy (not roll back), in order.
    fn deployed(&self) -> Vec<String> {
        self.script
            .calls()
            .into_iter()
            .filter(|call| !call.rollback)
            .map(|call| call.environment)
            .collect()
    }
}

pub(super) fn phases(events: &[(String, Value)]) -> Vec<String> {
    events
        .iter()
        .filter(|(kind, _)| kind == "deployment.phase")
        .filter_map(|(_, data)| data["status"].as_str().map(str::to_owned))
        .collect()
}

/// Sequence numbers go up by one from `first`.
fn assert_numbered_from(first: u64, events: &[(String, Value)]) {
    let numbers: Vec<u64> = events
        .iter()
        .map(|(_, data)| data["seq"].as_u64().expect("a sequence number"))
        .collect();
    let expected: Vec<u64> = (first..first + numbers.len() as u64).collect();
    assert_eq!(numbers, expected, "{events:#?}");
}

#[tokio::test(start_paused = true)]
async fn a_deployment_goes_through_its_phases_in_order_with_numbered_events() {
    let mut harness = harness(vec![environment("a", 60, None), environment("b", 60, None)]).await;
    harness
        .script
        .on("a", Step::Succeed(Duration::from_secs(5)))
        .on("b", Step::Succeed(Duration::from_secs(7)));
    let began = Instant::now();
    let id = harness.start(&["a", "b"], "v1", json!({})).await;
    let events = harness.until_end(&id).await;
    assert_eq!(
        phases(&events),
        [
            "pending",
            "local_triggering",
            "local_deploying",
            "local_completed",
            "verifying",
            "completed"
        ]
    );
    assert_numbered_from(1, &events);
    assert!(
        began.elapsed() >= Duration::from_secs(7),
        "virtual time passed"
    );
    let record = harness.record(&id).await;
    assert_eq!(record.status, Phase::Completed);
    assert_eq!(record.progress, 100);
    for environment in ["a", "b"] {
        let target = harness.target(&id, environment).await;
        assert_eq!(target.status, TargetStatus::Succeeded);
    }
    let versions = harness
        .coordinator
        .catalog()
        .versions("a")
        .await
        .expect("readable")
        .expect("versions after a success");
    assert_eq!(versions.deployed_version, "v1");
}

#[tokio::test(start_paused = true)]
async fn a_trigger_past_its_timeout_is_timed_out_and_the_deployment_fails() {
    let mut harness = harness(vec![
        environment("slow", 30, None),
        environment("quick", 30, None),
    ])
    .await;
    harness.script.on("slow", Step::Hang);
    let began = Instant::now();
    let id = harness.start(&["slow", "quick"], "v1", json!({})).await;
    harness.until_end(&id).await;
    assert!(began.elapsed() >= Duration::from_secs(30));
    assert_eq!(harness.record(&id).await.status, Phase::Failed);
    let slow = harness.target(&id, "slow").await;
    assert_eq!(slow.status, TargetStatus::TimedOut, "{slow:?}");
    assert_eq!(
        harness.target(&id, "quick").await.status,
        TargetStatus::Succeeded
    );
}

#[tokio::test(start_paused = true)]
async fn a_cancel_while_triggering_stops_the_running_trigger() {
    let mut harness = harness(vec![environment("stuck", 600, None)]).await;
    harness.script.on("stuck", Step::Hang);
    let id = harness.start(&["stuck"], "v1", json!({})).await;
    harness
        .events_until(&id, |kind, data| {
            kind == "deployment.environment" && data["environment"]["status"] == "running"
        })
        .await;
    let cancelled = harness
        .coordinator
        .cancel(&id, "test")
        .await
        .expect("cancelled");
    let super::Cancelled::Local(ended) = cancelled else {
        panic!("this copy runs it")
    };
    // The cancel's caller wakes when the run has ended, not by reading the store again.
    ended.wait().await;
    assert_eq!(harness.record(&id).await.status, Phase::Cancelled);
    harness.until_end(&id).await;
    let record = harness.record(&id).await;
    assert_eq!(record.status, Phase::Cancelled);
    assert_eq!(
        harness.target(&id, "stuck").await.status,
        TargetStatus::Cancelled
    );
    // The environment is free again.
    harness.start(&["stuck"], "v2", json!({})).await;
}

#[tokio::test(start_paused = true)]
async fn a_cancel_during_a_pause_between_batches_skips_the_rest() {
    let mut harness = harness(vec![
        environment("r1", 60, None),
        environment("r2", 60, None),
    ])
    .await;
    let rolling = json!({"strategy": {"type": "rolling", "batch_size": 1, "pause_secs": 600}});
    let id = harness.start(&["r1", "r2"], "v1", rolling).await;
    harness
        .events_until(&id, |kind, data| {
            kind == "deployment.batch" && data["batch"]["status"] == "succeeded"
        })
        .await;
    // The run now waits 600 s before batch 2; the cancel ends the wait.
    tokio::time::sleep(Duration::from_secs(60)).await;
    harness
        .coordinator
        .cancel(&id, "test")
        .await
        .expect("cancelled");
    harness.until_end(&id).await;
    assert_eq!(harness.record(&id).await.status, Phase::Cancelled);
    assert_eq!(harness.deployed(), ["r1"]);
    assert_eq!(
        harness.target(&id, "r2").await.status,
        TargetStatus::Skipped
    );
}

#[tokio::test(start_paused = true)]
async fn rolling_batches_wait_their_pause_and_run_in_order() {
    let mut harness = harness(vec![
        environment("p1", 60, None),
        environment("p2", 60, None),
        environment("p3", 60, None),
    ])
    .await;
    let rolling = json!({"strategy": {"type": "rolling", "batch_size": 1, "pause_secs": 10}});
    let began = Instant::now();
    let id = harness.start(&["p1", "p2", "p3"], "v1", rolling).await;
    let events = harness.until_end(&id).await;
    assert_numbered_from(1, &events);
    assert!(
        began.elapsed() >= Duration::from_secs(20),
        "two pauses of 10 s"
    );
    assert_eq!(harness.record(&id).await.status, Phase::Completed);
    assert_eq!(harness.deployed(), ["p1", "p2", "p3"]);
}

#[tokio::test(start_paused = true)]
async fn max_failures_stops_the_batches_after_the_one_that_crossed_it() {
    let mut harness = harness(vec![
        environment("m1", 60, None),
        environment("m2", 60, None),
        environment("m3", 60, None),
    ])
    .await;
    harness.script.on("m1", Step::Fail(Duration::from_secs(1)));
    let rollout = json!({"strategy": {"type": "rolling", "batch_size": 1}, "max_failures": 0});
    let id = harness.start(&["m1", "m2", "m3"], "v1", rollout).await;
    harness.until_end(&id).await;
    let record = harness.record(&id).await;
    assert_eq!(record.status, Phase::Failed);
    assert_eq!(harness.deployed(), ["m1"]);
    for rest in ["m2", "m3"] {
        assert_eq!(
            harness.target(&id, rest).await.status,
            TargetStatus::Skipped
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_manual_gate_parks_and_an_approval_runs_the_rest_with_numbers_going_on() {
    let mut harness = harness(vec![
        environment("c1", 60, None),
        environment("c2", 60, None),
        environment("c3", 60, None),
    ])
    .await;
    let canary = json!({"strategy": {"type": "canary", "canary": 1, "gate": "manual"}});
    let id = harness.start(&["c1", "c2", "c3"], "v1", canary).await;
    let parked = harness.until_phase(&id, Phase::AwaitingApproval).await;
    // The gate's event follows the phase.
    let mut parked_events = parked;
    parked_events.extend(
        harness
            .events_until(&id, |kind, _| kind == "deployment.gate")
            .await,
    );
    assert_numbered_from(1, &parked_events);
    assert_eq!(harness.deployed(), ["c1"], "only the canary ran");
    // Parked, nothing runs: an hour later nothing more was triggered.
    tokio::time::sleep(Duration::from_secs(3600)).await;
    assert_eq!(harness.deployed(), ["c1"]);
    harness
        .coordinator
        .approve(&id, "admin")
        .await
        .expect("approved");
    let rest = harness.until_end(&id).await;
    assert_numbered_from(parked_events.len() as u64 + 1, &rest);
    assert_eq!(harness.record(&id).await.status, Phase::Completed);
    let mut deployed = harness.deployed();
    deployed.sort();
    assert_eq!(deployed, ["c1", "c2", "c3"]);
}

#[tokio::test(start_paused = true)]
async fn a_decision_waits_until_the_run_that_parked_has_published_its_end() {
    let mut harness = harness(vec![
        environment("c1", 60, None),
        environment("c2", 60, None),
    ])
    .await;
    let canary = json!({"strategy": {"type": "canary", "canary": 1, "gate": "manual"}});
    let id = harness.start(&["c1", "c2"], "v1", canary).await;
    let mut parked = harness.until_phase(&id, Phase::AwaitingApproval).await;
    parked.extend(
        harness
            .events_until(&id, |kind, _| kind == "deployment.gate")
            .await,
    );
    // As between a run's storing its park and its publishing it: the record is parked, the
    // run is still this copy's.
    let (ended, watched) = tokio::sync::watch::channel(());
    harness.coordinator.runs().insert(
        id.clone(),
        super::RunHandle {
            stop: Default::default(),
            _ended: ended,
            ended: watched,
        },
    );
    let approval = tokio::spawn({
        let coordinator = Arc::clone(&harness.coordinator);
        let id = id.clone();
        async move { coordinator.approve(&id, "admin").await }
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        !approval.is_finished(),
        "the approval went ahead of the run's last events"
    );
    assert_eq!(harness.record(&id).await.status, Phase::AwaitingApproval);
    // The run published its end and is gone: the decision goes on, numbered after it.
    harness.coordinator.runs().remove(&id);
    approval.await.expect("joined").expect("approved");
    let rest = harness.until_end(&id).await;
    assert_numbered_from(parked.len() as u64 + 1, &rest);
    assert_eq!(harness.record(&id).await.status, Phase::Completed);
}

#[tokio::test(start_paused = true)]
async fn a_cancel_at_the_gate_ends_the_parked_deployment() {
    let mut harness = harness(vec![
        environment("g1", 60, None),
        environment("g2", 60, None),
    ])
    .await;
    let canary = json!({"strategy": {"type": "canary", "canary": 1, "gate": "manual"}});
    let id = harness.start(&["g1", "g2"], "v1", canary).await;
    harness.until_phase(&id, Phase::AwaitingApproval).await;
    harness
        .coordinator
        .close_gate(
            &id,
            crate::deployment::GateStatus::Rejected,
            "cancel",
            "cancelled by request",
        )
        .await
        .expect("closed");
    harness.until_end(&id).await;
    assert_eq!(harness.record(&id).await.status, Phase::Cancelled);
    assert_eq!(
        harness.target(&id, "g2").await.status,
        TargetStatus::Skipped
    );
    harness.start(&["g1", "g2"], "v2", json!({})).await;
}

#[tokio::test(start_paused = true)]
async fn an_auto_gate_bakes_and_stops_when_the_canary_turns_unhealthy() {
    let url = "http://127.0.0.1:9/health";
    let mut harness = harness(vec![
        environment("k1", 60, Some(url)),
        environment("k2", 60, None),
    ])
    .await;
    let canary =
        json!({"strategy": {"type": "canary", "canary": 1, "gate": "auto", "bake_secs": 300}});
    let id = harness.start(&["k1", "k2"], "v1", canary).await;
    // Healthy through verification; unhealthy by the end of the bake.
    harness
        .events_until(&id, |kind, data| {
            kind == "deployment.gate" && data["gate"]["status"] == "waiting"
        })
        .await;
    harness.script.unhealthy(url);
    let began = Instant::now();
    harness.until_end(&id).await;
    assert!(
        began.elapsed() >= Duration::from_secs(299),
        "the bake was waited"
    );
    let record = harness.record(&id).await;
    assert_eq!(record.status, Phase::Failed);
    assert_eq!(
        record.gate.map(|gate| gate.status),
        Some(crate::deployment::GateStatus::Failed)
    );
    assert_eq!(harness.deployed(), ["k1"]);
    assert_eq!(
        harness.target(&id, "k2").await.status,
        TargetStatus::Skipped
    );
}

#[tokio::test(start_paused = true)]
async fn a_failed_deployment_rolls_back_what_it_changed() {
    let mut harness = harness(vec![
        environment("x1", 60, None),
        environment("x2", 60, None),
    ])
    .await;
    let first = harness.start(&["x1", "x2"], "v1", json!({})).await;
    harness.until_end(&first).await;
    harness.script.on("x2", Step::Fail(Duration::from_secs(2)));
    let id = harness
        .start(&["x1", "x2"], "v2", json!({"rollback": "all"}))
        .await;
    let events = harness.until_end(&id).await;
    assert!(
        phases(&events).contains(&"rolling_back".to_owned()),
        "{events:#?}"
    );
    let rollbacks: Vec<Call> = harness
        .script
        .calls()
        .into_iter()
        .filter(|call| call.rollback)
        .collect();
    assert!(
        rollbacks
            .iter()
            .any(|call| call.environment == "x1" && call.version == "v1"),
        "x1 went back to v1: {rollbacks:?}"
    );
    let record = harness.record(&id).await;
    assert_eq!(record.status, Phase::RolledBack, "{:?}", record.errors);
    let versions = harness
        .coordinator
        .catalog()
        .versions("x1")
        .await
        .expect("readable")
        .expect("versions");
    assert_eq!(versions.deployed_version, "v1");
}

#[tokio::test(start_paused = true)]
async fn after_its_process_died_a_run_is_interrupted_and_its_environments_freed() {
    let mut harness = harness(vec![environment("d1", 600, None)]).await;
    harness.script.on("d1", Step::Hang);
    let id = harness.start(&["d1"], "v1", json!({})).await;
    harness
        .events_until(&id, |kind, data| {
            kind == "deployment.environment" && data["environment"]["status"] == "running"
        })
        .await;
    // A new process on the same store: the first one's boot is gone.
    let restarted = harness.host.restarted().expect("a new boot");
    let script = Script::new();
    let next = coordinator_on(&restarted, &script);
    assert_eq!(next.recover(&[]).await.expect("recovered"), 1);
    let record = DeploymentStore::new(next.records().clone())
        .record(&id)
        .await
        .expect("readable")
        .expect("recorded");
    assert_eq!(record.status, Phase::Interrupted);
    let again = next
        .start(request(&["d1"], "v2", json!({})))
        .await
        .expect("the environment is free");
    assert_ne!(again.deployment_id, id);
}

#[tokio::test(start_paused = true)]
async fn a_large_batch_is_announced_by_events_that_stay_small_and_keep_their_numbers() {
    let ids: Vec<String> = (0..300)
        .map(|n| format!("bulk-environment-{n:04}"))
        .collect();
    let mut harness = harness(ids.iter().map(|id| environment(id, 60, None)).collect()).await;
    let names: Vec<&str> = ids.iter().map(String::as_str).collect();
    let id = harness.start(&names, "v1", json!({})).await;
    let events = harness.until_end(&id).await;
    assert_numbered_from(1, &events);
    let batches: Vec<&Value> = events
        .iter()
        .filter(|(kind, _)| kind == "deployment.batch")
        .map(|(_, data)| data)
        .collect();
    assert_eq!(batches.len(), 2, "the one batch started and ended");
    for batch in batches {
        assert_eq!(batch["environment_count"], 300, "{batch}");
        let listed = batch["batch"]["environments"]
            .as_array()
            .map_or(0, Vec::len);
        assert_eq!(listed, crate::deployment::LISTED_ENVIRONMENTS);
    }
    for (kind, data) in &events {
        if kind == "deployment.phase" {
            assert_eq!(data["environment_count"], 300);
            assert!(data["environments"].as_array().map_or(0, Vec::len) <= 100);
        }
    }
}
