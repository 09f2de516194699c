-- Users of every tenant. The primary key is the index the export query walks:
-- (tenant_id, environment_id, id) with keyset pagination on id.
CREATE TABLE users (
    tenant_id      text        NOT NULL,
    environment_id text        NOT NULL,
    id             uuid        NOT NULL,
    email          text        NOT NULL,
    name           text        NOT NULL,
    status         text        NOT NULL CHECK (status IN ('active', 'inactive', 'suspended')),
    created_at     timestamptz NOT NULL,
    updated_at     timestamptz NOT NULL,
    metadata       jsonb       NOT NULL DEFAULT '{}'::jsonb CHECK (jsonb_typeof(metadata) = 'object'),
    PRIMARY KEY (tenant_id, environment_id, id)
);

-- One row per export: the source of truth for its status, shared by API and workers.
CREATE TABLE exports (
    tenant_id           text        NOT NULL,
    environment_id      text        NOT NULL,
    id                  uuid        NOT NULL,
    idempotency_key     text,
    request_fingerprint text        NOT NULL,
    spec                jsonb       NOT NULL,
    object_key          text        NOT NULL,
    status              text        NOT NULL
        CHECK (status IN ('pending', 'running', 'completed', 'failed', 'cancelled')),
    attempt             integer     NOT NULL DEFAULT 0 CHECK (attempt >= 0),
    rows_written        bigint      NOT NULL DEFAULT 0 CHECK (rows_written >= 0),
    total_rows          bigint      CHECK (total_rows >= 0),
    record_count        bigint      CHECK (record_count >= 0),
    bytes               bigint      CHECK (bytes >= 0),
    sha256              text,
    error_kind          text,
    error_message       text,
    created_at          timestamptz NOT NULL,
    started_at          timestamptz,
    finished_at         timestamptz,
    updated_at          timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, environment_id, id),
    CONSTRAINT exports_completed_has_outcome
        CHECK (status <> 'completed' OR (record_count IS NOT NULL AND bytes IS NOT NULL AND sha256 IS NOT NULL))
);

CREATE UNIQUE INDEX exports_idempotency_key ON exports (tenant_id, environment_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
-- Listing newest first with a (created_at, id) cursor.
CREATE INDEX exports_newest_first ON exports (tenant_id, environment_id, created_at DESC, id DESC);
-- Recovery at start-up scans only unfinished exports.
CREATE INDEX exports_unfinished ON exports (created_at, id) WHERE status IN ('pending', 'running');
