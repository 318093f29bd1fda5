//! The coordinator: starts deployments, runs their phases, and keeps the store and the event bus
//! up to date.
//!
//! Invariants:
//! - every phase change and environment result is written to the store before it is
//!   published, so an SSE client never sees what a restart would not show;
//! - an environment is in at most one running deployment: a deployment starts only if it claims
//!   every target at once (an insert-if-absent per environment in the `CLAIMS` collection, in
//!   the same store transaction as its first records), and releases them when it ends; so two
//!   copies of the plugin (a hot swap) or two hosts on one database cannot both win;
//! - a run belongs to the copy that started it; during a hot swap the old copy finishes it while
//!   the new one reads it from the store (and forwards cancels through the `CANCEL` records).

use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant, SystemTime},
};

use futures_util::FutureExt;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use plugin_guest::{Condition, StoreOp};

use crate::{
    catalog::Catalog,
    deployment::{
        new_deployment_id, DeploymentRecord, HealthReport, HistoryEntry, Phase, TargetRecord,
        TargetStatus,
    },
    ec2::{self, Ec2Settings},
    environments::{Environment, FieldError},
    health,
    records::{self, collection, Records},
    settings::Settings,
    triggers::{
        timestamp, AnyTrigger, FailureKind, LogLine, LogSink, LogStream, TriggerContext,
        TriggerFailure,
    },
};

/// Event kinds published on the host's bus.
pub mod event {
    pub const PHASE: &str = "deployment.phase";
    pub const ENVIRONMENT: &str = "deployment.environment";
    pub const LOG: &str = "deployment.log";
    pub const HEALTH: &str = "environment.health";
    pub const DELETED: &str = "environment.deleted";
}

/// Lines of output kept per environment in its result (the full log is in the store).
const OUTPUT_TAIL_LINES: usize = 20;
/// Log lines written per store record, and how long a line may wait to be written.
const LOG_BATCH_LINES: usize = 200;
const LOG_BATCH_DELAY: Duration = Duration::from_millis(100);
/// Lines in flight between triggers and the log writer.
const LOG_CHANNEL_LINES: usize = 1024;
/// How long past its timeout (or a cancel) a trigger that stops itself may take to do so.
const SELF_STOP_GRACE: Duration = Duration::from_secs(10);
/// How often a run looks for a cancel request made through another copy.
const CANCEL_POLL: Duration = Duration::from_millis(500);

/// What a caller asks to deploy.
#[derive(Debug, Clone, Default)]
pub struct StartRequest {
    /// The id to give the deployment (an idempotent caller picks it first); a new one if `None`.
    pub deployment_id: Option<String>,
    pub environments: Option<Vec<String>>,
    pub version: Option<String>,
    pub ec2: Option<bool>,
    pub triggered_by: String,
    pub request_id: Option<String>,
    pub retry_of: Option<String>,
}

#[derive(Debug)]
pub enum StartError {
    /// A field of the request is wrong (400).
    BadField(FieldError),
    /// Well-formed but cannot be done (422).
    Invalid {
        code: &'static str,
        message: String,
    },
    /// A target is already being deployed (409).
    Busy {
        environment: String,
        deployment: String,
    },
    Store(String),
}

impl From<String> for StartError {
    fn from(error: String) -> StartError {
        StartError::Store(error)
    }
}

/// Why a run stops early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StopReason {
    Cancelled,
    HostStopping,
}

struct RunHandle {
    cancel: CancellationToken,
    reason: Arc<Mutex<Option<StopReason>>>,
}

/// A run recorded as active in the store, so sibling copies see it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ActiveEntry {
    boot_id: String,
    environments: Vec<String>,
}

/// Who holds an environment (the value of its `CLAIMS` record).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    pub deployment_id: String,
    pub boot_id: String,
}

pub struct Coordinator {
    records: Records,
    catalog: Catalog,
    http: reqwest::Client,
    settings: Arc<Settings>,
    boot_id: String,
    runs: Mutex<HashMap<String, RunHandle>>,
    tasks: TaskTracker,
    /// Bumped on every local change, so cached views know they are stale.
    generation: AtomicUsize,
    imds_identity: tokio::sync::OnceCell<Option<(String, Option<String>)>>,
}

impl Coordinator {
    pub fn new(
        records: Records,
        http: reqwest::Client,
        settings: Arc<Settings>,
        boot_id: String,
    ) -> Coordinator {
        Coordinator {
            catalog: Catalog::new(records.clone()),
            records,
            http,
            settings,
            boot_id,
            runs: Mutex::new(HashMap::new()),
            tasks: TaskTracker::new(),
            generation: AtomicUsize::new(0),
            imds_identity: tokio::sync::OnceCell::new(),
        }
    }

    /// The platform's identity: when the deployment's EC2 phase is on (`ask_imds`), from the
    /// instance metadata service if the host runs on EC2 (asked once per copy, the first time
    /// a deployment needs it); else, or when that finds nothing, `EC2_INSTANCE_ID` /
    /// `EC2_PUBLIC_IP`. With EC2 off nothing is ever sent to the metadata address. `None` lets
    /// the EC2 phase's result stand in.
    pub async fn platform_identity(&self, ask_imds: bool) -> Option<(String, Option<String>)> {
        let from_imds = if ask_imds {
            self.imds_identity
                .get_or_init(ec2::identity_from_imds)
                .await
                .clone()
        } else {
            None
        };
        from_imds.or_else(|| {
            let id = std::env::var("EC2_INSTANCE_ID")
                .ok()
                .filter(|id| !id.trim().is_empty())?;
            Some((id, std::env::var("EC2_PUBLIC_IP").ok()))
        })
    }

    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    pub fn records(&self) -> &Records {
        &self.records
    }

    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    pub fn settings_handle(&self) -> Arc<Settings> {
        Arc::clone(&self.settings)
    }

    pub fn generation(&self) -> usize {
        self.generation.load(Ordering::SeqCst)
    }

