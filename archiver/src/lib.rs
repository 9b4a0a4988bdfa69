//! The archiver: drains every lunchrush stream into PostgreSQL exactly once,
//! and only then lets the stream be trimmed.
//!
//! # Layout
//! - [`schema`]: the embedded `migrations/`, `migrate`, monthly partitions.
//! - [`project`]: folding an order's events into its projection rows.
//! - [`audit`]: the archive audit (every event once, projections = Redis).
//!
//! # How a batch is archived
//! One task reads the eight streams of every partition with one XREADGROUP
//! (group `archiver`) on standalone Redis; on a Cluster, one task per
//! partition reads its own. First its own pending entries (`0`: what a
//! crash or a failed transaction left), and only when none remain, new ones
//! (`>`). A batch is written in **one transaction**: binary COPY into a
//! staging table, `INSERT … SELECT … ON CONFLICT DO NOTHING` into
//! `saga_events` (re-archiving an entry changes nothing), the projections of
//! every order the batch touches refolded from the archive (an incremental
//! path exists but is switched off until it passes chaos), and the
//! per-stream watermark advanced. Only after COMMIT are the entries XACKed.
//! PostgreSQL being down fails the transaction: nothing is acknowledged, the
//! entries stay pending in Redis, and the task retries with backoff.
//!
//! # Trimming
//! A stream is trimmed with `XTRIM MINID` to the lowest id not yet
//! acknowledged by *every* group on it (first pending entry, or the entry
//! after last-delivered), and never past the archive watermark. Never MAXLEN.
//!
//! **Invariant:** an entry leaves Redis only after it is committed to
//! PostgreSQL and every consumer group acknowledged it.

pub mod audit;
pub mod project;
pub mod repair;
pub mod schema;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use engine::Engine;
use engine::events::Event;
use engine::keys::Topic;
use fred::prelude::*;
use serde_json::{Value, json};
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{Json, Type};
use uuid::Uuid;

use crate::project::{Archived, OrderRow, fold};

/// The archiver's consumer group on every stream.
pub const GROUP: &str = engine::retire::ARCHIVER_GROUP;
/// Reconciliation's group on the `parked` streams: parked compensations stay
/// in Redis until reconciliation has dealt with them.
pub const RECONCILE_GROUP: &str = engine::ops::PARKED_GROUP;
/// `drain` reads at most this many rounds (of a batch per partition each).
pub const DRAIN_ROUNDS_MAX: usize = 1_000;

/// Tuning, every bound named.
#[derive(Debug, Clone)]
pub struct ArchiverOptions {
    /// This archiver's consumer name; keep it stable across restarts so a
    /// restarted archiver re-reads its own pending entries first.
    pub consumer: String,
    /// Entries per XREADGROUP (per partition; a batch is at most this).
    pub batch_size: u64,
    /// Batches written to PostgreSQL at once (bounds connections and memory:
    /// batch_size × batches × ~300 bytes).
    pub batches_in_flight_max: usize,
    /// Longest sleep of an idle partition task.
    pub idle_poll_max: Duration,
    /// Longest backoff while PostgreSQL or Redis fails.
    pub backoff_max: Duration,
    /// How often each partition's streams are trimmed.
    pub trim_every: Duration,
    /// Pending entries of other (dead) archivers idle this long are taken over.
    pub reclaim_idle: Duration,
    /// A stream whose archive lag exceeds this many entries is warned about.
    pub lag_warn_entries: u64,
}

impl ArchiverOptions {
    pub fn new(consumer: impl Into<String>) -> Self {
        Self {
            consumer: consumer.into(),
            batch_size: 1_000,
            batches_in_flight_max: 4,
            idle_poll_max: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            trim_every: Duration::from_secs(1),
            reclaim_idle: Duration::from_secs(30),
            lag_warn_entries: 100_000,
        }
    }
}

/// Why a batch was not archived (it stays pending and is retried).
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("redis: {0}")]
    Redis(#[from] fred::error::Error),
    #[error("postgres: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    #[error("postgres pool: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
}

/// A stream entry as read.
#[derive(Debug, Clone)]
struct Entry {
    stream: String,
    id: String,
    fields: HashMap<String, String>,
}

pub use engine::streams::parse_entry_id;

/// The partition time of an order's events (see `engine::ids::created_at`).
pub fn uuid_time(id: &Uuid) -> SystemTime {
    engine::ids::created_at(id)
}

fn ms_time(ms: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64)
}

/// The streams of one partition the archiver drains.
fn partition_streams(engine: &Engine, p: u16) -> Vec<String> {
    Topic::ALL
        .iter()
        .map(|topic| engine.keys().stream(p, *topic))
        .collect()
}

fn is_dead_letter_stream(stream: &str) -> bool {
    stream.ends_with(":dead") || stream.ends_with(":parked")
}

/// The archiver of one process.
#[derive(Clone)]
pub struct Archiver {
    engine: Engine,
    pool: deadpool_postgres::Pool,
    options: ArchiverOptions,
    permits: Arc<tokio::sync::Semaphore>,
    months: Arc<std::sync::Mutex<HashSet<(i32, u32)>>>,
}

