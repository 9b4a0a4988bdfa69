//! The saga core against real Redis (standalone and a 3-master cluster) and
//! the provider simulator: the rule holds under concurrency, declines,
//! crashes and redeliveries.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::TestEnv;
use engine::domain::{Order, OrderStatus, PaymentStatus, PlaceOrder};
use engine::engine::PlaceError;
use engine::events::{Event, EventKind, Payload};
use engine::keys::{Lane, Topic};
use fred::prelude::*;
use stack::psp::Faults;

const SETTLE: Duration = Duration::from_secs(60);

/// Two `#[$test]`s of `scenario(env)`: `$standalone` on standalone Redis,
/// `$cluster` on a 3-master Cluster.
macro_rules! on_both_deployments {
    (#[$test:meta] $scenario:ident: $standalone:ident, $cluster:ident) => {
        #[$test]
        async fn $standalone() {
            $scenario(TestEnv::standalone().await).await;
        }

        #[$test]
        async fn $cluster() {
            $scenario(TestEnv::cluster().await).await;
        }
    };
}

/// With workers running, `count` customers each order one `item` from the
/// auto-approving `rid` that sells it (`price`, `stock`); every saga settles.
async fn settled_orders(
    env: &mut TestEnv,
    rid: &str,
    (item, price, stock): (&str, i64, i64),
    count: usize,
) {
    env.restaurant(rid, true, item, price, stock).await;
    env.start_workers("w1");
    env.place_numbered(0..count, rid, &[(item, 1)], price).await;
    env.settle(SETTLE).await;
}

/// 1,000 customers race for 100 units of one item: exactly 100 orders are
/// placed and approved (captured at the provider), 900 are refused
/// `out_of_stock`, stock ends at 0 and the checker passes.
async fn flash_sale(mut env: TestEnv) {
    env.restaurant("flash", true, "deal", 9_900, 100).await;
    env.start_workers("w1");
    let placements = (0..1_000).map(|i| {
        let engine = env.engine.clone();
        let request = fixture::numbered_order(i, "flash", &[("deal", 1)], 9_900);
        tokio::spawn(async move { engine.place_order(&request).await })
    });
    let results = futures::future::join_all(placements).await;
    let (mut placed, mut sold_out) = (0, 0);
    for result in results {
        match result.unwrap() {
            Ok(p) => {
                assert!(!p.duplicate);
                placed += 1;
            }
            Err(PlaceError::OutOfStock(items)) => {
                assert_eq!(items, vec!["deal".to_string()]);
                sold_out += 1;
            }
            Err(other) => panic!("unexpected refusal: {other}"),
        }
    }
    assert_eq!((placed, sold_out), (100, 900));
    env.settle(SETTLE).await;
    let orders = env.orders().await;
    assert_eq!(orders.len(), 100);
    assert!(
        orders
            .iter()
            .all(|o| o.status == OrderStatus::Approved && o.pay == PaymentStatus::Captured)
    );
    let menu = env.engine.menu("flash").await.unwrap().unwrap();
    assert_eq!(menu.items[0].stock, 0);
    let captured = env
        .sim
        .payments()
        .iter()
        .filter(|p| p.state == "captured")
        .count();
    assert_eq!(
        captured, 100,
        "the provider captured exactly the approved orders"
    );
    env.assert_rule_holds().await;
    env.stop_workers().await;
}

on_both_deployments!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    flash_sale: flash_sale_sells_exactly_the_stock_standalone,
    flash_sale_sells_exactly_the_stock_on_a_cluster
);

