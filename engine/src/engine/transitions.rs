//! Every transition of a placed order, each one Lua script with its
//! legality checks and version compare-and-set.

use super::*;
use crate::domain::{Decision, RejectReason, TimerKind};
use crate::scripts::replies::{Claimed, Reclaimed, Recorded, Scheduled};
use crate::scripts::{
    Binding, Bound, advance, cancel, claim_timers, mark_resting, reclaim_stock,
    record_notification, record_payment, release, restaurant_decision, schedule_timer,
};

/// The keys every transition of an order names, by the scripts' names.
struct OrderKeys {
    order_key: String,
    order_stream: String,
    inflight: String,
    timers: String,
}

/// The keys of `$script` for `$order`: those every transition names
/// ([`OrderKeys`]), then the script's own.
macro_rules! script_keys {
    ($engine:expr, $script:ident, $order:expr, $lane:expr; $($field:ident: $value:expr),* $(,)?) => {{
        let keys = $engine.order_keys($order, $lane);
        $script::Keys {
            order_key: keys.order_key,
            order_stream: keys.order_stream,
            inflight: keys.inflight,
            timers: keys.timers,
            $($field: $value),*
        }
    }};
}

impl Engine {
    /// The keys every transition of `order` names, its events in `lane`.
    fn order_keys(&self, order: &Order, lane: Lane) -> OrderKeys {
        let (keys, p) = (self.keys(), order.partition);
        OrderKeys {
            order_key: keys.order(p, &order.id),
            order_stream: keys.lane_stream(p, Topic::Orders, lane),
            inflight: keys.inflight(p),
            timers: keys.wheel(p),
        }
    }

    /// Runs one transition of `order` in `lane` and counts what it did
    /// (see [`Engine::applied`] for `wake_payment`).
    async fn transition<B: Binding<Reply = Transition>>(
        &self,
        order: &Order,
        lane: Lane,
        wake_payment: bool,
        script: &Bound<B>,
        keys: B::Keys,
        args: B::Args,
    ) -> Result<Transition, EngineError> {
        let t = script.run(self.redis(), keys, args).await?;
        self.applied(order, &t, lane, wake_payment);
        Ok(t)
    }

    /// The keys of an order's lines: item hash and per-customer hash each.
    fn line_keys(&self, order: &Order) -> Vec<[String; 2]> {
        let keys = self.keys();
        order
            .lines
            .iter()
            .map(|line| {
                [
                    keys.item(order.partition, &order.restaurant, &line.item),
                    keys.item_per_customer(order.partition, &order.restaurant, &line.item),
                ]
            })
            .collect()
    }

