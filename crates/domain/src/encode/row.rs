//! Encoding of one header or user into the bytes of one row, per format. This is the hot loop of
//! every export, so rows are written straight into the reused row buffer without allocating.

use std::io;

use chrono::{DateTime, Datelike, SecondsFormat, Timelike, Utc};

use crate::user::{User, UserField};

/// Leading characters that make spreadsheet applications evaluate a cell as a formula (OWASP
/// "CSV injection").
const FORMULA_TRIGGERS: [char; 6] = ['=', '+', '-', '@', '\t', '\r'];

/// [`CSV_CLASS`] bit: the cell must be quoted (RFC 4180).
const MUST_QUOTE: u8 = 1;
/// [`CSV_CLASS`] bit: a `;`-locale spreadsheet starts a new cell after this byte.
const STARTS_CELL: u8 = 2;
/// What each byte asks of the CSV cell that holds it.
const CSV_CLASS: [u8; 256] = {
    let mut class = [0; 256];
    class[b'"' as usize] = MUST_QUOTE;
    class[b',' as usize] = MUST_QUOTE;
    class[b'\r' as usize] = MUST_QUOTE | STARTS_CELL;
    class[b'\n' as usize] = MUST_QUOTE | STARTS_CELL;
    class[b';' as usize] = STARTS_CELL;
    class
};

/// Whether `b` is one of [`FORMULA_TRIGGERS`] (all ASCII, so a byte test is exact in UTF-8).
fn is_trigger(b: u8) -> bool {
    matches!(b, b'=' | b'+' | b'-' | b'@' | b'\t' | b'\r')
}

/// Writes the CSV header row: the selected field names.
pub(super) fn csv_header(fields: &[UserField], out: &mut Vec<u8>) -> io::Result<()> {
    for (i, field) in fields.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(field.as_str().as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    Ok(())
}

/// Writes one user as a CSV record (RFC 4180 quoting, CRLF terminated). `scratch` is reused for
/// values that must be formatted before they can be quoted.
pub(super) fn csv_record(
    user: &User,
    fields: &[UserField],
    out: &mut Vec<u8>,
    scratch: &mut Vec<u8>,
) -> io::Result<()> {
    let start = out.len();
    for (i, &field) in fields.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        match field {
            // Lowercase hex and dashes, starting with a hex digit: never quoted or neutralised.
            UserField::Id => write_uuid(out, user),
            UserField::Email => csv_field(out, &user.email),
            UserField::Name => csv_field(out, &user.name),
            UserField::Status => out.extend_from_slice(user.status.as_str().as_bytes()),
            UserField::CreatedAt | UserField::UpdatedAt => {
                let at = if field == UserField::CreatedAt { user.created_at } else { user.updated_at };
                scratch.clear();
                write_timestamp(scratch, at);
                // Only a negative year could start with '-'; csv_field neutralises it.
                csv_field(out, std::str::from_utf8(scratch).map_err(io::Error::other)?);
            }
            UserField::Metadata => {
                scratch.clear();
                serde_json::to_writer(&mut *scratch, &user.metadata)?;
                csv_field(out, std::str::from_utf8(scratch).map_err(io::Error::other)?);
            }
        }
    }
    // A record that is one empty field would be a blank line, which readers skip: quote it.
    if out.len() == start {
        out.extend_from_slice(b"\"\"");
    }
    out.extend_from_slice(b"\r\n");
    Ok(())
}

