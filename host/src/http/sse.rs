//! `GET <mount>/events`: Server-Sent Events from the host's bus. The stream belongs to the host,
//! so it survives plugin swaps; it ends at once when the host stops.
//!
//! Each subscriber sees every event in the view its role allows (see `services::events`): a
//! user never receives log lines or connection details, whatever a plugin publishes. At most
//! `server.max_streams` streams are open at once, and `server.max_streams_per_client` per key
//! and per client address; one more is answered 503.
//!
//! On a host that shares its store with other nodes, every node serves the same events with the
//! same ids: a client may resume with `Last-Event-ID` on another node, and what left this node's
//! replay buffer is read back from the cluster's event log.

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

/// Reads of the cluster's log for clients that resume from before the replay buffer, at once.
static ARCHIVE_READS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);
/// Events one such read returns at most; a client that missed more is told to reload.
const ARCHIVE_LIMIT: usize = 1024;

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
    let mut last_id = last_id;
    // On a shared bus, an id past the end of the cluster's log is from another log (a new
    // database): the client gets what a client of an earlier run of a host gets.
    if let (Some(archive), Some(id)) = (app.bus.archive(), last_id) {
        if id > app.bus.last_id() {
            let newest = tokio::task::spawn_blocking(move || archive.newest()).await;
            if let Ok(Ok(newest)) = newest {
                if id > newest.unwrap_or(0) {
                    last_id = Some(0);
                }
            }
        }
    }
    let mut subscription = app.bus.subscribe_after(last_id);
    // On a shared bus, what left this node's buffer is read back from the cluster's log.
    let mut archived = Vec::new();
    if let (true, Some(archive), Some(after)) = (subscription.gap, app.bus.archive(), last_id) {
        let before = subscription.buffered_from;
        // Few at a time, and few events each: a burst of reconnects must not take the store's
        // connections or the host's memory.
        let _reading = ARCHIVE_READS.acquire().await;
        match tokio::task::spawn_blocking(move || archive.between(after, before, ARCHIVE_LIMIT))
            .await
        {
            Ok(Ok(Some(events))) => {
                archived = events;
                subscription.gap = false;
            }
            Ok(Ok(None)) => {}
            Ok(Err(error)) => {
                tracing::warn!(%error, "events before the replay buffer could not be read from the event log; the client is told to reload")
            }
            Err(error) => tracing::warn!(%error, "reading the event log failed"),
        }
    }
    let seen_up_to = subscription.seen_up_to;
    let gap = subscription.gap.then(|| {
        Ok(SseEvent::default().event("reset").data(
            "{\"reason\":\"events after Last-Event-ID are no longer buffered; reload the state\"}",
        ))
    });
    // Converted as the client reads: the missed events are shared with the bus, not copied.
    let archived = futures_util::stream::iter(archived)
        .filter_map(move |event| std::future::ready(to_sse(&event, role).map(Ok)));
    let replay = futures_util::stream::iter(subscription.missed)
        .filter_map(move |event| std::future::ready(to_sse(&event, role).map(Ok)));
    let subscribed = app.metrics.sse_subscriber();
    let stream = futures_util::stream::iter(gap)
        .chain(archived)
        .chain(replay)
        .chain(event_stream(
            BroadcastStream::new(subscription.receiver),
            role,
            seen_up_to,
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

/// The live events, in `role`'s view, past those the client has seen.
fn event_stream(
    receiver: BroadcastStream<Arc<Event>>,
    role: Role,
    seen_up_to: u64,
) -> impl Stream<Item = Result<SseEvent, Infallible>> {
    receiver.filter_map(move |item| {
        let event = match item {
            Ok(event) if event.id <= seen_up_to => None,
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
