//! Target environments. [`Environment`] is the model: what every environment has, and its
//! [`Connection`], one variant per connection method holding exactly the fields that method
//! uses, checked once when the environment is read. [`EnvironmentJson`] is the original flat
//! `remote_environments.json` shape (files, the API and the store read and write it unchanged);
//! the model converts from it (validating) and back. Fields that do not apply to the
//! connection method (an `api_token` on an ssh environment) are accepted there and not kept.

use std::{collections::BTreeMap, path::Path};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EnvironmentType {
    MacLocal,
    WindowsLocal,
    LinuxLocal,
    DockerContainer,
}

impl EnvironmentType {
    pub fn as_str(self) -> &'static str {
        match self {
            EnvironmentType::MacLocal => "mac_local",
            EnvironmentType::WindowsLocal => "windows_local",
            EnvironmentType::LinuxLocal => "linux_local",
            EnvironmentType::DockerContainer => "docker_container",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ConnectionMethod {
    Ssh,
    HttpApi,
    Webhook,
    Local,
}

/// One environment in the original flat shape, as files, the API and the store hold it.
/// `api_token` and `webhook_secret` are secrets: they are kept in the store but never shown (see
/// [`crate::wire::EnvironmentView`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = Environment)]
pub struct EnvironmentJson {
    #[schema(pattern = "^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]
    pub environment_id: String,
    pub environment_type: EnvironmentType,
    pub connection_method: ConnectionMethod,
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default)]
    #[schema(minimum = 1, maximum = 65535)]
    pub port: Option<u16>,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub ssh_key_path: Option<String>,
    #[serde(default)]
    pub known_hosts_path: Option<String>,
    #[serde(default)]
    pub init_script_path: Option<String>,
    #[serde(default)]
    pub working_directory: Option<String>,
    #[serde(default)]
    pub health_check_url: Option<String>,
    /// Seconds this environment's trigger and verification may take.
    #[serde(default = "default_timeout")]
    #[schema(minimum = 1, maximum = 86400, default = 300)]
    pub timeout: u64,
    #[serde(default)]
    pub api_token: Option<String>,
    #[serde(default)]
    pub webhook_url: Option<String>,
    #[serde(default)]
    pub webhook_secret: Option<String>,
    #[serde(default)]
    pub command: Option<Vec<String>>,
    #[serde(default = "default_enabled")]
    pub enabled: bool,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    #[serde(default)]
    pub description: Option<String>,
    /// Rollout order: lower first (then by id) in rolling and canary deployments.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub order: i64,
    /// `local`: what a rollback runs (an argument vector, like `command`); without it, the
    /// normal command runs with `PA_ROLLBACK=1` and the previous version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback_command: Option<Vec<String>>,
    /// `local` or `ssh`: the script a rollback runs instead of `init_script_path` / `command`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback_script_path: Option<String>,
    /// `local`: variables the command gets besides `PATH`, `HOME`, `LANG` and the deployment's
    /// own (`PA_*`, which these cannot set). The host's environment is never passed on. Shown to
    /// developers: not a place for secrets.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
}

fn is_zero(order: &i64) -> bool {
    *order == 0
}

fn default_timeout() -> u64 {
    300
}

fn default_enabled() -> bool {
    true
}

/// Bounds of `timeout`, in seconds.
pub const TIMEOUT_RANGE: std::ops::RangeInclusive<u64> = 1..=86_400;
const MAX_ID_LEN: usize = 64;
const MAX_TEXT_LEN: usize = 4096;
const MAX_TAGS: usize = 64;
/// Most variables an environment's `env` may set.
const MAX_ENV: usize = 64;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EnvironmentsFile {
    environments: Vec<EnvironmentJson>,
}

/// One target environment, valid by construction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(into = "EnvironmentJson", try_from = "EnvironmentJson")]
pub struct Environment {
    pub environment_id: String,
    pub environment_type: EnvironmentType,
    pub connection: Connection,
    pub health_check_url: Option<String>,
    /// Seconds this environment's trigger and verification may take.
    pub timeout: u64,
    pub enabled: bool,
    pub tags: BTreeMap<String, String>,
    pub description: Option<String>,
    /// Rollout order: lower first, then by id.
    pub order: i64,
}

impl Environment {
    /// The secret values it holds (empty unless read with its secrets), for masking.
    pub fn secret_values(&self) -> Vec<String> {
        match &self.connection {
            Connection::HttpApi(api) => api.api_token.iter().cloned().collect(),
            Connection::Webhook(webhook) => webhook.secret.iter().cloned().collect(),
            Connection::Ssh(_) | Connection::Local(_) => Vec::new(),
        }
    }
}

