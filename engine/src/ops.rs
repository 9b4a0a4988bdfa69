//! What the operations console reads and steers on the Redis side: the saga
//! funnel, stuck sagas and the step they wait on, consumer-group lag, the
//! timer wheel, and the two operator queues (dead letters and parked
//! compensations). Every read is bounded; every change goes through the
//! same scripts and handlers as the workers and reconciliation.
//!
//! **Operator queues.** A dead letter stays in `{pN}:dead` until an operator
//! resolves it: the `operator` group acknowledges it (retried or resolved),
//! and the archiver trims nothing a group has not acknowledged. Parked
//! compensations are the `reconcile` group's, as `lunchrush reconcile`
//! retries them; the console acknowledges in the same group.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fred::prelude::*;
use serde::Serialize;

use crate::domain::{Order, OrderStatus, PaymentStatus, TimerKind};
use crate::engine::{Engine, EngineError};
use crate::keys::Topic;
use crate::saga::{self, PaymentAction};
use crate::streams;

/// The group that holds dead letters until an operator resolves them.
pub const DEAD_GROUP: &str = "operator";
/// The group that retries parked compensations (`lunchrush reconcile`).
pub const PARKED_GROUP: &str = "reconcile";
/// The operator groups, for `saga::ensure_groups`.
pub const GROUPS: [(&str, &[Topic]); 2] = [
    (DEAD_GROUP, &[Topic::Dead]),
    (PARKED_GROUP, &[Topic::Parked]),
];
/// Entries of an operator queue listed per partition at most.
pub const LETTERS_LISTED_MAX: u64 = 200;
/// In-flight orders whose state the funnel reads per partition at most (the
/// oldest first); the unsettled total is always exact.
pub const FUNNEL_SAMPLE_MAX: u64 = 500;
/// Overdue timers whose kind is read per partition at most.
const OVERDUE_SAMPLE_MAX: u64 = 1_000;
/// The consumer name the console delivers operator entries to.
const CONSOLE_CONSUMER: &str = "console";

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Unsettled orders by (status, payment) with the age of the oldest.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct FunnelRow {
    pub status: OrderStatus,
    pub pay: PaymentStatus,
    pub count: u64,
    pub oldest_age_ms: i64,
}

/// The saga funnel.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Funnel {
    /// Orders in the in-flight index (exact).
    pub unsettled: u64,
    /// Orders at rest waiting for retirement (exact).
    pub resting: u64,
    /// Unsettled orders whose state `rows` counts (the oldest per partition).
    pub sampled: u64,
    pub rows: Vec<FunnelRow>,
}

/// Reads the funnel: exact totals, states of the oldest unsettled orders.
pub async fn funnel(engine: &Engine) -> Result<Funnel, EngineError> {
    let keys = engine.keys();
    let now = now_ms();
    let mut funnel = Funnel::default();
    let mut rows: BTreeMap<(&str, &str), FunnelRow> = BTreeMap::new();
    for p in 0..keys.partitions() {
        funnel.unsettled += engine.redis().zcard::<u64, _>(keys.inflight(p)).await?;
        funnel.resting += engine.redis().zcard::<u64, _>(keys.resting(p)).await?;
        let ids: Vec<String> = engine
            .redis()
            .zrange(
                keys.inflight(p),
                0,
                FUNNEL_SAMPLE_MAX as i64 - 1,
                None,
                false,
                None,
                false,
            )
            .await?;
        let reads = ids
            .iter()
            .filter_map(|id| id.parse::<uuid::Uuid>().ok())
            .map(|id| async move {
                let fields: Vec<Option<String>> = engine
                    .redis()
                    .hmget(keys.order(p, &id), vec!["status", "pay", "created"])
                    .await?;
                Ok::<_, EngineError>(fields)
            });
        for fields in futures::future::try_join_all(reads).await? {
            let (Some(status), Some(pay)) = (
                fields[0].as_deref().and_then(OrderStatus::parse),
                fields[1].as_deref().and_then(PaymentStatus::parse),
            ) else {
                continue;
            };
            let created: i64 = fields[2]
                .as_deref()
                .and_then(|c| c.parse().ok())
                .unwrap_or(now);
            funnel.sampled += 1;
            let row = rows
                .entry((status.as_str(), pay.as_str()))
                .or_insert(FunnelRow {
                    status,
                    pay,
                    count: 0,
                    oldest_age_ms: 0,
                });
            row.count += 1;
            row.oldest_age_ms = row.oldest_age_ms.max(now - created);
        }
    }
    funnel.rows = rows.into_values().collect();
    Ok(funnel)
}

