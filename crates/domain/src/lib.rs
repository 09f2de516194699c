//! The pure core of userexport: validated types, the export state machine, streaming encoders and
//! naming schemes. No async runtime, no I/O: encoders write into buffers that the service moves.

pub mod batch;
pub mod callback;
pub mod checkpoint;
pub mod cursor;
pub mod email;
pub mod encode;
pub mod events;
pub mod export;
pub mod ids;
pub mod origin;
pub mod policy;
pub mod quotas;
pub mod request;
pub mod schedule;
pub mod schedule_preview;
pub mod schedule_rules;
pub mod secrets;
pub mod signature;
pub mod synthetic;
pub mod tenants;
pub mod user;
pub mod validation;

pub use batch::{Batch, BatchId, BatchRequest, BatchSummary, TargetResult, TargetSelection};
pub use callback::{
    CallbackData, CallbackError, CallbackEvent, CallbackEventType, CallbackUrl, CallbackUrlError,
    is_public_address,
};
pub use checkpoint::{
    CHECKPOINT_VERSION, Checkpoint, EncoderState, ResumableSha256, Sha256State, UploadCheckpoint,
    UploadLocation,
};
pub use cursor::{BadCursor, ListCursor};
pub use email::EmailError;
pub use events::{EventError, ExportRequested};
pub use export::{
    Export, ExportFailure, ExportOutcome, ExportParts, ExportStatus, FailureKind, IllegalTransition,
    NotificationRecord, NotificationStatus, Progress,
};
pub use ids::{EnvironmentId, ExportId, IdParseError, IdempotencyKey, ObjectKey, Scope, TenantId, UserId};
pub use origin::ExportOrigin;
pub use policy::{
    ExecutionPolicy, FailureClass, GiveUpReason, NextStep, PolicyError, RetentionPolicy, RetryPolicy,
};
pub use quotas::{Quota, QuotaBook, QuotaOverrides, TenantQuotas, fairness_key};
pub use request::{Compression, ExportFormat, ExportSpec, FieldSelection, UserFilter};
pub use schedule::{
    CronError, CronExpr, CronField, CronFieldError, ExportSchedule, NewSchedule, ScheduleId, SchedulePatch,
    ScheduleTimezone, UnknownTimezone,
};
pub use schedule_preview::CronPreview;
pub use schedule_rules::ScheduleRules;
pub use secrets::{MIN_SECRET_BITS, WeakSecret};
pub use tenants::{Secret, TenantDirectory, TenantSettings};
pub use user::{User, UserField, UserStatus};
pub use validation::{FieldError, ValidationErrors};
