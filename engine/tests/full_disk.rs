//! Redis's AOF on a small filesystem that fills up (a size-limited tmpfs,
//! mounted as root; skipped with a message where mounting is not allowed):
//! Redis refuses writes (`MISCONF`), placements are refused as refused
//! writes and change nothing, sagas in flight wait without a delivery
//! counted towards the dead letters; once space is freed everything
//! resumes without a restart, every order acknowledged is there (also after
//! Redis is killed and restarted on its AOF) and the rule holds.
//!
//! With `appendfsync always` Redis cannot keep a write it failed to append
//! and exits instead: the Redis-crash path, proven by `tests/redis_crash.rs`
//! and the chaos runner. This test runs `everysec`, where Redis stays up
//! and refuses writes. A second test demotes Redis to a replica (`READONLY`
//! after a failover) and promotes it back.

use std::time::{Duration, Instant};

use engine::budget::Refusal;
use engine::engine::PlaceError;
use engine::keys::Topic;
use fixture::{Fixture, Options, Servers, eventually, numbered_order};
use stack::RedisDeployment;
use stack::tmpfs::Tmpfs;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_aof_disk_refuses_writes_then_recovers_by_itself() {
    let root = tempfile::tempdir().unwrap();
    let mount = match Tmpfs::mount(&root.path().join("disk"), "24m", None) {
        Ok(mount) => mount,
        Err(why) => {
            eprintln!("SKIPPED: cannot mount a tmpfs here ({why}); the full-disk test needs root");
            return;
        }
    };
    let options = Options {
        redis_dir: Some(mount.dir().to_path_buf()),
        ..Options::redis()
    };
    let mut fx = Fixture::start(options, |_| {}).await;
    fx.restaurant("wok", true, "noodles", 8_000, 1_000_000)
        .await;
    fx.start_workers("disk");
    let mut acknowledged = Vec::new();
    for n in 0..50 {
        let request = numbered_order(n, "wok", &[("noodles", 1)], 8_000);
        acknowledged.push(fx.engine.place_order(&request).await.unwrap().order_id);
    }
    fx.settle(Duration::from_secs(30)).await;

    let filler = mount.fill("filler").unwrap();
    // Placements go on until Redis notices its AOF write failed; from then
    // on each is refused and changes nothing.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut n = 50;
    loop {
        let request = numbered_order(n, "wok", &[("noodles", 1)], 8_000);
        n += 1;
        match fx.engine.place_order(&request).await {
            Ok(placed) => acknowledged.push(placed.order_id),
            Err(PlaceError::Engine(error)) => {
                assert_eq!(error.refused_write(), Some(Refusal::Unwritable), "{error}");
                break;
            }
            Err(other) => panic!("not a refused write: {other:?}"),
        }
        assert!(
            Instant::now() < deadline,
            "Redis never refused a write on a full disk"
        );
    }
    let orders = fx.orders().await.len();
    let refused = numbered_order("refused", "wok", &[("noodles", 1)], 8_000);
    assert!(fx.engine.place_order(&refused).await.is_err());
    assert_eq!(
        fx.orders().await.len(),
        orders,
        "a refused write left an order"
    );

    std::fs::remove_file(&filler).unwrap();
    let resumed = eventually(Duration::from_secs(30), "writes taken again", || async {
        let request = numbered_order(format!("after{n}"), "wok", &[("noodles", 1)], 8_000);
        fx.engine
            .place_order(&request)
            .await
            .map_err(|e| e.to_string())
    })
    .await;
    acknowledged.push(resumed.order_id);
    fx.settle(Duration::from_secs(60)).await;
    fx.drain_groups(Duration::from_secs(60)).await;
    assert_eq!(
        fx.stream_entries(Topic::Dead).await,
        0,
        "nothing dead-lettered"
    );
    fx.assert_rule_holds().await;

    // Everything acknowledged is in the AOF: kill Redis and start it on it.
    fx.stop_workers().await;
    let Servers::Redis(RedisDeployment::Standalone(server)) = &mut fx.servers else {
        panic!("a standalone fixture");
    };
    server.kill();
    server.restart().unwrap();
    let missing = eventually(Duration::from_secs(30), "Redis back", || async {
        let mut missing = 0;
        for id in &acknowledged {
            match fx.engine.order(id).await {
                Ok(Some(_)) => {}
                Ok(None) => missing += 1,
                Err(error) => return Err(error.to_string()),
            }
        }
        Ok(missing)
    })
    .await;
    assert_eq!(
        missing,
        0,
        "acknowledged orders lost of {}",
        acknowledged.len()
    );
    fx.assert_rule_holds().await;
}

/// Redis turned replica (as after a failover that demoted it): writes are
/// refused (`READONLY`), placements are refused as refused writes and change
/// nothing, sagas wait; once it is a primary again everything resumes and
/// the rule holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_demoted_primary_refuses_writes_then_recovers_by_itself() {
    let mut fx = Fixture::start(Options::redis(), |_| {}).await;
    fx.restaurant("wok", true, "noodles", 8_000, 1_000_000)
        .await;
    fx.start_workers("demoted");
    let first = numbered_order(0, "wok", &[("noodles", 1)], 8_000);
    let first = fx.engine.place_order(&first).await.unwrap().order_id;
    fx.settle(Duration::from_secs(30)).await;
    let node = &fx.servers.redis_nodes()[0];
    // A primary that does not answer: the data stays, writes are refused.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    node.command(&["REPLICAOF", "127.0.0.1", &port.to_string()])
        .unwrap();
    let orders = fx.orders().await.len();
    let refused = numbered_order(1, "wok", &[("noodles", 1)], 8_000);
    match fx.engine.place_order(&refused).await {
        Err(PlaceError::Engine(error)) => {
            assert_eq!(error.refused_write(), Some(Refusal::Unwritable), "{error}")
        }
        other => panic!("a replica took a placement: {other:?}"),
    }
    assert_eq!(
        fx.orders().await.len(),
        orders,
        "a refused write left an order"
    );

    node.command(&["REPLICAOF", "NO", "ONE"]).unwrap();
    let again = eventually(Duration::from_secs(30), "writes taken again", || async {
        fx.engine
            .place_order(&refused)
            .await
            .map_err(|e| e.to_string())
    })
    .await;
    fx.settle(Duration::from_secs(60)).await;
    for id in [first, again.order_id] {
        assert!(fx.engine.order(&id).await.unwrap().is_some());
    }
    assert_eq!(
        fx.stream_entries(Topic::Dead).await,
        0,
        "nothing dead-lettered"
    );
    fx.assert_rule_holds().await;
}
