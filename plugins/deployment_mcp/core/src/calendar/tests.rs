//! The recurrence against the system's time zone database as `zdump` reads it: every DST
//! change of a few zones over ten years, a daily rule at a local time the change skips or
//! repeats, and hourly rules across each change.

use std::process::Command;

use jiff::{civil, tz::Offset, ToSpan};

use super::*;

/// A change of a zone's offset, as `zdump -v` lists it.
#[derive(Debug)]
struct Change {
    /// The first second of the new offset (UTC).
    at: jiff::Timestamp,
    before: i32,
    after: i32,
}

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// `Sun Mar 29 01:00:00 2026 UT` (the tokens after the zone's name) as an instant.
fn utc_of(tokens: &[&str]) -> jiff::Timestamp {
    let month = MONTHS
        .iter()
        .position(|name| *name == tokens[1])
        .expect("a month name") as i8
        + 1;
    let day: i8 = tokens[2].parse().expect("a day");
    let year: i16 = tokens[4].parse().expect("a year");
    let time = civil::Time::from_str(tokens[3]).expect("a time");
    civil::Date::new(year, month, day)
        .expect("a date")
        .to_datetime(time)
        .to_zoned_datetime(TimeZone::UTC)
        .expect("in range")
        .timestamp()
}

/// Every offset change of `zone` in `[from, to)` (years), read by `zdump -v`.
fn changes(zone: &str, from: i16, to: i16) -> Vec<Change> {
    let output = Command::new("zdump")
        .args(["-v", "-c", &format!("{from},{to}"), zone])
        .output()
        .expect("zdump runs (it comes with the C library's tools)");
    assert!(output.status.success(), "zdump {zone} failed");
    let text = String::from_utf8(output.stdout).expect("zdump writes text");
    let lines: Vec<(jiff::Timestamp, i32)> = text
        .lines()
        .filter(|line| !line.ends_with("NULL"))
        .map(|line| {
            let tokens: Vec<&str> = line.split_whitespace().collect();
            let offset = tokens
                .last()
                .and_then(|last| last.strip_prefix("gmtoff="))
                .expect("gmtoff")
                .parse()
                .expect("an offset");
            (utc_of(&tokens[1..6]), offset)
        })
        .collect();
    lines
        .chunks(2)
        .map(|pair| {
            assert_eq!(
                pair[1].0,
                pair[0].0 + 1.second(),
                "zdump lists a change as two lines"
            );
            Change {
                at: pair[1].0,
                before: pair[0].1,
                after: pair[1].1,
            }
        })
        .filter(|change| change.before != change.after)
        .collect()
}

fn ms(time: jiff::Timestamp) -> Timestamp {
    moment(time)
}

/// The local time `time` at a fixed offset.
fn local_at(time: jiff::Timestamp, offset: i32) -> civil::DateTime {
    Offset::from_seconds(offset)
        .expect("an offset")
        .to_datetime(time)
}

/// The instant of local `time` at a fixed offset.
fn instant_at(time: civil::DateTime, offset: i32) -> jiff::Timestamp {
    Offset::from_seconds(offset)
        .expect("an offset")
        .to_timestamp(time)
        .expect("in range")
}

const ZONES: [&str; 5] = [
    "Europe/Berlin",
    "America/New_York",
    "Australia/Lord_Howe",
    "America/Santiago",
    "Pacific/Chatham",
];

