//! Test harness for the engine: a real Redis (standalone or a 3-master
//! cluster) in a temporary directory, the provider simulator in-process, an
//! [`Engine`] with a key prefix of its own, and helpers to run workers and
//! wait for sagas to settle.

#![allow(dead_code)]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use engine::Engine;
use engine::domain::{Order, PlaceOrder};
use engine::keys::Lane;
use engine::psp::PspClient;
use engine::saga::{Role, Worker, WorkerOptions};
use fred::prelude::*;
use stack::psp::{Faults, PspSim};
use stack::{AppendFsync, RedisCluster, RedisOptions, RedisServer};

/// Partitions in tests: few, so a test touches every one.
pub const PARTITIONS: u16 = 4;

pub enum Redis {
    Standalone(RedisServer),
    Cluster(RedisCluster),
}

/// Records every notification it is asked to send (and can be told to fail).
#[derive(Default)]
pub struct RecordingNotifier {
    pub sent: std::sync::Mutex<Vec<engine::notify::Notification>>,
    pub failing: std::sync::atomic::AtomicBool,
}

impl engine::notify::Notifier for RecordingNotifier {
    fn channel(&self) -> &'static str {
        "test"
    }

    fn send<'a>(&'a self, n: &'a engine::notify::Notification) -> engine::notify::SendFuture<'a> {
        Box::pin(async move {
            if self.failing.load(std::sync::atomic::Ordering::Relaxed) {
                return Err(engine::notify::NotifyError::Failed {
                    attempts: 1,
                    reason: "test says no".into(),
                });
            }
            self.sent.lock().unwrap().push(n.clone());
            Ok(1)
        })
    }
}

pub struct TestEnv {
    pub engine: Engine,
    pub notifier: std::sync::Arc<RecordingNotifier>,
    pub psp: PspClient,
    pub sim: PspSim,
    pub redis: Redis,
    shutdown: tokio::sync::watch::Sender<bool>,
    workers: Vec<tokio::task::JoinHandle<()>>,
    pub dir: tempfile::TempDir,
}

/// Options that make reclaiming quick enough for tests.
pub fn fast_options(consumer: &str) -> WorkerOptions {
    let mut options = WorkerOptions::new(consumer);
    options.reclaim_idle = Duration::from_millis(300);
    options.reclaim_every = Duration::from_millis(200);
    options.idle_poll_max = Duration::from_millis(10);
    options.claim_every = Duration::from_millis(50);
    options
}

impl TestEnv {
    pub async fn standalone() -> Self {
        Self::start(false).await
    }

    pub async fn cluster() -> Self {
        Self::start(true).await
    }

    pub async fn start(cluster: bool) -> Self {
        Self::start_with(cluster, engine::Timers::default()).await
    }

