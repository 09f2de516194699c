//! The tenant directory: which tenant/environment scopes exist and their per-tenant settings
//! (default notification address, the domains a request's `notify_email` may use, webhook
//! secret, export callback URL). Configured as JSON (`USEREXPORT_TENANTS`), validated once into
//! this type.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;
use serde_json::Value;

use crate::callback::CallbackUrl;
use crate::email::{check_configured_email, check_notify_email, domain_within, parse_domain};
use crate::ids::Scope;
use crate::quotas::QuotaOverrides;
use crate::request::ExportSpec;
use crate::secrets::check_strength;
use crate::validation::ValidationErrors;

/// A shared secret. Its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// One tenant scope's settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TenantSettings {
    /// Where `email_notify` exports send their email when the request names no address.
    pub notify_email: Option<String>,
    /// The domains (and their subdomains) a request's `notify_email` may be at; `None`: any
    /// public domain.
    pub notify_domains: Option<Vec<String>>,
    /// Key of the HMAC signature on `POST /v1/events/export-requested` and on export
    /// callbacks; without one, the tenant's webhook events are refused.
    pub webhook_secret: Option<Secret>,
    /// Where finished exports are announced (`export.completed` / `export.failed`), signed with
    /// `webhook_secret`, which is then required.
    pub callback_url: Option<CallbackUrl>,
    /// This scope's overrides of the global quotas (`"quotas": {"max_running": 4}`).
    pub quotas: QuotaOverrides,
}

/// The known scopes, ordered (so "all tenants" always iterates the same way).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TenantDirectory {
    tenants: BTreeMap<Scope, TenantSettings>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTenant {
    scope: String,
    #[serde(default)]
    notify_email: Option<String>,
    #[serde(default)]
    notify_domains: Option<Vec<String>>,
    #[serde(default)]
    webhook_secret: Option<String>,
    #[serde(default)]
    callback_url: Option<String>,
    #[serde(default)]
    quotas: QuotaOverrides,
}

impl TenantDirectory {
    /// Parses `[{"scope":"acme/prod","notify_email":"ops@acme.test","webhook_secret":"…",
    /// "notify_domains":["acme.com"]}]`, reporting every bad entry (`[index].field`). Callback
    /// URLs must be public `https`; webhook secrets carry at least 128 bits
    /// ([`crate::secrets`]).
    pub fn parse_json(raw: &str) -> Result<Self, ValidationErrors> {
        Self::parse_json_with(raw, false)
    }

    /// As [`TenantDirectory::parse_json`]; `allow_private_callbacks` also admits `http` and
    /// private or loopback callback hosts (see [`CallbackUrl::parse`]).
    pub fn parse_json_with(raw: &str, allow_private_callbacks: bool) -> Result<Self, ValidationErrors> {
        let value: Value = serde_json::from_str(raw)
            .map_err(|e| ValidationErrors::single("tenants", "invalid_json", format!("not JSON: {e}")))?;
        let Value::Array(items) = value else {
            return Err(ValidationErrors::single(
                "tenants",
                "invalid_type",
                "expected a JSON array of tenants",
            ));
        };
        let mut errors = ValidationErrors::new();
        let mut directory = Self::default();
        for (index, item) in items.into_iter().enumerate() {
            let raw: RawTenant = match serde_json::from_value(item) {
                Ok(raw) => raw,
                Err(e) => {
                    errors.add(format!("[{index}]"), "invalid_value", e.to_string());
                    continue;
                }
            };
            let scope = match Scope::parse(&raw.scope) {
                Ok(scope) => scope,
                Err(e) => {
                    errors.add(format!("[{index}].scope"), "invalid_value", e.to_string());
                    continue;
                }
            };
            if let Some(Err(e)) = raw.notify_email.as_deref().map(check_configured_email) {
                errors.add(format!("[{index}].notify_email"), e.code(), e.to_string());
            }
            let notify_domains = raw.notify_domains.map(|domains| {
                if domains.is_empty() {
                    errors.add(
                        format!("[{index}].notify_domains"),
                        "invalid_value",
                        "list at least one domain, or leave notify_domains out to allow any",
                    );
                }
                let mut parsed = Vec::with_capacity(domains.len());
                for (i, raw) in domains.iter().enumerate() {
                    match parse_domain(raw) {
                        Some(domain) => parsed.push(domain),
                        None => errors.add(
                            format!("[{index}].notify_domains[{i}]"),
                            "invalid_value",
                            "expected a domain such as acme.com (its subdomains are allowed too)",
                        ),
                    }
                }
                parsed
            });
            if let Some(Err(weak)) = raw.webhook_secret.as_deref().map(check_strength) {
                errors.add(
                    format!("[{index}].webhook_secret"),
                    "too_weak",
                    format!("the webhook secret {weak}"),
                );
            }
            let callback_url = raw.callback_url.as_deref().and_then(|url| {
                if raw.webhook_secret.is_none() {
                    errors.add(
                        format!("[{index}].webhook_secret"),
                        "required",
                        "a tenant with a callback_url needs a webhook_secret to sign its callbacks",
                    );
                }
                CallbackUrl::parse(url, allow_private_callbacks)
                    .map_err(|e| {
                        errors.add(format!("[{index}].callback_url"), "invalid_value", e.to_string())
                    })
                    .ok()
            });
            if let Some(quota) = raw.quotas.zero_limit() {
                errors.add(
                    format!("[{index}].quotas.{quota}"),
                    "invalid_value",
                    "a quota must be at least 1",
                );
            }
            let settings = TenantSettings {
                notify_email: raw.notify_email,
                notify_domains,
                webhook_secret: raw.webhook_secret.map(Secret),
                callback_url,
                quotas: raw.quotas,
            };
            if directory.tenants.insert(scope, settings).is_some() {
                errors.add(format!("[{index}].scope"), "duplicate", "this scope is listed twice");
            }
        }
        errors.into_result(directory)
    }

