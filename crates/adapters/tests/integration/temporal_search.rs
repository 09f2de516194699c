//! Finding exports on a real Temporal server (`TEST_TEMPORAL_ADDRESS`, a dev server started
//! WITHOUT the attributes): the worker's start-up registration adds them, and every way an export
//! starts (API, event, batch, schedule) carries them, so `UserexportTenant='x/y'` finds it
//! through the client's list API and the `temporal` CLI.

use std::sync::Arc;
use std::time::{Duration, Instant};

use adapters::memory::{MemoryExportRepository, MemoryUserRepository};
use adapters::notify::LogNotifier;
use adapters::storage::ObjectStorage;
use adapters::temporal::testkit::{test_address, test_client, unique_task_queue, with_queue_workers};
use adapters::temporal::{
    FORMAT_ATTRIBUTE, ORIGIN_ATTRIBUTE, SearchAttributeRegistration, TENANT_ATTRIBUTE, TaskQueues,
    TemporalOrchestrator, TemporalScheduler, WorkerDeps, ensure_search_attributes,
};
use chrono::Utc;
use domain::{
    Batch, BatchId, BatchRequest, ExecutionPolicy, Export, ExportFormat, ExportId, ExportOrigin,
    ExportSchedule, ExportSpec, NewSchedule, ScheduleId, Scope,
};
use futures::StreamExt;
use ports::{ExportRepository, ExportStorage, Orchestrator, Scheduler};
use serde_json::{Value, json};
use service::{ExportRunner, ExportService, RunnerConfig};
use temporalio_client::tonic::IntoRequest;
use temporalio_client::{Client, NamespacedClient, WorkflowExecution, WorkflowListOptions};
use temporalio_common::protos::temporal::api::schedule::v1::schedule_action::Action;
use temporalio_common::protos::temporal::api::workflowservice::v1::DescribeScheduleRequest;
use temporalio_common::search_attributes::SearchAttributes;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// A scope no other test or run uses, so a query by tenant finds this test's workflows only.
fn fresh_scope() -> Scope {
    Scope::parse(&format!("t{}/prod", &Uuid::new_v4().simple().to_string()[..12])).unwrap()
}

/// Registers the attributes as the worker does at start-up; a second call finds them.
async fn registered(client: &Client) {
    match ensure_search_attributes(client).await.unwrap() {
        SearchAttributeRegistration::Added(_) | SearchAttributeRegistration::Present => {}
        refused @ SearchAttributeRegistration::Refused { .. } => {
            panic!("the dev server refused: {refused:?}")
        }
    }
    assert_eq!(ensure_search_attributes(client).await.unwrap(), SearchAttributeRegistration::Present);
}

/// Polls the visibility store (it lags the start by up to a second or so) for `count` workflows.
async fn listed(client: &Client, query: &str, count: usize) -> Vec<WorkflowExecution> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let found: Vec<_> = client
            .list_workflows(query, WorkflowListOptions::default())
            .map(|w| w.expect("listing workflows"))
            .collect()
            .await;
        if found.len() >= count {
            return found;
        }
        assert!(Instant::now() < deadline, "{query}: {} of {count} workflows listed after 20 s", found.len());
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn attribute(
    attributes: &SearchAttributes,
    key: &temporalio_common::search_attributes::SearchAttributeKey<String>,
) -> String {
    attributes.get(key).unwrap_or_default()
}

struct World {
    client: Client,
    task_queue: String,
    exports: Arc<MemoryExportRepository>,
    orchestrator: TemporalOrchestrator,
    service: ExportService,
    deps: WorkerDeps,
}

impl World {
    async fn new(test: &str, scopes: &[&Scope]) -> Self {
        let client = test_client().await;
        registered(&client).await;
        let users = MemoryUserRepository::new();
        for scope in scopes {
            users.seed_synthetic(scope, 5);
        }
        let exports = Arc::new(MemoryExportRepository::new());
        let storage: Arc<dyn ExportStorage> = Arc::new(ObjectStorage::in_memory());
        let runner = Arc::new(ExportRunner::new(
            Arc::new(users),
            exports.clone(),
            storage.clone(),
            Arc::new(LogNotifier),
            RunnerConfig::default(),
        ));
        let task_queue = unique_task_queue(test);
        let orchestrator =
            TemporalOrchestrator::new(client.clone(), task_queue.clone(), ExecutionPolicy::default());
        let service = ExportService::new(
            exports.clone(),
            storage.clone(),
            Arc::new(orchestrator.clone()),
            runner.clone(),
            Duration::from_secs(60),
        );
        let deps = WorkerDeps {
            quotas: Default::default(),
            export_threads: Default::default(),
            admission: None,
            runner,
            exports: exports.clone(),
            storage,
            default_policy: ExecutionPolicy::default(),
            shutdown: CancellationToken::new(),
            reconciler: None,
        };
        Self { client, task_queue, exports, orchestrator, service, deps }
    }
}

