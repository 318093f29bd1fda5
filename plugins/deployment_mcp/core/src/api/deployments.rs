//! Deployments: start one (`trigger-local`, `one-click`, with `Idempotency-Key`), read the
//! history, one deployment's record and log (whole or followed), cancel, retry.

use std::time::{Duration, Instant};

use axum::{
    body::{Body, Bytes},
    extract::{FromRequestParts, State},
    http::{header, request::Parts, StatusCode},
    response::{IntoResponse, Response},
};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use super::{
    header_value, json, Answer, ApiError, ApiState, DeploymentKey, Mount, Params, RequestId,
    Shared, Who,
};
use crate::model::DeploymentId;
use crate::{
    coordinator::{Cancelled, StartRequest},
    deployment::{DeploymentRecord, GateStatus, Phase, TargetStatus},
    environments::{check_id, from_json_object},
    persist::deployments::{DeploymentStore, IdempotencyRecord, IdempotencyStore},
    persist::history::{Filter, History},
    persist::records::StoreError,
    wire::{
        Accepted, Cancelling, DeploymentDetail, DeploymentEntry, HistoryPage, LogEnd, LogsAnswer,
        RunView, TargetResult, TriggerRequest, View,
    },
};

/// How often a followed log looks for new lines.
const FOLLOW_POLL: Duration = Duration::from_millis(200);
/// Log lines included in a deployment's detail (all of them are at `/logs`).
const DETAIL_LOG_LINES: usize = 200;
/// The most lines one page of `/logs` holds (and what it holds when no `limit` is given).
pub(crate) const LOG_PAGE_LINES: usize = 10_000;
/// Chunks a followed log reads at most per poll.
const FOLLOW_CHUNKS: u64 = 100;
/// Bytes of NDJSON one read of a followed log produces at most (plus one chunk): a busy log is
/// sent in parts of a bounded size, not as one piece of up to a hundred chunks.
const FOLLOW_BYTES: usize = 256 * 1024;
/// How long a request waits for a concurrent one with the same `Idempotency-Key` to start its
/// deployment.
const IDEMPOTENCY_WAIT: Duration = Duration::from_secs(10);
/// How often a request waiting on a key looks at it again when nothing in this copy woke it:
/// the request holding the key may be another copy's (during a hot swap).
const IDEMPOTENCY_RECHECK: Duration = Duration::from_millis(250);
/// How long a cancel waits for the run to record its end before answering 202.
const CANCEL_WAIT: Duration = Duration::from_secs(10);

impl ApiState {
    pub(super) async fn record(&self, id: &DeploymentId) -> Result<DeploymentRecord, ApiError> {
        self.deployments()
            .record(id)
            .await?
            .ok_or_else(|| ApiError::not_found("deployment", id))
    }
}

/// The 202 of a started (or reopened) deployment, with `Location`.
fn accepted(mount: &Mount, deployment_id: &DeploymentId, status: Phase) -> Response {
    let status_url = format!("{}/deployments/{deployment_id}", mount.0);
    let mut response = json(
        StatusCode::ACCEPTED,
        &Accepted {
            deployment_id: deployment_id.clone(),
            status,
            status_url: status_url.clone(),
        },
    );
    if let Some(location) = header_value(&status_url) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    response
}

#[utoipa::path(
    get, path = "/deployments/{id}", operation_id = "getDeployment", tag = "deployments",
    params(crate::wire::DeploymentPath),
    responses((status = 200, description = "The full record", body = crate::wire::DeploymentDetail))
)]
pub(crate) async fn detail(State(api): Shared, DeploymentKey(id): DeploymentKey) -> Answer {
    let record = api.record(&id).await?;
    let results = api
        .deployments()
        .targets(&id)
        .await?
        .iter()
        .map(|target| TargetResult::new(target, View::Details))
        .collect();
    // Only the chunks that hold the last lines are read, however long the log is.
    let tail = api.deployments().log_tail(&id, DETAIL_LOG_LINES).await?;
    // A parked deployment keeps its entry, but no process runs it.
    let entry = match record.status {
        Phase::AwaitingApproval => None,
        _ => match crate::persist::runs::entry_of(api.coordinator.records(), &id).await {
            Ok(entry) => entry,
            // An entry that does not read says nothing of who runs it; the rest is shown.
            Err(StoreError::Decode { .. }) => None,
            Err(error) => return Err(error.into()),
        },
    };
    let run = entry.map(|(_, entry)| RunView {
        queued: entry.queued,
        owner_node: entry.node_id,
        lease_epoch: entry.epoch,
    });
    Ok(json(
        StatusCode::OK,
        &DeploymentDetail::new(record, results, tail.lines, tail.first_line > 0, run),
    ))
}

