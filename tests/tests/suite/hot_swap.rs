//! Hot swap: under load, with slow requests in flight, with broken files, by file change and
//! SIGHUP, and many times over (copies must really be unloaded).

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use e2e::{
    anon_rss_kib, mapped_plugin_copies, rss_kib, scenario::Isolation, wait_until, HostOptions,
    Signal, TestHost, USER_KEY,
};

fn temp() -> tempfile::TempDir {
    tempfile::tempdir().expect("temporary directory")
}

const CURRENT: &str = "0.1.0";
const NEXT: &str = "0.1.1-next";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn swapping_under_load_fails_no_request() {
    let swapped = swap_under_load(Isolation::InProcess).await;
    assert!(
        swapped.children.iter().all(Option::is_none),
        "in-process copies have no child process: {:?}",
        swapped.children
    );
}

/// What [`swap_under_load`] leaves: the host, still running, and the plugin's child process
/// before the first swap and after each one (`None` in-process).
pub(crate) struct SwappedUnderLoad {
    pub(crate) host: Arc<TestHost>,
    pub(crate) children: Vec<Option<u32>>,
    /// Dropped after the host (fields drop in order).
    _dir: tempfile::TempDir,
}

/// Swaps in [`swap_under_load`].
pub(crate) const SWAPS_UNDER_LOAD: usize = 24;

/// 50 clients read the status route while the plugin, running as `isolation` says, is swapped
/// [`SWAPS_UNDER_LOAD`] times between two genuine builds: no request fails, both builds serve,
/// every swap is counted.
pub(crate) async fn swap_under_load(isolation: Isolation) -> SwappedUnderLoad {
    let dir = temp();
    let host = Arc::new(TestHost::start(dir.path(), isolation.apply(HostOptions::default())).await);
    let mut children = vec![isolation.check(&host).await];
    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let versions_seen = Arc::new(std::sync::Mutex::new(std::collections::BTreeSet::new()));

    let mut clients = Vec::new();
    for _ in 0..50 {
        let (host, stop, served, failures, versions) = (
            Arc::clone(&host),
            Arc::clone(&stop),
            Arc::clone(&served),
            Arc::clone(&failures),
            Arc::clone(&versions_seen),
        );
        clients.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let (status, body) = host.get("/api/deployment/status", Some(USER_KEY)).await;
                if status == 200 {
                    served.fetch_add(1, Ordering::Relaxed);
                    if let Some(version) = body["plugin_version"].as_str() {
                        versions
                            .lock()
                            .expect("versions")
                            .insert(version.to_owned());
                    }
                } else {
                    failures
                        .lock()
                        .expect("failures")
                        .push(format!("{status} {body}"));
                }
            }
        }));
    }

    // Let the load build up, then swap back and forth between two genuine builds.
    assert!(
        wait_until(Duration::from_secs(10), || async {
            served.load(Ordering::Relaxed) > 500
        })
        .await
    );
    for swap in 0..SWAPS_UNDER_LOAD {
        let (library, version) = if swap % 2 == 0 {
            ("deployment_mcp_next", NEXT)
        } else {
            ("deployment_mcp", CURRENT)
        };
        host.install_plugin(library);
        let before = served.load(Ordering::Relaxed);
        let (status, body) = host.reload().await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["plugin"]["version"], version);
        // Keep the load on between swaps so requests straddle every switch.
        assert!(
            wait_until(Duration::from_secs(10), || async {
                served.load(Ordering::Relaxed) > before + 200
            })
            .await,
            "requests keep being served after swap {swap}"
        );
        children.push(isolation.check(&host).await);
    }
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.await.expect("client task");
    }

    let failures = failures.lock().expect("failures").clone();
    assert!(
        failures.is_empty(),
        "{} failed requests, first: {:?}",
        failures.len(),
        failures.first()
    );
    let versions = versions_seen.lock().expect("versions").clone();
    assert!(
        versions.contains(CURRENT) && versions.contains(NEXT),
        "both builds served: {versions:?}"
    );
    let plugin = host.plugin_status().await;
    assert_eq!(plugin["version"], CURRENT);
    assert_eq!(plugin["swaps"], SWAPS_UNDER_LOAD as u64);
    eprintln!(
        "served {} requests across {SWAPS_UNDER_LOAD} swaps ({})",
        served.load(Ordering::Relaxed),
        isolation.as_str()
    );
    SwappedUnderLoad {
        host,
        children,
        _dir: dir,
    }
}

