//! Export storage: local files, in-memory, and S3 (feature `s3`). `object_store` is the
//! abstraction (reads, presigning, deletes, S3 and in-memory uploads); this adapter adds
//! checksums, atomic visibility, resumable uploads and error mapping. Uploads come in two kinds,
//! each resumable from its checkpoints:
//! - `local`: a staging file next to the object, fsynced at checkpoints, renamed into place.
//! - `multipart`: a multipart upload (S3, in-memory) whose checkpoints list its parts.
//!
//! Both hash with [`domain::ResumableSha256`], whose state travels in the checkpoint, so a
//! resumed upload reports the SHA-256 of the whole object.

mod local;
mod multipart;
#[cfg(feature = "s3")]
mod s3;
mod traced;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use domain::{ObjectKey, UploadCheckpoint};
use futures::StreamExt;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path as StorePath;
#[cfg(feature = "s3")]
use object_store::signer::{Method, Signer};
use object_store::{ObjectStore, ObjectStoreExt};
use ports::{ExportStorage, ObjectReader, ObjectWriter, PortError};
use url::Url;

use self::local::{LocalUploads, create_dir_all_durably, fsync_dir};
use self::multipart::MultipartUploads;
#[cfg(feature = "s3")]
pub use self::s3::S3Settings;
use self::traced::TracedWriter;

/// In-memory uploads put a part up every MiB, so small tests cover the multipart path, and
/// checkpoint on every call, so unit tests get checkpoints wherever they ask for one. Two parts go
/// up at once, so the tests of the runner see cuts reported after later writes, as on S3.
const MEMORY_PART_BYTES: usize = 1024 * 1024;
const MEMORY_CHECKPOINT_BYTES: usize = 0;
const MEMORY_PARTS_IN_FLIGHT: usize = 2;

/// Storage for export files backed by an [`ObjectStore`].
#[derive(Clone)]
pub struct ObjectStorage {
    store: Arc<dyn ObjectStore>,
    uploads: Uploads,
    /// Present for stores that can presign URLs (S3).
    #[cfg(feature = "s3")]
    signer: Option<Arc<dyn Signer>>,
    prefix: Option<StorePath>,
    kind: &'static str,
}

/// How this storage uploads.
#[derive(Clone)]
enum Uploads {
    Local(LocalUploads),
    Multipart(MultipartUploads),
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
        // The store's own writes are not used (they cannot resume), but keep it syncing should
        // any be added.
        let store = LocalFileSystem::new_with_prefix(dir)
            .with_context(|| format!("opening data directory {}", dir.display()))?
            .with_fsync(true);
        // Canonical, as the store's root is: staging paths are checked to lie under it.
        let root = std::fs::canonicalize(dir)
            .with_context(|| format!("resolving data directory {}", dir.display()))?;
        let store = Arc::new(store);
        Ok(Self::unsigned(Arc::clone(&store) as _, Uploads::Local(LocalUploads::new(store, root)), "local"))
    }

    /// Objects in process memory, lost on exit.
    pub fn in_memory() -> Self {
        let store = Arc::new(InMemory::new());
        let uploads = MultipartUploads::new(
            Arc::clone(&store) as _,
            Arc::clone(&store) as _,
            MEMORY_PART_BYTES,
            0,
            MEMORY_PARTS_IN_FLIGHT,
        )
        .with_checkpoint_bytes(MEMORY_CHECKPOINT_BYTES);
        Self::unsigned(store, Uploads::Multipart(uploads), "memory")
    }

    fn unsigned(store: Arc<dyn ObjectStore>, uploads: Uploads, kind: &'static str) -> Self {
        Self {
            store,
            uploads,
            #[cfg(feature = "s3")]
            signer: None,
            prefix: None,
            kind,
        }
    }

    /// Sets how many bytes a writer takes between checkpoints: `checkpoint()` answers `None`
    /// until that many were written since the last one. Defaults: local 2 MiB (bounds fsyncs),
    /// in-memory 0 (every call), S3 5 MiB, which is also S3's floor (its minimum part size).
    pub fn with_checkpoint_bytes(mut self, bytes: usize) -> Self {
        self.uploads = match self.uploads {
            Uploads::Local(local) => Uploads::Local(local.with_checkpoint_bytes(bytes)),
            Uploads::Multipart(multipart) => Uploads::Multipart(multipart.with_checkpoint_bytes(bytes)),
        };
        self
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
        let path = self.path(key);
        let writer: Box<dyn ObjectWriter> = match &self.uploads {
            Uploads::Local(local) => Box::new(local.writer(key, &path).await?),
            Uploads::Multipart(multipart) => Box::new(multipart.writer(key, path)),
        };
        Ok(TracedWriter::wrap(writer, self.kind, key.as_str(), None))
    }

    async fn resume(
        &self,
        checkpoint: &UploadCheckpoint,
    ) -> Result<Option<Box<dyn ObjectWriter>>, PortError> {
        let path = self.path(&checkpoint.key);
        let writer = match &self.uploads {
            Uploads::Local(local) => {
                local.resume(checkpoint, &path).await?.map(|w| Box::new(w) as Box<dyn ObjectWriter>)
            }
            Uploads::Multipart(multipart) => {
                multipart.resume(checkpoint, path).await?.map(|w| Box::new(w) as Box<dyn ObjectWriter>)
            }
        };
        let key = checkpoint.key.as_str();
        Ok(writer.map(|w| TracedWriter::wrap(w, self.kind, key, Some(checkpoint.bytes))))
    }

    async fn discard(&self, checkpoint: &UploadCheckpoint) -> Result<(), PortError> {
        let path = self.path(&checkpoint.key);
        match &self.uploads {
            Uploads::Local(local) => local.discard(checkpoint, &path).await,
            Uploads::Multipart(multipart) => multipart.discard(checkpoint, &path).await,
        }
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
