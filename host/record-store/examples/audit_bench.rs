//! The audit log at scale, on the SQLite store: fills it with N entries (default 1,000,000:
//! twelve actions, ten actors, five doors, one in ten refused, each entry naming one to three of
//! a thousand environments), then times the filtered queries of `GET /api/audit` (a page of
//! 50, newest first: p50 and p95 of 40 runs each, parameters varied), and the cost an entry
//! adds to a trigger's transaction: the same trigger-shaped batch (claims, record, history
//! entry and indexes) applied with and without its entry, interleaved, p50 and p99 of each.
//!
//!   cargo run --release -p record-store --example audit_bench [ENTRIES]
//!
//! It exits 1 when a filtered query's p95 is 200 ms or more.

use std::time::{Duration, Instant};

use record_store::{
    AuditActor, AuditDraft, AuditOutcome, AuditQuery, AuditStatus, AuditVia, Op, Store,
};

const ACTIONS: [&str; 12] = [
    "deployment.trigger",
    "deployment.cancel",
    "deployment.retry",
    "deployment.approve",
    "deployment.reject",
    "deployment.rollback",
    "environment.create",
    "environment.update",
    "environment.delete",
    "environment.health_check",
    "plugin.reload",
    "cluster.drain",
];
const VIAS: [AuditVia; 5] = [
    AuditVia::Rest,
    AuditVia::Mcp,
    AuditVia::Cli,
    AuditVia::Dashboard,
    AuditVia::Auto,
];
const ENVIRONMENTS: u64 = 1000;
const FILL_BATCH: u64 = 1000;
const RUNS: usize = 40;

/// A small deterministic generator (the same entries every run).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, bound: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % bound
    }
}

fn draft(n: u64, random: &mut Lcg) -> AuditDraft {
    let refused = random.next(10) == 0;
    let environments = (0..=random.next(3))
        .map(|_| format!("env-{}", random.next(ENVIRONMENTS)))
        .collect();
    AuditDraft {
        actor: Some(AuditActor {
            key_name: format!("key-{}", random.next(10)),
            role: "admin".into(),
        }),
        via: VIAS[random.next(5) as usize],
        tool: None,
        action: ACTIONS[random.next(12) as usize].into(),
        resource: format!("deployment:dep-{n}"),
        outcome: AuditOutcome {
            status: if refused {
                AuditStatus::Denied
            } else {
                AuditStatus::Ok
            },
            error: refused.then(|| "forbidden".to_owned()),
            http_status: Some(if refused { 403 } else { 202 }),
        },
        request_id: Some(format!("req-{n}")),
        reason: None,
        changes: Some(serde_json::json!({ "version": format!("v{}", n % 97) })),
        environments,
    }
}

fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    let index = ((samples.len() as f64 - 1.0) * p).round() as usize;
    samples[index.min(samples.len() - 1)]
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

