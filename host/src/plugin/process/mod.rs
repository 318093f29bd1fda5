//! Process isolation: a plugin with `isolation = "process"` runs in a child process
//! (`powerautomation plugin-runner`, see [`runner`]) that loads the same library through the
//! same loader, and the host talks to it over a Unix socket ([`frame`]). Requests, streamed
//! answers and the host services (store, events, logs) cross with the semantics they have
//! in-process, so the plugin's code does not know which mode it runs in.
//!
//! On the host's side a [`ChildCopy`] has:
//! - a writer task that sends queued messages in batches (one write for many under load);
//! - a reader task that delivers answers to the requests waiting for them, and runs the
//!   plugin's service calls (store calls on the blocking pool);
//! - a waiter thread that reaps the child. When the child ends, every request still waiting on
//!   it gets [`CallError::Crashed`] with the signal or exit status, open streams end, and the
//!   slot is told unless the host had asked it to stop and it exited cleanly (the slot restarts
//!   a serving child with backoff, and replaces the serving one after an older child's death).
//!
//! A copy that is dropped (swapped out, or the host stops) is sent `Shutdown`: the child
//! finishes what it accepted, as a retiring in-process copy does, and exits. The waiter
//! thread is joined with the in-process retirements when the host stops.
//!
//! The plugin reads `host/lifecycle` to tell a hot swap (runs of its own boot belong to a
//! sibling copy) from a restart (runs of another boot were interrupted). Each child reads a
//! boot id of its own (the host's joined with the plugin's name and the child's sequence) and,
//! in `live_boot_ids`, those of the slot's children not reaped yet. A restarted child marks the
//! runs of every other boot id `interrupted` and frees their environments, while the runs of
//! an older child still finishing after a swap are left to it, whichever child crashed.

pub mod frame;
mod priority;
pub mod runner;
mod services;

use std::{
    collections::HashMap,
    os::fd::OwnedFd,
    path::PathBuf,
    process::Stdio,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
};

use axum::body::Bytes;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::unix::{OwnedReadHalf, OwnedWriteHalf},
    sync::{mpsc, oneshot},
};
use tokio_util::sync::CancellationToken;

use self::frame::{ReadyInfo, RequestFrame, ServiceOp, StartChild, ToChild, ToHost};
pub use self::services::{ChildServices, LiveChildren};
use super::{
    bridge::{copy_answer, push_chunk, HostBody, HostResponse, StreamCut, STREAM_BUFFER_CHUNKS},
    call::{CallError, Death, HostRequest},
    loader::{BuildInfo, LoadError, LoadFailure, LoadTarget, Retirements},
};

/// Messages queued for the child before a sender waits.
const FRAME_QUEUE: usize = 4096;
/// Messages written in one go at most.
const WRITE_BATCH: usize = 256;
/// What a read or write buffer keeps between messages.
const KEPT_BUFFER: usize = 1024 * 1024;
/// How long a reaped child's last messages may take to be read before the requests still
/// waiting on it are failed.
const READER_DRAIN: std::time::Duration = std::time::Duration::from_secs(2);

/// What starting a child needs.
pub struct ChildSpec {
    pub target: LoadTarget,
    pub memory_limit_mb: Option<u64>,
    pub cpu_shares: Option<u32>,
    /// How long the child may take to start the plugin before it is killed.
    pub start_timeout: std::time::Duration,
    pub log_level: String,
    pub log_json: bool,
    pub services: ChildServices,
    pub retirements: Retirements,
    /// Called once if the child, having served, ends without having been asked to stop, or
    /// ends badly after it was; gets the child's `target.sequence`.
    pub on_crash: Box<dyn FnOnce(u64, Death) + Send>,
}

/// A plugin copy running in a child process.
pub struct ChildCopy {
    pub info: BuildInfo,
    pid: u32,
    link: Arc<HostLink>,
}

impl ChildCopy {
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Which load of its slot this child is.
    pub fn sequence(&self) -> u64 {
        self.link.sequence
    }

