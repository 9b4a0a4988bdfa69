//! The Redis key schema. Every key of a partition carries the hash tag
//! `{p<N>}`, so every key one Lua script touches lies in one cluster slot.
//!
//! ```text
//! <prefix>{pN}:restaurants                set of restaurant ids in partition N
//! <prefix>{pN}:r:<rid>                    hash: name open auto mseq
//! <prefix>{pN}:r:<rid>:items              set of item ids
//! <prefix>{pN}:r:<rid>:i:<item>           hash: name price stock supplied sv available max_pc
//! <prefix>{pN}:r:<rid>:i:<item>:pc        hash: customer -> units held (max_per_customer items)
//! <prefix>{pN}:r:<rid>:i:<item>:pcr       hash: customer -> counted units of retired orders
//! <prefix>{pN}:o:<order>                  hash: the order (see lua/includes/common.lua)
//! <prefix>{pN}:idem:<customer>:<key>      string: the first answer to an Idempotency-Key (where the guard cannot hold it)
//! <prefix>{pN}:idemg:<customer>:<key>     string: guard in the customer's partition (the first answer, or the fingerprint)
//! <prefix>{pN}:inflight                   zset: unsettled orders by last change (ms)
//! <prefix>{pN}:resting                    zset: archived orders at a final pair, by rest time (ms)
//! <prefix>{pN}:wheel                      zset: delayed tasks '<kind>|<order>' by due time (ms)
//! <prefix>{pN}:<topic>                    stream: orders payments restaurant menu timers batch dead parked
//! ```
//!
//! A restaurant's partition is a stable hash of its id; an order's partition
//! is written into its id (see [`crate::ids`]), so any process finds any
//! order without a lookup.

use crate::ids;

/// The streams of one partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Topic {
    /// OrderPlaced, OrderApproved, OrderRejected, OrderDispatched, OrderConfirmed.
    Orders,
    /// PaymentAuthorized, PaymentDeclined, PaymentCaptured, PaymentVoided, PaymentRefunded.
    Payments,
    /// RestaurantApproved, RestaurantRejected.
    Restaurant,
    /// RestaurantUpserted, MenuItemUpserted.
    Menu,
    /// TimerFired: delayed tasks that fell due, claimed from the wheel.
    Timers,
    /// Every event produced by batch work (reconciliation, bulk imports):
    /// the batch lane never shares a stream with the online path.
    Batch,
    /// Poison entries, with the reason they could not be processed.
    Dead,
    /// Compensations (void/refund) that kept failing: the operator queue.
    Parked,
}

impl Topic {
    /// Every topic, in a fixed order.
    pub const ALL: [Topic; 8] = [
        Topic::Orders,
        Topic::Payments,
        Topic::Restaurant,
        Topic::Menu,
        Topic::Timers,
        Topic::Batch,
        Topic::Dead,
        Topic::Parked,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Topic::Orders => "orders",
            Topic::Payments => "payments",
            Topic::Restaurant => "restaurant",
            Topic::Menu => "menu",
            Topic::Timers => "timers",
            Topic::Batch => "batch",
            Topic::Dead => "dead",
            Topic::Parked => "parked",
        }
    }
}

/// Which lane a transition's events go to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Lane {
    /// The online topics (orders, payments, restaurant, menu).
    #[default]
    Online,
    /// The partition's batch stream.
    Batch,
}

/// Key names for one deployment (prefix and partition count).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySpace {
    prefix: String,
    partitions: u16,
    /// `<prefix>{pN}` of every partition, formatted once: every key name
    /// starts with one.
    bases: std::sync::Arc<[String]>,
}

impl KeySpace {
    pub fn new(prefix: &str, partitions: u16) -> Self {
        assert!(partitions >= 1, "at least one partition");
        Self {
            prefix: prefix.to_string(),
            partitions,
            bases: (0..partitions)
                .map(|p| format!("{prefix}{{p{p}}}"))
                .collect(),
        }
    }

    pub fn partitions(&self) -> u16 {
        self.partitions
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The partition of a restaurant: FNV-1a of its id, modulo the count.
    /// Stable across processes, versions and platforms.
    pub fn partition_of_restaurant(&self, restaurant: &str) -> u16 {
        (fnv1a(restaurant.as_bytes()) % u64::from(self.partitions)) as u16
    }

    /// The partition holding a customer's idempotency guards.
    pub fn partition_of_customer(&self, customer: &str) -> u16 {
        (fnv1a(customer.as_bytes()) % u64::from(self.partitions)) as u16
    }

    /// The partition written into an order id, if the id is one of ours.
    pub fn partition_of_order(&self, order: &uuid::Uuid) -> Option<u16> {
        ids::partition_of(order).filter(|&p| p < self.partitions)
    }

    fn base(&self, partition: u16) -> std::borrow::Cow<'_, str> {
        debug_assert!(partition < self.partitions);
        match self.bases.get(usize::from(partition)) {
            Some(base) => std::borrow::Cow::Borrowed(base),
            None => std::borrow::Cow::Owned(format!("{}{{p{partition}}}", self.prefix)),
        }
    }

    pub fn restaurants(&self, p: u16) -> String {
        format!("{}:restaurants", self.base(p))
    }

    pub fn restaurant(&self, p: u16, restaurant: &str) -> String {
        format!("{}:r:{restaurant}", self.base(p))
    }

    pub fn items(&self, p: u16, restaurant: &str) -> String {
        format!("{}:r:{restaurant}:items", self.base(p))
    }

    pub fn item(&self, p: u16, restaurant: &str, item: &str) -> String {
        format!("{}:r:{restaurant}:i:{item}", self.base(p))
    }

