//! Windows: deny beats allow, allow closes outside itself, scopes, and when a closed
//! environment opens again.

use super::*;

fn environment(id: &str, tier: &str) -> Environment {
    crate::environments::parse_one(
        format!(
            r#"{{"environment_id": "{id}", "environment_type": "linux_local", "connection_method": "local",
                 "command": ["true"], "tags": {{"tier": "{tier}"}}}}"#
        )
        .as_bytes(),
    )
    .expect("an environment")
}

fn spec(json: serde_json::Value) -> WindowSpec {
    serde_json::from_value(json).expect("a window spec")
}

fn window(json: serde_json::Value) -> Window {
    Window::new(&spec(json)).expect("a valid window")
}

fn at(text: &str) -> Timestamp {
    text.parse().expect("a time")
}

#[test]
fn a_freeze_closes_what_it_covers_and_names_when_it_opens() {
    let windows = Windows::new(vec![window(serde_json::json!({
        "id": "quarter-close", "kind": "deny",
        "start": "2027-03-28T00:00:00Z", "end": "2027-04-02T00:00:00Z",
        "selector": {"tier": "prod"}, "reason": "quarter close"
    }))]);
    let prod = environment("p1", "prod");
    let staging = environment("s1", "staging");
    let inside = at("2027-03-30T12:00:00Z");
    assert_eq!(
        windows.explain(&prod, inside),
        Verdict {
            allowed: false,
            window: Some("quarter-close".into()),
            opens_at: Some(at("2027-04-02T00:00:00Z")),
        }
    );
    assert!(windows.explain(&staging, inside).allowed);
    assert!(windows.explain(&prod, at("2027-04-02T00:00:00Z")).allowed);
}

#[test]
fn an_allow_window_closes_outside_itself_and_deny_wins_inside_it() {
    // Production deploys on weeknights 22:00–02:00 Berlin time.
    let nightly = window(serde_json::json!({
        "id": "nightly", "kind": "allow", "rrule": "FREQ=WEEKLY;BYDAY=MO,TU,WE,TH,FR",
        "dtstart": "2027-01-04T22:00:00", "duration_secs": 14_400,
        "time_zone": "Europe/Berlin", "environments": ["p1"]
    }));
    let holiday = window(serde_json::json!({
        "id": "holiday", "kind": "deny",
        "start": "2027-01-06T00:00:00Z", "end": "2027-01-07T00:00:00Z"
    }));
    let windows = Windows::new(vec![nightly, holiday]);
    let prod = environment("p1", "prod");
    // Tuesday 23:00 Berlin (22:00Z): inside.
    assert!(windows.explain(&prod, at("2027-01-05T22:00:00Z")).allowed);
    // Tuesday noon: closed until 22:00 Berlin (21:00Z).
    assert_eq!(
        windows.explain(&prod, at("2027-01-05T12:00:00Z")),
        Verdict {
            allowed: false,
            window: Some("nightly".into()),
            opens_at: Some(at("2027-01-05T21:00:00Z")),
        }
    );
    // Wednesday 23:00 Berlin: the holiday wins; it opens at the holiday's end, inside
    // Wednesday's night window (which runs to 01:00Z).
    assert_eq!(
        windows.explain(&prod, at("2027-01-06T22:00:00Z")),
        Verdict {
            allowed: false,
            window: Some("holiday".into()),
            opens_at: Some(at("2027-01-07T00:00:00Z")),
        }
    );
    // Another environment is not covered by the allow window, only by the holiday.
    let other = environment("p2", "prod");
    assert!(windows.explain(&other, at("2027-01-05T12:00:00Z")).allowed);
    assert!(!windows.explain(&other, at("2027-01-06T12:00:00Z")).allowed);
}

#[test]
fn a_bad_window_is_refused_naming_its_field() {
    let field = |json: serde_json::Value| Window::new(&spec(json)).expect_err("refused").field;
    assert_eq!(
        field(
            serde_json::json!({"id": "a b", "kind": "deny", "start": "2027-01-01T00:00:00Z", "end": "2027-01-02T00:00:00Z"})
        ),
        "id"
    );
    assert_eq!(
        field(serde_json::json!({"id": "a", "kind": "deny"})),
        "start"
    );
    assert_eq!(
        field(
            serde_json::json!({"id": "a", "kind": "deny", "start": "2027-01-02T00:00:00Z", "end": "2027-01-01T00:00:00Z"})
        ),
        "end"
    );
    assert_eq!(
        field(
            serde_json::json!({"id": "a", "kind": "deny", "start": "2027-01-01T00:00:00Z", "end": "2027-01-02T00:00:00Z", "rrule": "FREQ=DAILY"})
        ),
        "rrule"
    );
    assert_eq!(
        field(
            serde_json::json!({"id": "a", "kind": "deny", "rrule": "FREQ=DAILY", "dtstart": "2027-01-01T00:00:00"})
        ),
        "duration_secs"
    );
    assert_eq!(
        field(
            serde_json::json!({"id": "a", "kind": "deny", "rrule": "FREQ=DAILY", "dtstart": "2027-01-01T00:00:00", "duration_secs": 60, "time_zone": "Nowhere/Land"})
        ),
        "time_zone"
    );
    assert_eq!(
        field(
            serde_json::json!({"id": "a", "kind": "deny", "start": "2027-01-01T00:00:00Z", "end": "2027-01-02T00:00:00Z", "environments": ["x"], "selector": {"a": "b"}})
        ),
        "selector"
    );
    assert!(
        serde_json::from_value::<WindowSpec>(serde_json::json!({"id": "a", "kind": "maybe"}))
            .is_err()
    );
}

