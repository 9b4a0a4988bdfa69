//! Reconciliation's archive side: stream entries older than a bound and
//! never archived are archived now (taking over what dead archivers left
//! pending); orders whose archive has a gap or whose projection disagrees
//! with Redis are re-archived from the streams and refolded.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use engine::keys::Topic;
use engine::reconcile::{Outcome, Run};
use fred::prelude::*;

use crate::{ArchiveError, Archiver, ArchiverOptions, GROUP};

/// Entries counted per stream when looking for old unarchived ones.
const SCAN_COUNT_MAX: u64 = 10_000;

/// Kind `unarchived`: entries older than `older_than` that the archiver
/// group has not acknowledged.
pub async fn unarchived(
    engine: &engine::Engine,
    pool: &deadpool_postgres::Pool,
    run: &mut Run<'_>,
) -> Result<(), ArchiveError> {
    let older_than = run.options.older_than;
    let mut found = 0u64;
    for p in 0..engine.keys().partitions() {
        for topic in Topic::ALL {
            let stream = engine.keys().stream(p, topic);
            found += old_unarchived(engine, &stream, older_than).await?;
        }
    }
    if found == 0 {
        return Ok(());
    }
    if run.options.dry_run {
        run.record(
            "unarchived",
            "streams",
            &format!("archive {found} entries"),
            Outcome::WouldFix,
            String::new(),
        );
        return Ok(());
    }
    let mut options = ArchiverOptions::new(format!("{}-archiver", run.options.consumer));
    options.reclaim_idle = older_than;
    let archiver = Archiver::new(engine.clone(), pool.clone(), options);
    archiver.prepare().await?;
    for p in 0..engine.keys().partitions() {
        archiver.reclaim(p).await?;
    }
    let archived = archiver.drain().await?;
    run.record(
        "unarchived",
        "streams",
        &format!("archive {found} entries"),
        Outcome::Fixed,
        format!("{archived} entries archived"),
    );
    Ok(())
}

/// Entries of `stream` older than `older_than` the archiver group has not
/// acknowledged: pending that long, or not delivered at all (at most
/// [`SCAN_COUNT_MAX`] of each).
async fn old_unarchived(
    engine: &engine::Engine,
    stream: &str,
    older_than: Duration,
) -> Result<u64, ArchiveError> {
    let length: u64 = engine.redis().xlen(stream).await?;
    if length == 0 {
        return Ok(0);
    }
    let cutoff_ms = SystemTime::now()
        .checked_sub(older_than)
        .unwrap_or(UNIX_EPOCH)
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_millis() as i64;
    let pending =
        engine::streams::pending_idle(engine.redis(), stream, GROUP, older_than, SCAN_COUNT_MAX)
            .await
            .unwrap_or_default();
    let (ms, seq) = crate::archiver_last_delivered(engine.redis(), stream).await?;
    let undelivered: Vec<(String, std::collections::HashMap<String, String>)> = engine
        .redis()
        .xrange(
            stream,
            format!("{ms}-{}", seq + 1),
            format!("{cutoff_ms}-0"),
            Some(SCAN_COUNT_MAX),
        )
        .await?;
    Ok((pending.len() + undelivered.len()) as u64)
}

/// Kind `archive_gap`: orders whose archived events or projection disagree
/// with Redis; re-archived from the streams and refolded.
pub async fn projections(
    engine: &engine::Engine,
    pool: &deadpool_postgres::Pool,
    run: &mut Run<'_>,
) -> Result<(), ArchiveError> {
    let report = crate::audit::audit(engine, pool).await?;
    if report.broken.is_empty() {
        return Ok(());
    }
    let archiver = Archiver::new(
        engine.clone(),
        pool.clone(),
        ArchiverOptions::new(format!("{}-archiver", run.options.consumer)),
    );
    // An order that changed recently, or whose events are still on their
    // way to the archive, is lagging, not broken.
    let cutoff_ms = SystemTime::now()
        .checked_sub(run.options.older_than)
        .unwrap_or(UNIX_EPOCH)
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_millis() as i64;
    for id in report.broken {
        let Ok(Some(order)) = engine.order(&id).await else {
            continue;
        };
        if order.updated_ms >= cutoff_ms || archive_pending(engine, &order).await? {
            continue;
        }
        if run.options.dry_run {
            run.record(
                "archive_gap",
                id.to_string(),
                "re-archive from the streams",
                Outcome::WouldFix,
                String::new(),
            );
            continue;
        }
        let present = archiver.rearchive_order(&order).await?;
        let after = crate::audit::audit_orders(pool, std::slice::from_ref(&order)).await?;
        let (outcome, detail) = if after.passed() {
            (Outcome::Fixed, format!("{present} entries re-archived"))
        } else {
            (
                Outcome::Unfixable,
                format!(
                    "{present} of {} entries still in Redis: {}",
                    order.seq,
                    after.violations.join("; ")
                ),
            )
        };
        run.record(
            "archive_gap",
            id.to_string(),
            "re-archive from the streams",
            outcome,
            detail,
        );
    }
    Ok(())
}

/// Whether some event of `order` is still on its way to the archive
/// (delivered to no archiver yet, or pending with one): lag, not a gap.
async fn archive_pending(
    engine: &engine::Engine,
    order: &engine::domain::Order,
) -> Result<bool, ArchiveError> {
    for (stream, id) in &order.events {
        let last_delivered = crate::archiver_last_delivered(engine.redis(), stream).await?;
        let unarchived =
            engine::streams::unacknowledged(engine.redis(), stream, GROUP, last_delivered, id)
                .await
                .unwrap_or_default();
        if unarchived {
            return Ok(true);
        }
    }
    Ok(false)
}
