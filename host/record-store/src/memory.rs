//! The store in memory: the same operations as the SQLite [`crate::Store`], with the same
//! limits, conditions and conflicts, over ordered maps behind one lock. Nothing survives the
//! process; it serves tests that run a plugin's code without a disk (the deployment core's
//! state-machine tests), where every call finishes at once.

use std::{
    collections::BTreeMap,
    sync::{Mutex, MutexGuard},
};

use crate::{
    audit::{AuditBounds, AuditDraft, AuditEntry, AuditQuery, AuditRecord, AuditRow},
    store::{check, check_batch, Counters},
    Condition, Conflict, Op, RecordStore, StoreCounts, StoreError, Write, MAX_LIST,
};

/// Collections by name, each its keys in order.
type Collections = BTreeMap<String, BTreeMap<String, String>>;

/// The audit chain in memory: its entries in order, its checkpoint and head.
#[derive(Default)]
struct MemoryAudit {
    rows: Vec<AuditRow>,
    bounds: AuditBounds,
    /// The newest entry's time: the next is never earlier.
    last_at: String,
}

#[derive(Default)]
pub struct MemoryStore {
    collections: Mutex<Collections>,
    audit: Mutex<MemoryAudit>,
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

    fn apply_audited(
        &self,
        ops: &[Op<'_>],
        audit: &[AuditDraft],
    ) -> Result<Option<Conflict>, StoreError> {
        check_batch(ops, &self.counters)?;
        for draft in audit {
            draft.check()?;
        }
        // The audit log's lock is taken first and held over the batch, so entries chain in the
        // order their batches applied.
        let mut chain = self.audit.lock().unwrap_or_else(|p| p.into_inner());
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
        // Sealed before anything is written: a draft that cannot be sealed leaves all as it was.
        let mut sealed = Vec::with_capacity(audit.len());
        if !audit.is_empty() {
            let at = crate::audit::next_time(&chain.last_at);
            chain.last_at.clone_from(&at);
            let mut prev = chain
                .bounds
                .head
                .clone()
                .unwrap_or((0, crate::audit::GENESIS.into()));
            for draft in audit {
                let next = crate::audit::seal(&prev, draft, &at)?;
                prev = (next.record.seq, next.record.hash.clone());
                sealed.push(AuditRow {
                    record: next.record,
                    columns: next.columns,
                });
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
        if let Some(last) = sealed.last() {
            chain.bounds.head = Some((last.record.seq, last.record.hash.clone()));
            chain.rows.extend(sealed);
        }
        Ok(None)
    }

    fn audit_query(&self, query: &AuditQuery) -> Result<Vec<AuditRecord>, StoreError> {
        let chain = self.audit.lock().unwrap_or_else(|p| p.into_inner());
        let limit = query.limit.clamp(1, crate::audit::MAX_AUDIT_PAGE) as usize;
        Ok(chain
            .rows
            .iter()
            .rev()
            .filter(|row| {
                serde_json::from_str::<AuditEntry>(&row.record.entry)
                    .is_ok_and(|entry| query.matches(&entry))
            })
            .take(limit)
            .map(|row| row.record.clone())
            .collect())
    }

    fn audit_scan(&self, after: u64, limit: u32) -> Result<Vec<AuditRow>, StoreError> {
        let chain = self.audit.lock().unwrap_or_else(|p| p.into_inner());
        let limit = limit.min(crate::audit::SCAN_PAGE) as usize;
        Ok(chain
            .rows
            .iter()
            .filter(|row| row.record.seq > after)
            .take(limit)
            .cloned()
            .collect())
    }

    fn audit_bounds(&self) -> Result<AuditBounds, StoreError> {
        Ok(self
            .audit
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .bounds
            .clone())
    }

    fn audit_prune(&self, before: &str, chunk: u32) -> Result<u64, StoreError> {
        let mut chain = self.audit.lock().unwrap_or_else(|p| p.into_inner());
        let old = chain
            .rows
            .iter()
            .take(chunk as usize)
            .rposition(|row| row.columns.at.as_str() < before);
        let Some(last) = old else { return Ok(0) };
        let pruned: Vec<AuditRow> = chain.rows.drain(..=last).collect();
        if let Some(row) = pruned.last() {
            chain.bounds.checkpoint = Some((row.record.seq, row.record.hash.clone()));
        }
        Ok(pruned.len() as u64)
    }

    fn counts(&self) -> StoreCounts {
        self.counters.snapshot()
    }
}
