//! The projection table (`orders`; `payments` is a view of it) brought up
//! to date in the batch's transaction: each touched order's row moved on by
//! the batch's events when they continue it, refolded from its archived
//! history otherwise; writers of one order serialized by an advisory lock.

use super::*;
use crate::project::decode;

/// How a batch brings the projections of the orders it touched up to date.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Projection {
    /// The batch's events applied on top of each row when they continue it
    /// (the row holds every event up to its last, the batch starts right
    /// after); any other order is refolded from its archived history.
    Incremental,
    /// Every touched order refolded from its archived history (repair).
    Refold,
}

/// The lock namespace of projection writers (`pg_advisory_xact_lock(ns, key)`).
const PROJECTION_LOCKS: i32 = 0x6c72_7072; // "lrpr"

/// Serializes the projection writers of `ids` (two archivers, one of them
/// reclaiming a dead one's batch, never fold one order at once); taken in
/// key order, held until COMMIT.
pub(crate) async fn lock_projections(tx: &Tx<'_>, ids: &[Uuid]) -> Result<(), ArchiveError> {
    let mut keys: Vec<i32> = ids
        .iter()
        .map(|id| {
            let bits = id.as_u128();
            (bits ^ (bits >> 32) ^ (bits >> 64) ^ (bits >> 96)) as u32 as i32
        })
        .collect();
    keys.sort_unstable();
    keys.dedup();
    execute(
        tx,
        "SELECT pg_advisory_xact_lock($1, k) FROM unnest($2::int4[]) WITH ORDINALITY AS t(k, n) ORDER BY n",
        &[&PROJECTION_LOCKS, &keys],
    )
    .await?;
    Ok(())
}

/// The batch's events of each order it touched, in sequence, once each.
pub(crate) fn order_events(
    events: &[Event],
    payloads: Vec<Option<Payload>>,
) -> std::collections::BTreeMap<Uuid, Vec<Archived>> {
    let mut by_order: std::collections::BTreeMap<Uuid, Vec<Archived>> = Default::default();
    for (event, payload) in events.iter().zip(payloads) {
        if let (Some(order_id), Some(payload)) = (event.order_id(), payload) {
            by_order.entry(order_id).or_default().push(Archived {
                order_id,
                saga_id: event.saga.parse().ok(),
                seq: event.seq as i64,
                payload,
                at: ms_time(event.ts_ms),
            });
        }
    }
    for events in by_order.values_mut() {
        events.sort_by_key(|e| e.seq);
        events.dedup_by_key(|e| e.seq);
    }
    by_order
}

/// `row` moved on by `events` (sorted, once each), or `None` when they do
/// not continue it: a gap, or a row that is itself missing an event.
fn continued(row: OrderRow, events: &[Archived]) -> Option<OrderRow> {
    if !row.is_complete() {
        return None;
    }
    let mut row = row;
    let seen = row.last_seq;
    for event in events.iter().filter(|e| e.seq > seen) {
        if event.seq != row.last_seq + 1 {
            return None;
        }
        row.apply(event);
    }
    Some(row)
}

/// The projection rows of `ids` as they are.
async fn current_rows(tx: &Tx<'_>, ids: &[Uuid]) -> Result<HashMap<Uuid, OrderRow>, ArchiveError> {
    let rows = query(
        tx,
        "SELECT o.order_id, o.saga_id, o.customer, o.restaurant_id, o.status, o.reason, \
         o.payment_status, o.decision, o.total, o.created_at, o.updated_at, o.last_seq, o.events, \
         o.provider_ref FROM orders o WHERE o.order_id = ANY($1)",
        &[&ids],
    )
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| {
            let row = OrderRow {
                order_id: r.get(0),
                saga_id: r.get(1),
                customer: r.get(2),
                restaurant_id: r.get(3),
                status: r.get(4),
                reason: r.get(5),
                payment_status: r.get(6),
                decision: r.get(7),
                total: r.get(8),
                created_at: r.get(9),
                updated_at: r.get(10),
                last_seq: r.get(11),
                events: r.get(12),
                provider_ref: r.get(13),
            };
            (row.order_id, row)
        })
        .collect())
}