/// How the coordinator reaches an environment: one variant per connection method.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Connection {
    Ssh(SshConnection),
    HttpApi(HttpApiConnection),
    Webhook(WebhookConnection),
    Local(LocalConnection),
}

/// Runs `init_script_path` on `host` over SSH.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshConnection {
    pub host: String,
    /// 22 when unset.
    pub port: Option<u16>,
    pub username: String,
    pub ssh_key_path: String,
    /// `~/.ssh/known_hosts` when unset.
    pub known_hosts_path: Option<String>,
    pub init_script_path: String,
    pub working_directory: Option<String>,
    /// Run instead of `init_script_path` by a rollback (which otherwise runs it again with
    /// `PA_ROLLBACK=1`).
    pub rollback_script_path: Option<String>,
}

/// `POST http://host:port/api/deploy/init`, with a bearer token when set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpApiConnection {
    pub host: String,
    /// 80 when unset.
    pub port: Option<u16>,
    pub api_token: Option<String>,
}

/// A signed `POST` of the deployment event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookConnection {
    pub target: WebhookTarget,
    /// The HMAC key of the signature header, when set.
    pub secret: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WebhookTarget {
    /// `webhook_url`.
    Url(String),
    /// `http://host:port/webhook/deploy` (port 80 when unset).
    HostPort { host: String, port: Option<u16> },
}

/// A program on this machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalConnection {
    pub program: LocalProgram,
    pub working_directory: Option<String>,
    /// Variables set for the program besides the deployment's own.
    pub env: BTreeMap<String, String>,
    /// Run instead of `program` by a rollback (which otherwise runs `program` again with
    /// `PA_ROLLBACK=1`).
    pub rollback: Option<LocalProgram>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LocalProgram {
    /// `command`: an argument vector, run without a shell.
    Command(Vec<String>),
    /// `init_script_path`, run directly.
    Script(String),
}

/// A field that failed validation, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> FieldError {
        FieldError {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Checks an environment id: 1–64 characters of letters, digits, `_`, `-`, `.`, starting with a
/// letter or digit (ids appear in URLs and store keys).
pub fn check_id(id: &str) -> Result<(), FieldError> {
    let valid = !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id.starts_with(|c: char| c.is_ascii_alphanumeric())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if valid {
        Ok(())
    } else {
        Err(FieldError::new(
            "environment_id",
            format!(
                "{id:?} is not a valid id: use 1 to {MAX_ID_LEN} letters, digits, '_', '-' or '.', starting with a letter or digit"
            ),
        ))
    }
}

fn required<'a>(
    value: &'a Option<String>,
    field: &str,
    method: &str,
) -> Result<&'a str, FieldError> {
    match value.as_deref().map(str::trim) {
        Some(text) if !text.is_empty() => Ok(text),
        _ => Err(FieldError::new(
            field,
            format!("is required for connection_method {method:?}"),
        )),
    }
}

/// An argument vector: a non-empty list whose first item names the program.
fn check_argv(field: &str, argv: &[String]) -> Result<(), FieldError> {
    if argv.is_empty() || argv[0].trim().is_empty() {
        return Err(FieldError::new(
            field,
            "must be a non-empty list whose first item is the program to run",
        ));
    }
    if argv.iter().any(|part| part.contains('\0')) {
        return Err(FieldError::new(field, "must not contain NUL characters"));
    }
    Ok(())
}

fn check_host(host: &str) -> Result<(), FieldError> {
    let valid = host.len() <= 253
        && !host.is_empty()
        && !host
            .chars()
            .any(|c| c.is_whitespace() || matches!(c, '/' | '?' | '#' | '@'));
    if valid {
        Ok(())
    } else {
        Err(FieldError::new(
            "host",
            format!("{host:?} is not a host name or IP address"),
        ))
    }
}

fn check_url(field: &str, text: &str) -> Result<(), FieldError> {
    match url::Url::parse(text) {
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => Ok(()),
        Ok(url) => Err(FieldError::new(
            field,
            format!(
                "{text:?} must be an http:// or https:// URL with a host (scheme was {:?})",
                url.scheme()
            ),
        )),
        Err(error) => Err(FieldError::new(
            field,
            format!("{text:?} is not a URL: {error}"),
        )),
    }
}

