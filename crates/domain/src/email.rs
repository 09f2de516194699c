//! Where a notification may be sent: `notify_email` is chosen by the tenant and the mail tells
//! what the export holds, so it must be exactly one address at a public domain. Checked here by
//! hand: `validator`'s check admits IP literals through an unanchored pattern (and with it CR/LF),
//! and only lettre's parser stood between a value and a mail header.

/// Longest address (RFC 5321's path limit minus the angle brackets).
pub const MAX_EMAIL_LEN: usize = 254;
const MAX_LOCAL_LEN: usize = 64;
const MAX_DOMAIN_LEN: usize = 253;
const MAX_LABEL_LEN: usize = 63;

/// Top-level names that never reach a public mail host (RFC 2606, RFC 6761, RFC 6762, RFC 8375's
/// `home.arpa` under `arpa`, and the private-use `internal`, `localdomain`, `lan`).
const RESERVED_SUFFIXES: [&str; 10] =
    ["localhost", "local", "internal", "test", "invalid", "example", "arpa", "onion", "localdomain", "lan"];

/// Why an address was refused. The messages name the field and say what would be accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EmailError {
    #[error(
        "must be one email address such as ops@acme.com (at most {MAX_EMAIL_LEN} characters, no name, \
         no list)"
    )]
    Malformed,
    #[error("must not contain control characters such as CR or LF")]
    ControlCharacter,
    #[error("must name a domain, not an IP address; use an address such as ops@acme.com")]
    IpLiteral,
    #[error("the domain {0:?} has a single label; use a full domain such as acme.com")]
    SingleLabel(String),
    #[error(
        "the domain {0:?} is reserved or internal (localhost, .local, .internal, .test, .invalid, \
         .example, .arpa, ...); use a public domain"
    )]
    Reserved(String),
}

impl EmailError {
    /// The stable `code` of the field error.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Malformed => "invalid_value",
            Self::ControlCharacter => "control_character",
            Self::IpLiteral => "ip_literal",
            Self::SingleLabel(_) => "single_label_domain",
            Self::Reserved(_) => "reserved_domain",
        }
    }
}

/// Checks a notification address a request names, and returns its domain (lowercase).
pub fn check_notify_email(raw: &str) -> Result<String, EmailError> {
    let domain = check_syntax(raw)?;
    let top = domain.rsplit('.').next().unwrap_or_default();
    if RESERVED_SUFFIXES.contains(&top) {
        return Err(EmailError::Reserved(domain));
    }
    Ok(domain)
}

/// The address rules without the reserved-domain one: for addresses the operator configures
/// (a tenant's default), who may route mail to internal domains on purpose.
pub fn check_configured_email(raw: &str) -> Result<String, EmailError> {
    check_syntax(raw)
}

fn check_syntax(raw: &str) -> Result<String, EmailError> {
    if raw.chars().any(char::is_control) {
        return Err(EmailError::ControlCharacter);
    }
    if raw.len() > MAX_EMAIL_LEN {
        return Err(EmailError::Malformed);
    }
    // Exactly one '@': no quoted local parts, so no second '@' is ever needed.
    let (local, domain) = match raw.split_once('@') {
        Some((local, domain)) if !domain.contains('@') => (local, domain),
        _ => return Err(EmailError::Malformed),
    };
    if domain.starts_with('[') {
        return Err(EmailError::IpLiteral);
    }
    if !local_part_ok(local) {
        return Err(EmailError::Malformed);
    }
    let domain = domain.to_ascii_lowercase();
    if domain.is_empty() || domain.len() > MAX_DOMAIN_LEN || !domain.split('.').all(label_ok) {
        return Err(EmailError::Malformed);
    }
    let labels: Vec<&str> = domain.split('.').collect();
    // A numeric last label is an IPv4 address written without brackets; no TLD is numeric.
    if labels.last().is_some_and(|top| top.bytes().all(|b| b.is_ascii_digit())) {
        return Err(EmailError::IpLiteral);
    }
    if labels.len() < 2 {
        return Err(EmailError::SingleLabel(domain));
    }
    Ok(domain)
}

/// RFC 5322 dot-atom (letters of any script allowed, RFC 6531): no leading, trailing or double
/// dot, none of the characters that separate or quote addresses.
fn local_part_ok(local: &str) -> bool {
    !local.is_empty()
        && local.len() <= MAX_LOCAL_LEN
        && local.split('.').all(|atom| !atom.is_empty())
        && local.chars().all(|c| c.is_alphanumeric() || c == '.' || "!#$%&'*+/=?^_`{|}~-".contains(c))
}

