//! The instance runtime: [`start_instance`] builds a copy's own tokio runtime and turns a
//! [`Handler`] into a `PluginInstance` that keeps the ABI's rules.
//!
//! - `handle` runs on host threads, so it only pushes the job into one of the lock-free inboxes
//!   (round robin per host thread, one inbox per worker thread) and, when that inbox's
//!   dispatcher sleeps, writes one byte to a socket pair: atomics and a plain syscall, no
//!   runtime and no plugin thread-locals on the host's thread;
//! - each dispatcher task wakes on that byte and polls each job once in place, spawning those
//!   that must wait; every import, handler and streamed answer runs under `catch_unwind`;
//! - `shutdown` drains accepted work, then drops the runtime, which joins its threads.
//!
//! Separate from the plugin-author API ([`crate::api`]) because none of it is called by plugin
//! code beyond [`start_instance`], and its invariants (no plugin code on host threads beyond a
//! push) are easier to keep in one file.

use std::{
    future::Future,
    io::Write as _,
    panic::AssertUnwindSafe,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use abi_stable::{
    sabi_trait::TD_Opaque,
    std_types::{RResult, RSlice, RString, RVec, Tuple2},
};
use crossbeam_queue::SegQueue;
use crossbeam_utils::CachePadded;
use futures_util::FutureExt;
use plugin_api::{
    HostServicesBox, PluginInstance, PluginInstanceBox, PluginInstance_TO, PluginRequest,
    PluginResponse, PushOutcome, ResponseSinkBox,
};
use tokio::sync::Notify;

use crate::{
    api::{Handler, Import, Response},
    heap,
    host::Host,
    log_forward,
};

/// How a plugin instance is started, given to [`start_instance`].
pub struct Startup {
    pub host: Host,
    /// The `[plugins.<name>.settings]` table, as JSON.
    pub settings: serde_json::Value,
}

/// Tuning of the instance runtime.
#[derive(Debug, Clone)]
pub struct RuntimeOptions {
    pub thread_name: &'static str,
    /// Worker threads of the instance's runtime; 0: half the CPUs this process may run on
    /// (at least one).
    pub worker_threads: usize,
    /// How long `shutdown` waits for in-flight requests before cancelling them.
    pub drain_timeout: Duration,
}

/// The plugin's share of the CPUs this process may run on: half, at least one. The host's own
/// runtime has a worker per CPU and every request passes through both, so a plugin runtime as
/// large as the host's only adds threads competing for the same cores (measured with
/// `benches/load.sh`: on 2 cores one plugin worker serves the plugin route at 0.80–0.83 of the
/// host's `/health`, two at 0.75; on 8 cores 2, 4 and 8 workers serve alike).
fn auto_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |cpus| (usize::from(cpus) / 2).max(1))
}

/// Starts a plugin instance: builds its runtime, runs `init` on it and wraps the handler.
/// Every panic is caught and reported as the start error.
pub fn start_instance<H, F, Fut>(
    services: HostServicesBox,
    settings: RString,
    options: RuntimeOptions,
    init: F,
) -> RResult<PluginInstanceBox, RString>
where
    H: Handler,
    F: FnOnce(Startup) -> Fut,
    Fut: Future<Output = Result<H, String>>,
{
    let started = std::panic::catch_unwind(AssertUnwindSafe(move || {
        start_inner(services, settings, options, init)
    }));
    match started {
        Ok(Ok(instance)) => RResult::ROk(instance),
        Ok(Err(message)) => RResult::RErr(RString::from(message)),
        Err(panic) => RResult::RErr(RString::from(format!(
            "plugin panicked while starting: {}",
            panic_message(&*panic)
        ))),
    }
}

