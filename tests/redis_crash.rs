//! Redis crashes in the middle of a load with `appendfsync everysec`, and the
//! machine with it: the tail of the AOF that was not yet fsynced is gone when
//! Redis restarts (simulated by killing it and cutting the AOF's tail). The provider, outside Redis, may hold charges
//! for orders Redis no longer knows. After `lunchrush reconcile`: the rule
//! holds and no money is kept for a lost order.

mod common;

use std::time::{Duration, Instant};

use stack::psp::Faults;

/// Truncates the newest incremental AOF file by `share` of its length;
/// Redis loads what precedes the cut (`aof-load-truncated yes`, the default,
/// and an unfinished MULTI at the end is dropped whole). Returns bytes cut.
fn cut_aof_tail(dir: &std::path::Path, share: f64) -> u64 {
    let aof_dir = dir.join("appendonlydir");
    let newest = std::fs::read_dir(&aof_dir)
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().ends_with(".incr.aof"))
        .max()
        .expect("an incremental AOF file");
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&newest)
        .unwrap();
    let length = file.metadata().unwrap().len();
    let cut = (length as f64 * share) as u64;
    file.set_len(length - cut).unwrap();
    cut
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconciliation_repairs_what_a_redis_crash_loses() {
    let mut fx = common::fixture(Faults::default()).await;
    fx.start_workers("w");
    fx.seed(4, 7_000, 100_000, None).await;
    let engine = fx.engine.clone();
    let placed_so_far = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = placed_so_far.clone();
    let load = tokio::spawn(async move {
        let mut placed = 0;
        for i in 0..2_000 {
            let request = fixture::meal_order(i, &format!("r{}", i % 4), 7_000);
            // Placements fail while Redis is down; that is the point.
            if engine.place_order(&request).await.is_ok() {
                placed += 1;
                counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
        placed
    });
    // Kill Redis mid-load: once a few hundred orders (and their sagas) are
    // under way, not after a guessed time.
    let deadline = Instant::now() + Duration::from_secs(60);
    while placed_so_far.load(std::sync::atomic::Ordering::Relaxed) < 300 {
        assert!(Instant::now() < deadline, "the load never got going");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    fx.stack_mut().redis.servers_mut()[0].kill();
    // A process crash loses nothing acknowledged (every write reached the OS
    // before its reply). A machine crash loses what everysec had not yet
    // fsynced: cut the AOF's tail, as the lost page cache would.
    let lost = cut_aof_tail(fx.stack().redis.servers()[0].dir(), 0.25);
    fx.stack_mut().redis.servers_mut()[0].restart().unwrap();
    eprintln!("cut {lost} bytes off the AOF");
    let _ = load.await.unwrap();

    // Let the workers settle what they can, then reconcile.
    let deadline = Instant::now() + Duration::from_secs(60);
    while fx.unsettled().await > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Quiescent (or as settled as a loss allows): reconcile everything,
    // whatever its age.
    let output = common::lunchrush(&fx, &["reconcile", "--older-than", "0s"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    eprintln!("reconcile after the crash:\n{stdout}");
    assert_eq!(
        output.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    while fx.unsettled().await > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let report = engine::check::check(&fx.engine, true).await.unwrap();
    assert!(report.passed(), "{report}\n{stdout}");
    // The provider keeps money only for orders Redis holds as approved.
    for payment in fx.sim.payments() {
        let id: uuid::Uuid = payment.key.parse().unwrap();
        let order = fx.engine.order(&id).await.unwrap();
        match payment.state.as_str() {
            "captured" => {
                let order = order
                    .unwrap_or_else(|| panic!("captured {id} but the order is gone\n{stdout}"));
                assert!(
                    order.status.is_fulfilled(),
                    "captured {id} for a {} order\n{stdout}",
                    order.status
                );
                assert_eq!(order.total, payment.amount);
            }
            "authorized" => panic!("authorization {id} left dangling\n{stdout}"),
            _ => {}
        }
    }
}
