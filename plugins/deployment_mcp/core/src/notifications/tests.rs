use std::time::Duration;

use super::*;
use crate::persist::outbox::{delivery_id, delivery_order};

fn spec(value: serde_json::Value) -> SubscriptionSpec {
    serde_json::from_value(value).expect("a subscription")
}

fn record(status: &str, environments: &[&str]) -> DeploymentRecord {
    serde_json::from_value(serde_json::json!({
        "deployment_id": "dep-1795000000000-0a0b0c0d",
        "status": status,
        "progress": 100,
        "version": "v2",
        "triggered_by": "api:ops",
        "environments": environments,
        "created_at": "2026-11-18T09:00:00.000Z",
        "boot_id": "boot",
        "created_ms": 1_795_000_000_000u64,
    }))
    .expect("a record")
}

fn environment(id: &str, tier: &str) -> Environment {
    Environment::try_from(
        serde_json::from_value::<crate::environments::EnvironmentJson>(serde_json::json!({
            "environment_id": id,
            "environment_type": "linux_local",
            "connection_method": "local",
            "command": ["/bin/true"],
            "tags": {"tier": tier},
        }))
        .expect("an environment"),
    )
    .expect("a valid environment")
}

#[test]
fn a_subscription_is_checked_field_by_field() {
    let base = serde_json::json!({
        "id": "ops",
        "events": ["deployment.completed"],
        "channel": {"type": "webhook", "url": "http://127.0.0.1:9/hook", "secret": "s3cret"},
    });
    assert!(Subscription::new(&spec(base.clone())).is_ok());
    let refused = |change: serde_json::Value, field: &str| {
        let mut value = base.clone();
        for (key, part) in change.as_object().expect("an object") {
            value[key] = part.clone();
        }
        let error = Subscription::new(&spec(value)).expect_err("refused");
        assert_eq!(error.field, field, "{error}");
    };
    refused(serde_json::json!({"id": "no spaces"}), "id");
    refused(serde_json::json!({"events": []}), "events");
    refused(
        serde_json::json!({"events": ["deployment.exploded"]}),
        "events",
    );
    refused(
        serde_json::json!({"channel": {"type": "webhook", "url": "ftp://127.0.0.1/x"}}),
        "channel.url",
    );
    refused(
        serde_json::json!({"channel": {"type": "webhook", "url": "http://127.0.0.1/x", "secret": ""}}),
        "channel.secret",
    );
    refused(
        serde_json::json!({"channel": {"type": "email", "smtp_url": "imap://127.0.0.1", "to": ["a@b.c"]}}),
        "channel.smtp_url",
    );
    refused(
        serde_json::json!({"channel": {"type": "email", "smtp_url": "smtp://127.0.0.1:2525", "to": ["not an address"]}}),
        "channel.to",
    );
    refused(
        serde_json::json!({"filter": {"status": ["exploded"]}}),
        "filter.status",
    );
    refused(
        serde_json::json!({"filter": {"environments": []}}),
        "filter.environments",
    );
    let unknown = serde_json::from_value::<SubscriptionSpec>(serde_json::json!({
        "id": "ops", "events": ["deployment.completed"],
        "channel": {"type": "pager", "number": "1"},
    }));
    assert!(unknown.is_err());
}

#[test]
fn secrets_are_masked_when_shown() {
    let webhook = spec(serde_json::json!({
        "id": "a", "events": ["deployment.failed"],
        "channel": {"type": "webhook", "url": "http://user:pw@127.0.0.1/hook?token=abc", "secret": "s3cret"},
    }))
    .masked();
    let shown = serde_json::to_string(&webhook).expect("json");
    assert!(
        !shown.contains("s3cret") && !shown.contains("pw@") && !shown.contains("abc"),
        "{shown}"
    );
    let slack = spec(serde_json::json!({
        "id": "b", "events": ["deployment.failed"],
        "channel": {"type": "slack", "webhook_url": "https://127.0.0.1/services/T0/B0/XYZ"},
    }))
    .masked();
    assert_eq!(
        slack.channel,
        ChannelSpec::Slack {
            webhook_url: "https://127.0.0.1/***".to_owned()
        }
    );
    let email = spec(serde_json::json!({
        "id": "c", "events": ["deployment.failed"],
        "channel": {"type": "email", "smtp_url": "smtp://mailer:hunter2@127.0.0.1:2525", "to": ["ops@example.test"]},
    }))
    .masked();
    let shown = serde_json::to_string(&email).expect("json");
    assert!(!shown.contains("hunter2"), "{shown}");
}