fn check_text(field: &str, value: &Option<String>) -> Result<(), FieldError> {
    match value {
        Some(text) if text.len() > MAX_TEXT_LEN => Err(FieldError::new(
            field,
            format!("is {} bytes long; at most {MAX_TEXT_LEN}", text.len()),
        )),
        Some(text) if text.contains('\0') => {
            Err(FieldError::new(field, "must not contain NUL characters"))
        }
        _ => Ok(()),
    }
}

impl EnvironmentJson {
    /// Checks everything serde cannot: id format, ranges, and the fields each connection method
    /// needs. The error names the field.
    pub fn validate(&self) -> Result<(), FieldError> {
        check_id(&self.environment_id)?;
        for (field, value) in [
            ("host", &self.host),
            ("username", &self.username),
            ("ssh_key_path", &self.ssh_key_path),
            ("known_hosts_path", &self.known_hosts_path),
            ("init_script_path", &self.init_script_path),
            ("working_directory", &self.working_directory),
            ("health_check_url", &self.health_check_url),
            ("api_token", &self.api_token),
            ("webhook_url", &self.webhook_url),
            ("webhook_secret", &self.webhook_secret),
            ("description", &self.description),
            ("rollback_script_path", &self.rollback_script_path),
        ] {
            check_text(field, value)?;
        }
        if self.port == Some(0) {
            return Err(FieldError::new("port", "must be between 1 and 65535"));
        }
        if !TIMEOUT_RANGE.contains(&self.timeout) {
            return Err(FieldError::new(
                "timeout",
                format!(
                    "{} is out of range: seconds between {} and {}",
                    self.timeout,
                    TIMEOUT_RANGE.start(),
                    TIMEOUT_RANGE.end()
                ),
            ));
        }
        if let Some(host) = &self.host {
            check_host(host)?;
        }
        if let Some(url) = &self.health_check_url {
            check_url("health_check_url", url)?;
        }
        if let Some(url) = &self.webhook_url {
            check_url("webhook_url", url)?;
        }
        if self.tags.len() > MAX_TAGS {
            return Err(FieldError::new("tags", format!("at most {MAX_TAGS} tags")));
        }
        let method = self.connection_method.as_str();
        self.check_rollback()?;
        self.check_env()?;
        match self.connection_method {
            ConnectionMethod::Ssh => {
                required(&self.host, "host", method)?;
                required(&self.username, "username", method)?;
                required(&self.ssh_key_path, "ssh_key_path", method)?;
                required(&self.init_script_path, "init_script_path", method)?;
            }
            ConnectionMethod::HttpApi => {
                required(&self.host, "host", method)?;
            }
            ConnectionMethod::Webhook => {
                if self.webhook_url.is_none() {
                    required(&self.host, "host", method).map_err(|_| {
                        FieldError::new(
                            "webhook_url",
                            "is required for connection_method \"webhook\" (or set host and port)",
                        )
                    })?;
                }
            }
            ConnectionMethod::Local => match &self.command {
                Some(command) => check_argv("command", command)?,
                None => {
                    required(&self.init_script_path, "init_script_path", method).map_err(|_| {
                        FieldError::new(
                            "command",
                            "is required for connection_method \"local\" (or set init_script_path)",
                        )
                    })?;
                }
            },
        }
        Ok(())
    }

    /// `rollback_command` / `rollback_script_path`: at most one, and only where the connection
    /// method runs a program.
    fn check_rollback(&self) -> Result<(), FieldError> {
        if let Some(command) = &self.rollback_command {
            check_argv("rollback_command", command)?;
        }
        if self
            .rollback_script_path
            .as_deref()
            .is_some_and(|path| path.trim().is_empty())
        {
            return Err(FieldError::new(
                "rollback_script_path",
                "must not be empty; omit it to roll back by running the normal trigger",
            ));
        }
        let method = self.connection_method.as_str();
        match self.connection_method {
            ConnectionMethod::Local if self.rollback_command.is_some() && self.rollback_script_path.is_some() => Err(FieldError::new(
                "rollback_command",
                "give rollback_command or rollback_script_path, not both",
            )),
            ConnectionMethod::Local => Ok(()),
            ConnectionMethod::Ssh if self.rollback_command.is_some() => Err(FieldError::new(
                "rollback_command",
                "does not apply to connection_method \"ssh\": use rollback_script_path (a script on the target)",
            )),
            ConnectionMethod::Ssh => Ok(()),
            ConnectionMethod::HttpApi | ConnectionMethod::Webhook => {
                for (field, given) in [
                    ("rollback_command", self.rollback_command.is_some()),
                    ("rollback_script_path", self.rollback_script_path.is_some()),
                ] {
                    if given {
                        return Err(FieldError::new(
                            field,
                            format!("does not apply to connection_method {method:?}: it rolls back by sending its normal request with \"rollback\": true and the previous version"),
                        ));
                    }
                }
                Ok(())
            }
        }
    }

