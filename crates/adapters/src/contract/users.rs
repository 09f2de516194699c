//! [`UserRepository`] contract. `seed` must store the given users for their scope.

use std::collections::BTreeSet;

use domain::{Scope, User, UserFilter, synthetic};
use futures::TryStreamExt;
use ports::UserRepository;

pub fn acme() -> Scope {
    Scope::parse("acme/prod").unwrap()
}

pub fn globex() -> Scope {
    Scope::parse("globex/prod").unwrap()
}

/// The users every check expects the repository to hold: 1,000 for acme, 300 for globex.
pub fn fixture() -> Vec<(Scope, Vec<User>)> {
    vec![
        (acme(), (0..1_000).map(|i| synthetic::user(&acme(), i)).collect()),
        (globex(), (0..300).map(|i| synthetic::user(&globex(), i)).collect()),
    ]
}

fn filters() -> Vec<UserFilter> {
    let json = [
        serde_json::json!({}),
        serde_json::json!({"status": "active"}),
        serde_json::json!({"status": ["inactive", "suspended"]}),
        serde_json::json!({"email_domain": "EXAMPLE.org"}),
        serde_json::json!({"created_after": "2023-01-01T05:00:00Z", "created_before": "2023-01-01T09:30:00Z"}),
        serde_json::json!({"status": "active", "email_domain": "mail.test", "created_after": "2023-01-01T02:00:00Z"}),
        serde_json::json!({"email_domain": "nowhere.test"}),
    ];
    json.into_iter()
        .map(|f| {
            domain::ExportSpec::from_json(&serde_json::json!({"format": "csv", "user_filters": f}))
                .unwrap()
                .user_filters
        })
        .collect()
}

/// Runs every check against a repository seeded with [`fixture`].
pub async fn run_all(repo: &dyn UserRepository) {
    streams_match_filters_in_id_order(repo).await;
    limit_caps_the_stream(repo).await;
    after_resumes_past_a_keyset_position(repo).await;
    unknown_scope_is_empty(repo).await;
    repo.ping().await.unwrap();
}

async fn streams_match_filters_in_id_order(repo: &dyn UserRepository) {
    for (scope, users) in fixture() {
        for filter in filters() {
            let mut expected: Vec<&User> = users.iter().filter(|u| filter.matches(u)).collect();
            expected.sort_by_key(|u| u.id);
            let got: Vec<User> = repo.stream(&scope, &filter, None, None).try_collect().await.unwrap();
            let got_ids: Vec<_> = got.iter().map(|u| u.id).collect();
            let want_ids: Vec<_> = expected.iter().map(|u| u.id).collect();
            assert_eq!(got_ids, want_ids, "scope {scope}, filter {filter:?}");
            assert_eq!(got.first(), expected.first().copied(), "users come back unchanged");
            assert_eq!(
                repo.count(&scope, &filter).await.unwrap(),
                want_ids.len() as u64,
                "count, filter {filter:?}"
            );
        }
    }
}

async fn limit_caps_the_stream(repo: &dyn UserRepository) {
    let all = UserFilter::default();
    for limit in [1, 511, 512, 513, 999, 1_000, 5_000] {
        let got: Vec<User> = repo.stream(&acme(), &all, None, Some(limit)).try_collect().await.unwrap();
        assert_eq!(got.len() as u64, limit.min(1_000), "limit {limit}");
        let ids: BTreeSet<_> = got.iter().map(|u| u.id).collect();
        assert_eq!(ids.len(), got.len(), "no duplicates across pages");
    }
}

/// A resumed export reads on after the last user it wrote: exactly the users after it, in
/// order, with the limit counting only those.
async fn after_resumes_past_a_keyset_position(repo: &dyn UserRepository) {
    let all = UserFilter::default();
    let every: Vec<User> = repo.stream(&acme(), &all, None, None).try_collect().await.unwrap();
    for at in [0, 1, 511, 512, 998] {
        let after = every[at].id;
        let rest: Vec<User> = repo.stream(&acme(), &all, Some(after), None).try_collect().await.unwrap();
        assert_eq!(
            rest.iter().map(|u| u.id).collect::<Vec<_>>(),
            every[at + 1..].iter().map(|u| u.id).collect::<Vec<_>>(),
            "after row {at}"
        );
        let capped: Vec<User> = repo.stream(&acme(), &all, Some(after), Some(3)).try_collect().await.unwrap();
        assert_eq!(capped.len(), 3.min(every.len() - at - 1), "after row {at}, limit 3");
    }
    let last = every.last().unwrap().id;
    let none: Vec<User> = repo.stream(&acme(), &all, Some(last), None).try_collect().await.unwrap();
    assert!(none.is_empty());
}

async fn unknown_scope_is_empty(repo: &dyn UserRepository) {
    let nobody = Scope::parse("nobody/prod").unwrap();
    let got: Vec<User> =
        repo.stream(&nobody, &UserFilter::default(), None, None).try_collect().await.unwrap();
    assert!(got.is_empty());
    let other_env = Scope::parse("acme/staging").unwrap();
    assert_eq!(repo.count(&other_env, &UserFilter::default()).await.unwrap(), 0);
}
