-- Steps 2-4 of the saga, appended by bench/peer/run to a placement script
-- (lunch.sql, flash.sql) that ends with an open \if on "placed": one
-- transaction per step, each with a row lock and an outbox row.
-- Step 2, payment authorized (the provider call itself is left out: free).
BEGIN;
SELECT status FROM peer.orders WHERE id = :oid FOR UPDATE;
INSERT INTO peer.payments VALUES (:oid, :total, 'AUTHORIZED');
UPDATE peer.orders SET status = 'PAID', pay = 'AUTHORIZED', updated_at = clock_timestamp() WHERE id = :oid;
INSERT INTO peer.outbox (order_id, kind, payload) VALUES (:oid, 'PaymentAuthorized', '{}');
COMMIT;
-- Step 3, restaurant approves.
BEGIN;
SELECT status FROM peer.orders WHERE id = :oid FOR UPDATE;
UPDATE peer.orders SET status = 'APPROVED', updated_at = clock_timestamp() WHERE id = :oid;
INSERT INTO peer.outbox (order_id, kind, payload) VALUES (:oid, 'RestaurantApproved', '{}');
COMMIT;
-- Step 4, capture.
BEGIN;
SELECT status FROM peer.payments WHERE order_id = :oid FOR UPDATE;
UPDATE peer.payments SET status = 'CAPTURED' WHERE order_id = :oid;
UPDATE peer.orders SET pay = 'CAPTURED', updated_at = clock_timestamp() WHERE id = :oid;
INSERT INTO peer.outbox (order_id, kind, payload) VALUES (:oid, 'PaymentCaptured', '{}');
COMMIT;
\else
ROLLBACK;
\endif
