//! One active check: TCP connect, or HTTP/1.1 GET with status and body expectations, under a timeout.

use std::net::SocketAddr;

use bytes::Bytes;
use http::header::{CONNECTION, HOST, USER_AGENT};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use padis_model::{HealthCheck, HealthKind};
use thiserror::Error;
use tokio::net::TcpStream;

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

/// Runs `check` once against `addr`.
pub async fn probe(addr: SocketAddr, check: &HealthCheck) -> Result<(), ProbeError> {
    let run = async {
        match check.kind {
            HealthKind::Tcp => TcpStream::connect(addr).await.map(drop).map_err(ProbeError::Connect),
            HealthKind::Http => http_probe(addr, check).await,
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

async fn http_probe(addr: SocketAddr, check: &HealthCheck) -> Result<(), ProbeError> {
    let stream = TcpStream::connect(addr).await.map_err(ProbeError::Connect)?;
    let _ = stream.set_nodelay(true);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    let _conn = AbortOnDrop(tokio::spawn(async move {
        let _ = conn.await;
    }));
    let host = check.host.clone().unwrap_or_else(|| addr.to_string());
    let req = http::Request::get(check.path.as_str())
        .header(HOST, host)
        .header(USER_AGENT, "padis-health-check")
        .header(CONNECTION, "close")
        .body(Empty::<Bytes>::new())?;
    let resp = sender.send_request(req).await?;
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
