//! Test helpers for the L7 proxy: an in-process proxy fed from config text, real HTTP backends on 127.0.0.1,
//! test certificates made with rcgen, and small clients (hyper, raw TCP, curl).

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use padis_balance::HealthRegistry;
use padis_lb::{L7Handle, L7Plane};
use padis_model::{Snapshot, SnapshotStore};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_util::sync::CancellationToken;

/// An in-process L7 plane fed by a [`SnapshotStore`].
pub struct Proxy {
    store: SnapshotStore,
    handle: Option<L7Handle>,
    shutdown: CancellationToken,
    /// The registry its metrics go to.
    pub registry: prometheus::Registry,
    generation: u64,
    /// Temp dir for certificates and files the config names (relative paths resolve here).
    pub dir: PathBuf,
}

/// Parses config text (relative paths resolve in `dir`) into a snapshot of `generation`.
pub fn snapshot(config: &str, dir: &Path, generation: u64) -> Snapshot {
    let valid = padis_model::parse_config(config, "test.toml", dir).unwrap_or_else(|e| panic!("config: {e}"));
    Snapshot::new(valid, generation, Vec::new())
}

impl Proxy {
    /// Starts a plane serving `config`.
    pub async fn start(config: &str, dir: &Path) -> Proxy {
        let store = SnapshotStore::new(snapshot(config, dir, 1));
        let registry = prometheus::Registry::new();
        let health = HealthRegistry::new(&registry).expect("health registry");
        let shutdown = CancellationToken::new();
        let tickets = padis_tickets::TicketKeys::new(std::time::Duration::from_secs(3600));
        let handle = L7Plane::start(store.reader(), health, &registry, tickets, shutdown.clone())
            .await
            .expect("L7 plane starts");
        Proxy { store, handle: Some(handle), shutdown, registry, generation: 1, dir: dir.to_path_buf() }
    }

    /// The bound address of listener `name`.
    pub fn addr(&self, name: &str) -> SocketAddr {
        self.addrs().get(name).copied().unwrap_or_else(|| panic!("listener {name} not bound"))
    }

    /// All bound listeners.
    pub fn addrs(&self) -> HashMap<String, SocketAddr> {
        self.handle.as_ref().map(|h| h.local_addrs()).unwrap_or_default()
    }

    /// Publishes a new config.
    pub fn publish(&mut self, config: &str) {
        self.generation += 1;
        self.store.publish(snapshot(config, &self.dir, self.generation));
    }

    /// Publishes a new config and waits until listener changes settle.
    pub async fn publish_settled(&mut self, config: &str) {
        self.publish(config);
        tokio::time::sleep(Duration::from_millis(150)).await;
    }

    /// Sum of the samples of metric `name` whose labels include all of `labels`.
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let mut total = 0.0;
        for fam in self.registry.gather() {
            if fam.name() != name {
                continue;
            }
            for m in fam.get_metric() {
                let ok = labels.iter().all(|(k, v)| m.get_label().iter().any(|l| l.name() == *k && l.value() == *v));
                if !ok {
                    continue;
                }
                total += if m.counter.is_some() {
                    m.get_counter().value()
                } else if m.gauge.is_some() {
                    m.get_gauge().value()
                } else if m.histogram.is_some() {
                    m.get_histogram().get_sample_count() as f64
                } else {
                    0.0
                };
            }
        }
        total
    }

    /// Requests shutdown and waits for the plane to finish.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(h) = self.handle.take() {
            let _ = tokio::time::timeout(Duration::from_secs(20), h.wait()).await;
        }
    }

    /// The shutdown token (to test graceful shutdown).
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Takes the handle (to await `wait()` separately).
    pub fn take_handle(&mut self) -> Option<L7Handle> {
        self.handle.take()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// How a test backend behaves.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum BackendKind {
    /// HTTP/1.1 and h2c (prior knowledge).
    Plain,
    /// TLS (h2 and http/1.1 via ALPN) with the given certificate.
    Tls,
}

