use std::borrow::Cow;
use std::fmt;
use std::io::Read;

use chrono::{DateTime, SecondsFormat, Utc};
use proptest::prelude::*;
use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::{Map, Value, json};

use super::row::neutralise_formula;
use super::{ExportEncoder, gzip_member};
use crate::checkpoint::EncoderState;
use crate::ids::UserId;
use crate::request::{Compression, ExportFormat, FieldSelection};
use crate::user::{User, UserField, UserStatus};

const COMPRESSIONS: [Compression; 2] = [Compression::None, Compression::Gzip];

/// 2024-01-31T12:00:00.123456789Z: has a fraction, so AutoSi prints nanoseconds.
fn created() -> DateTime<Utc> {
    DateTime::from_timestamp(1_706_702_400, 123_456_789).expect("valid timestamp")
}

/// 2024-02-01T00:00:00Z: whole seconds, so AutoSi prints no fraction.
fn updated() -> DateTime<Utc> {
    DateTime::from_timestamp(1_706_745_600, 0).expect("valid timestamp")
}

fn user(n: u128, email: &str, name: &str, metadata: Value) -> User {
    let Value::Object(metadata) = metadata else { panic!("metadata must be an object") };
    User {
        id: UserId::from_uuid(uuid::Uuid::from_u128(n)),
        email: email.to_owned(),
        name: name.to_owned(),
        status: UserStatus::Active,
        created_at: created(),
        updated_at: updated(),
        metadata,
    }
}

fn selection(fields: &[UserField]) -> FieldSelection {
    // The tuple field is private to `request`; serde is the public way in.
    serde_json::from_value(serde_json::to_value(fields).expect("fields serialize")).expect("valid selection")
}

/// Encodes `users`, draining the output after the preamble and after every user, and returns the
/// concatenation of all chunks and the bytes from `finish`, decompressed if gzip.
fn encode(
    format: ExportFormat,
    compression: Compression,
    fields: &FieldSelection,
    users: &[User],
) -> Vec<u8> {
    let mut encoder = ExportEncoder::new(format, fields.clone());
    let mut file = encoder.take_output();
    assert_eq!(encoder.buffered_len(), 0);
    for u in users {
        encoder.write_user(u).expect("write_user");
        file.extend(encoder.take_output());
    }
    assert_eq!(encoder.rows_written(), users.len() as u64);
    file.extend(encoder.finish().expect("finish"));
    match compression {
        Compression::None => file,
        Compression::Gzip => gunzip(&gzip_member(&file).expect("compress")),
    }
}

/// Decompresses every gzip member and fails on anything that is not one.
fn gunzip(bytes: &[u8]) -> Vec<u8> {
    let mut decoder = flate2::bufread::MultiGzDecoder::new(bytes);
    let mut plain = Vec::new();
    decoder.read_to_end(&mut plain).expect("a valid gzip stream");
    plain
}

/// The file as the service writes it: cut into segments of `segment_bytes`, each one gzip
/// member if compressed; with a fresh encoder resumed from the last segment boundary at each
/// row in `interruptions`.
fn segmented(
    format: ExportFormat,
    compression: Compression,
    fields: &FieldSelection,
    users: &[User],
    segment_bytes: u64,
    interruptions: &[usize],
) -> Vec<u8> {
    let seal = |plain: Vec<u8>| match compression {
        Compression::None => plain,
        Compression::Gzip => gzip_member(&plain).expect("compress"),
    };
    let mut file = Vec::new();
    let mut encoder = ExportEncoder::new(format, fields.clone());
    let mut boundary = (0, EncoderState::default(), 0);
    let mut row = 0;
    let mut pending: Vec<usize> = interruptions.to_vec();
    while row < users.len() {
        if let Some(i) = pending.iter().position(|&at| at == row) {
            // Each interruption happens once: the attempt after it gets past that row.
            pending.swap_remove(i);
            // Lose everything after the last boundary, as a crashed attempt does.
            let (at, state, len) = boundary;
            file.truncate(len);
            encoder = ExportEncoder::resume(format, fields.clone(), state);
            row = at;
        }
        encoder.write_user(&users[row]).expect("write_user");
        row += 1;
        if encoder.segment_full(segment_bytes) {
            file.extend(seal(encoder.take_output()));
            boundary = (row, encoder.state(), file.len());
        }
    }
    file.extend(seal(encoder.finish().expect("finish")));
    file
}

