//! The memory budget against a real Redis: what an order in flight still
//! writes stays within the reserve the budget keeps for it, and a Redis at
//! its hard limit refuses new orders cleanly while every order already in
//! flight still reaches rest, then takes orders again once memory is freed.

use std::time::Duration;

use engine::budget::{IN_FLIGHT_ORDER_BYTES, Refusal};
use engine::domain::{Decision, Order, OrderStatus, PaymentStatus};
use engine::engine::{Actor, PlaceError};
use engine::keys::Lane;
use fixture::{Fixture, Options, eventually, numbered_order};

/// Waits until all of `ids` satisfy `done`; returns them.
async fn all_when(
    fx: &Fixture,
    ids: &[uuid::Uuid],
    what: &str,
    done: fn(&Order) -> bool,
) -> Vec<Order> {
    eventually(Duration::from_secs(60), what, || async {
        let mut orders = Vec::new();
        for id in ids {
            match fx.engine.order(id).await.unwrap() {
                Some(order) if done(&order) => orders.push(order),
                seen => return Err(format!("{id}: {seen:?}")),
            }
        }
        Ok(orders)
    })
    .await
}

fn paid(o: &Order) -> bool {
    o.status == OrderStatus::Paid
}

/// The longest path an order takes (a restaurant that decides itself,
/// dispatch, the confirmation notice and the automatic confirmation) with
/// nothing archived or trimmed writes no more to Redis after its placement
/// than the reserve keeps per order in flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_in_flight_writes_no_more_than_its_reserve() {
    let mut fx = Fixture::start(Options::redis(), |c| {
        c.live_retention = None;
        c.timers.confirm_notice_after = Duration::from_millis(300);
        c.timers.auto_confirm_after = Duration::from_millis(300);
    })
    .await;
    const ORDERS: usize = 300;
    fx.restaurant("slow", false, "meal", 9_000, 1_000_000).await;
    let mut ids = Vec::new();
    for n in 0..ORDERS {
        let request = numbered_order(n, "slow", &[("meal", 1)], 9_000);
        ids.push(fx.engine.place_order(&request).await.unwrap().order_id);
    }
    let placed = fx.redis_used_memory().await;
    fx.start_workers("budget");
    let orders = all_when(&fx, &ids, "paid", paid).await;
    for order in &orders {
        let approved = fx
            .engine
            .decide(
                order,
                Decision::Approve,
                "",
                Some(order.version),
                false,
                Lane::Online,
            )
            .await
            .unwrap();
        assert!(approved.is_done(), "{approved:?}");
    }
    let orders = all_when(&fx, &ids, "captured", |o| o.pay == PaymentStatus::Captured).await;
    for order in &orders {
        let dispatched = fx
            .engine
            .advance(
                order,
                OrderStatus::Dispatched,
                Actor::Admin,
                Some(order.version),
                Lane::Online,
            )
            .await
            .unwrap();
        assert!(dispatched.is_done(), "{dispatched:?}");
    }
    all_when(&fx, &ids, "confirmed", |o| {
        o.status == OrderStatus::Confirmed
    })
    .await;
    fx.drain_groups(Duration::from_secs(60)).await;
    let rest = fx.redis_used_memory().await;
    let per_order = rest.saturating_sub(placed) / ORDERS as u64;
    println!(
        "An order wrote {per_order} B to Redis from placement to rest \
         (reserve per order in flight: {IN_FLIGHT_ORDER_BYTES} B)."
    );
    assert!(
        per_order <= IN_FLIGHT_ORDER_BYTES,
        "an order wrote {per_order} B after its placement, more than the {IN_FLIGHT_ORDER_BYTES} B \
         the budget reserves for it"
    );
    fx.assert_rule_holds().await;
}

/// Redis past its `maxmemory`: a placement is refused as a refused write
/// (`OOM`) and changes nothing, while the orders in flight are approved,
/// rejected, captured and voided to rest (their scripts run past the
/// limit). With memory freed, placements are taken again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_hard_limit_new_orders_are_refused_and_those_in_flight_finish() {
    let mut fx = Fixture::start(Options::redis(), |_| {}).await;
    fx.restaurant("slow", false, "meal", 9_000, 1_000).await;
    let mut ids = Vec::new();
    for n in 0..20 {
        let request = numbered_order(n, "slow", &[("meal", 1)], 9_000);
        ids.push(fx.engine.place_order(&request).await.unwrap().order_id);
    }
    fx.start_workers("oom");
    let orders = all_when(&fx, &ids, "paid", paid).await;
    let stock = |fx: &Fixture| {
        let engine = fx.engine.clone();
        async move { engine.menu("slow").await.unwrap().unwrap().items[0].stock }
    };
    let before = stock(&fx).await;
    fx.set_redis_maxmemory(fx.redis_used_memory().await / 2)
        .await;

    let refused = fx
        .engine
        .place_order(&numbered_order("late", "slow", &[("meal", 1)], 9_000))
        .await;
    match refused {
        Err(PlaceError::Engine(error)) => {
            assert_eq!(error.refused_write(), Some(Refusal::Memory), "{error}")
        }
        other => panic!("a placement past maxmemory was not refused: {other:?}"),
    }
    assert_eq!(
        stock(&fx).await,
        before,
        "a refused placement reserved stock"
    );
    assert_eq!(
        fx.orders().await.len(),
        20,
        "a refused placement left an order"
    );

    for (i, order) in orders.iter().enumerate() {
        let decision = if i % 2 == 0 {
            Decision::Approve
        } else {
            Decision::Reject
        };
        let decided = fx
            .engine
            .decide(
                order,
                decision,
                "",
                Some(order.version),
                false,
                Lane::Online,
            )
            .await
            .unwrap();
        assert!(decided.is_done(), "{decided:?}");
    }
    fx.settle(Duration::from_secs(60)).await;
    let rested = all_when(&fx, &ids, "at rest", |o| {
        matches!(
            (o.status, o.pay),
            (OrderStatus::Approved, PaymentStatus::Captured)
                | (OrderStatus::Rejected, PaymentStatus::Voided)
        )
    })
    .await;
    assert_eq!(rested.len(), 20);
    fx.assert_rule_holds().await;

    fx.set_redis_maxmemory(0).await;
    fx.engine
        .place_order(&numbered_order("later", "slow", &[("meal", 1)], 9_000))
        .await
        .expect("placements are taken again once memory is freed");
}
