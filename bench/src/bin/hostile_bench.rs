//! `hostile-bench`: what a hostile client can cost one engine, measured.
//!
//! ```text
//! cargo run --release -p bench --bin hostile-bench -- --orders 2000 --connections 3000
//! ```
//!
//! Starts a local stack (Redis, PostgreSQL), the provider simulator and the
//! API with its saga workers in this process, then measures
//! 1. **Redis bytes per order** a customer token can leave behind: the
//!    `used_memory` growth per placed order (unpaid, so everything a
//!    placement writes: order hash, idempotency record, stream entries,
//!    in-flight index and timer entries, per-customer counts), and
//!    `MEMORY USAGE` of one order hash and one idempotency record;
//! 2. **a connection flood**: this process's resident memory with N idle
//!    connections open, and again once the head timeout closed them;
//! 3. **a deep body**: the time to refuse 64 KiB of `[` (nesting 65,536);
//! 4. **metric series**: `/metrics` before and after 2,000 made-up methods
//!    and 2,000 placements for made-up restaurants.
//!
//! It prints one block of figures (SECURITY.md quotes them); nothing is
//! asserted beyond the refusals being refusals.

use std::time::{Duration, Instant};

use clap::Parser;
use engine::domain::PlaceOrder;
use engine::engine::ItemPut;
use engine::keys::Lane;
use fred::prelude::*;
use futures::StreamExt;

/// The allocator `lunchrush` runs with: the flood's memory is the shipped
/// binary's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
struct Args {
    /// Orders placed for the bytes-per-order figure.
    #[arg(long, default_value_t = 2_000)]
    orders: usize,
    /// Idle connections opened in the flood.
    #[arg(long, default_value_t = 3_000)]
    connections: usize,
    /// The server's head timeout (how long the flood holds its connections).
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    header_read_timeout: Duration,
}

async fn used_memory(client: &Client) -> anyhow::Result<i64> {
    bench::redis_info_number(client, fred::types::InfoKind::Memory, "used_memory").await
}

/// This process's resident set, in MiB.
fn rss_mib() -> f64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: f64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    pages * 4096.0 / (1024.0 * 1024.0)
}

