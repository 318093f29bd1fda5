//! Schedules (SPEC §4e) against the real binary: a one-off schedule fires once; a recurring one
//! fires each occurrence once across a host restart (each occurrence recorded once, fired or
//! counted missed, and one deployment per fired occurrence, `triggered_by: schedule:<id>`,
//! audited `via: schedule`); an occurrence a freeze closes is recorded refused with its error;
//! only admins create and delete; `next` lists occurrences in UTC. With several nodes on one
//! PostgreSQL server, killed one after another while a schedule fires every two seconds, no
//! occurrence fires twice and none is missed.

use std::{
    collections::HashSet,
    path::Path,
    time::{Duration, SystemTime},
};

use e2e::{
    postgres::TestPostgres,
    scenario::{is_terminal, local, options},
    wait_until, HostOptions, TestHost, ADMIN_KEY, DEVELOPER_KEY,
};
use reqwest::Method;
use serde_json::{json, Value};

/// Bound on waits for a schedule's occurrences (seconds apart) to be handled.
const FIRE_WAIT: Duration = Duration::from_secs(60);

fn rfc3339(time: SystemTime) -> String {
    humantime::format_rfc3339_seconds(time).to_string()
}

/// `time` as a local time in UTC without an offset (a `dtstart`).
fn local_utc(time: SystemTime) -> String {
    rfc3339(time).trim_end_matches('Z').to_owned()
}

