//! One started copy of a plugin, whichever way it runs: loaded into this process
//! ([`LoadedPlugin`]) or in a child process ([`ChildCopy`]). Requests reach either as host
//! types and come back as host types, so the dispatcher does not know the difference.

use abi_stable::std_types::{ROption, RString, RVec, Tuple2};
use axum::body::Bytes;
use plugin_api::{PluginRequest, Principal as AbiPrincipal, Role};

use super::{
    bridge::{self, HostResponse},
    loader::{BuildInfo, LoadedPlugin},
    process::{ChildCopy, Death},
};

/// A request for a plugin, owned by the host.
#[derive(Debug)]
pub struct HostRequest {
    pub request_id: String,
    pub method: String,
    /// Relative to the plugin's mount, starting with `/`.
    pub path: String,
    pub query: String,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
    pub principal: Option<(String, Role)>,
}

/// Why a request got no answer from the plugin.
#[derive(Debug, Clone)]
pub enum CallError {
    /// The plugin dropped the request without answering.
    Unanswered,
    /// The copy's process ended while the request was in flight (or before it was sent).
    Crashed { plugin: String, death: Death },
}

pub enum PluginCopy {
    InProcess(LoadedPlugin),
    Process(ChildCopy),
}

impl PluginCopy {
    pub fn info(&self) -> &BuildInfo {
        match self {
            PluginCopy::InProcess(loaded) => &loaded.info,
            PluginCopy::Process(child) => &child.info,
        }
    }

    /// The child's process id, in process mode.
    pub fn pid(&self) -> Option<u32> {
        match self {
            PluginCopy::InProcess(_) => None,
            PluginCopy::Process(child) => Some(child.pid()),
        }
    }

    /// Which load of its slot a child is (process mode).
    pub fn child_sequence(&self) -> Option<u64> {
        match self {
            PluginCopy::InProcess(_) => None,
            PluginCopy::Process(child) => Some(child.sequence()),
        }
    }

    /// Hands one request to the copy and waits for its answer (a streamed answer's head).
    pub async fn call(&self, request: HostRequest) -> Result<HostResponse, CallError> {
        match self {
            PluginCopy::InProcess(loaded) => {
                let (sink, answer) = bridge::reply_channel();
                loaded.handle(export_request(request), sink);
                AfterOthers::default().await;
                answer.await.map_err(|_| CallError::Unanswered)
            }
            PluginCopy::Process(child) => child.call(request).await,
        }
    }
}

/// The request in ABI types, for a copy in this process (or loaded by a child process).
pub fn export_request(request: HostRequest) -> PluginRequest {
    PluginRequest {
        request_id: RString::from(request.request_id),
        method: RString::from(request.method),
        path: RString::from(request.path),
        query: RString::from(request.query),
        headers: request
            .headers
            .into_iter()
            .map(|(name, value)| Tuple2(RString::from(name), RString::from(value)))
            .collect::<RVec<_>>(),
        body: RVec::from(Vec::from(request.body)),
        principal: match request.principal {
            Some((name, role)) => ROption::RSome(AbiPrincipal {
                name: RString::from(name),
                role,
            }),
            None => ROption::RNone,
        },
    }
}

/// Gives the worker to the tasks queued behind this one once, without waiting for anything: the
/// task goes to the back of its worker's queue and is polled again when the others had their
/// turn. A plugin's answer that arrives meanwhile is found at once, and no task was woken for
/// it: without this, each answer wakes its task from a plugin thread, outside the runtime, which
/// pushes it onto the runtime's shared queue (under a lock) and moves it, with its connection,
/// to whichever worker pops it. That holds when every worker is busy, which is when it matters:
/// like any task that yields, the queued task may wake an idle worker, which may take it. On an
/// idle worker the task is polled again at once and then waits for its answer as before. One
/// turn, not more: on 8 cores, at 1,024 connections, one turn gave 0.77 of `/health` where
/// three gave 0.74 (`benches/ab.sh`).
///
/// `tokio::task::yield_now` is not this: it holds the task until the worker next polls its I/O
/// driver (a system call), which an idle worker does at once.
///
/// The request's timeout (`http::layers::RequestTimeout`) takes its turn in the same poll when
/// the request's body is already in, so both make one turn: a task woken while it runs is
/// queued once. This one is still needed:
/// without it the answer's waker would be registered before the turn, and an answer arriving
/// within it would write to the task's state from the plugin thread.
#[derive(Default)]
struct AfterOthers {
    yielded: bool,
}

impl std::future::Future for AfterOthers {
    type Output = ();

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        context: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        if self.yielded {
            return std::task::Poll::Ready(());
        }
        self.yielded = true;
        context.waker().wake_by_ref();
        std::task::Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use std::{
        future::Future,
        pin::pin,
        sync::{
            atomic::{AtomicUsize, Ordering},
            Arc,
        },
        task::{Context, Poll, Wake, Waker},
    };

    use super::AfterOthers;

    struct CountWakes(AtomicUsize);

    impl Wake for CountWakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn a_turn_for_the_others_queues_the_task_once_and_ends_on_its_next_poll() {
        let wakes = Arc::new(CountWakes(AtomicUsize::new(0)));
        let waker = Waker::from(Arc::clone(&wakes));
        let mut context = Context::from_waker(&waker);
        let mut turn = pin!(AfterOthers::default());
        assert_eq!(turn.as_mut().poll(&mut context), Poll::Pending);
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1, "queued again at once");
        assert_eq!(turn.as_mut().poll(&mut context), Poll::Ready(()));
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1, "and only once");
    }
}
