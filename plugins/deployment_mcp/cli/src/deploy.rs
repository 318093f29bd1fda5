//! `deploy` and `ec2-trigger`: start a deployment, follow it live, print the summary.
//!
//! Progress comes from the plugin's events (subscribed before the trigger, filtered by the
//! deployment id) and from polling the deployment's record every second, so a lost event can
//! delay a line but never hang the command. Statuses only move forward, whichever of the two
//! reports first.

use std::{collections::HashMap, io::IsTerminal as _, time::Duration};

use deployment_mcp_core::{
    client::DeploymentApi as _,
    deployment::{Phase, TargetStatus},
    rollout::RolloutJson,
    wire::{DeploymentState, Event, LogsQuery, TargetResult, TriggerRequest},
};

use crate::{
    backend::{Backend, Incoming},
    output::{self, outln, Table},
    progress::{Bars, Display},
    signals::Interrupts,
    CliError,
};

/// How often the deployment's record is read, whatever the events say.
const POLL: Duration = Duration::from_secs(1);
/// Consecutive failed polls (e.g. the server restarting) before giving up on following.
const MAX_POLL_FAILURES: u32 = 30;

pub struct DeployRequest {
    /// Empty: every registered, enabled environment.
    pub environments: Vec<String>,
    pub version: Option<String>,
    /// Strategy, failure threshold and rollback; all-at-once when empty.
    pub rollout: RolloutJson,
    pub follow_logs: bool,
    pub json: bool,
}

/// Exit status of a deployment that stopped at its canary gate, waiting for approval.
pub const EXIT_AWAITING_APPROVAL: u8 = 3;

/// How following a deployment started.
pub struct Follow {
    pub follow_logs: bool,
    pub json: bool,
    /// What counts as success (exit 0).
    pub success: fn(&DeploymentState) -> bool,
}

/// Runs a deployment to its end; the exit status is 0 only when every environment succeeded.
pub async fn run(
    backend: &Backend,
    request: DeployRequest,
    interrupts: &mut Interrupts,
) -> Result<u8, CliError> {
    let environments = if request.environments.is_empty() {
        match backend.default_environments() {
            Some(ids) if ids.is_empty() => {
                return Err(CliError::Usage(format!(
                    "{} has no enabled environment to deploy; add one (or set \"enabled\": true) and run again",
                    backend.registry()
                )))
            }
            ids => ids,
        }
    } else {
        for id in &request.environments {
            if backend.knows_environment(id) == Some(false) {
                return Err(CliError::Usage(format!(
                    "no environment {id:?} in {}; `deployment-mcp environments list` shows the registered ones",
                    backend.registry()
                )));
            }
        }
        Some(request.environments.clone())
    };
    let trigger = TriggerRequest {
        environments,
        version: request.version.clone(),
        ..TriggerRequest::default()
    }
    .with_rollout(request.rollout.clone());

    let events = backend.subscribe().await;
    let answer = backend.api().trigger(&trigger).await?;
    let follow = Follow {
        follow_logs: request.follow_logs,
        json: request.json,
        success: completed_everywhere,
    };
    follow_to_end(
        backend,
        answer.deployment_id.into_string(),
        events,
        follow,
        interrupts,
    )
    .await
}

