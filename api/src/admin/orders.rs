//! `GET /v1/admin/orders` (search) and `GET /v1/admin/orders/{id}` (one
//! order's whole story: its events from Redis and the archive, its timers,
//! notifications, the provider's view of its payment beside ours, and what
//! operators did to it).

use std::time::Duration;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use engine::domain::{Order, OrderStatus};
use futures::StreamExt;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::AppState;
use crate::extract::{Path, Query};
use crate::orders::{Source, find_order, order_json, timeline};
use crate::problem::Problem;

/// Rows a search answers at most.
pub const SEARCH_ROWS_MAX: i64 = 200;
/// Orders a search reads at once (each may take a pooled connection).
const SEARCH_READS_IN_FLIGHT: usize = 8;

/// The search's filters; all optional, combined with AND.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Search {
    pub id: Option<String>,
    pub customer: Option<String>,
    pub restaurant: Option<String>,
    pub status: Option<String>,
    /// Only orders placed at least this long ago (`90s`, `5m`).
    pub older_than: Option<String>,
    pub limit: Option<i64>,
}

/// The longest age a query may ask about.
pub const AGE_MAX: Duration = Duration::from_secs(90 * 24 * 3600);

pub fn duration(name: &str, text: Option<&str>) -> Result<Option<Duration>, Problem> {
    let Some(text) = text.filter(|t| !t.is_empty()) else {
        return Ok(None);
    };
    let invalid = |why: String| Problem::bad_request("invalid_query", format!("`{name}` {why}"));
    let duration = humantime::parse_duration(text)
        .map_err(|e| invalid(format!("is not a duration like 90s or 5m: {e}")))?;
    if duration > AGE_MAX {
        return Err(invalid(format!(
            "is longer than {}",
            humantime::format_duration(AGE_MAX)
        )));
    }
    Ok(Some(duration))
}

/// Orders matching every filter given, the newest first. An id finds the
/// order wherever it is (Redis or the archive); the other filters search
/// the archive's projections, with each row's live state from Redis.
pub async fn search(
    State(state): State<AppState>,
    _admin: super::Admin,
    Query(search): Query<Search>,
) -> Result<Response, Problem> {
    let limit = search.limit.unwrap_or(50).clamp(1, SEARCH_ROWS_MAX);
    if let Some(id) = search.id.as_deref().filter(|i| !i.is_empty()) {
        let found = match id.parse::<uuid::Uuid>() {
            Ok(id) => find_order(&state, &id).await?,
            Err(_) => None,
        };
        let rows: Vec<Value> = found
            .iter()
            .map(|(order, source)| row(order, source))
            .collect();
        return Ok(axum::Json(json!({"orders": rows})).into_response());
    }
    let status = match search.status.as_deref().filter(|s| !s.is_empty()) {
        Some(text) => Some(
            OrderStatus::parse(&text.to_uppercase())
                .ok_or_else(|| {
                    Problem::bad_request(
                        "invalid_query",
                        format!("`status` {text:?} is not an order status"),
                    )
                })?
                .as_str(),
        ),
        None => None,
    };
    let older_than = duration("older_than", search.older_than.as_deref())?.unwrap_or_default();
    let client = state.postgres.get().await.map_err(archive_down)?;
    let ids = client
        .query(
            "SELECT order_id FROM orders WHERE ($1::text IS NULL OR customer = $1) \
             AND ($2::text IS NULL OR restaurant_id = $2) AND ($3::text IS NULL OR status = $3) \
             AND created_at <= now() - make_interval(secs => $4) ORDER BY created_at DESC LIMIT $5",
            &[
                &search.customer.filter(|c| !c.is_empty()),
                &search.restaurant.filter(|r| !r.is_empty()),
                &status,
                &older_than.as_secs_f64(),
                &limit,
            ],
        )
        .await
        .map_err(archive_down)?;
    let ids: Vec<uuid::Uuid> = ids.into_iter().map(|r| r.get(0)).collect();
    // The connection goes back before the fan-out, which is bounded: a
    // search never holds much of the shared pool.
    drop(client);
    let reads = ids.into_iter().map(|id| {
        let state = state.clone();
        async move { find_order(&state, &id).await }
    });
    let found: Vec<Option<(Order, Source)>> = futures::stream::iter(reads)
        .buffered(SEARCH_READS_IN_FLIGHT)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_, _>>()?;
    let rows: Vec<Value> = found
        .iter()
        .flatten()
        .map(|(order, source)| row(order, source))
        .collect();
    Ok(axum::Json(json!({"orders": rows})).into_response())
}

fn archive_down(error: impl std::fmt::Display) -> Problem {
    Problem::unavailable(
        "archive_unavailable",
        format!("the archive did not answer: {error}"),
    )
}

fn source_name(source: &Source) -> &'static str {
    match source {
        Source::Live => "live",
        Source::Archive => "archive",
    }
}

fn row(order: &Order, source: &Source) -> Value {
    let mut value = order_json(order);
    value["version"] = json!(order.version);
    value["source"] = json!(source_name(source));
    value["settled"] = json!(engine::domain::is_allowed_pair(order.status, order.pay));
    value
}

