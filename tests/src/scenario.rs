//! Building blocks of deployment scenarios: environments, triggering, waiting for the end.

use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};

use crate::{HostOptions, TestHost, ADMIN_KEY, DEVELOPER_KEY, USER_KEY};

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

/// Where the deployment plugin runs: in the host's process (the default) or in a child process
/// of its own (`isolation = "process"`). Tests that must hold either way take one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isolation {
    InProcess,
    Process,
}

impl Isolation {
    /// Its lines under `[plugins.deployment_mcp]`; in-process is the default, so none.
    pub fn config(self) -> &'static str {
        match self {
            Isolation::InProcess => "",
            Isolation::Process => "isolation = \"process\"",
        }
    }

    /// Its name in `/api/plugins`.
    pub fn as_str(self) -> &'static str {
        match self {
            Isolation::InProcess => "in_process",
            Isolation::Process => "process",
        }
    }

    /// [`options`] with these environments, the plugin running this way.
    pub fn options(self, list: Vec<Value>) -> HostOptions {
        self.apply(options(list))
    }

    /// `options` with the plugin running this way.
    pub fn apply(self, options: HostOptions) -> HostOptions {
        HostOptions {
            plugin_config: self.config().into(),
            ..options
        }
    }

    /// Checks that the host's deployment plugin runs this way, as `/api/plugins` says: its
    /// `isolation`, and its `pid`, which is `null` in-process and a live process other than the
    /// host in a child. Returns that child's pid.
    pub async fn check(self, host: &TestHost) -> Option<u32> {
        let plugin = host.plugin_status().await;
        assert_eq!(plugin["state"], "active", "{plugin}");
        assert_eq!(plugin["isolation"], self.as_str(), "{plugin}");
        match self {
            Isolation::InProcess => {
                assert!(plugin["pid"].is_null(), "no child process: {plugin}");
                None
            }
            Isolation::Process => {
                let pid = plugin["pid"]
                    .as_u64()
                    .and_then(|pid| u32::try_from(pid).ok())
                    .unwrap_or_else(|| panic!("the child's pid: {plugin}"));
                assert_ne!(pid, host.pid(), "the plugin runs in a process of its own");
                assert!(crate::process_alive(pid), "the child {pid} runs: {plugin}");
                Some(pid)
            }
        }
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

/// The first page of a deployment's log (up to 10,000 lines), as an admin reads it.
pub async fn log_page(host: &TestHost, id: &str) -> Value {
    let (status, page) = host
        .get(
            &format!("/api/deployment/deployments/{id}/logs"),
            Some(ADMIN_KEY),
        )
        .await;
    assert_eq!(status, 200, "{page}");
    page
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
    matches!(
        status,
        "completed" | "failed" | "cancelled" | "interrupted" | "rolled_back"
    )
}

/// Opens deployment `id`'s followed log (`logs?follow=true`) as a developer; its status is 200.
pub async fn follow_log(host: &TestHost, id: &str) -> reqwest::Response {
    let follow = host
        .client()
        .get(format!(
            "{}/api/deployment/deployments/{id}/logs?follow=true",
            host.url
        ))
        .header("X-API-Key", DEVELOPER_KEY)
        .send()
        .await
        .expect("the log follows");
    assert_eq!(follow.status(), 200);
    follow
}

/// Waits (bounded by [`RUN_TIMEOUT`]) until the deployment ended and returns its full record.
pub async fn finished(host: &TestHost, id: &str) -> Value {
    finished_within(host, id, RUN_TIMEOUT).await
}

/// Waits (bounded) until the deployment ended and returns its full record.
pub async fn finished_within(host: &TestHost, id: &str, timeout: Duration) -> Value {
    status_within(host, id, timeout, is_terminal).await
}

/// Waits (bounded) until the deployment's status satisfies `wanted`; returns its full record.
pub async fn status_within(
    host: &TestHost,
    id: &str,
    timeout: Duration,
    wanted: impl Fn(&str) -> bool,
) -> Value {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let record = detail(host, id).await;
        if wanted(record["status"].as_str().unwrap_or_default()) {
            return record;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "deployment {id} did not reach the status wanted within {timeout:?}: {record}"
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

pub type Events = tokio::sync::mpsc::UnboundedReceiver<(String, Value)>;

/// Opens an SSE stream with `key` (it must answer 200).
pub async fn open_events(host: &TestHost, key: &str) -> reqwest::Response {
    let response = host
        .client()
        .get(format!("{}/api/deployment/events", host.url))
        .header("X-API-Key", key)
        .send()
        .await
        .expect("the events stream answers");
    assert_eq!(response.status(), 200);
    response
}

/// Opens the SSE stream and returns the response and a reader of `(event, data)` pairs.
pub async fn subscribe(host: &TestHost) -> (u16, Events) {
    let (status, mut with_ids) = subscribe_after(host, USER_KEY, None).await;
    let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some((_, event, data)) = with_ids.recv().await {
            if sender.send((event, data)).is_err() {
                return;
            }
        }
    });
    (status, receiver)
}

/// Opens the SSE stream, resuming after `last_id` when given; yields `(id, event, data)`.
pub async fn subscribe_after(
    host: &TestHost,
    key: &str,
    last_id: Option<u64>,
) -> (
    u16,
    tokio::sync::mpsc::UnboundedReceiver<(u64, String, Value)>,
) {
    use futures_util::StreamExt;
    let mut request = host
        .client()
        .get(format!("{}/api/deployment/events", host.url))
        .header("X-API-Key", key);
    if let Some(id) = last_id {
        request = request.header("Last-Event-ID", id.to_string());
    }
    let response = request.send().await.expect("subscribe");
    let status = response.status().as_u16();
    let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut stream = response.bytes_stream();
        let mut buffer = String::new();
        while let Some(Ok(chunk)) = stream.next().await {
            buffer.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = buffer.find("\n\n") {
                let block: String = buffer.drain(..end + 2).collect();
                let mut event = String::new();
                let mut data = String::new();
                let mut id = 0;
                for line in block.lines() {
                    if let Some(value) = line.strip_prefix("id:") {
                        id = value.trim().parse().unwrap_or(0);
                    } else if let Some(value) = line.strip_prefix("event:") {
                        event = value.trim().to_owned();
                    } else if let Some(value) = line.strip_prefix("data:") {
                        data.push_str(value.trim_start());
                    }
                }
                if !event.is_empty() {
                    let data = serde_json::from_str(&data).unwrap_or(Value::Null);
                    if sender.send((id, event, data)).is_err() {
                        return;
                    }
                }
            }
        }
    });
    (status, receiver)
}
