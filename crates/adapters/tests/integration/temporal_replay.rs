//! Replay: the committed histories under `crates/adapters/tests/histories/` (recorded from a dev
//! server, one or more per workflow type) are replayed against the current workflow code with the
//! SDK's `WorkflowReplayer`, so a change that would break runs in flight fails `cargo test`.
//! No server is needed to replay.
//!
//! `record_histories` (ignored; `scripts/record-histories.sh` runs it) records them afresh from
//! the server at `TEST_TEMPORAL_ADDRESS`, with `USEREXPORT_RECORD_HISTORIES=1`.

#![allow(missing_debug_implementations)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use adapters::memory::{MemoryExportRepository, MemoryUserRepository};
use adapters::notify::LogNotifier;
use adapters::storage::ObjectStorage;
use adapters::temporal::testkit::{FailingScopeUsers, test_client, unique_task_queue, with_queue_workers};
use adapters::temporal::{
    BATCH_WORKFLOW_TYPE, ExportReconcileWorkflow, ExportRetentionWorkflow, RetentionInput, TaskQueues,
    TemporalOrchestrator, UserBatchExportWorkflow, UserDataExportWorkflow, WORKFLOW_TYPE, WorkerDeps,
};
use bytes::Bytes;
use chrono::{TimeDelta, Utc};
use domain::{
    Batch, BatchId, BatchRequest, ExecutionPolicy, Export, ExportFormat, ExportId, ExportOrigin,
    ExportOutcome, ExportSpec, ExportStatus, RetryPolicy, Scope,
};
use ports::{ExportRepository, ExportStorage, Orchestrator, UserRepository};
use serde_json::{Value, json};
use service::{ExportRunner, ReconcileSettings, Reconciler, RunnerConfig};
use temporalio_client::{Client, WorkflowFetchHistoryOptions, WorkflowHistory, WorkflowStartOptions};
use temporalio_common::protos::temporal::api::history::v1::history_event::Attributes;
use temporalio_macros::{workflow, workflow_methods};
use temporalio_sdk::workflow_replayer::{
    WorkflowReplayError, WorkflowReplayFailure, WorkflowReplayer, WorkflowReplayerOptions,
};
use temporalio_sdk::{WorkflowContext, WorkflowResult};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const RETENTION_TYPE: &str = "ExportRetentionWorkflow";
const RECONCILE_TYPE: &str = "ExportReconcileWorkflow";

fn histories_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/histories")
}

/// Every committed history: (file name, workflow type, JSON).
async fn committed_histories() -> Vec<(String, String, Vec<u8>)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(histories_dir()).expect("tests/histories exists") {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let bytes = std::fs::read(&path).unwrap();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        found.push((name, workflow_type(&bytes).await, bytes));
    }
    found.sort();
    found
}

/// The workflow type named by a history's first event.
async fn workflow_type(json: &[u8]) -> String {
    let events = WorkflowHistory::from_json(json).expect("a history decodes").into_events().await.unwrap();
    match events.first().and_then(|e| e.attributes.as_ref()) {
        Some(Attributes::WorkflowExecutionStartedEventAttributes(started)) => {
            started.workflow_type.as_ref().map(|t| t.name.clone()).unwrap_or_default()
        }
        _ => panic!("a history begins with WorkflowExecutionStarted"),
    }
}

/// A replayer with the workflows the worker registers.
fn replayer() -> WorkflowReplayer {
    let options = WorkflowReplayerOptions::new()
        .register_workflow::<UserDataExportWorkflow>()
        .unwrap()
        .register_workflow::<UserBatchExportWorkflow>()
        .unwrap()
        .register_workflow::<ExportRetentionWorkflow>()
        .unwrap()
        .register_workflow::<ExportReconcileWorkflow>()
        .unwrap()
        .build();
    WorkflowReplayer::new(options).unwrap()
}

async fn replay(replayer: &WorkflowReplayer, json: &[u8]) -> Result<(), WorkflowReplayError> {
    replayer.replay_workflow(WorkflowHistory::from_json(json).expect("a history decodes")).await
}

#[tokio::test]
async fn committed_histories_replay_against_the_current_workflows() {
    let histories = committed_histories().await;
    let types: BTreeSet<&str> = histories.iter().map(|(_, t, _)| t.as_str()).collect();
    for expected in [WORKFLOW_TYPE, BATCH_WORKFLOW_TYPE, RETENTION_TYPE, RECONCILE_TYPE] {
        assert!(types.contains(expected), "no committed history of {expected} (have {types:?})");
    }
    let replayer = replayer();
    let mut failures = Vec::new();
    for (name, _, json) in &histories {
        if let Err(err) = replay(&replayer, json).await {
            failures.push(format!("{name}: {err}"));
        }
    }
    assert!(
        failures.is_empty(),
        "the current workflow code cannot replay runs recorded earlier; runs in flight would break. \
         Guard the change with ctx.patched (README, Changing workflows), or, if no such run can \
         exist anywhere, re-record with scripts/record-histories.sh:\n{}",
        failures.join("\n")
    );
}

