//! Resumable uploads to local files.
//!
//! An upload writes a staging file next to its object, `{object}#{digits}` (`LocalFileSystem`
//! lists no such name, and no key maps to one: it percent-encodes `#`). A checkpoint fsyncs the
//! file (and, the first time, its directory entry); `finish` fsyncs it, renames it into place and
//! fsyncs the directory. Resuming truncates the file to the checkpoint's length and appends.
//! File I/O runs on tokio's blocking pool. A cut ([`ObjectWriter::cut`]) fsyncs in the background
//! while writes go on (one fsync at a time; writes stay in order, one after the other), and is
//! reported once that fsync returned.

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use domain::{ObjectKey, ResumableSha256, UploadCheckpoint, UploadLocation};
use object_store::local::LocalFileSystem;
use object_store::path::Path as StorePath;
use ports::{ObjectWriter, PortError, StoredObject};
use tokio::task::JoinHandle;

/// Bytes buffered before they are written to the staging file.
const BUFFER_BYTES: usize = 1024 * 1024;
/// Bytes between checkpoints by default: each costs an fsync.
const CHECKPOINT_BYTES: usize = 2 * 1024 * 1024;

/// Uploads to files under a data directory.
#[derive(Clone)]
pub(super) struct LocalUploads {
    store: Arc<LocalFileSystem>,
    /// The store's root, canonical: no staging file is used outside it.
    root: PathBuf,
    checkpoint_bytes: usize,
}

/// Where an upload's bytes are, and where they go.
#[derive(Clone)]
struct Staging {
    /// Relative to the root, as a checkpoint records it.
    name: String,
    file: PathBuf,
    target: PathBuf,
}

impl LocalUploads {
    pub(super) fn new(store: Arc<LocalFileSystem>, root: PathBuf) -> Self {
        Self { store, root, checkpoint_bytes: CHECKPOINT_BYTES }
    }

    pub(super) fn with_checkpoint_bytes(mut self, bytes: usize) -> Self {
        self.checkpoint_bytes = bytes;
        self
    }

    /// The staging file of upload `id` to `path`: `None` when `path` has no place under the root.
    fn staging(&self, path: &StorePath, id: &str) -> Option<Staging> {
        // The store's own mapping, so the object lands where its reads look for it.
        let target = self.store.path_to_filesystem(path).ok()?;
        if !target.starts_with(&self.root) {
            return None;
        }
        let mut file = target.clone().into_os_string();
        file.push("#");
        file.push(id);
        Some(Staging { name: format!("{path}#{id}"), file: file.into(), target })
    }

    pub(super) async fn writer(&self, key: &ObjectKey, path: &StorePath) -> Result<LocalWriter, PortError> {
        // Digits only, which is what keeps the name out of `LocalFileSystem`'s listings.
        let id = uuid::Uuid::new_v4().as_u128().to_string();
        let staging = self.staging(path, &id).ok_or_else(|| {
            PortError::Other(anyhow::anyhow!("object key {key} has no place under the data directory"))
        })?;
        let file_path = staging.file.clone();
        let file = blocking(move || {
            if let Some(dir) = file_path.parent() {
                create_dir_all_durably(dir, fsync_dir)?;
            }
            OpenOptions::new().write(true).create_new(true).open(&file_path)
        })
        .await
        .map_err(io_error)?;
        Ok(LocalWriter::new(self, key, staging, file, ResumableSha256::new(), false))
    }

    pub(super) async fn resume(
        &self,
        checkpoint: &UploadCheckpoint,
        path: &StorePath,
    ) -> Result<Option<LocalWriter>, PortError> {
        let Some(staging) = self.recorded_staging(checkpoint, path) else {
            return Ok(None);
        };
        let Some(hasher) =
            ResumableSha256::restore(&checkpoint.sha256).filter(|h| h.len() == checkpoint.bytes)
        else {
            return Ok(None);
        };
        let (file_path, bytes) = (staging.file.clone(), checkpoint.bytes);
        let file = blocking(move || {
            let file = match OpenOptions::new().write(true).open(&file_path) {
                Ok(file) => file,
                Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
                Err(err) => return Err(err),
            };
            if file.metadata()?.len() < bytes {
                return Ok(None);
            }
            // Bytes past the checkpoint were never made durable; the caller writes them again.
            file.set_len(bytes)?;
            (&file).seek(SeekFrom::Start(bytes))?;
            Ok(Some(file))
        })
        .await
        .map_err(io_error)?;
        // The checkpoint that named the file made its directory entry durable.
        Ok(file.map(|file| LocalWriter::new(self, &checkpoint.key, staging, file, hasher, true)))
    }

    pub(super) async fn discard(
        &self,
        checkpoint: &UploadCheckpoint,
        path: &StorePath,
    ) -> Result<(), PortError> {
        match self.recorded_staging(checkpoint, path) {
            Some(staging) => remove_staging(staging.file).await,
            // Not an upload of this storage: nothing of it is here.
            None => Ok(()),
        }
    }

