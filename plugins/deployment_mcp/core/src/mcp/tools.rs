//! The tools, one [`Tool`] each: its [`ToolSpec`] (name, least role, whether it writes), its
//! argument and result types, and what it does, always through the typed API client as the
//! caller. [`table`] lists them; a call is dispatched to its table entry, which reads the
//! arguments as the tool's input type and writes its output type. Names and arguments are part
//! of the contract.

use std::{future::Future, sync::Arc};

use futures_util::future::BoxFuture;
use plugin_guest::Role;
use rmcp::model::{JsonObject, Tool as ListedTool, ToolAnnotations};
use serde::{de::DeserializeOwned, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::{
    follow, schema,
    types::{
        AuditArguments, AuditOutput, DeploymentArguments, DeploymentOutput, DeploymentsOutput,
        EnvironmentArguments, EnvironmentsOutput, ListDeploymentsArguments, LogArguments,
        LogsOutput, NoArguments, TriggerArguments, TriggerOutput, MAX_LOG_LINES, MAX_WAIT_SECS,
    },
    Call, ToolError,
};
use crate::{
    client::DeploymentApi,
    environments::field_error,
    wire::{
        Accepted, CancelAnswer, DashboardEnvironment, DeploymentSummary, HealthCheckAnswer,
        HistoryQuery, LogsQuery,
    },
};

/// What `tools/list` says of a tool, and who may call it.
mod schedules;
mod windows;

#[derive(Debug, Clone, Copy)]
pub struct ToolSpec {
    pub name: &'static str,
    pub title: &'static str,
    pub description: &'static str,
    /// The least role that may call it.
    pub needs: Role,
    /// It starts, stops or changes something (hidden by `mcp.read_only`).
    pub writes: bool,
    /// It can end or undo work (cancel, reject, roll back).
    pub destructive: bool,
}

/// A tool: what it is, what it takes and returns, and what it does.
pub(crate) trait Tool {
    const SPEC: ToolSpec;
    type Input: DeserializeOwned + ToSchema + Send;
    type Output: Serialize + ToSchema;
    fn run<A: DeploymentApi>(
        call: &Call<'_, A>,
        input: Self::Input,
    ) -> impl Future<Output = Result<Self::Output, ToolError>> + Send;
}

type Run<A> = for<'a> fn(&'a Call<'a, A>, JsonObject) -> BoxFuture<'a, Result<Value, ToolError>>;

/// A tool in the table: its spec, schemas (made once) and its run, over client type `A`.
pub(crate) struct Entry<A> {
    pub(crate) spec: ToolSpec,
    input: Arc<JsonObject>,
    output: Arc<JsonObject>,
    run: Run<A>,
}

impl<A: DeploymentApi + 'static> Entry<A> {
    fn of<T: Tool>() -> Entry<A> {
        Entry {
            spec: T::SPEC,
            input: schema::object::<T::Input>(),
            output: schema::object::<T::Output>(),
            run: run::<T, A>,
        }
    }

    pub(crate) fn input(&self) -> Arc<JsonObject> {
        Arc::clone(&self.input)
    }

    pub(crate) fn output(&self) -> Arc<JsonObject> {
        Arc::clone(&self.output)
    }

    /// The tool as `tools/list` shows it.
    pub(crate) fn listed(&self) -> ListedTool {
        let spec = &self.spec;
        ListedTool::new(spec.name, spec.description, self.input())
            .with_title(spec.title)
            .with_raw_output_schema(self.output())
            .with_annotations(ToolAnnotations::from_raw(
                Some(spec.title.to_owned()),
                Some(!spec.writes),
                Some(spec.destructive),
                Some(!spec.writes || spec.destructive),
                Some(false),
            ))
    }

    /// Runs the tool on the call's arguments.
    pub(crate) fn call<'a>(
        &self,
        call: &'a Call<'a, A>,
        arguments: JsonObject,
    ) -> BoxFuture<'a, Result<Value, ToolError>> {
        (self.run)(call, arguments)
    }
}

