//! Process isolation (`isolation = "process"`): a plugin run in a child process of the host.
//!
//! A crash of the child (segfault, abort, stack overflow, out of memory, SIGKILL) answers 502
//! naming the plugin and the signal to the request in flight, leaves the host and its other
//! plugins serving, and is counted in `/api/plugins`; the child comes back by itself with a new
//! pid, until it has crashed more than `max_crashes` times in the window: then it is `failed`,
//! its mount answers 503, and only a reload starts it again. The deployment plugin itself in a
//! child: deployments, SSE, log follow, cancel and retry, a kill -9 of the host, hot swap under
//! load (old children stopped), and a SIGKILL of the child mid-deployment (the run recorded
//! `interrupted` with its lines, the environment free). The shared scenarios are the in-process
//! tests of `deployments` and `hot_swap`, run with [`Isolation::Process`].

use std::{cell::Cell, path::Path, time::Duration};

use e2e::{
    process_alive,
    scenario::{finished, local, result, started, trigger, Isolation, RUN_TIMEOUT},
    wait_until, ExtraPlugin, HostOptions, Signal, TestHost, ADMIN_KEY, USER_KEY,
};
use reqwest::Method;
use serde_json::{json, Value};

use crate::{
    deployments::{
        auto_deployments, cancel_and_retry, followed_log_streams_until_the_end,
        kill_9_leaves_the_run_interrupted, log_text, settled_auto_deployments,
        sse_subscriber_sees_every_phase, start_with_auto_deploy_in,
    },
    hot_swap::{swap_under_load, SWAPS_UNDER_LOAD},
};

fn temp() -> tempfile::TempDir {
    tempfile::tempdir().expect("a temporary directory")
}

/// How long a crashed child may take to serve again: restarts back off 250 ms, 500 ms, 1 s,
/// 2 s…, and a child starts in well under a second.
const RESTART_TIMEOUT: Duration = Duration::from_secs(20);

/// The crashing fixture in a child process, its address space capped so that `/oom` fails
/// fast and never starves the machine.
const CRASHING_IN_A_CHILD: &str = "isolation = \"process\"\nmemory_limit_mb = 256";

/// The same, `failed` after more than one crash in the window.
const CRASHING_AT_MOST_ONCE: &str =
    "isolation = \"process\"\nmemory_limit_mb = 256\nmax_crashes = 1";

/// A host with the real plugin in-process (the default) and the crashing fixture at
/// `/api/crashing`, configured with `config`.
async fn start_with_crashing(dir: &Path, config: &'static str) -> TestHost {
    let options = HostOptions {
        settings: "health_check_interval_secs = 0".into(),
        extra_plugins: vec![ExtraPlugin {
            name: "crashing",
            library: "fixture_crashing",
            mount: "/api/crashing",
            config,
        }],
        ..HostOptions::default()
    };
    TestHost::start(dir, options).await
}

/// The pid that `/ok` reports, i.e. the process the crashing plugin runs in; `None` while it
/// does not answer 200.
async fn serving_pid(host: &TestHost) -> Option<u32> {
    let (status, body) = host.get("/api/crashing/ok", Some(USER_KEY)).await;
    if status != 200 {
        return None;
    }
    body["pid"].as_u64().and_then(|pid| u32::try_from(pid).ok())
}

/// Waits (bounded) until the crashing plugin answers `/ok` from a process other than `old`;
/// returns that process's pid.
async fn restarted(host: &TestHost, old: u32) -> u32 {
    let serving = Cell::new(None);
    let back = wait_until(RESTART_TIMEOUT, || async {
        let pid = serving_pid(host).await;
        serving.set(pid);
        pid.is_some_and(|pid| pid != old)
    })
    .await;
    assert!(
        back,
        "the plugin serves again from a new process within {RESTART_TIMEOUT:?}: {}; log:\n{}",
        host.plugin_status_of("crashing").await,
        host.logs()
    );
    serving.get().expect("the restarted process's pid")
}

/// Asks `route` of the crashing plugin, which takes its process down, and checks the answer:
/// a 502 naming the plugin. Returns the answer's body.
async fn crash(host: &TestHost, route: &str) -> Value {
    let (status, body) = host
        .get(&format!("/api/crashing{route}"), Some(USER_KEY))
        .await;
    assert_eq!(status, 502, "{route}: {body}");
    assert_eq!(body["error"], "plugin_crashed", "{route}: {body}");
    assert_eq!(body["plugin"], "crashing", "{route}: {body}");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|message| !message.is_empty()),
        "{route}: the answer says what happened: {body}"
    );
    body
}

