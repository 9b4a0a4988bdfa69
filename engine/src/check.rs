//! The rule checker, shared by tests, benchmarks and `lunchrush check`.
//!
//! 1. **No mismatched pair**: every order is in an allowed (status, payment)
//!    pair — or, unless `at_rest`, in a pair a running saga passes through.
//! 2. **Stock conserved**: for every item, `supplied` (initial + restocks −
//!    units of retired orders) = on hand + units held by live non-rejected
//!    orders, and on hand ≥ 0.
//! 3. **Per-customer limits**: the per-customer counters equal the units of
//!    the customer's live non-rejected counted lines plus those of their
//!    retired orders (`:pcr`), and never exceed `max_per_customer`.
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
    /// Items whose stock kept moving during every scan (live traffic or
    /// retirement): not judged this time.
    pub unjudged: u64,
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
        if self.unjudged > 0 {
            writeln!(
                f,
                "  {} items kept moving and were not judged",
                self.unjudged
            )?;
        }
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
    for p in 0..engine.keys().partitions() {
        check_partition(engine, p, at_rest, &mut report).await?;
    }
    Ok(report)
}

/// Scans of a partition tried before items that keep moving are left
/// unjudged.
const ATTEMPTS: u32 = 5;

/// (restaurant, item) -> units held by live non-rejected orders.
pub(crate) type Held = HashMap<(String, String), i64>;
/// (restaurant, item, customer) -> counted units of live orders.
pub(crate) type Counted = HashMap<(String, String, String), i64>;

/// Adds what a live order holds: the units of its lines (none once it is
/// rejected), and those of its counted lines towards its customer's limits.
pub(crate) fn tally_lines(order: &Order, held: &mut Held, counted: &mut Counted) {
    if order.status == OrderStatus::Rejected {
        return;
    }
    for line in &order.lines {
        let item = (order.restaurant.clone(), line.item.clone());
        *held.entry(item).or_default() += i64::from(line.qty);
        if line.counted {
            let key = (
                order.restaurant.clone(),
                line.item.clone(),
                order.customer.clone(),
            );
            *counted.entry(key).or_default() += i64::from(line.qty);
        }
    }
}

/// One partition. An item's numbers are judged only if its stock version
/// did not move while the orders were scanned (live traffic or retirement
/// would otherwise count one order's units twice or not at all); a
/// partition with moving items is scanned again, up to [`ATTEMPTS`] times.
async fn check_partition(
    engine: &Engine,
    p: u16,
    at_rest: bool,
    report: &mut CheckReport,
) -> Result<(), EngineError> {
    for attempt in 1..=ATTEMPTS {
        let before = stock_versions(engine, p).await?;
        let mut part = CheckReport::default();
        let (held, counted) = scan_orders(engine, p, at_rest, &mut part).await?;
        let moved = judge_items(engine, p, &before, held, counted, &mut part).await?;
        if moved == 0 || attempt == ATTEMPTS {
            report.orders += part.orders;
            report.in_flight += part.in_flight;
            report.items += part.items;
            report.unjudged += moved;
            for (status, n) in part.by_status {
                *report.by_status.entry(status).or_default() += n;
            }
            report.violations.extend(part.violations);
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(100 * u64::from(attempt))).await;
    }
    Ok(())
}

async fn stock_versions(
    engine: &Engine,
    p: u16,
) -> Result<HashMap<(String, String), i64>, EngineError> {
    let mut versions = HashMap::new();
    for restaurant in engine.restaurants(p).await? {
        if let Some(menu) = engine.menu(&restaurant).await? {
            for item in menu.items {
                versions.insert((restaurant.clone(), item.item), item.stock_version);
            }
        }
    }
    Ok(versions)
}

/// Every order of the partition: its pair checked, its lines counted.
async fn scan_orders(
    engine: &Engine,
    p: u16,
    at_rest: bool,
    report: &mut CheckReport,
) -> Result<(Held, Counted), EngineError> {
    let mut held = Held::new();
    let mut counted = Counted::new();
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
            if fields.is_empty() {
                continue; // retired since the SCAN
            }
            let Some(order) = Order::from_fields(p, &fields) else {
                report
                    .violations
                    .push(format!("{}: malformed order hash", key.as_str_lossy()));
                continue;
            };
            check_order(&order, at_rest, report);
            tally_lines(&order, &mut held, &mut counted);
        }
    }
    Ok((held, counted))
}

/// Stock and per-customer counters of every item of the partition against
/// the live orders' lines; returns how many items moved during the scan
/// (not judged).
async fn judge_items(
    engine: &Engine,
    p: u16,
    before: &HashMap<(String, String), i64>,
    mut held: Held,
    mut counted: Counted,
    report: &mut CheckReport,
) -> Result<u64, EngineError> {
    let mut moved = 0;
    for restaurant in engine.restaurants(p).await? {
        let Some(menu) = engine.menu(&restaurant).await? else {
            continue;
        };
        for item in &menu.items {
            let key = (restaurant.clone(), item.item.clone());
            let units = held.remove(&key).unwrap_or(0);
            let per_customer: HashMap<String, i64> = engine
                .redis()
                .hgetall(engine.keys().item_per_customer(p, &restaurant, &item.item))
                .await?;
            let retired: HashMap<String, i64> = engine
                .redis()
                .hgetall(
                    engine
                        .keys()
                        .item_retired_per_customer(p, &restaurant, &item.item),
                )
                .await?;
            let now: Option<String> = engine
                .redis()
                .hget(engine.keys().item(p, &restaurant, &item.item), "sv")
                .await?;
            let now = now.and_then(|s| s.parse::<i64>().ok()).unwrap_or(0);
            if before.get(&key) != Some(&item.stock_version) || now != item.stock_version {
                moved += 1;
                counted.retain(|(r, i, _), _| !(r == &restaurant && i == &item.item));
                continue;
            }
            report.items += 1;
            judge_item(
                &restaurant,
                item,
                units,
                &per_customer,
                retired,
                &mut counted,
                report,
            );
        }
    }
    for ((restaurant, item), units) in held {
        report.violations.push(format!(
            "partition {p}: {units} units of unknown item {restaurant}/{item} held by live orders"
        ));
    }
    for ((restaurant, item, customer), units) in counted {
        if units > 0 {
            report.violations.push(format!(
                "item {restaurant}/{item}: customer {customer} holds {units} counted units with no counter"
            ));
        }
    }
    Ok(moved)
}

fn judge_item(
    restaurant: &str,
    item: &crate::domain::MenuItem,
    units: i64,
    per_customer: &HashMap<String, i64>,
    mut retired: HashMap<String, i64>,
    counted: &mut Counted,
    report: &mut CheckReport,
) {
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
    for (customer, &have) in per_customer {
        let live = counted
            .remove(&(restaurant.to_string(), item.item.clone(), customer.clone()))
            .unwrap_or(0);
        let gone = retired.remove(customer).unwrap_or(0);
        if have != live + gone {
            report.violations.push(format!(
                "item {restaurant}/{}: customer {customer} counted {have}, live orders hold {live}, retired orders {gone}",
                item.item
            ));
        }
        if let Some(max) = item.max_per_customer
            && have > max
        {
            report.violations.push(format!(
                "item {restaurant}/{}: customer {customer} holds {have} > max_per_customer {max}",
                item.item
            ));
        }
    }
    for (customer, units) in retired {
        if units != 0 {
            report.violations.push(format!(
                "item {restaurant}/{}: customer {customer} has {units} retired counted units but no counter",
                item.item
            ));
        }
    }
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
