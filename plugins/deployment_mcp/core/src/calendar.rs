//! When recurring things happen: an RFC 5545 rule (`FREQ=WEEKLY;BYDAY=SA;BYHOUR=22`), its first
//! start as a local time (`dtstart`), and an IANA time zone.
//!
//! The `rrule` crate expands the rule in local ("floating") time; each local time then becomes
//! an instant through the zone (jiff, the system's time zone database, or the copy built in
//! where a machine has none) by RFC 5545's rule for local times a DST change skips or repeats:
//! a skipped time is taken with the offset before the change (02:30 on a spring-forward night
//! is 03:30 after it), a repeated time is its first occurrence. Two local times that become
//! one instant (a skipped hour and the next) count once. No calendar arithmetic is done here:
//! the crates do it.

use std::str::FromStr;

use chrono::{Datelike, TimeZone as _, Timelike};
use jiff::{civil, tz::TimeZone};

use crate::{environments::FieldError, model::Timestamp};

/// The longest rule text taken.
const MAX_RULE: usize = 512;

/// How many local times one expansion looks at before it gives up (see [`MAX_DENSITY`]).
const MAX_STEPS: usize = 1_000_000;

/// The most occurrences a rule may have within ten years of the later of its start and now: an
/// expansion walks every occurrence from `dtstart`, so a denser rule is refused rather than
/// served slowly. About hourly; an hourly rule walks a million steps only after 114 years.
pub const MAX_DENSITY: usize = 100_000;

/// Ten years (of 365.25 days), in milliseconds: how far a rule is looked at from now.
pub const TEN_YEARS_MS: u64 = 3_653 * 86_400_000;

/// Local times near an instant lie within a day of its UTC time in every zone.
const ZONE_MARGIN: chrono::TimeDelta = chrono::TimeDelta::days(1);

/// A zone by its IANA name (`Europe/Berlin`, `UTC`); the error names `field`.
pub fn zone(field: &str, name: &str) -> Result<TimeZone, FieldError> {
    if name.is_empty() || name.len() > 64 {
        return Err(FieldError::new(
            field,
            "must be an IANA time zone name such as Europe/Berlin or UTC",
        ));
    }
    TimeZone::get(name).map_err(|_| {
        FieldError::new(
            field,
            format!("{name:?} is not a time zone this host knows; use an IANA name such as Europe/Berlin or UTC"),
        )
    })
}

/// A recurrence: the rule, its local start, its zone.
#[derive(Clone)]
pub struct Recurrence {
    rule: rrule::RRule<rrule::Unvalidated>,
    /// `dtstart` as a floating time (a UTC date-time standing for the local one).
    start: chrono::DateTime<rrule::Tz>,
    /// The rule's `UNTIL`, an instant (RFC 5545: UTC where `DTSTART` has a zone), applied to
    /// instants rather than to the floating times.
    until: Option<jiff::Timestamp>,
    zone: TimeZone,
}

impl std::fmt::Debug for Recurrence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recurrence")
            .field("rule", &self.rule.to_string())
            .field("start", &self.start.naive_utc())
            .field("zone", &self.zone.iana_name())
            .finish()
    }
}

