//! `e2e-bench`: end-to-end capacity, the way a user runs lunchrush. Against
//! a running `lunchrush up` (`bench/e2e` starts it, with the provider
//! simulator as its own process), orders are POSTed over HTTP from an open
//! model (a fixed offered rate, no polling) in steps of rising rate. After
//! each step it waits until every order placed is settled in Redis and its
//! projection in PostgreSQL says so (archived), and reports:
//!
//! - the rate settled *and* archived (orders / time from the step's start
//!   until the last of them was archived);
//! - placement p50/p99 (client side) and placed → captured p50/p99 from the
//!   events' own Redis timestamps in the archive;
//! - Redis commands per order and CPU per order of every process.
//!
//! A step is sustained when the load generator kept its schedule, nothing
//! was refused, placement p99 stayed under 20 ms and the backlog drained
//! within a second of the step's end (plus 10% of its length). A step that
//! missed only by p99 while an AOF stall at least as long as that p99 held
//! Redis's event loop (this machine's disk, once) runs once more at the same
//! rate and that run decides; both rows are reported. The capacity is the
//! highest sustained settled rate. A search of more than one
//! rate ends with a step at half the capacity (latencies with headroom),
//! reported below the table.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use api::auth::{Keys, Role};
use clap::Parser;
use fred::prelude::*;
use serde_json::json;

#[derive(Debug, Parser)]
#[command(about = "End-to-end capacity over HTTP: settled and archived orders per second.")]
struct Args {
    /// Offered rates to step through (orders/s), lowest first.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "250,500,1000,1500,2000,3000,4000"
    )]
    rates: Vec<f64>,
    /// How long each step offers its rate.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    step: Duration,
    /// Skip the last step at half the capacity found (a smoke run).
    #[arg(long)]
    no_half: bool,
    /// Restaurants (all auto-approving) the orders spread over (Zipf-free:
    /// round robin).
    #[arg(long, default_value_t = 200)]
    restaurants: usize,
    /// Processes whose CPU is reported: NAME=PID[,PID…] (repeatable).
    #[arg(long = "process")]
    processes: Vec<String>,
    #[command(flatten)]
    stack: bench::StackArgs,
    /// HTTP connections at most (the load's pool).
    #[arg(long, default_value_t = 256)]
    connections: usize,
    /// Write the Markdown table here (also printed).
    #[arg(long)]
    out: Option<std::path::PathBuf>,
}

#[path = "e2e/report.rs"]
mod report;

const DISHES: usize = 5;
/// A step is sustained only with placement p99 under this (ms).
const P99_MAX_MS: f64 = 20.0;

/// Processes watched for CPU: name and pids.
struct Watched {
    name: String,
    pids: Vec<u32>,
}

impl Watched {
    /// CPU seconds so far, the children each process waited for included
    /// (redis-server's AOF rewrites). PostgreSQL's backends and autovacuum
    /// workers come and go: every `postgres` process now, and the ones
    /// gone, which the postmaster waited for (its children's time); the
    /// pids given for `postgres` on the command line only name it.
    fn cpu(&self) -> f64 {
        if self.name == "postgres" {
            return bench::postgres_cpu_seconds();
        }
        self.pids
            .iter()
            .map(|&p| bench::cpu_seconds_with_exited_children(p))
            .sum()
    }
}

/// The AOF's size and how many times it was rewritten, summed over the
/// primaries (INFO persistence).
async fn aof_state(redis: &[fred::prelude::Client]) -> anyhow::Result<(i64, i64)> {
    let persistence = fred::types::InfoKind::Persistence;
    Ok((
        bench::redis_info_sum(redis, persistence.clone(), "aof_current_size").await?,
        bench::redis_info_sum(redis, persistence, "aof_rewrites").await?,
    ))
}

