//! Plugin-side runtime shared by every `powerautomation` plugin.
//!
//! It turns an ordinary async [`Handler`] into a [`PluginInstance`] that keeps the rules of the
//! ABI (see `plugin-api`):
//! - [`PluginInstance::handle`] runs on host threads, so it only pushes the job into one of the
//!   lock-free inboxes (round robin per host thread, one inbox per worker thread) and, when that
//!   inbox's dispatcher sleeps, writes one byte to a socket pair: atomics and a plain syscall, no
//!   runtime and no plugin thread-locals on the host's thread;
//! - each dispatcher task on the instance's own tokio runtime wakes on that byte and spawns the
//!   jobs (under load it never sleeps, so requests cost no wake-up syscall at all); with one per
//!   worker, a busy host's requests are handed out by all workers at once, not by one task;
//! - each job imports the host's request as the handler's [`Handler::Request`] type ([`Import`]),
//!   and every handler runs under `catch_unwind`; a panic becomes a 500 JSON answer;
//! - [`PluginInstance::shutdown`] drains accepted work, then drops the runtime, which joins its
//!   threads, so no plugin code is left running when the host unloads the library.

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
    std_types::{ROption, RResult, RSlice, RStr, RString, RVec, Tuple2},
};
use crossbeam_queue::SegQueue;
use crossbeam_utils::CachePadded;
use futures_util::FutureExt;
pub use plugin_api::Role;
use plugin_api::{
    HostServicesBox, LogLevel, PluginInstance, PluginInstanceBox, PluginInstance_TO, PluginRequest,
    PluginResponse, PushOutcome, ResponseSinkBox, StoreCondition, StoreWrite,
};
use tokio::sync::Notify;

pub mod heap;
pub mod log_forward;

/// A request as plugin code sees it: plain std types, owned by this copy.
#[derive(Debug, Clone)]
pub struct Request {
    pub request_id: String,
    pub method: String,
    pub path: String,
    pub query: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub principal: Option<Caller>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub name: String,
    pub role: Role,
}

impl Request {
    /// The first value of a header, matched case-insensitively.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    /// The first value of a query parameter (no percent-decoding beyond `+` and `%XX`).
    pub fn query_param(&self, name: &str) -> Option<String> {
        query_param(&self.query, name)
    }

    /// The caller's role, or `None` for an anonymous request.
    pub fn role(&self) -> Option<Role> {
        self.principal.as_ref().map(|caller| caller.role)
    }
}

/// The first value of parameter `name` in a query string (`a=1&b=2`), decoded (`+` and `%XX`).
pub fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(key) == name).then(|| percent_decode(value))
    })
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(byte) => {
                        out.push(byte);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            byte => out.push(byte),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The rest of a streamed body, produced on the plugin's runtime.
pub type BodyStream = std::pin::Pin<Box<dyn futures_util::Stream<Item = Vec<u8>> + Send>>;

/// An answer as plugin code builds it.
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// When set, `body` goes out first and then every chunk of this stream, as it comes.
    pub stream: Option<BodyStream>,
}

impl std::fmt::Debug for Response {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Response")
            .field("status", &self.status)
            .field("headers", &self.headers)
            .field("body_len", &self.body.len())
            .field("streamed", &self.stream.is_some())
            .finish()
    }
}

impl Response {
    pub fn json(status: u16, value: &serde_json::Value) -> Response {
        Response {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: serde_json::to_vec(value).unwrap_or_default(),
            stream: None,
        }
    }

    /// A streamed answer: the client gets each chunk as `chunks` yields it.
    pub fn streamed(status: u16, content_type: &str, chunks: BodyStream) -> Response {
        Response {
            status,
            headers: vec![
                ("content-type".into(), content_type.into()),
                ("cache-control".into(), "no-cache".into()),
            ],
            body: Vec::new(),
            stream: Some(chunks),
        }
    }

    /// The host's error shape: `{"error": code, "message": message}`.
    pub fn error(status: u16, code: &str, message: impl Into<String>) -> Response {
        Response::json(
            status,
            &serde_json::json!({ "error": code, "message": message.into() }),
        )
    }

