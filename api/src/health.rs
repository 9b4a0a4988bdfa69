//! `GET /healthz` (the process runs) and `GET /readyz` (its dependencies
//! answer: a load balancer should send traffic only when this is 200).

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

/// Readiness: Redis answers PING and Postgres answers `SELECT 1`.
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
    let status = if redis.is_ok() && postgres.is_ok() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let describe = |r: Result<(), String>| match r {
        Ok(()) => json!("ok"),
        Err(e) => json!(e),
    };
    (
        status,
        Json(json!({
            "status": if status == StatusCode::OK { "ready" } else { "not_ready" },
            "redis": describe(redis.map_err(|e| e.to_string())),
            "postgres": describe(postgres),
        })),
    )
}