    /// The staging file a checkpoint names, if it is one this storage could have made for its key.
    /// The name comes from a stored record, so it is matched, never trusted as a path.
    fn recorded_staging(&self, checkpoint: &UploadCheckpoint, path: &StorePath) -> Option<Staging> {
        let UploadLocation::Staging { file } = &checkpoint.location else {
            return None;
        };
        let id = file.strip_prefix(path.as_ref())?.strip_prefix('#')?;
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        self.staging(path, id)
    }
}

/// An upload to a staging file, hashing as it goes.
pub(super) struct LocalWriter {
    file: Arc<File>,
    staging: Staging,
    key: ObjectKey,
    checkpoint_bytes: usize,
    buffer: Vec<u8>,
    /// Written so far, buffered bytes included.
    bytes: u64,
    checkpointed_bytes: u64,
    hasher: ResumableSha256,
    /// Whether the staging file's directory entry is fsynced (it must be before a checkpoint
    /// names the file).
    entry_durable: bool,
    /// The fsync of the last cut, running in the background.
    syncing: Option<Syncing>,
    /// The newest cut whose fsync returned, not reported yet.
    ready: Option<UploadCheckpoint>,
    /// A write to the file failed: what it holds past the checkpoint is unknown.
    failed: bool,
}

/// A cut whose fsync is running on the blocking pool.
struct Syncing {
    task: JoinHandle<io::Result<()>>,
    cut: UploadCheckpoint,
    /// Whether it fsyncs the directory entry too.
    entry: bool,
}

impl LocalWriter {
    fn new(
        uploads: &LocalUploads,
        key: &ObjectKey,
        staging: Staging,
        file: File,
        hasher: ResumableSha256,
        entry_durable: bool,
    ) -> Self {
        Self {
            file: Arc::new(file),
            staging,
            key: key.clone(),
            checkpoint_bytes: uploads.checkpoint_bytes,
            buffer: Vec::with_capacity(BUFFER_BYTES),
            bytes: hasher.len(),
            checkpointed_bytes: hasher.len(),
            hasher,
            entry_durable,
            syncing: None,
            ready: None,
            failed: false,
        }
    }

    /// A checkpoint of every byte written so far (once they are durable).
    fn describe(&self) -> UploadCheckpoint {
        UploadCheckpoint {
            key: self.key.clone(),
            bytes: self.bytes,
            sha256: self.hasher.state(),
            location: UploadLocation::Staging { file: self.staging.name.clone() },
        }
    }

    /// Takes in the background fsync once it returned (or, with `wait`, once it returns).
    async fn collect_sync(&mut self, wait: bool) -> Result<(), PortError> {
        let Some(syncing) = self.syncing.take_if(|s| wait || s.task.is_finished()) else {
            return Ok(());
        };
        match syncing.task.await.map_err(io::Error::other).and_then(|synced| synced) {
            Ok(()) => {
                self.entry_durable |= syncing.entry;
                self.ready = Some(syncing.cut);
                Ok(())
            }
            Err(err) => {
                self.failed = true;
                Err(io_error(err))
            }
        }
    }

    fn usable(&self) -> Result<(), PortError> {
        if self.failed {
            return Err(PortError::Other(anyhow::anyhow!(
                "an earlier write of this upload failed; resume it from its last checkpoint"
            )));
        }
        Ok(())
    }

    /// Writes the buffer to the file, then fsyncs the file if `sync`, and its directory entry if
    /// that is not durable yet.
    async fn flush(&mut self, sync: bool) -> Result<(), PortError> {
        let data = std::mem::replace(&mut self.buffer, Vec::with_capacity(BUFFER_BYTES));
        let file = Arc::clone(&self.file);
        let dir = (sync && !self.entry_durable).then(|| self.staging.file.parent().map(Path::to_path_buf));
        let result = blocking(move || {
            (&*file).write_all(&data)?;
            if sync {
                file.sync_data()?;
            }
            if let Some(Some(dir)) = dir {
                fsync_dir(&dir)?;
            }
            Ok(())
        })
        .await;
        match result {
            Ok(()) => {
                self.entry_durable |= sync;
                Ok(())
            }
            Err(err) => {
                self.failed = true;
                Err(io_error(err))
            }
        }
    }
}

#[async_trait]
impl ObjectWriter for LocalWriter {
    async fn write(&mut self, chunk: Bytes) -> Result<(), PortError> {
        self.usable()?;
        self.hasher.update(&chunk);
        self.bytes += chunk.len() as u64;
        self.buffer.extend_from_slice(&chunk);
        if self.buffer.len() >= BUFFER_BYTES {
            self.flush(false).await?;
        }
        Ok(())
    }

    async fn checkpoint(&mut self) -> Result<Option<UploadCheckpoint>, PortError> {
        self.usable()?;
        self.collect_sync(true).await?;
        if self.bytes - self.checkpointed_bytes < self.checkpoint_bytes as u64 {
            return Ok(self.ready.take());
        }
        self.flush(true).await?;
        self.checkpointed_bytes = self.bytes;
        self.ready = None;
        Ok(Some(self.describe()))
    }

