//! The SSH trigger against a real OpenSSH server on loopback (one per test): output streaming,
//! quoting, exit codes, host key verification, connection errors, timeouts and cancellation.

use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    time::Duration,
};

use deployment_mcp_core::{
    egress::{Egress, TargetNetworks},
    environments::{Connection, Environment},
    model::{EnvironmentId, LogLine, LogSink, LogStream},
    triggers::{ssh::SshTrigger, FailureKind, Trigger, TriggerContext, TriggerResult},
};
use e2e::{process_alive, sshd::Sshd, wait_until};
use serde_json::json;
use tokio::sync::mpsc;

/// Bound for one trigger run in these tests.
const RUN_LIMIT: Duration = Duration::from_secs(30);

fn environment(sshd: &Sshd, script: &Path, overrides: serde_json::Value) -> Environment {
    let mut value = json!({
        "environment_id": "ssh-test",
        "environment_type": "linux_local",
        "connection_method": "ssh",
        "host": "127.0.0.1",
        "port": sshd.port,
        "username": sshd.username,
        "ssh_key_path": sshd.client_key.display().to_string(),
        "known_hosts_path": sshd.known_hosts.display().to_string(),
        "init_script_path": script.display().to_string(),
        "timeout": 30,
    });
    if let (Some(fields), Some(extra)) = (value.as_object_mut(), overrides.as_object()) {
        for (key, field) in extra {
            fields.insert(key.clone(), field.clone());
        }
    }
    serde_json::from_value(value).expect("a valid environment")
}

fn context(version: &str) -> (TriggerContext, mpsc::Receiver<LogLine>) {
    let (log, lines) = LogSink::channel(1024);
    let context = TriggerContext {
        deployment_id: "dep-42".to_owned(),
        version: version.to_owned(),
        platform_instance_id: Some("i-0123".to_owned()),
        platform_ip: Some("203.0.113.7".to_owned()),
        rollback: false,
        log: log.for_environment(&EnvironmentId::parse("ssh-test").expect("an id")),
        stop: Default::default(),
        fence: 1,
    };
    (context, lines)
}

/// Writes an executable shell script.
fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).expect("write the script");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
        .expect("make the script executable");
    path
}

/// The way out, confined to `networks`.
fn egress(networks: &[&str]) -> Egress {
    let networks: Vec<String> = networks.iter().map(|network| network.to_string()).collect();
    Egress::new(TargetNetworks::try_from(networks).expect("valid networks"))
        .expect("an HTTP client")
}

async fn run(environment: Environment, context: &TriggerContext) -> TriggerResult {
    run_within(environment, context, &["127.0.0.0/8", "::1/128"]).await
}

async fn run_within(
    environment: Environment,
    context: &TriggerContext,
    networks: &[&str],
) -> TriggerResult {
    let Connection::Ssh(ssh) = environment.connection else {
        panic!("an ssh environment: {environment:?}");
    };
    let trigger = SshTrigger::new(
        environment.environment_id.into_string(),
        environment.timeout,
        ssh,
        egress(networks),
    );
    tokio::time::timeout(RUN_LIMIT, trigger.run(context))
        .await
        .expect("the trigger finished within the test's bound")
}

/// The lines received so far, as (stream, text).
fn received(lines: &mut mpsc::Receiver<LogLine>) -> Vec<(LogStream, String)> {
    let mut all = Vec::new();
    while let Ok(line) = lines.try_recv() {
        all.push((line.stream, line.line));
    }
    all
}

fn of(stream: LogStream, lines: &[(LogStream, String)]) -> Vec<String> {
    lines
        .iter()
        .filter(|(from, _)| *from == stream)
        .map(|(_, text)| text.clone())
        .collect()
}

/// Waits (bounded) for a log line with exactly `text`, collecting everything on the way.
async fn wait_for_line(
    lines: &mut mpsc::Receiver<LogLine>,
    seen: &mut Vec<(LogStream, String)>,
    text: &str,
) {
    let deadline = tokio::time::Instant::now() + RUN_LIMIT;
    while !seen.iter().any(|(_, line)| line == text) {
        match tokio::time::timeout_at(deadline, lines.recv()).await {
            Ok(Some(line)) => seen.push((line.stream, line.line)),
            _ => panic!("no log line {text:?}; got {seen:?}"),
        }
    }
}

