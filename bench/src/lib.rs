//! Shared pieces of the benchmark and chaos tools.

pub mod wire;

/// One line naming the machine a report was measured on: cores, CPU model,
/// memory.
pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpu
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|m| m.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_default();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let memory_kib: u64 = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    format!(
        "{cores} cores ({model}), {:.1} GiB memory",
        memory_kib as f64 / (1024.0 * 1024.0)
    )
}

/// User + system CPU seconds process `pid` has used so far (0 when it is gone).
pub fn cpu_seconds(pid: u32) -> f64 {
    stat_seconds(pid, &[11, 12])
}

/// [`cpu_seconds`] plus the CPU of its children that exited and were
/// waited for (`cutime`, `cstime`): a server that forks a process per
/// connection (PostgreSQL) keeps the CPU of the ones gone.
pub fn cpu_seconds_with_exited_children(pid: u32) -> f64 {
    stat_seconds(pid, &[11, 12, 13, 14])
}

/// CPU seconds of every `postgres` process (the server, its backends,
/// autovacuum workers), with the CPU of the ones gone, which the
/// postmaster waited for (its children's time).
pub fn postgres_cpu_seconds() -> f64 {
    postgres_pids()
        .into_iter()
        .map(cpu_seconds_with_exited_children)
        .sum()
}

/// Every pid whose command is `postgres` (the server and its backends).
fn postgres_pids() -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if comm.trim() == "postgres" {
            pids.push(pid);
        }
    }
    pids
}

/// The sum of `/proc/<pid>/stat` clock-tick fields, counted after ") ".
fn stat_seconds(pid: u32, after_name: &[usize]) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at ") ".
    let fields: Vec<&str> = stat
        .rsplit_once(") ")
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after ") "
    // (indexes 11 and 12); cutime and cstime follow.
    let ticks: u64 = after_name
        .iter()
        .filter_map(|&i| fields.get(i).and_then(|v| v.parse::<u64>().ok()))
        .sum();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    ticks as f64 / hz
}

/// An engine on `config`, over a connection of its own.
/// The `lunchrush` binary a bench runs: `given`, else the one next to the
/// running bench (both built by `scripts/dev build`); an error naming it
/// when it is not there.
pub fn lunchrush_binary(given: Option<&std::path::Path>) -> anyhow::Result<std::path::PathBuf> {
    use anyhow::Context;
    let bin = match given {
        Some(path) => path.to_path_buf(),
        None => std::env::current_exe()?
            .parent()
            .context("this binary's directory")?
            .join("lunchrush"),
    };
    anyhow::ensure!(
        bin.exists(),
        "{} not found: build it (cargo build --release --bin lunchrush) or pass --lunchrush",
        bin.display()
    );
    Ok(bin)
}

pub async fn connect_engine(config: &engine::Config) -> anyhow::Result<engine::Engine> {
    let client = engine::store::connect(config).await?;
    Ok(engine::Engine::new(client, config.clone()).await?)
}

/// A standalone redis-server under `dir/redis` (`appendfsync everysec`) on
/// a free port.
pub fn start_redis(dir: &std::path::Path) -> anyhow::Result<stack::RedisServer> {
    Ok(stack::RedisServer::start(stack::RedisOptions {
        dir: dir.join("redis"),
        preferred_port: None,
        appendfsync: stack::AppendFsync::Everysec,
        maxmemory: None,
    })?)
}

/// Runs `job(i)` for every `i` in `0..count`, up to `concurrency` at once:
/// every answer, or an error once all ran.
pub async fn run_concurrently<T, E, Fut>(
    count: usize,
    concurrency: usize,
    job: impl FnMut(usize) -> Fut,
) -> Result<Vec<T>, E>
where
    Fut: std::future::Future<Output = Result<T, E>>,
{
    use futures::StreamExt;
    let results: Vec<Result<T, E>> = futures::stream::iter(0..count)
        .map(job)
        .buffer_unordered(concurrency)
        .collect()
        .await;
    results.into_iter().collect()
}

