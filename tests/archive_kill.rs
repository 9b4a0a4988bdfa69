//! `lunchrush archive` killed with SIGKILL mid-batch, three times, during a
//! load: once it runs again, the archive holds every event exactly once,
//! projections agree with Redis and the streams are trimmed.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use engine::domain::PlaceOrder;
use engine::engine::ItemPut;
use engine::keys::Lane;
use fred::prelude::*;
use stack::LocalStack;
use stack::psp::{Faults, PspSim};

const BIN: &str = env!("CARGO_BIN_EXE_lunchrush");

fn spawn_archiver(stack: &LocalStack) -> Child {
    Command::new(BIN)
        .arg("archive")
        .env("LUNCHRUSH_REDIS_URL", stack.redis_url())
        .env("LUNCHRUSH_POSTGRES_URL", stack.postgres_url())
        .env("LUNCHRUSH_PARTITIONS", "4")
        .env("LUNCHRUSH_ARCHIVE_BATCH", "50")
        .env("LUNCHRUSH_ARCHIVER_CONSUMER", "archiver-under-test")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_archiver_restarts_and_archives_everything_once() {
    let stack = LocalStack::temporary().await.unwrap();
    let sim = PspSim::open(&stack.home().join("ledger.jsonl"), Faults::default()).unwrap();
    let psp_url = sim.spawn_local().await.unwrap();
    let config = engine::Config {
        redis_url: stack.redis_url(),
        postgres_url: stack.postgres_url(),
        psp_url: psp_url.clone(),
        partitions: 4,
        jwt_secret: "x".repeat(32),
        ..engine::Config::default()
    };
    let engine = engine::Engine::new(
        engine::store::connect(&config).await.unwrap(),
        config.clone(),
    )
    .await
    .unwrap();
    engine::saga::ensure_groups(
        &engine,
        &engine::saga::Role::ALL.map(|r| (r.group(), r.topics())),
    )
    .await
    .unwrap();
    let (_stop, stopped) = tokio::sync::watch::channel(false);
    let options = engine::saga::WorkerOptions::new("w");
    engine::saga::spawn_workers(
        &engine,
        &engine::psp::PspClient::new(&psp_url),
        std::sync::Arc::new(engine::notify::LogNotifier),
        &options,
        &stopped,
    );
    for r in 0..4 {
        let rid = format!("r{r}");
        engine
            .put_restaurant(&rid, &rid, true, true, Lane::Online)
            .await
            .unwrap();
        let put = ItemPut {
            name: "meal".into(),
            price: 5_000,
            stock: 10_000,
            available: true,
            max_per_customer: None,
        };
        engine
            .put_item(&rid, "meal", &put, Lane::Online)
            .await
            .unwrap();
    }
    let pool = api::postgres_pool(&config.postgres_url).unwrap();
    let mut placed = 0;
    for round in 0..3 {
        let mut archiver = spawn_archiver(&stack);
        for _ in 0..150 {
            let request = PlaceOrder::parse(
                &format!("c{placed}"),
                &format!("r{}", placed % 4),
                &[("meal".into(), 1)],
                5_000,
                &format!("k{placed}"),
            )
            .unwrap();
            engine.place_order(&request).await.unwrap();
            placed += 1;
        }
        tokio::time::sleep(Duration::from_millis(300 + 200 * round)).await;
        archiver.kill().unwrap();
        archiver.wait().unwrap();
    }
    let mut archiver = spawn_archiver(&stack);
    let deadline = Instant::now() + Duration::from_secs(90);
    let report = loop {
        let mut unsettled = 0u64;
        for p in 0..4 {
            let n: u64 = engine
                .redis()
                .zcard(engine.keys().inflight(p))
                .await
                .unwrap();
            unsettled += n;
        }
        if unsettled == 0 {
            let report = archiver::audit::audit(&engine, &pool).await.unwrap();
            if report.passed() && report.stream_entries == 0 {
                break report;
            }
            assert!(
                Instant::now() < deadline,
                "archive never caught up: {report}"
            );
        }
        assert!(Instant::now() < deadline, "sagas never settled");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(report.orders, placed);
    // SAFETY: signalling our own child.
    unsafe { libc::kill(archiver.id() as i32, libc::SIGTERM) };
    assert!(
        archiver.wait().unwrap().success(),
        "archive exits 0 on SIGTERM"
    );
}
