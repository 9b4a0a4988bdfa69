//! `lunchrush`: the one binary. Every flag that says where to connect and
//! how to run is also an environment variable `LUNCHRUSH_*` (shown by
//! `--help`); one-off switches (`--dry-run`, `--purge`) are flags only.
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

    /// The async runtime's worker threads. Default: one per core, but half
    /// the cores (at least one) for `up`, `demo` and `psp-sim`, which share
    /// the machine with their own Redis and PostgreSQL or stand in for a
    /// remote provider. TOKIO_WORKER_THREADS, when set, replaces the default.
    #[arg(long, env = "LUNCHRUSH_THREADS", global = true,
          value_parser = clap::value_parser!(u16).range(1..=1024))]
    threads: Option<u16>,

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

impl Cli {
    /// The runtime's worker threads when set here (`None`: tokio's own
    /// default, one per core or TOKIO_WORKER_THREADS).
    ///
    /// `up` with one thread per core spent a seventh more CPU per order than
    /// with half of them on a 2-core machine (cross-thread wake-ups while its
    /// own Redis and PostgreSQL held the other core; bench/README).
    fn worker_threads(&self) -> Option<usize> {
        if let Some(threads) = self.threads {
            return Some(threads.into());
        }
        let shares_the_machine = matches!(
            self.command,
            Command::Up(_) | Command::Demo(_) | Command::PspSim(_)
        );
        if !shares_the_machine || std::env::var_os("TOKIO_WORKER_THREADS").is_some() {
            return None;
        }
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Some((cores / 2).max(1))
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    logging::init(cli.log_format);
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    // After a connection flood each worker hands its free memory back as
    // it goes idle (mimalloc keeps it per thread).
    builder.on_thread_park(api::heap::on_worker_park);
    if let Some(threads) = cli.worker_threads() {
        builder.worker_threads(threads);
    }
    let runtime = match builder.build() {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn threads(args: &[&str]) -> Option<usize> {
        let cli = Cli::try_parse_from(std::iter::once("lunchrush").chain(args.iter().copied()))
            .expect("the command line parses");
        cli.worker_threads()
    }

    #[test]
    fn a_local_stack_takes_half_the_cores_and_a_flag_sets_any_count() {
        assert_eq!(
            threads(&["--threads", "3", "serve", "--jwt-secret", "s"]),
            Some(3)
        );
        assert_eq!(threads(&["up", "--threads", "1"]), Some(1));
        assert!(Cli::try_parse_from(["lunchrush", "--threads", "0", "up"]).is_err());
        let set_outside = ["LUNCHRUSH_THREADS", "TOKIO_WORKER_THREADS"]
            .iter()
            .any(|name| std::env::var_os(name).is_some());
        if set_outside {
            return;
        }
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(threads(&["up"]), Some((cores / 2).max(1)));
        assert_eq!(threads(&["psp-sim"]), Some((cores / 2).max(1)));
        assert_eq!(
            threads(&["serve", "--jwt-secret", "s"]),
            None,
            "tokio's default: one per core"
        );
    }
}
