-- Export schedules: the source of truth for what the scheduler (in-process timers or Temporal
-- Schedules) should run. The request each fire runs is the validated ExportSpec as JSON.
CREATE TABLE export_schedules (
    tenant_id      text        NOT NULL,
    environment_id text        NOT NULL,
    id             uuid        NOT NULL,
    cron           text        NOT NULL,
    timezone       text        NOT NULL,
    spec           jsonb       NOT NULL,
    paused         boolean     NOT NULL DEFAULT false,
    note           text,
    revision       bigint      NOT NULL CHECK (revision >= 1),
    created_at     timestamptz NOT NULL,
    updated_at     timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, environment_id, id)
);
