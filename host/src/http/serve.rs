//! The accept loop: HTTP/1 and HTTP/2 connections served by hyper under limits a public server
//! needs, and a shutdown that cannot be held up by a client.
//!
//! - A client must send a request's headers within `header_read_timeout`, so connections that
//!   trickle half a header (or say nothing) are closed instead of held forever.
//! - At most `max_connections` are served at once; one more is answered `503` and closed at
//!   once, so a flood of idle sockets cannot starve the process of file descriptors.
//! - On shutdown the listener closes, every connection is told to finish its current request
//!   and close; streams (SSE, followed logs) end through the same shutdown token in their own
//!   handlers. Whatever is still open after the grace period is dropped.

use std::{
    convert::Infallible,
    future::Future,
    net::SocketAddr,
    pin::pin,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    task::Poll,
    time::Duration,
};

use axum::{body::Body, Router};
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto::Builder,
    service::TowerToHyperService,
};
use tokio::{
    io::AsyncWriteExt,
    net::{TcpListener, TcpStream},
    sync::{watch, Notify, Semaphore},
};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// Limits and shutdown of the accept loop.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub header_read_timeout: Duration,
    pub max_connections: usize,
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
        .enable_connect_protocol();
    let slots = Arc::new(Semaphore::new(options.max_connections));
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
            tokio::spawn(refuse(stream, peer, options.max_connections));
            continue;
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(
            app.clone()
                .map_request(|request: hyper::Request<Incoming>| request.map(Body::new))
                .map_err(|never: Infallible| never),
        );
        let builder = builder.clone();
        let stop = Arc::clone(&stop);
        let open = open_rx.clone();
        tokio::spawn(async move {
            let mut connection =
                pin!(builder.serve_connection_with_upgrades(TokioIo::new(stream), service));
            let ended = stop.until_stopped(connection.as_mut()).await;
            let result = match ended {
                Some(result) => result,
                None => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(error) = result {
                tracing::debug!(%peer, %error, "connection ended with an error");
            }
            drop(slot);
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

/// Answers a connection over the limit with a JSON 503 and closes it.
async fn refuse(mut stream: TcpStream, peer: SocketAddr, limit: usize) {
    tracing::warn!(%peer, limit, "connection refused: server.max_connections reached");
    let body = format!(
        "{{\"error\":\"too_many_connections\",\"message\":\"the server holds its maximum of {limit} connections (server.max_connections); retry shortly\"}}"
    );
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
