//! Events on every node: the bus of a host on a shared (PostgreSQL) store, fed from the
//! cluster's event log (`record_store::PgStore::append_events`, table `pa_events`).
//!
//! Two threads per host (the database client blocks):
//! - the *writer* takes what this node published from the [`Outbound`] queue and appends it in
//!   batches, trying a failed batch again (with backoff) until it lands: an append is
//!   idempotent, so a batch whose commit was cut off is not stored twice;
//! - the *follower* listens on the log's channel and, on each wake-up (and at least every
//!   second), reads the events after the last one it delivered and hands them to the bus, so
//!   every node serves every event with the log's id, in the log's order.
//!
//! The table is the truth; a notification is only the wake-up. The follower sends itself a beat
//! through the log's channel every second; when its own beats stop arriving for
//! [`SILENT_AFTER`], the listening connection is taken as dead (a server that dropped it, a
//! network that silently lost it), replaced, and what was missed is read from the table. A node
//! that starts keeps the end of the log for replay, so a client can resume with
//! `Last-Event-ID` on any node.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc, Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use record_store::{LoggedEvent, NewEvent, PgStore, StoreError};

use super::{
    events::{Archive, Event, EventBus, REPLAY},
    outbound::{Outbound, Queued},
};

/// Events and bytes one append holds at most.
const BATCH_EVENTS: usize = 512;
const BATCH_BYTES: usize = 4 * 1024 * 1024;
/// Events one read of the log returns at most.
const READ_LIMIT: u32 = 1000;
/// How many of the newest event ids the log keeps; older ones are deleted by any node, at most
/// once per [`PRUNE_EVERY`] each.
pub const KEEP: u64 = 100_000;
const PRUNE_EVERY: Duration = Duration::from_secs(60);
/// How often the follower sends itself a beat, and reads the log even without a wake-up.
const BEAT_EVERY: Duration = Duration::from_secs(1);
/// How long without hearing its own beat before the listening connection is replaced.
pub const SILENT_AFTER: Duration = Duration::from_secs(5);
/// How long one wait for a notification lasts (how soon the follower sees it should stop).
const WAIT: Duration = Duration::from_millis(250);
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// This node's part in the cluster's event log: started with [`ClusterEvents::start`], ended
/// with [`ClusterEvents::stop`].
pub struct ClusterEvents {
    outbound: Arc<Outbound<Event>>,
    flags: Arc<Flags>,
    writer: Worker,
    follower: Worker,
}

#[derive(Default)]
struct Flags {
    /// The host is stopping: the writer ends once the queue is empty, the follower at once.
    stopping: AtomicBool,
    /// The writer gives up a batch it cannot write (the host's grace period is over).
    abandon: AtomicBool,
}

/// A thread and a way to wait a bounded time for its end.
struct Worker {
    done: mpsc::Receiver<()>,
    _handle: JoinHandle<()>,
}

impl Worker {
    fn spawn(name: &str, work: impl FnOnce() + Send + 'static) -> Result<Worker, String> {
        let (finished, done) = mpsc::channel();
        let handle = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                work();
                let _ = finished.send(());
            })
            .map_err(|error| format!("cannot start the {name} thread: {error}"))?;
        Ok(Worker {
            done,
            _handle: handle,
        })
    }

    /// Whether the thread ended within `within`.
    fn wait(&self, within: Duration) -> bool {
        !matches!(
            self.done.recv_timeout(within),
            Err(mpsc::RecvTimeoutError::Timeout)
        )
    }
}

/// What a failing loop reports: the first failure of a run of them, and the recovery.
struct Outage {
    what: &'static str,
    failing: bool,
}

impl Outage {
    fn new(what: &'static str) -> Outage {
        Outage {
            what,
            failing: false,
        }
    }

    fn failed(&mut self, error: &StoreError) {
        if !self.failing {
            tracing::warn!(%error, "{} failed; trying again", self.what);
        }
        self.failing = true;
    }

    fn recovered(&mut self) {
        if std::mem::take(&mut self.failing) {
            tracing::info!("{} works again", self.what);
        }
    }
}

