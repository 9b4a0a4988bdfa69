//! The lunchrush HTTP API.
//!
//! # Layout
//! - [`auth`]: HS256 bearer tokens (mint and verify) and roles.
//! - [`extract`]: the `Auth` and simd-json `Json` extractors.
//! - [`problem`]: `application/problem+json` answers.
//! - [`admission`]: rate limits, in-flight bound, deadlines.
//! - [`menus`], [`orders`]: the v1 routes.
//! - [`archive`]: retired orders read back from PostgreSQL.
//! - [`heap`]: memory handed back after a connection flood.
//! - [`health`], [`metrics`], [`openapi`]: operations endpoints.
//! - [`admin`], [`console`]: the operations console (`/ops/`) and the
//!   `/v1/admin/…` JSON behind it.
//! - [`server`]: the accept loop: connection cap, head timeout, protocol
//!   refusals as problem+json.
//!
//! **Architecture Invariant:** this is the only crate that knows routes,
//! status codes and `application/problem+json`; the engine below it speaks
//! in domain results.

pub mod admin;
pub mod admission;
pub mod archive;
pub mod auth;
pub mod console;
pub mod extract;
pub mod health;
pub mod heap;
pub mod menus;
pub mod metrics;
pub mod openapi;
pub mod orders;
pub mod problem;
pub mod server;

use std::str::FromStr;
use std::sync::Arc;

use anyhow::Context;
use axum::Router;
use axum::extract::{Request, State};
use axum::middleware::{Next, from_fn, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};

use crate::problem::Problem;

/// Postgres connections per API process (readiness, archive reads).
pub const POSTGRES_POOL_SIZE_MAX: usize = 16;

/// Every route: method and path template, as the router and `/openapi.json` have them.
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
    ("GET", "/openapi.json"),
    ("PUT", "/v1/restaurants/{rid}"),
    ("PATCH", "/v1/restaurants/{rid}"),
    ("GET", "/v1/restaurants/{rid}/menu"),
    ("PUT", "/v1/restaurants/{rid}/menu/{item}"),
    ("PATCH", "/v1/restaurants/{rid}/menu/{item}"),
    ("POST", "/v1/orders"),
    ("GET", "/v1/orders/{id}"),
    ("POST", "/v1/orders/{id}/accept"),
    ("POST", "/v1/orders/{id}/reject"),
    ("POST", "/v1/orders/{id}/dispatch"),
    ("POST", "/v1/orders/{id}/confirm"),
    ("POST", "/v1/orders/{id}/cancel"),
    ("GET", "/v1/orders/{id}/events"),
    ("GET", "/v1/admin/overview"),
    ("GET", "/v1/admin/orders"),
    ("GET", "/v1/admin/orders/{id}"),
    ("GET", "/v1/admin/stuck"),
    ("POST", "/v1/admin/sagas"),
    ("GET", "/v1/admin/dead-letters"),
    (
        "POST",
        "/v1/admin/dead-letters/{kind}/{partition}/{id}/retry",
    ),
    (
        "POST",
        "/v1/admin/dead-letters/{kind}/{partition}/{id}/resolve",
    ),
    ("GET", "/v1/admin/actions"),
];

/// What every handler can reach: one shared allocation, so the clone each
/// request's extractors and layers take is one reference count, not one per
/// field (they showed in the engine's profile).
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// The fields of [`AppState`].
#[derive(Clone)]
pub struct Shared {
    pub engine: engine::Engine,
    pub redis: fred::prelude::Client,
    pub postgres: deadpool_postgres::Pool,
    pub keys: auth::Keys,
    pub limiter: Arc<admission::RateLimiter>,
    pub in_flight: Arc<tokio::sync::Semaphore>,
    pub hot_spots: Arc<metrics::HotSpots>,
    pub metrics: metrics_exporter_prometheus::PrometheusHandle,
    /// With a token, `/metrics` answers only its bearer.
    pub metrics_token: Option<Arc<str>>,
    /// The provider circuit of this process's payment hops (when it runs
    /// them): placements are refused while it is open.
    pub breaker: Option<Arc<engine::breaker::Breaker>>,
    /// Orders placed and not yet through the payment hop (the payment
    /// group's lag plus pending on the orders streams), gathered in the
    /// background.
    pub payment_backlog: Arc<std::sync::atomic::AtomicU64>,
    /// Some engine's provider circuit is open (`psp:circuit` in Redis,
    /// gathered in the background): what a process without payment hops
    /// (`--no-workers`) goes by.
    pub circuit_open_elsewhere: Arc<std::sync::atomic::AtomicBool>,
    /// The operations console's provider, notifier and figures.
    pub console: Arc<admin::Console>,
}

