//! Live-state retention over HTTP: orders confirmed or cancelled leave Redis
//! once archived and rested, read back unchanged from PostgreSQL, keep their
//! Idempotency-Key's first answer, refuse changes with `order_retired`, and
//! leave the rules checkable (stock, per-customer limits, the provider's
//! ledger) without reconciliation mistaking them for vanished orders.

mod helpers;

use std::time::{Duration, Instant};

use api::admission::Limits;
use fred::prelude::*;
use helpers::{TestApp, spawn_app_configured};
use serde_json::{Value, json};

const RETENTION: Duration = Duration::from_secs(2);

fn body(rid: &str, lines: &[(&str, i64)], total: i64) -> Value {
    json!({
        "restaurant_id": rid,
        "items": lines.iter().map(|(i, q)| json!({"item": i, "qty": q})).collect::<Vec<_>>(),
        "expected_total": total,
    })
}

/// The placement every auto-approved order of the test makes.
fn auto_order() -> Value {
    body("ret-auto", &[("soup", 2), ("limited", 1)], 15_000)
}

/// Places `order` `count` times, each by its own customer `ret-{prefix}{i}`
/// with key `key-{prefix}{i}`: `(customer, token, order id)` of each.
async fn place_each(
    app: &TestApp,
    prefix: &str,
    count: usize,
    order: &Value,
) -> Vec<(String, String, String)> {
    let mut placed = Vec::new();
    for i in 0..count {
        let customer = format!("ret-{prefix}{i}");
        let token = app.customer(&customer);
        let key = format!("key-{prefix}{i}");
        let id = app.place_ok(&token, &key, order.clone()).await;
        placed.push((customer, token, id));
    }
    placed
}

async fn in_redis(app: &TestApp, id: &str) -> bool {
    let id: uuid::Uuid = id.parse().unwrap();
    app.engine.order(&id).await.unwrap().is_some()
}

