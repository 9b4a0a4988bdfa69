//! The saga workers: consumer groups that move orders from one step to the
//! next.
//!
//! - **payment** (reads `orders` and `restaurant`): drives each order's
//!   payment to what its status requires — authorize a PENDING order, capture
//!   an approved one, void or refund a rejected one — by asking the provider
//!   and recording its answer with `record_payment`.
//! - **restaurant** (reads `payments`): approves paid orders of
//!   `auto_approve` restaurants at once, re-checking that they are open.
//! - **order** (reads `timers`): acts on delayed tasks that fell due —
//!   rejects an order whose payment window or approval timeout passed,
//!   sends the purchase-confirmation notice once and schedules the automatic
//!   confirmation, confirms automatically (see [`crate::timers`]).
//! - **batch** (reads `batch`): the same two duties for events that batch
//!   work (reconciliation, bulk imports, timers' compensations run by tools)
//!   wrote to the batch lane, in its own group with its own, smaller
//!   concurrency, so a batch never queues in front of online orders.
//!
//! Every handler re-reads the order and acts on its current state, so a
//! redelivered or reclaimed event changes nothing that already happened;
//! the scripts' state machines refuse anything that would go backwards.
//!
//! A worker reads every partition in bounded batches (`COUNT`), runs the
//! handlers concurrently (their Redis calls pipeline over the shared
//! connection), XACKs after the effect, and every `reclaim_every` takes over
//! entries other consumers left pending longer than `reclaim_idle`
//! (XAUTOCLAIM). An entry delivered `deliveries_max` times is poison: it
//! goes to the partition's `dead` stream with the reason, or — when what
//! keeps failing is a compensation (void or refund) — to the `parked`
//! operator queue, which reconciliation retries. Nothing is dropped silently.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use fred::prelude::*;
use fred::types::streams::XReadValue;
use futures::StreamExt;

use crate::domain::{Order, OrderStatus, PaymentStatus};
use crate::engine::{Engine, EngineError, Outcome, PaymentOutcome};
use crate::events::Event;
use crate::keys::{Lane, Topic};
use crate::psp::{PspClient, PspError};

/// Steps one handler call may take to settle an order's payment (authorize,
/// capture, void, refund, plus catch-up records); more means a bug.
const DRIVE_STEPS_MAX: usize = 8;
/// While the provider's circuit is open, a payment worker looks again at
/// least this often (it also stops promptly).
const CIRCUIT_NAP_MAX: Duration = Duration::from_millis(500);

/// Which consumer group a worker belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    Payment,
    Restaurant,
    Order,
    Batch,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Payment, Role::Restaurant, Role::Order, Role::Batch];

    /// The consumer group name.
    pub fn group(self) -> &'static str {
        match self {
            Role::Payment => "payment",
            Role::Restaurant => "restaurant",
            Role::Order => "order",
            Role::Batch => "batch",
        }
    }

    /// The role whose consumer group is `group`.
    pub fn of_group(group: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.group() == group)
    }

    /// The topics the group reads.
    pub fn topics(self) -> &'static [Topic] {
        match self {
            Role::Payment => &[Topic::Orders, Topic::Restaurant],
            Role::Restaurant => &[Topic::Payments],
            Role::Order => &[Topic::Timers],
            Role::Batch => &[Topic::Batch],
        }
    }
}

/// Tuning of a worker; every bound named.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// This consumer's name within its group (unique per process).
    pub consumer: String,
    /// Entries read per partition per round (XREADGROUP COUNT).
    pub batch_size: u64,
    /// Handlers running at once.
    pub concurrency: usize,
    /// Longest sleep when every partition was empty.
    pub idle_poll_max: Duration,
    /// Pending entries idle longer than this are taken over.
    pub reclaim_idle: Duration,
    /// How often to look for such entries.
    pub reclaim_every: Duration,
    /// Deliveries after which an entry is poison.
    pub deliveries_max: u64,
    /// How often this process claims due timers.
    pub claim_every: Duration,
}

impl WorkerOptions {
    pub fn new(consumer: impl Into<String>) -> Self {
        Self {
            consumer: consumer.into(),
            batch_size: 256,
            concurrency: 128,
            idle_poll_max: Duration::from_millis(50),
            reclaim_idle: Duration::from_secs(30),
            reclaim_every: Duration::from_secs(5),
            deliveries_max: 5,
            claim_every: Duration::from_millis(100),
        }
    }
}

