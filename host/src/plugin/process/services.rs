//! The host services a child's plugin calls, run against the host's store and event bus: the
//! same operations the in-process bridge offers, from owned messages instead of ABI borrows.

use std::{
    collections::BTreeSet,
    sync::{Arc, Mutex},
};

use plugin_api::{LogLevel, StoreCondition, StoreWrite};
use record_store::{Op, RecordStore};

use super::frame::{ServiceOp, ServiceResult, StoreOpFrame};
use crate::services::events::{EventBus, UserView};

/// What one child may use: the store, the bus, and what makes its boot id.
pub struct ChildServices {
    pub plugin: String,
    pub store: Arc<dyn RecordStore>,
    pub bus: Arc<EventBus>,
    /// The child's sequence in its slot (its copy's), which its boot id carries.
    pub sequence: u64,
    /// The slot's children that are alive (see the module documentation).
    pub live: Arc<LiveChildren>,
}

/// The children of one slot that have not been reaped yet: the one serving and any older one
/// still finishing its runs after a swap. A child is in it from before it starts until its
/// exit has been read, so a child started after a crash never sees the dead one in it.
#[derive(Default)]
pub struct LiveChildren {
    sequences: Mutex<BTreeSet<u64>>,
}

impl LiveChildren {
    pub fn insert(&self, sequence: u64) {
        self.lock().insert(sequence);
    }

    pub fn remove(&self, sequence: u64) {
        self.lock().remove(&sequence);
    }

    fn sequences(&self) -> Vec<u64> {
        self.lock().iter().copied().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeSet<u64>> {
        self.sequences
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The boot id of a slot's child: the host's, the plugin's name and the child's sequence, so
/// no two children of any host ever share one.
fn child_boot_id(host_boot: &str, plugin: &str, sequence: u64) -> String {
    format!("{host_boot}.{plugin}-{sequence}")
}

/// Where the host writes its lifecycle record (`server::Lifecycle`).
const LIFECYCLE: (&str, &str) = ("host", "lifecycle");

impl ChildServices {
    pub fn log(&self, level: u8, source: &str, message: &str) {
        let level = match level {
            0 => LogLevel::Error,
            1 => LogLevel::Warn,
            2 => LogLevel::Info,
            3 => LogLevel::Debug,
            _ => LogLevel::Trace,
        };
        crate::plugin::bridge::log_record(&self.plugin, level, source, message);
    }

    /// Runs one call. Store calls block on SQLite: the caller runs this on the blocking pool.
    pub fn execute(&self, op: ServiceOp) -> ServiceResult {
        let failed = |error: record_store::StoreError| ServiceResult::Failed(error.to_string());
        match op {
            ServiceOp::Publish {
                kind,
                data,
                user_data,
            } => {
                let view = match user_data {
                    None => UserView::Same,
                    Some(Some(view)) => UserView::Redacted(view),
                    Some(None) => UserView::Hidden,
                };
                ServiceResult::Published(self.bus.publish_views(&kind, data, view))
            }
            ServiceOp::Put {
                collection,
                key,
                value,
            } => match self.store.put(&collection, &key, &value) {
                Ok(()) => ServiceResult::Done,
                Err(error) => failed(error),
            },
            ServiceOp::Get { collection, key } => match self.store.get(&collection, &key) {
                Ok(value) if (collection.as_str(), key.as_str()) == LIFECYCLE => {
                    ServiceResult::Value(value.map(|record| self.lifecycle_view(record)))
                }
                Ok(value) => ServiceResult::Value(value),
                Err(error) => failed(error),
            },
            ServiceOp::Delete { collection, key } => match self.store.delete(&collection, &key) {
                Ok(existed) => ServiceResult::Deleted(existed),
                Err(error) => failed(error),
            },
            ServiceOp::List {
                collection,
                after,
                limit,
            } => match self.store.list(&collection, after.as_deref(), limit) {
                Ok(rows) => ServiceResult::Rows(rows),
                Err(error) => failed(error),
            },
            ServiceOp::AuditQuery { query } => {
                match record_store::audit::page_json_of(&*self.store, &query) {
                    Ok(page) => ServiceResult::Text(page),
                    Err(message) => ServiceResult::Failed(message),
                }
            }
            ServiceOp::Apply { ops, audit } => {
                let ops: Result<Vec<Op<'_>>, String> = ops.iter().map(op_of).collect();
                let drafts = record_store::audit::read_drafts(audit.iter().map(String::as_str));
                match ops.and_then(|ops| drafts.map(|drafts| (ops, drafts))) {
                    Ok((ops, drafts)) => match self.store.apply_audited(&ops, &drafts) {
                        Ok(conflict) => ServiceResult::Applied(conflict.map(|conflict| {
                            (
                                u32::try_from(conflict.index).unwrap_or(u32::MAX),
                                conflict.current,
                            )
                        })),
                        Err(error) => failed(error),
                    },
                    Err(message) => ServiceResult::Failed(message),
                }
            }
            ServiceOp::Push { .. } => {
                ServiceResult::Failed("a stream chunk is not a store call".into())
            }
        }
    }

    /// The host's lifecycle record as this child sees it: its own boot id, in `live_boot_ids`
    /// those of the slot's children alive now (itself included), and the host's own in
    /// `host_boot_id`. Runs of any other boot id died with their process.
    fn lifecycle_view(&self, record: String) -> String {
        let Ok(mut value) = serde_json::from_str::<serde_json::Value>(&record) else {
            return record;
        };
        let Some(boot) = value.get("boot_id").and_then(|boot| boot.as_str()) else {
            return record;
        };
        let boot = boot.to_owned();
        let live: Vec<serde_json::Value> = self
            .live
            .sequences()
            .into_iter()
            .map(|sequence| child_boot_id(&boot, &self.plugin, sequence).into())
            .collect();
        value["boot_id"] = child_boot_id(&boot, &self.plugin, self.sequence).into();
        value["live_boot_ids"] = serde_json::Value::Array(live);
        // What happens once per start of the host (an automatic deployment) keys on this.
        value["host_boot_id"] = boot.into();
        value.to_string()
    }
}

fn op_of(op: &StoreOpFrame) -> Result<Op<'_>, String> {
    let condition = match op.condition {
        0 => StoreCondition::Always,
        1 => StoreCondition::Absent,
        2 => StoreCondition::Equals,
        other => return Err(format!("store_apply: unknown condition {other}")),
    };
    let write = match op.write {
        0 => StoreWrite::Put,
        1 => StoreWrite::Delete,
        2 => StoreWrite::Keep,
        3 => StoreWrite::Add,
        other => return Err(format!("store_apply: unknown write {other}")),
    };
    record_store::op_from_parts(
        &op.collection,
        &op.key,
        condition,
        &op.expected,
        write,
        &op.value,
    )
}
