//! The coordinator's lifecycle in-process: the plugin's handler on `LocalHost` with `local`
//! environments, no binary and no peers. Phases in order, a timeout, cancel, the retry set,
//! `max_parallel` and the log limit. (tokio's paused clock would need its `test-util` feature, which feature
//! unification would also switch on in the workspace's release builds of the host and plugin:
//! the timeout test waits one real second instead.)

use std::time::Duration;

use e2e::scenario::{local, result};
use plugin_api::Role;
use plugin_local_host::Event;
use serde_json::{json, Value};
use tokio::sync::broadcast;

use crate::in_process::{start, InProcess};

async fn plugin(list: Vec<Value>, settings: Value) -> InProcess {
    start(list, settings).await
}

/// What these tests do with the plugin, all as admin.
trait Lifecycle {
    async fn admin(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value);
    async fn trigger(&self, body: Value) -> String;
    async fn detail(&self, id: &str) -> Value;
    async fn finished(&self, events: &mut broadcast::Receiver<Event>, id: &str) -> Value;
}

impl Lifecycle for InProcess {
    async fn admin(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        self.call(method, path, body, Role::Admin).await
    }

    async fn trigger(&self, body: Value) -> String {
        let (status, answer) = self.admin("POST", "/trigger-local", Some(body)).await;
        assert_eq!(status, 202, "{answer}");
        answer["deployment_id"]
            .as_str()
            .expect("a deployment id")
            .to_owned()
    }

    async fn detail(&self, id: &str) -> Value {
        let (status, answer) = self.admin("GET", &format!("/deployments/{id}"), None).await;
        assert_eq!(status, 200, "{answer}");
        answer
    }

    /// Waits for the deployment's phase event that ends it, and returns its record.
    async fn finished(&self, events: &mut broadcast::Receiver<Event>, id: &str) -> Value {
        let bound = tokio::time::timeout(Duration::from_secs(120), async {
            loop {
                let event = events.recv().await.expect("the event stream stays open");
                if event.kind == "deployment.phase"
                    && event.data["deployment_id"] == id
                    && matches!(
                        event.data["status"].as_str(),
                        Some("completed" | "failed" | "cancelled" | "interrupted")
                    )
                {
                    return;
                }
            }
        });
        bound.await.expect("the deployment ended");
        self.detail(id).await
    }
}

#[tokio::test]
async fn phases_are_published_in_order_and_a_success_completes() {
    let plugin = plugin(vec![local("ok", &["true"], 30)], json!({})).await;
    let mut events = plugin.host.events.subscribe();
    let id = plugin.trigger(json!({ "version": "1.0" })).await;
    let mut phases = Vec::new();
    tokio::time::timeout(Duration::from_secs(120), async {
        loop {
            let event = events.recv().await.expect("events");
            if event.kind == "deployment.phase" && event.data["deployment_id"] == id.as_str() {
                let phase = event.data["status"].as_str().unwrap_or("").to_owned();
                let end = phase == "completed" || phase == "failed";
                phases.push(phase);
                if end {
                    return;
                }
            }
        }
    })
    .await
    .expect("the deployment ended");
    // Every phase change was published once, in the state machine's order.
    assert_eq!(phases, e2e::scenario::LOCAL_PHASES);
    let record = plugin.detail(&id).await;
    assert_eq!(record["status"], "completed", "{record}");
    assert_eq!(record["progress"], 100, "{record}");
    assert_eq!(result(&record, "ok")["status"], "succeeded");
}

#[tokio::test]
async fn a_command_past_its_timeout_is_timed_out_and_fails_the_deployment() {
    let plugin = plugin(vec![local("slow", &["sleep", "600"], 1)], json!({})).await;
    let mut events = plugin.host.events.subscribe();
    let id = plugin.trigger(json!({})).await;
    let record = plugin.finished(&mut events, &id).await;
    assert_eq!(record["status"], "failed", "{record}");
    let slow = result(&record, "slow");
    assert_eq!(slow["status"], "timed_out", "{record}");
    assert!(
        slow["error"]
            .as_str()
            .is_some_and(|error| error.contains("1 s")),
        "{slow}"
    );
}

