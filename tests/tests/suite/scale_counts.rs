//! The scale guard in CI: counts, not times. One deployment of 1,000 webhook environments and
//! one of 4,000, through the plugin's handler on `LocalHost` against a real HTTP target on
//! loopback; the store calls, rows and bytes each needs per environment must stay level
//! (a step whose cost per environment grows with the count, as a rewrite of everything on every
//! change does, multiplies them by ~4 here). Then reads of a long log: a detail, a tail and a
//! page read only a bounded number of rows, however long the log is. The times are for
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
    let large = deploy(&plugin, 4000).await;
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
