//! Real peers for notifications on loopback: an HTTP receiver that records every delivery
//! (headers and body as sent) and answers as the test scripts it (fail the first attempts of
//! each delivery, or a share of all attempts with 500s or by hanging), and an SMTP sink that
//! takes mail the way a mail server does and keeps it.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use axum::{
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode},
    routing::post,
    Router,
};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::{
    scenario::{finished, started, status_within},
    TestHost, ADMIN_KEY,
};

/// How the receiver answers.
#[derive(Debug, Clone, Default)]
pub struct Script {
    /// The first this many attempts of each delivery (by `Idempotency-Key`) get a 500.
    pub fail_first: u32,
    /// Out of 100 attempts, this many get a 500 (after `fail_first`)…
    pub error_percent: u64,
    /// …and this many are held without an answer (until the sender gives up on them).
    pub hang_percent: u64,
    /// Seed of the choice.
    pub seed: u64,
}

/// One request the receiver got.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub idempotency_key: Option<String>,
    pub signature: Option<String>,
    pub event: Option<String>,
    pub body: Vec<u8>,
    pub json: serde_json::Value,
    /// The status it answered (none: held until the sender gave up).
    pub answered: Option<u16>,
    pub at: Instant,
    /// The same instant on the wall clock (to compare with the notice's `at`).
    pub received_at: SystemTime,
}

#[derive(Default)]
struct Book {
    deliveries: Vec<Delivery>,
    attempts: HashMap<String, u32>,
    counter: u64,
}

#[derive(Clone)]
struct Shared {
    script: Arc<Mutex<Script>>,
    book: Arc<Mutex<Book>>,
}

