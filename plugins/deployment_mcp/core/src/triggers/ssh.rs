//! `ssh`: runs the init script on the environment over SSH.
//!
//! The client authenticates with an unencrypted private key (`ssh_key_path`) and verifies the
//! server against `known_hosts_path` (default `~/.ssh/known_hosts`); an unknown or changed host
//! key fails the trigger, it is never trusted silently.
//!
//! The remote command is one line for the login shell, which must be POSIX-like (sh, bash,
//! dash, zsh, …): `cd <working_directory> && PA_…=… exec <init_script_path>`, with every value
//! quoted, so request data (the version, the platform IP) cannot add shell syntax.
//!
//! Cancellation: the coordinator drops the future, which closes the channel and the session.
//! OpenSSH does not stop a command without a pty when that happens, and its `signal` channel
//! request is refused for root logins (they run without privilege separation). So the command
//! line starts a small watcher on the remote side (see [`WATCHER`]): it holds the channel's stdin
//! and, when that ends while the script still runs, stops the script's process group. This also
//! covers a connection that is lost rather than closed.

use std::{
    collections::VecDeque,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use russh::{
    client::{self, Handle, Msg},
    keys::{HashAlg, PrivateKey, PrivateKeyWithHashAlg, PublicKey, PublicKeyOrCertificate},
    Channel, ChannelMsg, Disconnect, Sig,
};

use super::{
    local::with_stderr, Trigger, TriggerContext, TriggerFailure, TriggerResult, TriggerSuccess,
};
use crate::{
    egress::{ConnectError, Egress},
    environments::SshConnection,
    model::{LineSplitter, LogSink, LogStream},
};

/// Lines of stderr kept for the error message of a failed run.
const STDERR_TAIL_LINES: usize = 10;

/// Upper bound for connecting, the handshake and authentication (the environment's `timeout`
/// may be lower).
const CONNECT_LIMIT: Duration = Duration::from_secs(10);

/// How long output may keep arriving after the command reported its exit (a background child of
/// the script can hold the channel open).
const PIPE_GRACE: Duration = Duration::from_secs(2);

/// Bound for closing a session, so a dead peer cannot keep a cleanup task alive.
const CLOSE_LIMIT: Duration = Duration::from_secs(10);

/// The start of every remote command line.
///
/// It moves the channel's stdin to fd 3 (the script gets `/dev/null`, like a local one, and fd 3
/// is closed for it) and starts a background watcher that reads fd 3 until it ends. Stdin ends
/// when the client sends EOF or closes the channel, or when sshd goes away with the connection.
/// The shell then `exec`s the script, so `$$` is the script's PID and, as sshd makes the shell a
/// session leader, `-$$` its process group. If the script still runs when stdin ends, the run was
/// abandoned: the watcher sends TERM to the group (itself ignoring it), waits 3 s and sends KILL.
/// If the script has ended, the watcher leaves quietly, so daemons the script started survive,
/// as they would with `ssh host ./script`.
const WATCHER: &str = "exec 3<&0 </dev/null; \
    { while read -r _ <&3; do :; done; kill -0 $$ 2>/dev/null || exit 0; trap '' TERM; \
    kill -TERM -$$ 2>/dev/null || kill -TERM $$; sleep 3; \
    kill -KILL -$$ 2>/dev/null || kill -KILL $$; } >/dev/null 2>&1 & ";

const DEFAULT_KNOWN_HOSTS: &str = "~/.ssh/known_hosts";

pub struct SshTrigger {
    environment_id: String,
    /// Seconds: also bounds connecting and authenticating.
    timeout: u64,
    connection: SshConnection,
    egress: Egress,
}

impl SshTrigger {
    pub fn new(
        environment_id: String,
        timeout: u64,
        connection: SshConnection,
        egress: Egress,
    ) -> SshTrigger {
        SshTrigger {
            environment_id,
            timeout,
            connection,
            egress,
        }
    }
}

/// Where to connect and as whom, resolved from the environment.
struct Target {
    host: String,
    port: u16,
    username: String,
    key_path: PathBuf,
    known_hosts: PathBuf,
}

impl Target {
    fn from_connection(ssh: &SshConnection) -> Result<Target, TriggerFailure> {
        let known_hosts = ssh
            .known_hosts_path
            .as_deref()
            .filter(|path| !path.is_empty())
            .unwrap_or(DEFAULT_KNOWN_HOSTS);
        Ok(Target {
            host: ssh.host.clone(),
            port: ssh.port.unwrap_or(22),
            username: ssh.username.clone(),
            key_path: expand_home(&ssh.ssh_key_path).map_err(TriggerFailure::failed)?,
            known_hosts: expand_home(known_hosts).map_err(TriggerFailure::failed)?,
        })
    }

    fn address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

/// `~/x` → `$HOME/x`, the way the original configuration files spell key paths.
fn expand_home(path: &str) -> Result<PathBuf, String> {
    let rest = match path.strip_prefix("~/") {
        Some(rest) => rest,
        None if path == "~" => "",
        None => return Ok(PathBuf::from(path)),
    };
    let home = std::env::var_os("HOME")
        .filter(|home| !home.is_empty())
        .ok_or_else(|| format!("cannot expand {path:?}: HOME is not set"))?;
    Ok(PathBuf::from(home).join(rest))
}

/// The remote command line, and the part of it worth showing in the log (without the
/// variables).
fn remote_command(
    environment_id: &str,
    ssh: &SshConnection,
    context: &TriggerContext,
) -> Result<(String, String), TriggerFailure> {
    let script = match &ssh.rollback_script_path {
        Some(rollback) if context.rollback => rollback.as_str(),
        _ => ssh.init_script_path.as_str(),
    };
    // The same variables the local trigger sets, including the names the original scripts read.
    let mut variables = vec![
        ("PA_DEPLOYMENT_ID", context.deployment_id.as_str()),
        ("PA_DEPLOYMENT_VERSION", context.version.as_str()),
        ("DEPLOYMENT_VERSION", context.version.as_str()),
        ("PA_ENVIRONMENT_ID", environment_id),
    ];
    if context.rollback {
        variables.push(("PA_ROLLBACK", "1"));
    }
    if let Some(ip) = &context.platform_ip {
        variables.push(("PA_PLATFORM_IP", ip));
        variables.push(("EC2_PUBLIC_IP", ip));
    }
    if let Some(id) = &context.platform_instance_id {
        variables.push(("PA_PLATFORM_INSTANCE_ID", id));
        variables.push(("EC2_INSTANCE_ID", id));
    }
    let mut assignments = Vec::with_capacity(variables.len());
    for (name, value) in variables {
        assignments.push(format!("{name}={}", quote(name, value)?));
    }
    let script = quote_path("init_script_path", script)?;
    let cd = match ssh
        .working_directory
        .as_deref()
        .filter(|directory| !directory.is_empty())
    {
        Some(directory) => format!("cd {} && ", quote_path("working_directory", directory)?),
        None => String::new(),
    };
    let shown = format!("{cd}{script}");
    // `exec` makes the script the session's process: sshd reports its own exit status or signal
    // (not the shell's 128+N), and the watcher finds it as `$$`.
    let command = format!("{WATCHER}{cd}{} exec {script} 3<&-", assignments.join(" "));
    Ok((command, shown))
}

fn quote(what: &str, value: &str) -> Result<String, TriggerFailure> {
    shlex::try_quote(value)
        .map(|quoted| quoted.into_owned())
        .map_err(|_| TriggerFailure::failed(format!("{what} contains a NUL byte")))
}

/// Quotes a path but leaves a leading `~/` to the remote shell, so it means the remote home.
fn quote_path(what: &str, path: &str) -> Result<String, TriggerFailure> {
    match path.strip_prefix("~/") {
        Some("") => Ok("~/".to_owned()),
        Some(rest) => Ok(format!("~/{}", quote(what, rest)?)),
        None if path == "~" => Ok("~".to_owned()),
        None => quote(what, path),
    }
}

/// Reads the private key. Errors name the file, never its contents.
async fn load_key(path: &Path) -> Result<PrivateKey, TriggerFailure> {
    let text = tokio::fs::read_to_string(path).await.map_err(|error| {
        TriggerFailure::failed(format!(
            "cannot read the SSH key {}: {error}; set ssh_key_path to the private key of the deploy user",
            path.display()
        ))
    })?;
    russh::keys::decode_secret_key(&text, None).map_err(|error| match error {
        russh::keys::Error::KeyIsEncrypted => TriggerFailure::failed(format!(
            "the SSH key {} is protected by a passphrase, which is not supported (there is no agent \
             or prompt); use an unencrypted deploy key, e.g. `ssh-keygen -t ed25519 -N '' -f <new file>`",
            path.display()
        )),
        error => TriggerFailure::failed(format!(
            "cannot use the SSH key {}: {error} (expected an OpenSSH, PEM or PKCS#8 private key)",
            path.display()
        )),
    })
}

#[derive(Debug)]
enum SessionError {
    Ssh(russh::Error),
    /// The server's key did not pass the known_hosts check; the text says why.
    HostKey(String),
}

impl From<russh::Error> for SessionError {
    fn from(error: russh::Error) -> SessionError {
        SessionError::Ssh(error)
    }
}

/// The client side of the session: accepts the server only when known_hosts says so.
struct HostKeyCheck {
    host: String,
    port: u16,
    known_hosts: PathBuf,
}

impl client::Handler for HostKeyCheck {
    type Error = SessionError;

    async fn check_server_key(
        &mut self,
        key: &PublicKeyOrCertificate,
    ) -> Result<bool, SessionError> {
        // A host certificate is checked as its plain key (OpenSSH's fallback when no
        // @cert-authority applies); certificate authorities are not supported.
        verify_host_key(&self.host, self.port, &self.known_hosts, &key.public_key())
            .map(|()| true)
            .map_err(SessionError::HostKey)
    }
}

/// Checks `key` against the known_hosts file, the way `StrictHostKeyChecking yes` does.
///
/// Matching of host names (plain, `[host]:port`, hashed `|1|` entries) is russh's; the verdict is
/// made here because russh's own check stops at the first entry of the same key type (an extra
/// key of the host on a later line would be reported as changed), treats a missing file as an
/// empty one and counts line numbers without comment lines.
fn verify_host_key(host: &str, port: u16, path: &Path, key: &PublicKey) -> Result<(), String> {
    let fingerprint = key.fingerprint(HashAlg::Sha256);
    let algorithm = key.algorithm();
    let shown_path = shlex::try_quote(&path.display().to_string())
        .map(|quoted| quoted.into_owned())
        .unwrap_or_else(|_| path.display().to_string());
    let add_hint = format!(
        "after checking that {fingerprint} is the server's key (run `ssh-keygen -lf` on its host key), \
         add it with `ssh-keyscan -p {port} {host} >> {shown_path}`"
    );
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            return Err(format!(
                "known_hosts file {} does not exist, so the host key of {host}:{port} ({algorithm} {fingerprint}) \
                 cannot be verified; {add_hint}",
                path.display()
            ))
        }
        Err(error) => {
            return Err(format!(
                "cannot read known_hosts file {}: {error}",
                path.display()
            ))
        }
    };
    if let Some(line) = revoked_line(&text, key) {
        return Err(format!(
            "the host key of {host}:{port} ({algorithm} {fingerprint}) is marked @revoked in {} line {line}",
            path.display()
        ));
    }
    let entries = russh::keys::known_hosts::known_host_keys_path(host, port, path)
        .map_err(|error| format!("cannot parse known_hosts file {}: {error}", path.display()))?;
    if entries
        .iter()
        .any(|(_, recorded)| recorded.key_data() == key.key_data())
    {
        return Ok(());
    }
    let line_numbers = |same_type: bool| {
        entries
            .iter()
            .filter(|(_, recorded)| (recorded.algorithm() == algorithm) == same_type)
            .map(|(line, _)| file_line(&text, *line).to_string())
            .collect::<Vec<_>>()
    };
    let changed = line_numbers(true);
    if !changed.is_empty() {
        let name = if port == 22 {
            host.to_owned()
        } else {
            format!("[{host}]:{port}")
        };
        return Err(format!(
            "the host key of {host}:{port} has CHANGED: the server offers {algorithm} {fingerprint}, \
             which differs from the key in {} line {}; this can be a man-in-the-middle attack or a \
             reinstalled host. If the change is expected, remove the old entry with \
             `ssh-keygen -R '{name}' -f {shown_path}` and {add_hint}",
            path.display(),
            changed.join(", ")
        ));
    }
    let other_types = line_numbers(false);
    let other_note = if other_types.is_empty() {
        String::new()
    } else {
        format!(
            " (it has keys of other types for this host on line {})",
            other_types.join(", ")
        )
    };
    Err(format!(
        "the host key of {host}:{port} ({algorithm} {fingerprint}) is not in known_hosts file {}{other_note}; {add_hint}",
        path.display()
    ))
}

