//! Environments documents: an environments file (JSON, or the same shape in TOML), and one
//! environment in a request body. Errors name the file or body and the field.

use std::path::Path;

use serde::Deserialize;

use super::*;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EnvironmentsFile {
    environments: Vec<EnvironmentJson>,
}

/// Parses one environment from a JSON request body. The error names the field (with its path
/// for nested values).
pub fn parse_one(body: &[u8]) -> Result<Environment, FieldError> {
    let environment: EnvironmentJson = from_json_object(body)?;
    Environment::try_from(environment)
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
