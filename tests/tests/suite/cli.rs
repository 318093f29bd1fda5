//! The standalone CLI, `deployment-mcp`, run as a real process: in-process on an environments
//! file (real local commands, real health targets) and as a client of a real host.
//!
//! The tests capture stdout, so the CLI shows its plain, timestamped progress lines.

use std::{
    io::Read as _,
    path::Path,
    process::Stdio,
    time::{Duration, Instant},
};

use e2e::{
    cli_binary,
    targets::{Behaviour, Target},
    HostOptions, TestHost, ADMIN_KEY, DEVELOPER_KEY,
};
use serde_json::{json, Value};

/// Bound on one CLI run; each finishes in well under a second when things work.
const CLI_TIMEOUT: Duration = Duration::from_secs(60);

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {:?}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// Runs the CLI in `dir` and waits (bounded) for it to exit.
fn cli(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut command = e2e::local_command(cli_binary());
    command
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for inherited in [
        "DEPLOYMENT_MCP_SERVER",
        "DEPLOYMENT_MCP_API_KEY",
        "DEPLOYMENT_VERSION",
        "EC2_INSTANCE_ID",
        "EC2_PUBLIC_IP",
        "RUST_LOG",
    ] {
        command.env_remove(inherited);
    }
    for (key, value) in env {
        command.env(key, value);
    }
    let mut child = command.spawn().expect("start deployment-mcp");
    let reader = |pipe: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_string(&mut text);
            }
            text
        })
    };
    let stdout = reader(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
    );
    let stderr = reader(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
    );
    let deadline = Instant::now() + CLI_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for deployment-mcp") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "deployment-mcp {args:?} did not exit within {CLI_TIMEOUT:?}; stdout so far:\n{}",
                stdout.join().unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Run {
        code: status.code(),
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    }
}

/// [`cli`] off the test's runtime, so servers on that runtime keep answering meanwhile.
async fn cli_async(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Run {
    let dir = dir.to_path_buf();
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        cli(&dir, &args, &env)
    })
    .await
    .expect("the CLI runner thread")
}

fn local(id: &str, command: &[&str]) -> Value {
    json!({"environment_id": id, "environment_type": "linux_local", "connection_method": "local",
           "command": command, "timeout": 30})
}

fn write_environments(dir: &Path, name: &str, environments: Vec<Value>) -> String {
    let path = dir.join(name);
    std::fs::write(&path, json!({ "environments": environments }).to_string())
        .expect("write the environments file");
    path.display().to_string()
}

/// `2026-11-25T11:00:00Z ` at the start of a line.
fn is_timestamped(line: &str) -> bool {
    let bytes = line.as_bytes();
    bytes.len() > 21
        && bytes[..20].iter().enumerate().all(|(i, b)| match i {
            4 | 7 => *b == b'-',
            10 => *b == b'T',
            13 | 16 => *b == b':',
            19 => *b == b'Z',
            _ => b.is_ascii_digit(),
        })
        && bytes[20] == b' '
}

/// The id on the summary's `deployment: <id>` line.
fn deployment_id(run: &Run) -> String {
    run.stdout
        .lines()
        .find_map(|line| line.strip_prefix("deployment: "))
        .map(|id| id.trim().to_owned())
        .unwrap_or_else(|| panic!("no `deployment: <id>` line in the output:\n{run}"))
}

