//! `deploy` and `ec2-trigger`: start a deployment, follow it live, print the summary.
//!
//! Progress comes from the plugin's events (subscribed before the trigger, filtered by the
//! deployment id) and from polling the deployment's record every second, so a lost event can
//! delay a line but never hang the command. Statuses only move forward, whichever of the two
//! reports first.

use std::{collections::HashMap, io::IsTerminal as _, time::Duration};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::{json, Value};

use crate::{
    backend::{Backend, Incoming},
    output::{self, outln, Table},
    signals::Interrupts,
    CliError,
};

/// How often the deployment's record is read, whatever the events say.
const POLL: Duration = Duration::from_secs(1);
/// Consecutive failed polls (e.g. the server restarting) before giving up on following.
const MAX_POLL_FAILURES: u32 = 30;
/// Above this many environments, one aggregate bar replaces the per-environment ones.
const MAX_BARS: usize = 16;

pub struct DeployRequest {
    /// Empty: every registered, enabled environment.
    pub environments: Vec<String>,
    pub version: Option<String>,
    pub follow_logs: bool,
    pub json: bool,
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
    let mut body = json!({});
    if let Some(environments) = environments {
        body["environments"] = json!(environments);
    }
    if let Some(version) = &request.version {
        body["version"] = json!(version);
    }