/// The step an unsettled order waits on, in words.
pub fn waiting_on(order: &Order) -> &'static str {
    match saga::payment_action(order) {
        Some(PaymentAction::Authorize) => "payment authorization",
        Some(PaymentAction::Capture) => "payment capture",
        Some(PaymentAction::Void) => "void of the authorization",
        Some(PaymentAction::Refund) => "refund",
        None if order.status == OrderStatus::Paid && order.decision.is_empty() => {
            "restaurant decision"
        }
        None => "its next event",
    }
}

/// An order unsettled longer than the operator's SLA.
#[derive(Debug, Clone, Serialize)]
pub struct Stuck {
    pub id: uuid::Uuid,
    pub status: OrderStatus,
    pub pay: PaymentStatus,
    pub decision: String,
    pub version: u64,
    pub customer: String,
    pub restaurant: String,
    pub total: i64,
    pub created_ms: i64,
    pub updated_ms: i64,
    pub waiting_on: &'static str,
}

impl Stuck {
    fn of(order: &Order) -> Self {
        Self {
            id: order.id,
            status: order.status,
            pay: order.pay,
            decision: order.decision.clone(),
            version: order.version,
            customer: order.customer.clone(),
            restaurant: order.restaurant.clone(),
            total: order.total,
            created_ms: order.created_ms,
            updated_ms: order.updated_ms,
            waiting_on: waiting_on(order),
        }
    }
}

/// Orders unchanged for longer than `older_than`, the longest-stuck first;
/// at most `limit`.
pub async fn stuck(
    engine: &Engine,
    older_than: Duration,
    limit: u64,
) -> Result<Vec<Stuck>, EngineError> {
    let cutoff = now_ms() - older_than.as_millis() as i64;
    let keys = engine.keys();
    let mut found = Vec::new();
    for p in 0..keys.partitions() {
        let ids: Vec<String> = engine
            .redis()
            .zrangebyscore(
                keys.inflight(p),
                "-inf",
                cutoff,
                false,
                Some((0, limit as i64)),
            )
            .await?;
        let ids: Vec<uuid::Uuid> = ids.iter().filter_map(|id| id.parse().ok()).collect();
        let orders = futures::future::try_join_all(ids.iter().map(|id| engine.order(id))).await?;
        found.extend(
            orders
                .into_iter()
                .flatten()
                .filter(|o| !crate::domain::is_allowed_pair(o.status, o.pay))
                .map(|o| Stuck::of(&o)),
        );
    }
    found.sort_by_key(|s| s.updated_ms);
    found.truncate(limit as usize);
    Ok(found)
}

/// One consumer group summed over partitions.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct GroupLag {
    pub group: String,
    pub topic: &'static str,
    /// Entries not yet delivered.
    pub lag: u64,
    /// Entries delivered, not yet acknowledged.
    pub pending: u64,
    /// The oldest entry the group has not acknowledged (ms since the epoch).
    pub oldest_ms: Option<i64>,
}