async fn create(host: &TestHost, body: Value) -> Value {
    let (status, created) = host
        .call(
            Method::POST,
            "/api/deployment/schedules",
            Some(ADMIN_KEY),
            Some(body),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    created
}

/// The schedule with its last runs and next occurrences.
async fn schedule(host: &TestHost, id: &str) -> Value {
    let (status, detail) = host
        .get(
            &format!("/api/deployment/schedules/{id}"),
            Some(DEVELOPER_KEY),
        )
        .await;
    assert_eq!(status, 200, "{detail}");
    detail
}

fn runs(detail: &Value) -> Vec<Value> {
    detail["last_runs"].as_array().cloned().unwrap_or_default()
}

/// Waits until `id` has handled `count` occurrences (fired, refused or skipped, with those
/// counted missed), and no more are ahead.
async fn until_handled(host: &TestHost, id: &str, count: u64) -> Vec<Value> {
    let handled = wait_until(FIRE_WAIT, || async {
        let detail = schedule(host, id).await;
        let runs = runs(&detail);
        let seen: u64 = runs
            .iter()
            .map(|run| 1 + run["missed"].as_u64().unwrap_or(0))
            .sum();
        seen >= count && detail["next_runs"] == json!([])
    })
    .await;
    let detail = schedule(host, id).await;
    assert!(handled, "{detail}\n{}", host.logs());
    runs(&detail)
}

/// The history's entries of deployments triggered by schedule `id`.
async fn entries_of(host: &TestHost, id: &str) -> Vec<Value> {
    let (status, history) = host
        .get("/api/deployment/history?limit=200", Some(DEVELOPER_KEY))
        .await;
    assert_eq!(status, 200, "{history}");
    history["history"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|entry| entry["triggered_by"] == format!("schedule:{id}").as_str())
        .collect()
}

/// Deployments in the history triggered by schedule `id`, by deployment id.
async fn deployments_of(host: &TestHost, id: &str) -> Vec<String> {
    entries_of(host, id)
        .await
        .iter()
        .filter_map(|entry| entry["deployment_id"].as_str().map(str::to_owned))
        .collect()
}

/// Every occurrence in `runs` appears once; the deployments they started are exactly
/// `deployments`, each once; returns how many were fired.
fn each_once(runs: &[Value], deployments: &[String]) -> usize {
    let occurrences: HashSet<&str> = runs
        .iter()
        .filter_map(|run| run["occurrence"].as_str())
        .collect();
    assert_eq!(
        occurrences.len(),
        runs.len(),
        "an occurrence twice: {runs:?}"
    );
    let mut started: Vec<String> = runs
        .iter()
        .filter(|run| run["outcome"] == "started")
        .filter_map(|run| run["deployment_id"].as_str().map(str::to_owned))
        .collect();
    started.sort();
    let mut deployed = deployments.to_vec();
    deployed.sort();
    assert_eq!(started, deployed, "runs {runs:?}");
    started.len()
}

#[tokio::test]
async fn one_off_and_recurring_schedules_fire_each_occurrence_once_across_a_restart() {
    let dir = tempfile::tempdir().expect("temp dir");
    let host = TestHost::start(dir.path(), options(vec![local("app", &["true"], 30)])).await;

    // Only admins create; a bad schedule names its field and changes nothing.
    let once = json!({"id": "once", "at": rfc3339(SystemTime::now() + Duration::from_secs(2)),
        "trigger": {"environments": ["app"], "version": "v-once"}});
    let (status, _) = host
        .call(
            Method::POST,
            "/api/deployment/schedules",
            Some(DEVELOPER_KEY),
            Some(once.clone()),
        )
        .await;
    assert_eq!(status, 403);
    for (body, field) in [
        (json!({"id": "bad", "at": "2020-01-01T00:00:00Z"}), "at"),
        (
            json!({"id": "bad", "rrule": "FREQ=DAILY", "dtstart": "2027-01-01T00:00:00", "time_zone": "Nowhere/Land"}),
            "time_zone",
        ),
        (
            json!({"id": "bad", "at": "2099-01-01T00:00:00Z", "trigger": {"override": {"reason": "always"}}}),
            "trigger.override",
        ),
        (
            json!({"id": "bad", "at": "2099-01-01T00:00:00Z", "cron": "* * * * *"}),
            "cron",
        ),
    ] {
        let (status, answer) = host
            .call(
                Method::POST,
                "/api/deployment/schedules",
                Some(ADMIN_KEY),
                Some(body),
            )
            .await;
        assert_eq!(
            (status, answer["field"].as_str()),
            (400, Some(field)),
            "{answer}"
        );
    }
    let created = create(&host, once).await;
    assert_eq!(created["created_by"], "api:ops");
    assert_eq!(created["enabled"], true);
    let runs = until_handled(&host, "once", 1).await;
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!(runs[0]["outcome"], "started", "{runs:?}");
    assert_eq!(each_once(&runs, &deployments_of(&host, "once").await), 1);

    // Every three seconds, six times, from two seconds on; the host restarts in between.
    let start = SystemTime::now() + Duration::from_secs(2);
    create(
        &host,
        json!({"id": "every3", "rrule": "FREQ=SECONDLY;INTERVAL=3;COUNT=6",
            "dtstart": local_utc(start), "catch_up": "once",
            "trigger": {"environments": ["app"]}}),
    )
    .await;
    let (status, next) = host
        .get(
            "/api/deployment/schedules/every3/next?count=100",
            Some(DEVELOPER_KEY),
        )
        .await;
    assert_eq!(status, 200, "{next}");
    assert_eq!(next["next"].as_array().map(Vec::len), Some(6), "{next}");
    let fired_two = wait_until(FIRE_WAIT, || async { runs_of(&host, "every3").await >= 2 }).await;
    assert!(fired_two, "{}", host.logs());
    host.stop();
    let host = TestHost::start(dir.path(), options(vec![local("app", &["true"], 30)])).await;
    let runs = until_handled(&host, "every3", 6).await;
    let fired = each_once(&runs, &deployments_of(&host, "every3").await);
    assert!(fired >= 3, "{runs:?}");
    // The one-off did not fire again after the restart.
    assert_eq!(deployments_of(&host, "once").await.len(), 1);

    // Each fired occurrence is one audit entry of the schedule's door.
    let (status, audit) = host
        .get(
            "/api/audit?via=schedule&action=deployment.trigger",
            Some(ADMIN_KEY),
        )
        .await;
    assert_eq!(status, 200, "{audit}");
    assert_eq!(
        audit["entries"].as_array().map(Vec::len),
        Some(fired + 1),
        "{audit}"
    );

    // Deleting removes it (and its runs); it is gone for good.
    let (status, _) = host
        .call(
            Method::DELETE,
            "/api/deployment/schedules/every3",
            Some(ADMIN_KEY),
            None,
        )
        .await;
    assert_eq!(status, 200);
    let (status, _) = host
        .get("/api/deployment/schedules/every3", Some(DEVELOPER_KEY))
        .await;
    assert_eq!(status, 404);
}

async fn runs_of(host: &TestHost, id: &str) -> usize {
    runs(&schedule(host, id).await).len()
}

#[tokio::test]
async fn an_occurrence_a_freeze_closes_is_recorded_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let host = TestHost::start(dir.path(), options(vec![local("app", &["true"], 30)])).await;
    let now = SystemTime::now();
    let (status, _) = host
        .call(
            Method::POST,
            "/api/deployment/windows",
            Some(ADMIN_KEY),
            Some(json!({"id": "freeze", "kind": "deny",
                "start": rfc3339(now - Duration::from_secs(60)),
                "end": rfc3339(now + Duration::from_secs(3600))})),
        )
        .await;
    assert_eq!(status, 201);
    create(
        &host,
        json!({"id": "frozen", "at": rfc3339(now + Duration::from_secs(2)),
            "trigger": {"environments": ["app"]}}),
    )
    .await;
    let runs = until_handled(&host, "frozen", 1).await;
    assert_eq!(runs[0]["outcome"], "refused", "{runs:?}");
    assert_eq!(runs[0]["error"], "deployment_window_closed", "{runs:?}");
    assert!(deployments_of(&host, "frozen").await.is_empty());
    let (_, audit) = host
        .get("/api/audit?via=schedule&outcome=failed", Some(ADMIN_KEY))
        .await;
    let entries = audit["entries"].as_array().cloned().unwrap_or_default();
    assert_eq!(entries.len(), 1, "{audit}");
    assert_eq!(entries[0]["resource"], "schedule:frozen", "{audit}");
    assert_eq!(
        entries[0]["outcome"]["error"], "deployment_window_closed",
        "{audit}"
    );
}

