//! How strong a configured secret (API key, operator key, webhook secret) is, estimated
//! conservatively from its length and the smallest usual alphabet its characters fit in: a key
//! is assumed to be random over that alphabet, never more. At least [`MIN_SECRET_BITS`] are
//! needed: 32 hex characters (`openssl rand -hex 16`), 22 base64 or base64url characters
//! (`openssl rand -base64 32` gives 44), 20 of printable ASCII.

/// Bits a secret must carry.
pub const MIN_SECRET_BITS: u32 = 128;

/// A secret with fewer distinct characters than this is a pattern (`aaaa…`, `0101…`), whatever
/// its length: random keys of the lengths above have far more.
const MIN_DISTINCT_CHARS: usize = 8;

/// Why a secret was refused. Never contains the secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "carries about {bits} bits; at least {MIN_SECRET_BITS} bits are needed: e.g. 32 hex or 22 base64url \
     random characters (generate one with `openssl rand -base64 32`)"
)]
pub struct WeakSecret {
    pub bits: u32,
}

/// Whether a character belongs to an alphabet.
type Member = fn(char) -> bool;

/// The alphabets a secret is measured against, smallest first, with their size.
const ALPHABETS: [(Member, u32); 4] = [
    (|c| c.is_ascii_digit(), 10),
    (|c| c.is_ascii_digit() || ('a'..='f').contains(&c), 16),
    (|c| c.is_ascii_digit() || ('A'..='F').contains(&c), 16),
    (|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '/' | '-' | '_'), 64),
];
/// Any other character: printable ASCII's 94 symbols (a larger set earns nothing more).
const PRINTABLE: u32 = 94;

/// The estimated entropy of `secret` in bits: length x log2(alphabet), 0 for a pattern.
pub fn estimated_bits(secret: &str) -> u32 {
    // Base64 padding carries nothing.
    let body = secret.trim_end_matches('=');
    let mut distinct: Vec<char> = body.chars().collect();
    distinct.sort_unstable();
    distinct.dedup();
    if distinct.len() < MIN_DISTINCT_CHARS {
        return 0;
    }
    let alphabet =
        ALPHABETS.iter().find(|(fits, _)| body.chars().all(fits)).map_or(PRINTABLE, |&(_, size)| size);
    let bits = body.chars().count() as f64 * f64::from(alphabet).log2();
    // Saturating: anything past u32 is plenty.
    bits.floor().min(f64::from(u32::MAX)) as u32
}

/// `Ok` when `secret` carries at least [`MIN_SECRET_BITS`].
pub fn check_strength(secret: &str) -> Result<(), WeakSecret> {
    let bits = estimated_bits(secret);
    if bits >= MIN_SECRET_BITS { Ok(()) } else { Err(WeakSecret { bits }) }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn generated_keys_pass_and_short_or_patterned_ones_do_not() {
        for strong in [
            "0123456789abcdef0123456789abcdef",             // 32 hex: 128
            "0123456789ABCDEF0123456789ABCDEF",             // 32 HEX: 128
            "q7Xv0-Lk_3ZbNw9Rt2YcPa",                       // 22 base64url: 132
            "K8p1mT0bq9s2Wc7xVd4LrZ6n3YhF5gJ2aE8uQ0iOw1M=", // openssl rand -base64 32
            "Tr0ub4dor&3!x@Zq#7$w",                         // 20 printable: 131
        ] {
            assert_eq!(check_strength(strong), Ok(()), "{strong}");
        }
        for (weak, bits) in [
            ("k1", 0),
            ("key-a", 0),
            ("0123456789abcdef", 64),                        // 16 hex
            ("0123456789abcdef0123456789abcde", 124),        // 31 hex
            ("q7Xv0-Lk_3ZbNw9Rt2YcP", 126),                  // 21 base64url
            ("aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", 0), // a pattern
            ("12345678901234567890123456789012345678", 126), // 38 digits
        ] {
            assert_eq!(check_strength(weak), Err(WeakSecret { bits }), "{weak}");
        }
        assert!(!WeakSecret { bits: 3 }.to_string().contains("k1"));
    }

    proptest! {
        /// Any text: an answer, never a panic, and never more than printable ASCII can carry.
        #[test]
        fn any_text_is_measured(secret in any::<String>()) {
            let bits = estimated_bits(&secret);
            prop_assert!(u64::from(bits) <= secret.chars().count() as u64 * 7);
            prop_assert_eq!(check_strength(&secret).is_ok(), bits >= MIN_SECRET_BITS);
        }
    }
}
