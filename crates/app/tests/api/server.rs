//! The real server on a real socket: the header-read timeout, the connection limit, and the
//! client address that the per-address limits see.

use std::net::SocketAddr;
use std::time::Duration;

use app::{Application, Config};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::helpers::{ACME_KEY, API_KEYS};

struct Server {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    running: JoinHandle<anyhow::Result<()>>,
}

impl Server {
    async fn start(configure: impl FnOnce(&mut Config)) -> Self {
        let mut config = Config::for_tests(API_KEYS);
        config.shutdown_grace_s = 1;
        configure(&mut config);
        let app = Application::build(config).await.unwrap();
        let addr = app.local_addr();
        let (stop, stopped) = oneshot::channel::<()>();
        let running = tokio::spawn(app.run_until_stopped(async {
            let _ = stopped.await;
        }));
        Self { addr, stop: Some(stop), running }
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let stopped = tokio::time::timeout(Duration::from_secs(10), &mut self.running).await;
        assert!(matches!(stopped, Ok(Ok(Ok(())))), "the server did not stop cleanly: {stopped:?}");
    }
}

/// Reads until the peer closes (or resets) the connection; returns what came.
async fn read_until_closed(socket: &mut TcpStream) -> Vec<u8> {
    let mut received = Vec::new();
    let _ = socket.read_to_end(&mut received).await;
    received
}

#[tokio::test]
async fn a_client_that_sends_its_headers_too_slowly_is_disconnected() {
    let server = Server::start(|c| c.limits.header_read_timeout_s = 1).await;
    let socket = TcpStream::connect(server.addr).await.unwrap();
    let (mut reader, mut writer) = socket.into_split();
    let started = tokio::time::Instant::now();
    // One header byte every 100 ms: the connection is never idle, the headers never complete.
    let dripping = tokio::spawn(async move {
        for byte in b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ".iter().cycle().take(100) {
            if writer.write_all(&[*byte]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let mut received = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), reader.read_to_end(&mut received)).await;
    let elapsed = started.elapsed();
    assert!(closed.is_ok(), "the connection was still open after 5 s");
    assert!(elapsed >= Duration::from_millis(900) && elapsed < Duration::from_secs(3), "{elapsed:?}");
    assert!(!String::from_utf8_lossy(&received).contains("200 OK"), "{received:?}");
    dripping.abort();

    // A client that sends its request at once is answered.
    let mut socket = TcpStream::connect(server.addr).await.unwrap();
    socket.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").await.unwrap();
    let answer = String::from_utf8(read_until_closed(&mut socket).await).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
    server.stop().await;
}

#[tokio::test]
async fn beyond_the_connection_limit_a_connection_waits_until_one_closes() {
    let server = Server::start(|c| c.limits.max_connections = 1).await;
    const REQUEST: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
    let mut buffer = [0_u8; 1024];

    let mut first = TcpStream::connect(server.addr).await.unwrap();
    first.write_all(REQUEST).await.unwrap();
    let n = first.read(&mut buffer).await.unwrap();
    assert!(buffer[..n].starts_with(b"HTTP/1.1 200"), "{:?}", String::from_utf8_lossy(&buffer[..n]));

    // The first connection is kept alive: the second is not served meanwhile...
    let mut second = TcpStream::connect(server.addr).await.unwrap();
    second.write_all(REQUEST).await.unwrap();
    let early = tokio::time::timeout(Duration::from_millis(500), second.read(&mut buffer)).await;
    assert!(early.is_err(), "answered beyond the connection limit");

    // ...and is as soon as the first closes.
    drop(first);
    let n = tokio::time::timeout(Duration::from_secs(3), second.read(&mut buffer)).await.unwrap().unwrap();
    assert!(buffer[..n].starts_with(b"HTTP/1.1 200"), "{:?}", String::from_utf8_lossy(&buffer[..n]));
    drop(second);
    server.stop().await;
}

#[tokio::test]
async fn failed_authentications_are_counted_against_the_real_peer_address() {
    let server = Server::start(|c| {
        c.limits.auth_failures_per_min = 1;
        c.limits.auth_failures_burst = 1;
    })
    .await;
    let http = adapters::contract::http_client();
    let url = format!("http://{}/v1/exports", server.addr);

    let first = http.get(&url).bearer_auth("guess").send().await.unwrap();
    assert_eq!(first.status(), 401);
    let state = first.headers().get("ratelimit").map(|v| v.to_str().unwrap().to_owned());
    assert!(state.as_deref().is_some_and(|v| v.starts_with("\"auth-failures\";r=0")), "{state:?}");
    let second = http.get(&url).bearer_auth(ACME_KEY).send().await.unwrap();
    assert_eq!(second.status(), 429);
    assert!(second.headers().get("retry-after").is_some());
    server.stop().await;
}
