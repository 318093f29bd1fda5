//! The cluster's event log on the PostgreSQL server: every event any node publishes, in one
//! order, so every node serves the same stream with the same ids.
//!
//! - `pa_events` is the truth; a `NOTIFY pa_events` is only the wake-up. A node that missed
//!   notifications (its listening connection dropped) reads what it missed from the table.
//! - Ids commit in their order: an append takes a transaction-scoped advisory lock before it
//!   draws ids from the sequence, and holds it until it commits. A reader that has seen id `n`
//!   has therefore seen every id below `n` that will ever be visible, so `id > last` never
//!   skips an event. Ids may have holes (an append that failed drew numbers too); nothing
//!   relies on them being dense.
//! - An append is idempotent: each event carries the publishing process's `(boot_id, seq)`,
//!   unique in the table, so a batch sent again after a connection broke mid-commit is not
//!   stored twice.

use std::time::Duration;

use postgres::{fallible_iterator::FallibleIterator, Client};

use crate::{PgStore, StoreError};

/// The channel appends and beats are announced on.
pub const EVENTS_CHANNEL: &str = "pa_events";
/// Serializes appends across the cluster (an arbitrary, fixed advisory lock key).
const APPEND_LOCK: i64 = 0x7061_5f65_7665_6e74;
/// How long an append waits for the lock, and how long the server lets an append that holds it
/// sit idle before it ends the transaction (and so frees the lock).
const APPEND_TIMEOUTS: &str =
    "SET LOCAL lock_timeout = '5s'; SET LOCAL idle_in_transaction_session_timeout = '10s'";
/// The `application_name` of a listening connection, before its node's id, so an operator can
/// tell it apart.
pub const LISTENER_NAME: &str = "powerautomation-events";

/// What a subscriber with the `user` role receives of an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserView {
    /// The same data as everyone.
    Same,
    /// Another (redacted) JSON text.
    Redacted(String),
    /// Nothing: users do not receive this event.
    Hidden,
}

impl UserView {
    /// As stored: the user data (absent for the same data) and whether users get it at all.
    fn columns(&self) -> (Option<&str>, bool) {
        match self {
            UserView::Same => (None, true),
            UserView::Redacted(data) => (Some(data), true),
            UserView::Hidden => (None, false),
        }
    }

    fn from_columns(user_data: Option<String>, for_users: bool) -> UserView {
        match (user_data, for_users) {
            (_, false) => UserView::Hidden,
            (None, true) => UserView::Same,
            (Some(data), true) => UserView::Redacted(data),
        }
    }
}

/// An event to append: its number within the publishing process, and its views.
#[derive(Debug, Clone, Copy)]
pub struct NewEvent<'a> {
    pub seq: u64,
    pub kind: &'a str,
    pub data: &'a str,
    pub user_view: &'a UserView,
}

/// An event as the log holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggedEvent {
    pub id: u64,
    /// The node and the process (boot) that published it.
    pub node_id: String,
    pub boot_id: String,
    pub kind: String,
    pub data: String,
    pub user_view: UserView,
}

const COLUMNS: &str = "id, node_id, boot_id, kind, data, user_data, for_users";

fn logged(row: &postgres::Row) -> Result<LoggedEvent, postgres::Error> {
    let id: i64 = row.try_get(0)?;
    Ok(LoggedEvent {
        id: u64::try_from(id).unwrap_or(0),
        node_id: row.try_get(1)?,
        boot_id: row.try_get(2)?,
        kind: row.try_get(3)?,
        data: row.try_get(4)?,
        user_view: UserView::from_columns(row.try_get(5)?, row.try_get(6)?),
    })
}

/// An id as the server's `BIGINT` (ids past `i64::MAX` do not occur; they are clamped).
fn sql_id(id: u64) -> i64 {
    i64::try_from(id).unwrap_or(i64::MAX)
}