/// The file line of russh's `n`-th entry line (russh does not count comment lines).
fn file_line(text: &str, n: usize) -> usize {
    text.split_inclusive('\n')
        .enumerate()
        .filter(|(_, line)| !line.starts_with('#'))
        .nth(n.saturating_sub(1))
        .map(|(index, _)| index + 1)
        .unwrap_or(n)
}

/// The line of an `@revoked` entry for `key`, if any (russh skips marker lines).
fn revoked_line(text: &str, key: &PublicKey) -> Option<usize> {
    text.lines().enumerate().find_map(|(index, line)| {
        let mut fields = line.split_whitespace();
        if fields.next() != Some("@revoked") {
            return None;
        }
        let encoded = fields.nth(2)?;
        let revoked = russh::keys::parse_public_key_base64(encoded).ok()?;
        (revoked.key_data() == key.key_data()).then_some(index + 1)
    })
}

/// Connects, verifies the host key and authenticates.
async fn open_session(
    target: &Target,
    key: PrivateKey,
    egress: &Egress,
) -> Result<Handle<HostKeyCheck>, TriggerFailure> {
    let address = target.address();
    let stream = egress
        .connect(&target.host, target.port)
        .await
        .map_err(|error| match error {
            ConnectError::Connect(error)
                if error.kind() == std::io::ErrorKind::ConnectionRefused =>
            {
                TriggerFailure::failed(format!(
                    "cannot connect to {address}: connection refused; is sshd running there?"
                ))
            }
            error => TriggerFailure::failed(format!("cannot connect to {address}: {error}")),
        })?;
    // The client's few small packets (requests, EOF, close) should not wait for Nagle.
    let _ = stream.set_nodelay(true);
    let config = Arc::new(client::Config {
        // Notices a vanished host during a long script well before the environment's timeout.
        keepalive_interval: Some(Duration::from_secs(15)),
        keepalive_max: 3,
        ..client::Config::default()
    });
    let handler = HostKeyCheck {
        host: target.host.clone(),
        port: target.port,
        known_hosts: target.known_hosts.clone(),
    };
    let mut handle = client::connect_stream(config, stream, handler)
        .await
        .map_err(|error| match error {
            SessionError::HostKey(message) => TriggerFailure::failed(message),
            SessionError::Ssh(error) => {
                TriggerFailure::failed(format!("SSH handshake with {address} failed: {error}"))
            }
        })?;
    let hash = if key.algorithm().is_rsa() {
        match handle.best_supported_rsa_hash().await {
            Ok(Some(hash)) => hash,
            // No server-sig-algs: every OpenSSH since 7.2 accepts SHA-256 RSA signatures.
            _ => Some(HashAlg::Sha256),
        }
    } else {
        None
    };
    let auth = handle
        .authenticate_publickey(
            target.username.as_str(),
            PrivateKeyWithHashAlg::new(Arc::new(key), hash),
        )
        .await
        .map_err(|error| {
            TriggerFailure::failed(format!("SSH authentication with {address} failed: {error}"))
        })?;
    if !auth.success() {
        return Err(TriggerFailure::failed(format!(
            "{address} rejected the SSH key {} for user {:?}; add its public key to that user's \
             ~/.ssh/authorized_keys on the host",
            target.key_path.display(),
            target.username
        )));
    }
    Ok(handle)
}

