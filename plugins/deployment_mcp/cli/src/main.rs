//! `deployment-mcp`: the deployment plugin as a command-line tool.
//!
//! Every command is a client of the plugin's deployment API. By default the plugin runs in this
//! process on an environments file, with its store in `--data-dir` (see
//! `plugin_local_host`); with `--server` the same calls go to a running host over HTTP.

mod backend;
mod commands;
mod deploy;
mod mcp;
mod output;
mod progress;
mod schedules;
mod signals;
mod subscriptions;
mod windows;

use std::{path::PathBuf, process::ExitCode, time::Duration};

use clap::{Args, Parser, Subcommand};

use deployment_mcp_core::{
    client::DeploymentApi as _,
    deployment::Phase,
    rollout::{Amount, GateKind, OnFailure, RollbackMode, RolloutJson, StrategyJson, StrategyType},
    wire::HistoryQuery,
};

use crate::backend::{Backend, LocalOptions};

/// Parses a flag's value as the API spells it (`rolling`, `cancel_running`).
fn api_word<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, String> {
    serde_json::from_value(serde_json::Value::String(text.to_owned()))
        .map_err(|_| format!("{text:?} is not one of the accepted values (see --help)"))
}

const EXAMPLES: &str = "\
Examples:
  # Deploy every enabled environment of config/remote_environments.json, in this process
  deployment-mcp deploy --version 2.1.0

  # Deploy two environments of another file and show their output as it comes
  deployment-mcp --environments envs.toml deploy --env web-1 --env web-2 --follow-logs

  # The same through a running host
  deployment-mcp deploy --server http://127.0.0.1:8080 --api-key \"$KEY\" --env web-1

  # After an EC2 deployment (the original ec2_deployment_trigger.py)
  EC2_INSTANCE_ID=i-0abc EC2_PUBLIC_IP=203.0.113.7 DEPLOYMENT_VERSION=2.1.0 deployment-mcp ec2-trigger

  # Roll out in batches of 25%, stop at the first failure, roll the failed ones back
  deployment-mcp deploy --version 2.1.0 --batch-size 25% --max-failures 0 --rollback failed

  # One canary first, then wait for a person; approve (or reject) it later
  deployment-mcp deploy --version 2.1.0 --canary 1 --gate manual
  deployment-mcp approve dep-1764068400000-1a2b3c4d

  # Inspect
  deployment-mcp environments list
  deployment-mcp environments check
  deployment-mcp status
  deployment-mcp history --limit 10 --status failed

Modes:
  In-process (default): the plugin runs inside this command on --environments FILE; deployments,
  logs and history are kept in --data-dir. One command at a time may use a data directory.
  Client: with --server URL --api-key KEY (or DEPLOYMENT_MCP_SERVER / DEPLOYMENT_MCP_API_KEY)
  every command calls the host's /api/deployment API instead; the host's environments apply.

