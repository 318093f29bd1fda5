//! The audit entry of the call a task serves: who (the caller the host authenticated), through
//! which door (`via`, the MCP tool), what (`action`, `resource`), and the request id.
//!
//! A changing route runs its handler inside [`AuditCall::scope`]. The one store transaction
//! that makes the call's change takes the entry ([`pending`]) and hands it to the host with its
//! batch, so both are written or neither; the transaction adds what only it knows (the new
//! deployment's id, its environments). A call whose change did not go through such a
//! transaction (it failed, or changed nothing) gets its entry after the answer, from the route's
//! layer, with the answer's status. Refusals (401/403) are the host's to record. Tasks a call
//! spawns (runs) do not inherit the scope: only the call's own transaction carries its entry.

use std::sync::{Arc, Mutex};

use plugin_guest::{Caller, Role};
use serde::Serialize;
use serde_json::Value;

tokio::task_local! {
    static CALL: Arc<AuditCall>;
}

/// Through which door a call came. `schedule` and `auto` are the plugin's own; the others are
/// read from `X-PowerAutomation-Via`, which only labels the door (the actor is the key).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Via {
    Rest,
    Mcp,
    Cli,
    Dashboard,
    Schedule,
    Auto,
}

impl Via {
    /// The door a request names in `X-PowerAutomation-Via` (`rest` for anything else).
    pub fn from_header(value: Option<&str>) -> Via {
        match value {
            Some("mcp") => Via::Mcp,
            Some("cli") => Via::Cli,
            Some("dashboard") => Via::Dashboard,
            _ => Via::Rest,
        }
    }
}

/// The header a request names its door in, and the MCP tool's.
pub const VIA_HEADER: &str = "x-powerautomation-via";
pub const TOOL_HEADER: &str = "x-powerautomation-tool";

/// How a call ended, as its entry says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Denied,
    Failed,
}

#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub status: Status,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_status: Option<u16>,
}

impl Outcome {
    pub const OK: Outcome = Outcome {
        status: Status::Ok,
        error: None,
        http_status: None,
    };