impl Archiver {
    pub fn new(engine: Engine, pool: deadpool_postgres::Pool, options: ArchiverOptions) -> Self {
        Self {
            permits: Arc::new(tokio::sync::Semaphore::new(options.batches_in_flight_max)),
            engine,
            pool,
            options,
            months: Arc::new(std::sync::Mutex::new(HashSet::new())),
        }
    }

    /// Creates the consumer groups, and reports streams that are behind
    /// their archive (a Redis restart lost a tail). Returns the lost streams.
    pub async fn prepare(&self) -> Result<Vec<String>, ArchiveError> {
        self.ensure_groups().await?;
        self.check_tails().await
    }

    async fn ensure_groups(&self) -> Result<(), ArchiveError> {
        engine::saga::ensure_groups(
            &self.engine,
            &[
                (GROUP, &Topic::ALL),
                engine::ops::GROUPS[0],
                engine::ops::GROUPS[1],
            ],
        )
        .await
        .map_err(|e| match e {
            engine::EngineError::Redis(e) => ArchiveError::Redis(e),
            other => ArchiveError::Redis(fred::error::Error::new(
                fred::error::ErrorKind::Unknown,
                other.to_string(),
            )),
        })
    }

    /// Compares each stream's last generated id with its archive watermark.
    pub async fn check_tails(&self) -> Result<Vec<String>, ArchiveError> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                "SELECT stream, entry_ms, entry_seq FROM archive_watermarks",
                &[],
            )
            .await?;
        let mut lost = Vec::new();
        for row in rows {
            let stream: String = row.get(0);
            if !stream.starts_with(self.engine.keys().prefix()) {
                continue;
            }
            let watermark: (i64, i64) = (row.get(1), row.get(2));
            let last = self.last_generated_id(&stream).await?;
            if last < watermark {
                let detail = format!(
                    "stream {stream} ends at {}-{} but the archive holds up to {}-{}: \
                     Redis lost a tail; run `lunchrush reconcile`",
                    last.0, last.1, watermark.0, watermark.1
                );
                tracing::error!(%stream, "{detail}");
                metrics::counter!("lunchrush_archive_tail_lost_total").increment(1);
                client
                    .execute(
                        "INSERT INTO archive_incidents (stream, kind, detail) VALUES ($1, 'tail_lost', $2)",
                        &[&stream, &detail],
                    )
                    .await?;
                lost.push(stream);
            }
        }
        Ok(lost)
    }

    async fn last_generated_id(&self, stream: &str) -> Result<(i64, i64), ArchiveError> {
        let exists: i64 = self.engine.redis().exists(stream).await?;
        if exists == 0 {
            return Ok((0, 0));
        }
        let info: Value = self
            .engine
            .redis()
            .xinfo_stream::<fred::types::Value, _>(stream, false, None)
            .await
            .map(|v| pairs_of(&v))?;
        let last = info
            .get("last-generated-id")
            .and_then(Value::as_str)
            .and_then(parse_entry_id)
            .unwrap_or((0, 0));
        Ok(last)
    }

    /// The partitions one reader covers together. On standalone Redis one
    /// reader takes every partition in one XREADGROUP, so a batch (one
    /// transaction) carries what all of them wrote; on a Cluster each
    /// partition's streams live in their own slot and get their own reader.
    fn shards(&self) -> Vec<Vec<u16>> {
        let partitions = 0..self.engine.keys().partitions();
        if self.engine.redis().is_clustered() {
            partitions.map(|p| vec![p]).collect()
        } else {
            vec![partitions.collect()]
        }
    }

    /// Runs one task per shard (see [`Archiver::shards`]) until `shutdown`
    /// turns true.
    pub async fn run(self, shutdown: tokio::sync::watch::Receiver<bool>) {
        let tasks: Vec<_> = self
            .shards()
            .into_iter()
            .map(|partitions| {
                let this = self.clone();
                let shutdown = shutdown.clone();
                tokio::spawn(async move { this.run_shard(&partitions, shutdown).await })
            })
            .collect();
        for task in tasks {
            let _ = task.await;
        }
    }

    async fn run_shard(
        &self,
        partitions: &[u16],
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut idle = Duration::from_millis(1);
        let mut backoff = Duration::from_millis(50);
        let mut last_trim = Instant::now();
        let mut last_reclaim = Instant::now();
        while !*shutdown.borrow() {
            let pause = match self.step_partitions(partitions).await {
                Ok(0) => {
                    idle = (idle * 2).min(self.options.idle_poll_max);
                    backoff = Duration::from_millis(50);
                    idle
                }
                Ok(_) => {
                    idle = Duration::from_millis(1);
                    backoff = Duration::from_millis(50);
                    Duration::ZERO
                }
                Err(error) => {
                    metrics::counter!("lunchrush_archive_failures_total").increment(1);
                    tracing::warn!(?partitions, %error, backoff_ms = backoff.as_millis() as u64,
                        "Archive batch failed; its entries stay pending in Redis.");
                    if error.to_string().contains("NOGROUP") {
                        let _ = self.ensure_groups().await;
                    }
                    let pause = backoff;
                    backoff = (backoff * 2).min(self.options.backoff_max);
                    pause
                }
            };
            if last_trim.elapsed() >= self.options.trim_every {
                last_trim = Instant::now();
                for &p in partitions {
                    if let Err(error) = self.trim_partition(p).await {
                        tracing::warn!(partition = p, %error, "Trim failed; will retry.");
                    }
                }
            }
            if last_reclaim.elapsed() >= self.options.reclaim_idle {
                last_reclaim = Instant::now();
                for &p in partitions {
                    if let Err(error) = self.reclaim(p).await {
                        tracing::warn!(partition = p, %error, "Reclaim failed; will retry.");
                    }
                }
            }
            if !pause.is_zero() {
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = shutdown.changed() => {}
                }
            }
        }
    }

    /// Archives every partition until nothing is left (tests, tools), or
    /// for [`DRAIN_ROUNDS_MAX`] rounds beside live traffic, which never
    /// leaves nothing: what remains is the live archiver's.
    pub async fn drain(&self) -> Result<u64, ArchiveError> {
        let mut total = 0;
        for _ in 0..DRAIN_ROUNDS_MAX {
            let mut round = 0;
            for partitions in self.shards() {
                round += self.step_partitions(&partitions).await?;
            }
            total += round as u64;
            if round == 0 {
                return Ok(total);
            }
        }
        Ok(total)
    }

    /// Trims every partition's streams as far as is safe; returns entries removed.
    pub async fn trim_all(&self) -> Result<u64, ArchiveError> {
        let mut removed = 0;
        for p in 0..self.engine.keys().partitions() {
            removed += self.trim_partition(p).await?;
        }
        Ok(removed)
    }

    /// One batch of one partition: pending entries first, else new ones.
    pub async fn step(&self, p: u16) -> Result<usize, ArchiveError> {
        self.step_partitions(&[p]).await
    }

    /// One batch over `partitions` (one XREADGROUP, one transaction):
    /// pending entries first, else new ones.
    pub async fn step_partitions(&self, partitions: &[u16]) -> Result<usize, ArchiveError> {
        let mut entries = self.read(partitions, "0").await?;
        if entries.is_empty() {
            entries = self.read(partitions, ">").await?;
        }
        if entries.is_empty() {
            return Ok(0);
        }
        let _permit = self
            .permits
            .acquire()
            .await
            .expect("the semaphore is never closed");
        let started = Instant::now();
        // Incremental projection disagreed with Redis under a chaos run
        // (being investigated): refold until it is proven.
        let resting = self.write_batch(&entries, Projection::Refold).await?;
        let mut by_stream: HashMap<&str, Vec<&str>> = HashMap::new();
        for entry in &entries {
            by_stream.entry(&entry.stream).or_default().push(&entry.id);
        }
        for (stream, ids) in by_stream {
            let ids: Vec<String> = ids.into_iter().map(str::to_string).collect();
            let _: i64 = self.engine.redis().xack(stream, GROUP, ids).await?;
        }
        self.mark_resting(&resting).await?;
        metrics::counter!("lunchrush_archived_events_total").increment(entries.len() as u64);
        metrics::histogram!("lunchrush_archive_batch_seconds")
            .record(started.elapsed().as_secs_f64());
        Ok(entries.len())
    }

    async fn read(&self, partitions: &[u16], id: &str) -> Result<Vec<Entry>, ArchiveError> {
        let streams: Vec<String> = partitions
            .iter()
            .flat_map(|&p| partition_streams(&self.engine, p))
            .collect();
        let ids: Vec<&str> = streams.iter().map(|_| id).collect();
        let page = engine::saga::read_group(
            self.engine.redis(),
            GROUP,
            &self.options.consumer,
            self.options.batch_size,
            streams,
            ids,
        )
        .await?;
        let mut entries = Vec::new();
        for (stream, values) in page {
            for (id, fields) in values {
                // A pending entry trimmed meanwhile comes back without fields.
                entries.push(Entry {
                    stream: stream.clone(),
                    id,
                    fields,
                });
            }
        }
        Ok(entries)
    }

    /// Re-archives one order's events from the live streams (its entry ids
    /// are on the order) and refolds its projection. Idempotent. Returns
    /// how many of its entries were still in Redis.
    pub async fn rearchive_order(
        &self,
        order: &engine::domain::Order,
    ) -> Result<usize, ArchiveError> {
        let mut entries = Vec::new();
        for (stream, id) in &order.events {
            let found: Vec<(String, HashMap<String, String>)> = self
                .engine
                .redis()
                .xrange(stream.as_str(), id.as_str(), id.as_str(), Some(1))
                .await?;
            entries.extend(found.into_iter().map(|(id, fields)| Entry {
                stream: stream.clone(),
                id,
                fields,
            }));
        }
        if !entries.is_empty() {
            self.write_batch(&entries, Projection::Refold).await?;
        }
        Ok(entries.len())
    }

    /// Takes over entries other archivers left pending too long.
    pub async fn reclaim(&self, p: u16) -> Result<(), ArchiveError> {
        for stream in partition_streams(&self.engine, p) {
            let _: fred::types::Value = self
                .engine
                .redis()
                .xautoclaim(
                    stream.as_str(),
                    GROUP,
                    self.options.consumer.as_str(),
                    self.options.reclaim_idle.as_millis() as u64,
                    "0-0",
                    Some(self.options.batch_size),
                    true,
                )
                .await?;
        }
        Ok(())
    }

    /// Adds the orders a committed and acknowledged batch left at a final
    /// pair to their partition's resting index: the retirer's candidates
    /// (`engine::retire`). Re-adding one is harmless: the retire script
    /// re-checks everything.
    async fn mark_resting(&self, resting: &[(Uuid, i64)]) -> Result<(), ArchiveError> {
        let keys = self.engine.keys();
        let mut by_partition: HashMap<u16, Vec<(f64, String)>> = HashMap::new();
        for (id, at) in resting {
            if let Some(p) = keys.partition_of_order(id) {
                by_partition
                    .entry(p)
                    .or_default()
                    .push((*at as f64, id.to_string()));
            }
        }
        for (p, members) in by_partition {
            let _: i64 = self
                .engine
                .redis()
                .zadd(keys.resting(p), None, None, false, false, members)
                .await?;
        }
        Ok(())
    }

    /// Writes one batch in one transaction (see the crate docs); returns the
    /// orders it left at a final pair, with the time they came to rest.
    async fn write_batch(
        &self,
        entries: &[Entry],
        projection: Projection,
    ) -> Result<Vec<(Uuid, i64)>, ArchiveError> {
        let mut events = Vec::with_capacity(entries.len());
        let mut dead = Vec::new();
        for entry in entries {
            if entry.fields.is_empty() {
                continue;
            }
            if is_dead_letter_stream(&entry.stream) {
                dead.push(entry);
                continue;
            }
            match Event::parse(&entry.stream, &entry.id, entry.fields.clone()) {
                Ok(event) => events.push(event),
                Err(error) => {
                    tracing::error!(stream = %entry.stream, id = %entry.id, %error,
                        "Malformed stream entry archived as a dead letter.");
                    dead.push(entry);
                }
            }
        }
        self.ensure_months(&events).await?;
        let mut client = self.pool.get().await?;
        client
            .batch_execute(
                // The table exists after the connection's first batch: no
                // NOTICE saying so on every batch (they reach the log).
                "SET client_min_messages TO warning; \
                 CREATE TEMP TABLE IF NOT EXISTS archive_staging \
                 (LIKE saga_events INCLUDING DEFAULTS) ON COMMIT DELETE ROWS",
            )
            .await?;
        let transaction = client.transaction().await?;
        let tx = &transaction;
        // Each payload is parsed once, here, for the COPY and every projection.
        let payloads: Vec<Value> = events
            .iter()
            .map(|e| serde_json::from_str(&e.data).unwrap_or_else(|_| json!({"raw": e.data})))
            .collect();
        copy_events(tx, &events, &payloads).await?;
        execute(
            tx,
            "INSERT INTO saga_events (stream, entry_id, entry_ms, entry_seq, order_id, saga_id, seq, \
             type, schema_version, payload, event_time, part_time) \
             SELECT stream, entry_id, entry_ms, entry_seq, order_id, saga_id, seq, type, \
             schema_version, payload, event_time, part_time FROM archive_staging \
             ON CONFLICT DO NOTHING",
            &[],
        )
        .await?;
        insert_dead_letters(tx, &dead).await?;
        insert_menu_history(tx, &events, &payloads).await?;
        insert_delayed_task_history(tx, &events, &payloads).await?;
        insert_order_items(tx, &events, &payloads).await?;
        let resting = refold_orders(tx, &events, &payloads, projection).await?;
        advance_watermarks(tx, entries).await?;
        transaction.commit().await?;
        Ok(resting)
    }

    /// Creates the monthly partitions the batch needs (cached per process).
    async fn ensure_months(&self, events: &[Event]) -> Result<(), ArchiveError> {
        let mut needed = BTreeSet::new();
        for event in events {
            let time = part_time(event);
            let days = time
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs()
                / 86_400;
            let (year, month) = civil_month(days as i64);
            needed.insert((year, month));
        }
        let missing: Vec<(i32, u32)> = {
            let known = self.months.lock().unwrap_or_else(|e| e.into_inner());
            needed.into_iter().filter(|m| !known.contains(m)).collect()
        };
        if missing.is_empty() {
            return Ok(());
        }
        let client = self.pool.get().await?;
        for (year, month) in missing {
            schema::ensure_month(&client, year, month).await?;
            self.months
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert((year, month));
        }
        Ok(())
    }

    /// Trims one partition's streams to what every group acknowledged and
    /// the archive holds; returns the entries removed.
    pub async fn trim_partition(&self, p: u16) -> Result<u64, ArchiveError> {
        let client = self.pool.get().await?;
        let mut removed = 0u64;
        for stream in partition_streams(&self.engine, p) {
            let length: u64 = self.engine.redis().xlen(stream.as_str()).await?;
            if length == 0 {
                continue;
            }
            let Some(bound) = self.trim_bound(&client, &stream).await? else {
                continue;
            };
            let trimmed: u64 = self
                .engine
                .redis()
                .custom(
                    fred::cmd!("XTRIM"),
                    vec![
                        stream.clone(),
                        "MINID".into(),
                        format!("{}-{}", bound.0, bound.1),
                    ],
                )
                .await?;
            removed += trimmed;
            if let Some(lag) = self.archive_lag(&stream).await?
                && lag > self.options.lag_warn_entries
            {
                tracing::warn!(%stream, lag, "Archive lags behind the stream; the online path keeps running.");
            }
        }
        if removed > 0 {
            metrics::counter!("lunchrush_stream_trimmed_entries_total").increment(removed);
        }
        Ok(removed)
    }

    /// The lowest id some group has not acknowledged, capped by the archive
    /// watermark: entries strictly below it may go.
    async fn trim_bound(
        &self,
        client: &deadpool_postgres::Object,
        stream: &str,
    ) -> Result<Option<(i64, i64)>, ArchiveError> {
        let groups = self.groups(stream).await?;
        if !groups.iter().any(|g| g.name == GROUP) {
            return Ok(None);
        }
        let mut bound: Option<(i64, i64)> = None;
        for group in groups {
            let group_bound = if group.pending > 0 {
                let summary: Value = self
                    .engine
                    .redis()
                    .custom::<fred::types::Value, _>(
                        fred::cmd!("XPENDING"),
                        vec![stream.to_string(), group.name.clone()],
                    )
                    .await
                    .map(|v| json_of(&v))?;
                summary
                    .get(1)
                    .and_then(Value::as_str)
                    .and_then(parse_entry_id)
                    .unwrap_or((0, 0))
            } else {
                let (ms, seq) = group.last_delivered;
                (ms, seq + 1)
            };
            bound = Some(bound.map_or(group_bound, |b| b.min(group_bound)));
        }
        let watermark = client
            .query_opt(
                "SELECT entry_ms, entry_seq FROM archive_watermarks WHERE stream = $1",
                &[&stream],
            )
            .await?
            .map(|row| (row.get::<_, i64>(0), row.get::<_, i64>(1) + 1))
            .unwrap_or((0, 0));
        Ok(bound.map(|b| b.min(watermark)).filter(|b| *b > (0, 0)))
    }

    /// Entries of `stream` the archiver has not read yet (XINFO GROUPS lag).
    async fn archive_lag(&self, stream: &str) -> Result<Option<u64>, ArchiveError> {
        Ok(self
            .groups(stream)
            .await?
            .into_iter()
            .find(|g| g.name == GROUP)
            .map(|g| g.lag))
    }

    async fn groups(&self, stream: &str) -> Result<Vec<GroupInfo>, ArchiveError> {
        group_infos(self.engine.redis(), stream).await
    }
}