/// The host, its core routes and its in-process deployment plugin serve as before.
async fn host_unaffected(host: &TestHost) {
    assert!(
        process_alive(host.pid()),
        "the host is alive; log:\n{}",
        host.logs()
    );
    let (status, health) = host.get("/health", None).await;
    assert_eq!(status, 200, "{health}");
    assert_eq!(health["status"], "ok", "{health}");
    assert_eq!(health["plugins"]["deployment_mcp"], "active", "{health}");
    let (status, body) = host.get("/api/deployment/status", Some(USER_KEY)).await;
    assert_eq!(status, 200, "the in-process plugin serves: {body}");
}

#[tokio::test]
async fn each_crash_of_a_child_answers_502_and_the_plugin_comes_back_by_itself() {
    let dir = temp();
    let host = start_with_crashing(dir.path(), CRASHING_IN_A_CHILD).await;
    let plugin = host.plugin_status_of("crashing").await;
    assert_eq!(plugin["state"], "active", "{plugin}");
    assert_eq!(plugin["isolation"], "process", "{plugin}");
    assert_eq!(plugin["crashes"], 0, "{plugin}");
    assert!(
        plugin["last_crash"].is_null() && plugin["last_crash_at"].is_null(),
        "{plugin}"
    );
    let mut pid = serving_pid(&host).await.expect("the plugin answers /ok");
    assert_ne!(pid, host.pid(), "the plugin runs in a process of its own");
    assert_eq!(plugin["pid"], pid, "{plugin}");
    // The deployment plugin, configured with the default, stays in the host's process.
    Isolation::InProcess.check(&host).await;

    let crashes = [
        ("/segfault", Some("SIGSEGV")),
        ("/abort", Some("SIGABRT")),
        ("/stack-overflow", None),
        ("/oom", None),
    ];
    let last = crashes.len();
    for (count, (route, expected)) in crashes.into_iter().enumerate() {
        let answer = crash(&host, route).await;
        let signal = answer["signal"]
            .as_str()
            .unwrap_or_else(|| panic!("{route}: the answer names the signal: {answer}"))
            .to_owned();
        if let Some(expected) = expected {
            assert_eq!(signal, expected, "{route}: {answer}");
        }
        assert!(
            answer["exit_code"].is_null(),
            "{route}: killed by a signal, no exit code: {answer}"
        );
        host_unaffected(&host).await;
        if count + 1 == last {
            // The fourth crash in the window is restarted after 2 s: long enough to see the
            // plugin `crashed` in the meantime, its mount answering 503.
            let seen = wait_until(Duration::from_secs(1), || async {
                host.plugin_status_of("crashing").await["state"] == "crashed"
            })
            .await;
            assert!(seen, "{route}: {}", host.plugin_status_of("crashing").await);
            let (status, body) = host.get("/api/crashing/ok", Some(USER_KEY)).await;
            assert_eq!(status, 503, "{route}: {body}");
            assert_eq!(body["error"], "plugin_unavailable", "{route}: {body}");
            assert_eq!(body["state"], "crashed", "{route}: {body}");
        }

        let new = restarted(&host, pid).await;
        assert!(
            !process_alive(pid),
            "{route}: the crashed process {pid} is gone"
        );
        let plugin = host.plugin_status_of("crashing").await;
        assert_eq!(plugin["state"], "active", "{route}: {plugin}");
        assert_eq!(plugin["crashes"], count + 1, "{route}: {plugin}");
        assert!(
            plugin["last_crash"]
                .as_str()
                .is_some_and(|cause| cause.contains(&signal)),
            "{route}: the cause names {signal}: {plugin}"
        );
        assert!(plugin["last_crash_at"].is_string(), "{route}: {plugin}");
        assert_eq!(plugin["pid"], new, "{route}: {plugin}");
        pid = new;
    }
    host_unaffected(&host).await;
}

