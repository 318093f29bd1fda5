//! The accept loop: HTTP/1 and HTTP/2 connections served by hyper under limits a public server
//! needs, and a shutdown that cannot be held up by a client.
//!
//! - A client must send a request's headers within `header_read_timeout`, so connections that
//!   trickle half a header (or say nothing) are closed instead of held forever. Beyond hyper's
//!   own header timer (HTTP/1, from the first byte on), each connection has an idle watchdog:
//!   one that has not started a request that long after it opened is shut down, whatever the
//!   protocol — nothing sent at all, half an HTTP/2 preface, an HTTP/2 connection that opens no
//!   stream. Once it has served, it may idle for [`KEEP_ALIVE_IDLE`] between requests (a client
//!   reusing a connection just as the server closes it would see its request fail, so that
//!   pause is kept long); a streamed answer counts as busy until its body ends. HTTP/2 also
//!   pings, so a vanished peer is noticed while a stream is open.
//! - At most `max_connections` are served at once, and at most `max_connections_per_address`
//!   from one client address; one more is answered `503` and closed at once, so a flood of
//!   idle sockets cannot starve the process of file descriptors, nor one client the others.
//!   Each request carries its connection's [`ClientAddress`] (for the per-address stream cap).
//! - On shutdown the listener closes, every connection is told to finish its current request
//!   and close; streams (SSE, followed logs) end through the same shutdown token in their own
//!   handlers. Whatever is still open after the grace period is dropped.

use std::{
    future::Future,
    net::SocketAddr,
    pin::{pin, Pin},
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
        Arc,
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use axum::{
    body::{Body, Bytes},
    Router,
};
use futures_util::FutureExt;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto::Builder,
};
use tokio::{
    io::AsyncWriteExt,
    net::{TcpListener, TcpStream},
    sync::{watch, Notify, Semaphore},
};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use super::shares::{address_holder, ClientAddress, Shares};

/// Limits and shutdown of the accept loop.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub header_read_timeout: Duration,
    pub max_connections: usize,
    /// Connections one client address may hold at once.
    pub max_connections_per_address: usize,
    /// Cancelled when the host stops: no new connections, open ones finish and close.
    pub shutdown: CancellationToken,
    /// How long open connections may take to finish after `shutdown`.
    pub grace: Duration,
}

/// How serving ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Drained {
    /// Connections still open when the grace period ran out (dropped).
    pub abandoned: usize,
}

/// How long a refused connection may take to read its 503.
const REFUSAL_WRITE_LIMIT: Duration = Duration::from_secs(1);
/// Pause after a failed accept (e.g. out of file descriptors) so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);
/// How often HTTP/2 pings a peer, and how long it waits for the answer.
const H2_KEEP_ALIVE: Duration = Duration::from_secs(20);
/// How long a connection that has served a request may wait for the next one.
const KEEP_ALIVE_IDLE: Duration = Duration::from_secs(75);

/// Serves `app` on `listener` until `options.shutdown` is cancelled and open connections have
/// finished (or the grace period ran out).
pub async fn serve(listener: TcpListener, app: Router, options: ServeOptions) -> Drained {
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(options.header_read_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(H2_KEEP_ALIVE))
        .keep_alive_timeout(H2_KEEP_ALIVE)
        .enable_connect_protocol();
    let idle_limit = options.header_read_timeout;
    let slots = Arc::new(Semaphore::new(options.max_connections));
    let per_address = Shares::new(options.max_connections_per_address);
    let stop = StopSignal::follow(options.shutdown.clone());
    // Each connection task holds a receiver; the sender sees when all are gone.
    let (open_tx, open_rx) = watch::channel(());
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "accepting a connection failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
            _ = options.shutdown.cancelled() => break,
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            tokio::spawn(refuse(stream, peer, Refusal::Full(options.max_connections)));
            continue;
        };
        let Some(share) = per_address.try_take(address_holder(peer.ip())) else {
            let limit = options.max_connections_per_address;
            tokio::spawn(refuse(stream, peer, Refusal::AddressShare(limit)));
            continue;
        };
        let client = ClientAddress(peer.ip());
        let _ = stream.set_nodelay(true);
        let activity = Arc::new(Activity::new());
        let service = {
            let (app, activity) = (app.clone(), Arc::clone(&activity));
            hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
                // Held by the answer's body: a streamed answer keeps the connection busy.
                let busy = activity.begin();
                request.extensions_mut().insert(client);
                app.clone()
                    .oneshot(request.map(Body::new))
                    .map(move |answer| {
                        answer.map(|answer| {
                            answer.map(|body| {
                                Body::new(Tracked {
                                    inner: body,
                                    _busy: busy,
                                })
                            })
                        })
                    })
            })
        };
        let builder = builder.clone();
        let stop = Arc::clone(&stop);
        let open = open_rx.clone();
        tokio::spawn(async move {
            let mut connection =
                pin!(builder.serve_connection_with_upgrades(TokioIo::new(stream), service));
            let ended = tokio::select! {
                ended = stop.until_stopped(connection.as_mut()) => ended.map(Ended::Done).unwrap_or(Ended::Stopped),
                _ = activity.idle_for(idle_limit, KEEP_ALIVE_IDLE) => Ended::Idle,
            };
            let result = match ended {
                Ended::Done(result) => result,
                Ended::Stopped => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
                Ended::Idle => {
                    tracing::debug!(%peer, "connection closed: idle (no request within server.header_read_timeout_secs, or none for a while after the last)");
                    connection.as_mut().graceful_shutdown();
                    // A peer that does not take the goodbye either is dropped.
                    tokio::time::timeout(idle_limit, connection)
                        .await
                        .unwrap_or(Ok(()))
                }
            };
            if let Err(error) = result {
                tracing::debug!(%peer, %error, "connection ended with an error");
            }
            drop((slot, share));
            drop(open);
        });
    }
    drop(listener);
    drop(open_rx);
    let finished = tokio::time::timeout(options.grace, open_tx.closed()).await;
    Drained {
        abandoned: if finished.is_ok() {
            0
        } else {
            open_tx.receiver_count()
        },
    }
}

