//! Notifications to customers, through a [`Notifier`]: a log notifier (the
//! default) and an HTTP webhook notifier. Each (order, kind) is delivered
//! once in effect: the order worker checks the send record before sending
//! and writes it after (`record_notification`); the webhook carries an
//! `Idempotency-Key` so a resend after an unknown outcome is harmless to the
//! receiver; a failed send is retried with backoff, then dead-lettered by the
//! worker — never dropped.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;

/// One send's deadline.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(2);
/// Attempts per send before the worker is told it failed.
pub const SEND_ATTEMPTS_MAX: u32 = 3;
/// First retry delay; doubles each attempt.
pub const SEND_BACKOFF_FIRST: Duration = Duration::from_millis(50);

/// What is sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Notification {
    pub order_id: uuid::Uuid,
    pub customer: String,
    pub kind: String,
    pub message: String,
    /// Stable per (order, kind): `<order>:<kind>`.
    pub idempotency_key: String,
}

impl Notification {
    /// The purchase-confirmation notice.
    pub fn confirm_notice(
        order_id: uuid::Uuid,
        customer: &str,
        auto_confirm_after: Duration,
    ) -> Self {
        Self {
            order_id,
            customer: customer.to_string(),
            kind: "confirm_notice".into(),
            message: format!(
                "Your order {order_id} was delivered. Please confirm the purchase; it is confirmed \
                 automatically in {}.",
                humantime::format_duration(auto_confirm_after)
            ),
            idempotency_key: format!("{order_id}:confirm_notice"),
        }
    }
}

/// Why a send failed.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("notification not delivered after {attempts} attempts: {reason}")]
    Failed { attempts: u32, reason: String },
    #[error("notification refused by the receiver: {0}")]
    Refused(String),
}

pub type SendFuture<'a> = Pin<Box<dyn Future<Output = Result<u32, NotifyError>> + Send + 'a>>;

/// A way to reach customers. `send` returns the attempts it took.
pub trait Notifier: Send + Sync {
    fn channel(&self) -> &'static str;
    fn send<'a>(&'a self, notification: &'a Notification) -> SendFuture<'a>;
}

/// Writes each notification to the log (the default channel).
#[derive(Debug, Default, Clone, Copy)]
pub struct LogNotifier;

impl Notifier for LogNotifier {
    fn channel(&self) -> &'static str {
        "log"
    }

    fn send<'a>(&'a self, n: &'a Notification) -> SendFuture<'a> {
        Box::pin(async move {
            tracing::info!(order = %n.order_id, customer = %n.customer, kind = %n.kind,
                key = %n.idempotency_key, message = %n.message, "Notification sent.");
            Ok(1)
        })
    }
}

/// POSTs each notification as JSON to a URL, with `Idempotency-Key`.
#[derive(Clone)]
pub struct WebhookNotifier {
    url: String,
    http: Client<HttpConnector, Full<Bytes>>,
}

impl WebhookNotifier {
    pub fn new(url: &str) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(SEND_TIMEOUT));
        Self {
            url: url.to_string(),
            http: Client::builder(TokioExecutor::new()).build(connector),
        }
    }

    async fn once(&self, n: &Notification) -> Result<hyper::StatusCode, String> {
        let body = serde_json::to_vec(n).expect("notifications serialize");
        let request = Request::builder()
            .method(Method::POST)
            .uri(&self.url)
            .header("content-type", "application/json")
            .header("idempotency-key", &n.idempotency_key)
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| e.to_string())?;
        // The answer's body, read or not, says nothing more than its status.
        let (status, _body) = crate::psp::exchange(&self.http, request, SEND_TIMEOUT).await?;
        Ok(status)
    }
}

impl std::fmt::Debug for WebhookNotifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookNotifier")
            .field("url", &self.url)
            .finish()
    }
}

impl Notifier for WebhookNotifier {
    fn channel(&self) -> &'static str {
        "webhook"
    }

    fn send<'a>(&'a self, n: &'a Notification) -> SendFuture<'a> {
        Box::pin(async move {
            let mut reason = String::new();
            for attempt in 1..=SEND_ATTEMPTS_MAX {
                match self.once(n).await {
                    Ok(status) if status.is_success() => return Ok(attempt),
                    Ok(status) if status.is_client_error() && status.as_u16() != 429 => {
                        return Err(NotifyError::Refused(status.to_string()));
                    }
                    Ok(status) => reason = status.to_string(),
                    Err(error) => reason = error,
                }
                if attempt < SEND_ATTEMPTS_MAX {
                    tokio::time::sleep(SEND_BACKOFF_FIRST * 2u32.pow(attempt - 1)).await;
                }
            }
            Err(NotifyError::Failed {
                attempts: SEND_ATTEMPTS_MAX,
                reason,
            })
        })
    }
}
