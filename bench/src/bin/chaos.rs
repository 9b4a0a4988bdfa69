//! `lunchrush-chaos`: the rule holds while things break.
//!
//! ```text
//! bench/chaos                         # one run, a random seed, 60 s of load
//! bench/chaos --seed 7 --duration 30s # replay seed 7
//! bench/chaos --runs 20 --seed 1      # 20 seeded runs, bench/CHAOS.md
//! ```
//!
//! Each run starts a fresh stack (Redis with AOF, PostgreSQL, the provider
//! simulator in this process), two or more `lunchrush serve` processes and a
//! `lunchrush archive` process, and drives a lunch-peak load over HTTP
//! against the engines while a schedule drawn from the seed injects faults:
//! SIGKILL of an engine (restarted), SIGKILL of the archiver (restarted),
//! Redis SIGKILL and restart on the same AOF, PostgreSQL stop and start,
//! provider faults (5xx, latency, timeout after charging), duplicate
//! delivery (a consumer group rewound to the start of a stream, so every
//! event still in it arrives again). Then the load stops, the system is left
//! to settle, `lunchrush reconcile` runs, and the verdict is taken:
//!
//! - `lunchrush check` at quiescence *before* reconciliation (a healthy
//!   system never breaks the rule, even with sagas still open) and
//!   `lunchrush check --at-rest --archive` after it: stock conserved, no
//!   mismatched pair, every event archived exactly once;
//! - the provider's ledger against Redis: money kept only for fulfilled
//!   orders, of their amount, nothing left authorized;
//! - every order the API acknowledged still exists, and a retried
//!   Idempotency-Key always named the same order.
//!
//! Any finding is a violation; the exit status is 1 when there is one.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use engine::engine::ItemPut;
use engine::keys::Lane;
use fred::prelude::*;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use stack::process::Daemon;
use stack::psp::{Faults, PspSim};
use stack::{AppendFsync, LocalStack, RedisMode, StackOptions};

const PARTITIONS: u16 = 4;
const RESTAURANTS: usize = 20;
const CUSTOMERS: usize = 400;
/// Units of the hot item each restaurant has: it sells out under the load.
const SPECIAL_STOCK: i64 = 40;
/// Orders of the last restaurant wait for an approval nobody gives: the
/// approval timer rejects them (and their payment is voided).
const APPROVAL_TIMEOUT: &str = "3s";
const RECLAIM_IDLE: &str = "5s";
/// Settled orders leave Redis this soon, so retirement races the faults.
const LIVE_RETENTION: &str = "2s";
/// Declines are part of normal life, not a fault.
const BASE_DECLINE_RATE: f64 = 0.05;

#[derive(Debug, clap::Parser)]
#[command(
    name = "lunchrush-chaos",
    about = "Load + seeded fault injection, then reconcile and check"
)]
struct Args {
    /// Seed of the first run (random when omitted); run k uses seed + k.
    #[arg(long)]
    seed: Option<u64>,
    /// Runs in a row.
    #[arg(long, default_value_t = 1)]
    runs: u64,
    /// Load (and fault) time of each run.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Mean time between two faults.
    #[arg(long, default_value = "4s", value_parser = humantime::parse_duration)]
    fault_every: Duration,
    /// Engine processes (`lunchrush serve`).
    #[arg(long, default_value_t = 2)]
    engines: usize,
    /// Concurrent HTTP clients of the load.
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// Redis fsync policy: `always` (as `lunchrush up`) or `everysec`.
    #[arg(long, default_value = "always", value_parser = AppendFsync::parse)]
    appendfsync: AppendFsync,
    /// The `lunchrush` binary (default: next to this one).
    #[arg(long)]
    lunchrush: Option<PathBuf>,
    /// Write the results table here (e.g. bench/CHAOS.md).
    #[arg(long)]
    out: Option<PathBuf>,
    /// How long the system may take to settle after the load.
    #[arg(long, default_value = "180s", value_parser = humantime::parse_duration)]
    settle_max: Duration,
    /// Keep each run's directory (logs, data) instead of deleting it.
    #[arg(long)]
    keep: bool,
    /// Provider outages among the faults (each one every run: the load goes
    /// on through it, so a run lasts at least the outages' length).
    #[arg(long, value_enum, default_value = "all")]
    outages: Outages,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Fault {
    EngineKill,
    ArchiverKill,
    RedisRestart,
    PostgresRestart,
    ProviderFaults,
    DuplicateDelivery,
    /// The provider fails every call for 60 s.
    ProviderOutage,
    /// The provider fails every call for 3 minutes: past the payment window.
    ProviderOutageLong,
    /// Redis's maxmemory set just above what it holds for a few seconds:
    /// the engines refuse new orders, those in flight finish.
    MemoryBudget,
    /// The filesystem under Redis's AOF filled for a few seconds (a tmpfs
    /// the run mounted; as root only): Redis refuses writes or, with
    /// `always`, exits and is started again once space is back.
    FullAofDisk,
    /// PostgreSQL down for 150 s: longer than the payment window.
    ArchiveOutage,
}

impl Fault {
    const ALL: [Fault; 11] = [
        Fault::EngineKill,
        Fault::ArchiverKill,
        Fault::RedisRestart,
        Fault::PostgresRestart,
        Fault::ProviderFaults,
        Fault::DuplicateDelivery,
        Fault::ProviderOutage,
        Fault::ProviderOutageLong,
        Fault::MemoryBudget,
        Fault::FullAofDisk,
        Fault::ArchiveOutage,
    ];

