//! The local stack: real `redis-server` (standalone or a Redis Cluster) and
//! real PostgreSQL, started from the installed binaries on loopback, on free
//! ports, with their data under one directory. `lunchrush up`, `lunchrush
//! demo` and every integration test stand on it.
//!
//! # Layout
//! - [`binaries`]: finds `redis-server` and PostgreSQL (PATH, then
//!   `/usr/lib/postgresql/*/bin`), naming the package to install when missing.
//! - [`ports`]: free loopback ports, never handed out twice in one process.
//! - [`process`]: [`process::Daemon`], a child that dies with its owner.
//! - [`redis`]: [`RedisServer`] and [`RedisCluster`].
//! - [`postgres`]: [`Postgres`], run as the `postgres` user when we are root.
//!
//! **Invariant:** no server outlives the stack that started it: `Drop` stops
//! it, and `PR_SET_PDEATHSIG` covers the owner being killed outright.

pub mod binaries;
pub mod ports;
pub mod postgres;
pub mod process;
pub mod psp;
pub mod redis;
pub mod tmpfs;

use std::path::{Path, PathBuf};

pub use crate::postgres::{Postgres, PostgresOptions};
pub use crate::redis::{AppendFsync, RedisCluster, RedisOptions, RedisServer};

/// Everything that can go wrong while starting or stopping the stack.
#[derive(Debug, thiserror::Error)]
pub enum StackError {
    #[error("`{binary}` was not found: install it with `apt-get install {package}`")]
    MissingBinary {
        binary: String,
        package: &'static str,
    },
    #[error(
        "running as root, and PostgreSQL refuses root: no `postgres` user exists to run it as \
         (`apt-get install postgresql` creates it)"
    )]
    NoUnprivilegedUser,
    #[error("no free loopback port could be found")]
    NoFreePort,
    #[error("{name} exited during start-up; its log {} ends with:\n{tail}", log.display())]
    Exited {
        name: String,
        log: PathBuf,
        tail: String,
    },
    #[error("timed out waiting for {what}; the log ends with:\n{tail}")]
    Timeout { what: String, tail: String },
    #[error("{program} failed ({status}):\n{output}")]
    Helper {
        program: String,
        status: String,
        output: String,
    },
    #[error("redis answered: {0}")]
    Redis(String),
    #[error("postgres: {0}")]
    Postgres(#[source] tokio_postgres::Error),
    #[error("cannot {what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

impl StackError {
    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            what: what.into(),
            source,
        }
    }
}

/// Standalone Redis or a Redis Cluster of N masters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedisMode {
    Standalone,
    Cluster { masters: usize },
}

/// How to start a [`LocalStack`].
#[derive(Debug, Clone)]
pub struct StackOptions {
    /// Data directory: `redis/`, `postgres/` and logs go below it.
    pub home: PathBuf,
    pub redis: RedisMode,
    pub appendfsync: AppendFsync,
    /// Ports to try first (a second `lunchrush up` keeps its URLs).
    pub redis_port: Option<u16>,
    pub postgres_port: Option<u16>,
    /// Each Redis node's `maxmemory` (`None`: no limit).
    pub redis_maxmemory: Option<u64>,
    /// `true` for a stack that keeps data (`lunchrush up`): fsync on, real
    /// `initdb`. `false` for tests: fast and disposable.
    pub durable: bool,
}

impl StackOptions {
    /// Defaults for a durable stack under `home`.
    pub fn durable(home: impl Into<PathBuf>) -> Self {
        Self {
            home: home.into(),
            redis: RedisMode::Standalone,
            appendfsync: AppendFsync::Always,
            redis_port: None,
            redis_maxmemory: None,
            postgres_port: None,
            durable: true,
        }
    }
}

/// The Redis side of a stack.
#[derive(Debug)]
pub enum RedisDeployment {
    Standalone(RedisServer),
    Cluster(RedisCluster),
}

impl RedisDeployment {
    /// Starts `mode` with its data under `dir` (`redis/` or
    /// `redis-cluster/`), on `preferred_port` if it is free (standalone).
    pub fn start(
        mode: RedisMode,
        dir: &Path,
        appendfsync: AppendFsync,
        preferred_port: Option<u16>,
        maxmemory: Option<u64>,
    ) -> Result<Self, StackError> {
        Ok(match mode {
            RedisMode::Standalone => {
                RedisDeployment::Standalone(RedisServer::start(RedisOptions {
                    dir: dir.join("redis"),
                    preferred_port,
                    appendfsync,
                    maxmemory,
                })?)
            }
            RedisMode::Cluster { masters } => RedisDeployment::Cluster(RedisCluster::start(
                &dir.join("redis-cluster"),
                masters,
                appendfsync,
                maxmemory,
            )?),
        })
    }