fn failure_message(result: &TriggerResult) -> String {
    match result {
        Err(failure) => failure.message.clone(),
        Ok(success) => panic!("expected a failure, got {success:?}"),
    }
}

#[tokio::test]
async fn output_is_streamed_line_by_line_while_the_script_runs() {
    let sshd = Sshd::start().await;
    let go = sshd.dir().join("go");
    let body = format!(
        "echo started\n\
         while [ ! -e '{go}' ]; do sleep 0.05; done\n\
         echo out-1\necho err-1 >&2\necho out-2\necho err-2 >&2\n\
         echo \"vars $PA_DEPLOYMENT_ID $PA_DEPLOYMENT_VERSION $PA_ENVIRONMENT_ID $PA_PLATFORM_IP $PA_PLATFORM_INSTANCE_ID\"\n\
         printf 'no-newline-at-end'",
        go = go.display()
    );
    let path = script(sshd.dir(), "init.sh", &body);
    let environment = environment(&sshd, &path, json!({}));
    let (context, mut lines) = context("2.4.1");
    let task = tokio::spawn(async move { run(environment, &context).await });

    // The first line arrives while the script still waits: output is not held until the end.
    let mut seen = Vec::new();
    wait_for_line(&mut lines, &mut seen, "started").await;
    assert!(!task.is_finished());
    std::fs::write(&go, "").expect("let the script go on");

    let result = task.await.expect("the run task");
    seen.extend(received(&mut lines));
    assert_eq!(
        result.as_ref().map(|success| success.exit_code),
        Ok(Some(0)),
        "{result:?}; log {seen:?}"
    );
    assert_eq!(
        of(LogStream::Stdout, &seen),
        [
            "started",
            "out-1",
            "out-2",
            "vars dep-42 2.4.1 ssh-test 203.0.113.7 i-0123",
            "no-newline-at-end",
        ],
        "{seen:?}"
    );
    assert_eq!(of(LogStream::Stderr, &seen), ["err-1", "err-2"], "{seen:?}");
    let info = of(LogStream::Info, &seen).join("\n");
    assert!(info.contains(&format!("127.0.0.1:{}", sshd.port)), "{info}");
}

#[tokio::test]
async fn working_directory_with_spaces_and_quotes_is_used() {
    let sshd = Sshd::start().await;
    let work = sshd.dir().join("work dir/it's here");
    std::fs::create_dir_all(&work).expect("create the working directory");
    script(&work, "init.sh", "pwd");
    let environment = environment(
        &sshd,
        Path::new("./init.sh"),
        json!({"working_directory": work.display().to_string()}),
    );
    let (context, mut lines) = context("1.0");
    let result = run(environment, &context).await;
    let seen = received(&mut lines);
    assert!(result.is_ok(), "{result:?}; {seen:?}");
    assert_eq!(
        of(LogStream::Stdout, &seen),
        [work.display().to_string()],
        "{seen:?}"
    );
}

#[tokio::test]
async fn request_data_cannot_inject_shell_syntax() {
    let sshd = Sshd::start().await;
    let marker = sshd.dir().join("injected");
    let version = format!(
        "1.0'; touch {0}; ' $(touch {0}) `touch {0}` \"; touch {0}; \" && touch {0}",
        marker.display()
    );
    let path = script(
        sshd.dir(),
        "init.sh",
        "printf '%s\\n' \"$PA_DEPLOYMENT_VERSION\"",
    );
    let environment = environment(&sshd, &path, json!({}));
    let (context, mut lines) = context(&version);
    let result = run(environment, &context).await;
    let seen = received(&mut lines);
    assert!(result.is_ok(), "{result:?}; {seen:?}");
    assert_eq!(of(LogStream::Stdout, &seen), [version], "{seen:?}");
    assert!(!marker.exists(), "the version was run as shell code");
}

