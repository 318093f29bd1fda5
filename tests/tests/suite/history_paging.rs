//! History paging as a property, in-process: for histories of many shapes (statuses,
//! environments, deployments started in the same millisecond), the pages of `/history` joined
//! are exactly the filtered list, newest first, with no gap and no duplicate, whatever the page
//! size; a cursor that no page gave is a 400 naming the field.

use deployment_mcp_core::{
    deployment::{history_key, HistoryEntry, Phase},
    model::{DeploymentId, EnvironmentId},
    persist::history,
    persist::records::{collection, encode, Records},
};
use plugin_api::Role;
use plugin_guest::{Handler, StoreOp};
use serde_json::Value;

use crate::in_process::{body, request, start, InProcess};
use e2e::Lcg;

const ENVIRONMENTS: [&str; 3] = ["alpha", "beta", "gamma"];
const STATUSES: [Phase; 3] = [Phase::Completed, Phase::Failed, Phase::Cancelled];

/// Whether an entry passes a filter, as the test computes it on its own.
type Matcher = Box<dyn Fn(&HistoryEntry) -> bool>;

/// Writes `count` finished deployments the way the coordinator records them (entry and indexes
/// in one batch) and returns them, keyed by their history key.
async fn generate(records: &Records, seed: u64, count: usize) -> Vec<(String, HistoryEntry)> {
    let mut random = Lcg(seed);
    let mut created_ms = 1_700_000_000_000u64;
    let mut written = Vec::new();
    for n in 0..count {
        // Often the same millisecond as the one before: the id orders those.
        created_ms += random.next(3);
        let status = STATUSES[random.next(3) as usize];
        let environments: Vec<EnvironmentId> = ENVIRONMENTS
            .iter()
            .filter(|_| random.next(2) == 0)
            .map(|name| EnvironmentId::parse(name).expect("an id"))
            .collect();
        let deployment_id =
            DeploymentId::parse(&format!("dep-{created_ms}-{n:08x}")).expect("an id");
        let entry = HistoryEntry {
            deployment_id: deployment_id.clone(),
            status,
            progress: 100,
            version: format!("1.0.{n}"),
            triggered_by: "property".into(),
            environment_count: environments.len(),
            environments,
            failed_environments: Vec::new(),
            failed_count: 0,
            created_at: "2023-11-14T22:13:20.000Z".parse().expect("a time"),
            finished_at: None,
            duration_ms: None,
            retry_of: None,
            error: None,
        };
        let key = history_key(created_ms, &deployment_id);
        let mut ops = vec![StoreOp::put(
            collection::HISTORY,
            &key,
            encode(collection::HISTORY, &key, &entry).expect("encode the entry"),
        )];
        ops.extend(history::created_ops(&key, &entry, &entry.environments).expect("index ops"));
        let conflict = records.apply(ops).await.expect("write the entry");
        assert!(conflict.is_none(), "{conflict:?}");
        written.push((key, entry));
    }
    written.sort_by(|a, b| a.0.cmp(&b.0));
    written
}

async fn get(plugin: &InProcess, query: &str) -> (u16, Value) {
    let mut request = request("GET", "/history", None, Some(Role::Developer));
    request.query = query.to_owned();
    let response = plugin.api.handle(request.into()).await;
    (response.status, body(&response))
}

#[tokio::test]
async fn pages_joined_are_the_filtered_newest_first_list() {
    for (seed, count) in [(1, 0), (2, 1), (3, 37), (4, 120)] {
        let plugin = start(Vec::new(), serde_json::json!({})).await;
        let records = Records::new(plugin.host.host.clone());
        let all = generate(&records, seed, count).await;
        let mut filters: Vec<(String, Matcher)> = vec![("".into(), Box::new(|_| true))];
        for status in STATUSES {
            filters.push((
                format!("status={}", status.as_str()),
                Box::new(move |entry| entry.status == status),
            ));
        }
        for environment in ENVIRONMENTS {
            filters.push((
                format!("environment={environment}"),
                Box::new(move |entry| entry.environments.iter().any(|e| e == environment)),
            ));
        }
        for (filter, matches) in &filters {
            let expected: Vec<&str> = all
                .iter()
                .filter(|(_, entry)| matches(entry))
                .map(|(_, entry)| entry.deployment_id.as_str())
                .collect();
            for limit in [1, 3, 7, 50, 500] {
                let mut joined: Vec<String> = Vec::new();
                let mut cursor: Option<String> = None;
                let mut pages = 0;
                loop {
                    let mut query = format!("limit={limit}");
                    if !filter.is_empty() {
                        query.push('&');
                        query.push_str(filter);
                    }
                    if let Some(cursor) = &cursor {
                        query.push_str(&format!("&cursor={cursor}"));
                    }
                    let (status, page) = get(&plugin, &query).await;
                    assert_eq!(status, 200, "{query}: {page}");
                    let context = format!("seed {seed}, {count} entries, {query}");
                    assert_eq!(
                        page["total_count"].as_u64(),
                        Some(expected.len() as u64),
                        "{context}"
                    );
                    let entries = page["history"].as_array().expect("a list");
                    assert!(entries.len() <= limit, "{context}");
                    joined.extend(
                        entries.iter().map(|entry| {
                            entry["deployment_id"].as_str().expect("an id").to_owned()
                        }),
                    );
                    pages += 1;
                    assert!(pages <= count + 1, "{context}: the pages never end");
                    match page["next_cursor"].as_str() {
                        Some(next) => {
                            assert!(!entries.is_empty(), "{context}: an empty page goes on");
                            cursor = Some(next.to_owned());
                        }
                        None => break,
                    }
                }
                assert_eq!(
                    joined, expected,
                    "seed {seed}, {count} entries, {filter}, limit {limit}"
                );
            }
        }
    }
}

#[tokio::test]
async fn a_cursor_no_page_gave_is_a_400_naming_the_field() {
    let plugin = start(Vec::new(), serde_json::json!({})).await;
    for cursor in [
        "garbage",
        "",
        "123/dep-1-00000000",
        "00000000000000000001/not-a-deployment",
        "0000000000000000000a/dep-1-00000000",
    ] {
        let (status, answer) = get(&plugin, &format!("cursor={cursor}")).await;
        assert_eq!(status, 400, "{cursor:?}: {answer}");
        assert_eq!(answer["field"], "cursor", "{cursor:?}: {answer}");
    }
    for query in [
        "limit=0",
        "limit=501",
        "limit=x",
        "status=nope",
        "environment=Bad Id!",
    ] {
        let (status, answer) = get(&plugin, query).await;
        assert_eq!(status, 400, "{query}: {answer}");
        assert!(answer["field"].is_string(), "{query}: {answer}");
    }
}