#[tokio::test]
async fn cancel_ends_running_environments_and_the_deployment() {
    let plugin = plugin(vec![local("long", &["sleep", "600"], 900)], json!({})).await;
    let mut events = plugin.host.events.subscribe();
    let id = plugin.trigger(json!({})).await;
    // Cancel once the command runs.
    tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let event = events.recv().await.expect("events");
            if event.kind == "deployment.environment"
                && event.data["deployment_id"] == id.as_str()
                && event.data["environment"]["status"] == "running"
            {
                return;
            }
        }
    })
    .await
    .expect("the environment started running");
    let (status, answer) = plugin
        .admin("POST", &format!("/deployments/{id}/cancel"), None)
        .await;
    // Answered once the run has stopped.
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["status"], "cancelled", "{answer}");
    let record = plugin.finished(&mut events, &id).await;
    assert_eq!(record["status"], "cancelled", "{record}");
    assert_eq!(result(&record, "long")["status"], "cancelled");
    // Cancelling what has ended is refused.
    let (status, _) = plugin
        .admin("POST", &format!("/deployments/{id}/cancel"), None)
        .await;
    assert_eq!(status, 409);
}

#[tokio::test]
async fn retry_runs_only_the_environments_that_did_not_succeed() {
    let plugin = plugin(
        vec![
            local("good", &["true"], 30),
            local("bad", &["false"], 30),
            local("worse", &["sh", "-c", "exit 3"], 30),
        ],
        json!({}),
    )
    .await;
    let mut events = plugin.host.events.subscribe();
    let id = plugin.trigger(json!({ "version": "2.0" })).await;
    let record = plugin.finished(&mut events, &id).await;
    assert_eq!(record["status"], "failed", "{record}");
    assert_eq!(result(&record, "worse")["exit_code"], 3);

    let (status, answer) = plugin
        .admin("POST", &format!("/deployments/{id}/retry"), None)
        .await;
    assert_eq!(status, 202, "{answer}");
    let retry = answer["deployment_id"].as_str().expect("an id").to_owned();
    let record = plugin.finished(&mut events, &retry).await;
    assert_eq!(record["retry_of"], id.as_str(), "{record}");
    assert_eq!(record["version"], "2.0", "the retry keeps the version");
    let mut retried: Vec<&str> = record["environments"]
        .as_array()
        .expect("environments")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    retried.sort_unstable();
    assert_eq!(retried, ["bad", "worse"]);
}

#[tokio::test]
async fn lines_past_max_log_lines_are_counted_not_kept() {
    let plugin = plugin(
        vec![local(
            "chatty",
            &[
                "sh",
                "-c",
                "i=0; while [ $i -lt 100 ]; do echo line $i; i=$((i+1)); done",
            ],
            30,
        )],
        json!({ "max_log_lines": 20 }),
    )
    .await;
    let mut events = plugin.host.events.subscribe();
    let id = plugin.trigger(json!({})).await;
    let record = plugin.finished(&mut events, &id).await;
    assert_eq!(record["status"], "completed", "{record}");
    let (status, logs) = plugin
        .admin("GET", &format!("/deployments/{id}/logs"), None)
        .await;
    assert_eq!(status, 200, "{logs}");
    let lines = logs["lines"].as_array().expect("lines");
    assert!(lines.len() <= 21, "{} lines kept", lines.len());
    assert!(
        lines.iter().any(|line| line["line"]
            .as_str()
            .is_some_and(|text| text.contains("log limit of 20 lines reached"))),
        "{logs}"
    );
    assert!(
        logs["total_lines"]
            .as_u64()
            .is_some_and(|total| total > 100),
        "every line is counted: {logs}"
    );
    assert!(!lines
        .iter()
        .any(|line| line["line"].as_str() == Some("line 99")));
}

