//! The host services a child's plugin calls, run against the host's store and event bus: the
//! same operations the in-process bridge offers, from owned messages instead of ABI borrows.

use std::sync::Arc;

use arc_swap::ArcSwap;
use plugin_api::{LogLevel, StoreCondition, StoreWrite};
use record_store::{Op, Store};

use super::frame::{ServiceOp, ServiceResult, StoreOpFrame};
use crate::services::events::{EventBus, UserView};

/// What one child may use: the store, the bus, and the lineage that makes its boot id.
pub struct ChildServices {
    pub plugin: String,
    pub store: Arc<Store>,
    pub bus: Arc<EventBus>,
    /// Renewed by the slot after every crash (see the module documentation).
    pub lineage: Arc<ArcSwap<String>>,
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
                    ServiceResult::Value(value.map(|record| self.lineage_view(record)))
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
            ServiceOp::Apply { ops } => {
                let ops: Result<Vec<Op<'_>>, String> = ops.iter().map(op_of).collect();
                match ops {
                    Ok(ops) => match self.store.apply(&ops) {
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

    /// The host's lifecycle record as this child sees it: its boot id joined with the lineage.
    fn lineage_view(&self, record: String) -> String {
        let Ok(mut value) = serde_json::from_str::<serde_json::Value>(&record) else {
            return record;
        };
        if let Some(boot) = value.get("boot_id").and_then(|boot| boot.as_str()) {
            let joined = format!("{boot}.{}", self.lineage.load());
            value["boot_id"] = serde_json::Value::String(joined);
        }
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