/// Turns on Redis's latency monitor where it is off, on every server in
/// `redis`: events of 1 ms or more are recorded, so `LATENCY LATEST` can
/// tell the event loop's stalls (an AOF fsync among them).
pub async fn latency_monitor_on(redis: &[fred::prelude::Client]) -> anyhow::Result<()> {
    use fred::prelude::ConfigInterface;
    for client in redis {
        let current: Vec<String> = client.config_get("latency-monitor-threshold").await?;
        if current.get(1).map(String::as_str) == Some("0") {
            client
                .config_set::<_, _>("latency-monitor-threshold", 1)
                .await?;
        }
    }
    Ok(())
}

/// Forgets the latency events recorded so far (`LATENCY RESET`) on every
/// server in `redis`.
pub async fn latency_reset(redis: &[fred::prelude::Client]) -> anyhow::Result<()> {
    use fred::prelude::ClientLike;
    for client in redis {
        let _: i64 = client.custom(fred::cmd!("LATENCY"), vec!["RESET"]).await?;
    }
    Ok(())
}

/// The longest stall of the AOF in the event loop since the last
/// [`latency_reset`] (its write or fsync: `LATENCY LATEST`'s `aof-*`
/// events), ms, over every server in `redis`; 0 when none reached 1 ms.
pub async fn aof_stall_max_ms(redis: &[fred::prelude::Client]) -> anyhow::Result<i64> {
    use fred::prelude::ClientLike;
    use fred::types::Value;
    let mut longest = 0;
    for client in redis {
        let events: Vec<Value> = client.custom(fred::cmd!("LATENCY"), vec!["LATEST"]).await?;
        for event in events {
            let Value::Array(fields) = event else {
                continue;
            };
            let name = fields
                .first()
                .and_then(Value::as_string)
                .unwrap_or_default();
            if name.starts_with("aof-") {
                let max = fields.get(3).and_then(Value::as_i64).unwrap_or(0);
                longest = longest.max(max);
            }
        }
    }
    Ok(longest)
}

/// A client per Redis server that takes writes: each primary of a Cluster
/// (`INFO` on a clustered client answers for one node only), else `redis`
/// itself.
pub async fn primary_clients(
    redis: &fred::prelude::Client,
) -> anyhow::Result<Vec<fred::prelude::Client>> {
    use fred::prelude::{ClientLike, ClusterInterface, Config, ServerConfig};
    let Some(routing) = redis.cached_cluster_state() else {
        return Ok(vec![redis.clone()]);
    };
    let mut clients = Vec::new();
    for node in routing.unique_primary_nodes() {
        let config = Config {
            server: ServerConfig::new_centralized(node.host.to_string(), node.port),
            ..Config::default()
        };
        let client = fred::prelude::Client::new(config, None, None, None);
        client.init().await?;
        clients.push(client);
    }
    Ok(clients)
}

/// [`redis_info_number`] summed over `nodes`.
pub async fn redis_info_sum(
    nodes: &[fred::prelude::Client],
    section: fred::types::InfoKind,
    field: &str,
) -> anyhow::Result<i64> {
    let mut sum = 0;
    for node in nodes {
        sum += redis_info_number(node, section.clone(), field).await?;
    }
    Ok(sum)
}

/// [`command_calls`] summed over `nodes`.
pub async fn command_calls_sum(
    nodes: &[fred::prelude::Client],
) -> anyhow::Result<std::collections::BTreeMap<String, u64>> {
    command_stat_sum(nodes, "calls").await
}

/// Microseconds Redis spent inside each command (`INFO commandstats`
/// `usec`; a script's include its inner calls'), summed over `nodes`.
pub async fn command_usec_sum(
    nodes: &[fred::prelude::Client],
) -> anyhow::Result<std::collections::BTreeMap<String, u64>> {
    command_stat_sum(nodes, "usec").await
}