    /// A URL lunchrush's configuration accepts (`redis://` or `redis-cluster://`).
    pub fn url(&self) -> String {
        match self {
            RedisDeployment::Standalone(server) => server.url(),
            RedisDeployment::Cluster(cluster) => cluster.url(),
        }
    }

    /// Every redis-server process of the deployment.
    pub fn servers(&self) -> Vec<&RedisServer> {
        match self {
            RedisDeployment::Standalone(server) => vec![server],
            RedisDeployment::Cluster(cluster) => cluster.nodes().iter().collect(),
        }
    }

    pub fn servers_mut(&mut self) -> Vec<&mut RedisServer> {
        match self {
            RedisDeployment::Standalone(server) => vec![server],
            RedisDeployment::Cluster(cluster) => cluster.nodes_mut().iter_mut().collect(),
        }
    }
}

/// Redis plus PostgreSQL, running until dropped.
#[derive(Debug)]
pub struct LocalStack {
    // Field order is drop order: servers stop before their directory goes.
    pub redis: RedisDeployment,
    pub postgres: Postgres,
    home: PathBuf,
    _temporary: Option<tempfile::TempDir>,
}

impl LocalStack {
    /// Starts Redis and PostgreSQL as `options` say.
    pub async fn start(options: StackOptions) -> Result<Self, StackError> {
        Self::start_in(options, None).await
    }

    /// A disposable stack in a fresh temporary directory: standalone Redis.
    /// What integration tests use.
    pub async fn temporary() -> Result<Self, StackError> {
        Self::temporary_with(RedisMode::Standalone).await
    }

    /// A disposable stack whose Redis is a 3-master Redis Cluster.
    pub async fn temporary_cluster() -> Result<Self, StackError> {
        Self::temporary_with(RedisMode::Cluster { masters: 3 }).await
    }

    pub async fn temporary_with(redis: RedisMode) -> Result<Self, StackError> {
        let dir = tempfile::Builder::new()
            .prefix("lunchrush-test-")
            .tempdir()
            .map_err(|e| StackError::io("create a temporary directory", e))?;
        // The postgres user must be able to reach its data directory below.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .map_err(|e| StackError::io("open up the temporary directory", e))?;
        let options = StackOptions {
            home: dir.path().to_path_buf(),
            redis,
            // Disposable, like its PostgreSQL (fsync off): no fsync waits.
            appendfsync: AppendFsync::Everysec,
            redis_port: None,
            postgres_port: None,
            redis_maxmemory: None,
            durable: false,
        };
        Self::start_in(options, Some(dir)).await
    }

    async fn start_in(
        options: StackOptions,
        temporary: Option<tempfile::TempDir>,
    ) -> Result<Self, StackError> {
        std::fs::create_dir_all(&options.home)
            .map_err(|e| StackError::io(format!("create {}", options.home.display()), e))?;
        let redis = RedisDeployment::start(
            options.redis,
            &options.home,
            options.appendfsync,
            options.redis_port,
            options.redis_maxmemory,
        )?;
        let postgres = Postgres::start(PostgresOptions {
            dir: options.home.join("postgres"),
            preferred_port: options.postgres_port,
            durable: options.durable,
        })
        .await?;
        Ok(Self {
            redis,
            postgres,
            home: options.home,
            _temporary: temporary,
        })
    }

    pub fn redis_url(&self) -> String {
        self.redis.url()
    }

    pub fn postgres_url(&self) -> String {
        self.postgres.url()
    }

    pub fn home(&self) -> &Path {
        &self.home
    }

    /// Process ids of every server (for tests that prove nothing is left).
    pub fn pids(&self) -> Vec<u32> {
        let mut pids: Vec<u32> = self
            .redis
            .servers()
            .iter()
            .filter_map(|server| server.pid())
            .collect();
        pids.extend(self.postgres.pid());
        pids
    }
}

/// Whether process `pid` exists (and is not a zombie we could still reap).
pub fn process_alive(pid: u32) -> bool {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|line| line.starts_with("State:"))
        .is_some_and(|state| !state.contains('Z'))
}
