//! Delayed tasks with second-scale durations against real Redis: the notice
//! and the automatic confirmation fire once each at the right time across two
//! engine processes; confirmations cancel them; timeouts compensate; a timer
//! due while no engine ran fires late, once; an order that went the whole
//! way is one compact hash.

mod common;

use std::time::{Duration, Instant};

use common::TestEnv;
use engine::domain::{OrderStatus, PaymentStatus};
use engine::engine::Actor;
use engine::events::EventKind;
use engine::keys::{Lane, Topic};
use fred::prelude::*;
use stack::psp::Faults;

/// How long past its due time a timer waits while no engine runs.
const LATE_BY_MS: f64 = 700.0;

fn quick() -> engine::Timers {
    engine::Timers {
        payment_window: Duration::from_secs(60),
        approval_timeout: Duration::from_secs(60),
        confirm_notice_after: Duration::from_secs(1),
        auto_confirm_after: Duration::from_secs(1),
    }
}

async fn place(env: &TestEnv, rid: &str, i: usize) -> uuid::Uuid {
    let request = fixture::numbered_order(i, rid, &[("dish", 1)], 10_000);
    env.engine.place_order(&request).await.unwrap().order_id
}

/// Moves `order` to `to` as `actor`, online.
async fn advance(
    env: &TestEnv,
    order: &engine::domain::Order,
    to: OrderStatus,
    actor: Actor,
) -> engine::engine::Transition {
    let engine = &env.engine;
    engine
        .advance(order, to, actor, None, Lane::Online)
        .await
        .unwrap()
}

/// A standalone fixture on [`quick`] timers as `tweak` changes them.
async fn quick_env_with(tweak: impl FnOnce(&mut engine::Timers)) -> TestEnv {
    let mut timers = quick();
    tweak(&mut timers);
    common::with_timers(false, timers).await
}

/// Twenty dispatched orders, two engine processes claiming: each order gets
/// exactly one notice after ~1 s and is confirmed automatically ~1 s later,
/// exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notice_and_auto_confirm_fire_once_each_across_two_engines() {
    let mut env = common::with_timers(false, quick()).await;
    env.restaurant("r-auto", true, "dish", 10_000, 100).await;
    env.start_workers("engine-1");
    // A second engine process: its own connection, scripts, workers, claimer.
    let second = engine::Engine::new(
        engine::store::connect(env.engine.config()).await.unwrap(),
        env.engine.config().clone(),
    )
    .await
    .unwrap();
    let (_stop, stopped) = tokio::sync::watch::channel(false);
    engine::saga::spawn_workers(
        &second,
        &env.psp,
        env.notifier.clone(),
        &common::fast_options("engine-2"),
        &stopped,
    );

    let mut ids = Vec::new();
    for i in 0..20 {
        ids.push(place(&env, "r-auto", i).await);
    }
    for id in &ids {
        let order = env
            .order_when(id, "APPROVED", |o| o.status == OrderStatus::Approved)
            .await;
        let t = advance(&env, &order, OrderStatus::Dispatched, Actor::Restaurant).await;
        assert!(t.is_done());
    }
    for id in &ids {
        let order = env
            .order_when(id, "CONFIRMED", |o| o.status == OrderStatus::Confirmed)
            .await;
        assert_eq!(order.pay, PaymentStatus::Captured);
        let events = env.engine.order_events(&order).await.unwrap();
        let at = |kind: &str| {
            events
                .iter()
                .filter(|e| e.kind.as_str() == kind)
                .map(|e| e.ts_ms)
                .collect::<Vec<_>>()
        };
        let (dispatched, notified, confirmed) = (
            at("OrderDispatched"),
            at("NotificationSent"),
            at("OrderConfirmed"),
        );
        assert_eq!(
            (dispatched.len(), notified.len(), confirmed.len()),
            (1, 1, 1),
            "{events:?}"
        );
        assert!(
            notified[0] - dispatched[0] >= 1_000,
            "the notice waits 1 s after dispatch"
        );
        assert!(
            confirmed[0] - notified[0] >= 1_000,
            "auto-confirmation waits 1 s after the notice"
        );
        let confirmed_event = events
            .iter()
            .find(|e| e.kind == EventKind::OrderConfirmed)
            .unwrap();
        assert!(
            confirmed_event.data.contains("\"timer\""),
            "{}",
            confirmed_event.data
        );
        assert!(env.timers_of(&order).await.is_empty());
    }
    let sent = env.notifier.sent.lock().unwrap().clone();
    assert_eq!(sent.len(), 20, "one notice per order");
    let mut keys: Vec<&str> = sent.iter().map(|n| n.idempotency_key.as_str()).collect();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), 20);
    env.assert_rule_holds().await;
}

