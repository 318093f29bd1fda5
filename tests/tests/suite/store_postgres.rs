//! The record store on PostgreSQL answers as the embedded SQLite store does: a server of the
//! test's own (`initdb` + `pg_ctl` on a loopback port), the same seeded sequences of puts, gets,
//! deletes, listings and conditional batches sent to both, every answer compared; keys listed in
//! byte order whatever the server's locale; one winner among racing inserts of one key; and a
//! second store on the same database sees the first one's records.

use std::sync::Arc;

use e2e::{postgres::TestPostgres, Lcg};
use record_store::{Condition, Op, PgStore, RecordStore, Store, Write};

/// Keys and values drawn from small sets, so operations meet on the same keys.
const KEYS: [&str; 6] = ["a", "b", "B", "a-1", "a_1", "\u{e9}"];
const COLLECTIONS: [&str; 2] = ["claims", "counts"];
const VALUES: [&str; 4] = ["dep-1", "dep-2", "7", "-3"];

fn pick<'a>(random: &mut Lcg, from: &[&'a str]) -> &'a str {
    from[random.next(from.len() as u64) as usize]
}

fn random_op<'a>(random: &mut Lcg) -> Op<'a> {
    let collection = pick(random, &COLLECTIONS);
    let key = pick(random, &KEYS);
    let condition = match random.next(4) {
        0 => Condition::Absent,
        1 => Condition::Equals(pick(random, &VALUES)),
        _ => Condition::Always,
    };
    let write = match random.next(5) {
        0 => Write::Delete,
        1 => Write::Keep,
        2 => Write::Add(random.next(7) as i64 - 3),
        _ => Write::Put(pick(random, &VALUES)),
    };
    Op {
        collection,
        key,
        condition,
        write,
    }
}

/// One step on one store, as text to compare: its answer, or its error.
fn step(store: &dyn RecordStore, random: &mut Lcg) -> String {
    let collection = pick(random, &COLLECTIONS);
    let key = pick(random, &KEYS);
    match random.next(6) {
        0 => format!("{:?}", store.put(collection, key, pick(random, &VALUES))),
        1 => format!("{:?}", store.get(collection, key)),
        2 => format!("{:?}", store.delete(collection, key)),
        3 => {
            let after = (random.next(2) == 0).then(|| pick(random, &KEYS));
            let limit = random.next(4) as u32;
            format!("{:?}", store.list(collection, after, limit))
        }
        _ => {
            let ops: Vec<Op<'_>> = (0..1 + random.next(4)).map(|_| random_op(random)).collect();
            match store.apply(&ops) {
                Ok(conflict) => format!("Ok({conflict:?})"),
                // The same refusal, worded by the store: compared by kind.
                Err(error) => format!("Err({})", error.to_string().split(':').next().unwrap_or("")),
            }
        }
    }
}

#[test]
fn postgres_answers_every_operation_as_sqlite_does() {
    let server = TestPostgres::start("same-answers");
    let postgres = PgStore::open(&server.url).expect("the store opens on the test's server");
    let dir = tempfile::tempdir().expect("a temporary directory");
    let sqlite = Store::open(dir.path(), "t.db").expect("the SQLite store opens");
    for seed in 1..=20u64 {
        // Each seed starts from empty collections on both.
        for store in [&postgres as &dyn RecordStore, &sqlite] {
            for collection in COLLECTIONS {
                for (key, _) in store.list(collection, None, 100).expect("listed") {
                    store.delete(collection, &key).expect("deleted");
                }
            }
        }
        let (mut left, mut right) = (Lcg(seed), Lcg(seed));
        for n in 0..60 {
            let on_postgres = step(&postgres, &mut left);
            let on_sqlite = step(&sqlite, &mut right);
            assert_eq!(on_postgres, on_sqlite, "seed {seed}, step {n}");
        }
    }
    // Byte order, as SQLite lists keys, whatever the server's locale.
    for key in KEYS {
        postgres.put("order", key, "x").expect("put");
    }
    let keys: Vec<String> = postgres
        .list("order", None, 10)
        .expect("listed")
        .into_iter()
        .map(|(key, _)| key)
        .collect();
    assert_eq!(keys, ["B", "a", "a-1", "a_1", "b", "\u{e9}"]);
    // Another host's store on the same database sees the same records.
    let other = PgStore::open(&server.url).expect("a second store opens");
    assert_eq!(other.get("order", "B").expect("read").as_deref(), Some("x"));
}

