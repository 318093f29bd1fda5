//! The store's operations as they cross the plugin ABI (`HostServices::store_*`), applied to a
//! [`Store`]: the one translation every host that lends a store to plugins uses.

use abi_stable::std_types::{ROption, RResult, RSlice, RStr, RString, RVec};
use plugin_api::{StoreCondition, StoreConflict, StoreEntry, StoreOp, StoreWrite};

use crate::{Condition, Op, RecordStore, Write};

/// `HostServices::store_put`.
pub fn put_abi(
    store: &dyn RecordStore,
    collection: RStr<'_>,
    key: RStr<'_>,
    value: RStr<'_>,
) -> RResult<(), RString> {
    answer(store.put(collection.as_str(), key.as_str(), value.as_str()))
}

/// `HostServices::store_get`.
pub fn get_abi(
    store: &dyn RecordStore,
    collection: RStr<'_>,
    key: RStr<'_>,
) -> RResult<ROption<RString>, RString> {
    answer(
        store
            .get(collection.as_str(), key.as_str())
            .map(|value| value.map(RString::from).into()),
    )
}

/// `HostServices::store_delete`.
pub fn delete_abi(
    store: &dyn RecordStore,
    collection: RStr<'_>,
    key: RStr<'_>,
) -> RResult<bool, RString> {
    answer(store.delete(collection.as_str(), key.as_str()))
}

/// `HostServices::store_list`.
pub fn list_abi(
    store: &dyn RecordStore,
    collection: RStr<'_>,
    after: ROption<RStr<'_>>,
    limit: u32,
) -> RResult<RVec<StoreEntry>, RString> {
    let after = after.into_option().map(|key| key.as_str());
    answer(store.list(collection.as_str(), after, limit).map(|rows| {
        rows.into_iter()
            .map(|(key, value)| StoreEntry {
                key: key.into(),
                value: value.into(),
            })
            .collect()
    }))
}

fn answer<T>(result: Result<T, crate::StoreError>) -> RResult<T, RString> {
    result
        .map_err(|error| RString::from(error.to_string()))
        .into()
}

/// `HostServices::audit_query`.
pub fn audit_query_abi(store: &dyn RecordStore, query: RStr<'_>) -> RResult<RString, RString> {
    crate::audit::page_json_of(store, query.as_str())
        .map(RString::from)
        .map_err(RString::from)
        .into()
}

/// Applies `ops` (borrowed from the calling plugin for the length of the call) with the audit
/// drafts `audit` (JSON), and answers in ABI types.
pub fn apply_abi(
    store: &dyn RecordStore,
    ops: RSlice<'_, StoreOp>,
    audit: RSlice<'_, RString>,
) -> RResult<ROption<StoreConflict>, RString> {
    let ops: Result<Vec<Op<'_>>, String> = ops.iter().map(op_from_abi).collect();
    let ops = match ops {
        Ok(ops) => ops,
        Err(error) => return RResult::RErr(error.into()),
    };
    let drafts = match crate::audit::read_drafts(audit.iter().map(RString::as_str)) {
        Ok(drafts) => drafts,
        Err(error) => return RResult::RErr(error.into()),
    };
    match store.apply_audited(&ops, &drafts) {
        Ok(conflict) => RResult::ROk(
            conflict
                .map(|conflict| StoreConflict {
                    index: u32::try_from(conflict.index).unwrap_or(u32::MAX),
                    current: conflict.current.map(RString::from).into(),
                })
                .into(),
        ),
        Err(error) => RResult::RErr(error.to_string().into()),
    }
}

fn op_from_abi(op: &StoreOp) -> Result<Op<'_>, String> {
    op_from_parts(
        op.collection.as_str(),
        op.key.as_str(),
        op.condition,
        op.expected.as_str(),
        op.write,
        op.value.as_str(),
    )
}

/// One operation of `HostServices::store_apply` from its fields, however they crossed (borrowed
/// from a plugin in this process, or decoded from a plugin's child process).
pub fn op_from_parts<'a>(
    collection: &'a str,
    key: &'a str,
    condition: StoreCondition,
    expected: &'a str,
    write: StoreWrite,
    value: &'a str,
) -> Result<Op<'a>, String> {
    let condition = match condition {
        StoreCondition::Always => Condition::Always,
        StoreCondition::Absent => Condition::Absent,
        StoreCondition::Equals => Condition::Equals(expected),
    };
    let write = match write {
        StoreWrite::Put => Write::Put(value),
        StoreWrite::Delete => Write::Delete,
        StoreWrite::Keep => Write::Keep,
        StoreWrite::Add => Write::Add(value.trim().parse::<i64>().map_err(|_| {
            format!("store_apply: the amount to add to {collection}/{key} is not an integer")
        })?),
    };
    Ok(Op {
        collection,
        key,
        condition,
        write,
    })
}
