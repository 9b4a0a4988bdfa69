//! What each script answers, decoded once: a reply that is not one of the
//! shapes its header promises is an error naming the script, never a
//! default.

use uuid::Uuid;

use super::Refusal;
use crate::domain::{OrderStatus, PaymentStatus};
use crate::engine::EngineError;

/// Decodes a script's reply.
pub trait FromReply: Sized {
    fn from_reply(script: &'static str, reply: Vec<String>) -> Result<Self, EngineError>;
}

fn malformed<T>(script: &'static str, reply: Vec<String>) -> Result<T, EngineError> {
    Err(EngineError::Reply { script, reply })
}

/// What a transition script answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The transition happened.
    Applied,
    /// It had already happened (a redelivery): nothing changed.
    Unchanged,
    /// It is not legal now: nothing changed.
    Refused(Refusal),
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
    /// Applied or already so.
    pub fn is_done(&self) -> bool {
        matches!(self.outcome, Outcome::Applied | Outcome::Unchanged)
    }

    /// Refused for this reason.
    pub fn refused(&self, refusal: Refusal) -> bool {
        self.outcome == Outcome::Refused(refusal)
    }
}

/// `{'ok'|'noop'|'err', status, pay, version, decision, reason, detail}`;
/// a missing order is `{'err', '', '', '0', '', '', 'not_found'}`.
impl FromReply for Transition {
    fn from_reply(script: &'static str, reply: Vec<String>) -> Result<Self, EngineError> {
        let [code, status, pay, version, decision, reason, detail] = reply.as_slice() else {
            return malformed(script, reply);
        };
        let outcome = match (code.as_str(), detail.as_str()) {
            ("ok", "") => Outcome::Applied,
            ("noop", "") => Outcome::Unchanged,
            ("err", "not_found") => {
                return Ok(Self {
                    outcome: Outcome::NotFound,
                    status: None,
                    pay: None,
                    version: 0,
                    decision: String::new(),
                    reason: String::new(),
                });
            }
            ("err", detail) => match Refusal::parse(detail) {
                Some(refusal) => Outcome::Refused(refusal),
                None => return malformed(script, reply),
            },
            _ => return malformed(script, reply),
        };
        let (Some(status), Some(pay), Ok(version)) = (
            OrderStatus::parse(status),
            PaymentStatus::parse(pay),
            version.parse(),
        ) else {
            return malformed(script, reply);
        };
        Ok(Self {
            outcome,
            status: Some(status),
            pay: Some(pay),
            version,
            decision: decision.clone(),
            reason: reason.clone(),
        })
    }
}

/// Why `place_order` refused (nothing changed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlaceRefusal {
    /// The Idempotency-Key answered another request (that order).
    IdempotencyConflict(String),
    RestaurantNotFound,
    RestaurantClosed,
    ItemNotFound(Vec<String>),
    ItemUnavailable(Vec<String>),
    OutOfStock(Vec<String>),
    LimitExceeded(Vec<String>),
    PriceChanged {
        current_total: i64,
    },
}

/// `place_order`'s answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// Placed now, or (`duplicate`) the first answer to the same request.
    Placed {
        order_id: Uuid,
        total: i64,
        duplicate: bool,
    },
    Refused(PlaceRefusal),
}

