//! The audit layer of the changing routes: each call runs inside its [`AuditCall`], whose entry
//! the call's own store transaction carries (`crate::audit`); a call that ended without one
//! (it failed, or changed nothing) gets its entry here, after the answer, with the answer's
//! status and error code. Refused calls never get here: the role layer around this one refuses
//! them, and the host records refusals.

use std::sync::Arc;

use axum::{
    extract::{Request, State},
    middleware::Next,
    response::Response,
};
use plugin_guest::Caller;

use super::{error::ErrorCode, RequestId};
use crate::audit::{AuditCall, Outcome, Via, TOOL_HEADER, VIA_HEADER};
use crate::persist::records::Records;

/// What the layer needs of its route.
#[derive(Clone)]
pub(crate) struct Audited {
    /// The store (not the API's state: the router is part of that state, and must not own it).
    pub(crate) records: Records,
    pub(crate) action: &'static str,
}

pub(crate) async fn audited(
    State(audited): State<Audited>,
    request: Request,
    next: Next,
) -> Response {
    let call = Arc::new(call_of(&request, audited.action));
    // A call through MCP reaches this router in-process: the host never sees its answer, so
    // its refusals are recorded here.
    let in_process = door_of(&request) == Via::Mcp;
    let named = named(request.uri().path());
    let mut response = call.scope(next.run(request)).await;
    let status = response.status().as_u16();
    if matches!(status, 401 | 403) {
        // A handler's own refusal (`same_approver`) is the host's to record, like the role
        // layer's: named the same way.
        let headers = response.headers_mut();
        headers.insert(
            super::AUDIT_ACTION_HEADER,
            axum::http::HeaderValue::from_static(audited.action),
        );
        if let Some(value) = named.and_then(|named| axum::http::HeaderValue::from_str(&named).ok())
        {
            headers.insert(super::AUDIT_RESOURCE_HEADER, value);
        }
    }
    if !call.recorded() && (in_process || !matches!(status, 401 | 403)) {
        let code = response
            .extensions()
            .get::<ErrorCode>()
            .map(|code| code.0.to_owned());
        let outcome = Outcome::of_http(status, code);
        if let Err(error) = audited.records.record_call(&call, &outcome).await {
            tracing::error!(
                action = audited.action,
                "cannot write the audit entry: {error}"
            );
        }
    }
    response
}

/// The door `request` came through.
fn door_of(request: &Request) -> Via {
    Via::from_header(
        request
            .headers()
            .get(VIA_HEADER)
            .and_then(|value| value.to_str().ok()),
    )
}

/// The call `request` is: its caller, door, resource and id. (Apart from the layer's future,
/// which must not hold a borrow of the request, whose body is not `Sync`.)
fn call_of(request: &Request, action: &'static str) -> AuditCall {
    let header = |name: &str| {
        request
            .headers()
            .get(name)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned)
    };
    let via = door_of(request);
    let tool = header(TOOL_HEADER)
        .filter(|_| via == Via::Mcp)
        .filter(|tool| !tool.is_empty() && tool.len() <= 128);
    AuditCall::new(
        request.extensions().get::<Caller>(),
        via,
        tool,
        action,
        named(request.uri().path()),
        request
            .extensions()
            .get::<RequestId>()
            .map(|id| id.0.clone()),
    )
}

/// What a path names: `deployment:<id>` under `/deployments/<id>`, `environment:<id>` under
/// `/environments/<id>`.
pub(crate) fn named(path: &str) -> Option<String> {
    let mut segments = path.trim_start_matches('/').split('/');
    let kind = match segments.next()? {
        "deployments" => "deployment",
        "environments" => "environment",
        "windows" => "window",
        _ => return None,
    };
    let id = segments
        .next()
        .filter(|id| !id.is_empty() && id.len() <= 256)?;
    // Ids are plain (letters, digits, `-_.`); a segment that is not one names nothing the call
    // could change, and is shown as sent.
    Some(format!("{kind}:{id}"))
}
