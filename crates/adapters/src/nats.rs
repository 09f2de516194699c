//! NATS JetStream consumer of `ExportRequested` events (seed pattern 4): a driving adapter that
//! calls [`ExportService::request`], like the HTTP API does.
//!
//! - One durable pull consumer with explicit acks, created idempotently at start-up together with
//!   its stream (which also holds the dead-letter subject, so dead letters are stored too).
//! - A message is acked only after `request` returned `Ok`: the record is stored and the
//!   orchestrator's start is durable. The event ID is the idempotency key, so a redelivery (or
//!   the same event through the webhook) finds the same export instead of creating one.
//! - Transient failures are nak'ed with a delay that grows with the delivery count; the last
//!   allowed delivery that still fails goes to the dead-letter subject, so nothing is lost.
//! - Every event must prove its tenant before anything in it is trusted: the webhook's HMAC
//!   scheme ([`domain::signature`]) over the payload, with the tenant's webhook secret, carried in
//!   the `X-Userexport-Timestamp` and `X-Userexport-Signature` message headers. An unsigned,
//!   badly signed or stale event is dead-lettered as `invalid_signature`: it starts nothing and
//!   never claims its `event:{id}` idempotency key. [`NatsSettings::trust_unsigned`] accepts
//!   unsigned events (signed ones are still checked), for subjects whose every publisher the
//!   operator controls.
//! - Poison messages (bad signature, not JSON, invalid event or request, unknown tenant, an
//!   event ID reused for another request) go to the dead-letter subject with the reason, then are
//!   terminated.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use async_nats::HeaderMap;
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, PullConsumer, pull};
use async_nats::jetstream::{self, AckKind, Message, stream};
use chrono::Utc;
use domain::events::{claimed_event_id, verify_signed};
use domain::signature::{DEFAULT_REPLAY_WINDOW, SIGNATURE_HEADER, SignatureError, TIMESTAMP_HEADER};
use domain::{ExportOrigin, ExportRequested, Scope, TenantDirectory};
use futures::StreamExt;
use ports::PortError;
use service::{ExportService, RequestError, meters};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

/// Dead-letter headers: why, and where the message came from.
pub const DLQ_REASON: &str = "Userexport-Dlq-Reason";
pub const DLQ_ERROR: &str = "Userexport-Dlq-Error";
pub const DLQ_SUBJECT: &str = "Userexport-Dlq-Subject";
pub const DLQ_STREAM_SEQUENCE: &str = "Userexport-Dlq-Stream-Sequence";
pub const DLQ_DELIVERIES: &str = "Userexport-Dlq-Deliveries";
pub const DLQ_EVENT_ID: &str = "Userexport-Dlq-Event-Id";
/// Longest error text carried in a dead-letter header.
const DLQ_ERROR_MAX: usize = 1024;
/// Messages pulled ahead of processing (they count against the ack wait while they wait).
const BATCH: usize = 16;
/// How long a stream created here keeps events and dead letters.
pub const STREAM_MAX_AGE: Duration = Duration::from_secs(14 * 24 * 3600);
/// Pause before pulling again after the message stream failed.
const RESUBSCRIBE_AFTER: Duration = Duration::from_secs(1);

/// Where and how to consume.
#[derive(Debug, Clone)]
pub struct NatsSettings {
    pub url: String,
    pub stream: String,
    pub subject: String,
    /// Durable consumer name.
    pub consumer: String,
    pub dlq_subject: String,
    /// Deliveries of one message before it is dead-lettered (at least 1).
    pub max_deliver: i64,
    /// How long the server waits for an ack before redelivering.
    pub ack_wait: Duration,
    /// Nak delay after the first failed delivery; doubles per delivery up to `retry_max`.
    pub retry_initial: Duration,
    pub retry_max: Duration,
    /// Accept events without signature headers (signed ones are still verified). Only for a
    /// subject whose every publisher the operator controls: anyone who can publish on it can
    /// then run exports for any known tenant.
    pub trust_unsigned: bool,
    /// How far a signed event's timestamp may be from this process's clock, either way.
    pub replay_window: Duration,
}