impl FromReply for Placement {
    fn from_reply(script: &'static str, reply: Vec<String>) -> Result<Self, EngineError> {
        let items = |list: &str| list.split(',').map(str::to_string).collect();
        let refusal = match reply.as_slice() {
            [code, id, total, status] if (code == "ok" || code == "dup") && status == "PENDING" => {
                return match (id.parse(), total.parse()) {
                    (Ok(order_id), Ok(total)) => Ok(Placement::Placed {
                        order_id,
                        total,
                        duplicate: code == "dup",
                    }),
                    _ => malformed(script, reply),
                };
            }
            [code, what, detail] if code == "err" => match what.as_str() {
                "idempotency_conflict" => PlaceRefusal::IdempotencyConflict(detail.clone()),
                "restaurant_not_found" => PlaceRefusal::RestaurantNotFound,
                "restaurant_closed" => PlaceRefusal::RestaurantClosed,
                "item_not_found" => PlaceRefusal::ItemNotFound(items(detail)),
                "item_unavailable" => PlaceRefusal::ItemUnavailable(items(detail)),
                "out_of_stock" => PlaceRefusal::OutOfStock(items(detail)),
                "limit_exceeded" => PlaceRefusal::LimitExceeded(items(detail)),
                "price_changed" => match detail.parse() {
                    Ok(current_total) => PlaceRefusal::PriceChanged { current_total },
                    Err(_) => return malformed(script, reply),
                },
                _ => return malformed(script, reply),
            },
            _ => return malformed(script, reply),
        };
        Ok(Placement::Refused(refusal))
    }
}

/// Why a menu write was refused (nothing changed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MenuRefusal {
    RestaurantNotFound,
    ItemNotFound,
    StockNegative,
    StockTooHigh,
    MenuFull,
}

impl MenuRefusal {
    fn parse(code: &str) -> Option<Self> {
        Some(match code {
            "restaurant_not_found" => MenuRefusal::RestaurantNotFound,
            "item_not_found" => MenuRefusal::ItemNotFound,
            "stock_negative" => MenuRefusal::StockNegative,
            "stock_too_high" => MenuRefusal::StockTooHigh,
            "menu_full" => MenuRefusal::MenuFull,
            _ => return None,
        })
    }
}

/// A menu item as `menu_upsert` left it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemState {
    pub name: String,
    pub price: i64,
    pub stock: i64,
    pub available: bool,
    /// `None`: no limit.
    pub max_per_customer: Option<i64>,
}

/// `menu_upsert`'s answer.
pub type ItemUpserted = Result<ItemState, MenuRefusal>;

/// `{'ok', name, price, stock, available, max_per_customer}` or `{'err', code}`.
impl FromReply for ItemUpserted {
    fn from_reply(script: &'static str, reply: Vec<String>) -> Result<Self, EngineError> {
        match reply.as_slice() {
            [code, name, price, stock, available, max_pc] if code == "ok" => {
                match (price.parse(), stock.parse(), max_pc.parse::<i64>()) {
                    (Ok(price), Ok(stock), Ok(max_pc)) => Ok(Ok(ItemState {
                        name: name.clone(),
                        price,
                        stock,
                        available: available == "1",
                        max_per_customer: Some(max_pc).filter(|&m| m > 0),
                    })),
                    _ => malformed(script, reply),
                }
            }
            [code, what] if code == "err" => match MenuRefusal::parse(what) {
                Some(refusal) => Ok(Err(refusal)),
                None => malformed(script, reply),
            },
            _ => malformed(script, reply),
        }
    }
}

/// `restaurant_upsert`'s answer: `{'ok', name, open, auto}` or
/// `{'err', 'restaurant_not_found'}`.
pub type RestaurantUpserted = Result<(), MenuRefusal>;

impl FromReply for RestaurantUpserted {
    fn from_reply(script: &'static str, reply: Vec<String>) -> Result<Self, EngineError> {
        match reply.as_slice() {
            [code, _, _, _] if code == "ok" => Ok(Ok(())),
            [code, what] if code == "err" && what == "restaurant_not_found" => {
                Ok(Err(MenuRefusal::RestaurantNotFound))
            }
            _ => malformed(script, reply),
        }
    }
}

/// `claim_timers`: how many fired, and the earliest remaining due time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claimed {
    pub fired: u64,
    pub next_due: Option<i64>,
}

impl FromReply for Claimed {
    fn from_reply(script: &'static str, reply: Vec<String>) -> Result<Self, EngineError> {
        let [fired, next] = reply.as_slice() else {
            return malformed(script, reply);
        };
        match (fired.parse(), next.as_str()) {
            (Ok(fired), "") => Ok(Claimed {
                fired,
                next_due: None,
            }),
            (Ok(fired), next) => match next.parse::<f64>() {
                // A sorted-set score: Redis may print it as a float.
                Ok(due) => Ok(Claimed {
                    fired,
                    next_due: Some(due as i64),
                }),
                Err(_) => malformed(script, reply),
            },
            _ => malformed(script, reply),
        }
    }
}

