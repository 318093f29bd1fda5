//! The host's router in-process, through tower's `oneshot`: no listening socket, no binary. The
//! plugin slots load real libraries built with the workspace (fixtures included), so each
//! plugin state is the one the host would reach.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use axum::{
    body::Body,
    http::{header, Method, Request, StatusCode},
    Router,
};
use http_body_util::BodyExt;
use plugin_api::Role;
use record_store::Store;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use super::{metrics::Metrics, router, AppState};
use crate::{
    auth::KeyRing,
    cluster::Membership,
    config::{PluginConfig, ServerConfig},
    plugin::{
        loader::{LoadFailure, Retirements},
        slot::{LoadContext, PluginSlot, PluginState},
    },
    services::events::EventBus,
};

const ADMIN_KEY: &str = "router-test-admin-key";
const BODY_LIMIT: usize = 4096;
/// The name every fixture reports (they stand in for the real plugin), so the name each slot is
/// configured under.
const PLUGIN: &str = "deployment_mcp";

/// The profile directory the workspace's libraries were built into (this test binary lives in
/// its `deps/`).
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    exe.parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .expect("test binaries live in <target>/<profile>/deps")
}

fn library(name: &str) -> PathBuf {
    let path = profile_dir().join(format!("lib{name}.so"));
    assert!(
        path.is_file(),
        "{} is missing: build the workspace first (`cargo build --release --workspace`)",
        path.display()
    );
    path
}

/// A host's routes over the given plugins (name, config), each loaded once as at start-up.
struct TestRouter {
    app: Router,
    slots: Vec<Arc<PluginSlot>>,
    _dir: tempfile::TempDir,
}

impl TestRouter {
    async fn new(plugins: Vec<(&str, PluginConfig)>) -> TestRouter {
        let dir = tempfile::tempdir().expect("a temporary data directory");
        let store: Arc<dyn record_store::RecordStore> =
            Arc::new(Store::open(dir.path(), "router-test.db").expect("open the store"));
        let copies_dir = dir.path().join("plugin-copies");
        std::fs::create_dir_all(&copies_dir).expect("create the copies directory");
        let bus = Arc::new(EventBus::new());
        let context = LoadContext {
            copies_dir,
            store: Arc::clone(&store),
            bus: Arc::clone(&bus),
            retirements: Retirements::default(),
            log_level: "info".into(),
            log_json: false,
        };
        let mut slots = Vec::new();
        for (name, config) in plugins {
            let enabled = config.enabled;
            let slot = Arc::new(PluginSlot::new(name, config, context.clone(), enabled));
            if enabled {
                let _ = slot.reload("startup").await;
            }
            slots.push(slot);
        }
        let mut keys = KeyRing::from_config(&[]).expect("an empty key ring");
        keys.add("admin", Role::Admin, ADMIN_KEY);
        let server = ServerConfig {
            body_limit_bytes: BODY_LIMIT,
            ..ServerConfig::default()
        };
        let membership = Membership::join(store, "router-test".into(), "boot".into(), 3)
            .await
            .expect("join the cluster");
        let state = AppState::new(
            slots.clone(),
            bus,
            Arc::new(Metrics::new()),
            membership,
            CancellationToken::new(),
            8,
            8,
        );
        TestRouter {
            app: router(state, Arc::new(keys), &server),
            slots,
            _dir: dir,
        }
    }

    async fn send(&self, request: Request<Body>) -> (StatusCode, axum::http::HeaderMap, Vec<u8>) {
        let response = self
            .app
            .clone()
            .oneshot(request)
            .await
            .unwrap_or_else(|never| match never {});
        let status = response.status();
        let headers = response.headers().clone();
        let body = response
            .into_body()
            .collect()
            .await
            .expect("read the answer")
            .to_bytes()
            .to_vec();
        (status, headers, body)
    }

    async fn get(&self, path: &str) -> (StatusCode, axum::http::HeaderMap, serde_json::Value) {
        let (status, headers, body) = self.send(request(Method::GET, path, Body::empty())).await;
        (status, headers, json(&body))
    }
}