/// A unique consumer name for this process: host, pid, random suffix.
pub fn consumer_name() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "host".into());
    format!(
        "{host}-{}-{:04x}",
        std::process::id(),
        rand::random::<u16>()
    )
}

/// Creates every consumer group on every partition's streams (from the
/// start of the stream, so events emitted before the group existed are not
/// skipped). Idempotent.
pub async fn ensure_groups(
    engine: &Engine,
    groups: &[(&str, &[Topic])],
) -> Result<(), EngineError> {
    let keys = engine.keys();
    for p in 0..keys.partitions() {
        for (group, topics) in groups {
            for topic in *topics {
                let created: Result<(), _> = engine
                    .redis()
                    .xgroup_create(keys.stream(p, *topic), *group, "0", true)
                    .await;
                match created {
                    Err(error) if !error.details().contains("BUSYGROUP") => {
                        return Err(error.into());
                    }
                    _ => {}
                }
            }
        }
    }
    Ok(())
}

/// Why one event could not be handled now (it stays pending and is retried).
#[derive(Debug, thiserror::Error)]
pub enum WorkError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Psp(#[from] PspError),
    #[error("the order's payment did not settle within {DRIVE_STEPS_MAX} steps")]
    NoProgress,
    #[error(transparent)]
    Notify(#[from] crate::notify::NotifyError),
    #[error("malformed timer event: {0}")]
    Timer(String),
}

/// What a payment step must do next for an order, given its state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PaymentAction {
    Authorize,
    Capture,
    Void,
    Refund,
}

impl PaymentAction {
    /// A compensation: giving up on it would keep money wrongly.
    pub fn is_compensation(self) -> bool {
        matches!(self, PaymentAction::Void | PaymentAction::Refund)
    }
}

/// The payment step an order is owed, if any.
pub fn payment_action(order: &Order) -> Option<PaymentAction> {
    match (order.status, order.pay) {
        (OrderStatus::Pending, PaymentStatus::None) => Some(PaymentAction::Authorize),
        (OrderStatus::Paid, PaymentStatus::Authorized) if order.decision == "approved" => {
            Some(PaymentAction::Capture)
        }
        (OrderStatus::Rejected, PaymentStatus::Authorized) => Some(PaymentAction::Void),
        (OrderStatus::Rejected, PaymentStatus::Captured) => Some(PaymentAction::Refund),
        _ => None,
    }
}

/// The records that bring our payment state up to the provider's (empty
/// when the provider is not ahead of us).
pub fn catch_up(ours: PaymentStatus, provider: &str, capturing: bool) -> Vec<PaymentOutcome> {
    use PaymentOutcome::*;
    use PaymentStatus as P;
    let voided = if capturing { CaptureFailed } else { Voided };
    match (ours, provider) {
        (P::None, "authorized") => vec![Authorized],
        (P::None, "declined") => vec![Declined],
        (P::None, "captured") => vec![Authorized, Captured],
        (P::None, "voided") => vec![Authorized, voided],
        (P::None, "refunded") => vec![Authorized, Captured, Refunded],
        (P::Authorized, "captured") => vec![Captured],
        (P::Authorized, "voided") => vec![voided],
        (P::Authorized, "refunded") => vec![Captured, Refunded],
        (P::Captured, "refunded") => vec![Refunded],
        _ => vec![],
    }
}