impl AppState {
    pub fn new(
        engine: engine::Engine,
        postgres: deadpool_postgres::Pool,
        jwt_secret: &[u8],
        limits: admission::Limits,
    ) -> Self {
        Self(Arc::new(Shared {
            redis: engine.redis().clone(),
            postgres,
            keys: auth::Keys::new(jwt_secret),
            in_flight: Arc::new(tokio::sync::Semaphore::new(limits.in_flight_max)),
            hot_spots: Arc::new(metrics::HotSpots::default()),
            metrics: metrics::install(),
            metrics_token: limits
                .metrics_token
                .as_deref()
                .filter(|t| !t.is_empty())
                .map(Arc::from),
            limiter: Arc::new(admission::RateLimiter::new(limits)),
            breaker: None,
            payment_backlog: Arc::default(),
            circuit_open_elsewhere: Arc::default(),
            console: Arc::new(admin::Console::new(
                engine::psp::PspClient::new(&engine.config().psp_url),
                Arc::new(engine::notify::LogNotifier),
            )),
            engine,
        }))
    }

    /// The console re-drives through `psp` (the workers' client, so their
    /// breaker) and sends re-driven notices through `notifier`.
    pub fn with_provider(
        mut self,
        psp: engine::psp::PspClient,
        notifier: Arc<dyn engine::notify::Notifier>,
    ) -> Self {
        Arc::make_mut(&mut self.0).console = Arc::new(admin::Console::new(psp, notifier));
        self
    }

    /// Refuses placements while `breaker` (the payment hops') is open.
    pub fn with_breaker(mut self, breaker: Arc<engine::breaker::Breaker>) -> Self {
        Arc::make_mut(&mut self.0).breaker = Some(breaker);
        self
    }

    /// Why a placement cannot be paid now, and when to retry: the provider's
    /// circuit is open, or the unpaid backlog would not clear inside the
    /// payment window at the provider's recent pace.
    pub fn payments_unavailable(&self) -> Option<(String, u64)> {
        let failing = || "the payment provider is failing; no order can be paid now".to_string();
        // A process that calls the provider itself goes by its own circuit;
        // one that does not, by the circuits the others announce.
        let Some(breaker) = self.breaker.as_ref() else {
            let elsewhere = self
                .circuit_open_elsewhere
                .load(std::sync::atomic::Ordering::Relaxed);
            return elsewhere.then(|| (failing(), 2));
        };
        if breaker.is_refusing() {
            let wait = breaker.retry_in().unwrap_or_default();
            return Some((failing(), wait.as_secs().max(1)));
        }
        let backlog = self
            .payment_backlog
            .load(std::sync::atomic::Ordering::Relaxed);
        let window = self.engine.config().timers.payment_window;
        let ceiling = breaker.options().max_rate;
        let measured = || breaker.answered_per_sec().unwrap_or(0.0);
        backlog_too_long(backlog, measured, ceiling, window).map(|pace| {
            (
                format!(
                    "{backlog} orders wait for payment at ~{pace:.0} provider calls/s; \
                     a new one would not be paid inside the payment window"
                ),
                5,
            )
        })
    }
}

/// `Some(pace)` when `backlog` orders would not clear within half the
/// payment window at the provider's pace: the calls/s it answered lately,
/// or the ceiling (`--psp-max-rate`) when it was not called lately.
/// The pace is asked for only past [`PAYMENT_BACKLOG_MIN`]: most
/// placements see a small backlog and pay nothing for the check.
pub fn backlog_too_long(
    backlog: u64,
    answered_per_sec: impl FnOnce() -> f64,
    ceiling: f64,
    payment_window: std::time::Duration,
) -> Option<f64> {
    if backlog < PAYMENT_BACKLOG_MIN {
        return None;
    }
    let answered_per_sec = answered_per_sec();
    let pace = if answered_per_sec > 0.0 {
        answered_per_sec
    } else {
        ceiling
    };
    let pace = if ceiling > 0.0 {
        pace.min(ceiling)
    } else {
        pace
    };
    // Half the window, so what is accepted now still gets paid in time.
    let clears_in = backlog as f64 / pace.max(1.0);
    (clears_in > payment_window.as_secs_f64() / 2.0).then_some(pace)
}

/// Below this unpaid backlog, placements are never refused for it.
pub const PAYMENT_BACKLOG_MIN: u64 = 1_000;

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

/// Sheds load before any work starts: a bounded number of requests in
/// flight (503 past it), and a deadline on each (503 when it passes).
async fn admit(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let Ok(_permit) = state.in_flight.clone().try_acquire_owned() else {
        ::metrics::counter!("lunchrush_requests_shed_total", "reason" => "in_flight").increment(1);
        return Problem::unavailable("overloaded", "the engine is saturated; retry shortly")
            .into_response();
    };
    let deadline = state.limiter.limits().request_timeout;
    match tokio::time::timeout(deadline, next.run(request)).await {
        Ok(response) => response,
        Err(_) => {
            ::metrics::counter!("lunchrush_requests_shed_total", "reason" => "deadline")
                .increment(1);
            Problem::unavailable(
                "deadline_exceeded",
                format!("no answer within {deadline:?}; retry"),
            )
            .into_response()
        }
    }
}

