-- lunchrush baseline: a key/value table for facts about the deployment
-- itself (who created the schema, when). Later migrations add the saga event
-- archive, the projections and the reconciliation history.
CREATE TABLE lunchrush_meta (
    key        text PRIMARY KEY,
    value      text NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);

INSERT INTO lunchrush_meta (key, value) VALUES ('schema_created_by', 'lunchrush');
