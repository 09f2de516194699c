-- Durability: attempts that count, the workflow a run really uses, notifications as their own
-- step (email and signed callback), each recorded on the export.
ALTER TABLE exports ADD COLUMN consumed_attempts integer NOT NULL DEFAULT 0 CHECK (consumed_attempts >= 0);
ALTER TABLE exports ADD COLUMN workflow_id text;
ALTER TABLE exports ADD COLUMN callback jsonb;
ALTER TABLE exports ADD COLUMN notify_due boolean NOT NULL DEFAULT false;
-- The reconciler reads finished exports whose notifications wait, oldest first.
CREATE INDEX exports_notify_due ON exports (updated_at) WHERE notify_due;
