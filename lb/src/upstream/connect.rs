//! Opening connections to backends: TCP (no Nagle, keep-alive probes) with the group's connect timeout, then TLS
//! when the group asks for it (ALPN from the group protocol, the configured server name or the backend IP).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use padis_model::{BackendGroup, UpstreamProtocol};
use rustls_pki_types::ServerName;
use socket2::{SockRef, TcpKeepalive};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tokio_util::either::Either;

use crate::error::L7Error;
use crate::tls;

/// A connection to a backend: TCP, or TLS over TCP.
pub(crate) type UpstreamStream = Either<TcpStream, TlsStream<TcpStream>>;

/// Idle time before TCP keep-alive probes on backend connections.
const TCP_KEEPALIVE: Duration = Duration::from_secs(60);

/// Why a backend connection could not be opened (nothing was sent: the request may go elsewhere).
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnectError {
    /// The TCP connect or the TLS handshake took longer than the group's `connect_timeout`.
    #[error("connect timed out after {0:?}")]
    Timeout(Duration),
    /// The TCP connect failed.
    #[error("tcp connect: {0}")]
    Tcp(#[source] std::io::Error),
    /// The TLS handshake failed.
    #[error("tls handshake: {0}")]
    Tls(#[source] std::io::Error),
    /// The HTTP/2 connection preface failed.
    #[error("http/2 handshake: {0}")]
    Handshake(#[source] hyper::Error),
}

struct TlsSetup {
    connector: TlsConnector,
    server_name: Option<ServerName<'static>>,
}

/// Opens connections to the backends of one group.
pub(crate) struct Connector {
    tls: Option<TlsSetup>,
    timeout: Duration,
}

impl Connector {
    /// The connector of group `g` (reads its CA file when it has TLS).
    pub fn new(g: &BackendGroup) -> Result<Connector, L7Error> {
        let tls = match &g.tls {
            None => None,
            Some(t) => {
                let mut cfg = tls::client_config(t)?;
                cfg.alpn_protocols = match g.protocol {
                    UpstreamProtocol::H2 => vec![b"h2".to_vec()],
                    UpstreamProtocol::Http1 => vec![b"http/1.1".to_vec()],
                };
                let server_name = match t.server_name.as_deref() {
                    Some(name) => Some(ServerName::try_from(name.to_string()).map_err(|source| {
                        L7Error::ServerName { group: g.name.clone(), name: name.to_string(), source }
                    })?),
                    None => None,
                };
                Some(TlsSetup { connector: TlsConnector::from(Arc::new(cfg)), server_name })
            }
        };
        Ok(Connector { tls, timeout: g.connect_timeout })
    }

    /// Connects to `addr` (TCP, then TLS if configured) within the connect timeout.
    pub async fn connect(&self, addr: SocketAddr) -> Result<UpstreamStream, ConnectError> {
        let open = async {
            let tcp = TcpStream::connect(addr).await.map_err(ConnectError::Tcp)?;
            let _ = tcp.set_nodelay(true);
            let _ = SockRef::from(&tcp).set_tcp_keepalive(&TcpKeepalive::new().with_time(TCP_KEEPALIVE));
            match &self.tls {
                None => Ok(Either::Left(tcp)),
                Some(t) => {
                    let name = t.server_name.clone().unwrap_or_else(|| ServerName::IpAddress(addr.ip().into()));
                    let stream = t.connector.connect(name, tcp).await.map_err(ConnectError::Tls)?;
                    Ok(Either::Right(stream))
                }
            }
        };
        match tokio::time::timeout(self.timeout, open).await {
            Ok(r) => r,
            Err(_) => Err(ConnectError::Timeout(self.timeout)),
        }
    }
}