/// Drives one order's payment until no step is owed (see [`payment_action`]).
pub async fn drive_payment(
    engine: &Engine,
    psp: &PspClient,
    order_id: &uuid::Uuid,
    lane: Lane,
) -> Result<(), WorkError> {
    let mut asked = false;
    for _ in 0..DRIVE_STEPS_MAX {
        let Some(order) = engine.order(order_id).await? else {
            return Ok(());
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
            for step in catch_up(order.pay, &provider.state, false) {
                engine
                    .record_payment(&order, step, &provider.reference, lane)
                    .await?;
            }
            continue;
        };
        let answer = match action {
            PaymentAction::Authorize => psp.authorize(&key, order.total).await,
            PaymentAction::Capture => psp.capture(&key).await,
            PaymentAction::Void => psp.void(&key).await,
            PaymentAction::Refund => psp.refund(&key).await,
        };
        let provider = match answer {
            Ok(payment) => payment,
            // The provider's state says what really happened; record that.
            Err(PspError::Conflict(payment)) => payment,
            Err(error) => {
                metrics::counter!("lunchrush_psp_failures_total", "action" => action_name(action))
                    .increment(1);
                return Err(error.into());
            }
        };
        let steps = catch_up(order.pay, &provider.state, action == PaymentAction::Capture);
        if steps.is_empty() {
            // The provider is where we already are (e.g. void of a declined
            // payment): nothing to record, and nothing more to do.
            return Ok(());
        }
        let mut after = None;
        for step in steps {
            let t = engine
                .record_payment(&order, step, &provider.reference, lane)
                .await?;
            if let Outcome::Refused(detail) = &t.outcome {
                tracing::warn!(order = %order.id, step = step.as_str(), %detail,
                    "Provider outcome refused by the payment state machine.");
            }
            after = Some(t);
        }
        // The last transition returned the order's state after it: when no
        // step is owed there, stop without re-reading the order. (A later
        // change that owes one — approval, rejection — arrives as its own
        // event.)
        if let Some(t) = after.filter(|t| t.is_done())
            && let (Some(status), Some(pay)) = (t.status, t.pay)
        {
            let now = Order {
                status,
                pay,
                decision: t.decision,
                ..order
            };
            if payment_action(&now).is_none() {
                return Ok(());
            }
        }
    }
    Err(WorkError::NoProgress)
}

fn action_name(action: PaymentAction) -> &'static str {
    match action {
        PaymentAction::Authorize => "authorize",
        PaymentAction::Capture => "capture",
        PaymentAction::Void => "void",
        PaymentAction::Refund => "refund",
    }
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
    let keys = engine.keys();
    let auto: Option<String> = engine
        .redis()
        .hget(keys.restaurant(order.partition, &order.restaurant), "auto")
        .await
        .map_err(EngineError::from)?;
    if auto.as_deref() != Some("1") {
        return Ok(());
    }
    engine
        .decide(&order, true, "", Some(order.version), true, lane)
        .await?;
    Ok(())
}

/// A fired timer's payload.
#[derive(Debug, serde::Deserialize)]
struct TimerData {
    o: String,
    k: String,
    due: i64,
    fired: i64,
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
    let data: TimerData =
        serde_json::from_str(&event.data).map_err(|e| WorkError::Timer(e.to_string()))?;
    let id: uuid::Uuid = data
        .o
        .parse()
        .map_err(|_| WorkError::Timer(format!("order {:?}", data.o)))?;
    let lateness = (data.fired - data.due).max(0) as f64 / 1_000.0;
    metrics::histogram!("lunchrush_timer_lateness_seconds", "kind" => timer_kind(&data.k))
        .record(lateness);
    let timers = &engine.config().timers;
    for _ in 0..TIMER_RETRIES_MAX {
        let Some(order) = engine.order(&id).await? else {
            return Ok(());
        };
        let t = match (data.k.as_str(), order.status) {
            ("payment_window", OrderStatus::Pending) => {
                engine
                    .release(&order, "payment_window", Some(order.version), lane)
                    .await?
            }
            ("approval_timeout", OrderStatus::Paid) if order.decision.is_empty() => {
                engine
                    .release(&order, "approval_timeout", Some(order.version), lane)
                    .await?
            }
            ("confirm_notice", OrderStatus::Dispatched) => {
                if !order.notified.iter().any(|k| k == "confirm_notice") {
                    let notice = crate::notify::Notification::confirm_notice(
                        order.id,
                        &order.customer,
                        timers.auto_confirm_after,
                    );
                    let attempts = notifier.send(&notice).await?;
                    engine
                        .record_notification(
                            &order,
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
                        &order,
                        "auto_confirm",
                        timers.auto_confirm_after,
                        OrderStatus::Dispatched,
                    )
                    .await?;
                return Ok(());
            }
            ("auto_confirm", OrderStatus::Dispatched) => {
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
        if t.outcome != Outcome::Refused("stale".into()) {
            return Ok(());
        }
    }
    Err(WorkError::NoProgress)
}

/// Bounded label values for timer metrics.
fn timer_kind(kind: &str) -> &'static str {
    match kind {
        "payment_window" => "payment_window",
        "approval_timeout" => "approval_timeout",
        "confirm_notice" => "confirm_notice",
        "auto_confirm" => "auto_confirm",
        _ => "other",
    }
}

/// Runs `role`'s handler for `event` in `lane`: what a worker does with an
/// entry it read, and what an operator's retry of a dead letter does (in
/// the batch lane). Every handler is idempotent.
pub async fn handle_event(
    engine: &Engine,
    psp: &PspClient,
    notifier: &dyn crate::notify::Notifier,
    role: Role,
    event: &Event,
    lane: Lane,
) -> Result<(), WorkError> {
    if role == Role::Order && event.kind == "TimerFired" {
        return on_timer(engine, notifier, event, lane).await;
    }
    let Some(order_id) = event.order_id() else {
        return Ok(());
    };
    match (role, event.kind.as_str()) {
        (
            Role::Payment | Role::Batch,
            "OrderPlaced" | "OrderRejected" | "RestaurantApproved" | "RestaurantRejected",
        ) => drive_payment(engine, psp, &order_id, lane).await,
        (Role::Restaurant | Role::Batch, "PaymentAuthorized") => {
            auto_approve(engine, &order_id, lane).await
        }
        _ => Ok(()),
    }
}

/// One consumer of one group.
pub struct Worker {
    engine: Engine,
    psp: PspClient,
    notifier: std::sync::Arc<dyn crate::notify::Notifier>,
    role: Role,
    options: WorkerOptions,
    /// Per (partition, topic): the XAUTOCLAIM cursor.
    cursors: HashMap<(u16, Topic), String>,
}

/// An XAUTOCLAIM answer: the next cursor and the entries claimed.
type Claimed = (String, Vec<XReadValue<String, String, String>>);

/// What one round of a worker did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Round {
    pub handled: usize,
    pub failed: usize,
    pub dead: usize,
    /// Left waiting for the provider's circuit to close.
    pub deferred: usize,
}

impl Worker {
    pub fn new(
        engine: Engine,
        psp: PspClient,
        notifier: std::sync::Arc<dyn crate::notify::Notifier>,
        role: Role,
        options: WorkerOptions,
    ) -> Self {
        Self {
            engine,
            psp,
            notifier,
            role,
            options,
            cursors: HashMap::new(),
        }
    }

