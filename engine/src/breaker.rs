//! Protecting the payment provider from us: a circuit breaker that stops
//! calling a provider that fails, and a pacer that holds the calls under a
//! rate so the backlog after an outage drains steadily.
//!
//! ```text
//!            failures ≥ rate over the window, or N in a row
//!   CLOSED ───────────────────────────────────────────────▶ OPEN
//!     ▲                                                      │ cool-down passed
//!     │ the probe succeeded                                   ▼
//!     └────────────────────────────────────────────────── HALF-OPEN
//!                    (one probe at a time; it failed: OPEN, cool-down doubled)
//! ```
//!
//! One [`Breaker`] and one [`Pacer`] per process, shared by every payment
//! hop (every clone of the provider client). While the breaker is open no
//! call leaves the process; callers get [`Permit::Denied`] at once and the
//! saga leaves their events waiting.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Breaker and pacer settings (`--psp-*` flags).
#[derive(Debug, Clone, PartialEq)]
pub struct PspOptions {
    /// Open after this many failed calls in a row.
    pub breaker_failures: u32,
    /// Or when this share of the calls in `breaker_window` failed…
    pub breaker_failure_rate: f64,
    /// …over at least this many calls.
    pub breaker_calls_min: u32,
    /// The window the failure rate is measured over.
    pub breaker_window: Duration,
    /// How long the breaker stays open before a probe (doubles after a
    /// failed probe, up to `breaker_open_max`).
    pub breaker_open: Duration,
    pub breaker_open_max: Duration,
    /// Provider calls per second at most (0: no pacing).
    pub max_rate: f64,
    /// Share of `max_rate` kept for compensations (void, refund), which
    /// authorizations and captures can never take.
    pub compensation_share: f64,
}

impl Default for PspOptions {
    fn default() -> Self {
        Self {
            breaker_failures: 10,
            breaker_failure_rate: 0.5,
            breaker_calls_min: 20,
            breaker_window: Duration::from_secs(10),
            breaker_open: Duration::from_secs(1),
            // Short enough that a recovered provider is found within
            // seconds; a probe is one call.
            breaker_open_max: Duration::from_secs(5),
            // Above what the engine needs at its capacity (about two
            // calls per order); a real provider's contract says its own.
            max_rate: 20_000.0,
            compensation_share: 0.2,
        }
    }
}

impl Eq for PspOptions {}

/// The breaker's state, as `lunchrush_psp_breaker_state` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    HalfOpen,
    Open,
}

impl BreakerState {
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::HalfOpen => "half_open",
            BreakerState::Open => "open",
        }
    }

    /// 0 closed, 1 half-open, 2 open.
    pub fn gauge(self) -> f64 {
        match self {
            BreakerState::Closed => 0.0,
            BreakerState::HalfOpen => 1.0,
            BreakerState::Open => 2.0,
        }
    }
}

/// May a call go out?
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permit {
    /// Yes (closed).
    Call,
    /// Yes, as the half-open probe: its outcome decides.
    Probe,
    /// No: the breaker is open (or another probe is out).
    Denied,
}

#[derive(Debug)]
struct Inner {
    state: BreakerState,
    /// Calls in the window: (when, failed).
    recent: VecDeque<(Instant, bool)>,
    /// How many of `recent` failed, kept as calls come and go (a provider
    /// call never walks the window).
    recent_failures: usize,
    failures_in_row: u32,
    open_until: Instant,
    open_for: Duration,
    probe_out: bool,
}

/// The circuit breaker.
#[derive(Debug)]
pub struct Breaker {
    options: PspOptions,
    inner: Mutex<Inner>,
    /// Calls refused since start (what an outage held back).
    denied: AtomicU64,
    /// Probes let out since start.
    probes: AtomicU64,
}

/// Calls remembered per window at most (bounds the breaker's memory at any rate).
const WINDOW_CALLS_MAX: usize = 10_000;
/// The recent pace is measured over at least this many calls.
pub const PACE_CALLS_MIN: usize = 100;

