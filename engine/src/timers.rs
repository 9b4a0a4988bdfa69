//! Delayed tasks without batch scans: per-partition sorted sets (the timer
//! wheel, `{pN}:wheel`) scored by due time in Redis server time, set and
//! cancelled inside the very transitions that make them due or moot, and
//! claimed by the `claim_timers` script, which moves due entries into the
//! partition's `timers` stream as `TimerFired` events (bounded per call).
//! The `order` consumer group then acts on them (see [`crate::saga`]).
//!
//! | timer | set by | cancelled by | when it fires |
//! | --- | --- | --- | --- |
//! | `payment_window` | `place_order` | authorization, rejection | a PENDING order is rejected (`payment_window`), stock released |
//! | `approval_timeout` | authorization (PAID) | the restaurant's answer, rejection | a PAID order without an answer is rejected (`approval_timeout`), stock released, authorization voided |
//! | `confirm_notice` | dispatch | confirmation, rejection | the customer is notified once; `auto_confirm` is set |
//! | `auto_confirm` | the notice | confirmation (customer or admin), rejection | a DISPATCHED order is confirmed |

use std::time::Duration;

use crate::engine::{Engine, EngineError};

/// Tuning of the claimer.
#[derive(Debug, Clone)]
pub struct ClaimerOptions {
    /// How often every partition's wheel is claimed (the timer resolution).
    pub every: Duration,
    /// Timers moved per script call (bounds the script's work).
    pub batch: u64,
}

impl Default for ClaimerOptions {
    fn default() -> Self {
        Self {
            every: Duration::from_millis(100),
            batch: 1_000,
        }
    }
}

/// Claims every partition's due timers once (partitions concurrently: the
/// calls pipeline over one connection); returns how many fired.
pub async fn claim_all(engine: &Engine, batch: u64) -> Result<u64, EngineError> {
    let claims = (0..engine.keys().partitions()).map(|p| async move {
        let mut fired_total = 0;
        loop {
            let fired = engine.claim_timers(p, batch).await?.fired;
            fired_total += fired;
            if fired < batch {
                return Ok::<_, EngineError>(fired_total);
            }
        }
    });
    let fired_total: u64 = futures::future::try_join_all(claims)
        .await?
        .into_iter()
        .sum();
    if fired_total > 0 {
        metrics::counter!("lunchrush_timers_fired_total").increment(fired_total);
    }
    Ok(fired_total)
}

/// Claims due timers every `options.every` until `shutdown` turns true.
/// Any number of processes may run it at once: each timer fires once.
pub async fn run_claimer(
    engine: Engine,
    options: ClaimerOptions,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    while !*shutdown.borrow() {
        if let Err(error) = claim_all(&engine, options.batch).await {
            tracing::warn!(%error, "Timer claim failed; due timers fire at the next claim.");
        }
        tokio::select! {
            _ = tokio::time::sleep(options.every) => {}
            _ = shutdown.changed() => {}
        }
    }
}
