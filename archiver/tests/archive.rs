//! The archiver against real Redis and PostgreSQL: every emitted event is
//! archived exactly once, projections agree with Redis, streams are trimmed,
//! and a PostgreSQL outage loses nothing.

use std::time::{Duration, Instant};

use archiver::{Archiver, ArchiverOptions};
use fred::prelude::*;
use stack::psp::Faults;

type Env = fixture::Fixture;

/// Workers running, restaurants `r0..r7` with `meal`, a fifth of the
/// payments declined.
async fn env() -> Env {
    env_on(stack::RedisMode::Standalone).await
}

/// [`env`] on standalone Redis or a Cluster.
async fn env_on(redis: stack::RedisMode) -> Env {
    let faults = Faults {
        decline_rate: 0.2,
        ..Faults::default()
    };
    let options = fixture::Options {
        redis,
        postgres: true,
        faults,
        ..fixture::Options::redis()
    };
    let mut env = Env::start(options, |_| {}).await;
    env.start_workers("w");
    env.seed(8, 8_000, 100_000, None).await;
    env
}

fn archiver(env: &Env) -> Archiver {
    let mut options = ArchiverOptions::new("archiver-test");
    options.batch_size = 200;
    options.idle_poll_max = Duration::from_millis(20);
    options.trim_every = Duration::from_millis(100);
    options.backoff_max = Duration::from_millis(500);
    Archiver::new(env.engine.clone(), env.pool().clone(), options)
}

async fn place(env: &Env, from: usize, to: usize) {
    for i in from..to {
        let request = fixture::meal_order(i, &format!("r{}", i % 8), 8_000);
        env.engine.place_order(&request).await.unwrap();
    }
}

async fn count(env: &Env, sql: &str) -> i64 {
    env.pool()
        .get()
        .await
        .unwrap()
        .query_one(sql, &[])
        .await
        .unwrap()
        .get(0)
}

/// After a load and quiescence: `saga_events` holds exactly the events that
/// were emitted (count and per-order sequences), projections agree with
/// Redis for every order, and the streams are trimmed to empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_is_archived_once_and_streams_are_trimmed() {
    archived_once(env().await).await;
}

/// The same on a 3-master Cluster, where the archiver reads each
/// partition's streams with its own XREADGROUP and writes them together.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_is_archived_once_on_a_cluster() {
    archived_once(env_on(stack::RedisMode::Cluster { masters: 3 }).await).await;
}

