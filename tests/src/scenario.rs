//! Building blocks of deployment scenarios: environments, triggering, waiting for the end.

use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};

use crate::{HostOptions, TestHost, ADMIN_KEY, DEVELOPER_KEY};

/// Bound on a deployment of quick targets.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(60);

/// A `local` environment running `command`.
pub fn local(id: &str, command: &[&str], timeout: u64) -> Value {
    json!({"environment_id": id, "environment_type": "linux_local", "connection_method": "local",
           "command": command, "timeout": timeout})
}

/// The phases a successful deployment of `local` environments goes through, in order.
pub const LOCAL_PHASES: [&str; 6] = [
    "pending",
    "local_triggering",
    "local_deploying",
    "local_completed",
    "verifying",
    "completed",
];

/// The result of `environment` in a deployment record.
pub fn result<'a>(record: &'a Value, environment: &str) -> &'a Value {
    record["results"]
        .as_array()
        .and_then(|results| {
            results
                .iter()
                .find(|result| result["environment_id"] == environment)
        })
        .unwrap_or_else(|| panic!("no result for {environment} in {record}"))
}

/// An environments file holding `list`.
pub fn environments(list: Vec<Value>) -> String {
    json!({ "environments": list }).to_string()
}

/// Host options with these environments and no periodic health checks.
pub fn options(list: Vec<Value>) -> HostOptions {
    HostOptions {
        environments: environments(list),
        settings: "health_check_interval_secs = 0".into(),
        ..HostOptions::default()
    }
}

/// `POST /trigger-local` as admin.
pub async fn trigger(host: &TestHost, body: Value) -> (u16, Value) {
    host.call(
        Method::POST,
        "/api/deployment/trigger-local",
        Some(ADMIN_KEY),
        Some(body),
    )
    .await
}

/// Triggers and returns the new deployment's id (the answer must be 202).
pub async fn started(host: &TestHost, body: Value) -> String {
    let (status, answer) = trigger(host, body).await;
    assert_eq!(status, 202, "{answer}");
    answer["deployment_id"]
        .as_str()
        .expect("a deployment id")
        .to_owned()
}

/// The full record of a deployment, as a developer sees it.
pub async fn detail(host: &TestHost, id: &str) -> Value {
    let (status, body) = host
        .get(
            &format!("/api/deployment/deployments/{id}"),
            Some(DEVELOPER_KEY),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    body
}

pub fn is_terminal(status: &str) -> bool {
    matches!(status, "completed" | "failed" | "cancelled" | "interrupted")
}

/// Waits (bounded by [`RUN_TIMEOUT`]) until the deployment ended and returns its full record.
pub async fn finished(host: &TestHost, id: &str) -> Value {
    finished_within(host, id, RUN_TIMEOUT).await
}

/// Waits (bounded) until the deployment ended and returns its full record.
pub async fn finished_within(host: &TestHost, id: &str, timeout: Duration) -> Value {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let record = detail(host, id).await;
        if is_terminal(record["status"].as_str().unwrap_or_default()) {
            return record;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "deployment {id} did not end within {timeout:?}: {record}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits (bounded) until `path` exists, e.g. a marker file a script writes.
pub async fn file_appears(path: &std::path::Path, timeout: Duration) -> bool {
    crate::wait_until(timeout, || async { path.exists() }).await
}

/// The pid a script wrote into `path`.
pub fn read_pid(path: &std::path::Path) -> u32 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or_else(|| panic!("no pid in {}", path.display()))
}
