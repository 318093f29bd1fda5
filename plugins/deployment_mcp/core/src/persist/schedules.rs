//! Schedules as stored: one record per schedule, by id, and under it what became of each of its
//! occurrences (its runs), newest first. A run is taken insert-if-absent in the transaction
//! that makes the occurrence's change (its deployment, or its refusal or skip), together with a
//! check that the schedule is still the one the decision was made on: each occurrence fires
//! once, and never for a schedule deleted meanwhile.

use plugin_guest::{Condition, StoreOp};
use serde::{Deserialize, Serialize};

pub use super::named::Created;
use super::{
    named::{self, Described},
    records::{self, collection, Records, StoreError},
};
use crate::{
    model::Timestamp,
    schedules::{ScheduleRun, ScheduleSpec, MAX_SCHEDULES},
};

/// Runs kept per schedule: older ones are pruned as new ones are recorded.
pub const RUNS_KEPT: usize = 100;

/// A schedule's record.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredSchedule {
    pub spec: ScheduleSpec,
    pub created_by: String,
    pub created_at: Timestamp,
}

impl StoredSchedule {
    /// The schedule as the API shows it: as created, with who created it and when.
    pub fn view(self) -> ScheduleSpec {
        ScheduleSpec {
            created_by: Some(self.created_by),
            created_at: Some(self.created_at),
            ..self.spec
        }
    }

    /// Where its runs lie: under its id and creation, so a schedule created again under the
    /// same id starts with none.
    fn runs_prefix(&self) -> String {
        format!("{}/{:013}/", self.spec.id, self.created_at.unix_ms())
    }
}

/// Every schedule as stored, in id order, with its record's text (what a run is checked
/// against). A record that does not read (written by a newer version) is logged and left out,
/// so that it does not hold up the others.
pub async fn all_raw(records: &Records) -> Result<Vec<(StoredSchedule, String)>, StoreError> {
    Ok(records
        .rows(collection::SCHEDULES)
        .await?
        .into_iter()
        .filter_map(|(key, text)| {
            match records::decode::<StoredSchedule>(collection::SCHEDULES, &key, &text) {
                Ok(stored) => Some((stored, text)),
                Err(error) => {
                    tracing::error!("{error}; the schedule is left out");
                    None
                }
            }
        })
        .collect())
}

/// Every schedule as stored, in id order.
pub async fn all(records: &Records) -> Result<Vec<StoredSchedule>, StoreError> {
    Ok(all_raw(records)
        .await?
        .into_iter()
        .map(|(stored, _)| stored)
        .collect())
}

pub async fn get(records: &Records, id: &str) -> Result<Option<StoredSchedule>, StoreError> {
    records.get(collection::SCHEDULES, id).await
}

/// Stores a new schedule (its spec already checked).
pub async fn create(records: &Records, stored: &StoredSchedule) -> Result<Created, StoreError> {
    let id = &stored.spec.id;
    named::create(
        records,
        collection::SCHEDULES,
        id,
        stored,
        MAX_SCHEDULES,
        Vec::new(),
        described(stored, "after"),
    )
    .await
}

/// Removes a schedule and its runs; `None` when there was none.
pub async fn delete(records: &Records, id: &str) -> Result<Option<StoredSchedule>, StoreError> {
    named::delete(
        records,
        collection::SCHEDULES,
        id,
        // Its runs (at most a little over RUNS_KEPT) go with it.
        async |stored: &StoredSchedule| {
            Ok(records
                .first_with_prefix(collection::SCHEDULE_RUNS, &stored.runs_prefix(), usize::MAX)
                .await?
                .into_iter()
                .map(|(key, _)| StoreOp::delete(collection::SCHEDULE_RUNS, &key))
                .collect())
        },
        |stored: &StoredSchedule| described(stored, "before"),
    )
    .await
}

/// A create's or delete's audit entry: the schedule `before` or `after`.
fn described(stored: &StoredSchedule, side: &str) -> Described {
    Described {
        resource: format!("schedule:{}", stored.spec.id),
        environments: stored.spec.trigger.environments.clone().unwrap_or_default(),
        changes: serde_json::json!({ side: serde_json::to_value(&stored.spec).unwrap_or_default() }),
        reason: (side == "after")
            .then(|| stored.spec.reason.clone())
            .flatten(),
    }
}

/// The newest `count` runs of a schedule, newest first.
pub async fn runs(
    records: &Records,
    stored: &StoredSchedule,
    count: usize,
) -> Result<Vec<ScheduleRun>, StoreError> {
    records
        .first_with_prefix(collection::SCHEDULE_RUNS, &stored.runs_prefix(), count)
        .await?
        .into_iter()
        .map(|(key, text)| records::decode(collection::SCHEDULE_RUNS, &key, &text))
        .collect()
}

/// The operations that take an occurrence's run: the run, if none is recorded for the
/// occurrence, while the schedule's record is still `schedule_text`. Any of them failing means
/// another node handled the occurrence, or the schedule changed: nothing of the transaction
/// they are in is written.
pub fn take_run(
    stored: &StoredSchedule,
    schedule_text: &str,
    run: &ScheduleRun,
) -> Result<Vec<StoreOp>, StoreError> {
    // Inverted, so that a schedule's newest run comes first.
    let key = format!(
        "{}{:020}",
        stored.runs_prefix(),
        u64::MAX - run.occurrence.unix_ms()
    );
    Ok(vec![
        StoreOp::check(
            collection::SCHEDULES,
            &stored.spec.id,
            Condition::Equals(schedule_text.to_owned()),
        ),
        StoreOp::insert(
            collection::SCHEDULE_RUNS,
            &key,
            records::encode(collection::SCHEDULE_RUNS, &key, run)?,
        ),
    ])
}

/// Prunes a schedule's runs past the newest [`RUNS_KEPT`].
pub async fn prune_runs(records: &Records, stored: &StoredSchedule) -> Result<(), StoreError> {
    let rows = records
        .first_with_prefix(
            collection::SCHEDULE_RUNS,
            &stored.runs_prefix(),
            RUNS_KEPT + 16,
        )
        .await?;
    let old: Vec<StoreOp> = rows
        .into_iter()
        .skip(RUNS_KEPT)
        .map(|(key, _)| StoreOp::delete(collection::SCHEDULE_RUNS, &key))
        .collect();
    if !old.is_empty() {
        records.apply(old).await?;
    }
    Ok(())
}