#[tokio::test]
async fn a_request_in_flight_during_a_swap_completes_on_its_copy() {
    let dir = temp();
    let host = Arc::new(
        TestHost::start(
            dir.path(),
            HostOptions {
                plugin: Some("fixture_probe"),
                ..Default::default()
            },
        )
        .await,
    );
    // The request stays in the plugin until the test creates this file.
    let gate = dir.path().join("release-the-held-request");
    let held = {
        let host = Arc::clone(&host);
        let path = format!("/api/deployment/held?gate={}", gate.display());
        tokio::spawn(async move { host.get(&path, Some(USER_KEY)).await })
    };
    assert!(
        host.wait_for_log("held request started", Duration::from_secs(10))
            .await,
        "the held request reached the plugin; log:\n{}",
        host.logs()
    );

    host.install_plugin("deployment_mcp");
    let (status, body) = host.reload().await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["plugin"]["version"], CURRENT);
    // New requests go to the new build at once, while the held one is still in the old copy.
    let (status, body) = host.get("/api/deployment/status", Some(USER_KEY)).await;
    assert_eq!(
        (status, body["plugin_version"].as_str()),
        (200, Some(CURRENT))
    );
    assert!(
        !held.is_finished(),
        "the held request was still in flight across the swap"
    );

    std::fs::write(&gate, "").expect("open the gate");
    let (status, body) = held.await.expect("held request task");
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["version"], "0.0.1-probe",
        "answered by the copy it started on"
    );
    assert_eq!(host.plugin_status().await["swaps"], 1);
}

#[tokio::test]
async fn a_broken_file_is_refused_and_the_old_build_keeps_serving() {
    let dir = temp();
    let host = TestHost::start(dir.path(), HostOptions::default()).await;

    std::fs::write(&host.plugin_file, b"\x7fELF but not really a library").expect("write junk");
    let (status, body) = host.reload().await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"], "reload_failed");
    assert!(
        body["message"]
            .as_str()
            .unwrap_or_default()
            .contains("not a loadable library"),
        "{body}"
    );

    host.install_plugin("fixture_wrong_abi");
    let (status, body) = host.reload().await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap_or_default()
            .contains("2.0.0"),
        "{body}"
    );

    host.install_plugin("fixture_failing_start");
    let (status, body) = host.reload().await;
    assert_eq!(status, 422, "{body}");

    std::fs::remove_file(&host.plugin_file).expect("remove the plugin file");
    let (status, body) = host.reload().await;
    assert_eq!(status, 422, "{body}");

    let (status, body) = host.get("/api/deployment/status", Some(USER_KEY)).await;
    assert_eq!(
        (status, body["plugin_version"].as_str()),
        (200, Some(CURRENT))
    );
    let plugin = host.plugin_status().await;
    assert_eq!(plugin["state"], "active");
    assert_eq!(plugin["swaps"], 0);
    assert!(
        plugin["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("no plugin file")),
        "{plugin}"
    );
}

/// Swaps in the leak test (`PA_SWAP_ROUNDS` overrides it).
fn swap_rounds() -> usize {
    std::env::var("PA_SWAP_ROUNDS")
        .ok()
        .and_then(|rounds| rounds.parse().ok())
        .unwrap_or(1000)
}