impl Breaker {
    pub fn new(options: PspOptions) -> Self {
        let now = Instant::now();
        metrics::gauge!("lunchrush_psp_breaker_state").set(BreakerState::Closed.gauge());
        Self {
            inner: Mutex::new(Inner {
                state: BreakerState::Closed,
                recent: VecDeque::new(),
                recent_failures: 0,
                failures_in_row: 0,
                open_until: now,
                open_for: options.breaker_open,
                probe_out: false,
            }),
            options,
            denied: AtomicU64::new(0),
            probes: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // No .await while the lock is held: a std Mutex is right here.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Asks to call the provider now.
    pub fn permit(&self) -> Permit {
        let permit = self.decide();
        match permit {
            Permit::Denied => {
                metrics::counter!("lunchrush_psp_calls_denied_total").increment(1);
                self.denied.fetch_add(1, Ordering::Relaxed)
            }
            Permit::Probe => self.probes.fetch_add(1, Ordering::Relaxed),
            Permit::Call => 0,
        };
        permit
    }

    /// Calls refused since start.
    pub fn denied(&self) -> u64 {
        self.denied.load(Ordering::Relaxed)
    }

    /// Probes let out since start.
    pub fn probes(&self) -> u64 {
        self.probes.load(Ordering::Relaxed)
    }

    fn decide(&self) -> Permit {
        let mut inner = self.lock();
        let now = Instant::now();
        match inner.state {
            BreakerState::Closed => Permit::Call,
            BreakerState::Open if now < inner.open_until => Permit::Denied,
            BreakerState::Open | BreakerState::HalfOpen => {
                if inner.state == BreakerState::Open {
                    Self::move_to(
                        &mut inner,
                        BreakerState::HalfOpen,
                        "cool-down passed; probing",
                    );
                }
                if inner.probe_out {
                    Permit::Denied
                } else {
                    inner.probe_out = true;
                    Permit::Probe
                }
            }
        }
    }

    /// Records a call's outcome (`failed`: no answer, or a 5xx).
    pub fn record(&self, permit: Permit, failed: bool) {
        let mut inner = self.lock();
        let now = Instant::now();
        if permit == Permit::Probe {
            inner.probe_out = false;
            if failed {
                inner.open_for = (inner.open_for * 2).min(self.options.breaker_open_max);
                inner.open_until = now + inner.open_for;
                Self::move_to(&mut inner, BreakerState::Open, "the probe failed");
            } else {
                inner.open_for = self.options.breaker_open;
                inner.recent.clear();
                inner.recent_failures = 0;
                inner.failures_in_row = 0;
                Self::move_to(&mut inner, BreakerState::Closed, "the probe succeeded");
            }
            return;
        }
        if inner.state != BreakerState::Closed {
            // A call let out before the breaker opened answers late.
            return;
        }
        inner.failures_in_row = if failed { inner.failures_in_row + 1 } else { 0 };
        let horizon = now.checked_sub(self.options.breaker_window).unwrap_or(now);
        while inner
            .recent
            .front()
            .is_some_and(|(at, _)| *at < horizon || inner.recent.len() >= WINDOW_CALLS_MAX)
        {
            if let Some((_, true)) = inner.recent.pop_front() {
                inner.recent_failures -= 1;
            }
        }
        inner.recent.push_back((now, failed));
        inner.recent_failures += usize::from(failed);
        let calls = inner.recent.len() as u32;
        let failures = inner.recent_failures as u32;
        let reason = if inner.failures_in_row >= self.options.breaker_failures {
            Some(format!("{} failed calls in a row", inner.failures_in_row))
        } else if calls >= self.options.breaker_calls_min
            && f64::from(failures) >= self.options.breaker_failure_rate * f64::from(calls)
        {
            Some(format!(
                "{failures} of {calls} calls failed in {:?}",
                self.options.breaker_window
            ))
        } else {
            None
        };
        if let Some(reason) = reason {
            inner.open_for = self.options.breaker_open;
            inner.open_until = now + inner.open_for;
            Self::move_to(&mut inner, BreakerState::Open, &reason);
        }
    }

    /// Gives a probe permit back unused (the call never went out).
    pub fn release(&self, permit: Permit) {
        if permit == Permit::Probe {
            self.lock().probe_out = false;
        }
    }

    fn move_to(inner: &mut Inner, to: BreakerState, reason: &str) {
        if inner.state == to {
            return;
        }
        let from = inner.state;
        inner.state = to;
        metrics::gauge!("lunchrush_psp_breaker_state").set(to.gauge());
        metrics::counter!("lunchrush_psp_breaker_transitions_total", "to" => to.as_str())
            .increment(1);
        match to {
            BreakerState::Open => tracing::warn!(from = from.as_str(), %reason,
                retry_in = ?inner.open_for, "Payment provider circuit opened."),
            _ => tracing::info!(from = from.as_str(), to = to.as_str(), %reason,
                "Payment provider circuit changed."),
        }
    }

    pub fn state(&self) -> BreakerState {
        self.lock().state
    }

    /// Whether calls are being kept in right now: open, and its cool-down
    /// not over. (Past the cool-down the next call is the probe, so the
    /// edge must let orders in again for there to be one.)
    pub fn is_refusing(&self) -> bool {
        let inner = self.lock();
        inner.state == BreakerState::Open && Instant::now() < inner.open_until
    }

    /// While open: how long until the next probe may go out.
    pub fn retry_in(&self) -> Option<Duration> {
        let inner = self.lock();
        match inner.state {
            BreakerState::Closed => None,
            _ => Some(inner.open_until.saturating_duration_since(Instant::now())),
        }
    }

    /// Answered calls per second over the span the remembered calls cover
    /// (the provider's recent pace as this process saw it); `None` without
    /// enough evidence (fewer than [`PACE_CALLS_MIN`] calls, or under a
    /// second of them).
    pub fn answered_per_sec(&self) -> Option<f64> {
        let inner = self.lock();
        let (first, last) = (inner.recent.front()?.0, inner.recent.back()?.0);
        let span = last.duration_since(first);
        let answered = inner.recent.len() - inner.recent_failures;
        (inner.recent.len() >= PACE_CALLS_MIN && span >= Duration::from_secs(1))
            .then(|| answered as f64 / span.as_secs_f64())
    }

    pub fn options(&self) -> &PspOptions {
        &self.options
    }
}

/// Which share of the pacer a call may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallKind {
    /// Authorize, capture, lookups, listing.
    Forward,
    /// Void and refund: never starved by forward calls.
    Compensation,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    rate: f64,
    at: Instant,
}

impl Bucket {
    fn new(rate: f64) -> Self {
        Self {
            // A burst of a tenth of a second.
            tokens: (rate / 10.0).max(1.0),
            rate,
            at: Instant::now(),
        }
    }

