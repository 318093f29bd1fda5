//! The cluster's event log on a PostgreSQL server of the test's own: appends from several
//! processes at once get ids in their commit order, so a reader that follows `id > last` while
//! they append misses nothing; a batch sent again is not stored twice; a listening connection
//! hears each append; pruning keeps the newest events.

use std::{
    collections::HashSet,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use e2e::postgres::TestPostgres;
use record_store::{LoggedEvent, NewEvent, PgStore, UserView};

const WRITERS: usize = 4;
const BATCHES: u64 = 40;
const PER_BATCH: u64 = 5;

fn all_events(store: &PgStore) -> Vec<LoggedEvent> {
    let mut events = Vec::new();
    loop {
        let after = events.last().map_or(0, |event: &LoggedEvent| event.id);
        let page = store
            .events_between(after, u64::MAX, 1000)
            .expect("read the log");
        if page.is_empty() {
            return events;
        }
        events.extend(page);
    }
}

#[test]
fn concurrent_appends_are_read_in_one_order_with_nothing_skipped() {
    let server = TestPostgres::start("event-log");
    let store = Arc::new(PgStore::open(&server.url).expect("the store opens"));
    let done = Arc::new(AtomicBool::new(false));
    // A reader follows the log while the writers append, as a node's follower does.
    let reader = std::thread::spawn({
        let (store, done) = (Arc::clone(&store), Arc::clone(&done));
        move || {
            let mut seen = Vec::new();
            let mut last = 0;
            loop {
                let finished = done.load(Ordering::Acquire);
                let page = store
                    .events_between(last, u64::MAX, 1000)
                    .expect("read the log");
                for event in page {
                    last = event.id;
                    seen.push(event.id);
                }
                if finished {
                    return seen;
                }
            }
        }
    });
    let writers: Vec<_> = (0..WRITERS)
        .map(|writer| {
            let store = Arc::clone(&store);
            std::thread::spawn(move || {
                let boot = format!("boot-{writer}");
                for batch in 0..BATCHES {
                    let data: Vec<String> = (0..PER_BATCH)
                        .map(|n| format!("{{\"n\":{}}}", batch * PER_BATCH + n))
                        .collect();
                    let events: Vec<NewEvent<'_>> = data
                        .iter()
                        .enumerate()
                        .map(|(n, data)| NewEvent {
                            seq: batch * PER_BATCH + n as u64 + 1,
                            kind: "k",
                            data,
                            user_view: &UserView::Hidden,
                        })
                        .collect();
                    store.append_events("node", &boot, &events).expect("append");
                }
            })
        })
        .collect();
    for writer in writers {
        writer.join().expect("a writer");
    }
    done.store(true, Ordering::Release);
    let seen = reader.join().expect("the reader");

    let events = all_events(&store);
    let total = WRITERS * (BATCHES * PER_BATCH) as usize;
    assert_eq!(events.len(), total);
    let ids: Vec<u64> = events.iter().map(|event| event.id).collect();
    assert_eq!(
        seen, ids,
        "the follower saw every event, in the log's order"
    );
    // Each process's events keep their order, and each is there once.
    let mut last_seq = std::collections::HashMap::new();
    let mut unique = HashSet::new();
    for event in &events {
        let seq: u64 = serde_json::from_str::<serde_json::Value>(&event.data).expect("json")["n"]
            .as_u64()
            .expect("n");
        let previous = last_seq.insert(event.boot_id.clone(), seq);
        assert!(previous.is_none_or(|previous| previous < seq), "{event:?}");
        assert!(unique.insert((event.boot_id.clone(), seq)));
        assert_eq!(event.user_view, UserView::Hidden);
    }

    // A batch sent again (its commit was not confirmed) is not stored twice.
    let again = [NewEvent {
        seq: 1,
        kind: "k",
        data: "{\"n\":0}",
        user_view: &UserView::Same,
    }];
    store
        .append_events("node", "boot-0", &again)
        .expect("append");
    assert_eq!(all_events(&store).len(), total);

    // Pruning keeps the newest ids; the tail is the newest events, oldest first.
    store.prune_events(10).expect("prune");
    let kept = all_events(&store);
    let newest = ids.last().copied().unwrap_or_default();
    assert!(kept.iter().all(|event| event.id + 10 > newest), "{kept:?}");
    assert_eq!(kept.last().map(|event| event.id), Some(newest));
    let tail: Vec<u64> = store
        .events_tail(3)
        .expect("tail")
        .iter()
        .map(|event| event.id)
        .collect();
    assert_eq!(tail, ids[ids.len() - 3..]);
    assert_eq!(
        store.oldest_event_id().expect("oldest"),
        kept.first().map(|event| event.id)
    );
}

#[test]
fn a_listening_connection_hears_every_append_and_views_are_kept() {
    let server = TestPostgres::start("event-listen");
    let store = PgStore::open(&server.url).expect("the store opens");
    let mut listener = store.listen_events("node-x").expect("listen");
    let redacted = UserView::Redacted("{}".into());
    let event = NewEvent {
        seq: 1,
        kind: "deployment.environment",
        data: "{\"host\":\"h\"}",
        user_view: &redacted,
    };
    store
        .append_events("node-x", "boot", &[event])
        .expect("append");
    let heard = first_heard(|| listener.wait(Duration::from_millis(200)).expect("wait"));
    assert_eq!(heard, [String::new()], "one wake-up per append");
    store.notify_events("beat:boot:1").expect("notify");
    let heard = first_heard(|| listener.wait(Duration::from_millis(200)).expect("wait"));
    assert_eq!(heard, ["beat:boot:1"]);
    let logged = store.events_tail(1).expect("tail");
    assert_eq!(logged.len(), 1);
    assert_eq!(
        (
            logged[0].node_id.as_str(),
            logged[0].kind.as_str(),
            &logged[0].user_view
        ),
        ("node-x", "deployment.environment", &redacted)
    );
    // The server ending the connection is reported, not waited on for ever.
    server.end_connections();
    let ended = (0..50).any(|_| listener.wait(Duration::from_millis(100)).is_err());
    assert!(ended, "an ended listening connection is reported");
}

/// The first non-empty answer of `poll`, tried for up to ten seconds.
fn first_heard(mut poll: impl FnMut() -> Vec<String>) -> Vec<String> {
    for _ in 0..50 {
        let answer = poll();
        if !answer.is_empty() {
            return answer;
        }
    }
    Vec::new()
}
