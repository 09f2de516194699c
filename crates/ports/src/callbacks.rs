use async_trait::async_trait;
use domain::{Export, Scope};

use crate::PortError;

/// Delivers the signed callback of a finished export to its tenant's `callback_url`, the way
/// export APIs such as Stripe's notify their callers.
#[cfg_attr(feature = "mocks", mockall::automock)]
#[async_trait]
pub trait CallbackSender: Send + Sync {
    /// Whether `scope`'s tenant has a callback URL; nothing is delivered for one that has none.
    fn wants(&self, scope: &Scope) -> bool;

    /// POSTs one `export.completed` or `export.failed` event for the terminal `export`, signed
    /// with the webhook signature scheme and the tenant's secret. One try: the caller retries
    /// and records the outcome.
    ///
    /// # Errors
    /// `Unavailable` when a later try may succeed (connection failure, timeout, 408, 429, 5xx);
    /// `Other` when it cannot (the URL is not allowed, the address is private, another 4xx).
    async fn deliver(&self, export: &Export) -> Result<(), PortError>;
}
