//! Schedules as MCP tools: list (developers), create and delete (admins). Each calls the API
//! as the caller, like every tool.

use plugin_guest::Role;

use super::{Tool, ToolSpec};
use crate::mcp::{
    types::{NoArguments, ScheduleArguments},
    Call, ToolError,
};
use crate::{
    client::DeploymentApi,
    schedules::ScheduleSpec,
    wire::{Deleted, ScheduleList},
};

pub(super) struct ListSchedules;

impl Tool for ListSchedules {
    const SPEC: ToolSpec = ToolSpec {
        name: "list_schedules",
        title: "List schedules",
        description: "Every schedule: a deployment started once at `at` or at each occurrence of an RFC 5545 rrule from a local dtstart in time_zone, with the trigger body it fires, whether it is enabled, and catch_up (skip or once) for occurrences missed while no node ran. Each occurrence fires once across all nodes; its deployments say triggered_by schedule:<id>.",
        needs: Role::Developer,
        writes: false,
        destructive: false,
    };
    type Input = NoArguments;
    type Output = ScheduleList;

    async fn run<A: DeploymentApi>(
        call: &Call<'_, A>,
        _: NoArguments,
    ) -> Result<ScheduleList, ToolError> {
        Ok(call.api.schedules().await?)
    }
}

pub(super) struct CreateSchedule;

impl Tool for CreateSchedule {
    const SPEC: ToolSpec = ToolSpec {
        name: "create_schedule",
        title: "Create a schedule",
        description: "Creates a schedule (admins): give `at` (RFC 3339, in the future) or rrule and dtstart (local time) with time_zone (IANA, default UTC), and `trigger`, the body of a trigger (environments or selector, version, strategy…; no override: a schedule fires inside the deployment windows).",
        needs: Role::Admin,
        writes: true,
        destructive: false,
    };
    type Input = ScheduleSpec;
    type Output = ScheduleSpec;

    async fn run<A: DeploymentApi>(
        call: &Call<'_, A>,
        input: ScheduleSpec,
    ) -> Result<ScheduleSpec, ToolError> {
        Ok(call.api.create_schedule(&input).await?)
    }
}

pub(super) struct DeleteSchedule;

impl Tool for DeleteSchedule {
    const SPEC: ToolSpec = ToolSpec {
        name: "delete_schedule",
        title: "Delete a schedule",
        description: "Removes a schedule and the record of its runs (admins): it fires no more; deployments it started go on.",
        needs: Role::Admin,
        writes: true,
        destructive: true,
    };
    type Input = ScheduleArguments;
    type Output = Deleted;

    async fn run<A: DeploymentApi>(
        call: &Call<'_, A>,
        input: ScheduleArguments,
    ) -> Result<Deleted, ToolError> {
        Ok(call.api.delete_schedule(&input.id).await?)
    }
}