    pub async fn call(&self, request: HostRequest) -> Result<HostResponse, CallError> {
        let link = &self.link;
        let id = link.next_id.fetch_add(1, Ordering::Relaxed);
        let (answer_tx, answer_rx) = oneshot::channel();
        {
            let mut state = link.state();
            if let Some(death) = &state.dead {
                return Err(link.crashed(death.clone()));
            }
            state.answers.insert(id, answer_tx);
        }
        // A caller that gives up (a timeout, a client gone) takes its entry with it.
        let mut pending = PendingAnswer {
            link,
            id,
            armed: true,
        };
        let message = ToChild::Request(RequestFrame {
            id,
            request_id: request.request_id,
            method: request.method,
            path: request.path,
            query: request.query,
            headers: request.headers,
            body: request.body.to_vec(),
            principal: request.principal.map(|(name, role)| (name, role as u8)),
        });
        let sent = match frame::encode(&message) {
            Ok(bytes) => link.frames.send(bytes).await.is_ok(),
            Err(error) => {
                tracing::warn!(plugin = %link.plugin, %error, "a request could not be sent to the plugin's process");
                false
            }
        };
        if !sent {
            return Err(CallError::Unanswered);
        }
        let answer = answer_rx.await;
        // Whoever answered (the reader, or the reaper) has taken the entry out already.
        pending.armed = false;
        answer.unwrap_or(Err(CallError::Unanswered))
    }
}

/// A response frame's header pairs, as text.
fn frame_pairs(headers: &[(String, String)]) -> impl Iterator<Item = (&str, &str)> + Clone {
    headers
        .iter()
        .map(|(name, value)| (name.as_str(), value.as_str()))
}

/// Removes a request's entry when its caller gives up before the answer came.
struct PendingAnswer<'a> {
    link: &'a HostLink,
    id: u64,
    armed: bool,
}

impl Drop for PendingAnswer<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.link.state().answers.remove(&self.id);
        }
    }
}

impl Drop for ChildCopy {
    fn drop(&mut self) {
        // The last request on this copy is done: the child finishes its work and exits.
        self.link.retire.cancel();
    }
}

/// The host's end of one child's connection.
struct HostLink {
    plugin: String,
    pid: u32,
    frames: mpsc::Sender<Vec<u8>>,
    state: Mutex<LinkState>,
    next_id: AtomicU64,
    /// Cancelled when the host asks the child to stop: its exit is then no crash.
    retire: CancellationToken,
    /// Set once the child has been reaped: its pid may belong to another process now.
    reaped: AtomicBool,
    /// Which load of the slot this child is (`LoadTarget::sequence`): unlike a pid, never
    /// reused.
    sequence: u64,
}

#[derive(Default)]
struct LinkState {
    dead: Option<Death>,
    /// Set, under this lock, once the copy serves: an end before that is a failed start, not
    /// a crash. Deciding both under one lock means a child that dies right after `Ready` is
    /// either refused by `spawn` or reported as a crash, never neither.
    serving: bool,
    answers: HashMap<u64, oneshot::Sender<Result<HostResponse, CallError>>>,
    streams: HashMap<u64, (mpsc::Sender<Bytes>, StreamCut)>,
    ready: Option<oneshot::Sender<Result<ReadyInfo, LoadError>>>,
}