fn start_inner<H, F, Fut>(
    services: HostServicesBox,
    settings: RString,
    options: RuntimeOptions,
    init: F,
) -> Result<PluginInstanceBox, String>
where
    H: Handler,
    F: FnOnce(Startup) -> Fut,
    Fut: Future<Output = Result<H, String>>,
{
    let host = Host::new(services);
    let logs = log_forward::dispatch(host.clone());
    let settings: serde_json::Value = serde_json::from_str(settings.as_str())
        .map_err(|error| format!("plugin settings are not valid JSON: {error}"))?;
    let workers = match options.worker_threads {
        0 => auto_workers(),
        count => count,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .max_blocking_threads(64)
        .thread_name(options.thread_name)
        .on_thread_start({
            let logs = logs.clone();
            move || {
                heap::enter_thread();
                log_forward::enter(&logs);
            }
        })
        .on_thread_stop(|| {
            // The cache first: nothing that fails after it can leave blocks in it.
            heap::leave_thread();
            log_forward::leave();
        })
        // I/O and timers. Children are reaped through pidfds on the I/O driver, and plugin code
        // awaits every child it starts, so the process driver never installs a process-wide
        // SIGCHLD handler pointing into this copy (one that would outlive it).
        .enable_io()
        .enable_time()
        .build()
        .map_err(|error| format!("cannot start the plugin runtime: {error}"))?;
    let handler = tracing::dispatcher::with_default(&logs, || {
        runtime.block_on(init(Startup { host, settings }))
    })?;
    let shared = Arc::new(Shared {
        handler,
        drained: Notify::new(),
    });
    // One inbox and one dispatcher per worker thread: host threads spread their requests over
    // them, so no single task hands out every request of a busy host.
    let mut inboxes = Vec::with_capacity(workers);
    let mut dispatchers = Vec::with_capacity(workers);
    let mut lanes = Vec::with_capacity(workers);
    for _ in 0..workers {
        let (host_end, plugin_end) = std::os::unix::net::UnixStream::pair()
            .and_then(|(host_end, plugin_end)| {
                host_end.set_nonblocking(true)?;
                plugin_end.set_nonblocking(true)?;
                Ok((host_end, plugin_end))
            })
            .map_err(|error| format!("cannot create the plugin wake-up socket: {error}"))?;
        let inbox = Arc::new(Inbox {
            jobs: SegQueue::new(),
            closed: AtomicBool::new(false),
            sleeping: AtomicBool::new(false),
            wake: host_end,
        });
        let _entered = runtime.enter();
        let wake = tokio::net::UnixStream::from_std(plugin_end)
            .map_err(|error| format!("cannot register the plugin wake-up socket: {error}"))?;
        let lane = Arc::new(CachePadded::new(Lane {
            shared: Arc::clone(&shared),
            in_flight: AtomicUsize::new(0),
        }));
        dispatchers.push(runtime.spawn(dispatch_loop(Arc::clone(&inbox), Arc::clone(&lane), wake)));
        lanes.push(lane);
        inboxes.push(inbox);
    }
    let instance = Instance {
        inboxes,
        turns: Turns::new(),
        state: Mutex::new(Some(Running {
            runtime,
            dispatchers,
            shared,
            lanes,
            drain_timeout: options.drain_timeout,
            logs,
        })),
    };
    Ok(PluginInstance_TO::from_value(instance, TD_Opaque))
}

struct Job {
    request: PluginRequest,
    reply: ResponseSinkBox,
}

struct Inbox {
    /// Lock-free, so host threads never contend with the dispatcher for a mutex.
    jobs: SegQueue<Job>,
    closed: AtomicBool,
    /// Set by the dispatcher just before it waits for a wake byte.
    sleeping: AtomicBool,
    /// The host side of the wake-up socket pair (non-blocking).
    wake: std::os::unix::net::UnixStream,
}

impl Inbox {
    /// Wakes the dispatcher if it is asleep. A full socket buffer means a wake is pending.
    ///
    /// The fence orders the push just made before the look at `sleeping`, as the dispatcher's
    /// store of `sleeping` is ordered before its last look at the queue: one of the two sees the
    /// other. The look is a load, and only a dispatcher found asleep is swapped, so a busy
    /// dispatcher's line is read, not taken from it, by every host thread on every request.
    fn wake(&self) {
        std::sync::atomic::fence(Ordering::SeqCst);
        if self.sleeping.load(Ordering::SeqCst) && self.sleeping.swap(false, Ordering::SeqCst) {
            let _ = (&self.wake).write(&[1]);
        }
    }
}

/// How many times the dispatcher looks for a job for [`IDLE_SPIN`], finding nothing, before it
/// goes to sleep. Under load a new job usually arrives within these few microseconds, which
/// saves the host a wake-up write and this thread a sleep. The looks spin in place rather than
/// yield: a yield polls the I/O driver (a system call) each time, and 64 yields cost the plugin
/// route ~0.8 µs of CPU per request more than this on 2 cores (`benches/load.sh`, plugin column).
const IDLE_SPINS: u32 = 2;
const IDLE_SPIN: Duration = Duration::from_micros(4);

struct Shared<H> {
    handler: H,
    /// Notified when a lane's last job in flight ends.
    drained: Notify,
}

/// One dispatcher's share of the instance, with its own count of jobs in flight: counting a
/// request writes a line that only this dispatcher (and the worker that ends the job, usually
/// the same thread) writes, not one that every plugin thread writes (on 8 cores, lines written
/// by all threads cost more per request than the work on them). Padded to lines of its own.
struct Lane<H> {
    shared: Arc<Shared<H>>,
    in_flight: AtomicUsize,
}

/// Jobs in flight on all lanes.
fn in_flight<H>(lanes: &[Arc<CachePadded<Lane<H>>>]) -> usize {
    lanes
        .iter()
        .map(|lane| lane.in_flight.load(Ordering::SeqCst))
        .sum()
}

struct Running<H> {
    runtime: tokio::runtime::Runtime,
    dispatchers: Vec<tokio::task::JoinHandle<()>>,
    shared: Arc<Shared<H>>,
    lanes: Vec<Arc<CachePadded<Lane<H>>>>,
    drain_timeout: Duration,
    logs: tracing::Dispatch,
}

struct Instance<H> {
    inboxes: Vec<Arc<Inbox>>,
    /// Which inbox the next request goes to: each host thread goes round its own turns.
    turns: Turns,
    state: Mutex<Option<Running<H>>>,
}

/// Round-robin counters, one per stripe, each on lines of its own. A host thread counts on the
/// stripe its stack lies in (usually one of its own), so threads seldom take one counter's line
/// from each other (on 8 cores, one shared counter was a line written by every host worker on
/// every request) and no thread-local is needed on host threads.
struct Turns {
    stripes: [CachePadded<AtomicUsize>; TURN_STRIPES],
}

const TURN_STRIPES: usize = 16;

impl Turns {
    fn new() -> Turns {
        Turns {
            stripes: std::array::from_fn(|_| CachePadded::new(AtomicUsize::new(0))),
        }
    }

    /// The next of `count` inboxes for the calling thread.
    fn next(&self, count: usize) -> usize {
        let here = 0u8;
        // Threads' stacks are megabytes apart: the megabyte a local lies in names the thread.
        // Mixed, so that stacks a fixed distance apart (2 MiB each, as a runtime makes them)
        // spread over all stripes rather than every other one.
        let megabyte = (std::ptr::addr_of!(here) as usize >> 20) as u64;
        let stripe = (megabyte.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) as usize % TURN_STRIPES;
        let turn = self.stripes[stripe].fetch_add(1, Ordering::Relaxed);
        turn.wrapping_add(stripe) % count
    }
}

async fn dispatch_loop<H: Handler>(
    inbox: Arc<Inbox>,
    lane: Arc<CachePadded<Lane<H>>>,
    wake: tokio::net::UnixStream,
) {
    let mut scratch = [0u8; 64];
    let mut idle_spins = 0;
    loop {
        let mut started = false;
        while let Some(job) = inbox.jobs.pop() {
            run_job(job, &lane).await;
            started = true;
        }
        if started {
            idle_spins = 0;
            // Let the jobs just started run on this worker before looking for more.
            tokio::task::yield_now().await;
            continue;
        }
        if idle_spins < IDLE_SPINS {
            idle_spins += 1;
            // Look again for a few microseconds without giving the worker up: a yield polls
            // the runtime's I/O driver, a system call each time.
            let until = std::time::Instant::now() + IDLE_SPIN;
            while inbox.jobs.is_empty() && std::time::Instant::now() < until {
                for _ in 0..32 {
                    std::hint::spin_loop();
                }
            }
            if inbox.jobs.is_empty() {
                tokio::task::yield_now().await;
            }
            continue;
        }
        if inbox.closed.load(Ordering::SeqCst) {
            return;
        }
        idle_spins = 0;
        inbox.sleeping.store(true, Ordering::SeqCst);
        // Pairs with the fence in `Inbox::wake`.
        std::sync::atomic::fence(Ordering::SeqCst);
        // A job pushed before `sleeping` was set did not wake us: look once more.
        if !inbox.jobs.is_empty() || inbox.closed.load(Ordering::SeqCst) {
            inbox.sleeping.store(false, Ordering::SeqCst);
            continue;
        }
        if wake.readable().await.is_err() {
            return;
        }
        loop {
            match wake.try_read(&mut scratch) {
                Ok(0) => return,
                Ok(_) => continue,
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(_) => return,
            }
        }
    }
}

/// Starts one job. It is polled once right here: most answers are ready at once (a cached
/// view, a refusal), and those cost no task of their own. A job that has to wait becomes a
/// task, so the dispatcher moves on to the next one.
async fn run_job<H: Handler>(job: Job, lane: &Arc<CachePadded<Lane<H>>>) {
    let mut job = Box::pin(job_future(job, lane));
    if futures_util::poll!(&mut job).is_pending() {
        tokio::spawn(job);
    }
}

fn job_future<H: Handler>(
    job: Job,
    lane: &Arc<CachePadded<Lane<H>>>,
) -> impl Future<Output = ()> + Send + 'static {
    lane.in_flight.fetch_add(1, Ordering::SeqCst);
    let lane = Arc::clone(lane);
    async move {
        let Job { request, reply } = job;
        // Kept for the log lines of a streamed answer.
        let request_id = String::from(request.request_id.as_str());
        // The import is plugin code too (a handler's own type may bring its own): a panic in
        // it answers 500 like one in the handler, and never ends the dispatcher.
        let handler = &lane.shared.handler;
        let answer =
            AssertUnwindSafe(async move { handler.handle(H::Request::import(request)).await })
                .catch_unwind()
                .await;
        let response = match answer {
            Ok(response) => response,
            Err(panic) => {
                tracing::error!(
                    panic = %panic_message(&*panic),
                    "request handler panicked; answering 500"
                );
                Response::error(
                    500,
                    "plugin_panic",
                    "the plugin failed while handling this request; it keeps serving others",
                )
            }
        };
        // A streamed answer runs plugin code too (its stream), possibly on the dispatcher's
        // first poll: a panic there ends this answer, never the dispatcher.
        let delivered = AssertUnwindSafe(deliver(reply, response, &request_id))
            .catch_unwind()
            .await;
        if let Err(panic) = delivered {
            tracing::error!(
                panic = %panic_message(&*panic),
                request_id,
                "a streamed answer panicked; it ended there"
            );
        }
        if lane.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            lane.shared.drained.notify_waiters();
        }
    }
}

