//! The notifier: of every copy of the plugin on every node that shares the store, one (the
//! leader) sends the deliveries; the others watch its beat and take the lease when it stops.
//!
//! The leader, every [`TICK`] and at once when this copy wrote a notice:
//! - turns the outbox's rows into deliveries (one per subscription that wants the notice) and
//!   deletes them, in one transaction;
//! - sends, on each subscription's *lane* of a deployment, the first delivery not yet accepted
//!   nor given up, one at a time: a lane's next delivery waits until the one before is
//!   accepted or given up, so a receiver sees a deployment's events in their order;
//! - records each attempt, and the next one after a backoff with jitter, or the delivery
//!   given up once the retry period has passed.
//!
//! Every write of the leader holds only while the lease names it. A leader that loses the lease
//! (paused past [`STALE`], cut off from the store) writes nothing more; what it was sending is
//! sent again by the next leader with the same `Idempotency-Key`: a receiver that dedupes sees
//! each delivery once.
//!
//! Taking the lease: at once when there is none, when it names a process of this node (or, on a
//! host without nodes, of this host) that is not this one (a restart: the old process is gone),
//! and when its beat has not moved for [`STALE`] on this copy's clock (no clock agreement).
//! A copy that stops cleanly gives the lease up, so the next copy (a hot swap) takes it at once.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
    time::{Duration, Instant},
};

use serde::Serialize;
use tokio::task::JoinSet;

use super::{
    channels::{self, Outgoing, Sent},
    retry_delay, Notice, Subscription,
};
use crate::{
    coordinator::Coordinator,
    environments::Environment,
    model::Timestamp,
    persist::{
        outbox::{
            self, AttemptRecord, Committed, DeliveryRecord, DeliveryState, Leader, NotifierWrites,
            OutboxEntry,
        },
        records::StoreError,
    },
};

/// How often the leader looks at the outbox and its lanes.
const TICK: Duration = Duration::from_millis(200);

/// How often the leader beats, and the others look at the lease.
const BEAT: Duration = Duration::from_secs(1);

/// A lease whose beat has not moved for this long (on the looking copy's clock) is taken.
const STALE: Duration = Duration::from_secs(10);

/// Outbox rows turned into deliveries per transaction.
const OUTBOX_PAGE: u32 = 200;

/// How often finished deliveries past what is kept are deleted.
const PRUNE_EVERY: Duration = Duration::from_secs(3_600);

/// What every attempt needs.
struct Context {
    coordinator: Arc<Coordinator>,
    /// This copy, as the lease names it.
    me: Leader,
}

/// One subscription's deliveries of one deployment not yet accepted nor given up, by their
/// place in the deployment's order.
struct Lane {
    subscription: String,
    queue: BTreeMap<(u64, u32), String>,
    /// Not before (ms since the epoch): the first delivery's next attempt, as last learnt.
    due_ms: u64,
    busy: bool,
}

/// The lease held, and what the leader knows.
struct Lead {
    text: String,
    beat: u64,
    lanes: HashMap<String, Lane>,
    sending: JoinSet<Finished>,
    /// When the lease was last known to be held (a beat written).
    beaten: Instant,
    /// Outbox rows whose transaction found something changed, with how many times in a row.
    changed: HashMap<String, u32>,
    /// The lane and delivery of each attempt in flight (to free its lane should it panic).
    on_lane: HashMap<tokio::task::Id, (String, String)>,
    pruned: Instant,
}

/// What a look at the lease saw last: its text and beat, and since when (this copy's clock).
struct Seen {
    text: Option<String>,
    beat: u64,
    since: Instant,
}

/// An attempt's lane, its delivery and what became of it.
type Finished = (String, String, Attempted);

/// What became of an attempt (or of the look before it).
enum Attempted {
    /// Accepted, given up, or gone (deleted with its subscription): the lane moves on.
    Done,
    /// To be tried again at this time (ms since the epoch).
    Later(u64),
    /// The lease is another copy's now.
    LeaseLost,
}

