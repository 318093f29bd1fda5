//! The audit log on PostgreSQL: the same tables as on SQLite, prefixed `pa_`, one chain for
//! every node of the cluster. An append locks and moves the head row (made with the schema)
//! inside the batch's `SERIALIZABLE` transaction, so two nodes appending at once cannot both
//! take one `seq`: the loser is run again and chains after the winner. A trigger refuses `UPDATE`, `TRUNCATE`, and
//! a `DELETE` in front of the checkpoint.

use postgres::{types::ToSql, GenericClient};

use super::{seal, AuditBounds, AuditDraft, AuditQuery, AuditRecord, AuditRow, Param, GENESIS};

pub(crate) const SCHEMA: &str = "
    SET LOCAL client_min_messages = warning;
    CREATE TABLE IF NOT EXISTS pa_audit (
        seq BIGINT PRIMARY KEY,
        at TEXT COLLATE \"C\" NOT NULL,
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
    CREATE INDEX IF NOT EXISTS pa_audit_by_actor ON pa_audit (actor, seq);
    CREATE INDEX IF NOT EXISTS pa_audit_by_action ON pa_audit (action, seq);
    CREATE INDEX IF NOT EXISTS pa_audit_by_resource ON pa_audit (resource, seq);
    CREATE INDEX IF NOT EXISTS pa_audit_by_outcome ON pa_audit (outcome, seq);
    CREATE INDEX IF NOT EXISTS pa_audit_by_via ON pa_audit (via, seq);
    CREATE INDEX IF NOT EXISTS pa_audit_by_at ON pa_audit (at, seq);
    CREATE INDEX IF NOT EXISTS pa_audit_by_request ON pa_audit (request_id);
    CREATE TABLE IF NOT EXISTS pa_audit_environments (
        environment TEXT NOT NULL,
        seq BIGINT NOT NULL,
        PRIMARY KEY (environment, seq)
    );
    CREATE INDEX IF NOT EXISTS pa_audit_environments_by_seq ON pa_audit_environments (seq);
    CREATE TABLE IF NOT EXISTS pa_audit_head (
        one INT PRIMARY KEY CHECK (one = 1),
        seq BIGINT NOT NULL,
        hash TEXT NOT NULL,
        at TEXT COLLATE \"C\" NOT NULL
    );
    CREATE TABLE IF NOT EXISTS pa_audit_checkpoint (
        one INT PRIMARY KEY CHECK (one = 1),
        seq BIGINT NOT NULL,
        hash TEXT NOT NULL,
        at TEXT NOT NULL
    );
    CREATE OR REPLACE FUNCTION pa_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP = 'DELETE' AND OLD.seq <= COALESCE(
            (SELECT seq FROM pa_audit_checkpoint WHERE one = 1), 0) THEN
            RETURN OLD;
        END IF;
        RAISE EXCEPTION 'audit entries are append-only (% refused)', TG_OP;
    END $$;
    INSERT INTO pa_audit_head (one, seq, hash, at)
        VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000', '')
        ON CONFLICT (one) DO NOTHING;
    DROP TRIGGER IF EXISTS pa_audit_append_only ON pa_audit;
    CREATE TRIGGER pa_audit_append_only BEFORE UPDATE OR DELETE ON pa_audit
        FOR EACH ROW EXECUTE FUNCTION pa_audit_append_only();
    DROP TRIGGER IF EXISTS pa_audit_no_truncate ON pa_audit;
    CREATE TRIGGER pa_audit_no_truncate BEFORE TRUNCATE ON pa_audit
        FOR EACH STATEMENT EXECUTE FUNCTION pa_audit_append_only();";

fn seq_of(seq: u64) -> i64 {
    i64::try_from(seq).unwrap_or(i64::MAX)
}

fn pair(
    client: &mut impl GenericClient,
    sql: &str,
) -> Result<Option<(u64, String)>, postgres::Error> {
    Ok(client.query_opt(sql, &[])?.map(|row| {
        let seq: i64 = row.get(0);
        (u64::try_from(seq).unwrap_or(0), row.get(1))
    }))
}

/// Appends `drafts` after the chain's head inside the caller's transaction. A draft over the
/// limits is the caller's error (`Err` inside), not the server's.
pub(crate) fn append(
    client: &mut impl GenericClient,
    drafts: &[AuditDraft],
) -> Result<Result<(), crate::StoreError>, postgres::Error> {
    // The head row is locked first: a second appender waits here, and once the first commits
    // it fails with a serialization failure and its batch is run again, after the first.
    let head = client.query_opt(
        "SELECT seq, hash, at FROM pa_audit_head WHERE one = 1 FOR UPDATE",
        &[],
    )?;
    let (mut prev, previous_at) = match head {
        Some(row) => {
            let seq: i64 = row.get(0);
            (
                (u64::try_from(seq).unwrap_or(0), row.get(1)),
                row.get::<_, String>(2),
            )
        }
        None => ((0, GENESIS.to_owned()), String::new()),
    };
    let at = super::next_time(&previous_at);
    let at = at.as_str();
    for draft in drafts {
        let sealed = match seal(&prev, draft, at) {
            Ok(sealed) => sealed,
            Err(error) => return Ok(Err(error)),
        };
        let (record, c) = (&sealed.record, &sealed.columns);
        let seq = seq_of(record.seq);
        client.execute(
            "INSERT INTO pa_audit (seq, at, actor, role, via, tool, action, resource, outcome,
                                   request_id, entry, prev_hash, hash)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
            &[
                &seq,
                &c.at,
                &c.actor,
                &c.role,
                &c.via,
                &c.tool,
                &c.action,
                &c.resource,
                &c.outcome,
                &c.request_id,
                &record.entry,
                &record.prev_hash,
                &record.hash,
            ],
        )?;
        if !sealed.entry.draft.environments.is_empty() {
            client.execute(
                "INSERT INTO pa_audit_environments (environment, seq)
                 SELECT DISTINCT unnest($1::text[]), $2::bigint ON CONFLICT DO NOTHING",
                &[&sealed.entry.draft.environments, &seq],
            )?;
        }
        prev = (record.seq, record.hash.clone());
    }
    client.execute(
        "INSERT INTO pa_audit_head (one, seq, hash, at) VALUES (1, $1, $2, $3)
         ON CONFLICT (one) DO UPDATE SET seq = EXCLUDED.seq, hash = EXCLUDED.hash, at = EXCLUDED.at",
        &[&seq_of(prev.0), &prev.1, &at],
    )?;
    Ok(Ok(()))
}

