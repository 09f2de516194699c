//! Resume: an export interrupted any number of times, at any rows, gives the bytes of an
//! uninterrupted export (csv, json, ndjson, each with and without gzip), on the in-memory
//! multipart storage and on local files, with the checkpoint kept on the export record.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use adapters::contract::fakes::BreakingUsers;
use adapters::memory::{MemoryExportRepository, MemoryUserRepository};
use adapters::notify::LogNotifier;
use adapters::storage::ObjectStorage;
use chrono::Utc;
use domain::{Compression, ExecutionPolicy, Export, ExportFormat, ExportId, ExportSpec, ExportStatus, Scope};
use futures::TryStreamExt;
use ports::{ExportRepository, ExportStorage};
use proptest::prelude::*;
use service::{AttemptControl, ExportRunner, RunError, RunnerConfig};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

fn scope() -> Scope {
    Scope::parse("acme/prod").unwrap()
}

struct Run {
    bytes: Vec<u8>,
    record: Export,
    /// `resumed_from_row` of every attempt, in order.
    resumed_from: Vec<u64>,
    users_read: u64,
}

fn control(attempt: u32) -> AttemptControl {
    AttemptControl {
        attempt,
        cancel: CancellationToken::new(),
        shutdown: CancellationToken::new(),
        policy: ExecutionPolicy { deadline: Duration::from_secs(60), ..ExecutionPolicy::default() },
        resume: None,
    }
}

/// Runs the export to completion, one attempt after another, breaking the user stream after
/// each count in `breaks` (one attempt each).
async fn run(
    users: &MemoryUserRepository,
    storage: Arc<dyn ExportStorage>,
    spec: ExportSpec,
    segment_bytes: u64,
    breaks: &[usize],
) -> Run {
    let exports = Arc::new(MemoryExportRepository::new());
    let source = Arc::new(BreakingUsers::new(users.clone(), breaks.iter().copied()));
    let config = RunnerConfig {
        segment_bytes,
        progress_interval: Duration::ZERO,
        compress_parallelism: 2,
        ..RunnerConfig::default()
    };
    let runner =
        ExportRunner::new(source.clone(), exports.clone(), storage.clone(), Arc::new(LogNotifier), config);
    let export = Export::new(ExportId::from_uuid(uuid::Uuid::now_v7()), scope(), spec, None, Utc::now());
    exports.create_if_absent(&export).await.unwrap();
    let mut resumed_from = Vec::new();
    let mut rows_seen = 0;
    for attempt in 1..=(breaks.len() as u32 + 1) {
        let result = runner.run_attempt(&scope(), export.id, &control(attempt), &|_, _| {}).await;
        let record = exports.get(&scope(), export.id).await.unwrap().unwrap();
        resumed_from.push(record.resumed_from_row().unwrap());
        assert!(record.progress().rows_written >= rows_seen, "progress went backwards");
        rows_seen = record.progress().rows_written;
        match result {
            Ok(done) => {
                assert_eq!(attempt as usize, breaks.len() + 1, "finished before every break was used");
                assert_eq!(done.status(), ExportStatus::Completed);
                let reader = storage.open(&done.object_key).await.unwrap().expect("object stored");
                let chunks: Vec<bytes::Bytes> = reader.body.try_collect().await.unwrap();
                let bytes = chunks.concat();
                let outcome = done.outcome().unwrap();
                assert_eq!(outcome.sha256, hex::encode(Sha256::digest(&bytes)), "recorded SHA-256");
                assert_eq!(outcome.bytes, bytes.len() as u64);
                let users_read = source.yielded();
                return Run { bytes, record: done, resumed_from, users_read };
            }
            Err(RunError::Retry { .. }) => {}
            Err(other) => panic!("attempt {attempt}: {other}"),
        }
    }
    panic!("the export did not finish");
}

fn memory_storage() -> Arc<dyn ExportStorage> {
    Arc::new(ObjectStorage::in_memory())
}

fn local_storage(dir: &std::path::Path) -> Arc<dyn ExportStorage> {
    Arc::new(ObjectStorage::local(dir).unwrap().with_checkpoint_bytes(1))
}

fn spec(format: ExportFormat, compression: Compression) -> ExportSpec {
    let mut spec = ExportSpec::new(format);
    spec.compression = compression;
    spec
}

