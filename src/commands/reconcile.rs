//! `lunchrush reconcile`: find and fix orphans, beside live traffic.
//!
//! Phases, in order: stuck sagas, held stock, the provider's ledger,
//! entries pending with dead consumers, parked compensations, dead letters
//! (reported), idle consumers, unarchived entries, archive gaps and projections. Every fix
//! goes through the same scripts as the online path, in the batch lane, at
//! most `--max-rate` per second. A progress display on a terminal (plain
//! lines otherwise), a summary table on stdout, a JSON report with
//! `--report FILE`, and the run with each fix in PostgreSQL
//! (`reconciliation_runs`, `reconciliation_fixes`).
//!
//! Exit status: 0 all found were fixed, 1 some are unfixable, 2 errors.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use engine::reconcile::{Fix, Options, Outcome, Reconciler, Run};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use crate::args::EngineArgs;

#[derive(Debug, clap::Args)]
pub struct ReconcileArgs {
    #[command(flatten)]
    pub engine: EngineArgs,
    /// Only sagas unsettled, and entries pending, longer than this are touched.
    #[arg(long, env = "LUNCHRUSH_RECONCILE_OLDER_THAN", default_value = "10m", value_parser = humantime::parse_duration)]
    pub older_than: Duration,
    /// List what would be done; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Fixes per second at most.
    #[arg(long, env = "LUNCHRUSH_RECONCILE_MAX_RATE", default_value_t = 200.0)]
    pub max_rate: f64,
    /// Write the JSON report here.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Run again and again, this long apart, until SIGTERM or Ctrl-C (a
    /// scheduled reconciliation beside the engines); each run is recorded.
    #[arg(long, env = "LUNCHRUSH_RECONCILE_EVERY", value_parser = humantime::parse_duration)]
    pub every: Option<Duration>,
}

#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
struct Counts {
    found: u64,
    fixed: u64,
    unfixable: u64,
    would_fix: u64,
    reported: u64,
}

pub async fn run(args: ReconcileArgs) -> anyhow::Result<ExitCode> {
    let Some(every) = args.every else {
        return run_once(&args).await;
    };
    anyhow::ensure!(!every.is_zero(), "--every must be positive");
    let stop = crate::shutdown::signal();
    tokio::pin!(stop);
    loop {
        // A failed run is logged and tried again at the next turn.
        match run_once(&args).await {
            Ok(code) => tracing::info!(?code, next_in = ?every, "Reconciliation run finished."),
            Err(error) => tracing::error!(error = %format!("{error:#}"), next_in = ?every,
                "Reconciliation run failed."),
        }
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            () = &mut stop => return Ok(ExitCode::SUCCESS),
        }
    }
}

async fn run_once(args: &ReconcileArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(args.max_rate > 0.0, "--max-rate must be positive");
    let config = args.engine.config()?;
    let started = SystemTime::now();
    let redis = engine::store::connect(&config).await?;
    let outcome = run_connected(args, &config, started, redis.clone()).await;
    // With --every, a connection per run would pile up: close it.
    let _ = fred::interfaces::ClientLike::quit(&redis).await;
    outcome
}

async fn run_connected(
    args: &ReconcileArgs,
    config: &engine::Config,
    started: SystemTime,
    redis: fred::prelude::Client,
) -> anyhow::Result<ExitCode> {
    let engine = engine::Engine::new(redis, config.clone()).await?;
    let psp = engine::psp::PspClient::with_options(&config.psp_url, config.psp.clone());
    let pool = api::postgres_pool(&config.postgres_url)?;
    archiver::schema::migrate(&config.postgres_url).await?;
    let reconciler = Reconciler::new(engine.clone(), psp).with_archive(std::sync::Arc::new(
        api::archive::PgArchive::new(pool.clone()),
    ));

    let terminal = std::io::stderr().is_terminal();
    let bar = progress_bar(terminal);
    let options = Options {
        older_than: args.older_than,
        dry_run: args.dry_run,
        max_rate: args.max_rate,
        consumer: format!("reconcile@{}", std::process::id()),
    };
    let progress = bar.clone();
    let mut run = Run::new(options, move |fix: &Fix| {
        let line = format!(
            "{} {} {}: {:?} {}",
            fix.kind, fix.subject, fix.action, fix.outcome, fix.detail
        );
        if terminal {
            progress.set_message(line);
        } else {
            eprintln!("{line}");
        }
    });
    let errors = run_phases(&reconciler, &engine, &pool, &mut run, &bar, terminal).await;
    bar.finish_and_clear();

    let summary = summarize(&run.fixes);
    print_summary(&summary, &errors, args.dry_run);
    let unfixable = summary.values().any(|c| c.unfixable > 0);
    let status: u8 = if !errors.is_empty() {
        2
    } else if unfixable {
        1
    } else {
        0
    };

    let finished = SystemTime::now();
    let run_id = record(&pool, &run.fixes, &summary, started, finished, args, status)
        .await
        .context("record the run in PostgreSQL");
    let run_id = match run_id {
        Ok(id) => Some(id),
        Err(error) => {
            println!("error: {error:#}");
            None
        }
    };
    if let Some(path) = &args.report {
        let report = json!({
            "run_id": run_id,
            "started_at": humantime::format_rfc3339_millis(started).to_string(),
            "finished_at": humantime::format_rfc3339_millis(finished).to_string(),
            "dry_run": args.dry_run,
            "older_than_s": args.older_than.as_secs(),
            "exit_status": status,
            "summary": summary,
            "errors": errors,
            "fixes": run.fixes,
        });
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("write {}", path.display()))?;
    }
    let status = if run_id.is_none() { 2 } else { status };
    Ok(ExitCode::from(status))
}

