//! Triggers: how one environment is told to run its init script. One module per connection
//! method, all behind [`Trigger`].
//!
//! The coordinator owns timeouts and cancellation: it drops a trigger's future when the
//! environment's `timeout` passes or the deployment is cancelled. Every trigger therefore holds
//! its external resources (child processes, SSH channels, HTTP requests) in values that release
//! them on drop.

pub mod http_api;
pub mod local;
pub mod ssh;
pub mod webhook;

use std::{future::Future, time::SystemTime};

use serde::Serialize;
use tokio::sync::mpsc;

use crate::{
    egress::Egress,
    environments::{Connection, Environment},
};

/// What every trigger is told about the deployment it is part of.
#[derive(Debug, Clone)]
pub struct TriggerContext {
    pub deployment_id: String,
    pub version: String,
    /// The platform instance the environments should connect to, when known (EC2 phase or
    /// `EC2_INSTANCE_ID` / `EC2_PUBLIC_IP`).
    pub platform_instance_id: Option<String>,
    pub platform_ip: Option<String>,
    /// A rollback to `version` (the environment's previous version) rather than a deployment:
    /// scripts see `PA_ROLLBACK=1`, HTTP bodies `"rollback": true`.
    pub rollback: bool,
    pub log: LogSink,
    /// When the trigger must stop on its own: a trigger that owns local processes watches this
    /// and cleans up (kills its whole process tree, reaps it) before it returns, instead of
    /// being dropped mid-flight.
    pub stop: StopSignal,
}

/// Cancel and deadline of one trigger.
#[derive(Debug, Clone, Default)]
pub struct StopSignal {
    pub cancel: tokio_util::sync::CancellationToken,
    /// The environment's `timeout`, counted from the trigger's start.
    pub deadline: Option<tokio::time::Instant>,
}

impl StopSignal {
    /// Resolves when the trigger must stop, saying why.
    pub async fn stopped(&self) -> FailureKind {
        let deadline = async {
            match self.deadline {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = self.cancel.cancelled() => FailureKind::Cancelled,
            _ = deadline => FailureKind::TimedOut,
        }
    }
}

/// A successful trigger.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TriggerSuccess {
    pub exit_code: Option<i32>,
    /// A short note for the result (e.g. "HTTP 202").
    pub detail: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    Failed,
    TimedOut,
    /// The deployment was cancelled, stopped by its failure threshold, or the host is
    /// stopping; the message says what the trigger did about it (the run adds why).
    Cancelled,
}

/// A failed trigger: what went wrong, said so that an operator knows what to fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TriggerFailure {
    pub kind: FailureKind,
    pub message: String,
    pub exit_code: Option<i32>,
}

impl TriggerFailure {
    pub fn failed(message: impl Into<String>) -> TriggerFailure {
        TriggerFailure {
            kind: FailureKind::Failed,
            message: message.into(),
            exit_code: None,
        }
    }

    pub fn timed_out(message: impl Into<String>) -> TriggerFailure {
        TriggerFailure {
            kind: FailureKind::TimedOut,
            message: message.into(),
            exit_code: None,
        }
    }

    pub fn cancelled(message: impl Into<String>) -> TriggerFailure {
        TriggerFailure {
            kind: FailureKind::Cancelled,
            message: message.into(),
            exit_code: None,
        }
    }

    pub fn with_exit_code(mut self, code: Option<i32>) -> TriggerFailure {
        self.exit_code = code;
        self
    }
}

pub type TriggerResult = Result<TriggerSuccess, TriggerFailure>;

/// One way of starting an environment's init script.
pub trait Trigger: Send + Sync {
    fn run(&self, context: &TriggerContext) -> impl Future<Output = TriggerResult> + Send;
}

/// The trigger for an environment, chosen by its `connection_method`.
pub enum AnyTrigger {
    Ssh(ssh::SshTrigger),
    HttpApi(http_api::HttpApiTrigger),
    Webhook(webhook::WebhookTrigger),
    Local(local::LocalTrigger),
    /// What a test's script says (the core's own tests of the run).
    #[cfg(test)]
    Scripted(crate::run::script::ScriptedTrigger),
}