/// A JSON object with its keys in document order (a serde_json `Map` may sort them).
#[derive(Debug, Clone, PartialEq)]
struct Ordered(Vec<(String, Value)>);

impl<'de> Deserialize<'de> for Ordered {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct OrderedVisitor;
        impl<'de> Visitor<'de> for OrderedVisitor {
            type Value = Ordered;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Ordered, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = map.next_entry()? {
                    entries.push(entry);
                }
                Ok(Ordered(entries))
            }
        }
        deserializer.deserialize_map(OrderedVisitor)
    }
}

/// Parses an export file with a real parser for its format into rows of (column, value). CSV
/// cells become strings, except metadata, which is parsed as the JSON text it holds.
fn decode(format: ExportFormat, fields: &FieldSelection, file: &[u8]) -> Vec<Ordered> {
    let names: Vec<&str> = fields.fields().iter().map(|f| f.as_str()).collect();
    match format {
        ExportFormat::Csv => {
            assert!(!file.starts_with(b"\xEF\xBB\xBF"), "no BOM");
            let mut reader = csv::ReaderBuilder::new().from_reader(file);
            let headers = reader.headers().expect("header row").clone();
            assert_eq!(headers.iter().collect::<Vec<_>>(), names);
            reader
                .records()
                .map(|record| {
                    let record = record.expect("valid CSV record");
                    assert_eq!(record.len(), names.len());
                    Ordered(
                        names
                            .iter()
                            .zip(record.iter())
                            .map(|(&name, cell)| {
                                let value = if name == "metadata" {
                                    serde_json::from_str(cell).expect("metadata is JSON")
                                } else {
                                    Value::String(cell.to_owned())
                                };
                                (name.to_owned(), value)
                            })
                            .collect(),
                    )
                })
                .collect()
        }
        ExportFormat::Json => serde_json::from_slice(file).expect("a JSON array of objects"),
        ExportFormat::Ndjson => {
            let text = std::str::from_utf8(file).expect("UTF-8");
            if !text.is_empty() {
                assert!(text.ends_with('\n'), "every line is terminated");
            }
            text.lines().map(|line| serde_json::from_str(line).expect("one object")).collect()
        }
    }
}