#[test]
fn a_daily_rule_takes_a_skipped_time_with_the_offset_before_and_a_repeated_one_once() {
    let mut checked = 0;
    for zone in ZONES {
        let found = changes(zone, 2027, 2037);
        assert!(
            found.len() >= 18,
            "{zone}: {} changes in ten years",
            found.len()
        );
        for change in found {
            let shift = i64::from(change.after - change.before);
            // The middle of the skipped or repeated local times.
            let middle = if shift > 0 {
                local_at(change.at, change.before) + (shift / 2).seconds()
            } else {
                local_at(change.at, change.after) + (-shift / 2).seconds()
            };
            let day_before = middle - 1.day();
            let recurrence = Recurrence::new("FREQ=DAILY;COUNT=3", &day_before.to_string(), zone)
                .expect("a valid rule");
            let from = ms(instant_at(day_before, change.before) - 1.hour());
            let to = ms(instant_at(middle + 1.day(), change.after) + 1.hour());
            let starts = recurrence.starts_between(from, to, 10);
            // RFC 5545 §3.3.5: skipped, the offset before the change; repeated, the first.
            let expected = vec![
                ms(instant_at(day_before, change.before)),
                ms(instant_at(middle, change.before)),
                ms(instant_at(middle + 1.day(), change.after)),
            ];
            assert_eq!(starts, expected, "{zone} around {change:?}: local {middle}");
            checked += 1;
        }
    }
    assert!(checked >= 90, "{checked} changes checked");
}

#[test]
fn an_hourly_rule_fires_each_instant_once_across_every_change() {
    for zone in ZONES {
        for change in changes(zone, 2027, 2037) {
            let start = local_at(change.at, change.before) - 6.hours();
            let recurrence =
                Recurrence::new("FREQ=HOURLY", &start.to_string(), zone).expect("a valid rule");
            let from = ms(change.at - 6.hours());
            let to = ms(change.at + 6.hours());
            let starts = recurrence.starts_between(from, to, 100);
            assert!(
                starts.windows(2).all(|pair| pair[0] < pair[1]),
                "{zone} around {change:?}: not strictly increasing: {starts:?}"
            );
            // Twelve real hours hold 12 local hours, give or take the change.
            let hours = change.after - change.before;
            assert!(
                (10..=13).contains(&starts.len()),
                "{zone} around {change:?} ({hours} s): {} starts",
                starts.len()
            );
        }
    }
}

#[test]
fn until_is_an_instant_and_bad_fields_are_named() {
    // 22:00 in Berlin is 21:00Z in winter: UNTIL at 21:00Z keeps the 5th, not the 6th.
    let recurrence = Recurrence::new(
        "FREQ=DAILY;UNTIL=20270105T210000Z",
        "2027-01-01T22:00:00",
        "Europe/Berlin",
    )
    .expect("valid");
    let starts = recurrence.starts_between(
        "2027-01-01T00:00:00Z".parse().expect("time"),
        "2027-02-01T00:00:00Z".parse().expect("time"),
        100,
    );
    assert_eq!(starts.len(), 5, "{starts:?}");
    assert_eq!(starts[4].to_string(), "2027-01-05T21:00:00.000Z");

    let field = |rule: &str, start: &str, zone: &str| {
        Recurrence::new(rule, start, zone)
            .expect_err("refused")
            .field
    };
    assert_eq!(
        field("FREQ=SOMETIMES", "2027-01-01T00:00:00", "UTC"),
        "rrule"
    );
    assert_eq!(
        field("FREQ=DAILY;UNTIL=2027", "2027-01-01T00:00:00", "UTC"),
        "rrule"
    );
    assert_eq!(
        field("FREQ=DAILY", "2027-01-01T00:00:00Z", "UTC"),
        "dtstart"
    );
    assert_eq!(
        field("FREQ=DAILY", "2027-01-01T00:00:00", "Mars/Olympus"),
        "time_zone"
    );
}

#[test]
fn the_next_and_the_last_start() {
    let recurrence = Recurrence::new(
        "FREQ=WEEKLY;BYDAY=SA",
        "2027-01-02T22:00:00",
        "America/New_York",
    )
    .expect("valid");
    let monday: Timestamp = "2027-01-04T12:00:00Z".parse().expect("time");
    assert_eq!(
        recurrence
            .next_start(monday, 8 * 86_400)
            .map(|at| at.to_string()),
        Some("2027-01-10T03:00:00.000Z".into())
    );
    assert_eq!(
        recurrence
            .last_start_at_or_before(monday, 8 * 86_400)
            .map(|at| at.to_string()),
        Some("2027-01-03T03:00:00.000Z".into())
    );
}
