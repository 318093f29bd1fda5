//! The environment catalog over HTTP: list, read, create, replace, delete, and a health check
//! on demand. Secrets may be written, never read back (views carry `has_*` flags).

use std::time::Duration;

use axum::{
    body::Bytes,
    extract::State,
    http::{header, StatusCode},
    response::Response,
};
use serde_json::json;

use super::{header_value, json, Answer, ApiError, ApiState, Id, Mount, Shared};
use crate::model::EnvironmentId;
use crate::{
    environments::{self, Environment},
    health,
    persist::catalog,
    wire::{Deleted, EnvironmentList, EnvironmentView, HealthCheckAnswer, HealthView, View},
};

impl ApiState {
    async fn environment_view(&self, id: &str) -> Result<EnvironmentView, ApiError> {
        let catalog = self.coordinator.catalog();
        let stored = catalog
            .get(id)
            .await?
            .ok_or_else(|| ApiError::not_found("environment", id))?;
        let health = catalog.health(id).await?;
        let versions = catalog.versions(id).await?;
        Ok(EnvironmentView::new(
            &stored,
            health.as_ref(),
            versions.as_ref(),
            View::Details,
        ))
    }
}

#[utoipa::path(
    get, path = "/environments", operation_id = "listEnvironments", tag = "environments",
    responses((status = 200, description = "Every environment with its last health", body = crate::wire::EnvironmentList))
)]
pub(crate) async fn list(State(api): Shared) -> Answer {
    let catalog = api.coordinator.catalog();
    let list = catalog.list().await?;
    let health = catalog.all_health().await?;
    let versions = catalog.all_versions().await?;
    let environments: Vec<EnvironmentView> = list
        .iter()
        .map(|stored| {
            let id = &stored.environment.environment_id;
            EnvironmentView::new(
                stored,
                health.get(id.as_str()),
                versions.get(id.as_str()),
                View::Details,
            )
        })
        .collect();
    Ok(json(
        StatusCode::OK,
        &EnvironmentList {
            total_count: environments.len() as u64,
            environments,
        },
    ))
}

#[utoipa::path(
    get, path = "/environments/{id}", operation_id = "getEnvironment", tag = "environments",
    params(crate::wire::EnvironmentPath),
    responses((status = 200, description = "One environment (secrets shown as `has_*`)", body = crate::wire::EnvironmentView))
)]
pub(crate) async fn get(State(api): Shared, Id(id): Id) -> Answer {
    Ok(json(StatusCode::OK, &api.environment_view(&id).await?))
}

#[utoipa::path(
    post, path = "/environments", operation_id = "createEnvironment", tag = "environments",
    request_body(content = crate::environments::EnvironmentJson, content_type = "application/json"),
    responses((status = 201, description = "Created; `Location` names it", body = crate::wire::EnvironmentView))
)]
pub(crate) async fn create(State(api): Shared, mount: Mount, body: Bytes) -> Answer {
    let environment = environments::parse_one(&body)?;
    environment.check_secrets_not_empty()?;
    let id = environment.environment_id.clone();
    if !api.coordinator.catalog().create(environment).await? {
        return Err(ApiError::Conflict {
            code: "duplicate_environment",
            message: format!(
                "environment_id: {id:?} already exists; PUT /environments/{id} replaces it"
            ),
            field: Some("environment_id"),
        });
    }
    let mut answer: Response = json(StatusCode::CREATED, &api.environment_view(&id).await?);
    if let Some(location) = header_value(&format!("{}/environments/{id}", mount.0)) {
        answer.headers_mut().insert(header::LOCATION, location);
    }
    Ok(answer)
}

#[utoipa::path(
    put, path = "/environments/{id}", operation_id = "replaceEnvironment", tag = "environments",
    params(crate::wire::EnvironmentPath),
    request_body(content = crate::environments::EnvironmentJson, content_type = "application/json", description = "The whole environment; an omitted secret is kept, an empty one cleared"),
    responses((status = 200, description = "Replaced", body = crate::wire::EnvironmentView))
)]
pub(crate) async fn replace(State(api): Shared, Id(id): Id, body: Bytes) -> Answer {
    let mut body: serde_json::Value = serde_json::from_slice(&body)
        .map_err(|error| ApiError::field("body", format!("malformed JSON: {error}")))?;
    let Some(object) = body.as_object_mut() else {
        return Err(ApiError::field("body", "expected a JSON object"));
    };
    match object.get("environment_id") {
        None => {
            object.insert("environment_id".into(), json!(id));
        }
        Some(given) if given == id.as_str() => {}
        Some(_) => {
            return Err(ApiError::field(
                "environment_id",
                format!("does not match the id in the path ({id:?}); ids cannot be changed"),
            ))
        }
    }
    let text = serde_json::to_vec(&body).unwrap_or_default();
    let environment: Environment = environments::parse_one(&text)?;
    if api
        .coordinator
        .catalog()
        .replace(environment)
        .await?
        .is_none()
    {
        return Err(ApiError::not_found("environment", &id));
    }
    Ok(json(StatusCode::OK, &api.environment_view(&id).await?))
}

#[utoipa::path(
    delete, path = "/environments/{id}", operation_id = "deleteEnvironment", tag = "environments",
    params(crate::wire::EnvironmentPath),
    responses((status = 200, description = "Deleted", body = crate::wire::Deleted))
)]
pub(crate) async fn delete(State(api): Shared, Id(id): Id) -> Answer {
    let Ok(key) = EnvironmentId::parse(&id) else {
        return Err(ApiError::not_found("environment", &id));
    };
    match api.coordinator.catalog().delete(&key).await? {
        catalog::Deleted::Deleted => {
            api.coordinator.environment_deleted(&key);
            Ok(json(StatusCode::OK, &Deleted { deleted: id }))
        }
        catalog::Deleted::Missing => Err(ApiError::not_found("environment", &id)),
        catalog::Deleted::Busy { deployment } => Err(ApiError::conflict(
            "environment_busy",
            format!(
                "environment {id:?} is part of running deployment {deployment}; cancel it or wait"
            ),
        )),
    }
}

#[utoipa::path(
    post, path = "/environments/{id}/health-check", operation_id = "checkEnvironmentHealth", tag = "environments",
    params(crate::wire::EnvironmentPath),
    responses((status = 200, description = "The check's result, also recorded", body = crate::wire::HealthCheckAnswer))
)]
pub(crate) async fn health_check(State(api): Shared, Id(id): Id) -> Answer {
    let stored = api
        .coordinator
        .catalog()
        .get(&id)
        .await?
        .ok_or_else(|| ApiError::not_found("environment", &id))?;
    let Some(url) = stored.environment.health_check_url.clone() else {
        return Err(ApiError::unprocessable(
            "no_health_check_url",
            format!("environment {id:?} has no health_check_url to check"),
        ));
    };
    let timeout = Duration::from_secs(api.coordinator.settings().health_check_timeout_secs);
    let report = health::check(api.coordinator.egress(), &url, timeout).await;
    let id = stored.environment.environment_id;
    api.coordinator.record_health(&id, &report).await?;
    Ok(json(
        StatusCode::OK,
        &HealthCheckAnswer {
            health: HealthView::new(&report, View::Details),
            environment_id: id,
        },
    ))
}
