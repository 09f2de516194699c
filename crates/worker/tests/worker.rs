//! The worker against the Temporal test server (`TEST_TEMPORAL_ADDRESS`, started by
//! scripts/test-all.sh): the binary runs seed-shaped workflows and stops cleanly on SIGTERM; a
//! stopped worker's running export is interrupted and finished by the next worker.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use adapters::memory::{MemoryBatchRepository, MemoryExportRepository, MemoryUserRepository};
use adapters::notify::LogNotifier;
use adapters::storage::ObjectStorage;
use adapters::temporal::testkit::{SlowUsers, read_object, test_address, test_client, unique_task_queue};
use adapters::temporal::{
    ExportRetentionWorkflow, ExportUserDataOutput, RetentionInput, UserDataExportWorkflow, derived_export_id,
};
use clap::Parser;
use domain::{ExportStatus, Scope};
use ports::ExportRepository;
use serde_json::json;
use temporalio_client::{Client, WorkflowCancelOptions, WorkflowStartOptions};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use worker::{Adapters, WorkerConfig};

#[path = "worker/prometheus.rs"]
mod prometheus;

fn scope() -> Scope {
    Scope::parse("acme/prod").unwrap()
}

fn seed_input() -> serde_json::Value {
    json!({"tenant_id": "acme", "environment_id": "prod", "user_filters": {"status": "active"},
           "format": "csv", "email_notify": false})
}

async fn start_seed_workflow(client: &Client, task_queue: &str, workflow_id: &str) {
    let options = WorkflowStartOptions::new(task_queue.to_owned(), workflow_id.to_owned()).build();
    client.start_workflow(UserDataExportWorkflow::run, seed_input(), options).await.unwrap();
}

async fn result(client: &Client, workflow_id: &str) -> ExportUserDataOutput {
    let handle = client.get_workflow_handle::<UserDataExportWorkflow>(workflow_id.to_owned());
    tokio::time::timeout(Duration::from_secs(60), handle.get_result(Default::default()))
        .await
        .expect("the workflow finishes")
        .expect("the workflow completes")
}

