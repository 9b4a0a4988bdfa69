//! `timer-bench`: 100,000 delayed tasks fire within a bounded lateness.
//!
//! ```text
//! cargo run --release -p bench --bin timer-bench -- --timers 100000 --spread 5s --claimers 2
//! ```
//!
//! Starts `--claimers` claimer loops (as that many engine processes would),
//! schedules `--timers` entries in the partitions' timer wheels, due
//! uniformly over `--spread` starting 2 s from now, waits until every timer
//! fired, then
//! reads every `TimerFired` event and prints lateness p50/p99/max (fired −
//! due, both Redis time) and timers fired per second. Nothing is asserted.

use std::time::{Duration, Instant};

use clap::Parser;
use fred::prelude::*;

#[derive(Debug, Parser)]
struct Args {
    #[arg(long, default_value_t = 100_000)]
    timers: usize,
    /// Due times spread uniformly over this window from now.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    spread: Duration,
    /// Claimer loops running at once (engine processes).
    #[arg(long, default_value_t = 2)]
    claimers: usize,
    /// Claim interval of each claimer.
    #[arg(long, default_value = "100ms", value_parser = humantime::parse_duration)]
    every: Duration,
    #[arg(long, default_value_t = 16)]
    partitions: u16,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let dir = tempfile::tempdir()?;
    let redis = bench::start_redis(dir.path())?;
    let config = engine::Config {
        redis_url: redis.url(),
        partitions: args.partitions,
        ..engine::Config::default()
    };
    let engine = bench::connect_engine(&config).await?;
    let now_ms = engine::store::server_time_ms(engine.redis()).await?;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut claimers = Vec::new();
    for _ in 0..args.claimers {
        let engine = bench::connect_engine(&config).await?;
        let options = engine::timers::ClaimerOptions {
            every: args.every,
            ..Default::default()
        };
        claimers.push(tokio::spawn(engine::timers::run_claimer(
            engine,
            options,
            stopped.clone(),
        )));
    }
    let spread_ms = args.spread.as_millis() as i64;
    let scheduling = Instant::now();
    let keys = engine.keys().clone();
    bench::run_concurrently(args.timers, 512, |i| {
        let (engine, keys) = (engine.clone(), keys.clone());
        async move {
            let p = (i % args.partitions as usize) as u16;
            // Due from 2 s on: scheduling 100,000 timers takes well under that.
            let due = now_ms + 2_000 + (i as i64 * spread_ms) / args.timers as i64;
            let member = format!("bench|{}", engine::ids::new_order_id(p));
            engine
                .redis()
                .zadd::<i64, _, _>(
                    keys.wheel(p),
                    None,
                    None,
                    false,
                    false,
                    (due as f64, member),
                )
                .await
        }
    })
    .await?;
    let scheduled_at = Instant::now();
    let scheduling = scheduling.elapsed();

    loop {
        let mut left = 0;
        for p in 0..args.partitions {
            left += engine.timers_scheduled(p).await?;
        }
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = scheduled_at.elapsed();
    let _ = stop.send(true);
    for claimer in claimers {
        let _ = claimer.await;
    }

    let mut lateness = Vec::with_capacity(args.timers);
    let (mut first_fired, mut last_fired) = (i64::MAX, i64::MIN);
    for p in 0..args.partitions {
        let entries: Vec<(String, std::collections::HashMap<String, String>)> = engine
            .redis()
            .xrange(keys.stream(p, engine::keys::Topic::Timers), "-", "+", None)
            .await?;
        for (_, fields) in entries {
            let data: serde_json::Value = serde_json::from_str(&fields["data"])?;
            let (due, fired) = (
                data["due"].as_i64().unwrap_or(0),
                data["fired"].as_i64().unwrap_or(0),
            );
            lateness.push((fired - due).max(0));
            first_fired = first_fired.min(fired);
            last_fired = last_fired.max(fired);
        }
    }
    anyhow::ensure!(
        lateness.len() == args.timers,
        "{} of {} fired",
        lateness.len(),
        args.timers
    );
    lateness.sort_unstable();
    let pct = |q: f64| lateness[((lateness.len() as f64 - 1.0) * q) as usize];
    let window_s = ((last_fired - first_fired).max(1)) as f64 / 1_000.0;
    println!(
        "timer-bench: {} timers due over {:?}, {} claimers every {:?}, {} partitions",
        args.timers, args.spread, args.claimers, args.every, args.partitions
    );
    println!(
        "  lateness p50 / p99 / max (ms)   {:>6} / {:>6} / {:>6}",
        pct(0.5),
        pct(0.99),
        lateness[lateness.len() - 1]
    );
    println!(
        "  timers fired per second         {:>10.0} (over the {window_s:.1} s they fell due in)",
        args.timers as f64 / window_s
    );
    println!("  fired exactly once              {:>10}", "yes");
    println!(
        "  scheduling took                 {scheduling:.1?} (all due 2 s or more after it began)"
    );
    println!("  wall time until the wheel was empty {:.1?}", elapsed);
    Ok(())
}