    pub fn with_header(mut self, name: &str, value: impl Into<String>) -> Response {
        self.headers.push((name.to_owned(), value.into()));
        self
    }

    /// 403 unless the caller holds at least `role`. The host authenticates; plugins decide
    /// which role each of their routes needs.
    pub fn require(request: &Request, role: Role) -> Result<(), Response> {
        match Refusal::of(request.role(), role) {
            Some(refusal) => Err(Response::error(
                refusal.status,
                refusal.code,
                refusal.message,
            )),
            None => Ok(()),
        }
    }
}

/// Why a caller may not call a route: 401 without a key, 403 below the route's role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
}

impl Refusal {
    /// `None` when a caller with role `caller` (`None`: no key) may call a route needing `needs`.
    pub fn of(caller: Option<Role>, needs: Role) -> Option<Refusal> {
        match caller {
            None => Some(Refusal {
                status: 401,
                code: "unauthorized",
                message: "send an API key in X-API-Key or Authorization: Bearer".into(),
            }),
            Some(has) if has < needs => Some(Refusal {
                status: 403,
                code: "forbidden",
                message: format!(
                    "this endpoint needs the {} role; your key has {}",
                    needs.as_str(),
                    has.as_str()
                ),
            }),
            Some(_) => None,
        }
    }
}

/// The host's services, wrapped in std types. Cheap to clone. The calls may block on SQLite:
/// call them from `spawn_blocking` or accept a short stall of one worker.
#[derive(Clone)]
pub struct Host {
    services: Arc<HostServicesBox>,
}

impl Host {
    /// Wraps the services the host lent; plugins get this from [`Startup`].
    pub fn new(services: HostServicesBox) -> Host {
        Host {
            services: Arc::new(services),
        }
    }

    pub fn log(&self, level: LogLevel, target: &str, message: &str) {
        self.services
            .log(level, RStr::from_str(target), RStr::from_str(message));
    }

    pub fn publish(&self, kind: &str, data: &serde_json::Value) -> u64 {
        let text = data.to_string();
        self.services
            .publish(RStr::from_str(kind), RStr::from_str(&text))
    }

    /// Publishes `data` to developers and admins and `user_data` to users (`None`: users do not
    /// get this event).
    pub fn publish_by_role(
        &self,
        kind: &str,
        data: &serde_json::Value,
        user_data: Option<&serde_json::Value>,
    ) -> u64 {
        let text = data.to_string();
        let user_text = user_data.map(serde_json::Value::to_string);
        let user = match &user_text {
            Some(text) => ROption::RSome(RStr::from_str(text)),
            None => ROption::RNone,
        };
        self.services
            .publish_by_role(RStr::from_str(kind), RStr::from_str(&text), user)
    }

    /// Applies `ops` atomically: all of them when every condition holds, else none and the
    /// first conflict.
    pub fn store_apply(&self, ops: &[StoreOp]) -> Result<Option<Conflict>, String> {
        let exported: RVec<plugin_api::StoreOp> = ops.iter().map(StoreOp::export).collect();
        match self.services.store_apply(exported.as_rslice()) {
            RResult::ROk(conflict) => Ok(conflict.into_option().map(|conflict| Conflict {
                index: conflict.index as usize,
                current: conflict.current.into_option().map(String::from),
            })),
            RResult::RErr(error) => Err(error.into()),
        }
    }

    pub fn store_put(&self, collection: &str, key: &str, value: &str) -> Result<(), String> {
        self.services
            .store_put(collection.into(), key.into(), value.into())
            .into_result()
            .map_err(String::from)
    }

    pub fn store_get(&self, collection: &str, key: &str) -> Result<Option<String>, String> {
        match self.services.store_get(collection.into(), key.into()) {
            RResult::ROk(value) => Ok(value.into_option().map(String::from)),
            RResult::RErr(error) => Err(error.into()),
        }
    }

    pub fn store_delete(&self, collection: &str, key: &str) -> Result<bool, String> {
        self.services
            .store_delete(collection.into(), key.into())
            .into_result()
            .map_err(String::from)
    }

