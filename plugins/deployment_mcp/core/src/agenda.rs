//! The calendar (`GET /calendar`, the dashboard's strip): over a range of days, when each window
//! is open, when each schedule fires, and per environment when the windows close it and which
//! schedules would deploy it.
//!
//! An environment's closed spans follow the rule a trigger is checked by ([`crate::windows`]):
//! an open deny window closes it (the first by id names the span); otherwise, where allow
//! windows cover it, it is closed while none of them is open (named by the one that opens
//! next). Each window is expanded once for the range, and environments that the same windows
//! cover and the same schedules deploy form one group, swept once and sent once: the work and
//! the answer grow with the windows and the distinct groups, not with the catalog.

use std::{collections::HashMap, sync::OnceLock};

use crate::{
    environments::Environment,
    model::Timestamp,
    schedules::{Schedule, ScheduleSpec},
    windows::{opening_first, Occurrences, Window, WindowKind},
    wire::{
        Calendar, CalendarGroup, CalendarSchedule, CalendarWindow, ClosedSpan, EnvironmentCalendar,
        Span,
    },
};

/// The longest range one calendar covers, in days.
pub const MAX_DAYS: usize = 31;

/// The most occurrences looked at per window or schedule: hourly for a fortnight fits.
pub const MAX_OCCURRENCES: usize = 400;

/// What a calendar is worked out from.
pub struct CalendarInput<'a> {
    /// Each window with the reason it was created with.
    pub windows: Vec<(Window, Option<String>)>,
    /// Each stored schedule, with its checked form (absent when it no longer reads).
    pub schedules: Vec<(&'a ScheduleSpec, Option<Schedule>)>,
    pub environments: &'a [Environment],
}

/// The calendar of `[from, to)`.
pub fn calendar(input: CalendarInput<'_>, from: Timestamp, to: Timestamp) -> Calendar {
    let CalendarInput {
        mut windows,
        mut schedules,
        environments,
    } = input;
    windows.sort_by(|a, b| a.0.id.cmp(&b.0.id));
    schedules.sort_by(|a, b| a.0.id.cmp(&b.0.id));
    let sweep = Sweep {
        occurrences: windows
            .iter()
            .map(|(window, _)| window.occurrences(from, to, MAX_OCCURRENCES))
            .collect(),
        after_range: windows.iter().map(|_| OnceLock::new()).collect(),
        windows: windows.iter().map(|(window, _)| window).collect(),
        from,
        to,
    };
    // Only a schedule that reads and is enabled deploys anything.
    let firing: Vec<&ScheduleSpec> = schedules
        .iter()
        .filter(|(spec, schedule)| spec.enabled && schedule.is_some())
        .map(|(spec, _)| *spec)
        .collect();

    let mut group_of: HashMap<(Vec<usize>, Vec<usize>), usize> = HashMap::new();
    let mut groups: Vec<CalendarGroup> = Vec::new();
    let mut rows = Vec::with_capacity(environments.len());
    for environment in environments {
        let covering: Vec<usize> = (0..windows.len())
            .filter(|&index| windows[index].0.covers(environment))
            .collect();
        let deploying: Vec<usize> = (0..firing.len())
            .filter(|&index| targets(firing[index], environment))
            .collect();
        let group =
            *group_of
                .entry((covering, deploying))
                .or_insert_with_key(|(covering, deploying)| {
                    let (closed, exact_until) = sweep.closed_spans(covering);
                    groups.push(CalendarGroup {
                        closed,
                        windows: covering
                            .iter()
                            .map(|&index| windows[index].0.id.clone())
                            .collect(),
                        schedules: deploying
                            .iter()
                            .map(|&index| firing[index].id.clone())
                            .collect(),
                        exact_until,
                    });
                    groups.len() - 1
                });
        rows.push(EnvironmentCalendar {
            environment_id: environment.environment_id.to_string(),
            group,
        });
    }

    let schedule_rows = schedules
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
    let window_rows = windows
        .iter()
        .zip(&sweep.occurrences)
        .map(|((window, reason), occurrences)| CalendarWindow {
            id: window.id.clone(),
            kind: window.kind,
            reason: reason.clone(),
            open: occurrences
                .spans
                .iter()
                .map(|&(start, end)| Span { start, end })
                .collect(),
            truncated: occurrences.cut.is_some(),
        })
        .collect();
    Calendar {
        from,
        to,
        windows: window_rows,
        schedules: schedule_rows,
        groups,
        environments: rows,
    }
}

