//! The audit log (SPEC §4d) against the real binary: every changing operation of the OpenAPI
//! document, called as each role, leaves exactly one entry naming the caller, the action and
//! the outcome, refusals included; a host killed between a change and its answer never leaves
//! the change without its entry (a failpoint freezes the store there); an entry edited or
//! deleted in the database makes `audit verify` fail naming it, on SQLite and on PostgreSQL with
//! two nodes sharing one chain; the filters, the cursor and the NDJSON export.

use std::{collections::BTreeMap, path::Path, process::Output, time::Duration};

use e2e::{
    host_binary, local_command,
    postgres::TestPostgres,
    repo_root,
    scenario::{local, options},
    HostOptions, TestHost, ADMIN_KEY, DEVELOPER_KEY, USER_KEY,
};
use reqwest::Method;
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(30);

/// The action each changing operation's entry names, by `operationId`. A changing operation of
/// the document missing here fails the walk: a new one must say what it records.
fn action_of(operation_id: &str) -> Option<&'static str> {
    Some(match operation_id {
        "reloadPlugin" => "plugin.reload",
        "drainNode" => "cluster.drain",
        "triggerDeployment" | "triggerDeploymentOneClick" => "deployment.trigger",
        "cancelDeployment" => "deployment.cancel",
        "retryDeployment" => "deployment.retry",
        "approveDeployment" => "deployment.approve",
        "rejectDeployment" => "deployment.reject",
        "rollbackDeployment" => "deployment.rollback",
        "createEnvironment" => "environment.create",
        "replaceEnvironment" => "environment.update",
        "deleteEnvironment" => "environment.delete",
        "checkEnvironmentHealth" => "environment.health_check",
        "createWindow" => "window.create",
        "deleteWindow" => "window.delete",
        "createSchedule" => "schedule.create",
        "deleteSchedule" => "schedule.delete",
        "createSubscription" => "subscription.create",
        "deleteSubscription" => "subscription.delete",
        "redeliverDelivery" => "subscription.redeliver",
        _ => return None,
    })
}

/// A caller of the walk: its key, the actor its entries name (key name, role), its rank.
type Caller = (
    Option<&'static str>,
    Option<(&'static str, &'static str)>,
    u8,
);

/// The callers of the walk: no key, then each role's key, lowest first.
const CALLERS: [Caller; 4] = [
    (None, None, 0),
    (Some(USER_KEY), Some(("viewer", "user")), 1),
    (Some(DEVELOPER_KEY), Some(("dev", "developer")), 2),
    (Some(ADMIN_KEY), Some(("ops", "admin")), 3),
];

fn rank(role: &str) -> u8 {
    match role {
        "user" => 1,
        "developer" => 2,
        _ => 3,
    }
}

/// Calls `path` with `key`, a request id and a body; the answer's status and JSON.
async fn call(
    host: &TestHost,
    method: Method,
    path: &str,
    key: Option<&str>,
    request_id: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = host
        .client()
        .request(method, format!("{}{path}", host.url))
        .header("X-Request-Id", request_id);
    if let Some(key) = key {
        request = request.header("X-API-Key", key);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("the host answers");
    let status = response.status().as_u16();
    let body = response.json::<Value>().await.unwrap_or(Value::Null);
    (status, body)
}

/// The entries of one request (as admin).
async fn entries_of(host: &TestHost, request_id: &str) -> Vec<Value> {
    let (status, page) = host
        .get(
            &format!("/api/audit?request_id={request_id}"),
            Some(ADMIN_KEY),
        )
        .await;
    assert_eq!(status, 200, "{page}");
    page["entries"].as_array().cloned().unwrap_or_default()
}

/// Waits (bounded) until `request_id` has `count` entries: refusals are written by a queue.
async fn until_entries(host: &TestHost, request_id: &str, count: usize) -> Vec<Value> {
    e2e::wait_until(WAIT, || async {
        entries_of(host, request_id).await.len() >= count
    })
    .await;
    entries_of(host, request_id).await
}

/// Runs `powerautomation audit <args>` on `config`.
fn audit_command(config: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = local_command(host_binary());
    command
        .args(["--config", &config.display().to_string(), "audit"])
        .args(args)
        .current_dir(repo_root())
        .env_remove("RUST_LOG");
    for (key, value) in env {
        command.env(key, value);
    }
    command.output().expect("run powerautomation audit")
}

fn verify(config: &Path, env: &[(&str, &str)]) -> (i32, String) {
    let output = audit_command(config, &["verify"], env);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.code().unwrap_or(-1), text)
}

