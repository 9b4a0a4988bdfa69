//! Reconciliation's Redis and provider side: finds orphans and fixes them
//! through the same atomic transitions as the online path (every fix is a
//! script with its own legality checks and version compare-and-set, in the
//! batch lane), so it is safe beside live traffic and running it twice fixes
//! nothing twice. The archive side lives in `archiver::repair`; `lunchrush
//! reconcile` runs both, rate-limited, and reports.
//!
//! | kind | found | fixed by |
//! | --- | --- | --- |
//! | `stuck_saga` | unsettled longer than `older_than` (the in-flight index) | re-driving the missing step (authorize, approve for auto-approve restaurants, capture, void, refund), else compensating (`release`, reason `reconciled`) |
//! | `dangling_index` | an in-flight entry whose order hash is gone | the entry removed (its held stock is `held_stock`'s) |
//! | `held_stock` | units neither on hand nor held by a live order | `reclaim_stock` (compare-and-set on stock) |
//! | `charge_without_order` | a provider payment whose order is gone | void or refund at the provider |
//! | `charge_on_rejected_order` | a provider authorization or capture of a rejected order | provider state recorded, then void or refund |
//! | `amount_mismatch` | provider amount ≠ order total | admin cancel, then void or refund |
//! | `captured_without_charge` | recorded CAPTURED, the provider holds no capture | `record_payment(corrected)`: rejected `reconciled`, stock released, any authorization voided |
//! | `provider_ahead` | the provider is further than the order records | the provider's state recorded (`record_payment`), saga re-driven |
//! | `dead_consumer_pending` | entries pending longer than `older_than` | claimed (XAUTOCLAIM) and handled by the group's own handler |
//! | `parked_compensation` | the operator queue | the compensation retried |
//! | `dead_letter` | poison entries | reported with their reasons |

//! The phases live in `sagas` (stuck sagas, dangling entries, held stock),
//! `provider` (the ledger against our orders) and `queues` (dead consumers,
//! idle consumers, parked compensations, dead letters).

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fred::prelude::*;
use serde::Serialize;

use crate::domain::{Order, OrderStatus, PaymentStatus, RejectReason};
use crate::engine::{Actor, Engine, EngineError, PaymentOutcome};
use crate::keys::{Lane, Topic};
use crate::psp::{PspClient, PspError};
use crate::saga::{self, Role, WorkError};

mod provider;
mod queues;
mod sagas;

/// Orders read per in-flight page and payments per provider page.
const PAGE: usize = 500;
/// Steps `settle` may take on one order.
const SETTLE_STEPS_MAX: usize = 6;
/// Provider ledger pages one run reads at most (of `PAGE` payments each).
const PROVIDER_PAGES_MAX: usize = 100_000;
/// In-flight entries one run visits per partition at most (bounds its memory).
const STUCK_VISITED_MAX: usize = 200_000;
/// Dead letters listed per stream in the report.
const DEAD_LETTERS_LISTED_MAX: usize = 20;

/// How a reconciliation run behaves.
#[derive(Debug, Clone)]
pub struct Options {
    /// Only sagas unsettled (and entries pending) longer than this are touched.
    pub older_than: Duration,
    /// Report what would be done; change nothing.
    pub dry_run: bool,
    /// Fixes per second at most (the batch lane never floods the online one).
    pub max_rate: f64,
    /// This run's consumer name in the groups it reclaims for.
    pub consumer: String,
}

/// What became of one orphan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Fixed,
    WouldFix,
    Unfixable,
    Reported,
}

/// One orphan and what was done about it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Fix {
    pub kind: &'static str,
    pub subject: String,
    pub action: String,
    pub outcome: Outcome,
    pub detail: String,
}

/// Collects fixes, paces them, tells the caller about each.
pub struct Run<'a> {
    pub options: Options,
    pub fixes: Vec<Fix>,
    on_fix: Box<dyn FnMut(&Fix) + Send + 'a>,
    started: Instant,
    acted: u64,
}

impl<'a> Run<'a> {
    pub fn new(options: Options, on_fix: impl FnMut(&Fix) + Send + 'a) -> Self {
        Self {
            options,
            fixes: Vec::new(),
            on_fix: Box::new(on_fix),
            started: Instant::now(),
            acted: 0,
        }
    }

    /// Waits so that fixes never exceed `max_rate` per second.
    async fn pace(&mut self) {
        if self.options.dry_run || self.options.max_rate <= 0.0 {
            return;
        }
        self.acted += 1;
        let due = Duration::from_secs_f64(self.acted as f64 / self.options.max_rate);
        let elapsed = self.started.elapsed();
        if due > elapsed {
            tokio::time::sleep(due - elapsed).await;
        }
    }

