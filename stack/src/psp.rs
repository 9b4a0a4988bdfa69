//! The payment-provider simulator (`lunchrush psp-sim`): a JSON-over-HTTP
//! provider with its own append-only ledger on disk and fault injection.
//! It is the outside truth reconciliation checks against, so it behaves like
//! a real provider: every operation is idempotent per payment key, and a
//! "timeout after charge" performs the charge and then does not answer in
//! time.
//!
//! ```text
//! POST /v1/payments/authorize      {"key": "<order id>", "amount": 12000}
//!                                  (+ "capture": true: a sale, captured at once)
//! POST /v1/payments/{key}/capture  | /void | /refund
//! GET  /v1/payments/{key}          the payment, or 404
//! GET  /v1/payments?after=K&limit=N  payments in key order (for reconciliation)
//! GET  /v1/faults, PUT /v1/faults  the fault-injection settings
//! ```
//! Replies: `200 {"key","ref","amount","state"}` with state one of
//! `authorized`, `declined`, `captured`, `voided`, `refunded`; `409` with the
//! same body when the operation is not possible from the current state;
//! `503` for an injected failure (nothing happened).

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};

/// A listing page holds at most this many payments.
const LIST_LIMIT_MAX: usize = 1_000;

/// Fault injection; every rate is a probability in 0..=1.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Faults {
    /// Share of authorizations declined.
    pub decline_rate: f64,
    /// Share of requests answered 503 without doing anything.
    pub error_rate: f64,
    /// Share of requests that do their work, then answer only after `hang_ms`.
    pub timeout_after_charge_rate: f64,
    /// Added to every request before it is processed.
    pub latency_ms: u64,
    /// How long a "timeout after charge" keeps the client waiting.
    pub hang_ms: u64,
}

/// A payment as the provider sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payment {
    pub key: String,
    #[serde(rename = "ref")]
    pub reference: String,
    pub amount: i64,
    pub state: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct LedgerLine {
    seq: u64,
    ts_ms: u128,
    op: String,
    #[serde(flatten)]
    payment: Payment,
}

struct Ledger {
    payments: BTreeMap<String, Payment>,
    file: std::fs::File,
    seq: u64,
}

/// The simulator's state, shared by its handlers.
#[derive(Clone)]
pub struct PspSim {
    ledger: Arc<Mutex<Ledger>>,
    faults: Arc<Mutex<Faults>>,
    path: PathBuf,
    stats: Arc<Stats>,
}

/// Requests the simulator received, and how many it failed on purpose.
#[derive(Debug, Default)]
struct Stats {
    received: std::sync::atomic::AtomicU64,
    failed: std::sync::atomic::AtomicU64,
}

/// `GET /v1/stats`: requests received and failed (by injected faults) so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimStats {
    pub received: u64,
    pub failed: u64,
}

impl std::fmt::Debug for PspSim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PspSim")
            .field("ledger", &self.path)
            .finish()
    }
}

impl PspSim {
    /// Opens (or creates) the ledger at `path` and replays it.
    pub fn open(path: &Path, faults: Faults) -> std::io::Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let mut payments = BTreeMap::new();
        let mut seq = 0;
        if let Ok(file) = std::fs::File::open(path) {
            for line in std::io::BufReader::new(file).lines() {
                // A torn last line (crash mid-write) is skipped: its operation
                // was never answered, so the client retries it.
                if let Ok(entry) = serde_json::from_str::<LedgerLine>(&line?) {
                    seq = entry.seq;
                    payments.insert(entry.payment.key.clone(), entry.payment);
                }
            }
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        Ok(Self {
            ledger: Arc::new(Mutex::new(Ledger {
                payments,
                file,
                seq,
            })),
            faults: Arc::new(Mutex::new(faults)),
            path: path.to_path_buf(),
            stats: Arc::default(),
        })
    }

    pub fn set_faults(&self, faults: Faults) {
        *self.faults.lock().unwrap() = faults;
    }

    pub fn faults(&self) -> Faults {
        self.faults.lock().unwrap().clone()
    }