/// With 30 % of authorizations declined, every declined order ends
/// REJECTED/DECLINED (`payment_declined`) with its stock back, every other
/// one APPROVED/CAPTURED, and the provider's ledger agrees order by order.
async fn declines(mut env: TestEnv) {
    env.sim.set_faults(Faults {
        decline_rate: 0.3,
        ..Faults::default()
    });
    env.restaurant("r-decl", true, "soup", 5_000, 1_000).await;
    env.item("r-decl", "bread", 1_000, 1_000, None).await;
    env.start_workers("w1");
    env.place_numbered(0..200, "r-decl", &[("soup", 2), ("bread", 1)], 11_000)
        .await;
    env.settle(SETTLE).await;
    let ledger: HashMap<String, String> = env
        .sim
        .payments()
        .into_iter()
        .map(|p| (p.key, p.state))
        .collect();
    let orders = env.orders().await;
    assert_eq!(orders.len(), 200);
    let mut declined = 0;
    for order in &orders {
        let provider = ledger[&order.id.to_string()].as_str();
        match (order.status, order.pay, provider) {
            (OrderStatus::Rejected, PaymentStatus::Declined, "declined") => {
                assert_eq!(order.reason, "payment_declined");
                declined += 1;
            }
            (OrderStatus::Approved, PaymentStatus::Captured, "captured") => {}
            other => panic!("order {} ended as {other:?}", order.id),
        }
    }
    assert!(
        declined > 0,
        "a 30 % decline rate declines some of 200 orders"
    );
    let approved = 200 - declined;
    let menu = env.engine.menu("r-decl").await.unwrap().unwrap();
    let stock: HashMap<_, _> = menu
        .items
        .iter()
        .map(|i| (i.item.as_str(), i.stock))
        .collect();
    assert_eq!(stock["soup"], 1_000 - 2 * approved);
    assert_eq!(stock["bread"], 1_000 - approved);
    env.assert_rule_holds().await;
}

on_both_deployments!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    declines: declined_payments_release_their_stock_standalone,
    declined_payments_release_their_stock_on_a_cluster
);

/// Every order's events carry sequence numbers 1..=n with no gap and no
/// repeat, and no saga step's event appears twice.
async fn assert_events_once(env: &TestEnv) {
    for order in env.orders().await {
        let events = env.engine.order_events(&order).await.unwrap();
        let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
        let expected: Vec<u64> = (1..=order.seq).collect();
        assert_eq!(seqs, expected, "order {} event sequence", order.id);
        let mut kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
        kinds.sort();
        let before = kinds.len();
        kinds.dedup();
        assert_eq!(
            kinds.len(),
            before,
            "order {}: an event applied twice",
            order.id
        );
    }
}

/// A consumer crashes after reading a batch, before acknowledging it: its
/// entries stay pending; another consumer reclaims them (XAUTOCLAIM) and
/// finishes every saga, and no event is applied twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_consumers_batch_is_reclaimed_and_applied_once() {
    let mut env = TestEnv::standalone().await;
    env.restaurant("r-crash", true, "noodles", 8_000, 10_000)
        .await;
    env.place_numbered(0..60, "r-crash", &[("noodles", 1)], 8_000)
        .await;
    // The doomed consumer reads everything the payment group has, then dies
    // without processing or acknowledging anything.
    let keys = env.engine.keys().clone();
    let mut taken = 0;
    for p in 0..common::PARTITIONS {
        let page = engine::saga::read_group(
            env.engine.redis(),
            "payment",
            "doomed",
            1_000,
            vec![keys.stream(p, engine::keys::Topic::Orders)],
            vec![">"],
        )
        .await
        .unwrap();
        taken += page.iter().map(|(_, entries)| entries.len()).sum::<usize>();
    }
    assert_eq!(taken, 60, "the doomed consumer holds every OrderPlaced");
    assert_eq!(env.unsettled().await, 60);
    env.start_workers("survivor");
    env.settle(SETTLE).await;
    assert!(
        env.orders()
            .await
            .iter()
            .all(|o| o.status == OrderStatus::Approved && o.pay == PaymentStatus::Captured)
    );
    // The doomed consumer owns nothing any more.
    for p in 0..common::PARTITIONS {
        let pending: Vec<(String, String, u64, u64)> = env
            .engine
            .redis()
            .custom(
                fred::cmd!("XPENDING"),
                vec![
                    keys.stream(p, engine::keys::Topic::Orders),
                    "payment".into(),
                    "-".into(),
                    "+".into(),
                    "1000".into(),
                    "doomed".into(),
                ],
            )
            .await
            .unwrap();
        assert!(pending.is_empty(), "partition {p}: {pending:?}");
    }
    assert_events_once(&env).await;
    env.assert_rule_holds().await;
}

