//! [`ExportRepository`] contract. Each check uses fresh export IDs and scopes; the retention
//! check reads every scope, so each run needs its own store (a fresh database).

use std::collections::HashSet;
use std::sync::Arc;

use chrono::{DateTime, Duration, TimeDelta, TimeZone, Utc};
use domain::{
    Export, ExportFailure, ExportFormat, ExportId, ExportOutcome, ExportSpec, ExportStatus, FailureKind,
    NotificationRecord, NotificationStatus, Scope,
};
use ports::{CreateOutcome, ExportQuery, ExportRepository, QuotaCreateOutcome, UpdateOutcome};
use uuid::Uuid;

/// A fresh scope per run, so list checks see only their own exports.
fn fresh_scope() -> Scope {
    let tenant = format!("t{}", Uuid::new_v4().simple());
    Scope::parse(&format!("{}/prod", &tenant[..20])).unwrap()
}

fn new_export(scope: &Scope, age_s: i64) -> Export {
    let id = ExportId::from_uuid(Uuid::now_v7());
    Export::new(
        id,
        scope.clone(),
        ExportSpec::new(ExportFormat::Csv),
        None,
        Utc::now() - Duration::seconds(age_s),
    )
}

pub async fn run_all(repo: Arc<dyn ExportRepository>) {
    create_is_idempotent_and_keeps_the_first(repo.as_ref()).await;
    concurrent_creates_make_one_record(repo.clone()).await;
    get_is_scoped(repo.as_ref()).await;
    transitions_are_compare_and_set(repo.as_ref()).await;
    concurrent_transitions_have_one_winner(repo.clone()).await;
    list_is_newest_first_with_cursor_and_status(repo.as_ref()).await;
    unfinished_are_listed_for_recovery(repo.as_ref()).await;
    expired_are_listed_soonest_first_until_marked(repo.as_ref()).await;
    notifications_round_trip(repo.as_ref()).await;
    notify_due_are_listed_oldest_first_until_done(repo.as_ref()).await;
    // Last: they leave unfinished exports behind.
    admission_takes_the_oldest_waiting_within_the_limit(repo.clone()).await;
    the_unfinished_quota_holds_under_concurrent_creates(repo.clone()).await;
    repo.ping().await.unwrap();
}

async fn the_unfinished_quota_holds_under_concurrent_creates(repo: Arc<dyn ExportRepository>) {
    const LIMIT: u32 = 5;
    let scope = fresh_scope();
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let (repo, export) = (repo.clone(), new_export(&scope, 0));
            tokio::spawn(async move { repo.create_within_quota(&export, LIMIT).await.unwrap() })
        })
        .collect();
    let mut created = 0;
    for task in tasks {
        match task.await.unwrap() {
            QuotaCreateOutcome::Created => created += 1,
            QuotaCreateOutcome::QuotaExceeded { unfinished } => assert!(unfinished >= u64::from(LIMIT)),
            other => panic!("fresh IDs cannot exist: {other:?}"),
        }
    }
    assert_eq!(created, LIMIT, "concurrent creates took the scope past its quota");

    // At the limit: an existing ID is still found; another scope is not affected.
    let mut first = repo.list_unfinished().await.unwrap().into_iter().find(|e| e.scope == scope).unwrap();
    match repo.create_within_quota(&first, LIMIT).await.unwrap() {
        QuotaCreateOutcome::Existing(stored) => assert_eq!(stored.id, first.id),
        other => panic!("expected Existing, got {other:?}"),
    }
    let elsewhere = new_export(&fresh_scope(), 0);
    assert_eq!(repo.create_within_quota(&elsewhere, LIMIT).await.unwrap(), QuotaCreateOutcome::Created);

    // A finished export frees its place.
    let failure = ExportFailure::new(FailureKind::Internal, "done");
    first.fail(failure, Utc::now()).unwrap();
    assert_eq!(repo.update_if_status(&first, ExportStatus::Pending).await.unwrap(), UpdateOutcome::Updated);
    let next = new_export(&scope, 0);
    assert_eq!(repo.create_within_quota(&next, LIMIT).await.unwrap(), QuotaCreateOutcome::Created);
    let over = new_export(&scope, 0);
    assert!(matches!(
        repo.create_within_quota(&over, LIMIT).await.unwrap(),
        QuotaCreateOutcome::QuotaExceeded { .. }
    ));
}

