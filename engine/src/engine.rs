//! [`Engine`]: every state change of lunchrush, each one Lua script.
//!
//! The engine is cheap to clone (an `Arc`) and shared by the API handlers,
//! the saga workers and the batch tools of one process.

use std::collections::HashMap;
use std::sync::Arc;

use fred::prelude::*;
use uuid::Uuid;

use crate::config::Config;
use crate::domain::{
    Invalid, MENU_ITEMS_MAX, Menu, MenuItem, Order, OrderStatus, PaymentStatus, PlaceOrder,
};
use crate::keys::{KeySpace, Lane, Topic};
use crate::scripts::Scripts;

/// Idempotency records are kept 25 hours: "at least 24 h" with an hour of
/// margin for clients retrying across the day boundary.
pub const IDEMPOTENCY_TTL_MS: u64 = 25 * 3600 * 1000;

/// Redis failures (the only operating error of a transition).
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("redis: {0}")]
    Redis(#[from] fred::error::Error),
    #[error("redis returned an unexpected reply from {script}: {reply:?}")]
    Reply {
        script: &'static str,
        reply: Vec<String>,
    },
}

/// Why a placement was refused (nothing changed).
#[derive(Debug, thiserror::Error)]
pub enum PlaceError {
    #[error(transparent)]
    Invalid(#[from] Invalid),
    #[error("this Idempotency-Key was used for another request (order {order})")]
    IdempotencyConflict { order: String },
    #[error("restaurant {0} does not exist")]
    RestaurantNotFound(String),
    #[error("restaurant {0} is closed")]
    RestaurantClosed(String),
    #[error("unknown items: {}", .0.join(", "))]
    ItemNotFound(Vec<String>),
    #[error("items not available: {}", .0.join(", "))]
    ItemUnavailable(Vec<String>),
    #[error("out of stock: {}", .0.join(", "))]
    OutOfStock(Vec<String>),
    #[error("over the per-customer limit: {}", .0.join(", "))]
    LimitExceeded(Vec<String>),
    #[error("prices changed: the current total is {current_total}")]
    PriceChanged { current_total: i64 },
    #[error(transparent)]
    Engine(#[from] EngineError),
}

impl From<fred::error::Error> for PlaceError {
    fn from(error: fred::error::Error) -> Self {
        PlaceError::Engine(EngineError::Redis(error))
    }
}

/// A placed order (or the first answer again, for a repeated request).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placed {
    pub order_id: Uuid,
    pub total: i64,
    /// The same Idempotency-Key and request were seen before.
    pub duplicate: bool,
}

/// What a transition script answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The transition happened.
    Applied,
    /// It had already happened (a redelivery): nothing changed.
    Unchanged,
    /// It is not legal now (`detail` says why): nothing changed.
    Refused(String),
    NotFound,
}

/// A transition's outcome plus the order's state after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub outcome: Outcome,
    pub status: Option<OrderStatus>,
    pub pay: Option<PaymentStatus>,
    pub version: u64,
    pub decision: String,
    pub reason: String,
}

impl Transition {
    fn parse(script: &'static str, reply: Vec<String>) -> Result<Self, EngineError> {
        if reply.len() < 7 {
            return Err(EngineError::Reply { script, reply });
        }
        let outcome = match (reply[0].as_str(), reply[6].as_str()) {
            ("ok", _) => Outcome::Applied,
            ("noop", _) => Outcome::Unchanged,
            ("err", "not_found") => Outcome::NotFound,
            ("err", detail) => Outcome::Refused(detail.to_string()),
            _ => return Err(EngineError::Reply { script, reply }),
        };
        Ok(Self {
            outcome,
            status: OrderStatus::parse(&reply[1]),
            pay: PaymentStatus::parse(&reply[2]),
            version: reply[3].parse().unwrap_or(0),
            decision: reply[4].clone(),
            reason: reply[5].clone(),
        })
    }

    /// Applied or already so.
    pub fn is_done(&self) -> bool {
        matches!(self.outcome, Outcome::Applied | Outcome::Unchanged)
    }
}

/// What the payment provider said happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PaymentOutcome {
    Authorized,
    Declined,
    Captured,
    Voided,
    Refunded,
    /// The provider refused a capture (authorization expired or voided).
    CaptureFailed,
    /// Reconciliation: the provider holds no capture for an order recorded
    /// CAPTURED; the payment becomes VOIDED and the order REJECTED.
    Corrected,
}