    fn label(self) -> &'static str {
        match self {
            Fault::EngineKill => "engine SIGKILL",
            Fault::ArchiverKill => "archiver SIGKILL",
            Fault::RedisRestart => "Redis SIGKILL + restart",
            Fault::PostgresRestart => "Postgres stop/start",
            Fault::ProviderFaults => "provider faults",
            Fault::DuplicateDelivery => "duplicate delivery",
            Fault::ProviderOutage => "provider outage 60 s",
            Fault::ProviderOutageLong => "provider outage 3 min",
            Fault::MemoryBudget => "Redis at its memory budget",
            Fault::FullAofDisk => "full AOF disk",
            Fault::ArchiveOutage => "PostgreSQL down 150 s",
        }
    }

    fn is_outage(self) -> bool {
        matches!(
            self,
            Fault::ProviderOutage | Fault::ProviderOutageLong | Fault::ArchiveOutage
        )
    }

    fn drawn(self, outages: Outages, aof_disk: bool) -> bool {
        match self {
            Fault::ProviderOutage => outages != Outages::None,
            Fault::ProviderOutageLong | Fault::ArchiveOutage => outages == Outages::All,
            Fault::FullAofDisk => aof_disk,
            _ => true,
        }
    }
}

/// Which provider outages the schedule may draw.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Outages {
    /// None: only the short fault windows.
    None,
    /// The 60-second outage.
    Short,
    /// Both, the 60-second and the 3-minute one (past the payment window),
    /// and PostgreSQL down for 150 s.
    All,
}

/// The seeded schedule: when, what, and the fault's own random choices.
fn schedule(
    rng: &mut StdRng,
    duration: Duration,
    every: Duration,
    outages: Outages,
    aof_disk: bool,
) -> Vec<(Duration, Fault)> {
    let mut kinds = Vec::new();
    let mut at = Duration::ZERO;
    let mut plan = Vec::new();
    loop {
        at += every.mul_f64(rng.random_range(0.5..1.5));
        if at >= duration {
            return plan;
        }
        // Every kind once (in a random order) before any repeats; an
        // outage at most once per run (the load goes on through it).
        if kinds.is_empty() {
            let first_round = plan.is_empty();
            kinds = Fault::ALL
                .into_iter()
                .filter(|f| f.drawn(outages, aof_disk) && (first_round || !f.is_outage()))
                .collect();
            kinds.shuffle(rng);
        }
        plan.push((at, kinds.pop().expect("refilled above")));
    }
}

/// What one run measured.
#[derive(Debug, Default)]
struct RunReport {
    seed: u64,
    faults: BTreeMap<Fault, u64>,
    acknowledged: u64,
    outcomes: BTreeMap<String, u64>,
    orders: u64,
    quiescence: Duration,
    settled: bool,
    fixes: BTreeMap<String, u64>,
    violations: Vec<String>,
}

/// Shared between the load's clients.
#[derive(Default)]
struct Tally {
    /// Idempotency-Key → the order the API acknowledged for it.
    acknowledged: HashMap<String, uuid::Uuid>,
    outcomes: BTreeMap<String, u64>,
    violations: Vec<String>,
}

type Shared = Arc<Mutex<Tally>>;

fn lock(tally: &Shared) -> std::sync::MutexGuard<'_, Tally> {
    tally.lock().unwrap_or_else(|e| e.into_inner())
}

fn redis_used_memory(server: &stack::RedisServer) -> anyhow::Result<u64> {
    let info = server.command(&["INFO", "memory"])?;
    info.lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .context("INFO memory has no used_memory")
}

fn expect_ok(reply: Result<String, stack::StackError>) -> anyhow::Result<()> {
    let reply = reply?;
    anyhow::ensure!(reply == "OK", "Redis answered {reply:?}");
    Ok(())
}

/// The processes of one run under test.
struct System {
    stack: LocalStack,
    sim: PspSim,
    bin: PathBuf,
    env: Vec<(String, String)>,
    engine_ports: Vec<u16>,
    engines: Vec<Option<Daemon>>,
    archiver: Option<Daemon>,
    engine: engine::Engine,
    pool: deadpool_postgres::Pool,
    /// A tmpfs under Redis's files, which the full-disk fault fills (as
    /// root); dropped after `stack` (field order): the servers stop first.
    aof_disk: Option<stack::tmpfs::Tmpfs>,
}