#[test]
fn closed_names_each_closed_environment_and_its_window() {
    let windows = Windows::new(vec![
        window(serde_json::json!({
            "id": "freeze", "kind": "deny", "selector": {"tier": "prod"},
            "start": "2027-01-01T00:00:00Z", "end": "2027-01-02T00:00:00Z"
        })),
        window(serde_json::json!({
            "id": "weekend", "kind": "allow", "environments": ["s1"],
            "rrule": "FREQ=WEEKLY;BYDAY=SA", "dtstart": "2027-01-02T00:00:00", "duration_secs": 172_800
        })),
    ]);
    let prod = environment("p1", "prod");
    let staging = environment("s1", "staging");
    let other = environment("o1", "staging");
    // Friday the 1st: the freeze closes prod; staging's allow window opens on Saturday.
    let friday = at("2027-01-01T12:00:00Z");
    let closed: Vec<(String, String)> = windows
        .closed([&prod, &staging, &other], friday)
        .into_iter()
        .map(|(environment, window)| (environment.environment_id.to_string(), window))
        .collect();
    assert_eq!(
        closed,
        vec![
            ("p1".into(), "freeze".into()),
            ("s1".into(), "weekend".into())
        ]
    );
    assert_eq!(
        windows.explain(&staging, friday).opens_at,
        Some(at("2027-01-02T00:00:00Z"))
    );
    // Sunday: the weekend window is open, the freeze over.
    assert!(windows
        .closed([&prod, &staging, &other], at("2027-01-03T12:00:00Z"))
        .is_empty());
}

#[test]
fn a_rule_that_fires_too_often_is_refused() {
    let refused = Window::create(&spec(serde_json::json!({
        "id": "busy", "kind": "deny", "rrule": "FREQ=MINUTELY",
        "dtstart": "2027-01-01T00:00:00", "duration_secs": 30
    })))
    .expect_err("too dense");
    assert_eq!(refused.field, "rrule");
    assert!(refused.message.contains("100000"), "{}", refused.message);
    // A stored window was counted when created: reading it does not count again.
    Window::new(&spec(serde_json::json!({
        "id": "busy", "kind": "deny", "rrule": "FREQ=MINUTELY",
        "dtstart": "2027-01-01T00:00:00", "duration_secs": 30
    })))
    .expect("read without the density count");
}

#[test]
fn a_dense_rule_is_refused_west_of_utc_too_and_a_bad_until_is_named() {
    let refused = Window::create(&spec(serde_json::json!({
        "id": "busy", "kind": "deny", "rrule": "FREQ=SECONDLY", "time_zone": "America/New_York",
        "dtstart": "2027-01-01T00:00:00", "duration_secs": 1
    })))
    .expect_err("too dense");
    assert_eq!(refused.field, "rrule");
    // Not ASCII: refused, not cut inside a character.
    let refused = Window::new(&spec(serde_json::json!({
        "id": "u", "kind": "deny", "rrule": "FREQ=DAILY;UNTIL=123é567T123456Z",
        "dtstart": "2027-01-01T00:00:00", "duration_secs": 60
    })))
    .expect_err("bad until");
    assert_eq!(refused.field, "rrule");
    let refused = Window::new(&spec(serde_json::json!({
        "id": "e", "kind": "deny", "start": "2027-01-01T00:00:00Z", "end": "2027-01-02T00:00:00Z",
        "environments": ["not an id"]
    })))
    .expect_err("bad id");
    assert_eq!(refused.field, "environments");
}

#[test]
fn an_allow_window_that_never_opens_again_does_not_name_the_closure() {
    // "a-over" ended in 2020; "b-nightly" opens every night: the closure is b-nightly's.
    let windows = Windows::new(vec![
        window(serde_json::json!({
            "id": "a-over", "kind": "allow",
            "start": "2020-01-01T00:00:00Z", "end": "2020-01-02T00:00:00Z"
        })),
        window(serde_json::json!({
            "id": "b-nightly", "kind": "allow", "rrule": "FREQ=DAILY",
            "dtstart": "2027-01-01T22:00:00", "duration_secs": 3600
        })),
    ]);
    let verdict = windows.explain(&environment("p1", "prod"), at("2027-03-01T12:00:00Z"));
    assert_eq!(
        verdict,
        Verdict {
            allowed: false,
            window: Some("b-nightly".into()),
            opens_at: Some(at("2027-03-01T22:00:00Z")),
        }
    );
}