const FORMATS: [ExportFormat; 3] = [ExportFormat::Csv, ExportFormat::Json, ExportFormat::Ndjson];
const COMPRESSIONS: [Compression; 2] = [Compression::None, Compression::Gzip];

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Every format and compression, random data sizes, segment sizes and interruption points
    /// (one or several): the interrupted export's file is the uninterrupted one's, byte for byte.
    #[test]
    fn an_export_interrupted_anywhere_gives_the_uninterrupted_bytes(
        users in 0u64..1_500,
        segment_bytes in 256u64..8_192,
        breaks in prop::collection::vec(0usize..1_500, 1..4),
        local in any::<bool>(),
    ) {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(async {
            let repo = MemoryUserRepository::new();
            repo.seed_synthetic(&scope(), users);
            let dir = tempfile::tempdir().unwrap();
            for format in FORMATS {
                for compression in COMPRESSIONS {
                    let storage = if local { local_storage(dir.path()) } else { memory_storage() };
                    let whole = run(&repo, storage.clone(), spec(format, compression), segment_bytes, &[]).await;
                    let broken = run(&repo, storage, spec(format, compression), segment_bytes, &breaks).await;
                    assert_eq!(broken.bytes, whole.bytes, "{format:?} {compression:?} breaks {breaks:?}");
                    assert_eq!(broken.record.outcome().unwrap().record_count, users);
                    assert_eq!(whole.resumed_from, vec![0]);
                }
            }
        });
    }
}

/// Rows before the last checkpoint are not read again: with a checkpoint after every segment
/// written, an interrupted attempt re-reads at most the segment it was in and those still
/// compressing (two here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_attempt_reads_on_from_its_checkpoint_not_from_row_zero() {
    let repo = MemoryUserRepository::new();
    repo.seed_synthetic(&scope(), 20_000);
    for compression in COMPRESSIONS {
        let whole = run(&repo, memory_storage(), spec(ExportFormat::Csv, compression), 16 * 1024, &[]).await;
        let broken =
            run(&repo, memory_storage(), spec(ExportFormat::Csv, compression), 16 * 1024, &[7_000, 6_000])
                .await;
        assert_eq!(broken.bytes, whole.bytes);
        // About 100 rows of these users fill a 16 KiB segment; gzip has two more in flight.
        let rows_per_segment = 200;
        let lost = 3 * rows_per_segment;
        let [first, second, third] = broken.resumed_from[..] else { panic!("{:?}", broken.resumed_from) };
        assert_eq!(first, 0);
        assert!((7_000 - lost..=7_000).contains(&second), "resumed from {second}");
        assert!((second + 6_000 - lost..=second + 6_000).contains(&third), "resumed from {third}");
        let read_twice = broken.users_read - 20_000;
        assert!(read_twice <= 2 * lost, "{read_twice} rows read twice");
        assert_eq!(broken.record.checkpoint(), None, "a completed export keeps no checkpoint");
    }
}

/// A checkpoint whose upload is gone (aborted, its staging file removed) is not resumed: the
/// next attempt starts over from row 0 and still produces the same file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_whose_upload_is_gone_starts_over_cleanly() {
    let repo = MemoryUserRepository::new();
    repo.seed_synthetic(&scope(), 3_000);
    let dir = tempfile::tempdir().unwrap();
    for storage in [memory_storage(), local_storage(dir.path())] {
        let whole =
            run(&repo, storage.clone(), spec(ExportFormat::Ndjson, Compression::Gzip), 4096, &[]).await;

        let exports = Arc::new(MemoryExportRepository::new());
        let source = BreakingUsers::new(repo.clone(), [2_000]);
        let config = RunnerConfig {
            segment_bytes: 4096,
            progress_interval: Duration::ZERO,
            ..RunnerConfig::default()
        };
        let runner = ExportRunner::new(
            Arc::new(source),
            exports.clone(),
            storage.clone(),
            Arc::new(LogNotifier),
            config,
        );
        let export = Export::new(
            ExportId::from_uuid(uuid::Uuid::now_v7()),
            scope(),
            spec(ExportFormat::Ndjson, Compression::Gzip),
            None,
            Utc::now(),
        );
        exports.create_if_absent(&export).await.unwrap();
        let err = runner.run_attempt(&scope(), export.id, &control(1), &|_, _| {}).await.unwrap_err();
        assert!(matches!(err, RunError::Retry { .. }), "{err}");
        let record = exports.get(&scope(), export.id).await.unwrap().unwrap();
        let checkpoint = record.checkpoint().expect("a checkpoint before the break").clone();
        // The parts on their way when the source broke were waited for: the checkpoint is the
        // last segment written, short of row 2,000 by at most the segments still compressing.
        assert!(checkpoint.rows > 1_900, "checkpoint at row {}", checkpoint.rows);

        storage.discard(&checkpoint.upload).await.unwrap();
        let done = runner.run_attempt(&scope(), export.id, &control(2), &|_, _| {}).await.unwrap();
        assert_eq!(done.resumed_from_row(), Some(0), "started over");
        assert!(done.progress().rows_written >= checkpoint.rows, "progress never goes backwards");
        let reader = storage.open(&done.object_key).await.unwrap().unwrap();
        let bytes = reader.body.try_collect::<Vec<_>>().await.unwrap().concat();
        assert_eq!(bytes, whole.bytes);
    }
}