/// Sends deliveries while this copy leads, until the copy stops. `host_boot` is the host
/// process this copy runs in.
pub async fn run(coordinator: Arc<Coordinator>, host_boot: String) {
    let stop = coordinator.stopping();
    let me = Leader {
        copy: random_token(),
        node_id: coordinator.node().map(|node| node.node_id.clone()),
        node_boot: host_boot,
        since: Timestamp::now(),
    };
    let context = Arc::new(Context { coordinator, me });
    let records = context.coordinator.records().clone();
    let mut lead: Option<Lead> = None;
    let mut seen: Option<Seen> = None;
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_beat: Option<Instant> = None;
    loop {
        let finished = tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => None,
            _ = super::outbox_written_wait() => None,
            Some(joined) = async {
                match &mut lead {
                    Some(lead) if !lead.sending.is_empty() => lead.sending.join_next_with_id().await,
                    _ => std::future::pending().await,
                }
            } => Some(joined),
        };
        if let (Some(joined), Some(held)) = (finished, &mut lead) {
            let (task, (lane, id, attempted)) = match joined {
                Ok(done) => done,
                Err(error) => {
                    tracing::error!(%error, "notifier: an attempt ended abnormally; its delivery is tried again");
                    let (lane, id) = held.on_lane.remove(&error.id()).unwrap_or_default();
                    let later = Attempted::Later(Timestamp::now().unix_ms() + 2_000);
                    (error.id(), (lane, id, later))
                }
            };
            held.on_lane.remove(&task);
            if settle(held, &lane, &id, attempted) {
                tracing::warn!("notifier: another copy leads now; this one stops sending");
                lead = None;
            } else {
                // The lane's next delivery goes now, not at the next tick.
                dispatch(&context, held);
            }
            continue;
        }
        if last_beat.is_none_or(|at| at.elapsed() >= BEAT) {
            last_beat = Some(Instant::now());
            if let Err(error) = keep_or_take(&context, &mut lead, &mut seen).await {
                // What was seen before the store failed says nothing of the beat since.
                seen = None;
                tracing::warn!(%error, "notifier: cannot look at the lease; trying again");
            }
        }
        let Some(held) = &mut lead else {
            continue;
        };
        match fan_out(&context, held).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!("notifier: another copy leads now; this one stops sending");
                lead = None;
                continue;
            }
            Err(error) => tracing::warn!(%error, "notifier: cannot read the outbox; trying again"),
        }
        dispatch(&context, held);
        if held.pruned.elapsed() >= PRUNE_EVERY {
            held.pruned = Instant::now();
            // Off the loop: reading every delivery must not hold up the beat.
            let context = Arc::clone(&context);
            let leader = held.text.clone();
            tokio::spawn(async move {
                if let Err(error) = prune(&context, &leader).await {
                    tracing::warn!(%error, "notifier: cannot prune old deliveries");
                }
            });
        }
    }
    if let Some(held) = lead {
        drop(held.sending);
        if let Err(error) = outbox::give_up_lead(&records, &held.text).await {
            tracing::warn!(%error, "notifier: cannot give the lease up; another copy takes it once it is stale");
        }
    }
}

/// A random token naming this copy.
fn random_token() -> String {
    let mut bytes = [0u8; 8];
    if getrandom::fill(&mut bytes).is_err() {
        bytes = (std::process::id() as u64 ^ Timestamp::now().unix_ms()).to_be_bytes();
    }
    hex::encode(bytes)
}

/// A number from 0 to 1 for the jitter.
fn jitter() -> f64 {
    let mut bytes = [0u8; 4];
    if getrandom::fill(&mut bytes).is_err() {
        return 1.0;
    }
    f64::from(u32::from_be_bytes(bytes)) / f64::from(u32::MAX)
}

