//! Soak: triggers, cancels, hot swaps and event-stream clients at once, then checks that
//! nothing is stuck. Runs `PA_SOAK_SECS` seconds (20 by default, the short form CI runs; set
//! e.g. 300 for a long run).
//!
//! At the end every deployment is terminal, no process a trigger started is left (running or
//! unreaped), at most the active plugin copy stays mapped once retirements finish, and the
//! host's memory stayed within bounds.

use std::{
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use e2e::{
    mapped_plugin_copies, rss_kib,
    scenario::{detail, is_terminal, local, options, trigger},
    wait_until, TestHost, ADMIN_KEY, DEVELOPER_KEY, USER_KEY,
};
use futures_util::StreamExt;
use reqwest::Method;
use serde_json::json;

fn soak_duration() -> Duration {
    let seconds = std::env::var("PA_SOAK_SECS")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(20);
    Duration::from_secs(seconds)
}

/// Children of `pid` (running or zombie).
fn children(pid: u32) -> Vec<(u32, char)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|child| {
            let stat = std::fs::read_to_string(format!("/proc/{child}/stat")).ok()?;
            let (_, rest) = stat.rsplit_once(')')?;
            let mut fields = rest.split_whitespace();
            let state = fields.next()?.chars().next()?;
            let parent: u32 = fields.next()?.parse().ok()?;
            (parent == pid).then_some((child, state))
        })
        .collect()
}

