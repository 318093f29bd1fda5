//! Notifications (SPEC §4f) against the real binary and real receivers on loopback: a webhook
//! that fails twice and then accepts gets the event three times with one `Idempotency-Key` and
//! a valid signature each time; a test delivery on create; Slack and mail (an SMTP sink) get a
//! summary with a link; a receiver that never accepts is given up (dead-lettered) and sent again
//! by hand; secrets are never shown; a host killed (SIGKILL) after the event and before its
//! delivery delivers it after the restart; with several nodes on one PostgreSQL server each
//! delivery is sent by one node; and under receivers that fail (500s) and hang, a deduping
//! receiver sees every event once and each deployment's events in order. A run interrupted by
//! a kill is announced after the restart, and `allowed_target_networks` keeps every channel
//! from an address outside it.

use std::{collections::HashMap, path::Path, time::Duration};

use e2e::{
    postgres::TestPostgres,
    receiver::{gated_deployments, gated_environments, seen, Receiver, Script, SmtpSink},
    scenario::{file_appears, finished, local, options, read_pid, started},
    targets::sign,
    wait_until, HostOptions, TestHost, ADMIN_KEY, DEVELOPER_KEY,
};
use reqwest::Method;
use serde_json::{json, Value};

/// Bound on waits for deliveries (retries are a fraction of a second apart here).
const DELIVERY_WAIT: Duration = Duration::from_secs(60);

/// Fast retries, and a short attempt timeout for the receivers that hang.
const FAST: &str = "notifications = { first_retry_ms = 100, attempt_timeout_secs = 1 }";

fn host_options(settings: &str, environments: Vec<Value>) -> HostOptions {
    HostOptions {
        settings: format!("{settings}\n"),
        ..options(environments)
    }
}

async fn subscribe(host: &TestHost, body: Value, test: bool) -> Value {
    let path = if test {
        "/api/deployment/subscriptions?test=true"
    } else {
        "/api/deployment/subscriptions"
    };
    let (status, created) = host
        .call(Method::POST, path, Some(ADMIN_KEY), Some(body))
        .await;
    assert_eq!(status, 201, "{created}");
    created
}

async fn deliveries(host: &TestHost, subscription: &str) -> Vec<Value> {
    let (status, list) = host
        .get(
            &format!("/api/deployment/subscriptions/{subscription}/deliveries?limit=200"),
            Some(ADMIN_KEY),
        )
        .await;
    assert_eq!(status, 200, "{list}");
    list["deliveries"].as_array().cloned().unwrap_or_default()
}

/// The subscription's deliveries once `count` of them are recorded as delivered. A receiver
/// sees a request before the sender records its answer, so what a receiver saw is not yet
/// in the listing.
async fn delivered(host: &TestHost, subscription: &str, count: usize) -> Vec<Value> {
    let recorded = wait_until(DELIVERY_WAIT, || async {
        let listed = deliveries(host, subscription).await;
        listed
            .iter()
            .filter(|delivery| delivery["state"] == "delivered")
            .count()
            >= count
    })
    .await;
    let listed = deliveries(host, subscription).await;
    assert!(recorded, "{count} delivered: {listed:#?}");
    listed
}

async fn deploy(host: &TestHost, environments: &[&str]) -> String {
    let id = started(host, json!({"environments": environments, "version": "v1"})).await;
    let record = finished(host, &id).await;
    assert_eq!(record["status"], "completed", "{record}");
    id
}

