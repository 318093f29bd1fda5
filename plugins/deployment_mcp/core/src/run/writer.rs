//! A run's writer: the one task that puts a deployment's log lines, environment results and
//! record into the store, and publishes what it stored.
//!
//! It batches: whatever arrives within [`BATCH_DELAY`] (or until a batch is full) is written in
//! one store transaction — a chunk of log lines, the latest state of each environment that
//! changed, the record and its history entry — then published. A deployment of 10,000
//! environments therefore costs a few hundred transactions, not tens of thousands. An
//! environment that went `triggering → running → succeeded` within one batch is written once,
//! in its last state, and every one of its transitions is published after that write.
//!
//! Invariants:
//! - write, then publish: nothing reaches an event subscriber that a restart would not show.
//!   [`RunWriter::flush`] waits until everything sent before it is stored and published;
//! - events are published in the order their changes were sent: an environment's result that
//!   the run sent before a phase change is published before it, whatever the batching;
//! - each state event (phase, environment, batch, gate) carries the deployment's next sequence
//!   number, and the last number used is stored in the same transaction as what the events
//!   tell, so numbers have no gaps and do not repeat across runs, copies and restarts.
//!
//! Every secret value of the catalog is masked in each line before it is kept (the log, the
//! output tails, the log events): a script that prints one, its own or another environment's,
//! shows `***`.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::sync::{mpsc, oneshot};

use crate::model::{DeploymentId, EnvironmentId};
use crate::{
    deployment::{DeploymentRecord, Phase, TargetRecord},
    model::{LogLine, LogSink, LogStream, Timestamp},
    persist::{
        catalog::EnvironmentVersions, deployments::LogPosition, records::Records, Lease, Outcome,
        Writes,
    },
    redact::Secrets,
    run::stop::{Stop, StopReason},
    wire::{
        self, BatchEvent, EnvironmentEvent, Event, GateEvent, LogEvent, PhaseEvent, TargetResult,
        View,
    },
};

/// Lines of output kept per environment in its result (the full log is in the store).
pub const OUTPUT_TAIL_LINES: usize = 20;
/// How long a change may wait to be written with others.
const BATCH_DELAY: Duration = Duration::from_millis(100);
/// Log lines per stored chunk.
const BATCH_LINES: usize = 200;
/// Environment results per transaction.
const BATCH_TARGETS: usize = 500;
/// Lines in flight between triggers and the writer.
const LINE_CHANNEL: usize = 1024;
/// State updates in flight between the run and the writer.
const UPDATE_CHANNEL: usize = 1024;

/// The last lines of each environment's output, as the writer saw them.
pub type Tails = Arc<Mutex<HashMap<EnvironmentId, VecDeque<LogLine>>>>;

enum Update {
    Target(TargetRecord),
    /// The record, and the environments that did not succeed once it is terminal.
    Record(DeploymentRecord, Vec<EnvironmentId>),
    /// A phase change: written at once (with whatever else is queued), then published.
    Phase(DeploymentRecord, Phase),
    /// A phase change that parks the deployment at its gate: one write, then both events.
    PhaseAndGate(DeploymentRecord, Phase),
    /// A batch or gate change: written at once, then published.
    Announce(DeploymentRecord, Announcement),
    /// An environment's versions after it succeeded or was rolled back.
    Versions(EnvironmentId, EnvironmentVersions),
    /// The run ended: the record (moved from the phase given) is written, the claims on its
    /// environments are released, and then the phase change is published.
    Finished(DeploymentRecord, Option<Phase>, Vec<EnvironmentId>),
    Flush(oneshot::Sender<u64>),
}

/// A state event waiting for its write, in the order its change was sent.
enum Pending {
    Phase(DeploymentRecord, Option<Phase>),
    Batch(BatchEvent),
    Gate(GateEvent),
    /// An environment's new state and the deployment's progress when it was sent.
    Environment(TargetRecord, u8),
}

/// A change of the record that has its own event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Announcement {
    /// Batch `n` started or ended.
    Batch(usize),
    /// The gate opened or was decided.
    Gate,
}

/// The run's handle on its writer.
#[derive(Clone)]
pub struct RunWriter {
    updates: mpsc::Sender<Update>,
    log: LogSink,
    tails: Tails,
}

