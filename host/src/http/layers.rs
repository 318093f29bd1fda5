//! The host's own layers as concrete tower services, outermost first: [`EdgeLayer`] (request
//! id, metrics, the JSON error shape), then (after tracing) [`RequestTimeoutLayer`], then
//! [`AuthLayer`].
//!
//! Why not `middleware::from_fn`: it boxes each request's future and clones the inner service
//! stack per request. A request that waits on a plugin is polled again later, when those boxes
//! have gone cold in the cache; with a thousand such requests in flight, that was a large part
//! of what a plugin route cost beyond `/health`. These futures are plain structs inside one
//! another, and `call` uses the inner service it was made ready on (tower's contract) instead
//! of cloning it. (The router still clones each route's boxed stack once per request.)

use std::{
    future::Future,
    pin::Pin,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, OnceLock,
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use axum::{
    body::Body,
    extract::{MatchedPath, Request},
    http::{header, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
};
use futures_util::{future::Either, FutureExt as _};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use super::refusals::{Asked, Refusals};
use super::{
    error::{self, ApiError},
    metrics::Metrics,
};
use crate::{audit::Auditor, auth::KeyRing, turn::AfterOthers};

/// Request id, metrics and JSON errors, around everything else.
#[derive(Clone)]
pub struct EdgeLayer {
    metrics: Arc<Metrics>,
}

impl EdgeLayer {
    pub fn new(metrics: Arc<Metrics>) -> EdgeLayer {
        EdgeLayer { metrics }
    }
}

impl<S> Layer<S> for EdgeLayer {
    type Service = Edge<S>;

    fn layer(&self, inner: S) -> Edge<S> {
        Edge {
            inner,
            metrics: Arc::clone(&self.metrics),
        }
    }
}

#[derive(Clone)]
pub struct Edge<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

impl<S, B> Service<Request> for Edge<S>
where
    S: Service<Request, Response = Response<B>>,
    B: axum::body::HttpBody<Data = axum::body::Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = EdgeFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request) -> Self::Future {
        let id = request_id(&request);
        request.extensions_mut().insert(id.clone());
        let route = request.extensions().get::<MatchedPath>().cloned();
        let method = request.method().clone();
        // Before the inner call: its synchronous part (authentication) counts too.
        let started = Instant::now();
        EdgeFuture {
            inner: self.inner.call(request),
            id,
            route,
            method,
            started,
            metrics: Arc::clone(&self.metrics),
        }
    }
}

pin_project! {
    pub struct EdgeFuture<F> {
        #[pin]
        inner: F,
        id: RequestId,
        route: Option<MatchedPath>,
        method: axum::http::Method,
        started: Instant,
        metrics: Arc<Metrics>,
    }
}

impl<F, B, E> Future for EdgeFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: axum::body::HttpBody<Data = axum::body::Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    type Output = Result<Response, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let response = match this.inner.poll(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
            Poll::Ready(Ok(response)) => response,
        };
        this.metrics.count_request(
            this.route.as_ref(),
            this.method,
            response.status(),
            this.started.elapsed(),
        );
        let mut response = json_errors(response.map(Body::new));
        response
            .headers_mut()
            .insert("x-request-id", this.id.0.clone());
        Poll::Ready(Ok(response))
    }
}

/// The id of one request: the caller's `X-Request-Id` when it is sane, else a new one. Kept
/// as the header value it is sent back as (visible ASCII), so echoing it copies nothing.
#[derive(Debug, Clone)]
pub struct RequestId(HeaderValue);

impl RequestId {
    pub fn as_str(&self) -> &str {
        self.0.to_str().unwrap_or_default()
    }
}

/// The caller's `X-Request-Id` when it is sane (letters, digits and `-_.:`, at most 128), else
/// a new one.
fn request_id(request: &Request) -> RequestId {
    request
        .headers()
        .get("x-request-id")
        .filter(|value| {
            let value = value.as_bytes();
            !value.is_empty()
                && value.len() <= 128
                && value
                    .iter()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(b))
        })
        .map(|value| RequestId(value.clone()))
        .unwrap_or_else(new_request_id)
}

fn new_request_id() -> RequestId {
    static PREFIX: OnceLock<String> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(1);
    let prefix = PREFIX.get_or_init(|| {
        let mut bytes = [0u8; 4];
        let _ = getrandom::fill(&mut bytes);
        hex::encode(bytes)
    });
    let id = format!("{prefix}-{:x}", COUNTER.fetch_add(1, Ordering::Relaxed));
    // Hexadecimal digits and `-`: always a valid header value.
    RequestId(
        HeaderValue::from_maybe_shared(axum::body::Bytes::from(id))
            .unwrap_or_else(|_| HeaderValue::from_static("-")),
    )
}