impl AnyTrigger {
    pub fn for_environment(environment: &Environment, egress: &Egress) -> AnyTrigger {
        let id = environment.environment_id.clone();
        let timeout = environment.timeout;
        match &environment.connection {
            Connection::Ssh(ssh) => AnyTrigger::Ssh(ssh::SshTrigger::new(
                id,
                timeout,
                ssh.clone(),
                egress.clone(),
            )),
            Connection::HttpApi(api) => AnyTrigger::HttpApi(http_api::HttpApiTrigger::new(
                id,
                api.clone(),
                egress.clone(),
            )),
            Connection::Webhook(webhook) => AnyTrigger::Webhook(webhook::WebhookTrigger::new(
                id,
                webhook.clone(),
                egress.clone(),
            )),
            Connection::Local(local) => {
                AnyTrigger::Local(local::LocalTrigger::new(id, timeout, local.clone()))
            }
        }
    }

    /// Whether the trigger watches [`TriggerContext::stop`] itself (and must be let finish),
    /// rather than being dropped when it must stop.
    pub fn stops_itself(&self) -> bool {
        matches!(self, AnyTrigger::Local(_))
    }

    pub async fn run(&self, context: &TriggerContext) -> TriggerResult {
        match self {
            AnyTrigger::Ssh(trigger) => trigger.run(context).await,
            AnyTrigger::HttpApi(trigger) => trigger.run(context).await,
            AnyTrigger::Webhook(trigger) => trigger.run(context).await,
            AnyTrigger::Local(trigger) => trigger.run(context).await,
            #[cfg(test)]
            AnyTrigger::Scripted(trigger) => trigger.run(context).await,
        }
    }
}

/// Where a log line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum LogStream {
    /// Written by the coordinator or a trigger about what it does.
    Info,
    Stdout,
    Stderr,
    Error,
}

impl LogStream {
    pub fn as_str(self) -> &'static str {
        match self {
            LogStream::Info => "info",
            LogStream::Stdout => "stdout",
            LogStream::Stderr => "stderr",
            LogStream::Error => "error",
        }
    }
}

/// One line of a deployment's log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct LogLine {
    /// RFC 3339 time with milliseconds, UTC.
    pub ts: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub environment: Option<String>,
    pub stream: LogStream,
    pub line: String,
    /// The request that started the deployment, so a line leads back to the host's request log.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub request_id: Option<String>,
}

/// Longest line kept; longer ones are cut with a marker so one noisy script cannot fill memory.
pub const MAX_LINE_BYTES: usize = 4096;

/// A handle for writing lines into a deployment's log on behalf of one environment (or of the
/// coordinator). The channel is bounded: a trigger producing output faster than the log is
/// stored waits, instead of growing memory.
#[derive(Debug, Clone)]
pub struct LogSink {
    environment: Option<String>,
    sender: mpsc::Sender<LogLine>,
    /// Masked in every line.
    secrets: crate::redact::Secrets,
}

impl LogSink {
    /// A sink and the receiver its lines arrive on (used by the coordinator and by tests).
    pub fn channel(capacity: usize) -> (LogSink, mpsc::Receiver<LogLine>) {
        let (sender, receiver) = mpsc::channel(capacity.max(1));
        (
            LogSink {
                environment: None,
                sender,
                secrets: crate::redact::Secrets::default(),
            },
            receiver,
        )
    }

    /// The same log, with lines attributed to `environment`.
    pub fn for_environment(&self, environment: &str) -> LogSink {
        LogSink {
            environment: Some(environment.to_owned()),
            sender: self.sender.clone(),
            secrets: self.secrets.clone(),
        }
    }

    /// The same log, with `secrets` masked in every line.
    pub fn masking(&self, secrets: crate::redact::Secrets) -> LogSink {
        LogSink {
            environment: self.environment.clone(),
            sender: self.sender.clone(),
            secrets,
        }
    }

