//! `/v1/admin/…`: the JSON behind the operations console (`/ops/`), usable
//! without it. Admin tokens only; every action is recorded in
//! `operator_actions` (who, when, what, why, outcome) and refused, not
//! forced, when the order moved since the operator looked.
//!
//! - [`overview`]: rates, latencies, the saga funnel, lag, timers, archive.
//! - [`orders`]: search, and one order's whole story.
//! - [`actions`]: stuck sagas (re-drive, compensate), the operator queues
//!   (retry, resolve), the audit trail.

pub mod actions;
pub mod orders;
pub mod overview;

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::extract::Auth;
use crate::problem::Problem;

/// What the admin endpoints need beyond the API's state.
pub struct Console {
    /// The provider, for its view of a payment and for re-drives.
    pub psp: engine::psp::PspClient,
    /// Where re-driven timers send their notices.
    pub notifier: Arc<dyn engine::notify::Notifier>,
    /// This process's placement latencies.
    pub placements: overview::LatencyWindow,
    /// The last overview, shared by every open console for [`OVERVIEW_TTL`].
    pub(crate) overview: tokio::sync::Mutex<Option<(Instant, Value)>>,
}

/// How long one overview answers every console that asks.
pub const OVERVIEW_TTL: Duration = Duration::from_secs(1);

impl Console {
    pub fn new(psp: engine::psp::PspClient, notifier: Arc<dyn engine::notify::Notifier>) -> Self {
        Self {
            psp,
            notifier,
            placements: overview::LatencyWindow::default(),
            overview: tokio::sync::Mutex::new(None),
        }
    }
}

/// An admin's token: only admins reach the console's data (401 without a
/// valid token, 403 for any other role).
pub struct Admin(pub crate::auth::Claims);

impl axum::extract::FromRequestParts<crate::AppState> for Admin {
    type Rejection = Problem;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &crate::AppState,
    ) -> Result<Self, Problem> {
        let auth =
            <Auth as axum::extract::FromRequestParts<_>>::from_request_parts(parts, state).await?;
        if !auth.is_admin() {
            return Err(Problem::forbidden(format!(
                "the operations console is for admins; this token is a {}'s",
                auth.role().as_str()
            )));
        }
        Ok(Admin(auth.0))
    }
}

/// The reason an action needs: trimmed, non-empty, at most
/// [`REASON_LEN_MAX`] characters.
pub fn reason(text: Option<&str>) -> Result<String, Problem> {
    let text = text.unwrap_or_default().trim();
    if text.is_empty() {
        return Err(Problem::new(
            axum::http::StatusCode::UNPROCESSABLE_ENTITY,
            "reason_required",
            "A reason is required",
            "every operator action records why it was taken: give a non-empty `reason`",
        ));
    }
    if text.chars().count() > REASON_LEN_MAX {
        return Err(Problem::new(
            axum::http::StatusCode::UNPROCESSABLE_ENTITY,
            "reason_too_long",
            "Reason too long",
            format!("a reason has at most {REASON_LEN_MAX} characters"),
        ));
    }
    Ok(text.to_string())
}

/// The longest reason an action records.
pub const REASON_LEN_MAX: usize = 1_000;

/// One row of `operator_actions`.
pub struct Record<'a> {
    pub actor: &'a str,
    pub action: &'a str,
    pub subject: String,
    pub order: Option<uuid::Uuid>,
    pub reason: &'a str,
    pub outcome: &'a str,
    pub detail: String,
}

/// Records an action. An action whose record cannot be written is reported
/// as such to the operator (the change itself stands: it went through the
/// same scripts as any other).
pub async fn record(pool: &deadpool_postgres::Pool, row: Record<'_>) -> Result<(), Problem> {
    let unavailable = |error: String| {
        tracing::error!(%error, action = row.action, subject = %row.subject, "An operator action was not recorded.");
        Problem::unavailable(
            "audit_unavailable",
            format!("the action was taken but its record could not be written: {error}"),
        )
    };
    let client = pool.get().await.map_err(|e| unavailable(e.to_string()))?;
    client
        .execute(
            "INSERT INTO operator_actions (actor, action, subject, order_id, reason, outcome, detail) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
            &[&row.actor, &row.action, &row.subject, &row.order, &row.reason, &row.outcome, &row.detail],
        )
        .await
        .map_err(|e| unavailable(e.to_string()))?;
    tracing::info!(actor = row.actor, action = row.action, subject = %row.subject,
        outcome = row.outcome, "Operator action.");
    Ok(())
}

/// Recorded actions, newest first: all, or one order's.
pub async fn recorded(
    pool: &deadpool_postgres::Pool,
    order: Option<uuid::Uuid>,
    limit: i64,
) -> anyhow::Result<Vec<Value>> {
    let client = pool.get().await?;
    let rows = client
        .query(
            "SELECT id, at, actor, action, subject, order_id, reason, outcome, detail \
             FROM operator_actions WHERE ($1::uuid IS NULL OR order_id = $1) \
             ORDER BY id DESC LIMIT $2",
            &[&order, &limit],
        )
        .await?;
    Ok(rows.iter().map(recorded_action).collect())
}

/// One row of `operator_actions` as the audit trail shows it.
fn recorded_action(row: &tokio_postgres::Row) -> Value {
    json!({
        "id": row.get::<_, i64>(0),
        "at": crate::orders::rfc3339_time(row.get(1)),
        "actor": row.get::<_, String>(2),
        "action": row.get::<_, String>(3),
        "subject": row.get::<_, String>(4),
        "order_id": row.get::<_, Option<uuid::Uuid>>(5),
        "reason": row.get::<_, String>(6),
        "outcome": row.get::<_, String>(7),
        "detail": row.get::<_, String>(8),
    })
}

/// Milliseconds since the epoch as RFC 3339.
pub fn at(ms: i64) -> String {
    crate::orders::rfc3339(ms)
}
