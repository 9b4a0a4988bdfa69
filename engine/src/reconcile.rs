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

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fred::prelude::*;
use serde::Serialize;

use crate::domain::{Order, OrderStatus, PaymentStatus};
use crate::engine::{Actor, Engine, EngineError, PaymentOutcome};
use crate::keys::{Lane, Topic};
use crate::psp::{PspClient, PspError};
use crate::saga::{self, Role, WorkError};

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

    /// Records a fix found outside this module (the archive side).
    pub fn push(
        &mut self,
        kind: &'static str,
        subject: String,
        action: &str,
        outcome: Outcome,
        detail: String,
    ) {
        self.record(kind, subject, action, outcome, detail);
    }

    fn record(
        &mut self,
        kind: &'static str,
        subject: String,
        action: &str,
        outcome: Outcome,
        detail: String,
    ) {
        let fix = Fix {
            kind,
            subject,
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
                            self.engine
                                .release(&order, "reconciled", Some(order.version), Lane::Batch)
                                .await?;
                            actions.push("release");
                        }
                    }
                    let after = self.engine.order(id).await?;
                    if after
                        .as_ref()
                        .is_some_and(|o| o.status == OrderStatus::Pending)
                    {
                        self.engine
                            .release(&order, "reconciled", None, Lane::Batch)
                            .await?;
                        actions.push("release");
                    }
                }
                (OrderStatus::Paid, _, "") => {
                    let auto: Option<String> = self
                        .engine
                        .redis()
                        .hget(
                            self.engine
                                .keys()
                                .restaurant(order.partition, &order.restaurant),
                            "auto",
                        )
                        .await?;
                    let approved = auto.as_deref() == Some("1")
                        && self
                            .engine
                            .decide(&order, true, "", Some(order.version), true, Lane::Batch)
                            .await?
                            .is_done();
                    if approved {
                        actions.push("approve");
                    } else {
                        self.engine
                            .release(&order, "reconciled", Some(order.version), Lane::Batch)
                            .await?;
                        actions.push("release");
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

    /// Kind `stuck_saga`: every order unsettled for longer than `older_than`;
    /// kind `dangling_index`: an index entry whose order is gone (removed,
    /// so the index only names orders that exist; their held stock is left
    /// to `held_stock`, which counts only live orders' lines).
    ///
    /// Bounded: the entries older than the cutoff can only leave the index
    /// (new and moved orders score after it), each is visited once, and a
    /// pass that meets no new entry ends the partition; at most
    /// [`STUCK_VISITED_MAX`] entries per partition per run.
    pub async fn stuck_sagas(&self, run: &mut Run<'_>) -> Result<(), ReconcileError> {
        let cutoff = now_ms() - run.options.older_than.as_millis() as i64;
        for p in 0..self.engine.keys().partitions() {
            let key = self.engine.keys().inflight(p);
            let mut visited: HashSet<String> = HashSet::new();
            'passes: loop {
                let mut offset = 0;
                let mut fresh_in_pass = 0;
                loop {
                    let ids: Vec<String> = self
                        .engine
                        .redis()
                        .zrangebyscore(
                            key.as_str(),
                            "-inf",
                            cutoff as f64,
                            false,
                            Some((offset, PAGE as i64)),
                        )
                        .await?;
                    if ids.is_empty() {
                        break;
                    }
                    let mut stayed = 0;
                    for raw in &ids {
                        if !visited.insert(raw.clone()) {
                            stayed += 1;
                            continue;
                        }
                        fresh_in_pass += 1;
                        if !self.stuck_one(run, p, raw).await? {
                            stayed += 1;
                        }
                        if visited.len() >= STUCK_VISITED_MAX {
                            tracing::warn!(
                                partition = p,
                                visited = visited.len(),
                                "Stuck-saga scan stopped at its bound; the rest is left for the next run."
                            );
                            break 'passes;
                        }
                    }
                    // Entries that left the index shifted the ranks behind them.
                    offset += stayed as i64;
                }
                if fresh_in_pass == 0 || run.options.dry_run {
                    break;
                }
            }
        }
        Ok(())
    }

    /// One in-flight entry: settles its order, or removes the entry if the
    /// order is gone. Returns whether the entry left the index.
    async fn stuck_one(
        &self,
        run: &mut Run<'_>,
        partition: u16,
        raw: &str,
    ) -> Result<bool, ReconcileError> {
        let Ok(id) = raw.parse::<uuid::Uuid>() else {
            return self.dangling(run, partition, raw).await;
        };
        let Some(order) = self.engine.order(&id).await? else {
            let key = self.engine.keys().order(partition, &id);
            let exists: bool = self.engine.redis().exists(key).await?;
            if exists {
                // A hash that does not read as an order is not a gone order.
                run.record(
                    "stuck_saga",
                    raw.to_string(),
                    "none",
                    Outcome::Unfixable,
                    "the order hash does not read as an order".into(),
                );
                return Ok(false);
            }
            return self.dangling(run, partition, raw).await;
        };
        let state = format!("{} / {}", order.status, order.pay);
        if run.options.dry_run {
            run.record(
                "stuck_saga",
                id.to_string(),
                "settle",
                Outcome::WouldFix,
                state,
            );
            return Ok(false);
        }
        run.pace().await;
        let (after, action) = match self.settle(&id).await {
            Ok(result) => result,
            Err(error) => (self.engine.order(&id).await?, format!("failed: {error}")),
        };
        let fixed = after.as_ref().is_none_or(settled);
        let detail = after
            .map(|o| format!("{state} -> {} / {}", o.status, o.pay))
            .unwrap_or(state);
        let outcome = if fixed {
            Outcome::Fixed
        } else {
            Outcome::Unfixable
        };
        run.record("stuck_saga", id.to_string(), &action, outcome, detail);
        Ok(fixed)
    }

    /// Kind `dangling_index`: the in-flight index names an order whose hash
    /// is gone. The order cannot come back (its id was minted with its hash,
    /// in one script), so removing the entry loses nothing.
    async fn dangling(
        &self,
        run: &mut Run<'_>,
        partition: u16,
        raw: &str,
    ) -> Result<bool, ReconcileError> {
        if run.options.dry_run {
            run.record(
                "dangling_index",
                raw.to_string(),
                "remove index entry",
                Outcome::WouldFix,
                "the order hash is gone".into(),
            );
            return Ok(false);
        }
        run.pace().await;
        let keys = self.engine.keys();
        let removed: i64 = self
            .engine
            .redis()
            .zrem(keys.inflight(partition), raw)
            .await?;
        run.record(
            "dangling_index",
            raw.to_string(),
            "remove index entry",
            if removed == 1 {
                Outcome::Fixed
            } else {
                Outcome::Reported
            },
            "the order hash is gone".into(),
        );
        Ok(true)
    }

    /// Kind `held_stock`: units neither on hand nor held by a live order.
    /// Scans each partition's orders a page at a time; an item whose stock
    /// moved during the scan is left for the next run.
    pub async fn held_stock(&self, run: &mut Run<'_>) -> Result<(), ReconcileError> {
        for p in 0..self.engine.keys().partitions() {
            let restaurants = self.engine.restaurants(p).await?;
            if restaurants.is_empty() {
                continue;
            }
            let mut before = HashMap::new();
            for restaurant in &restaurants {
                if let Some(menu) = self.engine.menu(restaurant).await? {
                    for item in menu.items {
                        before.insert(
                            (restaurant.clone(), item.item.clone()),
                            (item.stock, item.supplied, item.stock_version),
                        );
                    }
                }
            }
            let mut held: HashMap<(String, String), i64> = HashMap::new();
            let mut counted: HashMap<(String, String, String), i64> = HashMap::new();
            let mut resting: Vec<(f64, String)> = Vec::new();
            self.engine
                .for_each_order(p, |order| {
                    if crate::domain::is_final_pair(order.status, order.pay) {
                        resting.push((order.updated_ms as f64, order.id.to_string()));
                    }
                    if order.status == OrderStatus::Rejected {
                        return;
                    }
                    for line in &order.lines {
                        let key = (order.restaurant.clone(), line.item.clone());
                        *held.entry(key).or_default() += i64::from(line.qty);
                        if line.counted {
                            *counted
                                .entry((
                                    order.restaurant.clone(),
                                    line.item.clone(),
                                    order.customer.clone(),
                                ))
                                .or_default() += i64::from(line.qty);
                        }
                    }
                })
                .await?;
            for ((restaurant, item), (stock, supplied, version)) in before {
                let units = held
                    .get(&(restaurant.clone(), item.clone()))
                    .copied()
                    .unwrap_or(0);
                let stranded = supplied - stock - units;
                let per_customer: HashMap<String, i64> = self
                    .engine
                    .redis()
                    .hgetall(self.engine.keys().item_per_customer(p, &restaurant, &item))
                    .await?;
                let retired: HashMap<String, i64> = self
                    .engine
                    .redis()
                    .hgetall(
                        self.engine
                            .keys()
                            .item_retired_per_customer(p, &restaurant, &item),
                    )
                    .await?;
                let customers: Vec<(String, i64)> = per_customer
                    .into_iter()
                    .filter_map(|(customer, have)| {
                        let backed = counted
                            .get(&(restaurant.clone(), item.clone(), customer.clone()))
                            .copied()
                            .unwrap_or(0)
                            + retired.get(&customer).copied().unwrap_or(0);
                        (have > backed).then_some((customer, have - backed))
                    })
                    .collect();
                if stranded == 0 && customers.is_empty() {
                    continue;
                }
                // Live traffic moved this item during the scan (even a move
                // undone by another bumps the stock version): the numbers do
                // not belong to one moment, so nothing is concluded.
                let now: Option<String> = self
                    .engine
                    .redis()
                    .hget(self.engine.keys().item(p, &restaurant, &item), "sv")
                    .await?;
                if now.and_then(|s| s.parse::<i64>().ok()).unwrap_or(0) != version {
                    tracing::debug!(%restaurant, %item, "Stock moved during the scan; not judged this run.");
                    continue;
                }
                let subject = format!("{restaurant}/{item}");
                let detail =
                    format!("supplied {supplied}, on hand {stock}, held by live orders {units}");
                if stranded < 0 {
                    run.record(
                        "held_stock",
                        subject,
                        "none",
                        Outcome::Unfixable,
                        format!("{detail}: oversold"),
                    );
                    continue;
                }
                if run.options.dry_run {
                    run.record(
                        "held_stock",
                        subject,
                        &format!("return {stranded} units"),
                        Outcome::WouldFix,
                        detail,
                    );
                    continue;
                }
                run.pace().await;
                let fixed = self
                    .engine
                    .reclaim_stock(&restaurant, &item, stranded, version, &customers)
                    .await?;
                let outcome = if fixed.is_some() {
                    Outcome::Fixed
                } else {
                    Outcome::Unfixable
                };
                let detail = if fixed.is_some() {
                    detail
                } else {
                    format!("{detail}: stock moved during the scan; run again")
                };
                run.record(
                    "held_stock",
                    subject,
                    &format!("return {stranded} units"),
                    outcome,
                    detail,
                );
            }
            self.index_resting(p, resting).await?;
        }
        Ok(())
    }

    /// Orders at a final pair the resting index lacks (settled before
    /// retention existed, or an index entry lost with a Redis crash) are
    /// added, so they too leave live state once archived (the retire script
    /// checks the rest). NX: a present entry keeps its score.
    async fn index_resting(
        &self,
        p: u16,
        resting: Vec<(f64, String)>,
    ) -> Result<(), ReconcileError> {
        if self.engine.config().live_retention.is_none() {
            return Ok(());
        }
        for chunk in resting.chunks(1_000) {
            let _: i64 = self
                .engine
                .redis()
                .zadd(
                    self.engine.keys().resting(p),
                    Some(fred::types::SetOptions::NX),
                    None,
                    false,
                    false,
                    chunk.to_vec(),
                )
                .await?;
        }
        Ok(())
    }

    /// Records the provider's state on the order (catch-up), then drives it.
    async fn sync_and_drive(
        &self,
        order: &Order,
        provider_state: &str,
        reference: &str,
    ) -> Result<(), ReconcileError> {
        let steps = saga::catch_up(order.pay, provider_state, false);
        for step in steps {
            self.engine
                .record_payment(order, step, reference, Lane::Batch)
                .await?;
        }
        match saga::drive_payment(&self.engine, &self.psp, &order.id, Lane::Batch).await {
            Ok(()) => Ok(()),
            Err(WorkError::Psp(e)) => Err(e.into()),
            Err(WorkError::Engine(e)) => Err(e.into()),
            Err(_) => Ok(()),
        }
    }

    /// The provider's ledger against the orders: charges with no approved
    /// order, amounts that differ, captures the provider never made.
    pub async fn provider(&self, run: &mut Run<'_>) -> Result<(), ReconcileError> {
        let cutoff = now_ms() - run.options.older_than.as_millis() as i64;
        let mut after: Option<String> = None;
        let mut seen_at_provider: Vec<uuid::Uuid> = Vec::new();
        for pages in 0.. {
            if pages == PROVIDER_PAGES_MAX {
                tracing::warn!(
                    pages,
                    "Provider ledger scan stopped at its bound; the rest is left for the next run."
                );
                break;
            }
            let page = self.psp.list(after.as_deref(), PAGE).await?;
            for payment in &page.payments {
                let Ok(id) = payment.key.parse::<uuid::Uuid>() else {
                    continue;
                };
                seen_at_provider.push(id);
                let order = self.engine.order(&id).await?;
                if classify(order.as_ref(), payment, cutoff).is_none() {
                    continue;
                }
                // The listing is a snapshot: ask the provider and the order
                // again, and act only on a mismatch that still holds.
                let Some(payment) = &self.psp.lookup(&payment.key).await? else {
                    continue;
                };
                let order = self.engine.order(&id).await?;
                if order.is_none() {
                    // Not live: retired (settled and archived), or vanished.
                    match self.retired(&id).await {
                        None => continue,
                        Some(Some(retired)) => {
                            self.retired_payment(run, &retired, payment, cutoff);
                            continue;
                        }
                        Some(None) => {}
                    }
                }
                let Some((kind, action)) = classify(order.as_ref(), payment, cutoff) else {
                    continue;
                };
                let subject = id.to_string();
                let detail = format!(
                    "provider {} {}, order {}",
                    payment.state,
                    payment.amount,
                    order
                        .as_ref()
                        .map(|o| format!("{} / {} total {}", o.status, o.pay, o.total))
                        .unwrap_or_else(|| "missing".into())
                );
                if run.options.dry_run {
                    run.record(kind, subject, action, Outcome::WouldFix, detail);
                    continue;
                }
                run.pace().await;
                let result = self.fix_provider(kind, &id, order.as_ref(), payment).await;
                let outcome = match &result {
                    Ok(true) => Outcome::Fixed,
                    _ => Outcome::Unfixable,
                };
                let detail = match result {
                    Err(error) => format!("{detail}: {error}"),
                    _ => detail,
                };
                run.record(kind, subject, action, outcome, detail);
            }
            // A provider that repeats a cursor or pages on with nothing
            // would page forever.
            match page.next {
                Some(next) if !page.payments.is_empty() && Some(&next) != after.as_ref() => {
                    after = Some(next)
                }
                _ => break,
            }
        }
        self.captures_unknown_to_provider(run, &mut seen_at_provider, cutoff)
            .await
    }

    /// A retired order's payment: its pair was final and every event
    /// archived when it left; a provider that disagrees now is reported for
    /// an operator, never acted on (the order can no longer change).
    fn retired_payment(
        &self,
        run: &mut Run<'_>,
        order: &Order,
        payment: &crate::psp::ProviderPayment,
        cutoff: i64,
    ) {
        let expected = match order.pay {
            PaymentStatus::Captured => "captured",
            PaymentStatus::Refunded => "refunded",
            PaymentStatus::Voided => "voided",
            PaymentStatus::Declined => "declined",
            _ => "",
        };
        let agrees = payment.state == expected && payment.amount == order.total;
        if agrees || order.updated_ms >= cutoff {
            return;
        }
        run.record(
            "retired_order_mismatch",
            order.id.to_string(),
            "none (retired: resolve at the provider)",
            Outcome::Unfixable,
            format!(
                "provider {} {}, archived order {} / {} total {}",
                payment.state, payment.amount, order.status, order.pay, order.total
            ),
        );
    }

    async fn fix_provider(
        &self,
        kind: &str,
        id: &uuid::Uuid,
        order: Option<&Order>,
        payment: &crate::psp::ProviderPayment,
    ) -> Result<bool, ReconcileError> {
        let key = id.to_string();
        match (kind, order) {
            ("charge_without_order", _) => {
                let after = if payment.state == "captured" {
                    self.psp.refund(&key).await?
                } else {
                    self.psp.void(&key).await?
                };
                Ok(matches!(after.state.as_str(), "voided" | "refunded"))
            }
            ("amount_mismatch", Some(order)) => {
                self.engine
                    .cancel(order, Actor::Admin, None, Lane::Batch)
                    .await?;
                let order = self
                    .engine
                    .order(id)
                    .await?
                    .unwrap_or_else(|| order.clone());
                self.sync_and_drive(&order, &payment.state, &payment.reference)
                    .await?;
                Ok(self.engine.order(id).await?.as_ref().is_some_and(settled))
            }
            ("charge_on_rejected_order" | "provider_ahead", Some(order)) => {
                self.sync_and_drive(order, &payment.state, &payment.reference)
                    .await?;
                Ok(self.engine.order(id).await?.as_ref().is_some_and(settled))
            }
            ("captured_without_charge", Some(order)) => {
                if payment.state == "authorized" {
                    self.psp.void(&key).await?;
                }
                self.engine
                    .record_payment(
                        order,
                        PaymentOutcome::Corrected,
                        &payment.reference,
                        Lane::Batch,
                    )
                    .await?;
                Ok(self.engine.order(id).await?.as_ref().is_some_and(settled))
            }
            _ => Ok(false),
        }
    }

    /// Orders recorded CAPTURED (longer than the cutoff) of which the
    /// provider has no payment at all. Memory: 16 bytes per provider payment
    /// seen, sorted once.
    async fn captures_unknown_to_provider(
        &self,
        run: &mut Run<'_>,
        seen: &mut [uuid::Uuid],
        cutoff: i64,
    ) -> Result<(), ReconcileError> {
        seen.sort_unstable();
        for p in 0..self.engine.keys().partitions() {
            let mut candidates = Vec::new();
            self.engine
                .for_each_order(p, |order| {
                    if order.pay == PaymentStatus::Captured
                        && order.updated_ms < cutoff
                        && seen.binary_search(&order.id).is_err()
                    {
                        candidates.push(order);
                    }
                })
                .await?;
            for order in candidates {
                // The listing may have raced a new payment: ask directly.
                if self.psp.lookup(&order.id.to_string()).await?.is_some() {
                    continue;
                }
                let subject = order.id.to_string();
                let detail = format!(
                    "order {} / {} total {}, provider: no payment",
                    order.status, order.pay, order.total
                );
                if run.options.dry_run {
                    run.record(
                        "captured_without_charge",
                        subject,
                        "correct and compensate",
                        Outcome::WouldFix,
                        detail,
                    );
                    continue;
                }
                run.pace().await;
                self.engine
                    .record_payment(&order, PaymentOutcome::Corrected, "", Lane::Batch)
                    .await?;
                let fixed = self
                    .engine
                    .order(&order.id)
                    .await?
                    .as_ref()
                    .is_some_and(settled);
                let outcome = if fixed {
                    Outcome::Fixed
                } else {
                    Outcome::Unfixable
                };
                run.record(
                    "captured_without_charge",
                    subject,
                    "correct and compensate",
                    outcome,
                    detail,
                );
            }
        }
        Ok(())
    }

    /// Kind `dead_consumer_pending`: entries pending longer than
    /// `older_than` in any group are claimed and handled by that group's own
    /// handler (which is idempotent).
    pub async fn dead_consumer_pending(
        &self,
        run: &mut Run<'_>,
        notifier: std::sync::Arc<dyn crate::notify::Notifier>,
    ) -> Result<(), ReconcileError> {
        let idle_ms = run.options.older_than.as_millis() as u64;
        for role in Role::ALL {
            let mut idle = 0u64;
            for p in 0..self.engine.keys().partitions() {
                for topic in role.topics() {
                    let pending: Vec<(String, String, u64, u64)> = self
                        .engine
                        .redis()
                        .custom(
                            fred::cmd!("XPENDING"),
                            vec![
                                self.engine.keys().stream(p, *topic),
                                role.group().to_string(),
                                "IDLE".into(),
                                idle_ms.to_string(),
                                "-".into(),
                                "+".into(),
                                "1000".into(),
                            ],
                        )
                        .await
                        .unwrap_or_default();
                    idle += pending.len() as u64;
                }
            }
            if idle == 0 {
                continue;
            }
            let subject = format!("group {}", role.group());
            if run.options.dry_run {
                run.record(
                    "dead_consumer_pending",
                    subject,
                    &format!("claim {idle} entries"),
                    Outcome::WouldFix,
                    String::new(),
                );
                continue;
            }
            let mut options = saga::WorkerOptions::new(run.options.consumer.clone());
            options.reclaim_idle = run.options.older_than;
            options.concurrency = 8;
            let mut worker = saga::Worker::new(
                self.engine.clone(),
                self.psp.clone(),
                notifier.clone(),
                role,
                options,
            );
            let (mut handled, mut failed) = (0, 0);
            for _ in 0..100 {
                run.pace().await;
                let round = worker.reclaim_round().await?;
                handled += round.handled + round.dead;
                failed += round.failed;
                if round.handled + round.dead + round.failed == 0 {
                    break;
                }
            }
            let outcome = if failed == 0 {
                Outcome::Fixed
            } else {
                Outcome::Unfixable
            };
            run.record(
                "dead_consumer_pending",
                subject,
                &format!("claimed {idle} entries"),
                outcome,
                format!("{handled} handled, {failed} still failing"),
            );
        }
        Ok(())
    }

    /// Kind `idle_consumer`: consumers with nothing pending and idle longer
    /// than [`CONSUMER_IDLE_MAX`] are deleted from their group (every process
    /// start adds a consumer name; without this the groups only grow).
    pub async fn idle_consumers(&self, run: &mut Run<'_>) -> Result<(), ReconcileError> {
        let keys = self.engine.keys();
        let idle_max = CONSUMER_IDLE_MAX.as_millis() as u64;
        for p in 0..keys.partitions() {
            for topic in crate::keys::Topic::ALL {
                let stream = keys.stream(p, topic);
                let groups: Vec<HashMap<String, fred::types::Value>> =
                    info_entries(&self.engine, vec!["GROUPS".into(), stream.clone()]).await;
                for group in groups {
                    let Some(group) = group.get("name").and_then(|v| v.as_string()) else {
                        continue;
                    };
                    let consumers = info_entries(
                        &self.engine,
                        vec!["CONSUMERS".into(), stream.clone(), group.clone()],
                    )
                    .await;
                    for consumer in consumers {
                        let number = |k: &str| consumer.get(k).and_then(|v| v.as_u64());
                        let (Some(name), Some(0), Some(idle)) = (
                            consumer.get("name").and_then(|v| v.as_string()),
                            number("pending"),
                            number("idle"),
                        ) else {
                            continue;
                        };
                        if idle < idle_max {
                            continue;
                        }
                        let subject = format!("{stream} {group} {name}");
                        if run.options.dry_run {
                            run.record(
                                "idle_consumer",
                                subject,
                                "delete",
                                Outcome::WouldFix,
                                String::new(),
                            );
                            continue;
                        }
                        // DELCONSUMER would drop entries pending meanwhile:
                        // only if the consumer still has none.
                        let _: fred::types::Value = self
                            .engine
                            .redis()
                            .custom(
                                fred::cmd!("XGROUP"),
                                vec![
                                    "DELCONSUMER".to_string(),
                                    stream.clone(),
                                    group.clone(),
                                    name,
                                ],
                            )
                            .await?;
                        run.record(
                            "idle_consumer",
                            subject,
                            "delete",
                            Outcome::Fixed,
                            format!("idle {} s, nothing pending", idle / 1_000),
                        );
                    }
                }
            }
        }
        Ok(())
    }

    /// Kind `parked_compensation`: the operator queue, retried.
    pub async fn parked(&self, run: &mut Run<'_>, group: &str) -> Result<(), ReconcileError> {
        for p in 0..self.engine.keys().partitions() {
            let stream = self.engine.keys().stream(p, Topic::Parked);
            for id in ["0", ">"] {
                let page = if id == "0" {
                    // Every pending entry, whoever holds it (an earlier run,
                    // the operations console): taken over by this run.
                    let claimed: Result<Claimed, _> = self
                        .engine
                        .redis()
                        .xautoclaim_values(
                            stream.as_str(),
                            group,
                            run.options.consumer.as_str(),
                            0,
                            "0-0",
                            Some(PAGE as u64),
                            false,
                        )
                        .await;
                    claimed
                        .map(|(_, entries)| HashMap::from([(stream.clone(), entries)]))
                        .unwrap_or_default()
                } else {
                    saga::read_group(
                        self.engine.redis(),
                        group,
                        &run.options.consumer,
                        PAGE as u64,
                        vec![stream.clone()],
                        vec![id],
                    )
                    .await
                    .unwrap_or_default()
                };
                for (_, entries) in page {
                    for (entry_id, fields) in entries {
                        let order = fields
                            .get("f.order")
                            .and_then(|o| o.parse::<uuid::Uuid>().ok());
                        let subject = order
                            .map(|o| o.to_string())
                            .unwrap_or_else(|| entry_id.clone());
                        let detail = fields.get("reason").cloned().unwrap_or_default();
                        let action = fields
                            .get("action")
                            .cloned()
                            .unwrap_or_else(|| "retry".into());
                        if run.options.dry_run {
                            run.record(
                                "parked_compensation",
                                subject,
                                &action,
                                Outcome::WouldFix,
                                detail,
                            );
                            continue;
                        }
                        run.pace().await;
                        let fixed = match order {
                            Some(order) => self
                                .settle(&order)
                                .await
                                .ok()
                                .and_then(|(o, _)| o)
                                .is_none_or(|o| settled(&o)),
                            None => true,
                        };
                        if fixed {
                            let _: i64 = self
                                .engine
                                .redis()
                                .xack(stream.as_str(), group, entry_id.clone())
                                .await?;
                        }
                        let outcome = if fixed {
                            Outcome::Fixed
                        } else {
                            Outcome::Unfixable
                        };
                        run.record("parked_compensation", subject, &action, outcome, detail);
                    }
                }
            }
        }
        Ok(())
    }

    /// Kind `dead_letter`: reported with their reasons (they are archived
    /// into `dead_letters`; fixing a poison event is an operator's call).
    pub async fn dead_letters(&self, run: &mut Run<'_>) -> Result<(), ReconcileError> {
        for p in 0..self.engine.keys().partitions() {
            let stream = self.engine.keys().stream(p, Topic::Dead);
            let entries: Vec<(String, HashMap<String, String>)> = self
                .engine
                .redis()
                .xrevrange(
                    stream.as_str(),
                    "+",
                    "-",
                    Some(DEAD_LETTERS_LISTED_MAX as u64),
                )
                .await?;
            for (id, fields) in entries {
                let subject = format!(
                    "{}:{}",
                    fields.get("source").cloned().unwrap_or_default(),
                    fields.get("source_id").cloned().unwrap_or(id)
                );
                let detail = format!(
                    "group {}: {}",
                    fields.get("group").cloned().unwrap_or_default(),
                    fields.get("reason").cloned().unwrap_or_default()
                );
                run.record("dead_letter", subject, "report", Outcome::Reported, detail);
            }
        }
        Ok(())
    }
}

