//! Deterministic synthetic users for demos, seeding and benchmarks. The same scope and index
//! always give the same user, in every adapter.

use chrono::{DateTime, Duration, Utc};
use serde_json::json;
use uuid::Uuid;

use crate::ids::{Scope, UserId};
use crate::user::{User, UserStatus};

const NAMESPACE: Uuid = Uuid::from_u128(0x1f6e_8a3b_52c4_4d7e_a0b9_3c5d_6e7f_8091);
const DOMAINS: [&str; 3] = ["example.com", "example.org", "mail.test"];
/// Names that exercise quoting, formula neutralisation and unicode in every export.
const AWKWARD_NAMES: [&str; 4] = ["Zoë \"Z\" O'Brien, Jr.", "=HYPERLINK(\"x\")", "李 小龍", "line\nbreak"];

/// The `index`-th synthetic user of `scope`.
pub fn user(scope: &Scope, index: u64) -> User {
    let id = UserId::from_uuid(Uuid::new_v5(&NAMESPACE, format!("{scope}/{index}").as_bytes()));
    let base = DateTime::<Utc>::from_timestamp(1_672_531_200, 0).unwrap_or_default(); // 2023-01-01
    let created_at = base + Duration::minutes(i64::try_from(index).unwrap_or(i64::MAX / 120));
    let status = match index % 10 {
        0..=6 => UserStatus::Active,
        7 | 8 => UserStatus::Inactive,
        _ => UserStatus::Suspended,
    };
    let name = if index.is_multiple_of(97) {
        AWKWARD_NAMES[usize::try_from(index / 97 % 4).unwrap_or(0)].to_owned()
    } else {
        format!("User {index}")
    };
    let domain = DOMAINS[usize::try_from(index % 3).unwrap_or(0)];
    let metadata = json!({"plan": if index.is_multiple_of(4) { "pro" } else { "free" }, "seq": index});
    User {
        id,
        email: format!("user{index}@{domain}"),
        name,
        status,
        created_at,
        updated_at: created_at + Duration::days(1),
        metadata: metadata.as_object().cloned().unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synthetic_users_are_deterministic_and_scope_specific() {
        let a = Scope::parse("acme/prod").unwrap();
        let b = Scope::parse("globex/prod").unwrap();
        assert_eq!(user(&a, 5), user(&a, 5));
        assert_ne!(user(&a, 5).id, user(&b, 5).id);
        assert_ne!(user(&a, 5).id, user(&a, 6).id);
    }
}
