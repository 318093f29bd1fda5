//! Schedules over HTTP (SPEC §4e): list, create, read (with its last and next runs), delete, and
//! a schedule's next occurrences from any instant.

use axum::{body::Bytes, extract::State, http::StatusCode};

use super::{json, Answer, ApiError, Id, Params, Shared, Who};
use crate::{
    environments::from_json_object,
    model::Timestamp,
    persist::schedules::{self, Created, StoredSchedule},
    schedules::{Schedule, ScheduleSpec, MAX_SCHEDULES},
    wire::{Deleted, NextRuns, ScheduleDetail, ScheduleList},
};

/// Runs and next occurrences `GET /schedules/{id}` shows.
const DETAIL_RUNS: usize = 10;

/// The most occurrences one `next` answer lists.
const MAX_NEXT: usize = 100;

#[utoipa::path(
    get, path = "/schedules", operation_id = "listSchedules", tag = "schedules",
    responses((status = 200, description = "Every schedule, in id order", body = crate::wire::ScheduleList))
)]
pub(crate) async fn list(State(api): Shared) -> Answer {
    let schedules = schedules::all(api.coordinator.records())
        .await?
        .into_iter()
        .map(StoredSchedule::view)
        .collect();
    Ok(json(StatusCode::OK, &ScheduleList { schedules }))
}

#[utoipa::path(
    post, path = "/schedules", operation_id = "createSchedule", tag = "schedules",
    request_body(content = crate::schedules::ScheduleSpec, content_type = "application/json"),
    responses((status = 201, description = "Created", body = crate::schedules::ScheduleSpec))
)]
pub(crate) async fn create(State(api): Shared, caller: Who, body: Bytes) -> Answer {
    let spec: ScheduleSpec = from_json_object(&body)?;
    let now = Timestamp::now();
    Schedule::create(&spec, now)?;
    let stored = StoredSchedule {
        spec,
        created_by: format!("api:{}", caller.name()),
        created_at: now,
    };
    match schedules::create(api.coordinator.records(), &stored).await? {
        Created::Created => {
            api.coordinator.schedules_changed();
            Ok(json(StatusCode::CREATED, &stored.view()))
        }
        Created::Exists => Err(ApiError::Conflict {
            code: "duplicate_schedule",
            message: format!(
                "id: schedule {:?} already exists; delete it first to replace it",
                stored.spec.id
            ),
            field: Some("id"),
        }),
        Created::Full => Err(ApiError::unprocessable(
            "too_many_schedules",
            format!("there are {MAX_SCHEDULES} schedules already; delete some first"),
        )),
    }
}

#[utoipa::path(
    get, path = "/schedules/{id}", operation_id = "getSchedule", tag = "schedules",
    params(crate::wire::SchedulePath),
    responses((status = 200, description = "One schedule, its last runs (newest first) and its next occurrences", body = crate::wire::ScheduleDetail))
)]
pub(crate) async fn get(State(api): Shared, Id(id): Id) -> Answer {
    let records = api.coordinator.records();
    let stored = schedules::get(records, &id)
        .await?
        .ok_or_else(|| ApiError::not_found("schedule", &id))?;
    let last_runs = schedules::runs(records, &stored, DETAIL_RUNS).await?;
    let next_runs = match (stored.spec.enabled, Schedule::new(&stored.spec)) {
        (true, Ok(schedule)) => {
            // After the newest handled occurrence: one due now shows until it is handled.
            let from = last_runs
                .first()
                .map(|run| Timestamp::from_unix_ms(run.occurrence.unix_ms() + 1))
                .unwrap_or(stored.created_at);
            schedule.next(from, DETAIL_RUNS)
        }
        _ => Vec::new(),
    };
    Ok(json(
        StatusCode::OK,
        &ScheduleDetail {
            schedule: stored.view(),
            last_runs,
            next_runs,
        },
    ))
}

#[utoipa::path(
    delete, path = "/schedules/{id}", operation_id = "deleteSchedule", tag = "schedules",
    params(crate::wire::SchedulePath),
    responses((status = 200, description = "Deleted, with its runs", body = crate::wire::Deleted))
)]
pub(crate) async fn delete(State(api): Shared, Id(id): Id) -> Answer {
    match schedules::delete(api.coordinator.records(), &id).await? {
        Some(_) => {
            api.coordinator.schedules_changed();
            Ok(json(StatusCode::OK, &Deleted { deleted: id }))
        }
        None => Err(ApiError::not_found("schedule", &id)),
    }
}

#[utoipa::path(
    get, path = "/schedules/{id}/next", operation_id = "listScheduleOccurrences", tag = "schedules",
    params(
        crate::wire::SchedulePath,
        ("from" = Option<String>, Query, description = "RFC 3339 instant; now when absent"),
        ("count" = Option<u32>, Query, description = "How many (1 to 100; 10 when absent)"),
    ),
    responses((status = 200, description = "Its next occurrences at or after `from`, in UTC", body = crate::wire::NextRuns))
)]
pub(crate) async fn next(State(api): Shared, Id(id): Id, params: Params) -> Answer {
    let from = params.instant("from", Timestamp::now())?;
    let count = params.number("count", 10, 1..=MAX_NEXT)?;
    let stored = schedules::get(api.coordinator.records(), &id)
        .await?
        .ok_or_else(|| ApiError::not_found("schedule", &id))?;
    let schedule = Schedule::new(&stored.spec).map_err(|error| {
        ApiError::unprocessable(
            "schedule_unreadable",
            format!("the stored schedule no longer reads on this host ({error}); delete it and create it again"),
        )
    })?;
    Ok(json(
        StatusCode::OK,
        &NextRuns {
            next: schedule.next(from, count),
        },
    ))
}