/// The consumer groups of a stream (XINFO GROUPS), parsed.
pub(crate) async fn group_infos(
    redis: &Client,
    stream: &str,
) -> Result<Vec<GroupInfo>, ArchiveError> {
    Ok(engine::streams::group_infos(redis, stream).await?)
}

/// The last entry id of `stream` delivered to the archiver group ((0, 0) if none).
pub(crate) async fn archiver_last_delivered(
    redis: &Client,
    stream: &str,
) -> Result<(i64, i64), ArchiveError> {
    Ok(group_infos(redis, stream)
        .await?
        .into_iter()
        .find(|g| g.name == GROUP)
        .map(|g| g.last_delivered)
        .unwrap_or((0, 0)))
}

pub(crate) use engine::streams::GroupInfo;

/// A fred value as JSON; arrays stay arrays.
fn json_of(value: &fred::types::Value) -> Value {
    use fred::types::Value as V;
    match value {
        V::Null => Value::Null,
        V::Integer(i) => json!(i),
        V::Double(d) => json!(d),
        V::Boolean(b) => json!(b),
        V::String(s) => json!(s.to_string()),
        V::Bytes(b) => json!(String::from_utf8_lossy(b)),
        V::Array(items) => Value::Array(items.iter().map(json_of).collect()),
        V::Map(map) => Value::Object(
            map.clone()
                .inner()
                .iter()
                .map(|(k, v)| (k.as_str_lossy().to_string(), json_of(v)))
                .collect(),
        ),
        other => json!(format!("{other:?}")),
    }
}

