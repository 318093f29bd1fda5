//! The host with the real plugin and with broken ones: start-up states, 503s, auth, store,
//! configuration errors.

use std::time::Duration;

use e2e::{
    host_binary, repo_root, sha256_hex, HostOptions, TestHost, ADMIN_KEY, DEVELOPER_KEY, USER_KEY,
};
use reqwest::Method;
use serde_json::json;

fn temp() -> tempfile::TempDir {
    tempfile::tempdir().expect("temporary directory")
}

#[tokio::test]
async fn default_config_starts_with_the_plugin_and_the_demo_environment() {
    let dir = temp();
    let plugin = e2e::plugin_library("deployment_mcp");
    let env = vec![
        ("PA_SERVER__LISTEN".to_owned(), "127.0.0.1:0".to_owned()),
        (
            "PA_STORAGE__DATA_DIR".to_owned(),
            dir.path().join("data").display().to_string(),
        ),
        ("PA_LOG__FORMAT".to_owned(), "json".to_owned()),
        (
            "PA_PLUGINS__DEPLOYMENT_MCP__PATH".to_owned(),
            plugin.display().to_string(),
        ),
        (
            "PA_PLUGINS__DEPLOYMENT_MCP__WATCH".to_owned(),
            "false".to_owned(),
        ),
    ];
    let args = vec!["--config".to_owned(), "config/default.toml".to_owned()];
    let host = TestHost::spawn(dir.path(), &args, &env, plugin.clone()).await;

    let (status, health) = host.get("/health", None).await;
    assert_eq!(status, 200);
    assert_eq!(
        health,
        json!({"status": "ok", "plugins": {"deployment_mcp": "active"}})
    );

    // No keys in the default config: the first start wrote a private admin key.
    let key_file = dir.path().join("data/admin.key");
    let key = std::fs::read_to_string(&key_file).expect("admin.key written");
    let key = key.trim();
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key_file).map(|m| m.permissions().mode() & 0o777);
        assert_eq!(mode.ok(), Some(0o600));
    }
    let (status, environments) = host.get("/api/deployment/environments", Some(key)).await;
    assert_eq!(status, 200, "{environments}");
    let ids: Vec<&str> = environments["environments"]
        .as_array()
        .map(|list| {
            list.iter()
                .filter_map(|e| e["environment_id"].as_str())
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(ids, ["local_demo"]);

    let logs = host.logs();
    assert!(logs.contains("admin.key"), "the key file's path is logged");
    assert!(
        !logs.contains(key) && !logs.contains(&sha256_hex(key)),
        "the key itself never is"
    );
}

#[tokio::test]
async fn absent_plugin_leaves_the_core_running_and_deployment_routes_503() {
    let dir = temp();
    let host = TestHost::start(
        dir.path(),
        HostOptions {
            plugin: None,
            ..Default::default()
        },
    )
    .await;

    let (status, health) = host.get("/health", None).await;
    assert_eq!(
        (status, health["plugins"]["deployment_mcp"].as_str()),
        (200, Some("missing"))
    );

    let response = host
        .client()
        .get(format!("{}/api/deployment/status", host.url))
        .header("X-API-Key", USER_KEY)
        .send()
        .await
        .expect("answer");
    assert_eq!(response.status().as_u16(), 503);
    assert!(
        response.headers().get("retry-after").is_some(),
        "Retry-After is set"
    );
    let body: serde_json::Value = response.json().await.expect("JSON body");
    assert_eq!(body["error"], "plugin_unavailable");
    assert_eq!(body["state"], "missing", "{body}");
    // Why (the library's path, the settings) only for an admin; not without a key or for a user.
    for key in [None, Some(USER_KEY)] {
        let (status, body) = host.get("/api/deployment/status", key).await;
        assert_eq!(status, 503, "{body}");
        let message = body["message"].as_str().unwrap_or_default();
        assert!(
            message.contains("missing") && !message.contains("libdeployment_mcp"),
            "{key:?}: {message}"
        );
    }
    let (_, body) = host.get("/api/deployment/status", Some(ADMIN_KEY)).await;
    let message = body["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("missing") && message.contains("libdeployment_mcp.so"),
        "{message}"
    );

    let plugin = host.plugin_status().await;
    assert_eq!(plugin["state"], "missing");
    assert_eq!(
        plugin["path"],
        host.plugin_file.display().to_string(),
        "the path tried is shown"
    );
}

#[tokio::test]
async fn plugin_built_against_another_interface_is_incompatible() {
    let dir = temp();
    let host = TestHost::start(
        dir.path(),
        HostOptions {
            plugin: Some("fixture_wrong_abi"),
            ..Default::default()
        },
    )
    .await;
    let plugin = host.plugin_status().await;
    assert_eq!(plugin["state"], "incompatible", "{plugin}");
    let error = plugin["last_error"].as_str().unwrap_or_default();
    assert!(
        error.contains("2.0.0") && error.contains(plugin_api::INTERFACE_VERSION),
        "names both versions: {error}"
    );
    let (status, body) = host.get("/api/deployment/status", Some(USER_KEY)).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(host.get("/health", None).await.0, 200);
}

#[tokio::test]
async fn plugin_whose_start_fails_is_failed_with_its_message() {
    let dir = temp();
    let host = TestHost::start(
        dir.path(),
        HostOptions {
            plugin: Some("fixture_failing_start"),
            ..Default::default()
        },
    )
    .await;
    let plugin = host.plugin_status().await;
    assert_eq!(plugin["state"], "failed", "{plugin}");
    let error = plugin["last_error"].as_str().unwrap_or_default();
    assert!(
        error.contains("cannot reach the deployment database"),
        "{error}"
    );
    // The reason for an admin; a user learns only that it failed.
    let (status, body) = host.get("/api/deployment/status", Some(ADMIN_KEY)).await;
    assert_eq!(status, 503);
    assert!(
        body["message"]
            .as_str()
            .unwrap_or_default()
            .contains("cannot reach"),
        "{body}"
    );
    let (status, body) = host.get("/api/deployment/status", Some(USER_KEY)).await;
    assert_eq!((status, body["state"].as_str()), (503, Some("failed")));
    assert!(!body.to_string().contains("cannot reach"), "{body}");
}

#[tokio::test]
async fn handler_panic_fails_only_that_request() {
    let dir = temp();
    let host = TestHost::start(
        dir.path(),
        HostOptions {
            plugin: Some("fixture_panicking"),
            ..Default::default()
        },
    )
    .await;
    // A panic in the handler, and one in the import of the request (plugin code as well, run
    // by the one dispatcher of this fixture's one worker before the handler).
    for path in ["/api/deployment/panic", "/api/deployment/panic-import"] {
        let (status, body) = host.get(path, Some(USER_KEY)).await;
        assert_eq!(status, 500, "{path}");
        assert_eq!(body["error"], "plugin_panic", "{path}: {body}");
    }
    for _ in 0..3 {
        let (status, body) = host.get("/api/deployment/status", Some(USER_KEY)).await;
        assert_eq!((status, body["status"].as_str()), (200, Some("idle")));
        for path in ["/api/deployment/panic", "/api/deployment/panic-import"] {
            assert_eq!(host.get(path, Some(USER_KEY)).await.0, 500, "{path}");
        }
    }
    assert_eq!(host.get("/health", None).await.0, 200);
    assert_eq!(host.plugin_status().await["state"], "active");
}

#[tokio::test]
async fn keys_and_roles_are_enforced_and_never_logged() {
    let dir = temp();
    let host = TestHost::start(dir.path(), HostOptions::default()).await;
    let reload = "/api/plugins/deployment_mcp/reload";

    let (status, me) = host.get("/api/auth/whoami", Some(DEVELOPER_KEY)).await;
    assert_eq!(status, 200);
    assert_eq!(me, serde_json::json!({"name": "dev", "role": "developer"}));
    assert_eq!(host.get("/api/auth/whoami", None).await.0, 401);

    let (status, body) = host.get("/api/plugins", None).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("unauthorized"))
    );
    assert_eq!(host.get("/api/plugins", Some("pa_not_a_key")).await.0, 401);
    assert_eq!(
        host.get("/api/deployment/status", Some("pa_not_a_key"))
            .await
            .0,
        401
    );
    assert_eq!(host.get("/api/deployment/status", None).await.0, 401);

    let (status, body) = host.call(Method::POST, reload, Some(USER_KEY), None).await;
    assert_eq!((status, body["error"].as_str()), (403, Some("forbidden")));
    assert_eq!(
        host.call(Method::POST, reload, Some(DEVELOPER_KEY), None)
            .await
            .0,
        403
    );
    assert_eq!(
        host.get("/api/deployment/environments", Some(USER_KEY))
            .await
            .0,
        403
    );
    assert_eq!(
        host.get("/api/deployment/environments", Some(DEVELOPER_KEY))
            .await
            .0,
        200
    );
    assert_eq!(
        host.call(Method::POST, reload, Some(ADMIN_KEY), None)
            .await
            .0,
        200
    );

    let bearer = host
        .client()
        .get(format!("{}/api/plugins", host.url))
        .bearer_auth(USER_KEY)
        .send()
        .await
        .expect("answer");
    assert_eq!(bearer.status().as_u16(), 200);

    // Secrets from the environments file are not returned either.
    let (_, environments) = host
        .get("/api/deployment/environments", Some(ADMIN_KEY))
        .await;
    assert!(!environments.to_string().contains("secret-token-value"));
    let listed = environments["environments"].as_array().expect("a list");
    let api_demo = listed
        .iter()
        .find(|environment| environment["environment_id"] == "api_demo")
        .expect("the http_api demo environment");
    assert_eq!(api_demo["has_api_token"], true, "{api_demo}");

    let logs = host.logs();
    for key in [ADMIN_KEY, DEVELOPER_KEY, USER_KEY, "pa_not_a_key"] {
        assert!(!logs.contains(key), "a key appeared in the log");
        assert!(
            !logs.contains(&sha256_hex(key)),
            "a key hash appeared in the log"
        );
    }
}

