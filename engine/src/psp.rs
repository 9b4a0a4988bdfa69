//! The payment-provider client: JSON over HTTP (hyper), the order id as the
//! idempotency key, a deadline on every call and bounded retries.
//!
//! **The outcome of a call that timed out is unknown.** The provider may have
//! charged and then failed to answer. The client never assumes: before
//! retrying it looks the payment up by its key, and only the provider's
//! answer decides.
//!
//! Every clone shares one [`Breaker`] and one [`Pacer`]: no call goes out
//! while the circuit is open ([`PspError::CircuitOpen`] at once), and calls
//! are held under `--psp-max-rate` with a share kept for compensations.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::{Deserialize, Serialize};

use crate::breaker::{Breaker, CallKind, Permit, PspOptions};

/// One call's deadline. The simulator's "timeout after charge" hangs longer.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// Attempts per operation before the caller is told the provider is unavailable.
pub const ATTEMPTS_MAX: u32 = 4;
/// First retry delay; doubles each attempt.
pub const BACKOFF_FIRST: Duration = Duration::from_millis(20);

/// A payment as the provider reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProviderPayment {
    pub key: String,
    #[serde(rename = "ref")]
    pub reference: String,
    pub amount: i64,
    /// authorized | declined | captured | voided | refunded
    pub state: String,
}

/// Why a provider call did not produce an answer.
#[derive(Debug, thiserror::Error)]
pub enum PspError {
    /// Retries exhausted: the outcome is unknown; try again later.
    #[error("payment provider unavailable after {ATTEMPTS_MAX} attempts: {0}")]
    Unavailable(String),
    /// The operation is impossible from the payment's current state.
    #[error("payment {} is {}: the operation is not possible", .0.key, .0.state)]
    Conflict(ProviderPayment),
    #[error("payment provider knows no payment {0}")]
    NotFound(String),
    #[error("payment provider answered something unexpected: {0}")]
    Protocol(String),
    /// The circuit is open: nothing was sent. Try again after `retry_in`.
    #[error("payment provider circuit open; next probe in {retry_in:?}")]
    CircuitOpen { retry_in: Duration },
}

enum Attempt {
    Answer(StatusCode, Bytes),
    /// Timeout, connection error or 5xx: nothing known.
    Unknown(String),
    /// The breaker let nothing out.
    Denied,
}

/// Sends `request` and reads the answer, all within `deadline`: the status
/// and the body (or why the body did not read), or why no answer came.
/// Shared with the webhook notifier.
pub(crate) async fn exchange(
    http: &Client<HttpConnector, Full<Bytes>>,
    request: Request<Full<Bytes>>,
    deadline: Duration,
) -> Result<(StatusCode, Result<Bytes, String>), String> {
    let call = async {
        let response = http.request(request).await.map_err(|e| e.to_string())?;
        let status = response.status();
        let body = response.into_body().collect().await;
        Ok((
            status,
            body.map(|b| b.to_bytes()).map_err(|e| e.to_string()),
        ))
    };
    tokio::time::timeout(deadline, call)
        .await
        .map_err(|_| format!("no answer within {deadline:?}"))?
}

/// A provider client; cheap to clone (one connection pool).
#[derive(Clone)]
pub struct PspClient {
    base: String,
    http: Client<HttpConnector, Full<Bytes>>,
    breaker: std::sync::Arc<Breaker>,
    pacer: std::sync::Arc<crate::breaker::Pacer>,
}

impl std::fmt::Debug for PspClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PspClient")
            .field("base", &self.base)
            .finish()
    }
}

#[derive(Serialize)]
struct AuthorizeBody<'a> {
    key: &'a str,
    amount: i64,
    /// A sale: captured in the same call once authorized.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    capture: bool,
}

/// One page of the provider's payments in key order.
#[derive(Debug, Clone, Deserialize)]
pub struct PaymentPage {
    pub payments: Vec<ProviderPayment>,
    pub next: Option<String>,
}

