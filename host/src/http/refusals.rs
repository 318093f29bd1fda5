//! Refused calls (401, 403) as audit entries: the authentication layer records a key that
//! matches nothing, and follows every other request's answer ([`Refusals`]) to record a
//! refusal by a route of the host's or of a plugin's. A plugin's refusal names its action and
//! resource in two headers, which are taken off the answer here.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use axum::{
    extract::{MatchedPath, Request},
    http::{HeaderValue, Method, Uri},
    response::Response,
};
use pin_project_lite::pin_project;

use super::RequestId;
use crate::{
    audit::{self, Auditor, HostCall},
    auth::Principal,
};

/// The plugin's headers naming a refused call's action and resource.
const ACTION_HEADER: &str = "x-powerautomation-audit-action";
const RESOURCE_HEADER: &str = "x-powerautomation-audit-resource";

/// What a refusal's entry needs of its request, taken before the request goes in.
pub struct Asked {
    auditor: Arc<Auditor>,
    principal: Option<Principal>,
    method: Method,
    uri: Uri,
    via: Option<HeaderValue>,
    route: Option<MatchedPath>,
    request_id: Option<RequestId>,
}

impl Asked {
    pub fn of(auditor: &Arc<Auditor>, request: &Request, principal: Option<&Principal>) -> Asked {
        Asked {
            auditor: Arc::clone(auditor),
            principal: principal.cloned(),
            method: request.method().clone(),
            uri: request.uri().clone(),
            via: request.headers().get(audit::VIA_HEADER).cloned(),
            route: request.extensions().get::<MatchedPath>().cloned(),
            request_id: request.extensions().get::<RequestId>().cloned(),
        }
    }

    /// Records the refusal `response` is, if it is one, and takes the plugin's headers off it.
    pub fn answered(self, response: &mut Response) {
        let status = response.status().as_u16();
        if !matches!(status, 401 | 403) {
            return;
        }
        let headers = response.headers_mut();
        let named =
            |value: Option<HeaderValue>| value.and_then(|v| v.to_str().ok().map(str::to_owned));
        let plugin_action = named(headers.remove(ACTION_HEADER));
        let plugin_resource = named(headers.remove(RESOURCE_HEADER));
        self.record(status, plugin_action, plugin_resource, None);
    }

    /// Records a refusal of this request with `status` (the plugin's action and resource, when
    /// it named them).
    pub fn record(
        self,
        status: u16,
        action: Option<String>,
        resource: Option<String>,
        reason: Option<&str>,
    ) {
        let (host_action, host_resource) = audit::host_action(
            self.method.as_str(),
            self.route.as_ref().map(MatchedPath::as_str),
            self.uri.path(),
        );
        let mut headers = axum::http::HeaderMap::new();
        if let Some(via) = self.via {
            headers.insert(audit::VIA_HEADER, via);
        }
        let call = HostCall {
            actor: audit::actor(self.principal.as_ref()),
            via: audit::via(&headers),
            request_id: self.request_id.map(|id| id.as_str().to_owned()),
        };
        let error = if status == 401 {
            "unauthorized"
        } else {
            "forbidden"
        };
        let valid_action = action.filter(|action| {
            !action.is_empty()
                && action.len() <= 128
                && action
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
        });
        let mut draft = call.draft(
            valid_action.as_deref().unwrap_or(host_action),
            resource
                .filter(|resource| !resource.is_empty() && resource.len() <= 512)
                .unwrap_or(host_resource),
            status,
            Some(error),
        );
        draft.reason = reason.map(str::to_owned);
        self.auditor.refused(draft);
    }
}

pin_project! {
    /// A request's answer, followed to record it if it is a refusal.
    pub struct Refusals<F> {
        #[pin]
        inner: F,
        asked: Option<Asked>,
    }
}

impl<F> Refusals<F> {
    pub fn new(inner: F, asked: Option<Asked>) -> Refusals<F> {
        Refusals { inner, asked }
    }
}

impl<F, E> Future for Refusals<F>
where
    F: Future<Output = Result<Response, E>>,
{
    type Output = Result<Response, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        match this.inner.poll(cx) {
            Poll::Ready(Ok(mut response)) => {
                if let Some(asked) = this.asked.take() {
                    asked.answered(&mut response);
                }
                Poll::Ready(Ok(response))
            }
            other => other,
        }
    }
}
