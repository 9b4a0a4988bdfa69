//! `GET /healthz` (the process runs) and `GET /readyz` (Redis answers: a
//! load balancer should send traffic only when this is 200; with PostgreSQL
//! down it stays 200 and says `degraded: archive`, since orders are still
//! taken and settled while the archive waits; with
//! the provider's circuit open it stays 200 and says `degraded: provider`,
//! since reads, menus and restaurant actions still work; likewise
//! `degraded: redis_memory` past the memory budget, where new orders are
//! refused and those in flight go on).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use fred::prelude::*;
use serde_json::{Value, json};

use crate::AppState;

/// Liveness: answers as long as the process can serve HTTP at all.
pub async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// Readiness: Redis answers PING (503 otherwise); PostgreSQL answering
/// `SELECT 1` is reported, and its absence only degrades (`archive`).
pub async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let redis = state.redis.ping::<String>(None).await.map(|_| ());
    let postgres = match state.postgres.get().await {
        Ok(client) => client
            .simple_query("SELECT 1")
            .await
            .map(|_| ())
            .map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    // Orders live in Redis: without it nothing works. PostgreSQL is the
    // archive: while it is down orders are still taken and settled (the
    // streams hold them, within the memory budget), so the engine stays in
    // the load balancer, degraded.
    let status = if redis.is_ok() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    // An open provider circuit leaves the engine serving (reads, menus,
    // restaurant actions): ready, but degraded.
    let provider = state.breaker.as_ref().map(|b| match b.state() {
        engine::breaker::BreakerState::Closed => json!("ok"),
        other => json!(format!(
            "circuit {}: next probe in {:?}",
            other.as_str(),
            b.retry_in().unwrap_or_default()
        )),
    });
    // Past its memory budget (or refusing writes) Redis takes no new
    // orders, but every order in flight goes on: ready, but degraded.
    let mut degraded: Vec<&str> = Vec::new();
    if postgres.is_err() {
        degraded.push("archive");
    }
    if provider.as_ref().is_some_and(|p| p != "ok") {
        degraded.push("provider");
    }
    let refusal = state.engine.budget().refusal();
    if let Some(refusal) = refusal {
        degraded.push(refusal.as_str());
    }
    let reading = state.engine.budget().reading();
    let memory = json!({
        "state": refusal.map_or("ok", |r| r.as_str()),
        "used_bytes": reading.used,
        "limit_bytes": reading.limit,
        "high_water_bytes": reading.high_water,
        "low_water_bytes": reading.low_water,
        "reserve_bytes": reading.reserve,
        "orders_in_flight": reading.in_flight,
        "refused": reading.refused,
    });
    let describe = |r: Result<(), String>| match r {
        Ok(()) => json!("ok"),
        Err(e) => json!(e),
    };
    (
        status,
        Json(json!({
            "status": match (status == StatusCode::OK, degraded.is_empty()) {
                (true, true) => "ready".to_string(),
                (true, false) => format!("degraded: {}", degraded.join(", ")),
                (false, _) => "not_ready".to_string(),
            },
            "redis": describe(redis.map_err(|e| e.to_string())),
            "postgres": describe(postgres),
            "provider": provider.unwrap_or(json!("not called by this process")),
            "redis_memory": memory,
        })),
    )
}
