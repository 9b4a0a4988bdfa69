//! The local stack against the real binaries: each test starts its own
//! servers on free ports in its own temporary directory.

use std::time::{Duration, Instant};

use stack::redis::command_once;
use stack::{LocalStack, RedisDeployment, RedisMode, StackOptions, process_alive};

/// Polls until none of `pids` is alive, or fails after a bound.
fn assert_all_gone(pids: &[u32]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while pids.iter().any(|&pid| process_alive(pid)) {
        assert!(
            Instant::now() < deadline,
            "processes still alive: {:?}",
            pids.iter()
                .filter(|&&p| process_alive(p))
                .collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

async fn query_one(url: &str, sql: &str) -> String {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect to the stack's postgres");
    tokio::spawn(connection);
    let row = client.query_one(sql, &[]).await.expect("query");
    row.get(0)
}

/// A standalone stack answers on both URLs and leaves no process behind
/// once dropped.
#[tokio::test]
async fn standalone_stack_serves_and_cleans_up() {
    let stack = LocalStack::temporary().await.expect("start the stack");
    let RedisDeployment::Standalone(redis) = &stack.redis else {
        panic!("a temporary stack is standalone");
    };
    assert_eq!(redis.command(&["PING"]).unwrap(), "PONG");
    assert_eq!(
        redis
            .command(&["CONFIG", "GET", "maxmemory-policy"])
            .unwrap(),
        "maxmemory-policy\nnoeviction"
    );
    assert_eq!(
        redis.command(&["CONFIG", "GET", "appendonly"]).unwrap(),
        "appendonly\nyes"
    );
    assert_eq!(
        redis
            .command(&["CONFIG", "GET", "hash-max-listpack-value"])
            .unwrap(),
        "hash-max-listpack-value\n1024"
    );
    // The AOF's bound (docs/operations.md): rewritten from 512 MB.
    assert_eq!(
        redis
            .command(&["CONFIG", "GET", "auto-aof-rewrite-min-size"])
            .unwrap(),
        "auto-aof-rewrite-min-size\n536870912"
    );
    let answer = query_one(&stack.postgres_url(), "SELECT 'ready'::text").await;
    assert_eq!(answer, "ready");
    let pids = stack.pids();
    assert_eq!(pids.len(), 2);
    drop(stack);
    assert_all_gone(&pids);
}

/// A 3-master cluster covers all 16,384 slots, each master owning a third.
#[tokio::test]
async fn cluster_of_three_masters_covers_every_slot() {
    let stack = LocalStack::temporary_cluster()
        .await
        .expect("start the cluster");
    let RedisDeployment::Cluster(cluster) = &stack.redis else {
        panic!("asked for a cluster");
    };
    assert_eq!(cluster.nodes().len(), 3);
    for node in cluster.nodes() {
        let info = node.command(&["CLUSTER", "INFO"]).unwrap();
        assert!(info.contains("cluster_state:ok"), "{info}");
        assert!(info.contains("cluster_slots_assigned:16384"), "{info}");
        assert!(info.contains("cluster_known_nodes:3"), "{info}");
    }
    // A key written through its owner is refused (MOVED) by another master.
    let owner = cluster
        .nodes()
        .iter()
        .find(|n| n.command(&["SET", "{p0}:probe", "1"]).unwrap() == "OK")
        .expect("one master owns the slot of {p0}");
    let moved = cluster
        .nodes()
        .iter()
        .filter(|n| n.port() != owner.port())
        .map(|n| n.command(&["GET", "{p0}:probe"]).unwrap())
        .collect::<Vec<_>>();
    assert!(
        moved.iter().all(|r| r.starts_with("ERR MOVED")),
        "{moved:?}"
    );
    let url = stack.redis_url();
    assert!(url.starts_with("redis-cluster://127.0.0.1:"), "{url}");
    assert_eq!(url.matches("node=").count(), 2, "{url}");
    let pids = stack.pids();
    assert_eq!(pids.len(), 4);
    drop(stack);
    assert_all_gone(&pids);
}

/// A test that panics while holding a stack leaves no server behind: the
/// panic unwinds through `Drop`, and the stack's temporary directory goes too.
#[test]
fn a_panicking_test_leaves_no_process_behind() {
    let (tx, rx) = std::sync::mpsc::channel();
    let outcome = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let stack = LocalStack::temporary().await.expect("start the stack");
            tx.send((stack.pids(), stack.home().to_path_buf())).unwrap();
            panic!("the test under test fails while its stack runs");
        })
    })
    .join();
    assert!(outcome.is_err(), "the inner test panicked");
    let (pids, home) = rx.recv().unwrap();
    assert_eq!(pids.len(), 2);
    assert_all_gone(&pids);
    assert!(!home.exists(), "temporary home {} removed", home.display());
}

