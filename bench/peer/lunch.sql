-- One lunch_peak order, step 1 (placement); bench/peer/run appends
-- steps.sql (authorize, approve, capture), one transaction per step.
-- Restaurant: Zipf(1.1) over 50 (the hot ones are hot); 1-3 consecutive
-- dishes from a random first one, as lunchrush-bench's lunch_peak picks them.
\set r random_zipfian(1, 50, 1.1)
\set customer random(1, 100000)
\set n random(1, 3)
\set d1 random(0, 7)
\set d2 (:d1 + 1) % 8
\set d3 (:d1 + 2) % 8
-- Step 1, place: lock the lines' stock rows (in dish order), reserve all or
-- nothing, write the order and its OrderPlaced event.
BEGIN;
SELECT count(*) AS locked FROM (
    SELECT 1 FROM peer.items
    WHERE restaurant = :r AND (dish = :d1 OR (:n >= 2 AND dish = :d2) OR (:n >= 3 AND dish = :d3))
    ORDER BY dish FOR UPDATE) l \gset
WITH reserved AS (
    UPDATE peer.items SET stock = stock - 1
    WHERE restaurant = :r AND (dish = :d1 OR (:n >= 2 AND dish = :d2) OR (:n >= 3 AND dish = :d3))
      AND stock >= 1
    RETURNING dish, price)
SELECT count(*) AS got, coalesce(sum(price), 0) AS total FROM reserved \gset
\if :got = :n
INSERT INTO peer.orders (customer, restaurant, total, status, pay)
VALUES (:customer, :r, :total, 'PENDING', 'NONE') RETURNING id AS oid \gset
INSERT INTO peer.order_lines
SELECT :oid, dish, 1 FROM peer.items
WHERE restaurant = :r AND (dish = :d1 OR (:n >= 2 AND dish = :d2) OR (:n >= 3 AND dish = :d3));
INSERT INTO peer.outbox (order_id, kind, payload)
VALUES (:oid, 'OrderPlaced', jsonb_build_object('restaurant', :r, 'total', :total));
COMMIT;
