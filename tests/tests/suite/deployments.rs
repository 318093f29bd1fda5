//! Deployments end to end: the real host with the real plugin, triggering real peers on
//! loopback (local commands, HTTP targets, sshd).

use std::{path::Path, time::Duration};

use e2e::{
    scenario::{
        detail, environments, finished, is_terminal, local, options, result, started, subscribe,
        subscribe_after, trigger, Events, Isolation, RUN_TIMEOUT,
    },
    sshd::Sshd,
    targets::{Behaviour, Target},
    wait_until, HostOptions, TestHost, ADMIN_KEY, DEVELOPER_KEY, USER_KEY,
};
use reqwest::Method;
use serde_json::{json, Value};

/// The text of a deployment's stored log lines, in order.
pub(crate) async fn log_text(host: &TestHost, id: &str) -> Vec<String> {
    let (status, body) = host
        .get(
            &format!("/api/deployment/deployments/{id}/logs"),
            Some(DEVELOPER_KEY),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    body["lines"]
        .as_array()
        .map(|lines| {
            lines
                .iter()
                .map(|line| line["line"].as_str().unwrap_or_default().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn the_demo_environment_deploys_and_shows_in_history() {
    let dir = tempfile::tempdir().expect("temp dir");
    let markers = dir.path().join("markers");
    let demo = std::fs::read_to_string(e2e::repo_root().join("config/remote_environments.json"))
        .expect("read the shipped environments file");
    // The script's marker directory, through the environment's own variables: the command
    // gets nothing of the host's environment.
    let mut demo: Value = serde_json::from_str(&demo).expect("the shipped file is JSON");
    demo["environments"][0]["env"] = json!({ "AICORE_MARKER_DIR": markers.display().to_string() });
    let host = TestHost::start(
        dir.path(),
        HostOptions {
            environments: demo.to_string(),
            ..HostOptions::default()
        },
    )
    .await;
    let client = host.client();
    let response = client
        .post(format!("{}/api/deployment/one-click", host.url))
        .header("X-API-Key", ADMIN_KEY)
        .header("X-Request-Id", "demo-request-1")
        .json(&json!({"version": "1.2.3"}))
        .send()
        .await
        .expect("trigger");
    assert_eq!(response.status().as_u16(), 202);
    let location = response
        .headers()
        .get("location")
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned)
        .expect("a Location header");
    let answer: Value = response.json().await.expect("json");
    let id = answer["deployment_id"].as_str().expect("id").to_owned();
    assert_eq!(answer["status"], "pending");
    assert_eq!(location, format!("/api/deployment/deployments/{id}"));
    assert_eq!(answer["status_url"], location);

    let record = finished(&host, &id).await;
    assert_eq!(record["status"], "completed", "{record}");
    assert_eq!(record["progress"], 100);
    assert_eq!(record["version"], "1.2.3");
    assert_eq!(record["ec2"]["status"], "skipped");
    let demo = result(&record, "local_demo");
    assert_eq!(demo["status"], "succeeded");
    assert_eq!(demo["exit_code"], 0);
    let (_, logs) = host
        .get(
            &format!("/api/deployment/deployments/{id}/logs"),
            Some(ADMIN_KEY),
        )
        .await;
    let stamped = logs["lines"].as_array().cloned().unwrap_or_default();
    assert!(
        !stamped.is_empty()
            && stamped
                .iter()
                .all(|line| line["request_id"] == "demo-request-1"),
        "every line leads back to the request that started the run: {logs}"
    );
    assert!(
        host.logs().contains("demo-request-1"),
        "the host logged the request under the same id"
    );
    let lines = log_text(&host, &id).await;
    assert!(
        lines.iter().any(|line| line.contains("EC2 phase skipped")),
        "{lines:?}"
    );
    assert!(
        lines.iter().any(|line| line.contains("init_aicore")),
        "the script's own output is in the log: {lines:?}"
    );
    assert!(
        std::fs::read_dir(&markers)
            .map(|dir| dir.count())
            .unwrap_or(0)
            > 0,
        "the demo script wrote its marker"
    );

    let (status, history) = host
        .get("/api/deployment/history", Some(DEVELOPER_KEY))
        .await;
    assert_eq!(status, 200);
    assert_eq!(history["total_count"], 1);
    assert_eq!(history["history"][0]["deployment_id"], id.as_str());
    let (status, overview) = host.get("/api/deployment/status", Some(USER_KEY)).await;
    assert_eq!(status, 200);
    assert_eq!(
        overview["latest"]["deployment_id"],
        id.as_str(),
        "{overview}"
    );
    let (status, _) = host
        .get(&format!("/api/deployment/deployments/{id}"), Some(USER_KEY))
        .await;
    assert_eq!(status, 403, "details need the developer role");

    let (status, dashboard) = host.get("/api/deployment/dashboard", Some(USER_KEY)).await;
    assert_eq!(status, 200, "{dashboard}");
    assert_eq!(dashboard["counts"]["completed"], 1);
    assert_eq!(dashboard["recent"]["success_rate"], 1.0);
    let demo = dashboard["environments"]
        .as_array()
        .and_then(|list| list.iter().find(|e| e["environment_id"] == "local_demo"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        demo["last_deployment"]["deployment_id"],
        id.as_str(),
        "{demo}"
    );
    assert_eq!(demo["last_deployment"]["succeeded"], true);
}

#[tokio::test]
async fn http_and_webhook_targets_get_authenticated_calls_and_fail_alone() {
    let good = Target::start(Behaviour {
        webhook_secret: Some("hook-secret".into()),
        ..Behaviour::default()
    })
    .await;
    let broken = Target::start(Behaviour {
        deploy_status: 500,
        ..Behaviour::default()
    })
    .await;
    let list = vec![
        json!({"environment_id": "api_ok", "environment_type": "linux_local", "connection_method": "http_api",
               "host": "127.0.0.1", "port": good.port(), "api_token": "target-token", "timeout": 20}),
        json!({"environment_id": "hook_ok", "environment_type": "docker_container", "connection_method": "webhook",
               "webhook_url": good.url("/webhook/deploy"), "webhook_secret": "hook-secret", "timeout": 20}),
        json!({"environment_id": "api_broken", "environment_type": "linux_local", "connection_method": "http_api",
               "host": "127.0.0.1", "port": broken.port(), "api_token": "target-token", "timeout": 20}),
    ];
    let dir = tempfile::tempdir().expect("temp dir");
    let host = TestHost::start(dir.path(), options(list)).await;
    let id = started(&host, json!({"version": "7.0"})).await;
    let record = finished(&host, &id).await;
    assert_eq!(record["status"], "failed", "{record}");
    assert_eq!(result(&record, "api_ok")["status"], "succeeded");
    assert_eq!(result(&record, "hook_ok")["status"], "succeeded");
    let failure = result(&record, "api_broken");
    assert_eq!(failure["status"], "failed");
    let error = failure["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("500") && error.contains("deploy answered 500"),
        "{error}"
    );

    let received = good.received();
    let deploy = received
        .iter()
        .find(|call| call.path == "/api/deploy/init")
        .expect("the http_api target was called");
    assert!(deploy.authenticated, "bearer token checked out");
    assert_eq!(deploy.body["deployment_id"], id.as_str());
    assert_eq!(deploy.body["version"], "7.0");
    let hook = received
        .iter()
        .find(|call| call.path == "/webhook/deploy")
        .expect("the webhook was called");
    assert!(hook.authenticated, "HMAC signature checked out");
    assert_eq!(hook.body["event"], "ec2_deployment_completed");

    let (status, listing) = host
        .get("/api/deployment/environments", Some(DEVELOPER_KEY))
        .await;
    assert_eq!(status, 200);
    let text = listing.to_string();
    assert!(
        !text.contains("target-token") && !text.contains("hook-secret"),
        "{text}"
    );
    assert!(!host.logs().contains("hook-secret") && !host.logs().contains("target-token"));
}

#[tokio::test]
async fn an_unhealthy_environment_fails_the_deployment_in_verifying() {
    let target = Target::start(Behaviour {
        health_status: 503,
        ..Behaviour::default()
    })
    .await;
    let list = vec![
        json!({"environment_id": "sick", "environment_type": "linux_local",
        "connection_method": "local", "command": ["true"], "timeout": 2,
        "health_check_url": target.url("/health")}),
    ];
    let dir = tempfile::tempdir().expect("temp dir");
    let host = TestHost::start(dir.path(), options(list)).await;
    let (_, events) = subscribe(&host).await;
    let id = started(&host, json!({})).await;
    let record = finished(&host, &id).await;
    assert_eq!(record["status"], "failed", "{record}");
    let sick = result(&record, "sick");
    let error = sick["error"].as_str().unwrap_or_default();
    assert!(
        error.contains(&target.url("/health")) && error.contains("503"),
        "{error}"
    );
    assert_eq!(sick["health"]["http_status"], 503);
    let phases = phases_of(events, &id).await;
    assert!(
        phases.ends_with(&["verifying".to_owned(), "failed".to_owned()]),
        "failed in verifying: {phases:?}"
    );

    // Healthy again: the explicit check updates the environment's last health.
    target.set_health(200);
    let (status, checked) = host
        .call(
            Method::POST,
            "/api/deployment/environments/sick/health-check",
            Some(DEVELOPER_KEY),
            None,
        )
        .await;
    assert_eq!(status, 200, "{checked}");
    assert_eq!(checked["health"]["healthy"], true);
    let (_, environment) = host
        .get("/api/deployment/environments/sick", Some(DEVELOPER_KEY))
        .await;
    assert_eq!(environment["last_health"]["healthy"], true);
}

#[tokio::test]
async fn twenty_slow_environments_run_in_parallel() {
    let dir = tempfile::tempdir().expect("temp dir");
    let stamps = dir.path().join("stamps");
    std::fs::create_dir_all(&stamps).expect("stamp dir");
    // Each trigger says it started, then waits until all twenty have: run one after another,
    // the first would wait for the others (bounded by 20 s), give up and fail.
    let script = format!(
        "touch {0}/$PA_ENVIRONMENT_ID.start; n=0; \
         while [ $(ls {0} | wc -l) -lt 20 ]; do n=$((n+1)); [ $n -gt 400 ] && exit 9; sleep 0.05; done",
        stamps.display()
    );
    let list = (0..20)
        .map(|n| local(&format!("slow_{n:02}"), &["sh", "-c", &script], 30))
        .collect();
    let host = TestHost::start(dir.path(), options(list)).await;
    let id = started(&host, json!({})).await;
    let record = finished(&host, &id).await;
    assert_eq!(
        record["status"], "completed",
        "all 20 ran at the same time: {record}"
    );
}

#[tokio::test]
async fn cancel_stops_running_triggers_and_retry_runs_only_the_failed() {
    cancel_and_retry(Isolation::InProcess).await;
}

/// A second deployment of a busy environment is refused; cancel stops the running command and
/// ends the deployment `cancelled`; a retry runs only the environments that failed.
pub(crate) async fn cancel_and_retry(isolation: Isolation) {
    let dir = tempfile::tempdir().expect("temp dir");
    let pid_file = dir.path().join("sleeper.pid");
    let sleeper = format!("echo $$ > {}; exec sleep 60", pid_file.display());
    let list = vec![
        local("sleeper", &["sh", "-c", &sleeper], 120),
        local("good", &["true"], 30),
        local("bad", &["sh", "-c", "echo broken >&2; exit 3"], 30),
    ];
    let host = TestHost::start(dir.path(), isolation.options(list)).await;
    isolation.check(&host).await;

    let id = started(&host, json!({"environments": ["sleeper"]})).await;
    assert!(
        wait_until(RUN_TIMEOUT, || async { pid_file.exists() }).await,
        "the sleeper started"
    );
    let pid: u32 = std::fs::read_to_string(&pid_file)
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .expect("a pid");
    // A second deployment of a busy environment is refused.
    let (status, busy) = trigger(&host, json!({"environments": ["sleeper", "good"]})).await;
    assert_eq!(status, 409, "{busy}");
    assert!(busy["message"].as_str().unwrap_or_default().contains(&id));

    let (status, cancelled) = host
        .call(
            Method::POST,
            &format!("/api/deployment/deployments/{id}/cancel"),
            Some(ADMIN_KEY),
            None,
        )
        .await;
    assert_eq!(status, 200, "{cancelled}");
    let record = finished(&host, &id).await;
    assert_eq!(record["status"], "cancelled");
    assert_eq!(result(&record, "sleeper")["status"], "cancelled");
    assert!(
        wait_until(Duration::from_secs(10), || async {
            !e2e::process_alive(pid)
        })
        .await,
        "the cancelled command's process {pid} is gone"
    );
    let (status, _) = host
        .call(
            Method::POST,
            &format!("/api/deployment/deployments/{id}/cancel"),
            Some(ADMIN_KEY),
            None,
        )
        .await;
    assert_eq!(status, 409, "a finished deployment cannot be cancelled");

    let id = started(&host, json!({"environments": ["good", "bad"]})).await;
    let record = finished(&host, &id).await;
    assert_eq!(record["status"], "failed");
    let bad = result(&record, "bad");
    assert_eq!(bad["exit_code"], 3);
    assert!(
        bad["error"].as_str().unwrap_or_default().contains("broken"),
        "{bad}"
    );
    let (status, retried) = host
        .call(
            Method::POST,
            &format!("/api/deployment/deployments/{id}/retry"),
            Some(ADMIN_KEY),
            None,
        )
        .await;
    assert_eq!(status, 202, "{retried}");
    let retry_id = retried["deployment_id"].as_str().expect("id").to_owned();
    let retry = finished(&host, &retry_id).await;
    assert_eq!(retry["environments"], json!(["bad"]));
    assert_eq!(retry["retry_of"], id.as_str());
}

#[tokio::test]
async fn idempotency_key_repeats_the_first_answer() {
    let dir = tempfile::tempdir().expect("temp dir");
    let host = TestHost::start(dir.path(), options(vec![local("quick", &["true"], 30)])).await;
    let send = |key: &'static str, body: Value| {
        let client = host.client().clone();
        let url = format!("{}/api/deployment/trigger-local", host.url);
        async move {
            let response = client
                .post(url)
                .header("X-API-Key", ADMIN_KEY)
                .header("Idempotency-Key", key)
                .json(&body)
                .send()
                .await
                .expect("answer");
            let status = response.status().as_u16();
            (
                status,
                response.json::<Value>().await.unwrap_or(Value::Null),
            )
        }
    };
    let (first_status, first) = send("k-1", json!({"version": "1"})).await;
    assert_eq!(first_status, 202, "{first}");
    let (again_status, again) = send("k-1", json!({"version": "1"})).await;
    assert_eq!(again_status, 202);
    assert_eq!(again["deployment_id"], first["deployment_id"]);
    let (reused_status, reused) = send("k-1", json!({"version": "2"})).await;
    assert_eq!(reused_status, 422, "{reused}");
    let id = first["deployment_id"].as_str().expect("id");
    finished(&host, id).await;
    let (_, history) = host
        .get("/api/deployment/history", Some(DEVELOPER_KEY))
        .await;
    assert_eq!(history["total_count"], 1, "one deployment for one key");
}

/// The phases a subscriber saw for one deployment, until its last one.
async fn phases_of(mut events: Events, id: &str) -> Vec<String> {
    let mut phases = Vec::new();
    let deadline = tokio::time::Instant::now() + RUN_TIMEOUT;
    while let Ok(Some((event, data))) = tokio::time::timeout_at(deadline, events.recv()).await {
        if event == "deployment.phase" && data["deployment_id"] == id {
            let phase = data["status"].as_str().unwrap_or_default().to_owned();
            let done = is_terminal(&phase);
            phases.push(phase);
            if done {
                break;
            }
        }
    }
    phases
}

#[tokio::test]
async fn an_sse_subscriber_sees_every_phase_in_order() {
    sse_subscriber_sees_every_phase(Isolation::InProcess).await;
}

/// A deployment of a quick `local` environment completes, and an SSE subscriber sees each of
/// its phases once, in order.
pub(crate) async fn sse_subscriber_sees_every_phase(isolation: Isolation) {
    let dir = tempfile::tempdir().expect("temp dir");
    let host = TestHost::start(
        dir.path(),
        isolation.options(vec![local("quick", &["true"], 30)]),
    )
    .await;
    isolation.check(&host).await;
    let (status, events) = subscribe(&host).await;
    assert_eq!(status, 200);
    let id = started(&host, json!({})).await;
    let phases = phases_of(events, &id).await;
    assert_eq!(phases, e2e::scenario::LOCAL_PHASES);
    let record = finished(&host, &id).await;
    assert_eq!(record["status"], "completed", "{record}");
    assert_eq!(result(&record, "quick")["status"], "succeeded", "{record}");
}

#[tokio::test]
async fn a_followed_log_streams_until_the_deployment_ends() {
    followed_log_streams_until_the_end(Isolation::InProcess).await;
}

/// `logs?follow=true` streams each line as the command writes it and ends with the deployment.
pub(crate) async fn followed_log_streams_until_the_end(isolation: Isolation) {
    let dir = tempfile::tempdir().expect("temp dir");
    let script = "for n in 1 2 3 4 5; do echo step $n; sleep 0.2; done";
    let host = TestHost::start(
        dir.path(),
        isolation.options(vec![local("steps", &["sh", "-c", script], 30)]),
    )
    .await;
    isolation.check(&host).await;
    let id = started(&host, json!({})).await;
    let text = host
        .client()
        .get(format!(
            "{}/api/deployment/deployments/{id}/logs?follow=true",
            host.url
        ))
        .header("X-API-Key", DEVELOPER_KEY)
        .timeout(RUN_TIMEOUT)
        .send()
        .await
        .expect("follow")
        .text()
        .await
        .expect("the stream ends with the deployment");
    let lines: Vec<Value> = text
        .lines()
        .map(|line| serde_json::from_str(line).expect("NDJSON"))
        .collect();
    let steps: Vec<&str> = lines
        .iter()
        .filter(|line| line["stream"] == "stdout")
        .filter_map(|line| line["line"].as_str())
        .collect();
    assert_eq!(steps, ["step 1", "step 2", "step 3", "step 4", "step 5"]);
    assert_eq!(
        lines.last().map(|end| end["status"].clone()),
        Some(json!("completed"))
    );
}

#[tokio::test]
async fn kill_9_mid_deployment_leaves_it_interrupted_with_its_log() {
    kill_9_leaves_the_run_interrupted(Isolation::InProcess).await;
}

/// The host killed with SIGKILL mid-deployment (its plugin's child process, if any, with it):
/// after the next start the run is `interrupted`, every line recorded before the kill is still
/// there, and the environment is free.
pub(crate) async fn kill_9_leaves_the_run_interrupted(isolation: Isolation) {
    let dir = tempfile::tempdir().expect("temp dir");
    let script = "n=0; while true; do n=$((n+1)); echo line $n; sleep 0.05; done";
    let list = vec![local("endless", &["sh", "-c", script], 600)];
    let host = TestHost::start(dir.path(), isolation.options(list.clone())).await;
    let child = isolation.check(&host).await;
    let id = started(&host, json!({})).await;
    let deadline = tokio::time::Instant::now() + RUN_TIMEOUT;
    let seen = loop {
        let seen = log_text(&host, &id).await;
        if seen.iter().filter(|line| line.starts_with("line ")).count() >= 10 {
            break seen;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "log lines were recorded: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    host.kill();
    if let Some(child) = child {
        assert!(
            wait_until(Duration::from_secs(10), || async move {
                !e2e::process_alive(child)
            })
            .await,
            "the plugin's child process {child} does not outlive the host"
        );
    }

    let host = TestHost::start(dir.path(), isolation.options(list)).await;
    isolation.check(&host).await;
    let record = detail(&host, &id).await;
    assert_eq!(record["status"], "interrupted", "{record}");
    assert_eq!(result(&record, "endless")["status"], "cancelled");
    let after = log_text(&host, &id).await;
    assert!(
        after.len() > seen.len() && after[..seen.len()] == seen[..],
        "every line recorded before the kill is still there, in order"
    );
    assert!(after
        .last()
        .is_some_and(|line| line.contains("interrupted")));
    // The environment is free again after the restart.
    let (status, body) = trigger(&host, json!({"environments": ["endless"]})).await;
    assert_eq!(status, 202, "{body}");
}

#[tokio::test]
async fn a_hot_swap_during_a_deployment_lets_it_complete() {
    let dir = tempfile::tempdir().expect("temp dir");
    let script = "for n in $(seq 1 30); do echo tick $n; sleep 0.1; done";
    let host = TestHost::start(
        dir.path(),
        options(vec![local("ticking", &["sh", "-c", script], 60)]),
    )
    .await;
    let id = started(&host, json!({})).await;
    assert!(
        wait_until(RUN_TIMEOUT, || async {
            log_text(&host, &id)
                .await
                .iter()
                .any(|line| line == "tick 3")
        })
        .await
    );
    host.install_plugin("deployment_mcp_next");
    let (status, body) = host.reload().await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(host.plugin_status().await["version"], "0.1.1-next");
    // The new copy sees the run (through the store) and refuses to double-book it.
    let (status, _) = trigger(&host, json!({"environments": ["ticking"]})).await;
    assert_eq!(status, 409);
    let record = finished(&host, &id).await;
    assert_eq!(record["status"], "completed", "{record}");
    let ticks: Vec<String> = log_text(&host, &id)
        .await
        .into_iter()
        .filter(|line| line.starts_with("tick "))
        .collect();
    let expected: Vec<String> = (1..=30).map(|n| format!("tick {n}")).collect();
    assert_eq!(ticks, expected, "the whole log survived the swap");
}

async fn environment_count(host: &TestHost) -> Value {
    let (status, listing) = host
        .get("/api/deployment/environments", Some(DEVELOPER_KEY))
        .await;
    assert_eq!(status, 200);
    listing
}

async fn post_raw(host: &TestHost, path: &str, body: &str) -> (u16, Value) {
    let response = host
        .client()
        .post(format!("{}{path}", host.url))
        .header("X-API-Key", ADMIN_KEY)
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .expect("answer");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn bad_input_gets_a_precise_error_and_changes_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let host = TestHost::start(dir.path(), options(vec![local("quick", &["true"], 30)])).await;
    let before = environment_count(&host).await;
    let environment = |extra: &str| {
        format!(
            r#"{{"environment_id": "new_one", "environment_type": "linux_local", "connection_method": "http_api", "host": "127.0.0.1"{extra}}}"#
        )
    };
    let cases: Vec<(&str, String, u16, &str)> = vec![
        (
            "/api/deployment/environments",
            "{not json".into(),
            400,
            "body",
        ),
        (
            "/api/deployment/environments",
            environment(r#", "port": 0"#),
            400,
            "port",
        ),
        (
            "/api/deployment/environments",
            environment(r#", "port": 70000"#),
            400,
            "port",
        ),
        (
            "/api/deployment/environments",
            environment(r#", "timeout": "soon""#),
            400,
            "timeout",
        ),
        (
            "/api/deployment/environments",
            environment(r#", "color": "red""#),
            400,
            "color",
        ),
        (
            "/api/deployment/environments",
            environment("").replace("new_one", "quick"),
            409,
            "environment_id",
        ),
        ("/api/deployment/trigger-local", "[]".into(), 400, "body"),
        (
            "/api/deployment/trigger-local",
            r#"{"environments": "quick"}"#.into(),
            400,
            "environments",
        ),
        (
            "/api/deployment/trigger-local",
            r#"{"environments": []}"#.into(),
            400,
            "environments",
        ),
        (
            "/api/deployment/trigger-local",
            r#"{"version": 5}"#.into(),
            400,
            "version",
        ),
    ];
    for (path, body, expected, field) in cases {
        let (status, answer) = post_raw(&host, path, &body).await;
        assert_eq!(status, expected, "{body} → {answer}");
        let message = answer["message"].as_str().unwrap_or_default();
        assert!(
            answer["field"] == field || message.contains(field),
            "{body}: the error names {field}: {answer}"
        );
    }
    let (status, unknown) = trigger(&host, json!({"environments": ["nope"]})).await;
    assert_eq!(status, 422, "{unknown}");
    assert!(unknown["message"]
        .as_str()
        .unwrap_or_default()
        .contains("nope"));
    let (status, body) = e2e::post_declaring_length(
        &host.url,
        "/api/deployment/trigger-local",
        ADMIN_KEY,
        3 * 1024 * 1024,
    )
    .await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(body["error"], "payload_too_large");
    let (status, _) = host
        .call(
            Method::PUT,
            "/api/deployment/environments/quick",
            Some(ADMIN_KEY),
            Some(json!({"environment_type": "linux_local", "connection_method": "local", "port": 70000})),
        )
        .await;
    assert_eq!(status, 400);

    assert_eq!(environment_count(&host).await, before, "nothing changed");
    let (_, history) = host
        .get("/api/deployment/history", Some(DEVELOPER_KEY))
        .await;
    assert_eq!(history["total_count"], 0, "no deployment was started");
}

#[tokio::test]
async fn environments_crud_keeps_secrets_hidden() {
    let dir = tempfile::tempdir().expect("temp dir");
    let host = TestHost::start(dir.path(), options(vec![local("quick", &["true"], 30)])).await;
    let created = json!({"environment_id": "api_env", "environment_type": "linux_local",
        "connection_method": "http_api", "host": "127.0.0.1", "port": 9, "api_token": "tok-secret-1"});
    let (status, body) = host
        .call(
            Method::POST,
            "/api/deployment/environments",
            Some(ADMIN_KEY),
            Some(created),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["has_api_token"], true);
    assert!(!body.to_string().contains("tok-secret-1"));
    let (status, _) = host
        .call(
            Method::POST,
            "/api/deployment/environments",
            Some(DEVELOPER_KEY),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, 403, "creating needs admin");
    let (status, body) = host
        .call(
            Method::PUT,
            "/api/deployment/environments/api_env",
            Some(ADMIN_KEY),
            Some(
                json!({"environment_type": "linux_local", "connection_method": "http_api",
                        "host": "127.0.0.2", "port": 10}),
            ),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["host"], "127.0.0.2");
    assert_eq!(body["has_api_token"], true, "an omitted secret is kept");
    let (status, _) = host
        .call(
            Method::DELETE,
            "/api/deployment/environments/api_env",
            Some(ADMIN_KEY),
            None,
        )
        .await;
    assert_eq!(status, 200);
    let (status, _) = host
        .get("/api/deployment/environments/api_env", Some(DEVELOPER_KEY))
        .await;
    assert_eq!(status, 404);
    // A file environment deleted through the API stays deleted after a restart.
    let (status, _) = host
        .call(
            Method::DELETE,
            "/api/deployment/environments/quick",
            Some(ADMIN_KEY),
            None,
        )
        .await;
    assert_eq!(status, 200);
    host.stop();
    let host = TestHost::start(dir.path(), options(vec![local("quick", &["true"], 30)])).await;
    let (status, _) = host
        .get("/api/deployment/environments/quick", Some(DEVELOPER_KEY))
        .await;
    assert_eq!(status, 404);
    assert!(!host.logs().contains("tok-secret-1"));
}

fn ssh_environment(sshd: &Sshd, id: &str, script: &Path, known_hosts: &Path) -> Value {
    json!({"environment_id": id, "environment_type": "linux_local", "connection_method": "ssh",
        "host": "127.0.0.1", "port": sshd.port, "username": sshd.username,
        "ssh_key_path": sshd.client_key, "known_hosts_path": known_hosts,
        "init_script_path": script, "timeout": 30})
}

#[tokio::test]
async fn ssh_environments_run_over_a_real_sshd() {
    let sshd = Sshd::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let script = dir.path().join("init remote.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\necho \"deploying $PA_DEPLOYMENT_VERSION\"\necho warming >&2\necho done\n",
    )
    .expect("write the script");
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("make it executable");
    let failing = dir.path().join("failing.sh");
    std::fs::write(&failing, "#!/bin/sh\necho cannot find disk >&2\nexit 7\n").expect("write");
    std::fs::set_permissions(
        &failing,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod");
    let list = vec![
        ssh_environment(&sshd, "ssh_ok", &script, &sshd.known_hosts),
        ssh_environment(&sshd, "ssh_exit", &failing, &sshd.known_hosts),
        ssh_environment(&sshd, "ssh_unknown", &script, &sshd.empty_known_hosts()),
    ];
    let host = TestHost::start(dir.path(), options(list)).await;
    let id = started(&host, json!({"version": "9.9"})).await;
    let record = finished(&host, &id).await;
    assert_eq!(record["status"], "failed");
    let ok = result(&record, "ssh_ok");
    assert_eq!(ok["status"], "succeeded", "{ok}");
    assert_eq!(ok["exit_code"], 0);
    let exit = result(&record, "ssh_exit");
    assert_eq!(exit["status"], "failed");
    assert_eq!(exit["exit_code"], 7);
    assert!(
        exit["error"]
            .as_str()
            .unwrap_or_default()
            .contains("cannot find disk"),
        "{exit}"
    );
    let unknown = result(&record, "ssh_unknown");
    assert_eq!(unknown["status"], "failed");
    assert!(
        unknown["error"]
            .as_str()
            .unwrap_or_default()
            .contains("known_hosts"),
        "{unknown}"
    );
    let lines = log_text(&host, &id).await;
    let stdout: Vec<&String> = lines
        .iter()
        .filter(|line| ["deploying 9.9", "done"].contains(&line.as_str()))
        .collect();
    assert_eq!(
        stdout,
        ["deploying 9.9", "done"],
        "streamed in order: {lines:?}"
    );
    assert!(
        lines.iter().any(|line| line == "warming"),
        "stderr is logged too"
    );
}

/// Whether a health event of `watched` saying `healthy` arrives within the bound. Events that
/// say otherwise are passed over: the check at start may publish after the test subscribed.
async fn health_event(events: &mut Events, healthy: bool) -> bool {
    let deadline = tokio::time::Instant::now() + RUN_TIMEOUT;
    while let Ok(Some((event, data))) = tokio::time::timeout_at(deadline, events.recv()).await {
        if event == "environment.health"
            && data["environment_id"] == "watched"
            && data["health"]["healthy"] == healthy
        {
            return true;
        }
    }
    false
}

#[tokio::test]
async fn periodic_health_checks_update_environments_and_publish_changes() {
    let target = Target::start(Behaviour::default()).await;
    let list = vec![
        json!({"environment_id": "watched", "environment_type": "linux_local",
        "connection_method": "local", "command": ["true"], "timeout": 5,
        "health_check_url": target.url("/health")}),
    ];
    let dir = tempfile::tempdir().expect("temp dir");
    let host = TestHost::start(
        dir.path(),
        HostOptions {
            environments: environments(list),
            settings: "health_check_interval_secs = 1".into(),
            ..HostOptions::default()
        },
    )
    .await;
    let (_, mut events) = subscribe(&host).await;
    // The first check runs at start; afterwards only changes are published.
    assert!(
        wait_until(RUN_TIMEOUT, || async {
            let (_, environment) = host
                .get("/api/deployment/environments/watched", Some(DEVELOPER_KEY))
                .await;
            environment["last_health"]["healthy"] == true
        })
        .await,
        "the periodic check recorded the environment healthy"
    );
    target.set_health(500);
    assert!(
        health_event(&mut events, false).await,
        "the change to unhealthy is published"
    );
    let (_, listing) = host
        .get("/api/deployment/environments", Some(DEVELOPER_KEY))
        .await;
    assert_eq!(
        listing["environments"][0]["last_health"]["http_status"],
        500
    );
    target.set_health(200);
    assert!(
        health_event(&mut events, true).await,
        "the change back to healthy is published"
    );
}

#[tokio::test]
async fn a_host_stopped_mid_deployment_records_it_interrupted() {
    let dir = tempfile::tempdir().expect("temp dir");
    let list = vec![local(
        "endless",
        &["sh", "-c", "echo started; exec sleep 600"],
        900,
    )];
    let host = TestHost::start(dir.path(), options(list.clone())).await;
    let id = started(&host, json!({})).await;
    assert!(
        wait_until(RUN_TIMEOUT, || async {
            log_text(&host, &id)
                .await
                .iter()
                .any(|line| line == "started")
        })
        .await
    );
    let status = host.stop();
    assert!(
        status.is_some_and(|status| status.success()),
        "clean exit: {status:?}"
    );
    let host = TestHost::start(dir.path(), options(list)).await;
    let record = detail(&host, &id).await;
    assert_eq!(record["status"], "interrupted", "{record}");
    let errors = record["errors"].to_string();
    assert!(errors.contains("shut down"), "{errors}");
}

#[tokio::test]
async fn a_reconnecting_sse_client_gets_every_missed_event_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let script = "for n in $(seq 1 20); do echo beat $n; sleep 0.05; done";
    let host = TestHost::start(
        dir.path(),
        options(vec![local("beating", &["sh", "-c", script], 30)]),
    )
    .await;
    // A developer sees every event (a user's stream skips log lines), so ids are contiguous.
    let (_, mut first) = subscribe_after(&host, DEVELOPER_KEY, None).await;
    let id = started(&host, json!({})).await;
    // Read a few events, then drop the connection mid-deployment.
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let next = tokio::time::timeout(RUN_TIMEOUT, first.recv()).await;
        let Ok(Some((event_id, _, _))) = next else {
            panic!("events arrive")
        };
        seen.push(event_id);
    }
    drop(first);
    let last = seen.last().copied().unwrap_or_default();
    // Let the deployment end while disconnected, so everything after `last` was missed.
    finished(&host, &id).await;
    let (status, mut resumed) = subscribe_after(&host, DEVELOPER_KEY, Some(last)).await;
    assert_eq!(status, 200);
    let mut replayed = Vec::new();
    let mut ended = false;
    while !ended {
        let next = tokio::time::timeout(RUN_TIMEOUT, resumed.recv()).await;
        let Ok(Some((event_id, event, data))) = next else {
            panic!("the replay includes the end of the deployment: {replayed:?}")
        };
        replayed.push(event_id);
        ended = event == "deployment.phase" && data["status"] == "completed";
    }
    let expected: Vec<u64> = (last + 1..=last + replayed.len() as u64).collect();
    assert_eq!(replayed, expected, "every missed event, once, in order");
}

/// Automatic deployments in the history, oldest first.
pub(crate) async fn auto_deployments(host: &TestHost) -> Vec<Value> {
    let (status, history) = host
        .get("/api/deployment/history", Some(DEVELOPER_KEY))
        .await;
    assert_eq!(status, 200);
    let mut list: Vec<Value> = history["history"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|entry| entry["triggered_by"] == "auto:startup")
        .collect();
    list.reverse();
    list
}

async fn start_with_auto_deploy(dir: &Path, when: &str, version: &str) -> TestHost {
    start_with_auto_deploy_in(dir, when, version, Isolation::InProcess).await
}

pub(crate) async fn start_with_auto_deploy_in(
    dir: &Path,
    when: &str,
    version: &str,
    isolation: Isolation,
) -> TestHost {
    TestHost::start(
        dir,
        isolation.apply(HostOptions {
            // Each run waits for the test to create `release`, so the test decides when it ends.
            environments: environments(vec![local(
                "gated",
                &[
                    "sh",
                    "-c",
                    &format!(
                        "while [ ! -e '{}' ]; do sleep 0.05; done",
                        dir.join("release").display()
                    ),
                ],
                30,
            )]),
            settings: format!(
                "health_check_interval_secs = 0\nauto_deploy = {{ enabled = true, when = \"{when}\" }}"
            ),
            env: vec![("DEPLOYMENT_VERSION".into(), version.into())],
            ..HostOptions::default()
        }),
    )
    .await
}

/// Waits until `count` automatic deployments exist and all have ended.
pub(crate) async fn settled_auto_deployments(host: &TestHost, count: usize) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + RUN_TIMEOUT;
    loop {
        let list = auto_deployments(host).await;
        let ended = list
            .iter()
            .all(|entry| is_terminal(entry["status"].as_str().unwrap_or_default()));
        if list.len() >= count && ended {
            return list;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "auto deployments: {list:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn auto_deploy_runs_once_per_version_and_never_delays_the_host() {
    let dir = tempfile::tempdir().expect("temp dir");
    let host = start_with_auto_deploy(dir.path(), "version_changed", "1.0.0").await;
    // Serving while the automatic deployment waits for `release`.
    let (status, _) = host.get("/health", None).await;
    assert_eq!(status, 200);
    assert!(
        wait_until(RUN_TIMEOUT, || async {
            auto_deployments(&host).await.len() == 1
        })
        .await,
        "the automatic deployment starts"
    );
    let running = auto_deployments(&host).await;
    assert!(
        !is_terminal(running[0]["status"].as_str().unwrap_or_default()),
        "it is still running while the host serves: {running:?}"
    );
    std::fs::write(dir.path().join("release"), "").expect("release the gate");
    let list = settled_auto_deployments(&host, 1).await;
    assert_eq!(list[0]["status"], "completed");
    assert_eq!(list[0]["version"], "1.0.0");
    // A hot swap is not a new start.
    host.install_plugin("deployment_mcp_next");
    let (status, body) = host.reload().await;
    assert_eq!(status, 200, "{body}");
    host.stop();

    let host = start_with_auto_deploy(dir.path(), "version_changed", "1.0.0").await;
    assert_eq!(host.plugin_status().await["state"], "active");
    let list = settled_auto_deployments(&host, 1).await;
    assert_eq!(list.len(), 1, "same version: no second deployment");
    host.stop();

    let host = start_with_auto_deploy(dir.path(), "version_changed", "1.1.0").await;
    let list = settled_auto_deployments(&host, 2).await;
    assert_eq!(list.len(), 2);
    assert_eq!(list[1]["version"], "1.1.0");
    host.stop();

    let host = start_with_auto_deploy(dir.path(), "always", "1.1.0").await;
    let list = settled_auto_deployments(&host, 3).await;
    assert_eq!(list.len(), 3, "always: one per start");
}
