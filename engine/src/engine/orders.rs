//! Placing orders (idempotent, one script) and reading them back.

use super::*;
use crate::scripts::place_order;
use crate::scripts::replies::{PlaceRefusal, Placement};

impl Engine {
    /// The first answer to `request`'s Idempotency-Key, if this same request
    /// was placed before (reads only; `place_order` is what decides). For
    /// answering a retry while new placements are refused.
    pub async fn replay(&self, request: &PlaceOrder) -> Result<Option<Placed>, EngineError> {
        let keys = self.keys();
        let guard: Option<String> = self
            .redis()
            .get(keys.idempotency_guard(&request.customer, &request.idempotency_key))
            .await?;
        // The guard holds the answer itself when the script kept it (see
        // `place_order`); else the answer is in the restaurant's partition,
        // the guard holding the bare fingerprint or already gone (it is set
        // before the answer, so it expires first).
        let record = match guard {
            Some(record) if record.starts_with('{') => Some(record),
            _ => {
                let p = keys.partition_of_restaurant(&request.restaurant);
                self.redis()
                    .get(keys.idempotency(p, &request.customer, &request.idempotency_key))
                    .await?
            }
        };
        match record {
            Some(record) => first_answer(&record, &request.fingerprint()),
            None => Ok(None),
        }
    }

    /// Places an order: one EVALSHA that checks the Idempotency-Key, the
    /// restaurant, every item and the total, reserves all lines or none, and
    /// emits OrderPlaced.
    ///
    /// A guard in the customer's partition catches the same key reused for
    /// a restaurant of another partition; a refusal leaves no guard of its
    /// own, so it changes nothing. Where the guard may share the script's
    /// call (always on a standalone Redis; on a Cluster when the customer's
    /// partition is the restaurant's), the guard is the key's first answer
    /// (fingerprint, order, total), read and written by the script: one key
    /// and one round trip. Elsewhere the guard holds the bare fingerprint,
    /// set first (`SET NX GET`) and removed again if the script refuses, and
    /// the answer lives in the restaurant's partition (the order's slot).
    pub async fn place_order(&self, request: &PlaceOrder) -> Result<Placed, PlaceError> {
        let keys = self.keys();
        let fingerprint = request.fingerprint();
        let p = keys.partition_of_restaurant(&request.restaurant);
        let guard_key = keys.idempotency_guard(&request.customer, &request.idempotency_key);
        if !self.redis().is_clustered() || keys.partition_of_customer(&request.customer) == p {
            return self
                .run_place_order(request, p, &fingerprint, Some(guard_key))
                .await;
        }
        let previous: Option<String> = self
            .redis()
            .set(
                &guard_key,
                fingerprint.as_str(),
                Some(Expiration::PX(IDEMPOTENCY_TTL_MS as i64)),
                Some(SetOptions::NX),
                true,
            )
            .await?;
        if let Some(previous) = &previous {
            // The guard holds a first answer when a placement for a
            // restaurant of the customer's own partition kept it.
            if previous.starts_with('{')
                && let Some(placed) = first_answer(previous, &fingerprint)?
            {
                return Ok(placed);
            }
            if previous != &fingerprint {
                return Err(PlaceError::IdempotencyConflict {
                    order: "another request".into(),
                });
            }
        }
        let result = self.run_place_order(request, p, &fingerprint, None).await;
        if result.is_err() && previous.is_none() {
            let _: Result<i64, _> = self.redis().del(&guard_key).await;
        }
        result
    }

    /// Runs `place_order` in the restaurant's partition `p`; `guard`: the
    /// guard key when the script keeps it itself.
    async fn run_place_order(
        &self,
        request: &PlaceOrder,
        p: u16,
        fingerprint: &str,
        guard: Option<String>,
    ) -> Result<Placed, PlaceError> {
        let keys = self.keys();
        let order_id = crate::ids::new_order_id(p);
        let rid = request.restaurant.as_str();
        let guarded = guard.is_some();
        // Unused when not guarded: any key of the script's slot.
        let guard_key = guard.unwrap_or_else(|| keys.inflight(p));
        let placement = self
            .scripts()
            .place_order
            .run(
                self.redis(),
                place_order::Keys {
                    restaurant_key: keys.restaurant(p, rid),
                    order_key: keys.order(p, &order_id),
                    idem_key: keys.idempotency(p, &request.customer, &request.idempotency_key),
                    stream: keys.stream(p, Topic::Orders),
                    inflight: keys.inflight(p),
                    timers: keys.wheel(p),
                    guard_key,
                    lines: request
                        .lines
                        .iter()
                        .map(|l| {
                            [
                                keys.item(p, rid, &l.item),
                                keys.item_per_customer(p, rid, &l.item),
                            ]
                        })
                        .collect(),
                },
                place_order::Args {
                    order_id: order_id.to_string(),
                    saga: crate::ids::new_saga_id().to_string(),
                    customer: request.customer.clone(),
                    rid: rid.to_string(),
                    fingerprint: fingerprint.to_string(),
                    expected_total: request.expected_total,
                    idem_ttl: std::time::Duration::from_millis(IDEMPOTENCY_TTL_MS),
                    payment_window: self.config().timers.payment_window,
                    guarded,
                    lines: request
                        .lines
                        .iter()
                        .map(|l| (l.item.clone(), i64::from(l.qty)))
                        .collect(),
                },
            )
            .await?;
        let placed = placed(placement, rid)?;
        if !placed.duplicate {
            metrics::counter!("lunchrush_orders_placed_total").increment(1);
            self.woke(Wake::Payment, p);
        }
        Ok(placed)
    }

