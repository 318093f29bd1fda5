//! `deployment-mcp schedules`: list, show, next, create and delete schedules, in-process on the
//! local store or against a host with `--server`.

use clap::Subcommand;
use deployment_mcp_core::{
    client::DeploymentApi,
    schedules::{RunOutcome, ScheduleSpec},
};

use crate::{
    backend::Backend,
    output::{self, outln},
    CliError,
};

#[derive(Debug, Subcommand)]
pub enum SchedulesAction {
    /// Table of id, when, zone, what it triggers and whether it is enabled (the default)
    List,
    /// One schedule: its last runs (what became of each occurrence) and its next ones
    Show {
        /// The schedule id
        id: String,
    },
    /// Its next occurrences (UTC), from now or from --from
    Next {
        /// The schedule id
        id: String,
        /// An RFC 3339 instant instead of now
        #[arg(long, value_name = "TIME")]
        from: Option<String>,
        /// How many (1 to 100)
        #[arg(long, default_value_t = 10)]
        count: u32,
    },
    /// Create a schedule from its JSON (README: Schedules), e.g.
    /// '{"id":"nightly","rrule":"FREQ=DAILY;BYHOUR=2","dtstart":"2027-01-01T02:00:00","time_zone":"Europe/Berlin","trigger":{"selector":{"tier":"staging"}}}'
    Create {
        /// The schedule as JSON
        #[arg(value_name = "JSON")]
        schedule: String,
    },
    /// Delete a schedule (and the record of its runs)
    Delete {
        /// The schedule id
        id: String,
    },
}

pub async fn run(backend: &Backend, action: SchedulesAction, json: bool) -> Result<u8, CliError> {
    let api = backend.api();
    match action {
        SchedulesAction::List => {
            let answer = api.schedules().await?;
            if json {
                output::print_json(&answer);
                return Ok(0);
            }
            if answer.schedules.is_empty() {
                outln!("no schedules");
                return Ok(0);
            }
            let mut table =
                output::Table::new(&["ID", "WHEN", "ZONE", "TRIGGERS", "ENABLED", "CATCH UP"]);
            for spec in &answer.schedules {
                table.row(vec![
                    spec.id.clone(),
                    when(spec),
                    output::dash(spec.time_zone.as_deref().or(Some("UTC"))),
                    triggers(spec),
                    if spec.enabled { "yes" } else { "no" }.into(),
                    format!("{:?}", spec.catch_up).to_lowercase(),
                ]);
            }
            table.print();
            Ok(0)
        }
        SchedulesAction::Show { id } => {
            let answer = api.schedule(&id).await?;
            if json {
                output::print_json(&answer);
                return Ok(0);
            }
            let spec = &answer.schedule;
            outln!("schedule {}: {} ({})", spec.id, when(spec), triggers(spec));
            if !spec.enabled {
                outln!("disabled");
            }
            if answer.next_runs.is_empty() {
                outln!("next: none");
            } else {
                let next: Vec<String> = answer.next_runs.iter().map(ToString::to_string).collect();
                outln!("next: {}", next.join(", "));
            }
            if answer.last_runs.is_empty() {
                outln!("no runs yet");
                return Ok(0);
            }
            let mut table = output::Table::new(&["OCCURRENCE", "HANDLED", "OUTCOME", "DETAIL"]);
            for run in &answer.last_runs {
                let (outcome, detail) = match &run.outcome {
                    RunOutcome::Started { deployment_id } => ("started", deployment_id.to_string()),
                    RunOutcome::Refused { error, message } => {
                        ("refused", format!("{error}: {message}"))
                    }
                    RunOutcome::Skipped => ("skipped", "missed while no node ran".to_owned()),
                };
                let mut detail = detail;
                if run.missed > 0 {
                    detail.push_str(&format!(" ({} earlier missed)", run.missed));
                }
                table.row(vec![
                    run.occurrence.to_string(),
                    run.handled_at.to_string(),
                    outcome.into(),
                    detail,
                ]);
            }
            table.print();
            Ok(0)
        }
        SchedulesAction::Next { id, from, count } => {
            let answer = api.schedule_next(&id, from.as_deref(), Some(count)).await?;
            if json {
                output::print_json(&answer);
            } else if answer.next.is_empty() {
                outln!("{id} does not fire again");
            } else {
                for at in &answer.next {
                    outln!("{at}");
                }
            }
            Ok(0)
        }
        SchedulesAction::Create { schedule: text } => {
            let spec: ScheduleSpec = serde_json::from_str(&text).map_err(|error| {
                CliError::Usage(format!(
                    "the schedule is not valid JSON of a schedule: {error}"
                ))
            })?;
            let created = api.create_schedule(&spec).await?;
            if json {
                output::print_json(&created);
            } else {
                outln!("schedule {} created", created.id);
            }
            Ok(0)
        }
        SchedulesAction::Delete { id } => {
            let deleted = api.delete_schedule(&id).await?;
            if json {
                output::print_json(&deleted);
            } else {
                outln!("schedule {} deleted", deleted.deleted);
            }
            Ok(0)
        }
    }
}

fn when(spec: &ScheduleSpec) -> String {
    match (&spec.at, &spec.rrule) {
        (Some(at), _) => format!("once at {at}"),
        (None, Some(rule)) => format!("{rule} from {}", spec.dtstart.as_deref().unwrap_or("?")),
        (None, None) => "-".into(),
    }
}

fn triggers(spec: &ScheduleSpec) -> String {
    let trigger = &spec.trigger;
    let what = output::scope(
        trigger.environments.as_deref(),
        trigger.selector.as_ref(),
        "every enabled environment",
    );
    match &trigger.version {
        Some(version) => format!("{what} @ {version}"),
        None => what,
    }
}
