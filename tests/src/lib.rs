//! Harness for end-to-end tests: runs the real `powerautomation` binary with real plugin
//! libraries from the workspace's target directory, each host in its own temporary directory
//! and on a port the OS picks.
//!
//! The artifacts must be built first (`cargo build --workspace`, which README's test command
//! does); a missing one fails the test with that instruction rather than skipping it.

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex, OnceLock,
    },
    time::{Duration, Instant},
};

pub use nix::sys::signal::Signal;
use sha2::{Digest, Sha256};

pub mod bench;
pub mod moto;
pub mod postgres;
pub mod receiver;
pub mod scenario;
pub mod sshd;
pub mod targets;

pub const ADMIN_KEY: &str = "pa_test_admin_0123456789abcdef";
pub const DEVELOPER_KEY: &str = "pa_test_developer_0123456789abcdef";
pub const USER_KEY: &str = "pa_test_user_0123456789abcdef";
/// A second admin (`ops2`), for four-eyes approvals.
pub const SECOND_ADMIN_KEY: &str = "pa_test_second_admin_0123456789abcdef";

/// How long a host may take to start before a test fails.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);

pub fn sha256_hex(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// The workspace root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(".."))
}

/// The profile directory this test binary was built into (`target/debug` or `target/release`).
pub fn artifacts_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary knows its path");
    // target/<profile>/deps/<test binary>
    exe.parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .expect("test binaries live in target/<profile>/deps")
}

fn artifact(file: &str) -> PathBuf {
    let path = artifacts_dir().join(file);
    assert!(
        path.is_file(),
        "{} is missing: build the workspace first with `cargo build --workspace{}`",
        path.display(),
        if cfg!(debug_assertions) {
            ""
        } else {
            " --release"
        }
    );
    path
}

pub fn host_binary() -> PathBuf {
    artifact("powerautomation")
}

/// A plugin library built in this workspace, by library name (e.g. `deployment_mcp`,
/// `deployment_mcp_next`, `fixture_probe`).
pub fn plugin_library(name: &str) -> PathBuf {
    artifact(&format!("lib{name}.so"))
}

/// The standalone CLI, `deployment-mcp`.
pub fn cli_binary() -> PathBuf {
    artifact("deployment-mcp")
}

/// Options for [`TestHost::start`].
#[derive(Clone)]
pub struct HostOptions {
    /// Library installed as the configured plugin file; `None` leaves the file absent.
    pub plugin: Option<&'static str>,
    pub watch: bool,
    /// Extra environment variables for the host process.
    pub env: Vec<(String, String)>,
    /// Extra command-line arguments (before none: the default subcommand is `serve`).
    pub args: Vec<String>,
    /// The environments file content for the real plugin.
    pub environments: String,
    /// Extra lines for `[plugins.deployment_mcp]` itself (TOML), e.g. `isolation = "process"`;
    /// they go before its settings table.
    pub plugin_config: String,
    /// Extra lines for `[plugins.deployment_mcp.settings]` (TOML).
    pub settings: String,
    /// `allowed_target_networks` (a TOML array): loopback by default, so nothing a test
    /// creates, however generated, can make the host reach off this machine.
    pub target_networks: String,
    /// Extra lines for `[server]` (TOML).
    pub server: String,
    /// `server.request_timeout_secs`: long enough for the slowest test request by default.
    pub request_timeout_secs: u64,
    /// More plugins, each from a library of the workspace at its own mount.
    pub extra_plugins: Vec<ExtraPlugin>,
}

/// The loopback networks, as an `allowed_target_networks` TOML array.
pub const LOOPBACK_NETWORKS: &str = r#"["127.0.0.0/8", "::1/128"]"#;

/// A second plugin for [`HostOptions::extra_plugins`].
#[derive(Clone, Debug)]
pub struct ExtraPlugin {
    /// The name it is configured under (must be the name the library reports).
    pub name: &'static str,
    /// The library, by name (`lib<library>.so` in the artifacts directory).
    pub library: &'static str,
    pub mount: &'static str,
    /// Extra lines for the plugin's own table (TOML), e.g. `isolation = "process"`.
    pub config: &'static str,
}

