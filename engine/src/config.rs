//! One typed configuration for every lunchrush process, validated at start.
//!
//! The binary fills it from flags and `LUNCHRUSH_*` environment variables;
//! tests build it directly. [`Config::validate`] names the exact setting that
//! is wrong and why, before anything connects anywhere.

use std::time::Duration;

/// Partition count bounds: at least one; at most 4,096 because an order id
/// carries its partition in the 12-bit `rand_a` field of its UUIDv7.
pub const PARTITIONS_MAX: u16 = 4_096;

/// A key prefix keeps several deployments (or tests) apart in one Redis.
/// Braces would change the cluster hash slot, so they are refused.
pub const KEY_PREFIX_LEN_MAX: usize = 64;

/// Timer durations (the delayed-tasks issue uses them; tests use seconds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timers {
    /// An order still `PENDING` after this is rejected and its stock released.
    pub payment_window: Duration,
    /// A restaurant that has not answered a `PAID` order after this loses it.
    pub approval_timeout: Duration,
    /// The purchase-confirmation notice goes out this long after dispatch.
    pub confirm_notice_after: Duration,
    /// The purchase is confirmed automatically this long after the notice.
    pub auto_confirm_after: Duration,
}

impl Default for Timers {
    fn default() -> Self {
        Self {
            payment_window: Duration::from_secs(120),
            approval_timeout: Duration::from_secs(300),
            confirm_notice_after: Duration::from_secs(7 * 24 * 3600),
            auto_confirm_after: Duration::from_secs(5 * 24 * 3600),
        }
    }
}

/// Everything a lunchrush process needs to know about its surroundings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// `redis://host:port[/db]` (standalone) or
    /// `redis-cluster://host:port?node=host:port&…` (Redis Cluster).
    pub redis_url: String,
    /// `postgres://user[:password]@host:port/database`.
    pub postgres_url: String,
    /// Base URL of the payment provider (`lunchrush psp-sim` locally).
    pub psp_url: String,
    /// Number of partitions restaurants are spread over. Fixed for the life
    /// of a deployment: order ids and keys carry it.
    pub partitions: u16,
    /// Prepended to every Redis key (outside the hash tag).
    pub key_prefix: String,
    pub timers: Timers,
    /// The provider client's breaker and pacer.
    pub psp: crate::breaker::PspOptions,
    /// How long a settled, archived order stays in Redis before it is
    /// retired to the archive (`None`: never; see [`crate::retire`]).
    pub live_retention: Option<std::time::Duration>,
    /// How full Redis may get before new orders are refused.
    pub memory: crate::budget::BudgetOptions,
}

/// The default live retention.
pub const LIVE_RETENTION_DEFAULT: std::time::Duration = std::time::Duration::from_secs(3600);

impl Default for Config {
    fn default() -> Self {
        Self {
            redis_url: "redis://127.0.0.1:6379".into(),
            postgres_url: "postgres://lunchrush@127.0.0.1:5432/lunchrush".into(),
            psp_url: "http://127.0.0.1:8081".into(),
            partitions: 16,
            key_prefix: "lr:".into(),
            timers: Timers::default(),
            psp: crate::breaker::PspOptions::default(),
            live_retention: Some(LIVE_RETENTION_DEFAULT),
            memory: crate::budget::BudgetOptions::default(),
        }
    }
}

/// What is wrong with a [`Config`], precisely.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("redis URL {url:?} is invalid: {reason}")]
    RedisUrl { url: String, reason: String },
    #[error("postgres URL {url:?} is invalid: {reason}")]
    PostgresUrl { url: String, reason: String },
    #[error("payment provider URL {url:?} is invalid: {reason}")]
    PspUrl { url: String, reason: String },
    #[error("partitions is {0}; it must be between 1 and {PARTITIONS_MAX}")]
    Partitions(u16),
    #[error(
        "key prefix {0:?} is invalid: at most {KEY_PREFIX_LEN_MAX} printable characters, \
         no braces, no spaces"
    )]
    KeyPrefix(String),
    #[error("timer {name} is zero; it must be a positive duration")]
    Timer { name: &'static str },
    #[error("provider setting {name} is {value}; {rule}")]
    Psp {
        name: &'static str,
        value: String,
        rule: &'static str,
    },
}

impl Config {
    fn validate_psp(&self) -> Result<(), ConfigError> {
        let psp = &self.psp;
        let bad = |name, value: String, rule| Err(ConfigError::Psp { name, value, rule });
        if psp.breaker_failures == 0 {
            return bad("breaker_failures", "0".into(), "it must be at least 1");
        }
        if !(psp.breaker_failure_rate > 0.0 && psp.breaker_failure_rate <= 1.0) {
            let value = psp.breaker_failure_rate.to_string();
            return bad("breaker_failure_rate", value, "it must be in (0, 1]");
        }
        if psp.breaker_window.is_zero() || psp.breaker_open.is_zero() {
            return bad("breaker_window/open", "0".into(), "they must be positive");
        }
        if !(psp.max_rate >= 0.0 && psp.max_rate.is_finite()) {
            let value = psp.max_rate.to_string();
            return bad("max_rate", value, "it must be 0 (no pacing) or positive");
        }
        Ok(())
    }