fn run<'a, T: Tool, A: DeploymentApi + 'static>(
    call: &'a Call<'a, A>,
    arguments: JsonObject,
) -> BoxFuture<'a, Result<Value, ToolError>> {
    Box::pin(async move {
        let input: T::Input = arguments_as(arguments)?;
        let output = T::run(call, input).await?;
        serde_json::to_value(output).map_err(|error| {
            ToolError::new("internal", format!("cannot encode the result: {error}"))
        })
    })
}

/// The arguments as `T`; the error names the argument at fault.
fn arguments_as<T: DeserializeOwned>(arguments: JsonObject) -> Result<T, ToolError> {
    serde_path_to_error::deserialize(Value::Object(arguments)).map_err(|error| {
        let field = field_error(error.path().to_string(), error.inner().to_string());
        ToolError::field(&field.field, &field.message)
    })
}

/// Every tool, in the order `tools/list` shows them.
pub(crate) fn table<A: DeploymentApi + 'static>() -> Vec<Entry<A>> {
    vec![
        Entry::of::<ListEnvironments>(),
        Entry::of::<GetEnvironment>(),
        Entry::of::<CheckEnvironmentHealth>(),
        Entry::of::<ListDeployments>(),
        Entry::of::<GetDeployment>(),
        Entry::of::<GetDeploymentLogs>(),
        Entry::of::<TriggerDeployment>(),
        Entry::of::<CancelDeployment>(),
        Entry::of::<RetryDeployment>(),
        Entry::of::<ApproveDeployment>(),
        Entry::of::<RejectDeployment>(),
        Entry::of::<RollbackDeployment>(),
        Entry::of::<ListAuditEntries>(),
        Entry::of::<windows::ListWindows>(),
        Entry::of::<windows::ExplainWindow>(),
        Entry::of::<windows::CreateWindow>(),
        Entry::of::<windows::DeleteWindow>(),
        Entry::of::<schedules::ListSchedules>(),
        Entry::of::<schedules::CreateSchedule>(),
        Entry::of::<schedules::DeleteSchedule>(),
    ]
}

struct ListAuditEntries;

impl Tool for ListAuditEntries {
    const SPEC: ToolSpec = ToolSpec {
        name: "list_audit_entries",
        title: "List audit entries",
        description: "The audit log, newest first: who did what (trigger, cancel, approve, environment changes, plugin reloads, refused calls), through which door (rest, mcp with the tool, cli, dashboard, schedule, auto), and how it ended. Filters as GET /api/audit; paged with cursor.",
        needs: Role::Admin,
        writes: false,
        destructive: false,
    };
    type Input = AuditArguments;
    type Output = AuditOutput;

    async fn run<A: DeploymentApi>(
        call: &Call<'_, A>,
        filter: AuditArguments,
    ) -> Result<AuditOutput, ToolError> {
        let Some(records) = call.audit else {
            return Err(ToolError::new(
                "unavailable",
                "this MCP server does not reach the audit log; use the host's GET /api/audit",
            ));
        };
        let query = audit_query(filter)?;
        let page = records
            .audit_page(query.to_string())
            .await
            .map_err(|error| ToolError::new("audit_query", error.to_string()))?;
        serde_json::from_str(&page)
            .map_err(|error| ToolError::new("audit_query", error.to_string()))
    }
}

