//! One consumer of one group: reads, reclaims, hands entries to the
//! handlers, acknowledges, and gives poison up to the operator queues.

use super::*;
use crate::entries::Fields;
use crate::streams::{Acks, PartitionStreams};

/// One consumer of one group.
pub struct Worker {
    engine: Engine,
    psp: PspClient,
    notifier: std::sync::Arc<dyn crate::notify::Notifier>,
    role: Role,
    options: WorkerOptions,
    /// Per (partition, topic): the XAUTOCLAIM cursor.
    cursors: HashMap<(u16, Topic), String>,
    /// The streams of the role's topics, per partition.
    streams: PartitionStreams,
}

/// An XAUTOCLAIM answer: the next cursor and the entries claimed.
type Claimed = (String, Vec<XReadValue<String, String, String>>);

/// What one round of a worker did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Round {
    pub handled: usize,
    pub failed: usize,
    pub dead: usize,
    /// Left waiting for the provider's circuit to close.
    pub deferred: usize,
    /// Left waiting because Redis refused a write (`OOM`, `MISCONF`,
    /// `READONLY`): the worker backs off.
    pub refused: usize,
}

impl Worker {
    pub fn new(
        engine: Engine,
        psp: PspClient,
        notifier: std::sync::Arc<dyn crate::notify::Notifier>,
        role: Role,
        options: WorkerOptions,
    ) -> Self {
        let streams = PartitionStreams::new(engine.keys(), role.topics());
        Self {
            engine,
            psp,
            notifier,
            role,
            options,
            cursors: HashMap::new(),
            streams,
        }
    }

