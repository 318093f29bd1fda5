//! Ctrl-C and SIGTERM. A deployment being watched gets the first one (in-process it cancels the
//! run, so the triggers' process groups are killed and the run is recorded as cancelled);
//! anything else, or a second signal, ends the process at once with status 130.
//!
//! The signals are blocked in every thread and taken by one thread with `sigwait`: no handler
//! runs inside arbitrary code, and it needs no `unsafe`. Children do not inherit the mask
//! (std's process spawning resets it).

use std::sync::{
    atomic::{AtomicBool, Ordering},
    Arc,
};

use nix::sys::signal::{SigSet, Signal};
use tokio::sync::mpsc;

pub struct Interrupts {
    receiver: Option<mpsc::UnboundedReceiver<Signal>>,
    armed: Arc<AtomicBool>,
}

/// Takes over SIGINT and SIGTERM. Call before any other thread starts, so all inherit the mask.
pub fn install() -> Interrupts {
    let armed = Arc::new(AtomicBool::new(false));
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    if set.thread_block().is_err() {
        // The default disposition stays: the signal ends the process.
        return Interrupts {
            receiver: None,
            armed,
        };
    }
    let (sender, receiver) = mpsc::unbounded_channel();
    let watching = Arc::clone(&armed);
    let spawned = std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut received = 0;
            while let Ok(signal) = set.wait() {
                received += 1;
                if received > 1 || !watching.load(Ordering::SeqCst) || sender.send(signal).is_err()
                {
                    eprintln!("interrupted");
                    std::process::exit(130);
                }
            }
        });
    if spawned.is_err() {
        let _ = set.thread_unblock();
        return Interrupts {
            receiver: None,
            armed,
        };
    }
    Interrupts {
        receiver: Some(receiver),
        armed,
    }
}

impl Interrupts {
    /// From now on the first signal is delivered to [`Interrupts::recv`] instead of exiting.
    pub fn arm(&self) {
        self.armed.store(true, Ordering::SeqCst);
    }

    pub fn disarm(&self) {
        self.armed.store(false, Ordering::SeqCst);
    }

    /// Waits for a signal while armed; never returns when signals are not taken over.
    pub async fn recv(&mut self) -> Signal {
        match &mut self.receiver {
            Some(receiver) => match receiver.recv().await {
                Some(signal) => signal,
                None => std::future::pending().await,
            },
            None => std::future::pending().await,
        }
    }
}
