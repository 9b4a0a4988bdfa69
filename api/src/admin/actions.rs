//! What an operator can do, each through the same scripts and handlers as
//! the workers and reconciliation (batch lane), each recorded:
//!
//! - `GET /v1/admin/stuck`: sagas unsettled longer than an SLA, with the
//!   step they wait on; `POST /v1/admin/sagas`: re-drive or compensate a
//!   batch of them, each refused (`order_moved`) if it changed since the
//!   operator saw it.
//! - `GET /v1/admin/dead-letters`: dead letters and parked compensations;
//!   `POST …/{kind}/{partition}/{id}/retry` and `…/resolve`.
//! - `GET /v1/admin/actions`: the audit trail.

use std::time::Duration;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use engine::domain::{Order, OrderStatus};
use engine::engine::{Actor, Outcome, Refusal};
use engine::keys::Lane;
use engine::ops::{Letter, LetterKind};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::AppState;
use crate::extract::{Json, Path, Query};
use crate::problem::Problem;

/// Orders one saga action may name.
pub const SAGA_BATCH_MAX: usize = 100;
/// Stuck sagas listed at most.
pub const STUCK_LISTED_MAX: u64 = 500;
/// The SLA when the operator gives none.
pub const STUCK_SLA_DEFAULT: Duration = Duration::from_secs(60);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StuckQuery {
    pub older_than: Option<String>,
    pub limit: Option<u64>,
}

pub async fn stuck(
    State(state): State<AppState>,
    _admin: super::Admin,
    Query(query): Query<StuckQuery>,
) -> Result<Response, Problem> {
    let sla = super::orders::duration("older_than", query.older_than.as_deref())?
        .unwrap_or(STUCK_SLA_DEFAULT);
    let limit = query.limit.unwrap_or(100).clamp(1, STUCK_LISTED_MAX);
    let sagas = engine::ops::stuck(&state.engine, sla, limit).await?;
    Ok(axum::Json(json!({"older_than_s": sla.as_secs_f64(), "sagas": sagas})).into_response())
}

/// What to do to a batch of sagas.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SagaAction {
    /// Take the missing step again (authorize, approve, capture, void, refund).
    Redrive,
    /// Give up on the order: reject it (stock back) or cancel it (refund).
    Compensate,
}

impl SagaAction {
    fn as_str(self) -> &'static str {
        match self {
            SagaAction::Redrive => "redrive",
            SagaAction::Compensate => "compensate",
        }
    }
}

/// An order as the operator saw it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Seen {
    pub id: uuid::Uuid,
    pub version: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SagasBody {
    pub action: SagaAction,
    pub orders: Vec<Seen>,
    pub reason: Option<String>,
}

pub async fn sagas(
    State(state): State<AppState>,
    admin: super::Admin,
    Json(body): Json<SagasBody>,
) -> Result<Response, Problem> {
    let reason = super::reason(body.reason.as_deref())?;
    if body.orders.is_empty() || body.orders.len() > SAGA_BATCH_MAX {
        return Err(Problem::new(
            axum::http::StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_batch",
            "Invalid batch",
            format!("name between 1 and {SAGA_BATCH_MAX} orders"),
        ));
    }
    let mut results = Vec::new();
    for seen in &body.orders {
        let (outcome, code, detail, after) = act_on(&state, body.action, seen, &reason).await;
        let recorded = super::record(
            &state.postgres,
            super::Record {
                actor: &admin.0.sub,
                action: body.action.as_str(),
                subject: seen.id.to_string(),
                order: Some(seen.id),
                reason: &reason,
                outcome,
                detail: detail.clone(),
            },
        )
        .await;
        // The action stands either way; the operator is told it went unrecorded.
        let audit = recorded.err().map(|problem| problem.detail);
        results.push(json!({
            "order_id": seen.id,
            "outcome": outcome,
            "code": code,
            "detail": detail,
            "status": after.as_ref().map(|o| o.status),
            "payment": after.as_ref().map(|o| o.pay),
            "version": after.as_ref().map(|o| o.version),
            "audit_error": audit,
        }));
    }
    Ok(axum::Json(json!({"action": body.action.as_str(), "results": results})).into_response())
}

type Acted = (&'static str, Option<&'static str>, String, Option<Order>);

