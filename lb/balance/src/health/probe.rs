//! One active check: TCP connect, or an HTTP GET (HTTP/1.1 or h2, plaintext or TLS) with status and body
//! expectations, all under the check's timeout.

use std::net::SocketAddr;

use bytes::Bytes;
use http::header::{CONNECTION, HOST, USER_AGENT};
use http::Response;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use padis_model::{HealthCheck, HealthKind, UpstreamProtocol};
use rustls_pki_types::ServerName;
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use super::transport::{CheckTransport, TlsSetup, TransportError};

/// Largest body read when looking for `expect_body`.
const MAX_BODY: usize = 1024 * 1024;

/// Why a check failed.
#[derive(Debug, Error)]
pub enum ProbeError {
    /// No answer within the check's timeout.
    #[error("timed out")]
    Timeout,
    /// TCP connect failed.
    #[error("connect: {0}")]
    Connect(std::io::Error),
    /// The TLS handshake failed (certificate, name, protocol).
    #[error("tls: {0}")]
    Tls(std::io::Error),
    /// The TLS transport could not be set up (bad CA file, server name).
    #[error("{0}")]
    Transport(#[from] TransportError),
    /// The check's transport could not be set up earlier (message of the [`TransportError`]).
    #[error("{0}")]
    Setup(String),
    /// The HTTP exchange failed.
    #[error("http: {0}")]
    Http(#[from] hyper::Error),
    /// The request could not be built (bad path or host).
    #[error("bad check request: {0}")]
    Request(#[from] http::Error),
    /// Unexpected status.
    #[error("status {0}")]
    Status(u16),
    /// The body could not be read (or exceeded the limit).
    #[error("body: {0}")]
    Body(String),
    /// The body does not contain `expect_body`.
    #[error("body does not contain the expected string")]
    BodyMismatch,
}

/// Runs `check` once against `addr` in plaintext HTTP/1.1 (or TCP).
pub async fn probe(addr: SocketAddr, check: &HealthCheck) -> Result<(), ProbeError> {
    probe_with(addr, check, &CheckTransport::default()).await
}

/// Runs `check` once against `addr` over `transport`.
pub async fn probe_with(addr: SocketAddr, check: &HealthCheck, transport: &CheckTransport) -> Result<(), ProbeError> {
    let tls = match &transport.tls {
        Some(t) if check.kind == HealthKind::Http => Some(t.setup(transport.protocol)?),
        _ => None,
    };
    probe_prepared(addr, check, transport.protocol, tls.as_ref()).await
}

/// Runs `check` with a TLS connector already built (checkers build it once).
pub(crate) async fn probe_prepared(
    addr: SocketAddr,
    check: &HealthCheck,
    protocol: UpstreamProtocol,
    tls: Option<&TlsSetup>,
) -> Result<(), ProbeError> {
    // `check port`: the backend's other port (its address keeps the target's identity).
    let addr = check.port.map_or(addr, |p| SocketAddr::new(addr.ip(), p));
    let run = async {
        let stream = TcpStream::connect(addr).await.map_err(ProbeError::Connect)?;
        if check.kind == HealthKind::Tcp {
            return Ok(());
        }
        let _ = stream.set_nodelay(true);
        match tls {
            Some(t) => {
                let name = t.name_for(addr);
                // Without a configured Host, a TLS check names the server it verifies (virtual hosts).
                let host = match (&check.host, &name) {
                    (Some(h), _) => h.clone(),
                    (None, ServerName::DnsName(d)) => d.as_ref().to_string(),
                    (None, _) => addr.to_string(),
                };
                let io = t.connector.connect(name, stream).await.map_err(ProbeError::Tls)?;
                http_exchange(io, host, check, protocol, "https").await
            }
            None => {
                let host = check.host.clone().unwrap_or_else(|| addr.to_string());
                http_exchange(stream, host, check, protocol, "http").await
            }
        }
    };
    tokio::time::timeout(check.timeout, run).await.map_err(|_| ProbeError::Timeout)?
}

/// Aborts the connection task when the probe ends (also on timeout).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn http_exchange<S>(
    io: S,
    host: String,
    check: &HealthCheck,
    protocol: UpstreamProtocol,
    scheme: &str,
) -> Result<(), ProbeError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (resp, _conn): (Response<Incoming>, AbortOnDrop) = match protocol {
        UpstreamProtocol::Http1 => {
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
            let guard = AbortOnDrop(tokio::spawn(async move {
                let _ = conn.await;
            }));
            let req = http::Request::get(check.path.as_str())
                .header(HOST, host)
                .header(USER_AGENT, "padis-health-check")
                .header(CONNECTION, "close")
                .body(Empty::<Bytes>::new())?;
            (sender.send_request(req).await?, guard)
        }
        UpstreamProtocol::H2 => {
            let (mut sender, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io)).await?;
            let guard = AbortOnDrop(tokio::spawn(async move {
                let _ = conn.await;
            }));
            let req = http::Request::get(format!("{scheme}://{host}{}", check.path))
                .header(USER_AGENT, "padis-health-check")
                .body(Empty::<Bytes>::new())?;
            (sender.send_request(req).await?, guard)
        }
    };
    check_response(resp, check).await
}

async fn check_response(resp: Response<Incoming>, check: &HealthCheck) -> Result<(), ProbeError> {
    let status = resp.status().as_u16();
    let status_ok = match check.expect_status {
        Some(s) => status == s,
        None => (200..400).contains(&status),
    };
    if !status_ok {
        return Err(ProbeError::Status(status));
    }
    if let Some(needle) = check.expect_body.as_deref() {
        let body = Limited::new(resp.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| ProbeError::Body(e.to_string()))?
            .to_bytes();
        if !contains(&body, needle.as_bytes()) {
            return Err(ProbeError::BodyMismatch);
        }
    }
    Ok(())
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || hay.windows(needle.len()).any(|w| w == needle)
}
