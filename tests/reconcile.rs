//! `lunchrush reconcile` against injected orphans of every kind: each is
//! found and fixed, `check` passes afterwards, and a second run finds
//! nothing.

mod common;

use std::process::Output;
use std::time::Duration;

use engine::domain::{OrderStatus, PaymentStatus};
use engine::engine::Actor;
use engine::keys::{Lane, Topic};
use fred::prelude::*;
use stack::psp::Faults;

fn reconcile(fx: &common::Fixture, report: &std::path::Path) -> (Output, serde_json::Value) {
    let output = common::lunchrush(fx, &["reconcile", "--older-than", "2s", "--report"])
        .arg(report)
        .output()
        .unwrap();
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(report).unwrap()).unwrap();
    (output, report)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_finds_and_fixes_every_orphan_kind_once() {
    let fx = common::fixture(Faults::default()).await;
    fx.seed(2, 6_000, 50, Some(5)).await;
    let (stack, sim, engine, psp) = (fx.stack(), &fx.sim, &fx.engine, &fx.psp);
    let place = |i: u32| {
        let engine = engine.clone();
        async move {
            let request = fixture::meal_order(i, "r1", 6_000);
            engine.place_order(&request).await.unwrap().order_id
        }
    };
    let p = engine.keys().partition_of_restaurant("r1");
    // What a bug or a hand could leave: an order's hash gone, or its entry
    // among those in flight.
    let delete_hash = async |id: &uuid::Uuid| {
        let _: i64 = engine
            .redis()
            .del(engine.keys().order(p, id))
            .await
            .unwrap();
    };
    let delete_inflight = async |id: &uuid::Uuid| {
        let inflight = engine.keys().inflight(p);
        let _: i64 = engine.redis().zrem(inflight, id.to_string()).await.unwrap();
    };

    // 1. A saga stuck PENDING with stock held (no worker ever ran).
    let stuck = place(1).await;
    // 2. Stock held by an order that no longer exists.
    let vanished = place(2).await;
    delete_hash(&vanished).await;
    delete_inflight(&vanished).await;
    // 2b. An in-flight entry whose order hash is gone (deleted by hand):
    // reported as its own kind and removed; its stock is reclaimed too.
    let dangling = place(8).await;
    delete_hash(&dangling).await;
    // 3. A provider charge with no order at all.
    let ghost = engine::ids::new_order_id(p);
    psp.authorize(&ghost.to_string(), 9_999).await.unwrap();
    psp.capture(&ghost.to_string()).await.unwrap();
    // 4. An order recorded CAPTURED that the provider only authorized.
    let claimed = place(4).await;
    psp.authorize(&claimed.to_string(), 6_000).await.unwrap();
    let _: () = engine
        .redis()
        .hset(
            engine.keys().order(p, &claimed),
            [
                ("status", "APPROVED"),
                ("pay", "CAPTURED"),
                ("decision", "approved"),
            ],
        )
        .await
        .unwrap();
    delete_inflight(&claimed).await;
    // 5. A pending entry of a consumer that died (it read, never acked).
    let orphaned = place(5).await;
    let taken = engine::saga::read_group(
        engine.redis(),
        "payment",
        "dead-consumer",
        100,
        vec![engine.keys().stream(p, Topic::Orders)],
        vec![">"],
    )
    .await
    .unwrap();
    assert!(!taken.is_empty());
    // 6. A parked compensation: rejected while authorized, its void parked.
    let parked = place(6).await;
    let order = engine.order(&parked).await.unwrap().unwrap();
    let authorized = psp.authorize(&parked.to_string(), 6_000).await.unwrap();
    let outcome = engine::engine::PaymentOutcome::Authorized;
    let reference = authorized.reference.as_str();
    engine
        .record_payment(&order, outcome, reference, Lane::Online)
        .await
        .unwrap();
    let order = engine.order(&parked).await.unwrap().unwrap();
    engine
        .cancel(&order, Actor::Admin, None, Lane::Online)
        .await
        .unwrap();
    let _: String = engine
        .redis()
        .xadd(
            engine.keys().stream(p, Topic::Parked),
            false,
            None,
            "*",
            vec![
                ("source", "x"),
                ("reason", "provider unavailable"),
                ("action", "void"),
                ("f.order", parked.to_string().as_str()),
            ],
        )
        .await
        .unwrap();
    // 7. A deleted archive row: archive everything, then lose one row.
    let pool = fx.pool();
    let archiver = archiver::Archiver::new(
        engine.clone(),
        pool.clone(),
        archiver::ArchiverOptions::new("test-archiver"),
    );
    archiver.prepare().await.unwrap();
    archiver.drain().await.unwrap();
    let healthy = place(7).await;
    engine::saga::drive_payment(engine, psp, &healthy, Lane::Online)
        .await
        .unwrap();
    engine::saga::auto_approve(engine, &healthy, Lane::Online)
        .await
        .unwrap();
    engine::saga::drive_payment(engine, psp, &healthy, Lane::Online)
        .await
        .unwrap();
    archiver.drain().await.unwrap();
    pool.get()
        .await
        .unwrap()
        .execute(
            "DELETE FROM saga_events WHERE order_id = $1 AND seq = 2",
            &[&healthy],
        )
        .await
        .unwrap();

    let report_path = stack.home().join("report.json");
    // Every orphan is older than the `--older-than 2s` threshold.
    fx.wait_quiet(Duration::from_millis(2_200)).await;
    let (output, report) = reconcile(&fx, &report_path);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let summary = &report["summary"];
    for kind in [
        "stuck_saga",
        "dangling_index",
        "held_stock",
        "charge_without_order",
        "captured_without_charge",
        "dead_consumer_pending",
        "parked_compensation",
        "archive_gap",
    ] {
        assert!(
            summary[kind]["found"].as_u64().unwrap_or(0) >= 1,
            "{kind} not found: {stdout}"
        );
        assert_eq!(summary[kind]["unfixable"], 0, "{kind}: {stdout}");
        assert_eq!(
            summary[kind]["found"], summary[kind]["fixed"],
            "{kind}: {stdout}"
        );
    }

    let index: Vec<String> = engine
        .redis()
        .zrange(engine.keys().inflight(p), 0, -1, None, false, None, false)
        .await
        .unwrap();
    assert!(!index.contains(&dangling.to_string()), "{index:?}");

    // The stuck saga was re-driven to the end; the phantom capture corrected.
    let stuck = engine.order(&stuck).await.unwrap().unwrap();
    assert_eq!(
        (stuck.status, stuck.pay),
        (OrderStatus::Approved, PaymentStatus::Captured)
    );
    let orphaned = engine.order(&orphaned).await.unwrap().unwrap();
    assert_eq!(
        (orphaned.status, orphaned.pay),
        (OrderStatus::Approved, PaymentStatus::Captured)
    );
    let claimed = engine.order(&claimed).await.unwrap().unwrap();
    assert_eq!(
        (claimed.status, claimed.pay, claimed.reason.as_str()),
        (OrderStatus::Rejected, PaymentStatus::Voided, "reconciled")
    );
    assert_eq!(
        sim.payment(&claimed.id.to_string()).unwrap().state,
        "voided"
    );
    assert_eq!(sim.payment(&ghost.to_string()).unwrap().state, "refunded");
    assert_eq!(sim.payment(&parked.to_string()).unwrap().state, "voided");
    let report = engine::check::check(engine, true).await.unwrap();
    assert!(report.passed(), "{report}");
    archiver.drain().await.unwrap();
    let audit = archiver::audit::audit(engine, pool).await.unwrap();
    assert!(audit.passed(), "{audit}");
    let runs: i64 = pool
        .get()
        .await
        .unwrap()
        .query_one(
            "SELECT count(*) FROM reconciliation_fixes WHERE outcome = 'fixed'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(runs >= 7);

    // A second run finds nothing to fix.
    let (output, report) = reconcile(&fx, &report_path);
    assert_eq!(output.status.code(), Some(0));
    let found: u64 = report["summary"]
        .as_object()
        .unwrap()
        .values()
        .map(|c| c["found"].as_u64().unwrap())
        .sum();
    assert_eq!(found, 0, "{}", String::from_utf8_lossy(&output.stdout));
}

/// Reconciliation run in a loop beside live traffic (workers, archiver and a
/// steady stream of placements) finds nothing to fix in healthy orders and
/// changes none of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_in_a_loop_beside_traffic_changes_no_healthy_order() {
    let mut fx = common::fixture(Faults {
        decline_rate: 0.1,
        ..Faults::default()
    })
    .await;
    fx.start_workers("w");
    fx.seed(4, 6_000, 100_000, None).await;
    let (stack, engine, pool) = (fx.stack(), &fx.engine, fx.pool());
    let (_stop, stopped) = tokio::sync::watch::channel(false);
    let archiver = archiver::Archiver::new(
        engine.clone(),
        pool.clone(),
        archiver::ArchiverOptions::new("a"),
    );
    archiver.prepare().await.unwrap();
    tokio::spawn(archiver.run(stopped));
    let placed_so_far = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let load = {
        let engine = engine.clone();
        let placed_so_far = placed_so_far.clone();
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            let mut i: u64 = 0;
            while started.elapsed() < Duration::from_secs(10) {
                let request = fixture::meal_order(i, &format!("r{}", i % 4), 6_000);
                engine.place_order(&request).await.unwrap();
                i += 1;
                placed_so_far.store(i, std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            i
        })
    };
    let report_path = stack.home().join("loop.json");
    // Three runs, each after another 150 placements: some orders of each
    // run are older than its threshold, many are in flight.
    for run in 1..=3 {
        fixture::eventually(Duration::from_secs(30), "150 more placements", || async {
            let placed = placed_so_far.load(std::sync::atomic::Ordering::Relaxed);
            if placed >= run * 150 {
                Ok(())
            } else {
                Err(format!("{placed} placed"))
            }
        })
        .await;
        let (output, report) = reconcile(&fx, &report_path);
        assert_eq!(
            output.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&output.stdout)
        );
        let touched: Vec<&serde_json::Value> = report["fixes"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|f| !matches!(f["kind"].as_str(), Some("unarchived" | "dead_letter")))
            .collect();
        assert!(
            touched.is_empty(),
            "reconciliation touched healthy orders: {touched:?}"
        );
    }
    let placed = load.await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let unsettled = fx.unsettled().await;
        if unsettled == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{unsettled} sagas never settled"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let report = engine::check::check(engine, true).await.unwrap();
    assert!(report.passed(), "{report}");
    assert_eq!(report.orders, placed);
    let reconciled: i64 = pool.get().await.unwrap()
        .query_one("SELECT count(*) FROM reconciliation_fixes WHERE kind NOT IN ('unarchived', 'dead_letter')", &[]).await.unwrap().get(0);
    assert_eq!(reconciled, 0);
}