#[utoipa::path(
    get, path = "/deployments/{id}/logs", operation_id = "getDeploymentLogs", tag = "deployments",
    params(
        crate::wire::DeploymentPath,
        ("follow" = Option<bool>, Query, description = "Stream NDJSON lines until the deployment ends"),
        ("from" = Option<u64>, Query, description = "The first stored line of the page (0 when absent); the answer's `next_from` continues it"),
        ("limit" = Option<u64>, Query, description = "Lines in the page, 1 to 10000 (10000 when absent)"),
        ("tail" = Option<u64>, Query, description = "The last lines instead, 1 to 10000; not with `from`"),
    ),
    responses(
        (status = 200, description = "A page of the log (the first 10,000 lines when no parameter is given), or with `follow` a stream of lines", content(
            (crate::wire::LogsAnswer = "application/json"),
            (crate::model::LogLine = "application/x-ndjson"),
        )),
    )
)]
pub(crate) async fn logs(
    State(api): Shared,
    DeploymentKey(id): DeploymentKey,
    params: Params,
) -> Answer {
    let record = api.record(&id).await?;
    let follow = match params.get("follow").as_deref() {
        None | Some("false") | Some("0") => false,
        Some("true") | Some("1") | Some("") => true,
        Some(other) => {
            return Err(ApiError::field(
                "follow",
                format!("{other:?} is not a boolean; use true or false"),
            ))
        }
    };
    if !follow {
        let limit = params.number("limit", LOG_PAGE_LINES, 1..=LOG_PAGE_LINES)?;
        let page =
            match (params.get("from"), params.get("tail")) {
                (Some(_), Some(_)) => return Err(ApiError::field(
                    "tail",
                    "give either from (a page from a line on) or tail (the last lines), not both",
                )),
                (_, Some(_)) => {
                    let tail = params.number("tail", LOG_PAGE_LINES, 1..=LOG_PAGE_LINES)?;
                    api.deployments().log_tail(&id, tail).await?
                }
                (from, None) => {
                    let from = match from {
                        None => 0,
                        Some(text) => text.parse::<u64>().map_err(|_| {
                            ApiError::field(
                                "from",
                                format!("{text:?} is not a line number (0 or more)"),
                            )
                        })?,
                    };
                    api.deployments().log_page(&id, from, limit).await?
                }
            };
        let after = page.first_line + page.lines.len() as u64;
        return Ok(json(
            StatusCode::OK,
            &LogsAnswer {
                total_lines: record.log_lines.max(page.end.line),
                stored_lines: page.end.line,
                first_line: page.first_line,
                next_from: (after < page.end.line).then_some(after),
                deployment_id: record.deployment_id.clone(),
                status: record.status,
                complete: record.status.is_terminal(),
                lines: page.lines,
            },
        ));
    }
    let stream = follow_stream(api.deployments(), id, api.stop.clone());
    Ok((
        [
            (header::CONTENT_TYPE, "application/x-ndjson"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(stream),
    )
        .into_response())
}

#[utoipa::path(
    post, path = "/trigger-local", operation_id = "triggerDeployment", tag = "deployments",
    params(("Idempotency-Key" = Option<String>, Header, description = "Repeats the first answer for the same key and body")),
    request_body(content = Option<crate::wire::TriggerRequest>, content_type = "application/json"),
    responses((status = 202, description = "Started; follow `status_url`", body = crate::wire::Accepted))
)]
pub(crate) async fn trigger_local(State(api): Shared, call: TriggerCall, body: Bytes) -> Answer {
    trigger(&api, call, &body).await
}