    /// `env`: only for `local`, at most [`MAX_ENV`] variables with portable names, none of the
    /// deployment's own (`PA_*`), values without NUL.
    fn check_env(&self) -> Result<(), FieldError> {
        if self.env.is_empty() {
            return Ok(());
        }
        if self.connection_method != ConnectionMethod::Local {
            return Err(FieldError::new(
                "env",
                format!(
                    "applies only to connection_method \"local\" (this one is {:?})",
                    self.connection_method.as_str()
                ),
            ));
        }
        if self.env.len() > MAX_ENV {
            return Err(FieldError::new(
                "env",
                format!("at most {MAX_ENV} variables"),
            ));
        }
        for (name, value) in &self.env {
            let field = format!("env.{name}");
            let portable = name.len() <= MAX_ID_LEN
                && name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !portable {
                return Err(FieldError::new(
                    field,
                    format!("{name:?} is not a variable name: use 1 to {MAX_ID_LEN} letters, digits or '_', not starting with a digit"),
                ));
            }
            if name.starts_with("PA_") {
                return Err(FieldError::new(
                    field,
                    "names starting with PA_ are the deployment's own (PA_DEPLOYMENT_ID, PA_DEPLOYMENT_VERSION, …) and cannot be set",
                ));
            }
            check_text(&field, &Some(value.clone()))?;
        }
        Ok(())
    }

    /// A secret given as `""` is a mistake in a new environment (an empty signing key or
    /// bearer token), not a value: the error names the field. (A replace takes `""` to clear.)
    pub fn check_secrets_not_empty(&self) -> Result<(), FieldError> {
        secrets_not_empty(self.api_token.as_deref(), self.webhook_secret.as_deref())
    }
}

fn secrets_not_empty(
    api_token: Option<&str>,
    webhook_secret: Option<&str>,
) -> Result<(), FieldError> {
    for (field, value) in [("api_token", api_token), ("webhook_secret", webhook_secret)] {
        if value.is_some_and(|value| value.trim().is_empty()) {
            return Err(FieldError::new(
                field,
                "must not be empty; omit it to send requests without one",
            ));
        }
    }
    Ok(())
}

impl TryFrom<EnvironmentJson> for Environment {
    type Error = FieldError;

    /// Validates the flat shape and keeps the fields its connection method uses.
    fn try_from(json: EnvironmentJson) -> Result<Environment, FieldError> {
        json.validate()?;
        let method = json.connection_method.as_str();
        let required = |value: Option<String>, field: &str| {
            value.ok_or_else(|| {
                FieldError::new(
                    field,
                    format!("is required for connection_method {method:?}"),
                )
            })
        };
        let EnvironmentJson {
            environment_id,
            environment_type,
            connection_method,
            host,
            port,
            username,
            ssh_key_path,
            known_hosts_path,
            init_script_path,
            working_directory,
            health_check_url,
            timeout,
            api_token,
            webhook_url,
            webhook_secret,
            command,
            enabled,
            tags,
            description,
            order,
            rollback_command,
            rollback_script_path,
            env,
        } = json;
        let connection = match connection_method {
            ConnectionMethod::Ssh => Connection::Ssh(SshConnection {
                host: required(host, "host")?,
                port,
                username: required(username, "username")?,
                ssh_key_path: required(ssh_key_path, "ssh_key_path")?,
                known_hosts_path,
                init_script_path: required(init_script_path, "init_script_path")?,
                working_directory,
                rollback_script_path,
            }),
            ConnectionMethod::HttpApi => Connection::HttpApi(HttpApiConnection {
                host: required(host, "host")?,
                port,
                api_token,
            }),
            ConnectionMethod::Webhook => Connection::Webhook(WebhookConnection {
                target: match webhook_url {
                    Some(url) => WebhookTarget::Url(url),
                    None => WebhookTarget::HostPort {
                        host: required(host, "webhook_url")?,
                        port,
                    },
                },
                secret: webhook_secret,
            }),
            ConnectionMethod::Local => Connection::Local(LocalConnection {
                program: match command {
                    Some(command) if !command.is_empty() => LocalProgram::Command(command),
                    _ => LocalProgram::Script(required(init_script_path, "command")?),
                },
                working_directory,
                env,
                rollback: match (rollback_command, rollback_script_path) {
                    (Some(command), _) => Some(LocalProgram::Command(command)),
                    (None, Some(script)) => Some(LocalProgram::Script(script)),
                    (None, None) => None,
                },
            }),
        };
        Ok(Environment {
            environment_id,
            environment_type,
            connection,
            health_check_url,
            timeout,
            enabled,
            tags,
            description,
            order,
        })
    }
}

