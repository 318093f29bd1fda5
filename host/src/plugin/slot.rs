//! A `PluginSlot` is one configured plugin: the copy serving now (swapped atomically, read
//! without locks on the request path) and the status operators see.

use std::{
    collections::VecDeque,
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex, Weak,
    },
    time::{Duration, Instant, SystemTime},
};

use arc_swap::{ArcSwap, ArcSwapOption};
use record_store::RecordStore;
use serde::Serialize;

use super::{
    bridge,
    call::Death,
    copy::PluginCopy,
    loader::{self, LoadError, LoadFailure, LoadRequest, LoadTarget, Retirements},
    process::{self, ChildServices, ChildSpec, LiveChildren},
};
use crate::{
    config::{Isolation, PluginConfig},
    services::events::EventBus,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum PluginState {
    Active,
    Disabled,
    Missing,
    Incompatible,
    Failed,
    /// Process mode: the child died and is about to be restarted.
    Crashed,
}

impl PluginState {
    pub fn as_str(self) -> &'static str {
        match self {
            PluginState::Active => "active",
            PluginState::Disabled => "disabled",
            PluginState::Missing => "missing",
            PluginState::Incompatible => "incompatible",
            PluginState::Failed => "failed",
            PluginState::Crashed => "crashed",
        }
    }
}

impl From<LoadFailure> for PluginState {
    fn from(failure: LoadFailure) -> PluginState {
        match failure {
            LoadFailure::Missing => PluginState::Missing,
            LoadFailure::Incompatible => PluginState::Incompatible,
            LoadFailure::Failed => PluginState::Failed,
        }
    }
}

/// What `/api/plugins` shows for one plugin.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct PluginStatus {
    pub name: String,
    pub state: PluginState,
    pub enabled: bool,
    pub mount: String,
    /// The path the host loads from (the configured one, resolved when it is a directory).
    pub path: String,
    pub version: Option<String>,
    pub abi: Option<String>,
    pub description: Option<String>,
    pub sha256: Option<String>,
    pub loaded_at: Option<String>,
    pub swaps: u64,
    pub last_error: Option<String>,
    pub watch: bool,
    /// Where the plugin's code runs.
    pub isolation: Isolation,
    /// The child's process id (process mode).
    pub pid: Option<u32>,
    /// Crashes of its process since an operator last loaded it (startup, reload, file change).
    pub crashes: u64,
    /// How the last crash ended the process, e.g. "killed by signal SIGSEGV".
    pub last_crash: Option<String>,
    pub last_crash_at: Option<String>,
}

/// Shared context every load needs.
#[derive(Clone)]
pub struct LoadContext {
    pub copies_dir: PathBuf,
    pub store: Arc<dyn RecordStore>,
    pub bus: Arc<EventBus>,
    pub retirements: Retirements,
    /// The host's log filter and format, for the lines a plugin's process writes itself.
    pub log_level: String,
    pub log_json: bool,
}

pub struct PluginSlot {
    pub name: String,
    pub config: PluginConfig,
    current: ArcSwapOption<PluginCopy>,
    status: ArcSwap<PluginStatus>,
    reload_lock: tokio::sync::Mutex<()>,
    sequence: AtomicU64,
    context: LoadContext,
    /// When the recent crashes happened, within `crash_window_secs`.
    crash_times: Mutex<VecDeque<Instant>>,
    /// Process mode: children of this slot not reaped yet (serving or finishing); their boot
    /// ids are the ones the plugin treats as alive (see `process`).
    live_children: Arc<LiveChildren>,
    /// Set when the host stops: nothing is loaded or restarted after that.
    stopping: AtomicBool,
}

/// The first restart after a crash waits this long; each further crash in the window doubles
/// it, up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(8);

fn backoff(recent_crashes: usize) -> Duration {
    let doublings = recent_crashes.saturating_sub(1).min(8) as u32;
    FIRST_BACKOFF
        .saturating_mul(1 << doublings)
        .min(MAX_BACKOFF)
}