/// One CSV field: neutralised against formulas, quoted only when it must be (RFC 4180).
///
/// Spreadsheets in locales whose list separator is `;` (German, French) split a comma-separated
/// file at every `;`, quotes or not, so each `;` starts a cell too, and so does a line break
/// (that reading does not see the commas' quotes, so a quoted line break ends the row): a
/// trigger after one (after any `"`, which that split reads as a quote) gets the same `'` as one
/// at the start.
fn csv_field(out: &mut Vec<u8>, value: &str) {
    let prefix: &[u8] = if value.starts_with(FORMULA_TRIGGERS) { b"'" } else { b"" };
    // One table lookup per byte and no branch: this scan sees every byte of every export.
    let class = value.bytes().fold(0, |class, b| class | CSV_CLASS[usize::from(b)]);
    let (quoted, inner_cell) = (class & MUST_QUOTE != 0, class & STARTS_CELL != 0);
    // The common clean cell is copied whole in one pass.
    if !quoted && !inner_cell {
        out.extend_from_slice(prefix);
        out.extend_from_slice(value.as_bytes());
        return;
    }
    // Quoted but with no `;` or line break (JSON `metadata`, say): nothing inside can start a
    // cell, so only quotes are doubled, a run at a time.
    if !inner_cell {
        out.push(b'"');
        out.extend_from_slice(prefix);
        for (i, part) in value.split('"').enumerate() {
            if i > 0 {
                out.extend_from_slice(b"\"\"");
            }
            out.extend_from_slice(part.as_bytes());
        }
        out.push(b'"');
        return;
    }
    if quoted {
        out.push(b'"');
    }
    out.extend_from_slice(prefix);
    let bytes = value.as_bytes();
    let mut copied = 0;
    let mut cell_start = false;
    for (i, &b) in bytes.iter().enumerate() {
        if cell_start && is_trigger(b) {
            out.extend_from_slice(&bytes[copied..i]);
            out.push(b'\'');
            copied = i;
        }
        cell_start = matches!(b, b';' | b'\n' | b'\r') || (cell_start && b == b'"');
        if quoted && b == b'"' {
            out.extend_from_slice(&bytes[copied..=i]);
            out.push(b'"');
            copied = i + 1;
        }
    }
    out.extend_from_slice(&bytes[copied..]);
    if quoted {
        out.push(b'"');
    }
}

/// Writes one user as a JSON object with the selected keys in the selected order.
pub(super) fn json_object(user: &User, fields: &[UserField], out: &mut Vec<u8>) -> io::Result<()> {
    out.push(b'{');
    for (i, &field) in fields.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        // Field names are plain ASCII identifiers: no escaping needed.
        out.push(b'"');
        out.extend_from_slice(field.as_str().as_bytes());
        out.extend_from_slice(b"\":");
        match field {
            UserField::Id => {
                out.push(b'"');
                write_uuid(out, user);
                out.push(b'"');
            }
            UserField::Email => serde_json::to_writer(&mut *out, &user.email)?,
            UserField::Name => serde_json::to_writer(&mut *out, &user.name)?,
            UserField::Status => {
                out.push(b'"');
                out.extend_from_slice(user.status.as_str().as_bytes());
                out.push(b'"');
            }
            UserField::CreatedAt | UserField::UpdatedAt => {
                let at = if field == UserField::CreatedAt { user.created_at } else { user.updated_at };
                out.push(b'"');
                write_timestamp(out, at);
                out.push(b'"');
            }
            UserField::Metadata => serde_json::to_writer(&mut *out, &user.metadata)?,
        }
    }
    out.push(b'}');
    Ok(())
}

