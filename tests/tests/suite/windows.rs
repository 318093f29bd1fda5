//! Deployment windows (SPEC §4e) against the real binary: a freeze refuses a trigger with 423
//! naming the window and when it opens; only an admin's override with a reason passes, and it is
//! kept on the deployment and in its audit entry; `explain` says the same; a deleted freeze
//! lets the next trigger through; a bad window is refused naming its field. Four eyes: with
//! `approvals.distinct_approver`, the admin who triggered cannot approve at the gate. The
//! calendar shows when windows close each environment and which schedules fire at it.

use std::time::{Duration, SystemTime};

use e2e::{
    scenario::{finished, local, options, started, status_within, trigger, RUN_TIMEOUT},
    TestHost, ADMIN_KEY, DEVELOPER_KEY, SECOND_ADMIN_KEY,
};
use reqwest::Method;
use serde_json::json;

fn rfc3339(time: SystemTime) -> String {
    humantime::format_rfc3339_seconds(time).to_string()
}

/// A host with `prod_app` (tagged `tier: prod`) and `staging_app`, both local.
async fn prod_and_staging(dir: &std::path::Path) -> TestHost {
    let mut prod = local("prod_app", &["true"], 30);
    prod["tags"] = json!({"tier": "prod"});
    let staging = local("staging_app", &["true"], 30);
    TestHost::start(dir, options(vec![prod, staging])).await
}