impl Default for HostOptions {
    fn default() -> Self {
        HostOptions {
            plugin: Some("deployment_mcp"),
            watch: false,
            env: Vec::new(),
            args: Vec::new(),
            environments: demo_environments(),
            plugin_config: String::new(),
            settings: String::new(),
            target_networks: LOOPBACK_NETWORKS.to_owned(),
            server: String::new(),
            request_timeout_secs: 60,
            extra_plugins: Vec::new(),
        }
    }
}

/// The demo catalog: a `local` environment that succeeds, the original's `mac_local_001` (ssh,
/// with a health URL) pointed at a loopback port that refuses connections, so triggering or
/// health-checking it fails at once and never leaves this machine, and a disabled `http_api`
/// environment with a token (a secret that must never be shown).
pub fn demo_environments() -> String {
    let port = closed_port();
    format!(
        r#"{{"environments": [
  {{"environment_id": "local_demo", "environment_type": "linux_local", "connection_method": "local",
   "command": ["true"], "timeout": 30}},
  {{"environment_id": "mac_local_001", "environment_type": "mac_local", "connection_method": "ssh",
   "host": "127.0.0.1", "port": {port}, "username": "alex", "ssh_key_path": "~/.ssh/id_ed25519",
   "init_script_path": "./init_aicore.sh", "health_check_url": "http://127.0.0.1:{port}/health",
   "timeout": 300}},
  {{"environment_id": "api_demo", "environment_type": "docker_container", "connection_method": "http_api",
   "host": "127.0.0.1", "port": {port}, "api_token": "secret-token-value", "enabled": false}}
]}}"#
    )
}

/// A loopback port on which nothing listens and nothing can start listening while this test
/// process runs: a socket is bound to it and never put in the listening state, so every
/// connection attempt is refused at once (no assumption that some well-known port is free).
pub fn closed_port() -> u16 {
    static HELD: OnceLock<(socket2::Socket, u16)> = OnceLock::new();
    HELD.get_or_init(|| {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("create a socket to hold a closed port");
        let address = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
        socket
            .bind(&address.into())
            .expect("bind a loopback port to hold closed");
        let port = socket
            .local_addr()
            .ok()
            .and_then(|address| address.as_socket())
            .map(|address| address.port())
            .expect("the held port's number");
        (socket, port)
    })
    .1
}

/// A command for a process the tests start (the host, the CLI): never asks the EC2 metadata
/// service, whatever the machine, so nothing a test starts sends a packet off this machine; and
/// reads only the configuration the test gives it, not `PA_*` variables of whoever runs the
/// tests (the host takes every one of them as a configuration key).
pub fn local_command(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut command = Command::new(program);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("PA_") {
            command.env_remove(name);
        }
    }
    command
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env_remove("AWS_EC2_METADATA_SERVICE_ENDPOINT")
        .env_remove("AWS_ENDPOINT_URL")
        .env_remove("AWS_ENDPOINT_URL_EC2");
    command
}

/// A running host.
pub struct TestHost {
    child: Option<Child>,
    pub url: String,
    /// The host's working area: config, data dir, plugin file.
    pub dir: PathBuf,
    pub plugin_file: PathBuf,
    logs: Arc<Mutex<Vec<String>>>,
    client: reqwest::Client,
}

