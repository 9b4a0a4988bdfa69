//! The memory budget: how full Redis may get before new orders are refused,
//! so that every order already accepted can still finish.
//!
//! Redis runs with `maxmemory` and `noeviction`: past the limit it refuses
//! every write that may grow memory. lunchrush keeps a **reserve** below
//! that limit for what the orders already in flight can still write (their
//! payment, approval, capture or compensation, timers, events), and refuses
//! new placements once used memory reaches the **high-water mark**
//! (`limit - reserve`); they resume below the **low-water mark** (the high
//! mark less a hysteresis gap), so a level near the mark does not flap. The
//! reserve follows the orders in flight: `floor + in_flight ×
//! per_order`, where `per_order` is what one order writes from placement
//! to rest with nothing trimmed (the archive down), measured by
//! `engine/tests/budget.rs`. Scripts that finish accepted work run even past
//! `maxmemory` (`Memory: finishes`, `#!lua flags=allow-oom`), so a reserve
//! that proved too small still ends no saga halfway.
//!
//! [`watch`] reads every primary's `INFO` and the in-flight indexes every
//! [`BudgetOptions::watch_every`]; [`MemoryBudget::refusal`] is what the API
//! asks before a placement (no Redis call). The same reading notices Redis
//! refusing writes for another reason (a failed AOF write: `MISCONF`; a
//! replica after a failover: `READONLY`), as does any caller that meets such
//! an error ([`MemoryBudget::note_refused`]); workers then back off.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use fred::prelude::*;

use crate::Engine;

/// What an order in flight can still write to Redis, at most, from its
/// placement to rest when nothing is trimmed: its events on every stream
/// (payment, approval, capture or void, timers), the hash's growth, timer
/// and index entries, the consumer groups' pending entries. Measured on the
/// longest path (a restaurant that decides itself, then dispatch and the
/// confirmation) by `engine/tests/budget.rs`, which fails if an order ever
/// writes more; docs/operations.md has the figures.
pub const IN_FLIGHT_ORDER_BYTES: u64 = 4 * 1024;

/// The budget's settings (`serve --memory-*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BudgetOptions {
    /// The limit in bytes; `None`: each primary's own `maxmemory` (none
    /// there: no budget, and a warning at start).
    pub limit: Option<u64>,
    /// The fixed part of the reserve (the placements of one watch round,
    /// confirmations of settled orders, archiver and client buffers);
    /// `None`: [`default_floor`].
    pub floor: Option<u64>,
    /// What the reserve keeps per order in flight.
    pub per_order: u64,
    /// The gap from the high-water mark down to the low-water mark;
    /// `None`: 5 % of the limit.
    pub hysteresis: Option<u64>,
    /// How often Redis's memory is read.
    pub watch_every: Duration,
}

impl Default for BudgetOptions {
    fn default() -> Self {
        Self {
            limit: None,
            floor: None,
            per_order: IN_FLIGHT_ORDER_BYTES,
            hysteresis: None,
            watch_every: Duration::from_millis(250),
        }
    }
}

/// Why Redis takes no new orders now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Used memory reached the high-water mark (or Redis answered `OOM`).
    Memory,
    /// Redis refuses writes: it cannot persist them (`MISCONF`: a failed
    /// AOF write or snapshot, e.g. a full disk) or it is a replica now
    /// (`READONLY`, after a failover).
    Unwritable,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Memory => "redis_memory",
            Refusal::Unwritable => "redis_unwritable",
        }
    }

    /// The kind of refused write `error` is, if it is one.
    pub fn of(error: &fred::error::Error) -> Option<Refusal> {
        let details = error.details().trim_start_matches('-');
        if details.starts_with("OOM") {
            Some(Refusal::Memory)
        } else if details.starts_with("MISCONF") || details.starts_with("READONLY") {
            Some(Refusal::Unwritable)
        } else {
            None
        }
    }
}

