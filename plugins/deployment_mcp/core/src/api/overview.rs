//! The two overviews every role may read: `/status` (what runs, what ended last; cached) and
//! `/dashboard` (counts, environments with health and last result, recent figures). Both cost
//! the same whatever the history's length: counters, keyed reads and the first pages.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use arc_swap::ArcSwap;
use axum::{
    body::Bytes,
    extract::State,
    http::{header, StatusCode},
    response::{IntoResponse, Response},
};

use super::{json, Answer, ApiError, ApiState, Params, Shared, Who};
use crate::model::DeploymentId;
use crate::{
    deployment::{HistoryEntry, Phase, TargetStatus},
    persist::history::History,
    wire::{
        Activity, BatchView, DashboardAnswer, DashboardEnvironment, DeploymentEntry,
        DeploymentSummary, EnvironmentView, GateView, LastDeployment, RecentFigures,
        StatusOverview, View,
    },
};

/// How long a cached `/status` answer is served before it is rebuilt from the store.
const STATUS_MAX_AGE: Duration = Duration::from_millis(500);

/// The last `/status` overview, serialized for both views.
pub(super) struct StatusCache {
    cached: ArcSwap<CachedStatus>,
    /// Set while one request rebuilds it; the others keep serving the previous one.
    refreshing: AtomicBool,
}

struct CachedStatus {
    built: Instant,
    generation: usize,
    /// The answer for developers and admins, and for users.
    full: Bytes,
    user: Bytes,
}

impl StatusCache {
    pub(super) fn new() -> StatusCache {
        StatusCache {
            cached: ArcSwap::from_pointee(CachedStatus {
                built: Instant::now() - STATUS_MAX_AGE * 2,
                generation: usize::MAX,
                full: Bytes::new(),
                user: Bytes::new(),
            }),
            refreshing: AtomicBool::new(false),
        }
    }
}

impl CachedStatus {
    fn answer(&self, view: View) -> Response {
        let body = match view {
            View::Details => self.full.clone(),
            View::User => self.user.clone(),
        };
        ([(header::CONTENT_TYPE, "application/json")], body).into_response()
    }
}

impl ApiState {
    /// The overview in one view.
    fn overview(
        &self,
        active: &[HistoryEntry],
        latest: Option<&HistoryEntry>,
        view: View,
    ) -> StatusOverview {
        StatusOverview {
            status: if active.is_empty() {
                Activity::Idle
            } else {
                Activity::Running
            },
            active: active
                .iter()
                .map(|entry| DeploymentEntry::new(entry, view))
                .collect(),
            latest: latest.map(|entry| DeploymentEntry::new(entry, view)),
            plugin_version: self.version.to_owned(),
        }
    }

    /// The overview, for developers and for users, serialized.
    async fn build_status(&self) -> Result<(Bytes, Bytes), ApiError> {
        let active = self.deployments().active_entries().await?;
        let history = History::new(self.coordinator.records().clone());
        let latest = history.newest_finished(1).await?.into_iter().next();
        let encode = |view| {
            serde_json::to_vec(&self.overview(&active, latest.as_ref(), view))
                .map(Bytes::from)
                .unwrap_or_default()
        };
        Ok((encode(View::Details), encode(View::User)))
    }

    /// One deployment's summary in the caller's view.
    pub(super) async fn summary(
        &self,
        id: &DeploymentId,
        view: View,
    ) -> Result<DeploymentSummary, ApiError> {
        let record = self.record(id).await?;
        let targets = self.deployments().targets(id).await?;
        let failed = targets
            .iter()
            .filter(|target| target.status != TargetStatus::Succeeded)
            .map(|target| target.environment_id.clone())
            .collect::<Vec<_>>();
        let entry = record.history_entry(if record.status.is_terminal() {
            failed
        } else {
            Vec::new()
        });
        Ok(DeploymentSummary {
            batches: BatchView::all(&record),
            gate: GateView::of(&record),
            entry: DeploymentEntry::new(&entry, view),
            environment_status: targets
                .into_iter()
                .map(|target| (target.environment_id.into_string(), target.status))
                .collect(),
        })
    }
}

