//! [`EnvironmentJson`], the original flat `remote_environments.json` shape that files, the API,
//! the store and the OpenAPI document use unchanged, and its conversions to and from the model:
//! validating on the way in (per-method required fields, ranges), keeping only the fields the
//! connection method uses.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{
    check::{
        check_argv, check_host, check_text, check_url, required, secrets_not_empty, MAX_ENV,
        MAX_ID_LEN, MAX_TAGS,
    },
    *,
};
use crate::model::EnvironmentId;

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
            // Checked by `validate`: the error names the field.
            environment_id: EnvironmentId::parse(&environment_id)?,
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
            environment_id: environment.environment_id.into_string(),
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