#[tokio::test]
async fn the_binary_runs_seed_workflows_and_stops_cleanly_on_sigterm() {
    let client = test_client().await;
    let task_queue = unique_task_queue("binary");
    let data_dir = tempfile::tempdir().unwrap();
    let mut worker = tokio::process::Command::new(env!("CARGO_BIN_EXE_userexport-worker"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("TEMPORAL_ADDRESS", test_address())
        .env("USEREXPORT_TASK_QUEUE", &task_queue)
        .env("USEREXPORT_DEMO_SCOPES", "acme/prod")
        .env("USEREXPORT_DEMO_USERS", "300")
        .env("USEREXPORT_DATA_DIR", data_dir.path())
        .env("USEREXPORT_SHUTDOWN_GRACE_S", "5")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();

    let workflow_id = format!("binary-{}", Uuid::new_v4());
    start_seed_workflow(&client, &task_queue, &workflow_id).await;
    let output = result(&client, &workflow_id).await;

    assert_eq!(output.status, ExportStatus::Completed);
    assert!(output.record_count > 0 && output.record_count < 300, "active users only");
    assert_eq!(output.export_id, derived_export_id(&workflow_id).to_string());
    let file = data_dir.path().join(&output.object_key);
    assert_eq!(std::fs::metadata(&file).unwrap().len(), output.bytes, "{}", file.display());

    let pid = worker.id().expect("running").to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let started = Instant::now();
    let status = tokio::time::timeout(Duration::from_secs(15), worker.wait()).await.expect("exits").unwrap();
    assert!(status.success(), "{status}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "idle worker stops at once: {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn the_binary_fails_fast_without_temporal() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let started = Instant::now();
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_userexport-worker"))
        .env_clear()
        .env("TEMPORAL_ADDRESS", format!("127.0.0.1:{port}"))
        .env("USEREXPORT_STORAGE", "memory")
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    assert!(started.elapsed() < Duration::from_secs(12), "{:?}", started.elapsed());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("TEMPORAL_ADDRESS"), "{stderr}");
}

/// Waits until the record of `workflow_id`'s export has `status` (30 s at most).
async fn wait_for_status(exports: &MemoryExportRepository, workflow_id: &str, status: ExportStatus) {
    let id = derived_export_id(workflow_id);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let record = exports.get(&scope(), id).await.unwrap();
        if record.as_ref().is_some_and(|r| r.status() == status) {
            return;
        }
        assert!(Instant::now() < deadline, "{workflow_id}: never {status}: {record:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn bookkeeping_and_retention_complete_on_a_control_worker_while_every_export_slot_is_busy() {
    let client = test_client().await;
    let task_queue = unique_task_queue("queues");
    let users = MemoryUserRepository::new();
    users.seed_synthetic(&scope(), 1000);
    let exports = Arc::new(MemoryExportRepository::new());
    let storage = Arc::new(ObjectStorage::in_memory());
    let adapters = || Adapters {
        // A user a second: an export holds its slot for as long as the test runs.
        users: Arc::new(SlowUsers { inner: Arc::new(users.clone()), per_user: Duration::from_secs(1) }),
        exports: exports.clone(),
        storage: storage.clone(),
        notifier: Arc::new(LogNotifier),
        callbacks: Arc::new(adapters::notify::NoCallbacks),
        batches: Arc::new(MemoryBatchRepository::new()),
        schedules: Arc::new(adapters::memory::MemoryScheduleRepository::new()),
    };
    let stop = CancellationToken::new();
    // Two processes' worth: one export slot on the exports queue, and a control-only worker.
    let exports_worker = worker::run_with(
        config_with(&task_queue, "0", &["--queues", "exports", "--max-concurrent-exports", "1"]),
        adapters(),
        stop.clone().cancelled_owned(),
    );
    let control_worker = worker::run_with(
        config_with(&task_queue, "0", &["--queues", "control"]),
        adapters(),
        stop.clone().cancelled_owned(),
    );
    let (busy, queued) = (format!("busy-{}", Uuid::new_v4()), format!("queued-{}", Uuid::new_v4()));
    let cancel = |workflow_id: &str| {
        let handle = client.get_workflow_handle::<UserDataExportWorkflow>(workflow_id.to_owned());
        async move { handle.cancel(WorkflowCancelOptions::builder().build()).await.unwrap() }
    };
    let drive = async {
        start_seed_workflow(&client, &task_queue, &busy).await;
        wait_for_status(&exports, &busy, ExportStatus::Running).await;

        // Prepared (its record created) and cancelled (recorded) while its attempt waits for the
        // busy slot.
        start_seed_workflow(&client, &task_queue, &queued).await;
        wait_for_status(&exports, &queued, ExportStatus::Pending).await;
        cancel(&queued).await;
        wait_for_status(&exports, &queued, ExportStatus::Cancelled).await;

        // A retention run completes too.
        let retention =
            WorkflowStartOptions::new(task_queue.clone(), format!("retention-{}", Uuid::new_v4())).build();
        let handle = client
            .start_workflow(ExportRetentionWorkflow::run, RetentionInput::default(), retention)
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_secs(30), handle.get_result(Default::default()))
            .await
            .expect("the retention run finishes while the export slot is busy")
            .expect("the retention run completes");

        let record = exports.get(&scope(), derived_export_id(&busy)).await.unwrap().unwrap();
        assert_eq!(record.status(), ExportStatus::Running, "the slot was busy all along");
        cancel(&busy).await;
        wait_for_status(&exports, &busy, ExportStatus::Cancelled).await;
        stop.cancel();
    };
    let (exports_stopped, control_stopped, ()) = tokio::join!(exports_worker, control_worker, drive);
    exports_stopped.unwrap();
    control_stopped.unwrap();
}

#[tokio::test]
async fn queues_are_named_and_checked() {
    let config = WorkerConfig::try_parse_from(["userexport-worker"]).unwrap();
    assert_eq!(config.workloads(), adapters::temporal::Workload::ALL.to_vec(), "all by default");
    let config =
        WorkerConfig::try_parse_from(["userexport-worker", "--queues", "batch,control,batch"]).unwrap();
    assert_eq!(config.workloads().len(), 2);
    assert!(WorkerConfig::try_parse_from(["userexport-worker", "--queues", "export"]).is_err());
    let config =
        WorkerConfig::try_parse_from(["userexport-worker", "--control-max-activities", "0"]).unwrap();
    assert!(format!("{:#}", config.check().unwrap_err()).contains("USEREXPORT_CONTROL_MAX_ACTIVITIES"));
}

#[tokio::test]
async fn an_invalid_setting_is_named() {
    let config = WorkerConfig::try_parse_from(["userexport-worker", "--retry-backoff", "0.5"]).unwrap();
    let err = format!("{:#}", config.check().unwrap_err());
    assert!(err.contains("USEREXPORT_RETRY_BACKOFF"), "{err}");
    let config = WorkerConfig::try_parse_from(["userexport-worker", "--demo-scopes", "Acme/prod"]).unwrap();
    assert!(format!("{:#}", config.check().unwrap_err()).contains("USEREXPORT_DEMO_SCOPES"));
}

/// Configuration for an in-process worker on the test server.
fn config(task_queue: &str, grace_s: &str) -> WorkerConfig {
    config_with(task_queue, grace_s, &[])
}

/// [`config`] with `extra` flags.
fn config_with(task_queue: &str, grace_s: &str, extra: &[&str]) -> WorkerConfig {
    let base = [
        "userexport-worker",
        "--temporal-address",
        &test_address(),
        "--task-queue",
        task_queue,
        "--users",
        "memory",
        "--exports",
        "memory",
        "--storage",
        "memory",
        "--shutdown-grace-s",
        grace_s,
        "--retry-initial-interval-ms",
        "100",
        "--heartbeat-timeout-s",
        "2",
    ];
    WorkerConfig::try_parse_from(base.iter().chain(extra)).unwrap()
}

#[tokio::test]
async fn a_stopped_workers_running_export_is_interrupted_and_finished_by_the_next_worker() {
    let client = test_client().await;
    let task_queue = unique_task_queue("handover");
    let users = MemoryUserRepository::new();
    users.seed_synthetic(&scope(), 1000);
    let exports = Arc::new(MemoryExportRepository::new());
    let storage = Arc::new(ObjectStorage::in_memory());
    let adapters = |per_user: Duration| Adapters {
        users: Arc::new(SlowUsers { inner: Arc::new(users.clone()), per_user }),
        exports: exports.clone(),
        storage: storage.clone(),
        notifier: Arc::new(LogNotifier),
        callbacks: Arc::new(adapters::notify::NoCallbacks),
        batches: Arc::new(MemoryBatchRepository::new()),
        schedules: Arc::new(adapters::memory::MemoryScheduleRepository::new()),
    };
    let workflow_id = format!("handover-{}", Uuid::new_v4());
    let id = derived_export_id(&workflow_id);

    // Worker 1 exports slowly (14 s); it is stopped, without grace, once the attempt runs.
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let first = worker::run_with(config(&task_queue, "0"), adapters(Duration::from_millis(20)), async {
        let _ = stop_rx.await;
    });
    let drive = async {
        start_seed_workflow(&client, &task_queue, &workflow_id).await;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let record = exports.get(&scope(), id).await.unwrap();
            if record.as_ref().is_some_and(|r| r.status() == ExportStatus::Running) {
                break;
            }
            assert!(Instant::now() < deadline, "the export never started: {record:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        stop_tx.send(()).unwrap();
    };
    let (stopped, ()) = tokio::join!(first, drive);
    stopped.unwrap();
    let record = exports.get(&scope(), id).await.unwrap().unwrap();
    assert_eq!((record.status(), record.attempt()), (ExportStatus::Running, 1), "left for the retry");
    assert_eq!(read_object(storage.as_ref(), &record.object_key).await, None);

    // Worker 2 picks up the retry and finishes the export.
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let second = worker::run_with(config(&task_queue, "5"), adapters(Duration::ZERO), async {
        let _ = stop_rx.await;
    });
    let (stopped, output) = tokio::join!(second, async {
        let output = result(&client, &workflow_id).await;
        stop_tx.send(()).unwrap();
        output
    });
    stopped.unwrap();
    assert_eq!(output.status, ExportStatus::Completed);
    let record = exports.get(&scope(), id).await.unwrap().unwrap();
    assert_eq!((record.status(), record.attempt()), (ExportStatus::Completed, 2));
    let object = read_object(storage.as_ref(), &record.object_key).await.expect("the object");
    assert_eq!(object.len() as u64, output.bytes);
}