/// Whether a schedule's trigger would deploy `environment`: an enabled one it names, or whose
/// tags its selector's match (every enabled one when it names none). A trigger naming a
/// disabled environment is refused whole, so it deploys nothing there.
fn targets(spec: &ScheduleSpec, environment: &Environment) -> bool {
    let trigger = &spec.trigger;
    environment.enabled
        && match (&trigger.environments, &trigger.selector) {
            (Some(list), _) => list
                .iter()
                .any(|id| id.as_str() == environment.environment_id.as_str()),
            (None, Some(selector)) => selector
                .iter()
                .all(|(key, value)| environment.tags.get(key) == Some(value)),
            (None, None) => true,
        }
}

/// The windows expanded once for the range, to sweep each group's covering windows.
struct Sweep<'w> {
    windows: Vec<&'w Window>,
    occurrences: Vec<Occurrences>,
    /// Each window's next opening at or after `to`, looked up once, when a group needs it.
    after_range: Vec<OnceLock<Option<Timestamp>>>,
    from: Timestamp,
    to: Timestamp,
}

impl Sweep<'_> {
    /// When the windows at `covering` (indices, in id order) close an environment: one pass
    /// over their occurrences' starts and ends. Exact up to the first start a covering window
    /// left out (returned when there is one); nothing is said after it.
    fn closed_spans(&self, covering: &[usize]) -> (Vec<ClosedSpan>, Option<Timestamp>) {
        let exact_until = covering
            .iter()
            .filter_map(|&index| self.occurrences[index].cut)
            .min();
        let to = exact_until.map_or(self.to, |cut| cut.min(self.to));
        // (instant, +1 opens / -1 closes, window index)
        let mut events: Vec<(Timestamp, i32, usize)> = Vec::new();
        let mut allow_starts: Vec<(Timestamp, usize)> = Vec::new();
        let mut allows = Vec::new();
        for &index in covering {
            let is_allow = self.windows[index].kind == WindowKind::Allow;
            if is_allow {
                allows.push(index);
            }
            for &(start, end) in &self.occurrences[index].spans {
                events.push((start, 1, index));
                events.push((end, -1, index));
                if is_allow {
                    allow_starts.push((start, index));
                }
            }
            // The start left out is its next opening after the listed ones.
            if let (true, Some(cut)) = (is_allow, self.occurrences[index].cut) {
                allow_starts.push((cut, index));
            }
        }
        events.sort_unstable();
        allow_starts.sort_unstable();

        // Open deny windows, by index (so by id), with how many of their spans are open.
        let mut open_denies: std::collections::BTreeMap<usize, u32> = Default::default();
        let mut open_allows = 0_u32;
        let mut spans: Vec<ClosedSpan> = Vec::new();
        let (mut next_event, mut next_allow) = (0, 0);
        let mut at = self.from;
        while at < to {
            while let Some(&(instant, step, index)) = events.get(next_event) {
                if instant > at {
                    break;
                }
                next_event += 1;
                if self.windows[index].kind == WindowKind::Allow {
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
            while allow_starts
                .get(next_allow)
                .is_some_and(|&(start, _)| start < at)
            {
                next_allow += 1;
            }
            let closer = match open_denies.keys().next() {
                Some(&index) => Some(index),
                None if !allows.is_empty() && open_allows == 0 => {
                    match allow_starts.get(next_allow) {
                        Some(&(_, index)) => Some(index),
                        None => opening_first(&allows, |index| {
                            *self.after_range[index]
                                .get_or_init(|| self.windows[index].next_start(self.to))
                        }),
                    }
                }
                None => None,
            };
            if let Some(index) = closer {
                let window = &self.windows[index].id;
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
        (spans, exact_until.filter(|cut| *cut < self.to))
    }
}

#[cfg(test)]
mod tests;