impl PgStore {
    /// Appends `events`, published by `boot_id` on `node_id`, in their order after every event
    /// already in the log, and announces them on [`EVENTS_CHANNEL`]. Events this process
    /// appended before (same `boot_id` and `seq`) are left as they are.
    pub fn append_events(
        &self,
        node_id: &str,
        boot_id: &str,
        events: &[NewEvent<'_>],
    ) -> Result<(), StoreError> {
        if events.is_empty() {
            return Ok(());
        }
        let seqs: Vec<i64> = events.iter().map(|event| sql_id(event.seq)).collect();
        let kinds: Vec<&str> = events.iter().map(|event| event.kind).collect();
        let data: Vec<&str> = events.iter().map(|event| event.data).collect();
        let (user_data, for_users): (Vec<Option<&str>>, Vec<bool>) =
            events.iter().map(|event| event.user_view.columns()).unzip();
        self.write(
            || format!("append {} events to the event log", events.len()),
            |client| {
                let mut transaction = client.transaction()?;
                // A node paused while it holds the lock (SIGSTOP, a frozen machine) must not
                // stop every node's appends: the server ends such a transaction, and a waiter
                // gives up and tries again.
                transaction.batch_execute(APPEND_TIMEOUTS)?;
                transaction.execute("SELECT pg_advisory_xact_lock($1)", &[&APPEND_LOCK])?;
                transaction.execute(
                    "INSERT INTO pa_events (node_id, boot_id, seq, kind, data, user_data, for_users)
                     SELECT $1, $2, e.seq, e.kind, e.data, e.user_data, e.for_users
                     FROM unnest($3::bigint[], $4::text[], $5::text[], $6::text[], $7::bool[])
                          WITH ORDINALITY AS e(seq, kind, data, user_data, for_users, n)
                     ORDER BY e.n
                     ON CONFLICT (boot_id, seq) DO NOTHING",
                    &[
                        &node_id, &boot_id, &seqs, &kinds, &data, &user_data, &for_users,
                    ],
                )?;
                // Delivered at commit, to every listening connection.
                transaction.execute("SELECT pg_notify($1, '')", &[&EVENTS_CHANNEL])?;
                transaction.commit()
            },
        )
    }

    /// The newest id of the log (`None`: it is empty).
    pub fn newest_event_id(&self) -> Result<Option<u64>, StoreError> {
        self.event_id_bound("SELECT max(id) FROM pa_events")
    }

    /// The oldest id the log still holds (`None`: it is empty).
    pub fn oldest_event_id(&self) -> Result<Option<u64>, StoreError> {
        self.event_id_bound("SELECT min(id) FROM pa_events")
    }

    /// The one id `query` (an aggregate over the log's ids) answers.
    fn event_id_bound(&self, query: &str) -> Result<Option<u64>, StoreError> {
        self.read(
            || "read the event log".into(),
            |client| {
                let id: Option<i64> = client.query_one(query, &[])?.try_get(0)?;
                Ok(id.map(|id| u64::try_from(id).unwrap_or(0)))
            },
        )
    }

    /// Events with `after < id < before`, in order, at most `limit`.
    pub fn events_between(
        &self,
        after: u64,
        before: u64,
        limit: u32,
    ) -> Result<Vec<LoggedEvent>, StoreError> {
        let (after, before, limit) = (sql_id(after), sql_id(before), i64::from(limit));
        self.read(
            || "read the event log".into(),
            |client| {
                client
                    .query(
                        &format!(
                            "SELECT {COLUMNS} FROM pa_events WHERE id > $1 AND id < $2
                             ORDER BY id LIMIT $3"
                        ),
                        &[&after, &before, &limit],
                    )?
                    .iter()
                    .map(logged)
                    .collect()
            },
        )
    }

    /// The last `limit` events of the log, oldest first.
    pub fn events_tail(&self, limit: u32) -> Result<Vec<LoggedEvent>, StoreError> {
        let limit = i64::from(limit);
        self.read(
            || "read the end of the event log".into(),
            |client| {
                client
                    .query(
                        &format!(
                            "SELECT * FROM (SELECT {COLUMNS} FROM pa_events ORDER BY id DESC LIMIT $1) AS tail
                             ORDER BY id"
                        ),
                        &[&limit],
                    )?
                    .iter()
                    .map(logged)
                    .collect()
            },
        )
    }

    /// Deletes all but the newest `keep` ids of the log; returns how many events went.
    pub fn prune_events(&self, keep: u64) -> Result<u64, StoreError> {
        let keep = sql_id(keep);
        self.write(
            || "prune the event log".into(),
            |client| {
                client.execute(
                    "DELETE FROM pa_events WHERE id <= (SELECT max(id) FROM pa_events) - $1",
                    &[&keep],
                )
            },
        )
    }

    /// Sends `payload` on [`EVENTS_CHANNEL`] through a pooled connection: a node sends itself
    /// beats this way, to learn whether its listening connection still hears the server.
    pub fn notify_events(&self, payload: &str) -> Result<(), StoreError> {
        self.write(
            || "send a notification".into(),
            |client| {
                client.execute("SELECT pg_notify($1, $2)", &[&EVENTS_CHANNEL, &payload])?;
                Ok(())
            },
        )
    }

    /// A connection of its own (not pooled) that listens on [`EVENTS_CHANNEL`], named
    /// `powerautomation-events <node_id>` on the server.
    /// One attempt: the caller, which reads the log meanwhile, tries again.
    pub fn listen_events(&self, node_id: &str) -> Result<EventListener, StoreError> {
        let mut config = self.config.clone();
        config.application_name(&format!("{LISTENER_NAME} {node_id}"));
        let mut client = config.connect(postgres::NoTls).map_err(|error| {
            StoreError::postgres(format!("connect to {}", self.shown()), &error)
        })?;
        client
            .batch_execute(&format!("LISTEN {EVENTS_CHANNEL}"))
            .map_err(|error| StoreError::postgres("listen for events", &error))?;
        Ok(EventListener { client })
    }
}

/// A connection that listens on [`EVENTS_CHANNEL`]. Dropped on a thread that drives no async
/// tasks (closing runs the client's runtime).
pub struct EventListener {
    client: Client,
}

impl EventListener {
    /// The payloads of the notifications that arrive within `timeout` (waiting for the first
    /// one, then taking what else is there), or an error when the connection ended.
    pub fn wait(&mut self, timeout: Duration) -> Result<Vec<String>, StoreError> {
        let closed = |error: postgres::Error| StoreError::postgres("listen for events", &error);
        let mut payloads = Vec::new();
        let mut notifications = self.client.notifications();
        let first = notifications.timeout_iter(timeout).next().map_err(closed)?;
        if let Some(first) = first {
            payloads.push(first.payload().to_owned());
            let mut pending = notifications.iter();
            while let Some(next) = pending.next().map_err(closed)? {
                payloads.push(next.payload().to_owned());
            }
        }
        drop(notifications);
        if payloads.is_empty() && self.client.is_closed() {
            return Err(StoreError::Postgres {
                action: "listen for events".into(),
                message: "the server closed the connection".into(),
            });
        }
        Ok(payloads)
    }
}