/// Errors made outside our handlers (routing, limits, timeouts) come as bare statuses: give
/// them the JSON error shape too, so a client never sees an HTML or empty error page.
fn json_errors(response: Response) -> Response {
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("application/json"));
    if is_json {
        return response;
    }
    let (mut parts, _) = response.into_parts();
    let replacement = ApiError::new(
        status,
        error::code_for(status),
        error::default_message(status),
    )
    .into_response();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    let (_, body) = replacement.into_parts();
    Response::from_parts(parts, Body::new(body))
}

/// Answers 504 (in the JSON error shape, from [`Edge`]) when a request is not answered within
/// `server.request_timeout_secs`.
///
/// Its timer is made only for a request that waits. An answer ready at its first poll
/// (`/health`) makes none. A request still pending then gives its worker one turn, without
/// waiting for anything: it goes to the back of its worker's queue and is polled again when the
/// tasks queued behind it had theirs; an answer that arrived meanwhile (a plugin's, usually,
/// when every worker is busy) is taken then, and no timer was made, armed or cleared. Only a
/// request still pending after its turn gets its timer, with the deadline counted from the call.
///
/// Why not tower-http's timeout: it makes a timer for every request and arms it before it polls
/// the request, which is two clones of the runtime's handle (a count every worker writes) and an
/// insert into and removal from the timer wheel, per request, on every route. The turn is
/// [`AfterOthers`] (why one turn, and why not `yield_now`, is there).
#[derive(Clone)]
pub struct RequestTimeoutLayer {
    limit: Duration,
}

impl RequestTimeoutLayer {
    pub fn new(limit: Duration) -> RequestTimeoutLayer {
        RequestTimeoutLayer { limit }
    }
}

impl<S> Layer<S> for RequestTimeoutLayer {
    type Service = RequestTimeout<S>;

    fn layer(&self, inner: S) -> RequestTimeout<S> {
        RequestTimeout {
            inner,
            limit: self.limit,
        }
    }
}

/// The service [`RequestTimeoutLayer`] makes.
#[derive(Clone)]
pub struct RequestTimeout<S> {
    inner: S,
    limit: Duration,
}

impl<S> Service<Request> for RequestTimeout<S>
where
    S: Service<Request, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = TimeoutFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        TimeoutFuture {
            // The clock is read first: the inner call's synchronous part counts too. A limit
            // past the clock's range is no limit.
            deadline: tokio::time::Instant::now().checked_add(self.limit),
            inner: self.inner.call(request),
            turn: AfterOthers::default(),
            timer: None,
        }
    }
}

pin_project! {
    /// One request under [`RequestTimeout`]: its answer, or a bare 504 at its deadline.
    pub struct TimeoutFuture<F> {
        deadline: Option<tokio::time::Instant>,
        #[pin]
        inner: F,
        turn: AfterOthers,
        #[pin]
        timer: Option<tokio::time::Sleep>,
    }
}

impl<F, E> Future for TimeoutFuture<F>
where
    F: Future<Output = Result<Response, E>>,
{
    type Output = Result<Response, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        if let Poll::Ready(answer) = this.inner.poll(cx) {
            return Poll::Ready(answer);
        }
        if this.turn.poll_unpin(cx).is_pending() {
            return Poll::Pending;
        }
        let Some(deadline) = *this.deadline else {
            return Poll::Pending;
        };
        if this.timer.is_none() {
            this.timer.set(Some(tokio::time::sleep_until(deadline)));
        }
        match this.timer.as_pin_mut().map(|timer| timer.poll(cx)) {
            Some(Poll::Ready(())) => Poll::Ready(Ok(StatusCode::GATEWAY_TIMEOUT.into_response())),
            _ => Poll::Pending,
        }
    }
}

/// Resolves the caller's key into a [`crate::auth::Principal`] extension; refuses a key that
/// matches nothing.
#[derive(Clone)]
pub struct AuthLayer {
    ring: Arc<KeyRing>,
    auditor: Option<Arc<Auditor>>,
}