fn rfc3339(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// What `decode` should give back for `users`, derived from the users directly.
fn expected(format: ExportFormat, fields: &FieldSelection, users: &[User]) -> Vec<Ordered> {
    users
        .iter()
        .map(|u| {
            Ordered(
                fields
                    .fields()
                    .iter()
                    .map(|&field| {
                        let text = match field {
                            UserField::Id => u.id.as_uuid().hyphenated().to_string(),
                            UserField::Email => u.email.clone(),
                            UserField::Name => u.name.clone(),
                            UserField::Status => u.status.as_str().to_owned(),
                            UserField::CreatedAt => rfc3339(u.created_at),
                            UserField::UpdatedAt => rfc3339(u.updated_at),
                            UserField::Metadata => {
                                let metadata = Value::Object(u.metadata.clone());
                                // In CSV the JSON text is a cell like any other: a trigger after
                                // a `;` inside a string gets its `'` (still valid JSON).
                                let metadata = match format {
                                    ExportFormat::Csv => {
                                        serde_json::from_str(&neutralised(&metadata.to_string()))
                                            .expect("neutralised metadata is JSON")
                                    }
                                    ExportFormat::Json | ExportFormat::Ndjson => metadata,
                                };
                                return (field.as_str().to_owned(), metadata);
                            }
                        };
                        let text = match format {
                            ExportFormat::Csv => neutralised(&text),
                            ExportFormat::Json | ExportFormat::Ndjson => text,
                        };
                        (field.as_str().to_owned(), Value::String(text))
                    })
                    .collect(),
            )
        })
        .collect()
}

const TRIGGERS: [char; 6] = ['=', '+', '-', '@', '\t', '\r'];

/// The formula rule restated independently of the implementation: the text is cut after every
/// `;` and line break (where a `;`-locale spreadsheet starts a cell); a piece that starts with a
/// trigger (the first piece) or with quotes and then a trigger (the others) gets a `'` before it.
fn neutralised(text: &str) -> String {
    text.split_inclusive([';', '\n', '\r'])
        .enumerate()
        .map(|(i, piece)| {
            let body = if i == 0 { piece } else { piece.trim_start_matches('"') };
            let quotes = &piece[..piece.len() - body.len()];
            if body.starts_with(TRIGGERS) { format!("{quotes}'{body}") } else { piece.to_owned() }
        })
        .collect()
}

fn assert_round_trip(fields: &FieldSelection, users: &[User]) {
    for format in ExportFormat::ALL {
        for compression in COMPRESSIONS {
            let file = encode(format, compression, fields, users);
            assert_eq!(
                decode(format, fields, &file),
                expected(format, fields, users),
                "{format:?} {compression:?}"
            );
        }
    }
}

fn sample_users() -> Vec<User> {
    let names = [
        "plain",
        "",
        "comma, inside",
        "\"quoted\" and \"\"doubled\"\"",
        "line\nbreak",
        "carriage\rreturn",
        "crlf\r\nin the middle",
        "trailing newline\n",
        "  padded  ",
        "emoji 👩‍👩‍👧‍👦🎉",
        "مرحبا بالعالم",
        "e\u{301}a\u{308} combining",
        "line\u{2028}separator",
        "nul\0byte",
        "'already quoted",
        "a=b",
        "=1+1",
        "+x",
        "-x",
        "@x",
        "\tx",
        "\rx",
    ];
    names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let meta = json!({"note": name, "n": i, "nested": {"list": [name, null, true]}});
            user(i as u128 + 1, &format!("{name}@example.com"), name, meta)
        })
        .collect()
}

#[test]
fn csv_bytes_are_exact() {
    let u = user(42, "a@example.com", "Doe, \"Jo\"", json!({"plan": "pro", "seats": 3}));
    let file = encode(ExportFormat::Csv, Compression::None, &FieldSelection::all(), &[u]);
    assert_eq!(
        String::from_utf8(file).expect("UTF-8"),
        "id,email,name,status,created_at,updated_at,metadata\r\n\
         00000000-0000-0000-0000-00000000002a,a@example.com,\"Doe, \"\"Jo\"\"\",active,\
         2024-01-31T12:00:00.123456789Z,2024-02-01T00:00:00Z,\
         \"{\"\"plan\"\":\"\"pro\"\",\"\"seats\"\":3}\"\r\n"
    );
}

#[test]
fn json_and_ndjson_bytes_are_exact() {
    let fields = selection(&[UserField::Email, UserField::Id, UserField::Metadata]);
    let users =
        [user(1, "a@example.com", "A", json!({"k": [1, "x"]})), user(2, "=b@example.com", "B", json!({}))];
    let a = concat!(
        r#"{"email":"a@example.com","id":"00000000-0000-0000-0000-000000000001","#,
        r#""metadata":{"k":[1,"x"]}}"#
    );
    let b = concat!(
        r#"{"email":"=b@example.com","id":"00000000-0000-0000-0000-000000000002","#,
        r#""metadata":{}}"#
    );
    let json = encode(ExportFormat::Json, Compression::None, &fields, &users);
    assert_eq!(String::from_utf8(json).expect("UTF-8"), format!("[\n{a},\n{b}\n]\n"));
    let ndjson = encode(ExportFormat::Ndjson, Compression::None, &fields, &users);
    assert_eq!(String::from_utf8(ndjson).expect("UTF-8"), format!("{a}\n{b}\n"));
}