#[tokio::test]
async fn a_record_written_through_host_services_survives_a_restart() {
    let dir = temp();
    let options = HostOptions {
        plugin: Some("fixture_probe"),
        ..Default::default()
    };
    let host = TestHost::start(dir.path(), options.clone()).await;
    let (status, body) = host
        .call(
            Method::PUT,
            "/api/deployment/records/run-1",
            Some(ADMIN_KEY),
            Some(json!({"phase": "completed"})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(
        host.stop().is_some_and(|status| status.success()),
        "clean exit on SIGTERM"
    );

    let host = TestHost::start(dir.path(), options).await;
    let (status, body) = host
        .get("/api/deployment/records/run-1", Some(USER_KEY))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["value"], json!({"phase": "completed"}).to_string());
}

#[tokio::test]
async fn events_published_by_the_plugin_reach_subscribers_across_a_swap() {
    use futures_util::StreamExt;

    let dir = temp();
    let host = TestHost::start(
        dir.path(),
        HostOptions {
            plugin: Some("fixture_probe"),
            ..Default::default()
        },
    )
    .await;
    let response = host
        .client()
        .get(format!("{}/api/deployment/events", host.url))
        .header("X-API-Key", USER_KEY)
        .send()
        .await
        .expect("subscribe");
    assert_eq!(response.status().as_u16(), 200);
    assert!(response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream")));
    let mut stream = response.bytes_stream();

    let publish =
        |path: &'static str| host.call(Method::POST, path, Some(ADMIN_KEY), Some(json!({"n": 1})));
    assert_eq!(
        publish("/api/deployment/publish/phase_changed").await.0,
        200
    );
    // Swap to another copy of the probe: the subscriber stays connected.
    assert_eq!(host.reload().await.0, 200);
    assert_eq!(publish("/api/deployment/publish/after_swap").await.0, 200);

    let mut seen = String::new();
    let complete = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(Ok(chunk)) = stream.next().await {
            seen.push_str(&String::from_utf8_lossy(&chunk));
            if seen.contains("event: after_swap") {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(complete.ok(), Some(true), "stream so far: {seen}");
    let first = seen.find("event: phase_changed").unwrap_or(usize::MAX);
    let second = seen.find("event: after_swap").unwrap_or(0);
    assert!(first < second, "events arrive in order: {seen}");
    assert!(seen.contains("id: "), "events carry ids: {seen}");
}

#[tokio::test]
async fn errors_are_json_for_unknown_routes_and_oversize_bodies() {
    let dir = temp();
    let host = TestHost::start(dir.path(), HostOptions::default()).await;
    let (status, body) = host.get("/no/such/route", None).await;
    assert_eq!((status, body["error"].as_str()), (404, Some("not_found")));
    let (status, body) = host.call(Method::DELETE, "/health", None, None).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (405, Some("method_not_allowed"))
    );

    let (status, body) = e2e::post_declaring_length(
        &host.url,
        "/api/deployment/environments",
        ADMIN_KEY,
        2 * 1024 * 1024,
    )
    .await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(body["error"], "payload_too_large");
}

/// A request the plugin has not answered within `server.request_timeout_secs` gets the JSON
/// 504, not before its limit, and the host and the plugin keep serving.
#[tokio::test]
async fn a_request_past_its_time_limit_answers_504_json() {
    let dir = temp();
    let host = TestHost::start(
        dir.path(),
        HostOptions {
            plugin: Some("fixture_probe"),
            request_timeout_secs: 1,
            ..Default::default()
        },
    )
    .await;
    let gate = dir.path().join("opened-after-the-limit");
    let held = format!("/api/deployment/held?gate={}", gate.display());
    let started = std::time::Instant::now();
    let (status, body) = host.get(&held, Some(USER_KEY)).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (504, Some("timeout")),
        "{body}"
    );
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|message| message.contains("request_timeout_secs")),
        "{body}"
    );
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "not before the limit"
    );

    std::fs::write(&gate, "").expect("open the gate");
    let (status, body) = host.get(&held, Some(USER_KEY)).await;
    assert_eq!(status, 200, "the plugin still answers: {body}");
    let (status, _) = host.get("/health", None).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn disabled_plugins_answer_503_and_the_core_keeps_serving() {
    let dir = temp();
    let host = TestHost::start(
        dir.path(),
        HostOptions {
            args: vec!["--no-plugins".into()],
            ..Default::default()
        },
    )
    .await;
    assert_eq!(host.plugin_status().await["state"], "disabled");
    assert_eq!(
        host.get("/api/deployment/status", Some(USER_KEY)).await.0,
        503
    );
    assert_eq!(host.reload().await.0, 409);
    assert_eq!(host.get("/health", None).await.0, 200);
}