#[tokio::test]
async fn a_thousand_reloads_leave_one_copy_mapped_and_memory_flat() {
    let dir = temp();
    let host = TestHost::start(dir.path(), HostOptions::default()).await;
    // A few swaps first, so that one-time allocations of the host (first retirement, pools,
    // the store's page cache) are in the baseline.
    for _ in 0..5 {
        assert_eq!(host.reload().await.0, 200);
    }
    assert!(
        wait_until(Duration::from_secs(10), || async {
            mapped_plugin_copies(host.pid()).len() == 1
        })
        .await
    );
    let baseline = anon_rss_kib(host.pid());
    let baseline_rss = rss_kib(host.pid());
    let rounds = swap_rounds();
    let started = std::time::Instant::now();
    for round in 0..rounds {
        let library = if round % 2 == 0 {
            "deployment_mcp_next"
        } else {
            "deployment_mcp"
        };
        host.install_plugin(library);
        let (status, body) = host.reload().await;
        assert_eq!(status, 200, "reload {round}: {body}");
        assert_eq!(
            host.get("/api/deployment/status", Some(USER_KEY)).await.0,
            200
        );
    }
    let settled = wait_until(Duration::from_secs(15), || async {
        mapped_plugin_copies(host.pid()).len() <= 2
    })
    .await;
    let mapped = mapped_plugin_copies(host.pid());
    assert!(
        settled,
        "at most one copy besides the active one stays mapped: {mapped:#?}"
    );
    // Memory is compared like the baseline: with the retired copy gone. It is retired in the
    // background, so wait for it (bounded) instead of counting its pages as growth.
    wait_until(Duration::from_secs(15), || async {
        mapped_plugin_copies(host.pid()).len() == 1
    })
    .await;
    let grown_kib = anon_rss_kib(host.pid()).saturating_sub(baseline);
    eprintln!(
        "anonymous RSS grew by {grown_kib} KiB over {rounds} reloads ({:.2} KiB per swap; all of RSS by {} KiB, {} copies mapped, {:.0} ms per swap)",
        grown_kib as f64 / rounds as f64,
        rss_kib(host.pid()) as i64 - baseline_rss as i64,
        mapped_plugin_copies(host.pid()).len(),
        started.elapsed().as_millis() as f64 / rounds as f64
    );
    // Each copy's heap is unmapped with it: what is left is the host's own bookkeeping. Pages
    // of the mapped copy's file are not counted: which of them are resident depends on what
    // the requests ran, not on what the swaps left behind.
    assert!(
        grown_kib < 8 * 1024,
        "anonymous RSS grew by {grown_kib} KiB over {rounds} reloads"
    );
    let copies_on_disk = std::fs::read_dir(dir.path().join("data/plugin-copies"))
        .map(|entries| entries.count())
        .unwrap_or(0);
    assert!(
        copies_on_disk <= 2,
        "retired copies are deleted, {copies_on_disk} left"
    );
    assert_eq!(host.plugin_status().await["swaps"], rounds as u64 + 5);
}

#[tokio::test]
async fn a_changed_file_is_picked_up_by_the_watcher() {
    let dir = temp();
    let host = TestHost::start(
        dir.path(),
        HostOptions {
            watch: true,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(host.plugin_status().await["version"], CURRENT);
    host.install_plugin("deployment_mcp_next");
    let swapped = wait_until(Duration::from_secs(15), || async {
        host.plugin_status().await["version"] == NEXT
    })
    .await;
    assert!(
        swapped,
        "the watcher swapped in the new build; log:\n{}",
        host.logs()
    );
    let (status, body) = host.get("/api/deployment/status", Some(USER_KEY)).await;
    assert_eq!((status, body["plugin_version"].as_str()), (200, Some(NEXT)));
}

#[tokio::test]
async fn sighup_reloads_the_plugin() {
    let dir = temp();
    let host = TestHost::start(dir.path(), HostOptions::default()).await;
    host.install_plugin("deployment_mcp_next");
    host.signal(Signal::SIGHUP);
    let swapped = wait_until(Duration::from_secs(15), || async {
        let plugin = host.plugin_status().await;
        plugin["version"] == NEXT && plugin["swaps"] == 1
    })
    .await;
    assert!(swapped, "SIGHUP swapped in the new build");
}

#[tokio::test]
async fn a_copy_that_stays_loaded_after_closing_keeps_its_heap() {
    let dir = temp();
    let host = TestHost::start(
        dir.path(),
        HostOptions {
            plugin: Some("fixture_resident"),
            ..HostOptions::default()
        },
    )
    .await;
    assert_eq!(host.reload().await.0, 200);
    assert!(
        host.wait_for_log("stayed loaded after closing", Duration::from_secs(15))
            .await,
        "the host noticed the closed copy is still loaded:\n{}",
        host.logs()
    );
    assert!(
        !host
            .logs()
            .contains("unmapping the closed copy's heap failed"),
        "{}",
        host.logs()
    );
    // Both copies are mapped, and the new one serves.
    assert_eq!(mapped_plugin_copies(host.pid()).len(), 2);
    assert_eq!(
        host.get("/api/deployment/status", Some(USER_KEY)).await.0,
        200
    );
    // The ordinary plugin is really unloaded, so it never takes this path: two more swaps
    // retire the second resident copy (kept) and then an ordinary one (unloaded).
    host.install_plugin("deployment_mcp");
    assert_eq!(host.reload().await.0, 200);
    assert_eq!(host.reload().await.0, 200);
    let retired = wait_until(Duration::from_secs(15), || async {
        host.logs()
            .matches("old plugin copy shut down and unloaded")
            .count()
            == 3
    })
    .await;
    assert!(retired, "three copies retired:\n{}", host.logs());
    assert_eq!(
        host.logs().matches("stayed loaded after closing").count(),
        2,
        "only the two resident copies stayed loaded:\n{}",
        host.logs()
    );
    assert_eq!(
        host.get("/api/deployment/status", Some(USER_KEY)).await.0,
        200
    );
}
