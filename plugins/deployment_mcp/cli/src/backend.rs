//! Where the deployment API is: the plugin in this process, or a running host over HTTP. Every
//! command is written once against [`Backend::call`] and [`Backend::subscribe`].

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use deployment_mcp_core::{api::Api, environments, persist::catalog::ImportError, BuildError};
use futures_util::StreamExt as _;
use plugin_guest::{Caller, Handler as _, Request, Role};
use plugin_local_host::LocalHost;
use serde_json::{json, Value};
use tokio::sync::{broadcast, mpsc};

use crate::CliError;

/// Where the plugin is mounted on a host; in-process paths are relative to it.
pub const MOUNT: &str = "/api/deployment";
/// How long one API call to a server may take (a cancel waits up to 10 s on the server).
const CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the server may take to accept an event subscription.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(10);
/// Events buffered between the SSE reader and the command.
const REMOTE_EVENT_BUFFER: usize = 4096;

/// How the in-process plugin is set up.
pub struct LocalOptions {
    pub data_dir: PathBuf,
    pub environments_file: PathBuf,
    /// The file was named on the command line (not the default).
    pub environments_explicit: bool,
    /// Read-only commands may run without an environments file.
    pub file_optional: bool,
    pub max_parallel: Option<u32>,
    pub verbose: bool,
}

pub enum Backend {
    Local(Box<Local>),
    Remote(Remote),
}

pub struct Local {
    api: Api,
    standalone: LocalHost,
    environments_file: PathBuf,
    /// The file's environments: (id, enabled). In-process, the file is the registry; the store
    /// may still hold environments of files used earlier with the same data directory.
    file_environments: Vec<(String, bool)>,
    next_request: std::sync::atomic::AtomicU64,
}

pub struct Remote {
    client: reqwest::Client,
    server: String,
    api_key: String,
    verbose: bool,
}

impl Backend {
    /// Loads the plugin in this process on the environments file.
    pub async fn local(options: LocalOptions) -> Result<Backend, CliError> {
        let mut environments_file = options.environments_file.clone();
        if let Err(error) = std::fs::metadata(&environments_file) {
            if options.file_optional && !options.environments_explicit {
                // `status` and `history` read the data directory only; no file is no environment.
                environments_file = options.data_dir.join("no-environments.json");
            } else {
                return Err(CliError::Usage(format!(
                    "cannot read the environments file {}: {error}; pass --environments FILE (JSON in the remote_environments.json format, or TOML), or use --server URL",
                    options.environments_file.display()
                )));
            }
        }
        let standalone =
            LocalHost::open(&options.data_dir, options.verbose).map_err(CliError::Failed)?;
        if !environments_file.exists() {
            std::fs::write(&environments_file, "{\"environments\": []}\n").map_err(|error| {
                CliError::Failed(format!(
                    "cannot write {}: {error}",
                    environments_file.display()
                ))
            })?;
        }
        let mut settings = json!({
            "environments_file": environments_file,
            // A CLI run is short: no periodic health checks behind the user's back.
            "health_check_interval_secs": 0,
        });
        if let Some(max_parallel) = options.max_parallel {
            settings["max_parallel"] = json!(max_parallel);
        }
        // The plugin names the file and the field when the file is wrong: a usage error. Its
        // advice speaks of the host's configuration; here the file comes from --environments.
        let api = deployment_mcp_core::build(
            standalone.host.clone(),
            &settings,
            env!("CARGO_PKG_VERSION"),
        )
        .await
        .map_err(|error| match error {
            BuildError::Import(ImportError::File(message)) => CliError::Usage(message.replace(
                "set [plugins.deployment_mcp.settings] environments_file to an existing file",
                "pass --environments with an existing file",
            )),
            BuildError::Settings(message) => CliError::Usage(message),
            other => CliError::Failed(other.to_string()),
        })?;
        let file_environments = environments::load_file(&environments_file)
            .map_err(CliError::Usage)?
            .into_iter()
            .map(|environment| (environment.environment_id, environment.enabled))
            .collect();
        Ok(Backend::Local(Box::new(Local {
            api,
            standalone,
            environments_file,
            file_environments,
            next_request: std::sync::atomic::AtomicU64::new(1),
        })))
    }