/// A customer who confirms before the notice is never notified nor
/// auto-confirmed; one who confirms after the notice is not auto-confirmed;
/// an admin may confirm an order that was never dispatched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirmations_cancel_the_pending_timers() {
    let mut env = common::with_timers(false, quick()).await;
    env.restaurant("r-auto", true, "dish", 10_000, 100).await;
    env.start_workers("engine-1");
    let early = place(&env, "r-auto", 1).await;
    let late = place(&env, "r-auto", 2).await;
    let admin = place(&env, "r-auto", 3).await;
    for id in [&early, &late] {
        let order = env
            .order_when(id, "APPROVED", |o| o.status == OrderStatus::Approved)
            .await;
        advance(&env, &order, OrderStatus::Dispatched, Actor::Restaurant).await;
    }
    // Early: confirmed at once; the notice timer goes in the same step.
    let order = env.engine.order(&early).await.unwrap().unwrap();
    assert_eq!(env.timers_of(&order).await.len(), 1);
    advance(&env, &order, OrderStatus::Confirmed, Actor::Customer).await;
    assert!(env.timers_of(&order).await.is_empty());
    // Late: confirmed after the notice, before the automatic confirmation.
    let order = env
        .order_when(&late, "notified", |o| !o.notified.is_empty())
        .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while env.timers_of(&order).await.is_empty() {
        assert!(Instant::now() < deadline, "auto_confirm never scheduled");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let order = env.engine.order(&late).await.unwrap().unwrap();
    advance(&env, &order, OrderStatus::Confirmed, Actor::Customer).await;
    assert!(
        env.timers_of(&order).await.is_empty(),
        "the customer's confirmation cancels auto_confirm"
    );
    // Admin: APPROVED straight to CONFIRMED.
    let order = env
        .order_when(&admin, "APPROVED", |o| o.status == OrderStatus::Approved)
        .await;
    let t = advance(&env, &order, OrderStatus::Confirmed, Actor::Admin).await;
    assert_eq!(t.status, Some(OrderStatus::Confirmed));

    // Every timer these orders had fired before its confirmation (if at
    // all) and was handled: nothing left to confirm them a second time.
    for id in [&early, &late, &admin] {
        let order = env.engine.order(id).await.unwrap().unwrap();
        assert!(env.timers_of(&order).await.is_empty());
    }
    env.drain_groups(Duration::from_secs(30)).await;
    for id in [&early, &late, &admin] {
        let order = env.engine.order(id).await.unwrap().unwrap();
        let events = env.engine.order_events(&order).await.unwrap();
        let confirmations: Vec<&str> = events
            .iter()
            .filter(|e| e.kind == EventKind::OrderConfirmed)
            .map(|e| e.data.as_str())
            .collect();
        assert_eq!(confirmations.len(), 1, "{id}: {events:?}");
        assert!(
            !confirmations[0].contains("timer"),
            "{id} was not auto-confirmed"
        );
    }
    let sent: Vec<uuid::Uuid> = env
        .notifier
        .sent
        .lock()
        .unwrap()
        .iter()
        .map(|n| n.order_id)
        .collect();
    assert_eq!(sent, vec![late], "only the late customer was notified");
}

/// A restaurant that never answers loses the order after the approval
/// timeout: rejected, authorization voided, stock back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_approval_timeout_compensates() {
    let mut env = quick_env_with(|t| t.approval_timeout = Duration::from_secs(1)).await;
    env.restaurant("r-slow", false, "dish", 10_000, 5).await;
    env.start_workers("engine-1");
    let id = place(&env, "r-slow", 1).await;
    let order = env
        .order_when(&id, "voided", |o| o.pay == PaymentStatus::Voided)
        .await;
    assert_eq!(
        (order.status, order.reason.as_str()),
        (OrderStatus::Rejected, "approval_timeout")
    );
    assert_eq!(
        env.engine.menu("r-slow").await.unwrap().unwrap().items[0].stock,
        5
    );
    assert_eq!(env.sim.payment(&id.to_string()).unwrap().state, "voided");
    env.assert_rule_holds().await;
}

/// An order whose payment never goes through is rejected when its payment
/// window closes, and its stock comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_payment_window_compensates() {
    let mut env = quick_env_with(|t| t.payment_window = Duration::from_secs(1)).await;
    env.sim.set_faults(Faults {
        error_rate: 1.0,
        ..Faults::default()
    });
    env.restaurant("r-any", true, "dish", 10_000, 5).await;
    env.start_workers("engine-1");
    let id = place(&env, "r-any", 1).await;
    let order = env
        .order_when(&id, "rejected", |o| o.status == OrderStatus::Rejected)
        .await;
    assert_eq!(
        (order.reason.as_str(), order.pay),
        ("payment_window", PaymentStatus::None)
    );
    assert_eq!(
        env.engine.menu("r-any").await.unwrap().unwrap().items[0].stock,
        5
    );
    assert!(
        env.sim.payment(&id.to_string()).is_none(),
        "the provider never charged"
    );
    env.assert_rule_holds().await;
}

