//! `lunchrush-bench`: goose load scenarios against a running lunchrush.
//!
//! ```text
//! set -a; . .lunchrush/stack.env; set +a
//! lunchrush-bench seed                                   # menus for the scenarios
//! lunchrush-bench --host "$LUNCHRUSH_API_URL" --scenarios lunchpeak \
//!     --users 64 --increase-rate 64 --run-time 20s --report-file lunch_peak.html
//! ```
//!
//! Every goose flag is available (`--help`; scenario names for
//! `--scenarios` are `lunchpeak`, `flashsale`, `menuchurn`, `retrystorm`). Settings of our own come from
//! the environment: `LUNCHRUSH_JWT_SECRET` (tokens are minted per user),
//! `LUNCHRUSH_BENCH_SUMMARY` (where the machine-readable summary goes),
//! `LUNCHRUSH_BENCH_RESTAURANTS` (default 50), `LUNCHRUSH_BENCH_FLASH_STOCK`
//! (default 500).
//!
//! Scenarios, each counting business outcomes (approved, out of stock,
//! declined, price changed, …), not only HTTP codes:
//! - `lunch_peak`: read the menu of a restaurant picked with Zipf-skewed
//!   popularity, order, poll the order until its saga rests.
//! - `flash_sale`: everyone races for one item with limited stock.
//! - `menu_churn`: restaurants change prices while customers order; a 409
//!   `price_changed` is handled like a real client: re-read and retry once.
//! - `retry_storm`: a client "times out" and retries with the same
//!   Idempotency-Key; every retry must return the same order.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

use goose::prelude::*;
use serde_json::{Value, json};

static OUTCOMES: LazyLock<Mutex<BTreeMap<String, u64>>> =
    LazyLock::new(|| Mutex::new(BTreeMap::new()));
static PLACED_TO_REST_MS: LazyLock<Mutex<Vec<f64>>> = LazyLock::new(|| Mutex::new(Vec::new()));
static KEYS: AtomicU64 = AtomicU64::new(0);
/// Idempotency keys are unique per run: a rerun must not collide with the
/// keys of the last one (the API would rightly refuse them).
static RUN: LazyLock<u128> = LazyLock::new(|| {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
});

/// Polls of one order before the scenario stops waiting for it.
const POLLS_MAX: usize = 100;
const POLL_EVERY: Duration = Duration::from_millis(100);

