//! The threads export attempts run on.
//!
//! An export keeps CPUs busy for as long as rows come: reading the COPY stream, encoding,
//! compressing. On a host it shares with the control plane (the API's answers, a Temporal
//! server, the worker's polls and workflow tasks, another tenant's short export waiting on all
//! of those), a backlog of big exports would make every step of that control plane wait its turn
//! for a CPU: with a Temporal dev server on the same two cores, a 1,000-user export took five
//! times as long behind another tenant's backlog as alone, and 1.3 times once the server alone
//! was given a higher priority.
//!
//! So attempts run on runtimes of their own whose threads have a lower CPU priority (a higher
//! nice value, `USEREXPORT_EXPORT_NICE`). Nice is work-conserving: the attempts use every CPU
//! the rest leaves idle and give way as soon as the control plane has work.
//!
//! Between tenants, the CPU goes by tenant rather than by attempt: a scope's first running
//! attempt in this process runs in the lead lane (at `nice`), any other of the same scope in the
//! extra lane ([`EXTRA_NICE`] lower still). So while another tenant's export runs, a tenant
//! running two gets about 1.3 times its CPU, not twice (Linux weights: 110 per thread at nice 10,
//! 36 at 15), and all of it when it is alone.
//!
//! Nice orders threads within one CPU cgroup only (a container, a systemd service): across them,
//! their CPU weights decide. Outside Linux the threads keep the process's priority.

use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::num::NonZero;
use std::sync::{Arc, Mutex, PoisonError};

use domain::Scope;
use tokio::runtime::Runtime;
use tokio_util::task::AbortOnDropHandle;
use tracing::{Instrument, warn};

/// The highest nice value (the least CPU priority) on Linux.
pub const MAX_NICE: u8 = 19;
/// `USEREXPORT_EXPORT_NICE` by default: exports are batch work, well below the control plane,
/// and a lane above the idle floor (19) for a tenant's further attempts.
pub const DEFAULT_NICE: u8 = 10;
/// How much lower than the lead lane a scope's further attempts run.
pub const EXTRA_NICE: u8 = 5;

/// Where attempts run: on threads of their own at a lower CPU priority, in two lanes, or on the
/// caller's runtime ([`ExportThreads::inline`], what tests of the orchestrators alone use).
#[derive(Debug, Clone, Default)]
pub struct ExportThreads {
    lanes: Option<Lanes>,
    /// Scopes with an attempt in the lead lane now.
    leads: Arc<Mutex<HashSet<Scope>>>,
}

#[derive(Debug, Clone, Copy)]
struct Lanes {
    lead: &'static Runtime,
    extra: &'static Runtime,
}

/// The export runtimes of this process, one per nice increment, started on first use and never
/// shut down: connections an attempt opens (sqlx pools are shared with the rest of the process)
/// are registered with its runtime's I/O driver and must outlive any one orchestrator.
static RUNTIMES: Mutex<BTreeMap<u8, &'static Runtime>> = Mutex::new(BTreeMap::new());

impl ExportThreads {
    /// Attempts run on the caller's runtime, at its priority.
    pub fn inline() -> Self {
        Self::default()
    }

    /// Lanes at `nice` and `nice` + [`EXTRA_NICE`] below the calling thread's priority (0 keeps
    /// it for both; 19 is the lowest). Each lane is a runtime of one thread per CPU; its threads
    /// and its blocking threads (compression) run at the lane's priority.
    ///
    /// # Errors
    /// When a runtime's threads cannot be started.
    pub fn start(nice: u8) -> std::io::Result<Self> {
        let lead = nice.min(MAX_NICE);
        let extra = if lead == 0 { 0 } else { lead.saturating_add(EXTRA_NICE).min(MAX_NICE) };
        let lanes = Lanes { lead: runtime_at(lead)?, extra: runtime_at(extra)? };
        Ok(Self { lanes: Some(lanes), leads: Arc::default() })
    }

    /// Runs `attempt` of `scope` on these threads, in the caller's span, and returns its output:
    /// in the lead lane when no other attempt of `scope` is there, else in the extra lane.
    /// Dropping the returned future stops the attempt, as it would one run inline; a panic in it
    /// is the caller's.
    pub async fn run<F>(&self, scope: &Scope, attempt: F) -> F::Output
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let Some(lanes) = self.lanes else {
            return attempt.await;
        };
        let lead = LeadPlace::take(&self.leads, scope);
        let runtime = if lead.is_some() { lanes.lead } else { lanes.extra };
        let task = AbortOnDropHandle::new(runtime.spawn(attempt.in_current_span()));
        match task.await {
            Ok(output) => output,
            Err(err) if err.is_panic() => std::panic::resume_unwind(err.into_panic()),
            // Only an abort cancels the task (the runtimes are never shut down), and only dropping
            // this future aborts it.
            Err(err) => {
                std::panic::resume_unwind(Box::new(format!("export task ended without output: {err}")))
            }
        }
    }
}

/// A scope's place in the lead lane; dropping it frees the place.
struct LeadPlace<'a> {
    leads: &'a Mutex<HashSet<Scope>>,
    scope: Scope,
}

impl<'a> LeadPlace<'a> {
    fn take(leads: &'a Mutex<HashSet<Scope>>, scope: &Scope) -> Option<Self> {
        let taken = leads.lock().unwrap_or_else(PoisonError::into_inner).insert(scope.clone());
        taken.then(|| Self { leads, scope: scope.clone() })
    }
}

impl Drop for LeadPlace<'_> {
    fn drop(&mut self) {
        self.leads.lock().unwrap_or_else(PoisonError::into_inner).remove(&self.scope);
    }
}

