//! [`ScheduleRepository`] contract. Each check uses a fresh scope, so the suite can run against
//! a shared database.

use std::sync::Arc;

use chrono::Utc;
use domain::{CronExpr, ExportSchedule, NewSchedule, ScheduleId, SchedulePatch, Scope};
use ports::{
    ScheduleCreateOutcome, ScheduleQuery, ScheduleQuotaOutcome, ScheduleRepository, ScheduleUpdateOutcome,
};
use serde_json::json;
use uuid::Uuid;

fn fresh_scope() -> Scope {
    let tenant = format!("s{}", Uuid::new_v4().simple());
    Scope::parse(&format!("{}/prod", &tenant[..20])).unwrap()
}

/// A schedule in `scope` with a fresh UUIDv7 ID.
pub fn new_schedule(scope: &Scope) -> ExportSchedule {
    let new = NewSchedule::from_json(&json!({
        "cron": "*/5 * * * *", "timezone": "Europe/Paris", "note": "nightly",
        "request": {"format": "ndjson", "compression": "gzip", "user_filters": {"status": "active"}}
    }))
    .unwrap();
    ExportSchedule::new(ScheduleId::from_uuid(Uuid::now_v7()), scope.clone(), new, Utc::now())
}

pub async fn run_all(repo: Arc<dyn ScheduleRepository>) {
    create_is_idempotent_and_keeps_the_first(repo.as_ref()).await;
    concurrent_creates_make_one_record(repo.clone()).await;
    get_and_delete_are_scoped(repo.as_ref()).await;
    updates_are_compare_and_set_on_the_revision(repo.as_ref()).await;
    list_pages_in_id_order_within_the_scope(repo.as_ref()).await;
    list_all_sees_every_scope(repo.as_ref()).await;
    the_schedule_quota_holds_under_concurrent_creates(repo.clone()).await;
    repo.ping().await.unwrap();
}

async fn the_schedule_quota_holds_under_concurrent_creates(repo: Arc<dyn ScheduleRepository>) {
    const LIMIT: u32 = 3;
    let scope = fresh_scope();
    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let (repo, schedule) = (repo.clone(), new_schedule(&scope));
            tokio::spawn(async move { repo.create_within_quota(&schedule, LIMIT).await.unwrap() })
        })
        .collect();
    let mut kept = 0;
    for task in tasks {
        match task.await.unwrap() {
            ScheduleQuotaOutcome::Created => kept += 1,
            ScheduleQuotaOutcome::QuotaExceeded { count } => assert!(count >= u64::from(LIMIT)),
            other => panic!("fresh IDs cannot exist: {other:?}"),
        }
    }
    assert_eq!(kept, LIMIT, "concurrent creates took the scope past its quota");
    let page = repo.list(&scope, &ScheduleQuery { limit: 100, after: None }).await.unwrap();
    let first = page.items[0].clone();
    assert!(matches!(
        repo.create_within_quota(&first, LIMIT).await.unwrap(),
        ScheduleQuotaOutcome::Existing(_)
    ));
    assert!(repo.delete(&scope, first.id).await.unwrap());
    assert_eq!(
        repo.create_within_quota(&new_schedule(&scope), LIMIT).await.unwrap(),
        ScheduleQuotaOutcome::Created
    );
}

async fn create_is_idempotent_and_keeps_the_first(repo: &dyn ScheduleRepository) {
    let scope = fresh_scope();
    let first = new_schedule(&scope);
    assert_eq!(repo.create_if_absent(&first).await.unwrap(), ScheduleCreateOutcome::Created);
    let mut second = first.clone();
    second.cron = CronExpr::parse("0 0 * * *").unwrap();
    match repo.create_if_absent(&second).await.unwrap() {
        ScheduleCreateOutcome::Existing(stored) => assert_eq!(*stored, first),
        other => panic!("expected Existing, got {other:?}"),
    }
    assert_eq!(repo.get(&scope, first.id).await.unwrap(), Some(first), "reads back exactly as written");
}

async fn concurrent_creates_make_one_record(repo: Arc<dyn ScheduleRepository>) {
    let schedule = new_schedule(&fresh_scope());
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let (repo, schedule) = (repo.clone(), schedule.clone());
            tokio::spawn(async move { repo.create_if_absent(&schedule).await.unwrap() })
        })
        .collect();
    let mut created = 0;
    for task in tasks {
        if task.await.unwrap() == ScheduleCreateOutcome::Created {
            created += 1;
        }
    }
    assert_eq!(created, 1);
}

async fn get_and_delete_are_scoped(repo: &dyn ScheduleRepository) {
    let (mine, theirs) = (fresh_scope(), fresh_scope());
    let schedule = new_schedule(&mine);
    repo.create_if_absent(&schedule).await.unwrap();
    assert_eq!(repo.get(&theirs, schedule.id).await.unwrap(), None);
    assert!(!repo.delete(&theirs, schedule.id).await.unwrap(), "another scope cannot delete it");
    assert!(repo.get(&mine, schedule.id).await.unwrap().is_some());
    assert!(repo.delete(&mine, schedule.id).await.unwrap());
    assert!(!repo.delete(&mine, schedule.id).await.unwrap(), "a second delete finds nothing");
    assert_eq!(repo.get(&mine, schedule.id).await.unwrap(), None);
}

async fn updates_are_compare_and_set_on_the_revision(repo: &dyn ScheduleRepository) {
    let scope = fresh_scope();
    let schedule = new_schedule(&scope);
    repo.create_if_absent(&schedule).await.unwrap();
    let patch = SchedulePatch { paused: Some(true), note: Some(None), ..SchedulePatch::default() };
    let paused = schedule.patched(patch, Utc::now());
    assert_eq!(
        repo.update_if_revision(&paused, schedule.revision).await.unwrap(),
        ScheduleUpdateOutcome::Updated
    );
    assert_eq!(repo.get(&scope, schedule.id).await.unwrap(), Some(paused.clone()));

    // A writer that read the old revision loses.
    let stale =
        schedule.patched(SchedulePatch { paused: Some(false), ..SchedulePatch::default() }, Utc::now());
    match repo.update_if_revision(&stale, schedule.revision).await.unwrap() {
        ScheduleUpdateOutcome::Conflict(stored) => assert_eq!(*stored, paused),
        other => panic!("expected Conflict, got {other:?}"),
    }
    let missing = new_schedule(&scope);
    assert_eq!(repo.update_if_revision(&missing, 1).await.unwrap(), ScheduleUpdateOutcome::NotFound);
}

async fn list_pages_in_id_order_within_the_scope(repo: &dyn ScheduleRepository) {
    let scope = fresh_scope();
    let mut ids = Vec::new();
    for _ in 0..5 {
        let s = new_schedule(&scope);
        ids.push(s.id);
        repo.create_if_absent(&s).await.unwrap();
    }
    repo.create_if_absent(&new_schedule(&fresh_scope())).await.unwrap();
    ids.sort();
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = repo.list(&scope, &ScheduleQuery { limit: 2, after }).await.unwrap();
        assert!(page.items.len() <= 2);
        seen.extend(page.items.iter().map(|s| s.id));
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    assert_eq!(seen, ids, "every schedule of the scope once, in ID order, and no other scope's");
}

async fn list_all_sees_every_scope(repo: &dyn ScheduleRepository) {
    let (a, b) = (new_schedule(&fresh_scope()), new_schedule(&fresh_scope()));
    repo.create_if_absent(&a).await.unwrap();
    repo.create_if_absent(&b).await.unwrap();
    let all = repo.list_all().await.unwrap();
    assert!(all.contains(&a) && all.contains(&b));
}
