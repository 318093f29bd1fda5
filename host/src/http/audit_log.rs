//! `GET /api/audit` (admin): the audit log, newest first, filtered, a page at a time with a
//! cursor, or every match as NDJSON (`Accept: application/x-ndjson`), read page by page so a
//! long export holds one page in memory.

use std::{collections::BTreeMap, sync::Arc};

use axum::{
    body::{Body, Bytes},
    extract::{Query, State},
    http::{header, HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    Extension,
};
use plugin_api::Role;
use record_store::{AuditQuery, AuditStatus, AuditVia, RecordStore, MAX_AUDIT_PAGE};
use serde::Serialize;
use utoipa::ToSchema;

use super::{error::ApiError, AppState};
use crate::auth::{require, Principal};

/// The page size when `limit` is not given.
const DEFAULT_LIMIT: u32 = 50;

/// The audit log, newest first.
#[utoipa::path(get, path = "/api/audit", operation_id = "listAuditEntries", tag = "audit", security(("api_key" = []), ("bearer" = [])),
    params(
        ("actor" = Option<String>, Query, description = "Only entries of this key name"),
        ("action" = Option<String>, Query, description = "Only this action, e.g. `deployment.trigger`"),
        ("resource" = Option<String>, Query, description = "Only this resource, e.g. `deployment:<id>`, `environment:<id>`"),
        ("environment" = Option<String>, Query, description = "Only entries that concern this environment"),
        ("outcome" = Option<String>, Query, description = "`ok`, `denied` or `failed`"),
        ("via" = Option<String>, Query, description = "`rest`, `mcp`, `cli`, `dashboard`, `schedule` or `auto`"),
        ("since" = Option<String>, Query, description = "RFC 3339: entries at or after this time"),
        ("until" = Option<String>, Query, description = "RFC 3339: entries at or before this time"),
        ("request_id" = Option<String>, Query, description = "Only the entries of this request"),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000, description = "Page size (default 50)"),
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page"),
    ),
    responses((status = 200, description = "A page of entries; with `Accept: application/x-ndjson`, every match, one per line", body = AuditPage)))]
pub async fn list(
    State(state): State<AppState>,
    principal: Option<Extension<Principal>>,
    headers: HeaderMap,
    Query(params): Query<BTreeMap<String, String>>,
) -> Result<Response, ApiError> {
    require(principal.as_deref(), Role::Admin)?;
    let Some(auditor) = &state.auditor else {
        return Err(ApiError::unavailable(
            "audit_unavailable",
            "this host keeps no audit log",
            1,
        ));
    };
    let query = read_query(&params)?;
    let store = Arc::clone(auditor.store());
    let ndjson = headers
        .get(header::ACCEPT)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|accept| accept.contains("application/x-ndjson"));
    if ndjson {
        return Ok(stream(store, query, Arc::clone(&state.shutdown)));
    }
    let page = tokio::task::spawn_blocking(move || record_store::audit::page_json(&*store, &query))
        .await
        .map_err(|error| ApiError::internal(error.to_string()))?
        .map_err(|error| {
            ApiError::unavailable("store_unavailable", format!("the store: {error}"), 1)
        })?;
    Ok(([(header::CONTENT_TYPE, "application/json")], page).into_response())
}

