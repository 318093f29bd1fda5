//! The plugin's HTTP API under its mount (`/api/deployment` by default): an axum [`Router`]
//! served inside the plugin. The host hands each request over the ABI; [`Api::handle`] turns it
//! into an `http::Request`, runs the router, and turns the answer back (a streamed body stays
//! streamed).
//!
//! Layers, outermost first: routing (with the 405 answer made JSON, `Allow` kept), the per-route
//! role check, the handler. Handlers parse and check input, call the coordinator or the catalog, and
//! answer with a [`crate::wire`] type; nothing here runs a deployment.
//!
//! Code map: [`ROUTES`] declares every route once (path, method, least role, handler);
//! `overview` (status, dashboard), `deployments` (trigger, history, detail, logs, cancel,
//! retry), `environments` (the catalog's CRUD and health checks); `error` maps every failure to
//! the JSON error answer; `openapi` the document built from the same
//! handlers.

mod deployments;
mod environments;
mod error;
pub mod openapi;
mod overview;

use std::{convert::Infallible, sync::Arc};

use axum::{
    body::{Body, Bytes},
    extract::{FromRequestParts, State},
    http::{self, header, request::Parts, HeaderValue, Method, StatusCode},
    response::{IntoResponse, Response},
    routing::{MethodFilter, MethodRouter},
    Router,
};
use futures_util::StreamExt as _;
use http_body_util::BodyExt as _;
use plugin_guest::{Caller, Handler, Role};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

pub(crate) use error::ApiError;

use crate::{coordinator::Coordinator, persist::deployments::DeploymentStore};

type Answer = Result<Response, ApiError>;

/// What every handler shares: the coordinator, the cached status answer, and the token that
/// ends streams when the instance stops.
pub(crate) struct ApiState {
    coordinator: Arc<Coordinator>,
    status: overview::StatusCache,
    stop: CancellationToken,
    /// The plugin build's version, reported in answers.
    version: &'static str,
    /// The OpenAPI document served at `openapi.json` (built from these handlers' descriptions).
    openapi: fn() -> &'static [u8],
}

impl ApiState {
    fn deployments(&self) -> DeploymentStore {
        DeploymentStore::new(self.coordinator.records().clone())
    }
}

type Shared = State<Arc<ApiState>>;

/// The plugin's request handler; the library exports it through the root module, and the
/// `rlib` lets benchmarks, the CLI and tests call it in-process.
pub struct Api {
    state: Arc<ApiState>,
    router: Router,
}

impl Api {
    pub fn new(
        coordinator: Arc<Coordinator>,
        version: &'static str,
        openapi: fn() -> &'static [u8],
    ) -> Api {
        let stop = CancellationToken::new();
        tokio::spawn(Arc::clone(&coordinator).health_loop(stop.clone()));
        tokio::spawn(Arc::clone(&coordinator).gate_loop(stop.clone()));
        tokio::spawn(crate::persist::retention::run(
            coordinator.records().clone(),
            coordinator.settings_handle(),
            stop.clone(),
        ));
        let state = Arc::new(ApiState {
            coordinator,
            status: overview::StatusCache::new(),
            stop,
            version,
            openapi,
        });
        let rest = router(Arc::clone(&state));
        let router = match mcp_route(&state, rest.clone()) {
            Some(mcp) => rest.merge(mcp),
            None => rest,
        };
        Api { router, state }
    }
}

/// One route, declared once: the router, its role layer and the OpenAPI test read [`ROUTES`].
pub(crate) struct Route {
    pub(crate) method: Method,
    /// The path after the mount, in axum's syntax (`/deployments/{id}`).
    pub(crate) path: &'static str,
    /// The least role that may call it; `None`: anyone, even without a key.
    pub(crate) needs: Option<Role>,
    /// The handler, for the route's method.
    handler: fn(MethodFilter) -> MethodRouter<Arc<ApiState>>,
}

use axum::routing::on;

