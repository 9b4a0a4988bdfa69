//! `GET /metrics` (Prometheus text): requests by route and status, placement
//! latency, saga outcomes, shed requests, dead letters, per-restaurant hot
//! spots, and — computed at scrape time from XINFO GROUPS — lag and pending
//! entries per consumer group and topic.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use fred::prelude::*;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::AppState;
use crate::problem::Problem;

/// Latency buckets (seconds) for the request and placement histograms.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0,
];
/// Hot-spot gauges are published for this many restaurants.
const HOT_SPOTS_TOP: usize = 10;
/// The hot-spot table forgets everything when it grows past this.
const HOT_SPOTS_TRACKED_MAX: usize = 10_000;

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide Prometheus recorder (once) and returns its handle.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets(LATENCY_BUCKETS)
                .expect("non-empty buckets");
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            // Another recorder may be installed already (tests, embedding):
            // then ours still renders what it records through `handle`.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

/// Placements per restaurant in this process, for the hot-spot gauges.
#[derive(Debug, Default)]
pub struct HotSpots {
    counts: Mutex<HashMap<String, u64>>,
    published: Mutex<Vec<String>>,
}

impl HotSpots {
    pub fn record(&self, restaurant: &str) {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        if counts.len() >= HOT_SPOTS_TRACKED_MAX && !counts.contains_key(restaurant) {
            counts.clear();
        }
        *counts.entry(restaurant.to_string()).or_default() += 1;
    }

    /// Publishes the top restaurants as gauges; earlier ones drop to zero.
    fn publish(&self) {
        let mut top: Vec<(String, u64)> = self
            .counts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(r, c)| (r.clone(), *c))
            .collect();
        top.sort_by_key(|entry| std::cmp::Reverse(entry.1));
        top.truncate(HOT_SPOTS_TOP);
        let mut published = self.published.lock().unwrap_or_else(|e| e.into_inner());
        for restaurant in published.drain(..) {
            metrics::gauge!("lunchrush_hot_restaurant_placements", "restaurant" => restaurant)
                .set(0.0);
        }
        for (restaurant, count) in top {
            metrics::gauge!("lunchrush_hot_restaurant_placements", "restaurant" => restaurant.clone())
                .set(count as f64);
            published.push(restaurant);
        }
    }
}

/// Counts every request by route template (never the raw path: bounded
/// cardinality), method and status, and times it.
pub async fn track(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let method = request.method().as_str().to_string();
    let started = Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    metrics::counter!("lunchrush_http_requests_total", "route" => route.clone(), "method" => method, "status" => status)
        .increment(1);
    metrics::histogram!("lunchrush_http_request_seconds", "route" => route)
        .record(started.elapsed().as_secs_f64());
    response
}

/// Stream gauges from XINFO GROUPS, summed over partitions.
async fn stream_gauges(state: &AppState) -> Result<(), fred::error::Error> {
    let keys = state.engine.keys();
    let mut lag: HashMap<(String, &'static str), f64> = HashMap::new();
    let mut pending: HashMap<(String, &'static str), f64> = HashMap::new();
    let mut length: HashMap<&'static str, f64> = HashMap::new();
    for p in 0..keys.partitions() {
        for topic in engine::keys::Topic::ALL {
            let stream = keys.stream(p, topic);
            let len: u64 = state.redis.xlen(stream.as_str()).await?;
            *length.entry(topic.as_str()).or_default() += len as f64;
            if len == 0 {
                continue;
            }
            let groups: Value = state.redis.xinfo_groups(stream.as_str()).await?;
            for group in groups.into_array() {
                let fields: HashMap<String, Value> = group
                    .into_array()
                    .chunks(2)
                    .filter_map(|pair| Some((pair.first()?.as_string()?, pair.get(1)?.clone())))
                    .collect();
                let Some(name) = fields.get("name").and_then(Value::as_string) else {
                    continue;
                };
                let number = |k: &str| fields.get(k).and_then(Value::as_i64).unwrap_or(0) as f64;
                *lag.entry((name.clone(), topic.as_str())).or_default() += number("lag");
                *pending.entry((name, topic.as_str())).or_default() += number("pending");
            }
        }
    }
    for ((group, topic), value) in lag {
        metrics::gauge!("lunchrush_stream_lag_entries", "group" => group, "topic" => topic)
            .set(value);
    }
    for ((group, topic), value) in pending {
        metrics::gauge!("lunchrush_stream_pending_entries", "group" => group, "topic" => topic)
            .set(value);
    }
    let mut scheduled = 0u64;
    for p in 0..keys.partitions() {
        scheduled += state.engine.timers_scheduled(p).await.unwrap_or(0);
    }
    metrics::gauge!("lunchrush_timers_scheduled").set(scheduled as f64);
    for (topic, value) in length {
        metrics::gauge!("lunchrush_stream_length_entries", "topic" => topic).set(value);
    }
    Ok(())
}

pub async fn render(State(state): State<AppState>) -> Result<Response, Problem> {
    if let Err(error) = stream_gauges(&state).await {
        tracing::warn!(%error, "Stream gauges unavailable for this scrape.");
    }
    state.hot_spots.publish();
    Ok((
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response())
}
