//! The event bus: plugins publish, the host fans out to Server-Sent-Events subscribers. It lives
//! in the host, so subscribers stay connected while plugins are swapped. Bounded twice: a
//! subscriber that falls more than [`CAPACITY`] events behind is told so and skips ahead, and the
//! last [`REPLAY`] events are kept so a client that reconnects with `Last-Event-ID` gets exactly
//! what it missed.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
};

use tokio::sync::broadcast;

pub const CAPACITY: usize = 1024;
pub const REPLAY: usize = 4096;

#[derive(Debug, Clone)]
pub struct Event {
    pub id: u64,
    pub kind: String,
    /// JSON text.
    pub data: String,
}

struct Recent {
    next_id: u64,
    events: VecDeque<Arc<Event>>,
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
            }),
            sender,
        }
    }

    fn recent(&self) -> std::sync::MutexGuard<'_, Recent> {
        self.recent
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Publishes an event; returns its id. Never waits on subscribers.
    pub fn publish(&self, kind: &str, data: String) -> u64 {
        let mut recent = self.recent();
        let id = recent.next_id;
        recent.next_id += 1;
        let event = Arc::new(Event {
            id,
            kind: kind.to_owned(),
            data,
        });
        if recent.events.len() == REPLAY {
            recent.events.pop_front();
        }
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
}