async fn admission_takes_the_oldest_waiting_within_the_limit(repo: Arc<dyn ExportRepository>) {
    const LIMIT: u32 = 3;
    let scope = fresh_scope();
    // One export of the scope already has a run (a workflow that created its own record).
    let mut running = new_export(&scope, 100);
    running.mark_admitted(Utc::now());
    assert_eq!(repo.create_if_absent(&running).await.unwrap(), CreateOutcome::Created);
    let mut waiting = Vec::new();
    for age_s in [60, 50, 40, 30, 20, 10] {
        let export = new_export(&scope, age_s);
        assert_eq!(repo.create_if_absent(&export).await.unwrap(), CreateOutcome::Created);
        waiting.push(export);
    }
    let other_scope = new_export(&fresh_scope(), 70);
    repo.create_if_absent(&other_scope).await.unwrap();

    // Concurrent admissions fill the room once, with the oldest, each admitted once.
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let (repo, scope) = (repo.clone(), scope.clone());
            tokio::spawn(async move { repo.admit_waiting(&scope, LIMIT, Utc::now()).await.unwrap() })
        })
        .collect();
    let mut admitted = Vec::new();
    for task in tasks {
        let batch = task.await.unwrap();
        assert!(batch.iter().all(|e| e.admitted_at().is_some() && !e.awaits_admission()));
        admitted.extend(batch.into_iter().map(|e| e.id));
    }
    admitted.sort();
    assert_eq!(admitted, vec![waiting[0].id, waiting[1].id], "the two oldest fill the room of three");
    assert!(repo.admit_waiting(&scope, LIMIT, Utc::now()).await.unwrap().is_empty(), "no room left");

    // An update from a copy read before the admission keeps it.
    let mut stale = waiting[0].clone();
    stale.start_attempt(1, Utc::now()).unwrap();
    assert_eq!(repo.update_if_status(&stale, ExportStatus::Pending).await.unwrap(), UpdateOutcome::Updated);
    let stored = repo.get(&scope, stale.id).await.unwrap().unwrap();
    assert!(stored.admitted_at().is_some(), "an update cleared the admission");

    // A cancelled waiting export is never admitted; a finished admitted one frees its place.
    let mut cancelled = waiting[2].clone();
    cancelled.cancel(Utc::now()).unwrap();
    assert_eq!(
        repo.update_if_status(&cancelled, ExportStatus::Pending).await.unwrap(),
        UpdateOutcome::Updated
    );
    let mut finished = stored;
    finished.fail(ExportFailure::new(FailureKind::Internal, "done"), Utc::now()).unwrap();
    assert_eq!(
        repo.update_if_status(&finished, ExportStatus::Running).await.unwrap(),
        UpdateOutcome::Updated
    );
    let next = repo.admit_waiting(&scope, LIMIT, Utc::now()).await.unwrap();
    assert_eq!(next.iter().map(|e| e.id).collect::<Vec<_>>(), vec![waiting[3].id]);

    // A larger limit takes the rest in order; the other scope's export still waits.
    let rest = repo.admit_waiting(&scope, 10, Utc::now()).await.unwrap();
    assert_eq!(rest.iter().map(|e| e.id).collect::<Vec<_>>(), vec![waiting[4].id, waiting[5].id]);
    let other = repo.get(&other_scope.scope, other_scope.id).await.unwrap().unwrap();
    assert!(other.awaits_admission());
}

/// A completed export of `scope` whose file expires at `expires_at`.
async fn completed_expiring(repo: &dyn ExportRepository, scope: &Scope, expires_at: DateTime<Utc>) -> Export {
    let mut export = new_export(scope, 0);
    repo.create_if_absent(&export).await.unwrap();
    let finished = expires_at - TimeDelta::hours(1);
    export.start_attempt(1, finished).unwrap();
    repo.update_if_status(&export, ExportStatus::Pending).await.unwrap();
    let outcome = ExportOutcome { record_count: 1, bytes: 1, sha256: "00".repeat(32) };
    export.complete(outcome, export.attempt_key(1), TimeDelta::hours(1), finished).unwrap();
    assert_eq!(repo.update_if_status(&export, ExportStatus::Running).await.unwrap(), UpdateOutcome::Updated);
    export
}

