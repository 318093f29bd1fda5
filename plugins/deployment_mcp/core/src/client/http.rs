//! [`Http`]: the API of a running host over HTTP, as the owner of an API key (`X-API-Key`): what
//! the CLI's `--server` mode uses. The host authenticates the key and hands the plugin the
//! caller, so the calls get that key's role and views.

use std::time::{Duration, Instant};

use plugin_guest::{Caller, Role};
use serde::Deserialize;

use super::{error, Answer, ClientError, Reply, Request, Transport};

/// How long one call may take (a cancel waits up to 10 s on the server).
const CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The host's route that says who a key is (not under the plugin's mount).
const WHOAMI: &str = "/api/auth/whoami";

/// A host at `server`, its deployment API under `mount`, called with one key.
#[derive(Clone)]
pub struct Http {
    client: reqwest::Client,
    server: String,
    mount: String,
    api_key: String,
}

/// `GET /api/auth/whoami`.
#[derive(Deserialize)]
struct WhoAmI {
    name: Option<String>,
    role: Option<String>,
}

impl Http {
    /// A client of the host at `server` (`http://127.0.0.1:8080`), whose deployment API is
    /// mounted at `mount` (`/api/deployment`).
    pub fn new(
        server: &str,
        mount: &str,
        api_key: &str,
        user_agent: &str,
    ) -> Result<Http, ClientError> {
        let client = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .user_agent(user_agent)
            .build()
            .map_err(|error| {
                ClientError::Transport(format!("cannot build the HTTP client: {error}"))
            })?;
        Ok(Http {
            client,
            server: server.trim_end_matches('/').to_owned(),
            mount: mount.trim_end_matches('/').to_owned(),
            api_key: api_key.to_owned(),
        })
    }

    /// The host's URL, as given (without a trailing `/`).
    pub fn server(&self) -> &str {
        &self.server
    }

    /// Subscribes to the plugin's Server-Sent Events (`{mount}/events`); the answer's body is
    /// the stream. Only the answer's head is awaited, without a time limit: bound it yourself.
    pub async fn events(&self) -> Answer<reqwest::Response> {
        let url = format!("{}{}/events", self.server, self.mount);
        let response = self
            .client
            .get(url)
            .header("X-API-Key", &self.api_key)
            .header("Accept", "text/event-stream")
            .send()
            .await
            .map_err(|error| self.unreachable(&error))?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status().as_u16();
        let body = response.bytes().await.unwrap_or_default().to_vec();
        let operation = format!("GET {}/events", self.mount);
        Err(
            error::read::<serde_json::Value>(&operation, Reply { status, body }, &[])
                .err()
                .unwrap_or(ClientError::NotApi { operation, status }),
        )
    }

    /// Why there is no answer, with the cause chain (reqwest's `Display` leaves it out).
    fn unreachable(&self, error: &reqwest::Error) -> ClientError {
        let why = if error.is_timeout() {
            "it did not answer in time"
        } else if error.is_connect() {
            "the connection failed"
        } else {
            "the request failed"
        };
        let mut detail = error.to_string();
        let mut source = std::error::Error::source(error);
        while let Some(cause) = source {
            detail.push_str(": ");
            detail.push_str(&cause.to_string());
            source = cause.source();
        }
        ClientError::Unreachable {
            server: self.server.clone(),
            detail: format!("{why} ({detail})"),
        }
    }

    /// One request to `url`; any status is an answer.
    async fn exchange(
        &self,
        method: reqwest::Method,
        url: String,
        body: Option<Vec<u8>>,
    ) -> Answer<Reply> {
        let started = Instant::now();
        let mut request = self
            .client
            .request(method.clone(), &url)
            .timeout(CALL_TIMEOUT)
            .header("X-API-Key", &self.api_key)
            // The audit log says which door a call came through.
            .header(crate::audit::VIA_HEADER, "cli")
            .header("Accept", "application/json");
        if let Some(body) = body {
            request = request
                .header("Content-Type", "application/json")
                .body(body);
        }
        let response = request
            .send()
            .await
            .map_err(|error| self.unreachable(&error))?;
        let status = response.status().as_u16();
        let body = response
            .bytes()
            .await
            .map_err(|error| self.unreachable(&error))?
            .to_vec();
        tracing::debug!(
            "{method} {url} -> {status} ({} ms)",
            started.elapsed().as_millis()
        );
        Ok(Reply { status, body })
    }
}

impl std::fmt::Debug for Http {
    /// Never the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Http")
            .field("server", &self.server)
            .field("mount", &self.mount)
            .finish_non_exhaustive()
    }
}

impl Transport for Http {
    async fn send(&self, request: Request) -> Answer<Reply> {
        let url = format!("{}{}{}", self.server, self.mount, request.target);
        self.exchange(request.endpoint.method.clone(), url, request.body)
            .await
    }

