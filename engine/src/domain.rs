//! Domain types. Values are validated on the way in (`parse`), so nothing
//! invalid reaches a Lua script; statuses mirror the strings the scripts use.

use serde::Serialize;

/// At most this many lines per order: bounds every script's work.
pub const ORDER_LINES_MAX: usize = 50;
/// Quantity per line: 1..=99.
pub const QUANTITY_MAX: u32 = 99;
/// Ids (restaurant, item, customer) are 1..=64 characters of `[A-Za-z0-9_.-]`.
pub const ID_LEN_MAX: usize = 64;
/// Idempotency keys: 1..=128 printable characters without spaces.
pub const IDEMPOTENCY_KEY_LEN_MAX: usize = 128;
/// Names (restaurant, item): 1..=200 characters.
pub const NAME_LEN_MAX: usize = 200;
/// Prices are integer won, at most 10,000,000 per unit.
pub const PRICE_MAX: i64 = 10_000_000;
/// Stock on hand per item is at most 10,000,000 units.
pub const STOCK_MAX: i64 = 10_000_000;
/// Items per restaurant: bounds menu reads and the checker.
pub const MENU_ITEMS_MAX: usize = 1_000;

/// A validation failure, naming the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct Invalid {
    pub field: String,
    pub reason: String,
}

impl Invalid {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// Checks an id: restaurant, item or customer.
pub fn parse_id(field: &str, value: &str) -> Result<String, Invalid> {
    let ok = !value.is_empty()
        && value.len() <= ID_LEN_MAX
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
        // `.` and `..` are path steps to every URL-normalising client: such
        // an id could be created but never addressed again.
        && value != "."
        && value != "..";
    if ok {
        Ok(value.to_string())
    } else {
        Err(Invalid::new(
            field,
            format!(
                "must be 1 to {ID_LEN_MAX} characters of A-Z, a-z, 0-9, '_', '-', '.', and not `.` or `..`"
            ),
        ))
    }
}

pub fn parse_idempotency_key(value: &str) -> Result<String, Invalid> {
    let ok = !value.is_empty()
        && value.len() <= IDEMPOTENCY_KEY_LEN_MAX
        && value.bytes().all(|b| b.is_ascii_graphic());
    if ok {
        Ok(value.to_string())
    } else {
        Err(Invalid::new(
            "Idempotency-Key",
            format!(
                "must be 1 to {IDEMPOTENCY_KEY_LEN_MAX} printable ASCII characters without spaces"
            ),
        ))
    }
}

pub fn parse_name(field: &str, value: &str) -> Result<String, Invalid> {
    let trimmed = value.trim();
    if trimmed.is_empty() || trimmed.chars().count() > NAME_LEN_MAX {
        return Err(Invalid::new(
            field,
            format!("must be 1 to {NAME_LEN_MAX} characters"),
        ));
    }
    // Control characters (newline, ESC, NUL, ...) would forge log lines and
    // terminal output wherever a name is shown.
    if trimmed.chars().any(char::is_control) {
        return Err(Invalid::new(field, "must not contain control characters"));
    }
    Ok(trimmed.to_string())
}

pub fn parse_price(field: &str, value: i64) -> Result<i64, Invalid> {
    if (0..=PRICE_MAX).contains(&value) {
        Ok(value)
    } else {
        Err(Invalid::new(
            field,
            format!("must be between 0 and {PRICE_MAX} won"),
        ))
    }
}

pub fn parse_stock(field: &str, value: i64) -> Result<i64, Invalid> {
    if (0..=STOCK_MAX).contains(&value) {
        Ok(value)
    } else {
        Err(Invalid::new(
            field,
            format!("must be between 0 and {STOCK_MAX}"),
        ))
    }
}

/// One order line as the customer asks for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LineRequest {
    pub item: String,
    pub qty: u32,
}

/// A validated order placement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlaceOrder {
    pub customer: String,
    pub restaurant: String,
    pub lines: Vec<LineRequest>,
    pub expected_total: i64,
    pub idempotency_key: String,
}