fn count(outcome: impl Into<String>) {
    *OUTCOMES
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(outcome.into())
        .or_default() += 1;
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn keys() -> api::auth::Keys {
    let secret =
        std::env::var("LUNCHRUSH_JWT_SECRET").expect("LUNCHRUSH_JWT_SECRET names the API's secret");
    api::auth::Keys::new(secret.as_bytes())
}

/// A user's session: its token and customer id.
#[derive(Clone)]
struct Session {
    token: String,
    customer: String,
}

fn restaurants() -> usize {
    env_usize("LUNCHRUSH_BENCH_RESTAURANTS", 50)
}

/// Zipf(1.1) over the restaurants: a few are hot, most are quiet.
fn zipf_restaurant() -> String {
    let n = restaurants();
    let weights: Vec<f64> = (1..=n).map(|k| 1.0 / (k as f64).powf(1.1)).collect();
    let mut x = rand::random::<f64>() * weights.iter().sum::<f64>();
    for (i, w) in weights.iter().enumerate() {
        if x < *w {
            return format!("bench-{i:03}");
        }
        x -= w;
    }
    format!("bench-{:03}", n - 1)
}

async fn start_session(user: &mut GooseUser) -> TransactionResult {
    let customer = format!("bench-customer-{}", user.weighted_users_index);
    let token = keys()
        .mint(
            api::auth::Role::Customer,
            &customer,
            None,
            Duration::from_secs(3600),
        )
        .expect("valid claims");
    user.set_session_data(Session { token, customer });
    Ok(())
}

/// One request with the session's bearer token; returns status and JSON.
async fn call(
    user: &mut GooseUser,
    method: GooseMethod,
    path: &str,
    name: &str,
    body: Option<&Value>,
    key: Option<&str>,
) -> Result<(u16, Value), Box<TransactionError>> {
    let token = user.get_session_data_unchecked::<Session>().token.clone();
    let mut builder = user.get_request_builder(&method, path)?.bearer_auth(token);
    if let Some(body) = body {
        builder = builder.json(body);
    }
    if let Some(key) = key {
        builder = builder.header("idempotency-key", key);
    }
    let request = GooseRequest::builder()
        .path(path)
        .name(name)
        .set_request_builder(builder)
        .build();
    let mut goose = user.request(request).await?;
    match goose.response {
        Ok(response) => {
            let status = response.status().as_u16();
            // Refusals (409 out of stock, price changed) are business
            // outcomes a real client handles, not failed requests.
            if status == 409 {
                user.set_success(&mut goose.request)?;
            }
            if status == 429 {
                // A real client honours Retry-After.
                count("rate limited (waited)");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            let json = response.json::<Value>().await.unwrap_or(Value::Null);
            Ok((status, json))
        }
        Err(error) => Err(Box::new(error.into())),
    }
}

async fn menu(user: &mut GooseUser, rid: &str) -> Result<Vec<Value>, Box<TransactionError>> {
    let (_, menu) = call(
        user,
        GooseMethod::Get,
        &format!("/v1/restaurants/{rid}/menu"),
        "menu",
        None,
        None,
    )
    .await?;
    Ok(menu["items"].as_array().cloned().unwrap_or_default())
}

/// Think time between a user's iterations: people do not click in a loop.
fn think() -> (Duration, Duration) {
    (Duration::from_millis(200), Duration::from_millis(600))
}

/// Scenario `name`: each user starts a session, then runs `run` over and
/// over with a [`think`] time between.
fn thinking(name: &str, run: Transaction) -> Result<Scenario, GooseError> {
    Ok(scenario!(name)
        .set_wait_time(think().0, think().1)?
        .register_transaction(transaction!(start_session).set_on_start())
        .register_transaction(run))
}

fn order_body(rid: &str, items: &[&Value]) -> Value {
    json!({
        "restaurant_id": rid,
        "items": items.iter().map(|i| json!({"item": i["item"], "qty": 1})).collect::<Vec<_>>(),
        "expected_total": items.iter().map(|i| i["price"].as_i64().unwrap_or(0)).sum::<i64>(),
    })
}

fn next_key(user: &GooseUser) -> String {
    let session = user.get_session_data_unchecked::<Session>();
    format!(
        "{}-{}-{}",
        session.customer,
        *RUN,
        KEYS.fetch_add(1, Ordering::Relaxed)
    )
}

/// Places an order and polls it to rest; counts the outcome.
async fn place_and_follow(
    user: &mut GooseUser,
    body: &Value,
) -> Result<Option<u16>, Box<TransactionError>> {
    let key = next_key(user);
    let placed_at = Instant::now();
    let (status, reply) = call(
        user,
        GooseMethod::Post,
        "/v1/orders",
        "place",
        Some(body),
        Some(&key),
    )
    .await?;
    if status != 202 {
        count(format!(
            "refused {}",
            reply["code"].as_str().unwrap_or("unknown")
        ));
        return Ok(Some(status));
    }
    let id = reply["order_id"].as_str().unwrap_or_default().to_string();
    for _ in 0..POLLS_MAX {
        tokio::time::sleep(POLL_EVERY).await;
        let (_, order) = call(
            user,
            GooseMethod::Get,
            &format!("/v1/orders/{id}"),
            "poll",
            None,
            None,
        )
        .await?;
        let (status, pay) = (
            order["status"].as_str().unwrap_or(""),
            order["payment"]["status"].as_str().unwrap_or(""),
        );
        let rest = match status {
            "APPROVED" | "DISPATCHED" | "CONFIRMED" => pay == "CAPTURED",
            "REJECTED" => matches!(pay, "NONE" | "DECLINED" | "VOIDED" | "REFUNDED"),
            _ => false,
        };
        if rest {
            PLACED_TO_REST_MS
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(placed_at.elapsed().as_secs_f64() * 1_000.0);
            count(match order["reason"].as_str() {
                Some(reason) => format!("rejected {reason}"),
                None => "approved".into(),
            });
            return Ok(Some(202));
        }
    }
    count("still running");
    Ok(Some(202))
}

async fn lunch_peak(user: &mut GooseUser) -> TransactionResult {
    let rid = zipf_restaurant();
    let items = menu(user, &rid).await?;
    if items.is_empty() {
        return Ok(());
    }
    let first = rand::random::<u32>() as usize % items.len();
    let chosen: Vec<&Value> = (0..(1 + rand::random::<u32>() as usize % 3).min(items.len()))
        .map(|i| &items[(first + i) % items.len()])
        .collect();
    place_and_follow(user, &order_body(&rid, &chosen)).await?;
    Ok(())
}

async fn flash_sale(user: &mut GooseUser) -> TransactionResult {
    let body = json!({"restaurant_id": "flash", "items": [{"item": "deal", "qty": 1}], "expected_total": 990});
    place_and_follow(user, &body).await?;
    Ok(())
}

async fn menu_churn(user: &mut GooseUser) -> TransactionResult {
    let rid = format!("bench-{:03}", rand::random::<u32>() as usize % 5);
    // A tenth of the users are the restaurants, changing a price.
    if user.weighted_users_index.is_multiple_of(10) {
        let staff = keys()
            .mint(
                api::auth::Role::Restaurant,
                "bench-staff",
                Some(&rid),
                Duration::from_secs(600),
            )
            .expect("valid claims");
        let dish = rand::random::<u32>() % 8;
        let price = 5_000 + 500 * (rand::random::<u32>() % 10) as i64;
        let path = format!("/v1/restaurants/{rid}/menu/dish-{dish}");
        let builder = user
            .get_request_builder(&GooseMethod::Patch, &path)?
            .bearer_auth(staff)
            .json(&json!({"price": price}));
        let request = GooseRequest::builder()
            .path(path.as_str())
            .name("edit price")
            .set_request_builder(builder)
            .build();
        user.request(request).await?;
        count("price edited");
        return Ok(());
    }
    let items = menu(user, &rid).await?;
    let Some(item) = items.first().cloned() else {
        return Ok(());
    };
    // Customers think a while before ordering: the price may change meanwhile.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let status = place_and_follow(user, &order_body(&rid, &[&item])).await?;
    if status == Some(409) {
        let items = menu(user, &rid).await?;
        if let Some(item) = items.first() {
            count("retried after price_changed");
            place_and_follow(user, &order_body(&rid, &[item])).await?;
        }
    }
    Ok(())
}

async fn retry_storm(user: &mut GooseUser) -> TransactionResult {
    let rid = zipf_restaurant();
    let items = menu(user, &rid).await?;
    let Some(item) = items.first().cloned() else {
        return Ok(());
    };
    let body = order_body(&rid, &[&item]);
    let key = next_key(user);
    let mut ids = Vec::new();
    for _ in 0..3 {
        let (status, reply) = call(
            user,
            GooseMethod::Post,
            "/v1/orders",
            "place (retried)",
            Some(&body),
            Some(&key),
        )
        .await?;
        if status == 202 {
            ids.push(reply["order_id"].as_str().unwrap_or_default().to_string());
        }
    }
    ids.dedup();
    count(match ids.len() {
        0 => "refused",
        1 => "one order for three attempts",
        _ => "DUPLICATE ORDER",
    });
    Ok(())
}

/// Creates the menus the scenarios use (through the API, one admin token
/// per restaurant so the per-token rate limit is not in the way).
async fn seed() -> anyhow::Result<()> {
    let api = std::env::var("LUNCHRUSH_API_URL").unwrap_or_else(|_| "http://127.0.0.1:8080".into());
    let http = reqwest::Client::new();
    let keys = keys();
    let flash_stock = env_usize("LUNCHRUSH_BENCH_FLASH_STOCK", 500);
    let put = |token: String, path: String, body: Value| {
        let http = http.clone();
        let api = api.clone();
        async move {
            http.put(format!("{api}{path}"))
                .bearer_auth(token)
                .json(&body)
                .send()
                .await?
                .error_for_status()?;
            Ok::<_, anyhow::Error>(())
        }
    };
    for r in 0..restaurants() {
        let rid = format!("bench-{r:03}");
        let token = keys.mint(
            api::auth::Role::Admin,
            &format!("seed-{r}"),
            None,
            Duration::from_secs(600),
        )?;
        put(
            token.clone(),
            format!("/v1/restaurants/{rid}"),
            json!({"name": rid, "open": true, "auto_approve": true}),
        )
        .await?;
        for d in 0..8 {
            put(
                token.clone(),
                format!("/v1/restaurants/{rid}/menu/dish-{d}"),
                json!({"name": format!("Dish {d}"), "price": 5_000 + 1_000 * d, "stock": 1_000_000, "available": true}),
            )
            .await?;
        }
    }
    let token = keys.mint(
        api::auth::Role::Admin,
        "seed-flash",
        None,
        Duration::from_secs(600),
    )?;
    put(
        token.clone(),
        "/v1/restaurants/flash".into(),
        json!({"name": "Flash sale", "open": true, "auto_approve": true}),
    )
    .await?;
    put(
        token,
        "/v1/restaurants/flash/menu/deal".into(),
        json!({"name": "Deal", "price": 990, "stock": flash_stock, "available": true}),
    )
    .await?;
    println!(
        "seeded {} restaurants and the flash sale ({flash_stock} units)",
        restaurants()
    );
    Ok(())
}

fn percentile(values: &mut [f64], q: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(|a, b| a.total_cmp(b));
    values[((values.len() - 1) as f64 * q).round() as usize]
}

/// Writes bench/RESULTS.md from the summaries `bench/run` collected.
fn report(out: &str, command: &str, dir: &str) -> anyhow::Result<()> {
    let dir = std::path::Path::new(dir);
    let meta: BTreeMap<String, String> = std::fs::read_to_string(dir.join("meta.env"))?
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let mut md = String::new();
    md.push_str("# Benchmark results\n\nProduced by the tool, not by hand:\n\n");
    md.push_str(&format!("```text\n{command}\n```\n\n"));
    md.push_str(&format!(
        "Machine: {}. The load generator, the engine, Redis and PostgreSQL share it.\n",
        bench::machine()
    ));
    md.push_str("Admission control is opened up for the run (`LUNCHRUSH_RATE_LIMIT=1000`) so the engine, not the per-token limit, is measured.\n\n");
    md.push_str("| scenario | users | orders placed/s | POST place p50 / p99 (ms) | placed → rest p50 / p99 (ms) | outcomes | goose thresholds |\n| --- | --- | --- | --- | --- | --- | --- |\n");
    let mut total_orders = 0u64;
    let mut place_p99_max = 0f64;
    let summary = |name: &str| -> Value {
        std::fs::read_to_string(dir.join(format!("{name}.json")))
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or(Value::Null)
    };
    let number = |key: &str| -> f64 {
        meta.get(key)
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0)
    };
    for scenario in [
        "lunchpeak",
        "lunchpeak-open",
        "flashsale",
        "menuchurn",
        "retrystorm",
        "batchinterference",
    ] {
        let Ok(text) = std::fs::read_to_string(dir.join(format!("{scenario}.json"))) else {
            continue;
        };
        let s: Value = serde_json::from_str(&text)?;
        let place = s["requests"]
            .as_object()
            .and_then(|r| {
                r.iter()
                    .find(|(k, _)| k.contains("place"))
                    .map(|(_, v)| v.clone())
            })
            .unwrap_or(Value::Null);
        total_orders += s["orders_placed"].as_u64().unwrap_or(0);
        place_p99_max = place_p99_max.max(place["p99_ms"].as_f64().unwrap_or(0.0));
        let outcomes: Vec<String> = s["outcomes"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect();
        let thresholds: Vec<String> = s["thresholds"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|t| {
                format!(
                    "`{}` {} ({})",
                    t["rule"].as_str().unwrap_or("?"),
                    if t["passed"].as_bool() == Some(true) {
                        "PASS"
                    } else {
                        "FAIL"
                    },
                    t["observed"].as_str().unwrap_or("?")
                )
            })
            .collect();
        md.push_str(&format!(
            "| {scenario} | {} | {:.0} | {:.1} / {:.1} | {:.0} / {:.0} | {} | {} |\n",
            s["users"],
            s["orders_placed_per_second"].as_f64().unwrap_or(0.0),
            place["p50_ms"].as_f64().unwrap_or(0.0),
            place["p99_ms"].as_f64().unwrap_or(0.0),
            s["placed_to_rest_p50_ms"].as_f64().unwrap_or(0.0),
            s["placed_to_rest_p99_ms"].as_f64().unwrap_or(0.0),
            outcomes.join(", "),
            thresholds.join(", "),
        ));
    }
    let per_1000 = |key: &str| {
        let seconds: f64 = meta.get(key).and_then(|v| v.parse().ok()).unwrap_or(0.0);
        if total_orders == 0 {
            0.0
        } else {
            seconds * 1_000.0 / total_orders as f64
        }
    };
    let commands: f64 = meta
        .get("redis_commands")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    md.push_str(&format!(
        "\nOver all scenarios: {total_orders} orders; Redis commands per order (including those inside Lua, and reads of menus and polls) {:.1}; CPU seconds per 1,000 orders: engine process {:.2}, redis-server {:.2}, PostgreSQL {:.2}.\n\n",
        if total_orders == 0 { 0.0 } else { commands / total_orders as f64 },
        per_1000("cpu_engine_s"), per_1000("cpu_redis_s"), per_1000("cpu_postgres_s"),
    ));
    let check = std::fs::read_to_string(dir.join("check.txt")).unwrap_or_default();
    md.push_str(&format!(
        "`lunchrush check --at-rest --archive` afterwards (exit status {}):\n\n```text\n{}```\n\n",
        meta.get("check_status").cloned().unwrap_or_default(),
        check
    ));
    let place = |name: &str, key: &str| {
        summary(name)["requests"]["POST place"][key]
            .as_f64()
            .unwrap_or(0.0)
    };
    md.push_str(&format!(
        "Closed model: a fixed user count with think time reaches the throughput in the table; \
         `lunchpeak-open` is the open-model variant, throttled to {} requests/s offered \
         (goose `--throttle-requests`), so its latency is measured at a known load.\n\n",
        meta.get("open_rate").map(String::as_str).unwrap_or("?")
    ));
    let alone = place("lunchpeak", "p99_ms");
    let busy = place("batchinterference", "p99_ms");
    md.push_str(&format!(
        "Batch interference: placement p50 / p99 {:.1} / {:.1} ms alone, {:.1} / {:.1} ms while \
         `lunchrush reconcile` ran back to back ({} runs completed within the scenario) and `lunchrush import` bulk-loaded restaurants \
         on the batch lane ({}): p99 ratio {:.2}.\n\n",
        place("lunchpeak", "p50_ms"),
        alone,
        place("batchinterference", "p50_ms"),
        busy,
        meta.get("reconcile_runs").map(String::as_str).unwrap_or("?"),
        meta.get("imported").map(String::as_str).unwrap_or("?"),
        if alone > 0.0 { busy / alone } else { 0.0 },
    ));

    // Side by side: ours, the limit, the Postgres-only peer.
    let peer_seconds = number("peer_lunch_seconds").max(1.0);
    let peer_place = number("peer_lunch_orders") / peer_seconds;
    let peer_sagas = number("peer_lunch_sagas") / peer_seconds;
    let peer_flash = number("peer_flash_attempts") / number("peer_flash_seconds").max(1.0);
    let http_flash = place("flashsale", "per_second");
    let ratio = |a: f64, b: f64| {
        if b > 0.0 {
            format!("{:.1}×", a / b)
        } else {
            "–".into()
        }
    };
    md.push_str("## Side by side: lunchrush, the limit, the Postgres-only peer\n\n");
    md.push_str(&format!(
        "- **lunchrush**: `saga-bench --orders {}` (the engine in-process, no HTTP: 2-line orders \
         through every saga step with the provider simulator) and the HTTP scenarios above.\n\
         - **the limit**: `redis-benchmark -c 50 -P 16 -n {}` of EVALSHA `place_order` alone on the same \
         Redis (`lunchrush-bench limit lunch|flash` prints its arguments); `archive-bench --orders {}` \
         for the archiver against a plain binary COPY of the same rows.\n\
         - **the peer**: `bench/peer/run` — the same saga done the classic way, one PostgreSQL \
         transaction per step (place with row locks, authorize, approve, capture) and an outbox \
         table with its relay, run by pgbench with {} clients on the same PostgreSQL, same menus \
         (50 restaurants × 8 dishes, Zipf(1.1) restaurant skew, 1–3 dishes per order), \
         the provider call left out (free) and commits asynchronous.\n\n",
        meta.get("saga_orders").map(String::as_str).unwrap_or("?"),
        meta.get("limit_requests").map(String::as_str).unwrap_or("?"),
        meta.get("archive_orders").map(String::as_str).unwrap_or("?"),
        meta.get("peer_clients").map(String::as_str).unwrap_or("?"),
    ));
    md.push_str("| measure | lunchrush | the limit | Postgres-only peer | lunchrush / peer |\n| --- | --- | --- | --- | --- |\n");
    md.push_str(&format!(
        "| orders placed/s (lunch mix) | {:.0} (in-process) | {:.0} (place_order alone) | {:.0} | {} |\n",
        number("saga_placements"),
        number("limit_lunch"),
        peer_place,
        ratio(number("saga_placements"), peer_place),
    ));
    md.push_str(&format!(
        "| full sagas/s (placed → captured) | {:.0} (in-process) | – | {:.0} | {} |\n",
        number("saga_full"),
        peer_sagas,
        ratio(number("saga_full"), peer_sagas),
    ));
    md.push_str(&format!(
        "| flash sale: attempts decided/s | {:.0} (over HTTP, goose) | {:.0} (place_order alone) | {:.0} | {} (HTTP), {} (script) |\n",
        http_flash,
        number("limit_flash"),
        peer_flash,
        ratio(http_flash, peer_flash),
        ratio(number("limit_flash"), peer_flash),
    ));
    md.push_str(&format!(
        "| archive: events/s into PostgreSQL | {:.0} (archiver) | {:.0} (plain COPY) | – | archiver / limit {:.2} |\n\n",
        number("archive_rate"),
        number("copy_rate"),
        number("archive_rate") / number("copy_rate").max(1.0),
    ));
    md.push_str(&format!(
        "The peer sold {} of {} flash-sale units and oversold {} items: its row locks keep the rule too; it pays for it in throughput.\n\n",
        meta.get("peer_flash_sold").map(String::as_str).unwrap_or("?"),
        std::env::var("LUNCHRUSH_BENCH_FLASH_STOCK").unwrap_or_else(|_| "?".into()),
        meta.get("peer_lunch_oversold").map(String::as_str).unwrap_or("?"),
    ));

    md.push_str("## Targets\n\n| target | measured | met |\n| --- | --- | --- |\n");
    let full = number("saga_full");
    md.push_str(&format!(
        "| ≥ 10,000 orders/s placed and carried through the saga | {:.0} placed/s, {full:.0} full sagas/s (in-process); {:.0} placed/s over HTTP (lunch peak, closed model) | {} |\n",
        number("saga_placements"),
        summary("lunchpeak")["orders_placed_per_second"].as_f64().unwrap_or(0.0),
        if full >= 10_000.0 { "yes" } else { "no" }
    ));
    md.push_str(&format!(
        "| p99 placement < 20 ms | {place_p99_max:.1} ms (worst scenario) | {} |\n",
        if place_p99_max < 20.0 { "yes" } else { "no" }
    ));
    let flash_ratio = if peer_flash > 0.0 {
        http_flash / peer_flash
    } else {
        0.0
    };
    md.push_str(&format!(
        "| ≥ 10× the Postgres-only peer on flash_sale | {flash_ratio:.1}× over HTTP ({:.1}× script alone) | {} |\n",
        if peer_flash > 0.0 { number("limit_flash") / peer_flash } else { 0.0 },
        if flash_ratio >= 10.0 { "yes" } else { "no" }
    ));
    md.push_str(&format!(
        "\nWhere a full saga's CPU goes (saga-bench): redis-server {:.0} µs, the engine with its workers, \
         the provider simulator and the load {:.0} µs per saga. One Redis alone would carry {:.0} sagas/s; \
         the rest is the engine side, which scales out with more `lunchrush serve` processes on more cores \
         (and Redis with a Redis Cluster's shards), not on this 2-core machine shared by everything.\n",
        number("saga_redis_us"),
        number("saga_process_us"),
        number("redis_ceiling"),
    ));
    std::fs::write(out, md)?;
    Ok(())
}

/// `lunchrush-bench limit lunch|flash`: prepares "the limit", the
/// `place_order` script alone, and prints the redis-benchmark arguments that
/// call it (one per line): a restaurant under the key prefix `limit:` (no
/// worker reads it), order and idempotency keys made unique per call by
/// redis-benchmark's `__rand_int__`. `lunch` orders two dishes with ample
/// stock; `flash` races for one item of LUNCHRUSH_BENCH_FLASH_STOCK units.
async fn limit(kind: &str) -> anyhow::Result<()> {
    use engine::keys::Topic;
    let config = engine::Config {
        redis_url: std::env::var("LUNCHRUSH_REDIS_URL")
            .unwrap_or_else(|_| "redis://127.0.0.1:6379".into()),
        key_prefix: "limit:".into(),
        ..engine::Config::default()
    };
    let engine = bench::connect_engine(&config).await?;
    let rid = format!("limit-{kind}");
    let lines: Vec<(&str, i64, i64)> = match kind {
        "lunch" => vec![
            ("dish-0", 5_000, engine::domain::STOCK_MAX),
            ("dish-1", 6_000, engine::domain::STOCK_MAX),
        ],
        "flash" => vec![(
            "deal",
            990,
            env_usize("LUNCHRUSH_BENCH_FLASH_STOCK", 500) as i64,
        )],
        other => anyhow::bail!("unknown limit {other:?}: lunch or flash"),
    };
    let lane = engine::keys::Lane::Online;
    engine
        .put_restaurant(&rid, &rid, true, true, lane)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    for (item, price, stock) in &lines {
        let put = engine::engine::ItemPut {
            name: item.to_string(),
            price: *price,
            stock: *stock,
            available: true,
            max_per_customer: None,
        };
        engine
            .put_item(&rid, item, &put, lane)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    let keys = engine.keys();
    let p = keys.partition_of_restaurant(&rid);
    let placeholder = uuid::Uuid::nil();
    let total: i64 = lines.iter().map(|l| l.1).sum();
    let script_keys = engine::scripts::place_order::Keys {
        restaurant_key: keys.restaurant(p, &rid),
        // Two placeholders each: redis-benchmark draws every one from
        // random() (2^31 values), too few to keep 300,000 order ids unique.
        order_key: keys
            .order(p, &placeholder)
            .replace(&placeholder.to_string(), "__rand_int__-__rand_int__"),
        idem_key: keys.idempotency(p, "limit-customer", "__rand_int__-__rand_int__"),
        stream: keys.stream(p, Topic::Orders),
        inflight: keys.inflight(p),
        timers: keys.wheel(p),
        guard_key: keys.idempotency_guard("limit-customer", "__rand_int__-__rand_int__"),
        lines: lines
            .iter()
            .map(|(item, _, _)| {
                [
                    keys.item(p, &rid, item),
                    keys.item_per_customer(p, &rid, item),
                ]
            })
            .collect(),
    }
    .into_vec();
    let script_args = engine::scripts::place_order::Args {
        order_id: "__rand_int__".into(),
        saga: "limit-saga".into(),
        customer: "limit-customer".into(),
        rid: rid.clone(),
        fingerprint: "0123456789abcdef".into(),
        expected_total: total,
        idem_ttl: Duration::from_millis(engine::engine::IDEMPOTENCY_TTL_MS),
        payment_window: Duration::from_secs(120),
        // On a standalone Redis the script checks the guard itself.
        guarded: true,
        lines: lines
            .iter()
            .map(|(item, _, _)| (item.to_string(), 1))
            .collect(),
    }
    .into_vec();
    println!("EVALSHA");
    println!("{}", engine.scripts().place_order.sha());
    println!("{}", script_keys.len());
    for word in script_keys.iter().chain(&script_args) {
        println!("{word}");
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("seed") {
        return seed().await;
    }
    if args.get(1).map(String::as_str) == Some("limit") {
        return limit(args.get(2).map(String::as_str).unwrap_or("lunch")).await;
    }
    if args.get(1).map(String::as_str) == Some("report") {
        anyhow::ensure!(
            args.len() == 5,
            "usage: lunchrush-bench report OUT.md COMMAND DIR"
        );
        return report(&args[2], &args[3], &args[4]);
    }
    let metrics = GooseAttack::initialize()?
        .register_scenario(thinking("lunch_peak", transaction!(lunch_peak))?)
        .register_scenario(
            scenario!("flash_sale")
                // A flash sale is a race: no time to think.
                .set_wait_time(Duration::ZERO, Duration::from_millis(5))?
                .register_transaction(transaction!(start_session).set_on_start())
                .register_transaction(transaction!(flash_sale)),
        )
        .register_scenario(thinking("menu_churn", transaction!(menu_churn))?)
        // The lunch peak's load; bench/run runs it while reconciliation and
        // a bulk import work beside it.
        .register_scenario(thinking("batch_interference", transaction!(lunch_peak))?)
        .register_scenario(thinking("retry_storm", transaction!(retry_storm))?)
        .execute()
        .await;
    // A failed `--threshold` is a result to report, not a crash: the
    // summary records every rule's verdict and the exit status says it.
    let (metrics, thresholds_failed) = match metrics {
        Ok(metrics) => (metrics, false),
        Err(GooseError::ThresholdsFailed { metrics, .. }) => (*metrics.0, true),
        Err(error) => return Err(error.into()),
    };

    let outcomes = OUTCOMES.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let mut rest = PLACED_TO_REST_MS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let seconds = metrics.duration.max(1) as f64;
    let mut requests = serde_json::Map::new();
    for (name, aggregate) in &metrics.requests {
        requests.insert(
            name.clone(),
            json!({
                "count": aggregate.success_count + aggregate.fail_count,
                "failed": aggregate.fail_count,
                "per_second": (aggregate.success_count + aggregate.fail_count) as f64 / seconds,
                "p50_ms": aggregate.raw_data.percentile_us(0.5) as f64 / 1_000.0,
                "p99_ms": aggregate.raw_data.percentile_us(0.99) as f64 / 1_000.0,
            }),
        );
    }
    let placed: u64 = outcomes
        .iter()
        .filter(|(k, _)| {
            k.as_str() == "approved" || k.starts_with("rejected ") || k.as_str() == "still running"
        })
        .map(|(_, v)| v)
        .sum();
    let summary = json!({
        "users": metrics.maximum_users,
        "duration_s": metrics.duration,
        "orders_placed": placed,
        "orders_placed_per_second": placed as f64 / seconds,
        "placed_to_rest_p50_ms": percentile(&mut rest, 0.5),
        "placed_to_rest_p99_ms": percentile(&mut rest, 0.99),
        "outcomes": outcomes,
        "requests": requests,
        "thresholds": metrics.thresholds,
    });
    println!("{}", serde_json::to_string_pretty(&summary)?);
    if let Ok(path) = std::env::var("LUNCHRUSH_BENCH_SUMMARY") {
        std::fs::write(&path, serde_json::to_vec_pretty(&summary)?)?;
    }
    anyhow::ensure!(!thresholds_failed, "a --threshold failed (see the summary)");
    Ok(())
}
