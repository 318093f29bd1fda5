//! The MCP interface, driven by the official Python SDK (`tests/mcp/drive.py`) against the real
//! host at `/api/deployment/mcp` and against `deployment-mcp mcp` on stdio. The SDK lives in
//! `tests/mcp/.venv`; `tests/peers.sh` creates it. A missing one fails the test with that
//! instruction.

use std::{path::PathBuf, process::Stdio, time::Duration};

use e2e::{
    cli_binary, repo_root,
    scenario::{local, options},
    HostOptions, TestHost, ADMIN_KEY, DEVELOPER_KEY, USER_KEY,
};
use reqwest::Method;

/// The driver bounds nothing itself beyond the SDK's timeouts; this catches a hung one.
const DRIVER_TIMEOUT: Duration = Duration::from_secs(180);
/// A secret of a disabled environment, which no answer may contain.
const SECRET: &str = "mcp-secret-token-value";

fn python() -> PathBuf {
    let python = repo_root().join("tests/mcp/.venv/bin/python");
    assert!(
        python.is_file(),
        "{} is missing: run tests/peers.sh (it creates the venv with the MCP Python SDK)",
        python.display()
    );
    python
}

fn host_options(settings: &str) -> HostOptions {
    let mut environments = vec![local(
        "mcp_local",
        &["sh", "-c", "echo one; echo two; echo three"],
        30,
    )];
    environments.push(serde_json::json!({
        "environment_id": "mcp_api", "environment_type": "docker_container",
        "connection_method": "http_api", "host": "127.0.0.1", "port": e2e::closed_port(),
        "api_token": SECRET, "enabled": false}));
    let mut options = options(environments);
    options.settings = format!("health_check_interval_secs = 0\n{settings}");
    options
}

/// Runs the driver with `args`; fails the test with its output unless it passes.
async fn drive(args: &[String]) -> String {
    let mut command = tokio::process::Command::new(python());
    command
        .arg(repo_root().join("tests/mcp/drive.py"))
        .args(["--secret", SECRET])
        .args(args)
        .current_dir(repo_root())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = command.spawn().expect("start the MCP driver");
    let output = tokio::time::timeout(DRIVER_TIMEOUT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("the MCP driver {args:?} hung for {DRIVER_TIMEOUT:?}"))
        .expect("wait for the MCP driver");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    assert!(
        output.status.success(),
        "the MCP driver {args:?} failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        output.status
    );
    stdout
}

fn endpoint(host: &TestHost) -> String {
    format!("{}/api/deployment/mcp", host.url)
}

#[tokio::test]
async fn an_agent_lists_calls_follows_and_reads_over_http() {
    let dir = tempfile::tempdir().expect("temp dir");
    let host = TestHost::start(dir.path(), host_options("")).await;
    drive(&[
        "http".into(),
        endpoint(&host),
        ADMIN_KEY.into(),
        "admin".into(),
    ])
    .await;
    drive(&[
        "http".into(),
        endpoint(&host),
        USER_KEY.into(),
        "user".into(),
    ])
    .await;
    drive(&[
        "http".into(),
        endpoint(&host),
        DEVELOPER_KEY.into(),
        "developer".into(),
    ])
    .await;
    // A tool the caller's role may not call is refused, and recorded with the tool's name.
    let (status, refused) = host
        .get(
            "/api/audit?via=mcp&outcome=denied&actor=viewer",
            Some(ADMIN_KEY),
        )
        .await;
    assert_eq!(status, 200, "{refused}");
    let entries = refused["entries"].as_array().cloned().unwrap_or_default();
    assert!(
        entries
            .iter()
            .any(|entry| entry["tool"] == "trigger_deployment" && entry["action"] == "mcp.call"),
        "{refused}"
    );

    // The endpoint is behind the host's keys and refuses foreign browser origins.
    let initialize = serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {},
                   "clientInfo": {"name": "probe", "version": "1"}}});
    let post = |key: Option<&str>, origin: Option<&str>| {
        let mut request = host
            .client()
            .post(endpoint(&host))
            .header("accept", "application/json, text/event-stream")
            .json(&initialize);
        if let Some(key) = key {
            request = request.header("authorization", format!("Bearer {key}"));
        }
        if let Some(origin) = origin {
            request = request.header("origin", origin);
        }
        request.send()
    };
    let anonymous = post(None, None).await.expect("POST without a key");
    assert_eq!(anonymous.status(), 401);
    let foreign = post(Some(ADMIN_KEY), Some("http://attacker.invalid"))
        .await
        .expect("POST from a foreign origin");
    assert_eq!(foreign.status(), 403, "a foreign Origin is refused");
    let foreign = post(None, Some("http://attacker.invalid"))
        .await
        .expect("POST from a foreign origin without a key");
    assert_eq!(
        foreign.status(),
        403,
        "the Origin is checked before the key"
    );
    let local_page = post(Some(ADMIN_KEY), Some(&host.url)).await.expect("POST");
    assert_eq!(local_page.status(), 200, "a loopback Origin is accepted");
}

