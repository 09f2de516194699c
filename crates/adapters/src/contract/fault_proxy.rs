//! A fault-injecting TCP proxy for tests that break the network on purpose: point a client at
//! [`FaultProxy::addr`] instead of the server, then `cut()`, `blackhole()` or add `latency()`
//! while the client works, and `restore()`.
//!
//! Blackhole semantics: bytes are **held, not dropped**. The proxy stops reading and writing in
//! both directions, so a sender's writes pile up in socket buffers exactly as they do behind a
//! real partition while TCP retransmits; on `restore()` everything held is delivered in order
//! and the connections carry on. Dropping bytes would corrupt the stream, and TCP itself never
//! does that. A client notices the partition only through its own timeouts, as in production.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream, ToSocketAddrs};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::task::AbortOnDropHandle;

/// What the proxy does to traffic right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Forward,
    Cut,
    Blackhole,
}

#[derive(Debug, Clone, Copy)]
struct Faults {
    mode: Mode,
    latency: Duration,
    /// Bumped by every `cut()`: a connection that saw another value must close, even if a
    /// `restore()` followed before its task looked (a watch keeps only the latest value).
    cuts: u64,
}

#[derive(Debug, Default)]
struct Counters {
    accepted: AtomicU64,
    refused: AtomicU64,
    live: AtomicUsize,
}

/// A TCP proxy on 127.0.0.1 in front of one upstream, with faults switchable at any time.
/// Dropping it closes the listener and every connection.
#[derive(Debug)]
pub struct FaultProxy {
    addr: SocketAddr,
    faults: Arc<watch::Sender<Faults>>,
    counters: Arc<Counters>,
    _accept: AbortOnDropHandle<()>,
}

impl FaultProxy {
    /// Listens on 127.0.0.1 (a free port) and forwards every connection to `upstream`, resolved
    /// once here. Panics when it cannot resolve or bind: this is test support.
    pub async fn start(upstream: impl ToSocketAddrs) -> Self {
        let upstream = tokio::net::lookup_host(upstream)
            .await
            .expect("resolve the proxy's upstream")
            .next()
            .expect("the proxy's upstream resolves to no address");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the fault proxy");
        let addr = listener.local_addr().expect("the fault proxy's address");
        let faults =
            Arc::new(watch::Sender::new(Faults { mode: Mode::Forward, latency: Duration::ZERO, cuts: 0 }));
        let counters = Arc::new(Counters::default());
        let accept = tokio::spawn(accept_loop(listener, upstream, faults.clone(), counters.clone()));
        Self { addr, faults, counters, _accept: AbortOnDropHandle::new(accept) }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Closes every live connection now and refuses new ones (accepted, then closed at once:
    /// the client reads EOF) until [`restore`](Self::restore).
    pub fn cut(&self) {
        self.faults.send_modify(|f| {
            f.mode = Mode::Cut;
            f.cuts += 1;
        });
    }

    /// Forwards nothing, either way, until [`restore`](Self::restore); connections stay open
    /// and new ones are accepted (their upstream connect waits). Bytes are held, not dropped:
    /// see the module documentation.
    pub fn blackhole(&self) {
        self.faults.send_modify(|f| f.mode = Mode::Blackhole);
    }

    /// Delays every forwarded chunk by `latency` (pipelined: throughput is kept);
    /// `Duration::ZERO` removes it.
    pub fn latency(&self, latency: Duration) {
        self.faults.send_modify(|f| f.latency = latency);
    }

    /// Back to plain forwarding: ends a cut or blackhole and removes the latency.
    pub fn restore(&self) {
        self.faults.send_modify(|f| {
            f.mode = Mode::Forward;
            f.latency = Duration::ZERO;
        });
    }

    /// Connections accepted since the start, refused ones included.
    pub fn accepted(&self) -> u64 {
        self.counters.accepted.load(Ordering::SeqCst)
    }

    /// Connections closed on arrival because the proxy was cut.
    pub fn refused(&self) -> u64 {
        self.counters.refused.load(Ordering::SeqCst)
    }

    /// Connections open right now.
    pub fn live(&self) -> usize {
        self.counters.live.load(Ordering::SeqCst)
    }
}

async fn accept_loop(
    listener: TcpListener,
    upstream: SocketAddr,
    faults: Arc<watch::Sender<Faults>>,
    counters: Arc<Counters>,
) {
    // Owning the connection tasks here means aborting this task (the proxy's drop) aborts them.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((client, _)) => {
                    counters.accepted.fetch_add(1, Ordering::SeqCst);
                    if faults.borrow().mode == Mode::Cut {
                        counters.refused.fetch_add(1, Ordering::SeqCst);
                        continue; // dropping `client` closes it
                    }
                    connections.spawn(connection(client, upstream, faults.clone(), counters.clone()));
                }
                Err(error) => {
                    tracing::warn!(%error, "fault proxy: accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// Decrements the live count however the connection ends.
struct Live(Arc<Counters>);

impl Drop for Live {
    fn drop(&mut self) {
        self.0.live.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn connection(
    client: TcpStream,
    upstream: SocketAddr,
    faults: Arc<watch::Sender<Faults>>,
    counters: Arc<Counters>,
) {
    counters.live.fetch_add(1, Ordering::SeqCst);
    let _live = Live(counters);
    let mut control = faults.subscribe();
    let born = control.borrow().cuts;
    tokio::select! {
        result = forward(client, upstream, &faults) => {
            if let Err(error) = result {
                tracing::debug!(%error, %upstream, "fault proxy: connection ended");
            }
        }
        // Returning drops both streams: that is the cut.
        _ = control.wait_for(|f| f.cuts != born) => tracing::debug!(%upstream, "fault proxy: connection cut"),
    }
}

async fn forward(
    client: TcpStream,
    upstream: SocketAddr,
    faults: &watch::Sender<Faults>,
) -> std::io::Result<()> {
    // Behind a blackhole the connect waits, as a SYN is retried until the partition heals.
    unblocked(&mut faults.subscribe()).await;
    let server = TcpStream::connect(upstream).await?;
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    tokio::try_join!(
        pump(client_read, server_write, faults.subscribe()),
        pump(server_read, client_write, faults.subscribe()),
    )?;
    Ok(())
}

/// One direction: a reader stamps each chunk with its due time, a writer sends it then, so
/// latency delays chunks without serialising them. Both wait out a blackhole.
async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    faults: watch::Receiver<Faults>,
) -> std::io::Result<()> {
    let (tx, mut rx) = mpsc::channel::<(Instant, Vec<u8>)>(16);
    let mut read_faults = faults.clone();
    let read = async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            unblocked(&mut read_faults).await;
            let n = from.read(&mut buf).await?;
            if n == 0 {
                return Ok::<_, std::io::Error>(()); // dropping `tx` ends the writer
            }
            let due = Instant::now() + read_faults.borrow().latency;
            if tx.send((due, buf[..n].to_vec())).await.is_err() {
                return Ok(());
            }
        }
    };
    let mut write_faults = faults;
    let write = async move {
        while let Some((due, chunk)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            unblocked(&mut write_faults).await;
            to.write_all(&chunk).await?;
        }
        // Pass the half-close on, so request/response protocols that rely on EOF still work.
        to.shutdown().await
    };
    tokio::try_join!(read, write)?;
    Ok(())
}

/// Waits while the proxy is blackholed.
async fn unblocked(faults: &mut watch::Receiver<Faults>) {
    // The sender lives as long as the proxy's tasks, so this only errs while being dropped.
    let _ = faults.wait_for(|f| f.mode != Mode::Blackhole).await;
}