/// Every route as `(method, path, least role)`: what the role table's test checks the plugin
/// against, so a route or a role added here is tested without anyone copying it.
pub fn route_roles() -> Vec<(&'static str, &'static str, Option<Role>)> {
    ROUTES
        .iter()
        .map(|route| (route.method.as_str(), route.path, route.needs))
        .collect()
}

pub(crate) const ROUTES: &[Route] = &[
    Route {
        method: Method::GET,
        path: "/status",
        needs: Some(Role::User),
        handler: |method| on(method, overview::status),
    },
    Route {
        method: Method::GET,
        path: "/dashboard",
        needs: Some(Role::User),
        handler: |method| on(method, overview::dashboard),
    },
    Route {
        method: Method::GET,
        path: "/openapi.json",
        // Public, like the host's `/api/openapi.json` it is merged into.
        needs: None,
        handler: |method| on(method, openapi_document),
    },
    Route {
        method: Method::POST,
        path: "/trigger-local",
        needs: Some(Role::Admin),
        handler: |method| on(method, deployments::trigger_local),
    },
    Route {
        method: Method::POST,
        path: "/one-click",
        needs: Some(Role::Admin),
        handler: |method| on(method, deployments::one_click),
    },
    Route {
        method: Method::GET,
        path: "/history",
        needs: Some(Role::Developer),
        handler: |method| on(method, deployments::history),
    },
    Route {
        method: Method::GET,
        path: "/deployments/{id}",
        needs: Some(Role::Developer),
        handler: |method| on(method, deployments::detail),
    },
    Route {
        method: Method::GET,
        path: "/deployments/{id}/logs",
        needs: Some(Role::Developer),
        handler: |method| on(method, deployments::logs),
    },
    Route {
        method: Method::POST,
        path: "/deployments/{id}/cancel",
        needs: Some(Role::Admin),
        handler: |method| on(method, deployments::cancel),
    },
    Route {
        method: Method::POST,
        path: "/deployments/{id}/retry",
        needs: Some(Role::Admin),
        handler: |method| on(method, deployments::retry),
    },
    Route {
        method: Method::POST,
        path: "/deployments/{id}/approve",
        needs: Some(Role::Admin),
        handler: |method| on(method, deployments::approve),
    },
    Route {
        method: Method::POST,
        path: "/deployments/{id}/reject",
        needs: Some(Role::Admin),
        handler: |method| on(method, deployments::reject),
    },
    Route {
        method: Method::POST,
        path: "/deployments/{id}/rollback",
        needs: Some(Role::Admin),
        handler: |method| on(method, deployments::rollback),
    },
    Route {
        method: Method::GET,
        path: "/environments",
        needs: Some(Role::Developer),
        handler: |method| on(method, environments::list),
    },
    Route {
        method: Method::POST,
        path: "/environments",
        needs: Some(Role::Admin),
        handler: |method| on(method, environments::create),
    },
    Route {
        method: Method::GET,
        path: "/environments/{id}",
        needs: Some(Role::Developer),
        handler: |method| on(method, environments::get),
    },
    Route {
        method: Method::PUT,
        path: "/environments/{id}",
        needs: Some(Role::Admin),
        handler: |method| on(method, environments::replace),
    },
    Route {
        method: Method::DELETE,
        path: "/environments/{id}",
        needs: Some(Role::Admin),
        handler: |method| on(method, environments::delete),
    },
    Route {
        method: Method::POST,
        path: "/environments/{id}/health-check",
        needs: Some(Role::Developer),
        handler: |method| on(method, environments::health_check),
    },
];

/// The router over [`ROUTES`]: each route behind its role layer, unknown paths 404 and wrong
/// methods 405, both as JSON errors.
fn router(state: Arc<ApiState>) -> Router {
    let mut router = Router::new();
    for route in ROUTES {
        let Ok(filter) = MethodFilter::try_from(route.method.clone()) else {
            tracing::error!(method = %route.method, path = route.path, "route skipped: no method filter");
            continue;
        };
        let mut method_router = (route.handler)(filter);
        if let Some(role) = route.needs {
            method_router = method_router.route_layer(NeedsRole(role));
        }
        router = router.route(route.path, method_router);
    }
    router
        .fallback(|request: axum::extract::Request| async move {
            ApiError::NoRoute(request.uri().path().to_owned())
        })
        // The host enforces `server.body_limit_bytes` before a request reaches the plugin.
        .layer(axum::extract::DefaultBodyLimit::disable())
        .with_state(state)
}

