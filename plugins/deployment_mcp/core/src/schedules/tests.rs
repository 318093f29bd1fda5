//! Schedules with an injected clock: what is due at each instant, for one-off and recurring
//! schedules, on time, missed (each `catch_up`), and across DST changes.

use super::*;

fn at(text: &str) -> Timestamp {
    text.parse().expect("a test instant")
}

fn spec(json: serde_json::Value) -> ScheduleSpec {
    serde_json::from_value(json).expect("a test schedule")
}

fn schedule(json: serde_json::Value) -> Schedule {
    Schedule::new(&spec(json)).expect("a valid test schedule")
}

fn error(json: serde_json::Value) -> FieldError {
    Schedule::create(&spec(json), at("2027-01-01T00:00:00Z")).expect_err("refused")
}

#[test]
fn a_one_off_schedule_is_due_once_at_its_instant() {
    let once = schedule(serde_json::json!({"id": "once", "at": "2027-03-01T10:00:00Z"}));
    let created = at("2027-02-01T00:00:00Z");
    assert_eq!(
        once.due(created, None, at("2027-03-01T09:59:59.999Z")),
        Due::Nothing {
            next: Some(at("2027-03-01T10:00:00Z"))
        }
    );
    assert_eq!(
        once.due(created, None, at("2027-03-01T10:00:00Z")),
        Due::Fire {
            occurrence: at("2027-03-01T10:00:00Z"),
            missed: 0,
            late: false
        }
    );
    // Once handled, never again.
    assert_eq!(
        once.due(
            created,
            Some(at("2027-03-01T10:00:00Z")),
            at("2027-03-02T00:00:00Z")
        ),
        Due::Nothing { next: None }
    );
}

#[test]
fn a_missed_occurrence_is_skipped_or_caught_up_once() {
    let json = |catch_up: &str| {
        serde_json::json!({
            "id": "nightly", "rrule": "FREQ=DAILY;BYHOUR=2", "dtstart": "2027-01-01T02:00:00",
            "time_zone": "Europe/Berlin", "catch_up": catch_up,
        })
    };
    let created = at("2027-01-01T00:00:00Z");
    let last = Some(at("2027-01-05T01:00:00Z"));
    // Down from the 6th to the 9th at noon: the 6th, 7th, 8th and 9th were missed.
    let now = at("2027-01-09T12:00:00Z");
    assert_eq!(
        schedule(json("skip")).due(created, last, now),
        Due::Skip {
            occurrence: at("2027-01-09T01:00:00Z"),
            missed: 3
        }
    );
    assert_eq!(
        schedule(json("once")).due(created, last, now),
        Due::Fire {
            occurrence: at("2027-01-09T01:00:00Z"),
            missed: 3,
            late: true
        }
    );
    // Within the grace, on time: fired, whatever catch_up says.
    assert_eq!(
        schedule(json("skip")).due(created, last, at("2027-01-06T01:00:59Z")),
        Due::Fire {
            occurrence: at("2027-01-06T01:00:00Z"),
            missed: 0,
            late: false
        }
    );
}

#[test]
fn only_occurrences_after_creation_count() {
    let hourly = schedule(serde_json::json!({
        "id": "h", "rrule": "FREQ=HOURLY", "dtstart": "2020-01-01T00:30:00",
    }));
    let created = at("2027-05-01T10:40:00Z");
    assert_eq!(
        hourly.due(created, None, at("2027-05-01T10:50:00Z")),
        Due::Nothing {
            next: Some(at("2027-05-01T11:30:00Z"))
        }
    );
    assert_eq!(
        hourly.next(at("2027-05-01T10:50:00Z"), 3),
        vec![
            at("2027-05-01T11:30:00Z"),
            at("2027-05-01T12:30:00Z"),
            at("2027-05-01T13:30:00Z")
        ]
    );
}

#[test]
fn local_times_follow_dst_changes() {
    // 02:30 daily in Berlin: skipped on 2027-03-28 (taken at 03:30 CEST, the offset before the
    // change applied), repeated on 2027-10-31 (fired once, at the first 02:30).
    let nightly = schedule(serde_json::json!({
        "id": "n", "rrule": "FREQ=DAILY", "dtstart": "2027-03-27T02:30:00",
        "time_zone": "Europe/Berlin",
    }));
    assert_eq!(
        nightly.next(at("2027-03-27T00:00:00Z"), 3),
        vec![
            at("2027-03-27T01:30:00Z"),
            at("2027-03-28T01:30:00Z"),
            at("2027-03-29T00:30:00Z")
        ]
    );
    assert_eq!(
        nightly.starts_between(at("2027-10-30T00:00:00Z"), at("2027-11-01T00:00:00Z"), 10),
        vec![at("2027-10-30T00:30:00Z"), at("2027-10-31T00:30:00Z")]
    );
}

#[test]
fn a_disabled_schedule_is_never_due() {
    let off = schedule(serde_json::json!({
        "id": "off", "at": "2027-03-01T10:00:00Z", "enabled": false,
    }));
    assert_eq!(
        off.due(at("2027-01-01T00:00:00Z"), None, at("2027-03-01T10:00:00Z")),
        Due::Nothing { next: None }
    );
}

#[test]
fn bad_schedules_name_the_field() {
    let cases = [
        (serde_json::json!({"id": "x"}), "at"),
        (
            serde_json::json!({"id": "x", "at": "2026-12-31T23:00:00Z"}),
            "at",
        ),
        (serde_json::json!({"id": "x", "at": "tomorrow"}), "at"),
        (
            serde_json::json!({"id": "x", "at": "2027-06-01T00:00:00Z", "rrule": "FREQ=DAILY"}),
            "rrule",
        ),
        (
            serde_json::json!({"id": "x", "rrule": "FREQ=DAILY"}),
            "dtstart",
        ),
        (
            serde_json::json!({"id": "x", "rrule": "FREQ=SECONDLY", "dtstart": "2027-01-01T00:00:00"}),
            "rrule",
        ),
        (
            serde_json::json!({"id": "x", "at": "2027-06-01T00:00:00Z", "time_zone": "Mars/Base"}),
            "time_zone",
        ),
        (
            serde_json::json!({"id": "x y", "at": "2027-06-01T00:00:00Z"}),
            "id",
        ),
        (
            serde_json::json!({"id": "x", "at": "2027-06-01T00:00:00Z",
                "trigger": {"override": {"reason": "always"}}}),
            "trigger.override",
        ),
        (
            serde_json::json!({"id": "x", "at": "2027-06-01T00:00:00Z",
                "trigger": {"environments": ["a"], "selector": {"tier": "prod"}}}),
            "trigger.selector",
        ),
        (
            serde_json::json!({"id": "x", "at": "2027-06-01T00:00:00Z",
                "trigger": {"environments": ["../etc"]}}),
            "trigger.environments",
        ),
        (
            serde_json::json!({"id": "x", "at": "2027-06-01T00:00:00Z",
                "created_by": "api:someone"}),
            "created_by",
        ),
    ];
    for (json, field) in cases {
        assert_eq!(error(json.clone()).field, field, "{json}");
    }
    let unknown = serde_json::from_value::<ScheduleSpec>(
        serde_json::json!({"id": "x", "at": "2027-06-01T00:00:00Z", "cron": "* * * * *"}),
    );
    assert!(unknown.is_err());
}
