//! The scale guard in CI: counts, not times. One deployment of 1,000 webhook environments and
//! one of 4,000, through the plugin's handler on `LocalHost` against a real HTTP target on
//! loopback; the store calls, rows and bytes each needs per environment must stay level
//! (a step whose cost per environment grows with the count, as a rewrite of everything on every
//! change does, multiplies them by ~4 here). Then reads of a long log: a detail, a tail and a
//! page read only a bounded number of rows, however long the log is; the lists (history,
//! status) read the same bytes whatever a deployment's size. The times are for
//! `benches/scale.sh`.

use std::time::Duration;

use e2e::targets::{Behaviour, Target};
use plugin_api::Role;
use plugin_local_host::Event;
use record_store::StoreCounts;
use serde_json::{json, Value};
use tokio::sync::broadcast;

use crate::in_process::{start, InProcess};

/// How much more per environment the larger deployment may need before this fails: constant
/// costs make the small one's share larger, batching by time makes counts vary by a few percent,
/// and a quadratic step would need ~4×.
const LEVEL: f64 = 1.5;

fn webhook(n: usize, url: &str) -> Value {
    json!({"environment_id": format!("hook_{n:05}"), "environment_type": "docker_container",
           "connection_method": "webhook", "webhook_url": url, "timeout": 30})
}

async fn finished(events: &mut broadcast::Receiver<Event>, id: &str) {
    let bound = tokio::time::timeout(Duration::from_secs(300), async {
        loop {
            let event = match events.recv().await {
                Ok(event) => event,
                // Many environment events: the ones missed do not matter, only the last phase.
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => panic!("the event stream closed"),
            };
            if event.kind == "deployment.phase"
                && event.data["deployment_id"] == id
                && matches!(
                    event.data["status"].as_str(),
                    Some("completed" | "failed" | "cancelled" | "interrupted")
                )
            {
                assert_eq!(event.data["status"], "completed", "{}", event.data);
                return;
            }
        }
    });
    bound.await.expect("the deployment ended within the bound");
}

/// Deploys environments `0..count` and returns what the store did for it, the detail read
/// included.
async fn deploy(plugin: &InProcess, count: usize) -> StoreCounts {
    let mut events = plugin.host.events.subscribe();
    let before = plugin.host.store_counts();
    let ids: Vec<String> = (0..count).map(|n| format!("hook_{n:05}")).collect();
    let (status, answer) = plugin
        .call(
            "POST",
            "/trigger-local",
            Some(json!({ "environments": ids })),
            Role::Admin,
        )
        .await;
    assert_eq!(status, 202, "{answer}");
    let id = answer["deployment_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    finished(&mut events, &id).await;
    let (status, detail) = plugin
        .call("GET", &format!("/deployments/{id}"), None, Role::Admin)
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        detail["results"].as_array().map(Vec::len),
        Some(count),
        "every environment has its result"
    );
    plugin.host.store_counts().since(&before)
}