/// A reply that is a flat `[key, value, key, value, …]` array (RESP2) or a
/// map (RESP3), as a JSON object.
fn pairs_of(value: &fred::types::Value) -> Value {
    match json_of(value) {
        Value::Array(items) => Value::Object(
            items
                .chunks(2)
                .filter_map(|pair| {
                    Some((pair.first()?.as_str()?.to_string(), pair.get(1)?.clone()))
                })
                .collect(),
        ),
        other => other,
    }
}

/// The partition time of an event (see `migrations/V2__archive.sql`).
fn part_time(event: &Event) -> SystemTime {
    match event.order_id() {
        Some(order) => uuid_time(&order),
        None => ms_time(
            parse_entry_id(&event.id)
                .map(|(ms, _)| ms)
                .unwrap_or(event.ts_ms),
        ),
    }
}

/// (year, month) of a day count since 1970-01-01 (proleptic Gregorian).
pub fn civil_month(days: i64) -> (i32, u32) {
    // Howard Hinnant's days_from_civil inverse.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = (yoe + era * 400 + i64::from(month <= 2)) as i32;
    (year, month)
}

async fn copy_events(
    tx: &Tx<'_>,
    events: &[Event],
    payloads: &[Value],
) -> Result<(), ArchiveError> {
    if events.is_empty() {
        return Ok(());
    }
    let sink = tx
        .copy_in(
            "COPY archive_staging (stream, entry_id, entry_ms, entry_seq, order_id, saga_id, seq, \
             type, schema_version, payload, event_time, part_time) FROM STDIN BINARY",
        )
        .await?;
    let types = [
        Type::TEXT,
        Type::TEXT,
        Type::INT8,
        Type::INT8,
        Type::UUID,
        Type::UUID,
        Type::INT8,
        Type::TEXT,
        Type::INT4,
        Type::JSONB,
        Type::TIMESTAMPTZ,
        Type::TIMESTAMPTZ,
    ];
    let writer = BinaryCopyInWriter::new(sink, &types);
    futures::pin_mut!(writer);
    for (event, payload) in events.iter().zip(payloads) {
        let (ms, seq) = parse_entry_id(&event.id).unwrap_or((0, 0));
        let order: Option<Uuid> = event.order_id();
        let saga: Option<Uuid> = event.saga.parse().ok();
        writer
            .as_mut()
            .write(&[
                &event.stream,
                &event.id,
                &ms,
                &seq,
                &order,
                &saga,
                &(event.seq as i64),
                &event.kind,
                &(event.version as i32),
                &Json(payload),
                &ms_time(event.ts_ms),
                &part_time(event),
            ])
            .await?;
    }
    writer.finish().await?;
    Ok(())
}

