//! `local`: runs a command on the host machine.
//!
//! The command is an argument vector executed directly, never through a shell built from request
//! data: deployment facts reach the script as environment variables (`PA_DEPLOYMENT_ID`,
//! `PA_DEPLOYMENT_VERSION`, `PA_PLATFORM_IP`, …). The child gets its own process group, and the
//! whole group is killed when the trigger is dropped (timeout, cancel), so a script's own
//! children do not outlive it.

use std::{path::PathBuf, process::Stdio};

use tokio::io::{AsyncRead, AsyncReadExt};

use super::{
    LineSplitter, LogSink, LogStream, Trigger, TriggerContext, TriggerFailure, TriggerResult,
    TriggerSuccess,
};
use crate::environments::Environment;

/// Lines of stderr kept for the error message of a failed run.
const STDERR_TAIL_LINES: usize = 10;

/// How long output may keep arriving after the command exited.
const PIPE_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

pub struct LocalTrigger {
    environment: Environment,
}

impl LocalTrigger {
    pub fn new(environment: Environment) -> LocalTrigger {
        LocalTrigger { environment }
    }

    /// The argument vector: `command`, or `init_script_path` run directly.
    fn argv(&self) -> Option<Vec<String>> {
        match (
            &self.environment.command,
            &self.environment.init_script_path,
        ) {
            (Some(command), _) if !command.is_empty() => Some(command.clone()),
            (_, Some(script)) => Some(vec![script.clone()]),
            _ => None,
        }
    }
}

/// Kills the child's whole process group when dropped, unless the child was reaped.
struct GroupGuard {
    pgid: Option<nix::unistd::Pid>,
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let Some(pgid) = self.pgid {
            let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
        }
    }
}

impl Trigger for LocalTrigger {
    async fn run(&self, context: &TriggerContext) -> TriggerResult {
        let Some(argv) = self.argv() else {
            return Err(TriggerFailure::failed(
                "local environment has neither `command` nor `init_script_path`",
            ));
        };
        let log = &context.log;
        let working_directory = self
            .environment
            .working_directory
            .as_deref()
            .map(PathBuf::from);
        log.info(format!(
            "running {}",
            shlex::try_join(argv.iter().map(String::as_str)).unwrap_or_else(|_| argv.join(" "))
        ))
        .await;
        let mut command = tokio::process::Command::new(&argv[0]);
        command
            .args(&argv[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .process_group(0)
            .env("PA_DEPLOYMENT_ID", &context.deployment_id)
            .env("PA_DEPLOYMENT_VERSION", &context.version)
            .env("DEPLOYMENT_VERSION", &context.version)
            .env("PA_ENVIRONMENT_ID", &self.environment.environment_id);
        if let Some(ip) = &context.platform_ip {
            command.env("PA_PLATFORM_IP", ip).env("EC2_PUBLIC_IP", ip);
        }
        if let Some(id) = &context.platform_instance_id {
            command
                .env("PA_PLATFORM_INSTANCE_ID", id)
                .env("EC2_INSTANCE_ID", id);
        }
        if let Some(directory) = &working_directory {
            command.current_dir(directory);
        }
        let mut child = command.spawn().map_err(|error| {
            let place = working_directory
                .as_ref()
                .map(|directory| format!(" in {}", directory.display()))
                .unwrap_or_default();
            TriggerFailure::failed(format!("cannot start {:?}{place}: {error}", argv[0]))
        })?;
        let _group = GroupGuard {
            pgid: child
                .id()
                .and_then(|id| i32::try_from(id).ok())
                .map(nix::unistd::Pid::from_raw),
        };
        let stdout = tokio::spawn(forward(child.stdout.take(), log.clone(), LogStream::Stdout));
        let stderr = tokio::spawn(forward(child.stderr.take(), log.clone(), LogStream::Stderr));
        let status = child.wait().await.map_err(|error| {
            TriggerFailure::failed(format!("waiting for the command failed: {error}"))
        })?;
        // A background child of the script may hold the pipes open: give the output a moment,
        // then the group guard kills what is left.
        let _ = tokio::time::timeout(PIPE_GRACE, stdout).await;
        let stderr_tail = match tokio::time::timeout(PIPE_GRACE, stderr).await {
            Ok(Ok(tail)) => tail,
            _ => Vec::new(),
        };
        match status.code() {
            Some(0) => Ok(TriggerSuccess {
                exit_code: Some(0),
                detail: Some("exit code 0".to_owned()),
            }),
            code => {
                let how = match code {
                    Some(code) => format!("exited with code {code}"),
                    None => "was killed by a signal".to_owned(),
                };
                Err(
                    TriggerFailure::failed(with_stderr(format!("command {how}"), &stderr_tail))
                        .with_exit_code(code),
                )
            }
        }
    }
}

/// A failure message with the last lines of stderr, when there are any.
pub fn with_stderr(message: String, stderr_tail: &[String]) -> String {
    if stderr_tail.is_empty() {
        message
    } else {
        format!("{message}; stderr: {}", stderr_tail.join(" | "))
    }
}

/// Streams one pipe into the log line by line; returns the last lines (for stderr's tail).
async fn forward(
    pipe: Option<impl AsyncRead + Unpin>,
    log: LogSink,
    stream: LogStream,
) -> Vec<String> {
    let mut tail = std::collections::VecDeque::with_capacity(STDERR_TAIL_LINES);
    let Some(mut pipe) = pipe else {
        return Vec::new();
    };
    let mut splitter = LineSplitter::default();
    let mut buffer = vec![0u8; 8192];
    loop {
        let read = match pipe.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(read) => read,
        };
        for line in splitter.push(&buffer[..read]) {
            remember(&mut tail, &line);
            log.line(stream, line).await;
        }
    }
    if let Some(line) = splitter.finish() {
        remember(&mut tail, &line);
        log.line(stream, line).await;
    }
    tail.into()
}

fn remember(tail: &mut std::collections::VecDeque<String>, line: &str) {
    if tail.len() == STDERR_TAIL_LINES {
        tail.pop_front();
    }
    tail.push_back(line.to_owned());
}