/// A walk step: the operation, the path called and its body.
struct Step {
    operation_id: String,
    method: Method,
    path: String,
    body: Option<Value>,
}

/// Every changing operation of the document, with the path and body each is called with, in an
/// order where each can do its work: environments are created before they are replaced,
/// checked and deleted; the node drains last.
async fn steps(host: &TestHost, finished: &str, node: &str) -> Vec<Step> {
    let (status, document) = host.get("/api/openapi.json", None).await;
    assert_eq!(status, 200);
    let environment = json!({"environment_id": "walk_env", "environment_type": "linux_local",
        "connection_method": "local", "command": ["true"], "timeout": 30});
    let mut steps = Vec::new();
    for (path, item) in document["paths"].as_object().expect("paths") {
        for (method, operation) in item.as_object().expect("an item") {
            let method = match method.as_str() {
                "post" => Method::POST,
                "put" => Method::PUT,
                "delete" => Method::DELETE,
                "patch" => Method::PATCH,
                _ => continue,
            };
            let operation_id = operation["operationId"]
                .as_str()
                .expect("operationId")
                .to_owned();
            assert!(
                action_of(&operation_id).is_some(),
                "{operation_id} ({method} {path}) changes something: say which action it records"
            );
            let called = path
                .replace("{name}", "deployment_mcp")
                .replace("{node_id}", node)
                .replace("/deployments/{id}", &format!("/deployments/{finished}"))
                .replace("/environments/{id}", "/environments/walk_env")
                .replace("/windows/{id}", "/windows/walk_window")
                .replace("/schedules/{id}", "/schedules/walk_schedule")
                .replace("/subscriptions/{id}", "/subscriptions/walk_subscription")
                .replace("{delivery}", "walk_delivery");
            let body = match operation_id.as_str() {
                "triggerDeployment" | "triggerDeploymentOneClick" => {
                    Some(json!({"environments": ["local_demo"]}))
                }
                "createEnvironment" | "replaceEnvironment" => Some(environment.clone()),
                "createWindow" => Some(json!({"id": "walk_window", "kind": "deny",
                    "start": "2099-01-01T00:00:00Z", "end": "2099-01-02T00:00:00Z",
                    "environments": ["walk_env"], "reason": "the walk"})),
                "createSchedule" => Some(json!({"id": "walk_schedule",
                    "at": "2099-01-01T00:00:00Z", "trigger": {"environments": ["walk_env"]},
                    "reason": "the walk"})),
                "createSubscription" => Some(json!({"id": "walk_subscription",
                    "events": ["deployment.failed"],
                    "channel": {"type": "webhook", "url": "http://127.0.0.1:9/walk"}})),
                _ => None,
            };
            steps.push(Step {
                operation_id,
                method,
                path: called,
                body,
            });
        }
    }
    let order = |step: &Step| match step.operation_id.as_str() {
        "createEnvironment" | "createWindow" | "createSchedule" => 0,
        "deleteEnvironment" | "deleteWindow" | "deleteSchedule" => 2,
        "drainNode" => 3,
        _ => 1,
    };
    steps.sort_by_key(order);
    steps
}