/// Waits until `done` holds, or panics after `limit`.
async fn until<F: std::future::Future<Output = bool>>(
    what: &str,
    limit: Duration,
    mut done: impl FnMut() -> F,
) {
    let deadline = Instant::now() + limit;
    while !done().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every key name in the test's Redis (its own server: small).
async fn key_names(app: &TestApp) -> std::collections::BTreeSet<String> {
    let names: Vec<String> = app
        .engine
        .redis()
        .custom(fred::cmd!("KEYS"), vec!["*"])
        .await
        .unwrap();
    names.into_iter().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settled_orders_leave_redis_and_read_back_unchanged() {
    let app = spawn_app_configured(Limits::default(), |c| c.live_retention = Some(RETENTION)).await;
    let admin = app.admin();
    app.seed("ret-auto", true, &[("soup", 7_000, 100)]).await;
    app.seed("ret-manual", false, &[("rice", 5_000, 100)]).await;
    app.put("/v1/restaurants/ret-auto/menu/limited", &admin, json!({"name": "limited", "price": 1_000, "stock": 50, "available": true, "max_per_customer": 3}))
    .await
    .ok(200);

    // Confirmed: auto-approved, dispatched by the restaurant, confirmed by
    // the customer. Cancelled: the customer cancels before the restaurant
    // answers, the authorization is voided.
    let confirmed = place_each(&app, "c", 6, &auto_order()).await;
    let cancelled = place_each(&app, "d", 4, &body("ret-manual", &[("rice", 1)], 5_000)).await;
    let restaurant = app.restaurant("ret-auto");
    for (_, token, id) in &confirmed {
        app.wait_for(id, token, |o| o["status"] == "APPROVED").await;
        app.post(&format!("/v1/orders/{id}/dispatch"), &restaurant, None)
            .await
            .ok(200);
        app.post(&format!("/v1/orders/{id}/confirm"), token, None)
            .await
            .ok(200);
    }
    for (_, token, id) in &cancelled {
        app.wait_for(id, token, |o| o["status"] == "PAID").await;
        app.post(&format!("/v1/orders/{id}/cancel"), token, None)
            .await
            .ok(200);
        app.wait_for(id, token, |o| o["payment"]["status"] == "VOIDED")
            .await;
    }

    // What a reader sees while the orders are live...
    let all: Vec<&(String, String, String)> = confirmed.iter().chain(&cancelled).collect();
    let mut before = Vec::new();
    for (_, token, id) in &all {
        let order = app.get_ok(&format!("/v1/orders/{id}"), token).await;
        let events = app.get_ok(&format!("/v1/orders/{id}/events"), token).await;
        before.push((order, events));
    }
    let keys_before = key_names(&app).await;

    // ...until they are archived and rested: then they leave Redis.
    for (_, _, id) in &all {
        until(
            &format!("order {id} retired"),
            Duration::from_secs(30),
            || {
                let app = &app;
                async move { !in_redis(app, id).await }
            },
        )
        .await;
    }

    // The same answers, now from PostgreSQL.
    for ((_, token, id), (order, events)) in all.iter().zip(&before) {
        let again = app.get_ok(&format!("/v1/orders/{id}"), token).await;
        assert_eq!(&again, order, "order {id} reads back unchanged");
        let again = app.get_ok(&format!("/v1/orders/{id}/events"), token).await;
        assert_eq!(&again, events, "events of {id} read back unchanged");
        // A stranger still learns nothing.
        app.get(&format!("/v1/orders/{id}"), &app.customer("stranger"))
            .await
            .problem(404, "order_not_found");
    }

    // A retried placement gets its first answer, and places nothing new.
    let (_, token, id) = &confirmed[0];
    let retry = app.place(token, "key-c0", auto_order()).await;
    assert_eq!(retry.ok(202)["order_id"], id.as_str());
    assert!(!in_redis(&app, id).await);

    // A retired order can no longer change: a clear refusal, nothing moves.
    app.post(&format!("/v1/orders/{id}/cancel"), &admin, None)
        .await
        .problem(409, "order_retired");
    let (_, token, id) = &cancelled[0];
    app.post(&format!("/v1/orders/{id}/confirm"), token, None)
        .await
        .problem(409, "order_retired");

    // Stock: 6 × 2 soups and 6 limited sold, the 4 rice came back; the
    // per-customer counters still hold (the limit keeps counting them).
    let check = engine::check::check(&app.engine, true).await.unwrap();
    assert!(check.passed(), "{check}");
    let menu = app.engine.menu("ret-auto").await.unwrap().unwrap();
    let soup = menu.items.iter().find(|i| i.item == "soup").unwrap();
    assert_eq!((soup.stock, soup.supplied), (88, 88));
    let p = app.engine.keys().partition_of_restaurant("ret-auto");
    let retired: Option<i64> = app
        .engine
        .redis()
        .hget(app.engine.keys().item(p, "ret-auto", "soup"), "retired")
        .await
        .unwrap();
    assert_eq!(retired, Some(12));
    let menu = app.engine.menu("ret-manual").await.unwrap().unwrap();
    assert_eq!(menu.items[0].stock, 100);
    let (_, token, _) = &confirmed[1];
    app.place(
        token,
        "key-more",
        body("ret-auto", &[("limited", 3)], 3_000),
    )
    .await
    .problem(409, "limit_exceeded");

    // Reconciliation does not take a retired order's capture for a charge
    // without an order.
    let reconciler = engine::reconcile::Reconciler::new(app.engine.clone(), app.psp.clone())
        .with_archive(std::sync::Arc::new(api::archive::PgArchive::new(
            app.pool().clone(),
        )));
    let options = engine::reconcile::Options {
        older_than: Duration::ZERO,
        dry_run: false,
        max_rate: 1_000.0,
        consumer: "retention-test".into(),
    };
    let mut run = engine::reconcile::Run::new(options, |_| {});
    reconciler.provider(&mut run).await.unwrap();
    reconciler.held_stock(&mut run).await.unwrap();
    assert!(run.fixes.is_empty(), "{:?}", run.fixes);
    for (_, _, id) in &confirmed {
        let payment = app.psp.lookup(id).await.unwrap().unwrap();
        assert_eq!(payment.state, "captured");
    }

    // What stays per retired order: its Idempotency-Key's first answer
    // (until its TTL), one key: the customer's guard holds it on a
    // standalone Redis. No key names a retired order, and the only keys
    // retirement adds are per item (a limited item's retired per-customer
    // counts; which other keys come and go meanwhile, say an index emptied,
    // depends on how far the archive had got when `keys_before` was read).
    let keys_after = key_names(&app).await;
    for (_, _, id) in &all {
        let left: Vec<&String> = keys_after
            .iter()
            .filter(|k| k.contains(id.as_str()))
            .collect();
        assert!(left.is_empty(), "order {id} left {left:?}");
    }
    let added: Vec<&String> = keys_after.difference(&keys_before).collect();
    assert!(
        added.iter().all(|k| k.ends_with(":pcr")),
        "retirement added {added:?}"
    );
    assert!(
        keys_after.len() + all.len() <= keys_before.len() + added.len(),
        "{} keys before, {} after, {added:?} added",
        keys_before.len(),
        keys_after.len()
    );
    let mut bytes = 0u64;
    let keys = app.engine.keys();
    let records = (0..6)
        .map(|i| (format!("ret-c{i}"), format!("key-c{i}"), "ret-auto"))
        .chain((0..4).map(|i| (format!("ret-d{i}"), format!("key-d{i}"), "ret-manual")));
    for (customer, key, rid) in records {
        let p = keys.partition_of_restaurant(rid);
        let answer = keys.idempotency(p, &customer, &key);
        let separate: i64 = app.engine.redis().exists(&answer).await.unwrap();
        assert_eq!(separate, 0, "{answer}: the guard holds the answer");
        for record in [keys.idempotency_guard(&customer, &key)] {
            let usage: Option<u64> = app
                .engine
                .redis()
                .custom(
                    fred::cmd!("MEMORY"),
                    vec![
                        "USAGE".to_string(),
                        record.clone(),
                        "SAMPLES".into(),
                        "0".into(),
                    ],
                )
                .await
                .unwrap();
            bytes += usage.unwrap_or_else(|| panic!("{record} is kept until its TTL"));
        }
    }
    let per_order = bytes / all.len() as u64;
    eprintln!("Redis keeps {per_order} bytes per retired order (idempotency records)");
    assert!(per_order < 400, "{per_order} bytes per retired order");

    // Redelivery of everything still in the streams (every group rewound):
    // the workers and the archiver meet orders that are gone, and nothing
    // is resurrected.
    let groups = ["payment", "order", "batch", "archiver"];
    let streams: Vec<String> = (0..keys.partitions())
        .flat_map(|p| engine::keys::Topic::ALL.map(|t| keys.stream(p, t)))
        .collect();
    let mut entries = 0u64;
    for stream in &streams {
        entries += app
            .engine
            .redis()
            .xlen::<u64, _>(stream.as_str())
            .await
            .unwrap();
    }
    eprintln!("{entries} entries redelivered");
    assert!(
        entries > 0,
        "the streams still hold the retired orders' events"
    );
    for stream in &streams {
        for group in groups {
            // Not every group reads every stream: a missing one is refused.
            let _ = app.rewind_group(stream, group).await;
        }
    }
    until(
        "every group caught up again",
        Duration::from_secs(30),
        || {
            let app = &app;
            let streams = &streams;
            async move {
                for stream in streams {
                    let groups: fred::types::Value = app
                        .engine
                        .redis()
                        .custom(
                            fred::cmd!("XINFO"),
                            vec!["GROUPS".to_string(), stream.clone()],
                        )
                        .await
                        .unwrap_or(fred::types::Value::Null);
                    let last: Vec<(String, std::collections::HashMap<String, String>)> = app
                        .engine
                        .redis()
                        .xrevrange(stream.as_str(), "+", "-", Some(1))
                        .await
                        .unwrap();
                    let Some((last, _)) = last.into_iter().next() else {
                        continue;
                    };
                    // Every group: delivered up to the last entry, nothing pending.
                    for group in groups.into_array() {
                        let fields: Vec<fred::types::Value> = group.into_array();
                        let get = |name: &str| {
                            fields
                                .chunks(2)
                                .find(|kv| kv[0].as_str().as_deref() == Some(name))
                                .map(|kv| kv[1].clone())
                        };
                        let delivered = get("last-delivered-id").and_then(|v| v.as_string());
                        let pending = get("pending").and_then(|v| v.as_u64());
                        if delivered.as_deref() != Some(last.as_str()) || pending != Some(0) {
                            return false;
                        }
                    }
                }
                let resting: u64 =
                    futures::future::join_all((0..app.engine.keys().partitions()).map(|p| {
                        app.engine
                            .redis()
                            .zcard::<u64, _>(app.engine.keys().resting(p))
                    }))
                    .await
                    .into_iter()
                    .map(|n| n.unwrap_or(1))
                    .sum();
                resting == 0
            }
        },
    )
    .await;
    for (_, token, id) in &all {
        assert!(!in_redis(&app, id).await, "order {id} came back");
        app.get(&format!("/v1/orders/{id}"), token).await.ok(200);
    }
    let check = engine::check::check(&app.engine, true).await.unwrap();
    assert!(check.passed(), "{check}");
    let audit = archiver::audit::audit(&app.engine, app.pool())
        .await
        .unwrap();
    assert!(audit.passed(), "{audit}");
    assert_eq!(
        (audit.retired, audit.vanished),
        (all.len() as u64, 0),
        "{audit}"
    );
}
