//! The archiver: drains every lunchrush stream into PostgreSQL exactly once,
//! and only then lets the stream be trimmed.
//!
//! # Layout
//! - [`schema`]: the embedded `migrations/`, `migrate`, monthly partitions.
//! - [`project`]: folding an order's events into its projection rows.
//! - [`audit`]: the archive audit (every event once, projections = Redis).
//! - `batch`: reading a batch and writing it in one transaction.
//! - `sql`: the batch's SQL (COPY, inserts, watermarks); `projections`:
//!   the projection tables moved on by a batch (incremental, or refolded).
//! - `trim`: trimming to what every group acknowledged and the archive holds.
//!
//! # How a batch is archived
//! One task reads the eight streams of every partition (group `archiver`):
//! with one XREADGROUP on standalone Redis; on a Cluster, with one per
//! partition (a slot each), sent together, so a batch still carries what
//! every partition wrote. First its own pending entries (`0`: what a
//! crash, a failed transaction or a reclaim left) whenever it may hold some,
//! and only when none remain, new ones (`>`). After a batch that was not
//! full it lets entries gather for `linger`: fewer, larger transactions.
//! A batch is written in **one transaction**: binary COPY straight into
//! `saga_events` inside a savepoint (a batch holding an entry already
//! archived, a redelivery, is rolled back to it and goes through a staging
//! table and `INSERT … ON CONFLICT DO NOTHING`: re-archiving changes
//! nothing), the projections of every order the batch touches moved on by
//! its events (refolded from the archived history where they do not
//! continue the row), and the per-stream watermark advanced. Only after
//! COMMIT are the entries XACKed (every stream's at once).
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

mod batch;
mod projections;
mod sql;
mod trim;

use projections::*;
use sql::*;
pub use sql::{SAGA_EVENT_TYPES, civil_month};
use trim::*;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use engine::Engine;
use engine::events::{Event, Payload};
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
    /// After a batch smaller than `batch_size`, how long a reader lets new
    /// entries gather before the next one: under load, fewer and larger
    /// transactions (PostgreSQL's cost is mostly per statement and per
    /// commit), and more orders whose every event is in one batch (their
    /// row written once, not inserted and then updated); a full batch is
    /// followed at once. 250 ms: PostgreSQL's CPU per order 10 % below
    /// 100 ms's at 1,750 orders/s (and 100 ms's 17 % below 25 ms's at
    /// 1,500/s); the archive trails Redis by that much more.
    pub linger: Duration,
    /// Longest backoff while PostgreSQL or Redis fails.
    pub backoff_max: Duration,
    /// How often each partition's streams are trimmed.
    pub trim_every: Duration,
    /// Pending entries of other (dead) archivers idle this long are taken over.
    pub reclaim_idle: Duration,
    /// A stream whose archive lag exceeds this many entries is warned about.
    pub lag_warn_entries: u64,
    /// While catching up (a batch whose oldest entry is older than
    /// [`CATCH_UP_AGE`]: a backlog left by an outage, not the live rate),
    /// the share of the time a reader works: it reads pages of
    /// [`CATCH_UP_COUNT`] a stream, and after each batch pauses for as long
    /// as the batch took × (1 / share − 1). So the drain after
    /// PostgreSQL returns leaves the cores to live traffic, whose placement
    /// p99 stays near its usual level (`bench/outage`); 1.0: no pause.
    pub catch_up_share: f64,
}

/// The longest pause between two catching-up batches.
pub const CATCH_UP_PAUSE_MAX: Duration = Duration::from_secs(2);

/// A batch whose oldest entry is older than this is catching up.
pub const CATCH_UP_AGE: Duration = Duration::from_secs(10);

/// Entries read from each stream at a time while catching up.
pub const CATCH_UP_COUNT: u64 = 32;

/// Whether a batch whose oldest entry was added at `oldest_ms` is behind by
/// [`CATCH_UP_AGE`] or more.
fn is_behind(oldest_ms: Option<i64>) -> bool {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    oldest_ms.is_some_and(|ms| now_ms - ms >= CATCH_UP_AGE.as_millis() as i64)
}