async fn insert_dead_letters(tx: &Tx<'_>, dead: &[&Entry]) -> Result<(), ArchiveError> {
    for entry in dead {
        let field = |k: &str| entry.fields.get(k).cloned();
        let fields = json!(entry.fields);
        execute(tx,
            "INSERT INTO dead_letters (stream, entry_id, source, source_id, group_name, reason, action, fields) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING",
            &[
                &entry.stream,
                &entry.id,
                &field("source"),
                &field("source_id"),
                &field("group"),
                &field("reason"),
                &field("action"),
                &Json(&fields),
            ],
        )
        .await?;
    }
    Ok(())
}

async fn insert_menu_history(
    tx: &Tx<'_>,
    events: &[Event],
    payloads: &[Value],
) -> Result<(), ArchiveError> {
    for (event, data) in events.iter().zip(payloads) {
        let text = |k: &str| data.get(k).and_then(Value::as_str).map(str::to_string);
        let number = |k: &str| data.get(k).and_then(Value::as_i64);
        let flag = |k: &str| data.get(k).and_then(Value::as_bool);
        let at = ms_time(event.ts_ms);
        let seq = event.seq as i64;
        match event.kind.as_str() {
            "RestaurantUpserted" => {
                execute(tx,
                    "INSERT INTO restaurant_history (restaurant_id, seq, name, open, auto_approve, at) \
                     VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
                    &[&text("r"), &seq, &text("name"), &flag("open"), &flag("auto"), &at],
                )
                .await?;
            }
            "MenuItemUpserted" => {
                execute(tx,
                    "INSERT INTO menu_item_history (restaurant_id, seq, item, name, price, stock, delta, \
                     available, max_per_customer, at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
                     ON CONFLICT DO NOTHING",
                    &[
                        &text("r"),
                        &seq,
                        &text("i"),
                        &text("name"),
                        &number("price"),
                        &number("stock"),
                        &number("delta"),
                        &flag("available"),
                        &number("max_pc"),
                        &at,
                    ],
                )
                .await?;
            }
            _ => {}
        }
    }
    Ok(())
}

