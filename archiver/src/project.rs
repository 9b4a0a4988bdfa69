//! Projections: an order's archived events folded, in sequence, into its
//! `orders` row (the `payments` view reads it too) — the same state Redis
//! holds, rebuilt from the log alone.

use std::time::SystemTime;

use engine::events::{EventKind, Payload};
use uuid::Uuid;

/// One archived event of an order, as the fold reads it.
#[derive(Debug, Clone)]
pub struct Archived {
    pub order_id: Uuid,
    pub saga_id: Option<Uuid>,
    pub seq: i64,
    pub payload: Payload,
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
        match &event.payload {
            Payload::OrderPlaced(placed) => {
                self.customer = Some(placed.customer.clone());
                self.restaurant_id = Some(placed.restaurant.clone());
                self.total = Some(placed.total);
                self.created_at = Some(event.at);
            }
            Payload::PaymentAuthorized(_) => {
                self.payment_status = "AUTHORIZED".into();
                if self.status == "PENDING" {
                    self.status = "PAID".into();
                }
            }
            Payload::PaymentDeclined(_) => self.payment_status = "DECLINED".into(),
            Payload::PaymentCaptured(fact) => {
                self.payment_status = "CAPTURED".into();
                // A sale stands for its authorization too; one that approved
                // its order, for the approvals as well.
                if fact.approved {
                    self.status = "APPROVED".into();
                    self.decision = Some("approved".into());
                } else if fact.sale && self.status == "PENDING" {
                    self.status = "PAID".into();
                }
            }
            Payload::PaymentVoided(_) => self.payment_status = "VOIDED".into(),
            Payload::PaymentRefunded(_) => self.payment_status = "REFUNDED".into(),
            Payload::OrderApproved(approval) => {
                self.status = "APPROVED".into();
                // A sale's approval as earlier versions wrote it stands for
                // its `RestaurantApproved`.
                if approval.automatic {
                    self.decision = Some("approved".into());
                }
            }
            Payload::OrderRejected(rejected) => {
                self.status = "REJECTED".into();
                self.reason = Some(rejected.reason.clone());
            }
            Payload::OrderDispatched(_) => self.status = "DISPATCHED".into(),
            Payload::OrderConfirmed(_) => self.status = "CONFIRMED".into(),
            Payload::RestaurantApproved(_) => self.decision = Some("approved".into()),
            Payload::RestaurantRejected(_) => self.decision = Some("rejected".into()),
            _ => {}
        }
        if let Some(fact) = event.payload.payment()
            && !fact.reference.is_empty()
        {
            self.provider_ref = Some(fact.reference.clone());
        }
        if self.saga_id.is_none() {
            self.saga_id = event.saga_id;
        }
        self.last_seq = self.last_seq.max(event.seq);
        self.events += 1;
        // A notification changes no state: Redis's `updated` stays too.
        if !matches!(event.payload, Payload::NotificationSent(_)) {
            self.updated_at = Some(event.at);
        }
    }
}

/// The event kind of an archived row, and its payload decoded.
pub fn decode(kind: &str, payload: &serde_json::Value) -> Result<Payload, String> {
    let kind = EventKind::parse(kind).ok_or_else(|| format!("unknown event type {kind:?}"))?;
    Payload::from_value(kind, payload).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(order: Uuid, seq: i64, kind: &str, payload: serde_json::Value) -> Archived {
        Archived {
            order_id: order,
            saga_id: None,
            seq,
            payload: decode(kind, &payload).unwrap(),
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
                serde_json::json!({"c": "c", "r": "r", "t": 10, "l": [["x", 1, 10]]}),
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

    /// A sale's one event (`PaymentCaptured` sale and approved), and the
    /// two earlier versions wrote (`PaymentCaptured` sale, `OrderApproved`
    /// automatic), fold to the row its four would: approved, captured,
    /// decided, with the provider's reference; only the counts differ.
    #[test]
    fn a_sale_folds_like_its_four_events() {
        let id = Uuid::now_v7();
        let placed = event(
            id,
            1,
            "OrderPlaced",
            serde_json::json!({"c": "c", "r": "r", "t": 10, "l": [["x", 1, 10]], "a": true}),
        );
        let four = [
            placed.clone(),
            event(
                id,
                2,
                "PaymentAuthorized",
                serde_json::json!({"ref": "x", "amount": 10}),
            ),
            event(
                id,
                3,
                "RestaurantApproved",
                serde_json::json!({"automatic": true}),
            ),
            event(
                id,
                4,
                "PaymentCaptured",
                serde_json::json!({"ref": "x", "amount": 10}),
            ),
            event(id, 5, "OrderApproved", serde_json::json!({})),
        ];
        let mut captured = event(
            id,
            2,
            "PaymentCaptured",
            serde_json::json!({"ref": "x", "amount": 10, "sale": true}),
        );
        captured.at = four[4].at;
        let mut approved = event(
            id,
            3,
            "OrderApproved",
            serde_json::json!({"automatic": true}),
        );
        approved.at = four[4].at;
        let mut one = event(
            id,
            2,
            "PaymentCaptured",
            serde_json::json!({"ref": "x", "amount": 10, "sale": true, "approved": true}),
        );
        one.at = four[4].at;
        let sale = fold(&[placed.clone(), one]).unwrap();
        assert!(sale.is_complete());
        let mut expected = fold(&four).unwrap();
        (expected.last_seq, expected.events) = (2, 2);
        assert_eq!(sale, expected);
        let earlier = fold(&[placed, captured, approved]).unwrap();
        (expected.last_seq, expected.events) = (3, 3);
        assert_eq!(earlier, expected);
        assert_eq!(
            (
                sale.status.as_str(),
                sale.decision.as_deref(),
                sale.provider_ref.as_deref()
            ),
            ("APPROVED", Some("approved"), Some("x"))
        );
    }
}
