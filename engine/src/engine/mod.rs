//! [`Engine`]: every state change of lunchrush, each one Lua script.
//!
//! The engine is cheap to clone (an `Arc`) and shared by the API handlers,
//! the saga workers and the batch tools of one process.
//!
//! - `menus`: restaurants and menu items.
//! - `orders`: placing (idempotent) and reading orders.
//! - `transitions`: every later step of an order, and the delayed tasks.

use std::collections::HashMap;
use std::sync::Arc;

use fred::prelude::*;
use uuid::Uuid;

use crate::config::Config;
use crate::domain::{Invalid, MENU_ITEMS_MAX, Menu, MenuItem, Order, OrderStatus, PlaceOrder};
use crate::keys::{KeySpace, Lane, Topic};
use crate::scripts::Scripts;
pub use crate::scripts::{Outcome, Refusal, Transition};

mod menus;
mod orders;
mod transitions;

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

impl EngineError {
    /// Redis refused the write (`OOM`, `MISCONF`, `READONLY`): nothing of
    /// it happened; it may succeed once the cause is gone.
    pub fn refused_write(&self) -> Option<crate::budget::Refusal> {
        match self {
            EngineError::Redis(error) => crate::budget::Refusal::of(error),
            EngineError::Reply { .. } => None,
        }
    }
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
    budget: Arc<crate::budget::MemoryBudget>,
    scripts: Scripts,
    config: Config,
    /// Woken when this process emits an event that owes a worker a step,
    /// so that worker picks it up at once instead of at its next poll; one
    /// per [`Wake`], so an event wakes only the workers it concerns.
    wake: [tokio::sync::Notify; 3],
    /// Per [`Wake`], the partitions such events went to since its workers
    /// last asked (a bit each): on a Cluster, where each partition is its
    /// own read, a woken worker reads those.
    woken: [Vec<std::sync::atomic::AtomicU64>; 3],
}

/// Which of this process's workers an event concerns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// An order placed, or a state that owes a payment step (online lane).
    Payment,
    /// Timers fired.
    Timers,
    /// Anything written to the batch lane.
    Batch,
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

impl Engine {
    /// An engine over an initialized client; loads every script.
    pub async fn new(redis: Client, config: Config) -> Result<Self, EngineError> {
        let scripts = Scripts::new();
        scripts.load_all(&redis).await?;
        let words = usize::from(config.partitions).div_ceil(64);
        let woken = || (0..words).map(|_| Default::default()).collect();
        Ok(Self {
            inner: Arc::new(Inner {
                keys: KeySpace::new(&config.key_prefix, config.partitions),
                budget: Arc::new(crate::budget::MemoryBudget::new(config.memory.clone())),
                redis,
                scripts,
                config,
                wake: Default::default(),
                woken: [woken(), woken(), woken()],
            }),
        })
    }

    pub fn redis(&self) -> &Client {
        &self.inner.redis
    }

    pub fn keys(&self) -> &KeySpace {
        &self.inner.keys
    }

    /// The memory budget (read by [`crate::budget::watch`]).
    pub fn budget(&self) -> &crate::budget::MemoryBudget {
        &self.inner.budget
    }

    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    pub fn scripts(&self) -> &Scripts {
        &self.inner.scripts
    }

    /// Resolves when this process emits an event that concerns `wake`'s
    /// workers after the future was enabled (`Notified::enable`) or first
    /// polled.
    pub fn local_event(&self, wake: Wake) -> tokio::sync::futures::Notified<'_> {
        self.inner.wake[wake as usize].notified()
    }

    /// Wakes `wake`'s workers for an event written to `partition`.
    fn woke(&self, wake: Wake, partition: u16) {
        let (word, bit) = (usize::from(partition / 64), partition % 64);
        if let Some(word) = self.inner.woken[wake as usize].get(word) {
            word.fetch_or(1 << bit, std::sync::atomic::Ordering::Relaxed);
        }
        self.inner.wake[wake as usize].notify_waiters();
    }

    /// The partitions events concerning `wake` went to since the last call,
    /// in order; forgets them.
    pub fn take_woken(&self, wake: Wake) -> Vec<u16> {
        let mut partitions = Vec::new();
        for (w, word) in self.inner.woken[wake as usize].iter().enumerate() {
            let mut bits = word.swap(0, std::sync::atomic::Ordering::Relaxed);
            while bits != 0 {
                let bit = bits.trailing_zeros() as u16;
                partitions.push(w as u16 * 64 + bit);
                bits &= bits - 1;
            }
        }
        partitions
    }
}