impl Recurrence {
    /// Reads `rule` (`FREQ=…;…`, with or without `RRULE:`), `dtstart` (a local time without an
    /// offset, `2026-01-05T22:00:00`) and `time_zone`; each error names its field. Creating a
    /// window or schedule also puts the rule to [`Recurrence::check_density`]; reading one
    /// does not.
    pub fn new(rule: &str, dtstart: &str, time_zone: &str) -> Result<Recurrence, FieldError> {
        let zone = zone("time_zone", time_zone)?;
        let local = civil::DateTime::from_str(dtstart).map_err(|_| {
            FieldError::new(
                "dtstart",
                format!("expected a local time without an offset, such as 2026-01-05T22:00:00, got {:?}", shorten(dtstart)),
            )
        })?;
        let start = floating(local).ok_or_else(|| {
            FieldError::new("dtstart", "must lie between the years 1970 and 9999")
        })?;
        let text = rule.trim();
        let text = text.strip_prefix("RRULE:").unwrap_or(text);
        if text.is_empty() || text.len() > MAX_RULE || text.contains(['\n', '\r']) {
            return Err(FieldError::new(
                "rrule",
                format!("must be one RFC 5545 rule of at most {MAX_RULE} characters, such as FREQ=WEEKLY;BYDAY=SA"),
            ));
        }
        let mut until = None;
        let mut parts = Vec::new();
        for part in text.split(';') {
            match part.split_once('=') {
                Some((name, value)) if name.eq_ignore_ascii_case("UNTIL") => {
                    until = Some(until_instant(value)?);
                }
                Some((name, _)) if name.eq_ignore_ascii_case("DTSTART") => {
                    return Err(FieldError::new(
                        "rrule",
                        "give the start as dtstart, not inside the rule",
                    ))
                }
                _ => parts.push(part),
            }
        }
        let rule =
            rrule::RRule::<rrule::Unvalidated>::from_str(&parts.join(";")).map_err(|error| {
                FieldError::new("rrule", format!("not a valid RFC 5545 rule: {error}"))
            })?;
        // Built once here, so that a rule the crate refuses is refused at creation.
        rule.clone().build(start).map_err(|error| {
            FieldError::new("rrule", format!("not a valid RFC 5545 rule: {error}"))
        })?;
        Ok(Recurrence {
            rule,
            start,
            until,
            zone,
        })
    }

    /// Refuses a rule that fires more than [`MAX_DENSITY`] times within ten years of the later
    /// of its start and now. Checked when a window or schedule is created, not each time a
    /// stored one is read: the count is an expansion of up to ten years, too dear for every
    /// trigger's window check, and every expansion stays bounded by its step limit anyway.
    pub fn check_density(&self) -> Result<(), FieldError> {
        let now = Timestamp::now();
        let from = self.resolve(self.start).map(moment).unwrap_or(now).max(now);
        let ten_years = Timestamp::from_unix_ms(from.unix_ms() + TEN_YEARS_MS);
        if self.starts_between(from, ten_years, MAX_DENSITY + 1).len() > MAX_DENSITY {
            return Err(FieldError::new(
                "rrule",
                format!("fires more than {MAX_DENSITY} times within ten years; a window or schedule recurs at most about hourly"),
            ));
        }
        Ok(())
    }

    /// The zone's IANA name.
    pub fn zone_name(&self) -> &str {
        self.zone.iana_name().unwrap_or("UTC")
    }

    /// The starts in `[from, to)`, in order, each once; at most `limit` of them.
    pub fn starts_between(&self, from: Timestamp, to: Timestamp, limit: usize) -> Vec<Timestamp> {
        let (from, to) = (instant(from), instant(to));
        let to = match self.until {
            Some(until) if until < to => until
                .checked_add(jiff::SignedDuration::from_millis(1))
                .unwrap_or(until),
            _ => to,
        };
        if from >= to || limit == 0 {
            return Vec::new();
        }
        let Some(low) = self.local_floating(from).map(|time| time - ZONE_MARGIN) else {
            return Vec::new();
        };
        let Some(high) = self.local_floating(to).map(|time| time + ZONE_MARGIN) else {
            return Vec::new();
        };
        // Limited: a rule that matches nothing (the 30th of February) ends instead of searching on.
        let Ok(set) = self
            .rule
            .clone()
            .build(self.start)
            .map(rrule::RRuleSet::limit)
        else {
            return Vec::new();
        };
        let mut starts: Vec<Timestamp> = Vec::new();
        for (step, time) in set.into_iter().enumerate() {
            if step >= MAX_STEPS {
                tracing::warn!(rule = %self.rule, "a recurrence walked {MAX_STEPS} occurrences without reaching the time asked about; its later occurrences are not seen");
                break;
            }
            if time > high {
                break;
            }
            if time < low {
                continue;
            }
            let Some(at) = self.resolve(time) else {
                continue;
            };
            if at < from || at >= to {
                continue;
            }
            let at = moment(at);
            // A skipped local time and the one after it can be one instant: once.
            if starts.last() != Some(&at) {
                starts.push(at);
            }
            if starts.len() >= limit {
                break;
            }
        }
        starts.sort();
        starts.dedup();
        starts
    }