impl HostLink {
    fn state(&self) -> std::sync::MutexGuard<'_, LinkState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn crashed(&self, death: Death) -> CallError {
        CallError::Crashed {
            plugin: self.plugin.clone(),
            death,
        }
    }

    /// The child is gone: whoever waits on it learns why. True when it had been serving.
    fn die(&self, death: &Death) -> bool {
        let (answers, streams, ready, serving) = {
            let mut state = self.state();
            state.dead = Some(death.clone());
            (
                std::mem::take(&mut state.answers),
                std::mem::take(&mut state.streams),
                state.ready.take(),
                state.serving,
            )
        };
        for answer in answers.into_values() {
            let _ = answer.send(Err(self.crashed(death.clone())));
        }
        // Streams in progress are cut off, not ended as if complete.
        for (_, cut) in streams.into_values() {
            let _ = cut.set(format!(
                "its process ended during this answer ({})",
                death.cause
            ));
        }
        if let Some(ready) = ready {
            let _ = ready.send(Err(LoadError {
                kind: LoadFailure::Failed,
                message: format!("the plugin's process ended while starting: {}", death.cause),
            }));
        }
        serving
    }

    /// Ends a child that broke the protocol; the waiter thread then reports it.
    fn kill(&self, why: &str) {
        tracing::error!(plugin = %self.plugin, pid = self.pid, "{why}; killing the plugin's process");
        if !self.reaped.load(Ordering::Acquire) {
            let pid = nix::unistd::Pid::from_raw(self.pid as i32);
            // Its process group too (the child leads one of its own): commands it started
            // and was waiting on go with it. Not reaped yet, so the id is still the child's.
            let _ = nix::sys::signal::killpg(pid, nix::sys::signal::Signal::SIGKILL);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        }
    }

    async fn reply(&self, call: u64, result: frame::ServiceResult) {
        match frame::encode(&ToChild::Reply { call, result }) {
            Ok(bytes) => {
                let _ = self.frames.send(bytes).await;
            }
            Err(error) => self.kill(&format!(
                "an answer to a service call cannot be sent: {error}"
            )),
        }
    }

    /// Handles one message of the child.
    async fn receive(self: &Arc<Self>, message: ToHost, services: &Arc<ChildServices>) {
        match message {
            ToHost::Ready(info) => {
                if let Some(ready) = self.state().ready.take() {
                    let _ = ready.send(Ok(info));
                }
            }
            ToHost::LoadFailed { kind, message } => {
                let kind = match kind {
                    0 => LoadFailure::Missing,
                    1 => LoadFailure::Incompatible,
                    _ => LoadFailure::Failed,
                };
                if let Some(ready) = self.state().ready.take() {
                    let _ = ready.send(Err(LoadError { kind, message }));
                }
            }
            ToHost::Response(response) => {
                let answer = self.state().answers.remove(&response.id);
                if let Some(answer) = answer {
                    let (headers, _) = copy_answer(frame_pairs(&response.headers), &[]);
                    let _ = answer.send(Ok(HostResponse {
                        status: response.status,
                        headers,
                        body: HostBody::Full(Bytes::from(response.body)),
                    }));
                }
            }
            ToHost::StreamHead(head) => {
                let answer = self.state().answers.remove(&head.id);
                let Some(answer) = answer else { return };
                let (sender, receiver) = mpsc::channel(STREAM_BUFFER_CHUNKS);
                let cut = StreamCut::default();
                // The head's body goes in like any chunk: bounded the same way.
                let _ = push_chunk(&sender, &cut, &head.body);
                let (headers, _) = copy_answer(frame_pairs(&head.headers), &[]);
                let delivered = answer
                    .send(Ok(HostResponse {
                        status: head.status,
                        headers,
                        body: HostBody::Stream(receiver, Arc::clone(&cut)),
                    }))
                    .is_ok();
                if delivered {
                    let mut state = self.state();
                    match &state.dead {
                        None => {
                            state.streams.insert(head.id, (sender, cut));
                        }
                        Some(death) => {
                            let _ = cut.set(format!(
                                "its process ended during this answer ({})",
                                death.cause
                            ));
                        }
                    }
                }
            }
            ToHost::StreamEnd { id } => {
                self.state().streams.remove(&id);
            }
            ToHost::Unanswered { id } => {
                // Dropping the waiter makes the dispatcher answer 500, as in-process.
                self.state().answers.remove(&id);
            }
            ToHost::Call {
                call,
                op: ServiceOp::Push { stream, chunk },
            } => {
                let outcome = self.push(stream, chunk);
                self.reply(call, frame::ServiceResult::Pushed(outcome as u8))
                    .await;
            }
            ToHost::Call { call, op } => {
                let link = Arc::clone(self);
                let services = Arc::clone(services);
                tokio::spawn(async move {
                    let result = tokio::task::spawn_blocking(move || services.execute(op))
                        .await
                        .unwrap_or_else(|_| {
                            frame::ServiceResult::Failed("the host's service call panicked".into())
                        });
                    link.reply(call, result).await;
                });
            }
            ToHost::Log {
                level,
                target,
                message,
            } => services.log(level, &target, &message),
            ToHost::Stopped => {
                tracing::debug!(plugin = %self.plugin, pid = self.pid, "the plugin's process stopped as asked");
            }
        }
    }

    /// One chunk of a streamed answer, into the host's bounded buffer (as in-process).
    fn push(&self, stream: u64, chunk: Vec<u8>) -> plugin_api::PushOutcome {
        use plugin_api::PushOutcome;
        let state = self.state();
        match state.streams.get(&stream) {
            Some((sender, cut)) => push_chunk(sender, cut, &chunk),
            None => PushOutcome::Closed,
        }
    }
}