    /// Runs until `shutdown` turns true.
    pub async fn run(mut self, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        ensure_groups(&self.engine, &[(self.role.group(), self.role.topics())])
            .await
            .unwrap_or_else(|e| tracing::error!(error = %e, "Cannot create consumer groups."));
        if self.role == Role::Payment {
            drop_retired_groups(&self.engine)
                .await
                .unwrap_or_else(|e| tracing::error!(error = %e, "Cannot drop retired groups."));
        }
        let mut idle = Duration::from_millis(1);
        let mut refused_nap = Duration::ZERO;
        let mut last_reclaim = Instant::now();
        let engine = self.engine.clone();
        // Acks are held up to `ack_window` and sent together.
        let mut acks = Acks::default();
        let mut reads = Reads::new(engine.redis().is_clustered());
        while !*shutdown.borrow() {
            self.flush_acks(&mut acks, false).await;
            // While the provider's circuit is open, a role that calls it
            // reads nothing: its events wait where they are.
            if let Some(wait) = self.circuit_wait() {
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = shutdown.changed() => {}
                }
                continue;
            }
            // Registered before the read: an event emitted meanwhile wakes us.
            let local = engine.local_event(self.role.wake());
            tokio::pin!(local);
            local.as_mut().enable();
            let round = if last_reclaim.elapsed() >= self.options.reclaim_every {
                last_reclaim = Instant::now();
                self.reclaim_into(&mut acks).await
            } else {
                let woken = engine.take_woken(self.role.wake());
                let only = reads.next(woken, self.options.idle_poll_max);
                self.read_into(&mut acks, only.as_deref())
                    .await
                    .map(|(round, found)| {
                        reads.busy = found;
                        round
                    })
            };
            match round {
                // Redis refuses writes: back off (doubling up to the cap)
                // instead of spinning on events it cannot take; the next
                // round without a refusal resets it.
                Ok(r) if r.refused > 0 => {
                    refused_nap = (refused_nap * 2).clamp(REFUSED_NAP_MIN, REFUSED_NAP_MAX);
                    tracing::warn!(role = self.role.group(), refused = r.refused, nap = ?refused_nap,
                        "Redis refuses writes; backing off.");
                    tokio::select! {
                        _ = tokio::time::sleep(refused_nap) => {}
                        _ = shutdown.changed() => {}
                    }
                    continue;
                }
                Ok(r) if r.handled + r.failed + r.dead > 0 => {
                    refused_nap = Duration::ZERO;
                    idle = Duration::from_millis(1);
                    continue;
                }
                Ok(_) => {}
                Err(error) => {
                    tracing::warn!(role = self.role.group(), %error, "Worker round failed; backing off.");
                    idle = self.options.idle_poll_max;
                }
            }
            let until = acks.deadline(self.options.ack_window);
            let nap = until.map_or(idle, |at| {
                idle.min(at.saturating_duration_since(Instant::now()))
            });
            tokio::select! {
                _ = tokio::time::sleep(nap) => {}
                _ = &mut local => {}
                _ = shutdown.changed() => {}
            }
            idle = (idle * 2).min(self.options.idle_poll_max);
        }
        self.flush_acks(&mut acks, true).await;
    }

    /// Sends the acks held once the oldest waited `ack_window` or a batch's
    /// worth is held (or now, with `now`).
    async fn flush_acks(&self, acks: &mut Acks, now: bool) {
        let due = acks
            .deadline(self.options.ack_window)
            .is_some_and(|at| at <= Instant::now());
        if acks.is_empty() || !(now || due || acks.len() as u64 >= self.options.batch_size) {
            return;
        }
        if let Err(error) = acks.flush(self.engine.redis(), self.role.group()).await {
            tracing::warn!(role = self.role.group(), %error,
                "Acknowledgements failed; the entries stay pending and are taken again.");
        }
    }

    /// A stream lost with its group (Redis lost a tail, a key was deleted)
    /// fails every read of that partition while the others go on: recreate
    /// the groups as soon as one says NOGROUP.
    async fn recreate_lost_groups(&self, failure: Option<&fred::error::Error>) {
        if !failure.is_some_and(|e| e.to_string().contains("NOGROUP")) {
            return;
        }
        let roles = [(self.role.group(), self.role.topics())];
        if let Err(error) = ensure_groups(&self.engine, &roles).await {
            tracing::error!(%error, "Cannot recreate consumer groups.");
        }
    }

    /// How long to wait before a round, when this role calls the provider
    /// and its circuit lets nothing out yet.
    fn circuit_wait(&self) -> Option<Duration> {
        if !matches!(self.role, Role::Payment | Role::Batch) {
            return None;
        }
        let breaker = self.psp.breaker();
        if breaker.state() != crate::breaker::BreakerState::Open {
            return None;
        }
        let wait = breaker.retry_in()?;
        (!wait.is_zero()).then(|| wait.min(CIRCUIT_NAP_MAX))
    }

    /// Reads new entries from every partition once, handles them and
    /// acknowledges the finished ones.
    pub async fn read_round(&self) -> Result<Round, EngineError> {
        let mut acks = Acks::default();
        let round = self.read_into(&mut acks, None).await;
        acks.flush(self.engine.redis(), self.role.group()).await?;
        round.map(|(round, _)| round)
    }

    /// [`Worker::read_round`] leaving the acks in `acks`; also the
    /// partitions that delivered entries. On standalone Redis one XREADGROUP
    /// covers every partition; on a Cluster each partition (its own slot) is
    /// read on its own, concurrently: every one, or those in `only`.
    async fn read_into(
        &self,
        acks: &mut Acks,
        only: Option<&[u16]>,
    ) -> Result<(Round, Vec<u16>), EngineError> {
        let keys = self.engine.keys();
        let this = self;
        let shards: Vec<Vec<u16>> = if self.engine.redis().is_clustered() {
            match only {
                Some(partitions) => partitions.iter().map(|&p| vec![p]).collect(),
                None => (0..keys.partitions()).map(|p| vec![p]).collect(),
            }
        } else {
            vec![(0..keys.partitions()).collect()]
        };
        let reads = shards.into_iter().map(|partitions| {
            let streams = self.streams.of(&partitions);
            let ids: Vec<&str> = streams.iter().map(|_| ">").collect();
            async move {
                read_group(
                    this.engine.redis(),
                    this.role.group(),
                    &this.options.consumer,
                    this.options.batch_size,
                    streams,
                    ids,
                )
                .await
            }
        });
        let pages = futures::future::join_all(reads).await;
        let mut entries = Vec::new();
        let mut failure = None;
        let mut found = Vec::new();
        for page in pages {
            // One partition failing must not drop what the others delivered.
            match page {
                Ok(page) => {
                    for (stream, values) in page {
                        if !values.is_empty() {
                            found.extend(partition_of_stream(keys.prefix(), &stream));
                        }
                        for (id, fields) in values {
                            entries.push((stream.clone(), id, fields, 1));
                        }
                    }
                }
                Err(error) => failure = Some(error),
            }
        }
        let round = self.handle(entries, acks).await?;
        self.recreate_lost_groups(failure.as_ref()).await;
        match failure {
            Some(error) if round.handled + round.failed + round.dead == 0 => Err(error.into()),
            Some(error) => {
                tracing::warn!(role = self.role.group(), %error, "A partition's read failed this round.");
                Ok((round, found))
            }
            None => Ok((round, found)),
        }
    }

    /// Takes over entries idle longer than `reclaim_idle` on every
    /// partition, handles them and acknowledges the finished ones.
    pub async fn reclaim_round(&mut self) -> Result<Round, EngineError> {
        let mut acks = Acks::default();
        let round = self.reclaim_into(&mut acks).await;
        acks.flush(self.engine.redis(), self.role.group()).await?;
        round
    }

    /// [`Worker::reclaim_round`] leaving the acks in `acks`.
    async fn reclaim_into(&mut self, acks: &mut Acks) -> Result<Round, EngineError> {
        let keys = self.engine.keys().clone();
        let mut total = Round::default();
        let mut failure = None;
        for p in 0..keys.partitions() {
            for topic in self.role.topics() {
                let stream = keys.stream(p, *topic);
                let cursor = self
                    .cursors
                    .get(&(p, *topic))
                    .cloned()
                    .unwrap_or_else(|| "0-0".into());
                let claimed: Result<Claimed, _> = self
                    .engine
                    .redis()
                    .xautoclaim_values(
                        stream.as_str(),
                        self.role.group(),
                        self.options.consumer.as_str(),
                        self.options.reclaim_idle.as_millis() as u64,
                        cursor.as_str(),
                        Some(self.options.batch_size),
                        false,
                    )
                    .await;
                // One stream failing (say its group is gone) must not stop
                // the reclaim of the others.
                let (next, values) = match claimed {
                    Ok(claimed) => claimed,
                    Err(error) => {
                        tracing::warn!(%stream, %error, "Reclaim of a stream failed.");
                        failure = Some(error);
                        continue;
                    }
                };
                self.cursors.insert((p, *topic), next);
                if values.is_empty() {
                    continue;
                }
                metrics::counter!("lunchrush_entries_reclaimed_total", "group" => self.role.group())
                    .increment(values.len() as u64);
                let deliveries = self.deliveries(&stream, &values).await?;
                let entries = values
                    .into_iter()
                    .map(|(id, fields)| {
                        let count = deliveries.get(&id).copied().unwrap_or(1);
                        (stream.clone(), id, Fields::from(fields), count)
                    })
                    .collect();
                let round = self.handle(entries, acks).await?;
                total.handled += round.handled;
                total.failed += round.failed;
                total.dead += round.dead;
                total.deferred += round.deferred;
            }
        }
        self.recreate_lost_groups(failure.as_ref()).await;
        match failure {
            Some(error) if total.handled + total.failed + total.dead == 0 => Err(error.into()),
            _ => Ok(total),
        }
    }

    /// Delivery counts of `values` (XPENDING over their id range).
    async fn deliveries(
        &self,
        stream: &str,
        values: &[XReadValue<String, String, String>],
    ) -> Result<HashMap<String, u64>, EngineError> {
        let (first, last) = (&values[0].0, &values[values.len() - 1].0);
        let group = self.role.group();
        let count = values.len() as u64;
        let redis = self.engine.redis();
        let pending =
            crate::streams::pending_between(redis, stream, group, first, last, count).await?;
        Ok(pending.into_iter().map(|p| (p.id, p.deliveries)).collect())
    }

    /// Handles entries concurrently; the finished ones go to `acks`.
    async fn handle(
        &self,
        entries: Vec<(String, String, Fields, u64)>,
        acks: &mut Acks,
    ) -> Result<Round, EngineError> {
        if entries.is_empty() {
            return Ok(Round::default());
        }
        let results: Vec<(String, String, Disposition)> = futures::stream::iter(entries)
            .map(|(stream, id, fields, deliveries)| async move {
                let disposition = self.handle_one(&stream, &id, fields, deliveries).await;
                (stream, id, disposition)
            })
            .buffer_unordered(self.options.concurrency)
            .collect()
            .await;
        let mut round = Round::default();
        for (stream, id, disposition) in results {
            match disposition {
                Disposition::Done => round.handled += 1,
                Disposition::Retry => {
                    round.failed += 1;
                    continue;
                }
                Disposition::Deferred(deliveries) | Disposition::Refused(deliveries) => {
                    if matches!(disposition, Disposition::Refused(_)) {
                        round.refused += 1;
                        metrics::counter!("lunchrush_store_refused_total", "group" => self.role.group())
                            .increment(1);
                    } else {
                        round.deferred += 1;
                        metrics::counter!("lunchrush_psp_deferred_total").increment(1);
                    }
                    // Failing to undo the delivery costs one count towards
                    // the dead letters, never the acks of the others.
                    if let Err(error) = self.defer(&stream, &id, deliveries).await {
                        tracing::warn!(%stream, %id, %error, "Could not undo a deferred delivery.");
                    }
                    continue;
                }
                Disposition::Dead => round.dead += 1,
            }
            acks.push(&stream, id);
        }
        Ok(round)
    }

    /// Leaves an entry pending with the delivery it just had undone
    /// (`RETRYCOUNT`), and idle long enough that the next reclaim round,
    /// here or in any process, takes it again once the circuit closes.
    async fn defer(&self, stream: &str, id: &str, deliveries: u64) -> Result<(), EngineError> {
        let idle = self.options.reclaim_idle.as_millis() as u64;
        let _: Value = self
            .engine
            .redis()
            .xclaim(
                stream,
                self.role.group(),
                self.options.consumer.as_str(),
                0,
                id,
                Some(idle),
                None,
                Some(deliveries.saturating_sub(1)),
                false,
                true,
            )
            .await?;
        Ok(())
    }

    async fn handle_one(
        &self,
        stream: &str,
        id: &str,
        fields: Fields,
        deliveries: u64,
    ) -> Disposition {
        let event = match Event::parse_ref(stream, id, &fields) {
            Ok(event) => event,
            Err(error) => {
                return self
                    .give_up(stream, id, &fields, &error.to_string(), None, deliveries)
                    .await;
            }
        };
        let result = self.dispatch(&event, deliveries == 1).await;
        match result {
            Ok(()) => Disposition::Done,
            Err(WorkError::Psp(PspError::CircuitOpen { .. })) => Disposition::Deferred(deliveries),
            Err(WorkError::Engine(error)) if error.refused_write().is_some() => {
                tracing::debug!(group = self.role.group(), order = %event.order, %error,
                    "Redis refused the handler's write; the event waits.");
                Disposition::Refused(deliveries)
            }
            Err(error) if deliveries >= self.options.deliveries_max => {
                let action = match event.order_id() {
                    Some(order_id) if self.role != Role::Order => {
                        match self.engine.order(&order_id).await {
                            Ok(Some(order)) => payment_action(&order),
                            _ => None,
                        }
                    }
                    _ => None,
                };
                self.give_up(stream, id, &fields, &error.to_string(), action, deliveries)
                    .await
            }
            Err(error) => {
                tracing::warn!(group = self.role.group(), order = %event.order, kind = %event.kind,
                    %error, deliveries, "Event not handled; it stays pending for a retry.");
                Disposition::Retry
            }
        }
    }

    async fn dispatch(&self, event: &Event, first: bool) -> Result<(), WorkError> {
        let lane = if self.role == Role::Batch {
            Lane::Batch
        } else {
            Lane::Online
        };
        let notifier = self.notifier.as_ref();
        handle_event(
            &self.engine,
            &self.psp,
            notifier,
            self.role,
            event,
            first,
            lane,
        )
        .await
    }

    /// Moves a poison entry to the dead-letter stream (or a failing
    /// compensation to the operator queue) and lets it be acknowledged.
    async fn give_up(
        &self,
        stream: &str,
        id: &str,
        fields: &Fields,
        reason: &str,
        action: Option<PaymentAction>,
        deliveries: u64,
    ) -> Disposition {
        let Some(p) = partition_of_stream(self.engine.keys().prefix(), stream) else {
            return Disposition::Retry;
        };
        let parked = action.is_some_and(PaymentAction::is_compensation);
        let target = self
            .engine
            .keys()
            .stream(p, if parked { Topic::Parked } else { Topic::Dead });
        let mut entry: Vec<(String, String)> = vec![
            ("source".into(), stream.into()),
            ("source_id".into(), id.into()),
            ("group".into(), self.role.group().into()),
            ("reason".into(), reason.into()),
            ("deliveries".into(), deliveries.to_string()),
        ];
        if let Some(action) = action {
            entry.push(("action".into(), action.as_str().into()));
        }
        entry.extend(fields.iter().map(|(k, v)| (format!("f.{k}"), v.to_owned())));
        let added: Result<String, _> = self
            .engine
            .redis()
            .xadd(target.as_str(), false, None, "*", entry)
            .await;
        match added {
            Ok(_) => {
                let kind = if parked { "parked" } else { "dead" };
                metrics::counter!("lunchrush_dead_letters_total", "group" => self.role.group(), "kind" => kind)
                    .increment(1);
                tracing::error!(
                    group = self.role.group(),
                    stream,
                    id,
                    reason,
                    kind,
                    "Entry given up after repeated failures."
                );
                Disposition::Dead
            }
            Err(_) => Disposition::Retry,
        }
    }
}