    /// Runs until `shutdown` turns true.
    pub async fn run(mut self, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        ensure_groups(&self.engine, &[(self.role.group(), self.role.topics())])
            .await
            .unwrap_or_else(|e| tracing::error!(error = %e, "Cannot create consumer groups."));
        let mut idle = Duration::from_millis(1);
        let mut last_reclaim = Instant::now();
        let engine = self.engine.clone();
        while !*shutdown.borrow() {
            // While the provider's circuit is open, a role that calls it
            // reads nothing: its events wait where they are.
            if let Some(wait) = self.circuit_wait() {
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = shutdown.changed() => {}
                }
                continue;
            }
            // Registered before the read: an event emitted meanwhile wakes us.
            let local = engine.local_event();
            tokio::pin!(local);
            local.as_mut().enable();
            let round = if last_reclaim.elapsed() >= self.options.reclaim_every {
                last_reclaim = Instant::now();
                self.reclaim_round().await
            } else {
                self.read_round().await
            };
            match round {
                Ok(r) if r.handled + r.failed + r.dead > 0 => {
                    idle = Duration::from_millis(1);
                    continue;
                }
                Ok(_) => {}
                Err(error) => {
                    tracing::warn!(role = self.role.group(), %error, "Worker round failed; backing off.");
                    idle = self.options.idle_poll_max;
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(idle) => {}
                _ = &mut local => {}
                _ = shutdown.changed() => {}
            }
            idle = (idle * 2).min(self.options.idle_poll_max);
        }
    }

    /// A stream lost with its group (Redis lost a tail, a key was deleted)
    /// fails every read of that partition while the others go on: recreate
    /// the groups as soon as one says NOGROUP.
    async fn recreate_lost_groups(&self, failure: Option<&fred::error::Error>) {
        if !failure.is_some_and(|e| e.to_string().contains("NOGROUP")) {
            return;
        }
        let roles = [(self.role.group(), self.role.topics())];
        if let Err(error) = ensure_groups(&self.engine, &roles).await {
            tracing::error!(%error, "Cannot recreate consumer groups.");
        }
    }

