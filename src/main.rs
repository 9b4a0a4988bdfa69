//! `lunchrush`: the one binary. Every subcommand's flag is also an
//! environment variable `LUNCHRUSH_*` (shown by `--help`).
//!
//! # Layout
//! - [`args`]: flags shared by several subcommands and the typed
//!   [`engine::Config`] they build.
//! - [`logging`]: `RUST_LOG`-style filtering, human or JSON lines on stderr.
//! - [`commands`]: one module per subcommand.

mod args;
mod commands;
mod logging;
mod shutdown;

use std::process::ExitCode;

/// mimalloc instead of glibc's malloc: the engine allocates a little per
/// Redis reply and per request, and glibc's free lists cost it a sixth of
/// its CPU (`saga-bench`, same build either way: 282 -> 238 µs per saga).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::{Parser, Subcommand};

/// A Redis-first food-delivery order engine whose orders and payments never disagree.
#[derive(Debug, Parser)]
#[command(name = "lunchrush", version, about)]
struct Cli {
    /// Log format on stderr: `human` or `json`. Filter with RUST_LOG (default `info`).
    #[arg(
        long,
        env = "LUNCHRUSH_LOG_FORMAT",
        default_value = "human",
        global = true
    )]
    log_format: logging::LogFormat,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start the local stack (Redis, PostgreSQL, the API) and serve until Ctrl-C.
    Up(commands::up::UpArgs),
    /// Stop the `up` running on a home; with --purge, remove all its data.
    Down(commands::down::DownArgs),
    /// Start the local stack, run a short lunch-peak load, print a summary and keep serving.
    Demo(commands::demo::DemoArgs),
    /// Serve the HTTP API and run the saga workers against existing Redis/Postgres.
    Serve(commands::serve::ServeArgs),
    /// Drain every stream into PostgreSQL, exactly once, then trim.
    Archive(commands::archive::ArchiveArgs),
    /// Find and fix orphans (stuck sagas, held stock, provider mismatches, unarchived events).
    Reconcile(commands::reconcile::ReconcileArgs),
    /// Apply the PostgreSQL migrations.
    Migrate(commands::migrate::MigrateArgs),
    /// Run the payment-provider simulator.
    PspSim(commands::psp_sim::PspSimArgs),
    /// Print a signed API token.
    Token(commands::token::TokenArgs),
    /// Bulk-import restaurants and menus from JSON Lines (batch lane, rate-limited).
    Import(commands::import::ImportArgs),
    /// Check the rule: no mismatched order/payment pair, stock conserved.
    Check(commands::check::CheckArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    logging::init(cli.log_format);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::from(2);
        }
    };
    let outcome = runtime.block_on(async move {
        match cli.command {
            Command::Up(args) => commands::up::run(args).await,
            Command::Migrate(args) => commands::migrate::run(args).await,
            Command::Token(args) => commands::token::run(args),
            Command::Demo(args) => commands::demo::run(args).await,
            Command::Down(args) => commands::down::run(args).await,
            Command::Serve(args) => commands::serve::run(args).await,
            Command::Archive(args) => commands::archive::run(args).await,
            Command::Reconcile(args) => commands::reconcile::run(args).await,
            Command::PspSim(args) => commands::psp_sim::run(args).await,
            Command::Check(args) => commands::check::run(args).await,
            Command::Import(args) => commands::import::run(args).await,
        }
    });
    match outcome {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(2)
        }
    }
}
