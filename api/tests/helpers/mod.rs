//! `spawn_app()`: the real API on 127.0.0.1:0 over a fresh local stack
//! (Redis + PostgreSQL, migrated), the provider simulator and the saga
//! workers; plus a small HTTP client with tokens for every role.

#![allow(dead_code)]

use std::time::{Duration, Instant};

use api::admission::Limits;
use api::auth::{Keys, Role};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

pub const SECRET: &str = "test-secret-test-secret-test-secret!";

pub struct TestApp {
    pub url: String,
    pub http: reqwest::Client,
    keys: Keys,
    /// The servers, the engine, the simulator and the workers' provider
    /// client (its breaker is the API's).
    pub fx: fixture::Fixture,
}

impl std::ops::Deref for TestApp {
    type Target = fixture::Fixture;

    fn deref(&self) -> &fixture::Fixture {
        &self.fx
    }
}

/// A placement body: `(item, qty)` lines and the total the client expects.
pub fn order_body(rid: &str, lines: &[(&str, i64)], total: i64) -> Value {
    json!({
        "restaurant_id": rid,
        "items": lines.iter().map(|(i, q)| json!({"item": i, "qty": q})).collect::<Vec<_>>(),
        "expected_total": total,
    })
}

/// The string `field` of every element of the array `list`.
pub fn strings<'a>(list: &'a Value, field: &str) -> Vec<&'a str> {
    let list = list.as_array().unwrap();
    list.iter().map(|v| v[field].as_str().unwrap()).collect()
}

/// Limits generous enough that a test's own traffic is never rate-limited.
pub fn roomy() -> Limits {
    Limits {
        rate_per_sec: 100_000.0,
        burst: 100_000.0,
        ..Limits::default()
    }
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(Limits::default()).await
}

pub async fn spawn_app_with(limits: Limits) -> TestApp {
    spawn_app_configured(limits, |_| {}).await
}

/// With settings changed by `tweak`; an archiver runs too when the live
/// retention is set below an hour (retirement needs the archive).
pub async fn spawn_app_configured(
    limits: Limits,
    tweak: impl FnOnce(&mut engine::Config),
) -> TestApp {
    let notifier = std::sync::Arc::new(engine::notify::LogNotifier);
    spawn_app_full(limits, tweak, notifier, |_| {}).await
}

/// With settings changed by `tweak`, notices sent through `notifier` (by
/// the workers and the console's retries) and worker options changed by
/// `tweak_workers`.
pub async fn spawn_app_full(
    limits: Limits,
    tweak: impl FnOnce(&mut engine::Config),
    notifier: std::sync::Arc<dyn engine::notify::Notifier>,
    tweak_workers: impl FnOnce(&mut engine::saga::WorkerOptions),
) -> TestApp {
    let mut fx = fixture::Fixture::start(fixture::Options::archive(), tweak).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut options = engine::saga::WorkerOptions::new("api-test");
    options.idle_poll_max = Duration::from_millis(10);
    // Entries a provider failure left pending are taken again soon.
    options.reclaim_idle = Duration::from_secs(2);
    options.reclaim_every = Duration::from_millis(500);
    tweak_workers(&mut options);
    fx.start_workers_notifying(options, notifier.clone());
    let (engine, config, psp) = (&fx.engine, &fx.config, &fx.psp);
    if config
        .live_retention
        .is_some_and(|r| r < Duration::from_secs(3600))
    {
        let mut archiver_options = archiver::ArchiverOptions::new("api-test-archiver");
        archiver_options.idle_poll_max = Duration::from_millis(20);
        // Entries stay in the streams (a test may redeliver them).
        archiver_options.trim_every = Duration::from_secs(3600);
        let archiver = archiver::Archiver::new(engine.clone(), fx.pool().clone(), archiver_options);
        archiver.prepare().await.unwrap();
        tokio::spawn(archiver.run(fx.stopped()));
    }
    let state = api::AppState::new(
        engine.clone(),
        api::postgres_pool(&config.postgres_url).unwrap(),
        SECRET.as_bytes(),
        limits,
    )
    .with_breaker(psp.breaker().clone())
    .with_provider(psp.clone(), notifier);
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(api::serve(listener, state, std::future::pending()));
    TestApp {
        url,
        http: reqwest::Client::new(),
        keys: Keys::new(SECRET.as_bytes()),
        fx,
    }
}

/// A response: status, content type and JSON body (Null when not JSON).
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub content_type: String,
    pub retry_after: Option<String>,
    pub body: Value,
}

impl Reply {
    /// Asserts a problem+json answer with `status` and `code`.
    pub fn problem(&self, status: u16, code: &str) -> &Self {
        assert_eq!(self.status.as_u16(), status, "{self:?}");
        assert_eq!(self.content_type, "application/problem+json", "{self:?}");
        assert_eq!(self.body["code"], code, "{self:?}");
        assert_eq!(self.body["status"], status, "{self:?}");
        assert!(
            self.body["type"].is_string()
                && self.body["title"].is_string()
                && self.body["detail"].is_string()
        );
        self
    }

