//! Events this node published and has not yet written to the cluster's event log: a bounded
//! queue between the publishers (plugin threads, which never wait here) and the one thread
//! that appends to the log.
//!
//! Each event gets the next number of this process (`seq`), which with the boot id makes an
//! append idempotent. The queue holds at most [`MAX_EVENTS`] events and [`MAX_BYTES`] of them;
//! past that, new events are dropped and counted (the log is a live view; history lives in the
//! records), and the drop is reported once per run of drops.

use std::{
    collections::VecDeque,
    sync::{Condvar, Mutex, MutexGuard},
    time::Duration,
};

/// What an item takes in memory, roughly.
pub trait Weighed {
    fn size(&self) -> usize;
}

pub const MAX_EVENTS: usize = 65_536;
pub const MAX_BYTES: usize = 64 * 1024 * 1024;

/// An event waiting to be appended, with its number in this process.
pub struct Queued<T> {
    pub seq: u64,
    pub event: T,
}

struct Queue<T> {
    events: VecDeque<Queued<T>>,
    bytes: usize,
    next_seq: u64,
    /// Events dropped since the last report.
    dropped: u64,
    closed: bool,
}

pub struct Outbound<T> {
    queue: Mutex<Queue<T>>,
    ready: Condvar,
}

impl<T> Default for Outbound<T> {
    fn default() -> Self {
        Outbound {
            queue: Mutex::new(Queue {
                events: VecDeque::new(),
                bytes: 0,
                next_seq: 0,
                dropped: 0,
                closed: false,
            }),
            ready: Condvar::new(),
        }
    }
}

impl<T: Weighed> Outbound<T> {
    fn queue(&self) -> MutexGuard<'_, Queue<T>> {
        self.queue
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Queues `event`; `false` when it was dropped (the queue is full or closed).
    pub fn push(&self, event: T) -> bool {
        let size = event.size();
        let mut queue = self.queue();
        if queue.closed {
            return false;
        }
        if queue.events.len() >= MAX_EVENTS || queue.bytes + size > MAX_BYTES {
            queue.dropped += 1;
            if queue.dropped == 1 {
                tracing::warn!(
                    events = queue.events.len(),
                    "the event log is not keeping up (is the database reachable?): new events are dropped until it does"
                );
            }
            return false;
        }
        if queue.dropped > 0 {
            tracing::warn!(
                dropped = queue.dropped,
                "events were dropped while the event log was not keeping up"
            );
            queue.dropped = 0;
        }
        queue.next_seq += 1;
        let seq = queue.next_seq;
        queue.bytes += size;
        queue.events.push_back(Queued { seq, event });
        drop(queue);
        self.ready.notify_one();
        true
    }

    /// The oldest queued events, at most `max_events` and (but for a first one that is larger)
    /// `max_bytes`, waiting up to `wait` for a first one.
    pub fn take(&self, max_events: usize, max_bytes: usize, wait: Duration) -> Vec<Queued<T>> {
        let mut queue = self.queue();
        if queue.events.is_empty() && !queue.closed {
            queue = self
                .ready
                .wait_timeout(queue, wait)
                .map(|(queue, _)| queue)
                .unwrap_or_else(|poisoned| poisoned.into_inner().0);
        }
        let mut batch = Vec::new();
        let mut bytes = 0;
        while batch.len() < max_events {
            let Some(next) = queue.events.front() else {
                break;
            };
            let size = next.event.size();
            if !batch.is_empty() && bytes + size > max_bytes {
                break;
            }
            bytes += size;
            if let Some(next) = queue.events.pop_front() {
                batch.push(next);
            }
        }
        queue.bytes -= bytes;
        batch
    }

    pub fn is_empty(&self) -> bool {
        self.queue().events.is_empty()
    }

    /// Takes no more events; wakes the writer.
    pub fn close(&self) {
        self.queue().closed = true;
        self.ready.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Text(String);

    impl Weighed for Text {
        fn size(&self) -> usize {
            self.0.len()
        }
    }

    fn event(data: &str) -> Text {
        Text(data.to_owned())
    }

    #[test]
    fn events_leave_in_order_numbered_and_in_bounded_batches() {
        let outbound = Outbound::<Text>::default();
        for n in 0..5 {
            assert!(outbound.push(event(&n.to_string())));
        }
        let first = outbound.take(3, usize::MAX, Duration::ZERO);
        let rest = outbound.take(10, usize::MAX, Duration::ZERO);
        let seqs: Vec<u64> = first.iter().chain(&rest).map(|queued| queued.seq).collect();
        assert_eq!(seqs, [1, 2, 3, 4, 5]);
        assert_eq!(first.len(), 3);
        assert!(outbound.is_empty());
        // One event larger than the byte bound still leaves, alone.
        outbound.push(event("large"));
        outbound.push(event("x"));
        assert_eq!(outbound.take(10, 1, Duration::ZERO).len(), 1);
    }

    #[test]
    fn a_full_or_closed_queue_drops_new_events() {
        let outbound = Outbound::<Text>::default();
        for _ in 0..MAX_EVENTS {
            assert!(outbound.push(event("")));
        }
        assert!(!outbound.push(event("")));
        outbound.take(1, usize::MAX, Duration::ZERO);
        assert!(outbound.push(event("")), "room again after a take");
        outbound.close();
        assert!(!outbound.push(event("")));
    }
}
