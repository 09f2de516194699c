//! Decoder for PostgreSQL's binary `COPY ... TO STDOUT (FORMAT binary)` stream of user rows.
//!
//! Binary COPY is the cheapest way to move rows out of the server (no text conversion on either
//! side), which is what lets an export keep pace with `psql \copy`. The layout is fixed: an
//! 11-byte signature, 32-bit flags, a 32-bit header-extension length and extension, then per
//! tuple a 16-bit field count and, per field, a 32-bit length (-1 for NULL) and the value in its
//! binary send format; a field count of -1 ends the stream.

use bytes::{Buf, BytesMut};
use chrono::DateTime;
use domain::{User, UserId, UserStatus};
use uuid::Uuid;

const SIGNATURE: &[u8; 11] = b"PGCOPY\n\xff\r\n\0";
const HEADER_LEN: usize = SIGNATURE.len() + 8;
/// Columns of the export query, in order: id, email, name, status, created_at, updated_at, metadata.
pub const COLUMNS: i16 = 7;
/// Microseconds between the Unix epoch and PostgreSQL's (2000-01-01).
const PG_EPOCH_OFFSET_MICROS: i64 = 946_684_800_000_000;
/// jsonb's binary send format: a version byte, then the JSON text.
const JSONB_VERSION: u8 = 1;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("not a binary COPY stream (bad signature)")]
    Signature,
    #[error("expected {COLUMNS} columns, got {0}")]
    Columns(i16),
    #[error("column {column}: {reason}")]
    Value { column: &'static str, reason: String },
    #[error("the COPY stream ended in the middle of a row")]
    Truncated,
}

/// Incremental decoder: push chunks as they arrive, take out complete users.
#[derive(Debug, Default)]
pub struct UserCopyDecoder {
    buf: BytesMut,
    header_done: bool,
    finished: bool,
}

impl UserCopyDecoder {
    pub fn push(&mut self, chunk: &[u8]) {
        self.buf.extend_from_slice(chunk);
    }

    /// The next complete user; `Ok(None)` when more bytes are needed or the trailer was read.
    pub fn next_user(&mut self) -> Result<Option<User>, DecodeError> {
        if self.finished || !self.read_header()? {
            return Ok(None);
        }
        let Some(len) = self.complete_tuple_len()? else { return Ok(None) };
        let tuple = self.buf.split_to(len);
        if len == 2 {
            self.finished = true;
            return Ok(None);
        }
        decode_user(&tuple[2..]).map(Some)
    }

    /// Checks the stream ended with its trailer, not in the middle.
    pub fn finish(&self) -> Result<(), DecodeError> {
        if self.finished { Ok(()) } else { Err(DecodeError::Truncated) }
    }

    fn read_header(&mut self) -> Result<bool, DecodeError> {
        if self.header_done {
            return Ok(true);
        }
        if self.buf.len() < HEADER_LEN {
            return Ok(false);
        }
        if &self.buf[..SIGNATURE.len()] != SIGNATURE {
            return Err(DecodeError::Signature);
        }
        let extension =
            self.buf[SIGNATURE.len() + 4..HEADER_LEN].try_into().map(u32::from_be_bytes).unwrap_or(0);
        let total = HEADER_LEN + extension as usize;
        if self.buf.len() < total {
            return Ok(false);
        }
        self.buf.advance(total);
        self.header_done = true;
        Ok(true)
    }

    /// Length of the tuple (or trailer) at the front of the buffer, once all of it has arrived.
    fn complete_tuple_len(&self) -> Result<Option<usize>, DecodeError> {
        let buf = &self.buf[..];
        let Some(count) = buf.get(..2) else { return Ok(None) };
        match i16::from_be_bytes([count[0], count[1]]) {
            -1 => return Ok(Some(2)),
            COLUMNS => {}
            other => return Err(DecodeError::Columns(other)),
        }
        let mut at = 2;
        for _ in 0..COLUMNS {
            let Some(len) = buf.get(at..at + 4) else { return Ok(None) };
            let len = i32::from_be_bytes([len[0], len[1], len[2], len[3]]);
            at += 4 + usize::try_from(len).unwrap_or(0);
            if at > buf.len() {
                return Ok(None);
            }
        }
        Ok(Some(at))
    }
}

/// Reads the fields of one tuple in order.
struct Fields<'a>(&'a [u8]);

