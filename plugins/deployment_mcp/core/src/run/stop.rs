//! [`Stop`]: everything that makes a run stop early, in one value shared by the run and the
//! registry of live runs (the outside's handle on it).
//!
//! Two kinds of stop, and what each ends:
//! - a request ([`StopReason`]: a cancel, the host stopping, the run's lease lost to another
//!   node) ends everything: nothing new
//!   starts, running triggers stop, waits (pauses, bakes, the EC2 phase) end;
//! - a halt (the failure threshold, a failed canary), with its reason: nothing new starts, and
//!   running triggers stop only when the rollout says so ([`Stop::stop_running`]).
//!
//! The first reason of each kind stays: a cancel after the host began stopping is still the
//! host stopping.

use std::sync::Mutex;

use tokio_util::sync::CancellationToken;

/// Why a run stops early on request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StopReason {
    Cancelled,
    HostStopping,
    /// Another node took the run over: this process must not write or start anything more.
    LeaseLost,
}

#[derive(Debug, Default)]
struct Reasons {
    requested: Option<StopReason>,
    halted: Option<String>,
}

/// A run's stop state; see the module's documentation.
#[derive(Debug)]
pub(crate) struct Stop {
    reasons: Mutex<Reasons>,
    /// Cancelled by a request.
    requested: CancellationToken,
    /// Cancelled by a request or a halt: nothing new starts.
    no_new: CancellationToken,
    /// Cancelled by a request or [`Stop::stop_running`]: running triggers stop.
    running: CancellationToken,
}

impl Default for Stop {
    fn default() -> Stop {
        let requested = CancellationToken::new();
        Stop {
            reasons: Mutex::default(),
            no_new: requested.child_token(),
            running: requested.child_token(),
            requested,
        }
    }
}

impl Stop {
    fn reasons(&self) -> std::sync::MutexGuard<'_, Reasons> {
        self.reasons
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Stops the run for `reason` (the first reason given stays).
    pub(crate) fn request(&self, reason: StopReason) {
        self.reasons().requested.get_or_insert(reason);
        self.requested.cancel();
    }

    /// Why the run was asked to stop, if it was.
    pub(crate) fn reason(&self) -> Option<StopReason> {
        self.reasons().requested
    }

    /// Stops starting environments, saying why; true when this is the first halt.
    pub(crate) fn halt(&self, why: String) -> bool {
        let mut reasons = self.reasons();
        if reasons.halted.is_some() {
            return false;
        }
        reasons.halted = Some(why);
        drop(reasons);
        self.no_new.cancel();
        true
    }

    /// Why the run stopped starting environments, if it did.
    pub(crate) fn halted(&self) -> Option<String> {
        self.reasons().halted.clone()
    }

    /// Stops the triggers that are running (a halt whose rollout says `cancel_running`).
    pub(crate) fn stop_running(&self) {
        self.running.cancel();
    }

    /// Cancelled once the run is asked to stop.
    pub(crate) fn requested(&self) -> &CancellationToken {
        &self.requested
    }

    /// Cancelled once nothing new may start (a request or a halt).
    pub(crate) fn no_new(&self) -> &CancellationToken {
        &self.no_new
    }

    /// Cancelled once running triggers must stop.
    pub(crate) fn running(&self) -> &CancellationToken {
        &self.running
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_halt_stops_new_work_and_a_request_stops_everything() {
        let stop = Stop::default();
        assert!(stop.halt("threshold".into()));
        assert!(!stop.halt("later".into()), "the first halt stays");
        assert_eq!(stop.halted().as_deref(), Some("threshold"));
        assert!(stop.no_new().is_cancelled());
        assert!(!stop.running().is_cancelled() && !stop.requested().is_cancelled());
        stop.request(StopReason::HostStopping);
        stop.request(StopReason::Cancelled);
        assert_eq!(stop.reason(), Some(StopReason::HostStopping));
        assert!(stop.running().is_cancelled());
    }

    #[test]
    fn running_triggers_stop_alone_when_asked() {
        let stop = Stop::default();
        stop.stop_running();
        assert!(stop.running().is_cancelled());
        assert!(!stop.no_new().is_cancelled() && stop.reason().is_none());
    }
}
