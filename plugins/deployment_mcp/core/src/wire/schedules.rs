//! Schedules as the API shows them (SPEC §4e): each as it was created ([`ScheduleSpec`], with
//! who created it and when), and one with its last runs and its next occurrences.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::{
    model::Timestamp,
    schedules::{ScheduleRun, ScheduleSpec},
};

/// `GET /schedules`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ScheduleList {
    pub schedules: Vec<ScheduleSpec>,
}

/// `GET /schedules/{id}`: the schedule, what became of its newest occurrences (newest first)
/// and when it fires next.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ScheduleDetail {
    pub schedule: ScheduleSpec,
    pub last_runs: Vec<ScheduleRun>,
    #[schema(value_type = Vec<String>)]
    pub next_runs: Vec<Timestamp>,
}

/// `GET /schedules/{id}/next`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NextRuns {
    #[schema(value_type = Vec<String>)]
    pub next: Vec<Timestamp>,
}
