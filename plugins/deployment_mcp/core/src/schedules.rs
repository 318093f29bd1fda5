//! Schedules (SPEC §4e): deployments started by the calendar. A schedule fires once at `at`, or
//! at each start of an RFC 5545 rule from a local `dtstart` in an IANA zone, with the body of a
//! trigger (`trigger`). Each occurrence fires at most once across every node: the store takes
//! the occurrence's record in the transaction that creates its deployment (see
//! [`crate::coordinator`]'s scheduler).
//!
//! What happens to occurrences no node was up for is the schedule's `catch_up`: `skip` (the
//! default) lets them go; `once` fires the newest of them once, when a node is back. An
//! occurrence counts as on time while it is at most [`GRACE_SECS`] old.
//!
//! [`ScheduleSpec`] is what a caller sends and what is stored; [`Schedule`] is the checked form.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::{
    calendar::{self, Recurrence},
    environments::FieldError,
    model::{DeploymentId, Timestamp},
    windows::check_named,
    wire::TriggerRequest,
};

/// At most this many schedules, so that the scheduler reads a bounded set.
pub const MAX_SCHEDULES: usize = 1_000;

/// An occurrence at most this old when a node looks is on time; an older one was missed (no
/// node was up), and `catch_up` decides.
pub const GRACE_SECS: u64 = 60;

/// What to do with occurrences missed while no node ran.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CatchUp {
    /// Let them go (recorded as skipped).
    #[default]
    Skip,
    /// Fire the newest of them once.
    Once,
}

fn enabled_default() -> bool {
    true
}

/// A schedule as a caller sends it (`POST /schedules`) and as the API shows it (with who
/// created it and when, which the host sets).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScheduleSpec {
    /// 1 to 64 of `A-Z a-z 0-9 _ - .`.
    pub id: String,
    /// A one-off schedule's instant (RFC 3339, in the future).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<String>,
    /// A recurring schedule's rule (RFC 5545, e.g. `FREQ=DAILY;BYHOUR=2`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rrule: Option<String>,
    /// A recurring schedule's first start, a local time in `time_zone` (`2026-01-05T02:00:00`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dtstart: Option<String>,
    /// IANA zone of `dtstart`; `UTC` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<String>,
    /// What each occurrence triggers: a trigger's body (every enabled environment when empty).
    /// An override of closed windows is not taken: a schedule fires inside the windows.
    #[serde(default)]
    pub trigger: TriggerRequest,
    /// A disabled schedule fires nothing (its occurrences meanwhile are not caught up).
    #[serde(default = "enabled_default")]
    pub enabled: bool,
    /// Occurrences missed while no node ran: `skip` (default) or `once`.
    #[serde(default)]
    pub catch_up: CatchUp,
    /// Why it exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Who created it (`api:<key name>`): set by the host, refused in a request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by: Option<String>,
    /// When it was created: set by the host, refused in a request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub created_at: Option<Timestamp>,
}

/// What became of one occurrence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum RunOutcome {
    /// Its deployment was created.
    Started {
        #[schema(value_type = String)]
        deployment_id: DeploymentId,
    },
    /// The trigger was refused (a closed window, a busy or unknown environment…).
    Refused { error: String, message: String },
    /// Missed while no node ran, and the schedule's `catch_up` is `skip`.
    Skipped,
}

/// One occurrence's run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ScheduleRun {
    /// The occurrence (its planned instant).
    #[schema(value_type = String)]
    pub occurrence: Timestamp,
    /// When a node handled it.
    #[schema(value_type = String)]
    pub handled_at: Timestamp,
    /// Earlier occurrences since the previous run that were not fired (no node was up).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub missed: u64,
    /// Fired after its grace: caught up (`catch_up: once`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub late: bool,
    /// The node that handled it, where the host has nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_id: Option<String>,
    #[serde(flatten)]
    pub outcome: RunOutcome,
}

fn is_zero(count: &u64) -> bool {
    *count == 0
}

/// When a schedule fires.
#[derive(Debug, Clone)]
enum When {
    Once(Timestamp),
    Recurring(Box<Recurrence>),
}

/// A checked schedule.
#[derive(Debug, Clone)]
pub struct Schedule {
    pub id: String,
    pub enabled: bool,
    pub catch_up: CatchUp,
    when: When,
}

/// What a look at a schedule at one instant decides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Due {
    /// Nothing to do now; the next occurrence (absent when there is none ahead).
    Nothing { next: Option<Timestamp> },
    /// Fire `occurrence`; `missed` earlier ones were not fired; `late` when it is past the grace
    /// (caught up).
    Fire {
        occurrence: Timestamp,
        missed: u64,
        late: bool,
    },
    /// Record `occurrence` as skipped (missed, `catch_up: skip`), with the `missed` before it.
    Skip { occurrence: Timestamp, missed: u64 },
}

impl Schedule {
    /// Checks `spec` as a new schedule created at `now`; the error names the field at fault.
    pub fn create(spec: &ScheduleSpec, now: Timestamp) -> Result<Schedule, FieldError> {
        check_named(
            &spec.id,
            spec.reason.as_deref(),
            [spec.created_by.is_some(), spec.created_at.is_some()],
        )?;
        let schedule = Schedule::new(spec)?;
        match &schedule.when {
            When::Once(at) if *at <= now => {
                return Err(FieldError::new(
                    "at",
                    format!("must be in the future (it is {now} now)"),
                ))
            }
            When::Once(_) => {}
            When::Recurring(rule) => rule.check_density()?,
        }
        Ok(schedule)
    }

