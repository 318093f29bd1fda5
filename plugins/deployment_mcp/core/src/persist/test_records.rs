//! What the tests of several nodes write and read in the store directly: the host's node
//! records, and a run's entry and claims as another node leaves them.

use plugin_guest::Host;
use serde_json::json;

use super::records::collection;

/// Writes node `node`'s record as the host keeps it (boot `<node>-boot`), in `state`.
pub fn put_node_record(host: &Host, node: &str, state: &str) {
    let record = json!({"node_id": node, "boot_id": format!("{node}-boot"), "beat": 1,
        "heartbeat_at": "2026-01-01T00:00:00.000Z", "state": state, "lease_secs": 3});
    host.store_put(collection::CLUSTER_NODES, node, &record.to_string())
        .expect("stored");
}

/// Replaces a deployment's running entry, as a node that took the run over does.
pub fn put_running_entry(host: &Host, deployment_id: &str, entry: &str) {
    host.store_put(collection::ACTIVE, deployment_id, entry)
        .expect("stored");
}

/// A deployment's running entry as stored.
pub fn running_entry(host: &Host, deployment_id: &str) -> Option<String> {
    host.store_get(collection::ACTIVE, deployment_id)
        .expect("readable")
}

/// An environment's claim as stored.
pub fn claim(host: &Host, environment: &str) -> Option<String> {
    host.store_get(collection::CLAIMS, environment)
        .expect("readable")
}
