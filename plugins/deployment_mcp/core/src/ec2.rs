//! The EC2 phase: makes sure the platform instances a deployment targets are running before any
//! environment is triggered, and reports their addresses.
//!
//! Credentials and (unless `ec2.region` is set) the region come from the standard AWS chain, so
//! the plugin never stores AWS secrets. Every network wait is bounded: the SDK's own timeouts cap
//! each call, and the phase's polling stops at `ec2.wait_timeout`.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    time::Duration,
};

use aws_config::{retry::RetryConfig, timeout::TimeoutConfig, BehaviorVersion, Region, SdkConfig};
use aws_sdk_ec2::{
    config::ProvideCredentials,
    error::{ProvideErrorMetadata, SdkError},
    types::{Filter, Instance},
    Client,
};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::model::{Ec2Phase, LogSink};

/// Cap on one EC2 API call, retries included: a dead endpoint fails the phase in seconds rather
/// than holding a deployment.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(30);
/// Cap on one attempt of an EC2 API call, so a hung connection leaves time for a retry.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Attempts per EC2 call: enough to ride out throttling or a dropped connection, few enough that
/// an unreachable endpoint is reported quickly.
const MAX_ATTEMPTS: u32 = 3;

/// First and longest pause between two polls of the instances' states. Instances take tens of
/// seconds to start, so polling faster only spends API quota.
const FIRST_POLL_DELAY: Duration = Duration::from_millis(500);
const MAX_POLL_DELAY: Duration = Duration::from_secs(10);

/// IMDS answers within milliseconds on EC2; elsewhere nothing listens, and the lookup must not
/// delay the deployment noticeably.
const IMDS_TOTAL_TIMEOUT: Duration = Duration::from_millis(1000);

pub const MAX_WAIT_TIMEOUT: u64 = 3600;

/// `[plugins.deployment_mcp.settings.ec2]`
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Ec2Settings {
    #[serde(default)]
    pub enabled: bool,
    /// Else the standard AWS region chain (`AWS_REGION`, profile, IMDS).
    #[serde(default)]
    pub region: Option<String>,
    /// For an emulator (moto) or a VPC endpoint.
    #[serde(default)]
    pub endpoint_url: Option<String>,
    #[serde(default)]
    pub instance_ids: Vec<String>,
    /// Tag key → value; an instance is selected when it carries all of them. Selected in
    /// addition to `instance_ids`.
    #[serde(default)]
    pub tag_filters: BTreeMap<String, String>,
    #[serde(default = "yes")]
    pub start_if_stopped: bool,
    /// Seconds.
    #[serde(default = "five_minutes")]
    pub wait_timeout: u64,
}

fn yes() -> bool {
    true
}

fn five_minutes() -> u64 {
    300
}

impl Default for Ec2Settings {
    fn default() -> Ec2Settings {
        Ec2Settings {
            enabled: false,
            region: None,
            endpoint_url: None,
            instance_ids: Vec::new(),
            tag_filters: BTreeMap::new(),
            start_if_stopped: yes(),
            wait_timeout: five_minutes(),
        }
    }
}

impl Ec2Settings {
    /// Checks the settings without contacting AWS; the error names the offending key.
    pub fn validate(&self) -> Result<(), String> {
        if self.enabled && self.instance_ids.is_empty() && self.tag_filters.is_empty() {
            return Err(
                "ec2.instance_ids: set instance_ids or tag_filters when ec2.enabled = true".into(),
            );
        }
        if !(1..=MAX_WAIT_TIMEOUT).contains(&self.wait_timeout) {
            return Err(format!(
                "ec2.wait_timeout: must be between 1 and {MAX_WAIT_TIMEOUT} seconds, got {}",
                self.wait_timeout
            ));
        }
        if let Some(region) = &self.region {
            let well_formed = !region.is_empty()
                && region
                    .bytes()
                    .all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'-');
            if !well_formed {
                return Err(format!(
                    "ec2.region: {region:?} is not an AWS region name like \"us-east-1\""
                ));
            }
        }
        if let Some(endpoint) = &self.endpoint_url {
            let parsed = url::Url::parse(endpoint)
                .ok()
                .filter(|url| matches!(url.scheme(), "http" | "https") && url.host_str().is_some());
            if parsed.is_none() {
                return Err(format!(
                    "ec2.endpoint_url: {endpoint:?} is not an http(s) URL like \"http://127.0.0.1:5000\""
                ));
            }
        }
        let mut seen = BTreeSet::new();
        for id in &self.instance_ids {
            if !is_instance_id(id) {
                return Err(format!(
                    "ec2.instance_ids: {id:?} is not an instance id like \"i-0123456789abcdef0\""
                ));
            }
            if !seen.insert(id) {
                return Err(format!("ec2.instance_ids: {id} is listed twice"));
            }
        }
        for (key, value) in &self.tag_filters {
            if key.is_empty() || key.chars().count() > 128 {
                return Err(format!(
                    "ec2.tag_filters: tag key {key:?} must be 1 to 128 characters"
                ));
            }
            if value.chars().count() > 256 {
                return Err(format!(
                    "ec2.tag_filters: the value for {key:?} is longer than 256 characters"
                ));
            }
        }
        Ok(())
    }
}