/// Why a connection task stopped driving its connection.
enum Ended<T> {
    Done(T),
    Stopped,
    Idle,
}

/// What one connection is doing, for its idle watchdog: requests in flight (an answer's body
/// included) and when the last one ended. Per connection, so no lock is shared.
struct Activity {
    born: Instant,
    /// Whether a request has started on it.
    served: AtomicBool,
    in_flight: AtomicUsize,
    /// Milliseconds after `born` when it last became idle.
    idle_since_ms: AtomicU64,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            born: Instant::now(),
            served: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(0),
        }
    }

    fn begin(self: &Arc<Self>) -> Busy {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        self.served.store(true, Ordering::SeqCst);
        Busy(Arc::clone(self))
    }

    /// Completes once no request has been in flight for `first` since it opened (before its
    /// first request) or for `between` (after one).
    async fn idle_for(&self, first: Duration, between: Duration) {
        loop {
            let limit = if self.served.load(Ordering::SeqCst) {
                between
            } else {
                first
            };
            let wait = if self.in_flight.load(Ordering::SeqCst) == 0 {
                let since = Duration::from_millis(self.idle_since_ms.load(Ordering::SeqCst));
                let idle = self.born.elapsed().saturating_sub(since);
                if idle >= limit {
                    return;
                }
                limit - idle
            } else {
                limit
            };
            tokio::time::sleep(wait).await;
        }
    }
}

/// One request (or answer body) in flight on a connection.
struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        let activity = &self.0;
        let now = activity.born.elapsed().as_millis() as u64;
        activity.idle_since_ms.store(now, Ordering::SeqCst);
        activity.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// An answer's body that keeps its connection counted busy until it ends or is dropped.
struct Tracked {
    inner: Body,
    _busy: Busy,
}

impl hyper::body::Body for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The host's stop as every connection task sees it. Each connection checks it whenever it is
/// polled (twice per request when an answer waits on a plugin); a cancellation token takes a
/// lock shared by all connections on each check, this only loads a flag.
struct StopSignal {
    stopped: AtomicBool,
    notify: Notify,
}

impl StopSignal {
    /// A signal that is set (and wakes every waiting connection) when `token` is cancelled.
    fn follow(token: CancellationToken) -> Arc<StopSignal> {
        let signal = Arc::new(StopSignal {
            stopped: AtomicBool::new(false),
            notify: Notify::new(),
        });
        let setter = Arc::clone(&signal);
        tokio::spawn(async move {
            token.cancelled().await;
            setter.stopped.store(true, Ordering::SeqCst);
            setter.notify.notify_waiters();
        });
        signal
    }

    /// Drives `connection` until it ends (`Some` with its result) or the host stops (`None`).
    async fn until_stopped<F: Future>(
        &self,
        mut connection: std::pin::Pin<&mut F>,
    ) -> Option<F::Output> {
        let mut woken = pin!(self.notify.notified());
        let mut registered = false;
        std::future::poll_fn(|cx| {
            // Registered once, with this task's waker (which stays the same for the task):
            // `notify_waiters` wakes it from then on, so later polls need only the flag.
            if !registered {
                registered = true;
                if woken.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(None);
                }
            }
            if self.stopped.load(Ordering::SeqCst) {
                return Poll::Ready(None);
            }
            connection.as_mut().poll(cx).map(Some)
        })
        .await
    }
}

/// Why a connection is refused.
#[derive(Debug, Clone, Copy)]
enum Refusal {
    /// `server.max_connections` are open.
    Full(usize),
    /// Its client address holds `server.max_connections_per_address`.
    AddressShare(usize),
}

/// Answers a connection over a limit with a JSON 503 and closes it.
async fn refuse(mut stream: TcpStream, peer: SocketAddr, why: Refusal) {
    let body = match why {
        Refusal::Full(limit) => {
            tracing::warn!(%peer, limit, "connection refused: server.max_connections reached");
            format!(
                "{{\"error\":\"too_many_connections\",\"message\":\"the server holds its maximum of {limit} connections (server.max_connections); retry shortly\"}}"
            )
        }
        Refusal::AddressShare(limit) => {
            tracing::warn!(%peer, limit, "connection refused: server.max_connections_per_address reached");
            format!(
                "{{\"error\":\"too_many_connections_for_address\",\"message\":\"this client address holds its maximum of {limit} connections (server.max_connections_per_address); close some and retry\"}}"
            )
        }
    };
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(REFUSAL_WRITE_LIMIT, async {
        let _ = stream.write_all(answer.as_bytes()).await;
        let _ = stream.shutdown().await;
    })
    .await;
}
