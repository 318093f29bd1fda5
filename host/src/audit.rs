//! The host's side of the audit log (the store keeps the chain, `record_store::audit`).
//!
//! - Refusals (401, 403), from the host's own routes and from a plugin's, are recorded here:
//!   queued without waiting (bounded; a full queue counts what it drops and records the count
//!   once it has room) and appended in batches by one task, so a flood of refused requests
//!   costs the store one transaction per batch, not one per request.
//! - The host's own changes (a plugin reload, a node's drain) are recorded with their outcome;
//!   a drain's entry is written in the transaction that marks the node.
//! - Retention prunes entries older than `[audit] retention_days`, behind the checkpoint, once
//!   an hour, a bounded chunk per transaction.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use axum::http::HeaderMap;
use record_store::{AuditActor, AuditDraft, AuditOutcome, AuditStatus, AuditVia, RecordStore};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::auth::Principal;

/// Refusals queued at most before they are counted as dropped.
const QUEUE: usize = 4096;
/// Entries one append holds at most.
const BATCH: usize = 256;
/// How often retention looks for entries to prune, and how many go per transaction.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);
const PRUNE_CHUNK: u32 = 10_000;
/// The header a request names its door in (`dashboard`, `cli`, `mcp`; anything else: `rest`).
pub const VIA_HEADER: &str = "x-powerautomation-via";

pub struct Auditor {
    store: Arc<dyn RecordStore>,
    queue: mpsc::Sender<AuditDraft>,
    dropped: Arc<AtomicU64>,
}

impl Auditor {
    /// Starts the refusal writer and retention (entries older than `retention_days`; 0 keeps
    /// everything) on the current runtime; both end with `stop`.
    pub fn start(
        store: Arc<dyn RecordStore>,
        retention_days: u64,
        stop: CancellationToken,
    ) -> Arc<Auditor> {
        let (queue, received) = mpsc::channel(QUEUE);
        let dropped = Arc::new(AtomicU64::new(0));
        tokio::spawn(write_refusals(
            Arc::clone(&store),
            received,
            Arc::clone(&dropped),
        ));
        if retention_days > 0 {
            tokio::spawn(retention(Arc::clone(&store), retention_days, stop));
        }
        Arc::new(Auditor {
            store,
            queue,
            dropped,
        })
    }

