//! Every parser of untrusted input in the domain, fed arbitrary bytes and structure-aware
//! values: it answers with a value or a typed error, never a panic, and its errors are bounded.

use chrono::{DateTime, Utc};
use domain::validation::MAX_LISTED_ERRORS;
use domain::{
    CronExpr, ExportSpec, ListCursor, NewSchedule, SchedulePatch, ScheduleRules, ScheduleTimezone,
    TenantDirectory,
};
use proptest::prelude::*;
use serde_json::{Value, json};

/// JSON built from the words the parsers look for, so values reach deep into them.
fn arb_json() -> impl Strategy<Value = Value> {
    let words = prop::sample::select(vec![
        "csv",
        "gzip",
        "none",
        "active",
        "email",
        "id",
        "UTC",
        "Europe/Paris",
        "0 3 * * *",
        "0 0 31 2 *",
        "* * * * *",
        "ops@acme.com",
        "a@[10.0.0.5]",
        "root@localhost",
        "acme/prod",
        "2024-01-01T00:00:00Z",
        "",
        "\r\n",
    ]);
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        words.prop_map(Value::from),
        any::<String>().prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 48, 8, |inner| {
        let keys = prop::sample::select(vec![
            "format",
            "compression",
            "fields",
            "user_filters",
            "status",
            "created_after",
            "created_before",
            "email_domain",
            "limit",
            "email_notify",
            "notify_email",
            "retention_days",
            "cron",
            "timezone",
            "request",
            "paused",
            "note",
            "scope",
            "webhook_secret",
            "notify_domains",
            "callback_url",
            "tenant_id",
            "x",
        ]);
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(keys.prop_map(str::to_owned), inner, 0..8)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Bytes that are sometimes JSON, sometimes almost JSON.
fn arb_body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..256),
        arb_json().prop_map(|v| v.to_string().into_bytes()),
        (arb_json(), any::<prop::sample::Index>()).prop_map(|(v, cut)| {
            let text = v.to_string().into_bytes();
            let at = cut.index(text.len() + 1);
            text[..at].to_vec()
        }),
    ]
}

fn now() -> DateTime<Utc> {
    DateTime::from_timestamp(1_772_000_000, 0).unwrap_or_default()
}

fn check_bounded(errors: &domain::ValidationErrors) -> Result<(), TestCaseError> {
    prop_assert!(!errors.is_empty());
    prop_assert!(errors.errors().len() <= MAX_LISTED_ERRORS);
    prop_assert!(errors.len() >= errors.errors().len());
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn request_bodies_parse_or_fail_typed(body in arb_body()) {
        if let Ok(value) = serde_json::from_slice::<Value>(&body) {
            for parsed in [
                ExportSpec::from_json(&value).map(|_| ()),
                NewSchedule::from_json(&value).map(|_| ()),
                SchedulePatch::from_json(&value).map(|_| ()),
            ] {
                if let Err(errors) = parsed {
                    check_bounded(&errors)?;
                }
            }
        }
    }

    #[test]
    fn structured_requests_parse_or_fail_typed(value in arb_json()) {
        match NewSchedule::from_json(&value) {
            // An accepted schedule is judged by the rules without panicking, quickly.
            Ok(new) => {
                let _ = ScheduleRules::default().check(&new.cron, &new.timezone, now());
            }
            Err(errors) => check_bounded(&errors)?,
        }
        if let Err(errors) = SchedulePatch::from_json(&value) {
            check_bounded(&errors)?;
        }
        let wrapped = json!({"format": "csv", "fields": value.clone(), "notify_email": value});
        if let Err(errors) = ExportSpec::from_json(&wrapped) {
            check_bounded(&errors)?;
        }
    }

    #[test]
    fn cron_and_time_zones_parse_or_fail_typed(
        raw in any::<String>(),
        fields in prop::collection::vec("[0-9*/,A-Za-z?LW#-]{1,8}", 0..8),
        tz in "[A-Za-z_/+-]{0,24}",
    ) {
        let _ = CronExpr::parse(&raw);
        if let Ok(cron) = CronExpr::parse(&fields.join(" ")) {
            // Parsing admits only what croner can evaluate; evaluating is bounded.
            let _ = cron.next_after(&ScheduleTimezone::UTC, now());
            let _ = ScheduleRules::default().check(&cron, &ScheduleTimezone::UTC, now());
        }
        let _ = ScheduleTimezone::parse(&raw);
        let _ = ScheduleTimezone::parse(&tz);
    }

    #[test]
    fn cursors_decode_or_fail_typed(raw in any::<String>(), b64 in "[A-Za-z0-9_-]{0,64}") {
        for candidate in [raw.as_str(), b64.as_str()] {
            if let Ok(cursor) = ListCursor::decode(candidate) {
                prop_assert_eq!(ListCursor::decode(&cursor.encode()), Ok(cursor));
            }
        }
    }

    #[test]
    fn tenant_settings_parse_or_fail_typed(body in arb_body(), entries in prop::collection::vec(arb_json(), 0..4)) {
        if let Ok(text) = std::str::from_utf8(&body)
            && let Err(errors) = TenantDirectory::parse_json(text)
        {
            check_bounded(&errors)?;
        }
        let list = Value::Array(entries).to_string();
        if let Err(errors) = TenantDirectory::parse_json(&list) {
            check_bounded(&errors)?;
        }
    }
}

/// The body from issue 10: a 64 KiB array of zeros in `fields` gives a bounded list.
#[test]
fn a_huge_field_list_gives_a_bounded_error_list() {
    let zeros = vec![0; 32 * 1024];
    let errors = ExportSpec::from_json(&json!({"format": "csv", "fields": zeros})).unwrap_err();
    assert_eq!(errors.errors().len(), MAX_LISTED_ERRORS);
    assert_eq!(errors.len(), 32 * 1024);
    let schedule = NewSchedule::from_json(
        &json!({"cron": "0 3 * * *", "request": {"format": "csv", "fields": vec![0; 32 * 1024]}}),
    )
    .unwrap_err();
    assert_eq!((schedule.errors().len(), schedule.len()), (MAX_LISTED_ERRORS, 32 * 1024));
}
