//! Deployment windows as the API shows them (SPEC §4e): each as it was created
//! ([`WindowSpec`]), with who created it and when; and the calendar of windows and schedules
//! per environment.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::{
    model::Timestamp,
    windows::{Verdict, WindowKind, WindowSpec},
};

/// `GET /windows`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct WindowList {
    pub windows: Vec<WindowSpec>,
}

/// `GET /windows/explain`: whether the environment may deploy at the instant asked about.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct WindowExplanation {
    pub environment: String,
    #[schema(value_type = String)]
    pub at: Timestamp,
    #[serde(flatten)]
    pub verdict: Verdict,
}

/// `GET /calendar`: over `[from, to)`, when each window is open, when each schedule fires, and
/// for each environment when the windows close it and which schedules deploy it. Environments
/// that the same windows cover and the same schedules deploy share one group, so an answer
/// grows with the distinct groups, not with the catalog.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Calendar {
    #[schema(value_type = String)]
    pub from: Timestamp,
    #[schema(value_type = String)]
    pub to: Timestamp,
    /// Every window, in id order.
    pub windows: Vec<CalendarWindow>,
    /// Every schedule, in id order.
    pub schedules: Vec<CalendarSchedule>,
    /// What environments share, each distinct one once.
    pub groups: Vec<CalendarGroup>,
    /// Every environment, in the catalog's order, with its group's index.
    pub environments: Vec<EnvironmentCalendar>,
}

/// A window's occurrences within the range.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CalendarWindow {
    pub id: String,
    pub kind: WindowKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// When it is open, clipped to the range.
    pub open: Vec<Span>,
    /// More occurrences lie in the range than are listed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
}

/// A schedule's occurrences within the range (none while it is disabled).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CalendarSchedule {
    pub id: String,
    pub enabled: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[schema(value_type = Vec<String>)]
    pub runs: Vec<Timestamp>,
    /// More occurrences lie in the range than are listed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
}

/// One environment: its group in [`Calendar::groups`].
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct EnvironmentCalendar {
    pub environment_id: String,
    pub group: usize,
}

/// The calendar of the environments that the same windows cover and the same schedules deploy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CalendarGroup {
    /// When they may not deploy, each span with the window that closes them (as a trigger then
    /// would be refused), in order.
    pub closed: Vec<ClosedSpan>,
    /// The windows that cover them, in id order.
    pub windows: Vec<String>,
    /// The enabled schedules whose trigger would deploy them (by their tags as they are now),
    /// in id order.
    pub schedules: Vec<String>,
    /// The spans are worked out up to this instant only: a window covering them has more
    /// occurrences in the range than one answer lists. Absent when they hold to `to`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub exact_until: Option<Timestamp>,
}

/// `[start, end)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Span {
    #[schema(value_type = String)]
    pub start: Timestamp,
    #[schema(value_type = String)]
    pub end: Timestamp,
}

/// `[start, end)` in which `window` closes an environment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ClosedSpan {
    #[schema(value_type = String)]
    pub start: Timestamp,
    #[schema(value_type = String)]
    pub end: Timestamp,
    pub window: String,
}
