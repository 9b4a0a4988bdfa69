-- Every action an operator took through the console or /v1/admin (who,
-- when, what, why, and what came of it), shown on the order's timeline.
CREATE TABLE operator_actions (
    id        bigserial   PRIMARY KEY,
    at        timestamptz NOT NULL DEFAULT now(),
    actor     text        NOT NULL,
    action    text        NOT NULL,
    subject   text        NOT NULL,
    order_id  uuid,
    reason    text        NOT NULL,
    outcome   text        NOT NULL,
    detail    text        NOT NULL DEFAULT ''
);
CREATE INDEX operator_actions_order ON operator_actions (order_id, at) WHERE order_id IS NOT NULL;
CREATE INDEX operator_actions_at ON operator_actions (at);

-- The console's searches: the latest orders first, whatever the filter.
CREATE INDEX orders_created ON orders (created_at);

-- Recent events by time (the console's rates and latencies): a BRIN index,
-- next to free to keep on an append-only table.
CREATE INDEX saga_events_event_time ON saga_events USING brin (event_time);