impl ClusterEvents {
    /// Shares `bus` through the log of `store`: keeps the end of the log for replay and starts
    /// the writer and the follower. Blocks (database reads): call it off async threads.
    pub fn start(
        store: Arc<PgStore>,
        bus: Arc<EventBus>,
        node_id: String,
        boot_id: String,
    ) -> Result<ClusterEvents, String> {
        let tail = store
            .events_tail(REPLAY as u32)
            .map_err(|error| error.to_string())?;
        let tail = tail.into_iter().map(|event| bus_event(event, &boot_id));
        let archive = Arc::new(LogArchive {
            store: Arc::clone(&store),
            boot_id: boot_id.clone(),
        });
        let outbound = bus.share(tail.collect(), archive);
        let flags = Arc::new(Flags::default());
        let node_id_ = node_id.clone();
        let writer = Worker::spawn("pa-event-writer", {
            let (store, outbound, flags) = (
                Arc::clone(&store),
                Arc::clone(&outbound),
                Arc::clone(&flags),
            );
            let boot_id = boot_id.clone();
            move || write_loop(&store, &outbound, &node_id, &boot_id, &flags)
        })?;
        let follower = Worker::spawn("pa-event-follower", {
            let flags = Arc::clone(&flags);
            move || follow_loop(&store, &bus, &node_id_, &boot_id, &flags)
        })?;
        tracing::info!("events shared with the other nodes through the event log");
        Ok(ClusterEvents {
            outbound,
            flags,
            writer,
            follower,
        })
    }

    /// Takes no more events, gives the writer up to `within` to write what is queued, and
    /// stops both threads. Blocks: call it off async threads.
    pub fn stop(self, within: Duration) {
        self.outbound.close();
        self.flags.stopping.store(true, Ordering::Release);
        if !self.writer.wait(within) {
            self.flags.abandon.store(true, Ordering::Release);
            tracing::warn!("events this node published were not all written to the event log before it stopped");
        }
        // The follower wakes at least every `WAIT`; a database call in progress is bounded by
        // the store's own timeouts.
        let _ = self.follower.wait(MAX_BACKOFF);
    }
}

/// Dropped without [`ClusterEvents::stop`] (a start that failed later): the threads end.
impl Drop for ClusterEvents {
    fn drop(&mut self) {
        self.outbound.close();
        self.flags.stopping.store(true, Ordering::Release);
        self.flags.abandon.store(true, Ordering::Release);
    }
}

/// A logged event as the bus holds it.
fn bus_event(event: LoggedEvent, boot_id: &str) -> Event {
    Event {
        id: event.id,
        local: event.boot_id == boot_id,
        kind: event.kind,
        data: event.data,
        user_view: event.user_view,
    }
}

fn write_loop(
    store: &PgStore,
    outbound: &Outbound<Event>,
    node_id: &str,
    boot_id: &str,
    flags: &Flags,
) {
    let mut outage = Outage::new("writing events to the event log");
    let mut pruned_at = Instant::now();
    loop {
        let batch = outbound.take(BATCH_EVENTS, BATCH_BYTES, WAIT);
        if batch.is_empty() {
            if flags.stopping.load(Ordering::Acquire) && outbound.is_empty() {
                return;
            }
            continue;
        }
        let events: Vec<NewEvent<'_>> = batch.iter().map(new_event).collect();
        let mut backoff = FIRST_BACKOFF;
        while let Err(error) = store.append_events(node_id, boot_id, &events) {
            outage.failed(&error);
            if flags.abandon.load(Ordering::Acquire) {
                return;
            }
            std::thread::sleep(backoff);
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
        outage.recovered();
        if pruned_at.elapsed() >= PRUNE_EVERY {
            pruned_at = Instant::now();
            if let Err(error) = store.prune_events(KEEP) {
                tracing::warn!(%error, "pruning the event log failed; it is tried again in a minute");
            }
        }
    }
}

fn new_event(queued: &Queued<Event>) -> NewEvent<'_> {
    NewEvent {
        seq: queued.seq,
        kind: &queued.event.kind,
        data: &queued.event.data,
        user_view: &queued.event.user_view,
    }
}