    fn changed(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    fn runs(&self) -> std::sync::MutexGuard<'_, HashMap<String, RunHandle>> {
        self.runs
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Marks runs of earlier boots as interrupted: the host died while they ran. Runs of this
    /// boot belong to a sibling copy (hot swap) and are left alone.
    pub async fn recover(&self) -> Result<usize, String> {
        let mut recovered = 0;
        for (key, entry) in self
            .records
            .scan::<HistoryEntry>(collection::HISTORY, "")
            .await?
        {
            if entry.status.is_terminal() {
                continue;
            }
            let Some(mut record) = self
                .records
                .get::<DeploymentRecord>(collection::DEPLOYMENTS, &entry.deployment_id)
                .await?
            else {
                continue;
            };
            if record.boot_id == self.boot_id {
                continue;
            }
            let now = SystemTime::now();
            let phase = record.status;
            let mut failed = Vec::new();
            for (target_key, mut target) in self
                .records
                .scan::<TargetRecord>(collection::TARGETS, &format!("{}/", record.deployment_id))
                .await?
            {
                if !target.status.is_terminal() {
                    target.error = Some(format!(
                        "the host stopped while this environment was {}",
                        serde_json::to_value(target.status)
                            .ok()
                            .and_then(|value| value.as_str().map(str::to_owned))
                            .unwrap_or_default()
                    ));
                    target.status = TargetStatus::Cancelled;
                    target.finished_at = Some(timestamp(now));
                    self.records
                        .put(collection::TARGETS, &target_key, &target)
                        .await?;
                }
                if target.status != TargetStatus::Succeeded {
                    failed.push(target.environment_id.clone());
                }
            }
            let message = format!(
                "interrupted: the host stopped during phase {}; everything recorded until then is kept",
                phase.as_str()
            );
            let next_chunk = self.next_log_chunk(&record.deployment_id).await?;
            let line = LogLine {
                ts: timestamp(now),
                environment: None,
                stream: LogStream::Error,
                line: message.clone(),
                request_id: record.request_id.clone(),
            };
            self.records
                .put(
                    collection::LOGS,
                    &log_key(&record.deployment_id, next_chunk),
                    &vec![line],
                )
                .await?;
            record.log_lines += 1;
            record.status = Phase::Interrupted;
            record.errors.push(message);
            record.finished_at = Some(timestamp(now));
            self.records
                .put(collection::DEPLOYMENTS, &record.deployment_id, &record)
                .await?;
            self.records
                .put(collection::HISTORY, &key, &record.history_entry(failed))
                .await?;
            recovered += 1;
        }
        for (id, active) in self
            .records
            .scan::<ActiveEntry>(collection::ACTIVE, "")
            .await?
        {
            if active.boot_id != self.boot_id {
                self.records.delete(collection::ACTIVE, &id).await?;
                self.records.delete(collection::CANCEL, &id).await?;
            }
        }
        // Claims of runs that died with an earlier boot free their environments. Each is
        // released only if it still holds what was read (a compare-and-set).
        let mut stale = Vec::new();
        let mut after = None;
        loop {
            let page = self
                .records
                .page(collection::CLAIMS, after.clone(), 1000)
                .await?;
            let full = page.len() == 1000;
            for (environment, text) in page {
                after = Some(environment.clone());
                let boot = serde_json::from_str::<Claim>(&text).map(|claim| claim.boot_id);
                if boot.as_deref().map_or(true, |boot| boot != self.boot_id) {
                    stale.push(
                        StoreOp::delete(collection::CLAIMS, &environment)
                            .when(Condition::Equals(text)),
                    );
                }
            }
            if !full {
                break;
            }
        }
        for op in stale {
            // A conflict means the claim changed since it was read: it is not stale.
            self.records.apply(vec![op]).await?;
        }
        Ok(recovered)
    }

    async fn next_log_chunk(&self, deployment_id: &str) -> Result<u64, String> {
        let chunks = self
            .records
            .scan::<serde_json::Value>(collection::LOGS, &format!("{deployment_id}/"))
            .await?;
        Ok(chunks
            .last()
            .and_then(|(key, _)| key.rsplit('/').next()?.parse::<u64>().ok())
            .map_or(0, |last| last + 1))
    }

    /// Starts a deployment and returns its first record; the run goes on in the background.
    pub async fn start(
        self: &Arc<Self>,
        request: StartRequest,
    ) -> Result<DeploymentRecord, StartError> {
        let ec2 = match (request.ec2, &self.settings.ec2) {
            (Some(false), _) | (None, None) => None,
            (None, Some(ec2)) => ec2.enabled.then(|| ec2.clone()),
            (Some(true), Some(ec2)) => Some(ec2.clone()),
            (Some(true), None) => {
                return Err(StartError::Invalid {
                    code: "ec2_not_configured",
                    message: "ec2: the EC2 phase is not configured; add [plugins.deployment_mcp.settings.ec2] with instance_ids or tag_filters, or omit `ec2`".into(),
                })
            }
        };
        let version = request
            .version
            .clone()
            .or_else(|| crate::auto_deploy::platform_version(&self.settings))
            .unwrap_or_else(|| "unversioned".into());
        if version.trim().is_empty() || version.len() > 128 || version.chars().any(char::is_control)
        {
            return Err(StartError::BadField(FieldError::new(
                "version",
                "must be 1 to 128 printable characters",
            )));
        }
        let targets = self.choose_targets(request.environments.as_deref()).await?;
        let now = SystemTime::now();
        let created_ms = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as u64;
        let record = DeploymentRecord {
            deployment_id: request
                .deployment_id
                .clone()
                .unwrap_or_else(|| new_deployment_id(created_ms)),
            status: Phase::Pending,
            progress: 0,
            version,
            triggered_by: request.triggered_by.clone(),
            request_id: request.request_id.clone(),
            environments: targets.iter().map(|t| t.environment_id.clone()).collect(),
            ec2: match &ec2 {
                Some(_) => json!({ "status": "pending" }),
                None => json!({ "status": "skipped", "reason": "ec2 is off" }),
            },
            errors: Vec::new(),
            created_at: timestamp(now),
            finished_at: None,
            duration_ms: None,
            retry_of: request.retry_of.clone(),
            log_lines: 0,
            boot_id: self.boot_id.clone(),
            created_ms,
        };
        let id = record.deployment_id.clone();
        self.claim_and_record(&record, &targets).await?;
        self.changed();
        let cancel = CancellationToken::new();
        let reason = Arc::new(Mutex::new(None));
        self.runs().insert(
            id.clone(),
            RunHandle {
                cancel: cancel.clone(),
                reason: Arc::clone(&reason),
            },
        );
        tracing::info!(
            deployment = %id,
            request_id = record.request_id.as_deref().unwrap_or(""),
            triggered_by = %record.triggered_by,
            environments = record.environments.len(),
            "deployment started"
        );
        self.publish_phase(&record, None);
        let run = Run {
            coordinator: Arc::clone(self),
            record: tokio::sync::Mutex::new(record.clone()),
            cancel,
            reason,
            finished_targets: AtomicUsize::new(0),
            total_targets: targets.len(),
            ec2,
        };
        let run = Arc::new(run);
        self.tasks.spawn(async move {
            let outcome = std::panic::AssertUnwindSafe(Arc::clone(&run).execute(targets))
                .catch_unwind()
                .await;
            if let Err(panic) = outcome {
                run.abandon(&plugin_guest::panic_message(&*panic)).await;
            }
        });
        Ok(record)
    }

    /// The environments a deployment targets: the ones named (each checked), or every enabled
    /// one. Reads by key when ids are given, so a trigger costs the same whatever the catalog's
    /// size.
    async fn choose_targets(&self, ids: Option<&[String]>) -> Result<Vec<Environment>, StartError> {
        let Some(ids) = ids else {
            let mut all: Vec<Environment> = self
                .catalog
                .list()
                .await?
                .into_iter()
                .map(|stored| stored.environment)
                .filter(|environment| environment.enabled)
                .collect();
            all.sort_by(|a, b| a.environment_id.cmp(&b.environment_id));
            if all.is_empty() {
                return Err(StartError::Invalid {
                    code: "no_environments",
                    message:
                        "there is no enabled environment to deploy; add one with POST /environments"
                            .into(),
                });
            }
            return Ok(all);
        };
        if ids.is_empty() {
            return Err(StartError::BadField(FieldError::new(
                "environments",
                "is an empty list; omit it to deploy every enabled environment",
            )));
        }
        let mut seen = HashSet::new();
        for id in ids {
            if !seen.insert(id.as_str()) {
                return Err(StartError::BadField(FieldError::new(
                    "environments",
                    format!("{id:?} is listed twice"),
                )));
            }
            crate::environments::check_id(id).map_err(|_| StartError::Invalid {
                code: "unknown_environment",
                message: format!(
                    "environments: no environment {id:?}; GET /environments lists them"
                ),
            })?;
        }
        let mut chosen = Vec::with_capacity(ids.len());
        for id in ids {
            let Some(stored) = self.catalog.get(id).await? else {
                return Err(StartError::Invalid {
                    code: "unknown_environment",
                    message: format!(
                        "environments: no environment {id:?}; GET /environments lists them"
                    ),
                });
            };
            if !stored.environment.enabled {
                return Err(StartError::Invalid {
                    code: "environment_disabled",
                    message: format!("environments: {id:?} is disabled (enabled = false)"),
                });
            }
            chosen.push(stored.environment);
        }
        Ok(chosen)
    }

    /// Claims every target and writes the deployment's first records, in one transaction: either
    /// all of it happens, or (a target is claimed already) nothing and `Busy`.
    async fn claim_and_record(
        &self,
        record: &DeploymentRecord,
        targets: &[Environment],
    ) -> Result<(), StartError> {
        let id = &record.deployment_id;
        let claim = records::encode(
            collection::CLAIMS,
            id,
            &Claim {
                deployment_id: id.clone(),
                boot_id: self.boot_id.clone(),
            },
        )?;
        let mut ops = Vec::with_capacity(targets.len() * 2 + 3);
        for target in targets {
            ops.push(StoreOp::insert(
                collection::CLAIMS,
                &target.environment_id,
                claim.clone(),
            ));
        }
        ops.push(StoreOp::put(
            collection::ACTIVE,
            id,
            records::encode(
                collection::ACTIVE,
                id,
                &ActiveEntry {
                    boot_id: self.boot_id.clone(),
                    environments: record.environments.clone(),
                },
            )?,
        ));
        for target in targets {
            let key = target_key(id, &target.environment_id);
            let pending = TargetRecord::new(
                &target.environment_id,
                target.connection_method.as_str(),
                TargetStatus::Pending,
            );
            ops.push(StoreOp::put(
                collection::TARGETS,
                &key,
                records::encode(collection::TARGETS, &key, &pending)?,
            ));
        }
        ops.push(StoreOp::put(
            collection::DEPLOYMENTS,
            id,
            records::encode(collection::DEPLOYMENTS, id, record)?,
        ));
        let history_key = record.history_key();
        ops.push(StoreOp::put(
            collection::HISTORY,
            &history_key,
            records::encode(
                collection::HISTORY,
                &history_key,
                &record.history_entry(Vec::new()),
            )?,
        ));
        match self.records.apply(ops).await? {
            None => Ok(()),
            Some(conflict) => {
                let Some(target) = targets.get(conflict.index) else {
                    return Err(StartError::Store(format!(
                        "starting {id}: an unexpected store conflict at operation {}",
                        conflict.index
                    )));
                };
                let holder = conflict
                    .current
                    .and_then(|text| serde_json::from_str::<Claim>(&text).ok())
                    .map(|claim| claim.deployment_id)
                    .unwrap_or_default();
                Err(StartError::Busy {
                    environment: target.environment_id.clone(),
                    deployment: holder,
                })
            }
        }
    }

    /// Releases the claims a deployment holds and its `ACTIVE` record. A claim that is no
    /// longer this deployment's (recovered by another boot) is left alone.
    async fn release(&self, deployment_id: &str, environments: &[String]) {
        let claim = match records::encode(
            collection::CLAIMS,
            deployment_id,
            &Claim {
                deployment_id: deployment_id.to_owned(),
                boot_id: self.boot_id.clone(),
            },
        ) {
            Ok(claim) => claim,
            Err(error) => {
                tracing::error!(deployment = deployment_id, "{error}");
                return;
            }
        };
        let mut ops: Vec<StoreOp> = environments
            .iter()
            .map(|environment| {
                StoreOp::delete(collection::CLAIMS, environment)
                    .when(Condition::Equals(claim.clone()))
            })
            .collect();
        ops.push(StoreOp::delete(collection::ACTIVE, deployment_id));
        ops.push(StoreOp::delete(collection::CANCEL, deployment_id));
        // Each conflict drops one claim that is not ours; the rest are released.
        for _ in 0..=environments.len() {
            match self.records.apply(ops.clone()).await {
                Ok(None) => return,
                Ok(Some(conflict)) if conflict.index < ops.len() => {
                    tracing::warn!(deployment = deployment_id, environment = %ops[conflict.index].key, "the environment's claim is no longer this deployment's; left as it is");
                    ops.remove(conflict.index);
                }
                Ok(Some(_)) => return,
                Err(error) => {
                    tracing::error!(
                        deployment = deployment_id,
                        "cannot release the environments: {error}"
                    );
                    return;
                }
            }
        }
    }

    /// Writes the record and its history entry (terminal or not).
    async fn save_record(&self, record: &DeploymentRecord) -> Result<(), String> {
        self.records
            .put(collection::DEPLOYMENTS, &record.deployment_id, record)
            .await?;
        let failed = if record.status.is_terminal() {
            self.records
                .scan::<TargetRecord>(collection::TARGETS, &format!("{}/", record.deployment_id))
                .await?
                .into_iter()
                .filter(|(_, target)| target.status != TargetStatus::Succeeded)
                .map(|(_, target)| target.environment_id)
                .collect()
        } else {
            Vec::new()
        };
        self.records
            .put(
                collection::HISTORY,
                &record.history_key(),
                &record.history_entry(failed),
            )
            .await?;
        self.changed();
        Ok(())
    }

    /// Publishes a phase change: the whole picture for developers; for users, without the
    /// error texts (they name hosts and URLs).
    fn publish_phase(&self, record: &DeploymentRecord, previous: Option<Phase>) {
        let at = timestamp(SystemTime::now());
        let full = json!({
            "deployment_id": record.deployment_id,
            "status": record.status,
            "previous": previous,
            "progress": record.progress,
            "environments": record.environments,
            "errors": record.errors,
            "at": at,
        });
        let user = json!({
            "deployment_id": record.deployment_id,
            "status": record.status,
            "previous": previous,
            "progress": record.progress,
            "environments": record.environments,
            "error_count": record.errors.len(),
            "at": at,
        });
        self.records
            .host()
            .publish_by_role(event::PHASE, &full, Some(&user));
    }

    /// Tells subscribers (and the host's metrics) that an environment is gone.
    pub fn environment_deleted(&self, id: &str) {
        self.changed();
        self.records
            .host()
            .publish(event::DELETED, &json!({ "environment_id": id }));
    }

    /// Asks a run to stop. `Ok(true)` when this copy runs it, `Ok(false)` when the request was
    /// left for the copy that does.
    pub async fn cancel(&self, deployment_id: &str, by: &str) -> Result<bool, String> {
        let local = self.runs().get(deployment_id).map(|run| {
            let mut reason = run
                .reason
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            reason.get_or_insert(StopReason::Cancelled);
            run.cancel.clone()
        });
        match local {
            Some(token) => {
                tracing::info!(deployment = deployment_id, by, "cancel requested");
                token.cancel();
                Ok(true)
            }
            None => {
                self.records
                    .put(collection::CANCEL, deployment_id, &json!({ "by": by }))
                    .await?;
                Ok(false)
            }
        }
    }

    /// Stops taking work and lets runs end: at a host shutdown they are stopped and recorded
    /// as interrupted; at a hot swap they run to completion (the new copy serves meanwhile).
    pub async fn shutdown(&self, host_stopping: bool) {
        self.tasks.close();
        if host_stopping {
            let tokens: Vec<CancellationToken> = self
                .runs()
                .values()
                .map(|run| {
                    let mut reason = run
                        .reason
                        .lock()
                        .unwrap_or_else(|poisoned| poisoned.into_inner());
                    reason.get_or_insert(StopReason::HostStopping);
                    run.cancel.clone()
                })
                .collect();
            for token in tokens {
                token.cancel();
            }
        } else if !self.runs().is_empty() {
            tracing::info!(
                runs = self.runs().len(),
                "hot swap: this copy finishes its running deployments before it stops"
            );
        }
        self.tasks.wait().await;
    }

    /// Ids of the runs this copy is executing.
    pub fn local_runs(&self) -> Vec<String> {
        self.runs().keys().cloned().collect()
    }

    /// Periodic health checks of every enabled environment with a `health_check_url`.
    pub async fn health_loop(self: Arc<Self>, stop: CancellationToken) {
        let interval = self.settings.health_check_interval_secs;
        if interval == 0 {
            return;
        }
        let mut ticker = tokio::time::interval(Duration::from_secs(interval));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = ticker.tick() => {}
            }
            if let Err(error) = self.check_all_health().await {
                tracing::warn!("periodic health check: {error}");
            }
        }
    }

    async fn check_all_health(&self) -> Result<(), String> {
        let environments = self.catalog.list().await?;
        let limit = Arc::new(Semaphore::new(self.settings.max_parallel));
        let mut checks = tokio::task::JoinSet::new();
        for stored in environments {
            let environment = stored.environment;
            if !environment.enabled || environment.health_check_url.is_none() {
                continue;
            }
            let limit = Arc::clone(&limit);
            let http = self.http.clone();
            let timeout = Duration::from_secs(self.settings.health_check_timeout_secs);
            checks.spawn(async move {
                let _permit = limit.acquire_owned().await.ok();
                let url = environment.health_check_url.clone().unwrap_or_default();
                (
                    environment.environment_id,
                    health::check(&http, &url, timeout).await,
                )
            });
        }
        while let Some(done) = checks.join_next().await {
            let Ok((id, report)) = done else { continue };
            self.record_health(&id, &report).await?;
        }
        Ok(())
    }

    /// Stores an environment's health and publishes it when it changed.
    pub async fn record_health(&self, id: &str, report: &HealthReport) -> Result<(), String> {
        if self.catalog.set_health(id, report).await? {
            self.records.host().publish_by_role(
                event::HEALTH,
                &json!({ "environment_id": id, "health": report }),
                Some(&json!({ "environment_id": id, "health": report.user_view() })),
            );
        }
        self.changed();
        Ok(())
    }
}

