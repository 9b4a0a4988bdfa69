//! `lunchrush migrate`: applies `migrations/` to PostgreSQL.

use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct MigrateArgs {
    /// postgres://user[:password]@host:port/database
    #[arg(long, env = "LUNCHRUSH_POSTGRES_URL")]
    postgres_url: String,
}

pub async fn run(args: MigrateArgs) -> anyhow::Result<ExitCode> {
    let applied = archiver::schema::migrate(&args.postgres_url).await?;
    if applied.is_empty() {
        println!("Schema is up to date.");
    }
    for name in applied {
        println!("applied {name}");
    }
    Ok(ExitCode::SUCCESS)
}
