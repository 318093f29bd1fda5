//! The calendar: closed spans agree with the trigger's check at every instant, deny beats
//! allow, environments sharing windows share spans, and schedules land on the environments
//! their trigger would deploy.

use super::*;
use crate::windows::{WindowSpec, Windows};

fn environment(id: &str, tier: &str, enabled: bool) -> Environment {
    crate::environments::parse_one(
        format!(
            r#"{{"environment_id": "{id}", "environment_type": "linux_local", "connection_method": "local",
                 "command": ["true"], "tags": {{"tier": "{tier}"}}, "enabled": {enabled}}}"#
        )
        .as_bytes(),
    )
    .expect("an environment")
}

fn window(json: serde_json::Value) -> (Window, Option<String>) {
    let spec: WindowSpec = serde_json::from_value(json).expect("a window spec");
    (Window::new(&spec).expect("a valid window"), spec.reason)
}

fn schedule_spec(json: serde_json::Value) -> ScheduleSpec {
    serde_json::from_value(json).expect("a schedule spec")
}

fn at(text: &str) -> Timestamp {
    text.parse().expect("a time")
}

/// The group `environment` is in.
fn group<'c>(calendar: &'c Calendar, environment: &str) -> &'c CalendarGroup {
    let row = calendar
        .environments
        .iter()
        .find(|row| row.environment_id == environment)
        .expect("the environment's row");
    &calendar.groups[row.group]
}

fn span(start: &str, end: &str, window: &str) -> ClosedSpan {
    ClosedSpan {
        start: at(start),
        end: at(end),
        window: window.into(),
    }
}

fn windows_of_berlin_week() -> Vec<(Window, Option<String>)> {
    vec![
        // Production deploys on weeknights 22:00–02:00 Berlin time…
        window(serde_json::json!({
            "id": "nightly", "kind": "allow", "rrule": "FREQ=WEEKLY;BYDAY=MO,TU,WE,TH,FR",
            "dtstart": "2027-01-04T22:00:00", "duration_secs": 14_400,
            "time_zone": "Europe/Berlin", "selector": {"tier": "prod"}
        })),
        // …except during a freeze over Wednesday night.
        window(serde_json::json!({
            "id": "freeze", "kind": "deny", "reason": "release party",
            "start": "2027-03-24T20:00:00Z", "end": "2027-03-25T00:00:00Z",
            "selector": {"tier": "prod"}
        })),
        // Everything stops for an hour on Thursday.
        window(serde_json::json!({
            "id": "all-hands", "kind": "deny",
            "start": "2027-03-25T09:00:00Z", "end": "2027-03-25T10:00:00Z"
        })),
    ]
}

#[test]
fn closed_spans_follow_deny_over_allow_and_name_the_window() {
    let environments = [
        environment("p1", "prod", true),
        environment("s1", "staging", true),
    ];
    let calendar = calendar(
        CalendarInput {
            windows: windows_of_berlin_week(),
            schedules: Vec::new(),
            environments: &environments,
        },
        at("2027-03-24T12:00:00Z"),
        at("2027-03-26T12:00:00Z"),
    );
    // Berlin is UTC+1 until the 28th: the nightly window is 21:00–01:00 UTC.
    assert_eq!(
        group(&calendar, "p1").closed,
        vec![
            span("2027-03-24T12:00:00Z", "2027-03-24T20:00:00Z", "nightly"),
            span("2027-03-24T20:00:00Z", "2027-03-25T00:00:00Z", "freeze"),
            // Open 00:00–01:00 (the rest of the nightly window), then closed until 21:00 but
            // for the all-hands hour, which a deny window names.
            span("2027-03-25T01:00:00Z", "2027-03-25T09:00:00Z", "nightly"),
            span("2027-03-25T09:00:00Z", "2027-03-25T10:00:00Z", "all-hands"),
            span("2027-03-25T10:00:00Z", "2027-03-25T21:00:00Z", "nightly"),
            span("2027-03-26T01:00:00Z", "2027-03-26T12:00:00Z", "nightly"),
        ]
    );
    assert_eq!(
        group(&calendar, "p1").windows,
        ["all-hands", "freeze", "nightly"]
    );
    assert_eq!(
        group(&calendar, "s1").closed,
        vec![span(
            "2027-03-25T09:00:00Z",
            "2027-03-25T10:00:00Z",
            "all-hands"
        )]
    );
    let freeze = &calendar.windows[1];
    assert_eq!(
        (freeze.id.as_str(), freeze.reason.as_deref()),
        ("freeze", Some("release party"))
    );
    let nightly = &calendar.windows[2];
    let opens: Vec<(Timestamp, Timestamp)> =
        nightly.open.iter().map(|s| (s.start, s.end)).collect();
    assert_eq!(
        opens,
        [
            (at("2027-03-24T21:00:00Z"), at("2027-03-25T01:00:00Z")),
            (at("2027-03-25T21:00:00Z"), at("2027-03-26T01:00:00Z")),
        ]
    );
}