#[test]
fn tricky_strings_round_trip_in_every_format() {
    assert_round_trip(&FieldSelection::all(), &sample_users());
}

#[test]
fn formula_cells_are_neutralised_in_csv_only() {
    let cases = [
        ("=1+1", "'=1+1"),
        ("+x", "'+x"),
        ("-x", "'-x"),
        ("@x", "'@x"),
        ("\tx", "'\tx"),
        ("\rx", "'\rx"),
        ("a=b", "a=b"),
        ("x-", "x-"),
        (" =x", " =x"),
        ("", ""),
        ("x;=cmd|' /C calc'!A0;", "x;'=cmd|' /C calc'!A0;"),
        ("a;+1", "a;'+1"),
        ("a;-1", "a;'-1"),
        ("a;@SUM(1)", "a;'@SUM(1)"),
        ("a;\t=1", "a;'\t=1"),
        ("a;\"=1", "a;\"'=1"),
        ("a;;=1", "a;;'=1"),
        ("=a;=b", "'=a;'=b"),
        ("a\n=1", "a\n'=1"),
        ("a;b", "a;b"),
        ("a; =1", "a; =1"),
        ("\"=1", "\"=1"),
    ];
    let fields = selection(&[UserField::Name, UserField::Email]);
    let users: Vec<User> = (0..).zip(cases).map(|(n, (name, _))| user(n, name, name, json!({}))).collect();
    for compression in COMPRESSIONS {
        let file = encode(ExportFormat::Csv, compression, &fields, &users);
        let mut reader = csv::Reader::from_reader(file.as_slice());
        let cells: Vec<Vec<String>> =
            reader.records().map(|r| r.expect("record").iter().map(str::to_owned).collect()).collect();
        let want: Vec<Vec<String>> =
            cases.iter().map(|(_, out)| vec![(*out).to_owned(), (*out).to_owned()]).collect();
        assert_eq!(cells, want);
    }
    // JSON consumers get the data unchanged: the prefix only exists for spreadsheets.
    let file = encode(ExportFormat::Json, Compression::None, &fields, &users);
    let rows: Vec<Ordered> = serde_json::from_slice(&file).expect("JSON");
    for (row, (name, _)) in rows.iter().zip(cases) {
        assert_eq!(row.0[0], ("name".to_owned(), Value::String(name.to_owned())));
    }
}

#[test]
fn neutralise_formula_leaves_safe_cells_borrowed() {
    assert!(matches!(neutralise_formula(Cow::Borrowed("safe;x")), Cow::Borrowed("safe;x")));
    assert_eq!(neutralise_formula(Cow::Borrowed("-1")), "'-1");
    assert_eq!(neutralise_formula(Cow::Borrowed("a;\"@1")), "a;\"'@1");
}

#[test]
fn semicolon_cells_bytes_are_exact() {
    let fields = selection(&[UserField::Name, UserField::Status]);
    let users = [
        user(1, "a@example.com", "x;=cmd|' /C calc'!A0;", json!({})),
        user(2, "b@example.com", "q\";=1,", json!({})),
    ];
    let file = encode(ExportFormat::Csv, Compression::None, &fields, &users);
    assert_eq!(
        String::from_utf8(file).expect("UTF-8"),
        "name,status\r\nx;'=cmd|' /C calc'!A0;,active\r\n\"q\"\";'=1,\",active\r\n"
    );
}