impl NatsSettings {
    /// The defaults for `url`.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            stream: "USEREXPORT_EVENTS".to_owned(),
            subject: "userexport.export-requested".to_owned(),
            consumer: "userexport-api".to_owned(),
            dlq_subject: "userexport.export-requested.dlq".to_owned(),
            max_deliver: 10,
            ack_wait: Duration::from_secs(30),
            retry_initial: Duration::from_secs(1),
            retry_max: Duration::from_secs(60),
            trust_unsigned: false,
            replay_window: DEFAULT_REPLAY_WINDOW,
        }
    }

    /// The nak delay after the `delivered`-th delivery failed.
    pub fn retry_delay(&self, delivered: i64) -> Duration {
        let exponent = u32::try_from(delivered.saturating_sub(1).clamp(0, 30)).unwrap_or(30);
        self.retry_initial.saturating_mul(2_u32.saturating_pow(exponent)).min(self.retry_max)
    }
}

/// What became of one message.
#[derive(Debug)]
enum Outcome {
    Started {
        export_id: String,
        created: bool,
    },
    /// Will never succeed: dead-letter it.
    Poison {
        reason: &'static str,
        error: String,
    },
    /// May succeed later: redeliver.
    Transient(String),
}

/// The running consumer. Stop it with [`EventConsumer::shutdown`].
#[derive(Debug)]
pub struct EventConsumer {
    client: async_nats::Client,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

struct Worker {
    settings: NatsSettings,
    jetstream: jetstream::Context,
    service: Arc<ExportService>,
    tenants: Arc<TenantDirectory>,
}

impl EventConsumer {
    /// Connects, creates the stream and durable consumer unless they exist, and starts consuming.
    ///
    /// # Errors
    /// NATS unreachable, or the stream or consumer cannot be created (the message says which).
    pub async fn start(
        settings: NatsSettings,
        service: Arc<ExportService>,
        tenants: Arc<TenantDirectory>,
    ) -> anyhow::Result<Self> {
        anyhow::ensure!(settings.max_deliver >= 1, "the NATS max deliveries must be at least 1");
        let client = async_nats::ConnectOptions::new()
            .name("userexport")
            .connection_timeout(Duration::from_secs(5))
            .connect(settings.url.as_str())
            .await
            .with_context(|| format!("connecting to NATS at {}", redacted(&settings.url)))?;
        let jetstream = jetstream::new(client.clone());
        let stream = jetstream
            .get_or_create_stream(stream::Config {
                name: settings.stream.clone(),
                subjects: vec![settings.subject.clone(), settings.dlq_subject.clone()],
                max_age: STREAM_MAX_AGE,
                ..Default::default()
            })
            .await
            .with_context(|| format!("creating the JetStream stream {}", settings.stream))?;
        // A stream that existed before keeps its subjects: without the dead-letter subject,
        // poison messages could never be put aside.
        let stored = &stream.cached_info().config.subjects;
        for (subject, setting) in
            [(&settings.subject, "subject"), (&settings.dlq_subject, "dead-letter subject")]
        {
            anyhow::ensure!(
                stored.iter().any(|pattern| subject_matches(pattern, subject)),
                "the JetStream stream {} does not store the {setting} {subject} (its subjects: {})",
                settings.stream,
                stored.join(", ")
            );
        }
        let consumer: PullConsumer = stream
            .get_or_create_consumer(
                &settings.consumer,
                pull::Config {
                    durable_name: Some(settings.consumer.clone()),
                    filter_subject: settings.subject.clone(),
                    deliver_policy: DeliverPolicy::All,
                    ack_policy: AckPolicy::Explicit,
                    ack_wait: settings.ack_wait,
                    max_deliver: settings.max_deliver,
                    ..Default::default()
                },
            )
            .await
            .with_context(|| format!("creating the JetStream consumer {}", settings.consumer))?;
        info!(url = %redacted(&settings.url), stream = %settings.stream, subject = %settings.subject,
              consumer = %settings.consumer, dlq = %settings.dlq_subject, "consuming ExportRequested events");
        let stop = CancellationToken::new();
        let worker = Worker { settings, jetstream, service, tenants };
        let task = tokio::spawn(worker.run(consumer, stop.clone()));
        Ok(Self { client, stop, task })
    }