impl AuthLayer {
    /// Resolves keys with `ring`; records refusals with `auditor`, when given.
    pub fn new(ring: Arc<KeyRing>, auditor: Option<Arc<Auditor>>) -> AuthLayer {
        AuthLayer { ring, auditor }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = Authenticate<S>;

    fn layer(&self, inner: S) -> Authenticate<S> {
        Authenticate {
            inner,
            ring: Arc::clone(&self.ring),
            auditor: self.auditor.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Authenticate<S> {
    inner: S,
    ring: Arc<KeyRing>,
    auditor: Option<Arc<Auditor>>,
}

impl<S> Service<Request> for Authenticate<S>
where
    S: Service<Request, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = Either<std::future::Ready<Result<Response, S::Error>>, Refusals<S::Future>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request) -> Self::Future {
        match self.ring.resolve(request.headers()) {
            Ok(principal) => {
                let asked = self
                    .auditor
                    .as_ref()
                    .map(|auditor| Asked::of(auditor, &request, principal.as_ref()));
                if let Some(principal) = principal {
                    request.extensions_mut().insert(principal);
                }
                Either::Right(Refusals::new(self.inner.call(request), asked))
            }
            Err(refused) => {
                if let Some(auditor) = &self.auditor {
                    Asked::of(auditor, &request, None).record(
                        401,
                        None,
                        None,
                        Some("the API key is not valid"),
                    );
                }
                Either::Left(std::future::ready(Ok(refused.into_response())))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{
        convert::Infallible,
        future::Future,
        pin::{pin, Pin},
        sync::atomic::Ordering,
        task::{Context, Poll},
        time::Duration,
    };

    use axum::{
        extract::Request,
        http::StatusCode,
        response::{IntoResponse, Response},
    };
    use tower::{service_fn, Layer, Service};

    use super::RequestTimeoutLayer;
    use crate::turn::counting_waker;

    /// An answer that is ready on the given poll (counting from 1), never when `None`. It never
    /// wakes its task itself: anything that polls it again was queued by someone else.
    struct ReadyOnPoll {
        polls: usize,
        ready_on: Option<usize>,
    }

    impl Future for ReadyOnPoll {
        type Output = Result<Response, Infallible>;

        fn poll(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Self::Output> {
            self.polls += 1;
            if self.ready_on == Some(self.polls) {
                Poll::Ready(Ok(StatusCode::OK.into_response()))
            } else {
                Poll::Pending
            }
        }
    }

    fn timed(
        limit: Duration,
        ready_on: Option<usize>,
    ) -> impl Future<Output = Result<Response, Infallible>> {
        let inner = service_fn(move |_: Request| ReadyOnPoll { polls: 0, ready_on });
        RequestTimeoutLayer::new(limit)
            .layer(inner)
            .call(Request::new(axum::body::Body::empty()))
    }

    #[tokio::test]
    async fn an_answer_ready_at_once_takes_no_turn() {
        let (wakes, waker) = counting_waker();
        let mut request = pin!(timed(Duration::from_secs(30), Some(1)));
        let answer = request.as_mut().poll(&mut Context::from_waker(&waker));
        assert!(
            matches!(answer, Poll::Ready(Ok(ref response)) if response.status() == StatusCode::OK)
        );
        assert_eq!(wakes.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn a_waiting_request_gets_one_turn_only() {
        let (wakes, waker) = counting_waker();
        let mut context = Context::from_waker(&waker);
        let mut request = pin!(timed(Duration::from_secs(30), None));
        assert!(request.as_mut().poll(&mut context).is_pending());
        assert_eq!(wakes.load(Ordering::SeqCst), 1, "queued again at once");
        assert!(request.as_mut().poll(&mut context).is_pending());
        assert!(request.as_mut().poll(&mut context).is_pending());
        assert_eq!(
            wakes.load(Ordering::SeqCst),
            1,
            "only one turn: after it the request waits for its answer or its timer"
        );
    }

    /// The limit counts from the call, but no timer is consulted before the request's turn: an
    /// answer that arrives within the turn is taken even when the limit has already passed
    /// (a timer armed at the first poll, as tower-http's is, answers 504 here).
    #[tokio::test]
    async fn an_answer_within_the_turn_is_taken_without_a_timer() {
        let answer = tokio::time::timeout(Duration::from_secs(10), timed(Duration::ZERO, Some(2)))
            .await
            .expect("answered within the bound");
        assert_eq!(answer.map(|r| r.status()).ok(), Some(StatusCode::OK));
    }

    /// `server.request_timeout_secs` has no upper bound: a limit past the clock's range is no
    /// limit, not an overflow.
    #[tokio::test]
    async fn a_limit_past_the_clocks_range_never_fires() {
        let (_, waker) = counting_waker();
        let mut context = Context::from_waker(&waker);
        let mut request = pin!(timed(Duration::from_secs(u64::MAX), None));
        for _ in 0..3 {
            assert!(request.as_mut().poll(&mut context).is_pending());
        }
    }

    #[tokio::test]
    async fn a_request_never_answered_gets_504_at_its_limit() {
        let started = std::time::Instant::now();
        let answer = tokio::time::timeout(
            Duration::from_secs(10),
            timed(Duration::from_millis(50), None),
        )
        .await
        .expect("timed out by the layer, within the bound");
        assert_eq!(
            answer.map(|r| r.status()).ok(),
            Some(StatusCode::GATEWAY_TIMEOUT)
        );
        assert!(
            started.elapsed() >= Duration::from_millis(50),
            "not before its limit"
        );
    }

    #[tokio::test]
    async fn an_answer_ready_when_the_timer_fires_is_taken() {
        let answer = tokio::time::timeout(
            Duration::from_secs(10),
            // Polled a third time only when something wakes it: the timer it armed after its
            // turn does, at the limit. The answer is looked at first, and wins over the 504.
            // (A second long enough that the turn itself never outlasts it.)
            timed(Duration::from_secs(1), Some(3)),
        )
        .await
        .expect("answered within the bound");
        assert_eq!(answer.map(|r| r.status()).ok(), Some(StatusCode::OK));
    }
}