#[tokio::test]
async fn a_child_that_crashes_more_than_max_crashes_stays_failed_until_reloaded() {
    let dir = temp();
    let host = start_with_crashing(dir.path(), CRASHING_AT_MOST_ONCE).await;
    let first = serving_pid(&host).await.expect("the plugin answers /ok");

    // One crash is within max_crashes = 1: restarted.
    crash(&host, "/segfault").await;
    let second = restarted(&host, first).await;
    assert_eq!(host.plugin_status_of("crashing").await["crashes"], 1);

    // The second is one too many: failed, and left so.
    crash(&host, "/abort").await;
    let failed = wait_until(RESTART_TIMEOUT, || async {
        host.plugin_status_of("crashing").await["state"] == "failed"
    })
    .await;
    let plugin = host.plugin_status_of("crashing").await;
    assert!(failed, "{plugin}");
    assert_eq!(plugin["crashes"], 2, "{plugin}");
    assert!(
        plugin["last_crash"]
            .as_str()
            .is_some_and(|cause| cause.contains("SIGABRT")),
        "{plugin}"
    );
    // Well past the next restart's backoff (500 ms), nothing has started it again.
    let started_again = wait_until(Duration::from_secs(2), || async {
        let (status, _) = host.get("/api/crashing/ok", Some(USER_KEY)).await;
        status != 503 || host.plugin_status_of("crashing").await["state"] != "failed"
    })
    .await;
    assert!(
        !started_again,
        "a failed plugin is not restarted: {}",
        host.plugin_status_of("crashing").await
    );
    let response = host
        .client()
        .get(format!("{}/api/crashing/ok", host.url))
        .header("X-API-Key", USER_KEY)
        .send()
        .await
        .expect("the host answers");
    assert_eq!(response.status().as_u16(), 503);
    assert!(
        response.headers().get("retry-after").is_some(),
        "Retry-After is set"
    );
    let body: Value = response.json().await.expect("a JSON body");
    assert_eq!(body["error"], "plugin_unavailable", "{body}");
    assert_eq!(body["plugin"], "crashing", "{body}");
    assert_eq!(body["state"], "failed", "{body}");
    let (status, health) = host.get("/health", None).await;
    assert_eq!(status, 200, "{health}");
    assert_eq!(health["plugins"]["crashing"], "failed", "{health}");
    host_unaffected(&host).await;

    // An operator's reload starts it again and resets the count.
    let (status, body) = host.reload_plugin("crashing").await;
    assert_eq!(status, 200, "{body}");
    let plugin = host.plugin_status_of("crashing").await;
    assert_eq!(plugin["state"], "active", "{plugin}");
    assert_eq!(plugin["crashes"], 0, "{plugin}");
    let third = serving_pid(&host)
        .await
        .expect("/ok answers 200 after the reload");
    assert_ne!(third, second, "a new child serves");
    assert_eq!(plugin["pid"], third, "{plugin}");
    // With the count reset, one crash is within the limit again.
    crash(&host, "/segfault").await;
    restarted(&host, third).await;
    let plugin = host.plugin_status_of("crashing").await;
    assert_eq!(plugin["state"], "active", "{plugin}");
    assert_eq!(plugin["crashes"], 1, "{plugin}");
}

#[tokio::test]
async fn in_a_child_a_deployment_completes_and_a_subscriber_sees_every_phase() {
    sse_subscriber_sees_every_phase(Isolation::Process).await;
}

#[tokio::test]
async fn in_a_child_a_followed_log_streams_until_the_deployment_ends() {
    followed_log_streams_until_the_end(Isolation::Process).await;
}

#[tokio::test]
async fn in_a_child_cancel_stops_running_triggers_and_retry_runs_only_the_failed() {
    cancel_and_retry(Isolation::Process).await;
}