pub(crate) fn bounds(client: &mut impl GenericClient) -> Result<AuditBounds, postgres::Error> {
    Ok(AuditBounds {
        checkpoint: pair(
            client,
            "SELECT seq, hash FROM pa_audit_checkpoint WHERE one = 1",
        )?,
        head: pair(client, "SELECT seq, hash FROM pa_audit_head WHERE one = 1")?,
    })
}

pub(crate) fn query(
    client: &mut impl GenericClient,
    query: &AuditQuery,
) -> Result<Vec<AuditRecord>, postgres::Error> {
    let (sql, params) = super::select(query, "pa_", |n| format!("${n}"));
    let params: Vec<Box<dyn ToSql + Sync>> = params
        .into_iter()
        .map(|param| -> Box<dyn ToSql + Sync> {
            match param {
                Param::Text(text) => Box::new(text),
                Param::Int(int) => Box::new(int),
            }
        })
        .collect();
    let borrowed: Vec<&(dyn ToSql + Sync)> = params.iter().map(|param| &**param).collect();
    Ok(client
        .query(&sql, &borrowed)?
        .into_iter()
        .map(|row| AuditRecord {
            seq: u64::try_from(row.get::<_, i64>(0)).unwrap_or(0),
            entry: row.get(1),
            prev_hash: row.get(2),
            hash: row.get(3),
        })
        .collect())
}

pub(crate) fn scan(
    client: &mut impl GenericClient,
    after: u64,
    limit: u32,
) -> Result<Vec<AuditRow>, postgres::Error> {
    let limit = i64::from(limit.min(super::SCAN_PAGE));
    Ok(client
        .query(
            "SELECT seq, entry, prev_hash, hash, at, actor, role, via, tool, action, resource,
                    outcome, request_id
             FROM pa_audit WHERE seq > $1 ORDER BY seq LIMIT $2",
            &[&seq_of(after), &limit],
        )?
        .into_iter()
        .map(|row| AuditRow {
            record: AuditRecord {
                seq: u64::try_from(row.get::<_, i64>(0)).unwrap_or(0),
                entry: row.get(1),
                prev_hash: row.get(2),
                hash: row.get(3),
            },
            columns: super::AuditColumns {
                at: row.get(4),
                actor: row.get(5),
                role: row.get(6),
                via: row.get(7),
                tool: row.get(8),
                action: row.get(9),
                resource: row.get(10),
                outcome: row.get(11),
                request_id: row.get(12),
            },
        })
        .collect())
}

/// Prunes at most `chunk` of the oldest entries written before `before`, behind the
/// checkpoint, in one transaction; how many went.
pub(crate) fn prune(
    client: &mut postgres::Client,
    before: &str,
    chunk: u32,
) -> Result<u64, postgres::Error> {
    let mut transaction = client.transaction()?;
    // One pruner at a time across the cluster; appends go on meanwhile.
    transaction.execute("SELECT pg_advisory_xact_lock(7061617564697470)", &[])?;
    let from = pair(
        &mut transaction,
        "SELECT seq, hash FROM pa_audit_checkpoint WHERE one = 1",
    )?
    .map_or(0, |(seq, _)| seq);
    let last = transaction.query_opt(
        "SELECT seq, hash, at FROM pa_audit WHERE seq = (
             SELECT max(seq) FROM (SELECT seq, at FROM pa_audit WHERE seq > $1 ORDER BY seq LIMIT $2) c
             WHERE at < $3)",
        &[&seq_of(from), &i64::from(chunk), &before],
    )?;
    let Some(last) = last else {
        return Ok(0);
    };
    let (seq, hash, at): (i64, String, String) = (last.get(0), last.get(1), last.get(2));
    transaction.execute(
        "INSERT INTO pa_audit_checkpoint (one, seq, hash, at) VALUES (1, $1, $2, $3)
         ON CONFLICT (one) DO UPDATE SET seq = EXCLUDED.seq, hash = EXCLUDED.hash, at = EXCLUDED.at",
        &[&seq, &hash, &at],
    )?;
    transaction.execute("DELETE FROM pa_audit_environments WHERE seq <= $1", &[&seq])?;
    let pruned = transaction.execute("DELETE FROM pa_audit WHERE seq <= $1", &[&seq])?;
    transaction.commit()?;
    Ok(pruned)
}
