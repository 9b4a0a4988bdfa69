//! The SQL of a batch: binary COPY into staging, the inserts, the
//! projections refolded, the watermarks; prepared once per connection.

use std::borrow::Cow;

use super::*;

/// The partition time of an event (see `migrations/V2__archive.sql`).
pub(crate) fn part_time(event: &Event) -> SystemTime {
    match event.order_id() {
        Some(order) => uuid_time(&order),
        None => ms_time(
            parse_entry_id(&event.id)
                .map(|(ms, _)| ms)
                .unwrap_or(event.ts_ms),
        ),
    }
}

/// (year, month) of a day count since 1970-01-01 (proleptic Gregorian).
pub fn civil_month(days: i64) -> (i32, u32) {
    // Howard Hinnant's days_from_civil inverse.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = (yoe + era * 400 + i64::from(month <= 2)) as i32;
    (year, month)
}

/// The column types of a `saga_events` row, in table order (the binary
/// COPY's header).
pub const SAGA_EVENT_TYPES: [Type; 12] = [
    Type::TEXT,
    Type::TEXT,
    Type::INT8,
    Type::INT8,
    Type::UUID,
    Type::UUID,
    Type::INT8,
    Type::TEXT,
    Type::INT4,
    Type::JSONB,
    Type::TIMESTAMPTZ,
    Type::TIMESTAMPTZ,
];

/// The batch's events into `saga_events`, each once. Most batches hold
/// entries never archived: one binary COPY straight into the table. A batch
/// holding some already there (redelivered after a crash between COMMIT and
/// XACK, or archived by another archiver meanwhile) fails that COPY on the
/// unique key; it is undone (a savepoint) and the batch goes through a
/// staging table, `INSERT … ON CONFLICT DO NOTHING` skipping those.
pub(crate) async fn insert_events(
    tx: &mut Tx<'_>,
    events: &[Event],
    payloads: &[Cow<'_, str>],
) -> Result<(), ArchiveError> {
    if events.is_empty() {
        return Ok(());
    }
    let direct = tx.savepoint("direct_copy").await?;
    match copy_events(&direct, "saga_events", events, payloads).await {
        Ok(()) => {
            direct.commit().await?;
            return Ok(());
        }
        Err(ArchiveError::Postgres(error))
            if error.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) =>
        {
            direct.rollback().await?;
        }
        Err(error) => return Err(error),
    }
    metrics::counter!("lunchrush_archive_redelivered_batches_total").increment(1);
    tx.batch_execute(
        // No NOTICE when the table exists already (they reach the log).
        "SET LOCAL client_min_messages TO warning; \
         CREATE TEMP TABLE IF NOT EXISTS archive_staging \
         (LIKE saga_events INCLUDING DEFAULTS) ON COMMIT DELETE ROWS",
    )
    .await?;
    copy_events(tx, "archive_staging", events, payloads).await?;
    execute(
        tx,
        "INSERT INTO saga_events (stream, entry_id, entry_ms, entry_seq, order_id, saga_id, seq, \
         type, schema_version, payload, event_time, part_time) \
         SELECT stream, entry_id, entry_ms, entry_seq, order_id, saga_id, seq, type, \
         schema_version, payload, event_time, part_time FROM archive_staging \
         ON CONFLICT DO NOTHING",
        &[],
    )
    .await?;
    Ok(())
}

