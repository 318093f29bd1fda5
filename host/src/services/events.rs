//! The event bus: plugins publish, the host fans out to Server-Sent-Events subscribers. It lives
//! in the host, so subscribers stay connected while plugins are swapped. Bounded in count and in
//! bytes: an event over [`MAX_EVENT_BYTES`] is not published; a subscriber that falls more than
//! [`CAPACITY`] events behind is told so and skips ahead; and the last [`REPLAY`] events, at
//! most [`REPLAY_BYTES`] of them, are kept so a client that reconnects with `Last-Event-ID`
//! gets exactly what it missed (or is told of the gap).
//!
//! An event may carry a second, smaller view for users: what only developers may see
//! (connection details, log lines) is published in the full view only, and a user's stream gets
//! the user view or nothing. Both views share the event's id.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
};

use plugin_api::Role;
use tokio::sync::broadcast;

pub const CAPACITY: usize = 1024;
pub const REPLAY: usize = 4096;
/// The bytes of the events kept for replay, at most.
pub const REPLAY_BYTES: usize = 16 * 1024 * 1024;
/// The largest event (both views together) the bus takes: with [`CAPACITY`] events in the
/// broadcast ring, a subscriber that lags holds at most 64 MiB there.
pub const MAX_EVENT_BYTES: usize = 64 * 1024;

#[derive(Debug, Clone)]
pub struct Event {
    pub id: u64,
    pub kind: String,
    /// JSON text: what developers and admins see.
    pub data: String,
    pub user_view: UserView,
}

/// What a subscriber with the `user` role receives of an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserView {
    /// The same data as everyone.
    Same,
    /// Another (redacted) JSON text.
    Redacted(String),
    /// Nothing: users do not receive this event.
    Hidden,
}

impl Event {
    /// The JSON this event shows to a subscriber holding `role`, if any.
    pub fn data_for(&self, role: Role) -> Option<&str> {
        if role >= Role::Developer {
            return Some(&self.data);
        }
        match &self.user_view {
            UserView::Same => Some(&self.data),
            UserView::Redacted(data) => Some(data),
            UserView::Hidden => None,
        }
    }
}

struct Recent {
    next_id: u64,
    events: VecDeque<Arc<Event>>,
    /// The bytes of `events`.
    bytes: usize,
}

impl Event {
    /// What the event takes in memory, roughly: its texts.
    fn size(&self) -> usize {
        let user = match &self.user_view {
            UserView::Redacted(data) => data.len(),
            UserView::Same | UserView::Hidden => 0,
        };
        self.kind.len() + self.data.len() + user
    }
}

pub struct EventBus {
    /// Held only to number, remember and send one event, so ids go out in order and a new
    /// subscriber's replay and live stream neither overlap nor leave a gap.
    recent: Mutex<Recent>,
    sender: broadcast::Sender<Arc<Event>>,
}

/// A new subscriber: the buffered events after its `Last-Event-ID`, then the live receiver.
pub struct Subscription {
    pub missed: Vec<Arc<Event>>,
    /// Events after the client's last id had already left the replay buffer.
    pub gap: bool,
    pub receiver: broadcast::Receiver<Arc<Event>>,
}

impl Default for EventBus {
    fn default() -> Self {
        EventBus::new()
    }
}

impl EventBus {
    pub fn new() -> EventBus {
        let (sender, _) = broadcast::channel(CAPACITY);
        EventBus {
            recent: Mutex::new(Recent {
                next_id: 1,
                events: VecDeque::with_capacity(REPLAY),
                bytes: 0,
            }),
            sender,
        }
    }

    fn recent(&self) -> std::sync::MutexGuard<'_, Recent> {
        self.recent
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Publishes an event everyone may see; returns its id. Never waits on subscribers.
    pub fn publish(&self, kind: &str, data: String) -> u64 {
        self.publish_views(kind, data, UserView::Same)
    }

    /// Publishes an event with its user view; returns its id, or 0 when the event is over
    /// [`MAX_EVENT_BYTES`] and was not published. Never waits on subscribers.
    pub fn publish_views(&self, kind: &str, data: String, user_view: UserView) -> u64 {
        let mut event = Event {
            id: 0,
            kind: kind.to_owned(),
            data,
            user_view,
        };
        let size = event.size();
        if size > MAX_EVENT_BYTES {
            tracing::warn!(
                kind,
                bytes = size,
                limit = MAX_EVENT_BYTES,
                "an event over the size limit was not published"
            );
            return 0;
        }
        let mut recent = self.recent();
        event.id = recent.next_id;
        let id = event.id;
        recent.next_id += 1;
        let event = Arc::new(event);
        while recent.events.len() >= REPLAY || recent.bytes + size > REPLAY_BYTES {
            let Some(oldest) = recent.events.pop_front() else {
                break;
            };
            recent.bytes -= oldest.size();
        }
        recent.bytes += size;
        recent.events.push_back(Arc::clone(&event));
        // No subscriber is not an error: events are a live view, history lives in the store.
        let _ = self.sender.send(event);
        id
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.sender.subscribe()
    }

