//! What callers send: the trigger body, and the query parameters of the history and of a log
//! page as the typed client (`crate::client`) encodes them. The API checks what it is sent
//! (errors name the field or parameter), whoever sends it.

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
    /// An admin's override of closed deployment windows, with the reason (kept on the
    /// deployment and in the audit log).
    #[serde(default, rename = "override", skip_serializing_if = "Option::is_none")]
    pub window_override: Option<WindowOverrideRequest>,
}

/// `"override": {"reason": "…"}` in a trigger.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WindowOverrideRequest {
    pub reason: String,
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

/// `GET /history`'s filters. Left to the API to check: its errors name the parameter.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HistoryQuery {
    /// Page size; the API's default (50) when absent.
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// Only deployments in this status (`completed`, `failed`, …).
    pub status: Option<String>,
    /// Only deployments that include this environment.
    pub environment: Option<String>,
}

impl HistoryQuery {
    /// The query string (without `?`).
    pub fn encode(&self) -> String {
        let mut query = url::form_urlencoded::Serializer::new(String::new());
        if let Some(limit) = self.limit {
            query.append_pair("limit", &limit.to_string());
        }
        for (name, value) in [
            ("cursor", &self.cursor),
            ("status", &self.status),
            ("environment", &self.environment),
        ] {
            if let Some(value) = value {
                query.append_pair(name, value);
            }
        }
        query.finish()
    }
}

/// Which lines of a deployment's log `GET /deployments/{id}/logs` returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogsQuery {
    /// Lines from stored line `from` on: `limit` of them (the API's page size when absent).
    Page { from: u64, limit: Option<usize> },
    /// The last lines.
    Tail(usize),
}

impl LogsQuery {
    /// The query string (without `?`).
    pub fn encode(&self) -> String {
        match self {
            LogsQuery::Page { from, limit: None } => format!("from={from}"),
            LogsQuery::Page {
                from,
                limit: Some(limit),
            } => format!("from={from}&limit={limit}"),
            LogsQuery::Tail(lines) => format!("tail={lines}"),
        }
    }
}