#[tokio::test]
async fn a_freeze_refuses_a_trigger_naming_the_window_and_an_admin_override_passes() {
    let dir = tempfile::tempdir().expect("temp dir");
    let host = prod_and_staging(dir.path()).await;

    let now = SystemTime::now();
    let end = rfc3339(now + Duration::from_secs(3600));
    let freeze = json!({"id": "quarter-close", "kind": "deny",
        "start": rfc3339(now - Duration::from_secs(60)), "end": end,
        "selector": {"tier": "prod"}, "reason": "quarter close"});
    // Developers read windows; only admins make them.
    let (status, _) = host
        .call(
            Method::POST,
            "/api/deployment/windows",
            Some(DEVELOPER_KEY),
            Some(freeze.clone()),
        )
        .await;
    assert_eq!(status, 403);
    let (status, created) = host
        .call(
            Method::POST,
            "/api/deployment/windows",
            Some(ADMIN_KEY),
            Some(freeze.clone()),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["created_by"], "api:ops");
    let (status, again) = host
        .call(
            Method::POST,
            "/api/deployment/windows",
            Some(ADMIN_KEY),
            Some(freeze),
        )
        .await;
    assert_eq!(
        (status, again["error"].as_str()),
        (409, Some("duplicate_window"))
    );
    let (status, listed) = host
        .get("/api/deployment/windows", Some(DEVELOPER_KEY))
        .await;
    assert_eq!(status, 200);
    assert_eq!(listed["windows"][0]["id"], "quarter-close");

    // A bad window changes nothing and names its field.
    for (body, field) in [
        (
            json!({"id": "bad", "kind": "deny", "rrule": "FREQ=DAILY", "dtstart": "2027-01-01T00:00:00", "duration_secs": 60, "time_zone": "Nowhere/Land"}),
            "time_zone",
        ),
        (
            json!({"id": "bad", "kind": "deny", "rrule": "FREQ=NEVER", "dtstart": "2027-01-01T00:00:00", "duration_secs": 60}),
            "rrule",
        ),
        (
            json!({"id": "bad", "kind": "deny", "start": "2027-01-02T00:00:00Z", "end": "2027-01-01T00:00:00Z"}),
            "end",
        ),
        (
            json!({"id": "bad", "kind": "deny", "start": "2027-01-01T00:00:00Z", "end": "2027-01-02T00:00:00Z", "created_by": "someone"}),
            "created_by",
        ),
        (
            json!({"id": "bad", "kind": "deny", "start": "2027-01-01T00:00:00Z", "end": "2027-01-02T00:00:00Z", "colour": "red"}),
            "colour",
        ),
    ] {
        let (status, answer) = host
            .call(
                Method::POST,
                "/api/deployment/windows",
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
    let (_, listed) = host
        .get("/api/deployment/windows", Some(DEVELOPER_KEY))
        .await;
    assert_eq!(listed["windows"].as_array().map(Vec::len), Some(1));

    // The freeze closes prod, not staging.
    let (status, refused) =
        trigger(&host, json!({"environments": ["staging_app", "prod_app"]})).await;
    assert_eq!(status, 423, "{refused}");
    assert_eq!(refused["error"], "deployment_window_closed");
    assert_eq!(refused["window"], "quarter-close");
    let opens_at: SystemTime =
        humantime::parse_rfc3339(refused["opens_at"].as_str().expect("opens_at"))
            .expect("an RFC 3339 time");
    assert_eq!(rfc3339(opens_at), end);
    let (status, _) = trigger(&host, json!({"environments": ["staging_app"]})).await;
    assert_eq!(status, 202);

    let (status, explained) = host
        .get(
            "/api/deployment/windows/explain?environment=prod_app",
            Some(DEVELOPER_KEY),
        )
        .await;
    assert_eq!(status, 200, "{explained}");
    assert_eq!(explained["allowed"], false);
    assert_eq!(explained["window"], "quarter-close");
    let later = rfc3339(now + Duration::from_secs(7200));
    let (_, explained) = host
        .get(
            &format!("/api/deployment/windows/explain?environment=prod_app&at={later}"),
            Some(DEVELOPER_KEY),
        )
        .await;
    assert_eq!(explained["allowed"], true, "{explained}");
    let (status, answer) = host
        .get(
            "/api/deployment/windows/explain?environment=prod_app&at=tomorrow",
            Some(DEVELOPER_KEY),
        )
        .await;
    assert_eq!((status, answer["field"].as_str()), (400, Some("at")));

    // An override needs a reason; with one, it passes and is kept.
    let (status, answer) = trigger(
        &host,
        json!({"environments": ["prod_app"], "override": {"reason": " "}}),
    )
    .await;
    assert_eq!(
        (status, answer["field"].as_str()),
        (400, Some("override.reason")),
        "{answer}"
    );
    let (status, answer) = trigger(
        &host,
        json!({"environments": ["prod_app"], "override": {"reason": "hotfix for INC-42"}}),
    )
    .await;
    assert_eq!(status, 202, "{answer}");
    let id = answer["deployment_id"].as_str().expect("an id").to_owned();
    let record = finished(&host, &id).await;
    assert_eq!(record["status"], "completed", "{record}");
    assert_eq!(
        record["window_override"],
        json!({"by": "api:ops", "reason": "hotfix for INC-42", "windows": ["quarter-close"]})
    );
    let (status, page) = host
        .get(
            &format!("/api/audit?resource=deployment:{id}"),
            Some(ADMIN_KEY),
        )
        .await;
    assert_eq!(status, 200, "{page}");
    let entry = &page["entries"][0];
    assert_eq!(entry["action"], "deployment.trigger", "{page}");
    assert_eq!(entry["reason"], "hotfix for INC-42", "{entry}");
    let (status, page) = host
        .get(
            "/api/audit?action=window.create&outcome=ok",
            Some(ADMIN_KEY),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        page["entries"][0]["resource"], "window:quarter-close",
        "{page}"
    );

    // Deleted (once: a second delete finds nothing), the freeze no longer closes anything.
    for expected in [200, 404] {
        let (status, _) = host
            .call(
                Method::DELETE,
                "/api/deployment/windows/quarter-close",
                Some(ADMIN_KEY),
                None,
            )
            .await;
        assert_eq!(status, expected);
    }
    let (status, answer) = trigger(&host, json!({"environments": ["prod_app"]})).await;
    assert_eq!(status, 202, "{answer}");
}

#[tokio::test]
async fn with_distinct_approvers_the_admin_who_triggered_cannot_approve() {
    let dir = tempfile::tempdir().expect("temp dir");
    let list = ["c1", "c2"]
        .iter()
        .map(|id| local(id, &["true"], 30))
        .collect();
    let mut host_options = options(list);
    host_options
        .settings
        .push_str("\n[plugins.deployment_mcp.settings.approvals]\ndistinct_approver = true\n");
    let host = TestHost::start(dir.path(), host_options).await;
    let id = started(
        &host,
        json!({"strategy": {"type": "canary", "canary": 1, "gate": "manual"}}),
    )
    .await;
    status_within(&host, &id, RUN_TIMEOUT, |now| now == "awaiting_approval").await;
    // The gate says who may not approve: the key that triggered it.
    let (_, waiting) = host
        .get(
            &format!("/api/deployment/deployments/{id}"),
            Some(ADMIN_KEY),
        )
        .await;
    assert_eq!(waiting["gate"]["not_by"], "ops", "{waiting}");
    let approve = |key: &'static str| {
        let path = format!("/api/deployment/deployments/{id}/approve");
        let host = &host;
        async move { host.call(Method::POST, &path, Some(key), None).await }
    };
    let (status, refused) = approve(ADMIN_KEY).await;
    assert_eq!(
        (status, refused["error"].as_str()),
        (403, Some("same_approver")),
        "{refused}"
    );
    // The refusal is the host's to record (a queue writes it): one entry, naming the deployment.
    let recorded = e2e::wait_until(RUN_TIMEOUT, || async {
        let (_, page) = host
            .get(
                "/api/audit?action=deployment.approve&outcome=denied",
                Some(ADMIN_KEY),
            )
            .await;
        page["entries"].as_array().is_some_and(|entries| {
            entries.len() == 1 && entries[0]["resource"] == format!("deployment:{id}")
        })
    })
    .await;
    assert!(recorded, "the refused approval has one audit entry");
    let (status, approved) = approve(SECOND_ADMIN_KEY).await;
    assert_eq!(status, 200, "{approved}");
    let record = finished(&host, &id).await;
    assert_eq!(record["status"], "completed", "{record}");
}

#[tokio::test]
async fn a_rollout_reaching_a_closed_window_between_batches_waits_for_it_to_open() {
    let dir = tempfile::tempdir().expect("temp dir");
    // The first batch takes three seconds. The freeze of the second environment is made right
    // after the trigger (which it would refuse otherwise) and ends six seconds later, so the
    // second batch finds it closed.
    let list = vec![local("b1", &["sleep", "3"], 30), local("b2", &["true"], 30)];
    let host = TestHost::start(dir.path(), options(list)).await;
    let id = started(
        &host,
        json!({"environments": ["b1", "b2"], "strategy": {"type": "rolling", "batch_size": 1}}),
    )
    .await;
    let now = SystemTime::now();
    let end = now + Duration::from_secs(6);
    let freeze = json!({"id": "short-freeze", "kind": "deny",
        "start": humantime::format_rfc3339_millis(now).to_string(),
        "end": humantime::format_rfc3339_millis(end).to_string(),
        "environments": ["b2"]});
    let (status, created) = host
        .call(
            Method::POST,
            "/api/deployment/windows",
            Some(ADMIN_KEY),
            Some(freeze),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let waiting = status_within(&host, &id, RUN_TIMEOUT, |now| {
        now == "awaiting_window" || e2e::scenario::is_terminal(now)
    })
    .await;
    assert_eq!(waiting["status"], "awaiting_window", "{waiting}");
    let record = finished(&host, &id).await;
    assert_eq!(record["status"], "completed", "{record}");
    let second = e2e::scenario::result(&record, "b2");
    let started_at =
        humantime::parse_rfc3339(second["started_at"].as_str().expect("started")).expect("a time");
    assert!(started_at >= end - Duration::from_millis(1), "{second}");
    let log = e2e::scenario::log_page(&host, &id).await.to_string();
    assert!(
        log.contains("deployment window short-freeze closes b2"),
        "{log}"
    );
}

#[tokio::test]
async fn the_calendar_shows_when_windows_close_each_environment_and_which_schedules_fire() {
    let dir = tempfile::tempdir().expect("temp dir");
    let host = prod_and_staging(dir.path()).await;

    // Whole seconds, an hour ahead: every instant below is exact.
    let now = SystemTime::now();
    let from = humantime::parse_rfc3339(&rfc3339(now + Duration::from_secs(3600)))
        .expect("an RFC 3339 time");
    let hours = |count: u64| from + Duration::from_secs(count * 3600);
    let local_start = rfc3339(from).trim_end_matches('Z').to_owned();
    for (key, body) in [
        (
            "windows",
            json!({"id": "freeze", "kind": "deny", "start": rfc3339(hours(1)),
                "end": rfc3339(hours(3)), "selector": {"tier": "prod"}, "reason": "launch"}),
        ),
        (
            "windows",
            json!({"id": "six-hourly", "kind": "allow", "rrule": "FREQ=HOURLY;INTERVAL=6",
                "dtstart": local_start, "duration_secs": 3600, "environments": ["staging_app"]}),
        ),
        (
            "schedules",
            json!({"id": "release", "at": rfc3339(hours(2)),
                "trigger": {"selector": {"tier": "prod"}}}),
        ),
    ] {
        let (status, answer) = host
            .call(
                Method::POST,
                &format!("/api/deployment/{key}"),
                Some(ADMIN_KEY),
                Some(body),
            )
            .await;
        assert_eq!(status, 201, "{answer}");
    }

    let path = format!("/api/deployment/calendar?from={}&days=1", rfc3339(from));
    let (status, calendar) = host.get(&path, Some(DEVELOPER_KEY)).await;
    assert_eq!(status, 200, "{calendar}");
    let instant = |value: &serde_json::Value| {
        humantime::parse_rfc3339(value.as_str().expect("an instant")).expect("RFC 3339")
    };
    let group = |environment: &str| -> &serde_json::Value {
        let row = calendar["environments"]
            .as_array()
            .expect("environments")
            .iter()
            .find(|row| row["environment_id"] == environment)
            .expect("the environment's row");
        &calendar["groups"][row["group"].as_u64().expect("a group index") as usize]
    };
    let spans = |environment: &str| -> Vec<(SystemTime, SystemTime, String)> {
        group(environment)["closed"]
            .as_array()
            .expect("closed spans")
            .iter()
            .map(|span| {
                let window = span["window"].as_str().unwrap_or_default().to_owned();
                (instant(&span["start"]), instant(&span["end"]), window)
            })
            .collect()
    };
    assert_eq!(
        spans("prod_app"),
        [(hours(1), hours(3), "freeze".to_owned())]
    );
    // Open one hour in six: closed in between, named by the allow window.
    let between = |start: u64, end: u64| (hours(start), hours(end), "six-hourly".to_owned());
    assert_eq!(
        spans("staging_app"),
        [
            between(1, 6),
            between(7, 12),
            between(13, 18),
            between(19, 24)
        ]
    );
    assert_eq!(group("prod_app")["schedules"], json!(["release"]));
    assert_eq!(group("prod_app")["windows"], json!(["freeze"]));
    assert_eq!(group("staging_app")["schedules"], json!([]));
    assert_eq!(calendar["groups"].as_array().map(Vec::len), Some(2));
    assert_eq!(calendar["schedules"][0]["id"], "release");
    assert_eq!(instant(&calendar["schedules"][0]["runs"][0]), hours(2));
    assert_eq!(calendar["windows"][0]["reason"], "launch");
    assert_eq!(
        calendar["windows"][1]["open"].as_array().map(Vec::len),
        Some(4)
    );

    // A bad query names its parameter.
    for (query, field) in [
        ("days=0", "days"),
        ("days=32", "days"),
        ("from=soon", "from"),
        ("from=1990-01-01T00:00:00Z", "from"),
    ] {
        let (status, answer) = host
            .get(
                &format!("/api/deployment/calendar?{query}"),
                Some(DEVELOPER_KEY),
            )
            .await;
        assert_eq!(
            (status, answer["field"].as_str()),
            (400, Some(field)),
            "{query}: {answer}"
        );
    }
}