fn follow_loop(store: &PgStore, bus: &EventBus, node_id: &str, boot_id: &str, flags: &Flags) {
    let own_beat = format!("beat:{boot_id}:");
    let mut last = bus.last_id();
    let mut listener = None;
    let mut listening = Outage::new("listening for events");
    let mut reading = Outage::new("reading the event log");
    let mut beats = 0u64;
    let mut beat_sent: Option<Instant> = None;
    let mut heard_own_beat = Instant::now();
    let mut read_at: Option<Instant> = None;
    while !flags.stopping.load(Ordering::Acquire) {
        if listener.is_none() {
            match store.listen_events(node_id) {
                Ok(connection) => {
                    listener = Some(connection);
                    heard_own_beat = Instant::now();
                    listening.recovered();
                    // What was announced while nobody listened is read below.
                    read_at = None;
                }
                Err(error) => listening.failed(&error),
            }
        }
        if beat_sent.is_none_or(|at| at.elapsed() >= BEAT_EVERY) {
            beats += 1;
            beat_sent = Some(Instant::now());
            // A beat that cannot be sent is not heard either: the silence check covers it.
            let _ = store.notify_events(&format!("{own_beat}{beats}"));
        }
        let mut woken = false;
        match listener.as_mut() {
            None => std::thread::sleep(WAIT),
            Some(connection) => match connection.wait(WAIT) {
                Ok(payloads) => {
                    for payload in payloads {
                        if payload.starts_with(&own_beat) {
                            heard_own_beat = Instant::now();
                        } else if !payload.starts_with("beat:") {
                            woken = true;
                        }
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "the connection listening for events ended; listening on a new one and reading what was missed from the event log");
                    listener = None;
                    woken = true;
                }
            },
        }
        if listener.is_some() && heard_own_beat.elapsed() > SILENT_AFTER {
            tracing::warn!(
                silent_ms = heard_own_beat.elapsed().as_millis() as u64,
                "the connection listening for events went silent (this node's own beats stopped arriving); listening on a new one and reading what was missed from the event log"
            );
            listener = None;
            woken = true;
        }
        if woken || read_at.is_none_or(|at| at.elapsed() >= BEAT_EVERY) {
            read_at = Some(Instant::now());
            match catch_up(store, bus, &mut last, boot_id) {
                Ok(()) => reading.recovered(),
                Err(error) => reading.failed(&error),
            }
        }
    }
}

/// Delivers every event of the log after `last`, moving `last` along.
fn catch_up(
    store: &PgStore,
    bus: &EventBus,
    last: &mut u64,
    boot_id: &str,
) -> Result<(), StoreError> {
    loop {
        let events = store.events_between(*last, u64::MAX, READ_LIMIT)?;
        let full = events.len() >= READ_LIMIT as usize;
        for event in events {
            *last = event.id;
            bus.deliver(bus_event(event, boot_id));
        }
        if !full {
            return Ok(());
        }
    }
}

/// The log as the bus's [`Archive`]: what left a node's replay buffer.
struct LogArchive {
    store: Arc<PgStore>,
    boot_id: String,
}

impl Archive for LogArchive {
    fn newest(&self) -> Result<Option<u64>, String> {
        self.store
            .newest_event_id()
            .map_err(|error| error.to_string())
    }

    fn between(&self, after: u64, before: u64, limit: usize) -> Result<Option<Vec<Event>>, String> {
        let failed = |error: StoreError| error.to_string();
        // Ids are not dense, so a log that starts past the next id may have lost events to
        // pruning: the client is told, rather than given a stream with a silent hole.
        let oldest = self.store.oldest_event_id().map_err(failed)?;
        if oldest.is_none_or(|oldest| oldest > after.saturating_add(1)) {
            return Ok(None);
        }
        let limit = u32::try_from(limit).unwrap_or(u32::MAX);
        let events = self
            .store
            .events_between(after, before, limit)
            .map_err(failed)?;
        if events.len() >= limit as usize {
            return Ok(None);
        }
        Ok(Some(
            events
                .into_iter()
                .map(|event| bus_event(event, &self.boot_id))
                .collect(),
        ))
    }
}
