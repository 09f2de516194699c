//! Settings of the two `ExportRequested` event sources: the NATS JetStream consumer (run inside
//! this process when `USEREXPORT_NATS_URL` is set) and the signed webhook.

use std::time::Duration;

use adapters::nats::NatsSettings;
use anyhow::bail;
use clap::Args;

const DEFAULT_NATS_MAX_DELIVER: i64 = 10;
const DEFAULT_REPLAY_WINDOW_S: u64 = 300;

#[derive(Debug, Clone, Args)]
pub struct EventArgs {
    /// NATS server of the `ExportRequested` consumer (`nats://host:4222`); unset: no consumer.
    #[arg(long, env = "USEREXPORT_NATS_URL", hide_env_values = true)]
    pub nats_url: Option<String>,

    /// JetStream stream holding the event and dead-letter subjects (created if missing).
    #[arg(long, env = "USEREXPORT_NATS_STREAM", default_value = "USEREXPORT_EVENTS")]
    pub nats_stream: String,

    /// Subject of `ExportRequested` events.
    #[arg(long, env = "USEREXPORT_NATS_SUBJECT", default_value = "userexport.export-requested")]
    pub nats_subject: String,

    /// Durable consumer name; API processes sharing it share the work.
    #[arg(long, env = "USEREXPORT_NATS_CONSUMER", default_value = "userexport-api")]
    pub nats_consumer: String,

    /// Where poison events go, with the reason in `Userexport-Dlq-*` headers.
    #[arg(long, env = "USEREXPORT_NATS_DLQ_SUBJECT", default_value = "userexport.export-requested.dlq")]
    pub nats_dlq_subject: String,

    /// Deliveries of an event that keeps failing transiently before it is dead-lettered.
    #[arg(long, env = "USEREXPORT_NATS_MAX_DELIVER", default_value_t = DEFAULT_NATS_MAX_DELIVER)]
    pub nats_max_deliver: i64,

    /// Accept NATS events that carry no signature headers (signed ones are still verified).
    /// Only when you control every publisher on the subject: anyone who can publish there can
    /// then run exports for any known tenant.
    #[arg(long, env = "USEREXPORT_NATS_TRUST_UNSIGNED", default_value_t = false, action = clap::ArgAction::Set)]
    pub nats_trust_unsigned: bool,

    /// How far a webhook's or NATS event's `X-Userexport-Timestamp` may be from this server's
    /// clock, either way.
    #[arg(long, env = "USEREXPORT_WEBHOOK_REPLAY_WINDOW_S", default_value_t = DEFAULT_REPLAY_WINDOW_S)]
    pub webhook_replay_window_s: u64,
}

impl Default for EventArgs {
    fn default() -> Self {
        let defaults = NatsSettings::new("");
        Self {
            nats_url: None,
            nats_stream: defaults.stream,
            nats_subject: defaults.subject,
            nats_consumer: defaults.consumer,
            nats_dlq_subject: defaults.dlq_subject,
            nats_max_deliver: DEFAULT_NATS_MAX_DELIVER,
            nats_trust_unsigned: false,
            webhook_replay_window_s: DEFAULT_REPLAY_WINDOW_S,
        }
    }
}

impl EventArgs {
    /// The consumer's settings, when a NATS URL is configured.
    pub fn nats_settings(&self) -> Option<NatsSettings> {
        let url = self.nats_url.as_deref().map(str::trim).filter(|u| !u.is_empty())?;
        Some(NatsSettings {
            stream: self.nats_stream.clone(),
            subject: self.nats_subject.clone(),
            consumer: self.nats_consumer.clone(),
            dlq_subject: self.nats_dlq_subject.clone(),
            max_deliver: self.nats_max_deliver,
            trust_unsigned: self.nats_trust_unsigned,
            replay_window: self.replay_window(),
            ..NatsSettings::new(url)
        })
    }

    pub fn replay_window(&self) -> Duration {
        Duration::from_secs(self.webhook_replay_window_s)
    }

    /// Checks what no type expresses.
    ///
    /// # Errors
    /// One line naming the offending setting.
    pub fn check(&self) -> anyhow::Result<()> {
        if self.nats_max_deliver < 1 {
            bail!("invalid USEREXPORT_NATS_MAX_DELIVER: must be at least 1");
        }
        if self.nats_subject == self.nats_dlq_subject {
            bail!("invalid USEREXPORT_NATS_DLQ_SUBJECT: must differ from USEREXPORT_NATS_SUBJECT");
        }
        if self.webhook_replay_window_s == 0 {
            bail!("invalid USEREXPORT_WEBHOOK_REPLAY_WINDOW_S: must be at least 1");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_url_means_no_consumer_and_a_url_keeps_the_other_settings() {
        let args = EventArgs::default();
        assert!(args.nats_settings().is_none());
        assert!(
            EventArgs { nats_url: Some("  ".to_owned()), ..EventArgs::default() }.nats_settings().is_none()
        );
        let args = EventArgs {
            nats_url: Some("nats://127.0.0.1:4222".to_owned()),
            nats_max_deliver: 3,
            ..EventArgs::default()
        };
        let settings = args.nats_settings().map(|s| (s.url, s.stream, s.max_deliver, s.trust_unsigned));
        assert_eq!(
            settings,
            Some(("nats://127.0.0.1:4222".to_owned(), "USEREXPORT_EVENTS".to_owned(), 3, false)),
            "events must be signed unless trusting unsigned ones is asked for"
        );
        assert_eq!(args.replay_window(), Duration::from_secs(300));
    }

    #[test]
    fn an_invalid_setting_is_named() {
        let base = EventArgs::default();
        assert!(base.check().is_ok());
        let cases = [
            (EventArgs { nats_max_deliver: 0, ..base.clone() }, "USEREXPORT_NATS_MAX_DELIVER"),
            (
                EventArgs { nats_dlq_subject: base.nats_subject.clone(), ..base.clone() },
                "USEREXPORT_NATS_DLQ_SUBJECT",
            ),
            (EventArgs { webhook_replay_window_s: 0, ..base.clone() }, "USEREXPORT_WEBHOOK_REPLAY_WINDOW_S"),
        ];
        for (args, setting) in cases {
            let err = args.check().err().map(|e| e.to_string()).unwrap_or_default();
            assert!(err.contains(setting), "{setting}: {err}");
        }
    }
}
