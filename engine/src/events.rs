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
        ("NotificationSent", Orders),
        ("StockReclaimed", Batch),
        ("TimerFired", Timers),
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

#[cfg(test)]
mod tests {
    /// `docs/events.md` lists exactly the events of
    /// [`super::CATALOGUE`], each on its online stream, and every script in
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
        let code: Vec<(String, String)> = super::CATALOGUE
            .iter()
            .map(|(e, t)| (e.to_string(), t.as_str().to_string()))
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
                        super::CATALOGUE.iter().any(|(e, _)| *e == quoted),
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