    /// Queues a refusal's entry; never waits (a full queue counts it as dropped).
    pub fn refused(&self, draft: AuditDraft) {
        if self.queue.try_send(draft).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Waits (at most `within`) until the queued refusals are written.
    pub async fn flush(&self, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        while self.queue.capacity() < self.queue.max_capacity()
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Appends one entry now (the host's own changes).
    pub async fn record(&self, draft: AuditDraft) {
        let store = Arc::clone(&self.store);
        let action = draft.action.clone();
        let written = tokio::task::spawn_blocking(move || store.apply_audited(&[], &[draft])).await;
        match written {
            Ok(Ok(_)) => {}
            Ok(Err(error)) => tracing::error!(%action, "cannot write the audit entry: {error}"),
            Err(error) => tracing::error!(%action, "cannot write the audit entry: {error}"),
        }
    }

    pub fn store(&self) -> &Arc<dyn RecordStore> {
        &self.store
    }
}

/// The door a request names (only the ones a client may name: `schedule` and `auto` are the
/// plugin's own).
pub fn via(headers: &HeaderMap) -> AuditVia {
    match headers.get(VIA_HEADER).map(|value| value.as_bytes()) {
        Some(b"dashboard") => AuditVia::Dashboard,
        Some(b"cli") => AuditVia::Cli,
        Some(b"mcp") => AuditVia::Mcp,
        _ => AuditVia::Rest,
    }
}

pub fn actor(principal: Option<&Principal>) -> Option<AuditActor> {
    principal.map(|principal| AuditActor {
        key_name: principal.name.to_string(),
        role: principal.role.as_str().to_owned(),
    })
}

/// An entry of the host's about `principal`'s call.
pub struct HostCall {
    pub actor: Option<AuditActor>,
    pub via: AuditVia,
    pub request_id: Option<String>,
}

impl HostCall {
    /// The call of `principal`, through the door `headers` name.
    pub fn of(
        principal: Option<&Principal>,
        headers: &HeaderMap,
        request_id: Option<&str>,
    ) -> HostCall {
        HostCall {
            actor: actor(principal),
            via: via(headers),
            request_id: request_id.map(str::to_owned),
        }
    }

    pub fn draft(
        &self,
        action: &str,
        resource: String,
        status: u16,
        error: Option<&str>,
    ) -> AuditDraft {
        AuditDraft {
            actor: self.actor.clone(),
            via: self.via,
            tool: None,
            action: action.to_owned(),
            resource,
            outcome: AuditOutcome {
                status: AuditStatus::of_http(status),
                error: error.map(str::to_owned),
                http_status: Some(status),
            },
            request_id: self.request_id.clone(),
            reason: None,
            changes: None,
            environments: Vec::new(),
        }
    }
}

/// What a call of the host's route `template` does, and what it names (`path` is the
/// request's): `(action, resource)`. A plugin's route names its own (in its refusal's headers).
pub fn host_action(method: &str, template: Option<&str>, path: &str) -> (&'static str, String) {
    let segment = |index: usize| shorten(path.split('/').nth(index).unwrap_or_default());
    match (method, template.unwrap_or_default()) {
        ("GET", "/api/plugins") => ("plugin.list", "plugins".into()),
        ("POST", "/api/plugins/{name}/reload") => {
            ("plugin.reload", format!("plugin:{}", segment(3)))
        }
        ("GET", "/api/auth/whoami") => ("auth.whoami", "key".into()),
        ("GET", "/api/cluster") => ("cluster.read", "cluster".into()),
        ("POST", "/api/cluster/nodes/{node_id}/drain") => {
            ("cluster.drain", format!("node:{}", segment(4)))
        }
        ("GET", "/api/audit") => ("audit.list", "audit".into()),
        (_, template) if template.ends_with("/events") => ("event.subscribe", "events".into()),
        _ => ("request", shorten(&format!("{method} {path}"))),
    }
}

/// At most 256 bytes, cut on a character boundary.
fn shorten(text: &str) -> String {
    let mut end = text.len().min(256);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

async fn write_refusals(
    store: Arc<dyn RecordStore>,
    mut received: mpsc::Receiver<AuditDraft>,
    dropped: Arc<AtomicU64>,
) {
    let mut batch = Vec::with_capacity(BATCH);
    while received.recv_many(&mut batch, BATCH).await > 0 {
        let lost = dropped.swap(0, Ordering::Relaxed);
        if lost > 0 {
            batch.push(AuditDraft {
                actor: None,
                via: AuditVia::Rest,
                tool: None,
                action: "audit.refusals_dropped".into(),
                resource: "audit".into(),
                outcome: AuditOutcome {
                    status: AuditStatus::Failed,
                    error: Some("queue_full".into()),
                    http_status: None,
                },
                request_id: None,
                reason: Some(format!(
                    "{lost} refused calls came faster than they could be recorded"
                )),
                changes: Some(serde_json::json!({ "dropped": lost })),
                environments: Vec::new(),
            });
        }
        let drafts = std::mem::take(&mut batch);
        let count = drafts.len();
        let store = Arc::clone(&store);
        let written = tokio::task::spawn_blocking(move || {
            // One draft out of its limits must not cost the others theirs.
            let (fit, unfit): (Vec<AuditDraft>, Vec<AuditDraft>) =
                drafts.into_iter().partition(|draft| draft.check().is_ok());
            for draft in &unfit {
                tracing::warn!(action = %draft.action, "a refused call's audit entry is out of its limits: {:?}", draft.check().err());
            }
            store.apply_audited(&[], &fit)
        })
        .await;
        match written {
            Ok(Ok(_)) => {}
            Ok(Err(error)) => tracing::error!(count, "cannot record refused calls: {error}"),
            Err(error) => tracing::error!(count, "cannot record refused calls: {error}"),
        }
    }
}

async fn retention(store: Arc<dyn RecordStore>, days: u64, stop: CancellationToken) {
    loop {
        let age = time::Duration::days(i64::try_from(days).unwrap_or(i64::MAX / 86_400));
        // A retention longer than the calendar reaches back prunes nothing.
        let Some(cutoff) = time::OffsetDateTime::now_utc().checked_sub(age) else {
            return;
        };
        let before = record_store::audit::format_time(cutoff);
        let mut pruned = 0u64;
        loop {
            let store = Arc::clone(&store);
            let before = before.clone();
            match tokio::task::spawn_blocking(move || store.audit_prune(&before, PRUNE_CHUNK)).await
            {
                Ok(Ok(0)) => break,
                Ok(Ok(count)) => pruned += count,
                Ok(Err(error)) => {
                    tracing::warn!("audit retention: {error}");
                    break;
                }
                Err(_) => break,
            }
            if stop.is_cancelled() {
                return;
            }
        }
        if pruned > 0 {
            tracing::info!(
                pruned,
                days,
                "audit retention: pruned entries behind the checkpoint"
            );
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(PRUNE_EVERY) => {}
        }
    }
}
