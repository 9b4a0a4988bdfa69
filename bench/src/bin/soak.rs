//! `soak-bench`: a steady lunch load at a fixed rate against a running
//! lunchrush (`bench/soak` starts `lunchrush up` with a short live retention
//! and hands over its `stack.env`), sampling what grows with traffic: Redis
//! memory and keys, live orders, stream entries, the in-flight, resting and
//! timer indexes, and PostgreSQL's size. Writes a report (Markdown) with a
//! projection to the seed's scale, and a PNG chart of Redis memory.
//!
//! Each order is placed by a customer; 10% are cancelled by the customer
//! at once, 5% go to a restaurant that never answers (the approval timeout
//! rejects them and voids the payment); the rest are dispatched by the
//! restaurant and confirmed by the customer a moment later. So orders come
//! to rest as CONFIRMED/CAPTURED or REJECTED/VOIDED, then are archived and
//! retired.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use api::auth::{Keys, Role};
use clap::Parser;
use fred::prelude::*;
use serde_json::json;

#[derive(Debug, Parser)]
#[command(
    about = "Steady load with a short live retention; samples what grows.",
    args_override_self = true
)]
struct Args {
    /// How long the load runs.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Orders placed per second (open model: a fixed schedule).
    #[arg(long, default_value_t = 100.0)]
    rate: f64,
    /// The live retention the engine runs with (for the report).
    #[arg(long, env = "LUNCHRUSH_LIVE_RETENTION", default_value = "60s", value_parser = humantime::parse_duration)]
    retention: Duration,
    /// Time between samples.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    sample_every: Duration,
    #[command(flatten)]
    stack: bench::StackArgs,
    /// The report.
    #[arg(long, default_value = "bench/SOAK.md")]
    out: PathBuf,
    /// The chart (PNG).
    #[arg(long, default_value = "bench/soak.png")]
    chart: PathBuf,
}

const RESTAURANTS: usize = 40;
const DISHES: usize = 6;
/// Orders a day at the seed's scale.
const DAILY_ORDERS: f64 = 9_200_000.0;
/// Share of a day's orders in the two peak hours (12:00 and 19:00).
const PEAK_SHARE: f64 = 0.6;

#[derive(Debug, Clone, Default)]
struct Sample {
    at_s: f64,
    placed: u64,
    used_memory: u64,
    keys: u64,
    live_orders: u64,
    stream_entries: u64,
    in_flight: u64,
    resting: u64,
    timers: u64,
    /// Idempotency records (kept 25 h) and their bytes as MEMORY USAGE
    /// sees them (without the expiry table's share).
    idempotency_records: u64,
    idempotency_bytes: u64,
    /// Their bytes all told: records × what each costs (see [`record_cost`]).
    idempotency_all_in: u64,
    postgres_bytes: i64,
}

impl Sample {
    /// Redis memory without the idempotency records: what the live state
    /// (orders, streams, indexes, menus) takes.
    fn live_memory(&self) -> u64 {
        self.used_memory.saturating_sub(self.idempotency_all_in)
    }
}

struct Load {
    http: reqwest::Client,
    api: String,
    keys: Keys,
    admin: String,
    placed: AtomicU64,
    refused: AtomicU64,
}