fn is_instance_id(id: &str) -> bool {
    id.strip_prefix("i-").is_some_and(|hex| {
        !hex.is_empty()
            && hex
                .bytes()
                .all(|byte| byte.is_ascii_digit() || (b'a'..=b'f').contains(&byte))
    })
}

pub use crate::model::Ec2Instance;

/// An instance as the SDK describes it.
fn instance_from_sdk(instance: &Instance) -> Ec2Instance {
    let text = |value: Option<&str>| value.filter(|text| !text.is_empty()).map(str::to_owned);
    Ec2Instance {
        instance_id: instance.instance_id().unwrap_or_default().to_owned(),
        state: instance
            .state()
            .and_then(|state| state.name())
            .map(|name| name.as_str().to_owned())
            .unwrap_or_else(|| "unknown".to_owned()),
        public_ip: text(instance.public_ip_address()),
        public_dns: text(instance.public_dns_name()),
        private_ip: text(instance.private_ip_address()),
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ec2Outcome {
    pub instances: Vec<Ec2Instance>,
    /// Ids this phase started (stopped or stopping when it began).
    pub started: Vec<String>,
}

impl Ec2Outcome {
    /// The platform the environments connect to: the first instance's id and its public IPv4,
    /// or its private IPv4 when it has no public one.
    pub fn platform(&self) -> Option<(String, Option<String>)> {
        Ec2Phase::platform(&self.instances)
    }
}

impl From<Ec2Outcome> for Ec2Phase {
    fn from(outcome: Ec2Outcome) -> Ec2Phase {
        Ec2Phase::Completed {
            instances: outcome.instances,
            started: outcome.started,
        }
    }
}

/// Describes the selected instances, starts stopped ones when `start_if_stopped`, waits until
/// all are `running` within `wait_timeout`, and returns their addresses.
pub async fn ensure_running(settings: &Ec2Settings, log: &LogSink) -> Result<Ec2Outcome, String> {
    settings.validate()?;
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .timeout_config(timeout_config())
        .retry_config(RetryConfig::standard().with_max_attempts(MAX_ATTEMPTS));
    if let Some(region) = &settings.region {
        loader = loader.region(Region::new(region.clone()));
    }
    let config = loader.load().await;
    ensure_running_with(settings, &config, log).await
}

/// [`ensure_running`] with an already loaded AWS configuration (credentials, region, HTTP
/// client). `settings.region` and `settings.endpoint_url` still take precedence over it.
pub async fn ensure_running_with(
    settings: &Ec2Settings,
    config: &SdkConfig,
    log: &LogSink,
) -> Result<Ec2Outcome, String> {
    settings.validate()?;
    if settings.instance_ids.is_empty() && settings.tag_filters.is_empty() {
        return Err("ec2.instance_ids: set instance_ids or tag_filters to select instances".into());
    }
    let region = settings
        .region
        .clone()
        .or_else(|| config.region().map(|region| region.to_string()))
        .ok_or_else(|| {
            "no AWS region configured for the EC2 phase: set ec2.region or AWS_REGION".to_owned()
        })?;
    check_credentials(config).await?;

    let mut builder = aws_sdk_ec2::config::Builder::from(config)
        .region(Region::new(region.clone()))
        .timeout_config(timeout_config());
    if config.retry_config().is_none() {
        builder = builder.retry_config(RetryConfig::standard().with_max_attempts(MAX_ATTEMPTS));
    }
    if let Some(endpoint) = &settings.endpoint_url {
        builder = builder.endpoint_url(endpoint);
    }
    let endpoint = settings
        .endpoint_url
        .clone()
        .or_else(|| config.endpoint_url().map(str::to_owned))
        .unwrap_or_else(|| format!("https://ec2.{region}.amazonaws.com"));
    let phase = Phase {
        client: Client::from_conf(builder.build()),
        settings,
        region,
        endpoint,
        log,
    };
    phase.run().await
}

fn timeout_config() -> TimeoutConfig {
    TimeoutConfig::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .operation_attempt_timeout(ATTEMPT_TIMEOUT)
        .operation_timeout(OPERATION_TIMEOUT)
        .build()
}

const NO_CREDENTIALS: &str = "no AWS credentials found: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or run on an instance with a role";

/// Resolves credentials before the first call, so that their absence is reported as such
/// rather than as a failed request.
async fn check_credentials(config: &SdkConfig) -> Result<(), String> {
    let Some(provider) = config.credentials_provider() else {
        return Err(NO_CREDENTIALS.to_owned());
    };
    match tokio::time::timeout(OPERATION_TIMEOUT, provider.provide_credentials()).await {
        Ok(Ok(_)) => Ok(()),
        // The chain's report lists each source and why it had nothing; it names variables,
        // profiles and files, never credential values.
        Ok(Err(error)) => Err(format!(
            "{NO_CREDENTIALS} ({})",
            tidy_credentials_report(&error_chain_lines(&error))
        )),
        Err(_) => Err(format!(
            "loading AWS credentials took longer than {} s: check AWS_PROFILE (SSO login, credential_process) or the instance role",
            OPERATION_TIMEOUT.as_secs()
        )),
    }
}

struct Phase<'a> {
    client: Client,
    settings: &'a Ec2Settings,
    region: String,
    endpoint: String,
    log: &'a LogSink,
}

/// What one look at an instance's state asks for.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    Ready,
    Wait,
    Start,
}

