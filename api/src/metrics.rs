//! `GET /metrics` (Prometheus text): requests by route and status, placement
//! latency, saga outcomes, shed requests, dead letters, per-restaurant hot
//! spots, and — gathered in the background from XINFO GROUPS every
//! [`GATHER_INTERVAL`] — lag and pending entries per consumer group and
//! topic. Every label takes its values from a closed set or from entities
//! that exist, so no request can add series.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, header};
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
/// The hot-spot table names this many restaurants.
const HOT_SPOTS_TOP: usize = 10;
/// The hot-spot table counts placements per window; a restaurant drops out
/// of it once it had none for a whole window.
const HOT_SPOTS_WINDOW: Duration = Duration::from_secs(60);
/// Restaurants counted per window at most (only restaurants that exist are
/// counted at all; past this, new ones wait for the next window).
const HOT_SPOTS_TRACKED_MAX: usize = 10_000;
/// HTTP methods counted under their own name; any other is `other`.
const METHODS: &[&str] = &["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"];
/// The stream and timer gauges are gathered from Redis this often, in the
/// background: a scrape renders what was gathered and costs no Redis call.
pub const GATHER_INTERVAL: Duration = Duration::from_secs(2);

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

/// Placements per restaurant in this process over the current and the
/// previous window, for `lunchrush_hot_restaurant_placements`. Rendered by
/// hand rather than as recorder gauges, so a restaurant that falls out of
/// the table leaves no series behind.
#[derive(Debug)]
pub struct HotSpots {
    windows: Mutex<HotWindows>,
}

#[derive(Debug)]
struct HotWindows {
    started: Instant,
    current: HashMap<String, u64>,
    previous: HashMap<String, u64>,
}

impl Default for HotSpots {
    fn default() -> Self {
        Self {
            windows: Mutex::new(HotWindows {
                started: Instant::now(),
                current: HashMap::new(),
                previous: HashMap::new(),
            }),
        }
    }
}

impl HotWindows {
    fn rotate(&mut self, now: Instant) {
        let elapsed = now.duration_since(self.started);
        if elapsed < HOT_SPOTS_WINDOW {
            return;
        }
        self.previous = std::mem::take(&mut self.current);
        if elapsed >= HOT_SPOTS_WINDOW * 2 {
            self.previous.clear();
        }
        self.started = now;
    }
}

impl HotSpots {
    /// Counts one placement for `restaurant`, which must exist (callers
    /// never pass an id a request merely named).
    pub fn record(&self, restaurant: &str) {
        // No .await while the lock is held: a std Mutex is right here.
        let mut windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        windows.rotate(Instant::now());
        if let Some(count) = windows.current.get_mut(restaurant) {
            *count += 1;
        } else if windows.current.len() < HOT_SPOTS_TRACKED_MAX {
            windows.current.insert(restaurant.to_string(), 1);
        }
    }

    /// The busiest restaurants of the last one to two windows.
    pub fn top(&self) -> Vec<(String, u64)> {
        let mut windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        windows.rotate(Instant::now());
        let mut sum: HashMap<&str, u64> = HashMap::new();
        for (restaurant, count) in windows.previous.iter().chain(windows.current.iter()) {
            *sum.entry(restaurant.as_str()).or_default() += count;
        }
        let mut top: Vec<(String, u64)> =
            sum.into_iter().map(|(r, c)| (r.to_string(), c)).collect();
        top.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        top.truncate(HOT_SPOTS_TOP);
        top
    }

    /// The table in Prometheus text. Restaurant ids are `[A-Za-z0-9_.-]`
    /// (validated on the way in), so they need no escaping.
    fn render(&self) -> String {
        let mut text = String::from(
            "# HELP lunchrush_hot_restaurant_placements Placements in this process over the last one to two minutes, the ten busiest restaurants.\n\
             # TYPE lunchrush_hot_restaurant_placements gauge\n",
        );
        for (restaurant, count) in self.top() {
            text.push_str(&format!(
                "lunchrush_hot_restaurant_placements{{restaurant=\"{restaurant}\"}} {count}\n"
            ));
        }
        text
    }
}