async fn expired_are_listed_soonest_first_until_marked(repo: &dyn ExportRepository) {
    // Long before anything the other checks store, so only these exports can be due.
    let now = Utc.with_ymd_and_hms(2000, 1, 1, 0, 0, 0).unwrap();
    let scope = fresh_scope();
    let second = completed_expiring(repo, &scope, now - TimeDelta::seconds(2)).await;
    let first = completed_expiring(repo, &fresh_scope(), now - TimeDelta::seconds(3)).await;
    let third = completed_expiring(repo, &scope, now).await;
    completed_expiring(repo, &scope, now + TimeDelta::seconds(1)).await;
    let ids = |items: Vec<Export>| items.into_iter().map(|e| e.id).collect::<Vec<_>>();
    assert_eq!(ids(repo.list_expired(now, 10).await.unwrap()), [first.id, second.id, third.id]);
    assert_eq!(ids(repo.list_expired(now, 2).await.unwrap()), [first.id, second.id]);

    let mut expired = first.clone();
    expired.expire(now).unwrap();
    assert_eq!(
        repo.update_if_status(&expired, ExportStatus::Completed).await.unwrap(),
        UpdateOutcome::Updated
    );
    assert_eq!(repo.get(&first.scope, first.id).await.unwrap(), Some(expired));
    assert_eq!(ids(repo.list_expired(now, 10).await.unwrap()), [second.id, third.id]);

    // A file that failed to delete waits for its retry, behind exports due before it.
    let mut deferred = second.clone();
    deferred.defer_deletion(now, |_| std::time::Duration::from_secs(60));
    assert_eq!(
        repo.update_if_status(&deferred, ExportStatus::Completed).await.unwrap(),
        UpdateOutcome::Updated
    );
    assert_eq!(repo.get(&second.scope, second.id).await.unwrap(), Some(deferred));
    assert_eq!(ids(repo.list_expired(now, 10).await.unwrap()), [third.id]);
    let later = now + TimeDelta::seconds(60);
    let listed = ids(repo.list_expired(later, 10).await.unwrap());
    assert_eq!(listed.len(), 3, "{listed:?}");
    assert_eq!((listed[0], listed[2]), (third.id, second.id), "the retry comes last");
}

async fn notifications_round_trip(repo: &dyn ExportRepository) {
    let mut export = new_export(&fresh_scope(), 0);
    repo.create_if_absent(&export).await.unwrap();
    export.fail(ExportFailure::new(FailureKind::Validation, "bad"), Utc::now()).unwrap();
    repo.update_if_status(&export, ExportStatus::Pending).await.unwrap();
    let record = NotificationRecord {
        status: NotificationStatus::Failed,
        attempts: 3,
        last_error: Some("smtp: 451 try later".into()),
        at: Utc::now(),
    };
    export.record_notification(record, Utc::now());
    assert_eq!(repo.update_if_status(&export, ExportStatus::Failed).await.unwrap(), UpdateOutcome::Updated);
    assert_eq!(repo.get(&export.scope, export.id).await.unwrap(), Some(export));
}