    /// A handle on the consumer's connection, for readiness checks.
    pub fn health(&self) -> NatsHealth {
        NatsHealth { client: self.client.clone() }
    }

    /// Stops pulling, lets the message in hand finish (at most `grace`), and closes the connection.
    /// Messages pulled but not handled are redelivered after the ack wait.
    pub async fn shutdown(self, grace: Duration) {
        self.stop.cancel();
        let task = self.task;
        if tokio::time::timeout(grace, task).await.is_err() {
            warn!(grace_s = grace.as_secs(), "the event consumer did not stop within the grace period");
        }
        if let Err(err) = self.client.drain().await {
            warn!(error = %err, "closing the NATS connection");
        }
        info!("event consumer stopped");
    }
}

/// Checks the consumer's NATS connection.
#[derive(Debug, Clone)]
pub struct NatsHealth {
    client: async_nats::Client,
}

impl NatsHealth {
    /// `Ok` when connected and the server answers a round trip.
    ///
    /// # Errors
    /// `Unavailable` while disconnected (the client keeps reconnecting) or when the server does not answer.
    pub async fn ping(&self) -> Result<(), PortError> {
        if self.client.connection_state() != async_nats::connection::State::Connected {
            return Err(PortError::unavailable(anyhow::anyhow!("not connected to NATS")));
        }
        self.client.flush().await.map_err(PortError::unavailable)
    }
}

impl Worker {
    async fn run(self, consumer: PullConsumer, stop: CancellationToken) {
        while !stop.is_cancelled() {
            let messages = consumer.stream().max_messages_per_batch(BATCH).messages();
            let mut messages = match tokio::select! {
                () = stop.cancelled() => break,
                messages = messages => messages,
            } {
                Ok(messages) => messages,
                Err(err) => {
                    warn!(error = %err, "pulling from JetStream failed; retrying");
                    tokio::select! {
                        () = stop.cancelled() => break,
                        () = tokio::time::sleep(RESUBSCRIBE_AFTER) => continue,
                    }
                }
            };
            loop {
                let next = tokio::select! {
                    () = stop.cancelled() => return,
                    next = messages.next() => next,
                };
                match next {
                    Some(Ok(message)) => self.handle(message).await,
                    Some(Err(err)) => warn!(error = %err, "receiving from JetStream failed"),
                    None => break,
                }
            }
        }
    }

    async fn handle(&self, message: Message) {
        let (delivered, sequence) = match message.info() {
            Ok(info) => (info.delivered, info.stream_sequence),
            Err(err) => {
                warn!(error = %err, subject = %message.subject, "a message without JetStream metadata; skipping");
                return;
            }
        };
        let event_id = claimed_event_id(&message.payload).unwrap_or_default();
        match self.process(&message).await {
            Outcome::Started { export_id, created } => {
                let outcome = if created { "started" } else { "duplicate" };
                metrics::counter!(meters::EVENTS_CONSUMED, "source" => "nats", "outcome" => outcome)
                    .increment(1);
                info!(
                    event_id,
                    export_id, created, delivered, sequence, "ExportRequested: export started; ack"
                );
                self.ack(&message, AckKind::Ack, &event_id).await;
            }
            Outcome::Poison { reason, error } => {
                warn!(
                    event_id,
                    reason, error, delivered, sequence, "ExportRequested: poison; dead-lettering"
                );
                metrics::counter!(meters::EVENTS_CONSUMED, "source" => "nats", "outcome" => "poison")
                    .increment(1);
                self.dead_letter(&message, reason, &error, delivered, sequence, &event_id).await;
            }
            Outcome::Transient(error) if delivered >= self.settings.max_deliver => {
                warn!(
                    event_id,
                    error,
                    delivered,
                    sequence,
                    "ExportRequested: still failing at the last delivery; dead-lettering"
                );
                metrics::counter!(meters::EVENTS_CONSUMED, "source" => "nats", "outcome" => "failed")
                    .increment(1);
                self.dead_letter(&message, "max_deliver_exceeded", &error, delivered, sequence, &event_id)
                    .await;
            }
            Outcome::Transient(error) => {
                let delay = self.settings.retry_delay(delivered);
                warn!(
                    event_id,
                    error,
                    delivered,
                    sequence,
                    retry_in_ms = delay.as_millis() as u64,
                    "ExportRequested: transient failure; nak"
                );
                metrics::counter!(meters::EVENTS_CONSUMED, "source" => "nats", "outcome" => "retried")
                    .increment(1);
                self.ack(&message, AckKind::Nak(Some(delay)), &event_id).await;
            }
        }
    }

