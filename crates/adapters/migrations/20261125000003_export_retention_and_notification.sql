-- Retention: completed exports expire (file deleted, record kept as 'expired').
ALTER TABLE exports DROP CONSTRAINT exports_status_check;
ALTER TABLE exports ADD CONSTRAINT exports_status_check
    CHECK (status IN ('pending', 'running', 'completed', 'failed', 'cancelled', 'expired'));
ALTER TABLE exports ADD COLUMN expires_at timestamptz;
-- How the completion notification went (domain::NotificationRecord as JSON).
ALTER TABLE exports ADD COLUMN notification jsonb;
-- The retention sweep reads only completed exports that are due, oldest expiry first.
CREATE INDEX exports_expiring ON exports (expires_at, tenant_id, environment_id, id)
    WHERE status = 'completed';