impl PluginSlot {
    pub fn new(
        name: &str,
        config: PluginConfig,
        context: LoadContext,
        enabled: bool,
    ) -> PluginSlot {
        let status = PluginStatus {
            name: name.to_owned(),
            state: if enabled {
                PluginState::Missing
            } else {
                PluginState::Disabled
            },
            enabled,
            mount: config.mount.clone(),
            path: config.path.display().to_string(),
            version: None,
            abi: None,
            description: None,
            sha256: None,
            loaded_at: None,
            swaps: 0,
            last_error: (!enabled).then(|| "disabled in the configuration".to_owned()),
            watch: config.watch && enabled,
            isolation: config.isolation,
            pid: None,
            crashes: 0,
            last_crash: None,
            last_crash_at: None,
        };
        PluginSlot {
            name: name.to_owned(),
            config,
            current: ArcSwapOption::empty(),
            status: ArcSwap::from_pointee(status),
            reload_lock: tokio::sync::Mutex::new(()),
            sequence: AtomicU64::new(0),
            context,
            crash_times: Mutex::new(VecDeque::new()),
            live_children: Arc::new(LiveChildren::default()),
            stopping: AtomicBool::new(false),
        }
    }

    /// The copy serving now, if any. Lock-free.
    pub fn active(&self) -> Option<Arc<PluginCopy>> {
        self.current.load_full()
    }

    pub fn status(&self) -> Arc<PluginStatus> {
        self.status.load_full()
    }

    pub fn is_enabled(&self) -> bool {
        self.status.load().enabled
    }

    /// Loads the configured file and switches new requests to it. On failure the copy serving
    /// before (if any) keeps serving. Reloads are serialized. An operator's load (startup,
    /// reload, file change) also forgets earlier crashes.
    pub async fn reload(self: &Arc<Self>, trigger: &str) -> Result<Arc<PluginStatus>, LoadError> {
        let _serialized = self.reload_lock.lock().await;
        self.lock_crashes().clear();
        self.load(trigger, true).await
    }

    /// Loads a copy the configured way; the caller holds `reload_lock`.
    async fn load(
        self: &Arc<Self>,
        trigger: &str,
        by_operator: bool,
    ) -> Result<Arc<PluginStatus>, LoadError> {
        let sequence = self.sequence.fetch_add(1, Ordering::Relaxed);
        let outcome = match self.config.isolation {
            Isolation::InProcess => self.load_in_process(sequence).await,
            Isolation::Process => self.start_child(sequence).await,
        };
        let outcome = outcome.and_then(|copy| {
            if self.stopping.load(Ordering::SeqCst) {
                // Dropping the copy retires it (a child is told to stop).
                return Err(LoadError {
                    kind: LoadFailure::Failed,
                    message: "the host is shutting down".into(),
                });
            }
            Ok(copy)
        });
        let previous = self.status.load_full();
        match outcome {
            Ok(copy) => {
                let info = copy.info().clone();
                let pid = copy.pid();
                let replaced = self.current.swap(Some(Arc::new(copy)));
                let swaps = previous.swaps + u64::from(replaced.is_some());
                // The old copy retires when its last in-flight request lets go of it.
                drop(replaced);
                let status = PluginStatus {
                    state: PluginState::Active,
                    path: info.source.display().to_string(),
                    version: Some(info.version.clone()),
                    abi: Some(info.abi.clone()),
                    description: Some(info.description.clone()),
                    sha256: Some(info.sha256.clone()),
                    loaded_at: Some(rfc3339(info.loaded_at)),
                    swaps,
                    last_error: None,
                    pid,
                    crashes: if by_operator { 0 } else { previous.crashes },
                    ..(*previous).clone()
                };
                self.status.store(Arc::new(status));
                tracing::info!(
                    plugin = %self.name,
                    version = %info.version,
                    sha256 = %info.sha256,
                    isolation = self.config.isolation.as_str(),
                    pid,
                    trigger,
                    swaps,
                    "plugin active"
                );
                Ok(self.status())
            }
            Err(error) => {
                let serving = self.current.load().is_some();
                let status = PluginStatus {
                    state: if serving {
                        PluginState::Active
                    } else {
                        PluginState::from(error.kind)
                    },
                    last_error: Some(error.message.clone()),
                    ..(*previous).clone()
                };
                self.status.store(Arc::new(status));
                if serving {
                    tracing::warn!(plugin = %self.name, trigger, error = %error.message, "reload failed; the previous copy keeps serving");
                } else {
                    tracing::error!(plugin = %self.name, trigger, state = PluginState::from(error.kind).as_str(), error = %error.message, "plugin not loaded");
                }
                Err(error)
            }
        }
    }

    /// What a load of the configured library takes, in either mode.
    fn target(&self, sequence: u64) -> LoadTarget {
        LoadTarget {
            name: self.name.clone(),
            configured: self.config.path.clone(),
            pin: self.config.sha256.clone(),
            settings_json: self.config.settings.to_string(),
            copies_dir: self.context.copies_dir.clone(),
            sequence,
        }
    }