/// Delivering every event a second time changes nothing: each handler sees
/// the order's current state and owes no step; each transition repeated with
/// the same arguments is a no-op.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaying_every_event_changes_nothing() {
    let mut env = TestEnv::standalone().await;
    env.sim.set_faults(Faults {
        decline_rate: 0.25,
        ..Faults::default()
    });
    settled_orders(&mut env, "r-replay", ("rice", 7_000, 500), 80).await;
    env.stop_workers().await;
    let before = env.orders().await;
    let stock_before = env.engine.menu("r-replay").await.unwrap().unwrap();
    let ledger_before = env.sim.payments();
    for order in &before {
        for event in env.engine.order_events(order).await.unwrap() {
            match event.kind.as_str() {
                "OrderPlaced" | "OrderRejected" | "RestaurantApproved" | "RestaurantRejected" => {
                    engine::saga::drive_payment(
                        &env.engine,
                        &env.psp,
                        &order.id,
                        engine::keys::Lane::Online,
                    )
                    .await
                    .unwrap();
                }
                "PaymentAuthorized" => {
                    engine::saga::auto_approve(&env.engine, &order.id, engine::keys::Lane::Online)
                        .await
                        .unwrap();
                }
                _ => {}
            }
        }
        // The steps themselves, repeated: each is a no-op now.
        let outcome = match order.pay {
            PaymentStatus::Captured => Some(engine::engine::PaymentOutcome::Captured),
            PaymentStatus::Declined => Some(engine::engine::PaymentOutcome::Declined),
            _ => None,
        };
        if let Some(outcome) = outcome {
            let t = env
                .engine
                .record_payment(order, outcome, &order.psp_ref, engine::keys::Lane::Online)
                .await
                .unwrap();
            assert_eq!(t.outcome, engine::engine::Outcome::Unchanged);
        }
        if order.status == OrderStatus::Approved {
            let t = env
                .engine
                .decide(
                    order,
                    engine::domain::Decision::Approve,
                    "",
                    None,
                    true,
                    engine::keys::Lane::Online,
                )
                .await
                .unwrap();
            assert_eq!(t.outcome, engine::engine::Outcome::Unchanged);
        }
    }
    // And a second full pass of the workers over the streams: re-deliver by
    // resetting the groups to the start.
    for p in 0..common::PARTITIONS {
        for role in engine::saga::Role::ALL {
            for topic in role.topics() {
                let stream = env.engine.keys().stream(p, *topic);
                env.rewind_group(&stream, role.group()).await.unwrap();
            }
        }
    }
    // The rewind took: some group now lags behind its stream.
    assert!(env.saga_backlog().await > 0, "nothing to redeliver");
    env.start_workers("w2");
    // The replay happened: every group read its streams to the end again
    // and acknowledged everything (lag and pending back to 0).
    env.drain_groups(SETTLE).await;
    env.settle(SETTLE).await;
    env.stop_workers().await;
    assert_eq!(env.orders().await, before, "orders unchanged by redelivery");
    assert_eq!(
        env.engine.menu("r-replay").await.unwrap().unwrap(),
        stock_before
    );
    assert_eq!(
        env.sim.payments(),
        ledger_before,
        "the provider saw no new operation"
    );
    env.assert_rule_holds().await;
}

/// Redis forgets its script cache on restart or failover (simulated with
/// SCRIPT FLUSH on every node): the next transition reloads its script on
/// NOSCRIPT and succeeds.
async fn survives_script_flush(env: TestEnv) {
    env.restaurant("r-flush", true, "tea", 3_000, 10).await;
    let flush = |port: u16| stack::redis::command_once(port, &["SCRIPT", "FLUSH"]).unwrap();
    for node in env.servers.redis_nodes() {
        assert_eq!(flush(node.port()), "OK");
    }
    let request = env.request("c1", "r-flush", &[("tea", 2)], 6_000, "k1");
    let placed = env.engine.place_order(&request).await.unwrap();
    let order = env.engine.order(&placed.order_id).await.unwrap().unwrap();
    assert_eq!(order.status, OrderStatus::Pending);
    assert_eq!(
        env.engine.menu("r-flush").await.unwrap().unwrap().items[0].stock,
        8
    );
}

on_both_deployments!(
    #[tokio::test]
    survives_script_flush: a_flushed_script_cache_is_reloaded_standalone,
    a_flushed_script_cache_is_reloaded_on_a_cluster
);

