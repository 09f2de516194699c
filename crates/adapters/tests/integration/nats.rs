//! The JetStream consumer of `ExportRequested` events against a real NATS server
//! (`TEST_NATS_URL`), with the export service on the in-memory adapters and the in-process
//! orchestrator. Each test has its own stream, subjects and consumer. Events are signed with the
//! tenant's webhook secret, as producers must.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use adapters::inprocess::InProcessOrchestrator;
use adapters::memory::{MemoryExportRepository, MemoryUserRepository};
use adapters::nats::{DLQ_DELIVERIES, DLQ_ERROR, DLQ_EVENT_ID, DLQ_REASON, DLQ_STREAM_SEQUENCE, DLQ_SUBJECT};
use adapters::nats::{EventConsumer, NatsSettings};
use adapters::notify::LogNotifier;
use adapters::storage::ObjectStorage;
use async_nats::HeaderMap;
use async_nats::jetstream::{self, consumer::PullConsumer};
use async_trait::async_trait;
use domain::signature::{SIGNATURE_HEADER, TIMESTAMP_HEADER, sign};
use domain::{
    Batch, ExecutionPolicy, Export, ExportId, ExportStatus, IdempotencyKey, RetryPolicy, Scope,
    TenantDirectory,
};
use futures::StreamExt;
use ports::{CancelOutcome, ExportQuery, ExportRepository, Orchestrator, PortError, RunState, WaitOutcome};
use serde_json::json;
use service::{ExportRunner, ExportService, RunnerConfig};

fn nats_url() -> String {
    std::env::var("TEST_NATS_URL").unwrap_or_else(|_| {
        panic!(
            "TEST_NATS_URL is not set: these tests need a NATS server with JetStream, e.g. \
             `nats-server -js` and TEST_NATS_URL=nats://127.0.0.1:4222 (scripts/test-all.sh sets it)"
        )
    })
}

fn acme() -> Scope {
    Scope::parse("acme/prod").unwrap()
}

const ACME_SECRET: &str = "acme-nats-webhook-secret-0123";
const GLOBEX_SECRET: &str = "globex-nats-webhook-secret-0123";

fn now_s() -> i64 {
    chrono::Utc::now().timestamp()
}

/// The two signature headers for `payload`, signed with `secret` at `timestamp`.
fn signature_headers(payload: &[u8], secret: &str, timestamp: i64) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(TIMESTAMP_HEADER, timestamp.to_string().as_str());
    headers.insert(SIGNATURE_HEADER, sign(secret.as_bytes(), timestamp, payload).as_str());
    headers
}

fn event_json(event_id: &str, tenant: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({"event_id": event_id, "tenant_id": tenant, "environment_id": "prod",
                               "request": {"format": "csv"}}))
    .unwrap()
}

fn unique_settings() -> NatsSettings {
    let id = uuid::Uuid::new_v4().simple().to_string();
    NatsSettings {
        stream: format!("UE_TEST_{id}"),
        subject: format!("ue-test.{id}.export-requested"),
        consumer: format!("ue-test-{id}"),
        dlq_subject: format!("ue-test.{id}.dlq"),
        max_deliver: 4,
        ack_wait: Duration::from_secs(10),
        retry_initial: Duration::from_millis(50),
        retry_max: Duration::from_millis(200),
        ..NatsSettings::new(nats_url())
    }
}

fn fast_policy() -> ExecutionPolicy {
    ExecutionPolicy {
        retry: RetryPolicy {
            initial_interval: Duration::from_millis(10),
            backoff_coefficient: 2.0,
            maximum_interval: Duration::from_millis(50),
            maximum_attempts: 3,
        },
        deadline: Duration::from_secs(30),
        heartbeat_timeout: Duration::from_secs(5),
    }
}

/// An orchestrator whose `start` is unavailable for its first `failures` calls (all of them
/// with `usize::MAX`).
struct FlakyOrchestrator {
    inner: InProcessOrchestrator,
    failures: usize,
    starts: AtomicUsize,
}

