//! Flags shared by several subcommands, and the typed [`engine::Config`]
//! they build. Every flag is also a `LUNCHRUSH_*` environment variable, so
//! `set -a; . .lunchrush/stack.env` configures all of them.

use std::time::Duration;

use stack::psp::Faults;

/// Where Redis, Postgres and the provider are, and how lunchrush is tuned.
#[derive(Debug, Clone, clap::Args)]
pub struct EngineArgs {
    /// redis://host:port (standalone) or redis-cluster://host:port?node=host:port&… (cluster).
    #[arg(
        long,
        env = "LUNCHRUSH_REDIS_URL",
        default_value = "redis://127.0.0.1:6379"
    )]
    pub redis_url: String,
    /// postgres://user[:password]@host:port/database
    #[arg(
        long,
        env = "LUNCHRUSH_POSTGRES_URL",
        default_value = "postgres://lunchrush@127.0.0.1:5432/lunchrush"
    )]
    pub postgres_url: String,
    /// Base URL of the payment provider.
    #[arg(
        long,
        env = "LUNCHRUSH_PSP_URL",
        default_value = "http://127.0.0.1:8081"
    )]
    pub psp_url: String,
    #[command(flatten)]
    pub tuning: TuningArgs,
}

/// Settings that shape the key space and the timers.
#[derive(Debug, Clone, clap::Args)]
pub struct TuningArgs {
    /// Partitions restaurants are spread over (fixed for a deployment's life).
    #[arg(long, env = "LUNCHRUSH_PARTITIONS", default_value_t = 16)]
    pub partitions: u16,
    /// Prefix of every Redis key.
    #[arg(long, env = "LUNCHRUSH_KEY_PREFIX", default_value = "lr:")]
    pub key_prefix: String,
    /// An order still PENDING after this is rejected.
    #[arg(long, env = "LUNCHRUSH_PAYMENT_WINDOW", default_value = "2m", value_parser = humantime::parse_duration)]
    pub payment_window: Duration,
    /// A restaurant that has not answered a PAID order after this loses it.
    #[arg(long, env = "LUNCHRUSH_APPROVAL_TIMEOUT", default_value = "5m", value_parser = humantime::parse_duration)]
    pub approval_timeout: Duration,
    /// The purchase-confirmation notice goes out this long after dispatch.
    #[arg(long, env = "LUNCHRUSH_CONFIRM_NOTICE_AFTER", default_value = "7d", value_parser = humantime::parse_duration)]
    pub confirm_notice_after: Duration,
    /// The purchase is confirmed automatically this long after the notice.
    #[arg(long, env = "LUNCHRUSH_AUTO_CONFIRM_AFTER", default_value = "5d", value_parser = humantime::parse_duration)]
    pub auto_confirm_after: Duration,
    /// A settled order leaves Redis this long after it came to rest and was
    /// archived; reads then come from PostgreSQL ("off": never).
    #[arg(long, env = "LUNCHRUSH_LIVE_RETENTION", default_value = "1h", value_parser = parse_retention)]
    pub live_retention: Retention,
    #[command(flatten)]
    pub psp: PspArgs,
    #[command(flatten)]
    pub memory: MemoryArgs,
}

/// The memory budget: how full Redis may get before new orders are refused
/// (docs/operations.md, "When a resource runs out").
#[derive(Debug, Clone, clap::Args)]
pub struct MemoryArgs {
    /// Budget for Redis's memory (e.g. 8gb); default: each primary's own
    /// maxmemory (with none, nothing is refused and a warning is logged).
    #[arg(long, env = "LUNCHRUSH_MEMORY_LIMIT", value_parser = engine::budget::parse_bytes)]
    pub memory_limit: Option<u64>,
    /// The fixed part of the reserve kept below the limit for work in
    /// flight (default: 5% of the limit); each order in flight adds its own.
    #[arg(long, env = "LUNCHRUSH_MEMORY_RESERVE", value_parser = engine::budget::parse_bytes)]
    pub memory_reserve: Option<u64>,
    /// How far below the high-water mark memory must fall before new orders
    /// are taken again (default: 5% of the limit).
    #[arg(long, env = "LUNCHRUSH_MEMORY_HYSTERESIS", value_parser = engine::budget::parse_bytes)]
    pub memory_hysteresis: Option<u64>,
}

