//! Encoding of one header or user into the bytes of one row, per format.

use std::borrow::Cow;
use std::io;

use chrono::{DateTime, SecondsFormat, Utc};

use crate::user::{User, UserField};

/// Leading characters that make spreadsheet applications evaluate a cell as a formula (OWASP
/// "CSV injection").
const FORMULA_TRIGGERS: [char; 6] = ['=', '+', '-', '@', '\t', '\r'];

/// Capacity of the csv writer's internal buffer. A writer is built per row, so this is kept small;
/// longer rows just flush it more than once.
const CSV_WRITER_BUFFER: usize = 1024;

/// Writes the CSV header row: the selected field names.
pub(super) fn csv_header(fields: &[UserField], out: &mut Vec<u8>) -> io::Result<()> {
    let mut writer = csv_writer(out);
    writer.write_record(fields.iter().map(|field| field.as_str()))?;
    // Moves the bytes out of the csv writer's own buffer into `out`.
    writer.flush()
}

/// Writes one user as a CSV record (RFC 4180 quoting, CRLF terminated).
pub(super) fn csv_record(user: &User, fields: &[UserField], out: &mut Vec<u8>) -> io::Result<()> {
    let mut writer = csv_writer(out);
    for &field in fields {
        writer.write_field(neutralise_formula(csv_cell(user, field)?).as_bytes())?;
    }
    writer.write_record(None::<&[u8]>)?;
    writer.flush()
}

/// Writes one user as a JSON object with the selected keys in the selected order.
pub(super) fn json_object(user: &User, fields: &[UserField], out: &mut Vec<u8>) -> io::Result<()> {
    out.push(b'{');
    for (i, &field) in fields.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        serde_json::to_writer(&mut *out, field.as_str())?;
        out.push(b':');
        match field {
            UserField::Id => serde_json::to_writer(&mut *out, &user.id.to_string())?,
            UserField::Email => serde_json::to_writer(&mut *out, &user.email)?,
            UserField::Name => serde_json::to_writer(&mut *out, &user.name)?,
            UserField::Status => serde_json::to_writer(&mut *out, user.status.as_str())?,
            UserField::CreatedAt => serde_json::to_writer(&mut *out, &timestamp(user.created_at))?,
            UserField::UpdatedAt => serde_json::to_writer(&mut *out, &timestamp(user.updated_at))?,
            UserField::Metadata => serde_json::to_writer(&mut *out, &user.metadata)?,
        }
    }
    out.push(b'}');
    Ok(())
}

/// Prefixes a cell that a spreadsheet would run as a formula with `'`, which makes it text.
pub(super) fn neutralise_formula(cell: Cow<'_, str>) -> Cow<'_, str> {
    if cell.starts_with(FORMULA_TRIGGERS) { Cow::Owned(format!("'{cell}")) } else { cell }
}

fn csv_writer(out: &mut Vec<u8>) -> csv::Writer<&mut Vec<u8>> {
    csv::WriterBuilder::new()
        .terminator(csv::Terminator::CRLF)
        .buffer_capacity(CSV_WRITER_BUFFER)
        .from_writer(out)
}

fn csv_cell(user: &User, field: UserField) -> io::Result<Cow<'_, str>> {
    Ok(match field {
        UserField::Id => Cow::Owned(user.id.to_string()),
        UserField::Email => Cow::Borrowed(&user.email),
        UserField::Name => Cow::Borrowed(&user.name),
        UserField::Status => Cow::Borrowed(user.status.as_str()),
        UserField::CreatedAt => Cow::Owned(timestamp(user.created_at)),
        UserField::UpdatedAt => Cow::Owned(timestamp(user.updated_at)),
        UserField::Metadata => Cow::Owned(serde_json::to_string(&user.metadata)?),
    })
}

/// RFC 3339 in UTC with a `Z` suffix, with only as many fractional digits as the value needs.
fn timestamp(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}