    let mut events = backend.subscribe().await;
    let answer = backend
        .call_expecting("POST", "/trigger-local", Some(&body), 202)
        .await?;
    let Some(id) = answer["deployment_id"].as_str().map(str::to_owned) else {
        return Err(CliError::Failed(format!(
            "the trigger was accepted but the answer has no deployment_id: {answer}"
        )));
    };
    interrupts.arm();
    let detail_path = format!("/deployments/{id}");
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
    watch.begin(
        &backend
            .call_expecting("GET", &detail_path, None, 200)
            .await?,
    );

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
                let (status, answer) = backend
                    .call("POST", &format!("/deployments/{id}/cancel"), None)
                    .await?;
                if !matches!(status, 200 | 202 | 409) {
                    watch.note(&format!("cancel: {}", backend.error(status, &answer)));
                }
            }
            incoming = events.next(), if events_open => match incoming {
                Some(Incoming::Event { kind, data }) => watch.apply_event(&kind, &data),
                Some(Incoming::Lost) => watch.events_lost(),
                None => {
                    events_open = false;
                    watch.events_lost();
                }
            },
            _ = ticker.tick() => match backend.call_expecting("GET", &detail_path, None, 200).await {
                Ok(record) => {
                    poll_failures = 0;
                    watch.apply_record(&record);
                    if watch.logs_by_polling() {
                        watch.catch_up_logs(backend).await;
                    }
                }
                Err(error) => {
                    poll_failures += 1;
                    if poll_failures >= MAX_POLL_FAILURES {
                        watch.close();
                        return Err(CliError::Failed(format!(
                            "lost track of deployment {id}: {error}; see `deployment-mcp status {id}` later"
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
            Incoming::Event { kind, data } => watch.apply_event(&kind, &data),
            Incoming::Lost => watch.events_lost(),
        }
    }
    let record = backend
        .call_expecting("GET", &detail_path, None, 200)
        .await?;
    watch.apply_record(&record);
    watch.catch_up_logs(backend).await;
    watch.close();

    if request.json {
        output::print_json(&record);
    } else {
        print_summary(&record);
    }
    Ok(exit_code(&record))
}

/// 0 when the deployment completed and every environment succeeded, else 1.
fn exit_code(record: &Value) -> u8 {
    let all_succeeded = record["results"]
        .as_array()
        .is_some_and(|results| results.iter().all(|r| r["status"] == "succeeded"));
    if record["status"] == "completed" && all_succeeded {
        0
    } else {
        1
    }
}

fn print_summary(record: &Value) {
    let empty = Vec::new();
    let results = record["results"].as_array().unwrap_or(&empty);
    let mut table = Table::new(&["ENVIRONMENT", "STATUS", "DURATION", "EXIT", "ERROR"]);
    for result in results {
        table.row(vec![
            output::text(&result["environment_id"]),
            output::text(&result["status"]),
            output::duration(result["duration_ms"].as_u64()),
            output::text(&result["exit_code"]),
            output::text(&result["error"]),
        ]);
    }
    outln!();
    table.print();
    let succeeded = results
        .iter()
        .filter(|r| r["status"] == "succeeded")
        .count();
    outln!();
    outln!("deployment: {}", output::text(&record["deployment_id"]));
    outln!(
        "status:     {} ({succeeded} of {} environment(s) succeeded, {})",
        output::text(&record["status"]),
        results.len(),
        output::duration(record["duration_ms"].as_u64())
    );
    outln!("version:    {}", output::text(&record["version"]));
    if let Some(errors) = record["errors"].as_array() {
        for error in errors {
            outln!("error:      {}", output::text(error));
        }
    }
}

/// Where each environment is, as far as we know.
struct TargetView {
    status: String,
    verified: bool,
}

fn target_rank(status: &str) -> u8 {
    match status {
        "pending" => 0,
        "triggering" => 1,
        "running" => 2,
        _ => 3,
    }
}

fn is_terminal_target(status: &str) -> bool {
    target_rank(status) == 3
}

const PHASES: [&str; 7] = [
    "pending",
    "ec2_deploying",
    "ec2_completed",
    "local_triggering",
    "local_deploying",
    "local_completed",
    "verifying",
];

fn phase_rank(phase: &str) -> usize {
    PHASES
        .iter()
        .position(|known| *known == phase)
        .unwrap_or(PHASES.len())
}

pub fn is_terminal_phase(phase: &str) -> bool {
    matches!(phase, "completed" | "failed" | "cancelled" | "interrupted")
}

struct Watch {
    id: String,
    display: Display,
    started: bool,
    phase: String,
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
            phase: String::new(),
            progress: 0,
            order: Vec::new(),
            targets: HashMap::new(),
            follow_logs,
            logs_from_events: true,
            printed_logs: 0,
        }
    }

    fn finished(&self) -> bool {
        is_terminal_phase(&self.phase)
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
        let phase = self.phase.clone();
        self.display.close(&phase);
    }

    /// Shows the deployment's start: its environments and version.
    fn begin(&mut self, record: &Value) {
        if !self.started {
            self.started = true;
            if let Some(ids) = record["environments"].as_array() {
                for id in ids.iter().filter_map(Value::as_str) {
                    self.add_target(id);
                }
            }
            let line = format!(
                "deployment {} started: {} environment(s) ({}), version {}",
                self.id,
                self.order.len(),
                self.order.join(", "),
                output::text(&record["version"])
            );
            self.display.start(&line, &self.id, &self.order);
        }
    }

    fn apply_record(&mut self, record: &Value) {
        self.begin(record);
        // In the order it happened: the phase before the environments it moves, the end after.
        let phase = record["status"].as_str().unwrap_or_default();
        if !is_terminal_phase(phase) {
            self.apply_phase(phase, record["progress"].as_u64());
        }
        if let Some(results) = record["results"].as_array() {
            for target in results {
                self.apply_target(target);
            }
        }
        self.apply_phase(phase, record["progress"].as_u64());
    }

    fn apply_event(&mut self, kind: &str, data: &Value) {
        if data["deployment_id"].as_str() != Some(self.id.as_str()) {
            return;
        }
        match kind {
            "deployment.phase" => self.apply_phase(
                data["status"].as_str().unwrap_or_default(),
                data["progress"].as_u64(),
            ),
            "deployment.environment" => {
                self.apply_target(&data["environment"]);
                if let Some(progress) = data["progress"].as_u64() {
                    if progress > self.progress {
                        self.progress = progress;
                        self.display.progress(progress);
                    }
                }
            }
            "deployment.log" if self.follow_logs && self.logs_from_events => {
                if let Some(lines) = data["lines"].as_array() {
                    for line in lines {
                        self.display.log(line);
                        self.printed_logs += 1;
                    }
                }
            }
            _ => {}
        }
    }

    fn add_target(&mut self, id: &str) {
        if !self.targets.contains_key(id) {
            self.order.push(id.to_owned());
            self.targets.insert(
                id.to_owned(),
                TargetView {
                    status: "pending".into(),
                    verified: false,
                },
            );
            if self.started {
                self.display.add_target(id);
            }
        }
    }

    fn apply_phase(&mut self, phase: &str, progress: Option<u64>) {
        if phase.is_empty() {
            return;
        }
        let progress = progress.unwrap_or(self.progress).max(self.progress);
        let advanced = self.phase.is_empty()
            || (!is_terminal_phase(&self.phase) && phase_rank(phase) > phase_rank(&self.phase));
        if advanced {
            self.phase = phase.to_owned();
            self.progress = progress;
            self.display.phase(phase, progress);
        } else if progress > self.progress {
            self.progress = progress;
            self.display.progress(progress);
        }
    }

    fn apply_target(&mut self, target: &Value) {
        let (Some(id), Some(status)) =
            (target["environment_id"].as_str(), target["status"].as_str())
        else {
            return;
        };
        self.add_target(id);
        let verified = !target["health"].is_null();
        let Some(view) = self.targets.get_mut(id) else {
            return;
        };
        // A verification can still turn a succeeded environment failed: a later terminal
        // status counts only when it carries the health check's result.
        let newer = target_rank(status) > target_rank(&view.status)
            || (is_terminal_target(status) && verified && !view.verified && status != view.status);
        if newer {
            view.status = status.to_owned();
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
        let path = format!("/deployments/{}/logs", self.id);
        let Ok((200, answer)) = backend.call("GET", &path, None).await else {
            return;
        };
        if let Some(lines) = answer["lines"].as_array() {
            for line in lines.iter().skip(self.printed_logs) {
                self.display.log(line);
            }
            self.printed_logs = self.printed_logs.max(lines.len());
        }
    }
}

/// How progress is shown: bars on a terminal, timestamped lines otherwise, nothing for --json.
enum Display {
    Plain,
    Bars(Bars),
    Quiet,
}

fn target_line(target: &Value) -> String {
    let id = output::text(&target["environment_id"]);
    let status = output::text(&target["status"]);
    let mut line = format!("{id} {status}");
    if is_terminal_target(&status) {
        let mut facts = Vec::new();
        if !target["exit_code"].is_null() {
            facts.push(format!("exit {}", target["exit_code"]));
        }
        if let Some(ms) = target["duration_ms"].as_u64() {
            facts.push(output::duration(Some(ms)));
        }
        if !facts.is_empty() {
            line.push_str(&format!(" ({})", facts.join(", ")));
        }
        if let Some(error) = target["error"].as_str() {
            line.push_str(": ");
            line.push_str(error);
        }
    }
    line
}

fn log_line(line: &Value) -> String {
    let source = line["environment"]
        .as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| "deployment".into());
    format!(
        "{} {source} {}: {}",
        output::short_time(line["ts"].as_str().unwrap_or_default()),
        output::text(&line["stream"]),
        line["line"].as_str().unwrap_or_default()
    )
}

impl Display {
    fn start(&mut self, line: &str, id: &str, targets: &[String]) {
        match self {
            Display::Plain => outln!("{} {line}", output::now()),
            Display::Bars(bars) => bars.start(id, targets),
            Display::Quiet => {}
        }
    }

    fn add_target(&mut self, id: &str) {
        if let Display::Bars(bars) = self {
            bars.add_target(id);
        }
    }

    fn phase(&mut self, phase: &str, progress: u64) {
        match self {
            Display::Plain => outln!("{} deployment {phase} {progress}%", output::now()),
            Display::Bars(bars) => bars.phase(phase, progress),
            Display::Quiet => {}
        }
    }

    fn progress(&mut self, progress: u64) {
        if let Display::Bars(bars) = self {
            bars.header.set_position(progress);
        }
    }

    fn target(&mut self, target: &Value) {
        match self {
            Display::Plain => outln!("{} {}", output::now(), target_line(target)),
            Display::Bars(bars) => bars.target(target),
            Display::Quiet => {}
        }
    }

    fn log(&self, line: &Value) {
        match self {
            Display::Plain => outln!("{}", log_line(line)),
            Display::Bars(bars) => bars.println(&log_line(line)),
            Display::Quiet => {}
        }
    }

    fn note(&self, text: &str) {
        match self {
            Display::Bars(bars) => bars.println(text),
            Display::Plain | Display::Quiet => eprintln!("{text}"),
        }
    }

    fn close(&mut self, phase: &str) {
        if let Display::Bars(bars) = self {
            bars.close(phase);
        }
    }
}

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_spinner())
}