#[utoipa::path(
    post, path = "/one-click", operation_id = "triggerDeploymentOneClick", tag = "deployments",
    params(("Idempotency-Key" = Option<String>, Header, description = "Repeats the first answer for the same key and body")),
    request_body(content = Option<crate::wire::TriggerRequest>, content_type = "application/json"),
    responses((status = 202, description = "Started (the original's name for trigger-local)", body = crate::wire::Accepted))
)]
pub(crate) async fn one_click(State(api): Shared, call: TriggerCall, body: Bytes) -> Answer {
    trigger(&api, call, &body).await
}

/// What a trigger needs of the request besides its body.
pub(crate) struct TriggerCall {
    caller: Who,
    request_id: RequestId,
    mount: Mount,
    idempotency_key: Option<Vec<u8>>,
}

impl<S: Send + Sync> FromRequestParts<S> for TriggerCall {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &S,
    ) -> Result<TriggerCall, Self::Rejection> {
        Ok(TriggerCall {
            caller: Who::from_request_parts(parts, state).await?,
            request_id: RequestId::from_request_parts(parts, state).await?,
            mount: Mount::from_request_parts(parts, state).await?,
            idempotency_key: parts
                .headers
                .get("idempotency-key")
                .map(|key| key.as_bytes().to_vec()),
        })
    }
}

async fn trigger(api: &ApiState, call: TriggerCall, body: &[u8]) -> Answer {
    let request: TriggerRequest = if body.iter().all(u8::is_ascii_whitespace) {
        TriggerRequest::default()
    } else {
        from_json_object(body)?
    };
    let TriggerCall {
        caller,
        request_id: RequestId(request_id),
        mount,
        idempotency_key,
    } = call;
    let caller = caller.name();
    let idempotency = match idempotency_key {
        None => None,
        Some(key) if key.is_empty() || key.len() > 255 => {
            return Err(ApiError::field(
                "Idempotency-Key",
                "must be 1 to 255 characters",
            ))
        }
        Some(key) => Some((
            format!("{caller}/{}", hex::encode(Sha256::digest(&key))),
            hex::encode(Sha256::digest(body)),
        )),
    };
    let rollout = request.rollout().to_rollout()?;
    let start_request = |deployment_id: Option<DeploymentId>| StartRequest {
        rollout,
        deployment_id,
        environments: request.environments.clone(),
        selector: request.selector.clone(),
        version: request.version.clone(),
        ec2: request.ec2,
        triggered_by: format!("api:{caller}"),
        request_id: Some(request_id.clone()),
        retry_of: None,
        override_reason: request
            .window_override
            .as_ref()
            .map(|overridden| overridden.reason.clone()),
    };
    let Some((key, fingerprint)) = idempotency else {
        let started = api.coordinator.start(start_request(None)).await?;
        return Ok(accepted(&mount, &started.deployment_id, Phase::Pending));
    };
    let keys = IdempotencyStore::new(api.coordinator.records().clone());
    let deadline = Instant::now() + IDEMPOTENCY_WAIT;
    // Subscribed before the key is first read: a key settled after that read wakes the wait.
    let mut settled = api.keys_settled.subscribe();
    let settle = || api.keys_settled.send_modify(|count| *count += 1);
    loop {
        let created_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as u64;
        let mine = IdempotencyRecord::starting(
            fingerprint.clone(),
            DeploymentId::generate(created_ms),
            created_ms,
        );
        let Some(earlier) = keys.claim(&key, &mine).await? else {
            // This request owns the key: start, then record the outcome for the others.
            return match api
                .coordinator
                .start(start_request(Some(mine.deployment_id.clone())))
                .await
            {
                Ok(started) => {
                    let recorded = keys.started(&key, &mine).await;
                    settle();
                    recorded?;
                    Ok(accepted(&mount, &started.deployment_id, Phase::Pending))
                }
                Err(error) => {
                    // Nothing started: free the key, so a retry can start it.
                    let _ = keys.release(&key, &mine).await;
                    settle();
                    Err(ApiError::from(error))
                }
            };
        };
        match earlier {
            Some(earlier) if earlier.fingerprint != fingerprint => {
                return Err(ApiError::unprocessable(
                    "idempotency_key_reused",
                    "this Idempotency-Key was used with a different body; use a new key for a new request",
                ))
            }
            Some(earlier) if !earlier.is_starting() => {
                return Ok(accepted(&mount, &earlier.deployment_id, Phase::Pending))
            }
            // Another request with this key is starting it (or the key was just freed): wait
            // for its outcome, then answer the same.
            _ if Instant::now() < deadline => {
                let wait = IDEMPOTENCY_RECHECK.min(deadline.saturating_duration_since(Instant::now()));
                let _ = tokio::time::timeout(wait, settled.changed()).await;
            }
            _ => {
                return Err(ApiError::conflict(
                    "idempotency_key_in_use",
                    "a request with this Idempotency-Key is still starting its deployment; retry shortly",
                ))
            }
        }
    }
}

