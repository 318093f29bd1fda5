//! Where the deployment API is: the plugin in this process, or a running host over HTTP. Every
//! command is written once against the typed client [`Backend::api`] (the core's
//! `DeploymentApi`, over an in-process or an HTTP transport) and [`Backend::subscribe`].

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use deployment_mcp_core::{
    api::Api,
    client::{Answer, ApiClient, ClientError, Http, InProcess, Reply, Request, Transport},
    environments,
    persist::catalog::ImportError,
    wire::Event,
    BuildError,
};
use futures_util::StreamExt as _;
use plugin_guest::{Caller, Role};
use plugin_local_host::LocalHost;
use serde_json::{json, Value};
use tokio::sync::{broadcast, mpsc};

use crate::CliError;

/// Where the plugin is mounted on a host.
pub const MOUNT: &str = "/api/deployment";
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

/// How this command reaches the API: the plugin's router in this process, or a host.
#[derive(Clone, Debug)]
pub enum Link {
    Local(InProcess),
    Remote(Http),
}

impl Transport for Link {
    async fn send(&self, request: Request) -> Answer<Reply> {
        match self {
            Link::Local(local) => local.send(request).await,
            Link::Remote(remote) => remote.send(request).await,
        }
    }

    async fn whoami(&self) -> Answer<Caller> {
        match self {
            Link::Local(local) => local.whoami().await,
            Link::Remote(remote) => remote.whoami().await,
        }
    }
}

/// The typed client commands call.
pub type Client = ApiClient<Link>;

pub struct Backend {
    client: Client,
    place: Place,
}

enum Place {
    Local(Box<Local>),
    Remote { verbose: bool },
}

struct Local {
    api: Api,
    standalone: LocalHost,
    environments_file: PathBuf,
    /// The file's environments: (id, enabled). In-process, the file is the registry; the store
    /// may still hold environments of files used earlier with the same data directory.
    file_environments: Vec<(String, bool)>,
}