/// Lag and pending of every group on every topic.
pub async fn group_lags(engine: &Engine) -> Result<Vec<GroupLag>, EngineError> {
    let keys = engine.keys();
    let mut lags: BTreeMap<(String, &'static str), GroupLag> = BTreeMap::new();
    for p in 0..keys.partitions() {
        for topic in Topic::ALL {
            let stream = keys.stream(p, topic);
            for info in streams::group_infos(engine.redis(), &stream).await? {
                let oldest = oldest_unacknowledged(engine, &stream, &info).await?;
                let lag = lags
                    .entry((info.name.clone(), topic.as_str()))
                    .or_insert(GroupLag {
                        group: info.name.clone(),
                        topic: topic.as_str(),
                        lag: 0,
                        pending: 0,
                        oldest_ms: None,
                    });
                // Unknown lag (a rewound group) shows as none here; the
                // oldest unacknowledged entry below still tells its age.
                lag.lag += info.lag.unwrap_or(0);
                lag.pending += info.pending;
                lag.oldest_ms = earliest(lag.oldest_ms, oldest);
            }
        }
    }
    Ok(lags.into_values().collect())
}

/// What the archiver has yet to commit to PostgreSQL, over every stream.
#[derive(Debug, Clone, Copy, Serialize, Default, PartialEq)]
pub struct ArchiveBacklog {
    /// Entries not yet read by the archiver.
    pub lag_entries: u64,
    /// Entries read and not yet committed (acknowledged).
    pub pending_entries: u64,
    /// What those entries hold in Redis, estimated from each stream's
    /// `MEMORY USAGE` per entry.
    pub bytes: u64,
    /// The oldest of them (ms since the epoch).
    pub oldest_ms: Option<i64>,
}

/// The archive backlog: the `archiver` group's lag and pending on every
/// stream, their bytes and the age of the oldest. A stream with no backlog
/// costs one XINFO.
pub async fn archive_backlog(engine: &Engine) -> Result<ArchiveBacklog, EngineError> {
    let keys = engine.keys();
    let mut backlog = ArchiveBacklog::default();
    for p in 0..keys.partitions() {
        for topic in Topic::ALL {
            let stream = keys.stream(p, topic);
            let infos = streams::group_infos(engine.redis(), &stream).await?;
            let Some(info) = infos
                .iter()
                .find(|i| i.name == crate::retire::ARCHIVER_GROUP)
            else {
                continue;
            };
            let entries = info.lag.unwrap_or(0) + info.pending;
            if entries == 0 {
                continue;
            }
            backlog.lag_entries += info.lag.unwrap_or(0);
            backlog.pending_entries += info.pending;
            let oldest = oldest_unacknowledged(engine, &stream, info).await?;
            backlog.oldest_ms = earliest(backlog.oldest_ms, oldest);
            let length: u64 = engine.redis().xlen(stream.as_str()).await?;
            let usage: Option<u64> = engine
                .redis()
                .memory_usage(stream.as_str(), Some(5))
                .await?;
            if let (Some(usage), true) = (usage, length > 0) {
                backlog.bytes += usage * entries.min(length) / length;
            }
        }
    }
    Ok(backlog)
}

/// The earlier of two times, either of which may be unknown.
fn earliest(a: Option<i64>, b: Option<i64>) -> Option<i64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The time of the first entry `info`'s group has not acknowledged.
async fn oldest_unacknowledged(
    engine: &Engine,
    stream: &str,
    info: &streams::GroupInfo,
) -> Result<Option<i64>, EngineError> {
    if info.pending > 0 {
        let first = streams::pending(engine.redis(), stream, &info.name, 1).await?;
        return Ok(first
            .first()
            .and_then(|p| streams::parse_entry_id(&p.id))
            .map(|(ms, _)| ms));
    }
    if info.lag == Some(0) {
        return Ok(None);
    }
    let (ms, seq) = info.last_delivered;
    let next: Vec<(String, HashMap<String, String>)> = engine
        .redis()
        .xrange(stream, format!("({ms}-{seq}"), "+", Some(1))
        .await?;
    Ok(next
        .first()
        .and_then(|(id, _)| streams::parse_entry_id(id))
        .map(|(ms, _)| ms))
}

/// Timer wheel depth and what is overdue, by kind.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Timers {
    pub scheduled: u64,
    pub overdue: u64,
    /// Overdue timers by kind (of the oldest per partition).
    pub overdue_by_kind: BTreeMap<String, u64>,
    /// When the next timer is due (ms since the epoch).
    pub next_due_ms: Option<i64>,
}