/// A real HTTP backend on 127.0.0.1. Paths: `/slow/<ms>` answers after a delay, `/status/<code>` answers that
/// code, `/echo-body` answers the request body, anything else answers a description of the request. Requests with
/// `Upgrade` get a 101 and an echo of the raw bytes. Each answer has `x-backend: <name>`.
pub struct Backend {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its name.
    pub name: String,
    hits: Arc<AtomicUsize>,
    conns: Arc<AtomicUsize>,
    stop: CancellationToken,
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Backend {
    /// Starts a plaintext backend.
    pub async fn start(name: &str) -> Backend {
        Self::start_with(name, None).await
    }

    /// Starts a backend; with `tls`, it terminates TLS with that config.
    pub async fn start_with(name: &str, tls: Option<Arc<rustls::ServerConfig>>) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind backend");
        let addr = listener.local_addr().expect("addr");
        let hits = Arc::new(AtomicUsize::new(0));
        let conns = Arc::new(AtomicUsize::new(0));
        let stop = CancellationToken::new();
        let (h, s, n, c) = (hits.clone(), stop.clone(), name.to_string(), conns.clone());
        tokio::spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    r = listener.accept() => match r { Ok(x) => x, Err(_) => continue },
                    _ = s.cancelled() => break,
                };
                c.fetch_add(1, Ordering::SeqCst);
                let (h, n, s2, tls) = (h.clone(), n.clone(), s.clone(), tls.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req| backend_answer(n.clone(), h.clone(), req));
                    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    match tls {
                        None => {
                            let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc);
                            tokio::select! { _ = conn => {}, _ = s2.cancelled() => {} }
                        }
                        Some(cfg) => {
                            let Ok(tls) = tokio_rustls::TlsAcceptor::from(cfg).accept(stream).await else { return };
                            let conn = builder.serve_connection_with_upgrades(TokioIo::new(tls), svc);
                            tokio::select! { _ = conn => {}, _ = s2.cancelled() => {} }
                        }
                    }
                });
            }
        });
        Backend { addr, name: name.to_string(), hits, conns, stop }
    }

    /// Requests it answered.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// TCP connections it accepted.
    pub fn connections(&self) -> usize {
        self.conns.load(Ordering::SeqCst)
    }

    /// Stops accepting and closes its connections.
    pub fn kill(&self) {
        self.stop.cancel();
    }
}

async fn backend_answer(
    name: String,
    hits: Arc<AtomicUsize>,
    mut req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    hits.fetch_add(1, Ordering::SeqCst);
    let path = req.uri().path().to_string();
    if req.headers().contains_key(http::header::UPGRADE) {
        let on = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(up) = on.await {
                let mut io = TokioIo::new(up);
                let mut buf = [0u8; 4096];
                while let Ok(n) = io.read(&mut buf).await {
                    if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            }
        });
        let mut r = Response::new(Full::new(Bytes::new()));
        *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        r.headers_mut().insert(http::header::UPGRADE, http::HeaderValue::from_static("echo"));
        r.headers_mut().insert(http::header::CONNECTION, http::HeaderValue::from_static("upgrade"));
        return Ok(r);
    }
    let mut status = StatusCode::OK;
    let body = if let Some(ms) = path.strip_prefix("/slow/") {
        tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(100))).await;
        format!("backend={name}\nslow={ms}\n")
    } else if let Some(code) = path.strip_prefix("/status/") {
        status = code.parse::<u16>().ok().and_then(|c| StatusCode::from_u16(c).ok()).unwrap_or(StatusCode::OK);
        format!("backend={name}\nstatus={code}\n")
    } else if path == "/echo-body" {
        let (_, body) = req.into_parts();
        let bytes = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        let mut r = Response::new(Full::new(bytes));
        r.headers_mut().insert("x-backend", http::HeaderValue::from_str(&name).expect("name"));
        return Ok(r);
    } else {
        let mut s = format!("backend={name}\npath={}\nversion={:?}\n", req.uri(), req.version());
        for (k, v) in req.headers() {
            s.push_str(&format!("h:{}={}\n", k, v.to_str().unwrap_or("?")));
        }
        s
    };
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert("x-backend", http::HeaderValue::from_str(&name).expect("name"));
    Ok(r)
}

/// A response read by the test clients.
#[derive(Debug)]
pub struct Answer {
    /// Status code.
    pub status: u16,
    /// Headers (lowercase names).
    pub headers: http::HeaderMap,
    /// Body.
    pub body: String,
}

impl Answer {
    /// The `x-backend` header.
    pub fn backend(&self) -> String {
        self.headers.get("x-backend").and_then(|v| v.to_str().ok()).unwrap_or("").to_string()
    }

    /// A `h:<name>=` line of a backend's description.
    pub fn seen_header(&self, name: &str) -> Option<String> {
        let prefix = format!("h:{name}=");
        self.body.lines().find_map(|l| l.strip_prefix(&prefix)).map(str::to_string)
    }
}