fn request(method: Method, path: &str, body: Body) -> Request<Body> {
    Request::builder()
        .method(method)
        .uri(path)
        .header("x-api-key", ADMIN_KEY)
        .body(body)
        .expect("a valid request")
}

fn json(body: &[u8]) -> serde_json::Value {
    serde_json::from_slice(body)
        .unwrap_or_else(|error| panic!("not JSON ({error}): {}", String::from_utf8_lossy(body)))
}

fn plugin(path: PathBuf, mount: &str) -> PluginConfig {
    PluginConfig {
        enabled: true,
        path,
        mount: mount.to_owned(),
        watch: false,
        sha256: String::new(),
        isolation: Default::default(),
        memory_limit_mb: None,
        cpu_shares: None,
        start_timeout_secs: None,
        max_crashes: 5,
        crash_window_secs: 60,
        settings: serde_json::json!({}),
    }
}

fn sha256_hex(path: &Path) -> String {
    use sha2::Digest;
    let bytes = std::fs::read(path).expect("read the library");
    hex::encode(sha2::Sha256::digest(&bytes))
}

#[tokio::test]
async fn every_state_but_active_answers_503_with_retry_after_and_the_reason() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let disabled = PluginConfig {
        enabled: false,
        ..plugin(library("fixture_probe"), "/api/disabled")
    };
    let router = TestRouter::new(vec![
        (
            "missing",
            plugin(dir.path().join("libnothing.so"), "/api/missing"),
        ),
        ("disabled", disabled),
        (
            PLUGIN,
            plugin(library("fixture_wrong_abi"), "/api/incompatible"),
        ),
        (
            PLUGIN,
            plugin(library("fixture_failing_start"), "/api/failed"),
        ),
        (PLUGIN, plugin(library("fixture_probe"), "/api/active")),
    ])
    .await;
    let states: Vec<_> = router
        .slots
        .iter()
        .map(|slot| slot.status().state)
        .collect();

    assert_eq!(
        states,
        [
            PluginState::Missing,
            PluginState::Disabled,
            PluginState::Incompatible,
            PluginState::Failed,
            PluginState::Active
        ]
    );
    for (mount, state) in [
        ("missing", "missing"),
        ("disabled", "disabled"),
        ("incompatible", "incompatible"),
        ("failed", "failed"),
    ] {
        for path in [format!("/api/{mount}"), format!("/api/{mount}/status")] {
            let (status, headers, body) = router.get(&path).await;
            assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{path}: {body}");
            let retry_after = headers
                .get(header::RETRY_AFTER)
                .and_then(|value| value.to_str().ok())
                .and_then(|value| value.parse::<u64>().ok());
            assert!(
                retry_after.is_some_and(|seconds| seconds > 0),
                "{path}: Retry-After {:?}",
                headers.get(header::RETRY_AFTER)
            );
            assert_eq!(body["error"], "plugin_unavailable", "{path}: {body}");
            assert_eq!(body["state"], state, "{path}: {body}");
            assert!(
                body["message"]
                    .as_str()
                    .is_some_and(|message| message.contains(&format!("is {state}: "))),
                "{path}: {body}"
            );
        }
    }
    let (status, _, body) = router.get("/api/active/status").await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn a_wrong_method_is_405_with_allow_and_the_json_error_shape() {
    let router = TestRouter::new(vec![]).await;
    for (method, path, allowed) in [
        (Method::DELETE, "/health", "GET,HEAD"),
        (Method::POST, "/api/plugins", "GET,HEAD"),
        (Method::GET, "/api/plugins/deployment_mcp/reload", "POST"),
    ] {
        let (status, headers, body) = router.send(request(method, path, Body::empty())).await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{path}");
        let allow = headers
            .get(header::ALLOW)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
            .replace(' ', "");
        assert_eq!(allow, allowed, "{path}");
        let body = json(&body);
        assert_eq!(body["error"], "method_not_allowed", "{path}: {body}");
        assert!(body["message"].is_string(), "{path}: {body}");
    }
}

