//! The read commands and the environment check: one API call (or a few), printed readably.

use std::collections::BTreeMap;

use deployment_mcp_core::{
    client::DeploymentApi as _,
    wire::{
        ConnectionDetails, DeploymentEntry, EnvironmentList, EnvironmentView, HealthCheckAnswer,
        HealthView, HistoryQuery,
    },
};
use futures_util::StreamExt as _;
use serde_json::json;

use crate::{
    backend::Backend,
    output::{self, outln, Table},
    CliError,
};

/// Health checks running at once in `environments check`.
const PARALLEL_CHECKS: usize = 8;

/// The registered environments; in-process, the ones of the environments file.
async fn environments(backend: &Backend) -> Result<Vec<EnvironmentView>, CliError> {
    let answer = backend.api().environments().await?;
    // This route is for developers and admins, who always get the connection details: without
    // them the answer was not understood, and a check would skip every environment.
    if let Some(environment) = answer.environments.iter().find(|e| e.connection.is_none()) {
        return Err(CliError::Failed(format!(
            "the connection details of environment {:?} in GET /environments are not what this deployment-mcp reads; are the CLI and the plugin from the same release?",
            environment.environment_id
        )));
    }
    Ok(answer
        .environments
        .into_iter()
        .filter(|environment| backend.knows_environment(&environment.environment_id) != Some(false))
        .collect())
}

/// Where a trigger goes: `user@host:port`, a URL, or the command.
fn target(environment: &EnvironmentView) -> String {
    let Some(details) = &environment.connection else {
        return "-".into();
    };
    let host_port = |default: u16| {
        details
            .host
            .as_ref()
            .map(|host| format!("{host}:{}", details.port.unwrap_or(default)))
            .unwrap_or_else(|| "-".into())
    };
    match environment.connection_method.as_str() {
        "ssh" => match &details.username {
            Some(user) => format!("{user}@{}", host_port(22)),
            None => host_port(22),
        },
        "http_api" => host_port(80),
        "webhook" => details.webhook_url.clone().unwrap_or_else(|| host_port(80)),
        "local" => local_program(details),
        _ => "-".into(),
    }
}

fn local_program(details: &ConnectionDetails) -> String {
    match &details.command {
        Some(parts) => {
            shlex::try_join(parts.iter().map(String::as_str)).unwrap_or_else(|_| parts.join(" "))
        }
        None => output::dash(details.init_script_path.as_deref()),
    }
}

fn health(report: Option<&HealthView>) -> String {
    let Some(report) = report else {
        return "-".into();
    };
    let when = output::short_time(&report.checked_at);
    if report.healthy {
        format!(
            "healthy ({}, {when})",
            output::duration(Some(report.latency_ms))
        )
    } else {
        let why = report
            .error
            .clone()
            .or_else(|| report.http_status.map(|status| format!("HTTP {status}")))
            .unwrap_or_else(|| "no answer".into());
        format!("unhealthy: {why} ({when})")
    }
}

pub async fn environments_list(backend: &Backend, json: bool) -> Result<u8, CliError> {
    let list = environments(backend).await?;
    if json {
        output::print_json(&EnvironmentList {
            total_count: list.len() as u64,
            environments: list,
        });
        return Ok(0);
    }
    let mut table = Table::new(&["ID", "TYPE", "METHOD", "TARGET", "ENABLED", "LAST HEALTH"]);
    for environment in &list {
        table.row(vec![
            environment.environment_id.to_string(),
            environment.environment_type.as_str().to_owned(),
            environment.connection_method.as_str().to_owned(),
            target(environment),
            if environment.enabled { "yes" } else { "no" }.into(),
            health(environment.last_health.as_ref()),
        ]);
    }
    if table.is_empty() {
        outln!("no environments registered in {}", backend.registry());
    } else {
        table.print();
    }
    Ok(0)
}

/// The file is valid once the backend loaded it; then every enabled environment with a
/// health URL is checked now. Exit 1 when any is unhealthy.
pub async fn environments_check(backend: &Backend, json: bool) -> Result<u8, CliError> {
    let list = environments(backend).await?;
    let mut checked = Vec::new();
    let mut skipped: Vec<(String, &str)> = Vec::new();
    for environment in &list {
        let id = environment.environment_id.clone();
        let has_url = environment
            .connection
            .as_ref()
            .is_some_and(|details| details.health_check_url.is_some());
        if !environment.enabled {
            skipped.push((id.to_string(), "disabled"));
        } else if !has_url {
            skipped.push((id.to_string(), "no health_check_url"));
        } else {
            checked.push(id);
        }
    }
    let mut results: Vec<HealthCheckAnswer> = futures_util::stream::iter(checked)
        .map(|id| async move { backend.api().check_health(&id).await })
        .buffer_unordered(PARALLEL_CHECKS)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_, _>>()?;
    results.sort_by(|a, b| a.environment_id.cmp(&b.environment_id));
    let unhealthy = results
        .iter()
        .filter(|result| !result.health.healthy)
        .count();
    if json {
        let skipped: Vec<_> = skipped
            .iter()
            .map(|(id, reason)| json!({ "environment_id": id, "reason": reason }))
            .collect();
        output::print_json(&json!({
            "registry": backend.registry(),
            "environments": list.len(),
            "checks": results,
            "skipped": skipped,
            "unhealthy": unhealthy,
        }));
    } else {
        let source = if backend.is_remote() {
            "registered on"
        } else {
            "valid in"
        };
        outln!(
            "{} environment(s) {source} {}",
            list.len(),
            backend.registry()
        );
        let mut table = Table::new(&["ENVIRONMENT", "URL", "HEALTH"]);
        for result in &results {
            table.row(vec![
                result.environment_id.to_string(),
                output::dash(result.health.url.as_deref()),
                health(Some(&result.health)),
            ]);
        }
        for (id, reason) in &skipped {
            table.row(vec![id.clone(), "-".into(), format!("skipped: {reason}")]);
        }
        if !table.is_empty() {
            outln!();
            table.print();
        }
        if unhealthy > 0 {
            outln!();
            outln!(
                "{unhealthy} of {} checked environment(s) unhealthy",
                results.len()
            );
        }
    }
    Ok(if unhealthy > 0 { 1 } else { 0 })
}

