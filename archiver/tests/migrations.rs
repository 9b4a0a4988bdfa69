//! Migrations on data written in the schema before them, against a real
//! PostgreSQL: what a running installation holds when it upgrades.

use uuid::Uuid;

/// A fresh PostgreSQL migrated up to `version` only (at least V2), with
/// this month's archive partition: its stack (kept for the test's length),
/// URL and a pool.
async fn at_version(version: u32) -> (stack::LocalStack, String, deadpool_postgres::Pool) {
    let stack = stack::LocalStack::temporary()
        .await
        .expect("start the stack");
    let url = stack.postgres_url();
    archiver::schema::migrate_to(&url, Some(version))
        .await
        .unwrap();
    let pool = api::postgres_pool(&url).unwrap();
    pool.get()
        .await
        .unwrap()
        .batch_execute("SELECT saga_events_ensure_month(now())")
        .await
        .unwrap();
    (stack, url, pool)
}

/// The one number `sql` (a `count(*)`) answers.
async fn count(client: &deadpool_postgres::Client, sql: &str) -> i64 {
    client.query_one(sql, &[]).await.unwrap().get(0)
}

/// V5 folds `payments` into `orders` and turns `payments` and
/// `order_items` into views: every row written before it reads back the
/// same through the views. An OrderPlaced whose lines do not decode (the
/// archive keeps such data as written) shows none of its bad lines, and
/// no query of the view fails on them (V6).
#[tokio::test]
async fn lean_projections_keep_what_the_tables_held() {
    let (_stack, url, pool) = at_version(4).await;
    let client = pool.get().await.unwrap();
    let (paid, unpaid, odd) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    client
        .execute(
            "INSERT INTO orders (order_id, customer, restaurant_id, status, payment_status, total, \
             created_at, updated_at, last_seq, events) VALUES \
             ($1, 'c1', 'r1', 'APPROVED', 'CAPTURED', 12000, now(), now(), 2, 2), \
             ($2, 'c2', 'r1', 'PENDING', 'NONE', 5000, now(), now(), 1, 1)",
            &[&paid, &unpaid],
        )
        .await
        .unwrap();
    client
        .execute(
            "INSERT INTO payments (order_id, status, provider_ref, amount, updated_at) \
             SELECT order_id, payment_status, 'psp_7', total, updated_at FROM orders WHERE order_id = $1",
            &[&paid],
        )
        .await
        .unwrap();
    // The lines as the archive holds them: in the order's OrderPlaced.
    client
        .execute(
            "INSERT INTO saga_events (stream, entry_id, entry_ms, entry_seq, order_id, seq, type, \
             schema_version, payload, event_time, part_time) VALUES \
             ('{p0}:orders', '1-0', 1, 0, $1, 1, 'OrderPlaced', 1, \
              '{\"c\":\"c1\",\"r\":\"r1\",\"t\":12000,\"l\":[[\"soup\",2,4000],[\"tea\",1,4000]]}', now(), now()), \
             ('{p0}:orders', '2-0', 2, 0, $2, 1, 'OrderPlaced', 1, \
              '{\"c\":\"c2\",\"r\":\"r1\",\"t\":0,\"l\":{}}', now(), now()), \
             ('{p0}:orders', '3-0', 3, 0, $3, 1, 'OrderPlaced', 1, \
              '{\"l\":[[\"soup\",\"x\",4000],\"junk\",[7,1,100],[\"rice\",1.5,100],[\"ok\",1,250]]}', \
              now(), now())",
            &[&paid, &unpaid, &odd],
        )
        .await
        .unwrap();

    let applied = archiver::schema::migrate(&url).await.unwrap();
    assert!(
        applied
            .first()
            .is_some_and(|m| m.contains("lean_projections")),
        "V5 first: {applied:?}"
    );

    let payments = client
        .query(
            "SELECT order_id, status, provider_ref, amount FROM payments ORDER BY order_id",
            &[],
        )
        .await
        .unwrap();
    let payments: Vec<(Uuid, String, Option<String>, Option<i64>)> = payments
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    assert_eq!(
        payments,
        vec![(
            paid,
            "CAPTURED".to_string(),
            Some("psp_7".to_string()),
            Some(12000)
        )],
        "an order without a payment has no payments row, as before"
    );
    let items = client
        .query(
            "SELECT order_id, item, qty, price FROM order_items ORDER BY order_id, item",
            &[],
        )
        .await
        .unwrap();
    let items: Vec<(Uuid, String, i32, i64)> = items
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    assert_eq!(
        items,
        vec![
            (paid, "soup".to_string(), 2, 4000),
            (paid, "tea".to_string(), 1, 4000),
            (odd, "ok".to_string(), 1, 250)
        ],
        "an order placed without lines has none, bad lines are left out"
    );
    // A filter the planner may evaluate before the view's own checks.
    let over_one = count(&client, "SELECT count(*) FROM order_items WHERE qty > 1").await;
    assert_eq!(over_one, 1);
}

/// V7: an order event is unique by `(order_id, seq)` alone, a menu event
/// (no order) by `(stream, entry_id)`. Rows written before it stay; after
/// it, the archive's insert skips a second copy of either kind (a
/// redelivery, even under another entry id for an order event) and keeps
/// every event that is new.
#[tokio::test]
async fn each_event_stays_unique_by_its_one_key() {
    let (_stack, url, pool) = at_version(6).await;
    let client = pool.get().await.unwrap();
    let order = Uuid::now_v7();
    let insert = "INSERT INTO saga_events (stream, entry_id, entry_ms, entry_seq, order_id, seq, \
                  type, schema_version, payload, event_time, part_time) \
                  VALUES ($1, $2, 1, 0, $3, $4, 'E', 1, '{}', now(), date_trunc('month', now())) \
                  ON CONFLICT DO NOTHING";
    let put = async |stream: &str, entry: &str, order: Option<Uuid>, seq: i64| -> u64 {
        client
            .execute(insert, &[&stream, &entry, &order, &seq])
            .await
            .unwrap()
    };
    assert_eq!(put("{p0}:orders", "1-0", Some(order), 1).await, 1);
    assert_eq!(put("{p0}:menu", "1-0", None, 1).await, 1);

    let applied = archiver::schema::migrate(&url).await.unwrap();
    assert!(
        applied
            .iter()
            .any(|m| m.contains("order_events_unique_once")),
        "V7 applied: {applied:?}"
    );

    // Redeliveries: the same entries, and the order's event under another id.
    assert_eq!(put("{p0}:orders", "1-0", Some(order), 1).await, 0);
    assert_eq!(put("{p0}:orders", "9-0", Some(order), 1).await, 0);
    assert_eq!(put("{p0}:menu", "1-0", None, 1).await, 0);
    // New events: the order's next, another menu entry.
    assert_eq!(put("{p0}:orders", "2-0", Some(order), 2).await, 1);
    assert_eq!(put("{p0}:menu", "2-0", None, 2).await, 1);
    assert_eq!(count(&client, "SELECT count(*) FROM saga_events").await, 4);
}