/// The leader beats (and learns it lost the lease); another copy looks whether to take it.
async fn keep_or_take(
    context: &Context,
    lead: &mut Option<Lead>,
    seen: &mut Option<Seen>,
) -> Result<(), StoreError> {
    let records = context.coordinator.records();
    if let Some(held) = lead {
        let mut writes = NotifierWrites::new(&held.text);
        writes.beat(held.beat + 1)?;
        match writes.commit(records).await? {
            Committed::Yes => {
                held.beat += 1;
                held.beaten = Instant::now();
            }
            Committed::LeaseLost | Committed::Changed => {
                tracing::warn!("notifier: the lease was taken by another copy");
                *lead = None;
            }
        }
        return Ok(());
    }
    let (current, beat) = outbox::leader(records).await?;
    let take = match &current {
        None | Some((_, None)) => true,
        Some((text, Some(leader))) => {
            let gone =
                leader.node_boot != context.me.node_boot && leader.node_id == context.me.node_id;
            let moved = match seen {
                Some(seen) => seen.text.as_deref() != Some(text.as_str()) || seen.beat != beat,
                None => true,
            };
            if moved {
                *seen = Some(Seen {
                    text: Some(text.clone()),
                    beat,
                    since: Instant::now(),
                });
            }
            gone || seen
                .as_ref()
                .is_some_and(|seen| seen.since.elapsed() >= STALE)
        }
    };
    if !take {
        return Ok(());
    }
    let me = Leader {
        since: Timestamp::now(),
        ..context.me.clone()
    };
    let Some(text) = outbox::take_lead(
        records,
        current.as_ref().map(|(text, _)| text.as_str()),
        &me,
    )
    .await?
    else {
        return Ok(());
    };
    let mut lanes = HashMap::new();
    for key in outbox::pending_keys(records).await? {
        if let Some((subscription, id)) = key.split_once('/') {
            enqueue(&mut lanes, subscription, id);
        }
    }
    tracing::info!(
        pending = lanes
            .values()
            .map(|lane: &Lane| lane.queue.len())
            .sum::<usize>(),
        "notifier: this copy sends the notifications now"
    );
    *seen = None;
    *lead = Some(Lead {
        text,
        beat,
        lanes,
        sending: JoinSet::new(),
        beaten: Instant::now(),
        changed: HashMap::new(),
        on_lane: HashMap::new(),
        pruned: Instant::now(),
    });
    Ok(())
}

/// Puts delivery `id` of `subscription` on its lane.
fn enqueue(lanes: &mut HashMap<String, Lane>, subscription: &str, id: &str) {
    let Some((deployment, event, index)) = outbox::delivery_order(id) else {
        tracing::warn!(
            delivery = id,
            "notifier: a delivery id does not read; left alone"
        );
        return;
    };
    let lane = lanes
        .entry(format!("{subscription}/{deployment}"))
        .or_insert_with(|| Lane {
            subscription: subscription.to_owned(),
            queue: BTreeMap::new(),
            due_ms: 0,
            busy: false,
        });
    // One put ahead of the others (a redelivery of an earlier one) goes first, and now.
    if lane
        .queue
        .first_key_value()
        .is_some_and(|(first, _)| (event, index) < *first)
    {
        lane.due_ms = 0;
    }
    lane.queue.insert((event, index), id.to_owned());
}

/// Takes an attempt's outcome into its lane; true when the lease is lost.
fn settle(lead: &mut Lead, lane_key: &str, id: &str, attempted: Attempted) -> bool {
    let Some(lane) = lead.lanes.get_mut(lane_key) else {
        return false;
    };
    lane.busy = false;
    let head = lane
        .queue
        .first_key_value()
        .map(|(_, first)| first.as_str())
        == Some(id);
    match attempted {
        Attempted::Done => {
            // The delivery sent, which is not the first when an earlier one was put ahead of
            // it meanwhile.
            lane.queue.retain(|_, queued| queued != id);
            lane.due_ms = 0;
            if lane.queue.is_empty() {
                lead.lanes.remove(lane_key);
            }
            false
        }
        Attempted::Later(due_ms) => {
            if head {
                lane.due_ms = due_ms;
            }
            false
        }
        Attempted::LeaseLost => true,
    }
}

