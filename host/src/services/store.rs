//! The embedded SQLite store, owned by the host so that plugin swaps never lose a record.
//!
//! One database file in `data_dir`, WAL mode. Writes go through one connection; reads use a
//! small pool so that readers never queue behind each other or behind a writer.

use std::{
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Mutex, MutexGuard,
    },
};

use rusqlite::{params, Connection, OpenFlags, OptionalExtension};

const READERS: usize = 4;

pub struct Store {
    path: PathBuf,
    writer: Mutex<Connection>,
    readers: Vec<Mutex<Connection>>,
    next_reader: AtomicUsize,
}

/// Collection and key limits keep one plugin from filling the disk with keys nobody can list.
const MAX_NAME_LEN: usize = 256;
pub const MAX_VALUE_LEN: usize = 16 * 1024 * 1024;

impl Store {
    /// Opens (creating when missing) `<data_dir>/powerautomation.db`.
    pub fn open(data_dir: &Path) -> Result<Store, String> {
        std::fs::create_dir_all(data_dir).map_err(|error| {
            format!(
                "cannot create storage.data_dir {}: {error}",
                data_dir.display()
            )
        })?;
        let path = data_dir.join("powerautomation.db");
        let describe = |error: rusqlite::Error| format!("store {}: {error}", path.display());
        let writer = Connection::open(&path).map_err(describe)?;
        writer
            .execute_batch(
                "PRAGMA journal_mode = WAL;
                 PRAGMA synchronous = NORMAL;
                 PRAGMA busy_timeout = 5000;
                 CREATE TABLE IF NOT EXISTS records (
                     collection TEXT NOT NULL,
                     key        TEXT NOT NULL,
                     value      TEXT NOT NULL,
                     updated_at INTEGER NOT NULL,
                     PRIMARY KEY (collection, key)
                 ) WITHOUT ROWID;",
            )
            .map_err(describe)?;
        let mut readers = Vec::with_capacity(READERS);
        for _ in 0..READERS {
            let reader = Connection::open_with_flags(
                &path,
                OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )
            .map_err(describe)?;
            reader
                .execute_batch("PRAGMA busy_timeout = 5000;")
                .map_err(describe)?;
            readers.push(Mutex::new(reader));
        }
        Ok(Store {
            path,
            writer: Mutex::new(writer),
            readers,
            next_reader: AtomicUsize::new(0),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn writer(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves SQLite consistent (it has its own journal).
        self.writer
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn reader(&self) -> MutexGuard<'_, Connection> {
        let start = self.next_reader.fetch_add(1, Ordering::Relaxed);
        for offset in 0..self.readers.len() {
            if let Ok(guard) = self.readers[(start + offset) % self.readers.len()].try_lock() {
                return guard;
            }
        }
        self.readers[start % self.readers.len()]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn put(&self, collection: &str, key: &str, value: &str) -> Result<(), String> {
        check_name("collection", collection)?;
        check_name("key", key)?;
        if value.len() > MAX_VALUE_LEN {
            return Err(format!(
                "value of {collection}/{key} is {} bytes; the limit is {MAX_VALUE_LEN}",
                value.len()
            ));
        }
        self.writer()
            .prepare_cached(
                "INSERT INTO records (collection, key, value, updated_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (collection, key) DO UPDATE SET value = excluded.value,
                                                             updated_at = excluded.updated_at",
            )
            .and_then(|mut statement| statement.execute(params![collection, key, value, now_ms()]))
            .map(|_| ())
            .map_err(|error| format!("store write {collection}/{key}: {error}"))
    }

    pub fn get(&self, collection: &str, key: &str) -> Result<Option<String>, String> {
        self.reader()
            .prepare_cached("SELECT value FROM records WHERE collection = ?1 AND key = ?2")
            .and_then(|mut statement| {
                statement
                    .query_row(params![collection, key], |row| row.get(0))
                    .optional()
            })
            .map_err(|error| format!("store read {collection}/{key}: {error}"))
    }

    pub fn delete(&self, collection: &str, key: &str) -> Result<bool, String> {
        self.writer()
            .prepare_cached("DELETE FROM records WHERE collection = ?1 AND key = ?2")
            .and_then(|mut statement| statement.execute(params![collection, key]))
            .map(|changed| changed > 0)
            .map_err(|error| format!("store delete {collection}/{key}: {error}"))
    }

    /// Rows of `collection` in key order, after `after`, at most `limit` (capped at 10,000).
    pub fn list(
        &self,
        collection: &str,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<(String, String)>, String> {
        let limit = limit.min(10_000);
        let connection = self.reader();
        let mut statement = connection
            .prepare_cached(
                "SELECT key, value FROM records WHERE collection = ?1 AND key > ?2
                 ORDER BY key LIMIT ?3",
            )
            .map_err(|error| format!("store list {collection}: {error}"))?;
        let rows = statement
            .query_map(params![collection, after.unwrap_or(""), limit], |row| {
                Ok((row.get(0)?, row.get(1)?))
            })
            .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
            .map_err(|error| format!("store list {collection}: {error}"))?;
        Ok(rows)
    }
}

fn check_name(what: &str, name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(format!("store {what} must be 1 to {MAX_NAME_LEN} bytes"));
    }
    Ok(())
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("pa-store-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn put_get_list_delete_and_reopen() -> Result<(), String> {
        let dir = temp_dir("roundtrip");
        {
            let store = Store::open(&dir)?;
            store.put("runs", "b", "{\"n\":2}")?;
            store.put("runs", "a", "{\"n\":1}")?;
            store.put("runs", "a", "{\"n\":3}")?;
            store.put("other", "a", "x")?;
            assert_eq!(store.get("runs", "a")?.as_deref(), Some("{\"n\":3}"));
            let keys: Vec<_> = store
                .list("runs", None, 10)?
                .into_iter()
                .map(|r| r.0)
                .collect();
            assert_eq!(keys, ["a", "b"]);
            assert_eq!(store.list("runs", Some("a"), 10)?.len(), 1);
            assert!(store.delete("runs", "b")?);
            assert!(!store.delete("runs", "b")?);
        }
        let store = Store::open(&dir)?;
        assert_eq!(store.get("runs", "a")?.as_deref(), Some("{\"n\":3}"));
        assert_eq!(store.get("runs", "b")?, None);
        assert!(store.put("", "k", "v").is_err());
        let _ = std::fs::remove_dir_all(&dir);
        Ok(())
    }
}