/// What an error of the API means for the user, and what to do about it.
impl From<ClientError> for CliError {
    fn from(error: ClientError) -> CliError {
        match error {
            ClientError::Api {
                status, message, ..
            } => match status {
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
            },
            error @ ClientError::NotApi { .. } => CliError::Failed(format!(
                "{error}; is --server the URL of a powerautomation host?"
            )),
            error @ ClientError::Decode { .. } => CliError::Failed(format!(
                "{error}; are the CLI and the plugin from the same release?"
            )),
            ClientError::Unreachable { server, detail } => CliError::Failed(format!(
                "cannot reach --server {server}: {detail}; check that the host is running and the URL is right"
            )),
            ClientError::Transport(message) => CliError::Failed(message),
        }
    }
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
            .map(|environment| {
                (
                    environment.environment_id.into_string(),
                    environment.enabled,
                )
            })
            .collect();
        // In-process, every command is the local admin's.
        let admin = Caller {
            name: "cli".into(),
            role: Role::Admin,
        };
        let in_process = api.in_process(Some(admin), format!("cli-{}", std::process::id()));
        Ok(Backend {
            client: ApiClient::new(Link::Local(in_process)),
            place: Place::Local(Box::new(Local {
                api,
                standalone,
                environments_file,
                file_environments,
            })),
        })
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
        let user_agent = concat!("deployment-mcp/", env!("CARGO_PKG_VERSION"));
        let http = Http::new(server, MOUNT, api_key, user_agent)?;
        Ok(Backend {
            client: ApiClient::new(Link::Remote(http)),
            place: Place::Remote { verbose },
        })
    }

    /// The deployment API, typed.
    pub fn api(&self) -> &Client {
        &self.client
    }

    pub fn is_remote(&self) -> bool {
        matches!(self.place, Place::Remote { .. })
    }

    /// The environments this backend deploys when none are named: in-process, the enabled
    /// environments of the file; `None` leaves the choice to the server.
    pub fn default_environments(&self) -> Option<Vec<String>> {
        match &self.place {
            Place::Local(local) => Some(
                local
                    .file_environments
                    .iter()
                    .filter(|(_, enabled)| *enabled)
                    .map(|(id, _)| id.clone())
                    .collect(),
            ),
            Place::Remote { .. } => None,
        }
    }

    /// Whether `id` is a registered environment, when this backend can tell locally.
    pub fn knows_environment(&self, id: &str) -> Option<bool> {
        match &self.place {
            Place::Local(local) => {
                Some(local.file_environments.iter().any(|(known, _)| known == id))
            }
            Place::Remote { .. } => None,
        }
    }

    /// Where environments come from, for messages.
    pub fn registry(&self) -> String {
        match (&self.place, self.server()) {
            (Place::Local(local), _) => local.environments_file.display().to_string(),
            (Place::Remote { .. }, server) => server.unwrap_or_default().to_owned(),
        }
    }

    /// The server a remote backend talks to.
    pub fn server(&self) -> Option<&str> {
        match self.client.transport() {
            Link::Local(_) => None,
            Link::Remote(http) => Some(http.server()),
        }
    }

    /// Starts receiving the plugin's events. Call before starting what you want to watch: in
    /// client mode this returns once the server has registered the subscription.
    pub async fn subscribe(&self) -> Events {
        if let Place::Local(local) = &self.place {
            return Events::Local(local.standalone.events.subscribe());
        }
        let Link::Remote(http) = self.client.transport() else {
            return Events::None;
        };
        // Only the answer's head is bounded: the stream stays open as long as it runs.
        let why = match tokio::time::timeout(SUBSCRIBE_TIMEOUT, http.events()).await {
            Ok(Ok(response)) => {
                let (sender, receiver) = mpsc::channel(REMOTE_EVENT_BUFFER);
                tokio::spawn(read_sse(response, sender));
                return Events::Remote(receiver);
            }
            Ok(Err(error)) => error.to_string(),
            Err(_) => "no answer in time".to_owned(),
        };
        if matches!(self.place, Place::Remote { verbose: true }) {
            eprintln!("events: {why}; following by polling only");
        }
        Events::None
    }

    /// Stops the in-process plugin the way the host does: runs still going are stopped and
    /// recorded as interrupted, so the store never keeps a run that nobody executes.
    pub async fn close(self) {
        if let Place::Local(local) = self.place {
            if let Err(error) = local.standalone.stopping() {
                tracing::warn!("{error}");
            }
            plugin_guest::Handler::shutdown(&local.api).await;
        }
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
                "lagged" | "reset" => Some(Incoming::Lost),
                kind => match serde_json::from_str(&message.data) {
                    Ok(data) => Incoming::read(kind, data),
                    Err(_) => Some(Incoming::Lost),
                },
            };
            let Some(incoming) = incoming else { continue };
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
    Event(Event),
    /// Events were skipped, one could not be read, or the stream broke: only polling tells
    /// the rest.
    Lost,
}

impl Incoming {
    /// An event as the bus delivered it; `None` for a kind this CLI does not know.
    fn read(kind: &str, data: Value) -> Option<Incoming> {
        match Event::read(kind, data) {
            Ok(event) => event.map(Incoming::Event),
            Err(error) => {
                tracing::debug!("{error}");
                Some(Incoming::Lost)
            }
        }
    }
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
            Events::Local(receiver) => loop {
                match receiver.recv().await {
                    Ok(event) => {
                        if let Some(incoming) = Incoming::read(&event.kind, event.data) {
                            return Some(incoming);
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => return Some(Incoming::Lost),
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            },
            Events::Remote(receiver) => receiver.recv().await,
            Events::None => None,
        }
    }

    /// An event already received, without waiting.
    pub fn try_next(&mut self) -> Option<Incoming> {
        match self {
            Events::Local(receiver) => loop {
                match receiver.try_recv() {
                    Ok(event) => {
                        if let Some(incoming) = Incoming::read(&event.kind, event.data) {
                            return Some(incoming);
                        }
                    }
                    Err(broadcast::error::TryRecvError::Lagged(_)) => return Some(Incoming::Lost),
                    Err(_) => return None,
                }
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