#[tokio::test]
async fn triggers_cancels_swaps_and_streams_at_once_leave_nothing_stuck() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let ids: Vec<String> = (0..8).map(|n| format!("soak_{n}")).collect();
    let environments = ids
        .iter()
        .enumerate()
        .map(|(n, id)| {
            let pause = format!("0.{}", 1 + n % 5);
            local(
                id,
                &["sh", "-c", &format!("echo start; sleep {pause}; echo done")],
                30,
            )
        })
        .collect();
    let host = Arc::new(TestHost::start(dir.path(), options(environments)).await);
    let baseline = rss_kib(host.pid());
    let stop = Arc::new(AtomicBool::new(false));
    let started = Arc::new(Mutex::new(Vec::<String>::new()));
    let counts = Arc::new([
        AtomicUsize::new(0), // triggers answered 202
        AtomicUsize::new(0), // cancels
        AtomicUsize::new(0), // swaps
        AtomicUsize::new(0), // streams opened
    ]);
    let mut workers = tokio::task::JoinSet::new();
    for worker in 0..3 {
        let (host, stop, started, counts, ids) = (
            Arc::clone(&host),
            Arc::clone(&stop),
            Arc::clone(&started),
            Arc::clone(&counts),
            ids.clone(),
        );
        workers.spawn(async move {
            let mut n = worker;
            while !stop.load(Ordering::SeqCst) {
                n += 3;
                let chosen: Vec<&String> = ids.iter().skip(n % ids.len()).take(1 + n % 3).collect();
                let (status, body) = trigger(&host, json!({ "environments": chosen })).await;
                match status {
                    202 => {
                        counts[0].fetch_add(1, Ordering::SeqCst);
                        if let Some(id) = body["deployment_id"].as_str() {
                            started.lock().expect("ids").push(id.to_owned());
                        }
                    }
                    // A target already deploying; never 503: a swap leaves no gap.
                    409 => {}
                    other => panic!("trigger answered {other}: {body}"),
                }
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
        });
    }
    {
        let (host, stop, started, counts) = (
            Arc::clone(&host),
            Arc::clone(&stop),
            Arc::clone(&started),
            Arc::clone(&counts),
        );
        workers.spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let latest = started.lock().expect("ids").last().cloned();
                if let Some(id) = latest {
                    let (status, body) = host
                        .call(
                            Method::POST,
                            &format!("/api/deployment/deployments/{id}/cancel"),
                            Some(ADMIN_KEY),
                            None,
                        )
                        .await;
                    assert!(
                        matches!(status, 200 | 202 | 409),
                        "cancel answered {status}: {body}"
                    );
                    counts[1].fetch_add(1, Ordering::SeqCst);
                }
                tokio::time::sleep(Duration::from_millis(400)).await;
            }
        });
    }
    {
        let (host, stop, counts) = (Arc::clone(&host), Arc::clone(&stop), Arc::clone(&counts));
        workers.spawn(async move {
            let mut round = 0;
            while !stop.load(Ordering::SeqCst) {
                round += 1;
                host.install_plugin(if round % 2 == 0 {
                    "deployment_mcp"
                } else {
                    "deployment_mcp_next"
                });
                let (status, body) = host.reload().await;
                assert_eq!(status, 200, "reload {round}: {body}");
                counts[2].fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(700)).await;
            }
        });
    }
    for client in 0..4 {
        let (host, stop, counts) = (Arc::clone(&host), Arc::clone(&stop), Arc::clone(&counts));
        workers.spawn(async move {
            let key = if client % 2 == 0 {
                USER_KEY
            } else {
                DEVELOPER_KEY
            };
            while !stop.load(Ordering::SeqCst) {
                let response = host
                    .client()
                    .get(format!("{}/api/deployment/events", host.url))
                    .header("X-API-Key", key)
                    .send()
                    .await;
                let response = response.expect("the event stream answers");
                // Never a 503: the stream belongs to the host and a swap leaves no gap.
                assert_eq!(response.status(), 200, "the event stream was refused");
                counts[3].fetch_add(1, Ordering::SeqCst);
                let mut body = response.bytes_stream();
                // Read for a while, then leave (a client closing its tab).
                let _ = tokio::time::timeout(Duration::from_millis(1500), async {
                    while body.next().await.is_some() {}
                })
                .await;
            }
        });
    }
    tokio::time::sleep(soak_duration()).await;
    stop.store(true, Ordering::SeqCst);
    while let Some(done) = workers.join_next().await {
        done.expect("a soak worker failed");
    }
    let all: Vec<String> = started.lock().expect("ids").clone();
    eprintln!(
        "soak: {} deployments, {} cancels, {} swaps, {} streams",
        counts[0].load(Ordering::SeqCst),
        counts[1].load(Ordering::SeqCst),
        counts[2].load(Ordering::SeqCst),
        counts[3].load(Ordering::SeqCst)
    );
    assert!(counts[0].load(Ordering::SeqCst) > 5 && counts[2].load(Ordering::SeqCst) > 3);
    // Every deployment ends.
    for id in &all {
        let ended = wait_until(Duration::from_secs(60), || async {
            is_terminal(
                detail(&host, id).await["status"]
                    .as_str()
                    .unwrap_or_default(),
            )
        })
        .await;
        assert!(
            ended,
            "deployment {id} is stuck: {}",
            detail(&host, id).await
        );
    }
    let (_, status) = host.get("/api/deployment/status", Some(USER_KEY)).await;
    assert_eq!(status["status"], "idle", "{status}");
    // Every environment is free again.
    let (code, body) = trigger(&host, json!({})).await;
    assert_eq!(code, 202, "{body}");
    let last = body["deployment_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        wait_until(Duration::from_secs(60), || async {
            is_terminal(
                detail(&host, &last).await["status"]
                    .as_str()
                    .unwrap_or_default(),
            )
        })
        .await
    );
    // No process the triggers started is left, running or unreaped.
    let pid = host.pid();
    let clean = wait_until(Duration::from_secs(10), || async move {
        children(pid).is_empty()
    })
    .await;
    assert!(clean, "processes left under the host: {:?}", children(pid));
    let settled = wait_until(Duration::from_secs(30), || async {
        mapped_plugin_copies(pid).len() == 1
    })
    .await;
    assert!(
        settled,
        "retired copies stay mapped: {:?}",
        mapped_plugin_copies(pid)
    );
    let grown = rss_kib(pid).saturating_sub(baseline);
    eprintln!("soak: RSS grew by {grown} KiB");
    assert!(grown < 64 * 1024, "RSS grew by {grown} KiB");
}