async fn command_stat_sum(
    nodes: &[fred::prelude::Client],
    stat: &str,
) -> anyhow::Result<std::collections::BTreeMap<String, u64>> {
    let mut sum = std::collections::BTreeMap::new();
    for node in nodes {
        for (name, n) in command_stat(node, stat).await? {
            *sum.entry(name).or_insert(0) += n;
        }
    }
    Ok(sum)
}

/// One numeric field of Redis `INFO <section>` (`used_memory`,
/// `total_commands_processed`, …); 0 when absent.
pub async fn redis_info_number(
    client: &fred::prelude::Client,
    section: fred::types::InfoKind,
    field: &str,
) -> anyhow::Result<i64> {
    use fred::prelude::ClientLike;
    let info: String = client.info(Some(section)).await?;
    let prefix = format!("{field}:");
    Ok(info
        .lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0))
}

/// Calls per command (`INFO commandstats`; a script's inner calls count
/// too).
pub async fn command_calls(
    redis: &fred::prelude::Client,
) -> anyhow::Result<std::collections::BTreeMap<String, u64>> {
    command_stat(redis, "calls").await
}

/// One field (`calls`, `usec`) of every command's `INFO commandstats` line.
async fn command_stat(
    redis: &fred::prelude::Client,
    stat: &str,
) -> anyhow::Result<std::collections::BTreeMap<String, u64>> {
    use fred::prelude::ClientLike;
    let info: String = redis
        .info(Some(fred::types::InfoKind::CommandStats))
        .await?;
    Ok(info
        .lines()
        .filter_map(|l| {
            let (name, rest) = l.strip_prefix("cmdstat_")?.split_once(':')?;
            let n = rest.split(',').find_map(|kv| {
                let (k, v) = kv.split_once('=')?;
                (k == stat).then(|| v.parse().ok()).flatten()
            })?;
            Some((name.to_string(), n))
        })
        .collect())
}

/// Each command's calls between two [`command_calls`] readings, per unit
/// of work, most first: `hgetall 3.0, xadd 2.0, …`.
pub fn command_mix(
    before: &std::collections::BTreeMap<String, u64>,
    after: &std::collections::BTreeMap<String, u64>,
    units: f64,
) -> String {
    per_unit(before, after, units, 0.05)
        .iter()
        .map(|(name, per)| format!("{name} {per:.1}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Each command's growth between two readings (calls, usec) per unit of
/// work, those of at least `min`, most first.
pub fn per_unit(
    before: &std::collections::BTreeMap<String, u64>,
    after: &std::collections::BTreeMap<String, u64>,
    units: f64,
    min: f64,
) -> Vec<(String, f64)> {
    let mut per: Vec<(String, f64)> = after
        .iter()
        .map(|(name, n)| {
            let was = before.get(name).copied().unwrap_or(0);
            (name.clone(), n.saturating_sub(was) as f64 / units)
        })
        .filter(|(_, n)| *n >= min)
        .collect();
    per.sort_by(|a, b| b.1.total_cmp(&a.1));
    per
}

/// How a load tool reaches a running lunchrush: the variables
/// `lunchrush up` writes to `stack.env`.
#[derive(Debug, Clone, clap::Args)]
pub struct StackArgs {
    /// Partitions the engine runs with.
    #[arg(long, env = "LUNCHRUSH_PARTITIONS", default_value_t = 16)]
    pub partitions: u16,
    #[arg(long, env = "LUNCHRUSH_KEY_PREFIX", default_value = "lr:")]
    pub key_prefix: String,
    #[arg(long, env = "LUNCHRUSH_API_URL")]
    pub api: String,
    #[arg(long, env = "LUNCHRUSH_REDIS_URL")]
    pub redis: String,
    #[arg(long, env = "LUNCHRUSH_POSTGRES_URL")]
    pub postgres: String,
    #[arg(long, env = "LUNCHRUSH_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: String,
}