#[tokio::test]
async fn a_webhook_failing_twice_gets_the_event_three_times_with_one_key_and_valid_signatures() {
    let dir = tempfile::tempdir().expect("temp dir");
    let host = TestHost::start(
        dir.path(),
        host_options(FAST, vec![local("web1", &["true"], 30)]),
    )
    .await;
    let receiver = Receiver::start(Script {
        fail_first: 2,
        ..Script::default()
    })
    .await;
    let secret = "notify-secret-4242";
    let created = subscribe(
        &host,
        json!({"id": "ops", "events": ["deployment.completed", "deployment.failed"],
            "channel": {"type": "webhook", "url": receiver.url(), "secret": secret}}),
        false,
    )
    .await;
    assert_eq!(
        created["subscription"]["channel"]["secret"], "***",
        "{created}"
    );
    let id = deploy(&host, &["web1"]).await;
    let accepted = wait_until(DELIVERY_WAIT, || async { !receiver.accepted().is_empty() }).await;
    assert!(accepted, "{:?}\n{}", receiver.deliveries(), host.logs());
    let received = receiver.deliveries();
    assert_eq!(received.len(), 3, "{received:?}");
    let key = received[0]
        .idempotency_key
        .clone()
        .expect("an Idempotency-Key");
    for delivery in &received {
        assert_eq!(delivery.idempotency_key.as_deref(), Some(key.as_str()));
        assert_eq!(
            delivery.body, received[0].body,
            "every attempt sends the same bytes"
        );
        assert_eq!(
            delivery.signature.as_deref(),
            Some(sign(secret, &delivery.body).as_str()),
            "a valid signature"
        );
        assert_eq!(delivery.event.as_deref(), Some("deployment.completed"));
    }
    let body = &received[0].json;
    assert_eq!(body["id"], key.as_str(), "{body}");
    assert_eq!(body["event"], "deployment.completed", "{body}");
    assert_eq!(body["subscription"], "ops", "{body}");
    assert_eq!(body["deployment"]["deployment_id"], id.as_str(), "{body}");
    assert_eq!(body["deployment"]["status"], "completed", "{body}");
    // The record of the attempts: two 500s, then the 200.
    let listed = delivered(&host, "ops", 1).await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    let delivery = &listed[0];
    assert_eq!(delivery["state"], "delivered", "{delivery}");
    assert_eq!(delivery["attempt_count"], 3, "{delivery}");
    assert_eq!(delivery["idempotency_key"], key.as_str(), "{delivery}");
    let statuses: Vec<u64> = delivery["attempts"]
        .as_array()
        .expect("attempts")
        .iter()
        .filter_map(|attempt| attempt["status"].as_u64())
        .collect();
    assert_eq!(statuses, [500, 500, 200], "{delivery}");
    // Secrets are shown to no one: not in the list, the subscription, the deliveries, the log.
    let (_, list) = host
        .get("/api/deployment/subscriptions", Some(ADMIN_KEY))
        .await;
    let (_, one) = host
        .get("/api/deployment/subscriptions/ops", Some(ADMIN_KEY))
        .await;
    for shown in [
        list.to_string(),
        one.to_string(),
        json!(listed).to_string(),
        host.logs(),
    ] {
        assert!(!shown.contains(secret), "{shown}");
    }
    // Developers may not read or make subscriptions.
    let (status, _) = host
        .get("/api/deployment/subscriptions", Some(DEVELOPER_KEY))
        .await;
    assert_eq!(status, 403);
    // A test delivery on create reaches the receiver as event `test`.
    let created = subscribe(
        &host,
        json!({"id": "ops-test", "events": ["deployment.failed"],
            "channel": {"type": "webhook", "url": receiver.url()}}),
        true,
    )
    .await;
    let test_id = created["test_delivery"]
        .as_str()
        .expect("a test delivery")
        .to_owned();
    let tested = wait_until(DELIVERY_WAIT, || async {
        receiver
            .accepted()
            .iter()
            .any(|delivery| delivery.json["event"] == "test")
    })
    .await;
    assert!(tested, "{:?}", receiver.deliveries());
    let listed = deliveries(&host, "ops-test").await;
    assert_eq!(listed[0]["id"], test_id.as_str(), "{listed:?}");
    // Bad input is named and changes nothing.
    let (status, refused) = host
        .call(
            Method::POST,
            "/api/deployment/subscriptions",
            Some(ADMIN_KEY),
            Some(json!({"id": "bad", "events": ["deployment.exploded"],
                "channel": {"type": "webhook", "url": receiver.url()}})),
        )
        .await;
    assert_eq!(status, 400, "{refused}");
    assert_eq!(refused["field"], "events", "{refused}");
    let (status, _) = host
        .get("/api/deployment/subscriptions/bad", Some(ADMIN_KEY))
        .await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn slack_and_mail_get_a_summary_and_a_receiver_that_never_accepts_is_dead_lettered() {
    let dir = tempfile::tempdir().expect("temp dir");
    let settings = "notifications = { first_retry_ms = 100, attempt_timeout_secs = 1, retry_for_secs = 2, deployment_url = \"http://127.0.0.1:9/deployments/{deployment_id}\" }";
    let host = TestHost::start(
        dir.path(),
        host_options(settings, vec![local("web1", &["true"], 30)]),
    )
    .await;
    let slack = Receiver::start(Script::default()).await;
    let sink = SmtpSink::start().await;
    let refusing = Receiver::start(Script {
        fail_first: u32::MAX,
        ..Script::default()
    })
    .await;
    subscribe(
        &host,
        json!({"id": "chat", "events": ["deployment.completed"],
            "channel": {"type": "slack", "webhook_url": slack.url()}}),
        false,
    )
    .await;
    subscribe(
        &host,
        json!({"id": "mail", "events": ["deployment.completed"], "filter": {"environments": ["web1"]},
            "channel": {"type": "email", "smtp_url": sink.url(), "to": ["ops@example.test"]}}),
        false,
    )
    .await;
    subscribe(
        &host,
        json!({"id": "down", "events": ["deployment.completed"],
            "channel": {"type": "webhook", "url": refusing.url()}}),
        false,
    )
    .await;
    let id = deploy(&host, &["web1"]).await;
    let sent = wait_until(DELIVERY_WAIT, || async {
        !slack.accepted().is_empty() && !sink.mails().is_empty()
    })
    .await;
    assert!(sent, "{}", host.logs());
    let message = slack.accepted()[0].json["text"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        message.contains(&id) && message.contains("completed"),
        "{message}"
    );
    assert!(
        message.contains(&format!("http://127.0.0.1:9/deployments/{id}")),
        "{message}"
    );
    let mail = &sink.mails()[0];
    assert_eq!(mail.to, ["<ops@example.test>"], "{mail:?}");
    assert!(mail.data.contains(&id), "{}", mail.data);
    assert!(mail.data.contains("Message-ID: <mail/"), "{}", mail.data);
    // Given up after the retry period, then sent again by hand.
    let dead = wait_until(DELIVERY_WAIT, || async {
        deliveries(&host, "down")
            .await
            .first()
            .is_some_and(|delivery| delivery["state"] == "dead")
    })
    .await;
    let listed = deliveries(&host, "down").await;
    assert!(dead, "{listed:?}");
    assert_eq!(listed[0]["dead_lettered"], true);
    let tried = listed[0]["attempt_count"].as_u64().unwrap_or(0);
    assert!(tried >= 2, "{listed:?}");
    assert!(listed[0]["next_attempt_at"].is_null(), "{listed:?}");
    refusing.set_script(Script::default());
    let delivery = listed[0]["id"].as_str().expect("an id").to_owned();
    let (status, queued) = host
        .call(
            Method::POST,
            &format!("/api/deployment/subscriptions/down/deliveries/{delivery}/redeliver"),
            Some(ADMIN_KEY),
            None,
        )
        .await;
    assert_eq!(status, 202, "{queued}");
    let redelivered = wait_until(DELIVERY_WAIT, || async {
        deliveries(&host, "down")
            .await
            .first()
            .is_some_and(|delivery| delivery["state"] == "delivered")
    })
    .await;
    let listed = deliveries(&host, "down").await;
    assert!(redelivered, "{listed:?}");
    assert_eq!(listed[0]["redelivered"], 1, "{listed:?}");
    assert_eq!(refusing.accepted().len(), 1);
    let (status, _) = host
        .call(
            Method::POST,
            "/api/deployment/subscriptions/down/deliveries/nothing-here/redeliver",
            Some(ADMIN_KEY),
            None,
        )
        .await;
    assert_eq!(status, 404);
    // A delete takes the deliveries with it.
    let (status, _) = host
        .call(
            Method::DELETE,
            "/api/deployment/subscriptions/down",
            Some(ADMIN_KEY),
            None,
        )
        .await;
    assert_eq!(status, 200);
    let (status, _) = host
        .get(
            "/api/deployment/subscriptions/down/deliveries",
            Some(ADMIN_KEY),
        )
        .await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn a_host_killed_after_the_event_and_before_its_delivery_delivers_it_after_the_restart() {
    let dir = tempfile::tempdir().expect("temp dir");
    let options = host_options(FAST, vec![local("web1", &["true"], 30)]);
    let host = TestHost::start(dir.path(), options.clone()).await;
    // The receiver holds every request: the event is stored, its delivery never accepted.
    let receiver = Receiver::start(Script {
        hang_percent: 100,
        ..Script::default()
    })
    .await;
    subscribe(
        &host,
        json!({"id": "ops", "events": ["deployment.completed"],
            "channel": {"type": "webhook", "url": receiver.url()}}),
        false,
    )
    .await;
    let id = deploy(&host, &["web1"]).await;
    let tried = wait_until(DELIVERY_WAIT, || async {
        !receiver.deliveries().is_empty()
    })
    .await;
    assert!(tried, "{}", host.logs());
    assert!(receiver.accepted().is_empty());
    host.kill();
    receiver.set_script(Script::default());
    let host = TestHost::start(dir.path(), options).await;
    let delivered = wait_until(DELIVERY_WAIT, || async { !receiver.accepted().is_empty() }).await;
    assert!(delivered, "{:?}\n{}", receiver.deliveries(), host.logs());
    let accepted = receiver.accepted();
    assert_eq!(accepted.len(), 1, "{accepted:?}");
    assert_eq!(accepted[0].json["deployment"]["deployment_id"], id.as_str());
    assert_eq!(
        accepted[0].idempotency_key,
        receiver.deliveries()[0].idempotency_key,
        "the same key as before the kill"
    );
}

#[tokio::test]
async fn a_run_interrupted_by_a_kill_is_announced_after_the_restart() {
    let dir = tempfile::tempdir().expect("temp dir");
    let marker = dir.path().join("started");
    let command = format!("echo $$ > {}; exec sleep 60", marker.display());
    let options = host_options(FAST, vec![local("slow", &["sh", "-c", &command], 120)]);
    let host = TestHost::start(dir.path(), options.clone()).await;
    let receiver = Receiver::start(Script::default()).await;
    subscribe(
        &host,
        json!({"id": "ops", "events": ["deployment.interrupted", "deployment.completed"],
            "channel": {"type": "webhook", "url": receiver.url()}}),
        false,
    )
    .await;
    let id = started(&host, json!({"environments": ["slow"], "version": "v1"})).await;
    assert!(
        file_appears(&marker, DELIVERY_WAIT).await,
        "{}",
        host.logs()
    );
    host.kill();
    // The command is in its own process group and outlives the host: end it (it is the shell
    // that wrote its pid, replaced by `sleep`).
    let command = wait_until(DELIVERY_WAIT, || async {
        std::fs::read_to_string(&marker).is_ok_and(|text| text.trim().parse::<u32>().is_ok())
    })
    .await;
    assert!(command, "the command wrote its pid");
    e2e::send_signal(read_pid(&marker), e2e::Signal::SIGKILL);
    // The restart's recovery marks the run interrupted in a transaction that publishes no
    // event of its own; its notice is still written with it and sent.
    let host = TestHost::start(dir.path(), options).await;
    let announced = wait_until(DELIVERY_WAIT, || async { !receiver.accepted().is_empty() }).await;
    assert!(announced, "{:?}\n{}", receiver.deliveries(), host.logs());
    let listed = delivered(&host, "ops", 1).await;
    let accepted = receiver.accepted();
    assert_eq!(accepted.len(), 1, "{accepted:?}");
    let body = &accepted[0].json;
    assert_eq!(body["event"], "deployment.interrupted", "{body}");
    assert_eq!(body["deployment"]["deployment_id"], id.as_str(), "{body}");
    assert_eq!(body["deployment"]["status"], "interrupted", "{body}");
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["event"], "deployment.interrupted", "{listed:?}");
}

#[tokio::test]
async fn allowed_target_networks_keeps_every_channel_from_an_address_outside_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    // Receivers listen on 127.0.0.1; only 127.0.0.2 may be reached.
    let options = HostOptions {
        target_networks: r#"["127.0.0.2/32"]"#.to_owned(),
        ..host_options(FAST, vec![local("web1", &["true"], 30)])
    };
    let host = TestHost::start(dir.path(), options).await;
    let hook = Receiver::start(Script::default()).await;
    let slack = Receiver::start(Script::default()).await;
    let sink = SmtpSink::start().await;
    for (id, channel) in [
        ("hook", json!({"type": "webhook", "url": hook.url()})),
        ("chat", json!({"type": "slack", "webhook_url": slack.url()})),
        (
            "mail",
            json!({"type": "email", "smtp_url": sink.url(), "to": ["ops@example.test"]}),
        ),
    ] {
        subscribe(
            &host,
            json!({"id": id, "events": ["deployment.completed"], "channel": channel}),
            false,
        )
        .await;
    }
    deploy(&host, &["web1"]).await;
    for subscription in ["hook", "chat", "mail"] {
        let refused = wait_until(DELIVERY_WAIT, || async {
            deliveries(&host, subscription)
                .await
                .first()
                .is_some_and(|delivery| {
                    delivery["attempts"][0]["error"]
                        .as_str()
                        .is_some_and(|error| error.contains("allowed_target_networks"))
                })
        })
        .await;
        assert!(
            refused,
            "{subscription}: {:?}",
            deliveries(&host, subscription).await
        );
        let delivery = &deliveries(&host, subscription).await[0];
        assert_eq!(delivery["state"], "pending", "retried later: {delivery}");
        assert!(
            delivery["attempts"][0]["status"].is_null(),
            "no answer was had: {delivery}"
        );
    }
    // Refused before connecting: no receiver was even connected to.
    assert_eq!(
        (hook.connections(), slack.connections(), sink.connections()),
        (0, 0, 0)
    );
    assert!(hook.deliveries().is_empty() && slack.deliveries().is_empty());
    assert!(sink.mails().is_empty());
}