impl MemoryArgs {
    pub fn options(&self) -> engine::budget::BudgetOptions {
        engine::budget::BudgetOptions {
            limit: self.memory_limit,
            floor: self.memory_reserve,
            hysteresis: self.memory_hysteresis,
            ..engine::budget::BudgetOptions::default()
        }
    }
}

/// A live retention: a duration, or `off` (`None`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention(pub Option<Duration>);

fn parse_retention(text: &str) -> Result<Retention, humantime::DurationError> {
    match text {
        "off" | "never" => Ok(Retention(None)),
        _ => humantime::parse_duration(text).map(|d| Retention(Some(d))),
    }
}

/// How this process treats the payment provider: a circuit breaker and a
/// rate (shared by every payment hop of the process).
#[derive(Debug, Clone, clap::Args)]
pub struct PspArgs {
    /// Provider calls per second at most (0: no limit); a fifth is kept for
    /// voids and refunds.
    #[arg(long, env = "LUNCHRUSH_PSP_MAX_RATE", default_value_t = 20_000.0)]
    pub psp_max_rate: f64,
    /// Open the provider's circuit after this many failed calls in a row.
    #[arg(long, env = "LUNCHRUSH_PSP_BREAKER_FAILURES", default_value_t = 10)]
    pub psp_breaker_failures: u32,
    /// …or when this share of the calls in the window failed (at least 20 calls).
    #[arg(
        long,
        env = "LUNCHRUSH_PSP_BREAKER_FAILURE_RATE",
        default_value_t = 0.5
    )]
    pub psp_breaker_failure_rate: f64,
    /// The window the failure rate is measured over.
    #[arg(long, env = "LUNCHRUSH_PSP_BREAKER_WINDOW", default_value = "10s", value_parser = humantime::parse_duration)]
    pub psp_breaker_window: Duration,
    /// How long the circuit stays open before a probe (doubles after a failed probe, up to 5 s).
    #[arg(long, env = "LUNCHRUSH_PSP_BREAKER_OPEN", default_value = "1s", value_parser = humantime::parse_duration)]
    pub psp_breaker_open: Duration,
}

impl PspArgs {
    pub fn options(&self) -> engine::breaker::PspOptions {
        engine::breaker::PspOptions {
            max_rate: self.psp_max_rate,
            breaker_failures: self.psp_breaker_failures,
            breaker_failure_rate: self.psp_breaker_failure_rate,
            breaker_window: self.psp_breaker_window,
            breaker_open: self.psp_breaker_open,
            breaker_open_max: self.psp_breaker_open.max(Duration::from_secs(5)),
            ..engine::breaker::PspOptions::default()
        }
    }
}

impl TuningArgs {
    /// A validated configuration from these settings and the connection facts.
    pub fn config(
        &self,
        redis_url: String,
        postgres_url: String,
        psp_url: String,
    ) -> Result<engine::Config, engine::ConfigError> {
        let config = engine::Config {
            redis_url,
            postgres_url,
            psp_url,
            partitions: self.partitions,
            key_prefix: self.key_prefix.clone(),
            timers: engine::Timers {
                payment_window: self.payment_window,
                approval_timeout: self.approval_timeout,
                confirm_notice_after: self.confirm_notice_after,
                auto_confirm_after: self.auto_confirm_after,
            },
            psp: self.psp.options(),
            live_retention: self.live_retention.0,
            memory: self.memory.options(),
        };
        config.validate()?;
        Ok(config)
    }
}

impl EngineArgs {
    pub fn config(&self) -> Result<engine::Config, engine::ConfigError> {
        self.tuning.config(
            self.redis_url.clone(),
            self.postgres_url.clone(),
            self.psp_url.clone(),
        )
    }
}

