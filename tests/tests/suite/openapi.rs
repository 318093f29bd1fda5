//! `/api/openapi.json` describes every endpoint the host serves, plugin ones included, and a
//! schemathesis run against a real host with an admin key finds no 5xx and no answer that
//! contradicts the document.

use std::process::Command;

use e2e::{HostOptions, TestHost, ADMIN_KEY};
use serde_json::Value;

async fn document(host: &TestHost) -> Value {
    // Public: a client generator must not need a key.
    let (status, document) = host.get("/api/openapi.json", None).await;
    assert_eq!(status, 200, "{document}");
    document
}

fn operation<'a>(document: &'a Value, method: &str, path: &str) -> &'a Value {
    let operation = &document["paths"][path][method];
    assert!(
        operation.is_object(),
        "{method} {path} is not described; paths: {:?}",
        document["paths"]
            .as_object()
            .map(|paths| paths.keys().collect::<Vec<_>>())
    );
    operation
}

#[tokio::test]
async fn the_document_covers_core_and_plugin_endpoints() {
    let dir = tempfile::tempdir().expect("temp dir");
    let host = TestHost::start(dir.path(), HostOptions::default()).await;
    let document = document(&host).await;
    assert!(document["openapi"].as_str().unwrap_or("").starts_with("3."));

    let core = [
        ("get", "/health"),
        ("get", "/metrics"),
        ("get", "/api/plugins"),
        ("get", "/api/auth/whoami"),
        ("post", "/api/plugins/{name}/reload"),
        ("get", "/api/cluster"),
        ("post", "/api/cluster/nodes/{node_id}/drain"),
        ("get", "/api/openapi.json"),
        ("get", "/"),
        ("get", "/assets/{file}"),
        ("get", "/api/deployment/events"),
    ];
    let deployment = [
        ("post", "/api/deployment/trigger-local"),
        ("post", "/api/deployment/one-click"),
        ("get", "/api/deployment/status"),
        ("get", "/api/deployment/deployments/{id}"),
        ("get", "/api/deployment/deployments/{id}/logs"),
        ("post", "/api/deployment/deployments/{id}/cancel"),
        ("post", "/api/deployment/deployments/{id}/retry"),
        ("get", "/api/deployment/history"),
        ("get", "/api/deployment/environments"),
        ("post", "/api/deployment/environments"),
        ("get", "/api/deployment/environments/{id}"),
        ("put", "/api/deployment/environments/{id}"),
        ("delete", "/api/deployment/environments/{id}"),
        ("post", "/api/deployment/environments/{id}/health-check"),
        ("get", "/api/deployment/dashboard"),
    ];
    for (method, path) in core.iter().chain(deployment.iter()) {
        let operation = operation(&document, method, path);
        let error = &operation["responses"]["default"]["content"]["application/json"]["schema"];
        assert_eq!(
            error["$ref"], "#/components/schemas/Error",
            "{method} {path}: errors are not described"
        );
    }
    // Every `$ref` resolves inside the merged document.
    let text = document.to_string();
    let schemas = &document["components"]["schemas"];
    for reference in text.split("\"#/components/schemas/").skip(1) {
        let name = &reference[..reference.find('"').unwrap_or(0)];
        assert!(schemas[name].is_object(), "dangling reference to {name}");
    }

    // Authenticated operations name both ways of sending a key, and the schemes exist.
    let schemes = &document["components"]["securitySchemes"];
    assert_eq!(schemes["api_key"]["type"], "apiKey");
    assert_eq!(schemes["api_key"]["name"], "X-API-Key");
    assert_eq!(schemes["bearer"]["scheme"], "bearer");
    let security = &operation(&document, "post", "/api/deployment/trigger-local")["security"];
    assert!(security.to_string().contains("api_key") && security.to_string().contains("bearer"));
    assert!(operation(&document, "get", "/health")["security"].is_null());

    // Request schemas are the real input types: unknown fields are refused, secrets writable.
    let environment = &schemas["Environment"]["properties"];
    assert!(environment["api_token"].is_object() && environment["port"].is_object());
    let view = &schemas["EnvironmentView"]["properties"];
    assert!(
        view["api_token"].is_null(),
        "a secret is described as readable"
    );
}

