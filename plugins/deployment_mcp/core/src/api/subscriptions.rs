//! Subscriptions to notifications over HTTP (SPEC §4f, admins only): list, create (with a test
//! delivery on `?test=true`), read, delete, a subscription's deliveries, and a redelivery.

use axum::{
    body::Bytes,
    extract::{rejection::PathRejection, Path, State},
    http::StatusCode,
};

use super::{json, Answer, ApiError, Id, Params, Shared, Who};
use crate::{
    deployment::Phase,
    environments::from_json_object,
    model::{DeploymentId, Timestamp},
    notifications::{
        self, DeploymentSummary, Notice, Subscription, SubscriptionSpec, MAX_SUBSCRIPTIONS,
    },
    persist::{
        named::Created,
        outbox::{self, StoredSubscription},
    },
    wire::{
        Deleted, DeliveryList, DeliveryView, Redelivery, SubscriptionCreated, SubscriptionList,
    },
};

#[utoipa::path(
    get, path = "/subscriptions", operation_id = "listSubscriptions", tag = "notifications",
    responses((status = 200, description = "Every subscription, in id order, secrets masked", body = crate::wire::SubscriptionList))
)]
pub(crate) async fn list(State(api): Shared) -> Answer {
    let subscriptions = outbox::subscriptions(api.coordinator.records())
        .await?
        .iter()
        .map(StoredSubscription::view)
        .collect();
    Ok(json(StatusCode::OK, &SubscriptionList { subscriptions }))
}

#[utoipa::path(
    post, path = "/subscriptions", operation_id = "createSubscription", tag = "notifications",
    params(("test" = Option<bool>, Query, description = "Also send the subscription a test event")),
    request_body(content = crate::notifications::SubscriptionSpec, content_type = "application/json"),
    responses((status = 201, description = "Created (secrets masked)", body = crate::wire::SubscriptionCreated))
)]
pub(crate) async fn create(State(api): Shared, caller: Who, params: Params, body: Bytes) -> Answer {
    let test = params.flag("test")?;
    let spec: SubscriptionSpec = from_json_object(&body)?;
    if spec.created_by.is_some() || spec.created_at.is_some() {
        return Err(ApiError::field(
            if spec.created_by.is_some() {
                "created_by"
            } else {
                "created_at"
            },
            "is set by the host; leave it out",
        ));
    }
    Subscription::new(&spec)?;
    let stored = StoredSubscription {
        spec,
        created_by: format!("api:{}", caller.name()),
        created_at: Timestamp::now(),
    };
    let test_delivery = test.then(|| test_notice(&stored.created_by));
    let test_id = test_delivery.as_ref().map(|(id, _)| id.clone());
    match outbox::create_subscription(api.coordinator.records(), &stored, test_delivery).await? {
        Created::Created => {
            if test_id.is_some() {
                notifications::outbox_written();
            }
            Ok(json(
                StatusCode::CREATED,
                &SubscriptionCreated {
                    subscription: stored.view(),
                    test_delivery: test_id,
                },
            ))
        }
        Created::Exists => Err(ApiError::Conflict {
            code: "duplicate_subscription",
            message: format!(
                "id: subscription {:?} already exists; delete it first to replace it",
                stored.spec.id
            ),
            field: Some("id"),
        }),
        Created::Full => Err(ApiError::unprocessable(
            "too_many_subscriptions",
            format!("there are {MAX_SUBSCRIPTIONS} subscriptions already; delete some first"),
        )),
    }
}

