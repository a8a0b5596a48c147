//! Active HTTP checks use the group's transport: TLS (CA file relative to the config, server name, insecure),
//! HTTP/2 (h2c prior knowledge, ALPN h2). Real TLS/h2 servers on 127.0.0.1.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Request, Response, Version};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use padis_balance::{Balancers, HealthRegistry};
use padis_model::Snapshot;
use rustls_pki_types::pem::PemObject;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// A unique temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
        let p = std::env::temp_dir().join(format!("padis-balance-{tag}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A CA (written to `dir/ca.pem`) and a server config for a leaf valid for `name`.
fn pki(dir: &Path, name: &str) -> Arc<rustls::ServerConfig> {
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, "padis-balance test CA");
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    std::fs::write(dir.join("ca.pem"), ca_cert.pem()).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let leaf_params = rcgen::CertificateParams::new(vec![name.to_string()]).unwrap();
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf = leaf_params.signed_by(&leaf_key, &issuer).unwrap();
    let certs = vec![leaf.der().clone()];
    let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(leaf_key.serialize_pem().as_bytes()).unwrap();
    let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(cfg)
}

/// An HTTP backend (TLS or not; HTTP/2 only, or HTTP/1.1 unless ALPN says h2). Records what it saw.
struct Backend {
    addr: SocketAddr,
    body: Arc<Mutex<String>>,
    seen: Arc<Mutex<Vec<(Version, String)>>>,
    task: JoinHandle<()>,
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Backend {
    async fn start(tls: Option<Arc<rustls::ServerConfig>>, h2_only: bool) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let body = Arc::new(Mutex::new("service OK-42".to_string()));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (b, s) = (body.clone(), seen.clone());
        let task = tokio::spawn(async move {
            let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    return;
                };
                let _ = sock.set_nodelay(true);
                let (b, s, acceptor) = (b.clone(), s.clone(), acceptor.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let who = req
                            .uri()
                            .authority()
                            .map(|a| a.to_string())
                            .or_else(|| req.headers().get("host").and_then(|h| h.to_str().ok()).map(String::from))
                            .unwrap_or_default();
                        s.lock().unwrap().push((req.version(), who));
                        let body = b.lock().unwrap().clone();
                        async move { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body)))) }
                    });
                    match acceptor {
                        Some(acc) => {
                            let Ok(io) = acc.accept(sock).await else {
                                return;
                            };
                            let h2 = h2_only || io.get_ref().1.alpn_protocol() == Some(b"h2");
                            serve(TokioIo::new(io), h2, svc).await;
                        }
                        None => serve(TokioIo::new(sock), h2_only, svc).await,
                    }
                });
            }
        });
        Backend { addr, body, seen, task }
    }
}

async fn serve<I, S>(io: I, h2: bool, svc: S)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::Service<Request<Incoming>, Response = Response<Full<Bytes>>, Error = Infallible>
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    if h2 {
        let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new()).serve_connection(io, svc).await;
    } else {
        let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, svc).await;
    }
}

