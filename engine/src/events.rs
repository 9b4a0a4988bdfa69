//! Saga events as they sit in the streams.
//!
//! Every entry has the fields `v` (schema version), `type`, `order`, `saga`,
//! `seq` (per order, from 1, no gaps), `ts` (Redis time, ms) and `data`
//! (compact JSON). Consumers accept [`SCHEMA_VERSION`] and the one before it,
//! so a deploy never strands sagas already in flight.

use std::borrow::Cow;
use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::keys::Topic;

/// The schema version scripts write.
pub const SCHEMA_VERSION: u32 = 1;
/// The oldest version consumers still accept.
pub const SCHEMA_VERSION_MIN: u32 = SCHEMA_VERSION.saturating_sub(1);

/// One stream entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub stream: String,
    pub id: String,
    pub version: u32,
    pub kind: EventKind,
    /// Empty for menu events.
    pub order: String,
    pub saga: String,
    pub seq: u64,
    pub ts_ms: i64,
    pub data: String,
}

/// Why an entry is not a usable event (it goes to the dead-letter stream).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    #[error("field {0} is missing or malformed")]
    Field(&'static str),
    #[error(
        "schema version {0} is not supported (accepted: {SCHEMA_VERSION_MIN}..={SCHEMA_VERSION})"
    )]
    Version(u32),
    #[error("the data of a {kind} event is malformed: {reason}")]
    Payload { kind: EventKind, reason: String },
}

impl Event {
    /// Parses an entry; `None` when it is malformed (see [`Event::parse`]).
    pub fn from_fields(stream: &str, id: &str, fields: HashMap<String, String>) -> Option<Self> {
        Self::parse(stream, id, fields).ok()
    }

    pub fn parse(
        stream: &str,
        id: &str,
        mut fields: HashMap<String, String>,
    ) -> Result<Self, EventError> {
        Self::parse_with(stream, id, |k| fields.remove(k).map(Cow::Owned))
    }

    /// [`Event::parse`] of an entry that stays with its reader (for a dead
    /// letter): copies only the fields an event keeps.
    pub fn parse_ref(
        stream: &str,
        id: &str,
        fields: &crate::entries::Fields,
    ) -> Result<Self, EventError> {
        Self::parse_with(stream, id, |k| fields.get(k).map(Cow::Borrowed))
    }

    /// The event of the fields `field` gives by name: borrowed where only
    /// parsed (version, type, numbers), owned where the event keeps them.
    fn parse_with<'a>(
        stream: &str,
        id: &str,
        mut field: impl FnMut(&'static str) -> Option<Cow<'a, str>>,
    ) -> Result<Self, EventError> {
        let version: u32 = field("v")
            .and_then(|v| v.parse().ok())
            .ok_or(EventError::Field("v"))?;
        if !(SCHEMA_VERSION_MIN..=SCHEMA_VERSION).contains(&version) {
            return Err(EventError::Version(version));
        }
        let mut take = |k: &'static str| field(k).ok_or(EventError::Field(k));
        Ok(Self {
            stream: stream.to_string(),
            id: id.to_string(),
            version,
            kind: EventKind::parse(&take("type")?).ok_or(EventError::Field("type"))?,
            order: take("order")?.into_owned(),
            saga: take("saga")?.into_owned(),
            seq: take("seq")?.parse().map_err(|_| EventError::Field("seq"))?,
            ts_ms: take("ts")?.parse().map_err(|_| EventError::Field("ts"))?,
            data: take("data")?.into_owned(),
        })
    }

    /// The typed `data`.
    pub fn payload(&self) -> Result<Payload, EventError> {
        Payload::parse(self.kind, &self.data)
    }

    /// The order id, for order events.
    pub fn order_id(&self) -> Option<uuid::Uuid> {
        self.order.parse().ok()
    }
}