impl ArchiverOptions {
    pub fn new(consumer: impl Into<String>) -> Self {
        Self {
            consumer: consumer.into(),
            batch_size: 1_000,
            batches_in_flight_max: 4,
            idle_poll_max: Duration::from_millis(100),
            linger: Duration::from_millis(250),
            backoff_max: Duration::from_secs(5),
            trim_every: Duration::from_secs(1),
            reclaim_idle: Duration::from_secs(30),
            lag_warn_entries: 100_000,
            catch_up_share: 0.5,
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
    #[error(transparent)]
    Engine(#[from] engine::EngineError),
}

/// A stream entry as read.
#[derive(Debug, Clone)]
struct Entry {
    stream: String,
    id: String,
    fields: engine::entries::Fields,
}

pub use engine::streams::parse_entry_id;

/// The partition time of an order's events (see `engine::ids::created_at`).
pub fn uuid_time(id: &Uuid) -> SystemTime {
    engine::ids::created_at(id)
}

fn ms_time(ms: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64)
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
    /// The streams it drains, per partition.
    streams: engine::streams::PartitionStreams,
}

impl Archiver {
    pub fn new(engine: Engine, pool: deadpool_postgres::Pool, options: ArchiverOptions) -> Self {
        let streams = engine::streams::PartitionStreams::new(engine.keys(), &Topic::ALL);
        Self {
            permits: Arc::new(tokio::sync::Semaphore::new(options.batches_in_flight_max)),
            streams,
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

    /// The partitions one reader covers together: all of them, so a batch
    /// (one transaction) carries what every partition wrote. On standalone
    /// Redis that is one XREADGROUP; on a Cluster, one per partition, sent
    /// together (see [`Archiver::read`]).
    fn shards(&self) -> Vec<Vec<u16>> {
        vec![(0..self.engine.keys().partitions()).collect()]
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

    /// After a catching-up batch that took `took`: the pause that leaves
    /// the rest of the time to live traffic (see
    /// [`ArchiverOptions::catch_up_share`]).
    fn catch_up_pause(&self, took: Duration) -> Duration {
        metrics::counter!("lunchrush_archive_catch_up_batches_total").increment(1);
        let share = self.options.catch_up_share;
        if share >= 1.0 || share <= 0.0 {
            return Duration::ZERO;
        }
        took.mul_f64(1.0 / share - 1.0).min(CATCH_UP_PAUSE_MAX)
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
        // Whether this reader may hold pending entries: a crash before this
        // start, a failed batch, a reclaim may have left some.
        let mut pending = true;
        let full = usize::try_from(self.options.batch_size).unwrap_or(usize::MAX);
        // While catching up, smaller pages: one XREADGROUP of `batch_size`
        // entries from each of dozens of streams builds a reply of tens of
        // MB, which holds Redis's event loop (and every placement) for
        // ~100 ms; a page of CATCH_UP_COUNT a stream does not.
        let mut catching_up = false;
        while !*shutdown.borrow() {
            let started = Instant::now();
            let count = if catching_up {
                CATCH_UP_COUNT.min(self.options.batch_size)
            } else {
                self.options.batch_size
            };
            let step = self.step_shard(partitions, &mut pending, count).await;
            catching_up = matches!(step, Ok((_, oldest)) if is_behind(oldest));
            let pause = match step {
                Ok((0, _)) => {
                    idle = (idle * 2).min(self.options.idle_poll_max);
                    backoff = Duration::from_millis(50);
                    idle
                }
                Ok((n, _)) => {
                    idle = Duration::from_millis(1);
                    backoff = Duration::from_millis(50);
                    if catching_up {
                        self.catch_up_pause(started.elapsed())
                    } else if n < full {
                        self.options.linger
                    } else {
                        Duration::ZERO
                    }
                }
                Err(error) => {
                    pending = true;
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
                pending = true;
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
