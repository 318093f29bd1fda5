//! The plugin's `[plugins.deployment_mcp.settings]` table.

use std::path::PathBuf;

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// The environments file: the original `remote_environments.json` format.
    #[serde(default = "default_environments_file")]
    pub environments_file: PathBuf,
    /// How many environment triggers (and health checks) run at once.
    #[serde(default = "default_max_parallel")]
    pub max_parallel: usize,
    /// Seconds between periodic health checks of every environment; 0 turns them off.
    #[serde(default = "default_health_interval")]
    pub health_check_interval_secs: u64,
    /// Timeout of one health check request, in seconds.
    #[serde(default = "default_health_timeout")]
    pub health_check_timeout_secs: u64,
    /// Deployments this node runs at once; more are queued, and the first node with room (this
    /// one, or another on the same database) starts them, oldest first. 0: no limit.
    #[serde(default)]
    pub max_running_deployments: usize,
    /// Log lines kept per deployment in the store; later lines are counted, not kept.
    #[serde(default = "default_max_log_lines")]
    pub max_log_lines: usize,
    /// Finished deployments (and their logs) older than this many days are deleted in the
    /// background; 0 keeps them forever. Running ones are never deleted.
    #[serde(default = "default_retention_days")]
    pub retention_days: u32,
    /// At most this many finished deployments are kept (the newest); none when unset.
    #[serde(default)]
    pub retention_max_deployments: Option<usize>,
    /// The platform's version when `DEPLOYMENT_VERSION` is not set.
    #[serde(default)]
    pub platform_version: Option<String>,
    /// A deployment triggered once the host has started.
    #[serde(default)]
    pub auto_deploy: AutoDeploy,
    /// The EC2 phase (`[plugins.deployment_mcp.settings.ec2]`).
    #[serde(default)]
    pub ec2: Option<crate::ec2::Ec2Settings>,
    /// The MCP endpoint (`[plugins.deployment_mcp.settings.mcp]`).
    #[serde(default)]
    pub mcp: McpSettings,
    /// Who may approve at a manual gate (`[plugins.deployment_mcp.settings.approvals]`).
    #[serde(default)]
    pub approvals: ApprovalSettings,
    /// Networks (CIDRs or addresses) every trigger, health check and redirect must resolve
    /// into; empty allows any.
    #[serde(default)]
    pub allowed_target_networks: crate::egress::TargetNetworks,
    /// How notifications are sent (`[plugins.deployment_mcp.settings.notifications]`).
    #[serde(default)]
    pub notifications: NotificationSettings,
}

/// `[plugins.deployment_mcp.settings.notifications]`: how deliveries are sent and retried.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotificationSettings {
    /// One attempt is cut off (and retried) after this many seconds.
    #[serde(default = "default_attempt_timeout")]
    pub attempt_timeout_secs: u64,
    /// A delivery is retried for this long, then given up (dead-lettered).
    #[serde(default = "default_retry_for")]
    pub retry_for_secs: u64,
    /// The first retry comes after at most this many milliseconds; each later one after twice
    /// the last (up to an hour), the later half of it picked at random.
    #[serde(default = "default_first_retry")]
    pub first_retry_ms: u64,
    /// Deliveries sent at once.
    #[serde(default = "default_in_flight")]
    pub max_in_flight: usize,
    /// Where a person looks at a deployment, with `{deployment_id}` in it (a Slack message and
    /// a mail link to it); no link when unset.
    #[serde(default)]
    pub deployment_url: Option<String>,
}

impl Default for NotificationSettings {
    fn default() -> NotificationSettings {
        NotificationSettings {
            attempt_timeout_secs: default_attempt_timeout(),
            retry_for_secs: default_retry_for(),
            first_retry_ms: default_first_retry(),
            max_in_flight: default_in_flight(),
            deployment_url: None,
        }
    }
}

impl NotificationSettings {
    fn problem(&self) -> Option<&'static str> {
        if !(1..=300).contains(&self.attempt_timeout_secs) {
            Some("notifications.attempt_timeout_secs: must be between 1 and 300")
        } else if !(1..=7 * 86_400).contains(&self.retry_for_secs) {
            Some("notifications.retry_for_secs: must be between 1 and 604800 (a week)")
        } else if !(10..=2_000).contains(&self.first_retry_ms) {
            Some("notifications.first_retry_ms: must be between 10 and 2000")
        } else if !(1..=1_024).contains(&self.max_in_flight) {
            Some("notifications.max_in_flight: must be between 1 and 1024")
        } else if self.deployment_url.as_deref().is_some_and(|url| {
            !url.contains("{deployment_id}")
                || url::Url::parse(&url.replace("{deployment_id}", "x")).is_err()
        }) {
            Some("notifications.deployment_url: must be a URL with {deployment_id} in it, e.g. https://ops.example.com/deployments/{deployment_id}")
        } else {
            None
        }
    }

    /// The link to deployment `id`, when there is one.
    pub fn link(&self, id: &str) -> Option<String> {
        self.deployment_url
            .as_ref()
            .map(|template| template.replace("{deployment_id}", id))
    }
}

