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
    collections::{HashMap, HashSet},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::SystemTime,
};

use futures_util::FutureExt;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::model::{DeploymentId, EnvironmentId};
use crate::{
    deployment::{
        BatchRecord, BatchStatus, DeploymentRecord, GateStatus, HealthReport, Phase, TargetRecord,
        TargetStatus,
    },
    ec2,
    egress::Egress,
    environments::{Environment, FieldError},
    model::{Ec2Phase, Timestamp},
    persist::catalog::Catalog,
    persist::deployments::LogPosition,
    persist::{
        self,
        deployments::DeploymentStore,
        records::{Records, StoreError},
        Lease, NodeTag,
    },
    rollout::Rollout,
    run::{
        reach::Reach,
        writer::{RunWriter, WriterSetup},
        Run, RunOwner, Start, Stop, StopHandle, StopReason,
    },
    settings::Settings,
    wire::{self, DeletedEvent, Event},
};

/// What a caller asks to deploy.
#[derive(Debug, Clone, Default)]
pub struct StartRequest {
    /// The id to give the deployment (an idempotent caller picks it first); a new one if `None`.
    pub deployment_id: Option<DeploymentId>,
    /// Environment ids as the caller gave them (an id that is not one is an unknown
    /// environment).
    pub environments: Option<Vec<String>>,
    /// Instead of `environments`: every enabled environment whose tags hold all of these.
    pub selector: Option<std::collections::BTreeMap<String, String>>,
    pub version: Option<String>,
    pub ec2: Option<bool>,
    pub triggered_by: String,
    pub request_id: Option<String>,
    pub retry_of: Option<DeploymentId>,
    /// Strategy, failure threshold and rollback.
    pub rollout: Rollout,
    /// An admin's reason to deploy through closed windows.
    pub override_reason: Option<String>,
}

#[cfg(test)]
mod cluster_tests;
mod decisions;
mod health_checks;
mod queue;
#[cfg(test)]
mod queue_tests;
mod recovery;
#[cfg(test)]
mod tests;
mod windows;
pub use decisions::DecisionError;
pub use queue::StartError;

/// Where a run goes on: its log's end and the number of the last event published.
struct RunFrom {
    log: LogPosition,
    events: u64,
    /// The run's lease, from the transaction that gave it the run.
    lease: Lease,
}

/// The outside's handle on a live run: stop it, wait for its end.
struct RunHandle {
    stop: StopHandle,
    /// Dropped when the run has ended (its end stored and published): wakes who waits for it.
    _ended: tokio::sync::watch::Sender<()>,
    ended: tokio::sync::watch::Receiver<()>,
}

/// What a cancel did.
pub enum Cancelled {
    /// This copy runs the deployment and told it to stop; wait for its end with [`RunEnded`].
    Local(RunEnded),
    /// Another copy runs it: the request was left in the store for it.
    Requested,
    /// It was queued: it ended cancelled at once.
    Ended,
}

/// The end of a run of this copy, to wait for.
pub struct RunEnded(tokio::sync::watch::Receiver<()>);

impl RunEnded {
    /// Resolves once the run has stored and published its end (or parked).
    pub async fn wait(mut self) {
        // Only the sender's drop, at the run's end, ends this.
        while self.0.changed().await.is_ok() {}
    }
}

pub struct Coordinator {
    records: Records,
    catalog: Catalog,
    egress: Egress,
    /// How runs reach their environments (the egress, or a test's script).
    reach: Reach,
    settings: Arc<Settings>,
    boot_id: String,
    /// The node this copy runs on, where the host has nodes.
    node: Option<NodeTag>,
    /// The node drains (as last read from its record): it starts nothing new.
    draining: std::sync::atomic::AtomicBool,
    runs: Mutex<HashMap<DeploymentId, RunHandle>>,
    tasks: TaskTracker,
    /// Stops the loops of this copy (health checks, gate deadlines, retention) at shutdown.
    background: CancellationToken,
    /// Bumped on every local change, so cached views know they are stale.
    generation: AtomicUsize,
    /// Woken when a run of this copy ends: its room goes to the queue at once.
    room_freed: tokio::sync::Notify,
    /// Woken when a schedule is created or deleted through this copy: the scheduler looks again.
    schedules_changed: tokio::sync::Notify,
    imds_identity: tokio::sync::OnceCell<Option<(String, Option<String>)>>,
}