/// Writes the test configuration into `dir` and returns its path.
pub fn write_config(dir: &Path, options: &HostOptions) -> PathBuf {
    std::fs::create_dir_all(dir.join("plugins")).expect("create the plugin directory");
    let environments = dir.join("environments.json");
    std::fs::write(&environments, &options.environments).expect("write the environments file");
    let mut extra = String::new();
    for plugin in &options.extra_plugins {
        let file = dir.join(format!("plugins/lib{}.so", plugin.name));
        install_library(&plugin_library(plugin.library), &file);
        extra.push_str(&format!(
            "\n[plugins.{name}]\nenabled = true\npath = \"{path}\"\nmount = \"{mount}\"\nwatch = false\n{config}\n",
            name = plugin.name,
            path = file.display(),
            mount = plugin.mount,
            config = plugin.config,
        ));
    }
    let config = format!(
        r#"[server]
listen = "127.0.0.1:0"
request_timeout_secs = {timeout}
{server}

[storage]
data_dir = "{data}"

[auth]
keys = [
  {{ name = "ops", role = "admin", sha256 = "{admin}" }},
  {{ name = "dev", role = "developer", sha256 = "{developer}" }},
  {{ name = "viewer", role = "user", sha256 = "{user}" }},
  {{ name = "ops2", role = "admin", sha256 = "{second_admin}" }},
]

[log]
format = "json"
level = "info"

[plugins.deployment_mcp]
enabled = true
path = "{plugin}"
mount = "/api/deployment"
watch = {watch}
{plugin_config}

[plugins.deployment_mcp.settings]
environments_file = "{environments}"
allowed_target_networks = {networks}
{settings}
{extra}
"#,
        data = dir.join("data").display(),
        admin = sha256_hex(ADMIN_KEY),
        developer = sha256_hex(DEVELOPER_KEY),
        user = sha256_hex(USER_KEY),
        second_admin = sha256_hex(SECOND_ADMIN_KEY),
        plugin = dir.join("plugins/libdeployment_mcp.so").display(),
        watch = options.watch,
        plugin_config = options.plugin_config,
        environments = environments.display(),
        settings = options.settings,
        networks = options.target_networks,
        timeout = options.request_timeout_secs,
        server = options.server,
        extra = extra,
    );
    let path = dir.join("powerautomation.toml");
    std::fs::write(&path, config).expect("write the config file");
    path
}

/// Replaces `target` with a copy of `library` the way an operator would: write aside, rename.
pub fn install_library(library: &Path, target: &Path) {
    let staging = target.with_extension("so.new");
    std::fs::copy(library, &staging).expect("copy the plugin library");
    std::fs::rename(&staging, target).expect("move the plugin library into place");
}

impl TestHost {
    /// Starts a host in `dir` (created when missing) with the test configuration.
    pub async fn start(dir: &Path, options: HostOptions) -> TestHost {
        let config = write_config(dir, &options);
        let plugin_file = dir.join("plugins/libdeployment_mcp.so");
        match options.plugin {
            Some(name) => install_library(&plugin_library(name), &plugin_file),
            None => {
                let _ = std::fs::remove_file(&plugin_file);
            }
        }
        let mut args = vec!["--config".to_owned(), config.display().to_string()];
        args.extend(options.args.iter().cloned());
        TestHost::spawn(dir, &args, &options.env, plugin_file).await
    }