/// What the writer needs to know about the deployment.
pub struct WriterSetup {
    pub records: Records,
    /// The run's lease: every write of the run is made under it.
    pub lease: Lease,
    /// The run's stop: asked for when the lease turns out lost.
    pub(crate) stop: Arc<Stop>,
    /// The sequence number of the deployment's last published state event.
    pub events: u64,
    pub deployment_id: DeploymentId,
    /// Where the stored log goes on (a log continued after a gate or a restart starts after
    /// what is stored).
    pub log: LogPosition,
    pub max_log_lines: u64,
    /// The request that started the run, stamped on every line.
    pub request_id: Option<String>,
    /// The record's status as stored now (which the history's indexes hold).
    pub status: Phase,
    /// Lines the deployment's log had before this run (a resumed one).
    pub lines_before: u64,
}

impl RunWriter {
    /// Starts the writer task; it ends once every handle (and log sink) is dropped, after
    /// writing what is left.
    pub fn start(setup: WriterSetup) -> (RunWriter, tokio::task::JoinHandle<()>) {
        let (log, lines) = LogSink::channel(LINE_CHANNEL);
        let (updates, receiver) = mpsc::channel(UPDATE_CHANNEL);
        let tails: Tails = Arc::default();
        let task = WriterTask {
            records: setup.records,
            lease: setup.lease,
            stop: setup.stop,
            lost: false,
            events: setup.events,
            finished: None,
            deployment_id: setup.deployment_id,
            log: setup.log,
            // A resumed run continues the count (and the cap) of the lines before it.
            stored_lines: setup.lines_before.min(setup.max_log_lines),
            total_lines: setup.lines_before,
            limit: setup.max_log_lines,
            request_id: setup.request_id,
            tails: Arc::clone(&tails),
            lines: Vec::new(),
            targets: BTreeMap::new(),
            record: None,
            pending: Vec::new(),
            versions: BTreeMap::new(),
            progress: 0,
            written_status: setup.status,
            secrets: Secrets::default(),
        };
        let handle = tokio::spawn(task.run(lines, receiver));
        (
            RunWriter {
                updates,
                log,
                tails,
            },
            handle,
        )
    }

    /// The run's log (lines attributed to no environment; see [`LogSink::for_environment`]).
    pub fn log(&self) -> &LogSink {
        &self.log
    }

    /// Queues an environment's new state.
    pub async fn target(&self, target: TargetRecord) {
        // A closed writer means the run is being torn down; the state has nowhere to go.
        let _ = self.updates.send(Update::Target(target)).await;
    }

    /// Queues the record's new state (`failed` lists the environments that did not succeed,
    /// once the record is terminal).
    pub async fn record(&self, record: DeploymentRecord, failed: Vec<EnvironmentId>) {
        let _ = self.updates.send(Update::Record(record, failed)).await;
    }

    /// Queues a phase change: the writer stores it at once, with whatever else is queued, and
    /// then publishes it. The run does not wait for that.
    pub async fn phase(&self, record: DeploymentRecord, previous: Phase) {
        let _ = self.updates.send(Update::Phase(record, previous)).await;
    }

    /// Queues a phase change that also changes the gate (parking at it): stored at once, in one
    /// write, then both published.
    pub async fn phase_and_gate(&self, record: DeploymentRecord, previous: Phase) {
        let _ = self
            .updates
            .send(Update::PhaseAndGate(record, previous))
            .await;
    }

    /// Queues a batch or gate change: stored at once, then published.
    pub async fn announce(&self, record: DeploymentRecord, announcement: Announcement) {
        let _ = self
            .updates
            .send(Update::Announce(record, announcement))
            .await;
    }

    /// Queues the end of the run: the terminal `record` (moved from `previous`; `failed` lists
    /// the environments that did not succeed) is stored, the claims are released, then the
    /// phase change is published. Wait for it with [`RunWriter::flush`].
    pub async fn finished(
        &self,
        record: DeploymentRecord,
        previous: Option<Phase>,
        failed: Vec<EnvironmentId>,
    ) {
        let _ = self
            .updates
            .send(Update::Finished(record, previous, failed))
            .await;
    }

