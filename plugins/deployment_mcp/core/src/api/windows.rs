//! Deployment windows over HTTP (SPEC §4e): list, create, read, delete, what the windows say
//! of one environment at one instant, and the calendar of windows and schedules per
//! environment over some days.

use axum::{body::Bytes, extract::State, http::StatusCode};

use super::{json, Answer, ApiError, Id, Params, Shared, Who};
use crate::{
    agenda::{self, CalendarInput},
    environments::{from_json_object, Environment},
    model::Timestamp,
    persist::{
        schedules::{self, StoredSchedule},
        windows::{self, Created, StoredWindow},
    },
    schedules::Schedule,
    windows::{Window, WindowSpec, MAX_WINDOWS},
    wire::{Deleted, WindowExplanation, WindowList},
};

#[utoipa::path(
    get, path = "/windows", operation_id = "listWindows", tag = "windows",
    responses((status = 200, description = "Every deployment window, in id order", body = crate::wire::WindowList))
)]
pub(crate) async fn list(State(api): Shared) -> Answer {
    let windows = windows::all(api.coordinator.records())
        .await?
        .into_iter()
        .map(StoredWindow::view)
        .collect();
    Ok(json(StatusCode::OK, &WindowList { windows }))
}

#[utoipa::path(
    post, path = "/windows", operation_id = "createWindow", tag = "windows",
    request_body(content = crate::windows::WindowSpec, content_type = "application/json"),
    responses((status = 201, description = "Created", body = crate::windows::WindowSpec))
)]
pub(crate) async fn create(State(api): Shared, caller: Who, body: Bytes) -> Answer {
    let spec: WindowSpec = from_json_object(&body)?;
    Window::create(&spec)?;
    let stored = StoredWindow {
        spec,
        created_by: format!("api:{}", caller.name()),
        created_at: Timestamp::now(),
    };
    match windows::create(api.coordinator.records(), &stored).await? {
        Created::Created => Ok(json(StatusCode::CREATED, &stored.view())),
        Created::Exists => Err(ApiError::Conflict {
            code: "duplicate_window",
            message: format!(
                "id: window {:?} already exists; delete it first to replace it",
                stored.spec.id
            ),
            field: Some("id"),
        }),
        Created::Full => Err(ApiError::unprocessable(
            "too_many_windows",
            format!("there are {MAX_WINDOWS} windows already; delete some first"),
        )),
    }
}

#[utoipa::path(
    get, path = "/windows/{id}", operation_id = "getWindow", tag = "windows",
    params(crate::wire::WindowPath),
    responses((status = 200, description = "One window", body = crate::windows::WindowSpec))
)]
pub(crate) async fn get(State(api): Shared, Id(id): Id) -> Answer {
    let stored = windows::get(api.coordinator.records(), &id)
        .await?
        .ok_or_else(|| ApiError::not_found("window", &id))?;
    Ok(json(StatusCode::OK, &stored.view()))
}

#[utoipa::path(
    delete, path = "/windows/{id}", operation_id = "deleteWindow", tag = "windows",
    params(crate::wire::WindowPath),
    responses((status = 200, description = "Deleted", body = crate::wire::Deleted))
)]
pub(crate) async fn delete(State(api): Shared, Id(id): Id) -> Answer {
    match windows::delete(api.coordinator.records(), &id).await? {
        Some(_) => Ok(json(StatusCode::OK, &Deleted { deleted: id })),
        None => Err(ApiError::not_found("window", &id)),
    }
}

#[utoipa::path(
    get, path = "/windows/explain", operation_id = "explainWindows", tag = "windows",
    params(
        ("environment" = String, Query, description = "Environment id"),
        ("at" = Option<String>, Query, description = "RFC 3339 instant; now when absent"),
    ),
    responses((status = 200, description = "Whether it may deploy then; if not, the window and when it opens", body = crate::wire::WindowExplanation))
)]
pub(crate) async fn explain(State(api): Shared, params: Params) -> Answer {
    let id = params
        .get("environment")
        .ok_or_else(|| ApiError::field("environment", "is required: the environment's id"))?;
    let at = params.instant("at", Timestamp::now())?;
    let stored = api
        .coordinator
        .catalog()
        .get(&id)
        .await?
        .ok_or_else(|| ApiError::not_found("environment", &id))?;
    let verdict = windows::windows(api.coordinator.records())
        .await?
        .explain(&stored.environment, at);
    Ok(json(
        StatusCode::OK,
        &WindowExplanation {
            environment: id,
            at,
            verdict,
        },
    ))
}

#[utoipa::path(
    get, path = "/calendar", operation_id = "getCalendar", tag = "windows",
    params(
        ("from" = Option<String>, Query, description = "RFC 3339 instant; now when absent"),
        ("days" = Option<u32>, Query, description = "How many days from `from` (1 to 31; 7 when absent)"),
    ),
    responses((status = 200, description = "When each window is open and each schedule fires, and per environment when the windows close it and which schedules deploy it", body = crate::wire::Calendar))
)]
pub(crate) async fn calendar(State(api): Shared, params: Params) -> Answer {
    let from = params.instant("from", Timestamp::now())?;
    let days = params.number("days", 7, 1..=agenda::MAX_DAYS)?;
    let to = Timestamp::from_unix_ms(from.unix_ms() + days as u64 * 86_400_000);
    let records = api.coordinator.records();
    let stored_windows = windows::all(records).await?;
    let stored_schedules = schedules::all(records).await?;
    let environments: Vec<Environment> = api
        .coordinator
        .catalog()
        .list()
        .await?
        .into_iter()
        .map(|stored| stored.environment)
        .collect();
    // Expanding rules walks them from their start: off the runtime's threads, and a few at a
    // time, so that callers asking at once queue rather than fill the blocking pool.
    static CALENDARS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);
    let _turn = CALENDARS
        .acquire()
        .await
        .map_err(|error| ApiError::Internal(format!("the calendar's queue is closed: {error}")))?;
    let calendar = tokio::task::spawn_blocking(move || {
        let windows = stored_windows
            .into_iter()
            .filter_map(|stored: StoredWindow| {
                // One that no longer reads is not applied to triggers either (logged there).
                let window = Window::new(&stored.spec).ok()?;
                Some((window, stored.spec.reason))
            })
            .collect();
        let schedules = stored_schedules
            .iter()
            .map(|stored: &StoredSchedule| (&stored.spec, Schedule::new(&stored.spec).ok()))
            .collect();
        agenda::calendar(
            CalendarInput {
                windows,
                schedules,
                environments: &environments,
            },
            from,
            to,
        )
    })
    .await
    .map_err(|error| ApiError::Internal(format!("the calendar's computation failed: {error}")))?;
    Ok(json(StatusCode::OK, &calendar))
}