async fn notify_due_are_listed_oldest_first_until_done(repo: &dyn ExportRepository) {
    // Long before anything the other checks store, so only these exports can be listed.
    let at = |s: i64| Utc.with_ymd_and_hms(2001, 1, 1, 0, 0, 0).unwrap() + TimeDelta::seconds(s);
    let scope = fresh_scope();
    let mut made = Vec::new();
    for s in [2, 1, 3] {
        let mut export = new_export(&scope, 0);
        repo.create_if_absent(&export).await.unwrap();
        export.start_attempt(1, at(s)).unwrap();
        export.note_attempt_failure(ExportFailure::new(FailureKind::Source, "corrupt row"), true, at(s));
        export.set_workflow_id(format!("user-export-scheduled:{s}"));
        export.fail(ExportFailure::new(FailureKind::Source, "corrupt row"), at(s)).unwrap();
        repo.update_if_status(&export, ExportStatus::Pending).await.unwrap();
        made.push(export);
    }
    // Other checks' old records may be due too: look at this scope's only.
    let ids =
        |items: Vec<Export>| items.into_iter().filter(|e| e.scope == scope).map(|e| e.id).collect::<Vec<_>>();
    assert_eq!(ids(repo.list_notify_due(at(2), 100).await.unwrap()), [made[1].id, made[0].id]);
    assert!(repo.list_notify_due(at(3), 1).await.unwrap().len() <= 1);

    let mut done = made[1].clone();
    let record =
        NotificationRecord { status: NotificationStatus::Sent, attempts: 1, last_error: None, at: at(4) };
    done.record_callback(record, at(4));
    done.notifications_done(at(4));
    assert_eq!(repo.update_if_status(&done, ExportStatus::Failed).await.unwrap(), UpdateOutcome::Updated);
    let stored = repo.get(&scope, done.id).await.unwrap().unwrap();
    assert_eq!(stored, done, "callback, attempts and workflow ID round-trip");
    assert_eq!(stored.consumed_attempts(), 1);
    assert_eq!(stored.workflow_id(), "user-export-scheduled:1");
    assert_eq!(ids(repo.list_notify_due(at(10), 100).await.unwrap()), [made[0].id, made[2].id]);
}

async fn create_is_idempotent_and_keeps_the_first(repo: &dyn ExportRepository) {
    let scope = fresh_scope();
    let first = new_export(&scope, 0);
    assert_eq!(repo.create_if_absent(&first).await.unwrap(), CreateOutcome::Created);
    let mut second = first.clone();
    second.spec.limit = Some(3);
    match repo.create_if_absent(&second).await.unwrap() {
        CreateOutcome::Existing(stored) => assert_eq!(*stored, first),
        other => panic!("expected Existing, got {other:?}"),
    }
    assert_eq!(repo.get(&scope, first.id).await.unwrap(), Some(first));
}

async fn concurrent_creates_make_one_record(repo: Arc<dyn ExportRepository>) {
    let export = new_export(&fresh_scope(), 0);
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let (repo, export) = (repo.clone(), export.clone());
            tokio::spawn(async move { repo.create_if_absent(&export).await.unwrap() })
        })
        .collect();
    let mut created = 0;
    for task in tasks {
        if task.await.unwrap() == CreateOutcome::Created {
            created += 1;
        }
    }
    assert_eq!(created, 1);
}

async fn get_is_scoped(repo: &dyn ExportRepository) {
    let export = new_export(&fresh_scope(), 0);
    repo.create_if_absent(&export).await.unwrap();
    assert_eq!(repo.get(&fresh_scope(), export.id).await.unwrap(), None, "another scope sees nothing");
    assert_eq!(repo.get(&export.scope, ExportId::from_uuid(Uuid::now_v7())).await.unwrap(), None);
}

async fn transitions_are_compare_and_set(repo: &dyn ExportRepository) {
    let mut export = new_export(&fresh_scope(), 0);
    repo.create_if_absent(&export).await.unwrap();
    export.start_attempt(1, Utc::now()).unwrap();
    assert_eq!(repo.update_if_status(&export, ExportStatus::Pending).await.unwrap(), UpdateOutcome::Updated);
    // A stale writer expecting `pending` is refused and told what is stored.
    match repo.update_if_status(&export, ExportStatus::Pending).await.unwrap() {
        UpdateOutcome::Conflict(stored) => assert_eq!(stored.status(), ExportStatus::Running),
        other => panic!("expected Conflict, got {other:?}"),
    }
    export.record_progress(10, Some(20), Utc::now());
    assert_eq!(repo.update_if_status(&export, ExportStatus::Running).await.unwrap(), UpdateOutcome::Updated);
    let outcome = ExportOutcome { record_count: 20, bytes: 100, sha256: "00".repeat(32) };
    let mut done = export.clone();
    done.complete(outcome, export.attempt_key(1), TimeDelta::days(1), Utc::now()).unwrap();
    assert_eq!(repo.update_if_status(&done, ExportStatus::Running).await.unwrap(), UpdateOutcome::Updated);
    // Nothing moves a finished export backwards.
    assert!(matches!(
        repo.update_if_status(&export, ExportStatus::Running).await.unwrap(),
        UpdateOutcome::Conflict(_)
    ));
    assert_eq!(repo.get(&export.scope, export.id).await.unwrap(), Some(done));
    let missing = new_export(&export.scope, 0);
    assert_eq!(
        repo.update_if_status(&missing, ExportStatus::Pending).await.unwrap(),
        UpdateOutcome::NotFound
    );
}