fn node_options(server: &TestPostgres, node: &str) -> HostOptions {
    server.node_options(node, Some(1), options(vec![local("app", &["true"], 30)]))
}

async fn node(root: &Path, server: &TestPostgres, name: &str) -> TestHost {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).expect("node dir");
    TestHost::start(&dir, node_options(server, name)).await
}

#[tokio::test]
async fn with_nodes_killed_no_occurrence_fires_twice_and_none_is_missed() {
    let server = TestPostgres::start("schedules");
    let root = tempfile::tempdir().expect("temp dir");
    let keeper = node(root.path(), &server, "keeper").await;
    let count = 10;
    let start = SystemTime::now() + Duration::from_secs(3);
    create(
        &keeper,
        json!({"id": "every2", "rrule": format!("FREQ=SECONDLY;INTERVAL=2;COUNT={count}"),
            "dtstart": local_utc(start), "trigger": {"environments": ["app"]}}),
    )
    .await;
    // Nodes come and go (killed with SIGKILL) while it fires; the keeper stays. Each is killed
    // between two occurrences, once the deployments so far have ended (a run cut off in the
    // middle is taken over, which is the cluster's tests' subject, and would hold `app` busy
    // for the next occurrence).
    for round in 0..3 {
        let extra = node(root.path(), &server, &format!("extra{round}")).await;
        let before = runs_of(&keeper, "every2").await;
        let went_on = wait_until(FIRE_WAIT, || async {
            runs_of(&keeper, "every2").await >= before + 2
                && entries_of(&keeper, "every2")
                    .await
                    .iter()
                    .all(|entry| is_terminal(entry["status"].as_str().unwrap_or("")))
        })
        .await;
        assert!(went_on, "{}", extra.logs());
        extra.kill();
    }
    let runs = until_handled(&keeper, "every2", count).await;
    assert_eq!(runs.len() as u64, count, "every occurrence once: {runs:?}");
    assert!(
        runs.iter()
            .all(|run| run["outcome"] == "started" && run["missed"].is_null()),
        "{runs:?}"
    );
    assert_eq!(
        each_once(&runs, &deployments_of(&keeper, "every2").await),
        count as usize
    );
}
