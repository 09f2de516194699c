//! Export storage over `object_store`: local filesystem and in-memory now, S3 with its issue.
//! `object_store` is the abstraction; this adapter adds checksums, atomicity and error mapping.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use bytes::Bytes;
use domain::ObjectKey;
use futures::StreamExt;
use object_store::buffered::BufWriter;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path as StorePath;
#[cfg(feature = "s3")]
use object_store::signer::{Method, Signer};
use object_store::{ObjectStore, ObjectStoreExt};
use ports::{ExportStorage, ObjectReader, ObjectWriter, PortError, StoredObject};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use url::Url;

/// Bytes buffered before an S3 upload switches to multipart, and the size of each part (S3's
/// minimum part is 5 MiB).
#[cfg(feature = "s3")]
const S3_PART_BYTES: usize = 8 * 1024 * 1024;
/// The same for local files, where parts are plain writes and small ones keep memory low.
const LOCAL_PART_BYTES: usize = 1024 * 1024;
/// Parts in flight at once; bounds memory to about `part size * (MAX_PARTS_IN_FLIGHT + 1)`.
const MAX_PARTS_IN_FLIGHT: usize = 2;

/// Where and how to reach an S3 bucket. Credentials, region and the rest come from the standard
/// `AWS_*` variables (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`,
/// `AWS_REGION`, `AWS_ENDPOINT_URL`...); these settings override them.
#[cfg(feature = "s3")]
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

#[cfg(feature = "s3")]
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

/// Storage for export files backed by an [`ObjectStore`].
#[derive(Clone)]
pub struct ObjectStorage {
    store: Arc<dyn ObjectStore>,
    /// Present for stores that can presign URLs (S3).
    #[cfg(feature = "s3")]
    signer: Option<Arc<dyn Signer>>,
    prefix: Option<StorePath>,
    kind: &'static str,
    part_bytes: usize,
}

impl std::fmt::Debug for ObjectStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectStorage")
            .field("kind", &self.kind)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl ObjectStorage {
    /// Files under `dir` (created if missing). Writes go to a staging file renamed into place
    /// on completion, so readers never see a partial export.
    pub fn local(dir: impl AsRef<Path>) -> anyhow::Result<Self> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).with_context(|| format!("creating data directory {}", dir.display()))?;
        let store = LocalFileSystem::new_with_prefix(dir)
            .with_context(|| format!("opening data directory {}", dir.display()))?;
        Ok(Self::unsigned(Arc::new(store), "local"))
    }

    /// Objects in process memory, lost on exit.
    pub fn in_memory() -> Self {
        Self::unsigned(Arc::new(InMemory::new()), "memory")
    }

    fn unsigned(store: Arc<dyn ObjectStore>, kind: &'static str) -> Self {
        Self {
            store,
            #[cfg(feature = "s3")]
            signer: None,
            prefix: None,
            kind,
            part_bytes: LOCAL_PART_BYTES,
        }
    }

    /// An S3 bucket (or an S3-compatible server). Uploads are multipart with bounded buffers;
    /// downloads are presigned URLs.
    #[cfg(feature = "s3")]
    pub fn s3(settings: &S3Settings) -> anyhow::Result<Self> {
        use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};

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
        Ok(Self { store: store.clone(), signer: Some(store), prefix, kind: "s3", part_bytes: S3_PART_BYTES })
    }

    /// Which backend this is (`local`, `memory`, `s3`), for logs and readiness.
    pub fn kind(&self) -> &'static str {
        self.kind
    }

    fn path(&self, key: &ObjectKey) -> StorePath {
        match &self.prefix {
            Some(prefix) => prefix.child_path(key.as_str()),
            None => StorePath::from(key.as_str()),
        }
    }
}

/// `child` joined under `self`, keeping `child`'s own separators.
trait ChildPath {
    fn child_path(&self, child: &str) -> StorePath;
}