    pub fn store_list(
        &self,
        collection: &str,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<(String, String)>, String> {
        let after = match after {
            Some(key) => ROption::RSome(RStr::from_str(key)),
            None => ROption::RNone,
        };
        match self
            .services
            .store_list(RStr::from_str(collection), after, limit)
        {
            RResult::ROk(rows) => Ok(rows
                .into_iter()
                .map(|row| (String::from(row.key), String::from(row.value)))
                .collect()),
            RResult::RErr(error) => Err(error.into()),
        }
    }
}

/// What must hold for one [`StoreOp`] of an atomic batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Condition {
    Always,
    /// The key does not exist.
    Absent,
    /// The key holds exactly this value.
    Equals(String),
}

/// What one [`StoreOp`] does once every condition of its batch held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    Put(String),
    Delete,
    /// Nothing: the operation only checks its condition.
    Keep,
    /// Adds to the key's integer value (absent: 0).
    Add(i64),
}

/// One operation of an atomic batch ([`Host::store_apply`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreOp {
    pub collection: String,
    pub key: String,
    pub condition: Condition,
    pub write: Write,
}

impl StoreOp {
    pub fn put(collection: &str, key: &str, value: String) -> StoreOp {
        StoreOp {
            collection: collection.to_owned(),
            key: key.to_owned(),
            condition: Condition::Always,
            write: Write::Put(value),
        }
    }

    /// Writes only if the key does not exist yet.
    pub fn insert(collection: &str, key: &str, value: String) -> StoreOp {
        StoreOp::put(collection, key, value).when(Condition::Absent)
    }

    pub fn delete(collection: &str, key: &str) -> StoreOp {
        StoreOp {
            collection: collection.to_owned(),
            key: key.to_owned(),
            condition: Condition::Always,
            write: Write::Delete,
        }
    }

    /// Adds `amount` to the key's integer value (absent: 0).
    pub fn add(collection: &str, key: &str, amount: i64) -> StoreOp {
        StoreOp {
            collection: collection.to_owned(),
            key: key.to_owned(),
            condition: Condition::Always,
            write: Write::Add(amount),
        }
    }

    /// Only checks that `condition` holds for the key.
    pub fn check(collection: &str, key: &str, condition: Condition) -> StoreOp {
        StoreOp {
            collection: collection.to_owned(),
            key: key.to_owned(),
            condition,
            write: Write::Keep,
        }
    }

    pub fn when(mut self, condition: Condition) -> StoreOp {
        self.condition = condition;
        self
    }

    fn export(&self) -> plugin_api::StoreOp {
        let (condition, expected) = match &self.condition {
            Condition::Always => (StoreCondition::Always, RString::new()),
            Condition::Absent => (StoreCondition::Absent, RString::new()),
            Condition::Equals(value) => (StoreCondition::Equals, RString::from(value.as_str())),
        };
        let (write, value) = match &self.write {
            Write::Put(value) => (StoreWrite::Put, RString::from(value.as_str())),
            Write::Delete => (StoreWrite::Delete, RString::new()),
            Write::Keep => (StoreWrite::Keep, RString::new()),
            Write::Add(amount) => (StoreWrite::Add, RString::from(amount.to_string())),
        };
        plugin_api::StoreOp {
            collection: RString::from(self.collection.as_str()),
            key: RString::from(self.key.as_str()),
            condition,
            expected,
            write,
            value,
        }
    }
}

/// Why a batch was not applied: the first operation whose condition failed, and what its key
/// holds now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    pub index: usize,
    pub current: Option<String>,
}

/// A request as a handler takes it, made from the host's with one copy of each field (the
/// request id is also kept apart, for the log lines of a streamed answer).
/// [`Request`] is the plain one. A handler built on a router imports into a type of its own
/// (an `http::Request`) straight from the host's, with no [`Request`] in between: on the
/// plugin route a copy of every field costs more than the route's own work.
pub trait Import: Sized + Send + 'static {
    fn import(request: PluginRequest) -> Self;
}

