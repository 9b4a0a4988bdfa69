//! Stream plumbing shared by the workers, the archiver and the operations
//! console: entry ids, consumer-group state (XINFO GROUPS) and pending
//! lists (XPENDING), parsed once.

use std::collections::HashMap;

use fred::prelude::*;
use fred::types::Value;

/// Every partition's streams of some topics, named once: a reader names
/// them on every read (one XREADGROUP over many streams), and formatting
/// the names each time showed in its profile. Cheap to clone.
#[derive(Debug, Clone)]
pub struct PartitionStreams(std::sync::Arc<[Vec<fred::types::Key>]>);

impl PartitionStreams {
    /// The streams of `topics` of each partition of `keys`.
    pub fn new(keys: &crate::keys::KeySpace, topics: &[crate::keys::Topic]) -> Self {
        Self(
            (0..keys.partitions())
                .map(|p| topics.iter().map(|&t| keys.stream(p, t).into()).collect())
                .collect(),
        )
    }

    /// The streams of `partitions`, partition by partition (none for a
    /// partition beyond the key space).
    pub fn of(&self, partitions: &[u16]) -> Vec<fred::types::Key> {
        partitions
            .iter()
            .filter_map(|&p| self.0.get(usize::from(p)))
            .flat_map(|streams| streams.iter().cloned())
            .collect()
    }

    /// The names of partition `p`'s streams (none beyond the key space).
    pub fn names(&self, p: u16) -> Vec<String> {
        self.of(&[p])
            .iter()
            .map(|key| key.as_str_lossy().into_owned())
            .collect()
    }
}

/// `ms-seq` → (ms, seq).
pub fn parse_entry_id(id: &str) -> Option<(i64, i64)> {
    let (ms, seq) = id.split_once('-')?;
    let number = |text: &str| {
        let digits = !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit());
        digits.then(|| text.parse().ok()).flatten()
    };
    Some((number(ms)?, number(seq)?))
}

/// How long ago (by this machine's clock) the entry `id` was added; `None`
/// for an id that is not `ms-seq` or lies in the future.
pub fn entry_age(id: &str) -> Option<std::time::Duration> {
    let (ms, _) = parse_entry_id(id)?;
    let added = std::time::UNIX_EPOCH + std::time::Duration::from_millis(u64::try_from(ms).ok()?);
    std::time::SystemTime::now().duration_since(added).ok()
}

/// One consumer group of a stream, as XINFO GROUPS reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupInfo {
    pub name: String,
    /// Entries delivered and not yet acknowledged.
    pub pending: u64,
    /// Entries not yet delivered; `None` when Redis cannot tell (after a
    /// group's position was set by hand, or entries were deleted).
    pub lag: Option<u64>,
    pub last_delivered: (i64, i64),
}

/// One XINFO record (a flat `[name, value, …]` array) by field name.
fn fields(record: Value) -> HashMap<String, Value> {
    record
        .into_array()
        .chunks(2)
        .filter_map(|kv| Some((kv.first()?.as_string()?, kv.get(1)?.clone())))
        .collect()
}

/// Whether Redis refused a stream command because the stream does not exist:
/// XINFO answers "no such key", XGROUP "The XGROUP subcommand requires the
/// key to exist".
pub fn is_missing_stream(error: &fred::error::Error) -> bool {
    let details = error.details();
    details.contains("no such key") || details.contains("requires the key to exist")
}

/// The consumer groups of a stream (empty when the stream does not exist).
pub async fn group_infos(
    redis: &Client,
    stream: &str,
) -> Result<Vec<GroupInfo>, fred::error::Error> {
    let raw: Value = match redis.xinfo_groups(stream).await {
        Ok(raw) => raw,
        Err(error) if is_missing_stream(&error) => return Ok(Vec::new()),
        Err(error) => return Err(error),
    };
    Ok(raw
        .into_array()
        .into_iter()
        .map(|group| {
            let map = fields(group);
            let text = |k: &str| map.get(k).and_then(Value::as_string);
            let number = |k: &str| map.get(k).and_then(Value::as_u64).unwrap_or(0);
            GroupInfo {
                name: text("name").unwrap_or_default(),
                pending: number("pending"),
                lag: map.get("lag").and_then(Value::as_u64),
                last_delivered: text("last-delivered-id")
                    .as_deref()
                    .and_then(parse_entry_id)
                    .unwrap_or((0, 0)),
            }
        })
        .collect())
}

/// One consumer of a group, as XINFO CONSUMERS reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerInfo {
    pub name: String,
    pub pending: u64,
    pub idle_ms: u64,
}

/// The consumers of `group` on `stream`.
pub async fn consumer_infos(
    redis: &Client,
    stream: &str,
    group: &str,
) -> Result<Vec<ConsumerInfo>, fred::error::Error> {
    let raw: Value = redis.xinfo_consumers(stream, group).await?;
    Ok(raw
        .into_array()
        .into_iter()
        .filter_map(|consumer| {
            let map = fields(consumer);
            Some(ConsumerInfo {
                name: map.get("name")?.as_string()?,
                pending: map.get("pending")?.as_u64()?,
                idle_ms: map.get("idle")?.as_u64()?,
            })
        })
        .collect())
}

/// One entry of a group's pending list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    pub id: String,
    pub consumer: String,
    pub idle_ms: u64,
    pub deliveries: u64,
}

