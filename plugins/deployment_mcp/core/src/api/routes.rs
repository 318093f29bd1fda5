//! Every route, declared once in [`ROUTES`] (method, path, least role, handler): the router is
//! built from the table with the role check as a `route_layer` on each route, and the OpenAPI
//! test and the role table's test read the same table. A wrong method's 405 becomes the JSON
//! error here too.

use std::{convert::Infallible, sync::Arc};

use axum::{
    extract::State,
    http::{self, header, Method, StatusCode},
    response::{IntoResponse, Response},
    routing::{on, MethodFilter, MethodRouter},
    Router,
};
use plugin_guest::{Caller, Role};

use super::{
    audited::Audited,
    deployments,
    endpoints::{self, Endpoint},
    environments, overview, schedules, subscriptions, windows, ApiError, ApiState, Shared,
};

/// One route, declared once: the router, its role layer and the OpenAPI test read [`ROUTES`].
pub(crate) struct Route {
    /// Its method and path after the mount.
    pub(crate) endpoint: &'static Endpoint,
    /// What a call of it does, as its audit entry names it (`subject.verb`).
    pub(crate) action: &'static str,
    /// The least role that may call it; `None`: anyone, even without a key.
    pub(crate) needs: Option<Role>,
    /// The handler, for the route's method.
    handler: fn(MethodFilter) -> MethodRouter<Arc<ApiState>>,
}

/// Every route as `(method, path, least role)`: what the role table's test checks the plugin
/// against, so a route or a role added here is tested without anyone copying it.
pub fn route_roles() -> Vec<(&'static str, &'static str, Option<Role>)> {
    ROUTES
        .iter()
        .map(|route| {
            (
                route.endpoint.method.as_str(),
                route.endpoint.path,
                route.needs,
            )
        })
        .collect()
}

