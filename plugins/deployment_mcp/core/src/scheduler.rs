//! The scheduler: every copy of the plugin, on every node, fires the schedules' occurrences
//! that are due. Each occurrence is handled once across all of them: its run is taken
//! insert-if-absent in the same transaction as the deployment it starts (or as the record of its
//! refusal or skip), conditional on the schedule being the one the decision was made on; the
//! copies that lose the race find it taken and write nothing.
//!
//! A copy wakes at the earliest next occurrence it knows of, at least every [`REFRESH`] (to see
//! schedules created through other nodes), and at once when a schedule is created or deleted
//! through it. A draining node fires nothing: the others do.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::Duration,
};

use crate::{
    api::ApiError,
    audit::{AuditCall, Outcome, Status, Via},
    coordinator::{Coordinator, StartError, StartRequest},
    model::{DeploymentId, Timestamp},
    persist::{
        records::StoreError,
        schedules::{self, StoredSchedule},
    },
    schedules::{Due, RunOutcome, Schedule, ScheduleRun},
};

/// How often every copy reads the schedules, whatever it knows of their next occurrences.
const REFRESH: Duration = Duration::from_secs(10);

/// How long after a failed look (the store unavailable) the next one is made.
const RETRY: Duration = Duration::from_secs(2);

/// A schedule as this copy last read it: its record's text, its checked form (none where the
/// record no longer reads) and when it must be looked at next (none: nothing ahead).
struct Known {
    text: String,
    schedule: Option<Arc<Schedule>>,
    look_at: Option<Timestamp>,
}

/// Fires due occurrences until `coordinator` stops.
pub async fn run(coordinator: Arc<Coordinator>) {
    let stop = coordinator.stopping();
    let mut known: HashMap<String, Known> = HashMap::new();
    loop {
        let wait = match look(&coordinator, &mut known).await {
            Ok(Some(next)) => {
                let in_ms = next.unix_ms().saturating_sub(Timestamp::now().unix_ms());
                Duration::from_millis(in_ms).min(REFRESH)
            }
            Ok(None) => REFRESH,
            Err(error) => {
                tracing::warn!(%error, "scheduler: cannot read the schedules; trying again");
                RETRY
            }
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
            _ = coordinator.schedules_changed_wait() => {}
        }
    }
}