/// Ends a child that was started but is not used (its start failed or was abandoned).
struct StartGuard {
    link: Option<Arc<HostLink>>,
}

impl Drop for StartGuard {
    fn drop(&mut self) {
        if let Some(link) = self.link.take() {
            link.retire.cancel();
        }
    }
}

/// Whether the plugin's process gets the host's variable `name`: the basics (`PATH`, `HOME`,
/// locale, time zone, certificates) and what the plugin itself reads (the AWS chain of its EC2
/// phase, the platform's identity, the default version). Never the host's keys or its `PA_*`
/// settings: a child of the plugin (a local trigger) could print them.
fn passes_to_runner(name: &str) -> bool {
    matches!(
        name,
        "PATH"
            | "HOME"
            | "LANG"
            | "TZ"
            | "TMPDIR"
            | "SSL_CERT_FILE"
            | "SSL_CERT_DIR"
            | "RUST_BACKTRACE"
            | "EC2_INSTANCE_ID"
            | "EC2_PUBLIC_IP"
            | "DEPLOYMENT_VERSION"
    ) || name.starts_with("AWS_")
        || name.starts_with("LC_")
}

/// Starts a child, has it load the plugin, and waits until it is ready.
pub async fn spawn(spec: ChildSpec) -> Result<ChildCopy, LoadError> {
    let failed = |what: &str, error: &dyn std::fmt::Display| LoadError {
        kind: LoadFailure::Failed,
        message: format!("{what}: {error}"),
    };
    let (host_end, child_end) = std::os::unix::net::UnixStream::pair()
        .map_err(|error| failed("cannot create the plugin process's socket", &error))?;
    // `/proc/self/exe` is this very binary even if the file was replaced since the host started.
    let mut command = std::process::Command::new("/proc/self/exe");
    command
        .arg("plugin-runner")
        .arg("--host-pid")
        .arg(std::process::id().to_string())
        .stdin(Stdio::from(OwnedFd::from(child_end)))
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .env_clear()
        .envs(std::env::vars_os().filter(|(name, _)| name.to_str().is_some_and(passes_to_runner)));
    if spec.memory_limit_mb.is_some() {
        // The allocator would reserve 1 GiB of writable address space up front, which the
        // limit counts: under a small limit the child could not even start. Without the
        // reservation it maps memory as it needs it.
        command.env("MIMALLOC_ARENA_RESERVE", "0");
    }
    let mut child = command
        .spawn()
        .map_err(|error| failed("cannot start the plugin's process", &error))?;
    let pid = child.id();
    let name = spec.target.name.clone();
    let (sequence, copies_dir) = (spec.target.sequence, spec.target.copies_dir.clone());
    let start = frame::encode(&ToChild::Start(StartChild {
        target: spec.target,
        memory_limit_mb: spec.memory_limit_mb,
        cpu_shares: spec.cpu_shares,
        log_level: spec.log_level,
        log_json: spec.log_json,
    }))
    .map_err(|error| failed("cannot encode the start message", &error));
    let socket = host_end
        .set_nonblocking(true)
        .and_then(|()| tokio::net::UnixStream::from_std(host_end));
    let (start, socket) = match (start, socket) {
        (Ok(start), Ok(socket)) => (start, socket),
        (Err(error), _) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(error);
        }
        (_, Err(error)) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(failed(
                "cannot register the plugin process's socket",
                &error,
            ));
        }
    };
    let (read_half, write_half) = socket.into_split();
    let (frames, queued) = mpsc::channel(FRAME_QUEUE);
    // A fresh queue has room for the first message.
    let _ = frames.try_send(start);
    let (ready_tx, ready_rx) = oneshot::channel();
    let link = Arc::new(HostLink {
        plugin: name.clone(),
        pid,
        frames,
        state: Mutex::new(LinkState {
            ready: Some(ready_tx),
            ..LinkState::default()
        }),
        next_id: AtomicU64::new(1),
        retire: CancellationToken::new(),
        reaped: AtomicBool::new(false),
        sequence,
    });
    let copies = (copies_dir, format!("lib{name}-{pid}-"));
    // Alive before it can hear `Start`, so its first read of the lifecycle counts it.
    let live = Arc::clone(&spec.services.live);
    live.insert(sequence);
    tokio::spawn(write_loop(queued, write_half, link.retire.clone()));
    // Disconnected once the reader has read all the child wrote: answers it sent before it
    // died are delivered before the rest are failed.
    let (reader_alive, reader_done) = std::sync::mpsc::channel::<()>();
    tokio::spawn(read_loop(
        read_half,
        Arc::clone(&link),
        Arc::new(spec.services),
        reader_alive,
    ));
    let waiter = std::thread::Builder::new()
        .name(format!("reap-{}", name))
        .spawn({
            let link = Arc::clone(&link);
            let on_crash = spec.on_crash;
            let live = Arc::clone(&live);
            move || {
                let death = match child.wait() {
                    Ok(status) => Death::from_status(status),
                    Err(error) => Death::lost(format!("its exit could not be read: {error}")),
                };
                link.reaped.store(true, Ordering::Release);
                // Before anyone hears of the death: a child restarted after it must not
                // count this one's runs as alive.
                live.remove(sequence);
                let _ = reader_done.recv_timeout(READER_DRAIN);
                let serving = link.die(&death);
                remove_copies(&copies.0, &copies.1);
                if !serving {
                    tracing::debug!(plugin = %link.plugin, pid = link.pid, cause = %death.cause, "the plugin's process ended before it served");
                } else if link.retire.is_cancelled() {
                    if death.exit_code != Some(0) {
                        tracing::warn!(plugin = %link.plugin, pid = link.pid, cause = %death.cause, "the plugin's process did not stop cleanly");
                        // It may have died with runs it was still finishing: the slot has
                        // them recorded (a crash of a child that no longer serves).
                        on_crash(link.sequence, death);
                    } else {
                        tracing::info!(plugin = %link.plugin, pid = link.pid, "the plugin's old process stopped");
                    }
                } else {
                    tracing::error!(plugin = %link.plugin, pid = link.pid, cause = %death.cause, "the plugin's process crashed; the host keeps serving");
                    on_crash(link.sequence, death);
                }
            }
        });
    match waiter {
        Ok(handle) => spec.retirements.push(handle),
        Err(error) => {
            live.remove(sequence);
            link.kill("no thread to watch the plugin's process");
            return Err(failed(
                "cannot start a thread to watch the plugin's process",
                &error,
            ));
        }
    }
    let mut guard = StartGuard {
        link: Some(Arc::clone(&link)),
    };
    let start_timeout = spec.start_timeout;
    let info = match tokio::time::timeout(start_timeout, ready_rx).await {
        Ok(answer) => answer.unwrap_or_else(|_| {
            Err(LoadError {
                kind: LoadFailure::Failed,
                message: "the plugin's process ended while starting".into(),
            })
        })?,
        Err(_) => {
            // A start that hangs (a plugin waiting on something that never comes) would hold
            // the slot `loading` for ever: the process goes, and the start counts as failed.
            let why = format!(
                "the plugin did not start within {} s (start_timeout_secs)",
                start_timeout.as_secs()
            );
            link.kill(&why);
            return Err(LoadError {
                kind: LoadFailure::Failed,
                message: why,
            });
        }
    };
    {
        let mut state = link.state();
        if let Some(death) = &state.dead {
            return Err(LoadError {
                kind: LoadFailure::Failed,
                message: format!("the plugin's process ended as it started: {}", death.cause),
            });
        }
        state.serving = true;
    }
    guard.link = None;
    Ok(ChildCopy {
        info: BuildInfo {
            name: info.name,
            version: info.version,
            description: info.description,
            abi: info.abi,
            sha256: info.sha256,
            source: PathBuf::from(info.source),
            loaded_at: std::time::SystemTime::now(),
        },
        pid,
        link,
    })
}