#[utoipa::path(
    post, path = "/deployments/{id}/cancel", operation_id = "cancelDeployment", tag = "deployments",
    params(crate::wire::DeploymentPath),
    responses(
        (status = 200, description = "Cancelled; the summary as recorded", body = crate::wire::DeploymentSummary),
        (status = 202, description = "Cancel requested; the run has not recorded its end yet", body = crate::wire::Cancelling),
    )
)]
pub(crate) async fn cancel(
    State(api): Shared,
    caller: Who,
    DeploymentKey(id): DeploymentKey,
) -> Answer {
    let record = api.record(&id).await?;
    if record.status.is_terminal() {
        return Err(ApiError::conflict(
            "already_finished",
            format!(
                "deployment {id} already ended as {}",
                record.status.as_str()
            ),
        ));
    }
    if record.status == Phase::AwaitingApproval {
        // Nothing runs it: the cancel ends it at its gate.
        let message = format!("cancelled by {} while waiting at the gate", caller.name());
        api.coordinator
            .close_gate(&id, GateStatus::Rejected, caller.name(), &message)
            .await?;
        return Ok(json(
            StatusCode::OK,
            &api.summary(&id, View::Details).await?,
        ));
    }
    // The run records its end in its own task, maybe after this call is gone: the entry is
    // written first, so no cancel is ever without one.
    if let Some(call) = crate::audit::current() {
        api.coordinator
            .records()
            .record_call(&call, &crate::audit::Outcome::OK)
            .await?;
    }
    let cancelled = api.coordinator.cancel(&id, caller.name()).await?;
    // Wait (bounded) for the run to record the end, so the answer shows it: woken by the end of
    // a run of this copy; a run of another copy is read until it ends.
    let deadline = Instant::now() + CANCEL_WAIT;
    if let Cancelled::Local(ended) = cancelled {
        let _ = tokio::time::timeout(CANCEL_WAIT, ended.wait()).await;
    }
    while Instant::now() < deadline {
        if api.record(&id).await?.status.is_terminal() {
            return Ok(json(
                StatusCode::OK,
                &api.summary(&id, View::Details).await?,
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(json(
        StatusCode::ACCEPTED,
        &Cancelling {
            deployment_id: record.deployment_id,
            status: "cancelling".into(),
        },
    ))
}

#[utoipa::path(
    post, path = "/deployments/{id}/retry", operation_id = "retryDeployment", tag = "deployments",
    params(crate::wire::DeploymentPath),
    responses((status = 202, description = "A new deployment of the environments that did not succeed", body = crate::wire::Accepted))
)]
pub(crate) async fn retry(
    State(api): Shared,
    caller: Who,
    RequestId(request_id): RequestId,
    mount: Mount,
    DeploymentKey(id): DeploymentKey,
) -> Answer {
    let record = api.record(&id).await?;
    if !record.status.is_terminal() {
        return Err(ApiError::conflict(
            "still_running",
            format!(
                "deployment {id} is still {}; retry it once it ended",
                record.status.as_str()
            ),
        ));
    }
    let failed: Vec<String> = api
        .deployments()
        .targets(&id)
        .await?
        .into_iter()
        .filter(|target| target.status != TargetStatus::Succeeded)
        .map(|target| target.environment_id.into_string())
        .collect();
    if failed.is_empty() {
        return Err(ApiError::unprocessable(
            "nothing_to_retry",
            format!("every environment of {id} succeeded; there is nothing to retry"),
        ));
    }
    let started = api
        .coordinator
        .start(StartRequest {
            deployment_id: None,
            environments: Some(failed),
            selector: None,
            version: Some(record.version),
            ec2: None,
            triggered_by: format!("retry:{}", caller.name()),
            request_id: Some(request_id),
            retry_of: Some(record.deployment_id.clone()),
            rollout: record.rollout,
            override_reason: None,
        })
        .await?;
    Ok(accepted(&mount, &started.deployment_id, Phase::Pending))
}

#[utoipa::path(
    post, path = "/deployments/{id}/approve", operation_id = "approveDeployment", tag = "deployments",
    params(crate::wire::DeploymentPath),
    responses(
        (status = 200, description = "Approved: the deployment goes on with the batches after its canary", body = crate::wire::DeploymentSummary),
        (status = 409, description = "It is not waiting at a gate, or was decided meanwhile", body = crate::wire::ErrorAnswer),
    )
)]
pub(crate) async fn approve(
    State(api): Shared,
    caller: Who,
    DeploymentKey(id): DeploymentKey,
) -> Answer {
    let record = api.record(&id).await?;
    let excluded = api
        .coordinator
        .settings()
        .approvals
        .excluded_approver(&record.triggered_by);
    let name = caller.name();
    if excluded.as_deref() == Some(name) {
        return Err(ApiError::Forbidden {
            code: "same_approver",
            message: format!(
                "{name} triggered deployment {id}; approvals.distinct_approver asks another admin to approve it"
            ),
        });
    }
    api.coordinator.approve(&id, caller.name()).await?;
    Ok(json(
        StatusCode::OK,
        &api.summary(&id, View::Details).await?,
    ))
}

