//! The handlers: what each group does with an event (payment hops, due
//! timers), idempotent: each acts on the order's state as the scripts
//! reply it, and a redelivery re-reads the order.

use super::*;
use crate::domain::{RejectReason, TimerKind};
use crate::engine::Refusal;
use crate::events::{EventKind, Payload};

/// Drives one order's payment until no step is owed (see [`payment_action`]),
/// from the order as Redis holds it.
pub async fn drive_payment(
    engine: &Engine,
    psp: &PspClient,
    order_id: &uuid::Uuid,
    lane: Lane,
) -> Result<(), WorkError> {
    drive(engine, psp, order_id, None, lane).await
}

/// [`drive_payment`] from `known` (the order as its event carried it) or
/// else as Redis holds it. After each step it goes on from the state the
/// script replied, so a saga whose restaurant approves automatically is
/// authorized, approved and captured in one call (a sale, one provider call,
/// one script) with no read of the order.
async fn drive(
    engine: &Engine,
    psp: &PspClient,
    order_id: &uuid::Uuid,
    mut known: Option<Order>,
    lane: Lane,
) -> Result<(), WorkError> {
    let mut asked = false;
    for _ in 0..DRIVE_STEPS_MAX {
        let order = match known.take() {
            Some(order) => order,
            None => match engine.order(order_id).await? {
                Some(order) => order,
                None => return Ok(()),
            },
        };
        let key = order.id.to_string();
        let Some(action) = payment_action(&order) else {
            // A rejected order that never recorded a payment may still hold
            // one: an authorization whose answer was lost (a timeout after
            // the charge) before the payment window closed. Ask once; what
            // the provider holds is recorded and then voided or refunded.
            if asked || (order.status, order.pay) != (OrderStatus::Rejected, PaymentStatus::None) {
                return Ok(());
            }
            asked = true;
            let Some(provider) = psp.lookup(&key).await? else {
                return Ok(());
            };
            let steps = catch_up(order.pay, &provider.state, false);
            record_steps(engine, &order, steps, &provider.reference, lane).await?;
            continue;
        };
        // An order its restaurant approves automatically is authorized and
        // captured in one provider call (a sale), recorded in one step.
        let sale = action == PaymentAction::Authorize && order.auto_approve;
        let provider = ask_provider(psp, action, sale, &key, order.total).await?;
        let capturing = sale || action == PaymentAction::Capture;
        let steps = catch_up(order.pay, &provider.state, capturing);
        if steps.is_empty() {
            // The provider is where we already are (e.g. void of a declined
            // payment): nothing to record, and nothing more to do.
            return Ok(());
        }
        let after = record_steps(engine, &order, steps, &provider.reference, lane).await?;
        // The last transition returned the order's state after it: go on
        // from there (a refusal re-reads the order). When no step is owed,
        // stop: a later change that owes one (a restaurant's answer, a
        // rejection) arrives as its own event.
        if let Some(t) = after.filter(|t| t.is_done())
            && let (Some(status), Some(pay)) = (t.status, t.pay)
        {
            let now = Order {
                status,
                pay,
                version: t.version,
                decision: t.decision,
                ..order
            };
            if payment_action(&now).is_none() {
                return Ok(());
            }
            known = Some(now);
        }
    }
    Err(WorkError::NoProgress)
}

/// One provider call (an authorization as a `sale`: captured at once); a
/// conflict answers with the provider's state, which says what really
/// happened.
async fn ask_provider(
    psp: &PspClient,
    action: PaymentAction,
    sale: bool,
    key: &str,
    total: i64,
) -> Result<crate::psp::ProviderPayment, WorkError> {
    let answer = match action {
        PaymentAction::Authorize if sale => psp.sale(key, total).await,
        PaymentAction::Authorize => psp.authorize(key, total).await,
        PaymentAction::Capture => psp.capture(key).await,
        PaymentAction::Void => psp.void(key).await,
        PaymentAction::Refund => psp.refund(key).await,
    };
    match answer {
        Ok(payment) | Err(PspError::Conflict(payment)) => Ok(payment),
        Err(error) => {
            metrics::counter!("lunchrush_psp_failures_total", "action" => action.as_str())
                .increment(1);
            Err(error.into())
        }
    }
}

