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
//!
//! On a store several nodes share, the bus is *shared* ([`EventBus::share`]): a published event
//! goes to the [`Outbound`] queue, is written to the cluster's event log, which numbers it, and
//! comes back to every node's bus through [`EventBus::deliver`] (`services::cluster_events`).
//! Every node then serves the same events with the same ids in the same order, a client may
//! resume on any node, and what left this node's replay buffer is read back from the log
//! ([`Archive`]).

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex, OnceLock},
};

use plugin_api::Role;
pub use record_store::UserView;
use tokio::sync::broadcast;

use super::outbound::{Outbound, Weighed};

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
    /// Published by this process (not another node): what this node's metrics count.
    pub local: bool,
}

/// Events older than the replay buffer, read from where they are kept (the cluster's log).
pub trait Archive: Send + Sync {
    /// The events with `after < id < before`, in order, at most `limit`; `None` when events
    /// after `after` are no longer kept. Blocks (a database read).
    fn between(&self, after: u64, before: u64, limit: usize) -> Result<Option<Vec<Event>>, String>;
    /// The newest id kept (`None`: none). Blocks.
    fn newest(&self) -> Result<Option<u64>, String>;
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

impl Recent {
    /// Keeps `event` (numbered after every event kept) for replay, within the bounds.
    fn remember(&mut self, event: Arc<Event>) {
        let size = event.size();
        while self.events.len() >= REPLAY || self.bytes + size > REPLAY_BYTES {
            let Some(oldest) = self.events.pop_front() else {
                break;
            };
            self.bytes -= oldest.size();
        }
        self.next_id = event.id + 1;
        self.bytes += size;
        self.events.push_back(event);
    }
}

impl Weighed for Event {
    /// What the event takes in memory, roughly: its texts.
    fn size(&self) -> usize {
        let user = match &self.user_view {
            UserView::Redacted(data) => data.len(),
            UserView::Same | UserView::Hidden => 0,
        };
        self.kind.len() + self.data.len() + user
    }
}

impl Event {
    fn has_nul(&self) -> bool {
        let user = match &self.user_view {
            UserView::Redacted(data) => data.contains('\0'),
            UserView::Same | UserView::Hidden => false,
        };
        user || self.kind.contains('\0') || self.data.contains('\0')
    }
}

pub struct EventBus {
    /// Held only to number, remember and send one event, so ids go out in order and a new
    /// subscriber's replay and live stream neither overlap nor leave a gap.
    recent: Mutex<Recent>,
    sender: broadcast::Sender<Arc<Event>>,
    /// Set when the bus is shared: where published events go to be numbered.
    outbound: OnceLock<Arc<Outbound<Event>>>,
    archive: OnceLock<Arc<dyn Archive>>,
}

/// A new subscriber: the buffered events after its `Last-Event-ID`, then the live receiver.
pub struct Subscription {
    pub missed: Vec<Arc<Event>>,
    /// Events after the client's last id had already left the replay buffer.
    pub gap: bool,
    /// The first id the replay buffer held (what an [`Archive`] is asked for goes below it).
    pub buffered_from: u64,
    /// Live events with ids up to this one were seen by the client already: on a shared bus a
    /// client may resume on a node whose log reader is behind the node it came from.
    pub seen_up_to: u64,
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
            outbound: OnceLock::new(),
            archive: OnceLock::new(),
        }
    }

    /// Makes the bus shared with other nodes: from now on published events go to the returned
    /// queue (for the cluster's log), and only [`EventBus::deliver`] numbers and sends them.
    /// `tail` is the end of the log, kept for replay; `archive` serves what lies before it.
    pub fn share(&self, tail: Vec<Event>, archive: Arc<dyn Archive>) -> Arc<Outbound<Event>> {
        let outbound = Arc::clone(self.outbound.get_or_init(Arc::default));
        let _ = self.archive.set(archive);
        let mut recent = self.recent();
        for event in tail {
            recent.remember(Arc::new(event));
        }
        outbound
    }

    /// Numbered elsewhere (the cluster's log): kept for replay and sent to subscribers. An id
    /// at or below one already delivered is passed over.
    pub fn deliver(&self, event: Event) {
        let mut recent = self.recent();
        if event.id < recent.next_id {
            return;
        }
        let event = Arc::new(event);
        recent.remember(Arc::clone(&event));
        let _ = self.sender.send(event);
    }

    /// The last id delivered or published (0: none).
    pub fn last_id(&self) -> u64 {
        self.recent().next_id - 1
    }

    /// Where events older than the replay buffer are read, on a shared bus.
    pub fn archive(&self) -> Option<Arc<dyn Archive>> {
        self.archive.get().cloned()
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
    /// [`MAX_EVENT_BYTES`] and was not published, or when the bus is shared (the cluster's log
    /// numbers the event when it is written). Never waits on subscribers or on the log.
    pub fn publish_views(&self, kind: &str, data: String, user_view: UserView) -> u64 {
        let mut event = Event {
            id: 0,
            kind: kind.to_owned(),
            data,
            user_view,
            local: true,
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
        if let Some(outbound) = self.outbound.get() {
            // The log numbers it; the id is not known yet.
            if event.has_nul() {
                tracing::warn!(kind = %event.kind.escape_debug(), "an event holding a NUL character was not published: the event log cannot store it");
            } else {
                outbound.push(event);
            }
            return 0;
        }
        let mut recent = self.recent();
        event.id = recent.next_id;
        let id = event.id;
        let event = Arc::new(event);
        recent.remember(Arc::clone(&event));
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
        let oldest = recent
            .events
            .front()
            .map_or(recent.next_id, |event| event.id);
        let Some(last_id) = last_id else {
            return Subscription {
                missed: Vec::new(),
                gap: false,
                buffered_from: oldest,
                seen_up_to: 0,
                receiver,
            };
        };
        let shared = self.outbound.get().is_some();
        // Alone, an id this process never issued comes from an earlier run of the host; shared,
        // from a node ahead of this one, whose events this node has yet to read.
        let (last_id, seen_up_to) = match (last_id >= recent.next_id, shared) {
            (true, false) => (0, 0),
            (_, true) => (last_id, last_id),
            (false, false) => (last_id, 0),
        };
        Subscription {
            buffered_from: oldest,
            seen_up_to,
            missed: recent
                .events
                .iter()
                .filter(|event| event.id > last_id)
                .cloned()
                .collect(),
            gap: last_id.saturating_add(1) < oldest,
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

    struct NoArchive;

    impl Archive for NoArchive {
        fn between(&self, _: u64, _: u64, _: usize) -> Result<Option<Vec<Event>>, String> {
            Ok(None)
        }

        fn newest(&self) -> Result<Option<u64>, String> {
            Ok(None)
        }
    }

    fn numbered(id: u64) -> Event {
        Event {
            id,
            kind: "k".into(),
            data: id.to_string(),
            user_view: UserView::Same,
            local: false,
        }
    }

    #[tokio::test]
    async fn a_shared_bus_sends_what_the_log_numbered_and_queues_what_is_published() {
        let bus = EventBus::new();
        let outbound = bus.share(vec![numbered(3), numbered(7)], Arc::new(NoArchive));
        assert_eq!(bus.last_id(), 7, "the log's tail is kept for replay");
        let mut subscription = bus.subscribe_after(Some(3));
        let missed: Vec<u64> = subscription.missed.iter().map(|event| event.id).collect();
        assert_eq!(missed, [7]);
        assert!(!subscription.gap, "ids of the log may have holes");
        // Published here: queued for the log, not numbered or sent by this bus.
        assert_eq!(bus.publish("k", "mine".into()), 0);
        let queued = outbound.take(10, usize::MAX, std::time::Duration::ZERO);
        assert_eq!(queued.len(), 1);
        assert!(queued[0].event.local);
        assert!(subscription.receiver.try_recv().is_err());
        // Delivered from the log: sent in order; an id already delivered is passed over.
        bus.deliver(numbered(9));
        bus.deliver(numbered(8));
        bus.deliver(numbered(12));
        let mut sent = Vec::new();
        while let Ok(event) = subscription.receiver.try_recv() {
            sent.push(event.id);
        }
        assert_eq!(sent, [9, 12]);
        assert_eq!(
            bus.publish("k", "nul\0".into()),
            0,
            "refused: the log cannot keep it"
        );
        assert!(outbound.is_empty());
    }

    #[test]
    fn on_a_shared_bus_a_client_ahead_of_this_node_is_not_sent_what_it_saw() {
        let bus = EventBus::new();
        bus.share(vec![numbered(5)], Arc::new(NoArchive));
        // The client saw id 9 on a node whose reader is ahead of this one.
        let ahead = bus.subscribe_after(Some(9));
        assert!(ahead.missed.is_empty());
        assert_eq!(ahead.seen_up_to, 9);
        assert!(!ahead.gap);
        // A client whose last id left the buffer is told where the buffer begins.
        let behind = bus.subscribe_after(Some(1));
        assert!(behind.gap);
        assert_eq!(behind.buffered_from, 5);
        // Alone, an id this process never issued means an earlier run: everything is replayed.
        let alone = EventBus::new();
        alone.publish("k", "a".into());
        let earlier_run = alone.subscribe_after(Some(40));
        assert_eq!((earlier_run.missed.len(), earlier_run.seen_up_to), (1, 0));
    }
}