/// One reading of the budget: of the primary with the least room.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Reading {
    /// That primary, as fred names it (`redis` on a standalone server).
    pub node: String,
    pub used: u64,
    /// 0: no limit (no budget).
    pub limit: u64,
    pub reserve: u64,
    pub high_water: u64,
    pub low_water: u64,
    /// Orders in their saga (every partition's in-flight index).
    pub in_flight: u64,
    /// Used memory's growth, bytes per second (smoothed over ~10 s).
    pub growth_per_sec: f64,
    /// What Redis said when it last refused a write (while it does).
    pub refused: Option<String>,
}

impl Reading {
    /// Seconds until used memory reaches the high-water mark at its recent
    /// growth; `None` when it does not grow (or there is no limit).
    pub fn to_high_water(&self) -> Option<f64> {
        (self.limit > 0 && self.growth_per_sec > 1.0)
            .then(|| self.high_water.saturating_sub(self.used) as f64 / self.growth_per_sec)
    }
}

/// The reserve's floor for a limit of `limit` bytes: 5 % of it, but at
/// least [`FLOOR_MIN`] (an archiver catching up after an outage reads pages
/// of several MB, which Redis holds in its output buffers), and at most a
/// quarter of the limit (a small Redis still takes orders).
pub fn default_floor(limit: u64) -> u64 {
    (limit / 20).max(FLOOR_MIN).min(limit / 4)
}

/// See [`default_floor`].
pub const FLOOR_MIN: u64 = 32 << 20;

const ACCEPTING: u8 = 0;
const MEMORY: u8 = 1;
const UNWRITABLE: u8 = 2;

/// The budget of one process: the last reading and whether placements are
/// refused, shared by the API and the workers.
#[derive(Debug)]
pub struct MemoryBudget {
    options: BudgetOptions,
    state: AtomicU8,
    reading: Mutex<(Reading, Option<Instant>)>,
}

impl MemoryBudget {
    pub fn new(options: BudgetOptions) -> Self {
        Self {
            options,
            state: AtomicU8::new(ACCEPTING),
            reading: Mutex::new((Reading::default(), None)),
        }
    }

    pub fn options(&self) -> &BudgetOptions {
        &self.options
    }

    /// Why new orders are refused now, if they are. No Redis call.
    pub fn refusal(&self) -> Option<Refusal> {
        match self.state.load(Ordering::Relaxed) {
            MEMORY => Some(Refusal::Memory),
            UNWRITABLE => Some(Refusal::Unwritable),
            _ => None,
        }
    }

    /// The last reading.
    pub fn reading(&self) -> Reading {
        self.lock().0.clone()
    }

