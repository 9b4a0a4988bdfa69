//! `lunchrush serve`: one stateless engine process — the HTTP API plus the
//! saga workers — against an existing Redis, PostgreSQL and provider. Run as
//! many as the load needs; they share nothing but Redis and Postgres.

use std::net::SocketAddr;
use std::process::ExitCode;

use anyhow::Context;

use crate::args::EngineArgs;

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub engine: EngineArgs,
    /// API listen address.
    #[arg(long, env = "LUNCHRUSH_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// HS256 secret for API tokens (at least 32 bytes).
    #[arg(long, env = "LUNCHRUSH_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: String,
    /// Serve the API only; run no saga workers in this process.
    #[arg(long, env = "LUNCHRUSH_NO_WORKERS")]
    pub no_workers: bool,
    /// Take over saga events another (dead) process left pending this long.
    #[arg(long, env = "LUNCHRUSH_RECLAIM_IDLE", default_value = "30s", value_parser = humantime::parse_duration)]
    pub reclaim_idle: std::time::Duration,
    #[command(flatten)]
    pub admission: crate::args::AdmissionArgs,
    /// POST customer notifications to this URL (default: write them to the log).
    #[arg(long, env = "LUNCHRUSH_NOTIFY_WEBHOOK")]
    pub notify_webhook: Option<String>,
}

/// The notifier a process uses: the webhook if one is named, else the log.
pub fn notifier(webhook: Option<&str>) -> std::sync::Arc<dyn engine::notify::Notifier> {
    match webhook {
        Some(url) => std::sync::Arc::new(engine::notify::WebhookNotifier::new(url)),
        None => std::sync::Arc::new(engine::notify::LogNotifier),
    }
}

pub async fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let config = args.engine.config()?;
    api::auth::check_secret(&args.jwt_secret).map_err(anyhow::Error::msg)?;
    let limits = args.admission.limits()?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listen on {}", args.listen))?;
    let api_url = format!("http://{}", listener.local_addr()?);
    let setup = EngineSetup {
        config,
        jwt_secret: args.jwt_secret,
        limits,
        notifier: notifier(args.notify_webhook.as_deref()),
        workers: (!args.no_workers).then(|| worker_options(args.reclaim_idle)),
    };
    run_engine(
        setup,
        listener,
        move || println!("READY api={api_url}"),
        crate::shutdown::signal(),
    )
    .await?;
    Ok(ExitCode::SUCCESS)
}

/// This process's saga worker settings: a unique consumer name.
pub fn worker_options(reclaim_idle: std::time::Duration) -> engine::saga::WorkerOptions {
    engine::saga::WorkerOptions {
        reclaim_idle,
        ..engine::saga::WorkerOptions::new(engine::saga::consumer_name())
    }
}

/// What [`run_engine`] runs: the engine's settings, the API's secret and
/// admission limits, where notifications go, and the saga workers (none for
/// an API-only process).
pub struct EngineSetup {
    pub config: engine::Config,
    pub jwt_secret: String,
    pub limits: api::admission::Limits,
    pub notifier: std::sync::Arc<dyn engine::notify::Notifier>,
    pub workers: Option<engine::saga::WorkerOptions>,
}

/// Connects, checks Redis's settings, loads the scripts, creates the
/// consumer groups, starts the workers, calls `ready` and serves the API
/// until `shutdown`; then stops the workers (each finishes its batch) and
/// closes the connections. `ready` is not called when a step before it fails.
pub async fn run_engine(
    setup: EngineSetup,
    listener: tokio::net::TcpListener,
    ready: impl FnOnce() + Send + 'static,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let EngineSetup {
        config,
        jwt_secret,
        limits,
        notifier,
        workers,
    } = setup;
    let redis = engine::store::connect(&config).await?;
    engine::store::ensure_no_eviction(&redis).await?;
    engine::store::warn_unless_compact_hashes(&redis).await;
    let engine = engine::Engine::new(redis.clone(), config.clone())
        .await
        .context("load the Lua scripts")?;
    let roles = engine::saga::Role::ALL.map(|r| (r.group(), r.topics()));
    engine::saga::ensure_groups(&engine, &roles)
        .await
        .context("create the consumer groups")?;
    let psp = engine::psp::PspClient::with_options(&config.psp_url, config.psp.clone());
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let handles = match &workers {
        Some(options) => {
            engine::saga::spawn_workers(&engine, &psp, notifier.clone(), options, &stopped)
        }
        None => Vec::new(),
    };
    let mut state = api::AppState::new(
        engine,
        api::postgres_pool(&config.postgres_url)?,
        jwt_secret.as_bytes(),
        limits,
    )
    .with_provider(psp.clone(), notifier);
    let mut publisher = None;
    if workers.is_some() {
        state = state.with_breaker(psp.breaker().clone());
        publisher = Some(tokio::spawn(publish_circuit(
            redis.clone(),
            state.engine.keys().circuit(),
            psp.breaker().clone(),
        )));
    }
    let listen = listener.local_addr()?;
    tracing::info!(%listen, workers = workers.is_some(), partitions = config.partitions,
        "Engine serving.");
    ready();
    let served = api::serve(listener, state, shutdown).await;
    if let Some(publisher) = publisher {
        publisher.abort();
    }
    let _ = stop.send(true);
    // Each worker finishes its batch; but with Redis gone a batch never
    // finishes, and nothing unacknowledged is lost by leaving (another
    // process reclaims it): give up waiting after a while.
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        for handle in handles {
            let _ = handle.await;
        }
        let _ = fred::interfaces::ClientLike::quit(&redis).await;
    })
    .await;
    if drained.is_err() {
        tracing::warn!(grace = ?SHUTDOWN_GRACE, "Workers did not stop in time; leaving their pending events to be reclaimed.");
    }
    served
}

/// How often an open circuit is announced to the other processes, and how
/// long the announcement lasts (it lapses by itself once nobody renews it).
const CIRCUIT_ANNOUNCE_EVERY: std::time::Duration = std::time::Duration::from_secs(1);
const CIRCUIT_ANNOUNCE_TTL_MS: i64 = 3_000;

/// While this process's provider circuit is open, keeps `key` set in Redis
/// so that API-only processes (`--no-workers`) push back too.
async fn publish_circuit(
    redis: fred::prelude::Client,
    key: String,
    breaker: std::sync::Arc<engine::breaker::Breaker>,
) {
    use fred::prelude::KeysInterface;
    let mut tick = tokio::time::interval(CIRCUIT_ANNOUNCE_EVERY);
    loop {
        tick.tick().await;
        if !breaker.is_refusing() {
            continue;
        }
        let expire = Some(fred::types::Expiration::PX(CIRCUIT_ANNOUNCE_TTL_MS));
        let set: Result<(), _> = redis.set(&key, "open", expire, None, false).await;
        if let Err(error) = set {
            tracing::warn!(%error, "Cannot announce the open provider circuit.");
        }
    }
}

/// How long a stopping engine waits for its workers' batches.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(10);
