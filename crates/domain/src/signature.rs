//! The webhook signature scheme, inbound (`POST /v1/events/export-requested`) and outbound
//! (`notify_url` callbacks):
//!
//! ```text
//! X-Userexport-Timestamp: 1700000000
//! X-Userexport-Signature: v1=<hex HMAC-SHA256(secret, "{timestamp}.{raw body}")>
//! ```
//!
//! The signature header may list several `v1=` values, comma-separated, so a producer can sign
//! with the old and the new secret while a secret is rotated. A timestamp outside the replay
//! window (either direction) is refused before any signature is checked against it.

use std::time::Duration;

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

pub const TIMESTAMP_HEADER: &str = "X-Userexport-Timestamp";
pub const SIGNATURE_HEADER: &str = "X-Userexport-Signature";
/// How far a timestamp may be from the receiver's clock, in either direction.
pub const DEFAULT_REPLAY_WINDOW: Duration = Duration::from_secs(300);
const SCHEME: &str = "v1=";
/// More signatures than this in one header are refused (each costs an HMAC).
const MAX_SIGNATURES: usize = 8;

type HmacSha256 = Hmac<Sha256>;

/// Why a signed request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the {0} header is missing")]
    MissingHeader(&'static str),
    #[error("the {0} header is malformed")]
    Malformed(&'static str),
    /// The timestamp is further than the replay window from now (`age_s` < 0: in the future).
    #[error("the timestamp is {age_s} s away from the server's clock, outside the replay window")]
    Stale { age_s: i64 },
    #[error("no signature matches")]
    Mismatch,
}

/// `v1=<hex>` for `body` sent at `timestamp` (unix seconds).
pub fn sign(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    format!("{SCHEME}{}", hex::encode(mac(secret, timestamp, body).finalize().into_bytes()))
}

/// Verifies the two headers' values against `body`, at `now` (unix seconds).
///
/// # Errors
/// [`SignatureError`]: a missing or malformed header, a timestamp outside `window`, or no
/// `v1=` signature that matches (compared in constant time).
pub fn verify(
    secret: &[u8],
    timestamp: Option<&str>,
    signature: Option<&str>,
    body: &[u8],
    now: i64,
    window: Duration,
) -> Result<(), SignatureError> {
    SignedHeaders::parse(timestamp, signature, now, window)?.verify(secret, body)
}

/// Signature headers that are present, well-formed and fresh: everything a receiver can check
/// before reading the body, so an unauthenticated sender cannot make it read one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedHeaders {
    timestamp: i64,
    candidates: Vec<Vec<u8>>,
}

impl SignedHeaders {
    /// Checks the two headers' values at `now` (unix seconds).
    ///
    /// # Errors
    /// A missing or malformed header, or a timestamp outside `window`.
    pub fn parse(
        timestamp: Option<&str>,
        signature: Option<&str>,
        now: i64,
        window: Duration,
    ) -> Result<Self, SignatureError> {
        let timestamp = timestamp.ok_or(SignatureError::MissingHeader(TIMESTAMP_HEADER))?;
        let signature = signature.ok_or(SignatureError::MissingHeader(SIGNATURE_HEADER))?;
        let timestamp: i64 = timestamp
            .trim()
            .parse()
            .ok()
            .filter(|t: &i64| *t >= 0)
            .ok_or(SignatureError::Malformed(TIMESTAMP_HEADER))?;
        let candidates = signatures(signature)?;
        let age_s = now.saturating_sub(timestamp);
        let window_s = i64::try_from(window.as_secs()).unwrap_or(i64::MAX);
        if age_s.unsigned_abs() > window_s.unsigned_abs() {
            return Err(SignatureError::Stale { age_s });
        }
        Ok(Self { timestamp, candidates })
    }