fn run_host(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut command = e2e::local_command(host_binary());
    command
        .args(args)
        .current_dir(repo_root())
        .env_remove("RUST_LOG");
    for (key, value) in env {
        command.env(key, value);
    }
    let output = command.output().expect("run powerautomation");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn bad_configuration_exits_non_zero_naming_the_problem() {
    let dir = temp();
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).expect("write config");
        path.display().to_string()
    };

    let unknown = write(
        "unknown.toml",
        "[server]\nlisten = \"127.0.0.1:0\"\nlisten_backlog = 5\n",
    );
    let (code, _, stderr) = run_host(&["--config", &unknown], &[]);
    assert_ne!(code, 0);
    assert!(stderr.contains("listen_backlog"), "{stderr}");

    let wrong_type = write("type.toml", "[server]\nlisten = 8080\n");
    let (code, _, stderr) = run_host(&["--config", &wrong_type], &[]);
    assert_ne!(code, 0);
    assert!(stderr.contains("listen"), "{stderr}");

    let missing = dir.path().join("absent.toml").display().to_string();
    let (code, _, stderr) = run_host(&["--config", &missing], &[]);
    assert_ne!(code, 0);
    assert!(stderr.contains("absent.toml"), "{stderr}");

    let (code, _, stderr) = run_host(&["check-config", "--config", &unknown], &[]);
    assert_ne!(code, 0);
    assert!(stderr.contains("listen_backlog"), "{stderr}");

    // An environment variable with an unknown key is refused the same way.
    let (code, _, stderr) = run_host(&["check-config"], &[("PA_SERVER__LISTN", "127.0.0.1:1")]);
    assert_ne!(code, 0);
    assert!(stderr.contains("listn"), "{stderr}");
}

