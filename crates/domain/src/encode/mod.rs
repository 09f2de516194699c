//! Streaming encoders that turn a tenant's users into the bytes of an export file: CSV, JSON or
//! NDJSON, optionally gzip-compressed.
//!
//! Everything is written into in-memory buffers. The caller moves the bytes on in chunks with
//! [`ExportEncoder::take_output`], so memory does not grow with the number of users.

mod row;
#[cfg(test)]
mod tests;

use std::fmt;
use std::io::{self, Write};
use std::mem;

use flate2::write::GzEncoder;

use crate::request::{Compression, ExportFormat, FieldSelection};
use crate::user::User;

/// Streams users into the bytes of an export file. Memory stays bounded: the caller drains the
/// output with take_output() whenever buffered_len() passes its chunk size.
pub struct ExportEncoder {
    format: ExportFormat,
    compression: Compression,
    fields: FieldSelection,
    sink: Sink,
    /// One encoded row, reused between rows so a warm encoder does not allocate per row, and so
    /// each row reaches the (possibly compressing) sink in a single write.
    row: Vec<u8>,
    /// Reused for values formatted before they are quoted (CSV timestamps and metadata).
    scratch: Vec<u8>,
    rows_written: u64,
    /// Set once a write has failed: the output is then incomplete, and later calls must say so
    /// rather than produce a file that looks whole.
    failed: bool,
    /// An error from `new`, which cannot return one; reported by the next call.
    deferred_error: Option<io::Error>,
}

impl ExportEncoder {
    /// Creates an encoder and writes the preamble: the CSV header row, or `[` for JSON.
    pub fn new(format: ExportFormat, compression: Compression, fields: FieldSelection) -> Self {
        let mut encoder = Self {
            format,
            compression,
            fields,
            sink: Sink::new(compression),
            row: Vec::new(),
            scratch: Vec::new(),
            rows_written: 0,
            failed: false,
            deferred_error: None,
        };
        if let Err(err) = encoder.write_preamble() {
            encoder.failed = true;
            encoder.deferred_error = Some(err);
        }
        encoder
    }

    /// Appends one user as the next row (CSV), array element (JSON) or line (NDJSON).
    pub fn write_user(&mut self, user: &User) -> io::Result<()> {
        self.check_not_failed()?;
        let result = self.encode_user(user);
        self.failed = result.is_err();
        result
    }

    /// Bytes currently waiting in the output buffer. With gzip this counts compressed bytes only;
    /// the compressor's own working memory is bounded by its window, not by the export size.
    pub fn buffered_len(&self) -> usize {
        self.sink.output().len()
    }

    /// Takes the bytes produced so far. Concatenating every taken chunk and the bytes returned by
    /// [`finish`](Self::finish) gives the whole file (for gzip, one valid gzip stream).
    pub fn take_output(&mut self) -> Vec<u8> {
        self.sink.take_output()
    }

    /// Closes the JSON array and the gzip stream, and returns the bytes not yet taken.
    pub fn finish(mut self) -> io::Result<Vec<u8>> {
        self.check_not_failed()?;
        if self.format == ExportFormat::Json {
            let close: &[u8] = if self.rows_written == 0 { b"]\n" } else { b"\n]\n" };
            self.sink.write_all(close)?;
        }
        self.sink.finish()
    }

    /// Users written so far.
    pub fn rows_written(&self) -> u64 {
        self.rows_written
    }

    fn write_preamble(&mut self) -> io::Result<()> {
        match self.format {
            ExportFormat::Csv => {
                self.row.clear();
                row::csv_header(self.fields.fields(), &mut self.row)?;
                self.sink.write_all(&self.row)
            }
            ExportFormat::Json => self.sink.write_all(b"["),
            ExportFormat::Ndjson => Ok(()),
        }
    }

    fn encode_user(&mut self, user: &User) -> io::Result<()> {
        let fields = self.fields.fields();
        self.row.clear();
        match self.format {
            ExportFormat::Csv => row::csv_record(user, fields, &mut self.row, &mut self.scratch)?,
            ExportFormat::Json => {
                // Separators go before each element so the last one needs no trailing comma.
                let separator: &[u8] = if self.rows_written == 0 { b"\n" } else { b",\n" };
                self.row.extend_from_slice(separator);
                row::json_object(user, fields, &mut self.row)?;
            }
            ExportFormat::Ndjson => {
                row::json_object(user, fields, &mut self.row)?;
                self.row.push(b'\n');
            }
        }
        self.sink.write_all(&self.row)?;
        self.rows_written += 1;
        Ok(())
    }

    fn check_not_failed(&mut self) -> io::Result<()> {
        if !self.failed {
            return Ok(());
        }
        Err(self.deferred_error.take().unwrap_or_else(|| {
            io::Error::other("an earlier write failed, so the export output is incomplete")
        }))
    }
}

impl fmt::Debug for ExportEncoder {
    // Manual so that debug output shows the state, not the buffered file bytes.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExportEncoder")
            .field("format", &self.format)
            .field("compression", &self.compression)
            .field("fields", &self.fields)
            .field("rows_written", &self.rows_written)
            .field("buffered_len", &self.buffered_len())
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}

/// Where encoded bytes go: straight into a buffer, or through gzip into one.
enum Sink {
    Plain(Vec<u8>),
    // Boxed: the compressor's state is large and an encoder lives for the whole export.
    Gzip(Box<GzEncoder<Vec<u8>>>),
}

impl Sink {
    fn new(compression: Compression) -> Self {
        match compression {
            Compression::None => Self::Plain(Vec::new()),
            Compression::Gzip => {
                Self::Gzip(Box::new(GzEncoder::new(Vec::new(), flate2::Compression::default())))
            }
        }
    }

    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self {
            Self::Plain(out) => {
                out.extend_from_slice(bytes);
                Ok(())
            }
            Self::Gzip(gz) => gz.write_all(bytes),
        }
    }

    fn output(&self) -> &Vec<u8> {
        match self {
            Self::Plain(out) => out,
            Self::Gzip(gz) => gz.get_ref(),
        }
    }

    fn take_output(&mut self) -> Vec<u8> {
        // The gzip encoder only ever appends to its inner buffer, so draining it between writes
        // leaves the stream intact.
        match self {
            Self::Plain(out) => mem::take(out),
            Self::Gzip(gz) => mem::take(gz.get_mut()),
        }
    }

    fn finish(self) -> io::Result<Vec<u8>> {
        match self {
            Self::Plain(out) => Ok(out),
            Self::Gzip(gz) => gz.finish(),
        }
    }
}