/// One order: state, timeline, timers, notifications, provider, actions.
pub async fn detail(
    State(state): State<AppState>,
    _admin: super::Admin,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    let not_found = || Problem::not_found("order_not_found", format!("order {id} does not exist"));
    let id: uuid::Uuid = id.parse().map_err(|_| not_found())?;
    let (order, source) = find_order(&state, &id).await?.ok_or_else(not_found)?;
    let mut events = timeline(&state, &order).await?;
    let archived = archived_entries(&state, &order).await;
    for event in &mut events {
        let entry = format!(
            "{}|{}",
            event["stream"].as_str().unwrap_or_default(),
            event["entry_id"].as_str().unwrap_or_default()
        );
        event["archived"] = archived
            .as_ref()
            .map_or(Value::Null, |a| json!(a.contains(&entry)));
    }
    let timers = match source {
        Source::Live => engine::ops::order_timers(&state.engine, &order).await?,
        Source::Archive => Vec::new(),
    };
    let provider = match state.console.psp.lookup(&order.id.to_string()).await {
        Ok(Some(payment)) => {
            json!({"state": payment.state, "amount": payment.amount, "ref": payment.reference})
        }
        Ok(None) => json!({"state": null}),
        Err(error) => json!({"error": error.to_string()}),
    };
    let (fired, notices) = delayed_history(&state, &order).await;
    let actions = super::recorded(&state.postgres, Some(order.id), 100)
        .await
        .unwrap_or_else(|error| vec![json!({"error": error.to_string()})]);
    let settled = engine::domain::is_allowed_pair(order.status, order.pay);
    let mut value = row(&order, &source);
    value["waiting_on"] = if settled {
        Value::Null
    } else {
        json!(engine::ops::waiting_on(&order))
    };
    value["decision"] = json!(order.decision);
    Ok(axum::Json(json!({
        "order": value,
        "payment": {
            "ours": order.pay,
            "provider": provider,
            "agrees": agrees(order.pay, provider["state"].as_str()),
        },
        "events": events,
        "timers": timers.iter().map(|(kind, due)| json!({"kind": kind, "due_at": super::at(*due)})).collect::<Vec<_>>(),
        "timers_fired": fired,
        "notifications": notices,
        "actions": actions,
    }))
    .into_response())
}

/// Whether the provider's state is the one our payment status implies
/// (`None` when the provider did not answer).
fn agrees(ours: engine::domain::PaymentStatus, provider: Option<&str>) -> Value {
    use engine::domain::PaymentStatus as P;
    let expected = match ours {
        P::None => None,
        P::Authorized => Some("authorized"),
        P::Captured => Some("captured"),
        P::Refunded => Some("refunded"),
        P::Declined => Some("declined"),
        P::Voided => Some("voided"),
    };
    json!(expected == provider)
}

/// The `stream|entry id` of the order's events the archive holds (`None`: it did
/// not answer).
async fn archived_entries(
    state: &AppState,
    order: &Order,
) -> Option<std::collections::HashSet<String>> {
    let client = state.postgres.get().await.ok()?;
    let rows = client
        .query(
            "SELECT stream || '|' || entry_id FROM saga_events WHERE order_id = $1 AND part_time = $2",
            &[&order.id, &engine::ids::created_at(&order.id)],
        )
        .await
        .ok()?;
    Some(rows.into_iter().map(|r| r.get(0)).collect())
}

/// The timers of an order (`$1`) that fired, from the archive.
const TIMERS_FIRED: &str = "SELECT kind, due_at, fired_at, lateness_ms FROM timer_history \
     WHERE order_id = $1 ORDER BY fired_at";
/// The notices sent about an order (`$1`), from the archive.
const NOTICES_SENT: &str = "SELECT kind, channel, attempts, sent_at FROM notifications \
     WHERE order_id = $1 ORDER BY sent_at";

/// The order's timers that fired and notices sent, from the archive, plus
/// notices Redis records that the archive does not hold yet (kind only).
async fn delayed_history(state: &AppState, order: &Order) -> (Value, Value) {
    let read = async {
        let client = state.postgres.get().await?;
        let fired = client.query(TIMERS_FIRED, &[&order.id]).await?;
        let sent = client.query(NOTICES_SENT, &[&order.id]).await?;
        anyhow::Ok((fired, sent))
    };
    let time = crate::orders::rfc3339_time;
    let (fired, sent) = match read.await {
        Ok(rows) => rows,
        Err(error) => {
            tracing::warn!(%error, order = %order.id, "Archive unavailable for an order's delayed tasks.");
            (Vec::new(), Vec::new())
        }
    };
    let fired: Vec<Value> = fired
        .iter()
        .map(|r| {
            json!({"kind": r.get::<_, String>(0), "due_at": time(r.get(1)), "fired_at": time(r.get(2)),
                   "late_ms": r.get::<_, i64>(3)})
        })
        .collect();
    let mut notices: Vec<Value> = sent
        .iter()
        .map(|r| {
            json!({"kind": r.get::<_, String>(0), "channel": r.get::<_, String>(1),
                   "attempts": r.get::<_, i32>(2), "sent_at": time(r.get(3))})
        })
        .collect();
    for kind in &order.notified {
        if !notices.iter().any(|n| n["kind"] == kind.as_str()) {
            notices.push(json!({"kind": kind, "channel": null, "attempts": null, "sent_at": null}));
        }
    }
    (json!(fired), json!(notices))
}