/// A timer that fell due while no engine was running fires at the next
/// claim — late, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timer_due_while_every_engine_was_down_fires_late_once() {
    let mut env = quick_env_with(|t| t.approval_timeout = Duration::from_secs(1)).await;
    env.restaurant("r-slow", false, "dish", 10_000, 5).await;
    let id = place(&env, "r-slow", 1).await;
    engine::saga::drive_payment(&env.engine, &env.psp, &id, Lane::Online)
        .await
        .unwrap();
    let order = env.engine.order(&id).await.unwrap().unwrap();
    assert_eq!(order.status, OrderStatus::Paid);
    assert_eq!(
        env.timers_of(&order).await,
        vec![format!("approval_timeout|{id}")]
    );
    // While every engine is down, the approval timeout falls due and stays
    // unclaimed for a while (by Redis time, which the wheel is scored in).
    let due: f64 = env
        .engine
        .redis()
        .zscore(
            env.engine.keys().wheel(order.partition),
            format!("approval_timeout|{id}"),
        )
        .await
        .unwrap();
    loop {
        let now_ms = engine::store::server_time_ms(env.engine.redis())
            .await
            .unwrap() as f64;
        if now_ms >= due + LATE_BY_MS {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Engines come back: two at once.
    env.start_workers("engine-1");
    env.start_workers("engine-2");
    let order = env
        .order_when(&id, "voided", |o| o.pay == PaymentStatus::Voided)
        .await;
    assert_eq!(order.reason, "approval_timeout");
    let fired: Vec<(String, std::collections::HashMap<String, String>)> = env
        .engine
        .redis()
        .xrange(
            env.engine.keys().stream(order.partition, Topic::Timers),
            "-",
            "+",
            None,
        )
        .await
        .unwrap();
    let mine: Vec<_> = fired
        .iter()
        .filter(|(_, f)| f["data"].contains(&id.to_string()))
        .collect();
    assert_eq!(mine.len(), 1, "fired once");
    let data: serde_json::Value = serde_json::from_str(&mine[0].1["data"]).unwrap();
    let lateness = data["fired"].as_i64().unwrap() - data["due"].as_i64().unwrap();
    assert!(
        lateness >= LATE_BY_MS as i64,
        "it fired late ({lateness} ms), not never"
    );
}

/// An order that went the whole way (three dishes with the longest ids,
/// captured, dispatched, noticed, confirmed by its timer) is one compact
/// hash in Redis: a listpack of about 1 KB, where a hashtable of the same
/// fields takes 2.4 KB. What each live order costs is what bounds Redis's
/// memory at the peak.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_confirmed_order_is_one_compact_hash() {
    let mut env = common::with_timers(false, quick()).await;
    let longest = engine::domain::ID_LEN_MAX;
    let rid = "r".repeat(longest);
    let dishes: Vec<String> = (0..3).map(|i| i.to_string().repeat(longest)).collect();
    env.restaurant(&rid, true, &dishes[0], 1_000, 10).await;
    for dish in &dishes[1..] {
        env.item(&rid, dish, 1_000, 10, Some(5)).await;
    }
    env.start_workers("w1");
    let lines: Vec<(&str, i64)> = dishes.iter().map(|d| (d.as_str(), 2)).collect();
    let request = fixture::numbered_order("-".repeat(longest - 1), &rid, &lines, 6_000);
    let id = env.engine.place_order(&request).await.unwrap().order_id;
    let order = env
        .order_when(&id, "APPROVED", |o| o.status == OrderStatus::Approved)
        .await;
    advance(&env, &order, OrderStatus::Dispatched, Actor::Restaurant).await;
    let order = env
        .order_when(&id, "CONFIRMED", |o| o.status == OrderStatus::Confirmed)
        .await;
    assert_eq!(order.events.len(), 5, "{:?}", order.events);

    let keys = env.engine.keys();
    let key = keys.order(keys.partition_of_order(&id).unwrap(), &id);
    let redis = env.engine.redis();
    let object = |what: &'static str, sub: &'static str| {
        let args = vec![sub.to_string(), key.clone()];
        async move {
            redis
                .custom::<String, _>(fred::cmd!(what), args)
                .await
                .unwrap()
        }
    };
    let encoding = object("OBJECT", "ENCODING").await;
    let bytes: u64 = object("MEMORY", "USAGE").await.parse().unwrap();
    assert_eq!(encoding, "listpack", "{bytes} B");
    assert!(bytes < 1_280, "{bytes} B");
    env.stop_workers().await;
}
