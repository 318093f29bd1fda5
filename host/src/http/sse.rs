//! `GET <mount>/events`: Server-Sent Events from the host's bus. The stream belongs to the host,
//! so it survives plugin swaps.

use std::{convert::Infallible, time::Duration};

use axum::{
    extract::State,
    response::{
        sse::{Event as SseEvent, KeepAlive, Sse},
        IntoResponse, Response,
    },
    Extension,
};
use futures_util::{Stream, StreamExt};
use plugin_api::Role;
use tokio_stream::wrappers::{errors::BroadcastStreamRecvError, BroadcastStream};

use super::{dispatch::MountState, error::ApiError, AppState};
use crate::auth::{require, Principal};

pub async fn events(
    State((app, mount)): State<(AppState, MountState)>,
    principal: Option<Extension<Principal>>,
    headers: axum::http::HeaderMap,
) -> Result<Response, ApiError> {
    require(principal.as_deref(), Role::User)?;
    if mount.slot.active().is_none() {
        return Err(super::dispatch::unavailable(&mount.slot));
    }
    let last_id = headers
        .get("last-event-id")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.trim().parse::<u64>().ok());
    let subscription = app.bus.subscribe_after(last_id);
    let gap = subscription.gap.then(|| {
        Ok(SseEvent::default().event("reset").data(
            "{\"reason\":\"events after Last-Event-ID are no longer buffered; reload the state\"}",
        ))
    });
    let replay = subscription
        .missed
        .into_iter()
        .map(|event| Ok(to_sse(&event)));
    let subscribed = app.metrics.sse_subscriber();
    let stream = futures_util::stream::iter(gap.into_iter().chain(replay))
        .chain(event_stream(BroadcastStream::new(subscription.receiver)))
        // The guard lives as long as the stream, so the gauge counts open connections.
        .map(move |event| {
            let _counted = &subscribed;
            event
        });
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

fn to_sse(event: &crate::services::events::Event) -> SseEvent {
    SseEvent::default()
        .id(event.id.to_string())
        .event(event.kind.as_str())
        .data(event.data.as_str())
}

fn event_stream(
    receiver: BroadcastStream<std::sync::Arc<crate::services::events::Event>>,
) -> impl Stream<Item = Result<SseEvent, Infallible>> {
    receiver.map(|item| {
        Ok(match item {
            Ok(event) => to_sse(&event),
            Err(BroadcastStreamRecvError::Lagged(missed)) => SseEvent::default()
                .event("lagged")
                .data(format!("{{\"missed\":{missed}}}")),
        })
    })
}