/// Starts an attempt on every lane that is due and idle, up to the limit in flight.
fn dispatch(context: &Arc<Context>, lead: &mut Lead) {
    let limit = context.coordinator.settings().notifications.max_in_flight;
    // A lease not beaten for a while may be another copy's soon: send nothing more on it.
    if lead.beaten.elapsed() > STALE / 2 {
        return;
    }
    let now = Timestamp::now().unix_ms();
    for (key, lane) in lead.lanes.iter_mut() {
        if lead.sending.len() >= limit {
            return;
        }
        if lane.busy || lane.due_ms > now {
            continue;
        }
        let Some(id) = lane.queue.first_key_value().map(|(_, id)| id.clone()) else {
            continue;
        };
        lane.busy = true;
        let context = Arc::clone(context);
        let key = key.clone();
        let subscription = lane.subscription.clone();
        let leader = lead.text.clone();
        let lane_key = key.clone();
        let sent_id = id.clone();
        let handle = lead.sending.spawn(async move {
            let attempted = attempt(&context, &leader, &subscription, &id)
                .await
                .unwrap_or_else(|error| {
                    tracing::warn!(%error, delivery = id, "notifier: store call failed; trying again");
                    Attempted::Later(Timestamp::now().unix_ms() + 2_000)
                });
            (key, id, attempted)
        });
        lead.on_lane.insert(handle.id(), (lane_key, sent_id));
    }
}

/// One attempt of a delivery, if it is due, and its record.
async fn attempt(
    context: &Context,
    leader: &str,
    subscription_id: &str,
    id: &str,
) -> Result<Attempted, StoreError> {
    let records = context.coordinator.records();
    let Some((text, mut record)) = outbox::delivery(records, subscription_id, id).await? else {
        let mut writes = NotifierWrites::new(leader);
        writes.forget_pending(&format!("{subscription_id}/{id}"));
        return Ok(match writes.commit(records).await? {
            Committed::LeaseLost => Attempted::LeaseLost,
            _ => Attempted::Done,
        });
    };
    if record.state != DeliveryState::Pending {
        return Ok(Attempted::Done);
    }
    let now = Timestamp::now();
    if let Some(next) = record.next_attempt_at.filter(|next| *next > now) {
        return Ok(Attempted::Later(next.unix_ms()));
    }
    let settings = &context.coordinator.settings().notifications;
    let subscription = outbox::subscription(records, subscription_id)
        .await?
        .map(|stored| Subscription::new(&stored.spec));
    let sent = match &subscription {
        // Deleted meanwhile: its deliveries go with it.
        None => {
            let mut writes = NotifierWrites::new(leader);
            writes.drop_delivery(&record.key());
            writes.forget_pending(&record.key());
            return Ok(match writes.commit(records).await? {
                Committed::LeaseLost => Attempted::LeaseLost,
                _ => Attempted::Done,
            });
        }
        Some(Err(error)) => Sent::Failed {
            status: None,
            error: format!("the subscription no longer reads: {error}"),
        },
        Some(Ok(subscription)) => match serde_json::from_str::<Notice>(&record.body) {
            Ok(notice) => {
                let outgoing = Outgoing {
                    id: &record.key(),
                    body: &record.body,
                    notice: &notice,
                    attempt: record.attempt_count + 1,
                    link: settings.link(notice.deployment.deployment_id.as_str()),
                };
                let timeout = Duration::from_secs(settings.attempt_timeout_secs);
                channels::send(
                    context.coordinator.egress(),
                    &subscription.channel,
                    &outgoing,
                    timeout,
                )
                .await
            }
            Err(error) => Sent::Failed {
                status: None,
                error: format!("the delivery's body does not read: {error}"),
            },
        },
    };
    let ended = Timestamp::now();
    let (status, error) = match &sent {
        Sent::Accepted { status } => (Some(*status), None),
        Sent::Failed { status, error } => (*status, Some(error.clone())),
    };
    record.attempted(AttemptRecord {
        at: now,
        status,
        error,
        duration_ms: ended.unix_ms().saturating_sub(now.unix_ms()),
        node: context.me.node_id.clone(),
    });
    record.round_attempts += 1;
    let retry_until = record.round_started_at.unix_ms() + settings.retry_for_secs * 1_000;
    let later = match sent {
        Sent::Accepted { .. } => {
            record.state = DeliveryState::Delivered;
            record.next_attempt_at = None;
            None
        }
        Sent::Failed { .. } => {
            let delay = retry_delay(
                record.round_attempts,
                Duration::from_millis(settings.first_retry_ms),
                jitter(),
            );
            let next = ended.unix_ms() + delay.as_millis() as u64;
            if next > retry_until {
                record.state = DeliveryState::Dead;
                record.next_attempt_at = None;
                None
            } else {
                record.next_attempt_at = Some(Timestamp::from_unix_ms(next));
                Some(next)
            }
        }
    };
    let mut writes = NotifierWrites::new(leader);
    writes.delivery(&record, Some(&text))?;
    Ok(match writes.commit(records).await? {
        Committed::Yes => match later {
            Some(next) => Attempted::Later(next),
            None => {
                if record.state == DeliveryState::Dead {
                    tracing::warn!(delivery = %record.key(), "notifier: given up after the retry period (dead-lettered)");
                }
                Attempted::Done
            }
        },
        Committed::LeaseLost => Attempted::LeaseLost,
        // Redelivered or deleted meanwhile: the next look reads it again.
        Committed::Changed => Attempted::Later(Timestamp::now().unix_ms()),
    })
}

