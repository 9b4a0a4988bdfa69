//! `lunchrush psp-sim`: the payment-provider simulator, with its ledger on
//! disk and fault injection from flags (all faults off by default).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

use crate::args::FaultArgs;

#[derive(Debug, clap::Args)]
pub struct PspSimArgs {
    /// Listen address.
    #[arg(long, env = "LUNCHRUSH_PSP_LISTEN", default_value = "127.0.0.1:8081")]
    pub listen: SocketAddr,
    /// The append-only ledger (JSON lines); replayed at start.
    #[arg(
        long,
        env = "LUNCHRUSH_PSP_LEDGER",
        default_value = ".lunchrush/psp/ledger.jsonl"
    )]
    pub ledger: PathBuf,
    #[command(flatten)]
    pub faults: FaultArgs,
}

pub async fn run(args: PspSimArgs) -> anyhow::Result<ExitCode> {
    let sim = stack::psp::PspSim::open(&args.ledger, args.faults.faults())
        .with_context(|| format!("open the ledger {}", args.ledger.display()))?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listen on {}", args.listen))?;
    println!("READY psp=http://{}", listener.local_addr()?);
    tracing::info!(ledger = %args.ledger.display(), faults = ?sim.faults(), "Provider simulator serving.");
    sim.serve(listener, crate::shutdown::signal()).await?;
    Ok(ExitCode::SUCCESS)
}