#[tokio::test]
async fn read_only_hides_writes_and_disabled_is_not_found() {
    let dir = tempfile::tempdir().expect("temp dir");
    let host = TestHost::start(dir.path(), host_options("mcp = { read_only = true }")).await;
    drive(&[
        "http".into(),
        endpoint(&host),
        ADMIN_KEY.into(),
        "read-only".into(),
    ])
    .await;
    drop(host);

    let dir = tempfile::tempdir().expect("temp dir");
    let host = TestHost::start(dir.path(), host_options("mcp = { enabled = false }")).await;
    let (status, body) = host
        .call(
            Method::POST,
            "/api/deployment/mcp",
            Some(ADMIN_KEY),
            Some(serde_json::json!({})),
        )
        .await;
    assert_eq!(status, 404, "{body}");
}

#[tokio::test]
async fn a_hot_swap_keeps_an_mcp_client_working() {
    let dir = tempfile::tempdir().expect("temp dir");
    let host = TestHost::start(dir.path(), host_options("")).await;
    host.install_plugin("deployment_mcp");
    drive(&[
        "http".into(),
        endpoint(&host),
        ADMIN_KEY.into(),
        "swap".into(),
        "--admin-key".into(),
        ADMIN_KEY.into(),
    ])
    .await;
}

#[tokio::test]
async fn stdio_serves_the_same_tools_in_process() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("environments.json");
    std::fs::write(
        &file,
        e2e::scenario::environments(vec![local(
            "mcp_local",
            &["sh", "-c", "echo a; echo b; echo c; echo d"],
            30,
        )]),
    )
    .expect("write the environments file");
    let data = dir.path().join("data");
    drive(&[
        "stdio".into(),
        "admin".into(),
        "--".into(),
        cli_binary().display().to_string(),
        "--environments".into(),
        file.display().to_string(),
        "--data-dir".into(),
        data.display().to_string(),
        "mcp".into(),
    ])
    .await;
}

#[tokio::test]
async fn stdio_against_a_host_has_the_keys_role() {
    let dir = tempfile::tempdir().expect("temp dir");
    let host = TestHost::start(dir.path(), host_options("")).await;
    drive(&[
        "stdio".into(),
        "user".into(),
        "--".into(),
        cli_binary().display().to_string(),
        "--server".into(),
        host.url.clone(),
        "--api-key".into(),
        USER_KEY.into(),
        "mcp".into(),
    ])
    .await;
}

#[tokio::test]
async fn every_write_tool_succeeds_for_an_admin() {
    let dir = tempfile::tempdir().expect("temp dir");
    let health = e2e::targets::Target::start(e2e::targets::Behaviour::default()).await;
    let flag = dir.path().join("flaky-ran-once");
    let flag_text = flag.display().to_string();
    let mut healthy = local("mcp_healthy", &["true"], 30);
    healthy["health_check_url"] = serde_json::json!(health.url("/health"));
    let environments = vec![
        local("mcp_local", &["true"], 30),
        // Fails the first time, succeeds after.
        local(
            "mcp_flaky",
            &[
                "sh",
                "-c",
                "[ -e \"$0\" ] || { touch \"$0\"; exit 1; }",
                &flag_text,
            ],
            30,
        ),
        local("mcp_slow", &["sleep", "600"], 900),
        healthy,
    ];
    let mut options = options(environments);
    options.settings = "health_check_interval_secs = 0".into();
    let host = TestHost::start(dir.path(), options).await;
    drive(&[
        "http".into(),
        endpoint(&host),
        ADMIN_KEY.into(),
        "writes".into(),
    ])
    .await;
}