/// One order of a batch: refused if it moved, else the action.
async fn act_on(state: &AppState, action: SagaAction, seen: &Seen, reason: &str) -> Acted {
    let refused = |code, detail: String, order| ("refused", Some(code), detail, order);
    let order = match state.engine.order(&seen.id).await {
        Ok(Some(order)) => order,
        Ok(None) => {
            return refused(
                "order_not_live",
                "the order is not in live state".into(),
                None,
            );
        }
        Err(error) => return ("failed", None, error.to_string(), None),
    };
    if order.version != seen.version {
        let detail = format!(
            "the order moved (version {} → {}); look again",
            seen.version, order.version
        );
        return refused("order_moved", detail, Some(order));
    }
    if engine::domain::is_allowed_pair(order.status, order.pay) {
        return refused(
            "order_settled",
            "the order is at rest; nothing to re-drive or compensate here \
             (a settled order is cancelled through POST /v1/orders/{id}/cancel)"
                .into(),
            Some(order),
        );
    }
    let done = match action {
        SagaAction::Redrive => redrive(state, &order).await,
        SagaAction::Compensate => compensate(state, &order, reason).await,
    };
    let after = state.engine.order(&seen.id).await.ok().flatten();
    match done {
        Ok(detail) => ("done", None, detail, after),
        Err(("order_moved", detail)) => refused("order_moved", detail, after),
        Err(("not_redrivable", detail)) => refused("not_redrivable", detail, after),
        Err(("unchanged", detail)) => ("unchanged", None, detail, after),
        Err((_, detail)) => ("failed", None, detail, after),
    }
}

fn reconciler(state: &AppState) -> engine::reconcile::Reconciler {
    engine::reconcile::Reconciler::new(state.engine.clone(), state.console.psp.clone())
        .with_archive(std::sync::Arc::new(crate::archive::PgArchive::new(
            state.postgres.clone(),
        )))
}

/// Takes the one step the saga waits on, and nothing else: the payment
/// hop the order owes (authorize, capture, void, refund), or the approval
/// of an auto-approving restaurant. Never gives the order up: an order that
/// waits on a restaurant's own decision is refused (`not_redrivable`), for
/// the operator to compensate instead.
async fn redrive(state: &AppState, order: &Order) -> Result<String, (&'static str, String)> {
    let step = engine::ops::waiting_on(order);
    let failed = |e: String| ("failed", e);
    if engine::saga::payment_action(order).is_some() {
        engine::saga::drive_payment(&state.engine, &state.console.psp, &order.id, Lane::Batch)
            .await
            .map_err(|e| failed(e.to_string()))?;
    } else if order.status == OrderStatus::Paid && order.decision.is_empty() {
        engine::saga::auto_approve(&state.engine, &order.id, Lane::Batch)
            .await
            .map_err(|e| failed(e.to_string()))?;
    } else {
        return Err((
            "not_redrivable",
            format!("the order waits on {step}; nothing to take again: compensate instead"),
        ));
    }
    let after = state
        .engine
        .order(&order.id)
        .await
        .map_err(|e| failed(e.to_string()))?;
    match after {
        Some(o) if o.version == order.version => Err((
            "not_redrivable",
            format!(
                "the order still waits on {step} ({} / {}): the restaurant decides, or compensate",
                o.status, o.pay
            ),
        )),
        Some(o) => Ok(format!("{step} → {} / {}", o.status, o.pay)),
        None => Ok(format!("{step} → gone")),
    }
}

/// Rejects an order not yet approved (stock back, authorization voided) or
/// cancels an approved one (refund), at the version the operator saw.
async fn compensate(
    state: &AppState,
    order: &Order,
    reason: &str,
) -> Result<String, (&'static str, String)> {
    let early = matches!(order.status, OrderStatus::Pending | OrderStatus::Paid)
        && order.decision != "approved";
    let transition = if early {
        state
            .engine
            .release(
                order,
                engine::domain::RejectReason::Operator,
                Some(order.version),
                Lane::Batch,
            )
            .await
    } else {
        state
            .engine
            .cancel(order, Actor::Admin, Some(order.version), Lane::Batch)
            .await
    }
    .map_err(|e| ("failed", e.to_string()))?;
    match transition.outcome {
        Outcome::Applied => {}
        Outcome::Unchanged => {
            return Err(("unchanged", "the order was already rejected".into()));
        }
        Outcome::Refused(Refusal::Stale) => {
            return Err(("order_moved", "the order moved while the action ran".into()));
        }
        Outcome::Refused(detail) => {
            return Err(("refused", format!("the script refused: {detail}")));
        }
        Outcome::NotFound => return Err(("refused", "the order is gone".into())),
    }
    // The payment hop voids or refunds; done here too so the operator sees it.
    let paid =
        engine::saga::drive_payment(&state.engine, &state.console.psp, &order.id, Lane::Batch)
            .await;
    let payment = paid.map_or_else(
        |e| format!("; payment left to the workers: {e}"),
        |()| String::new(),
    );
    let verb = if early { "rejected" } else { "cancelled" };
    tracing::info!(order = %order.id, reason, "An operator compensated an order.");
    Ok(format!("{verb}{payment}"))
}

