-- Retention retries a file that failed to delete after a backoff, behind the others: how often
-- it failed and when it is due again (NULL: at expires_at).
ALTER TABLE exports ADD COLUMN delete_attempts integer NOT NULL DEFAULT 0 CHECK (delete_attempts >= 0);
ALTER TABLE exports ADD COLUMN next_delete_at timestamptz;
-- The sweep reads completed exports by when they are due (GREATEST ignores a NULL retry time).
DROP INDEX IF EXISTS exports_expiring;
CREATE INDEX exports_deletion_due ON exports (GREATEST(expires_at, next_delete_at), tenant_id, environment_id, id)
    WHERE status = 'completed';
