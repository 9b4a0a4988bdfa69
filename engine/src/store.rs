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
    let servers = if client.is_clustered() {
        client.active_connections()
    } else {
        Vec::new()
    };
    if servers.is_empty() {
        let policy = eviction_policy(client).await?;
        return check_policy("redis".to_string(), policy);
    }
    for server in servers {
        let policy = eviction_policy(&client.with_cluster_node(&server)).await?;
        check_policy(server.to_string(), policy)?;
    }
    Ok(())
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