#[test]
fn deploy_in_process_reports_results_and_keeps_history() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    let data = data.to_str().expect("utf-8 path");
    let good = write_environments(
        dir.path(),
        "good.json",
        vec![local("hello_env", &["sh", "-c", "echo hello"])],
    );
    let bad = write_environments(
        dir.path(),
        "bad.json",
        vec![local("broken_env", &["sh", "-c", "echo oops >&2; exit 3"])],
    );

    let ok = cli(
        dir.path(),
        &[
            "--environments",
            &good,
            "--data-dir",
            data,
            "deploy",
            "--follow-logs",
        ],
        &[],
    );
    assert_eq!(ok.code, Some(0), "{ok}");
    let (progress, summary) = ok
        .stdout
        .split_once("\n\n")
        .unwrap_or_else(|| panic!("no summary after the progress lines:\n{ok}"));
    assert!(
        progress.lines().all(is_timestamped),
        "progress lines are plain and timestamped when stdout is not a terminal:\n{ok}"
    );
    assert!(
        progress.lines().any(|l| l.ends_with(" hello_env running")),
        "{ok}"
    );
    assert!(
        progress
            .lines()
            .any(|l| l.contains(" hello_env succeeded (exit 0")),
        "{ok}"
    );
    assert!(
        progress
            .lines()
            .any(|l| l.ends_with(" hello_env stdout: hello")),
        "--follow-logs shows the command's output:\n{ok}"
    );
    assert!(
        summary
            .lines()
            .any(|l| l.starts_with("hello_env") && l.contains("succeeded")),
        "{ok}"
    );
    assert!(summary.contains("status:     completed"), "{ok}");
    let first = deployment_id(&ok);

    let failed = cli(
        dir.path(),
        &["--environments", &bad, "--data-dir", data, "deploy"],
        &[],
    );
    assert_eq!(failed.code, Some(1), "{failed}");
    let row = failed
        .stdout
        .lines()
        .find(|l| l.starts_with("broken_env") && !is_timestamped(l))
        .unwrap_or_else(|| panic!("no summary row for broken_env:\n{failed}"));
    assert!(
        row.contains("failed") && row.contains("command exited with code 3"),
        "the summary shows the error: {row}"
    );
    assert!(failed.stdout.contains("status:     failed"), "{failed}");
    let second = deployment_id(&failed);

    let history = cli(
        dir.path(),
        &["--environments", &bad, "--data-dir", data, "history"],
        &[],
    );
    assert_eq!(history.code, Some(0), "{history}");
    assert!(
        history.stdout.contains(&first) && history.stdout.contains(&second),
        "{history}"
    );
    let listed = cli(dir.path(), &["--data-dir", data, "history", "--json"], &[]);
    assert_eq!(listed.code, Some(0), "{listed}");
    let listed: Value = serde_json::from_str(&listed.stdout).expect("history --json is JSON");
    let ids: Vec<&str> = listed["history"]
        .as_array()
        .map(|entries| {
            entries
                .iter()
                .filter_map(|e| e["deployment_id"].as_str())
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(ids, [second.as_str(), first.as_str()], "newest first");
    assert_eq!(listed["history"][0]["status"], "failed");
    assert_eq!(listed["history"][1]["status"], "completed");

    let status = cli(dir.path(), &["--data-dir", data, "status", &first], &[]);
    assert_eq!(status.code, Some(0), "{status}");
    assert!(status.stdout.contains("completed"), "{status}");
}

/// A script's terminal control sequences (a window title, clear screen, colours, a bell) and a
/// failing one's error reach the operator's terminal as plain text.
#[test]
fn remote_output_cannot_drive_the_terminal() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    let data = data.to_str().expect("utf-8 path");
    let script = r"printf ']0;ownedvisible[2J text[31m red
'; printf 'failing [2J
' >&2; exit 3";
    let file = write_environments(
        dir.path(),
        "noisy.json",
        vec![local("noisy", &["sh", "-c", script])],
    );
    let run = cli(
        dir.path(),
        &[
            "--environments",
            &file,
            "--data-dir",
            data,
            "deploy",
            "--follow-logs",
        ],
        &[],
    );
    assert_eq!(run.code, Some(1), "{run}");
    assert!(run.stdout.contains("visible text red"), "{run}");
    assert!(run.stdout.contains("failing"), "{run}");
    for output in [&run.stdout, &run.stderr] {
        assert!(
            !output.contains('\u{1b}') && !output.contains('\u{7}'),
            "a control character reached the terminal: {output:?}"
        );
    }
}

#[test]
fn ec2_trigger_hands_the_instance_to_every_environment() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("facts.txt");
    let out = out.to_str().expect("utf-8 path");
    let script = format!("printf '%s %s' \"$EC2_PUBLIC_IP\" \"$PA_DEPLOYMENT_VERSION\" > '{out}'");
    let file = write_environments(
        dir.path(),
        "environments.json",
        vec![local("platform_env", &["sh", "-c", &script])],
    );
    let run = cli(
        dir.path(),
        &["--environments", &file, "ec2-trigger"],
        &[
            ("EC2_INSTANCE_ID", "i-0abc1234def567890"),
            ("EC2_PUBLIC_IP", "203.0.113.7"),
            ("DEPLOYMENT_VERSION", "2.1.0"),
        ],
    );
    assert_eq!(run.code, Some(0), "{run}");
    assert!(
        run.stdout.contains("EC2_INSTANCE_ID: i-0abc1234def567890")
            && run.stdout.contains("EC2_PUBLIC_IP: 203.0.113.7")
            && run.stdout.contains("DEPLOYMENT_VERSION: 2.1.0"),
        "{run}"
    );
    assert!(run.stdout.contains("version:    2.1.0"), "{run}");
    let facts = std::fs::read_to_string(dir.path().join("facts.txt")).expect("the trigger ran");
    assert_eq!(facts, "203.0.113.7 2.1.0");
    assert!(
        dir.path().join("data/deployment-mcp").is_dir(),
        "the default data directory is relative to the working directory"
    );
}

