//! Hostile traffic against the real server over real sockets: no request can
//! crash the process, grow its metrics, hold its connections, or change
//! anything by being refused; every refusal is a problem document.

mod helpers;

use std::time::{Duration, Instant};

use api::admission::Limits;
use fred::prelude::*;
use helpers::{TestApp, roomy, spawn_app_with};
use rand::{Rng, SeedableRng};
use reqwest::Method;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The API with [`roomy`] limits and restaurant `rid` selling one item
/// `(item, price, stock)`.
async fn app_with(rid: &str, auto_approve: bool, item: (&str, i64, i64)) -> TestApp {
    let app = spawn_app_with(roomy()).await;
    app.seed(rid, auto_approve, &[item]).await;
    app
}

/// What a refused request must not change: every key in Redis, and the
/// orders and stock of restaurant `rid`.
async fn footprint(app: &TestApp, rid: &str) -> (u64, (usize, Vec<(String, i64)>)) {
    let keys: u64 = app.engine.redis().dbsize().await.unwrap();
    (keys, app.footprint(rid).await)
}

async fn assert_unchanged(app: &TestApp, rid: &str, before: (u64, (usize, Vec<(String, i64)>))) {
    let after = footprint(app, rid).await;
    assert_eq!(after, before, "refused requests changed nothing");
}

/// Sends raw bytes on a fresh connection and reads until the server closes
/// it (or `within` passes): the bytes answered, and whether it closed.
async fn raw_exchange(app: &TestApp, request: &[u8], within: Duration) -> (String, bool) {
    let address = app.url.trim_start_matches("http://");
    let mut stream = TcpStream::connect(address).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    let closed = tokio::time::timeout(within, async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .is_ok();
    (String::from_utf8_lossy(&answer).into_owned(), closed)
}

/// Asserts a raw HTTP answer is a problem document with `status` and `code`.
fn assert_raw_problem(answer: &str, status: u16, code: &str) {
    assert!(
        answer.starts_with(&format!("HTTP/1.1 {status} ")),
        "{answer}"
    );
    let (head, body) = answer.split_once("\r\n\r\n").expect("a head and a body");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/problem+json"),
        "{answer}"
    );
    let problem: Value = serde_json::from_str(body).expect("a JSON body");
    assert_eq!(problem["status"], status, "{answer}");
    assert_eq!(problem["code"], code, "{answer}");
}