#[utoipa::path(
    get, path = "/status", operation_id = "getDeploymentStatus", tag = "overview",
    params(("id" = Option<String>, Query, description = "One deployment's summary instead of the overview")),
    responses((status = 200, description = "Active deployments and the latest finished one, or one deployment", body = crate::wire::StatusAnswer))
)]
pub(crate) async fn status(State(api): Shared, caller: Who, params: Params) -> Answer {
    let view = caller.view();
    if let Some(id) = params.get("id") {
        let id = DeploymentId::parse(&id).map_err(|_| ApiError::not_found("deployment", &id))?;
        return Ok(json(StatusCode::OK, &api.summary(&id, view).await?));
    }
    let cache = &api.status;
    let cached = cache.cached.load();
    let fresh = cached.generation == api.coordinator.generation()
        && cached.built.elapsed() < STATUS_MAX_AGE;
    // One request rebuilds a stale view; the others keep serving the previous one.
    if fresh || (!cached.full.is_empty() && cache.refreshing.swap(true, Ordering::SeqCst)) {
        return Ok(cached.answer(view));
    }
    let generation = api.coordinator.generation();
    let built = api.build_status().await;
    cache.refreshing.store(false, Ordering::SeqCst);
    let (full, user) = built?;
    let rebuilt = CachedStatus {
        built: Instant::now(),
        generation,
        full,
        user,
    };
    let response = rebuilt.answer(view);
    cache.cached.store(Arc::new(rebuilt));
    Ok(response)
}

/// The aggregate the dashboard draws: counts by status, environments with their health and
/// last result, active runs, and success rate and mean duration over the last `window`.
#[utoipa::path(
    get, path = "/dashboard", operation_id = "getDashboardSummary", tag = "overview",
    params(("window" = Option<u32>, Query, minimum = 1, maximum = 1000, description = "Finished deployments the figures cover (default 50)")),
    responses((status = 200, description = "The aggregate the dashboard draws", body = crate::wire::DashboardAnswer))
)]
pub(crate) async fn dashboard(State(api): Shared, caller: Who, params: Params) -> Answer {
    let window = params.number("window", 50, 1..=1000)?;
    let view = caller.view();
    let history = History::new(api.coordinator.records().clone());
    let counts = history.counts().await?;
    let total_count: u64 = counts.values().sum();
    let last = history.last_deployments().await?;
    // Every environment of each running deployment: the dashboard lists the whole catalog.
    let running_records = api.deployments().active().await?;
    let active: Vec<HistoryEntry> = running_records
        .iter()
        .map(|record| record.history_entry(Vec::new()))
        .collect();
    let running: HashMap<&str, &HistoryEntry> = running_records
        .iter()
        .zip(&active)
        .flat_map(|(record, entry)| {
            record
                .environments
                .iter()
                .map(move |environment| (environment.as_str(), entry))
        })
        .collect();
    let finished = history.newest_finished(window).await?;
    let succeeded = finished
        .iter()
        .filter(|entry| entry.status == Phase::Completed)
        .count();
    let durations: Vec<u64> = finished
        .iter()
        .filter_map(|entry| entry.duration_ms)
        .collect();
    let catalog = api.coordinator.catalog();
    let stored = catalog.list().await?;
    let health = catalog.all_health().await?;
    let versions = catalog.all_versions().await?;
    let environments = stored
        .iter()
        .map(|stored| {
            let id = stored.environment.environment_id.as_str();
            let last_deployment = match (running.get(id), last.get(id)) {
                (Some(entry), _) => Some(LastDeployment {
                    deployment_id: entry.deployment_id.clone(),
                    status: entry.status,
                    succeeded: None,
                    finished_at: None,
                }),
                (None, Some(last)) => Some(LastDeployment {
                    deployment_id: last.deployment_id.clone(),
                    status: last.status,
                    succeeded: Some(last.succeeded),
                    finished_at: last.finished_at,
                }),
                (None, None) => None,
            };
            DashboardEnvironment {
                environment: EnvironmentView::new(stored, health.get(id), versions.get(id), view),
                last_deployment,
            }
        })
        .collect();
    let answer = DashboardAnswer {
        counts,
        total_count,
        environments,
        active: active
            .iter()
            .map(|entry| DeploymentEntry::new(entry, view))
            .collect(),
        recent: RecentFigures {
            window: window as u64,
            finished: finished.len() as u64,
            success_rate: (!finished.is_empty()).then(|| succeeded as f64 / finished.len() as f64),
            mean_duration_ms: (!durations.is_empty())
                .then(|| durations.iter().sum::<u64>() / durations.len() as u64),
        },
        plugin_version: api.version.to_owned(),
    };
    Ok(json(StatusCode::OK, &answer))
}
