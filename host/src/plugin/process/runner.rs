//! The child's side: `powerautomation plugin-runner`, started by the host for a plugin with
//! `isolation = "process"`. It loads the plugin through the same loader (private copy, pin,
//! `abi_stable` checks, start on a short-lived thread) and gives it host services that are calls
//! over the socket, so the plugin's code cannot tell which mode it runs in.
//!
//! The socket is the child's standard input when it starts; the runner keeps a duplicate and
//! points standard input at `/dev/null`, so a command the plugin starts cannot read the
//! protocol. The child asks the kernel to kill it when the host dies, and exits when the socket
//! closes: it never outlives the host.
//!
//! Threads: one reads the socket (requests are handed to the plugin, which only enqueues them;
//! answers to service calls wake the caller); whichever thread has something to send writes it
//! (see [`Outbox`]); the main thread loads the plugin and, at `Shutdown`, retires it.

use std::{
    collections::HashMap,
    io::{BufReader, Write as _},
    os::{fd::AsFd as _, unix::net::UnixStream},
    process::ExitCode,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc, Arc, Mutex,
    },
    time::Duration,
};

use abi_stable::{
    sabi_trait::TD_Opaque,
    std_types::{ROption, RResult, RSlice, RStr, RString, RVec},
};
use arc_swap::ArcSwapOption;
use plugin_api::{
    BodySender, BodySenderBox, BodySender_TO, HostServices, HostServices_TO, LogLevel,
    PluginRequest, PluginResponse, PushOutcome, ResponseSink, ResponseSink_TO, Role, StoreConflict,
    StoreEntry, StoreOp,
};

use super::frame::{
    self, ReadyInfo, RequestFrame, ResponseFrame, ServiceOp, ServiceResult, StartChild,
    StoreOpFrame, ToChild, ToHost,
};
use crate::plugin::{
    call::{export_request, HostRequest},
    loader::{self, LoadFailure, LoadRequest, LoadedPlugin, Retirements},
};

/// Exit code when the runner could not start (no socket, no start message, a load failure).
const EXIT_START: u8 = 3;