/// `/mcp`, the Model Context Protocol endpoint (Streamable HTTP, stateless: no session to
/// lose in a hot swap), unless `mcp.enabled` is off. It is not in [`ROUTES`]: it speaks
/// JSON-RPC, not the REST API the OpenAPI document describes. Its tools call `rest` as the
/// caller, so the routes' own role checks and views apply to them; the endpoint itself needs
/// a key (any role), and a browser `Origin` must be loopback or in `mcp.allowed_origins`.
fn mcp_route(state: &ApiState, rest: Router) -> Option<Router> {
    use rmcp::transport::streamable_http_server::{
        session::never::NeverSessionManager, StreamableHttpServerConfig, StreamableHttpService,
    };
    let settings = &state.coordinator.settings().mcp;
    if !settings.enabled {
        return None;
    }
    let server = crate::mcp::McpServer::new(
        Arc::new(RouterClient(rest)),
        settings.read_only,
        state.version,
        state.stop.clone(),
    );
    let rules: Arc<Vec<crate::mcp::OriginRule>> = Arc::new(
        crate::mcp::OriginRule::loopback()
            .into_iter()
            .chain(
                settings
                    .allowed_origins
                    .iter()
                    .filter_map(|origin| crate::mcp::OriginRule::parse(origin).ok()),
            )
            .collect(),
    );
    let config = StreamableHttpServerConfig::default()
        .with_legacy_session_mode(false)
        // Answers stream (SSE), so a long `wait` is not cut by the host's request timeout.
        .with_json_response(false)
        // Not the instance's stop token: at a swap, answers in flight (a `wait` the stop ends)
        // must still reach the client. Stateless, so there are no sessions to end.
        .with_cancellation_token(CancellationToken::new())
        // The host's own `server.body_limit_bytes` applies before this.
        .with_max_request_body_bytes(usize::MAX)
        // Which names the host answers to is the operator's business; keys guard the door.
        // The Origin is checked before the key (below), as the MCP specification asks.
        .disable_allowed_hosts();
    let service = StreamableHttpService::new(
        move || Ok(server.clone()),
        Arc::new(NeverSessionManager::default()),
        config,
    );
    let service = tower::ServiceBuilder::new()
        .layer(NeedsRole(Role::User))
        .map_response(|response: http::Response<_>| response.map(Body::new))
        .service(service);
    // A browser page of another origin gets 403 before anything else, key or not.
    let check_origin = move |request: axum::extract::Request, next: axum::middleware::Next| {
        let rules = Arc::clone(&rules);
        async move {
            let origin = request
                .headers()
                .get(header::ORIGIN)
                .map(|value| value.to_str().unwrap_or("\u{0}"));
            if crate::mcp::origin_allowed(origin, &rules) {
                next.run(request).await
            } else {
                ApiError::ForbiddenOrigin(origin.unwrap_or_default().to_owned()).into_response()
            }
        }
    };
    Some(
        Router::new()
            .route_service("/mcp", service)
            .layer(axum::middleware::from_fn(check_origin)),
    )
}

/// The deployment API as MCP tools call it: the plugin's own router, as the tool's caller.
struct RouterClient(Router);

