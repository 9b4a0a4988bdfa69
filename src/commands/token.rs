//! `lunchrush token`: prints a signed API token on stdout.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use api::auth::{Keys, Role};

#[derive(Debug, clap::Args)]
pub struct TokenArgs {
    /// customer, restaurant or admin.
    #[arg(long, env = "LUNCHRUSH_TOKEN_ROLE", value_parser = Role::parse)]
    role: Role,
    /// The subject: customer id, restaurant user id or admin id.
    #[arg(long, env = "LUNCHRUSH_TOKEN_SUB")]
    sub: String,
    /// The restaurant a `restaurant` token acts for.
    #[arg(long, env = "LUNCHRUSH_TOKEN_RESTAURANT")]
    restaurant: Option<String>,
    /// How long the token is valid (`30m`, `1h`, `7d`).
    #[arg(long, env = "LUNCHRUSH_TOKEN_TTL", default_value = "1h", value_parser = humantime::parse_duration)]
    ttl: Duration,
    /// HS256 secret (at least 32 bytes); `lunchrush up` writes one into stack.env.
    #[arg(long, env = "LUNCHRUSH_JWT_SECRET", hide_env_values = true)]
    jwt_secret: String,
}

pub fn run(args: TokenArgs) -> anyhow::Result<ExitCode> {
    if args.jwt_secret.len() < api::auth::JWT_SECRET_LEN_MIN {
        anyhow::bail!(
            "the JWT secret is {} bytes long; it must be at least {}",
            args.jwt_secret.len(),
            api::auth::JWT_SECRET_LEN_MIN
        );
    }
    let token = Keys::new(args.jwt_secret.as_bytes())
        .mint(args.role, &args.sub, args.restaurant.as_deref(), args.ttl)
        .context("mint the token")?;
    println!("{token}");
    Ok(ExitCode::SUCCESS)
}
