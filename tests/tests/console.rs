//! The web console in a real browser: headless Chromium driven over WebDriver against the real
//! `userexport` binary. A tenant signs in, starts an export and watches its bar reach 100 %,
//! downloads it (checksum verified in the page, the file on disk equal to the API's) and reads
//! its first rows; forms show the API's validation errors next to their fields; schedules are
//! previewed, created, paused, resumed, run and deleted; an operator follows a batch per
//! tenant; and values from data (a user's name, a schedule's note) appear as text, never as
//! markup. No test may leave an error in the browser's console.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod browser;
mod common;

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use browser::{ACME_KEY, Api, Browser, OPERATOR_KEY, PATIENCE};
use serde_json::json;
use sha2::{Digest, Sha256};

/// What the browser console may show in a test that provokes answers: the failed requests.
const PROVOKED_422: &str = "status of 422";

async fn sign_in(browser: &Browser, api: &Api, key: &str) -> Result<()> {
    browser.goto(&format!("{}/console", api.base)).await?;
    let input = browser.find("#signin-key").await?;
    // The keyboard path: type the key, press Enter.
    input.send_keys(&format!("{key}\u{E007}")).await?;
    browser.find("#who:not([hidden])").await?;
    ensure!(browser.js("return sessionStorage.length", vec![]).await? != json!(0), "the key is kept");
    let url = browser.client.current_url().await?;
    ensure!(!url.as_str().contains(key), "the key must never be in the URL: {url}");
    Ok(())
}

/// Starts an export with the form's defaults; returns its ID, from its card.
async fn start_default_export(browser: &Browser) -> Result<String> {
    browser.click("#export-new").await?;
    browser.click("#export-create [type=submit]").await?;
    let card = browser.find("li.export").await?;
    card.attr("data-id").await?.context("the card names its export")
}

/// The status and progress value of the export card `id`.
async fn card_state(browser: &Browser, id: &str) -> Result<(String, Option<f64>)> {
    let state = browser
        .js(
            "const card = document.querySelector(`li.export[data-id=\"${arguments[0]}\"]`);
             const bar = card.querySelector('progress');
             return [card.dataset.status, bar.hasAttribute('value') ? bar.value : null];",
            vec![json!(id)],
        )
        .await?;
    Ok((state[0].as_str().unwrap_or_default().to_owned(), state[1].as_f64()))
}