    /// The outcome an HTTP answer means, with its error code.
    pub fn of_http(status: u16, error: Option<String>) -> Outcome {
        Outcome {
            status: match status {
                200..=399 => Status::Ok,
                401 | 403 => Status::Denied,
                _ => Status::Failed,
            },
            error,
            http_status: Some(status),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
struct Actor {
    key_name: String,
    role: &'static str,
}

/// What the entry says the call was about; the handler or its transaction fills it in.
#[derive(Debug, Default, Clone)]
pub struct Subject {
    pub resource: Option<String>,
    pub changes: Option<Value>,
    pub environments: Vec<String>,
    pub reason: Option<String>,
}

/// One call's entry, before it is written.
#[derive(Debug)]
pub struct AuditCall {
    actor: Option<Actor>,
    via: Via,
    tool: Option<String>,
    action: &'static str,
    /// What the call names (its path's deployment or environment), unless its transaction
    /// says more precisely.
    named: Option<String>,
    request_id: Option<String>,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    subject: Subject,
    /// Written with a transaction, or after the answer.
    recorded: bool,
}

/// The draft as the host reads it (`record_store::AuditDraft`).
#[derive(Serialize)]
struct Draft<'a> {
    actor: &'a Option<Actor>,
    via: Via,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool: &'a Option<String>,
    action: &'a str,
    resource: &'a str,
    outcome: &'a Outcome,
    #[serde(skip_serializing_if = "Option::is_none")]
    request_id: &'a Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: &'a Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    changes: &'a Option<Value>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    environments: &'a Vec<String>,
}

impl AuditCall {
    pub fn new(
        caller: Option<&Caller>,
        via: Via,
        tool: Option<String>,
        action: &'static str,
        named: Option<String>,
        request_id: Option<String>,
    ) -> AuditCall {
        AuditCall {
            actor: caller.map(|caller| Actor {
                key_name: caller.name.clone(),
                role: role_name(caller.role),
            }),
            via,
            tool,
            action,
            named,
            request_id: request_id.filter(|id| !id.is_empty()),
            state: Mutex::default(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs `work` as this call: transactions inside it carry its entry.
    pub async fn scope<F: std::future::Future>(self: &Arc<Self>, work: F) -> F::Output {
        CALL.scope(Arc::clone(self), work).await
    }

    pub fn recorded(&self) -> bool {
        self.state().recorded
    }

    pub(crate) fn mark_recorded(&self) {
        self.state().recorded = true;
    }

    /// The draft with `outcome`, as JSON for the host.
    pub fn draft(&self, outcome: &Outcome) -> String {
        let subject = self.state().subject.clone();
        self.draft_of(&subject, outcome)
    }

    /// The draft of this call about `subject`. Changes too large for an entry are replaced by
    /// their size and digest, so a large environment still gets its entry.
    fn draft_of(&self, subject: &Subject, outcome: &Outcome) -> String {
        let text = self.draft_text(subject, outcome);
        if text.len() <= MAX_DRAFT_BYTES {
            return text;
        }
        let mut smaller = subject.clone();
        let changes = subject
            .changes
            .as_ref()
            .map(Value::to_string)
            .unwrap_or_default();
        smaller.changes = Some(serde_json::json!({
            "truncated": true,
            "bytes": changes.len(),
            "sha256": hex::encode(<sha2::Sha256 as sha2::Digest>::digest(changes.as_bytes())),
        }));
        smaller.environments.truncate(MAX_ENVIRONMENTS);
        self.draft_text(&smaller, outcome)
    }

    fn draft_text(&self, subject: &Subject, outcome: &Outcome) -> String {
        let draft = Draft {
            actor: &self.actor,
            via: self.via,
            tool: &self.tool,
            action: self.action,
            resource: subject
                .resource
                .as_deref()
                .or(self.named.as_deref())
                .unwrap_or(self.action),
            outcome,
            request_id: &self.request_id,
            reason: &subject.reason,
            changes: &subject.changes,
            environments: &subject.environments,
        };
        serde_json::to_string(&draft).unwrap_or_default()
    }
}

fn role_name(role: Role) -> &'static str {
    role.as_str()
}

/// The call this task serves, if its entry is not written yet.
pub fn current() -> Option<Arc<AuditCall>> {
    CALL.try_with(Arc::clone)
        .ok()
        .filter(|call| !call.recorded())
}

/// The entry a transaction should carry: the current call's (not yet written), described
/// further by `describe`, as a successful change. `None` outside a call. The call itself keeps
/// what it said before: a transaction that does not commit must not name what it would have
/// made (a deployment id that never came to be) in the entry of the failed call.
pub fn pending(describe: impl FnOnce(&mut Subject)) -> Option<(Arc<AuditCall>, String)> {
    let call = current()?;
    let mut subject = call.state().subject.clone();
    describe(&mut subject);
    let draft = call.draft_of(&subject, &Outcome::OK);
    Some((call, draft))
}

/// The largest draft the plugin sends (the host's limit for an entry is 1 MiB).
const MAX_DRAFT_BYTES: usize = 512 * 1024;
/// The most environments one entry names (the host's limit).
const MAX_ENVIRONMENTS: usize = 100_000;

/// Sets `slot` unless it is set.
pub fn fill<T>(slot: &mut Option<T>, value: impl FnOnce() -> T) {
    if slot.is_none() {
        *slot = Some(value());
    }
}

/// An environment as an entry shows it: every secret as `***`.
pub fn masked(mut environment: Value) -> Value {
    if let Some(fields) = environment.as_object_mut() {
        for secret in ["api_token", "webhook_secret"] {
            if let Some(value) = fields.get_mut(secret) {
                if !value.is_null() {
                    *value = Value::String("***".into());
                }
            }
        }
    }
    environment
}
