//! Flags to request bodies. Only what was given is sent: the API fills in its own defaults, and
//! validates everything it receives (a `422` names the field).

use serde_json::{Map, Value, json};

use crate::args::{CreateBatch, CreateSchedule, ExportRequestArgs, ExportStatus, Field, Format, UserStatus};

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Csv => "csv",
            Self::Json => "json",
            Self::Ndjson => "ndjson",
        }
    }
}

impl Field {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Id => "id",
            Self::Email => "email",
            Self::Name => "name",
            Self::Status => "status",
            Self::CreatedAt => "created_at",
            Self::UpdatedAt => "updated_at",
            Self::Metadata => "metadata",
        }
    }
}

impl UserStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Inactive => "inactive",
            Self::Suspended => "suspended",
        }
    }
}

impl ExportRequestArgs {
    /// The body of `POST /v1/exports` (also a schedule's `request` and a batch's `export`).
    pub fn to_body(&self) -> Value {
        let mut body = Map::new();
        body.insert("format".into(), self.format.as_str().into());
        if self.gzip {
            body.insert("compression".into(), "gzip".into());
        }
        if !self.fields.is_empty() {
            body.insert("fields".into(), self.fields.iter().map(|f| f.as_str()).collect());
        }
        let mut filters = Map::new();
        if !self.user_status.is_empty() {
            filters.insert("status".into(), self.user_status.iter().map(|s| s.as_str()).collect());
        }
        insert_some(&mut filters, "created_after", self.created_after.as_deref());
        insert_some(&mut filters, "created_before", self.created_before.as_deref());
        insert_some(&mut filters, "email_domain", self.email_domain.as_deref());
        if !filters.is_empty() {
            body.insert("user_filters".into(), filters.into());
        }
        if let Some(limit) = self.limit {
            body.insert("limit".into(), limit.into());
        }
        // An address to notify implies asking for the notification.
        if self.email_notify || self.notify_email.is_some() {
            body.insert("email_notify".into(), true.into());
        }
        insert_some(&mut body, "notify_email", self.notify_email.as_deref());
        if let Some(days) = self.retention_days {
            body.insert("retention_days".into(), days.into());
        }
        body.into()
    }
}

impl CreateSchedule {
    /// The body of `POST /v1/export-schedules`.
    pub fn to_body(&self) -> Value {
        let mut body = Map::new();
        body.insert("cron".into(), self.cron.as_str().into());
        insert_some(&mut body, "timezone", self.timezone.as_deref());
        insert_some(&mut body, "note", self.note.as_deref());
        if self.paused {
            body.insert("paused".into(), true.into());
        }
        body.insert("request".into(), self.request.to_body());
        body.into()
    }
}

impl CreateBatch {
    /// The body of `POST /v1/exports/batch`: `"all"` alone, or the scopes.
    pub fn to_body(&self) -> Value {
        let targets = match self.targets.as_slice() {
            [all] if all == "all" => json!("all"),
            scopes => json!(scopes),
        };
        let mut body = Map::new();
        body.insert("targets".into(), targets);
        body.insert("export".into(), self.request.to_body());
        if let Some(concurrency) = self.concurrency {
            body.insert("concurrency".into(), concurrency.into());
        }
        body.into()
    }
}

/// `?status=&limit=&cursor=` of a list, each only when given.
pub fn list_query(status: Option<ExportStatus>, limit: Option<u32>, cursor: Option<&str>) -> String {
    let mut params = Vec::new();
    if let Some(status) = status {
        params.push(format!("status={}", status.as_str()));
    }
    if let Some(limit) = limit {
        params.push(format!("limit={limit}"));
    }
    if let Some(cursor) = cursor {
        params.push(format!("cursor={}", encode_query_value(cursor)));
    }
    if params.is_empty() { String::new() } else { format!("?{}", params.join("&")) }
}

