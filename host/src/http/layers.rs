//! The host's own layers as concrete tower services: [`EdgeLayer`] (request id, metrics, the
//! JSON error shape) outermost and [`AuthLayer`] innermost.
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
    time::Instant,
};

use axum::{
    body::Body,
    extract::{MatchedPath, Request},
    http::{header, HeaderValue},
    response::{IntoResponse, Response},
};
use futures_util::future::Either;
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use super::{
    error::{self, ApiError},
    metrics::Metrics,
};
use crate::auth::KeyRing;

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

/// Resolves the caller's key into a [`crate::auth::Principal`] extension; refuses a key that
/// matches nothing.
#[derive(Clone)]
pub struct AuthLayer {
    ring: Arc<KeyRing>,
}

impl AuthLayer {
    pub fn new(ring: Arc<KeyRing>) -> AuthLayer {
        AuthLayer { ring }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = Authenticate<S>;

    fn layer(&self, inner: S) -> Authenticate<S> {
        Authenticate {
            inner,
            ring: Arc::clone(&self.ring),
        }
    }
}

#[derive(Clone)]
pub struct Authenticate<S> {
    inner: S,
    ring: Arc<KeyRing>,
}

impl<S> Service<Request> for Authenticate<S>
where
    S: Service<Request, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = Either<std::future::Ready<Result<Response, S::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request) -> Self::Future {
        match self.ring.resolve(request.headers()) {
            Ok(principal) => {
                if let Some(principal) = principal {
                    request.extensions_mut().insert(principal);
                }
                Either::Right(self.inner.call(request))
            }
            Err(refused) => Either::Left(std::future::ready(Ok(refused.into_response()))),
        }
    }
}
