//! A payment provider that fails every call, over real HTTP against the
//! real engine and the provider simulator: the circuit opens, placements are
//! refused without reserving anything, the provider sees only probes, and
//! after recovery everything accepted settles.

mod helpers;

use std::time::{Duration, Instant};

use api::admission::Limits;
use engine::keys::Topic;
use fred::prelude::*;
use helpers::{TestApp, spawn_app_with};
use serde_json::{Value, json};
use stack::psp::Faults;

fn body() -> Value {
    json!({"restaurant_id": "wok", "items": [{"item": "noodles", "qty": 1}], "expected_total": 8_000})
}

fn at_rest(order: &Value) -> bool {
    let pay = order["payment"]["status"].as_str().unwrap_or("");
    matches!(pay, "CAPTURED" | "VOIDED" | "REFUNDED" | "DECLINED")
        || (order["status"] == "REJECTED" && pay == "NONE")
}

/// Places one order with a fresh key; remembers it when accepted.
async fn place(app: &TestApp, customer: &str, accepted: &mut Vec<String>) -> helpers::Reply {
    let key = format!("k-{}", rand_suffix());
    let reply = app.place(customer, &key, body()).await;
    if reply.status == 202 {
        accepted.push(reply.body["order_id"].as_str().unwrap().to_string());
    }
    reply
}

fn rand_suffix() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

async fn dead_letters(app: &TestApp) -> u64 {
    app.stream_entries(Topic::Dead).await
}

/// The provider fails everything: within seconds placements answer 503
/// `payment_unavailable` with `Retry-After` and reserve nothing, `/readyz`
/// says `degraded: provider`, and the provider receives only probes. Once it
/// recovers, placements are accepted again within seconds, every order
/// accepted before or during the outage ends CAPTURED, and nothing was
/// dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_opens_the_circuit_and_pushes_back_at_the_edge() {
    let app = spawn_app_with(helpers::roomy()).await;
    app.seed("wok", true, &[("noodles", 8_000, 100_000)]).await;
    let customer = app.customer("hungry");
    let mut accepted = Vec::new();
    for _ in 0..5 {
        place(&app, &customer, &mut accepted).await.ok(202);
    }
    let known = app.place(&customer, "known", body()).await;
    let known_id = known.ok(202)["order_id"].clone();
    // It too must come to rest before the check at the end.
    accepted.push(known_id.as_str().unwrap().to_string());

    app.sim.set_faults(Faults {
        error_rate: 1.0,
        ..Faults::default()
    });
    // Orders keep coming; the circuit opens within seconds.
    let deadline = Instant::now() + Duration::from_secs(15);
    let refusal = loop {
        let before = app.footprint("wok").await;
        let reply = place(&app, &customer, &mut accepted).await;
        if reply.status == 503 {
            assert_eq!(
                app.footprint("wok").await,
                before,
                "a refusal reserved nothing"
            );
            break reply;
        }
        assert!(Instant::now() < deadline, "still accepting: {reply:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    refusal.problem(503, "payment_unavailable");
    assert!(refusal.retry_after.is_some());
    // A retry of an order placed before still gets its first answer.
    let retry = app.place(&customer, "known", body()).await;
    assert_eq!(retry.ok(202)["order_id"], known_id, "{retry:?}");
    let ready = app
        .raw(reqwest::Method::GET, "/readyz", None, &[], None)
        .await;
    assert_eq!(ready.status, 200, "reads still work: {ready:?}");
    assert_eq!(ready.body["status"], "degraded: provider", "{ready:?}");
    // Reads and menus keep working.
    let first = accepted[0].clone();
    app.get(&format!("/v1/orders/{first}"), &customer)
        .await
        .ok(200);
    app.get("/v1/restaurants/wok/menu", &customer).await.ok(200);

    // While open, the provider sees probes only: over two probe rounds
    // (each after a cool-down), no other call reaches it.
    let breaker = app.psp.breaker();
    let (calls_before, probes_before) = (app.sim.stats().received, breaker.probes());
    fixture::eventually(Duration::from_secs(20), "two probes while open", || async {
        let probes = breaker.probes() - probes_before;
        if probes >= 2 {
            Ok(())
        } else {
            Err(format!("{probes} probes"))
        }
    })
    .await;
    let calls = app.sim.stats().received - calls_before;
    let probes = breaker.probes() - probes_before;
    assert!(
        calls <= probes + 2,
        "{calls} provider calls for {probes} probes while open"
    );

    app.sim.set_faults(Faults::default());
    let recovered = Instant::now();
    loop {
        let reply = place(&app, &customer, &mut accepted).await;
        if reply.status == 202 {
            break;
        }
        assert!(
            recovered.elapsed() < Duration::from_secs(15),
            "still refusing after recovery: {reply:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "accepted again {:.1} s after recovery",
        recovered.elapsed().as_secs_f64()
    );
    for id in &accepted {
        let order = app.wait_for(id, &customer, at_rest).await;
        assert_eq!(
            (&order["status"], &order["payment"]["status"]),
            (&json!("APPROVED"), &json!("CAPTURED")),
            "{order}"
        );
    }
    assert_eq!(dead_letters(&app).await, 0);
    let report = engine::check::check(&app.engine, true).await.unwrap();
    assert!(report.passed(), "{report}");
}

/// A process that runs no payment hop (`serve --no-workers`) learns of an
/// open circuit from the announcement engines keep in Redis: it refuses
/// placements while the announcement lasts, and takes them again once it
/// lapses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_only_process_pushes_back_on_an_announced_circuit() {
    let app = spawn_app_with(Limits::default()).await;
    app.seed("wok", true, &[("noodles", 8_000, 100)]).await;
    let api_only = api::AppState::new(
        app.engine.clone(),
        app.pool().clone(),
        helpers::SECRET.as_bytes(),
        Limits::default(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(api::serve(listener, api_only, std::future::pending()));
    let customer = app.customer("hungry");
    let place = |key: String| {
        let http = app.http.clone();
        let (url, customer) = (url.clone(), customer.clone());
        async move {
            http.post(format!("{url}/v1/orders"))
                .bearer_auth(customer)
                .header("idempotency-key", key)
                .json(&body())
                .send()
                .await
                .unwrap()
        }
    };
    assert_eq!(place("before".into()).await.status(), 202);

    let key = app.engine.keys().circuit();
    let _: () = app
        .engine
        .redis()
        .set(
            &key,
            "open",
            Some(fred::types::Expiration::PX(4_000)),
            None,
            false,
        )
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut n = 0;
    loop {
        n += 1;
        let reply = place(format!("during-{n}")).await;
        if reply.status() == 503 {
            let problem: Value = reply.json().await.unwrap();
            assert_eq!(problem["code"], "payment_unavailable");
            break;
        }
        assert!(Instant::now() < deadline, "the announcement was not heard");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        n += 1;
        if place(format!("after-{n}")).await.status() == 202 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still refusing after the announcement lapsed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
