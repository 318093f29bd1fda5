//! Host configuration: built-in defaults, then a TOML file, then `PA_` environment variables
//! (`__` separates levels). Every section denies unknown keys and is validated at load, so a
//! typo stops the host with a message naming the key instead of being silently ignored.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
};

use figment::{
    providers::{Env, Format, Serialized, Toml},
    Figment,
};
use plugin_api::Role;
use serde::{Deserialize, Serialize};

/// The file read when `--config` is not given and the file exists.
pub const DEFAULT_CONFIG_PATH: &str = "config/default.toml";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub storage: StorageConfig,
    #[serde(default)]
    pub cluster: ClusterConfig,
    #[serde(default)]
    pub audit: AuditConfig,
    #[serde(default)]
    pub auth: AuthConfig,
    #[serde(default)]
    pub log: LogConfig,
    #[serde(default)]
    pub plugins: BTreeMap<String, PluginConfig>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// Largest request body accepted, in bytes.
    pub body_limit_bytes: usize,
    /// Longest time a request may take before the host answers 504 (streams are exempt once
    /// their headers are sent).
    pub request_timeout_secs: u64,
    /// How long stopping waits, at most, for requests to finish and then for plugin instances
    /// to finish their work. Open streams (SSE, followed logs) end at once.
    pub shutdown_grace_secs: u64,
    /// A client must send a request's headers within this many seconds, or the connection is
    /// closed (also between requests on a kept-alive connection).
    pub header_read_timeout_secs: u64,
    /// Connections served at once; one more is answered 503 and closed.
    pub max_connections: usize,
    /// Connections one client address may hold at once (behind a reverse proxy every client
    /// has the proxy's address: raise it there).
    pub max_connections_per_address: usize,
    /// Open event streams (SSE) and followed logs, each; one more is answered 503.
    pub max_streams: usize,
    /// Open streams (both kinds together) one key, and one client address, may hold.
    pub max_streams_per_client: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            body_limit_bytes: 1024 * 1024,
            request_timeout_secs: 30,
            shutdown_grace_secs: 30,
            header_read_timeout_secs: 10,
            max_connections: 1024,
            max_connections_per_address: 256,
            max_streams: 4096,
            max_streams_per_client: 256,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    pub data_dir: PathBuf,
    /// Where the records are: `""`, the embedded SQLite file in `data_dir`; or
    /// `postgres://user[:password]@host[:port]/database`, a PostgreSQL server.
    #[serde(default)]
    pub url: String,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            data_dir: PathBuf::from("./data"),
            url: String::new(),
        }
    }
}

/// This host as one node of several on one PostgreSQL database (SPEC §4c). On the embedded
/// SQLite the host is the one node all the same, and `GET /api/cluster` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// The node's name, unique among the hosts on one database; `""` is `<hostname>:<port>`
    /// (the port `server.listen` names).
    #[serde(default)]
    pub node_id: String,
    /// A node whose heartbeat has not changed for this long is lost, and its runs go to the
    /// others. It beats three times within it.
    #[serde(default = "default_lease_secs")]
    pub lease_secs: u64,
}

fn default_lease_secs() -> u64 {
    3
}

/// The `lease_secs` accepted: a second at least (the heartbeat's period is a third of it), and
/// no more than five minutes, past which a lost node's runs wait longer than anyone would.
pub const LEASE_SECS: std::ops::RangeInclusive<u64> = 1..=300;

/// `[audit]`: the audit log (SPEC §4d).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// Entries older than this many days are pruned, behind a checkpoint that keeps
    /// `audit verify` passing; 0 keeps every entry.
    #[serde(default = "default_audit_retention_days")]
    pub retention_days: u64,
}

fn default_audit_retention_days() -> u64 {
    365
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            retention_days: default_audit_retention_days(),
        }
    }
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            node_id: String::new(),
            lease_secs: default_lease_secs(),
        }
    }
}

