//! S3 and S3-compatible servers: settings and construction. Uploads are multipart (see
//! `multipart.rs`); downloads are presigned URLs.

use std::sync::Arc;

use anyhow::Context;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::path::Path as StorePath;

use super::multipart::MultipartUploads;
use super::{ObjectStorage, Uploads};

/// Bytes buffered before an upload puts a part up, and the size of each such part.
const S3_PART_BYTES: usize = 8 * 1024 * 1024;
/// S3's minimum size of a part other than the last: a checkpoint uploads one, so none is smaller.
const S3_MIN_CHECKPOINT_BYTES: usize = 5 * 1024 * 1024;
/// Parts going up at once. Each holds its bytes (5 to 8 MiB) until stored, so an upload holds at
/// most this many parts plus its buffer: 3 x 8 + 8 = 32 MiB at the very worst, about 20 MiB with
/// the 5 MiB parts that checkpoints cut. More would go faster only on a fast link, and every part
/// in flight is work a crash makes the next attempt redo.
const S3_PARTS_IN_FLIGHT: usize = 3;

/// Where and how to reach an S3 bucket. Credentials, region and the rest come from the standard
/// `AWS_*` variables (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`,
/// `AWS_REGION`, `AWS_ENDPOINT_URL`...); these settings override them.
#[derive(Clone, Default)]
pub struct S3Settings {
    pub bucket: String,
    /// For S3-compatible servers; requests are path-style, and `http://` is allowed.
    pub endpoint: Option<String>,
    pub region: Option<String>,
    /// Prepended to every object key (`exports/` gives `exports/{tenant}/...`).
    pub key_prefix: Option<String>,
    /// `AES256`, or `aws:kms` together with `sse_kms_key_id`.
    pub server_side_encryption: Option<String>,
    pub sse_kms_key_id: Option<String>,
    /// Usually left to `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` or the instance's role.
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
}

impl std::fmt::Debug for S3Settings {
    // By hand, so the secret key never reaches a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Settings")
            .field("bucket", &self.bucket)
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("key_prefix", &self.key_prefix)
            .field("server_side_encryption", &self.server_side_encryption)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &self.secret_access_key.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

impl ObjectStorage {
    /// An S3 bucket (or an S3-compatible server). Uploads are multipart with bounded buffers and
    /// checkpoint every 5 MiB at the most often; downloads are presigned URLs.
    pub fn s3(settings: &S3Settings) -> anyhow::Result<Self> {
        // object_store's HTTP client is reqwest with no provider of its own (see crate::tls).
        crate::tls::install_crypto_provider();
        let mut builder = AmazonS3Builder::from_env().with_bucket_name(&settings.bucket);
        if let Some(endpoint) = &settings.endpoint {
            builder = builder.with_endpoint(endpoint).with_allow_http(endpoint.starts_with("http://"));
        }
        if let (Some(id), Some(secret)) = (&settings.access_key_id, &settings.secret_access_key) {
            builder = builder.with_access_key_id(id).with_secret_access_key(secret);
        }
        if let Some(region) = &settings.region {
            builder = builder.with_region(region);
        }
        if let Some(sse) = &settings.server_side_encryption {
            let key: AmazonS3ConfigKey =
                "aws_server_side_encryption".parse().context("S3 encryption key name")?;
            builder = builder.with_config(key, sse);
        }
        if let Some(kms_key) = &settings.sse_kms_key_id {
            builder = builder.with_sse_kms_encryption(kms_key);
        }
        let store =
            Arc::new(builder.build().context("configuring S3 storage (USEREXPORT_S3_BUCKET, AWS_*)")?);
        let prefix =
            settings.key_prefix.as_deref().filter(|p| !p.trim_matches('/').is_empty()).map(StorePath::from);
        // The encryption settings are the store's: every put and multipart upload carries them.
        let uploads = MultipartUploads::new(
            Arc::clone(&store) as _,
            Arc::clone(&store) as _,
            S3_PART_BYTES,
            S3_MIN_CHECKPOINT_BYTES,
            S3_PARTS_IN_FLIGHT,
        );
        Ok(Self {
            store: Arc::clone(&store) as _,
            uploads: Uploads::Multipart(uploads),
            signer: Some(store),
            prefix,
            kind: "s3",
        })
    }
}