/// A session with a command channel. Dropping it closes the channel and the session, which ends
/// the command's stdin: the remote watcher then stops the command if it still runs.
struct RemoteCommand {
    handle: Option<Handle<HostKeyCheck>>,
    channel: Option<Channel<Msg>>,
}

impl RemoteCommand {
    async fn wait(&mut self) -> Option<ChannelMsg> {
        match self.channel.as_mut() {
            Some(channel) => channel.wait().await,
            None => None,
        }
    }

    async fn finish(mut self) {
        if let (Some(handle), Some(channel)) = (self.handle.take(), self.channel.take()) {
            close(handle, channel).await;
        }
    }
}

impl Drop for RemoteCommand {
    fn drop(&mut self) {
        let (Some(handle), Some(channel)) = (self.handle.take(), self.channel.take()) else {
            return;
        };
        // Saying goodbye needs the session task, which runs on the current runtime. Without one
        // the handles are simply dropped: the session task ends and closes the socket, and sshd
        // closing the command's stdin is what the watcher waits for either way.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(close(handle, channel));
        }
    }
}

/// Ends the command's stdin, closes the channel and disconnects.
async fn close(handle: Handle<HostKeyCheck>, channel: Channel<Msg>) {
    let work = async {
        let _ = channel.eof().await;
        let _ = channel.close().await;
        let _ = handle.disconnect(Disconnect::ByApplication, "", "en").await;
    };
    let _ = tokio::time::timeout(CLOSE_LIMIT, work).await;
}

