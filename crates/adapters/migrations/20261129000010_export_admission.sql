-- Temporal-mode admission: a scope's exports beyond its limit wait as pending rows and get a
-- workflow as earlier ones finish. admitted_at is when a run was started for the export.
ALTER TABLE exports ADD COLUMN admitted_at timestamptz;
-- Every export stored before admission existed was started when it was created.
UPDATE exports SET admitted_at = created_at;
-- Admission counts a scope's admitted unfinished exports and takes its oldest waiting ones.
CREATE INDEX exports_awaiting_admission ON exports (tenant_id, environment_id, created_at, id)
    WHERE status = 'pending' AND admitted_at IS NULL;