    /// Queues an environment's new versions.
    pub async fn versions(&self, environment: &EnvironmentId, versions: EnvironmentVersions) {
        let _ = self
            .updates
            .send(Update::Versions(environment.clone(), versions))
            .await;
    }

    /// Waits until everything sent before this call is stored; returns the lines written so far
    /// (including any beyond the stored limit).
    pub async fn flush(&self) -> u64 {
        let (done, wait) = oneshot::channel();
        if self.updates.send(Update::Flush(done)).await.is_err() {
            return 0;
        }
        wait.await.unwrap_or(0)
    }

    /// The last lines `environment` wrote, as far as the writer has seen them.
    pub fn tail(&self, environment: &EnvironmentId) -> Vec<LogLine> {
        self.tails
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(environment)
            .map(|tail| tail.iter().cloned().collect())
            .unwrap_or_default()
    }
}

struct WriterTask {
    records: Records,
    lease: Lease,
    stop: Arc<Stop>,
    /// Another node took the run over: nothing more is written or published.
    lost: bool,
    /// The sequence number of the last state event published (or about to be, once written).
    events: u64,
    /// The run's end, once it is queued: its environments are released after the write.
    finished: Option<Vec<EnvironmentId>>,
    deployment_id: DeploymentId,
    /// The next chunk's number and its first line's.
    log: LogPosition,
    stored_lines: u64,
    total_lines: u64,
    limit: u64,
    request_id: Option<String>,
    tails: Tails,
    // What waits to be written.
    lines: Vec<LogLine>,
    /// The latest state of each environment, to write.
    targets: BTreeMap<EnvironmentId, TargetRecord>,
    record: Option<(DeploymentRecord, Vec<EnvironmentId>)>,
    /// State events to publish once written, in the order their changes came.
    pending: Vec<Pending>,
    /// Environments' new versions, to write.
    versions: BTreeMap<EnvironmentId, EnvironmentVersions>,
    /// The deployment's progress as last sent, for environment events.
    progress: u8,
    /// The status last stored, which the history's indexes hold.
    written_status: Phase,
    /// The catalog's secret values, masked in every line.
    secrets: Secrets,
}