fn node_options(server: &TestPostgres, node: &str) -> HostOptions {
    server.node_options(
        node,
        Some(1),
        host_options(
            FAST,
            (0..4)
                .map(|index| local(&format!("app{index}"), &["true"], 30))
                .collect(),
        ),
    )
}

async fn node(root: &Path, server: &TestPostgres, name: &str) -> TestHost {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).expect("node dir");
    TestHost::start(&dir, node_options(server, name)).await
}

/// Every key the receiver accepted, with how many times it was sent.
fn sends_by_key(receiver: &Receiver) -> HashMap<String, usize> {
    let mut sends = HashMap::new();
    for delivery in receiver.deliveries() {
        *sends
            .entry(delivery.idempotency_key.unwrap_or_default())
            .or_insert(0) += 1;
    }
    sends
}

#[tokio::test]
async fn with_several_nodes_each_delivery_is_sent_once_and_a_killed_leader_is_followed() {
    let server = TestPostgres::start("notifications");
    let root = tempfile::tempdir().expect("temp dir");
    let nodes = [
        node(root.path(), &server, "n1").await,
        node(root.path(), &server, "n2").await,
        node(root.path(), &server, "n3").await,
    ];
    let receiver = Receiver::start(Script::default()).await;
    subscribe(
        &nodes[0],
        json!({"id": "ops", "events": ["deployment.completed"],
            "channel": {"type": "webhook", "url": receiver.url()}}),
        false,
    )
    .await;
    // Deployments triggered through every node.
    let mut ids = Vec::new();
    for round in 0..3 {
        for (index, host) in nodes.iter().enumerate() {
            ids.push(deploy(host, &[&format!("app{}", (index + round) % 4)]).await);
        }
    }
    let all = wait_until(DELIVERY_WAIT, || async {
        receiver.accepted().len() >= ids.len()
    })
    .await;
    assert!(all, "{:?}", receiver.deliveries());
    let sends = sends_by_key(&receiver);
    assert_eq!(sends.len(), ids.len(), "{sends:?}");
    assert!(
        sends.values().all(|count| *count == 1),
        "each sent once: {sends:?}"
    );
    // Which node sends: kill it; another takes the lease and delivers what comes next.
    let listed = delivered(&nodes[0], "ops", ids.len()).await;
    let sender = listed[0]["attempts"][0]["node"]
        .as_str()
        .expect("a node")
        .to_owned();
    let mut alive = Vec::new();
    for (host, name) in nodes.into_iter().zip(["n1", "n2", "n3"]) {
        if name == sender {
            host.kill();
        } else {
            alive.push(host);
        }
    }
    assert_eq!(alive.len(), 2, "the sender was one of the three");
    let more = deploy(&alive[0], &["app3"]).await;
    let followed = wait_until(DELIVERY_WAIT, || async {
        receiver
            .accepted()
            .iter()
            .any(|delivery| delivery.json["deployment"]["deployment_id"] == more.as_str())
    })
    .await;
    assert!(followed, "{}\n{}", alive[0].logs(), alive[1].logs());
    let listed = delivered(&alive[0], "ops", ids.len() + 1).await;
    let newest = &listed[0];
    assert_eq!(
        newest["deployment_id"],
        more.as_str(),
        "newest first: {listed:#?}"
    );
    assert_ne!(newest["attempts"][0]["node"], sender.as_str(), "{newest}");
    let sends = sends_by_key(&receiver);
    assert!(sends.values().all(|count| *count == 1), "{sends:?}");
}