/// Percent-encodes what is not unreserved (RFC 3986), so any cursor reaches the API unchanged.
fn encode_query_value(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// An ID as one path segment: an ID with a `/` or `?` must not reach another route.
pub fn segment(id: &str) -> String {
    encode_query_value(id)
}

fn insert_some(map: &mut Map<String, Value>, key: &str, value: Option<&str>) {
    if let Some(value) = value {
        map.insert(key.into(), value.into());
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::args::{BatchCommand, Cli, Command, ExportCommand, ScheduleCommand};

    fn export_body(args: &[&str]) -> Value {
        let cli = Cli::try_parse_from(["uex", "export", "create"].iter().chain(args))
            .unwrap_or_else(|e| panic!("{e}"));
        let Command::Export(ExportCommand::Create(create)) = cli.command else { panic!("not create") };
        create.request.to_body()
    }

    #[test]
    fn no_flags_ask_for_a_csv_of_everyone() {
        assert_eq!(export_body(&[]), json!({"format": "csv"}));
    }

    #[test]
    fn every_flag_lands_in_its_request_field() {
        let body = export_body(&[
            "--format",
            "ndjson",
            "--gzip",
            "--fields",
            "id,email,created_at",
            "--status",
            "active,suspended",
            "--created-after",
            "2024-01-01T00:00:00Z",
            "--created-before",
            "2025-01-01T00:00:00Z",
            "--email-domain",
            "example.com",
            "--limit",
            "500",
            "--notify-email",
            "ops@example.com",
            "--retention-days",
            "14",
        ]);
        assert_eq!(
            body,
            json!({
                "format": "ndjson",
                "compression": "gzip",
                "fields": ["id", "email", "created_at"],
                "user_filters": {
                    "status": ["active", "suspended"],
                    "created_after": "2024-01-01T00:00:00Z",
                    "created_before": "2025-01-01T00:00:00Z",
                    "email_domain": "example.com"
                },
                "limit": 500,
                "email_notify": true,
                "notify_email": "ops@example.com",
                "retention_days": 14
            })
        );
    }

    #[test]
    fn email_notify_alone_uses_the_tenants_address() {
        assert_eq!(export_body(&["--email-notify"]), json!({"format": "csv", "email_notify": true}));
    }

    #[test]
    fn a_schedule_carries_its_cron_and_its_request() {
        let cli = Cli::try_parse_from([
            "uex",
            "schedule",
            "create",
            "--cron",
            "0 3 * * *",
            "--timezone",
            "Europe/Paris",
            "--paused",
            "--note",
            "nightly",
            "--gzip",
        ])
        .unwrap_or_else(|e| panic!("{e}"));
        let Command::Schedule(ScheduleCommand::Create(create)) = cli.command else { panic!("not create") };
        assert_eq!(
            create.to_body(),
            json!({"cron": "0 3 * * *", "timezone": "Europe/Paris", "note": "nightly", "paused": true,
                   "request": {"format": "csv", "compression": "gzip"}})
        );
    }

    #[test]
    fn batch_targets_are_all_or_a_list() {
        let body = |targets: &str| {
            let cli =
                Cli::try_parse_from(["uex", "batch", "create", "--targets", targets, "--concurrency", "2"])
                    .unwrap_or_else(|e| panic!("{e}"));
            let Command::Batch(BatchCommand::Create(create)) = cli.command else { panic!("not create") };
            create.to_body()
        };
        assert_eq!(body("all"), json!({"targets": "all", "export": {"format": "csv"}, "concurrency": 2}));
        assert_eq!(body("acme/prod,globex/prod")["targets"], json!(["acme/prod", "globex/prod"]));
    }

    #[test]
    fn list_queries_carry_only_what_was_given() {
        assert_eq!(list_query(None, None, None), "");
        assert_eq!(
            list_query(Some(ExportStatus::Failed), Some(5), Some("a b&c")),
            "?status=failed&limit=5&cursor=a%20b%26c"
        );
    }

    #[test]
    fn an_id_stays_one_path_segment() {
        assert_eq!(segment("0193-ab"), "0193-ab");
        assert_eq!(segment("../batch?x"), "..%2Fbatch%3Fx");
    }
}
