//! The real binary on its production backends: PostgreSQL users and records, S3 storage (moto).
//! Exports stream from the database into a multipart upload; downloads redirect to presigned
//! URLs; one tenant's key never reaches another tenant's export or object.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::{Command, Stdio};

use common::{Running, admin_database_url, free_port, psql, s3_endpoint, userexport_binary, wait_ready};
use sha2::Digest;

struct Deployment {
    api: String,
    database_url: String,
    db_name: String,
    _process: Running,
}

impl Drop for Deployment {
    fn drop(&mut self) {
        psql(&admin_database_url(), &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.db_name));
    }
}

async fn deploy(bucket: &str) -> Deployment {
    let admin = admin_database_url();
    let db_name = format!("userexport_sys_{}", std::process::id());
    psql(&admin, &format!("DROP DATABASE IF EXISTS {db_name} WITH (FORCE)"));
    psql(&admin, &format!("CREATE DATABASE {db_name}"));
    let database_url = format!("{}/{db_name}", admin.rsplit_once('/').unwrap().0);
    let endpoint = s3_endpoint();
    let created = adapters::contract::http_client().put(format!("{endpoint}/{bucket}")).send().await.unwrap();
    assert!(created.status().is_success());

    let bin = userexport_binary();
    let env = |cmd: &mut Command| {
        cmd.env("DATABASE_URL", &database_url)
            .env("USEREXPORT_USERS", "postgres")
            .env("USEREXPORT_EXPORTS", "postgres")
            .env("USEREXPORT_STORAGE", "s3")
            .env("USEREXPORT_S3_BUCKET", bucket)
            .env("AWS_ENDPOINT_URL", &endpoint)
            .env("AWS_REGION", "us-east-1")
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env(
                "USEREXPORT_API_KEYS",
                "key-a-0123456789abcdefghijklmn=acme/prod,key-b-0123456789abcdefghijklmn=globex/prod",
            )
            .stdout(Stdio::null())
            .stderr(Stdio::null());
    };
    for (scope, count) in [("acme/prod", "60000"), ("globex/prod", "500")] {
        let mut seed = Command::new(&bin);
        env(&mut seed);
        assert!(seed.args(["seed", "--scope", scope, "--count", count]).status().unwrap().success());
    }
    let port = free_port();
    let mut serve = Command::new(&bin);
    env(&mut serve);
    let mut process = Running(serve.env("USEREXPORT_LISTEN", format!("127.0.0.1:{port}")).spawn().unwrap());
    let api = format!("http://127.0.0.1:{port}");
    wait_ready(&format!("{api}/readyz"), &mut process).await;
    Deployment { api, database_url, db_name, _process: process }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exports_stream_from_postgres_to_s3_and_download_through_presigned_urls() {
    let bucket = format!("sys-{}", std::process::id());
    let d = deploy(&bucket).await;
    let http = adapters::contract::http_client_builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();

    let ready: serde_json::Value =
        http.get(format!("{}/readyz", d.api)).send().await.unwrap().json().await.unwrap();
    assert_eq!(ready["status"], "ready", "{ready}");

    let body = serde_json::json!({"format": "csv", "user_filters": {"status": ["active", "inactive"]}});
    let sync = http.post(format!("{}/v1/exports/sync?timeout_s=60", d.api)).json(&body);
    let export = common::json_of(sync, "key-a-0123456789abcdefghijklmn").await;
    assert_eq!(export["status"], "completed", "{export}");
    assert_eq!(export["record_count"], 54_000, "9 in 10 synthetic users are active or inactive");
    let id = export["id"].as_str().unwrap();

    // The record is in PostgreSQL.
    let stored = Command::new("psql")
        .args([
            &d.database_url,
            "-Atc",
            &format!("SELECT status, record_count FROM exports WHERE id = '{id}'"),
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&stored.stdout).trim(), "completed|54000");

    // Download: a 307 to a presigned URL that serves exactly the recorded bytes.
    let redirect = http
        .get(format!("{}/v1/exports/{id}/download", d.api))
        .bearer_auth("key-a-0123456789abcdefghijklmn")
        .send()
        .await
        .unwrap();
    assert_eq!(redirect.status(), 307);
    let location = redirect.headers()["location"].to_str().unwrap().to_owned();
    assert!(location.starts_with(&s3_endpoint()) && location.contains("X-Amz-Signature"), "{location}");
    assert!(location.contains(&format!("acme/prod/exports/{id}.attempt-1.csv")), "the attempt's own key");
    let body = adapters::contract::http_get(&location)
        .await
        .unwrap()
        .error_for_status()
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(hex::encode(sha2::Sha256::digest(&body)), export["sha256"].as_str().unwrap());
    assert_eq!(csv::Reader::from_reader(body.as_ref()).records().count(), 54_000);

    // Tenant B: the export and its object do not exist for it.
    for path in [format!("/v1/exports/{id}"), format!("/v1/exports/{id}/download")] {
        let other = http
            .get(format!("{}{path}", d.api))
            .bearer_auth("key-b-0123456789abcdefghijklmn")
            .send()
            .await
            .unwrap();
        assert_eq!(other.status(), 404, "{path}");
    }
    let theirs =
        common::json_of(http.get(format!("{}/v1/exports", d.api)), "key-b-0123456789abcdefghijklmn").await;
    assert_eq!(theirs["items"].as_array().unwrap().len(), 0);
}