crate::domain::string_enum!(
    /// Every event type lunchrush writes (`type` of a stream entry).
    EventKind {
        OrderPlaced = "OrderPlaced",
        OrderApproved = "OrderApproved",
        OrderRejected = "OrderRejected",
        OrderDispatched = "OrderDispatched",
        OrderConfirmed = "OrderConfirmed",
        PaymentAuthorized = "PaymentAuthorized",
        PaymentDeclined = "PaymentDeclined",
        PaymentCaptured = "PaymentCaptured",
        PaymentVoided = "PaymentVoided",
        PaymentRefunded = "PaymentRefunded",
        RestaurantApproved = "RestaurantApproved",
        RestaurantRejected = "RestaurantRejected",
        RestaurantUpserted = "RestaurantUpserted",
        MenuItemUpserted = "MenuItemUpserted",
        NotificationSent = "NotificationSent",
        StockReclaimed = "StockReclaimed",
        TimerFired = "TimerFired",
    }
);

impl EventKind {
    /// The stream it is written to in the online lane.
    pub fn topic(self) -> Topic {
        use EventKind::*;
        match self {
            OrderPlaced | OrderApproved | OrderRejected | OrderDispatched | OrderConfirmed
            | NotificationSent => Topic::Orders,
            PaymentAuthorized | PaymentDeclined | PaymentCaptured | PaymentVoided
            | PaymentRefunded => Topic::Payments,
            RestaurantApproved | RestaurantRejected => Topic::Restaurant,
            RestaurantUpserted | MenuItemUpserted => Topic::Menu,
            StockReclaimed => Topic::Batch,
            TimerFired => Topic::Timers,
        }
    }

    /// A payment fact (`PaymentAuthorized` … `PaymentRefunded`).
    pub fn is_payment(self) -> bool {
        self.topic() == Topic::Payments
    }
}

/// `OrderPlaced`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placed {
    #[serde(rename = "c")]
    pub customer: String,
    #[serde(rename = "r")]
    pub restaurant: String,
    #[serde(rename = "t")]
    pub total: i64,
    /// `[item, qty, price]` per line.
    #[serde(rename = "l", deserialize_with = "list")]
    pub lines: Vec<(String, i64, i64)>,
    /// Whether the restaurant approved automatically when the order was
    /// placed (absent in events of earlier versions).
    #[serde(rename = "a", default)]
    pub auto: bool,
}

/// `OrderRejected`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejected {
    pub reason: String,
    /// The payment state when the order was rejected.
    pub pay: String,
    /// `[item, qty]` put back on hand.
    #[serde(default, deserialize_with = "list")]
    pub released: Vec<(String, i64)>,
}

/// `OrderDispatched`, `OrderConfirmed`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Advanced {
    /// Who moved it (restaurant, customer, admin, timer).
    pub by: String,
}

/// A payment fact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentFact {
    /// The provider's reference ('' before it gave one).
    #[serde(rename = "ref", default)]
    pub reference: String,
    pub amount: i64,
    /// `capture` when a void follows a refused capture.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed: Option<String>,
    /// Reconciliation's correction of a capture the provider does not hold.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub corrected: bool,
    /// A `PaymentCaptured` of a sale (authorized and captured in one
    /// provider call, recorded in one step): it stands for the
    /// `PaymentAuthorized` that is not written.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub sale: bool,
    /// A sale's `PaymentCaptured` that also approved its order (the
    /// restaurant approves automatically): the one event of the
    /// transition, standing for `RestaurantApproved` and `OrderApproved`
    /// too. Earlier versions wrote an `OrderApproved` (automatic) after it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub approved: bool,
}

/// `RestaurantApproved`, `OrderApproved`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approval {
    /// The restaurant's approval was taken by `record_payment` with the
    /// authorization (it approves automatically). A `RestaurantApproved`
    /// with it: the hop that recorded it goes on to the capture itself. An
    /// `OrderApproved` with it: a sale as earlier versions wrote it (its
    /// `RestaurantApproved` not written); a sale now is one
    /// `PaymentCaptured` (`approved`).
    #[serde(default)]
    pub automatic: bool,
}

/// `RestaurantRejected`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestaurantNote {
    #[serde(default)]
    pub note: String,
}