    /// Starts the host binary with exactly these arguments and variables, from the repo root.
    pub async fn spawn(
        dir: &Path,
        args: &[String],
        env: &[(String, String)],
        plugin_file: PathBuf,
    ) -> TestHost {
        let mut command = local_command(host_binary());
        command
            .args(args)
            .current_dir(repo_root())
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (key, _) in std::env::vars() {
            if key.starts_with("PA_") {
                command.env_remove(key);
            }
        }
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = command.spawn().expect("start powerautomation");
        let logs = Arc::new(Mutex::new(Vec::new()));
        if let Some(stderr) = child.stderr.take() {
            let logs = Arc::clone(&logs);
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    logs.lock().expect("log buffer").push(line);
                }
            });
        }
        let mut host = TestHost {
            child: Some(child),
            url: String::new(),
            dir: dir.to_path_buf(),
            plugin_file,
            logs,
            client: reqwest::Client::builder()
                .pool_max_idle_per_host(256)
                .build()
                .expect("http client"),
        };
        let address = host
            .wait_for_log_value("listening", "address", START_TIMEOUT)
            .await
            .unwrap_or_else(|| panic!("the host did not start listening; log:\n{}", host.logs()));
        host.url = format!("http://{address}");
        host
    }

    /// Waits (bounded) for the host to exit by itself; its exit status, or `None` when it
    /// is still running at the deadline.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            let child = self.child.as_mut()?;
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Sends `signal` and waits (bounded) for the exit; the status and how long it took.
    pub async fn stop_with(
        &mut self,
        signal: Signal,
        timeout: Duration,
    ) -> (Option<ExitStatus>, Duration) {
        let started = Instant::now();
        send_signal(self.pid(), signal);
        let status = self.wait_exit(timeout).await;
        (status, started.elapsed())
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    /// Everything the host logged so far.
    pub fn logs(&self) -> String {
        self.logs.lock().expect("log buffer").join("\n")
    }

    /// Waits for a JSON log line whose message is `message` and returns its field `field`.
    pub async fn wait_for_log_value(
        &self,
        message: &str,
        field: &str,
        timeout: Duration,
    ) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let found = self
                .logs
                .lock()
                .expect("log buffer")
                .iter()
                .find_map(|line| {
                    let value: serde_json::Value = serde_json::from_str(line).ok()?;
                    let fields = value.get("fields")?;
                    (fields.get("message")?.as_str()? == message)
                        .then(|| fields.get(field))
                        .flatten()
                        .map(|value| {
                            value
                                .as_str()
                                .map(str::to_owned)
                                .unwrap_or_else(|| value.to_string())
                        })
                });
            if found.is_some() {
                return found;
            }
            if Instant::now() >= deadline || self.has_exited() {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until some log line contains `needle`.
    pub async fn wait_for_log(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self
                .logs
                .lock()
                .expect("log buffer")
                .iter()
                .any(|line| line.contains(needle))
            {
                return true;
            }
            if Instant::now() >= deadline || self.has_exited() {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn has_exited(&self) -> bool {
        !process_alive(self.pid())
    }

    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// Sends a request and returns the status and the body as JSON (`Null` when not JSON).
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        key: Option<&str>,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        let mut request = self.client.request(method, format!("{}{}", self.url, path));
        if let Some(key) = key {
            request = request.header("X-API-Key", key);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("the host answers");
        let status = response.status().as_u16();
        let bytes = response.bytes().await.unwrap_or_default();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
        )
    }

    pub async fn get(&self, path: &str, key: Option<&str>) -> (u16, serde_json::Value) {
        self.call(reqwest::Method::GET, path, key, None).await
    }

    /// `POST /api/plugins/deployment_mcp/reload` as admin.
    pub async fn reload(&self) -> (u16, serde_json::Value) {
        self.reload_plugin("deployment_mcp").await
    }

    /// `POST /api/plugins/{name}/reload` as admin.
    pub async fn reload_plugin(&self, name: &str) -> (u16, serde_json::Value) {
        self.call(
            reqwest::Method::POST,
            &format!("/api/plugins/{name}/reload"),
            Some(ADMIN_KEY),
            None,
        )
        .await
    }

    /// The `/api/plugins` entry of deployment_mcp.
    pub async fn plugin_status(&self) -> serde_json::Value {
        self.plugin_status_of("deployment_mcp").await
    }

    /// The `/api/plugins` entry of the plugin configured as `name` (`Null` when none).
    pub async fn plugin_status_of(&self, name: &str) -> serde_json::Value {
        let (status, body) = self.get("/api/plugins", Some(USER_KEY)).await;
        assert_eq!(status, 200, "{body}");
        body["plugins"]
            .as_array()
            .and_then(|plugins| plugins.iter().find(|p| p["name"] == name).cloned())
            .unwrap_or(serde_json::Value::Null)
    }

    /// Installs another build as the configured plugin file.
    pub fn install_plugin(&self, name: &str) {
        install_library(&plugin_library(name), &self.plugin_file);
    }

    pub fn signal(&self, signal: Signal) {
        send_signal(self.pid(), signal);
    }

    /// Stops the host with SIGTERM and waits (bounded) for it to exit.
    pub fn stop(mut self) -> Option<ExitStatus> {
        self.shutdown(Signal::SIGTERM)
    }

    /// Kills the host with SIGKILL: no chance to clean up.
    pub fn kill(mut self) -> Option<ExitStatus> {
        self.shutdown(Signal::SIGKILL)
    }

    fn shutdown(&mut self, signal: Signal) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        send_signal(child.id(), signal);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                return child.wait().ok();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for TestHost {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Sends `signal` to process `pid` (nothing for pid 0).
pub fn send_signal(pid: u32, signal: Signal) {
    if let Ok(pid) = i32::try_from(pid) {
        if pid > 0 {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal);
        }
    }
}

/// Whether `pid` is a live (not zombie) process.
pub fn process_alive(pid: u32) -> bool {
    pid != 0
        && std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|stat| {
                stat.rsplit_once(')')
                    .map(|(_, rest)| !rest.trim_start().starts_with('Z'))
            })
            .unwrap_or(false)
}

/// The processes whose `/proc/PID/stat` fields after the command (state, parent, group, …)
/// pass `test`.
pub fn processes_where(test: impl Fn(&[&str]) -> bool) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| {
                    let (_, rest) = stat.rsplit_once(')')?;
                    Some(test(&rest.split_whitespace().collect::<Vec<_>>()))
                })
                .unwrap_or(false)
        })
        .collect()
}

