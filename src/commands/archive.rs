//! `lunchrush archive`: drains every stream into PostgreSQL, exactly once,
//! and trims what is archived and acknowledged. Run one or more; each
//! partition is archived by one task per process.

use std::process::ExitCode;

use anyhow::Context;

use crate::args::EngineArgs;

#[derive(Debug, clap::Args)]
pub struct ArchiveArgs {
    #[command(flatten)]
    pub engine: EngineArgs,
    /// Consumer name; keep it stable across restarts (default: archiver@<host>).
    #[arg(long, env = "LUNCHRUSH_ARCHIVER_CONSUMER")]
    pub consumer: Option<String>,
    /// Entries per batch (one transaction each).
    #[arg(long, env = "LUNCHRUSH_ARCHIVE_BATCH", default_value_t = 1_000)]
    pub batch_size: u64,
    /// Batches written to PostgreSQL at once.
    #[arg(long, env = "LUNCHRUSH_ARCHIVE_BATCHES_IN_FLIGHT", default_value_t = 4)]
    pub batches_in_flight: usize,
    /// While draining a backlog (an outage's), the share of the time each
    /// reader works, leaving the rest to live traffic (1: full speed).
    #[arg(long, env = "LUNCHRUSH_ARCHIVE_CATCH_UP_SHARE", default_value_t = 0.5)]
    pub catch_up_share: f64,
}

/// The default consumer name: stable per host.
pub fn default_consumer() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "host".into());
    format!("archiver@{host}")
}

pub async fn run(args: ArchiveArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(args.batch_size >= 1, "--batch-size must be at least 1");
    anyhow::ensure!(
        args.batches_in_flight >= 1,
        "--batches-in-flight must be at least 1"
    );
    let config = args.engine.config()?;
    let mut options =
        archiver::ArchiverOptions::new(args.consumer.unwrap_or_else(default_consumer));
    options.batch_size = args.batch_size;
    options.batches_in_flight_max = args.batches_in_flight;
    anyhow::ensure!(
        args.catch_up_share > 0.0 && args.catch_up_share <= 1.0,
        "--catch-up-share must be in (0, 1]"
    );
    options.catch_up_share = args.catch_up_share;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut task = tokio::spawn(start(config, options, stopped));
    tokio::select! {
        _ = crate::shutdown::signal() => {
            let _ = stop.send(true);
            (&mut task).await.context("the archiver task")??;
        }
        done = &mut task => done.context("the archiver task")??,
    }
    Ok(ExitCode::SUCCESS)
}

/// Migrates, connects, prepares (groups, tail check) and archives until
/// `shutdown` turns true.
pub async fn start(
    config: engine::Config,
    options: archiver::ArchiverOptions,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    archiver::schema::migrate(&config.postgres_url).await?;
    let redis = engine::store::connect(&config).await?;
    engine::store::ensure_no_eviction(&redis).await?;
    let engine = engine::Engine::new(redis, config.clone()).await?;
    let pool = api::postgres_pool(&config.postgres_url)?;
    let archiver = archiver::Archiver::new(engine, pool, options);
    let lost = archiver.prepare().await.context("prepare the archiver")?;
    if !lost.is_empty() {
        tracing::error!(streams = ?lost, "Streams lost a tail; run `lunchrush reconcile`.");
    }
    tracing::info!(partitions = config.partitions, "Archiver running.");
    archiver.run(shutdown).await;
    Ok(())
}