/// How the remote command ended.
enum Exit {
    Code(u32),
    Signal(String),
}

impl Trigger for SshTrigger {
    async fn run(&self, context: &TriggerContext) -> TriggerResult {
        let target = Target::from_connection(&self.connection)?;
        let (command, shown) = remote_command(&self.environment_id, &self.connection, context)?;
        let key = load_key(&target.key_path).await?;
        let log = &context.log;
        let address = target.address();
        let budget = CONNECT_LIMIT.min(Duration::from_secs(self.timeout.max(1)));
        log.info(format!("connecting to {}@{address}", target.username))
            .await;
        let handle = tokio::time::timeout(budget, open_session(&target, key, &self.egress))
            .await
            .map_err(|_| {
                TriggerFailure::timed_out(format!(
                    "no SSH session with {address} within {}s (connect, handshake, authentication); \
                     is the host reachable and is it sshd that listens on port {}?",
                    budget.as_secs(),
                    target.port
                ))
            })??;
        let channel = tokio::time::timeout(budget, handle.channel_open_session())
            .await
            .map_err(|_| {
                TriggerFailure::timed_out(format!(
                    "{address} did not open a session channel within {}s",
                    budget.as_secs()
                ))
            })?
            .map_err(|error| {
                TriggerFailure::failed(format!("{address} refused a session channel: {error}"))
            })?;
        // Stdin stays open while the command runs: its end tells the remote watcher to stop it.
        let started = channel.exec(true, command).await;
        let mut remote = RemoteCommand {
            handle: Some(handle),
            channel: Some(channel),
        };
        if started.is_err() {
            return Err(TriggerFailure::failed(format!(
                "the SSH session with {address} ended before the command was sent"
            )));
        }
        log.info(format!("running {shown} on {address}")).await;
        let output = read_output(&mut remote, log).await;
        remote.finish().await;
        let stderr_tail: Vec<String> = output.stderr_tail.into();
        if output.refused {
            return Err(TriggerFailure::failed(with_stderr(
                format!("{address} refused to run the command"),
                &stderr_tail,
            )));
        }
        match output.exit {
            Some(Exit::Code(0)) => Ok(TriggerSuccess {
                exit_code: Some(0),
                detail: Some(format!("exit code 0 on {address}")),
            }),
            Some(Exit::Code(code)) => {
                let code = i32::try_from(code).unwrap_or(i32::MAX);
                let hint = if code == 127 {
                    "; is init_script_path right (relative paths start in working_directory or the user's home) and executable?"
                } else {
                    ""
                };
                Err(TriggerFailure::failed(with_stderr(
                    format!("command exited with code {code} on {address}{hint}"),
                    &stderr_tail,
                ))
                .with_exit_code(Some(code)))
            }
            Some(Exit::Signal(signal)) => Err(TriggerFailure::failed(with_stderr(
                format!("command was killed by signal {signal} on {address}"),
                &stderr_tail,
            ))),
            None => Err(TriggerFailure::failed(with_stderr(
                format!("the SSH session with {address} ended before the command reported an exit status"),
                &stderr_tail,
            ))),
        }
    }
}