/// The text a spreadsheet shows for `cell`, with the rule of [`csv_field`] restated on chars:
/// a `'` before a trigger at the start, or after a `;` or line break (and any `"`).
#[cfg(test)]
pub(super) fn neutralise_formula(cell: std::borrow::Cow<'_, str>) -> std::borrow::Cow<'_, str> {
    let mut out = String::new();
    let mut at_cell_start = true;
    let mut changed = false;
    for c in cell.chars() {
        if at_cell_start && FORMULA_TRIGGERS.contains(&c) {
            out.push('\'');
            changed = true;
        }
        at_cell_start = matches!(c, ';' | '\n' | '\r') || (at_cell_start && c == '"' && !out.is_empty());
        out.push(c);
    }
    if changed { std::borrow::Cow::Owned(out) } else { cell }
}

fn write_uuid(out: &mut Vec<u8>, user: &User) {
    out.extend_from_slice(user.id.as_uuid().hyphenated().encode_lower(&mut [0; 36]).as_bytes());
}

/// RFC 3339 in UTC with a `Z` suffix and only as many fractional digits as the value needs
/// (chrono's `SecondsFormat::AutoSi`), without allocating for years 0 to 9999. Two per row in
/// every format: digits are written by hand, as `write!` costs ten times more here.
fn write_timestamp(out: &mut Vec<u8>, at: DateTime<Utc>) {
    let date = at.date_naive();
    let year = date.year();
    let nanos = at.nanosecond();
    // Years outside 0..=9999 and leap seconds (nanos >= 1e9) are rare: chrono formats them.
    let Ok(year @ 0..=9999) = u32::try_from(year) else {
        out.extend_from_slice(at.to_rfc3339_opts(SecondsFormat::AutoSi, true).as_bytes());
        return;
    };
    if nanos >= 1_000_000_000 {
        out.extend_from_slice(at.to_rfc3339_opts(SecondsFormat::AutoSi, true).as_bytes());
        return;
    }
    let seconds = at.num_seconds_from_midnight();
    push_digits(out, year, 4);
    out.push(b'-');
    push_digits(out, date.month(), 2);
    out.push(b'-');
    push_digits(out, date.day(), 2);
    out.push(b'T');
    push_digits(out, seconds / 3600, 2);
    out.push(b':');
    push_digits(out, seconds / 60 % 60, 2);
    out.push(b':');
    push_digits(out, seconds % 60, 2);
    if nanos != 0 {
        out.push(b'.');
        match nanos {
            n if n % 1_000_000 == 0 => push_digits(out, n / 1_000_000, 3),
            n if n % 1_000 == 0 => push_digits(out, n / 1_000, 6),
            n => push_digits(out, n, 9),
        }
    }
    out.push(b'Z');
}

/// `value`'s last `width` decimal digits, zero-padded (`width` <= 10).
fn push_digits(out: &mut Vec<u8>, mut value: u32, width: usize) {
    let mut digits = [b'0'; 10];
    for slot in digits[..width].iter_mut().rev() {
        *slot = b'0' + (value % 10) as u8;
        value /= 10;
    }
    out.extend_from_slice(&digits[..width]);
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    #[test]
    fn timestamps_match_chrono_auto_si() {
        let base = Utc.with_ymd_and_hms(2024, 2, 29, 23, 59, 7).unwrap();
        for nanos in [0, 1, 1_000, 120_000, 5_000_000, 999_999_999, 123_456_789] {
            let at = base + chrono::Duration::nanoseconds(nanos);
            let mut out = Vec::new();
            write_timestamp(&mut out, at);
            assert_eq!(String::from_utf8(out).unwrap(), at.to_rfc3339_opts(SecondsFormat::AutoSi, true));
        }
        for at in [
            Utc.with_ymd_and_hms(-44, 3, 15, 12, 0, 0).unwrap(),
            Utc.with_ymd_and_hms(0, 1, 1, 0, 0, 0).unwrap(),
            Utc.with_ymd_and_hms(9999, 12, 31, 23, 59, 59).unwrap(),
            Utc.with_ymd_and_hms(10_000, 1, 1, 0, 0, 0).unwrap(),
            Utc.with_ymd_and_hms(1970, 1, 1, 0, 0, 0).unwrap(),
            Utc.with_ymd_and_hms(2026, 11, 28, 9, 5, 3).unwrap() + chrono::Duration::nanoseconds(1_000_001),
        ] {
            let mut out = Vec::new();
            write_timestamp(&mut out, at);
            assert_eq!(String::from_utf8(out).unwrap(), at.to_rfc3339_opts(SecondsFormat::AutoSi, true));
        }
    }

    proptest::proptest! {
        #[test]
        fn any_timestamp_matches_chrono(secs in -62_135_596_800i64..253_402_300_800, nanos in 0u32..1_000_000_000) {
            let at = DateTime::<Utc>::from_timestamp(secs, nanos).unwrap();
            let mut out = Vec::new();
            write_timestamp(&mut out, at);
            proptest::prop_assert_eq!(String::from_utf8(out).unwrap(), at.to_rfc3339_opts(SecondsFormat::AutoSi, true));
        }
    }
}