async fn archived_once(env: Env) {
    let archiver = archiver(&env);
    archiver.prepare().await.unwrap();
    let (_stop, stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(archiver.clone().run(stopped));
    place(&env, 0, 300).await;
    let report = env.wait_archived(Duration::from_secs(90)).await;
    assert_eq!(report.orders, 300);
    let order_events: i64 = {
        let mut total = 0i64;
        for p in 0..env.engine.keys().partitions() {
            for id in env.engine.order_ids(p).await.unwrap() {
                total += env.engine.order(&id).await.unwrap().unwrap().seq as i64;
            }
        }
        total
    };
    assert_eq!(
        count(
            &env,
            "SELECT count(*) FROM saga_events WHERE order_id IS NOT NULL"
        )
        .await,
        order_events
    );
    // 8 restaurants + 8 items, one menu event each.
    assert_eq!(
        count(
            &env,
            "SELECT count(*) FROM saga_events WHERE order_id IS NULL"
        )
        .await,
        16
    );
    assert_eq!(
        count(&env, "SELECT count(*) FROM menu_item_history").await,
        8
    );
    assert_eq!(count(&env, "SELECT count(*) FROM order_items").await, 300);
    let declined = env
        .sim
        .payments()
        .iter()
        .filter(|p| p.state == "declined")
        .count() as i64;
    assert_eq!(
        count(
            &env,
            "SELECT count(*) FROM payments WHERE status = 'DECLINED'"
        )
        .await,
        declined
    );
    assert_eq!(
        count(&env, "SELECT count(*) FROM orders WHERE last_seq <> events").await,
        0
    );
    // Re-archiving changes nothing: replay every archived entry's group from 0.
    let before = count(&env, "SELECT count(*) FROM saga_events").await;
    archiver.drain().await.unwrap();
    assert_eq!(
        count(&env, "SELECT count(*) FROM saga_events").await,
        before
    );
}

/// PostgreSQL stops for 20 s during the load: the online path keeps
/// placing and settling orders, the archiver retries, nothing is lost, and
/// once PostgreSQL is back the archive catches up exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_outage_loses_nothing() {
    let mut env = env().await;
    let archiver = archiver(&env);
    archiver.prepare().await.unwrap();
    let (_stop, stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(archiver.clone().run(stopped));
    place(&env, 0, 100).await;
    env.stack_mut().postgres.stop();
    let outage = Instant::now();
    let mut placed = 100;
    while outage.elapsed() < Duration::from_secs(20) {
        place(&env, placed, placed + 20).await;
        placed += 20;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Nothing could be archived, so nothing was trimmed past the outage.
    let mut held = 0u64;
    for p in 0..env.engine.keys().partitions() {
        let n: u64 = env
            .engine
            .redis()
            .xlen(env.engine.keys().stream(p, engine::keys::Topic::Orders))
            .await
            .unwrap();
        held += n;
    }
    assert!(held > 0, "events wait in Redis while PostgreSQL is down");
    env.stack_mut().postgres.restart().await.unwrap();
    let report = env.wait_archived(Duration::from_secs(90)).await;
    assert_eq!(report.orders, placed as u64);
}

/// A stream behind its archive (Redis lost a tail) is reported loudly and
/// recorded as an incident.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_behind_its_archive_is_reported() {
    let env = env().await;
    let archiver = archiver(&env);
    archiver.prepare().await.unwrap();
    place(&env, 0, 10).await;
    archiver.drain().await.unwrap();
    let partition = env.engine.keys().partition_of_restaurant("r0");
    let stream = env
        .engine
        .keys()
        .stream(partition, engine::keys::Topic::Orders);
    let _: i64 = env.engine.redis().del(stream.as_str()).await.unwrap();
    let lost = archiver.check_tails().await.unwrap();
    assert_eq!(lost, vec![stream]);
    assert_eq!(
        count(
            &env,
            "SELECT count(*) FROM archive_incidents WHERE kind = 'tail_lost'"
        )
        .await,
        1
    );
}

/// A batch redelivered after it was archived (a crash between COMMIT and
/// XACK, replayed here by rewinding the archiver's groups) adds nothing and
/// fills what is missing: each event is in `saga_events` once, whether its
/// batch held only archived events or a mix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivered_batch_is_archived_once() {
    let env = env().await;
    let archiver = archiver(&env);
    archiver.prepare().await.unwrap();
    place(&env, 0, 120).await;
    env.settle(Duration::from_secs(60)).await;
    archiver.drain().await.unwrap();
    let all = "SELECT count(*) FROM saga_events";
    let archived = count(&env, all).await;
    let distinct = "SELECT count(*) FROM (SELECT DISTINCT stream, entry_id FROM saga_events) e";
    assert_eq!(count(&env, distinct).await, archived);
    let keys = env.engine.keys().clone();
    let streams: Vec<String> = (0..keys.partitions())
        .flat_map(|p| engine::keys::Topic::ALL.map(|t| keys.stream(p, t)))
        .collect();
    let rewind = async || {
        for stream in &streams {
            // Streams never written have no group to rewind.
            let _ = env.rewind_group(stream, "archiver").await;
        }
    };

    // A replay meets rows already written: one that claims more events
    // than the replay carries stays as it is; one missing an event is
    // refolded from the archive; the rest are rewritten as they were.
    let (ahead, holed): (uuid::Uuid, uuid::Uuid) = {
        let client = env.pool().get().await.unwrap();
        let ids: Vec<uuid::Uuid> = client
            .query("SELECT order_id FROM orders ORDER BY order_id LIMIT 2", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        client
            .execute(
                "UPDATE orders SET last_seq = last_seq + 5, events = events + 5, \
                 status = 'CONFIRMED' WHERE order_id = $1",
                &[&ids[0]],
            )
            .await
            .unwrap();
        client
            .execute(
                "UPDATE orders SET events = events - 1, status = 'PENDING' WHERE order_id = $1",
                &[&ids[1]],
            )
            .await
            .unwrap();
        (ids[0], ids[1])
    };
    let projection = async |id: uuid::Uuid| -> (String, i64, i32) {
        let row = env
            .pool()
            .get()
            .await
            .unwrap()
            .query_one(
                "SELECT status, last_seq, events FROM orders WHERE order_id = $1",
                &[&id],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1), row.get(2))
    };
    let before = projection(ahead).await;
    rewind().await;
    archiver.drain().await.unwrap();
    assert_eq!(count(&env, all).await, archived, "a replay added rows");
    assert_eq!(
        projection(ahead).await,
        before,
        "a row holding more was replaced"
    );
    let (status, last_seq, events) = projection(holed).await;
    assert_eq!(i64::from(events), last_seq, "the holed row was refolded");
    let live = env.engine.order(&holed).await.unwrap().unwrap();
    assert_eq!(
        status,
        live.status.as_str(),
        "the holed row is Redis's order again"
    );

    let lost: i64 = {
        let client = env.pool().get().await.unwrap();
        let deleted = client
            .execute(
                "DELETE FROM saga_events WHERE ctid IN \
                 (SELECT ctid FROM saga_events WHERE type = 'PaymentCaptured' LIMIT 7)",
                &[],
            )
            .await
            .unwrap();
        deleted as i64
    };
    assert_eq!(lost, 7);
    rewind().await;
    archiver.drain().await.unwrap();
    assert_eq!(
        count(&env, all).await,
        archived,
        "the missing rows came back once"
    );
    assert_eq!(count(&env, distinct).await, archived);
}