#[test]
fn outcomes_gates_and_overrides_make_notices() {
    let completed = record("completed", &["web1"]);
    let notices = Notice::of_move(&completed, Phase::LocalDeploying);
    assert_eq!(notices.len(), 1);
    assert_eq!(notices[0].event, "deployment.completed");
    assert!(Notice::of_move(&completed, Phase::Completed).is_empty());
    let rolled_back = record("rolled_back", &["web1"]);
    assert_eq!(
        Notice::of_move(&rolled_back, Phase::RollingBack)[0].event,
        "deployment.rolled_back"
    );
    let parked = record("awaiting_approval", &["web1"]);
    assert_eq!(
        Notice::of_move(&parked, Phase::LocalDeploying)[0].event,
        "deployment.gate"
    );
    let rejected = record("cancelled", &["web1"]);
    let events: Vec<String> = Notice::of_move(&rejected, Phase::AwaitingApproval)
        .into_iter()
        .map(|notice| notice.event)
        .collect();
    assert_eq!(events, ["deployment.gate", "deployment.cancelled"]);
    assert!(Notice::of_move(&record("verifying", &["web1"]), Phase::LocalDeploying).is_empty());
    assert!(Notice::of_created(&completed).is_empty());
    let takeover = Notice::of_takeover(&parked, "node-a", "node-b");
    assert!(takeover
        .summary()
        .contains("taken over by node node-b from node node-a"));
}

#[test]
fn filters_choose_deployments() {
    let subscription = |filter: serde_json::Value| {
        Subscription::new(&spec(serde_json::json!({
            "id": "ops", "events": ["deployment.completed", "deployment.failed"],
            "filter": filter,
            "channel": {"type": "webhook", "url": "http://127.0.0.1:9/hook"},
        })))
        .expect("valid")
    };
    let web = Notice::of_move(&record("completed", &["web1", "web2"]), Phase::Verifying).remove(0);
    let db = Notice::of_move(&record("failed", &["db1"]), Phase::Verifying).remove(0);
    let catalog = |id: &str| match id {
        "web1" | "web2" => Some(environment(id, "web")),
        "db1" => Some(environment(id, "db")),
        _ => None,
    };
    let listed = subscription(serde_json::json!({"environments": ["web2"]}));
    assert!(listed.wants(&web, catalog) && !listed.wants(&db, catalog));
    let tagged = subscription(serde_json::json!({"selector": {"tier": "db"}}));
    assert!(!tagged.wants(&web, catalog) && tagged.wants(&db, catalog));
    assert!(tagged.has_selector());
    let failures = subscription(serde_json::json!({"status": ["failed"]}));
    assert!(!failures.wants(&web, catalog) && failures.wants(&db, catalog));
    let gate = Notice::of_move(&record("awaiting_approval", &["web1"]), Phase::Verifying).remove(0);
    assert!(!subscription(serde_json::json!({})).wants(&gate, catalog));
}

#[test]
fn retries_double_from_the_first_and_stop_at_an_hour() {
    let first = Duration::from_millis(1_000);
    assert_eq!(retry_delay(1, first, 1.0), first);
    assert_eq!(retry_delay(1, first, 0.0), first / 2);
    assert_eq!(retry_delay(4, first, 1.0), first * 8);
    assert_eq!(retry_delay(40, first, 1.0), Duration::from_secs(3_600));
    assert!(retry_delay(2, first, 0.5) <= Duration::from_secs(2));
}

#[test]
fn delivery_ids_list_newest_first_and_keep_a_deployments_order() {
    let older = delivery_id("dep-1-a", 1_000, 7, 0);
    let newer = delivery_id("dep-2-b", 2_000, 1, 0);
    assert!(newer < older, "{newer} {older}");
    let first = delivery_id("dep-1-a", 1_000, 2, 1);
    let second = delivery_id("dep-1-a", 1_000, 10, 0);
    assert!(first < second);
    assert_eq!(delivery_order(&second), Some(("dep-1-a", 10, 0)));
    assert_eq!(delivery_order("nonsense"), None);
}
