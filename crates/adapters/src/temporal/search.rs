//! Finding export workflows: the search attributes every export workflow carries
//! (`UserexportTenant`, `UserexportFormat`, `UserexportOrigin`, all keywords), the memo with its
//! request summary, and [`ensure_search_attributes`], which registers the attributes in the
//! namespace when it lacks them (the worker calls it at start-up).
//!
//! `temporal workflow list --query "UserexportTenant='acme/prod'"` lists a scope's exports.

use std::collections::HashMap;

use anyhow::Context;
use domain::ExportOrigin;
use serde_json::{Map, Value};
use temporalio_client::tonic::{Code, IntoRequest, Status};
use temporalio_client::{Client, NamespacedClient};
use temporalio_common::MemoValues;
use temporalio_common::protos::temporal::api::common::v1::{Memo, Payload};
use temporalio_common::protos::temporal::api::enums::v1::IndexedValueType;
use temporalio_common::protos::temporal::api::operatorservice::v1::{
    AddSearchAttributesRequest, ListSearchAttributesRequest,
};
use temporalio_common::search_attributes::{SearchAttributeKey, SearchAttributes};
use tracing::{info, warn};

use super::orchestrator::RPC_TIMEOUT;

/// The export's scope as `tenant/environment` (`acme/prod`): one value finds one scope;
/// `STARTS_WITH 'acme/'` finds a tenant's.
pub const TENANT_ATTRIBUTE: SearchAttributeKey<String> = SearchAttributeKey::keyword("UserexportTenant");
/// The requested format (`csv`, `ndjson`...).
pub const FORMAT_ATTRIBUTE: SearchAttributeKey<String> = SearchAttributeKey::keyword("UserexportFormat");
/// Who asked: `api`, `schedule`, `event`, `batch` or `cli` ([`ExportOrigin`]).
pub const ORIGIN_ATTRIBUTE: SearchAttributeKey<String> = SearchAttributeKey::keyword("UserexportOrigin");

/// The request fields the memo keeps: what was asked for, never where results go (no
/// `notify_email`, no callback) and nothing secret.
const MEMO_FIELDS: [&str; 5] = ["format", "compression", "fields", "user_filters", "limit"];

/// The search attributes of an export workflow. `scope` is `tenant/environment`; `format` is
/// left out when the request has none (it fails validation anyway).
pub fn export_search_attributes(scope: &str, format: Option<&str>, origin: ExportOrigin) -> SearchAttributes {
    let mut updates = vec![
        TENANT_ATTRIBUTE.value_set(scope.to_owned()),
        ORIGIN_ATTRIBUTE.value_set(origin.as_str().to_owned()),
    ];
    if let Some(format) = format {
        updates.push(FORMAT_ATTRIBUTE.value_set(format.to_owned()));
    }
    SearchAttributes::new(updates)
}

/// The request's format, as the workflow input carries it.
pub fn request_format(request: &Map<String, Value>) -> Option<&str> {
    request.get("format").and_then(Value::as_str)
}

/// The memo's fields: the summary of `request` ([`MEMO_FIELDS`] that are present).
pub fn request_summary(request: &Map<String, Value>) -> Vec<(&'static str, Value)> {
    MEMO_FIELDS.iter().filter_map(|key| Some((*key, request.get(*key)?.clone()))).collect()
}

/// The memo of a workflow started through the client.
pub fn export_memo(request: &Map<String, Value>) -> MemoValues {
    let mut memo = MemoValues::new();
    for (key, value) in request_summary(request) {
        memo.insert(key, value);
    }
    memo
}

/// The same memo as a proto, for a schedule's action (which the SDK's action type cannot carry).
pub fn export_memo_proto(request: &Map<String, Value>) -> Memo {
    Memo {
        fields: request_summary(request).into_iter().map(|(k, v)| (k.to_owned(), json_payload(&v))).collect(),
    }
}

/// `value` as the default data converter encodes it (`json/plain`), so every client reads it.
pub fn json_payload(value: &Value) -> Payload {
    Payload {
        metadata: HashMap::from([("encoding".to_owned(), b"json/plain".to_vec())]),
        data: serde_json::to_vec(value).unwrap_or_default(),
        ..Payload::default()
    }
}

/// What [`ensure_search_attributes`] found or did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SearchAttributeRegistration {
    /// The namespace already had every attribute.
    Present,
    /// These were added.
    Added(Vec<String>),
    /// The server refused to add these (Temporal Cloud, or a namespace without admin rights):
    /// workflows started with them fail to start until an operator adds them.
    Refused { missing: Vec<String>, reason: String },
}

