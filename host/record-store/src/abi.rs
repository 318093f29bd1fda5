//! A batch as it crosses the plugin ABI (`HostServices::store_apply`), applied to a [`Store`]:
//! the one translation every host that lends a store to plugins uses.

use abi_stable::std_types::{ROption, RResult, RSlice, RString};
use plugin_api::{StoreCondition, StoreConflict, StoreOp, StoreWrite};

use crate::{Condition, Op, Store, Write};

/// Applies `ops` (borrowed from the calling plugin for the length of the call) and answers in
/// ABI types.
pub fn apply_abi(
    store: &Store,
    ops: RSlice<'_, StoreOp>,
) -> RResult<ROption<StoreConflict>, RString> {
    let ops: Result<Vec<Op<'_>>, String> = ops.iter().map(op_from_abi).collect();
    let ops = match ops {
        Ok(ops) => ops,
        Err(error) => return RResult::RErr(error.into()),
    };
    match store.apply(&ops) {
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
    let condition = match op.condition {
        StoreCondition::Always => Condition::Always,
        StoreCondition::Absent => Condition::Absent,
        StoreCondition::Equals => Condition::Equals(op.expected.as_str()),
    };
    let write = match op.write {
        StoreWrite::Put => Write::Put(op.value.as_str()),
        StoreWrite::Delete => Write::Delete,
        StoreWrite::Keep => Write::Keep,
        StoreWrite::Add => Write::Add(op.value.as_str().trim().parse::<i64>().map_err(|_| {
            format!(
                "store_apply: the amount to add to {}/{} is not an integer",
                op.collection, op.key
            )
        })?),
    };
    Ok(Op {
        collection: op.collection.as_str(),
        key: op.key.as_str(),
        condition,
        write,
    })
}
