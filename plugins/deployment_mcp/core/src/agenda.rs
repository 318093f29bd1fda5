//! The calendar (`GET /calendar`, the dashboard's strip): over a range of days, when each window
//! is open, when each schedule fires, and per environment when the windows close it and which
//! schedules would deploy it.
//!
//! An environment's closed spans follow the rule a trigger is checked by ([`crate::windows`]):
//! an open deny window closes it (the first by id names the span); otherwise, where allow
//! windows cover it, it is closed while none of them is open (named by the one that opens
//! next). Each window is expanded once for the range, and environments that the same windows
//! cover share one computation, so the cost grows with the windows, not with the catalog.

use std::collections::{BTreeMap, HashMap};

use crate::{
    environments::Environment,
    model::Timestamp,
    schedules::{Schedule, ScheduleSpec},
    windows::{Window, WindowKind},
    wire::{Calendar, CalendarSchedule, CalendarWindow, ClosedSpan, EnvironmentCalendar, Span},
};

/// The longest range one calendar covers, in days.
pub const MAX_DAYS: usize = 31;

/// The most occurrences listed per window or schedule: hourly for a fortnight fits.
pub const MAX_OCCURRENCES: usize = 400;

/// A window with the reason it was created with.
pub struct CalendarInput<'a> {
    pub windows: Vec<(Window, Option<String>)>,
    /// Each stored schedule, with its checked form (absent when it no longer reads).
    pub schedules: Vec<(&'a ScheduleSpec, Option<Schedule>)>,
    pub environments: &'a [Environment],
}

/// The calendar of `[from, to)`.
pub fn calendar(input: CalendarInput<'_>, from: Timestamp, to: Timestamp) -> Calendar {
    let CalendarInput {
        mut windows,
        schedules,
        environments,
    } = input;
    windows.sort_by(|a, b| a.0.id.cmp(&b.0.id));
    let open: Vec<(Vec<(Timestamp, Timestamp)>, bool)> = windows
        .iter()
        .map(|(window, _)| window.occurrences(from, to, MAX_OCCURRENCES))
        .collect();

    let mut groups: HashMap<Vec<usize>, Vec<ClosedSpan>> = HashMap::new();
    let mut rows = Vec::with_capacity(environments.len());
    for environment in environments {
        let covering: Vec<usize> = (0..windows.len())
            .filter(|&index| windows[index].0.covers(environment))
            .collect();
        let closed = groups
            .entry(covering.clone())
            .or_insert_with(|| closed_spans(&covering, &windows, &open, from, to))
            .clone();
        let schedules = schedules
            .iter()
            .filter(|(spec, schedule)| {
                spec.enabled && schedule.is_some() && targets(spec, environment)
            })
            .map(|(spec, _)| spec.id.clone())
            .collect();
        rows.push(EnvironmentCalendar {
            environment_id: environment.environment_id.to_string(),
            closed,
            windows: covering
                .iter()
                .map(|&index| windows[index].0.id.clone())
                .collect(),
            schedules,
        });
    }

    let mut schedule_rows: Vec<CalendarSchedule> = schedules
        .iter()
        .map(|(spec, schedule)| {
            let mut runs = match schedule {
                Some(schedule) if spec.enabled => {
                    schedule.starts_between(from, to, MAX_OCCURRENCES + 1)
                }
                _ => Vec::new(),
            };
            let truncated = runs.len() > MAX_OCCURRENCES;
            runs.truncate(MAX_OCCURRENCES);
            CalendarSchedule {
                id: spec.id.clone(),
                enabled: spec.enabled,
                reason: spec.reason.clone(),
                runs,
                truncated,
            }
        })
        .collect();
    schedule_rows.sort_by(|a, b| a.id.cmp(&b.id));

    let window_rows = windows
        .into_iter()
        .zip(open)
        .map(|((window, reason), (spans, truncated))| CalendarWindow {
            id: window.id,
            kind: window.kind,
            reason,
            open: spans
                .into_iter()
                .map(|(start, end)| Span { start, end })
                .collect(),
            truncated,
        })
        .collect();
    Calendar {
        from,
        to,
        windows: window_rows,
        schedules: schedule_rows,
        environments: rows,
    }
}

