//! The HTTP API driven over real HTTP against the real engine, Redis,
//! PostgreSQL and the provider simulator: every route, every error, the role
//! matrix, admission control, and the flash sale over HTTP.

mod helpers;

use std::time::Duration;

use api::admission::Limits;
use api::auth::Role;
use helpers::{TestApp, order_body, spawn_app, spawn_app_with};
use reqwest::Method;
use serde_json::{Value, json};

fn settled(order: &Value) -> bool {
    let status = order["status"].as_str().unwrap();
    let pay = order["payment"]["status"].as_str().unwrap();
    matches!(
        (status, pay),
        ("APPROVED" | "DISPATCHED" | "CONFIRMED", "CAPTURED")
            | ("REJECTED", "NONE" | "DECLINED" | "VOIDED" | "REFUNDED")
    )
}

/// Who may do what: restaurants and menus.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restaurant_and_menu_routes_follow_the_role_matrix() {
    let app = spawn_app().await;
    let admin = app.admin();
    let owner = app.restaurant("pho");
    let stranger = app.restaurant("other");
    let customer = app.customer("c1");
    let put_restaurant = json!({"name": "Pho House", "open": true, "auto_approve": false});

    // PUT restaurant: admin only.
    app.put("/v1/restaurants/pho", &customer, put_restaurant.clone())
        .await
        .problem(403, "forbidden");
    app.put("/v1/restaurants/pho", &owner, put_restaurant.clone())
        .await
        .problem(403, "forbidden");
    let created = app.put("/v1/restaurants/pho", &admin, put_restaurant).await;
    assert_eq!(created.ok(200)["name"], "Pho House");

    // PATCH restaurant: owner or admin.
    app.patch("/v1/restaurants/pho", &stranger, json!({"open": false}))
        .await
        .problem(403, "forbidden");
    app.patch("/v1/restaurants/pho", &customer, json!({"open": false}))
        .await
        .problem(403, "forbidden");
    let patched = app
        .patch("/v1/restaurants/pho", &owner, json!({"auto_approve": true}))
        .await;
    assert_eq!(patched.ok(200)["auto_approve"], true);
    app.patch("/v1/restaurants/nope", &admin, json!({"open": false}))
        .await
        .problem(404, "restaurant_not_found");

    // Menu items: owner or admin.
    let item = json!({"name": "Pho bo", "price": 11000, "stock": 20, "available": true, "max_per_customer": 5});
    app.put("/v1/restaurants/pho/menu/bo", &stranger, item.clone())
        .await
        .problem(403, "forbidden");
    app.put("/v1/restaurants/pho/menu/bo", &customer, item.clone())
        .await
        .problem(403, "forbidden");
    let put = app.put("/v1/restaurants/pho/menu/bo", &owner, item).await;
    assert_eq!(put.ok(200)["max_per_customer"], 5);
    let patched = app
        .patch(
            "/v1/restaurants/pho/menu/bo",
            &admin,
            json!({"price": 12000, "stock_delta": -5}),
        )
        .await;
    assert_eq!(patched.ok(200)["price"], 12000);
    assert_eq!(patched.ok(200)["stock"], 15);
    app.patch(
        "/v1/restaurants/pho/menu/bo",
        &owner,
        json!({"stock_delta": -16}),
    )
    .await
    .problem(409, "stock_below_held");
    app.patch("/v1/restaurants/pho/menu/ga", &owner, json!({"price": 1}))
        .await
        .problem(404, "item_not_found");
    app.put(
        "/v1/restaurants/nope/menu/x",
        &admin,
        json!({"name": "x", "price": 1, "stock": 1, "available": true}),
    )
    .await
    .problem(404, "restaurant_not_found");
    app.put(
        "/v1/restaurants/pho/menu/bad",
        &owner,
        json!({"name": "x", "price": -1, "stock": 1, "available": true}),
    )
    .await
    .problem(422, "invalid_field");
    app.put(
        "/v1/restaurants/bad%20id",
        &admin,
        json!({"name": "x", "open": true, "auto_approve": true}),
    )
    .await
    .problem(400, "invalid_path");

    // GET menu: any role.
    for token in [&admin, &owner, &stranger, &customer] {
        let menu = app.get("/v1/restaurants/pho/menu", token).await;
        let menu = menu.ok(200);
        assert_eq!(menu["restaurant_id"], "pho");
        assert_eq!(menu["auto_approve"], true);
        assert_eq!(
            menu["items"][0],
            json!({"item": "bo", "name": "Pho bo", "price": 12000, "stock": 15, "available": true, "max_per_customer": 5})
        );
    }
    app.get("/v1/restaurants/nope/menu", &customer)
        .await
        .problem(404, "restaurant_not_found");
}