Output:
  On a terminal, deploy shows a progress bar per environment; otherwise one timestamped line
  per change (\"2026-11-25T11:00:00Z web-1 running\"). --json prints the API's JSON instead.
  Ctrl-C during deploy cancels the deployment in-process, or stops following it in client mode.

Exit status:
  0  success (deploy: every environment succeeded)
  1  failure (deploy: an environment or the deployment failed, was cancelled or interrupted;
     an environment is busy in another deployment; the server refused or is unreachable)
  2  usage or configuration error (bad flags, unreadable or invalid environments file,
     unknown environment id)
  3  deploy stopped at a manual canary gate: the deployment waits for approve or reject
  130  interrupted";

#[derive(Debug, Parser)]
#[command(
    name = "deployment-mcp",
    version,
    about = "Deploy to target environments (ssh, http_api, webhook, local) and follow the result",
    after_help = EXAMPLES,
    arg_required_else_help = true
)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Args)]
struct Global {
    /// Call this powerautomation host instead of running the plugin in-process
    #[arg(
        long,
        global = true,
        value_name = "URL",
        env = "DEPLOYMENT_MCP_SERVER",
        requires = "api_key"
    )]
    server: Option<String>,

    /// API key for --server (sent as X-API-Key; never printed)
    #[arg(
        long,
        global = true,
        value_name = "KEY",
        env = "DEPLOYMENT_MCP_API_KEY",
        hide_env_values = true
    )]
    api_key: Option<String>,

    /// Environments file, JSON (remote_environments.json format) or .toml
    /// [default: config/remote_environments.json]
    #[arg(long, global = true, value_name = "FILE", conflicts_with = "server")]
    environments: Option<PathBuf>,

    /// Where the in-process store (deployments, logs, history) lives
    #[arg(
        long,
        global = true,
        value_name = "DIR",
        default_value = "data/deployment-mcp",
        conflicts_with = "server"
    )]
    data_dir: PathBuf,

    /// Environment triggers running at once, in-process [default: 32]
    #[arg(
        long,
        global = true,
        value_name = "N",
        value_parser = clap::value_parser!(u32).range(1..=1024),
        conflicts_with = "server"
    )]
    max_parallel: Option<u32>,

    /// Print the API's JSON instead of tables and progress
    #[arg(long, global = true)]
    json: bool,

    /// Log what the plugin does (in-process) or each HTTP call (client mode) to stderr
    #[arg(long, short, global = true)]
    verbose: bool,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// List the registered environments, or validate them and run their health checks
    Environments {
        #[command(subcommand)]
        action: Option<EnvironmentsAction>,
    },
    /// Deploy to environments and follow the deployment until it ends
    #[command(after_help = "Examples:
  deployment-mcp deploy
  deployment-mcp deploy --env web-1 --env web-2 --version 2.1.0 --follow-logs
  deployment-mcp deploy --server http://127.0.0.1:8080 --api-key \"$KEY\" --json

Exits 0 only when every environment succeeded, 1 when any did not, 2 on usage errors.")]
    Deploy(DeployArgs),
    /// After an EC2 deployment: deploy every registered environment with $DEPLOYMENT_VERSION
    #[command(
        name = "ec2-trigger",
        after_help = "Reads EC2_INSTANCE_ID, EC2_PUBLIC_IP and DEPLOYMENT_VERSION from the environment, prints
them, then deploys every enabled environment like `deploy --version $DEPLOYMENT_VERSION`.
In-process, the triggers get the instance as PA_PLATFORM_INSTANCE_ID / EC2_INSTANCE_ID and
PA_PLATFORM_IP / EC2_PUBLIC_IP; with --server the host uses its own EC2 facts.

Example:
  EC2_INSTANCE_ID=i-0abc EC2_PUBLIC_IP=203.0.113.7 DEPLOYMENT_VERSION=2.1.0 deployment-mcp ec2-trigger"
    )]
    Ec2Trigger(FollowArgs),
    /// Active deployments and the latest finished one, or one deployment by id
    #[command(after_help = "Examples:
  deployment-mcp status
  deployment-mcp status dep-1764068400000-1a2b3c4d --json")]
    Status {
        /// A deployment id (as printed by deploy)
        id: Option<String>,
    },
    /// Continue a deployment waiting at its canary gate, and follow it to the end
    #[command(after_help = "Example:
  deployment-mcp approve dep-1764068400000-1a2b3c4d

Exits like deploy: 0 only when every environment succeeded.")]
    Approve {
        /// The deployment id (as printed by deploy)
        id: String,
        #[command(flatten)]
        follow: FollowArgs,
    },
    /// End a deployment waiting at its canary gate: it ends cancelled, the rest skipped
    Reject {
        /// The deployment id (as printed by deploy)
        id: String,
    },
    /// Roll a finished deployment's changed environments back to their previous version
    #[command(after_help = "Example:
  deployment-mcp rollback dep-1764068400000-1a2b3c4d

Exits 0 when it ends rolled_back, else 1.")]
    Rollback {
        /// The deployment id (as printed by deploy)
        id: String,
        #[command(flatten)]
        follow: FollowArgs,
    },
    /// Serve the deployment tools and resources over MCP on stdin/stdout, for a local agent
    #[command(
        after_help = "In-process on the environments file (as admin), or against a host with
