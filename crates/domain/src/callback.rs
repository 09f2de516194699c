//! Export callbacks: a tenant's validated `callback_url`, which addresses a callback may reach,
//! and the event a finished export sends (`export.completed` / `export.failed`).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use chrono::{DateTime, Utc};
use serde::Serialize;
use url::{Host, Url};
use uuid::Uuid;

use crate::export::{Export, ExportStatus};
use crate::ids::{EnvironmentId, ExportId, TenantId};

/// Why a callback URL was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallbackUrlError {
    #[error("not an absolute URL")]
    NotAUrl,
    #[error("the scheme must be https")]
    Scheme,
    #[error("must not contain a user name or password")]
    UserInfo,
    #[error("must have a host")]
    NoHost,
    #[error("{0} is not a public address")]
    PrivateAddress(IpAddr),
}

/// A tenant's callback endpoint: absolute, `https` (or `http` when private targets are allowed),
/// without credentials, with a host that, when it is a literal IP, is public (likewise).
/// A host name is only checked once resolved, by the sender.
#[derive(Clone, PartialEq, Eq)]
pub struct CallbackUrl(Url);

impl CallbackUrl {
    /// `allow_private` admits `http` and loopback/private hosts (tests, private deployments).
    pub fn parse(raw: &str, allow_private: bool) -> Result<Self, CallbackUrlError> {
        let url = Url::parse(raw.trim()).map_err(|_| CallbackUrlError::NotAUrl)?;
        match url.scheme() {
            "https" => {}
            "http" if allow_private => {}
            _ => return Err(CallbackUrlError::Scheme),
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(CallbackUrlError::UserInfo);
        }
        if let Some(ip) = literal_ip(&url)?
            && !allow_private
            && !is_public_address(ip)
        {
            return Err(CallbackUrlError::PrivateAddress(ip));
        }
        Ok(Self(url))
    }

    pub fn as_url(&self) -> &Url {
        &self.0
    }

    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    /// The host when it is an IP address (no DNS resolution happens for those).
    pub fn literal_ip(&self) -> Option<IpAddr> {
        literal_ip(&self.0).ok().flatten()
    }

    /// The host, for messages (the path and query may carry a receiver's token).
    pub fn host_str(&self) -> &str {
        self.0.host_str().unwrap_or("")
    }
}

fn literal_ip(url: &Url) -> Result<Option<IpAddr>, CallbackUrlError> {
    match url.host() {
        None => Err(CallbackUrlError::NoHost),
        Some(Host::Domain("")) => Err(CallbackUrlError::NoHost),
        Some(Host::Domain(_)) => Ok(None),
        Some(Host::Ipv4(ip)) => Ok(Some(IpAddr::V4(ip))),
        Some(Host::Ipv6(ip)) => Ok(Some(IpAddr::V6(ip))),
    }
}

impl fmt::Debug for CallbackUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Scheme, host and port only: a query may hold the receiver's token.
        let port = self.0.port().map(|p| format!(":{p}")).unwrap_or_default();
        write!(f, "CallbackUrl({}://{}{port}/…)", self.0.scheme(), self.host_str())
    }
}

/// Whether a callback may connect to `ip`: false for loopback, private, link-local,
/// unspecified, broadcast, multicast, documentation, benchmarking, CGNAT (100.64/10),
/// unique-local (fc00::/7) and other special-purpose ranges. IPv6 counts as public only within
/// global unicast (2000::/3); IPv4 embedded in IPv6 (mapped, NAT64, 6to4) is judged as IPv4.
/// (`std`'s `is_global` is still unstable.)
pub fn is_public_address(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    let special = a == 0 // "this network", incl. 0.0.0.0
        || a == 10
        || a == 127
        || (a == 100 && (64..128).contains(&b)) // CGNAT
        || (a == 169 && b == 254) // link-local, incl. cloud metadata
        || (a == 172 && (16..32).contains(&b))
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 192 && b == 0 && c == 2) // documentation
        || (a == 192 && b == 168)
        || (a == 198 && (18..20).contains(&b)) // benchmarking
        || (a == 198 && b == 51 && c == 100) // documentation
        || (a == 203 && b == 0 && c == 113) // documentation
        || a >= 224; // multicast, reserved, broadcast
    !special
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let s = ip.segments();
    if let Some(v4) = ip.to_ipv4_mapped() {
        return is_public_v4(v4);
    }
    let embedded = |hi: u16, lo: u16| Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
    // NAT64 well-known prefix 64:ff9b::/96 reaches the embedded IPv4 address.
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return is_public_v4(embedded(s[6], s[7]));
    }
    // 6to4 (2002::/16) likewise.
    if s[0] == 0x2002 {
        return is_public_v4(embedded(s[1], s[2]));
    }
    let global_unicast = s[0] & 0xe000 == 0x2000;
    // 2001::/23 (IETF protocol assignments, Teredo), 2001:db8::/32 and 3fff::/20 (documentation).
    let special = (s[0] == 0x2001 && (s[1] < 0x200 || s[1] == 0xdb8)) || (s[0] == 0x3fff && s[1] < 0x1000);
    global_unicast && !special
}

