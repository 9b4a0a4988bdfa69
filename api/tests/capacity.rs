//! Redis at its memory budget, over real HTTP against the real engine:
//! past the high-water mark new orders are refused with `503
//! capacity_exhausted` and reserve nothing, `/readyz` says `degraded:
//! redis_memory`, while 100 orders already in flight are all approved or
//! rejected and reach rest in consistent pairs; with memory freed,
//! placements resume by themselves.

mod helpers;

use std::time::Duration;

use helpers::{TestApp, order_body, spawn_app_configured};

async fn readiness(app: &TestApp) -> serde_json::Value {
    let ready = app
        .raw(reqwest::Method::GET, "/readyz", None, &[], None)
        .await;
    assert_eq!(ready.status, 200, "{ready:?}");
    ready.body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_high_water_mark_new_orders_are_refused_and_those_in_flight_finish() {
    const FLOOR: u64 = 1 << 20;
    let app = spawn_app_configured(helpers::roomy(), |c| {
        c.memory.floor = Some(FLOOR);
        c.memory.hysteresis = Some(256 << 10);
        c.memory.watch_every = Duration::from_millis(50);
    })
    .await;
    app.seed("slow", false, &[("meal", 9_000, 10_000)]).await;
    let customer = app.customer("hungry");
    let body = || order_body("slow", &[("meal", 1)], 9_000);
    let mut ids = Vec::new();
    for n in 0..100 {
        ids.push(app.place_ok(&customer, &format!("k{n}"), body()).await);
    }
    for id in &ids {
        app.wait_for(id, &customer, |o| o["status"] == "PAID").await;
    }
    assert_eq!(readiness(&app).await["status"], "ready");

    // A limit 1 MiB above what Redis holds now: inside the reserve (a 1 MiB
    // floor plus 4 KiB for each of the 100 orders in flight).
    app.set_redis_maxmemory(app.redis_used_memory().await + FLOOR)
        .await;
    // The watcher sees it within a round; until then no order is placed
    // here (one would be in flight too, and is waited for below).
    fixture::eventually(Duration::from_secs(10), "the budget refusing", || async {
        let ready = readiness(&app).await;
        match ready["status"].as_str() {
            Some("degraded: redis_memory") => Ok(()),
            _ => Err(format!("{ready}")),
        }
    })
    .await;
    let before = app.footprint("slow").await;
    let refusal = app.place(&customer, "refused", body()).await;
    assert_eq!(
        app.footprint("slow").await,
        before,
        "a refusal reserved nothing"
    );
    refusal.problem(503, "capacity_exhausted");
    assert!(refusal.retry_after.is_some(), "{refusal:?}");
    // The refused key was not taken: no order carries it.
    let again = app.place(&customer, "refused", body()).await;
    again.problem(503, "capacity_exhausted");
    // A retry of an order placed before still gets its first answer.
    let retry = app.place(&customer, "k0", body()).await;
    assert_eq!(retry.ok(202)["order_id"], ids[0].as_str(), "{retry:?}");

    let ready = readiness(&app).await;
    assert_eq!(ready["status"], "degraded: redis_memory", "{ready}");
    assert_eq!(ready["redis_memory"]["orders_in_flight"], 100, "{ready}");
    let metrics = app.metrics_text().await;
    assert!(
        metrics.contains("lunchrush_placements_refused_total{code=\"capacity_exhausted\"}"),
        "{metrics}"
    );
    assert!(metrics.contains("lunchrush_placements_refusing{reason=\"redis_memory\"} 1"));

    // Every order in flight still finishes: half accepted, half rejected.
    let staff = app.restaurant("slow");
    for (i, id) in ids.iter().enumerate() {
        let reply = if i % 2 == 0 {
            app.post(&format!("/v1/orders/{id}/accept"), &staff, None)
                .await
        } else {
            let reason = serde_json::json!({"reason": "kitchen full"});
            app.post(&format!("/v1/orders/{id}/reject"), &staff, Some(reason))
                .await
        };
        reply.ok(200);
    }
    for (i, id) in ids.iter().enumerate() {
        let order = app
            .wait_for(id, &customer, |o| {
                matches!(o["payment"]["status"].as_str(), Some("CAPTURED" | "VOIDED"))
            })
            .await;
        let expected = if i % 2 == 0 {
            ("APPROVED", "CAPTURED")
        } else {
            ("REJECTED", "VOIDED")
        };
        assert_eq!(
            (
                order["status"].as_str().unwrap(),
                order["payment"]["status"].as_str().unwrap()
            ),
            expected,
            "{order}"
        );
    }
    app.assert_rule_holds().await;

    // Memory freed (here: a larger limit): placements resume by themselves.
    app.set_redis_maxmemory(app.redis_used_memory().await + (64 << 20))
        .await;
    fixture::eventually(Duration::from_secs(10), "placements resumed", || async {
        let reply = app.place(&customer, "after", body()).await;
        match reply.status.as_u16() {
            202 => Ok(()),
            _ => Err(format!("{reply:?}")),
        }
    })
    .await;
    assert_eq!(readiness(&app).await["status"], "ready");
}