/// `timer_history` from TimerFired, `notifications` from NotificationSent.
async fn insert_delayed_task_history(
    tx: &Tx<'_>,
    events: &[Event],
    payloads: &[Value],
) -> Result<(), ArchiveError> {
    for (event, data) in events.iter().zip(payloads) {
        let text = |k: &str| data.get(k).and_then(Value::as_str).map(str::to_string);
        let number = |k: &str| data.get(k).and_then(Value::as_i64);
        match event.kind.as_str() {
            "TimerFired" => {
                let (Some(order), Some(kind), Some(due), Some(fired)) = (
                    text("o").and_then(|o| o.parse::<Uuid>().ok()),
                    text("k"),
                    number("due"),
                    number("fired"),
                ) else {
                    continue;
                };
                execute(tx,
                    "INSERT INTO timer_history (order_id, kind, due_at, fired_at, lateness_ms, outcome) \
                     VALUES ($1, $2, $3, $4, $5, 'fired') ON CONFLICT DO NOTHING",
                    &[&order, &kind, &ms_time(due), &ms_time(fired), &(fired - due).max(0)],
                )
                .await?;
            }
            "NotificationSent" => {
                let Some(order) = event.order_id() else {
                    continue;
                };
                execute(tx,
                    "INSERT INTO notifications (order_id, kind, idempotency_key, channel, attempts, sent_at) \
                     VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
                    &[
                        &order,
                        &text("kind").unwrap_or_default(),
                        &text("key").unwrap_or_default(),
                        &text("channel").unwrap_or_default(),
                        &(number("attempts").unwrap_or(1) as i32),
                        &ms_time(event.ts_ms),
                    ],
                )
                .await?;
            }
            _ => {}
        }
    }
    Ok(())
}

