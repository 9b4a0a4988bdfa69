//! `outage-bench`: the archive down for long, measured. Starts Redis (with a
//! `maxmemory`) and PostgreSQL, one `lunchrush serve` and one `lunchrush
//! archive` process, offers a steady load over HTTP, stops PostgreSQL for
//! `--outage`, starts it again and keeps the load on until the backlog has
//! drained. Every second it samples Redis's memory against its limit and
//! the engine's high- and low-water marks, placements accepted and refused,
//! and the archive backlog (`/metrics`, as an operator sees them). Then it
//! stops the load, lets everything settle and runs `lunchrush check
//! --at-rest --archive`. Writes a report (Markdown) and a PNG chart.
//!
//! Targets (issue 38): Redis never above its `maxmemory`; 0 orders stuck or
//! mismatched; placements resumed within 10 s of used memory falling below
//! the low-water mark; the backlog drained within twice the outage.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use engine::engine::ItemPut;
use engine::keys::Lane;
use fred::prelude::*;
use serde_json::json;
use stack::process::Daemon;
use stack::psp::{Faults, PspSim};
use stack::{AppendFsync, LocalStack, RedisMode, StackOptions};

#[derive(Debug, Parser)]
#[command(about = "PostgreSQL down for long under a steady load; Redis's memory budget, measured.")]
struct Args {
    /// Orders offered per second (open model: a fixed schedule).
    #[arg(long, default_value_t = 1_000.0)]
    rate: f64,
    /// Load before PostgreSQL stops.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// How long PostgreSQL stays down.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    outage: Duration,
    /// Give up waiting for the drain after this long (default: 3 × outage).
    #[arg(long, value_parser = humantime::parse_duration)]
    recovery_max: Option<Duration>,
    /// Redis's maxmemory.
    #[arg(long, default_value = "512mb", value_parser = engine::budget::parse_bytes)]
    redis_maxmemory: u64,
    /// Redis's AOF fsync policy.
    #[arg(long, default_value = "always", value_parser = AppendFsync::parse)]
    appendfsync: AppendFsync,
    /// The live retention the engine runs with.
    #[arg(long, default_value = "60s")]
    live_retention: String,
    /// The lunchrush binary (default: next to this one).
    #[arg(long)]
    lunchrush: Option<PathBuf>,
    /// The report.
    #[arg(long, default_value = "bench/OUTAGE.md")]
    out: PathBuf,
    /// The chart (PNG).
    #[arg(long, default_value = "bench/outage.png")]
    chart: PathBuf,
}

const RESTAURANTS: usize = 40;
const PARTITIONS: u16 = 16;
/// Placements in flight at once, at most (past it the load generator
/// counts a placement as not sent: the client side is saturated).
const IN_FLIGHT_MAX: usize = 2_048;

/// One second of the run.
#[derive(Debug, Clone, Default)]
struct Sample {
    at_s: f64,
    used: f64,
    maxmemory: f64,
    high_water: f64,
    low_water: f64,
    refusing: bool,
    backlog_entries: f64,
    backlog_bytes: f64,
    backlog_age_s: f64,
    accepted: u64,
    refused: u64,
    failed: u64,
    /// Placement p99 of the accepted ones this second (ms).
    p99_ms: f64,
    /// The longest stall of Redis's event loop on its AOF (write or fsync)
    /// this second (ms, `LATENCY LATEST`).
    aof_stall_ms: i64,
}

#[derive(Default)]
struct Tally {
    accepted: AtomicU64,
    refused: AtomicU64,
    failed: AtomicU64,
    unsent: AtomicU64,
    latencies: std::sync::Mutex<Vec<f64>>,
}

impl Tally {
    fn take(&self) -> (u64, u64, u64, Vec<f64>) {
        let mut latencies = std::mem::take(&mut *self.latencies.lock().unwrap());
        latencies.sort_by(f64::total_cmp);
        (
            self.accepted.swap(0, Ordering::Relaxed),
            self.refused.swap(0, Ordering::Relaxed),
            self.failed.swap(0, Ordering::Relaxed),
            latencies,
        )
    }
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0.0)
}

