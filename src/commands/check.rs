//! `lunchrush check`: the rule checker. Exit 0 when every order is in an
//! allowed pair and stock is conserved, 1 when something is broken.

use std::process::ExitCode;

use crate::args::EngineArgs;

/// The checker needs no API secret, but the configuration always holds one.
const UNUSED_SECRET: &str = "the-checker-serves-no-api-and-mints-no-token";

#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub engine: EngineArgs,
    /// Treat sagas still running (PENDING, PAID, rejected awaiting a void) as
    /// violations: use once the system is quiet.
    #[arg(long)]
    pub at_rest: bool,
}

pub async fn run(args: CheckArgs) -> anyhow::Result<ExitCode> {
    let config = args
        .engine
        .config(engine::Config::default().listen, UNUSED_SECRET.into())?;
    let redis = engine::store::connect(&config).await?;
    let engine = engine::Engine::new(redis, config).await?;
    let report = engine::check::check(&engine, args.at_rest).await?;
    print!("{report}");
    Ok(if report.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
