//! `GET <mount>/events`: Server-Sent Events from the host's bus. The stream belongs to the host,
//! so it survives plugin swaps; it ends at once when the host stops.
//!
//! Each subscriber sees every event in the view its role allows (see `services::events`): a
//! user never receives log lines or connection details, whatever a plugin publishes. At most
//! `server.max_streams` streams are open at once, and `server.max_streams_per_client` per key
//! and per client address; one more is answered 503.

use std::{convert::Infallible, sync::Arc, time::Duration};

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

use super::{
    dispatch::MountState,
    error::ApiError,
    shares::{ClientAddress, StreamHolder},
    AppState,
};
use crate::{
    auth::{require, Principal},
    services::events::Event,
};

pub async fn events(
    State((app, mount)): State<(AppState, Arc<MountState>)>,
    principal: Option<Extension<Principal>>,
    client: Option<Extension<ClientAddress>>,
    headers: axum::http::HeaderMap,
) -> Result<Response, ApiError> {
    let role = require(principal.as_deref(), Role::User)?.role;
    if mount.slot.active().is_none() {
        return Err(super::dispatch::unavailable(
            &mount.slot,
            principal.as_deref(),
        ));
    }
    let Ok(slot) = Arc::clone(&app.event_streams).try_acquire_owned() else {
        return Err(super::error::too_many_streams(app.max_streams));
    };
    let share = app.stream_shares.take(&StreamHolder {
        key: principal
            .as_ref()
            .map(|principal| Arc::clone(&principal.name)),
        address: client.map(|client| client.0 .0),
    })?;
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
    // Converted as the client reads: the missed events are shared with the bus, not copied.
    let replay = futures_util::stream::iter(subscription.missed)
        .filter_map(move |event| std::future::ready(to_sse(&event, role).map(Ok)));
    let subscribed = app.metrics.sse_subscriber();
    let stream = futures_util::stream::iter(gap)
        .chain(replay)
        .chain(event_stream(
            BroadcastStream::new(subscription.receiver),
            role,
        ))
        // The host is stopping: end the stream, so the connection can close.
        .take_until(tokio_util::sync::CancellationToken::clone(&app.shutdown).cancelled_owned())
        // The guards live as long as the stream: the gauge counts open streams, and the slot
        // is given back when the client goes.
        .map(move |event| {
            let _held = (&subscribed, &slot, &share);
            event
        });
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

fn to_sse(event: &Event, role: Role) -> Option<SseEvent> {
    let data = event.data_for(role)?;
    Some(
        SseEvent::default()
            .id(event.id.to_string())
            .event(event.kind.as_str())
            .data(data),
    )
}

fn event_stream(
    receiver: BroadcastStream<Arc<Event>>,
    role: Role,
) -> impl Stream<Item = Result<SseEvent, Infallible>> {
    receiver.filter_map(move |item| {
        let event = match item {
            Ok(event) => to_sse(&event, role),
            Err(BroadcastStreamRecvError::Lagged(missed)) => Some(
                SseEvent::default()
                    .event("lagged")
                    .data(format!("{{\"missed\":{missed}}}")),
            ),
        };
        std::future::ready(event.map(Ok))
    })
}