#[tokio::test]
async fn exports_from_the_api_and_events_are_found_by_tenant_with_their_origin_and_memo() {
    let scope = fresh_scope();
    let w = World::new("search-api", &[&scope]).await;
    let query = format!("UserexportTenant='{scope}'");
    let found = with_queue_workers(&w.client, &TaskQueues::new(w.task_queue.as_str()), &w.deps, async {
        let spec = ExportSpec::from_json(&json!({"format": "ndjson", "fields": ["id", "email"],
            "user_filters": {"status": "active"}}))
        .unwrap();
        w.service.request(&scope, spec.clone(), None).await.unwrap();
        w.service.request_from(ExportOrigin::Event, &scope, spec, None).await.unwrap();
        listed(&w.client, &query, 2).await
    })
    .await;

    let mut origins: Vec<String> =
        found.iter().map(|wf| attribute(&wf.search_attributes(), &ORIGIN_ATTRIBUTE)).collect();
    origins.sort();
    assert_eq!(origins, ["api", "event"]);
    for wf in &found {
        let attributes = wf.search_attributes();
        assert_eq!(attribute(&attributes, &TENANT_ATTRIBUTE), scope.to_string());
        assert_eq!(attribute(&attributes, &FORMAT_ATTRIBUTE), "ndjson");
        let memo = wf.memo();
        assert_eq!(memo.get::<Value>("format").unwrap(), Some(json!("ndjson")));
        assert_eq!(memo.get::<Value>("fields").unwrap(), Some(json!(["id", "email"])));
        assert!(memo.get::<Value>("notify_email").unwrap().is_none());
    }

    // The operator's view: the `temporal` CLI finds them with the same query.
    let output = std::process::Command::new("temporal")
        .args(["workflow", "list", "--address", &test_address(), "--namespace", &w.client.namespace()])
        .args(["--query", &query, "--output", "json"])
        .output()
        .expect("the temporal CLI (scripts/test-all.sh installs it)");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let listed = String::from_utf8_lossy(&output.stdout);
    for wf in &found {
        assert!(listed.contains(wf.id()), "the CLI lists {}: {listed}", wf.id());
    }
}

#[tokio::test]
async fn batch_children_are_found_by_origin_batch() {
    let (a, b) = (fresh_scope(), fresh_scope());
    let w = World::new("search-batch", &[&a, &b]).await;
    let request = BatchRequest::from_json(&json!({"targets": [a.to_string(), b.to_string()],
        "export": {"format": "csv"}, "concurrency": 2}))
    .unwrap();
    let batch = Batch::new(
        BatchId::from_uuid(Uuid::now_v7()),
        &request,
        vec![a.clone(), b.clone()],
        None,
        Utc::now(),
    );
    let query = format!("UserexportTenant='{a}' AND UserexportOrigin='batch'");
    let found = with_queue_workers(&w.client, &TaskQueues::new(w.task_queue.as_str()), &w.deps, async {
        w.orchestrator.start_batch(&batch).await.unwrap();
        listed(&w.client, &query, 1).await
    })
    .await;
    assert_eq!(found[0].id(), ExportId::for_batch(batch.id, &a).workflow_id(&a));
    assert_eq!(attribute(&found[0].search_attributes(), &FORMAT_ATTRIBUTE), "csv");
}

#[tokio::test]
async fn a_schedules_fires_carry_origin_schedule() {
    let scope = fresh_scope();
    let w = World::new("search-schedule", &[&scope]).await;
    let scheduler =
        TemporalScheduler::new(w.client.clone(), w.task_queue.clone(), ExecutionPolicy::default());
    let new = NewSchedule::from_json(&json!({"cron": "0 3 * * *", "request": {"format": "csv",
        "user_filters": {"status": "active"}}}))
    .unwrap();
    let schedule = ExportSchedule::new(ScheduleId::from_uuid(Uuid::now_v7()), scope.clone(), new, Utc::now());
    scheduler.upsert(&schedule).await.unwrap();
    // An update (a patched schedule) keeps them.
    scheduler.upsert(&schedule).await.unwrap();

    let request = DescribeScheduleRequest {
        namespace: w.client.namespace(),
        schedule_id: schedule.id.temporal_schedule_id(&scope),
    }
    .into_request();
    let described =
        w.client.connection().workflow_service().describe_schedule(request).await.unwrap().into_inner();
    scheduler.delete(&scope, schedule.id).await.unwrap();
    let action = described.schedule.and_then(|s| s.action).and_then(|a| a.action);
    let Some(Action::StartWorkflow(start)) = action else { panic!("a start-workflow action") };
    let attributes = SearchAttributes::from_proto(&start.search_attributes.unwrap_or_default());
    assert_eq!(attribute(&attributes, &TENANT_ATTRIBUTE), scope.to_string());
    assert_eq!(attribute(&attributes, &ORIGIN_ATTRIBUTE), "schedule");
    assert_eq!(attribute(&attributes, &FORMAT_ATTRIBUTE), "csv");
    assert!(start.memo.is_some_and(|m| m.fields.contains_key("user_filters")));
}

#[tokio::test]
async fn an_export_record_restarted_keeps_its_scope_findable() {
    // `start` (the reconciler's path) is origin api.
    let scope = fresh_scope();
    let w = World::new("search-restart", &[&scope]).await;
    let export = Export::new(
        ExportId::from_uuid(Uuid::now_v7()),
        scope.clone(),
        ExportSpec::new(ExportFormat::Csv),
        None,
        Utc::now(),
    );
    w.exports.create_if_absent(&export).await.unwrap();
    w.orchestrator.start(&export).await.unwrap();
    let found = listed(&w.client, &format!("UserexportTenant='{scope}'"), 1).await;
    assert_eq!(attribute(&found[0].search_attributes(), &ORIGIN_ATTRIBUTE), "api");
    // No worker polls this queue: end the run so it does not linger.
    let handle =
        w.client.get_workflow_handle::<adapters::temporal::UserDataExportWorkflow>(export.workflow_id());
    handle.terminate(Default::default()).await.unwrap();
}