/// An event whose data is JSON but not its kind's payload is archived as
/// written; data that is not JSON at all is archived wrapped as `{"raw":
/// …}`. Neither stops the batch around it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_data_is_archived_as_written() {
    let env = Env::archive(Faults::default()).await;
    let archiver = archiver(&env);
    archiver.prepare().await.unwrap();
    let stream = env.engine.keys().stream(3, engine::keys::Topic::Menu);
    let mut ids = Vec::new();
    for data in [r#"{"unexpected": [1, 2]}"#, "not json {", r#"{"r": "x"}"#] {
        let fields = vec![
            ("v", "1"),
            ("type", "RestaurantUpserted"),
            ("order", ""),
            ("saga", ""),
            ("seq", "1"),
            ("ts", "1700000000000"),
            ("data", data),
        ];
        let id: String = env
            .engine
            .redis()
            .xadd(&stream, false, None, "*", fields)
            .await
            .unwrap();
        ids.push(id);
    }
    archiver.drain().await.unwrap();
    let client = env.pool().get().await.unwrap();
    let mut archived = Vec::new();
    for id in &ids {
        let row = client
            .query_one(
                "SELECT payload::text FROM saga_events WHERE stream = $1 AND entry_id = $2",
                &[&stream, id],
            )
            .await
            .unwrap();
        archived.push(row.get::<_, String>(0));
    }
    assert_eq!(
        archived,
        [
            r#"{"unexpected": [1, 2]}"#,
            r#"{"raw": "not json {"}"#,
            r#"{"r": "x"}"#
        ]
    );
}

/// PostgreSQL's disk full (the archive's tables on a small tablespace that
/// fills up): a batch fails whole and nothing of it lands, its entries stay
/// pending in Redis (the backlog shows), a retry fails the same way; once
/// space is freed the next drain archives every event exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_archive_disk_fails_whole_batches_and_loses_nothing() {
    use std::os::unix::fs::PermissionsExt;
    let root = tempfile::tempdir().unwrap();
    std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    // The server runs as `postgres` when we are root (the stack's rule).
    let owner = std::process::Command::new("id")
        .args(["-u", "postgres"])
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok());
    let disk = match stack::tmpfs::Tmpfs::mount(&root.path().join("pgdisk"), "16m", owner) {
        Ok(disk) => disk,
        Err(why) => {
            eprintln!(
                "SKIPPED: cannot mount a tmpfs for PostgreSQL here ({why}); the test needs root"
            );
            return;
        }
    };
    let env = env().await;
    let client = env.pool().get().await.unwrap();
    client
        .batch_execute(&format!(
            "CREATE TABLESPACE small LOCATION '{}'",
            disk.dir().display()
        ))
        .await
        .unwrap();
    let tables: Vec<String> = client
        .query(
            "SELECT inhrelid::regclass::text FROM pg_inherits \
             WHERE inhparent = 'saga_events'::regclass",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    for table in tables.iter().map(String::as_str).chain(["orders"]) {
        client
            .batch_execute(&format!("ALTER TABLE {table} SET TABLESPACE small"))
            .await
            .unwrap();
    }
    let archiver = archiver(&env);
    archiver.prepare().await.unwrap();
    place(&env, 0, 20).await;
    env.settle(Duration::from_secs(30)).await;
    archiver.drain().await.unwrap();
    let before = count(&env, "SELECT count(*) FROM saga_events").await;

    // Fill the tablespace, then give the archiver a backlog.
    let filler = disk.fill("filler").unwrap();
    place(&env, 20, 400).await;
    env.settle(Duration::from_secs(30)).await;
    for attempt in 0..2 {
        let failed = archiver.drain().await;
        let error = failed
            .expect_err("a batch on a full disk fails")
            .to_string();
        assert!(error.contains("postgres"), "attempt {attempt}: {error}");
        let backlog = engine::ops::archive_backlog(&env.engine).await.unwrap();
        assert!(
            backlog.pending_entries + backlog.lag_entries > 0 && backlog.bytes > 0,
            "the backlog waits in Redis: {backlog:?}"
        );
    }
    let during = count(&env, "SELECT count(*) FROM saga_events").await;
    assert!(
        during < before + 380,
        "the archive took everything on a full disk ({before} -> {during})"
    );

    std::fs::remove_file(&filler).unwrap();
    let (_stop, stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(archiver.clone().run(stopped));
    let report = env.wait_archived(Duration::from_secs(90)).await;
    assert_eq!(report.orders, 400, "{report}");
    let duplicates = count(
        &env,
        "SELECT count(*) - count(DISTINCT (order_id, seq)) FROM saga_events WHERE order_id IS NOT NULL",
    )
    .await;
    assert_eq!(duplicates, 0);
    drop(client);
}