    /// Checks a stored `spec` (its rule was put to the density check when it was created).
    pub fn new(spec: &ScheduleSpec) -> Result<Schedule, FieldError> {
        // Stored ones carry who created them and when.
        check_named(&spec.id, spec.reason.as_deref(), [false, false])?;
        let zone = spec.time_zone.as_deref().unwrap_or("UTC");
        calendar::zone("time_zone", zone)?;
        let when = match (&spec.at, &spec.rrule, &spec.dtstart) {
            (Some(_), Some(_), _) => {
                return Err(FieldError::new(
                    "rrule",
                    "give at (once) or rrule and dtstart (recurring), not both",
                ))
            }
            (Some(_), None, Some(_)) => {
                return Err(FieldError::new(
                    "dtstart",
                    "give at (once) or rrule and dtstart (recurring), not both",
                ))
            }
            (Some(at), None, None) => When::Once(
                at.parse::<Timestamp>()
                    .map_err(|error| FieldError::new("at", error.to_string()))?,
            ),
            (None, Some(rule), Some(dtstart)) => {
                When::Recurring(Box::new(Recurrence::new(rule, dtstart, zone)?))
            }
            (None, Some(_), None) => {
                return Err(FieldError::new("dtstart", "is required with rrule"))
            }
            (None, None, Some(_)) => {
                return Err(FieldError::new("rrule", "is required with dtstart"))
            }
            (None, None, None) => {
                return Err(FieldError::new(
                    "at",
                    "give at (once) or rrule and dtstart (recurring)",
                ))
            }
        };
        check_trigger(&spec.trigger)?;
        Ok(Schedule {
            id: spec.id.clone(),
            enabled: spec.enabled,
            catch_up: spec.catch_up,
            when,
        })
    }

    /// Its occurrences in `[from, to)`, in order; at most `limit`.
    pub fn starts_between(&self, from: Timestamp, to: Timestamp, limit: usize) -> Vec<Timestamp> {
        match &self.when {
            When::Once(at) => (from <= *at && *at < to && limit > 0)
                .then_some(*at)
                .into_iter()
                .collect(),
            When::Recurring(rule) => rule.starts_between(from, to, limit),
        }
    }

    /// Its next `count` occurrences at or after `from` (within ten years).
    pub fn next(&self, from: Timestamp, count: usize) -> Vec<Timestamp> {
        let to = Timestamp::from_unix_ms(from.unix_ms().saturating_add(calendar::TEN_YEARS_MS));
        self.starts_between(from, to, count)
    }

    /// What is due at `now` for a schedule created at `created` whose newest handled
    /// occurrence is `last`. Only occurrences after `last` (or from `created` on) count.
    pub fn due(&self, created: Timestamp, last: Option<Timestamp>, now: Timestamp) -> Due {
        let from = match last {
            Some(last) => Timestamp::from_unix_ms(last.unix_ms() + 1),
            None => created,
        };
        let after_now = Timestamp::from_unix_ms(now.unix_ms() + 1);
        if !self.enabled {
            return Due::Nothing { next: None };
        }
        let due = self.starts_between(from, after_now, usize::MAX);
        let Some(&newest) = due.last() else {
            return Due::Nothing {
                next: self.next(after_now, 1).pop(),
            };
        };
        let missed = due.len() as u64 - 1;
        let late = now.unix_ms().saturating_sub(newest.unix_ms()) > GRACE_SECS * 1000;
        match (late, self.catch_up) {
            (false, _) | (true, CatchUp::Once) => Due::Fire {
                occurrence: newest,
                missed,
                late,
            },
            (true, CatchUp::Skip) => Due::Skip {
                occurrence: newest,
                missed,
            },
        }
    }
}

/// The trigger body a schedule fires: checked as a trigger would be, without an override.
fn check_trigger(trigger: &TriggerRequest) -> Result<(), FieldError> {
    let nested =
        |error: FieldError| FieldError::new(format!("trigger.{}", error.field), error.message);
    if trigger.window_override.is_some() {
        return Err(FieldError::new(
            "trigger.override",
            "a schedule fires inside the deployment windows; an override is given per trigger, by an admin",
        ));
    }
    if trigger.environments.is_some() && trigger.selector.is_some() {
        return Err(FieldError::new(
            "trigger.selector",
            "give environments or selector, not both",
        ));
    }
    if let Some(list) = &trigger.environments {
        if list.is_empty() || list.len() > 1_000 {
            return Err(FieldError::new(
                "trigger.environments",
                "must list 1 to 1000 environment ids (leave it out for every enabled environment)",
            ));
        }
        if list
            .iter()
            .any(|id| crate::environments::check_id(id).is_err())
        {
            return Err(FieldError::new(
                "trigger.environments",
                "each must be an environment id (letters, digits, _ - .; at most 64)",
            ));
        }
    }
    if let Some(version) = &trigger.version {
        if version.trim().is_empty() || version.len() > 128 || version.chars().any(char::is_control)
        {
            return Err(FieldError::new(
                "trigger.version",
                "must be 1 to 128 printable characters",
            ));
        }
    }
    trigger.rollout().to_rollout().map_err(nested)?;
    Ok(())
}

#[cfg(test)]
mod tests;