#[test]
fn usage_and_configuration_errors_exit_2() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    let data = data.to_str().expect("utf-8 path");
    let file = write_environments(
        dir.path(),
        "environments.json",
        vec![local("only_env", &["true"])],
    );

    let bogus = cli(dir.path(), &["deploy", "--bogus"], &[]);
    assert_eq!(bogus.code, Some(2), "{bogus}");
    assert!(
        bogus.stderr.contains("--bogus") && bogus.stderr.contains("Usage"),
        "{bogus}"
    );

    let nothing = cli(dir.path(), &[], &[]);
    assert_eq!(nothing.code, Some(2), "{nothing}");
    assert!(nothing.stderr.contains("Usage"), "{nothing}");

    let unknown = cli(
        dir.path(),
        &[
            "--environments",
            &file,
            "--data-dir",
            data,
            "deploy",
            "--env",
            "no_such_env",
        ],
        &[],
    );
    assert_eq!(unknown.code, Some(2), "{unknown}");
    assert!(unknown.stderr.contains("no_such_env"), "{unknown}");

    let missing = cli(
        dir.path(),
        &[
            "--environments",
            "missing-file.json",
            "--data-dir",
            data,
            "deploy",
        ],
        &[],
    );
    assert_eq!(missing.code, Some(2), "{missing}");
    assert!(missing.stderr.contains("missing-file.json"), "{missing}");

    let invalid = dir.path().join("invalid.json");
    std::fs::write(
        &invalid,
        r#"{"environments": [{"environment_id": "x", "environment_type": "linux_local",
            "connection_method": "local", "command": ["true"], "timeout": 0}]}"#,
    )
    .expect("write the invalid file");
    let check = cli(
        dir.path(),
        &[
            "--environments",
            invalid.to_str().expect("utf-8 path"),
            "--data-dir",
            data,
            "environments",
            "check",
        ],
        &[],
    );
    assert_eq!(check.code, Some(2), "{check}");
    assert!(
        check.stderr.contains("invalid.json") && check.stderr.contains("timeout"),
        "the plugin's message names the file and the field:\n{check}"
    );

    let bad_limit = cli(
        dir.path(),
        &["--data-dir", data, "history", "--limit", "0"],
        &[],
    );
    assert_eq!(bad_limit.code, Some(2), "{bad_limit}");
}