/// A durable stack started twice on the same home keeps its data and, when
/// they are still free, its ports.
#[tokio::test]
async fn a_second_start_on_the_same_home_reuses_the_data() {
    let home = tempfile::tempdir().unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(home.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut options = StackOptions::durable(home.path());
    options.redis = RedisMode::Standalone;

    let first = LocalStack::start(options.clone()).await.unwrap();
    let redis_port = first.redis.servers()[0].port();
    let postgres_port = first.postgres.port();
    command_once(redis_port, &["SET", "kept", "yes"]).unwrap();
    {
        let (client, connection) =
            tokio_postgres::connect(&first.postgres_url(), tokio_postgres::NoTls)
                .await
                .unwrap();
        tokio::spawn(connection);
        client
            .batch_execute(
                "CREATE TABLE kept (key text, value text); INSERT INTO kept VALUES ('kept', 'yes')",
            )
            .await
            .unwrap();
    }
    drop(first);

    options.redis_port = Some(redis_port);
    options.postgres_port = Some(postgres_port);
    let second = LocalStack::start(options).await.unwrap();
    assert_eq!(second.redis.servers()[0].port(), redis_port);
    assert_eq!(second.postgres.port(), postgres_port);
    assert_eq!(command_once(redis_port, &["GET", "kept"]).unwrap(), "yes");
    let kept = query_one(
        &second.postgres_url(),
        "SELECT value FROM kept WHERE key = 'kept'",
    )
    .await;
    assert_eq!(kept, "yes");
}

/// Options for a stack whose home sits in a mode-0700 directory: as root,
/// the `postgres` user cannot reach it and the data goes outside the home.
fn hidden_home(parent: &std::path::Path, durable: bool) -> StackOptions {
    StackOptions {
        home: parent.join("home"),
        redis: RedisMode::Standalone,
        appendfsync: stack::AppendFsync::Everysec,
        redis_port: None,
        postgres_port: None,
        redis_maxmemory: None,
        durable,
    }
}

/// Data kept outside an unreachable home belongs to that home: start,
/// write, stop, delete the home, start again at the same path → an empty
/// archive and no error; a non-durable stack leaves nothing outside.
/// (Meaningful as root, where PostgreSQL runs as `postgres`; as another
/// user the data always stays in the home and the test proves the same.)
#[tokio::test]
async fn data_outside_the_home_is_tied_to_it() {
    let parent = tempfile::tempdir().expect("a mode-0700 directory");
    {
        use std::os::unix::fs::PermissionsExt;
        let closed = std::fs::Permissions::from_mode(0o700);
        std::fs::set_permissions(parent.path(), closed).unwrap();
    }
    let options = hidden_home(parent.path(), true);
    let stack = LocalStack::start(options.clone()).await.expect("start");
    let url = stack.postgres_url();
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
        .batch_execute("CREATE TABLE leftover (x int); INSERT INTO leftover VALUES (1)")
        .await
        .unwrap();
    drop(client);
    let first_data = stack.postgres.data_dir().to_path_buf();
    drop(stack);
    std::fs::remove_dir_all(parent.path().join("home")).unwrap();

    let stack = LocalStack::start(options).await.expect("start again");
    assert_ne!(
        stack.postgres.data_dir(),
        first_data,
        "a new home, new data"
    );
    let found = query_one(
        &stack.postgres_url(),
        "SELECT count(*)::text FROM pg_tables WHERE tablename = 'leftover'",
    )
    .await;
    assert_eq!(found, "0", "the deleted home's data was adopted");
    drop(stack);
    let _ = stack::postgres::remove_outside_data(&parent.path().join("home/postgres"));
    if first_data.starts_with("/var/lib/lunchrush") {
        let _ = std::fs::remove_dir_all(first_data.parent().unwrap());
    }

    let temporary = LocalStack::start(hidden_home(parent.path(), false))
        .await
        .expect("start a non-durable stack");
    let data = temporary.postgres.data_dir().to_path_buf();
    drop(temporary);
    if !data.starts_with(parent.path()) {
        assert!(!data.exists(), "{} left behind", data.display());
    }
}