impl System {
    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(&self.bin);
        command.args(args).envs(self.env.iter().cloned());
        command
    }

    /// `lunchrush SUBCOMMAND` with one extra variable, logging to `log`.
    fn spawn(&self, name: &str, subcommand: &str, var: (&str, String)) -> anyhow::Result<Daemon> {
        let mut command = self.command(&[subcommand]);
        command.env(var.0, var.1);
        let log = self.stack.home().join(format!("{name}.log"));
        Ok(Daemon::spawn(name, command, libc::SIGTERM, &log, None)?)
    }

    fn spawn_engine(&mut self, i: usize) -> anyhow::Result<()> {
        let listen = format!("127.0.0.1:{}", self.engine_ports[i]);
        self.engines[i] = Some(self.spawn(
            &format!("engine-{i}"),
            "serve",
            ("LUNCHRUSH_LISTEN", listen),
        )?);
        Ok(())
    }

    fn spawn_archiver(&mut self) -> anyhow::Result<()> {
        let consumer = ("LUNCHRUSH_ARCHIVER_CONSUMER", "chaos-archiver".to_string());
        self.archiver = Some(self.spawn("archiver", "archive", consumer)?);
        Ok(())
    }

    fn urls(&self) -> Vec<String> {
        self.engine_ports
            .iter()
            .map(|port| format!("http://127.0.0.1:{port}"))
            .collect()
    }

    /// Applies one fault; returns once the faulty part is back.
    async fn inject(&mut self, fault: Fault, rng: &mut StdRng) -> anyhow::Result<()> {
        match fault {
            Fault::EngineKill => {
                let i = rng.random_range(0..self.engines.len());
                if let Some(mut daemon) = self.engines[i].take() {
                    daemon.kill();
                }
                sleep_ms(rng, 200..2_000).await;
                self.spawn_engine(i)?;
            }
            Fault::ArchiverKill => {
                if let Some(mut daemon) = self.archiver.take() {
                    daemon.kill();
                }
                sleep_ms(rng, 200..2_000).await;
                self.spawn_archiver()?;
            }
            Fault::RedisRestart => {
                let server = &mut self.stack.redis.servers_mut()[0];
                server.kill();
                sleep_ms(rng, 100..1_500).await;
                tokio::task::block_in_place(|| server.restart())?;
            }
            Fault::PostgresRestart => {
                tokio::task::block_in_place(|| self.stack.postgres.stop());
                sleep_ms(rng, 1_000..6_000).await;
                self.stack.postgres.restart().await?;
            }
            Fault::ProviderFaults => {
                let faults = match rng.random_range(0..4) {
                    0 => Faults {
                        error_rate: 0.4,
                        ..base_faults()
                    },
                    1 => Faults {
                        latency_ms: rng.random_range(200..900),
                        ..base_faults()
                    },
                    2 => Faults {
                        timeout_after_charge_rate: 0.3,
                        hang_ms: 3_000,
                        ..base_faults()
                    },
                    _ => Faults {
                        error_rate: 0.2,
                        timeout_after_charge_rate: 0.2,
                        hang_ms: 3_000,
                        latency_ms: 100,
                        ..base_faults()
                    },
                };
                self.sim.set_faults(faults);
                sleep_ms(rng, 2_000..6_000).await;
                self.sim.set_faults(base_faults());
            }
            Fault::ProviderOutage | Fault::ProviderOutageLong => {
                let length = if fault == Fault::ProviderOutage {
                    Duration::from_secs(60)
                } else {
                    Duration::from_secs(180)
                };
                let before = self.sim.stats();
                self.sim.set_faults(Faults {
                    error_rate: 1.0,
                    ..base_faults()
                });
                tokio::time::sleep(length).await;
                self.sim.set_faults(base_faults());
                let after = self.sim.stats();
                eprintln!(
                    "[chaos] the provider failed {} of {} calls during the outage",
                    after.failed - before.failed,
                    after.received - before.received
                );
            }
            Fault::MemoryBudget => {
                let server = &self.stack.redis.servers()[0];
                let used = redis_used_memory(server)?;
                let limit = (used + rng.random_range(1u64..4) * (1 << 20)).to_string();
                expect_ok(server.command(&["CONFIG", "SET", "maxmemory", &limit]))?;
                sleep_ms(rng, 3_000..8_000).await;
                expect_ok(server.command(&["CONFIG", "SET", "maxmemory", "0"]))?;
            }
            Fault::FullAofDisk => {
                let Some(disk) = self.aof_disk.as_ref() else {
                    return Ok(());
                };
                let filler = tokio::task::block_in_place(|| disk.fill("filler"))?;
                sleep_ms(rng, 2_000..6_000).await;
                std::fs::remove_file(&filler)?;
                // With `always` Redis exits on a write it could not append.
                let server = &mut self.stack.redis.servers_mut()[0];
                if !server.pid().is_some_and(stack::process_alive) {
                    eprintln!("[chaos] Redis exited on the full disk; starting it again");
                    tokio::task::block_in_place(|| server.restart())?;
                }
            }
            Fault::ArchiveOutage => {
                tokio::task::block_in_place(|| self.stack.postgres.stop());
                tokio::time::sleep(Duration::from_secs(150)).await;
                self.stack.postgres.restart().await?;
            }
            Fault::DuplicateDelivery => {
                // Rewind one consumer group of one stream to its start: every
                // entry still in the stream is delivered again.
                let mut groups: Vec<(&str, engine::keys::Topic)> = engine::saga::Role::ALL
                    .iter()
                    .flat_map(|role| role.topics().iter().map(move |t| (role.group(), *t)))
                    .collect();
                groups.extend(
                    engine::keys::Topic::ALL
                        .iter()
                        .map(|t| (archiver::GROUP, *t)),
                );
                let (group, topic) = groups[rng.random_range(0..groups.len())];
                let partition = rng.random_range(0..PARTITIONS);
                let stream = self.engine.keys().stream(partition, topic);
                let rewound: Result<(), _> = self
                    .engine
                    .redis()
                    .custom(
                        fred::cmd!("XGROUP"),
                        vec!["SETID".to_string(), stream, group.into(), "0".into()],
                    )
                    .await;
                rewound.context("rewind a consumer group")?;
            }
        }
        Ok(())
    }

    /// Every daemon still running (restart the ones a fault left down).
    fn ensure_up(&mut self) -> anyhow::Result<()> {
        for i in 0..self.engines.len() {
            let running = self.engines[i].as_mut().is_some_and(Daemon::is_running);
            if !running {
                self.spawn_engine(i)?;
            }
        }
        if !self.archiver.as_mut().is_some_and(Daemon::is_running) {
            self.spawn_archiver()?;
        }
        Ok(())
    }

    /// Waits until no saga runs and the archive holds every event; returns
    /// whether that happened within `max`.
    async fn settle(&self, max: Duration) -> bool {
        let deadline = Instant::now() + max;
        while Instant::now() < deadline {
            // Redis unreachable counts as not settled yet.
            if self.engine.unsettled().await.is_ok_and(|n| n == 0) {
                match archiver::audit::audit(&self.engine, &self.pool).await {
                    Ok(report) if report.passed() => return true,
                    _ => {}
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        false
    }
}

fn base_faults() -> Faults {
    Faults {
        decline_rate: BASE_DECLINE_RATE,
        hang_ms: 3_000,
        ..Faults::default()
    }
}

async fn sleep_ms(rng: &mut StdRng, range: std::ops::Range<u64>) {
    tokio::time::sleep(Duration::from_millis(rng.random_range(range))).await;
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

struct Menu {
    /// (restaurant, [(item, price)])
    restaurants: Vec<(String, Vec<(String, i64)>)>,
    /// Zipf(1.1) weights over the restaurants.
    weights: Vec<f64>,
}

impl Menu {
    fn new() -> Self {
        let restaurants = (0..RESTAURANTS)
            .map(|r| {
                let items = vec![
                    ("meal".to_string(), 1_200 + 10 * r as i64),
                    ("drink".to_string(), 300),
                    ("special".to_string(), 2_500),
                ];
                (format!("chaos-{r:02}"), items)
            })
            .collect();
        let weights = (1..=RESTAURANTS)
            .map(|k| 1.0 / (k as f64).powf(1.1))
            .collect();
        Self {
            restaurants,
            weights,
        }
    }

    async fn seed(&self, engine: &engine::Engine) -> anyhow::Result<()> {
        for (r, (rid, items)) in self.restaurants.iter().enumerate() {
            let auto_approve = r + 1 < RESTAURANTS;
            engine
                .put_restaurant(rid, rid, true, auto_approve, Lane::Online)
                .await
                .map_err(|e| anyhow::anyhow!("seed {rid}: {e}"))?;
            for (item, price) in items {
                let put = ItemPut {
                    name: item.clone(),
                    price: *price,
                    stock: if item == "special" {
                        SPECIAL_STOCK
                    } else {
                        1_000_000
                    },
                    available: true,
                    max_per_customer: None,
                };
                engine
                    .put_item(rid, item, &put, Lane::Online)
                    .await
                    .map_err(|e| anyhow::anyhow!("seed {rid}/{item}: {e}"))?;
            }
        }
        Ok(())
    }

    fn pick(&self, rng: &mut StdRng) -> &(String, Vec<(String, i64)>) {
        let mut x = rng.random::<f64>() * self.weights.iter().sum::<f64>();
        for (i, w) in self.weights.iter().enumerate() {
            if x < *w {
                return &self.restaurants[i];
            }
            x -= w;
        }
        &self.restaurants[RESTAURANTS - 1]
    }
}

/// One HTTP client: places orders with a fresh Idempotency-Key each, and
/// retries a key (on any engine) until some engine answers.
async fn client(
    i: usize,
    seed: u64,
    urls: Vec<String>,
    menu: Arc<Menu>,
    keys: Arc<api::auth::Keys>,
    tally: Shared,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut rng = StdRng::seed_from_u64(seed.wrapping_mul(1_000_003).wrapping_add(i as u64));
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .build()
        .expect("an HTTP client");
    let mut tokens: HashMap<usize, String> = HashMap::new();
    let mut n = 0u64;
    while !*stop.borrow() {
        n += 1;
        let customer = rng.random_range(0..CUSTOMERS);
        let token = tokens
            .entry(customer)
            .or_insert_with(|| {
                keys.mint(
                    api::auth::Role::Customer,
                    &format!("chaos-customer-{customer}"),
                    None,
                    Duration::from_secs(3_600),
                )
                .expect("valid claims")
            })
            .clone();
        let (rid, items) = menu.pick(&mut rng);
        // Most orders hold a meal, many a drink, a few the scarce special.
        let lines: Vec<&(String, i64)> = items
            .iter()
            .zip([0.8, 0.5, 0.15])
            .filter(|(_, p)| rng.random_bool(*p))
            .map(|(line, _)| line)
            .collect();
        let lines = if lines.is_empty() {
            vec![&items[0]]
        } else {
            lines
        };
        let body = json!({
            "restaurant_id": rid,
            "items": lines.iter().map(|(item, _)| json!({"item": item, "qty": 1})).collect::<Vec<_>>(),
            "expected_total": lines.iter().map(|(_, price)| price).sum::<i64>(),
        });
        let key = format!("chaos-{seed}-{i}-{n}");
        let outcome = place(&http, &urls, &token, &key, &body, &mut rng, &tally).await;
        *lock(&tally).outcomes.entry(outcome).or_default() += 1;
        tokio::time::sleep(Duration::from_millis(rng.random_range(5..25))).await;
    }
}

/// Sends one placement until an engine answers for it; returns the outcome.
async fn place(
    http: &reqwest::Client,
    urls: &[String],
    token: &str,
    key: &str,
    body: &Value,
    rng: &mut StdRng,
    tally: &Shared,
) -> String {
    for _ in 0..40 {
        let url = &urls[rng.random_range(0..urls.len())];
        let sent = http
            .post(format!("{url}/v1/orders"))
            .bearer_auth(token)
            .header("idempotency-key", key)
            .json(body)
            .send()
            .await;
        let Ok(response) = sent else {
            tokio::time::sleep(Duration::from_millis(150)).await;
            continue;
        };
        let status = response.status().as_u16();
        let reply: Value = response.json().await.unwrap_or(Value::Null);
        match status {
            200..=202 => {
                let Some(id) = reply["order_id"]
                    .as_str()
                    .and_then(|s| s.parse::<uuid::Uuid>().ok())
                else {
                    lock(tally)
                        .violations
                        .push(format!("{key}: acknowledged without an order id: {reply}"));
                    return "acknowledged".into();
                };
                let mut tally = lock(tally);
                if let Some(before) = tally.acknowledged.insert(key.to_string(), id)
                    && before != id
                {
                    tally.violations.push(format!(
                        "Idempotency-Key {key} named order {before}, then {id}"
                    ));
                }
                return "acknowledged".into();
            }
            409 | 422 => {
                return format!(
                    "refused {}",
                    reply["code"].as_str().unwrap_or("without a code")
                );
            }
            // The provider is down: a clean refusal that reserved nothing.
            503 if reply["code"] == "payment_unavailable" => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                return "refused payment_unavailable".into();
            }
            // Redis at its budget or refusing writes: refused cleanly, the
            // key not taken.
            503 if reply["code"] == "capacity_exhausted" || reply["code"] == "store_unwritable" => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                return format!("refused {}", reply["code"].as_str().unwrap_or_default());
            }
            // Shed, down, or between restarts: retry the same key.
            429 | 500..=599 => tokio::time::sleep(Duration::from_millis(150)).await,
            _ => return format!("unexpected {status} {}", reply["code"]),
        }
    }
    "gave up (no engine answered)".into()
}

/// The order, live in Redis or retired to the archive.
async fn order_anywhere(
    system: &System,
    id: &uuid::Uuid,
) -> anyhow::Result<Option<engine::domain::Order>> {
    match system.engine.order(id).await? {
        Some(order) => Ok(Some(order)),
        None => api::archive::retired_order(&system.pool, id).await,
    }
}

/// Money at the provider against orders, live and retired.
async fn ledger_violations(system: &System) -> anyhow::Result<Vec<String>> {
    let mut violations = Vec::new();
    let mut charged: HashMap<uuid::Uuid, i64> = HashMap::new();
    for payment in system.sim.payments() {
        let Ok(id) = payment.key.parse::<uuid::Uuid>() else {
            violations.push(format!(
                "provider payment with a foreign key {}",
                payment.key
            ));
            continue;
        };
        let order = order_anywhere(system, &id).await?;
        match (payment.state.as_str(), order) {
            ("captured", None) => {
                violations.push(format!("{id}: captured at the provider, order unknown"))
            }
            ("captured", Some(order)) => {
                if !order.status.is_fulfilled() {
                    violations.push(format!("{id}: captured for a {} order", order.status));
                } else if order.total != payment.amount {
                    violations.push(format!(
                        "{id}: captured {} for an order of {}",
                        payment.amount, order.total
                    ));
                }
                charged.insert(id, payment.amount);
            }
            ("authorized", _) => violations.push(format!("{id}: authorization left dangling")),
            _ => {}
        }
    }
    let mut fulfilled_uncharged = 0u64;
    for p in 0..PARTITIONS {
        system
            .engine
            .for_each_order(p, |order| {
                if order.status.is_fulfilled() && !charged.contains_key(&order.id) {
                    fulfilled_uncharged += 1;
                    if fulfilled_uncharged <= 10 {
                        violations.push(format!(
                            "{}: {} but nothing captured at the provider",
                            order.id, order.status
                        ));
                    }
                }
            })
            .await?;
    }
    // Retired orders: the archive is caught up once the audit passed.
    let archived = system
        .pool
        .get()
        .await?
        .query(
            "SELECT order_id, status FROM orders WHERE status IN ('APPROVED', 'DISPATCHED', 'CONFIRMED')",
            &[],
        )
        .await?;
    for row in archived {
        let id: uuid::Uuid = row.get(0);
        if !charged.contains_key(&id) && system.engine.order(&id).await?.is_none() {
            fulfilled_uncharged += 1;
            if fulfilled_uncharged <= 10 {
                violations.push(format!(
                    "{id}: retired {} but nothing captured at the provider",
                    row.get::<_, String>(1)
                ));
            }
        }
    }
    Ok(violations)
}

/// `lunchrush check` as a user runs it: its verdict and output.
fn check(system: &System, args: &[&str]) -> anyhow::Result<(bool, String)> {
    let output = system
        .command(&[&["check"], args].concat())
        .output()
        .context("run lunchrush check")?;
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    Ok((output.status.success(), text))
}

fn violations_of(text: &str, prefix: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("violation: "))
        .map(|v| format!("{prefix}: {v}"))
        .collect()
}