    pub fn remote(server: &str, api_key: &str, verbose: bool) -> Result<Backend, CliError> {
        let parsed = url::Url::parse(server).map_err(|error| {
            CliError::Usage(format!(
                "--server {server:?} is not a URL ({error}); use e.g. http://127.0.0.1:8080"
            ))
        })?;
        if !matches!(parsed.scheme(), "http" | "https") || parsed.host().is_none() {
            return Err(CliError::Usage(format!(
                "--server {server:?} must be an http:// or https:// URL of the host, e.g. http://127.0.0.1:8080"
            )));
        }
        if api_key.trim().is_empty() {
            return Err(CliError::Usage(
                "--api-key is empty; pass the host's API key (or set DEPLOYMENT_MCP_API_KEY)"
                    .into(),
            ));
        }
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("deployment-mcp/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|error| CliError::Failed(format!("cannot build the HTTP client: {error}")))?;
        Ok(Backend::Remote(Remote {
            client,
            server: server.trim_end_matches('/').to_owned(),
            api_key: api_key.to_owned(),
            verbose,
        }))
    }

    pub fn is_remote(&self) -> bool {
        matches!(self, Backend::Remote(_))
    }

    /// The environments this backend deploys when none are named: in-process, the enabled
    /// environments of the file; `None` leaves the choice to the server.
    pub fn default_environments(&self) -> Option<Vec<String>> {
        match self {
            Backend::Local(local) => Some(
                local
                    .file_environments
                    .iter()
                    .filter(|(_, enabled)| *enabled)
                    .map(|(id, _)| id.clone())
                    .collect(),
            ),
            Backend::Remote(_) => None,
        }
    }

    /// Whether `id` is a registered environment, when this backend can tell locally.
    pub fn knows_environment(&self, id: &str) -> Option<bool> {
        match self {
            Backend::Local(local) => {
                Some(local.file_environments.iter().any(|(known, _)| known == id))
            }
            Backend::Remote(_) => None,
        }
    }

    /// Where environments come from, for messages.
    pub fn registry(&self) -> String {
        match self {
            Backend::Local(local) => local.environments_file.display().to_string(),
            Backend::Remote(remote) => remote.server.clone(),
        }
    }

    /// The server a remote backend talks to.
    pub fn server(&self) -> Option<&str> {
        match self {
            Backend::Local(_) => None,
            Backend::Remote(remote) => Some(&remote.server),
        }
    }

    /// Who the key is, as the host says (`GET /api/auth/whoami`); in-process, the local admin.
    pub async fn whoami(&self) -> Result<plugin_guest::Caller, CliError> {
        let Backend::Remote(remote) = self else {
            return Ok(plugin_guest::Caller {
                name: "cli".into(),
                role: plugin_guest::Role::Admin,
            });
        };
        let response = remote
            .client
            .get(format!("{}/api/auth/whoami", remote.server))
            .timeout(CALL_TIMEOUT)
            .header("X-API-Key", &remote.api_key)
            .send()
            .await
            .map_err(|error| remote.unreachable(&error))?;
        let status = response.status().as_u16();
        let body: Value = response
            .json()
            .await
            .map_err(|error| remote.unreachable(&error))?;
        if status != 200 {
            return Err(self.error(status, &body));
        }
        let role = match body["role"].as_str() {
            Some("admin") => plugin_guest::Role::Admin,
            Some("developer") => plugin_guest::Role::Developer,
            Some("user") => plugin_guest::Role::User,
            _ => {
                return Err(CliError::Failed(format!(
                    "the host answered whoami without a known role: {body}"
                )))
            }
        };
        Ok(plugin_guest::Caller {
            name: body["name"].as_str().unwrap_or("key").to_owned(),
            role,
        })
    }

    /// One API call. `path` is relative to the mount and may carry a query (`/history?limit=5`).
    /// Any HTTP status is an answer; only failing to get one is an error.
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(u16, Value), CliError> {
        match self {
            Backend::Local(local) => Ok(local.call(method, path, body).await),
            Backend::Remote(remote) => remote.call(method, path, body).await,
        }
    }

    /// Like [`Backend::call`], but any status other than `expected` becomes the matching error.
    pub async fn call_expecting(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
        expected: u16,
    ) -> Result<Value, CliError> {
        let (status, answer) = self.call(method, path, body).await?;
        if status == expected {
            Ok(answer)
        } else {
            Err(self.error(status, &answer))
        }
    }

    /// Like [`Backend::call_expecting`], read as the API's wire type `T`.
    pub async fn fetch<T: serde::de::DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
        expected: u16,
    ) -> Result<T, CliError> {
        let answer = self.call_expecting(method, path, body, expected).await?;
        serde_json::from_value(answer).map_err(|error| {
            CliError::Failed(format!(
                "the answer to {method} {path} is not what this deployment-mcp reads ({error}); are the CLI and the plugin from the same release?"
            ))
        })
    }