pub(crate) const ROUTES: &[Route] = &[
    Route {
        endpoint: &endpoints::STATUS,
        action: "deployment.status",
        needs: Some(Role::User),
        handler: |method| on(method, overview::status),
    },
    Route {
        endpoint: &endpoints::DASHBOARD,
        action: "dashboard.read",
        needs: Some(Role::User),
        handler: |method| on(method, overview::dashboard),
    },
    Route {
        endpoint: &endpoints::OPENAPI,
        action: "openapi.read",
        // Public, like the host's `/api/openapi.json` it is merged into.
        needs: None,
        handler: |method| on(method, openapi_document),
    },
    Route {
        endpoint: &endpoints::TRIGGER,
        action: "deployment.trigger",
        needs: Some(Role::Admin),
        handler: |method| on(method, deployments::trigger_local),
    },
    Route {
        endpoint: &endpoints::ONE_CLICK,
        action: "deployment.trigger",
        needs: Some(Role::Admin),
        handler: |method| on(method, deployments::one_click),
    },
    Route {
        endpoint: &endpoints::HISTORY,
        action: "deployment.list",
        needs: Some(Role::Developer),
        handler: |method| on(method, deployments::history),
    },
    Route {
        endpoint: &endpoints::DEPLOYMENT,
        action: "deployment.read",
        needs: Some(Role::Developer),
        handler: |method| on(method, deployments::detail),
    },
    Route {
        endpoint: &endpoints::LOGS,
        action: "deployment.logs",
        needs: Some(Role::Developer),
        handler: |method| on(method, deployments::logs),
    },
    Route {
        endpoint: &endpoints::CANCEL,
        action: "deployment.cancel",
        needs: Some(Role::Admin),
        handler: |method| on(method, deployments::cancel),
    },
    Route {
        endpoint: &endpoints::RETRY,
        action: "deployment.retry",
        needs: Some(Role::Admin),
        handler: |method| on(method, deployments::retry),
    },
    Route {
        endpoint: &endpoints::APPROVE,
        action: "deployment.approve",
        needs: Some(Role::Admin),
        handler: |method| on(method, deployments::approve),
    },
    Route {
        endpoint: &endpoints::REJECT,
        action: "deployment.reject",
        needs: Some(Role::Admin),
        handler: |method| on(method, deployments::reject),
    },
    Route {
        endpoint: &endpoints::ROLLBACK,
        action: "deployment.rollback",
        needs: Some(Role::Admin),
        handler: |method| on(method, deployments::rollback),
    },
    Route {
        endpoint: &endpoints::ENVIRONMENTS,
        action: "environment.list",
        needs: Some(Role::Developer),
        handler: |method| on(method, environments::list),
    },
    Route {
        endpoint: &endpoints::CREATE_ENVIRONMENT,
        action: "environment.create",
        needs: Some(Role::Admin),
        handler: |method| on(method, environments::create),
    },
    Route {
        endpoint: &endpoints::ENVIRONMENT,
        action: "environment.read",
        needs: Some(Role::Developer),
        handler: |method| on(method, environments::get),
    },
    Route {
        endpoint: &endpoints::REPLACE_ENVIRONMENT,
        action: "environment.update",
        needs: Some(Role::Admin),
        handler: |method| on(method, environments::replace),
    },
    Route {
        endpoint: &endpoints::DELETE_ENVIRONMENT,
        action: "environment.delete",
        needs: Some(Role::Admin),
        handler: |method| on(method, environments::delete),
    },
    Route {
        endpoint: &endpoints::HEALTH_CHECK,
        action: "environment.health_check",
        needs: Some(Role::Developer),
        handler: |method| on(method, environments::health_check),
    },
    Route {
        endpoint: &endpoints::WINDOWS,
        action: "window.list",
        needs: Some(Role::Developer),
        handler: |method| on(method, windows::list),
    },
    Route {
        endpoint: &endpoints::CREATE_WINDOW,
        action: "window.create",
        needs: Some(Role::Admin),
        handler: |method| on(method, windows::create),
    },
    Route {
        endpoint: &endpoints::EXPLAIN_WINDOWS,
        action: "window.explain",
        needs: Some(Role::Developer),
        handler: |method| on(method, windows::explain),
    },
    Route {
        endpoint: &endpoints::WINDOW,
        action: "window.read",
        needs: Some(Role::Developer),
        handler: |method| on(method, windows::get),
    },
    Route {
        endpoint: &endpoints::DELETE_WINDOW,
        action: "window.delete",
        needs: Some(Role::Admin),
        handler: |method| on(method, windows::delete),
    },
    Route {
        endpoint: &endpoints::CALENDAR,
        action: "calendar.read",
        needs: Some(Role::Developer),
        handler: |method| on(method, windows::calendar),
    },
    Route {
        endpoint: &endpoints::SCHEDULES,
        action: "schedule.list",
        needs: Some(Role::Developer),
        handler: |method| on(method, schedules::list),
    },
    Route {
        endpoint: &endpoints::CREATE_SCHEDULE,
        action: "schedule.create",
        needs: Some(Role::Admin),
        handler: |method| on(method, schedules::create),
    },
    Route {
        endpoint: &endpoints::SCHEDULE,
        action: "schedule.read",
        needs: Some(Role::Developer),
        handler: |method| on(method, schedules::get),
    },
    Route {
        endpoint: &endpoints::DELETE_SCHEDULE,
        action: "schedule.delete",
        needs: Some(Role::Admin),
        handler: |method| on(method, schedules::delete),
    },
    Route {
        endpoint: &endpoints::SCHEDULE_NEXT,
        action: "schedule.next",
        needs: Some(Role::Developer),
        handler: |method| on(method, schedules::next),
    },
    Route {
        endpoint: &endpoints::SUBSCRIPTIONS,
        action: "subscription.list",
        needs: Some(Role::Admin),
        handler: |method| on(method, subscriptions::list),
    },
    Route {
        endpoint: &endpoints::CREATE_SUBSCRIPTION,
        action: "subscription.create",
        needs: Some(Role::Admin),
        handler: |method| on(method, subscriptions::create),
    },
    Route {
        endpoint: &endpoints::SUBSCRIPTION,
        action: "subscription.read",
        needs: Some(Role::Admin),
        handler: |method| on(method, subscriptions::get),
    },
    Route {
        endpoint: &endpoints::DELETE_SUBSCRIPTION,
        action: "subscription.delete",
        needs: Some(Role::Admin),
        handler: |method| on(method, subscriptions::delete),
    },
    Route {
        endpoint: &endpoints::DELIVERIES,
        action: "subscription.deliveries",
        needs: Some(Role::Admin),
        handler: |method| on(method, subscriptions::deliveries),
    },
    Route {
        endpoint: &endpoints::REDELIVER,
        action: "subscription.redeliver",
        needs: Some(Role::Admin),
        handler: |method| on(method, subscriptions::redeliver),
    },
];