/// A test event: a made-up completed deployment of no environment, version `test`.
fn test_notice(by: &str) -> (String, Notice) {
    let now = Timestamp::now();
    let deployment_id = DeploymentId::generate(now.unix_ms());
    let id = outbox::delivery_id(deployment_id.as_str(), now.unix_ms(), 0, 0);
    let notice = Notice {
        event: notifications::TEST_EVENT.to_owned(),
        at: now,
        deployment: DeploymentSummary {
            deployment_id,
            status: Phase::Completed,
            version: "test".to_owned(),
            triggered_by: by.to_owned(),
            environments: Vec::new(),
            environment_count: 0,
            errors: Vec::new(),
            error_count: 0,
            created_at: now,
            finished_at: Some(now),
        },
        gate: None,
        window_override: None,
        takeover: None,
    };
    (id, notice)
}

#[utoipa::path(
    get, path = "/subscriptions/{id}", operation_id = "getSubscription", tag = "notifications",
    params(crate::wire::SubscriptionPath),
    responses((status = 200, description = "One subscription, secrets masked", body = crate::notifications::SubscriptionSpec))
)]
pub(crate) async fn get(State(api): Shared, Id(id): Id) -> Answer {
    let stored = outbox::subscription(api.coordinator.records(), &id)
        .await?
        .ok_or_else(|| ApiError::not_found("subscription", &id))?;
    Ok(json(StatusCode::OK, &stored.view()))
}

#[utoipa::path(
    delete, path = "/subscriptions/{id}", operation_id = "deleteSubscription", tag = "notifications",
    params(crate::wire::SubscriptionPath),
    responses((status = 200, description = "Deleted, with its deliveries", body = crate::wire::Deleted))
)]
pub(crate) async fn delete(State(api): Shared, Id(id): Id) -> Answer {
    match outbox::delete_subscription(api.coordinator.records(), &id).await? {
        Some(_) => Ok(json(StatusCode::OK, &Deleted { deleted: id })),
        None => Err(ApiError::not_found("subscription", &id)),
    }
}

#[utoipa::path(
    get, path = "/subscriptions/{id}/deliveries", operation_id = "listDeliveries", tag = "notifications",
    params(
        crate::wire::SubscriptionPath,
        ("after" = Option<String>, Query, description = "A delivery id: the page after it"),
        ("limit" = Option<u32>, Query, description = "At most this many (1 to 200; 50 when absent)"),
    ),
    responses((status = 200, description = "Deliveries, newest deployment first, each with its attempts", body = crate::wire::DeliveryList))
)]
pub(crate) async fn deliveries(State(api): Shared, Id(id): Id, params: Params) -> Answer {
    let limit = params.number("limit", 50, 1..=200)?;
    let after = params.get("after");
    let records = api.coordinator.records();
    if outbox::subscription(records, &id).await?.is_none() {
        return Err(ApiError::not_found("subscription", &id));
    }
    let found = outbox::deliveries(records, &id, after.as_deref(), limit).await?;
    let next = (found.len() == limit)
        .then(|| found.last().map(|delivery| delivery.id.clone()))
        .flatten();
    Ok(json(
        StatusCode::OK,
        &DeliveryList {
            deliveries: found.into_iter().map(DeliveryView::of).collect(),
            next,
        },
    ))
}

#[utoipa::path(
    post, path = "/subscriptions/{id}/deliveries/{delivery}/redeliver", operation_id = "redeliverDelivery", tag = "notifications",
    params(crate::wire::DeliveryPath),
    responses((status = 202, description = "Queued: sent again (with the same Idempotency-Key) as soon as the notifier looks", body = crate::wire::Redelivery))
)]
pub(crate) async fn redeliver(
    State(api): Shared,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Answer {
    let Ok(Path((id, delivery))) = path else {
        return Err(ApiError::not_found("delivery", ""));
    };
    let records = api.coordinator.records();
    if outbox::delivery(records, &id, &delivery).await?.is_none() {
        return Err(ApiError::not_found("delivery", &delivery));
    }
    outbox::ask_redelivery(records, &id, &delivery).await?;
    notifications::outbox_written();
    Ok(json(
        StatusCode::ACCEPTED,
        &Redelivery {
            subscription: id,
            delivery,
            queued: true,
        },
    ))
}
