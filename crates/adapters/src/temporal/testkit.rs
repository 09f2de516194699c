//! Helpers for tests against a real Temporal server (feature `testkit`). The server address
//! comes from `TEST_TEMPORAL_ADDRESS`; tests fail, never skip, when it is unset or unreachable.
//! The test doubles they share live in [`crate::contract::fakes`], re-exported here.
#![allow(clippy::expect_used, clippy::panic)]

use std::future::Future;

use temporalio_client::Client;
use temporalio_sdk::{Runtime, Worker, WorkerOptions};

use super::{TaskQueues, WorkerDeps, Workload, workload_options};

pub use crate::contract::fakes::{BreakingUsers, FailingScopeUsers, FlakyStorage, SlowUsers, read_object};

const HINT: &str = "tests need a Temporal dev server: run scripts/test-all.sh, which starts one and \
                    exports TEST_TEMPORAL_ADDRESS (e.g. 127.0.0.1:7233)";

/// `TEST_TEMPORAL_ADDRESS`; panics with a hint when unset.
pub fn test_address() -> String {
    match std::env::var("TEST_TEMPORAL_ADDRESS") {
        Ok(address) if !address.trim().is_empty() => address,
        _ => panic!("TEST_TEMPORAL_ADDRESS is not set; {HINT}"),
    }
}

/// A client on the test server's `default` namespace; panics with a hint when unreachable.
pub async fn test_client() -> Client {
    let address = test_address();
    let connection = super::TemporalConnection::plain(&address, "default")
        .unwrap_or_else(|err| panic!("TEST_TEMPORAL_ADDRESS={address}: {err:#}"));
    match super::connect_client(&connection, "userexport-test").await {
        Ok(client) => client,
        Err(err) => panic!("Temporal at TEST_TEMPORAL_ADDRESS={address} is unreachable ({err:#}); {HINT}"),
    }
}

/// A task queue no other test (or earlier run) uses, so the shared server keeps tests apart.
pub fn unique_task_queue(test: &str) -> String {
    format!("{test}-{}", uuid::Uuid::new_v4().simple())
}

/// Runs a worker with `options` on `client` while `body` runs, then shuts it down (waiting for
/// its in-flight tasks) and returns `body`'s output. Everything runs on the current task, since
/// a worker's `run` future is not `Send`.
pub async fn with_worker<F: Future>(client: &Client, options: WorkerOptions, body: F) -> F::Output {
    with_workers(client, vec![options], body).await
}

/// Like [`with_worker`], with a worker for each of `queues`' workloads (every queue polled, as
/// `userexport-worker` does by default), on the SDK's default slot limits.
pub async fn with_queue_workers<F: Future>(
    client: &Client,
    queues: &TaskQueues,
    deps: &WorkerDeps,
    body: F,
) -> F::Output {
    let options = workload_options(queues, &Workload::ALL, deps).expect("registering the workflows");
    with_workers(client, options.into_iter().map(|(_, options)| options).collect(), body).await
}

/// Like [`with_worker`], with one worker per options, side by side.
pub async fn with_workers<F: Future>(client: &Client, options: Vec<WorkerOptions>, body: F) -> F::Output {
    let runtime = Runtime::from_current_tokio(Default::default()).expect("Temporal runtime");
    let mut workers: Vec<Worker> = options
        .into_iter()
        .map(|options| Worker::new(&runtime, client.clone(), options).expect("Temporal worker"))
        .collect();
    let shutdowns: Vec<_> = workers.iter().map(Worker::shutdown_handle).collect();
    let (ran, output) = tokio::join!(futures::future::join_all(workers.iter_mut().map(Worker::run)), async {
        let output = body.await;
        shutdowns.iter().for_each(|shutdown| shutdown());
        output
    });
    for result in ran {
        result.expect("the worker failed");
    }
    output
}