    /// A caller met a refused write: refuse placements now, not at the next
    /// reading (which lifts it once Redis takes writes again).
    pub fn note_refused(&self, refusal: Refusal, error: &fred::error::Error) {
        let state = match refusal {
            Refusal::Memory => MEMORY,
            Refusal::Unwritable => UNWRITABLE,
        };
        if self.state.swap(state, Ordering::Relaxed) != state {
            tracing::warn!(%error, refusal = refusal.as_str(), "Redis refuses writes; new orders are refused until it takes them again.");
        }
        self.lock().0.refused = Some(error.details().to_string());
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (Reading, Option<Instant>)> {
        self.reading
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The marks for a node of `limit` bytes with `in_flight` orders.
    pub fn marks(&self, limit: u64, in_flight: u64) -> (u64, u64, u64) {
        let floor = self.options.floor.unwrap_or_else(|| default_floor(limit));
        let reserve = floor.saturating_add(in_flight.saturating_mul(self.options.per_order));
        let high = limit.saturating_sub(reserve);
        let hysteresis = self.options.hysteresis.unwrap_or(limit / 20);
        let low = high.saturating_sub(hysteresis);
        (reserve, high, low)
    }

    /// Takes one round's node figures (name, used, maxmemory, refused) and
    /// the orders in flight; moves the state with hysteresis.
    fn update(&self, nodes: Vec<NodeMemory>, in_flight: u64, now: Instant) {
        let mut worst: Option<Reading> = None;
        let mut refusing = false;
        let mut clear = true;
        let mut unwritable = None;
        // Without any limit, the fullest node is still shown.
        let mut unlimited: Option<(String, u64)> = None;
        for node in nodes {
            if let Some(why) = node.refused {
                unwritable = Some(why);
                continue;
            }
            let limit = self.options.limit.map_or(node.maxmemory, |l| {
                if node.maxmemory == 0 {
                    l
                } else {
                    l.min(node.maxmemory)
                }
            });
            if limit == 0 {
                if unlimited.as_ref().is_none_or(|(_, used)| node.used > *used) {
                    unlimited = Some((node.name, node.used));
                }
                continue;
            }
            let (reserve, high_water, low_water) = self.marks(limit, in_flight);
            refusing |= node.used >= high_water;
            clear &= node.used < low_water;
            let reading = Reading {
                node: node.name,
                used: node.used,
                limit,
                reserve,
                high_water,
                low_water,
                in_flight,
                growth_per_sec: 0.0,
                refused: None,
            };
            let room = |r: &Reading| r.high_water as i128 - r.used as i128;
            if worst.as_ref().is_none_or(|w| room(&reading) < room(w)) {
                worst = Some(reading);
            }
        }
        let mut held = self.lock();
        let (last, last_at) = &mut *held;
        let mut reading = worst.unwrap_or_else(|| {
            let (node, used) = unlimited.unwrap_or_default();
            Reading {
                node,
                used,
                in_flight,
                ..Reading::default()
            }
        });
        // Growth, smoothed: ~10 s at the default quarter-second round.
        if let Some(at) = *last_at {
            let dt = now.duration_since(at).as_secs_f64();
            if dt > 0.0 && last.node == reading.node && last.limit > 0 {
                let rate = (reading.used as f64 - last.used as f64) / dt;
                let alpha = (dt / 10.0).min(1.0);
                reading.growth_per_sec = last.growth_per_sec + alpha * (rate - last.growth_per_sec);
            }
        }
        reading.refused = unwritable.clone();
        let before = self.state.load(Ordering::Relaxed);
        let state = if unwritable.is_some() {
            UNWRITABLE
        } else if refusing || (before == MEMORY && !clear) {
            MEMORY
        } else {
            ACCEPTING
        };
        if state != before {
            match state {
                MEMORY => tracing::warn!(used = reading.used, high_water = reading.high_water,
                    limit = reading.limit, in_flight, node = %reading.node,
                    "Redis memory reached the high-water mark; new orders are refused, those in flight go on."),
                UNWRITABLE => tracing::warn!(refused = ?unwritable,
                    "Redis refuses writes; new orders are refused until it takes them again."),
                _ => tracing::info!(
                    used = reading.used,
                    low_water = reading.low_water,
                    "Redis takes new orders again."
                ),
            }
            metrics::counter!("lunchrush_capacity_transitions_total", "to" => state_name(state))
                .increment(1);
        }
        self.state.store(state, Ordering::Relaxed);
        *last = reading;
        *last_at = Some(now);
        publish(last, state);
    }
}

fn state_name(state: u8) -> &'static str {
    match state {
        MEMORY => "redis_memory",
        UNWRITABLE => "redis_unwritable",
        _ => "accepting",
    }
}

fn publish(reading: &Reading, state: u8) {
    metrics::gauge!("lunchrush_redis_memory_used_bytes").set(reading.used as f64);
    metrics::gauge!("lunchrush_redis_memory_limit_bytes").set(reading.limit as f64);
    metrics::gauge!("lunchrush_redis_memory_reserve_bytes").set(reading.reserve as f64);
    metrics::gauge!("lunchrush_redis_memory_high_water_bytes").set(reading.high_water as f64);
    metrics::gauge!("lunchrush_redis_memory_low_water_bytes").set(reading.low_water as f64);
    metrics::gauge!("lunchrush_orders_in_flight").set(reading.in_flight as f64);
    metrics::gauge!("lunchrush_redis_memory_to_high_water_seconds")
        .set(reading.to_high_water().unwrap_or(-1.0));
    for name in ["redis_memory", "redis_unwritable"] {
        let on = state_name(state) == name;
        metrics::gauge!("lunchrush_placements_refusing", "reason" => name).set(if on {
            1.0
        } else {
            0.0
        });
    }
}

/// One primary's figures in a round.
struct NodeMemory {
    name: String,
    used: u64,
    maxmemory: u64,
    /// Why it refuses writes, if it does.
    refused: Option<String>,
}

/// Parses the `INFO memory persistence replication` fields the budget needs.
fn node_memory(name: String, info: &str) -> NodeMemory {
    let field = |key: &str| {
        info.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
            .map(str::trim)
    };
    let number = |key: &str| field(key).and_then(|v| v.parse().ok()).unwrap_or(0);
    let refused = if field("aof_last_write_status") == Some("err") {
        Some("MISCONF: the last AOF write failed (a full disk?)".to_string())
    } else if field("rdb_last_bgsave_status") == Some("err") {
        // Refuses writes only with stop-writes-on-bgsave-error (the default).
        Some("MISCONF: the last snapshot failed (a full disk?)".to_string())
    } else if field("role") == Some("slave") {
        Some("READONLY: this node is a replica now".to_string())
    } else {
        None
    };
    NodeMemory {
        name,
        used: number("used_memory"),
        maxmemory: number("maxmemory"),
        refused,
    }
}

/// One reading: every primary's `INFO` and every partition's in-flight count.
pub async fn read_once(engine: &Engine) -> Result<(), fred::error::Error> {
    let mut nodes = Vec::new();
    for (name, node) in crate::store::nodes(engine.redis()) {
        let info: String = node
            .custom(
                fred::cmd!("INFO"),
                vec!["memory", "persistence", "replication"],
            )
            .await?;
        nodes.push(node_memory(name, &info));
    }
    let keys = engine.keys();
    let counts = (0..keys.partitions()).map(|p| {
        let key = keys.inflight(p);
        async move { engine.redis().zcard::<u64, _>(key).await }
    });
    let mut in_flight = 0;
    for count in futures::future::join_all(counts).await {
        in_flight += count?;
    }
    engine.budget().update(nodes, in_flight, Instant::now());
    Ok(())
}

/// Reads the budget every `watch_every` until `shutdown` turns true. Warns
/// once when no primary has a `maxmemory` (and no limit was given).
pub async fn watch(engine: Engine, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    let every = engine.budget().options.watch_every;
    let mut warned = false;
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !*shutdown.borrow() {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => break,
        }
        match tokio::time::timeout(every * 8, read_once(&engine)).await {
            Ok(Ok(())) => {
                let reading = engine.budget().reading();
                if reading.limit == 0 && reading.refused.is_none() && !warned {
                    warned = true;
                    tracing::warn!(
                        "Redis has no maxmemory and no --memory-limit was given: nothing stops it \
                         growing until the kernel kills it (while the archive is down, say). Give \
                         it a maxmemory; lunchrush then refuses new orders before it is reached."
                    );
                }
            }
            Ok(Err(error)) => {
                if let Some(refusal) = Refusal::of(&error) {
                    engine.budget().note_refused(refusal, &error);
                } else {
                    tracing::debug!(%error, "Memory budget not read this round.");
                }
            }
            Err(_) => tracing::debug!("Memory budget reading took too long this round."),
        }
    }
}