/// The tool's filters as the host's audit query: times in the entries' form, the cursor as
/// the seq it is, the page at most 100.
fn audit_query(filter: AuditArguments) -> Result<Value, ToolError> {
    let time = |field: &str, text: Option<String>| -> Result<Option<String>, ToolError> {
        text.map(|text| {
            text.parse::<crate::model::Timestamp>()
                .map(|at| at.to_string())
                .map_err(|_| ToolError::field(field, "expected an RFC 3339 time"))
        })
        .transpose()
    };
    let before = filter
        .cursor
        .map(|cursor| {
            cursor
                .parse::<u64>()
                .map_err(|_| ToolError::field("cursor", "expected the next_cursor of a page"))
        })
        .transpose()?;
    if let Some(outcome) = &filter.outcome {
        if !["ok", "denied", "failed"].contains(&outcome.as_str()) {
            return Err(ToolError::field("outcome", "expected ok, denied or failed"));
        }
    }
    if let Some(via) = &filter.via {
        if !["rest", "mcp", "cli", "dashboard", "schedule", "auto"].contains(&via.as_str()) {
            return Err(ToolError::field(
                "via",
                "expected rest, mcp, cli, dashboard, schedule or auto",
            ));
        }
    }
    let mut query = serde_json::json!({
        "actor": filter.actor, "action": filter.action, "resource": filter.resource,
        "environment": filter.environment, "outcome": filter.outcome, "via": filter.via,
        "since": time("since", filter.since)?, "until": time("until", filter.until)?,
        "request_id": filter.request_id, "before": before,
        "limit": filter.limit.unwrap_or(50).clamp(1, 100),
    });
    if let Some(fields) = query.as_object_mut() {
        fields.retain(|_, value| !value.is_null());
    }
    Ok(query)
}

/// One environment in the caller's view (from the dashboard, which every role may read).
pub(super) async fn environment<A: DeploymentApi>(
    api: &A,
    id: &str,
) -> Result<DashboardEnvironment, ToolError> {
    api.dashboard()
        .await?
        .environments
        .into_iter()
        .find(|environment| environment.environment.environment_id == id)
        .ok_or_else(|| {
            ToolError::new(
                "not_found",
                format!("no environment {id:?}; list_environments shows them"),
            )
        })
}

/// A deployment as the caller may see it: the record (without the log's tail) for developers
/// and above, the summary for users.
pub(super) async fn deployment<A: DeploymentApi>(
    api: &A,
    developer: bool,
    id: &str,
) -> Result<DeploymentOutput, ToolError> {
    Ok(if developer {
        DeploymentOutput::Record(Box::new(api.deployment(id).await?.deployment))
    } else {
        DeploymentOutput::Summary(Box::new(api.summary(id).await?))
    })
}

/// A page of a deployment's log, at most [`MAX_LOG_LINES`] lines.
pub(super) async fn log_page<A: DeploymentApi>(
    api: &A,
    arguments: LogArguments,
) -> Result<LogsOutput, ToolError> {
    let bounded = |value: Option<usize>, field: &str| match value {
        Some(0) => Err(ToolError::field(field, "must be at least 1")),
        Some(n) if n > MAX_LOG_LINES => Err(ToolError::field(
            field,
            format!("at most {MAX_LOG_LINES} lines per call; page with offset"),
        )),
        other => Ok(other.unwrap_or(100)),
    };
    // The API reads only the chunks that hold the lines asked for.
    let lines = match arguments.offset {
        Some(offset) => LogsQuery::Page {
            from: offset as u64,
            limit: Some(bounded(arguments.limit, "limit")?),
        },
        None => LogsQuery::Tail(bounded(arguments.tail, "tail")?),
    };
    let page = api.logs(&arguments.id, lines).await?;
    let returned = page.lines.len() as u64;
    Ok(LogsOutput {
        truncated: page.first_line > 0 || page.first_line + returned < page.stored_lines,
        deployment_id: page.deployment_id,
        status: page.status,
        complete: page.complete,
        total_lines: page.total_lines,
        first_line: page.first_line,
        lines: page.lines,
    })
}

struct ListEnvironments;

impl Tool for ListEnvironments {
    const SPEC: ToolSpec = ToolSpec {
        name: "list_environments",
        title: "List environments",
        description: "Lists the target environments with their type, connection method, tags, deployed version and last health. Connection details (hosts, commands, URLs) only for the developer role and above.",
        needs: Role::User,
        writes: false,
        destructive: false,
    };
    type Input = NoArguments;
    type Output = EnvironmentsOutput;

    async fn run<A: DeploymentApi>(
        call: &Call<'_, A>,
        _: NoArguments,
    ) -> Result<EnvironmentsOutput, ToolError> {
        let environments = call.api.dashboard().await?.environments;
        Ok(EnvironmentsOutput {
            total_count: environments.len(),
            environments,
        })
    }
}