#[test]
fn keygen_prints_a_key_and_check_config_masks_its_hash() {
    let (code, stdout, _) = run_host(&["keygen", "--name", "ci", "--role", "developer"], &[]);
    assert_eq!(code, 0);
    let key = stdout
        .split_whitespace()
        .find(|word| word.starts_with("pa_"))
        .expect("the key is printed")
        .to_owned();
    let digest = sha256_hex(&key);
    assert!(stdout.contains(&format!(
        "{{ name = \"ci\", role = \"developer\", sha256 = \"{digest}\" }}"
    )));

    let dir = temp();
    let config = dir.path().join("keys.toml");
    std::fs::write(
        &config,
        format!(
            "[auth]\nkeys = [{{ name = \"ci\", role = \"developer\", sha256 = \"{digest}\" }}]\n"
        ),
    )
    .expect("write config");
    let (code, stdout, stderr) = run_host(
        &["check-config", "--config", &config.display().to_string()],
        &[],
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("name = \"ci\"") && stdout.contains("<redacted>"),
        "{stdout}"
    );
    assert!(!stdout.contains(&digest), "the hash is masked");

    let (code, _, stderr) = run_host(&["keygen", "--name", "ci", "--role", "root"], &[]);
    assert_eq!(code, 2, "usage errors exit 2");
    assert!(stderr.contains("root"), "{stderr}");
}

#[tokio::test]
async fn request_ids_are_returned_and_reused() {
    let dir = temp();
    let host = TestHost::start(dir.path(), HostOptions::default()).await;
    let response = host
        .client()
        .get(format!("{}/health", host.url))
        .header("X-Request-Id", "trace-abc.1")
        .send()
        .await
        .expect("answer");
    assert_eq!(
        response
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok()),
        Some("trace-abc.1")
    );
    let generated = host
        .client()
        .get(format!("{}/health", host.url))
        .send()
        .await
        .expect("answer");
    assert!(generated.headers().get("x-request-id").is_some());
}