/// `RestaurantUpserted`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestaurantState {
    #[serde(rename = "r")]
    pub restaurant: String,
    #[serde(default)]
    pub name: Option<String>,
    pub open: bool,
    pub auto: bool,
}

/// `MenuItemUpserted`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ItemState {
    #[serde(rename = "r")]
    pub restaurant: String,
    #[serde(rename = "i")]
    pub item: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub price: Option<i64>,
    #[serde(default)]
    pub stock: Option<i64>,
    /// The stock change of a patch.
    #[serde(default)]
    pub delta: Option<i64>,
    pub available: bool,
    #[serde(default)]
    pub max_pc: Option<i64>,
}

/// `NotificationSent`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notified {
    pub kind: String,
    /// The idempotency key the notifier used.
    pub key: String,
    pub channel: String,
    pub attempts: i64,
}

/// `StockReclaimed`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reclaimed {
    #[serde(rename = "r")]
    pub restaurant: String,
    #[serde(rename = "i")]
    pub item: String,
    pub units: i64,
    pub stock: i64,
}

/// `TimerFired` (not an order event: the order is in the payload).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fired {
    #[serde(rename = "o")]
    pub order: String,
    #[serde(rename = "k")]
    pub kind: String,
    /// Due and fired, ms of Redis time.
    pub due: i64,
    pub fired: i64,
}

/// An event's `data`, typed by its `type`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    OrderPlaced(Placed),
    OrderApproved(Approval),
    OrderRejected(Rejected),
    OrderDispatched(Advanced),
    OrderConfirmed(Advanced),
    PaymentAuthorized(PaymentFact),
    PaymentDeclined(PaymentFact),
    PaymentCaptured(PaymentFact),
    PaymentVoided(PaymentFact),
    PaymentRefunded(PaymentFact),
    RestaurantApproved(Approval),
    RestaurantRejected(RestaurantNote),
    RestaurantUpserted(RestaurantState),
    MenuItemUpserted(ItemState),
    NotificationSent(Notified),
    StockReclaimed(Reclaimed),
    TimerFired(Fired),
}

impl Payload {
    /// Decodes the `data` of an event of `kind` (straight from the text,
    /// no intermediate JSON tree).
    pub fn parse(kind: EventKind, data: &str) -> Result<Self, EventError> {
        let mut text = serde_json::Deserializer::from_str(data);
        let payload = Self::decode(kind, &mut text).map_err(|e| payload_error(kind, e))?;
        text.end().map_err(|e| payload_error(kind, e))?;
        Ok(payload)
    }

    /// Decodes an already parsed `data` (the archive's JSON column).
    pub fn from_value(kind: EventKind, data: &Value) -> Result<Self, EventError> {
        Self::decode(kind, data).map_err(|e| payload_error(kind, e))
    }

    fn decode<'de, D>(kind: EventKind, data: D) -> Result<Self, serde_json::Error>
    where
        D: serde::Deserializer<'de, Error = serde_json::Error>,
    {
        use EventKind as K;
        Ok(match kind {
            K::OrderPlaced => Payload::OrderPlaced(Deserialize::deserialize(data)?),
            K::OrderApproved => Payload::OrderApproved(Deserialize::deserialize(data)?),
            K::OrderRejected => Payload::OrderRejected(Deserialize::deserialize(data)?),
            K::OrderDispatched => Payload::OrderDispatched(Deserialize::deserialize(data)?),
            K::OrderConfirmed => Payload::OrderConfirmed(Deserialize::deserialize(data)?),
            K::PaymentAuthorized => Payload::PaymentAuthorized(Deserialize::deserialize(data)?),
            K::PaymentDeclined => Payload::PaymentDeclined(Deserialize::deserialize(data)?),
            K::PaymentCaptured => Payload::PaymentCaptured(Deserialize::deserialize(data)?),
            K::PaymentVoided => Payload::PaymentVoided(Deserialize::deserialize(data)?),
            K::PaymentRefunded => Payload::PaymentRefunded(Deserialize::deserialize(data)?),
            K::RestaurantApproved => Payload::RestaurantApproved(Deserialize::deserialize(data)?),
            K::RestaurantRejected => Payload::RestaurantRejected(Deserialize::deserialize(data)?),
            K::RestaurantUpserted => Payload::RestaurantUpserted(Deserialize::deserialize(data)?),
            K::MenuItemUpserted => Payload::MenuItemUpserted(Deserialize::deserialize(data)?),
            K::NotificationSent => Payload::NotificationSent(Deserialize::deserialize(data)?),
            K::StockReclaimed => Payload::StockReclaimed(Deserialize::deserialize(data)?),
            K::TimerFired => Payload::TimerFired(Deserialize::deserialize(data)?),
        })
    }