    /// Checks the `notify_email` of a request in `scope`: one address at a public domain
    /// ([`check_notify_email`]), and at one of the tenant's `notify_domains` when it lists some.
    pub fn check_notify_email(&self, scope: &Scope, spec: &ExportSpec) -> Result<(), ValidationErrors> {
        let Some(email) = spec.notify_email.as_deref() else { return Ok(()) };
        let domain = check_notify_email(email)
            .map_err(|e| ValidationErrors::single("notify_email", e.code(), format!("notify_email {e}")))?;
        let allowed = self.get(scope).and_then(|t| t.notify_domains.as_deref());
        match allowed {
            Some(allowed) if !allowed.iter().any(|a| domain_within(&domain, a)) => {
                Err(ValidationErrors::single(
                    "notify_email",
                    "domain_not_allowed",
                    format!(
                        "notify_email must be at one of this tenant's domains: {} (or a subdomain); \
                         leave it out to use the tenant's default address",
                        allowed.join(", ")
                    ),
                ))
            }
            _ => Ok(()),
        }
    }

    /// Adds `scope` with default settings unless it is already known.
    pub fn include(&mut self, scope: Scope) {
        self.tenants.entry(scope).or_default();
    }

    pub fn get(&self, scope: &Scope) -> Option<&TenantSettings> {
        self.tenants.get(scope)
    }

    pub fn contains(&self, scope: &Scope) -> bool {
        self.tenants.contains_key(scope)
    }

    /// Every known scope, in order.
    pub fn scopes(&self) -> impl Iterator<Item = &Scope> {
        self.tenants.keys()
    }

    pub fn len(&self) -> usize {
        self.tenants.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tenants.is_empty()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn parses_tenants_with_their_settings() {
        let raw = r#"[{"scope":"acme/prod","notify_email":"ops@acme.test","webhook_secret":"0123456789abcdef0123456789abcdef"},
                      {"scope":"globex/dev"}]"#;
        let dir = TenantDirectory::parse_json(raw).unwrap();
        let acme = dir.get(&Scope::parse("acme/prod").unwrap()).unwrap();
        assert_eq!(acme.notify_email.as_deref(), Some("ops@acme.test"));
        assert_eq!(acme.webhook_secret.as_ref().unwrap().expose(), b"0123456789abcdef0123456789abcdef");
        assert!(format!("{acme:?}").contains("<redacted>"));
        assert_eq!(dir.scopes().map(ToString::to_string).collect::<Vec<_>>(), ["acme/prod", "globex/dev"]);
    }

