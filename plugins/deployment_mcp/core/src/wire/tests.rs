//! The role views: secrets in no view, connection details and error texts only for developers
//! and admins, hidden fields `null` for them and absent for users.

use super::*;
use crate::{
    deployment::{HealthReport, HistoryEntry, Phase, TargetRecord, TargetStatus},
    environments::{parse, Environment},
    persist::catalog::{Source, StoredEnvironment},
};

/// A catalog entry as the store keeps it.
fn stored(environment: Environment, source: Source, secrets_set: bool) -> StoredEnvironment {
    StoredEnvironment {
        environment,
        source,
        updated_at: "2026-01-01T00:00:00.000Z".parse().unwrap(),
        file_version: None,
        file_secrets_sha256: None,
        has_api_token: secrets_set,
        has_webhook_secret: secrets_set,
    }
}

#[test]
fn secrets_are_not_in_any_environment_view() {
    let text = r#"{"environments": [
        {"environment_id": "h", "environment_type": "linux_local", "connection_method": "http_api", "host": "127.0.0.1", "api_token": "tok-123"},
        {"environment_id": "w", "environment_type": "linux_local", "connection_method": "webhook", "webhook_url": "http://127.0.0.1:1/hook", "webhook_secret": "whs-456"}]}"#;
    let environments = parse(text).unwrap_or_default();
    assert_eq!(environments.len(), 2);
    assert_eq!(environments[0].api_token(), Some("tok-123"));
    assert_eq!(environments[1].webhook_secret(), Some("whs-456"));
    for environment in environments {
        // Even a stored environment that still held its secrets would not show them.
        let stored = stored(environment, Source::Api, true);
        for view in [View::Details, View::User] {
            let shown = serde_json::to_string(&EnvironmentView::new(&stored, None, None, view))
                .unwrap_or_default();
            assert!(shown.contains("\"environment_id\""), "{shown}");
            assert!(
                !shown.contains("tok-123") && !shown.contains("whs-456"),
                "{shown}"
            );
        }
    }
}

#[test]
fn a_user_sees_no_connection_detail() {
    let environment = crate::environments::parse_one(
        br#"{"environment_id": "s", "environment_type": "linux_local", "connection_method": "ssh", "host": "127.0.0.1", "username": "deployer", "ssh_key_path": "/keys/id", "init_script_path": "/opt/deploy.sh"}"#,
    )
    .expect("valid");
    let stored = stored(environment, Source::File, false);
    let report = HealthReport {
        healthy: false,
        url: "http://127.0.0.1:9/health".into(),
        checked_at: "2026-01-01T00:00:00.000Z".parse().unwrap(),
        http_status: None,
        error: Some("connection refused by 127.0.0.1".into()),
        latency_ms: 3,
    };
    let user = serde_json::to_value(EnvironmentView::new(
        &stored,
        Some(&report),
        None,
        View::User,
    ))
    .expect("serializes");
    let text = user.to_string();
    for detail in [
        "127.0.0.1",
        "deployer",
        "/opt/deploy.sh",
        "source",
        "timeout",
    ] {
        assert!(!text.contains(detail), "{detail} in {text}");
    }
    assert_eq!(user["last_health"]["healthy"], false);
    let full = serde_json::to_value(EnvironmentView::new(
        &stored,
        Some(&report),
        None,
        View::Details,
    ))
    .expect("serializes");
    assert_eq!(full["host"], "127.0.0.1");
    assert_eq!(full["source"], "file");
    assert_eq!(
        full["last_health"]["error"],
        "connection refused by 127.0.0.1"
    );
    // What a developer reads back is the same view.
    let read: EnvironmentView = serde_json::from_value(full).expect("reads back");
    assert!(read
        .connection
        .is_some_and(|details| details.username.as_deref() == Some("deployer")));
    let read: EnvironmentView = serde_json::from_value(user).expect("reads back");
    assert!(read.connection.is_none());
}

#[test]
fn hidden_fields_are_null_for_details_and_absent_for_users() {
    let entry = HistoryEntry {
        deployment_id: crate::model::DeploymentId::parse("dep-1-00000000").unwrap(),
        status: Phase::Completed,
        progress: 100,
        version: "1".into(),
        triggered_by: "test".into(),
        environments: vec![crate::model::EnvironmentId::parse("a").unwrap()],
        environment_count: 1,
        failed_environments: Vec::new(),
        failed_count: 0,
        created_at: "2026-01-01T00:00:00.000Z".parse().unwrap(),
        finished_at: None,
        duration_ms: None,
        retry_of: None,
        error: None,
    };
    let full = serde_json::to_value(DeploymentEntry::new(&entry, View::Details)).expect("json");
    assert!(
        full.as_object().is_some_and(|o| o.contains_key("error")),
        "{full}"
    );
    assert!(full["error"].is_null() && full["has_error"] == false);
    let user = serde_json::to_value(DeploymentEntry::new(&entry, View::User)).expect("json");
    assert!(
        user.as_object().is_some_and(|o| !o.contains_key("error")),
        "{user}"
    );
    let record = TargetRecord::new(
        &crate::model::EnvironmentId::parse("a").unwrap(),
        "local",
        TargetStatus::Failed,
    );
    let full = serde_json::to_value(TargetResult::new(&record, View::Details)).expect("json");
    for key in ["detail", "error", "health", "output_tail"] {
        assert!(
            full.as_object().is_some_and(|o| o.contains_key(key)),
            "{key}: {full}"
        );
    }
    let user = serde_json::to_value(TargetResult::new(&record, View::User)).expect("json");
    for key in ["detail", "error", "health", "output_tail"] {
        assert!(
            user.as_object().is_some_and(|o| !o.contains_key(key)),
            "{key}: {user}"
        );
    }
}

#[test]
fn events_read_back_as_published_and_unknown_kinds_pass() {
    let deleted = Event::Deleted(DeletedEvent {
        environment_id: crate::model::EnvironmentId::parse("a").unwrap(),
    });
    assert_eq!(deleted.kind(), "environment.deleted");
    assert_eq!(deleted.deployment_id(), None);
    let data = deleted.data(Some(7));
    assert_eq!(data, serde_json::json!({ "environment_id": "a", "seq": 7 }));
    let read = Event::read(deleted.kind(), data).expect("readable");
    assert!(matches!(read, Some(Event::Deleted(event)) if event.environment_id == "a"));
    let log = serde_json::json!({ "deployment_id": "dep-1-ab", "lines": [] });
    let read = Event::read("deployment.log", log).expect("readable");
    assert_eq!(
        read.as_ref().and_then(Event::deployment_id),
        Some("dep-1-ab")
    );
    assert!(Event::read("deployment.future", serde_json::json!({}))
        .expect("no error")
        .is_none());
    let error = Event::read("deployment.phase", serde_json::json!({ "status": 3 })).unwrap_err();
    assert_eq!(error.kind, "deployment.phase");
}