    /// The payment fact of a payment event.
    pub fn payment(&self) -> Option<&PaymentFact> {
        match self {
            Payload::PaymentAuthorized(p)
            | Payload::PaymentDeclined(p)
            | Payload::PaymentCaptured(p)
            | Payload::PaymentVoided(p)
            | Payload::PaymentRefunded(p) => Some(p),
            _ => None,
        }
    }
}

fn payload_error(kind: EventKind, error: serde_json::Error) -> EventError {
    EventError::Payload {
        kind,
        reason: error.to_string(),
    }
}

/// A list the scripts may have written as `{}`: Lua's cjson cannot tell an
/// empty array from an empty object.
fn list<'de, D, T>(deserializer: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum ListOrEmpty<T> {
        List(Vec<T>),
        Empty(std::collections::BTreeMap<String, Value>),
    }
    match ListOrEmpty::deserialize(deserializer)? {
        ListOrEmpty::List(list) => Ok(list),
        ListOrEmpty::Empty(map) if map.is_empty() => Ok(Vec::new()),
        ListOrEmpty::Empty(_) => Err(serde::de::Error::custom("expected a list")),
    }
}

#[cfg(test)]
mod tests {
    /// `docs/events.md` lists exactly the events of
    /// [`super::EventKind`], each on its online stream, and every script in
    /// `lua/` has a row in `docs/scripts.md`.
    #[test]
    fn the_documented_catalogue_matches_the_code() {
        let section = include_str!("../../docs/events.md");
        let documented: Vec<(String, String)> = section
            .lines()
            .filter_map(|l| {
                let cells: Vec<&str> = l.split('|').map(str::trim).collect();
                let event = cells.get(1)?.strip_prefix('`')?.strip_suffix('`')?;
                let stream = cells.get(2)?.strip_prefix('`')?.strip_suffix('`')?;
                event
                    .chars()
                    .next()?
                    .is_uppercase()
                    .then(|| (event.to_string(), stream.to_string()))
            })
            .collect();
        let code: Vec<(String, String)> = super::EventKind::ALL
            .iter()
            .map(|e| (e.to_string(), e.topic().as_str().to_string()))
            .collect();
        assert_eq!(documented, code);
        // Every event type a script writes is in the catalogue.
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../lua");
        for entry in std::fs::read_dir(dir).unwrap().filter_map(Result::ok) {
            let Ok(source) = std::fs::read_to_string(entry.path()) else {
                continue;
            };
            for quoted in source.split('\'').skip(1).step_by(2) {
                let prefixes = [
                    "Order",
                    "Payment",
                    "Restaurant",
                    "MenuItem",
                    "Timer",
                    "Notification",
                    "Stock",
                ];
                let looks_like_event = prefixes.iter().any(|p| quoted.starts_with(p))
                    && quoted.len() > 8
                    && quoted.chars().all(|c| c.is_ascii_alphabetic());
                if looks_like_event {
                    assert!(
                        super::EventKind::parse(quoted).is_some(),
                        "{:?} writes {quoted}, which the catalogue lacks",
                        entry.file_name()
                    );
                }
            }
        }
        let scripts = include_str!("../../docs/scripts.md");
        for script in crate::scripts::Scripts::new().all() {
            assert!(
                scripts.contains(&format!("| `{}` |", script.name)),
                "{} undocumented",
                script.name
            );
        }
    }
}
