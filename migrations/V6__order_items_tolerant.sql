-- `order_items` reads every archived OrderPlaced, and the archive keeps an
-- event whose data does not decode as it was written. A line that is not
-- [text, integer, integer] is left out (as the table it replaced never
-- held it), and no cast can fail whatever a query filters on: each value
-- is cast only inside a CASE that checked it first.
CREATE OR REPLACE VIEW order_items AS
    SELECT order_id, item, qty, price FROM (
        SELECT e.order_id, l.line ->> 0 AS item,
               CASE WHEN l.line ->> 1 ~ '^[0-9]{1,9}$' THEN (l.line ->> 1)::integer END AS qty,
               CASE WHEN l.line ->> 2 ~ '^-?[0-9]{1,18}$' THEN (l.line ->> 2)::bigint END AS price,
               jsonb_typeof(l.line -> 0) = 'string' AS named
        FROM saga_events e
        CROSS JOIN LATERAL jsonb_array_elements(
            CASE WHEN jsonb_typeof(e.payload -> 'l') = 'array' THEN e.payload -> 'l' ELSE '[]'::jsonb END
        ) AS l(line)
        WHERE e.type = 'OrderPlaced'
    ) lines
    WHERE named AND qty IS NOT NULL AND price IS NOT NULL;
