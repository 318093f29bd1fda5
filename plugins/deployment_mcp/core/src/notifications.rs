//! Notifications (SPEC §4f): what a deployment tells the subscriptions that asked for it.
//!
//! A transaction that moves a deployment to an outcome, opens or decides its gate, takes it
//! over or creates it past closed windows also writes a [`Notice`] into the outbox
//! (`persist::outbox`), so an event and its notice are stored together or not at all. The
//! notifier (`notifications::notifier`, one leader among every copy on every node) turns each
//! notice into one delivery per matching [`Subscription`], sends each over its channel
//! (`notifications::channels`) until the receiver accepts it, retrying with backoff for a day,
//! and keeps each subscription's deliveries of one deployment in the deployment's order.
//!
//! [`SubscriptionSpec`] is what a caller sends and the store keeps; [`Subscription`] is the
//! checked form the notifier matches and sends with.

pub mod channels;
pub mod notifier;
#[cfg(test)]
mod tests;

use std::{collections::BTreeMap, time::Duration};

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::{
    deployment::{DeploymentRecord, Phase},
    environments::{Environment, FieldError},
    model::{EnvironmentId, Timestamp},
    wire::GateView,
};

/// At most this many subscriptions.
pub const MAX_SUBSCRIPTIONS: usize = 100;

/// What a subscription may ask to be told of.
pub const EVENTS: [&str; 8] = [
    "deployment.completed",
    "deployment.failed",
    "deployment.cancelled",
    "deployment.interrupted",
    "deployment.rolled_back",
    "deployment.gate",
    "deployment.takeover",
    "window.override",
];

/// The event of a test delivery (`POST /subscriptions?test=true`): sent whatever `events` says.
pub const TEST_EVENT: &str = "test";

/// A subscription as a caller sends it (`POST /subscriptions`) and as the store keeps it. The
/// API shows it with its secrets masked ([`SubscriptionSpec::masked`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionSpec {
    /// 1 to 64 of `A-Z a-z 0-9 _ - .`.
    pub id: String,
    /// The events it is told of, from `deployment.completed`, `deployment.failed`,
    /// `deployment.cancelled`, `deployment.interrupted`, `deployment.rolled_back`,
    /// `deployment.gate`, `deployment.takeover`, `window.override`.
    pub events: Vec<String>,
    /// Only deployments that match every part given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<FilterSpec>,
    pub channel: ChannelSpec,
    /// Who created it (`api:<key name>`): set by the host, refused in a request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by: Option<String>,
    /// When it was created: set by the host, refused in a request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub created_at: Option<Timestamp>,
}

/// Which deployments a subscription hears of.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FilterSpec {
    /// Deployments of at least one of these environments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environments: Option<Vec<String>>,
    /// Deployments of at least one environment whose tags hold all these pairs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<BTreeMap<String, String>>,
    /// Deployments in one of these phases when the event happens (`completed`, `failed`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Vec<String>>,
}

/// Where a subscription's deliveries go.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ChannelSpec {
    /// `POST` of the notice as JSON, with `Idempotency-Key` and, with a secret,
    /// `X-PowerAutomation-Signature: sha256=<HMAC-SHA256 of the body>`.
    Webhook {
        url: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        secret: Option<String>,
    },
    /// A Slack incoming webhook: a message with the deployment's summary and a link.
    Slack { webhook_url: String },
    /// Mail over SMTP (`smtp://[user:password@]host[:port]`, `smtp://…?tls=required` for
    /// STARTTLS, `smtps://…`) to `to`.
    Email {
        smtp_url: String,
        to: Vec<String>,
        /// The sender; `powerautomation@localhost` when absent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        from: Option<String>,
    },
}

const MASK: &str = "***";

impl SubscriptionSpec {
    /// The subscription as it may be shown: the webhook's secret, the Slack URL's path (its
    /// token) and the SMTP URL's userinfo are masked.
    pub fn masked(&self) -> SubscriptionSpec {
        let channel = match &self.channel {
            ChannelSpec::Webhook { url, secret } => ChannelSpec::Webhook {
                url: crate::redact::url(url),
                secret: secret.as_ref().map(|_| MASK.to_owned()),
            },
            ChannelSpec::Slack { webhook_url } => ChannelSpec::Slack {
                webhook_url: match url::Url::parse(webhook_url) {
                    Ok(parsed) => format!("{}/{MASK}", parsed.origin().ascii_serialization()),
                    Err(_) => MASK.to_owned(),
                },
            },
            ChannelSpec::Email { smtp_url, to, from } => ChannelSpec::Email {
                smtp_url: crate::redact::url(smtp_url),
                to: to.clone(),
                from: from.clone(),
            },
        };
        SubscriptionSpec {
            channel,
            ..self.clone()
        }
    }
}

/// A subscription, checked.
#[derive(Debug, Clone)]
pub struct Subscription {
    pub id: String,
    events: Vec<String>,
    filter: Filter,
    pub channel: channels::Channel,
}

#[derive(Debug, Clone, Default)]
struct Filter {
    environments: Option<Vec<String>>,
    selector: Option<BTreeMap<String, String>>,
    status: Option<Vec<Phase>>,
}