/// Names that would run as formulas in a spreadsheet that splits at `;`.
const SEMICOLON_ATTACKS: [&str; 9] = [
    "x;=cmd|' /C calc'!A0;",
    "a;+1",
    "a;-1",
    "a;@SUM(1)",
    "a;\t=1",
    "a;\r=1",
    "a;\"=1",
    "a\n=HYPERLINK(\"http://x\")",
    "=1;\"\"@2",
];

/// Python's csv module reads the export with `;` as the delimiter, as a spreadsheet in a
/// `;`-locale does, and no cell may start with a formula trigger. Needs `python3` on PATH.
#[test]
fn python_reading_with_semicolons_finds_no_formula_cell() {
    let fields = FieldSelection::all();
    let mut users: Vec<User> = (0..)
        .zip(SEMICOLON_ATTACKS)
        .map(|(n, name)| user(n, &format!("{name}@example.com"), name, json!({"note": name})))
        .collect();
    users.extend(sample_users());
    let file = encode(ExportFormat::Csv, Compression::None, &fields, &users);
    let path = std::env::temp_dir().join(format!("userexport-semicolon-{}.csv", std::process::id()));
    std::fs::write(&path, &file).expect("write the export");
    let script = r#"
import csv, sys
triggers = ("=", "+", "-", "@", "\t", "\r")
cells = bad = 0
with open(sys.argv[1], newline="", encoding="utf-8") as f:
    for row in csv.reader(f, delimiter=";"):
        for cell in row:
            cells += 1
            if cell.startswith(triggers):
                bad += 1
                print("formula cell:", repr(cell))
print("cells", cells)
sys.exit(1 if bad else 0)
"#;
    let output = std::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(&path)
        .output()
        .expect("python3 must be installed to run this test");
    let _ = std::fs::remove_file(&path);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}{}", String::from_utf8_lossy(&output.stderr));
    // The reading did split cells: more than one per row.
    let cells: usize = stdout.trim().trim_start_matches("cells ").parse().expect("a cell count");
    assert!(cells > users.len() * 2, "{stdout}");

    // Without the rule the same reading finds formulas: the check is not vacuous.
    let mut unsafe_csv = b"name\r\n".to_vec();
    unsafe_csv.extend_from_slice(b"a;=1\r\n");
    std::fs::write(&path, &unsafe_csv).expect("write");
    let output = std::process::Command::new("python3").arg("-c").arg(script).arg(&path).output();
    let _ = std::fs::remove_file(&path);
    assert!(!output.expect("python3").status.success());
}

/// Cells as a spreadsheet in a `;`-locale reads them: a new cell after every `;` and line
/// break, quotes at a cell's start skipped (a simplification of quote handling that can only
/// find more cell starts than a real reader).
fn semicolon_cell_starts(file: &str) -> Vec<&str> {
    let mut starts = vec![file];
    for (i, c) in file.char_indices() {
        if matches!(c, ';' | '\n' | '\r') {
            starts.push(file[i + c.len_utf8()..].trim_start_matches('"'));
        }
    }
    starts
}

#[test]
fn field_selection_and_order_are_respected() {
    let fields = selection(&[UserField::Metadata, UserField::Name, UserField::Id]);
    let users = sample_users();
    assert_round_trip(&fields, &users);

    let csv = encode(ExportFormat::Csv, Compression::None, &fields, &users[..1]);
    let text = String::from_utf8(csv).expect("UTF-8");
    assert!(text.starts_with("metadata,name,id\r\n"), "{text}");
    assert!(!text.contains("example.com"), "email was not selected: {text}");
}

#[test]
fn single_empty_column_still_round_trips() {
    // A record of one empty field must not become a blank line, which CSV readers skip.
    let fields = selection(&[UserField::Name]);
    let users = [user(1, "a@example.com", "", json!({}))];
    assert_round_trip(&fields, &users);
    let csv = encode(ExportFormat::Csv, Compression::None, &fields, &users);
    assert_eq!(csv, b"name\r\n\"\"\r\n");
}

