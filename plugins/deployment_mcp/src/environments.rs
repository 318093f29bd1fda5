//! Target environments: the original `remote_environments.json` format, read unchanged.

use std::{collections::BTreeMap, path::Path};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EnvironmentType {
    MacLocal,
    WindowsLocal,
    LinuxLocal,
    DockerContainer,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConnectionMethod {
    Ssh,
    HttpApi,
    Webhook,
    Local,
}

/// One environment as configured. `api_token` and `webhook_secret` are secrets: they are never
/// serialized back out (see [`Environment::public_view`]).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Environment {
    pub environment_id: String,
    pub environment_type: EnvironmentType,
    pub connection_method: ConnectionMethod,
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default)]
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
    #[serde(default = "default_timeout")]
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EnvironmentsFile {
    environments: Vec<Environment>,
}

impl Environment {
    /// The environment as the API shows it: every field but the secrets, plus whether each
    /// secret is set.
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
            "health_check_url": self.health_check_url,
            "timeout": self.timeout,
            "webhook_url": self.webhook_url,
            "command": self.command,
            "enabled": self.enabled,
            "tags": self.tags,
            "description": self.description,
            "has_api_token": self.api_token.is_some(),
            "has_webhook_secret": self.webhook_secret.is_some(),
        })
    }
}

/// Reads and checks an environments file. Errors name the file and, through serde, the field.
pub fn load_file(path: &Path) -> Result<Vec<Environment>, String> {
    let text = std::fs::read_to_string(path).map_err(|error| {
        format!(
            "cannot read environments_file {}: {error}; set [plugins.deployment_mcp.settings] environments_file to an existing file",
            path.display()
        )
    })?;
    parse(&text).map_err(|error| format!("environments_file {}: {error}", path.display()))
}

/// Parses the JSON environments document and rejects duplicate ids.
pub fn parse(text: &str) -> Result<Vec<Environment>, String> {
    let file: EnvironmentsFile = serde_json::from_str(text).map_err(|error| error.to_string())?;
    let mut seen = std::collections::HashSet::new();
    for environment in &file.environments {
        if !seen.insert(environment.environment_id.as_str()) {
            return Err(format!(
                "environment_id {:?} appears more than once",
                environment.environment_id
            ));
        }
    }
    Ok(file.environments)
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
        assert!(shown.contains(r#""has_api_token":true"#));
    }

    #[test]
    fn duplicates_and_unknown_fields_are_refused() {
        let doubled = format!(
            r#"{{"environments": [{0}, {0}]}}"#,
            r#"{"environment_id": "a", "environment_type": "linux_local", "connection_method": "local"}"#
        );
        assert!(parse(&doubled)
            .err()
            .unwrap_or_default()
            .contains("more than once"));
        let typo = ORIGINAL.replace("\"port\"", "\"prot\"");
        assert!(parse(&typo).err().unwrap_or_default().contains("prot"));
    }
}
