//! Deployment windows (SPEC §4e): when an environment may be deployed. A window is `deny` (a
//! freeze) or `allow` (the only times an environment it covers may deploy), once (`start`,
//! `end`) or recurring (an RFC 5545 rule from a local `dtstart`, each occurrence lasting
//! `duration_secs`), in an IANA zone, over every environment, a list of them, or those whose
//! tags hold a selector's pairs.
//!
//! Deny wins over allow. An environment no allow window covers may deploy whenever no deny
//! window is open; one that allow windows cover may deploy only while one of them is open.
//! [`WindowSpec`] is what a caller sends and what is stored; [`Window`] is the checked form
//! the checks run on.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::{
    calendar::{self, Recurrence},
    environments::{Environment, FieldError},
    model::Timestamp,
};

/// How far ahead the next opening is looked for: a window closed longer shows no `opens_at`.
const HORIZON_SECS: u64 = 400 * 86_400;

/// The longest occurrence of a recurring window, and of a one-off window.
const MAX_DURATION_SECS: u64 = 366 * 86_400;

/// At most this many windows, so that a check reads a bounded set.
pub const MAX_WINDOWS: usize = 1_000;

/// At most this many environments named by one window.
const MAX_SCOPE: usize = 1_000;

/// `deny` closes what it covers; `allow` opens it (and closes it outside every allow window).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum WindowKind {
    Deny,
    Allow,
}

/// A window as a caller sends it (`POST /windows`) and as the API shows it (with who created it
/// and when, which the host sets).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WindowSpec {
    /// 1 to 64 of `A-Z a-z 0-9 _ - .`.
    pub id: String,
    pub kind: WindowKind,
    /// A one-off window's first instant (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<String>,
    /// A one-off window's end (RFC 3339), after `start`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<String>,
    /// A recurring window's rule (RFC 5545, e.g. `FREQ=WEEKLY;BYDAY=FR;BYHOUR=18`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rrule: Option<String>,
    /// A recurring window's first start, a local time in `time_zone` (`2026-01-02T18:00:00`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dtstart: Option<String>,
    /// How long each occurrence of a recurring window lasts, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_secs: Option<u64>,
    /// IANA zone of `dtstart`; `UTC` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<String>,
    /// The environments it covers; every environment when neither this nor `selector` is given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environments: Option<Vec<String>>,
    /// Instead of `environments`: those whose tags hold all these pairs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<BTreeMap<String, String>>,
    /// Why (shown with a refused trigger).
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

/// When a window is open.
#[derive(Debug, Clone)]
enum When {
    Once {
        start: Timestamp,
        end: Timestamp,
    },
    Recurring {
        rule: Box<Recurrence>,
        duration_secs: u64,
    },
}

/// A window's occurrences within a range ([`Window::occurrences`]).
#[derive(Debug, Clone, Default)]
pub struct Occurrences {
    /// `[start, end)`, in order, not overlapping.
    pub spans: Vec<(Timestamp, Timestamp)>,
    /// The first start left out when the range holds more than were asked for.
    pub cut: Option<Timestamp>,
}

/// What a window covers.
#[derive(Debug, Clone)]
enum Scope {
    Every,
    Environments(Vec<String>),
    Selector(BTreeMap<String, String>),
}

/// A checked window.
#[derive(Debug, Clone)]
pub struct Window {
    pub id: String,
    pub kind: WindowKind,
    when: When,
    scope: Scope,
}

impl Window {
    /// Checks `spec` as a new window: as [`Window::new`], and a recurring one's rule must not
    /// fire too often ([`Recurrence::check_density`]).
    pub fn create(spec: &WindowSpec) -> Result<Window, FieldError> {
        let window = Window::new(spec)?;
        if let When::Recurring { rule, .. } = &window.when {
            rule.check_density()?;
        }
        Ok(window)
    }

