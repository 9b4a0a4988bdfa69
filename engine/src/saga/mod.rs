//! The saga workers: consumer groups that move orders from one step to the
//! next.
//!
//! - **payment** (reads `orders` and `restaurant`): drives each order's
//!   payment to what its status requires — authorize a PENDING order, capture
//!   an approved one, void or refund a rejected one — by asking the provider
//!   and recording its answer with `record_payment`. An order placed while
//!   its restaurant approved automatically (`OrderPlaced` says so) is
//!   authorized and captured in one provider call (a sale) and recorded in
//!   one `record_payment` that takes the approval too: such a saga is one
//!   hop (`OrderPlaced` → captured), one provider call, one script and one
//!   more event (`PaymentCaptured` with `sale` and `approved`, on the
//!   `payments` stream, which this group does not read).
//! - **order** (reads `timers`): acts on delayed tasks that fell due —
//!   rejects an order whose payment window or approval timeout passed,
//!   sends the purchase-confirmation notice once and schedules the automatic
//!   confirmation, confirms automatically (see [`crate::timers`]).
//! - **batch** (reads `batch`): the same two duties for events that batch
//!   work (reconciliation, bulk imports, timers' compensations run by tools)
//!   wrote to the batch lane, in its own group with its own, smaller
//!   concurrency, so a batch never queues in front of online orders.
//!
//! A handler acts on the order's state: a fresh `OrderPlaced` carries it, a
//! script's reply gives it after each step, anything else (a redelivery, a
//! reclaimed entry, a compensation) reads the order. So a redelivered event
//! changes nothing that already happened; the scripts' state machines refuse
//! anything that would go backwards.
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

mod handlers;
mod worker;

pub use handlers::{PLACED_TRUSTED_FOR, auto_approve, drive_payment, handle_event, on_timer};
pub use worker::{Round, Worker};

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
    Order,
    Batch,
}

/// Groups earlier versions kept and no role reads any more; dropped when a
/// payment worker starts, so that no retirement waits on them.
/// `restaurant` read `payments` for the automatic approval, which
/// `record_payment` now takes with the authorization.
pub const RETIRED_GROUPS: [(&str, Topic); 1] = [("restaurant", Topic::Payments)];

impl Role {
    pub const ALL: [Role; 3] = [Role::Payment, Role::Order, Role::Batch];

    /// The consumer group name.
    pub fn group(self) -> &'static str {
        match self {
            Role::Payment => "payment",
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
            Role::Order => &[Topic::Timers],
            Role::Batch => &[Topic::Batch],
        }
    }

    /// The local events that wake this role's workers.
    pub fn wake(self) -> crate::engine::Wake {
        use crate::engine::Wake;
        match self {
            Role::Payment => Wake::Payment,
            Role::Order => Wake::Timers,
            Role::Batch => Wake::Batch,
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
    /// How long a running worker may hold the XACKs of finished entries to
    /// send them together (at most `batch_size` are held).
    pub ack_window: Duration,
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
            ack_window: Duration::from_millis(20),
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

/// Drops the [`RETIRED_GROUPS`] from every partition's stream.
pub async fn drop_retired_groups(engine: &Engine) -> Result<(), EngineError> {
    let keys = engine.keys();
    for p in 0..keys.partitions() {
        for (group, topic) in RETIRED_GROUPS {
            let stream = keys.stream(p, topic);
            let dropped: Result<i64, _> = engine.redis().xgroup_destroy(stream, group).await;
            match dropped {
                // A stream not created yet has no group to drop.
                Err(error) if !crate::streams::is_missing_stream(&error) => {
                    return Err(error.into());
                }
                _ => {}
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
    pub fn as_str(self) -> &'static str {
        match self {
            PaymentAction::Authorize => "authorize",
            PaymentAction::Capture => "capture",
            PaymentAction::Void => "void",
            PaymentAction::Refund => "refund",
        }
    }

    /// A compensation: giving up on it would keep money wrongly.
    pub fn is_compensation(self) -> bool {
        matches!(self, PaymentAction::Void | PaymentAction::Refund)
    }
}

/// The payment step an order is owed, if any.
pub fn payment_action(order: &Order) -> Option<PaymentAction> {
    payment_step(order.status, order.pay, &order.decision)
}

/// [`payment_action`] of an order in `status`, `pay`, `decision`.
pub fn payment_step(
    status: OrderStatus,
    pay: PaymentStatus,
    decision: &str,
) -> Option<PaymentAction> {
    match (status, pay) {
        (OrderStatus::Pending, PaymentStatus::None) => Some(PaymentAction::Authorize),
        (OrderStatus::Paid, PaymentStatus::Authorized) if decision == "approved" => {
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

/// XREADGROUP, its reply parsed as a [`crate::entries::Page`] ("nothing
/// new", a nil reply, is an empty page).
pub async fn read_group(
    client: &Client,
    group: &str,
    consumer: &str,
    count: u64,
    streams: impl Into<fred::types::MultipleKeys> + Send,
    ids: Vec<&str>,
) -> Result<crate::entries::Page, fred::error::Error> {
    let reply: Value = client
        .xreadgroup(group, consumer, Some(count), None, false, streams, ids)
        .await?;
    crate::entries::page_of(reply)
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