#[test]
fn empty_export_is_valid_in_every_format() {
    let fields = FieldSelection::all();
    assert_round_trip(&fields, &[]);
    let plain = |format| encode(format, Compression::None, &fields, &[]);
    assert_eq!(plain(ExportFormat::Csv), b"id,email,name,status,created_at,updated_at,metadata\r\n");
    assert_eq!(plain(ExportFormat::Json), b"[]\n");
    assert_eq!(plain(ExportFormat::Ndjson), b"");
}

#[test]
fn gzip_members_of_any_segmentation_decompress_to_the_plain_file() {
    let users = sample_users();
    let fields = FieldSelection::all();
    for format in ExportFormat::ALL {
        let plain = encode(format, Compression::None, &fields, &users);
        for segment_bytes in [1, 64, 200, 1 << 20] {
            let file = segmented(format, Compression::Gzip, &fields, &users, segment_bytes, &[]);
            assert_eq!(gunzip(&file), plain, "{format:?} {segment_bytes}");
        }
    }
}

#[test]
fn a_gzip_member_is_the_same_bytes_every_time() {
    let plain = encode(ExportFormat::Csv, Compression::None, &FieldSelection::all(), &sample_users());
    let member = gzip_member(&plain).expect("compress");
    assert_eq!(member, gzip_member(&plain).expect("compress"));
    // No mtime, no name: the header is fixed.
    assert_eq!(&member[..10], &[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff]);
}

#[test]
fn buffered_len_tracks_the_output_buffer() {
    let mut encoder = ExportEncoder::new(ExportFormat::Csv, FieldSelection::all());
    let header = encoder.buffered_len();
    assert_eq!(header, "id,email,name,status,created_at,updated_at,metadata\r\n".len());
    encoder.write_user(&sample_users()[0]).expect("write_user");
    assert!(encoder.buffered_len() > header);
    let before = encoder.buffered_len();
    assert_eq!(encoder.take_output().len(), before);
    assert_eq!(encoder.buffered_len(), 0);
    assert_eq!(encoder.rows_written(), 1);
    assert!(format!("{encoder:?}").contains("rows_written: 1"));
}

/// Encodes many users while draining every 64 KiB, as the service does, and checks that the
/// buffer never holds more than one chunk plus what a single write can add.
#[test]
fn memory_stays_bounded_while_draining() {
    const USERS: u128 = 200_000;
    const CHUNK: usize = 64 * 1024;
    // Rows of these users are well under this; it bounds what one plain write adds.
    const MAX_ROW: usize = 1024;

    let mut template = user(0, "someone@example.com", "Some One", json!({"plan": "pro"}));
    for format in ExportFormat::ALL {
        {
            let mut encoder = ExportEncoder::new(format, FieldSelection::all());
            let mut peak = encoder.buffered_len();
            let mut total = 0;
            let mut drains = 0;
            for n in 0..USERS {
                template.id = UserId::from_uuid(uuid::Uuid::from_u128(n));
                template.name = format!("User {n}");
                template.metadata.insert("n".to_owned(), Value::from(n as u64));
                encoder.write_user(&template).expect("write_user");
                peak = peak.max(encoder.buffered_len());
                if encoder.buffered_len() > CHUNK {
                    total += encoder.take_output().len();
                    drains += 1;
                }
            }
            total += encoder.finish().expect("finish").len();
            assert!(peak <= CHUNK + MAX_ROW, "{format:?}: peak {peak}");
            // The export is far larger than the peak, so the bound is not an accident of size.
            assert!(total > 8 * peak, "{format:?}: total {total}, peak {peak}");
            assert!(drains > 8, "{format:?}: {drains} drains");
        }
    }
}

fn arb_string() -> impl Strategy<Value = String> {
    // Arbitrary text, sometimes led by a character that matters to CSV or to the formula rule.
    let lead =
        prop::sample::select(vec!["", "", "=", "+", "-", "@", "\t", "\r", "'", "\"", ",", "\n", ";=", ";\""]);
    (lead, any::<String>()).prop_map(|(lead, rest)| format!("{lead}{rest}"))
}

