/// Failure of an infrastructure dependency, already translated by the adapter: no driver,
/// SDK or HTTP-client type crosses a port.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PortError {
    /// The dependency is unreachable or overloaded; the same call may succeed later.
    #[error("dependency unavailable: {0:#}")]
    Unavailable(#[source] anyhow::Error),
    /// The call was cancelled by its caller.
    #[error("cancelled")]
    Cancelled,
    /// Anything else; retrying the same call is not expected to help.
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

impl PortError {
    pub fn unavailable(err: impl Into<anyhow::Error>) -> Self {
        Self::Unavailable(err.into())
    }

    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }
}