#[tokio::test]
async fn under_failing_and_hanging_receivers_every_event_arrives_once_and_in_order() {
    let dir = tempfile::tempdir().expect("temp dir");
    let lanes = 4;
    let host = TestHost::start(dir.path(), host_options(FAST, gated_environments(lanes))).await;
    let receiver = Receiver::start(Script {
        error_percent: 30,
        hang_percent: 10,
        seed: 7,
        ..Script::default()
    })
    .await;
    subscribe(
        &host,
        json!({"id": "soak", "events": ["deployment.gate", "deployment.completed"],
            "channel": {"type": "webhook", "url": receiver.url()}}),
        false,
    )
    .await;
    let ids = gated_deployments(&host, lanes, 10).await;
    let expected = ids.len() * 3;
    let all = wait_until(Duration::from_secs(180), || async {
        seen(&receiver).unique >= expected
    })
    .await;
    let seen = seen(&receiver);
    assert!(all, "{seen:?}\n{}", host.logs());
    assert_eq!(seen.unique, expected, "nothing more than what happened");
    assert_eq!(seen.accepted_twice, 0, "{seen:?}");
    assert!(seen.out_of_order.is_empty(), "{:?}", seen.out_of_order);
    assert!(
        seen.failed_attempts > 0,
        "the receiver failed some attempts"
    );
}