    async fn whoami(&self) -> Answer<Caller> {
        let url = format!("{}{WHOAMI}", self.server);
        let reply = self.exchange(reqwest::Method::GET, url, None).await?;
        let operation = format!("GET {WHOAMI}");
        let answer: WhoAmI = error::read(&operation, reply, &[200])?;
        match answer.role.as_deref().and_then(Role::parse) {
            Some(role) => Ok(Caller {
                name: answer.name.unwrap_or_else(|| "key".into()),
                role,
            }),
            None => Err(ClientError::Decode {
                operation,
                detail: format!("no known role in {:?}", answer.role),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    //! The HTTP client against the real plugin router, served by axum on 127.0.0.1 behind a
    //! stand-in of the host's key check.

    use axum::{
        extract::Request as HttpRequest,
        middleware::{self, Next},
        response::{IntoResponse, Response},
        routing::get,
        Json, Router,
    };
    use plugin_local_host::LocalHost;

    use super::*;
    use crate::{
        client::{ApiClient, DeploymentApi},
        wire::{HistoryQuery, LogsQuery, TriggerRequest},
    };

    const KEY: &str = "pa_test_admin_key";

    /// The host's part: a known key becomes the caller; without one, 401.
    async fn authenticate(mut request: HttpRequest, next: Next) -> Response {
        let key = request.headers().get("x-api-key").map(|key| key.as_bytes());
        if key != Some(KEY.as_bytes()) {
            let body = serde_json::json!({"error": "unauthorized", "message": "no valid key"});
            return (axum::http::StatusCode::UNAUTHORIZED, Json(body)).into_response();
        }
        request.extensions_mut().insert(Caller {
            name: "ops".into(),
            role: Role::Admin,
        });
        next.run(request).await
    }

    struct Served {
        url: String,
        _host: LocalHost,
        _dir: tempfile::TempDir,
    }

    /// The plugin on a local environment that prints two lines, served on a free port.
    async fn serve() -> Served {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("environments.json");
        let environments = serde_json::json!({"environments": [{"environment_id": "web",
            "environment_type": "linux_local", "connection_method": "local",
            "command": ["sh", "-c", "echo one; echo two"], "timeout": 30}]});
        std::fs::write(&file, environments.to_string()).expect("environments file");
        let host = LocalHost::open(&dir.path().join("data"), false).expect("local host");
        let settings = serde_json::json!({"environments_file": file,
            "health_check_interval_secs": 0});
        let api = crate::build(host.host.clone(), &settings, "0.0.0-test")
            .await
            .expect("the plugin starts");
        let whoami = get(|| async { Json(serde_json::json!({"name": "ops", "role": "admin"})) });
        let app = Router::new()
            .nest("/api/deployment", api.router().clone())
            .route(WHOAMI, whoami)
            .layer(middleware::from_fn(authenticate));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a port on loopback");
        let url = format!("http://{}", listener.local_addr().expect("its address"));
        tokio::spawn(async move { axum::serve(listener, app).await });
        Served {
            url,
            _host: host,
            _dir: dir,
        }
    }

    fn client(url: &str, key: &str) -> ApiClient<Http> {
        ApiClient::new(Http::new(url, "/api/deployment", key, "test").expect("a client"))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_deployment_over_http_reads_back_as_wire_types() {
        let served = serve().await;
        let api = client(&served.url, KEY);
        let me = api.whoami().await.expect("whoami");
        assert_eq!((me.name.as_str(), me.role), ("ops", Role::Admin));
        let request = TriggerRequest {
            environments: Some(vec!["web".into()]),
            version: Some("1.0".into()),
            ..TriggerRequest::default()
        };
        let accepted = api.trigger(&request).await.expect("started");
        let id = accepted.deployment_id;
        let deadline = Instant::now() + Duration::from_secs(30);
        let record = loop {
            let record = api.deployment(&id).await.expect("the record");
            if record.deployment.status.is_terminal() || Instant::now() > deadline {
                break record;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(record.deployment.status.as_str(), "completed");
        let tail = api.logs(&id, LogsQuery::Tail(1)).await.expect("a log page");
        assert_eq!(tail.lines.len(), 1);
        let query = HistoryQuery {
            limit: Some(5),
            ..HistoryQuery::default()
        };
        let history = api.history(&query).await.expect("history");
        assert_eq!(history.history[0].deployment_id, id);
        let summary = api.summary(&id).await.expect("summary");
        assert_eq!(summary.entry.deployment_id, id);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn refusals_are_the_apis_errors_with_status_code_and_field() {
        let served = serve().await;
        let api = client(&served.url, KEY);
        let missing = api.deployment("dep-1-00000000").await.expect_err("404");
        assert_eq!(
            (missing.status(), missing.code()),
            (Some(404), Some("not_found"))
        );
        let bad: TriggerRequest =
            serde_json::from_value(serde_json::json!({"strategy": {"type": "rolling",
                "batch_size": 0}}))
            .expect("well-formed");
        let refused = api.trigger(&bad).await.expect_err("refused");
        assert_eq!(refused.status(), Some(400), "{refused:?}");
        assert_eq!(refused.field(), Some("strategy.batch_size"), "{refused:?}");
        let unknown = api
            .history(&HistoryQuery {
                status: Some("sideways".into()),
                ..HistoryQuery::default()
            })
            .await
            .expect_err("refused");
        assert_eq!(unknown.field(), Some("status"));

        let stranger = client(&served.url, "pa_wrong");
        let denied = stranger.status().await.expect_err("401");
        assert_eq!(denied.status(), Some(401));
        assert_eq!(
            stranger.whoami().await.expect_err("401").status(),
            Some(401)
        );
    }

    #[tokio::test]
    async fn no_server_is_unreachable_naming_it() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a port on loopback");
        let url = format!("http://{}", listener.local_addr().expect("its address"));
        drop(listener);
        let error = client(&url, KEY).status().await.expect_err("no answer");
        assert!(
            matches!(&error, ClientError::Unreachable { server, detail }
                if *server == url && detail.starts_with("the connection failed")),
            "{error:?}"
        );
        assert_eq!(error.status(), None);
    }
}