/// Every match, one entry per line, read a page at a time; ends early when the host stops or
/// the client goes.
fn stream(
    store: Arc<dyn RecordStore>,
    mut query: AuditQuery,
    shutdown: Arc<tokio_util::sync::CancellationToken>,
) -> Response {
    let (sender, receiver) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(2);
    query.limit = MAX_AUDIT_PAGE;
    tokio::spawn(async move {
        loop {
            let page_store = Arc::clone(&store);
            let asked = query.clone();
            let read = tokio::task::spawn_blocking(move || page_store.audit_query(&asked)).await;
            let records = match read {
                Ok(Ok(records)) => records,
                Ok(Err(error)) => {
                    tracing::error!("audit export: {error}");
                    let _ = sender
                        .send(Err(std::io::Error::other("the store failed")))
                        .await;
                    return;
                }
                Err(_) => return,
            };
            let Some(last) = records.last().map(|record| record.seq) else {
                return;
            };
            let mut lines = String::new();
            for record in &records {
                lines.push_str(&record.to_json());
                lines.push('\n');
            }
            tokio::select! {
                sent = sender.send(Ok(Bytes::from(lines))) => if sent.is_err() { return },
                () = shutdown.cancelled() => return,
            }
            if records.len() < MAX_AUDIT_PAGE as usize {
                return;
            }
            query.before = Some(last);
        }
    });
    let body = Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(receiver));
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        body,
    )
        .into_response()
}

/// The filters, checked: an unknown parameter or a bad value is a 400 naming it.
fn read_query(params: &BTreeMap<String, String>) -> Result<AuditQuery, ApiError> {
    let bad = |field: &str, expected: &str| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_field",
            format!("{field}: expected {expected}"),
        )
        .with_extra(serde_json::json!({ "field": field }))
    };
    let mut query = AuditQuery {
        limit: DEFAULT_LIMIT,
        ..AuditQuery::default()
    };
    for (name, value) in params {
        let text = || -> Result<Option<String>, ApiError> {
            if value.is_empty() || value.len() > 512 {
                return Err(bad(name, "1 to 512 characters"));
            }
            Ok(Some(value.clone()))
        };
        match name.as_str() {
            "actor" => query.actor = text()?,
            "action" => query.action = text()?,
            "resource" => query.resource = text()?,
            "environment" => query.environment = text()?,
            "request_id" => query.request_id = text()?,
            "outcome" => {
                query.outcome = Some(match value.as_str() {
                    "ok" => AuditStatus::Ok,
                    "denied" => AuditStatus::Denied,
                    "failed" => AuditStatus::Failed,
                    _ => return Err(bad("outcome", "ok, denied or failed")),
                })
            }
            "via" => {
                query.via = Some(
                    serde_json::from_value::<AuditVia>(serde_json::Value::String(value.clone()))
                        .map_err(|_| bad("via", "rest, mcp, cli, dashboard, schedule or auto"))?,
                )
            }
            "since" => query.since = Some(time_of(value).ok_or_else(|| bad("since", "an RFC 3339 time"))?),
            "until" => query.until = Some(time_of(value).ok_or_else(|| bad("until", "an RFC 3339 time"))?),
            "limit" => {
                query.limit = value
                    .parse::<u32>()
                    .ok()
                    .filter(|limit| (1..=MAX_AUDIT_PAGE).contains(limit))
                    .ok_or_else(|| bad("limit", "a number from 1 to 1000"))?
            }
            "cursor" => {
                query.before = Some(
                    value
                        .parse::<u64>()
                        .map_err(|_| bad("cursor", "the next_cursor of a page"))?,
                )
            }
            other => {
                return Err(bad(
                    other,
                    "no such filter; filters are actor, action, resource, environment, outcome, via, since, until, request_id, limit, cursor",
                ))
            }
        }
    }
    Ok(query)
}

/// An RFC 3339 time in the entries' form (UTC, milliseconds).
fn time_of(text: &str) -> Option<String> {
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .ok()
        .map(record_store::audit::format_time)
}

/// `GET /api/audit`.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)] // Read by the derive, never built.
pub struct AuditPage {
    /// Entries, newest first: `seq`, `at`, `actor` (`key_name`, `role`, or null), `via`,
    /// `tool`, `action`, `resource`, `outcome` (`status`, `error`, `http_status`),
    /// `request_id`, `reason`, `changes`, `environments`, `prev_hash`, `hash`.
    entries: Vec<serde_json::Value>,
    /// The `cursor` of the next page; null on the last.
    next_cursor: Option<String>,
}