/// Namespace of callback event IDs (a fixed random UUID; never change it, or receivers would
/// see a retried event as new).
const EVENT_NAMESPACE: Uuid = Uuid::from_u128(0x3d5e_9a71_0c4b_4f2e_a8d6_51b7_e2c9_04f3);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum CallbackEventType {
    #[serde(rename = "export.completed")]
    ExportCompleted,
    #[serde(rename = "export.failed")]
    ExportFailed,
}

impl CallbackEventType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ExportCompleted => "export.completed",
            Self::ExportFailed => "export.failed",
        }
    }
}

/// The body of one callback. Serialised as JSON; equal for every try of the same event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CallbackEvent {
    /// UUIDv5 of scope, export and type: receivers dedupe retried deliveries by it.
    pub id: Uuid,
    #[serde(rename = "type")]
    pub kind: CallbackEventType,
    /// When the export finished (not when this try was sent), so every try is identical.
    pub created_at: DateTime<Utc>,
    pub data: CallbackData,
}

/// What the receiver learns about the export; it fetches the file through the API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CallbackData {
    pub export_id: ExportId,
    pub tenant_id: TenantId,
    pub environment_id: EnvironmentId,
    pub status: ExportStatus,
    pub record_count: Option<u64>,
    pub bytes: Option<u64>,
    pub sha256: Option<String>,
    pub expires_at: Option<DateTime<Utc>>,
    pub error: Option<CallbackError>,
}

/// The export's recorded failure, as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CallbackError {
    pub code: &'static str,
    pub message: String,
}

