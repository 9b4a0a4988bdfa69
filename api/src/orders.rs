//! Orders.
//!
//! ```text
//! POST /v1/orders                   customer (Idempotency-Key)   -> 202 {order_id, status, total}
//! GET  /v1/orders/{id}              owner, its restaurant, admin
//! POST /v1/orders/{id}/accept       its restaurant, admin
//! POST /v1/orders/{id}/reject       its restaurant, admin        {reason}
//! POST /v1/orders/{id}/dispatch     its restaurant, admin
//! POST /v1/orders/{id}/confirm      owner, admin
//! POST /v1/orders/{id}/cancel       owner (before approval), admin (any time)
//! GET  /v1/orders/{id}/events       owner, its restaurant, admin
//! ```
//!
//! A customer asking for another customer's order gets 404 (its existence
//! is not revealed); a restaurant asking for another restaurant's gets 403.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use engine::domain::{Decision, Order, OrderStatus, PlaceOrder};
use engine::engine::{Actor, Outcome, PlaceError, Refusal, Transition};
use engine::keys::Lane;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::AppState;
use crate::auth::Role;
use crate::extract::{Auth, Json, Path};
use crate::problem::Problem;

/// A restaurant's rejection note is at most this long.
pub const REJECT_REASON_LEN_MAX: usize = 500;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlaceBody {
    restaurant_id: String,
    items: Vec<LineBody>,
    expected_total: i64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LineBody {
    item: String,
    qty: i64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RejectBody {
    reason: String,
}

/// Milliseconds since the epoch as RFC 3339.
pub(crate) fn rfc3339(ms: i64) -> String {
    rfc3339_time(UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64))
}

/// A time as RFC 3339, to the millisecond.
pub(crate) fn rfc3339_time(time: SystemTime) -> String {
    humantime::format_rfc3339_millis(time).to_string()
}

/// The order as the API shows it.
pub fn order_json(order: &Order) -> Value {
    json!({
        "order_id": order.id,
        "customer": order.customer,
        "restaurant_id": order.restaurant,
        "items": order.lines.iter().map(|l| json!({"item": l.item, "qty": l.qty, "price": l.price})).collect::<Vec<_>>(),
        "total": order.total,
        "status": order.status,
        "reason": if order.reason.is_empty() { Value::Null } else { json!(order.reason) },
        "payment": { "status": order.pay },
        "created_at": rfc3339(order.created_ms),
        "updated_at": rfc3339(order.updated_ms),
    })
}

fn place_problem(error: PlaceError) -> Problem {
    let items = |items: &[String]| json!(items);
    match error {
        PlaceError::Invalid(invalid) => invalid.into(),
        PlaceError::IdempotencyConflict { .. } => Problem::unprocessable(
            "idempotency_conflict",
            "this Idempotency-Key was already used with a different request",
        ),
        PlaceError::RestaurantNotFound(rid) => Problem::unprocessable(
            "unknown_restaurant",
            format!("restaurant {rid} does not exist"),
        ),
        PlaceError::RestaurantClosed(rid) => {
            Problem::conflict("restaurant_closed", format!("restaurant {rid} is closed"))
        }
        PlaceError::ItemNotFound(list) => Problem::unprocessable(
            "unknown_item",
            format!("unknown items: {}", list.join(", ")),
        )
        .with("items", items(&list)),
        PlaceError::ItemUnavailable(list) => Problem::conflict(
            "item_unavailable",
            format!("not available now: {}", list.join(", ")),
        )
        .with("items", items(&list)),
        PlaceError::OutOfStock(list) => {
            Problem::conflict("out_of_stock", format!("out of stock: {}", list.join(", ")))
                .with("items", items(&list))
        }
        PlaceError::LimitExceeded(list) => Problem::conflict(
            "limit_exceeded",
            format!("over the per-customer limit: {}", list.join(", ")),
        )
        .with("items", items(&list)),
        PlaceError::PriceChanged { current_total } => Problem::conflict(
            "price_changed",
            format!("prices changed: the current total is {current_total}"),
        )
        .with("current_total", json!(current_total)),
        PlaceError::Engine(e) => e.into(),
    }
}

/// A placement Redis refused tells the budget at once, so the next ones
/// are refused before they reach Redis.
fn note_refused(state: &AppState, error: &PlaceError) {
    if let PlaceError::Engine(engine::EngineError::Redis(e)) = error
        && let Some(refusal) = engine::budget::Refusal::of(e)
    {
        state.engine.budget().note_refused(refusal, e);
    }
}

pub async fn place(
    State(state): State<AppState>,
    auth: Auth,
    headers: HeaderMap,
    Json(body): Json<PlaceBody>,
) -> Result<Response, Problem> {
    auth.require(&[Role::Customer], "place orders")?;
    if headers.get_all("idempotency-key").iter().nth(1).is_some() {
        return Err(Problem::bad_request(
            "invalid_idempotency_key",
            "send the Idempotency-Key header once: which of several keys applies is ambiguous",
        ));
    }
    let key = headers
        .get("idempotency-key")
        .ok_or_else(|| {
            Problem::bad_request(
                "idempotency_key_missing",
                "the Idempotency-Key header is required",
            )
        })?
        .to_str()
        .map_err(|_| {
            Problem::bad_request(
                "invalid_idempotency_key",
                "the Idempotency-Key must be printable ASCII",
            )
        })?;
    let lines: Vec<(String, i64)> = body.items.into_iter().map(|l| (l.item, l.qty)).collect();
    let request = PlaceOrder::parse(
        &auth.0.sub,
        &body.restaurant_id,
        &lines,
        body.expected_total,
        key,
    )?;
    if let Some(refusal) = state.engine.budget().refusal() {
        // As below: a retry of an order already placed gets its first answer.
        if let Some(placed) = state.engine.replay(&request).await? {
            return Ok(placed_response(&placed));
        }
        let problem = crate::problem::refused(refusal);
        metrics::counter!("lunchrush_placements_refused_total", "code" => problem.code)
            .increment(1);
        return Err(problem);
    }
    if let Some((why, retry_after)) = state.payments_unavailable() {
        // A retry of an order already placed still gets its first answer:
        // the order exists and will be paid once the provider is back.
        if let Some(placed) = state.engine.replay(&request).await? {
            return Ok(placed_response(&placed));
        }
        metrics::counter!("lunchrush_placements_refused_total", "code" => "payment_unavailable")
            .increment(1);
        return Err(Problem::unavailable("payment_unavailable", why).retry_after(retry_after));
    }
    let started = Instant::now();
    let result = state.engine.place_order(&request).await;
    let took = started.elapsed();
    metrics::histogram!("lunchrush_placement_seconds").record(took.as_secs_f64());
    state.console.placements.record(took);
    // Only restaurants that exist enter the hot-spot table: an id a request
    // merely named must not become a metric series.
    let restaurant_exists = !matches!(
        result,
        Err(PlaceError::RestaurantNotFound(_)
            | PlaceError::Invalid(_)
            | PlaceError::IdempotencyConflict { .. }
            | PlaceError::Engine(_))
    );
    if restaurant_exists {
        state.hot_spots.record(&request.restaurant);
    }
    let placed = result.map_err(|error| {
        note_refused(&state, &error);
        let problem = place_problem(error);
        metrics::counter!("lunchrush_placements_refused_total", "code" => problem.code)
            .increment(1);
        problem
    })?;
    Ok(placed_response(&placed))
}

/// 202 with the order placed (or the first answer again, for a retry).
fn placed_response(placed: &engine::engine::Placed) -> Response {
    (
        StatusCode::ACCEPTED,
        axum::Json(
            json!({"order_id": placed.order_id, "status": "PENDING", "total": placed.total}),
        ),
    )
        .into_response()
}

/// Where an order was found: live in Redis, or retired to the archive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source {
    Live,
    Archive,
}

