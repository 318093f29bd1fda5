//! [`AfterOthers`]: one turn of the worker for the tasks queued behind this one, shared by the
//! request timeout (`http::layers::RequestTimeout`) and the in-process plugin call
//! (`plugin::copy`).

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

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
/// Two turns taken in the same poll are one: a task woken while it runs is queued once.
#[derive(Default)]
pub(crate) struct AfterOthers {
    yielded: bool,
}

impl Future for AfterOthers {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<()> {
        if self.yielded {
            return Poll::Ready(());
        }
        self.yielded = true;
        context.waker().wake_by_ref();
        Poll::Pending
    }
}

/// A waker that counts its wakes, for tests of futures that queue themselves.
#[cfg(test)]
pub(crate) fn counting_waker() -> (
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
    std::task::Waker,
) {
    use std::sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    };

    struct CountWakes(Arc<AtomicUsize>);

    impl std::task::Wake for CountWakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    let wakes = Arc::new(AtomicUsize::new(0));
    let waker = std::task::Waker::from(Arc::new(CountWakes(Arc::clone(&wakes))));
    (wakes, waker)
}

#[cfg(test)]
mod tests {
    use std::{
        future::Future,
        pin::pin,
        sync::atomic::Ordering,
        task::{Context, Poll},
    };

    use super::{counting_waker, AfterOthers};

    #[test]
    fn a_turn_for_the_others_queues_the_task_once_and_ends_on_its_next_poll() {
        let (wakes, waker) = counting_waker();
        let mut context = Context::from_waker(&waker);
        let mut turn = pin!(AfterOthers::default());
        assert_eq!(turn.as_mut().poll(&mut context), Poll::Pending);
        assert_eq!(wakes.load(Ordering::SeqCst), 1, "queued again at once");
        assert_eq!(turn.as_mut().poll(&mut context), Poll::Ready(()));
        assert_eq!(wakes.load(Ordering::SeqCst), 1, "and only once");
    }
}