#[test]
fn racing_inserts_of_one_key_on_postgres_have_one_winner() {
    let server = TestPostgres::start("one-winner");
    let store: Arc<dyn RecordStore> =
        Arc::new(PgStore::open(&server.url).expect("the store opens on the test's server"));
    let threads: Vec<_> = (0..8)
        .map(|n| {
            let store = Arc::clone(&store);
            std::thread::spawn(move || {
                let value = format!("dep-{n}");
                store
                    .apply(&[
                        Op::insert("idempotency", "key", &value),
                        Op::put("claims", &value, "held"),
                    ])
                    .expect("applied or refused, not failed")
            })
        })
        .collect();
    let winners = threads
        .into_iter()
        .map(|thread| thread.join().expect("joined"))
        .filter(Option::is_none)
        .count();
    assert_eq!(winners, 1);
    // Only the winner's other write happened.
    assert_eq!(store.list("claims", None, 10).expect("listed").len(), 1);
}

/// Connections the server ended (a restart, an administrator) are dropped, not reused: the next
/// read runs on a new connection, and writes and batches go on.
#[test]
fn a_store_goes_on_after_the_server_ended_its_connections() {
    let server = TestPostgres::start("ended");
    let store = PgStore::open(&server.url).expect("the store opens on the test's server");
    store.put("runs", "a", "1").expect("put");
    server.end_connections();
    assert_eq!(
        store.get("runs", "a").expect("read again").as_deref(),
        Some("1")
    );
    server.end_connections();
    // A write on a connection the server ended fails (it may or may not have been applied);
    // the next one runs on a new connection.
    let _ = store.put("runs", "b", "2");
    store
        .put("runs", "b", "2")
        .expect("put on a new connection");
    let conflict = store
        .apply(&[Op::insert("runs", "b", "3")])
        .expect("a batch");
    assert_eq!(
        conflict.map(|conflict| conflict.current),
        Some(Some("2".to_owned()))
    );
}

#[test]
fn a_postgres_url_that_cannot_be_read_is_refused_naming_the_setting() {
    let error = PgStore::open("postgres://user:secret@127.0.0.1:notaport/db")
        .err()
        .map(|error| error.to_string())
        .unwrap_or_default();
    assert!(error.contains("storage.url"), "{error}");
    assert!(!error.contains("secret"), "{error}");
}

/// A host with `storage.url` on the test's server keeps its records there: a deployment runs to
/// its end, and the records outlive the host (a new host with a new data directory reads them).
#[tokio::test]
async fn a_host_on_postgres_keeps_its_records_there() {
    use e2e::scenario::{finished, local, options, started};
    let server = TestPostgres::start("host");
    let env = vec![("PA_STORAGE__URL".to_owned(), server.url.clone())];
    let first_dir = tempfile::tempdir().expect("a temporary directory");
    let host = e2e::TestHost::start(
        first_dir.path(),
        e2e::HostOptions {
            env: env.clone(),
            ..options(vec![local("pg-env", &["true"], 60)])
        },
    )
    .await;
    let id = started(&host, serde_json::json!({"environments": ["pg-env"]})).await;
    let record = finished(&host, &id).await;
    assert_eq!(record["status"], "completed", "{record}");
    assert!(
        !first_dir.path().join("data/powerautomation.db").exists(),
        "nothing went to the embedded store"
    );
    let status = host.stop();
    assert!(
        status.is_some_and(|status| status.success()),
        "the host on PostgreSQL stops cleanly: {status:?}"
    );

    // The records are the database's: a host with a new data directory finds the deployment.
    let third_dir = tempfile::tempdir().expect("a temporary directory");
    let host = e2e::TestHost::start(
        third_dir.path(),
        e2e::HostOptions {
            env,
            ..options(vec![local("pg-env", &["true"], 60)])
        },
    )
    .await;
    let record = e2e::scenario::detail(&host, &id).await;
    assert_eq!(record["status"], "completed", "{record}");
    let status = host.stop();
    assert!(status.is_some_and(|status| status.success()), "{status:?}");
}
