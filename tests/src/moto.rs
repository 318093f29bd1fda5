//! A real EC2 API for the EC2 phase's tests: `moto_server` on a loopback port it binds itself
//! (port 0, read back from its start-up line),
//! killed when dropped, with helpers that create and stop instances through the EC2 API.
//!
//! A missing `moto_server` fails the test with an instruction rather than skipping it: CI
//! installs it in `.ci/run`.

use std::{
    fs::File,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use aws_sdk_ec2::{
    config::{BehaviorVersion, Credentials, Region},
    types::{InstanceType, ResourceType, Tag, TagSpecification},
    Client,
};
use deployment_mcp_core::ec2::Ec2Settings;

use crate::wait_until;

pub const MOTO_SERVER: &str = "moto_server";
pub const REGION: &str = "us-east-1";
/// The fake credentials every test process uses (moto accepts any unless IAM checks are on).
pub const ACCESS_KEY_ID: &str = "testing";
pub const SECRET_ACCESS_KEY: &str = "testing";
/// One of the Amazon Linux images moto ships in every region (its `amis.json`).
pub const AMI: &str = "ami-12c6146b";

/// How long moto may take to answer before a test fails (it imports all of its services).
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Keys of an IAM user moto checks requests against (see [`Moto::start_with_iam`]).
#[derive(Debug, Clone)]
pub struct AccessKey {
    pub id: String,
    pub secret: String,
}

impl AccessKey {
    pub fn credentials(&self) -> Credentials {
        Credentials::new(&self.id, &self.secret, None, None, "e2e-moto-iam")
    }
}

pub struct Moto {
    child: Option<Child>,
    pub port: u16,
    /// `http://127.0.0.1:PORT`
    pub endpoint: String,
    /// Credentials the helpers sign with: the fake ones, or an administrator's under IAM checks.
    admin: Credentials,
    dir: tempfile::TempDir,
}

impl Moto {
    /// Starts moto without IAM checks: any credentials are accepted.
    pub async fn start() -> Moto {
        Moto::spawn(None).await
    }

    /// Starts moto with IAM checks on, and creates two users through its IAM API before they
    /// apply: `admin` (allowed everything; the helpers use it) and `describe_only` (allowed only
    /// `ec2:DescribeInstances`), whose keys are returned.
    pub async fn start_with_iam() -> (Moto, AccessKey) {
        // Exactly the six unauthenticated IAM calls below; everything after is checked.
        let mut moto = Moto::spawn(Some(6)).await;
        let admin = moto.create_user("admin", "*").await;
        let describe_only = moto
            .create_user("describe_only", "ec2:DescribeInstances")
            .await;
        moto.admin = admin.credentials();
        (moto, describe_only)
    }

    async fn spawn(unauthenticated_actions: Option<u32>) -> Moto {
        let dir = tempfile::tempdir().expect("temporary directory for moto_server");
        let log_file = dir.path().join("moto_server.log");
        let stderr_file = dir.path().join("moto_server.stderr");
        let mut command = Command::new(MOTO_SERVER);
        command
            .args(["-H", "127.0.0.1", "-p", "0"])
            .stdin(Stdio::null())
            .stdout(File::create(&log_file).expect("moto_server log file"))
            .stderr(File::create(&stderr_file).expect("stderr file"));
        if let Some(count) = unauthenticated_actions {
            command.env("INITIAL_NO_AUTH_ACTION_COUNT", count.to_string());
        }
        let mut child = match command.spawn() {
            Ok(child) => child,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => panic!(
                "{MOTO_SERVER} is not on PATH: install it with `pip install 'moto[server]'` (as .ci/run does)"
            ),
            Err(error) => panic!("cannot start {MOTO_SERVER}: {error}"),
        };
        // The server announces the port it bound: ` * Running on http://127.0.0.1:PORT`.
        let announced = || {
            let text = std::fs::read_to_string(&stderr_file).unwrap_or_default();
            text.lines().find_map(|line| {
                let (_, rest) = line.split_once("Running on http://127.0.0.1:")?;
                rest.trim().parse::<u16>().ok()
            })
        };
        let bound = wait_until(START_TIMEOUT, || {
            let done = announced().is_some() || !matches!(child.try_wait(), Ok(None));
            async move { done }
        })
        .await;
        let port = match announced() {
            Some(port) if bound => port,
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                let stderr = std::fs::read_to_string(&stderr_file).unwrap_or_default();
                panic!("{MOTO_SERVER} did not start listening; its stderr:\n{stderr}");
            }
        };
        let endpoint = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        // moto's own API, which IAM checks do not cover and which is not counted as one
        // of the unauthenticated actions.
        let probe = format!("{endpoint}/moto-api/data.json");
        let ready = wait_until(START_TIMEOUT, || {
            let exited = !matches!(child.try_wait(), Ok(None));
            let request = http.get(&probe).timeout(Duration::from_secs(2)).send();
            async move {
                exited
                    || request
                        .await
                        .is_ok_and(|response| response.status().is_success())
            }
        })
        .await;
        if !(ready && matches!(child.try_wait(), Ok(None))) {
            let _ = child.kill();
            let _ = child.wait();
            let stderr = std::fs::read_to_string(&stderr_file).unwrap_or_default();
            panic!("{MOTO_SERVER} did not answer on port {port}; its stderr:\n{stderr}");
        }
        Moto {
            child: Some(child),
            port,
            endpoint,
            admin: Credentials::new(ACCESS_KEY_ID, SECRET_ACCESS_KEY, None, None, "e2e-moto"),
            dir,
        }
    }

    /// What moto logged so far (requests and errors), for failure messages.
    pub fn log(&self) -> String {
        let read =
            |name: &str| std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default();
        format!("{}{}", read("moto_server.log"), read("moto_server.stderr"))
    }

    /// EC2 phase settings aimed at this server: enabled, region [`REGION`], nothing selected.
    pub fn settings(&self) -> Ec2Settings {
        Ec2Settings {
            enabled: true,
            region: Some(REGION.to_owned()),
            endpoint_url: Some(self.endpoint.clone()),
            ..Ec2Settings::default()
        }
    }

    /// An EC2 client signing with `credentials`.
    pub fn client_with(&self, credentials: Credentials) -> Client {
        let config = aws_sdk_ec2::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(REGION))
            .endpoint_url(&self.endpoint)
            .credentials_provider(credentials)
            .build();
        Client::from_conf(config)
    }

    /// The client the helpers use.
    pub fn client(&self) -> Client {
        self.client_with(self.admin.clone())
    }

    /// Launches one instance tagged with `tags` and returns its id (moto has it running at
    /// once).
    pub async fn run_instance(&self, tags: &[(&str, &str)]) -> String {
        let mut request = self
            .client()
            .run_instances()
            .image_id(AMI)
            .instance_type(InstanceType::T3Micro)
            .min_count(1)
            .max_count(1);
        if !tags.is_empty() {
            let mut spec = TagSpecification::builder().resource_type(ResourceType::Instance);
            for (key, value) in tags {
                spec = spec.tags(Tag::builder().key(*key).value(*value).build());
            }
            request = request.tag_specifications(spec.build());
        }
        let output = request
            .send()
            .await
            .unwrap_or_else(|error| panic!("RunInstances: {error:?}\n{}", self.log()));
        output
            .instances()
            .first()
            .and_then(|instance| instance.instance_id())
            .expect("RunInstances returned an instance id")
            .to_owned()
    }

    /// Stops `id` and waits (bounded) until moto reports it `stopped`.
    pub async fn stop_instance(&self, id: &str) {
        self.client()
            .stop_instances()
            .instance_ids(id)
            .send()
            .await
            .unwrap_or_else(|error| panic!("StopInstances {id}: {error:?}\n{}", self.log()));
        self.wait_for_state(id, "stopped").await;
    }

    /// Terminates `id` and waits (bounded) until moto reports it `terminated`.
    pub async fn terminate_instance(&self, id: &str) {
        self.client()
            .terminate_instances()
            .instance_ids(id)
            .send()
            .await
            .unwrap_or_else(|error| panic!("TerminateInstances {id}: {error:?}\n{}", self.log()));
        self.wait_for_state(id, "terminated").await;
    }

    async fn wait_for_state(&self, id: &str, wanted: &str) {
        let reached = wait_until(Duration::from_secs(10), || async {
            self.state(id).await == wanted
        })
        .await;
        assert!(
            reached,
            "{id} did not become {wanted}; it is {}",
            self.state(id).await
        );
    }

    /// The state name moto reports for `id`.
    pub async fn state(&self, id: &str) -> String {
        let output = self
            .client()
            .describe_instances()
            .instance_ids(id)
            .send()
            .await
            .unwrap_or_else(|error| panic!("DescribeInstances {id}: {error:?}\n{}", self.log()));
        output
            .reservations()
            .iter()
            .flat_map(|reservation| reservation.instances())
            .find(|instance| instance.instance_id() == Some(id))
            .and_then(|instance| instance.state())
            .and_then(|state| state.name())
            .map(|name| name.as_str().to_owned())
            .unwrap_or_else(|| panic!("moto does not list {id}"))
    }

    /// Creates IAM user `name` allowed `action` on everything, and returns a fresh access key.
    /// Unsigned: only valid while moto still lets unauthenticated actions through.
    async fn create_user(&self, name: &str, action: &str) -> AccessKey {
        let policy = format!(
            r#"{{"Version":"2012-10-17","Statement":[{{"Effect":"Allow","Action":"{action}","Resource":"*"}}]}}"#
        );
        self.iam(&[("Action", "CreateUser"), ("UserName", name)])
            .await;
        self.iam(&[
            ("Action", "PutUserPolicy"),
            ("UserName", name),
            ("PolicyName", "e2e"),
            ("PolicyDocument", &policy),
        ])
        .await;
        let body = self
            .iam(&[("Action", "CreateAccessKey"), ("UserName", name)])
            .await;
        let field = |tag: &str| {
            let open = format!("<{tag}>");
            let start = body.find(&open).map(|at| at + open.len());
            let end = body.find(&format!("</{tag}>"));
            match (start, end) {
                (Some(start), Some(end)) if start <= end => body[start..end].to_owned(),
                _ => panic!("CreateAccessKey answer without {tag}: {body}"),
            }
        };
        AccessKey {
            id: field("AccessKeyId"),
            secret: field("SecretAccessKey"),
        }
    }

    /// One IAM query-protocol call. moto routes a request by the service in the Authorization
    /// header's credential scope; the signature itself is not checked for these calls.
    async fn iam(&self, params: &[(&str, &str)]) -> String {
        let body: Vec<String> = params
            .iter()
            .chain(&[("Version", "2010-05-08")])
            .map(|(key, value)| format!("{}={}", form_encode(key), form_encode(value)))
            .collect();
        let response = reqwest::Client::new()
            .post(format!("{}/", self.endpoint))
            .header(
                "Authorization",
                "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20260101/us-east-1/iam/aws4_request, SignedHeaders=host, Signature=0",
            )
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body(body.join("&"))
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .expect("IAM call to moto");
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        assert!(status.is_success(), "IAM {params:?}: {status}: {body}");
        body
    }

    /// The temporary directory this server's files live in (for the tests' own files).
    pub fn dir(&self) -> PathBuf {
        self.dir.path().to_owned()
    }
}

/// `application/x-www-form-urlencoded` encoding of one key or value.
fn form_encode(text: &str) -> String {
    let mut encoded = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-_.~".contains(&byte) {
            encoded.push(char::from(byte));
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

impl Drop for Moto {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
