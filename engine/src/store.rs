//! The connection to Redis (standalone or cluster) shared by every task of a
//! process: fred multiplexes and pipelines all concurrent commands over one
//! connection per node, so there is no per-request connection anywhere.

use std::time::Duration;

use fred::prelude::*;

use crate::config::Config;

/// Every Redis command gets a deadline: a stuck node must surface as an
/// error, not as a request that hangs a lunch-rush client forever.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);

/// Connecting gives up after this (then the caller's retry policy decides).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The only eviction policy under which queues and stock keys are safe.
pub const REQUIRED_EVICTION_POLICY: &str = "noeviction";

/// Why Redis cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot connect to redis at {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: fred::error::Error,
    },
    #[error(
        "redis at {server} evicts keys (maxmemory-policy {policy}); lunchrush needs \
         `maxmemory-policy noeviction`, or evicted stream entries and stock counters would \
         silently break the rule"
    )]
    Evicts { server: String, policy: String },
    #[error(transparent)]
    Redis(#[from] fred::error::Error),
}

/// Connects to the Redis named by `config` and waits until it answers.
pub async fn connect(config: &Config) -> Result<Client, StoreError> {
    let fail = |source| StoreError::Connect {
        url: config.redis_url.clone(),
        source,
    };
    let redis_config = fred::types::config::Config::from_url(&config.redis_url).map_err(fail)?;
    let client = Builder::from_config(redis_config)
        .with_connection_config(|connection| {
            connection.connection_timeout = CONNECT_TIMEOUT;
            connection.internal_command_timeout = COMMAND_TIMEOUT;
            connection.max_command_attempts = 3;
            connection.tcp = TcpConfig {
                nodelay: Some(true),
                ..Default::default()
            };
        })
        .with_performance_config(|performance| {
            performance.default_command_timeout = COMMAND_TIMEOUT;
        })
        .set_policy(ReconnectPolicy::new_exponential(0, 50, 2_000, 2))
        .build()
        .map_err(fail)?;
    client.init().await.map_err(fail)?;
    Ok(client)
}

/// Fails unless every node's `maxmemory-policy` is `noeviction`.
pub async fn ensure_no_eviction(client: &Client) -> Result<(), StoreError> {
    for (name, node) in nodes(client) {
        check_policy(name, eviction_policy(&node).await?)?;
    }
    Ok(())
}

/// The nodes a per-node check asks, by name, each with a handle that sends
/// to it: each primary of a Cluster fred is connected to (replicas are not
/// asked: give them the primaries' configuration), or the one standalone
/// server.
pub(crate) fn nodes(client: &Client) -> Vec<(String, fred::clients::WithOptions<Client>)> {
    let servers = if client.is_clustered() {
        client.active_connections()
    } else {
        Vec::new()
    };
    if servers.is_empty() {
        return vec![(
            "redis".to_string(),
            client.with_options(&Options::default()),
        )];
    }
    servers
        .into_iter()
        .map(|server| (server.to_string(), client.with_cluster_node(server)))
        .collect()
}

fn check_policy(server: String, policy: String) -> Result<(), StoreError> {
    if policy == REQUIRED_EVICTION_POLICY {
        Ok(())
    } else {
        Err(StoreError::Evicts { server, policy })
    }
}

async fn eviction_policy<C: ServerInterface + ClientLike>(
    client: &C,
) -> Result<String, StoreError> {
    // INFO works where CONFIG is disabled (managed Redis services).
    let info: String = client.info(Some(fred::types::InfoKind::Memory)).await?;
    Ok(info
        .lines()
        .find_map(|line| line.strip_prefix("maxmemory_policy:"))
        .unwrap_or("unknown")
        .trim()
        .to_string())
}

/// The `hash-max-listpack-value` lunchrush asks for. An order's longest
/// values (its lines, the list of its events) stay under it for all but the
/// largest orders (from about a dozen lines with 64-character ids), so
/// Redis keeps its hash as one listpack (~430 B an order at rest) instead
/// of a hashtable (~1.4 KB). A larger order falls back to a hashtable:
/// correct, only bigger. `lunchrush up` starts Redis with it.
pub const COMPACT_HASH_VALUE_BYTES: u64 = 1024;

/// Warns (once per node) where Redis would keep order hashes as hashtables:
/// correct, but each live order then costs about 1 KB more. Says nothing
/// where CONFIG is disabled (managed Redis services).
pub async fn warn_unless_compact_hashes(client: &Client) {
    for (name, node) in nodes(client) {
        warn_unless_compact(listpack_value(&node).await, &name);
    }
}

fn warn_unless_compact(value: Option<u64>, server: &str) {
    if let Some(value) = value.filter(|v| *v < COMPACT_HASH_VALUE_BYTES) {
        tracing::warn!(
            server,
            value,
            "Redis keeps a hash holding a value longer than hash-max-listpack-value as a \
             hashtable: each live order costs about 1 KB more than with \
             `hash-max-listpack-value {COMPACT_HASH_VALUE_BYTES}`."
        );
    }
}

async fn listpack_value<C: ConfigInterface + ClientLike>(client: &C) -> Option<u64> {
    let answer: Vec<String> = client.config_get("hash-max-listpack-value").await.ok()?;
    answer.get(1)?.parse().ok()
}

/// Redis's clock in milliseconds (TIME): the one clock every script and
/// timer uses, whatever the engines' own clocks say.
pub async fn server_time_ms(client: &Client) -> Result<i64, fred::error::Error> {
    let time: Vec<i64> = client
        .custom(fred::cmd!("TIME"), Vec::<String>::new())
        .await?;
    match time.as_slice() {
        [seconds, micros] => Ok(seconds * 1_000 + micros / 1_000),
        _ => Err(fred::error::Error::new(
            fred::error::ErrorKind::Protocol,
            format!("TIME answered {time:?}"),
        )),
    }
}
