//! Opaque pagination cursor for listing exports newest first.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};

use crate::ids::ExportId;

/// Position after the last export of a page: `(created_at, id)` descending. Clients see it as an
/// opaque string and must not build one themselves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListCursor {
    pub created_at: DateTime<Utc>,
    pub id: ExportId,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cursor is not one this API returned")]
pub struct BadCursor;

impl ListCursor {
    pub fn encode(&self) -> String {
        let micros = self.created_at.timestamp_micros();
        URL_SAFE_NO_PAD.encode(format!("{micros}|{}", self.id))
    }

    pub fn decode(raw: &str) -> Result<Self, BadCursor> {
        let bytes = URL_SAFE_NO_PAD.decode(raw).map_err(|_| BadCursor)?;
        let text = String::from_utf8(bytes).map_err(|_| BadCursor)?;
        let (micros, id) = text.split_once('|').ok_or(BadCursor)?;
        let micros: i64 = micros.parse().map_err(|_| BadCursor)?;
        Ok(Self {
            created_at: DateTime::from_timestamp_micros(micros).ok_or(BadCursor)?,
            id: ExportId::parse(id).map_err(|_| BadCursor)?,
        })
    }

    /// Whether an export at `(created_at, id)` comes after this cursor in newest-first order.
    pub fn precedes(&self, created_at: DateTime<Utc>, id: ExportId) -> bool {
        (created_at, id) < (self.created_at, self.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_round_trips_and_rejects_garbage() {
        let c = ListCursor {
            created_at: DateTime::from_timestamp_micros(1_700_000_000_123_456).unwrap(),
            id: ExportId::parse("0190f5c3-0000-7000-8000-000000000001").unwrap(),
        };
        assert_eq!(ListCursor::decode(&c.encode()), Ok(c));
        for bad in ["", "!!!", "bm9waXBl", &URL_SAFE_NO_PAD.encode("x|y")] {
            assert_eq!(ListCursor::decode(bad), Err(BadCursor), "{bad}");
        }
    }
}