impl crate::mcp::ApiClient for RouterClient {
    async fn call(
        &self,
        caller: Option<&Caller>,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<(u16, serde_json::Value), String> {
        let body = match body {
            Some(body) => Body::from(body.to_string()),
            None => Body::empty(),
        };
        let mut request = http::Request::builder()
            .method(method)
            .uri(path)
            .header(header::CONTENT_TYPE, "application/json")
            .body(body)
            .map_err(|error| format!("cannot build the request: {error}"))?;
        request
            .extensions_mut()
            .insert(RequestId(format!("mcp-{}", uuid_like())));
        if let Some(caller) = caller {
            request.extensions_mut().insert(caller.clone());
        }
        let response = match self.0.clone().oneshot(request).await {
            Ok(response) => response,
            Err(infallible) => match infallible {},
        };
        let status = response.status().as_u16();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|error| format!("cannot read the answer: {error}"))?
            .to_bytes();
        let value = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
        Ok((status, value))
    }
}

/// A short random id for requests MCP tools make.
fn uuid_like() -> String {
    let mut random = [0u8; 6];
    if getrandom::fill(&mut random).is_err() {
        random = [0; 6];
    }
    hex::encode(random)
}

/// The role layer: 401 without a key, 403 below the role, else the route. A plain tower
/// service (no boxed future): it runs on every request.
#[derive(Clone, Copy)]
struct NeedsRole(Role);

impl<S> tower::Layer<S> for NeedsRole {
    type Service = RoleCheck<S>;

    fn layer(&self, inner: S) -> RoleCheck<S> {
        RoleCheck {
            inner,
            needs: self.0,
        }
    }
}

#[derive(Clone)]
struct RoleCheck<S> {
    inner: S,
    needs: Role,
}

impl<S> tower::Service<axum::extract::Request> for RoleCheck<S>
where
    S: tower::Service<axum::extract::Request, Response = Response, Error = Infallible>,
{
    type Response = Response;
    type Error = Infallible;
    type Future =
        futures_util::future::Either<S::Future, std::future::Ready<Result<Response, Infallible>>>;

    fn poll_ready(
        &mut self,
        context: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        self.inner.poll_ready(context)
    }

    fn call(&mut self, request: axum::extract::Request) -> Self::Future {
        use futures_util::future::Either;
        let caller = request
            .extensions()
            .get::<Caller>()
            .map(|caller| caller.role);
        match plugin_guest::Refusal::of(caller, self.needs) {
            None => Either::Left(self.inner.call(request)),
            Some(refusal) => Either::Right(std::future::ready(Ok(
                ApiError::Refused(refusal).into_response()
            ))),
        }
    }
}

/// The router answers a method a path does not take with an empty 405 and `Allow` (set as the
/// answer leaves the route, so this runs around the whole router); this makes it the JSON error
/// answer. `HEAD` is answered by every `GET` route and not listed.
fn method_not_allowed(method: &Method, uri: &http::Uri, response: Response) -> Response {
    if response.status() != StatusCode::METHOD_NOT_ALLOWED {
        return response;
    }
    let allowed = response
        .headers()
        .get(header::ALLOW)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|method| !method.is_empty() && *method != "HEAD")
        .map(str::to_owned)
        .collect();
    ApiError::MethodNotAllowed {
        method: method.to_string(),
        path: uri.path().to_owned(),
        allowed,
    }
    .into_response()
}

async fn openapi_document(State(api): Shared) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        (api.openapi)(),
    )
        .into_response()
}

/// The caller the host authenticated, if any.
pub(crate) struct Who(pub(crate) Option<Caller>);

use crate::wire;

impl Who {
    /// Whether the caller may see what users may not (connection details, errors, output).
    pub(crate) fn view(&self) -> wire::View {
        match &self.0 {
            Some(caller) if caller.role >= Role::Developer => wire::View::Details,
            _ => wire::View::User,
        }
    }