#[tokio::test]
async fn every_changing_operation_leaves_one_entry_per_call_for_every_role() {
    let dir = tempfile::tempdir().expect("temp dir");
    let host = TestHost::start(
        dir.path(),
        options(vec![local("local_demo", &["true"], 30)]),
    )
    .await;
    // A finished deployment for the routes of one deployment.
    let (status, started) = call(
        &host,
        Method::POST,
        "/api/deployment/trigger-local",
        Some(ADMIN_KEY),
        "setup-1",
        Some(json!({"environments": ["local_demo"]})),
    )
    .await;
    assert_eq!(status, 202, "{started}");
    let finished = started["deployment_id"].as_str().expect("an id").to_owned();
    e2e::scenario::status_within(&host, &finished, WAIT, |status| status == "completed").await;
    let (_, cluster) = host.get("/api/cluster", Some(ADMIN_KEY)).await;
    let node = cluster["nodes"][0]["node_id"]
        .as_str()
        .expect("a node")
        .to_owned();
    let roles: BTreeMap<(String, String), Option<String>> = deployment_mcp_core::api::route_roles()
        .into_iter()
        .map(|(method, path, role)| {
            (
                (method.to_owned(), format!("/api/deployment{path}")),
                role.map(|role| role.as_str().to_owned()),
            )
        })
        .collect();
    let (_, document) = host.get("/api/openapi.json", None).await;
    let steps = steps(&host, &finished, &node).await;
    // The host's reload and drain, and the plugin's eleven.
    assert!(
        steps.len() >= 13,
        "the walk found only {} operations",
        steps.len()
    );

    let mut calls = Vec::new();
    for (index, step) in steps.iter().enumerate() {
        let template = document["paths"]
            .as_object()
            .and_then(|paths| {
                paths.iter().find(|(_, item)| {
                    item[step.method.as_str().to_lowercase()]["operationId"] == step.operation_id
                })
            })
            .map(|(path, _)| path.clone())
            .expect("the step's template");
        let needs = match roles.get(&(step.method.to_string(), template.clone())) {
            Some(Some(role)) => rank(role),
            Some(None) => 0,
            // The host's own changing routes are the admin's.
            None => 3,
        };
        for (key, actor, caller_rank) in CALLERS {
            let request_id = format!("walk-{index}-{caller_rank}");
            let (status, answer) = call(
                &host,
                step.method.clone(),
                &step.path,
                key,
                &request_id,
                step.body.clone(),
            )
            .await;
            let refused = caller_rank < needs;
            if refused {
                let expected = if key.is_none() { 401 } else { 403 };
                assert_eq!(
                    status, expected,
                    "{} as {actor:?}: {answer}",
                    step.operation_id
                );
            } else {
                assert!(
                    !matches!(status, 401 | 403),
                    "{} as {actor:?} was refused: {answer}",
                    step.operation_id
                );
            }
            calls.push((step.operation_id.clone(), request_id, actor, status));
        }
    }
    for (operation_id, request_id, actor, status) in &calls {
        let entries = until_entries(&host, request_id, 1).await;
        assert_eq!(
            entries.len(),
            1,
            "{operation_id} {request_id}: {entries:#?}"
        );
        let entry = &entries[0];
        let expected_actor = match actor {
            Some((name, role)) => json!({"key_name": name, "role": role}),
            None => Value::Null,
        };
        assert_eq!(entry["actor"], expected_actor, "{operation_id}: {entry}");
        assert_eq!(
            entry["action"],
            action_of(operation_id).expect("mapped"),
            "{entry}"
        );
        let outcome = match status {
            200..=399 => "ok",
            401 | 403 => "denied",
            _ => "failed",
        };
        assert_eq!(
            entry["outcome"]["status"], outcome,
            "{operation_id} answered {status}: {entry}"
        );
        if let Some(recorded) = entry["outcome"]["http_status"].as_u64() {
            assert_eq!(recorded, u64::from(*status), "{entry}");
        }
        assert_eq!(entry["request_id"], request_id.as_str(), "{entry}");
        assert_eq!(entry["via"], "rest", "{entry}");
    }
    // What the entries say of the changes themselves.
    let (_, created) = host
        .get(
            "/api/audit?action=environment.update&outcome=ok",
            Some(ADMIN_KEY),
        )
        .await;
    let update = &created["entries"][0];
    assert_eq!(update["resource"], "environment:walk_env", "{update}");
    assert_eq!(
        update["changes"]["before"]["command"],
        json!(["true"]),
        "{update}"
    );
    let (_, triggers) = host
        .get(
            "/api/audit?action=deployment.trigger&outcome=ok&limit=1",
            Some(ADMIN_KEY),
        )
        .await;
    let trigger = &triggers["entries"][0];
    assert!(
        trigger["resource"]
            .as_str()
            .is_some_and(|r| r.starts_with("deployment:")),
        "{trigger}"
    );
    assert_eq!(trigger["environments"], json!(["local_demo"]), "{trigger}");
    // A key that matches nothing is refused, and recorded without an actor.
    let (status, _) = call(
        &host,
        Method::POST,
        "/api/deployment/trigger-local",
        Some("not-a-key"),
        "bad-key",
        None,
    )
    .await;
    assert_eq!(status, 401);
    let entries = until_entries(&host, "bad-key", 1).await;
    assert_eq!(entries.len(), 1, "{entries:#?}");
    assert_eq!(entries[0]["actor"], Value::Null);
    assert_eq!(entries[0]["outcome"]["status"], "denied");
    host.stop();
    let config = dir.path().join("powerautomation.toml");
    let (code, text) = verify(&config, &[]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("intact"), "{text}");
}