    /// How long to wait before a round, when this role calls the provider
    /// and its circuit lets nothing out yet.
    fn circuit_wait(&self) -> Option<Duration> {
        if !matches!(self.role, Role::Payment | Role::Batch) {
            return None;
        }
        let breaker = self.psp.breaker();
        if breaker.state() != crate::breaker::BreakerState::Open {
            return None;
        }
        let wait = breaker.retry_in()?;
        (!wait.is_zero()).then(|| wait.min(CIRCUIT_NAP_MAX))
    }

    /// Reads new entries from every partition once and handles them. On
    /// standalone Redis one XREADGROUP covers every partition; on a Cluster
    /// each partition (its own slot) is read on its own, concurrently.
    pub async fn read_round(&self) -> Result<Round, EngineError> {
        let keys = self.engine.keys();
        let this = self;
        let shards: Vec<Vec<u16>> = if self.engine.redis().is_clustered() {
            (0..keys.partitions()).map(|p| vec![p]).collect()
        } else {
            vec![(0..keys.partitions()).collect()]
        };
        let reads = shards.into_iter().map(|partitions| {
            let streams: Vec<String> = partitions
                .iter()
                .flat_map(|&p| self.role.topics().iter().map(move |t| keys.stream(p, *t)))
                .collect();
            let ids: Vec<&str> = streams.iter().map(|_| ">").collect();
            async move {
                read_group(
                    this.engine.redis(),
                    this.role.group(),
                    &this.options.consumer,
                    this.options.batch_size,
                    streams,
                    ids,
                )
                .await
            }
        });
        let pages = futures::future::join_all(reads).await;
        let mut entries = Vec::new();
        let mut failure = None;
        for page in pages {
            // One partition failing must not drop what the others delivered.
            match page {
                Ok(page) => {
                    for (stream, values) in page {
                        for (id, fields) in values {
                            entries.push((stream.clone(), id, fields, 1));
                        }
                    }
                }
                Err(error) => failure = Some(error),
            }
        }
        let round = self.handle(entries).await?;
        self.recreate_lost_groups(failure.as_ref()).await;
        match failure {
            Some(error) if round.handled + round.failed + round.dead == 0 => Err(error.into()),
            Some(error) => {
                tracing::warn!(role = self.role.group(), %error, "A partition's read failed this round.");
                Ok(round)
            }
            None => Ok(round),
        }
    }

    /// Takes over entries idle longer than `reclaim_idle` on every partition.
    pub async fn reclaim_round(&mut self) -> Result<Round, EngineError> {
        let keys = self.engine.keys().clone();
        let mut total = Round::default();
        let mut failure = None;
        for p in 0..keys.partitions() {
            for topic in self.role.topics() {
                let stream = keys.stream(p, *topic);
                let cursor = self
                    .cursors
                    .get(&(p, *topic))
                    .cloned()
                    .unwrap_or_else(|| "0-0".into());
                let claimed: Result<Claimed, _> = self
                    .engine
                    .redis()
                    .xautoclaim_values(
                        stream.as_str(),
                        self.role.group(),
                        self.options.consumer.as_str(),
                        self.options.reclaim_idle.as_millis() as u64,
                        cursor.as_str(),
                        Some(self.options.batch_size),
                        false,
                    )
                    .await;
                // One stream failing (say its group is gone) must not stop
                // the reclaim of the others.
                let (next, values) = match claimed {
                    Ok(claimed) => claimed,
                    Err(error) => {
                        tracing::warn!(%stream, %error, "Reclaim of a stream failed.");
                        failure = Some(error);
                        continue;
                    }
                };
                self.cursors.insert((p, *topic), next);
                if values.is_empty() {
                    continue;
                }
                metrics::counter!("lunchrush_entries_reclaimed_total", "group" => self.role.group())
                    .increment(values.len() as u64);
                let deliveries = self.deliveries(&stream, &values).await?;
                let entries = values
                    .into_iter()
                    .map(|(id, fields)| {
                        let count = deliveries.get(&id).copied().unwrap_or(1);
                        (stream.clone(), id, fields, count)
                    })
                    .collect();
                let round = self.handle(entries).await?;
                total.handled += round.handled;
                total.failed += round.failed;
                total.dead += round.dead;
                total.deferred += round.deferred;
            }
        }
        self.recreate_lost_groups(failure.as_ref()).await;
        match failure {
            Some(error) if total.handled + total.failed + total.dead == 0 => Err(error.into()),
            _ => Ok(total),
        }
    }

