//! The lunchrush engine: everything that knows about orders, stock and
//! payments, and nothing that knows about HTTP.
//!
//! # Layout
//! - [`config`]: the one typed, validated configuration.
//! - [`store`]: the shared Redis connection (standalone or cluster).
//!
//! **Architecture Invariant:** `engine` knows nothing about HTTP routes or
//! status codes; `api` is the only crate that does.

pub mod config;
pub mod store;

pub use config::{Config, ConfigError, Timers};
