-- The Postgres-only peer: the lunchrush saga done "the classic way", one
-- PostgreSQL transaction per step with row locks and an outbox table.
-- Same menus as lunchrush-bench's seed: 50 restaurants x 8 dishes (price
-- 5,000 + 1,000 x dish), plus the flash sale (one item, :flash_stock units).
DROP SCHEMA IF EXISTS peer CASCADE;
CREATE SCHEMA peer;

CREATE TABLE peer.items (
    restaurant int    NOT NULL,
    dish       int    NOT NULL,
    price      bigint NOT NULL,
    stock      bigint NOT NULL CHECK (stock >= 0),
    supplied   bigint NOT NULL,
    PRIMARY KEY (restaurant, dish)
);

CREATE TABLE peer.orders (
    id         bigserial PRIMARY KEY,
    customer   int         NOT NULL,
    restaurant int         NOT NULL,
    total      bigint      NOT NULL,
    status     text        NOT NULL,   -- PENDING, PAID, APPROVED
    pay        text        NOT NULL,   -- NONE, AUTHORIZED, CAPTURED
    created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    updated_at timestamptz NOT NULL DEFAULT clock_timestamp()
);

CREATE TABLE peer.order_lines (
    order_id bigint NOT NULL REFERENCES peer.orders (id),
    dish     int    NOT NULL,
    qty      int    NOT NULL,
    PRIMARY KEY (order_id, dish)
);

CREATE TABLE peer.payments (
    order_id bigint PRIMARY KEY REFERENCES peer.orders (id),
    amount   bigint NOT NULL,
    status   text   NOT NULL
);

-- Every step writes its event here in the same transaction; a relay
-- publishes (marks) them in order.
CREATE TABLE peer.outbox (
    id           bigserial PRIMARY KEY,
    order_id     bigint      NOT NULL,
    kind         text        NOT NULL,
    payload      jsonb       NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    published_at timestamptz
);
CREATE INDEX outbox_unpublished ON peer.outbox (id) WHERE published_at IS NULL;

-- Restaurant 0 is the flash sale: one dish.
INSERT INTO peer.items
SELECT r, d, 5000 + 1000 * d, 1000000, 1000000
FROM generate_series(1, 50) r, generate_series(0, 7) d;
INSERT INTO peer.items VALUES (0, 0, 990, :flash_stock, :flash_stock);
ANALYZE peer.items;