    pub(crate) fn name(&self) -> &str {
        self.0.as_ref().map_or("", |caller| caller.name.as_str())
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Who {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Who, Infallible> {
        Ok(Who(parts.extensions.get::<Caller>().cloned()))
    }
}

/// The host's id of the request, carried onto the deployment it starts and its log lines.
#[derive(Clone)]
pub(crate) struct RequestId(pub(crate) String);

impl<S: Send + Sync> FromRequestParts<S> for RequestId {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<RequestId, Infallible> {
        Ok(parts
            .extensions
            .get::<RequestId>()
            .cloned()
            .unwrap_or(RequestId(String::new())))
    }
}

/// The `{id}` segment of a route's path. One that cannot be an id (not UTF-8 once decoded)
/// names nothing: 404, like any unknown id.
pub(crate) struct Id(pub(crate) String);

impl<S: Send + Sync> FromRequestParts<S> for Id {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Id, ApiError> {
        match axum::extract::Path::<String>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(id)) => Ok(Id(id)),
            Err(_) => Err(ApiError::NoRoute(parts.uri.path().to_owned())),
        }
    }
}

/// The query's parameters, decoded as the host's other routes decode them (first value wins).
pub(crate) struct Params(String);

impl Params {
    pub(crate) fn get(&self, name: &str) -> Option<String> {
        plugin_guest::query_param(&self.0, name)
    }

    /// A number within `range`, `default` when absent; the error names the parameter.
    pub(crate) fn number(
        &self,
        name: &'static str,
        default: usize,
        range: std::ops::RangeInclusive<usize>,
    ) -> Result<usize, ApiError> {
        let Some(text) = self.get(name) else {
            return Ok(default);
        };
        match text.parse::<usize>() {
            Ok(value) if range.contains(&value) => Ok(value),
            _ => Err(ApiError::field(
                name,
                format!(
                    "{text:?} is not a number between {} and {}",
                    range.start(),
                    range.end()
                ),
            )),
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Params {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Params, Infallible> {
        Ok(Params(parts.uri.query().unwrap_or_default().to_owned()))
    }
}

/// The mount the host serves this plugin under, for absolute links.
pub(crate) struct Mount(String);

impl<S: Send + Sync> FromRequestParts<S> for Mount {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Mount, Infallible> {
        let mount = parts
            .headers
            .get("x-forwarded-prefix")
            .and_then(|value| value.to_str().ok())
            .unwrap_or("/api/deployment")
            .trim_end_matches('/')
            .to_owned();
        Ok(Mount(mount))
    }
}

/// A request as the router takes it, or why it cannot be one (a header or target no HTTP
/// request may carry: 400 naming it).
pub struct ApiRequest(Result<http::Request<Body>, ApiError>);

/// The host's request, imported with one copy of each field: the ABI's text goes straight into
/// the `http` types.
impl plugin_guest::Import for ApiRequest {
    fn import(request: plugin_api::PluginRequest) -> ApiRequest {
        let body = request.body.as_slice();
        ApiRequest(http_request(
            request.method.as_str(),
            request.path.as_str(),
            request.query.as_str(),
            request
                .headers
                .iter()
                .map(|pair| (pair.0.as_str(), pair.1.as_str())),
            (!body.is_empty()).then(|| Bytes::copy_from_slice(body)),
            request.request_id.as_str(),
            request
                .principal
                .as_ref()
                .into_option()
                .map(|principal| Caller {
                    name: principal.name.as_str().to_owned(),
                    role: principal.role,
                }),
        ))
    }
}

/// A plain request (the CLI's, a test's), as the host would have handed it over.
impl From<plugin_guest::Request> for ApiRequest {
    fn from(request: plugin_guest::Request) -> ApiRequest {
        ApiRequest(http_request(
            &request.method,
            &request.path,
            &request.query,
            request
                .headers
                .iter()
                .map(|(name, value)| (name.as_str(), value.as_str())),
            (!request.body.is_empty()).then(|| Bytes::from(request.body)),
            &request.request_id,
            request.principal,
        ))
    }
}

/// Builds the router's request. Empty path segments do not count: `/status/` and `//status`
/// are `/status`.
fn http_request<'a>(
    method: &str,
    path: &str,
    query: &str,
    headers: impl ExactSizeIterator<Item = (&'a str, &'a str)>,
    body: Option<Bytes>,
    request_id: &str,
    caller: Option<Caller>,
) -> Result<http::Request<Body>, ApiError> {
    let mut uri = String::with_capacity(path.len() + query.len() + 2);
    for segment in path.split('/').filter(|segment| !segment.is_empty()) {
        uri.push('/');
        uri.push_str(segment);
    }
    if uri.is_empty() {
        uri.push('/');
    }
    if !query.is_empty() {
        uri.push('?');
        uri.push_str(query);
    }
    let count = headers.len();
    let too_many = || {
        ApiError::field(
            "headers",
            format!("{count} fields are more than a request may carry"),
        )
    };
    let mut map = http::HeaderMap::try_with_capacity(count).map_err(|_| too_many())?;
    for (name, value) in headers {
        let name = http::HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| ApiError::field("headers", format!("{name:?} is not a header name")))?;
        let value = HeaderValue::from_str(value).map_err(|_| {
            ApiError::field(
                "headers",
                format!("the value of {name} is not a header value"),
            )
        })?;
        map.try_append(name, value).map_err(|_| too_many())?;
    }
    let mut request = http::Request::new(body.map_or_else(Body::empty, Body::from));
    *request.method_mut() = Method::from_bytes(method.as_bytes())
        .map_err(|_| ApiError::field("method", format!("{method:?} is not an HTTP method")))?;
    *request.uri_mut() = http::Uri::try_from(uri).map_err(|error| {
        ApiError::field("path", format!("is not a valid request target: {error}"))
    })?;
    *request.headers_mut() = map;
    request
        .extensions_mut()
        .insert(RequestId(request_id.to_owned()));
    if let Some(caller) = caller {
        request.extensions_mut().insert(caller);
    }
    Ok(request)
}

/// The router's answer as the host takes it: a body of known length whole, any other streamed.
async fn from_http(response: Response) -> plugin_guest::Response {
    let (parts, body) = response.into_parts();
    let headers = parts
        .headers
        .iter()
        .filter_map(|(name, value)| {
            let value = value.to_str().ok()?;
            Some((name.as_str().to_owned(), value.to_owned()))
        })
        .collect();
    let status = parts.status.as_u16();
    if axum::body::HttpBody::size_hint(&body).exact().is_some() {
        let body = match body.collect().await {
            Ok(collected) => collected.to_bytes().to_vec(),
            Err(error) => {
                tracing::error!("answer body failed: {error}");
                Vec::new()
            }
        };
        return plugin_guest::Response {
            status,
            headers,
            body,
            stream: None,
        };
    }
    let chunks = body
        .into_data_stream()
        .filter_map(|chunk| std::future::ready(chunk.ok().map(|bytes| bytes.to_vec())));
    plugin_guest::Response {
        status,
        headers,
        body: Vec::new(),
        stream: Some(Box::pin(chunks)),
    }
}

impl Handler for Api {
    type Request = ApiRequest;