impl ClusterConfig {
    /// The node's name: as configured, else `<hostname>:<port>` (with `localhost` where the
    /// system has no name).
    pub fn node_id(&self, listen: SocketAddr) -> String {
        if !self.node_id.is_empty() {
            return self.node_id.clone();
        }
        let hostname = nix::unistd::gethostname()
            .ok()
            .and_then(|name| name.into_string().ok())
            .filter(|name| !name.is_empty() && check_node_id(name).is_ok())
            .unwrap_or_else(|| "localhost".to_owned());
        format!("{hostname}:{}", listen.port())
    }
}

/// Checks a node id: 1 to 128 letters, digits, `.`, `_`, `:` and `-`.
pub fn check_node_id(id: &str) -> Result<(), String> {
    let valid = !id.is_empty()
        && id.len() <= 128
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-'));
    if valid {
        Ok(())
    } else {
        Err(format!(
            "{id:?} is not a node id: use 1 to 128 letters, digits, '.', '_', ':' and '-'"
        ))
    }
}

/// `url` as it may be shown: the password of its user part replaced
/// (`postgres://u:<redacted>@h/db`); a text that names a password any other way (a
/// `password=` parameter, a `key=value` string) is not shown at all.
pub fn url_without_password(url: &str) -> String {
    if url.to_ascii_lowercase().contains("password") {
        return "<redacted>".into();
    }
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    // The user part ends at the first `@`, as the client reads it (a password may hold `/`).
    match rest.split_once('@') {
        Some((user, host)) => match user.split_once(':') {
            Some((name, _)) => format!("{scheme}://{name}:<redacted>@{host}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    #[serde(default)]
    pub keys: Vec<KeyConfig>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    pub name: String,
    pub role: RoleName,
    /// Hex SHA-256 of the key; the key itself is never stored.
    pub sha256: String,
}

/// A role by name: in config files, on the command line (`keygen --role`) and in API answers.
/// The plugin interface's `Role` is the same ladder in ABI-stable form.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum RoleName {
    User,
    Developer,
    Admin,
}

impl From<RoleName> for Role {
    fn from(role: RoleName) -> Role {
        match role {
            RoleName::User => Role::User,
            RoleName::Developer => Role::Developer,
            RoleName::Admin => Role::Admin,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A `tracing` filter, e.g. `info` or `powerautomation=debug,info`. `RUST_LOG` wins.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Pretty,
            level: "info".into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Pretty,
    Json,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginConfig {
    #[serde(default = "yes")]
    pub enabled: bool,
    /// The library file, or a directory holding `lib<name>.so`.
    pub path: PathBuf,
    /// Where the plugin's routes are served.
    pub mount: String,
    /// Reload when the file changes.
    #[serde(default)]
    pub watch: bool,
    /// Optional pin: the hex SHA-256 the library must have. Empty means any build.
    #[serde(default)]
    pub sha256: String,
    /// Where the plugin's code runs: in the host's process (the default, fastest; contains
    /// panics only) or in a child process of its own (a crash of any kind answers 502 for the
    /// requests in flight and the child is restarted).
    #[serde(default)]
    pub isolation: Isolation,
    /// Process mode only: the memory the child may write, in MiB (`RLIMIT_DATA`: heap and
    /// private mappings, including thread stacks), inherited by the commands it starts. An
    /// allocation over it fails, which ends the child (a crash).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_limit_mb: Option<u64>,
    /// Process mode only: the child's CPU weight against the host's 1024, as cgroup
    /// `cpu.shares` counts it (2 to 1024). The child and every thread and command it starts
    /// run at the scheduler priority of the nearest weight, so on busy cores it gets about
    /// that share next to the host's threads. Unset: the same weight as the host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_shares: Option<u32>,
    /// Process mode only: how long the child may take to load and start the plugin before it
    /// is killed and the start counts as failed. Unset: 60 seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_timeout_secs: Option<u64>,
    /// Process mode only: more crashes than this within `crash_window_secs` leave the plugin
    /// `failed` (no more restarts) until an operator reloads it.
    #[serde(default = "default_max_crashes")]
    pub max_crashes: u32,
    #[serde(default = "default_crash_window_secs")]
    pub crash_window_secs: u64,
    /// Handed to the plugin as JSON.
    #[serde(default = "empty_table")]
    pub settings: serde_json::Value,
}

/// Where a plugin's code runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Isolation {
    /// Loaded into the host's process: native speed, real unloading; a panic is contained, a
    /// segfault or an abort is not.
    #[default]
    InProcess,
    /// Loaded by a child process (`powerautomation plugin-runner`) that the host talks to over
    /// a socket; a crash of the child leaves the host serving.
    Process,
}

impl Isolation {
    pub fn as_str(self) -> &'static str {
        match self {
            Isolation::InProcess => "in_process",
            Isolation::Process => "process",
        }
    }
}

fn default_max_crashes() -> u32 {
    5
}

fn default_crash_window_secs() -> u64 {
    60
}

fn yes() -> bool {
    true
}

fn empty_table() -> serde_json::Value {
    serde_json::Value::Object(Default::default())
}

impl Default for Config {
    fn default() -> Self {
        let mut plugins = BTreeMap::new();
        plugins.insert(
            "deployment_mcp".to_owned(),
            PluginConfig {
                enabled: true,
                path: PathBuf::from("target/release/libdeployment_mcp.so"),
                mount: "/api/deployment".into(),
                watch: true,
                sha256: String::new(),
                isolation: Isolation::InProcess,
                memory_limit_mb: None,
                cpu_shares: None,
                start_timeout_secs: None,
                max_crashes: default_max_crashes(),
                crash_window_secs: default_crash_window_secs(),
                settings: serde_json::json!({
                    "environments_file": "config/remote_environments.json"
                }),
            },
        );
        Config {
            server: ServerConfig::default(),
            storage: StorageConfig::default(),
            cluster: ClusterConfig::default(),
            audit: AuditConfig::default(),
            auth: AuthConfig::default(),
            log: LogConfig::default(),
            plugins,
        }
    }
}

/// Where the configuration came from, for messages.
#[derive(Debug, Clone)]
pub struct ConfigSource {
    pub file: Option<PathBuf>,
}

/// Loads the configuration. `explicit` is `--config`: it must be readable. Without it,
/// [`DEFAULT_CONFIG_PATH`] is read when it exists.
pub fn load(explicit: Option<&Path>) -> Result<(Config, ConfigSource), String> {
    let file = match explicit {
        Some(path) => Some(path.to_path_buf()),
        None => Some(PathBuf::from(DEFAULT_CONFIG_PATH)).filter(|path| path.exists()),
    };
    let mut figment = Figment::from(Serialized::defaults(Config::default()));
    if let Some(path) = &file {
        // Read it ourselves: figment skips a missing file silently, we must not.
        std::fs::read_to_string(path)
            .map_err(|error| format!("cannot read config file {}: {error}", path.display()))?;
        figment = figment.merge(Toml::file_exact(path));
    }
    figment = figment.merge(Env::prefixed("PA_").split("__"));
    let config: Config = figment.extract().map_err(|error| {
        let mut message = String::from("invalid configuration");
        for problem in error {
            message.push_str("\n  - ");
            message.push_str(&problem.to_string());
        }
        message
    })?;
    config.validate()?;
    Ok((config, ConfigSource { file }))
}

/// The smallest `memory_limit_mb` accepted: a child's runtime and loaded libraries alone take
/// tens of MiB.
const MIN_MEMORY_LIMIT_MB: u64 = 64;

/// The `cpu_shares` accepted: cgroup v1's smallest weight up to the host's own.
const CPU_SHARES: std::ops::RangeInclusive<u32> = 2..=1024;

/// How long a child may take to start the plugin when `start_timeout_secs` is unset.
pub const DEFAULT_START_TIMEOUT_SECS: u64 = 60;

/// Paths the host's own routes use; a plugin may not be mounted over them.
const RESERVED_PREFIXES: &[&str] = &[
    "/health",
    "/metrics",
    "/api/plugins",
    "/api/openapi.json",
    "/api/cluster",
];

impl Config {
    /// Checks what types alone cannot; each message names the key.
    pub fn validate(&self) -> Result<(), String> {
        let mut problems = Vec::new();
        let url = &self.storage.url;
        if !url.is_empty() && !url.starts_with("postgres://") && !url.starts_with("postgresql://") {
            problems.push(
                "storage.url: is not a PostgreSQL URL; use \"\" (the embedded SQLite in storage.data_dir) or postgres://user@host:port/database".to_owned(),
            );
        }
        if !self.cluster.node_id.is_empty() {
            if let Err(error) = check_node_id(&self.cluster.node_id) {
                problems.push(format!("cluster.node_id: {error}"));
            }
        }
        if !LEASE_SECS.contains(&self.cluster.lease_secs) {
            problems.push(format!(
                "cluster.lease_secs: expected {} to {} seconds, got {}",
                LEASE_SECS.start(),
                LEASE_SECS.end(),
                self.cluster.lease_secs
            ));
        }
        if self.server.body_limit_bytes == 0 {
            problems.push("server.body_limit_bytes: must be at least 1".to_owned());
        }
        if self.server.request_timeout_secs == 0 {
            problems.push("server.request_timeout_secs: must be at least 1".to_owned());
        }
        if self.server.header_read_timeout_secs == 0 {
            problems.push("server.header_read_timeout_secs: must be at least 1".to_owned());
        }
        if self.server.max_connections == 0 {
            problems.push("server.max_connections: must be at least 1".to_owned());
        }
        if self.server.max_streams == 0 {
            problems.push("server.max_streams: must be at least 1".to_owned());
        }
        if self.server.max_connections_per_address == 0 {
            problems.push("server.max_connections_per_address: must be at least 1".to_owned());
        }
        if self.server.max_streams_per_client == 0 {
            problems.push("server.max_streams_per_client: must be at least 1".to_owned());
        }
        let mut names = std::collections::HashSet::new();
        for (index, key) in self.auth.keys.iter().enumerate() {
            if key.name.trim().is_empty() {
                problems.push(format!("auth.keys[{index}].name: must not be empty"));
            } else if key.name.len() > 128 {
                // The audit log names the key of every call; its entries take 128 bytes.
                problems.push(format!(
                    "auth.keys[{index}].name: at most 128 bytes (got {})",
                    key.name.len()
                ));
            }
            if !names.insert(key.name.as_str()) {
                problems.push(format!(
                    "auth.keys[{index}].name: {:?} is used by another key",
                    key.name
                ));
            }
            if !is_sha256_hex(&key.sha256) {
                problems.push(format!(
                    "auth.keys[{index}].sha256: expected 64 hexadecimal characters (the SHA-256 of the key; `powerautomation keygen` prints it)"
                ));
            }
        }
        let mut mounts: Vec<(&str, &str)> = Vec::new();
        for (name, plugin) in &self.plugins {
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                problems.push(format!(
                    "plugins.{name}: plugin names use letters, digits, '_' and '-'"
                ));
            }
            let mount = plugin.mount.as_str();
            if !mount.starts_with('/') || mount.len() < 2 || mount.ends_with('/') {
                problems.push(format!(
                    "plugins.{name}.mount: expected a path like \"/api/{name}\" (leading '/', no trailing '/'), got {mount:?}"
                ));
            } else if mount.contains(['{', '}', '*', '?', '#']) {
                problems.push(format!(
                    "plugins.{name}.mount: must be a literal path, got {mount:?}"
                ));
            } else if RESERVED_PREFIXES
                .iter()
                .any(|reserved| overlaps(mount, reserved))
            {
                problems.push(format!(
                    "plugins.{name}.mount: {mount:?} overlaps a host endpoint"
                ));
            }
            if let Some((other, _)) = mounts
                .iter()
                .find(|(_, other_mount)| overlaps(mount, other_mount))
            {
                problems.push(format!(
                    "plugins.{name}.mount: {mount:?} overlaps the mount of plugin {other}"
                ));
            }
            mounts.push((name, mount));
            if !plugin.sha256.is_empty() && !is_sha256_hex(&plugin.sha256) {
                problems.push(format!(
                    "plugins.{name}.sha256: expected empty or 64 hexadecimal characters"
                ));
            }
            if !plugin.settings.is_object() {
                problems.push(format!("plugins.{name}.settings: expected a table"));
            }
            match (plugin.isolation, plugin.memory_limit_mb) {
                (Isolation::InProcess, Some(_)) => problems.push(format!(
                    "plugins.{name}.memory_limit_mb: applies to isolation = \"process\" only; set that or remove the limit"
                )),
                (Isolation::Process, Some(limit)) if limit < MIN_MEMORY_LIMIT_MB => {
                    problems.push(format!(
                        "plugins.{name}.memory_limit_mb: expected at least {MIN_MEMORY_LIMIT_MB} (the child's runtime needs that much address space), got {limit}"
                    ))
                }
                _ => {}
            }
            match (plugin.isolation, plugin.cpu_shares) {
                (Isolation::InProcess, Some(_)) => problems.push(format!(
                    "plugins.{name}.cpu_shares: applies to isolation = \"process\" only; set that or remove the weight"
                )),
                (Isolation::Process, Some(shares)) if !CPU_SHARES.contains(&shares) => {
                    problems.push(format!(
                        "plugins.{name}.cpu_shares: expected {} to {} (the host's own weight; more would need privileges the host should not have), got {shares}",
                        CPU_SHARES.start(),
                        CPU_SHARES.end()
                    ))
                }
                _ => {}
            }
            match (plugin.isolation, plugin.start_timeout_secs) {
                (Isolation::InProcess, Some(_)) => problems.push(format!(
                    "plugins.{name}.start_timeout_secs: applies to isolation = \"process\" only (a start in the host's process cannot be stopped); set that or remove the timeout"
                )),
                (Isolation::Process, Some(0)) => problems.push(format!(
                    "plugins.{name}.start_timeout_secs: must be at least 1"
                )),
                _ => {}
            }
            if plugin.crash_window_secs == 0 {
                problems.push(format!(
                    "plugins.{name}.crash_window_secs: must be at least 1"
                ));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "invalid configuration\n  - {}",
                problems.join("\n  - ")
            ))
        }
    }

    /// The merged configuration as TOML with secrets replaced, for `check-config`.
    pub fn masked_toml(&self) -> Result<String, String> {
        let mut value = serde_json::to_value(self).map_err(|error| error.to_string())?;
        if let Some(keys) = value
            .pointer_mut("/auth/keys")
            .and_then(serde_json::Value::as_array_mut)
        {
            for key in keys {
                if let Some(hash) = key.get_mut("sha256") {
                    *hash = serde_json::Value::String("<redacted>".into());
                }
            }
        }
        if let Some(url) = value.pointer_mut("/storage/url") {
            if let Some(text) = url.as_str() {
                *url = serde_json::Value::String(url_without_password(text));
            }
        }
        if let Some(plugins) = value
            .get_mut("plugins")
            .and_then(serde_json::Value::as_object_mut)
        {
            for plugin in plugins.values_mut() {
                if let Some(settings) = plugin.get_mut("settings") {
                    mask_secrets(settings);
                }
            }
        }
        toml::to_string_pretty(&value).map_err(|error| error.to_string())
    }
}

fn overlaps(a: &str, b: &str) -> bool {
    let within =
        |inner: &str, outer: &str| inner == outer || inner.starts_with(&format!("{outer}/"));
    within(a, b) || within(b, a)
}

pub fn is_sha256_hex(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Whether a settings key names a secret value.
pub fn is_secret_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    [
        "secret",
        "token",
        "password",
        "passphrase",
        "api_key",
        "access_key",
    ]
    .iter()
    .any(|word| key.contains(word))
}

fn mask_secrets(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, inner) in map.iter_mut() {
                if is_secret_key(key) && !inner.is_null() {
                    *inner = serde_json::Value::String("<redacted>".into());
                } else {
                    mask_secrets(inner);
                }
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(mask_secrets),
        _ => {}
    }
}

#[cfg(test)]
mod tests;