#[tokio::test]
async fn a_chunked_body_over_the_limit_is_413_before_the_plugin_sees_it() {
    let router = TestRouter::new(vec![(
        PLUGIN,
        plugin(library("fixture_probe"), "/api/probe"),
    )])
    .await;
    // No content-length: the limit can only be found by reading, chunk by chunk.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..8).map(|_| Ok(vec![b'x'; BODY_LIMIT / 4])).collect();
    let body = Body::from_stream(futures_util::stream::iter(chunks));
    let (status, headers, body) = router
        .send(request(Method::PUT, "/api/probe/records/big", body))
        .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|value| value.as_bytes().starts_with(b"application/json")));
    assert_eq!(json(&body)["error"], "payload_too_large");
    // Nothing was stored.
    let (status, _, _) = router.get("/api/probe/records/big").await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // The same body within the limit is taken.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..2).map(|_| Ok(vec![b'y'; BODY_LIMIT / 4])).collect();
    let body = Body::from_stream(futures_util::stream::iter(chunks));
    let (status, _, _) = router
        .send(request(Method::PUT, "/api/probe/records/small", body))
        .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn request_ids_are_kept_when_sane_and_replaced_otherwise() {
    let router = TestRouter::new(vec![]).await;
    let with_id = |id: &str| {
        Request::builder()
            .uri("/health")
            .header("x-request-id", id)
            .body(Body::empty())
            .expect("a valid request")
    };
    let answer_id = |headers: &axum::http::HeaderMap| {
        headers
            .get("x-request-id")
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned)
            .expect("every answer carries x-request-id")
    };
    let (_, headers, _) = router.send(with_id("deploy-42.retry:1_a")).await;
    assert_eq!(answer_id(&headers), "deploy-42.retry:1_a");
    for insane in [
        "with space",
        "semi;colon",
        "quote\"d",
        &"x".repeat(129),
        "ünïcode",
    ] {
        let Ok(value) = axum::http::HeaderValue::from_bytes(insane.as_bytes()) else {
            continue;
        };
        let request = Request::builder()
            .uri("/health")
            .header("x-request-id", value)
            .body(Body::empty())
            .expect("a valid request");
        let (_, headers, _) = router.send(request).await;
        let id = answer_id(&headers);
        assert_ne!(id, insane);
        assert!(
            !id.is_empty()
                && id.len() <= 128
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b)),
            "{id:?}"
        );
    }
    // Without one, each request gets its own.
    let (_, first, _) = router
        .send(request(Method::GET, "/health", Body::empty()))
        .await;
    let (_, second, _) = router
        .send(request(Method::GET, "/health", Body::empty()))
        .await;
    assert_ne!(answer_id(&first), answer_id(&second));
}

#[tokio::test]
async fn a_library_that_breaks_the_sha256_pin_is_refused_while_the_old_copy_serves() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("libfixture_probe.so");
    std::fs::copy(library("fixture_probe"), &path).expect("install the probe");
    let pinned = PluginConfig {
        sha256: sha256_hex(&path),
        ..plugin(path.clone(), "/api/probe")
    };
    let router = TestRouter::new(vec![(PLUGIN, pinned)]).await;
    let slot = Arc::clone(&router.slots[0]);
    assert_eq!(slot.status().state, PluginState::Active);
    let sha256 = slot.status().sha256.clone();

    // Another build at the same path: its digest is not the pinned one.
    let staging = dir.path().join("libfixture_probe.so.new");
    std::fs::copy(library("deployment_mcp_next"), &staging).expect("stage another build");
    std::fs::rename(&staging, &path).expect("replace the library");
    let error = slot
        .reload("test")
        .await
        .expect_err("the pin refuses the new file");
    assert_eq!(error.kind, LoadFailure::Incompatible, "{error:?}");
    assert!(error.message.contains("sha256"), "{}", error.message);

    let status = slot.status();
    assert_eq!(status.state, PluginState::Active);
    assert_eq!(status.sha256, sha256, "the pinned copy still serves");
    assert_eq!(status.swaps, 0);
    assert!(
        status
            .last_error
            .as_deref()
            .is_some_and(|error| error.contains("sha256")),
        "{status:?}"
    );
    let (code, _, body) = router.get("/api/probe/status").await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(body["version"], "0.0.1-probe");
}
