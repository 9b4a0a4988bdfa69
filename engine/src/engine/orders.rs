//! Placing orders (idempotent, one script) and reading them back.

use super::*;

impl Engine {
    /// The first answer to `request`'s Idempotency-Key, if this same request
    /// was placed before (reads only; `place_order` is what decides). For
    /// answering a retry while new placements are refused.
    pub async fn replay(&self, request: &PlaceOrder) -> Result<Option<Placed>, EngineError> {
        let keys = self.keys();
        let p = keys.partition_of_restaurant(&request.restaurant);
        let record: Option<String> = self
            .redis()
            .get(keys.idempotency(p, &request.customer, &request.idempotency_key))
            .await?;
        let Some(record) = record else {
            return Ok(None);
        };
        let record: serde_json::Value =
            serde_json::from_str(&record).map_err(|_| EngineError::Reply {
                script: "place_order",
                reply: vec![record.clone()],
            })?;
        let order_id = record["order"].as_str().and_then(|id| id.parse().ok());
        match (record["fp"].as_str(), order_id, record["total"].as_i64()) {
            (Some(fp), Some(order_id), Some(total)) if fp == request.fingerprint() => {
                Ok(Some(Placed {
                    order_id,
                    total,
                    duplicate: true,
                }))
            }
            _ => Ok(None),
        }
    }

    /// Places an order: one EVALSHA that checks the Idempotency-Key, the
    /// restaurant, every item and the total, reserves all lines or none, and
    /// emits OrderPlaced.
    ///
    /// The key's first answer lives in the restaurant's partition (same slot
    /// as the order, so the script sees it). A fingerprint guard in the
    /// customer's partition (`SET NX GET`, before the script) catches the
    /// same key reused for a restaurant of another partition; a refused
    /// placement removes the guard it created, so a refusal changes nothing.
    pub async fn place_order(&self, request: &PlaceOrder) -> Result<Placed, PlaceError> {
        let keys = self.keys();
        let fingerprint = request.fingerprint();
        let guard_key = keys.idempotency_guard(&request.customer, &request.idempotency_key);
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
        if let Some(previous) = &previous
            && previous != &fingerprint
        {
            return Err(PlaceError::IdempotencyConflict {
                order: "another request".into(),
            });
        }
        let result = self.run_place_order(request, &fingerprint).await;
        if result.is_err() && previous.is_none() {
            let _: Result<i64, _> = self.redis().del(&guard_key).await;
        }
        result
    }

    async fn run_place_order(
        &self,
        request: &PlaceOrder,
        fingerprint: &str,
    ) -> Result<Placed, PlaceError> {
        let keys = self.keys();
        let p = keys.partition_of_restaurant(&request.restaurant);
        let order_id = crate::ids::new_order_id(p);
        let rid = request.restaurant.as_str();
        let mut script_keys = vec![
            keys.restaurant(p, rid),
            keys.order(p, &order_id),
            keys.idempotency(p, &request.customer, &request.idempotency_key),
            keys.stream(p, Topic::Orders),
            keys.inflight(p),
            keys.wheel(p),
        ];
        let mut args = vec![
            order_id.to_string(),
            crate::ids::new_saga_id().to_string(),
            request.customer.clone(),
            rid.to_string(),
            fingerprint.to_string(),
            request.expected_total.to_string(),
            IDEMPOTENCY_TTL_MS.to_string(),
            millis(self.config().timers.payment_window),
        ];
        for line in &request.lines {
            script_keys.push(keys.item(p, rid, &line.item));
            script_keys.push(keys.item_per_customer(p, rid, &line.item));
            args.push(line.item.clone());
            args.push(line.qty.to_string());
        }
        let reply = self
            .scripts()
            .place_order
            .call(self.redis(), script_keys, args)
            .await?;
        let placed = decode_placement(reply, rid)?;
        if !placed.duplicate {
            metrics::counter!("lunchrush_orders_placed_total").increment(1);
            self.woke();
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
fn decode_placement(reply: Vec<String>, rid: &str) -> Result<Placed, PlaceError> {
    let malformed = |reply: Vec<String>| {
        PlaceError::Engine(EngineError::Reply {
            script: "place_order",
            reply,
        })
    };
    let list = |r: &[String]| -> Vec<String> {
        r.get(2)
            .map(|s| s.split(',').map(str::to_string).collect())
            .unwrap_or_default()
    };
    let number = |r: &[String]| r.get(2).and_then(|t| t.parse::<i64>().ok());
    let (code, detail) = match (reply.first(), reply.get(1)) {
        (Some(code), Some(detail)) => (code.clone(), detail.clone()),
        _ => return Err(malformed(reply)),
    };
    match (code.as_str(), detail.as_str()) {
        ("ok" | "dup", id) => match (id.parse(), number(&reply)) {
            (Ok(order_id), Some(total)) => Ok(Placed {
                order_id,
                total,
                duplicate: code == "dup",
            }),
            _ => Err(malformed(reply)),
        },
        ("err", "idempotency_conflict") => Err(PlaceError::IdempotencyConflict {
            order: reply.get(2).cloned().unwrap_or_default(),
        }),
        ("err", "restaurant_not_found") => Err(PlaceError::RestaurantNotFound(rid.into())),
        ("err", "restaurant_closed") => Err(PlaceError::RestaurantClosed(rid.into())),
        ("err", "item_not_found") => Err(PlaceError::ItemNotFound(list(&reply))),
        ("err", "item_unavailable") => Err(PlaceError::ItemUnavailable(list(&reply))),
        ("err", "out_of_stock") => Err(PlaceError::OutOfStock(list(&reply))),
        ("err", "limit_exceeded") => Err(PlaceError::LimitExceeded(list(&reply))),
        ("err", "price_changed") => match number(&reply) {
            Some(current_total) => Err(PlaceError::PriceChanged { current_total }),
            None => Err(malformed(reply)),
        },
        _ => Err(malformed(reply)),
    }
}