/// A deliberately incompatible `UserDataExportWorkflow`: it waits on a timer where the recorded
/// runs scheduled their first activity, as an unguarded edit of the workflow would.
#[workflow]
#[derive(Default)]
pub struct AlteredExportWorkflow;

#[workflow_methods]
impl AlteredExportWorkflow {
    #[run(name = "UserDataExportWorkflow")]
    pub async fn run(ctx: &mut WorkflowContext<Self>, _input: Value) -> WorkflowResult<()> {
        ctx.timer(Duration::from_secs(1)).await;
        Ok(())
    }
}

#[tokio::test]
async fn a_non_deterministic_change_fails_replay() {
    let options =
        WorkflowReplayerOptions::new().register_workflow::<AlteredExportWorkflow>().unwrap().build();
    let altered = WorkflowReplayer::new(options).unwrap();
    let exports: Vec<_> =
        committed_histories().await.into_iter().filter(|(_, t, _)| t == WORKFLOW_TYPE).collect();
    assert!(!exports.is_empty());
    for (name, _, json) in exports {
        match replay(&altered, &json).await {
            Err(WorkflowReplayError::Replay(WorkflowReplayFailure::Nondeterminism { .. })) => {}
            other => {
                panic!("{name}: the altered workflow must fail replay as nondeterministic, got {other:?}")
            }
        }
    }
}

// ---- recording ------------------------------------------------------------------------------

fn policy() -> ExecutionPolicy {
    ExecutionPolicy {
        retry: RetryPolicy {
            initial_interval: Duration::from_millis(100),
            backoff_coefficient: 2.0,
            maximum_interval: Duration::from_secs(1),
            maximum_attempts: 2,
        },
        deadline: Duration::from_secs(60),
        heartbeat_timeout: Duration::from_secs(5),
    }
}

/// A completed export whose file is due for deletion.
async fn expired(exports: &MemoryExportRepository, storage: &ObjectStorage, scope: &Scope) -> Export {
    let mut export = Export::new(
        ExportId::from_uuid(Uuid::now_v7()),
        scope.clone(),
        ExportSpec::new(ExportFormat::Csv),
        None,
        Utc::now(),
    );
    exports.create_if_absent(&export).await.unwrap();
    let mut writer = storage.writer(&export.attempt_key(1)).await.unwrap();
    writer.write(Bytes::from_static(b"id,email\n")).await.unwrap();
    let stored = writer.finish().await.unwrap();
    export.start_attempt(1, Utc::now()).unwrap();
    exports.update_if_status(&export, ExportStatus::Pending).await.unwrap();
    let outcome = ExportOutcome { record_count: 0, bytes: stored.bytes, sha256: stored.sha256 };
    export.complete(outcome, export.attempt_key(1), TimeDelta::seconds(-1), Utc::now()).unwrap();
    exports.update_if_status(&export, ExportStatus::Running).await.unwrap();
    export
}

async fn write_history(client: &Client, workflow_id: &str, file: &str) {
    let handle = client.get_workflow_handle::<UserDataExportWorkflow>(workflow_id.to_owned());
    let json = handle.fetch_history(WorkflowFetchHistoryOptions::default()).to_json().await.unwrap();
    // Pretty, so a re-recording's diff is readable.
    let value: Value = serde_json::from_slice(&json).unwrap();
    let path = histories_dir().join(file);
    std::fs::write(&path, serde_json::to_vec_pretty(&value).unwrap()).unwrap();
    eprintln!("recorded {}", path.display());
}