/// The order, live or retired (see [`crate::archive`]).
pub(crate) async fn find_order(
    state: &AppState,
    id: &uuid::Uuid,
) -> Result<Option<(Order, Source)>, Problem> {
    if let Some(order) = state.engine.order(id).await? {
        return Ok(Some((order, Source::Live)));
    }
    match crate::archive::retired_order(&state.postgres, id).await {
        Ok(found) => Ok(found.map(|order| (order, Source::Archive))),
        Err(error) => {
            tracing::warn!(%error, order = %id, "Archive unavailable for an order read.");
            Err(Problem::unavailable(
                "archive_unavailable",
                "this order is not live and the archive did not answer; retry",
            ))
        }
    }
}

/// The refusal of an action on an order that left live state.
fn retired_problem(order: &Order) -> Problem {
    Problem::conflict(
        "order_retired",
        format!(
            "order {} settled as {} / {} and was retired from live state to the archive; \
             it can still be read, but no longer changed (keep --live-retention as long as \
             your refund window)",
            order.id, order.status, order.pay
        ),
    )
    .with("order_status", json!(order.status.as_str()))
}

/// Loads an order the caller may see: 404 for a stranger's order (or a bad
/// id), 403 for another restaurant's.
async fn visible_order(
    state: &AppState,
    auth: &Auth,
    id: &str,
) -> Result<(Order, Source), Problem> {
    let not_found = || Problem::not_found("order_not_found", format!("order {id} does not exist"));
    let id: uuid::Uuid = id.parse().map_err(|_| not_found())?;
    let (order, source) = find_order(state, &id).await?.ok_or_else(not_found)?;
    match auth.role() {
        Role::Admin => Ok((order, source)),
        Role::Customer if order.customer == auth.0.sub => Ok((order, source)),
        Role::Customer => Err(not_found()),
        Role::Restaurant => {
            auth.require_restaurant(&order.restaurant)?;
            Ok((order, source))
        }
    }
}

