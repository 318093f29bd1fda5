//! The operator dashboard (`GET /`) in a real browser: headless Debian Chromium driven by
//! playwright-core (`tests/browser/dashboard.mjs`) against the real host. Screenshots land in
//! `target/screenshots/`.
//!
//! Needs `node`, `npm ci --prefix tests/browser` and `/usr/bin/chromium` (`apt-get install -y
//! chromium`); `.ci/run` installs them. A missing one fails the test with that instruction.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use e2e::{repo_root, HostOptions, TestHost, ADMIN_KEY, USER_KEY};

const CHROMIUM: &str = "/usr/bin/chromium";
/// The script bounds its own waits (150 s in all); this only catches a hung process.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(240);

/// The demo environments, with a `local_demo` slow enough (1 s) to watch it run, a `slow_demo`
/// that runs until the page cancels it, and the original's ssh `mac_local_001` pointed at a
/// loopback port that refuses connections.
fn environments() -> String {
    let port = e2e::closed_port();
    format!(
        r#"{{"environments": [
  {{"environment_id": "local_demo", "environment_type": "linux_local", "connection_method": "local",
   "command": ["sh", "-c", "echo starting the demo; sleep 1; echo done"], "timeout": 30}},
  {{"environment_id": "slow_demo", "environment_type": "docker_container", "connection_method": "local",
   "command": ["sh", "-c", "echo waiting; sleep 60"], "timeout": 120}},
  {{"environment_id": "mac_local_001", "environment_type": "mac_local", "connection_method": "ssh",
   "host": "127.0.0.1", "port": {port}, "username": "alex", "ssh_key_path": "~/.ssh/id_ed25519",
   "init_script_path": "./init_aicore.sh", "health_check_url": "http://127.0.0.1:{port}/health",
   "timeout": 300}},
  {{"environment_id": "api_demo", "environment_type": "docker_container", "connection_method": "http_api",
   "host": "127.0.0.1", "port": {port}, "api_token": "secret-token-value", "enabled": false}}
]}}"#
    )
}

fn browser_dir() -> PathBuf {
    repo_root().join("tests/browser")
}

/// `target/screenshots`, next to the profile directories.
fn screenshot_dir() -> PathBuf {
    let target = e2e::artifacts_dir()
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| repo_root().join("target"));
    let dir = target.join("screenshots");
    std::fs::create_dir_all(&dir).expect("create target/screenshots");
    dir
}

/// Fails (never skips) when a tool the browser test needs is missing, saying how to install it.
fn require_browser_tools() {
    let node = std::process::Command::new("node")
        .arg("--version")
        .output()
        .map(|output| output.status.success())
        .unwrap_or(false);
    assert!(
        node,
        "`node` is not on PATH: install Node.js 20 or newer (with npm), then run `npm ci --prefix tests/browser`"
    );
    assert!(
        browser_dir()
            .join("node_modules/playwright-core/package.json")
            .is_file(),
        "tests/browser/node_modules/playwright-core is missing: run `npm ci --prefix tests/browser`"
    );
    assert!(
        Path::new(CHROMIUM).is_file(),
        "{CHROMIUM} is missing: install Debian's Chromium with `apt-get install -y chromium`"
    );
}

/// Runs the browser script against `host` and fails the test, with the script's output and the
/// host's log, unless it exits 0.
async fn run_browser(host: &TestHost, scenario: &str, extra: &[String]) {
    let shots = screenshot_dir();
    let mut command = tokio::process::Command::new("node");
    command
        .arg(browser_dir().join("dashboard.mjs"))
        .arg(&host.url)
        .arg(ADMIN_KEY)
        .arg(&shots)
        .arg(format!("--scenario={scenario}"))
        .args(extra)
        .current_dir(repo_root())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = command.spawn().expect("start node");
    let output = tokio::time::timeout(SCRIPT_TIMEOUT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("the browser script ({scenario}) hung for {SCRIPT_TIMEOUT:?}"))
        .expect("wait for node");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    assert!(
        output.status.success(),
        "the browser script ({scenario}) failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}\n--- host log\n{}",
        output.status,
        host.logs()
    );
}

#[tokio::test]
async fn dashboard_signs_in_triggers_watches_live_and_shows_history_and_logs() {
    require_browser_tools();
    let dir = tempfile::tempdir().expect("temporary directory");
    let host = TestHost::start(
        dir.path(),
        HostOptions {
            environments: environments(),
            ..HostOptions::default()
        },
    )
    .await;

    // The page itself needs no key, and is served with a strict policy.
    let response = host
        .client()
        .get(format!("{}/", host.url))
        .send()
        .await
        .expect("GET /");
    assert_eq!(response.status(), 200);
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    assert!(header("content-type").starts_with("text/html"));
    assert_eq!(header("cache-control"), "no-cache");
    assert_eq!(header("x-content-type-options"), "nosniff");
    assert!(header("content-security-policy").contains("frame-ancestors 'none'"));

    run_browser(&host, "main", &[format!("--user-key={USER_KEY}")]).await;

    // What the page showed is what the API holds.
    let (status, history) = host
        .get(
            "/api/deployment/history?environment=local_demo",
            Some(ADMIN_KEY),
        )
        .await;
    assert_eq!(status, 200, "{history}");
    // The form's first deployment, then the override through the freeze.
    let entries = history["history"].as_array().cloned().unwrap_or_default();
    assert_eq!(entries.len(), 2, "{history}");
    assert!(
        entries.iter().all(|entry| entry["status"] == "completed"),
        "{history}"
    );
    assert_eq!(entries[1]["version"], "1.2.3-e2e", "{history}");
}

#[tokio::test]
async fn dashboard_shows_why_deployments_are_unavailable_when_the_plugin_is_missing() {
    require_browser_tools();
    let dir = tempfile::tempdir().expect("temporary directory");
    let host = TestHost::start(
        dir.path(),
        HostOptions {
            plugin: None,
            ..HostOptions::default()
        },
    )
    .await;
    let (status, body) = host.get("/", None).await;
    assert_eq!(status, 200, "the page is served without the plugin: {body}");
    run_browser(&host, "plugin-missing", &[]).await;
}

#[tokio::test]
async fn dashboard_approves_a_gated_deployment_by_clicking() {
    require_browser_tools();
    let dir = tempfile::tempdir().expect("temporary directory");
    let list = vec![
        e2e::scenario::local("gate_a", &["true"], 30),
        e2e::scenario::local("gate_b", &["true"], 30),
    ];
    let host = TestHost::start(dir.path(), e2e::scenario::options(list)).await;
    let id = e2e::scenario::started(
        &host,
        serde_json::json!({"version": "v-gate", "strategy": {"type": "canary", "canary": 1, "gate": "manual"}}),
    )
    .await;
    e2e::scenario::status_within(&host, &id, e2e::scenario::RUN_TIMEOUT, |status| {
        status == "awaiting_approval"
    })
    .await;
    run_browser(&host, "gate", &[format!("--deployment={id}")]).await;
    let record = e2e::scenario::detail(&host, &id).await;
    assert_eq!(record["status"], "completed", "{record}");
    assert_eq!(record["gate"]["status"], "approved", "{record}");
}
