//! Health checks: one GET of an environment's `health_check_url`; 2xx is healthy.

use std::time::{Duration, Instant};

use crate::{
    deployment::HealthReport,
    egress::{Egress, Refused},
    model::Timestamp,
};

/// Why a check got no answer.
enum NoAnswer {
    NotAUrl(url::ParseError),
    Refused(Refused),
    Request(reqwest::Error),
}

/// One check, bounded by `timeout`. The report shows the URL with any password masked.
pub async fn check(egress: &Egress, target: &str, timeout: Duration) -> HealthReport {
    let started = Instant::now();
    let answer = match url::Url::parse(target) {
        Ok(parsed) => match egress.get(&parsed) {
            Ok(request) => request
                .timeout(timeout)
                .send()
                .await
                .map_err(NoAnswer::Request),
            Err(refused) => Err(NoAnswer::Refused(refused)),
        },
        Err(error) => Err(NoAnswer::NotAUrl(error)),
    };
    let url = crate::redact::url(target);
    let url = url.as_str();
    let latency_ms = started.elapsed().as_millis() as u64;
    let checked_at = Timestamp::now();
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
        Err(no_answer) => {
            let why = match no_answer {
                NoAnswer::NotAUrl(error) => format!("{url} is not a URL: {error}"),
                NoAnswer::Refused(refused) => format!("GET {url}: {refused}"),
                NoAnswer::Request(error) => match Refused::in_chain(&error) {
                    Some(refused) => format!("GET {url}: {refused}"),
                    None if error.is_timeout() => {
                        format!("GET {url}: no answer within {} s", timeout.as_secs_f32())
                    }
                    None if error.is_connect() => {
                        format!("GET {url}: connection failed (is the service up?)")
                    }
                    None => format!("GET {url}: request failed"),
                },
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
    egress: &Egress,
    url: &str,
    per_request: Duration,
    deadline: Instant,
) -> HealthReport {
    let mut pause = Duration::from_millis(200);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let report = check(
            egress,
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