fn arb_json() -> impl Strategy<Value = Value> {
    // No floats: serde_json's default float parsing is not guaranteed to round-trip exactly.
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        arb_string().prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(arb_string(), inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn arb_user() -> impl Strategy<Value = User> {
    let instant = (0_i64..4_102_444_800, 0_u32..1_000_000_000)
        .prop_map(|(secs, nanos)| DateTime::from_timestamp(secs, nanos).unwrap_or_default());
    (
        any::<u128>(),
        arb_string(),
        arb_string(),
        prop::sample::select(UserStatus::ALL.to_vec()),
        instant.clone(),
        instant,
        prop::collection::btree_map(arb_string(), arb_json(), 0..4),
    )
        .prop_map(|(id, email, name, status, created_at, updated_at, metadata)| User {
            id: UserId::from_uuid(uuid::Uuid::from_u128(id)),
            email,
            name,
            status,
            created_at,
            updated_at,
            metadata: metadata.into_iter().collect::<Map<String, Value>>(),
        })
}

fn arb_fields() -> impl Strategy<Value = FieldSelection> {
    prop::sample::subsequence(UserField::ALL.to_vec(), 1..=UserField::ALL.len())
        .prop_shuffle()
        .prop_map(|fields| selection(&fields))
}

proptest! {
    /// Whatever the users hold, no cell of the CSV starts with a formula trigger, however a
    /// spreadsheet cuts it: at commas (checked by the round trip) or at `;` and line breaks.
    #[test]
    fn no_cell_starts_with_a_trigger_when_split_at_semicolons(
        users in prop::collection::vec(arb_user(), 0..5),
        attack in prop::sample::select(SEMICOLON_ATTACKS.to_vec()),
    ) {
        let mut users = users;
        if let Some(first) = users.first_mut() {
            first.name = format!("{}{attack}", first.name);
        }
        let file = encode(ExportFormat::Csv, Compression::None, &FieldSelection::all(), &users);
        let text = String::from_utf8(file).expect("UTF-8");
        for cell in semicolon_cell_starts(&text) {
            // The record terminator's `\r` is where a row ends, not a cell's content.
            if cell.starts_with("\r\n") || cell.is_empty() {
                continue;
            }
            prop_assert!(!cell.starts_with(TRIGGERS), "cell {:?}", &cell[..cell.len().min(20)]);
        }
    }
}

proptest! {
    #[test]
    fn arbitrary_users_round_trip(
        fields in arb_fields(),
        users in prop::collection::vec(arb_user(), 0..5),
    ) {
        assert_round_trip(&fields, &users);
    }
}

proptest! {
    /// The domain half of resume: whatever rows an export is interrupted at, going on from the
    /// last segment boundary gives the uninterrupted file's bytes (the service's property test
    /// adds the storage and the record).
    #[test]
    fn resuming_at_the_last_segment_boundary_gives_the_same_bytes(
        fields in arb_fields(),
        users in prop::collection::vec(arb_user(), 0..40),
        segment_bytes in 1u64..400,
        interruptions in prop::collection::vec(0usize..40, 0..4),
    ) {
        for format in ExportFormat::ALL {
            for compression in COMPRESSIONS {
                let whole = segmented(format, compression, &fields, &users, segment_bytes, &[]);
                let resumed = segmented(format, compression, &fields, &users, segment_bytes, &interruptions);
                prop_assert_eq!(&resumed, &whole, "{:?} {:?}", format, compression);
                let plain = encode(format, Compression::None, &fields, &users);
                let decoded = match compression {
                    Compression::None => whole,
                    Compression::Gzip => gunzip(&whole),
                };
                prop_assert_eq!(decoded, plain);
            }
        }
    }
}