    pub fn item_per_customer(&self, p: u16, restaurant: &str, item: &str) -> String {
        format!("{}:r:{restaurant}:i:{item}:pc", self.base(p))
    }

    /// Counted units of the item's retired orders, per customer: with the
    /// live orders' counted lines they explain the per-customer counter.
    pub fn item_retired_per_customer(&self, p: u16, restaurant: &str, item: &str) -> String {
        format!("{}:r:{restaurant}:i:{item}:pcr", self.base(p))
    }

    pub fn order(&self, p: u16, order: &uuid::Uuid) -> String {
        format!("{}:o:{order}", self.base(p))
    }

    /// The `SCAN` pattern matching every order hash of a partition.
    pub fn order_pattern(&self, p: u16) -> String {
        format!("{}:o:*", self.base(p))
    }

    pub fn idempotency(&self, p: u16, customer: &str, key: &str) -> String {
        format!("{}:idem:{customer}:{key}", self.base(p))
    }

    pub fn idempotency_guard(&self, customer: &str, key: &str) -> String {
        let p = self.partition_of_customer(customer);
        format!("{}:idemg:{customer}:{key}", self.base(p))
    }

    /// Set (with a short expiry, renewed) while some engine's provider
    /// circuit is open: how processes that run no payment hop learn of it.
    /// Outside every partition: no script touches it.
    pub fn circuit(&self) -> String {
        format!("{}psp:circuit", self.prefix)
    }

    pub fn inflight(&self, p: u16) -> String {
        format!("{}:inflight", self.base(p))
    }

    /// Orders at a final pair whose events are archived, scored by when
    /// they came to rest: the candidates for retirement (`lua/retire.lua`).
    pub fn resting(&self, p: u16) -> String {
        format!("{}:resting", self.base(p))
    }

    /// The partition's timer wheel.
    pub fn wheel(&self, p: u16) -> String {
        format!("{}:wheel", self.base(p))
    }

    pub fn stream(&self, p: u16, topic: Topic) -> String {
        format!("{}:{}", self.base(p), topic.as_str())
    }

    /// The stream a transition of `topic` writes to in `lane`.
    pub fn lane_stream(&self, p: u16, topic: Topic, lane: Lane) -> String {
        match lane {
            Lane::Online => self.stream(p, topic),
            Lane::Batch => self.stream(p, Topic::Batch),
        }
    }
}

/// 64-bit FNV-1a: tiny, stable, good enough to spread ids over partitions.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every key of one partition hashes to the same cluster slot: the tag is
    /// the only braces in the key, whatever the ids contain.
    #[test]
    fn keys_of_a_partition_share_the_tag() {
        let keys = KeySpace::new("lr:", 16);
        let order = crate::ids::new_order_id(5);
        for key in [
            keys.restaurant(5, "r1"),
            keys.item(5, "r1", "i1"),
            keys.item_per_customer(5, "r1", "i1"),
            keys.order(5, &order),
            keys.idempotency(5, "c", "k"),
            keys.inflight(5),
            keys.stream(5, Topic::Orders),
        ] {
            assert!(key.starts_with("lr:{p5}:"), "{key}");
            assert_eq!(key.matches('{').count(), 1, "{key}");
        }
    }

    /// `docs/keys.md`'s table names exactly the keys this module builds
    /// (ids written as the table's placeholders), so the reference cannot
    /// drift from the code.
    #[test]
    fn the_key_reference_lists_every_key_built_here() {
        let keys = KeySpace::new("", 1);
        let (r, i) = ("<rid>", "<item>");
        let mut built = vec![
            keys.restaurants(0),
            keys.restaurant(0, r),
            keys.items(0, r),
            keys.item(0, r, i),
            keys.item_per_customer(0, r, i),
            keys.item_retired_per_customer(0, r, i),
            keys.order(0, &uuid::Uuid::nil())
                .replace(&uuid::Uuid::nil().to_string(), "<order>"),
            keys.idempotency(0, "<customer>", "<key>"),
            keys.idempotency_guard("<customer>", "<key>")
                .replace("{p0}", "{pM}"),
            keys.circuit(),
            keys.inflight(0),
            keys.resting(0),
            keys.wheel(0),
        ];
        built.extend(Topic::ALL.iter().map(|&t| keys.stream(0, t)));
        let mut built: Vec<String> = built.iter().map(|k| k.replace("{p0}", "{pN}")).collect();
        built.sort();

        // The first cell of each row of the table: one key in backticks, or
        // several (`{pN}:orders`, `:payments`, …: the same partition's).
        let mut documented: Vec<String> = include_str!("../../docs/keys.md")
            .lines()
            .filter_map(|line| line.strip_prefix("| `"))
            .flat_map(|row| {
                let cell = row.split(" | ").next().unwrap_or("");
                format!("`{cell}")
                    .split(", ")
                    .map(|key| key.trim_matches('`').to_string())
                    .collect::<Vec<_>>()
            })
            .map(|key| match key.strip_prefix(':') {
                Some(topic) => format!("{{pN}}:{topic}"),
                None => key,
            })
            .collect();
        documented.sort();
        assert_eq!(documented, built, "docs/keys.md against engine::keys");
    }

    #[test]
    fn restaurant_partitions_are_stable_and_in_range() {
        let keys = KeySpace::new("", 16);
        assert_eq!(
            keys.partition_of_restaurant("pizza-1"),
            keys.partition_of_restaurant("pizza-1")
        );
        let used: std::collections::HashSet<u16> = (0..200)
            .map(|i| keys.partition_of_restaurant(&format!("r{i}")))
            .collect();
        assert!(used.iter().all(|&p| p < 16));
        assert_eq!(used.len(), 16, "200 restaurants reach every partition");
    }
}