/// Records the provider's outcomes in order, in one step; the transition,
/// whose reply carries the order's state after it (`None`: nothing to record).
async fn record_steps(
    engine: &Engine,
    order: &Order,
    steps: Vec<PaymentOutcome>,
    reference: &str,
    lane: Lane,
) -> Result<Option<crate::engine::Transition>, WorkError> {
    if steps.is_empty() {
        return Ok(None);
    }
    let t = engine
        .record_payments(order, &steps, reference, lane)
        .await?;
    if let Outcome::Refused(detail) = &t.outcome {
        let steps: Vec<&str> = steps.iter().map(|s| s.as_str()).collect();
        tracing::warn!(order = %order.id, ?steps, %detail,
            "Provider outcome refused by the payment state machine.");
    }
    Ok(Some(t))
}

/// Auto-approval: a paid order of an `auto_approve` restaurant that is open.
pub async fn auto_approve(
    engine: &Engine,
    order_id: &uuid::Uuid,
    lane: Lane,
) -> Result<(), WorkError> {
    let Some(order) = engine.order(order_id).await? else {
        return Ok(());
    };
    if order.status != OrderStatus::Paid || !order.decision.is_empty() {
        return Ok(());
    }
    engine.auto_approve(&order, lane).await?;
    Ok(())
}

/// Attempts to act on a timer when the order moves underneath (version CAS).
const TIMER_RETRIES_MAX: usize = 3;

/// Acts on one fired timer (see [`crate::timers`]). Idempotent: each action
/// checks the order's current state; a stale version is re-read and retried.
pub async fn on_timer(
    engine: &Engine,
    notifier: &dyn crate::notify::Notifier,
    event: &Event,
    lane: Lane,
) -> Result<(), WorkError> {
    let data = match event.payload() {
        Ok(Payload::TimerFired(fired)) => fired,
        Ok(other) => return Err(WorkError::Timer(format!("not a timer: {other:?}"))),
        Err(error) => return Err(WorkError::Timer(error.to_string())),
    };
    let id: uuid::Uuid = data
        .order
        .parse()
        .map_err(|_| WorkError::Timer(format!("order {:?}", data.order)))?;
    let lateness = (data.fired - data.due).max(0) as f64 / 1_000.0;
    let kind = TimerKind::parse(&data.kind);
    let label = kind.map_or("other", TimerKind::as_str);
    metrics::histogram!("lunchrush_timer_lateness_seconds", "kind" => label).record(lateness);
    for _ in 0..TIMER_RETRIES_MAX {
        let Some(order) = engine.order(&id).await? else {
            return Ok(());
        };
        let t = match (kind, order.status) {
            (Some(TimerKind::PaymentWindow), OrderStatus::Pending) => {
                let reason = RejectReason::PaymentWindow;
                engine
                    .release(&order, reason, Some(order.version), lane)
                    .await?
            }
            (Some(TimerKind::ApprovalTimeout), OrderStatus::Paid) if order.decision.is_empty() => {
                let reason = RejectReason::ApprovalTimeout;
                engine
                    .release(&order, reason, Some(order.version), lane)
                    .await?
            }
            (Some(TimerKind::ConfirmNotice), OrderStatus::Dispatched) => {
                return confirm_notice(engine, notifier, &order, lane).await;
            }
            (Some(TimerKind::AutoConfirm), OrderStatus::Dispatched) => {
                engine
                    .advance(
                        &order,
                        OrderStatus::Confirmed,
                        crate::engine::Actor::Timer,
                        Some(order.version),
                        lane,
                    )
                    .await?
            }
            // The order moved on: the timer is moot.
            _ => return Ok(()),
        };
        if !t.refused(Refusal::Stale) {
            return Ok(());
        }
    }
    Err(WorkError::NoProgress)
}