    /// Checks `spec` (a stored one too, whose rule was put to the density check when created);
    /// the error names the field at fault.
    pub fn new(spec: &WindowSpec) -> Result<Window, FieldError> {
        check_named(
            &spec.id,
            spec.reason.as_deref(),
            [spec.created_by.is_some(), spec.created_at.is_some()],
        )?;
        let zone = spec.time_zone.as_deref().unwrap_or("UTC");
        calendar::zone("time_zone", zone)?;
        let once = spec.start.is_some() || spec.end.is_some();
        let recurring =
            spec.rrule.is_some() || spec.dtstart.is_some() || spec.duration_secs.is_some();
        let when = match (once, recurring) {
            (true, true) => {
                return Err(FieldError::new(
                    "rrule",
                    "give start and end (once) or rrule, dtstart and duration_secs (recurring), not both",
                ))
            }
            (false, false) => {
                return Err(FieldError::new(
                    "start",
                    "give start and end (once) or rrule, dtstart and duration_secs (recurring)",
                ))
            }
            (true, false) => {
                let start = time_field("start", spec.start.as_deref())?;
                let end = time_field("end", spec.end.as_deref())?;
                if end <= start {
                    return Err(FieldError::new("end", "must be after start"));
                }
                if end.unix_ms() - start.unix_ms() > MAX_DURATION_SECS * 1000 {
                    return Err(FieldError::new("end", "must be at most 366 days after start"));
                }
                When::Once { start, end }
            }
            (false, true) => {
                let rrule = spec
                    .rrule
                    .as_deref()
                    .ok_or_else(|| FieldError::new("rrule", "is required with dtstart"))?;
                let dtstart = spec
                    .dtstart
                    .as_deref()
                    .ok_or_else(|| FieldError::new("dtstart", "is required with rrule"))?;
                let duration_secs = match spec.duration_secs {
                    Some(secs) if (1..=MAX_DURATION_SECS).contains(&secs) => secs,
                    Some(_) => {
                        return Err(FieldError::new(
                            "duration_secs",
                            "must be 1 to 31622400 (366 days)",
                        ))
                    }
                    None => return Err(FieldError::new("duration_secs", "is required with rrule")),
                };
                When::Recurring {
                    rule: Box::new(Recurrence::new(rrule, dtstart, zone)?),
                    duration_secs,
                }
            }
        };
        let scope = match (&spec.environments, &spec.selector) {
            (Some(_), Some(_)) => {
                return Err(FieldError::new(
                    "selector",
                    "give environments or selector, not both",
                ))
            }
            (Some(list), None) if list.is_empty() || list.len() > MAX_SCOPE => {
                return Err(FieldError::new(
                    "environments",
                    format!("must list 1 to {MAX_SCOPE} environment ids (leave it out to cover every environment)"),
                ))
            }
            (Some(list), None) if list.iter().any(|id| crate::environments::check_id(id).is_err()) => {
                return Err(FieldError::new(
                    "environments",
                    "each must be an environment id (letters, digits, _ - .; at most 64)",
                ))
            }
            (Some(list), None) => Scope::Environments(list.clone()),
            (None, Some(selector))
                if selector.is_empty()
                    || selector.len() > 32
                    || selector
                        .iter()
                        .any(|(key, value)| key.len() > 256 || value.len() > 256) =>
            {
                return Err(FieldError::new(
                    "selector",
                    "needs 1 to 32 tags of at most 256 bytes each, e.g. {\"tier\": \"prod\"}",
                ))
            }
            (None, Some(selector)) => Scope::Selector(selector.clone()),
            (None, None) => Scope::Every,
        };
        Ok(Window {
            id: spec.id.clone(),
            kind: spec.kind,
            when,
            scope,
        })
    }

    /// Whether it covers `environment`.
    pub fn covers(&self, environment: &Environment) -> bool {
        match &self.scope {
            Scope::Every => true,
            Scope::Environments(list) => list
                .iter()
                .any(|id| id.as_str() == environment.environment_id.as_str()),
            Scope::Selector(selector) => selector
                .iter()
                .all(|(key, value)| environment.tags.get(key) == Some(value)),
        }
    }

