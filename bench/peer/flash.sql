-- flash_sale: everyone races for restaurant 0's one dish. A sold unit is
-- carried through the saga (bench/peer/run appends steps.sql); a refusal
-- ends at step 1.
\set customer random(1, 100000)
\set total 990
BEGIN;
SELECT stock AS left_ FROM peer.items WHERE restaurant = 0 AND dish = 0 FOR UPDATE \gset
\if :left_ >= 1
UPDATE peer.items SET stock = stock - 1 WHERE restaurant = 0 AND dish = 0;
INSERT INTO peer.orders (customer, restaurant, total, status, pay)
VALUES (:customer, 0, 990, 'PENDING', 'NONE') RETURNING id AS oid \gset
INSERT INTO peer.order_lines VALUES (:oid, 0, 1);
INSERT INTO peer.outbox (order_id, kind, payload) VALUES (:oid, 'OrderPlaced', '{"restaurant": 0, "total": 990}');
COMMIT;