/// A DNS label in its ASCII form (internationalised names as `xn--` punycode).
fn label_ok(label: &str) -> bool {
    !label.is_empty()
        && label.len() <= MAX_LABEL_LEN
        && !label.starts_with('-')
        && !label.ends_with('-')
        && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// A domain an operator lists (`notify_domains`): lowercase, at least two labels.
pub fn parse_domain(raw: &str) -> Option<String> {
    let domain = raw.trim().to_ascii_lowercase();
    let ok = domain.len() <= MAX_DOMAIN_LEN && domain.split('.').all(label_ok) && domain.contains('.');
    ok.then_some(domain)
}

/// Whether `domain` is `allowed` or a subdomain of it (both lowercase).
pub fn domain_within(domain: &str, allowed: &str) -> bool {
    domain == allowed || domain.strip_suffix(allowed).is_some_and(|head| head.ends_with('.'))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn ordinary_addresses_pass_with_their_domain() {
        for (raw, domain) in [
            ("ops@acme.com", "acme.com"),
            ("first.last+tag@Mail.Example.CO.uk", "mail.example.co.uk"),
            ("o'brien@xn--bcher-kva.ch", "xn--bcher-kva.ch"),
            ("josé@acme.io", "acme.io"),
        ] {
            assert_eq!(check_notify_email(raw).as_deref(), Ok(domain), "{raw}");
        }
    }

    #[test]
    fn hostile_addresses_are_refused_with_their_reason() {
        let cases: [(&str, &str); 22] = [
            ("a@[10.0.0.5]", "ip_literal"),
            ("a@[IPv6:::1]", "ip_literal"),
            ("a@10.0.0.5", "ip_literal"),
            ("root@localhost", "single_label_domain"),
            ("root@intranet", "single_label_domain"),
            ("a@printer.local", "reserved_domain"),
            ("a@db.internal", "reserved_domain"),
            ("a@x.localhost", "reserved_domain"),
            ("a@acme.test", "reserved_domain"),
            ("a@acme.invalid", "reserved_domain"),
            ("a@acme.example", "reserved_domain"),
            ("a@router.home.arpa", "reserved_domain"),
            ("a@acme.com\r\nBcc: all@evil.com", "control_character"),
            ("a@acme.com\n", "control_character"),
            ("a\0@acme.com", "control_character"),
            ("a@acme.com,b@acme.com", "invalid_value"),
            ("a@acme.com b@acme.com", "invalid_value"),
            ("Name <a@acme.com>", "invalid_value"),
            ("a@b@acme.com", "invalid_value"),
            (".a@acme.com", "invalid_value"),
            ("a@acme.com.", "invalid_value"),
            ("a@-acme.com", "invalid_value"),
        ];
        for (raw, code) in cases {
            let err = check_notify_email(raw).expect_err(raw);
            assert_eq!(err.code(), code, "{raw:?}: {err}");
        }
        let long_local = format!("{}@acme.com", "a".repeat(65));
        let long = format!("a@{}.com", vec!["b".repeat(63); 4].join("."));
        for raw in [long_local.as_str(), long.as_str(), "", "@acme.com", "a@"] {
            assert_eq!(check_notify_email(raw), Err(EmailError::Malformed), "{raw}");
        }
    }

    #[test]
    fn configured_addresses_may_use_internal_domains() {
        assert_eq!(check_configured_email("ops@acme.test").as_deref(), Ok("acme.test"));
        assert_eq!(check_configured_email("a@[10.0.0.5]"), Err(EmailError::IpLiteral));
        assert_eq!(check_configured_email("a@b.test\r\n"), Err(EmailError::ControlCharacter));
    }

    #[test]
    fn allowed_domains_include_their_subdomains_only() {
        assert_eq!(parse_domain(" Acme.COM ").as_deref(), Some("acme.com"));
        assert_eq!(parse_domain("acme"), None);
        assert_eq!(parse_domain("*.acme.com"), None);
        assert!(domain_within("acme.com", "acme.com"));
        assert!(domain_within("eu.mail.acme.com", "acme.com"));
        assert!(!domain_within("evilacme.com", "acme.com"));
        assert!(!domain_within("acme.com.evil.io", "acme.com"));
    }

    proptest! {
        /// Any text: a typed answer, never a panic; an accepted address has no control
        /// character, one '@' and a dotted domain.
        #[test]
        fn any_text_gets_a_typed_answer(raw in any::<String>(), lead in "[a-z]{0,3}@?[a-z.\\[\\]0-9]{0,8}") {
            for candidate in [raw.as_str(), lead.as_str(), &format!("{lead}{raw}")] {
                if let Ok(domain) = check_notify_email(candidate) {
                    prop_assert!(!candidate.chars().any(char::is_control));
                    prop_assert_eq!(candidate.matches('@').count(), 1);
                    prop_assert!(domain.contains('.') && !domain.starts_with('['));
                }
            }
        }
    }
}