/// Reads the timer wheels of every partition.
pub async fn timers(engine: &Engine) -> Result<Timers, EngineError> {
    let keys = engine.keys();
    let now = now_ms();
    let mut timers = Timers::default();
    for kind in TimerKind::ALL {
        timers.overdue_by_kind.insert(kind.as_str().to_string(), 0);
    }
    for p in 0..keys.partitions() {
        let wheel = keys.wheel(p);
        timers.scheduled += engine.redis().zcard::<u64, _>(&wheel).await?;
        timers.overdue += engine
            .redis()
            .zcount::<u64, _>(&wheel, f64::NEG_INFINITY, now as f64)
            .await?;
        let overdue: Vec<String> = engine
            .redis()
            .zrangebyscore(
                &wheel,
                "-inf",
                now,
                false,
                Some((0, OVERDUE_SAMPLE_MAX as i64)),
            )
            .await?;
        for member in overdue {
            let kind = member.split('|').next().unwrap_or_default().to_string();
            *timers.overdue_by_kind.entry(kind).or_default() += 1;
        }
        let next: Vec<(String, f64)> = engine
            .redis()
            .zrange(&wheel, 0, 0, None, false, None, true)
            .await?;
        if let Some((_, due)) = next.first() {
            let due = *due as i64;
            timers.next_due_ms = Some(timers.next_due_ms.map_or(due, |d| d.min(due)));
        }
    }
    Ok(timers)
}

/// The timers set for an order: (kind, due ms since the epoch).
pub async fn order_timers(
    engine: &Engine,
    order: &Order,
) -> Result<Vec<(TimerKind, i64)>, EngineError> {
    let wheel = engine.keys().wheel(order.partition);
    let mut set = Vec::new();
    for &kind in TimerKind::ALL {
        let due: Option<f64> = engine
            .redis()
            .zscore(&wheel, format!("{kind}|{}", order.id))
            .await?;
        if let Some(due) = due {
            set.push((kind, due as i64));
        }
    }
    Ok(set)
}

/// The two operator queues.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LetterKind {
    /// A poison entry: some group failed it `deliveries` times.
    Dead,
    /// A compensation (void, refund) that kept failing.
    Parked,
}

impl LetterKind {
    pub const ALL: [LetterKind; 2] = [LetterKind::Dead, LetterKind::Parked];

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "dead" => Some(LetterKind::Dead),
            "parked" => Some(LetterKind::Parked),
            _ => None,
        }
    }

    pub fn topic(self) -> Topic {
        match self {
            LetterKind::Dead => Topic::Dead,
            LetterKind::Parked => Topic::Parked,
        }
    }

    pub fn group(self) -> &'static str {
        match self {
            LetterKind::Dead => DEAD_GROUP,
            LetterKind::Parked => PARKED_GROUP,
        }
    }
}

/// One unresolved entry of an operator queue.
#[derive(Debug, Clone, Serialize)]
pub struct Letter {
    pub kind: LetterKind,
    pub partition: u16,
    pub id: String,
    pub at_ms: i64,
    /// The stream and entry the failing group read.
    pub source: String,
    pub source_id: String,
    /// The group that gave up on it.
    pub group: String,
    pub reason: String,
    /// For parked compensations: void or refund.
    pub action: Option<String>,
    /// How often the group tried (absent on entries from before it was kept).
    pub deliveries: Option<u64>,
    pub order: Option<uuid::Uuid>,
    /// The event type of the original entry.
    pub event: Option<String>,
    /// The original entry's fields.
    pub fields: BTreeMap<String, String>,
}

impl Letter {
    fn of(kind: LetterKind, partition: u16, id: &str, fields: HashMap<String, String>) -> Self {
        let original: BTreeMap<String, String> = fields
            .iter()
            .filter_map(|(k, v)| Some((k.strip_prefix("f.")?.to_string(), v.clone())))
            .collect();
        let get = |k: &str| fields.get(k).cloned().unwrap_or_default();
        Self {
            kind,
            partition,
            id: id.to_string(),
            at_ms: streams::parse_entry_id(id).map_or(0, |(ms, _)| ms),
            source: get("source"),
            source_id: get("source_id"),
            group: get("group"),
            reason: get("reason"),
            action: fields.get("action").cloned(),
            deliveries: fields.get("deliveries").and_then(|d| d.parse().ok()),
            order: original
                .get("order")
                .and_then(|o| o.parse().ok())
                .or_else(|| timer_order(original.get("data")?)),
            event: original.get("type").cloned(),
            fields: original,
        }
    }
}

/// The order a `TimerFired` entry names in its data (`o`): timer events
/// carry no order of their own.
fn timer_order(data: &str) -> Option<uuid::Uuid> {
    let data: serde_json::Value = serde_json::from_str(data).ok()?;
    data.get("o")?.as_str()?.parse().ok()
}