#[tokio::test]
async fn in_a_child_kill_9_of_the_host_leaves_the_run_interrupted_with_its_log() {
    kill_9_leaves_the_run_interrupted(Isolation::Process).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn in_a_child_a_hot_swap_under_load_fails_no_request_and_stops_the_old_child() {
    let swapped = swap_under_load(Isolation::Process).await;
    let children: Vec<u32> = swapped
        .children
        .iter()
        .map(|child| child.expect("a plugin in process mode has a child"))
        .collect();
    assert_eq!(children.len(), SWAPS_UNDER_LOAD + 1, "{children:?}");
    assert!(
        children.windows(2).all(|pair| pair[0] != pair[1]),
        "each swap starts a new child: {children:?}"
    );
    let (current, old) = children.split_last().expect("at least one child");
    let stopped = wait_until(Duration::from_secs(30), || async {
        old.iter().all(|pid| !process_alive(*pid))
    })
    .await;
    let running: Vec<u32> = old
        .iter()
        .copied()
        .filter(|pid| process_alive(*pid))
        .collect();
    assert!(
        stopped,
        "each old child is stopped once it has finished; still running: {running:?}"
    );
    assert!(process_alive(*current), "the current child {current} runs");
    let plugin = swapped.host.plugin_status().await;
    assert_eq!(plugin["pid"], *current, "{plugin}");
    assert_eq!(plugin["crashes"], 0, "a swap is not a crash: {plugin}");
    assert!(process_alive(swapped.host.pid()));
}

/// The status of `environment` in a deployment record, once it has a result.
fn environment_status<'a>(record: &'a Value, environment: &str) -> Option<&'a str> {
    record["results"]
        .as_array()?
        .iter()
        .find(|result| result["environment_id"] == environment)?["status"]
        .as_str()
}

#[tokio::test]
async fn sigkill_of_the_child_mid_deployment_interrupts_the_run_and_frees_the_environment() {
    let dir = temp();
    let pid_file = dir.path().join("command.pid");
    let script = format!(
        "echo $$ > '{}'; echo before the kill; exec sleep 600",
        pid_file.display()
    );
    let list = vec![local("long", &["sh", "-c", &script], 900)];
    let host = TestHost::start(dir.path(), Isolation::Process.options(list)).await;
    let child = Isolation::Process
        .check(&host)
        .await
        .expect("the plugin's child");
    let id = started(&host, json!({})).await;
    let running = wait_until(RUN_TIMEOUT, || async {
        let record = e2e::scenario::detail(&host, &id).await;
        environment_status(&record, "long") == Some("running")
            && log_text(&host, &id)
                .await
                .iter()
                .any(|line| line == "before the kill")
    })
    .await;
    assert!(
        running,
        "the command runs and its line is stored: {}",
        e2e::scenario::detail(&host, &id).await
    );
    let command = e2e::scenario::read_pid(&pid_file);
    let before = log_text(&host, &id).await;
    // A request in flight on the child when it dies: a followed log.
    let follow = e2e::scenario::follow_log(&host, &id).await;

    e2e::send_signal(child, Signal::SIGKILL);

    // The followed log is cut off (not ended as if complete, not left hanging) when the
    // process serving it dies.
    let ended = tokio::time::timeout(RESTART_TIMEOUT, follow.text()).await;
    assert!(
        ended.as_ref().is_ok_and(|text| text.is_err()),
        "the followed log is aborted when the child dies: {ended:?}"
    );
    // The host serves throughout, and the plugin comes back in a new child.
    let back = wait_until(RESTART_TIMEOUT, || async {
        let (status, health) = host.get("/health", None).await;
        assert_eq!(status, 200, "{health}");
        let plugin = host.plugin_status().await;
        plugin["state"] == "active"
            && plugin["pid"]
                .as_u64()
                .is_some_and(|pid| pid != u64::from(child))
    })
    .await;
    let plugin = host.plugin_status().await;
    assert!(back, "the plugin is active in a new child: {plugin}");
    assert!(process_alive(host.pid()), "the host is alive");
    assert!(!process_alive(child), "the killed child {child} is gone");
    assert_eq!(plugin["crashes"], 1, "{plugin}");
    assert!(
        plugin["last_crash"]
            .as_str()
            .is_some_and(|cause| cause.contains("SIGKILL")),
        "{plugin}"
    );
    assert!(plugin["last_crash_at"].is_string(), "{plugin}");
    Isolation::Process.check(&host).await;

    // The run the dead child owned is recorded as after a crash of the host.
    let record = finished(&host, &id).await;
    assert_eq!(record["status"], "interrupted", "{record}");
    assert_eq!(result(&record, "long")["status"], "cancelled", "{record}");
    let after = log_text(&host, &id).await;
    assert!(
        after.len() >= before.len() && after[..before.len()] == before[..],
        "every line recorded before the kill is still there, in order: {before:?} then {after:?}"
    );
    assert!(
        after
            .last()
            .is_some_and(|line| line.contains("interrupted")),
        "the log says the run was interrupted: {after:?}"
    );

    // The environment is free: a new deployment of it is accepted.
    let (status, body) = trigger(&host, json!({"environments": ["long"]})).await;
    assert_eq!(status, 202, "{body}");
    let again = body["deployment_id"].as_str().expect("a deployment id");
    let (status, body) = host
        .call(
            Method::POST,
            &format!("/api/deployment/deployments/{again}/cancel"),
            Some(ADMIN_KEY),
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(finished(&host, again).await["status"], "cancelled");
    // The first run's command lost its runner with the child; do not leave it behind.
    e2e::send_signal(command, Signal::SIGKILL);
}

#[tokio::test]
async fn stop_signals_for_the_whole_group_leave_the_child_to_the_host_which_stops_it_cleanly() {
    let dir = temp();
    let mut host = start_with_crashing(dir.path(), CRASHING_IN_A_CHILD).await;
    let pid = serving_pid(&host).await.expect("the plugin answers /ok");
    // What a terminal's Ctrl-C or a service manager's stop sends to every process it knows.
    e2e::send_signal(pid, Signal::SIGINT);
    e2e::send_signal(pid, Signal::SIGTERM);
    for _ in 0..20 {
        assert_eq!(
            serving_pid(&host).await,
            Some(pid),
            "the child keeps serving until the host stops it; log:\n{}",
            host.logs()
        );
    }
    let plugin = host.plugin_status_of("crashing").await;
    assert_eq!(plugin["crashes"], 0, "{plugin}");
    assert_eq!(plugin["state"], "active", "{plugin}");

    let (status, _) = host
        .stop_with(Signal::SIGTERM, Duration::from_secs(30))
        .await;
    assert!(
        status.is_some_and(|status| status.success()),
        "the host stops cleanly: {status:?}"
    );
    assert!(
        wait_until(Duration::from_secs(10), || async { !process_alive(pid) }).await,
        "the child {pid} ends with the host"
    );
    let text = host.logs();
    assert!(
        text.contains("the plugin's old process stopped") && !text.contains("crashed;"),
        "the host asked the child to stop; it did not crash:\n{text}"
    );
}

/// The niceness of each thread of `pid` (field 19 of `/proc/PID/task/TID/stat`).
fn thread_niceness(pid: u32) -> Vec<i64> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("the process's threads");
    tasks
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("stat")).ok())
        .map(|stat| {
            // After the name in parentheses (which may hold spaces) come fields 3 onwards.
            let rest = stat.rsplit_once(") ").map(|(_, rest)| rest).unwrap_or("");
            rest.split(' ')
                .nth(16)
                .and_then(|nice| nice.parse().ok())
                .unwrap_or_else(|| panic!("no niceness in {stat}"))
        })
        .collect()
}