/// `schedule_timer`'s answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheduled {
    /// Set now, due then (ms, Redis time).
    Set(i64),
    /// It was already set (its first due time kept).
    Already(i64),
    NotFound,
    /// The order is not in the status the timer is for.
    WrongStatus,
}

impl FromReply for Scheduled {
    fn from_reply(script: &'static str, reply: Vec<String>) -> Result<Self, EngineError> {
        match reply.as_slice() {
            [code, due] if code == "ok" || code == "noop" => match due.parse::<f64>() {
                Ok(due) if code == "ok" => Ok(Scheduled::Set(due as i64)),
                Ok(due) => Ok(Scheduled::Already(due as i64)),
                Err(_) => malformed(script, reply),
            },
            [code, what] if code == "err" && what == "not_found" => Ok(Scheduled::NotFound),
            [code, what] if code == "err" && what == "status" => Ok(Scheduled::WrongStatus),
            _ => malformed(script, reply),
        }
    }
}

/// `record_notification`'s answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    Recorded,
    Already,
    NotFound,
}

impl FromReply for Recorded {
    fn from_reply(script: &'static str, reply: Vec<String>) -> Result<Self, EngineError> {
        match reply.as_slice() {
            [code] if code == "ok" => Ok(Recorded::Recorded),
            [code] if code == "noop" => Ok(Recorded::Already),
            [code, what] if code == "err" && what == "not_found" => Ok(Recorded::NotFound),
            _ => malformed(script, reply),
        }
    }
}

/// `reclaim_stock`'s answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reclaimed {
    /// Done: the stock on hand now.
    Done(i64),
    /// The stock moved since it was counted: rescan.
    Stale,
    NotFound,
    /// A customer holds fewer units than asked to remove.
    Overdraw,
}

impl FromReply for Reclaimed {
    fn from_reply(script: &'static str, reply: Vec<String>) -> Result<Self, EngineError> {
        match reply.as_slice() {
            [code, stock] if code == "ok" => match stock.parse() {
                Ok(stock) => Ok(Reclaimed::Done(stock)),
                Err(_) => malformed(script, reply),
            },
            [code, what] if code == "err" => match what.as_str() {
                "stale" => Ok(Reclaimed::Stale),
                "not_found" => Ok(Reclaimed::NotFound),
                "overdraw" => Ok(Reclaimed::Overdraw),
                _ => malformed(script, reply),
            },
            _ => malformed(script, reply),
        }
    }
}

/// What `retire` did with one order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Retired {
    /// Gone from Redis; its final pair.
    Retired {
        status: OrderStatus,
        pay: PaymentStatus,
    },
    /// Still live, and why (`gone`, `moved`, `young`, `timers`,
    /// `in_flight`, `unarchived`, `unhandled`, `lines`).
    Kept(String),
}

impl FromReply for Retired {
    fn from_reply(script: &'static str, reply: Vec<String>) -> Result<Self, EngineError> {
        match reply.as_slice() {
            [code, status, pay] if code == "retired" => {
                match (OrderStatus::parse(status), PaymentStatus::parse(pay)) {
                    (Some(status), Some(pay)) => Ok(Retired::Retired { status, pay }),
                    _ => malformed(script, reply),
                }
            }
            [code, why] if code == "kept" => Ok(Retired::Kept(why.clone())),
            _ => malformed(script, reply),
        }
    }
}

/// `mark_resting`'s answer: how many orders were new to the index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Added(pub u64);

impl FromReply for Added {
    fn from_reply(script: &'static str, reply: Vec<String>) -> Result<Self, EngineError> {
        match reply.as_slice() {
            [added] => match added.parse() {
                Ok(added) => Ok(Added(added)),
                Err(_) => malformed(script, reply),
            },
            _ => malformed(script, reply),
        }
    }
}
