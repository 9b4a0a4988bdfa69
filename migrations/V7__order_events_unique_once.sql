-- An order's events are unique by (order_id, seq), which the order's script
-- assigns once: a redelivered entry carries the same pair, so that key alone
-- keeps each order event archived once, and (stream, entry_id) needs no
-- unique index of its own for them (one index entry less per event, the
-- wider one). Menu events, which belong to no order, keep theirs as a
-- partial unique index. The archive's inserts skip a duplicate on either
-- (`ON CONFLICT DO NOTHING`).
ALTER TABLE saga_events DROP CONSTRAINT saga_events_pkey;
CREATE UNIQUE INDEX saga_events_unowned_entry ON saga_events (stream, entry_id, part_time)
    WHERE order_id IS NULL;