fn default_attempt_timeout() -> u64 {
    10
}

fn default_retry_for() -> u64 {
    86_400
}

fn default_first_retry() -> u64 {
    1_000
}

fn default_in_flight() -> usize {
    128
}

/// `[plugins.deployment_mcp.settings.approvals]`: who may decide at a manual gate.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalSettings {
    /// Four eyes: the key that triggered a deployment (or retried it) may not approve it
    /// (`403 same_approver`).
    #[serde(default)]
    pub distinct_approver: bool,
}

impl ApprovalSettings {
    /// The key that may not approve a deployment `triggered_by` it (`api:<key>` or
    /// `retry:<key>`), under four eyes; `None` when any admin may.
    pub fn excluded_approver(&self, triggered_by: &str) -> Option<String> {
        if !self.distinct_approver {
            return None;
        }
        triggered_by
            .strip_prefix("api:")
            .or_else(|| triggered_by.strip_prefix("retry:"))
            .map(str::to_owned)
    }
}

/// `[plugins.deployment_mcp.settings.mcp]`: the Model Context Protocol endpoint at
/// `{mount}/mcp`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct McpSettings {
    /// Serve the endpoint (404 when off).
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Hide every tool that changes something, for every caller.
    #[serde(default)]
    pub read_only: bool,
    /// Browser origins allowed to call the endpoint (`https://ops.example.com:443`;
    /// `:*` for any port), besides the loopback ones. A request with another `Origin` is
    /// refused (403); one without an `Origin` (not from a browser) is not affected.
    #[serde(default)]
    pub allowed_origins: Vec<String>,
}

impl Default for McpSettings {
    fn default() -> McpSettings {
        McpSettings {
            enabled: true,
            read_only: false,
            allowed_origins: Vec::new(),
        }
    }
}

fn default_true() -> bool {
    true
}

/// `auto_deploy = { enabled, environments, when }`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AutoDeploy {
    #[serde(default)]
    pub enabled: bool,
    /// Environment ids; every enabled environment when absent.
    #[serde(default)]
    pub environments: Option<Vec<String>>,
    #[serde(default)]
    pub when: AutoDeployWhen,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AutoDeployWhen {
    /// At every host start.
    Always,
    /// When the platform version differs from the last successful automatic deployment's.
    #[default]
    VersionChanged,
}

fn default_environments_file() -> PathBuf {
    PathBuf::from("config/remote_environments.json")
}

fn default_max_parallel() -> usize {
    32
}

fn default_health_interval() -> u64 {
    60
}

fn default_health_timeout() -> u64 {
    5
}

fn default_retention_days() -> u32 {
    90
}

fn default_max_log_lines() -> usize {
    100_000
}

impl Settings {
    /// The version a deployment gets when the caller names none: `DEPLOYMENT_VERSION`, else the
    /// configured `platform_version`.
    pub fn deployed_version(&self) -> Option<String> {
        std::env::var("DEPLOYMENT_VERSION")
            .ok()
            .filter(|version| !version.trim().is_empty())
            .or_else(|| self.platform_version.clone())
    }

    /// Parses the settings the host handed over; the error names the offending key.
    pub fn from_json(value: &serde_json::Value) -> Result<Settings, String> {
        let value = if value.is_null() {
            serde_json::json!({})
        } else {
            value.clone()
        };
        let settings: Settings = serde_json::from_value(value)
            .map_err(|error| format!("invalid [plugins.deployment_mcp.settings]: {error}"))?;
        let problem = if !(1..=1024).contains(&settings.max_parallel) {
            Some("max_parallel: must be between 1 and 1024")
        } else if !(1..=300).contains(&settings.health_check_timeout_secs) {
            Some("health_check_timeout_secs: must be between 1 and 300")
        } else if settings.retention_max_deployments == Some(0) {
            Some("retention_max_deployments: keeping 0 deployments deletes each as it ends; use at least 1, or omit it")
        } else if settings.max_log_lines == 0 {
            Some("max_log_lines: must be at least 1")
        } else if let Some(error) = settings
            .mcp
            .allowed_origins
            .iter()
            .find_map(|origin| crate::mcp::OriginRule::parse(origin).err())
        {
            return Err(format!(
                "invalid [plugins.deployment_mcp.settings] mcp.allowed_origins: {error}"
            ));
        } else if settings
            .auto_deploy
            .environments
            .as_ref()
            .is_some_and(|ids| ids.is_empty())
        {
            Some("auto_deploy.environments: an empty list deploys nothing; omit it to deploy every enabled environment")
        } else {
            settings.notifications.problem()
        };
        match problem {
            Some(problem) => Err(format!(
                "invalid [plugins.deployment_mcp.settings] {problem}"
            )),
            None => Ok(settings),
        }
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