struct GetEnvironment;

impl Tool for GetEnvironment {
    const SPEC: ToolSpec = ToolSpec {
        name: "get_environment",
        title: "Get one environment",
        description: "One environment by id: type, connection method, tags, deployed and previous version, last health and last deployment.",
        needs: Role::User,
        writes: false,
        destructive: false,
    };
    type Input = EnvironmentArguments;
    type Output = DashboardEnvironment;

    async fn run<A: DeploymentApi>(
        call: &Call<'_, A>,
        input: EnvironmentArguments,
    ) -> Result<DashboardEnvironment, ToolError> {
        environment(&call.api, &input.id).await
    }
}

struct CheckEnvironmentHealth;

impl Tool for CheckEnvironmentHealth {
    const SPEC: ToolSpec = ToolSpec {
        name: "check_environment_health",
        title: "Check an environment's health",
        description: "Runs the environment's health check (its health_check_url) now, records the report as its last health, and returns it.",
        needs: Role::Developer,
        // It records the report: not for a read-only endpoint.
        writes: true,
        destructive: false,
    };
    type Input = EnvironmentArguments;
    type Output = HealthCheckAnswer;

    async fn run<A: DeploymentApi>(
        call: &Call<'_, A>,
        input: EnvironmentArguments,
    ) -> Result<HealthCheckAnswer, ToolError> {
        Ok(call.api.check_health(&input.id).await?)
    }
}

struct ListDeployments;

impl Tool for ListDeployments {
    const SPEC: ToolSpec = ToolSpec {
        name: "list_deployments",
        title: "List deployments",
        description: "Deployments, newest first. With the developer role and above: the history, filtered by status or environment and paged with cursor. With the user role: the running ones and the latest finished one.",
        needs: Role::User,
        writes: false,
        destructive: false,
    };
    type Input = ListDeploymentsArguments;
    type Output = DeploymentsOutput;

    async fn run<A: DeploymentApi>(
        call: &Call<'_, A>,
        filter: ListDeploymentsArguments,
    ) -> Result<DeploymentsOutput, ToolError> {
        if call.developer() {
            let query = HistoryQuery {
                limit: Some(filter.limit.unwrap_or(20).min(100)),
                cursor: filter.cursor,
                status: filter.status,
                environment: filter.environment,
            };
            return Ok(DeploymentsOutput::History(call.api.history(&query).await?));
        }
        if filter.cursor.is_some() || filter.status.is_some() || filter.environment.is_some() {
            return Err(ToolError::new(
                "forbidden",
                "history filters need the developer role; the user role sees the running deployments and the latest finished one",
            ));
        }
        Ok(DeploymentsOutput::Overview(Box::new(
            call.api.status().await?,
        )))
    }
}

struct GetDeployment;

impl Tool for GetDeployment {
    const SPEC: ToolSpec = ToolSpec {
        name: "get_deployment",
        title: "Get a deployment",
        description: "One deployment: status (phase), progress 0-100, version, batches and gate, and each environment's result. Error texts and outputs only for the developer role and above; the log is get_deployment_logs.",
        needs: Role::User,
        writes: false,
        destructive: false,
    };
    type Input = DeploymentArguments;
    type Output = DeploymentOutput;

    async fn run<A: DeploymentApi>(
        call: &Call<'_, A>,
        input: DeploymentArguments,
    ) -> Result<DeploymentOutput, ToolError> {
        deployment(&call.api, call.developer(), &input.id).await
    }
}

struct GetDeploymentLogs;

impl Tool for GetDeploymentLogs {
    const SPEC: ToolSpec = ToolSpec {
        name: "get_deployment_logs",
        title: "Read a deployment's log",
        description: "Log lines of a deployment, at most 1000 per call: the last `tail` lines (default 100), or `limit` lines from `offset`. `total_lines` says how many there are.",
        needs: Role::Developer,
        writes: false,
        destructive: false,
    };
    type Input = LogArguments;
    type Output = LogsOutput;

