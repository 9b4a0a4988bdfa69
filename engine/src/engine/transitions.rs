//! Every transition of a placed order, each one Lua script with its
//! legality checks and version compare-and-set.

use super::*;

impl Engine {
    /// The keys of an order's lines: item hash and per-customer hash each.
    fn line_keys(&self, order: &Order) -> Vec<String> {
        let keys = self.keys();
        order
            .lines
            .iter()
            .flat_map(|line| {
                [
                    keys.item(order.partition, &order.restaurant, &line.item),
                    keys.item_per_customer(order.partition, &order.restaurant, &line.item),
                ]
            })
            .collect()
    }

    async fn transition(
        &self,
        before: &Order,
        script: &crate::scripts::Script,
        name: &'static str,
        keys: Vec<String>,
        args: Vec<String>,
    ) -> Result<Transition, EngineError> {
        let reply = script.call(self.redis(), keys, args).await?;
        let transition = Transition::parse(name, reply)?;
        if transition.outcome == Outcome::Applied {
            self.woke();
            // A saga's outcome is counted once: when the status first becomes it.
            match transition.status {
                Some(OrderStatus::Approved) if before.status != OrderStatus::Approved => {
                    metrics::counter!("lunchrush_saga_outcomes_total", "outcome" => "approved")
                        .increment(1);
                }
                Some(OrderStatus::Rejected) if before.status != OrderStatus::Rejected => {
                    let reason = crate::domain::RejectReason::parse(&transition.reason)
                        .map_or("other", |r| r.as_str());
                    metrics::counter!("lunchrush_saga_outcomes_total", "outcome" => "rejected", "reason" => reason)
                        .increment(1);
                }
                _ => {}
            }
        }
        Ok(transition)
    }

    /// Records a payment outcome (see `lua/record_payment.lua`).
    pub async fn record_payment(
        &self,
        order: &Order,
        outcome: PaymentOutcome,
        psp_ref: &str,
        lane: Lane,
    ) -> Result<Transition, EngineError> {
        let keys = self.keys();
        let p = order.partition;
        let mut script_keys = vec![
            keys.order(p, &order.id),
            keys.lane_stream(p, Topic::Payments, lane),
            keys.lane_stream(p, Topic::Orders, lane),
            keys.inflight(p),
            keys.wheel(p),
        ];
        script_keys.extend(self.line_keys(order));
        let t = self
            .transition(
                order,
                &self.scripts().record_payment,
                "record_payment",
                script_keys,
                vec![
                    outcome.as_str().into(),
                    psp_ref.into(),
                    millis(self.config().timers.approval_timeout),
                ],
            )
            .await?;
        if t.outcome == Outcome::Applied {
            metrics::counter!("lunchrush_payments_recorded_total", "outcome" => outcome.as_str())
                .increment(1);
        }
        Ok(t)
    }

    /// The restaurant's answer (see `lua/restaurant_decision.lua`).
    pub async fn decide(
        &self,
        order: &Order,
        approve: bool,
        note: &str,
        expected_version: Option<u64>,
        require_open: bool,
        lane: Lane,
    ) -> Result<Transition, EngineError> {
        let keys = self.keys();
        let p = order.partition;
        let mut script_keys = vec![
            keys.order(p, &order.id),
            keys.lane_stream(p, Topic::Restaurant, lane),
            keys.lane_stream(p, Topic::Orders, lane),
            keys.inflight(p),
            keys.restaurant(p, &order.restaurant),
            keys.wheel(p),
        ];
        script_keys.extend(self.line_keys(order));
        self.transition(
            order,
            &self.scripts().restaurant_decision,
            "restaurant_decision",
            script_keys,
            vec![
                if approve { "approve" } else { "reject" }.into(),
                note.into(),
                expected_version.map(|v| v.to_string()).unwrap_or_default(),
                flag(require_open),
            ],
        )
        .await
    }

    /// Compensation: rejects a PENDING/PAID order and releases its stock.
    pub async fn release(
        &self,
        order: &Order,
        reason: crate::domain::RejectReason,
        expected_version: Option<u64>,
        lane: Lane,
    ) -> Result<Transition, EngineError> {
        let script_keys = self.order_stream_keys(order, lane);
        self.transition(
            order,
            &self.scripts().release,
            "release",
            script_keys,
            vec![
                reason.as_str().into(),
                expected_version.map(|v| v.to_string()).unwrap_or_default(),
            ],
        )
        .await
    }

    /// A customer (before approval) or an admin (any time) cancels.
    pub async fn cancel(
        &self,
        order: &Order,
        actor: Actor,
        expected_version: Option<u64>,
        lane: Lane,
    ) -> Result<Transition, EngineError> {
        let script_keys = self.order_stream_keys(order, lane);
        self.transition(
            order,
            &self.scripts().cancel,
            "cancel",
            script_keys,
            vec![
                actor.as_str().into(),
                expected_version.map(|v| v.to_string()).unwrap_or_default(),
            ],
        )
        .await
    }