/// Bodies no route can accept: nesting up to 100,000 deep in every
/// position, huge strings and numbers, invalid UTF-8, random bytes.
fn adversarial_bodies(rng: &mut rand::rngs::StdRng) -> Vec<Vec<u8>> {
    let mut bodies = Vec::new();
    for depth in [33, 1_000, 10_000, 100_000] {
        let open = "[".repeat(depth);
        let close = "]".repeat(depth);
        bodies.push(
            format!(r#"{{"restaurant_id":{open}{close},"items":[],"expected_total":0}}"#)
                .into_bytes(),
        );
        bodies.push(format!("{}1{}", r#"{"a":"#.repeat(depth), "}".repeat(depth)).into_bytes());
        bodies.push(format!(r#"{{"name":"x","open":true,"auto_approve":{open}"#).into_bytes());
        bodies.push(open.into_bytes());
    }
    bodies.push(format!(r#"{{"restaurant_id":"{}","items":[]}}"#, "r".repeat(60_000)).into_bytes());
    bodies.push(format!(r#"{{"name":"{}","open":true}}"#, "\\u0000".repeat(10_000)).into_bytes());
    bodies.push(
        br#"{"restaurant_id":"r","items":[{"item":"a","qty":1e400}],"expected_total":0}"#.to_vec(),
    );
    bodies.push(
        br#"{"name":"x","price":99999999999999999999999999,"stock":1,"available":true}"#.to_vec(),
    );
    bodies.push(br#"{"stock_delta":-9223372036854775808}"#.to_vec());
    bodies.push(br#"{"reason":"#.to_vec());
    let mut invalid_utf8 = br#"{"name":""#.to_vec();
    invalid_utf8.extend_from_slice(&[0xff, 0xfe, 0xc3, 0x28]);
    invalid_utf8.extend_from_slice(br#"","open":true,"auto_approve":true}"#);
    bodies.push(invalid_utf8);
    bodies.push(vec![b' '; 70_000]);
    for _ in 0..40 {
        let len = rng.random_range(16..2_000);
        bodies.push((0..len).map(|_| rng.random::<u8>()).collect());
    }
    bodies
}

/// Every route that takes a body gets every adversarial body: each answer
/// is a 4xx problem document, the process still answers, and Redis holds
/// exactly what it held before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_body_crashes_the_process_or_changes_anything() {
    let app = app_with("fort", true, ("bread", 1_000, 5)).await;
    let before = footprint(&app, "fort").await;
    let admin = app.admin();
    let customer = app.customer("mallory");
    let seed = std::env::var("LUNCHRUSH_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    println!("fuzz seed {seed} (LUNCHRUSH_FUZZ_SEED repeats it)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let routes: [(Method, &str, &str); 6] = [
        (Method::POST, "/v1/orders", customer.as_str()),
        (Method::PUT, "/v1/restaurants/fort", admin.as_str()),
        (Method::PATCH, "/v1/restaurants/fort", admin.as_str()),
        (
            Method::PUT,
            "/v1/restaurants/fort/menu/bread",
            admin.as_str(),
        ),
        (
            Method::PATCH,
            "/v1/restaurants/fort/menu/bread",
            admin.as_str(),
        ),
        (
            Method::POST,
            "/v1/orders/0190b5c2-7a6e-7000-8000-000000000000/reject",
            admin.as_str(),
        ),
    ];
    for body in adversarial_bodies(&mut rng) {
        for (method, path, token) in &routes {
            let reply = app
                .raw(
                    method.clone(),
                    path,
                    Some(token),
                    &[("idempotency-key", "fuzz")],
                    Some(("application/json", body.clone())),
                )
                .await;
            assert!(
                reply.status.is_client_error(),
                "{method} {path} with {} bytes: {reply:?}",
                body.len()
            );
            assert_eq!(reply.content_type, "application/problem+json", "{reply:?}");
        }
    }
    let healthz = app.raw(Method::GET, "/healthz", None, &[], None).await;
    assert_eq!(healthz.status, 200, "the process still answers");
    assert_unchanged(&app, "fort", before).await;
}

/// Made-up methods and restaurant ids never become metric series: after
/// hundreds of them every method label is one of a closed set and no
/// made-up restaurant is named. (`hostile-bench` shows the size stays flat.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_methods_and_made_up_ids_do_not_grow_the_metrics() {
    let app = app_with("real", true, ("tea", 1_000, 1_000)).await;
    let customer = app.customer("c");
    let metrics = || app.metrics_text();
    let hostile_round = |i: usize| {
        let customer = customer.clone();
        let app = &app;
        async move {
            let method = Method::from_bytes(format!("M{i}{}", "X".repeat(200)).as_bytes()).unwrap();
            let reply = app.raw(method, "/v1/orders", None, &[], None).await;
            assert!(reply.status.is_client_error(), "{reply:?}");
            let body = json!({"restaurant_id": format!("ghost-{i}"), "items": [{"item": "tea", "qty": 1}], "expected_total": 1000});
            app.place(&customer, &format!("ghost-{i}"), body)
                .await
                .problem(422, "unknown_restaurant");
        }
    };
    for i in 0..400 {
        hostile_round(i).await;
    }
    // The recorder is the process's: other tests of this binary add their
    // own (legitimate) series meanwhile, so the text's size proves nothing
    // here. What does: no label value came from a request.
    let after = metrics().await;
    assert!(!after.contains("ghost-"), "{after}");
    let methods: std::collections::BTreeSet<&str> = after
        .split("method=\"")
        .skip(1)
        .filter_map(|rest| rest.split('"').next())
        .collect();
    let allowed = [
        "GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "other",
    ];
    assert!(
        methods.iter().all(|m| allowed.contains(m)),
        "methods from requests: {methods:?}"
    );
    assert!(
        after.contains(r#"method="other""#),
        "odd methods count as `other`"
    );
}

/// Idle and half-sent connections are closed after the head timeout; past
/// the connection cap a client gets a 503 problem, and once the flood is
/// gone everyone is served again. `/healthz` and `/readyz` answer even
/// when every API request is shed; `/metrics` asks for its token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_capped_and_timed_out_and_probes_are_never_shed() {
    let app = spawn_app_with(Limits {
        in_flight_max: 0,
        connections_max: 8,
        header_read_timeout: Duration::from_millis(500),
        metrics_token: Some("scrape-me".into()),
        ..roomy()
    })
    .await;
    // Idle and half-sent: closed by the server within the timeout (plus slack).
    let (_, closed) = raw_exchange(&app, b"", Duration::from_secs(5)).await;
    assert!(closed, "an idle connection is closed");
    let (_, closed) = raw_exchange(
        &app,
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(closed, "a half-sent head is closed");

    // Fill the cap with idle connections: the next one is refused politely.
    let address = app.url.trim_start_matches("http://").to_string();
    let mut idle = Vec::new();
    for _ in 0..8 {
        idle.push(TcpStream::connect(&address).await.unwrap());
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    let refusal = loop {
        let (answer, _) = raw_exchange(
            &app,
            b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
            Duration::from_secs(2),
        )
        .await;
        if answer.starts_with("HTTP/1.1 503") || Instant::now() > deadline {
            break answer;
        }
    };
    assert_raw_problem(&refusal, 503, "overloaded");
    // The idle ones time out; then everyone is served again.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (answer, _) = raw_exchange(
            &app,
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            Duration::from_secs(2),
        )
        .await;
        if answer.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still refused after the idle timeout: {answer}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(idle);

    // Every API request is shed (in_flight_max 0); the probes are not.
    app.get("/v1/restaurants/x/menu", &app.customer("c"))
        .await
        .problem(503, "overloaded");
    assert_eq!(
        app.raw(Method::GET, "/healthz", None, &[], None)
            .await
            .status,
        200
    );
    assert_eq!(
        app.raw(Method::GET, "/readyz", None, &[], None)
            .await
            .status,
        200
    );
    app.raw(Method::GET, "/metrics", None, &[], None)
        .await
        .problem(401, "unauthorized");
    let scrape = app
        .http
        .get(format!("{}/metrics", app.url))
        .bearer_auth("scrape-me")
        .send()
        .await
        .unwrap();
    assert_eq!(scrape.status(), 200);
}

/// What hyper refuses before any handler runs, and paths that do not
/// decode, are problem documents too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_refusals_are_problem_documents() {
    let app = spawn_app_with(roomy()).await;
    let admin = app.admin();
    let bad_path = app.get("/v1/orders/%FF", &admin).await;
    bad_path.problem(400, "invalid_path");
    app.get("/v1/restaurants/%C3%28/menu", &admin)
        .await
        .problem(400, "invalid_path");
    let within = Duration::from_secs(5);
    let (answer, _) = raw_exchange(&app, b"GARBAGE\r\n\r\n", within).await;
    assert_raw_problem(&answer, 400, "malformed_request");
    let (answer, _) = raw_exchange(&app, b"GET / HTTP/1.1\r\nBad Header\r\n\r\n", within).await;
    assert_raw_problem(&answer, 400, "malformed_request");
    let huge = format!(
        "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(100_000)
    );
    let (answer, _) = raw_exchange(&app, huge.as_bytes(), within).await;
    assert_raw_problem(&answer, 431, "headers_too_large");
    let many: String = (0..150).map(|i| format!("X-H{i}: v\r\n")).collect();
    let (answer, _) = raw_exchange(
        &app,
        format!("GET /healthz HTTP/1.1\r\nHost: x\r\n{many}\r\n").as_bytes(),
        within,
    )
    .await;
    assert_raw_problem(&answer, 431, "headers_too_large");
    // A good request on the same server still works.
    let (answer, _) = raw_exchange(
        &app,
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        within,
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

/// Limits hold on every route: stock never passes its maximum by repeated
/// deltas, path steps are not ids, names carry no control characters, one
/// Idempotency-Key per request. Nothing refused changes anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_hold_everywhere() {
    let app = app_with("deli", true, ("bagel", 1_000, 0)).await;
    let admin = app.admin();
    let patch = |delta: i64| {
        app.patch(
            "/v1/restaurants/deli/menu/bagel",
            &admin,
            json!({ "stock_delta": delta }),
        )
    };
    assert_eq!(patch(10_000_000).await.ok(200)["stock"], 10_000_000);
    let before = footprint(&app, "deli").await;
    patch(10_000_000).await.problem(409, "stock_too_high");
    patch(1).await.problem(409, "stock_too_high");
    for rid in [".", ".."] {
        // Sent literally (reqwest would normalise the path): raw bytes.
        let body = r#"{"name":"dots","open":true,"auto_approve":true}"#;
        let request = format!(
            "PUT /v1/restaurants/{rid} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {admin}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let (answer, _) = raw_exchange(&app, request.as_bytes(), Duration::from_secs(5)).await;
        assert_raw_problem(&answer, 400, "invalid_path");
    }
    for name in ["two\nlines", "esc\u{1b}[2J", "nul\u{0}"] {
        app.put(
            "/v1/restaurants/deli/menu/bagel",
            &admin,
            json!({"name": name, "price": 1, "stock": 1, "available": true}),
        )
        .await
        .problem(422, "invalid_field");
    }
    // A rejection note with NUL would stall the archive (jsonb refuses it).
    app.post(
        "/v1/orders/0190b5c2-7a6e-7000-8000-000000000000/reject",
        &admin,
        Some(json!({"reason": "no\u{0}pe"})),
    )
    .await
    .problem(422, "invalid_field");
    let body = serde_json::to_vec(&json!({"restaurant_id": "deli", "items": [{"item": "bagel", "qty": 1}], "expected_total": 1000})).unwrap();
    app.raw(
        Method::POST,
        "/v1/orders",
        Some(&app.customer("c")),
        &[("idempotency-key", "one"), ("idempotency-key", "two")],
        Some(("application/json", body)),
    )
    .await
    .problem(400, "invalid_idempotency_key");
    assert_unchanged(&app, "deli", before).await;
}

/// Once the restaurant's accept answered 200, the customer's cancel is
/// refused (409 `too_late`), whichever reaches the script first: raced 30
/// times in parallel, no accepted order ends cancelled by its customer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customer_cannot_cancel_what_the_restaurant_accepted() {
    let app = app_with("race", false, ("dish", 1_000, 1_000)).await;
    let kitchen = app.restaurant("race");
    let mut orders = Vec::new();
    for i in 0..30 {
        let customer = app.customer(&format!("c{i}"));
        let body = json!({"restaurant_id": "race", "items": [{"item": "dish", "qty": 1}], "expected_total": 1000});
        let placed = app.place(&customer, &format!("k{i}"), body).await;
        let id = placed.ok(202)["order_id"].as_str().unwrap().to_string();
        orders.push((id, customer));
    }
    for (id, customer) in &orders {
        app.wait_for(id, customer, |o| o["status"] == "PAID").await;
    }
    let races = orders.iter().map(|(id, customer)| {
        let app = &app;
        let kitchen = kitchen.clone();
        async move {
            let (accept_path, cancel_path) = (
                format!("/v1/orders/{id}/accept"),
                format!("/v1/orders/{id}/cancel"),
            );
            let accept = app.post(&accept_path, &kitchen, None);
            let cancel = app.post(&cancel_path, customer, None);
            let (accept, cancel) = tokio::join!(accept, cancel);
            (id.clone(), customer.clone(), accept, cancel)
        }
    });
    let mut accepted = 0;
    for (id, customer, accept, cancel) in futures::future::join_all(races).await {
        let (a, c) = (accept.status.as_u16(), cancel.status.as_u16());
        assert!(
            a == 200 || c == 200,
            "{id}: one of them wins: {accept:?} {cancel:?}"
        );
        assert!(
            !(a == 200 && c == 200),
            "{id}: both won: {accept:?} {cancel:?}"
        );
        if a == 200 {
            accepted += 1;
            cancel.problem(409, "too_late");
            let order = app
                .wait_for(&id, &customer, |o| o["payment"]["status"] == "CAPTURED")
                .await;
            assert_eq!(order["status"], "APPROVED", "{order}");
        }
    }
    println!("{accepted} of 30 races won by the restaurant");
}