impl Subscription {
    /// Checks a subscription a caller sent (or the store holds); the error names the field.
    pub fn new(spec: &SubscriptionSpec) -> Result<Subscription, FieldError> {
        if !crate::windows::valid_id(&spec.id) {
            return Err(FieldError::new(
                "id",
                "must be 1 to 64 of A-Z a-z 0-9 _ - .",
            ));
        }
        if spec.events.is_empty() || spec.events.len() > EVENTS.len() {
            return Err(FieldError::new(
                "events",
                format!("must list 1 to {} of: {}", EVENTS.len(), EVENTS.join(", ")),
            ));
        }
        if let Some(unknown) = spec
            .events
            .iter()
            .find(|event| !EVENTS.contains(&event.as_str()))
        {
            return Err(FieldError::new(
                "events",
                format!(
                    "{unknown:?} is not an event; expected one of: {}",
                    EVENTS.join(", ")
                ),
            ));
        }
        if let Some((_, twice)) = spec
            .events
            .iter()
            .enumerate()
            .find(|(index, event)| spec.events[..*index].contains(event))
        {
            return Err(FieldError::new(
                "events",
                format!("{twice:?} is listed twice"),
            ));
        }
        let filter = match &spec.filter {
            Some(filter) => Filter::new(filter)?,
            None => Filter::default(),
        };
        Ok(Subscription {
            id: spec.id.clone(),
            events: spec.events.clone(),
            filter,
            channel: channels::Channel::new(&spec.channel)?,
        })
    }

    /// Whether it is told of `notice`; `environment` finds an environment of the catalog (for
    /// a selector).
    pub fn wants(
        &self,
        notice: &Notice,
        environment: impl Fn(&str) -> Option<Environment>,
    ) -> bool {
        if !self.events.contains(&notice.event) {
            return false;
        }
        let deployment = &notice.deployment;
        if let Some(list) = &self.filter.environments {
            if !deployment
                .environments
                .iter()
                .any(|id| list.iter().any(|wanted| wanted == id.as_str()))
            {
                return false;
            }
        }
        if let Some(selector) = &self.filter.selector {
            let tagged = |id: &EnvironmentId| {
                environment(id.as_str()).is_some_and(|environment| {
                    selector
                        .iter()
                        .all(|(key, value)| environment.tags.get(key) == Some(value))
                })
            };
            if !deployment.environments.iter().any(tagged) {
                return false;
            }
        }
        if let Some(status) = &self.filter.status {
            if !status.contains(&deployment.status) {
                return false;
            }
        }
        true
    }

    /// Whether its filter has a selector (matching reads the catalog).
    pub fn has_selector(&self) -> bool {
        self.filter.selector.is_some()
    }
}

