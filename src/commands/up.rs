//! `lunchrush up`: the whole system on one machine with no configuration.
//!
//! Starts Redis and PostgreSQL from the installed binaries with their data
//! under `LUNCHRUSH_HOME`, applies the migrations, starts the provider
//! simulator (unless `LUNCHRUSH_PSP_URL` names a provider), the saga workers,
//! the archiver and the API, prints
//!
//! ```text
//! READY api=http://127.0.0.1:8080 redis=redis://127.0.0.1:41234 postgres=postgres://lunchrush@127.0.0.1:41235/lunchrush
//! ```
//!
//! writes the same (plus the JWT secret) as `LUNCHRUSH_*='value'` lines to
//! `$LUNCHRUSH_HOME/stack.env` — `set -a; . .lunchrush/stack.env` then
//! configures every other subcommand — and serves until Ctrl-C or SIGTERM.
//! A second `up` on the same home reuses the data, the secret and, while
//! they are free, the ports.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use stack::{AppendFsync, LocalStack, RedisMode, StackOptions};

/// The API's port when nothing else is asked for and it is free.
const API_PORT_DEFAULT: u16 = 8080;

#[derive(Debug, clap::Args)]
pub struct UpArgs {
    /// Where Redis and PostgreSQL keep their data, and where stack.env goes.
    #[arg(long, env = "LUNCHRUSH_HOME", default_value = ".lunchrush")]
    pub home: PathBuf,
    /// API listen address; default 127.0.0.1:8080, or a free port if taken.
    #[arg(long, env = "LUNCHRUSH_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Redis AOF fsync policy: always (the default: Redis fsyncs before it
    /// replies, nothing acknowledged is lost), everysec (a crash may lose up
    /// to ~2 s of acknowledged writes), no.
    #[arg(long, env = "LUNCHRUSH_APPENDFSYNC", default_value = "always", value_parser = AppendFsync::parse)]
    pub appendfsync: AppendFsync,
    /// Start a Redis Cluster with this many masters instead of one server.
    #[arg(long, env = "LUNCHRUSH_CLUSTER_MASTERS")]
    pub cluster_masters: Option<usize>,
    /// Redis's maxmemory (e.g. 8gb; a Cluster's is split between its
    /// masters). Default: half the machine's memory, leaving room for the
    /// AOF rewrite's copy-on-write and PostgreSQL. New orders are refused
    /// before it is reached (docs/operations.md).
    #[arg(long, env = "LUNCHRUSH_REDIS_MAXMEMORY", value_parser = engine::budget::parse_bytes)]
    pub redis_maxmemory: Option<u64>,
    /// HS256 secret for API tokens; generated (and kept in stack.env) when unset.
    #[arg(long, env = "LUNCHRUSH_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// Use this payment provider instead of starting the simulator.
    #[arg(long, env = "LUNCHRUSH_PSP_URL")]
    pub psp_url: Option<String>,
    #[command(flatten)]
    pub faults: crate::args::FaultArgs,
    #[command(flatten)]
    pub tuning: crate::args::TuningArgs,
    #[command(flatten)]
    pub admission: crate::args::AdmissionArgs,
    /// POST customer notifications to this URL (default: write them to the log).
    #[arg(long, env = "LUNCHRUSH_NOTIFY_WEBHOOK")]
    pub notify_webhook: Option<String>,
}

pub async fn run(args: UpArgs) -> anyhow::Result<ExitCode> {
    // Before READY is printed: a SIGTERM right after it stops us cleanly.
    let stop = crate::shutdown::signal();
    let running = start(args).await?;
    stop.await;
    running.stop().await?;
    Ok(ExitCode::SUCCESS)
}

/// The whole system running in this process (see [`start`]).
pub struct Running {
    pub api_url: String,
    pub config: engine::Config,
    /// The secret the API verifies tokens with (generated once per home).
    pub jwt_secret: String,
    stop: tokio::sync::watch::Sender<bool>,
    engine_task: tokio::task::JoinHandle<anyhow::Result<()>>,
    archiver_task: tokio::task::JoinHandle<anyhow::Result<()>>,
    stack: LocalStack,
}

impl Running {
    /// Stops the API and workers (requests in flight finish), the
    /// archiver, then Redis and PostgreSQL.
    pub async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(true);
        let served = self.engine_task.await.context("the engine task")?;
        if let Ok(Err(error)) = self.archiver_task.await {
            tracing::error!(%error, "The archiver stopped with an error.");
        }
        tracing::info!("Stopping the local stack.");
        let _ = std::fs::remove_file(super::down::pid_file(self.stack.home()));
        drop(self.stack);
        served
    }
}