#[test]
fn every_instant_agrees_with_the_trigger_check_across_a_dst_change() {
    // A week over the spring-forward night in Berlin, every ten minutes, for an environment
    // under all three windows and one under the deny-all only.
    let environments = [
        environment("p1", "prod", true),
        environment("s1", "staging", true),
    ];
    let (from, to) = (at("2027-03-22T00:00:00Z"), at("2027-03-31T00:00:00Z"));
    let calendar = calendar(
        CalendarInput {
            windows: windows_of_berlin_week(),
            schedules: Vec::new(),
            environments: &environments,
        },
        from,
        to,
    );
    let check = Windows::new(
        windows_of_berlin_week()
            .into_iter()
            .map(|(w, _)| w)
            .collect(),
    );
    // Two environments, two groups.
    assert_eq!(calendar.groups.len(), 2);
    for environment in &environments {
        let id = environment.environment_id.as_str();
        let closed = &group(&calendar, id).closed;
        let mut time = from;
        while time < to {
            let verdict = check.explain(environment, time);
            let span = closed
                .iter()
                .find(|span| span.start <= time && time < span.end);
            assert_eq!(
                span.map(|span| span.window.clone()),
                verdict.window,
                "{id} at {time}"
            );
            time = Timestamp::from_unix_ms(time.unix_ms() + 600_000);
        }
    }
}

#[test]
fn schedules_land_on_the_environments_their_trigger_deploys() {
    let environments = [
        environment("p1", "prod", true),
        environment("p2", "prod", false),
        environment("s1", "staging", true),
    ];
    let named = schedule_spec(serde_json::json!({
        "id": "named", "at": "2027-03-24T15:00:00Z", "trigger": {"environments": ["s1"]}
    }));
    let tagged = schedule_spec(serde_json::json!({
        "id": "tagged", "rrule": "FREQ=DAILY;BYHOUR=6", "dtstart": "2027-01-01T06:00:00",
        "time_zone": "UTC", "trigger": {"selector": {"tier": "prod"}}
    }));
    let everything = schedule_spec(serde_json::json!({
        "id": "everything", "at": "2027-03-25T15:00:00Z", "enabled": false
    }));
    let checked = |spec: &ScheduleSpec| Schedule::new(spec).ok();
    let calendar = calendar(
        CalendarInput {
            windows: Vec::new(),
            schedules: vec![
                (&tagged, checked(&tagged)),
                (&named, checked(&named)),
                (&everything, checked(&everything)),
            ],
            environments: &environments,
        },
        at("2027-03-24T00:00:00Z"),
        at("2027-03-26T00:00:00Z"),
    );
    let of = |index: usize| {
        let id = environments[index].environment_id.as_str();
        group(&calendar, id).schedules.clone()
    };
    // The disabled p2 is not deployed by tags; the disabled schedule deploys nothing.
    assert_eq!(
        (of(0), of(1), of(2)),
        (
            vec!["tagged".to_string()],
            vec![],
            vec!["named".to_string()]
        )
    );
    let ids: Vec<&str> = calendar.schedules.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids, ["everything", "named", "tagged"]);
    assert!(calendar.schedules[0].runs.is_empty());
    assert_eq!(calendar.schedules[1].runs, [at("2027-03-24T15:00:00Z")]);
    assert_eq!(
        calendar.schedules[2].runs,
        [at("2027-03-24T06:00:00Z"), at("2027-03-25T06:00:00Z")]
    );
    assert!(calendar.groups.iter().all(|group| group.closed.is_empty()));
}

#[test]
fn a_dense_window_is_listed_up_to_the_limit_and_spans_stop_where_its_list_does() {
    // The same windows over two environments: one group.
    let environments = [
        environment("p1", "prod", true),
        environment("p2", "prod", true),
    ];
    let (from, to) = (at("2027-03-01T00:00:00Z"), at("2027-03-31T00:00:00Z"));
    let hourly = || {
        window(serde_json::json!({
            "id": "hourly", "kind": "allow", "rrule": "FREQ=HOURLY",
            "dtstart": "2027-01-01T00:00:00", "duration_secs": 600
        }))
    };
    let calendar = calendar(
        CalendarInput {
            windows: vec![hourly()],
            schedules: Vec::new(),
            environments: &environments,
        },
        from,
        to,
    );
    let listed = &calendar.windows[0];
    assert_eq!(listed.open.len(), MAX_OCCURRENCES);
    assert!(listed.truncated);
    assert_eq!(
        listed.open[0],
        Span {
            start: at("2027-03-01T00:00:00Z"),
            end: at("2027-03-01T00:10:00Z")
        }
    );
    assert_eq!(calendar.groups.len(), 1);
    let group = &calendar.groups[0];
    // The 401st start is left out: the spans end there, and agree with the trigger's check
    // up to it.
    let cut = Timestamp::from_unix_ms(from.unix_ms() + MAX_OCCURRENCES as u64 * 3_600_000);
    assert_eq!(group.exact_until, Some(cut));
    assert_eq!(group.closed.len(), MAX_OCCURRENCES);
    assert_eq!(group.closed.last().map(|span| span.end), Some(cut));
    let check = Windows::new(vec![hourly().0]);
    let mut time = from;
    while time < cut {
        let verdict = check.explain(&environments[0], time);
        let closed = group
            .closed
            .iter()
            .any(|span| span.start <= time && time < span.end);
        assert_eq!(closed, !verdict.allowed, "at {time}");
        time = Timestamp::from_unix_ms(time.unix_ms() + 900_000);
    }
}