#[derive(Debug, Clone, Default)]
struct Step {
    offered: f64,
    placed: u64,
    refused: u64,
    behind_schedule: bool,
    placed_per_s: f64,
    settled_per_s: f64,
    drained_after_s: f64,
    place_p50_ms: f64,
    place_p99_ms: f64,
    captured_p50_ms: f64,
    captured_p99_ms: f64,
    commands_per_order: f64,
    /// The commands behind it, most frequent first: (command, calls per order).
    commands: Vec<(String, f64)>,
    /// µs Redis spent inside each command per order, most first (a
    /// script's include its inner calls').
    usec: Vec<(String, f64)>,
    /// (process, µs of CPU per settled order).
    cpu_us: Vec<(String, f64)>,
    /// Bytes the AOF grew by per order (every primary); `None` when it was
    /// rewritten during the step.
    aof_bytes_per_order: Option<f64>,
    /// The longest the AOF's write or fsync held Redis's event loop during
    /// the step (ms, any primary): every request queued behind it waited.
    aof_stall_ms: i64,
    /// The backlog drained within a second (plus 10% of the step) of its end.
    drained: bool,
    sustained: bool,
    /// Held by the disk: the same rate ran once more (the next row), and
    /// that run decides.
    ran_again: bool,
}

struct Load {
    /// Seeding (a few hundred PUTs).
    http: reqwest::Client,
    /// The load itself.
    wire: bench::wire::Wire,
    api: String,
    keys: Keys,
    restaurants: usize,
    latencies_us: std::sync::Mutex<Vec<u32>>,
    ids: std::sync::Mutex<Vec<uuid::Uuid>>,
    refused: AtomicU64,
}

impl Load {
    /// PUTs `body` to the API's `path` as `token`; an error unless 2xx.
    async fn put(&self, path: &str, token: &str, body: &serde_json::Value) -> anyhow::Result<()> {
        let request = self.http.put(format!("{}{path}", self.api));
        let response = request.bearer_auth(token).json(body).send().await?;
        response.error_for_status()?;
        Ok(())
    }

    async fn seed(&self) -> anyhow::Result<()> {
        let admin = self
            .keys
            .mint(Role::Admin, "e2e", None, Duration::from_secs(3600))?;
        let puts = (0..self.restaurants).map(|r| {
            let admin = admin.clone();
            async move {
                let rid = format!("e2e-{r:03}");
                let body = json!({"name": rid, "open": true, "auto_approve": true});
                self.put(&format!("/v1/restaurants/{rid}"), &admin, &body)
                    .await?;
                for d in 0..DISHES {
                    let body = json!({"name": format!("dish {d}"), "price": 6_000 + 1_000 * d as i64,
                        "stock": 1_000_000, "available": true});
                    self.put(&format!("/v1/restaurants/{rid}/menu/dish-{d}"), &admin, &body)
                        .await?;
                }
                anyhow::Ok(())
            }
        });
        futures::future::try_join_all(puts).await?;
        Ok(())
    }

