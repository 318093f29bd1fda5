//! A filtered page of the audit log, newest first, as one SQL statement both stores run (each
//! filter an indexed column; `environment` through the index of the environments an entry
//! names).

use serde::{Deserialize, Serialize};

use super::{AuditStatus, AuditVia};

/// The largest page one query returns.
pub const MAX_AUDIT_PAGE: u32 = 1000;

/// Filters of `GET /api/audit`, all optional; they combine with AND.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    /// The key name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<AuditStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<AuditVia>,
    /// From this time on (inclusive), in the entries' form.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    /// Up to this time (inclusive), in the entries' form.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// Only entries before this seq (the cursor of the page before).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<u64>,
    /// At most this many (capped at [`MAX_AUDIT_PAGE`]).
    pub limit: u32,
}

pub(crate) enum Param {
    Text(String),
    Int(i64),
}

/// The query's statement over `{prefix}audit` and its parameters, placeholders written by
/// `placeholder(n)` (`?n` for SQLite, `$n` for PostgreSQL).
pub(crate) fn select(
    query: &AuditQuery,
    prefix: &str,
    placeholder: fn(usize) -> String,
) -> (String, Vec<Param>) {
    let mut params = Vec::new();
    let mut next = |param: Param| {
        params.push(param);
        placeholder(params.len())
    };
    let mut sql = format!("SELECT a.seq, a.entry, a.prev_hash, a.hash FROM {prefix}audit a");
    if let Some(environment) = &query.environment {
        let p = next(Param::Text(environment.clone()));
        sql.push_str(&format!(
            " JOIN {prefix}audit_environments e ON e.seq = a.seq AND e.environment = {p}"
        ));
    }
    sql.push_str(" WHERE 1 = 1");
    let mut text = |column: &str, op: &str, value: &Option<String>, sql: &mut String| {
        if let Some(value) = value {
            let p = next(Param::Text(value.clone()));
            sql.push_str(&format!(" AND a.{column} {op} {p}"));
        }
    };
    text("actor", "=", &query.actor, &mut sql);
    text("action", "=", &query.action, &mut sql);
    text("resource", "=", &query.resource, &mut sql);
    text(
        "outcome",
        "=",
        &query.outcome.map(|o| o.as_str().to_owned()),
        &mut sql,
    );
    text(
        "via",
        "=",
        &query.via.map(|v| v.as_str().to_owned()),
        &mut sql,
    );
    text("request_id", "=", &query.request_id, &mut sql);
    // Times never go backwards along the chain (an entry takes the later of its writer's clock
    // and its predecessor's time), so a time range is a range of `seq`: its ends are found in
    // the time index, and the page is read by the primary key from the newest end, not sorted
    // out of every entry in the range. No entry in range: a bound of NULL, which matches none.
    if let Some(since) = &query.since {
        let p = next(Param::Text(since.clone()));
        sql.push_str(&format!(
            " AND a.seq >= (SELECT seq FROM {prefix}audit WHERE at >= {p} ORDER BY at, seq LIMIT 1)"
        ));
    }
    if let Some(until) = &query.until {
        let p = next(Param::Text(until.clone()));
        sql.push_str(&format!(
            " AND a.seq <= (SELECT seq FROM {prefix}audit WHERE at <= {p} ORDER BY at DESC, seq DESC LIMIT 1)"
        ));
    }
    if let Some(before) = query.before {
        let p = next(Param::Int(i64::try_from(before).unwrap_or(i64::MAX)));
        sql.push_str(&format!(" AND a.seq < {p}"));
    }
    let limit = query.limit.clamp(1, MAX_AUDIT_PAGE);
    let p = next(Param::Int(i64::from(limit)));
    sql.push_str(&format!(" ORDER BY a.seq DESC LIMIT {p}"));
    (sql, params)
}

impl AuditQuery {
    /// Whether `entry` passes every filter (the in-memory store's query).
    pub(crate) fn matches(&self, entry: &super::AuditEntry) -> bool {
        let draft = &entry.draft;
        let eq = |filter: &Option<String>, value: Option<&str>| {
            filter.as_deref().is_none_or(|filter| Some(filter) == value)
        };
        eq(
            &self.actor,
            draft.actor.as_ref().map(|a| a.key_name.as_str()),
        ) && eq(&self.action, Some(&draft.action))
            && eq(&self.resource, Some(&draft.resource))
            && self
                .environment
                .as_ref()
                .is_none_or(|id| draft.environments.iter().any(|e| e == id))
            && self.outcome.is_none_or(|o| o == draft.outcome.status)
            && self.via.is_none_or(|v| v == draft.via)
            && self
                .since
                .as_deref()
                .is_none_or(|since| entry.at.as_str() >= since)
            && self
                .until
                .as_deref()
                .is_none_or(|until| entry.at.as_str() <= until)
            && eq(&self.request_id, draft.request_id.as_deref())
            && self.before.is_none_or(|before| entry.seq < before)
    }
}
