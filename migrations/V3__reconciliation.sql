-- Every reconciliation run and every fix it made (or would make, dry-run).
CREATE TABLE reconciliation_runs (
    id            bigserial PRIMARY KEY,
    started_at    timestamptz NOT NULL,
    finished_at   timestamptz NOT NULL,
    dry_run       boolean     NOT NULL,
    older_than_s  bigint      NOT NULL,
    summary       jsonb       NOT NULL,
    exit_status   integer     NOT NULL
);

CREATE TABLE reconciliation_fixes (
    run_id   bigint      NOT NULL REFERENCES reconciliation_runs (id),
    n        integer     NOT NULL,
    kind     text        NOT NULL,
    subject  text        NOT NULL,
    action   text        NOT NULL,
    outcome  text        NOT NULL,
    detail   text        NOT NULL,
    PRIMARY KEY (run_id, n)
);
CREATE INDEX reconciliation_fixes_subject ON reconciliation_fixes (subject);