/// The 7-day notice of a dispatched order (sent once: the send record is
/// checked first), then the auto-confirmation after it.
async fn confirm_notice(
    engine: &Engine,
    notifier: &dyn crate::notify::Notifier,
    order: &Order,
    lane: Lane,
) -> Result<(), WorkError> {
    let timers = &engine.config().timers;
    let kind = TimerKind::ConfirmNotice.as_str();
    if !order.notified.iter().any(|k| k == kind) {
        let notice = crate::notify::Notification::confirm_notice(
            order.id,
            &order.customer,
            timers.auto_confirm_after,
        );
        let attempts = notifier.send(&notice).await?;
        engine
            .record_notification(
                order,
                &notice.kind,
                &notice.idempotency_key,
                notifier.channel(),
                attempts,
                lane,
            )
            .await?;
    }
    engine
        .schedule_timer(
            order,
            TimerKind::AutoConfirm,
            timers.auto_confirm_after,
            OrderStatus::Dispatched,
        )
        .await?;
    Ok(())
}

/// How long after its placement an `OrderPlaced` delivered for the first
/// time is taken as the order's state, without reading the order. Older, the
/// order may well have moved (cancelled, rejected by its payment window
/// while the payment hop lagged): it is read first, sparing the provider an
/// authorization that would only be voided.
pub const PLACED_TRUSTED_FOR: Duration = Duration::from_secs(2);

/// Runs `role`'s handler for `event` in `lane`: what a worker does with an
/// entry it read (`first`: its first delivery), and what an operator's retry
/// of a dead letter does (in the batch lane). Every handler is idempotent.
pub async fn handle_event(
    engine: &Engine,
    psp: &PspClient,
    notifier: &dyn crate::notify::Notifier,
    role: Role,
    event: &Event,
    first: bool,
    lane: Lane,
) -> Result<(), WorkError> {
    if role == Role::Order && event.kind == EventKind::TimerFired {
        return on_timer(engine, notifier, event, lane).await;
    }
    let Some(order_id) = event.order_id() else {
        return Ok(());
    };
    if !matches!(role, Role::Payment | Role::Batch) {
        return Ok(());
    }
    match event.kind {
        EventKind::OrderPlaced => {
            let known = first.then(|| placed_order(engine, event)).flatten();
            drive(engine, psp, &order_id, known, lane).await
        }
        // Approved with the authorization, in the online lane: the hop that
        // recorded it captures next (its own entry stays pending until
        // then, and a redelivery of that entry finishes the job). A sale
        // writes no such event; a step recorded apart from its capture does.
        EventKind::RestaurantApproved
            if lane == Lane::Online
                && matches!(event.payload(), Ok(Payload::RestaurantApproved(a)) if a.automatic) =>
        {
            Ok(())
        }
        EventKind::OrderRejected
        | EventKind::RestaurantApproved
        | EventKind::RestaurantRejected => drive_payment(engine, psp, &order_id, lane).await,
        _ => Ok(()),
    }
}

/// The order as a fresh `OrderPlaced` describes it (see
/// [`PLACED_TRUSTED_FOR`]); `None` when it is not fresh or does not decode.
fn placed_order(engine: &Engine, event: &Event) -> Option<Order> {
    let age = crate::streams::entry_age(&event.id)?;
    if age > PLACED_TRUSTED_FOR {
        return None;
    }
    let Ok(Payload::OrderPlaced(placed)) = event.payload() else {
        return None;
    };
    let id = event.order_id()?;
    let partition = engine.keys().partition_of_order(&id)?;
    Some(Order::placed(
        id,
        partition,
        &event.saga,
        event.ts_ms,
        placed,
    ))
}
