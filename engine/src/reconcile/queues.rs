//! The streams' leftovers: entries of dead consumers, idle consumers,
//! parked compensations and dead letters.

use super::*;

impl Reconciler {
    /// Kind `dead_consumer_pending`: entries pending longer than
    /// `older_than` in any group are claimed and handled by that group's own
    /// handler (which is idempotent).
    pub async fn dead_consumer_pending(
        &self,
        run: &mut Run<'_>,
        notifier: std::sync::Arc<dyn crate::notify::Notifier>,
    ) -> Result<(), ReconcileError> {
        for role in Role::ALL {
            let mut idle = 0u64;
            for p in 0..self.engine.keys().partitions() {
                for topic in role.topics() {
                    let stream = self.engine.keys().stream(p, *topic);
                    let pending = crate::streams::pending_idle(
                        self.engine.redis(),
                        &stream,
                        role.group(),
                        run.options.older_than,
                        1_000,
                    )
                    .await
                    .unwrap_or_default();
                    idle += pending.len() as u64;
                }
            }
            if idle == 0 {
                continue;
            }
            let subject = format!("group {}", role.group());
            if run.options.dry_run {
                run.record(
                    "dead_consumer_pending",
                    subject,
                    &format!("claim {idle} entries"),
                    Outcome::WouldFix,
                    String::new(),
                );
                continue;
            }
            let mut options = saga::WorkerOptions::new(run.options.consumer.clone());
            options.reclaim_idle = run.options.older_than;
            options.concurrency = 8;
            let mut worker = saga::Worker::new(
                self.engine.clone(),
                self.psp.clone(),
                notifier.clone(),
                role,
                options,
            );
            let (mut handled, mut failed) = (0, 0);
            for _ in 0..100 {
                run.pace().await;
                let round = worker.reclaim_round().await?;
                handled += round.handled + round.dead;
                failed += round.failed;
                if round.handled + round.dead + round.failed == 0 {
                    break;
                }
            }
            let outcome = if failed == 0 {
                Outcome::Fixed
            } else {
                Outcome::Unfixable
            };
            run.record(
                "dead_consumer_pending",
                subject,
                &format!("claimed {idle} entries"),
                outcome,
                format!("{handled} handled, {failed} still failing"),
            );
        }
        Ok(())
    }

    /// Kind `idle_consumer`: consumers with nothing pending and idle longer
    /// than [`CONSUMER_IDLE_MAX`] are deleted from their group (every process
    /// start adds a consumer name; without this the groups only grow).
    pub async fn idle_consumers(&self, run: &mut Run<'_>) -> Result<(), ReconcileError> {
        let keys = self.engine.keys();
        let idle_max = CONSUMER_IDLE_MAX.as_millis() as u64;
        for p in 0..keys.partitions() {
            for topic in crate::keys::Topic::ALL {
                let stream = keys.stream(p, topic);
                let redis = self.engine.redis();
                let groups = crate::streams::group_infos(redis, &stream)
                    .await
                    .unwrap_or_default();
                for group in groups {
                    let group = group.name;
                    let consumers = crate::streams::consumer_infos(redis, &stream, &group)
                        .await
                        .unwrap_or_default();
                    for consumer in consumers {
                        let (name, idle) = (consumer.name, consumer.idle_ms);
                        if consumer.pending > 0 {
                            continue;
                        }
                        if idle < idle_max {
                            continue;
                        }
                        let subject = format!("{stream} {group} {name}");
                        if run.options.dry_run {
                            run.record(
                                "idle_consumer",
                                subject,
                                "delete",
                                Outcome::WouldFix,
                                String::new(),
                            );
                            continue;
                        }
                        // DELCONSUMER would drop entries pending meanwhile:
                        // only if the consumer still has none.
                        let _: fred::types::Value = self
                            .engine
                            .redis()
                            .custom(
                                fred::cmd!("XGROUP"),
                                vec![
                                    "DELCONSUMER".to_string(),
                                    stream.clone(),
                                    group.clone(),
                                    name,
                                ],
                            )
                            .await?;
                        run.record(
                            "idle_consumer",
                            subject,
                            "delete",
                            Outcome::Fixed,
                            format!("idle {} s, nothing pending", idle / 1_000),
                        );
                    }
                }
            }
        }
        Ok(())
    }