/// The niceness in `/proc/PID/autogroup`, where the kernel has autogroups.
fn autogroup_niceness(pid: u32) -> Option<i64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/autogroup")).ok()?;
    text.split_whitespace().last()?.parse().ok()
}

#[tokio::test]
async fn cpu_shares_give_every_thread_of_the_child_the_nearest_scheduler_weight() {
    let dir = temp();
    let host = start_with_crashing(dir.path(), "isolation = \"process\"\ncpu_shares = 128").await;
    let pid = serving_pid(&host).await.expect("the plugin answers /ok");
    // 128 against the host's 1024 is the weight step of 9 nicenesses (137), from wherever the
    // host runs (the tests may run niced).
    let own = thread_niceness(host.pid());
    let host_nice = own[0];
    assert!(
        own.iter().all(|&nice| nice == host_nice),
        "the host keeps its own priority: {own:?}"
    );
    let child = thread_niceness(pid);
    let expected = (host_nice + 9).min(19);
    assert!(
        child.len() > 1 && child.iter().all(|&nice| nice == expected),
        "every thread of the child runs at niceness {expected}: {child:?}"
    );
    // Its session's autogroup too, where the kernel has them: the weight the scheduler gives
    // the group against the host's.
    if let Some(host_group) = autogroup_niceness(host.pid()) {
        assert_eq!(
            autogroup_niceness(pid),
            Some((host_group + 9).clamp(0, 19)),
            "the child's autogroup"
        );
    }
    host_unaffected(&host).await;
}