    async fn handle(&self, request: ApiRequest) -> plugin_guest::Response {
        let response = match request.0 {
            Ok(request) => {
                // Cheap handles (no copy of the text) for the message of a 405.
                let (method, uri) = (request.method().clone(), request.uri().clone());
                match self.router.clone().oneshot(request).await {
                    Ok(response) => method_not_allowed(&method, &uri, response),
                    Err(infallible) => match infallible {},
                }
            }
            Err(error) => error.into_response(),
        };
        from_http(response).await
    }

    async fn shutdown(&self) {
        let state = &self.state;
        state.stop.cancel();
        let host_stopping = crate::persist::runs::host_lifecycle(state.coordinator.records())
            .await
            .is_some_and(|lifecycle| lifecycle.state == "stopping");
        state.coordinator.shutdown(host_stopping).await;
    }
}

/// A JSON answer with a status.
pub(crate) fn json<T: serde::Serialize>(status: StatusCode, body: &T) -> Response {
    (status, axum::Json(body)).into_response()
}

/// A header value from text this API made (ids, mounts); an unusable one is left out.
pub(crate) fn header_value(text: &str) -> Option<HeaderValue> {
    HeaderValue::from_str(text).ok()
}

#[cfg(test)]
mod tests {
    use abi_stable::std_types::{ROption, RString, RVec, Tuple2};
    use plugin_api::{PluginRequest, Principal};
    use plugin_guest::Import as _;