    async fn load_in_process(&self, sequence: u64) -> Result<PluginCopy, LoadError> {
        let request = LoadRequest {
            target: self.target(sequence),
            services: bridge::host_services(
                &self.name,
                Arc::clone(&self.context.store),
                Arc::clone(&self.context.bus),
            ),
        };
        let retirements = self.context.retirements.clone();
        tokio::task::spawn_blocking(move || loader::load(request, retirements))
            .await
            .unwrap_or_else(|_| {
                Err(LoadError {
                    kind: LoadFailure::Failed,
                    message: "the plugin load task panicked".into(),
                })
            })
            .map(PluginCopy::InProcess)
    }

    async fn start_child(self: &Arc<Self>, sequence: u64) -> Result<PluginCopy, LoadError> {
        let slot = Arc::downgrade(self);
        let runtime = tokio::runtime::Handle::current();
        let spec = ChildSpec {
            target: self.target(sequence),
            memory_limit_mb: self.config.memory_limit_mb,
            cpu_shares: self.config.cpu_shares,
            start_timeout: Duration::from_secs(
                self.config
                    .start_timeout_secs
                    .unwrap_or(crate::config::DEFAULT_START_TIMEOUT_SECS),
            ),
            log_level: self.context.log_level.clone(),
            log_json: self.context.log_json,
            services: ChildServices {
                plugin: self.name.clone(),
                store: Arc::clone(&self.context.store),
                bus: Arc::clone(&self.context.bus),
                sequence,
                live: Arc::clone(&self.live_children),
            },
            retirements: self.context.retirements.clone(),
            on_crash: Box::new(move |sequence, death| {
                runtime.spawn(PluginSlot::crashed(slot, sequence, death));
            }),
        };
        process::spawn(spec).await.map(PluginCopy::Process)
    }

    fn lock_crashes(&self) -> std::sync::MutexGuard<'_, VecDeque<Instant>> {
        self.crash_times
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The serving child died: stop routing to it, then restart it after a backoff, unless it
    /// crashed too often within the window.
    ///
    /// Boxed with its `Send` bound spelled out: it restarts through `load`, which starts
    /// children whose crash handlers spawn this again, and the compiler cannot infer `Send`
    /// around that cycle.
    fn crashed(
        slot: Weak<PluginSlot>,
        sequence: u64,
        death: Death,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
        Box::pin(async move { PluginSlot::after_crash(slot, sequence, death).await })
    }

    async fn after_crash(slot: Weak<PluginSlot>, sequence: u64, death: Death) {
        let Some(slot) = slot.upgrade() else { return };
        let serving_dead = {
            let _serialized = slot.reload_lock.lock().await;
            // A crash of the copy serving now takes it out of service; one retiring after a
            // swap (or replaced by a reload since) does not change what serves.
            let serving_dead = slot
                .current
                .load()
                .as_ref()
                .is_some_and(|copy| copy.child_sequence() == Some(sequence));
            if serving_dead {
                slot.current.store(None);
            }
            serving_dead
        };
        if !serving_dead {
            PluginSlot::after_older_crash(&slot, &death).await;
            return;
        }
        let mut death = death;
        loop {
            let Some(delay) = slot.count_crash(&death) else {
                return;
            };
            tracing::warn!(plugin = %slot.name, cause = %death.cause, delay_ms = delay.as_millis() as u64, "restarting the plugin's process");
            tokio::time::sleep(delay).await;
            let _serialized = slot.reload_lock.lock().await;
            // An operator reloaded it meanwhile, or the host is stopping.
            if slot.status().state != PluginState::Crashed || slot.stopping.load(Ordering::SeqCst) {
                return;
            }
            match slot.load("restart after a crash", false).await {
                Ok(_) => return,
                // A restart that fails is one more crash: it backs off and counts.
                Err(error) => death = Death::lost(format!("its restart failed: {}", error.message)),
            }
        }
    }