/// A size as Redis writes it: `1000`, `64k` (10^3), `64kb` (2^10), `m`,
/// `mb`, `g`, `gb`.
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let lower = text.trim().to_ascii_lowercase();
    let digits = lower.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let unit = &lower[digits.len()..];
    let scale: u64 = match unit {
        "" | "b" => 1,
        "k" => 1_000,
        "kb" => 1 << 10,
        "m" => 1_000_000,
        "mb" => 1 << 20,
        "g" => 1_000_000_000,
        "gb" => 1 << 30,
        other => return Err(format!("unknown unit {other:?}: use k, kb, m, mb, g or gb")),
    };
    let value: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a size (e.g. 512mb)"))?;
    value
        .checked_mul(scale)
        .ok_or_else(|| format!("{text:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(used: u64, maxmemory: u64) -> NodeMemory {
        NodeMemory {
            name: "redis".into(),
            used,
            maxmemory,
            refused: None,
        }
    }

    fn budget() -> MemoryBudget {
        MemoryBudget::new(BudgetOptions {
            floor: Some(100),
            per_order: 10,
            hysteresis: Some(50),
            ..BudgetOptions::default()
        })
    }

    /// Refused from the high-water mark, accepted again only below the low
    /// one; the reserve grows with the orders in flight.
    #[test]
    fn placements_stop_at_the_high_mark_and_resume_below_the_low_one() {
        let budget = budget();
        let now = Instant::now();
        // limit 1,000, 10 in flight: reserve 200, high 800, low 750.
        budget.update(vec![node(799, 1_000)], 10, now);
        assert_eq!(budget.refusal(), None);
        budget.update(vec![node(800, 1_000)], 10, now);
        assert_eq!(budget.refusal(), Some(Refusal::Memory));
        budget.update(vec![node(760, 1_000)], 10, now);
        assert_eq!(budget.refusal(), Some(Refusal::Memory), "between the marks");
        budget.update(vec![node(749, 1_000)], 10, now);
        assert_eq!(budget.refusal(), None);
        // 30 in flight: high 600.
        budget.update(vec![node(650, 1_000)], 30, now);
        assert_eq!(budget.refusal(), Some(Refusal::Memory));
        let reading = budget.reading();
        assert_eq!(
            (reading.reserve, reading.high_water, reading.low_water),
            (400, 600, 550)
        );
    }

    /// No maxmemory and no limit: no budget, never refused for memory.
    #[test]
    fn without_a_limit_nothing_is_refused() {
        let budget = budget();
        budget.update(vec![node(u64::MAX / 2, 0)], 1_000, Instant::now());
        assert_eq!(budget.refusal(), None);
        assert_eq!(budget.reading().used, u64::MAX / 2, "still shown");
        assert_eq!(budget.reading().to_high_water(), None);
    }

    /// A node that cannot persist refuses until its INFO says it can again.
    #[test]
    fn a_failed_aof_write_refuses_until_it_clears() {
        let budget = budget();
        let failing = node_memory(
            "redis".into(),
            "used_memory:10\r\nmaxmemory:1000\r\naof_last_write_status:err\r\nrole:master\r\n",
        );
        budget.update(vec![failing], 0, Instant::now());
        assert_eq!(budget.refusal(), Some(Refusal::Unwritable));
        let fine = node_memory(
            "redis".into(),
            "used_memory:10\r\nmaxmemory:1000\r\naof_last_write_status:ok\r\nrole:master\r\n",
        );
        budget.update(vec![fine], 0, Instant::now());
        assert_eq!(budget.refusal(), None);
    }

    #[test]
    fn sizes_read_as_redis_writes_them() {
        assert_eq!(parse_bytes("512mb"), Ok(512 << 20));
        assert_eq!(parse_bytes("64k"), Ok(64_000));
        assert_eq!(parse_bytes("1GB"), Ok(1 << 30));
        assert_eq!(parse_bytes("1000"), Ok(1000));
        assert!(parse_bytes("12tb").is_err());
        assert!(parse_bytes("mb").is_err());
    }

    #[test]
    fn refused_writes_are_told_apart() {
        let error =
            |text: &str| fred::error::Error::new(fred::error::ErrorKind::Unknown, text.to_string());
        let oom = error("OOM command not allowed when used memory > 'maxmemory'.");
        assert_eq!(Refusal::of(&oom), Some(Refusal::Memory));
        let misconf = error("MISCONF Errors writing to the AOF file: No space left on device");
        assert_eq!(Refusal::of(&misconf), Some(Refusal::Unwritable));
        let readonly = error("READONLY You can't write against a read only replica.");
        assert_eq!(Refusal::of(&readonly), Some(Refusal::Unwritable));
        assert_eq!(Refusal::of(&error("ERR something else")), None);
    }
}
