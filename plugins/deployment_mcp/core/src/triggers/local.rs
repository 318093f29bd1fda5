//! `local`: runs a command on the host machine.
//!
//! The command is an argument vector executed directly, never through a shell built from request
//! data: deployment facts reach the script as environment variables (`PA_DEPLOYMENT_ID`,
//! `PA_DEPLOYMENT_VERSION`, `PA_PLATFORM_IP`, …). That, `PATH`, `HOME`, `LANG` and the
//! environment's own `env` map are all it gets: nothing else of the host's environment.
//!
//! The trigger ends when the command exits: output a background process keeps open (a daemon
//! the script started) is read for [`PIPE_GRACE`] more, then abandoned with a log line saying
//! so, and the daemon keeps running — starting services is what init scripts do.
//!
//! Cancel and timeout kill the whole tree the command created, then reap the command: its
//! process group, and every process that left the group (`setsid`, a double fork) found by the
//! marker variable `PA_TRIGGER_ID` each process inherits with its environment. The trigger does
//! this itself before it returns (it watches [`super::StopSignal`]); dropped mid-flight, a guard
//! still kills the tree.

use std::{path::PathBuf, process::Stdio, time::Duration};

use nix::{sys::signal::Signal, unistd::Pid};
use tokio::io::{AsyncRead, AsyncReadExt};

use super::{FailureKind, Trigger, TriggerContext, TriggerFailure, TriggerResult, TriggerSuccess};
use crate::{
    environments::{LocalConnection, LocalProgram},
    model::{LineSplitter, LogSink, LogStream},
};

/// Lines of stderr kept for the error message of a failed run.
const STDERR_TAIL_LINES: usize = 10;

/// How long output may keep arriving after the command exited.
const PIPE_GRACE: Duration = Duration::from_secs(2);
/// How long a killed command may take to be reaped.
const REAP_LIMIT: Duration = Duration::from_secs(5);
/// The variable that marks every process of one trigger's tree.
pub const MARKER_VARIABLE: &str = "PA_TRIGGER_ID";
/// The only variables of the host's own environment a command gets.
const INHERITED: [&str; 3] = ["PATH", "HOME", "LANG"];
/// `PATH` when the host has none.
const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// `PATH`, `HOME` and `LANG` as the host has them (`PATH` always set).
fn inherited_variables() -> Vec<(&'static str, std::ffi::OsString)> {
    INHERITED
        .iter()
        .filter_map(|name| {
            let value = std::env::var_os(name)
                .or_else(|| (*name == "PATH").then(|| DEFAULT_PATH.into()))?;
            Some((*name, value))
        })
        .collect()
}

pub struct LocalTrigger {
    environment_id: String,
    /// Seconds, for the message when the command is stopped at its timeout.
    timeout: u64,
    connection: LocalConnection,
}

impl LocalTrigger {
    pub fn new(environment_id: String, timeout: u64, connection: LocalConnection) -> LocalTrigger {
        LocalTrigger {
            environment_id,
            timeout,
            connection,
        }
    }

    /// The argument vector: `command`, or `init_script_path` run directly (for a rollback,
    /// the rollback program when there is one).
    fn argv(&self, rollback: bool) -> Vec<String> {
        let program = match &self.connection.rollback {
            Some(program) if rollback => program,
            _ => &self.connection.program,
        };
        match program {
            LocalProgram::Command(command) => command.clone(),
            LocalProgram::Script(script) => vec![script.clone()],
        }
    }
}

/// The processes one run of a command created: its process group, and any process carrying
/// the run's marker in its environment.
struct ProcessTree {
    group: Option<Pid>,
    marker: String,
    /// Cleared once the tree was killed (or must be left, after a normal exit).
    armed: bool,
}

impl ProcessTree {
    /// Kills every process of the tree; returns how many were found outside the group.
    fn kill(&mut self) -> usize {
        self.armed = false;
        if let Some(group) = self.group {
            let _ = nix::sys::signal::killpg(group, Signal::SIGKILL);
        }
        // Processes that left the group are found by their marker. A process may fork while
        // the scan runs: look again until a pass finds none (bounded).
        let mut outside = 0;
        for _ in 0..5 {
            let found = marked_processes(&self.marker);
            if found.is_empty() {
                break;
            }
            for pid in found {
                if nix::sys::signal::kill(pid, Signal::SIGKILL).is_ok() {
                    outside += 1;
                }
            }
        }
        outside
    }
}

impl Drop for ProcessTree {
    fn drop(&mut self) {
        if self.armed {
            self.kill();
        }
    }
}