/// The router over [`ROUTES`]: each route behind its role layer, unknown paths 404 and wrong
/// methods 405, both as JSON errors.
pub(super) fn router(state: Arc<ApiState>) -> Router {
    let mut router = Router::new();
    for route in ROUTES {
        let Ok(filter) = MethodFilter::try_from(route.endpoint.method.clone()) else {
            tracing::error!(method = %route.endpoint.method, path = route.endpoint.path, "route skipped: no method filter");
            continue;
        };
        let mut method_router = (route.handler)(filter);
        if route.endpoint.method != Method::GET {
            // Every call that may change something leaves one audit entry.
            let audited = Audited {
                records: state.coordinator.records().clone(),
                action: route.action,
            };
            method_router = method_router.route_layer(axum::middleware::from_fn_with_state(
                audited,
                super::audited::audited,
            ));
        }
        if let Some(role) = route.needs {
            method_router = method_router.route_layer(NeedsRole {
                needs: role,
                action: route.action,
            });
        }
        router = router.route(route.endpoint.path, method_router);
    }
    router
        .fallback(|request: axum::extract::Request| async move {
            ApiError::NoRoute(request.uri().path().to_owned())
        })
        // The host enforces `server.body_limit_bytes` before a request reaches the plugin.
        .layer(axum::extract::DefaultBodyLimit::disable())
        .with_state(state)
}

/// The role layer: 401 without a key, 403 below the role, else the route. A plain tower
/// service (no boxed future): it runs on every request.
#[derive(Clone, Copy)]
pub(super) struct NeedsRole {
    pub(super) needs: Role,
    /// The route's action, which a refusal names to the host (which records refusals).
    pub(super) action: &'static str,
}

impl<S> tower::Layer<S> for NeedsRole {
    type Service = RoleCheck<S>;

    fn layer(&self, inner: S) -> RoleCheck<S> {
        RoleCheck {
            inner,
            needs: self.needs,
            action: self.action,
        }
    }
}

#[derive(Clone)]
pub(super) struct RoleCheck<S> {
    inner: S,
    needs: Role,
    action: &'static str,
}

/// The headers a refusal names its action and resource in, for the host's audit entry (the
/// host takes them off the answer).
pub const AUDIT_ACTION_HEADER: &str = "x-powerautomation-audit-action";
pub const AUDIT_RESOURCE_HEADER: &str = "x-powerautomation-audit-resource";

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
            Some(refusal) => {
                let mut response = ApiError::Refused(refusal).into_response();
                let headers = response.headers_mut();
                headers.insert(
                    AUDIT_ACTION_HEADER,
                    http::HeaderValue::from_static(self.action),
                );
                let named = super::audited::named(request.uri().path());
                if let Some(value) =
                    named.and_then(|named| http::HeaderValue::from_str(&named).ok())
                {
                    headers.insert(AUDIT_RESOURCE_HEADER, value);
                }
                Either::Right(std::future::ready(Ok(response)))
            }
        }
    }
}

/// The router answers a method a path does not take with an empty 405 and `Allow` (set as the
/// answer leaves the route, so this runs around the whole router); this makes it the JSON error
/// answer. `HEAD` is answered by every `GET` route and not listed.
pub(super) fn method_not_allowed(method: &Method, uri: &http::Uri, response: Response) -> Response {
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