struct Bars {
    multi: MultiProgress,
    header: ProgressBar,
    targets: HashMap<String, ProgressBar>,
    /// Every environment's status, for the aggregate line when there are too many for bars.
    statuses: HashMap<String, String>,
    width: usize,
    aggregate: bool,
}

impl Bars {
    fn new() -> Bars {
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stdout());
        let header = multi.add(ProgressBar::new(100).with_style(style(
            "{spinner:.cyan} {prefix:.bold} [{bar:30.cyan/blue}] {pos:>3}% {msg}",
        )));
        header.enable_steady_tick(Duration::from_millis(120));
        Bars {
            multi,
            header,
            targets: HashMap::new(),
            statuses: HashMap::new(),
            width: 12,
            aggregate: false,
        }
    }

    fn start(&mut self, id: &str, targets: &[String]) {
        self.header.set_prefix(format!("deployment {id}"));
        self.width = targets.iter().map(|t| t.len()).max().unwrap_or(0).max(12);
        self.aggregate = targets.len() > MAX_BARS;
        for target in targets {
            self.add_target(target);
        }
    }

    fn add_target(&mut self, id: &str) {
        self.statuses.insert(id.to_owned(), "pending".into());
        if self.aggregate || self.targets.contains_key(id) {
            return;
        }
        if self.targets.len() >= MAX_BARS {
            // More environments showed up than fit: switch to the aggregate line.
            self.aggregate = true;
            return;
        }
        let bar = self.multi.add(
            ProgressBar::new_spinner()
                .with_style(style(&format!(
                    "  {{spinner:.cyan}} {{prefix:<{}}} {{msg}}",
                    self.width
                )))
                .with_prefix(id.to_owned())
                .with_message("pending"),
        );
        bar.enable_steady_tick(Duration::from_millis(120));
        self.targets.insert(id.to_owned(), bar);
    }

    fn phase(&mut self, phase: &str, progress: u64) {
        self.header.set_position(progress);
        self.refresh_message(phase);
    }

    fn refresh_message(&self, phase: &str) {
        if !self.aggregate {
            self.header.set_message(phase.to_owned());
            return;
        }
        let mut counts: Vec<(String, usize)> = Vec::new();
        for status in self.statuses.values() {
            match counts.iter_mut().find(|(known, _)| known == status) {
                Some((_, count)) => *count += 1,
                None => counts.push((status.clone(), 1)),
            }
        }
        counts.sort();
        let counts: Vec<String> = counts
            .iter()
            .map(|(status, count)| format!("{count} {status}"))
            .collect();
        self.header
            .set_message(format!("{phase} · {}", counts.join(", ")));
    }

    fn target(&mut self, target: &Value) {
        let id = output::text(&target["environment_id"]);
        let status = output::text(&target["status"]);
        self.statuses.insert(id.clone(), status.clone());
        let terminal = is_terminal_target(&status);
        match self.targets.get(&id) {
            Some(bar) if terminal => {
                let mark = if status == "succeeded" { "✔" } else { "✘" };
                bar.set_style(style(&format!(
                    "  {mark} {{prefix:<{}}} {{msg}}",
                    self.width
                )));
                let line = target_line(target);
                let rest = line.strip_prefix(&id).unwrap_or(&line).trim_start();
                bar.finish_with_message(rest.to_owned());
            }
            Some(bar) => bar.set_message(status),
            None => {
                if terminal && status != "succeeded" {
                    self.println(&target_line(target));
                }
            }
        }
        if self.aggregate {
            let phase = self.header.message().to_string();
            let phase = phase.split(" · ").next().unwrap_or_default().to_owned();
            self.refresh_message(&phase);
        }
    }

    fn println(&self, text: &str) {
        // The terminal may be gone; the deployment goes on regardless.
        let _ = self.multi.println(text);
    }

    fn close(&mut self, phase: &str) {
        for bar in self.targets.values() {
            if !bar.is_finished() {
                bar.abandon();
            }
        }
        self.refresh_message(phase);
        // Not `finish`: that would show 100% for a failed deployment.
        self.header.abandon();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_only_move_forward() {
        let mut watch = Watch::new("dep-1-ab".into(), Display::Quiet, false);
        watch.apply_record(&json!({"status": "local_deploying", "progress": 10,
            "environments": ["a"], "results": [{"environment_id": "a", "status": "succeeded"}]}));
        watch.apply_event(
            "deployment.environment",
            &json!({"deployment_id": "dep-1-ab", "environment": {"environment_id": "a", "status": "running"}}),
        );
        assert_eq!(watch.targets["a"].status, "succeeded");
        watch.apply_event(
            "deployment.environment",
            &json!({"deployment_id": "dep-1-ab", "environment": {"environment_id": "a", "status": "failed", "health": {"healthy": false}}}),
        );
        assert_eq!(watch.targets["a"].status, "failed");
        watch.apply_event(
            "deployment.phase",
            &json!({"deployment_id": "dep-1-ab", "status": "pending"}),
        );
        assert_eq!(watch.phase, "local_deploying");
        watch.apply_event(
            "deployment.phase",
            &json!({"deployment_id": "other", "status": "failed"}),
        );
        assert!(!watch.finished());
        watch.apply_event(
            "deployment.phase",
            &json!({"deployment_id": "dep-1-ab", "status": "failed"}),
        );
        assert!(watch.finished());
    }

    #[test]
    fn exit_code_needs_every_environment() {
        let ok = json!({"status": "completed", "results": [{"status": "succeeded"}]});
        let failed =
            json!({"status": "failed", "results": [{"status": "succeeded"}, {"status": "failed"}]});
        assert_eq!(exit_code(&ok), 0);
        assert_eq!(exit_code(&failed), 1);
        assert_eq!(exit_code(&json!({"status": "cancelled", "results": []})), 1);
    }
}