impl Load {
    fn token(&self, role: Role, sub: &str, rid: Option<&str>) -> String {
        self.keys
            .mint(role, sub, rid, Duration::from_secs(24 * 3600))
            .expect("a token")
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: Option<serde_json::Value>,
        key: Option<&str>,
    ) -> anyhow::Result<(u16, serde_json::Value)> {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.api))
            .bearer_auth(token);
        if let Some(key) = key {
            request = request.header("idempotency-key", key);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await?;
        let status = response.status().as_u16();
        let body = response.json().await.unwrap_or(serde_json::Value::Null);
        Ok((status, body))
    }

    async fn seed(&self) -> anyhow::Result<()> {
        for r in 0..=RESTAURANTS {
            // The last restaurant never answers: its orders time out.
            let (rid, auto) = if r == RESTAURANTS {
                ("soak-silent".to_string(), false)
            } else {
                (format!("soak-{r:02}"), true)
            };
            let body = json!({"name": rid, "open": true, "auto_approve": auto});
            let put = reqwest::Method::PUT;
            self.send(
                put.clone(),
                &format!("/v1/restaurants/{rid}"),
                &self.admin,
                Some(body),
                None,
            )
            .await?;
            for d in 0..DISHES {
                let body = json!({"name": format!("dish {d}"), "price": 5_000 + 500 * d as i64,
                    "stock": 5_000_000, "available": true});
                let path = format!("/v1/restaurants/{rid}/menu/dish-{d}");
                self.send(put.clone(), &path, &self.admin, Some(body), None)
                    .await?;
            }
        }
        Ok(())
    }

    /// One order's life, as its customer and restaurant live it.
    async fn order(self: Arc<Self>, n: u64) -> anyhow::Result<()> {
        let silent = n % 20 == 7;
        let rid = if silent {
            "soak-silent".to_string()
        } else {
            format!("soak-{:02}", n as usize % RESTAURANTS)
        };
        let dish = n as usize % DISHES;
        let customer = format!("soak-customer-{}", n % 50_000);
        let token = self.token(Role::Customer, &customer, None);
        let body = json!({"restaurant_id": rid, "items": [{"item": format!("dish-{dish}"), "qty": 1}],
            "expected_total": 5_000 + 500 * dish as i64});
        let key = format!("soak-{n}");
        let post = reqwest::Method::POST;
        let (status, placed) = self
            .send(post.clone(), "/v1/orders", &token, Some(body), Some(&key))
            .await?;
        if status != 202 {
            self.refused.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        self.placed.fetch_add(1, Ordering::Relaxed);
        let id = placed["order_id"].as_str().unwrap_or_default().to_string();
        if silent {
            return Ok(());
        }
        if n % 10 == 3 {
            let path = format!("/v1/orders/{id}/cancel");
            let (status, _) = self.send(post.clone(), &path, &token, None, None).await?;
            if status == 200 {
                return Ok(());
            }
        }
        // The restaurant dispatches once the order is approved; the
        // customer confirms on delivery.
        let restaurant = self.token(Role::Restaurant, &format!("staff-{rid}"), Some(&rid));
        for attempt in 0..20u64 {
            tokio::time::sleep(Duration::from_millis(500 + 250 * attempt)).await;
            let path = format!("/v1/orders/{id}/dispatch");
            let (status, _) = self
                .send(post.clone(), &path, &restaurant, None, None)
                .await?;
            if status == 200 {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let path = format!("/v1/orders/{id}/confirm");
        self.send(post, &path, &token, None, None).await?;
        Ok(())
    }
}

async fn sample(
    redis: &Client,
    pool: &deadpool_postgres::Pool,
    keys: &engine::keys::KeySpace,
    started: Instant,
    placed: u64,
) -> anyhow::Result<Sample> {
    let info: String = redis.info(Some(fred::types::InfoKind::Memory)).await?;
    let used_memory = info
        .lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let mut s = Sample {
        at_s: started.elapsed().as_secs_f64(),
        placed,
        used_memory,
        keys: redis.dbsize().await?,
        ..Sample::default()
    };
    for p in 0..keys.partitions() {
        for topic in engine::keys::Topic::ALL {
            s.stream_entries += redis.xlen::<u64, _>(keys.stream(p, topic)).await?;
        }
        s.in_flight += redis.zcard::<u64, _>(keys.inflight(p)).await?;
        s.resting += redis.zcard::<u64, _>(keys.resting(p)).await?;
        s.timers += redis.zcard::<u64, _>(keys.wheel(p)).await?;
        let mut cursor = "0".to_string();
        loop {
            let (next, found) = scan(redis, cursor, keys.order_pattern(p)).await?;
            s.live_orders += found.len() as u64;
            if next == "0" {
                break;
            }
            cursor = next;
        }
    }
    let (records, bytes) = idempotency(redis, keys).await?;
    s.idempotency_records = records;
    s.idempotency_bytes = bytes;
    s.postgres_bytes = pool
        .get()
        .await?
        .query_one("SELECT pg_database_size(current_database())", &[])
        .await?
        .get(0);
    Ok(s)
}

/// One `SCAN` step from `cursor` over keys matching `pattern`: the next
/// cursor ("0" at the end) and the keys found.
async fn scan(
    redis: &Client,
    cursor: String,
    pattern: String,
) -> anyhow::Result<(String, Vec<String>)> {
    let args = vec![
        cursor,
        "MATCH".into(),
        pattern,
        "COUNT".into(),
        "1000".into(),
    ];
    Ok(redis.custom(fred::cmd!("SCAN"), args).await?)
}

/// How many idempotency records there are, and their bytes (MEMORY USAGE
/// of up to 64 of them, scaled).
async fn idempotency(redis: &Client, keys: &engine::keys::KeySpace) -> anyhow::Result<(u64, u64)> {
    let pattern = format!("{}*:idem*", keys.prefix());
    let (mut count, mut measured, mut measured_bytes) = (0u64, 0u64, 0u64);
    let mut cursor = "0".to_string();
    loop {
        let (next, found) = scan(redis, cursor, pattern.clone()).await?;
        count += found.len() as u64;
        for key in found
            .into_iter()
            .take(64usize.saturating_sub(measured as usize))
        {
            let usage: Option<u64> = redis
                .custom(
                    fred::cmd!("MEMORY"),
                    vec!["USAGE".to_string(), key, "SAMPLES".into(), "0".into()],
                )
                .await?;
            if let Some(usage) = usage {
                measured += 1;
                measured_bytes += usage;
            }
        }
        if next == "0" {
            break;
        }
        cursor = next;
    }
    let bytes = measured_bytes.checked_div(measured).unwrap_or(0) * count;
    Ok((count, bytes))
}

fn mib(bytes: f64) -> f64 {
    bytes / (1024.0 * 1024.0)
}

fn chart(
    path: &PathBuf,
    samples: &[Sample],
    retention: Duration,
    duration: Duration,
) -> anyhow::Result<()> {
    use plotters::prelude::*;
    let font = std::fs::read("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")?;
    plotters::style::register_font(
        "sans-serif",
        FontStyle::Normal,
        Box::leak(font.into_boxed_slice()),
    )
    .map_err(|_| anyhow::anyhow!("the font does not load"))?;
    let root = BitMapBackend::new(path, (1000, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let x_max = samples.last().map_or(1.0, |s| s.at_s).max(1.0);
    let y_max = samples
        .iter()
        .map(|s| mib(s.used_memory as f64))
        .fold(1.0, f64::max)
        * 1.15;
    let live_max = samples
        .iter()
        .map(|s| s.live_orders as f64)
        .fold(1.0, f64::max)
        * 1.15;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "Redis memory, steady load, live retention {}",
                humantime::format_duration(retention)
            ),
            ("sans-serif", 20),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .right_y_label_area_size(70)
        .build_cartesian_2d(0.0..x_max, 0.0..y_max)?
        .set_secondary_coord(0.0..x_max, 0.0..live_max);
    chart
        .configure_mesh()
        .x_desc("seconds since the load started")
        .y_desc("Redis used_memory (MiB)")
        .label_style(("sans-serif", 14))
        .draw()?;
    chart
        .configure_secondary_axes()
        .y_desc("orders live in Redis")
        .label_style(("sans-serif", 14))
        .draw()?;
    chart
        .draw_series(LineSeries::new(
            samples.iter().map(|s| (s.at_s, mib(s.used_memory as f64))),
            BLUE.stroke_width(2),
        ))?
        .label("Redis used_memory (MiB)")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE.stroke_width(2)));
    let green = RGBColor(0, 140, 60);
    chart
        .draw_series(LineSeries::new(
            samples
                .iter()
                .map(|s| (s.at_s, mib(s.live_memory() as f64))),
            green.stroke_width(3),
        ))?
        .label("without the idempotency records (kept 25 h) (MiB)")
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], green.stroke_width(3)));
    chart
        .draw_secondary_series(LineSeries::new(
            samples.iter().map(|s| (s.at_s, s.live_orders as f64)),
            RED.stroke_width(2),
        ))?
        .label("orders live in Redis (right axis)")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED.stroke_width(2)));
    for (at, label) in [
        (
            retention.as_secs_f64(),
            "the first orders' retention passed",
        ),
        (duration.as_secs_f64(), "load stops"),
    ] {
        chart
            .draw_series(LineSeries::new(
                [(at, 0.0), (at, y_max)],
                BLACK.mix(0.7).stroke_width(2),
            ))?
            .label(label)
            .legend(|(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], BLACK.mix(0.7).stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()?;
    root.present()?;
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let keys = engine::keys::KeySpace::new(&args.stack.key_prefix, args.stack.partitions);
    let redis = Client::new(Config::from_url(&args.stack.redis)?, None, None, None);
    redis.init().await?;
    let pool = api::postgres_pool(&args.stack.postgres)?;
    let jwt = Keys::new(args.stack.jwt_secret.as_bytes());
    let admin = jwt.mint(Role::Admin, "soak", None, Duration::from_secs(24 * 3600))?;
    let load = Arc::new(Load {
        http: reqwest::Client::builder()
            .pool_max_idle_per_host(256)
            .build()?,
        api: args.stack.api.clone(),
        keys: jwt,
        admin,
        placed: AtomicU64::new(0),
        refused: AtomicU64::new(0),
    });
    load.seed().await?;
    let baseline = sample(&redis, &pool, &keys, Instant::now(), 0).await?;
    let baseline = Sample {
        idempotency_all_in: 0,
        ..baseline
    };
    eprintln!(
        "[soak] {} orders/s for {}, retention {}; baseline {:.1} MiB",
        args.rate,
        humantime::format_duration(args.duration),
        humantime::format_duration(args.retention),
        mib(baseline.used_memory as f64)
    );

    let started = Instant::now();
    let producer = {
        let load = load.clone();
        let (rate, duration) = (args.rate, args.duration);
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut n = 0u64;
            while started.elapsed() < duration {
                ticker.tick().await;
                let load = load.clone();
                tokio::spawn(async move {
                    if let Err(error) = load.order(n).await {
                        eprintln!("[soak] order {n}: {error}");
                    }
                });
                n += 1;
            }
        })
    };
    // Sample through the load and one retention (plus a margin) after it.
    let end = args.duration + args.retention + Duration::from_secs(30);
    let mut samples = vec![Sample {
        at_s: 0.0,
        ..baseline.clone()
    }];
    while started.elapsed() < end {
        tokio::time::sleep(args.sample_every).await;
        let s = sample(
            &redis,
            &pool,
            &keys,
            started,
            load.placed.load(Ordering::Relaxed),
        )
        .await?;
        eprintln!(
            "[soak] {:>6.0}s placed {:>7} memory {:>7.1} MiB keys {:>7} live {:>6} streams {:>6} resting {:>6}",
            s.at_s,
            s.placed,
            mib(s.used_memory as f64),
            s.keys,
            s.live_orders,
            s.stream_entries,
            s.resting
        );
        samples.push(s);
    }
    producer.await?;
    // What one idempotency record costs all told (key, value, the expiry
    // table's entry, the tables' growth): once every order has left, what
    // Redis holds above the baseline is those records alone.
    let end = samples.last().cloned().unwrap_or_default();
    let per_record = if end.live_orders == 0 && end.idempotency_records > 0 {
        end.used_memory.saturating_sub(baseline.used_memory) as f64 / end.idempotency_records as f64
    } else {
        end.idempotency_bytes as f64 / end.idempotency_records.max(1) as f64
    };
    for s in &mut samples {
        s.idempotency_all_in = (s.idempotency_records as f64 * per_record) as u64;
    }
    if let Err(error) = chart(&args.chart, &samples, args.retention, args.duration) {
        eprintln!("[soak] no chart: {error}");
    }
    let report = report(
        &args,
        &baseline,
        &samples,
        load.refused.load(Ordering::Relaxed),
    );
    std::fs::write(&args.out, &report)?;
    print!("{report}");
    Ok(())
}