#[utoipa::path(
    post, path = "/deployments/{id}/reject", operation_id = "rejectDeployment", tag = "deployments",
    params(crate::wire::DeploymentPath),
    responses(
        (status = 200, description = "Rejected: the deployment ended `cancelled`, the environments not started `skipped`", body = crate::wire::DeploymentSummary),
        (status = 409, description = "It is not waiting at a gate, or was decided meanwhile", body = crate::wire::ErrorAnswer),
    )
)]
pub(crate) async fn reject(
    State(api): Shared,
    caller: Who,
    DeploymentKey(id): DeploymentKey,
) -> Answer {
    api.record(&id).await?;
    let message = format!("rejected at the gate by {}", caller.name());
    api.coordinator
        .close_gate(&id, GateStatus::Rejected, caller.name(), &message)
        .await?;
    Ok(json(
        StatusCode::OK,
        &api.summary(&id, View::Details).await?,
    ))
}

#[utoipa::path(
    post, path = "/deployments/{id}/rollback", operation_id = "rollbackDeployment", tag = "deployments",
    params(crate::wire::DeploymentPath),
    responses(
        (status = 202, description = "Rolling back: the environments it changed return to their previous version; follow `status_url`", body = crate::wire::Accepted),
        (status = 409, description = "It is still running, or an environment is being deployed", body = crate::wire::ErrorAnswer),
        (status = 422, description = "No environment has a previous version to return to", body = crate::wire::ErrorAnswer),
    )
)]
pub(crate) async fn rollback(
    State(api): Shared,
    caller: Who,
    mount: Mount,
    DeploymentKey(id): DeploymentKey,
) -> Answer {
    let record = api.record(&id).await?;
    api.coordinator.rollback(&id, caller.name()).await?;
    Ok(accepted(&mount, &record.deployment_id, Phase::RollingBack))
}