/// Live processes whose environment holds `PA_TRIGGER_ID=<marker>` (only this user's
/// processes are readable, which is all a trigger can have started).
fn marked_processes(marker: &str) -> Vec<Pid> {
    let needle = format!("{MARKER_VARIABLE}={marker}");
    let own = std::process::id();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != own)
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ")).is_ok_and(|environ| {
                environ
                    .split(|byte| *byte == 0)
                    .any(|entry| entry == needle.as_bytes())
            })
        })
        .filter_map(|pid| i32::try_from(pid).ok().map(Pid::from_raw))
        .collect()
}

fn new_marker() -> String {
    let mut bytes = [0u8; 12];
    if getrandom::fill(&mut bytes).is_err() {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        bytes[..8].copy_from_slice(&(now.as_nanos() as u64).to_be_bytes());
        bytes[8..].copy_from_slice(&std::process::id().to_be_bytes());
    }
    hex::encode(bytes)
}

impl Trigger for LocalTrigger {
    async fn run(&self, context: &TriggerContext) -> TriggerResult {
        let argv = self.argv(context.rollback);
        let log = &context.log;
        let working_directory = self
            .connection
            .working_directory
            .as_deref()
            .map(PathBuf::from);
        log.info(format!(
            "running {}",
            shlex::try_join(argv.iter().map(String::as_str)).unwrap_or_else(|_| argv.join(" "))
        ))
        .await;
        let marker = new_marker();
        let mut command = tokio::process::Command::new(&argv[0]);
        command
            .args(&argv[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            // A clean environment: the host's (its credentials, its keys, every `PA_*` setting)
            // would reach the deployment log of any script that prints its environment.
            .env_clear()
            .envs(inherited_variables())
            .envs(&self.connection.env)
            .env(MARKER_VARIABLE, &marker)
            .env("PA_DEPLOYMENT_ID", &context.deployment_id)
            .env("PA_DEPLOYMENT_VERSION", &context.version)
            .env("DEPLOYMENT_VERSION", &context.version)
            .env("PA_ENVIRONMENT_ID", &self.environment_id);
        if context.rollback {
            command.env("PA_ROLLBACK", "1");
        }
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
        let mut tree = ProcessTree {
            group: child
                .id()
                .and_then(|id| i32::try_from(id).ok())
                .map(Pid::from_raw),
            marker,
            armed: true,
        };
        let stdout = tokio::spawn(forward(child.stdout.take(), log.clone(), LogStream::Stdout));
        let stderr = tokio::spawn(forward(child.stderr.take(), log.clone(), LogStream::Stderr));
        let waited = tokio::select! {
            status = child.wait() => Ok(status),
            why = context.stop.stopped() => Err(why),
        };
        let status = match waited {
            Ok(status) => status.map_err(|error| {
                TriggerFailure::failed(format!("waiting for the command failed: {error}"))
            })?,
            Err(why) => {
                let outside = tokio::task::spawn_blocking(move || {
                    let outside = tree.kill();
                    (tree, outside)
                })
                .await
                .map(|(_, outside)| outside)
                .unwrap_or(0);
                // Reap it, so no zombie is left behind (it was killed: this is quick).
                let _ = tokio::time::timeout(REAP_LIMIT, child.wait()).await;
                stdout.abort();
                stderr.abort();
                let also = if outside > 0 {
                    format!(" (and {outside} process(es) it had started outside its group)")
                } else {
                    String::new()
                };
                return Err(match why {
                    FailureKind::TimedOut => TriggerFailure::timed_out(format!(
                        "no result within the environment's timeout of {} s; the command was killed{also}",
                        self.timeout
                    )),
                    // The run says why it stopped (a cancel, a failure threshold) before this.
                    _ => TriggerFailure::cancelled(format!("the command was killed{also}")),
                });
            }
        };
        // The command is done; what it started is left running.
        tree.armed = false;
        // A background process may hold the pipes open: read what comes for a moment, then
        // stop reading and say so.
        let (mut stdout, mut stderr) = (stdout, stderr);
        let (stdout_done, stderr_tail) = tokio::join!(
            tokio::time::timeout(PIPE_GRACE, &mut stdout),
            tokio::time::timeout(PIPE_GRACE, &mut stderr)
        );
        let held_open = stdout_done.is_err() || stderr_tail.is_err();
        // Stop the readers: they hold the pipes and the log, which must close for the run to
        // finish.
        stdout.abort();
        stderr.abort();
        let stderr_tail = match stderr_tail {
            Ok(Ok(tail)) => tail,
            _ => Vec::new(),
        };
        if held_open {
            log.info(format!(
                "the command exited, but a process it started keeps its output open; output after {} s is not read",
                PIPE_GRACE.as_secs()
            ))
            .await;
        }
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
