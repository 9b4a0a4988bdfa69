//! `GET /v1/admin/overview`: what the console's first page shows, in one
//! answer shared for [`super::OVERVIEW_TTL`] by every console that asks.
//!
//! Whole-deployment figures come from Redis (funnel, lag, timers, queues)
//! and the archive (event rates and placed → settled latency over the last
//! [`RATE_WINDOW`], reconciliation runs); placement latency and the busiest
//! restaurants are this process's. A source that does not answer leaves its
//! section out and says so in `errors`; the rest still answers.

use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::AppState;
use crate::problem::Problem;

/// The window event rates and latencies are measured over.
pub const RATE_WINDOW: Duration = Duration::from_secs(10);
/// Reconciliation runs the overview lists.
const RECONCILIATION_RUNS_LISTED: i64 = 5;

/// Latency buckets: quarter powers of two from 16 µs (the last one open).
const BUCKETS: usize = 96;

fn bucket_of(micros: u64) -> usize {
    let micros = micros.max(16) as f64;
    (((micros / 16.0).log2() * 4.0) as usize).min(BUCKETS - 1)
}

fn bucket_upper_ms(bucket: usize) -> f64 {
    16.0 * 2f64.powf((bucket + 1) as f64 / 4.0) / 1000.0
}

/// Latencies of the last one to two windows of [`RATE_WINDOW`], in
/// logarithmic buckets (±19%): fixed memory whatever the rate.
pub struct LatencyWindow {
    windows: Mutex<Windows>,
    /// Everything recorded since the process started.
    total: std::sync::atomic::AtomicU64,
}

struct Windows {
    started: Instant,
    current: [u64; BUCKETS],
    previous: [u64; BUCKETS],
}

impl Default for LatencyWindow {
    fn default() -> Self {
        Self {
            windows: Mutex::new(Windows {
                started: Instant::now(),
                current: [0; BUCKETS],
                previous: [0; BUCKETS],
            }),
            total: Default::default(),
        }
    }
}

impl Windows {
    fn rotate(&mut self, now: Instant) {
        let elapsed = now.duration_since(self.started);
        if elapsed < RATE_WINDOW {
            return;
        }
        self.previous = if elapsed < RATE_WINDOW * 2 {
            self.current
        } else {
            [0; BUCKETS]
        };
        self.current = [0; BUCKETS];
        self.started = now;
    }
}

/// Count, per second and quantiles of a [`LatencyWindow`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    /// Recorded since the process started.
    pub total: u64,
    pub count: u64,
    pub per_sec: f64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

impl LatencyWindow {
    pub fn record(&self, took: Duration) {
        self.total
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        windows.rotate(Instant::now());
        windows.current[bucket_of(took.as_micros() as u64)] += 1;
    }

    pub fn summary(&self) -> Summary {
        let mut windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        windows.rotate(now);
        let mut counts = windows.previous;
        for (sum, current) in counts.iter_mut().zip(windows.current) {
            *sum += current;
        }
        let count: u64 = counts.iter().sum();
        let span = RATE_WINDOW + now.duration_since(windows.started);
        let quantile = |q: f64| {
            let rank = ((count as f64) * q).ceil().max(1.0) as u64;
            let mut seen = 0;
            counts.iter().enumerate().find_map(|(bucket, n)| {
                seen += n;
                (seen >= rank).then(|| bucket_upper_ms(bucket))
            })
        };
        Summary {
            total: self.total.load(std::sync::atomic::Ordering::Relaxed),
            count,
            per_sec: count as f64 / span.as_secs_f64(),
            p50_ms: (count > 0).then(|| quantile(0.5)).flatten(),
            p99_ms: (count > 0).then(|| quantile(0.99)).flatten(),
        }
    }
}

