//! The EC2 phase (`deployment_mcp_core::ec2`) against a real EC2 API: each test starts its own
//! `moto_server`. Credentials come from the standard AWS chain, here the environment's fake
//! keys, which every test sets to the same values before doing anything else.
//!
//! Tests that need another process environment (no credentials at all, an IMDS endpoint) run
//! this test binary again as a child with a clean environment; the child part of such a test is
//! selected by `EC2_PHASE_CHILD`.

use std::{
    future::IntoFuture,
    process::Stdio,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use axum::{
    extract::State,
    http::{HeaderMap, StatusCode},
    routing::{get, post, put},
    Router,
};
use deployment_mcp_core::{
    ec2::{self, Ec2Outcome, Ec2Settings},
    model::{LogLine, LogSink},
};
use e2e::moto::{Moto, ACCESS_KEY_ID, REGION, SECRET_ACCESS_KEY};
use tokio::sync::mpsc;

const CHILD_ROLE: &str = "EC2_PHASE_CHILD";
const CHILD_ENDPOINT: &str = "EC2_PHASE_CHILD_ENDPOINT";
const CHILD_REPORT: &str = "EC2_PHASE_CHILD_REPORT ";
const UNKNOWN_ID: &str = "i-0123456789abcdef0";

/// Runs the phase with moto's keys given explicitly: tests share one process, so none of them
/// may change the process environment that the standard chain (and every spawned child) reads.
/// The chain itself is exercised in child processes below and through the host in
/// `ec2_deployments`.
async fn phase(settings: &Ec2Settings, log: &LogSink) -> Result<Ec2Outcome, String> {
    let config = aws_config::SdkConfig::builder()
        .behavior_version(aws_config::BehaviorVersion::latest())
        .credentials_provider(aws_sdk_ec2::config::SharedCredentialsProvider::new(
            aws_sdk_ec2::config::Credentials::new(
                ACCESS_KEY_ID,
                SECRET_ACCESS_KEY,
                None,
                None,
                "test",
            ),
        ))
        .build();
    ec2::ensure_running_with(settings, &config, log).await
}

/// A bound on how long a phase that must give up may take: far above what it needs, only there
/// so that a phase that hangs fails the test instead of stalling the suite.
const GIVES_UP_WITHIN: Duration = Duration::from_secs(60);

async fn bounded<T>(what: &str, future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(GIVES_UP_WITHIN, future)
        .await
        .unwrap_or_else(|_| panic!("{what} did not end within {GIVES_UP_WITHIN:?}"))
}

fn log_sink() -> (LogSink, mpsc::Receiver<LogLine>) {
    LogSink::channel(1024)
}

fn lines(receiver: &mut mpsc::Receiver<LogLine>) -> Vec<String> {
    let mut lines = Vec::new();
    while let Ok(line) = receiver.try_recv() {
        lines.push(line.line);
    }
    lines
}

fn assert_logged(lines: &[String], expected: &str) {
    assert!(
        lines.iter().any(|line| line == expected),
        "log has no line {expected:?}: {lines:#?}"
    );
}

#[tokio::test]
async fn starts_a_stopped_instance_selected_by_id() {
    let moto = Moto::start().await;
    let id = moto.run_instance(&[("Name", "platform")]).await;
    moto.stop_instance(&id).await;

    let settings = Ec2Settings {
        instance_ids: vec![id.clone()],
        ..moto.settings()
    };
    let (log, mut receiver) = log_sink();
    let outcome = phase(&settings, &log)
        .await
        .unwrap_or_else(|error| panic!("ensure_running: {error}\n{}", moto.log()));

    assert_eq!(outcome.started, vec![id.clone()]);
    assert_eq!(outcome.instances.len(), 1);
    let instance = &outcome.instances[0];
    assert_eq!(instance.instance_id, id);
    assert_eq!(instance.state, "running");
    let public_ip = instance
        .public_ip
        .clone()
        .expect("a started instance in the default VPC has a public IPv4");
    assert!(
        public_ip.parse::<std::net::Ipv4Addr>().is_ok(),
        "{public_ip}"
    );
    assert!(instance.private_ip.is_some(), "{instance:?}");
    assert!(instance.public_dns.is_some(), "{instance:?}");
    assert_eq!(
        outcome.platform(),
        Some((id.clone(), Some(public_ip.clone())))
    );
    assert_eq!(moto.state(&id).await, "running");

    let lines = lines(&mut receiver);
    assert_logged(&lines, &format!("found {id} (stopped)"));
    assert_logged(&lines, &format!("starting {id}"));
    assert_logged(&lines, &format!("{id} is running at {public_ip}"));
}

#[tokio::test]
async fn selects_exactly_the_instances_matching_the_tag_filters() {
    let moto = Moto::start().await;
    let first = moto
        .run_instance(&[("Role", "platform"), ("Team", "core")])
        .await;
    let second = moto.run_instance(&[("Role", "platform")]).await;
    let _untagged = moto.run_instance(&[]).await;
    let _other_role = moto.run_instance(&[("Role", "worker")]).await;
    // Terminated instances keep their tags but can never be started: not selected.
    let terminated = moto.run_instance(&[("Role", "platform")]).await;
    moto.terminate_instance(&terminated).await;
    moto.stop_instance(&second).await;

    let settings = Ec2Settings {
        tag_filters: [("Role".to_owned(), "platform".to_owned())].into(),
        ..moto.settings()
    };
    let (log, mut receiver) = log_sink();
    let outcome = phase(&settings, &log)
        .await
        .unwrap_or_else(|error| panic!("ensure_running: {error}\n{}", moto.log()));

    let mut expected = vec![first.clone(), second.clone()];
    expected.sort();
    let selected: Vec<&str> = outcome
        .instances
        .iter()
        .map(|instance| instance.instance_id.as_str())
        .collect();
    assert_eq!(selected, expected, "{outcome:#?}");
    assert!(outcome
        .instances
        .iter()
        .all(|instance| instance.state == "running"));
    assert_eq!(outcome.started, vec![second.clone()]);
    assert_eq!(
        outcome.platform().map(|(id, _)| id),
        Some(expected[0].clone())
    );
    let lines = lines(&mut receiver);
    assert_logged(&lines, &format!("found {first} (running)"));
    assert_logged(&lines, &format!("found {second} (stopped)"));
    assert!(
        !lines.iter().any(|line| line.contains(&terminated)),
        "{lines:#?}"
    );

    // Two filters select the instances carrying both.
    let settings = Ec2Settings {
        tag_filters: [
            ("Role".to_owned(), "platform".to_owned()),
            ("Team".to_owned(), "core".to_owned()),
        ]
        .into(),
        ..moto.settings()
    };
    let outcome = phase(&settings, &log_sink().0)
        .await
        .expect("ensure_running with two tag filters");
    assert_eq!(ids(&outcome), vec![first.clone()]);
}

#[tokio::test]
async fn no_instance_matching_the_tag_filters_names_the_filters() {
    let moto = Moto::start().await;
    moto.run_instance(&[("Role", "worker")]).await;
    let settings = Ec2Settings {
        tag_filters: [("Role".to_owned(), "platform".to_owned())].into(),
        ..moto.settings()
    };
    let error = phase(&settings, &log_sink().0)
        .await
        .expect_err("nothing is tagged Role=platform");
    assert!(error.contains("Role=platform"), "{error}");
    assert!(error.contains("ec2.tag_filters"), "{error}");
    assert!(error.contains(REGION), "{error}");
}

#[tokio::test]
async fn unknown_instance_id_names_it_and_the_setting() {
    let moto = Moto::start().await;
    let known = moto.run_instance(&[]).await;
    let settings = Ec2Settings {
        instance_ids: vec![known.clone(), UNKNOWN_ID.to_owned()],
        ..moto.settings()
    };
    let error = phase(&settings, &log_sink().0)
        .await
        .expect_err("the id does not exist");
    assert_eq!(
        error,
        format!("no EC2 instance {UNKNOWN_ID} in region {REGION}: check ec2.instance_ids (and ec2.region)")
    );
}

#[tokio::test]
async fn terminated_instance_is_refused_not_started() {
    let moto = Moto::start().await;
    let id = moto.run_instance(&[]).await;
    moto.terminate_instance(&id).await;
    let settings = Ec2Settings {
        instance_ids: vec![id.clone()],
        ..moto.settings()
    };
    let error = phase(&settings, &log_sink().0)
        .await
        .expect_err("a terminated instance cannot be started");
    assert!(
        error.contains(&id) && error.contains("terminated") && error.contains("cannot be started"),
        "{error}"
    );
    // moto itself would "start" a terminated instance; the phase must not ask it to.
    assert_eq!(moto.state(&id).await, "terminated");
}

#[tokio::test]
async fn stopped_instance_is_left_stopped_when_start_if_stopped_is_off() {
    let moto = Moto::start().await;
    let id = moto.run_instance(&[]).await;
    moto.stop_instance(&id).await;
    let settings = Ec2Settings {
        instance_ids: vec![id.clone()],
        start_if_stopped: false,
        ..moto.settings()
    };
    // Said at once, not after waiting for a state that cannot come: the default wait_timeout
    // (300 s) is far beyond the bound.
    let error = bounded("the phase", phase(&settings, &log_sink().0))
        .await
        .expect_err("the instance is stopped and may not be started");
    assert!(
        error.contains(&id) && error.contains("ec2.start_if_stopped"),
        "{error}"
    );
    assert_eq!(moto.state(&id).await, "stopped");
}

#[tokio::test]
async fn refused_permission_is_named() {
    let (moto, describe_only) = Moto::start_with_iam().await;
    let id = moto.run_instance(&[]).await;
    moto.stop_instance(&id).await;
    let settings = Ec2Settings {
        instance_ids: vec![id.clone()],
        ..moto.settings()
    };
    let config = aws_config::SdkConfig::builder()
        .behavior_version(aws_config::BehaviorVersion::latest())
        .credentials_provider(aws_sdk_ec2::config::SharedCredentialsProvider::new(
            describe_only.credentials(),
        ))
        .build();
    let (log, mut receiver) = log_sink();
    let error = ec2::ensure_running_with(&settings, &config, &log)
        .await
        .expect_err("the user may describe but not start instances");
    assert!(
        error.starts_with("AWS refused ec2:StartInstances"),
        "{error}\n{}",
        moto.log()
    );
    assert!(!error.contains(&describe_only.secret), "{error}");
    assert_logged(&lines(&mut receiver), &format!("found {id} (stopped)"));
    assert_eq!(moto.state(&id).await, "stopped");
}

#[tokio::test]
async fn credentials_aws_rejects_are_reported_as_such() {
    let (moto, _) = Moto::start_with_iam().await;
    let id = moto.run_instance(&[]).await;
    // moto's default keys belong to no IAM user of this moto.
    let settings = Ec2Settings {
        instance_ids: vec![id],
        ..moto.settings()
    };
    let error = phase(&settings, &log_sink().0)
        .await
        .expect_err("moto does not know the environment's keys");
    assert!(
        error.starts_with("AWS rejected the credentials for ec2:DescribeInstances (AuthFailure)"),
        "{error}"
    );
    assert!(error.contains("AWS_ACCESS_KEY_ID"), "{error}");
}

#[tokio::test]
async fn refused_connection_fails_quickly_naming_the_endpoint() {
    // Held bound and never listening: connections to it are refused.
    let port = e2e::closed_port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let settings = Ec2Settings {
        enabled: true,
        region: Some(REGION.to_owned()),
        endpoint_url: Some(endpoint.clone()),
        instance_ids: vec![UNKNOWN_ID.to_owned()],
        ..Ec2Settings::default()
    };
    let error = bounded("the phase", phase(&settings, &log_sink().0))
        .await
        .expect_err("nothing listens there");
    assert!(
        error.starts_with(&format!("cannot reach the EC2 endpoint {endpoint}")),
        "{error}"
    );
    assert!(error.contains("ec2.endpoint_url"), "{error}");
}

/// A stand-in EC2 API whose one instance never leaves `pending`: moto's transitions are
/// instantaneous, so only a stub can hold an instance between states.
async fn pending_forever_endpoint() -> (String, Arc<AtomicUsize>) {
    async fn answer(State(calls): State<Arc<AtomicUsize>>, body: String) -> (HeaderMap, String) {
        calls.fetch_add(1, Ordering::SeqCst);
        assert!(body.contains("Action=DescribeInstances"), "{body}");
        let mut headers = HeaderMap::new();
        headers.insert("content-type", "text/xml;charset=UTF-8".parse().unwrap());
        let xml = format!(
            r#"<?xml version="1.0" encoding="UTF-8"?>
<DescribeInstancesResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">
  <requestId>stub</requestId>
  <reservationSet><item>
    <reservationId>r-0123456789abcdef0</reservationId>
    <ownerId>123456789012</ownerId>
    <instancesSet><item>
      <instanceId>{UNKNOWN_ID}</instanceId>
      <instanceState><code>0</code><name>pending</name></instanceState>
      <privateIpAddress>10.0.0.5</privateIpAddress>
    </item></instancesSet>
  </item></reservationSet>
</DescribeInstancesResponse>"#
        );
        (headers, xml)
    }
    let calls = Arc::new(AtomicUsize::new(0));
    let app = Router::new()
        .route("/", post(answer))
        .with_state(calls.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the stub");
    let address = listener.local_addr().expect("stub address");
    tokio::spawn(axum::serve(listener, app).into_future());
    (format!("http://{address}"), calls)
}

#[tokio::test]
async fn instance_not_running_within_wait_timeout_is_named_with_its_state() {
    let (endpoint, calls) = pending_forever_endpoint().await;
    let settings = Ec2Settings {
        enabled: true,
        region: Some(REGION.to_owned()),
        endpoint_url: Some(endpoint),
        instance_ids: vec![UNKNOWN_ID.to_owned()],
        wait_timeout: 3,
        ..Ec2Settings::default()
    };
    let started = Instant::now();
    let error = bounded("the phase", phase(&settings, &log_sink().0))
        .await
        .expect_err("the instance stays pending");
    let elapsed = started.elapsed();
    assert_eq!(
        error,
        format!("EC2 instances not running after ec2.wait_timeout = 3 s: {UNKNOWN_ID} (pending); raise ec2.wait_timeout or check the instances in region {REGION}")
    );
    // It waited the whole wait_timeout (a lower bound holds on any machine, however slow).
    assert!(elapsed >= Duration::from_secs(3), "took {elapsed:?}");
    // Backoff: polls at 0, 0.5, 1.5 and 3 s (the last one at the deadline).
    let calls = calls.load(Ordering::SeqCst);
    assert!((3..=6).contains(&calls), "{calls} DescribeInstances calls");
}

/// What a child run of this binary reports: the phase's result and how long it took.
#[derive(Debug)]
struct ChildReport<T> {
    result: T,
    elapsed_ms: u64,
}

fn child_role() -> Option<String> {
    std::env::var(CHILD_ROLE).ok()
}

fn report_to_parent(result: serde_json::Value, started: Instant) {
    let report = serde_json::json!({
        "result": result,
        "elapsed_ms": started.elapsed().as_millis() as u64,
    });
    println!("{CHILD_REPORT}{report}");
}

/// The test's name as the harness filters it: its path within the suite.
fn qualified(test: &str) -> String {
    match module_path!().split_once("::") {
        Some((_, module)) => format!("{module}::{test}"),
        None => test.to_owned(),
    }
}

/// Runs `test` of this binary in a child process whose environment holds only PATH and `env`,
/// and returns its report.
async fn run_child(test: &str, env: &[(&str, String)]) -> ChildReport<serde_json::Value> {
    let binary = std::env::current_exe().expect("the test binary's path");
    let mut command = tokio::process::Command::new(binary);
    command
        .args([
            &qualified(test),
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().map(|(key, value)| (*key, value.as_str())))
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let output = tokio::time::timeout(Duration::from_secs(60), command.output())
        .await
        .expect("the child test finished within 60 s")
        .expect("run the child test");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "child {test} failed: {}\n{stdout}\n{stderr}",
        output.status
    );
    let report = stdout
        .lines()
        .find_map(|line| line.split_once(CHILD_REPORT).map(|(_, report)| report))
        .unwrap_or_else(|| panic!("child {test} printed no report:\n{stdout}\n{stderr}"));
    let mut report: serde_json::Value =
        serde_json::from_str(report).expect("parse the child's report");
    ChildReport {
        result: report["result"].take(),
        elapsed_ms: report["elapsed_ms"].as_u64().expect("elapsed_ms"),
    }
}

#[tokio::test]
async fn no_credentials_is_a_clear_error() {
    if child_role().as_deref() == Some("no_credentials") {
        let settings = Ec2Settings {
            enabled: true,
            region: Some(REGION.to_owned()),
            endpoint_url: std::env::var(CHILD_ENDPOINT).ok(),
            instance_ids: vec![UNKNOWN_ID.to_owned()],
            ..Ec2Settings::default()
        };
        let started = Instant::now();
        let result = ec2::ensure_running(&settings, &log_sink().0).await;
        report_to_parent(serde_json::to_value(result).expect("serialize"), started);
        return;
    }
    let moto = Moto::start().await;
    let empty = moto.dir().join("empty");
    std::fs::write(&empty, "").expect("write an empty AWS file");
    let home = moto.dir().join("home");
    std::fs::create_dir_all(&home).expect("create an empty home");
    let report = run_child(
        "no_credentials_is_a_clear_error",
        &[
            (CHILD_ROLE, "no_credentials".to_owned()),
            (CHILD_ENDPOINT, moto.endpoint.clone()),
            ("HOME", home.display().to_string()),
            ("AWS_SHARED_CREDENTIALS_FILE", empty.display().to_string()),
            ("AWS_CONFIG_FILE", empty.display().to_string()),
            ("AWS_EC2_METADATA_DISABLED", "true".to_owned()),
        ],
    )
    .await;
    let result: Result<Ec2Outcome, String> =
        serde_json::from_value(report.result).expect("the child's result");
    let error = result.expect_err("the chain has no credentials");
    assert!(
        error.starts_with("no AWS credentials found: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or run on an instance with a role"),
        "{error}"
    );
    // Found out before any request.
    assert!(!moto.log().contains("POST /"), "{}", moto.log());
}

/// A stand-in IMDSv2: a session token, then instance-id and local-ipv4 (no public-ipv4, as
/// for an instance without a public address).
async fn imds_endpoint() -> String {
    const TOKEN: &str = "stub-session-token";
    fn authorized(headers: &HeaderMap) -> bool {
        headers
            .get("x-aws-ec2-metadata-token")
            .is_some_and(|value| value == TOKEN)
    }
    let app = Router::new()
        .route(
            "/latest/api/token",
            put(|headers: HeaderMap| async move {
                let ttl = headers
                    .get("x-aws-ec2-metadata-token-ttl-seconds")
                    .cloned()
                    .expect("IMDSv2 token requests carry a TTL");
                let mut answer = HeaderMap::new();
                answer.insert("x-aws-ec2-metadata-token-ttl-seconds", ttl);
                (answer, TOKEN)
            }),
        )
        .route(
            "/latest/meta-data/instance-id",
            get(|headers: HeaderMap| async move {
                if authorized(&headers) {
                    (StatusCode::OK, UNKNOWN_ID)
                } else {
                    (StatusCode::UNAUTHORIZED, "")
                }
            }),
        )
        .route(
            "/latest/meta-data/local-ipv4",
            get(|headers: HeaderMap| async move {
                if authorized(&headers) {
                    (StatusCode::OK, "10.1.2.3")
                } else {
                    (StatusCode::UNAUTHORIZED, "")
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the IMDS stub");
    let address = listener.local_addr().expect("IMDS stub address");
    tokio::spawn(axum::serve(listener, app).into_future());
    format!("http://{address}")
}

#[tokio::test]
async fn identity_from_imds_reads_imdsv2() {
    if child_role().as_deref() == Some("imds") {
        let started = Instant::now();
        let identity = ec2::identity_from_imds().await;
        report_to_parent(serde_json::json!(identity), started);
        return;
    }
    let endpoint = imds_endpoint().await;
    let report = run_child(
        "identity_from_imds_reads_imdsv2",
        &[
            (CHILD_ROLE, "imds".to_owned()),
            ("AWS_EC2_METADATA_SERVICE_ENDPOINT", endpoint),
        ],
    )
    .await;
    assert_eq!(report.result, serde_json::json!([UNKNOWN_ID, "10.1.2.3"]));
}

#[tokio::test]
async fn identity_from_imds_gives_up_on_a_silent_endpoint() {
    if child_role().as_deref() == Some("imds_silent") {
        let started = Instant::now();
        let identity = ec2::identity_from_imds().await;
        report_to_parent(serde_json::json!(identity), started);
        return;
    }
    // Accepts connections and never answers, like a firewalled metadata address.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a silent listener");
    let address = silent.local_addr().expect("silent address");
    let held = tokio::spawn(async move {
        let mut connections = Vec::new();
        while let Ok((connection, _)) = silent.accept().await {
            connections.push(connection);
        }
    });
    let report = run_child(
        "identity_from_imds_gives_up_on_a_silent_endpoint",
        &[
            (CHILD_ROLE, "imds_silent".to_owned()),
            (
                "AWS_EC2_METADATA_SERVICE_ENDPOINT",
                format!("http://{address}"),
            ),
        ],
    )
    .await;
    held.abort();
    // It gave up (the child is bounded by run_child); how long it took is information only.
    assert_eq!(report.result, serde_json::Value::Null);
    eprintln!(
        "identity_from_imds gave up on a silent endpoint after {} ms",
        report.elapsed_ms
    );
}

#[tokio::test]
async fn identity_from_imds_is_none_when_metadata_is_disabled() {
    if child_role().as_deref() == Some("imds_disabled") {
        let started = Instant::now();
        let identity = ec2::identity_from_imds().await;
        report_to_parent(serde_json::json!(identity), started);
        return;
    }
    // A metadata endpoint that counts connections: disabled means not even one.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a counting listener");
    let address = listener.local_addr().expect("listener address");
    let connections = Arc::new(AtomicUsize::new(0));
    let counted = connections.clone();
    let counter = tokio::spawn(async move {
        while listener.accept().await.is_ok() {
            counted.fetch_add(1, Ordering::SeqCst);
        }
    });
    let report = run_child(
        "identity_from_imds_is_none_when_metadata_is_disabled",
        &[
            (CHILD_ROLE, "imds_disabled".to_owned()),
            ("AWS_EC2_METADATA_DISABLED", "true".to_owned()),
            (
                "AWS_EC2_METADATA_SERVICE_ENDPOINT",
                format!("http://{address}"),
            ),
        ],
    )
    .await;
    counter.abort();
    assert_eq!(report.result, serde_json::Value::Null);
    assert_eq!(connections.load(Ordering::SeqCst), 0);
}

fn ids(outcome: &Ec2Outcome) -> Vec<String> {
    outcome
        .instances
        .iter()
        .map(|instance| instance.instance_id.clone())
        .collect()
}

fn enabled() -> Ec2Settings {
    Ec2Settings {
        enabled: true,
        instance_ids: vec!["i-0abc1234".to_owned()],
        ..Ec2Settings::default()
    }
}

#[test]
fn validate_accepts_sensible_settings() {
    assert_eq!(Ec2Settings::default().validate(), Ok(()));
    assert_eq!(enabled().validate(), Ok(()));
    let full = Ec2Settings {
        region: Some("eu-west-3".into()),
        endpoint_url: Some("https://ec2.eu-west-3.amazonaws.com".into()),
        instance_ids: vec!["i-0123456789abcdef0".into(), "i-12345678".into()],
        tag_filters: [
            ("Role".into(), "platform".into()),
            ("Env".into(), "".into()),
        ]
        .into(),
        wait_timeout: 3600,
        ..enabled()
    };
    assert_eq!(full.validate(), Ok(()));
    let by_tags = Ec2Settings {
        instance_ids: vec![],
        tag_filters: [("Role".into(), "platform".into())].into(),
        wait_timeout: 1,
        ..enabled()
    };
    assert_eq!(by_tags.validate(), Ok(()));
}

#[test]
fn validate_names_the_key_to_fix() {
    let cases: Vec<(Ec2Settings, &str)> = vec![
        (
            Ec2Settings {
                instance_ids: vec![],
                ..enabled()
            },
            "ec2.instance_ids: set instance_ids or tag_filters when ec2.enabled = true",
        ),
        (
            Ec2Settings {
                wait_timeout: 0,
                ..enabled()
            },
            "ec2.wait_timeout: must be between 1 and 3600 seconds, got 0",
        ),
        (
            Ec2Settings {
                wait_timeout: 3601,
                ..enabled()
            },
            "ec2.wait_timeout: must be between 1 and 3600 seconds, got 3601",
        ),
        (
            Ec2Settings {
                endpoint_url: Some("localhost:5000".into()),
                ..enabled()
            },
            "ec2.endpoint_url: \"localhost:5000\" is not an http(s) URL like \"http://127.0.0.1:5000\"",
        ),
        (
            Ec2Settings {
                endpoint_url: Some("ftp://127.0.0.1:5000".into()),
                ..enabled()
            },
            "ec2.endpoint_url: \"ftp://127.0.0.1:5000\" is not an http(s) URL like \"http://127.0.0.1:5000\"",
        ),
        (
            Ec2Settings {
                instance_ids: vec!["i-0ABC".into()],
                ..enabled()
            },
            "ec2.instance_ids: \"i-0ABC\" is not an instance id like \"i-0123456789abcdef0\"",
        ),
        (
            Ec2Settings {
                instance_ids: vec!["ami-12c6146b".into()],
                ..enabled()
            },
            "ec2.instance_ids: \"ami-12c6146b\" is not an instance id like \"i-0123456789abcdef0\"",
        ),
        (
            Ec2Settings {
                instance_ids: vec!["i-".into()],
                ..enabled()
            },
            "ec2.instance_ids: \"i-\" is not an instance id like \"i-0123456789abcdef0\"",
        ),
        (
            Ec2Settings {
                instance_ids: vec!["i-0abc1234".into(), "i-0abc1234".into()],
                ..enabled()
            },
            "ec2.instance_ids: i-0abc1234 is listed twice",
        ),
        (
            Ec2Settings {
                region: Some("US East".into()),
                ..enabled()
            },
            "ec2.region: \"US East\" is not an AWS region name like \"us-east-1\"",
        ),
        (
            Ec2Settings {
                tag_filters: [(String::new(), "platform".into())].into(),
                ..enabled()
            },
            "ec2.tag_filters: tag key \"\" must be 1 to 128 characters",
        ),
    ];
    for (settings, expected) in cases {
        assert_eq!(
            settings.validate(),
            Err(expected.to_owned()),
            "{settings:?}"
        );
    }
}

#[tokio::test]
async fn ensure_running_refuses_invalid_settings_before_calling_aws() {
    let settings = Ec2Settings {
        wait_timeout: 0,
        ..enabled()
    };
    let error = ec2::ensure_running(&settings, &log_sink().0)
        .await
        .expect_err("invalid settings");
    assert!(error.starts_with("ec2.wait_timeout"), "{error}");
}

#[test]
fn settings_defaults_and_unknown_keys() {
    let settings: Ec2Settings = serde_json::from_value(
        serde_json::json!({ "enabled": true, "instance_ids": ["i-0abc1234"] }),
    )
    .expect("minimal settings");
    assert_eq!(settings, enabled());
    assert!(settings.start_if_stopped);
    assert_eq!(settings.wait_timeout, 300);
    let error =
        serde_json::from_value::<Ec2Settings>(serde_json::json!({ "instance_id": "i-0abc1234" }))
            .expect_err("a misspelt key");
    assert!(error.to_string().contains("instance_id"), "{error}");
}
