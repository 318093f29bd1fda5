//! Notifications as stored: the subscriptions, the outbox, the deliveries and the notifier's
//! lease.
//!
//! - `SUBSCRIPTIONS`: id → the subscription as created (with its secrets: never shown).
//! - `OUTBOX`: what the notifier has still to do: a deployment's notices (`n/<delivery id>`,
//!   written by [`super::Writes`] in the transaction of the event they tell of), a test
//!   delivery (`t/…`) and a redelivery asked for (`r/…`). The notifier turns each row into
//!   deliveries and deletes it in one transaction.
//! - `DELIVERIES`: `<subscription>/<delivery id>` → the delivery, its attempts and state. A
//!   delivery id is `<inverted creation ms of the deployment>-<event number>-<index>-<deployment
//!   id>`: a subscription's deliveries list newest deployment first, a deployment's in the
//!   order its events happened.
//! - `PENDING_DELIVERIES`: the same keys, for the deliveries not yet accepted nor given up:
//!   what a new leader reads to know what it must send.
//! - `NOTIFIER`: `leader` (the copy that sends, and its node) and `beat` (a counter the leader
//!   moves every second, so the others see it is alive without comparing clocks).
//!
//! Every write of the notifier is conditional on the `leader` record still naming it.

use plugin_guest::{Condition, StoreOp};
use serde::{Deserialize, Serialize};

use super::{
    named::{self, Created, Described},
    records::{self, collection, Records, StoreError},
};
use crate::{
    model::Timestamp,
    notifications::{Notice, SubscriptionSpec, MAX_SUBSCRIPTIONS},
};

/// At most this many attempts are kept on a delivery (the count goes on).
const KEPT_ATTEMPTS: usize = 50;

/// Finished deliveries kept per subscription (the newest).
pub const KEPT_DELIVERIES: usize = 1_000;

/// The first index of the notices of a transaction that publishes no event of its own: they
/// sort after the notices of the transaction that published the event before them.
pub const UNNUMBERED_INDEX: usize = 50;

/// The id of a deployment's `index`th notice in the transaction that stored its events up to
/// number `event`.
pub fn delivery_id(deployment: &str, created_ms: u64, event: u64, index: usize) -> String {
    format!(
        "{:013}-{event:010}-{index:02}-{deployment}",
        9_999_999_999_999u64.saturating_sub(created_ms)
    )
}

/// What a delivery id says: its deployment and its place among the deployment's notices.
pub fn delivery_order(id: &str) -> Option<(&str, u64, u32)> {
    let mut parts = id.splitn(4, '-');
    let _inverted = parts.next()?;
    let event = parts.next()?.parse().ok()?;
    let index = parts.next()?.parse().ok()?;
    Some((parts.next()?, event, index))
}

/// A row of the outbox.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum OutboxEntry {
    /// A deployment's notice, for every subscription that wants it.
    Notice { id: String, notice: Box<Notice> },
    /// A test delivery for one subscription.
    Test {
        subscription: String,
        id: String,
        notice: Box<Notice>,
    },
    /// Send a delivery again.
    Redeliver { subscription: String, id: String },
}

/// The store operation of a deployment's notice (in its event's transaction).
pub(super) fn notice_op(id: String, notice: Notice) -> Result<StoreOp, StoreError> {
    let key = format!("n/{id}");
    let entry = OutboxEntry::Notice {
        id,
        notice: Box::new(notice),
    };
    Ok(StoreOp::put(
        collection::OUTBOX,
        &key,
        records::encode(collection::OUTBOX, &key, &entry)?,
    ))
}

/// The oldest rows of the outbox, at most `limit`, with their text.
pub async fn outbox(
    records: &Records,
    limit: u32,
) -> Result<Vec<(String, String, Option<OutboxEntry>)>, StoreError> {
    Ok(records
        .page(collection::OUTBOX, None, limit)
        .await?
        .into_iter()
        .map(|(key, text)| {
            let entry = match records::decode::<OutboxEntry>(collection::OUTBOX, &key, &text) {
                Ok(entry) => Some(entry),
                Err(error) => {
                    tracing::error!(%error, "an outbox row does not read; it is dropped");
                    None
                }
            };
            (key, text, entry)
        })
        .collect())
}

/// Asks the notifier to send delivery `id` of `subscription` again.
pub async fn ask_redelivery(
    records: &Records,
    subscription: &str,
    id: &str,
) -> Result<(), StoreError> {
    let key = format!("r/{subscription}/{id}/{}", Timestamp::now().unix_ms());
    let entry = OutboxEntry::Redeliver {
        subscription: subscription.to_owned(),
        id: id.to_owned(),
    };
    let op = StoreOp::put(
        collection::OUTBOX,
        &key,
        records::encode(collection::OUTBOX, &key, &entry)?,
    );
    records.apply_for_call(vec![op], |_| {}).await?;
    Ok(())
}