impl Pending {
    fn from_row((id, consumer, idle_ms, deliveries): (String, String, u64, u64)) -> Self {
        Self {
            id,
            consumer,
            idle_ms,
            deliveries,
        }
    }
}

/// The first `count` entries of a group's pending list (every consumer).
pub async fn pending(
    redis: &Client,
    stream: &str,
    group: &str,
    count: u64,
) -> Result<Vec<Pending>, fred::error::Error> {
    pending_between(redis, stream, group, "-", "+", count).await
}

/// The pending entries of a group with ids from `first` to `last`, at most
/// `count` (their delivery counts, say).
pub async fn pending_between(
    redis: &Client,
    stream: &str,
    group: &str,
    first: &str,
    last: &str,
    count: u64,
) -> Result<Vec<Pending>, fred::error::Error> {
    xpending(redis, stream, group, None, first, last, count).await
}

/// Up to `count` entries of a group's pending list idle at least `idle`.
pub async fn pending_idle(
    redis: &Client,
    stream: &str,
    group: &str,
    idle: std::time::Duration,
    count: u64,
) -> Result<Vec<Pending>, fred::error::Error> {
    xpending(redis, stream, group, Some(idle), "-", "+", count).await
}

/// XPENDING's extended form, parsed.
async fn xpending(
    redis: &Client,
    stream: &str,
    group: &str,
    idle: Option<std::time::Duration>,
    first: &str,
    last: &str,
    count: u64,
) -> Result<Vec<Pending>, fred::error::Error> {
    let mut args = vec![stream.to_string(), group.to_string()];
    if let Some(idle) = idle {
        args.extend(["IDLE".to_string(), idle.as_millis().to_string()]);
    }
    args.extend([first.to_string(), last.to_string(), count.to_string()]);
    let rows: Vec<(String, String, u64, u64)> = redis.custom(fred::cmd!("XPENDING"), args).await?;
    Ok(rows.into_iter().map(Pending::from_row).collect())
}

/// Whether `group` has yet to acknowledge entry `id` of `stream`: not
/// delivered yet (after `last_delivered`), or delivered and pending.
pub async fn unacknowledged(
    redis: &Client,
    stream: &str,
    group: &str,
    last_delivered: (i64, i64),
    id: &str,
) -> Result<bool, fred::error::Error> {
    if parse_entry_id(id).is_some_and(|entry| entry > last_delivered) {
        return Ok(true);
    }
    let pending = pending_between(redis, stream, group, id, id, 1).await?;
    Ok(!pending.is_empty())
}

/// One entry by id (`None` once trimmed or deleted).
pub async fn entry(
    redis: &Client,
    stream: &str,
    id: &str,
) -> Result<Option<HashMap<String, String>>, fred::error::Error> {
    let entries: Vec<(String, HashMap<String, String>)> =
        redis.xrange(stream, id, id, Some(1)).await?;
    Ok(entries.into_iter().next().map(|(_, fields)| fields))
}

/// Acknowledgements gathered to be sent together: one XACK per stream, all
/// sent at once (one write on a standalone server). Holding an XACK back is
/// safe: an entry whose effect is done stays pending a little longer, and
/// were the process to die first, its redelivery changes nothing (every
/// handler is idempotent).
#[derive(Debug, Default)]
pub struct Acks {
    by_stream: HashMap<String, Vec<String>>,
    count: usize,
    oldest: Option<std::time::Instant>,
}

impl Acks {
    pub fn push(&mut self, stream: &str, id: String) {
        match self.by_stream.get_mut(stream) {
            Some(ids) => ids.push(id),
            None => {
                self.by_stream.insert(stream.to_string(), vec![id]);
            }
        }
        self.count += 1;
        self.oldest.get_or_insert_with(std::time::Instant::now);
    }

    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// When the oldest ack held has waited `window` (`None`: none held).
    pub fn deadline(&self, window: std::time::Duration) -> Option<std::time::Instant> {
        self.oldest.map(|at| at + window)
    }

    /// Sends every ack held, for `group`; holds none afterwards, even on
    /// failure (what was not acknowledged stays pending and is reclaimed).
    pub async fn flush(&mut self, redis: &Client, group: &str) -> Result<(), fred::error::Error> {
        let by_stream = std::mem::take(&mut self.by_stream);
        self.count = 0;
        self.oldest = None;
        let sent = by_stream
            .into_iter()
            .map(|(stream, ids)| redis.xack::<i64, _, _, _>(stream, group, ids));
        for acked in futures::future::join_all(sent).await {
            acked?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn entry_ids_parse_into_their_two_numbers() {
        assert_eq!(
            super::parse_entry_id("1700000000000-7"),
            Some((1_700_000_000_000, 7))
        );
        assert_eq!(super::parse_entry_id("17"), None);
        assert_eq!(super::parse_entry_id("a-1"), None);
        assert_eq!(super::parse_entry_id("+1-+1"), None);
        assert_eq!(super::parse_entry_id("1--1"), None);
    }

    #[test]
    fn a_partitions_stream_names_are_its_keys_by_topic() {
        use crate::keys::{KeySpace, Topic};
        let keys = KeySpace::new("t:", 4);
        let streams = super::PartitionStreams::new(&keys, &Topic::ALL);
        let expected: Vec<String> = Topic::ALL.iter().map(|&t| keys.stream(2, t)).collect();
        assert_eq!(streams.names(2), expected);
        assert!(
            streams.names(4).is_empty(),
            "no partition 4 in a space of 4"
        );
    }
}
