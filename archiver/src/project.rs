//! Projections: an order's archived events folded, in sequence, into the row
//! `orders` and `payments` hold — the same state Redis holds, rebuilt from
//! the log alone.

use std::time::SystemTime;

use serde_json::Value;
use uuid::Uuid;

/// One archived event of an order, as the fold reads it.
#[derive(Debug, Clone)]
pub struct Archived {
    pub order_id: Uuid,
    pub saga_id: Option<Uuid>,
    pub seq: i64,
    pub kind: String,
    pub payload: Value,
    pub at: SystemTime,
}

/// The projection row of one order.
#[derive(Debug, Clone, PartialEq)]
pub struct OrderRow {
    pub order_id: Uuid,
    pub saga_id: Option<Uuid>,
    pub customer: Option<String>,
    pub restaurant_id: Option<String>,
    pub status: String,
    pub reason: Option<String>,
    pub payment_status: String,
    pub decision: Option<String>,
    pub total: Option<i64>,
    pub created_at: Option<SystemTime>,
    pub updated_at: Option<SystemTime>,
    /// Highest sequence number seen, and how many events there are: equal
    /// when nothing is missing.
    pub last_seq: i64,
    pub events: i32,
    pub provider_ref: Option<String>,
}

impl OrderRow {
    /// At a pair no step follows: CONFIRMED with its capture, or REJECTED
    /// with its payment settled.
    pub fn is_final(&self) -> bool {
        match self.status.as_str() {
            "CONFIRMED" => self.payment_status == "CAPTURED",
            "REJECTED" => matches!(
                self.payment_status.as_str(),
                "NONE" | "DECLINED" | "VOIDED" | "REFUNDED"
            ),
            _ => false,
        }
    }
}

/// Folds `events` (one order's, sorted by `seq`) into its row.
pub fn fold(events: &[Archived]) -> Option<OrderRow> {
    let first = events.first()?;
    let mut row = OrderRow::empty(first.order_id, first.saga_id);
    for event in events {
        row.apply(event);
    }
    Some(row)
}

impl OrderRow {
    /// The row before an order's first event.
    pub fn empty(order_id: Uuid, saga_id: Option<Uuid>) -> Self {
        OrderRow {
            order_id,
            saga_id,
            customer: None,
            restaurant_id: None,
            status: "PENDING".into(),
            reason: None,
            payment_status: "NONE".into(),
            decision: None,
            total: None,
            created_at: None,
            updated_at: None,
            last_seq: 0,
            events: 0,
            provider_ref: None,
        }
    }

    /// Whether the row holds every event up to its last (no gap): then the
    /// next event can be applied on top of it.
    pub fn is_complete(&self) -> bool {
        i64::from(self.events) == self.last_seq
    }

    /// Applies the order's next event.
    pub fn apply(&mut self, event: &Archived) {
        debug_assert_eq!(event.order_id, self.order_id);
        let text = |k: &str| {
            event
                .payload
                .get(k)
                .and_then(Value::as_str)
                .map(str::to_string)
        };
        match event.kind.as_str() {
            "OrderPlaced" => {
                self.customer = text("c");
                self.restaurant_id = text("r");
                self.total = event.payload.get("t").and_then(Value::as_i64);
                self.created_at = Some(event.at);
            }
            "PaymentAuthorized" => {
                self.payment_status = "AUTHORIZED".into();
                if self.status == "PENDING" {
                    self.status = "PAID".into();
                }
            }
            "PaymentDeclined" => self.payment_status = "DECLINED".into(),
            "PaymentCaptured" => self.payment_status = "CAPTURED".into(),
            "PaymentVoided" => self.payment_status = "VOIDED".into(),
            "PaymentRefunded" => self.payment_status = "REFUNDED".into(),
            "OrderApproved" => self.status = "APPROVED".into(),
            "OrderRejected" => {
                self.status = "REJECTED".into();
                self.reason = text("reason");
            }
            "OrderDispatched" => self.status = "DISPATCHED".into(),
            "OrderConfirmed" => self.status = "CONFIRMED".into(),
            "RestaurantApproved" => self.decision = Some("approved".into()),
            "RestaurantRejected" => self.decision = Some("rejected".into()),
            _ => {}
        }
        if event.kind.starts_with("Payment")
            && let Some(reference) = text("ref").filter(|r| !r.is_empty())
        {
            self.provider_ref = Some(reference);
        }
        if self.saga_id.is_none() {
            self.saga_id = event.saga_id;
        }
        self.last_seq = self.last_seq.max(event.seq);
        self.events += 1;
        // A notification changes no state: Redis's `updated` stays too.
        if event.kind != "NotificationSent" {
            self.updated_at = Some(event.at);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(order: Uuid, seq: i64, kind: &str, payload: Value) -> Archived {
        Archived {
            order_id: order,
            saga_id: None,
            seq,
            kind: kind.into(),
            payload,
            at: std::time::UNIX_EPOCH + std::time::Duration::from_millis(seq as u64),
        }
    }

    /// Applying a continuation on top of a folded prefix gives the row a
    /// fold of the whole history gives.
    #[test]
    fn folding_in_parts_equals_folding_at_once() {
        let id = Uuid::now_v7();
        let events = vec![
            event(
                id,
                1,
                "OrderPlaced",
                serde_json::json!({"c": "c", "r": "r", "t": 10}),
            ),
            event(
                id,
                2,
                "PaymentAuthorized",
                serde_json::json!({"ref": "x", "amount": 10}),
            ),
            event(id, 3, "RestaurantApproved", serde_json::json!({})),
            event(
                id,
                4,
                "PaymentCaptured",
                serde_json::json!({"ref": "x", "amount": 10}),
            ),
            event(id, 5, "OrderApproved", serde_json::json!({})),
        ];
        let whole = fold(&events).unwrap();
        for cut in 1..events.len() {
            let mut row = fold(&events[..cut]).unwrap();
            assert!(row.is_complete());
            for e in &events[cut..] {
                row.apply(e);
            }
            assert_eq!(row, whole);
        }
        assert_eq!(
            (whole.status.as_str(), whole.payment_status.as_str()),
            ("APPROVED", "CAPTURED")
        );
    }
}
