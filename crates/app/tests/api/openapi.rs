use std::collections::BTreeSet;

use http::StatusCode;
use serde_json::Value;

use crate::helpers::TestApp;

async fn document() -> Value {
    let app = TestApp::spawn().await;
    let response = app.get(None, "/openapi.json").await;
    assert_eq!(response.status, StatusCode::OK);
    response.json()
}

#[tokio::test]
async fn the_openapi_document_is_3_1_and_lists_every_route() {
    let doc = document().await;

    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"), "{}", doc["openapi"]);
    let operations: BTreeSet<String> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, item)| {
            item.as_object().unwrap().keys().map(move |method| format!("{method} {path}"))
        })
        .collect();
    let expected: BTreeSet<String> = [
        "post /v1/exports",
        "get /v1/exports",
        "post /v1/exports/sync",
        "get /v1/exports/{id}",
        "get /v1/exports/{id}/download",
        "get /v1/exports/{id}/download-link",
        "post /v1/exports/{id}/cancel",
        "post /v1/events/export-requested",
        "post /v1/exports/batch",
        "get /v1/exports/batch/{id}",
        "post /v1/export-schedules",
        "get /v1/export-schedules",
        "get /v1/export-schedules/{id}",
        "patch /v1/export-schedules/{id}",
        "delete /v1/export-schedules/{id}",
        "post /v1/export-schedules/{id}/trigger",
        "post /v1/export-schedules/preview",
        "get /healthz",
        "get /readyz",
        "get /openapi.json",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    assert_eq!(operations, expected);
    for schema in ["BatchResource", "CreateBatchRequest", "BatchTargetBody"] {
        assert!(doc["components"]["schemas"][schema].is_object(), "schema {schema} is missing");
    }
}

#[tokio::test]
async fn the_openapi_document_describes_bearer_auth_and_problem_responses() {
    let doc = document().await;

    assert_eq!(doc["components"]["securitySchemes"]["bearer"]["scheme"], "bearer");
    assert_eq!(doc["components"]["securitySchemes"]["bearer"]["type"], "http");
    let problem = &doc["components"]["schemas"]["Problem"];
    for field in ["type", "title", "status", "detail", "hint", "errors"] {
        assert!(problem["properties"].get(field).is_some(), "Problem lacks {field}");
    }
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            let responses = operation["responses"].as_object().unwrap();
            if path.starts_with("/v1/") {
                for status in ["401", "500", "503"] {
                    assert!(responses.contains_key(status), "{method} {path} lacks {status}");
                }
            }
            for (status, response) in responses {
                if status.starts_with('4') || status.starts_with('5') {
                    let content = response["content"].as_object().unwrap();
                    assert!(content.contains_key("application/problem+json"), "{method} {path} {status}");
                }
            }
        }
    }
    let create = &doc["paths"]["/v1/exports"]["post"];
    for status in ["200", "202", "400", "413", "422"] {
        assert!(create["responses"].get(status).is_some(), "POST /v1/exports lacks {status}");
    }
    let download = &doc["paths"]["/v1/exports/{id}/download"]["get"]["responses"];
    for status in ["200", "307", "404", "409", "410"] {
        assert!(download.get(status).is_some(), "download lacks {status}");
    }
    assert!(doc["paths"]["/v1/exports/{id}/cancel"]["post"]["responses"].get("409").is_some());
}
