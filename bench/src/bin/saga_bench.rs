//! `saga-bench`: the saga core's micro-benchmark against a local Redis.
//!
//! ```text
//! cargo run --release -p bench --bin saga-bench -- --orders 20000 --concurrency 256
//! ```
//!
//! Starts its own redis-server (AOF everysec, as `lunchrush up` does) and the
//! provider simulator in-process, then measures
//! 1. **placements/s**: `place_order` alone (no workers running), and
//! 2. **full sagas/s**: the same number of orders placed with the payment and
//!    restaurant workers running, from the first placement until every saga
//!    is settled (authorized, approved, captured),
//!
//! and counts Redis commands per order (`INFO stats`,
//! `total_commands_processed`) for each phase. It prints one block of
//! figures; nothing is asserted.

use std::time::{Duration, Instant};

use clap::Parser;
use engine::domain::PlaceOrder;
use engine::engine::ItemPut;
use engine::keys::Lane;
use fred::prelude::*;
use futures::StreamExt;

/// The allocator `lunchrush` runs with, so the engine is measured as it runs.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
struct Args {
    /// Orders per phase.
    #[arg(long, default_value_t = 20_000)]
    orders: usize,
    /// Placements in flight at once.
    #[arg(long, default_value_t = 256)]
    concurrency: usize,
    /// Restaurants the orders spread over (uniformly).
    #[arg(long, default_value_t = 64)]
    restaurants: usize,
    /// Partitions.
    #[arg(long, default_value_t = 16)]
    partitions: u16,
}

async fn commands_processed(client: &Client) -> anyhow::Result<u64> {
    let stats = fred::types::InfoKind::Stats;
    Ok(bench::redis_info_number(client, stats, "total_commands_processed").await? as u64)
}

async fn place_all(engine: &engine::Engine, args: &Args, phase: &str) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let results: Vec<_> = futures::stream::iter(0..args.orders)
        .map(|i| {
            let restaurant = format!("r{}", i % args.restaurants);
            let request = PlaceOrder::parse(
                &format!("c{i}"),
                &restaurant,
                &[("dish".to_string(), 1), ("drink".to_string(), 2)],
                12_000 + 2 * 2_000,
                &format!("{phase}-{i}"),
            );
            async move {
                engine
                    .place_order(&request?)
                    .await
                    .map_err(anyhow::Error::from)
            }
        })
        .buffer_unordered(args.concurrency)
        .collect()
        .await;
    let elapsed = started.elapsed();
    let failed = results.iter().filter(|r| r.is_err()).count();
    anyhow::ensure!(
        failed == 0,
        "{failed} placements failed: {:?}",
        results.iter().find(|r| r.is_err())
    );
    Ok(elapsed)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let dir = tempfile::tempdir()?;
    let redis = bench::start_redis(dir.path())?;
    let sim = stack::psp::PspSim::open(&dir.path().join("ledger.jsonl"), Default::default())?;
    let psp_url = sim.spawn_local().await?;
    let config = engine::Config {
        redis_url: redis.url(),
        psp_url: psp_url.clone(),
        partitions: args.partitions,
        ..engine::Config::default()
    };
    config.validate()?;
    let client = engine::store::connect(&config).await?;
    let engine = engine::Engine::new(client.clone(), config).await?;
    let roles = engine::saga::Role::ALL.map(|r| (r.group(), r.topics()));
    engine::saga::ensure_groups(&engine, &roles).await?;
    let stock = (args.orders * 3) as i64;
    for r in 0..args.restaurants {
        let rid = format!("r{r}");
        engine
            .put_restaurant(&rid, &rid, true, true, Lane::Online)
            .await?;
        for (item, price) in [("dish", 12_000), ("drink", 2_000)] {
            let put = ItemPut {
                name: item.into(),
                price,
                stock,
                available: true,
                max_per_customer: None,
            };
            engine.put_item(&rid, item, &put, Lane::Online).await?;
        }
    }

    // Phase 1: placement alone.
    let before = commands_processed(&client).await?;
    let placing = place_all(&engine, &args, "p").await?;
    let placement_ops = commands_processed(&client).await? - before;

    // Phase 2: full sagas, workers running.
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let psp = engine::psp::PspClient::new(&psp_url);
    let options = engine::saga::WorkerOptions::new("bench");
    // Drain phase 1's sagas first so phase 2 measures only its own.
    let handles = engine::saga::spawn_workers(
        &engine,
        &psp,
        std::sync::Arc::new(engine::notify::LogNotifier),
        &options,
        &stopped,
    );
    while engine.unsettled().await? > 0 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let before = commands_processed(&client).await?;
    let mix_before = bench::command_calls(&client).await?;
    let redis_pid = redis.pid().unwrap_or(0);
    let cpu_before = (
        bench::cpu_seconds(redis_pid),
        bench::cpu_seconds(std::process::id()),
    );
    let started = Instant::now();
    place_all(&engine, &args, "s").await?;
    while engine.unsettled().await? > 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let saga_time = started.elapsed();
    let cpu_redis = bench::cpu_seconds(redis_pid) - cpu_before.0;
    let cpu_rest = bench::cpu_seconds(std::process::id()) - cpu_before.1;
    let saga_ops = commands_processed(&client).await? - before;
    let mix = bench::command_mix(
        &mix_before,
        &bench::command_calls(&client).await?,
        args.orders as f64,
    );
    let _ = stop.send(true);
    for handle in handles {
        let _ = handle.await;
    }
    let report = engine::check::check(&engine, true).await?;

    let n = args.orders as f64;
    println!(
        "saga-bench: {} orders per phase, {} in flight, {} restaurants, {} partitions, 2 lines per order",
        args.orders, args.concurrency, args.restaurants, args.partitions
    );
    println!(
        "  placements/s (place_order only)   {:>10.0}",
        n / placing.as_secs_f64()
    );
    println!(
        "  redis commands per placement      {:>10.1}",
        placement_ops as f64 / n
    );
    println!(
        "  full sagas/s (placed -> captured) {:>10.0}",
        n / saga_time.as_secs_f64()
    );
    println!(
        "  redis commands per full saga      {:>10.1}",
        saga_ops as f64 / n
    );
    println!("  per saga: {mix}");
    println!(
        "  redis-server CPU µs per saga      {:>10.0}",
        cpu_redis * 1e6 / n
    );
    println!(
        "  this process CPU µs per saga      {:>10.0}   (engine, workers, provider simulator, load)",
        cpu_rest * 1e6 / n
    );
    println!(
        "  one Redis's ceiling (sagas/s)     {:>10.0}   (1 s / Redis CPU per saga)",
        n / cpu_redis.max(1e-9)
    );
    println!(
        "  checker                           {:>10}",
        if report.passed() { "PASS" } else { "FAIL" }
    );
    anyhow::ensure!(report.passed(), "{report}");
    Ok(())
}