impl PlaceOrder {
    /// Validates every field: ids, 1..=50 lines, qty 1..=99, no duplicate item.
    pub fn parse(
        customer: &str,
        restaurant: &str,
        lines: &[(String, i64)],
        expected_total: i64,
        idempotency_key: &str,
    ) -> Result<Self, Invalid> {
        let customer = parse_id("customer", customer)?;
        let restaurant = parse_id("restaurant_id", restaurant)?;
        let idempotency_key = parse_idempotency_key(idempotency_key)?;
        if lines.is_empty() || lines.len() > ORDER_LINES_MAX {
            return Err(Invalid::new(
                "items",
                format!(
                    "must hold 1 to {ORDER_LINES_MAX} lines, not {}",
                    lines.len()
                ),
            ));
        }
        let mut seen = std::collections::HashSet::new();
        let mut parsed = Vec::with_capacity(lines.len());
        for (index, (item, qty)) in lines.iter().enumerate() {
            let item = parse_id(&format!("items[{index}].item"), item)?;
            if !(1..=i64::from(QUANTITY_MAX)).contains(qty) {
                return Err(Invalid::new(
                    format!("items[{index}].qty"),
                    format!("must be between 1 and {QUANTITY_MAX}, not {qty}"),
                ));
            }
            if !seen.insert(item.clone()) {
                return Err(Invalid::new(
                    format!("items[{index}].item"),
                    format!("{item:?} appears twice; put the quantity on one line"),
                ));
            }
            parsed.push(LineRequest {
                item,
                qty: *qty as u32,
            });
        }
        if !(0..=PRICE_MAX * i64::from(QUANTITY_MAX) * ORDER_LINES_MAX as i64)
            .contains(&expected_total)
        {
            return Err(Invalid::new(
                "expected_total",
                "must be a non-negative amount in won",
            ));
        }
        Ok(Self {
            customer,
            restaurant,
            lines: parsed,
            expected_total,
            idempotency_key,
        })
    }

    /// A fingerprint of what was asked (not of who asked or with which key):
    /// the same key with another request is refused.
    pub fn fingerprint(&self) -> String {
        let mut text = format!("{}|{}", self.restaurant, self.expected_total);
        for line in &self.lines {
            text.push_str(&format!("|{}x{}", line.item, line.qty));
        }
        format!("{:016x}", crate::keys::fnv1a(text.as_bytes()))
    }
}