    /// What an error answer means for the user, and what to do about it.
    pub fn error(&self, status: u16, body: &Value) -> CliError {
        let message = match body["message"].as_str() {
            Some(message) => message.to_owned(),
            None if body.is_null() => match self.server() {
                Some(server) => format!(
                    "the server answered {status} without a JSON body; is --server {server} a powerautomation host?"
                ),
                None => format!("the plugin answered {status} without a body"),
            },
            None => body.to_string(),
        };
        match status {
            400 | 422 => CliError::Usage(message),
            401 => CliError::Failed(format!(
                "{message} (401): check --api-key (or DEPLOYMENT_MCP_API_KEY)"
            )),
            403 => CliError::Failed(format!(
                "{message} (403): use a key with the needed role in --api-key"
            )),
            503 => CliError::Failed(format!(
                "the deployment plugin is unavailable (503): {message}; check GET /api/plugins on the host, or retry shortly"
            )),
            404 | 409 => CliError::Failed(message),
            _ => CliError::Failed(format!("{message} (HTTP {status})")),
        }
    }

    /// Starts receiving the plugin's events. Call before starting what you want to watch: in
    /// client mode this returns once the server has registered the subscription.
    pub async fn subscribe(&self) -> Events {
        match self {
            Backend::Local(local) => Events::Local(local.standalone.events.subscribe()),
            Backend::Remote(remote) => remote.subscribe().await,
        }
    }

    /// Stops the in-process plugin the way the host does: runs still going are stopped and
    /// recorded as interrupted, so the store never keeps a run that nobody executes.
    pub async fn close(self) {
        if let Backend::Local(local) = self {
            if let Err(error) = local.standalone.stopping() {
                tracing::warn!("{error}");
            }
            local.api.shutdown().await;
        }
    }
}

impl Local {
    async fn call(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        let (path, query) = path.split_once('?').unwrap_or((path, ""));
        let number = self
            .next_request
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let request = Request {
            request_id: format!("cli-{}-{number}", std::process::id()),
            method: method.to_owned(),
            path: path.to_owned(),
            query: query.to_owned(),
            headers: vec![
                ("x-forwarded-prefix".into(), MOUNT.into()),
                ("content-type".into(), "application/json".into()),
            ],
            body: body
                .map(|body| body.to_string().into_bytes())
                .unwrap_or_default(),
            principal: Some(Caller {
                name: "cli".into(),
                role: Role::Admin,
            }),
        };
        let response = self.api.handle(request.into()).await;
        // No command asks for a streamed answer; the body is complete.
        let answer = serde_json::from_slice(&response.body).unwrap_or(Value::Null);
        (response.status, answer)
    }
}

impl Remote {
    fn url(&self, path: &str) -> String {
        format!("{}{MOUNT}{path}", self.server)
    }

    fn unreachable(&self, error: &reqwest::Error) -> CliError {
        let why = if error.is_timeout() {
            "it did not answer in time".to_owned()
        } else if error.is_connect() {
            "the connection failed".to_owned()
        } else {
            "the request failed".to_owned()
        };
        // reqwest's Display does not include the cause chain; the cause says what went wrong.
        let mut detail = error.to_string();
        let mut source = std::error::Error::source(error);
        while let Some(cause) = source {
            detail.push_str(": ");
            detail.push_str(&cause.to_string());
            source = cause.source();
        }
        CliError::Failed(format!(
            "cannot reach --server {}: {why} ({detail}); check that the host is running and the URL is right",
            self.server
        ))
    }

    async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(u16, Value), CliError> {
        let method = reqwest::Method::from_bytes(method.as_bytes())
            .map_err(|_| CliError::Failed(format!("{method:?} is not an HTTP method")))?;
        let started = Instant::now();
        let mut request = self
            .client
            .request(method.clone(), self.url(path))
            .timeout(CALL_TIMEOUT)
            .header("X-API-Key", &self.api_key)
            .header("Accept", "application/json");
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request
            .send()
            .await
            .map_err(|error| self.unreachable(&error))?;
        let status = response.status().as_u16();
        let bytes = response
            .bytes()
            .await
            .map_err(|error| self.unreachable(&error))?;
        if self.verbose {
            eprintln!(
                "{method} {} -> {status} ({} ms)",
                self.url(path),
                started.elapsed().as_millis()
            );
        }
        Ok((
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        ))
    }

    async fn subscribe(&self) -> Events {
        let request = self
            .client
            .get(self.url("/events"))
            .header("X-API-Key", &self.api_key)
            .header("Accept", "text/event-stream")
            .send();
        // Only the answer's head is bounded: the stream itself stays open as long as it runs.
        let response = match tokio::time::timeout(SUBSCRIBE_TIMEOUT, request).await {
            Ok(response) => response,
            Err(_) => {
                if self.verbose {
                    eprintln!("events: no answer in time; following by polling only");
                }
                return Events::None;
            }
        };
        let response = match response {
            Ok(response) if response.status().is_success() => response,
            Ok(response) => {
                if self.verbose {
                    eprintln!(
                        "events: the server answered {}; following by polling only",
                        response.status()
                    );
                }
                return Events::None;
            }
            Err(error) => {
                if self.verbose {
                    eprintln!("events: {error}; following by polling only");
                }
                return Events::None;
            }
        };
        let (sender, receiver) = mpsc::channel(REMOTE_EVENT_BUFFER);
        tokio::spawn(read_sse(response, sender));
        Events::Remote(receiver)
    }
}