impl PspClient {
    /// A client with the default breaker and pacer.
    pub fn new(base_url: &str) -> Self {
        Self::with_options(base_url, PspOptions::default())
    }

    pub fn with_options(base_url: &str, options: PspOptions) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(CALL_TIMEOUT));
        Self {
            base: base_url.trim_end_matches('/').to_string(),
            http: Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(30))
                .build(connector),
            pacer: std::sync::Arc::new(crate::breaker::Pacer::new(&options)),
            breaker: std::sync::Arc::new(Breaker::new(options)),
        }
    }

    /// The provider's base URL.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// The breaker every clone of this client shares.
    pub fn breaker(&self) -> &std::sync::Arc<Breaker> {
        &self.breaker
    }

    fn circuit_open(&self) -> PspError {
        PspError::CircuitOpen {
            retry_in: self.breaker.retry_in().unwrap_or_default(),
        }
    }

    /// One call, if the breaker lets it out, at the pacer's pace; its
    /// outcome is recorded by the breaker.
    async fn once(
        &self,
        kind: CallKind,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Attempt {
        let permit = self.breaker.permit();
        if permit == Permit::Denied {
            return Attempt::Denied;
        }
        self.pacer.wait(kind).await;
        let attempt = self.send(method, path, body).await;
        self.breaker
            .record(permit, matches!(attempt, Attempt::Unknown(_)));
        attempt
    }

    async fn send(&self, method: Method, path: &str, body: Option<Vec<u8>>) -> Attempt {
        let request = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .expect("a well-formed request");
        match exchange(&self.http, request, CALL_TIMEOUT).await {
            Err(error) | Ok((_, Err(error))) => Attempt::Unknown(error),
            Ok((status, _)) if status.is_server_error() => {
                Attempt::Unknown(format!("provider answered {status}"))
            }
            Ok((status, Ok(bytes))) => Attempt::Answer(status, bytes),
        }
    }

    fn parse(status: StatusCode, bytes: &Bytes, key: &str) -> Result<ProviderPayment, PspError> {
        let payment = || {
            serde_json::from_slice::<ProviderPayment>(bytes)
                .map_err(|e| PspError::Protocol(format!("{status}: {e}")))
        };
        match status {
            StatusCode::OK => payment(),
            StatusCode::CONFLICT => Err(PspError::Conflict(payment()?)),
            StatusCode::NOT_FOUND => Err(PspError::NotFound(key.to_string())),
            other => Err(PspError::Protocol(format!(
                "{other}: {}",
                String::from_utf8_lossy(bytes)
            ))),
        }
    }

    /// Looks a payment up by its key (`None`: the provider never saw it).
    pub async fn lookup(&self, key: &str) -> Result<Option<ProviderPayment>, PspError> {
        let mut last = String::new();
        for attempt in 0..ATTEMPTS_MAX {
            match self
                .once(
                    CallKind::Forward,
                    Method::GET,
                    &format!("/v1/payments/{key}"),
                    None,
                )
                .await
            {
                Attempt::Denied => return Err(self.circuit_open()),
                Attempt::Answer(status, bytes) => {
                    return match Self::parse(status, &bytes, key) {
                        Ok(payment) => Ok(Some(payment)),
                        Err(PspError::NotFound(_)) => Ok(None),
                        Err(other) => Err(other),
                    };
                }
                Attempt::Unknown(reason) => last = reason,
            }
            tokio::time::sleep(BACKOFF_FIRST * 2u32.pow(attempt)).await;
        }
        Err(PspError::Unavailable(last))
    }

    /// Runs one idempotent operation with retries. After an unknown outcome
    /// it asks the provider (`lookup`) and stops as soon as the payment is in
    /// `done_states`.
    async fn operate(
        &self,
        kind: CallKind,
        key: &str,
        path: &str,
        body: Option<Vec<u8>>,
        done_states: &[&str],
    ) -> Result<ProviderPayment, PspError> {
        let mut last = String::new();
        for attempt in 0..ATTEMPTS_MAX {
            if attempt > 0 {
                tokio::time::sleep(BACKOFF_FIRST * 2u32.pow(attempt - 1)).await;
                // The previous attempt's outcome is unknown: ask, never assume.
                if let Ok(Some(payment)) = self.lookup(key).await
                    && done_states.contains(&payment.state.as_str())
                {
                    metrics::counter!("lunchrush_psp_unknown_outcomes_resolved_total").increment(1);
                    return Ok(payment);
                }
            }
            match self.once(kind, Method::POST, path, body.clone()).await {
                Attempt::Denied => return Err(self.circuit_open()),
                Attempt::Answer(status, bytes) => return Self::parse(status, &bytes, key),
                Attempt::Unknown(reason) => {
                    metrics::counter!("lunchrush_psp_unknown_outcomes_total").increment(1);
                    last = reason;
                }
            }
        }
        Err(PspError::Unavailable(last))
    }

    /// Authorizes `amount` for `key` (authorized or declined).
    pub async fn authorize(&self, key: &str, amount: i64) -> Result<ProviderPayment, PspError> {
        self.authorize_with(key, amount, false).await
    }

    /// A sale: authorizes `amount` for `key` and captures it in the same
    /// call (captured or declined). For an order whose restaurant approves
    /// automatically: one provider call instead of two. Idempotent like the
    /// others: a payment the provider already holds is answered as it is.
    pub async fn sale(&self, key: &str, amount: i64) -> Result<ProviderPayment, PspError> {
        self.authorize_with(key, amount, true).await
    }

    async fn authorize_with(
        &self,
        key: &str,
        amount: i64,
        capture: bool,
    ) -> Result<ProviderPayment, PspError> {
        let body = AuthorizeBody {
            key,
            amount,
            capture,
        };
        let body = serde_json::to_vec(&body).expect("serializable");
        self.operate(
            CallKind::Forward,
            key,
            "/v1/payments/authorize",
            Some(body),
            &["authorized", "declined", "captured", "voided", "refunded"],
        )
        .await
    }

    pub async fn capture(&self, key: &str) -> Result<ProviderPayment, PspError> {
        self.operate(
            CallKind::Forward,
            key,
            &format!("/v1/payments/{key}/capture"),
            None,
            &["captured", "refunded"],
        )
        .await
    }

    pub async fn void(&self, key: &str) -> Result<ProviderPayment, PspError> {
        self.operate(
            CallKind::Compensation,
            key,
            &format!("/v1/payments/{key}/void"),
            None,
            &["voided"],
        )
        .await
    }

    pub async fn refund(&self, key: &str) -> Result<ProviderPayment, PspError> {
        self.operate(
            CallKind::Compensation,
            key,
            &format!("/v1/payments/{key}/refund"),
            None,
            &["refunded"],
        )
        .await
    }

    /// One page of the provider's payments, in key order, after `after`.
    pub async fn list(&self, after: Option<&str>, limit: usize) -> Result<PaymentPage, PspError> {
        let path = match after {
            Some(after) => format!("/v1/payments?after={after}&limit={limit}"),
            None => format!("/v1/payments?limit={limit}"),
        };
        let mut last = String::new();
        for attempt in 0..ATTEMPTS_MAX {
            match self.once(CallKind::Forward, Method::GET, &path, None).await {
                Attempt::Denied => return Err(self.circuit_open()),
                Attempt::Answer(StatusCode::OK, bytes) => {
                    return serde_json::from_slice(&bytes)
                        .map_err(|e| PspError::Protocol(e.to_string()));
                }
                Attempt::Answer(status, bytes) => {
                    return Err(PspError::Protocol(format!(
                        "{status}: {}",
                        String::from_utf8_lossy(&bytes)
                    )));
                }
                Attempt::Unknown(reason) => last = reason,
            }
            tokio::time::sleep(BACKOFF_FIRST * 2u32.pow(attempt)).await;
        }
        Err(PspError::Unavailable(last))
    }
}