async fn insert_order_items(
    tx: &Tx<'_>,
    events: &[Event],
    payloads: &[Value],
) -> Result<(), ArchiveError> {
    let (mut orders, mut items, mut qtys, mut prices) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (event, data) in events
        .iter()
        .zip(payloads)
        .filter(|(e, _)| e.kind == "OrderPlaced")
    {
        let Some(order) = event.order_id() else {
            continue;
        };
        for line in data
            .get("l")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let (Some(item), Some(qty), Some(price)) = (
                line.get(0).and_then(Value::as_str),
                line.get(1).and_then(Value::as_i64),
                line.get(2).and_then(Value::as_i64),
            ) else {
                continue;
            };
            orders.push(order);
            items.push(item.to_string());
            qtys.push(qty as i32);
            prices.push(price);
        }
    }
    if orders.is_empty() {
        return Ok(());
    }
    execute(tx,
        "INSERT INTO order_items (order_id, item, qty, price) \
         SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::int4[], $4::int8[]) ON CONFLICT DO NOTHING",
        &[&orders, &items, &qtys, &prices],
    )
    .await?;
    Ok(())
}

/// Brings the projection of every order the batch touched up to date;
/// returns those now at a final pair, with their last change (ms).
///
/// Incremental: when an order's events in the batch continue its complete
/// projection row (or start it at seq 1) without a gap, they are applied on
/// top of the row; only an order whose events arrived out of order (or
/// whose row has a gap) is refolded from its whole archived history.
async fn refold_orders(
    tx: &Tx<'_>,
    events: &[Event],
    payloads: &[Value],
    projection: Projection,
) -> Result<Vec<(Uuid, i64)>, ArchiveError> {
    let mut batch: BTreeMap<Uuid, Vec<Archived>> = BTreeMap::new();
    for (event, payload) in events.iter().zip(payloads) {
        let Some(order_id) = event.order_id() else {
            continue;
        };
        batch.entry(order_id).or_default().push(Archived {
            order_id,
            saga_id: event.saga.parse().ok(),
            seq: event.seq as i64,
            kind: event.kind.clone(),
            payload: payload.clone(),
            at: ms_time(event.ts_ms),
        });
    }
    if batch.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<Uuid> = batch.keys().copied().collect();
    let mut current = match projection {
        Projection::Incremental => current_rows(tx, &ids).await?,
        Projection::Refold => HashMap::new(),
    };
    let mut folded = Vec::with_capacity(ids.len());
    let mut refold = Vec::new();
    for (id, mut events) in batch {
        events.sort_by_key(|e| e.seq);
        events.dedup_by_key(|e| e.seq);
        let mut row = current
            .remove(&id)
            .unwrap_or_else(|| OrderRow::empty(id, events[0].saga_id));
        events.retain(|e| e.seq > row.last_seq);
        if events.is_empty() && projection == Projection::Incremental {
            continue; // redelivered: the row has them all
        }
        let continues = projection == Projection::Incremental
            && row.is_complete()
            && events
                .iter()
                .enumerate()
                .all(|(i, e)| e.seq == row.last_seq + 1 + i as i64);
        if continues {
            for event in &events {
                row.apply(event);
            }
            folded.push(row);
        } else {
            refold.push(id);
        }
    }
    if !refold.is_empty() {
        folded.extend(refold_from_archive(tx, &refold).await?);
    }
    if folded.is_empty() {
        return Ok(Vec::new());
    }
    macro_rules! column {
        ($field:ident) => {
            folded.iter().map(|r| r.$field.clone()).collect::<Vec<_>>()
        };
    }
    execute(tx,
        "INSERT INTO orders (order_id, saga_id, customer, restaurant_id, status, reason, payment_status, \
         decision, total, created_at, updated_at, last_seq, events) \
         SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::text[], $6::text[], \
         $7::text[], $8::text[], $9::int8[], $10::timestamptz[], $11::timestamptz[], $12::int8[], $13::int4[]) \
         ON CONFLICT (order_id) DO UPDATE SET saga_id = EXCLUDED.saga_id, customer = EXCLUDED.customer, \
         restaurant_id = EXCLUDED.restaurant_id, status = EXCLUDED.status, reason = EXCLUDED.reason, \
         payment_status = EXCLUDED.payment_status, decision = EXCLUDED.decision, total = EXCLUDED.total, \
         created_at = EXCLUDED.created_at, updated_at = EXCLUDED.updated_at, last_seq = EXCLUDED.last_seq, \
         events = EXCLUDED.events",
        &[
            &column!(order_id),
            &column!(saga_id),
            &column!(customer),
            &column!(restaurant_id),
            &column!(status),
            &column!(reason),
            &column!(payment_status),
            &column!(decision),
            &column!(total),
            &column!(created_at),
            &column!(updated_at),
            &column!(last_seq),
            &column!(events),
        ],
    )
    .await?;
    let paid: Vec<_> = folded
        .iter()
        .filter(|r| r.payment_status != "NONE")
        .collect();
    if !paid.is_empty() {
        let ids: Vec<Uuid> = paid.iter().map(|r| r.order_id).collect();
        let statuses: Vec<String> = paid.iter().map(|r| r.payment_status.clone()).collect();
        let refs: Vec<Option<String>> = paid.iter().map(|r| r.provider_ref.clone()).collect();
        let amounts: Vec<Option<i64>> = paid.iter().map(|r| r.total).collect();
        let times: Vec<Option<SystemTime>> = paid.iter().map(|r| r.updated_at).collect();
        execute(tx,
            "INSERT INTO payments (order_id, status, provider_ref, amount, updated_at) \
             SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::int8[], $5::timestamptz[]) \
             ON CONFLICT (order_id) DO UPDATE SET status = EXCLUDED.status, \
             provider_ref = EXCLUDED.provider_ref, amount = EXCLUDED.amount, updated_at = EXCLUDED.updated_at",
            &[&ids, &statuses, &refs, &amounts, &times],
        )
        .await?;
    }
    Ok(folded
        .iter()
        .filter(|r| r.is_final())
        .map(|r| {
            let at = r
                .updated_at
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map(|d| d.as_millis() as i64)
                .unwrap_or(0);
            (r.order_id, at)
        })
        .collect())
}