/// The batch's events into `table` (`saga_events` or the staging table) by
/// binary COPY.
async fn copy_events(
    tx: &Tx<'_>,
    table: &str,
    events: &[Event],
    payloads: &[Cow<'_, str>],
) -> Result<(), ArchiveError> {
    let sink = tx
        .copy_in(&format!(
            "COPY {table} (stream, entry_id, entry_ms, entry_seq, order_id, saga_id, seq, \
             type, schema_version, payload, event_time, part_time) FROM STDIN BINARY"
        ))
        .await?;
    let writer = BinaryCopyInWriter::new(sink, &SAGA_EVENT_TYPES);
    futures::pin_mut!(writer);
    for (event, payload) in events.iter().zip(payloads) {
        let (ms, seq) = parse_entry_id(&event.id).unwrap_or((0, 0));
        let order: Option<Uuid> = event.order_id();
        let saga: Option<Uuid> = event.saga.parse().ok();
        writer
            .as_mut()
            .write(&[
                &event.stream,
                &event.id,
                &ms,
                &seq,
                &order,
                &saga,
                &(event.seq as i64),
                &event.kind.as_str(),
                &(event.version as i32),
                &Jsonb(payload),
                &ms_time(event.ts_ms),
                &part_time(event),
            ])
            .await?;
    }
    writer.finish().await?;
    Ok(())
}

/// The text an event's `data` is archived as: as written when it is JSON
/// (`decoded`: it decoded as its typed payload, so it is), else wrapped as
/// `{"raw": data}`.
pub(crate) fn jsonb_text(data: &str, decoded: bool) -> Cow<'_, str> {
    if decoded || serde_json::from_str::<serde::de::IgnoredAny>(data).is_ok() {
        Cow::Borrowed(data)
    } else {
        Cow::Owned(json!({ "raw": data }).to_string())
    }
}

/// A JSON text sent as a `jsonb` value as it is (the binary format is a
/// version byte and the text): no parse and re-serialization on our side.
#[derive(Debug)]
struct Jsonb<'a>(&'a str);

impl tokio_postgres::types::ToSql for Jsonb<'_> {
    fn to_sql(
        &self,
        _: &Type,
        out: &mut tokio_postgres::types::private::BytesMut,
    ) -> Result<tokio_postgres::types::IsNull, Box<dyn std::error::Error + Sync + Send>> {
        out.extend_from_slice(&[1]);
        out.extend_from_slice(self.0.as_bytes());
        Ok(tokio_postgres::types::IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::JSONB
    }

    tokio_postgres::types::to_sql_checked!();
}

pub(crate) async fn insert_dead_letters(tx: &Tx<'_>, dead: &[&Entry]) -> Result<(), ArchiveError> {
    for entry in dead {
        let field = |k: &str| entry.fields.get(k).map(str::to_owned);
        let fields = json!(entry.fields.to_map());
        execute(tx,
            "INSERT INTO dead_letters (stream, entry_id, source, source_id, group_name, reason, action, fields) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING",
            &[
                &entry.stream,
                &entry.id,
                &field("source"),
                &field("source_id"),
                &field("group"),
                &field("reason"),
                &field("action"),
                &Json(&fields),
            ],
        )
        .await?;
    }
    Ok(())
}

/// The history tables, in one pass over the batch's typed events:
/// `restaurant_history` and `menu_item_history` from the menu events,
/// `timer_history` from TimerFired, `notifications` from NotificationSent.
/// (An order's lines are its OrderPlaced event's: `order_items` is a view.)
pub(crate) async fn insert_histories(
    tx: &Tx<'_>,
    events: &[Event],
    payloads: &[Option<Payload>],
) -> Result<(), ArchiveError> {
    for (event, payload) in events.iter().zip(payloads) {
        if let Some(payload) = payload {
            insert_history(tx, event, payload).await?;
        }
    }
    Ok(())
}

