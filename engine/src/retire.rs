//! Live-state retention: settled, archived orders leave Redis.
//!
//! Redis holds what is live; PostgreSQL holds the history. An order whose
//! pair is final (CONFIRMED with CAPTURED, or REJECTED with its payment
//! settled) and whose every event is committed in the archive is *retired*
//! once it has rested for the live retention (`--live-retention`, default
//! 1 h): `lua/retire.lua` re-checks all of that and deletes its hash in one
//! atomic step, so it is safe beside live traffic and any number of
//! processes may run it at once.
//!
//! The candidates are the partition's resting index (`{pN}:resting`): the
//! archiver adds an order there once the batch holding its final event has
//! committed (and reconciliation adds any it finds missing). The retirer
//! takes the entries that rested long enough, a bounded page at a time.
//!
//! After retirement, reads of the order come from the archive (see
//! [`Archive`]); its idempotency record stays until its TTL, so a retried
//! placement still gets its first answer.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fred::prelude::*;
use futures::future::BoxFuture;

use crate::domain::Order;
use crate::engine::{Engine, EngineError};
use crate::keys::Topic;
use crate::scripts::retire;

/// The archiver's consumer group: an entry it acknowledged is committed in
/// PostgreSQL.
pub const ARCHIVER_GROUP: &str = "archiver";

/// Candidates taken per script round and partition.
pub const PAGE: usize = 256;

/// How long an order kept for a passing reason (an event not archived yet,
/// a timer still set) waits before it is looked at again.
pub const BACKOFF: Duration = Duration::from_secs(5);

/// How often the retirer looks for candidates when it found none.
pub const IDLE_EVERY: Duration = Duration::from_millis(500);

pub use crate::scripts::replies::Retired;

/// The archive's view of orders that left Redis: how reads, reconciliation
/// and checks find a retired order. Implemented over PostgreSQL by `api`.
pub trait Archive: Send + Sync {
    /// The archived order, if the archive has it.
    fn order<'a>(&'a self, id: &'a uuid::Uuid) -> BoxFuture<'a, anyhow::Result<Option<Order>>>;
}

/// Runs the retire script for one order.
pub async fn retire(
    engine: &Engine,
    id: &uuid::Uuid,
    retention: Duration,
) -> Result<Retired, EngineError> {
    let keys = engine.keys();
    let Some(p) = keys.partition_of_order(id) else {
        return Ok(Retired::Kept("gone".into()));
    };
    // The lines decide the keys; the script checks they still match.
    let lines: Option<String> = engine.redis().hget(keys.order(p, id), "lines").await?;
    let (restaurant, items) = match lines {
        Some(lines) => {
            let rid: Option<String> = engine.redis().hget(keys.order(p, id), "rid").await?;
            let lines: Vec<(String, i64, i64, u8)> =
                serde_json::from_str(&lines).map_err(|_| EngineError::Reply {
                    script: "retire",
                    reply: vec![format!("order {id} has malformed lines: {lines}")],
                })?;
            (
                rid.unwrap_or_default(),
                lines.into_iter().map(|l| l.0).collect(),
            )
        }
        None => (String::new(), Vec::new()),
    };
    engine
        .scripts()
        .retire
        .run(
            engine.redis(),
            retire::Keys {
                order_key: keys.order(p, id),
                resting: keys.resting(p),
                inflight: keys.inflight(p),
                wheel: keys.wheel(p),
                orders_stream: keys.stream(p, Topic::Orders),
                payments_stream: keys.stream(p, Topic::Payments),
                rest_stream: keys.stream(p, Topic::Restaurant),
                batch_stream: keys.stream(p, Topic::Batch),
                lines: items
                    .iter()
                    .map(|item| {
                        [
                            keys.item(p, &restaurant, item),
                            keys.item_retired_per_customer(p, &restaurant, item),
                        ]
                    })
                    .collect(),
            },
            retire::Args {
                order_id: id.to_string(),
                retention,
                group: ARCHIVER_GROUP.into(),
                backoff: BACKOFF,
            },
        )
        .await
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// One pass over partition `p`: retires every candidate that rested longer
/// than `retention`, a page at a time; returns how many left Redis.
pub async fn retire_partition(
    engine: &Engine,
    p: u16,
    retention: Duration,
) -> Result<u64, EngineError> {
    let mut retired = 0;
    loop {
        let cutoff = now_ms() - retention.as_millis() as i64;
        let page: Vec<String> = engine
            .redis()
            .zrangebyscore(
                engine.keys().resting(p),
                "-inf",
                cutoff as f64,
                false,
                Some((0, PAGE as i64)),
            )
            .await?;
        let ids: Vec<uuid::Uuid> = page.iter().filter_map(|s| s.parse().ok()).collect();
        if page.len() != ids.len() {
            // Not an order id: not ours to keep in the index.
            let bad: Vec<&String> = page
                .iter()
                .filter(|s| s.parse::<uuid::Uuid>().is_err())
                .collect();
            let _: i64 = engine.redis().zrem(engine.keys().resting(p), bad).await?;
        }
        let outcomes =
            futures::future::try_join_all(ids.iter().map(|id| retire(engine, id, retention)))
                .await?;
        let done = outcomes
            .iter()
            .filter(|o| matches!(o, Retired::Retired { .. }))
            .count() as u64;
        retired += done;
        if done > 0 {
            metrics::counter!("lunchrush_orders_retired_total").increment(done);
        }
        // A full page may have more behind it; a page that retired nothing
        // holds only orders kept for a while (re-scored later): stop.
        if page.len() < PAGE || done == 0 {
            return Ok(retired);
        }
    }
}

/// Retires rested orders of every partition until `shutdown` turns true.
/// Any number of processes may run it at once.
pub async fn run_retirer(
    engine: Engine,
    retention: Duration,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    while !*shutdown.borrow() {
        let passes =
            (0..engine.keys().partitions()).map(|p| retire_partition(&engine, p, retention));
        for result in futures::future::join_all(passes).await {
            if let Err(error) = result {
                tracing::warn!(%error, "Retiring settled orders failed; the next pass retries.");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(IDLE_EVERY) => {}
            _ = shutdown.changed() => {}
        }
    }
}
