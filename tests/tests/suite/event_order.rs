//! The order of a deployment's events on the stream: what happened first is published first
//! (an environment's result before the batch end and the phases that follow from it), and the
//! state events carry the deployment's sequence numbers 1, 2, 3… with no gap, across a gate
//! and its decision.

use std::collections::HashMap;

use e2e::{
    scenario::{
        is_terminal, local, options, started, status_within, subscribe, Events, RUN_TIMEOUT,
    },
    TestHost, ADMIN_KEY,
};
use reqwest::Method;
use serde_json::{json, Value};

/// Event kinds that tell a deployment's state, and are numbered.
const STATE_EVENTS: [&str; 4] = [
    "deployment.phase",
    "deployment.environment",
    "deployment.batch",
    "deployment.gate",
];

/// Waits (bounded) until the deployment is in `status`.
async fn reaches_status(host: &TestHost, id: &str, status: &str) {
    status_within(host, id, RUN_TIMEOUT, |now| now == status).await;
}

/// The deployment's state events as the stream delivered them, until its terminal phase.
async fn state_events(events: &mut Events, id: &str) -> Vec<(String, Value)> {
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + RUN_TIMEOUT;
    loop {
        let next = tokio::time::timeout_at(deadline, events.recv()).await;
        let Ok(Some((kind, data))) = next else {
            panic!("the deployment's events end with a terminal phase; saw {seen:#?}");
        };
        if data["deployment_id"] != id || !STATE_EVENTS.contains(&kind.as_str()) {
            continue;
        }
        let end = kind == "deployment.phase" && is_terminal(data["status"].as_str().unwrap_or(""));
        seen.push((kind, data));
        if end {
            return seen;
        }
    }
}

/// Sequence numbers start at 1 and go up by one, in stream order.
fn assert_numbered(events: &[(String, Value)]) {
    let numbers: Vec<u64> = events
        .iter()
        .map(|(kind, data)| {
            data["seq"]
                .as_u64()
                .unwrap_or_else(|| panic!("{kind} carries its sequence number: {data}"))
        })
        .collect();
    let expected: Vec<u64> = (1..=numbers.len() as u64).collect();
    assert_eq!(numbers, expected, "no gap, no repeat: {events:#?}");
}

/// Where in the stream each environment reached its final state.
fn finals(events: &[(String, Value)]) -> HashMap<String, usize> {
    let mut last = HashMap::new();
    for (at, (kind, data)) in events.iter().enumerate() {
        let status = data["environment"]["status"].as_str().unwrap_or("");
        if kind == "deployment.environment"
            && matches!(
                status,
                "succeeded" | "failed" | "skipped" | "cancelled" | "timed_out"
            )
        {
            let environment = data["environment"]["environment_id"].as_str().unwrap_or("");
            last.insert(environment.to_owned(), at);
        }
    }
    last
}

fn position(events: &[(String, Value)], wanted: impl Fn(&str, &Value) -> bool) -> usize {
    events
        .iter()
        .position(|(kind, data)| wanted(kind, data))
        .unwrap_or_else(|| panic!("the event is on the stream: {events:#?}"))
}