/// The unresolved entries of every operator queue, oldest first: those the
/// group holds pending and those it has not read yet.
pub async fn letters(engine: &Engine) -> Result<Vec<Letter>, EngineError> {
    let mut all = Vec::new();
    for kind in LetterKind::ALL {
        for p in 0..engine.keys().partitions() {
            all.extend(queue_letters(engine, kind, p).await?);
        }
    }
    all.sort_by(|a, b| a.at_ms.cmp(&b.at_ms).then_with(|| a.id.cmp(&b.id)));
    Ok(all)
}

async fn queue_letters(
    engine: &Engine,
    kind: LetterKind,
    p: u16,
) -> Result<Vec<Letter>, EngineError> {
    let stream = engine.keys().stream(p, kind.topic());
    let Some(info) = queue_group(engine, kind, &stream).await? else {
        return Ok(Vec::new());
    };
    let mut letters = Vec::new();
    for pending in
        streams::pending(engine.redis(), &stream, kind.group(), LETTERS_LISTED_MAX).await?
    {
        if let Some(fields) = streams::entry(engine.redis(), &stream, &pending.id).await? {
            letters.push(Letter::of(kind, p, &pending.id, fields));
        }
    }
    let (ms, seq) = info.last_delivered;
    let unread: Vec<(String, HashMap<String, String>)> = engine
        .redis()
        .xrange(
            &stream,
            format!("({ms}-{seq}"),
            "+",
            Some(LETTERS_LISTED_MAX),
        )
        .await?;
    letters.extend(
        unread
            .into_iter()
            .map(|(id, fields)| Letter::of(kind, p, &id, fields)),
    );
    Ok(letters)
}

/// The queue's group, created when missing (`None`: the stream is empty).
async fn queue_group(
    engine: &Engine,
    kind: LetterKind,
    stream: &str,
) -> Result<Option<streams::GroupInfo>, EngineError> {
    let find = |infos: Vec<streams::GroupInfo>| infos.into_iter().find(|g| g.name == kind.group());
    if let Some(info) = find(streams::group_infos(engine.redis(), stream).await?) {
        return Ok(Some(info));
    }
    let length: u64 = engine.redis().xlen(stream).await?;
    if length == 0 {
        return Ok(None);
    }
    saga::ensure_groups(engine, &GROUPS).await?;
    Ok(find(streams::group_infos(engine.redis(), stream).await?))
}

/// One unresolved entry of a queue (`None`: no such entry, or resolved).
pub async fn letter(
    engine: &Engine,
    kind: LetterKind,
    p: u16,
    id: &str,
) -> Result<Option<Letter>, EngineError> {
    if p >= engine.keys().partitions() || streams::parse_entry_id(id).is_none() {
        return Ok(None);
    }
    let stream = engine.keys().stream(p, kind.topic());
    let Some(info) = queue_group(engine, kind, &stream).await? else {
        return Ok(None);
    };
    let Some(fields) = streams::entry(engine.redis(), &stream, id).await? else {
        return Ok(None);
    };
    let group = kind.group();
    if !streams::unacknowledged(engine.redis(), &stream, group, info.last_delivered, id).await? {
        return Ok(None);
    }
    Ok(Some(Letter::of(kind, p, id, fields)))
}

/// Acknowledges an entry in its queue's group (delivering it first if the
/// group has not read it yet). Returns whether this call resolved it.
pub async fn resolve_letter(engine: &Engine, letter: &Letter) -> Result<bool, EngineError> {
    let stream = engine.keys().stream(letter.partition, letter.kind.topic());
    let group = letter.kind.group();
    let target = streams::parse_entry_id(&letter.id).unwrap_or((0, 0));
    // Deliver up to the entry; earlier unread ones stay pending, still listed.
    for _ in 0..LETTERS_LISTED_MAX {
        let info = queue_group(engine, letter.kind, &stream).await?;
        if info.is_none_or(|i| i.last_delivered >= target) {
            break;
        }
        let read = saga::read_group(
            engine.redis(),
            group,
            CONSOLE_CONSUMER,
            LETTERS_LISTED_MAX,
            vec![stream.clone()],
            vec![">"],
        )
        .await?;
        if read.iter().all(|(_, entries)| entries.is_empty()) {
            break;
        }
    }
    let acked: i64 = engine
        .redis()
        .xack(&stream, group, letter.id.as_str())
        .await?;
    Ok(acked == 1)
}