/// The webhook's body: the delivery's id (its `Idempotency-Key`) and subscription around the
/// notice.
#[derive(Serialize)]
struct Envelope<'a> {
    id: &'a str,
    subscription: &'a str,
    #[serde(flatten)]
    notice: &'a Notice,
}

fn new_delivery(
    subscription: &str,
    id: &str,
    notice: &Notice,
) -> Result<DeliveryRecord, StoreError> {
    let key = format!("{subscription}/{id}");
    let body = serde_json::to_string(&Envelope {
        id: &key,
        subscription,
        notice,
    })
    .map_err(|error| StoreError::Encode {
        collection: "deliveries".to_owned(),
        key: key.clone(),
        message: error.to_string(),
    })?;
    let now = Timestamp::now();
    Ok(DeliveryRecord {
        id: id.to_owned(),
        subscription: subscription.to_owned(),
        event: notice.event.clone(),
        deployment_id: notice.deployment.deployment_id.to_string(),
        body,
        state: DeliveryState::Pending,
        created_at: now,
        round_started_at: now,
        next_attempt_at: None,
        attempt_count: 0,
        round_attempts: 0,
        attempts: Vec::new(),
        redelivered: 0,
    })
}

/// Turns a page of the outbox into deliveries; false when the lease is lost.
async fn fan_out(context: &Context, lead: &mut Lead) -> Result<bool, StoreError> {
    let records = context.coordinator.records();
    let rows = outbox::outbox(records, OUTBOX_PAGE).await?;
    if rows.is_empty() {
        return Ok(true);
    }
    let mut read_as: HashMap<String, String> = HashMap::new();
    let mut subscriptions: Vec<Subscription> = Vec::new();
    for (text, stored) in outbox::subscriptions_as_read(records).await? {
        match Subscription::new(&stored.spec) {
            Ok(subscription) => {
                read_as.insert(subscription.id.clone(), text);
                subscriptions.push(subscription);
            }
            Err(error) => {
                tracing::error!(subscription = %stored.spec.id, "a stored subscription does not read, so it is told nothing: {error}");
            }
        }
    }
    let catalog: HashMap<String, Environment> =
        if subscriptions.iter().any(Subscription::has_selector) {
            context
                .coordinator
                .catalog()
                .list()
                .await?
                .into_iter()
                .map(|stored| {
                    (
                        stored.environment.environment_id.to_string(),
                        stored.environment,
                    )
                })
                .collect()
        } else {
            HashMap::new()
        };
    let mut planned = Vec::with_capacity(rows.len());
    for (key, text, entry) in rows {
        let mut made = Vec::new();
        let mut read = None;
        match entry {
            None => {}
            Some(OutboxEntry::Notice { id, notice }) => {
                for subscription in &subscriptions {
                    if subscription.wants(&notice, |id| catalog.get(id).cloned()) {
                        made.push(new_delivery(&subscription.id, &id, &notice)?);
                    }
                }
            }
            Some(OutboxEntry::Test {
                subscription,
                id,
                notice,
            }) if subscriptions.iter().any(|known| known.id == subscription) => {
                made.push(new_delivery(&subscription, &id, &notice)?);
            }
            // A test for a subscription deleted meanwhile.
            Some(OutboxEntry::Test { .. }) => {}
            Some(OutboxEntry::Redeliver { subscription, id }) => {
                if let Some((text, mut record)) =
                    outbox::delivery(records, &subscription, &id).await?
                {
                    let now = Timestamp::now();
                    record.state = DeliveryState::Pending;
                    record.round_started_at = now;
                    record.round_attempts = 0;
                    record.next_attempt_at = None;
                    record.redelivered += 1;
                    made.push(record);
                    read = Some(text);
                }
            }
        }
        planned.push((key, text, made, read));
    }
    // One transaction for the page, holding only while the subscriptions it sends to are as
    // read (none deleted meanwhile, which would leave its new deliveries behind).
    let mut writes = NotifierWrites::new(&lead.text);
    let mut checked = std::collections::HashSet::new();
    for (key, text, made, read) in &planned {
        writes.outbox_done(key, text);
        for record in made {
            writes.delivery(record, read.as_deref())?;
            if checked.insert(record.subscription.clone()) {
                if let Some(text) = read_as.get(&record.subscription) {
                    writes.subscription_unchanged(&record.subscription, text);
                }
            }
        }
    }
    match writes.commit(records).await? {
        Committed::Yes => {
            for (key, _, made, _) in &planned {
                lead.changed.remove(key);
                for record in made {
                    enqueue(&mut lead.lanes, &record.subscription, &record.id);
                }
            }
            Ok(true)
        }
        Committed::LeaseLost => Ok(false),
        // Planned again from what is stored at the next look. A row that keeps failing (its
        // delivery's id taken already) is dropped after a few looks, with an error.
        Committed::Changed => {
            for (key, text, _, _) in &planned {
                let times = lead.changed.entry(key.clone()).or_insert(0);
                *times += 1;
                if *times >= 3 {
                    tracing::error!(row = %key, "notifier: an outbox row cannot be turned into deliveries; dropped");
                    let mut writes = NotifierWrites::new(&lead.text);
                    writes.outbox_done(key, text);
                    if writes.commit(records).await? == Committed::LeaseLost {
                        return Ok(false);
                    }
                    lead.changed.remove(key);
                }
            }
            Ok(true)
        }
    }
}

