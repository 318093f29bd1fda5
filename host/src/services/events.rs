//! The event bus: plugins publish, the host fans out to Server-Sent-Events subscribers. It lives
//! in the host, so subscribers stay connected while plugins are swapped. Bounded: a subscriber
//! that falls more than [`CAPACITY`] events behind is told so and skips ahead.

use std::sync::{
    atomic::{AtomicU64, Ordering},
    Arc,
};

use tokio::sync::broadcast;

pub const CAPACITY: usize = 1024;

#[derive(Debug, Clone)]
pub struct Event {
    pub id: u64,
    pub kind: String,
    /// JSON text.
    pub data: String,
}

pub struct EventBus {
    next_id: AtomicU64,
    sender: broadcast::Sender<Arc<Event>>,
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
            next_id: AtomicU64::new(1),
            sender,
        }
    }

    /// Publishes an event; returns its id. Never blocks.
    pub fn publish(&self, kind: &str, data: String) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        // No subscriber is not an error: events are a live view, history lives in the store.
        let _ = self.sender.send(Arc::new(Event {
            id,
            kind: kind.to_owned(),
            data,
        }));
        id
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.sender.subscribe()
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
}