/// What every `/v1/orders/{id}…` route starts from: the state, the
/// caller's token, then the order id the path names (a request without a
/// valid token is refused before its path is read, as with separate
/// extractors in that order).
pub struct OrderCall {
    state: AppState,
    auth: Auth,
    id: String,
}

impl FromRequestParts<AppState> for OrderCall {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Problem> {
        let auth = Auth::from_request_parts(parts, state).await?;
        let Path(id) = Path::<String>::from_request_parts(parts, state).await?;
        let state = state.clone();
        Ok(Self { state, auth, id })
    }
}

/// An order an action may change: live, not retired.
async fn live_order(state: &AppState, auth: &Auth, id: &str) -> Result<Order, Problem> {
    match visible_order(state, auth, id).await? {
        (order, Source::Live) => Ok(order),
        (order, Source::Archive) => Err(retired_problem(&order)),
    }
}

pub async fn get(OrderCall { state, auth, id }: OrderCall) -> Result<Response, Problem> {
    let (order, _) = visible_order(&state, &auth, &id).await?;
    Ok(axum::Json(order_json(&order)).into_response())
}

/// Answers a transition: the order as it now is, or why it was refused.
async fn transition_response(
    state: &AppState,
    order: &Order,
    t: Transition,
) -> Result<Response, Problem> {
    match t.outcome {
        Outcome::Applied | Outcome::Unchanged => {
            let order = state.engine.order(&order.id).await?.ok_or_else(|| {
                Problem::not_found(
                    "order_not_found",
                    format!("order {} does not exist", order.id),
                )
            })?;
            Ok(axum::Json(order_json(&order)).into_response())
        }
        // Retired between the read and the action.
        Outcome::NotFound => match find_order(state, &order.id).await? {
            Some((order, Source::Archive)) => Err(retired_problem(&order)),
            _ => Err(Problem::not_found(
                "order_not_found",
                format!("order {} does not exist", order.id),
            )),
        },
        Outcome::Refused(detail) => {
            let status = t.status.map(|s| s.as_str()).unwrap_or("unknown");
            let (code, text) = match detail {
                Refusal::NotPaid => (
                    "not_paid",
                    format!("the order is {status}: its payment is not authorized yet"),
                ),
                Refusal::AlreadyDecided => (
                    "already_decided",
                    format!("the restaurant already {} this order", t.decision),
                ),
                Refusal::Finished => ("order_finished", format!("the order is {status}")),
                Refusal::TooLate => (
                    "too_late",
                    format!("the order is {status}: only an admin can cancel it now"),
                ),
                Refusal::Illegal => ("illegal_transition", format!("not possible from {status}")),
                Refusal::Stale => (
                    "concurrent_update",
                    "the order changed meanwhile; retry".to_string(),
                ),
                Refusal::RestaurantClosed => {
                    ("restaurant_closed", "the restaurant is closed".to_string())
                }
                Refusal::Manual => (
                    "refused",
                    "the restaurant answers its orders itself".to_string(),
                ),
                Refusal::Decided => (
                    "refused",
                    "the restaurant accepted: the capture settles this order".to_string(),
                ),
            };
            Err(Problem::conflict(code, text).with("order_status", json!(status)))
        }
    }
}