/// Every operation's `operationId` and tags, pinned: a generated client's method names are an
/// interface, so a rename shows here as a diff, never by surprise.
#[tokio::test]
async fn operation_ids_are_unique_verb_noun_names_pinned_here() {
    let dir = tempfile::tempdir().expect("temp dir");
    let host = TestHost::start(dir.path(), HostOptions::default()).await;
    let document = document(&host).await;
    let mut found: Vec<String> = Vec::new();
    let mut ids: Vec<&str> = Vec::new();
    for (path, item) in document["paths"].as_object().expect("paths") {
        for (method, operation) in item.as_object().expect("a path item") {
            let id = operation["operationId"].as_str().unwrap_or("");
            let tags: Vec<&str> = operation["tags"]
                .as_array()
                .map(|tags| tags.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            found.push(format!("{id} {method} {path} {}", tags.join(",")));
            ids.push(id);
        }
    }
    found.sort();
    // operationId, method, path, tags.
    let pinned = "
approveDeployment post /api/deployment/deployments/{id}/approve deployments
cancelDeployment post /api/deployment/deployments/{id}/cancel deployments
checkEnvironmentHealth post /api/deployment/environments/{id}/health-check environments
createEnvironment post /api/deployment/environments environments
createSchedule post /api/deployment/schedules schedules
createSubscription post /api/deployment/subscriptions notifications
createWindow post /api/deployment/windows windows
deleteEnvironment delete /api/deployment/environments/{id} environments
deleteSchedule delete /api/deployment/schedules/{id} schedules
deleteSubscription delete /api/deployment/subscriptions/{id} notifications
deleteWindow delete /api/deployment/windows/{id} windows
drainNode post /api/cluster/nodes/{node_id}/drain cluster
explainWindows get /api/deployment/windows/explain windows
getCalendar get /api/deployment/calendar windows
getCluster get /api/cluster cluster
getDashboardAsset get /assets/{file} dashboard
getDashboardPage get / dashboard
getDashboardSummary get /api/deployment/dashboard overview
getDeployment get /api/deployment/deployments/{id} deployments
getDeploymentLogs get /api/deployment/deployments/{id}/logs deployments
getDeploymentStatus get /api/deployment/status overview
getEnvironment get /api/deployment/environments/{id} environments
getHealth get /health host
getMetrics get /metrics host
getOpenApiDocument get /api/openapi.json host
getSchedule get /api/deployment/schedules/{id} schedules
getSubscription get /api/deployment/subscriptions/{id} notifications
getWhoami get /api/auth/whoami host
getWindow get /api/deployment/windows/{id} windows
listAuditEntries get /api/audit audit
listDeliveries get /api/deployment/subscriptions/{id}/deliveries notifications
listDeployments get /api/deployment/history deployments
listEnvironments get /api/deployment/environments environments
listPlugins get /api/plugins plugins
listScheduleOccurrences get /api/deployment/schedules/{id}/next schedules
listSchedules get /api/deployment/schedules schedules
listSubscriptions get /api/deployment/subscriptions notifications
listWindows get /api/deployment/windows windows
redeliverDelivery post /api/deployment/subscriptions/{id}/deliveries/{delivery}/redeliver notifications
rejectDeployment post /api/deployment/deployments/{id}/reject deployments
reloadPlugin post /api/plugins/{name}/reload plugins
replaceEnvironment put /api/deployment/environments/{id} environments
retryDeployment post /api/deployment/deployments/{id}/retry deployments
rollbackDeployment post /api/deployment/deployments/{id}/rollback deployments
streamDeploymentMcpEvents get /api/deployment/events events
triggerDeployment post /api/deployment/trigger-local deployments
triggerDeploymentOneClick post /api/deployment/one-click deployments";
    assert_eq!(found.join("\n"), pinned.trim());
    // The style: a lower-case verb, then nouns, letters only.
    for id in ids {
        assert!(
            id.starts_with(|c: char| c.is_ascii_lowercase())
                && id.chars().all(|c| c.is_ascii_alphanumeric())
                && id.chars().any(|c| c.is_ascii_uppercase()),
            "{id} is not verbNoun"
        );
    }
}

#[tokio::test]
async fn without_the_plugin_the_document_still_serves_and_says_why() {
    let dir = tempfile::tempdir().expect("temp dir");
    let host = TestHost::start(
        dir.path(),
        HostOptions {
            plugin: None,
            ..HostOptions::default()
        },
    )
    .await;
    let document = document(&host).await;
    operation(&document, "get", "/health");
    operation(&document, "get", "/api/deployment/events");
    assert!(document["paths"]["/api/deployment/status"].is_null());
    let description = document["info"]["description"].as_str().unwrap_or("");
    assert!(
        description.contains("deployment_mcp (/api/deployment)"),
        "{description}"
    );
}

/// Property-based requests from the document, as admin: every answer is in the document
/// (status, content type, schema) and none is a 5xx.
#[tokio::test]
async fn schemathesis_finds_no_server_error_and_no_schema_violation() {
    let dir = tempfile::tempdir().expect("temp dir");
    // Generated environments may say `connection_method = "local"` with any command: the host
    // gets an empty PATH so that such a command cannot be found, only absolute ones run (the
    // demo environment's).
    let environments = r#"{"environments": [
      {"environment_id": "local_demo", "environment_type": "linux_local", "connection_method": "local",
       "command": ["/bin/true"], "timeout": 30},
      {"environment_id": "unreachable_api", "environment_type": "docker_container",
       "connection_method": "http_api", "host": "127.0.0.1", "port": 9, "api_token": "t", "timeout": 5}
    ]}"#;
    let host = TestHost::start(
        dir.path(),
        HostOptions {
            environments: environments.into(),
            settings: "health_check_interval_secs = 0\nhealth_check_timeout_secs = 2".into(),
            env: vec![("PATH".into(), "/nonexistent".into())],
            ..HostOptions::default()
        },
    )
    .await;
    let report = dir.path().join("schemathesis");
    let work = dir.path().to_owned();
    let url = host.url.clone();
    let output = tokio::task::spawn_blocking(move || {
        Command::new("schemathesis")
            .arg("run")
            .arg(format!("{url}/api/openapi.json"))
            .args(["--header", &format!("X-API-Key: {ADMIN_KEY}")])
            .args([
                "--checks",
                "not_a_server_error,status_code_conformance,content_type_conformance,\
                 response_schema_conformance,response_headers_conformance",
            ])
            // The event stream never ends by itself; it has its own tests.
            .args(["--exclude-path-regex", "/events$"])
            // A drain makes the node answer new deployments 503 by design; it has its own test.
            .args(["--exclude-operation-id", "drainNode"])
            .args(["--phases", "examples,coverage,fuzzing,stateful"])
            .args(["--max-examples", "25", "--seed", "20261125"])
            .args(["--request-timeout", "30", "--workers", "2"])
            .args(["--report", "junit"])
            .arg("--report-dir")
            .arg(&report)
            .env("SCHEMATHESIS_TELEMETRY", "false")
            // It keeps a cache in the working directory; keep it out of the source tree.
            .current_dir(&work)
            .output()
    })
    .await
    .expect("join");
    let output = output.unwrap_or_else(|error| {
        panic!("schemathesis could not be run ({error}); install it: pip install schemathesis")
    });
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    assert!(
        output.status.success(),
        "schemathesis found problems:\n{stdout}\n{stderr}\nhost log tail:\n{}",
        tail(&host.logs(), 40)
    );
    // It really ran the operations (a document it could not read would also exit non-zero,
    // but make sure a filter did not leave nothing to test).
    assert!(stdout.contains("passed"), "{stdout}");
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
