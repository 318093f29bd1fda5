//! The read commands and the environment check: one API call (or a few), printed readably.

use futures_util::StreamExt as _;
use serde_json::{json, Value};

use crate::{
    backend::Backend,
    output::{self, outln, Table},
    CliError,
};

/// Health checks running at once in `environments check`.
const PARALLEL_CHECKS: usize = 8;

/// The registered environments; in-process, the ones of the environments file.
async fn environments(backend: &Backend) -> Result<Vec<Value>, CliError> {
    let answer = backend
        .call_expecting("GET", "/environments", None, 200)
        .await?;
    Ok(answer["environments"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|environment| {
            let id = environment["environment_id"].as_str().unwrap_or_default();
            backend.knows_environment(id) != Some(false)
        })
        .collect())
}

/// Where a trigger goes: `user@host:port`, a URL, or the command.
fn target(environment: &Value) -> String {
    let host = environment["host"].as_str();
    let port = environment["port"].as_u64();
    let host_port = |default: u64| {
        host.map(|host| format!("{host}:{}", port.unwrap_or(default)))
            .unwrap_or_else(|| "-".into())
    };
    match environment["connection_method"]
        .as_str()
        .unwrap_or_default()
    {
        "ssh" => match environment["username"].as_str() {
            Some(user) => format!("{user}@{}", host_port(22)),
            None => host_port(22),
        },
        "http_api" => host_port(80),
        "webhook" => environment["webhook_url"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| host_port(80)),
        "local" => match environment["command"].as_array() {
            Some(parts) => {
                let parts: Vec<&str> = parts.iter().filter_map(Value::as_str).collect();
                shlex::try_join(parts.iter().copied()).unwrap_or_else(|_| parts.join(" "))
            }
            None => output::text(&environment["init_script_path"]),
        },
        _ => "-".into(),
    }
}

fn health(report: &Value) -> String {
    if report.is_null() {
        return "-".into();
    }
    let when = output::short_time(report["checked_at"].as_str().unwrap_or_default());
    if report["healthy"] == true {
        format!(
            "healthy ({}, {when})",
            output::duration(report["latency_ms"].as_u64())
        )
    } else {
        let why = report["error"]
            .as_str()
            .map(str::to_owned)
            .or_else(|| report["http_status"].as_u64().map(|s| format!("HTTP {s}")))
            .unwrap_or_else(|| "no answer".into());
        format!("unhealthy: {why} ({when})")
    }
}

