//! The archive audit: for every order Redis holds, the archive has each of
//! its events exactly once (sequence numbers 1..=n, no gap, no repeat) and
//! the projections agree with Redis. Used by tests, benches and
//! `lunchrush check --archive`.

use std::collections::HashMap;

use engine::Engine;
use engine::domain::Order;
use fred::prelude::*;
use uuid::Uuid;

use crate::{ArchiveError, uuid_time};

/// Orders audited per query.
const CHUNK: usize = 500;

/// What the audit found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditReport {
    pub orders: u64,
    pub events: u64,
    /// Entries still in the streams (archived-but-untrimmed or unarchived).
    pub stream_entries: u64,
    /// Archived at a final pair, no longer live (retired).
    pub retired: u64,
    /// Archived mid-saga, no longer live.
    pub vanished: u64,
    pub violations: Vec<String>,
    /// The orders behind the violations (for repair).
    pub broken: Vec<Uuid>,
}

impl AuditReport {
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }
}

impl std::fmt::Display for AuditReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "archive: {} orders, {} events archived, {} entries still in streams: {}",
            self.orders,
            self.events,
            self.stream_entries,
            if self.passed() { "PASS" } else { "FAIL" }
        )?;
        writeln!(
            f,
            "  not live: {} retired (settled and archived), {} vanished (archived mid-saga)",
            self.retired, self.vanished
        )?;
        for violation in &self.violations {
            writeln!(f, "  violation: {violation}")?;
        }
        Ok(())
    }
}

/// Audits every order of every partition against the archive.
pub async fn audit(
    engine: &Engine,
    pool: &deadpool_postgres::Pool,
) -> Result<AuditReport, ArchiveError> {
    let mut report = AuditReport::default();
    let client = pool.get().await?;
    for p in 0..engine.keys().partitions() {
        for topic in engine::keys::Topic::ALL {
            let length: u64 = engine.redis().xlen(engine.keys().stream(p, topic)).await?;
            report.stream_entries += length;
        }
        let ids = engine.order_ids(p).await.map_err(|e| match e {
            engine::EngineError::Redis(e) => ArchiveError::Redis(e),
            other => ArchiveError::Redis(fred::error::Error::new(
                fred::error::ErrorKind::Unknown,
                other.to_string(),
            )),
        })?;
        for chunk in ids.chunks(CHUNK) {
            let reads = chunk.iter().map(|id| engine.order(id));
            let orders: Vec<Order> = futures::future::try_join_all(reads)
                .await
                .map_err(|e| {
                    ArchiveError::Redis(fred::error::Error::new(
                        fred::error::ErrorKind::Unknown,
                        e.to_string(),
                    ))
                })?
                .into_iter()
                .flatten()
                .collect();
            audit_chunk(&client, &orders, &mut report).await?;
        }
    }
    count_not_live(engine, &client, &mut report).await?;
    Ok(report)
}

/// Orders the archive has and Redis no longer holds, by whether they were
/// at a final pair. Reads the projection a page at a time.
async fn count_not_live(
    engine: &Engine,
    client: &deadpool_postgres::Object,
    report: &mut AuditReport,
) -> Result<(), ArchiveError> {
    let mut after = Uuid::nil();
    loop {
        let rows = client
            .query(
                "SELECT order_id, (status = 'CONFIRMED' AND payment_status = 'CAPTURED') \
                 OR (status = 'REJECTED' AND payment_status IN ('NONE', 'DECLINED', 'VOIDED', 'REFUNDED')) \
                 FROM orders WHERE order_id > $1 ORDER BY order_id LIMIT 1000",
                &[&after],
            )
            .await?;
        let Some(last) = rows.last() else {
            return Ok(());
        };
        after = last.get(0);
        let keys = engine.keys();
        let checks = rows.iter().map(|row| {
            let id: Uuid = row.get(0);
            let key = keys.partition_of_order(&id).map(|p| keys.order(p, &id));
            async move {
                match key {
                    Some(key) => engine.redis().exists::<u64, _>(key).await,
                    None => Ok(0),
                }
            }
        });
        let live = futures::future::try_join_all(checks).await?;
        for (row, live) in rows.iter().zip(live) {
            if live == 0 {
                if row.get::<_, bool>(1) {
                    report.retired += 1;
                } else {
                    report.vanished += 1;
                }
            }
        }
    }
}

/// Audits the given orders only.
pub async fn audit_orders(
    pool: &deadpool_postgres::Pool,
    orders: &[Order],
) -> Result<AuditReport, ArchiveError> {
    let mut report = AuditReport::default();
    let client = pool.get().await?;
    audit_chunk(&client, orders, &mut report).await?;
    Ok(report)
}

async fn audit_chunk(
    client: &deadpool_postgres::Object,
    orders: &[Order],
    report: &mut AuditReport,
) -> Result<(), ArchiveError> {
    let ids: Vec<Uuid> = orders.iter().map(|o| o.id).collect();
    let months: Vec<std::time::SystemTime> = ids.iter().map(uuid_time).collect();
    let archived: HashMap<Uuid, Vec<i64>> = client
        .query(
            "SELECT order_id, array_agg(seq ORDER BY seq) FROM saga_events \
             WHERE order_id = ANY($1) AND part_time = ANY($2) GROUP BY order_id",
            &[&ids, &months],
        )
        .await?
        .into_iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    let projected: HashMap<Uuid, (String, String, String, Option<i64>)> = client
        .query(
            "SELECT order_id, status, payment_status, coalesce(reason, ''), total FROM orders \
             WHERE order_id = ANY($1)",
            &[&ids],
        )
        .await?
        .into_iter()
        .map(|row| (row.get(0), (row.get(1), row.get(2), row.get(3), row.get(4))))
        .collect();
    for order in orders {
        report.orders += 1;
        let seqs = archived.get(&order.id).cloned().unwrap_or_default();
        report.events += seqs.len() as u64;
        let expected: Vec<i64> = (1..=order.seq as i64).collect();
        if seqs != expected {
            report.violations.push(format!(
                "order {}: archived sequence {:?}, Redis is at {}",
                order.id, seqs, order.seq
            ));
            report.broken.push(order.id);
            continue;
        }
        let want = (
            order.status.as_str().to_string(),
            order.pay.as_str().to_string(),
            order.reason.clone(),
            Some(order.total),
        );
        match projected.get(&order.id) {
            Some(row) if *row == want => {}
            other => {
                report.violations.push(format!(
                    "order {}: projection {:?}, Redis has {:?}",
                    order.id, other, want
                ));
                report.broken.push(order.id);
            }
        }
    }
    Ok(())
}
