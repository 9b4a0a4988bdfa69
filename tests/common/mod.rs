//! Shared set-up of the binary's integration tests: a temporary local stack
//! (Redis + migrated PostgreSQL), the provider simulator in-process, an
//! engine with its consumer groups, and helpers to run workers and seed menus.

#![allow(dead_code)]

use engine::engine::ItemPut;
use engine::keys::Lane;
use stack::LocalStack;
use stack::psp::{Faults, PspSim};

pub struct Fixture {
    pub stack: LocalStack,
    pub sim: PspSim,
    pub psp_url: String,
    pub psp: engine::psp::PspClient,
    pub config: engine::Config,
    pub engine: engine::Engine,
    pub pool: deadpool_postgres::Pool,
    stop: tokio::sync::watch::Sender<bool>,
}

/// Everything but the workers, with 4 partitions.
pub async fn fixture(faults: Faults) -> Fixture {
    let stack = LocalStack::temporary().await.unwrap();
    archiver::schema::migrate(&stack.postgres_url())
        .await
        .unwrap();
    let sim = PspSim::open(&stack.home().join("ledger.jsonl"), faults).unwrap();
    let psp_url = sim.clone().spawn_local().await.unwrap();
    let config = engine::Config {
        redis_url: stack.redis_url(),
        postgres_url: stack.postgres_url(),
        psp_url: psp_url.clone(),
        partitions: 4,
        ..engine::Config::default()
    };
    let client = engine::store::connect(&config).await.unwrap();
    let engine = engine::Engine::new(client, config.clone()).await.unwrap();
    let roles = engine::saga::Role::ALL.map(|r| (r.group(), r.topics()));
    engine::saga::ensure_groups(&engine, &roles).await.unwrap();
    let pool = api::postgres_pool(&config.postgres_url).unwrap();
    let (stop, _) = tokio::sync::watch::channel(false);
    Fixture {
        psp: engine::psp::PspClient::new(&psp_url),
        stack,
        sim,
        psp_url,
        config,
        engine,
        pool,
        stop,
    }
}

impl Fixture {
    /// Starts the saga workers and the timer claimer of one engine process.
    pub fn start_workers(&self) {
        engine::saga::spawn_workers(
            &self.engine,
            &self.psp,
            std::sync::Arc::new(engine::notify::LogNotifier),
            &engine::saga::WorkerOptions::new("w"),
            &self.stop.subscribe(),
        );
    }

    /// Restaurants `r0..r{count}`, auto-approving, each with one item `meal`.
    pub async fn seed(&self, count: usize, price: i64, stock: i64, max_per_customer: Option<i64>) {
        for r in 0..count {
            let rid = format!("r{r}");
            self.engine
                .put_restaurant(&rid, &rid, true, true, Lane::Online)
                .await
                .unwrap();
            let put = ItemPut {
                name: "meal".into(),
                price,
                stock,
                available: true,
                max_per_customer,
            };
            self.engine
                .put_item(&rid, "meal", &put, Lane::Online)
                .await
                .unwrap();
        }
    }

    /// `lunchrush ARGS` configured for this fixture's stack, provider
    /// simulator and partitions.
    pub fn lunchrush(&self, args: &[&str]) -> std::process::Command {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_lunchrush"));
        command
            .args(args)
            .env("LUNCHRUSH_REDIS_URL", self.stack.redis_url())
            .env("LUNCHRUSH_POSTGRES_URL", self.stack.postgres_url())
            .env("LUNCHRUSH_PSP_URL", &self.psp_url)
            .env("LUNCHRUSH_PARTITIONS", self.config.partitions.to_string());
        command
    }

    /// Sagas not yet at rest, over every partition.
    pub async fn unsettled(&self) -> u64 {
        self.engine.unsettled().await.unwrap()
    }

    /// Waits until nothing has changed in Redis for `quiet` by Redis's own
    /// clock: every stream's newest entry (each change emits one) is older.
    /// What a `--older-than` threshold needs before it sees the orphans.
    pub async fn wait_quiet(&self, quiet: std::time::Duration) {
        use fred::prelude::*;
        let deadline = std::time::Instant::now() + quiet * 10;
        loop {
            let now_ms = engine::store::server_time_ms(self.engine.redis())
                .await
                .unwrap();
            let mut newest = 0;
            for p in 0..self.config.partitions {
                for topic in engine::keys::Topic::ALL {
                    let stream = self.engine.keys().stream(p, topic);
                    let last: Vec<(String, Vec<(String, String)>)> = self
                        .engine
                        .redis()
                        .xrevrange(stream, "+", "-", Some(1))
                        .await
                        .unwrap();
                    if let Some((ms, _)) = last
                        .first()
                        .and_then(|(id, _)| engine::streams::parse_entry_id(id))
                    {
                        newest = newest.max(ms);
                    }
                }
            }
            if now_ms - newest >= quiet.as_millis() as i64 {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "Redis never went quiet for {quiet:?}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}
