//! `deployment-mcp subscriptions`: list, show, create and delete the subscriptions that send
//! deployment events to webhooks, Slack or mail, list a subscription's deliveries and send one
//! again, in-process on the local store or against a host with `--server`. Secrets come back
//! masked by the API.

use clap::Subcommand;
use deployment_mcp_core::{
    client::DeploymentApi,
    notifications::{ChannelSpec, FilterSpec, SubscriptionSpec},
    persist::outbox::DeliveryState,
    wire::DeliveryView,
};

use crate::{
    backend::Backend,
    output::{self, outln},
    CliError,
};

#[derive(Debug, Subcommand)]
pub enum SubscriptionsAction {
    /// Table of id, events, channel and filter (the default)
    List,
    /// One subscription: its events, channel (secrets masked), filter and who created it
    Show {
        /// The subscription id
        id: String,
    },
    /// Create a subscription from its JSON (secrets are masked in every answer), e.g.
    /// '{"id":"ops-hook","events":["deployment.failed"],"channel":{"type":"webhook","url":"https://hooks.example.com/deploy"}}'
    Create {
        /// The subscription as JSON
        #[arg(value_name = "JSON")]
        subscription: String,
        /// Also send it a test event now
        #[arg(long)]
        test: bool,
    },
    /// Delete a subscription (and its deliveries)
    Delete {
        /// The subscription id
        id: String,
    },
    /// A subscription's deliveries, newest deployment first: state, attempts, last answer
    Deliveries {
        /// The subscription id
        id: String,
        /// A delivery id: the page after it (as printed after a full page)
        #[arg(long, value_name = "DELIVERY")]
        after: Option<String>,
        /// How many (1 to 200)
        #[arg(long, value_name = "N", default_value_t = 50,
              value_parser = clap::value_parser!(u32).range(1..=200))]
        limit: u32,
    },
    /// Send a delivery again (with the same Idempotency-Key), even one given up
    Redeliver {
        /// The subscription id
        id: String,
        /// The delivery id
        delivery: String,
    },
}