    #[test]
    fn reports_every_bad_entry() {
        let raw = r#"[{"scope":"Bad Scope"},{"scope":"a/b","notify_email":"nope","webhook_secret":"short"},
                      {"scope":"a/b"},{"scope":"c/d","extra":1}]"#;
        let errors = TenantDirectory::parse_json(raw).unwrap_err();
        let fields: Vec<_> = errors.errors().iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["[0].scope", "[1].notify_email", "[1].webhook_secret", "[2].scope", "[3]"]);
        assert_eq!(errors.errors()[2].code, "too_weak");
        assert!(TenantDirectory::parse_json("{}").is_err());
        assert!(TenantDirectory::parse_json("not json").is_err());
    }

    #[test]
    fn callback_urls_are_validated_and_need_a_secret() {
        let raw = r#"[{"scope":"a/b","webhook_secret":"0123456789abcdef0123456789abcdef","callback_url":"https://hooks.a.test/x"}]"#;
        let dir = TenantDirectory::parse_json(raw).unwrap();
        let url = dir.get(&Scope::parse("a/b").unwrap()).unwrap().callback_url.as_ref().unwrap();
        assert_eq!(url.as_str(), "https://hooks.a.test/x");

        let raw = r#"[{"scope":"a/b","callback_url":"https://hooks.a.test/x"},
                      {"scope":"c/d","webhook_secret":"0123456789abcdef0123456789abcdef","callback_url":"http://127.0.0.1:9/x"},
                      {"scope":"e/f","webhook_secret":"0123456789abcdef0123456789abcdef","callback_url":"https://10.0.0.1/x"}]"#;
        let errors = TenantDirectory::parse_json(raw).unwrap_err();
        let fields: Vec<_> = errors.errors().iter().map(|e| (e.field.as_str(), e.code)).collect();
        assert_eq!(
            fields,
            [
                ("[0].webhook_secret", "required"),
                ("[1].callback_url", "invalid_value"),
                ("[2].callback_url", "invalid_value")
            ]
        );
        assert!(errors.to_string().contains("a webhook_secret"), "{errors}");

        // Allowing private targets admits the last two, never a missing secret.
        let errors = TenantDirectory::parse_json_with(raw, true).unwrap_err();
        assert_eq!(errors.errors().len(), 1);
        assert_eq!(errors.errors()[0].field, "[0].webhook_secret");
    }

    #[test]
    fn webhook_secrets_need_128_bits() {
        let raw = r#"[{"scope":"a/b","webhook_secret":"0123456789abcdef0123456789abcde"}]"#;
        let errors = TenantDirectory::parse_json(raw).unwrap_err();
        assert_eq!(
            (errors.errors()[0].field.as_str(), errors.errors()[0].code),
            ("[0].webhook_secret", "too_weak")
        );
        assert!(
            errors.to_string().contains("128 bits") && !errors.to_string().contains("abcde\""),
            "{errors}"
        );
    }

    #[test]
    fn notify_domains_limit_a_request_s_notify_email() {
        let raw = r#"[{"scope":"a/b","notify_domains":["Acme.com","acme.io"]},{"scope":"c/d"}]"#;
        let dir = TenantDirectory::parse_json(raw).unwrap();
        let (limited, open) = (Scope::parse("a/b").unwrap(), Scope::parse("c/d").unwrap());
        let spec = |email: &str| ExportSpec {
            notify_email: Some(email.to_owned()),
            ..ExportSpec::new(crate::ExportFormat::Csv)
        };
        assert_eq!(dir.check_notify_email(&limited, &spec("ops@acme.com")), Ok(()));
        assert_eq!(dir.check_notify_email(&limited, &spec("ops@eu.acme.io")), Ok(()));
        assert_eq!(dir.check_notify_email(&limited, &ExportSpec::new(crate::ExportFormat::Csv)), Ok(()));
        let refused = dir.check_notify_email(&limited, &spec("ops@evil.com")).unwrap_err();
        assert_eq!(
            (refused.errors()[0].field.as_str(), refused.errors()[0].code),
            ("notify_email", "domain_not_allowed")
        );
        assert!(refused.errors()[0].message.contains("acme.com, acme.io"), "{refused}");
        assert_eq!(dir.check_notify_email(&open, &spec("ops@evil.com")), Ok(()));
        // Unknown scopes and open tenants still get the address rules.
        let internal = dir.check_notify_email(&open, &spec("root@localhost")).unwrap_err();
        assert_eq!(internal.errors()[0].code, "single_label_domain");

        let bad = r#"[{"scope":"a/b","notify_domains":["acme","ok.com"]},{"scope":"c/d","notify_domains":[]},
                      {"scope":"e/f","notify_email":"ops@[10.0.0.1]"}]"#;
        let errors = TenantDirectory::parse_json(bad).unwrap_err();
        let fields: Vec<_> = errors.errors().iter().map(|e| (e.field.as_str(), e.code)).collect();
        assert_eq!(
            fields,
            [
                ("[0].notify_domains[0]", "invalid_value"),
                ("[1].notify_domains", "invalid_value"),
                ("[2].notify_email", "ip_literal")
            ]
        );
    }

    #[test]
    fn quota_overrides_are_read_and_checked() {
        let raw = r#"[{"scope":"a/b","quotas":{"max_unfinished":7}}]"#;
        let dir = TenantDirectory::parse_json(raw).unwrap();
        assert_eq!(dir.get(&Scope::parse("a/b").unwrap()).unwrap().quotas.max_unfinished, Some(7));
        let raw = r#"[{"scope":"a/b","quotas":{"max_running":0}},{"scope":"c/d","quotas":{"max_jobs":1}},
                      {"scope":"e/f","quotas":{"max_schedules":-1}}]"#;
        let errors = TenantDirectory::parse_json(raw).unwrap_err();
        let fields: Vec<_> = errors.errors().iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["[0].quotas.max_running", "[1]", "[2]"]);
    }

    #[test]
    fn include_keeps_configured_settings() {
        let mut dir = TenantDirectory::parse_json(r#"[{"scope":"a/b","notify_email":"x@y.test"}]"#).unwrap();
        dir.include(Scope::parse("a/b").unwrap());
        dir.include(Scope::parse("c/d").unwrap());
        assert_eq!(dir.len(), 2);
        assert!(dir.get(&Scope::parse("a/b").unwrap()).unwrap().notify_email.is_some());
    }
}