async fn run_once(args: &Args, seed: u64, bin: &Path) -> anyhow::Result<RunReport> {
    let mut rng = StdRng::seed_from_u64(seed);
    let dir = tempfile::Builder::new()
        .prefix("lunchrush-chaos-")
        .tempdir()?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
    }
    let home = dir.path().to_path_buf();
    eprintln!("[chaos] seed {seed}: stack in {}", home.display());
    // Redis's files on a filesystem of their own, which a fault fills.
    let aof_disk = stack::tmpfs::Tmpfs::mount(&home.join("redis"), "2g", None)
        .map_err(|why| eprintln!("[chaos] no full-disk fault: cannot mount a tmpfs here ({why})"))
        .ok();
    let plan = schedule(
        &mut rng,
        args.duration,
        args.fault_every,
        args.outages,
        aof_disk.is_some(),
    );
    let stack = LocalStack::start(StackOptions {
        home: home.clone(),
        redis: RedisMode::Standalone,
        appendfsync: args.appendfsync,
        redis_port: None,
        postgres_port: None,
        redis_maxmemory: None,
        durable: false,
    })
    .await?;
    archiver::schema::migrate(&stack.postgres_url()).await?;
    let sim = PspSim::open(&home.join("ledger.jsonl"), base_faults())?;
    let psp_url = sim.clone().spawn_local().await?;
    let secret = format!("chaos-secret-{seed:020}-0123456789abcdef");
    let config = engine::Config {
        redis_url: stack.redis_url(),
        postgres_url: stack.postgres_url(),
        psp_url: psp_url.clone(),
        partitions: PARTITIONS,
        ..engine::Config::default()
    };
    let engine = bench::connect_engine(&config).await?;
    let menu = Arc::new(Menu::new());
    menu.seed(&engine).await?;
    let env = [
        ("LUNCHRUSH_REDIS_URL", config.redis_url.clone()),
        ("LUNCHRUSH_POSTGRES_URL", config.postgres_url.clone()),
        ("LUNCHRUSH_PSP_URL", psp_url.clone()),
        ("LUNCHRUSH_PARTITIONS", PARTITIONS.to_string()),
        ("LUNCHRUSH_JWT_SECRET", secret.clone()),
        ("LUNCHRUSH_APPROVAL_TIMEOUT", APPROVAL_TIMEOUT.into()),
        ("LUNCHRUSH_RECLAIM_IDLE", RECLAIM_IDLE.into()),
        ("LUNCHRUSH_LIVE_RETENTION", LIVE_RETENTION.into()),
        ("LUNCHRUSH_RATE_LIMIT", "100000".into()),
        ("LUNCHRUSH_RATE_BURST", "100000".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let mut system = System {
        pool: api::postgres_pool(&config.postgres_url)?,
        engine,
        stack,
        sim,
        bin: bin.to_path_buf(),
        env,
        engine_ports: (0..args.engines)
            .map(|_| free_port())
            .collect::<anyhow::Result<_>>()?,
        engines: (0..args.engines).map(|_| None).collect(),
        archiver: None,
        aof_disk,
    };
    for i in 0..args.engines {
        system.spawn_engine(i)?;
    }
    system.spawn_archiver()?;
    wait_ready(&system.urls()).await?;

    let tally: Shared = Arc::default();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let keys = Arc::new(api::auth::Keys::new(secret.as_bytes()));
    let clients: Vec<_> = (0..args.clients)
        .map(|i| {
            tokio::spawn(client(
                i,
                seed,
                system.urls(),
                menu.clone(),
                keys.clone(),
                tally.clone(),
                stopped.clone(),
            ))
        })
        .collect();
    let started = Instant::now();
    let mut report = RunReport {
        seed,
        ..RunReport::default()
    };
    for (at, fault) in &plan {
        if let Some(wait) = at.checked_sub(started.elapsed()) {
            tokio::time::sleep(wait).await;
        }
        eprintln!(
            "[chaos] seed {seed} t={:>5.1}s {}",
            started.elapsed().as_secs_f64(),
            fault.label()
        );
        system
            .inject(*fault, &mut rng)
            .await
            .with_context(|| format!("inject {}", fault.label()))?;
        *report.faults.entry(*fault).or_default() += 1;
    }
    if let Some(rest) = args.duration.checked_sub(started.elapsed()) {
        tokio::time::sleep(rest).await;
    }
    let _ = stop.send(true);
    for handle in clients {
        let _ = handle.await;
    }
    system.sim.set_faults(base_faults());
    system.ensure_up()?;

    // Quiescence: no saga open, every event archived.
    let quiet = Instant::now();
    report.settled = system.settle(args.settle_max).await;
    report.quiescence = quiet.elapsed();
    eprintln!(
        "[chaos] seed {seed}: load stopped; {} after {:.1}s",
        if report.settled {
            "quiescent"
        } else {
            "NOT quiescent"
        },
        report.quiescence.as_secs_f64()
    );
    let (_, before) = check(&system, &[])?;
    report
        .violations
        .extend(violations_of(&before, "check before reconcile"));

    // Reconcile, then let what it re-drove settle.
    let reconcile_report = home.join("reconcile.json");
    let output = system
        .command(&[
            "reconcile",
            "--older-than",
            "1s",
            "--report",
            reconcile_report.to_str().unwrap_or("reconcile.json"),
        ])
        .output()
        .context("run lunchrush reconcile")?;
    if !output.status.success() {
        report.violations.push(format!(
            "reconcile exited with {}: {}",
            output.status,
            String::from_utf8_lossy(&output.stdout)
                .lines()
                .last()
                .unwrap_or("")
        ));
    }
    if let Ok(text) = std::fs::read_to_string(&reconcile_report) {
        let json: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        for fix in json["fixes"].as_array().into_iter().flatten() {
            let kind = fix["kind"].as_str().unwrap_or("?").to_string();
            *report.fixes.entry(kind).or_default() += 1;
        }
    }
    if !system.settle(args.settle_max).await {
        report
            .violations
            .push("not at rest after reconciliation".into());
    }
    let (passed, after) = check(&system, &["--at-rest", "--archive"])?;
    let found = violations_of(&after, "check after reconcile");
    if !passed && found.is_empty() {
        report
            .violations
            .push(format!("check failed: {}", after.trim()));
    }
    report.violations.extend(found);
    report.violations.extend(ledger_violations(&system).await?);

    let tally = std::mem::take(&mut *lock(&tally));
    report.acknowledged = tally.acknowledged.len() as u64;
    report.outcomes = tally.outcomes;
    report.violations.extend(tally.violations);
    let mut lost = 0;
    for id in tally.acknowledged.values() {
        if order_anywhere(&system, id).await?.is_none() {
            lost += 1;
            if lost <= 10 {
                report
                    .violations
                    .push(format!("{id}: acknowledged, then lost"));
            }
        }
    }
    for p in 0..PARTITIONS {
        system
            .engine
            .for_each_order(p, |_| report.orders += 1)
            .await?;
    }

    eprintln!(
        "[chaos] seed {seed}: {} orders acknowledged, {} in Redis, {} violations",
        report.acknowledged,
        report.orders,
        report.violations.len()
    );
    for violation in report.violations.iter().take(20) {
        eprintln!("[chaos]   violation: {violation}");
    }
    if args.keep || !report.violations.is_empty() {
        let kept = dir.keep();
        eprintln!(
            "[chaos] seed {seed}: logs and data kept in {}",
            kept.display()
        );
    }
    Ok(report)
}

async fn wait_ready(urls: &[String]) -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    for url in urls {
        loop {
            let ok = http
                .get(format!("{url}/readyz"))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ok {
                break;
            }
            anyhow::ensure!(Instant::now() < deadline, "engine {url} never became ready");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

fn table(args: &Args, command: &str, reports: &[RunReport]) -> String {
    let mut md = String::from("# Chaos results\n\nProduced by the tool, not by hand:\n\n");
    md.push_str(&format!("```text\n{command}\n```\n\n"));
    md.push_str(&format!(
        "Machine: {}. Each run: a fresh stack (Redis `appendfsync {}`, PostgreSQL, the provider simulator), \
         {} engine processes (`lunchrush serve`), one `lunchrush archive`, {} HTTP clients placing orders \
         for {} with a fault every {} on average; then settle, `lunchrush reconcile`, \
         `lunchrush check --at-rest --archive` and the provider ledger against Redis.\n\n",
        bench::machine(),
        args.appendfsync.as_str(),
        args.engines,
        args.clients,
        humantime::format_duration(args.duration),
        humantime::format_duration(args.fault_every),
    ));
    md.push_str("| seed | orders acknowledged | orders in Redis |");
    for fault in Fault::ALL {
        md.push_str(&format!(" {} |", fault.label()));
    }
    md.push_str(" quiescence (s) | reconcile fixes | violations |\n|");
    md.push_str(&" --- |".repeat(Fault::ALL.len() + 6));
    md.push('\n');
    for r in reports {
        md.push_str(&format!(
            "| {} | {} | {} |",
            r.seed, r.acknowledged, r.orders
        ));
        for fault in Fault::ALL {
            md.push_str(&format!(
                " {} |",
                r.faults.get(&fault).copied().unwrap_or(0)
            ));
        }
        let fixes = if r.fixes.is_empty() {
            "0".to_string()
        } else {
            r.fixes
                .iter()
                .map(|(k, n)| format!("{k} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        md.push_str(&format!(
            " {}{:.1} | {} | {} |\n",
            if r.settled { "" } else { "> " },
            r.quiescence.as_secs_f64(),
            fixes,
            r.violations.len()
        ));
    }
    let total_violations: usize = reports.iter().map(|r| r.violations.len()).sum();
    let orders: u64 = reports.iter().map(|r| r.acknowledged).sum();
    let faults: u64 = reports.iter().flat_map(|r| r.faults.values()).sum();
    md.push_str(&format!(
        "\n{} runs, {} faults injected, {} orders acknowledged, **{} violations**.\n",
        reports.len(),
        faults,
        orders,
        total_violations
    ));
    let mut outcomes: BTreeMap<&str, u64> = BTreeMap::new();
    for r in reports {
        for (k, n) in &r.outcomes {
            *outcomes.entry(k).or_default() += n;
        }
    }
    md.push_str("\nPlacement outcomes over all runs: ");
    md.push_str(
        &outcomes
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect::<Vec<_>>()
            .join(", "),
    );
    md.push_str(".\n");
    for r in reports.iter().filter(|r| !r.violations.is_empty()) {
        md.push_str(&format!("\nViolations of seed {}:\n\n", r.seed));
        for v in r.violations.iter().take(50) {
            md.push_str(&format!("- {v}\n"));
        }
    }
    md.push_str(
        "\nReplay one run: `bench/chaos --seed SEED --duration DURATION` (the schedule of faults \
         is drawn from the seed; the interleaving with the load is not deterministic).\n",
    );
    md
}

fn main() -> anyhow::Result<ExitCode> {
    let args: Args = clap::Parser::parse();
    let bin = bench::lunchrush_binary(args.lunchrush.as_deref())?;
    let first = args.seed.unwrap_or_else(|| rand::random::<u32>().into());
    let command = std::iter::once("bench/chaos".to_string())
        .chain(std::env::args().skip(1))
        .collect::<Vec<_>>()
        .join(" ");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let mut reports = Vec::new();
    for k in 0..args.runs {
        let seed = first + k;
        eprintln!("[chaos] run {}/{}: seed {seed}", k + 1, args.runs);
        let report = runtime.block_on(run_once(&args, seed, &bin))?;
        reports.push(report);
        if let Some(out) = &args.out {
            std::fs::write(out, table(&args, &command, &reports))
                .with_context(|| format!("write {}", out.display()))?;
        }
    }
    let violations: usize = reports.iter().map(|r| r.violations.len()).sum();
    println!("{}", table(&args, &command, &reports));
    eprintln!(
        "[chaos] {} runs from seed {first}: {violations} violations",
        reports.len()
    );
    Ok(if violations == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
