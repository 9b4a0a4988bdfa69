//! Saga events as they sit in the streams.
//!
//! Every entry has the fields `v` (schema version), `type`, `order`, `saga`,
//! `seq` (per order, from 1, no gaps), `ts` (Redis time, ms) and `data`
//! (compact JSON). Consumers accept [`SCHEMA_VERSION`] and the one before it,
//! so a deploy never strands sagas already in flight.

use std::collections::HashMap;

/// The schema version scripts write.
pub const SCHEMA_VERSION: u32 = 1;
/// The oldest version consumers still accept.
pub const SCHEMA_VERSION_MIN: u32 = SCHEMA_VERSION.saturating_sub(1);

/// Every event type, with the topic it is written to in the online lane.
pub const CATALOGUE: &[(&str, crate::keys::Topic)] = {
    use crate::keys::Topic::*;
    &[
        ("OrderPlaced", Orders),
        ("OrderApproved", Orders),
        ("OrderRejected", Orders),
        ("OrderDispatched", Orders),
        ("OrderConfirmed", Orders),
        ("PaymentAuthorized", Payments),
        ("PaymentDeclined", Payments),
        ("PaymentCaptured", Payments),
        ("PaymentVoided", Payments),
        ("PaymentRefunded", Payments),
        ("RestaurantApproved", Restaurant),
        ("RestaurantRejected", Restaurant),
        ("RestaurantUpserted", Menu),
        ("MenuItemUpserted", Menu),
    ]
};

/// One stream entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub stream: String,
    pub id: String,
    pub version: u32,
    pub kind: String,
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
        let version: u32 = fields
            .get("v")
            .and_then(|v| v.parse().ok())
            .ok_or(EventError::Field("v"))?;
        if !(SCHEMA_VERSION_MIN..=SCHEMA_VERSION).contains(&version) {
            return Err(EventError::Version(version));
        }
        let mut take = |k: &'static str| fields.remove(k).ok_or(EventError::Field(k));
        Ok(Self {
            stream: stream.to_string(),
            id: id.to_string(),
            version,
            kind: take("type")?,
            order: take("order")?,
            saga: take("saga")?,
            seq: take("seq")?.parse().map_err(|_| EventError::Field("seq"))?,
            ts_ms: take("ts")?.parse().map_err(|_| EventError::Field("ts"))?,
            data: take("data")?,
        })
    }

    /// The order id, for order events.
    pub fn order_id(&self) -> Option<uuid::Uuid> {
        self.order.parse().ok()
    }
}
