//! Records kept by id that a caller creates and deletes whole (deployment windows, schedules):
//! a bounded number of them, each create and delete the call's audited change.

use plugin_guest::{Condition, StoreOp};
use serde::{de::DeserializeOwned, Serialize};

use super::records::{self, Records, StoreError};

/// What a create did.
pub enum Created {
    Created,
    /// A record with this id exists.
    Exists,
    /// There are as many as allowed already.
    Full,
}

/// What a change's audit entry says of it: its resource, environments, changes and reason.
pub struct Described {
    pub resource: String,
    pub environments: Vec<String>,
    pub changes: serde_json::Value,
    pub reason: Option<String>,
}

/// Stores `record` under `id`, with the operations `more`, unless one is there or `collection`
/// holds `max` already.
pub async fn create<T: Serialize>(
    records: &Records,
    collection: &'static str,
    id: &str,
    record: &T,
    max: usize,
    more: Vec<StoreOp>,
    described: Described,
) -> Result<Created, StoreError> {
    if records.page(collection, None, max as u32).await?.len() >= max {
        return Ok(Created::Full);
    }
    let mut ops = vec![StoreOp::insert(
        collection,
        id,
        records::encode(collection, id, record)?,
    )];
    ops.extend(more);
    let conflict = records
        .apply_for_call(ops, |call| describe(call, described))
        .await?;
    // Only the insert has a condition.
    Ok(match conflict {
        None => Created::Created,
        Some(_) => Created::Exists,
    })
}

/// Removes the record under `id` and the rows `more(record)` names, in one transaction; the
/// record removed, or `None` when there was none (or it changed meanwhile).
pub async fn delete<T: DeserializeOwned>(
    records: &Records,
    collection: &'static str,
    id: &str,
    more: impl AsyncFnOnce(&T) -> Result<Vec<StoreOp>, StoreError>,
    described: impl FnOnce(&T) -> Described,
) -> Result<Option<T>, StoreError> {
    let Some(text) = records.get_raw(collection, id).await? else {
        return Ok(None);
    };
    let record: T = records::decode(collection, id, &text)?;
    let mut ops = vec![StoreOp::delete(collection, id).when(Condition::Equals(text))];
    ops.extend(more(&record).await?);
    let described = described(&record);
    let conflict = records
        .apply_for_call(ops, |call| describe(call, described))
        .await?;
    // Changed or deleted meanwhile: what this call read is gone either way.
    Ok(conflict.is_none().then_some(record))
}

fn describe(call: &mut crate::audit::Subject, described: Described) {
    let Described {
        resource,
        environments,
        changes,
        reason,
    } = described;
    crate::audit::fill(&mut call.resource, || resource);
    call.environments = environments;
    call.changes = Some(changes);
    if reason.is_some() {
        call.reason = reason;
    }
}