/// Brings the projection of every order the batch touched up to date (see
/// [`Projection`]); returns those now at a final pair, with their last
/// change (ms).
///
/// Most orders a batch touches are new: their events in it run from seq 1
/// without a gap, so their row is the fold of the batch alone and is written
/// without reading anything first, guarded so it never replaces a row that
/// holds more (a redelivered batch); an order the guard stops, and every
/// order that continues an archived row, takes the path that reads the rows
/// first.
pub(crate) async fn project_orders(
    tx: &Tx<'_>,
    events: &[Event],
    payloads: Vec<Option<Payload>>,
    mode: Projection,
) -> Result<Vec<(Uuid, i64)>, ArchiveError> {
    let by_order = order_events(events, payloads);
    if by_order.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<Uuid> = by_order.keys().copied().collect();
    lock_projections(tx, &ids).await?;
    let (mut fresh, mut rest) = (Vec::new(), Vec::new());
    for (id, events) in by_order {
        let starts = mode == Projection::Incremental && events[0].seq == 1;
        match starts.then(|| continued(OrderRow::empty(id, events[0].saga_id), &events)) {
            Some(Some(row)) => fresh.push((row, events)),
            _ => rest.push((id, events)),
        }
    }
    let written = write_new_orders(tx, fresh.iter().map(|(row, _)| row)).await?;
    let mut folded: Vec<OrderRow> = Vec::with_capacity(ids.len());
    for (row, events) in fresh {
        if written.contains(&row.order_id) {
            folded.push(row);
        } else {
            rest.push((row.order_id, events));
        }
    }
    let moved = move_on(tx, rest, mode).await?;
    write_orders(tx, &moved).await?;
    folded.extend(moved);
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

/// The rows of orders that continue an archived row (or may): each moved on
/// by its events when they continue it, refolded from the archive otherwise.
async fn move_on(
    tx: &Tx<'_>,
    orders: Vec<(Uuid, Vec<Archived>)>,
    mode: Projection,
) -> Result<Vec<OrderRow>, ArchiveError> {
    if orders.is_empty() {
        return Ok(Vec::new());
    }
    // These reads are few and their tables grow from empty: a plan cached
    // while they were small would scan them whole for ever after.
    tx.batch_execute("SET LOCAL plan_cache_mode = force_custom_plan")
        .await?;
    let ids: Vec<Uuid> = orders.iter().map(|(id, _)| *id).collect();
    let mut current = match mode {
        Projection::Incremental => current_rows(tx, &ids).await?,
        Projection::Refold => HashMap::new(),
    };
    let (mut folded, mut refold) = (Vec::with_capacity(ids.len()), Vec::new());
    for (id, events) in orders {
        let base = match (mode, current.remove(&id)) {
            (Projection::Refold, _) => None,
            (_, Some(row)) => Some(row),
            (_, None) => Some(OrderRow::empty(id, events[0].saga_id)),
        };
        match base.and_then(|row| continued(row, &events)) {
            Some(row) => folded.push(row),
            None => refold.push(id),
        }
    }
    folded.extend(refold_from_archive(tx, &refold).await?);
    Ok(folded)
}

/// Inserts the rows of new orders; where a row exists already (a
/// redelivery), replaces it only when it is complete and holds no event
/// past the new one's. Returns the orders written.
async fn write_new_orders<'a>(
    tx: &Tx<'_>,
    rows: impl Iterator<Item = &'a OrderRow> + Clone,
) -> Result<HashSet<Uuid>, ArchiveError> {
    if rows.clone().next().is_none() {
        return Ok(HashSet::new());
    }
    let written = query(
        tx,
        &format!(
            "{} WHERE orders.events = orders.last_seq AND orders.last_seq <= EXCLUDED.last_seq \
             RETURNING order_id",
            UPSERT_ORDERS
        ),
        &order_columns(rows).as_params(),
    )
    .await?;
    Ok(written.iter().map(|r| r.get(0)).collect())
}

/// The projection rows as `UNNEST` arrays, one per column of `orders`.
struct OrderColumns {
    order_id: Vec<Uuid>,
    saga_id: Vec<Option<Uuid>>,
    customer: Vec<Option<String>>,
    restaurant_id: Vec<Option<String>>,
    status: Vec<String>,
    reason: Vec<Option<String>>,
    payment_status: Vec<String>,
    decision: Vec<Option<String>>,
    total: Vec<Option<i64>>,
    created_at: Vec<Option<SystemTime>>,
    updated_at: Vec<Option<SystemTime>>,
    last_seq: Vec<i64>,
    events: Vec<i32>,
    provider_ref: Vec<Option<String>>,
}

impl OrderColumns {
    fn as_params(&self) -> [&(dyn tokio_postgres::types::ToSql + Sync); 14] {
        [
            &self.order_id,
            &self.saga_id,
            &self.customer,
            &self.restaurant_id,
            &self.status,
            &self.reason,
            &self.payment_status,
            &self.decision,
            &self.total,
            &self.created_at,
            &self.updated_at,
            &self.last_seq,
            &self.events,
            &self.provider_ref,
        ]
    }
}

fn order_columns<'a>(rows: impl Iterator<Item = &'a OrderRow> + Clone) -> OrderColumns {
    macro_rules! column {
        ($field:ident) => {
            rows.clone().map(|r| r.$field.clone()).collect()
        };
    }
    OrderColumns {
        order_id: column!(order_id),
        saga_id: column!(saga_id),
        customer: column!(customer),
        restaurant_id: column!(restaurant_id),
        status: column!(status),
        reason: column!(reason),
        payment_status: column!(payment_status),
        decision: column!(decision),
        total: column!(total),
        created_at: column!(created_at),
        updated_at: column!(updated_at),
        last_seq: column!(last_seq),
        events: column!(events),
        provider_ref: column!(provider_ref),
    }
}