/// Reads a Server-Sent Events stream into `sender` until it ends or nobody listens.
async fn read_sse(response: reqwest::Response, sender: mpsc::Sender<Incoming>) {
    let mut body = response.bytes_stream();
    let mut parser = SseParser::default();
    while let Some(chunk) = body.next().await {
        let Ok(chunk) = chunk else { break };
        for message in parser.push(&chunk) {
            let incoming = match message.event.as_str() {
                // The server skipped events for this subscriber: what they said is unknown.
                "lagged" | "reset" => Incoming::Lost,
                kind => Incoming::Event {
                    kind: kind.to_owned(),
                    data: serde_json::from_str(&message.data).unwrap_or(Value::Null),
                },
            };
            if sender.send(incoming).await.is_err() {
                return;
            }
        }
    }
    let _ = sender.send(Incoming::Lost).await;
}

/// What the event stream delivers.
#[derive(Debug)]
pub enum Incoming {
    Event {
        kind: String,
        data: Value,
    },
    /// Events were skipped or the stream broke: only polling tells the rest.
    Lost,
}

pub enum Events {
    Local(broadcast::Receiver<plugin_local_host::Event>),
    Remote(mpsc::Receiver<Incoming>),
    /// No stream (the server refused it): callers poll.
    None,
}

impl Events {
    /// The next event; `None` once the stream is over for good.
    pub async fn next(&mut self) -> Option<Incoming> {
        match self {
            Events::Local(receiver) => match receiver.recv().await {
                Ok(event) => Some(Incoming::Event {
                    kind: event.kind,
                    data: event.data,
                }),
                Err(broadcast::error::RecvError::Lagged(_)) => Some(Incoming::Lost),
                Err(broadcast::error::RecvError::Closed) => None,
            },
            Events::Remote(receiver) => receiver.recv().await,
            Events::None => None,
        }
    }

    /// An event already received, without waiting.
    pub fn try_next(&mut self) -> Option<Incoming> {
        match self {
            Events::Local(receiver) => match receiver.try_recv() {
                Ok(event) => Some(Incoming::Event {
                    kind: event.kind,
                    data: event.data,
                }),
                Err(broadcast::error::TryRecvError::Lagged(_)) => Some(Incoming::Lost),
                Err(_) => None,
            },
            Events::Remote(receiver) => receiver.try_recv().ok(),
            Events::None => None,
        }
    }
}

/// One SSE message: its `event:` name (default `message`) and its `data:` lines joined.
#[derive(Debug, PartialEq, Eq)]
pub struct SseMessage {
    pub event: String,
    pub data: String,
}

/// Incremental SSE parser: bytes in, complete messages out (blocks end at a blank line).
#[derive(Default)]
pub struct SseParser {
    pending: Vec<u8>,
    event: Option<String>,
    data: Vec<String>,
}

impl SseParser {
    pub fn push(&mut self, bytes: &[u8]) -> Vec<SseMessage> {
        self.pending.extend_from_slice(bytes);
        let mut messages = Vec::new();
        while let Some(end) = self.pending.iter().position(|&byte| byte == b'\n') {
            let raw: Vec<u8> = self.pending.drain(..=end).collect();
            let line = String::from_utf8_lossy(&raw);
            let line = line.trim_end_matches(['\n', '\r']);
            if line.is_empty() {
                if !self.data.is_empty() {
                    messages.push(SseMessage {
                        event: self.event.take().unwrap_or_else(|| "message".into()),
                        data: std::mem::take(&mut self.data).join("\n"),
                    });
                }
                self.event = None;
                continue;
            }
            if line.starts_with(':') {
                continue;
            }
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "event" => self.event = Some(value.to_owned()),
                "data" => self.data.push(value.to_owned()),
                _ => {}
            }
        }
        messages
    }
}

/// The default environments file, relative to the working directory.
pub fn default_environments_file() -> &'static Path {
    Path::new("config/remote_environments.json")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_blocks_split_across_chunks() {
        let mut parser = SseParser::default();
        assert!(parser
            .push(b": keep-alive\n\nid: 1\nevent: deployment.phase\nda")
            .is_empty());
        let messages = parser.push(b"ta: {\"a\":1}\r\n\r\nevent: x\ndata: 1\ndata: 2\n\n");
        assert_eq!(
            messages,
            vec![
                SseMessage {
                    event: "deployment.phase".into(),
                    data: "{\"a\":1}".into()
                },
                SseMessage {
                    event: "x".into(),
                    data: "1\n2".into()
                },
            ]
        );
    }
}