    /// Checks every field; the first problem found is returned.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_psp()?;
        validate_redis_url(&self.redis_url)?;
        validate_postgres_url(&self.postgres_url)?;
        validate_http_url(&self.psp_url).map_err(|reason| ConfigError::PspUrl {
            url: self.psp_url.clone(),
            reason,
        })?;
        if self.partitions == 0 || self.partitions > PARTITIONS_MAX {
            return Err(ConfigError::Partitions(self.partitions));
        }
        let prefix_ok = self.key_prefix.len() <= KEY_PREFIX_LEN_MAX
            && self
                .key_prefix
                .chars()
                .all(|c| c.is_ascii_graphic() && c != '{' && c != '}');
        if !prefix_ok {
            return Err(ConfigError::KeyPrefix(self.key_prefix.clone()));
        }
        let timers = [
            ("payment_window", self.timers.payment_window),
            ("approval_timeout", self.timers.approval_timeout),
            ("confirm_notice_after", self.timers.confirm_notice_after),
            ("auto_confirm_after", self.timers.auto_confirm_after),
        ];
        if let Some((name, _)) = timers.iter().find(|(_, d)| d.is_zero()) {
            return Err(ConfigError::Timer { name });
        }
        Ok(())
    }

    /// Whether the Redis URL names a cluster.
    pub fn redis_is_cluster(&self) -> bool {
        self.redis_url.starts_with("redis-cluster://")
            || self.redis_url.starts_with("rediss-cluster://")
    }
}

fn validate_redis_url(url: &str) -> Result<(), ConfigError> {
    let fail = |reason: &str| ConfigError::RedisUrl {
        url: url.to_string(),
        reason: reason.to_string(),
    };
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(fail(
            "it has no scheme; expected redis:// or redis-cluster://",
        ));
    };
    if !matches!(
        scheme,
        "redis" | "rediss" | "redis-cluster" | "rediss-cluster"
    ) {
        return Err(fail(&format!(
            "scheme {scheme:?} is not redis, rediss, redis-cluster or rediss-cluster"
        )));
    }
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    let host_port = authority.rsplit('@').next().unwrap_or("");
    check_host_port(host_port).map_err(|reason| fail(&reason))?;
    if let Some((_, query)) = rest.split_once('?') {
        for pair in query.split('&') {
            if let Some(node) = pair.strip_prefix("node=") {
                check_host_port(node)
                    .map_err(|reason| fail(&format!("node {node:?}: {reason}")))?;
            }
        }
    }
    Ok(())
}

fn validate_postgres_url(url: &str) -> Result<(), ConfigError> {
    let fail = |reason: &str| ConfigError::PostgresUrl {
        url: url.to_string(),
        reason: reason.to_string(),
    };
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(fail("it has no scheme; expected postgres://"));
    };
    if !matches!(scheme, "postgres" | "postgresql") {
        return Err(fail(&format!(
            "scheme {scheme:?} is not postgres or postgresql"
        )));
    }
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let host_port = authority.rsplit('@').next().unwrap_or("");
    check_host_port(host_port).map_err(|reason| fail(&reason))?;
    let database = path.split('?').next().unwrap_or("");
    if database.is_empty() {
        return Err(fail("it names no database (…/lunchrush)"));
    }
    Ok(())
}

fn validate_http_url(url: &str) -> Result<(), String> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err("it has no scheme; expected http:// or https://".into());
    };
    if !matches!(scheme, "http" | "https") {
        return Err(format!("scheme {scheme:?} is not http or https"));
    }
    check_host_port(rest.split('/').next().unwrap_or(""))
}

fn check_host_port(host_port: &str) -> Result<(), String> {
    if host_port.is_empty() {
        return Err("it has no host".into());
    }
    let (host, port) = match host_port.rsplit_once(':') {
        Some((host, port)) if !host.ends_with(']') || host.starts_with('[') => (host, Some(port)),
        _ => (host_port, None),
    };
    if host.is_empty() {
        return Err("it has no host".into());
    }
    if let Some(port) = port
        && port.parse::<u16>().ok().filter(|&p| p != 0).is_none()
    {
        return Err(format!("port {port:?} is not a number between 1 and 65535"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid() -> Config {
        Config::default()
    }

    #[test]
    fn the_default_is_valid() {
        assert_eq!(valid().validate(), Ok(()));
    }

    #[test]
    fn cluster_urls_are_accepted_and_recognized() {
        let config = Config {
            redis_url: "redis-cluster://127.0.0.1:7000?node=127.0.0.1:7001&node=127.0.0.1:7002"
                .into(),
            ..valid()
        };
        assert_eq!(config.validate(), Ok(()));
        assert!(config.redis_is_cluster());
    }

    /// Each bad field is named in the error, with the reason.
    #[test]
    fn each_bad_field_gets_a_precise_error() {
        let cases: Vec<(Config, &str)> = vec![
            (
                Config {
                    redis_url: "http://x:1".into(),
                    ..valid()
                },
                "scheme \"http\" is not redis",
            ),
            (
                Config {
                    redis_url: "redis://127.0.0.1:99999".into(),
                    ..valid()
                },
                "port \"99999\"",
            ),
            (
                Config {
                    postgres_url: "postgres://u@h:5432".into(),
                    ..valid()
                },
                "names no database",
            ),
            (
                Config {
                    psp_url: "ftp://h".into(),
                    ..valid()
                },
                "payment provider URL",
            ),
            (
                Config {
                    partitions: 0,
                    ..valid()
                },
                "partitions is 0",
            ),
            (
                Config {
                    key_prefix: "a{b}".into(),
                    ..valid()
                },
                "key prefix",
            ),
            (
                Config {
                    timers: Timers {
                        approval_timeout: Duration::ZERO,
                        ..Timers::default()
                    },
                    ..valid()
                },
                "timer approval_timeout is zero",
            ),
        ];
        for (config, expected) in cases {
            let error = config.validate().expect_err(expected).to_string();
            assert!(
                error.contains(expected),
                "{error:?} should mention {expected:?}"
            );
        }
    }
}
