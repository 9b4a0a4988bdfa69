//! `archive-bench`: archived events/s against the physical limit, a plain
//! binary COPY of the same rows into a table with the same columns and
//! unique indexes.
//!
//! ```text
//! cargo run --release -p bench --bin archive-bench -- --orders 40000
//! ```
//!
//! Starts Redis and a durable PostgreSQL (fsync on, as `lunchrush up` runs
//! it), writes `--orders` × 6 saga events straight into the partition
//! streams, times the archiver draining them (COPY into staging, INSERT …
//! ON CONFLICT DO NOTHING, projections refolded, watermarks, XACK) and
//! the CPU every `postgres` process spent meanwhile, then times `COPY …
//! FROM STDIN BINARY` of the same rows. Prints both, the ratio and
//! PostgreSQL's CPU per order archived; nothing is asserted.

use std::time::{Duration, Instant};

use clap::Parser;
use engine::events::EventKind;
use fred::prelude::*;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::ToSql;

#[derive(Debug, Parser)]
struct Args {
    /// Orders; each gets a sale's events and its dispatch (placed, captured, approved, dispatched).
    #[arg(long, default_value_t = 40_000)]
    orders: usize,
    #[arg(long, default_value_t = 16)]
    partitions: u16,
    /// Archiver batch size.
    #[arg(long, default_value_t = 1_000)]
    batch: u64,
}

/// A sale's events (placed, then captured and approved in one), then its
/// dispatch.
const KINDS: [EventKind; 3] = [
    EventKind::OrderPlaced,
    EventKind::PaymentCaptured,
    EventKind::OrderDispatched,
];

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let home = tempfile::tempdir()?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(home.path(), std::fs::Permissions::from_mode(0o755))?;
    }
    let stack = stack::LocalStack::start(stack::StackOptions::durable(home.path())).await?;
    archiver::schema::migrate(&stack.postgres_url()).await?;
    let config = engine::Config {
        redis_url: stack.redis_url(),
        postgres_url: stack.postgres_url(),
        partitions: args.partitions,
        ..engine::Config::default()
    };
    let engine = bench::connect_engine(&config).await?;
    let pool = api::postgres_pool(&config.postgres_url)?;
    let mut options = archiver::ArchiverOptions::new("bench");
    options.batch_size = args.batch;
    let archiver = archiver::Archiver::new(engine.clone(), pool.clone(), options);
    archiver.prepare().await?;

    // Events straight into the streams, as the scripts would write them.
    let keys = engine.keys().clone();
    bench::run_concurrently(args.orders, 256, |i| {
        let (engine, keys) = (engine.clone(), keys.clone());
        async move {
            let p = (i % args.partitions as usize) as u16;
            let order = engine::ids::new_order_id(p).to_string();
            let saga = engine::ids::new_saga_id().to_string();
            for (seq, kind) in KINDS.iter().enumerate() {
                let topic = kind.topic();
                let data = match kind {
                    EventKind::OrderPlaced => format!(
                        r#"{{"c":"c{i}","r":"r{}","t":12000,"l":[["dish",1,12000]],"a":true}}"#,
                        i % 64
                    ),
                    EventKind::PaymentCaptured => {
                        r#"{"ref":"psp_1","amount":12000,"sale":true,"approved":true}"#.to_string()
                    }
                    _ => r#"{"by":"restaurant"}"#.to_string(),
                };
                let _: String = engine
                    .redis()
                    .xadd(
                        keys.stream(p, topic),
                        false,
                        None,
                        "*",
                        vec![
                            ("v", "1".to_string()),
                            ("type", kind.to_string()),
                            ("order", order.clone()),
                            ("saga", saga.clone()),
                            ("seq", (seq + 1).to_string()),
                            ("ts", "1764000000000".to_string()),
                            ("data", data),
                        ],
                    )
                    .await?;
            }
            Ok::<_, fred::error::Error>(())
        }
    })
    .await?;
    let events = args.orders * KINDS.len();

    let started = Instant::now();
    let postgres_cpu = bench::postgres_cpu_seconds();
    let archived = archiver.drain().await?;
    let archive_time = started.elapsed();
    let postgres_cpu = bench::postgres_cpu_seconds() - postgres_cpu;
    anyhow::ensure!(
        archived as usize == events,
        "archived {archived} of {events}"
    );

    // The limit: the same rows, one binary COPY, same columns and unique indexes.
    let client = pool.get().await?;
    client
        .batch_execute(
            "CREATE TABLE bench_copy (LIKE saga_events INCLUDING DEFAULTS); \
             ALTER TABLE bench_copy ADD PRIMARY KEY (stream, entry_id, part_time); \
             ALTER TABLE bench_copy ADD UNIQUE (order_id, seq, part_time);",
        )
        .await?;
    let rows = client
        .query(
            "SELECT stream, entry_id, entry_ms, entry_seq, order_id, saga_id, seq, type, schema_version, \
             payload, event_time, part_time FROM saga_events",
            &[],
        )
        .await?;
    let types = archiver::SAGA_EVENT_TYPES;
    let started = Instant::now();
    let sink = client
        .copy_in(
            "COPY bench_copy (stream, entry_id, entry_ms, entry_seq, order_id, saga_id, seq, type, \
             schema_version, payload, event_time, part_time) FROM STDIN BINARY",
        )
        .await?;
    let writer = BinaryCopyInWriter::new(sink, &types);
    futures::pin_mut!(writer);
    for row in &rows {
        let values: Vec<Box<dyn ToSql + Sync + Send>> = vec![
            Box::new(row.get::<_, String>(0)),
            Box::new(row.get::<_, String>(1)),
            Box::new(row.get::<_, i64>(2)),
            Box::new(row.get::<_, i64>(3)),
            Box::new(row.get::<_, Option<uuid::Uuid>>(4)),
            Box::new(row.get::<_, Option<uuid::Uuid>>(5)),
            Box::new(row.get::<_, i64>(6)),
            Box::new(row.get::<_, String>(7)),
            Box::new(row.get::<_, i32>(8)),
            Box::new(row.get::<_, tokio_postgres::types::Json<serde_json::Value>>(9)),
            Box::new(row.get::<_, std::time::SystemTime>(10)),
            Box::new(row.get::<_, std::time::SystemTime>(11)),
        ];
        let refs: Vec<&(dyn ToSql + Sync)> = values
            .iter()
            .map(|v| v.as_ref() as &(dyn ToSql + Sync))
            .collect();
        writer.as_mut().write(&refs).await?;
    }
    writer.finish().await?;
    let copy_time = started.elapsed();

    let rate = |d: Duration| events as f64 / d.as_secs_f64();
    println!(
        "archive-bench: {} events ({} orders x {}), {} partitions, batch {}, durable PostgreSQL",
        events,
        args.orders,
        KINDS.len(),
        args.partitions,
        args.batch
    );
    println!(
        "  archiver (streams -> saga_events + projections, XACK) {:>10.0} events/s",
        rate(archive_time)
    );
    println!(
        "  PostgreSQL CPU per order archived ({} events)         {:>10.1} µs",
        KINDS.len(),
        postgres_cpu * 1e6 / args.orders as f64
    );
    println!(
        "  plain binary COPY of the same rows (the limit)        {:>10.0} events/s",
        rate(copy_time)
    );
    println!(
        "  archiver / limit                                      {:>10.2}",
        copy_time.as_secs_f64() / archive_time.as_secs_f64()
    );
    Ok(())
}