/// The same Idempotency-Key with the same request returns the first answer
/// and reserves nothing more; with another request it is refused, even for
/// a restaurant in another partition; a refused placement leaves no trace.
/// The customer's guard is kept by the script where it may share the call
/// (always on a standalone Redis), and then it is the key's first answer
/// (one key per placement); by a command before it elsewhere, a bare
/// fingerprint beside the answer. On a Cluster the first round's customer
/// shares `first`'s partition (the script keeps the guard; the command
/// refuses the key for `other`), the second's shares `other`'s (the command
/// keeps it; the script refuses).
async fn idempotency_keys_return_the_first_answer_and_refuse_reuse(env: TestEnv) {
    let keys = env.engine.keys().clone();
    // Two restaurants in different partitions.
    let first = "r-idem-0";
    let p = keys.partition_of_restaurant(first);
    let other = (1..100)
        .map(|i| format!("r-idem-{i}"))
        .find(|r| keys.partition_of_restaurant(r) != p)
        .unwrap();
    env.restaurant(first, true, "pie", 4_000, 10).await;
    env.restaurant(&other, true, "pie", 4_000, 10).await;
    let customer = |partition: u16| {
        (0..1000)
            .map(|i| format!("c-{partition}-{i}"))
            .find(|c| keys.partition_of_customer(c) == partition)
            .unwrap()
    };
    let guard_of = |customer: &str, key: &str| {
        let guard = keys.idempotency_guard(customer, key);
        let redis = env.engine.redis().clone();
        async move {
            let value: Option<String> = redis.get(&guard).await.unwrap();
            let ttl: i64 = redis.pttl(&guard).await.unwrap();
            (value, ttl)
        }
    };
    let rounds = [customer(p), customer(keys.partition_of_restaurant(&other))];

    for (round, c1) in rounds.into_iter().enumerate() {
        let kept_by_script =
            !env.engine.redis().is_clustered() || keys.partition_of_customer(&c1) == p;
        // What the guard holds for `request`: its first answer when the
        // script keeps it, else its bare fingerprint.
        let guards = |held: Option<String>, request: &PlaceOrder, order: Option<uuid::Uuid>| {
            let held = held.expect("a placed order's key has its guard");
            if kept_by_script {
                let record: serde_json::Value = serde_json::from_str(&held).unwrap();
                assert_eq!(record["fp"], request.fingerprint().as_str());
                if let Some(order) = order {
                    assert_eq!(record["order"], order.to_string().as_str());
                }
            } else {
                assert_eq!(held, request.fingerprint());
            }
        };
        let request = env.request(&c1, first, &[("pie", 1)], 4_000, "same-key");
        let a = env.engine.place_order(&request).await.unwrap();
        let answer = keys.idempotency(p, &c1, "same-key");
        let separate: i64 = env.engine.redis().exists(&answer).await.unwrap();
        assert_eq!(separate == 1, !kept_by_script, "one key per placement");
        if !kept_by_script {
            // A guard gone before the key's answer: the answer is still
            // replayed, and a repeat puts the guard back.
            let _: i64 = env
                .engine
                .redis()
                .del(keys.idempotency_guard(&c1, "same-key"))
                .await
                .unwrap();
            let replayed = env.engine.replay(&request).await.unwrap().unwrap();
            assert_eq!(replayed.order_id, a.order_id);
        }
        let b = env.engine.place_order(&request).await.unwrap();
        assert_eq!(a.order_id, b.order_id);
        let replayed = env.engine.replay(&request).await.unwrap().unwrap();
        assert_eq!(replayed.order_id, a.order_id);
        let (held, ttl) = guard_of(&c1, "same-key").await;
        guards(held, &request, Some(a.order_id));
        assert!(ttl > 0, "the guard never expires: {ttl}");
        assert!(!a.duplicate && b.duplicate);
        assert_eq!(
            env.engine.menu(first).await.unwrap().unwrap().items[0].stock,
            9 - round as i64 * 3
        );

        let changed = env.request(&c1, first, &[("pie", 2)], 8_000, "same-key");
        assert!(matches!(
            env.engine.place_order(&changed).await,
            Err(PlaceError::IdempotencyConflict { .. })
        ));
        let elsewhere = env.request(&c1, &other, &[("pie", 1)], 4_000, "same-key");
        assert!(matches!(
            env.engine.place_order(&elsewhere).await,
            Err(PlaceError::IdempotencyConflict { .. })
        ));
        // Refused requests leave the first request's guard as it was.
        let (held, _) = guard_of(&c1, "same-key").await;
        guards(held, &request, Some(a.order_id));
        // Another customer may use the same key.
        let c2 = env.request(&format!("{c1}-2"), first, &[("pie", 1)], 4_000, "same-key");
        assert!(!env.engine.place_order(&c2).await.unwrap().duplicate);

        // A refusal (price changed, unknown item) leaves no guard: the same
        // key then works, and its guard expires with the key's answer.
        let guard = keys.idempotency_guard(&c1, "k3");
        let stale = env.request(&c1, first, &[("pie", 1)], 3_999, "k3");
        assert!(matches!(
            env.engine.place_order(&stale).await,
            Err(PlaceError::PriceChanged {
                current_total: 4_000
            })
        ));
        let unknown = env.request(&c1, first, &[("cake", 1)], 4_000, "k3");
        assert!(matches!(
            env.engine.place_order(&unknown).await,
            Err(PlaceError::ItemNotFound(_))
        ));
        let left: i64 = env.engine.redis().exists(&guard).await.unwrap();
        assert_eq!(left, 0, "a refused placement left its guard");
        let fixed = env.request(&c1, first, &[("pie", 1)], 4_000, "k3");
        assert!(!env.engine.place_order(&fixed).await.unwrap().duplicate);
        let (held, ttl) = guard_of(&c1, "k3").await;
        guards(held, &fixed, None);
        assert!(ttl > 0, "the guard never expires: {ttl}");
    }
    assert_eq!(env.orders().await.len(), 6);
    assert_eq!(
        env.engine.menu(&other).await.unwrap().unwrap().items[0].stock,
        10
    );
}

