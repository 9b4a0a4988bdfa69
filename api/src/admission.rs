//! Admission control: a lunch spike degrades gracefully instead of
//! collapsing.
//!
//! - A **per-subject token bucket** (default 20 requests/s, burst 40: limits
//!   a person never meets, a runaway client always does) answers 429 with
//!   `Retry-After`.
//! - A **bound on requests in flight** answers 503 with `Retry-After` as soon
//!   as the engine is saturated: shed early, never queue without bound.
//! - A **deadline** on every request: past it the client gets 503 and the
//!   work is dropped.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Admission settings: who gets in, how many, for how long.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Tokens added per second to each subject's bucket.
    pub rate_per_sec: f64,
    /// Bucket size (the burst a subject may send at once).
    pub burst: f64,
    /// Requests served at once by this process; more are shed with 503.
    pub in_flight_max: usize,
    /// Whole-request deadline.
    pub request_timeout: Duration,
    /// Open HTTP connections per process; more are refused with 503.
    pub connections_max: usize,
    /// A connection must deliver a whole request head within this long of
    /// being ready for one (after connecting or after its last response),
    /// else it is closed: bounds slow heads and idle keep-alive alike.
    pub header_read_timeout: Duration,
    /// With a token, `/metrics` answers only its bearer.
    pub metrics_token: Option<String>,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            rate_per_sec: 20.0,
            burst: 40.0,
            in_flight_max: 2_048,
            request_timeout: Duration::from_secs(10),
            connections_max: 4_096,
            header_read_timeout: Duration::from_secs(10),
            metrics_token: None,
        }
    }
}

/// Buckets idle this long are forgotten (they would be full again anyway).
const BUCKET_IDLE_FORGET: Duration = Duration::from_secs(60);
/// The bucket table is swept when it grows past this many subjects.
const BUCKETS_SWEEP_AT: usize = 100_000;
/// Shards of the bucket table, so concurrent requests rarely contend.
const SHARDS: usize = 64;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Per-subject token buckets, sharded.
#[derive(Debug)]
pub struct RateLimiter {
    limits: Limits,
    shards: Vec<Mutex<HashMap<String, Bucket>>>,
}

impl RateLimiter {
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Takes one token for `subject`; `Err(wait)` when the bucket is empty.
    pub fn admit(&self, subject: &str) -> Result<(), Duration> {
        let shard =
            &self.shards[(engine::keys::fnv1a(subject.as_bytes()) % SHARDS as u64) as usize];
        // No .await while the lock is held: a std Mutex is right here.
        let mut buckets = shard.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if buckets.len() > BUCKETS_SWEEP_AT / SHARDS {
            buckets.retain(|_, b| now.duration_since(b.at) < BUCKET_IDLE_FORGET);
        }
        let bucket = buckets.entry(subject.to_string()).or_insert(Bucket {
            tokens: self.limits.burst,
            at: now,
        });
        let refill = now.duration_since(bucket.at).as_secs_f64() * self.limits.rate_per_sec;
        bucket.tokens = (bucket.tokens + refill).min(self.limits.burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            let wait = (1.0 - bucket.tokens) / self.limits.rate_per_sec;
            Err(Duration::from_secs_f64(wait))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_is_admitted_then_the_rate_applies() {
        let limiter = RateLimiter::new(Limits {
            rate_per_sec: 10.0,
            burst: 5.0,
            ..Limits::default()
        });
        for _ in 0..5 {
            assert!(limiter.admit("c1").is_ok());
        }
        let wait = limiter.admit("c1").unwrap_err();
        assert!(wait <= Duration::from_millis(100), "{wait:?}");
        assert!(limiter.admit("c2").is_ok(), "buckets are per subject");
        std::thread::sleep(Duration::from_millis(120));
        assert!(limiter.admit("c1").is_ok());
    }
}