    /// Counts what a transition did (a saga's outcome once: when the status
    /// first becomes it) and wakes this process's workers it concerns: the
    /// batch lane's, or (`wake_payment`) the payment hop when the order now
    /// owes a payment step.
    fn applied(&self, before: &Order, transition: &Transition, lane: Lane, wake_payment: bool) {
        if transition.outcome != Outcome::Applied {
            return;
        }
        if lane == Lane::Batch {
            self.woke(Wake::Batch, before.partition);
        } else if wake_payment
            && let (Some(status), Some(pay)) = (transition.status, transition.pay)
            && crate::saga::payment_step(status, pay, &transition.decision).is_some()
        {
            self.woke(Wake::Payment, before.partition);
        }
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

    /// Records a payment outcome (see `lua/record_payment.lua`).
    pub async fn record_payment(
        &self,
        order: &Order,
        outcome: PaymentOutcome,
        psp_ref: &str,
        lane: Lane,
    ) -> Result<Transition, EngineError> {
        self.record_payments(order, &[outcome], psp_ref, lane).await
    }

    /// Records payment outcomes in order, in one step (an authorization
    /// and its capture, from one sale); at least one, at most three.
    pub async fn record_payments(
        &self,
        order: &Order,
        outcomes: &[PaymentOutcome],
        psp_ref: &str,
        lane: Lane,
    ) -> Result<Transition, EngineError> {
        let (&outcome, more) = outcomes
            .split_first()
            .expect("at least one outcome to record");
        let (space, p) = (self.keys(), order.partition);
        let keys = script_keys!(self, record_payment, order, lane;
            pay_stream: space.lane_stream(p, Topic::Payments, lane),
            rest_stream: space.lane_stream(p, Topic::Restaurant, lane),
            restaurant_key: space.restaurant(p, &order.restaurant),
            lines: self.line_keys(order),
        );
        let more: Vec<&str> = more.iter().map(|o| o.as_str()).collect();
        let args = record_payment::Args {
            outcome,
            psp_ref: psp_ref.into(),
            approval_timeout: self.config().timers.approval_timeout,
            more: more.join(","),
        };
        let script = &self.scripts().record_payment;
        // Payments are recorded by the payment hop (or a repair) that goes
        // on from the reply itself: no wake-up for it.
        let t = self
            .transition(order, lane, false, script, keys, args)
            .await?;
        if t.outcome == Outcome::Applied {
            for outcome in outcomes {
                metrics::counter!("lunchrush_payments_recorded_total", "outcome" => outcome.as_str())
                    .increment(1);
            }
        }
        Ok(t)
    }

    /// The restaurant's answer (see `lua/restaurant_decision.lua`);
    /// `automatic`: the restaurant's automatic approval, only while it is
    /// open and approves automatically.
    pub async fn decide(
        &self,
        order: &Order,
        decision: Decision,
        note: &str,
        expected: Option<u64>,
        automatic: bool,
        lane: Lane,
    ) -> Result<Transition, EngineError> {
        let (space, p) = (self.keys(), order.partition);
        let keys = script_keys!(self, restaurant_decision, order, lane;
            rest_stream: space.lane_stream(p, Topic::Restaurant, lane),
            restaurant_key: space.restaurant(p, &order.restaurant),
            lines: self.line_keys(order),
        );
        let args = restaurant_decision::Args {
            decision,
            note: note.into(),
            expected,
            automatic,
        };
        let script = &self.scripts().restaurant_decision;
        self.transition(order, lane, true, script, keys, args).await
    }

    /// Approves a paid order at the version read if its restaurant approves
    /// automatically and is open (refused `manual` or `restaurant_closed`
    /// otherwise): one script call, no read of the restaurant first.
    pub async fn auto_approve(&self, order: &Order, lane: Lane) -> Result<Transition, EngineError> {
        let expected = Some(order.version);
        self.decide(order, Decision::Approve, "", expected, true, lane)
            .await
    }

    /// Compensation: rejects a PENDING/PAID order and releases its stock.
    pub async fn release(
        &self,
        order: &Order,
        reason: RejectReason,
        expected: Option<u64>,
        lane: Lane,
    ) -> Result<Transition, EngineError> {
        let keys = script_keys!(self, release, order, lane; lines: self.line_keys(order));
        let args = release::Args { reason, expected };
        self.transition(order, lane, true, &self.scripts().release, keys, args)
            .await
    }

    /// A customer (before approval) or an admin (any time) cancels.
    pub async fn cancel(
        &self,
        order: &Order,
        actor: Actor,
        expected: Option<u64>,
        lane: Lane,
    ) -> Result<Transition, EngineError> {
        let keys = script_keys!(self, cancel, order, lane; lines: self.line_keys(order));
        let args = cancel::Args { actor, expected };
        self.transition(order, lane, true, &self.scripts().cancel, keys, args)
            .await
    }

    /// DISPATCHED or CONFIRMED (see `lua/advance.lua`).
    pub async fn advance(
        &self,
        order: &Order,
        target: OrderStatus,
        actor: Actor,
        expected: Option<u64>,
        lane: Lane,
    ) -> Result<Transition, EngineError> {
        assert!(matches!(
            target,
            OrderStatus::Dispatched | OrderStatus::Confirmed
        ));
        let keys = script_keys!(self, advance, order, lane;);
        let args = advance::Args {
            target,
            expected,
            actor,
            notice_after: self.config().timers.confirm_notice_after,
        };
        self.transition(order, lane, true, &self.scripts().advance, keys, args)
            .await
    }

    // ---- delayed tasks ----------------------------------------------------

    /// Moves up to `limit` due timers of partition `p` into its timers
    /// stream. Returns how many fired and the earliest remaining due time.
    pub async fn claim_timers(&self, p: u16, limit: u64) -> Result<Claimed, EngineError> {
        let keys = self.keys();
        let claimed = self
            .scripts()
            .claim_timers
            .run(
                self.redis(),
                claim_timers::Keys {
                    wheel: keys.wheel(p),
                    stream: keys.stream(p, Topic::Timers),
                },
                claim_timers::Args { limit },
            )
            .await?;
        if claimed.fired > 0 {
            self.woke(Wake::Timers, p);
        }
        Ok(claimed)
    }

    /// Schedules `kind` for `order` after `delay`, only while the order is
    /// `required`.
    pub async fn schedule_timer(
        &self,
        order: &Order,
        kind: TimerKind,
        delay: std::time::Duration,
        required: OrderStatus,
    ) -> Result<Scheduled, EngineError> {
        let keys = self.keys();
        self.scripts()
            .schedule_timer
            .run(
                self.redis(),
                schedule_timer::Keys {
                    order_key: keys.order(order.partition, &order.id),
                    wheel: keys.wheel(order.partition),
                },
                schedule_timer::Args {
                    kind,
                    delay,
                    required,
                },
            )
            .await
    }

    /// The send record of a notification.
    pub async fn record_notification(
        &self,
        order: &Order,
        kind: &str,
        idempotency_key: &str,
        channel: &str,
        attempts: u32,
        lane: Lane,
    ) -> Result<Recorded, EngineError> {
        let keys = self.keys();
        self.scripts()
            .record_notification
            .run(
                self.redis(),
                record_notification::Keys {
                    order_key: keys.order(order.partition, &order.id),
                    stream: keys.lane_stream(order.partition, Topic::Orders, lane),
                },
                record_notification::Args {
                    kind: kind.into(),
                    key: idempotency_key.into(),
                    channel: channel.into(),
                    attempts: attempts.into(),
                },
            )
            .await
    }

    /// Returns `units` stranded by orders that no longer exist to stock on
    /// hand, and removes per-customer counts no live order backs
    /// (`lua/reclaim_stock.lua`); refused as `Stale` when the item's stock
    /// version moved since `seen`.
    pub async fn reclaim_stock(
        &self,
        restaurant: &str,
        item: &str,
        units: i64,
        seen: i64,
        customers: &[(String, i64)],
    ) -> Result<Reclaimed, EngineError> {
        let keys = self.keys();
        let p = keys.partition_of_restaurant(restaurant);
        self.scripts()
            .reclaim_stock
            .run(
                self.redis(),
                reclaim_stock::Keys {
                    restaurant_key: keys.restaurant(p, restaurant),
                    item_key: keys.item(p, restaurant, item),
                    pc_key: keys.item_per_customer(p, restaurant, item),
                    stream: keys.stream(p, Topic::Batch),
                },
                reclaim_stock::Args {
                    rid: restaurant.into(),
                    item: item.into(),
                    units,
                    seen,
                    customers: customers.to_vec(),
                },
            )
            .await
    }

    /// Adds orders at a final pair, each with the time it came to rest
    /// (ms), to partition `p`'s resting index (`lua/mark_resting.lua`, which
    /// Redis runs past its maxmemory: retiring is how memory comes back).
    pub async fn mark_resting(
        &self,
        p: u16,
        orders: Vec<(i64, String)>,
    ) -> Result<u64, EngineError> {
        let added = self
            .scripts()
            .mark_resting
            .run(
                self.redis(),
                mark_resting::Keys {
                    resting: self.keys().resting(p),
                },
                mark_resting::Args { orders },
            )
            .await?;
        Ok(added.0)
    }
}