    async fn process(&self, message: &Message) -> Outcome {
        let payload = &message.payload;
        // Before the payload is parsed or its tenant believed: nothing unproven starts an export
        // or claims an event ID.
        let proven = match self.authenticate(message) {
            Ok(proven) => proven,
            Err(err) => return Outcome::Poison { reason: "invalid_signature", error: err.to_string() },
        };
        let event = match ExportRequested::from_slice(payload) {
            Ok(event) => event,
            Err(err) => return Outcome::Poison { reason: err.code(), error: err.to_string() },
        };
        if proven.as_ref().is_some_and(|scope| *scope != event.scope) {
            return Outcome::Poison {
                reason: "invalid_signature",
                error: "the signature proves another tenant than the event names".to_owned(),
            };
        }
        if !self.tenants.contains(&event.scope) {
            return Outcome::Poison {
                reason: "unknown_tenant",
                error: format!("unknown tenant scope {}", event.scope),
            };
        }
        let key = event.idempotency_key();
        match self.service.request_from(ExportOrigin::Event, &event.scope, event.spec, Some(key)).await {
            Ok(requested) => {
                Outcome::Started { export_id: requested.export.id.to_string(), created: requested.created }
            }
            Err(err @ RequestError::IdempotencyMismatch { .. }) => {
                Outcome::Poison { reason: "idempotency_conflict", error: err.to_string() }
            }
            // A non-retryable port error may still pass (a restarted database...); max_deliver
            // bounds how often it is tried. The cause is logged here; dead letters, which
            // publishers may read, carry only the public text.
            Err(err) => {
                let cause = format!("{:#}", anyhow::Error::from(err));
                warn!(event_id = %event.event_id, error = %cause, "ExportRequested: the export could not be requested");
                Outcome::Transient(TRANSIENT_PUBLIC.to_owned())
            }
        }
    }

    /// The scope the message's signature proves, or `None` for an unsigned message on a
    /// trusted subject.
    fn authenticate(&self, message: &Message) -> Result<Option<Scope>, SignatureError> {
        let timestamp = header(message, TIMESTAMP_HEADER);
        let signature = header(message, SIGNATURE_HEADER);
        if self.settings.trust_unsigned && timestamp.is_none() && signature.is_none() {
            return Ok(None);
        }
        let now = Utc::now().timestamp();
        verify_signed(&self.tenants, timestamp, signature, &message.payload, now, self.settings.replay_window)
            .map(Some)
    }

    /// Publishes the message to the dead-letter subject (awaiting JetStream's ack), then
    /// terminates it. If the dead letter cannot be stored, the message is nak'ed instead: lost never.
    async fn dead_letter(
        &self,
        message: &Message,
        reason: &str,
        error: &str,
        delivered: i64,
        sequence: u64,
        event_id: &str,
    ) {
        let mut headers = HeaderMap::new();
        headers.insert(DLQ_REASON, reason);
        headers.insert(DLQ_ERROR, header_value(error).as_str());
        headers.insert(DLQ_SUBJECT, message.subject.as_str());
        headers.insert(DLQ_STREAM_SEQUENCE, sequence.to_string().as_str());
        headers.insert(DLQ_DELIVERIES, delivered.to_string().as_str());
        if !event_id.is_empty() {
            headers.insert(DLQ_EVENT_ID, header_value(event_id).as_str());
        }
        // Deduplicated by JetStream, so a dead letter re-sent after a lost ack is stored once.
        headers.insert("Nats-Msg-Id", format!("dlq:{}:{sequence}", self.settings.stream).as_str());
        let stored = async {
            self.jetstream
                .publish_with_headers(self.settings.dlq_subject.clone(), headers, message.payload.clone())
                .await?
                .await
                .map_err(anyhow::Error::from)
        };
        match stored.await {
            Ok(_) => {
                metrics::counter!(meters::DEAD_LETTERS, "reason" => reason.to_owned()).increment(1);
                self.ack(message, AckKind::Term, event_id).await;
            }
            Err(err) => {
                error!(event_id, error = %format!("{err:#}"), dlq = %self.settings.dlq_subject,
                       "storing a dead letter failed; nak");
                self.ack(message, AckKind::Nak(Some(self.settings.retry_delay(delivered))), event_id).await;
            }
        }
    }