pub async fn get(State(state): State<AppState>, _admin: super::Admin) -> Result<Response, Problem> {
    let mut cached = state.console.overview.lock().await;
    if let Some((at, value)) = cached.as_ref()
        && at.elapsed() < super::OVERVIEW_TTL
    {
        return Ok(axum::Json(value.clone()).into_response());
    }
    let value = gather(&state).await;
    *cached = Some((Instant::now(), value.clone()));
    Ok(axum::Json(value).into_response())
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

async fn gather(state: &AppState) -> Value {
    let engine = &state.engine;
    let mut errors: Vec<String> = Vec::new();
    let mut section = |name: &str, result: Result<Value, String>| match result {
        Ok(value) => value,
        Err(error) => {
            errors.push(format!("{name}: {error}"));
            Value::Null
        }
    };
    let (funnel, groups, timers, archive, backlog) = tokio::join!(
        engine::ops::funnel(engine),
        engine::ops::group_lags(engine),
        engine::ops::timers(engine),
        archive_figures(&state.postgres),
        engine::ops::archive_backlog(engine),
    );
    let funnel = section(
        "funnel",
        funnel.map(|f| json!(f)).map_err(|e| e.to_string()),
    );
    let archive_lag = backlog.ok().map(|b| {
        json!({
            "lag_entries": b.lag_entries,
            "pending_entries": b.pending_entries,
            "bytes": b.bytes,
            "oldest_age_ms": b.oldest_ms.map(|ms| (now_ms() - ms).max(0)),
        })
    });
    let budget = engine.budget();
    let reading = budget.reading();
    let memory = json!({
        "state": budget.refusal().map_or("accepting", |r| r.as_str()),
        "used_bytes": reading.used,
        "limit_bytes": reading.limit,
        "reserve_bytes": reading.reserve,
        "high_water_bytes": reading.high_water,
        "low_water_bytes": reading.low_water,
        "orders_in_flight": reading.in_flight,
        "growth_bytes_per_s": reading.growth_per_sec,
        "to_high_water_s": reading.to_high_water(),
        "refused": reading.refused,
    });
    // The operator queues' sizes: what their groups hold or have not read.
    let letters = groups.as_ref().ok().map(|groups| {
        let held = |group: &str, topic: &str| {
            groups
                .iter()
                .filter(|g| g.group == group && g.topic == topic)
                .map(|g| g.lag + g.pending)
                .sum::<u64>()
        };
        json!({
            "dead": held(engine::ops::DEAD_GROUP, "dead"),
            "parked": held(engine::ops::PARKED_GROUP, "parked"),
        })
    });
    let groups = section(
        "groups",
        groups.map(|g| json!(g)).map_err(|e| e.to_string()),
    );
    let timers = section(
        "timers",
        timers.map(|t| json!(t)).map_err(|e| e.to_string()),
    );
    let archive = section("archive", archive.map_err(|e| e.to_string()));
    let placements = state.console.placements.summary();
    let busiest: Vec<Value> = state
        .hot_spots
        .top()
        .into_iter()
        .map(|(restaurant, placements)| json!({"restaurant_id": restaurant, "placements": placements}))
        .collect();
    json!({
        "at": super::at(now_ms()),
        "window_s": RATE_WINDOW.as_secs(),
        "this_engine": {
            "placements": placements.count,
            "placements_total": placements.total,
            "placements_per_s": placements.per_sec,
            "placement_p50_ms": placements.p50_ms,
            "placement_p99_ms": placements.p99_ms,
            "busiest_restaurants": busiest,
        },
        "funnel": funnel,
        "groups": groups,
        "archiver": archive_lag,
        "memory": memory,
        "timers": timers,
        "letters": letters,
        "archive": archive,
        "errors": errors,
    })
}

/// Event rates by type, placed → settled latency and the last
/// reconciliation runs, from the archive.
async fn archive_figures(pool: &deadpool_postgres::Pool) -> anyhow::Result<Value> {
    let client = pool.get().await?;
    let window = RATE_WINDOW.as_secs_f64();
    // Events are partitioned by their order's month: the current and last
    // month hold every recent event of a live order.
    let recent = "part_time >= date_trunc('month', now()) - interval '1 month' \
                  AND event_time > now() - make_interval(secs => $1)";
    let rates = client
        .query(
            &format!(
                "SELECT type, count(*) FROM saga_events WHERE {recent} GROUP BY type ORDER BY type"
            ),
            &[&window],
        )
        .await?;
    let rates: serde_json::Map<String, Value> = rates
        .into_iter()
        .map(|row| {
            (
                row.get::<_, String>(0),
                json!(row.get::<_, i64>(1) as f64 / window),
            )
        })
        .collect();
    let settled = client
        .query_one(
            &format!(
                "SELECT count(*), percentile_cont(0.5) WITHIN GROUP (ORDER BY ms), \
                 percentile_cont(0.99) WITHIN GROUP (ORDER BY ms) FROM ( \
                   SELECT extract(epoch FROM (r.settled - p.event_time)) * 1000 AS ms \
                   FROM (SELECT order_id, part_time, max(event_time) AS settled FROM saga_events \
                         WHERE {recent} AND type IN ('PaymentCaptured', 'PaymentVoided', 'PaymentDeclined') \
                         GROUP BY order_id, part_time) r \
                   JOIN saga_events p ON p.order_id = r.order_id AND p.part_time = r.part_time AND p.seq = 1) x"
            ),
            &[&window],
        )
        .await?;
    let runs = client
        .query(
            "SELECT id, started_at, finished_at, dry_run, exit_status, summary \
             FROM reconciliation_runs ORDER BY id DESC LIMIT $1",
            &[&RECONCILIATION_RUNS_LISTED],
        )
        .await?;
    let runs: Vec<Value> = runs
        .into_iter()
        .map(|row| {
            let time =
                |i| humantime::format_rfc3339_millis(row.get::<_, SystemTime>(i)).to_string();
            json!({
                "id": row.get::<_, i64>(0),
                "started_at": time(1),
                "finished_at": time(2),
                "dry_run": row.get::<_, bool>(3),
                "exit_status": row.get::<_, i32>(4),
                "summary": row.get::<_, tokio_postgres::types::Json<Value>>(5).0,
            })
        })
        .collect();
    Ok(json!({
        "events_per_s": rates,
        "placed_to_settled": {
            "orders": settled.get::<_, i64>(0),
            "p50_ms": settled.get::<_, Option<f64>>(1),
            "p99_ms": settled.get::<_, Option<f64>>(2),
        },
        "reconciliation_runs": runs,
    }))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    #[test]
    fn quantiles_come_from_the_buckets_within_a_fifth() {
        let window = super::LatencyWindow::default();
        for ms in 1..=100u64 {
            window.record(Duration::from_millis(ms));
        }
        let summary = window.summary();
        assert_eq!(summary.count, 100);
        let p50 = summary.p50_ms.unwrap();
        let p99 = summary.p99_ms.unwrap();
        assert!((50.0..=50.0 * 1.2).contains(&p50), "{p50}");
        assert!((99.0..=99.0 * 1.2).contains(&p99), "{p99}");
        assert_eq!(super::LatencyWindow::default().summary().p50_ms, None);
    }
}
