//! Notifications as the API shows them (SPEC §4f): subscriptions with their secrets masked
//! ([`crate::notifications::SubscriptionSpec::masked`]) and deliveries with their attempts.

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::{
    model::Timestamp,
    notifications::SubscriptionSpec,
    persist::outbox::{AttemptRecord, DeliveryRecord, DeliveryState},
};

/// `GET /subscriptions`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SubscriptionList {
    pub subscriptions: Vec<SubscriptionSpec>,
}

/// `POST /subscriptions`: the subscription as stored (secrets masked) and, with `?test=true`,
/// the id of its test delivery.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SubscriptionCreated {
    pub subscription: SubscriptionSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_delivery: Option<String>,
}

/// One delivery: a notice for one subscription, its attempts and where it stands.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DeliveryView {
    pub id: String,
    pub subscription: String,
    pub event: String,
    pub deployment_id: String,
    /// The `Idempotency-Key` every attempt carries (and the body's `id`).
    pub idempotency_key: String,
    pub state: DeliveryState,
    #[schema(value_type = String)]
    pub created_at: Timestamp,
    /// When it is tried next (pending only).
    #[schema(value_type = Option<String>)]
    pub next_attempt_at: Option<Timestamp>,
    pub attempt_count: u32,
    /// The latest attempts (at most 50), oldest first.
    pub attempts: Vec<AttemptRecord>,
    /// Whether it was given up after the retry period.
    pub dead_lettered: bool,
    /// How many times it was sent again by hand.
    pub redelivered: u32,
}

impl DeliveryView {
    pub fn of(record: DeliveryRecord) -> DeliveryView {
        DeliveryView {
            idempotency_key: record.key(),
            dead_lettered: record.state == DeliveryState::Dead,
            id: record.id,
            subscription: record.subscription,
            event: record.event,
            deployment_id: record.deployment_id,
            state: record.state,
            created_at: record.created_at,
            next_attempt_at: record.next_attempt_at,
            attempt_count: record.attempt_count,
            attempts: record.attempts,
            redelivered: record.redelivered,
        }
    }
}

/// `GET /subscriptions/{id}/deliveries`: newest deployment first, a deployment's in its
/// events' order; `next` is the `after` of the next page.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DeliveryList {
    pub deliveries: Vec<DeliveryView>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// `POST …/deliveries/{delivery}/redeliver`: queued for the notifier.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Redelivery {
    pub subscription: String,
    pub delivery: String,
    pub queued: bool,
}

/// The path parameter of `/subscriptions/{id}`.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
pub struct SubscriptionPath {
    /// Subscription id.
    #[param(pattern = "^[A-Za-z0-9_.-]{1,64}$")]
    #[allow(dead_code)] // Read by the derive.
    id: String,
}

/// The path parameters of `/subscriptions/{id}/deliveries/{delivery}/redeliver`.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
pub struct DeliveryPath {
    /// Subscription id.
    #[allow(dead_code)] // Read by the derive.
    id: String,
    /// Delivery id.
    #[allow(dead_code)] // Read by the derive.
    delivery: String,
}