    /// An older child, still finishing its runs after a swap, died. Its runs are nobody's now,
    /// and only a plugin start records such runs interrupted: after the backoff a fresh child
    /// takes over serving (the serving one retires, finishing its own runs, as after a swap)
    /// and does that, unless a child started meanwhile (a reload, a restart) did it already.
    /// The crash counts in the window like any other, so a plugin that crashes whenever it
    /// stops cannot swap for ever; the serving child keeps serving either way.
    async fn after_older_crash(slot: &Arc<PluginSlot>, death: &Death) {
        if slot.stopping.load(Ordering::SeqCst) {
            // The host stops its children itself; one that ends badly then is no news.
            tracing::debug!(plugin = %slot.name, cause = %death.cause, "an older process of the plugin ended during shutdown");
            return;
        }
        let (recent, seen) = {
            let _serialized = slot.reload_lock.lock().await;
            let (recent, counted) = slot.count_in_window(death);
            slot.status.store(Arc::new(counted));
            (recent, slot.sequence.load(Ordering::SeqCst))
        };
        if recent > slot.config.max_crashes as usize {
            tracing::error!(plugin = %slot.name, cause = %death.cause, crashes = recent, "an older process of the plugin crashed, and the plugin crashed too often to start another: the runs it was finishing stay recorded as running until the plugin next starts");
            return;
        }
        let delay = backoff(recent);
        tracing::warn!(plugin = %slot.name, cause = %death.cause, delay_ms = delay.as_millis() as u64, "an older process of the plugin crashed while finishing its runs; a fresh process takes over to record them interrupted");
        tokio::time::sleep(delay).await;
        let _serialized = slot.reload_lock.lock().await;
        // Nothing serves (the restart of a crashed serving child records the runs too), a
        // child started meanwhile recorded them, or the host is stopping.
        if slot.current.load().is_none()
            || slot.sequence.load(Ordering::SeqCst) != seen
            || slot.stopping.load(Ordering::SeqCst)
        {
            return;
        }
        // A failure is logged by `load`; the serving child goes on, and the runs wait for the
        // plugin's next start.
        let _ = slot
            .load("a fresh process after an older one crashed", false)
            .await;
    }

    /// Counts a crash now: how many fell within `crash_window_secs`, and the status with it
    /// counted (`crashes`, `last_crash`, `last_crash_at`), for the caller to complete and store.
    fn count_in_window(&self, death: &Death) -> (usize, PluginStatus) {
        let window = Duration::from_secs(self.config.crash_window_secs);
        let recent = {
            let mut times = self.lock_crashes();
            let now = Instant::now();
            times.push_back(now);
            while times
                .front()
                .is_some_and(|at| now.duration_since(*at) > window)
            {
                times.pop_front();
            }
            times.len()
        };
        let previous = self.status.load_full();
        let counted = PluginStatus {
            crashes: previous.crashes + 1,
            last_crash: Some(death.cause.clone()),
            last_crash_at: Some(rfc3339(SystemTime::now())),
            ..(*previous).clone()
        };
        (recent, counted)
    }

    /// Records a crash of the serving child; the wait before restarting it, or `None` when it
    /// crashed too often (or the host is stopping) and stays down.
    fn count_crash(&self, death: &Death) -> Option<Duration> {
        let (recent, counted) = self.count_in_window(death);
        let stopping = self.stopping.load(Ordering::SeqCst);
        let too_many = recent > self.config.max_crashes as usize;
        let delay = backoff(recent);
        let last_error = if stopping {
            "the host is shutting down".to_owned()
        } else if too_many {
            format!(
                "its process crashed {recent} times within {} s (last: {}); it is not restarted: fix it, then reload it (POST /api/plugins/{}/reload)",
                self.config.crash_window_secs, death.cause, self.name
            )
        } else {
            format!(
                "its process crashed ({}); restarting in {} ms",
                death.cause,
                delay.as_millis()
            )
        };
        self.status.store(Arc::new(PluginStatus {
            state: if stopping {
                PluginState::Disabled
            } else if too_many {
                PluginState::Failed
            } else {
                PluginState::Crashed
            },
            pid: None,
            last_error: Some(last_error),
            ..counted
        }));
        if too_many {
            tracing::error!(plugin = %self.name, crashes = recent, "plugin crashed too often; not restarted");
        }
        (!too_many && !stopping).then_some(delay)
    }

    /// Stops serving: new requests get 503, the copy retires once in-flight requests finish.
    /// Nothing loads after this: a crash restart or a reload in progress drops its copy.
    pub fn unload(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        let previous = self.status.load_full();
        if self.current.swap(None).is_some() || previous.state == PluginState::Crashed {
            self.status.store(Arc::new(PluginStatus {
                state: PluginState::Disabled,
                pid: None,
                last_error: Some("the host is shutting down".into()),
                ..(*previous).clone()
            }));
        }
    }
}

pub fn rfc3339(time: SystemTime) -> String {
    humantime::format_rfc3339_millis(time).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restarts_back_off_and_the_wait_is_capped() {
        let waits: Vec<u128> = (1..=8)
            .map(|crashes| backoff(crashes).as_millis())
            .collect();
        assert_eq!(waits, [250, 500, 1000, 2000, 4000, 8000, 8000, 8000]);
        assert_eq!(backoff(1000), MAX_BACKOFF);
    }
}
