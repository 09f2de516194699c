//! The fault-injection kit itself: the TCP proxy against an echo server and a real PostgreSQL,
//! and the private PostgreSQL server through a stop and a crash.

use std::net::SocketAddr;
use std::time::Duration;

use adapters::contract::fault_proxy::FaultProxy;
use adapters::contract::private_pg::PrivatePostgres;
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgConnection, PgPool};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, timeout};

const QUIET: Duration = Duration::from_millis(300);
const PATIENCE: Duration = Duration::from_secs(5);

/// An echo server for the lifetime of the test.
async fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut read, mut write) = socket.split();
                let _ = tokio::io::copy(&mut read, &mut write).await;
            });
        }
    });
    addr
}

async fn echo(stream: &mut TcpStream, message: &[u8]) -> Vec<u8> {
    stream.write_all(message).await.unwrap();
    let mut back = vec![0; message.len()];
    timeout(PATIENCE, stream.read_exact(&mut back)).await.expect("echo in time").unwrap();
    back
}

/// True when the peer closed: EOF or a reset, within `PATIENCE`.
async fn closed(stream: &mut TcpStream) -> bool {
    let mut buf = [0; 16];
    matches!(timeout(PATIENCE, stream.read(&mut buf)).await, Ok(Ok(0) | Err(_)))
}

/// True when nothing arrives for a while.
async fn silent(stream: &mut TcpStream) -> bool {
    let mut buf = [0; 16];
    timeout(QUIET, stream.read(&mut buf)).await.is_err()
}

async fn eventually(what: &str, check: impl Fn() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_forwards_bytes_both_ways_and_counts_connections() {
    let proxy = FaultProxy::start(echo_server().await).await;
    let mut a = TcpStream::connect(proxy.addr()).await.unwrap();
    let mut b = TcpStream::connect(("127.0.0.1", proxy.port())).await.unwrap();
    assert_eq!(echo(&mut a, b"hello").await, b"hello");
    assert_eq!(echo(&mut b, &[7; 100_000]).await, vec![7; 100_000]);
    assert_eq!(proxy.accepted(), 2);
    assert_eq!(proxy.live(), 2);
    drop(a);
    eventually("one live connection", || proxy.live() == 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_closes_live_connections_and_refuses_new_ones_until_restore() {
    let proxy = FaultProxy::start(echo_server().await).await;
    let mut live = TcpStream::connect(proxy.addr()).await.unwrap();
    assert_eq!(echo(&mut live, b"before").await, b"before");

    proxy.cut();
    assert!(closed(&mut live).await, "a live connection survived the cut");
    let mut refused = TcpStream::connect(proxy.addr()).await.unwrap();
    assert!(closed(&mut refused).await, "a new connection got through a cut");
    assert_eq!(proxy.refused(), 1);
    eventually("no live connections", || proxy.live() == 0).await;

    proxy.restore();
    let mut again = TcpStream::connect(proxy.addr()).await.unwrap();
    assert_eq!(echo(&mut again, b"after").await, b"after");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blackhole_passes_nothing_and_delivers_the_held_bytes_on_restore() {
    let proxy = FaultProxy::start(echo_server().await).await;
    let mut old = TcpStream::connect(proxy.addr()).await.unwrap();
    assert_eq!(echo(&mut old, b"before").await, b"before");

    proxy.blackhole();
    old.write_all(b"held").await.unwrap();
    assert!(silent(&mut old).await, "bytes crossed a blackhole");
    let mut new = TcpStream::connect(proxy.addr()).await.unwrap();
    new.write_all(b"late").await.unwrap();
    assert!(silent(&mut new).await, "a new connection got through a blackhole");
    assert_eq!(proxy.live(), 2, "a blackhole keeps connections open");

    proxy.restore();
    let mut back = [0; 4];
    timeout(PATIENCE, old.read_exact(&mut back)).await.unwrap().unwrap();
    assert_eq!(&back, b"held");
    timeout(PATIENCE, new.read_exact(&mut back)).await.unwrap().unwrap();
    assert_eq!(&back, b"late");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_delays_each_direction_by_about_the_set_amount() {
    let proxy = FaultProxy::start(echo_server().await).await;
    let mut stream = TcpStream::connect(proxy.addr()).await.unwrap();
    echo(&mut stream, b"warm").await;

    proxy.latency(Duration::from_millis(200));
    let started = Instant::now();
    echo(&mut stream, b"slow").await;
    let round_trip = started.elapsed();
    // Both directions are delayed: about 400 ms.
    assert!(round_trip >= Duration::from_millis(400), "{round_trip:?}");
    assert!(round_trip < Duration::from_millis(1_500), "{round_trip:?}");

    proxy.latency(Duration::ZERO);
    let started = Instant::now();
    echo(&mut stream, b"fast").await;
    assert!(started.elapsed() < Duration::from_millis(150), "{:?}", started.elapsed());
}

async fn select_one(pool: &PgPool) -> Result<i32, sqlx::Error> {
    sqlx::query_scalar("SELECT 1").fetch_one(pool).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_through_the_proxy_fails_while_cut_and_answers_after_restore() {
    let pg = PrivatePostgres::start().await.unwrap();
    let proxy = FaultProxy::start(("127.0.0.1", pg.port())).await;
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_secs(2))
        .connect(&format!("postgres://postgres@127.0.0.1:{}/postgres", proxy.port()))
        .await
        .unwrap();
    assert_eq!(select_one(&pool).await.unwrap(), 1);

    proxy.cut();
    let while_cut = timeout(Duration::from_secs(10), select_one(&pool)).await.expect("fails in time");
    assert!(while_cut.is_err(), "SELECT 1 answered through a cut proxy");

    proxy.restore();
    assert_eq!(select_one(&pool).await.unwrap(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_postgres_keeps_its_data_across_a_stop_and_a_crash() {
    let pg = PrivatePostgres::start().await.unwrap();
    let mut conn = PgConnection::connect(&pg.url()).await.unwrap();
    sqlx::query("CREATE TABLE kept (x int)").execute(&mut conn).await.unwrap();
    sqlx::query("INSERT INTO kept VALUES (42)").execute(&mut conn).await.unwrap();
    conn.close().await.unwrap();

    pg.stop().await.unwrap();
    let refused = TcpStream::connect(("127.0.0.1", pg.port())).await.unwrap_err();
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);

    pg.start_again().await.unwrap();
    let mut conn = PgConnection::connect(&pg.url()).await.unwrap();
    let x: i32 = sqlx::query_scalar("SELECT x FROM kept").fetch_one(&mut conn).await.unwrap();
    assert_eq!(x, 42);
    sqlx::query("INSERT INTO kept VALUES (43)").execute(&mut conn).await.unwrap();
    drop(conn);

    // A crash (no checkpoint) keeps committed rows too: the next start replays the WAL.
    pg.kill().await.unwrap();
    pg.start_again().await.unwrap();
    let mut conn = PgConnection::connect(&pg.url()).await.unwrap();
    let sum: i64 = sqlx::query_scalar("SELECT sum(x) FROM kept").fetch_one(&mut conn).await.unwrap();
    assert_eq!(sum, 85);
    conn.close().await.unwrap();

    let data_dir = pg.data_dir();
    drop(pg);
    assert!(!data_dir.exists(), "the data directory outlived the server");
}