/// A worker whose writes Redis refuses waits this long after the first
/// such round, doubling up to [`REFUSED_NAP_MAX`].
const REFUSED_NAP_MIN: Duration = Duration::from_millis(50);
const REFUSED_NAP_MAX: Duration = Duration::from_secs(5);

/// Which partitions a worker's next read round covers. On a Cluster each
/// partition is its own read: between full sweeps (at most `every` apart) a
/// round reads only the partitions this process woke the role for and those
/// the last round found busy. On standalone Redis one read covers them all.
struct Reads {
    clustered: bool,
    sweep_at: Instant,
    /// The partitions that delivered entries in the last round.
    busy: Vec<u16>,
}

impl Reads {
    fn new(clustered: bool) -> Self {
        Self {
            clustered,
            sweep_at: Instant::now(),
            busy: Vec::new(),
        }
    }

    /// The partitions to read (`None`: every one), given those `woken`.
    fn next(&mut self, mut woken: Vec<u16>, every: Duration) -> Option<Vec<u16>> {
        if !self.clustered || Instant::now() >= self.sweep_at {
            self.sweep_at = Instant::now() + every;
            return None;
        }
        woken.append(&mut self.busy);
        woken.sort_unstable();
        woken.dedup();
        Some(woken)
    }
}

enum Disposition {
    Done,
    Retry,
    Dead,
    /// The provider's circuit is open: nothing was tried. The entry waits
    /// without this delivery counting towards `deliveries_max`.
    Deferred(u64),
    /// Redis refused a write of the handler: nothing of it happened (each
    /// script is atomic). Like `Deferred`, the delivery does not count.
    Refused(u64),
}