/// A subscription's record.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredSubscription {
    pub spec: SubscriptionSpec,
    pub created_by: String,
    pub created_at: Timestamp,
}

impl StoredSubscription {
    /// As the API shows it: secrets masked, with who created it and when.
    pub fn view(&self) -> SubscriptionSpec {
        SubscriptionSpec {
            created_by: Some(self.created_by.clone()),
            created_at: Some(self.created_at),
            ..self.spec.masked()
        }
    }
}

/// Every subscription as stored, in id order.
pub async fn subscriptions(records: &Records) -> Result<Vec<StoredSubscription>, StoreError> {
    Ok(subscriptions_as_read(records)
        .await?
        .into_iter()
        .map(|(_, stored)| stored)
        .collect())
}

/// Every subscription with its stored text (for a write conditional on it), in id order.
pub async fn subscriptions_as_read(
    records: &Records,
) -> Result<Vec<(String, StoredSubscription)>, StoreError> {
    records
        .rows(collection::SUBSCRIPTIONS)
        .await?
        .into_iter()
        .map(|(key, text)| {
            let stored = records::decode(collection::SUBSCRIPTIONS, &key, &text)?;
            Ok((text, stored))
        })
        .collect()
}

pub async fn subscription(
    records: &Records,
    id: &str,
) -> Result<Option<StoredSubscription>, StoreError> {
    records.get(collection::SUBSCRIPTIONS, id).await
}

/// Stores a new subscription (its spec checked) and, with `test`, a test delivery for it in
/// the same transaction.
pub async fn create_subscription(
    records: &Records,
    stored: &StoredSubscription,
    test: Option<(String, Notice)>,
) -> Result<Created, StoreError> {
    let id = &stored.spec.id;
    let mut more = Vec::new();
    if let Some((delivery, notice)) = test {
        let key = format!("t/{id}/{delivery}");
        let entry = OutboxEntry::Test {
            subscription: id.clone(),
            id: delivery,
            notice: Box::new(notice),
        };
        more.push(StoreOp::put(
            collection::OUTBOX,
            &key,
            records::encode(collection::OUTBOX, &key, &entry)?,
        ));
    }
    let described = Described {
        resource: format!("subscription:{id}"),
        environments: Vec::new(),
        changes: serde_json::json!({ "after": serde_json::to_value(stored.spec.masked()).unwrap_or_default() }),
        reason: None,
    };
    named::create(
        records,
        collection::SUBSCRIPTIONS,
        id,
        stored,
        MAX_SUBSCRIPTIONS,
        more,
        described,
    )
    .await
}

/// Removes a subscription with its deliveries; `None` when there was none.
pub async fn delete_subscription(
    records: &Records,
    id: &str,
) -> Result<Option<StoredSubscription>, StoreError> {
    named::delete(
        records,
        collection::SUBSCRIPTIONS,
        id,
        async |_: &StoredSubscription| {
            let prefix = format!("{id}/");
            let mut ops = Vec::new();
            for which in [collection::DELIVERIES, collection::PENDING_DELIVERIES] {
                for (key, _) in records.first_with_prefix(which, &prefix, usize::MAX).await? {
                    ops.push(StoreOp::delete(which, &key));
                }
            }
            Ok(ops)
        },
        |stored: &StoredSubscription| Described {
            resource: format!("subscription:{id}"),
            environments: Vec::new(),
            changes: serde_json::json!({ "before": serde_json::to_value(stored.spec.masked()).unwrap_or_default() }),
            reason: None,
        },
    )
    .await
}

/// Where a delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryState {
    /// Not accepted yet: tried again at `next_attempt_at`.
    Pending,
    /// The receiver accepted it.
    Delivered,
    /// Given up after the retry period (dead-lettered); `redeliver` sends it again.
    Dead,
}

/// One attempt of a delivery.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AttemptRecord {
    #[schema(value_type = String)]
    pub at: Timestamp,
    /// The receiver's status (HTTP, or SMTP's reply code), when it answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub duration_ms: u64,
    /// The node that sent it (absent on a host without nodes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