pub fn target_key(deployment_id: &str, environment_id: &str) -> String {
    format!("{deployment_id}/{environment_id}")
}

pub fn log_key(deployment_id: &str, chunk: u64) -> String {
    format!("{deployment_id}/{chunk:010}")
}

/// One deployment in progress.
struct Run {
    coordinator: Arc<Coordinator>,
    record: tokio::sync::Mutex<DeploymentRecord>,
    cancel: CancellationToken,
    reason: Arc<Mutex<Option<StopReason>>>,
    finished_targets: AtomicUsize,
    total_targets: usize,
    /// The EC2 phase to run first, when it is on for this deployment.
    ec2: Option<Ec2Settings>,
}

/// Progress at the start of each phase; triggering and verification fill the gaps in between.
const PROGRESS_EC2: u8 = 2;
const PROGRESS_TRIGGERING: u8 = 10;
const PROGRESS_TRIGGERED: u8 = 80;
const PROGRESS_VERIFIED: u8 = 95;

impl Run {
    fn stop_reason(&self) -> Option<StopReason> {
        *self
            .reason
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    async fn execute(self: Arc<Self>, targets: Vec<Environment>) {
        let coordinator = Arc::clone(&self.coordinator);
        let started = Instant::now();
        let (deployment_id, version, request_id) = {
            let record = self.record.lock().await;
            (
                record.deployment_id.clone(),
                record.version.clone(),
                record.request_id.clone().filter(|id| !id.is_empty()),
            )
        };
        let (log, lines) = LogSink::channel(LOG_CHANNEL_LINES);
        let tails = Arc::new(Mutex::new(HashMap::<String, VecDeque<LogLine>>::new()));
        let (flush, flushes) = mpsc::channel(4);
        let writer = tokio::spawn(
            LogWriter {
                records: coordinator.records.clone(),
                deployment_id: deployment_id.clone(),
                next_chunk: 0,
                stored_lines: 0,
                total_lines: 0,
                limit: coordinator.settings.max_log_lines as u64,
                tails: Arc::clone(&tails),
                request_id,
            }
            .run(lines, flushes),
        );
        let watcher = tokio::spawn(watch_cancel_requests(
            coordinator.records.clone(),
            deployment_id.clone(),
            self.cancel.clone(),
            Arc::clone(&self.reason),
        ));
        let logs = RunLog {
            sink: log.clone(),
            flush,
        };

        let triggered_by = self.record.lock().await.triggered_by.clone();
        log.info(format!(
            "deployment {deployment_id} started by {triggered_by}: {} environment(s), version {version}",
            targets.len()
        ))
        .await;
        let mut platform = coordinator.platform_identity(self.ec2.is_some()).await;
        let ec2_ok = match &self.ec2 {
            None => {
                log.info("EC2 phase skipped: ec2 is off").await;
                true
            }
            Some(settings) => {
                self.set_phase(&logs, Phase::Ec2Deploying, PROGRESS_EC2)
                    .await;
                let outcome = tokio::select! {
                    outcome = ec2::ensure_running(settings, &log) => Some(outcome),
                    _ = self.cancel.cancelled() => None,
                };
                match outcome {
                    Some(Ok(outcome)) => {
                        if platform.is_none() {
                            platform = outcome.platform();
                        }
                        self.record.lock().await.ec2 = json!({
                            "status": "completed",
                            "instances": outcome.instances,
                            "started": outcome.started,
                        });
                        self.set_phase(&logs, Phase::Ec2Completed, PROGRESS_TRIGGERING)
                            .await;
                        true
                    }
                    Some(Err(message)) => {
                        log.line(LogStream::Error, format!("EC2 phase failed: {message}"))
                            .await;
                        let mut record = self.record.lock().await;
                        record.ec2 = json!({ "status": "failed", "error": message });
                        record.errors.push(format!("ec2_deploying: {message}"));
                        false
                    }
                    None => false,
                }
            }
        };
        if let Some((id, ip)) = &platform {
            log.info(format!(
                "platform instance {id}{}",
                ip.as_deref()
                    .map(|ip| format!(" at {ip}"))
                    .unwrap_or_default()
            ))
            .await;
        }
        let limit = Arc::new(Semaphore::new(coordinator.settings.max_parallel));
        let context = TriggerContext {
            deployment_id: deployment_id.clone(),
            version,
            platform_instance_id: platform.as_ref().map(|(id, _)| id.clone()),
            platform_ip: platform.and_then(|(_, ip)| ip),
            log: log.clone(),
            stop: Default::default(),
        };
        if ec2_ok {
            self.set_phase(&logs, Phase::LocalTriggering, PROGRESS_TRIGGERING)
                .await;
        } else {
            self.skip_targets(&targets, "not triggered: the EC2 phase did not complete")
                .await;
        }
        let mut running = tokio::task::JoinSet::new();
        for environment in targets.iter().filter(|_| ec2_ok) {
            let run = Arc::clone(&self);
            let limit = Arc::clone(&limit);
            let mut context = context.clone();
            context.log = log.for_environment(&environment.environment_id);
            let environment = environment.clone();
            let tails = Arc::clone(&tails);
            running.spawn(async move { run.trigger_one(environment, context, limit, tails).await });
        }
        if ec2_ok {
            self.set_phase(&logs, Phase::LocalDeploying, PROGRESS_TRIGGERING)
                .await;
        }
        let mut succeeded = Vec::new();
        while let Some(done) = running.join_next().await {
            if let Ok(Some(environment)) = done {
                succeeded.push(environment);
            }
        }

        if ec2_ok && self.stop_reason().is_none() {
            self.set_phase(&logs, Phase::LocalCompleted, PROGRESS_TRIGGERED)
                .await;
            self.set_phase(&logs, Phase::Verifying, PROGRESS_TRIGGERED)
                .await;
            self.verify(&log, succeeded, &limit).await;
        }

        let failed_any = {
            let targets = coordinator
                .records
                .scan::<TargetRecord>(collection::TARGETS, &format!("{deployment_id}/"))
                .await
                .unwrap_or_default();
            targets
                .iter()
                .any(|(_, target)| target.status != TargetStatus::Succeeded)
        };
        let (phase, message) = match self.stop_reason() {
            Some(StopReason::Cancelled) => {
                (Phase::Cancelled, Some("cancelled by request".to_owned()))
            }
            Some(StopReason::HostStopping) => (
                Phase::Interrupted,
                Some(
                    "interrupted: the host shut down while this deployment was running".to_owned(),
                ),
            ),
            None if failed_any => (Phase::Failed, None),
            None => (Phase::Completed, None),
        };
        match &message {
            Some(message) => log.line(LogStream::Error, message.clone()).await,
            None => {
                log.info(format!(
                    "deployment {} after {:.1} s",
                    phase.as_str(),
                    started.elapsed().as_secs_f64()
                ))
                .await
            }
        }
        let total_lines = logs.flush().await;
        {
            let mut record = self.record.lock().await;
            record.log_lines = total_lines;
            if let Some(message) = message {
                record.errors.push(message);
            }
            record.finished_at = Some(timestamp(SystemTime::now()));
            record.duration_ms = Some(started.elapsed().as_millis() as u64);
        }
        watcher.abort();
        drop(logs);
        drop(log);
        drop(context);
        let _ = writer.await;
        // Record the end, free the environments, then tell the world: whoever sees the final
        // phase can start the next deployment of these environments at once.
        let (record, previous) = {
            let mut record = self.record.lock().await;
            let previous = record.status;
            record.status = phase;
            if phase == Phase::Completed {
                record.progress = 100;
            }
            if let Err(error) = coordinator.save_record(&record).await {
                tracing::error!(deployment = %deployment_id, "cannot record the end: {error}");
            }
            (record.clone(), previous)
        };
        coordinator
            .release(&deployment_id, &record.environments)
            .await;
        coordinator.runs().remove(&deployment_id);
        coordinator.changed();
        coordinator.publish_phase(&record, Some(previous));
    }

    /// Ends a run whose task panicked: records it failed and frees its environments, so a bug
    /// cannot leave environments busy until the next restart.
    async fn abandon(&self, panic: &str) {
        let coordinator = &self.coordinator;
        let record = {
            let mut record = self.record.lock().await;
            tracing::error!(deployment = %record.deployment_id, panic, "deployment run panicked");
            record.status = Phase::Failed;
            record
                .errors
                .push("internal error: the run stopped unexpectedly; see the host log".into());
            record.finished_at = Some(timestamp(SystemTime::now()));
            if let Err(error) = coordinator.save_record(&record).await {
                tracing::error!(deployment = %record.deployment_id, "{error}");
            }
            record.clone()
        };
        coordinator
            .release(&record.deployment_id, &record.environments)
            .await;
        coordinator.runs().remove(&record.deployment_id);
        coordinator.changed();
        coordinator.publish_phase(&record, None);
    }

    /// Writes a phase change (after the log lines before it), then publishes it.
    async fn set_phase(&self, logs: &RunLog, phase: Phase, progress: u8) {
        let lines = logs.flush().await;
        let mut record = self.record.lock().await;
        let previous = record.status;
        record.status = phase;
        record.progress = record.progress.max(progress);
        record.log_lines = lines;
        if let Err(error) = self.coordinator.save_record(&record).await {
            tracing::error!(deployment = %record.deployment_id, "cannot record phase {}: {error}", phase.as_str());
        }
        self.coordinator.publish_phase(&record, Some(previous));
    }

    /// Runs one environment's trigger under the parallel limit, its timeout and the cancel
    /// token. Returns the environment when it succeeded.
    async fn trigger_one(
        self: Arc<Self>,
        environment: Environment,
        context: TriggerContext,
        limit: Arc<Semaphore>,
        tails: Arc<Mutex<HashMap<String, VecDeque<LogLine>>>>,
    ) -> Option<Environment> {
        let id = environment.environment_id.clone();
        let mut target = TargetRecord::new(
            &id,
            environment.connection_method.as_str(),
            TargetStatus::Pending,
        );
        let permit = tokio::select! {
            permit = limit.acquire_owned() => permit.ok(),
            _ = self.cancel.cancelled() => None,
        };
        let started = Instant::now();
        let outcome = match permit {
            None => Err((
                TargetStatus::Cancelled,
                "stopped before it started".to_owned(),
                None,
            )),
            Some(_permit) => {
                target.started_at = Some(timestamp(SystemTime::now()));
                target.status = TargetStatus::Triggering;
                self.save_target(&target).await;
                // Secrets are read only now, for the trigger, and live only as long as it.
                let with_secrets = match self
                    .coordinator
                    .catalog
                    .with_secrets(environment.clone())
                    .await
                {
                    Ok(with_secrets) => with_secrets,
                    Err(error) => {
                        tracing::error!(environment = %id, "cannot read the environment's secrets: {error}");
                        environment.clone()
                    }
                };
                let trigger = AnyTrigger::for_environment(&with_secrets, &self.coordinator.http);
                drop(with_secrets);
                target.status = TargetStatus::Running;
                self.save_target(&target).await;
                let timeout = Duration::from_secs(environment.timeout);
                let mut context = context.clone();
                context.stop = crate::triggers::StopSignal {
                    cancel: self.cancel.clone(),
                    deadline: Some(tokio::time::Instant::now() + timeout),
                };
                let timed_out = || {
                    Err((
                        TargetStatus::TimedOut,
                        format!("no result within the environment's timeout of {} s; the trigger was stopped", environment.timeout),
                        None,
                    ))
                };
                let cancelled = || {
                    Err((
                        TargetStatus::Cancelled,
                        "stopped: the deployment was cancelled".to_owned(),
                        None,
                    ))
                };
                let run = trigger.run(&context);
                tokio::pin!(run);
                let result = if trigger.stops_itself() {
                    // It kills and reaps what it started when told to stop; the bound only
                    // guards against a trigger that does not.
                    tokio::time::timeout(timeout + SELF_STOP_GRACE, &mut run)
                        .await
                        .ok()
                } else {
                    tokio::select! {
                        result = tokio::time::timeout(timeout, &mut run) => result.ok(),
                        _ = self.cancel.cancelled() => Some(Err(TriggerFailure::cancelled(String::new()))),
                    }
                };
                match result {
                    Some(Ok(success)) => Ok(success),
                    Some(Err(failure)) => match failure.kind {
                        FailureKind::Failed => {
                            Err((TargetStatus::Failed, failure.message, failure.exit_code))
                        }
                        FailureKind::TimedOut => {
                            Err((TargetStatus::TimedOut, failure.message, failure.exit_code))
                        }
                        FailureKind::Cancelled if failure.message.is_empty() => cancelled(),
                        FailureKind::Cancelled => {
                            Err((TargetStatus::Cancelled, failure.message, failure.exit_code))
                        }
                    },
                    None if self.cancel.is_cancelled() => cancelled(),
                    None => timed_out(),
                }
            }
        };
        let succeeded = match outcome {
            Ok(success) => {
                target.status = TargetStatus::Succeeded;
                target.exit_code = success.exit_code;
                target.detail = success.detail;
                context.log.info("trigger succeeded").await;
                true
            }
            Err((status, message, exit_code)) => {
                let message = crate::redact::urls_in(&message);
                target.status = status;
                target.exit_code = exit_code;
                context.log.line(LogStream::Error, message.clone()).await;
                target.error = Some(message);
                false
            }
        };
        target.finished_at = Some(timestamp(SystemTime::now()));
        target.duration_ms = Some(started.elapsed().as_millis() as u64);
        // The tail includes this environment's last lines once the writer has seen them.
        let finished = self.finished_targets.fetch_add(1, Ordering::SeqCst) + 1;
        let progress = PROGRESS_TRIGGERING
            + ((PROGRESS_TRIGGERED - PROGRESS_TRIGGERING) as usize * finished
                / self.total_targets.max(1)) as u8;
        self.finish_target(&mut target, &tails, progress).await;
        succeeded.then_some(environment)
    }

    /// Records environments that were never triggered as cancelled, with the reason.
    async fn skip_targets(&self, targets: &[Environment], why: &str) {
        for environment in targets {
            let mut target = TargetRecord::new(
                &environment.environment_id,
                environment.connection_method.as_str(),
                TargetStatus::Cancelled,
            );
            target.finished_at = Some(timestamp(SystemTime::now()));
            target.error = Some(why.to_owned());
            self.save_target(&target).await;
        }
    }

    async fn save_target(&self, target: &TargetRecord) {
        let (id, progress) = {
            let record = self.record.lock().await;
            (record.deployment_id.clone(), record.progress)
        };
        if let Err(error) = self
            .coordinator
            .records
            .put(
                collection::TARGETS,
                &target_key(&id, &target.environment_id),
                target,
            )
            .await
        {
            tracing::error!(deployment = %id, "cannot record environment {}: {error}", target.environment_id);
        }
        self.coordinator.changed();
        self.coordinator.records.host().publish_by_role(
            event::ENVIRONMENT,
            &json!({ "deployment_id": id, "progress": progress, "environment": target }),
            Some(&json!({
                "deployment_id": id,
                "progress": progress,
                "environment": target.user_view(),
            })),
        );
    }

    /// Records an environment's final result and the deployment's progress.
    async fn finish_target(
        &self,
        target: &mut TargetRecord,
        tails: &Mutex<HashMap<String, VecDeque<LogLine>>>,
        progress: u8,
    ) {
        {
            let mut record = self.record.lock().await;
            record.progress = record.progress.max(progress);
            if let Err(error) = self.coordinator.save_record(&record).await {
                tracing::error!(deployment = %record.deployment_id, "cannot record progress: {error}");
            }
        }
        target.output_tail = tails
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(&target.environment_id)
            .map(|tail| tail.iter().cloned().collect())
            .unwrap_or_default();
        self.save_target(target).await;
    }

    /// Polls each succeeded environment's health URL until healthy or its timeout. An unhealthy
    /// environment turns `failed`, with the URL and the answer in its error.
    async fn verify(
        self: &Arc<Self>,
        log: &LogSink,
        succeeded: Vec<Environment>,
        limit: &Arc<Semaphore>,
    ) {
        let deployment_id = self.record.lock().await.deployment_id.clone();
        let checked: Vec<Environment> = succeeded
            .into_iter()
            .filter(|environment| environment.health_check_url.is_some())
            .collect();
        if checked.is_empty() {
            log.info("verifying: no environment has a health_check_url; nothing to check")
                .await;
            return;
        }
        let total = checked.len();
        let verified = Arc::new(AtomicUsize::new(0));
        let mut checks = tokio::task::JoinSet::new();
        for environment in checked {
            let run = Arc::clone(self);
            let limit = Arc::clone(limit);
            let log = log.for_environment(&environment.environment_id);
            let verified = Arc::clone(&verified);
            let deployment_id = deployment_id.clone();
            checks.spawn(async move {
                let _permit = limit.acquire_owned().await.ok();
                let url = environment.health_check_url.clone().unwrap_or_default();
                log.info(format!("verifying: polling {url}")).await;
                let deadline = Instant::now() + Duration::from_secs(environment.timeout);
                let per_request = Duration::from_secs(run.coordinator.settings.health_check_timeout_secs);
                let report = tokio::select! {
                    report = health::wait_healthy(&run.coordinator.http, &url, per_request, deadline) => report,
                    _ = run.cancel.cancelled() => return,
                };
                let key = target_key(&deployment_id, &environment.environment_id);
                let mut target = match run.coordinator.records.get::<TargetRecord>(collection::TARGETS, &key).await {
                    Ok(Some(target)) => target,
                    _ => return,
                };
                if report.healthy {
                    log.info(format!("healthy: {url} answered {}", report.http_status.unwrap_or_default())).await;
                } else {
                    let why = report.error.clone().unwrap_or_else(|| format!("{url} is unhealthy"));
                    let message = format!("verifying failed: {why} (polled until the timeout of {} s)", environment.timeout);
                    log.line(LogStream::Error, message.clone()).await;
                    target.status = TargetStatus::Failed;
                    target.error = Some(message.clone());
                    let mut record = run.record.lock().await;
                    record.errors.push(format!("{}: {message}", environment.environment_id));
                }
                target.health = Some(report.clone());
                if let Err(error) = run.coordinator.record_health(&environment.environment_id, &report).await {
                    tracing::warn!("{error}");
                }
                let done = verified.fetch_add(1, Ordering::SeqCst) + 1;
                let progress = PROGRESS_TRIGGERED + ((PROGRESS_VERIFIED - PROGRESS_TRIGGERED) as usize * done / total) as u8;
                {
                    let mut record = run.record.lock().await;
                    record.progress = record.progress.max(progress);
                }
                run.save_target(&target).await;
            });
        }
        while checks.join_next().await.is_some() {}
    }
}

/// The run's log, with a way to wait until every line sent so far is stored.
struct RunLog {
    sink: LogSink,
    flush: mpsc::Sender<oneshot::Sender<u64>>,
}

impl RunLog {
    /// Waits until every line sent before this call is in the store; returns the line count.
    async fn flush(&self) -> u64 {
        let _ = &self.sink;
        let (done, wait) = oneshot::channel();
        if self.flush.send(done).await.is_err() {
            return 0;
        }
        wait.await.unwrap_or(0)
    }
}

/// Writes a run's log lines to the store in batches, and publishes each batch once stored.
struct LogWriter {
    records: Records,
    deployment_id: String,
    next_chunk: u64,
    stored_lines: u64,
    total_lines: u64,
    limit: u64,
    tails: Arc<Mutex<HashMap<String, VecDeque<LogLine>>>>,
    /// The request that started the run, stamped on every line.
    request_id: Option<String>,
}

impl LogWriter {
    async fn run(
        mut self,
        mut lines: mpsc::Receiver<LogLine>,
        mut flushes: mpsc::Receiver<oneshot::Sender<u64>>,
    ) {
        let mut batch: Vec<LogLine> = Vec::new();
        let mut deadline: Option<tokio::time::Instant> = None;
        let (mut lines_open, mut flushes_open) = (true, true);
        while lines_open || flushes_open {
            let timer = async {
                match deadline {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                line = lines.recv(), if lines_open => match line {
                    Some(line) => {
                        self.take(&mut batch, line);
                        deadline.get_or_insert_with(|| tokio::time::Instant::now() + LOG_BATCH_DELAY);
                        if batch.len() >= LOG_BATCH_LINES {
                            self.write(&mut batch).await;
                            deadline = None;
                        }
                    }
                    None => lines_open = false,
                },
                flush = flushes.recv(), if flushes_open => match flush {
                    Some(done) => {
                        // Lines sent before the flush request are already queued: take them.
                        while let Ok(line) = lines.try_recv() {
                            self.take(&mut batch, line);
                        }
                        self.write(&mut batch).await;
                        deadline = None;
                        let _ = done.send(self.total_lines);
                    }
                    None => flushes_open = false,
                },
                _ = timer => {
                    self.write(&mut batch).await;
                    deadline = None;
                }
            }
        }
        self.write(&mut batch).await;
    }

    fn take(&mut self, batch: &mut Vec<LogLine>, mut line: LogLine) {
        self.total_lines += 1;
        line.request_id.clone_from(&self.request_id);
        if let Some(environment) = &line.environment {
            let mut tails = self
                .tails
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let tail = tails.entry(environment.clone()).or_default();
            if tail.len() == OUTPUT_TAIL_LINES {
                tail.pop_front();
            }
            tail.push_back(line.clone());
        }
        if self.stored_lines < self.limit {
            self.stored_lines += 1;
            batch.push(line);
            if self.stored_lines == self.limit {
                batch.push(LogLine {
                    ts: timestamp(SystemTime::now()),
                    environment: None,
                    stream: LogStream::Error,
                    line: format!(
                        "log limit of {} lines reached; later lines are counted, not kept",
                        self.limit
                    ),
                    request_id: self.request_id.clone(),
                });
            }
        }
    }

    async fn write(&mut self, batch: &mut Vec<LogLine>) {
        if batch.is_empty() {
            return;
        }
        let lines = std::mem::take(batch);
        let key = log_key(&self.deployment_id, self.next_chunk);
        self.next_chunk += 1;
        if let Err(error) = self.records.put(collection::LOGS, &key, &lines).await {
            tracing::error!(deployment = %self.deployment_id, "cannot store log lines: {error}");
            return;
        }
        // Log lines are for developers and admins only.
        self.records.host().publish_by_role(
            event::LOG,
            &json!({ "deployment_id": self.deployment_id, "lines": lines }),
            None,
        );
    }
}

/// Cancels a run when a cancel request for it appears in the store (made through another copy).
async fn watch_cancel_requests(
    records: Records,
    deployment_id: String,
    cancel: CancellationToken,
    reason: Arc<Mutex<Option<StopReason>>>,
) {
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(CANCEL_POLL) => {}
        }
        if let Ok(Some(_)) = records
            .get::<serde_json::Value>(collection::CANCEL, &deployment_id)
            .await
        {
            reason
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .get_or_insert(StopReason::Cancelled);
            cancel.cancel();
            return;
        }
    }
}