/// Who may do what: orders, over a whole life (placed, accepted, captured,
/// dispatched, confirmed) and the refusals on the way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_routes_follow_the_role_matrix() {
    let app = spawn_app().await;
    app.seed("manual", false, &[("dish", 10_000, 10)]).await;
    let (admin, owner, stranger) = (
        app.admin(),
        app.restaurant("manual"),
        app.restaurant("other"),
    );
    let (alice, bob) = (app.customer("alice"), app.customer("bob"));
    let body = order_body("manual", &[("dish", 2)], 20_000);

    app.place(&owner, "k", body.clone())
        .await
        .problem(403, "forbidden");
    app.place(&admin, "k", body.clone())
        .await
        .problem(403, "forbidden");
    let placed = app.place(&alice, "k1", body.clone()).await;
    let placed = placed.ok(202).clone();
    assert_eq!(placed["status"], "PENDING");
    assert_eq!(placed["total"], 20_000);
    let id = placed["order_id"].as_str().unwrap().to_string();
    let path = format!("/v1/orders/{id}");

    // Visibility.
    for token in [&alice, &owner, &admin] {
        let order = app.get(&path, token).await;
        let order = order.ok(200);
        assert_eq!(order["order_id"], id.as_str());
        assert_eq!(order["customer"], "alice");
        assert_eq!(
            order["items"],
            json!([{"item": "dish", "qty": 2, "price": 10_000}])
        );
    }
    app.get(&path, &bob).await.problem(404, "order_not_found");
    app.get(&path, &stranger).await.problem(403, "forbidden");
    app.get("/v1/orders/not-a-uuid", &admin)
        .await
        .problem(404, "order_not_found");
    app.get(&format!("/v1/orders/{}", uuid_v4()), &admin)
        .await
        .problem(404, "order_not_found");

    // The order waits for the restaurant once paid.
    app.wait_for(&id, &alice, |o| o["status"] == "PAID").await;
    app.post(&format!("{path}/accept"), &alice, None)
        .await
        .problem(403, "forbidden");
    app.post(&format!("{path}/accept"), &stranger, None)
        .await
        .problem(403, "forbidden");
    app.post(&format!("{path}/dispatch"), &owner, None)
        .await
        .problem(409, "illegal_transition");
    let accepted = app.post(&format!("{path}/accept"), &owner, None).await;
    accepted.ok(200);
    app.post(
        &format!("{path}/reject"),
        &owner,
        Some(json!({"reason": "changed my mind"})),
    )
    .await
    .problem(409, "already_decided");
    let approved = app
        .wait_for(&id, &alice, |o| o["status"] == "APPROVED")
        .await;
    assert_eq!(approved["payment"]["status"], "CAPTURED");
    app.post(&format!("{path}/cancel"), &alice, None)
        .await
        .problem(409, "too_late");
    app.post(&format!("{path}/cancel"), &owner, None)
        .await
        .problem(403, "forbidden");
    app.post(&format!("{path}/confirm"), &owner, None)
        .await
        .problem(403, "forbidden");
    let dispatched = app.post(&format!("{path}/dispatch"), &owner, None).await;
    assert_eq!(dispatched.ok(200)["status"], "DISPATCHED");
    app.post(&format!("{path}/confirm"), &bob, None)
        .await
        .problem(404, "order_not_found");
    let confirmed = app.post(&format!("{path}/confirm"), &alice, None).await;
    assert_eq!(confirmed.ok(200)["status"], "CONFIRMED");
    // Repeating a transition is harmless.
    assert_eq!(
        app.post(&format!("{path}/confirm"), &admin, None)
            .await
            .ok(200)["status"],
        "CONFIRMED"
    );

    // Events: the saga in sequence, no gap, no repeat.
    let events = app.get(&format!("{path}/events"), &alice).await;
    let events = events.ok(200)["events"].as_array().unwrap().clone();
    let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            "OrderPlaced",
            "PaymentAuthorized",
            "RestaurantApproved",
            "PaymentCaptured",
            "OrderApproved",
            "OrderDispatched",
            "OrderConfirmed"
        ]
    );
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=7).collect::<Vec<_>>());
    app.get(&format!("{path}/events"), &bob)
        .await
        .problem(404, "order_not_found");

    // Reject: the restaurant's words are kept; stock comes back; the
    // authorization is voided.
    let second = app.place(&bob, "k2", body.clone()).await.ok(202).clone();
    let id2 = second["order_id"].as_str().unwrap().to_string();
    app.wait_for(&id2, &bob, |o| o["status"] == "PAID").await;
    app.post(&format!("/v1/orders/{id2}/reject"), &owner, Some(json!({})))
        .await
        .problem(400, "invalid_body");
    app.post(
        &format!("/v1/orders/{id2}/reject"),
        &owner,
        Some(json!({"reason": ""})),
    )
    .await
    .problem(422, "invalid_field");
    let rejected = app
        .post(
            &format!("/v1/orders/{id2}/reject"),
            &owner,
            Some(json!({"reason": "out of noodles"})),
        )
        .await;
    assert_eq!(rejected.ok(200)["reason"], "restaurant_rejected");
    let voided = app
        .wait_for(&id2, &bob, |o| o["payment"]["status"] == "VOIDED")
        .await;
    assert_eq!(voided["status"], "REJECTED");

    // Cancel by the customer before approval; by an admin after capture (refund).
    let third = app.place(&bob, "k3", body.clone()).await.ok(202).clone();
    let id3 = third["order_id"].as_str().unwrap().to_string();
    let cancelled = app
        .post(&format!("/v1/orders/{id3}/cancel"), &bob, None)
        .await;
    assert_eq!(cancelled.ok(200)["reason"], "cancelled");
    app.wait_for(&id3, &bob, settled).await;
    let refunded = app.post(&format!("{path}/cancel"), &admin, None).await;
    assert_eq!(refunded.ok(200)["status"], "REJECTED");
    let refunded = app
        .wait_for(&id, &admin, |o| o["payment"]["status"] == "REFUNDED")
        .await;
    assert_eq!(refunded["reason"], "cancelled");
    let menu = app.get("/v1/restaurants/manual/menu", &alice).await;
    assert_eq!(
        menu.ok(200)["items"][0]["stock"],
        10,
        "every unit came back"
    );
    let report = engine::check::check(&app.engine, true).await.unwrap();
    assert!(report.passed(), "{report}");
}

