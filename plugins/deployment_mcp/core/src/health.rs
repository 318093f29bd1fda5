//! Health checks: one GET of an environment's `health_check_url`; 2xx is healthy.

use std::time::{Duration, Instant, SystemTime};

use crate::{deployment::HealthReport, triggers::timestamp};

/// One check, bounded by `timeout`. The report shows the URL with any password masked.
pub async fn check(http: &reqwest::Client, target: &str, timeout: Duration) -> HealthReport {
    let started = Instant::now();
    let answer = http.get(target).timeout(timeout).send().await;
    let url = crate::redact::url(target);
    let url = url.as_str();
    let latency_ms = started.elapsed().as_millis() as u64;
    let checked_at = timestamp(SystemTime::now());
    match answer {
        Ok(response) => {
            let status = response.status();
            HealthReport {
                healthy: status.is_success(),
                url: url.to_owned(),
                checked_at,
                http_status: Some(status.as_u16()),
                error: (!status.is_success()).then(|| format!("GET {url} answered {status}")),
                latency_ms,
            }
        }
        Err(error) => {
            let why = if error.is_timeout() {
                format!("GET {url}: no answer within {} s", timeout.as_secs_f32())
            } else if error.is_connect() {
                format!("GET {url}: connection failed (is the service up?)")
            } else {
                format!("GET {url}: request failed")
            };
            HealthReport {
                healthy: false,
                url: url.to_owned(),
                checked_at,
                http_status: None,
                error: Some(why),
                latency_ms,
            }
        }
    }
}

/// Polls until the URL is healthy or `deadline` passes, backing off from 200 ms to 5 s between
/// tries. Returns the last report.
pub async fn wait_healthy(
    http: &reqwest::Client,
    url: &str,
    per_request: Duration,
    deadline: Instant,
) -> HealthReport {
    let mut pause = Duration::from_millis(200);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let report = check(
            http,
            url,
            per_request.min(left.max(Duration::from_millis(100))),
        )
        .await;
        let left = deadline.saturating_duration_since(Instant::now());
        if report.healthy || left.is_zero() {
            return report;
        }
        tokio::time::sleep(pause.min(left)).await;
        pause = (pause * 2).min(Duration::from_secs(5));
    }
}