impl Import for Request {
    fn import(request: PluginRequest) -> Request {
        Request {
            request_id: request.request_id.into(),
            method: request.method.into(),
            path: request.path.into(),
            query: request.query.into(),
            headers: request
                .headers
                .into_iter()
                .map(|Tuple2(key, value)| (String::from(key), String::from(value)))
                .collect(),
            body: request.body.into(),
            principal: request.principal.into_option().map(|principal| Caller {
                name: principal.name.into(),
                role: principal.role,
            }),
        }
    }
}

/// What a plugin implements.
pub trait Handler: Send + Sync + 'static {
    /// What requests are imported as: [`Request`], or a type of the handler's own.
    type Request: Import;

    fn handle(&self, request: Self::Request) -> impl Future<Output = Response> + Send;

    /// Called once when the instance stops, after in-flight requests finished: finish or hand
    /// over long-running work here.
    fn shutdown(&self) -> impl Future<Output = ()> + Send {
        async {}
    }
}

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

/// Exports a plugin's root module. `start` is a `fn(HostServicesBox, RString) ->
/// RResult<PluginInstanceBox, RString>`, usually a call to [`start_instance`].
///
/// It also makes [`heap::CopyHeap`] the library's global allocator and exports the range it
/// occupies, so the host can free everything the copy allocated once the copy is closed. Use
/// it once, in the `cdylib` crate.
#[macro_export]
macro_rules! export_plugin {
    (name: $name:expr, version: $version:expr, description: $description:expr, start: $start:path $(,)?) => {
        #[global_allocator]
        static __POWERAUTOMATION_COPY_HEAP: $crate::heap::CopyHeap = $crate::heap::CopyHeap;

        /// The copy's heap range, for the host to unmap after closing the library.
        #[no_mangle]
        pub extern "C" fn powerautomation_plugin_heap() -> ::plugin_api::PluginHeap {
            $crate::heap::reserved()
        }

        #[::abi_stable::export_root_module]
        pub fn powerautomation_plugin_root() -> ::plugin_api::PluginModRef {
            extern "C" fn __plugin_metadata() -> ::plugin_api::PluginMetadata {
                ::plugin_api::PluginMetadata {
                    name: $name.into(),
                    version: $version.into(),
                    description: $description.into(),
                }
            }
            extern "C" fn __plugin_start(
                host: ::plugin_api::HostServicesBox,
                settings: ::abi_stable::std_types::RString,
            ) -> ::abi_stable::std_types::RResult<
                ::plugin_api::PluginInstanceBox,
                ::abi_stable::std_types::RString,
            > {
                $start(host, settings)
            }
            const MODULE: &::abi_stable::prefix_type::WithMetadata<::plugin_api::PluginMod> =
                &::abi_stable::prefix_type::WithMetadata::new(::plugin_api::PluginMod {
                    metadata: __plugin_metadata,
                    start: __plugin_start,
                });
            ::plugin_api::PluginModRef(MODULE.static_as_prefix())
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(query: &str) -> Request {
        Request {
            request_id: String::new(),
            method: "GET".into(),
            path: "/".into(),
            query: query.into(),
            headers: vec![("X-Thing".into(), "1".into())],
            body: Vec::new(),
            principal: None,
        }
    }

    #[test]
    fn query_params_are_decoded() {
        let request = request("id=a%20b&x=1+2&flag");
        assert_eq!(request.query_param("id").as_deref(), Some("a b"));
        assert_eq!(request.query_param("x").as_deref(), Some("1 2"));
        assert_eq!(request.query_param("flag").as_deref(), Some(""));
        assert_eq!(request.query_param("nope"), None);
        assert_eq!(request.header("x-thing"), Some("1"));
    }

    #[test]
    fn truncated_escape_is_kept_literally() {
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%4"), "%4");
        assert_eq!(percent_decode("%zz"), "%zz");
    }

    #[test]
    fn role_gate() {
        let mut request = request("");
        assert_eq!(
            Response::require(&request, Role::User).map_err(|r| r.status),
            Err(401)
        );
        request.principal = Some(Caller {
            name: "u".into(),
            role: Role::User,
        });
        assert_eq!(
            Response::require(&request, Role::Admin).map_err(|r| r.status),
            Err(403)
        );
        assert!(Response::require(&request, Role::User).is_ok());
    }
}