--server URL --api-key KEY (with that key's role). Stdout carries the protocol only.

Example (an agent's config):
  {\"command\": \"deployment-mcp\", \"args\": [\"--environments\", \"envs.json\", \"mcp\"]}"
    )]
    Mcp {
        /// Hide every tool that changes something
        #[arg(long)]
        read_only: bool,
    },
    /// Deployment windows: when environments may deploy
    #[command(after_help = "Examples:
  deployment-mcp windows
  deployment-mcp windows explain web-1 --at 2027-03-30T12:00:00Z
  deployment-mcp windows create '{\"id\":\"q1-close\",\"kind\":\"deny\",\"start\":\"2027-03-28T00:00:00Z\",\"end\":\"2027-04-02T00:00:00Z\"}'
  deployment-mcp windows delete q1-close")]
    Windows {
        #[command(subcommand)]
        action: Option<windows::WindowsAction>,
    },
    /// Schedules: deployments started by the calendar
    #[command(after_help = "Examples:
  deployment-mcp schedules
  deployment-mcp schedules create '{\"id\":\"nightly\",\"rrule\":\"FREQ=DAILY;BYHOUR=2\",\"dtstart\":\"2027-01-01T02:00:00\",\"time_zone\":\"Europe/Berlin\"}'
  deployment-mcp schedules next nightly --count 5
  deployment-mcp schedules show nightly
  deployment-mcp schedules delete nightly")]
    Schedules {
        #[command(subcommand)]
        action: Option<schedules::SchedulesAction>,
    },
    /// Subscriptions: deployment events sent to webhooks, Slack or mail
    #[command(after_help = "Examples:
  deployment-mcp subscriptions
  deployment-mcp subscriptions create '{\"id\":\"ops-hook\",\"events\":[\"deployment.failed\",\"deployment.gate\"],\"channel\":{\"type\":\"webhook\",\"url\":\"https://hooks.example.com/deploy\",\"secret\":\"s3cret\"}}' --test
  deployment-mcp subscriptions deliveries ops-hook --limit 20
  deployment-mcp subscriptions redeliver ops-hook DELIVERY
  deployment-mcp subscriptions delete ops-hook")]
    Subscriptions {
        #[command(subcommand)]
        action: Option<subscriptions::SubscriptionsAction>,
    },
    /// Past deployments, newest first
    #[command(after_help = "Examples:
  deployment-mcp history
  deployment-mcp history --limit 5 --status failed --env web-1")]
    History {
        /// How many to show (1-500)
        #[arg(long, value_name = "N", default_value_t = 20,
              value_parser = clap::value_parser!(u32).range(1..=500))]
        limit: u32,
        /// Only deployments with this status (completed, failed, cancelled, interrupted, ...)
        #[arg(long, value_name = "STATUS")]
        status: Option<String>,
        /// Only deployments that included this environment
        #[arg(long = "env", value_name = "ID")]
        environment: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum EnvironmentsAction {
    /// Table of id, type, method, target, enabled and last health (the default)
    List,
    /// Validate the environments and run the health check of each one that has a URL; exits 1
    /// when any is unhealthy
    Check,
}

#[derive(Debug, Args)]
struct DeployArgs {
    /// Environment to deploy (repeat for more); default: every enabled environment
    // Not named `environments`: that id is the global --environments FILE.
    #[arg(long = "env", value_name = "ID")]
    env_ids: Vec<String>,
    /// Version to deploy; default: $DEPLOYMENT_VERSION where the plugin runs, else "unversioned"
    #[arg(long, value_name = "V")]
    version: Option<String>,
    #[command(flatten)]
    rollout: RolloutArgs,
    #[command(flatten)]
    follow: FollowArgs,
}

/// How the deployment rolls out (all environments at once when none is given).
#[derive(Debug, Args)]
#[command(next_help_heading = "Rollout")]
struct RolloutArgs {
    /// all_at_once, rolling or canary (implied by --batch-size and --canary)
    #[arg(long, value_name = "TYPE", value_parser = api_word::<StrategyType>)]
    strategy: Option<StrategyType>,
    /// Environments per batch of a rolling rollout: a count or a percentage (25%)
    #[arg(long, value_name = "N|P%")]
    batch_size: Option<Amount>,
    /// Seconds between rolling batches
    #[arg(long, value_name = "S")]
    pause_secs: Option<u64>,
    /// Environments in the canary batch, deployed first: a count or a percentage
    #[arg(long, value_name = "N|P%")]
    canary: Option<Amount>,
    /// After the canary: wait for `approve` (manual) or check health after --bake-secs (auto)
    #[arg(long, value_name = "GATE", default_value = "manual", value_parser = api_word::<GateKind>)]
    gate: GateKind,
    /// Seconds the canary runs before an auto gate checks it
    #[arg(long, value_name = "S", requires = "canary")]
    bake_secs: Option<u64>,
    /// Seconds a manual gate waits before the deployment ends cancelled (default a day)
    #[arg(long, value_name = "S", requires = "canary")]
    gate_timeout_secs: Option<u64>,
    /// Failures tolerated (a count or a percentage); one more stops the deployment
    #[arg(long, value_name = "N|P%")]
    max_failures: Option<Amount>,
    /// When failures exceed --max-failures: stop starting (stop) or also cancel the running
    #[arg(long, value_name = "WHAT", value_parser = api_word::<OnFailure>)]
    on_failure: Option<OnFailure>,
    /// When it fails, roll back the failed environments (failed) or every one it changed (all)
    #[arg(long, value_name = "WHAT", value_parser = api_word::<RollbackMode>)]
    rollback: Option<RollbackMode>,
}