/// The process's export runtime whose threads run `nice` below the priority of the thread that
/// first asks for it.
fn runtime_at(nice: u8) -> std::io::Result<&'static Runtime> {
    let mut runtimes = RUNTIMES.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(runtime) = runtimes.get(&nice) {
        return Ok(runtime);
    }
    let target = target_nice(nice);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(std::thread::available_parallelism().map_or(2, NonZero::get))
        .thread_name(format!("export-nice{nice}"))
        .enable_all()
        .on_thread_start(move || set_nice(target))
        .build()?;
    let runtime: &'static Runtime = Box::leak(Box::new(runtime));
    runtimes.insert(nice, runtime);
    Ok(runtime)
}

/// The nice value `nice` below this thread's (absolute, so that a thread spawned by an export
/// thread does not go lower twice); `None` when nothing changes.
#[cfg(target_os = "linux")]
fn target_nice(nice: u8) -> Option<i32> {
    if nice == 0 {
        return None;
    }
    match rustix::process::getpriority_process(Some(rustix::thread::gettid())) {
        Ok(current) => Some((current + i32::from(nice)).min(i32::from(MAX_NICE))),
        Err(err) => {
            warn!(error = %err, "could not read this thread's CPU priority; export threads keep theirs");
            None
        }
    }
}

#[cfg(target_os = "linux")]
fn set_nice(target: Option<i32>) {
    let Some(target) = target else { return };
    // On Linux the nice value is per thread: this one and no other.
    if let Err(err) = rustix::process::setpriority_process(Some(rustix::thread::gettid()), target) {
        warn!(error = %err, target, "could not lower the CPU priority of an export thread");
    }
}

#[cfg(not(target_os = "linux"))]
fn target_nice(nice: u8) -> Option<i32> {
    if nice != 0 {
        warn!(
            nice,
            "USEREXPORT_EXPORT_NICE applies on Linux only; export threads keep the process's priority"
        );
    }
    None
}

#[cfg(not(target_os = "linux"))]
fn set_nice(_: Option<i32>) {}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::time::Duration;

    use tokio::sync::oneshot;

    use super::*;

    fn scope(raw: &str) -> Scope {
        Scope::parse(raw).unwrap()
    }

    /// Where an attempt runs: its thread's name and nice value, and its blocking threads' nice.
    async fn whereabouts() -> (Option<String>, i32, i32) {
        let name = std::thread::current().name().map(str::to_owned);
        let blocking = tokio::task::spawn_blocking(nice_of_this_thread).await.unwrap();
        (name, nice_of_this_thread(), blocking)
    }

    #[tokio::test]
    async fn a_scopes_first_attempt_leads_and_its_others_run_lower() {
        let threads = ExportThreads::start(7).unwrap();
        let base = nice_of_this_thread();
        let (lead, extra) = if cfg!(target_os = "linux") { (base + 7, base + 12) } else { (base, base) };
        let (release, held) = oneshot::channel::<()>();
        let first = tokio::spawn({
            let threads = threads.clone();
            async move {
                threads
                    .run(&scope("a/prod"), async move {
                        let at = whereabouts().await;
                        held.await.unwrap();
                        at
                    })
                    .await
            }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        let (name, nice, blocking) = threads.run(&scope("a/prod"), whereabouts()).await;
        assert_eq!((name.as_deref(), nice, blocking), (Some("export-nice12"), extra, extra), "A's second");
        let (name, nice, blocking) = threads.run(&scope("b/prod"), whereabouts()).await;
        assert_eq!((name.as_deref(), nice, blocking), (Some("export-nice7"), lead, lead), "B's first");
        release.send(()).unwrap();
        let (name, nice, blocking) = first.await.unwrap();
        assert_eq!((name.as_deref(), nice, blocking), (Some("export-nice7"), lead, lead), "A's first");
        // A's lead place is free again.
        let (_, nice, _) = threads.run(&scope("a/prod"), whereabouts()).await;
        assert_eq!(nice, lead);
        // The caller's own thread keeps its priority.
        assert_eq!(nice_of_this_thread(), base);
    }

    #[tokio::test]
    async fn nice_zero_changes_no_priority() {
        let threads = ExportThreads::start(0).unwrap();
        let base = nice_of_this_thread();
        let (name, nice, blocking) = threads.run(&scope("a/prod"), whereabouts()).await;
        assert_eq!((name.as_deref(), nice, blocking), (Some("export-nice0"), base, base));
    }

    #[tokio::test]
    async fn inline_runs_on_the_callers_runtime() {
        let caller = std::thread::current().id();
        let on = ExportThreads::inline().run(&scope("a/prod"), async { std::thread::current().id() }).await;
        assert_eq!(on, caller);
    }

    #[tokio::test]
    async fn a_panic_in_an_attempt_is_the_callers_and_frees_the_lead_place() {
        let threads = ExportThreads::start(0).unwrap();
        let panicking = threads.clone();
        let caught =
            tokio::spawn(async move { panicking.run(&scope("a/prod"), async { panic!("boom") }).await });
        assert!(caught.await.unwrap_err().is_panic());
        assert!(threads.leads.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn dropping_the_run_stops_the_attempt() {
        let threads = ExportThreads::start(0).unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let a = scope("a/prod");
        let running = threads.run(&a, async move {
            let _tx = tx; // dropped when the attempt stops
            std::future::pending::<()>().await;
        });
        let _ = tokio::time::timeout(Duration::from_millis(50), running).await;
        tokio::time::timeout(Duration::from_secs(5), rx).await.unwrap().unwrap_err();
        assert!(threads.leads.lock().unwrap().is_empty());
    }

    fn nice_of_this_thread() -> i32 {
        #[cfg(target_os = "linux")]
        return rustix::process::getpriority_process(Some(rustix::thread::gettid())).unwrap();
        #[cfg(not(target_os = "linux"))]
        0
    }
}
