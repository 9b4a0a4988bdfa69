//! `lunchrush demo`: the local stack (as `up`), a short lunch-peak load over
//! the real HTTP API with a progress display, a summary, and then the system
//! keeps serving with its URLs and ready-made tokens printed, until Ctrl-C.
//!
//! The load: `--users` customers for `--duration`; each picks a restaurant
//! with Zipf-skewed popularity (a few are hot), reads its menu, orders one to
//! three dishes at the listed prices with an Idempotency-Key, and polls the
//! order until its saga rests. Refusals are counted by their problem `code`.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};

use super::up::UpArgs;

/// Restaurants seeded by the demo.
const RESTAURANTS: usize = 24;
/// Dishes per restaurant.
const DISHES: usize = 6;
/// Zipf exponent of restaurant popularity.
const ZIPF_S: f64 = 1.1;
/// How long one order may take to rest before the demo stops waiting for it.
const SETTLE_WAIT_MAX: Duration = Duration::from_secs(15);
/// Polling interval for an order's status (well under the per-token rate limit).
const POLL_EVERY: Duration = Duration::from_millis(200);

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    #[command(flatten)]
    pub up: UpArgs,
    /// How long the lunch peak lasts.
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Concurrent customers.
    #[arg(long, default_value_t = 64)]
    pub users: usize,
}

#[derive(Default)]
struct Tally {
    placed: u64,
    outcomes: BTreeMap<String, u64>,
    placement_ms: Vec<f64>,
    terminal_ms: Vec<f64>,
}

fn percentile(values: &mut [f64], q: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(|a, b| a.total_cmp(b));
    values[((values.len() - 1) as f64 * q).round() as usize]
}

/// A restaurant index, Zipf-distributed over `RESTAURANTS`.
fn zipf_pick(weights: &[f64]) -> usize {
    let total: f64 = weights.iter().sum();
    let mut x = rand::random::<f64>() * total;
    for (i, w) in weights.iter().enumerate() {
        if x < *w {
            return i;
        }
        x -= w;
    }
    weights.len() - 1
}

