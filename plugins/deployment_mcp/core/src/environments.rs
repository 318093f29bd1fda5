//! Target environments: the original `remote_environments.json` format, read unchanged.

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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ConnectionMethod {
    Ssh,
    HttpApi,
    Webhook,
    Local,
}

/// One environment as configured. `api_token` and `webhook_secret` are secrets: they are kept
/// in the store but never shown (see [`Environment::public_view`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Environment {
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EnvironmentsFile {
    environments: Vec<Environment>,
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

impl Environment {
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
                Some(command) if command.is_empty() || command[0].trim().is_empty() => {
                    return Err(FieldError::new(
                        "command",
                        "must be a non-empty list whose first item is the program to run",
                    ));
                }
                Some(command) if command.iter().any(|part| part.contains('\0')) => {
                    return Err(FieldError::new(
                        "command",
                        "must not contain NUL characters",
                    ));
                }
                Some(_) => {}
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

    /// A secret given as `""` is a mistake in a new environment (an empty signing key or
    /// bearer token), not a value: the error names the field. (A replace takes `""` to clear.)
    pub fn check_secrets_not_empty(&self) -> Result<(), FieldError> {
        for (field, value) in [
            ("api_token", &self.api_token),
            ("webhook_secret", &self.webhook_secret),
        ] {
            if value
                .as_deref()
                .is_some_and(|value| value.trim().is_empty())
            {
                return Err(FieldError::new(
                    field,
                    "must not be empty; omit it to send requests without one",
                ));
            }
        }
        Ok(())
    }

    /// The environment as the API shows it: every field but the secrets (whether each is set
    /// comes from the catalog), URLs with their passwords masked.
    pub fn public_view(&self) -> serde_json::Value {
        serde_json::json!({
            "environment_id": self.environment_id,
            "environment_type": self.environment_type,
            "connection_method": self.connection_method,
            "host": self.host,
            "port": self.port,
            "username": self.username,
            "ssh_key_path": self.ssh_key_path,
            "known_hosts_path": self.known_hosts_path,
            "init_script_path": self.init_script_path,
            "working_directory": self.working_directory,
            "health_check_url": self.health_check_url.as_deref().map(crate::redact::url),
            "timeout": self.timeout,
            "webhook_url": self.webhook_url.as_deref().map(crate::redact::url),
            "command": self.command,
            "enabled": self.enabled,
            "tags": self.tags,
            "description": self.description,
        })
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
    let environment: Environment = from_json_object(body)?;
    environment.validate()?;
    Ok(environment)
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

/// A serde error as a field error: `.` is serde's name for "the document itself".
pub fn field_error(path: String, message: String) -> FieldError {
    let missing = ["missing field `", "unknown field `"]
        .iter()
        .find_map(|prefix| {
            message
                .strip_prefix(prefix)
                .and_then(|rest| rest.split_once('`'))
                .map(|(name, _)| name.to_owned())
        });
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
fn check_all(environments: Vec<Environment>) -> Result<Vec<Environment>, String> {
    let mut seen = std::collections::HashSet::new();
    for (index, environment) in environments.iter().enumerate() {
        environment
            .validate()
            .and_then(|()| environment.check_secrets_not_empty())
            .map_err(|error| format!("environments[{index}].{error}"))?;
        if !seen.insert(environment.environment_id.as_str()) {
            return Err(format!(
                "environments[{index}].environment_id: {:?} appears more than once",
                environment.environment_id
            ));
        }
    }
    Ok(environments)
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
        assert_eq!(environments[0].connection_method, ConnectionMethod::Ssh);
        assert_eq!(environments[0].port, Some(22));
        assert!(environments[0].enabled);
    }

    #[test]
    fn secrets_are_not_in_the_public_view() {
        let text = ORIGINAL.replace(
            r#""timeout": 300"#,
            r#""timeout": 300, "api_token": "tok-123", "webhook_secret": "whs-456""#,
        );
        let environments = parse(&text).unwrap_or_default();
        let shown = environments[0].public_view().to_string();
        assert!(
            !shown.contains("tok-123") && !shown.contains("whs-456"),
            "{shown}"
        );
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
    fn toml_form_is_accepted() {
        let text = "[[environments]]\nenvironment_id = \"t1\"\nenvironment_type = \"docker_container\"\nconnection_method = \"webhook\"\nwebhook_url = \"http://127.0.0.1:9/hook\"\n";
        let environments = parse_toml(text).unwrap_or_default();
        assert_eq!(environments.len(), 1);
        assert_eq!(environments[0].connection_method, ConnectionMethod::Webhook);
    }
}