pub async fn status(backend: &Backend, id: Option<&str>, json: bool) -> Result<u8, CliError> {
    if let Some(id) = id {
        let summary = backend.api().summary(id).await?;
        if json {
            output::print_json(&summary);
        } else {
            print_deployment(&summary.entry, Some(&summary.environment_status));
        }
        return Ok(0);
    }
    let answer = backend.api().status().await?;
    if json {
        output::print_json(&answer);
        return Ok(0);
    }
    outln!(
        "status: {} (plugin {})",
        answer.status.as_str(),
        answer.plugin_version
    );
    if !answer.active.is_empty() {
        outln!();
        outln!("active:");
        history_table(&answer.active).print();
    }
    if let Some(latest) = &answer.latest {
        outln!();
        outln!("latest finished:");
        print_deployment(latest, None);
    }
    if answer.active.is_empty() && answer.latest.is_none() {
        outln!("no deployments yet");
    }
    Ok(0)
}

fn print_deployment(
    entry: &DeploymentEntry,
    statuses: Option<&BTreeMap<String, deployment_mcp_core::deployment::TargetStatus>>,
) {
    outln!("  deployment:   {}", entry.deployment_id);
    outln!(
        "  status:       {} ({}%)",
        entry.status.as_str(),
        entry.progress
    );
    outln!(
        "  version:      {}",
        output::dash(Some(entry.version.as_str()))
    );
    outln!(
        "  triggered by: {}",
        output::dash(Some(entry.triggered_by.as_str()))
    );
    outln!("  created:      {}", output::short_time(&entry.created_at));
    if let Some(finished_at) = &entry.finished_at {
        outln!(
            "  finished:     {} (after {})",
            output::short_time(finished_at),
            output::duration(entry.duration_ms)
        );
    }
    if let Some(retry_of) = &entry.retry_of {
        outln!("  retry of:     {retry_of}");
    }
    if let Some(Some(error)) = &entry.error {
        outln!("  error:        {}", output::printable(error));
    }
    match statuses {
        Some(statuses) if !statuses.is_empty() => {
            let mut table = Table::new(&["  ENVIRONMENT", "STATUS"]);
            for (environment, status) in statuses {
                table.row(vec![format!("  {environment}"), status.as_str().to_owned()]);
            }
            table.print();
        }
        _ => {
            outln!(
                "  environments: {}",
                output::listed(&entry.environments, entry.environment_count)
            );
            if entry.failed_count > 0 {
                outln!(
                    "  failed:       {}",
                    output::listed(&entry.failed_environments, entry.failed_count)
                );
            }
        }
    }
}

fn history_table(entries: &[DeploymentEntry]) -> Table {
    let mut table = Table::new(&[
        "DEPLOYMENT",
        "STATUS",
        "VERSION",
        "ENVIRONMENTS",
        "FAILED",
        "CREATED",
        "DURATION",
        "TRIGGERED BY",
    ]);
    for entry in entries {
        table.row(vec![
            entry.deployment_id.to_string(),
            entry.status.as_str().to_owned(),
            output::dash(Some(entry.version.as_str())),
            output::listed(&entry.environments, entry.environment_count),
            output::listed(&entry.failed_environments, entry.failed_count),
            output::short_time(&entry.created_at),
            output::duration(entry.duration_ms),
            output::dash(Some(entry.triggered_by.as_str())),
        ]);
    }
    table
}

pub async fn history(backend: &Backend, query: HistoryQuery, json: bool) -> Result<u8, CliError> {
    let answer = backend.api().history(&query).await?;
    if json {
        output::print_json(&answer);
        return Ok(0);
    }
    if answer.history.is_empty() {
        outln!("no deployments match");
        return Ok(0);
    }
    history_table(&answer.history).print();
    let shown = answer.history.len() as u64;
    if answer.total_count > shown {
        outln!();
        outln!(
            "{shown} of {} deployment(s); --limit N shows more",
            answer.total_count
        );
    }
    Ok(0)
}