fn uuid_v4() -> String {
    format!("{:08x}-0000-4000-8000-{:012x}", std::process::id(), 42)
}

/// Every bad input gets a precise problem with the right status, and
/// changes nothing (same order count, same stock).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_precise_problem_and_changes_nothing() {
    let app = spawn_app().await;
    app.seed("bistro", true, &[("soup", 5_000, 3), ("salad", 7_000, 10)])
        .await;
    let customer = app.customer("c1");
    let before = app.footprint("bistro").await;
    let good = order_body("bistro", &[("soup", 1)], 5_000);
    let json_body = |v: &Value| Some(("application/json", serde_json::to_vec(v).unwrap()));
    let key = [("idempotency-key", "k-bad")];

    // Auth.
    app.raw(Method::POST, "/v1/orders", None, &key, json_body(&good))
        .await
        .problem(401, "unauthorized");
    app.raw(
        Method::POST,
        "/v1/orders",
        Some("garbage"),
        &key,
        json_body(&good),
    )
    .await
    .problem(401, "unauthorized");
    let foreign = api::auth::Keys::new(&[9u8; 32])
        .mint(Role::Customer, "c1", None, Duration::from_secs(60))
        .unwrap();
    app.raw(
        Method::POST,
        "/v1/orders",
        Some(&foreign),
        &key,
        json_body(&good),
    )
    .await
    .problem(401, "unauthorized");

    // Transport-level problems.
    app.raw(
        Method::POST,
        "/v1/orders",
        Some(&customer),
        &key,
        Some(("application/json", b"{\"restaurant_id\": ".to_vec())),
    )
    .await
    .problem(400, "malformed_json");
    let wrong_type = app.raw(Method::POST, "/v1/orders", Some(&customer), &key,
        json_body(&json!({"restaurant_id": "bistro", "items": [{"item": "soup", "qty": "one"}], "expected_total": 5000}))).await;
    wrong_type.problem(400, "invalid_body");
    assert!(
        wrong_type.body["detail"]
            .as_str()
            .unwrap()
            .contains("items[0].qty"),
        "{:?}",
        wrong_type.body
    );
    app.raw(
        Method::POST,
        "/v1/orders",
        Some(&customer),
        &key,
        json_body(&json!({"restaurant_id": "bistro", "items": []})),
    )
    .await
    .problem(400, "invalid_body");
    app.raw(
        Method::POST,
        "/v1/orders",
        Some(&customer),
        &key,
        json_body(&json!({"restaurant_id": "bistro", "items": [], "expected_total": 0, "tip": 1})),
    )
    .await
    .problem(400, "invalid_body");
    app.raw(
        Method::POST,
        "/v1/orders",
        Some(&customer),
        &key,
        Some(("text/plain", b"hello".to_vec())),
    )
    .await
    .problem(415, "unsupported_media_type");
    app.raw(
        Method::POST,
        "/v1/orders",
        Some(&customer),
        &key,
        Some(("application/json", vec![b' '; 70 * 1024])),
    )
    .await
    .problem(413, "body_too_large");
    app.raw(
        Method::POST,
        "/v1/orders",
        Some(&customer),
        &[],
        json_body(&good),
    )
    .await
    .problem(400, "idempotency_key_missing");
    app.raw(Method::GET, "/v1/nowhere", Some(&customer), &[], None)
        .await
        .problem(404, "route_not_found");
    app.raw(Method::DELETE, "/v1/orders", Some(&customer), &[], None)
        .await
        .problem(405, "method_not_allowed");

    // Domain refusals.
    let cases: Vec<(Value, u16, &str)> = vec![
        (
            order_body("bistro", &[("soup", 0)], 0),
            422,
            "invalid_field",
        ),
        (
            order_body("bistro", &[("soup", 100)], 500_000),
            422,
            "invalid_field",
        ),
        (
            order_body("bistro", &[("soup", 1), ("soup", 1)], 10_000),
            422,
            "invalid_field",
        ),
        (
            json!({"restaurant_id": "bistro", "items": (0..51).map(|i| json!({"item": format!("i{i}"), "qty": 1})).collect::<Vec<_>>(), "expected_total": 0}),
            422,
            "invalid_field",
        ),
        (
            order_body("bistro", &[("bread", 1)], 1_000),
            422,
            "unknown_item",
        ),
        (
            order_body("nowhere", &[("soup", 1)], 5_000),
            422,
            "unknown_restaurant",
        ),
        (
            order_body("bistro", &[("soup", 4)], 20_000),
            409,
            "out_of_stock",
        ),
        (
            order_body("bistro", &[("soup", 1)], 4_000),
            409,
            "price_changed",
        ),
    ];
    for (index, (body, status, code)) in cases.into_iter().enumerate() {
        let reply = app.place(&customer, &format!("bad-{index}"), body).await;
        reply.problem(status, code);
        if code == "out_of_stock" {
            assert_eq!(reply.body["items"], json!(["soup"]));
        }
        if code == "price_changed" {
            assert_eq!(reply.body["current_total"], 5_000);
        }
    }
    app.patch(
        "/v1/restaurants/bistro",
        &app.admin(),
        json!({"open": false}),
    )
    .await
    .ok(200);
    app.place(&customer, "closed", good.clone())
        .await
        .problem(409, "restaurant_closed");
    app.patch(
        "/v1/restaurants/bistro",
        &app.admin(),
        json!({"open": true}),
    )
    .await
    .ok(200);
    assert_eq!(
        app.footprint("bistro").await,
        before,
        "no refused request changed anything"
    );

    // Idempotency: same key and body, the first answer; other body, 422.
    let first = app
        .place(&customer, "idem", good.clone())
        .await
        .ok(202)
        .clone();
    let again = app
        .place(&customer, "idem", good.clone())
        .await
        .ok(202)
        .clone();
    assert_eq!(first, again);
    app.place(
        &customer,
        "idem",
        order_body("bistro", &[("soup", 2)], 10_000),
    )
    .await
    .problem(422, "idempotency_conflict");
    let (orders, stock) = app.footprint("bistro").await;
    assert_eq!(orders, before.0 + 1);
    assert_eq!(
        stock,
        vec![("salad".to_string(), 10), ("soup".to_string(), 2)]
    );
}

