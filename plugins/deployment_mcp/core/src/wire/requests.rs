//! What callers send: the trigger body. (Path parameters and the error answer are in the parent
//! module; the query parameters of the typed client are its own.)

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::rollout::{Amount, OnFailure, RollbackMode, RolloutJson, StrategyJson};

/// `POST /trigger-local` and `/one-click`. An empty body deploys every enabled environment.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TriggerRequest {
    /// Environment ids; all enabled environments when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environments: Option<Vec<String>>,
    /// Instead of `environments`: every enabled environment whose `tags` hold all of these
    /// pairs (`{"tier": "prod"}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<BTreeMap<String, String>>,
    /// The version to deploy; `platform_version` (or `DEPLOYMENT_VERSION`) when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Run the EC2 phase; the configured default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ec2: Option<bool>,
    /// How the environments roll out; all at once when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<StrategyJson>,
    /// Failures tolerated (a count, or a percentage of the environments); one more stops
    /// the deployment. Unlimited when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_failures: Option<Amount>,
    /// When failures exceed `max_failures`: `stop` (default) or `cancel_running`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_failure: Option<OnFailure>,
    /// When it fails: roll back `none` (default), the `failed` environments, or `all` it
    /// changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback: Option<RollbackMode>,
}

impl TriggerRequest {
    /// The rollout fields together. (They are the request's own fields rather than a
    /// flattened part: serde cannot name the field at fault inside a flattened one, nor
    /// refuse unknown fields next to it.)
    pub fn rollout(&self) -> RolloutJson {
        RolloutJson {
            strategy: self.strategy.clone(),
            max_failures: self.max_failures,
            on_failure: self.on_failure,
            rollback: self.rollback,
        }
    }

    /// Sets the rollout fields.
    pub fn with_rollout(mut self, rollout: RolloutJson) -> TriggerRequest {
        self.strategy = rollout.strategy;
        self.max_failures = rollout.max_failures;
        self.on_failure = rollout.on_failure;
        self.rollback = rollout.rollback;
        self
    }
}