impl From<Environment> for EnvironmentJson {
    fn from(environment: Environment) -> EnvironmentJson {
        let mut json = EnvironmentJson {
            environment_id: environment.environment_id,
            environment_type: environment.environment_type,
            connection_method: ConnectionMethod::Local,
            host: None,
            port: None,
            username: None,
            ssh_key_path: None,
            known_hosts_path: None,
            init_script_path: None,
            working_directory: None,
            health_check_url: environment.health_check_url,
            timeout: environment.timeout,
            api_token: None,
            webhook_url: None,
            webhook_secret: None,
            command: None,
            enabled: environment.enabled,
            tags: environment.tags,
            description: environment.description,
            order: environment.order,
            rollback_command: None,
            rollback_script_path: None,
            env: BTreeMap::new(),
        };
        match environment.connection {
            Connection::Ssh(ssh) => {
                json.connection_method = ConnectionMethod::Ssh;
                json.host = Some(ssh.host);
                json.port = ssh.port;
                json.username = Some(ssh.username);
                json.ssh_key_path = Some(ssh.ssh_key_path);
                json.known_hosts_path = ssh.known_hosts_path;
                json.init_script_path = Some(ssh.init_script_path);
                json.working_directory = ssh.working_directory;
                json.rollback_script_path = ssh.rollback_script_path;
            }
            Connection::HttpApi(api) => {
                json.connection_method = ConnectionMethod::HttpApi;
                json.host = Some(api.host);
                json.port = api.port;
                json.api_token = api.api_token;
            }
            Connection::Webhook(webhook) => {
                json.connection_method = ConnectionMethod::Webhook;
                match webhook.target {
                    WebhookTarget::Url(url) => json.webhook_url = Some(url),
                    WebhookTarget::HostPort { host, port } => {
                        json.host = Some(host);
                        json.port = port;
                    }
                }
                json.webhook_secret = webhook.secret;
            }
            Connection::Local(local) => {
                match local.program {
                    LocalProgram::Command(command) => json.command = Some(command),
                    LocalProgram::Script(script) => json.init_script_path = Some(script),
                }
                json.working_directory = local.working_directory;
                json.env = local.env;
                match local.rollback {
                    Some(LocalProgram::Command(command)) => json.rollback_command = Some(command),
                    Some(LocalProgram::Script(script)) => json.rollback_script_path = Some(script),
                    None => {}
                }
            }
        }
        json
    }
}

impl Environment {
    pub fn connection_method(&self) -> ConnectionMethod {
        match self.connection {
            Connection::Ssh(_) => ConnectionMethod::Ssh,
            Connection::HttpApi(_) => ConnectionMethod::HttpApi,
            Connection::Webhook(_) => ConnectionMethod::Webhook,
            Connection::Local(_) => ConnectionMethod::Local,
        }
    }

    /// The bearer token of an `http_api` environment.
    pub fn api_token(&self) -> Option<&str> {
        match &self.connection {
            Connection::HttpApi(api) => api.api_token.as_deref(),
            _ => None,
        }
    }

    /// The signing key of a `webhook` environment.
    pub fn webhook_secret(&self) -> Option<&str> {
        match &self.connection {
            Connection::Webhook(webhook) => webhook.secret.as_deref(),
            _ => None,
        }
    }

    /// Where an `http_api` environment keeps its token; `None` for other methods.
    pub fn api_token_slot(&mut self) -> Option<&mut Option<String>> {
        match &mut self.connection {
            Connection::HttpApi(api) => Some(&mut api.api_token),
            _ => None,
        }
    }

    /// Where a `webhook` environment keeps its signing key; `None` for other methods.
    pub fn webhook_secret_slot(&mut self) -> Option<&mut Option<String>> {
        match &mut self.connection {
            Connection::Webhook(webhook) => Some(&mut webhook.secret),
            _ => None,
        }
    }

    /// The `webhook_url` of a webhook environment that has one.
    pub fn webhook_url(&self) -> Option<&str> {
        match &self.connection {
            Connection::Webhook(WebhookConnection {
                target: WebhookTarget::Url(url),
                ..
            }) => Some(url),
            _ => None,
        }
    }