/// XINFO GROUPS / CONSUMERS as one map per entry (empty when the stream or
/// group does not exist).
async fn info_entries(
    engine: &Engine,
    args: Vec<String>,
) -> Vec<HashMap<String, fred::types::Value>> {
    let reply: fred::types::Value = engine
        .redis()
        .custom(fred::cmd!("XINFO"), args)
        .await
        .unwrap_or(fred::types::Value::Null);
    reply
        .into_array()
        .into_iter()
        .map(|entry| {
            entry
                .into_array()
                .chunks(2)
                .filter_map(|kv| Some((kv[0].as_string()?, kv.get(1)?.clone())))
                .collect()
        })
        .collect()
}

/// The orphan kind of a provider payment and its order, if any. Orders that
/// changed after `cutoff` are left alone: their saga may still be running.
fn classify(
    order: Option<&Order>,
    payment: &crate::psp::ProviderPayment,
    cutoff: i64,
) -> Option<(&'static str, &'static str)> {
    let charged = matches!(payment.state.as_str(), "authorized" | "captured");
    let compensation = if payment.state == "captured" {
        "refund"
    } else {
        "void"
    };
    match order {
        None if charged => Some(("charge_without_order", compensation)),
        None => None,
        Some(o) if o.updated_ms >= cutoff => None,
        Some(o) if charged && o.total != payment.amount && o.status != OrderStatus::Rejected => {
            Some(("amount_mismatch", "cancel and compensate"))
        }
        Some(o) if charged && o.status == OrderStatus::Rejected => {
            Some(("charge_on_rejected_order", compensation))
        }
        Some(o)
            if o.pay == PaymentStatus::Captured
                && payment.state != "captured"
                && payment.state != "refunded" =>
        {
            Some(("captured_without_charge", "correct and compensate"))
        }
        Some(o) if provider_ahead(o.pay, &payment.state) => {
            Some(("provider_ahead", "record the provider's state"))
        }
        _ => None,
    }
}

/// Whether the provider's state is ahead of what the order records.
fn provider_ahead(pay: PaymentStatus, provider: &str) -> bool {
    !saga::catch_up(pay, provider, false).is_empty()
}