    async fn ack(&self, message: &Message, kind: AckKind, event_id: &str) {
        if let Err(err) = message.ack_with(kind).await {
            // The server redelivers after the ack wait; idempotency makes that harmless.
            warn!(event_id, error = %err, "acknowledging a message failed");
        }
    }
}

/// What a dead letter says when the export could not be requested for a while (the cause is in
/// the logs, with the event ID).
const TRANSIENT_PUBLIC: &str = "the export could not be requested: a dependency was unavailable";

/// A message header's first value, its name matched without regard to case (publishers differ).
fn header<'m>(message: &'m Message, name: &str) -> Option<&'m str> {
    let headers = message.headers.as_ref()?;
    headers
        .iter()
        .find(|(key, _)| AsRef::<str>::as_ref(key).eq_ignore_ascii_case(name))
        .and_then(|(_, values)| values.first())
        .map(|value| value.as_str())
}

/// Whether a NATS subject pattern (`*` one token, `>` the rest) covers `subject`.
fn subject_matches(pattern: &str, subject: &str) -> bool {
    let mut subject_tokens = subject.split('.');
    for token in pattern.split('.') {
        match (token, subject_tokens.next()) {
            (">", Some(_)) => return true,
            ("*", Some(_)) => {}
            (literal, Some(actual)) if literal == actual => {}
            _ => return false,
        }
    }
    subject_tokens.next().is_none()
}

/// The URL without the credentials it may carry (`nats://user:password@host`).
fn redacted(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(mut url) if url.has_host() => {
            let _ = url.set_password(None);
            let _ = url.set_username("");
            url.to_string()
        }
        _ => raw.rsplit_once('@').map_or_else(|| raw.to_owned(), |(_, host)| host.to_owned()),
    }
}

/// Header values are one line of bounded length.
fn header_value(text: &str) -> String {
    let one_line: String = text.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    match one_line.char_indices().nth(DLQ_ERROR_MAX) {
        Some((cut, _)) => one_line[..cut].to_owned(),
        None => one_line,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_retry_delay_doubles_per_delivery_up_to_the_maximum() {
        let settings = NatsSettings {
            retry_initial: Duration::from_secs(1),
            retry_max: Duration::from_secs(10),
            ..NatsSettings::new("nats://x")
        };
        let delays: Vec<u64> = (1..=6).map(|d| settings.retry_delay(d).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 10, 10]);
        assert_eq!(settings.retry_delay(i64::MAX), Duration::from_secs(10));
        assert_eq!(settings.retry_delay(0), Duration::from_secs(1));
    }

    #[test]
    fn subject_patterns_match_like_nats() {
        assert!(subject_matches("a.b", "a.b"));
        assert!(subject_matches("a.*", "a.b"));
        assert!(subject_matches("a.>", "a.b.c"));
        assert!(subject_matches(">", "a"));
        assert!(!subject_matches("a.>", "a"));
        assert!(!subject_matches("a.*", "a.b.c"));
        assert!(!subject_matches("a.b", "a.b.dlq"));
        assert!(!subject_matches("a.b.c", "a.b"));
    }

    #[test]
    fn urls_are_logged_without_credentials() {
        assert_eq!(redacted("nats://user:s3cret@nats.internal:4222"), "nats://nats.internal:4222");
        assert_eq!(redacted("nats://127.0.0.1:4222"), "nats://127.0.0.1:4222");
        assert_eq!(redacted("user:s3cret@host:4222"), "host:4222");
    }

    #[test]
    fn header_values_are_single_bounded_lines() {
        assert_eq!(header_value("a\r\nb"), "a  b");
        assert_eq!(header_value(&"é".repeat(2000)).chars().count(), DLQ_ERROR_MAX);
    }
}
