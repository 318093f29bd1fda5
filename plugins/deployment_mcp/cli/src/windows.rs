//! `deployment-mcp windows`: list, explain, create and delete deployment windows, in-process on
//! the local store or against a host with `--server`.

use clap::Subcommand;
use deployment_mcp_core::{client::DeploymentApi, windows::WindowSpec};

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