impl CallbackEvent {
    /// The event for `export`: `None` unless it is completed or failed.
    pub fn for_export(export: &Export) -> Option<Self> {
        let kind = match export.status() {
            ExportStatus::Completed => CallbackEventType::ExportCompleted,
            ExportStatus::Failed => CallbackEventType::ExportFailed,
            _ => return None,
        };
        let name = format!("{}/{}/{}", export.scope, export.id, kind.as_str());
        let outcome = export.outcome();
        Some(Self {
            id: Uuid::new_v5(&EVENT_NAMESPACE, name.as_bytes()),
            kind,
            created_at: export.finished_at().unwrap_or_else(|| export.updated_at()),
            data: CallbackData {
                export_id: export.id,
                tenant_id: export.scope.tenant.clone(),
                environment_id: export.scope.environment.clone(),
                status: export.status(),
                record_count: outcome.map(|o| o.record_count),
                bytes: outcome.map(|o| o.bytes),
                sha256: outcome.map(|o| o.sha256.clone()),
                expires_at: export.expires_at(),
                error: export
                    .error()
                    .map(|e| CallbackError { code: e.kind.as_str(), message: e.message.clone() }),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use chrono::{TimeDelta, TimeZone};
    use serde_json::json;

    use super::*;
    use crate::export::{ExportFailure, ExportOutcome, FailureKind};
    use crate::ids::Scope;
    use crate::request::{ExportFormat, ExportSpec};

    fn ip(raw: &str) -> IpAddr {
        raw.parse().unwrap()
    }

    #[test]
    fn special_purpose_addresses_are_not_public() {
        for raw in [
            "0.0.0.0",
            "10.1.2.3",
            "100.64.0.1",
            "100.127.255.255",
            "127.0.0.1",
            "169.254.169.254",
            "172.16.0.1",
            "172.31.255.255",
            "192.0.0.8",
            "192.0.2.1",
            "192.168.1.1",
            "198.18.0.1",
            "198.51.100.7",
            "203.0.113.9",
            "224.0.0.1",
            "240.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::127.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "2002:7f00:1::",
            "fd00::1",
            "fc00::1",
            "fe80::1",
            "fec0::1",
            "ff02::1",
            "2001:db8::1",
            "2001::1",
            "3fff::1",
            "100::1",
        ] {
            assert!(!is_public_address(ip(raw)), "{raw} must not be public");
        }
    }

    #[test]
    fn ordinary_addresses_are_public() {
        for raw in [
            "1.1.1.1",
            "8.8.8.8",
            "100.63.255.255",
            "100.128.0.1",
            "172.15.0.1",
            "172.32.0.1",
            "192.0.1.1",
            "198.20.0.1",
            "223.255.255.255",
            "2606:4700:4700::1111",
            "2a00:1450::1",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:808:808::",
        ] {
            assert!(is_public_address(ip(raw)), "{raw} must be public");
        }
    }

    #[test]
    fn a_callback_url_must_be_public_https_without_credentials() {
        let ok = CallbackUrl::parse("https://hooks.acme.test/exports?token=t", false).unwrap();
        assert_eq!(ok.host_str(), "hooks.acme.test");
        assert_eq!(ok.literal_ip(), None);
        assert!(!format!("{ok:?}").contains("token"), "Debug hides the path and query");
        assert!(CallbackUrl::parse("https://8.8.8.8:8443/x", false).is_ok());
        for (raw, err) in [
            ("hooks.acme.test/x", CallbackUrlError::NotAUrl),
            ("/relative", CallbackUrlError::NotAUrl),
            ("http://hooks.acme.test/", CallbackUrlError::Scheme),
            ("ftp://hooks.acme.test/", CallbackUrlError::Scheme),
            ("https://user:pw@hooks.acme.test/", CallbackUrlError::UserInfo),
            ("https://user@hooks.acme.test/", CallbackUrlError::UserInfo),
            ("https://127.0.0.1/", CallbackUrlError::PrivateAddress(ip("127.0.0.1"))),
            ("https://0x7f.1/", CallbackUrlError::PrivateAddress(ip("127.0.0.1"))),
            ("https://169.254.169.254/latest", CallbackUrlError::PrivateAddress(ip("169.254.169.254"))),
            ("https://[::ffff:127.0.0.1]/", CallbackUrlError::PrivateAddress(ip("::ffff:127.0.0.1"))),
            ("https://[fd00::1]/", CallbackUrlError::PrivateAddress(ip("fd00::1"))),
        ] {
            assert_eq!(CallbackUrl::parse(raw, false), Err(err), "{raw}");
        }
    }

    #[test]
    fn allowing_private_targets_admits_http_and_local_hosts_but_not_credentials() {
        let url = CallbackUrl::parse("http://127.0.0.1:9000/hook", true).unwrap();
        assert_eq!(url.literal_ip(), Some(ip("127.0.0.1")));
        assert!(CallbackUrl::parse("http://localhost/", true).is_ok());
        assert_eq!(CallbackUrl::parse("ftp://localhost/", true), Err(CallbackUrlError::Scheme));
        assert_eq!(CallbackUrl::parse("http://u@localhost/", true), Err(CallbackUrlError::UserInfo));
    }

    fn t(s: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_700_000_000 + s, 0).unwrap()
    }

    fn running() -> Export {
        let scope = Scope::parse("acme/prod").unwrap();
        let id = ExportId::parse("0190f5c3-0000-7000-8000-000000000001").unwrap();
        let mut export = Export::new(id, scope, ExportSpec::new(ExportFormat::Csv), None, t(0));
        export.start_attempt(1, t(1)).unwrap();
        export
    }

    #[test]
    fn a_completed_export_becomes_an_export_completed_event() {
        let mut export = running();
        let outcome = ExportOutcome { record_count: 3, bytes: 10, sha256: "ab".repeat(32) };
        export.complete(outcome, export.attempt_key(1), TimeDelta::days(7), t(2)).unwrap();
        let event = CallbackEvent::for_export(&export).unwrap();
        assert_eq!(event, CallbackEvent::for_export(&export).unwrap(), "stable across tries");
        assert_eq!(
            serde_json::to_value(&event).unwrap(),
            json!({
                "id": event.id.to_string(),
                "type": "export.completed",
                "created_at": "2023-11-14T22:13:22Z",
                "data": {
                    "export_id": "0190f5c3-0000-7000-8000-000000000001",
                    "tenant_id": "acme",
                    "environment_id": "prod",
                    "status": "completed",
                    "record_count": 3,
                    "bytes": 10,
                    "sha256": "ab".repeat(32),
                    "expires_at": "2023-11-21T22:13:22Z",
                    "error": null
                }
            })
        );
        assert_eq!(event.id.get_version_num(), 5);
    }

    #[test]
    fn a_failed_export_becomes_an_export_failed_event_with_its_recorded_error() {
        let mut export = running();
        export.fail(ExportFailure::new(FailureKind::Source, "reading users failed"), t(2)).unwrap();
        let event = CallbackEvent::for_export(&export).unwrap();
        let value = serde_json::to_value(&event).unwrap();
        assert_eq!(value["type"], "export.failed");
        assert_eq!(value["data"]["status"], "failed");
        assert_eq!(value["data"]["record_count"], serde_json::Value::Null);
        assert_eq!(value["data"]["error"], json!({"code": "source", "message": "reading users failed"}));

        let mut completed = running();
        let outcome = ExportOutcome { record_count: 0, bytes: 0, sha256: String::new() };
        completed.complete(outcome, completed.attempt_key(1), TimeDelta::days(1), t(2)).unwrap();
        let other = CallbackEvent::for_export(&completed).unwrap();
        assert_ne!(event.id, other.id, "the type is part of the event id");
    }

    #[test]
    fn unfinished_cancelled_and_expired_exports_have_no_event() {
        let mut cancelled = running();
        cancelled.cancel(t(2)).unwrap();
        assert_eq!(CallbackEvent::for_export(&cancelled), None);
        assert_eq!(CallbackEvent::for_export(&running()), None);
        let mut expired = running();
        let outcome = ExportOutcome { record_count: 1, bytes: 1, sha256: String::new() };
        expired.complete(outcome, expired.attempt_key(1), TimeDelta::seconds(1), t(2)).unwrap();
        expired.expire(t(5)).unwrap();
        assert_eq!(CallbackEvent::for_export(&expired), None);
    }
}