    /// The end of its occurrence open at `at`, if one is.
    pub fn open_at(&self, at: Timestamp) -> Option<Timestamp> {
        match &self.when {
            When::Once { start, end } => (*start <= at && at < *end).then_some(*end),
            When::Recurring {
                rule,
                duration_secs,
            } => {
                let start = rule.last_start_at_or_before(at, *duration_secs)?;
                let end = Timestamp::from_unix_ms(start.unix_ms() + duration_secs * 1000);
                (at < end).then_some(end)
            }
        }
    }

    /// Its occurrences that overlap `[from, to)`, clipped to it, in order, overlapping ones as
    /// one; at most `limit` starts are looked at. When more lie in the range, `cut` is the
    /// first start left out: the spans are exact before it only.
    pub fn occurrences(&self, from: Timestamp, to: Timestamp, limit: usize) -> Occurrences {
        let clip = |(start, end): (Timestamp, Timestamp)| (start.max(from), end.min(to));
        match &self.when {
            When::Once { start, end } => Occurrences {
                spans: (*start < to && *end > from)
                    .then(|| clip((*start, *end)))
                    .into_iter()
                    .collect(),
                cut: None,
            },
            When::Recurring {
                rule,
                duration_secs,
            } => {
                let length = duration_secs * 1000;
                let occurrence =
                    |start: Timestamp| (start, Timestamp::from_unix_ms(start.unix_ms() + length));
                // The occurrence open at `from`, then those starting in the range.
                let open = rule
                    .last_start_at_or_before(from, *duration_secs)
                    .map(occurrence)
                    .filter(|(start, end)| *start < from && *end > from);
                let mut starts = rule.starts_between(from, to, limit + 1);
                let cut = (starts.len() > limit).then(|| starts[limit]);
                starts.truncate(limit);
                let mut spans: Vec<(Timestamp, Timestamp)> = Vec::new();
                for (start, end) in open.into_iter().chain(starts.into_iter().map(occurrence)) {
                    match spans.last_mut() {
                        Some(last) if start <= last.1 => last.1 = last.1.max(end),
                        _ => spans.push((start, end)),
                    }
                }
                Occurrences {
                    spans: spans.into_iter().map(clip).collect(),
                    cut,
                }
            }
        }
    }

    /// The first start of an occurrence at or after `at`, within the horizon.
    pub fn next_start(&self, at: Timestamp) -> Option<Timestamp> {
        match &self.when {
            When::Once { start, .. } => (*start >= at).then_some(*start),
            When::Recurring { rule, .. } => rule.next_start(at, HORIZON_SECS),
        }
    }
}

/// What the windows say of one environment at one instant (`GET /windows/explain`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Verdict {
    pub allowed: bool,
    /// The window that closes it: an open deny window, or the allow window that opens next.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<String>,
    /// When it may deploy next; absent when allowed, or when nothing opens it within 400 days.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub opens_at: Option<Timestamp>,
}

/// Every window, checked, to ask about environments.
#[derive(Debug, Clone, Default)]
pub struct Windows {
    windows: Vec<Window>,
}

impl Windows {
    pub fn new(mut windows: Vec<Window>) -> Windows {
        windows.sort_by(|a, b| a.id.cmp(&b.id));
        Windows { windows }
    }

    pub fn is_empty(&self) -> bool {
        self.windows.is_empty()
    }

