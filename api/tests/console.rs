//! The operations console (`/ops/`) driven in a real headless Chromium
//! through chromedriver (`scripts/dev install` installs both), against a
//! real stack: Redis, PostgreSQL, the provider simulator, the saga workers
//! and the archiver. Each test saves screenshots under
//! `target/console-screenshots/`; with `LUNCHRUSH_UPDATE_DOCS=1` the
//! overview's also goes to `docs/console-overview.png` for the README.

mod helpers;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use api::admission::Limits;
use fantoccini::{Client, ClientBuilder, Locator};
use helpers::{TestApp, order_body, strings};
use serde_json::{Value, json};

const DEADLINE: Duration = Duration::from_secs(60);

/// A headless Chromium behind its own chromedriver on a free port.
struct Browser {
    client: Client,
    driver: std::process::Child,
    _profile: tempfile::TempDir,
}

impl Browser {
    async fn start() -> Self {
        let driver_path = std::env::var("LUNCHRUSH_CHROMEDRIVER")
            .unwrap_or_else(|_| "/usr/bin/chromedriver".into());
        let chromium =
            std::env::var("LUNCHRUSH_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
        assert!(
            std::path::Path::new(&driver_path).exists() && std::path::Path::new(&chromium).exists(),
            "the console tests need Chromium and chromedriver ({chromium}, {driver_path}): run scripts/dev install"
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = std::process::Command::new(&driver_path)
            .arg(format!("--port={port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                started.elapsed() < DEADLINE,
                "chromedriver did not listen on {port}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let profile = tempfile::tempdir().unwrap();
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": chromium,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--disable-quic", "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--window-size=1440,1100",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            }),
        );
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = ClientBuilder::new(connector)
            .capabilities(capabilities)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .expect("a Chromium session");
        Self {
            client,
            driver,
            _profile: profile,
        }
    }

    /// The text of `selector` once it exists and `done` holds for it.
    async fn text_when(&self, selector: &str, done: impl Fn(&str) -> bool) -> String {
        let started = Instant::now();
        let mut last = String::new();
        loop {
            if let Ok(element) = self.client.find(Locator::Css(selector)).await
                && let Ok(text) = element.text().await
            {
                if done(&text) {
                    return text;
                }
                last = text;
            }
            if started.elapsed() > DEADLINE {
                self.screenshot("failure").await;
                panic!(
                    "{selector} never became what was expected; last: {last:?} (screenshot: failure.png)"
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The text of `selector` once it contains `needle`.
    async fn text_containing(&self, selector: &str, needle: &str) -> String {
        self.text_when(selector, |t| t.contains(needle)).await
    }

    /// Clicks `selector`, again if the page re-rendered it meanwhile.
    async fn click(&self, selector: &str) {
        let started = Instant::now();
        loop {
            let clicked = match self.client.find(Locator::Css(selector)).await {
                Ok(element) => element.click().await.map_err(|e| e.to_string()),
                Err(error) => Err(error.to_string()),
            };
            match clicked {
                Ok(()) => return,
                Err(error) => assert!(
                    started.elapsed() < DEADLINE,
                    "cannot click {selector}: {error}"
                ),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn type_into(&self, selector: &str, text: &str) {
        self.text_when(selector, |_| true).await;
        let field = self.client.find(Locator::Css(selector)).await.unwrap();
        field.clear().await.unwrap();
        field.send_keys(text).await.unwrap();
    }

    /// Opens `path` of the API's server in this browser.
    async fn open(&self, url: &str, path: &str) {
        self.client.goto(&format!("{url}{path}")).await.unwrap();
    }

    async fn screenshot(&self, name: &str) {
        let png = self.client.screenshot().await.unwrap();
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/console-screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{name}.png")), &png).unwrap();
        if name == "overview" && std::env::var("LUNCHRUSH_UPDATE_DOCS").is_ok_and(|v| v == "1") {
            let docs =
                PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/console-overview.png");
            std::fs::write(docs, &png).unwrap();
        }
    }

    async fn close(mut self) {
        let _ = self.client.clone().close().await;
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn number(text: &str) -> f64 {
    text.replace(',', "").trim().parse().unwrap_or(-1.0)
}

/// Places orders at `per_sec` (open model: one task per placement) until
/// `stop`; the ids of those accepted go to the answer.
fn lunch_load(
    app: &TestApp,
    rid: &'static str,
    per_sec: u64,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Vec<String>> {
    let url = app.url.clone();
    let tokens: Vec<Arc<str>> = (0..20)
        .map(|c| Arc::from(app.customer(&format!("eater-{c}"))))
        .collect();
    tokio::spawn(async move {
        let http = reqwest::Client::new();
        let placed = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / per_sec));
        let mut inflight = tokio::task::JoinSet::new();
        let mut n = 0usize;
        while !stop.load(Ordering::Relaxed) {
            tick.tick().await;
            n += 1;
            let request = http
                .post(format!("{url}/v1/orders"))
                .bearer_auth(&tokens[n % tokens.len()])
                .header("idempotency-key", format!("load-{n}"))
                .json(&order_body(rid, &[("ramen", 1)], 1_200));
            let placed = placed.clone();
            inflight.spawn(async move {
                if let Ok(response) = request.send().await
                    && response.status() == 202
                    && let Ok(body) = response.json::<Value>().await
                {
                    let id = body["order_id"].as_str().unwrap_or_default().to_string();
                    placed.lock().unwrap().push(id);
                }
            });
            while inflight.try_join_next().is_some() {}
        }
        while inflight.join_next().await.is_some() {}
        std::mem::take(&mut *placed.lock().unwrap())
    })
}

fn archived_app_config(config: &mut engine::Config) {
    // Below an hour, the test app runs an archiver too (retirement never
    // comes within a test).
    config.live_retention = Some(Duration::from_secs(1800));
}

/// Under a lunch load the overview updates without a reload; an order found
/// by id shows its whole timeline beside the provider's view; a deep link
/// opens it directly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_overview_moves_under_load_and_an_order_shows_its_whole_story() {
    let app = helpers::spawn_app_configured(Limits::default(), archived_app_config).await;
    app.seed("noodles", true, &[("ramen", 1_200, 1_000_000)])
        .await;
    let stop = Arc::new(AtomicBool::new(false));
    let load = lunch_load(&app, "noodles", 40, stop.clone());
    let browser = Browser::start().await;
    browser
        .client
        .goto(&format!("{}/ops/#token={}", app.url, app.admin()))
        .await
        .unwrap();

    // Live: the cumulative count moves while the page is never reloaded.
    let first = number(
        &browser
            .text_when("#kpi-placements-total", |t| number(t) > 0.0)
            .await,
    );
    browser
        .text_when("#kpi-placements-total", |t| number(t) >= first + 40.0)
        .await;
    browser.text_when("#kpi-placed", |t| number(t) > 0.0).await;
    browser
        .text_when("#kpi-captured", |t| number(t) > 0.0)
        .await;
    browser.text_when("#funnel", |t| !t.is_empty()).await;
    // The memory budget: read from Redis by the engine's watcher.
    browser
        .text_when("#memory-budget", |t| {
            t.contains("taking new orders") && t.contains("used of")
        })
        .await;
    browser
        .text_when("#archiver-lag", |t| t.contains("in Redis"))
        .await;
    browser
        .text_when("#groups", |t| {
            t.contains("archiver") && t.contains("payment")
        })
        .await;
    let url = browser.client.current_url().await.unwrap();
    assert!(
        url.fragment().is_none(),
        "the token left the address bar: {url}"
    );
    if std::env::var("LUNCHRUSH_UPDATE_DOCS").is_ok_and(|v| v == "1") {
        // The README's picture: let the charts fill for half a minute.
        browser
            .text_when("#kpi-placements-total", |t| number(t) >= first + 1_000.0)
            .await;
    }
    browser.screenshot("overview").await;

    stop.store(true, Ordering::Relaxed);
    let placed = load.await.unwrap();
    let id = placed.first().expect("the load placed orders").clone();
    let admin = app.admin();
    app.wait_for(&id, &admin, |o| o["payment"]["status"] == "CAPTURED")
        .await;

    // Found by id from the search form.
    browser.click("#nav a[data-view=orders]").await;
    browser.type_into("#search-id", &id).await;
    browser.click("#search-button").await;
    let timeline = browser
        .text_when("#timeline", |t| {
            t.contains("OrderPlaced") && t.contains("PaymentCaptured")
        })
        .await;
    // A sale: its capture stands for the authorization and the approvals.
    for event in ["PaymentAuthorized", "RestaurantApproved", "OrderApproved"] {
        assert!(!timeline.contains(event), "{event} in a sale's {timeline}");
    }
    let payment = browser.text_containing("#order-payment", "captured").await;
    assert!(payment.contains("CAPTURED"), "{payment}");
    browser.text_when("#order-agrees", |t| t == "yes").await;
    browser
        .text_when("#timeline", |t| !t.contains("not yet"))
        .await;
    browser.screenshot("order").await;

    // The same page from a deep link.
    browser.open(&app.url, &format!("/ops/orders/{id}")).await;
    browser
        .text_containing("#timeline", "PaymentCaptured")
        .await;
    browser.close().await;
}

/// Fails notices while `failing`; counts what it sent.
#[derive(Default)]
struct FlakyNotifier {
    failing: AtomicBool,
}

impl engine::notify::Notifier for FlakyNotifier {
    fn channel(&self) -> &'static str {
        "flaky"
    }

    fn send<'a>(&'a self, _: &'a engine::notify::Notification) -> engine::notify::SendFuture<'a> {
        Box::pin(async move {
            if self.failing.load(Ordering::Relaxed) {
                Err(engine::notify::NotifyError::Refused(
                    "the notice service is down (test)".into(),
                ))
            } else {
                Ok(1)
            }
        })
    }
}

/// A customer's token is refused; an admin logs in with the form; a timer
/// whose notice kept failing appears under dead letters with its reason;
/// once the notice service is back, Retry sends it and the entry leaves the
/// list; the action is in the audit table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_is_retried_from_the_page_and_the_action_is_audited() {
    let notifier = Arc::new(FlakyNotifier::default());
    notifier.failing.store(true, Ordering::Relaxed);
    let app = helpers::spawn_app_full(
        Limits::default(),
        |config| {
            archived_app_config(config);
            config.timers.confirm_notice_after = Duration::from_millis(100);
        },
        notifier.clone(),
        |workers| workers.deliveries_max = 2,
    )
    .await;
    app.seed("deli", true, &[("bagel", 500, 100)]).await;
    let customer = app.customer("carol");
    let id = app
        .place_ok(
            &customer,
            "dead-1",
            order_body("deli", &[("bagel", 1)], 500),
        )
        .await;
    app.wait_for(&id, &customer, |o| o["payment"]["status"] == "CAPTURED")
        .await;
    app.post(
        &format!("/v1/orders/{id}/dispatch"),
        &app.restaurant("deli"),
        None,
    )
    .await
    .ok(200);
    let admin = app.admin();
    let started = Instant::now();
    while app.get("/v1/admin/dead-letters", &admin).await.ok(200)["letters"]
        .as_array()
        .unwrap()
        .is_empty()
    {
        assert!(
            started.elapsed() < DEADLINE,
            "the failing notice never became a dead letter"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let browser = Browser::start().await;
    browser
        .client
        .goto(&format!("{}/ops/#token={}", app.url, customer))
        .await
        .unwrap();
    browser.text_containing("#login-error", "admins").await;
    assert!(
        !browser
            .client
            .find(Locator::Css("#nav"))
            .await
            .unwrap()
            .is_displayed()
            .await
            .unwrap()
    );

    browser.type_into("#login-token", &admin).await;
    browser.click("#login-button").await;
    browser.click("#nav a[data-view=letters]").await;
    let row = browser
        .text_when("#letters-table", |t| {
            t.contains("TimerFired") && t.contains("notice service is down")
        })
        .await;
    assert!(row.contains("order"), "the failing group is named: {row}");
    browser.screenshot("dead-letters").await;

    // Retrying while the service is still down fails and keeps the entry.
    browser
        .type_into("#letters-reason", "notice service restored, INC-42")
        .await;
    browser.click("#letters-table button.retry").await;
    browser.text_containing("#letters-result", "failed").await;
    browser
        .text_containing("#letters-table", "TimerFired")
        .await;

    notifier.failing.store(false, Ordering::Relaxed);
    browser.click("#letters-table button.retry").await;
    browser.text_containing("#letters-result", "done").await;
    browser
        .text_when("#letters-table", |t| !t.contains("TimerFired"))
        .await;

    // The notice went out and the saga moved on (the auto-confirmation is set).
    let detail = app.get_ok(&format!("/v1/admin/orders/{id}"), &admin).await;
    let notices = strings(&detail["notifications"], "kind");
    assert_eq!(notices, ["confirm_notice"], "{detail}");
    let timers = detail["timers"].as_array().unwrap();
    assert!(
        timers.iter().any(|t| t["kind"] == "auto_confirm"),
        "{detail}"
    );
    let outcomes = strings(&detail["actions"], "outcome");
    assert_eq!(outcomes, ["done", "failed"], "newest first: {detail}");
    let actions = detail["actions"].as_array().unwrap();
    assert!(actions.iter().all(|a| a["actor"] == "ops"
        && a["action"] == "retry"
        && a["reason"] == "notice service restored, INC-42"));
    let client = app.pool().get().await.unwrap();
    let audited: i64 = client
        .query_one(
            "SELECT count(*) FROM operator_actions WHERE order_id = $1::text::uuid",
            &[&id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(audited, 2);

    // The order's page shows the action on its timeline.
    browser.open(&app.url, &format!("/ops/orders/{id}")).await;
    browser.text_containing("#order-actions", "INC-42").await;
    // Its delayed tasks: the notice's timer fired late (it was dead-lettered
    // in between) and the notice went out through the notifier.
    browser
        .text_containing("#order-timers-fired", "confirm_notice")
        .await;
    browser
        .text_containing("#order-notifications", "flaky")
        .await;
    browser.close().await;
}

/// Stuck sagas in bulk: two orders wait for a restaurant that never
/// answers; the operator selects both and compensates them, but one was
/// accepted meanwhile: that one is refused (it moved), the other is
/// rejected with its stock back and its authorization voided; both
/// attempts are audited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stuck_sagas_are_compensated_in_bulk_except_one_that_moved() {
    let app = helpers::spawn_app_configured(Limits::default(), archived_app_config).await;
    app.seed("slow", false, &[("soup", 800, 10)]).await;
    let customer = app.customer("frank");
    let mut ids = Vec::new();
    for key in ["stuck-a", "stuck-b"] {
        let id = app
            .place_ok(&customer, key, order_body("slow", &[("soup", 1)], 800))
            .await;
        app.wait_for(&id, &customer, |o| o["status"] == "PAID")
            .await;
        ids.push(id);
    }
    let admin = app.admin();
    let browser = Browser::start().await;
    browser
        .open(&app.url, &format!("/ops/stuck#token={admin}"))
        .await;
    browser.type_into("#stuck-sla", "0s").await;
    browser.click("#stuck-load").await;
    let listed = browser
        .text_when("#stuck-table", |t| {
            ids.iter().all(|id| t.contains(id.as_str()))
        })
        .await;
    assert!(listed.contains("restaurant decision"), "{listed}");
    for id in &ids {
        browser
            .click(&format!("#stuck-table input.pick[value='{id}']"))
            .await;
    }
    // The restaurant answers one of them after the operator looked.
    app.post(
        &format!("/v1/orders/{}/accept", ids[1]),
        &app.restaurant("slow"),
        None,
    )
    .await
    .ok(200);
    browser
        .type_into("#stuck-reason", "kitchen offline, INC-7")
        .await;
    browser.click("#stuck-compensate").await;
    let result = browser
        .text_containing("#stuck-result", "compensate:")
        .await;
    assert!(result.contains("1 done, 1 refused"), "{result}");
    browser.screenshot("stuck").await;

    let rejected = app
        .wait_for(&ids[0], &admin, |o| o["payment"]["status"] == "VOIDED")
        .await;
    assert_eq!(rejected["status"], "REJECTED");
    assert_eq!(rejected["reason"], "operator");
    let accepted = app
        .wait_for(&ids[1], &admin, |o| o["payment"]["status"] == "CAPTURED")
        .await;
    assert_eq!(accepted["status"], "APPROVED");
    let menu = app.engine.menu("slow").await.unwrap().unwrap();
    assert_eq!(menu.items[0].stock, 9, "one unit back, one sold");
    for (id, outcome) in [(&ids[0], "done"), (&ids[1], "refused")] {
        let audit = app
            .get_ok(&format!("/v1/admin/actions?order={id}"), &admin)
            .await;
        assert_eq!(audit["actions"][0]["action"], "compensate", "{audit}");
        assert_eq!(audit["actions"][0]["outcome"], outcome, "{audit}");
        assert_eq!(audit["actions"][0]["reason"], "kitchen offline, INC-7");
    }
    browser.close().await;
}
