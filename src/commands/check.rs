//! `lunchrush check`: the rule checker. Exit 0 when every order is in an
//! allowed pair and stock is conserved, 1 when something is broken.

use std::process::ExitCode;

use crate::args::EngineArgs;

#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub engine: EngineArgs,
    /// Treat sagas still running (PENDING, PAID, rejected awaiting a void) as
    /// violations: use once the system is quiet.
    #[arg(long)]
    pub at_rest: bool,
    /// Also audit the archive: every event of every order archived exactly
    /// once, projections equal to Redis (needs LUNCHRUSH_POSTGRES_URL).
    #[arg(long)]
    pub archive: bool,
}

pub async fn run(args: CheckArgs) -> anyhow::Result<ExitCode> {
    let config = args.engine.config()?;
    let redis = engine::store::connect(&config).await?;
    let engine = engine::Engine::new(redis, config.clone()).await?;
    let report = engine::check::check(&engine, args.at_rest).await?;
    print!("{report}");
    let mut passed = report.passed();
    if args.archive {
        let pool = api::postgres_pool(&config.postgres_url)?;
        let audit = archiver::audit::audit(&engine, &pool).await?;
        print!("{audit}");
        passed &= audit.passed();
    }
    Ok(if passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