/// 1,000 concurrent placements over HTTP for 100 units: exactly 100 orders
/// exist and reach APPROVED, the other 900 got 409 out_of_stock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flash_sale_over_http_sells_exactly_the_stock() {
    // The test polls 100 orders with one admin token: no rate limit for it.
    let app = spawn_app_with(Limits {
        rate_per_sec: 1e6,
        burst: 1e6,
        ..Limits::default()
    })
    .await;
    app.seed("flash", true, &[("deal", 990, 100)]).await;
    let body = order_body("flash", &[("deal", 1)], 990);
    let replies = futures::future::join_all((0..1_000).map(|i| {
        let token = app.customer(&format!("c{i}"));
        let body = body.clone();
        let app = &app;
        async move { app.place(&token, &format!("k{i}"), body).await }
    }))
    .await;
    let mut ids = Vec::new();
    let mut refused = 0;
    for reply in replies {
        match reply.status.as_u16() {
            202 => ids.push(reply.body["order_id"].as_str().unwrap().to_string()),
            409 => {
                reply.problem(409, "out_of_stock");
                refused += 1;
            }
            other => panic!("unexpected {other}: {:?}", reply.body),
        }
    }
    assert_eq!((ids.len(), refused), (100, 900));
    let admin = app.admin();
    for id in &ids {
        let order = app.wait_for(id, &admin, settled).await;
        assert_eq!(
            (
                order["status"].as_str(),
                order["payment"]["status"].as_str()
            ),
            (Some("APPROVED"), Some("CAPTURED"))
        );
    }
    let (orders, stock) = app.footprint("flash").await;
    assert_eq!(orders, 100);
    assert_eq!(stock, vec![("deal".to_string(), 0)]);
    let report = engine::check::check(&app.engine, true).await.unwrap();
    assert!(report.passed(), "{report}");
}

