//! Safe rollouts end to end, on the real host with real `local` targets: rolling batches in
//! rollout order with a failure threshold, canary gates (approve, reject, timeout, across a
//! hot swap and a restart), and rollbacks (automatic and by hand). Marker files written by the
//! targets prove what ran, with which version.

use std::path::Path;

use e2e::{
    scenario::{
        detail, finished, local, options, result, started, status_within, subscribe, trigger,
        Events, RUN_TIMEOUT,
    },
    targets::{Behaviour, Target},
    TestHost, ADMIN_KEY, DEVELOPER_KEY, USER_KEY,
};
use reqwest::Method;
use serde_json::{json, Value};

/// A `local` environment that leaves `<dir>/<id>.<version>` behind (and exits `code`), and
/// whose rollback leaves `<dir>/<id>.rollback.<version>`.
fn marking(id: &str, dir: &Path, code: u8) -> Value {
    let dir = dir.display().to_string();
    let mut environment = local(
        id,
        &[
            "sh",
            "-c",
            &format!("touch \"$0/$PA_ENVIRONMENT_ID.$PA_DEPLOYMENT_VERSION\"; exit {code}"),
            &dir,
        ],
        30,
    );
    environment["rollback_command"] = json!([
        "sh",
        "-c",
        "[ \"$PA_ROLLBACK\" = 1 ] && touch \"$0/$PA_ENVIRONMENT_ID.rollback.$PA_DEPLOYMENT_VERSION\"",
        dir
    ]);
    environment
}

fn marker(dir: &Path, name: &str) -> bool {
    dir.join(name).exists()
}

async fn post(host: &TestHost, path: &str, key: &str) -> (u16, Value) {
    host.call(
        Method::POST,
        &format!("/api/deployment{path}"),
        Some(key),
        None,
    )
    .await
}

/// Waits (bounded) until the deployment is in `status`, and returns its record.
async fn reaches(host: &TestHost, id: &str, status: &str) -> Value {
    status_within(host, id, RUN_TIMEOUT, |now| now == status).await
}

/// Reads events until one of `kind` for deployment `id` satisfies `wanted` (bounded).
async fn event_until(
    events: &mut Events,
    kind: &str,
    id: &str,
    wanted: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = tokio::time::Instant::now() + RUN_TIMEOUT;
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some((event, data))) if event == kind && data["deployment_id"] == id => {
                if wanted(&data) {
                    return data;
                }
            }
            Ok(Some(_)) => {}
            _ => panic!("no {kind} event for {id} as wanted"),
        }
    }
}