fn main() {
    let entries: u64 = std::env::args()
        .nth(1)
        .and_then(|text| text.parse().ok())
        .unwrap_or(1_000_000);
    let dir = tempfile::tempdir().expect("a temporary directory");
    let store = Store::open(dir.path(), "bench.db").expect("open the store");
    let mut random = Lcg(7);

    let started = Instant::now();
    let mut times = Vec::new();
    let mut written = 0;
    while written < entries {
        let count = FILL_BATCH.min(entries - written);
        let drafts: Vec<AuditDraft> = (written..written + count)
            .map(|n| draft(n, &mut random))
            .collect();
        store.apply_audited(&[], &drafts).expect("append");
        written += count;
        if written == entries / 4 || written == entries / 2 {
            times.push(record_store::audit::now_text());
        }
        if written % 100_000 == 0 {
            eprintln!(
                "  {written} entries in {:.1} s",
                started.elapsed().as_secs_f64()
            );
        }
    }
    let filled = started.elapsed();
    println!(
        "filled {entries} entries in {:.1} s ({:.0} entries/s)",
        filled.as_secs_f64(),
        entries as f64 / filled.as_secs_f64()
    );

    let (quarter, half) = (times.first().cloned(), times.last().cloned());
    type Make = Box<dyn Fn(&mut Lcg) -> AuditQuery>;
    let page = |query: AuditQuery| AuditQuery { limit: 50, ..query };
    let queries: Vec<(&str, Make)> = vec![
        (
            "newest page",
            Box::new(move |_| page(AuditQuery::default())),
        ),
        (
            "actor",
            Box::new(move |r| {
                page(AuditQuery {
                    actor: Some(format!("key-{}", r.next(10))),
                    ..Default::default()
                })
            }),
        ),
        (
            "action",
            Box::new(move |r| {
                page(AuditQuery {
                    action: Some(ACTIONS[r.next(12) as usize].into()),
                    ..Default::default()
                })
            }),
        ),
        (
            "resource",
            Box::new(move |r| {
                page(AuditQuery {
                    resource: Some(format!("deployment:dep-{}", r.next(entries))),
                    ..Default::default()
                })
            }),
        ),
        (
            "environment",
            Box::new(move |r| {
                page(AuditQuery {
                    environment: Some(format!("env-{}", r.next(ENVIRONMENTS))),
                    ..Default::default()
                })
            }),
        ),
        (
            "outcome=denied",
            Box::new(move |_| {
                page(AuditQuery {
                    outcome: Some(AuditStatus::Denied),
                    ..Default::default()
                })
            }),
        ),
        (
            "via",
            Box::new(move |r| {
                page(AuditQuery {
                    via: Some(VIAS[r.next(5) as usize]),
                    ..Default::default()
                })
            }),
        ),
        (
            "request_id",
            Box::new(move |r| {
                page(AuditQuery {
                    request_id: Some(format!("req-{}", r.next(entries))),
                    ..Default::default()
                })
            }),
        ),
        (
            "since..until (a quarter of the log, mid-way)",
            Box::new(move |_| {
                page(AuditQuery {
                    since: quarter.clone(),
                    until: half.clone(),
                    ..Default::default()
                })
            }),
        ),
        (
            "actor+action+outcome",
            Box::new(move |r| {
                page(AuditQuery {
                    actor: Some(format!("key-{}", r.next(10))),
                    action: Some(ACTIONS[r.next(12) as usize].into()),
                    outcome: Some(AuditStatus::Denied),
                    ..Default::default()
                })
            }),
        ),
        (
            "environment+action",
            Box::new(move |r| {
                page(AuditQuery {
                    environment: Some(format!("env-{}", r.next(ENVIRONMENTS))),
                    action: Some(ACTIONS[r.next(12) as usize].into()),
                    ..Default::default()
                })
            }),
        ),
        (
            "cursor deep in the log",
            Box::new(move |r| {
                page(AuditQuery {
                    before: Some(1 + r.next(entries)),
                    ..Default::default()
                })
            }),
        ),
    ];
    println!("\nfiltered queries, a page of 50, {RUNS} runs each:");
    println!(
        "{:<46} {:>9} {:>9} {:>8}",
        "filter", "p50 ms", "p95 ms", "rows"
    );
    let mut worst = Duration::ZERO;
    for (name, make) in &queries {
        let mut samples = Vec::with_capacity(RUNS);
        let mut rows = 0;
        for _ in 0..RUNS {
            let query = make(&mut random);
            let asked = Instant::now();
            rows = store.audit_query(&query).expect("query").len();
            samples.push(asked.elapsed());
        }
        let p95 = percentile(&mut samples, 0.95);
        worst = worst.max(p95);
        println!(
            "{name:<46} {:>9.2} {:>9.2} {rows:>8}",
            ms(percentile(&mut samples, 0.5)),
            ms(p95)
        );
    }

    // A trigger's transaction: claims of three environments, the record, the history entry and
    // its indexes; with and without its entry, interleaved so both see the same disk.
    let mut plain = Vec::new();
    let mut audited = Vec::new();
    let record = "x".repeat(2000);
    for n in 0..400u64 {
        let keys: Vec<String> = (0..8).map(|k| format!("bench-{n}-{k}")).collect();
        let ops: Vec<Op<'_>> = keys
            .iter()
            .enumerate()
            .map(|(k, key)| {
                if k < 3 {
                    Op::insert("claims", key, "claimed")
                } else {
                    Op::put("records", key, &record)
                }
            })
            .collect();
        let entry = [draft(entries + n, &mut random)];
        let asked = Instant::now();
        if n % 2 == 0 {
            store.apply(&ops).expect("apply");
            plain.push(asked.elapsed());
        } else {
            store.apply_audited(&ops, &entry).expect("apply");
            audited.push(asked.elapsed());
        }
    }
    println!("\na trigger's transaction (8 writes, synchronous = FULL), 200 each:");
    println!(
        "  without its entry: p50 {:.2} ms, p99 {:.2} ms",
        ms(percentile(&mut plain, 0.5)),
        ms(percentile(&mut plain, 0.99))
    );
    println!(
        "  with its entry:    p50 {:.2} ms, p99 {:.2} ms",
        ms(percentile(&mut audited, 0.5)),
        ms(percentile(&mut audited, 0.99))
    );
    let verified = Instant::now();
    let verdict = record_store::audit::verify(&store).expect("verify");
    println!(
        "\naudit verify over the whole chain: {verdict:?} in {:.1} s",
        verified.elapsed().as_secs_f64()
    );
    if worst >= Duration::from_millis(200) {
        println!(
            "\nMISSED: a filtered query's p95 is {:.1} ms (the bar is < 200 ms)",
            ms(worst)
        );
        std::process::exit(1);
    }
}