/// Polls `condition` every 20 ms until it holds or `timeout` passes; returns whether it held.
pub async fn wait_until<F, Fut>(timeout: Duration, mut condition: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if condition().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A server [`serve_loopback`] started.
pub struct Served {
    pub address: std::net::SocketAddr,
    /// Connections accepted so far, whether or not they sent a request.
    pub connections: Arc<AtomicUsize>,
    /// Serves until aborted.
    pub task: tokio::task::JoinHandle<()>,
}

/// Serves `app` on a free loopback port until the returned task is aborted.
pub async fn serve_loopback(app: axum::Router) -> Served {
    use axum::serve::ListenerExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a loopback port");
    let address = listener.local_addr().expect("local address");
    let connections = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&connections);
    let listener = listener.tap_io(move |_| {
        counted.fetch_add(1, Ordering::Relaxed);
    });
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Served {
        address,
        connections,
        task,
    }
}

/// Resident memory of a process, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmRSS:")
}

/// Resident anonymous memory of a process (heaps, stacks), in KiB: what a leak grows. Unlike
/// [`rss_kib`] it leaves out pages of mapped files, such as how much of the active plugin
/// copy's code a request happened to touch.
pub fn anon_rss_kib(pid: u32) -> u64 {
    status_kib(pid, "RssAnon:")
}

/// A `/proc/<pid>/status` line in kB (0 when the process or the line is gone).
fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status.lines().find_map(|line| {
                line.strip_prefix(field)
                    .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            })
        })
        .unwrap_or(0)
}

/// Distinct plugin copies mapped into a process.
pub fn mapped_plugin_copies(pid: u32) -> Vec<String> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
    let mut copies: Vec<String> = maps
        .lines()
        .filter_map(|line| line.split_whitespace().nth(5))
        .filter(|path| path.contains("plugin-copies"))
        .map(str::to_owned)
        .collect();
    copies.sort();
    copies.dedup();
    copies
}

/// Sends a POST that declares a `Content-Length` of `declared` bytes but sends none of them, and
/// returns the status and body of the answer. A server that enforces its body limit answers 413
/// from the headers alone, so this never races a closing connection the way sending the bytes
/// would.
pub async fn post_declaring_length(
    url: &str,
    path: &str,
    key: &str,
    declared: usize,
) -> (u16, serde_json::Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let address = url.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(address)
        .await
        .expect("connect to the host");
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {address}\r\nX-API-Key: {key}\r\nContent-Type: application/json\r\nContent-Length: {declared}\r\nConnection: close\r\n\r\n"
    );
    stream
        .write_all(head.as_bytes())
        .await
        .expect("send the request head");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
    let text = String::from_utf8_lossy(&answer);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, body)| body)
        .unwrap_or_default();
    (
        status,
        serde_json::from_str(body).unwrap_or(serde_json::Value::Null),
    )
}

/// Runs a host on `config` (with `env` added) that must refuse to start: asserts that it
/// exited with a failure, and returns its standard error as text.
pub fn second_host(config: &Path, env: &[(&str, &str)]) -> String {
    let mut command = local_command(host_binary());
    command
        .args(["--config", &config.display().to_string()])
        .current_dir(repo_root())
        .env_remove("RUST_LOG");
    for (key, value) in env {
        command.env(key, value);
    }
    let output = command.output().expect("run a second host");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(
        !output.status.success(),
        "the second host must not run: {stderr}"
    );
    stderr
}

/// A small deterministic generator: the same seed gives the same sequence (a property test's
/// cases, reproducible from the seed a failure prints).
pub struct Lcg(pub u64);

impl Lcg {
    /// The next number below `bound`.
    pub fn next(&mut self, bound: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % bound
    }
}