/// A delivery: one notice for one subscription.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeliveryRecord {
    pub id: String,
    pub subscription: String,
    pub event: String,
    pub deployment_id: String,
    /// What a webhook gets, byte for byte, on every attempt.
    pub body: String,
    pub state: DeliveryState,
    pub created_at: Timestamp,
    /// When the current round of attempts began: it is given up a retry period after this.
    pub round_started_at: Timestamp,
    #[serde(default)]
    pub next_attempt_at: Option<Timestamp>,
    #[serde(default)]
    pub attempt_count: u32,
    /// Attempts since the round began (the backoff's count).
    #[serde(default)]
    pub round_attempts: u32,
    /// The latest attempts, oldest first.
    #[serde(default)]
    pub attempts: Vec<AttemptRecord>,
    /// How many times it was sent again by hand.
    #[serde(default)]
    pub redelivered: u32,
}

impl DeliveryRecord {
    /// The key it is stored under.
    pub fn key(&self) -> String {
        format!("{}/{}", self.subscription, self.id)
    }

    /// Adds an attempt (keeping the latest [`KEPT_ATTEMPTS`]).
    pub fn attempted(&mut self, attempt: AttemptRecord) {
        self.attempt_count += 1;
        self.attempts.push(attempt);
        if self.attempts.len() > KEPT_ATTEMPTS {
            let extra = self.attempts.len() - KEPT_ATTEMPTS;
            self.attempts.drain(..extra);
        }
    }
}

/// A delivery with its text (for a write conditional on it).
pub async fn delivery(
    records: &Records,
    subscription: &str,
    id: &str,
) -> Result<Option<(String, DeliveryRecord)>, StoreError> {
    let key = format!("{subscription}/{id}");
    let Some(text) = records.get_raw(collection::DELIVERIES, &key).await? else {
        return Ok(None);
    };
    let record = records::decode(collection::DELIVERIES, &key, &text)?;
    Ok(Some((text, record)))
}

/// A subscription's deliveries after `after` (a delivery id), newest deployment first, at most
/// `limit`.
pub async fn deliveries(
    records: &Records,
    subscription: &str,
    after: Option<&str>,
    limit: usize,
) -> Result<Vec<DeliveryRecord>, StoreError> {
    let prefix = format!("{subscription}/");
    let mut found = Vec::new();
    // Ids are `A-Z a-z 0-9 _ - .`: every key of another subscription whose id extends this one's
    // sorts before `<id>.~`, which sorts before `<id>/`.
    let mut from = Some(match after {
        Some(id) => format!("{prefix}{id}"),
        None => format!("{subscription}.~"),
    });
    loop {
        let want = limit.saturating_sub(found.len()).clamp(1, 500) as u32;
        let page = records
            .page(collection::DELIVERIES, from.clone(), want)
            .await?;
        let full = page.len() == want as usize;
        for (key, text) in page {
            from = Some(key.clone());
            if !key.starts_with(&prefix) {
                if key.as_str() > prefix.as_str() {
                    return Ok(found);
                }
                continue;
            }
            found.push(records::decode(collection::DELIVERIES, &key, &text)?);
            if found.len() >= limit {
                return Ok(found);
            }
        }
        if !full {
            return Ok(found);
        }
    }
}

/// The keys of every delivery not yet accepted nor given up, in key order.
pub async fn pending_keys(records: &Records) -> Result<Vec<String>, StoreError> {
    Ok(records
        .rows(collection::PENDING_DELIVERIES)
        .await?
        .into_iter()
        .map(|(key, _)| key)
        .collect())
}

/// The keys of a subscription's finished deliveries past the newest [`KEPT_DELIVERIES`].
pub async fn surplus_deliveries(
    records: &Records,
    subscription: &str,
) -> Result<Vec<String>, StoreError> {
    let rows = records
        .first_with_prefix(
            collection::DELIVERIES,
            &format!("{subscription}/"),
            usize::MAX,
        )
        .await?;
    let mut finished = 0;
    let mut surplus = Vec::new();
    for (key, text) in rows {
        let Ok(record) = records::decode::<DeliveryRecord>(collection::DELIVERIES, &key, &text)
        else {
            continue;
        };
        if record.state != DeliveryState::Pending {
            finished += 1;
            if finished > KEPT_DELIVERIES {
                surplus.push(key);
            }
        }
    }
    Ok(surplus)
}

/// The notifier's lease: which copy sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Leader {
    /// The copy (a random token per start of the plugin).
    pub copy: String,
    /// Its node, and the host process holding that node.
    #[serde(default)]
    pub node_id: Option<String>,
    pub node_boot: String,
    pub since: Timestamp,
}

const LEADER: &str = "leader";
const BEAT: &str = "beat";