    /// Subscribes, replaying what came after `last_id`. An id this process never issued (the
    /// client saw a previous run of the host) replays the whole buffer.
    pub fn subscribe_after(&self, last_id: Option<u64>) -> Subscription {
        let recent = self.recent();
        let receiver = self.sender.subscribe();
        let Some(last_id) = last_id else {
            return Subscription {
                missed: Vec::new(),
                gap: false,
                receiver,
            };
        };
        let last_id = if last_id >= recent.next_id {
            0
        } else {
            last_id
        };
        let oldest = recent
            .events
            .front()
            .map_or(recent.next_id, |event| event.id);
        Subscription {
            missed: recent
                .events
                .iter()
                .filter(|event| event.id > last_id)
                .cloned()
                .collect(),
            gap: last_id + 1 < oldest,
            receiver,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn subscribers_see_events_in_order_with_ids() {
        let bus = EventBus::new();
        let mut receiver = bus.subscribe();
        let first = bus.publish("phase", "{}".into());
        let second = bus.publish("phase", "{\"x\":1}".into());
        assert!(second > first);
        let a = receiver.recv().await.map(|event| event.id).ok();
        let b = receiver.recv().await.map(|event| event.id).ok();
        assert_eq!((a, b), (Some(first), Some(second)));
    }

    #[test]
    fn users_get_the_user_view_or_nothing() {
        let bus = EventBus::new();
        let mut subscription = bus.subscribe_after(Some(0));
        bus.publish_views(
            "deployment.environment",
            "{\"host\":\"h\"}".into(),
            UserView::Redacted("{}".into()),
        );
        bus.publish_views(
            "deployment.log",
            "{\"line\":\"x\"}".into(),
            UserView::Hidden,
        );
        bus.publish("deployment.phase", "{\"status\":\"pending\"}".into());
        let mut seen = Vec::new();
        while let Ok(event) = subscription.receiver.try_recv() {
            seen.push((
                event.data_for(Role::User).map(str::to_owned),
                event.data_for(Role::Developer).map(str::to_owned),
            ));
        }
        assert_eq!(
            seen,
            [
                (Some("{}".into()), Some("{\"host\":\"h\"}".into())),
                (None, Some("{\"line\":\"x\"}".into())),
                (
                    Some("{\"status\":\"pending\"}".into()),
                    Some("{\"status\":\"pending\"}".into())
                ),
            ]
        );
    }

    #[tokio::test]
    async fn reconnecting_subscribers_get_exactly_what_they_missed() {
        let bus = EventBus::new();
        let ids: Vec<u64> = (0..5).map(|n| bus.publish("k", n.to_string())).collect();
        let mut subscription = bus.subscribe_after(Some(ids[2]));
        let missed: Vec<u64> = subscription.missed.iter().map(|event| event.id).collect();
        assert_eq!(missed, &ids[3..]);
        assert!(!subscription.gap);
        let next = bus.publish("k", "5".into());
        assert_eq!(
            subscription.receiver.recv().await.map(|e| e.id).ok(),
            Some(next)
        );
        // An id from before the buffer reports the gap; one from another run replays it all.
        for n in 0..REPLAY {
            bus.publish("k", n.to_string());
        }
        assert!(bus.subscribe_after(Some(1)).gap);
        assert_eq!(bus.subscribe_after(Some(u64::MAX)).missed.len(), REPLAY);
    }

    #[test]
    fn the_replay_is_bounded_in_bytes_and_oversized_events_are_refused() {
        let bus = EventBus::new();
        assert_eq!(bus.publish("k", "x".repeat(MAX_EVENT_BYTES + 1)), 0);
        let large = "y".repeat(MAX_EVENT_BYTES - 10);
        let first = bus.publish("k", large.clone());
        for _ in 0..(2 * REPLAY_BYTES / MAX_EVENT_BYTES) {
            bus.publish("k", large.clone());
        }
        let replay = bus.subscribe_after(Some(first - 1));
        let bytes: usize = replay.missed.iter().map(|event| event.size()).sum();
        assert!(bytes <= REPLAY_BYTES, "{bytes} bytes kept");
        assert!(replay.missed.len() < REPLAY);
        assert!(
            replay.gap,
            "the oldest events left the buffer and the client is told"
        );
    }
}
