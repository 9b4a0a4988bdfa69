//! Trimming: `XTRIM MINID` to what every group acknowledged and the
//! archive holds; group state read with XINFO GROUPS.

use super::*;

impl Archiver {
    /// Trims one partition's streams to what every group acknowledged and
    /// the archive holds; returns the entries removed.
    pub async fn trim_partition(&self, p: u16) -> Result<u64, ArchiveError> {
        let client = self.pool.get().await?;
        let mut removed = 0u64;
        for stream in self.streams.names(p) {
            let length: u64 = self.engine.redis().xlen(stream.as_str()).await?;
            if length == 0 {
                continue;
            }
            let Some(bound) = self.trim_bound(&client, &stream).await? else {
                continue;
            };
            let trimmed: u64 = self
                .engine
                .redis()
                .custom(
                    fred::cmd!("XTRIM"),
                    vec![
                        stream.clone(),
                        "MINID".into(),
                        format!("{}-{}", bound.0, bound.1),
                    ],
                )
                .await?;
            removed += trimmed;
            if let Some(lag) = self.archive_lag(&stream).await?
                && lag > self.options.lag_warn_entries
            {
                tracing::warn!(%stream, lag, "Archive lags behind the stream; the online path keeps running.");
            }
        }
        if removed > 0 {
            metrics::counter!("lunchrush_stream_trimmed_entries_total").increment(removed);
        }
        Ok(removed)
    }

    /// The lowest id some group has not acknowledged, capped by the archive
    /// watermark: entries strictly below it may go.
    pub(crate) async fn trim_bound(
        &self,
        client: &deadpool_postgres::Object,
        stream: &str,
    ) -> Result<Option<(i64, i64)>, ArchiveError> {
        let groups = self.groups(stream).await?;
        if !groups.iter().any(|g| g.name == GROUP) {
            return Ok(None);
        }
        let mut bound: Option<(i64, i64)> = None;
        for group in groups {
            let group_bound = if group.pending > 0 {
                engine::streams::pending(self.engine.redis(), stream, &group.name, 1)
                    .await?
                    .first()
                    .and_then(|p| parse_entry_id(&p.id))
                    .unwrap_or((0, 0))
            } else {
                let (ms, seq) = group.last_delivered;
                (ms, seq + 1)
            };
            bound = Some(bound.map_or(group_bound, |b| b.min(group_bound)));
        }
        let statement = client
            .prepare_cached("SELECT entry_ms, entry_seq FROM archive_watermarks WHERE stream = $1")
            .await?;
        let watermark = client
            .query_opt(&statement, &[&stream])
            .await?
            .map(|row| (row.get::<_, i64>(0), row.get::<_, i64>(1) + 1))
            .unwrap_or((0, 0));
        Ok(bound.map(|b| b.min(watermark)).filter(|b| *b > (0, 0)))
    }

    /// Entries of `stream` the archiver has not read yet (XINFO GROUPS lag).
    pub(crate) async fn archive_lag(&self, stream: &str) -> Result<Option<u64>, ArchiveError> {
        Ok(self
            .groups(stream)
            .await?
            .into_iter()
            .find(|g| g.name == GROUP)
            .and_then(|g| g.lag))
    }

    pub(crate) async fn groups(&self, stream: &str) -> Result<Vec<GroupInfo>, ArchiveError> {
        group_infos(self.engine.redis(), stream).await
    }
}

/// The consumer groups of a stream (XINFO GROUPS), parsed.
pub(crate) async fn group_infos(
    redis: &Client,
    stream: &str,
) -> Result<Vec<GroupInfo>, ArchiveError> {
    Ok(engine::streams::group_infos(redis, stream).await?)
}

/// The last entry id of `stream` delivered to the archiver group ((0, 0) if none).
pub(crate) async fn archiver_last_delivered(
    redis: &Client,
    stream: &str,
) -> Result<(i64, i64), ArchiveError> {
    Ok(group_infos(redis, stream)
        .await?
        .into_iter()
        .find(|g| g.name == GROUP)
        .map(|g| g.last_delivered)
        .unwrap_or((0, 0)))
}

pub(crate) use engine::streams::GroupInfo;

/// A fred value as JSON; arrays stay arrays.
pub(crate) fn json_of(value: &fred::types::Value) -> Value {
    use fred::types::Value as V;
    match value {
        V::Null => Value::Null,
        V::Integer(i) => json!(i),
        V::Double(d) => json!(d),
        V::Boolean(b) => json!(b),
        V::String(s) => json!(s.to_string()),
        V::Bytes(b) => json!(String::from_utf8_lossy(b)),
        V::Array(items) => Value::Array(items.iter().map(json_of).collect()),
        V::Map(map) => Value::Object(
            map.clone()
                .inner()
                .iter()
                .map(|(k, v)| (k.as_str_lossy().to_string(), json_of(v)))
                .collect(),
        ),
        other => json!(format!("{other:?}")),
    }
}

/// A reply that is a flat `[key, value, key, value, …]` array (RESP2) or a
/// map (RESP3), as a JSON object.
pub(crate) fn pairs_of(value: &fred::types::Value) -> Value {
    match json_of(value) {
        Value::Array(items) => Value::Object(
            items
                .chunks(2)
                .filter_map(|pair| {
                    Some((pair.first()?.as_str()?.to_string(), pair.get(1)?.clone()))
                })
                .collect(),
        ),
        other => other,
    }
}