/// Which of the order actions a route performs.
#[derive(Debug, Clone, Copy)]
enum Action {
    Accept,
    Dispatch,
    Confirm,
    Cancel,
}

impl Action {
    /// Who may do it (besides admins), and how the refusal reads.
    fn allowed(self) -> (Role, &'static str) {
        match self {
            Action::Accept => (Role::Restaurant, "accept orders"),
            Action::Dispatch => (Role::Restaurant, "dispatch orders"),
            Action::Confirm => (Role::Customer, "confirm purchases"),
            Action::Cancel => (Role::Customer, "cancel orders"),
        }
    }
}

/// Checks the role, loads the order the token may see, runs the transition
/// and answers with the order as it now is.
async fn act(state: &AppState, auth: &Auth, id: &str, action: Action) -> Result<Response, Problem> {
    let (role, what) = action.allowed();
    auth.require(&[role, Role::Admin], what)?;
    let order = live_order(state, auth, id).await?;
    let actor = match (auth.is_admin(), role) {
        (true, _) => Actor::Admin,
        (false, Role::Restaurant) => Actor::Restaurant,
        (false, _) => Actor::Customer,
    };
    let engine = &state.engine;
    let t = match action {
        Action::Accept => {
            engine
                .decide(&order, Decision::Approve, "", None, false, Lane::Online)
                .await?
        }
        Action::Dispatch => {
            engine
                .advance(&order, OrderStatus::Dispatched, actor, None, Lane::Online)
                .await?
        }
        Action::Confirm => {
            engine
                .advance(&order, OrderStatus::Confirmed, actor, None, Lane::Online)
                .await?
        }
        Action::Cancel => engine.cancel(&order, actor, None, Lane::Online).await?,
    };
    transition_response(state, &order, t).await
}

pub async fn accept(OrderCall { state, auth, id }: OrderCall) -> Result<Response, Problem> {
    act(&state, &auth, &id, Action::Accept).await
}

pub async fn reject(
    OrderCall { state, auth, id }: OrderCall,
    Json(body): Json<RejectBody>,
) -> Result<Response, Problem> {
    auth.require(&[Role::Restaurant, Role::Admin], "reject orders")?;
    let reason = body.reason.trim();
    if reason.is_empty() || reason.chars().count() > REJECT_REASON_LEN_MAX {
        return Err(Problem::unprocessable(
            "invalid_field",
            format!("reason: must be 1 to {REJECT_REASON_LEN_MAX} characters"),
        ));
    }
    // Line breaks and tabs are text; other control characters (NUL above
    // all, which PostgreSQL's jsonb refuses) would forge logs or stall the
    // archive on the event that carries the note.
    if reason
        .chars()
        .any(|c| c.is_control() && c != '\n' && c != '\t')
    {
        return Err(Problem::unprocessable(
            "invalid_field",
            "reason: must not contain control characters other than line breaks and tabs",
        ));
    }
    let order = live_order(&state, &auth, &id).await?;
    let t = state
        .engine
        .decide(&order, Decision::Reject, reason, None, false, Lane::Online)
        .await?;
    transition_response(&state, &order, t).await
}

