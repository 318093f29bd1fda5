//! How `deploy` shows a deployment's progress: a bar per environment (or one aggregate line
//! when there are many) on a terminal, one timestamped line per change otherwise, nothing with
//! `--json`. What is shown comes from `deploy`'s `Watch`, which only moves statuses forward.

use std::{collections::HashMap, time::Duration};

use deployment_mcp_core::{deployment::TargetStatus, model::LogLine, wire::TargetResult};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::output::{self, outln};

/// Above this many environments, one aggregate bar replaces the per-environment ones.
const MAX_BARS: usize = 16;

/// How progress is shown: bars on a terminal, timestamped lines otherwise, nothing for --json.
pub enum Display {
    Plain,
    Bars(Bars),
    Quiet,
}

fn target_line(target: &TargetResult) -> String {
    let mut line = format!("{} {}", target.environment_id, target.status.as_str());
    if target.status.is_terminal() {
        let mut facts = Vec::new();
        if let Some(code) = target.exit_code {
            facts.push(format!("exit {code}"));
        }
        if let Some(ms) = target.duration_ms {
            facts.push(output::duration(Some(ms)));
        }
        if !facts.is_empty() {
            line.push_str(&format!(" ({})", facts.join(", ")));
        }
        if let Some(Some(error)) = &target.error {
            line.push_str(": ");
            line.push_str(&output::printable(error));
        }
    }
    line
}

fn log_line(line: &LogLine) -> String {
    format!(
        "{} {} {}: {}",
        output::short_time(&line.ts),
        line.environment.as_deref().unwrap_or("deployment"),
        line.stream.as_str(),
        output::printable(&line.line)
    )
}

impl Display {
    pub fn start(&mut self, line: &str, id: &str, targets: &[String]) {
        match self {
            Display::Plain => outln!("{} {line}", output::now()),
            Display::Bars(bars) => bars.start(id, targets),
            Display::Quiet => {}
        }
    }

    pub fn add_target(&mut self, id: &str) {
        if let Display::Bars(bars) = self {
            bars.add_target(id);
        }
    }

    pub fn phase(&mut self, phase: &str, progress: u64) {
        match self {
            Display::Plain => outln!("{} deployment {phase} {progress}%", output::now()),
            Display::Bars(bars) => bars.phase(phase, progress),
            Display::Quiet => {}
        }
    }

    pub fn progress(&mut self, progress: u64) {
        if let Display::Bars(bars) = self {
            bars.header.set_position(progress);
        }
    }

    pub fn target(&mut self, target: &TargetResult) {
        match self {
            Display::Plain => outln!("{} {}", output::now(), target_line(target)),
            Display::Bars(bars) => bars.target(target),
            Display::Quiet => {}
        }
    }

    pub fn log(&self, line: &LogLine) {
        match self {
            Display::Plain => outln!("{}", log_line(line)),
            Display::Bars(bars) => bars.println(&log_line(line)),
            Display::Quiet => {}
        }
    }

    pub fn note(&self, text: &str) {
        match self {
            Display::Bars(bars) => bars.println(text),
            Display::Plain | Display::Quiet => eprintln!("{text}"),
        }
    }

    pub fn close(&mut self, phase: &str) {
        if let Display::Bars(bars) = self {
            bars.close(phase);
        }
    }
}

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_spinner())
}

pub struct Bars {
    multi: MultiProgress,
    header: ProgressBar,
    targets: HashMap<String, ProgressBar>,
    /// Every environment's status, for the aggregate line when there are too many for bars.
    statuses: HashMap<String, String>,
    width: usize,
    aggregate: bool,
}

impl Bars {
    pub fn new() -> Bars {
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

    fn target(&mut self, target: &TargetResult) {
        let id = target.environment_id.to_string();
        let status = target.status;
        self.statuses.insert(id.clone(), status.as_str().to_owned());
        let terminal = status.is_terminal();
        match self.targets.get(&id) {
            Some(bar) if terminal => {
                let mark = if status == TargetStatus::Succeeded {
                    "✔"
                } else {
                    "✘"
                };
                bar.set_style(style(&format!(
                    "  {mark} {{prefix:<{}}} {{msg}}",
                    self.width
                )));
                let line = target_line(target);
                let rest = line.strip_prefix(&id).unwrap_or(&line).trim_start();
                bar.finish_with_message(rest.to_owned());
            }
            Some(bar) => bar.set_message(status.as_str()),
            None => {
                if terminal && status != TargetStatus::Succeeded {
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