/// Registers the export search attributes (keywords) that the client's namespace lacks, through
/// the operator service. A dev server or a self-hosted cluster accepts it; Temporal Cloud does
/// not (attributes are added in its UI or with `tcld`), and a refusal is a warning, not an
/// error, so a worker still starts.
///
/// # Errors
/// When the server cannot be reached or answers otherwise than with a refusal.
pub async fn ensure_search_attributes(client: &Client) -> anyhow::Result<SearchAttributeRegistration> {
    let namespace = client.namespace();
    let missing = match missing_attributes(client).await {
        Ok(missing) => missing,
        Err(status) if refused(status.code()) => {
            let reason = format!("listing search attributes: {}", status.message());
            return Ok(refusal(all_names(), reason));
        }
        Err(status) => {
            return Err(anyhow::Error::from(status)).context("listing the namespace's search attributes");
        }
    };
    if missing.is_empty() {
        return Ok(SearchAttributeRegistration::Present);
    }
    let search_attributes =
        missing.iter().map(|name| (name.clone(), IndexedValueType::Keyword as i32)).collect();
    let mut request =
        AddSearchAttributesRequest { search_attributes, namespace: namespace.clone() }.into_request();
    request.set_timeout(RPC_TIMEOUT * 6);
    let added = client.connection().operator_service().add_search_attributes(request).await;
    match added {
        Ok(_) => {
            info!(namespace, added = ?missing, "search attributes registered");
            Ok(SearchAttributeRegistration::Added(missing))
        }
        Err(status) if refused(status.code()) => Ok(refusal(missing, status.message().to_owned())),
        // Another worker may have added them meanwhile (`AlreadyExists`, or a conflict).
        Err(status) => match missing_attributes(client).await {
            Ok(still) if still.is_empty() => Ok(SearchAttributeRegistration::Present),
            _ => Err(anyhow::Error::from(status)).context("adding search attributes"),
        },
    }
}

/// The export attributes the namespace does not have.
async fn missing_attributes(client: &Client) -> Result<Vec<String>, Status> {
    let mut request = ListSearchAttributesRequest { namespace: client.namespace() }.into_request();
    request.set_timeout(RPC_TIMEOUT);
    let known = client.connection().operator_service().list_search_attributes(request).await?.into_inner();
    Ok(all_names().into_iter().filter(|name| !known.custom_attributes.contains_key(name)).collect())
}

fn all_names() -> Vec<String> {
    [TENANT_ATTRIBUTE.name(), FORMAT_ATTRIBUTE.name(), ORIGIN_ATTRIBUTE.name()].map(str::to_owned).to_vec()
}

fn refused(code: Code) -> bool {
    matches!(code, Code::PermissionDenied | Code::Unauthenticated | Code::Unimplemented)
}

fn refusal(missing: Vec<String>, reason: String) -> SearchAttributeRegistration {
    warn!(missing = ?missing, reason,
          "cannot register the export search attributes; add them as Keyword attributes in the Temporal \
           Cloud UI or with `tcld namespace search-attributes add` (see README, Operating): until then \
           export workflows cannot start");
    SearchAttributeRegistration::Refused { missing, reason }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use serde_json::json;

    use super::*;

    #[test]
    fn the_memo_keeps_the_request_summary_and_no_recipient() {
        let request = json!({"format": "csv", "compression": "gzip", "fields": ["id"], "limit": 3,
            "user_filters": {"email_domain": "example.com"}, "email_notify": true,
            "notify_email": "ops@example.com"});
        let summary = request_summary(request.as_object().unwrap());
        let keys: Vec<_> = summary.iter().map(|(k, _)| *k).collect();
        assert_eq!(keys, ["format", "compression", "fields", "user_filters", "limit"]);
        assert!(!format!("{summary:?}").contains("ops@"), "no email address in the memo");
    }

    #[test]
    fn every_export_carries_scope_origin_and_format() {
        let attributes = export_search_attributes("acme/prod", Some("csv"), ExportOrigin::Schedule);
        assert_eq!(attributes.get(&TENANT_ATTRIBUTE).as_deref(), Some("acme/prod"));
        assert_eq!(attributes.get(&ORIGIN_ATTRIBUTE).as_deref(), Some("schedule"));
        assert_eq!(attributes.get(&FORMAT_ATTRIBUTE).as_deref(), Some("csv"));
        assert!(!export_search_attributes("a/b", None, ExportOrigin::Api).contains_key(&FORMAT_ATTRIBUTE));
    }
}
