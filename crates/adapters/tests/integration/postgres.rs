//! The PostgreSQL adapters against the shared port contracts, on the real server.

use std::sync::Arc;

use adapters::contract::{self, pg::TestDatabase};
use adapters::postgres::{PgBatchRepository, PgExportRepository, PgUserRepository, seed_synthetic_users};
use domain::{Scope, UserFilter};
use futures::{StreamExt, TryStreamExt};
use ports::UserRepository;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_export_repository_honours_the_contract() {
    let db = TestDatabase::create().await;
    contract::exports::run_all(Arc::new(PgExportRepository::new(db.pool.clone()))).await;
    db.drop_now().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_batch_repository_honours_the_contract() {
    let db = TestDatabase::create().await;
    contract::batches::run_all(Arc::new(PgBatchRepository::new(db.pool.clone()))).await;
    db.drop_now().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_user_repository_filters_in_sql_like_the_memory_adapter() {
    let db = TestDatabase::create().await;
    // Insert the fixture through COPY's sibling path: plain inserts of the exact users.
    for (scope, users) in contract::users::fixture() {
        for u in users {
            sqlx::query(
                "INSERT INTO users (tenant_id, environment_id, id, email, name, status, created_at, updated_at, metadata) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            )
            .bind(scope.tenant.as_str())
            .bind(scope.environment.as_str())
            .bind(u.id.as_uuid())
            .bind(&u.email)
            .bind(&u.name)
            .bind(u.status.as_str())
            .bind(u.created_at)
            .bind(u.updated_at)
            .bind(sqlx::types::Json(&u.metadata))
            .execute(&db.pool)
            .await
            .unwrap();
        }
    }
    contract::users::run_all(&PgUserRepository::new(db.pool.clone())).await;
    db.drop_now().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeding_replaces_a_scope_with_synthetic_users_through_copy() {
    let db = TestDatabase::create().await;
    let scope = Scope::parse("acme/prod").unwrap();
    assert_eq!(seed_synthetic_users(&db.pool, &scope, 25_000).await.unwrap(), 25_000);
    assert_eq!(seed_synthetic_users(&db.pool, &scope, 12_345).await.unwrap(), 12_345, "re-seeding replaces");
    let repo = PgUserRepository::new(db.pool.clone());
    let users: Vec<_> = repo.stream(&scope, &UserFilter::default(), None, None).try_collect().await.unwrap();
    assert_eq!(users.len(), 12_345);
    let mut expected: Vec<_> = (0..12_345).map(|i| domain::synthetic::user(&scope, i)).collect();
    expected.sort_by_key(|u| u.id);
    assert_eq!(users, expected, "COPY stores exactly the synthetic users, awkward names included");
    db.drop_now().await;
}

#[tokio::test]
async fn an_unreachable_database_is_reported_as_unavailable() {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .acquire_timeout(std::time::Duration::from_millis(500))
        .connect_lazy("postgres://postgres@127.0.0.1:1/none")
        .unwrap();
    let err = PgUserRepository::new(pool).ping().await.unwrap_err();
    assert!(err.is_retryable(), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoning_a_stream_midway_leaves_the_pool_usable() {
    let db = TestDatabase::create().await;
    let scope = Scope::parse("acme/prod").unwrap();
    seed_synthetic_users(&db.pool, &scope, 30_000).await.unwrap();
    // One connection: a COPY left half-read must not wedge it for the next export.
    let pool = adapters::postgres::connect(&db.url, 1).await.unwrap();
    let repo = PgUserRepository::new(pool.clone());
    for _ in 0..3 {
        let first: Vec<_> =
            repo.stream(&scope, &UserFilter::default(), None, None).take(10).try_collect().await.unwrap();
        assert_eq!(first.len(), 10);
    }
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let all: Vec<_> = repo.stream(&scope, &UserFilter::default(), None, None).try_collect().await.unwrap();
    assert_eq!(all.len(), 30_000);
    assert_eq!(repo.count(&scope, &UserFilter::default()).await.unwrap(), 30_000);
    pool.close().await;
    db.drop_now().await;
}
