-- Resume: where an unfinished export's next attempt goes on from (keyset position, encoder and
-- upload state, SHA-256 state), and the row the current attempt resumed from.
ALTER TABLE exports ADD COLUMN checkpoint jsonb;
ALTER TABLE exports ADD COLUMN resumed_from_row bigint CHECK (resumed_from_row >= 0);
