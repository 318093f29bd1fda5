//! `GET /metrics`: OpenMetrics text to a scraper that asks for it (Prometheus does), the
//! Prometheus text format 0.0.4 to anyone else (curl, `promtool check metrics`), each with the
//! `HELP` and `TYPE` lines its format expects. Request counts and latencies come from a layer on every
//! route (`layers::Edge`), labelled by the route template, never the raw path, so ids cannot
//! explode the label set; plugin state is read from the slots at scrape time; deployment
//! results and environment health are counted from the event bus, which the deployment plugin
//! publishes them on.

use std::{
    hash::{Hash, Hasher},
    sync::{atomic::AtomicI64, Arc},
    time::Duration,
};

use axum::{
    extract::{MatchedPath, State},
    http::{header, HeaderMap, Method, StatusCode},
    response::{IntoResponse, Response},
};
use prometheus_client::{
    encoding::{text::encode, EncodeLabelSet, EncodeLabelValue, LabelValueEncoder},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

use super::AppState;
use crate::services::events::EventBus;

type Labels = Vec<(&'static str, String)>;

/// The route template a request matched, or `unmatched`. Holds the router's own shared string,
/// so labelling a request allocates nothing.
#[derive(Clone, Debug)]
struct RouteLabel(Option<MatchedPath>);

impl RouteLabel {
    fn as_str(&self) -> &str {
        self.0.as_ref().map_or("unmatched", MatchedPath::as_str)
    }
}

impl PartialEq for RouteLabel {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for RouteLabel {}

impl Hash for RouteLabel {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl EncodeLabelValue for RouteLabel {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        EncodeLabelValue::encode(&self.as_str(), encoder)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RequestLabels {
    route: RouteLabel,
    method: &'static str,
    /// A number from a small set: a plugin's answer is checked to be a valid status code
    /// before it gets here.
    status: u16,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RouteLabels {
    route: RouteLabel,
}

fn latency_histogram() -> Histogram {
    // 100 µs to ~6.5 s.
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.0001, 2.0, 17,
    ))
}

pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<RouteLabels, Histogram, fn() -> Histogram>,
    plugin_state: Family<Labels, Gauge>,
    plugin_swaps: Family<Labels, Gauge>,
    deployments: Family<Labels, Counter>,
    environment_results: Family<Labels, Counter>,
    environment_healthy: Family<Labels, Gauge>,
    sse_subscribers: Gauge<i64, AtomicI64>,
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("powerautomation");
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = Family::<RouteLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        let plugin_state = Family::<Labels, Gauge>::default();
        let plugin_swaps = Family::<Labels, Gauge>::default();
        let deployments = Family::<Labels, Counter>::default();
        let environment_results = Family::<Labels, Counter>::default();
        let environment_healthy = Family::<Labels, Gauge>::default();
        let sse_subscribers = Gauge::<i64, AtomicI64>::default();
        registry.register(
            "http_requests",
            "HTTP requests by route template, method and status",
            requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "HTTP request latency by route template",
            latency.clone(),
        );
        registry.register(
            "plugin_state",
            "1 for the state each plugin is in (active, disabled, missing, incompatible, failed)",
            plugin_state.clone(),
        );
        registry.register(
            "plugin_swaps",
            "Hot swaps of each plugin since the host started",
            plugin_swaps.clone(),
        );
        registry.register(
            "deployments",
            "Deployments that ended, by final status",
            deployments.clone(),
        );
        registry.register(
            "deployment_environment_results",
            "Environment results of deployments, by status",
            environment_results.clone(),
        );
        registry.register(
            "environment_healthy",
            "1 when an environment's last health check passed, 0 when it failed",
            environment_healthy.clone(),
        );
        registry.register(
            "sse_subscribers",
            "Open Server-Sent Events streams",
            sse_subscribers.clone(),
        );
        Metrics {
            registry,
            requests,
            latency,
            plugin_state,
            plugin_swaps,
            deployments,
            environment_results,
            environment_healthy,
            sse_subscribers,
        }
    }

    /// Counts one answered request and its latency, by route template.
    pub fn count_request(
        &self,
        route: Option<&MatchedPath>,
        method: &Method,
        status: StatusCode,
        elapsed: Duration,
    ) {
        let route = RouteLabel(route.cloned());
        self.latency
            .get_or_create(&RouteLabels {
                route: route.clone(),
            })
            .observe(elapsed.as_secs_f64());
        self.requests
            .get_or_create(&RequestLabels {
                route,
                method: method_label(method),
                status: status.as_u16(),
            })
            .inc();
    }

    /// Counts an open SSE stream until the returned guard is dropped.
    pub fn sse_subscriber(self: &Arc<Self>) -> SubscriberGuard {
        self.sse_subscribers.inc();
        SubscriberGuard {
            metrics: Arc::clone(self),
        }
    }

    /// Follows the bus for the lifetime of the host and counts deployment outcomes and health.
    pub fn observe(self: Arc<Self>, bus: &EventBus) {
        let mut events = bus.subscribe();
        tokio::spawn(async move {
            loop {
                let event = match events.recv().await {
                    Ok(event) => event,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                };
                // Another node's events are counted there, so a sum over nodes counts each once.
                if !event.local {
                    continue;
                }
                let Ok(data) = serde_json::from_str::<serde_json::Value>(&event.data) else {
                    continue;
                };
                match event.kind.as_str() {
                    "deployment.phase" => {
                        let status = data["status"].as_str().unwrap_or_default();
                        if matches!(status, "completed" | "failed" | "cancelled" | "interrupted") {
                            self.deployments
                                .get_or_create(&vec![("status", status.to_owned())])
                                .inc();
                        }
                    }
                    "deployment.environment" => {
                        let status = data["environment"]["status"].as_str().unwrap_or_default();
                        if matches!(status, "succeeded" | "failed" | "timed_out" | "cancelled") {
                            self.environment_results
                                .get_or_create(&vec![("status", status.to_owned())])
                                .inc();
                        }
                    }
                    "environment.deleted" => {
                        let id = data["environment_id"]
                            .as_str()
                            .unwrap_or_default()
                            .to_owned();
                        // A deleted environment's series goes with it.
                        self.environment_healthy.remove(&vec![("environment", id)]);
                    }
                    "environment.health" => {
                        let id = data["environment_id"]
                            .as_str()
                            .unwrap_or_default()
                            .to_owned();
                        let healthy = data["health"]["healthy"].as_bool().unwrap_or(false);
                        self.environment_healthy
                            .get_or_create(&vec![("environment", id)])
                            .set(i64::from(healthy));
                    }
                    _ => {}
                }
            }
        });
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

pub struct SubscriberGuard {
    metrics: Arc<Metrics>,
}

impl Drop for SubscriberGuard {
    fn drop(&mut self) {
        self.metrics.sse_subscribers.dec();
    }
}

/// A request method as a label: the standard ones, and `other` for anything a client makes up,
/// so requests cannot grow the label set (and the scrape) without bound.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "other",
    }
}

/// Prometheus text: requests by route and status, latency, plugin state and swaps, deployments,
/// environment health, SSE subscribers.
#[utoipa::path(get, path = "/metrics", operation_id = "getMetrics", tag = "host",
    responses((status = 200, description = "OpenMetrics text when the Accept header asks for `application/openmetrics-text` (as Prometheus does), else the Prometheus text format 0.0.4", content(
        (String = "text/plain"),
        (String = "application/openmetrics-text"),
    ))))]
