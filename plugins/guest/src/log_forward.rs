//! Forwards the plugin's `tracing` events to the host's logger, so plugin code logs the usual
//! way and operators see one log stream.
//!
//! The subscriber is set as the *thread* default on threads the instance owns (and around the
//! start and shutdown calls), never as this copy's global default: a global would outlive the
//! instance and leak with every unloaded copy.

use std::{
    cell::RefCell,
    fmt::Write as _,
    sync::atomic::{AtomicU64, Ordering},
};

use plugin_api::LogLevel;
use tracing::{
    dispatcher::DefaultGuard,
    field::{Field, Visit},
    span, Dispatch, Event, Level, Metadata, Subscriber,
};

use crate::host::Host;

/// A dispatcher that sends every event to `host`.
pub(crate) fn dispatch(host: Host) -> Dispatch {
    Dispatch::new(HostSubscriber {
        host,
        next_span: AtomicU64::new(1),
    })
}

thread_local! {
    static THREAD_DEFAULT: RefCell<Option<DefaultGuard>> = const { RefCell::new(None) };
}

/// Makes `dispatch` this thread's default until [`leave`].
pub(crate) fn enter(dispatch: &Dispatch) {
    let guard = tracing::dispatcher::set_default(dispatch);
    THREAD_DEFAULT.with(|slot| *slot.borrow_mut() = Some(guard));
}

pub(crate) fn leave() {
    THREAD_DEFAULT.with(|slot| slot.borrow_mut().take());
}

struct HostSubscriber {
    host: Host,
    next_span: AtomicU64,
}

impl Subscriber for HostSubscriber {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        // Trace-level noise from dependencies is not worth crossing the boundary for.
        *metadata.level() <= Level::DEBUG
    }

    fn new_span(&self, _span: &span::Attributes<'_>) -> span::Id {
        span::Id::from_u64(self.next_span.fetch_add(1, Ordering::Relaxed))
    }

    fn record(&self, _span: &span::Id, _values: &span::Record<'_>) {}

    fn record_follows_from(&self, _span: &span::Id, _follows: &span::Id) {}

    fn event(&self, event: &Event<'_>) {
        let level = match *event.metadata().level() {
            Level::ERROR => LogLevel::Error,
            Level::WARN => LogLevel::Warn,
            Level::INFO => LogLevel::Info,
            Level::DEBUG => LogLevel::Debug,
            Level::TRACE => LogLevel::Trace,
        };
        let mut line = MessageLine::default();
        event.record(&mut line);
        self.host
            .log(level, event.metadata().target(), &line.finish());
    }

    fn enter(&self, _span: &span::Id) {}

    fn exit(&self, _span: &span::Id) {}
}

#[derive(Default)]
struct MessageLine {
    text: String,
    fields: String,
}

impl Visit for MessageLine {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.text, "{value:?}");
        } else {
            let _ = write!(self.fields, " {}={:?}", field.name(), value);
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.text.push_str(value);
        } else {
            let _ = write!(self.fields, " {}={}", field.name(), value);
        }
    }
}

impl MessageLine {
    /// The message followed by its fields, so the line reads naturally.
    fn finish(mut self) -> String {
        self.text.push_str(&self.fields);
        self.text
    }
}