#[tokio::test]
async fn no_more_than_max_parallel_environments_run_at_once() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let work = dir.path().display().to_string();
    // Each command marks itself running, notes how many run with it, and holds until the test
    // releases them all: while held, a coordinator that started too many would be seen.
    let hold = format!(
        "touch {work}/running-$0; ls {work} | grep -c running- >> {work}/seen; \
         i=0; while [ ! -e {work}/release ] && [ $i -lt 1200 ]; do sleep 0.05; i=$((i+1)); done; \
         rm {work}/running-$0"
    );
    let ids = ["p1", "p2", "p3", "p4", "p5"];
    let list = ids
        .iter()
        .map(|id| local(id, &["sh", "-c", &hold, id], 120))
        .collect();
    let plugin = plugin(list, json!({ "max_parallel": 2 })).await;
    let mut events = plugin.host.events.subscribe();
    let id = plugin.trigger(json!({})).await;
    let running = || {
        std::fs::read_dir(dir.path())
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .filter(|entry| entry.file_name().to_string_lossy().starts_with("running-"))
                    .count()
            })
            .unwrap_or(0)
    };
    tokio::time::timeout(Duration::from_secs(60), async {
        while running() < 2 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("two environments run");
    std::fs::write(dir.path().join("release"), b"").expect("release them");
    let record = plugin.finished(&mut events, &id).await;
    assert_eq!(record["status"], "completed", "{record}");
    let seen = std::fs::read_to_string(dir.path().join("seen")).expect("every start noted");
    let counts: Vec<usize> = seen
        .lines()
        .filter_map(|line| line.trim().parse().ok())
        .collect();
    assert_eq!(counts.len(), ids.len(), "{seen}");
    assert_eq!(
        counts.iter().max(),
        Some(&2),
        "at most max_parallel at once, and that many: {seen}"
    );
}

#[tokio::test]
async fn a_selector_deploys_the_enabled_environments_with_those_tags() {
    let tagged = |id: &str, tier: &str, enabled: bool| {
        let mut environment = local(id, &["true"], 30);
        environment["tags"] = json!({ "tier": tier, "team": "core" });
        environment["enabled"] = json!(enabled);
        environment
    };
    let plugin = plugin(
        vec![
            tagged("prod-b", "prod", true),
            tagged("prod-a", "prod", true),
            tagged("prod-off", "prod", false),
            tagged("staging", "staging", true),
        ],
        json!({}),
    )
    .await;
    let mut events = plugin.host.events.subscribe();
    let id = plugin
        .trigger(json!({ "selector": { "tier": "prod", "team": "core" } }))
        .await;
    let record = plugin.finished(&mut events, &id).await;
    assert_eq!(record["status"], "completed", "{record}");
    assert_eq!(
        record["environments"],
        json!(["prod-a", "prod-b"]),
        "{record}"
    );

    // Both ways of choosing at once, an empty selector, and a selector nothing matches.
    for (body, status, field) in [
        (
            json!({ "selector": { "tier": "prod" }, "environments": ["staging"] }),
            400,
            Some("selector"),
        ),
        (json!({ "selector": {} }), 400, Some("selector")),
        (json!({ "selector": { "tier": "qa" } }), 422, None),
        (
            json!({ "selector": { "tier": 1 } }),
            400,
            Some("selector.tier"),
        ),
    ] {
        let (answer_status, answer) = plugin
            .admin("POST", "/trigger-local", Some(body.clone()))
            .await;
        assert_eq!(answer_status, status, "{body}: {answer}");
        if let Some(field) = field {
            assert_eq!(answer["field"], field, "{body}: {answer}");
        } else {
            assert_eq!(answer["error"], "no_environments", "{answer}");
        }
    }
}

/// An environment read (its URLs' credentials shown as `***`) and written back as it was shown
/// keeps its real URLs; a URL that was really changed is taken.
#[tokio::test]
async fn writing_back_a_shown_environment_keeps_its_real_urls() {
    let plugin = plugin(Vec::new(), json!({})).await;
    let health = "http://probe:healthpass@127.0.0.1:9/health?token=healthquery";
    let environment = json!({"environment_id": "hook", "environment_type": "linux_local",
        "connection_method": "webhook", "webhook_url": "http://hookuser:hookpass@127.0.0.1:9/hook",
        "health_check_url": health, "timeout": 20});
    let (status, body) = plugin
        .admin("POST", "/environments", Some(environment))
        .await;
    assert_eq!(status, 201, "{body}");
    let (_, shown) = plugin.admin("GET", "/environments/hook", None).await;
    assert!(
        !shown.to_string().contains("healthpass"),
        "shown masked: {shown}"
    );
    let mut written_back = json!({});
    for field in [
        "environment_id",
        "environment_type",
        "connection_method",
        "webhook_url",
        "health_check_url",
        "timeout",
    ] {
        written_back[field] = shown[field].clone();
    }
    let (status, body) = plugin
        .admin("PUT", "/environments/hook", Some(written_back.clone()))
        .await;
    assert_eq!(status, 200, "{body}");
    let records = deployment_mcp_core::persist::records::Records::new(plugin.host.host.clone());
    let stored = stored_environment(&records).await;
    assert!(
        stored.contains("probe:healthpass") && stored.contains("healthquery"),
        "the real health URL is kept: {stored}"
    );
    assert!(stored.contains("hookuser:hookpass"), "{stored}");
    // A new URL is a new URL.
    written_back["health_check_url"] = json!("http://127.0.0.1:9/ready");
    let (status, body) = plugin
        .admin("PUT", "/environments/hook", Some(written_back))
        .await;
    assert_eq!(status, 200, "{body}");
    let stored = stored_environment(&records).await;
    assert!(
        stored.contains("/ready") && !stored.contains("healthpass"),
        "{stored}"
    );
}

/// The environment `hook` as stored.
async fn stored_environment(records: &deployment_mcp_core::persist::records::Records) -> String {
    records
        .get_raw(
            deployment_mcp_core::persist::records::collection::ENVIRONMENTS,
            "hook",
        )
        .await
        .expect("read")
        .unwrap_or_default()
}

/// Waits (bounded) for the event saying `environment` of deployment `id` runs.
async fn running(events: &mut broadcast::Receiver<Event>, id: &str, environment: &str) {
    tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let event = events.recv().await.expect("events");
            if event.kind == "deployment.environment"
                && event.data["deployment_id"] == id
                && event.data["environment"]["environment_id"] == environment
                && event.data["environment"]["status"] == "running"
            {
                return;
            }
        }
    })
    .await
    .expect("the environment started running");
}

