//! Deployments with the EC2 phase on, through the real host and plugin, against moto_server as
//! the EC2 API and an HTTP target that records the platform IP it is handed.

use e2e::{
    moto::{Moto, ACCESS_KEY_ID, REGION, SECRET_ACCESS_KEY},
    targets::{Behaviour, Target},
    HostOptions, TestHost, ADMIN_KEY, DEVELOPER_KEY,
};
use serde_json::{json, Value};

/// The EC2 phase's selection of the platform instance: by its tag.
const PLATFORM_BY_TAG: &str = "tag_filters = { Role = \"platform\" }";

async fn host_with_ec2(
    dir: &std::path::Path,
    moto: &Moto,
    target: &Target,
    selection: &str,
) -> TestHost {
    host_with_ec2_enabled(dir, moto, target, selection, true).await
}

/// The host with `[settings.ec2]` configured, the phase on or off by default.
async fn host_with_ec2_enabled(
    dir: &std::path::Path,
    moto: &Moto,
    target: &Target,
    selection: &str,
    enabled: bool,
) -> TestHost {
    let environments = json!({"environments": [
        {"environment_id": "platform_api", "environment_type": "linux_local",
         "connection_method": "http_api", "host": "127.0.0.1", "port": target.port(),
         "api_token": "target-token", "timeout": 20}
    ]});
    TestHost::start(
        dir,
        HostOptions {
            environments: environments.to_string(),
            settings: format!(
                "health_check_interval_secs = 0\n\n[plugins.deployment_mcp.settings.ec2]\nenabled = {enabled}\nregion = \"{REGION}\"\nendpoint_url = \"{}\"\nwait_timeout = 60\n{selection}\n",
                moto.endpoint
            ),
            env: vec![
                ("AWS_ACCESS_KEY_ID".into(), ACCESS_KEY_ID.into()),
                ("AWS_SECRET_ACCESS_KEY".into(), SECRET_ACCESS_KEY.into()),
            ],
            ..HostOptions::default()
        },
    )
    .await
}

async fn deploy(host: &TestHost) -> Value {
    deploy_with(host, json!({})).await
}

/// Deploys `platform_api` with these trigger body fields, and waits for the end.
async fn deploy_with(host: &TestHost, fields: Value) -> Value {
    let mut body = json!({"environments": ["platform_api"]});
    if let (Some(body), Some(fields)) = (body.as_object_mut(), fields.as_object()) {
        body.extend(fields.clone());
    }
    let (status, answer) = host
        .call(
            reqwest::Method::POST,
            "/api/deployment/trigger-local",
            Some(ADMIN_KEY),
            Some(body),
        )
        .await;
    assert_eq!(status, 202, "{answer}");
    let id = answer["deployment_id"].as_str().expect("id").to_owned();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(90);
    loop {
        let (_, record) = host
            .get(
                &format!("/api/deployment/deployments/{id}"),
                Some(DEVELOPER_KEY),
            )
            .await;
        let status = record["status"].as_str().unwrap_or_default().to_owned();
        if matches!(
            status.as_str(),
            "completed" | "failed" | "cancelled" | "interrupted"
        ) {
            return record;
        }
        assert!(tokio::time::Instant::now() < deadline, "{record}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn the_ec2_phase_starts_the_platform_and_hands_its_ip_to_triggers() {
    let moto = Moto::start().await;
    let platform = moto.run_instance(&[("Role", "platform")]).await;
    let _other = moto.run_instance(&[]).await;
    moto.stop_instance(&platform).await;
    let target = Target::start(Behaviour::default()).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let host = host_with_ec2(dir.path(), &moto, &target, PLATFORM_BY_TAG).await;

    let record = deploy(&host).await;
    assert_eq!(record["status"], "completed", "{record}");
    let instances = record["ec2"]["instances"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(instances.len(), 1, "selected by tag: {record}");
    assert_eq!(instances[0]["instance_id"], platform.as_str());
    assert_eq!(instances[0]["state"], "running");
    assert_eq!(record["ec2"]["started"], json!([platform]));
    assert_eq!(moto.state(&platform).await, "running");
    let ip = instances[0]["public_ip"]
        .as_str()
        .expect("a public IP")
        .to_owned();
    let call = target
        .received()
        .into_iter()
        .find(|call| call.path == "/api/deploy/init")
        .expect("the target was called");
    assert_eq!(call.body["platform_ip"], ip.as_str());
    assert_eq!(call.body["platform_instance_id"], platform.as_str());
}

#[tokio::test]
async fn an_unknown_instance_fails_the_deployment_in_ec2_deploying() {
    let moto = Moto::start().await;
    let target = Target::start(Behaviour::default()).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let host = host_with_ec2(
        dir.path(),
        &moto,
        &target,
        "instance_ids = [\"i-0123456789abcdef0\"]",
    )
    .await;
    let record = deploy(&host).await;
    assert_eq!(record["status"], "failed", "{record}");
    assert_eq!(record["ec2"]["status"], "failed");
    let errors = record["errors"].to_string();
    assert!(
        errors.contains("ec2_deploying") && errors.contains("i-0123456789abcdef0"),
        "{errors}"
    );
    assert_eq!(record["results"][0]["status"], "cancelled");
    assert!(target.received().is_empty(), "no trigger ran");
}

#[tokio::test]
async fn the_trigger_body_turns_the_ec2_phase_off_or_on_for_one_deployment() {
    let moto = Moto::start().await;
    let platform = moto.run_instance(&[("Role", "platform")]).await;
    moto.stop_instance(&platform).await;
    let target = Target::start(Behaviour::default()).await;

    // On in the settings, off for this deployment: the instance is not asked to start.
    let dir = tempfile::tempdir().expect("temp dir");
    let host = host_with_ec2(dir.path(), &moto, &target, PLATFORM_BY_TAG).await;
    let record = deploy_with(&host, json!({"ec2": false})).await;
    assert_eq!(record["status"], "completed", "{record}");
    assert_eq!(
        record["ec2"]["status"], "skipped",
        "no EC2 phase ran: {record}"
    );
    assert_eq!(moto.state(&platform).await, "stopped");
    drop(host);

    // Off in the settings, on for this deployment: the phase runs and starts it.
    let dir = tempfile::tempdir().expect("temp dir");
    let host = host_with_ec2_enabled(dir.path(), &moto, &target, PLATFORM_BY_TAG, false).await;
    let record = deploy(&host).await;
    assert_eq!(
        record["ec2"]["status"], "skipped",
        "off by default: {record}"
    );
    assert_eq!(moto.state(&platform).await, "stopped");
    let record = deploy_with(&host, json!({"ec2": true})).await;
    assert_eq!(record["status"], "completed", "{record}");
    assert_eq!(record["ec2"]["started"], json!([platform]), "{record}");
    assert_eq!(moto.state(&platform).await, "running");

    // Not configured at all: asking for the phase is refused, naming the field.
    let dir = tempfile::tempdir().expect("temp dir");
    let host = TestHost::start(dir.path(), HostOptions::default()).await;
    let (status, answer) = host
        .call(
            reqwest::Method::POST,
            "/api/deployment/trigger-local",
            Some(ADMIN_KEY),
            Some(json!({"environments": ["local_demo"], "ec2": true})),
        )
        .await;
    assert_eq!(status, 422, "{answer}");
    assert_eq!(answer["error"], "ec2_not_configured", "{answer}");
    assert!(
        answer["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("ec2:")),
        "{answer}"
    );
}