/// Starts a host in `dir` with `failpoint` armed, triggers, waits until the store froze at the
/// failpoint, and kills the host there; then starts it again without the failpoint.
async fn killed_at(dir: &Path, failpoint: &str) -> TestHost {
    let hit = dir.join("failpoint-hit");
    let mut options = options(vec![local("local_demo", &["true"], 30)]);
    options.env = vec![(
        "POWERAUTOMATION_FAILPOINT".to_owned(),
        format!("{failpoint}:{}", hit.display()),
    )];
    let host = TestHost::start(dir, options).await;
    let client = host.client().clone();
    let url = format!("{}/api/deployment/trigger-local", host.url);
    let pending = tokio::spawn(async move {
        client
            .post(url)
            .header("X-API-Key", ADMIN_KEY)
            .json(&json!({"environments": ["local_demo"]}))
            .send()
            .await
            .map(|response| response.status().as_u16())
    });
    let reached = e2e::wait_until(WAIT, || async { hit.exists() }).await;
    assert!(
        reached,
        "the failpoint {failpoint} was not reached:\n{}",
        host.logs()
    );
    host.kill();
    // The caller never got an answer: the host died between the change and the answer.
    assert!(
        !matches!(pending.await, Ok(Ok(202))),
        "the trigger was answered before the kill"
    );
    TestHost::start(dir, options_again()).await
}

fn options_again() -> HostOptions {
    options(vec![local("local_demo", &["true"], 30)])
}

#[tokio::test]
async fn a_kill_between_the_change_and_the_answer_never_leaves_a_change_without_its_entry() {
    // Frozen after the commit: the deployment and its entry are both there.
    let dir = tempfile::tempdir().expect("temp dir");
    let host = killed_at(dir.path(), "audit-after-commit").await;
    let (status, history) = host.get("/api/deployment/history", Some(ADMIN_KEY)).await;
    assert_eq!(status, 200, "{history}");
    let deployments = history["history"].as_array().cloned().unwrap_or_default();
    assert_eq!(deployments.len(), 1, "{history}");
    let id = deployments[0]["deployment_id"].as_str().expect("an id");
    let (_, audit) = host
        .get("/api/audit?action=deployment.trigger", Some(ADMIN_KEY))
        .await;
    let entries = audit["entries"].as_array().cloned().unwrap_or_default();
    assert_eq!(entries.len(), 1, "{audit}");
    assert_eq!(entries[0]["resource"], format!("deployment:{id}"));
    assert_eq!(entries[0]["outcome"]["status"], "ok");
    host.stop();
    let (code, text) = verify(&dir.path().join("powerautomation.toml"), &[]);
    assert_eq!(code, 0, "{text}");

    // Frozen before the commit: neither the deployment nor its entry.
    let dir = tempfile::tempdir().expect("temp dir");
    let host = killed_at(dir.path(), "audit-before-commit").await;
    let (_, history) = host.get("/api/deployment/history", Some(ADMIN_KEY)).await;
    assert_eq!(history["total_count"], 0, "{history}");
    let (_, audit) = host
        .get("/api/audit?action=deployment.trigger", Some(ADMIN_KEY))
        .await;
    assert_eq!(audit["entries"], json!([]), "{audit}");
    host.stop();
    let (code, text) = verify(&dir.path().join("powerautomation.toml"), &[]);
    assert_eq!(code, 0, "{text}");
}