impl Filter {
    fn new(spec: &FilterSpec) -> Result<Filter, FieldError> {
        if let Some(list) = &spec.environments {
            if list.is_empty()
                || list.len() > 1_000
                || list
                    .iter()
                    .any(|id| crate::environments::check_id(id).is_err())
            {
                return Err(FieldError::new(
                    "filter.environments",
                    "must list 1 to 1000 environment ids",
                ));
            }
        }
        if let Some(selector) = &spec.selector {
            if selector.is_empty()
                || selector.len() > 32
                || selector
                    .iter()
                    .any(|(key, value)| key.len() > 256 || value.len() > 256)
            {
                return Err(FieldError::new(
                    "filter.selector",
                    "needs 1 to 32 tags of at most 256 bytes each, e.g. {\"tier\": \"prod\"}",
                ));
            }
        }
        let status = match &spec.status {
            None => None,
            Some(list) if list.is_empty() => {
                return Err(FieldError::new(
                    "filter.status",
                    "must list at least one phase (leave it out for every phase)",
                ))
            }
            Some(list) => Some(
                list.iter()
                    .map(|name| {
                        Phase::parse(name).ok_or_else(|| {
                            FieldError::new(
                                "filter.status",
                                format!("{name:?} is not a deployment phase (e.g. completed, failed, rolled_back)"),
                            )
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()?,
            ),
        };
        Ok(Filter {
            environments: spec.environments.clone(),
            selector: spec.selector.clone(),
            status,
        })
    }
}

/// What a notice says of its deployment: the record's summary as it was when the event happened.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DeploymentSummary {
    #[schema(value_type = String)]
    pub deployment_id: crate::model::DeploymentId,
    pub status: Phase,
    pub version: String,
    pub triggered_by: String,
    /// The first environments (`environment_count` counts them all).
    #[schema(value_type = Vec<String>)]
    pub environments: Vec<EnvironmentId>,
    pub environment_count: usize,
    /// The first errors (`error_count` counts them all).
    pub errors: Vec<String>,
    pub error_count: usize,
    #[schema(value_type = String)]
    pub created_at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub finished_at: Option<Timestamp>,
}

impl DeploymentSummary {
    pub fn of(record: &DeploymentRecord) -> DeploymentSummary {
        DeploymentSummary {
            deployment_id: record.deployment_id.clone(),
            status: record.status,
            version: record.version.clone(),
            triggered_by: record.triggered_by.clone(),
            environments: record.listed_environments(),
            environment_count: record.environments.len(),
            errors: record.listed_errors(),
            error_count: record.errors.len(),
            created_at: record.created_at,
            finished_at: record.finished_at,
        }
    }
}

/// One event a subscription may be told of, as the outbox keeps it and a receiver gets it
/// (inside the delivery's envelope).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Notice {
    /// One of [`EVENTS`], or `test`.
    pub event: String,
    #[schema(value_type = String)]
    pub at: Timestamp,
    pub deployment: DeploymentSummary,
    /// `deployment.gate`: the gate as it is now (waiting, or decided and by whom).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gate: Option<GateView>,
    /// `window.override`: who overrode which windows, and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub window_override: Option<serde_json::Value>,
    /// `deployment.takeover`: the node that was lost and the one that runs it now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub takeover: Option<TakeoverNote>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TakeoverNote {
    pub from_node: String,
    pub to_node: String,
}

impl Notice {
    fn new(event: &str, record: &DeploymentRecord) -> Notice {
        Notice {
            event: event.to_owned(),
            at: Timestamp::now(),
            deployment: DeploymentSummary::of(record),
            gate: None,
            window_override: None,
            takeover: None,
        }
    }

    /// What a new deployment's record calls for: `window.override` when an admin deployed
    /// past closed windows.
    pub fn of_created(record: &DeploymentRecord) -> Vec<Notice> {
        match &record.window_override {
            Some(overridden) => vec![Notice {
                window_override: serde_json::to_value(overridden).ok(),
                ..Notice::new("window.override", record)
            }],
            None => Vec::new(),
        }
    }

    /// What a record's move from phase `from` calls for: its outcome when it ends
    /// (`deployment.<phase>`), `deployment.gate` when its gate opens or is decided.
    pub fn of_move(record: &DeploymentRecord, from: Phase) -> Vec<Notice> {
        let to = record.status;
        if to == from {
            return Vec::new();
        }
        let mut notices = Vec::new();
        if from == Phase::AwaitingApproval || to == Phase::AwaitingApproval {
            notices.push(Notice {
                gate: GateView::of(record),
                ..Notice::new("deployment.gate", record)
            });
        }
        if to.is_terminal() {
            notices.push(Notice::new(&format!("deployment.{}", to.as_str()), record));
        }
        notices
    }

    /// `deployment.takeover`: node `to_node` took over the deployment from `from_node`.
    pub fn of_takeover(record: &DeploymentRecord, from_node: &str, to_node: &str) -> Notice {
        Notice {
            takeover: Some(TakeoverNote {
                from_node: from_node.to_owned(),
                to_node: to_node.to_owned(),
            }),
            ..Notice::new("deployment.takeover", record)
        }
    }

    /// The one-line summary a Slack message and a mail's subject carry.
    pub fn summary(&self) -> String {
        let deployment = &self.deployment;
        let what = match self.event.as_str() {
            "deployment.gate" => match &self.gate {
                Some(gate) => format!("gate {}", gate.status.as_str().replace('_', " ")),
                None => "gate".to_owned(),
            },
            "deployment.takeover" => match &self.takeover {
                Some(note) => format!(
                    "taken over by node {} from node {}",
                    note.to_node, note.from_node
                ),
                None => "taken over".to_owned(),
            },
            "window.override" => "started past closed deployment windows".to_owned(),
            TEST_EVENT => "test notification".to_owned(),
            event => event
                .strip_prefix("deployment.")
                .unwrap_or(event)
                .replace('_', " "),
        };
        let environments = match deployment.environment_count {
            1 => "1 environment".to_owned(),
            count => format!("{count} environments"),
        };
        let errors = match deployment.error_count {
            0 => String::new(),
            1 => ", 1 error".to_owned(),
            count => format!(", {count} errors"),
        };
        format!(
            "Deployment {} of version {} {what}: {environments}{errors} (triggered by {})",
            deployment.deployment_id, deployment.version, deployment.triggered_by
        )
    }
}

/// Wakes this copy's notifier: a notice or a request was written to the outbox.
static OUTBOX_WRITTEN: tokio::sync::Notify = tokio::sync::Notify::const_new();

/// Something was written to the outbox by this copy: its notifier looks now rather than at its
/// next tick.
pub fn outbox_written() {
    OUTBOX_WRITTEN.notify_one();
}

async fn outbox_written_wait() {
    OUTBOX_WRITTEN.notified().await;
}

/// When a delivery whose `attempts`th attempt failed is tried again: `first_retry` doubled per
/// attempt up to an hour, the later half of that span chosen at random (`jitter`, from 0 to 1),
/// so receivers that failed together are not retried together.
pub fn retry_delay(attempts: u32, first_retry: Duration, jitter: f64) -> Duration {
    let doubled = first_retry.saturating_mul(1u32 << attempts.saturating_sub(1).min(20));
    let capped = doubled.min(Duration::from_secs(3_600));
    capped.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0))
}