fn report(args: &Args, baseline: &Sample, samples: &[Sample], refused: u64) -> String {
    let load_s = args.duration.as_secs_f64();
    let retention_s = args.retention.as_secs_f64();
    // The steady window: from one retention (plus a minute of settling)
    // after the start to the end of the load.
    let steady: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.at_s >= retention_s + 60.0_f64.min(load_s / 4.0) && s.at_s <= load_s)
        .collect();
    let stat = |f: &dyn Fn(&Sample) -> f64| -> (f64, f64, f64) {
        let values: Vec<f64> = steady.iter().map(|s| f(s)).collect();
        let min = values.iter().copied().fold(f64::INFINITY, f64::min);
        let max = values.iter().copied().fold(0.0, f64::max);
        let mean = values.iter().sum::<f64>() / values.len().max(1) as f64;
        (min, mean, max)
    };
    let memory = stat(&|s| mib(s.used_memory as f64));
    let live_memory = stat(&|s| mib(s.live_memory() as f64));
    let live = stat(&|s| s.live_orders as f64);
    let keys = stat(&|s| s.keys as f64);
    let first = steady.first().copied().cloned().unwrap_or_default();
    let last = steady.last().copied().cloned().unwrap_or_default();
    let placed = samples.last().map_or(0, |s| s.placed);
    let after = samples.last().cloned().unwrap_or_default();
    let per_hour = |f: &dyn Fn(&Sample) -> u64| {
        if last.at_s > first.at_s {
            (f(&last) as f64 - f(&first) as f64) / (last.at_s - first.at_s) * 3600.0
        } else {
            0.0
        }
    };
    let growth_per_hour = per_hour(&|s| s.used_memory);
    let live_growth_per_hour = per_hour(&|s| s.live_memory());
    // Bytes per live order: the live state's memory above the idle
    // baseline, over the orders live then (their streams and indexes too).
    let per_live =
        (live_memory.1 * 1024.0 * 1024.0 - baseline.live_memory() as f64) / live.1.max(1.0);
    // What stays per order that left: its idempotency records (25 h TTL),
    // all told.
    let residue = after.idempotency_all_in as f64 / placed.max(1) as f64;

    let mut md = String::new();
    let _ = writeln!(md, "# Soak: bounded live state\n");
    let _ = writeln!(
        md,
        "Written by `bench/soak` (`soak-bench --duration {} --rate {} --out {}`), on this machine with everything on it. \
         `lunchrush up` with `LUNCHRUSH_LIVE_RETENTION={}`; {} orders/s placed over HTTP at a fixed schedule for {}, \
         then one retention and 30 s more sampled every {}. Orders: 85% dispatched by the restaurant and confirmed by the \
         customer, 10% cancelled by the customer at once, 5% to a restaurant that never answers (approval timeout, \
         authorization voided).\n",
        humantime::format_duration(args.duration),
        args.rate,
        args.out.display(),
        humantime::format_duration(args.retention),
        args.rate,
        humantime::format_duration(args.duration),
        humantime::format_duration(args.sample_every),
    );
    let _ = writeln!(
        md,
        "![Redis memory and live orders over the run]({})\n",
        args.chart
            .file_name()
            .map(|f| f.to_string_lossy().to_string())
            .unwrap_or_default()
    );
    let _ = writeln!(
        md,
        "## Steady state (from one retention after the start to the end of the load)\n"
    );
    let _ = writeln!(
        md,
        "| measure | min | mean | max |\n| --- | --- | --- | --- |"
    );
    let rows = [
        ("Redis used_memory (MiB)", memory, 1),
        (
            "of which the live state (all but the idempotency records) (MiB)",
            live_memory,
            1,
        ),
        ("orders live in Redis", live, 0),
        ("Redis keys", keys, 0),
    ];
    for (measure, (min, mean, max), decimals) in rows {
        let _ = writeln!(
            md,
            "| {measure} | {min:.decimals$} | {mean:.decimals$} | {max:.decimals$} |"
        );
    }
    let _ = writeln!(md);
    let _ = writeln!(
        md,
        "- Orders placed: {placed} ({refused} refused). Idle baseline: {:.1} MiB.",
        mib(baseline.used_memory as f64)
    );
    let _ = writeln!(
        md,
        "- Drift over the steady window ({:.0} s to {:.0} s): the live state {:+.1} MiB per hour; all of Redis {:+.1} MiB per hour, \
         which is the idempotency records piling up until their 25 h TTL ({} records, {:.1} MiB at the end of the load, \
         {:.0} B each all told: MEMORY USAGE counts {:.0} B, the rest is the expiry table and the keyspace's growth).",
        first.at_s,
        last.at_s,
        mib(live_growth_per_hour),
        mib(growth_per_hour),
        last.idempotency_records,
        mib(last.idempotency_all_in as f64),
        last.idempotency_all_in as f64 / last.idempotency_records.max(1) as f64,
        last.idempotency_bytes as f64 / last.idempotency_records.max(1) as f64
    );
    let _ = writeln!(
        md,
        "- Bytes per live order (the live state above the baseline / orders live, streams and indexes included): **{per_live:.0} B**."
    );
    let _ = writeln!(
        md,
        "- After the load and one retention: {} orders live, {} stream entries, {} resting, {} in flight, {} timers; \
         the idempotency records stay until their TTL: **{residue:.0} B per order that left**.",
        after.live_orders, after.stream_entries, after.resting, after.in_flight, after.timers
    );
    let _ = writeln!(
        md,
        "- PostgreSQL grew from {:.1} to {:.1} MiB: {:.0} B per order archived (events, projections, indexes).\n",
        mib(baseline.postgres_bytes as f64),
        mib(after.postgres_bytes as f64),
        (after.postgres_bytes - baseline.postgres_bytes) as f64 / placed.max(1) as f64
    );

    let _ = writeln!(md, "## Projection to the seed's scale\n");
    let peak_rate = DAILY_ORDERS * PEAK_SHARE / (2.0 * 3600.0);
    let _ = writeln!(
        md,
        "{:.1} M orders a day, {:.0}% of them in the two peak hours: **{peak_rate:.0} orders/s** at the peak. \
         Live set = orders in their saga and delivery (about 45 min from placement to the customer's confirmation) \
         + orders resting within the retention + orders a customer never confirms, which stay DISPATCHED until \
         the automatic confirmation (7 + 5 days). Idempotency records: 2 per order for 25 h (~{residue:.0} B each order).\n",
        DAILY_ORDERS / 1e6,
        PEAK_SHARE * 100.0
    );
    let _ = writeln!(
        md,
        "| live retention | never confirmed by the customer | live orders (peak) | live state | idempotency records (25 h) | Redis total |\n| --- | --- | --- | --- | --- | --- |"
    );
    let delivery_s = 45.0 * 60.0;
    for retention_h in [1.0_f64, 6.0] {
        for unconfirmed in [0.0_f64, 0.05] {
            let window = peak_rate * (delivery_s + retention_h * 3600.0);
            let waiting = DAILY_ORDERS * unconfirmed * 12.0;
            let live_orders = window + waiting;
            let live_bytes = live_orders * per_live;
            let idem_bytes = DAILY_ORDERS * 25.0 / 24.0 * residue;
            let _ = writeln!(
                md,
                "| {retention_h:.0} h | {:.0}% | {:.2} M | {:.1} GiB | {:.1} GiB | {:.1} GiB |",
                unconfirmed * 100.0,
                live_orders / 1e6,
                live_bytes / 1024f64.powi(3),
                idem_bytes / 1024f64.powi(3),
                (live_bytes + idem_bytes) / 1024f64.powi(3)
            );
        }
    }
    let _ = writeln!(md, "\n## Samples\n");
    let _ = writeln!(
        md,
        "| s | placed | used_memory MiB | live state MiB | keys | live orders | stream entries | in flight | resting | timers | idempotency records | PostgreSQL MiB |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    );
    let every = (samples.len() / 40).max(1);
    for (i, s) in samples.iter().enumerate() {
        if i % every != 0 && i + 1 != samples.len() {
            continue;
        }
        let _ = writeln!(
            md,
            "| {:.0} | {} | {:.1} | {:.1} | {} | {} | {} | {} | {} | {} | {} | {:.1} |",
            s.at_s,
            s.placed,
            mib(s.used_memory as f64),
            mib(s.live_memory() as f64),
            s.keys,
            s.live_orders,
            s.stream_entries,
            s.in_flight,
            s.resting,
            s.timers,
            s.idempotency_records,
            mib(s.postgres_bytes as f64)
        );
    }
    md
}