    async fn run<A: DeploymentApi>(
        call: &Call<'_, A>,
        input: LogArguments,
    ) -> Result<LogsOutput, ToolError> {
        log_page(&call.api, input).await
    }
}

struct TriggerDeployment;

impl Tool for TriggerDeployment {
    const SPEC: ToolSpec = ToolSpec {
        name: "trigger_deployment",
        title: "Start a deployment",
        description: "Deploys a version to environments (ids, or a tag selector; every enabled environment when neither is given), optionally with a rollout strategy, a failure threshold and rollback. Returns the new deployment's id; with wait: true, follows it (progress notifications) and returns its final record, or its record when it stops at a manual canary gate (then approve_deployment or reject_deployment).",
        needs: Role::Admin,
        writes: true,
        destructive: false,
    };
    type Input = TriggerArguments;
    type Output = TriggerOutput;

    async fn run<A: DeploymentApi>(
        call: &Call<'_, A>,
        input: TriggerArguments,
    ) -> Result<TriggerOutput, ToolError> {
        let timeout = match input.wait_timeout_secs {
            None => follow::DEFAULT_WAIT_SECS,
            Some(secs @ 1..=MAX_WAIT_SECS) => secs,
            Some(_) => {
                return Err(ToolError::field(
                    "wait_timeout_secs",
                    format!("seconds from 1 to {MAX_WAIT_SECS}"),
                ))
            }
        };
        let accepted = call.api.trigger(&input.request()).await?;
        if !input.wait {
            return Ok(TriggerOutput::Started(accepted));
        }
        let followed = follow::to_end(call, &accepted.deployment_id, timeout).await?;
        Ok(TriggerOutput::Followed(Box::new(followed)))
    }
}

/// The tools that decide about one deployment by id: the same shape, another call.
macro_rules! by_id {
    ($tool:ident, $output:ty, $method:ident, $spec:expr) => {
        struct $tool;

        impl Tool for $tool {
            const SPEC: ToolSpec = $spec;
            type Input = DeploymentArguments;
            type Output = $output;

            async fn run<A: DeploymentApi>(
                call: &Call<'_, A>,
                input: DeploymentArguments,
            ) -> Result<$output, ToolError> {
                Ok(call.api.$method(&input.id).await?)
            }
        }
    };
}

by_id!(CancelDeployment, CancelAnswer, cancel, ToolSpec {
    name: "cancel_deployment",
    title: "Cancel a deployment",
    description: "Stops a running deployment: running triggers are stopped, the rest is not started; it ends cancelled.",
    needs: Role::Admin,
    writes: true,
    destructive: true,
});

by_id!(RetryDeployment, Accepted, retry, ToolSpec {
    name: "retry_deployment",
    title: "Retry a deployment",
    description: "Starts a new deployment of the environments that did not succeed in a finished one, with its version and rollout.",
    needs: Role::Admin,
    writes: true,
    destructive: false,
});

by_id!(ApproveDeployment, DeploymentSummary, approve, ToolSpec {
    name: "approve_deployment",
    title: "Approve a canary gate",
    description: "Continues a deployment waiting at its canary gate (status awaiting_approval): the rest of its environments roll out.",
    needs: Role::Admin,
    writes: true,
    destructive: false,
});

by_id!(RejectDeployment, DeploymentSummary, reject, ToolSpec {
    name: "reject_deployment",
    title: "Reject a canary gate",
    description: "Ends a deployment waiting at its canary gate: it ends cancelled and the environments not started are skipped.",
    needs: Role::Admin,
    writes: true,
    destructive: true,
});

by_id!(RollbackDeployment, Accepted, rollback, ToolSpec {
    name: "rollback_deployment",
    title: "Roll a deployment back",
    description: "Rolls a finished deployment's changed environments back to the version each had before it; the deployment ends rolled_back (or failed when a rollback failed).",
    needs: Role::Admin,
    writes: true,
    destructive: true,
});
