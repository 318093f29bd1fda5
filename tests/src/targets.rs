//! A real HTTP server on loopback playing the target environments: the `http_api` endpoint
//! (checks the bearer token), the webhook endpoint (checks the HMAC signature) and a health
//! endpoint, each with a status the test chooses.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use axum::{
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode},
    routing::{get, post},
    Router,
};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// How a target answers.
#[derive(Debug, Clone)]
pub struct Behaviour {
    /// The bearer token `/api/deploy/init` requires.
    pub token: String,
    /// The secret webhook signatures are checked with; `None` accepts unsigned calls.
    pub webhook_secret: Option<String>,
    /// Status of a well-authenticated deploy or webhook call.
    pub deploy_status: u16,
    pub health_status: u16,
    /// How long a deploy call is held before its answer (a request in flight).
    pub deploy_delay: std::time::Duration,
}

impl Default for Behaviour {
    fn default() -> Self {
        Behaviour {
            token: "target-token".into(),
            webhook_secret: None,
            deploy_status: 200,
            health_status: 200,
            deploy_delay: std::time::Duration::ZERO,
        }
    }
}

/// One request the target received.
#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    pub body: serde_json::Value,
    /// Whether the credentials (token or signature) checked out.
    pub authenticated: bool,
    /// `Idempotency-Key` and `X-PowerAutomation-Fence`, as sent.
    pub idempotency_key: Option<String>,
    pub fence: Option<String>,
}

#[derive(Clone)]
struct Shared {
    behaviour: Arc<Mutex<Behaviour>>,
    received: Arc<Mutex<Vec<Received>>>,
}

pub struct Target {
    pub address: SocketAddr,
    shared: Shared,
    task: tokio::task::JoinHandle<()>,
}

impl Target {
    pub async fn start(behaviour: Behaviour) -> Target {
        let shared = Shared {
            behaviour: Arc::new(Mutex::new(behaviour)),
            received: Arc::new(Mutex::new(Vec::new())),
        };
        let app = Router::new()
            .route("/api/deploy/init", post(deploy))
            .route("/webhook/deploy", post(webhook))
            .route("/health", get(health))
            .with_state(shared.clone());
        let served = crate::serve_loopback(app).await;
        Target {
            address: served.address,
            shared,
            task: served.task,
        }
    }

    pub fn port(&self) -> u16 {
        self.address.port()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    pub fn received(&self) -> Vec<Received> {
        self.shared
            .received
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    pub fn set_health(&self, status: u16) {
        self.shared
            .behaviour
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .health_status = status;
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn behaviour(shared: &Shared) -> Behaviour {
    shared
        .behaviour
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .clone()
}

fn record(shared: &Shared, path: &str, headers: &HeaderMap, body: &[u8], authenticated: bool) {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned)
    };
    shared
        .received
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .push(Received {
            path: path.to_owned(),
            body: serde_json::from_slice(body).unwrap_or(serde_json::Value::Null),
            authenticated,
            idempotency_key: header("idempotency-key"),
            fence: header("x-powerautomation-fence"),
        });
}

async fn deploy(
    State(shared): State<Shared>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, String) {
    let behaviour = behaviour(&shared);
    let expected = format!("Bearer {}", behaviour.token);
    let authenticated = headers
        .get("authorization")
        .and_then(|value| value.to_str().ok())
        == Some(expected.as_str());
    record(&shared, "/api/deploy/init", &headers, &body, authenticated);
    if !authenticated {
        return (StatusCode::UNAUTHORIZED, "bad token".into());
    }
    tokio::time::sleep(behaviour.deploy_delay).await;
    let status = StatusCode::from_u16(behaviour.deploy_status).unwrap_or(StatusCode::OK);
    (status, format!("deploy answered {}", status.as_u16()))
}

/// `sha256=<hex HMAC-SHA256(secret, body)>`, as the webhook trigger must send it.
pub fn sign(secret: &str, body: &[u8]) -> String {
    let mut mac =
        <Hmac<Sha256> as KeyInit>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

async fn webhook(
    State(shared): State<Shared>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, String) {
    let behaviour = behaviour(&shared);
    let signature = headers
        .get("x-powerautomation-signature")
        .and_then(|value| value.to_str().ok());
    let authenticated = match &behaviour.webhook_secret {
        Some(secret) => signature == Some(sign(secret, &body).as_str()),
        None => true,
    };
    record(&shared, "/webhook/deploy", &headers, &body, authenticated);
    if !authenticated {
        return (StatusCode::UNAUTHORIZED, "bad signature".into());
    }
    let status = StatusCode::from_u16(behaviour.deploy_status).unwrap_or(StatusCode::OK);
    (status, format!("webhook answered {}", status.as_u16()))
}

async fn health(State(shared): State<Shared>) -> (StatusCode, &'static str) {
    let status = StatusCode::from_u16(behaviour(&shared).health_status).unwrap_or(StatusCode::OK);
    (status, "health")
}
