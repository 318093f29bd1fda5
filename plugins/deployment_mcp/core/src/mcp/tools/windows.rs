//! The deployment windows as MCP tools: list and explain (developers), create and delete
//! (admins). Each calls the API as the caller, like every tool.

use plugin_guest::Role;

use super::{Tool, ToolSpec};
use crate::mcp::{
    types::{ExplainWindowArguments, NoArguments, WindowArguments},
    Call, ToolError,
};
use crate::{
    client::DeploymentApi,
    windows::WindowSpec,
    wire::{Deleted, WindowExplanation, WindowList},
};

pub(super) struct ListWindows;

impl Tool for ListWindows {
    const SPEC: ToolSpec = ToolSpec {
        name: "list_windows",
        title: "List deployment windows",
        description: "Every deployment window: deny (a freeze) or allow (the only times the environments it covers may deploy), once (start, end) or recurring (an RFC 5545 rrule from a local dtstart, duration_secs, time_zone), over environments or a tag selector, with its reason.",
        needs: Role::Developer,
        writes: false,
        destructive: false,
    };
    type Input = NoArguments;
    type Output = WindowList;

    async fn run<A: DeploymentApi>(
        call: &Call<'_, A>,
        _: NoArguments,
    ) -> Result<WindowList, ToolError> {
        Ok(call.api.windows().await?)
    }
}

pub(super) struct ExplainWindow;

impl Tool for ExplainWindow {
    const SPEC: ToolSpec = ToolSpec {
        name: "explain_window",
        title: "Explain the windows of an environment",
        description: "Whether an environment may deploy at an instant (now by default); if not, the window that closes it and when it opens. Ask before triggering: a closed window refuses the trigger (deployment_window_closed).",
        needs: Role::Developer,
        writes: false,
        destructive: false,
    };
    type Input = ExplainWindowArguments;
    type Output = WindowExplanation;

    async fn run<A: DeploymentApi>(
        call: &Call<'_, A>,
        input: ExplainWindowArguments,
    ) -> Result<WindowExplanation, ToolError> {
        Ok(call
            .api
            .explain_window(&input.environment, input.at.as_deref())
            .await?)
    }
}

pub(super) struct CreateWindow;

impl Tool for CreateWindow {
    const SPEC: ToolSpec = ToolSpec {
        name: "create_window",
        title: "Create a deployment window",
        description: "Creates a deployment window (admins). A deny window refuses triggers of what it covers while open; an allow window refuses them outside itself. Give start and end (RFC 3339), or rrule, dtstart (local time) and duration_secs, with time_zone (IANA, default UTC).",
        needs: Role::Admin,
        writes: true,
        destructive: false,
    };
    type Input = WindowSpec;
    type Output = WindowSpec;

    async fn run<A: DeploymentApi>(
        call: &Call<'_, A>,
        input: WindowSpec,
    ) -> Result<WindowSpec, ToolError> {
        Ok(call.api.create_window(&input).await?)
    }
}

pub(super) struct DeleteWindow;

impl Tool for DeleteWindow {
    const SPEC: ToolSpec = ToolSpec {
        name: "delete_window",
        title: "Delete a deployment window",
        description: "Removes a deployment window (admins): what it closed may deploy again, and rollouts waiting for it go on.",
        needs: Role::Admin,
        writes: true,
        destructive: true,
    };
    type Input = WindowArguments;
    type Output = Deleted;

    async fn run<A: DeploymentApi>(
        call: &Call<'_, A>,
        input: WindowArguments,
    ) -> Result<Deleted, ToolError> {
        Ok(call.api.delete_window(&input.id).await?)
    }
}
