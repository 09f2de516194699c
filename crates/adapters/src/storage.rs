//! Export storage over `object_store`: local filesystem and in-memory now, S3 with its issue.
//! `object_store` is the abstraction; this adapter adds checksums, atomicity and error mapping.

use std::io;
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
    /// Whether a failed `finish` deletes the key: a local file is renamed into place before its
    /// directory is fsynced, so a failed fsync can leave it visible. Not on S3, where a failed
    /// upload stores nothing and a delete during an outage would only delay the error.
    remove_on_failed_finish: bool,
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
    /// on completion, so readers never see a partial export, and `finish` returns only once the
    /// file and its directory entries are on disk, so a completed export survives a power loss.
    pub fn local(dir: impl AsRef<Path>) -> anyhow::Result<Self> {
        let dir = dir.as_ref();
        // Once, at start-up: blocking here costs nothing a request waits for.
        create_dir_all_durably(dir, fsync_dir)
            .with_context(|| format!("creating data directory {}", dir.display()))?;
        // object_store does the rest on tokio's blocking pool: it fsyncs the staging file before
        // renaming it into place, the parent directory after, and every directory a write creates
        // up to the first that existed (at most the data directory). Its default is not to.
        let store = LocalFileSystem::new_with_prefix(dir)
            .with_context(|| format!("opening data directory {}", dir.display()))?
            .with_fsync(true);
        let mut storage = Self::unsigned(Arc::new(store), "local");
        storage.remove_on_failed_finish = true;
        Ok(storage)
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
            remove_on_failed_finish: false,
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
        Ok(Self {
            store: store.clone(),
            signer: Some(store),
            prefix,
            kind: "s3",
            part_bytes: S3_PART_BYTES,
            remove_on_failed_finish: false,
        })
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

/// Creates `dir` and its missing ancestors, then fsyncs (with `sync_dir`) each directory it created
/// and the existing one that gained the first of them, so the new entries survive a crash.
fn create_dir_all_durably(dir: &Path, mut sync_dir: impl FnMut(&Path) -> io::Result<()>) -> io::Result<()> {
    // Absolute, so that `data` has a parent (`.`) to fsync rather than an empty path.
    let dir = std::path::absolute(dir)?;
    let first_existing = dir.ancestors().find(|d| d.exists()).map(Path::to_path_buf);
    std::fs::create_dir_all(&dir)?;
    if first_existing.as_deref() == Some(dir.as_path()) {
        return Ok(());
    }
    for created_or_parent in dir.ancestors() {
        sync_dir(created_or_parent)?;
        if Some(created_or_parent) == first_existing.as_deref() {
            break;
        }
    }
    Ok(())
}

/// Makes `dir`'s entries durable. Directories cannot be opened and synced portably; the
/// deployments are Unix.
fn fsync_dir(dir: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        std::fs::File::open(dir)?.sync_all()
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(())
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
        let remove_on_failure =
            self.remove_on_failed_finish.then(|| (Arc::clone(&self.store), self.path(key)));
        Ok(Box::new(ChecksummingWriter {
            inner: Some(inner),
            hasher: Sha256::new(),
            bytes: 0,
            remove_on_failure,
        }))
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
    /// Deleted when `finish` fails (see `ObjectStorage::remove_on_failed_finish`).
    remove_on_failure: Option<(Arc<dyn ObjectStore>, StorePath)>,
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
        // called on a writer that began shutting down. A failed fsync fails the shutdown too, as
        // an I/O error (retryable): the file may not survive a crash, so it is no success.
        if let Err(err) = inner.shutdown().await {
            if let Some((store, path)) = self.remove_on_failure.take() {
                // A directory fsync fails after the rename: take the file back out of sight.
                match store.delete(&path).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                    Err(delete_err) => {
                        tracing::warn!(%path, error = %delete_err, "could not remove a file whose write failed");
                    }
                }
            }
            return Err(PortError::unavailable(err));
        }
        Ok(StoredObject { bytes: self.bytes, sha256: hex::encode(self.hasher.clone().finalize()) })
    }

    async fn abort(mut self: Box<Self>) -> Result<(), PortError> {
        match self.inner.take() {
            Some(mut inner) => inner.abort().await.map_err(translate),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creating_the_data_directory_fsyncs_each_new_directory_and_the_parent_that_gained_one() {
        let tmp = tempfile::tempdir().unwrap();
        let root = std::path::absolute(tmp.path()).unwrap();
        let dir = root.join("a").join("b").join("c");
        let mut synced = Vec::new();
        create_dir_all_durably(&dir, |d| {
            synced.push(d.to_path_buf());
            fsync_dir(d)
        })
        .unwrap();
        assert!(dir.is_dir());
        assert_eq!(synced, vec![dir.clone(), root.join("a").join("b"), root.join("a"), root.clone()]);

        synced.clear();
        create_dir_all_durably(&dir, |d| {
            synced.push(d.to_path_buf());
            Ok(())
        })
        .unwrap();
        assert!(synced.is_empty(), "an existing directory has nothing new to sync: {synced:?}");
    }

    #[test]
    fn a_failed_directory_fsync_fails_creating_the_data_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let err = create_dir_all_durably(&tmp.path().join("new"), |_| Err(io::Error::other("disk gone")))
            .unwrap_err();
        assert_eq!(err.to_string(), "disk gone");
    }

    #[test]
    fn local_storage_has_object_store_fsync_its_writes() {
        // object_store exposes the flag only through Debug; this fails loudly if either the
        // flag or its rendering goes away, rather than letting writes silently stop syncing.
        let tmp = tempfile::tempdir().unwrap();
        let storage = ObjectStorage::local(tmp.path()).unwrap();
        let store = format!("{:?}", storage.store);
        assert!(store.contains("fsync: true"), "{store}");
        assert!(storage.remove_on_failed_finish);
    }
}