#[tokio::test]
async fn environments_check_runs_health_checks() {
    let healthy = Target::start(Behaviour::default()).await;
    let sick = Target::start(Behaviour {
        health_status: 503,
        ..Behaviour::default()
    })
    .await;
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    let data = data.to_str().expect("utf-8 path");
    let with_health = |id: &str, url: String| {
        let mut environment = local(id, &["true"]);
        environment["health_check_url"] = json!(url);
        environment
    };
    let file = write_environments(
        dir.path(),
        "environments.json",
        vec![
            with_health("up_env", healthy.url("/health")),
            with_health("down_env", sick.url("/health")),
            local("plain_env", &["true"]),
        ],
    );
    let run = cli_async(
        dir.path(),
        &[
            "--environments",
            &file,
            "--data-dir",
            data,
            "environments",
            "check",
        ],
        &[],
    )
    .await;
    assert_eq!(
        run.code,
        Some(1),
        "an unhealthy environment fails the check:\n{run}"
    );
    let line = |id: &str| {
        run.stdout
            .lines()
            .find(|l| l.starts_with(id))
            .unwrap_or_else(|| panic!("no line for {id}:\n{run}"))
            .to_owned()
    };
    assert!(line("up_env").contains("healthy ("), "{run}");
    assert!(line("down_env").contains("unhealthy"), "{run}");
    assert!(line("plain_env").contains("skipped"), "{run}");

    let list = cli_async(
        dir.path(),
        &[
            "--environments",
            &file,
            "--data-dir",
            data,
            "environments",
            "list",
        ],
        &[],
    )
    .await;
    assert_eq!(list.code, Some(0), "{list}");
    let row = list
        .stdout
        .lines()
        .find(|l| l.starts_with("down_env"))
        .unwrap_or_else(|| panic!("no row for down_env:\n{list}"));
    assert!(
        row.contains("local") && row.contains("true") && row.contains("unhealthy"),
        "the list shows the method, the command and the last health: {row}"
    );

    sick.set_health(200);
    let again = cli_async(
        dir.path(),
        &[
            "--environments",
            &file,
            "--data-dir",
            data,
            "environments",
            "check",
        ],
        &[],
    )
    .await;
    assert_eq!(again.code, Some(0), "{again}");
}

#[tokio::test]
async fn client_mode_deploys_through_a_running_host() {
    let dir = tempfile::tempdir().expect("temp dir");
    let host = TestHost::start(
        dir.path(),
        HostOptions {
            settings: "health_check_interval_secs = 0".into(),
            ..HostOptions::default()
        },
    )
    .await;
    let server = host.url.clone();

    let run = cli_async(
        dir.path(),
        &[
            "deploy",
            "--server",
            &server,
            "--api-key",
            ADMIN_KEY,
            "--env",
            "local_demo",
            "--json",
        ],
        &[],
    )
    .await;
    assert_eq!(run.code, Some(0), "{run}");
    let record: Value = serde_json::from_str(&run.stdout)
        .unwrap_or_else(|error| panic!("deploy --json prints one JSON document ({error}):\n{run}"));
    assert_eq!(record["status"], "completed", "{run}");
    let id = record["deployment_id"].as_str().expect("a deployment id");
    let (status, history) = host
        .get("/api/deployment/history", Some(DEVELOPER_KEY))
        .await;
    assert_eq!(status, 200, "{history}");
    assert!(
        history["history"]
            .as_array()
            .is_some_and(|entries| entries.iter().any(|e| e["deployment_id"] == id)),
        "the host recorded the CLI's deployment {id}: {history}"
    );
    assert_eq!(history["history"][0]["triggered_by"], "api:ops");

    // Plain output through the server: events over SSE, the same summary.
    let plain = cli_async(
        dir.path(),
        &["deploy", "--env", "local_demo"],
        &[
            ("DEPLOYMENT_MCP_SERVER", &server),
            ("DEPLOYMENT_MCP_API_KEY", ADMIN_KEY),
        ],
    )
    .await;
    assert_eq!(plain.code, Some(0), "{plain}");
    assert!(
        plain
            .stdout
            .lines()
            .any(|l| is_timestamped(l) && l.contains(" local_demo succeeded")),
        "{plain}"
    );
    let second = deployment_id(&plain);
    let status = cli_async(
        dir.path(),
        &[
            "status",
            &second,
            "--server",
            &server,
            "--api-key",
            ADMIN_KEY,
        ],
        &[],
    )
    .await;
    assert_eq!(status.code, Some(0), "{status}");
    assert!(status.stdout.contains("completed"), "{status}");

    let unknown = cli_async(
        dir.path(),
        &[
            "deploy",
            "--server",
            &server,
            "--api-key",
            ADMIN_KEY,
            "--env",
            "nope_env",
        ],
        &[],
    )
    .await;
    assert_eq!(
        unknown.code,
        Some(2),
        "the API's 422 is a usage error:\n{unknown}"
    );
    assert!(unknown.stderr.contains("nope_env"), "{unknown}");

    let wrong_key = "pa_wrong_key_never_printed";
    let refused = cli_async(
        dir.path(),
        &["history", "--server", &server, "--api-key", wrong_key],
        &[],
    )
    .await;
    assert_eq!(refused.code, Some(1), "{refused}");
    assert!(refused.stderr.contains("--api-key"), "{refused}");
    assert!(
        !refused.stderr.contains(wrong_key) && !refused.stdout.contains(wrong_key),
        "the key is never printed:\n{refused}"
    );

    let in_process_only = cli_async(
        dir.path(),
        &[
            "history",
            "--server",
            &server,
            "--api-key",
            ADMIN_KEY,
            "--data-dir",
            "x",
        ],
        &[],
    )
    .await;
    assert_eq!(in_process_only.code, Some(2), "{in_process_only}");
    drop(host);

    let unreachable_url = format!("http://127.0.0.1:{}", e2e::closed_port());
    let unreachable = cli_async(
        dir.path(),
        &[
            "status",
            "--server",
            &unreachable_url,
            "--api-key",
            ADMIN_KEY,
        ],
        &[],
    )
    .await;
    assert_eq!(unreachable.code, Some(1), "{unreachable}");
    assert!(
        unreachable
            .stderr
            .contains(&format!("cannot reach --server {unreachable_url}")),
        "{unreachable}"
    );
}