macro_rules! string_enum {
    ($(#[$meta:meta])* $name:ident { $($variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
        pub enum $name { $(#[serde(rename = $text)] $variant),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }

            pub fn parse(text: &str) -> Option<Self> {
                match text { $($text => Some($name::$variant),)+ _ => None }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}
pub(crate) use string_enum;

string_enum!(
    /// Where an order is in its saga.
    OrderStatus {
        Pending = "PENDING",
        Paid = "PAID",
        Approved = "APPROVED",
        Dispatched = "DISPATCHED",
        Confirmed = "CONFIRMED",
        Rejected = "REJECTED",
    }
);

string_enum!(
    /// Where an order's payment is.
    PaymentStatus {
        None = "NONE",
        Authorized = "AUTHORIZED",
        Captured = "CAPTURED",
        Refunded = "REFUNDED",
        Declined = "DECLINED",
        Voided = "VOIDED",
    }
);

string_enum!(
    /// A delayed task on the timer wheel (members are `<kind>|<order>`).
    TimerKind {
        PaymentWindow = "payment_window",
        ApprovalTimeout = "approval_timeout",
        ConfirmNotice = "confirm_notice",
        AutoConfirm = "auto_confirm",
    }
);

string_enum!(
    /// Why an order was rejected (`reason` on the order and its events).
    RejectReason {
        PaymentDeclined = "payment_declined",
        RestaurantRejected = "restaurant_rejected",
        ApprovalTimeout = "approval_timeout",
        Cancelled = "cancelled",
        Reconciled = "reconciled",
        CaptureFailed = "capture_failed",
        PaymentWindow = "payment_window",
        Operator = "operator",
    }
);

string_enum!(
    /// A restaurant's answer to a paid order.
    Decision {
        Approve = "approve",
        Reject = "reject",
    }
);

string_enum!(
    /// A menu write: replace the whole record, or change the given fields.
    Upsert {
        Put = "put",
        Patch = "patch",
    }
);

impl OrderStatus {
    /// APPROVED, DISPATCHED and CONFIRMED: the restaurant accepted, money taken.
    pub fn is_fulfilled(self) -> bool {
        matches!(
            self,
            OrderStatus::Approved | OrderStatus::Dispatched | OrderStatus::Confirmed
        )
    }
}

/// The rule: the pairs an order may rest in.
pub fn is_allowed_pair(status: OrderStatus, pay: PaymentStatus) -> bool {
    match status {
        OrderStatus::Approved | OrderStatus::Dispatched | OrderStatus::Confirmed => {
            pay == PaymentStatus::Captured
        }
        OrderStatus::Rejected => matches!(
            pay,
            PaymentStatus::None
                | PaymentStatus::Declined
                | PaymentStatus::Voided
                | PaymentStatus::Refunded
        ),
        OrderStatus::Pending | OrderStatus::Paid => false,
    }
}

/// A pair no step follows (the order may leave live state, see
/// [`crate::retire`]): CONFIRMED with its capture, or REJECTED with its
/// payment settled.
pub fn is_final_pair(status: OrderStatus, pay: PaymentStatus) -> bool {
    match status {
        OrderStatus::Confirmed => pay == PaymentStatus::Captured,
        OrderStatus::Rejected => is_allowed_pair(status, pay),
        _ => false,
    }
}

/// Whether `(status, pay)` may be seen while the saga is still running.
pub fn is_in_flight_pair(status: OrderStatus, pay: PaymentStatus) -> bool {
    matches!(
        (status, pay),
        (OrderStatus::Pending, PaymentStatus::None)
            | (OrderStatus::Paid, PaymentStatus::Authorized)
            | (OrderStatus::Rejected, PaymentStatus::Authorized)
            | (OrderStatus::Rejected, PaymentStatus::Captured)
    )
}

/// One line of a placed order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Line {
    pub item: String,
    pub qty: u32,
    pub price: i64,
    /// Counted towards the item's max_per_customer.
    #[serde(skip)]
    pub counted: bool,
}

/// An order as Redis holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Order {
    pub id: uuid::Uuid,
    pub partition: u16,
    pub saga: String,
    pub customer: String,
    pub restaurant: String,
    pub status: OrderStatus,
    pub reason: String,
    pub pay: PaymentStatus,
    pub total: i64,
    pub lines: Vec<Line>,
    pub version: u64,
    pub seq: u64,
    pub created_ms: i64,
    pub updated_ms: i64,
    /// '' | 'approved' | 'rejected': the restaurant's answer.
    pub decision: String,
    /// The provider's payment reference.
    pub psp_ref: String,
    /// Whether its restaurant approved automatically when it was placed
    /// (the payment hop then authorizes and captures in one provider call).
    pub auto_approve: bool,
    /// Where this order's events went: (stream key, entry id).
    pub events: Vec<(String, String)>,
    /// Notification kinds already sent (their send records).
    pub notified: Vec<String>,
}

impl Order {
    /// The order as its `OrderPlaced` event describes it, just placed
    /// (PENDING, no payment, version 1): what the payment hop needs to act
    /// without reading it back.
    pub fn placed(
        id: uuid::Uuid,
        partition: u16,
        saga: &str,
        created_ms: i64,
        placed: crate::events::Placed,
    ) -> Self {
        let lines = placed.lines.into_iter().map(|(item, qty, price)| Line {
            item,
            qty: u32::try_from(qty).unwrap_or(0),
            price,
            counted: false,
        });
        Self {
            id,
            partition,
            saga: saga.to_string(),
            customer: placed.customer,
            restaurant: placed.restaurant,
            status: OrderStatus::Pending,
            reason: String::new(),
            pay: PaymentStatus::None,
            total: placed.total,
            lines: lines.collect(),
            version: 1,
            seq: 1,
            created_ms,
            updated_ms: created_ms,
            decision: String::new(),
            psp_ref: String::new(),
            auto_approve: placed.auto,
            events: Vec::new(),
            notified: Vec::new(),
        }
    }

    /// Builds an order from the hash fields (`HGETALL`); `None` if malformed.
    pub fn from_fields(
        partition: u16,
        fields: &std::collections::HashMap<String, String>,
    ) -> Option<Self> {
        let get = |k: &str| fields.get(k).map(String::as_str);
        let lines: Vec<(String, u32, i64, u8)> = serde_json::from_str(get("lines")?).ok()?;
        Some(Self {
            id: get("id")?.parse().ok()?,
            partition,
            saga: get("saga")?.to_string(),
            customer: get("cust")?.to_string(),
            restaurant: get("rid")?.to_string(),
            status: OrderStatus::parse(get("status")?)?,
            reason: get("reason").unwrap_or("").to_string(),
            pay: PaymentStatus::parse(get("pay")?)?,
            total: get("total")?.parse().ok()?,
            lines: lines
                .into_iter()
                .map(|(item, qty, price, counted)| Line {
                    item,
                    qty,
                    price,
                    counted: counted == 1,
                })
                .collect(),
            version: get("ver")?.parse().ok()?,
            seq: get("seq").unwrap_or("0").parse().ok()?,
            created_ms: get("created")?.parse().ok()?,
            updated_ms: get("updated").unwrap_or("0").parse().ok()?,
            decision: get("decision").unwrap_or("").to_string(),
            psp_ref: get("psp").unwrap_or("").to_string(),
            auto_approve: get("auto") == Some("1"),
            events: get("evs")
                .unwrap_or("")
                .split_whitespace()
                .filter_map(|e| e.rsplit_once('|'))
                .map(|(s, id)| (s.to_string(), id.to_string()))
                .collect(),
            notified: {
                let mut kinds: Vec<String> = fields
                    .keys()
                    .filter_map(|k| k.strip_prefix("sent:").map(str::to_string))
                    .collect();
                kinds.sort();
                kinds
            },
        })
    }
}

/// A restaurant and its menu, as the read model holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Menu {
    pub restaurant_id: String,
    pub name: String,
    pub open: bool,
    pub auto_approve: bool,
    pub items: Vec<MenuItem>,
}

/// One menu item.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MenuItem {
    pub item: String,
    pub name: String,
    pub price: i64,
    /// Units on hand (sellable now).
    pub stock: i64,
    pub available: bool,
    pub max_per_customer: Option<i64>,
    /// Initial stock plus restocks (for the conservation check).
    #[serde(skip)]
    pub supplied: i64,
    /// Bumped by every stock change (reconciliation's compare-and-set).
    #[serde(skip)]
    pub stock_version: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(pairs: &[(&str, i64)]) -> Vec<(String, i64)> {
        pairs.iter().map(|(i, q)| (i.to_string(), *q)).collect()
    }

    #[test]
    fn placement_validation_names_the_field() {
        let ok = PlaceOrder::parse("c1", "r1", &lines(&[("a", 1)]), 100, "k1");
        assert!(ok.is_ok());
        let cases = [
            (lines(&[]), "items"),
            (lines(&[("a", 0)]), "items[0].qty"),
            (lines(&[("a", 100)]), "items[0].qty"),
            (lines(&[("a", 1), ("a", 2)]), "items[1].item"),
            (lines(&[("bad item", 1)]), "items[0].item"),
        ];
        for (lines, field) in cases {
            let error = PlaceOrder::parse("c1", "r1", &lines, 100, "k1").unwrap_err();
            assert_eq!(error.field, field);
        }
        let many: Vec<(String, i64)> = (0..51).map(|i| (format!("i{i}"), 1)).collect();
        assert_eq!(
            PlaceOrder::parse("c", "r", &many, 0, "k")
                .unwrap_err()
                .field,
            "items"
        );
        assert_eq!(
            PlaceOrder::parse("c", "r", &lines(&[("a", 1)]), 0, "")
                .unwrap_err()
                .field,
            "Idempotency-Key"
        );
    }

    /// Path steps are not ids; names carry no control characters.
    #[test]
    fn ids_and_names_refuse_what_cannot_be_shown_or_addressed() {
        for bad in [".", "..", "", "a b", "a/b"] {
            assert!(parse_id("id", bad).is_err(), "{bad:?}");
        }
        for good in ["a.b", "...", "r-1_x"] {
            assert!(parse_id("id", good).is_ok(), "{good:?}");
        }
        for bad in ["a\nb", "a\u{1b}[31mb", "a\0b", "a\u{7f}b", "a\u{85}b"] {
            assert!(parse_name("name", bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            parse_name("name", "  Kimchi jjigae 김치찌개 ").unwrap(),
            "Kimchi jjigae 김치찌개"
        );
    }

    #[test]
    fn the_fingerprint_depends_on_what_was_asked() {
        let a = PlaceOrder::parse("c1", "r1", &lines(&[("a", 1)]), 100, "k1").unwrap();
        let b = PlaceOrder::parse("c2", "r1", &lines(&[("a", 1)]), 100, "k2").unwrap();
        let c = PlaceOrder::parse("c1", "r1", &lines(&[("a", 2)]), 100, "k1").unwrap();
        assert_eq!(a.fingerprint(), b.fingerprint());
        assert_ne!(a.fingerprint(), c.fingerprint());
    }

    #[test]
    fn allowed_pairs_are_exactly_the_rule() {
        use OrderStatus as O;
        use PaymentStatus as P;
        let allowed: Vec<(O, P)> = O::ALL
            .iter()
            .flat_map(|&o| P::ALL.iter().map(move |&p| (o, p)))
            .filter(|&(o, p)| is_allowed_pair(o, p))
            .collect();
        assert_eq!(
            allowed,
            vec![
                (O::Approved, P::Captured),
                (O::Dispatched, P::Captured),
                (O::Confirmed, P::Captured),
                (O::Rejected, P::None),
                (O::Rejected, P::Refunded),
                (O::Rejected, P::Declined),
                (O::Rejected, P::Voided),
            ]
        );
    }
}