impl<'a> Fields<'a> {
    fn next(&mut self, column: &'static str) -> Result<&'a [u8], DecodeError> {
        let bad = |reason: &str| DecodeError::Value { column, reason: reason.to_owned() };
        let (len, rest) = self.0.split_at_checked(4).ok_or(DecodeError::Truncated)?;
        let len = i32::from_be_bytes([len[0], len[1], len[2], len[3]]);
        let len = usize::try_from(len).map_err(|_| bad("is NULL"))?;
        let (value, rest) = rest.split_at_checked(len).ok_or(DecodeError::Truncated)?;
        self.0 = rest;
        Ok(value)
    }

    fn text(&mut self, column: &'static str) -> Result<&'a str, DecodeError> {
        std::str::from_utf8(self.next(column)?)
            .map_err(|e| DecodeError::Value { column, reason: format!("invalid UTF-8: {e}") })
    }

    fn timestamp(&mut self, column: &'static str) -> Result<DateTime<chrono::Utc>, DecodeError> {
        let bad = |reason: &str| DecodeError::Value { column, reason: reason.to_owned() };
        let raw: [u8; 8] = self.next(column)?.try_into().map_err(|_| bad("is not 8 bytes"))?;
        let micros =
            i64::from_be_bytes(raw).checked_add(PG_EPOCH_OFFSET_MICROS).ok_or_else(|| bad("out of range"))?;
        DateTime::from_timestamp_micros(micros).ok_or_else(|| bad("out of range (infinity?)"))
    }
}

fn decode_user(tuple: &[u8]) -> Result<User, DecodeError> {
    let mut fields = Fields(tuple);
    let id: [u8; 16] = fields
        .next("id")?
        .try_into()
        .map_err(|_| DecodeError::Value { column: "id", reason: "is not 16 bytes".into() })?;
    let email = fields.text("email")?.to_owned();
    let name = fields.text("name")?.to_owned();
    let status_text = fields.text("status")?;
    let status: UserStatus = status_text.parse().map_err(|()| DecodeError::Value {
        column: "status",
        reason: format!("unknown status {status_text:?}"),
    })?;
    let created_at = fields.timestamp("created_at")?;
    let updated_at = fields.timestamp("updated_at")?;
    let metadata = match fields.next("metadata")?.split_first() {
        Some((&JSONB_VERSION, json)) => serde_json::from_slice(json).map_err(|e| DecodeError::Value {
            column: "metadata",
            reason: format!("not a JSON object: {e}"),
        })?,
        _ => return Err(DecodeError::Value { column: "metadata", reason: "unknown jsonb version".into() }),
    };
    Ok(User {
        id: UserId::from_uuid(Uuid::from_bytes(id)),
        email,
        name,
        status,
        created_at,
        updated_at,
        metadata,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// The binary COPY encoding of `users`, as the server would send it.
    fn encode(users: &[User]) -> Vec<u8> {
        let mut out = SIGNATURE.to_vec();
        out.extend_from_slice(&0u32.to_be_bytes());
        out.extend_from_slice(&4u32.to_be_bytes());
        out.extend_from_slice(b"ext!");
        let put = |out: &mut Vec<u8>, v: &[u8]| {
            out.extend_from_slice(&(v.len() as i32).to_be_bytes());
            out.extend_from_slice(v);
        };
        for u in users {
            out.extend_from_slice(&COLUMNS.to_be_bytes());
            put(&mut out, u.id.as_uuid().as_bytes());
            put(&mut out, u.email.as_bytes());
            put(&mut out, u.name.as_bytes());
            put(&mut out, u.status.as_str().as_bytes());
            for t in [u.created_at, u.updated_at] {
                put(&mut out, &(t.timestamp_micros() - PG_EPOCH_OFFSET_MICROS).to_be_bytes());
            }
            let mut json = vec![JSONB_VERSION];
            json.extend_from_slice(serde_json::to_string(&u.metadata).unwrap().as_bytes());
            put(&mut out, &json);
        }
        out.extend_from_slice(&(-1i16).to_be_bytes());
        out
    }

    fn users() -> Vec<User> {
        let scope = domain::Scope::parse("acme/prod").unwrap();
        (0..200).map(|i| domain::synthetic::user(&scope, i)).collect()
    }

    #[test]
    fn decodes_a_stream_split_at_every_possible_point() {
        let users = users();
        let bytes = encode(&users);
        for chunk in [1, 2, 3, 7, 64, 1000, bytes.len()] {
            let mut decoder = UserCopyDecoder::default();
            let mut got = Vec::new();
            for piece in bytes.chunks(chunk) {
                decoder.push(piece);
                while let Some(user) = decoder.next_user().unwrap() {
                    got.push(user);
                }
            }
            decoder.finish().unwrap();
            assert_eq!(got, users, "chunk size {chunk}");
        }
    }

    #[test]
    fn a_truncated_stream_is_an_error_not_a_short_export() {
        let bytes = encode(&users());
        let mut decoder = UserCopyDecoder::default();
        decoder.push(&bytes[..bytes.len() - 40]);
        while decoder.next_user().unwrap().is_some() {}
        assert_eq!(decoder.finish(), Err(DecodeError::Truncated));
    }

    #[test]
    fn garbage_is_rejected() {
        let mut decoder = UserCopyDecoder::default();
        decoder.push(b"id,email\r\n1,a@b.c\r\n......");
        assert_eq!(decoder.next_user(), Err(DecodeError::Signature));

        let mut bytes = encode(&users()[..1]);
        bytes[HEADER_LEN + 4 + 1] = 3; // field count 3 instead of 7
        let mut decoder = UserCopyDecoder::default();
        decoder.push(&bytes);
        assert!(matches!(decoder.next_user(), Err(DecodeError::Columns(_))));
    }
}