impl WriterTask {
    async fn run(
        mut self,
        mut lines: mpsc::Receiver<LogLine>,
        mut updates: mpsc::Receiver<Update>,
    ) {
        // Read once, before the first line is kept.
        match crate::persist::catalog::secret_values(&self.records).await {
            Ok(values) => self.secrets = Secrets::new(values),
            Err(error) => {
                tracing::error!(deployment = %self.deployment_id, "cannot read the catalog's secrets to mask them in the log (each trigger still masks its own): {error}")
            }
        }
        let mut deadline: Option<tokio::time::Instant> = None;
        let (mut lines_open, mut updates_open) = (true, true);
        while lines_open || updates_open {
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
                        self.take(line);
                        deadline.get_or_insert_with(|| tokio::time::Instant::now() + BATCH_DELAY);
                        if self.lines.len() >= BATCH_LINES {
                            self.write().await;
                            deadline = None;
                        }
                    }
                    None => lines_open = false,
                },
                update = updates.recv(), if updates_open => match update {
                    Some(update) => {
                        let mut waiting = Vec::new();
                        let mut now = self.accept(update, &mut waiting);
                        if now {
                            // Whatever is queued right behind goes into the same write.
                            while let Ok(update) = updates.try_recv() {
                                now |= self.accept(update, &mut waiting);
                            }
                            while let Ok(line) = lines.try_recv() {
                                self.take(line);
                            }
                        }
                        if now || self.pending.len() >= BATCH_TARGETS {
                            self.write().await;
                            deadline = None;
                        } else {
                            deadline.get_or_insert_with(|| tokio::time::Instant::now() + BATCH_DELAY);
                        }
                        for done in waiting {
                            let _ = done.send(self.total_lines);
                        }
                    }
                    None => updates_open = false,
                },
                _ = timer => {
                    self.write().await;
                    deadline = None;
                }
            }
        }
        self.write().await;
    }

    /// Takes one update; true when it must be written now (a phase change, a flush), and
    /// collects who waits for the write.
    fn accept(&mut self, update: Update, waiting: &mut Vec<oneshot::Sender<u64>>) -> bool {
        let update = self.masked(update);
        match update {
            Update::Target(target) => {
                self.pending
                    .push(Pending::Environment(target.clone(), self.progress));
                self.targets.insert(target.environment_id.clone(), target);
                false
            }
            Update::Record(record, failed) => {
                self.progress = record.progress;
                self.record = Some((record, failed));
                false
            }
            Update::Phase(record, previous) => {
                self.progress = record.progress;
                self.record = Some((record.clone(), Vec::new()));
                self.pending.push(Pending::Phase(record, Some(previous)));
                true
            }
            Update::PhaseAndGate(record, previous) => {
                self.progress = record.progress;
                self.record = Some((record.clone(), Vec::new()));
                let gate = GateEvent::new(&record);
                self.pending.push(Pending::Phase(record, Some(previous)));
                self.pending.extend(gate.map(Pending::Gate));
                true
            }
            Update::Announce(record, announcement) => {
                self.progress = record.progress;
                self.record = Some((record.clone(), Vec::new()));
                // A batch or gate the record does not have has no event (and takes no number).
                self.pending.extend(match announcement {
                    Announcement::Batch(index) => {
                        BatchEvent::new(&record, index).map(Pending::Batch)
                    }
                    Announcement::Gate => GateEvent::new(&record).map(Pending::Gate),
                });
                true
            }
            Update::Finished(record, previous, failed) => {
                self.progress = record.progress;
                self.finished = Some(record.environments.clone());
                self.record = Some((record.clone(), failed));
                self.pending.push(Pending::Phase(record, previous));
                true
            }
            Update::Versions(environment, versions) => {
                self.versions.insert(environment, versions);
                false
            }
            Update::Flush(done) => {
                waiting.push(done);
                true
            }
        }
    }

    /// The update with the catalog's secrets masked in its texts (errors, details, output
    /// tails) before anything of it is stored or published.
    fn masked(&self, mut update: Update) -> Update {
        let mask_record = |record: &mut DeploymentRecord| {
            for error in &mut record.errors {
                self.secrets.mask_in_place(error);
            }
        };
        match &mut update {
            Update::Target(target) => {
                for text in [&mut target.error, &mut target.detail]
                    .into_iter()
                    .flatten()
                {
                    self.secrets.mask_in_place(text);
                }
                for line in &mut target.output_tail {
                    self.secrets.mask_in_place(&mut line.line);
                }
            }
            Update::Record(record, _)
            | Update::Phase(record, _)
            | Update::PhaseAndGate(record, _)
            | Update::Announce(record, _)
            | Update::Finished(record, ..) => mask_record(record),
            Update::Versions(..) | Update::Flush(_) => {}
        }
        update
    }

    fn take(&mut self, mut line: LogLine) {
        self.total_lines += 1;
        line.request_id.clone_from(&self.request_id);
        self.secrets.mask_in_place(&mut line.line);
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
            self.lines.push(line);
            if self.stored_lines == self.limit {
                self.lines.push(LogLine {
                    ts: Timestamp::now(),
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

    /// Frees the run's claims on `environments` and its running entry.
    async fn release(&self, environments: &[EnvironmentId]) {
        let id = &self.deployment_id;
        if self.lost {
            return;
        }
        if let Err(error) =
            crate::persist::runs::release(&self.records, &self.lease, id, environments).await
        {
            tracing::error!(deployment = %id, "cannot release the environments: {error}");
        }
    }

    /// Drops what waits: the run is another node's now.
    fn discard(&mut self) {
        self.lines.clear();
        self.targets.clear();
        self.pending.clear();
        self.versions.clear();
        self.record = None;
        self.finished = None;
    }

    /// Writes what is pending in one transaction, then publishes it.
    async fn write(&mut self) {
        if self.lost {
            self.discard();
            return;
        }
        if self.lines.is_empty()
            && self.targets.is_empty()
            && self.record.is_none()
            && self.versions.is_empty()
            && self.pending.is_empty()
        {
            return;
        }
        if let Some((record, _)) = &mut self.record {
            record.log_lines = self.total_lines;
        }
        let lines = std::mem::take(&mut self.lines);
        let targets = std::mem::take(&mut self.targets);
        let pending = std::mem::take(&mut self.pending);
        let versions = std::mem::take(&mut self.versions);
        let record = self.record.take();
        let id = self.deployment_id.clone();
        let events = self.events + pending.len() as u64;
        let mut writes = Writes::new(&self.records, &self.lease);
        let encoded = (|| -> Result<(), crate::persist::records::StoreError> {
            if !lines.is_empty() {
                writes.log(&id, self.log, &lines)?;
            }
            for target in targets.values() {
                writes.target(&id, target)?;
            }
            for (environment, versions) in &versions {
                writes.versions(environment, versions)?;
            }
            if let Some((record, failed)) = &record {
                writes.moved(record, self.written_status, failed, None)?;
            }
            if events != self.events {
                writes.events_published(&id, events)?;
            }
            Ok(())
        })();
        let stored = match encoded {
            Ok(()) => writes.commit().await,
            Err(error) => Err(error),
        };
        let stored = match stored {
            Ok(Outcome::LeaseLost) => {
                tracing::warn!(deployment = %id, "another node took this run over: this process stops it and writes nothing more");
                self.lost = true;
                self.finished = None;
                self.stop.request(StopReason::LeaseLost);
                return;
            }
            Ok(_) => Ok(()),
            Err(error) => Err(error),
        };
        if let Err(error) = stored {
            // Not stored, so not published: a subscriber sees nothing a restart would not show.
            tracing::error!(deployment = %id, "cannot store the deployment's progress: {error}");
            if let Some(environments) = self.finished.take() {
                // The run ends all the same: its environments must not stay claimed by a run
                // that is gone until the next restart.
                self.release(&environments).await;
            }
            return;
        }
        if !lines.is_empty() {
            self.log = self.log.after(lines.len());
        }
        if let Some((record, _)) = &record {
            self.written_status = record.status;
        }
        if let Some(environments) = self.finished.take() {
            // Released before the end is published: whoever reacts to it finds them free.
            self.release(&environments).await;
        }
        let host = self.records.host();
        if !lines.is_empty() {
            // Log lines are for developers and admins only.
            let event = Event::Log(LogEvent {
                deployment_id: id.clone(),
                lines,
            });
            wire::publish(host, None, &event, None);
        }
        for event in pending {
            self.events += 1;
            let seq = self.events;
            match event {
                Pending::Phase(record, previous) => publish_phase(host, seq, &record, previous),
                Pending::Batch(event) => {
                    let event = Event::Batch(event);
                    wire::publish(host, Some(seq), &event, Some(&event));
                }
                Pending::Gate(event) => publish_gate(host, seq, event),
                Pending::Environment(target, progress) => {
                    publish_environment(host, seq, &id, progress, &target)
                }
            }
        }
    }
}

/// Publishes a phase change: the whole picture for developers; for users, without the error
/// texts (they name hosts and URLs). Call it only once the change is stored.
pub fn publish_phase(
    host: &plugin_guest::Host,
    seq: u64,
    record: &DeploymentRecord,
    previous: Option<Phase>,
) {
    let at = Timestamp::now();
    let event = |view| Event::Phase(PhaseEvent::new(record, previous, at, view));
    wire::publish(
        host,
        Some(seq),
        &event(View::Details),
        Some(&event(View::User)),
    );
}

/// Publishes one environment's result outside a run (a decision that skipped it).
pub fn publish_target(
    host: &plugin_guest::Host,
    seq: u64,
    record: &DeploymentRecord,
    target: &TargetRecord,
) {
    publish_environment(host, seq, &record.deployment_id, record.progress, target);
}

/// Publishes an environment's new state (once it is stored).
fn publish_environment(
    host: &plugin_guest::Host,
    seq: u64,
    deployment_id: &DeploymentId,
    progress: u8,
    target: &TargetRecord,
) {
    let event = |view| {
        Event::Environment(Box::new(EnvironmentEvent::new(
            deployment_id,
            progress,
            TargetResult::new(target, view),
        )))
    };
    wire::publish(
        host,
        Some(seq),
        &event(View::Details),
        Some(&event(View::User)),
    );
}

/// Publishes a gate's state (who decided it included) as event `seq`. The gate event is the same
/// for every role: ids and states, no details.
pub fn publish_gate(host: &plugin_guest::Host, seq: u64, event: GateEvent) {
    let event = Event::Gate(event);
    wire::publish(host, Some(seq), &event, Some(&event));
}