struct Output {
    exit: Option<Exit>,
    stderr_tail: VecDeque<String>,
    /// The server answered the `exec` request with a failure.
    refused: bool,
}

/// Streams the channel's stdout and stderr into the log until the channel closes (or, once the
/// exit is known, until [`PIPE_GRACE`] passes).
async fn read_output(remote: &mut RemoteCommand, log: &LogSink) -> Output {
    let mut output = Output {
        exit: None,
        stderr_tail: VecDeque::with_capacity(STDERR_TAIL_LINES),
        refused: false,
    };
    let mut stdout = LineSplitter::default();
    let mut stderr = LineSplitter::default();
    let mut grace_until = None;
    loop {
        let message = match grace_until {
            Some(until) => match tokio::time::timeout_at(until, remote.wait()).await {
                Ok(message) => message,
                Err(_) => break,
            },
            None => remote.wait().await,
        };
        let Some(message) = message else { break };
        match message {
            ChannelMsg::Data { data } => {
                for line in stdout.push(&data) {
                    log.line(LogStream::Stdout, line).await;
                }
            }
            // Extended data type 1 is stderr (RFC 4254 §5.2); there are no others in use.
            ChannelMsg::ExtendedData { data, ext: 1 } => {
                for line in stderr.push(&data) {
                    remember(&mut output.stderr_tail, &line);
                    log.line(LogStream::Stderr, line).await;
                }
            }
            ChannelMsg::Failure if output.exit.is_none() => {
                output.refused = true;
                break;
            }
            ChannelMsg::ExitStatus { exit_status } => {
                output.exit = Some(Exit::Code(exit_status));
                grace_until = Some(tokio::time::Instant::now() + PIPE_GRACE);
            }
            ChannelMsg::ExitSignal {
                signal_name,
                core_dumped,
                ..
            } => {
                let core = if core_dumped { " (core dumped)" } else { "" };
                output.exit = Some(Exit::Signal(format!("{}{core}", signal_text(&signal_name))));
                grace_until = Some(tokio::time::Instant::now() + PIPE_GRACE);
            }
            ChannelMsg::Close => break,
            _ => {}
        }
    }
    if let Some(line) = stdout.finish() {
        log.line(LogStream::Stdout, line).await;
    }
    if let Some(line) = stderr.finish() {
        remember(&mut output.stderr_tail, &line);
        log.line(LogStream::Stderr, line).await;
    }
    output
}