/// Five changes through the API, each one entry.
async fn five_changes(host: &TestHost) {
    for n in 0..5 {
        let environment = local(&format!("tamper_{n}"), &["true"], 30);
        let (status, answer) = host
            .call(
                Method::POST,
                "/api/deployment/environments",
                Some(ADMIN_KEY),
                Some(environment),
            )
            .await;
        assert_eq!(status, 201, "{answer}");
    }
}

fn broken_at(text: &str, seq: u64) -> bool {
    text.contains(&format!("broken at entry {seq}:"))
}

#[tokio::test]
async fn an_edited_or_deleted_entry_fails_verify_naming_it_on_sqlite() {
    let dir = tempfile::tempdir().expect("temp dir");
    let host = TestHost::start(dir.path(), options_again()).await;
    five_changes(&host).await;
    host.stop();
    let config = dir.path().join("powerautomation.toml");
    let (code, text) = verify(&config, &[]);
    assert_eq!(code, 0, "{text}");
    let database = dir.path().join("data/powerautomation.db");
    // Each open of the store (each `audit verify`) puts the guards back: a tamperer removes
    // them first, every time.
    let tamper = |statement: &str| {
        let connection = rusqlite::Connection::open(&database).expect("open the store's file");
        connection
            .execute_batch(
                "DROP TRIGGER IF EXISTS audit_append_only;
                 DROP TRIGGER IF EXISTS audit_prune_behind_checkpoint;",
            )
            .expect("drop the guards");
        connection
            .execute_batch(statement)
            .map_err(|error| error.to_string())
    };
    let sql = |statement: &str| {
        let connection = rusqlite::Connection::open(&database).expect("open the store's file");
        match connection.execute_batch(statement) {
            Ok(()) => (true, String::new()),
            Err(error) => (false, error.to_string()),
        }
    };
    // The store refuses to change or delete an entry.
    let (updated, error) = sql("UPDATE audit SET actor = 'someone' WHERE seq = 2");
    assert!(!updated && error.contains("append-only"), "{error}");
    let (deleted, error) = sql("DELETE FROM audit WHERE seq = 2");
    assert!(!deleted && error.contains("append-only"), "{error}");
    // Someone who removes the guards first is caught by verify.
    tamper("UPDATE audit SET entry = replace(entry, 'tamper_2', 'tamper_9') WHERE seq = 3")
        .expect("edit an entry");
    let (code, text) = verify(&config, &[]);
    assert_eq!(code, 1, "{text}");
    assert!(broken_at(&text, 3), "{text}");
    // Put back, then delete one.
    tamper("UPDATE audit SET entry = replace(entry, 'tamper_9', 'tamper_2') WHERE seq = 3")
        .expect("put it back");
    assert_eq!(verify(&config, &[]).0, 0);
    tamper("DELETE FROM audit WHERE seq = 4").expect("delete an entry");
    let (code, text) = verify(&config, &[]);
    assert_eq!(code, 1, "{text}");
    assert!(broken_at(&text, 4) && text.contains("missing"), "{text}");
}