/// A spinner on a terminal; nothing otherwise (plain lines are printed).
fn progress_bar(terminal: bool) -> ProgressBar {
    if !terminal {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("{spinner} {prefix:.bold} {msg}").expect("a valid template"),
    );
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

/// Every phase in order; a phase that fails is reported and the next runs.
async fn run_phases(
    reconciler: &Reconciler,
    engine: &engine::Engine,
    pool: &deadpool_postgres::Pool,
    run: &mut Run<'_>,
    bar: &ProgressBar,
    terminal: bool,
) -> Vec<String> {
    let mut errors = Vec::new();
    macro_rules! phase {
        ($name:literal, $call:expr) => {{
            bar.set_prefix($name);
            if !terminal {
                eprintln!("phase {}", $name);
            }
            if let Err(error) = $call.await {
                tracing::error!(phase = $name, %error, "Reconciliation phase failed.");
                errors.push(format!("{}: {error}", $name));
            }
        }};
    }
    phase!("stuck sagas", reconciler.stuck_sagas(run));
    phase!("held stock", reconciler.held_stock(run));
    phase!("provider ledger", reconciler.provider(run));
    let notifier = std::sync::Arc::new(engine::notify::LogNotifier);
    phase!(
        "dead consumers",
        reconciler.dead_consumer_pending(run, notifier)
    );
    phase!(
        "parked compensations",
        reconciler.parked(run, archiver::RECONCILE_GROUP)
    );
    phase!("dead letters", reconciler.dead_letters(run));
    phase!("idle consumers", reconciler.idle_consumers(run));
    phase!(
        "unarchived entries",
        archiver::repair::unarchived(engine, pool, run)
    );
    phase!(
        "archive gaps",
        archiver::repair::projections(engine, pool, run)
    );
    errors
}

/// Found, fixed, unfixable, would-fix and reported, per kind.
fn summarize(fixes: &[Fix]) -> BTreeMap<&'static str, Counts> {
    let mut summary: BTreeMap<&str, Counts> = BTreeMap::new();
    for fix in fixes {
        let counts = summary.entry(fix.kind).or_default();
        counts.found += 1;
        match fix.outcome {
            Outcome::Fixed => counts.fixed += 1,
            Outcome::Unfixable => counts.unfixable += 1,
            Outcome::WouldFix => counts.would_fix += 1,
            Outcome::Reported => counts.reported += 1,
        }
    }
    summary
}

fn print_summary(summary: &BTreeMap<&str, Counts>, errors: &[String], dry_run: bool) {
    let last = if dry_run { "would fix" } else { "reported" };
    println!(
        "{:<26} {:>7} {:>7} {:>10} {:>10}",
        "kind", "found", "fixed", "unfixable", last
    );
    for (kind, c) in summary {
        let last = if dry_run { c.would_fix } else { c.reported };
        println!(
            "{kind:<26} {:>7} {:>7} {:>10} {last:>10}",
            c.found, c.fixed, c.unfixable
        );
    }
    if summary.is_empty() {
        println!("(nothing found)");
    }
    for error in errors {
        println!("error: {error}");
    }
}

async fn record(
    pool: &deadpool_postgres::Pool,
    fixes: &[Fix],
    summary: &BTreeMap<&str, Counts>,
    started: SystemTime,
    finished: SystemTime,
    args: &ReconcileArgs,
    status: u8,
) -> anyhow::Result<i64> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let row = tx
        .query_one(
            "INSERT INTO reconciliation_runs (started_at, finished_at, dry_run, older_than_s, summary, exit_status) \
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
            &[
                &started,
                &finished,
                &args.dry_run,
                &(args.older_than.as_secs() as i64),
                &tokio_postgres::types::Json(json!(summary)),
                &i32::from(status),
            ],
        )
        .await?;
    let id: i64 = row.get(0);
    for (n, fix) in fixes.iter().enumerate() {
        let outcome = serde_json::to_value(&fix.outcome)?
            .as_str()
            .unwrap_or("")
            .to_string();
        tx.execute(
            "INSERT INTO reconciliation_fixes (run_id, n, kind, subject, action, outcome, detail) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
            &[
                &id,
                &(n as i32),
                &fix.kind,
                &fix.subject,
                &fix.action,
                &outcome,
                &fix.detail,
            ],
        )
        .await?;
    }
    tx.commit().await?;
    Ok(id)
}