async fn environment(host: &TestHost, id: &str) -> Value {
    let (status, body) = host
        .get(
            &format!("/api/deployment/environments/{id}"),
            Some(DEVELOPER_KEY),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    body
}

#[tokio::test]
async fn a_rolling_deployment_stops_after_the_batch_that_crossed_max_failures() {
    let dir = tempfile::tempdir().expect("temp dir");
    let markers = dir.path().join("markers");
    std::fs::create_dir_all(&markers).expect("markers dir");
    // Rollout order is `order`, then id: e9 first, e0 last. The 3rd in that order, e7, fails.
    let list: Vec<Value> = (0..10)
        .map(|n| {
            let id = format!("e{n}");
            let mut environment = marking(&id, &markers, if n == 7 { 3 } else { 0 });
            environment["order"] = json!(10 - n);
            environment
        })
        .collect();
    let host = TestHost::start(dir.path(), options(list)).await;
    let id = started(
        &host,
        json!({"version": "v1", "strategy": {"type": "rolling", "batch_size": 2}, "max_failures": 0}),
    )
    .await;
    let record = finished(&host, &id).await;
    assert_eq!(record["status"], "failed", "{record}");
    let ran: Vec<String> = (0..10)
        .map(|n| format!("e{n}"))
        .filter(|id| marker(&markers, &format!("{id}.v1")))
        .collect();
    assert_eq!(
        ran,
        ["e6", "e7", "e8", "e9"],
        "batches 1 (e9, e8) and 2 (e7, e6) ran, nothing after"
    );
    assert_eq!(result(&record, "e7")["status"], "failed");
    assert_eq!(
        result(&record, "e6")["status"],
        "succeeded",
        "the batch's other environment finished"
    );
    for n in 0..6 {
        let skipped = result(&record, &format!("e{n}"));
        assert_eq!(skipped["status"], "skipped", "{record}");
        assert!(skipped["started_at"].is_null());
    }
    let batches = record["batches"].as_array().expect("batches");
    let states: Vec<&str> = batches
        .iter()
        .map(|batch| batch["status"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(
        states,
        ["succeeded", "failed", "skipped", "skipped", "skipped"]
    );
    assert_eq!(batches[0]["environments"], json!(["e9", "e8"]));
    assert!(
        record["errors"].as_array().is_some_and(|errors| errors
            .iter()
            .any(|e| e.as_str().is_some_and(|e| e.contains("max_failures 0")))),
        "the reason names the threshold: {record}"
    );
    assert_eq!(record["rollout"]["max_failures"], 0);
    // The history can be filtered by the new statuses, and the environment shows its version.
    assert_eq!(environment(&host, "e9").await["deployed_version"], "v1");
    assert!(environment(&host, "e0").await["deployed_version"].is_null());
}

#[tokio::test]
async fn cancel_running_stops_what_runs_once_the_threshold_is_crossed() {
    let dir = tempfile::tempdir().expect("temp dir");
    let list = vec![
        local("fails", &["sh", "-c", "exit 1"], 30),
        local("slow-1", &["sleep", "30"], 60),
        local("slow-2", &["sleep", "30"], 60),
    ];
    let host = TestHost::start(dir.path(), options(list)).await;
    let id = started(
        &host,
        json!({"max_failures": "0%", "on_failure": "cancel_running"}),
    )
    .await;
    let record = finished(&host, &id).await;
    assert_eq!(record["status"], "failed", "{record}");
    for slow in ["slow-1", "slow-2"] {
        let stopped = result(&record, slow);
        assert_eq!(stopped["status"], "cancelled", "{record}");
        assert!(
            stopped["error"]
                .as_str()
                .is_some_and(|e| e.contains("max_failures")),
            "{stopped}"
        );
    }
}

#[tokio::test]
async fn rollout_fields_are_checked_and_named() {
    let dir = tempfile::tempdir().expect("temp dir");
    let host = TestHost::start(dir.path(), options(vec![local("one", &["true"], 30)])).await;
    for (body, field) in [
        (
            json!({"strategy": {"type": "rolling", "batch_size": 0}}),
            "strategy.batch_size",
        ),
        (
            json!({"strategy": {"type": "rolling", "batch_size": "150%"}}),
            "strategy.batch_size",
        ),
        (
            json!({"strategy": {"type": "rolling", "batch_size": "x"}}),
            "strategy.batch_size",
        ),
        (json!({"strategy": {"type": "sideways"}}), "strategy.type"),
        (
            json!({"strategy": {"type": "canary", "canary": 1}}),
            "strategy.gate",
        ),
        (json!({"max_failures": -1}), "max_failures"),
        (json!({"rollback": "some"}), "rollback"),
    ] {
        let (status, answer) = trigger(&host, body.clone()).await;
        assert_eq!(status, 400, "{body}: {answer}");
        assert_eq!(answer["field"], field, "{body}: {answer}");
    }
    let (status, history) = host
        .get("/api/deployment/history", Some(DEVELOPER_KEY))
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        history["total_count"], 0,
        "a refused request starts nothing"
    );
}

#[tokio::test]
async fn a_manual_canary_gate_waits_for_approval_and_a_reject_skips_the_rest() {
    let dir = tempfile::tempdir().expect("temp dir");
    let markers = dir.path().join("markers");
    std::fs::create_dir_all(&markers).expect("markers dir");
    let list = ["c1", "c2", "c3"]
        .iter()
        .map(|id| marking(id, &markers, 0))
        .collect();
    let host = TestHost::start(dir.path(), options(list)).await;
    let (_, mut events) = subscribe(&host).await;
    let canary =
        json!({"version": "v1", "strategy": {"type": "canary", "canary": 1, "gate": "manual"}});
    let id = started(&host, canary.clone()).await;

    let record = reaches(&host, &id, "awaiting_approval").await;
    assert_eq!(record["gate"]["status"], "waiting", "{record}");
    assert!(record["gate"]["deadline_at"].is_string());
    assert!(marker(&markers, "c1.v1") && !marker(&markers, "c2.v1") && !marker(&markers, "c3.v1"));
    assert_eq!(result(&record, "c2")["status"], "pending");
    let (status, summary) = host
        .get(&format!("/api/deployment/status?id={id}"), Some(USER_KEY))
        .await;
    assert_eq!(status, 200);
    assert_eq!(summary["status"], "awaiting_approval", "{summary}");
    assert_eq!(summary["gate"]["status"], "waiting");
    event_until(&mut events, "deployment.phase", &id, |data| {
        data["status"] == "awaiting_approval"
    })
    .await;
    event_until(&mut events, "deployment.gate", &id, |data| {
        data["gate"]["status"] == "waiting"
    })
    .await;

    let (status, refused) = post(&host, &format!("/deployments/{id}/approve"), DEVELOPER_KEY).await;
    assert_eq!(status, 403, "{refused}");
    let (status, approved) = post(&host, &format!("/deployments/{id}/approve"), ADMIN_KEY).await;
    assert_eq!(status, 200, "{approved}");
    let gate = event_until(&mut events, "deployment.gate", &id, |data| {
        data["gate"]["status"] == "approved"
    })
    .await;
    assert!(gate["gate"]["decided_by"].is_string(), "{gate}");
    let record = finished(&host, &id).await;
    assert_eq!(record["status"], "completed", "{record}");
    assert!(marker(&markers, "c2.v1") && marker(&markers, "c3.v1"));
    let (status, again) = post(&host, &format!("/deployments/{id}/approve"), ADMIN_KEY).await;
    assert_eq!(status, 409, "a decided gate is not decided twice: {again}");

    let canary =
        json!({"version": "v2", "strategy": {"type": "canary", "canary": 1, "gate": "manual"}});
    let id = started(&host, canary).await;
    reaches(&host, &id, "awaiting_approval").await;
    let (status, rejected) = post(&host, &format!("/deployments/{id}/reject"), ADMIN_KEY).await;
    assert_eq!(status, 200, "{rejected}");
    let record = detail(&host, &id).await;
    assert_eq!(record["status"], "cancelled", "{record}");
    assert_eq!(record["gate"]["status"], "rejected");
    assert_eq!(result(&record, "c1")["status"], "succeeded");
    for rest in ["c2", "c3"] {
        assert_eq!(result(&record, rest)["status"], "skipped", "{record}");
        assert!(!marker(&markers, &format!("{rest}.v2")));
    }
    // The claims were released: the environments deploy again at once.
    let (status, body) = trigger(&host, json!({"environments": ["c2"]})).await;
    assert_eq!(status, 202, "{body}");
    let (status, history) = host
        .get(
            "/api/deployment/history?status=cancelled",
            Some(DEVELOPER_KEY),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(history["total_count"], 1, "{history}");
}

#[tokio::test]
async fn a_waiting_gate_survives_a_hot_swap_and_a_restart_and_times_out() {
    let dir = tempfile::tempdir().expect("temp dir");
    let markers = dir.path().join("markers");
    std::fs::create_dir_all(&markers).expect("markers dir");
    let list: Vec<Value> = ["g1", "g2"]
        .iter()
        .map(|id| marking(id, &markers, 0))
        .collect();
    let host = TestHost::start(dir.path(), options(list.clone())).await;
    let id = started(
        &host,
        json!({"version": "v1", "strategy": {"type": "canary", "canary": 1, "gate": "manual"}}),
    )
    .await;
    reaches(&host, &id, "awaiting_approval").await;
    host.install_plugin("deployment_mcp");
    let (status, body) = host.reload().await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(detail(&host, &id).await["status"], "awaiting_approval");
    host.kill();

    let host = TestHost::start(dir.path(), options(list)).await;
    let record = detail(&host, &id).await;
    assert_eq!(
        record["status"], "awaiting_approval",
        "a restart keeps the gate: {record}"
    );
    let (status, busy) = trigger(&host, json!({"environments": ["g2"]})).await;
    assert_eq!(
        status, 409,
        "the waiting deployment still holds its environments: {busy}"
    );
    let (status, approved) = post(&host, &format!("/deployments/{id}/approve"), ADMIN_KEY).await;
    assert_eq!(status, 200, "{approved}");
    let record = finished(&host, &id).await;
    assert_eq!(record["status"], "completed", "{record}");
    assert!(marker(&markers, "g2.v1"));

    let id = started(
        &host,
        json!({"version": "v2", "strategy": {"type": "canary", "canary": 1, "gate": "manual", "gate_timeout_secs": 1}}),
    )
    .await;
    let record = finished(&host, &id).await;
    assert_eq!(record["status"], "cancelled", "{record}");
    assert_eq!(record["gate"]["status"], "timed_out", "{record}");
    assert_eq!(result(&record, "g2")["status"], "skipped");
    assert!(!marker(&markers, "g2.v2"));
}

#[tokio::test]
async fn a_failed_deployment_rolls_back_every_environment_it_changed() {
    let dir = tempfile::tempdir().expect("temp dir");
    let markers = dir.path().join("markers");
    std::fs::create_dir_all(&markers).expect("markers dir");
    let dir_text = markers.display().to_string();
    let mut list: Vec<Value> = ["r1", "r2"]
        .iter()
        .map(|id| marking(id, &markers, 0))
        .collect();
    // r3 fails on v2 only; it rolls back by running its command again with PA_ROLLBACK=1.
    list.push(local(
        "r3",
        &[
            "sh",
            "-c",
            "if [ \"$PA_ROLLBACK\" = 1 ]; then touch \"$0/r3.rollback.$PA_DEPLOYMENT_VERSION\"; exit 0; fi; \
             touch \"$0/r3.$PA_DEPLOYMENT_VERSION\"; [ \"$PA_DEPLOYMENT_VERSION\" != v2 ]",
            &dir_text,
        ],
        30,
    ));
    let host = TestHost::start(dir.path(), options(list)).await;
    let v1 = started(&host, json!({"version": "v1"})).await;
    assert_eq!(finished(&host, &v1).await["status"], "completed");

    let (_, mut events) = subscribe(&host).await;
    let v2 = started(&host, json!({"version": "v2", "rollback": "all"})).await;
    let record = finished(&host, &v2).await;
    assert_eq!(record["status"], "rolled_back", "{record}");
    event_until(&mut events, "deployment.phase", &v2, |data| {
        data["status"] == "rolling_back"
    })
    .await;
    for environment in ["r1", "r2", "r3"] {
        assert!(
            marker(&markers, &format!("{environment}.rollback.v1")),
            "{environment} rolled back to v1"
        );
        let rolled = result(&record, environment);
        assert_eq!(rolled["status"], "rolled_back", "{record}");
        assert_eq!(rolled["rollback"]["version"], "v1");
        assert_eq!(rolled["rollback"]["succeeded"], true);
        let shown = environment_versions(&host, environment).await;
        assert_eq!(shown.0.as_deref(), Some("v1"), "{environment}: {shown:?}");
    }
    let (status, history) = host
        .get(
            "/api/deployment/history?status=rolled_back",
            Some(DEVELOPER_KEY),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(history["total_count"], 1, "{history}");

    // v3 succeeds everywhere; a rollback by hand returns every environment to v1.
    let v3 = started(&host, json!({"version": "v3"})).await;
    assert_eq!(finished(&host, &v3).await["status"], "completed");
    assert_eq!(
        environment_versions(&host, "r1").await,
        (Some("v3".to_owned()), Some("v1".to_owned()))
    );
    let (status, refused) =
        post(&host, &format!("/deployments/{v3}/rollback"), DEVELOPER_KEY).await;
    assert_eq!(status, 403, "{refused}");
    let (status, accepted) = post(&host, &format!("/deployments/{v3}/rollback"), ADMIN_KEY).await;
    assert_eq!(status, 202, "{accepted}");
    assert_eq!(accepted["status"], "rolling_back");
    let record = finished(&host, &v3).await;
    assert_eq!(record["status"], "rolled_back", "{record}");
    assert_eq!(
        environment_versions(&host, "r2").await.0.as_deref(),
        Some("v1")
    );
    let (status, again) = post(&host, &format!("/deployments/{v3}/rollback"), ADMIN_KEY).await;
    assert_eq!(status, 422, "nothing is left to roll back: {again}");

    // An environment deployed again since is left as it is: rolling it back would undo the
    // later deployment.
    let v5 = started(&host, json!({"version": "v5"})).await;
    assert_eq!(finished(&host, &v5).await["status"], "completed");
    let v6 = started(&host, json!({"version": "v6", "environments": ["r1"]})).await;
    assert_eq!(finished(&host, &v6).await["status"], "completed");
    let (status, accepted) = post(&host, &format!("/deployments/{v5}/rollback"), ADMIN_KEY).await;
    assert_eq!(status, 202, "{accepted}");
    let record = finished(&host, &v5).await;
    assert_eq!(record["status"], "rolled_back", "{record}");
    assert_eq!(
        environment_versions(&host, "r1").await.0.as_deref(),
        Some("v6")
    );
    assert_eq!(
        environment_versions(&host, "r2").await.0.as_deref(),
        Some("v1")
    );
    let (status, refused) = post(&host, &format!("/deployments/{v6}/rollback"), ADMIN_KEY).await;
    assert_eq!(
        status, 202,
        "the later deployment itself rolls back: {refused}"
    );
}

/// An environment's `(deployed_version, previous_version)`.
async fn environment_versions(host: &TestHost, id: &str) -> (Option<String>, Option<String>) {
    let shown = environment(host, id).await;
    let text = |name: &str| shown[name].as_str().map(str::to_owned);
    (text("deployed_version"), text("previous_version"))
}

#[tokio::test]
async fn an_environment_deployed_for_the_first_time_has_nothing_to_roll_back() {
    let dir = tempfile::tempdir().expect("temp dir");
    let list = vec![local("first", &["sh", "-c", "exit 2"], 30)];
    let host = TestHost::start(dir.path(), options(list)).await;
    let id = started(&host, json!({"version": "v1", "rollback": "failed"})).await;
    let record = finished(&host, &id).await;
    assert_eq!(record["status"], "failed", "{record}");
    let first = result(&record, "first");
    assert_eq!(first["status"], "failed", "left as it is: {record}");
    assert!(first["rollback"].is_null(), "{first}");
    let (_, logs) = host
        .get(
            &format!("/api/deployment/deployments/{id}/logs"),
            Some(DEVELOPER_KEY),
        )
        .await;
    assert!(
        logs["lines"]
            .as_array()
            .is_some_and(|lines| lines.iter().any(|line| line["line"]
                .as_str()
                .is_some_and(|text| text.contains("no previous version")))),
        "the log says why nothing was rolled back: {logs}"
    );
}

#[tokio::test]
async fn an_approval_the_moment_the_gate_shows_is_final_and_cancel_ends_a_waiting_gate() {
    let dir = tempfile::tempdir().expect("temp dir");
    let list = vec![local("q1", &["true"], 30), local("q2", &["true"], 30)];
    let host = TestHost::start(dir.path(), options(list)).await;
    let canary = json!({"strategy": {"type": "canary", "canary": 1, "gate": "manual"}});
    // The gate's record is the parked run's last write: an approval taken as soon as it is
    // visible is never overwritten, and is taken once.
    for round in 0..5 {
        let id = started(&host, canary.clone()).await;
        let approved = loop {
            let (status, _) = post(&host, &format!("/deployments/{id}/approve"), ADMIN_KEY).await;
            if status == 200 {
                break true;
            }
            assert_eq!(status, 409, "round {round}: not waiting yet is a 409");
            if detail(&host, &id).await["status"] == "completed" {
                break false;
            }
        };
        assert!(approved, "round {round}: the gate was approved");
        let (status, again) = post(&host, &format!("/deployments/{id}/approve"), ADMIN_KEY).await;
        assert_eq!(status, 409, "round {round}: approved once: {again}");
        let record = finished(&host, &id).await;
        assert_eq!(record["status"], "completed", "round {round}: {record}");
    }
    let (_, waiting) = host
        .get(
            "/api/deployment/history?status=awaiting_approval",
            Some(DEVELOPER_KEY),
        )
        .await;
    assert_eq!(
        waiting["total_count"], 0,
        "no deployment is left counted as waiting: {waiting}"
    );

    let id = started(&host, canary).await;
    reaches(&host, &id, "awaiting_approval").await;
    let (status, cancelled) = post(&host, &format!("/deployments/{id}/cancel"), ADMIN_KEY).await;
    assert_eq!(status, 200, "{cancelled}");
    let record = detail(&host, &id).await;
    assert_eq!(record["status"], "cancelled", "{record}");
    assert_eq!(result(&record, "q2")["status"], "skipped");
}

/// The log's lines, as text, in order.
async fn log_lines(host: &TestHost, id: &str) -> Vec<String> {
    e2e::scenario::log_page(host, id).await["lines"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|line| {
            format!(
                "{} {}",
                line["environment"].as_str().unwrap_or("-"),
                line["line"].as_str().unwrap_or_default()
            )
        })
        .collect()
}

/// The position of the first line containing `needle` (panics naming it when none does).
fn position(lines: &[String], needle: &str) -> usize {
    lines
        .iter()
        .position(|line| line.contains(needle))
        .unwrap_or_else(|| panic!("no line with {needle:?}:\n{}", lines.join("\n")))
}

#[tokio::test]
async fn rolling_pauses_between_batches_and_a_canary_goes_on_as_its_then_says() {
    let dir = tempfile::tempdir().expect("temp dir");
    let markers = dir.path().join("markers");
    std::fs::create_dir_all(&markers).expect("markers dir");
    let list = ["p1", "p2", "p3"]
        .iter()
        .map(|id| marking(id, &markers, 0))
        .collect();
    let host = TestHost::start(dir.path(), options(list)).await;

    let rolling = json!({"version": "v1",
        "strategy": {"type": "rolling", "batch_size": 1, "pause_secs": 1}});
    let id = started(&host, rolling).await;
    let record = finished(&host, &id).await;
    assert_eq!(record["status"], "completed", "{record}");
    let batches = record["batches"].as_array().cloned().unwrap_or_default();
    assert_eq!(batches.len(), 3, "{record}");
    let lines = log_lines(&host, &id).await;
    assert!(
        !lines.iter().any(|line| line.contains("before batch 1")),
        "no pause before the first batch:\n{}",
        lines.join("\n")
    );
    // Each pause comes after the batch before it and before the next one starts.
    let pause_2 = position(&lines, "pausing 1 s before batch 2");
    let pause_3 = position(&lines, "pausing 1 s before batch 3");
    assert!(position(&lines, "p1 ") < pause_2 && pause_2 < position(&lines, "p2 "));
    assert!(position(&lines, "p2 ") < pause_3 && pause_3 < position(&lines, "p3 "));

    // A canary, then the rest as `then` says: rolling, one at a time, pausing.
    let canary = json!({"version": "v2", "strategy": {"type": "canary", "canary": 1,
        "gate": "auto", "bake_secs": 0,
        "then": {"type": "rolling", "batch_size": 1, "pause_secs": 1}}});
    let id = started(&host, canary).await;
    let record = finished(&host, &id).await;
    assert_eq!(record["status"], "completed", "{record}");
    assert_eq!(record["gate"]["status"], "passed", "{record}");
    let sizes: Vec<usize> = record["batches"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|batch| batch["environments"].as_array().map_or(0, Vec::len))
        .collect();
    assert_eq!(sizes, [1, 1, 1], "{record}");
    let lines = log_lines(&host, &id).await;
    position(&lines, "pausing 1 s before batch 3");
    for environment in ["p1", "p2", "p3"] {
        assert!(marker(&markers, &format!("{environment}.v2")));
    }
}

#[tokio::test]
async fn an_auto_gate_bakes_checks_the_canary_again_and_stops_when_it_is_unhealthy() {
    let dir = tempfile::tempdir().expect("temp dir");
    let markers = dir.path().join("markers");
    std::fs::create_dir_all(&markers).expect("markers dir");
    let health = Target::start(Behaviour::default()).await;
    let mut canary = marking("a1", &markers, 0);
    canary["order"] = json!(0);
    canary["health_check_url"] = json!(health.url("/health"));
    let mut rest = marking("a2", &markers, 0);
    rest["order"] = json!(1);
    let host = TestHost::start(dir.path(), options(vec![canary, rest])).await;
    let (_, mut events) = subscribe(&host).await;

    // Healthy after baking: the rest follows.
    let auto = |version: &str| {
        json!({"version": version, "strategy": {"type": "canary", "canary": 1,
            "gate": "auto", "bake_secs": 3}})
    };
    let id = started(&host, auto("v1")).await;
    let record = finished(&host, &id).await;
    assert_eq!(record["status"], "completed", "{record}");
    assert_eq!(record["gate"]["status"], "passed", "{record}");
    assert!(marker(&markers, "a2.v1"));
    position(
        &log_lines(&host, &id).await,
        "baking 3 s before checking it again",
    );

    // The canary turns unhealthy while it bakes: the gate fails and the rest never starts.
    let id = started(&host, auto("v2")).await;
    event_until(&mut events, "deployment.gate", &id, |data| {
        data["gate"]["status"] == "waiting"
    })
    .await;
    health.set_health(503);
    let record = finished(&host, &id).await;
    assert_eq!(record["status"], "failed", "{record}");
    assert_eq!(record["gate"]["status"], "failed", "{record}");
    assert_eq!(result(&record, "a1")["status"], "succeeded", "{record}");
    assert_eq!(result(&record, "a2")["status"], "skipped", "{record}");
    assert!(marker(&markers, "a1.v2") && !marker(&markers, "a2.v2"));
    assert!(
        record
            .to_string()
            .contains("the canary is unhealthy after baking: a1"),
        "{record}"
    );
    let (_, environment) = host
        .get("/api/deployment/environments/a1", Some(DEVELOPER_KEY))
        .await;
    assert_eq!(
        environment["last_health"]["healthy"], false,
        "the check is recorded: {environment}"
    );
}

#[tokio::test]
async fn rollback_failed_rolls_back_only_the_failed_and_a_failing_rollback_is_reported() {
    let dir = tempfile::tempdir().expect("temp dir");
    let markers = dir.path().join("markers");
    std::fs::create_dir_all(&markers).expect("markers dir");
    let dir_text = markers.display().to_string();
    // Fails on v2; its rollback (the rollback command) leaves a marker.
    let failing = |id: &str| {
        let mut environment = local(
            id,
            &[
                "sh",
                "-c",
                "touch \"$0/$PA_ENVIRONMENT_ID.$PA_DEPLOYMENT_VERSION\"; [ \"$PA_DEPLOYMENT_VERSION\" != v2 ]",
                &dir_text,
            ],
            30,
        );
        environment["rollback_command"] = json!([
            "sh",
            "-c",
            "touch \"$0/$PA_ENVIRONMENT_ID.rollback.$PA_DEPLOYMENT_VERSION\"",
            dir_text
        ]);
        environment
    };
    let mut broken = failing("b1");
    broken["rollback_command"] = json!(["sh", "-c", "echo cannot roll back >&2; exit 7"]);
    let list = vec![failing("f1"), marking("ok1", &markers, 0), broken];
    let host = TestHost::start(dir.path(), options(list)).await;
    let v1 = started(&host, json!({"version": "v1"})).await;
    assert_eq!(finished(&host, &v1).await["status"], "completed");

    // `failed`: only the environment that failed goes back; the one that succeeded keeps v2.
    let v2 = started(
        &host,
        json!({"version": "v2", "environments": ["f1", "ok1"], "rollback": "failed"}),
    )
    .await;
    let record = finished(&host, &v2).await;
    assert_eq!(record["status"], "rolled_back", "{record}");
    assert_eq!(result(&record, "f1")["status"], "rolled_back", "{record}");
    assert_eq!(result(&record, "f1")["rollback"]["version"], "v1");
    assert_eq!(result(&record, "ok1")["status"], "succeeded", "{record}");
    assert!(marker(&markers, "f1.rollback.v1") && !marker(&markers, "ok1.rollback.v1"));
    assert_eq!(
        environment_versions(&host, "f1").await.0.as_deref(),
        Some("v1")
    );
    assert_eq!(
        environment_versions(&host, "ok1").await.0.as_deref(),
        Some("v2")
    );

    // A rollback that fails: `rollback_failed`, the deployment failed, the reason kept.
    let v2b = started(
        &host,
        json!({"version": "v2", "environments": ["b1"], "rollback": "failed"}),
    )
    .await;
    let record = finished(&host, &v2b).await;
    assert_eq!(record["status"], "failed", "{record}");
    let rolled = result(&record, "b1");
    assert_eq!(rolled["status"], "rollback_failed", "{record}");
    assert_eq!(rolled["rollback"]["succeeded"], false, "{record}");
    assert_eq!(rolled["rollback"]["exit_code"], 7, "{record}");
    assert!(
        record["errors"]
            .to_string()
            .contains("rollback failed for: b1"),
        "{record}"
    );
    assert_eq!(
        environment_versions(&host, "b1").await.0.as_deref(),
        Some("v1"),
        "a failed deployment does not change the deployed version"
    );
}

#[tokio::test]
async fn http_api_and_webhook_targets_are_rolled_back_with_their_previous_version() {
    let dir = tempfile::tempdir().expect("temp dir");
    let markers = dir.path().join("markers");
    std::fs::create_dir_all(&markers).expect("markers dir");
    let target = Target::start(Behaviour::default()).await;
    let api = json!({"environment_id": "api1", "environment_type": "linux_local",
        "connection_method": "http_api", "host": "127.0.0.1", "port": target.port(),
        "api_token": "target-token", "timeout": 20});
    let hook = json!({"environment_id": "hook1", "environment_type": "linux_local",
        "connection_method": "webhook", "webhook_url": target.url("/webhook/deploy"),
        "timeout": 20});
    let failing = local(
        "fails_on_v2",
        &["sh", "-c", "[ \"$PA_DEPLOYMENT_VERSION\" != v2 ]"],
        20,
    );
    let host = TestHost::start(dir.path(), options(vec![api, hook, failing])).await;
    let v1 = started(&host, json!({"version": "v1"})).await;
    assert_eq!(finished(&host, &v1).await["status"], "completed");
    let v2 = started(&host, json!({"version": "v2", "rollback": "all"})).await;
    let record = finished(&host, &v2).await;
    assert_eq!(record["status"], "rolled_back", "{record}");
    for environment in ["api1", "hook1"] {
        assert_eq!(
            result(&record, environment)["status"],
            "rolled_back",
            "{record}"
        );
    }
    let calls = target.received();
    let rollback_of = |path: &str| {
        calls
            .iter()
            .find(|call| call.path == path && call.body["rollback"] == true)
            .unwrap_or_else(|| panic!("no rollback call to {path}: {calls:?}"))
            .clone()
    };
    let api_call = rollback_of("/api/deploy/init");
    assert_eq!(api_call.body["version"], "v1");
    assert!(api_call.authenticated, "the rollback carries the token");
    let hook_call = rollback_of("/webhook/deploy");
    assert_eq!(hook_call.body["version"], "v1");
    assert_eq!(hook_call.body["event"], "deployment_rollback");
}

#[tokio::test]
async fn approve_racing_reject_or_the_gate_timeout_has_one_winner_and_the_other_gets_409() {
    let dir = tempfile::tempdir().expect("temp dir");
    let list = vec![local("g1", &["true"], 30), local("g2", &["true"], 30)];
    let host = TestHost::start(dir.path(), options(list)).await;
    let manual = |timeout: u64| {
        json!({"strategy": {"type": "canary", "canary": 1, "gate": "manual",
            "gate_timeout_secs": timeout}})
    };
    for round in 0..4 {
        let id = started(&host, manual(600)).await;
        reaches(&host, &id, "awaiting_approval").await;
        let approve = format!("/deployments/{id}/approve");
        let reject = format!("/deployments/{id}/reject");
        let ((approved, a), (rejected, r)) = tokio::join!(
            post(&host, &approve, ADMIN_KEY),
            post(&host, &reject, ADMIN_KEY)
        );
        let mut statuses = [approved, rejected];
        statuses.sort_unstable();
        assert_eq!(statuses, [200, 409], "round {round}: one wins: {a} {r}");
        let record = finished(&host, &id).await;
        let (status, gate) = if approved == 200 {
            ("completed", "approved")
        } else {
            ("cancelled", "rejected")
        };
        assert_eq!(record["status"], status, "round {round}: {record}");
        assert_eq!(record["gate"]["status"], gate, "round {round}: {record}");
    }

    // Approvals sent across the gate's deadline: either one was taken before it (and the
    // rollout completed) or the gate timed out and every approval got a 409; never both.
    let id = started(&host, manual(2)).await;
    let waiting = reaches(&host, &id, "awaiting_approval").await;
    let deadline_at = waiting["gate"]["deadline_at"]
        .as_str()
        .and_then(|text| humantime::parse_rfc3339(text).ok())
        .expect("the gate's deadline");
    // Aimed at the deadline, which side wins is up to timing; what each side sees is not.
    if let Ok(left) = deadline_at.duration_since(std::time::SystemTime::now()) {
        tokio::time::sleep(left.saturating_sub(std::time::Duration::from_millis(30))).await;
    }
    let mut answers = Vec::new();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (status, body) = post(&host, &format!("/deployments/{id}/approve"), ADMIN_KEY).await;
        answers.push(status);
        assert!(matches!(status, 200 | 409), "{body}");
        let now = detail(&host, &id).await;
        if e2e::scenario::is_terminal(now["status"].as_str().unwrap_or_default()) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{now}");
    }
    let record = finished(&host, &id).await;
    let taken = answers.iter().filter(|status| **status == 200).count();
    if taken == 1 {
        assert_eq!(record["gate"]["status"], "approved", "{record}");
        assert_eq!(record["status"], "completed", "{record}");
    } else {
        assert_eq!(taken, 0, "approved at most once: {answers:?}");
        assert_eq!(record["gate"]["status"], "timed_out", "{record}");
        assert_ne!(record["status"], "completed", "{record}");
    }
}