fn remember(tail: &mut VecDeque<String>, line: &str) {
    if tail.len() == STDERR_TAIL_LINES {
        tail.pop_front();
    }
    tail.push_back(line.to_owned());
}

/// The signal's name as `kill -l` spells it.
fn signal_text(signal: &Sig) -> String {
    let name = match signal {
        Sig::ABRT => "ABRT",
        Sig::ALRM => "ALRM",
        Sig::FPE => "FPE",
        Sig::HUP => "HUP",
        Sig::ILL => "ILL",
        Sig::INT => "INT",
        Sig::KILL => "KILL",
        Sig::PIPE => "PIPE",
        Sig::QUIT => "QUIT",
        Sig::SEGV => "SEGV",
        Sig::TERM => "TERM",
        Sig::USR1 => "USR1",
        Sig::Custom(name) => name,
    };
    format!("SIG{name}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn environment(working_directory: Option<&str>, script: &str) -> SshConnection {
        let mut value = serde_json::json!({
            "environment_id": "env-1",
            "environment_type": "linux_local",
            "connection_method": "ssh",
            "host": "127.0.0.1",
            "username": "deploy",
            "ssh_key_path": "~/.ssh/id_ed25519",
            "init_script_path": script,
        });
        if let Some(directory) = working_directory {
            value["working_directory"] = directory.into();
        }
        let environment: crate::environments::Environment =
            serde_json::from_value(value).unwrap_or_else(|error| panic!("{error}"));
        match environment.connection {
            crate::environments::Connection::Ssh(ssh) => ssh,
            other => panic!("not ssh: {other:?}"),
        }
    }

    fn context(version: &str) -> TriggerContext {
        TriggerContext {
            deployment_id: "dep-1".to_owned(),
            version: version.to_owned(),
            platform_instance_id: None,
            platform_ip: Some("10.0.0.1".to_owned()),
            rollback: false,
            log: LogSink::channel(1).0,
            stop: Default::default(),
            fence: 1,
        }
    }

    #[test]
    fn command_quotes_every_part() {
        let (command, shown) = remote_command(
            "env-1",
            &environment(Some("/srv/my app"), "./init.sh"),
            &context("1.0'; touch /tmp/x; '"),
        )
        .unwrap_or_else(|error| panic!("{error:?}"));
        assert_eq!(shown, "cd '/srv/my app' && ./init.sh");
        assert!(command.contains("& cd '/srv/my app' && PA_DEPLOYMENT_ID=dep-1 "));
        assert!(command.starts_with(WATCHER));
        assert!(command.ends_with(" exec ./init.sh 3<&-"));
        assert!(command.contains("PA_PLATFORM_IP=10.0.0.1"));
        let words = shlex::split(&command).unwrap_or_default();
        assert!(words.contains(&"PA_DEPLOYMENT_VERSION=1.0'; touch /tmp/x; '".to_owned()));
    }

    #[test]
    fn home_paths_stay_unquoted_for_the_remote_shell() {
        let (command, shown) = remote_command(
            "env-1",
            &environment(Some("~/app dir"), "~/init.sh"),
            &context("1"),
        )
        .unwrap_or_else(|error| panic!("{error:?}"));
        assert_eq!(shown, "cd ~/'app dir' && ~/init.sh");
        assert!(command.ends_with(" exec ~/init.sh 3<&-"));
    }

    #[test]
    fn nul_bytes_are_refused() {
        let result = remote_command("env-1", &environment(None, "./init.sh"), &context("1\0"));
        assert!(result.is_err());
    }

    #[test]
    fn entry_numbers_map_to_file_lines() {
        let text = "# comment\nhost1 ssh-ed25519 AAAA\n#another\n\nhost2 ssh-ed25519 AAAA\n";
        assert_eq!(file_line(text, 1), 2);
        assert_eq!(file_line(text, 2), 4);
        assert_eq!(file_line(text, 3), 5);
    }
}