impl RolloutArgs {
    /// The trigger body's rollout fields; the server checks them (errors name the field).
    fn to_json(&self) -> RolloutJson {
        let rolling = self.batch_size.is_some()
            || self.pause_secs.is_some()
            || self.strategy == Some(StrategyType::Rolling);
        let rolling = rolling.then(|| StrategyJson {
            kind: StrategyType::Rolling,
            batch_size: self.batch_size,
            pause_secs: self.pause_secs,
            ..StrategyJson::default()
        });
        let strategy = match (self.canary, rolling) {
            (Some(canary), then) => Some(StrategyJson {
                kind: StrategyType::Canary,
                canary: Some(canary),
                gate: Some(self.gate),
                bake_secs: self.bake_secs,
                gate_timeout_secs: self.gate_timeout_secs,
                then: then.map(Box::new),
                ..StrategyJson::default()
            }),
            (None, Some(rolling)) => Some(rolling),
            (None, None) => self.strategy.map(|kind| StrategyJson {
                kind,
                ..StrategyJson::default()
            }),
        };
        RolloutJson {
            strategy,
            max_failures: self.max_failures,
            on_failure: self.on_failure,
            rollback: self.rollback,
        }
    }
}

#[derive(Debug, Args)]
struct FollowArgs {
    /// Also print the environments' output lines as they come
    #[arg(long)]
    follow_logs: bool,
}

/// A failure, by exit status: usage and configuration errors are 2, everything else 1.
#[derive(Debug)]
pub enum CliError {
    Usage(String),
    Failed(String),
}

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CliError::Usage(message) | CliError::Failed(message) => f.write_str(message),
        }
    }
}

