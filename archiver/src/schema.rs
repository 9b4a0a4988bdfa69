//! The PostgreSQL schema: `migrations/*.sql`, embedded at build time and
//! applied with refinery by `lunchrush migrate`, `lunchrush up` and every
//! process that writes to Postgres.

use anyhow::Context;

mod embedded {
    refinery::embed_migrations!("../migrations");
}

/// Serializes concurrent `migrate` calls (many engine processes start at
/// once): refinery itself takes no lock. The number is arbitrary but fixed.
const MIGRATION_LOCK_KEY: i64 = 0x6c75_6e63_6872_7573; // "lunchrus"

/// Applies every migration not yet applied to the database at `url`.
/// Returns the names of the migrations it applied.
pub async fn migrate(url: &str) -> anyhow::Result<Vec<String>> {
    migrate_to(url, None).await
}

/// [`migrate`] up to migration `version` only (`None`: all of them). A test
/// of a migration applies the ones before it, writes rows in that schema,
/// then applies the rest.
pub async fn migrate_to(url: &str, version: Option<u32>) -> anyhow::Result<Vec<String>> {
    let (mut client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .with_context(|| format!("connect to {}", redact(url)))?;
    let driver = tokio::spawn(connection);
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK_KEY])
        .await
        .context("take the migration lock")?;
    let target = match version {
        Some(version) => refinery::Target::Version(version.try_into()?),
        None => refinery::Target::Latest,
    };
    let report = embedded::migrations::runner()
        .set_target(target)
        .run_async(&mut client)
        .await
        .context("apply migrations");
    let unlock = client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK_KEY])
        .await;
    let report = report?;
    unlock.context("release the migration lock")?;
    drop(client);
    let _ = driver.await;
    Ok(report
        .applied_migrations()
        .iter()
        .map(|m| m.to_string())
        .collect())
}

/// Creates the `saga_events` partition for one month (idempotent; a
/// transaction-scoped advisory lock serializes concurrent archivers).
pub async fn ensure_month(
    client: &deadpool_postgres::Object,
    year: i32,
    month: u32,
) -> Result<(), tokio_postgres::Error> {
    client
        .batch_execute(&format!(
            "BEGIN; SELECT pg_advisory_xact_lock({MIGRATION_LOCK_KEY} + 1); \
             SELECT saga_events_ensure_month(make_timestamptz({year}, {month}, 1, 0, 0, 0, 'UTC')); COMMIT;"
        ))
        .await
}

/// A URL with any password replaced, for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}