/// Whether a schedule's trigger would deploy `environment`: the ones it names, or the enabled
/// ones its selector's tags match (every enabled one when it names none).
fn targets(spec: &ScheduleSpec, environment: &Environment) -> bool {
    let trigger = &spec.trigger;
    match (&trigger.environments, &trigger.selector) {
        (Some(list), _) => list
            .iter()
            .any(|id| id.as_str() == environment.environment_id.as_str()),
        (None, Some(selector)) => {
            environment.enabled
                && selector
                    .iter()
                    .all(|(key, value)| environment.tags.get(key) == Some(value))
        }
        (None, None) => environment.enabled,
    }
}

/// When the windows at `covering` (indices into `windows`, in id order) close an environment
/// within `[from, to)`: one sweep over their occurrences' starts and ends.
fn closed_spans(
    covering: &[usize],
    windows: &[(Window, Option<String>)],
    open: &[(Vec<(Timestamp, Timestamp)>, bool)],
    from: Timestamp,
    to: Timestamp,
) -> Vec<ClosedSpan> {
    // (instant, +1 opens / -1 closes, window index)
    let mut events: Vec<(Timestamp, i32, usize)> = Vec::new();
    let mut allow_starts: Vec<(Timestamp, usize)> = Vec::new();
    let mut allows = Vec::new();
    for &index in covering {
        let is_allow = windows[index].0.kind == WindowKind::Allow;
        if is_allow {
            allows.push(index);
        }
        for &(start, end) in &open[index].0 {
            events.push((start, 1, index));
            events.push((end, -1, index));
            if is_allow {
                allow_starts.push((start, index));
            }
        }
    }
    events.sort_unstable();
    allow_starts.sort_unstable();
    // The allow window that opens next after the range, to name a closure that lasts past it.
    let mut after_range: Option<Option<usize>> = None;

    let mut open_denies: BTreeMap<usize, u32> = BTreeMap::new();
    let mut open_allows = 0_u32;
    let mut spans: Vec<ClosedSpan> = Vec::new();
    let mut next_event = 0;
    let mut at = from;
    while at < to {
        while let Some(&(instant, step, index)) = events.get(next_event) {
            if instant > at {
                break;
            }
            next_event += 1;
            if windows[index].0.kind == WindowKind::Allow {
                open_allows = open_allows.saturating_add_signed(step);
            } else if step > 0 {
                *open_denies.entry(index).or_default() += 1;
            } else if let Some(count) = open_denies.get_mut(&index) {
                *count -= 1;
                if *count == 0 {
                    open_denies.remove(&index);
                }
            }
        }
        let until = events
            .get(next_event)
            .map_or(to, |&(instant, _, _)| instant.min(to));
        let closer = match open_denies.keys().next() {
            Some(&index) => Some(index),
            None if !allows.is_empty() && open_allows == 0 => {
                let next_allow = allow_starts
                    .iter()
                    .find(|&&(start, _)| start >= at)
                    .map(|&(_, index)| index);
                next_allow.or_else(|| {
                    *after_range.get_or_insert_with(|| {
                        allows
                            .iter()
                            .min_by_key(|&&index| {
                                windows[index]
                                    .0
                                    .next_start(to)
                                    .unwrap_or(Timestamp::from_unix_ms(u64::MAX / 4))
                            })
                            .copied()
                    })
                })
            }
            None => None,
        };
        if let Some(index) = closer {
            let window = &windows[index].0.id;
            match spans.last_mut() {
                Some(last) if last.end == at && &last.window == window => last.end = until,
                _ => spans.push(ClosedSpan {
                    start: at,
                    end: until,
                    window: window.clone(),
                }),
            }
        }
        at = until;
    }
    spans
}

#[cfg(test)]
mod tests;
