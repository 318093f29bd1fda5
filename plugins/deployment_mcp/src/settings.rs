//! The plugin's `[plugins.deployment_mcp.settings]` table.

use std::path::PathBuf;

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// The environments file: the original `remote_environments.json` format.
    #[serde(default = "default_environments_file")]
    pub environments_file: PathBuf,
}

fn default_environments_file() -> PathBuf {
    PathBuf::from("config/remote_environments.json")
}

impl Settings {
    /// Parses the settings the host handed over; the error names the offending key.
    pub fn from_json(value: &serde_json::Value) -> Result<Settings, String> {
        let value = if value.is_null() {
            serde_json::json!({})
        } else {
            value.clone()
        };
        serde_json::from_value(value)
            .map_err(|error| format!("invalid [plugins.deployment_mcp.settings]: {error}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_key_is_named() {
        let error = Settings::from_json(&serde_json::json!({"environment_file": "x"}))
            .err()
            .unwrap_or_default();
        assert!(error.contains("environment_file"), "{error}");
    }

    #[test]
    fn defaults_apply() {
        let settings = Settings::from_json(&serde_json::Value::Null).ok();
        assert_eq!(
            settings.map(|s| s.environments_file),
            Some(PathBuf::from("config/remote_environments.json"))
        );
    }
}
