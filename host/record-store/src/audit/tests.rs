use super::*;
use crate::{MemoryStore, Op, RecordStore, Store};

fn draft(action: &str, actor: &str, environments: &[&str]) -> AuditDraft {
    AuditDraft {
        actor: Some(AuditActor {
            key_name: actor.into(),
            role: "admin".into(),
        }),
        via: AuditVia::Rest,
        tool: None,
        action: action.into(),
        resource: format!("deployment:{action}"),
        outcome: AuditOutcome {
            status: AuditStatus::Ok,
            error: None,
            http_status: Some(202),
        },
        request_id: Some("r-1".into()),
        reason: None,
        changes: Some(serde_json::json!({"z": 1, "a": {"y": 2, "b": 3}})),
        environments: environments.iter().map(|e| (*e).to_owned()).collect(),
    }
}

fn sqlite() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::open(dir.path(), "store.db").expect("open");
    (dir, store)
}

#[test]
fn the_canonical_entry_sorts_keys_and_has_no_spaces() {
    let entry = AuditEntry {
        seq: 7,
        at: "2026-01-31T12:00:00.123Z".into(),
        draft: draft("deployment.trigger", "ops", &["e1"]),
    };
    assert_eq!(
        entry.canonical().expect("canonical"),
        r#"{"action":"deployment.trigger","actor":{"key_name":"ops","role":"admin"},"at":"2026-01-31T12:00:00.123Z","changes":{"a":{"b":3,"y":2},"z":1},"environments":["e1"],"outcome":{"http_status":202,"status":"ok"},"request_id":"r-1","resource":"deployment:deployment.trigger","seq":7,"via":"rest"}"#
    );
}

fn chain_of_five(store: &dyn RecordStore) {
    for n in 0..5 {
        let action = format!("deployment.a{n}");
        let ops = [Op::put("things", &action, "1")];
        let applied = store
            .apply_audited(
                &ops,
                &[draft(
                    &action,
                    if n % 2 == 0 { "ops" } else { "dev" },
                    &["e1"],
                )],
            )
            .expect("apply");
        assert!(applied.is_none());
    }
}

#[test]
fn entries_chain_and_verify_on_both_stores() {
    let (_dir, sqlite) = sqlite();
    let memory = MemoryStore::new();
    for store in [&sqlite as &dyn RecordStore, &memory] {
        chain_of_five(store);
        assert_eq!(
            verify(store).expect("verify"),
            Verdict::Intact {
                entries: 5,
                from: 0,
                to: 5
            }
        );
        let page = store
            .audit_query(&AuditQuery {
                actor: Some("ops".into()),
                limit: 2,
                ..AuditQuery::default()
            })
            .expect("query");
        assert_eq!(page.iter().map(|r| r.seq).collect::<Vec<_>>(), [5, 3]);
        let next = store
            .audit_query(&AuditQuery {
                actor: Some("ops".into()),
                before: Some(3),
                limit: 2,
                ..AuditQuery::default()
            })
            .expect("query");
        assert_eq!(next.iter().map(|r| r.seq).collect::<Vec<_>>(), [1]);
        let by_env = store
            .audit_query(&AuditQuery {
                environment: Some("e1".into()),
                limit: 10,
                ..AuditQuery::default()
            })
            .expect("query");
        assert_eq!(by_env.len(), 5);
        let none = store
            .audit_query(&AuditQuery {
                environment: Some("e2".into()),
                limit: 10,
                ..AuditQuery::default()
            })
            .expect("query");
        assert!(none.is_empty());
    }
}

#[test]
fn a_batch_that_conflicts_writes_no_entry() {
    let (_dir, store) = sqlite();
    store.put("things", "k", "1").expect("put");
    let conflict = store
        .apply_audited(
            &[Op::insert("things", "k", "2")],
            &[draft("environment.create", "ops", &[])],
        )
        .expect("apply");
    assert!(conflict.is_some());
    assert_eq!(
        store.audit_bounds().expect("bounds"),
        AuditBounds::default()
    );
}

#[test]
fn a_bad_draft_writes_nothing_and_names_the_field() {
    let (_dir, store) = sqlite();
    let mut bad = draft("deployment.trigger", "ops", &[]);
    bad.action = "Not An Action".into();
    let error = store
        .apply_audited(&[Op::put("things", "k", "1")], &[bad])
        .expect_err("refused");
    assert!(error.to_string().contains("action"), "{error}");
    assert_eq!(store.get("things", "k").expect("get"), None);
}

#[test]
fn the_store_refuses_to_change_or_delete_an_entry() {
    let (dir, store) = sqlite();
    chain_of_five(&store);
    let raw = rusqlite::Connection::open(dir.path().join("store.db")).expect("open");
    let update = raw.execute("UPDATE audit SET actor = 'someone' WHERE seq = 2", []);
    assert!(update.is_err(), "an update went through");
    let delete = raw.execute("DELETE FROM audit WHERE seq = 2", []);
    assert!(delete.is_err(), "a delete went through");
    assert!(matches!(
        verify(&store).expect("verify"),
        Verdict::Intact { .. }
    ));
}

#[test]
fn verify_names_an_edited_or_missing_entry() {
    let cases: [(&str, u64, &str); 5] = [
        (
            "UPDATE audit SET entry = replace(entry, 'dev', 'ops') WHERE seq = 2",
            2,
            "changed",
        ),
        ("UPDATE audit SET actor = 'ops' WHERE seq = 4", 4, "changed"),
        ("DELETE FROM audit WHERE seq = 3", 3, "missing"),
        ("DELETE FROM audit WHERE seq = 5", 5, "missing"),
        ("UPDATE audit SET seq = 9 WHERE seq = 1", 1, "missing"),
    ];
    for (tamper, seq, problem) in cases {
        let (dir, store) = sqlite();
        chain_of_five(&store);
        let raw = rusqlite::Connection::open(dir.path().join("store.db")).expect("open");
        raw.execute_batch(
            "DROP TRIGGER audit_append_only; DROP TRIGGER audit_prune_behind_checkpoint;",
        )
        .expect("drop the guards");
        raw.execute(tamper, []).expect("tamper");
        match verify(&store).expect("verify") {
            Verdict::Broken {
                seq: found,
                problem: text,
            } => {
                assert_eq!(found, seq, "{tamper}: {text}");
                assert!(text.contains(problem), "{tamper}: {text}");
            }
            intact => panic!("{tamper}: verify found {intact:?}"),
        }
    }
}

#[test]
fn pruning_keeps_the_chain_verifiable() {
    let (_dir, sqlite) = sqlite();
    let memory = MemoryStore::new();
    for store in [&sqlite as &dyn RecordStore, &memory] {
        chain_of_five(store);
        // Everything is older than a time far ahead; two per transaction.
        assert_eq!(
            store
                .audit_prune("9999-01-01T00:00:00.000Z", 2)
                .expect("prune"),
            2
        );
        assert_eq!(
            verify(store).expect("verify"),
            Verdict::Intact {
                entries: 3,
                from: 2,
                to: 5
            }
        );
        while store
            .audit_prune("9999-01-01T00:00:00.000Z", 2)
            .expect("prune")
            > 0
        {}
        assert_eq!(
            verify(store).expect("verify"),
            Verdict::Intact {
                entries: 0,
                from: 5,
                to: 5
            }
        );
        // The chain goes on after the checkpoint.
        chain_of_five(store);
        assert_eq!(
            verify(store).expect("verify"),
            Verdict::Intact {
                entries: 5,
                from: 5,
                to: 10
            }
        );
    }
}
