//! The last words of a host that a plugin crashed. In-process, a segfault, an abort or an
//! illegal instruction in plugin code ends the whole process: the host cannot survive it (process
//! isolation can), but it can say what happened and which plugin code was loaded, so the
//! operator is not left with a bare "Segmentation fault".
//!
//! The handler only does async-signal-safe things: it copies a message that was formatted
//! beforehand from fixed static storage, reads the crashing thread's name from `/proc`, writes
//! with `write(2)` and re-raises the signal with its default action (the action was reset on
//! entry), so the process still ends by that signal, with a core dump where the system keeps
//! them. With `unsafe` kept to the loader's module tree, this is where it lives.

use std::{
    os::fd::AsFd as _,
    sync::{
        atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering},
        Mutex,
    },
};

use nix::sys::signal::{self, SaFlags, SigAction, SigHandler, SigSet, Signal};

/// Room for the list of loaded plugins; a longer list is cut.
const CAPACITY: usize = 1024;

/// The description of the plugin copies loaded now, updated on every load and unload (under
/// `UPDATES`), read by the handler without locks. A crash in the middle of an update can show
/// a garbled list, never read outside the buffer.
static LOADED: [AtomicU8; CAPACITY] = [const { AtomicU8::new(0) }; CAPACITY];
static LOADED_LEN: AtomicUsize = AtomicUsize::new(0);
static UPDATES: Mutex<Vec<(u64, String)>> = Mutex::new(Vec::new());

const FATAL: [(Signal, &str); 5] = [
    (Signal::SIGSEGV, "SIGSEGV (segmentation fault)"),
    (Signal::SIGBUS, "SIGBUS (bus error)"),
    (Signal::SIGILL, "SIGILL (illegal instruction)"),
    (Signal::SIGFPE, "SIGFPE (arithmetic fault)"),
    (Signal::SIGABRT, "SIGABRT (abort)"),
];

/// Installs the report for every fatal signal. Called once at start, before plugins load.
pub fn install() -> Result<(), String> {
    let action = SigAction::new(
        SigHandler::Handler(on_fatal_signal),
        // Reset to the default on entry: the re-raise below then ends the process.
        SaFlags::SA_RESETHAND | SaFlags::SA_ONSTACK,
        SigSet::empty(),
    );
    for (fatal, _) in FATAL {
        // SAFETY: the handler only calls async-signal-safe functions (atomic loads, open,
        // read, write, close, raise) and touches no lock, allocator or thread-local state.
        // It replaces the default action (or the runtime's stack-overflow handler, whose
        // message it takes over for threads that have an alternate signal stack).
        unsafe { signal::sigaction(fatal, &action) }
            .map_err(|error| format!("cannot install the {fatal:?} report: {error}"))?;
    }
    Ok(())
}

/// Set in a plugin's child process (`plugin-runner`): its report says the host goes on.
static IN_CHILD: AtomicBool = AtomicBool::new(false);

/// What a plugin's child process installs at start: the same report (telling that the host
/// answers for it), and stop signals (SIGINT, SIGTERM) that do nothing. A terminal's Ctrl-C or
/// a service manager signals every process of the host's group or control group at once; the
/// child must not die before the host has drained its requests and asked it to stop. It stops
/// on the host's word, when the host's socket closes, or when the host dies (parent-death
/// signal). A handler rather than "ignore", so commands the plugin starts get the default
/// action back when they exec.
pub fn install_in_child() -> Result<(), String> {
    IN_CHILD.store(true, Ordering::SeqCst);
    install()?;
    let action = SigAction::new(
        SigHandler::Handler(on_stop_signal),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for stop in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler does nothing at all, so it is async-signal-safe; it replaces the
        // default action (ending the process) for this process only.
        unsafe { signal::sigaction(stop, &action) }
            .map_err(|error| format!("cannot install the {stop:?} handler: {error}"))?;
    }
    Ok(())
}

extern "C" fn on_stop_signal(_: nix::libc::c_int) {}

/// Records that copy `id` of a plugin is loaded (`Some`) or unloaded (`None`).
pub fn set_loaded(id: u64, description: Option<String>) {
    let mut loaded = UPDATES.lock().unwrap_or_else(|p| p.into_inner());
    loaded.retain(|(other, _)| *other != id);
    if let Some(description) = description {
        loaded.push((id, description));
    }
    let text = loaded
        .iter()
        .map(|(_, description)| description.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    let bytes = text.as_bytes();
    let len = bytes.len().min(CAPACITY);
    LOADED_LEN.store(0, Ordering::SeqCst);
    for (slot, byte) in LOADED.iter().zip(&bytes[..len]) {
        slot.store(*byte, Ordering::Relaxed);
    }
    LOADED_LEN.store(len, Ordering::SeqCst);
}

/// A fixed buffer that never allocates.
struct Message {
    bytes: [u8; 2048],
    len: usize,
}

impl Message {
    fn push(&mut self, text: &[u8]) {
        let room = self.bytes.len() - self.len;
        let take = text.len().min(room);
        self.bytes[self.len..self.len + take].copy_from_slice(&text[..take]);
        self.len += take;
    }
}

extern "C" fn on_fatal_signal(number: nix::libc::c_int) {
    let mut message = Message {
        bytes: [0; 2048],
        len: 0,
    };
    let signal = Signal::try_from(number).ok();
    let name = FATAL
        .iter()
        .find(|(fatal, _)| Some(*fatal) == signal)
        .map_or("a fatal signal", |(_, name)| name);
    message.push(b"powerautomation: fatal ");
    message.push(name.as_bytes());
    message.push(b" in thread '");
    let mut thread = [0u8; 64];
    let thread_len = nix::fcntl::open(
        c"/proc/thread-self/comm",
        nix::fcntl::OFlag::O_RDONLY,
        nix::sys::stat::Mode::empty(),
    )
    .and_then(|fd| nix::unistd::read(&fd, &mut thread))
    .unwrap_or(0);
    message.push(thread[..thread_len].trim_ascii_end());
    message.push(b"'; plugin code loaded in this process: ");
    let len = LOADED_LEN.load(Ordering::SeqCst).min(CAPACITY);
    if len == 0 {
        message.push(b"none");
    }
    for slot in &LOADED[..len] {
        message.push(&[slot.load(Ordering::Relaxed)]);
    }
    if IN_CHILD.load(Ordering::SeqCst) {
        message.push(
            b". This is the plugin's own process (isolation = \"process\"): the host answers 502 for its requests in flight and restarts it.\n",
        );
    } else {
        message.push(
            b". In-process plugins share the host's fate: set isolation = \"process\" for a plugin to contain its crashes. Records written so far are kept; runs that were going on are marked interrupted at the next start.\n",
        );
    }
    let stderr = std::io::stderr();
    let _ = nix::unistd::write(stderr.as_fd(), &message.bytes[..message.len]);
    // The action is the default again (SA_RESETHAND): this ends the process by the same signal.
    if let Some(signal) = signal {
        let _ = signal::raise(signal);
    }
}
