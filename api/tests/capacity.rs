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
    // (The gauge's value is the process's: the other test here sets it too.)
    assert!(metrics.contains("lunchrush_placements_refusing{reason=\"redis_memory\"}"));
    assert!(metrics.contains("lunchrush_redis_memory_high_water_bytes"));

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

/// PostgreSQL down for long: orders are taken as long as the budget
/// allows, every one of them settles meanwhile, then placements are refused
/// with `capacity_exhausted` (Redis never above its `maxmemory`, `/readyz`
/// still 200, degraded). Once PostgreSQL is back the backlog drains, memory
/// comes back and placements resume by themselves; every accepted order is
/// archived once and the rule holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_archive_outage_pushes_back_then_recovers_by_itself() {
    let mut app = spawn_app_configured(helpers::roomy(), |c| {
        c.live_retention = Some(Duration::from_secs(1));
        c.memory.floor = Some(512 << 10);
        c.memory.hysteresis = Some(256 << 10);
        c.memory.watch_every = Duration::from_millis(50);
    })
    .await;
    // An archiver that trims often, so memory comes back once it can write.
    let mut options = archiver::ArchiverOptions::new("outage-archiver");
    options.idle_poll_max = Duration::from_millis(20);
    options.trim_every = Duration::from_millis(200);
    let archiver = archiver::Archiver::new(app.engine.clone(), app.pool().clone(), options);
    archiver.prepare().await.unwrap();
    tokio::spawn(archiver.run(app.stopped()));
    app.seed("wok", true, &[("noodles", 8_000, 1_000_000)])
        .await;
    let customer = app.customer("hungry");
    let body = || order_body("wok", &[("noodles", 1)], 8_000);

    app.fx.stack_mut().postgres.stop();
    let limit = app.redis_used_memory().await + (2 << 20);
    app.set_redis_maxmemory(limit).await;
    let mut accepted = Vec::new();
    let refusal = loop {
        let reply = app
            .place(&customer, &format!("k{}", accepted.len()), body())
            .await;
        match reply.status.as_u16() {
            202 => accepted.push(reply.body["order_id"].as_str().unwrap().to_string()),
            _ => break reply,
        }
        assert!(accepted.len() < 5_000, "never pushed back");
    };
    refusal.problem(503, "capacity_exhausted");
    assert!(
        accepted.len() >= 100,
        "only {} orders taken",
        accepted.len()
    );
    let ready = readiness(&app).await;
    let status = ready["status"].as_str().unwrap();
    assert!(
        status.contains("archive") && status.contains("redis_memory"),
        "{ready}"
    );
    // Everything accepted settles while the archive is down.
    for id in &accepted {
        app.wait_for(id, &customer, |o| o["payment"]["status"] == "CAPTURED")
            .await;
    }
    let used = app.redis_used_memory().await;
    assert!(
        used <= limit,
        "Redis at {used} B, above its maxmemory {limit} B"
    );
    app.place(&customer, "while-down", body())
        .await
        .problem(503, "capacity_exhausted");

    app.fx.stack_mut().postgres.restart().await.unwrap();
    fixture::eventually(Duration::from_secs(90), "placements resumed", || async {
        let reply = app.place(&customer, "after", body()).await;
        match reply.status.as_u16() {
            202 => Ok(()),
            _ => Err(format!("{reply:?}")),
        }
    })
    .await;
    let report = app.wait_archived(Duration::from_secs(90)).await;
    assert!(
        report.orders > accepted.len() as u64,
        "{} archived of {} accepted: {report}",
        report.orders,
        accepted.len()
    );
    app.assert_rule_holds().await;
}