/// How a batch brings the projections up to date.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Projection {
    /// Apply the batch's events on top of each row where they continue it.
    Incremental,
    /// Refold every touched order from its whole archived history (repair).
    Refold,
}

/// The projection rows of `ids` as they are (with the provider reference).
async fn current_rows(tx: &Tx<'_>, ids: &[Uuid]) -> Result<HashMap<Uuid, OrderRow>, ArchiveError> {
    let rows = query(tx,
            "SELECT o.order_id, o.saga_id, o.customer, o.restaurant_id, o.status, o.reason, \
             o.payment_status, o.decision, o.total, o.created_at, o.updated_at, o.last_seq, o.events, \
             p.provider_ref FROM orders o LEFT JOIN payments p USING (order_id) \
             WHERE o.order_id = ANY($1)",
            &[&ids],
        )
        .await?;
    Ok(rows
        .into_iter()
        .map(|row| {
            let order = OrderRow {
                order_id: row.get(0),
                saga_id: row.get(1),
                customer: row.get(2),
                restaurant_id: row.get(3),
                status: row.get(4),
                reason: row.get(5),
                payment_status: row.get(6),
                decision: row.get(7),
                total: row.get(8),
                created_at: row.get(9),
                updated_at: row.get(10),
                last_seq: row.get(11),
                events: row.get(12),
                provider_ref: row.get(13),
            };
            (order.order_id, order)
        })
        .collect())
}

/// Folds the orders `ids` from their whole archived history.
async fn refold_from_archive(tx: &Tx<'_>, ids: &[Uuid]) -> Result<Vec<OrderRow>, ArchiveError> {
    let months: Vec<SystemTime> = ids.iter().map(uuid_time).collect();
    let rows = query(
        tx,
        "SELECT order_id, saga_id, seq, type, payload, event_time FROM saga_events \
             WHERE order_id = ANY($1) AND part_time = ANY($2) ORDER BY order_id, seq",
        &[&ids, &months],
    )
    .await?;
    let mut folded = Vec::with_capacity(ids.len());
    let mut current: Vec<Archived> = Vec::new();
    for row in rows {
        let event = Archived {
            order_id: row.get(0),
            saga_id: row.get(1),
            seq: row.get(2),
            kind: row.get(3),
            payload: row.get::<_, Json<Value>>(4).0,
            at: row.get(5),
        };
        if current.last().is_some_and(|e| e.order_id != event.order_id) {
            folded.extend(fold(&current));
            current.clear();
        }
        current.push(event);
    }
    folded.extend(fold(&current));
    Ok(folded)
}

async fn advance_watermarks(tx: &Tx<'_>, entries: &[Entry]) -> Result<(), ArchiveError> {
    let mut highest: HashMap<&str, (i64, i64)> = HashMap::new();
    for entry in entries {
        if let Some(id) = parse_entry_id(&entry.id) {
            let slot = highest.entry(&entry.stream).or_insert(id);
            *slot = (*slot).max(id);
        }
    }
    for (stream, (ms, seq)) in highest {
        execute(
            tx,
            "INSERT INTO archive_watermarks (stream, entry_ms, entry_seq) VALUES ($1, $2, $3) \
             ON CONFLICT (stream) DO UPDATE SET entry_ms = EXCLUDED.entry_ms, \
             entry_seq = EXCLUDED.entry_seq, updated_at = now() \
             WHERE (archive_watermarks.entry_ms, archive_watermarks.entry_seq) \
                 < (EXCLUDED.entry_ms, EXCLUDED.entry_seq)",
            &[&stream, &ms, &seq],
        )
        .await?;
    }
    Ok(())
}

/// The transaction every batch writes in (its statements are prepared once
/// per connection and cached).
type Tx<'a> = deadpool_postgres::Transaction<'a>;

async fn execute(
    tx: &Tx<'_>,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<u64, tokio_postgres::Error> {
    let statement = tx.prepare_cached(sql).await?;
    tx.execute(&statement, params).await
}

async fn query(
    tx: &Tx<'_>,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<Vec<tokio_postgres::Row>, tokio_postgres::Error> {
    let statement = tx.prepare_cached(sql).await?;
    tx.query(&statement, params).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_months_are_right_at_the_edges() {
        assert_eq!(civil_month(0), (1970, 1));
        assert_eq!(civil_month(31), (1970, 2));
        // 2026-11-24 is day 20,781; 2024-02-29 is day 19,782.
        assert_eq!(civil_month(20_781), (2026, 11));
        assert_eq!(civil_month(19_782), (2024, 2));
        assert_eq!(civil_month(19_783), (2024, 3));
    }

    #[test]
    fn an_order_ids_time_is_its_creation_time() {
        let before = SystemTime::now() - Duration::from_millis(1);
        let id = engine::ids::new_order_id(3);
        let at = uuid_time(&id);
        assert!(at >= before && at <= SystemTime::now());
    }
}
