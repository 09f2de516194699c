//! Throwaway PostgreSQL databases for tests against the real server.

use sqlx::postgres::PgPool;
use sqlx::{AssertSqlSafe, Connection, PgConnection};

/// The server tests use: `TEST_DATABASE_URL`, or the local one every development machine runs.
/// Tests fail (never skip) when it is unreachable.
pub fn admin_url() -> String {
    std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// A freshly created and migrated database, dropped by [`TestDatabase::drop_now`].
#[derive(Debug)]
pub struct TestDatabase {
    pub pool: PgPool,
    pub url: String,
    name: String,
}

impl TestDatabase {
    pub async fn create() -> Self {
        let admin = admin_url();
        let name = format!("userexport_test_{}", uuid::Uuid::new_v4().simple());
        let mut conn = PgConnection::connect(&admin)
            .await
            .unwrap_or_else(|e| panic!("PostgreSQL is required for this test ({admin}): {e}"));
        sqlx::query(AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&mut conn).await.unwrap();
        conn.close().await.unwrap();
        let url = match admin.rsplit_once('/') {
            Some((server, _)) => format!("{server}/{name}"),
            None => panic!("TEST_DATABASE_URL must end with a database name: {admin}"),
        };
        let pool = crate::postgres::connect(&url, 8).await.unwrap();
        crate::postgres::migrate(&pool).await.unwrap();
        Self { pool, url, name }
    }

    pub async fn drop_now(self) {
        self.pool.close().await;
        let mut conn = PgConnection::connect(&admin_url()).await.unwrap();
        sqlx::query(AssertSqlSafe(format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name)))
            .execute(&mut conn)
            .await
            .unwrap();
    }
}