impl Coordinator {
    pub fn new(
        records: Records,
        egress: Egress,
        settings: Arc<Settings>,
        boot_id: String,
        node: Option<NodeTag>,
    ) -> Coordinator {
        Coordinator::reaching(
            records,
            egress.clone(),
            Reach::Network(egress),
            settings,
            boot_id,
            node,
        )
    }

    /// A coordinator whose runs reach their environments through `reach`.
    fn reaching(
        records: Records,
        egress: Egress,
        reach: Reach,
        settings: Arc<Settings>,
        boot_id: String,
        node: Option<NodeTag>,
    ) -> Coordinator {
        Coordinator {
            catalog: Catalog::new(records.clone()),
            records,
            egress,
            reach,
            settings,
            boot_id,
            node,
            draining: std::sync::atomic::AtomicBool::new(false),
            runs: Mutex::new(HashMap::new()),
            tasks: TaskTracker::new(),
            background: CancellationToken::new(),
            generation: AtomicUsize::new(0),
            room_freed: tokio::sync::Notify::new(),
            schedules_changed: tokio::sync::Notify::new(),
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

    /// The way out to targets (triggers, health checks), confined to `allowed_target_networks`.
    pub fn egress(&self) -> &Egress {
        &self.egress
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

    pub(crate) fn changed(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    fn runs(&self) -> std::sync::MutexGuard<'_, HashMap<DeploymentId, RunHandle>> {
        self.runs
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Starts a deployment and returns its first record; the run goes on in the background.
    pub async fn start(
        self: &Arc<Self>,
        request: StartRequest,
    ) -> Result<DeploymentRecord, StartError> {
        self.start_guarded(request, Vec::new()).await
    }

    /// [`Self::start`], creating the deployment only together with `guard` (operations that
    /// must all apply, such as a schedule's run taken once): [`StartError::Superseded`] when
    /// one does not.
    pub async fn start_guarded(
        self: &Arc<Self>,
        request: StartRequest,
        guard: Vec<plugin_guest::StoreOp>,
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
            .or_else(|| self.settings.deployed_version())
            .unwrap_or_else(|| "unversioned".into());
        if version.trim().is_empty() || version.len() > 128 || version.chars().any(char::is_control)
        {
            return Err(StartError::BadField(FieldError::new(
                "version",
                "must be 1 to 128 printable characters",
            )));
        }
        let targets = match &request.selector {
            None => self.choose_targets(request.environments.as_deref()).await?,
            Some(_) if request.environments.is_some() => {
                return Err(StartError::BadField(FieldError::new(
                    "selector",
                    "give environments or selector, not both",
                )))
            }
            Some(selector) => self.select_by_tags(selector).await?,
        };
        let window_override = self.check_windows(&request, &targets).await?;
        let mut targets = targets;
        if request.rollout.is_ordered() {
            // Rollout order: `order`, then id (a stable sort keeps ids apart only by order).
            targets.sort_by(|a, b| (a.order, &a.environment_id).cmp(&(b.order, &b.environment_id)));
        }
        let batches = request
            .rollout
            .batches(targets.len())
            .into_iter()
            .map(|plan| BatchRecord {
                kind: plan.kind,
                start: plan.start,
                len: plan.len,
                status: BatchStatus::Pending,
                started_at: None,
                finished_at: None,
            })
            .collect();
        let now = SystemTime::now();
        let created_ms = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as u64;
        let mut record = DeploymentRecord {
            deployment_id: request
                .deployment_id
                .clone()
                .unwrap_or_else(|| DeploymentId::generate(created_ms)),
            status: Phase::Pending,
            progress: 0,
            version,
            triggered_by: request.triggered_by.clone(),
            request_id: request.request_id.clone(),
            environments: targets.iter().map(|t| t.environment_id.clone()).collect(),
            ec2: match &ec2 {
                Some(_) => Ec2Phase::Pending,
                None => Ec2Phase::Skipped {
                    reason: "ec2 is off".into(),
                },
            },
            errors: Vec::new(),
            created_at: Timestamp::from(now),
            finished_at: None,
            duration_ms: None,
            retry_of: request.retry_of.clone(),
            log_lines: 0,
            boot_id: self.boot_id.clone(),
            created_ms,
            rollout: request.rollout,
            batches,
            gate: None,
            platform_instance_id: None,
            platform_ip: None,
            window_override,
        };
        let id = record.deployment_id.clone();
        let Some(lease) = self.claim_and_record(&mut record, &targets, guard).await? else {
            return Ok(record);
        };
        self.changed();
        tracing::info!(
            deployment = %id,
            request_id = record.request_id.as_deref().unwrap_or(""),
            triggered_by = %record.triggered_by,
            environments = record.environments.len(),
            "deployment started"
        );
        self.publish_phase(1, &record, None);
        let pending: HashMap<EnvironmentId, TargetRecord> = targets
            .iter()
            .map(|target| {
                (
                    target.environment_id.clone(),
                    TargetRecord::new(
                        &target.environment_id,
                        target.connection_method().as_str(),
                        TargetStatus::Pending,
                    ),
                )
            })
            .collect();
        self.spawn_run(
            record.clone(),
            targets,
            pending,
            ec2,
            RunFrom {
                log: LogPosition::default(),
                events: 1,
                lease,
            },
            Start::Fresh,
        );
        Ok(record)
    }

    /// Starts the task that runs `record` (its environments `targets`, their results so far
    /// `results`, its log and events continuing `from`) from `start`.
    fn spawn_run(
        self: &Arc<Self>,
        record: DeploymentRecord,
        targets: Vec<Environment>,
        results: HashMap<EnvironmentId, TargetRecord>,
        ec2: Option<ec2::Ec2Settings>,
        from: RunFrom,
        start: Start,
    ) {
        let id = record.deployment_id.clone();
        let RunFrom { log, events, lease } = from;
        let stop: Arc<Stop> = Arc::default();
        let (writer, _writer_task) = RunWriter::start(WriterSetup {
            records: self.records.clone(),
            lease: lease.clone(),
            stop: Arc::clone(&stop),
            events,
            deployment_id: id.clone(),
            log,
            max_log_lines: self.settings.max_log_lines as u64,
            request_id: record.request_id.clone().filter(|id| !id.is_empty()),
            status: record.status,
            lines_before: record.log_lines,
        });
        let run = Arc::new(Run::new(
            Arc::clone(self),
            record,
            results,
            ec2,
            writer,
            stop,
            lease,
        ));
        self.runs().insert(id, {
            let (ended_sender, ended) = tokio::sync::watch::channel(());
            RunHandle {
                stop: Arc::clone(&run.stop),
                _ended: ended_sender,
                ended,
            }
        });
        self.tasks.spawn(async move {
            let outcome = std::panic::AssertUnwindSafe(Arc::clone(&run).execute(targets, start))
                .catch_unwind()
                .await;
            if let Err(panic) = outcome {
                run.abandon(&plugin_guest::panic_message(&*panic)).await;
            }
        });
    }

    /// Every enabled environment whose tags hold each `selector` pair, in id order.
    async fn select_by_tags(
        &self,
        selector: &std::collections::BTreeMap<String, String>,
    ) -> Result<Vec<Environment>, StartError> {
        if selector.is_empty() {
            return Err(StartError::BadField(FieldError::new(
                "selector",
                "needs at least one tag, e.g. {\"tier\": \"prod\"}",
            )));
        }
        let chosen = self
            .enabled_environments(|environment| {
                selector
                    .iter()
                    .all(|(key, value)| environment.tags.get(key) == Some(value))
            })
            .await?;
        if chosen.is_empty() {
            let wanted: Vec<String> = selector
                .iter()
                .map(|(key, value)| format!("{key}={value}"))
                .collect();
            return Err(StartError::Invalid {
                code: "no_environments",
                message: format!(
                    "selector: no enabled environment has the tags {}; GET /environments shows each one's tags",
                    wanted.join(", ")
                ),
            });
        }
        Ok(chosen)
    }

    /// The enabled environments that `wanted` accepts, in id order (one pass over the catalog).
    async fn enabled_environments(
        &self,
        wanted: impl Fn(&Environment) -> bool,
    ) -> Result<Vec<Environment>, StartError> {
        let mut chosen: Vec<Environment> = self
            .catalog
            .list()
            .await?
            .into_iter()
            .map(|stored| stored.environment)
            .filter(|environment| environment.enabled && wanted(environment))
            .collect();
        chosen.sort_by(|a, b| a.environment_id.cmp(&b.environment_id));
        Ok(chosen)
    }

    /// The environments a deployment targets: the ones named (each checked), or every enabled
    /// one. Reads by key when ids are given, so a trigger costs the same whatever the catalog's
    /// size.
    async fn choose_targets(&self, ids: Option<&[String]>) -> Result<Vec<Environment>, StartError> {
        let Some(ids) = ids else {
            let all = self.enabled_environments(|_| true).await?;
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
        // A few ids are read by key; many are picked from one pass over the catalog.
        let listed: Option<HashMap<EnvironmentId, Environment>> = if ids.len() > 64 {
            Some(
                self.catalog
                    .list()
                    .await?
                    .into_iter()
                    .map(|stored| {
                        (
                            stored.environment.environment_id.clone(),
                            stored.environment,
                        )
                    })
                    .collect(),
            )
        } else {
            None
        };
        let mut chosen = Vec::with_capacity(ids.len());
        for id in ids {
            let found = match &listed {
                Some(listed) => listed.get(id.as_str()).cloned(),
                None => self.catalog.get(id).await?.map(|stored| stored.environment),
            };
            let Some(environment) = found else {
                return Err(StartError::Invalid {
                    code: "unknown_environment",
                    message: format!(
                        "environments: no environment {id:?}; GET /environments lists them"
                    ),
                });
            };
            if !environment.enabled {
                return Err(StartError::Invalid {
                    code: "environment_disabled",
                    message: format!("environments: {id:?} is disabled (enabled = false)"),
                });
            }
            chosen.push(environment);
        }
        Ok(chosen)
    }

    /// The lease under which this copy writes what is not a run's (a start, a decision): the
    /// claims it takes are this process's.
    pub(crate) fn lease(&self) -> Lease {
        Lease::of(&self.boot_id, self.node.clone())
    }

    /// Cancelled when this copy stops: its loops end.
    pub fn stopping(&self) -> CancellationToken {
        self.background.clone()
    }

    /// A schedule was created or deleted through this copy: its scheduler looks again now.
    pub fn schedules_changed(&self) {
        self.schedules_changed.notify_one();
    }

    /// Resolves when [`Self::schedules_changed`] was called (since the last time it resolved).
    pub async fn schedules_changed_wait(&self) {
        self.schedules_changed.notified().await;
    }

    /// Whether this copy's node drains: it starts nothing new (nor fires schedules).
    pub fn is_draining(&self) -> bool {
        self.draining.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The node this copy runs on, where the host has nodes.
    pub(crate) fn node(&self) -> Option<&NodeTag> {
        self.node.as_ref()
    }

    /// The repository of deployments' records, results and logs.
    pub(crate) fn deployments(&self) -> DeploymentStore {
        DeploymentStore::new(self.records.clone())
    }

    /// Publishes a phase change as the deployment's event `seq` (once both are stored).
    pub(crate) fn publish_phase(
        &self,
        seq: u64,
        record: &DeploymentRecord,
        previous: Option<Phase>,
    ) {
        crate::run::writer::publish_phase(self.records.host(), seq, record, previous);
    }

    /// Tells subscribers (and the host's metrics) that an environment is gone.
    pub fn environment_deleted(&self, id: &EnvironmentId) {
        self.changed();
        let event = Event::Deleted(DeletedEvent {
            environment_id: id.clone(),
        });
        wire::publish(self.records.host(), None, &event, Some(&event));
    }

    /// Asks a run to stop: at once when this copy runs it, else through the store for the copy
    /// that does.
    pub async fn cancel(
        &self,
        deployment_id: &DeploymentId,
        by: &str,
    ) -> Result<Cancelled, StoreError> {
        let local = self
            .runs()
            .get(deployment_id)
            .map(|run| (Arc::clone(&run.stop), run.ended.clone()));
        match local {
            Some((stop, ended)) => {
                tracing::info!(deployment = %deployment_id, by, "cancel requested");
                stop.request(StopReason::Cancelled);
                Ok(Cancelled::Local(RunEnded(ended)))
            }
            None if self.cancel_queued(deployment_id, by).await? => Ok(Cancelled::Ended),
            None => {
                persist::runs::request_cancel(&self.records, deployment_id, by).await?;
                Ok(Cancelled::Requested)
            }
        }
    }

    /// Starts this copy's loops: periodic health checks, the gates' deadlines, the look at the
    /// nodes and the queue, retention. They
    /// belong to the plugin's life (started once it is built, stopped by [`Self::shutdown`]),
    /// not to its HTTP layer.
    pub fn start_background(self: &Arc<Self>) {
        let stop = self.background.clone();
        tokio::spawn(Arc::clone(self).health_loop(stop.clone()));
        tokio::spawn(Arc::clone(self).gate_loop(stop.clone()));
        tokio::spawn(Arc::clone(self).watch_loop(stop.clone()));
        tokio::spawn(crate::persist::retention::run(
            self.records.clone(),
            self.settings_handle(),
            self.node.as_ref().map(|node| node.node_id.clone()),
            stop,
        ));
    }

    /// Stops taking work and lets runs end: at a host shutdown they are stopped and recorded
    /// as interrupted; at a hot swap they run to completion (the new copy serves meanwhile).
    pub async fn shutdown(&self, host_stopping: bool) {
        self.background.cancel();
        self.tasks.close();
        if host_stopping {
            let stops: Vec<StopHandle> = self
                .runs()
                .values()
                .map(|run| Arc::clone(&run.stop))
                .collect();
            for stop in stops {
                stop.request(StopReason::HostStopping);
            }
        } else if !self.runs().is_empty() {
            tracing::info!(
                runs = self.runs().len(),
                "hot swap: this copy finishes its running deployments before it stops"
            );
        }
        self.tasks.wait().await;
    }

    /// The run ended: it no longer counts as running in this copy. Only the run that `stop`
    /// belongs to is forgotten: a run of the same deployment started meanwhile (an approval
    /// right after the gate parked) stays.
    pub(crate) fn forget_run(&self, deployment_id: &str, stop: &StopHandle) {
        let mut runs = self.runs();
        if runs
            .get(deployment_id)
            .is_some_and(|run| Arc::ptr_eq(&run.stop, stop))
        {
            runs.remove(deployment_id);
        }
        drop(runs);
        self.changed();
        self.room_freed.notify_one();
    }

    /// The end of this copy's run of `deployment_id`, when this copy runs it.
    pub(crate) fn run_ended(&self, deployment_id: &str) -> Option<RunEnded> {
        self.runs()
            .get(deployment_id)
            .map(|run| RunEnded(run.ended.clone()))
    }

    /// Ids of the runs this copy is executing.
    pub fn local_runs(&self) -> Vec<DeploymentId> {
        self.runs().keys().cloned().collect()
    }
}

impl RunOwner for Coordinator {
    fn records(&self) -> &Records {
        &self.records
    }

    fn settings(&self) -> &Settings {
        &self.settings
    }

    fn reach(&self) -> &Reach {
        &self.reach
    }

    fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    async fn platform_identity(&self, ask_imds: bool) -> Option<(String, Option<String>)> {
        Coordinator::platform_identity(self, ask_imds).await
    }

    async fn record_health(
        &self,
        id: &EnvironmentId,
        report: &HealthReport,
    ) -> Result<(), StoreError> {
        Coordinator::record_health(self, id, report).await
    }

    fn forget_run(&self, deployment_id: &str, stop: &StopHandle) {
        Coordinator::forget_run(self, deployment_id, stop)
    }

    async fn cancel_parked(&self, deployment_id: &DeploymentId) {
        let message = "cancelled while it reached its gate";
        match self
            .close_gate(deployment_id, GateStatus::Rejected, "cancel", message)
            .await
        {
            Ok(()) | Err(DecisionError::Conflict(_)) | Err(DecisionError::Wrong { .. }) => {}
            Err(error) => tracing::error!(deployment = %deployment_id, "{error}"),
        }
    }

    fn changed(&self) {
        Coordinator::changed(self)
    }
}
