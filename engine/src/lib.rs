//! The lunchrush engine: everything that knows about orders, stock and
//! payments, and nothing that knows about HTTP routes.
//!
//! # Layout
//! - [`config`]: the one typed, validated configuration.
//! - [`store`]: the shared Redis connection (standalone or cluster).
//! - [`keys`]: the Redis key schema and partitioning.
//! - [`ids`]: order ids that carry their partition.
//! - [`domain`]: validated inputs, statuses, the rule's allowed pairs.
//! - [`scripts`]: the Lua registry (EVALSHA, NOSCRIPT reload).
//! - [`engine`]: [`Engine`], one method per transition.
//! - [`events`]: the stream entry format and the event catalogue.
//! - [`psp`]: the payment-provider client (unknown outcomes are looked up).
//! - [`breaker`]: the provider's circuit breaker and call pacer.
//! - [`saga`]: the consumer-group workers (payment, restaurant).
//! - [`check`]: the rule checker (pairs, stock, per-customer limits).
//! - [`timers`]: the timer wheel and its claimer (delayed tasks).
//! - [`notify`]: the `Notifier` trait, log and webhook notifiers.
//! - [`reconcile`]: finding and fixing orphans on the Redis and provider side.
//! - [`retire`]: live-state retention (settled, archived orders leave Redis).
//! - [`streams`]: entry ids, group state and pending lists, parsed once.
//! - [`entries`]: stream entries parsed straight from XREADGROUP replies.
//! - [`ops`]: what the operations console reads and steers (funnel, stuck
//!   sagas, lag, timers, the operator queues).
//!
//! **Architecture Invariant:** `engine` knows nothing about HTTP routes or
//! status codes; `api` is the only crate that does.
//! **Architecture Invariant:** every state change of an order happens inside
//! one Lua script.

pub mod breaker;
pub mod budget;
pub mod check;
pub mod config;
pub mod domain;
pub mod engine;
pub mod entries;
pub mod events;
pub mod ids;
pub mod keys;
pub mod notify;
pub mod ops;
pub mod psp;
pub mod reconcile;
pub mod retire;
pub mod saga;
pub mod scripts;
pub mod store;
pub mod streams;
pub mod timers;

pub use config::{Config, ConfigError, Timers};
pub use engine::{Engine, EngineError};
