//! Following an export until it finishes: polls at the pace the API asks (`Retry-After`), rides
//! out short outages and rate limits, and on Ctrl-C asks whether to cancel the export.

use std::io::Write as _;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::client::{Client, Fetched};
use crate::error::CliError;
use crate::model::Export;
use crate::progress::ExportBar;
use crate::request::segment;
use crate::terminal::Terminal;
use crate::units;

/// Poll interval when the API gives none.
const DEFAULT_POLL: Duration = Duration::from_secs(1);
/// Bounds on a `Retry-After`: never a busy loop, never a wait that looks like a hang.
const MIN_POLL: Duration = Duration::from_millis(250);
const MAX_POLL: Duration = Duration::from_secs(30);
/// Transient failures (unreachable, 429, 503) in a row before the wait gives up.
const MAX_TRANSIENT_FAILURES: u32 = 10;

/// Polls the export of `first` until it is terminal and returns its last state. Its failure or
/// cancellation is not an error here: the caller decides what each outcome means.
pub async fn until_finished(
    client: &Client,
    first: Fetched<Export>,
    terminal: Terminal,
) -> Result<Fetched<Export>, CliError> {
    let path = format!("/v1/exports/{}", segment(&first.item.id));
    let mut bar = ExportBar::new(terminal.bars());
    let mut current = first;
    let mut delay = poll_delay(current.retry_after);
    let mut failures = 0;
    let mut interrupts = Interrupts::listen();
    loop {
        bar.update(&current.item);
        if current.item.status.is_terminal() {
            bar.finish(&current.item);
            return Ok(current);
        }
        let polled = tokio::select! {
            polled = async {
                tokio::time::sleep(delay).await;
                client.get::<Export>(&path).await
            } => polled,
            () = interrupts.next() => {
                return interrupted(client, &bar, &current.item, terminal, &mut interrupts).await;
            }
        };
        match polled {
            Ok(next) => {
                failures = 0;
                delay = poll_delay(next.retry_after);
                current = next;
            }
            Err(error) if error.is_transient() && failures < MAX_TRANSIENT_FAILURES => {
                failures += 1;
                delay = poll_delay(error.retry_after().or(Some(backoff(failures))));
                bar.note(format!("{}; polling again in {}", short(&error), units::duration(delay)));
            }
            Err(error) => {
                bar.abandon();
                return Err(error);
            }
        }
    }
}

/// The wait before the next poll: what the API asked, within bounds.
fn poll_delay(retry_after: Option<Duration>) -> Duration {
    retry_after.unwrap_or(DEFAULT_POLL).clamp(MIN_POLL, MAX_POLL)
}

/// 1 s, 2 s, 4 s ... 16 s after the n-th failure in a row, when the API named no wait.
fn backoff(failures: u32) -> Duration {
    Duration::from_secs(1 << failures.saturating_sub(1).min(4))
}

/// The first line of an error, for the bar's message.
fn short(error: &CliError) -> String {
    error.to_string().lines().next().unwrap_or_default().to_owned()
}

/// Ctrl-C while waiting. On a terminal: ask whether to cancel the export, and cancel it if so;
/// otherwise (or without a terminal to ask on) leave it running and say how to follow it.
async fn interrupted(
    client: &Client,
    bar: &ExportBar,
    export: &Export,
    terminal: Terminal,
    interrupts: &mut Interrupts,
) -> Result<Fetched<Export>, CliError> {
    bar.abandon();
    let id = export.id.clone();
    if !terminal.can_ask() {
        return Err(CliError::Interrupted { id });
    }
    // The bar leaves the cursor at the end of its line: start the question on a line of its own.
    eprint!("\r\nCancel export {id}? Otherwise it keeps running. [y/N] ");
    let _ = std::io::stderr().flush();
    // A second Ctrl-C, or the end of input, answers "leave it running".
    let answer = tokio::select! {
        answer = read_line() => answer,
        () = interrupts.next() => None,
    };
    if !answer.as_deref().is_some_and(is_yes) {
        return Err(CliError::Interrupted { id });
    }
    let path = format!("/v1/exports/{}", segment(&id));
    match client.post::<Export>(&format!("{path}/cancel"), None, None).await {
        Ok(cancelled) => Ok(cancelled),
        // It finished before the cancel arrived: show how it ended.
        Err(CliError::Api { status: 409, .. }) => client.get::<Export>(&path).await,
        Err(error) => Err(error),
    }
}

/// Ctrl-C presses from the start of the wait on (SIGINT no longer ends the process meanwhile).
struct Interrupts(mpsc::UnboundedReceiver<()>);

impl Interrupts {
    fn listen() -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while tokio::signal::ctrl_c().await.is_ok() {
                if tx.send(()).is_err() {
                    break;
                }
            }
        });
        Self(rx)
    }

    /// The next press; never, if no handler could be installed.
    async fn next(&mut self) {
        if self.0.recv().await.is_none() {
            std::future::pending::<()>().await;
        }
    }
}

/// One line from stdin, read on a thread of its own: a blocked read must not keep the process
/// alive once the answer no longer matters.
async fn read_line() -> Option<String> {
    let (tx, rx) = oneshot::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let read = std::io::stdin().read_line(&mut line);
        let _ = tx.send(read.ok().filter(|n| *n > 0).map(|_| line));
    });
    rx.await.ok().flatten()
}

fn is_yes(answer: &str) -> bool {
    matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_api_sets_the_pace_within_bounds() {
        assert_eq!(poll_delay(None), DEFAULT_POLL);
        assert_eq!(poll_delay(Some(Duration::from_secs(2))), Duration::from_secs(2));
        assert_eq!(poll_delay(Some(Duration::ZERO)), MIN_POLL);
        assert_eq!(poll_delay(Some(Duration::from_secs(3600))), MAX_POLL);
    }

    #[test]
    fn backoff_doubles_up_to_sixteen_seconds() {
        let waits: Vec<u64> = (1..=7).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 16, 16]);
    }

    #[test]
    fn only_yes_cancels() {
        for yes in ["y", "Y\n", " yes ", "YES"] {
            assert!(is_yes(yes), "{yes}");
        }
        for no in ["", "\n", "n", "no", "yep", "cancel"] {
            assert!(!is_yes(no), "{no}");
        }
    }
}
