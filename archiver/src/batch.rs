//! Reading a batch (own pending entries first, then new ones), writing it
//! in one transaction, acknowledging after COMMIT.

use super::*;

impl Archiver {
    /// One batch of one partition: pending entries first, else new ones.
    pub async fn step(&self, p: u16) -> Result<usize, ArchiveError> {
        self.step_partitions(&[p]).await
    }

    /// One batch over `partitions` (one XREADGROUP, one transaction):
    /// pending entries first, else new ones.
    pub async fn step_partitions(&self, partitions: &[u16]) -> Result<usize, ArchiveError> {
        Ok(self
            .step_shard(partitions, &mut true, self.options.batch_size)
            .await?
            .0)
    }

    /// [`Archiver::step_partitions`] for a reader that knows whether it may
    /// hold pending entries (`pending`: at start, after a failure or a
    /// reclaim). Once a read of its own pending list comes back empty, it
    /// reads only new entries (one round trip a batch) until told again.
    pub(crate) async fn step_shard(
        &self,
        partitions: &[u16],
        pending: &mut bool,
        count: u64,
    ) -> Result<(usize, Option<i64>), ArchiveError> {
        let mut entries = Vec::new();
        if *pending {
            entries = self.read(partitions, "0", count).await?;
            *pending = !entries.is_empty();
        }
        if entries.is_empty() {
            entries = self.read(partitions, ">", count).await?;
        }
        if entries.is_empty() {
            return Ok((0, None));
        }
        // When the oldest entry was added (ms): how far behind this batch is.
        let oldest = entries
            .iter()
            .filter_map(|e| engine::streams::parse_entry_id(&e.id))
            .map(|(ms, _)| ms)
            .min();
        let _permit = self
            .permits
            .acquire()
            .await
            .expect("the semaphore is never closed");
        let started = Instant::now();
        let resting = self.write_batch(&entries, Projection::Incremental).await?;
        self.acknowledge(&entries, &resting).await?;
        metrics::counter!("lunchrush_archived_events_total").increment(entries.len() as u64);
        metrics::histogram!("lunchrush_archive_batch_seconds")
            .record(started.elapsed().as_secs_f64());
        Ok((entries.len(), oldest))
    }

    /// After COMMIT: XACKs the batch (one per stream) and indexes the orders
    /// it left at rest, all sent at once (one write on a standalone server).
    async fn acknowledge(
        &self,
        entries: &[Entry],
        resting: &[(Uuid, i64)],
    ) -> Result<(), ArchiveError> {
        let mut acks = engine::streams::Acks::default();
        for entry in entries {
            acks.push(&entry.stream, entry.id.clone());
        }
        let (acked, marked) = futures::join!(
            acks.flush(self.engine.redis(), GROUP),
            self.mark_resting(resting)
        );
        acked?;
        marked
    }

    /// One page of `partitions`' streams (`id`: `0` for this reader's
    /// pending entries, `>` for new ones), at most `count` entries a stream:
    /// one XREADGROUP on standalone Redis; on a Cluster, where each
    /// partition's streams are a slot of their own, one per partition, sent
    /// together.
    pub(crate) async fn read(
        &self,
        partitions: &[u16],
        id: &str,
        count: u64,
    ) -> Result<Vec<Entry>, ArchiveError> {
        let slots: Vec<Vec<u16>> = if self.engine.redis().is_clustered() {
            partitions.iter().map(|&p| vec![p]).collect()
        } else {
            vec![partitions.to_vec()]
        };
        let pages = slots.iter().map(|slot| {
            let streams = self.streams.of(slot);
            let ids: Vec<&str> = streams.iter().map(|_| id).collect();
            engine::saga::read_group(
                self.engine.redis(),
                GROUP,
                &self.options.consumer,
                count,
                streams,
                ids,
            )
        });
        let mut entries = Vec::new();
        for page in futures::future::join_all(pages).await {
            for (stream, values) in page? {
                for (id, fields) in values {
                    // A pending entry trimmed meanwhile comes back without fields.
                    entries.push(Entry {
                        stream: stream.clone(),
                        id,
                        fields,
                    });
                }
            }
        }
        Ok(entries)
    }

    /// Re-archives one order's events from the live streams (its entry ids
    /// are on the order) and refolds its projection. Idempotent. Returns
    /// how many of its entries were still in Redis.
    pub async fn rearchive_order(
        &self,
        order: &engine::domain::Order,
    ) -> Result<usize, ArchiveError> {
        let mut entries = Vec::new();
        for (stream, id) in &order.events {
            let found: Vec<(String, HashMap<String, String>)> = self
                .engine
                .redis()
                .xrange(stream.as_str(), id.as_str(), id.as_str(), Some(1))
                .await?;
            entries.extend(found.into_iter().map(|(id, fields)| Entry {
                stream: stream.clone(),
                id,
                fields: fields.into(),
            }));
        }
        if !entries.is_empty() {
            // Repair: the projection may be what is wrong; fold it anew.
            self.write_batch(&entries, Projection::Refold).await?;
        }
        Ok(entries.len())
    }