    pub async fn line(&self, stream: LogStream, text: impl Into<String>) {
        // A URL in a line (a script's own output included) never shows its password.
        let mut line = crate::redact::urls_in(&text.into());
        self.secrets.mask_in_place(&mut line);
        truncate_line(&mut line);
        let entry = LogLine {
            ts: timestamp(SystemTime::now()),
            environment: self.environment.clone(),
            stream,
            line,
            // Filled in by the deployment's log writer, which knows the request.
            request_id: None,
        };
        // A closed log means the deployment is being torn down; the line has nowhere to go.
        let _ = self.sender.send(entry).await;
    }

    pub async fn info(&self, text: impl Into<String>) {
        self.line(LogStream::Info, text).await;
    }
}

fn truncate_line(line: &mut String) {
    if line.len() > MAX_LINE_BYTES {
        let mut cut = MAX_LINE_BYTES;
        while !line.is_char_boundary(cut) {
            cut -= 1;
        }
        line.truncate(cut);
        line.push_str(" …[line cut]");
    }
}

/// Splits a byte stream (process output, SSH channel data) into lines. Bytes that are not
/// UTF-8 are replaced, and a line longer than [`MAX_LINE_BYTES`] is emitted in pieces.
#[derive(Debug, Default)]
pub struct LineSplitter {
    pending: Vec<u8>,
}

impl LineSplitter {
    /// Adds `bytes` and returns every line they completed (without the line ending).
    pub fn push(&mut self, bytes: &[u8]) -> Vec<String> {
        self.pending.extend_from_slice(bytes);
        let mut lines = Vec::new();
        while let Some(end) = self.pending.iter().position(|&byte| byte == b'\n') {
            let mut line: Vec<u8> = self.pending.drain(..=end).collect();
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            lines.push(String::from_utf8_lossy(&line).into_owned());
        }
        if self.pending.len() > MAX_LINE_BYTES {
            let piece: Vec<u8> = self.pending.drain(..).collect();
            lines.push(String::from_utf8_lossy(&piece).into_owned());
        }
        lines
    }

    /// What is left after the stream ended, if anything.
    pub fn finish(&mut self) -> Option<String> {
        if self.pending.is_empty() {
            return None;
        }
        let rest: Vec<u8> = self.pending.drain(..).collect();
        Some(String::from_utf8_lossy(&rest).into_owned())
    }
}

/// RFC 3339 UTC with milliseconds, e.g. `2026-11-25T10:50:15.123Z`.
pub fn timestamp(time: SystemTime) -> String {
    // A time before 1970 cannot come from this host's clock in a sane state; it shows as 1970.
    let time = time.max(SystemTime::UNIX_EPOCH);
    let utc = time::OffsetDateTime::from(time);
    utc.format(RFC3339_MILLIS).unwrap_or_default()
}

/// `2026-01-31T12:00:00.123Z`: RFC 3339 in UTC with milliseconds, the one way times are shown.
const RFC3339_MILLIS: &[time::format_description::FormatItem<'static>] = time::macros::format_description!(
    "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitter_joins_chunks_and_strips_endings() {
        let mut splitter = LineSplitter::default();
        assert_eq!(splitter.push(b"hel"), Vec::<String>::new());
        assert_eq!(splitter.push(b"lo\r\nwor"), vec!["hello".to_owned()]);
        assert_eq!(
            splitter.push(b"ld\n\n"),
            vec!["world".to_owned(), String::new()]
        );
        assert_eq!(splitter.push(b"tail"), Vec::<String>::new());
        assert_eq!(splitter.finish().as_deref(), Some("tail"));
        assert_eq!(splitter.finish(), None);
    }

    #[test]
    fn timestamps_are_rfc3339() {
        let time = SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(1_795_000_000_123);
        assert_eq!(timestamp(time), "2026-11-18T11:06:40.123Z");
        assert_eq!(
            timestamp(SystemTime::UNIX_EPOCH),
            "1970-01-01T00:00:00.000Z"
        );
    }

    #[test]
    fn long_lines_are_cut() {
        let mut line = "é".repeat(MAX_LINE_BYTES);
        truncate_line(&mut line);
        assert!(line.len() <= MAX_LINE_BYTES + 20 && line.ends_with("[line cut]"));
    }
}