    fn refill(&mut self, now: Instant) {
        let burst = (self.rate / 10.0).max(1.0);
        self.tokens =
            (self.tokens + now.duration_since(self.at).as_secs_f64() * self.rate).min(burst);
        self.at = now;
    }

    /// Takes a token, or says how long until one is there.
    fn take(&mut self, now: Instant) -> Result<(), Duration> {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / self.rate))
        }
    }
}

/// Holds provider calls under `max_rate`: forward calls get
/// `1 - compensation_share` of it, compensations their own share first and
/// then whatever forward calls left.
#[derive(Debug)]
pub struct Pacer {
    buckets: Option<Mutex<(Bucket, Bucket)>>,
}

/// A call waits at most this long per turn before looking again.
const PACER_NAP_MAX: Duration = Duration::from_millis(50);

impl Pacer {
    pub fn new(options: &PspOptions) -> Self {
        let buckets = (options.max_rate > 0.0).then(|| {
            let share = options.compensation_share.clamp(0.0, 0.9);
            Mutex::new((
                Bucket::new(options.max_rate * (1.0 - share)),
                Bucket::new((options.max_rate * share).max(1.0)),
            ))
        });
        Self { buckets }
    }

    /// Waits for this call's turn.
    pub async fn wait(&self, kind: CallKind) {
        let Some(buckets) = &self.buckets else {
            return;
        };
        loop {
            let wait = {
                // No .await while the lock is held.
                let mut guard = buckets.lock().unwrap_or_else(|e| e.into_inner());
                let (forward, compensation) = &mut *guard;
                let now = Instant::now();
                match kind {
                    CallKind::Forward => forward.take(now),
                    CallKind::Compensation => compensation.take(now).or_else(|_| forward.take(now)),
                }
            };
            match wait {
                Ok(()) => return,
                Err(wait) => tokio::time::sleep(wait.min(PACER_NAP_MAX)).await,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> PspOptions {
        PspOptions {
            breaker_failures: 3,
            breaker_calls_min: 100,
            breaker_open: Duration::from_millis(50),
            breaker_open_max: Duration::from_millis(200),
            ..PspOptions::default()
        }
    }

    fn call(breaker: &Breaker, failed: bool) -> Permit {
        let permit = breaker.permit();
        if permit != Permit::Denied {
            breaker.record(permit, failed);
        }
        permit
    }

    /// Closed → open after N failures in a row → half-open after the
    /// cool-down, one probe at a time → closed when the probe succeeds.
    #[test]
    fn the_breaker_opens_probes_and_closes() {
        let breaker = Breaker::new(options());
        for _ in 0..2 {
            assert_eq!(call(&breaker, true), Permit::Call);
        }
        assert_eq!(breaker.state(), BreakerState::Closed);
        assert_eq!(
            call(&breaker, false),
            Permit::Call,
            "a success resets the run"
        );
        for _ in 0..3 {
            call(&breaker, true);
        }
        assert_eq!(breaker.state(), BreakerState::Open);
        assert!(breaker.is_refusing());
        assert_eq!(breaker.permit(), Permit::Denied);
        assert!(breaker.retry_in().unwrap() <= Duration::from_millis(50));
        std::thread::sleep(Duration::from_millis(60));
        assert!(
            !breaker.is_refusing(),
            "past the cool-down, orders may come for a probe"
        );
        let probe = breaker.permit();
        assert_eq!(probe, Permit::Probe);
        assert_eq!(breaker.state(), BreakerState::HalfOpen);
        assert_eq!(breaker.permit(), Permit::Denied, "one probe at a time");
        breaker.record(probe, false);
        assert_eq!(breaker.state(), BreakerState::Closed);
        assert_eq!(breaker.permit(), Permit::Call);
    }

    /// A failed probe reopens with the cool-down doubled (up to its cap).
    #[test]
    fn a_failed_probe_reopens_for_longer() {
        let breaker = Breaker::new(options());
        for _ in 0..3 {
            call(&breaker, true);
        }
        std::thread::sleep(Duration::from_millis(60));
        let probe = breaker.permit();
        breaker.record(probe, true);
        assert_eq!(breaker.state(), BreakerState::Open);
        let wait = breaker.retry_in().unwrap();
        assert!(
            wait > Duration::from_millis(60) && wait <= Duration::from_millis(100),
            "{wait:?}"
        );
    }

    /// The failure rate over the window opens it too, without a run.
    #[test]
    fn a_failure_rate_opens_it() {
        let breaker = Breaker::new(PspOptions {
            breaker_failures: 1_000,
            breaker_calls_min: 10,
            breaker_failure_rate: 0.5,
            ..options()
        });
        for i in 0..9 {
            call(&breaker, i % 2 == 0);
        }
        assert_eq!(breaker.state(), BreakerState::Closed);
        call(&breaker, true);
        assert_eq!(breaker.state(), BreakerState::Open);
    }

    /// The pacer holds calls under the rate; compensations have a share of
    /// their own that forward calls cannot take.
    #[tokio::test]
    async fn the_pacer_holds_the_rate_and_keeps_a_share() {
        let pacer = Pacer::new(&PspOptions {
            max_rate: 200.0,
            compensation_share: 0.5,
            ..PspOptions::default()
        });
        let started = Instant::now();
        for _ in 0..30 {
            pacer.wait(CallKind::Forward).await;
        }
        // 10 of burst, then 100/s: 20 more take ~200 ms.
        assert!(
            started.elapsed() >= Duration::from_millis(150),
            "{:?}",
            started.elapsed()
        );
        let started = Instant::now();
        pacer.wait(CallKind::Compensation).await;
        assert!(
            started.elapsed() < Duration::from_millis(20),
            "compensations were not starved"
        );
    }
}