async fn write_loop(
    mut queued: mpsc::Receiver<Vec<u8>>,
    mut socket: OwnedWriteHalf,
    retire: CancellationToken,
) {
    let mut batch = Vec::with_capacity(WRITE_BATCH);
    let mut buffer = Vec::with_capacity(64 * 1024);
    let mut shutdown_sent = false;
    let mut broken = false;
    loop {
        tokio::select! {
            biased;
            received = queued.recv_many(&mut batch, WRITE_BATCH) => {
                if received == 0 {
                    return;
                }
                if broken {
                    batch.clear();
                    continue;
                }
                // Let the requests that tasks ready on this worker are about to send join this
                // write: woken at once after the first (tokio runs a task woken from this
                // worker next), the writer would otherwise send one message per write, and each
                // write wakes the child's reader.
                if batch.len() < WRITE_BATCH {
                    tokio::task::yield_now().await;
                    while batch.len() < WRITE_BATCH {
                        match queued.try_recv() {
                            Ok(message) => batch.push(message),
                            Err(_) => break,
                        }
                    }
                }
                let written = if batch.len() == 1 {
                    socket.write_all(&batch[0]).await
                } else {
                    buffer.clear();
                    for message in &batch {
                        buffer.extend_from_slice(message);
                    }
                    socket.write_all(&buffer).await
                };
                batch.clear();
                shrink(&mut buffer);
                // The child is gone; the waiter thread reports it.
                broken = written.is_err();
            }
            _ = retire.cancelled(), if !shutdown_sent => {
                shutdown_sent = true;
                if let Ok(message) = frame::encode(&ToChild::Shutdown) {
                    broken = broken || socket.write_all(&message).await.is_err();
                }
            }
        }
    }
}