/// Runs the child until the host says stop or goes away.
pub fn run(host_pid: u32) -> ExitCode {
    let socket = match std::io::stdin().as_fd().try_clone_to_owned() {
        Ok(fd) => UnixStream::from(fd),
        Err(error) => return fail(&format!("no socket on standard input: {error}")),
    };
    // Nothing the plugin starts may read (or close) the protocol's socket.
    if let Ok(null) = std::fs::File::open("/dev/null") {
        let _ = nix::unistd::dup2_stdin(&null);
    }
    // A session of its own: a terminal's signals go to the host, which stops the child.
    let _ = nix::unistd::setsid();
    // Die with the host, and do not start at all if it is already gone. (The parent-death
    // signal follows the host thread that started the child: the host starts children from
    // its long-lived runtime threads, never from a short-lived one.)
    let _ = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL);
    if nix::unistd::getppid().as_raw() as u32 != host_pid {
        return fail("the host that started this runner is gone");
    }
    let reader_socket = match socket.try_clone() {
        Ok(socket) => socket,
        Err(error) => return fail(&format!("cannot duplicate the socket: {error}")),
    };
    let mut reader = BufReader::with_capacity(64 * 1024, reader_socket);
    let mut body = Vec::new();
    let start = match frame::read_blocking(&mut reader, &mut body)
        .and_then(|()| frame::decode::<ToChild>(&body))
    {
        Ok(ToChild::Start(start)) => start,
        Ok(other) => return fail(&format!("expected the start message, got {other:?}")),
        Err(error) => return fail(&format!("no start message: {error}")),
    };
    init_logging(&start);
    if let Some(limit) = start.memory_limit_mb {
        let bytes = limit.saturating_mul(1024 * 1024);
        // RLIMIT_DATA counts the memory the process can write (heap and private mappings),
        // not address space reserved and never touched, as RLIMIT_AS would.
        if let Err(error) =
            nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_DATA, bytes, bytes)
        {
            tracing::warn!(%error, limit_mb = limit, "cannot set the memory limit; the plugin runs without it");
        }
    }
    // Before any other thread: every thread and command started from here on inherits it.
    if let Some(shares) = start.cpu_shares {
        super::priority::lower(shares, host_pid);
    }
    if let Err(error) = loader::fatal::install_in_child() {
        tracing::warn!("{error}; a crash in plugin code will not be reported, and stop signals reach the plugin");
    }

    let link = Arc::new(Link {
        outbox: Outbox::new(socket),
        calls: Mutex::new(HashMap::new()),
        next_call: AtomicU64::new(1),
        closed: AtomicBool::new(false),
    });
    let plugin: Arc<ArcSwapOption<LoadedPlugin>> = Arc::new(ArcSwapOption::empty());
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    let spawned = std::thread::Builder::new()
        .name("runner-read".into())
        .spawn({
            let link = Arc::clone(&link);
            let plugin = Arc::clone(&plugin);
            move || read_loop(reader, body, &link, &plugin, &stop_tx)
        });
    if let Err(error) = spawned {
        return fail(&format!("cannot start the reader thread: {error}"));
    }

    let retirements = Retirements::default();
    let request = LoadRequest {
        target: start.target.clone(),
        services: HostServices_TO::from_value(
            RemoteServices {
                link: Arc::clone(&link),
            },
            TD_Opaque,
        ),
    };
    match loader::load(request, retirements.clone()) {
        Ok(loaded) => {
            let info = &loaded.info;
            let ready = ToHost::Ready(ReadyInfo {
                name: info.name.clone(),
                version: info.version.clone(),
                description: info.description.clone(),
                abi: info.abi.clone(),
                sha256: info.sha256.clone(),
                source: info.source.display().to_string(),
            });
            // Serving first: the host routes requests here as soon as it reads `Ready`.
            plugin.store(Some(Arc::new(loaded)));
            link.send_or_report(&ready);
        }
        Err(error) => {
            let kind = match error.kind {
                LoadFailure::Missing => 0,
                LoadFailure::Incompatible => 1,
                LoadFailure::Failed => 2,
            };
            link.send_or_report(&ToHost::LoadFailed {
                kind,
                message: error.message,
            });
            return ExitCode::from(EXIT_START);
        }
    }

    // Until the host says stop (or goes away: the reader exits the process then).
    let _ = stop_rx.recv();
    // The last holder lets go: the copy shuts down (finishing its requests and runs) on a
    // retirement thread, which is waited for, however long the runs take; the host decides
    // how long it waits for this process.
    plugin.store(None);
    retirements.wait(Duration::from_secs(365 * 24 * 3600));
    link.send_or_report(&ToHost::Stopped);
    ExitCode::SUCCESS
}

fn fail(message: &str) -> ExitCode {
    eprintln!("powerautomation plugin-runner: {message}");
    ExitCode::from(EXIT_START)
}