pub async fn run(
    backend: &Backend,
    action: SubscriptionsAction,
    json: bool,
) -> Result<u8, CliError> {
    let api = backend.api();
    match action {
        SubscriptionsAction::List => {
            let answer = api.subscriptions().await?;
            if json {
                output::print_json(&answer);
                return Ok(0);
            }
            if answer.subscriptions.is_empty() {
                outln!("no subscriptions");
                return Ok(0);
            }
            let mut table = output::Table::new(&["ID", "EVENTS", "CHANNEL", "FILTER"]);
            for spec in &answer.subscriptions {
                table.row(vec![
                    spec.id.clone(),
                    output::join(&spec.events),
                    channel(&spec.channel),
                    filter(spec.filter.as_ref()),
                ]);
            }
            table.print();
            Ok(0)
        }
        SubscriptionsAction::Show { id } => {
            let spec = api.subscription(&id).await?;
            if json {
                output::print_json(&spec);
                return Ok(0);
            }
            outln!("subscription {}", output::printable(&spec.id));
            outln!("events: {}", output::printable(&output::join(&spec.events)));
            outln!("channel: {}", output::printable(&channel(&spec.channel)));
            match &spec.channel {
                ChannelSpec::Webhook {
                    secret: Some(_), ..
                } => outln!("signed: yes (X-PowerAutomation-Signature)"),
                ChannelSpec::Email {
                    from: Some(from), ..
                } => outln!("from: {}", output::printable(from)),
                _ => {}
            }
            outln!(
                "filter: {}",
                output::printable(&filter(spec.filter.as_ref()))
            );
            if let Some(by) = &spec.created_by {
                let at = spec
                    .created_at
                    .as_ref()
                    .map_or_else(|| "-".to_owned(), output::short_time);
                outln!("created by {} at {at}", output::printable(by));
            }
            Ok(0)
        }
        SubscriptionsAction::Create {
            subscription: text,
            test,
        } => {
            let spec: SubscriptionSpec = serde_json::from_str(&text).map_err(|error| {
                CliError::Usage(format!(
                    "the subscription is not valid JSON of a subscription: {error}"
                ))
            })?;
            let created = api.create_subscription(&spec, test).await?;
            if json {
                output::print_json(&created);
                return Ok(0);
            }
            outln!(
                "subscription {} created",
                output::printable(&created.subscription.id)
            );
            if let Some(delivery) = &created.test_delivery {
                outln!(
                    "test delivery {} queued (see: deployment-mcp subscriptions deliveries {})",
                    output::printable(delivery),
                    output::printable(&created.subscription.id)
                );
            }
            Ok(0)
        }
        SubscriptionsAction::Delete { id } => {
            let deleted = api.delete_subscription(&id).await?;
            if json {
                output::print_json(&deleted);
            } else {
                outln!(
                    "subscription {} deleted",
                    output::printable(&deleted.deleted)
                );
            }
            Ok(0)
        }
        SubscriptionsAction::Deliveries { id, after, limit } => {
            let answer = api.deliveries(&id, after.as_deref(), Some(limit)).await?;
            if json {
                output::print_json(&answer);
                return Ok(0);
            }
            if answer.deliveries.is_empty() {
                outln!("no deliveries");
                return Ok(0);
            }
            let mut table = output::Table::new(&[
                "DELIVERY",
                "EVENT",
                "DEPLOYMENT",
                "STATE",
                "ATTEMPTS",
                "LAST STATUS/ERROR",
                "NEXT ATTEMPT",
            ]);
            for delivery in &answer.deliveries {
                table.row(vec![
                    delivery.id.clone(),
                    delivery.event.clone(),
                    delivery.deployment_id.clone(),
                    state(delivery.state).into(),
                    delivery.attempt_count.to_string(),
                    last_answer(delivery),
                    delivery
                        .next_attempt_at
                        .as_ref()
                        .map_or_else(|| "-".to_owned(), output::short_time),
                ]);
            }
            table.print();
            if let Some(next) = &answer.next {
                outln!("more: --after {}", output::printable(next));
            }
            Ok(0)
        }
        SubscriptionsAction::Redeliver { id, delivery } => {
            let answer = api.redeliver(&id, &delivery).await?;
            if json {
                output::print_json(&answer);
            } else {
                outln!(
                    "delivery {} of subscription {} queued to be sent again",
                    output::printable(&answer.delivery),
                    output::printable(&answer.subscription)
                );
            }
            Ok(0)
        }
    }
}

/// The channel's type and where it sends (as the API masks it): `webhook https://…`,
/// `slack https://hooks.slack.com/***`, `email a@x,b@y`.
fn channel(channel: &ChannelSpec) -> String {
    match channel {
        ChannelSpec::Webhook { url, .. } => format!("webhook {url}"),
        ChannelSpec::Slack { webhook_url } => format!("slack {webhook_url}"),
        ChannelSpec::Email { to, .. } => format!("email {}", output::join(to)),
    }
}

/// Which deployments it hears of: environments or selector, and phases; `-` for every one.
fn filter(filter: Option<&FilterSpec>) -> String {
    let Some(filter) = filter else {
        return "-".into();
    };
    let mut parts = Vec::new();
    if filter.environments.is_some() || filter.selector.is_some() {
        parts.push(output::scope(
            filter.environments.as_deref(),
            filter.selector.as_ref(),
            "",
        ));
    }
    if let Some(status) = &filter.status {
        parts.push(format!("status={}", output::join(status)));
    }
    if parts.is_empty() {
        "-".into()
    } else {
        parts.join(" ")
    }
}

fn state(state: DeliveryState) -> &'static str {
    match state {
        DeliveryState::Pending => "pending",
        DeliveryState::Delivered => "delivered",
        DeliveryState::Dead => "dead",
    }
}

/// The latest attempt's status and error (`503`, `connection refused`, `500: …`), or `-`.
fn last_answer(delivery: &DeliveryView) -> String {
    let Some(attempt) = delivery.attempts.last() else {
        return "-".into();
    };
    match (attempt.status, attempt.error.as_deref()) {
        (Some(status), Some(error)) => format!("{status}: {error}"),
        (Some(status), None) => status.to_string(),
        (None, Some(error)) => error.to_owned(),
        (None, None) => "-".into(),
    }
}
