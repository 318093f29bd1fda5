//! Environments as answers show them: the view built from the catalog's record (connection
//! details only for developers and admins, secrets never), health reports, and the catalog's
//! list, delete and health-check answers.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::View;
use crate::{
    deployment::HealthReport,
    environments::{ConnectionMethod, EnvironmentJson, EnvironmentType},
    model::{EnvironmentId, Timestamp},
    persist::catalog::{EnvironmentVersions, Source, StoredEnvironment},
};

/// A health report as shown; users see whether and when, not the URL or the error.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct HealthView {
    pub healthy: bool,
    pub checked_at: Timestamp,
    pub http_status: Option<u16>,
    pub latency_ms: u64,
    /// The checked URL (credentials masked); absent for the user role.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Why it is unhealthy; absent when healthy, and for the user role.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl HealthView {
    pub fn new(report: &HealthReport, view: View) -> HealthView {
        HealthView {
            healthy: report.healthy,
            checked_at: report.checked_at,
            http_status: report.http_status,
            latency_ms: report.latency_ms,
            url: Some(report.url.clone()).filter(|_| view.details()),
            error: report.error.clone().filter(|_| view.details()),
        }
    }
}

/// How an environment is reached and where it came from: for developers and admins only, so
/// the schema requires none of it. Secrets are never shown, only whether they are set.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ConnectionDetails {
    pub host: Option<String>,
    pub port: Option<u16>,
    pub username: Option<String>,
    pub ssh_key_path: Option<String>,
    pub known_hosts_path: Option<String>,
    pub init_script_path: Option<String>,
    pub working_directory: Option<String>,
    /// Credentials masked.
    pub health_check_url: Option<String>,
    /// Seconds its trigger and verification may take.
    #[schema(required = false)]
    pub timeout: u64,
    /// Credentials masked.
    pub webhook_url: Option<String>,
    pub command: Option<Vec<String>>,
    pub rollback_command: Option<Vec<String>>,
    pub rollback_script_path: Option<String>,
    /// `local`: the variables its command gets besides the deployment's own.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schema(required = false)]
    pub env: BTreeMap<String, String>,
    #[schema(required = false)]
    pub has_api_token: bool,
    #[schema(required = false)]
    pub has_webhook_secret: bool,
    /// `file` (from `environments_file`) or `api`.
    #[schema(required = false)]
    pub source: EnvironmentSource,
    #[schema(required = false)]
    pub updated_at: Timestamp,
}

/// Where an environment's definition came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EnvironmentSource {
    File,
    Api,
}

/// An environment as shown.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct EnvironmentView {
    pub environment_id: EnvironmentId,
    pub environment_type: EnvironmentType,
    pub connection_method: ConnectionMethod,
    pub enabled: bool,
    pub tags: BTreeMap<String, String>,
    pub description: Option<String>,
    /// Rollout order (lower first, then by id).
    #[serde(default)]
    pub order: i64,
    /// The version of its last successful deployment (or rollback); null before the first.
    #[serde(default)]
    pub deployed_version: Option<String>,
    /// The version it had before that.
    #[serde(default)]
    pub previous_version: Option<String>,
    /// How it is reached; absent for the user role (so none of its fields is required).
    #[serde(flatten, default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = ConnectionDetails)]
    pub connection: Option<ConnectionDetails>,
    pub last_health: Option<HealthView>,
}

impl EnvironmentView {
    pub fn new(
        stored: &StoredEnvironment,
        health: Option<&HealthReport>,
        versions: Option<&EnvironmentVersions>,
        view: View,
    ) -> EnvironmentView {
        let stored_id = stored.environment.environment_id.clone();
        let flat = EnvironmentJson::from(stored.environment.clone());
        let connection = view.details().then(|| ConnectionDetails {
            host: flat.host,
            port: flat.port,
            username: flat.username,
            ssh_key_path: flat.ssh_key_path,
            known_hosts_path: flat.known_hosts_path,
            init_script_path: flat.init_script_path,
            working_directory: flat.working_directory,
            health_check_url: flat.health_check_url.as_deref().map(crate::redact::url),
            timeout: flat.timeout,
            webhook_url: flat.webhook_url.as_deref().map(crate::redact::url),
            command: flat.command,
            rollback_command: flat.rollback_command,
            rollback_script_path: flat.rollback_script_path,
            env: flat.env,
            has_api_token: stored.has_api_token,
            has_webhook_secret: stored.has_webhook_secret,
            source: match stored.source {
                Source::File => EnvironmentSource::File,
                Source::Api => EnvironmentSource::Api,
            },
            updated_at: stored.updated_at,
        });
        EnvironmentView {
            environment_id: stored_id,
            environment_type: flat.environment_type,
            connection_method: flat.connection_method,
            enabled: flat.enabled,
            tags: flat.tags,
            description: flat.description,
            order: flat.order,
            deployed_version: versions.map(|versions| versions.deployed_version.clone()),
            previous_version: versions.and_then(|versions| versions.previous_version.clone()),
            connection,
            last_health: health.map(|report| HealthView::new(report, view)),
        }
    }
}

/// `GET /environments`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct EnvironmentList {
    pub environments: Vec<EnvironmentView>,
    pub total_count: u64,
}

/// `DELETE /environments/{id}`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Deleted {
    pub deleted: String,
}

/// `POST /environments/{id}/health-check`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct HealthCheckAnswer {
    pub environment_id: EnvironmentId,
    pub health: HealthView,
}