pub struct Receiver {
    pub address: SocketAddr,
    shared: Shared,
    /// Connections accepted, whether or not they sent a request.
    connections: Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Receiver {
    pub async fn start(script: Script) -> Receiver {
        let shared = Shared {
            script: Arc::new(Mutex::new(script)),
            book: Arc::new(Mutex::new(Book::default())),
        };
        let app = Router::new()
            .route("/hook", post(receive))
            .with_state(shared.clone());
        let served = crate::serve_loopback(app).await;
        Receiver {
            address: served.address,
            shared,
            connections: served.connections,
            task: served.task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}/hook", self.address)
    }

    /// How many connections were accepted, whether or not they sent a request.
    pub fn connections(&self) -> usize {
        self.connections.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Every request so far, in arrival order.
    pub fn deliveries(&self) -> Vec<Delivery> {
        lock(&self.shared.book).deliveries.clone()
    }

    /// The requests it accepted (2xx), in arrival order.
    pub fn accepted(&self) -> Vec<Delivery> {
        self.deliveries()
            .into_iter()
            .filter(|delivery| delivery.answered.is_some_and(|status| status < 300))
            .collect()
    }

    pub fn set_script(&self, script: Script) {
        *lock(&self.shared.script) = script;
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A step of a linear congruential generator: the same choices for the same seed.
fn next(state: &mut u64) -> u64 {
    *state = state
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    *state >> 33
}

async fn receive(State(shared): State<Shared>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned)
    };
    let key = header("idempotency-key");
    let script = lock(&shared.script).clone();
    let answer = {
        let mut book = lock(&shared.book);
        let attempt = {
            let count = book
                .attempts
                .entry(key.clone().unwrap_or_default())
                .or_insert(0);
            *count += 1;
            *count
        };
        book.counter += 1;
        let mut state = script.seed ^ book.counter.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let roll = next(&mut state) % 100;
        let answer = if attempt <= script.fail_first || roll < script.error_percent {
            Some(500)
        } else if roll < script.error_percent + script.hang_percent {
            None
        } else {
            Some(200)
        };
        book.deliveries.push(Delivery {
            idempotency_key: key,
            signature: header("x-powerautomation-signature"),
            event: header("x-powerautomation-event"),
            json: serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
            body: body.to_vec(),
            answered: answer,
            at: Instant::now(),
            received_at: SystemTime::now(),
        });
        answer
    };
    match answer {
        Some(status) => StatusCode::from_u16(status).unwrap_or(StatusCode::OK),
        None => {
            // Held past any sender's timeout; the sender gives up on it.
            tokio::time::sleep(Duration::from_secs(3_600)).await;
            StatusCode::OK
        }
    }
}

/// One mail the sink took.
#[derive(Debug, Clone)]
pub struct Mail {
    pub from: String,
    pub to: Vec<String>,
    /// The message as sent (headers and body, dot-unstuffed).
    pub data: String,
}

/// An SMTP server on loopback that accepts every mail (RFC 5321's commands, no extensions).
pub struct SmtpSink {
    pub address: SocketAddr,
    mails: Arc<Mutex<Vec<Mail>>>,
    /// Connections accepted, mail or not.
    connections: Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl SmtpSink {
    pub async fn start() -> SmtpSink {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port");
        let address = listener.local_addr().expect("local address");
        let mails = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let kept = Arc::clone(&mails);
        let counted = Arc::clone(&connections);
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let kept = Arc::clone(&kept);
                tokio::spawn(async move {
                    let _ = session(stream, kept).await;
                });
            }
        });
        SmtpSink {
            address,
            mails,
            connections,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("smtp://{}", self.address)
    }

    pub fn mails(&self) -> Vec<Mail> {
        lock(&self.mails).clone()
    }

    /// How many connections were accepted, whether or not they sent a mail.
    pub fn connections(&self) -> usize {
        self.connections.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn session(
    stream: tokio::net::TcpStream,
    mails: Arc<Mutex<Vec<Mail>>>,
) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read);
    write.write_all(b"220 sink.test ESMTP\r\n").await?;
    let (mut from, mut to) = (String::new(), Vec::new());
    let mut line = String::new();
    loop {
        line.clear();
        if lines.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let command = line.trim_end().to_owned();
        let upper = command.to_ascii_uppercase();
        let reply: &[u8] = if upper.starts_with("EHLO") || upper.starts_with("HELO") {
            b"250 sink.test\r\n"
        } else if let Some(rest) = upper.strip_prefix("MAIL FROM:") {
            from = command[command.len() - rest.len()..].trim().to_owned();
            to.clear();
            b"250 OK\r\n"
        } else if let Some(rest) = upper.strip_prefix("RCPT TO:") {
            to.push(command[command.len() - rest.len()..].trim().to_owned());
            b"250 OK\r\n"
        } else if upper == "DATA" {
            write.write_all(b"354 go on\r\n").await?;
            let mut data = String::new();
            loop {
                line.clear();
                if lines.read_line(&mut line).await? == 0 {
                    return Ok(());
                }
                if line == ".\r\n" || line == ".\n" {
                    break;
                }
                data.push_str(line.strip_prefix('.').unwrap_or(&line));
            }
            lock(&mails).push(Mail {
                from: from.clone(),
                to: to.clone(),
                data,
            });
            b"250 OK kept\r\n"
        } else if upper == "QUIT" {
            write.write_all(b"221 bye\r\n").await?;
            return Ok(());
        } else if upper == "RSET" || upper == "NOOP" {
            b"250 OK\r\n"
        } else {
            b"502 not implemented\r\n"
        };
        write.write_all(reply).await?;
    }
}

/// Runs `rounds` deployments one after another on each of `lanes` lanes at once, lane `l` on
/// environments `e{2l}` and `e{2l+1}`, canary first behind a manual gate approved as soon as it
/// waits: each deployment has three events (the gate waiting, the gate approved, completed).
/// Returns the deployments' ids.
pub async fn gated_deployments(host: &TestHost, lanes: usize, rounds: usize) -> Vec<String> {
    let wait = Duration::from_secs(120);
    let lanes = (0..lanes).map(|lane| async move {
        let mut ids = Vec::new();
        for _ in 0..rounds {
            let environments = [format!("e{}", lane * 2), format!("e{}", lane * 2 + 1)];
            let id = started(
                host,
                json!({"environments": environments, "version": "v1",
                    "strategy": {"type": "canary", "canary": 1, "gate": "manual"}}),
            )
            .await;
            let parked =
                status_within(host, &id, wait, |status| status == "awaiting_approval").await;
            assert_eq!(parked["status"], "awaiting_approval", "{parked}");
            let (status, approved) = host
                .call(
                    reqwest::Method::POST,
                    &format!("/api/deployment/deployments/{id}/approve"),
                    Some(ADMIN_KEY),
                    None,
                )
                .await;
            assert_eq!(status, 200, "{approved}");
            let record = finished(host, &id).await;
            assert_eq!(record["status"], "completed", "{record}");
            ids.push(id);
        }
        ids
    });
    futures_util::future::join_all(lanes)
        .await
        .into_iter()
        .flatten()
        .collect()
}

/// What a receiver that dedupes on `Idempotency-Key` saw of [`gated_deployments`].
#[derive(Debug)]
pub struct Seen {
    /// Distinct deliveries accepted.
    pub unique: usize,
    /// Keys accepted more than once.
    pub accepted_twice: usize,
    /// Deployments whose events were first accepted in another order than gate waiting, gate
    /// approved, completed (or that lack one).
    pub out_of_order: Vec<String>,
    /// Per delivery, from its event (the notice's `at`) to its first attempt, sorted: with the
    /// wait for the deliveries before it in its deployment's order.
    pub to_first_attempt: Vec<Duration>,
    /// Per delivery, from when it could be sent (its event, or the acceptance of the one before
    /// it in its deployment's order, whichever is later) to its first attempt, sorted.
    pub ready_to_first_attempt: Vec<Duration>,
    /// Attempts that were not accepted (500s and held ones).
    pub failed_attempts: usize,
}

/// Reads what `receiver` got (see [`Seen`]).
pub fn seen(receiver: &Receiver) -> Seen {
    let deliveries = receiver.deliveries();
    let mut first: HashMap<String, &Delivery> = HashMap::new();
    let mut accepted: HashMap<String, (usize, &Delivery)> = HashMap::new();
    for delivery in &deliveries {
        let key = delivery.idempotency_key.clone().unwrap_or_default();
        first.entry(key.clone()).or_insert(delivery);
        if delivery.answered.is_some_and(|status| status < 300) {
            accepted.entry(key).or_insert((0, delivery)).0 += 1;
        }
    }
    let at = |delivery: &Delivery| {
        humantime::parse_rfc3339(delivery.json["at"].as_str().unwrap_or_default()).ok()
    };
    let mut by_deployment: HashMap<String, Vec<(Instant, String)>> = HashMap::new();
    let mut lanes: HashMap<String, Vec<(SystemTime, SystemTime, SystemTime)>> = HashMap::new();
    for (key, (_, delivery)) in &accepted {
        if let (Some(event), Some(tried)) = (at(delivery), first.get(key)) {
            lanes
                .entry(
                    delivery.json["deployment"]["deployment_id"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                )
                .or_default()
                .push((event, tried.received_at, delivery.received_at));
        }
    }
    let mut ready_to_first_attempt = Vec::new();
    for mut lane in lanes.into_values() {
        lane.sort();
        let mut before: Option<SystemTime> = None;
        for (event, tried, accepted_at) in lane {
            let ready = before.map_or(event, |before| before.max(event));
            ready_to_first_attempt.push(tried.duration_since(ready).unwrap_or_default());
            before = Some(accepted_at);
        }
    }
    ready_to_first_attempt.sort();
    for (_, delivery) in accepted.values() {
        let body = &delivery.json;
        let what = match body["event"].as_str() {
            Some("deployment.gate") => {
                format!("gate {}", body["gate"]["status"].as_str().unwrap_or(""))
            }
            other => other.unwrap_or_default().to_owned(),
        };
        by_deployment
            .entry(
                body["deployment"]["deployment_id"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            )
            .or_default()
            .push((delivery.at, what));
    }
    let mut out_of_order = Vec::new();
    for (deployment, mut events) in by_deployment {
        events.sort();
        let order: Vec<&str> = events.iter().map(|(_, what)| what.as_str()).collect();
        if order != ["gate waiting", "gate approved", "deployment.completed"] {
            out_of_order.push(format!("{deployment}: {order:?}"));
        }
    }
    let mut to_first_attempt: Vec<Duration> = first
        .values()
        .filter_map(|delivery| {
            Some(
                delivery
                    .received_at
                    .duration_since(at(delivery)?)
                    .unwrap_or_default(),
            )
        })
        .collect();
    to_first_attempt.sort();
    Seen {
        unique: accepted.len(),
        accepted_twice: accepted.values().filter(|(count, _)| *count > 1).count(),
        out_of_order,
        to_first_attempt,
        ready_to_first_attempt,
        failed_attempts: deliveries
            .iter()
            .filter(|delivery| delivery.answered.is_none_or(|status| status >= 300))
            .count(),
    }
}

/// The environments [`gated_deployments`] deploys: `e0` … for `lanes` lanes, each a local `true`.
pub fn gated_environments(lanes: usize) -> Vec<Value> {
    (0..lanes * 2)
        .map(|index| crate::scenario::local(&format!("e{index}"), &["true"], 30))
        .collect()
}
