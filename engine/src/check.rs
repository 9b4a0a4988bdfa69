//! The rule checker, shared by tests, benchmarks and `lunchrush check`.
//!
//! 1. **No mismatched pair**: every order is in an allowed (status, payment)
//!    pair — or, unless `at_rest`, in a pair a running saga passes through.
//! 2. **Stock conserved**: for every item, `supplied` (initial + restocks) =
//!    on hand + units held by non-rejected orders, and on hand ≥ 0.
//! 3. **Per-customer limits**: the per-customer counters equal the units of
//!    the customer's non-rejected counted lines and never exceed
//!    `max_per_customer`.
//!
//! It reads with SCAN (bounded pages) and one HGETALL per order, batched, so
//! memory grows with the number of items and limited customers, not orders.

use std::collections::HashMap;

use fred::prelude::*;
use fred::types::scan::Scanner;
use futures::StreamExt;

use crate::domain::{Order, OrderStatus, is_allowed_pair, is_in_flight_pair};
use crate::engine::{Engine, EngineError};

/// SCAN page size (a hint to Redis).
const SCAN_COUNT: u32 = 1_000;

/// What the checker found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckReport {
    pub orders: u64,
    /// Orders whose saga is still running (allowed unless at rest).
    pub in_flight: u64,
    pub by_status: std::collections::BTreeMap<String, u64>,
    pub items: u64,
    /// Each broken rule, in words.
    pub violations: Vec<String>,
}

impl CheckReport {
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }
}

impl std::fmt::Display for CheckReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "{} orders ({} in flight), {} items checked: {}",
            self.orders,
            self.in_flight,
            self.items,
            if self.passed() { "PASS" } else { "FAIL" }
        )?;
        for (status, count) in &self.by_status {
            writeln!(f, "  {status:<10} {count}")?;
        }
        for violation in &self.violations {
            writeln!(f, "  violation: {violation}")?;
        }
        Ok(())
    }
}

/// Checks every order and item of every partition.
pub async fn check(engine: &Engine, at_rest: bool) -> Result<CheckReport, EngineError> {
    let mut report = CheckReport::default();
    // (partition, restaurant, item) -> units held by non-rejected orders
    let mut held: HashMap<(u16, String, String), i64> = HashMap::new();
    // (partition, restaurant, item, customer) -> counted units
    let mut counted: HashMap<(u16, String, String, String), i64> = HashMap::new();
    for p in 0..engine.keys().partitions() {
        let mut pages = engine
            .redis()
            .scan(engine.keys().order_pattern(p), Some(SCAN_COUNT), None);
        while let Some(page) = pages.next().await {
            let mut page = page?;
            let keys = page.take_results().unwrap_or_default();
            let reads = keys.iter().map(|key| {
                engine
                    .redis()
                    .hgetall::<HashMap<String, String>, _>(key.clone())
            });
            let orders = futures::future::try_join_all(reads).await?;
            Scanner::next(page);
            for (key, fields) in keys.iter().zip(orders) {
                let Some(order) = Order::from_fields(p, &fields) else {
                    report
                        .violations
                        .push(format!("{}: malformed order hash", key.as_str_lossy()));
                    continue;
                };
                check_order(&order, at_rest, &mut report);
                if order.status != OrderStatus::Rejected {
                    for line in &order.lines {
                        let item = (p, order.restaurant.clone(), line.item.clone());
                        *held.entry(item).or_default() += i64::from(line.qty);
                        if line.counted {
                            *counted
                                .entry((
                                    p,
                                    order.restaurant.clone(),
                                    line.item.clone(),
                                    order.customer.clone(),
                                ))
                                .or_default() += i64::from(line.qty);
                        }
                    }
                }
            }
        }
    }
    for p in 0..engine.keys().partitions() {
        for restaurant in engine.restaurants(p).await? {
            let Some(menu) = engine.menu(&restaurant).await? else {
                continue;
            };
            for item in &menu.items {
                report.items += 1;
                let units = held
                    .remove(&(p, restaurant.clone(), item.item.clone()))
                    .unwrap_or(0);
                if item.stock < 0 {
                    report.violations.push(format!(
                        "item {restaurant}/{}: {} units on hand (oversold)",
                        item.item, item.stock
                    ));
                }
                if item.supplied != item.stock + units {
                    report.violations.push(format!(
                        "item {restaurant}/{}: supplied {} != on hand {} + held by live orders {}",
                        item.item, item.supplied, item.stock, units
                    ));
                }
                let per_customer: HashMap<String, i64> = engine
                    .redis()
                    .hgetall(engine.keys().item_per_customer(p, &restaurant, &item.item))
                    .await?;
                for (customer, units) in &per_customer {
                    let units = *units;
                    let expected = counted
                        .remove(&(p, restaurant.clone(), item.item.clone(), customer.clone()))
                        .unwrap_or(0);
                    if units != expected {
                        report.violations.push(format!(
                            "item {restaurant}/{}: customer {customer} counted {units}, live orders hold {expected}",
                            item.item
                        ));
                    }
                    if let Some(max) = item.max_per_customer
                        && units > max
                    {
                        report.violations.push(format!(
                            "item {restaurant}/{}: customer {customer} holds {units} > max_per_customer {max}",
                            item.item
                        ));
                    }
                }
            }
        }
    }
    for ((p, restaurant, item), units) in held {
        report.violations.push(format!(
            "partition {p}: {units} units of unknown item {restaurant}/{item} held by live orders"
        ));
    }
    for ((_, restaurant, item, customer), units) in counted {
        if units > 0 {
            report.violations.push(format!(
                "item {restaurant}/{item}: customer {customer} holds {units} counted units with no counter"
            ));
        }
    }
    Ok(report)
}

fn check_order(order: &Order, at_rest: bool, report: &mut CheckReport) {
    report.orders += 1;
    *report
        .by_status
        .entry(order.status.as_str().to_string())
        .or_default() += 1;
    if is_allowed_pair(order.status, order.pay) {
        return;
    }
    if !at_rest && is_in_flight_pair(order.status, order.pay) {
        report.in_flight += 1;
        return;
    }
    report.violations.push(format!(
        "order {}: {} with payment {}{}",
        order.id,
        order.status,
        order.pay,
        if at_rest { " at rest" } else { "" }
    ));
}