pub async fn dispatch(OrderCall { state, auth, id }: OrderCall) -> Result<Response, Problem> {
    act(&state, &auth, &id, Action::Dispatch).await
}

pub async fn confirm(OrderCall { state, auth, id }: OrderCall) -> Result<Response, Problem> {
    act(&state, &auth, &id, Action::Confirm).await
}

pub async fn cancel(OrderCall { state, auth, id }: OrderCall) -> Result<Response, Problem> {
    act(&state, &auth, &id, Action::Cancel).await
}

/// The order's events: the archive (PostgreSQL) plus the live streams,
/// merged by sequence number — no gap, no duplicate. Entries the archiver
/// already trimmed from Redis come from the archive; entries not yet
/// archived from the streams.
pub async fn events(OrderCall { state, auth, id }: OrderCall) -> Result<Response, Problem> {
    let (order, _) = visible_order(&state, &auth, &id).await?;
    let list = timeline(&state, &order).await?;
    Ok(axum::Json(json!({"order_id": order.id, "events": list})).into_response())
}

/// Every event of `order` in sequence: the live streams, then the archive
/// for what the streams no longer hold.
pub(crate) async fn timeline(state: &AppState, order: &Order) -> Result<Vec<Value>, Problem> {
    let mut by_seq: std::collections::BTreeMap<u64, Value> = std::collections::BTreeMap::new();
    for e in state.engine.order_events(order).await? {
        by_seq.insert(
            e.seq,
            json!({
                "seq": e.seq,
                "type": e.kind,
                "at": rfc3339(e.ts_ms),
                "stream": e.stream,
                "entry_id": e.id,
                "saga_id": e.saga,
                "data": serde_json::from_str::<Value>(&e.data).unwrap_or(Value::Null),
            }),
        );
    }
    if (by_seq.len() as u64) < order.seq {
        match archived_events(state, order).await {
            Ok(rows) => {
                for row in rows {
                    by_seq
                        .entry(row["seq"].as_u64().unwrap_or(0))
                        .or_insert(row);
                }
            }
            Err(error) => {
                tracing::warn!(%error, order = %order.id, "Archive unavailable for an events read.")
            }
        }
    }
    let complete = by_seq.keys().copied().eq(1..=order.seq);
    if !complete {
        return Err(Problem::unavailable(
            "archive_unavailable",
            "some of this order's events are only in the archive, which did not answer; retry",
        ));
    }
    Ok(by_seq.into_values().collect())
}

async fn archived_events(state: &AppState, order: &Order) -> anyhow::Result<Vec<Value>> {
    let client = state.postgres.get().await?;
    let month = engine::ids::created_at(&order.id);
    let rows = client
        .query(
            "SELECT seq, type, event_time, stream, entry_id, saga_id::text, payload FROM saga_events \
             WHERE order_id = $1 AND part_time = $2 ORDER BY seq",
            &[&order.id, &month],
        )
        .await?;
    Ok(rows.iter().map(archived_event).collect())
}

/// An archived event as the timeline shows it.
fn archived_event(row: &tokio_postgres::Row) -> Value {
    json!({
        "seq": row.get::<_, i64>(0),
        "type": row.get::<_, String>(1),
        "at": rfc3339_time(row.get(2)),
        "stream": row.get::<_, String>(3),
        "entry_id": row.get::<_, String>(4),
        "saga_id": row.get::<_, Option<String>>(5),
        "data": row.get::<_, tokio_postgres::types::Json<Value>>(6).0,
    })
}
