//! A deployment's log: [`LogLine`]s written through a [`LogSink`] by the run and its triggers,
//! and [`LineSplitter`], which cuts a byte stream (process output, SSH channel data) into lines.

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::{EnvironmentId, Timestamp};

/// Where a log line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LogLine {
    pub ts: Timestamp,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub environment: Option<EnvironmentId>,
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
    environment: Option<EnvironmentId>,
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
    pub fn for_environment(&self, environment: &EnvironmentId) -> LogSink {
        LogSink {
            environment: Some(environment.clone()),
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
            ts: Timestamp::now(),
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
    fn long_lines_are_cut() {
        let mut line = "é".repeat(MAX_LINE_BYTES);
        truncate_line(&mut line);
        assert!(line.len() <= MAX_LINE_BYTES + 20 && line.ends_with("[line cut]"));
    }
}