pub async fn scrape(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let metrics = &state.metrics;
    for slot in state.slots.iter() {
        let status = slot.status();
        for candidate in ["active", "disabled", "missing", "incompatible", "failed"] {
            metrics
                .plugin_state
                .get_or_create(&vec![
                    ("plugin", status.name.clone()),
                    ("state", candidate.to_owned()),
                ])
                .set(i64::from(status.state.as_str() == candidate));
        }
        metrics
            .plugin_swaps
            .get_or_create(&vec![("plugin", status.name.clone())])
            .set(i64::try_from(status.swaps).unwrap_or(i64::MAX));
    }
    let mut text = String::new();
    if encode(&mut text, &metrics.registry).is_err() {
        return (StatusCode::INTERNAL_SERVER_ERROR, "metrics encoding failed").into_response();
    }
    let openmetrics = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .any(|value| value.contains("application/openmetrics-text"));
    if openmetrics {
        (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response()
    } else {
        (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            prometheus_text(&text),
        )
            .into_response()
    }
}

/// The Prometheus text format 0.0.4 of an OpenMetrics exposition. OpenMetrics names a counter's
/// family without `_total` and ends with `# EOF`; the text format names its `HELP` and `TYPE`
/// lines after the sample (`x_total`) and has no end marker. Everything else is the same.
fn prometheus_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        match renamed {
            Some(renamed) => out.push_str(&renamed),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_format_names_counters_after_their_samples() {
        let openmetrics = "# HELP a_requests Requests.\n# TYPE a_requests counter\na_requests_total{x=\"1\"} 2\n# HELP a_up Up.\n# TYPE a_up gauge\na_up 1\n# EOF\n";
        assert_eq!(
            prometheus_text(openmetrics),
            "# HELP a_requests_total Requests.\n# TYPE a_requests_total counter\na_requests_total{x=\"1\"} 2\n# HELP a_up Up.\n# TYPE a_up gauge\na_up 1\n"
        );
    }
}
