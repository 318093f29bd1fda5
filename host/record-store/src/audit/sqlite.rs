//! The audit log in the SQLite store: table `audit` (the entries, with their indexed columns),
//! `audit_environments` (which entries name an environment), `audit_head` and
//! `audit_checkpoint`. Triggers refuse to update an entry or to delete one in front of the
//! checkpoint.

use rusqlite::{params, params_from_iter, Connection, OptionalExtension, Transaction};

use super::{seal, AuditBounds, AuditDraft, AuditQuery, AuditRecord, AuditRow, Param, GENESIS};
use crate::StoreError;

pub(crate) const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS audit (
        seq INTEGER PRIMARY KEY,
        at TEXT NOT NULL,
        actor TEXT,
        role TEXT,
        via TEXT NOT NULL,
        tool TEXT,
        action TEXT NOT NULL,
        resource TEXT NOT NULL,
        outcome TEXT NOT NULL,
        request_id TEXT,
        entry TEXT NOT NULL,
        prev_hash TEXT NOT NULL,
        hash TEXT NOT NULL
    );
    CREATE INDEX IF NOT EXISTS audit_by_actor ON audit (actor, seq);
    CREATE INDEX IF NOT EXISTS audit_by_action ON audit (action, seq);
    CREATE INDEX IF NOT EXISTS audit_by_resource ON audit (resource, seq);
    CREATE INDEX IF NOT EXISTS audit_by_outcome ON audit (outcome, seq);
    CREATE INDEX IF NOT EXISTS audit_by_via ON audit (via, seq);
    CREATE INDEX IF NOT EXISTS audit_by_at ON audit (at);
    CREATE INDEX IF NOT EXISTS audit_by_request ON audit (request_id);
    CREATE TABLE IF NOT EXISTS audit_environments (
        environment TEXT NOT NULL,
        seq INTEGER NOT NULL,
        PRIMARY KEY (environment, seq)
    ) WITHOUT ROWID;
    CREATE INDEX IF NOT EXISTS audit_environments_by_seq ON audit_environments (seq);
    CREATE TABLE IF NOT EXISTS audit_head (
        one INTEGER PRIMARY KEY CHECK (one = 1),
        seq INTEGER NOT NULL,
        hash TEXT NOT NULL,
        at TEXT NOT NULL
    );
    CREATE TABLE IF NOT EXISTS audit_checkpoint (
        one INTEGER PRIMARY KEY CHECK (one = 1),
        seq INTEGER NOT NULL,
        hash TEXT NOT NULL,
        at TEXT NOT NULL
    );
    CREATE TRIGGER IF NOT EXISTS audit_append_only BEFORE UPDATE ON audit
    BEGIN
        SELECT RAISE(ABORT, 'audit entries are append-only');
    END;
    CREATE TRIGGER IF NOT EXISTS audit_prune_behind_checkpoint BEFORE DELETE ON audit
    WHEN OLD.seq > COALESCE((SELECT seq FROM audit_checkpoint), 0)
    BEGIN
        SELECT RAISE(ABORT, 'audit entries are append-only; only entries behind the checkpoint are pruned');
    END;
    CREATE TRIGGER IF NOT EXISTS audit_checkpoint_forward BEFORE UPDATE ON audit_checkpoint
    WHEN NEW.seq < OLD.seq
    BEGIN
        SELECT RAISE(ABORT, 'the audit checkpoint only moves forward');
    END;";

fn failed(action: &'static str) -> impl FnOnce(rusqlite::Error) -> StoreError {
    StoreError::sqlite(action)
}

/// Appends `drafts` after the chain's head, inside the caller's transaction.
pub(crate) fn append(
    transaction: &Transaction<'_>,
    drafts: &[AuditDraft],
) -> Result<(), StoreError> {
    let mut prev = head(transaction)?.unwrap_or((0, GENESIS.to_owned()));
    let previous_at: String = transaction
        .query_row("SELECT at FROM audit_head WHERE one = 1", [], |row| {
            row.get(0)
        })
        .optional()
        .map_err(failed("read the audit head"))?
        .unwrap_or_default();
    let at = super::next_time(&previous_at);
    let at = at.as_str();
    let mut insert = transaction
        .prepare_cached(
            "INSERT INTO audit (seq, at, actor, role, via, tool, action, resource, outcome,
                                request_id, entry, prev_hash, hash)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
        )
        .map_err(failed("prepare an audit append"))?;
    let mut index = transaction
        .prepare_cached(
            "INSERT OR IGNORE INTO audit_environments (environment, seq) VALUES (?1, ?2)",
        )
        .map_err(failed("prepare an audit append"))?;
    for draft in drafts {
        let sealed = seal(&prev, draft, at)?;
        let (record, columns) = (&sealed.record, &sealed.columns);
        let seq = i64::try_from(record.seq).unwrap_or(i64::MAX);
        insert
            .execute(params![
                seq,
                columns.at,
                columns.actor,
                columns.role,
                columns.via,
                columns.tool,
                columns.action,
                columns.resource,
                columns.outcome,
                columns.request_id,
                record.entry,
                record.prev_hash,
                record.hash,
            ])
            .map_err(failed("append an audit entry"))?;
        for environment in &sealed.entry.draft.environments {
            index
                .execute(params![environment, seq])
                .map_err(failed("index an audit entry"))?;
        }
        prev = (record.seq, record.hash.clone());
    }
    transaction
        .execute(
            "INSERT INTO audit_head (one, seq, hash, at) VALUES (1, ?1, ?2, ?3)
             ON CONFLICT (one) DO UPDATE SET seq = excluded.seq, hash = excluded.hash,
                                             at = excluded.at",
            params![i64::try_from(prev.0).unwrap_or(i64::MAX), prev.1, at],
        )
        .map_err(failed("move the audit head"))?;
    Ok(())
}