#[async_trait]
impl Orchestrator for FlakyOrchestrator {
    async fn start(&self, export: &Export) -> Result<(), PortError> {
        if self.starts.fetch_add(1, Ordering::SeqCst) < self.failures {
            return Err(PortError::unavailable(anyhow::anyhow!("injected: orchestrator unreachable")));
        }
        self.inner.start(export).await
    }
    async fn start_batch(&self, batch: &Batch) -> Result<(), PortError> {
        self.inner.start_batch(batch).await
    }
    async fn wait(&self, scope: &Scope, id: ExportId, timeout: Duration) -> Result<WaitOutcome, PortError> {
        self.inner.wait(scope, id, timeout).await
    }
    async fn cancel(&self, export: &Export) -> Result<CancelOutcome, PortError> {
        self.inner.cancel(export).await
    }
    async fn inspect(&self, export: &Export) -> Result<RunState, PortError> {
        self.inner.inspect(export).await
    }
    async fn ping(&self) -> Result<(), PortError> {
        self.inner.ping().await
    }
}

struct Harness {
    settings: NatsSettings,
    jetstream: jetstream::Context,
    client: async_nats::Client,
    exports: Arc<MemoryExportRepository>,
    orchestrator: Arc<FlakyOrchestrator>,
    consumer: Option<EventConsumer>,
}

/// The export service on fresh in-memory adapters; the orchestrator's first `failures` starts fail.
fn service(failures: usize) -> (ExportService, Arc<MemoryExportRepository>, Arc<FlakyOrchestrator>) {
    let users = MemoryUserRepository::new();
    users.seed_synthetic(&acme(), 50);
    let exports = Arc::new(MemoryExportRepository::new());
    let storage = Arc::new(ObjectStorage::in_memory());
    let runner = Arc::new(ExportRunner::new(
        Arc::new(users),
        exports.clone(),
        storage.clone(),
        Arc::new(LogNotifier),
        RunnerConfig::default(),
    ));
    let inner = InProcessOrchestrator::new(runner.clone(), exports.clone(), fast_policy(), 2);
    let orchestrator = Arc::new(FlakyOrchestrator { inner, failures, starts: AtomicUsize::new(0) });
    let service =
        ExportService::new(exports.clone(), storage, orchestrator.clone(), runner, Duration::from_secs(60));
    (service, exports, orchestrator)
}

/// acme/prod and globex/prod with their webhook secrets.
fn tenants() -> Arc<TenantDirectory> {
    Arc::new(
        TenantDirectory::parse_json(&format!(
            r#"[{{"scope":"acme/prod","webhook_secret":"{ACME_SECRET}"}},
               {{"scope":"globex/prod","webhook_secret":"{GLOBEX_SECRET}"}}]"#
        ))
        .unwrap(),
    )
}

impl Harness {
    /// The consumer on fresh in-memory adapters; the orchestrator's first `failures` starts fail.
    async fn start(settings: NatsSettings, failures: usize) -> Self {
        let (service, exports, orchestrator) = service(failures);
        let consumer = EventConsumer::start(settings.clone(), Arc::new(service), tenants()).await.unwrap();
        let client = async_nats::connect(settings.url.as_str()).await.unwrap();
        let jetstream = jetstream::new(client.clone());
        Self { settings, jetstream, client, exports, orchestrator, consumer: Some(consumer) }
    }

    /// Publishes without signature headers.
    async fn publish_unsigned(&self, payload: Vec<u8>) {
        self.jetstream.publish(self.settings.subject.clone(), payload.into()).await.unwrap().await.unwrap();
    }

    async fn publish_with(&self, payload: Vec<u8>, headers: HeaderMap) {
        self.jetstream
            .publish_with_headers(self.settings.subject.clone(), headers, payload.into())
            .await
            .unwrap()
            .await
            .unwrap();
    }

    /// Publishes signed with acme's secret, now.
    async fn publish(&self, payload: Vec<u8>) {
        let headers = signature_headers(&payload, ACME_SECRET, now_s());
        self.publish_with(payload, headers).await;
    }

    async fn publish_event(&self, event_id: &str, tenant: &str) {
        self.publish(event_json(event_id, tenant)).await;
    }

    async fn consumer_info(&self) -> jetstream::consumer::Info {
        let stream = self.jetstream.get_stream(&self.settings.stream).await.unwrap();
        let consumer: PullConsumer = stream.get_consumer(&self.settings.consumer).await.unwrap();
        consumer.get_info().await.unwrap()
    }