    pub async fn start_with(cluster: bool, timers: engine::Timers) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let redis = if cluster {
            Redis::Cluster(RedisCluster::start(dir.path(), 3, AppendFsync::Everysec).unwrap())
        } else {
            Redis::Standalone(
                RedisServer::start(RedisOptions {
                    dir: dir.path().join("redis"),
                    preferred_port: None,
                    appendfsync: AppendFsync::Everysec,
                })
                .unwrap(),
            )
        };
        let redis_url = match &redis {
            Redis::Standalone(server) => server.url(),
            Redis::Cluster(cluster) => cluster.url(),
        };
        let sim = PspSim::open(&dir.path().join("psp/ledger.jsonl"), Faults::default()).unwrap();
        let psp_url = sim.clone().spawn_local().await.unwrap();
        let config = engine::Config {
            redis_url,
            psp_url: psp_url.clone(),
            partitions: PARTITIONS,
            key_prefix: "t:".into(),
            timers,
            ..engine::Config::default()
        };
        config.validate().unwrap();
        let client = engine::store::connect(&config).await.unwrap();
        engine::store::ensure_no_eviction(&client).await.unwrap();
        let engine = Engine::new(client, config).await.unwrap();
        engine::saga::ensure_groups(&engine, &Role::ALL.map(|r| (r.group(), r.topics())))
            .await
            .unwrap();
        let (shutdown, _) = tokio::sync::watch::channel(false);
        Self {
            engine,
            notifier: std::sync::Arc::new(RecordingNotifier::default()),
            psp: PspClient::new(&psp_url),
            sim,
            redis,
            shutdown,
            workers: Vec::new(),
            dir,
        }
    }

    /// Starts one worker per role named `consumer`.
    pub fn start_workers(&mut self, consumer: &str) {
        let handles = engine::saga::spawn_workers(
            &self.engine,
            &self.psp,
            self.notifier.clone(),
            &fast_options(consumer),
            &self.shutdown.subscribe(),
        );
        self.workers.extend(handles);
    }

    /// A worker of one role (not running: call its rounds yourself).
    pub fn worker(&self, role: Role, consumer: &str) -> Worker {
        Worker::new(
            self.engine.clone(),
            self.psp.clone(),
            self.notifier.clone(),
            role,
            fast_options(consumer),
        )
    }

    pub async fn stop_workers(&mut self) {
        let _ = self.shutdown.send(true);
        for handle in self.workers.drain(..) {
            let _ = handle.await;
        }
        let (shutdown, _) = tokio::sync::watch::channel(false);
        self.shutdown = shutdown;
    }

    /// A restaurant with one item.
    pub async fn restaurant(&self, rid: &str, auto: bool, item: &str, price: i64, stock: i64) {
        self.engine
            .put_restaurant(rid, &format!("Restaurant {rid}"), true, auto, Lane::Online)
            .await
            .unwrap();
        self.item(rid, item, price, stock, None).await;
    }

    pub async fn item(&self, rid: &str, item: &str, price: i64, stock: i64, max: Option<i64>) {
        self.engine
            .put_item(
                rid,
                item,
                &engine::engine::ItemPut {
                    name: format!("Item {item}"),
                    price,
                    stock,
                    available: true,
                    max_per_customer: max,
                },
                Lane::Online,
            )
            .await
            .unwrap();
    }

    pub fn request(
        &self,
        customer: &str,
        rid: &str,
        lines: &[(&str, i64)],
        total: i64,
        key: &str,
    ) -> PlaceOrder {
        let lines: Vec<(String, i64)> = lines.iter().map(|(i, q)| (i.to_string(), *q)).collect();
        PlaceOrder::parse(customer, rid, &lines, total, key).unwrap()
    }

    /// Number of unsettled sagas across partitions.
    pub async fn unsettled(&self) -> u64 {
        self.engine.unsettled().await.unwrap()
    }

    /// Waits until every saga is settled, or panics after `limit`.
    pub async fn settle(&self, limit: Duration) {
        until_zero(limit, "sagas still unsettled", || async {
            self.unsettled().await as i64
        })
        .await;
    }

    /// Entries the saga groups have yet to read or acknowledge, over every
    /// partition's streams (lag plus pending, from XINFO GROUPS).
    pub async fn saga_backlog(&self) -> i64 {
        let mut backlog = 0;
        for p in 0..PARTITIONS {
            for role in engine::saga::Role::ALL {
                for topic in role.topics() {
                    let stream = self.engine.keys().stream(p, *topic);
                    let groups: Value = self.engine.redis().xinfo_groups(stream).await.unwrap();
                    for group in groups.into_array() {
                        let fields: HashMap<String, Value> = group
                            .into_array()
                            .chunks(2)
                            .filter_map(|kv| Some((kv.first()?.as_string()?, kv.get(1)?.clone())))
                            .collect();
                        if fields.get("name").and_then(Value::as_string).as_deref()
                            != Some(role.group())
                        {
                            continue;
                        }
                        // A lag Redis cannot compute (nil) counts as outstanding.
                        backlog += fields.get("lag").and_then(Value::as_i64).unwrap_or(1);
                        backlog += fields.get("pending").and_then(Value::as_i64).unwrap_or(0);
                    }
                }
            }
        }
        backlog
    }

    /// Waits until every saga group read and acknowledged everything.
    pub async fn drain_groups(&self, limit: Duration) {
        until_zero(limit, "entries unread or unacknowledged", || {
            self.saga_backlog()
        })
        .await;
    }

    /// Every order, by scanning.
    pub async fn orders(&self) -> Vec<Order> {
        let mut orders = Vec::new();
        for p in 0..PARTITIONS {
            let ids = self.engine.order_ids(p).await.unwrap();
            for id in ids {
                if let Some(order) = self.engine.order(&id).await.unwrap() {
                    orders.push(order);
                }
            }
        }
        orders.sort_by_key(|o| o.id);
        orders
    }

    /// The checker must pass with every saga at rest.
    pub async fn assert_rule_holds(&self) {
        let report = engine::check::check(&self.engine, true).await.unwrap();
        assert!(report.passed(), "{report}");
    }
}

/// Drop order: workers stop before Redis goes away.
impl Drop for TestEnv {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
        for handle in &self.workers {
            handle.abort();
        }
    }
}

/// Polls `left` until it reports 0; panics with `what` after `limit`.
async fn until_zero<F, Fut>(limit: Duration, what: &str, mut left: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = i64>,
{
    let deadline = Instant::now() + limit;
    loop {
        let n = left().await;
        if n == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "{n} {what} after {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