impl ChildPath for StorePath {
    fn child_path(&self, child: &str) -> StorePath {
        StorePath::from(format!("{}/{}", self.as_ref(), child))
    }
}

/// Maps `object_store` errors onto the port: transport-level trouble is retryable.
fn translate(err: object_store::Error) -> PortError {
    match err {
        object_store::Error::Generic { .. } | object_store::Error::JoinError { .. } => {
            PortError::unavailable(err)
        }
        other => PortError::Other(other.into()),
    }
}

#[async_trait]
impl ExportStorage for ObjectStorage {
    async fn writer(&self, key: &ObjectKey) -> Result<Box<dyn ObjectWriter>, PortError> {
        let inner = BufWriter::with_capacity(Arc::clone(&self.store), self.path(key), self.part_bytes)
            .with_max_concurrency(MAX_PARTS_IN_FLIGHT);
        Ok(Box::new(ChecksummingWriter { inner: Some(inner), hasher: Sha256::new(), bytes: 0 }))
    }

    async fn open(&self, key: &ObjectKey) -> Result<Option<ObjectReader>, PortError> {
        match self.store.get(&self.path(key)).await {
            Ok(result) => {
                let size = result.meta.size;
                let body = result.into_stream().map(|chunk| chunk.map_err(translate)).boxed();
                Ok(Some(ObjectReader { size, body }))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(err) => Err(translate(err)),
        }
    }

    async fn signed_url(&self, key: &ObjectKey, ttl: Duration) -> Result<Option<Url>, PortError> {
        // Local and in-memory stores cannot sign; the API streams instead.
        #[cfg(feature = "s3")]
        if let Some(signer) = &self.signer {
            return signer.signed_url(Method::GET, &self.path(key), ttl).await.map(Some).map_err(translate);
        }
        let _ = (key, ttl);
        Ok(None)
    }

    async fn delete(&self, key: &ObjectKey) -> Result<(), PortError> {
        match self.store.delete(&self.path(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(err) => Err(translate(err)),
        }
    }

    async fn ping(&self) -> Result<(), PortError> {
        // Listing one entry proves the store answers without reading any tenant's data.
        let probe = self
            .prefix
            .as_ref()
            .map_or_else(|| StorePath::from("_readiness"), |p| p.child_path("_readiness"));
        let mut entries = self.store.list(Some(&probe));
        match entries.next().await {
            None | Some(Ok(_)) | Some(Err(object_store::Error::NotFound { .. })) => Ok(()),
            Some(Err(err)) => Err(translate(err)),
        }
    }
}

/// Streams through `BufWriter` (multipart once past one part) while hashing.
struct ChecksummingWriter {
    /// `None` once finished or aborted.
    inner: Option<BufWriter>,
    hasher: Sha256,
    bytes: u64,
}

#[async_trait]
impl ObjectWriter for ChecksummingWriter {
    async fn write(&mut self, chunk: Bytes) -> Result<(), PortError> {
        let inner =
            self.inner.as_mut().ok_or_else(|| PortError::Other(anyhow::anyhow!("writer is closed")))?;
        self.hasher.update(&chunk);
        self.bytes += chunk.len() as u64;
        inner.put(chunk).await.map_err(translate)
    }

    async fn finish(mut self: Box<Self>) -> Result<StoredObject, PortError> {
        let mut inner =
            self.inner.take().ok_or_else(|| PortError::Other(anyhow::anyhow!("writer is closed")))?;
        // On failure the upload is dropped, which removes a local staging file; `abort` cannot be
        // called on a writer that began shutting down.
        inner.shutdown().await.map_err(PortError::unavailable)?;
        Ok(StoredObject { bytes: self.bytes, sha256: hex::encode(self.hasher.clone().finalize()) })
    }

    async fn abort(mut self: Box<Self>) -> Result<(), PortError> {
        match self.inner.take() {
            Some(mut inner) => inner.abort().await.map_err(translate),
            None => Ok(()),
        }
    }
}