    /// The order, if it exists (and its id is one of ours).
    pub async fn order(&self, id: &Uuid) -> Result<Option<Order>, EngineError> {
        let Some(p) = self.keys().partition_of_order(id) else {
            return Ok(None);
        };
        let fields: HashMap<String, String> =
            self.redis().hgetall(self.keys().order(p, id)).await?;
        if fields.is_empty() {
            return Ok(None);
        }
        Ok(Order::from_fields(p, &fields))
    }

    /// Sagas not yet at rest, over every partition (the in-flight indexes'
    /// sizes): 0 once the system is quiet.
    pub async fn unsettled(&self) -> Result<u64, EngineError> {
        let mut total = 0;
        for p in 0..self.keys().partitions() {
            let n: u64 = self.redis().zcard(self.keys().inflight(p)).await?;
            total += n;
        }
        Ok(total)
    }

    /// Every order id of a partition (SCAN; for tests and tools, not the
    /// online path).
    pub async fn order_ids(&self, partition: u16) -> Result<Vec<Uuid>, EngineError> {
        use fred::types::scan::Scanner;
        use futures::StreamExt;
        let mut ids = Vec::new();
        let mut pages = self
            .redis()
            .scan(self.keys().order_pattern(partition), Some(1_000), None);
        while let Some(page) = pages.next().await {
            let mut page = page?;
            for key in page.take_results().unwrap_or_default() {
                if let Some(id) = key
                    .as_str()
                    .and_then(|k| k.rsplit(':').next())
                    .and_then(|id| id.parse().ok())
                {
                    ids.push(id);
                }
            }
            Scanner::next(page);
        }
        Ok(ids)
    }

    /// Visits every order of partition `p`, a SCAN page at a time (bounded
    /// memory: one page of orders at once).
    pub async fn for_each_order(
        &self,
        partition: u16,
        mut visit: impl FnMut(Order),
    ) -> Result<(), EngineError> {
        use fred::types::scan::Scanner;
        use futures::StreamExt;
        let mut pages = self
            .redis()
            .scan(self.keys().order_pattern(partition), Some(1_000), None);
        while let Some(page) = pages.next().await {
            let mut page = page?;
            let keys = page.take_results().unwrap_or_default();
            let reads = keys.iter().map(|key| {
                self.redis()
                    .hgetall::<HashMap<String, String>, _>(key.clone())
            });
            let orders = futures::future::try_join_all(reads).await?;
            Scanner::next(page);
            for fields in orders {
                if let Some(order) = Order::from_fields(partition, &fields) {
                    visit(order);
                }
            }
        }
        Ok(())
    }

    /// Timers scheduled in partition `p` (for metrics).
    pub async fn timers_scheduled(&self, p: u16) -> Result<u64, EngineError> {
        Ok(self.redis().zcard(self.keys().wheel(p)).await?)
    }

    /// The order's events in sequence, read from the live streams.
    pub async fn order_events(
        &self,
        order: &Order,
    ) -> Result<Vec<crate::events::Event>, EngineError> {
        let reads =
            order.events.iter().map(|(stream, id)| async move {
                let entries: Vec<fred::types::streams::XReadValue<String, String, String>> = self
                    .redis()
                    .xrange_values(stream.as_str(), id.as_str(), id.as_str(), Some(1))
                    .await?;
                Ok::<_, EngineError>(entries.into_iter().next().and_then(|(id, fields)| {
                    crate::events::Event::from_fields(stream, &id, fields)
                }))
            });
        let mut events: Vec<_> = futures::future::try_join_all(reads)
            .await?
            .into_iter()
            .flatten()
            .collect();
        events.sort_by_key(|e| e.seq);
        Ok(events)
    }
}

/// `place_order`'s reply: the placement, or the refusal it names. A reply
/// that is none of those is an error naming the script, never a default.
/// The placement, or the refusal as the API reports it.
fn placed(placement: Placement, rid: &str) -> Result<Placed, PlaceError> {
    let refusal = match placement {
        Placement::Placed {
            order_id,
            total,
            duplicate,
        } => {
            return Ok(Placed {
                order_id,
                total,
                duplicate,
            });
        }
        Placement::Refused(refusal) => refusal,
    };
    Err(match refusal {
        PlaceRefusal::IdempotencyConflict(order) => PlaceError::IdempotencyConflict { order },
        PlaceRefusal::RestaurantNotFound => PlaceError::RestaurantNotFound(rid.into()),
        PlaceRefusal::RestaurantClosed => PlaceError::RestaurantClosed(rid.into()),
        PlaceRefusal::ItemNotFound(items) => PlaceError::ItemNotFound(items),
        PlaceRefusal::ItemUnavailable(items) => PlaceError::ItemUnavailable(items),
        PlaceRefusal::OutOfStock(items) => PlaceError::OutOfStock(items),
        PlaceRefusal::LimitExceeded(items) => PlaceError::LimitExceeded(items),
        PlaceRefusal::PriceChanged { current_total } => PlaceError::PriceChanged { current_total },
    })
}

/// The first answer a key's record holds (JSON: fingerprint, order, total),
/// if it answered the request with `fingerprint`.
fn first_answer(record: &str, fingerprint: &str) -> Result<Option<Placed>, EngineError> {
    let parsed: serde_json::Value =
        serde_json::from_str(record).map_err(|_| EngineError::Reply {
            script: "place_order",
            reply: vec![record.to_string()],
        })?;
    let order_id = parsed["order"].as_str().and_then(|id| id.parse().ok());
    Ok(
        match (parsed["fp"].as_str(), order_id, parsed["total"].as_i64()) {
            (Some(fp), Some(order_id), Some(total)) if fp == fingerprint => Some(Placed {
                order_id,
                total,
                duplicate: true,
            }),
            _ => None,
        },
    )
}