#[tokio::test]
async fn a_child_that_does_not_start_within_start_timeout_secs_is_killed_and_failed() {
    let dir = temp();
    let host = start_with_crashing(
        dir.path(),
        "isolation = \"process\"\nstart_timeout_secs = 1\nsettings = { start_delay_secs = 600 }",
    )
    .await;
    let failed = wait_until(Duration::from_secs(20), || async {
        host.plugin_status_of("crashing").await["state"] == "failed"
    })
    .await;
    let plugin = host.plugin_status_of("crashing").await;
    assert!(failed, "{plugin}");
    assert!(
        plugin["last_error"]
            .as_str()
            .is_some_and(|error| error.contains("did not start within 1 s")),
        "the cause names the timeout: {plugin}"
    );
    assert!(plugin["pid"].is_null(), "no process serves: {plugin}");
    // The hung child is gone, not left waiting: the host has no child process at all (the
    // deployment plugin runs in its process).
    let host_pid = host.pid();
    let children = || {
        std::fs::read_dir(format!("/proc/{host_pid}/task"))
            .map(|tasks| {
                tasks
                    .filter_map(|task| {
                        std::fs::read_to_string(task.ok()?.path().join("children")).ok()
                    })
                    .collect::<String>()
            })
            .unwrap_or_default()
    };
    assert!(
        wait_until(Duration::from_secs(10), || async {
            children().trim().is_empty()
        })
        .await,
        "the child was killed: children {}; log:\n{}",
        children(),
        host.logs()
    );
    let (status, body) = host.get("/api/crashing/ok", Some(USER_KEY)).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["state"], "failed", "{body}");
    host_unaffected(&host).await;
}

/// Waits (bounded) until `environment` of deployment `id` is running.
async fn running(host: &TestHost, id: &str, environment: &str) {
    let ok = wait_until(RUN_TIMEOUT, || async {
        environment_status(&e2e::scenario::detail(host, id).await, environment) == Some("running")
    })
    .await;
    assert!(
        ok,
        "{environment} runs: {}",
        e2e::scenario::detail(host, id).await
    );
}

/// Waits (bounded) until the plugin serves from a process other than `old`; its pid.
async fn serving_other_than(host: &TestHost, old: u32) -> u32 {
    let pid = Cell::new(None);
    let ok = wait_until(RESTART_TIMEOUT, || async {
        let plugin = host.plugin_status().await;
        let now = plugin["pid"]
            .as_u64()
            .and_then(|pid| u32::try_from(pid).ok());
        pid.set(now);
        plugin["state"] == "active" && now.is_some_and(|now| now != old)
    })
    .await;
    assert!(ok, "a new process serves: {}", host.plugin_status().await);
    pid.get().expect("the serving pid")
}

#[tokio::test]
async fn a_crash_of_either_child_during_a_swap_interrupts_only_the_dead_childs_runs() {
    let dir = temp();
    // Each command waits until the test lets it finish.
    let release = dir.path().join("release");
    let waiting = format!(
        "while [ ! -e '{}' ]; do sleep 0.05; done; echo released",
        release.display()
    );
    let list = ["first", "second", "third"]
        .into_iter()
        .map(|name| local(name, &["sh", "-c", &waiting], 900))
        .collect();
    let host = TestHost::start(dir.path(), Isolation::Process.options(list)).await;
    let first_child = Isolation::Process.check(&host).await.expect("a child");

    // The first child runs `first`, then is swapped out and keeps finishing it.
    let first = started(&host, json!({"environments": ["first"]})).await;
    running(&host, &first, "first").await;
    let (status, body) = host.reload_plugin("deployment_mcp").await;
    assert_eq!(status, 200, "{body}");
    let second_child = serving_other_than(&host, first_child).await;
    assert!(
        process_alive(first_child),
        "the older child finishes its run"
    );

    // The serving child runs `second` and is killed: its run is interrupted by the child
    // restarted after it, while the older child's run goes on.
    let second = started(&host, json!({"environments": ["second"]})).await;
    running(&host, &second, "second").await;
    e2e::send_signal(second_child, Signal::SIGKILL);
    let third_child = serving_other_than(&host, second_child).await;
    let record = finished(&host, &second).await;
    assert_eq!(record["status"], "interrupted", "{record}");
    let record = e2e::scenario::detail(&host, &first).await;
    assert_eq!(
        environment_status(&record, "first"),
        Some("running"),
        "the older child's run is not interrupted: {record}"
    );

    // The third child runs `third` and is swapped out; while it finishes, it is killed: a fresh
    // child records its run interrupted, though the serving one did not crash.
    let third = started(&host, json!({"environments": ["third"]})).await;
    running(&host, &third, "third").await;
    let (status, body) = host.reload_plugin("deployment_mcp").await;
    assert_eq!(status, 200, "{body}");
    let fourth_child = serving_other_than(&host, third_child).await;
    e2e::send_signal(third_child, Signal::SIGKILL);
    let record = finished(&host, &third).await;
    assert_eq!(record["status"], "interrupted", "{record}");
    serving_other_than(&host, fourth_child).await;
    // Its environment is free again, and the second's.
    for environment in ["second", "third"] {
        let (status, body) = trigger(&host, json!({"environments": [environment]})).await;
        assert_eq!(status, 202, "{environment}: {body}");
    }

    // The first run, carried by the first child all along, completes.
    std::fs::write(&release, b"").expect("release the commands");
    let record = finished(&host, &first).await;
    assert_eq!(record["status"], "completed", "{record}");
    assert_eq!(result(&record, "first")["status"], "succeeded", "{record}");
    let plugin = host.plugin_status().await;
    // The operator's second reload reset the count; the older child's death after it counts,
    // and the plugin served throughout.
    assert_eq!(plugin["crashes"], 1, "{plugin}");
    assert_eq!(plugin["state"], "active", "{plugin}");
}