#[tokio::test]
async fn a_non_zero_exit_fails_with_the_code_and_the_stderr_tail() {
    let sshd = Sshd::start().await;
    let path = script(
        sshd.dir(),
        "init.sh",
        "for i in 01 02 03 04 05 06 07 08 09 10 11 12 13 14 15; do echo \"problem-$i\" >&2; done\n\
         echo some output\nexit 3",
    );
    let environment = environment(&sshd, &path, json!({}));
    let (context, mut lines) = context("1.0");
    let result = run(environment, &context).await;
    let failure = result.expect_err("exit code 3 is a failure");
    assert_eq!(failure.kind, FailureKind::Failed);
    assert_eq!(failure.exit_code, Some(3));
    assert!(failure.message.contains("code 3"), "{}", failure.message);
    assert!(
        failure.message.contains("problem-06") && failure.message.contains("problem-15"),
        "{}",
        failure.message
    );
    assert!(
        !failure.message.contains("problem-05"),
        "{}",
        failure.message
    );
    assert_eq!(of(LogStream::Stderr, &received(&mut lines)).len(), 15);
}

#[tokio::test]
async fn a_script_killed_by_a_signal_names_the_signal() {
    let sshd = Sshd::start().await;
    let path = script(sshd.dir(), "init.sh", "echo dying >&2\nkill -TERM $$");
    let environment = environment(&sshd, &path, json!({}));
    let (context, _lines) = context("1.0");
    let message = failure_message(&run(environment, &context).await);
    assert!(message.contains("signal SIGTERM"), "{message}");
    assert!(message.contains("dying"), "{message}");
}

#[tokio::test]
async fn a_missing_script_fails_with_a_hint() {
    let sshd = Sshd::start().await;
    let environment = environment(&sshd, &sshd.dir().join("no-such-script.sh"), json!({}));
    let (context, _lines) = context("1.0");
    let result = run(environment, &context).await;
    let failure = result.expect_err("a missing script fails");
    assert_eq!(failure.exit_code, Some(127), "{}", failure.message);
    assert!(
        failure.message.contains("init_script_path"),
        "{}",
        failure.message
    );
}

#[tokio::test]
async fn an_unknown_host_key_is_refused_with_the_fix() {
    let sshd = Sshd::start().await;
    let known_hosts = sshd.empty_known_hosts();
    let path = script(sshd.dir(), "init.sh", "touch ran");
    let environment = environment(
        &sshd,
        &path,
        json!({"known_hosts_path": known_hosts.display().to_string()}),
    );
    let (context, _lines) = context("1.0");
    let result = run(environment, &context).await;
    assert_eq!(
        result.as_ref().map_err(|f| f.kind),
        Err(FailureKind::Failed)
    );
    let message = failure_message(&result);
    assert!(
        message.contains(&known_hosts.display().to_string()),
        "{message}"
    );
    assert!(
        message.contains(&format!("ssh-keyscan -p {} 127.0.0.1", sshd.port)),
        "{message}"
    );
    assert!(message.contains(&sshd.fingerprint()), "{message}");
    assert!(!sshd.dir().join("ran").exists());
}

#[tokio::test]
async fn a_missing_known_hosts_file_is_refused() {
    let sshd = Sshd::start().await;
    let known_hosts = sshd.dir().join("no-such-known_hosts");
    let path = script(sshd.dir(), "init.sh", "true");
    let environment = environment(
        &sshd,
        &path,
        json!({"known_hosts_path": known_hosts.display().to_string()}),
    );
    let (context, _lines) = context("1.0");
    let message = failure_message(&run(environment, &context).await);
    assert!(
        message.contains(&known_hosts.display().to_string()),
        "{message}"
    );
    assert!(message.contains("does not exist"), "{message}");
    assert!(
        !known_hosts.exists(),
        "the trigger must not create known_hosts"
    );
}

#[tokio::test]
async fn a_changed_host_key_is_refused() {
    let sshd = Sshd::start().await;
    let known_hosts = sshd.wrong_known_hosts();
    let path = script(sshd.dir(), "init.sh", "touch ran");
    let environment = environment(
        &sshd,
        &path,
        json!({"known_hosts_path": known_hosts.display().to_string()}),
    );
    let (context, _lines) = context("1.0");
    let message = failure_message(&run(environment, &context).await);
    assert!(message.contains("CHANGED"), "{message}");
    // Line 1 of the file is a comment.
    assert!(
        message.contains(&format!("{} line 2", known_hosts.display())),
        "{message}"
    );
    assert!(message.contains(&sshd.fingerprint()), "{message}");
    assert!(!sshd.dir().join("ran").exists());
}

