//! The archiver: drains every lunchrush stream into PostgreSQL, exactly once,
//! and only then lets the stream be trimmed.
//!
//! # Layout
//! - [`schema`]: the embedded `migrations/` and the `migrate` entry point.

pub mod schema;