/// The leader's record as stored and its beat counter.
pub async fn leader(
    records: &Records,
) -> Result<(Option<(String, Option<Leader>)>, u64), StoreError> {
    let leader = records
        .get_raw(collection::NOTIFIER, LEADER)
        .await?
        .map(|text| {
            let leader = records::decode::<Leader>(collection::NOTIFIER, LEADER, &text).ok();
            (text, leader)
        });
    let beat = records
        .get::<u64>(collection::NOTIFIER, BEAT)
        .await?
        .unwrap_or(0);
    Ok((leader, beat))
}

/// Makes `me` the leader if the record is still `current` (absent: none); its text when it is.
pub async fn take_lead(
    records: &Records,
    current: Option<&str>,
    me: &Leader,
) -> Result<Option<String>, StoreError> {
    let text = records::encode(collection::NOTIFIER, LEADER, me)?;
    let op = StoreOp::put(collection::NOTIFIER, LEADER, text.clone()).when(match current {
        Some(current) => Condition::Equals(current.to_owned()),
        None => Condition::Absent,
    });
    Ok(records.apply(vec![op]).await?.is_none().then_some(text))
}

/// Gives the lead up (at a clean stop), so another copy takes it at once.
pub async fn give_up_lead(records: &Records, mine: &str) -> Result<(), StoreError> {
    let op = StoreOp::delete(collection::NOTIFIER, LEADER).when(Condition::Equals(mine.to_owned()));
    records.apply(vec![op]).await?;
    Ok(())
}

/// One transaction of the leader: every write holds only while the lease is `leader`.
pub struct NotifierWrites {
    ops: Vec<StoreOp>,
}

impl NotifierWrites {
    pub fn new(leader: &str) -> NotifierWrites {
        NotifierWrites {
            ops: vec![StoreOp::check(
                collection::NOTIFIER,
                LEADER,
                Condition::Equals(leader.to_owned()),
            )],
        }
    }

    /// The beat moves on to `beat`.
    pub fn beat(&mut self, beat: u64) -> Result<(), StoreError> {
        self.ops.push(StoreOp::put(
            collection::NOTIFIER,
            BEAT,
            records::encode(collection::NOTIFIER, BEAT, &beat)?,
        ));
        Ok(())
    }

    /// The delivery as it is now, if it is still `read` (absent: a new one), with its pending
    /// mark set or taken away.
    pub fn delivery(
        &mut self,
        record: &DeliveryRecord,
        read: Option<&str>,
    ) -> Result<(), StoreError> {
        let key = record.key();
        let put = StoreOp::put(
            collection::DELIVERIES,
            &key,
            records::encode(collection::DELIVERIES, &key, record)?,
        );
        // A new one only where none is: a delivery's id is never reused.
        self.ops.push(match read {
            Some(text) => put.when(Condition::Equals(text.to_owned())),
            None => put.when(Condition::Absent),
        });
        self.ops.push(match record.state {
            DeliveryState::Pending => {
                StoreOp::put(collection::PENDING_DELIVERIES, &key, String::from("{}"))
            }
            _ => StoreOp::delete(collection::PENDING_DELIVERIES, &key),
        });
        Ok(())
    }

    /// Holds only while subscription `id` is still `text`.
    pub fn subscription_unchanged(&mut self, id: &str, text: &str) {
        self.ops.push(StoreOp::check(
            collection::SUBSCRIPTIONS,
            id,
            Condition::Equals(text.to_owned()),
        ));
    }

    /// A pending mark whose delivery is gone.
    pub fn forget_pending(&mut self, key: &str) {
        self.ops
            .push(StoreOp::delete(collection::PENDING_DELIVERIES, key));
    }

    /// A finished delivery past what is kept.
    pub fn drop_delivery(&mut self, key: &str) {
        self.ops.push(StoreOp::delete(collection::DELIVERIES, key));
    }

    /// An outbox row done with (if it is still `text`).
    pub fn outbox_done(&mut self, key: &str, text: &str) {
        self.ops.push(
            StoreOp::delete(collection::OUTBOX, key).when(Condition::Equals(text.to_owned())),
        );
    }

    /// Writes it all, or nothing when the lease or a record read changed.
    pub async fn commit(self, records: &Records) -> Result<Committed, StoreError> {
        Ok(match records.apply(self.ops).await? {
            None => Committed::Yes,
            Some(conflict) if conflict.index == 0 => Committed::LeaseLost,
            Some(_) => Committed::Changed,
        })
    }
}

/// What a leader's transaction came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Committed {
    Yes,
    /// Another copy leads now: nothing was written.
    LeaseLost,
    /// A record read changed meanwhile: nothing was written.
    Changed,
}