async fn wait_until(what: &str, cond: impl Fn() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < Duration::from_secs(5), "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

const CHECK: &str =
    "[group.health]\nexpect_body = \"OK-42\"\ninterval = \"150ms\"\ntimeout = \"150ms\"\nfall = 2\nrise = 1\n";

fn group(name: &str, settings: &str, addr: SocketAddr) -> String {
    format!("[[group]]\nname = \"{name}\"\n{settings}\n{CHECK}[[group.backend]]\naddr = \"{addr}\"\n")
}

/// Builds a snapshot as if read from `dir/padis.toml` (relative paths resolve against `dir`).
fn snapshot(dir: &Path, text: &str) -> Snapshot {
    let origin = dir.join("padis.toml").display().to_string();
    let valid = padis_model::parse_config(text, &origin, dir).unwrap_or_else(|e| panic!("{e}"));
    Snapshot::new(valid, 1, Vec::new())
}

fn error_of(health: &HealthRegistry, group: &str) -> Option<String> {
    health.report().into_iter().find(|r| r.group == group).and_then(|r| r.last_check_error)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_checks_verify_ca_and_server_name() {
    let dir = TempDir::new("tls");
    let backend = Backend::start(Some(pki(&dir.0, "backend.test")), false).await;
    let text = group("good", "[group.tls]\nca = \"ca.pem\"\nserver_name = \"backend.test\"", backend.addr)
        + &group("wrongname", "[group.tls]\nca = \"ca.pem\"\nserver_name = \"other.test\"", backend.addr);
    let health = HealthRegistry::new(&prometheus::Registry::new()).unwrap();
    let bal = Balancers::build(&snapshot(&dir.0, &text), &health, None);
    let good = bal.group("good").unwrap().backends()[0].clone();
    let wrong = bal.group("wrongname").unwrap().backends()[0].clone();
    wait_until("wrong name down", || !wrong.health.is_usable()).await;
    let err = error_of(&health, "wrongname").unwrap();
    assert!(err.starts_with("tls:") && err.contains("certificate"), "{err}");
    wait_until("good checked over TLS", || backend.seen.lock().unwrap().len() >= 3).await;
    assert!(good.health.is_usable(), "{:?}", error_of(&health, "good"));
    let first = backend.seen.lock().unwrap()[0].clone();
    assert_eq!(first, (Version::HTTP_11, "backend.test".to_string()), "Host is the verified name");
    *backend.body.lock().unwrap() = "maintenance".into();
    wait_until("good down on body", || !good.health.is_usable()).await;
    assert!(error_of(&health, "good").unwrap().contains("expected string"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_backend_is_checked_in_h2() {
    let dir = TempDir::new("h2c");
    let backend = Backend::start(None, true).await;
    let text = group("h2", "protocol = \"h2\"", backend.addr) + &group("h1", "", backend.addr);
    let health = HealthRegistry::new(&prometheus::Registry::new()).unwrap();
    let bal = Balancers::build(&snapshot(&dir.0, &text), &health, None);
    let h1 = bal.group("h1").unwrap().backends()[0].clone();
    let h2 = bal.group("h2").unwrap().backends()[0].clone();
    wait_until("an HTTP/1.1 check of an h2-only backend fails", || !h1.health.is_usable()).await;
    wait_until("h2 checks answered", || backend.seen.lock().unwrap().len() >= 3).await;
    assert!(h2.health.is_usable(), "{:?}", error_of(&health, "h2"));
    assert!(backend.seen.lock().unwrap().iter().all(|(v, _)| *v == Version::HTTP_2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_over_tls_with_insecure_skip_verify_and_bad_ca() {
    let dir = TempDir::new("h2tls");
    let backend = Backend::start(Some(pki(&dir.0, "backend.test")), false).await;
    std::fs::write(dir.0.join("empty.pem"), "").unwrap();
    let text = group("h2tls", "protocol = \"h2\"\n[group.tls]\ninsecure_skip_verify = true", backend.addr)
        + &group("badca", "[group.tls]\nca = \"empty.pem\"", backend.addr);
    let health = HealthRegistry::new(&prometheus::Registry::new()).unwrap();
    let bal = Balancers::build(&snapshot(&dir.0, &text), &health, None);
    let bad = bal.group("badca").unwrap().backends()[0].clone();
    wait_until("h2 over TLS checks answered", || backend.seen.lock().unwrap().len() >= 3).await;
    assert!(bal.group("h2tls").unwrap().backends()[0].health.is_usable());
    assert!(backend.seen.lock().unwrap().iter().all(|(v, _)| *v == Version::HTTP_2), "ALPN h2 negotiated");
    wait_until("unusable CA: down", || !bad.health.is_usable()).await;
    assert!(error_of(&health, "badca").unwrap().contains("no certificate"), "{:?}", error_of(&health, "badca"));
}