/// The local servers under `home`, on the ports of the previous run when
/// they are free, with the migrations applied.
async fn start_stack(
    args: &UpArgs,
    home: &std::path::Path,
    previous: &HashMap<String, String>,
) -> anyhow::Result<LocalStack> {
    let previous_port = |key: &str| previous.get(key).and_then(|url| port_of(url));
    let mut options = StackOptions::durable(home);
    options.appendfsync = args.appendfsync;
    options.redis = match args.cluster_masters {
        Some(masters) if masters >= 1 => RedisMode::Cluster { masters },
        Some(_) => anyhow::bail!("--cluster-masters must be at least 1"),
        None => RedisMode::Standalone,
    };
    let maxmemory = match args.redis_maxmemory {
        Some(bytes) => bytes,
        None => default_maxmemory().context("read the machine's memory (/proc/meminfo)")?,
    };
    anyhow::ensure!(
        maxmemory >= MAXMEMORY_MIN,
        "--redis-maxmemory {maxmemory} is below {MAXMEMORY_MIN} bytes: Redis could not hold a lunch peak's orders in flight"
    );
    let nodes = args.cluster_masters.unwrap_or(1).max(1) as u64;
    options.redis_maxmemory = Some(maxmemory / nodes);
    options.redis_port = previous_port("LUNCHRUSH_REDIS_URL");
    options.postgres_port = previous_port("LUNCHRUSH_POSTGRES_URL");
    let stack = LocalStack::start(options)
        .await
        .context("start the local stack")?;
    archiver::schema::migrate(&stack.postgres_url())
        .await
        .context("apply the migrations")?;
    Ok(stack)
}

/// The smallest `--redis-maxmemory` `up` accepts.
const MAXMEMORY_MIN: u64 = 64 << 20;

/// Half of the machine's memory (`MemTotal`): Redis's default limit.
fn default_maxmemory() -> anyhow::Result<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo")?;
    let kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no MemTotal line")?;
    Ok(kib * 1024 / 2)
}

/// Starts the local stack, the simulator, the archiver, the workers and the
/// API, writes stack.env and prints the READY line.
pub async fn start(args: UpArgs) -> anyhow::Result<Running> {
    std::fs::create_dir_all(&args.home)
        .with_context(|| format!("create {}", args.home.display()))?;
    let home = std::fs::canonicalize(&args.home)?;
    let previous = read_env_file(&home.join("stack.env"));
    let stack = start_stack(&args, &home, &previous).await?;
    // `lunchrush down` finds this process here (a failed start removes it).
    let pid_file = super::down::pid_file(&home);
    std::fs::write(&pid_file, format!("{}\n", std::process::id()))
        .with_context(|| format!("write {}", pid_file.display()))?;
    let running = start_on(args, &home, &previous, stack).await;
    if running.is_err() {
        let _ = std::fs::remove_file(&pid_file);
    }
    running
}

/// Starts the simulator, the archiver, the workers and the API on the local
/// `stack`, writes stack.env and prints READY once the engine is ready;
/// on failure stops what it started (the stack with it).
async fn start_on(
    args: UpArgs,
    home: &Path,
    previous: &HashMap<String, String>,
    stack: LocalStack,
) -> anyhow::Result<Running> {
    let previous_port = |key: &str| previous.get(key).and_then(|url| port_of(url));
    let jwt_secret = args
        .jwt_secret
        .or_else(|| previous.get("LUNCHRUSH_JWT_SECRET").cloned())
        .unwrap_or_else(generate_secret);
    api::auth::check_secret(&jwt_secret).map_err(anyhow::Error::msg)?;
    let listener = bind_api(args.listen, previous_port("LUNCHRUSH_API_URL")).await?;
    let listen = listener.local_addr()?;
    let psp_url = match args.psp_url {
        Some(url) => url,
        None => start_simulator(home, &args.faults, previous_port("LUNCHRUSH_PSP_URL")).await?,
    };
    let config = args
        .tuning
        .config(stack.redis_url(), stack.postgres_url(), psp_url)?;

    let limits = args.admission.limits()?;
    let api_url = format!("http://{listen}");
    write_stack_env(home, &api_url, listen, &jwt_secret, &config)?;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let archiver_task = tokio::spawn(super::archive::start(
        config.clone(),
        archiver::ArchiverOptions::new(super::archive::default_consumer()),
        stopped.clone(),
    ));
    let setup = super::serve::EngineSetup {
        config: config.clone(),
        jwt_secret: jwt_secret.clone(),
        limits,
        notifier: super::serve::notifier(args.notify_webhook.as_deref()),
        workers: Some(engine::saga::WorkerOptions::new(
            engine::saga::consumer_name(),
        )),
    };
    let engine_task = match start_engine(setup, listener, stopped).await {
        Ok(task) => task,
        Err(error) => {
            // The archiver stops before the stack it reads goes.
            let _ = stop.send(true);
            let _ = archiver_task.await;
            return Err(error);
        }
    };
    println!(
        "READY api={api_url} redis={} postgres={}",
        config.redis_url, config.postgres_url
    );
    tracing::info!(home = %home.display(), "Local stack is up; Ctrl-C stops it.");
    Ok(Running {
        api_url,
        config,
        jwt_secret,
        stop,
        engine_task,
        archiver_task,
        stack,
    })
}

