//! The HTTP API driven over real HTTP against the real engine, Redis,
//! PostgreSQL and the provider simulator: every route, every error, the role
//! matrix, admission control, and the flash sale over HTTP.

mod helpers;

use std::time::Duration;

use api::admission::Limits;
use api::auth::Role;
use helpers::{TestApp, order_body, spawn_app, spawn_app_with, strings};
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
    for token in [&customer, &owner] {
        app.put("/v1/restaurants/pho", token, put_restaurant.clone())
            .await
            .problem(403, "forbidden");
    }
    let created = app.put("/v1/restaurants/pho", &admin, put_restaurant).await;
    assert_eq!(created.ok(200)["name"], "Pho House");

    // PATCH restaurant: owner or admin.
    for token in [&stranger, &customer] {
        app.patch("/v1/restaurants/pho", token, json!({"open": false}))
            .await
            .problem(403, "forbidden");
    }
    let patched = app
        .patch("/v1/restaurants/pho", &owner, json!({"auto_approve": true}))
        .await;
    assert_eq!(patched.ok(200)["auto_approve"], true);
    app.patch("/v1/restaurants/nope", &admin, json!({"open": false}))
        .await
        .problem(404, "restaurant_not_found");

    // Menu items: owner or admin.
    let item = json!({"name": "Pho bo", "price": 11000, "stock": 20, "available": true, "max_per_customer": 5});
    for token in [&stranger, &customer] {
        app.put("/v1/restaurants/pho/menu/bo", token, item.clone())
            .await
            .problem(403, "forbidden");
    }
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

    for token in [&owner, &admin] {
        app.place(token, "k", body.clone())
            .await
            .problem(403, "forbidden");
    }
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
    let missing = format!("/v1/orders/{}", uuid_v4());
    for (route, token, status, code) in [
        (path.as_str(), &bob, 404, "order_not_found"),
        (path.as_str(), &stranger, 403, "forbidden"),
        ("/v1/orders/not-a-uuid", &admin, 404, "order_not_found"),
        (missing.as_str(), &admin, 404, "order_not_found"),
    ] {
        app.get(route, token).await.problem(status, code);
    }
    // `{path}/{action}` by `token`, no body.
    let act = |action: &str, token: &str| {
        let (action, token) = (format!("{path}/{action}"), token.to_string());
        let app = &app;
        async move { app.post(&action, &token, None).await }
    };

    // The order waits for the restaurant once paid.
    app.wait_for(&id, &alice, |o| o["status"] == "PAID").await;
    for (action, token, status, code) in [
        ("accept", &alice, 403, "forbidden"),
        ("accept", &stranger, 403, "forbidden"),
        ("dispatch", &owner, 409, "illegal_transition"),
    ] {
        act(action, token).await.problem(status, code);
    }
    act("accept", &owner).await.ok(200);
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
    for (action, token, status, code) in [
        ("cancel", &alice, 409, "too_late"),
        ("cancel", &owner, 403, "forbidden"),
        ("confirm", &owner, 403, "forbidden"),
    ] {
        act(action, token).await.problem(status, code);
    }
    let dispatched = act("dispatch", &owner).await;
    assert_eq!(dispatched.ok(200)["status"], "DISPATCHED");
    act("confirm", &bob).await.problem(404, "order_not_found");
    let confirmed = act("confirm", &alice).await;
    assert_eq!(confirmed.ok(200)["status"], "CONFIRMED");
    // Repeating a transition is harmless.
    let repeated = act("confirm", &admin).await;
    assert_eq!(repeated.ok(200)["status"], "CONFIRMED");

    // Events: the saga in sequence, no gap, no repeat.
    let events = app.get_ok(&format!("{path}/events"), &alice).await;
    let events = &events["events"];
    let kinds = strings(events, "type");
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
    let events = events.as_array().unwrap();
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=7).collect::<Vec<_>>());
    app.get(&format!("{path}/events"), &bob)
        .await
        .problem(404, "order_not_found");

    // Reject: the restaurant's words are kept; stock comes back; the
    // authorization is voided.
    let id2 = app.place_ok(&bob, "k2", body.clone()).await;
    app.wait_for(&id2, &bob, |o| o["status"] == "PAID").await;
    let reject = format!("/v1/orders/{id2}/reject");
    for (body, status, code) in [
        (json!({}), 400, "invalid_body"),
        (json!({"reason": ""}), 422, "invalid_field"),
    ] {
        app.post(&reject, &owner, Some(body))
            .await
            .problem(status, code);
    }
    let rejected = app
        .post(&reject, &owner, Some(json!({"reason": "out of noodles"})))
        .await;
    assert_eq!(rejected.ok(200)["reason"], "restaurant_rejected");
    let voided = app
        .wait_for(&id2, &bob, |o| o["payment"]["status"] == "VOIDED")
        .await;
    assert_eq!(voided["status"], "REJECTED");

    // Cancel by the customer before approval; by an admin after capture (refund).
    let id3 = app.place_ok(&bob, "k3", body.clone()).await;
    let cancelled = app
        .post(&format!("/v1/orders/{id3}/cancel"), &bob, None)
        .await;
    assert_eq!(cancelled.ok(200)["reason"], "cancelled");
    app.wait_for(&id3, &bob, settled).await;
    let refunded = act("cancel", &admin).await;
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
    let (customer, admin) = (app.customer("c1"), app.admin());
    let before = app.footprint("bistro").await;
    let good = order_body("bistro", &[("soup", 1)], 5_000);
    let json_body = |v: &Value| Some(("application/json", serde_json::to_vec(v).unwrap()));
    let key = [("idempotency-key", "k-bad")];

    // Auth.
    let foreign = api::auth::Keys::new(&[9u8; 32])
        .mint(Role::Customer, "c1", None, Duration::from_secs(60))
        .unwrap();
    for token in [None, Some("garbage"), Some(foreign.as_str())] {
        app.raw(Method::POST, "/v1/orders", token, &key, json_body(&good))
            .await
            .problem(401, "unauthorized");
    }

    // Transport-level problems.
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
    let truncated = Some(("application/json", b"{\"restaurant_id\": ".to_vec()));
    let text = Some(("text/plain", b"hello".to_vec()));
    let huge = Some(("application/json", vec![b' '; 70 * 1024]));
    let no_total = json!({"restaurant_id": "bistro", "items": []});
    let unknown_field =
        json!({"restaurant_id": "bistro", "items": [], "expected_total": 0, "tip": 1});
    for (body, status, code) in [
        (truncated, 400, "malformed_json"),
        (json_body(&no_total), 400, "invalid_body"),
        (json_body(&unknown_field), 400, "invalid_body"),
        (text, 415, "unsupported_media_type"),
        (huge, 413, "body_too_large"),
    ] {
        app.raw(Method::POST, "/v1/orders", Some(&customer), &key, body)
            .await
            .problem(status, code);
    }
    app.raw(
        Method::POST,
        "/v1/orders",
        Some(&customer),
        &[],
        json_body(&good),
    )
    .await
    .problem(400, "idempotency_key_missing");
    for (method, path, status, code) in [
        (Method::GET, "/v1/nowhere", 404, "route_not_found"),
        (Method::DELETE, "/v1/orders", 405, "method_not_allowed"),
    ] {
        app.raw(method, path, Some(&customer), &[], None)
            .await
            .problem(status, code);
    }

    // Domain refusals.
    let bistro = |lines: &[(&str, i64)], total: i64| order_body("bistro", lines, total);
    let too_many_lines = json!({"restaurant_id": "bistro", "items": (0..51).map(|i| json!({"item": format!("i{i}"), "qty": 1})).collect::<Vec<_>>(), "expected_total": 0});
    let twice = bistro(&[("soup", 1), ("soup", 1)], 10_000);
    let nowhere = order_body("nowhere", &[("soup", 1)], 5_000);
    let cases: Vec<(Value, u16, &str)> = vec![
        (bistro(&[("soup", 0)], 0), 422, "invalid_field"),
        (bistro(&[("soup", 100)], 500_000), 422, "invalid_field"),
        (twice, 422, "invalid_field"),
        (too_many_lines, 422, "invalid_field"),
        (bistro(&[("bread", 1)], 1_000), 422, "unknown_item"),
        (nowhere, 422, "unknown_restaurant"),
        (bistro(&[("soup", 4)], 20_000), 409, "out_of_stock"),
        (bistro(&[("soup", 1)], 4_000), 409, "price_changed"),
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
    let open = |open: bool| app.patch("/v1/restaurants/bistro", &admin, json!({ "open": open }));
    open(false).await.ok(200);
    app.place(&customer, "closed", good.clone())
        .await
        .problem(409, "restaurant_closed");
    open(true).await.ok(200);
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
    let app = spawn_app_with(helpers::roomy()).await;
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
    // The burst: two requests.
    for _ in 0..2 {
        app.get("/v1/restaurants/x/menu", &customer)
            .await
            .problem(404, "restaurant_not_found");
    }
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
        if metrics.contains("lunchrush_stream_pending_entries{group=\"payment\",topic=\"orders\"}")
            || std::time::Instant::now() > deadline
        {
            break metrics;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for name in [
        "lunchrush_placement_seconds_bucket",
        "lunchrush_stream_lag_entries{group=\"payment\",topic=\"orders\"}",
        "lunchrush_stream_pending_entries{group=\"payment\",topic=\"orders\"}",
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
