-- Batch exports: what a batch was asked to do. What it achieved lives in its targets' export
-- records (their IDs are derived from the batch ID and the scope), so a batch row never changes.
CREATE TABLE export_batches (
    id                  uuid        PRIMARY KEY,
    -- Resolved targets, in order: a JSON array of {"tenant": "...", "environment": "..."}.
    targets             jsonb       NOT NULL CHECK (jsonb_typeof(targets) = 'array'),
    all_targets         boolean     NOT NULL,
    spec                jsonb       NOT NULL,
    concurrency         integer     NOT NULL CHECK (concurrency > 0),
    idempotency_key     text,
    request_fingerprint text        NOT NULL,
    created_at          timestamptz NOT NULL
);