fn head(connection: &Connection) -> Result<Option<(u64, String)>, StoreError> {
    pair(connection, "SELECT seq, hash FROM audit_head WHERE one = 1")
}

fn pair(connection: &Connection, sql: &str) -> Result<Option<(u64, String)>, StoreError> {
    connection
        .query_row(sql, [], |row| Ok((row.get::<_, i64>(0)?, row.get(1)?)))
        .optional()
        .map(|found| found.map(|(seq, hash)| (u64::try_from(seq).unwrap_or(0), hash)))
        .map_err(failed("read the audit chain's bounds"))
}

pub(crate) fn bounds(connection: &Connection) -> Result<AuditBounds, StoreError> {
    Ok(AuditBounds {
        checkpoint: pair(
            connection,
            "SELECT seq, hash FROM audit_checkpoint WHERE one = 1",
        )?,
        head: head(connection)?,
    })
}

pub(crate) fn query(
    connection: &Connection,
    query: &AuditQuery,
) -> Result<Vec<AuditRecord>, StoreError> {
    let (sql, params) = super::select(query, "", |n| format!("?{n}"));
    let params = params.into_iter().map(|param| match param {
        Param::Text(text) => rusqlite::types::Value::Text(text),
        Param::Int(int) => rusqlite::types::Value::Integer(int),
    });
    let mut statement = connection
        .prepare_cached(&sql)
        .map_err(failed("query the audit log"))?;
    let rows = statement
        .query_map(params_from_iter(params), |row| {
            Ok(AuditRecord {
                seq: u64::try_from(row.get::<_, i64>(0)?).unwrap_or(0),
                entry: row.get(1)?,
                prev_hash: row.get(2)?,
                hash: row.get(3)?,
            })
        })
        .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
        .map_err(failed("query the audit log"))?;
    Ok(rows)
}

pub(crate) fn scan(
    connection: &Connection,
    after: u64,
    limit: u32,
) -> Result<Vec<AuditRow>, StoreError> {
    let mut statement = connection
        .prepare_cached(
            "SELECT seq, entry, prev_hash, hash, at, actor, role, via, tool, action, resource,
                    outcome, request_id
             FROM audit WHERE seq > ?1 ORDER BY seq LIMIT ?2",
        )
        .map_err(failed("read the audit log"))?;
    let rows = statement
        .query_map(
            params![
                i64::try_from(after).unwrap_or(i64::MAX),
                limit.min(super::SCAN_PAGE)
            ],
            |row| {
                Ok(AuditRow {
                    record: AuditRecord {
                        seq: u64::try_from(row.get::<_, i64>(0)?).unwrap_or(0),
                        entry: row.get(1)?,
                        prev_hash: row.get(2)?,
                        hash: row.get(3)?,
                    },
                    columns: super::AuditColumns {
                        at: row.get(4)?,
                        actor: row.get(5)?,
                        role: row.get(6)?,
                        via: row.get(7)?,
                        tool: row.get(8)?,
                        action: row.get(9)?,
                        resource: row.get(10)?,
                        outcome: row.get(11)?,
                        request_id: row.get(12)?,
                    },
                })
            },
        )
        .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
        .map_err(failed("read the audit log"))?;
    Ok(rows)
}

/// Prunes at most `chunk` of the oldest entries written before `before`, behind a checkpoint
/// moved in the same transaction; how many went.
pub(crate) fn prune(
    connection: &mut Connection,
    before: &str,
    chunk: u32,
) -> Result<u64, StoreError> {
    let transaction = connection
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(failed("begin an audit prune"))?;
    let from = pair(
        &transaction,
        "SELECT seq, hash FROM audit_checkpoint WHERE one = 1",
    )?
    .map_or(0, |(seq, _)| seq);
    let from = i64::try_from(from).unwrap_or(i64::MAX);
    // The last entry of the chunk that is old enough: entries are in time order but for the
    // clocks of several writers, and a few newer ones pruned with their older neighbours are
    // the price of one key range.
    let last: Option<(i64, String, String)> = transaction
        .query_row(
            "SELECT seq, hash, at FROM audit WHERE seq = (
                 SELECT max(seq) FROM (SELECT seq, at FROM audit WHERE seq > ?1 ORDER BY seq LIMIT ?2)
                 WHERE at < ?3)",
            params![from, chunk, before],
            |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
        )
        .optional()
        .map_err(failed("find the entries to prune"))?;
    let Some((last, hash, at)) = last else {
        return Ok(0);
    };
    transaction
        .execute(
            "INSERT INTO audit_checkpoint (one, seq, hash, at) VALUES (1, ?1, ?2, ?3)
             ON CONFLICT (one) DO UPDATE SET seq = excluded.seq, hash = excluded.hash, at = excluded.at",
            params![last, hash, at],
        )
        .map_err(failed("move the audit checkpoint"))?;
    transaction
        .execute(
            "DELETE FROM audit_environments WHERE seq <= ?1",
            params![last],
        )
        .map_err(failed("prune the audit index"))?;
    let pruned = transaction
        .execute("DELETE FROM audit WHERE seq <= ?1", params![last])
        .map_err(failed("prune audit entries"))?;
    transaction
        .commit()
        .map_err(failed("commit an audit prune"))?;
    Ok(pruned as u64)
}