/// A keep-alive HTTP/1.1 client connection (hyper).
pub struct H1Conn {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
}

impl H1Conn {
    /// Connects to `addr`.
    pub async fn connect(addr: SocketAddr) -> H1Conn {
        let stream = TcpStream::connect(addr).await.expect("connect proxy");
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.expect("h1 handshake");
        tokio::spawn(conn.with_upgrades());
        H1Conn { sender }
    }

    /// Sends a request.
    pub async fn send(&mut self, req: Request<Full<Bytes>>) -> Result<Answer, hyper::Error> {
        self.sender.ready().await?;
        let resp = self.sender.send_request(req).await?;
        read_answer(resp).await
    }

    /// GET `path` with `Host: host`.
    pub async fn get(&mut self, host: &str, path: &str) -> Result<Answer, hyper::Error> {
        self.send(get_req(host, path)).await
    }
}

/// A GET request for `host` and `path`.
pub fn get_req(host: &str, path: &str) -> Request<Full<Bytes>> {
    Request::builder().uri(path).header("host", host).body(Full::new(Bytes::new())).expect("request")
}

async fn read_answer(resp: Response<Incoming>) -> Result<Answer, hyper::Error> {
    let (parts, body) = resp.into_parts();
    let bytes = body.collect().await?.to_bytes();
    Ok(Answer { status: parts.status.as_u16(), headers: parts.headers, body: String::from_utf8_lossy(&bytes).into() })
}

/// One GET on a new HTTP/1.1 connection.
pub async fn get(addr: SocketAddr, host: &str, path: &str) -> Answer {
    H1Conn::connect(addr).await.get(host, path).await.expect("request")
}

/// An h2c (prior knowledge) client connection; clones send on the same connection.
#[derive(Clone)]
pub struct H2Conn {
    sender: hyper::client::conn::http2::SendRequest<Full<Bytes>>,
}

impl H2Conn {
    /// Connects to `addr` with HTTP/2 prior knowledge.
    pub async fn connect(addr: SocketAddr) -> H2Conn {
        let stream = TcpStream::connect(addr).await.expect("connect proxy");
        let (sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2 handshake");
        tokio::spawn(conn);
        H2Conn { sender }
    }

    /// GET `http://host/path`.
    pub async fn get(&mut self, host: &str, path: &str) -> Result<Answer, hyper::Error> {
        let req = Request::builder()
            .uri(format!("http://{host}{path}"))
            .version(http::Version::HTTP_2)
            .body(Full::new(Bytes::new()))
            .expect("request");
        self.sender.ready().await?;
        let resp = self.sender.send_request(req).await?;
        read_answer(resp).await
    }
}

/// Writes raw bytes and reads until the peer closes or `timeout` passes.
pub async fn raw_exchange(addr: SocketAddr, bytes: &[u8], timeout: Duration) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).await.expect("connect proxy");
    let _ = s.write_all(bytes).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(timeout, s.read_to_end(&mut out)).await;
    out
}