async fn info_number(redis: &Client, field: &str) -> f64 {
    let info: String = redis
        .info(Some(fred::types::InfoKind::Memory))
        .await
        .unwrap_or_default();
    info.lines()
        .find_map(|l| {
            l.strip_prefix(field)?
                .strip_prefix(':')?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0.0)
}

/// Offers `rate` placements a second until `stop`.
async fn load(
    api: String,
    secret: Vec<u8>,
    rate: f64,
    tally: Arc<Tally>,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    let keys = api::auth::Keys::new(&secret);
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(IN_FLIGHT_MAX)
        .timeout(Duration::from_secs(15))
        .build()
        .unwrap();
    let tokens: Vec<String> = (0..200)
        .map(|c| {
            keys.mint(
                api::auth::Role::Customer,
                &format!("outage-{c}"),
                None,
                Duration::from_secs(24 * 3600),
            )
            .unwrap()
        })
        .collect();
    let permits = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT_MAX));
    let started = Instant::now();
    let mut sent = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(5));
    while !*stop.borrow() {
        tick.tick().await;
        let due = (started.elapsed().as_secs_f64() * rate) as u64;
        while sent < due {
            sent += 1;
            let Ok(permit) = permits.clone().try_acquire_owned() else {
                tally.unsent.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            let n = sent;
            let (http, api, tally) = (http.clone(), api.clone(), tally.clone());
            let token = tokens[n as usize % tokens.len()].clone();
            tokio::spawn(async move {
                let _permit = permit;
                let r = n as usize % RESTAURANTS;
                let body = json!({"restaurant_id": format!("outage-{r:02}"),
                    "items": [{"item": "meal", "qty": 1}], "expected_total": 1_200 + 10 * r as i64});
                let at = Instant::now();
                let reply = http
                    .post(format!("{api}/v1/orders"))
                    .bearer_auth(token)
                    .header("idempotency-key", format!("outage-{n}"))
                    .json(&body)
                    .send()
                    .await;
                match reply.map(|r| r.status().as_u16()) {
                    Ok(202) => {
                        tally.accepted.fetch_add(1, Ordering::Relaxed);
                        let ms = at.elapsed().as_secs_f64() * 1e3;
                        tally.latencies.lock().unwrap().push(ms);
                    }
                    Ok(503) => {
                        tally.refused.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {
                        tally.failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() as f64 - 1.0) * q).round() as usize]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let bin = bench::lunchrush_binary(args.lunchrush.as_deref())?;
    let dir = tempfile::Builder::new()
        .prefix("lunchrush-outage-")
        .tempdir()?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
    }
    let home = dir.path().to_path_buf();
    eprintln!("[outage] stack in {}", home.display());
    let mut stack = LocalStack::start(StackOptions {
        home: home.clone(),
        redis: RedisMode::Standalone,
        appendfsync: args.appendfsync,
        redis_port: None,
        postgres_port: None,
        redis_maxmemory: Some(args.redis_maxmemory),
        durable: false,
    })
    .await?;
    archiver::schema::migrate(&stack.postgres_url()).await?;
    let sim = PspSim::open(&home.join("ledger.jsonl"), Faults::default())?;
    let psp_url = sim.clone().spawn_local().await?;
    let secret = "outage-secret-0123456789abcdef-0123456789".to_string();
    let config = engine::Config {
        redis_url: stack.redis_url(),
        postgres_url: stack.postgres_url(),
        psp_url: psp_url.clone(),
        partitions: PARTITIONS,
        ..engine::Config::default()
    };
    let engine = bench::connect_engine(&config).await?;
    for r in 0..RESTAURANTS {
        let rid = format!("outage-{r:02}");
        engine
            .put_restaurant(&rid, &rid, true, true, Lane::Online)
            .await?;
        let put = ItemPut {
            name: "meal".into(),
            price: 1_200 + 10 * r as i64,
            stock: 10_000_000,
            available: true,
            max_per_customer: None,
        };
        engine.put_item(&rid, "meal", &put, Lane::Online).await?;
    }
    let port = free_port()?;
    let api = format!("http://127.0.0.1:{port}");
    let env: Vec<(&str, String)> = vec![
        ("LUNCHRUSH_REDIS_URL", config.redis_url.clone()),
        ("LUNCHRUSH_POSTGRES_URL", config.postgres_url.clone()),
        ("LUNCHRUSH_PSP_URL", psp_url.clone()),
        ("LUNCHRUSH_PARTITIONS", PARTITIONS.to_string()),
        ("LUNCHRUSH_JWT_SECRET", secret.clone()),
        ("LUNCHRUSH_LIVE_RETENTION", args.live_retention.clone()),
        ("LUNCHRUSH_RATE_LIMIT", "1000000".into()),
        ("LUNCHRUSH_RATE_BURST", "1000000".into()),
        ("LUNCHRUSH_LOG_FORMAT", "json".into()),
    ];
    let spawn = |name: &str, subcommand: &str, extra: (&str, String)| -> anyhow::Result<Daemon> {
        let mut command = Command::new(&bin);
        command
            .arg(subcommand)
            .envs(env.iter().cloned())
            .env(extra.0, extra.1);
        Ok(Daemon::spawn(
            name,
            command,
            libc::SIGTERM,
            &home.join(format!("{name}.log")),
            None,
        )?)
    };
    let serve = spawn(
        "engine",
        "serve",
        ("LUNCHRUSH_LISTEN", format!("127.0.0.1:{port}")),
    )?;
    let archive = spawn(
        "archiver",
        "archive",
        ("LUNCHRUSH_ARCHIVER_CONSUMER", "outage-archiver".into()),
    )?;
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !http
        .get(format!("{api}/readyz"))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
    {
        anyhow::ensure!(Instant::now() < deadline, "the engine never became ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let redis = [engine.redis().clone()];
    bench::latency_monitor_on(&redis).await?;
    bench::latency_reset(&redis).await?;
    let tally = Arc::new(Tally::default());
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let loader = tokio::spawn(load(
        api.clone(),
        secret.clone().into_bytes(),
        args.rate,
        tally.clone(),
        stopped,
    ));
    let started = Instant::now();
    let recovery_max = args.recovery_max.unwrap_or(args.outage * 3);
    let outage_at = args.warmup.as_secs_f64();
    let restart_at = outage_at + args.outage.as_secs_f64();
    let mut samples: Vec<Sample> = Vec::new();
    let mut postgres_down = false;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    let mut drained_at = None;
    loop {
        tick.tick().await;
        let at_s = started.elapsed().as_secs_f64();
        if !postgres_down && at_s >= outage_at && at_s < restart_at {
            eprintln!(
                "[outage] {at_s:.0} s: stopping PostgreSQL for {:?}",
                args.outage
            );
            tokio::task::block_in_place(|| stack.postgres.stop());
            postgres_down = true;
        }
        if postgres_down && at_s >= restart_at {
            eprintln!("[outage] {at_s:.0} s: starting PostgreSQL again");
            stack.postgres.restart().await?;
            postgres_down = false;
        }
        let text = match http.get(format!("{api}/metrics")).send().await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        let (accepted, refused, failed, latencies) = tally.take();
        let sample = Sample {
            at_s,
            used: info_number(engine.redis(), "used_memory").await,
            maxmemory: info_number(engine.redis(), "maxmemory").await,
            high_water: metric(&text, "lunchrush_redis_memory_high_water_bytes"),
            low_water: metric(&text, "lunchrush_redis_memory_low_water_bytes"),
            refusing: metric(
                &text,
                "lunchrush_placements_refusing{reason=\"redis_memory\"}",
            ) > 0.0,
            backlog_entries: metric(&text, "lunchrush_archive_backlog_entries"),
            backlog_bytes: metric(&text, "lunchrush_archive_backlog_bytes"),
            backlog_age_s: metric(&text, "lunchrush_archive_backlog_age_seconds"),
            accepted,
            refused,
            failed,
            p99_ms: percentile(&latencies, 0.99),
            aof_stall_ms: bench::aof_stall_max_ms(&redis).await.unwrap_or(0),
        };
        let _ = bench::latency_reset(&redis).await;
        if samples.len().is_multiple_of(10) {
            eprintln!(
                "[outage] {:>5.0} s used {:>6.0} MiB of {:.0} (high {:.0}) accepted {}/s refused {}/s backlog {:.0} ({:.0} s old)",
                at_s,
                mib(sample.used),
                mib(sample.maxmemory),
                mib(sample.high_water),
                sample.accepted,
                sample.refused,
                sample.backlog_entries,
                sample.backlog_age_s
            );
        }
        let restarted = at_s >= restart_at + 1.0;
        samples.push(sample.clone());
        if restarted
            && drained_at.is_none()
            && sample.backlog_age_s <= 5.0
            && !sample.refusing
            && sample.accepted > 0
        {
            drained_at = Some(at_s);
        }
        // A little load after the drain, to see it stays so.
        if drained_at.is_some_and(|d| at_s >= d + 10.0)
            || at_s >= restart_at + recovery_max.as_secs_f64()
        {
            break;
        }
    }
    let _ = stop.send(true);
    let _ = loader.await;
    let unsent = tally.unsent.load(Ordering::Relaxed);

    eprintln!("[outage] settling, then lunchrush check --at-rest --archive");
    let mut verdict = (false, String::new());
    let settle_deadline = Instant::now() + Duration::from_secs(300);
    while Instant::now() < settle_deadline {
        let out = Command::new(&bin)
            .args(["check", "--at-rest", "--archive"])
            .envs(env.iter().cloned())
            .output()?;
        verdict = (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
        );
        if verdict.0 {
            break;
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    drop(serve);
    drop(archive);
    let report = report(&args, &samples, drained_at, unsent, &verdict);
    std::fs::write(&args.out, &report)?;
    chart(&args.chart, &samples, outage_at, restart_at)?;
    print!("{report}");
    eprintln!(
        "[outage] wrote {} and {}",
        args.out.display(),
        args.chart.display()
    );
    drop(sim);
    Ok(())
}

fn mib(bytes: f64) -> f64 {
    bytes / (1024.0 * 1024.0)
}

fn report(
    args: &Args,
    samples: &[Sample],
    drained_at: Option<f64>,
    unsent: u64,
    verdict: &(bool, String),
) -> String {
    let outage_at = args.warmup.as_secs_f64();
    let restart_at = outage_at + args.outage.as_secs_f64();
    let max_used = samples.iter().map(|s| s.used).fold(0.0, f64::max);
    let maxmemory = samples.iter().map(|s| s.maxmemory).fold(0.0, f64::max);
    let first_refusal = samples.iter().find(|s| s.refused > 0).map(|s| s.at_s);
    let below_low = samples
        .iter()
        .find(|s| s.at_s > restart_at && s.low_water > 0.0 && s.used < s.low_water)
        .map(|s| s.at_s);
    let resumed = below_low.and_then(|low| {
        samples
            .iter()
            .find(|s| s.at_s >= low - 1.0 && !s.refusing && s.accepted > 0)
            .map(|s| s.at_s)
    });
    let sum = |f: fn(&Sample) -> u64| samples.iter().map(f).sum::<u64>();
    let (accepted, refused, failed) = (sum(|s| s.accepted), sum(|s| s.refused), sum(|s| s.failed));
    let p99_before = samples
        .iter()
        .filter(|s| s.at_s < outage_at && s.accepted > 0)
        .map(|s| s.p99_ms)
        .fold(0.0, f64::max);
    let p99_drain = samples
        .iter()
        .filter(|s| s.at_s > restart_at && drained_at.is_none_or(|d| s.at_s <= d) && s.accepted > 0)
        .map(|s| s.p99_ms)
        .fold(0.0, f64::max);
    let drain_s = drained_at.map(|d| d - restart_at);
    let during_drain = |s: &&Sample| s.at_s > restart_at && drained_at.is_none_or(|d| s.at_s <= d);
    let stall_drain = samples
        .iter()
        .filter(during_drain)
        .map(|s| s.aof_stall_ms)
        .max()
        .unwrap_or(0);
    let stall_before = samples
        .iter()
        .filter(|s| s.at_s < outage_at)
        .map(|s| s.aof_stall_ms)
        .max()
        .unwrap_or(0);
    let yes = |ok: bool| if ok { "met" } else { "**missed**" };
    let mut out = String::new();
    writeln!(out, "# The archive down for long: bench/outage\n").unwrap();
    writeln!(
        out,
        "`bench/outage --rate {} --outage {} --redis-maxmemory {} MiB` on {}: one `lunchrush serve` \
         and one `lunchrush archive` process, Redis (`appendfsync {}`) and PostgreSQL on the same \
         machine, {} orders/s offered over HTTP to auto-approving restaurants; PostgreSQL stopped \
         {:.0} s into the load for {}, then started again.\n",
        args.rate,
        humantime::format_duration(args.outage),
        args.redis_maxmemory >> 20,
        bench::machine(),
        args.appendfsync.as_str(),
        args.rate,
        outage_at,
        humantime::format_duration(args.outage),
    )
    .unwrap();
    writeln!(
        out,
        "![Redis memory, placements and the archive backlog](outage.png)\n"
    )
    .unwrap();
    writeln!(out, "| target | measured | |").unwrap();
    writeln!(out, "| --- | --- | --- |").unwrap();
    writeln!(
        out,
        "| Redis never above its maxmemory | highest used_memory {:.0} MiB of {:.0} MiB | {} |",
        mib(max_used),
        mib(maxmemory),
        yes(max_used <= maxmemory)
    )
    .unwrap();
    writeln!(
        out,
        "| 0 orders stuck or mismatched | `lunchrush check --at-rest --archive`: {} | {} |",
        verdict.1.lines().last().unwrap_or("no verdict"),
        yes(verdict.0)
    )
    .unwrap();
    let resume_gap = resumed.zip(below_low).map(|(r, l)| (r - l).max(0.0));
    writeln!(
        out,
        "| placements resumed within 10 s of memory below the low-water mark | {} | {} |",
        match (below_low, resume_gap) {
            (Some(l), Some(g)) => format!("below it at {l:.0} s, resumed {g:.0} s later"),
            (Some(l), None) => format!("below it at {l:.0} s, never resumed"),
            (None, _) => "memory never fell below the low-water mark after the restart".into(),
        },
        yes(resume_gap.is_some_and(|g| g <= 10.0) || first_refusal.is_none())
    )
    .unwrap();
    writeln!(
        out,
        "| backlog drained within 2× the outage ({:.0} s) | {} | {} |",
        2.0 * args.outage.as_secs_f64(),
        drain_s.map_or("not drained".into(), |d| format!(
            "{d:.0} s after the restart"
        )),
        yes(drain_s.is_some_and(|d| d <= 2.0 * args.outage.as_secs_f64()))
    )
    .unwrap();
    writeln!(out).unwrap();
    writeln!(
        out,
        "Placements: {accepted} accepted, {refused} refused (503), {failed} failed otherwise, \
         {unsent} not sent (the client's {IN_FLIGHT_MAX} in flight were busy). First refusal at {}; \
         placement p99 (worst second) {p99_before:.1} ms before the outage, {p99_drain:.1} ms while the \
         backlog drained; the longest AOF stall of Redis's event loop {stall_before} ms before the \
         outage, {stall_drain} ms while the backlog drained (PostgreSQL's writes share the disk).\n",
        first_refusal.map_or("none".into(), |s| format!("{s:.0} s"))
    )
    .unwrap();
    writeln!(
        out,
        "Every 15th second, and each second from the restart until 5 s after the drain:\n"
    )
    .unwrap();
    writeln!(out, "| s | used MiB | high-water MiB | refusing | accepted/s | refused/s | placement p99 ms | AOF stall ms | backlog entries | backlog MiB | backlog age s |").unwrap();
    writeln!(
        out,
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    )
    .unwrap();
    let drain_end = drained_at.unwrap_or(restart_at) + 5.0;
    for (i, s) in samples.iter().enumerate() {
        let near = s.at_s >= restart_at - 1.0 && s.at_s <= drain_end;
        if i % 15 != 0 && !near {
            continue;
        }
        writeln!(
            out,
            "| {:.0} | {:.0} | {:.0} | {} | {} | {} | {:.1} | {} | {:.0} | {:.1} | {:.0} |",
            s.at_s,
            mib(s.used),
            mib(s.high_water),
            if s.refusing { "yes" } else { "" },
            s.accepted,
            s.refused,
            s.p99_ms,
            s.aof_stall_ms,
            s.backlog_entries,
            mib(s.backlog_bytes),
            s.backlog_age_s
        )
        .unwrap();
    }
    out
}

fn chart(path: &Path, samples: &[Sample], outage_at: f64, restart_at: f64) -> anyhow::Result<()> {
    use plotters::prelude::*;
    let font = std::fs::read("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")?;
    plotters::style::register_font(
        "sans-serif",
        FontStyle::Normal,
        Box::leak(font.into_boxed_slice()),
    )
    .map_err(|_| anyhow::anyhow!("the font does not load"))?;
    let root = BitMapBackend::new(path, (1000, 900)).into_drawing_area();
    root.fill(&WHITE)?;
    let panels = root.split_evenly((3, 1));
    let x_max = samples.last().map_or(1.0, |s| s.at_s).max(1.0);
    let green = RGBColor(0, 140, 60);
    let orange = RGBColor(230, 120, 0);
    type Chart<'a> = ChartContext<
        'a,
        BitMapBackend<'a>,
        Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
    >;
    let marks = |chart: &mut Chart<'_>, y_max: f64| -> anyhow::Result<()> {
        for (at, label) in [
            (outage_at, "PostgreSQL stopped"),
            (restart_at, "PostgreSQL started"),
        ] {
            chart
                .draw_series(LineSeries::new(
                    [(at, 0.0), (at, y_max)],
                    BLACK.mix(0.6).stroke_width(2),
                ))?
                .label(label)
                .legend(|(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], BLACK.mix(0.6).stroke_width(2))
                });
        }
        Ok(())
    };
    let legend = |chart: &mut Chart<'_>| -> anyhow::Result<()> {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .label_font(("sans-serif", 13))
            .draw()?;
        Ok(())
    };

    let y_max = samples
        .iter()
        .map(|s| mib(s.maxmemory.max(s.used)))
        .fold(1.0, f64::max)
        * 1.15;
    let mut memory = ChartBuilder::on(&panels[0])
        .caption("Redis memory against its budget", ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..x_max, 0.0..y_max)?;
    memory
        .configure_mesh()
        .y_desc("MiB")
        .label_style(("sans-serif", 13))
        .draw()?;
    for (name, color, value) in [
        (
            "used_memory",
            BLUE,
            (|s: &Sample| s.used) as fn(&Sample) -> f64,
        ),
        ("maxmemory", RED, |s: &Sample| s.maxmemory),
        ("high-water mark", orange, |s: &Sample| s.high_water),
        ("low-water mark", green, |s: &Sample| s.low_water),
    ] {
        memory
            .draw_series(LineSeries::new(
                samples.iter().map(|s| (s.at_s, mib(value(s)))),
                color.stroke_width(2),
            ))?
            .label(name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    marks(&mut memory, y_max)?;
    legend(&mut memory)?;

    let y_max = samples
        .iter()
        .map(|s| (s.accepted + s.refused) as f64)
        .fold(1.0, f64::max)
        * 1.2;
    let mut placements = ChartBuilder::on(&panels[1])
        .caption("Placements per second", ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..x_max, 0.0..y_max)?;
    placements
        .configure_mesh()
        .y_desc("per second")
        .label_style(("sans-serif", 13))
        .draw()?;
    for (name, color, value) in [
        (
            "accepted (202)",
            green,
            (|s: &Sample| s.accepted) as fn(&Sample) -> u64,
        ),
        ("refused (503 capacity_exhausted)", RED, |s: &Sample| {
            s.refused
        }),
    ] {
        placements
            .draw_series(LineSeries::new(
                samples.iter().map(|s| (s.at_s, value(s) as f64)),
                color.stroke_width(2),
            ))?
            .label(name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    marks(&mut placements, y_max)?;
    legend(&mut placements)?;

    let y_max = samples
        .iter()
        .map(|s| s.backlog_entries)
        .fold(1.0, f64::max)
        * 1.2;
    let mut backlog = ChartBuilder::on(&panels[2])
        .caption("Archive backlog", ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..x_max, 0.0..y_max)?;
    backlog
        .configure_mesh()
        .x_desc("seconds since the load started")
        .y_desc("entries")
        .label_style(("sans-serif", 13))
        .draw()?;
    backlog
        .draw_series(LineSeries::new(
            samples.iter().map(|s| (s.at_s, s.backlog_entries)),
            BLUE.stroke_width(2),
        ))?
        .label("entries not yet archived")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE.stroke_width(2)));
    marks(&mut backlog, y_max)?;
    legend(&mut backlog)?;
    root.present()?;
    Ok(())
}