/// Every column of `orders` from `UNNEST` arrays, replacing the row on
/// conflict (a caller may add a `WHERE` to the update).
const UPSERT_ORDERS: &str = "INSERT INTO orders (order_id, saga_id, customer, restaurant_id, status, \
     reason, payment_status, decision, total, created_at, updated_at, last_seq, events, provider_ref) \
     SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::text[], $6::text[], \
     $7::text[], $8::text[], $9::int8[], $10::timestamptz[], $11::timestamptz[], $12::int8[], $13::int4[], \
     $14::text[]) \
     ON CONFLICT (order_id) DO UPDATE SET saga_id = EXCLUDED.saga_id, customer = EXCLUDED.customer, \
     restaurant_id = EXCLUDED.restaurant_id, status = EXCLUDED.status, reason = EXCLUDED.reason, \
     payment_status = EXCLUDED.payment_status, decision = EXCLUDED.decision, total = EXCLUDED.total, \
     created_at = EXCLUDED.created_at, updated_at = EXCLUDED.updated_at, last_seq = EXCLUDED.last_seq, \
     events = EXCLUDED.events, provider_ref = EXCLUDED.provider_ref";

/// Upserts the `orders` rows of `folded`.
async fn write_orders(tx: &Tx<'_>, folded: &[OrderRow]) -> Result<(), ArchiveError> {
    if folded.is_empty() {
        return Ok(());
    }
    execute(tx, UPSERT_ORDERS, &order_columns(folded.iter()).as_params()).await?;
    Ok(())
}

/// Folds the orders `ids` from their whole archived history.
pub(crate) async fn refold_from_archive(
    tx: &Tx<'_>,
    ids: &[Uuid],
) -> Result<Vec<OrderRow>, ArchiveError> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
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
        let (kind, payload): (String, Json<Value>) = (row.get(3), row.get(4));
        let payload = match decode(&kind, &payload.0) {
            Ok(payload) => payload,
            Err(reason) => {
                // Counted by the audit as a gap; never folded as a guess.
                tracing::error!(%reason, "An archived event does not decode; left out of its projection.");
                continue;
            }
        };
        let event = Archived {
            order_id: row.get(0),
            saga_id: row.get(1),
            seq: row.get(2),
            payload,
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

#[cfg(test)]
mod tests {
    use super::*;
    use engine::events::{Advanced, PaymentFact, Placed};

    fn event(order_id: Uuid, seq: i64, payload: Payload) -> Archived {
        Archived {
            order_id,
            saga_id: None,
            seq,
            payload,
            at: UNIX_EPOCH + Duration::from_millis(seq as u64),
        }
    }

    fn history(id: Uuid) -> Vec<Archived> {
        let fact = PaymentFact {
            reference: "p".into(),
            amount: 10,
            failed: None,
            corrected: false,
            sale: false,
            approved: false,
        };
        vec![
            event(
                id,
                1,
                Payload::OrderPlaced(Placed {
                    customer: "c".into(),
                    restaurant: "r".into(),
                    total: 10,
                    lines: vec![("x".into(), 1, 10)],
                    auto: true,
                }),
            ),
            event(id, 2, Payload::PaymentAuthorized(fact.clone())),
            event(id, 3, Payload::RestaurantApproved(Default::default())),
            event(id, 4, Payload::PaymentCaptured(fact)),
            event(id, 5, Payload::OrderApproved(Default::default())),
            event(id, 6, Payload::OrderDispatched(Advanced { by: "r".into() })),
        ]
    }

    /// A continuation is applied; a redelivered prefix changes nothing; a
    /// gap or an incomplete row asks for a refold instead of guessing.
    #[test]
    fn only_a_continuation_is_applied() {
        let id = Uuid::now_v7();
        let all = history(id);
        let whole = fold(&all).unwrap();
        let prefix = fold(&all[..3]).unwrap();
        assert_eq!(continued(prefix.clone(), &all[3..]), Some(whole.clone()));
        assert_eq!(continued(prefix.clone(), &all[1..]), Some(whole.clone()));
        assert_eq!(continued(whole.clone(), &all[2..4]), Some(whole.clone()));
        assert_eq!(
            continued(prefix.clone(), &all[4..]),
            None,
            "seq 4 is missing"
        );
        let holed = fold(&[all[0].clone(), all[2].clone()]).unwrap();
        assert!(!holed.is_complete());
        assert_eq!(continued(holed.clone(), &all[3..]), None);
        assert_eq!(
            continued(OrderRow::empty(id, None), &all),
            Some(whole),
            "a new order from its first event"
        );
    }
}