async fn concurrent_transitions_have_one_winner(repo: Arc<dyn ExportRepository>) {
    let mut export = new_export(&fresh_scope(), 0);
    repo.create_if_absent(&export).await.unwrap();
    export.start_attempt(1, Utc::now()).unwrap();
    repo.update_if_status(&export, ExportStatus::Pending).await.unwrap();
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let (repo, mut candidate) = (repo.clone(), export.clone());
            tokio::spawn(async move {
                if i % 2 == 0 {
                    candidate
                        .fail(ExportFailure::new(FailureKind::Storage, format!("writer {i}")), Utc::now())
                        .unwrap();
                } else {
                    candidate.cancel(Utc::now()).unwrap();
                }
                repo.update_if_status(&candidate, ExportStatus::Running).await.unwrap()
            })
        })
        .collect();
    let mut winners = 0;
    for task in tasks {
        if task.await.unwrap() == UpdateOutcome::Updated {
            winners += 1;
        }
    }
    assert_eq!(winners, 1, "exactly one terminal write wins");
}

async fn list_is_newest_first_with_cursor_and_status(repo: &dyn ExportRepository) {
    let scope = fresh_scope();
    let mut made = Vec::new();
    for age in (0..5).rev() {
        let export = new_export(&scope, age * 10);
        repo.create_if_absent(&export).await.unwrap();
        made.push(export);
    }
    // One of them cancelled, to filter on.
    let mut cancelled = made[2].clone();
    cancelled.cancel(Utc::now()).unwrap();
    repo.update_if_status(&cancelled, ExportStatus::Pending).await.unwrap();
    repo.create_if_absent(&new_export(&fresh_scope(), 0)).await.unwrap(); // another scope

    let mut seen = Vec::new();
    let mut after = None;
    for page_no in 0.. {
        let page = repo.list(&scope, &ExportQuery { status: None, limit: 2, after }).await.unwrap();
        assert!(page.items.len() <= 2);
        seen.extend(page.items.iter().map(|e| e.id));
        after = page.next;
        if after.is_none() {
            break;
        }
        assert!(page_no < 5, "pagination does not end");
    }
    let newest_first: Vec<_> = made.iter().rev().map(|e| e.id).collect();
    assert_eq!(seen, newest_first);
    assert_eq!(seen.iter().collect::<HashSet<_>>().len(), 5);

    let only = repo
        .list(&scope, &ExportQuery { status: Some(ExportStatus::Cancelled), limit: 10, after: None })
        .await
        .unwrap();
    assert_eq!(only.items.iter().map(|e| e.id).collect::<Vec<_>>(), vec![cancelled.id]);
    assert_eq!(only.next, None);
}

async fn unfinished_are_listed_for_recovery(repo: &dyn ExportRepository) {
    let scope = fresh_scope();
    let pending = new_export(&scope, 30);
    let mut running = new_export(&scope, 20);
    let mut failed = new_export(&scope, 10);
    for e in [&pending, &running, &failed] {
        repo.create_if_absent(e).await.unwrap();
    }
    running.start_attempt(1, Utc::now()).unwrap();
    repo.update_if_status(&running, ExportStatus::Pending).await.unwrap();
    failed.fail(ExportFailure::new(FailureKind::Validation, "x"), Utc::now()).unwrap();
    repo.update_if_status(&failed, ExportStatus::Pending).await.unwrap();

    let ids: Vec<_> = repo
        .list_unfinished()
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.scope == scope)
        .map(|e| e.id)
        .collect();
    assert_eq!(ids, vec![pending.id, running.id], "oldest first, finished ones excluded");
}
