//! The binary's integration tests run on the shared fixture with the
//! archive: a temporary local stack (Redis + migrated PostgreSQL), the
//! provider simulator in-process, an engine with its consumer groups; plus
//! `lunchrush` itself, configured for that stack.

#![allow(dead_code)]

pub use ::fixture::Fixture;
use stack::psp::Faults;

/// Redis, migrated PostgreSQL, the simulator with `faults`; no workers yet.
pub async fn fixture(faults: Faults) -> Fixture {
    Fixture::archive(faults).await
}

/// `lunchrush ARGS` configured for a fixture's stack, provider simulator
/// and partitions.
pub fn lunchrush(fx: &Fixture, args: &[&str]) -> std::process::Command {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_lunchrush"));
    command
        .args(args)
        .env("LUNCHRUSH_REDIS_URL", fx.stack().redis_url())
        .env("LUNCHRUSH_POSTGRES_URL", fx.stack().postgres_url())
        .env("LUNCHRUSH_PSP_URL", &fx.psp_url)
        .env("LUNCHRUSH_PARTITIONS", fx.config.partitions.to_string());
    command
}