    /// The last start at or before `at`, looking back at most `lookback` seconds.
    pub fn last_start_at_or_before(&self, at: Timestamp, lookback: u64) -> Option<Timestamp> {
        let from =
            Timestamp::from_unix_ms(at.unix_ms().saturating_sub(lookback.saturating_mul(1000)));
        let to = Timestamp::from_unix_ms(at.unix_ms().saturating_add(1));
        self.starts_between(from, to, usize::MAX).pop()
    }

    /// The first start at or after `at`, looking ahead at most `horizon` seconds.
    pub fn next_start(&self, at: Timestamp, horizon: u64) -> Option<Timestamp> {
        let to = Timestamp::from_unix_ms(at.unix_ms().saturating_add(horizon.saturating_mul(1000)));
        self.starts_between(at, to, 1).into_iter().next()
    }

    /// `instant` as a floating local time in this zone.
    fn local_floating(&self, instant: jiff::Timestamp) -> Option<chrono::DateTime<rrule::Tz>> {
        floating(instant.to_zoned_datetime(self.zone.clone()).datetime())
    }

    /// A floating local time as an instant: a skipped time with the offset before the change, a
    /// repeated time at its first occurrence (RFC 5545 §3.3.5).
    fn resolve(&self, time: chrono::DateTime<rrule::Tz>) -> Option<jiff::Timestamp> {
        let naive = time.naive_utc();
        let local = civil::DateTime::new(
            i16::try_from(naive.year()).ok()?,
            i8::try_from(naive.month()).ok()?,
            i8::try_from(naive.day()).ok()?,
            i8::try_from(naive.hour()).ok()?,
            i8::try_from(naive.minute()).ok()?,
            i8::try_from(naive.second()).ok()?,
            0,
        )
        .ok()?;
        self.zone.to_ambiguous_timestamp(local).compatible().ok()
    }
}

/// A local time as the floating time the rule crate expands (seconds; years 1970–9999).
fn floating(local: civil::DateTime) -> Option<chrono::DateTime<rrule::Tz>> {
    if !(1970..=9999).contains(&local.year()) {
        return None;
    }
    rrule::Tz::UTC
        .with_ymd_and_hms(
            i32::from(local.year()),
            u32::try_from(local.month()).ok()?,
            u32::try_from(local.day()).ok()?,
            u32::try_from(local.hour()).ok()?,
            u32::try_from(local.minute()).ok()?,
            u32::try_from(local.second()).ok()?,
        )
        .single()
}

/// `UNTIL=20271231T235959Z` as an instant.
fn until_instant(value: &str) -> Result<jiff::Timestamp, FieldError> {
    let bad = || {
        FieldError::new(
            "rrule",
            format!(
                "UNTIL must be a UTC time such as 20271231T235959Z, got {:?}",
                shorten(value)
            ),
        )
    };
    let bytes = value.as_bytes();
    if !value.is_ascii() || bytes.len() != 16 || bytes[8] != b'T' || bytes[15] != b'Z' {
        return Err(bad());
    }
    let text = format!(
        "{}-{}-{}T{}:{}:{}Z",
        &value[0..4],
        &value[4..6],
        &value[6..8],
        &value[9..11],
        &value[11..13],
        &value[13..15]
    );
    jiff::Timestamp::from_str(&text).map_err(|_| bad())
}

fn instant(time: Timestamp) -> jiff::Timestamp {
    jiff::Timestamp::from_millisecond(i64::try_from(time.unix_ms()).unwrap_or(i64::MAX))
        .unwrap_or(jiff::Timestamp::MAX)
}

fn moment(time: jiff::Timestamp) -> Timestamp {
    Timestamp::from_unix_ms(u64::try_from(time.as_millisecond()).unwrap_or(0))
}

fn shorten(text: &str) -> String {
    text.chars().take(64).collect()
}

#[cfg(test)]
mod tests;
