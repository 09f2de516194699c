use async_trait::async_trait;
use domain::{Scope, User, UserFilter, UserId};
use futures::stream::BoxStream;

use crate::PortError;

/// A stream of users; it owns what it needs, so it can outlive the call that made it.
pub type UserStream = BoxStream<'static, Result<User, PortError>>;

/// Where the users to export come from.
#[cfg_attr(feature = "mocks", mockall::automock)]
#[async_trait]
pub trait UserRepository: Send + Sync {
    /// Streams the users of `scope` that match `filter` and whose `id` is greater than `after`
    /// (a resumed export's keyset position), in ascending `id` order, at most `limit` of them. Users of any other scope are never yielded. Implementations page with keysets
    /// (`id > last`) or a server-side cursor, never `OFFSET`, and never hold the whole result in
    /// memory, so the stream is stable and cheap at any size.
    ///
    /// # Errors
    /// Items are `Err(PortError::Unavailable)` when the store becomes unreachable mid-stream.
    fn stream(
        &self,
        scope: &Scope,
        filter: &UserFilter,
        after: Option<UserId>,
        limit: Option<u64>,
    ) -> UserStream;

    /// How many users `stream` would yield without a limit (for progress reporting).
    async fn count(&self, scope: &Scope, filter: &UserFilter) -> Result<u64, PortError>;

    /// Checks that the store is reachable (for readiness).
    async fn ping(&self) -> Result<(), PortError>;
}