pub async fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let (duration, users) = (args.duration, args.users);
    let running = super::up::start(args.up).await?;
    let api = running.api_url.clone();
    let keys = api::auth::Keys::new(running.jwt_secret.as_bytes());
    let admin = mint(&keys, api::auth::Role::Admin, "demo-admin", None);
    let http = reqwest::Client::new();
    seed_menus(&http, &api, &keys).await?;
    // The fragment never reaches the server or its log.
    println!("Watch it live in the operations console: {api}/ops/#token={admin}");
    let tally = Arc::new(Mutex::new(Tally::default()));
    let elapsed = lunch_peak(duration, users, &http, &api, &keys, &tally).await;

    // Quiescence: every saga at rest, then the archive caught up.
    let engine = engine::Engine::new(
        engine::store::connect(&running.config).await?,
        running.config.clone(),
    )
    .await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while engine.unsettled().await? > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let pool = api::postgres_pool(&running.config.postgres_url)?;
    let mut audit = archiver::audit::audit(&engine, &pool).await?;
    while !(audit.passed() && audit.stream_entries == 0) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(250)).await;
        audit = archiver::audit::audit(&engine, &pool).await?;
    }
    let check = engine::check::check(&engine, true).await?;

    let mut t = std::mem::take(&mut *tally.lock().unwrap_or_else(|e| e.into_inner()));
    print_summary(users, elapsed, &mut t, &audit, &check);
    print_try_it(&api, &admin, &keys);
    crate::shutdown::signal().await;
    running.stop().await?;
    Ok(if check.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// A token valid for a day.
fn mint(keys: &api::auth::Keys, role: api::auth::Role, sub: &str, rid: Option<&str>) -> String {
    keys.mint(role, sub, rid, Duration::from_secs(24 * 3600))
        .expect("valid claims")
}

/// The menus, seeded through the API as operators would (one token each:
/// the per-token rate limit applies to admins too).
async fn seed_menus(
    http: &reqwest::Client,
    api: &str,
    keys: &api::auth::Keys,
) -> anyhow::Result<()> {
    for r in 0..RESTAURANTS {
        let rid = format!("demo-{r:02}");
        let admin = mint(
            keys,
            api::auth::Role::Admin,
            &format!("demo-seeder-{r}"),
            None,
        );
        http.put(format!("{api}/v1/restaurants/{rid}"))
            .bearer_auth(&admin)
            .json(&json!({"name": format!("Demo kitchen {r}"), "open": true, "auto_approve": true}))
            .send()
            .await?
            .error_for_status()
            .context("seed a restaurant")?;
        for d in 0..DISHES {
            http.put(format!("{api}/v1/restaurants/{rid}/menu/dish-{d}"))
                .bearer_auth(&admin)
                .json(&json!({"name": format!("Dish {d}"), "price": 6_000 + 1_500 * d as i64, "stock": 100_000, "available": true}))
                .send()
                .await?
                .error_for_status()
                .context("seed a dish")?;
        }
    }
    Ok(())
}

/// `users_max` customers ordering for `duration`, with a progress display;
/// returns how long it took.
async fn lunch_peak(
    duration: Duration,
    users_max: usize,
    http: &reqwest::Client,
    api: &str,
    keys: &api::auth::Keys,
    tally: &Arc<Mutex<Tally>>,
) -> Duration {
    let weights: Arc<Vec<f64>> = Arc::new(
        (1..=RESTAURANTS)
            .map(|k| 1.0 / (k as f64).powf(ZIPF_S))
            .collect(),
    );
    let terminal = std::io::stderr().is_terminal();
    let bar = if terminal {
        ProgressBar::new(duration.as_secs().max(1))
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("lunch peak {bar:30} {pos}/{len}s {msg}")
            .expect("a valid template"),
    );
    let started = Instant::now();
    let mut users = Vec::new();
    for u in 0..users_max {
        let (http, api, weights, tally) = (
            http.clone(),
            api.to_string(),
            weights.clone(),
            tally.clone(),
        );
        let token = mint(
            keys,
            api::auth::Role::Customer,
            &format!("demo-customer-{u}"),
            None,
        );
        users.push(tokio::spawn(async move {
            let mut n = 0u64;
            while started.elapsed() < duration {
                n += 1;
                let rid = format!("demo-{:02}", zipf_pick(&weights));
                let _ = one_order(&http, &api, &token, &rid, &format!("u{u}-{n}"), &tally).await;
            }
        }));
    }
    while started.elapsed() < duration {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let placed = tally.lock().unwrap_or_else(|e| e.into_inner()).placed;
        bar.set_position(started.elapsed().as_secs());
        bar.set_message(format!(
            "{placed} placed, {:.0}/s",
            placed as f64 / started.elapsed().as_secs_f64()
        ));
        if !terminal && started.elapsed().as_millis() % 5_000 < 250 {
            eprintln!(
                "lunch peak: {:.0}s, {placed} orders placed",
                started.elapsed().as_secs_f64()
            );
        }
    }
    for user in users {
        let _ = user.await;
    }
    bar.finish_and_clear();
    started.elapsed()
}

fn print_summary(
    users: usize,
    elapsed: Duration,
    t: &mut Tally,
    audit: &archiver::audit::AuditReport,
    check: &engine::check::CheckReport,
) {
    println!();
    println!("lunch peak: {users} customers for {elapsed:.0?}");
    println!(
        "  orders placed            {:>8}  ({:.0}/s)",
        t.placed,
        t.placed as f64 / elapsed.as_secs_f64()
    );
    for (outcome, count) in &t.outcomes {
        println!("    {outcome:<22} {count:>8}");
    }
    println!(
        "  placement p50 / p99      {:>6.1} / {:.1} ms",
        percentile(&mut t.placement_ms, 0.5),
        percentile(&mut t.placement_ms, 0.99)
    );
    println!(
        "  placed -> rest p50 / p99 {:>6.1} / {:.1} ms",
        percentile(&mut t.terminal_ms, 0.5),
        percentile(&mut t.terminal_ms, 0.99)
    );
    let complete = if audit.passed() {
        "complete"
    } else {
        "INCOMPLETE"
    };
    println!(
        "  archive                  {} events, {} entries left in streams, {complete}",
        audit.events, audit.stream_entries
    );
    let verdict = if check.passed() {
        "PASS: no mismatched pair, stock conserved"
    } else {
        "FAIL"
    };
    println!("  check                    {verdict}");
    if !check.passed() {
        print!("{check}");
    }
}

fn print_try_it(api: &str, admin: &str, keys: &api::auth::Keys) {
    println!();
    println!("Still serving. Try it (Ctrl-C stops everything):");
    println!("  export API={api}");
    println!("  export ADMIN={admin}");
    println!(
        "  export ALICE={}",
        mint(keys, api::auth::Role::Customer, "alice", None)
    );
    println!(
        "  export KITCHEN={}",
        mint(
            keys,
            api::auth::Role::Restaurant,
            "demo-staff",
            Some("demo-00")
        )
    );
    println!("  curl -s $API/v1/restaurants/demo-00/menu -H \"Authorization: Bearer $ALICE\"");
    println!(
        "  curl -s -X POST $API/v1/orders -H \"Authorization: Bearer $ALICE\" -H 'Idempotency-Key: try-1' \\\n       -H 'content-type: application/json' -d '{{\"restaurant_id\":\"demo-00\",\"items\":[{{\"item\":\"dish-0\",\"qty\":1}}],\"expected_total\":6000}}'"
    );
    println!("  curl -s $API/metrics | grep lunchrush_saga_outcomes");
    println!("  open the operations console: $API/ops/#token=$ADMIN");
}

/// GETs `url` with `token` and reads the answer as JSON.
async fn get_json(http: &reqwest::Client, url: String, token: &str) -> anyhow::Result<Value> {
    Ok(http
        .get(url)
        .bearer_auth(token)
        .send()
        .await?
        .json()
        .await?)
}

/// One customer order: menu, placement, polling to rest.
async fn one_order(
    http: &reqwest::Client,
    api: &str,
    token: &str,
    rid: &str,
    key: &str,
    tally: &Mutex<Tally>,
) -> anyhow::Result<()> {
    let menu = get_json(http, format!("{api}/v1/restaurants/{rid}/menu"), token).await?;
    let body = pick_dishes(&menu, rid)?;
    let placing = Instant::now();
    let response = http
        .post(format!("{api}/v1/orders"))
        .bearer_auth(token)
        .header("idempotency-key", key)
        .json(&body)
        .send()
        .await?;
    let placement_ms = placing.elapsed().as_secs_f64() * 1_000.0;
    let status = response.status();
    let reply: Value = response.json().await.unwrap_or(Value::Null);
    if status.as_u16() != 202 {
        let code = reply["code"].as_str().unwrap_or("error").to_string();
        *tally
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .outcomes
            .entry(format!("refused {code}"))
            .or_default() += 1;
        if status.as_u16() == 429 || status.as_u16() == 503 {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        return Ok(());
    }
    {
        let mut t = tally.lock().unwrap_or_else(|e| e.into_inner());
        t.placed += 1;
        t.placement_ms.push(placement_ms);
    }
    let id = reply["order_id"].as_str().unwrap_or_default().to_string();
    wait_for_rest(http, api, token, &id, placing, tally).await
}

/// One to three dishes of `menu` at its prices, as a placement body.
fn pick_dishes(menu: &Value, rid: &str) -> anyhow::Result<Value> {
    let items = menu["items"].as_array().cloned().unwrap_or_default();
    anyhow::ensure!(!items.is_empty(), "empty menu");
    let lines = 1 + rand::random::<u32>() as usize % 3;
    let first = rand::random::<u32>() as usize % items.len();
    let chosen: Vec<&Value> = (0..lines.min(items.len()))
        .map(|i| &items[(first + i) % items.len()])
        .collect();
    let total: i64 = chosen
        .iter()
        .map(|i| i["price"].as_i64().unwrap_or(0))
        .sum();
    Ok(json!({
        "restaurant_id": rid,
        "items": chosen.iter().map(|i| json!({"item": i["item"], "qty": 1})).collect::<Vec<_>>(),
        "expected_total": total,
    }))
}

/// Polls the order as its customer would until it rests (or
/// [`SETTLE_WAIT_MAX`] passes), and counts its outcome.
async fn wait_for_rest(
    http: &reqwest::Client,
    api: &str,
    token: &str,
    id: &str,
    placing: Instant,
    tally: &Mutex<Tally>,
) -> anyhow::Result<()> {
    let waiting = Instant::now();
    while waiting.elapsed() < SETTLE_WAIT_MAX {
        tokio::time::sleep(POLL_EVERY).await;
        let order = get_json(http, format!("{api}/v1/orders/{id}"), token).await?;
        let status = order["status"].as_str().unwrap_or("");
        let pay = order["payment"]["status"].as_str().unwrap_or("");
        let resting = match status {
            "APPROVED" | "DISPATCHED" | "CONFIRMED" => pay == "CAPTURED",
            "REJECTED" => matches!(pay, "NONE" | "DECLINED" | "VOIDED" | "REFUNDED"),
            _ => false,
        };
        if resting {
            let outcome = match order["reason"].as_str() {
                Some(reason) => format!("rejected {reason}"),
                None => "approved".to_string(),
            };
            let mut t = tally.lock().unwrap_or_else(|e| e.into_inner());
            t.terminal_ms
                .push(placing.elapsed().as_secs_f64() * 1_000.0);
            *t.outcomes.entry(outcome).or_default() += 1;
            return Ok(());
        }
    }
    *tally
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .outcomes
        .entry("still running".into())
        .or_default() += 1;
    Ok(())
}