async fn memory_usage(client: &Client, key: &str) -> anyhow::Result<i64> {
    let value: Option<i64> = client
        .custom(
            fred::cmd!("MEMORY"),
            vec![
                "USAGE".to_string(),
                key.to_string(),
                "SAMPLES".into(),
                "0".into(),
            ],
        )
        .await?;
    Ok(value.unwrap_or(0))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // The runtime `lunchrush` builds: workers hand memory back as they park.
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .on_thread_park(api::heap::on_worker_park)
        .build()?
        .block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let stack = stack::LocalStack::temporary().await?;
    archiver::schema::migrate(&stack.postgres_url()).await?;
    let sim = stack::psp::PspSim::open(&stack.home().join("ledger.jsonl"), Default::default())?;
    let psp_url = sim.spawn_local().await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    let jwt_secret = "h".repeat(32);
    let config = engine::Config {
        redis_url: stack.redis_url(),
        postgres_url: stack.postgres_url(),
        psp_url,
        ..engine::Config::default()
    };
    config.validate()?;
    let client = engine::store::connect(&config).await?;
    let engine = engine::Engine::new(client.clone(), config.clone()).await?;
    let roles = engine::saga::Role::ALL.map(|r| (r.group(), r.topics()));
    engine::saga::ensure_groups(&engine, &roles).await?;
    engine
        .put_restaurant("r1", "Bench", true, true, Lane::Online)
        .await?;
    let put = ItemPut {
        name: "dish".into(),
        price: 9_000,
        stock: 10_000_000,
        available: true,
        max_per_customer: None,
    };
    engine.put_item("r1", "dish", &put, Lane::Online).await?;
    let limits = api::admission::Limits {
        header_read_timeout: args.header_read_timeout,
        connections_max: args.connections + 64,
        rate_per_sec: 1e6,
        burst: 1e6,
        ..api::admission::Limits::default()
    };
    let state = api::AppState::new(
        engine.clone(),
        api::postgres_pool(&config.postgres_url)?,
        jwt_secret.as_bytes(),
        limits,
    );
    tokio::spawn(api::serve(listener, state, std::future::pending()));

    // 1. Redis bytes per placed order (no workers: every order stays as placed).
    let before = used_memory(&client).await?;
    let placed: Vec<_> = futures::stream::iter(0..args.orders)
        .map(|i| {
            let engine = engine.clone();
            async move {
                let request = PlaceOrder::parse(
                    &format!("customer-{i:06}"),
                    "r1",
                    &[("dish".to_string(), 1)],
                    9_000,
                    &format!("01J0000000000000000000{i:06}"),
                )?;
                Ok::<_, anyhow::Error>(engine.place_order(&request).await?.order_id)
            }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    let ids: Vec<uuid::Uuid> = placed.into_iter().collect::<Result<_, _>>()?;
    let per_order = (used_memory(&client).await? - before) as f64 / args.orders as f64;
    let keys = engine.keys();
    let p = keys.partition_of_order(&ids[0]).unwrap_or(0);
    let order_hash = memory_usage(&client, &keys.order(p, &ids[0])).await?;
    // On a standalone Redis the customer's guard holds the key's answer.
    let idem = memory_usage(
        &client,
        &keys.idempotency_guard("customer-000000", "01J0000000000000000000000000"),
    )
    .await?;

    // 2. A connection flood: idle connections until the head timeout.
    let rss_before = rss_mib();
    let mut flood = Vec::with_capacity(args.connections);
    for _ in 0..args.connections {
        flood.push(tokio::net::TcpStream::connect(address).await?);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss_flooded = rss_mib();
    let started = Instant::now();
    let mut closed = 0;
    for stream in &mut flood {
        let mut byte = [0u8; 1];
        if let Ok(Ok(0)) = tokio::time::timeout(
            args.header_read_timeout * 3,
            tokio::io::AsyncReadExt::read(stream, &mut byte),
        )
        .await
        {
            closed += 1;
        }
    }
    let closed_after = started.elapsed();
    drop(flood);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_after = rss_mib();

    // 3. A deep body, refused before any parser recurses.
    let deep = vec![b'['; 64 * 1024];
    let token = api::auth::Keys::new(jwt_secret.as_bytes()).mint(
        api::auth::Role::Customer,
        "mallory",
        None,
        Duration::from_secs(60),
    )?;
    let http = reqwest::Client::new();
    let started = Instant::now();
    let rounds = 200;
    for i in 0..rounds {
        let reply = http
            .post(format!("http://{address}/v1/orders"))
            .bearer_auth(&token)
            .header("content-type", "application/json")
            .header("idempotency-key", format!("deep-{i}"))
            .body(deep.clone())
            .send()
            .await?;
        anyhow::ensure!(
            reply.status() == 400,
            "a deep body answered {}",
            reply.status()
        );
    }
    let deep_refusal = started.elapsed() / rounds;

    // 4. Odd methods and made-up restaurants: /metrics must not grow.
    // Series (sample lines) and bytes of /metrics.
    let scrape = async || -> anyhow::Result<(usize, usize)> {
        let text = http
            .get(format!("http://{address}/metrics"))
            .send()
            .await?
            .text()
            .await?;
        let series = text.lines().filter(|l| !l.starts_with('#')).count();
        if std::env::var_os("HOSTILE_BENCH_DUMP").is_some() {
            std::fs::write(format!("/tmp/metrics-{series}.txt"), &text)?;
        }
        Ok((series, text.len()))
    };
    let mut metrics_before = (0, 0);
    for i in 0..2_010 {
        // After ten rounds (and a round of the background gauges) every
        // series these requests can touch exists.
        if i == 10 {
            tokio::time::sleep(api::metrics::GATHER_INTERVAL * 2).await;
            scrape().await?; // the scrape's own series
            metrics_before = scrape().await?;
        }
        let method = reqwest::Method::from_bytes(format!("M{i}{}", "X".repeat(1_000)).as_bytes())?;
        http.request(method, format!("http://{address}/v1/orders"))
            .send()
            .await?;
        http.post(format!("http://{address}/v1/orders"))
            .bearer_auth(&token)
            .header("idempotency-key", format!("ghost-{i}"))
            .json(&serde_json::json!({"restaurant_id": format!("ghost-{i}"),
                "items": [{"item": "dish", "qty": 1}], "expected_total": 9_000}))
            .send()
            .await?;
    }
    let metrics_after = scrape().await?;

    println!(
        "hostile-bench: {} orders, {} idle connections",
        args.orders, args.connections
    );
    println!("  Redis bytes per placed order (used_memory)  {per_order:>10.0}");
    println!("  MEMORY USAGE of an order hash (1 line)      {order_hash:>10}");
    println!("  MEMORY USAGE of an idempotency record       {idem:>10}");
    println!("  engine RSS before the flood (MiB)           {rss_before:>10.1}");
    println!(
        "  engine RSS with the flood open (MiB)        {rss_flooded:>10.1}   ({:.1} KiB per connection)",
        (rss_flooded - rss_before) * 1024.0 / args.connections as f64
    );
    println!(
        "  connections closed by the head timeout      {closed:>10}   (all within {:.1} s)",
        closed_after.as_secs_f64()
    );
    println!("  engine RSS after the flood (MiB)            {rss_after:>10.1}");
    println!(
        "  time to refuse a 64 KiB deep body (µs)      {:>10}",
        deep_refusal.as_micros()
    );
    println!(
        "  /metrics series before / after 2,000 odd methods and made-up restaurants  {} / {}   ({} / {} bytes: counters' digits)",
        metrics_before.0, metrics_after.0, metrics_before.1, metrics_after.1
    );
    Ok(())
}
