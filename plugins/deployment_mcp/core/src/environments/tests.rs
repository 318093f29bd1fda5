//! The environments format: the original file accepted unchanged, each connection method's
//! required fields, ranges and secrets refused with the field named, TOML the same as JSON.

use super::*;

const ORIGINAL: &str = r#"{"environments": [{"environment_id": "mac_local_001", "environment_type": "mac_local",
  "connection_method": "ssh", "host": "192.168.1.100", "port": 22, "username": "alex",
  "ssh_key_path": "~/.ssh/id_ed25519", "init_script_path": "./init_aicore.sh",
  "health_check_url": "http://192.168.1.100:8081/health", "timeout": 300}]}"#;

#[test]
fn original_format_is_accepted_unchanged() {
    let environments = parse(ORIGINAL).unwrap_or_default();
    assert_eq!(environments.len(), 1);
    assert_eq!(environments[0].connection_method(), ConnectionMethod::Ssh);
    assert!(
        matches!(&environments[0].connection, Connection::Ssh(ssh) if ssh.port == Some(22)),
        "{:?}",
        environments[0]
    );
    assert!(environments[0].enabled);
}

#[test]
fn the_flat_shape_round_trips_through_the_model() {
    let originals = [
        r#"{"environment_id": "s", "environment_type": "mac_local", "connection_method": "ssh", "host": "127.0.0.1", "port": 2222, "username": "alex", "ssh_key_path": "~/.ssh/id", "known_hosts_path": "/k", "init_script_path": "./init.sh", "working_directory": "/srv", "health_check_url": "http://127.0.0.1:8081/health", "timeout": 30, "enabled": false, "tags": {"tier": "prod"}, "description": "d"}"#,
        r#"{"environment_id": "h", "environment_type": "linux_local", "connection_method": "http_api", "host": "127.0.0.1", "api_token": "t"}"#,
        r#"{"environment_id": "w", "environment_type": "docker_container", "connection_method": "webhook", "webhook_url": "http://127.0.0.1:1/hook", "webhook_secret": "k"}"#,
        r#"{"environment_id": "v", "environment_type": "docker_container", "connection_method": "webhook", "host": "127.0.0.1", "port": 8080}"#,
        r#"{"environment_id": "l", "environment_type": "linux_local", "connection_method": "local", "command": ["true", "x"], "working_directory": "/tmp"}"#,
        r#"{"environment_id": "m", "environment_type": "linux_local", "connection_method": "local", "init_script_path": "/bin/true"}"#,
    ];
    for original in originals {
        let flat: EnvironmentJson = serde_json::from_str(original).expect("flat");
        let model = Environment::try_from(flat.clone()).expect("valid");
        assert_eq!(EnvironmentJson::from(model.clone()), flat, "{original}");
        // The model's own serde form is the flat one.
        let written = serde_json::to_value(&model).expect("write");
        assert_eq!(
            written,
            serde_json::to_value(&flat).expect("flat"),
            "{original}"
        );
        let read: Environment = serde_json::from_value(written).expect("read back");
        assert_eq!(read, model, "{original}");
    }
    // A field of another method is accepted and not kept.
    let model = parse_one(br#"{"environment_id": "x", "environment_type": "linux_local", "connection_method": "local", "command": ["true"], "api_token": "t"}"#).expect("valid");
    assert_eq!(model.api_token(), None);
    assert_eq!(EnvironmentJson::from(model).api_token, None);
}

#[test]
fn empty_secrets_are_refused_with_the_field() {
    let text = ORIGINAL.replace(
        r#""timeout": 300"#,
        r#""timeout": 300, "webhook_secret": """#,
    );
    let error = parse(&text).err().unwrap_or_default();
    assert!(
        error.contains("webhook_secret: must not be empty"),
        "{error}"
    );
}

#[test]
fn duplicates_and_unknown_fields_are_refused() {
    let doubled = format!(
        r#"{{"environments": [{0}, {0}]}}"#,
        r#"{"environment_id": "a", "environment_type": "linux_local", "connection_method": "local", "command": ["true"]}"#
    );
    assert!(parse(&doubled)
        .err()
        .unwrap_or_default()
        .contains("more than once"));
    let typo = ORIGINAL.replace("\"port\"", "\"prot\"");
    assert!(parse(&typo).err().unwrap_or_default().contains("prot"));
}

fn local(id: &str) -> Environment {
    parse_one(format!(r#"{{"environment_id": "{id}", "environment_type": "linux_local", "connection_method": "local", "command": ["true"]}}"#).as_bytes())
        .unwrap_or_else(|error| panic!("{error}"))
}

#[test]
fn bad_fields_are_named() {
    let base = r#"{"environment_id": "a", "environment_type": "linux_local", "connection_method": "ssh", "host": "h", "username": "u", "ssh_key_path": "k", "init_script_path": "s""#;
    let check = |extra: &str, field: &str| {
        let body = format!("{base}{extra}}}");
        let error = parse_one(body.as_bytes())
            .err()
            .map(|e| e.field)
            .unwrap_or_default();
        assert_eq!(error, field, "{extra}");
    };
    check(r#", "port": 0"#, "port");
    check(r#", "rollback_command": ["undo"]"#, "rollback_command");
    check(r#", "rollback_script_path": "  ""#, "rollback_script_path");
    check(r#", "order": "first""#, "order");
    check(r#", "port": 70000"#, "port");
    check(r#", "port": "22""#, "port");
    check(r#", "timeout": 0"#, "timeout");
    check(r#", "health_check_url": "ftp://x""#, "health_check_url");
    check(r#", "webhook_url": "not a url""#, "webhook_url");
    let spaced = base.replace(r#""host": "h""#, r#""host": "a b""#) + "}";
    assert!(parse_one(spaced.as_bytes())
        .err()
        .is_some_and(|e| e.field == "host"));
    check(r#", "tags": {"a": 1}"#, "tags.a");
    // An unknown field is named once, not with its own name repeated after it.
    check(r#", "prot": 22"#, "prot");
    let trigger = from_json_object::<crate::wire::TriggerRequest>(br#"{"environment_ids": 5}"#);
    assert_eq!(
        trigger.err().map(|e| e.field).as_deref(),
        Some("environment_ids")
    );
    let nested = from_json_object::<crate::wire::TriggerRequest>(
        br#"{"strategy": {"type": "rolling", "batch_sise": 2}}"#,
    );
    let nested = nested.err().map(|e| (e.field, e.message));
    assert_eq!(
        nested.as_ref().map(|e| e.0.as_str()),
        Some("strategy.batch_sise"),
        "{nested:?}"
    );
    let traversal = base.replace(r#""environment_id": "a""#, r#""environment_id": "../x""#) + "}";
    assert!(parse_one(traversal.as_bytes())
        .err()
        .is_some_and(|e| e.field == "environment_id"));
    assert!(parse_one(br#"{"environment_id": "a", "environment_type": "linux_local", "connection_method": "ssh", "host": "h"}"#).err().is_some_and(|e| e.field == "username"));
    assert!(parse_one(b"[1]").err().is_some_and(|e| e.field == "body"));
    assert_eq!(local("ok-1").environment_id, "ok-1");
}

#[test]
fn rollback_fields_fit_the_connection_method() {
    let local = br#"{"environment_id": "a", "environment_type": "linux_local", "connection_method": "local", "command": ["deploy"], "rollback_command": ["undo", "--now"], "order": -2}"#;
    let environment = parse_one(local).unwrap_or_else(|error| panic!("{error}"));
    assert_eq!(environment.order, -2);
    match &environment.connection {
        Connection::Local(local) => assert_eq!(
            local.rollback,
            Some(LocalProgram::Command(vec!["undo".into(), "--now".into()]))
        ),
        other => panic!("not local: {other:?}"),
    }
    let flat = EnvironmentJson::from(environment);
    assert_eq!(
        flat.rollback_command,
        Some(vec!["undo".into(), "--now".into()])
    );
    let both = br#"{"environment_id": "a", "environment_type": "linux_local", "connection_method": "local", "command": ["deploy"], "rollback_command": ["undo"], "rollback_script_path": "./undo.sh"}"#;
    assert!(parse_one(both)
        .err()
        .is_some_and(|e| e.field == "rollback_command"));
    let webhook = br#"{"environment_id": "a", "environment_type": "linux_local", "connection_method": "webhook", "webhook_url": "http://127.0.0.1:9/", "rollback_script_path": "./undo.sh"}"#;
    assert!(parse_one(webhook)
        .err()
        .is_some_and(|e| e.field == "rollback_script_path"));
}

#[test]
fn toml_form_is_accepted() {
    let text = "[[environments]]\nenvironment_id = \"t1\"\nenvironment_type = \"docker_container\"\nconnection_method = \"webhook\"\nwebhook_url = \"http://127.0.0.1:9/hook\"\n";
    let environments = parse_toml(text).unwrap_or_default();
    assert_eq!(environments.len(), 1);
    assert_eq!(
        environments[0].connection_method(),
        ConnectionMethod::Webhook
    );
}