    /// The same, to change it.
    pub fn webhook_url_mut(&mut self) -> Option<&mut String> {
        match &mut self.connection {
            Connection::Webhook(WebhookConnection {
                target: WebhookTarget::Url(url),
                ..
            }) => Some(url),
            _ => None,
        }
    }

    /// See [`EnvironmentJson::check_secrets_not_empty`].
    pub fn check_secrets_not_empty(&self) -> Result<(), FieldError> {
        secrets_not_empty(self.api_token(), self.webhook_secret())
    }
}

impl ConnectionMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            ConnectionMethod::Ssh => "ssh",
            ConnectionMethod::HttpApi => "http_api",
            ConnectionMethod::Webhook => "webhook",
            ConnectionMethod::Local => "local",
        }
    }
}

/// Parses one environment from a JSON request body. The error names the field (with its path
/// for nested values).
pub fn parse_one(body: &[u8]) -> Result<Environment, FieldError> {
    let environment: EnvironmentJson = from_json_object(body)?;
    Environment::try_from(environment)
}

/// Deserializes a request body that must be a JSON object; errors name the field.
pub fn from_json_object<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, FieldError> {
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|error| FieldError::new("body", format!("malformed JSON: {error}")))?;
    if !value.is_object() {
        return Err(FieldError::new("body", "expected a JSON object"));
    }
    serde_path_to_error::deserialize(value)
        .map_err(|error| field_error(error.path().to_string(), error.inner().to_string()))
}

/// A serde error as a field error: `.` is serde's name for "the document itself". A missing
/// field's path is the object it is missing from; an unknown field's path already ends with
/// the field.
pub fn field_error(path: String, message: String) -> FieldError {
    let named = |prefix: &str| {
        message
            .strip_prefix(prefix)
            .and_then(|rest| rest.split_once('`'))
            .map(|(name, _)| name.to_owned())
    };
    // An unknown field's path names it already, except at the top level, where it is `.`.
    let missing = named("missing field `")
        .or_else(|| (path == ".").then(|| named("unknown field `")).flatten());
    let field = match (path.as_str(), missing) {
        (".", Some(name)) => name,
        (".", None) => "body".to_owned(),
        (_, Some(name)) => format!("{path}.{name}"),
        (_, None) => path,
    };
    FieldError::new(field, message)
}

/// Reads and checks an environments file: the original JSON format, or the same shape in TOML
/// (`[[environments]]` tables) when the file name ends in `.toml`. Errors name the file and
/// the field.
pub fn load_file(path: &Path) -> Result<Vec<Environment>, String> {
    let text = std::fs::read_to_string(path).map_err(|error| {
        format!(
            "cannot read environments_file {}: {error}; set [plugins.deployment_mcp.settings] environments_file to an existing file",
            path.display()
        )
    })?;
    let is_toml = path
        .extension()
        .is_some_and(|extension| extension.eq_ignore_ascii_case("toml"));
    let parsed = if is_toml {
        parse_toml(&text)
    } else {
        parse(&text)
    };
    parsed.map_err(|error| format!("environments_file {}: {error}", path.display()))
}

/// Parses the JSON environments document.
pub fn parse(text: &str) -> Result<Vec<Environment>, String> {
    let deserializer = &mut serde_json::Deserializer::from_str(text);
    let file: EnvironmentsFile = serde_path_to_error::deserialize(deserializer)
        .map_err(|error| format!("{}: {}", error.path(), error.inner()))?;
    check_all(file.environments)
}

/// Parses the TOML form of the environments document.
pub fn parse_toml(text: &str) -> Result<Vec<Environment>, String> {
    let file: EnvironmentsFile = toml::from_str(text).map_err(|error| error.to_string())?;
    check_all(file.environments)
}