/// Follows deployment `id` (subscribed to `events` before it started or moved on) until it
/// ends or stops at its gate; prints the summary. 0 when `success` holds, 3 when it waits
/// for approval, else 1.
pub async fn follow_to_end(
    backend: &Backend,
    id: String,
    mut events: crate::backend::Events,
    request: Follow,
    interrupts: &mut Interrupts,
) -> Result<u8, CliError> {
    interrupts.arm();
    let display = if request.json {
        Display::Quiet
    } else if std::io::stdout().is_terminal() {
        Display::Bars(Bars::new())
    } else {
        Display::Plain
    };
    let mut watch = Watch::new(id.clone(), display, request.follow_logs);
    // Only the environments and the version: the statuses come from the events, in the order
    // they happened, which a record read now could overtake (a quick command is already done).
    watch.begin(&backend.api().deployment(&id).await?.deployment);

    let mut ticker = tokio::time::interval(POLL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    let mut events_open = true;
    let mut poll_failures = 0;
    let mut interrupted = false;
    while !watch.finished() {
        tokio::select! {
            _ = interrupts.recv(), if !interrupted => {
                interrupted = true;
                if let Some(server) = backend.server() {
                    watch.close();
                    eprintln!(
                        "stopped following; deployment {id} goes on on the server. Follow it with: deployment-mcp status {id} --server {server}"
                    );
                    return Ok(130);
                }
                watch.note(&format!(
                    "interrupted: cancelling deployment {id} (press Ctrl-C again to quit at once)"
                ));
                match backend.api().cancel(&id).await {
                    // 409: it ended meanwhile.
                    Err(error) if error.status() != Some(409) => {
                        watch.note(&format!("cancel: {}", CliError::from(error)));
                    }
                    _ => {}
                }
            }
            incoming = events.next(), if events_open => match incoming {
                Some(Incoming::Event(event)) => watch.apply_event(&event),
                Some(Incoming::Lost) => watch.events_lost(),
                None => {
                    events_open = false;
                    watch.events_lost();
                }
            },
            _ = ticker.tick() => match backend.api().deployment(&id).await {
                Ok(record) => {
                    poll_failures = 0;
                    watch.apply_record(&record.deployment);
                    if watch.logs_by_polling() {
                        watch.catch_up_logs(backend).await;
                    }
                }
                Err(error) => {
                    poll_failures += 1;
                    if poll_failures >= MAX_POLL_FAILURES {
                        watch.close();
                        return Err(CliError::Failed(format!(
                            "lost track of deployment {id}: {}; see `deployment-mcp status {id}` later",
                            CliError::from(error)
                        )));
                    }
                }
            },
        }
    }
    interrupts.disarm();
    // Events received before the end carry the last log lines; take them before the catch-up.
    while let Some(incoming) = events.try_next() {
        match incoming {
            Incoming::Event(event) => watch.apply_event(&event),
            Incoming::Lost => watch.events_lost(),
        }
    }
    let record = backend.api().deployment(&id).await?.deployment;
    watch.apply_record(&record);
    watch.catch_up_logs(backend).await;
    watch.close();

    if request.json {
        output::print_json(&record);
    } else {
        print_summary(&record);
    }
    if record.status == Phase::AwaitingApproval {
        let who = match record.gate.as_ref().and_then(|gate| gate.not_by.as_deref()) {
            Some(key) => format!("any admin but {key} (four eyes)"),
            None => "any admin".to_owned(),
        };
        eprintln!(
            "deployment {id} waits at its canary gate: `deployment-mcp approve {id}` continues it ({who} may approve), `deployment-mcp reject {id}` ends it"
        );
        return Ok(EXIT_AWAITING_APPROVAL);
    }
    Ok(if (request.success)(&record) { 0 } else { 1 })
}

/// The deployment completed and every environment succeeded.
pub fn completed_everywhere(record: &DeploymentState) -> bool {
    record.status == Phase::Completed
        && record
            .results
            .iter()
            .all(|result| result.status == TargetStatus::Succeeded)
}

/// 0 when the deployment completed and every environment succeeded, else 1.
#[cfg(test)]
fn exit_code(record: &DeploymentState) -> u8 {
    if completed_everywhere(record) {
        0
    } else {
        1
    }
}

fn print_summary(record: &DeploymentState) {
    let mut table = Table::new(&["ENVIRONMENT", "STATUS", "DURATION", "EXIT", "ERROR"]);
    for result in &record.results {
        table.row(vec![
            result.environment_id.to_string(),
            result.status.as_str().to_owned(),
            output::duration(result.duration_ms),
            output::dash(result.exit_code.map(|code| code.to_string()).as_deref()),
            output::dash(result.error.clone().flatten().as_deref()),
        ]);
    }
    outln!();
    table.print();
    let succeeded = record
        .results
        .iter()
        .filter(|result| result.status == TargetStatus::Succeeded)
        .count();
    outln!();
    outln!("deployment: {}", record.deployment_id);
    outln!(
        "status:     {} ({succeeded} of {} environment(s) succeeded, {})",
        record.status.as_str(),
        record.results.len(),
        output::duration(record.duration_ms)
    );
    outln!(
        "version:    {}",
        output::dash(Some(record.version.as_str()))
    );
    for error in &record.errors {
        outln!("error:      {}", output::printable(error));
    }
}

/// Where each environment is, as far as we know.
struct TargetView {
    status: TargetStatus,
    verified: bool,
}

/// Statuses in the order they happen; every terminal one ranks last.
fn target_rank(status: TargetStatus) -> u8 {
    match status {
        TargetStatus::Pending => 0,
        TargetStatus::Triggering => 1,
        TargetStatus::Running => 2,
        TargetStatus::RolledBack | TargetStatus::RollbackFailed => 4,
        _ => 3,
    }
}

/// Phases in state-machine order; every terminal one ranks last.
fn phase_rank(phase: Phase) -> usize {
    Phase::ALL
        .iter()
        .take_while(|known| !known.is_terminal())
        .position(|known| *known == phase)
        .unwrap_or(Phase::ALL.len())
}

struct Watch {
    id: String,
    display: Display,
    started: bool,
    phase: Option<Phase>,
    progress: u64,
    order: Vec<String>,
    targets: HashMap<String, TargetView>,
    follow_logs: bool,
    /// Log lines come from events until one is lost; from then on by polling.
    logs_from_events: bool,
    /// Lines shown so far: always the first lines of the stored log, in order.
    printed_logs: usize,
}

impl Watch {
    fn new(id: String, display: Display, follow_logs: bool) -> Watch {
        Watch {
            id,
            display,
            started: false,
            phase: None,
            progress: 0,
            order: Vec::new(),
            targets: HashMap::new(),
            follow_logs,
            logs_from_events: true,
            printed_logs: 0,
        }
    }

    /// Ended, or stopped at its gate (someone else decides it).
    fn finished(&self) -> bool {
        self.phase
            .is_some_and(|phase| phase.is_terminal() || phase == Phase::AwaitingApproval)
    }

    fn logs_by_polling(&self) -> bool {
        self.follow_logs && !self.logs_from_events
    }

    fn events_lost(&mut self) {
        self.logs_from_events = false;
    }

    fn note(&self, text: &str) {
        self.display.note(text);
    }

    fn close(&mut self) {
        let phase = self.phase.map_or("", Phase::as_str);
        self.display.close(phase);
    }

    /// Shows the deployment's start: its environments and version.
    fn begin(&mut self, record: &DeploymentState) {
        if !self.started {
            self.started = true;
            for id in &record.environments {
                self.add_target(id);
            }
            let line = format!(
                "deployment {} started: {} environment(s) ({}), version {}",
                self.id,
                self.order.len(),
                self.order.join(", "),
                output::dash(Some(record.version.as_str()))
            );
            self.display.start(&line, &self.id, &self.order);
        }
    }

    fn apply_record(&mut self, record: &DeploymentState) {
        self.begin(record);
        // In the order it happened: the phase before the environments it moves, the end after.
        let progress = u64::from(record.progress);
        if !record.status.is_terminal() {
            self.apply_phase(record.status, progress);
        }
        for target in &record.results {
            self.apply_target(target);
        }
        self.apply_phase(record.status, progress);
    }

    /// An event of this deployment; others are passed over.
    fn apply_event(&mut self, event: &Event) {
        if event.deployment_id() != Some(self.id.as_str()) {
            return;
        }
        match event {
            Event::Phase(event) => self.apply_phase(event.status, u64::from(event.progress)),
            Event::Environment(event) => {
                self.apply_target(&event.environment);
                let progress = u64::from(event.progress);
                if progress > self.progress {
                    self.progress = progress;
                    self.display.progress(progress);
                }
            }
            Event::Batch(event) => {
                let listed = event.batch.environments.len();
                let more = event.environment_count.saturating_sub(listed);
                let more = if more > 0 {
                    format!(" and {more} more")
                } else {
                    String::new()
                };
                self.note(&format!(
                    "batch {} of {} {}: {}{more}",
                    event.batch.number,
                    event.batches,
                    event.batch.status.as_str(),
                    event.batch.environments.join(", ")
                ));
            }
            Event::Gate(event) => {
                let by = event
                    .gate
                    .decided_by
                    .as_ref()
                    .map(|by| format!(" by {by}"))
                    .unwrap_or_default();
                self.note(&format!("gate {}{by}", event.gate.status.as_str()));
            }
            Event::Log(event) if self.follow_logs && self.logs_from_events => {
                for line in &event.lines {
                    self.display.log(line);
                    self.printed_logs += 1;
                }
            }
            Event::Takeover(event) => {
                self.note(&format!(
                    "node {} took over from node {} (lost)",
                    event.to_node, event.from_node
                ));
            }
            Event::Log(_) | Event::Health(_) | Event::Deleted(_) => {}
        }
    }

    fn add_target(&mut self, id: &str) {
        if !self.targets.contains_key(id) {
            self.order.push(id.to_owned());
            self.targets.insert(
                id.to_owned(),
                TargetView {
                    status: TargetStatus::Pending,
                    verified: false,
                },
            );
            if self.started {
                self.display.add_target(id);
            }
        }
    }

    fn apply_phase(&mut self, phase: Phase, progress: u64) {
        let progress = progress.max(self.progress);
        let advanced = match self.phase {
            None => true,
            Some(current) => !current.is_terminal() && phase_rank(phase) > phase_rank(current),
        };
        if advanced {
            self.phase = Some(phase);
            self.progress = progress;
            self.display.phase(phase.as_str(), progress);
        } else if progress > self.progress {
            self.progress = progress;
            self.display.progress(progress);
        }
    }

    fn apply_target(&mut self, target: &TargetResult) {
        let id = target.environment_id.as_str();
        let status = target.status;
        self.add_target(id);
        let verified = target.healthy.is_some();
        let Some(view) = self.targets.get_mut(id) else {
            return;
        };
        // A verification can still turn a succeeded environment failed: a later terminal
        // status counts only when it carries the health check's result.
        let newer = target_rank(status) > target_rank(view.status)
            || (status.is_terminal() && verified && !view.verified && status != view.status);
        if newer {
            view.status = status;
            view.verified = verified;
            self.display.target(target);
        } else if verified && !view.verified && status == view.status {
            view.verified = true;
        }
    }

    /// Prints the stored log lines not shown yet.
    async fn catch_up_logs(&mut self, backend: &Backend) {
        if !self.follow_logs {
            return;
        }
        // Page by page from the first line not printed: each call reads only the new lines.
        loop {
            let page = LogsQuery::Page {
                from: self.printed_logs as u64,
                limit: None,
            };
            let Ok(answer) = backend.api().logs(&self.id, page).await else {
                return;
            };
            for line in &answer.lines {
                self.display.log(line);
            }
            self.printed_logs = self
                .printed_logs
                .max(answer.first_line as usize + answer.lines.len());
            if answer.next_from.is_none() || answer.lines.is_empty() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::*;

    fn detail(status: Phase, results: &[(&str, TargetStatus)]) -> DeploymentState {
        let mut value = json!({
            "deployment_id": "dep-1-ab", "status": status, "phase": status, "progress": 10,
            "version": "1", "triggered_by": "test", "request_id": null,
            "environments": results.iter().map(|(id, _)| id).collect::<Vec<_>>(),
            "ec2": {"status": "skipped", "reason": "off"}, "errors": [], "created_at": "2026-01-01T00:00:00.000Z",
            "finished_at": null, "duration_ms": null, "retry_of": null, "log_lines": 0,
            "results": [], "logs": [], "logs_truncated": false,
        });
        value["results"] = results
            .iter()
            .map(|(id, status)| target(id, *status))
            .collect();
        serde_json::from_value(value).expect("a detail")
    }

    fn target(id: &str, status: TargetStatus) -> Value {
        json!({"environment_id": id, "connection_method": "local", "status": status,
            "started_at": null, "finished_at": null, "duration_ms": null, "exit_code": null,
            "healthy": null})
    }

    /// An event as the bus delivers it.
    fn apply(watch: &mut Watch, kind: &str, data: Value) {
        let event = Event::read(kind, data).unwrap().expect("a known kind");
        watch.apply_event(&event);
    }

    #[test]
    fn statuses_only_move_forward() {
        let mut watch = Watch::new("dep-1-ab".into(), Display::Quiet, false);
        watch.apply_record(&detail(
            Phase::LocalDeploying,
            &[("a", TargetStatus::Succeeded)],
        ));
        let event = |status, healthy: Option<bool>| {
            let mut environment = target("a", status);
            environment["healthy"] = json!(healthy);
            json!({"deployment_id": "dep-1-ab", "progress": 10, "environment": environment})
        };
        apply(
            &mut watch,
            "deployment.environment",
            event(TargetStatus::Running, None),
        );
        assert_eq!(watch.targets["a"].status, TargetStatus::Succeeded);
        apply(
            &mut watch,
            "deployment.environment",
            event(TargetStatus::Failed, Some(false)),
        );
        assert_eq!(watch.targets["a"].status, TargetStatus::Failed);
        let phase = |id: &str, status: Phase| {
            json!({"deployment_id": id, "status": status, "previous": null, "progress": 10,
                "environments": ["a"], "error_count": 0, "at": "2026-01-01T00:00:00.000Z"})
        };
        apply(
            &mut watch,
            "deployment.phase",
            phase("dep-1-ab", Phase::Pending),
        );
        assert_eq!(watch.phase, Some(Phase::LocalDeploying));
        apply(
            &mut watch,
            "deployment.phase",
            phase("dep-2-cd", Phase::Failed),
        );
        assert!(!watch.finished());
        apply(
            &mut watch,
            "deployment.phase",
            phase("dep-1-ab", Phase::Failed),
        );
        assert!(watch.finished());
    }

    #[test]
    fn exit_code_needs_every_environment() {
        let ok = detail(Phase::Completed, &[("a", TargetStatus::Succeeded)]);
        let failed = detail(
            Phase::Failed,
            &[("a", TargetStatus::Succeeded), ("b", TargetStatus::Failed)],
        );
        assert_eq!(exit_code(&ok), 0);
        assert_eq!(exit_code(&failed), 1);
        assert_eq!(exit_code(&detail(Phase::Cancelled, &[])), 1);
    }
}
