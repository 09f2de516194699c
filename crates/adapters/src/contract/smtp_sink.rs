//! A real SMTP server for tests: it speaks the protocol over TCP (RFC 5321: EHLO/HELO, MAIL,
//! RCPT, DATA with dot-unstuffing, RSET, NOOP, QUIT) and keeps every delivered message, so a
//! test reads what a mail client would have received. It can answer the first N transactions
//! with a temporary failure (451) to exercise retries.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio_util::task::AbortOnDropHandle;

/// One delivered message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivered {
    pub mail_from: String,
    pub rcpt_to: Vec<String>,
    /// Headers and body as sent (CRLF line ends, dot-unstuffed).
    pub data: String,
}

impl Delivered {
    /// The value of header `name` (case-insensitive), unfolded.
    pub fn header(&self, name: &str) -> Option<String> {
        let head = self.data.split("\r\n\r\n").next()?;
        let mut value: Option<String> = None;
        for line in head.split("\r\n") {
            if let Some(v) = value.as_mut()
                && (line.starts_with(' ') || line.starts_with('\t'))
            {
                v.push(' ');
                v.push_str(line.trim());
                continue;
            }
            if value.is_some() {
                break;
            }
            if let Some((key, v)) = line.split_once(':')
                && key.eq_ignore_ascii_case(name)
            {
                value = Some(v.trim().to_owned());
            }
        }
        value
    }

    /// The body after the headers, as sent.
    pub fn body(&self) -> &str {
        self.data.split_once("\r\n\r\n").map_or("", |(_, body)| body)
    }

    /// The body as text: quoted-printable decoded when the message says so.
    pub fn text(&self) -> String {
        let quoted = self
            .header("Content-Transfer-Encoding")
            .is_some_and(|e| e.eq_ignore_ascii_case("quoted-printable"));
        if !quoted {
            return self.body().to_owned();
        }
        let joined = self.body().replace("=\r\n", "");
        let bytes = joined.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
            match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
                (b'=', Some(byte)) => {
                    out.push(byte);
                    i += 3;
                }
                (byte, _) => {
                    out.push(byte);
                    i += 1;
                }
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    }
}

#[derive(Default)]
struct State {
    delivered: Mutex<Vec<Delivered>>,
    arrived: Notify,
    fail_first: AtomicUsize,
}

/// A running sink; stops when dropped.
pub struct SmtpSink {
    port: u16,
    state: Arc<State>,
    _server: AbortOnDropHandle<()>,
}

impl std::fmt::Debug for SmtpSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpSink").field("port", &self.port).finish_non_exhaustive()
    }
}

impl SmtpSink {
    /// Listens on a free loopback port.
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("binding the SMTP sink");
        let port = listener.local_addr().expect("sink address").port();
        let state = Arc::new(State::default());
        let shared = Arc::clone(&state);
        let server = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let state = Arc::clone(&shared);
                tokio::spawn(async move {
                    // A client that hangs up mid-dialogue is not the sink's problem.
                    let _ = session(stream, &state).await;
                });
            }
        });
        Self { port, state, _server: AbortOnDropHandle::new(server) }
    }

    /// `smtp://127.0.0.1:PORT` (plain SMTP, no TLS).
    pub fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.port)
    }

    /// Answers the next `n` transactions' DATA with `451` (a temporary failure).
    pub fn fail_next(&self, n: usize) {
        self.state.fail_first.store(n, Ordering::SeqCst);
    }

    pub fn delivered(&self) -> Vec<Delivered> {
        self.state.delivered.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Waits until at least `n` messages arrived; panics after `timeout`.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Delivered> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.state.arrived.notified();
            let delivered = self.delivered();
            if delivered.len() >= n {
                return delivered;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!("expected {n} message(s) within {timeout:?}, got {}", self.delivered().len());
            }
        }
    }
}

async fn session(stream: TcpStream, state: &State) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read);
    write.write_all(b"220 userexport-test-sink ESMTP\r\n").await?;
    let mut mail_from = String::new();
    let mut rcpt_to = Vec::new();
    let mut line = String::new();
    loop {
        line.clear();
        if lines.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let command = line.trim_end().to_owned();
        let verb = command.split_whitespace().next().unwrap_or("").to_ascii_uppercase();
        match verb.as_str() {
            "EHLO" => write.write_all(b"250-userexport-test-sink\r\n250 8BITMIME\r\n").await?,
            "HELO" | "NOOP" => write.write_all(b"250 OK\r\n").await?,
            "RSET" => {
                mail_from.clear();
                rcpt_to.clear();
                write.write_all(b"250 OK\r\n").await?;
            }
            "MAIL" => {
                mail_from = address(&command);
                rcpt_to.clear();
                write.write_all(b"250 OK\r\n").await?;
            }
            "RCPT" => {
                rcpt_to.push(address(&command));
                write.write_all(b"250 OK\r\n").await?;
            }
            "DATA" => {
                write.write_all(b"354 End data with <CR><LF>.<CR><LF>\r\n").await?;
                let data = read_data(&mut lines).await?;
                let failing = state
                    .fail_first
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok();
                if failing {
                    write.write_all(b"451 4.3.0 Try again later\r\n").await?;
                } else {
                    let message = Delivered {
                        mail_from: mail_from.clone(),
                        rcpt_to: std::mem::take(&mut rcpt_to),
                        data,
                    };
                    state.delivered.lock().unwrap_or_else(PoisonError::into_inner).push(message);
                    state.arrived.notify_waiters();
                    write.write_all(b"250 OK queued\r\n").await?;
                }
            }
            "QUIT" => {
                write.write_all(b"221 Bye\r\n").await?;
                return Ok(());
            }
            _ => write.write_all(b"502 Command not implemented\r\n").await?,
        }
    }
}

/// `MAIL FROM:<a@b>` -> `a@b`.
fn address(command: &str) -> String {
    let start = command.find('<').map_or(0, |i| i + 1);
    let end = command[start..].find('>').map_or(command.len(), |i| start + i);
    command[start..end].to_owned()
}

/// Lines up to the lone `.`, dot-unstuffed.
async fn read_data(lines: &mut BufReader<tokio::net::tcp::OwnedReadHalf>) -> std::io::Result<String> {
    let mut data = String::new();
    let mut line = String::new();
    loop {
        line.clear();
        if lines.read_line(&mut line).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        if line == ".\r\n" || line == ".\n" {
            return Ok(data);
        }
        data.push_str(line.strip_prefix('.').unwrap_or(&line));
    }
}