/// Counts every request by route template (never the raw path: bounded
/// cardinality), method (a closed set: anything unusual is `other`) and
/// status, and times it.
pub async fn track(request: Request, next: Next) -> Response {
    let route = request.extensions().get::<MatchedPath>().cloned();
    let method = METHODS
        .iter()
        .find(|m| **m == request.method().as_str())
        .copied()
        .unwrap_or("other");
    let started = Instant::now();
    let response = next.run(request).await;
    let route = route.as_ref().map_or("unmatched", MatchedPath::as_str);
    let series = request_series(route, method, response.status().as_u16());
    series.requests.increment(1);
    series.seconds.record(started.elapsed().as_secs_f64());
    response
}

/// One (route, method, status)'s request counter and its route's latency
/// histogram.
#[derive(Clone)]
struct RequestSeries {
    requests: metrics::Counter,
    seconds: metrics::Histogram,
}

/// Request series by route, then (method, status): each registered once,
/// so a request bumps two handles instead of building, hashing and looking
/// up its labels twice. As bounded as the labels: routes are the router's
/// templates, methods and statuses closed sets.
type SeriesByRoute = HashMap<String, HashMap<(&'static str, u16), RequestSeries>>;

static REQUEST_SERIES: std::sync::LazyLock<std::sync::RwLock<SeriesByRoute>> =
    std::sync::LazyLock::new(Default::default);

fn request_series(route: &str, method: &'static str, status: u16) -> RequestSeries {
    use std::sync::PoisonError;
    let known = REQUEST_SERIES
        .read()
        .unwrap_or_else(PoisonError::into_inner);
    if let Some(series) = known.get(route).and_then(|s| s.get(&(method, status))) {
        return series.clone();
    }
    drop(known);
    let series = RequestSeries {
        requests: metrics::counter!("lunchrush_http_requests_total",
            "route" => route.to_string(), "method" => method, "status" => status.to_string()),
        seconds: metrics::histogram!("lunchrush_http_request_seconds", "route" => route.to_string()),
    };
    REQUEST_SERIES
        .write()
        .unwrap_or_else(PoisonError::into_inner)
        .entry(route.to_string())
        .or_default()
        .insert((method, status), series.clone());
    series
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
            for group in engine::streams::group_infos(&state.redis, &stream).await? {
                *lag.entry((group.name.clone(), topic.as_str())).or_default() +=
                    group.lag.unwrap_or(0) as f64;
                *pending.entry((group.name, topic.as_str())).or_default() += group.pending as f64;
            }
        }
    }
    let backlog = [&lag, &pending]
        .iter()
        .filter_map(|m| m.get(&("payment".to_string(), "orders")))
        .sum::<f64>();
    state
        .payment_backlog
        .store(backlog as u64, std::sync::atomic::Ordering::Relaxed);
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
    let circuit: Option<String> = state.redis.get(keys.circuit()).await?;
    state
        .circuit_open_elsewhere
        .store(circuit.is_some(), std::sync::atomic::Ordering::Relaxed);
    for (topic, value) in length {
        metrics::gauge!("lunchrush_stream_length_entries", "topic" => topic).set(value);
    }
    Ok(())
}

/// The archive backlog: what the archiver has yet to commit, its bytes in
/// Redis and the age of its oldest entry (0 when there is none).
fn archive_gauges(backlog: &engine::ops::ArchiveBacklog) {
    let entries = backlog.lag_entries + backlog.pending_entries;
    metrics::gauge!("lunchrush_archive_backlog_entries").set(entries as f64);
    metrics::gauge!("lunchrush_archive_backlog_bytes").set(backlog.bytes as f64);
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let age = backlog
        .oldest_ms
        .map_or(0.0, |ms| (now_ms - ms).max(0) as f64 / 1000.0);
    metrics::gauge!("lunchrush_archive_backlog_age_seconds").set(age);
}