on_both_deployments!(
    #[tokio::test]
    idempotency_keys_return_the_first_answer_and_refuse_reuse: idempotency_keys_are_kept_standalone,
    idempotency_keys_are_kept_on_a_cluster
);

/// The provider fails in the worst ways — 5xx before acting, and timeouts
/// after charging — yet every order ends approved with exactly one payment
/// at the provider: an unknown outcome is looked up, never assumed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_timeouts_after_charging_never_charge_twice() {
    let mut env = TestEnv::standalone().await;
    env.sim.set_faults(Faults {
        error_rate: 0.2,
        timeout_after_charge_rate: 0.2,
        hang_ms: 2_500,
        ..Faults::default()
    });
    settled_orders(&mut env, "r-flaky", ("kimbap", 3_500, 100), 30).await;
    let orders = env.orders().await;
    assert!(
        orders
            .iter()
            .all(|o| o.status == OrderStatus::Approved && o.pay == PaymentStatus::Captured)
    );
    let payments = env.sim.payments();
    assert_eq!(payments.len(), 30, "one payment per order");
    assert!(
        payments
            .iter()
            .all(|p| p.state == "captured" && p.amount == 3_500)
    );
    env.assert_rule_holds().await;
}

/// Places an order of one `item`, waits until it is paid, makes the provider
/// fail every call, and has the restaurant reject the order: a void is owed.
async fn rejected_while_the_provider_fails(
    env: &TestEnv,
    restaurant: &str,
    item: &str,
    price: i64,
) -> engine::domain::Order {
    let request = env.request("c1", restaurant, &[(item, 1)], price, "k1");
    let id = env.engine.place_order(&request).await.unwrap().order_id;
    let deadline = std::time::Instant::now() + SETTLE;
    let order = loop {
        let order = env.engine.order(&id).await.unwrap().unwrap();
        if order.status == OrderStatus::Paid {
            break order;
        }
        assert!(std::time::Instant::now() < deadline, "never authorized");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    env.sim.set_faults(Faults {
        error_rate: 1.0,
        ..Faults::default()
    });
    let lane = engine::keys::Lane::Online;
    env.engine
        .decide(
            &order,
            engine::domain::Decision::Reject,
            "",
            Some(order.version),
            false,
            lane,
        )
        .await
        .unwrap();
    order
}

/// A compensation the provider keeps refusing (void while it answers 503) is
/// retried, then parked in the operator queue with its reason — never
/// dropped: the order stays unsettled (REJECTED, AUTHORIZED) for
/// reconciliation to finish.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compensation_that_keeps_failing_is_parked_not_dropped() {
    let mut env = TestEnv::standalone().await;
    env.restaurant("r-manual", false, "bibimbap", 9_000, 10)
        .await;
    // The provider fails this call only, as far as the breaker can tell: its
    // circuit never opens here (an outage is the next test's).
    env.psp = engine::psp::PspClient::with_options(
        &env.engine.config().psp_url,
        engine::breaker::PspOptions {
            breaker_failures: u32::MAX,
            breaker_calls_min: u32::MAX,
            ..engine::breaker::PspOptions::default()
        },
    );
    env.start_workers("w1");
    let deadline = std::time::Instant::now() + SETTLE;
    let order = rejected_while_the_provider_fails(&env, "r-manual", "bibimbap", 9_000).await;
    let id = order.id;
    let parked_key = env
        .engine
        .keys()
        .stream(order.partition, engine::keys::Topic::Parked);
    let parked = loop {
        let entries: Vec<(String, HashMap<String, String>)> = env
            .engine
            .redis()
            .xrange(parked_key.as_str(), "-", "+", None)
            .await
            .unwrap();
        if let Some(entry) = entries.into_iter().next() {
            break entry.1;
        }
        assert!(std::time::Instant::now() < deadline, "never parked");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(parked["action"], "void");
    assert_eq!(parked["f.order"], id.to_string());
    assert!(parked["reason"].contains("unavailable"), "{parked:?}");
    let order = env.engine.order(&id).await.unwrap().unwrap();
    assert_eq!(
        (order.status, order.pay),
        (OrderStatus::Rejected, PaymentStatus::Authorized)
    );
    assert_eq!(
        env.sim.payment(&id.to_string()).unwrap().state,
        "authorized"
    );
    assert_eq!(
        env.unsettled().await,
        1,
        "still owed a void: visible to reconciliation"
    );
    // Stock came back at the rejection, before any money moved.
    assert_eq!(
        env.engine.menu("r-manual").await.unwrap().unwrap().items[0].stock,
        10
    );
}

/// The checker can fail: each kind of broken state — a mismatched pair,
/// stock that was never released, an oversold item, a per-customer count
/// with no order behind it — is reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_checker_catches_every_kind_of_violation() {
    let mut env = TestEnv::standalone().await;
    env.restaurant("r-check", true, "cake", 5_000, 10).await;
    env.item("r-check", "tart", 4_000, 10, Some(2)).await;
    env.start_workers("w1");
    let placed = env
        .place_numbered(0..3, "r-check", &[("cake", 1), ("tart", 1)], 9_000)
        .await;
    let ids: Vec<_> = placed.iter().map(|p| p.order_id).collect();
    env.settle(SETTLE).await;
    env.stop_workers().await;
    env.assert_rule_holds().await;
    let keys = env.engine.keys().clone();
    let p = keys.partition_of_restaurant("r-check");
    let redis = env.engine.redis();
    let violations = || async {
        engine::check::check(&env.engine, true)
            .await
            .unwrap()
            .violations
    };

    // 1. "Order rejected, payment captured".
    let _: () = redis
        .hset(keys.order(p, &ids[0]), ("status", "REJECTED"))
        .await
        .unwrap();
    let found = violations().await;
    assert!(
        found
            .iter()
            .any(|v| v.contains("REJECTED with payment CAPTURED")),
        "{found:?}"
    );
    // ... which also means its stock is no longer held by a live order.
    assert!(
        found
            .iter()
            .any(|v| v.contains("cake") && v.contains("supplied")),
        "{found:?}"
    );
    let _: () = redis
        .hset(keys.order(p, &ids[0]), ("status", "APPROVED"))
        .await
        .unwrap();
    assert!(violations().await.is_empty());

    // 2. "Order approved, nothing charged".
    let _: () = redis
        .hset(keys.order(p, &ids[1]), ("pay", "NONE"))
        .await
        .unwrap();
    assert!(
        violations()
            .await
            .iter()
            .any(|v| v.contains("APPROVED with payment NONE"))
    );
    let _: () = redis
        .hset(keys.order(p, &ids[1]), ("pay", "CAPTURED"))
        .await
        .unwrap();

    // 3. Sold beyond stock: units on hand below zero.
    let _: i64 = redis
        .hincrby(keys.item(p, "r-check", "cake"), "stock", -20)
        .await
        .unwrap();
    let found = violations().await;
    assert!(found.iter().any(|v| v.contains("oversold")), "{found:?}");
    let _: i64 = redis
        .hincrby(keys.item(p, "r-check", "cake"), "stock", 20)
        .await
        .unwrap();

    // 4. A per-customer count no order backs, over the limit.
    let _: i64 = redis
        .hincrby(keys.item_per_customer(p, "r-check", "tart"), "c0", 5)
        .await
        .unwrap();
    let found = violations().await;
    assert!(
        found.iter().any(|v| v.contains("customer c0 counted 6")),
        "{found:?}"
    );
    assert!(
        found.iter().any(|v| v.contains("max_per_customer 2")),
        "{found:?}"
    );
}