    /// Delivery counts of `values` (XPENDING over their id range).
    async fn deliveries(
        &self,
        stream: &str,
        values: &[XReadValue<String, String, String>],
    ) -> Result<HashMap<String, u64>, EngineError> {
        let (first, last) = (&values[0].0, &values[values.len() - 1].0);
        let pending: Vec<(String, String, u64, u64)> = self
            .engine
            .redis()
            .custom(
                fred::cmd!("XPENDING"),
                vec![
                    stream.to_string(),
                    self.role.group().to_string(),
                    first.clone(),
                    last.clone(),
                    values.len().to_string(),
                ],
            )
            .await?;
        Ok(pending
            .into_iter()
            .map(|(id, _, _, count)| (id, count))
            .collect())
    }

    /// Handles entries concurrently, then acknowledges the finished ones.
    async fn handle(
        &self,
        entries: Vec<(String, String, HashMap<String, String>, u64)>,
    ) -> Result<Round, EngineError> {
        if entries.is_empty() {
            return Ok(Round::default());
        }
        let results: Vec<(String, String, Disposition)> = futures::stream::iter(entries)
            .map(|(stream, id, fields, deliveries)| async move {
                let disposition = self.handle_one(&stream, &id, fields, deliveries).await;
                (stream, id, disposition)
            })
            .buffer_unordered(self.options.concurrency)
            .collect()
            .await;
        let mut round = Round::default();
        let mut acks: HashMap<String, Vec<String>> = HashMap::new();
        for (stream, id, disposition) in results {
            match disposition {
                Disposition::Done => round.handled += 1,
                Disposition::Retry => {
                    round.failed += 1;
                    continue;
                }
                Disposition::Deferred(deliveries) => {
                    round.deferred += 1;
                    // Failing to undo the delivery costs one count towards
                    // the dead letters, never the acks of the others.
                    if let Err(error) = self.defer(&stream, &id, deliveries).await {
                        tracing::warn!(%stream, %id, %error, "Could not undo a deferred delivery.");
                    }
                    continue;
                }
                Disposition::Dead => round.dead += 1,
            }
            acks.entry(stream).or_default().push(id);
        }
        for (stream, ids) in acks {
            let _: i64 = self
                .engine
                .redis()
                .xack(stream.as_str(), self.role.group(), ids)
                .await?;
        }
        Ok(round)
    }

    /// Leaves an entry pending with the delivery it just had undone
    /// (`RETRYCOUNT`), and idle long enough that the next reclaim round,
    /// here or in any process, takes it again once the circuit closes.
    async fn defer(&self, stream: &str, id: &str, deliveries: u64) -> Result<(), EngineError> {
        let idle = self.options.reclaim_idle.as_millis() as u64;
        let _: Value = self
            .engine
            .redis()
            .xclaim(
                stream,
                self.role.group(),
                self.options.consumer.as_str(),
                0,
                id,
                Some(idle),
                None,
                Some(deliveries.saturating_sub(1)),
                false,
                true,
            )
            .await?;
        metrics::counter!("lunchrush_psp_deferred_total").increment(1);
        Ok(())
    }

    async fn handle_one(
        &self,
        stream: &str,
        id: &str,
        fields: HashMap<String, String>,
        deliveries: u64,
    ) -> Disposition {
        let event = match Event::parse(stream, id, fields.clone()) {
            Ok(event) => event,
            Err(error) => {
                return self
                    .give_up(stream, id, &fields, &error.to_string(), None, deliveries)
                    .await;
            }
        };
        let result = self.dispatch(&event).await;
        match result {
            Ok(()) => Disposition::Done,
            Err(WorkError::Psp(PspError::CircuitOpen { .. })) => Disposition::Deferred(deliveries),
            Err(error) if deliveries >= self.options.deliveries_max => {
                let action = match event.order_id() {
                    Some(order_id) if self.role != Role::Order => {
                        match self.engine.order(&order_id).await {
                            Ok(Some(order)) => payment_action(&order),
                            _ => None,
                        }
                    }
                    _ => None,
                };
                self.give_up(stream, id, &fields, &error.to_string(), action, deliveries)
                    .await
            }
            Err(error) => {
                tracing::warn!(group = self.role.group(), order = %event.order, kind = %event.kind,
                    %error, deliveries, "Event not handled; it stays pending for a retry.");
                Disposition::Retry
            }
        }
    }