    pub fn ok(&self, status: u16) -> &Value {
        assert_eq!(self.status.as_u16(), status, "{self:?}");
        &self.body
    }
}

impl TestApp {
    pub fn token(&self, role: Role, sub: &str, rid: Option<&str>) -> String {
        self.keys
            .mint(role, sub, rid, Duration::from_secs(3600))
            .unwrap()
    }

    pub fn admin(&self) -> String {
        self.token(Role::Admin, "ops", None)
    }

    pub fn customer(&self, sub: &str) -> String {
        self.token(Role::Customer, sub, None)
    }

    pub fn restaurant(&self, rid: &str) -> String {
        self.token(Role::Restaurant, &format!("staff-{rid}"), Some(rid))
    }

    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        headers: &[(&str, &str)],
        body: Option<(&str, Vec<u8>)>,
    ) -> Reply {
        let mut request = self.http.request(method, format!("{}{path}", self.url));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if let Some((content_type, bytes)) = body {
            request = request.header("content-type", content_type).body(bytes);
        }
        let response = request.send().await.expect("the API answers");
        let status = response.status();
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let content_type = header("content-type").unwrap_or_default();
        let retry_after = header("retry-after");
        let bytes = response.bytes().await.unwrap();
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Reply {
            status,
            content_type,
            retry_after,
            body,
        }
    }

    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> Reply {
        let body = body.map(|b| ("application/json", serde_json::to_vec(&b).unwrap()));
        self.raw(method, path, Some(token), &[], body).await
    }

    pub async fn get(&self, path: &str, token: &str) -> Reply {
        self.call(Method::GET, path, token, None).await
    }

    /// GET `path`, asserting a 200: the body.
    pub async fn get_ok(&self, path: &str, token: &str) -> Value {
        self.get(path, token).await.ok(200).clone()
    }

    pub async fn post(&self, path: &str, token: &str, body: Option<Value>) -> Reply {
        self.call(Method::POST, path, token, body).await
    }

    pub async fn put(&self, path: &str, token: &str, body: Value) -> Reply {
        self.call(Method::PUT, path, token, Some(body)).await
    }

    pub async fn patch(&self, path: &str, token: &str, body: Value) -> Reply {
        self.call(Method::PATCH, path, token, Some(body)).await
    }

    /// The text of `GET /metrics` (no token).
    pub async fn metrics_text(&self) -> String {
        let response = self.http.get(format!("{}/metrics", self.url)).send();
        response.await.unwrap().text().await.unwrap()
    }

    /// POST /v1/orders with an Idempotency-Key.
    pub async fn place(&self, token: &str, key: &str, body: Value) -> Reply {
        let bytes = serde_json::to_vec(&body).unwrap();
        self.raw(
            Method::POST,
            "/v1/orders",
            Some(token),
            &[("idempotency-key", key)],
            Some(("application/json", bytes)),
        )
        .await
    }

    /// Places an order, asserting the 202: its id.
    pub async fn place_ok(&self, token: &str, key: &str, body: Value) -> String {
        let placed = self.place(token, key, body).await;
        placed.ok(202)["order_id"].as_str().unwrap().to_string()
    }

    /// A restaurant with items `(item, price, stock)`, created through the API.
    pub async fn seed(&self, rid: &str, auto: bool, items: &[(&str, i64, i64)]) {
        let admin = self.admin();
        self.call(
            Method::PUT,
            &format!("/v1/restaurants/{rid}"),
            &admin,
            Some(json!({"name": format!("Restaurant {rid}"), "open": true, "auto_approve": auto})),
        )
        .await
        .ok(200);
        for (item, price, stock) in items {
            self.call(
                Method::PUT,
                &format!("/v1/restaurants/{rid}/menu/{item}"),
                &admin,
                Some(json!({"name": item, "price": price, "stock": stock, "available": true})),
            )
            .await
            .ok(200);
        }
    }

    /// Polls the order until `done(order)` holds, or panics after 30 s.
    pub async fn wait_for(&self, id: &str, token: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let order = self
                .get(&format!("/v1/orders/{id}"), token)
                .await
                .ok(200)
                .clone();
            if done(&order) {
                return order;
            }
            assert!(Instant::now() < deadline, "order {id} stuck at {order}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// (orders, stock on hand per item) — what a refused request must not change.
    pub async fn footprint(&self, rid: &str) -> (usize, Vec<(String, i64)>) {
        let mut orders = 0;
        for p in 0..self.engine.keys().partitions() {
            orders += self.engine.order_ids(p).await.unwrap().len();
        }
        let menu = self
            .engine
            .menu(rid)
            .await
            .unwrap()
            .map(|m| m.items)
            .unwrap_or_default();
        (
            orders,
            menu.into_iter().map(|i| (i.item, i.stock)).collect(),
        )
    }
}
