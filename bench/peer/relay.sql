-- The outbox relay: publish (mark) the next batch of events, in order,
-- without blocking the writers (SKIP LOCKED).
UPDATE peer.outbox SET published_at = clock_timestamp()
WHERE id IN (SELECT id FROM peer.outbox WHERE published_at IS NULL
             ORDER BY id LIMIT 200 FOR UPDATE SKIP LOCKED);
