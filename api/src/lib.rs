//! The lunchrush HTTP API.
//!
//! # Layout
//! - [`auth`]: HS256 bearer tokens (mint and verify) and roles.
//! - [`health`]: `/healthz` and `/readyz`.
//!
//! **Architecture Invariant:** this is the only crate that knows routes,
//! status codes and `application/problem+json`; the engine below it speaks
//! in domain results.

pub mod auth;
pub mod health;

use std::future::Future;
use std::str::FromStr;

use anyhow::Context;
use axum::Router;
use axum::routing::get;

/// Postgres connections per API process (readiness, archive reads).
pub const POSTGRES_POOL_SIZE_MAX: usize = 16;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub engine: engine::Engine,
    pub redis: fred::prelude::Client,
    pub postgres: deadpool_postgres::Pool,
    pub keys: auth::Keys,
}

/// A connection pool for the Postgres at `url` (connects lazily).
pub fn postgres_pool(url: &str) -> anyhow::Result<deadpool_postgres::Pool> {
    let config = tokio_postgres::Config::from_str(url).context("parse the postgres URL")?;
    let manager = deadpool_postgres::Manager::from_config(
        config,
        tokio_postgres::NoTls,
        deadpool_postgres::ManagerConfig {
            recycling_method: deadpool_postgres::RecyclingMethod::Fast,
        },
    );
    deadpool_postgres::Pool::builder(manager)
        .max_size(POSTGRES_POOL_SIZE_MAX)
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .create_timeout(Some(std::time::Duration::from_secs(5)))
        .wait_timeout(Some(std::time::Duration::from_secs(5)))
        .build()
        .context("build the postgres pool")
}

/// Every route of the API.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .with_state(state)
}

/// Serves the API on `listener` until `shutdown` completes, then finishes the
/// requests in flight.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
        .context("serve HTTP")
}