impl PaymentOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            PaymentOutcome::Authorized => "authorized",
            PaymentOutcome::Declined => "declined",
            PaymentOutcome::Captured => "captured",
            PaymentOutcome::Voided => "voided",
            PaymentOutcome::Refunded => "refunded",
            PaymentOutcome::CaptureFailed => "capture_failed",
            PaymentOutcome::Corrected => "corrected",
        }
    }
}

/// Who cancels or confirms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Actor {
    Customer,
    Restaurant,
    Admin,
    Timer,
}

impl Actor {
    pub fn as_str(self) -> &'static str {
        match self {
            Actor::Customer => "customer",
            Actor::Restaurant => "restaurant",
            Actor::Admin => "admin",
            Actor::Timer => "timer",
        }
    }
}

/// A partial menu-item update (`None` = unchanged).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ItemPatch {
    pub name: Option<String>,
    pub price: Option<i64>,
    pub available: Option<bool>,
    pub stock_delta: Option<i64>,
    pub max_per_customer: Option<Option<i64>>,
}

/// A full menu item (`PUT`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemPut {
    pub name: String,
    pub price: i64,
    pub stock: i64,
    pub available: bool,
    pub max_per_customer: Option<i64>,
}

/// Why a menu edit was refused.
#[derive(Debug, thiserror::Error)]
pub enum MenuError {
    #[error("restaurant {0} does not exist")]
    RestaurantNotFound(String),
    #[error("item {0} does not exist")]
    ItemNotFound(String),
    #[error("the stock change would take units on hand below zero")]
    StockNegative,
    #[error(
        "the stock change would take units on hand above {}",
        crate::domain::STOCK_MAX
    )]
    StockTooHigh,
    #[error("the menu already has {MENU_ITEMS_MAX} items")]
    MenuFull,
    #[error(transparent)]
    Engine(#[from] EngineError),
}

impl From<fred::error::Error> for MenuError {
    fn from(error: fred::error::Error) -> Self {
        MenuError::Engine(EngineError::Redis(error))
    }
}

struct Inner {
    redis: Client,
    keys: KeySpace,
    scripts: Scripts,
    config: Config,
    /// Woken whenever this process emits an event, so its own workers pick
    /// it up at once instead of at their next poll.
    wake: tokio::sync::Notify,
}

/// The engine of one process.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("keys", &self.inner.keys)
            .finish()
    }
}

fn millis(duration: std::time::Duration) -> String {
    duration.as_millis().to_string()
}

fn flag(value: bool) -> String {
    if value { "1".into() } else { "0".into() }
}

impl Engine {
    /// An engine over an initialized client; loads every script.
    pub async fn new(redis: Client, config: Config) -> Result<Self, EngineError> {
        let scripts = Scripts::new();
        scripts.load_all(&redis).await?;
        Ok(Self {
            inner: Arc::new(Inner {
                keys: KeySpace::new(&config.key_prefix, config.partitions),
                redis,
                scripts,
                config,
                wake: tokio::sync::Notify::new(),
            }),
        })
    }

    pub fn redis(&self) -> &Client {
        &self.inner.redis
    }

    pub fn keys(&self) -> &KeySpace {
        &self.inner.keys
    }

    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    pub fn scripts(&self) -> &Scripts {
        &self.inner.scripts
    }

