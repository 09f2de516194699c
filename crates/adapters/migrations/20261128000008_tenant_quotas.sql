-- Per-tenant quotas count a scope's unfinished exports on every request: keep that an index
-- range of the scope's few unfinished rows, never a scan of its history.
CREATE INDEX exports_unfinished_by_scope ON exports (tenant_id, environment_id)
    WHERE status IN ('pending', 'running');
