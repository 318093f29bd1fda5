use super::*;
use crate::RecordStore;

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("record-store-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::create_dir_all(&dir);
    dir
}

#[test]
fn put_get_list_delete_and_reopen() -> Result<(), StoreError> {
    let dir = temp_dir("roundtrip");
    {
        let store = Store::open(&dir, "t.db")?;
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
    let store = Store::open(&dir, "t.db")?;
    assert_eq!(store.get("runs", "a")?.as_deref(), Some("{\"n\":3}"));
    assert_eq!(store.get("runs", "b")?, None);
    assert!(matches!(
        store.put("", "k", "v"),
        Err(StoreError::BadName {
            what: "collection",
            ..
        })
    ));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.join("t.db")).map(|m| m.permissions().mode() & 0o777);
    assert_eq!(mode.ok(), Some(0o600));
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// The operations' semantics every implementation of [`RecordStore`] must have.
fn batches_apply_all_or_nothing(store: &dyn RecordStore) -> Result<(), StoreError> {
    store.put("claims", "b", "dep-1")?;
    // The second insert conflicts: the first must not be written either.
    let conflict = store.apply(&[
        Op::insert("claims", "a", "dep-2"),
        Op::insert("claims", "b", "dep-2"),
    ])?;
    assert_eq!(
        conflict,
        Some(Conflict {
            index: 1,
            current: Some("dep-1".into())
        })
    );
    assert_eq!(store.get("claims", "a")?, None);
    // Compare-and-set: only the holder may release.
    let wrong = store.apply(&[Op::delete("claims", "b").when(Condition::Equals("dep-9"))])?;
    assert_eq!(wrong.map(|c| c.index), Some(0));
    assert_eq!(store.get("claims", "b")?.as_deref(), Some("dep-1"));
    let released = store.apply(&[Op::delete("claims", "b").when(Condition::Equals("dep-1"))])?;
    assert_eq!(released, None);
    assert_eq!(store.get("claims", "b")?, None);
    // A check without a write, next to writes.
    store.put("runs", "dep-3", "running")?;
    let applied = store.apply(&[
        Op {
            collection: "runs",
            key: "dep-3",
            condition: Condition::Equals("running"),
            write: Write::Keep,
        },
        Op::put("claims", "c", "dep-3"),
    ])?;
    assert_eq!(applied, None);
    assert_eq!(store.get("claims", "c")?.as_deref(), Some("dep-3"));
    // Counters: absent is 0, sums, and a non-number refuses the whole batch.
    let add = |amount| Op {
        collection: "counts",
        key: "failed",
        condition: Condition::Always,
        write: Write::Add(amount),
    };
    store.apply(&[add(3), add(-1)])?;
    assert_eq!(store.get("counts", "failed")?.as_deref(), Some("2"));
    let refused = store.apply(&[
        add(1),
        Op {
            collection: "claims",
            key: "c",
            condition: Condition::Always,
            write: Write::Add(1),
        },
    ]);
    assert!(matches!(refused, Err(StoreError::NotANumber { .. })));
    assert_eq!(store.get("counts", "failed")?.as_deref(), Some("2"));
    // A put then an add of the same key in one batch adds to what the batch put.
    store.apply(&[Op::put("counts", "n", "5"), add_to("n", 2)])?;
    assert_eq!(store.get("counts", "n")?.as_deref(), Some("7"));
    // Listing: key order, after a key, bounded, one collection only.
    store.put("other", "a", "x")?;
    let keys: Vec<String> = store
        .list("claims", None, 10)?
        .into_iter()
        .map(|(key, _)| key)
        .collect();
    assert_eq!(keys, ["c"]);
    store.put("claims", "a", "dep-4")?;
    let keys: Vec<String> = store
        .list("claims", Some("a"), 1)?
        .into_iter()
        .map(|(key, _)| key)
        .collect();
    assert_eq!(keys, ["c"]);
    assert!(matches!(
        store.put("", "k", "v"),
        Err(StoreError::BadName {
            what: "collection",
            ..
        })
    ));
    Ok(())
}

fn add_to(key: &'static str, amount: i64) -> Op<'static> {
    Op {
        collection: "counts",
        key,
        condition: Condition::Always,
        write: Write::Add(amount),
    }
}

#[test]
fn a_batch_applies_all_or_nothing_on_sqlite() -> Result<(), StoreError> {
    let dir = temp_dir("batch");
    batches_apply_all_or_nothing(&Store::open(&dir, "t.db")?)?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

#[test]
fn a_batch_applies_all_or_nothing_in_memory() -> Result<(), StoreError> {
    batches_apply_all_or_nothing(&crate::MemoryStore::new())
}

fn one_winner(store: std::sync::Arc<dyn RecordStore>) {
    let winners: usize = (0..8)
        .map(|n| {
            let store = std::sync::Arc::clone(&store);
            std::thread::spawn(move || {
                let value = format!("dep-{n}");
                store
                    .apply(&[Op::insert("idempotency", "key", &value)])
                    .map(|conflict| usize::from(conflict.is_none()))
                    .unwrap_or(0)
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|thread| thread.join().unwrap_or(0))
        .sum();
    assert_eq!(winners, 1);
}

#[test]
fn concurrent_inserts_of_one_key_have_one_winner() -> Result<(), StoreError> {
    let dir = temp_dir("race");
    one_winner(std::sync::Arc::new(Store::open(&dir, "t.db")?));
    one_winner(std::sync::Arc::new(crate::MemoryStore::new()));
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