#[utoipa::path(
    get, path = "/history", operation_id = "listDeployments", tag = "deployments",
    params(
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 500, description = "Page size (default 50)"),
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page"),
        ("status" = Option<crate::deployment::Phase>, Query, description = "Only deployments in this status"),
        ("environment" = Option<String>, Query, description = "Only deployments that include this environment"),
    ),
    responses((status = 200, description = "Deployments, newest first", body = crate::wire::HistoryPage))
)]
pub(crate) async fn history(State(api): Shared, params: Params) -> Answer {
    let limit = params.number("limit", 50, 1..=500)?;
    let status = match params.get("status") {
        None => None,
        Some(text) => Some(Phase::parse(&text).ok_or_else(|| {
            ApiError::field(
                "status",
                format!(
                    "{text:?} is not a deployment status; one of {}",
                    Phase::ALL.map(Phase::as_str).join(", ")
                ),
            )
        })?),
    };
    let environment = params.get("environment");
    if let Some(id) = &environment {
        check_id(id).map_err(|error| ApiError::field("environment", error.message))?;
    }
    let cursor = params.get("cursor");
    if let Some(cursor) = &cursor {
        let valid = cursor.split_once('/').is_some_and(|(time, id)| {
            time.len() == 20
                && time.bytes().all(|b| b.is_ascii_digit())
                && DeploymentId::parse(id).is_ok()
        });
        if !valid {
            return Err(ApiError::field(
                "cursor",
                "is not a cursor from an earlier page's next_cursor",
            ));
        }
    }
    let filter = Filter {
        status,
        environment,
    };
    let page = History::new(api.coordinator.records().clone())
        .page(&filter, cursor.as_deref(), limit)
        .await?;
    Ok(json(
        StatusCode::OK,
        &HistoryPage {
            history: page
                .entries
                .iter()
                .map(|(_, entry)| DeploymentEntry::new(entry, View::Details))
                .collect(),
            total_count: page.total,
            next_cursor: page.next_cursor,
        },
    ))
}

/// NDJSON of a deployment's log: what is stored, then new lines as they are stored, until the
/// deployment ends (a last [`LogEnd`] line says how) or the instance stops. Each poll reads the
/// chunks after the last one sent, by number; the record only when none came.
fn follow_stream(
    deployments: DeploymentStore,
    id: DeploymentId,
    stop: CancellationToken,
) -> impl futures_util::Stream<Item = Result<Vec<u8>, std::convert::Infallible>> + Send {
    let state = (deployments, id, 0u64, false, stop);
    futures_util::stream::unfold(
        state,
        |(deployments, id, mut next, ended, stop)| async move {
            if ended {
                return None;
            }
            loop {
                let (out, read) = follow_read(&deployments, &id, next).await;
                next += read;
                if !out.is_empty() {
                    return Some((Ok(out), (deployments, id, next, false, stop)));
                }
                let status = deployments
                    .record(&id)
                    .await
                    .ok()
                    .flatten()
                    .map(|record| record.status);
                match status {
                    Some(status) if status.is_terminal() => {
                        // Lines stored before it ended are visible now: send them first.
                        let (mut out, read) = follow_read(&deployments, &id, next).await;
                        next += read;
                        let ended = out.is_empty();
                        if ended {
                            out = serde_json::to_vec(&LogEnd { end: true, status })
                                .unwrap_or_default();
                            out.push(b'\n');
                        }
                        return Some((Ok(out), (deployments, id, next, ended, stop)));
                    }
                    None => return None,
                    Some(_) => {}
                }
                tokio::select! {
                    _ = stop.cancelled() => return None,
                    _ = tokio::time::sleep(FOLLOW_POLL) => {}
                }
            }
        },
    )
}

/// The NDJSON of the chunks stored from number `next` on (at most [`FOLLOW_CHUNKS`], and no
/// more once [`FOLLOW_BYTES`] are reached), and how many chunks it holds.
async fn follow_read(deployments: &DeploymentStore, id: &str, next: u64) -> (Vec<u8>, u64) {
    let chunks = deployments
        .log_chunks_from(id, next, FOLLOW_CHUNKS)
        .await
        .unwrap_or_default();
    let mut out = Vec::new();
    let mut taken = 0;
    for chunk in &chunks {
        if out.len() >= FOLLOW_BYTES {
            break;
        }
        for line in chunk {
            out.extend(serde_json::to_vec(line).unwrap_or_default());
            out.push(b'\n');
        }
        taken += 1;
    }
    (out, taken)
}