    /// Waits until every published event was handled for good (acked or terminated).
    async fn settled(&self) -> jetstream::consumer::Info {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let info = self.consumer_info().await;
            if info.num_pending == 0 && info.num_ack_pending == 0 {
                return info;
            }
            assert!(tokio::time::Instant::now() < deadline, "events never settled: {info:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn all_exports(&self) -> Vec<Export> {
        let query = ExportQuery { status: None, limit: 100, after: None };
        self.exports.list(&acme(), &query).await.unwrap().items
    }

    async fn wait_for_status(&self, id: ExportId, status: ExportStatus) -> Export {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(export) = self.exports.get(&acme(), id).await.unwrap()
                && export.status() == status
            {
                return export;
            }
            assert!(tokio::time::Instant::now() < deadline, "export {id} never became {status}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn stop(mut self) {
        if let Some(consumer) = self.consumer.take() {
            consumer.shutdown(Duration::from_secs(5)).await;
        }
        let _ = self.jetstream.delete_stream(&self.settings.stream).await;
    }
}

fn export_id_for(event_id: &str) -> ExportId {
    ExportId::for_idempotency_key(&acme(), &IdempotencyKey::parse(&format!("event:{event_id}")).unwrap())
}

#[tokio::test]
async fn an_event_published_twice_gives_one_export_that_completes() {
    let h = Harness::start(unique_settings(), 0).await;
    h.publish_event("evt-twice", "acme").await;
    h.publish_event("evt-twice", "acme").await;

    let export = h.wait_for_status(export_id_for("evt-twice"), ExportStatus::Completed).await;
    let info = h.settled().await;
    assert_eq!(info.delivered.consumer_sequence, 2, "two deliveries, none again: {info:?}");
    let exports = h.all_exports().await;
    assert_eq!(exports.len(), 1, "{exports:?}");
    assert_eq!(exports[0].id, export.id);
    assert_eq!(export.idempotency_key.as_ref().map(IdempotencyKey::as_str), Some("event:evt-twice"));
    h.stop().await;
}

#[tokio::test]
async fn poison_events_land_on_the_dead_letter_subject_with_their_reason_and_are_not_redelivered() {
    let h = Harness::start(unique_settings(), 0).await;
    let mut dlq = h.client.subscribe(h.settings.dlq_subject.clone()).await.unwrap();
    h.client.flush().await.unwrap();

    let invalid_request = json!({"event_id": "evt-bad-request", "tenant_id": "acme", "environment_id": "prod",
                                 "request": {"format": "xml"}});
    // Signed with acme's secret: a payload that names no tenant (not JSON) or an unknown one
    // cannot prove it, so it fails the signature check before it is parsed.
    let poison: [(Vec<u8>, &str); 3] = [
        (b"{not json".to_vec(), "invalid_signature"),
        (serde_json::to_vec(&invalid_request).unwrap(), "invalid_request"),
        (
            serde_json::to_vec(
                &json!({"event_id": "evt-stranger", "tenant_id": "stranger", "environment_id": "prod",
                                       "request": {"format": "csv"}}),
            )
            .unwrap(),
            "invalid_signature",
        ),
    ];
    for (payload, _) in &poison {
        h.publish(payload.clone()).await;
    }

    let stream = h.jetstream.get_stream(&h.settings.stream).await.unwrap();
    for (payload, reason) in &poison {
        let letter = tokio::time::timeout(Duration::from_secs(20), dlq.next()).await.unwrap().unwrap();
        let headers = letter.headers.clone().unwrap();
        let header = |name: &str| headers.get(name).map(|v| v.as_str().to_owned());
        assert_eq!(header(DLQ_REASON).as_deref(), Some(*reason));
        assert!(header(DLQ_ERROR).is_some_and(|e| !e.is_empty()));
        assert_eq!(header(DLQ_SUBJECT), Some(h.settings.subject.clone()));
        let sequence: u64 = header(DLQ_STREAM_SEQUENCE).unwrap().parse().unwrap();
        let original = stream.get_raw_message(sequence).await.unwrap();
        assert_eq!(original.subject.as_str(), h.settings.subject, "the sequence names the original");
        assert_eq!(&original.payload[..], &payload[..]);
        assert_eq!(header(DLQ_DELIVERIES).as_deref(), Some("1"));
        assert_eq!(&letter.payload[..], &payload[..], "the original payload is kept");
        if *reason == "invalid_request" {
            assert_eq!(header(DLQ_EVENT_ID).as_deref(), Some("evt-bad-request"));
            assert!(header(DLQ_ERROR).unwrap().contains("request.format"), "{headers:?}");
        }
    }

    h.settled().await;
    // Given time, nothing comes back and nothing more is dead-lettered.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(tokio::time::timeout(Duration::from_millis(200), dlq.next()).await.is_err());
    let info = h.consumer_info().await;
    assert_eq!(info.delivered.consumer_sequence, 3, "one delivery each: {info:?}");
    assert_eq!((info.num_pending, info.num_ack_pending), (0, 0));
    assert!(h.all_exports().await.is_empty());
    h.stop().await;
}

#[tokio::test]
async fn a_transient_failure_is_redelivered_and_then_succeeds() {
    let h = Harness::start(unique_settings(), 2).await;
    h.publish_event("evt-flaky", "acme").await;

    let export = h.wait_for_status(export_id_for("evt-flaky"), ExportStatus::Completed).await;
    let info = h.settled().await;
    assert_eq!(info.delivered.consumer_sequence, 3, "delivered three times: {info:?}");
    assert_eq!(h.orchestrator.starts.load(Ordering::SeqCst), 3, "two failed starts, then one that ran");
    assert_eq!(h.all_exports().await.len(), 1);
    assert_eq!(export.id, export_id_for("evt-flaky"));
    h.stop().await;
}

#[tokio::test]
async fn an_event_still_failing_at_its_last_delivery_is_dead_lettered() {
    let settings = NatsSettings { max_deliver: 2, ..unique_settings() };
    let h = Harness::start(settings, usize::MAX).await;
    let mut dlq = h.client.subscribe(h.settings.dlq_subject.clone()).await.unwrap();
    h.client.flush().await.unwrap();
    h.publish_event("evt-down", "acme").await;

    let letter = tokio::time::timeout(Duration::from_secs(20), dlq.next()).await.unwrap().unwrap();
    let headers = letter.headers.unwrap();
    assert_eq!(headers.get(DLQ_REASON).map(|v| v.as_str()), Some("max_deliver_exceeded"));
    assert_eq!(headers.get(DLQ_DELIVERIES).map(|v| v.as_str()), Some("2"));
    // Publishers may read dead letters: the cause stays in the logs.
    let error = headers.get(DLQ_ERROR).map(|v| v.as_str().to_owned()).unwrap_or_default();
    assert!(error.contains("dependency was unavailable"), "{error}");
    assert!(!error.contains("injected") && !error.contains("orchestrator unreachable"), "{error}");
    h.settled().await;
    assert_eq!(h.orchestrator.starts.load(Ordering::SeqCst), 2);
    h.stop().await;
}

#[tokio::test]
async fn restarting_the_consumer_reuses_its_stream_and_durable_consumer() {
    let settings = unique_settings();
    let first = Harness::start(settings.clone(), 0).await;
    first.publish_event("evt-before-restart", "acme").await;
    first.wait_for_status(export_id_for("evt-before-restart"), ExportStatus::Completed).await;
    first.settled().await;
    if let Some(consumer) = first.consumer {
        consumer.shutdown(Duration::from_secs(5)).await;
    }

    // get_or_create finds both; the durable consumer resumes after what it acked.
    let second = Harness::start(settings, 0).await;
    second.publish_event("evt-after-restart", "acme").await;
    second.wait_for_status(export_id_for("evt-after-restart"), ExportStatus::Completed).await;
    second.settled().await;
    let ids: Vec<ExportId> = second.all_exports().await.iter().map(|e| e.id).collect();
    assert_eq!(ids, [export_id_for("evt-after-restart")], "the first event was not delivered again");
    second.stop().await;
}

/// The consumer with the Temporal orchestrator and a worker (the API process's other mode).
#[cfg(feature = "temporal")]
#[tokio::test]
async fn with_temporal_an_event_published_twice_gives_one_completed_export() {
    use adapters::temporal::testkit::{test_client, unique_task_queue, with_queue_workers};
    use adapters::temporal::{TaskQueues, TemporalOrchestrator, WorkerDeps};
    use ports::ExportStorage;
    use tokio_util::sync::CancellationToken;

    let client = test_client().await;
    let task_queue = unique_task_queue("nats-events");
    let users = MemoryUserRepository::new();
    users.seed_synthetic(&acme(), 50);
    let exports = Arc::new(MemoryExportRepository::new());
    let storage: Arc<dyn ExportStorage> = Arc::new(ObjectStorage::in_memory());
    let runner = Arc::new(ExportRunner::new(
        Arc::new(users),
        exports.clone(),
        storage.clone(),
        Arc::new(LogNotifier),
        RunnerConfig::default(),
    ));
    let orchestrator = TemporalOrchestrator::new(client.clone(), task_queue.clone(), fast_policy());
    let service = ExportService::new(
        exports.clone(),
        storage.clone(),
        Arc::new(orchestrator),
        runner.clone(),
        Duration::from_secs(60),
    );
    let settings = unique_settings();
    let consumer = EventConsumer::start(settings.clone(), Arc::new(service), tenants()).await.unwrap();

    let queues = TaskQueues::new(task_queue);
    let deps = WorkerDeps {
        quotas: Default::default(),
        export_threads: Default::default(),
        admission: None,
        runner,
        exports: exports.clone(),
        storage,
        default_policy: fast_policy(),
        shutdown: CancellationToken::new(),
        reconciler: None,
    };

    let jetstream = jetstream::new(async_nats::connect(settings.url.as_str()).await.unwrap());
    // Workflow IDs derive from the event ID and the server outlives the test: unique per run.
    let event_id = format!("evt-temporal-{}", uuid::Uuid::new_v4().simple());
    let event = json!({"event_id": event_id, "tenant_id": "acme", "environment_id": "prod",
                       "request": {"format": "ndjson"}});
    for _ in 0..2 {
        let payload = serde_json::to_vec(&event).unwrap();
        let headers = signature_headers(&payload, ACME_SECRET, now_s());
        jetstream
            .publish_with_headers(settings.subject.clone(), headers, payload.into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let id = export_id_for(&event_id);
    with_queue_workers(&client, &queues, &deps, async {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let export = exports.get(&acme(), id).await.unwrap();
            if export.as_ref().is_some_and(|e| e.status() == ExportStatus::Completed) {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "never completed: {export:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;

    let stream = jetstream.get_stream(&settings.stream).await.unwrap();
    let mut info =
        stream.get_consumer::<jetstream::consumer::pull::Config>(&settings.consumer).await.unwrap();
    let info = info.info().await.unwrap().clone();
    assert_eq!(
        (info.num_pending, info.num_ack_pending, info.delivered.consumer_sequence),
        (0, 0, 2),
        "{info:?}"
    );
    let query = ExportQuery { status: None, limit: 100, after: None };
    assert_eq!(exports.list(&acme(), &query).await.unwrap().items.len(), 1);
    consumer.shutdown(Duration::from_secs(5)).await;
    let _ = jetstream.delete_stream(&settings.stream).await;
}

#[tokio::test]
async fn an_existing_stream_without_the_dead_letter_subject_stops_start_up_with_a_clear_error() {
    let settings = unique_settings();
    let jetstream = jetstream::new(async_nats::connect(settings.url.as_str()).await.unwrap());
    jetstream
        .create_stream(jetstream::stream::Config {
            name: settings.stream.clone(),
            subjects: vec![settings.subject.clone()],
            ..Default::default()
        })
        .await
        .unwrap();

    let (service, _, _) = service(0);
    let err = EventConsumer::start(settings.clone(), Arc::new(service), tenants()).await.unwrap_err();
    let message = format!("{err:#}");
    assert!(message.contains("dead-letter subject") && message.contains(&settings.dlq_subject), "{message}");
    jetstream.delete_stream(&settings.stream).await.unwrap();
}

/// Reads `n` dead letters and returns their reasons and event IDs.
async fn dead_letters(dlq: &mut async_nats::Subscriber, n: usize) -> Vec<(String, String)> {
    let mut letters = Vec::new();
    for _ in 0..n {
        let letter = tokio::time::timeout(Duration::from_secs(20), dlq.next()).await.unwrap().unwrap();
        let headers = letter.headers.unwrap();
        let header = |name: &str| headers.get(name).map(|v| v.as_str().to_owned()).unwrap_or_default();
        letters.push((header(DLQ_REASON), header(DLQ_EVENT_ID)));
    }
    letters
}

#[tokio::test]
async fn unsigned_wrongly_signed_other_tenants_and_stale_events_start_nothing_and_claim_no_event_id() {
    let h = Harness::start(unique_settings(), 0).await;
    let mut dlq = h.client.subscribe(h.settings.dlq_subject.clone()).await.unwrap();
    h.client.flush().await.unwrap();

    // Each claims the event ID the tenant's real event uses, with a request of its own.
    let forged = |n: u32| {
        serde_json::to_vec(
            &json!({"event_id": "evt-contested", "tenant_id": "acme", "environment_id": "prod",
                                   "request": {"format": "json", "limit": n}}),
        )
        .unwrap()
    };
    h.publish_unsigned(forged(1)).await;
    let wrong_secret = signature_headers(&forged(2), "a-guess-at-the-secret-000000", now_s());
    h.publish_with(forged(2), wrong_secret).await;
    let other_tenant = signature_headers(&forged(3), GLOBEX_SECRET, now_s());
    h.publish_with(forged(3), other_tenant).await;
    let stale = signature_headers(&forged(4), ACME_SECRET, now_s() - 301);
    h.publish_with(forged(4), stale).await;
    let mut only_timestamp = HeaderMap::new();
    only_timestamp.insert(TIMESTAMP_HEADER, now_s().to_string().as_str());
    h.publish_with(forged(5), only_timestamp).await;

    let letters = dead_letters(&mut dlq, 5).await;
    for (reason, event_id) in &letters {
        assert_eq!(
            (reason.as_str(), event_id.as_str()),
            ("invalid_signature", "evt-contested"),
            "{letters:?}"
        );
    }
    h.settled().await;
    assert!(h.all_exports().await.is_empty(), "nothing unproven started an export");

    // The tenant's own event with that ID still gets its export, with its own request.
    h.publish_event("evt-contested", "acme").await;
    let export = h.wait_for_status(export_id_for("evt-contested"), ExportStatus::Completed).await;
    assert_eq!(export.spec.format, domain::ExportFormat::Csv);
    assert_eq!(export.spec.limit, None);
    assert_eq!(h.all_exports().await.len(), 1);
    h.stop().await;
}

#[tokio::test]
async fn trusting_unsigned_events_accepts_them_but_still_refuses_a_bad_signature() {
    let settings = NatsSettings { trust_unsigned: true, ..unique_settings() };
    let h = Harness::start(settings, 0).await;
    let mut dlq = h.client.subscribe(h.settings.dlq_subject.clone()).await.unwrap();
    h.client.flush().await.unwrap();

    h.publish_unsigned(event_json("evt-trusted", "acme")).await;
    let export = h.wait_for_status(export_id_for("evt-trusted"), ExportStatus::Completed).await;
    assert_eq!(export.idempotency_key.as_ref().map(IdempotencyKey::as_str), Some("event:evt-trusted"));

    let payload = event_json("evt-badly-signed", "acme");
    let headers = signature_headers(&payload, GLOBEX_SECRET, now_s());
    h.publish_with(payload, headers).await;
    // Without a signature, what the payload says is checked as before.
    h.publish_unsigned(b"{not json".to_vec()).await;
    h.publish_unsigned(event_json("evt-stranger", "stranger")).await;
    let reasons: Vec<String> =
        dead_letters(&mut dlq, 3).await.into_iter().map(|(reason, _)| reason).collect();
    assert_eq!(reasons, ["invalid_signature", "invalid_json", "unknown_tenant"]);
    h.settled().await;
    let ids: Vec<ExportId> = h.all_exports().await.iter().map(|e| e.id).collect();
    assert_eq!(ids, [export_id_for("evt-trusted")]);
    h.stop().await;
}