fn main() -> ExitCode {
    // Before any thread exists, so every thread inherits the blocked signals.
    let mut interrupts = signals::install();
    let cli = Cli::parse();
    if cli.global.verbose {
        let _ = tracing::dispatcher::set_global_default(plugin_local_host::stderr_dispatch(
            tracing::Level::DEBUG,
        ));
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("deployment-mcp")
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(run(cli, &mut interrupts));
    // Store calls in flight are short; do not wait forever on a stuck one.
    runtime.shutdown_timeout(Duration::from_secs(5));
    match result {
        Ok(code) => ExitCode::from(code),
        Err(CliError::Usage(message)) => {
            eprintln!("error: {message}");
            ExitCode::from(2)
        }
        Err(CliError::Failed(message)) => {
            eprintln!("error: {message}");
            ExitCode::from(1)
        }
    }
}

async fn run(cli: Cli, interrupts: &mut signals::Interrupts) -> Result<u8, CliError> {
    let global = &cli.global;
    let read_only = matches!(
        cli.command,
        Command::Status { .. }
            | Command::History { .. }
            | Command::Windows { .. }
            | Command::Schedules { .. }
            | Command::Subscriptions { .. }
    );
    let backend = match &global.server {
        Some(server) => Backend::remote(
            server,
            global.api_key.as_deref().unwrap_or_default(),
            global.verbose,
        )?,
        None => {
            Backend::local(LocalOptions {
                data_dir: global.data_dir.clone(),
                environments_file: global
                    .environments
                    .clone()
                    .unwrap_or_else(|| backend::default_environments_file().to_path_buf()),
                environments_explicit: global.environments.is_some(),
                file_optional: read_only,
                max_parallel: global.max_parallel,
                verbose: global.verbose,
            })
            .await?
        }
    };
    if let Command::Mcp { read_only } = cli.command {
        return mcp::serve(backend, read_only).await;
    }
    let result = execute(&backend, cli.command, global.json, interrupts).await;
    backend.close().await;
    result
}

async fn execute(
    backend: &Backend,
    command: Command,
    json: bool,
    interrupts: &mut signals::Interrupts,
) -> Result<u8, CliError> {
    match command {
        Command::Environments { action } => match action.unwrap_or(EnvironmentsAction::List) {
            EnvironmentsAction::List => commands::environments_list(backend, json).await,
            EnvironmentsAction::Check => commands::environments_check(backend, json).await,
        },
        Command::Deploy(args) => {
            let request = deploy::DeployRequest {
                environments: args.env_ids,
                version: args.version,
                rollout: args.rollout.to_json(),
                follow_logs: args.follow.follow_logs,
                json,
            };
            deploy::run(backend, request, interrupts).await
        }
        Command::Ec2Trigger(args) => {
            let variable = |name: &str| {
                std::env::var(name)
                    .ok()
                    .filter(|value| !value.trim().is_empty())
            };
            let version = variable("DEPLOYMENT_VERSION");
            let facts = [
                ("EC2_INSTANCE_ID", variable("EC2_INSTANCE_ID")),
                ("EC2_PUBLIC_IP", variable("EC2_PUBLIC_IP")),
                ("DEPLOYMENT_VERSION", version.clone()),
            ];
            // On stderr with --json, so stdout stays one JSON document.
            for (name, value) in &facts {
                let value = value.as_deref().unwrap_or("(not set)");
                if json {
                    eprintln!("{name}: {value}");
                } else {
                    output::outln!("{name}: {value}");
                }
            }
            if backend.is_remote() && (facts[0].1.is_some() || facts[1].1.is_some()) {
                eprintln!(
                    "note: with --server the host hands its own EC2 instance facts to the triggers"
                );
            }
            let request = deploy::DeployRequest {
                environments: Vec::new(),
                version,
                rollout: RolloutJson::default(),
                follow_logs: args.follow_logs,
                json,
            };
            deploy::run(backend, request, interrupts).await
        }
        Command::Status { id } => commands::status(backend, id.as_deref(), json).await,
        // Served before this, with the backend it owns.
        Command::Mcp { .. } => Err(CliError::Usage("mcp is served on its own".into())),
        Command::Approve { id, follow } => {
            let events = backend.subscribe().await;
            backend.api().approve(&id).await?;
            let follow = deploy::Follow {
                follow_logs: follow.follow_logs,
                json,
                success: deploy::completed_everywhere,
            };
            deploy::follow_to_end(backend, id, events, follow, interrupts).await
        }
        Command::Reject { id } => {
            let summary = backend.api().reject(&id).await?;
            if json {
                output::print_json(&summary);
            } else {
                output::outln!(
                    "deployment {id} rejected at its gate: {}",
                    summary.entry.status.as_str()
                );
            }
            Ok(0)
        }
        Command::Rollback { id, follow } => {
            let events = backend.subscribe().await;
            backend.api().rollback(&id).await?;
            let follow = deploy::Follow {
                follow_logs: follow.follow_logs,
                json,
                success: |record| record.status == Phase::RolledBack,
            };
            deploy::follow_to_end(backend, id, events, follow, interrupts).await
        }
        Command::Windows { action } => {
            windows::run(
                backend,
                action.unwrap_or(windows::WindowsAction::List),
                json,
            )
            .await
        }
        Command::Schedules { action } => {
            schedules::run(
                backend,
                action.unwrap_or(schedules::SchedulesAction::List),
                json,
            )
            .await
        }
        Command::Subscriptions { action } => {
            subscriptions::run(
                backend,
                action.unwrap_or(subscriptions::SubscriptionsAction::List),
                json,
            )
            .await
        }
        Command::History {
            limit,
            status,
            environment,
        } => {
            let query = HistoryQuery {
                limit: Some(limit),
                cursor: None,
                status,
                environment,
            };
            commands::history(backend, query, json).await
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    #[test]
    fn command_line_is_consistent() {
        Cli::command().debug_assert();
    }
}