/// Runs curl with `args` (plus `-s -S --max-time 10`); returns (exit ok, stdout, stderr).
pub async fn curl(args: &[&str]) -> (bool, String, String) {
    let out = tokio::process::Command::new("curl")
        .args(["-s", "-S", "--max-time", "10"])
        .args(args)
        .kill_on_drop(true)
        .output()
        .await
        .expect("curl runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Test PKI: a CA and leaf certificates written as PEM files.
pub struct Pki {
    ca: rcgen::Issuer<'static, rcgen::KeyPair>,
    /// CA certificate PEM file.
    pub ca_pem: PathBuf,
    dir: PathBuf,
}

impl Pki {
    /// A new CA whose files go into `dir`.
    pub fn new(dir: &Path) -> Pki {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, "Padis test CA");
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.self_signed(&key).expect("ca cert");
        let ca_pem = dir.join("ca.pem");
        std::fs::write(&ca_pem, cert.pem()).expect("write ca");
        Pki { ca: rcgen::Issuer::new(params, key), ca_pem, dir: dir.to_path_buf() }
    }

    /// Issues a leaf for `names` (DNS names or IPs); writes `<file>.pem` and `<file>.key`, returns their paths.
    pub fn leaf(&self, file: &str, names: &[&str]) -> (PathBuf, PathBuf) {
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let mut params = rcgen::CertificateParams::new(names.clone()).expect("params");
        params.distinguished_name.push(rcgen::DnType::CommonName, names.first().cloned().unwrap_or_default());
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.ca).expect("leaf");
        let cert_path = self.dir.join(format!("{file}.pem"));
        let key_path = self.dir.join(format!("{file}.key"));
        std::fs::write(&cert_path, cert.pem()).expect("write cert");
        std::fs::write(&key_path, key.serialize_pem()).expect("write key");
        (cert_path, key_path)
    }

    /// Issues a client certificate (`clientAuth`) with subject `O=<org>,CN=<cn>` and serial `serial`; writes
    /// `<file>.pem` and `<file>.key`, returns their paths.
    pub fn client_leaf(&self, file: &str, cn: &str, org: &str, serial: u64) -> (PathBuf, PathBuf) {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.distinguished_name.push(rcgen::DnType::OrganizationName, org);
        params.distinguished_name.push(rcgen::DnType::CommonName, cn);
        params.serial_number = Some(rcgen::SerialNumber::from(serial));
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.ca).expect("client cert");
        let cert_path = self.dir.join(format!("{file}.pem"));
        let key_path = self.dir.join(format!("{file}.key"));
        std::fs::write(&cert_path, cert.pem()).expect("write cert");
        std::fs::write(&key_path, key.serialize_pem()).expect("write key");
        (cert_path, key_path)
    }

    /// Writes a CRL of this CA revoking the certificates of these serial numbers to `<file>` (PEM).
    pub fn crl(&self, file: &str, revoked: &[u64]) -> PathBuf {
        let params = rcgen::CertificateRevocationListParams {
            this_update: rcgen::date_time_ymd(2025, 1, 1),
            next_update: rcgen::date_time_ymd(2035, 1, 1),
            crl_number: rcgen::SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: revoked
                .iter()
                .map(|s| rcgen::RevokedCertParams {
                    serial_number: rcgen::SerialNumber::from(*s),
                    revocation_time: rcgen::date_time_ymd(2025, 6, 1),
                    reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        };
        let crl = params.signed_by(&self.ca).expect("crl");
        let path = self.dir.join(file);
        std::fs::write(&path, crl.pem().expect("crl pem")).expect("write crl");
        path
    }

    /// A rustls server config for a backend from a leaf written by [`Pki::leaf`].
    pub fn server_config(&self, file: &str) -> Arc<rustls::ServerConfig> {
        use rustls_pki_types::pem::PemObject;
        let certs = rustls_pki_types::CertificateDer::pem_file_iter(self.dir.join(format!("{file}.pem")))
            .expect("cert")
            .collect::<Result<Vec<_>, _>>()
            .expect("cert");
        let key = rustls_pki_types::PrivateKeyDer::from_pem_file(self.dir.join(format!("{file}.key"))).expect("key");
        let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .expect("server config");
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Arc::new(cfg)
    }

    /// A TLS client config trusting this CA, offering `alpn`.
    pub fn client_config(&self, alpn: &[&str]) -> Arc<rustls::ClientConfig> {
        use rustls_pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls_pki_types::CertificateDer::pem_file_iter(&self.ca_pem).expect("ca") {
            roots.add(c.expect("ca")).expect("add ca");
        }
        let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        cfg.alpn_protocols = alpn.iter().map(|a| a.as_bytes().to_vec()).collect();
        Arc::new(cfg)
    }
}

/// Result of a TLS connection made by [`tls_connect`].
pub struct TlsInfo {
    /// Negotiated ALPN protocol.
    pub alpn: Option<String>,
    /// Subject alternative DNS names of the served leaf.
    pub leaf_der: Vec<u8>,
    /// The stream, for further use.
    pub stream: tokio_rustls::client::TlsStream<TcpStream>,
}

/// Connects with TLS (SNI `sni`) and returns what was negotiated.
pub async fn tls_connect(addr: SocketAddr, cfg: Arc<rustls::ClientConfig>, sni: &str) -> std::io::Result<TlsInfo> {
    let tcp = TcpStream::connect(addr).await?;
    let name = rustls_pki_types::ServerName::try_from(sni.to_string())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let stream = tokio_rustls::TlsConnector::from(cfg).connect(name, tcp).await?;
    let (_, session) = stream.get_ref();
    let alpn = session.alpn_protocol().map(|p| String::from_utf8_lossy(p).into_owned());
    let leaf_der = session.peer_certificates().and_then(|c| c.first()).map(|c| c.to_vec()).unwrap_or_default();
    Ok(TlsInfo { alpn, leaf_der, stream })
}

/// A WebSocket echo server: every data message comes back, prefixed for text; pings are answered by
/// tungstenite itself, as is a close.
pub async fn ws_echo_backend() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(s).await else { return };
                while let Some(Ok(m)) = ws.next().await {
                    let reply = match m {
                        WsMessage::Text(t) => WsMessage::text(format!("echo: {t}")),
                        WsMessage::Binary(b) => WsMessage::Binary(b),
                        // Control frames (and the close reply) are tungstenite's: keep reading to flush them.
                        _ => continue,
                    };
                    if ws.send(reply).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// A fresh temp dir for one test.
pub fn temp_dir() -> tempfile::TempDir {
    tempfile::Builder::new().prefix("padis-l7-").tempdir().expect("temp dir")
}

/// `[[group]]` TOML for `name` with these backends.
pub fn group_toml(name: &str, backends: &[&Backend], extra: &str) -> String {
    let mut s = format!("[[group]]\nname = \"{name}\"\n{extra}\n");
    for b in backends {
        s.push_str(&format!("[[group.backend]]\naddr = \"{}\"\n", b.addr));
    }
    s
}

/// The DER of the first certificate of a PEM file.
pub fn pem_der(path: &Path) -> Vec<u8> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::CertificateDer::pem_file_iter(path)
        .expect("pem")
        .next()
        .expect("one cert")
        .expect("cert")
        .to_vec()
}

/// Sends an HTTP/1.1 GET over an established TLS stream and returns the answer.
pub async fn tls_get(info: TlsInfo, host: &str, path: &str) -> Answer {
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(TokioIo::new(info.stream)).await.expect("h1 over tls");
    tokio::spawn(conn);
    let resp = sender.send_request(get_req(host, path)).await.expect("request");
    read_answer(resp).await.expect("body")
}

/// Sends an HTTP/2 GET over an established TLS stream (ALPN h2) and returns the answer.
pub async fn tls_get_h2(info: TlsInfo, host: &str, path: &str) -> Answer {
    let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(info.stream))
        .await
        .expect("h2 over tls");
    tokio::spawn(conn);
    let req = Request::builder()
        .uri(format!("https://{host}{path}"))
        .version(http::Version::HTTP_2)
        .body(Full::new(Bytes::new()))
        .expect("request");
    let resp = sender.send_request(req).await.expect("request");
    read_answer(resp).await.expect("body")
}