/// Validates every environment and rejects duplicate ids.
fn check_all(environments: Vec<EnvironmentJson>) -> Result<Vec<Environment>, String> {
    let mut seen = std::collections::HashSet::new();
    let mut checked = Vec::with_capacity(environments.len());
    for (index, environment) in environments.into_iter().enumerate() {
        let environment = environment
            .check_secrets_not_empty()
            .and_then(|()| Environment::try_from(environment))
            .map_err(|error| format!("environments[{index}].{error}"))?;
        if !seen.insert(environment.environment_id.clone()) {
            return Err(format!(
                "environments[{index}].environment_id: {:?} appears more than once",
                environment.environment_id
            ));
        }
        checked.push(environment);
    }
    Ok(checked)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ORIGINAL: &str = r#"{"environments": [{"environment_id": "mac_local_001", "environment_type": "mac_local",
      "connection_method": "ssh", "host": "192.168.1.100", "port": 22, "username": "alex",
      "ssh_key_path": "~/.ssh/id_ed25519", "init_script_path": "./init_aicore.sh",
      "health_check_url": "http://192.168.1.100:8081/health", "timeout": 300}]}"#;

    #[test]
    fn original_format_is_accepted_unchanged() {
        let environments = parse(ORIGINAL).unwrap_or_default();
        assert_eq!(environments.len(), 1);
        assert_eq!(environments[0].connection_method(), ConnectionMethod::Ssh);
        assert!(
            matches!(&environments[0].connection, Connection::Ssh(ssh) if ssh.port == Some(22)),
            "{:?}",
            environments[0]
        );
        assert!(environments[0].enabled);
    }

    #[test]
    fn the_flat_shape_round_trips_through_the_model() {
        let originals = [
            r#"{"environment_id": "s", "environment_type": "mac_local", "connection_method": "ssh", "host": "127.0.0.1", "port": 2222, "username": "alex", "ssh_key_path": "~/.ssh/id", "known_hosts_path": "/k", "init_script_path": "./init.sh", "working_directory": "/srv", "health_check_url": "http://127.0.0.1:8081/health", "timeout": 30, "enabled": false, "tags": {"tier": "prod"}, "description": "d"}"#,
            r#"{"environment_id": "h", "environment_type": "linux_local", "connection_method": "http_api", "host": "127.0.0.1", "api_token": "t"}"#,
            r#"{"environment_id": "w", "environment_type": "docker_container", "connection_method": "webhook", "webhook_url": "http://127.0.0.1:1/hook", "webhook_secret": "k"}"#,
            r#"{"environment_id": "v", "environment_type": "docker_container", "connection_method": "webhook", "host": "127.0.0.1", "port": 8080}"#,
            r#"{"environment_id": "l", "environment_type": "linux_local", "connection_method": "local", "command": ["true", "x"], "working_directory": "/tmp"}"#,
            r#"{"environment_id": "m", "environment_type": "linux_local", "connection_method": "local", "init_script_path": "/bin/true"}"#,
        ];
        for original in originals {
            let flat: EnvironmentJson = serde_json::from_str(original).expect("flat");
            let model = Environment::try_from(flat.clone()).expect("valid");
            assert_eq!(EnvironmentJson::from(model.clone()), flat, "{original}");
            // The model's own serde form is the flat one.
            let written = serde_json::to_value(&model).expect("write");
            assert_eq!(
                written,
                serde_json::to_value(&flat).expect("flat"),
                "{original}"
            );
            let read: Environment = serde_json::from_value(written).expect("read back");
            assert_eq!(read, model, "{original}");
        }
        // A field of another method is accepted and not kept.
        let model = parse_one(br#"{"environment_id": "x", "environment_type": "linux_local", "connection_method": "local", "command": ["true"], "api_token": "t"}"#).expect("valid");
        assert_eq!(model.api_token(), None);
        assert_eq!(EnvironmentJson::from(model).api_token, None);
    }

    #[test]
    fn empty_secrets_are_refused_with_the_field() {
        let text = ORIGINAL.replace(
            r#""timeout": 300"#,
            r#""timeout": 300, "webhook_secret": """#,
        );
        let error = parse(&text).err().unwrap_or_default();
        assert!(
            error.contains("webhook_secret: must not be empty"),
            "{error}"
        );
    }

    #[test]
    fn duplicates_and_unknown_fields_are_refused() {
        let doubled = format!(
            r#"{{"environments": [{0}, {0}]}}"#,
            r#"{"environment_id": "a", "environment_type": "linux_local", "connection_method": "local", "command": ["true"]}"#
        );
        assert!(parse(&doubled)
            .err()
            .unwrap_or_default()
            .contains("more than once"));
        let typo = ORIGINAL.replace("\"port\"", "\"prot\"");
        assert!(parse(&typo).err().unwrap_or_default().contains("prot"));
    }

    fn local(id: &str) -> Environment {
        parse_one(format!(r#"{{"environment_id": "{id}", "environment_type": "linux_local", "connection_method": "local", "command": ["true"]}}"#).as_bytes())
            .unwrap_or_else(|error| panic!("{error}"))
    }

    #[test]
    fn bad_fields_are_named() {
        let base = r#"{"environment_id": "a", "environment_type": "linux_local", "connection_method": "ssh", "host": "h", "username": "u", "ssh_key_path": "k", "init_script_path": "s""#;
        let check = |extra: &str, field: &str| {
            let body = format!("{base}{extra}}}");
            let error = parse_one(body.as_bytes())
                .err()
                .map(|e| e.field)
                .unwrap_or_default();
            assert_eq!(error, field, "{extra}");
        };
        check(r#", "port": 0"#, "port");
        check(r#", "rollback_command": ["undo"]"#, "rollback_command");
        check(r#", "rollback_script_path": "  ""#, "rollback_script_path");
        check(r#", "order": "first""#, "order");
        check(r#", "port": 70000"#, "port");
        check(r#", "port": "22""#, "port");
        check(r#", "timeout": 0"#, "timeout");
        check(r#", "health_check_url": "ftp://x""#, "health_check_url");
        check(r#", "webhook_url": "not a url""#, "webhook_url");
        let spaced = base.replace(r#""host": "h""#, r#""host": "a b""#) + "}";
        assert!(parse_one(spaced.as_bytes())
            .err()
            .is_some_and(|e| e.field == "host"));
        check(r#", "tags": {"a": 1}"#, "tags.a");
        // An unknown field is named once, not with its own name repeated after it.
        check(r#", "prot": 22"#, "prot");
        let trigger = from_json_object::<crate::wire::TriggerRequest>(br#"{"environment_ids": 5}"#);
        assert_eq!(
            trigger.err().map(|e| e.field).as_deref(),
            Some("environment_ids")
        );
        let nested = from_json_object::<crate::wire::TriggerRequest>(
            br#"{"strategy": {"type": "rolling", "batch_sise": 2}}"#,
        );
        let nested = nested.err().map(|e| (e.field, e.message));
        assert_eq!(
            nested.as_ref().map(|e| e.0.as_str()),
            Some("strategy.batch_sise"),
            "{nested:?}"
        );
        let traversal =
            base.replace(r#""environment_id": "a""#, r#""environment_id": "../x""#) + "}";
        assert!(parse_one(traversal.as_bytes())
            .err()
            .is_some_and(|e| e.field == "environment_id"));
        assert!(parse_one(br#"{"environment_id": "a", "environment_type": "linux_local", "connection_method": "ssh", "host": "h"}"#).err().is_some_and(|e| e.field == "username"));
        assert!(parse_one(b"[1]").err().is_some_and(|e| e.field == "body"));
        assert_eq!(local("ok-1").environment_id, "ok-1");
    }

    #[test]
    fn rollback_fields_fit_the_connection_method() {
        let local = br#"{"environment_id": "a", "environment_type": "linux_local", "connection_method": "local", "command": ["deploy"], "rollback_command": ["undo", "--now"], "order": -2}"#;
        let environment = parse_one(local).unwrap_or_else(|error| panic!("{error}"));
        assert_eq!(environment.order, -2);
        match &environment.connection {
            Connection::Local(local) => assert_eq!(
                local.rollback,
                Some(LocalProgram::Command(vec!["undo".into(), "--now".into()]))
            ),
            other => panic!("not local: {other:?}"),
        }
        let flat = EnvironmentJson::from(environment);
        assert_eq!(
            flat.rollback_command,
            Some(vec!["undo".into(), "--now".into()])
        );
        let both = br#"{"environment_id": "a", "environment_type": "linux_local", "connection_method": "local", "command": ["deploy"], "rollback_command": ["undo"], "rollback_script_path": "./undo.sh"}"#;
        assert!(parse_one(both)
            .err()
            .is_some_and(|e| e.field == "rollback_command"));
        let webhook = br#"{"environment_id": "a", "environment_type": "linux_local", "connection_method": "webhook", "webhook_url": "http://127.0.0.1:9/", "rollback_script_path": "./undo.sh"}"#;
        assert!(parse_one(webhook)
            .err()
            .is_some_and(|e| e.field == "rollback_script_path"));
    }

    #[test]
    fn toml_form_is_accepted() {
        let text = "[[environments]]\nenvironment_id = \"t1\"\nenvironment_type = \"docker_container\"\nconnection_method = \"webhook\"\nwebhook_url = \"http://127.0.0.1:9/hook\"\n";
        let environments = parse_toml(text).unwrap_or_default();
        assert_eq!(environments.len(), 1);
        assert_eq!(
            environments[0].connection_method(),
            ConnectionMethod::Webhook
        );
    }
}
