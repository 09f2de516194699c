//! The API's use cases. Each has its own error enum; the HTTP layer maps them in one place.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use domain::{
    Export, ExportId, ExportOrigin, ExportSpec, ExportStatus, IdempotencyKey, Quota, QuotaBook,
    RetentionPolicy, Scope, TenantDirectory, ValidationErrors,
};
use ports::{
    ExportPage, ExportQuery, ExportRepository, ExportStorage, ObjectReader, Orchestrator, PortError,
    QuotaCreateOutcome, WaitOutcome,
};
use tracing::{info, warn};
use url::Url;
use uuid::Uuid;

use crate::runner::{ExportRunner, RunError};

#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// The request breaks a limit of this deployment (e.g. a retention above the cap).
    #[error("{0}")]
    Invalid(ValidationErrors),
    /// The idempotency key was used before with a different request.
    #[error("idempotency key {key:?} was already used for a different request (export {existing})")]
    IdempotencyMismatch { key: String, existing: ExportId },
    /// The tenant scope is at one of its quotas (`max_unfinished`): nothing was stored.
    #[error("the tenant already has {limit} unfinished exports ({quota})")]
    QuotaExceeded { quota: Quota, limit: u32 },
    #[error(transparent)]
    Port(#[from] PortError),
    #[error(transparent)]
    Unknown(#[from] anyhow::Error),
}

#[derive(Debug, thiserror::Error)]
pub enum GetError {
    #[error("export not found")]
    NotFound,
    #[error(transparent)]
    Port(#[from] PortError),
    #[error(transparent)]
    Unknown(#[from] anyhow::Error),
}

#[derive(Debug, thiserror::Error)]
pub enum ListError {
    #[error(transparent)]
    Port(#[from] PortError),
    #[error(transparent)]
    Unknown(#[from] anyhow::Error),
}

#[derive(Debug, thiserror::Error)]
pub enum CancelError {
    #[error("export not found")]
    NotFound,
    #[error("export already {0}")]
    AlreadyFinished(ExportStatus),
    #[error(transparent)]
    Port(#[from] PortError),
    #[error(transparent)]
    Unknown(#[from] anyhow::Error),
}

#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    #[error("export not found")]
    NotFound,
    #[error("export is {0}, not completed")]
    NotReady(ExportStatus),
    /// Retention deleted the file.
    #[error("the export expired and its file was deleted")]
    Expired,
    /// The record says completed but the object is gone.
    #[error("the export's file is no longer available")]
    Gone,
    #[error(transparent)]
    Port(#[from] PortError),
    #[error(transparent)]
    Unknown(#[from] anyhow::Error),
}

/// A requested export and whether this request created it.
#[derive(Debug, Clone)]
pub struct Requested {
    pub export: Export,
    /// False when an idempotency key matched an earlier request.
    pub created: bool,
}

#[derive(Debug)]
pub enum DownloadContent {
    /// A presigned URL to hand to the client.
    Redirect(Url),
    Stream(ObjectReader),
}

#[derive(Debug)]
pub struct Download {
    pub export: Export,
    pub content: DownloadContent,
}

/// A signed URL of an export's file and when it stops working.
#[derive(Debug)]
pub struct DownloadLink {
    pub export: Export,
    pub url: Url,
    pub expires_at: chrono::DateTime<Utc>,
}

/// The export use cases behind the API.
pub struct ExportService {
    exports: Arc<dyn ExportRepository>,
    storage: Arc<dyn ExportStorage>,
    orchestrator: Arc<dyn Orchestrator>,
    runner: Arc<ExportRunner>,
    signed_url_ttl: Duration,
    retention: RetentionPolicy,
    /// Per-tenant rules on requests (the domains `notify_email` may use).
    tenants: Arc<TenantDirectory>,
    quotas: Arc<QuotaBook>,
}

impl std::fmt::Debug for ExportService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExportService").finish_non_exhaustive()
    }
}

impl ExportService {
    pub fn new(
        exports: Arc<dyn ExportRepository>,
        storage: Arc<dyn ExportStorage>,
        orchestrator: Arc<dyn Orchestrator>,
        runner: Arc<ExportRunner>,
        signed_url_ttl: Duration,
    ) -> Self {
        Self {
            exports,
            storage,
            orchestrator,
            runner,
            signed_url_ttl,
            retention: RetentionPolicy::default(),
            tenants: Arc::default(),
            quotas: Arc::default(),
        }
    }

    /// Applies the tenants' request rules (`notify_domains`); without, only the address rules.
    #[must_use]
    pub fn with_tenants(mut self, tenants: Arc<TenantDirectory>) -> Self {
        self.tenants = tenants;
        self
    }

    /// Limits each tenant scope's unfinished exports to its `max_unfinished` (default 100).
    #[must_use]
    pub fn with_quotas(mut self, quotas: Arc<QuotaBook>) -> Self {
        self.quotas = quotas;
        self
    }

    /// Caps requested retention (`retention_days`) at `retention.max_days`.
    #[must_use]
    pub fn with_retention(mut self, retention: RetentionPolicy) -> Self {
        self.retention = retention;
        self
    }

    /// Accepts an export and starts it asynchronously (seed pattern 2). With an idempotency key,
    /// a repeat of the same request returns the existing export and a different request is an
    /// error. A scope at its `max_unfinished` quota gets `QuotaExceeded`, except for a repeat of
    /// a request it already made.
    pub async fn request(
        &self,
        scope: &Scope,
        spec: ExportSpec,
        idempotency_key: Option<IdempotencyKey>,
    ) -> Result<Requested, RequestError> {
        self.request_from(ExportOrigin::Api, scope, spec, idempotency_key).await
    }

    /// [`ExportService::request`] for a request that came through `origin` (an event, say),
    /// which the orchestrator records with the run.
    pub async fn request_from(
        &self,
        origin: ExportOrigin,
        scope: &Scope,
        spec: ExportSpec,
        idempotency_key: Option<IdempotencyKey>,
    ) -> Result<Requested, RequestError> {
        let mut invalid = ValidationErrors::new();
        invalid.absorb(self.retention.check(&spec));
        invalid.absorb(self.tenants.check_notify_email(scope, &spec));
        invalid.into_result(()).map_err(RequestError::Invalid)?;
        let id = match &idempotency_key {
            Some(key) => ExportId::for_idempotency_key(scope, key),
            // v7: time-ordered, so IDs sort like creation and index well.
            None => ExportId::from_uuid(Uuid::now_v7()),
        };
        let export = Export::new(id, scope.clone(), spec, idempotency_key, Utc::now());
        let limit = self.quotas.for_scope(scope).max_unfinished;
        match self.exports.create_within_quota(&export, limit).await? {
            QuotaCreateOutcome::QuotaExceeded { unfinished } => {
                info!(tenant = %scope.tenant, environment = %scope.environment, unfinished, limit,
                      "export refused: max_unfinished quota reached");
                Err(RequestError::QuotaExceeded { quota: Quota::MaxUnfinished, limit })
            }
            QuotaCreateOutcome::Created => {
                info!(export_id = %id, tenant = %scope.tenant, environment = %scope.environment,
                      workflow_id = %id.workflow_id(scope), format = export.spec.format.as_str(), "export accepted");
                self.orchestrator.start_from(&export, origin).await?;
                Ok(Requested { export, created: true })
            }
            QuotaCreateOutcome::Existing(existing) => {
                if existing.request_fingerprint != export.request_fingerprint {
                    let key = export.idempotency_key.map(String::from).unwrap_or_default();
                    return Err(RequestError::IdempotencyMismatch { key, existing: existing.id });
                }
                // The first request may have stored the record and died before starting it;
                // starting is idempotent, so make sure it runs.
                if existing.status() == ExportStatus::Pending {
                    self.orchestrator.start_from(&existing, origin).await?;
                }
                Ok(Requested { export: *existing, created: false })
            }
        }
    }

    /// Requests an export and waits for it at most `timeout` (seed pattern 1). The returned
    /// export may still be unfinished; the caller then answers with a pointer to poll.
    pub async fn request_and_wait(
        &self,
        scope: &Scope,
        spec: ExportSpec,
        idempotency_key: Option<IdempotencyKey>,
        timeout: Duration,
    ) -> Result<Requested, RequestError> {
        let requested = self.request(scope, spec, idempotency_key).await?;
        if requested.export.status().is_terminal() {
            return Ok(requested);
        }
        let id = requested.export.id;
        if self.orchestrator.wait(scope, id, timeout).await? == WaitOutcome::StillRunning {
            return Ok(requested);
        }
        let export = self.exports.get(scope, id).await?.unwrap_or(requested.export);
        Ok(Requested { export, created: requested.created })
    }

    pub async fn get(&self, scope: &Scope, id: ExportId) -> Result<Export, GetError> {
        self.exports.get(scope, id).await?.ok_or(GetError::NotFound)
    }

    pub async fn list(&self, scope: &Scope, query: &ExportQuery) -> Result<ExportPage, ListError> {
        Ok(self.exports.list(scope, query).await?)
    }

    /// Cancels an unfinished export. The record is marked `cancelled` before this returns, so a
    /// cancel that succeeds always ends `cancelled` with no object (an attempt that finishes its
    /// upload afterwards finds the record cancelled and deletes its object); an export that
    /// finished first is `AlreadyFinished` with its status.
    pub async fn cancel(&self, scope: &Scope, id: ExportId) -> Result<Export, CancelError> {
        let export = self.exports.get(scope, id).await?.ok_or(CancelError::NotFound)?;
        if export.status().is_terminal() {
            return Err(CancelError::AlreadyFinished(export.status()));
        }
        info!(export_id = %id, tenant = %scope.tenant, environment = %scope.environment, "export cancel requested");
        match self.runner.cancel_unfinished(scope, id).await {
            Err(RunError::Cancelled) => {}
            Ok(finished) => return Err(CancelError::AlreadyFinished(finished.status())),
            Err(RunError::NotFound) => return Err(CancelError::NotFound),
            Err(RunError::Store(err)) => return Err(err.into()),
            Err(err) => return Err(anyhow::Error::from(err).context("cancelling the record").into()),
        }
        let cancelled = self.exports.get(scope, id).await?.ok_or(CancelError::NotFound)?;
        // The running attempt would notice at its next progress write; this makes it stop now.
        if let Err(err) = self.orchestrator.cancel(&cancelled).await {
            warn!(export_id = %id, error = %err, "could not reach the run; it stops at its next progress write");
        }
        Ok(cancelled)
    }

    /// Where to fetch a completed export: a presigned URL when storage can sign, else a stream.
    pub async fn download(&self, scope: &Scope, id: ExportId) -> Result<Download, DownloadError> {
        let export = self.completed(scope, id).await?;
        // Signed afresh on every request: the record keeps the key, never a URL.
        if let Some(url) = self.storage.signed_url(&export.object_key, self.signed_url_ttl).await? {
            return Ok(Download { export, content: DownloadContent::Redirect(url) });
        }
        let reader = self.storage.open(&export.object_key).await?.ok_or(DownloadError::Gone)?;
        Ok(Download { export, content: DownloadContent::Stream(reader) })
    }

    /// The short-lived signed URL of a completed export's file, for a client that cannot follow
    /// the download's redirect itself (a page: the redirect goes to another origin). `None` when
    /// the storage cannot sign: the API streams such files, and only `download` serves them.
    ///
    /// # Errors
    /// As [`Self::download`].
    pub async fn download_link(
        &self,
        scope: &Scope,
        id: ExportId,
    ) -> Result<Option<DownloadLink>, DownloadError> {
        let export = self.completed(scope, id).await?;
        let Some(url) = self.storage.signed_url(&export.object_key, self.signed_url_ttl).await? else {
            return Ok(None);
        };
        Ok(Some(DownloadLink { expires_at: Utc::now() + self.signed_url_ttl, export, url }))
    }

    async fn completed(&self, scope: &Scope, id: ExportId) -> Result<Export, DownloadError> {
        let export = self.exports.get(scope, id).await?.ok_or(DownloadError::NotFound)?;
        match export.status() {
            ExportStatus::Completed => Ok(export),
            ExportStatus::Expired => Err(DownloadError::Expired),
            status => Err(DownloadError::NotReady(status)),
        }
    }
}