    /// Whether one of the signatures is `body`'s under `secret`.
    ///
    /// # Errors
    /// [`SignatureError::Mismatch`] when none is (each compared in constant time).
    pub fn verify(&self, secret: &[u8], body: &[u8]) -> Result<(), SignatureError> {
        let expected = mac(secret, self.timestamp, body);
        // Every candidate is checked (no early exit), each in constant time.
        let matched = self
            .candidates
            .iter()
            .fold(false, |ok, candidate| expected.clone().verify_slice(candidate).is_ok() | ok);
        if matched { Ok(()) } else { Err(SignatureError::Mismatch) }
    }
}

fn mac(secret: &[u8], timestamp: i64, body: &[u8]) -> HmacSha256 {
    // HMAC takes keys of any length: `new_from_slice` cannot fail for it.
    let mut mac = <HmacSha256 as KeyInit>::new_from_slice(secret).expect("HMAC accepts keys of any length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// The decoded `v1=` values of the header; other schemes are ignored (for future versions).
fn signatures(header: &str) -> Result<Vec<Vec<u8>>, SignatureError> {
    let malformed = SignatureError::Malformed(SIGNATURE_HEADER);
    let parts: Vec<&str> = header.split(',').map(str::trim).filter(|p| !p.is_empty()).collect();
    if parts.is_empty() || parts.len() > MAX_SIGNATURES {
        return Err(malformed);
    }
    let mut decoded = Vec::new();
    for part in parts {
        if let Some(hex_sig) = part.strip_prefix(SCHEME) {
            let bytes = hex::decode(hex_sig).map_err(|_| malformed.clone())?;
            if bytes.len() != 32 {
                return Err(malformed);
            }
            decoded.push(bytes);
        }
    }
    if decoded.is_empty() { Err(malformed) } else { Ok(decoded) }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const SECRET: &[u8] = b"whsec-0123456789abcdef";
    const BODY: &[u8] = br#"{"event_id":"e1"}"#;
    const T: i64 = 1_700_000_000;
    const W: Duration = DEFAULT_REPLAY_WINDOW;

    fn check(signature: &str, timestamp: i64, now: i64) -> Result<(), SignatureError> {
        verify(SECRET, Some(&timestamp.to_string()), Some(signature), BODY, now, W)
    }

    #[test]
    fn matches_a_known_vector() {
        // printf '%s' '1700000000.{"event_id":"e1"}' | openssl dgst -sha256 -hmac 'whsec-0123456789abcdef'
        let expected = "v1=72f70b7046318fa9059d0bdee508ff3cff78cd99b977824538d6250efad82265";
        assert_eq!(sign(SECRET, T, BODY), expected);
        assert_eq!(check(expected, T, T), Ok(()));
    }

    #[test]
    fn refuses_another_body_secret_or_timestamp() {
        let good = sign(SECRET, T, BODY);
        assert_eq!(
            verify(SECRET, Some(&T.to_string()), Some(&good), b"{}", T, W),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(check(&sign(b"another-secret-123456", T, BODY), T, T), Err(SignatureError::Mismatch));
        assert_eq!(check(&good, T + 1, T), Err(SignatureError::Mismatch));
    }

    #[test]
    fn accepts_any_matching_signature_of_a_rotation_list() {
        let old = sign(b"the-old-secret-0123456", T, BODY);
        let new = sign(SECRET, T, BODY);
        assert_eq!(check(&format!("{old}, {new}"), T, T), Ok(()));
        assert_eq!(check(&format!("{new},{old}"), T, T), Ok(()));
        assert_eq!(check(&format!("v0=abc,{new}"), T, T), Ok(()), "unknown schemes are skipped");
        assert_eq!(check(&old, T, T), Err(SignatureError::Mismatch));
    }

    #[test]
    fn the_replay_window_holds_in_both_directions_up_to_its_edges() {
        let good = sign(SECRET, T, BODY);
        assert_eq!(check(&good, T, T + 300), Ok(()));
        assert_eq!(check(&good, T, T - 300), Ok(()));
        assert_eq!(check(&good, T, T + 301), Err(SignatureError::Stale { age_s: 301 }));
        assert_eq!(check(&good, T, T - 301), Err(SignatureError::Stale { age_s: -301 }));
    }

    #[test]
    fn reports_missing_and_malformed_headers() {
        let good = sign(SECRET, T, BODY);
        assert_eq!(
            verify(SECRET, None, Some(&good), BODY, T, W),
            Err(SignatureError::MissingHeader(TIMESTAMP_HEADER))
        );
        assert_eq!(
            verify(SECRET, Some("1"), None, BODY, T, W),
            Err(SignatureError::MissingHeader(SIGNATURE_HEADER))
        );
        for bad_ts in ["", "soon", "-5", "1.5"] {
            assert_eq!(
                verify(SECRET, Some(bad_ts), Some(&good), BODY, T, W),
                Err(SignatureError::Malformed(TIMESTAMP_HEADER)),
                "{bad_ts:?}"
            );
        }
        for bad_sig in ["", "v1=zz", "v1=abcd", "sha256=00", ",", &[good.as_str(); 9].join(",")] {
            assert_eq!(check(bad_sig, T, T), Err(SignatureError::Malformed(SIGNATURE_HEADER)), "{bad_sig:?}");
        }
    }

    #[test]
    fn headers_are_checked_without_the_body() {
        let good = sign(SECRET, T, BODY);
        let headers = SignedHeaders::parse(Some(&T.to_string()), Some(&good), T, W).unwrap();
        assert_eq!(headers.verify(SECRET, BODY), Ok(()));
        assert_eq!(headers.verify(SECRET, b"{}"), Err(SignatureError::Mismatch));
        let stale = SignedHeaders::parse(Some(&T.to_string()), Some(&good), T + 301, W);
        assert_eq!(stale, Err(SignatureError::Stale { age_s: 301 }));
    }
}

/// Signature headers are untrusted input: any text is a typed answer, never a panic.
#[cfg(test)]
mod proptests {
    use proptest::prelude::*;

    use super::*;

    fn arb_signature_header() -> impl Strategy<Value = String> {
        let part = prop_oneof![
            ".{0,80}",
            "[0-9a-f]{0,70}".prop_map(|hex| format!("v1={hex}")),
            "[0-9a-fA-Fg]{64}".prop_map(|hex| format!("v1={hex}")),
            Just(String::new()),
        ];
        prop::collection::vec(part, 0..12).prop_map(|parts| parts.join(","))
    }

    proptest! {
        #[test]
        fn any_header_text_is_ok_or_a_typed_error(
            timestamp in prop_oneof![".{0,30}", any::<i64>().prop_map(|t| t.to_string())],
            header in arb_signature_header(),
            body in prop::collection::vec(any::<u8>(), 0..100),
            now in any::<i64>(),
            window_s in any::<u64>(),
        ) {
            let window = Duration::from_secs(window_s);
            match verify(b"secret-0123456789abcdef", Some(&timestamp), Some(&header), &body, now, window) {
                Ok(()) => prop_assert!(false, "an arbitrary header matched"),
                Err(SignatureError::MissingHeader(_)) => prop_assert!(false, "both headers were given"),
                Err(SignatureError::Malformed(_) | SignatureError::Stale { .. } | SignatureError::Mismatch) => {}
            }
        }

        #[test]
        fn what_sign_makes_verify_accepts(
            secret in prop::collection::vec(any::<u8>(), 0..80),
            timestamp in 0i64..i64::MAX / 2,
            body in prop::collection::vec(any::<u8>(), 0..100),
        ) {
            let header = sign(&secret, timestamp, &body);
            let ok = verify(&secret, Some(&timestamp.to_string()), Some(&header), &body, timestamp,
                            DEFAULT_REPLAY_WINDOW);
            prop_assert_eq!(ok, Ok(()));
        }
    }
}