#[tokio::test]
async fn a_plugin_that_crashes_whenever_it_stops_is_not_swapped_for_ever() {
    let dir = temp();
    let host = start_with_crashing(
        dir.path(),
        "isolation = \"process\"\nmax_crashes = 2\nsettings = { abort_at_shutdown = true }",
    )
    .await;
    let first = serving_pid(&host).await.expect("the plugin answers /ok");
    // The reload retires the first child, which aborts as it stops: a fresh child replaces the
    // serving one, which aborts as it stops, and so on, until the window is full.
    let (status, body) = host.reload_plugin("crashing").await;
    assert_eq!(status, 200, "{body}");
    let settled = wait_until(RESTART_TIMEOUT, || async {
        host.plugin_status_of("crashing").await["crashes"] == 3
    })
    .await;
    let plugin = host.plugin_status_of("crashing").await;
    assert!(
        settled,
        "three crashes, then no more fresh children: {plugin}"
    );
    assert!(
        plugin["last_crash"]
            .as_str()
            .is_some_and(|cause| cause.contains("SIGABRT")),
        "{plugin}"
    );
    // Well past the next backoff (1 s), nothing swaps any more, and the plugin still serves.
    let serving = serving_pid(&host).await.expect("the plugin serves");
    assert_ne!(serving, first, "{plugin}");
    let swaps = plugin["swaps"].clone();
    let moved = wait_until(Duration::from_secs(3), || async {
        let now = host.plugin_status_of("crashing").await;
        now["swaps"] != swaps || now["crashes"] != 3
    })
    .await;
    let plugin = host.plugin_status_of("crashing").await;
    assert!(!moved, "no more swaps or crashes: {plugin}");
    assert_eq!(plugin["state"], "active", "{plugin}");
    assert_eq!(
        serving_pid(&host).await,
        Some(serving),
        "the same child serves"
    );
    host_unaffected(&host).await;
}

#[tokio::test]
async fn in_a_child_a_swap_or_a_crash_restart_is_not_a_new_start_for_auto_deploy() {
    let dir = temp();
    // The automatic deployment's command ends at once.
    std::fs::write(dir.path().join("release"), b"").expect("release the command");
    let host = start_with_auto_deploy_in(dir.path(), "always", "1.0.0", Isolation::Process).await;
    let first = Isolation::Process.check(&host).await.expect("a child");
    let list = settled_auto_deployments(&host, 1).await;
    assert_eq!(list[0]["status"], "completed", "{list:?}");

    // A swap starts a second child, a SIGKILL of it a third: neither is a start of the host.
    let (status, body) = host.reload_plugin("deployment_mcp").await;
    assert_eq!(status, 200, "{body}");
    let second = serving_other_than(&host, first).await;
    e2e::send_signal(second, Signal::SIGKILL);
    serving_other_than(&host, second).await;
    // Each child decides at its start; give the last one ample time to (wrongly) deploy.
    let again = wait_until(Duration::from_secs(3), || async {
        auto_deployments(&host).await.len() > 1
    })
    .await;
    assert!(
        !again,
        "one automatic deployment per start of the host: {:?}",
        auto_deployments(&host).await
    );
}
