//! How active HTTP checks reach a target: HTTP/1.1 or HTTP/2, in plaintext or over TLS, as the proxy does for
//! the group (a check in plaintext HTTP/1.1 to a TLS or h2-only backend would mark a healthy backend down).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use padis_model::{UpstreamProtocol, UpstreamTls};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use thiserror::Error;
use tokio_rustls::TlsConnector;

/// The transport of a target's active HTTP checks (TCP checks only connect).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CheckTransport {
    /// HTTP version spoken (h2: prior knowledge in plaintext, ALPN `h2` over TLS).
    pub protocol: UpstreamProtocol,
    /// TLS towards the backend, if the group uses it.
    pub tls: Option<CheckTls>,
}

/// TLS settings of checks: the group's `tls`, with a relative CA path resolved against `base`.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckTls {
    /// The group's TLS settings.
    pub config: UpstreamTls,
    /// Directory relative CA paths are relative to (the config file's).
    pub base: PathBuf,
}

/// Why a TLS check transport cannot be set up.
#[derive(Debug, Error)]
pub enum TransportError {
    /// The CA file cannot be read or parsed.
    #[error("CA file {path}: {message}")]
    Ca {
        /// The resolved path.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// The client certificate or its key file cannot be read or parsed.
    #[error("client certificate file {path}: {message}")]
    ClientCert {
        /// The resolved path.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// `server_name` is not a valid DNS name or IP address.
    #[error("invalid TLS server name `{0}`")]
    ServerName(String),
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// A ready TLS connector and the name to verify.
#[derive(Clone)]
pub(crate) struct TlsSetup {
    pub connector: TlsConnector,
    /// Fixed name from the config; the backend IP when absent.
    pub server_name: Option<ServerName<'static>>,
}

impl TlsSetup {
    pub(crate) fn name_for(&self, addr: SocketAddr) -> ServerName<'static> {
        self.server_name.clone().unwrap_or_else(|| ServerName::IpAddress(addr.ip().into()))
    }
}

/// The rustls client config towards a group's backends (no ALPN: callers set it from the group's protocol):
/// TLS 1.2 and 1.3, the group's CA (a relative path resolved against `base`), or no verification with
/// `insecure_skip_verify`; the group's client certificate (`cert`, `key`) for backends that ask for one (backend
/// mTLS). Used by the health checks and the L7 proxy alike.
pub fn client_tls_config(tls: &UpstreamTls, base: &Path) -> Result<rustls::ClientConfig, TransportError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder =
        rustls::ClientConfig::builder_with_provider(provider.clone()).with_safe_default_protocol_versions()?;
    let builder = if tls.insecure_skip_verify {
        builder.dangerous().with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
    } else {
        let mut roots = rustls::RootCertStore::empty();
        if let Some(ca) = &tls.ca {
            for cert in read_pem(&base.join(ca))? {
                roots.add(cert)?;
            }
        }
        builder.with_root_certificates(roots)
    };
    match (&tls.cert, &tls.key) {
        // Backend mTLS: the client certificate shown to backends that ask for one.
        (Some(cert), Some(key)) => {
            let chain = read_pem(&base.join(cert)).map_err(|e| match e {
                TransportError::Ca { path, message } => TransportError::ClientCert { path, message },
                e => e,
            })?;
            let key_path = base.join(key);
            let key = PrivateKeyDer::from_pem_file(&key_path)
                .map_err(|e| TransportError::ClientCert { path: key_path, message: e.to_string() })?;
            Ok(builder.with_client_auth_cert(chain, key)?)
        }
        _ => Ok(builder.with_no_client_auth()),
    }
}

impl CheckTls {
    /// Builds the connector (reads the CA file).
    pub(crate) fn setup(&self, protocol: UpstreamProtocol) -> Result<TlsSetup, TransportError> {
        let mut config = client_tls_config(&self.config, &self.base)?;
        config.alpn_protocols = match protocol {
            UpstreamProtocol::H2 => vec![b"h2".to_vec()],
            UpstreamProtocol::Http1 => vec![b"http/1.1".to_vec()],
        };
        let server_name = match &self.config.server_name {
            Some(n) => Some(ServerName::try_from(n.clone()).map_err(|_| TransportError::ServerName(n.clone()))?),
            None => None,
        };
        Ok(TlsSetup { connector: TlsConnector::from(Arc::new(config)), server_name })
    }
}

fn read_pem(path: &Path) -> Result<Vec<CertificateDer<'static>>, TransportError> {
    let err = |m: String| TransportError::Ca { path: path.to_path_buf(), message: m };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| err(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(e.to_string()))?;
    if certs.is_empty() {
        return Err(err("no certificate in it".into()));
    }
    Ok(certs)
}

/// Accepts any backend certificate (`insecure_skip_verify`), still checking handshake signatures.
#[derive(Debug)]
struct NoVerify(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
