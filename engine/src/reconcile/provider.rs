//! The provider's ledger against our orders: charges without an order,
//! amounts that differ, captures the provider never made, a provider ahead.

use super::*;

impl Reconciler {
    /// Records the provider's state on the order (catch-up), then drives it.
    async fn sync_and_drive(
        &self,
        order: &Order,
        provider_state: &str,
        reference: &str,
    ) -> Result<(), ReconcileError> {
        let steps = saga::catch_up(order.pay, provider_state, false);
        for step in steps {
            self.engine
                .record_payment(order, step, reference, Lane::Batch)
                .await?;
        }
        match saga::drive_payment(&self.engine, &self.psp, &order.id, Lane::Batch).await {
            Ok(()) => Ok(()),
            Err(WorkError::Psp(e)) => Err(e.into()),
            Err(WorkError::Engine(e)) => Err(e.into()),
            Err(_) => Ok(()),
        }
    }

    /// The provider's ledger against the orders: charges with no approved
    /// order, amounts that differ, captures the provider never made.
    pub async fn provider(&self, run: &mut Run<'_>) -> Result<(), ReconcileError> {
        let cutoff = now_ms() - run.options.older_than.as_millis() as i64;
        let mut after: Option<String> = None;
        let mut seen_at_provider: Vec<uuid::Uuid> = Vec::new();
        for pages in 0.. {
            if pages == PROVIDER_PAGES_MAX {
                tracing::warn!(
                    pages,
                    "Provider ledger scan stopped at its bound; the rest is left for the next run."
                );
                break;
            }
            let page = self.psp.list(after.as_deref(), PAGE).await?;
            for payment in &page.payments {
                let Ok(id) = payment.key.parse::<uuid::Uuid>() else {
                    continue;
                };
                seen_at_provider.push(id);
                let order = self.engine.order(&id).await?;
                if classify(order.as_ref(), payment, cutoff).is_none() {
                    continue;
                }
                // The listing is a snapshot: ask the provider and the order
                // again, and act only on a mismatch that still holds.
                let Some(payment) = &self.psp.lookup(&payment.key).await? else {
                    continue;
                };
                let order = self.engine.order(&id).await?;
                if order.is_none() {
                    // Not live: retired (settled and archived), or vanished.
                    match self.retired(&id).await {
                        None => continue,
                        Some(Some(retired)) => {
                            self.retired_payment(run, &retired, payment, cutoff);
                            continue;
                        }
                        Some(None) => {}
                    }
                }
                let Some((kind, action)) = classify(order.as_ref(), payment, cutoff) else {
                    continue;
                };
                let subject = id.to_string();
                let detail = format!(
                    "provider {} {}, order {}",
                    payment.state,
                    payment.amount,
                    order
                        .as_ref()
                        .map(|o| format!("{} / {} total {}", o.status, o.pay, o.total))
                        .unwrap_or_else(|| "missing".into())
                );
                if run.options.dry_run {
                    run.record(kind, subject, action, Outcome::WouldFix, detail);
                    continue;
                }
                run.pace().await;
                let result = self.fix_provider(kind, &id, order.as_ref(), payment).await;
                let outcome = match &result {
                    Ok(true) => Outcome::Fixed,
                    _ => Outcome::Unfixable,
                };
                let detail = match result {
                    Err(error) => format!("{detail}: {error}"),
                    _ => detail,
                };
                run.record(kind, subject, action, outcome, detail);
            }
            // A provider that repeats a cursor or pages on with nothing
            // would page forever.
            match page.next {
                Some(next) if !page.payments.is_empty() && Some(&next) != after.as_ref() => {
                    after = Some(next)
                }
                _ => break,
            }
        }
        self.captures_unknown_to_provider(run, &mut seen_at_provider, cutoff)
            .await
    }

    /// A retired order's payment: its pair was final and every event
    /// archived when it left; a provider that disagrees now is reported for
    /// an operator, never acted on (the order can no longer change).
    fn retired_payment(
        &self,
        run: &mut Run<'_>,
        order: &Order,
        payment: &crate::psp::ProviderPayment,
        cutoff: i64,
    ) {
        let expected = match order.pay {
            PaymentStatus::Captured => "captured",
            PaymentStatus::Refunded => "refunded",
            PaymentStatus::Voided => "voided",
            PaymentStatus::Declined => "declined",
            _ => "",
        };
        let agrees = payment.state == expected && payment.amount == order.total;
        if agrees || order.updated_ms >= cutoff {
            return;
        }
        run.record(
            "retired_order_mismatch",
            order.id.to_string(),
            "none (retired: resolve at the provider)",
            Outcome::Unfixable,
            format!(
                "provider {} {}, archived order {} / {} total {}",
                payment.state, payment.amount, order.status, order.pay, order.total
            ),
        );
    }