impl<H: Handler> PluginInstance for Instance<H> {
    fn handle(&self, request: PluginRequest, reply: ResponseSinkBox) {
        // Runs on a host thread: no runtime, no tracing; a queue push and at most one write(2).
        let rejected = std::panic::catch_unwind(AssertUnwindSafe(|| {
            let inbox = &self.inboxes[self.turns.next(self.inboxes.len())];
            if inbox.closed.load(Ordering::SeqCst) {
                return Some((request, reply));
            }
            inbox.jobs.push(Job { request, reply });
            inbox.wake();
            None
        }));
        if let Ok(Some((_, reply))) = rejected {
            reply.send(stopping());
        }
    }

    fn shutdown(&self) {
        let _ = std::panic::catch_unwind(AssertUnwindSafe(|| {
            let running = self
                .state
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .take();
            let Some(running) = running else { return };
            for inbox in &self.inboxes {
                inbox.closed.store(true, Ordering::SeqCst);
                inbox.sleeping.store(true, Ordering::SeqCst);
                inbox.wake();
            }
            let shared = Arc::clone(&running.shared);
            let lanes = &running.lanes;
            let _logs = tracing::dispatcher::set_default(&running.logs);
            let dispatchers = running.dispatchers;
            running.runtime.block_on(async {
                for dispatcher in dispatchers {
                    let _ = dispatcher.await;
                }
                // The host sends nothing once shutdown starts; answer anything that raced it.
                for inbox in &self.inboxes {
                    while let Some(job) = inbox.jobs.pop() {
                        job.reply.send(stopping());
                    }
                }
                let drained = async {
                    loop {
                        let notified = shared.drained.notified();
                        if in_flight(lanes) == 0 {
                            break;
                        }
                        notified.await;
                    }
                };
                if tokio::time::timeout(running.drain_timeout, drained)
                    .await
                    .is_err()
                {
                    tracing::warn!(
                        in_flight = in_flight(lanes),
                        "requests still running at shutdown are cancelled"
                    );
                }
                shared.handler.shutdown().await;
            });
            drop(shared);
            // Dropping the runtime cancels what is left and joins all of its threads.
            drop(running.runtime);
            drop(running.lanes);
            drop(running.shared);
        }));
    }
}