/// Waits for `workflow_id` to close, however it ends.
async fn closed(client: &Client, workflow_id: &str) {
    let handle = client.get_workflow_handle::<UserDataExportWorkflow>(workflow_id.to_owned());
    let waited = tokio::time::timeout(Duration::from_secs(90), handle.get_result(Default::default())).await;
    assert!(waited.is_ok(), "{workflow_id} did not finish within 90 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "records histories from a dev server: scripts/record-histories.sh"]
async fn record_histories() {
    assert_eq!(
        std::env::var("USEREXPORT_RECORD_HISTORIES").as_deref(),
        Ok("1"),
        "overwrites tests/histories: set USEREXPORT_RECORD_HISTORIES=1 (scripts/record-histories.sh)"
    );
    let client = test_client().await;
    let task_queue = unique_task_queue("record-histories");
    let good = Scope::parse("acme/prod").unwrap();
    let other = Scope::parse("acme/staging").unwrap();
    let broken = Scope::parse("broken/prod").unwrap();
    let memory_users = MemoryUserRepository::new();
    for scope in [&good, &other, &broken] {
        memory_users.seed_synthetic(scope, 30);
    }
    let users: Arc<dyn UserRepository> =
        Arc::new(FailingScopeUsers { inner: Arc::new(memory_users), failing: broken.clone() });
    let exports = Arc::new(MemoryExportRepository::new());
    let storage = Arc::new(ObjectStorage::in_memory());
    let runner = Arc::new(ExportRunner::new(
        users,
        exports.clone(),
        storage.clone(),
        Arc::new(LogNotifier),
        RunnerConfig { segment_bytes: 4096, progress_interval: Duration::ZERO, ..RunnerConfig::default() },
    ));
    let orchestrator = TemporalOrchestrator::new(client.clone(), task_queue.clone(), policy());
    let reconciler = Reconciler::new(
        exports.clone(),
        Arc::new(orchestrator.clone()),
        runner.clone(),
        ReconcileSettings { start_grace: Duration::ZERO, notify_grace: Duration::ZERO },
    );
    let deps = WorkerDeps {
        quotas: Default::default(),
        export_threads: Default::default(),
        admission: None,
        runner,
        exports: exports.clone(),
        storage: storage.clone() as Arc<dyn ExportStorage>,
        default_policy: policy(),
        shutdown: CancellationToken::new(),
        reconciler: Some(Arc::new(reconciler)),
    };
    let _ = expired(&exports, &storage, &good).await;
    let _ = expired(&exports, &storage, &other).await;

    // Every workload's queue polled, as a default `userexport-worker` does.
    with_queue_workers(&client, &TaskQueues::new(task_queue.clone()), &deps, async {
        // An API export that completes (and runs the notification step).
        let spec = ExportSpec::from_json(&json!({"format": "ndjson", "compression": "gzip",
            "user_filters": {"status": "active"}, "email_notify": true}))
        .unwrap();
        let export = Export::new(ExportId::from_uuid(Uuid::now_v7()), good.clone(), spec, None, Utc::now());
        exports.create_if_absent(&export).await.unwrap();
        orchestrator.start_from(&export, ExportOrigin::Api).await.unwrap();
        closed(&client, &export.workflow_id()).await;
        write_history(&client, &export.workflow_id(), "export-api-completed.json").await;

        // An export whose source fails: attempts run out, FinishExport records the failure.
        let failing = Export::new(
            ExportId::from_uuid(Uuid::now_v7()),
            broken.clone(),
            ExportSpec::new(ExportFormat::Csv),
            None,
            Utc::now(),
        );
        exports.create_if_absent(&failing).await.unwrap();
        orchestrator.start_from(&failing, ExportOrigin::Event).await.unwrap();
        closed(&client, &failing.workflow_id()).await;
        write_history(&client, &failing.workflow_id(), "export-failed.json").await;

        // The seed's input from any client: no record yet, so PrepareExport creates it.
        let cli_id = format!("record-cli-{}", Uuid::new_v4());
        let input = json!({"tenant_id": "acme", "environment_id": "prod", "format": "csv",
            "user_filters": {"status": "active"}, "email_notify": false});
        let start = WorkflowStartOptions::new(task_queue.clone(), cli_id.clone()).build();
        client.start_workflow(UserDataExportWorkflow::run, input, start).await.unwrap();
        closed(&client, &cli_id).await;
        write_history(&client, &cli_id, "export-cli-prepared.json").await;

        // A batch of two scopes and one failing target, two at a time.
        let targets = vec![good.clone(), broken.clone(), other.clone()];
        let request = BatchRequest::from_json(&json!({
            "targets": targets.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "export": {"format": "csv"}, "concurrency": 2
        }))
        .unwrap();
        let batch = Batch::new(BatchId::from_uuid(Uuid::now_v7()), &request, targets, None, Utc::now());
        orchestrator.start_batch(&batch).await.unwrap();
        closed(&client, &batch.id.workflow_id()).await;
        write_history(&client, &batch.id.workflow_id(), "batch.json").await;

        // Retention over two due exports, one per activity call.
        let retention_id = format!("record-retention-{}", Uuid::new_v4());
        let start = WorkflowStartOptions::new(task_queue.clone(), retention_id.clone()).build();
        let input = RetentionInput { batch_limit: 1, max_batches: 5 };
        client.start_workflow(ExportRetentionWorkflow::run, input, start).await.unwrap();
        closed(&client, &retention_id).await;
        write_history(&client, &retention_id, "retention.json").await;

        // One reconcile pass.
        let reconcile_id = format!("record-reconcile-{}", Uuid::new_v4());
        let start = WorkflowStartOptions::new(task_queue.clone(), reconcile_id.clone()).build();
        client.start_workflow(ExportReconcileWorkflow::run, (), start).await.unwrap();
        closed(&client, &reconcile_id).await;
        write_history(&client, &reconcile_id, "reconcile.json").await;
    })
    .await;

    // What was just recorded replays, or the recording itself is wrong.
    let replayer = replayer();
    for (name, _, json) in committed_histories().await {
        replay(&replayer, &json).await.unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}
