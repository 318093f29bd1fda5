//! Deployment windows over HTTP (SPEC §4e): list, create, read, delete, and what the windows
//! say of one environment at one instant.

use axum::{body::Bytes, extract::State, http::StatusCode};

use super::{json, Answer, ApiError, Id, Params, Shared, Who};
use crate::{
    environments::from_json_object,
    model::Timestamp,
    persist::windows::{self, Created, StoredWindow},
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