/// A bounded keep-alive load of GETs on one host through an L7 listener: each client sends at most 50,000
/// requests, on one connection (a new one after a failure), until [`Load::finish`] or its time limit.
pub struct Load {
    stop: Arc<std::sync::atomic::AtomicBool>,
    ok: Arc<AtomicUsize>,
    failures: Arc<std::sync::Mutex<Vec<String>>>,
    clients: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    /// Starts `clients` clients sending `GET /c<client>/<n>` with Host `host` to `proxy` for at most `limit`.
    pub fn start(proxy: SocketAddr, host: &str, clients: usize, limit: Duration) -> Load {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let ok = Arc::new(AtomicUsize::new(0));
        let failures = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
        let clients = (0..clients)
            .map(|c| {
                let (stop, ok, failures, host) = (stop.clone(), ok.clone(), failures.clone(), host.to_string());
                tokio::spawn(async move {
                    let mut conn = H1Conn::connect(proxy).await;
                    let deadline = std::time::Instant::now() + limit;
                    let mut n = 0u32;
                    while !stop.load(Ordering::Relaxed) && std::time::Instant::now() < deadline && n < 50_000 {
                        n += 1;
                        match conn.get(&host, &format!("/c{c}/{n}")).await {
                            Ok(a) if a.status == 200 => {
                                ok.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok(a) => failures.lock().expect("lock").push(format!("client {c}: status {}", a.status)),
                            Err(e) => {
                                failures.lock().expect("lock").push(format!("client {c}: {e}"));
                                conn = H1Conn::connect(proxy).await;
                            }
                        }
                    }
                })
            })
            .collect();
        Load { stop, ok, failures, clients }
    }

    /// Stops the clients; the requests answered 200 and the failures.
    pub async fn finish(self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for c in self.clients {
            c.await.expect("client");
        }
        let failures = self.failures.lock().expect("lock").clone();
        (self.ok.load(Ordering::Relaxed), failures)
    }
}