    /// Resolves when this process emits an event after the future was
    /// enabled (`Notified::enable`) or first polled.
    pub fn local_event(&self) -> tokio::sync::futures::Notified<'_> {
        self.inner.wake.notified()
    }

    fn woke(&self) {
        self.inner.wake.notify_waiters();
    }

    // ---- restaurants and menus -------------------------------------------

    /// Creates or replaces a restaurant.
    pub async fn put_restaurant(
        &self,
        restaurant: &str,
        name: &str,
        open: bool,
        auto_approve: bool,
        lane: Lane,
    ) -> Result<(), MenuError> {
        self.upsert_restaurant(
            "put",
            restaurant,
            Some(name),
            Some(open),
            Some(auto_approve),
            lane,
        )
        .await
    }

    /// Changes `open` and/or `auto_approve` of an existing restaurant.
    pub async fn patch_restaurant(
        &self,
        restaurant: &str,
        open: Option<bool>,
        auto_approve: Option<bool>,
        lane: Lane,
    ) -> Result<(), MenuError> {
        self.upsert_restaurant("patch", restaurant, None, open, auto_approve, lane)
            .await
    }

    async fn upsert_restaurant(
        &self,
        mode: &str,
        restaurant: &str,
        name: Option<&str>,
        open: Option<bool>,
        auto_approve: Option<bool>,
        lane: Lane,
    ) -> Result<(), MenuError> {
        let keys = self.keys();
        let p = keys.partition_of_restaurant(restaurant);
        let reply = self
            .scripts()
            .restaurant_upsert
            .call(
                self.redis(),
                vec![
                    keys.restaurant(p, restaurant),
                    keys.restaurants(p),
                    keys.lane_stream(p, Topic::Menu, lane),
                ],
                vec![
                    mode.into(),
                    restaurant.into(),
                    name.unwrap_or("").into(),
                    open.map(flag).unwrap_or_default(),
                    auto_approve.map(flag).unwrap_or_default(),
                ],
            )
            .await?;
        match reply.first().map(String::as_str) {
            Some("ok") => Ok(()),
            _ => Err(MenuError::RestaurantNotFound(restaurant.to_string())),
        }
    }

    /// Creates or replaces a menu item; `stock` becomes the units on hand.
    pub async fn put_item(
        &self,
        restaurant: &str,
        item: &str,
        put: &ItemPut,
        lane: Lane,
    ) -> Result<MenuItem, MenuError> {
        self.upsert_item(
            "put",
            restaurant,
            item,
            [
                put.name.clone(),
                put.price.to_string(),
                put.stock.to_string(),
                flag(put.available),
                put.max_per_customer.unwrap_or(0).to_string(),
            ],
            lane,
        )
        .await
    }

    /// Changes some fields of an existing item atomically.
    pub async fn patch_item(
        &self,
        restaurant: &str,
        item: &str,
        patch: &ItemPatch,
        lane: Lane,
    ) -> Result<MenuItem, MenuError> {
        self.upsert_item(
            "patch",
            restaurant,
            item,
            [
                patch.name.clone().unwrap_or_default(),
                patch.price.map(|p| p.to_string()).unwrap_or_default(),
                patch.stock_delta.map(|d| d.to_string()).unwrap_or_default(),
                patch.available.map(flag).unwrap_or_default(),
                patch
                    .max_per_customer
                    .map(|m| m.unwrap_or(0).to_string())
                    .unwrap_or_default(),
            ],
            lane,
        )
        .await
    }

    async fn upsert_item(
        &self,
        mode: &str,
        restaurant: &str,
        item: &str,
        fields: [String; 5],
        lane: Lane,
    ) -> Result<MenuItem, MenuError> {
        let keys = self.keys();
        let p = keys.partition_of_restaurant(restaurant);
        let mut args = vec![mode.to_string(), restaurant.to_string(), item.to_string()];
        args.extend(fields);
        args.push(MENU_ITEMS_MAX.to_string());
        args.push(crate::domain::STOCK_MAX.to_string());
        let reply = self
            .scripts()
            .menu_upsert
            .call(
                self.redis(),
                vec![
                    keys.restaurant(p, restaurant),
                    keys.items(p, restaurant),
                    keys.item(p, restaurant, item),
                    keys.lane_stream(p, Topic::Menu, lane),
                ],
                args,
            )
            .await?;
        match reply.first().map(String::as_str) {
            Some("ok") if reply.len() == 6 => Ok(MenuItem {
                item: item.to_string(),
                name: reply[1].clone(),
                price: reply[2].parse().unwrap_or(0),
                stock: reply[3].parse().unwrap_or(0),
                available: reply[4] == "1",
                max_per_customer: reply[5].parse().ok().filter(|&m: &i64| m > 0),
                supplied: 0,
                stock_version: 0,
            }),
            Some("err") => Err(match reply.get(1).map(String::as_str) {
                Some("restaurant_not_found") => MenuError::RestaurantNotFound(restaurant.into()),
                Some("item_not_found") => MenuError::ItemNotFound(item.into()),
                Some("stock_negative") => MenuError::StockNegative,
                Some("stock_too_high") => MenuError::StockTooHigh,
                Some("menu_full") => MenuError::MenuFull,
                _ => MenuError::Engine(EngineError::Reply {
                    script: "menu_upsert",
                    reply,
                }),
            }),
            _ => Err(MenuError::Engine(EngineError::Reply {
                script: "menu_upsert",
                reply,
            })),
        }
    }

    /// The restaurant and its menu, items sorted by id; `None` if unknown.
    pub async fn menu(&self, restaurant: &str) -> Result<Option<Menu>, EngineError> {
        let keys = self.keys();
        let p = keys.partition_of_restaurant(restaurant);
        let head: HashMap<String, String> =
            self.redis().hgetall(keys.restaurant(p, restaurant)).await?;
        if head.is_empty() {
            return Ok(None);
        }
        let mut ids: Vec<String> = self.redis().smembers(keys.items(p, restaurant)).await?;
        ids.sort();
        let reads = ids.iter().map(|item| {
            self.redis()
                .hgetall::<HashMap<String, String>, _>(keys.item(p, restaurant, item))
        });
        let fields = futures::future::try_join_all(reads).await?;
        let items = ids
            .into_iter()
            .zip(fields)
            .map(|(item, f)| {
                let int = |k: &str| f.get(k).and_then(|v| v.parse::<i64>().ok()).unwrap_or(0);
                MenuItem {
                    name: f.get("name").cloned().unwrap_or_default(),
                    price: int("price"),
                    stock: int("stock"),
                    available: f.get("available").map(String::as_str) == Some("1"),
                    max_per_customer: Some(int("max_pc")).filter(|&m| m > 0),
                    supplied: int("supplied"),
                    stock_version: int("sv"),
                    item,
                }
            })
            .collect();
        Ok(Some(Menu {
            restaurant_id: restaurant.to_string(),
            name: head.get("name").cloned().unwrap_or_default(),
            open: head.get("open").map(String::as_str) == Some("1"),
            auto_approve: head.get("auto").map(String::as_str) == Some("1"),
            items,
        }))
    }

    /// Restaurant ids of one partition.
    pub async fn restaurants(&self, partition: u16) -> Result<Vec<String>, EngineError> {
        Ok(self
            .redis()
            .smembers(self.keys().restaurants(partition))
            .await?)
    }

    // ---- orders ------------------------------------------------------------

    /// Places an order: one EVALSHA that checks the Idempotency-Key, the
    /// restaurant, every item and the total, reserves all lines or none, and
    /// emits OrderPlaced.
    ///
    /// The key's first answer lives in the restaurant's partition (same slot
    /// as the order, so the script sees it). A fingerprint guard in the
    /// customer's partition (`SET NX GET`, before the script) catches the
    /// same key reused for a restaurant of another partition; a refused
    /// placement removes the guard it created, so a refusal changes nothing.
    /// The first answer to `request`'s Idempotency-Key, if this same request
    /// was placed before (reads only; `place_order` is what decides). For
    /// answering a retry while new placements are refused.
    pub async fn replay(&self, request: &PlaceOrder) -> Result<Option<Placed>, EngineError> {
        let keys = self.keys();
        let p = keys.partition_of_restaurant(&request.restaurant);
        let record: Option<String> = self
            .redis()
            .get(keys.idempotency(p, &request.customer, &request.idempotency_key))
            .await?;
        let Some(record) = record else {
            return Ok(None);
        };
        let record: serde_json::Value =
            serde_json::from_str(&record).map_err(|_| EngineError::Reply {
                script: "place_order",
                reply: vec![record.clone()],
            })?;
        let order_id = record["order"].as_str().and_then(|id| id.parse().ok());
        match (record["fp"].as_str(), order_id, record["total"].as_i64()) {
            (Some(fp), Some(order_id), Some(total)) if fp == request.fingerprint() => {
                Ok(Some(Placed {
                    order_id,
                    total,
                    duplicate: true,
                }))
            }
            _ => Ok(None),
        }
    }

    pub async fn place_order(&self, request: &PlaceOrder) -> Result<Placed, PlaceError> {
        let keys = self.keys();
        let fingerprint = request.fingerprint();
        let guard_key = keys.idempotency_guard(&request.customer, &request.idempotency_key);
        let previous: Option<String> = self
            .redis()
            .set(
                &guard_key,
                fingerprint.as_str(),
                Some(Expiration::PX(IDEMPOTENCY_TTL_MS as i64)),
                Some(SetOptions::NX),
                true,
            )
            .await?;
        if let Some(previous) = &previous
            && previous != &fingerprint
        {
            return Err(PlaceError::IdempotencyConflict {
                order: "another request".into(),
            });
        }
        let result = self.run_place_order(request, &fingerprint).await;
        if result.is_err() && previous.is_none() {
            let _: Result<i64, _> = self.redis().del(&guard_key).await;
        }
        result
    }

    async fn run_place_order(
        &self,
        request: &PlaceOrder,
        fingerprint: &str,
    ) -> Result<Placed, PlaceError> {
        let keys = self.keys();
        let p = keys.partition_of_restaurant(&request.restaurant);
        let order_id = crate::ids::new_order_id(p);
        let rid = request.restaurant.as_str();
        let mut script_keys = vec![
            keys.restaurant(p, rid),
            keys.order(p, &order_id),
            keys.idempotency(p, &request.customer, &request.idempotency_key),
            keys.stream(p, Topic::Orders),
            keys.inflight(p),
            keys.wheel(p),
        ];
        let mut args = vec![
            order_id.to_string(),
            crate::ids::new_saga_id().to_string(),
            request.customer.clone(),
            rid.to_string(),
            fingerprint.to_string(),
            request.expected_total.to_string(),
            IDEMPOTENCY_TTL_MS.to_string(),
            millis(self.config().timers.payment_window),
        ];
        for line in &request.lines {
            script_keys.push(keys.item(p, rid, &line.item));
            script_keys.push(keys.item_per_customer(p, rid, &line.item));
            args.push(line.item.clone());
            args.push(line.qty.to_string());
        }
        let reply = self
            .scripts()
            .place_order
            .call(self.redis(), script_keys, args)
            .await?;
        let list = |r: &[String]| -> Vec<String> {
            r.get(2)
                .map(|s| s.split(',').map(str::to_string).collect())
                .unwrap_or_default()
        };
        match (
            reply.first().map(String::as_str),
            reply.get(1).map(String::as_str),
        ) {
            (Some(code @ ("ok" | "dup")), Some(id)) => {
                let placed = Placed {
                    order_id: id.parse().map_err(|_| EngineError::Reply {
                        script: "place_order",
                        reply: reply.clone(),
                    })?,
                    total: reply.get(2).and_then(|t| t.parse().ok()).unwrap_or(0),
                    duplicate: code == "dup",
                };
                if !placed.duplicate {
                    metrics::counter!("lunchrush_orders_placed_total").increment(1);
                    self.woke();
                }
                Ok(placed)
            }
            (Some("err"), Some(code)) => Err(match code {
                "idempotency_conflict" => PlaceError::IdempotencyConflict {
                    order: reply.get(2).cloned().unwrap_or_default(),
                },
                "restaurant_not_found" => PlaceError::RestaurantNotFound(rid.into()),
                "restaurant_closed" => PlaceError::RestaurantClosed(rid.into()),
                "item_not_found" => PlaceError::ItemNotFound(list(&reply)),
                "item_unavailable" => PlaceError::ItemUnavailable(list(&reply)),
                "out_of_stock" => PlaceError::OutOfStock(list(&reply)),
                "limit_exceeded" => PlaceError::LimitExceeded(list(&reply)),
                "price_changed" => PlaceError::PriceChanged {
                    current_total: reply.get(2).and_then(|t| t.parse().ok()).unwrap_or(0),
                },
                _ => PlaceError::Engine(EngineError::Reply {
                    script: "place_order",
                    reply,
                }),
            }),
            _ => Err(PlaceError::Engine(EngineError::Reply {
                script: "place_order",
                reply,
            })),
        }
    }

    /// The order, if it exists (and its id is one of ours).
    pub async fn order(&self, id: &Uuid) -> Result<Option<Order>, EngineError> {
        let Some(p) = self.keys().partition_of_order(id) else {
            return Ok(None);
        };
        let fields: HashMap<String, String> =
            self.redis().hgetall(self.keys().order(p, id)).await?;
        if fields.is_empty() {
            return Ok(None);
        }
        Ok(Order::from_fields(p, &fields))
    }

    /// Sagas not yet at rest, over every partition (the in-flight indexes'
    /// sizes): 0 once the system is quiet.
    pub async fn unsettled(&self) -> Result<u64, EngineError> {
        let mut total = 0;
        for p in 0..self.keys().partitions() {
            let n: u64 = self.redis().zcard(self.keys().inflight(p)).await?;
            total += n;
        }
        Ok(total)
    }

    /// Every order id of a partition (SCAN; for tests and tools, not the
    /// online path).
    pub async fn order_ids(&self, partition: u16) -> Result<Vec<Uuid>, EngineError> {
        use fred::types::scan::Scanner;
        use futures::StreamExt;
        let mut ids = Vec::new();
        let mut pages = self
            .redis()
            .scan(self.keys().order_pattern(partition), Some(1_000), None);
        while let Some(page) = pages.next().await {
            let mut page = page?;
            for key in page.take_results().unwrap_or_default() {
                if let Some(id) = key
                    .as_str()
                    .and_then(|k| k.rsplit(':').next())
                    .and_then(|id| id.parse().ok())
                {
                    ids.push(id);
                }
            }
            Scanner::next(page);
        }
        Ok(ids)
    }

    /// The keys of an order's lines: item hash and per-customer hash each.
    fn line_keys(&self, order: &Order) -> Vec<String> {
        let keys = self.keys();
        order
            .lines
            .iter()
            .flat_map(|line| {
                [
                    keys.item(order.partition, &order.restaurant, &line.item),
                    keys.item_per_customer(order.partition, &order.restaurant, &line.item),
                ]
            })
            .collect()
    }

    async fn transition(
        &self,
        before: &Order,
        script: &crate::scripts::Script,
        name: &'static str,
        keys: Vec<String>,
        args: Vec<String>,
    ) -> Result<Transition, EngineError> {
        let reply = script.call(self.redis(), keys, args).await?;
        let transition = Transition::parse(name, reply)?;
        if transition.outcome == Outcome::Applied {
            self.woke();
            // A saga's outcome is counted once: when the status first becomes it.
            match transition.status {
                Some(OrderStatus::Approved) if before.status != OrderStatus::Approved => {
                    metrics::counter!("lunchrush_saga_outcomes_total", "outcome" => "approved")
                        .increment(1);
                }
                Some(OrderStatus::Rejected) if before.status != OrderStatus::Rejected => {
                    let reason = match transition.reason.as_str() {
                        "payment_declined" => "payment_declined",
                        "restaurant_rejected" => "restaurant_rejected",
                        "approval_timeout" => "approval_timeout",
                        "cancelled" => "cancelled",
                        "reconciled" => "reconciled",
                        "capture_failed" => "capture_failed",
                        "payment_window" => "payment_window",
                        _ => "other",
                    };
                    metrics::counter!("lunchrush_saga_outcomes_total", "outcome" => "rejected", "reason" => reason)
                        .increment(1);
                }
                _ => {}
            }
        }
        Ok(transition)
    }

    /// Records a payment outcome (see `lua/record_payment.lua`).
    pub async fn record_payment(
        &self,
        order: &Order,
        outcome: PaymentOutcome,
        psp_ref: &str,
        lane: Lane,
    ) -> Result<Transition, EngineError> {
        let keys = self.keys();
        let p = order.partition;
        let mut script_keys = vec![
            keys.order(p, &order.id),
            keys.lane_stream(p, Topic::Payments, lane),
            keys.lane_stream(p, Topic::Orders, lane),
            keys.inflight(p),
            keys.wheel(p),
        ];
        script_keys.extend(self.line_keys(order));
        let t = self
            .transition(
                order,
                &self.scripts().record_payment,
                "record_payment",
                script_keys,
                vec![
                    outcome.as_str().into(),
                    psp_ref.into(),
                    millis(self.config().timers.approval_timeout),
                ],
            )
            .await?;
        if t.outcome == Outcome::Applied {
            metrics::counter!("lunchrush_payments_recorded_total", "outcome" => outcome.as_str())
                .increment(1);
        }
        Ok(t)
    }

    /// The restaurant's answer (see `lua/restaurant_decision.lua`).
    pub async fn decide(
        &self,
        order: &Order,
        approve: bool,
        note: &str,
        expected_version: Option<u64>,
        require_open: bool,
        lane: Lane,
    ) -> Result<Transition, EngineError> {
        let keys = self.keys();
        let p = order.partition;
        let mut script_keys = vec![
            keys.order(p, &order.id),
            keys.lane_stream(p, Topic::Restaurant, lane),
            keys.lane_stream(p, Topic::Orders, lane),
            keys.inflight(p),
            keys.restaurant(p, &order.restaurant),
            keys.wheel(p),
        ];
        script_keys.extend(self.line_keys(order));
        self.transition(
            order,
            &self.scripts().restaurant_decision,
            "restaurant_decision",
            script_keys,
            vec![
                if approve { "approve" } else { "reject" }.into(),
                note.into(),
                expected_version.map(|v| v.to_string()).unwrap_or_default(),
                flag(require_open),
            ],
        )
        .await
    }

    /// Compensation: rejects a PENDING/PAID order and releases its stock.
    pub async fn release(
        &self,
        order: &Order,
        reason: &str,
        expected_version: Option<u64>,
        lane: Lane,
    ) -> Result<Transition, EngineError> {
        let script_keys = self.order_stream_keys(order, lane);
        self.transition(
            order,
            &self.scripts().release,
            "release",
            script_keys,
            vec![
                reason.into(),
                expected_version.map(|v| v.to_string()).unwrap_or_default(),
            ],
        )
        .await
    }

    /// A customer (before approval) or an admin (any time) cancels.
    pub async fn cancel(
        &self,
        order: &Order,
        actor: Actor,
        expected_version: Option<u64>,
        lane: Lane,
    ) -> Result<Transition, EngineError> {
        let script_keys = self.order_stream_keys(order, lane);
        self.transition(
            order,
            &self.scripts().cancel,
            "cancel",
            script_keys,
            vec![
                actor.as_str().into(),
                expected_version.map(|v| v.to_string()).unwrap_or_default(),
            ],
        )
        .await
    }

    /// DISPATCHED or CONFIRMED (see `lua/advance.lua`).
    pub async fn advance(
        &self,
        order: &Order,
        target: OrderStatus,
        actor: Actor,
        expected_version: Option<u64>,
        lane: Lane,
    ) -> Result<Transition, EngineError> {
        assert!(matches!(
            target,
            OrderStatus::Dispatched | OrderStatus::Confirmed
        ));
        let keys = self.keys();
        let p = order.partition;
        self.transition(
            order,
            &self.scripts().advance,
            "advance",
            vec![
                keys.order(p, &order.id),
                keys.lane_stream(p, Topic::Orders, lane),
                keys.inflight(p),
                keys.wheel(p),
            ],
            vec![
                target.as_str().into(),
                expected_version.map(|v| v.to_string()).unwrap_or_default(),
                actor.as_str().into(),
                millis(self.config().timers.confirm_notice_after),
            ],
        )
        .await
    }

    fn order_stream_keys(&self, order: &Order, lane: Lane) -> Vec<String> {
        let keys = self.keys();
        let p = order.partition;
        let mut script_keys = vec![
            keys.order(p, &order.id),
            keys.lane_stream(p, Topic::Orders, lane),
            keys.inflight(p),
            keys.wheel(p),
        ];
        script_keys.extend(self.line_keys(order));
        script_keys
    }

    // ---- delayed tasks ----------------------------------------------------

    /// Moves up to `limit` due timers of partition `p` into its timers
    /// stream. Returns how many fired and the earliest remaining due time.
    pub async fn claim_timers(
        &self,
        p: u16,
        limit: u64,
    ) -> Result<(u64, Option<i64>), EngineError> {
        let keys = self.keys();
        let reply = self
            .scripts()
            .claim_timers
            .call(
                self.redis(),
                vec![keys.wheel(p), keys.stream(p, Topic::Timers)],
                vec![limit.to_string()],
            )
            .await?;
        let fired = reply.first().and_then(|f| f.parse().ok()).unwrap_or(0);
        if fired > 0 {
            self.woke();
        }
        Ok((fired, reply.get(1).and_then(|d| d.parse().ok())))
    }

    /// Schedules `kind` for `order` after `delay`, only while the order is
    /// `required`. `Ok(false)` when the order is elsewhere (or gone).
    pub async fn schedule_timer(
        &self,
        order: &Order,
        kind: &str,
        delay: std::time::Duration,
        required: OrderStatus,
    ) -> Result<bool, EngineError> {
        let keys = self.keys();
        let reply = self
            .scripts()
            .schedule_timer
            .call(
                self.redis(),
                vec![
                    keys.order(order.partition, &order.id),
                    keys.wheel(order.partition),
                ],
                vec![kind.into(), millis(delay), required.as_str().into()],
            )
            .await?;
        Ok(matches!(
            reply.first().map(String::as_str),
            Some("ok" | "noop")
        ))
    }

    /// The send record of a notification; `Ok(false)` if it already existed.
    pub async fn record_notification(
        &self,
        order: &Order,
        kind: &str,
        idempotency_key: &str,
        channel: &str,
        attempts: u32,
        lane: Lane,
    ) -> Result<bool, EngineError> {
        let keys = self.keys();
        let reply = self
            .scripts()
            .record_notification
            .call(
                self.redis(),
                vec![
                    keys.order(order.partition, &order.id),
                    keys.lane_stream(order.partition, Topic::Orders, lane),
                ],
                vec![
                    kind.into(),
                    idempotency_key.into(),
                    channel.into(),
                    attempts.to_string(),
                ],
            )
            .await?;
        Ok(reply.first().map(String::as_str) == Some("ok"))
    }

    /// Returns `units` stranded by orders that no longer exist to stock on
    /// hand, and removes per-customer counts no live order backs
    /// (`lua/reclaim_stock.lua`). `Ok(None)` when the item's stock version
    /// moved since `seen`.
    pub async fn reclaim_stock(
        &self,
        restaurant: &str,
        item: &str,
        units: i64,
        seen: i64,
        customers: &[(String, i64)],
    ) -> Result<Option<i64>, EngineError> {
        let keys = self.keys();
        let p = keys.partition_of_restaurant(restaurant);
        let mut args = vec![
            restaurant.to_string(),
            item.to_string(),
            units.to_string(),
            seen.to_string(),
        ];
        for (customer, units) in customers {
            args.push(customer.clone());
            args.push(units.to_string());
        }
        let reply = self
            .scripts()
            .reclaim_stock
            .call(
                self.redis(),
                vec![
                    keys.restaurant(p, restaurant),
                    keys.item(p, restaurant, item),
                    keys.item_per_customer(p, restaurant, item),
                    keys.stream(p, Topic::Batch),
                ],
                args,
            )
            .await?;
        Ok(match reply.first().map(String::as_str) {
            Some("ok") => reply.get(1).and_then(|s| s.parse().ok()),
            _ => None,
        })
    }

    /// Visits every order of partition `p`, a SCAN page at a time (bounded
    /// memory: one page of orders at once).
    pub async fn for_each_order(
        &self,
        partition: u16,
        mut visit: impl FnMut(Order),
    ) -> Result<(), EngineError> {
        use fred::types::scan::Scanner;
        use futures::StreamExt;
        let mut pages = self
            .redis()
            .scan(self.keys().order_pattern(partition), Some(1_000), None);
        while let Some(page) = pages.next().await {
            let mut page = page?;
            let keys = page.take_results().unwrap_or_default();
            let reads = keys.iter().map(|key| {
                self.redis()
                    .hgetall::<HashMap<String, String>, _>(key.clone())
            });
            let orders = futures::future::try_join_all(reads).await?;
            Scanner::next(page);
            for fields in orders {
                if let Some(order) = Order::from_fields(partition, &fields) {
                    visit(order);
                }
            }
        }
        Ok(())
    }

    /// Timers scheduled in partition `p` (for metrics).
    pub async fn timers_scheduled(&self, p: u16) -> Result<u64, EngineError> {
        Ok(self.redis().zcard(self.keys().wheel(p)).await?)
    }

    /// The order's events in sequence, read from the live streams.
    pub async fn order_events(
        &self,
        order: &Order,
    ) -> Result<Vec<crate::events::Event>, EngineError> {
        let reads =
            order.events.iter().map(|(stream, id)| async move {
                let entries: Vec<fred::types::streams::XReadValue<String, String, String>> = self
                    .redis()
                    .xrange_values(stream.as_str(), id.as_str(), id.as_str(), Some(1))
                    .await?;
                Ok::<_, EngineError>(entries.into_iter().next().and_then(|(id, fields)| {
                    crate::events::Event::from_fields(stream, &id, fields)
                }))
            });
        let mut events: Vec<_> = futures::future::try_join_all(reads)
            .await?
            .into_iter()
            .flatten()
            .collect();
        events.sort_by_key(|e| e.seq);
        Ok(events)
    }
}