pub async fn environments_list(backend: &Backend, json: bool) -> Result<u8, CliError> {
    let list = environments(backend).await?;
    if json {
        output::print_json(&json!({ "environments": list, "total_count": list.len() }));
        return Ok(0);
    }
    let mut table = Table::new(&["ID", "TYPE", "METHOD", "TARGET", "ENABLED", "LAST HEALTH"]);
    for environment in &list {
        table.row(vec![
            output::text(&environment["environment_id"]),
            output::text(&environment["environment_type"]),
            output::text(&environment["connection_method"]),
            target(environment),
            if environment["enabled"] == false {
                "no".into()
            } else {
                "yes".into()
            },
            health(&environment["last_health"]),
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
    let mut skipped = Vec::new();
    for environment in &list {
        let id = output::text(&environment["environment_id"]);
        if environment["enabled"] == false {
            skipped.push(json!({ "environment_id": id, "reason": "disabled" }));
        } else if environment["health_check_url"].is_null() {
            skipped.push(json!({ "environment_id": id, "reason": "no health_check_url" }));
        } else {
            checked.push(id);
        }
    }
    let mut results: Vec<Value> = futures_util::stream::iter(checked)
        .map(|id| async move {
            let path = format!("/environments/{id}/health-check");
            match backend.call("POST", &path, None).await {
                Ok((200, answer)) => Ok(answer),
                Ok((status, answer)) => Err(backend.error(status, &answer)),
                Err(error) => Err(error),
            }
        })
        .buffer_unordered(PARALLEL_CHECKS)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_, _>>()?;
    results.sort_by(|a, b| {
        a["environment_id"]
            .as_str()
            .cmp(&b["environment_id"].as_str())
    });
    let unhealthy = results
        .iter()
        .filter(|result| result["health"]["healthy"] != true)
        .count();
    if json {
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
                output::text(&result["environment_id"]),
                output::text(&result["health"]["url"]),
                health(&result["health"]),
            ]);
        }
        for skip in &skipped {
            table.row(vec![
                output::text(&skip["environment_id"]),
                "-".into(),
                format!("skipped: {}", output::text(&skip["reason"])),
            ]);
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

fn query_escape(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

pub async fn status(backend: &Backend, id: Option<&str>, json: bool) -> Result<u8, CliError> {
    let path = match id {
        Some(id) => format!("/status?id={}", query_escape(id)),
        None => "/status".to_owned(),
    };
    let answer = backend.call_expecting("GET", &path, None, 200).await?;
    if json {
        output::print_json(&answer);
        return Ok(0);
    }
    if id.is_some() {
        print_deployment(&answer);
        return Ok(0);
    }
    outln!(
        "status: {} (plugin {})",
        output::text(&answer["status"]),
        output::text(&answer["plugin_version"])
    );
    let active = answer["active"].as_array().cloned().unwrap_or_default();
    if !active.is_empty() {
        outln!();
        outln!("active:");
        history_table(&active).print();
    }
    if !answer["latest"].is_null() {
        outln!();
        outln!("latest finished:");
        print_deployment(&answer["latest"]);
    }
    if active.is_empty() && answer["latest"].is_null() {
        outln!("no deployments yet");
    }
    Ok(0)
}

fn print_deployment(entry: &Value) {
    outln!("  deployment:   {}", output::text(&entry["deployment_id"]));
    outln!(
        "  status:       {} ({}%)",
        output::text(&entry["status"]),
        output::text(&entry["progress"])
    );
    outln!("  version:      {}", output::text(&entry["version"]));
    outln!("  triggered by: {}", output::text(&entry["triggered_by"]));
    outln!(
        "  created:      {}",
        output::short_time(entry["created_at"].as_str().unwrap_or("-"))
    );
    if !entry["finished_at"].is_null() {
        outln!(
            "  finished:     {} (after {})",
            output::short_time(entry["finished_at"].as_str().unwrap_or("-")),
            output::duration(entry["duration_ms"].as_u64())
        );
    }
    if !entry["retry_of"].is_null() {
        outln!("  retry of:     {}", output::text(&entry["retry_of"]));
    }
    if !entry["error"].is_null() {
        outln!("  error:        {}", output::text(&entry["error"]));
    }
    match entry["environment_status"].as_object() {
        Some(statuses) if !statuses.is_empty() => {
            let mut table = Table::new(&["  ENVIRONMENT", "STATUS"]);
            for (environment, status) in statuses {
                table.row(vec![format!("  {environment}"), output::text(status)]);
            }
            table.print();
        }
        _ => {
            outln!("  environments: {}", output::list(&entry["environments"]));
            if entry["failed_environments"]
                .as_array()
                .is_some_and(|failed| !failed.is_empty())
            {
                outln!(
                    "  failed:       {}",
                    output::list(&entry["failed_environments"])
                );
            }
        }
    }
}

fn history_table(entries: &[Value]) -> Table {
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
            output::text(&entry["deployment_id"]),
            output::text(&entry["status"]),
            output::text(&entry["version"]),
            output::list(&entry["environments"]),
            output::list(&entry["failed_environments"]),
            output::short_time(entry["created_at"].as_str().unwrap_or("-")),
            output::duration(entry["duration_ms"].as_u64()),
            output::text(&entry["triggered_by"]),
        ]);
    }
    table
}

pub struct HistoryFilter {
    pub limit: Option<u32>,
    pub status: Option<String>,
    pub environment: Option<String>,
}

pub async fn history(backend: &Backend, filter: HistoryFilter, json: bool) -> Result<u8, CliError> {
    let mut query = Vec::new();
    if let Some(limit) = filter.limit {
        query.push(format!("limit={limit}"));
    }
    if let Some(status) = &filter.status {
        query.push(format!("status={}", query_escape(status)));
    }
    if let Some(environment) = &filter.environment {
        query.push(format!("environment={}", query_escape(environment)));
    }
    let path = if query.is_empty() {
        "/history".to_owned()
    } else {
        format!("/history?{}", query.join("&"))
    };
    let answer = backend.call_expecting("GET", &path, None, 200).await?;
    if json {
        output::print_json(&answer);
        return Ok(0);
    }
    let entries = answer["history"].as_array().cloned().unwrap_or_default();
    if entries.is_empty() {
        outln!("no deployments match");
        return Ok(0);
    }
    history_table(&entries).print();
    let total = answer["total_count"]
        .as_u64()
        .unwrap_or(entries.len() as u64);
    if total > entries.len() as u64 {
        outln!();
        outln!(
            "{} of {total} deployment(s); --limit N shows more",
            entries.len()
        );
    }
    Ok(0)
}