/// A token over its rate gets 429 with Retry-After; a saturated engine sheds
/// with 503 and Retry-After; both counted in /metrics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admission_control_sheds_with_retry_after() {
    let app = spawn_app_with(Limits {
        rate_per_sec: 1.0,
        burst: 2.0,
        ..Limits::default()
    })
    .await;
    let customer = app.customer("eager");
    app.get("/v1/restaurants/x/menu", &customer)
        .await
        .problem(404, "restaurant_not_found");
    app.get("/v1/restaurants/x/menu", &customer)
        .await
        .problem(404, "restaurant_not_found");
    let limited = app.get("/v1/restaurants/x/menu", &customer).await;
    limited.problem(429, "rate_limited");
    assert_eq!(limited.retry_after.as_deref(), Some("1"));
    // Another token is not affected.
    app.get("/v1/restaurants/x/menu", &app.customer("calm"))
        .await
        .problem(404, "restaurant_not_found");

    let saturated = spawn_app_with(Limits {
        in_flight_max: 0,
        ..Limits::default()
    })
    .await;
    let shed = saturated
        .get("/v1/restaurants/x/menu", &saturated.customer("c"))
        .await;
    shed.problem(503, "overloaded");
    assert_eq!(shed.retry_after.as_deref(), Some("1"));

    let metrics = app.metrics_text().await;
    assert!(
        metrics.contains("lunchrush_requests_shed_total{reason=\"rate_limited\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("lunchrush_http_requests_total{"),
        "{metrics}"
    );
}

/// Operations endpoints: health, readiness, metrics with stream gauges and
/// the placement histogram, and the OpenAPI document.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operations_endpoints_answer() {
    let app: TestApp = spawn_app().await;
    app.seed("ops", true, &[("tea", 2_000, 5)]).await;
    let placed = app
        .place(
            &app.customer("c"),
            "k",
            order_body("ops", &[("tea", 1)], 2_000),
        )
        .await;
    let id = placed.ok(202)["order_id"].as_str().unwrap().to_string();
    app.wait_for(&id, &app.admin(), settled).await;
    let get = |path: &'static str| {
        let http = app.http.clone();
        let url = format!("{}{path}", app.url);
        async move { http.get(url).send().await.unwrap() }
    };
    assert_eq!(get("/healthz").await.status(), 200);
    let ready = get("/readyz").await;
    assert_eq!(ready.status(), 200);
    assert_eq!(ready.json::<Value>().await.unwrap()["status"], "ready");
    // Stream gauges are gathered in the background: wait for a round that
    // saw this order's streams.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let metrics = loop {
        let metrics = get("/metrics").await.text().await.unwrap();
        if metrics.contains("lunchrush_stream_pending_entries{group=\"restaurant\"")
            || std::time::Instant::now() > deadline
        {
            break metrics;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for name in [
        "lunchrush_placement_seconds_bucket",
        "lunchrush_stream_lag_entries{group=\"payment\",topic=\"orders\"}",
        "lunchrush_stream_pending_entries{group=\"restaurant\",topic=\"payments\"}",
        "lunchrush_hot_restaurant_placements{restaurant=\"ops\"}",
        "lunchrush_http_requests_total{route=\"/v1/orders\",method=\"POST\",status=\"202\"}",
    ] {
        assert!(metrics.contains(name), "{name} missing from\n{metrics}");
    }
    let document: Value = get("/openapi.json").await.json().await.unwrap();
    assert_eq!(document, api::openapi::document());
    // Every documented route is served (none falls through to 404 route_not_found).
    let admin = app.admin();
    for (method, path) in api::ROUTES {
        let path = path
            .replace("{rid}", "ops")
            .replace("{item}", "tea")
            .replace("{id}", &id);
        let reply = app
            .raw(
                Method::from_bytes(method.as_bytes()).unwrap(),
                &path,
                Some(&admin),
                &[],
                None,
            )
            .await;
        assert_ne!(reply.body["code"], "route_not_found", "{method} {path}");
        assert_ne!(reply.status.as_u16(), 405, "{method} {path}");
    }
}