async fn read_loop(
    socket: OwnedReadHalf,
    link: Arc<HostLink>,
    services: Arc<ChildServices>,
    _alive: std::sync::mpsc::Sender<()>,
) {
    let mut reader = BufReader::with_capacity(64 * 1024, socket);
    let mut body = Vec::new();
    loop {
        let mut prefix = [0u8; 4];
        if reader.read_exact(&mut prefix).await.is_err() {
            // The child closed its end: it is exiting; the waiter thread reports how.
            return;
        }
        let length = match frame::frame_length(prefix) {
            Ok(length) => length,
            Err(error) => return link.kill(&error.to_string()),
        };
        body.clear();
        body.resize(length, 0);
        if reader.read_exact(&mut body).await.is_err() {
            return;
        }
        match frame::decode::<ToHost>(&body) {
            Ok(message) => link.receive(message, &services).await,
            Err(error) => return link.kill(&error.to_string()),
        }
        shrink(&mut body);
    }
}

/// Buffers keep their size between messages, but not the size of an outsized one.
fn shrink(buffer: &mut Vec<u8>) {
    if buffer.capacity() > KEPT_BUFFER {
        *buffer = Vec::with_capacity(KEPT_BUFFER);
    }
}

/// Removes the private library copies a dead child left (`lib<name>-<pid>-…`): a child that
/// crashed had no chance to.
fn remove_copies(directory: &std::path::Path, prefix: &str) {
    let Ok(entries) = std::fs::read_dir(directory) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with(prefix) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plugins_process_gets_the_basics_and_the_aws_chain_never_the_hosts_keys() {
        for name in [
            "PATH",
            "HOME",
            "LANG",
            "LC_ALL",
            "AWS_REGION",
            "AWS_SECRET_ACCESS_KEY",
        ] {
            assert!(passes_to_runner(name), "{name}");
        }
        for name in [
            "PA_AUTH__KEYS",
            "PA_SERVER__LISTEN",
            "DEPLOYMENT_MCP_API_KEY",
            "GITHUB_TOKEN",
            "path",
        ] {
            assert!(!passes_to_runner(name), "{name}");
        }
    }
}