/// Gathers the stream and timer gauges every [`GATHER_INTERVAL`] until the
/// task is dropped (the server aborts it when it stops).
pub async fn gather(state: AppState) {
    let mut interval = tokio::time::interval(GATHER_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let gathered = tokio::time::timeout(GATHER_INTERVAL * 5, stream_gauges(&state)).await;
        match gathered {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(%error, "Stream gauges unavailable this round."),
            Err(_) => tracing::warn!("Stream gauges took too long this round."),
        }
        let backlog = tokio::time::timeout(
            GATHER_INTERVAL * 5,
            engine::ops::archive_backlog(&state.engine),
        )
        .await;
        match backlog {
            Ok(Ok(backlog)) => archive_gauges(&backlog),
            Ok(Err(error)) => tracing::warn!(%error, "Archive backlog unavailable this round."),
            Err(_) => tracing::warn!("Archive backlog took too long this round."),
        }
    }
}

/// `GET /metrics`: what the recorder holds plus the hot-spot table. No
/// Redis call. With `--metrics-token`, only a bearer of that token may read.
pub async fn render(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    if let Some(expected) = &state.metrics_token {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|h| h.to_str().ok())
            .and_then(|h| h.strip_prefix("Bearer "))
            .unwrap_or("");
        if !constant_time_eq(given.trim().as_bytes(), expected.as_bytes()) {
            return Err(Problem::unauthorized(
                "/metrics needs `Authorization: Bearer <the metrics token>`",
            ));
        }
    }
    let mut text = state.metrics.render();
    text.push_str(&state.hot_spots.render());
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response())
}

/// Compares without an early exit, so the time taken tells nothing about
/// how much of a guess was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The table names at most ten restaurants, busiest first, and forgets
    /// one that had no placement for two windows.
    #[test]
    fn hot_spots_keep_the_busiest_and_forget_the_idle() {
        let spots = HotSpots::default();
        for i in 0..20 {
            for _ in 0..=i {
                spots.record(&format!("r{i}"));
            }
        }
        let top = spots.top();
        assert_eq!(top.len(), HOT_SPOTS_TOP);
        assert_eq!(top[0], ("r19".to_string(), 20));
        spots.windows.lock().unwrap().started -= HOT_SPOTS_WINDOW * 2;
        assert!(spots.top().is_empty());
        assert!(!spots.render().contains("r19"));
    }

    /// Every `"lunchrush_…"` name recorded in the code (and every `# TYPE`
    /// rendered by hand) is in `docs/metrics.md`, and nothing else is.
    #[test]
    fn the_metrics_reference_equals_the_code() {
        fn sources(dir: &std::path::Path, out: &mut Vec<String>) {
            for entry in std::fs::read_dir(dir).unwrap().filter_map(Result::ok) {
                let path = entry.path();
                if path.is_dir() {
                    sources(&path, out);
                } else if path.extension().is_some_and(|e| e == "rs") {
                    out.push(std::fs::read_to_string(path).unwrap());
                }
            }
        }
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut texts = Vec::new();
        for dir in ["api/src", "engine/src", "archiver/src", "src"] {
            sources(&root.join(dir), &mut texts);
        }
        let name = |rest: &str| -> String {
            rest.chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                .collect()
        };
        let mut in_code = std::collections::BTreeSet::new();
        for text in &texts {
            for rest in text.split("\"lunchrush_").skip(1) {
                let found = name(rest);
                if !found.is_empty() && rest[found.len()..].starts_with('"') {
                    in_code.insert(format!("lunchrush_{found}"));
                }
            }
            for rest in text.split("# TYPE lunchrush_").skip(1) {
                let found = name(rest);
                if !found.is_empty() {
                    in_code.insert(format!("lunchrush_{found}"));
                }
            }
        }
        let doc = std::fs::read_to_string(root.join("docs/metrics.md")).unwrap();
        let documented: std::collections::BTreeSet<String> = doc
            .lines()
            .filter_map(|l| l.strip_prefix("| `lunchrush_"))
            .map(|rest| format!("lunchrush_{}", name(rest)))
            .collect();
        assert_eq!(in_code, documented);
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
