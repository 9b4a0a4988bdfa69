//! Stuck sagas, dangling index entries, held stock and the resting
//! index: the Redis side of orphans.

use super::*;
use crate::scripts::replies::Reclaimed;

impl Reconciler {
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
            let before = self.stock_before(p).await?;
            if before.is_empty() {
                continue;
            }
            let holds = self.holds(p).await?;
            for ((restaurant, item), (stock, supplied, version)) in before {
                let units = holds.units(&restaurant, &item);
                let stranded = supplied - stock - units;
                let customers = self.unbacked_limits(p, &restaurant, &item, &holds).await?;
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
                let stranded = Stranded {
                    restaurant,
                    item,
                    units: stranded,
                    version,
                    customers,
                    detail: format!(
                        "supplied {supplied}, on hand {stock}, held by live orders {units}"
                    ),
                };
                self.return_stranded(run, stranded).await?;
            }
            self.index_resting(p, holds.resting).await?;
        }
        Ok(())
    }

    /// Every item of partition `p`: (stock, supplied, stock version).
    async fn stock_before(
        &self,
        p: u16,
    ) -> Result<HashMap<(String, String), (i64, i64, i64)>, ReconcileError> {
        let mut before = HashMap::new();
        for restaurant in self.engine.restaurants(p).await? {
            if let Some(menu) = self.engine.menu(&restaurant).await? {
                for item in menu.items {
                    before.insert(
                        (restaurant.clone(), item.item.clone()),
                        (item.stock, item.supplied, item.stock_version),
                    );
                }
            }
        }
        Ok(before)
    }

    /// What the live orders of partition `p` hold, one SCAN page at a time.
    async fn holds(&self, p: u16) -> Result<Holds, ReconcileError> {
        let mut holds = Holds::default();
        self.engine
            .for_each_order(p, |order| {
                if crate::domain::is_final_pair(order.status, order.pay) {
                    holds
                        .resting
                        .push((order.updated_ms as f64, order.id.to_string()));
                }
                crate::check::tally_lines(&order, &mut holds.held, &mut holds.counted);
            })
            .await?;
        Ok(holds)
    }

    /// Customers whose per-customer count of an item is more than their
    /// live and retired orders explain: (customer, units too many).
    async fn unbacked_limits(
        &self,
        p: u16,
        restaurant: &str,
        item: &str,
        holds: &Holds,
    ) -> Result<Vec<(String, i64)>, ReconcileError> {
        let keys = self.engine.keys();
        let per_customer: HashMap<String, i64> = self
            .engine
            .redis()
            .hgetall(keys.item_per_customer(p, restaurant, item))
            .await?;
        let retired: HashMap<String, i64> = self
            .engine
            .redis()
            .hgetall(keys.item_retired_per_customer(p, restaurant, item))
            .await?;
        Ok(per_customer
            .into_iter()
            .filter_map(|(customer, have)| {
                let key = (restaurant.to_string(), item.to_string(), customer.clone());
                let backed = holds.counted.get(&key).copied().unwrap_or(0)
                    + retired.get(&customer).copied().unwrap_or(0);
                (have > backed).then_some((customer, have - backed))
            })
            .collect())
    }

    /// Returns stranded units (and unbacked per-customer counts) with a
    /// compare-and-set on the stock version; oversold stock is reported.
    async fn return_stranded(&self, run: &mut Run<'_>, s: Stranded) -> Result<(), ReconcileError> {
        let subject = format!("{}/{}", s.restaurant, s.item);
        let action = format!("return {} units", s.units);
        if s.units < 0 {
            let detail = format!("{}: oversold", s.detail);
            run.record("held_stock", subject, "none", Outcome::Unfixable, detail);
            return Ok(());
        }
        if run.options.dry_run {
            run.record("held_stock", subject, &action, Outcome::WouldFix, s.detail);
            return Ok(());
        }
        run.pace().await;
        let fixed = self
            .engine
            .reclaim_stock(&s.restaurant, &s.item, s.units, s.version, &s.customers)
            .await?;
        let (outcome, detail) = match fixed {
            Reclaimed::Done(_) => (Outcome::Fixed, s.detail),
            Reclaimed::Stale => (
                Outcome::Unfixable,
                format!("{}: stock moved during the scan; run again", s.detail),
            ),
            Reclaimed::NotFound => (Outcome::Unfixable, format!("{}: item gone", s.detail)),
            Reclaimed::Overdraw => (
                Outcome::Unfixable,
                format!(
                    "{}: a customer's count moved during the scan; run again",
                    s.detail
                ),
            ),
        };
        run.record("held_stock", subject, &action, outcome, detail);
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
}

/// What the live orders of one partition hold.
#[derive(Default)]
struct Holds {
    /// (restaurant, item) → units held by orders not rejected.
    held: crate::check::Held,
    /// (restaurant, item, customer) → units counted towards the limit.
    counted: crate::check::Counted,
    /// Orders at a final pair: (last change ms, id), for the resting index.
    resting: Vec<(f64, String)>,
}

impl Holds {
    fn units(&self, restaurant: &str, item: &str) -> i64 {
        self.held
            .get(&(restaurant.to_string(), item.to_string()))
            .copied()
            .unwrap_or(0)
    }
}

/// Units of an item that no live order holds, about to be returned.
struct Stranded {
    restaurant: String,
    item: String,
    units: i64,
    version: i64,
    customers: Vec<(String, i64)>,
    detail: String,
}
