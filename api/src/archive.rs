//! Retired orders, read back from the archive.
//!
//! An order that settled and rested for the live retention leaves Redis
//! (`engine::retire`); PostgreSQL's projections then answer for it with the
//! same fields Redis held: its `orders` row, and the lines in
//! the order they were placed (from its `OrderPlaced` event). Only orders at
//! a final pair are answered from here: an order that vanished from Redis
//! any other way is reconciliation's business, not a read's.

use std::time::{SystemTime, UNIX_EPOCH};

use engine::domain::{Line, Order, OrderStatus, PaymentStatus};
use futures::future::BoxFuture;
use serde_json::Value;
use tokio_postgres::types::Json;
use uuid::Uuid;

/// The archive over PostgreSQL (also handed to reconciliation).
#[derive(Clone)]
pub struct PgArchive {
    pool: deadpool_postgres::Pool,
}

impl PgArchive {
    pub fn new(pool: deadpool_postgres::Pool) -> Self {
        Self { pool }
    }
}

impl engine::retire::Archive for PgArchive {
    fn order<'a>(&'a self, id: &'a Uuid) -> BoxFuture<'a, anyhow::Result<Option<Order>>> {
        Box::pin(retired_order(&self.pool, id))
    }
}

fn millis(time: SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The archived order `id` if it is at a final pair, as Redis held it.
pub async fn retired_order(
    pool: &deadpool_postgres::Pool,
    id: &Uuid,
) -> anyhow::Result<Option<Order>> {
    let Some(partition) = engine::ids::partition_of(id) else {
        return Ok(None);
    };
    let client = pool.get().await?;
    let created = engine::ids::created_at(id);
    let row = client
        .query_opt(
            "SELECT coalesce(o.saga_id::text, ''), coalesce(o.customer, ''), \
             coalesce(o.restaurant_id, ''), o.status, coalesce(o.reason, ''), o.payment_status, \
             coalesce(o.decision, ''), coalesce(o.total, 0), o.created_at, o.updated_at, o.last_seq, \
             coalesce(o.provider_ref, ''), \
             (SELECT e.payload FROM saga_events e WHERE e.order_id = o.order_id \
              AND e.part_time = $2 AND e.type = 'OrderPlaced' LIMIT 1) \
             FROM orders o WHERE o.order_id = $1 AND o.events = o.last_seq",
            &[id, &created],
        )
        .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let (Some(status), Some(pay)) = (
        OrderStatus::parse(row.get(3)),
        PaymentStatus::parse(row.get(5)),
    ) else {
        return Ok(None);
    };
    if !engine::domain::is_final_pair(status, pay) {
        return Ok(None);
    }
    let placed: Option<Json<Value>> = row.get(12);
    let lines = placed
        .as_ref()
        .and_then(|p| p.0.get("l"))
        .and_then(Value::as_array)
        .map(|lines| {
            lines
                .iter()
                .filter_map(|l| {
                    Some(Line {
                        item: l.get(0)?.as_str()?.to_string(),
                        qty: u32::try_from(l.get(1)?.as_u64()?).ok()?,
                        price: l.get(2)?.as_i64()?,
                        counted: false,
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    let last_seq: i64 = row.get(10);
    Ok(Some(Order {
        id: *id,
        partition,
        saga: row.get(0),
        customer: row.get(1),
        restaurant: row.get(2),
        status,
        reason: row.get(4),
        pay,
        total: row.get(7),
        lines,
        version: last_seq as u64,
        seq: last_seq as u64,
        created_ms: row.get::<_, Option<SystemTime>>(8).map_or(0, millis),
        updated_ms: row.get::<_, Option<SystemTime>>(9).map_or(0, millis),
        decision: row.get(6),
        psp_ref: row.get(11),
        auto_approve: placed
            .as_ref()
            .and_then(|p| p.0.get("a"))
            .and_then(Value::as_bool)
            .unwrap_or(false),
        events: Vec::new(),
        notified: Vec::new(),
    }))
}