/// How long a streamed answer waits before pushing again into a full host buffer.
const STREAM_RETRY: Duration = Duration::from_millis(5);
/// How often a streamed answer that has nothing to send asks whether its client is still there,
/// so a stream whose client left stops (and stops polling what it streams) within this time.
const CLIENT_PROBE: Duration = Duration::from_secs(1);

/// Sends an answer; a streamed one is pushed chunk by chunk until the stream ends or the client
/// goes away.
async fn deliver(reply: ResponseSinkBox, mut response: Response, request_id: &str) {
    let Some(mut chunks) = response.stream.take() else {
        reply.send(export_response(response));
        return;
    };
    let body = reply.stream(export_response(response));
    use futures_util::StreamExt as _;
    let mut probe = tokio::time::interval(CLIENT_PROBE);
    probe.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    probe.reset();
    'chunks: loop {
        let chunk = tokio::select! {
            chunk = chunks.next() => match chunk {
                Some(chunk) => chunk,
                None => break,
            },
            _ = probe.tick() => {
                // An empty push queues nothing; it only reports whether the client is gone.
                if body.push(RSlice::from_slice(&[])) == PushOutcome::Closed {
                    tracing::info!(request_id, "the client of a streamed answer left; the stream stopped");
                    break;
                }
                continue;
            }
        };
        // The host takes chunks of a bounded size: a larger item goes in pieces.
        for piece in chunk.chunks(plugin_api::MAX_STREAM_CHUNK_BYTES) {
            loop {
                match body.push(RSlice::from_slice(piece)) {
                    PushOutcome::Accepted => break,
                    PushOutcome::Full => tokio::time::sleep(STREAM_RETRY).await,
                    PushOutcome::Closed => {
                        tracing::info!(
                            request_id,
                            "the client of a streamed answer left; the stream stopped"
                        );
                        break 'chunks;
                    }
                }
            }
        }
    }
}

/// The answer to a request that reaches an instance which is shutting down.
fn stopping() -> PluginResponse {
    PluginResponse::error(
        503,
        "plugin_stopping",
        "the plugin instance is shutting down; retry",
    )
}

fn export_response(response: Response) -> PluginResponse {
    PluginResponse {
        status: response.status,
        headers: response
            .headers
            .into_iter()
            .map(|(key, value)| Tuple2(RString::from(key), RString::from(value)))
            .collect::<RVec<_>>(),
        body: RVec::from(response.body),
    }
}

/// The text of a panic payload.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(text) = payload.downcast_ref::<&str>() {
        (*text).to_owned()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "non-text panic payload".to_owned()
    }
}
