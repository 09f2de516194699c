//! Downloading an export's file: from the API's stream or, after its `307`, from the storage;
//! hashed while it arrives, checked against the export's SHA-256, and only then given its name
//! (a temporary file in the same directory, renamed), so a file under that name is always whole.

use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use tempfile::NamedTempFile;

use crate::client::{Client, unreachable};
use crate::error::CliError;
use crate::model::Export;
use crate::progress;
use crate::request::segment;

/// Where the file goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    Stdout,
    File(PathBuf),
}

impl Destination {
    /// `-` is stdout; a directory gets the API's file name inside it; no path, that name here.
    pub fn choose(output: Option<&Path>, default_name: &str) -> Self {
        match output {
            Some(path) if path == Path::new("-") => Self::Stdout,
            Some(path) if path.is_dir() => Self::File(path.join(default_name)),
            Some(path) => Self::File(path.to_path_buf()),
            None => Self::File(PathBuf::from(default_name)),
        }
    }
}

/// A verified download.
#[derive(Debug)]
pub struct Saved {
    /// The file written; none for stdout.
    pub path: Option<PathBuf>,
    pub bytes: u64,
    pub sha256: String,
    /// The storage host the API redirected to, if it did.
    pub storage: Option<String>,
}

/// Downloads `export`'s file to `destination` and verifies it; a file that does not match is
/// never written under its name.
pub async fn download(
    client: &Client,
    export: &Export,
    destination: &Destination,
    bars: bool,
) -> Result<Saved, CliError> {
    let path = format!("/v1/exports/{}", segment(&export.id));
    let (mut response, storage) = client.download(&format!("{path}/download")).await?;
    let bar = progress::bytes_bar(
        bars && matches!(destination, Destination::File(_)),
        response.content_length(),
        "downloading",
    );
    let mut sink = Sink::open(destination)?;
    let mut hasher = Sha256::new();
    let mut bytes = 0_u64;
    let source = storage.as_deref().unwrap_or("the API");
    loop {
        // Ctrl-C drops the sink, and with it the temporary file: nothing partial is left behind.
        let next = tokio::select! {
            next = response.chunk() => next,
            _ = tokio::signal::ctrl_c() => return Err(CliError::DownloadInterrupted { id: export.id.clone() }),
        };
        let Some(chunk) = next.map_err(|e| unreachable(source, &e))? else { break };
        hasher.update(&chunk);
        sink.write(&chunk)?;
        bytes += chunk.len() as u64;
        bar.set_position(bytes);
    }
    bar.finish_and_clear();
    let actual = hex::encode(hasher.finalize());
    // An export read just before it completed has no checksum yet: read it again.
    let expected = match &export.sha256 {
        Some(sha256) => sha256.clone(),
        None => client.get::<Export>(&path).await?.item.sha256.ok_or_else(|| {
            CliError::Unexpected("the export has no SHA-256 to verify the download against".to_owned())
        })?,
    };
    if !actual.eq_ignore_ascii_case(&expected) {
        return Err(CliError::ChecksumMismatch {
            id: export.id.clone(),
            expected,
            actual,
            outcome: sink.discarded(),
        });
    }
    let path = sink.commit()?;
    Ok(Saved { path, bytes, sha256: actual, storage })
}

/// Where the bytes go while they arrive.
enum Sink {
    Stdout(std::io::Stdout),
    File { temp: NamedTempFile, target: PathBuf },
}

impl Sink {
    fn open(destination: &Destination) -> Result<Self, CliError> {
        match destination {
            Destination::Stdout => Ok(Self::Stdout(std::io::stdout())),
            Destination::File(target) => {
                // The same directory, so the final rename stays on one file system (atomic).
                let dir = target.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
                let temp = tempfile::Builder::new()
                    .prefix(".uex-download-")
                    .suffix(".part")
                    .tempfile_in(dir)
                    .map_err(|e| io_error(e, format!("creating a temporary file in {}", dir.display())))?;
                Ok(Self::File { temp, target: target.clone() })
            }
        }
    }

    fn write(&mut self, chunk: &[u8]) -> Result<(), CliError> {
        match self {
            Self::Stdout(out) => out.write_all(chunk).map_err(|e| io_error(e, "writing to stdout".into())),
            Self::File { temp, .. } => {
                temp.write_all(chunk).map_err(|e| io_error(e, format!("writing {}", temp.path().display())))
            }
        }
    }

    /// What became of the bytes when the checksum did not match (the temporary file is removed
    /// when the sink is dropped).
    fn discarded(&self) -> &'static str {
        match self {
            Self::Stdout(_) => "what was written to stdout is not the export",
            Self::File { .. } => "nothing was written",
        }
    }

    /// Makes the file durable and gives it its name.
    fn commit(self) -> Result<Option<PathBuf>, CliError> {
        match self {
            Self::Stdout(mut out) => {
                out.flush().map_err(|e| io_error(e, "writing to stdout".into()))?;
                Ok(None)
            }
            Self::File { temp, target } => {
                temp.as_file()
                    .sync_all()
                    .map_err(|e| io_error(e, format!("syncing {}", temp.path().display())))?;
                temp.persist(&target)
                    .map_err(|e| io_error(e.error, format!("renaming to {}", target.display())))?;
                Ok(Some(target))
            }
        }
    }
}

fn io_error(error: std::io::Error, doing: String) -> CliError {
    CliError::Other(anyhow::Error::new(error).context(doing))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_destination_follows_the_output_flag() {
        let name = "export-e1.csv";
        assert_eq!(Destination::choose(None, name), Destination::File(PathBuf::from(name)));
        assert_eq!(Destination::choose(Some(Path::new("-")), name), Destination::Stdout);
        assert_eq!(
            Destination::choose(Some(Path::new("out/users.csv")), name),
            Destination::File(PathBuf::from("out/users.csv"))
        );
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(Destination::choose(Some(dir.path()), name), Destination::File(dir.path().join(name)));
    }

    #[test]
    fn a_committed_file_appears_whole_and_a_dropped_one_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let target = dir.path().join("a.csv");
        let destination = Destination::File(target.clone());

        let mut sink = Sink::open(&destination).unwrap_or_else(|e| panic!("{e}"));
        sink.write(b"id\n1\n").unwrap_or_else(|e| panic!("{e}"));
        assert!(!target.exists(), "no file under its name before the commit");
        drop(sink);
        let left: Vec<_> = std::fs::read_dir(dir.path()).into_iter().flatten().collect();
        assert!(left.is_empty(), "the temporary file is gone: {left:?}");

        let mut sink = Sink::open(&destination).unwrap_or_else(|e| panic!("{e}"));
        sink.write(b"id\n1\n").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(sink.commit().unwrap_or_else(|e| panic!("{e}")), Some(target.clone()));
        assert_eq!(std::fs::read(&target).unwrap_or_default(), b"id\n1\n");
    }
}