#[test]
fn a_canary_deploy_stops_at_its_gate_and_approve_finishes_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let markers = dir.path().join("markers");
    std::fs::create_dir_all(&markers).expect("markers dir");
    let marking = |id: &str| {
        local(
            id,
            &[
                "sh",
                "-c",
                "touch \"$0/$PA_ENVIRONMENT_ID\"",
                markers.to_str().expect("utf-8 path"),
            ],
        )
    };
    let file = write_environments(
        dir.path(),
        "envs.json",
        vec![marking("a"), marking("b"), marking("c")],
    );
    let run = cli(
        dir.path(),
        &[
            "--environments",
            &file,
            "deploy",
            "--version",
            "2.0",
            "--canary",
            "1",
            "--gate",
            "manual",
        ],
        &[],
    );
    assert_eq!(
        run.code,
        Some(3),
        "deploy stops at the gate with exit 3: {run}"
    );
    assert!(run.stderr.contains("deployment-mcp approve dep-"), "{run}");
    assert!(
        markers.join("a").exists() && !markers.join("b").exists(),
        "only the canary ran"
    );
    let id = run
        .stderr
        .split_whitespace()
        .find(|word| word.starts_with("dep-"))
        .expect("the deployment id")
        .trim_end_matches(':')
        .to_owned();

    let run = cli(dir.path(), &["--environments", &file, "approve", &id], &[]);
    assert_eq!(run.code, Some(0), "approve follows it to the end: {run}");
    assert!(
        markers.join("b").exists() && markers.join("c").exists(),
        "{run}"
    );
    assert!(run.stdout.contains("completed"), "{run}");

    // A rolling deploy through the flags: batches of one, the first failure stops it.
    let failing = write_environments(
        dir.path(),
        "failing.json",
        vec![local("x1", &["false"]), local("x2", &["true"])],
    );
    let run = cli(
        dir.path(),
        &[
            "--environments",
            &failing,
            "--data-dir",
            "data-2",
            "--json",
            "deploy",
            "--batch-size",
            "1",
            "--max-failures",
            "0",
        ],
        &[],
    );
    assert_eq!(run.code, Some(1), "{run}");
    let record: Value = serde_json::from_str(&run.stdout).expect("--json prints the record");
    assert_eq!(record["status"], "failed", "{record}");
    assert_eq!(record["rollout"]["strategy"]["type"], "rolling");
    let x2 = record["results"]
        .as_array()
        .and_then(|results| results.iter().find(|r| r["environment_id"] == "x2"))
        .expect("x2's result");
    assert_eq!(x2["status"], "skipped", "{record}");
    let run = cli(
        dir.path(),
        &["--environments", &failing, "deploy", "--batch-size", "0%"],
        &[],
    );
    assert_eq!(run.code, Some(2), "a bad value is a usage error: {run}");
    assert!(
        run.stderr.contains("strategy.batch_size"),
        "the server's error names the field: {run}"
    );
}