#[tokio::test]
async fn hashed_known_hosts_entries_are_accepted() {
    let sshd = Sshd::start().await;
    let known_hosts = sshd.hashed_known_hosts();
    let path = script(sshd.dir(), "init.sh", "echo hashed-ok");
    let environment = environment(
        &sshd,
        &path,
        json!({"known_hosts_path": known_hosts.display().to_string()}),
    );
    let (context, mut lines) = context("1.0");
    let result = run(environment, &context).await;
    let seen = received(&mut lines);
    assert!(result.is_ok(), "{result:?}; {seen:?}");
    assert_eq!(of(LogStream::Stdout, &seen), ["hashed-ok"]);
}

#[tokio::test]
async fn a_rejected_key_names_the_user_and_the_key() {
    let sshd = Sshd::start().await;
    let key = sshd.unauthorized_client_key();
    let path = script(sshd.dir(), "init.sh", "true");
    let environment = environment(
        &sshd,
        &path,
        json!({"ssh_key_path": key.display().to_string()}),
    );
    let (context, _lines) = context("1.0");
    let message = failure_message(&run(environment, &context).await);
    assert!(message.contains("rejected"), "{message}");
    assert!(message.contains(&key.display().to_string()), "{message}");
    assert!(message.contains(&sshd.username), "{message}");
}

#[tokio::test]
async fn key_problems_name_the_file_but_not_its_contents() {
    let sshd = Sshd::start().await;
    let path = script(sshd.dir(), "init.sh", "true");

    let encrypted = sshd.encrypted_client_key();
    let environment_with = |key: &Path| {
        environment(
            &sshd,
            &path,
            json!({"ssh_key_path": key.display().to_string()}),
        )
    };
    let (context, _lines) = context("1.0");
    let message = failure_message(&run(environment_with(&encrypted), &context).await);
    assert!(message.contains("passphrase"), "{message}");
    assert!(
        message.contains(&encrypted.display().to_string()),
        "{message}"
    );

    let missing = sshd.dir().join("no-such-key");
    let message = failure_message(&run(environment_with(&missing), &context).await);
    assert!(
        message.contains(&missing.display().to_string()),
        "{message}"
    );

    // A public key where the private one belongs.
    let public = sshd.client_key.with_extension("pub");
    let message = failure_message(&run(environment_with(&public), &context).await);
    assert!(message.contains(&public.display().to_string()), "{message}");
    let contents = std::fs::read_to_string(&public).unwrap_or_default();
    let blob = contents.split_whitespace().nth(1).unwrap_or("unreadable");
    assert!(!message.contains(blob), "{message}");
}

#[tokio::test]
async fn a_refused_connection_says_so() {
    let sshd = Sshd::start().await;
    let port = e2e::closed_port();
    let path = script(sshd.dir(), "init.sh", "true");
    let environment = environment(&sshd, &path, json!({"port": port}));
    let (context, _lines) = context("1.0");
    let result = run(environment, &context).await;
    assert_eq!(
        result.as_ref().map_err(|f| f.kind),
        Err(FailureKind::Failed)
    );
    let message = failure_message(&result);
    assert!(
        message.contains(&format!(
            "cannot connect to 127.0.0.1:{port}: connection refused"
        )),
        "{message}"
    );
}

#[tokio::test]
async fn a_host_outside_the_allowed_networks_is_never_connected_to() {
    let sshd = Sshd::start().await;
    let path = script(sshd.dir(), "init.sh", "true");
    // Something listens at the target, so a connection attempt would land in its backlog.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a loopback listener");
    listener
        .set_nonblocking(true)
        .expect("a non-blocking listener");
    let port = listener
        .local_addr()
        .expect("the listener's address")
        .port();
    let environment = environment(&sshd, &path, json!({"port": port}));
    let (context, _lines) = context("1.0");
    let result = run_within(environment, &context, &["127.0.0.2/32"]).await;
    let message = failure_message(&result);
    assert!(
        message.contains("127.0.0.1 is outside allowed_target_networks (127.0.0.2/32)"),
        "{message}"
    );
    // A loopback connect completes its handshake before it returns: had the trigger tried,
    // the connection would be waiting here.
    match listener.accept() {
        Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("the refused target was connected to: {other:?}"),
    }
}

