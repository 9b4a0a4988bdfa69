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
    let mut row = OrderRow {
        order_id: first.order_id,
        saga_id: first.saga_id,
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
    };
    for event in events {
        debug_assert_eq!(event.order_id, row.order_id);
        let text = |k: &str| {
            event
                .payload
                .get(k)
                .and_then(Value::as_str)
                .map(str::to_string)
        };
        match event.kind.as_str() {
            "OrderPlaced" => {
                row.customer = text("c");
                row.restaurant_id = text("r");
                row.total = event.payload.get("t").and_then(Value::as_i64);
                row.created_at = Some(event.at);
            }
            "PaymentAuthorized" => {
                row.payment_status = "AUTHORIZED".into();
                if row.status == "PENDING" {
                    row.status = "PAID".into();
                }
            }
            "PaymentDeclined" => row.payment_status = "DECLINED".into(),
            "PaymentCaptured" => row.payment_status = "CAPTURED".into(),
            "PaymentVoided" => row.payment_status = "VOIDED".into(),
            "PaymentRefunded" => row.payment_status = "REFUNDED".into(),
            "OrderApproved" => row.status = "APPROVED".into(),
            "OrderRejected" => {
                row.status = "REJECTED".into();
                row.reason = text("reason");
            }
            "OrderDispatched" => row.status = "DISPATCHED".into(),
            "OrderConfirmed" => row.status = "CONFIRMED".into(),
            "RestaurantApproved" => row.decision = Some("approved".into()),
            "RestaurantRejected" => row.decision = Some("rejected".into()),
            _ => {}
        }
        if event.kind.starts_with("Payment")
            && let Some(reference) = text("ref").filter(|r| !r.is_empty())
        {
            row.provider_ref = Some(reference);
        }
        row.last_seq = row.last_seq.max(event.seq);
        row.events += 1;
        // A notification changes no state: Redis's `updated` stays too.
        if event.kind != "NotificationSent" {
            row.updated_at = Some(event.at);
        }
    }
    Some(row)
}