    /// Kind `parked_compensation`: the operator queue, retried.
    pub async fn parked(&self, run: &mut Run<'_>, group: &str) -> Result<(), ReconcileError> {
        for p in 0..self.engine.keys().partitions() {
            let stream = self.engine.keys().stream(p, Topic::Parked);
            for id in ["0", ">"] {
                for (entry_id, fields) in self.parked_page(&stream, group, run, id).await {
                    self.retry_parked(run, &stream, group, &entry_id, &fields)
                        .await?;
                }
            }
        }
        Ok(())
    }

    /// A page of the parked queue: with `0`, every pending entry whoever
    /// holds it (an earlier run, the operations console), taken over by this
    /// run; with `>`, entries nobody read yet.
    async fn parked_page(
        &self,
        stream: &str,
        group: &str,
        run: &Run<'_>,
        id: &str,
    ) -> Vec<(String, HashMap<String, String>)> {
        let consumer = run.options.consumer.as_str();
        if id == "0" {
            let claimed: Result<Claimed, _> = self
                .engine
                .redis()
                .xautoclaim_values(stream, group, consumer, 0, "0-0", Some(PAGE as u64), false)
                .await;
            return claimed.map(|(_, entries)| entries).unwrap_or_default();
        }
        let streams = vec![stream.to_string()];
        saga::read_group(
            self.engine.redis(),
            group,
            consumer,
            PAGE as u64,
            streams,
            vec![id],
        )
        .await
        .unwrap_or_default()
        .into_iter()
        .flat_map(|(_, entries)| entries)
        .map(|(id, fields)| (id, fields.to_map()))
        .collect()
    }

    /// Settles a parked compensation's order; acknowledged once settled.
    async fn retry_parked(
        &self,
        run: &mut Run<'_>,
        stream: &str,
        group: &str,
        entry_id: &str,
        fields: &HashMap<String, String>,
    ) -> Result<(), ReconcileError> {
        let order = fields
            .get("f.order")
            .and_then(|o| o.parse::<uuid::Uuid>().ok());
        let subject = order.map_or_else(|| entry_id.to_string(), |o| o.to_string());
        let detail = fields.get("reason").cloned().unwrap_or_default();
        let action = fields
            .get("action")
            .cloned()
            .unwrap_or_else(|| "retry".into());
        if run.options.dry_run {
            run.record(
                "parked_compensation",
                subject,
                &action,
                Outcome::WouldFix,
                detail,
            );
            return Ok(());
        }
        run.pace().await;
        let fixed = match order {
            Some(order) => self
                .settle(&order)
                .await
                .ok()
                .and_then(|(o, _)| o)
                .is_none_or(|o| settled(&o)),
            None => true,
        };
        if fixed {
            let _: i64 = self.engine.redis().xack(stream, group, entry_id).await?;
        }
        let outcome = if fixed {
            Outcome::Fixed
        } else {
            Outcome::Unfixable
        };
        run.record("parked_compensation", subject, &action, outcome, detail);
        Ok(())
    }

    /// Kind `dead_letter`: reported with their reasons (they are archived
    /// into `dead_letters`; fixing a poison event is an operator's call).
    pub async fn dead_letters(&self, run: &mut Run<'_>) -> Result<(), ReconcileError> {
        for p in 0..self.engine.keys().partitions() {
            let stream = self.engine.keys().stream(p, Topic::Dead);
            let entries: Vec<(String, HashMap<String, String>)> = self
                .engine
                .redis()
                .xrevrange(
                    stream.as_str(),
                    "+",
                    "-",
                    Some(DEAD_LETTERS_LISTED_MAX as u64),
                )
                .await?;
            for (id, fields) in entries {
                let subject = format!(
                    "{}:{}",
                    fields.get("source").cloned().unwrap_or_default(),
                    fields.get("source_id").cloned().unwrap_or(id)
                );
                let detail = format!(
                    "group {}: {}",
                    fields.get("group").cloned().unwrap_or_default(),
                    fields.get("reason").cloned().unwrap_or_default()
                );
                run.record("dead_letter", subject, "report", Outcome::Reported, detail);
            }
        }
        Ok(())
    }
}