fn init_logging(start: &StartChild) {
    let filter = tracing_subscriber::EnvFilter::try_new(&start.log_level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if start.log_json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Reads the host's messages until the socket closes; then the process exits, since its host
/// is gone.
fn read_loop(
    mut reader: BufReader<UnixStream>,
    mut body: Vec<u8>,
    link: &Arc<Link>,
    plugin: &ArcSwapOption<LoadedPlugin>,
    stop: &mpsc::Sender<()>,
) {
    loop {
        let message = frame::read_blocking(&mut reader, &mut body)
            .and_then(|()| frame::decode::<ToChild>(&body));
        match message {
            Ok(ToChild::Request(request)) => {
                let id = request.id;
                let sink = ResponseSink_TO::from_value(
                    RemoteSink {
                        link: Arc::clone(link),
                        id,
                        answered: AtomicBool::new(false),
                    },
                    TD_Opaque,
                );
                match plugin.load_full() {
                    Some(plugin) => plugin.handle(import_request(request), sink),
                    None => sink.send(PluginResponse::error(
                        503,
                        "plugin_stopping",
                        "the plugin instance is shutting down; retry",
                    )),
                }
            }
            Ok(ToChild::Reply { call, result }) => link.complete(call, result),
            Ok(ToChild::Shutdown) => {
                let _ = stop.send(());
            }
            Ok(ToChild::Start(_)) => {
                tracing::warn!("a second start message was ignored");
            }
            Err(error) => {
                link.close();
                if !matches!(error, frame::FrameError::Closed) {
                    eprintln!("powerautomation plugin-runner: the host connection failed: {error}");
                }
                // The host is gone: nobody can be answered, nothing can be stored.
                std::process::exit(i32::from(EXIT_START));
            }
        }
    }
}

fn import_request(request: RequestFrame) -> PluginRequest {
    export_request(HostRequest {
        request_id: request.request_id,
        method: request.method,
        path: request.path,
        query: request.query,
        headers: request.headers,
        body: request.body.into(),
        principal: request
            .principal
            .map(|(name, role)| (name, role_from_u8(role))),
    })
}

/// The role a request frame carries; an unknown value is the least privileged role.
fn role_from_u8(value: u8) -> Role {
    match value {
        2 => Role::Admin,
        1 => Role::Developer,
        _ => Role::User,
    }
}

/// The socket's writing end, shared by every thread that sends. A sender appends its message to
/// the queue and, unless another thread is writing already, writes the queue out itself: under
/// load one write carries many messages, and no message waits for a dedicated thread to wake.
struct Outbox {
    socket: UnixStream,
    queue: Mutex<Vec<u8>>,
    /// The writer's buffer, swapped with the queue: both keep their room between writes.
    spare: Mutex<Vec<u8>>,
    writing: AtomicBool,
}

/// Room each of the outbox's two buffers keeps.
const OUTBOX_BUFFER: usize = 64 * 1024;

impl Outbox {
    fn new(socket: UnixStream) -> Outbox {
        Outbox {
            socket,
            queue: Mutex::new(Vec::with_capacity(OUTBOX_BUFFER)),
            spare: Mutex::new(Vec::with_capacity(OUTBOX_BUFFER)),
            writing: AtomicBool::new(false),
        }
    }

    fn send(&self, frame: &[u8]) {
        lock(&self.queue).extend_from_slice(frame);
        loop {
            if self
                .writing
                .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
            {
                // The writer checks the queue again after it is done: these bytes go with it.
                return;
            }
            // Only the thread that set `writing` gets here: the spare is this thread's alone.
            let mut batch = lock(&self.spare);
            std::mem::swap(&mut *batch, &mut *lock(&self.queue));
            if !batch.is_empty() {
                // A failed write means the host is gone; the reader sees the socket close and
                // ends the process.
                let _ = (&self.socket).write_all(&batch);
            }
            batch.clear();
            if batch.capacity() > 4 * OUTBOX_BUFFER {
                // Not the room of an outsized answer, for good.
                *batch = Vec::with_capacity(OUTBOX_BUFFER);
            }
            drop(batch);
            self.writing.store(false, Ordering::Release);
            if lock(&self.queue).is_empty() {
                return;
            }
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The connection to the host: sending, and service calls waiting for their answers.
struct Link {
    outbox: Outbox,
    calls: Mutex<HashMap<u64, mpsc::SyncSender<ServiceResult>>>,
    next_call: AtomicU64,
    closed: AtomicBool,
}

impl Link {
    /// Sends one message; an error when it cannot be encoded (over the size limit).
    fn send(&self, message: &ToHost) -> Result<(), frame::FrameError> {
        let bytes = frame::encode(message)?;
        self.outbox.send(&bytes);
        Ok(())
    }

    /// Sends a message whose failure nobody waits on, saying so on standard error.
    fn send_or_report(&self, message: &ToHost) {
        if let Err(error) = self.send(message) {
            eprintln!("powerautomation plugin-runner: a message was not sent: {error}");
        }
    }

    /// Calls a host service and waits for its answer.
    fn call(&self, op: ServiceOp) -> ServiceResult {
        let call = self.next_call.fetch_add(1, Ordering::Relaxed);
        let (answer_tx, answer_rx) = mpsc::sync_channel(1);
        lock(&self.calls).insert(call, answer_tx);
        if self.closed.load(Ordering::Acquire) {
            lock(&self.calls).remove(&call);
            return closed();
        }
        if let Err(error) = self.send(&ToHost::Call { call, op }) {
            lock(&self.calls).remove(&call);
            return ServiceResult::Failed(format!("the call cannot be sent to the host: {error}"));
        }
        answer_rx.recv().unwrap_or_else(|_| closed())
    }

    fn complete(&self, call: u64, result: ServiceResult) {
        if let Some(waiter) = lock(&self.calls).remove(&call) {
            let _ = waiter.send(result);
        }
    }

    /// The host is gone: every waiting call fails.
    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        lock(&self.calls).clear();
    }
}

fn closed() -> ServiceResult {
    ServiceResult::Failed("the connection to the host is closed".into())
}

/// Where the plugin answers one request: messages to the host.
struct RemoteSink {
    link: Arc<Link>,
    id: u64,
    answered: AtomicBool,
}

fn response_frame(id: u64, response: &PluginResponse) -> ResponseFrame {
    ResponseFrame {
        id,
        status: response.status,
        headers: response
            .headers
            .iter()
            .map(|pair| (pair.0.as_str().to_owned(), pair.1.as_str().to_owned()))
            .collect(),
        body: response.body.as_slice().to_vec(),
    }
}

impl ResponseSink for RemoteSink {
    fn send(&self, response: PluginResponse) {
        if self.answered.swap(true, Ordering::AcqRel) {
            return;
        }
        let sent = self
            .link
            .send(&ToHost::Response(response_frame(self.id, &response)));
        if let Err(error) = sent {
            self.link
                .send_or_report(&ToHost::Response(too_large(self.id, &error)));
        }
    }

    fn stream(&self, head: PluginResponse) -> BodySenderBox {
        let mut first = !self.answered.swap(true, Ordering::AcqRel);
        if first {
            let sent = self
                .link
                .send(&ToHost::StreamHead(response_frame(self.id, &head)));
            if let Err(error) = sent {
                self.link
                    .send_or_report(&ToHost::Response(too_large(self.id, &error)));
                first = false;
            }
        }
        BodySender_TO::from_value(
            RemoteBody {
                link: Arc::clone(&self.link),
                id: self.id,
                open: first,
            },
            TD_Opaque,
        )
    }
}

impl Drop for RemoteSink {
    fn drop(&mut self) {
        if !self.answered.load(Ordering::Acquire) {
            self.link
                .send_or_report(&ToHost::Unanswered { id: self.id });
        }
    }
}

/// The answer sent instead of one too large to cross to the host.
fn too_large(id: u64, error: &frame::FrameError) -> ResponseFrame {
    response_frame(
        id,
        &PluginResponse::error(
            500,
            "answer_too_large",
            &format!("the plugin's answer cannot be passed to the host: {error}"),
        ),
    )
}

/// The body of a streamed answer: each chunk is offered to the host's bounded buffer, which
/// accepts it, is full, or reports the client gone, exactly as in-process.
struct RemoteBody {
    link: Arc<Link>,
    id: u64,
    /// False when the answer had been sent already: nothing is streamed.
    open: bool,
}

impl BodySender for RemoteBody {
    fn push(&self, chunk: RSlice<'_, u8>) -> PushOutcome {
        if !self.open {
            return PushOutcome::Closed;
        }
        let op = ServiceOp::Push {
            stream: self.id,
            chunk: chunk.as_slice().to_vec(),
        };
        match self.link.call(op) {
            ServiceResult::Pushed(0) => PushOutcome::Accepted,
            ServiceResult::Pushed(1) => PushOutcome::Full,
            _ => PushOutcome::Closed,
        }
    }
}

impl Drop for RemoteBody {
    fn drop(&mut self) {
        if self.open {
            self.link.send_or_report(&ToHost::StreamEnd { id: self.id });
        }
    }
}

/// The host's services, as calls over the socket.
struct RemoteServices {
    link: Arc<Link>,
}

fn failed<T>(result: ServiceResult) -> RResult<T, RString> {
    RResult::RErr(RString::from(match result {
        ServiceResult::Failed(message) => message,
        other => format!("unexpected answer from the host: {other:?}"),
    }))
}

impl HostServices for RemoteServices {
    fn log(&self, level: LogLevel, target: RStr<'_>, message: RStr<'_>) {
        self.link.send_or_report(&ToHost::Log {
            level: level as u8,
            target: target.as_str().to_owned(),
            message: message.as_str().to_owned(),
        });
    }

    fn publish(&self, kind: RStr<'_>, data: RStr<'_>) -> u64 {
        match self.link.call(ServiceOp::Publish {
            kind: kind.as_str().to_owned(),
            data: data.as_str().to_owned(),
            user_data: None,
        }) {
            ServiceResult::Published(id) => id,
            _ => 0,
        }
    }

    fn store_put(
        &self,
        collection: RStr<'_>,
        key: RStr<'_>,
        value: RStr<'_>,
    ) -> RResult<(), RString> {
        match self.link.call(ServiceOp::Put {
            collection: collection.as_str().to_owned(),
            key: key.as_str().to_owned(),
            value: value.as_str().to_owned(),
        }) {
            ServiceResult::Done => RResult::ROk(()),
            other => failed(other),
        }
    }

    fn store_get(&self, collection: RStr<'_>, key: RStr<'_>) -> RResult<ROption<RString>, RString> {
        match self.link.call(ServiceOp::Get {
            collection: collection.as_str().to_owned(),
            key: key.as_str().to_owned(),
        }) {
            ServiceResult::Value(value) => RResult::ROk(value.map(RString::from).into()),
            other => failed(other),
        }
    }

    fn store_delete(&self, collection: RStr<'_>, key: RStr<'_>) -> RResult<bool, RString> {
        match self.link.call(ServiceOp::Delete {
            collection: collection.as_str().to_owned(),
            key: key.as_str().to_owned(),
        }) {
            ServiceResult::Deleted(existed) => RResult::ROk(existed),
            other => failed(other),
        }
    }

    fn store_list(
        &self,
        collection: RStr<'_>,
        after: ROption<RStr<'_>>,
        limit: u32,
    ) -> RResult<RVec<StoreEntry>, RString> {
        match self.link.call(ServiceOp::List {
            collection: collection.as_str().to_owned(),
            after: after.into_option().map(|key| key.as_str().to_owned()),
            limit,
        }) {
            ServiceResult::Rows(rows) => RResult::ROk(
                rows.into_iter()
                    .map(|(key, value)| StoreEntry {
                        key: key.into(),
                        value: value.into(),
                    })
                    .collect(),
            ),
            other => failed(other),
        }
    }

    fn store_apply(&self, ops: RSlice<'_, StoreOp>) -> RResult<ROption<StoreConflict>, RString> {
        self.store_apply_audited(ops, RSlice::from_slice(&[]))
    }

    fn audit_query(&self, query: RStr<'_>) -> RResult<RString, RString> {
        match self.link.call(ServiceOp::AuditQuery {
            query: query.as_str().to_owned(),
        }) {
            ServiceResult::Text(page) => RResult::ROk(page.into()),
            other => failed(other),
        }
    }

    fn store_apply_audited(
        &self,
        ops: RSlice<'_, StoreOp>,
        audit: RSlice<'_, RString>,
    ) -> RResult<ROption<StoreConflict>, RString> {
        let audit = audit
            .iter()
            .map(|draft| draft.as_str().to_owned())
            .collect();
        let ops = ops
            .iter()
            .map(|op| StoreOpFrame {
                collection: op.collection.as_str().to_owned(),
                key: op.key.as_str().to_owned(),
                condition: op.condition as u8,
                expected: op.expected.as_str().to_owned(),
                write: op.write as u8,
                value: op.value.as_str().to_owned(),
            })
            .collect();
        match self.link.call(ServiceOp::Apply { ops, audit }) {
            ServiceResult::Applied(conflict) => RResult::ROk(
                conflict
                    .map(|(index, current)| StoreConflict {
                        index,
                        current: current.map(RString::from).into(),
                    })
                    .into(),
            ),
            other => failed(other),
        }
    }

    fn publish_by_role(&self, kind: RStr<'_>, data: RStr<'_>, user_data: ROption<RStr<'_>>) -> u64 {
        match self.link.call(ServiceOp::Publish {
            kind: kind.as_str().to_owned(),
            data: data.as_str().to_owned(),
            user_data: Some(user_data.into_option().map(|view| view.as_str().to_owned())),
        }) {
            ServiceResult::Published(id) => id,
            _ => 0,
        }
    }
}