impl Phase<'_> {
    async fn run(&self) -> Result<Ec2Outcome, String> {
        let deadline = Instant::now() + Duration::from_secs(self.settings.wait_timeout);
        let mut instances = self.describe_selection().await?;
        for instance in &instances {
            self.log
                .info(format!(
                    "found {} ({})",
                    instance.instance_id, instance.state
                ))
                .await;
        }
        let mut started: Vec<String> = Vec::new();
        let mut delay = FIRST_POLL_DELAY;
        loop {
            let mut to_start = Vec::new();
            let mut all_ready = true;
            for instance in &instances {
                match self.step(instance)? {
                    Step::Ready => {}
                    Step::Wait => all_ready = false,
                    Step::Start => {
                        all_ready = false;
                        to_start.push(instance.instance_id.clone());
                    }
                }
            }
            if all_ready {
                break;
            }
            if !to_start.is_empty() {
                for id in &to_start {
                    let note = if started.contains(id) {
                        format!("starting {id} again: it is still stopped")
                    } else {
                        format!("starting {id}")
                    };
                    self.log.info(note).await;
                }
                self.start(&to_start).await?;
                for id in to_start {
                    if !started.contains(&id) {
                        started.push(id);
                    }
                }
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(self.timeout_message(&instances));
            }
            tokio::time::sleep(delay.min(deadline - now)).await;
            delay = (delay * 2).min(MAX_POLL_DELAY);
            instances = self.describe_ids(&ids(&instances)).await?;
        }
        for instance in &instances {
            let at = match instance.address() {
                Some(address) => format!("at {address}"),
                None => "without an IPv4 address".to_owned(),
            };
            self.log
                .info(format!("{} is running {at}", instance.instance_id))
                .await;
        }
        Ok(Ec2Outcome { instances, started })
    }

    fn step(&self, instance: &Ec2Instance) -> Result<Step, String> {
        let id = &instance.instance_id;
        match instance.state.as_str() {
            "running" => Ok(Step::Ready),
            "stopped" if self.settings.start_if_stopped => Ok(Step::Start),
            "stopped" => Err(format!(
                "{id} is stopped and ec2.start_if_stopped = false: start it, or set ec2.start_if_stopped = true"
            )),
            "terminated" | "shutting-down" => Err(format!(
                "{id} is {} and cannot be started: replace it in ec2.instance_ids or ec2.tag_filters",
                instance.state
            )),
            // pending, stopping (started once stopped), or a state this build does not know.
            _ => Ok(Step::Wait),
        }
    }

    fn timeout_message(&self, instances: &[Ec2Instance]) -> String {
        let waiting: Vec<String> = instances
            .iter()
            .filter(|instance| instance.state != "running")
            .map(|instance| format!("{} ({})", instance.instance_id, instance.state))
            .collect();
        format!(
            "EC2 instances not running after ec2.wait_timeout = {} s: {}; raise ec2.wait_timeout or check the instances in region {}",
            self.settings.wait_timeout,
            waiting.join(", "),
            self.region
        )
    }

    /// The configured ids in their order, then the instances matching the tag filters (not
    /// already listed) by id.
    async fn describe_selection(&self) -> Result<Vec<Ec2Instance>, String> {
        let mut selected = if self.settings.instance_ids.is_empty() {
            Vec::new()
        } else {
            self.describe_ids(&self.settings.instance_ids).await?
        };
        if !self.settings.tag_filters.is_empty() {
            let mut filters: Vec<Filter> = self
                .settings
                .tag_filters
                .iter()
                .map(|(key, value)| {
                    Filter::builder()
                        .name(format!("tag:{key}"))
                        .values(value)
                        .build()
                })
                .collect();
            // Terminated instances stay listed for a while and can never be started.
            filters.push(
                Filter::builder()
                    .name("instance-state-name")
                    .set_values(Some(
                        ["pending", "running", "stopping", "stopped"]
                            .map(str::to_owned)
                            .to_vec(),
                    ))
                    .build(),
            );
            let mut tagged = self.describe(Vec::new(), filters).await?;
            if tagged.is_empty() {
                return Err(format!(
                    "no EC2 instance in region {} matches ec2.tag_filters {} (terminated instances are ignored): check the instances' tags, ec2.tag_filters and ec2.region",
                    self.region,
                    describe_filters(&self.settings.tag_filters)
                ));
            }
            tagged.sort_by(|a, b| a.instance_id.cmp(&b.instance_id));
            for instance in tagged {
                if !selected
                    .iter()
                    .any(|known| known.instance_id == instance.instance_id)
                {
                    selected.push(instance);
                }
            }
        }
        Ok(selected)
    }

    /// The instances `ids`, in that order; an id EC2 does not know is an error.
    async fn describe_ids(&self, ids: &[String]) -> Result<Vec<Ec2Instance>, String> {
        let found = self.describe(ids.to_vec(), Vec::new()).await?;
        let mut ordered = Vec::with_capacity(ids.len());
        let mut missing = Vec::new();
        for id in ids {
            match found.iter().find(|instance| &instance.instance_id == id) {
                Some(instance) => ordered.push(instance.clone()),
                None => missing.push(id.clone()),
            }
        }
        if !missing.is_empty() {
            return Err(self.unknown_ids_message(&missing));
        }
        Ok(ordered)
    }

    async fn describe(
        &self,
        ids: Vec<String>,
        filters: Vec<Filter>,
    ) -> Result<Vec<Ec2Instance>, String> {
        let mut instances = Vec::new();
        let mut next_token: Option<String> = None;
        let requested = ids.clone();
        loop {
            let output = self
                .client
                .describe_instances()
                .set_instance_ids((!ids.is_empty()).then(|| ids.clone()))
                .set_filters((!filters.is_empty()).then(|| filters.clone()))
                .set_next_token(next_token.take())
                .send()
                .await
                .map_err(|error| self.api_error("ec2:DescribeInstances", &requested, error))?;
            for reservation in output.reservations() {
                instances.extend(reservation.instances().iter().map(instance_from_sdk));
            }
            match output.next_token() {
                Some(token) if !token.is_empty() => next_token = Some(token.to_owned()),
                _ => return Ok(instances),
            }
        }
    }

    async fn start(&self, ids: &[String]) -> Result<(), String> {
        self.client
            .start_instances()
            .set_instance_ids(Some(ids.to_vec()))
            .send()
            .await
            .map(|_| ())
            .map_err(|error| self.api_error("ec2:StartInstances", ids, error))
    }

    fn unknown_ids_message(&self, ids: &[String]) -> String {
        let (noun, list) = match ids {
            [one] => ("instance", one.clone()),
            many => ("instances", many.join(", ")),
        };
        format!(
            "no EC2 {noun} {list} in region {}: check ec2.instance_ids (and ec2.region)",
            self.region
        )
    }

    /// An operator-facing message for a failed call to `action` about `ids`.
    fn api_error<E, R>(&self, action: &str, ids: &[String], error: SdkError<E, R>) -> String
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
        R: std::fmt::Debug + 'static,
    {
        let endpoint = &self.endpoint;
        match &error {
            SdkError::ServiceError(context) => {
                let service_error = context.err();
                let code = service_error.code().unwrap_or("unknown error");
                let message = service_error
                    .message()
                    .map(|message| format!(": {}", clip(&one_line(message), 400)))
                    .unwrap_or_default();
                match code {
                    "InvalidInstanceID.NotFound" | "InvalidInstanceID.Malformed" => {
                        // AWS names the unknown ids in its message; fall back to all of them.
                        let text = service_error.message().unwrap_or_default();
                        let named: Vec<String> = ids
                            .iter()
                            .filter(|id| text.contains(id.as_str()))
                            .cloned()
                            .collect();
                        self.unknown_ids_message(if named.is_empty() { ids } else { &named })
                    }
                    "UnauthorizedOperation" | "AccessDenied" | "AccessDeniedException" => format!(
                        "AWS refused {action} ({code}): allow {action} for these credentials' IAM identity{message}"
                    ),
                    "AuthFailure" | "InvalidClientTokenId" | "SignatureDoesNotMatch"
                    | "UnrecognizedClientException" => format!(
                        "AWS rejected the credentials for {action} ({code}): check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE{message}"
                    ),
                    "RequestExpired" | "ExpiredToken" | "ExpiredTokenException" => format!(
                        "AWS rejected {action} ({code}): the credentials have expired or this machine's clock is off; refresh them (e.g. aws sso login) and check the clock{message}"
                    ),
                    "IncorrectInstanceState" => format!(
                        "EC2 refused {action} ({code}){message}: an instance is not in a state that allows it"
                    ),
                    _ => format!("EC2 {action} failed at {endpoint} ({code}){message}"),
                }
            }
            SdkError::TimeoutError(_) => format!(
                "EC2 endpoint {endpoint} did not answer {action} within {} s: check ec2.endpoint_url / ec2.region and the network",
                OPERATION_TIMEOUT.as_secs()
            ),
            SdkError::DispatchFailure(failure) if failure.is_timeout() => format!(
                "EC2 endpoint {endpoint} did not answer {action} in time: check ec2.endpoint_url / ec2.region and the network ({})",
                error_chain(&error)
            ),
            SdkError::DispatchFailure(_) => format!(
                "cannot reach the EC2 endpoint {endpoint} for {action}: check ec2.endpoint_url / ec2.region and the network ({})",
                error_chain(&error)
            ),
            SdkError::ResponseError(_) => format!(
                "unexpected answer from {endpoint} to {action}; is ec2.endpoint_url an EC2 API? ({})",
                error_chain(&error)
            ),
            _ => format!(
                "EC2 {action} at {endpoint} failed: {}",
                error_chain(&error)
            ),
        }
    }
}