    /// Records a fix (also those found outside this module: the archive
    /// side) and tells the caller about it.
    pub fn record(
        &mut self,
        kind: &'static str,
        subject: impl Into<String>,
        action: &str,
        outcome: Outcome,
        detail: String,
    ) {
        let fix = Fix {
            kind,
            subject: subject.into(),
            action: action.to_string(),
            outcome,
            detail,
        };
        (self.on_fix)(&fix);
        self.fixes.push(fix);
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn settled(order: &Order) -> bool {
    crate::domain::is_allowed_pair(order.status, order.pay)
}

/// An XAUTOCLAIM answer: the next cursor and the entries claimed.
type Claimed = (String, Vec<(String, HashMap<String, String>)>);

/// A consumer idle this long with nothing pending is deleted from its group.
pub const CONSUMER_IDLE_MAX: Duration = Duration::from_secs(24 * 3600);

/// The Redis/provider reconciler.
pub struct Reconciler {
    pub engine: Engine,
    pub psp: PspClient,
    /// Where orders that left live state are found (see [`crate::retire`]):
    /// without it, a provider payment whose order is not in Redis is left
    /// alone rather than taken for a charge without an order.
    pub archive: Option<std::sync::Arc<dyn crate::retire::Archive>>,
}

/// Failures that stop a phase (not orphans).
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Redis(#[from] fred::error::Error),
    #[error(transparent)]
    Psp(#[from] PspError),
}

impl Reconciler {
    pub fn new(engine: Engine, psp: PspClient) -> Self {
        Self {
            engine,
            psp,
            archive: None,
        }
    }

    /// Consults `archive` for orders not in Redis.
    pub fn with_archive(mut self, archive: std::sync::Arc<dyn crate::retire::Archive>) -> Self {
        self.archive = Some(archive);
        self
    }

    /// Whether the order left live state (retired to the archive); `None`
    /// when that cannot be known (no archive, or it did not answer).
    async fn retired(&self, id: &uuid::Uuid) -> Option<Option<Order>> {
        let archive = self.archive.as_ref()?;
        match archive.order(id).await {
            Ok(found) => Some(found),
            Err(error) => {
                tracing::warn!(order = %id, %error, "The archive did not answer; the payment is left for the next run.");
                None
            }
        }
    }

    /// Drives one order toward a resting pair in the batch lane: re-drive
    /// the missing step if possible, else compensate. Returns the action taken.
    pub async fn settle(&self, id: &uuid::Uuid) -> Result<(Option<Order>, String), ReconcileError> {
        let mut actions = Vec::new();
        for _ in 0..SETTLE_STEPS_MAX {
            let Some(order) = self.engine.order(id).await? else {
                return Ok((None, actions.join(", ")));
            };
            if settled(&order) {
                return Ok((Some(order), actions.join(", ")));
            }
            match (order.status, order.pay, order.decision.as_str()) {
                (OrderStatus::Pending, PaymentStatus::None, _) => {
                    match saga::drive_payment(&self.engine, &self.psp, id, Lane::Batch).await {
                        Ok(()) => actions.push("authorize"),
                        Err(_) => {
                            // The provider does not answer: compensate.
                            self.release(&order, Some(order.version), &mut actions)
                                .await?;
                        }
                    }
                    let after = self.engine.order(id).await?;
                    if after
                        .as_ref()
                        .is_some_and(|o| o.status == OrderStatus::Pending)
                    {
                        self.release(&order, None, &mut actions).await?;
                    }
                }
                (OrderStatus::Paid, _, "") => {
                    let approved = self
                        .engine
                        .auto_approve(&order, Lane::Batch)
                        .await?
                        .is_done();
                    if approved {
                        actions.push("approve");
                    } else {
                        self.release(&order, Some(order.version), &mut actions)
                            .await?;
                    }
                }
                _ => match saga::drive_payment(&self.engine, &self.psp, id, Lane::Batch).await {
                    Ok(()) => actions.push("drive payment"),
                    Err(WorkError::Psp(error)) => return Err(error.into()),
                    Err(WorkError::Engine(error)) => return Err(error.into()),
                    Err(other) => {
                        actions.push("drive payment failed");
                        tracing::warn!(order = %id, %other, "Reconciliation could not drive a payment.");
                        return Ok((self.engine.order(id).await?, actions.join(", ")));
                    }
                },
            }
        }
        Ok((self.engine.order(id).await?, actions.join(", ")))
    }

    /// Compensates `order` in the batch lane (reason `reconciled`), at
    /// `expected` version if given, and notes it among `actions`.
    async fn release(
        &self,
        order: &Order,
        expected: Option<u64>,
        actions: &mut Vec<&'static str>,
    ) -> Result<(), ReconcileError> {
        self.engine
            .release(order, RejectReason::Reconciled, expected, Lane::Batch)
            .await?;
        actions.push("release");
        Ok(())
    }
}