/// Deploys `quick` once per version, each to completion; their ids.
async fn deploy_quick(
    plugin: &InProcess,
    events: &mut broadcast::Receiver<Event>,
    versions: &[&str],
) -> Vec<String> {
    let mut ids = Vec::new();
    for version in versions {
        let id = plugin
            .trigger(json!({"environments": ["quick"], "version": version}))
            .await;
        assert_eq!(plugin.finished(events, &id).await["status"], "completed");
        ids.push(id);
    }
    ids
}

#[tokio::test]
async fn retention_prunes_what_is_past_its_keep_and_spares_what_runs() {
    let gate = tempfile::tempdir().expect("temp dir");
    let open = gate.path().join("open");
    let open_text = open.display().to_string();
    let held = local(
        "held",
        &[
            "sh",
            "-c",
            "while [ ! -e \"$0\" ]; do sleep 0.05; done",
            &open_text,
        ],
        600,
    );
    let plugin = plugin(vec![local("quick", &["true"], 30), held], json!({})).await;
    let mut events = plugin.host.events.subscribe();
    let old = deploy_quick(&plugin, &mut events, &["1", "2", "3"]).await;
    let runs = plugin.trigger(json!({"environments": ["held"]})).await;
    running(&mut events, &runs, "held").await;

    let records = deployment_mcp_core::persist::records::Records::new(plugin.host.host.clone());
    let keep_days = |days: u32| {
        deployment_mcp_core::settings::Settings::from_json(&json!({"retention_days": days}))
            .expect("valid settings")
    };
    // As of today nothing is a day old: nothing goes.
    let now = std::time::SystemTime::now();
    let pruned = deployment_mcp_core::persist::retention::prune(&records, &keep_days(1), now)
        .await
        .expect("a retention pass");
    assert_eq!(pruned.deployments, 0);
    // Two days on, every finished deployment is past a day; the running one stays.
    let later = now + Duration::from_secs(2 * 86_400);
    let pruned = deployment_mcp_core::persist::retention::prune(&records, &keep_days(1), later)
        .await
        .expect("a retention pass");
    assert_eq!(pruned.deployments, 3, "{pruned:?}");
    for id in &old {
        let (status, _) = plugin
            .admin("GET", &format!("/deployments/{id}"), None)
            .await;
        assert_eq!(status, 404, "{id} is gone");
        let (status, _) = plugin
            .admin("GET", &format!("/deployments/{id}/logs"), None)
            .await;
        assert_eq!(status, 404, "{id}'s log is gone");
    }
    let (status, history) = plugin.admin("GET", "/history", None).await;
    assert_eq!(status, 200);
    assert_eq!(history["total_count"], 1, "{history}");
    assert_eq!(
        history["history"][0]["deployment_id"],
        runs.as_str(),
        "{history}"
    );

    // Keeping the newest N: the running one counts and is never deleted.
    std::fs::write(&open, b"").expect("open the gate");
    assert_eq!(
        plugin.finished(&mut events, &runs).await["status"],
        "completed"
    );
    let newest = deploy_quick(&plugin, &mut events, &["4", "5"]).await;
    let keep_one = deployment_mcp_core::settings::Settings::from_json(
        &json!({"retention_days": 0, "retention_max_deployments": 1}),
    )
    .expect("valid settings");
    let pruned = deployment_mcp_core::persist::retention::prune(&records, &keep_one, later)
        .await
        .expect("a retention pass");
    assert_eq!(pruned.deployments, 2, "{pruned:?}");
    let (_, history) = plugin.admin("GET", "/history", None).await;
    assert_eq!(history["total_count"], 1, "{history}");
    assert_eq!(
        history["history"][0]["deployment_id"],
        newest[1].as_str(),
        "{history}"
    );
}