#[tokio::test]
async fn a_silent_server_times_out() {
    let sshd = Sshd::start().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a silent server");
    let port = listener.local_addr().expect("its address").port();
    // Accepts connections and never says anything.
    let silent = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    let path = script(sshd.dir(), "init.sh", "true");
    let environment = environment(&sshd, &path, json!({"port": port, "timeout": 2}));
    let (context, _lines) = context("1.0");
    // The environment's 2 s timeout ends it; the bound only keeps a hang from stalling the suite.
    let result = tokio::time::timeout(Duration::from_secs(60), run(environment, &context))
        .await
        .expect("the trigger ended");
    silent.abort();
    assert_eq!(
        result.as_ref().map_err(|f| f.kind),
        Err(FailureKind::TimedOut),
        "{result:?}"
    );
    let message = failure_message(&result);
    assert!(message.contains(&format!("127.0.0.1:{port}")), "{message}");
}

#[tokio::test]
async fn dropping_the_run_stops_the_remote_command_and_its_children() {
    let sshd = Sshd::start().await;
    let script_pid = sshd.dir().join("script.pid");
    let child_pid = sshd.dir().join("child.pid");
    let body = format!(
        "echo $$ > '{script}.tmp' && mv '{script}.tmp' '{script}'\n\
         sleep 300 &\n\
         echo $! > '{child}.tmp' && mv '{child}.tmp' '{child}'\n\
         echo ready\n\
         wait",
        script = script_pid.display(),
        child = child_pid.display()
    );
    let path = script(sshd.dir(), "init.sh", &body);
    let environment = environment(&sshd, &path, json!({}));
    let (context, mut lines) = context("1.0");
    let task = tokio::spawn(async move { run(environment, &context).await });
    let mut seen = Vec::new();
    wait_for_line(&mut lines, &mut seen, "ready").await;
    let pids = [read_pid(&script_pid), read_pid(&child_pid)];
    assert!(pids.iter().all(|pid| process_alive(*pid)), "{pids:?}");

    // What the coordinator does on timeout or cancel: drop the future.
    task.abort();
    assert!(task.await.is_err_and(|error| error.is_cancelled()));

    let stopped = wait_until(Duration::from_secs(15), || {
        let alive = pids.iter().any(|pid| process_alive(*pid));
        async move { !alive }
    })
    .await;
    assert!(
        stopped,
        "remote processes {pids:?} still run after the trigger was dropped; sshd log:\n{}",
        sshd.log()
    );
}

#[tokio::test]
async fn a_dropped_script_that_ignores_term_is_killed() {
    let sshd = Sshd::start().await;
    let script_pid = sshd.dir().join("script.pid");
    let body = format!(
        "trap '' TERM\n\
         echo $$ > '{pid}.tmp' && mv '{pid}.tmp' '{pid}'\n\
         echo ready\n\
         while :; do sleep 1; done",
        pid = script_pid.display()
    );
    let path = script(sshd.dir(), "init.sh", &body);
    let environment = environment(&sshd, &path, json!({}));
    let (context, mut lines) = context("1.0");
    let task = tokio::spawn(async move { run(environment, &context).await });
    let mut seen = Vec::new();
    wait_for_line(&mut lines, &mut seen, "ready").await;
    let pid = read_pid(&script_pid);
    assert!(process_alive(pid));

    task.abort();
    let _ = task.await;
    // TERM is ignored; the KILL follows a few seconds later.
    let stopped = wait_until(Duration::from_secs(20), || {
        let alive = process_alive(pid) || !group_members(pid).is_empty();
        async move { !alive }
    })
    .await;
    assert!(
        stopped,
        "process group {pid} still runs: {:?}",
        group_members(pid)
    );
}

