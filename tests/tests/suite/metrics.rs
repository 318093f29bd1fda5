//! `/metrics` parses as Prometheus text and moves with traffic.

use std::time::Duration;

use e2e::{wait_until, HostOptions, TestHost, ADMIN_KEY, DEVELOPER_KEY, USER_KEY};
use serde_json::json;

async fn scrape(host: &TestHost) -> prometheus_parse::Scrape {
    let response = host
        .client()
        .get(format!("{}/metrics", host.url))
        .send()
        .await
        .expect("scrape");
    assert_eq!(response.status().as_u16(), 200);
    let text = response.text().await.expect("text");
    let lines = text.lines().map(|line| Ok(line.to_owned()));
    prometheus_parse::Scrape::parse(lines).expect("Prometheus text that parses")
}

/// The value of the sample `name` whose labels include all of `labels` (0 when absent).
fn value(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|sample| sample.metric == name)
        .filter(|sample| {
            labels
                .iter()
                .all(|(key, wanted)| sample.labels.get(key) == Some(*wanted))
        })
        .map(|sample| match sample.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => 0.0,
        })
        .sum()
}

#[tokio::test]
async fn metrics_parse_and_move_with_traffic() {
    let dir = tempfile::tempdir().expect("temp dir");
    let host = TestHost::start(
        dir.path(),
        HostOptions {
            settings: "health_check_interval_secs = 0".into(),
            ..HostOptions::default()
        },
    )
    .await;
    let before = scrape(&host).await;
    let health = [("route", "/health"), ("status", "200")];
    for _ in 0..3 {
        host.get("/health", None).await;
    }
    host.get("/api/plugins", None).await;
    let after = scrape(&host).await;
    let counted = value(&after, "powerautomation_http_requests_total", &health)
        - value(&before, "powerautomation_http_requests_total", &health);
    assert_eq!(counted, 3.0, "three /health requests counted");
    assert_eq!(
        value(
            &after,
            "powerautomation_http_requests_total",
            &[("route", "/api/plugins"), ("status", "401")]
        ),
        1.0
    );
    assert!(
        value(
            &after,
            "powerautomation_http_request_duration_seconds_count",
            &[("route", "/health")]
        ) >= 3.0
    );
    assert_eq!(
        value(
            &after,
            "powerautomation_plugin_state",
            &[("plugin", "deployment_mcp"), ("state", "active")]
        ),
        1.0
    );

    let events = host
        .client()
        .get(format!("{}/api/deployment/events", host.url))
        .header("X-API-Key", USER_KEY)
        .send()
        .await
        .expect("subscribe");
    assert_eq!(
        value(&scrape(&host).await, "powerautomation_sse_subscribers", &[]),
        1.0
    );
    let (status, answer) = host
        .call(
            reqwest::Method::POST,
            "/api/deployment/trigger-local",
            Some(ADMIN_KEY),
            Some(json!({"environments": ["local_demo"]})),
        )
        .await;
    assert_eq!(status, 202, "{answer}");
    let counted = wait_until(Duration::from_secs(30), || async {
        value(
            &scrape(&host).await,
            "powerautomation_deployments_total",
            &[("status", "completed")],
        ) == 1.0
    })
    .await;
    assert!(counted, "the completed deployment is counted");
    let id = answer["deployment_id"].as_str().unwrap_or_default();
    let (status, _) = host
        .get(
            &format!("/api/deployment/deployments/{id}"),
            Some(DEVELOPER_KEY),
        )
        .await;
    assert_eq!(status, 200);
    drop(events);
    let closed = wait_until(Duration::from_secs(10), || async {
        value(&scrape(&host).await, "powerautomation_sse_subscribers", &[]) == 0.0
    })
    .await;
    assert!(closed, "a closed stream is no longer counted");
}

/// `promtool check metrics` on a scrape: its exit status and what it said.
fn promtool(text: &str) -> (bool, String) {
    use std::io::Write as _;
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|error| {
            panic!("promtool could not be run ({error}); install it: bash tests/peers.sh")
        });
    if let Some(mut input) = child.stdin.take() {
        input.write_all(text.as_bytes()).expect("feed promtool");
    }
    let output = child.wait_with_output().expect("promtool's answer");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), said)
}

#[tokio::test]
async fn every_metric_passes_promtool_in_both_formats() {
    let dir = tempfile::tempdir().expect("temp dir");
    let host = TestHost::start(dir.path(), HostOptions::default()).await;
    // Every family has samples: requests, a finished deployment, an environment's health.
    let id = e2e::scenario::started(&host, json!({"environments": ["local_demo"]})).await;
    e2e::scenario::finished(&host, &id).await;
    let text = |accept: &'static str| {
        let host = &host;
        async move {
            let response = host
                .client()
                .get(format!("{}/metrics", host.url))
                .header("accept", accept)
                .send()
                .await
                .expect("scrape");
            let kind = response
                .headers()
                .get("content-type")
                .and_then(|value| value.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            (kind, response.text().await.unwrap_or_default())
        }
    };
    let (kind, plain) = text("*/*").await;
    assert!(kind.starts_with("text/plain; version=0.0.4"), "{kind}");
    assert!(
        plain.contains("powerautomation_deployments_total{"),
        "{plain}"
    );
    let (clean, said) = promtool(&plain);
    assert!(
        clean && said.trim().is_empty(),
        "promtool on the text format:\n{said}\n{plain}"
    );
    let (kind, openmetrics) = text("application/openmetrics-text; version=1.0.0").await;
    assert!(kind.starts_with("application/openmetrics-text"), "{kind}");
    assert!(openmetrics.ends_with("# EOF\n"), "{openmetrics}");
}