    /// DISPATCHED or CONFIRMED (see `lua/advance.lua`).
    pub async fn advance(
        &self,
        order: &Order,
        target: OrderStatus,
        actor: Actor,
        expected_version: Option<u64>,
        lane: Lane,
    ) -> Result<Transition, EngineError> {
        assert!(matches!(
            target,
            OrderStatus::Dispatched | OrderStatus::Confirmed
        ));
        let keys = self.keys();
        let p = order.partition;
        self.transition(
            order,
            &self.scripts().advance,
            "advance",
            vec![
                keys.order(p, &order.id),
                keys.lane_stream(p, Topic::Orders, lane),
                keys.inflight(p),
                keys.wheel(p),
            ],
            vec![
                target.as_str().into(),
                expected_version.map(|v| v.to_string()).unwrap_or_default(),
                actor.as_str().into(),
                millis(self.config().timers.confirm_notice_after),
            ],
        )
        .await
    }

    fn order_stream_keys(&self, order: &Order, lane: Lane) -> Vec<String> {
        let keys = self.keys();
        let p = order.partition;
        let mut script_keys = vec![
            keys.order(p, &order.id),
            keys.lane_stream(p, Topic::Orders, lane),
            keys.inflight(p),
            keys.wheel(p),
        ];
        script_keys.extend(self.line_keys(order));
        script_keys
    }

    // ---- delayed tasks ----------------------------------------------------

    /// Moves up to `limit` due timers of partition `p` into its timers
    /// stream. Returns how many fired and the earliest remaining due time.
    pub async fn claim_timers(
        &self,
        p: u16,
        limit: u64,
    ) -> Result<(u64, Option<i64>), EngineError> {
        let keys = self.keys();
        let reply = self
            .scripts()
            .claim_timers
            .call(
                self.redis(),
                vec![keys.wheel(p), keys.stream(p, Topic::Timers)],
                vec![limit.to_string()],
            )
            .await?;
        let fired = reply.first().and_then(|f| f.parse().ok()).unwrap_or(0);
        if fired > 0 {
            self.woke();
        }
        Ok((fired, reply.get(1).and_then(|d| d.parse().ok())))
    }

    /// Schedules `kind` for `order` after `delay`, only while the order is
    /// `required`. `Ok(false)` when the order is elsewhere (or gone).
    pub async fn schedule_timer(
        &self,
        order: &Order,
        kind: crate::domain::TimerKind,
        delay: std::time::Duration,
        required: OrderStatus,
    ) -> Result<bool, EngineError> {
        let keys = self.keys();
        let reply = self
            .scripts()
            .schedule_timer
            .call(
                self.redis(),
                vec![
                    keys.order(order.partition, &order.id),
                    keys.wheel(order.partition),
                ],
                vec![
                    kind.as_str().into(),
                    millis(delay),
                    required.as_str().into(),
                ],
            )
            .await?;
        Ok(matches!(
            reply.first().map(String::as_str),
            Some("ok" | "noop")
        ))
    }

    /// The send record of a notification; `Ok(false)` if it already existed.
    pub async fn record_notification(
        &self,
        order: &Order,
        kind: &str,
        idempotency_key: &str,
        channel: &str,
        attempts: u32,
        lane: Lane,
    ) -> Result<bool, EngineError> {
        let keys = self.keys();
        let reply = self
            .scripts()
            .record_notification
            .call(
                self.redis(),
                vec![
                    keys.order(order.partition, &order.id),
                    keys.lane_stream(order.partition, Topic::Orders, lane),
                ],
                vec![
                    kind.into(),
                    idempotency_key.into(),
                    channel.into(),
                    attempts.to_string(),
                ],
            )
            .await?;
        Ok(reply.first().map(String::as_str) == Some("ok"))
    }

    /// Returns `units` stranded by orders that no longer exist to stock on
    /// hand, and removes per-customer counts no live order backs
    /// (`lua/reclaim_stock.lua`). `Ok(None)` when the item's stock version
    /// moved since `seen`.
    pub async fn reclaim_stock(
        &self,
        restaurant: &str,
        item: &str,
        units: i64,
        seen: i64,
        customers: &[(String, i64)],
    ) -> Result<Option<i64>, EngineError> {
        let keys = self.keys();
        let p = keys.partition_of_restaurant(restaurant);
        let mut args = vec![
            restaurant.to_string(),
            item.to_string(),
            units.to_string(),
            seen.to_string(),
        ];
        for (customer, units) in customers {
            args.push(customer.clone());
            args.push(units.to_string());
        }
        let reply = self
            .scripts()
            .reclaim_stock
            .call(
                self.redis(),
                vec![
                    keys.restaurant(p, restaurant),
                    keys.item(p, restaurant, item),
                    keys.item_per_customer(p, restaurant, item),
                    keys.stream(p, Topic::Batch),
                ],
                args,
            )
            .await?;
        Ok(match reply.first().map(String::as_str) {
            Some("ok") => reply.get(1).and_then(|s| s.parse().ok()),
            _ => None,
        })
    }
}
