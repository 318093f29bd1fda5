//! The overviews every role may read: `/status` (what runs, what ended last, or one
//! deployment's summary) and `/dashboard` (counts, environment cards, recent figures).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{DeploymentEntry, DeploymentSummary, EnvironmentView};
use crate::{
    deployment::Phase,
    model::{DeploymentId, Timestamp},
};

/// `idle` or `running`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Activity {
    Idle,
    Running,
}

impl Activity {
    pub fn as_str(self) -> &'static str {
        match self {
            Activity::Idle => "idle",
            Activity::Running => "running",
        }
    }
}

/// `GET /status` without `id`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct StatusOverview {
    pub status: Activity,
    pub active: Vec<DeploymentEntry>,
    /// The newest finished deployment.
    pub latest: Option<DeploymentEntry>,
    pub plugin_version: String,
}

/// `GET /status`: the overview, or with `?id=` one deployment's summary.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum StatusAnswer {
    One(DeploymentSummary),
    Overview(StatusOverview),
}

/// An environment's last deployment, on the dashboard.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct LastDeployment {
    pub deployment_id: DeploymentId,
    pub status: Phase,
    /// Whether this environment succeeded in it; null while it runs.
    pub succeeded: Option<bool>,
    pub finished_at: Option<Timestamp>,
}

/// An environment card of the dashboard.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DashboardEnvironment {
    #[serde(flatten)]
    pub environment: EnvironmentView,
    pub last_deployment: Option<LastDeployment>,
}

/// Success rate and mean duration over the last `window` finished deployments.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RecentFigures {
    pub window: u64,
    pub finished: u64,
    pub success_rate: Option<f64>,
    pub mean_duration_ms: Option<u64>,
}

/// `GET /dashboard`: what the page draws.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DashboardAnswer {
    /// Deployments by status.
    pub counts: BTreeMap<String, u64>,
    pub total_count: u64,
    pub environments: Vec<DashboardEnvironment>,
    pub active: Vec<DeploymentEntry>,
    pub recent: RecentFigures,
    pub plugin_version: String,
}