#[tokio::test]
async fn environments_come_before_the_batches_and_phases_that_follow_from_them() {
    let dir = tempfile::tempdir().expect("temp dir");
    let list: Vec<Value> = (0..6)
        .map(|n| local(&format!("o{n}"), &["true"], 30))
        .collect();
    let host = TestHost::start(dir.path(), options(list)).await;
    let (status, mut events) = subscribe(&host).await;
    assert_eq!(status, 200);
    let id = started(
        &host,
        json!({"version": "v1", "strategy": {"type": "rolling", "batch_size": 2}}),
    )
    .await;
    let seen = state_events(&mut events, &id).await;
    assert_numbered(&seen);
    let finals = finals(&seen);
    assert_eq!(finals.len(), 6, "every environment ended: {seen:#?}");
    for (kind, data) in &seen {
        assert!(
            kind != "deployment.environment" || data["environment"]["status"] != "pending",
            "{data}"
        );
    }
    // Each batch's end comes after the results of its environments.
    for (at, (kind, data)) in seen.iter().enumerate() {
        if kind != "deployment.batch" || data["batch"]["status"] == "running" {
            continue;
        }
        for environment in data["batch"]["environments"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let environment = environment.as_str().unwrap_or("");
            assert!(
                finals[environment] < at,
                "{environment}'s result comes before its batch's end: {seen:#?}"
            );
        }
    }
    // A phase that follows triggers (a batch verified, the local part completed, the end)
    // comes after the result of every environment triggered before it.
    for (at, (kind, data)) in seen.iter().enumerate() {
        let phase = data["status"].as_str().unwrap_or("");
        if kind != "deployment.phase"
            || !matches!(phase, "verifying" | "local_completed" | "completed")
        {
            continue;
        }
        let triggered = seen[..at].iter().filter(|(kind, data)| {
            kind == "deployment.environment" && data["environment"]["status"] == "triggering"
        });
        for (_, data) in triggered {
            let environment = data["environment"]["environment_id"].as_str().unwrap_or("");
            assert!(
                finals[environment] < at,
                "{environment}'s result comes before phase {phase} at {at}: {seen:#?}"
            );
        }
    }
    let last_result = finals.values().copied().max().unwrap_or(0);
    let completed = position(&seen, |kind, data| {
        kind == "deployment.phase" && data["status"] == "local_completed"
    });
    assert!(last_result < completed, "{seen:#?}");
}

/// A deployment of `environments` with a manual canary gate, parked at it and then decided
/// (`approve` or `reject` as admin); returns its state events until its end.
async fn decided_at_gate(environments: [&str; 3], decision: &str) -> Vec<(String, Value)> {
    let dir = tempfile::tempdir().expect("temp dir");
    let list: Vec<Value> = environments
        .iter()
        .map(|id| local(id, &["true"], 30))
        .collect();
    let host = TestHost::start(dir.path(), options(list)).await;
    let (_, mut events) = subscribe(&host).await;
    let id = started(
        &host,
        json!({"version": "v1", "strategy": {"type": "canary", "canary": 1, "gate": "manual"}}),
    )
    .await;
    reaches_status(&host, &id, "awaiting_approval").await;
    let (status, body) = host
        .call(
            Method::POST,
            &format!("/api/deployment/deployments/{id}/{decision}"),
            Some(ADMIN_KEY),
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let seen = state_events(&mut events, &id).await;
    assert_numbered(&seen);
    seen
}

#[tokio::test]
async fn numbers_go_on_across_a_gate_and_its_rejection() {
    let seen = decided_at_gate(["g1", "g2", "g3"], "reject").await;
    // The rejection: the environments skipped, then the gate's decision, then the phase.
    let finals = finals(&seen);
    let rejected = position(&seen, |kind, data| {
        kind == "deployment.gate" && data["gate"]["status"] == "rejected"
    });
    let cancelled = position(&seen, |kind, data| {
        kind == "deployment.phase" && data["status"] == "cancelled"
    });
    for skipped in ["g2", "g3"] {
        assert!(finals[skipped] < rejected, "{seen:#?}");
    }
    assert!(finals["g1"] < rejected && rejected < cancelled, "{seen:#?}");
}

#[tokio::test]
async fn numbers_go_on_after_an_approval() {
    let seen = decided_at_gate(["a1", "a2", "a3"], "approve").await;
    let finals = finals(&seen);
    let approved = position(&seen, |kind, data| {
        kind == "deployment.gate" && data["gate"]["status"] == "approved"
    });
    assert!(finals["a1"] < approved, "{seen:#?}");
    let completed = position(&seen, |kind, data| {
        kind == "deployment.phase" && data["status"] == "completed"
    });
    for rest in ["a2", "a3"] {
        assert!(
            approved < finals[rest] && finals[rest] < completed,
            "{seen:#?}"
        );
    }
}