/// Fault injection of the provider simulator (all off by default).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct FaultArgs {
    /// Share of authorizations declined (0..1).
    #[arg(long, env = "LUNCHRUSH_PSP_DECLINE_RATE", default_value_t = 0.0, value_parser = rate)]
    pub decline_rate: f64,
    /// Share of provider requests answered 503 without effect (0..1).
    #[arg(long, env = "LUNCHRUSH_PSP_ERROR_RATE", default_value_t = 0.0, value_parser = rate)]
    pub error_rate: f64,
    /// Share of provider requests that take effect, then answer too late (0..1).
    #[arg(long, env = "LUNCHRUSH_PSP_TIMEOUT_AFTER_CHARGE_RATE", default_value_t = 0.0, value_parser = rate)]
    pub timeout_after_charge_rate: f64,
    /// Latency added to every provider request.
    #[arg(long, env = "LUNCHRUSH_PSP_LATENCY", default_value = "0ms", value_parser = humantime::parse_duration)]
    pub latency: Duration,
    /// How long a timed-out request hangs before it answers.
    #[arg(long, env = "LUNCHRUSH_PSP_HANG", default_value = "5s", value_parser = humantime::parse_duration)]
    pub hang: Duration,
}

impl FaultArgs {
    pub fn faults(&self) -> Faults {
        Faults {
            decline_rate: self.decline_rate,
            error_rate: self.error_rate,
            timeout_after_charge_rate: self.timeout_after_charge_rate,
            latency_ms: self.latency.as_millis() as u64,
            hang_ms: self.hang.as_millis() as u64,
        }
    }
}

fn rate(text: &str) -> Result<f64, String> {
    let value: f64 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a number"))?;
    if (0.0..=1.0).contains(&value) {
        Ok(value)
    } else {
        Err(format!("{value} is not between 0 and 1"))
    }
}

/// Admission control of the API (defaults a person never meets).
#[derive(Debug, Clone, clap::Args)]
pub struct AdmissionArgs {
    /// Requests per second each token may send (token bucket refill).
    #[arg(long, env = "LUNCHRUSH_RATE_LIMIT", default_value_t = 20.0)]
    pub rate_limit: f64,
    /// Burst each token may send at once (token bucket size).
    #[arg(long, env = "LUNCHRUSH_RATE_BURST", default_value_t = 40.0)]
    pub rate_burst: f64,
    /// Requests one process serves at once; more are shed with 503.
    #[arg(long, env = "LUNCHRUSH_IN_FLIGHT_MAX", default_value_t = 2_048)]
    pub in_flight_max: usize,
    /// Whole-request deadline.
    #[arg(long, env = "LUNCHRUSH_REQUEST_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub request_timeout: Duration,
    /// Open HTTP connections one process keeps; more are refused with 503
    /// (lowered to fit the file-descriptor limit).
    #[arg(long, env = "LUNCHRUSH_CONNECTIONS_MAX", default_value_t = 4_096)]
    pub connections_max: usize,
    /// A connection must send a whole request head within this long of being
    /// ready for one (after connecting, or after its last response), else it
    /// is closed: bounds slow heads and idle keep-alive connections.
    #[arg(long, env = "LUNCHRUSH_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub header_read_timeout: Duration,
    /// Require `Authorization: Bearer <this>` to read `/metrics`.
    #[arg(long, env = "LUNCHRUSH_METRICS_TOKEN", hide_env_values = true)]
    pub metrics_token: Option<String>,
}

impl AdmissionArgs {
    pub fn limits(&self) -> anyhow::Result<api::admission::Limits> {
        anyhow::ensure!(self.rate_limit > 0.0, "--rate-limit must be positive");
        anyhow::ensure!(self.rate_burst >= 1.0, "--rate-burst must be at least 1");
        anyhow::ensure!(
            self.in_flight_max >= 1,
            "--in-flight-max must be at least 1"
        );
        anyhow::ensure!(
            !self.request_timeout.is_zero(),
            "--request-timeout must be positive"
        );
        anyhow::ensure!(
            self.connections_max >= 1,
            "--connections-max must be at least 1"
        );
        anyhow::ensure!(
            !self.header_read_timeout.is_zero(),
            "--header-read-timeout must be positive"
        );
        Ok(api::admission::Limits {
            rate_per_sec: self.rate_limit,
            burst: self.rate_burst,
            in_flight_max: self.in_flight_max,
            request_timeout: self.request_timeout,
            connections_max: self.connections_max,
            header_read_timeout: self.header_read_timeout,
            metrics_token: self.metrics_token.clone(),
        })
    }
}