    async fn cut(&mut self) -> Result<Option<UploadCheckpoint>, PortError> {
        self.usable()?;
        self.collect_sync(false).await?;
        // One fsync at a time: while one runs, the cut waits for a later call.
        if self.syncing.is_none() && self.bytes - self.checkpointed_bytes >= self.checkpoint_bytes as u64 {
            // The write is awaited, so the fsync that follows covers the cut's bytes.
            self.flush(false).await?;
            self.checkpointed_bytes = self.bytes;
            let file = Arc::clone(&self.file);
            let entry = !self.entry_durable;
            let dir = self.staging.file.parent().filter(|_| entry).map(Path::to_path_buf);
            let task = tokio::task::spawn_blocking(move || {
                file.sync_data()?;
                dir.map_or(Ok(()), |dir| fsync_dir(&dir))
            });
            self.syncing = Some(Syncing { task, cut: self.describe(), entry });
        }
        Ok(self.ready.take())
    }

    async fn finish(mut self: Box<Self>) -> Result<StoredObject, PortError> {
        self.usable()?;
        self.collect_sync(true).await?;
        self.flush(false).await?;
        let Staging { file: staging, target, .. } = self.staging.clone();
        let file = Arc::clone(&self.file);
        blocking(move || {
            file.sync_all()?;
            std::fs::rename(&staging, &target)?;
            let Some(dir) = target.parent() else { return Ok(()) };
            if let Err(err) = fsync_dir(dir) {
                // The rename may survive a crash or not: take the object back out of sight, as the
                // error says none was stored.
                if let Err(remove_err) = std::fs::remove_file(&target) {
                    let path = target.display();
                    tracing::warn!(%path, error = %remove_err, "could not remove a file whose write failed");
                }
                return Err(err);
            }
            Ok(())
        })
        .await
        .map_err(io_error)?;
        let this = *self;
        Ok(StoredObject { bytes: this.bytes, sha256: this.hasher.finalize_hex() })
    }

    async fn abort(self: Box<Self>) -> Result<(), PortError> {
        remove_staging(self.staging.file.clone()).await
    }
}

async fn remove_staging(file: PathBuf) -> Result<(), PortError> {
    match tokio::fs::remove_file(&file).await {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(err) => Err(io_error(err)),
    }
}

/// Runs blocking file I/O off the async workers.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> io::Result<T> + Send + 'static) -> io::Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(io::Error::other)?
}

/// Local I/O errors are retryable: a full or failing disk may recover.
fn io_error(err: io::Error) -> PortError {
    PortError::unavailable(err)
}

/// Creates `dir` and its missing ancestors, then fsyncs (with `sync_dir`) each directory it created
/// and the existing one that gained the first of them, so the new entries survive a crash.
pub(super) fn create_dir_all_durably(
    dir: &Path,
    mut sync_dir: impl FnMut(&Path) -> io::Result<()>,
) -> io::Result<()> {
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
pub(super) fn fsync_dir(dir: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        File::open(dir)?.sync_all()
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use domain::Sha256State;

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

    fn uploads(root: &Path) -> LocalUploads {
        let root = std::fs::canonicalize(root).unwrap();
        LocalUploads::new(Arc::new(LocalFileSystem::new_with_prefix(&root).unwrap()), root)
    }

    fn checkpoint(key: &str, file: &str) -> UploadCheckpoint {
        UploadCheckpoint {
            key: ObjectKey::from_stored(key.into()),
            bytes: 0,
            sha256: Sha256State { chaining: [0; 8], len: 0, tail: String::new() },
            location: UploadLocation::Staging { file: file.into() },
        }
    }

    #[test]
    fn a_recorded_staging_file_is_used_only_if_it_is_one_this_storage_makes_for_the_key() {
        let tmp = tempfile::tempdir().unwrap();
        let uploads = uploads(tmp.path());
        let key = "acme/prod/exports/x.csv";
        let path = StorePath::from(key);
        let ok = uploads.recorded_staging(&checkpoint(key, &format!("{key}#123")), &path).unwrap();
        assert_eq!(ok.file, uploads.root.join(format!("{key}#123")));
        assert_eq!(ok.target, uploads.root.join(key));
        for bad in [
            "../../etc/passwd#1".to_owned(),
            "/etc/passwd#1".to_owned(),
            format!("/{key}#1"),
            format!("{key}#"),
            format!("{key}#12a"),
            format!("{key}#1/../../x"),
            format!("{key}.other#1"),
            "acme/prod/exports/y.csv#1".to_owned(),
        ] {
            assert!(uploads.recorded_staging(&checkpoint(key, &bad), &path).is_none(), "{bad} accepted");
        }
    }

    #[test]
    fn a_key_with_dot_dot_parts_stays_under_the_root() {
        let tmp = tempfile::tempdir().unwrap();
        let uploads = uploads(tmp.path());
        // object_store encodes such parts (`%2E%2E`): they name directories, not parents.
        let path = StorePath::from("../../escape.csv");
        let staging = uploads.staging(&path, "1").expect("a place under the root");
        assert!(staging.file.starts_with(&uploads.root), "{}", staging.file.display());
        assert!(!staging.file.components().any(|c| c == std::path::Component::ParentDir));
    }
}
