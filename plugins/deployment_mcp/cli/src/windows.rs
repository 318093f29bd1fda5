//! `deployment-mcp windows`: list, explain, create and delete deployment windows, and the
//! calendar of windows and schedules per environment, in-process on the local store or against
//! a host with `--server`.

use std::collections::HashMap;

use clap::Subcommand;
use deployment_mcp_core::{
    client::DeploymentApi,
    model::Timestamp,
    windows::{WindowKind, WindowSpec},
    wire::Calendar,
};

use crate::{
    backend::Backend,
    output::{self, outln},
    CliError,
};

#[derive(Debug, Subcommand)]
pub enum WindowsAction {
    /// Table of id, kind, when, zone, scope and reason (the default)
    List,
    /// Whether an environment may deploy now (or at --at), and if not, which window closes it
    /// and when it opens; exits 1 when it may not
    Explain {
        /// The environment id
        environment: String,
        /// An RFC 3339 instant instead of now
        #[arg(long, value_name = "TIME")]
        at: Option<String>,
    },
    /// When windows close each environment and when schedules deploy it, over some days: one
    /// line per closed span or scheduled run, in time order
    Calendar {
        /// An RFC 3339 instant to start from instead of now
        #[arg(long, value_name = "TIME")]
        from: Option<String>,
        /// How many days (1 to 31)
        #[arg(long, default_value_t = 7)]
        days: u32,
        /// Only this environment
        #[arg(long, value_name = "ID")]
        environment: Option<String>,
    },
    /// Create a window from its JSON (README: Deployment windows), e.g.
    /// '{"id":"freeze","kind":"deny","start":"2027-03-28T00:00:00Z","end":"2027-04-02T00:00:00Z"}'
    Create {
        /// The window as JSON
        #[arg(value_name = "JSON")]
        window: String,
    },
    /// Delete a window
    Delete {
        /// The window id
        id: String,
    },
}

pub async fn run(backend: &Backend, action: WindowsAction, json: bool) -> Result<u8, CliError> {
    let api = backend.api();
    match action {
        WindowsAction::List => {
            let answer = api.windows().await?;
            if json {
                output::print_json(&answer);
                return Ok(0);
            }
            if answer.windows.is_empty() {
                outln!("no deployment windows");
                return Ok(0);
            }
            let mut table = output::Table::new(&["ID", "KIND", "WHEN", "ZONE", "SCOPE", "REASON"]);
            for spec in &answer.windows {
                table.row(vec![
                    spec.id.clone(),
                    format!("{:?}", spec.kind).to_lowercase(),
                    when(spec),
                    output::dash(spec.time_zone.as_deref().or(Some("UTC"))),
                    scope(spec),
                    output::dash(spec.reason.as_deref()),
                ]);
            }
            table.print();
            Ok(0)
        }
        WindowsAction::Explain { environment, at } => {
            let answer = api.explain_window(&environment, at.as_deref()).await?;
            if json {
                output::print_json(&answer);
            } else if answer.verdict.allowed {
                outln!("{environment} may deploy at {}", answer.at);
            } else {
                let opens = answer
                    .verdict
                    .opens_at
                    .map_or("not within 400 days".to_owned(), |at| format!("at {at}"));
                outln!(
                    "{environment} is closed at {} by window {}; it opens {opens}",
                    answer.at,
                    answer.verdict.window.as_deref().unwrap_or("?")
                );
            }
            Ok(u8::from(!answer.verdict.allowed))
        }
        WindowsAction::Calendar {
            from,
            days,
            environment,
        } => {
            let mut answer = api.calendar(from.as_deref(), Some(days)).await?;
            if let Some(id) = &environment {
                answer.environments.retain(|row| &row.environment_id == id);
                if answer.environments.is_empty() {
                    return Err(CliError::Usage(format!("no environment {id:?}")));
                }
            }
            if json {
                output::print_json(&answer);
                return Ok(0);
            }
            calendar_table(&answer);
            Ok(0)
        }
        WindowsAction::Create { window: text } => {
            let spec: WindowSpec = serde_json::from_str(&text).map_err(|error| {
                CliError::Usage(format!("the window is not valid JSON of a window: {error}"))
            })?;
            let created = api.create_window(&spec).await?;
            if json {
                output::print_json(&created);
            } else {
                outln!("window {} created", created.id);
            }
            Ok(0)
        }
        WindowsAction::Delete { id } => {
            let deleted = api.delete_window(&id).await?;
            if json {
                output::print_json(&deleted);
            } else {
                outln!("window {} deleted", deleted.deleted);
            }
            Ok(0)
        }
    }
}

fn when(spec: &WindowSpec) -> String {
    match (&spec.start, &spec.end, &spec.rrule) {
        (Some(start), Some(end), _) => format!("{start} .. {end}"),
        (_, _, Some(rule)) => format!(
            "{rule} from {} for {} s",
            spec.dtstart.as_deref().unwrap_or("?"),
            spec.duration_secs.unwrap_or(0)
        ),
        _ => "-".into(),
    }
}

fn scope(spec: &WindowSpec) -> String {
    output::scope(
        spec.environments.as_deref(),
        spec.selector.as_ref(),
        "every environment",
    )
}

/// One line per closed span and per scheduled run, by time, then environment.
fn calendar_table(calendar: &Calendar) {
    let runs: HashMap<&str, &[Timestamp]> = calendar
        .schedules
        .iter()
        .map(|schedule| (schedule.id.as_str(), schedule.runs.as_slice()))
        .collect();
    let kinds: HashMap<&str, WindowKind> = calendar
        .windows
        .iter()
        .map(|window| (window.id.as_str(), window.kind))
        .collect();
    let mut lines: Vec<(Timestamp, &str, String, String)> = Vec::new();
    for row in &calendar.environments {
        let id = row.environment_id.as_str();
        let Some(group) = calendar.groups.get(row.group) else {
            continue;
        };
        if let Some(until) = group.exact_until {
            lines.push((
                until,
                id,
                "-".into(),
                "(more windows after this than one answer lists; ask from here)".into(),
            ));
        }
        for span in &group.closed {
            let kind = match kinds.get(span.window.as_str()) {
                Some(WindowKind::Deny) => "closed by freeze",
                Some(WindowKind::Allow) => "closed outside allow window",
                None => "closed by",
            };
            lines.push((
                span.start,
                id,
                span.end.to_string(),
                format!("{kind} {}", span.window),
            ));
        }
        for schedule in &group.schedules {
            for run in runs.get(schedule.as_str()).copied().unwrap_or_default() {
                lines.push((*run, id, "-".into(), format!("schedule {schedule} deploys")));
            }
        }
    }
    if lines.is_empty() {
        outln!(
            "nothing closes an environment and no schedule fires from {} to {}",
            calendar.from,
            calendar.to
        );
        return;
    }
    lines.sort();
    let mut table = output::Table::new(&["AT", "ENVIRONMENT", "UNTIL", "WHAT"]);
    for (at, environment, until, what) in lines {
        table.row(vec![at.to_string(), environment.to_owned(), until, what]);
    }
    table.print();
}