/// The history row of one restaurant, menu item, timer or notification
/// event (nothing for any other event).
async fn insert_history(tx: &Tx<'_>, event: &Event, payload: &Payload) -> Result<(), ArchiveError> {
    let (seq, at) = (event.seq as i64, ms_time(event.ts_ms));
    match payload {
        Payload::RestaurantUpserted(r) => {
            execute(
                tx,
                "INSERT INTO restaurant_history (restaurant_id, seq, name, open, auto_approve, at) \
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
                &[&r.restaurant, &seq, &r.name, &r.open, &r.auto, &at],
            )
            .await?;
        }
        Payload::MenuItemUpserted(i) => {
            execute(tx,
                "INSERT INTO menu_item_history (restaurant_id, seq, item, name, price, stock, delta, \
                 available, max_per_customer, at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
                 ON CONFLICT DO NOTHING",
                &[
                    &i.restaurant,
                    &seq,
                    &i.item,
                    &i.name,
                    &i.price,
                    &i.stock,
                    &i.delta,
                    &i.available,
                    &i.max_pc,
                    &at,
                ],
            )
            .await?;
        }
        Payload::TimerFired(fired) => {
            let Ok(order) = fired.order.parse::<Uuid>() else {
                return Ok(());
            };
            let (due, at) = (fired.due, fired.fired);
            execute(tx,
                "INSERT INTO timer_history (order_id, kind, due_at, fired_at, lateness_ms, outcome) \
                 VALUES ($1, $2, $3, $4, $5, 'fired') ON CONFLICT DO NOTHING",
                &[&order, &fired.kind, &ms_time(due), &ms_time(at), &(at - due).max(0)],
            )
            .await?;
        }
        Payload::NotificationSent(sent) => {
            let Some(order) = event.order_id() else {
                return Ok(());
            };
            execute(tx,
                "INSERT INTO notifications (order_id, kind, idempotency_key, channel, attempts, sent_at) \
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
                &[
                    &order,
                    &sent.kind,
                    &sent.key,
                    &sent.channel,
                    &(sent.attempts as i32),
                    &ms_time(event.ts_ms),
                ],
            )
            .await?;
        }
        _ => {}
    }
    Ok(())
}

pub(crate) async fn advance_watermarks(tx: &Tx<'_>, entries: &[Entry]) -> Result<(), ArchiveError> {
    let mut highest: HashMap<&str, (i64, i64)> = HashMap::new();
    for entry in entries {
        if let Some(id) = parse_entry_id(&entry.id) {
            let slot = highest.entry(&entry.stream).or_insert(id);
            *slot = (*slot).max(id);
        }
    }
    // One statement for every stream, in stream order (two archivers lock
    // the rows they share in the same order).
    let mut highest: Vec<(&str, (i64, i64))> = highest.into_iter().collect();
    highest.sort_unstable();
    let streams: Vec<&str> = highest.iter().map(|(s, _)| *s).collect();
    let ms: Vec<i64> = highest.iter().map(|(_, (ms, _))| *ms).collect();
    let seqs: Vec<i64> = highest.iter().map(|(_, (_, seq))| *seq).collect();
    execute(
        tx,
        "INSERT INTO archive_watermarks (stream, entry_ms, entry_seq) \
         SELECT * FROM UNNEST($1::text[], $2::int8[], $3::int8[]) \
         ON CONFLICT (stream) DO UPDATE SET entry_ms = EXCLUDED.entry_ms, \
         entry_seq = EXCLUDED.entry_seq, updated_at = now() \
         WHERE (archive_watermarks.entry_ms, archive_watermarks.entry_seq) \
             < (EXCLUDED.entry_ms, EXCLUDED.entry_seq)",
        &[&streams, &ms, &seqs],
    )
    .await?;
    Ok(())
}

/// The transaction every batch writes in (its statements are prepared once
/// per connection and cached).
pub(crate) type Tx<'a> = deadpool_postgres::Transaction<'a>;

pub(crate) async fn execute(
    tx: &Tx<'_>,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<u64, tokio_postgres::Error> {
    let statement = tx.prepare_cached(sql).await?;
    tx.execute(&statement, params).await
}

pub(crate) async fn query(
    tx: &Tx<'_>,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<Vec<tokio_postgres::Row>, tokio_postgres::Error> {
    let statement = tx.prepare_cached(sql).await?;
    tx.query(&statement, params).await
}
