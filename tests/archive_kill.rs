//! `lunchrush archive` killed with SIGKILL mid-batch, three times, during a
//! load: once it runs again, the archive holds every event exactly once,
//! projections agree with Redis and the streams are trimmed.

mod common;

use std::process::{Child, Stdio};
use std::time::Duration;

use stack::psp::Faults;

fn spawn_archiver(fx: &common::Fixture) -> Child {
    common::lunchrush(fx, &["archive"])
        .env("LUNCHRUSH_ARCHIVE_BATCH", "50")
        .env("LUNCHRUSH_ARCHIVER_CONSUMER", "archiver-under-test")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_archiver_restarts_and_archives_everything_once() {
    let mut fx = common::fixture(Faults::default()).await;
    fx.start_workers("w");
    fx.seed(4, 5_000, 10_000, None).await;
    let (engine, pool) = (&fx.engine, fx.pool());
    let mut placed = 0;
    let archived = || async {
        let count: i64 = pool
            .get()
            .await
            .unwrap()
            .query_one("SELECT count(*) FROM saga_events", &[])
            .await
            .unwrap()
            .get(0);
        count
    };
    for _ in 0..3 {
        let before = archived().await;
        let mut archiver = spawn_archiver(&fx);
        for _ in 0..150 {
            let request = fixture::meal_order(placed, &format!("r{}", placed % 4), 5_000);
            engine.place_order(&request).await.unwrap();
            placed += 1;
        }
        // Killed once it has committed some of this round's events: in the
        // middle of its work, not after a guessed time.
        fixture::eventually(Duration::from_secs(30), "a committed batch", || async {
            let now = archived().await;
            if now > before {
                Ok(())
            } else {
                Err(format!("{now} events archived"))
            }
        })
        .await;
        archiver.kill().unwrap();
        archiver.wait().unwrap();
    }
    let mut archiver = spawn_archiver(&fx);
    let report = fx.wait_archived(Duration::from_secs(90)).await;
    assert_eq!(report.orders, placed);
    // SAFETY: signalling our own child.
    unsafe { libc::kill(archiver.id() as i32, libc::SIGTERM) };
    assert!(
        archiver.wait().unwrap().success(),
        "archive exits 0 on SIGTERM"
    );
}
