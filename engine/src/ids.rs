//! Order ids: UUIDv7 (time-ordered) whose 12-bit `rand_a` field holds the
//! order's partition, so any process finds an order's keys from its id
//! alone, with no lookup table. 62 random bits remain in `rand_b`; ids made
//! in the same millisecond for the same partition collide with probability
//! about n²/2⁶³.

use uuid::Uuid;

/// A fresh order id for `partition` (< 4,096).
pub fn new_order_id(partition: u16) -> Uuid {
    assert!(partition < 4_096, "a partition fits in 12 bits");
    let mut bytes = *Uuid::now_v7().as_bytes();
    bytes[6] = 0x70 | (partition >> 8) as u8;
    bytes[7] = (partition & 0xff) as u8;
    Uuid::from_bytes(bytes)
}

/// The partition written into a version-7 id; `None` for other UUIDs.
pub fn partition_of(id: &Uuid) -> Option<u16> {
    if id.get_version_num() != 7 {
        return None;
    }
    let bytes = id.as_bytes();
    Some((u16::from(bytes[6] & 0x0f) << 8) | u16::from(bytes[7]))
}

/// The creation time written into a UUIDv7 (its first 48 bits, ms): for an
/// order, when it was placed. The archive partitions an order's events by it.
pub fn created_at(id: &Uuid) -> std::time::SystemTime {
    let b = id.as_bytes();
    let ms = b[..6]
        .iter()
        .fold(0u64, |acc, byte| (acc << 8) | u64::from(*byte));
    std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms)
}

/// A fresh saga id (plain UUIDv7).
pub fn new_saga_id() -> Uuid {
    Uuid::now_v7()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_partition_round_trips_and_the_id_stays_a_v7_uuid() {
        for partition in [0, 1, 15, 255, 256, 4_095] {
            let id = new_order_id(partition);
            assert_eq!(id.get_version_num(), 7);
            assert_eq!(id.get_variant(), uuid::Variant::RFC4122);
            assert_eq!(partition_of(&id), Some(partition));
        }
        assert_eq!(partition_of(&Uuid::new_v4()), None);
    }

    #[test]
    fn ids_are_time_ordered_across_milliseconds() {
        let a = new_order_id(3);
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = new_order_id(1);
        assert!(a < b);
    }
}