    /// Each of `environments` a window closes at `at`, with the window that closes it. Each
    /// window is looked at once at `at`, whatever the number of environments (an allow window's
    /// next start only when one is needed to name it).
    pub fn closed<'e>(
        &self,
        environments: impl IntoIterator<Item = &'e Environment>,
        at: Timestamp,
    ) -> Vec<(&'e Environment, String)> {
        let open: Vec<bool> = self
            .windows
            .iter()
            .map(|window| window.open_at(at).is_some())
            .collect();
        let next: Vec<std::sync::OnceLock<Option<Timestamp>>> =
            self.windows.iter().map(|_| Default::default()).collect();
        let mut closed = Vec::new();
        for environment in environments {
            let covering: Vec<usize> = (0..self.windows.len())
                .filter(|&index| self.windows[index].covers(environment))
                .collect();
            let deny = covering
                .iter()
                .find(|&&index| self.windows[index].kind == WindowKind::Deny && open[index]);
            if let Some(&index) = deny {
                closed.push((environment, self.windows[index].id.clone()));
                continue;
            }
            let allows: Vec<usize> = covering
                .into_iter()
                .filter(|&index| self.windows[index].kind == WindowKind::Allow)
                .collect();
            if allows.is_empty() || allows.iter().any(|&index| open[index]) {
                continue;
            }
            // Named by the allow window that opens next.
            let named = opening_first(&allows, |index| {
                *next[index].get_or_init(|| self.windows[index].next_start(at))
            })
            .map(|index| self.windows[index].id.clone());
            if let Some(window) = named {
                closed.push((environment, window));
            }
        }
        closed
    }

    /// Whether `environment` may deploy at `at`, and if not, which window closes it and when it
    /// opens.
    pub fn explain(&self, environment: &Environment, at: Timestamp) -> Verdict {
        match self.closed([environment], at).pop() {
            None => Verdict {
                allowed: true,
                window: None,
                opens_at: None,
            },
            Some((_, window)) => {
                let covering: Vec<&Window> = self
                    .windows
                    .iter()
                    .filter(|window| window.covers(environment))
                    .collect();
                Verdict {
                    allowed: false,
                    window: Some(window),
                    opens_at: opens_at(&covering, at),
                }
            }
        }
    }
}

/// Of the allow windows at `allows` (indices, in id order), the one whose next opening
/// (`next`) comes first; one that never opens again (within the horizon) comes after every
/// one that does, and a tie goes to the first.
pub(crate) fn opening_first(
    allows: &[usize],
    next: impl Fn(usize) -> Option<Timestamp>,
) -> Option<usize> {
    allows
        .iter()
        .copied()
        .min_by_key(|&index| match next(index) {
            Some(at) => (false, Some(at)),
            None => (true, None),
        })
}

/// The first instant at or after `at` at which these windows leave their environment open.
fn opens_at(windows: &[&Window], at: Timestamp) -> Option<Timestamp> {
    let mut time = at;
    // Each step passes the end of an open deny window or reaches the next allow window.
    for _ in 0..400 {
        if time.unix_ms() > at.unix_ms() + HORIZON_SECS * 1000 {
            return None;
        }
        let deny_end = windows
            .iter()
            .filter(|window| window.kind == WindowKind::Deny)
            .filter_map(|window| window.open_at(time))
            .max();
        if let Some(end) = deny_end {
            time = end;
            continue;
        }
        let allows: Vec<&&Window> = windows
            .iter()
            .filter(|window| window.kind == WindowKind::Allow)
            .collect();
        if allows.is_empty() || allows.iter().any(|window| window.open_at(time).is_some()) {
            return Some(time);
        }
        time = allows
            .iter()
            .filter_map(|window| window.next_start(time))
            .min()?;
    }
    None
}

/// What a window and a schedule share: an id, a reason, and who created it and when, which
/// the host sets (`created`: whether `created_by`, `created_at` were given).
pub(crate) fn check_named(
    id: &str,
    reason: Option<&str>,
    created: [bool; 2],
) -> Result<(), FieldError> {
    for (field, given) in ["created_by", "created_at"].into_iter().zip(created) {
        if given {
            return Err(FieldError::new(field, "is set by the host; leave it out"));
        }
    }
    if !valid_id(id) {
        return Err(FieldError::new(
            "id",
            "must be 1 to 64 of A-Z a-z 0-9 _ - .",
        ));
    }
    if reason.is_some_and(|reason| reason.len() > 1024 || reason.chars().any(char::is_control)) {
        return Err(FieldError::new(
            "reason",
            "must be at most 1024 printable characters",
        ));
    }
    Ok(())
}

pub(crate) fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'_' | b'-' | b'.'))
}

fn time_field(field: &str, text: Option<&str>) -> Result<Timestamp, FieldError> {
    let text = text.ok_or_else(|| FieldError::new(field, "is required for a one-off window"))?;
    text.parse::<Timestamp>()
        .map_err(|error| FieldError::new(field, error.to_string()))
}

#[cfg(test)]
mod tests;