    /// Takes over entries other archivers left pending too long.
    pub async fn reclaim(&self, p: u16) -> Result<(), ArchiveError> {
        for stream in self.streams.names(p) {
            let _: fred::types::Value = self
                .engine
                .redis()
                .xautoclaim(
                    stream.as_str(),
                    GROUP,
                    self.options.consumer.as_str(),
                    self.options.reclaim_idle.as_millis() as u64,
                    "0-0",
                    Some(self.options.batch_size),
                    true,
                )
                .await?;
        }
        Ok(())
    }

    /// Adds the orders a committed batch left at a final pair to their
    /// partition's resting index: the retirer's candidates (`engine::retire`).
    /// Re-adding one is harmless: the retire script re-checks everything.
    pub(crate) async fn mark_resting(&self, resting: &[(Uuid, i64)]) -> Result<(), ArchiveError> {
        let keys = self.engine.keys();
        let mut by_partition: HashMap<u16, Vec<(i64, String)>> = HashMap::new();
        for (id, at) in resting {
            if let Some(p) = keys.partition_of_order(id) {
                by_partition
                    .entry(p)
                    .or_default()
                    .push((*at, id.to_string()));
            }
        }
        let adds = by_partition
            .into_iter()
            .map(|(p, orders)| self.engine.mark_resting(p, orders));
        for added in futures::future::join_all(adds).await {
            added?;
        }
        Ok(())
    }

    /// Writes one batch in one transaction (see the crate docs); returns the
    /// orders it left at a final pair, with the time they came to rest.
    pub(crate) async fn write_batch(
        &self,
        entries: &[Entry],
        projection: Projection,
    ) -> Result<Vec<(Uuid, i64)>, ArchiveError> {
        let mut events = Vec::with_capacity(entries.len());
        let mut dead = Vec::new();
        for entry in entries {
            if entry.fields.is_empty() {
                continue;
            }
            if is_dead_letter_stream(&entry.stream) {
                dead.push(entry);
                continue;
            }
            match Event::parse_ref(&entry.stream, &entry.id, &entry.fields) {
                Ok(event) => events.push(event),
                Err(error) => {
                    tracing::error!(stream = %entry.stream, id = %entry.id, %error,
                        "Malformed stream entry archived as a dead letter.");
                    dead.push(entry);
                }
            }
        }
        self.ensure_months(&events).await?;
        let mut client = self.pool.get().await?;
        let mut transaction = client.transaction().await?;
        // Each payload is parsed once, here, for every projection; the COPY
        // sends the text as written whenever it is JSON.
        let typed: Vec<Option<Payload>> = events
            .iter()
            .map(|event| match event.payload() {
                Ok(payload) => Some(payload),
                Err(error) => {
                    tracing::error!(stream = %event.stream, id = %event.id, %error,
                        "An event's data does not decode; archived as written, kept out of the history tables.");
                    None
                }
            })
            .collect();
        let documents: Vec<std::borrow::Cow<'_, str>> = events
            .iter()
            .zip(&typed)
            .map(|(event, typed)| jsonb_text(&event.data, typed.is_some()))
            .collect();
        insert_events(&mut transaction, &events, &documents).await?;
        let tx = &transaction;
        insert_dead_letters(tx, &dead).await?;
        insert_histories(tx, &events, &typed).await?;
        let resting = project_orders(tx, &events, typed, projection).await?;
        advance_watermarks(tx, entries).await?;
        transaction.commit().await?;
        Ok(resting)
    }

    /// Creates the monthly partitions the batch needs (cached per process).
    pub(crate) async fn ensure_months(&self, events: &[Event]) -> Result<(), ArchiveError> {
        let mut needed = BTreeSet::new();
        for event in events {
            let time = part_time(event);
            let days = time
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs()
                / 86_400;
            let (year, month) = civil_month(days as i64);
            needed.insert((year, month));
        }
        let missing: Vec<(i32, u32)> = {
            let known = self.months.lock().unwrap_or_else(|e| e.into_inner());
            needed.into_iter().filter(|m| !known.contains(m)).collect()
        };
        if missing.is_empty() {
            return Ok(());
        }
        let client = self.pool.get().await?;
        for (year, month) in missing {
            schema::ensure_month(&client, year, month).await?;
            self.months
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert((year, month));
        }
        Ok(())
    }
}