    async fn dispatch(&self, event: &Event) -> Result<(), WorkError> {
        let lane = if self.role == Role::Batch {
            Lane::Batch
        } else {
            Lane::Online
        };
        let notifier = self.notifier.as_ref();
        handle_event(&self.engine, &self.psp, notifier, self.role, event, lane).await
    }

    /// Moves a poison entry to the dead-letter stream (or a failing
    /// compensation to the operator queue) and lets it be acknowledged.
    async fn give_up(
        &self,
        stream: &str,
        id: &str,
        fields: &HashMap<String, String>,
        reason: &str,
        action: Option<PaymentAction>,
        deliveries: u64,
    ) -> Disposition {
        let Some(p) = partition_of_stream(self.engine.keys().prefix(), stream) else {
            return Disposition::Retry;
        };
        let parked = action.is_some_and(PaymentAction::is_compensation);
        let target = self
            .engine
            .keys()
            .stream(p, if parked { Topic::Parked } else { Topic::Dead });
        let mut entry: Vec<(String, String)> = vec![
            ("source".into(), stream.into()),
            ("source_id".into(), id.into()),
            ("group".into(), self.role.group().into()),
            ("reason".into(), reason.into()),
            ("deliveries".into(), deliveries.to_string()),
        ];
        if let Some(action) = action {
            entry.push(("action".into(), action_name(action).into()));
        }
        entry.extend(fields.iter().map(|(k, v)| (format!("f.{k}"), v.clone())));
        let added: Result<String, _> = self
            .engine
            .redis()
            .xadd(target.as_str(), false, None, "*", entry)
            .await;
        match added {
            Ok(_) => {
                let kind = if parked { "parked" } else { "dead" };
                metrics::counter!("lunchrush_dead_letters_total", "group" => self.role.group(), "kind" => kind)
                    .increment(1);
                tracing::error!(
                    group = self.role.group(),
                    stream,
                    id,
                    reason,
                    kind,
                    "Entry given up after repeated failures."
                );
                Disposition::Dead
            }
            Err(_) => Disposition::Retry,
        }
    }
}

enum Disposition {
    Done,
    Retry,
    Dead,
    /// The provider's circuit is open: nothing was tried. The entry waits
    /// without this delivery counting towards `deliveries_max`.
    Deferred(u64),
}

/// XREADGROUP that treats "nothing new" (a nil reply) as an empty page.
pub async fn read_group(
    client: &Client,
    group: &str,
    consumer: &str,
    count: u64,
    streams: Vec<String>,
    ids: Vec<&str>,
) -> Result<fred::types::streams::XReadResponse<String, String, String, String>, fred::error::Error>
{
    let reply: Value = client
        .xreadgroup(group, consumer, Some(count), None, false, streams, ids)
        .await?;
    if reply.is_null() {
        return Ok(HashMap::new());
    }
    reply.into_xread_response()
}

/// The partition named by a stream key `<prefix>{pN}:<topic>`.
pub fn partition_of_stream(prefix: &str, stream: &str) -> Option<u16> {
    let rest = stream.strip_prefix(prefix)?.strip_prefix("{p")?;
    rest.split('}').next()?.parse().ok()
}

/// Spawns one worker per role and the timer claimer; returns their handles.
pub fn spawn_workers(
    engine: &Engine,
    psp: &PspClient,
    notifier: std::sync::Arc<dyn crate::notify::Notifier>,
    options: &WorkerOptions,
    shutdown: &tokio::sync::watch::Receiver<bool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut handles: Vec<_> = Role::ALL
        .iter()
        .map(|&role| {
            let mut options = options.clone();
            if role == Role::Batch {
                options.concurrency = options.concurrency.div_ceil(8);
            }
            let worker = Worker::new(engine.clone(), psp.clone(), notifier.clone(), role, options);
            tokio::spawn(worker.run(shutdown.clone()))
        })
        .collect();
    let claimer = crate::timers::ClaimerOptions {
        every: options.claim_every,
        ..crate::timers::ClaimerOptions::default()
    };
    handles.push(tokio::spawn(crate::timers::run_claimer(
        engine.clone(),
        claimer,
        shutdown.clone(),
    )));
    if let Some(retention) = engine.config().live_retention {
        handles.push(tokio::spawn(crate::retire::run_retirer(
            engine.clone(),
            retention,
            shutdown.clone(),
        )));
    }
    handles
}
