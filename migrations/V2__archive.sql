-- The saga event archive, its projections, and the delayed-task history.

-- Every stream entry, once. Partitioned by month of `part_time`, which is a
-- function of the row's identity: the order's creation time (read from its
-- UUIDv7 id) for order events, the entry's own time for menu events. So all
-- events of one order share a partition, and
--   PRIMARY KEY (stream, entry_id, part_time)  is unique on (stream, entry_id)
--   UNIQUE (order_id, seq, part_time)          is unique on (order_id, seq)
-- while old months can be detached (ALTER TABLE ... DETACH PARTITION).
CREATE TABLE saga_events (
    stream          text        NOT NULL,
    entry_id        text        NOT NULL,
    entry_ms        bigint      NOT NULL,
    entry_seq       bigint      NOT NULL,
    order_id        uuid,
    saga_id         uuid,
    seq             bigint      NOT NULL,
    type            text        NOT NULL,
    schema_version  integer     NOT NULL,
    payload         jsonb       NOT NULL,
    event_time      timestamptz NOT NULL,
    part_time       timestamptz NOT NULL,
    archived_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (stream, entry_id, part_time),
    UNIQUE (order_id, seq, part_time)
) PARTITION BY RANGE (part_time);

-- Monthly partitions are created by the archiver as months appear
-- (archiver::schema::ensure_month); this function names and creates one.
CREATE FUNCTION saga_events_ensure_month(month_start timestamptz) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    first timestamptz := date_trunc('month', month_start AT TIME ZONE 'UTC') AT TIME ZONE 'UTC';
    name text := 'saga_events_' || to_char(first AT TIME ZONE 'UTC', 'YYYY_MM');
BEGIN
    EXECUTE format(
        'CREATE TABLE IF NOT EXISTS %I PARTITION OF saga_events FOR VALUES FROM (%L) TO (%L)',
        name, first, first + interval '1 month');
END $$;

-- Poison entries and parked compensations, as the streams held them.
CREATE TABLE dead_letters (
    stream       text        NOT NULL,
    entry_id     text        NOT NULL,
    source       text,
    source_id    text,
    group_name   text,
    reason       text,
    action       text,
    fields       jsonb       NOT NULL,
    archived_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (stream, entry_id)
);

-- Projections, kept current by the archiver (refolded from saga_events for
-- every order a batch touches, so out-of-order arrival cannot skew them).
CREATE TABLE orders (
    order_id        uuid PRIMARY KEY,
    saga_id         uuid,
    customer        text,
    restaurant_id   text,
    status          text        NOT NULL,
    reason          text,
    payment_status  text        NOT NULL,
    decision        text,
    total           bigint,
    created_at      timestamptz,
    updated_at      timestamptz,
    last_seq        bigint      NOT NULL,
    events          integer     NOT NULL
);
CREATE INDEX orders_customer ON orders (customer, created_at);
CREATE INDEX orders_restaurant ON orders (restaurant_id, created_at);
CREATE INDEX orders_unsettled ON orders (status, payment_status)
    WHERE status IN ('PENDING', 'PAID') OR (status = 'REJECTED' AND payment_status IN ('AUTHORIZED', 'CAPTURED'));

CREATE TABLE order_items (
    order_id  uuid   NOT NULL,
    item      text   NOT NULL,
    qty       integer NOT NULL,
    price     bigint NOT NULL,
    PRIMARY KEY (order_id, item)
);

CREATE TABLE payments (
    order_id      uuid PRIMARY KEY,
    status        text NOT NULL,
    provider_ref  text,
    amount        bigint,
    updated_at    timestamptz
);

CREATE TABLE restaurant_history (
    restaurant_id  text        NOT NULL,
    seq            bigint      NOT NULL,
    name           text,
    open           boolean,
    auto_approve   boolean,
    at             timestamptz NOT NULL,
    PRIMARY KEY (restaurant_id, seq)
);

CREATE TABLE menu_item_history (
    restaurant_id     text        NOT NULL,
    seq               bigint      NOT NULL,
    item              text        NOT NULL,
    name              text,
    price             bigint,
    stock             bigint,
    delta             bigint,
    available         boolean,
    max_per_customer  bigint,
    at                timestamptz NOT NULL,
    PRIMARY KEY (restaurant_id, seq)
);

-- Per stream: the highest entry archived (advanced in the batch's transaction).
CREATE TABLE archive_watermarks (
    stream      text PRIMARY KEY,
    entry_ms    bigint      NOT NULL,
    entry_seq   bigint      NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- Loud facts the archiver found (a stream behind its archive after a Redis
-- restart lost a tail): reconciliation repairs from the archive and the
-- provider's ledger.
CREATE TABLE archive_incidents (
    id        bigserial PRIMARY KEY,
    stream    text        NOT NULL,
    kind      text        NOT NULL,
    detail    text        NOT NULL,
    at        timestamptz NOT NULL DEFAULT now()
);

-- Delayed tasks and notifications: one row per (order, kind) sent, so a
-- notification is never sent twice and troubleshooting has a history.
CREATE TABLE notifications (
    order_id         uuid        NOT NULL,
    kind             text        NOT NULL,
    idempotency_key  text        NOT NULL,
    channel          text        NOT NULL,
    attempts         integer     NOT NULL,
    sent_at          timestamptz NOT NULL,
    PRIMARY KEY (order_id, kind)
);

CREATE TABLE timer_history (
    order_id     uuid        NOT NULL,
    kind         text        NOT NULL,
    due_at       timestamptz NOT NULL,
    fired_at     timestamptz NOT NULL,
    lateness_ms  bigint      NOT NULL,
    outcome      text        NOT NULL,
    PRIMARY KEY (order_id, kind, due_at)
);