#[tokio::test]
async fn windows_are_listed_explained_created_and_deleted_against_a_host() {
    let dir = tempfile::tempdir().expect("temp dir");
    let host = quiet_host(dir.path()).await;
    let windows = |args: &[&str]| admin_args(&host, "windows", args);
    let run_windows = |args: Vec<String>| run_in(dir.path(), args);
    let freeze = r#"{"id":"cli-freeze","kind":"deny","start":"2026-01-01T00:00:00Z","end":"2026-12-31T00:00:00Z","environments":["local_demo"],"reason":"cli test"}"#;
    let created = run_windows(windows(&["create", freeze])).await;
    assert_eq!(created.code, Some(0), "{created}");
    let listed = run_windows(windows(&[])).await;
    assert_eq!(listed.code, Some(0), "{listed}");
    assert!(
        listed.stdout.contains("cli-freeze") && listed.stdout.contains("cli test"),
        "{listed}"
    );
    // Inside the freeze: exit 1, naming it; after it: exit 0.
    let closed = run_windows(windows(&[
        "explain",
        "local_demo",
        "--at",
        "2026-06-01T00:00:00Z",
    ]))
    .await;
    assert_eq!(closed.code, Some(1), "{closed}");
    assert!(closed.stdout.contains("cli-freeze"), "{closed}");
    let open = run_windows(windows(&[
        "explain",
        "local_demo",
        "--at",
        "2027-01-01T00:00:00Z",
    ]))
    .await;
    assert_eq!(open.code, Some(0), "{open}");
    let bad = run_windows(windows(&[
        "create",
        r#"{"id":"x","kind":"deny","start":"2027-01-02T00:00:00Z","end":"2027-01-01T00:00:00Z"}"#,
    ]))
    .await;
    assert_ne!(bad.code, Some(0), "{bad}");
    assert!(bad.stderr.contains("end"), "{bad}");
    let deleted = run_windows(windows(&["delete", "cli-freeze"])).await;
    assert_eq!(deleted.code, Some(0), "{deleted}");
    let (_, answer) = host.get("/api/deployment/windows", Some(ADMIN_KEY)).await;
    assert_eq!(answer["windows"], serde_json::json!([]));
}

#[tokio::test]
async fn schedules_are_created_listed_shown_and_deleted_against_a_host() {
    let dir = tempfile::tempdir().expect("temp dir");
    let host = quiet_host(dir.path()).await;
    let schedules = |args: &[&str]| admin_args(&host, "schedules", args);
    let run = |args: Vec<String>| run_in(dir.path(), args);
    // 02:30 Berlin time daily: on 2030-03-31 the clocks skip it, and it fires at 03:30 CEST.
    let nightly = r#"{"id":"cli-nightly","rrule":"FREQ=DAILY","dtstart":"2030-03-30T02:30:00","time_zone":"Europe/Berlin","trigger":{"environments":["local_demo"],"version":"v2"}}"#;
    let created = run(schedules(&["create", nightly])).await;
    assert_eq!(created.code, Some(0), "{created}");
    let listed = run(schedules(&[])).await;
    assert_eq!(listed.code, Some(0), "{listed}");
    assert!(
        listed.stdout.contains("cli-nightly") && listed.stdout.contains("local_demo @ v2"),
        "{listed}"
    );
    let next = run(schedules(&[
        "next",
        "cli-nightly",
        "--from",
        "2030-03-30T00:00:00Z",
        "--count",
        "3",
    ]))
    .await;
    assert_eq!(next.code, Some(0), "{next}");
    assert_eq!(
        next.stdout.lines().collect::<Vec<_>>(),
        [
            "2030-03-30T01:30:00.000Z",
            "2030-03-31T01:30:00.000Z",
            "2030-04-01T00:30:00.000Z"
        ],
        "{next}"
    );
    // The calendar lists each run on the environment it deploys.
    let calendar = run(admin_args(
        &host,
        "windows",
        &[
            "calendar",
            "--from",
            "2030-03-30T00:00:00Z",
            "--days",
            "2",
            "--environment",
            "local_demo",
        ],
    ))
    .await;
    assert_eq!(calendar.code, Some(0), "{calendar}");
    let rows: Vec<&str> = calendar
        .stdout
        .lines()
        .filter(|line| line.contains("schedule cli-nightly deploys"))
        .collect();
    assert_eq!(rows.len(), 2, "{calendar}");
    assert!(
        rows[0].starts_with("2030-03-30T01:30:00.000Z") && rows[0].contains("local_demo"),
        "{calendar}"
    );
    let shown = run(schedules(&["show", "cli-nightly"])).await;
    assert_eq!(shown.code, Some(0), "{shown}");
    assert!(
        shown.stdout.contains("no runs yet") && shown.stdout.contains("2030-03-30T01:30:00.000Z"),
        "{shown}"
    );
    let bad = run(schedules(&[
        "create",
        r#"{"id":"x","at":"2020-01-01T00:00:00Z"}"#,
    ]))
    .await;
    assert_ne!(bad.code, Some(0), "{bad}");
    assert!(bad.stderr.contains("must be in the future"), "{bad}");
    let deleted = run(schedules(&["delete", "cli-nightly"])).await;
    assert_eq!(deleted.code, Some(0), "{deleted}");
    let (_, answer) = host.get("/api/deployment/schedules", Some(ADMIN_KEY)).await;
    assert_eq!(answer["schedules"], serde_json::json!([]));
}

