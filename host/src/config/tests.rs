//! The configuration's loading, validation and masking.

use super::*;

#[test]
fn defaults_are_valid() {
    assert_eq!(Config::default().validate(), Ok(()));
}

#[test]
fn bad_mounts_and_hashes_are_named() {
    let mut config = Config::default();
    config.auth.keys.push(KeyConfig {
        name: "ops".into(),
        role: RoleName::Admin,
        sha256: "abc".into(),
    });
    if let Some(plugin) = config.plugins.get_mut("deployment_mcp") {
        plugin.mount = "/api/plugins/x".into();
    }
    let error = config.validate().err().unwrap_or_default();
    assert!(error.contains("auth.keys[0].sha256"), "{error}");
    assert!(error.contains("plugins.deployment_mcp.mount"), "{error}");
}

#[test]
fn secrets_are_masked() {
    let mut config = Config::default();
    config.auth.keys.push(KeyConfig {
        name: "ops".into(),
        role: RoleName::Admin,
        sha256: "a".repeat(64),
    });
    if let Some(plugin) = config.plugins.get_mut("deployment_mcp") {
        plugin.settings = serde_json::json!({"nested": {"api_token": "t0ps3cret"}});
    }
    config.storage.url = "postgres://pa:dbs3cret@127.0.0.1:5432/pa".into();
    let text = config.masked_toml().unwrap_or_default();
    assert!(
        !text.contains("t0ps3cret") && !text.contains(&"a".repeat(64)),
        "{text}"
    );
    assert!(!text.contains("dbs3cret"), "{text}");
    assert!(
        text.contains(&format!("postgres://pa:{}@127.0.0.1:5432/pa", "<redacted>")),
        "{text}"
    );
}

#[test]
fn cluster_keys_are_checked_and_named() {
    let mut config = Config::default();
    config.cluster.node_id = "node a/1".into();
    config.cluster.lease_secs = 0;
    let error = config.validate().unwrap_err();
    assert!(
        error.contains("cluster.node_id: \"node a/1\" is not a node id"),
        "{error}"
    );
    assert!(
        error.contains("cluster.lease_secs: expected 1 to 300 seconds, got 0"),
        "{error}"
    );
    config.cluster.node_id = "eu-1.host:8080".into();
    config.cluster.lease_secs = 3;
    assert!(config.validate().is_ok());
    // Without an id, the node is named after the machine and the port it listens on.
    config.cluster.node_id.clear();
    let id = config.cluster.node_id("127.0.0.1:9001".parse().unwrap());
    assert!(id.ends_with(":9001") && check_node_id(&id).is_ok(), "{id}");
}

#[test]
fn a_storage_url_must_be_postgresql_and_its_error_hides_the_password() {
    let mut config = Config::default();
    config.storage.url = "mysql://pa:dbs3cret@127.0.0.1/pa".into();
    let error = config.validate().err().unwrap_or_default();
    assert!(error.contains("storage.url"), "{error}");
    assert!(!error.contains("dbs3cret"), "{error}");
    config.storage.url = "postgresql://pa@127.0.0.1/pa".into();
    assert!(config.validate().is_ok());
    assert_eq!(
        url_without_password("postgres://pa@127.0.0.1/pa"),
        "postgres://pa@127.0.0.1/pa"
    );
    for hidden in [
        "postgres://pa@127.0.0.1/pa?password=dbs3cret",
        "host=127.0.0.1 user=pa password=dbs3cret",
    ] {
        assert_eq!(url_without_password(hidden), "<redacted>");
    }
    // A password may hold `/`: the user part still ends at the first `@`.
    let slash = url_without_password(&format!("postgres://pa:{}@127.0.0.1/pa", "db/s3cret"));
    assert!(!slash.contains("s3cret"), "{slash}");
}

#[test]
fn isolation_settings_are_checked_and_named() {
    let mut config = Config::default();
    if let Some(plugin) = config.plugins.get_mut("deployment_mcp") {
        plugin.memory_limit_mb = Some(512);
        plugin.crash_window_secs = 0;
    }
    let error = config.validate().err().unwrap_or_default();
    assert!(
        error
            .contains("plugins.deployment_mcp.memory_limit_mb: applies to isolation = \"process\""),
        "{error}"
    );
    assert!(
        error.contains("plugins.deployment_mcp.crash_window_secs"),
        "{error}"
    );
    if let Some(plugin) = config.plugins.get_mut("deployment_mcp") {
        plugin.isolation = Isolation::Process;
        plugin.memory_limit_mb = Some(8);
        plugin.crash_window_secs = 60;
    }
    let error = config.validate().err().unwrap_or_default();
    assert!(error.contains("expected at least 64"), "{error}");
    if let Some(plugin) = config.plugins.get_mut("deployment_mcp") {
        plugin.memory_limit_mb = Some(512);
    }
    assert_eq!(config.validate(), Ok(()));
    for (shares, timeout, named) in [
        (
            Some(1),
            None,
            "plugins.deployment_mcp.cpu_shares: expected 2 to 1024",
        ),
        (Some(2048), None, "got 2048"),
        (
            None,
            Some(0),
            "plugins.deployment_mcp.start_timeout_secs: must be at least 1",
        ),
    ] {
        if let Some(plugin) = config.plugins.get_mut("deployment_mcp") {
            (plugin.cpu_shares, plugin.start_timeout_secs) = (shares, timeout);
        }
        let error = config.validate().err().unwrap_or_default();
        assert!(error.contains(named), "{error}");
    }
    if let Some(plugin) = config.plugins.get_mut("deployment_mcp") {
        (plugin.cpu_shares, plugin.start_timeout_secs) = (Some(128), Some(5));
    }
    assert_eq!(config.validate(), Ok(()));
    if let Some(plugin) = config.plugins.get_mut("deployment_mcp") {
        (plugin.isolation, plugin.memory_limit_mb) = (Isolation::InProcess, None);
    }
    let error = config.validate().err().unwrap_or_default();
    assert!(
        error.contains("plugins.deployment_mcp.cpu_shares: applies to isolation = \"process\"")
            && error.contains(
                "plugins.deployment_mcp.start_timeout_secs: applies to isolation = \"process\""
            ),
        "{error}"
    );
}

#[test]
fn isolation_is_read_from_toml() {
    let plugin: PluginConfig = toml::from_str(
        "path = \"x.so\"\nmount = \"/api/x\"\nisolation = \"process\"\nmemory_limit_mb = 256\n",
    )
    .unwrap_or_else(|error| panic!("{error}"));
    assert_eq!(plugin.isolation, Isolation::Process);
    assert_eq!(plugin.memory_limit_mb, Some(256));
    assert_eq!((plugin.max_crashes, plugin.crash_window_secs), (5, 60));
    let typo = toml::from_str::<PluginConfig>(
        "path = \"x.so\"\nmount = \"/api/x\"\nisolation = \"separate\"\n",
    );
    assert!(
        typo.is_err_and(|error| error.to_string().contains("in_process")),
        "an unknown mode names the ones that exist"
    );
}

#[test]
fn mount_overlap() {
    assert!(overlaps("/api/plugins", "/api/plugins"));
    assert!(overlaps("/api/plugins/x", "/api/plugins"));
    assert!(!overlaps("/api/pluginsx", "/api/plugins"));
}
