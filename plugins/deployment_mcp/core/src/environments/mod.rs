//! Target environments. [`Environment`] is the model: what every environment has, and its
//! [`Connection`], one variant per connection method holding exactly the fields that method
//! uses, checked once when the environment is read. [`EnvironmentJson`] is the original flat
//! `remote_environments.json` shape (files, the API and the store read and write it unchanged);
//! the model converts from it (validating) and back. Fields that do not apply to the
//! connection method (an `api_token` on an ssh environment) are accepted there and not kept.
//!
//! Code map: the model here; `json` (the flat shape and the conversions), `check` (field
//! checks, [`FieldError`]), `file` (environments files and request bodies).

mod check;
mod file;
mod json;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use crate::model::EnvironmentId;

pub use check::*;
pub use file::*;
pub use json::*;

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

impl ConnectionMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            ConnectionMethod::Ssh => "ssh",
            ConnectionMethod::HttpApi => "http_api",
            ConnectionMethod::Webhook => "webhook",
            ConnectionMethod::Local => "local",
        }
    }

    /// Whether a trigger of this kind may be sent again after a node that sent it was lost:
    /// an HTTP receiver knows the request by its `Idempotency-Key`; a command run over SSH or
    /// locally may have run in part.
    pub fn resendable(self) -> bool {
        matches!(self, ConnectionMethod::HttpApi | ConnectionMethod::Webhook)
    }

    /// The kind a result names (`connection_method`), read back.
    pub fn parse(text: &str) -> Option<ConnectionMethod> {
        [
            ConnectionMethod::Ssh,
            ConnectionMethod::HttpApi,
            ConnectionMethod::Webhook,
            ConnectionMethod::Local,
        ]
        .into_iter()
        .find(|method| method.as_str() == text)
    }
}

/// One target environment, valid by construction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(into = "EnvironmentJson", try_from = "EnvironmentJson")]
pub struct Environment {
    pub environment_id: EnvironmentId,
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

#[cfg(test)]
mod tests;