    async fn place(self: Arc<Self>, n: u64, token: Arc<str>) {
        let r = n as usize % self.restaurants;
        let dish = (n / self.restaurants as u64) as usize % DISHES;
        let body = format!(
            r#"{{"restaurant_id":"e2e-{r:03}","items":[{{"item":"dish-{dish}","qty":1}}],"expected_total":{}}}"#,
            6_000 + 1_000 * dish as i64
        );
        let headers = format!("authorization: Bearer {token}\r\nidempotency-key: e2e-{n}\r\n");
        let started = Instant::now();
        let response = self
            .wire
            .post("/v1/orders", &headers, body.as_bytes())
            .await;
        let elapsed = started.elapsed().as_micros().min(u128::from(u32::MAX)) as u32;
        #[derive(serde::Deserialize)]
        struct Accepted {
            order_id: uuid::Uuid,
        }
        let placed = match response {
            Ok(answer) if answer.status == 202 => serde_json::from_slice::<Accepted>(&answer.body)
                .ok()
                .map(|a| a.order_id),
            _ => None,
        };
        match placed {
            Some(id) => {
                self.latencies_us.lock().unwrap().push(elapsed);
                self.ids.lock().unwrap().push(id);
            }
            None => {
                self.refused.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    f64::from(sorted[i]) / 1_000.0
}

/// What every step runs against and measures.
struct Rig<'a> {
    load: &'a Arc<Load>,
    /// Every primary (commands and stalls are counted on each).
    redis: &'a [Client],
    engine: &'a engine::Engine,
    pool: &'a deadpool_postgres::Pool,
    watched: &'a [Watched],
    /// How long each step offers its rate.
    length: Duration,
    /// The number of the next order (customers and keys never repeat).
    first: u64,
}

/// Steps through `rates` until one is not sustained. A step that missed
/// only by p99 behind the disk ([`Step::held_by_the_disk`]) runs once more
/// at the same rate, and that run decides: one stall of this machine's disk
/// decides no capacity, and both rows stay in the report.
async fn search(rig: &mut Rig<'_>, rates: &[f64]) -> anyhow::Result<Vec<Step>> {
    let mut steps: Vec<Step> = Vec::new();
    let mut next = 0;
    while let Some(&rate) = rates.get(next) {
        let mut step = run_step(rig, rate).await?;
        let may_rerun = !steps.last().is_some_and(|s| s.ran_again);
        step.ran_again = may_rerun && step.held_by_the_disk();
        eprintln!(
            "[e2e] offered {:.0}/s: settled+archived {:.0}/s, placement p99 {:.1} ms, placed→captured p50 {:.1} ms, sustained {}{}",
            step.offered,
            step.settled_per_s,
            step.place_p99_ms,
            step.captured_p50_ms,
            step.sustained,
            if step.ran_again {
                " (held by the disk: once more)"
            } else {
                ""
            }
        );
        let (sustained, rerun) = (step.sustained, step.ran_again);
        steps.push(step);
        if !sustained && !rerun {
            break;
        }
        if !rerun {
            next += 1;
        }
    }
    Ok(steps)
}

/// Offers `rate` for the rig's step length; then waits until every order
/// placed is settled and archived.
async fn run_step(rig: &mut Rig<'_>, rate: f64) -> anyhow::Result<Step> {
    let Rig {
        load,
        redis,
        engine,
        pool,
        watched,
        length,
        first,
    } = rig;
    let (redis, watched, length) = (*redis, *watched, *length);
    load.latencies_us.lock().unwrap().clear();
    load.ids.lock().unwrap().clear();
    load.refused.store(0, Ordering::Relaxed);
    // A token per 100 customers, minted before the clock starts.
    let tokens: Vec<Arc<str>> = (0..100)
        .map(|c| {
            load.keys
                .mint(
                    Role::Customer,
                    &format!("e2e-c{c}"),
                    None,
                    Duration::from_secs(3600),
                )
                .map(Arc::from)
        })
        .collect::<Result<_, _>>()?;
    let commands0 = bench::redis_info_sum(
        redis,
        fred::types::InfoKind::Stats,
        "total_commands_processed",
    )
    .await?;
    let cpu0: Vec<f64> = watched.iter().map(Watched::cpu).collect();
    let calls0 = bench::command_calls_sum(redis).await?;
    let usec0 = bench::command_usec_sum(redis).await?;
    let aof0 = aof_state(redis).await?;
    bench::latency_reset(redis).await?;
    let started = Instant::now();
    let total = (rate * length.as_secs_f64()).round() as u64;
    let mut tasks = Vec::with_capacity(total as usize);
    let mut behind = Duration::ZERO;
    for i in 0..total {
        let due = started + Duration::from_secs_f64(i as f64 / rate);
        let now = Instant::now();
        if due > now {
            tokio::time::sleep_until(due.into()).await;
        } else {
            behind = behind.max(now - due);
        }
        let n = *first + i;
        tasks.push(tokio::spawn(
            load.clone()
                .place(n, tokens[n as usize % tokens.len()].clone()),
        ));
    }
    *first += total;
    for task in tasks {
        let _ = task.await;
    }
    let offered_for = started.elapsed();
    let ids: Vec<uuid::Uuid> = load.ids.lock().unwrap().clone();
    // Settled in Redis, then archived as settled.
    let deadline = Instant::now() + length * 6 + Duration::from_secs(30);
    loop {
        if engine.unsettled().await? == 0 {
            let archived: i64 = pool
                .get()
                .await?
                .query_one(
                    "SELECT count(*) FROM orders WHERE order_id = ANY($1) \
                     AND status = 'APPROVED' AND payment_status = 'CAPTURED'",
                    &[&ids],
                )
                .await?
                .get(0);
            if archived as usize >= ids.len() {
                break;
            }
        }
        anyhow::ensure!(Instant::now() < deadline, "step at {rate}/s never settled");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let settled_after = started.elapsed();
    let cpu1: Vec<f64> = watched.iter().map(Watched::cpu).collect();
    let commands1 = bench::redis_info_sum(
        redis,
        fred::types::InfoKind::Stats,
        "total_commands_processed",
    )
    .await?;
    let calls1 = bench::command_calls_sum(redis).await?;
    let usec1 = bench::command_usec_sum(redis).await?;
    let aof1 = aof_state(redis).await?;
    let aof_stall_ms = bench::aof_stall_max_ms(redis).await?;
    let mut latencies = load.latencies_us.lock().unwrap().clone();
    latencies.sort_unstable();
    let months: Vec<std::time::SystemTime> = ids.iter().map(engine::ids::created_at).collect();
    let row = pool
        .get()
        .await?
        .query_one(
            "WITH p AS (SELECT order_id, event_time AS placed FROM saga_events \
               WHERE order_id = ANY($1) AND part_time = ANY($2) AND type = 'OrderPlaced'), \
             c AS (SELECT order_id, event_time AS captured FROM saga_events \
               WHERE order_id = ANY($1) AND part_time = ANY($2) AND type = 'PaymentCaptured') \
             SELECT coalesce(percentile_cont(0.5) WITHIN GROUP (ORDER BY ms), 0)::float8, \
                    coalesce(percentile_cont(0.99) WITHIN GROUP (ORDER BY ms), 0)::float8 \
             FROM (SELECT extract(epoch FROM c.captured - p.placed) * 1000 AS ms \
                   FROM p JOIN c USING (order_id)) d",
            &[&ids, &months],
        )
        .await?;
    let placed = ids.len() as u64;
    let orders = placed.max(1) as f64;
    let drained_after = settled_after.saturating_sub(offered_for);
    let mut step = Step {
        offered: rate,
        placed,
        refused: load.refused.load(Ordering::Relaxed),
        behind_schedule: behind > Duration::from_millis(250),
        placed_per_s: placed as f64 / offered_for.as_secs_f64(),
        settled_per_s: placed as f64 / settled_after.as_secs_f64(),
        drained_after_s: drained_after.as_secs_f64(),
        place_p50_ms: percentile(&latencies, 0.5),
        place_p99_ms: percentile(&latencies, 0.99),
        captured_p50_ms: row.get(0),
        captured_p99_ms: row.get(1),
        commands_per_order: (commands1 - commands0) as f64 / orders,
        commands: bench::per_unit(&calls0, &calls1, orders, 0.05),
        usec: bench::per_unit(&usec0, &usec1, orders, 1.0),
        aof_bytes_per_order: (aof1.1 == aof0.1).then(|| (aof1.0 - aof0.0) as f64 / orders),
        aof_stall_ms,
        cpu_us: watched
            .iter()
            .zip(cpu0.iter().zip(&cpu1))
            .map(|(w, (a, b))| (w.name.clone(), (b - a) / orders * 1e6))
            .collect(),
        drained: false,
        sustained: false,
        ran_again: false,
    };
    step.drained = drained_after < Duration::from_secs(1) + length / 10;
    step.sustained = !step.behind_schedule
        && step.refused == 0
        && step.place_p99_ms < P99_MAX_MS
        && step.drained;
    Ok(step)
}

// One thread: the load wakes once per request, and a second thread would only
// add the cost of waking it (the cores belong to the system under test).
#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let redis = Client::new(Config::from_url(&args.stack.redis)?, None, None, None);
    redis.init().await?;
    // Commands are counted on every primary of a Cluster.
    let primaries = bench::primary_clients(&redis).await?;
    bench::latency_monitor_on(&primaries).await?;
    let config = engine::Config {
        redis_url: args.stack.redis.clone(),
        postgres_url: args.stack.postgres.clone(),
        partitions: args.stack.partitions,
        key_prefix: args.stack.key_prefix.clone(),
        ..engine::Config::default()
    };
    let engine = bench::connect_engine(&config).await?;
    let pool = api::postgres_pool(&args.stack.postgres)?;
    let mut watched: Vec<Watched> = args
        .processes
        .iter()
        .filter_map(|p| {
            let (name, pids) = p.split_once('=')?;
            Some(Watched {
                name: name.to_string(),
                pids: pids.split(',').filter_map(|s| s.parse().ok()).collect(),
            })
        })
        .collect();
    watched.push(Watched {
        name: "load".into(),
        pids: vec![std::process::id()],
    });
    let load = Arc::new(Load {
        http: reqwest::Client::builder()
            .pool_max_idle_per_host(args.connections)
            .build()?,
        wire: bench::wire::Wire::new(&args.stack.api, args.connections)?,
        api: args.stack.api.clone(),
        keys: Keys::new(args.stack.jwt_secret.as_bytes()),
        restaurants: args.restaurants,
        latencies_us: std::sync::Mutex::new(Vec::new()),
        ids: std::sync::Mutex::new(Vec::new()),
        refused: AtomicU64::new(0),
    });
    load.seed().await?;
    let mut rig = Rig {
        load: &load,
        redis: &primaries,
        engine: &engine,
        pool: &pool,
        watched: &watched,
        length: args.step,
        first: 0,
    };
    let steps = search(&mut rig, &args.rates).await?;
    let best = steps
        .iter()
        .filter(|s| s.sustained)
        .max_by(|a, b| a.settled_per_s.total_cmp(&b.settled_per_s));
    // A stepped search ends with a step at half the capacity found: the
    // latencies an operator sees with headroom.
    let half = match best {
        Some(best) if args.rates.len() > 1 && !args.no_half => {
            let rate = (best.offered / 20.0).round() * 10.0;
            Some(run_step(&mut rig, rate).await?)
        }
        _ => None,
    };
    let mut md = report::table(&steps, &watched);
    // The mix at the reported rate, or at the last step when none held
    // (a one-rate before/after still shows where the commands go).
    if let Some(step) = best.or(steps.last()) {
        let mix: Vec<String> = step
            .commands
            .iter()
            .map(|(name, n)| format!("{name} {n:.1}"))
            .collect();
        let _ = writeln!(
            md,
            "\nRedis commands per order at {:.0}/s offered (INFO commandstats; scripts count their inner calls too): {}",
            step.offered,
            mix.join(", ")
        );
        let inside: Vec<String> = step
            .usec
            .iter()
            .take(6)
            .map(|(name, us)| format!("{name} {us:.0}"))
            .collect();
        let scripts = step
            .usec
            .iter()
            .find(|(n, _)| n == "evalsha")
            .map_or(0.0, |u| u.1);
        let redis = step
            .cpu_us
            .iter()
            .find(|(n, _)| n == "redis")
            .map_or(0.0, |c| c.1);
        let _ = writeln!(
            md,
            "\nRedis µs per order inside commands (INFO commandstats usec; a script's include its inner calls'): {}. \
             Scripts take {:.0} of redis-server's {:.0} µs of CPU per order; the rest is reading, replying, \
             the AOF's writes and fsyncs, and the event loop.",
            inside.join(", "),
            scripts,
            redis
        );
        let _ = writeln!(
            md,
            "\nLongest AOF stall: the longest Redis's event loop was held by writing or fsyncing its \
             AOF during the step (`LATENCY LATEST`, `aof-*` events of 1 ms or more; the largest over \
             the primaries). Every request queued behind it waited as long: a placement p99 close to \
             the step's longest stall is the disk's, not the CPU's."
        );
        if let Some(bytes) = step.aof_bytes_per_order {
            let _ = writeln!(
                md,
                "\nRedis's AOF grew by {bytes:.0} bytes per order (INFO persistence aof_current_size; \
                 what every fsync writes)."
            );
        }
    }
    match best {
        Some(best) => {
            if let Some(half) = &half {
                let _ = writeln!(
                    md,
                    "\nAt half of it ({:.0}/s offered, run last): placement p50 / p99 {:.1} / {:.1} ms; placed → captured p50 / p99 {:.1} / {:.1} ms; {:.0} settled and archived/s{}",
                    half.offered,
                    half.place_p50_ms,
                    half.place_p99_ms,
                    half.captured_p50_ms,
                    half.captured_p99_ms,
                    half.settled_per_s,
                    if half.sustained {
                        ""
                    } else {
                        " (not sustained)"
                    }
                );
            }
            let _ = writeln!(
                md,
                "\ncapacity={:.0} settled and archived orders/s (offered {:.0}/s); placement p99 {:.1} ms; placed → captured p50 {:.1} ms / p99 {:.1} ms",
                best.settled_per_s,
                best.offered,
                best.place_p99_ms,
                best.captured_p50_ms,
                best.captured_p99_ms
            );
        }
        None => {
            let _ = writeln!(md, "\ncapacity=0 (no step was sustained)");
        }
    }
    print!("{md}");
    if let Some(out) = &args.out {
        std::fs::write(out, &md)?;
    }
    Ok(())
}