    /// Payment requests received and failed on purpose so far.
    pub fn stats(&self) -> SimStats {
        use std::sync::atomic::Ordering::Relaxed;
        SimStats {
            received: self.stats.received.load(Relaxed),
            failed: self.stats.failed.load(Relaxed),
        }
    }

    /// Every payment, in key order (tests compare it with the engine).
    pub fn payments(&self) -> Vec<Payment> {
        self.ledger
            .lock()
            .unwrap()
            .payments
            .values()
            .cloned()
            .collect()
    }

    pub fn payment(&self, key: &str) -> Option<Payment> {
        self.ledger.lock().unwrap().payments.get(key).cloned()
    }

    /// Applies `op` to payment `key`; `Err` carries the payment as it is
    /// when the operation is impossible from its state.
    fn apply(&self, key: &str, op: &str, amount: Option<i64>) -> Result<Payment, Option<Payment>> {
        let decline = {
            let faults = self.faults.lock().unwrap();
            rand::random::<f64>() < faults.decline_rate
        };
        let mut ledger = self.ledger.lock().unwrap();
        let current = ledger.payments.get(key).cloned();
        let next_state = match (op, current.as_ref().map(|p| p.state.as_str())) {
            ("authorize" | "sale", Some(_)) => return Ok(current.unwrap()),
            ("authorize", None) if !decline => "authorized",
            ("sale", None) if !decline => "captured",
            ("authorize" | "sale", None) => "declined",
            (_, None) => return Err(None),
            ("capture", Some("captured"))
            | ("void", Some("voided"))
            | ("refund", Some("refunded")) => {
                return Ok(current.unwrap());
            }
            ("capture", Some("authorized")) => "captured",
            ("void", Some("authorized")) => "voided",
            ("refund", Some("captured")) => "refunded",
            _ => return Err(current),
        };
        ledger.seq += 1;
        let payment = Payment {
            key: key.to_string(),
            reference: current
                .map(|p| p.reference)
                .unwrap_or_else(|| format!("psp_{:x}", ledger.seq)),
            amount: amount
                .unwrap_or_else(|| ledger.payments.get(key).map(|p| p.amount).unwrap_or(0)),
            state: next_state.to_string(),
        };
        let line = LedgerLine {
            seq: ledger.seq,
            ts_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis())
                .unwrap_or(0),
            op: op.to_string(),
            payment: payment.clone(),
        };
        let mut text = serde_json::to_string(&line).expect("ledger lines serialize");
        text.push('\n');
        // Written before the answer: what the client is told is on disk (in
        // the OS cache; the simulator survives its own restarts, not power loss).
        ledger
            .file
            .write_all(text.as_bytes())
            .and_then(|_| ledger.file.flush())
            .expect("the ledger is writable");
        ledger.payments.insert(key.to_string(), payment.clone());
        Ok(payment)
    }

    /// The router, for tests that serve it themselves.
    pub fn router(&self) -> axum::Router {
        axum::Router::new()
            .route("/v1/payments/authorize", post(authorize))
            .route("/v1/payments/{key}/{op}", post(operate))
            .route("/v1/payments/{key}", get(lookup))
            .route("/v1/payments", get(list))
            .route("/v1/faults", get(get_faults).put(put_faults))
            .route("/v1/stats", get(get_stats))
            .with_state(self.clone())
    }

    /// Serves on `listener` until `shutdown` resolves.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        axum::serve(listener, self.router())
            .with_graceful_shutdown(shutdown)
            .await
    }

    /// Binds 127.0.0.1:0 and serves in a background task; returns the base
    /// URL. The task ends with the runtime.
    pub async fn spawn_local(self) -> std::io::Result<String> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let address: SocketAddr = listener.local_addr()?;
        tokio::spawn(self.serve(listener, std::future::pending()));
        Ok(format!("http://{address}"))
    }
}