    async fn fix_provider(
        &self,
        kind: &str,
        id: &uuid::Uuid,
        order: Option<&Order>,
        payment: &crate::psp::ProviderPayment,
    ) -> Result<bool, ReconcileError> {
        let key = id.to_string();
        match (kind, order) {
            ("charge_without_order", _) => {
                let after = if payment.state == "captured" {
                    self.psp.refund(&key).await?
                } else {
                    self.psp.void(&key).await?
                };
                Ok(matches!(after.state.as_str(), "voided" | "refunded"))
            }
            ("amount_mismatch", Some(order)) => {
                self.engine
                    .cancel(order, Actor::Admin, None, Lane::Batch)
                    .await?;
                let order = self
                    .engine
                    .order(id)
                    .await?
                    .unwrap_or_else(|| order.clone());
                self.sync_and_drive(&order, &payment.state, &payment.reference)
                    .await?;
                Ok(self.engine.order(id).await?.as_ref().is_some_and(settled))
            }
            ("charge_on_rejected_order" | "provider_ahead", Some(order)) => {
                self.sync_and_drive(order, &payment.state, &payment.reference)
                    .await?;
                Ok(self.engine.order(id).await?.as_ref().is_some_and(settled))
            }
            ("captured_without_charge", Some(order)) => {
                if payment.state == "authorized" {
                    self.psp.void(&key).await?;
                }
                self.engine
                    .record_payment(
                        order,
                        PaymentOutcome::Corrected,
                        &payment.reference,
                        Lane::Batch,
                    )
                    .await?;
                Ok(self.engine.order(id).await?.as_ref().is_some_and(settled))
            }
            _ => Ok(false),
        }
    }

    /// Orders recorded CAPTURED (longer than the cutoff) of which the
    /// provider has no payment at all. Memory: 16 bytes per provider payment
    /// seen, sorted once.
    async fn captures_unknown_to_provider(
        &self,
        run: &mut Run<'_>,
        seen: &mut [uuid::Uuid],
        cutoff: i64,
    ) -> Result<(), ReconcileError> {
        seen.sort_unstable();
        for p in 0..self.engine.keys().partitions() {
            let mut candidates = Vec::new();
            self.engine
                .for_each_order(p, |order| {
                    if order.pay == PaymentStatus::Captured
                        && order.updated_ms < cutoff
                        && seen.binary_search(&order.id).is_err()
                    {
                        candidates.push(order);
                    }
                })
                .await?;
            for order in candidates {
                // The listing may have raced a new payment: ask directly.
                if self.psp.lookup(&order.id.to_string()).await?.is_some() {
                    continue;
                }
                let subject = order.id.to_string();
                let detail = format!(
                    "order {} / {} total {}, provider: no payment",
                    order.status, order.pay, order.total
                );
                if run.options.dry_run {
                    run.record(
                        "captured_without_charge",
                        subject,
                        "correct and compensate",
                        Outcome::WouldFix,
                        detail,
                    );
                    continue;
                }
                run.pace().await;
                self.engine
                    .record_payment(&order, PaymentOutcome::Corrected, "", Lane::Batch)
                    .await?;
                let fixed = self
                    .engine
                    .order(&order.id)
                    .await?
                    .as_ref()
                    .is_some_and(settled);
                let outcome = if fixed {
                    Outcome::Fixed
                } else {
                    Outcome::Unfixable
                };
                run.record(
                    "captured_without_charge",
                    subject,
                    "correct and compensate",
                    outcome,
                    detail,
                );
            }
        }
        Ok(())
    }
}

/// The orphan kind of a provider payment and its order, if any. Orders that
/// changed after `cutoff` are left alone: their saga may still be running.
fn classify(
    order: Option<&Order>,
    payment: &crate::psp::ProviderPayment,
    cutoff: i64,
) -> Option<(&'static str, &'static str)> {
    let charged = matches!(payment.state.as_str(), "authorized" | "captured");
    let compensation = if payment.state == "captured" {
        "refund"
    } else {
        "void"
    };
    match order {
        None if charged => Some(("charge_without_order", compensation)),
        None => None,
        Some(o) if o.updated_ms >= cutoff => None,
        Some(o) if charged && o.total != payment.amount && o.status != OrderStatus::Rejected => {
            Some(("amount_mismatch", "cancel and compensate"))
        }
        Some(o) if charged && o.status == OrderStatus::Rejected => {
            Some(("charge_on_rejected_order", compensation))
        }
        Some(o)
            if o.pay == PaymentStatus::Captured
                && payment.state != "captured"
                && payment.state != "refunded" =>
        {
            Some(("captured_without_charge", "correct and compensate"))
        }
        Some(o) if provider_ahead(o.pay, &payment.state) => {
            Some(("provider_ahead", "record the provider's state"))
        }
        _ => None,
    }
}

/// Whether the provider's state is ahead of what the order records.
fn provider_ahead(pay: PaymentStatus, provider: &str) -> bool {
    !saga::catch_up(pay, provider, false).is_empty()
}
