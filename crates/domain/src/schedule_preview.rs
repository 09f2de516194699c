//! A schedule's timing judged before it exists: the body of `POST /v1/export-schedules/preview`,
//! validated like the `cron` and `timezone` of a schedule, so a form can show the next fires (or
//! the error a create would get) while its user types.

use serde_json::Value;

use crate::schedule::{CronExpr, ScheduleTimezone, parse_timing};
use crate::validation::ValidationErrors;

/// Fires listed when the request does not say.
pub const PREVIEW_COUNT_DEFAULT: usize = 5;
/// The most fires one preview lists.
pub const PREVIEW_COUNT_MAX: usize = 20;

/// A validated preview request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CronPreview {
    pub cron: CronExpr,
    pub timezone: ScheduleTimezone,
    /// How many upcoming fires to list, 1..=[`PREVIEW_COUNT_MAX`].
    pub count: usize,
}

impl CronPreview {
    /// Validates `{"cron", "timezone", "count"}`, reporting every failing field; unknown
    /// fields are refused by name, as in a schedule's body.
    pub fn from_json(body: &Value) -> Result<Self, ValidationErrors> {
        let Some(obj) = body.as_object() else {
            return Err(ValidationErrors::single(
                "",
                "invalid_type",
                "the request body must be a JSON object",
            ));
        };
        let mut errors = ValidationErrors::new();
        for key in obj.keys().filter(|k| !matches!(k.as_str(), "cron" | "timezone" | "count")) {
            errors.add(key.as_str(), "unknown_field", "unknown field; expected cron, timezone or count");
        }
        let (cron, timezone) = parse_timing(obj, &mut errors);
        let count = match obj.get("count") {
            None | Some(Value::Null) => Some(PREVIEW_COUNT_DEFAULT),
            Some(v) => match v.as_u64().and_then(|n| usize::try_from(n).ok()) {
                Some(n) if (1..=PREVIEW_COUNT_MAX).contains(&n) => Some(n),
                _ => {
                    errors.add(
                        "count",
                        "invalid_value",
                        format!("count must be a whole number from 1 to {PREVIEW_COUNT_MAX}"),
                    );
                    None
                }
            },
        };
        match (cron, timezone, count) {
            (Some(cron), Some(timezone), Some(count)) if errors.is_empty() => {
                Ok(Self { cron, timezone, count })
            }
            _ => Err(errors),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use serde_json::json;

    use super::*;

    #[test]
    fn defaults_fill_what_is_left_out() {
        let preview = CronPreview::from_json(&json!({"cron": " 0  3 * * *"})).unwrap();
        assert_eq!(preview.cron.as_str(), "0 3 * * *");
        assert_eq!(preview.timezone, ScheduleTimezone::UTC);
        assert_eq!(preview.count, PREVIEW_COUNT_DEFAULT);
        let preview =
            CronPreview::from_json(&json!({"cron": "0 3 * * *", "timezone": "Europe/Paris", "count": 20}))
                .unwrap();
        assert_eq!((preview.timezone.name(), preview.count), ("Europe/Paris", 20));
    }

    #[test]
    fn every_bad_field_is_named() {
        let errors = CronPreview::from_json(&json!({"cron": "0 25 * * *", "timezone": "Mars/Base",
                                                     "count": 0, "extra": 1}))
        .unwrap_err();
        let fields: Vec<&str> = errors.errors().iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["extra", "cron", "timezone", "count"]);
        for bad in [json!({}), json!({"cron": 5}), json!({"cron": "* * * *"})] {
            let errors = CronPreview::from_json(&bad).unwrap_err();
            assert_eq!(errors.errors()[0].field, "cron", "{bad}");
        }
        for count in [json!(21), json!(-1), json!(1.5), json!("5"), json!(true)] {
            let errors = CronPreview::from_json(&json!({"cron": "0 3 * * *", "count": count})).unwrap_err();
            assert_eq!(errors.errors()[0].field, "count", "{count}");
        }
        assert_eq!(CronPreview::from_json(&json!([])).unwrap_err().errors()[0].field, "");
    }
}