/// Runs the engine (API and workers) until `stopped` turns true; returns
/// once it is ready to serve, or with the reason it could not start (an
/// evicting Redis, scripts that do not load).
async fn start_engine(
    setup: super::serve::EngineSetup,
    listener: tokio::net::TcpListener,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<tokio::task::JoinHandle<anyhow::Result<()>>> {
    let (ready, engine_ready) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(super::serve::run_engine(
        setup,
        listener,
        move || {
            let _ = ready.send(());
        },
        async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        },
    ));
    if engine_ready.await.is_ok() {
        return Ok(task);
    }
    Err(match task.await {
        Ok(Err(error)) => error,
        Ok(Ok(())) => anyhow::anyhow!("the engine stopped before it was ready"),
        Err(panic) => anyhow::Error::new(panic).context("the engine task"),
    })
}

/// The provider simulator over its ledger in the home, on its previous port
/// if free; returns its URL.
async fn start_simulator(
    home: &Path,
    faults: &crate::args::FaultArgs,
    previous_port: Option<u16>,
) -> anyhow::Result<String> {
    let ledger = home.join("psp/ledger.jsonl");
    let sim = stack::psp::PspSim::open(&ledger, faults.faults())
        .context("open the provider simulator's ledger")?;
    let psp = match tokio::net::TcpListener::bind(("127.0.0.1", previous_port.unwrap_or(0))).await {
        Ok(listener) => listener,
        Err(_) => tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?,
    };
    let url = format!("http://{}", psp.local_addr()?);
    tokio::spawn(sim.serve(psp, std::future::pending()));
    Ok(url)
}

/// `stack.env`: every value another command needs to reach this stack.
fn write_stack_env(
    home: &Path,
    api_url: &str,
    listen: SocketAddr,
    jwt_secret: &str,
    config: &engine::Config,
) -> anyhow::Result<()> {
    write_env_file(
        &home.join("stack.env"),
        &[
            ("LUNCHRUSH_API_URL", api_url),
            ("LUNCHRUSH_LISTEN", &listen.to_string()),
            ("LUNCHRUSH_REDIS_URL", &config.redis_url),
            ("LUNCHRUSH_POSTGRES_URL", &config.postgres_url),
            ("LUNCHRUSH_PSP_URL", &config.psp_url),
            ("LUNCHRUSH_PARTITIONS", &config.partitions.to_string()),
            ("LUNCHRUSH_KEY_PREFIX", &config.key_prefix),
            ("LUNCHRUSH_JWT_SECRET", jwt_secret),
            ("LUNCHRUSH_HOME", &home.to_string_lossy()),
        ],
    )
}

/// Binds the API: the asked address, else the previous port, else 8080, else any.
async fn bind_api(
    listen: Option<SocketAddr>,
    previous: Option<u16>,
) -> anyhow::Result<tokio::net::TcpListener> {
    if let Some(address) = listen {
        return tokio::net::TcpListener::bind(address)
            .await
            .with_context(|| format!("listen on {address}"));
    }
    for port in previous.into_iter().chain([API_PORT_DEFAULT, 0]) {
        if let Ok(listener) = tokio::net::TcpListener::bind(("127.0.0.1", port)).await {
            return Ok(listener);
        }
    }
    anyhow::bail!("no loopback port is free for the API")
}

fn generate_secret() -> String {
    use std::io::Read;
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .expect("read /dev/urandom");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `KEY=value` lines, the value bare or single-quoted as a shell writes it
/// (`'it'\''s'`); missing file or malformed lines yield nothing.
pub fn read_env_file(path: &Path) -> HashMap<String, String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.split_once('='))
        .map(|(key, value)| (key.trim().to_string(), shell_unquote(value.trim())))
        .collect()
}

/// A value single-quoted for a POSIX shell: sourcing the file gives back
/// exactly `value`, whatever it holds (`&`, `?`, spaces).
fn shell_quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', r"'\''"))
}

/// The inverse of [`shell_quote`]; a bare value is taken as it is.
fn shell_unquote(value: &str) -> String {
    match value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')) {
        Some(inner) => inner.replace(r"'\''", "'"),
        None => value.to_string(),
    }
}

/// Writes `KEY=value` lines, readable by the owner only (it holds the secret).
fn write_env_file(path: &Path, pairs: &[(&str, &str)]) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("write {}", path.display()))?;
    for (key, value) in pairs {
        writeln!(file, "{key}={}", shell_quote(value))?;
    }
    Ok(())
}

/// The port of `scheme://[user@]host:port[/…]`.
fn port_of(url: &str) -> Option<u16> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split(['/', '?']).next()?;
    let host_port = authority.rsplit('@').next()?;
    host_port.rsplit_once(':')?.1.parse().ok()
}