pub async fn letters(
    State(state): State<AppState>,
    _admin: super::Admin,
) -> Result<Response, Problem> {
    let letters = engine::ops::letters(&state.engine).await?;
    Ok(axum::Json(json!({"letters": letters})).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoteBody {
    pub reason: Option<String>,
}

async fn find_letter(
    state: &AppState,
    kind: &str,
    partition: u16,
    id: &str,
) -> Result<Letter, Problem> {
    let not_found = || {
        Problem::not_found(
            "letter_not_found",
            format!("no unresolved {kind} entry {partition}/{id} (already retried or resolved?)"),
        )
    };
    let kind = LetterKind::parse(kind).ok_or_else(not_found)?;
    engine::ops::letter(&state.engine, kind, partition, id)
        .await?
        .ok_or_else(not_found)
}

fn letter_subject(letter: &Letter) -> String {
    let kind = if letter.kind == LetterKind::Dead {
        "dead"
    } else {
        "parked"
    };
    format!("{kind}/{}/{}", letter.partition, letter.id)
}

pub async fn retry(
    State(state): State<AppState>,
    admin: super::Admin,
    Path((kind, partition, id)): Path<(String, u16, String)>,
    Json(body): Json<NoteBody>,
) -> Result<Response, Problem> {
    let reason = super::reason(body.reason.as_deref())?;
    let letter = find_letter(&state, &kind, partition, &id).await?;
    let tried = retry_letter(&state, &letter).await;
    let resolved = match &tried {
        Ok(_) => engine::ops::resolve_letter(&state.engine, &letter).await?,
        Err(_) => false,
    };
    let (outcome, detail) = match &tried {
        Ok(detail) => ("done", detail.clone()),
        Err(detail) => ("failed", detail.clone()),
    };
    super::record(
        &state.postgres,
        super::Record {
            actor: &admin.0.sub,
            action: "retry",
            subject: letter_subject(&letter),
            order: letter.order,
            reason: &reason,
            outcome,
            detail: detail.clone(),
        },
    )
    .await?;
    match tried {
        Ok(_) => Ok(axum::Json(
            json!({"outcome": "done", "resolved": resolved, "detail": detail, "letter": letter}),
        )
        .into_response()),
        Err(detail) => Err(Problem::conflict(
            "retry_failed",
            format!("the retry failed and the entry stays: {detail}"),
        )),
    }
}

/// Runs the handler that gave up on the entry again (batch lane); for a
/// parked compensation, settles its order as reconciliation does.
async fn retry_letter(state: &AppState, letter: &Letter) -> Result<String, String> {
    if letter.kind == LetterKind::Parked {
        let order = letter.order.ok_or("the entry names no order")?;
        let (after, steps) = reconciler(state)
            .settle(&order)
            .await
            .map_err(|e| e.to_string())?;
        return match after {
            Some(o) if !engine::domain::is_allowed_pair(o.status, o.pay) => Err(format!(
                "the order is still unsettled ({} / {}) after: {steps}",
                o.status, o.pay
            )),
            _ => Ok(format!("settled: {steps}")),
        };
    }
    let role = engine::saga::Role::of_group(&letter.group).ok_or_else(|| {
        format!(
            "entries of group {:?} are not retried from here",
            letter.group
        )
    })?;
    let fields = letter
        .fields
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let event = engine::events::Event::parse(&letter.source, &letter.source_id, fields)
        .map_err(|e| e.to_string())?;
    let notifier = state.console.notifier.as_ref();
    engine::saga::handle_event(
        &state.engine,
        &state.console.psp,
        notifier,
        role,
        &event,
        false,
        Lane::Batch,
    )
    .await
    .map_err(|e| e.to_string())?;
    Ok(format!(
        "{} handled by the {} handler",
        event.kind, letter.group
    ))
}

pub async fn resolve(
    State(state): State<AppState>,
    admin: super::Admin,
    Path((kind, partition, id)): Path<(String, u16, String)>,
    Json(body): Json<NoteBody>,
) -> Result<Response, Problem> {
    let reason = super::reason(body.reason.as_deref())?;
    let letter = find_letter(&state, &kind, partition, &id).await?;
    let resolved = engine::ops::resolve_letter(&state.engine, &letter).await?;
    super::record(
        &state.postgres,
        super::Record {
            actor: &admin.0.sub,
            action: "resolve",
            subject: letter_subject(&letter),
            order: letter.order,
            reason: &reason,
            outcome: if resolved { "done" } else { "unchanged" },
            detail: letter.reason.clone(),
        },
    )
    .await?;
    Ok(
        axum::Json(json!({"outcome": "done", "resolved": resolved, "letter": letter}))
            .into_response(),
    )
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionsQuery {
    pub order: Option<uuid::Uuid>,
    pub limit: Option<i64>,
}

pub async fn actions(
    State(state): State<AppState>,
    _admin: super::Admin,
    Query(query): Query<ActionsQuery>,
) -> Result<Response, Problem> {
    let limit = query.limit.unwrap_or(100).clamp(1, 1_000);
    let rows: Vec<Value> = super::recorded(&state.postgres, query.order, limit)
        .await
        .map_err(|e| {
            Problem::unavailable(
                "archive_unavailable",
                format!("the audit trail did not answer: {e}"),
            )
        })?;
    Ok(axum::Json(json!({"actions": rows})).into_response())
}