#[tokio::test]
async fn a_tenant_follows_an_export_to_100_percent_downloads_it_and_reads_its_first_rows() {
    let api = Api::start(&[("USEREXPORT_DEMO_USERS", "150000")]).await;
    let browser = Browser::start("tenant-export").await;
    let outcome = async {
        sign_in(&browser, &api, ACME_KEY).await?;
        let id = start_default_export(&browser).await?;

        // Follow the bar: it moves with the API's progress and ends full.
        let mut seen = Vec::new();
        let started = Instant::now();
        loop {
            let state = card_state(&browser, &id).await?;
            if seen.last() != Some(&state) {
                seen.push(state.clone());
            }
            if state.0 == "completed" {
                break;
            }
            ensure!(!matches!(state.0.as_str(), "failed" | "cancelled"), "the export ended {state:?}");
            ensure!(started.elapsed() < Duration::from_secs(180), "not completed in time: {seen:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        eprintln!("the bar went through {seen:?}");
        ensure!(
            seen.len() > 1 && seen[0].0 != "completed",
            "the card must show the export unfinished first: {seen:?}"
        );
        ensure!(seen.last().and_then(|s| s.1) == Some(100.0), "the bar ends at 100: {seen:?}");
        let line = browser.text(&format!("li.export[data-id=\"{id}\"] .progress-line")).await?;
        ensure!(line.contains("100 %") && line.contains("150,000 of 150,000 rows"), "{line}");
        let facts = browser.text(&format!("li.export[data-id=\"{id}\"] .facts")).await?;
        ensure!(
            facts.contains("150,000 rows") && facts.contains("MB"),
            "sizes and counts are human: {facts}"
        );

        // Download: checked in the page, saved to disk, equal to what the API serves.
        browser.click(&format!("li.export[data-id=\"{id}\"] [data-action=download]")).await?;
        let report = browser
            .wait_for_text(&format!("li.export[data-id=\"{id}\"] .report"), "SHA-256 verified")
            .await?;
        let name = format!("export-{id}.csv");
        ensure!(report.contains(&name), "{report}");
        let path = browser.downloads.path().join(&name);
        browser
            .wait_until("the downloaded file", PATIENCE, || {
                let path = path.clone();
                async move { Ok(path.is_file()) }
            })
            .await?;
        let saved = std::fs::read(&path)?;
        let export = api.get(ACME_KEY, &format!("/v1/exports/{id}")).await;
        ensure!(
            hex::encode(Sha256::digest(&saved)) == export["sha256"].as_str().unwrap(),
            "the saved file's SHA-256"
        );
        ensure!(saved.len() as u64 == export["bytes"].as_u64().unwrap(), "the saved file's size");

        // The first rows, as a table.
        browser.click(&format!("li.export[data-id=\"{id}\"] [data-action=preview]")).await?;
        browser.find(".preview table tbody tr").await?;
        ensure!(browser.count(".preview tbody tr").await? == 20, "twenty rows shown");
        let header = browser.text(".preview thead").await?;
        ensure!(header.contains("email") && header.contains("metadata"), "{header}");
        let rows = browser.text(".preview tbody").await?;
        ensure!(rows.contains("User ") && rows.contains("@example."), "{rows}");

        if let Ok(target) = std::env::var("USEREXPORT_CONSOLE_SCREENSHOT") {
            std::fs::write(&target, browser.client.screenshot().await?)?;
            eprintln!("saved the console's screenshot to {target}");
        }

        // At phone width the page reflows: nothing wider than the screen.
        browser.client.set_window_size(390, 844).await?;
        let overflow =
            browser.js("return document.documentElement.scrollWidth - window.innerWidth", vec![]).await?;
        ensure!(overflow.as_f64().is_some_and(|o| o <= 0.0), "horizontal overflow at 390 px: {overflow}");
        browser.assert_clean_console(&[]).await
    }
    .await;
    browser.finish(outcome).await;
}

#[tokio::test]
async fn with_s3_storage_the_file_is_saved_from_its_signed_link() {
    let bucket = format!("uex-console-{}", std::process::id());
    common::create_bucket(&bucket).await;
    let endpoint = common::s3_endpoint();
    let api = Api::start(&[
        ("USEREXPORT_DEMO_USERS", "2000"),
        ("USEREXPORT_STORAGE", "s3"),
        ("USEREXPORT_S3_BUCKET", &bucket),
        ("AWS_ENDPOINT_URL", &endpoint),
        ("AWS_REGION", "us-east-1"),
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
    ])
    .await;
    let browser = Browser::start("s3-download").await;
    let outcome = async {
        sign_in(&browser, &api, ACME_KEY).await?;
        let id = start_default_export(&browser).await?;
        browser.find(&format!("li.export[data-id=\"{id}\"][data-status=completed]")).await?;
        let export = api.get(ACME_KEY, &format!("/v1/exports/{id}")).await;

        // The page may not read the storage's origin; the browser fetches the signed link itself.
        browser.click(&format!("li.export[data-id=\"{id}\"] [data-action=download]")).await?;
        let report = browser
            .wait_for_text(&format!("li.export[data-id=\"{id}\"] .report"), "from the storage")
            .await?;
        let sha256 = export["sha256"].as_str().unwrap();
        ensure!(report.contains(&format!("export-{id}.csv")) && report.contains(sha256), "{report}");
        // Saved under the storage's name for it (a finished download: no `.crdownload` left).
        let downloads = browser.downloads.path().to_owned();
        let saved_csv = move || -> Result<Option<std::path::PathBuf>> {
            Ok(std::fs::read_dir(&downloads)?
                .filter_map(|entry| entry.ok().map(|e| e.path()))
                .find(|path| path.extension().is_some_and(|ext| ext == "csv")))
        };
        browser
            .wait_until("the file saved from the storage", PATIENCE, || {
                let found = saved_csv().map(|path| path.is_some());
                async move { found }
            })
            .await?;
        let saved = saved_csv()?.context("the saved file")?;
        let bytes = std::fs::read(&saved)?;
        ensure!(
            hex::encode(Sha256::digest(&bytes)) == sha256,
            "the saved file's SHA-256 ({})",
            saved.display()
        );
        ensure!(browser.client.current_url().await?.path() == "/console", "the console stayed open");
        browser.assert_clean_console(&[]).await
    }
    .await;
    browser.finish(outcome).await;
}

#[tokio::test]
async fn forms_show_validation_errors_next_to_their_fields_and_schedules_are_managed() {
    let api = Api::start(&[]).await;
    let browser = Browser::start("forms-and-schedules").await;
    let outcome = async {
        sign_in(&browser, &api, ACME_KEY).await?;
        browser.click("#export-new").await?;
        let form = "#export-create";
        browser.type_into(&format!("{form} [data-name=notify_email]"), "root@localhost").await?;
        browser.type_into(&format!("{form} [data-name=email_domain]"), "not a domain!").await?;
        browser.click(&format!("{form} [type=submit]")).await?;
        for field in ["notify_email", "user_filters.email_domain"] {
            let error = format!("{form} .field[data-field=\"{field}\"] .field-error");
            browser
                .wait_until(&format!("an error next to {field}"), PATIENCE, || {
                    let text = browser.text(&error);
                    async move { Ok(!text.await?.is_empty()) }
                })
                .await?;
            let invalid = format!("{form} .field[data-field=\"{field}\"] input[aria-invalid=true]");
            ensure!(browser.count(&invalid).await? >= 1, "{field}'s input is marked invalid");
        }
        ensure!(browser.count("li.export").await? == 0, "nothing was started");
        // Corrected, the same form starts the export.
        browser.type_into(&format!("{form} [data-name=notify_email]"), "admin@acme.example.org").await?;
        browser.find(&format!("{form} [data-name=email_domain]")).await?.clear().await?;
        browser.click(&format!("{form} [type=submit]")).await?;
        browser.find("li.export").await?;
        ensure!(
            browser.text(&format!("{form} .field[data-field=notify_email] .field-error")).await?.is_empty(),
            "errors cleared"
        );

        // Schedules: a cron the API refuses, then one it previews.
        browser.click("#nav [data-view=schedules]").await?;
        browser.click("#schedule-new").await?;
        browser.type_into("#schedule-cron", "0 25 * * *").await?;
        browser.wait_for_text(".field[data-field=cron] .field-error", "hour").await?;
        browser.type_into("#schedule-cron", "0 3 * * MON-FRI").await?;
        browser.type_into("#schedule-timezone", "Europe/Paris").await?;
        browser
            .wait_until("five previewed fires", PATIENCE, || {
                let n = browser.count("#schedule-preview li");
                async move { Ok(n.await? == 5) }
            })
            .await?;
        ensure!(
            browser.text(".field[data-field=cron] .field-error").await?.is_empty(),
            "the cron error is gone"
        );
        let first = browser.text("#schedule-preview li").await?;
        ensure!(first.contains("3:00") || first.contains("03:00"), "fires at 03:00 Paris time: {first}");
        // A field of the export request inside the schedule form.
        browser.type_into("#schedule-create [data-name=notify_email]", "root@localhost").await?;
        browser.type_into("#schedule-note", "nightly").await?;
        browser.click("#schedule-create [type=submit]").await?;
        browser
            .wait_until("the request's notify_email error", PATIENCE, || {
                let text =
                    browser.text("#schedule-create .field[data-field=\"request.notify_email\"] .field-error");
                async move { Ok(!text.await?.is_empty()) }
            })
            .await?;
        browser.find("#schedule-create [data-name=notify_email]").await?.clear().await?;
        browser.click("#schedule-create [type=submit]").await?;
        let card = "li.schedule";
        browser.wait_for_text(&format!("{card} .badge"), "active").await?;
        ensure!(browser.text(&format!("{card} .cron")).await? == "0 3 * * MON-FRI", "the cron is shown");
        browser.click(&format!("{card} [data-action=pause]")).await?;
        browser.wait_for_text(&format!("{card} .badge"), "paused").await?;
        browser.click(&format!("{card} [data-action=resume]")).await?;
        browser.wait_for_text(&format!("{card} .badge"), "active").await?;
        browser.click(&format!("{card} [data-action=trigger]")).await?;
        browser.wait_for_text(&format!("{card} .report"), "Started export").await?;
        browser.click(&format!("{card} [data-action=delete]")).await?;
        browser.wait_for_text(&format!("{card} [data-action=delete]"), "Confirm").await?;
        browser.click(&format!("{card} [data-action=delete]")).await?;
        browser
            .wait_until("the schedule to go", PATIENCE, || {
                let n = browser.count(card);
                async move { Ok(n.await? == 0) }
            })
            .await?;
        browser.assert_clean_console(&[PROVOKED_422]).await
    }
    .await;
    browser.finish(outcome).await;
}

#[tokio::test]
async fn an_operator_starts_a_batch_and_follows_each_tenants_result() {
    let api = Api::start(&[]).await;
    let browser = Browser::start("operator-batch").await;
    let outcome = async {
        sign_in(&browser, &api, OPERATOR_KEY).await?;
        ensure!(browser.text("#who-label").await?.starts_with("Operator"), "signed in as an operator");
        browser.find("#view-batches:not([hidden])").await?;
        ensure!(browser.count("#nav [data-view=exports]:not([hidden])").await? == 0, "no tenant sections");
        browser.click("#batch-new").await?;
        browser.click("#batch-create input[value=list]").await?;
        browser.type_into("#batch-targets", "acme/prod\nnobody/prod").await?;
        browser.click("#batch-create [type=submit]").await?;
        browser
            .wait_until("an error next to the targets", PATIENCE, || {
                let text = browser.text("#batch-create .field[data-field=targets] .field-error");
                async move { Ok(text.await?.contains("nobody")) }
            })
            .await?;
        browser.click("#batch-create input[value=all]").await?;
        browser.click("#batch-create [type=submit]").await?;
        browser.wait_for_text("li.batch .card-head .badge", "finished").await?;
        for scope in ["acme/prod", "globex/prod"] {
            let row = format!("li.batch tr[data-tenant=\"{scope}\"]");
            browser.wait_for_text(&row, "completed").await?;
        }
        let counts = browser.text("li.batch .progress-line").await?;
        ensure!(counts.contains("2 of 2 finished"), "{counts}");
        // A tenant's key cannot reach the batch routes: the probe and the tenant's list answered.
        browser.assert_clean_console(&[PROVOKED_422, "status of 401", "status of 404"]).await
    }
    .await;
    browser.finish(outcome).await;
}

/// Needs PostgreSQL (`TEST_DATABASE_URL`): user records hold what the test writes.
#[tokio::test]
async fn values_from_data_are_shown_as_text_never_as_markup() {
    let hostile = "<img src=x onerror=alert(1)>";
    let db = common::TestDb::create("console");
    let api = Api::start(&[("USEREXPORT_USERS", "postgres"), ("DATABASE_URL", db.url.as_str())]).await;
    let escaped = hostile.replace('\'', "''");
    common::psql(
        &db.url,
        &format!(
            "INSERT INTO users VALUES
           ('acme', 'prod', gen_random_uuid(), 'mallory@example.com', '{escaped}', 'active', now(), now(),
            '{{\"bio\": \"<script>alert(2)</script>\"}}'),
           ('acme', 'prod', gen_random_uuid(), 'alice@example.com', 'Alice', 'active', now(), now(), '{{}}')"
        ),
    );
    let schedule = reqwest::Client::new()
        .post(format!("{}/v1/export-schedules", api.base))
        .bearer_auth(ACME_KEY)
        .json(&json!({"cron": "0 3 * * *", "note": hostile, "request": {"format": "csv"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(schedule.status(), 201);
    let browser = Browser::start("data-as-text").await;
    let outcome = async {
        sign_in(&browser, &api, ACME_KEY).await?;
        for format in ["csv", "ndjson"] {
            browser.click("#export-new").await?;
            browser.find("#export-create [data-name=format]").await?.select_by_value(format).await?;
            browser.click("#export-create [type=submit]").await?;
            browser.wait_for_text("li.export:first-child .badge", "completed").await?;
            browser.click("li.export:first-child [data-action=preview]").await?;
            browser.find("li.export:first-child .preview tbody tr").await?;
            let cells = browser.js(
                "return [...document.querySelectorAll('li.export:first-child .preview td')].map(td => td.textContent)",
                vec![],
            ).await?;
            let cells: Vec<&str> = cells.as_array().unwrap().iter().filter_map(|c| c.as_str()).collect();
            ensure!(cells.contains(&hostile), "{format}: the name is shown as it is: {cells:?}");
            ensure!(cells.iter().any(|c| c.contains("<script>alert(2)</script>")), "{format}: metadata as text: {cells:?}");
        }
        browser.click("#nav [data-view=schedules]").await?;
        let note = browser.wait_for_text("li.schedule .note", "onerror").await?;
        ensure!(note == hostile, "the note is shown as it is: {note:?}");
        ensure!(browser.count("img[src=x], script:not([src])").await? == 0, "no element was made from data");
        browser.assert_no_alert().await?;
        browser.assert_clean_console(&[]).await
    }
    .await;
    browser.finish(outcome).await;
}