fn ids(instances: &[Ec2Instance]) -> Vec<String> {
    instances
        .iter()
        .map(|instance| instance.instance_id.clone())
        .collect()
}

fn describe_filters(filters: &BTreeMap<String, String>) -> String {
    let mut text = String::from("{");
    for (index, (key, value)) in filters.iter().enumerate() {
        if index > 0 {
            text.push_str(", ");
        }
        let _ = write!(text, "{key}={value}");
    }
    text.push('}');
    text
}

/// An error and its sources on one line, each message once. Display only: the SDK's Debug
/// output would add request and response internals an operator does not need.
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    one_line(&error_chain_lines(error))
}

/// [`error_chain`] keeping the line breaks of multi-line messages.
fn error_chain_lines(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let message = cause.to_string();
        if !message.trim().is_empty() && !text.contains(&message) {
            text.push_str(": ");
            text.push_str(&message);
        }
        source = cause.source();
    }
    text
}

/// The credential chain's report ("no credentials found in chain. Attempted:" and one line per
/// source) as one line, without the phrase the SDK repeats for every source.
fn tidy_credentials_report(report: &str) -> String {
    const NOT_ENABLED: &str = "the credential provider was not enabled";
    let lines: Vec<String> = report
        .lines()
        .map(|line| {
            let line = line.trim().replace(&format!("{NOT_ENABLED}: "), "");
            match line.strip_suffix(&format!(": {NOT_ENABLED}")) {
                Some(source) => format!("{source}: not configured"),
                None if line == NOT_ENABLED => String::new(),
                None => line,
            }
        })
        .filter(|line| !line.is_empty())
        .collect();
    one_line(&lines.join("; ").replace(":;", ":"))
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn clip(text: &str, max_chars: usize) -> String {
    match text.char_indices().nth(max_chars) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

/// On EC2, the id of the instance we run on and its public IPv4 (else its private IPv4), from
/// IMDSv2; `None` elsewhere, within about a second.
pub async fn identity_from_imds() -> Option<(String, Option<String>)> {
    let disabled = std::env::var("AWS_EC2_METADATA_DISABLED")
        .is_ok_and(|value| value.trim().eq_ignore_ascii_case("true"));
    if disabled {
        return None;
    }
    let client = aws_config::imds::Client::builder()
        .max_attempts(1)
        .connect_timeout(Duration::from_millis(300))
        .read_timeout(Duration::from_millis(500))
        .operation_timeout(IMDS_TOTAL_TIMEOUT)
        .build();
    let lookup = async {
        let id = client.get("/latest/meta-data/instance-id").await.ok()?;
        let id = id.as_ref().trim().to_owned();
        if !is_instance_id(&id) {
            return None;
        }
        let ip = match client.get("/latest/meta-data/public-ipv4").await {
            Ok(ip) => Some(ip),
            // No public address: IMDS answers 404 for public-ipv4.
            Err(_) => client.get("/latest/meta-data/local-ipv4").await.ok(),
        };
        let ip = ip
            .map(|ip| ip.as_ref().trim().to_owned())
            .filter(|ip| ip.parse::<std::net::Ipv4Addr>().is_ok());
        Some((id, ip))
    };
    tokio::time::timeout(IMDS_TOTAL_TIMEOUT, lookup)
        .await
        .ok()
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instance(id: &str, state: &str, public_ip: Option<&str>, private_ip: &str) -> Ec2Instance {
        Ec2Instance {
            instance_id: id.into(),
            state: state.into(),
            public_ip: public_ip.map(Into::into),
            public_dns: None,
            private_ip: Some(private_ip.into()),
        }
    }

    #[test]
    fn platform_prefers_the_public_address_of_the_first_instance() {
        let outcome = Ec2Outcome {
            instances: vec![
                instance("i-1", "running", None, "10.0.0.1"),
                instance("i-2", "running", Some("1.2.3.4"), "10.0.0.2"),
            ],
            started: vec![],
        };
        assert_eq!(
            outcome.platform(),
            Some(("i-1".into(), Some("10.0.0.1".into())))
        );
        let outcome = Ec2Outcome {
            instances: vec![instance("i-2", "running", Some("1.2.3.4"), "10.0.0.2")],
            started: vec![],
        };
        assert_eq!(
            outcome.platform(),
            Some(("i-2".into(), Some("1.2.3.4".into())))
        );
        let empty = Ec2Outcome {
            instances: vec![],
            started: vec![],
        };
        assert_eq!(empty.platform(), None);
    }

    #[test]
    fn credentials_report_reads_as_one_line() {
        let report = "the credential provider was not enabled: no credentials found in chain. Attempted:\n  \
            Environment: the credential provider was not enabled: environment variable not set\n  \
            Profile: the credential provider was not enabled\n  \
            Ec2InstanceMetadata: the credential provider was not enabled: IMDS disabled";
        assert_eq!(
            tidy_credentials_report(report),
            "no credentials found in chain. Attempted: Environment: environment variable not set; \
             Profile: not configured; Ec2InstanceMetadata: IMDS disabled"
        );
    }

    #[test]
    fn clip_and_one_line_keep_messages_short() {
        assert_eq!(one_line("a\n  b\tc "), "a b c");
        assert_eq!(clip("abcdef", 3), "abc…");
        assert_eq!(clip("abc", 3), "abc");
        assert_eq!(clip("ééé", 2), "éé…");
    }
}
