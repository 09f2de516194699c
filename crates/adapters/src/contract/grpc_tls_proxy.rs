//! A TLS-terminating gRPC proxy for tests of secured Temporal connections: it accepts HTTP/2
//! over TLS with the test's certificate (and, for mTLS, only clients with a certificate of the
//! test's CA), records every call's request headers (`authorization` carries the API key), and
//! forwards the calls in plain text to the server behind it, as a load balancer in front of a
//! Temporal cluster does. It speaks HTTP/2 itself rather than copying bytes, because headers
//! are only visible after HTTP/2 decoding (HPACK).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use h2::{RecvStream, SendStream};
use http::{HeaderMap, Request, Response};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{RootCertStore, ServerConfig};

/// The proxy's certificate (PEM) and, for mTLS, the CA its clients' certificates must come from.
#[derive(Debug, Clone)]
pub struct TlsProxyConfig {
    pub cert_pem: String,
    pub key_pem: String,
    pub client_ca_pem: Option<String>,
}

/// What the proxy saw, shared with its connection tasks.
#[derive(Debug, Default)]
struct Seen {
    headers: Mutex<Vec<HeaderMap>>,
    refused: Mutex<Vec<String>>,
}

/// A running proxy; stops when dropped.
#[derive(Debug)]
pub struct GrpcTlsProxy {
    addr: SocketAddr,
    seen: Arc<Seen>,
    task: JoinHandle<()>,
}

impl GrpcTlsProxy {
    /// Listens on a free loopback port and forwards to `upstream` (`host:port`, plain h2c).
    pub async fn start(upstream: &str, config: &TlsProxyConfig) -> Self {
        let acceptor = TlsAcceptor::from(Arc::new(server_config(config)));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("binding the TLS proxy");
        let addr = listener.local_addr().expect("the proxy's address");
        let upstream = upstream.trim_start_matches("http://").trim_end_matches('/').to_owned();
        let seen = Arc::new(Seen::default());
        let shared = Arc::clone(&seen);
        let task = tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let (acceptor, upstream, seen) = (acceptor.clone(), upstream.clone(), Arc::clone(&shared));
                tokio::spawn(async move {
                    match acceptor.accept(socket).await {
                        Ok(tls) => {
                            if let Err(err) = serve(tls, &upstream, &seen).await {
                                tracing::debug!(error = %err, "TLS proxy connection ended");
                            }
                        }
                        Err(err) => seen.refused.lock().expect("lock").push(err.to_string()),
                    }
                });
            }
        });
        Self { addr, seen, task }
    }

    /// `127.0.0.1:<port>`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The request headers of every call so far.
    pub fn headers(&self) -> Vec<HeaderMap> {
        self.seen.headers.lock().expect("lock").clone()
    }

    /// Why TLS handshakes failed (e.g. a client without a certificate under mTLS).
    pub fn refused(&self) -> Vec<String> {
        self.seen.refused.lock().expect("lock").clone()
    }
}

impl Drop for GrpcTlsProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn server_config(config: &TlsProxyConfig) -> ServerConfig {
    // Explicit, so the test kit does not depend on which provider is the process default.
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let certs = CertificateDer::pem_slice_iter(config.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .expect("the proxy's certificate PEM");
    let key = PrivateKeyDer::from_pem_slice(config.key_pem.as_bytes()).expect("the proxy's key PEM");
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .expect("TLS versions");
    let builder = match &config.client_ca_pem {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(ca.as_bytes()) {
                roots.add(cert.expect("the client CA PEM")).expect("the client CA");
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .expect("the client certificate verifier");
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut server = builder.with_single_cert(certs, key).expect("the proxy's certificate and key");
    server.alpn_protocols = vec![b"h2".to_vec()];
    server
}

/// One client connection: every call is recorded and forwarded on one upstream connection.
async fn serve<S>(io: S, upstream: &str, seen: &Seen) -> Result<(), Box<dyn std::error::Error + Send + Sync>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut downstream = h2::server::handshake(io).await?;
    let (sender, connection) = h2::client::handshake(TcpStream::connect(upstream).await?).await?;
    tokio::spawn(async move {
        if let Err(err) = connection.await {
            tracing::debug!(error = %err, "TLS proxy upstream connection ended");
        }
    });
    while let Some(call) = downstream.accept().await {
        let (request, respond) = call?;
        seen.headers.lock().expect("lock").push(request.headers().clone());
        let sender = sender.clone();
        tokio::spawn(async move {
            if let Err(err) = forward(sender, request, respond).await {
                tracing::debug!(error = %err, "TLS proxy call ended");
            }
        });
    }
    Ok(())
}

async fn forward(
    sender: h2::client::SendRequest<Bytes>,
    request: Request<RecvStream>,
    mut respond: h2::server::SendResponse<Bytes>,
) -> Result<(), h2::Error> {
    let (parts, body) = request.into_parts();
    let end = body.is_end_stream();
    let mut sender = sender.ready().await?;
    let (response, upstream_body) = sender.send_request(Request::from_parts(parts, ()), end)?;
    let upload = async move { if end { Ok(()) } else { pipe(body, upstream_body).await } };
    let download = async move {
        let (parts, body) = response.await?.into_parts();
        let end = body.is_end_stream();
        let downstream_body = respond.send_response(Response::from_parts(parts, ()), end)?;
        if end { Ok(()) } else { pipe(body, downstream_body).await }
    };
    let (up, down) = tokio::join!(upload, download);
    up.and(down)
}

/// Copies a body and its trailers (gRPC's status travels in them).
async fn pipe(mut from: RecvStream, mut to: SendStream<Bytes>) -> Result<(), h2::Error> {
    while let Some(chunk) = from.data().await {
        let chunk = chunk?;
        let _ = from.flow_control().release_capacity(chunk.len());
        to.send_data(chunk, false)?;
    }
    match from.trailers().await? {
        Some(trailers) => to.send_trailers(trailers),
        None => to.send_data(Bytes::new(), true),
    }
}
