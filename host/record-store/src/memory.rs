//! The store in memory: the same operations as the SQLite [`crate::Store`], with the same
//! limits, conditions and conflicts, over ordered maps behind one lock. Nothing survives the
//! process; it serves tests that run a plugin's code without a disk (the deployment core's
//! state-machine tests), where every call finishes at once.

use std::{
    collections::BTreeMap,
    sync::{Mutex, MutexGuard},
};

use crate::{
    store::{check, check_batch, Counters},
    Condition, Conflict, Op, RecordStore, StoreCounts, StoreError, Write, MAX_LIST,
};

/// Collections by name, each its keys in order.
type Collections = BTreeMap<String, BTreeMap<String, String>>;

#[derive(Default)]
pub struct MemoryStore {
    collections: Mutex<Collections>,
    counters: Counters,
}

impl MemoryStore {
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    fn collections(&self) -> MutexGuard<'_, Collections> {
        self.collections
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn value_of<'a>(collections: &'a Collections, collection: &str, key: &str) -> Option<&'a String> {
    collections.get(collection).and_then(|rows| rows.get(key))
}

impl RecordStore for MemoryStore {
    fn put(&self, collection: &str, key: &str, value: &str) -> Result<(), StoreError> {
        check(collection, key, Some(value))?;
        self.counters.written(1, value.len());
        self.collections()
            .entry(collection.to_owned())
            .or_default()
            .insert(key.to_owned(), value.to_owned());
        Ok(())
    }

    fn get(&self, collection: &str, key: &str) -> Result<Option<String>, StoreError> {
        let value = value_of(&self.collections(), collection, key).cloned();
        self.counters.read_value(value.as_deref());
        Ok(value)
    }

    fn delete(&self, collection: &str, key: &str) -> Result<bool, StoreError> {
        self.counters.written(1, 0);
        Ok(self
            .collections()
            .get_mut(collection)
            .and_then(|rows| rows.remove(key))
            .is_some())
    }

    fn list(
        &self,
        collection: &str,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<(String, String)>, StoreError> {
        let limit = limit.min(MAX_LIST) as usize;
        let collections = self.collections();
        let rows: Vec<(String, String)> = collections
            .get(collection)
            .map(|rows| {
                let after = after.unwrap_or("");
                rows.range::<str, _>((std::ops::Bound::Excluded(after), std::ops::Bound::Unbounded))
                    .take(limit)
                    .map(|(key, value)| (key.clone(), value.clone()))
                    .collect()
            })
            .unwrap_or_default();
        self.counters
            .read(rows.len(), rows.iter().map(|(_, value)| value.len()).sum());
        Ok(rows)
    }

    fn apply(&self, ops: &[Op<'_>]) -> Result<Option<Conflict>, StoreError> {
        check_batch(ops, &self.counters)?;
        let mut collections = self.collections();
        // Conditions are checked against the state before the batch's own writes.
        for (index, op) in ops.iter().enumerate() {
            let required = match op.condition {
                Condition::Always => continue,
                Condition::Absent => None,
                Condition::Equals(expected) => Some(expected),
            };
            let current = value_of(&collections, op.collection, op.key);
            if current.map(String::as_str) != required {
                return Ok(Some(Conflict {
                    index,
                    current: current.cloned(),
                }));
            }
        }
        // Written in order, as one transaction would; what each write replaced is kept, so a
        // value that is not a number leaves everything as it was.
        let mut undo: Vec<(&str, &str, Option<String>)> = Vec::new();
        for op in ops {
            let rows = collections.entry(op.collection.to_owned()).or_default();
            let before = match op.write {
                Write::Put(value) => rows.insert(op.key.to_owned(), value.to_owned()),
                Write::Delete => rows.remove(op.key),
                Write::Keep => continue,
                Write::Add(amount) => {
                    let current = rows
                        .get(op.key)
                        .map(|text| text.trim().parse::<i64>())
                        .transpose();
                    let Ok(current) = current else {
                        for (collection, key, value) in undo.into_iter().rev() {
                            let rows = collections.entry(collection.to_owned()).or_default();
                            match value {
                                Some(value) => rows.insert(key.to_owned(), value),
                                None => rows.remove(key),
                            };
                        }
                        return Err(StoreError::NotANumber {
                            collection: op.collection.to_owned(),
                            key: op.key.to_owned(),
                        });
                    };
                    let sum = current.unwrap_or(0).saturating_add(amount);
                    rows.insert(op.key.to_owned(), sum.to_string())
                }
            };
            undo.push((op.collection, op.key, before));
        }
        Ok(None)
    }

    fn counts(&self) -> StoreCounts {
        self.counters.snapshot()
    }
}