/// During a provider outage the circuit opens and a compensation waits
/// instead of burning its deliveries: nothing is parked or dead-lettered
/// however long it lasts, and once the provider answers again the void is
/// done and the order rests REJECTED/VOIDED.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn during_an_outage_a_compensation_waits_for_the_circuit() {
    let mut env = TestEnv::standalone().await;
    // Short cool-downs: many probe rounds within the test.
    let options = engine::breaker::PspOptions {
        breaker_open: Duration::from_millis(50),
        breaker_open_max: Duration::from_millis(100),
        ..Default::default()
    };
    env.psp = engine::psp::PspClient::with_options(env.psp.base_url(), options);
    env.restaurant("r-outage", false, "kimbap", 4_000, 10).await;
    env.start_workers("w1");
    let deadline = std::time::Instant::now() + SETTLE;
    let order = rejected_while_the_provider_fails(&env, "r-outage", "kimbap", 4_000).await;
    let id = order.id;
    // Wait until the circuit opened (the void kept failing), then for more
    // rounds than `deliveries_max` would allow without it.
    while env.psp.breaker().state() != engine::breaker::BreakerState::Open {
        assert!(
            std::time::Instant::now() < deadline,
            "the circuit never opened"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The void is refused by the circuit more often than the deliveries a
    // failing event may use before it is parked.
    let denied_at_open = env.psp.breaker().denied();
    let rounds = engine::saga::WorkerOptions::new("x").deliveries_max + 2;
    fixture::eventually(
        deadline.saturating_duration_since(std::time::Instant::now()),
        "the void retried while the circuit was open",
        || async {
            let denied = env.psp.breaker().denied() - denied_at_open;
            if denied >= rounds {
                Ok(())
            } else {
                Err(format!("{denied} refusals"))
            }
        },
    )
    .await;
    let keys = env.engine.keys();
    for topic in [engine::keys::Topic::Parked, engine::keys::Topic::Dead] {
        let len: u64 = env
            .engine
            .redis()
            .xlen(keys.stream(order.partition, topic))
            .await
            .unwrap();
        assert_eq!(len, 0, "{topic:?} during the outage");
    }
    env.sim.set_faults(Faults::default());
    let order = loop {
        let order = env.engine.order(&id).await.unwrap().unwrap();
        if order.pay == PaymentStatus::Voided {
            break order;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never voided: {order:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(order.status, OrderStatus::Rejected);
    assert_eq!(env.sim.payment(&id.to_string()).unwrap().state, "voided");
}

/// The event `kind` among `order`'s own events, read back from its stream.
async fn event_of(env: &TestEnv, order: &Order, kind: EventKind) -> Event {
    for (stream, id) in &order.events {
        let fields = engine::streams::entry(env.engine.redis(), stream, id)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("{stream} {id} is gone"));
        let event = Event::parse(stream, id, fields).unwrap();
        if event.kind == kind {
            return event;
        }
    }
    panic!("order {} has no {kind}: {:?}", order.id, order.events);
}

/// An order placed while its restaurant approves automatically takes its
/// approval with the authorization and is captured in the same provider call
/// (a sale), also when the restaurant closed after the order was placed: one
/// transition told by one event (`PaymentCaptured`, sale and approved)
/// after `OrderPlaced`; an order of a restaurant that answers
/// by hand waits, PAID and undecided, with its approval timeout set. The
/// group earlier versions kept on `payments` is dropped when the payment
/// worker starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn automatic_approval_rides_with_the_authorization() {
    let mut env = TestEnv::standalone().await;
    env.restaurant("r-open", true, "pho", 7_000, 10).await;
    env.restaurant("r-shut", true, "ramen", 8_000, 10).await;
    env.restaurant("r-hand", false, "udon", 6_000, 10).await;
    let engine = env.engine.clone();
    let open = fixture::numbered_order(1, "r-open", &[("pho", 1)], 7_000);
    let open = engine.place_order(&open).await.unwrap().order_id;
    let shut = fixture::numbered_order(2, "r-shut", &[("ramen", 1)], 8_000);
    let shut = engine.place_order(&shut).await.unwrap().order_id;
    let hand = fixture::numbered_order(3, "r-hand", &[("udon", 1)], 6_000);
    let hand = engine.place_order(&hand).await.unwrap().order_id;
    // Closed after its order was placed, before the payment hop: the order
    // keeps the approval its restaurant gave automatically when it was placed.
    engine
        .put_restaurant("r-shut", "Restaurant r-shut", false, true, Lane::Online)
        .await
        .unwrap();
    let keys = engine.keys().clone();
    let payments: Vec<String> = (0..keys.partitions())
        .map(|p| keys.stream(p, Topic::Payments))
        .collect();
    for stream in &payments {
        let _: () = engine
            .redis()
            .xgroup_create(stream.as_str(), "restaurant", "0", true)
            .await
            .unwrap();
    }
    env.start_workers("w1");

    for id in [open, shut] {
        let order = env
            .order_when(&id, "captured", |o| o.pay == PaymentStatus::Captured)
            .await;
        assert_eq!(
            (order.status, order.decision.as_str()),
            (OrderStatus::Approved, "approved")
        );
        let mut kinds = Vec::new();
        for (stream, entry) in &order.events {
            let fields = engine::streams::entry(env.engine.redis(), stream, entry)
                .await
                .unwrap()
                .unwrap_or_else(|| panic!("{stream} {entry} is gone"));
            kinds.push(Event::parse(stream, entry, fields).unwrap().kind);
        }
        assert_eq!(kinds, [EventKind::OrderPlaced, EventKind::PaymentCaptured]);
        let captured = event_of(&env, &order, EventKind::PaymentCaptured).await;
        assert!(
            matches!(captured.payload(), Ok(Payload::PaymentCaptured(p))
                if p.sale && p.approved && p.amount == order.total),
            "{captured:?}"
        );
        let payment = env.sim.payment(&id.to_string()).expect("at the provider");
        assert_eq!(payment.state, "captured");
        assert!(env.timers_of(&order).await.is_empty());
    }

    let waiting = env
        .order_when(&hand, "paid", |o| o.status == OrderStatus::Paid)
        .await;
    assert_eq!(
        waiting.decision, "",
        "a restaurant answering by hand is asked"
    );
    assert_eq!(
        env.timers_of(&waiting).await,
        [format!("approval_timeout|{hand}")]
    );
    // One provider call per order: a sale each for the automatic ones, an
    // authorization for the one its restaurant answers by hand.
    assert_eq!(env.sim.stats().received, 3);

    for stream in &payments {
        let groups = engine::streams::group_infos(engine.redis(), stream)
            .await
            .unwrap();
        assert!(
            groups.iter().all(|g| g.name != "restaurant"),
            "{stream}: {groups:?}"
        );
    }
    env.stop_workers().await;
}

/// Before anything archives or pays, the streams the retired groups lived on
/// may not exist yet: there is nothing to drop, and dropping is not an error.
#[tokio::test]
async fn dropping_retired_groups_from_missing_streams_is_nothing_to_do() {
    let env = TestEnv::standalone().await;
    let keys = env.engine.keys().clone();
    let streams: Vec<String> = (0..keys.partitions())
        .map(|p| keys.stream(p, Topic::Payments))
        .collect();
    let redis = env.engine.redis();
    let _: i64 = redis.del(streams.clone()).await.unwrap();
    engine::saga::drop_retired_groups(&env.engine)
        .await
        .expect("a missing stream has no group to drop");
    let exist: i64 = redis.exists(streams).await.unwrap();
    assert_eq!(exist, 0, "dropping a group must not create its stream");
}