#[tokio::test]
async fn daemons_started_by_a_successful_script_survive_it() {
    let sshd = Sshd::start().await;
    let script_pid = sshd.dir().join("script.pid");
    let daemon_pid = sshd.dir().join("daemon.pid");
    let body = format!(
        "echo $$ > '{script}'\n\
         sleep 300 </dev/null >/dev/null 2>&1 &\n\
         echo $! > '{daemon}'\n\
         echo started",
        script = script_pid.display(),
        daemon = daemon_pid.display()
    );
    let path = script(sshd.dir(), "init.sh", &body);
    let environment = environment(&sshd, &path, json!({}));
    let (context, _lines) = context("1.0");
    let result = run(environment, &context).await;
    assert!(result.is_ok(), "{result:?}");
    let group = read_pid(&script_pid);
    let daemon = read_pid(&daemon_pid);
    // The remote watcher shares the script's process group; once it has left, it has made its
    // decision about the group.
    let watcher_gone = wait_until(Duration::from_secs(15), || {
        let members = group_members(group);
        async move { members.iter().all(|member| *member == daemon) }
    })
    .await;
    let alive = process_alive(daemon);
    let _ = std::process::Command::new("kill")
        .arg(daemon.to_string())
        .status();
    assert!(watcher_gone, "{:?}", group_members(group));
    assert!(
        alive,
        "the script's daemon was killed after a successful run"
    );
}

fn read_pid(path: &Path) -> u32 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or_else(|| panic!("no pid in {}", path.display()))
}

/// Live (not zombie) processes in process group `pgid`.
fn group_members(pgid: u32) -> Vec<u32> {
    // state, ppid, pgrp
    e2e::processes_where(|fields| {
        fields.first() != Some(&"Z")
            && fields.get(2).and_then(|group| group.parse().ok()) == Some(pgid)
    })
}

#[tokio::test]
async fn a_remote_background_job_holding_the_channel_does_not_hold_the_trigger() {
    let sshd = Sshd::start().await;
    let job_pid = sshd.dir().join("job.pid");
    // The job keeps the session's stdout open after the script exits.
    let body = format!(
        "sleep 300 &\n\
         echo $! > '{pid}'\n\
         echo started",
        pid = job_pid.display()
    );
    let path = script(sshd.dir(), "init.sh", &body);
    let environment = environment(&sshd, &path, json!({}));
    let (context, _lines) = context("1.0");
    // `run` bounds the trigger well below the job's 300 s: it must end at the script's exit.
    let result = run(environment, &context).await;
    let job = read_pid(&job_pid);
    let _ = std::process::Command::new("kill")
        .arg(job.to_string())
        .status();
    assert!(result.is_ok(), "{result:?}");
}

#[tokio::test]
async fn a_rollback_runs_the_rollback_script_with_the_previous_version() {
    let sshd = Sshd::start().await;
    let marks = sshd.dir().join("marks");
    std::fs::create_dir_all(&marks).expect("a marks directory");
    let init = script(
        sshd.dir(),
        "init.sh",
        &format!("touch '{}'/init.$PA_DEPLOYMENT_VERSION", marks.display()),
    );
    let rollback = script(
        sshd.dir(),
        "rollback.sh",
        &format!(
            "touch '{}'/rollback.$PA_DEPLOYMENT_VERSION.$PA_ROLLBACK",
            marks.display()
        ),
    );
    let with_rollback = |sshd: &Sshd| {
        environment(
            sshd,
            &init,
            json!({"rollback_script_path": rollback.display().to_string()}),
        )
    };
    let (context, _lines) = context("2.0");
    let deployed = run(with_rollback(&sshd), &context).await;
    assert!(deployed.is_ok(), "{}", failure_message(&deployed));
    let (mut back, _lines) = self::context("1.0");
    back.rollback = true;
    let rolled = run(with_rollback(&sshd), &back).await;
    assert!(rolled.is_ok(), "{}", failure_message(&rolled));
    assert!(
        marks.join("init.2.0").exists(),
        "the deployment ran the init script"
    );
    assert!(
        marks.join("rollback.1.0.1").exists(),
        "the rollback ran the rollback script, with the previous version and PA_ROLLBACK=1"
    );
    assert!(!marks.join("init.1.0").exists(), "not the init script");
}