async fn not_found(request: Request) -> Problem {
    Problem::not_found(
        "route_not_found",
        format!("no route {} {}", request.method(), request.uri().path()),
    )
}

async fn method_not_allowed(request: Request) -> Problem {
    Problem::new(
        axum::http::StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "Method not allowed",
        format!(
            "{} is not allowed on {}",
            request.method(),
            request.uri().path()
        ),
    )
}

async fn openapi() -> axum::Json<serde_json::Value> {
    axum::Json(openapi::document())
}

/// Every route of the API. The v1 routes pass admission control (in-flight
/// bound, deadline); the operations endpoints and the console's never do,
/// so a liveness probe answers and an operator can act even when the
/// engine sheds load.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route(
            "/v1/restaurants/{rid}",
            put(menus::put_restaurant).patch(menus::patch_restaurant),
        )
        .route("/v1/restaurants/{rid}/menu", get(menus::get_menu))
        .route(
            "/v1/restaurants/{rid}/menu/{item}",
            put(menus::put_item).patch(menus::patch_item),
        )
        .route("/v1/orders", post(orders::place))
        .route("/v1/orders/{id}", get(orders::get))
        .route("/v1/orders/{id}/accept", post(orders::accept))
        .route("/v1/orders/{id}/reject", post(orders::reject))
        .route("/v1/orders/{id}/dispatch", post(orders::dispatch))
        .route("/v1/orders/{id}/confirm", post(orders::confirm))
        .route("/v1/orders/{id}/cancel", post(orders::cancel))
        .route("/v1/orders/{id}/events", get(orders::events))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(from_fn_with_state(state.clone(), admit))
        // The console's endpoints sit outside admission control too: an
        // operator can act while the engine sheds load, and a batch of
        // provider calls is not cut off halfway by the request deadline
        // (admins only; the per-token rate limit still applies).
        .route("/v1/admin/overview", get(admin::overview::get))
        .route("/v1/admin/orders", get(admin::orders::search))
        .route("/v1/admin/orders/{id}", get(admin::orders::detail))
        .route("/v1/admin/stuck", get(admin::actions::stuck))
        .route("/v1/admin/sagas", post(admin::actions::sagas))
        .route("/v1/admin/dead-letters", get(admin::actions::letters))
        .route(
            "/v1/admin/dead-letters/{kind}/{partition}/{id}/retry",
            post(admin::actions::retry),
        )
        .route(
            "/v1/admin/dead-letters/{kind}/{partition}/{id}/resolve",
            post(admin::actions::resolve),
        )
        .route("/v1/admin/actions", get(admin::actions::actions))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(metrics::render))
        .route("/openapi.json", get(openapi))
        .route("/ops", get(console::root))
        .route("/ops/", get(console::page))
        .route("/ops/app.js", get(console::script))
        .route("/ops/app.css", get(console::style))
        .route("/ops/{*path}", get(console::page))
        .route_layer(from_fn(metrics::track))
        .layer(from_fn(server::close_unread))
        .with_state(state)
}

pub use server::serve;

#[cfg(test)]
mod tests {
    use std::time::Duration;

    /// A backlog is refused only when it would outlast half the payment
    /// window at the provider's recent pace (or the ceiling when idle).
    #[test]
    fn the_backlog_is_measured_against_the_payment_window() {
        let window = Duration::from_secs(120);
        // (backlog, the provider's recent pace, the answer, why)
        let cases = [
            (999, 0.1, None, "small"),
            (50_000, 1_000.0, None, "within half the window"),
            (70_000, 1_000.0, Some(1_000.0), "beyond half the window"),
            (70_000, 0.0, None, "idle: ceiling"),
            (400_000, 0.0, Some(5_000.0), "idle: beyond the ceiling"),
        ];
        for (backlog, pace, answer, why) in cases {
            assert_eq!(
                super::backlog_too_long(backlog, || pace, 5_000.0, window),
                answer,
                "{why}"
            );
        }
    }

    /// `/openapi.json` documents exactly the router's routes.
    #[test]
    fn the_openapi_document_lists_exactly_the_routes() {
        let document = super::openapi::document();
        let mut documented: Vec<(String, String)> = document["paths"]
            .as_object()
            .unwrap()
            .iter()
            .flat_map(|(path, ops)| {
                ops.as_object()
                    .unwrap()
                    .keys()
                    .map(move |method| (method.to_uppercase(), path.clone()))
            })
            .collect();
        let mut routes: Vec<(String, String)> = super::ROUTES
            .iter()
            .map(|(m, p)| (m.to_string(), p.to_string()))
            .collect();
        documented.sort();
        routes.sort();
        assert_eq!(documented, routes);
    }
}