#[tokio::test]
async fn subscriptions_are_created_with_a_test_listed_with_deliveries_and_deleted_against_a_host() {
    let dir = tempfile::tempdir().expect("temp dir");
    let host = quiet_host(dir.path()).await;
    let receiver = e2e::receiver::Receiver::start(e2e::receiver::Script::default()).await;
    let subscriptions = |args: &[&str]| admin_args(&host, "subscriptions", args);
    let run = |args: Vec<String>| run_in(dir.path(), args);
    let hook = json!({"id": "cli-hook", "events": ["deployment.failed"],
        "channel": {"type": "webhook", "url": receiver.url(), "secret": "cli-secret-77"}})
    .to_string();
    let created = run(subscriptions(&["create", &hook, "--test"])).await;
    assert_eq!(created.code, Some(0), "{created}");
    assert!(!created.stdout.contains("cli-secret-77"), "{created}");
    let listed = run(subscriptions(&[])).await;
    assert_eq!(listed.code, Some(0), "{listed}");
    assert!(
        listed.stdout.contains("cli-hook") && listed.stdout.contains("deployment.failed"),
        "{listed}"
    );
    assert!(!listed.stdout.contains("cli-secret-77"), "{listed}");
    let delivered = e2e::wait_until(Duration::from_secs(30), || async {
        !receiver.accepted().is_empty()
    })
    .await;
    assert!(delivered, "{}", host.logs());
    let deliveries = run(subscriptions(&["deliveries", "cli-hook"])).await;
    assert_eq!(deliveries.code, Some(0), "{deliveries}");
    assert!(
        deliveries.stdout.contains("test") && deliveries.stdout.contains("delivered"),
        "{deliveries}"
    );
    let bad = run(subscriptions(&[
        "create",
        r#"{"id":"x","events":["nothing"],"channel":{"type":"slack","webhook_url":"http://127.0.0.1:9/x"}}"#,
    ]))
    .await;
    assert_ne!(bad.code, Some(0), "{bad}");
    assert!(bad.stderr.contains("events"), "{bad}");
    let deleted = run(subscriptions(&["delete", "cli-hook"])).await;
    assert_eq!(deleted.code, Some(0), "{deleted}");
    let (_, answer) = host
        .get("/api/deployment/subscriptions", Some(ADMIN_KEY))
        .await;
    assert_eq!(answer["subscriptions"], json!([]));
}

/// A host without periodic health checks, for the commands that manage its records.
async fn quiet_host(dir: &Path) -> TestHost {
    TestHost::start(
        dir,
        HostOptions {
            settings: "health_check_interval_secs = 0".into(),
            ..HostOptions::default()
        },
    )
    .await
}

/// `--server <host> --api-key <admin> <command> <args>`.
fn admin_args(host: &TestHost, command: &str, args: &[&str]) -> Vec<String> {
    let mut all = vec![
        "--server",
        host.url.as_str(),
        "--api-key",
        ADMIN_KEY,
        command,
    ];
    all.extend_from_slice(args);
    all.into_iter().map(str::to_owned).collect()
}

/// Runs the CLI in `dir` with `args`.
async fn run_in(dir: &Path, args: Vec<String>) -> Run {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    cli_async(dir, &args, &[]).await
}