/// Injected latency and failures before an operation; `Some` = answer now.
async fn before(sim: &PspSim) -> Option<Response> {
    use std::sync::atomic::Ordering::Relaxed;
    sim.stats.received.fetch_add(1, Relaxed);
    let faults = sim.faults();
    if faults.latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(faults.latency_ms)).await;
    }
    if rand::random::<f64>() < faults.error_rate {
        sim.stats.failed.fetch_add(1, Relaxed);
        return Some((StatusCode::SERVICE_UNAVAILABLE, "injected failure").into_response());
    }
    None
}

/// The "timeout after charge" fault: the work is done, the answer is late.
async fn after(sim: &PspSim) {
    let faults = sim.faults();
    if rand::random::<f64>() < faults.timeout_after_charge_rate {
        tokio::time::sleep(Duration::from_millis(faults.hang_ms.max(1))).await;
    }
}

fn answer(result: Result<Payment, Option<Payment>>) -> Response {
    match result {
        Ok(payment) => (StatusCode::OK, Json(payment)).into_response(),
        Err(Some(payment)) => (StatusCode::CONFLICT, Json(payment)).into_response(),
        Err(None) => (StatusCode::NOT_FOUND, "no such payment").into_response(),
    }
}

#[derive(Deserialize)]
struct AuthorizeBody {
    key: String,
    amount: i64,
    #[serde(default)]
    capture: bool,
}

async fn authorize(State(sim): State<PspSim>, Json(body): Json<AuthorizeBody>) -> Response {
    if let Some(early) = before(&sim).await {
        return early;
    }
    if body.key.is_empty() || body.amount < 0 {
        return (
            StatusCode::UNPROCESSABLE_ENTITY,
            "key and a non-negative amount",
        )
            .into_response();
    }
    let op = if body.capture { "sale" } else { "authorize" };
    let result = sim.apply(&body.key, op, Some(body.amount));
    after(&sim).await;
    answer(result)
}

async fn operate(
    State(sim): State<PspSim>,
    UrlPath((key, op)): UrlPath<(String, String)>,
) -> Response {
    if !matches!(op.as_str(), "capture" | "void" | "refund") {
        return (StatusCode::NOT_FOUND, "unknown operation").into_response();
    }
    if let Some(early) = before(&sim).await {
        return early;
    }
    let result = sim.apply(&key, &op, None);
    after(&sim).await;
    answer(result)
}

async fn lookup(State(sim): State<PspSim>, UrlPath(key): UrlPath<String>) -> Response {
    // An outage fails lookups too (latency and errors; a lookup charges nothing).
    if let Some(early) = before(&sim).await {
        return early;
    }
    answer(sim.payment(&key).ok_or(None))
}

#[derive(Deserialize)]
struct ListQuery {
    after: Option<String>,
    limit: Option<usize>,
}

#[derive(Serialize)]
struct ListPage {
    payments: Vec<Payment>,
    next: Option<String>,
}

async fn list(State(sim): State<PspSim>, Query(query): Query<ListQuery>) -> Json<ListPage> {
    let limit = query.limit.unwrap_or(100).clamp(1, LIST_LIMIT_MAX);
    let ledger = sim.ledger.lock().unwrap();
    let range = match &query.after {
        Some(after) => ledger.payments.range::<String, _>((
            std::ops::Bound::Excluded(after.clone()),
            std::ops::Bound::Unbounded,
        )),
        None => ledger.payments.range::<String, _>(..),
    };
    let payments: Vec<Payment> = range.take(limit).map(|(_, p)| p.clone()).collect();
    let next = (payments.len() == limit)
        .then(|| payments.last().map(|p| p.key.clone()))
        .flatten();
    Json(ListPage { payments, next })
}

async fn get_stats(State(sim): State<PspSim>) -> Json<SimStats> {
    Json(sim.stats())
}

async fn get_faults(State(sim): State<PspSim>) -> Json<Faults> {
    Json(sim.faults())
}

async fn put_faults(State(sim): State<PspSim>, Json(faults): Json<Faults>) -> Json<Faults> {
    sim.set_faults(faults);
    Json(sim.faults())
}