fn per_environment(counts: &StoreCounts, environments: usize) -> [(&'static str, f64); 5] {
    let per = |value: u64| value as f64 / environments as f64;
    [
        ("calls", per(counts.calls)),
        ("rows read", per(counts.rows_read)),
        ("bytes read", per(counts.bytes_read)),
        ("rows written", per(counts.rows_written)),
        ("bytes written", per(counts.bytes_written)),
    ]
}

#[tokio::test]
async fn store_work_per_environment_stays_level_from_1000_to_4000_environments() {
    let target = Target::start(Behaviour::default()).await;
    let url = target.url("/webhook/deploy");
    let list = (0..4000).map(|n| webhook(n, &url)).collect();
    let plugin = start(list, json!({ "max_parallel": 64 })).await;

    let small = deploy(&plugin, 1000).await;
    let small_lists = bytes_read_by_lists(&plugin).await;
    let large = deploy(&plugin, 4000).await;
    let large_lists = bytes_read_by_lists(&plugin).await;
    println!("bytes read per deployment in the history by /history?limit=1 and /status: {small_lists:?} after 1,000 environments, {large_lists:?} after 4,000");
    for (small, large) in [
        (small_lists.0, large_lists.0),
        (small_lists.1, large_lists.1),
    ] {
        assert!(small > 0, "the list read nothing");
        assert!(
            large <= small + small / 10,
            "a list's read per deployment grew from {small} to {large} bytes with 4x the environments"
        );
    }
    let small = per_environment(&small, 1000);
    let large = per_environment(&large, 4000);
    for ((what, small), (_, large)) in small.iter().zip(large.iter()) {
        println!("{what} per environment: {small:.1} with 1,000, {large:.1} with 4,000");
        assert!(
            *small > 0.0 || *what == "rows read" || *what == "bytes read",
            "{what}: nothing counted"
        );
        assert!(
            *large <= small * LEVEL + 1.0,
            "{what} per environment grew from {small:.1} to {large:.1} with 4x the environments"
        );
    }
}

/// Bytes the store read for `GET /history?limit=1` and for a fresh `GET /status`, per
/// deployment in the history (a short history is read whole: its first page).
async fn bytes_read_by_lists(plugin: &InProcess) -> (u64, u64) {
    // The end event goes out as the run ends; its last writes (freeing the environments, the
    // active index) may land just after. Measure the lists of a host at rest.
    let settled = tokio::time::timeout(std::time::Duration::from_secs(30), async {
        loop {
            let (_, status) = plugin.call("GET", "/status", None, Role::Developer).await;
            if status["active"].as_array().is_some_and(Vec::is_empty) {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(settled.is_ok(), "no deployment is left running");
    // `/status` is then served from its cache, which expires after 500 ms (STATUS_MAX_AGE):
    // past that, the read below rebuilds it from the store, as the measure needs.
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    let (_, history) = plugin
        .call("GET", "/history?limit=1", None, Role::Developer)
        .await;
    let deployments = history["total_count"].as_u64().unwrap_or(0).max(1);
    let mut read = [0; 2];
    for (path, bytes) in ["/history?limit=1", "/status"].into_iter().zip(&mut read) {
        let before = plugin.host.store_counts();
        let (status, answer) = plugin.call("GET", path, None, Role::Developer).await;
        assert_eq!(status, 200, "{path}: {answer}");
        *bytes = plugin.host.store_counts().since(&before).bytes_read / deployments;
    }
    (read[0], read[1])
}

/// Lists name a large deployment's first 100 environments and count them all; the indexes
/// behind the filters, the dashboard and retention still cover every one of them.
#[tokio::test]
async fn lists_name_the_first_environments_and_the_indexes_hold_them_all() {
    let target = Target::start(Behaviour::default()).await;
    let url = target.url("/webhook/deploy");
    let list = (0..250).map(|n| webhook(n, &url)).collect();
    let plugin = start(list, json!({ "max_parallel": 64 })).await;
    deploy(&plugin, 250).await;
    let (_, page) = plugin
        .call("GET", "/history?limit=1", None, Role::Developer)
        .await;
    let entry = &page["history"][0];
    let id = entry["deployment_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert_eq!(entry["environment_count"], 250, "{entry}");
    assert_eq!(entry["failed_count"], 0, "{entry}");
    let listed: Vec<&str> = entry["environments"]
        .as_array()
        .map(|ids| ids.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let first: Vec<String> = (0..100).map(|n| format!("hook_{n:05}")).collect();
    assert_eq!(listed, first, "the first 100, in the order requested");
    let (_, status) = plugin.call("GET", "/status", None, Role::User).await;
    assert_eq!(status["latest"]["deployment_id"], id.as_str());
    assert_eq!(status["latest"]["environment_count"], 250);

    // The last environment, beyond those listed: the history's filter and the dashboard.
    assert_eq!(
        history_of(&plugin, "hook_00249").await,
        (1, vec![id.clone()])
    );
    let (_, dashboard) = plugin
        .call("GET", "/dashboard", None, Role::Developer)
        .await;
    let last = dashboard["environments"]
        .as_array()
        .and_then(|all| {
            all.iter()
                .find(|environment| environment["environment_id"] == "hook_00249")
        })
        .map(|environment| environment["last_deployment"].clone())
        .unwrap_or_default();
    assert_eq!(last["deployment_id"], id.as_str(), "{last}");

    // A newer deployment, then retention keeping one: every index entry of the old one goes.
    deploy(&plugin, 1).await;
    let records = deployment_mcp_core::persist::records::Records::new(plugin.host.host.clone());
    let settings = deployment_mcp_core::settings::Settings::from_json(
        &json!({ "retention_max_deployments": 1 }),
    )
    .expect("settings");
    let pruned = deployment_mcp_core::persist::retention::prune(
        &records,
        &settings,
        std::time::SystemTime::now(),
    )
    .await
    .expect("prune");
    assert_eq!(pruned.deployments, 1);
    let (_, ids) = history_of(&plugin, "hook_00000").await;
    assert!(!ids.contains(&id), "{ids:?}");
    assert_eq!(history_of(&plugin, "hook_00249").await, (0, Vec::new()));
}

/// The history filtered by `environment`: its count and the ids on its first page.
async fn history_of(plugin: &InProcess, environment: &str) -> (u64, Vec<String>) {
    let path = format!("/history?environment={environment}");
    let (status, page) = plugin.call("GET", &path, None, Role::Developer).await;
    assert_eq!(status, 200, "{page}");
    let ids = page["history"]
        .as_array()
        .map(|all| {
            all.iter()
                .filter_map(|entry| entry["deployment_id"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    (page["total_count"].as_u64().unwrap_or(u64::MAX), ids)
}

/// A deployment whose one environment writes `lines` lines of output.
async fn long_log(plugin: &InProcess, lines: usize) -> String {
    let mut events = plugin.host.events.subscribe();
    let (status, answer) = plugin
        .call(
            "POST",
            "/trigger-local",
            Some(json!({ "environments": ["chatty"] })),
            Role::Admin,
        )
        .await;
    assert_eq!(status, 202, "{answer}");
    let id = answer["deployment_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    finished(&mut events, &id).await;
    let (_, page) = plugin
        .call(
            "GET",
            &format!("/deployments/{id}/logs?tail=1"),
            None,
            Role::Admin,
        )
        .await;
    assert!(
        page["stored_lines"].as_u64().unwrap_or(0) >= lines as u64,
        "the whole output is stored: {}",
        page["stored_lines"]
    );
    id
}

/// Rows a read of `path` needs.
async fn rows_read_by(plugin: &InProcess, path: &str) -> (u64, Value) {
    let before = plugin.host.store_counts();
    let (status, answer) = plugin.call("GET", path, None, Role::Admin).await;
    assert_eq!(status, 200, "{path}: {answer}");
    (plugin.host.store_counts().since(&before).rows_read, answer)
}

#[tokio::test]
async fn reads_of_a_long_log_read_only_the_chunks_they_return() {
    let chatty = |lines: usize| {
        e2e::scenario::local("chatty", &["sh", "-c", &format!("seq 1 {lines}")], 120)
    };
    let mut rows = Vec::new();
    for lines in [4_000usize, 40_000] {
        let plugin = start(vec![chatty(lines)], json!({})).await;
        let id = long_log(&plugin, lines).await;
        let (detail, answer) = rows_read_by(&plugin, &format!("/deployments/{id}")).await;
        assert!(
            answer["logs_truncated"] == true,
            "{}",
            answer["logs_truncated"]
        );
        assert_eq!(answer["logs"].as_array().map(Vec::len), Some(200));
        let (tail, answer) =
            rows_read_by(&plugin, &format!("/deployments/{id}/logs?tail=50")).await;
        assert_eq!(answer["lines"].as_array().map(Vec::len), Some(50));
        let middle = lines / 2;
        let (page, answer) = rows_read_by(
            &plugin,
            &format!("/deployments/{id}/logs?from={middle}&limit=100"),
        )
        .await;
        let page_lines = answer["lines"].as_array().cloned().unwrap_or_default();
        assert_eq!(page_lines.len(), 100);
        assert_eq!(answer["first_line"], middle);
        assert_eq!(answer["next_from"], middle + 100);
        // `seq` numbers its lines from 1; the log holds a few lines before them.
        let numbers: Vec<u64> = page_lines
            .iter()
            .filter_map(|line| line["line"].as_str()?.parse().ok())
            .collect();
        assert_eq!(numbers.len(), 100, "the page is the script's lines");
        assert!(
            numbers.windows(2).all(|pair| pair[1] == pair[0] + 1),
            "consecutive lines"
        );
        println!("{lines} lines: rows read by the detail {detail}, the tail {tail}, a page {page}");
        rows.push((detail, tail, page));
    }
    // Ten times the log: the same reads (a binary search adds a few for the page).
    let (short, long) = (rows[0], rows[1]);
    assert!(long.0 <= short.0 + 8, "detail: {short:?} → {long:?}");
    assert!(long.1 <= short.1 + 8, "tail: {short:?} → {long:?}");
    assert!(long.2 <= short.2 + 12, "page: {short:?} → {long:?}");
}