#[tokio::test]
async fn two_nodes_share_one_chain_and_verify_names_a_tampered_entry_on_postgres() {
    let server = TestPostgres::start("audit-chain");
    let first_dir = tempfile::tempdir().expect("temp dir");
    let second_dir = tempfile::tempdir().expect("temp dir");
    let first = TestHost::start(
        first_dir.path(),
        server.node_options("audit-a", None, options_again()),
    )
    .await;
    let second = TestHost::start(
        second_dir.path(),
        server.node_options("audit-b", None, options_again()),
    )
    .await;
    // Changes on both nodes at once, and refusals.
    let mut changes = Vec::new();
    for n in 0..10 {
        let host = if n % 2 == 0 { &first } else { &second };
        let environment = local(&format!("pg_{n}"), &["true"], 30);
        changes.push(host.call(
            Method::POST,
            "/api/deployment/environments",
            Some(ADMIN_KEY),
            Some(environment),
        ));
    }
    for (status, answer) in futures_util::future::join_all(changes).await {
        assert_eq!(status, 201, "{answer}\n{}\n{}", first.logs(), second.logs());
    }
    let (status, _) = second
        .call(
            Method::POST,
            "/api/deployment/environments",
            Some(USER_KEY),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, 403);
    // Either node shows every node's entries, in one order.
    let seen = e2e::wait_until(WAIT, || async {
        let (_, page) = first.get("/api/audit?limit=100", Some(ADMIN_KEY)).await;
        page["entries"]
            .as_array()
            .is_some_and(|entries| entries.len() >= 11)
    })
    .await;
    assert!(seen, "the entries of both nodes did not show on one");
    let (_, page) = first.get("/api/audit?limit=100", Some(ADMIN_KEY)).await;
    let seqs: Vec<u64> = page["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|entry| entry["seq"].as_u64().expect("a seq"))
        .collect();
    let expected: Vec<u64> = (1..=seqs.len() as u64).rev().collect();
    assert_eq!(seqs, expected, "one chain, no gaps");
    let config = first_dir.path().join("powerautomation.toml");
    let env = [("PA_STORAGE__URL", server.url.as_str())];
    let (code, text) = verify(&config, &env);
    assert_eq!(code, 0, "{text}");
    // The database refuses to change an entry.
    let refused = server.try_query("UPDATE pa_audit SET actor = 'someone' WHERE seq = 3");
    assert!(
        refused
            .as_ref()
            .is_err_and(|error| error.contains("append-only")),
        "{refused:?}"
    );
    let refused = server.try_query("DELETE FROM pa_audit WHERE seq = 3");
    assert!(refused.is_err(), "{refused:?}");
    // Each open of the store (each `audit verify`) puts the guards back: a tamperer turns them
    // off first, every time.
    let tamper = |statement: &str| {
        server.query(&format!(
            "ALTER TABLE pa_audit DISABLE TRIGGER USER; {statement}"
        ));
    };
    tamper("UPDATE pa_audit SET entry = replace(entry, '\"ops\"', '\"eve\"') WHERE seq = 5");
    let (code, text) = verify(&config, &env);
    assert_eq!(code, 1, "{text}");
    assert!(broken_at(&text, 5), "{text}");
    tamper("UPDATE pa_audit SET entry = replace(entry, '\"eve\"', '\"ops\"') WHERE seq = 5");
    tamper("DELETE FROM pa_audit WHERE seq = 7");
    let (code, text) = verify(&config, &env);
    assert_eq!(code, 1, "{text}");
    assert!(broken_at(&text, 7) && text.contains("missing"), "{text}");
    first.stop();
    second.stop();
}

#[tokio::test]
async fn filters_cursor_and_ndjson_export() {
    let dir = tempfile::tempdir().expect("temp dir");
    let host = TestHost::start(dir.path(), options_again()).await;
    five_changes(&host).await;
    // From the dashboard's door, and refused as a developer.
    let response = host
        .client()
        .post(format!("{}/api/deployment/environments", host.url))
        .header("X-API-Key", ADMIN_KEY)
        .header("X-PowerAutomation-Via", "dashboard")
        .json(&local("from_dashboard", &["true"], 30))
        .send()
        .await
        .expect("answer");
    assert_eq!(response.status().as_u16(), 201);
    let (status, _) = host
        .call(
            Method::DELETE,
            "/api/deployment/environments/tamper_0",
            Some(DEVELOPER_KEY),
            None,
        )
        .await;
    assert_eq!(status, 403);
    e2e::wait_until(WAIT, || async {
        let (_, page) = host.get("/api/audit?outcome=denied", Some(ADMIN_KEY)).await;
        page["entries"]
            .as_array()
            .is_some_and(|entries| !entries.is_empty())
    })
    .await;
    let count = |query: &'static str| {
        let host = &host;
        async move {
            let (status, page) = host
                .get(&format!("/api/audit?{query}"), Some(ADMIN_KEY))
                .await;
            assert_eq!(status, 200, "{query}: {page}");
            page["entries"].as_array().map_or(0, Vec::len)
        }
    };
    assert_eq!(count("action=environment.create").await, 6);
    assert_eq!(count("via=dashboard").await, 1);
    assert_eq!(count("environment=tamper_3").await, 1);
    assert_eq!(
        count("resource=environment:tamper_0&outcome=denied").await,
        1
    );
    assert_eq!(count("actor=dev").await, 1);
    assert_eq!(count("actor=ops&action=environment.create").await, 6);
    assert_eq!(
        count("since=2000-01-01T00:00:00Z&until=2999-01-01T00:00:00%2B02:00").await,
        7
    );
    assert_eq!(count("until=2000-01-01T00:00:00Z").await, 0);
    // Pages of two, newest first, to the end.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let query = match &cursor {
            Some(cursor) => format!("/api/audit?limit=2&cursor={cursor}"),
            None => "/api/audit?limit=2".to_owned(),
        };
        let (_, page) = host.get(&query, Some(ADMIN_KEY)).await;
        for entry in page["entries"].as_array().expect("entries") {
            seen.push(entry["seq"].as_u64().expect("seq"));
        }
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    let expected: Vec<u64> = (1..=seen.len() as u64).rev().collect();
    assert_eq!(seen, expected);
    // Every match as NDJSON.
    let response = host
        .client()
        .get(format!("{}/api/audit?action=environment.create", host.url))
        .header("X-API-Key", ADMIN_KEY)
        .header("Accept", "application/x-ndjson")
        .send()
        .await
        .expect("answer");
    assert_eq!(
        response.headers()["content-type"]
            .to_str()
            .unwrap_or_default(),
        "application/x-ndjson"
    );
    let text = response.text().await.expect("a body");
    let lines: Vec<Value> = text
        .lines()
        .map(|line| serde_json::from_str(line).expect("one entry per line"))
        .collect();
    assert_eq!(lines.len(), 6, "{text}");
    assert!(lines
        .iter()
        .all(|entry| entry["hash"].as_str().is_some_and(|h| h.len() == 64)));
    // Bad filters name themselves; the log is the admin's.
    let (status, answer) = host.get("/api/audit?outcome=maybe", Some(ADMIN_KEY)).await;
    assert_eq!(status, 400);
    assert!(
        answer["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("outcome")),
        "{answer}"
    );
    let (status, answer) = host.get("/api/audit?colour=red", Some(ADMIN_KEY)).await;
    assert_eq!(status, 400);
    assert!(
        answer["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("colour")),
        "{answer}"
    );
    let (status, _) = host.get("/api/audit", Some(DEVELOPER_KEY)).await;
    assert_eq!(status, 403);
    // The export: every entry, oldest first, the same lines the API shows.
    host.stop();
    let output = audit_command(&dir.path().join("powerautomation.toml"), &["export"], &[]);
    assert!(output.status.success());
    let exported: Vec<Value> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).expect("one entry per line"))
        .collect();
    let seqs: Vec<u64> = exported
        .iter()
        .map(|e| e["seq"].as_u64().expect("seq"))
        .collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
    assert!(seqs.len() >= 8, "{seqs:?}");
}