/// Reads the schedules and handles what is due; the earliest instant one must be looked at
/// again. What is due is decided as of the instant the look began, so that handling one
/// schedule does not make the next one late; a schedule whose look fails is looked at again
/// after [`RETRY`] without holding up the others.
async fn look(
    coordinator: &Arc<Coordinator>,
    known: &mut HashMap<String, Known>,
) -> Result<Option<Timestamp>, StoreError> {
    let rows = schedules::all_raw(coordinator.records()).await?;
    let now = Timestamp::now();
    let ids: HashSet<&str> = rows
        .iter()
        .map(|(stored, _)| stored.spec.id.as_str())
        .collect();
    known.retain(|id, _| ids.contains(id.as_str()));
    let mut earliest: Option<Timestamp> = None;
    for (stored, text) in &rows {
        let id = &stored.spec.id;
        let entry = known.entry(id.clone()).or_insert_with(|| Known {
            text: String::new(),
            schedule: None,
            look_at: None,
        });
        if entry.text != *text {
            entry.text = text.clone();
            // The rule is read once per version of the record, off the runtime's threads.
            let spec = stored.spec.clone();
            entry.schedule = match tokio::task::spawn_blocking(move || Schedule::new(&spec)).await {
                Ok(Ok(schedule)) => Some(Arc::new(schedule)),
                Ok(Err(error)) => {
                    tracing::error!(schedule = %id, "a stored schedule cannot be read, so it does not fire: {error}");
                    None
                }
                Err(error) => {
                    tracing::error!(schedule = %id, "a stored schedule could not be checked, so it does not fire: {error}");
                    None
                }
            };
            entry.look_at = Some(Timestamp::from_unix_ms(0));
        }
        let Some(schedule) = entry.schedule.clone() else {
            continue;
        };
        if let Some(at) = entry.look_at.filter(|&at| at <= now) {
            let retry = Timestamp::from_unix_ms(now.unix_ms() + RETRY.as_millis() as u64);
            entry.look_at = if coordinator.is_draining() {
                Some(retry.max(at))
            } else {
                match look_at_one(coordinator, stored, text, schedule, now).await {
                    Ok(next) => next,
                    Err(error) => {
                        tracing::warn!(schedule = %id, %error, "scheduler: cannot handle this schedule now; trying again");
                        Some(retry)
                    }
                }
            };
        }
        earliest = match (earliest, entry.look_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }
    Ok(earliest)
}

/// Handles what is due of one schedule as of `now`; when it must be looked at next.
async fn look_at_one(
    coordinator: &Arc<Coordinator>,
    stored: &StoredSchedule,
    text: &str,
    schedule: Arc<Schedule>,
    now: Timestamp,
) -> Result<Option<Timestamp>, StoreError> {
    let last = schedules::runs(coordinator.records(), stored, 1)
        .await?
        .pop()
        .map(|run| run.occurrence);
    let created = stored.created_at;
    let (due, after_now) = tokio::task::spawn_blocking(move || {
        let after_now = schedule
            .next(Timestamp::from_unix_ms(now.unix_ms() + 1), 1)
            .pop();
        (schedule.due(created, last, now), after_now)
    })
    .await
    .map_err(|error| StoreError::Interrupted(format!("expanding the schedule's rule: {error}")))?;
    match due {
        Due::Nothing { next } => Ok(next),
        Due::Fire { .. } | Due::Skip { .. } => {
            handle(coordinator, stored, text, due).await?;
            Ok(after_now)
        }
    }
}

/// Fires (or skips) one due occurrence of `stored` (whose record is `text`).
async fn handle(
    coordinator: &Arc<Coordinator>,
    stored: &StoredSchedule,
    text: &str,
    due: Due,
) -> Result<(), StoreError> {
    let id = &stored.spec.id;
    let records = coordinator.records();
    let now = Timestamp::now();
    let node_id = coordinator.node().map(|node| node.node_id.clone());
    let (occurrence, missed, late) = match due {
        Due::Nothing { .. } => return Ok(()),
        Due::Skip { occurrence, missed } => {
            let run = ScheduleRun {
                occurrence,
                handled_at: now,
                missed,
                late: true,
                node_id,
                outcome: RunOutcome::Skipped,
            };
            if records
                .apply(schedules::take_run(stored, text, &run)?)
                .await?
                .is_none()
            {
                tracing::info!(schedule = %id, %occurrence, missed, "schedule: occurrence missed while no node ran; skipped (catch_up: skip)");
                schedules::prune_runs(records, stored).await?;
            }
            return Ok(());
        }
        Due::Fire {
            occurrence,
            missed,
            late,
        } => (occurrence, missed, late),
    };
    let deployment_id = DeploymentId::generate(now.unix_ms());
    let mut run = ScheduleRun {
        occurrence,
        handled_at: now,
        missed,
        late,
        node_id,
        outcome: RunOutcome::Started {
            deployment_id: deployment_id.clone(),
        },
    };
    // The start is the call of no key: its entry says `via: schedule` and names the schedule.
    let call = Arc::new(AuditCall::new(
        None,
        Via::Schedule,
        None,
        "deployment.trigger",
        Some(format!("schedule:{id}")),
        None,
    ));
    let started = match stored.spec.trigger.rollout().to_rollout() {
        Err(error) => Err(StartError::BadField(error)),
        Ok(rollout) => {
            let trigger = &stored.spec.trigger;
            let request = StartRequest {
                rollout,
                deployment_id: Some(deployment_id),
                environments: trigger.environments.clone(),
                selector: trigger.selector.clone(),
                version: trigger.version.clone(),
                ec2: trigger.ec2,
                triggered_by: format!("schedule:{id}"),
                request_id: None,
                retry_of: None,
                override_reason: None,
            };
            let guard = schedules::take_run(stored, text, &run)?;
            call.scope(coordinator.start_guarded(request, guard)).await
        }
    };
    let refusal = match started {
        Ok(record) => {
            tracing::info!(schedule = %id, %occurrence, deployment = %record.deployment_id, "schedule: deployment started");
            schedules::prune_runs(records, stored).await?;
            return Ok(());
        }
        // Another copy handled it, or the schedule changed: nothing to do.
        Err(StartError::Superseded) => return Ok(()),
        Err(StartError::Store(error)) => return Err(error),
        Err(refusal) => ApiError::from(refusal),
    };
    let error = refusal.code().to_owned();
    run.outcome = RunOutcome::Refused {
        error: error.clone(),
        message: refusal.to_string(),
    };
    let outcome = Outcome {
        status: Status::Failed,
        error: Some(error),
        http_status: None,
    };
    // Recorded with the failed call's entry, once: only the copy whose run is taken writes.
    if records
        .apply_recording(schedules::take_run(stored, text, &run)?, &call, &outcome)
        .await?
        .is_none()
    {
        tracing::warn!(schedule = %id, %occurrence, "schedule: the deployment was refused: {refusal}");
        schedules::prune_runs(records, stored).await?;
    }
    Ok(())
}
