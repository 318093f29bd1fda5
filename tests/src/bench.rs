//! What the examples that measure (benchmarks, not tests) share: percentiles, and the phase
//! events a subscriber receives with how long each took from its publication (`at`, the moment
//! the plugin published it, millisecond resolution) to its arrival.

use std::time::{Duration, SystemTime};

use futures_util::StreamExt;
use serde_json::Value;
use tokio::sync::mpsc;

use crate::TestHost;

/// One phase event as a subscriber received it.
pub struct Delivery {
    pub deployment_id: String,
    pub status: String,
    pub latency: Duration,
}

/// The value below which `fraction` of `sorted` lies.
pub fn percentile(sorted: &[Duration], fraction: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * fraction).round() as usize;
    sorted.get(index).copied().unwrap_or_default()
}

/// `p50 … ms  p99 … ms  max … ms` of `sorted`.
pub fn summary(sorted: &[Duration]) -> String {
    let ms = |duration: Duration| duration.as_secs_f64() * 1e3;
    format!(
        "p50 {:>6.1} ms  p99 {:>6.1} ms  max {:>6.1} ms",
        ms(percentile(sorted, 0.50)),
        ms(percentile(sorted, 0.99)),
        ms(sorted.last().copied().unwrap_or_default()),
    )
}

/// Opens one stream on `host` with `key`; sends every phase event's delivery to `out`.
/// Returns once subscribed.
pub async fn phase_deliveries(host: &TestHost, key: &str, out: mpsc::UnboundedSender<Delivery>) {
    let response = crate::scenario::open_events(host, key).await;
    tokio::spawn(async move {
        let mut stream = response.bytes_stream();
        let mut buffer = String::new();
        while let Some(Ok(chunk)) = stream.next().await {
            let arrived = SystemTime::now();
            buffer.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = buffer.find("\n\n") {
                let block: String = buffer.drain(..end + 2).collect();
                if !block.lines().any(|line| line == "event: deployment.phase") {
                    continue;
                }
                let data: String = block
                    .lines()
                    .filter_map(|line| line.strip_prefix("data:"))
                    .map(str::trim_start)
                    .collect();
                let Ok(event) = serde_json::from_str::<Value>(&data) else {
                    continue;
                };
                let Some(at) = event["at"]
                    .as_str()
                    .and_then(|at| humantime::parse_rfc3339(at).ok())
                else {
                    continue;
                };
                let delivery = Delivery {
                    deployment_id: event["deployment_id"].as_str().unwrap_or("").to_owned(),
                    status: event["status"].as_str().unwrap_or("").to_owned(),
                    latency: arrived.duration_since(at).unwrap_or_default(),
                };
                if out.send(delivery).is_err() {
                    return;
                }
            }
        }
    });
}