/// Deletes each subscription's finished deliveries past what is kept.
async fn prune(context: &Context, leader: &str) -> Result<(), StoreError> {
    let records = context.coordinator.records();
    for stored in outbox::subscriptions(records).await? {
        let surplus = outbox::surplus_deliveries(records, &stored.spec.id).await?;
        for chunk in surplus.chunks(500) {
            let mut writes = NotifierWrites::new(leader);
            for key in chunk {
                writes.drop_delivery(key);
            }
            if writes.commit(records).await? != Committed::Yes {
                return Ok(());
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lead() -> Lead {
        Lead {
            text: String::new(),
            beat: 0,
            lanes: HashMap::new(),
            sending: JoinSet::new(),
            beaten: Instant::now(),
            changed: HashMap::new(),
            on_lane: HashMap::new(),
            pruned: Instant::now(),
        }
    }

    #[test]
    fn a_lane_sends_in_order_and_an_earlier_one_put_ahead_is_not_lost() {
        let mut lead = lead();
        let first = outbox::delivery_id("dep-1-a", 1_000, 3, 0);
        let second = outbox::delivery_id("dep-1-a", 1_000, 5, 0);
        enqueue(&mut lead.lanes, "ops", &second);
        let lane_key = "ops/dep-1-a".to_owned();
        // The second is sent and fails: its lane waits for the retry.
        settle(&mut lead, &lane_key, &second, Attempted::Later(u64::MAX));
        assert_eq!(lead.lanes[&lane_key].due_ms, u64::MAX);
        // While it is being sent again, the first is redelivered by hand: it goes first, now.
        if let Some(lane) = lead.lanes.get_mut(&lane_key) {
            lane.busy = true;
        }
        enqueue(&mut lead.lanes, "ops", &first);
        assert_eq!(lead.lanes[&lane_key].due_ms, 0);
        // The second's attempt ends accepted: the second leaves the lane, the first stays.
        settle(&mut lead, &lane_key, &second, Attempted::Done);
        let queued: Vec<&String> = lead.lanes[&lane_key].queue.values().collect();
        assert_eq!(queued, [&first]);
        settle(&mut lead, &lane_key, &first, Attempted::Done);
        assert!(lead.lanes.is_empty());
    }
}