    use super::*;

    fn abi_request(path: &str, headers: &[(&str, &str)], body: &[u8]) -> PluginRequest {
        PluginRequest {
            request_id: RString::from("req-7"),
            method: RString::from("POST"),
            path: RString::from(path),
            query: RString::from("limit=2&status=failed"),
            headers: headers
                .iter()
                .map(|(name, value)| Tuple2(RString::from(*name), RString::from(*value)))
                .collect::<RVec<_>>(),
            body: RVec::from(body.to_vec()),
            principal: ROption::RSome(Principal {
                name: RString::from("ops"),
                role: Role::Developer,
            }),
        }
    }

    #[tokio::test]
    async fn the_hosts_request_reaches_the_router_whole() {
        let headers = [
            ("content-type", "application/json"),
            ("x-forwarded-prefix", "/api/deployment"),
            ("x-forwarded-prefix", "/second"),
        ];
        let ApiRequest(imported) =
            ApiRequest::import(abi_request("//deployments//d-1/", &headers, b"{\"a\":1}"));
        let request = imported.unwrap_or_else(|error| panic!("not imported: {error:?}"));
        assert_eq!(request.method(), Method::POST);
        assert_eq!(request.uri(), "/deployments/d-1?limit=2&status=failed");
        assert_eq!(request.headers()["content-type"], "application/json");
        let prefixes: Vec<_> = request
            .headers()
            .get_all("x-forwarded-prefix")
            .iter()
            .collect();
        assert_eq!(prefixes, ["/api/deployment", "/second"]);
        assert_eq!(
            request
                .extensions()
                .get::<RequestId>()
                .map(|id| id.0.as_str()),
            Some("req-7")
        );
        let caller = request.extensions().get::<Caller>().cloned();
        assert_eq!(
            caller,
            Some(Caller {
                name: "ops".into(),
                role: Role::Developer
            })
        );
        let body = request
            .into_body()
            .collect()
            .await
            .map(|collected| collected.to_bytes())
            .unwrap_or_default();
        assert_eq!(&body[..], b"{\"a\":1}");
    }

    #[test]
    fn a_request_no_router_could_take_is_refused_naming_what_is_wrong() {
        for (path, headers, wrong) in [
            (
                "/status",
                vec![("bad header", "x")],
                "headers: \"bad header\" is not a header name",
            ),
            (
                "/status",
                vec![("x-a", "line\nbreak")],
                "headers: the value of x-a is not a header value",
            ),
            ("/sta tus", vec![], "path: is not a valid request target"),
        ] {
            let ApiRequest(imported) = ApiRequest::import(abi_request(path, &headers, b""));
            let Err(error) = imported else {
                panic!("{path} {headers:?} was imported");
            };
            let text = error.to_string();
            assert!(text.starts_with(wrong), "{text}");
            assert_eq!(error.into_response().status(), StatusCode::BAD_REQUEST);
        }
    }

    #[test]
    fn a_plain_request_imports_as_the_hosts_does() {
        let plain = plugin_guest::Request {
            request_id: "req-7".into(),
            method: "POST".into(),
            path: "//deployments//d-1/".into(),
            query: "limit=2&status=failed".into(),
            headers: vec![("content-type".into(), "application/json".into())],
            body: b"{}".to_vec(),
            principal: None,
        };
        let ApiRequest(imported) = ApiRequest::from(plain);
        let request = imported.unwrap_or_else(|error| panic!("not imported: {error:?}"));
        assert_eq!(request.uri(), "/deployments/d-1?limit=2&status=failed");
        assert_eq!(request.headers()["content-type"], "application/json");
        assert!(request.extensions().get::<Caller>().is_none());
    }
}
