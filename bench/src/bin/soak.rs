//! `bench/suites/soak` driver (issue 11): a `padis` daemon ($PADIS_BIN) runs for a given time in front of
//! in-process backends and the Marathon test double, with legitimate mixed traffic (HTTP/1.1 keep-alive, h2 and
//! HTTP/1.1 over TLS, WebSockets, DNS over UDP) and, at the same time, an attacker mix (request smuggling,
//! slowloris, slow POST, malformed chunked bodies, h2 PING/SETTINGS/RST floods, idle h2 connections, many
//! connections from one address), while backends are killed and restarted, the Marathon app scales and the config
//! file is reloaded by SIGHUP. The figures are defined in the suite script's header. Prints on stdout
//! `RESULT suite=soak failed_legit=N ejected_by_clients=N rss_growth_pct=X fd_growth=N ...`; progress on stderr.
//!
//! Usage: `soak --minutes M --dir DIR` (DIR: config, certificates, the daemon's log; the daemon's pid is written
//! to DIR/padis.pid so that the suite can kill it whatever happens to this process).

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use padis_tests::l7::Pki;
use padis_tests::marathon::{AppSpec, MarathonDouble};
use padis_tests::process::free_port;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream, UdpSocket};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_util::sync::CancellationToken;

/// Command line.
#[derive(Parser, Debug)]
#[command(about = "Padis soak: legitimate mixed traffic under attack, backend churn, Marathon scaling, reloads")]
struct Args {
    /// Length of the run in minutes (fractions allowed).
    #[arg(long, default_value_t = 30.0)]
    minutes: f64,
    /// Work directory (config, certificates, the daemon's log and pid file).
    #[arg(long)]
    dir: PathBuf,
    /// The padis binary (the suite passes $PADIS_BIN).
    #[arg(long)]
    padis: PathBuf,
    /// Seed of the random choices (targets, victims, scale sizes).
    #[arg(long, default_value_t = 11)]
    seed: u64,
}

/// Why the soak could not run (not a finding about Padis: those are the RESULT figures).
#[derive(Debug, thiserror::Error)]
enum SoakError {
    /// An I/O step of the setup failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The daemon did not come up or died.
    #[error("padis: {0}")]
    Padis(String),
    /// The setup never converged (routes, DNS).
    #[error("setup: {0}")]
    Setup(String),
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> SoakError {
    let what = what.into();
    move |source| SoakError::Io { what, source }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Legitimate clients connect from here; attackers from other loopback addresses (so that the per-client
/// connection limits that stop them are not the legitimate clients' limits).
const LEGIT: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);
const SMUGGLER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
const SLOWLORIS: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 3);
const SLOW_POST: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 4);
const CHUNKED: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 6);
const H2_ATTACKER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 7);
const CROWD: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 8);

/// Time a legitimate request, WebSocket message or DNS answer may take.
const LEGIT_TIMEOUT: Duration = Duration::from_secs(10);
/// A legitimate request of a group may be retried once when one of the group's backends was down (killed) at
/// any time between the request's start and this long after the backend's restart.
const AFTER_RESTART: Duration = Duration::from_secs(2);
/// A passive ejection of a backend seen at most this long after its restart is blamed on the kill.
const EJECTION_SLACK: Duration = Duration::from_secs(3);
/// Bound of every loop in operations (the stop token and the run's end bound them in time).
const MAX_OPS: u64 = 50_000_000;
/// The Marathon app that scales.
const APP: &str = "/shop";

// --- figures ---------------------------------------------------------------------------------------------------

/// Kinds of legitimate operations.
#[derive(Clone, Copy, Debug)]
enum Kind {
    H1 = 0,
    H1Tls = 1,
    H2 = 2,
    Ws = 3,
    Dns = 4,
}
const KIND_NAMES: [&str; 5] = ["h1", "h1_tls", "h2", "ws", "dns"];

/// Legitimate outcomes.
#[derive(Default)]
struct Stats {
    ok: [AtomicU64; 5],
    failed: AtomicU64,
    retried: AtomicU64,
    dns_resent: AtomicU64,
}

impl Stats {
    fn ok(&self, k: Kind) {
        self.ok[k as usize].fetch_add(1, Ordering::Relaxed);
    }

    fn fail(&self, k: Kind, what: String) {
        let n = self.failed.fetch_add(1, Ordering::Relaxed);
        if n < 40 {
            eprintln!("soak: FAILED legit {}: {what}", KIND_NAMES[k as usize]);
        }
    }
}

/// Attack outcomes: `(as expected, total)` per attack.
#[derive(Default)]
struct AttackStats {
    slowloris: [AtomicU64; 2],
    slow_post: [AtomicU64; 2],
    malformed: [AtomicU64; 2],
    smuggling: [AtomicU64; 2],
    h2_flood: [AtomicU64; 2],
    h2_idle: [AtomicU64; 2],
    crowd: [AtomicU64; 2],
}

fn add(pair: &[AtomicU64; 2], good: u64, total: u64) {
    pair[0].fetch_add(good, Ordering::Relaxed);
    pair[1].fetch_add(total, Ordering::Relaxed);
}

fn ratio(pair: &[AtomicU64; 2]) -> String {
    format!("{}/{}", pair[0].load(Ordering::Relaxed), pair[1].load(Ordering::Relaxed))
}

/// When which backend was down.
struct Window {
    group: &'static str,
    addr: SocketAddr,
    from: Instant,
    to: Option<Instant>,
}

/// The churn the soak causes, for deciding what a failure or an ejection may be blamed on.
#[derive(Default)]
struct Chaos {
    windows: Mutex<Vec<Window>>,
    kills: AtomicU64,
    scales: AtomicU64,
    reloads: AtomicU64,
}

impl Chaos {
    /// Whether a request of `group` started at `sent` that just failed may be retried: a backend of that group
    /// was down at some time from `sent` until now (until `AFTER_RESTART` after its restart).
    fn may_retry(&self, group: Option<&str>, sent: Instant) -> bool {
        let Some(g) = group else { return false };
        let now = Instant::now();
        lock(&self.windows)
            .iter()
            .any(|w| w.group == g && w.from <= now && w.to.is_none_or(|t| t + AFTER_RESTART >= sent))
    }

    /// Whether backend `addr` was down (or just restarted) at some time in `[a, b]`.
    fn was_killed(&self, addr: &str, a: Instant, b: Instant) -> bool {
        lock(&self.windows)
            .iter()
            .any(|w| w.addr.to_string() == addr && w.from <= b && w.to.is_none_or(|t| t + EJECTION_SLACK >= a))
    }
}

/// Everything the workers share.
struct Ctx {
    stats: Stats,
    attacks: AttackStats,
    chaos: Chaos,
    stop: CancellationToken,
    seed: u64,
    http: SocketAddr,
    https: SocketAddr,
    dns: SocketAddr,
    tls_h1: Arc<rustls::ClientConfig>,
    tls_h2: Arc<rustls::ClientConfig>,
    api_ports: Vec<u16>,
    shop_ports: Vec<u16>,
    smuggled: Arc<AtomicU64>,
}

// --- backends --------------------------------------------------------------------------------------------------

/// An HTTP/1.1 backend on 127.0.0.1 that can be killed (listener and connections closed) and restarted on the
/// same address. `/health` answers OK, `/echo/...` echoes the body, `/upload/...` reads the body, anything else
/// answers `backend=<name>\npath=<path>\n`. A request whose path starts with `/smuggled` can only come from a
/// smuggling attempt that desynchronised a backend connection: it is counted and logged.
struct HttpBackend {
    name: Arc<str>,
    group: &'static str,
    addr: SocketAddr,
    stop: Mutex<CancellationToken>,
    smuggled: Arc<AtomicU64>,
}

impl HttpBackend {
    async fn start(name: String, group: &'static str, smuggled: Arc<AtomicU64>) -> Result<Arc<HttpBackend>, SoakError> {
        let listener = TcpListener::bind("127.0.0.1:0").await.map_err(io_err("bind a backend"))?;
        let addr = listener.local_addr().map_err(io_err("backend address"))?;
        let b = Arc::new(HttpBackend {
            name: name.into(),
            group,
            addr,
            stop: Mutex::new(CancellationToken::new()),
            smuggled,
        });
        b.serve(listener);
        Ok(b)
    }

    fn serve(&self, listener: TcpListener) {
        let token = lock(&self.stop).clone();
        let (name, smuggled) = (self.name.clone(), self.smuggled.clone());
        tokio::spawn(async move {
            loop {
                let stream = tokio::select! {
                    r = listener.accept() => match r {
                        Ok((s, _)) => s,
                        Err(_) => {
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            continue;
                        }
                    },
                    _ = token.cancelled() => break,
                };
                let _ = stream.set_nodelay(true);
                let (name, smuggled, token) = (name.clone(), smuggled.clone(), token.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req| backend_answer(name.clone(), smuggled.clone(), req));
                    let conn = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc);
                    tokio::select! {
                        _ = conn => {}
                        _ = token.cancelled() => {}
                    }
                });
            }
        });
    }

    /// Closes the listener and every connection.
    fn kill(&self) {
        lock(&self.stop).cancel();
    }

    /// Listens again on the same address.
    async fn restart(&self) -> Result<(), SoakError> {
        *lock(&self.stop) = CancellationToken::new();
        let mut last = io::Error::other("never tried");
        for _ in 0..50 {
            match TcpListener::bind(self.addr).await {
                Ok(l) => {
                    self.serve(l);
                    return Ok(());
                }
                Err(e) => last = e,
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(SoakError::Io { what: format!("rebind backend {}", self.addr), source: last })
    }
}

async fn backend_answer(
    name: Arc<str>,
    smuggled: Arc<AtomicU64>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_string();
    if path.starts_with("/smuggled") {
        smuggled.fetch_add(1, Ordering::Relaxed);
        eprintln!("soak: backend {name} received a smuggled request: {} {:?}", req.uri(), req.headers());
    }
    let (_, body) = req.into_parts();
    // Every body is read (attack bodies too), as a real application would.
    let body = match body.collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            let mut r = Response::new(Full::new(Bytes::from(format!("body error: {e}\n"))));
            *r.status_mut() = StatusCode::BAD_REQUEST;
            return Ok(r);
        }
    };
    let out = if path == "/health" {
        Bytes::from_static(b"OK")
    } else if path.starts_with("/echo/") {
        body
    } else if path.starts_with("/upload/") {
        Bytes::from(format!("got {}\n", body.len()))
    } else {
        Bytes::from(format!("backend={name}\npath={path}\n"))
    };
    let mut r = Response::new(Full::new(out));
    if let Ok(v) = http::HeaderValue::from_str(&name) {
        r.headers_mut().insert("x-backend", v);
    }
    Ok(r)
}

/// A WebSocket echo backend (tungstenite): every data message comes back as it was.
async fn ws_backend() -> Result<SocketAddr, SoakError> {
    let l = TcpListener::bind("127.0.0.1:0").await.map_err(io_err("bind a WebSocket backend"))?;
    let addr = l.local_addr().map_err(io_err("WebSocket backend address"))?;
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(s).await else {
                    return;
                };
                while let Some(Ok(m)) = ws.next().await {
                    if !(m.is_text() || m.is_binary()) {
                        continue; // control frames and the close reply are tungstenite's
                    }
                    if ws.send(m).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    Ok(addr)
}

/// Which pool backend each Marathon task runs on (a task takes a free one; freed when the task is gone).
struct Slots {
    ports: Vec<u16>,
    owner: Vec<Option<u64>>,
}

fn place(slots: &Mutex<Slots>, seq: u64) -> (String, Vec<u32>) {
    let mut s = lock(slots);
    let n = s.ports.len().max(1);
    let i = s.owner.iter().position(Option::is_none).unwrap_or(seq as usize % n);
    s.owner[i] = Some(seq);
    ("127.0.0.1".to_string(), vec![u32::from(s.ports[i])])
}

/// The task sequence number in a task id of the double (`shop.0000000a-000a-11e5-...`).
fn task_seq(id: &str) -> Option<u64> {
    let (_, rest) = id.split_once('.')?;
    u64::from_str_radix(rest.get(..8)?, 16).ok()
}

fn refresh_slots(slots: &Mutex<Slots>, live: &[String]) {
    let live: HashSet<u64> = live.iter().filter_map(|t| task_seq(t)).collect();
    for o in lock(slots).owner.iter_mut() {
        if o.is_some_and(|q| !live.contains(&q)) {
            *o = None;
        }
    }
}

// --- config and daemon -----------------------------------------------------------------------------------------

struct Setup {
    dir: PathBuf,
    http: u16,
    https: u16,
    dns: u16,
    admin: SocketAddr,
    marathon: String,
    cert: PathBuf,
    key: PathBuf,
    api: Vec<Arc<HttpBackend>>,
    web: Vec<Arc<HttpBackend>>,
    ws: Vec<SocketAddr>,
}

fn backends_toml(addrs: impl IntoIterator<Item = SocketAddr>) -> String {
    addrs.into_iter().map(|a| format!("[[group.backend]]\naddr = \"{a}\"\n")).collect()
}

/// The config of generation `generation`: each reload adds or removes the fourth `web` backend and moves the
/// `reload` route's path.
fn render_config(s: &Setup, generation: u64) -> String {
    let web_count = if generation.is_multiple_of(2) { s.web.len() } else { s.web.len() - 1 };
    let api_instances: Vec<String> = s
        .api
        .iter()
        .enumerate()
        .map(|(i, b)| format!("{{ id = \"api-{i}\", addr = \"127.0.0.1\", ports = [{}] }}", b.addr.port()))
        .collect();
    format!(
        r#"# padis soak config, generation {generation}
[admin]
listen = "{admin}"

[log]
level = "warn"
access_log = false

[limits]
header_read_timeout = "5s"
body_read_timeout = "5s"
client_idle_timeout = "15s"
send_timeout = "10s"
close_grace = "3s"

[[listener]]
name = "http"
bind = "127.0.0.1:{http}"

[[listener]]
name = "https"
bind = "127.0.0.1:{https}"
[listener.tls]
certificates = ["soak"]

[[certificate]]
name = "soak"
cert = "{cert}"
key = "{key}"

[[route]]
name = "api"
host = "api.soak.test"
group = "api"

[[route]]
name = "web"
host = "web.soak.test"
group = "web"

[[route]]
name = "ws"
host = "ws.soak.test"
group = "ws"

[[route]]
name = "reload"
host = "reload.soak.test"
path = "/g{generation}"
group = "web"

[[group]]
name = "api"
[group.health]
kind = "http"
path = "/health"
interval = "1s"
timeout = "500ms"
{api}
[[group]]
name = "web"
balance = "least_request"
{web}
[[group]]
name = "ws"
{ws}
[dns]
listen = ["127.0.0.1:{dns}"]
state_dir = "{state}"

[[dns.zone]]
name = "soak.test"
generated = true
ttl = "1s"
ns = [{{ name = "ns1.soak.test", addrs = ["127.0.0.1"] }}]

[[service]]
name = "api"
zone = "soak.test"
port = [{{ name = "http", protocol = "tcp" }}]
instance = [{instances}]

[marathon]
urls = ["{marathon}"]
group = "external"
zone = "soak.test"
drain_time = "1s"
backoff_min = "50ms"
backoff_max = "500ms"
"#,
        admin = s.admin,
        http = s.http,
        https = s.https,
        dns = s.dns,
        cert = s.cert.display(),
        key = s.key.display(),
        api = backends_toml(s.api.iter().map(|b| b.addr)),
        web = backends_toml(s.web[..web_count].iter().map(|b| b.addr)),
        ws = backends_toml(s.ws.iter().copied()),
        state = s.dir.join("dns").display(),
        instances = api_instances.join(", "),
        marathon = s.marathon,
    )
}

fn write_config(path: &Path, text: &str) -> Result<(), SoakError> {
    let tmp = path.with_extension("toml.tmp");
    std::fs::write(&tmp, text).map_err(io_err(format!("write {}", tmp.display())))?;
    std::fs::rename(&tmp, path).map_err(io_err(format!("rename to {}", path.display())))
}

/// The daemon, killed on drop.
struct Daemon {
    child: Child,
    log: PathBuf,
}

impl Daemon {
    fn spawn(bin: &Path, config: &Path, dir: &Path) -> Result<Daemon, SoakError> {
        let log = dir.join("padis.log");
        let err = std::fs::File::create(&log).map_err(io_err("create padis.log"))?;
        let mut cmd = Command::new(bin);
        cmd.args(["run", "--config"]).arg(config).env_remove("PADIS_LOG").stdout(Stdio::null()).stderr(err);
        // SAFETY: prctl(2) in the child between fork and exec touches no memory of the parent; the daemon dies
        // with the thread that spawned it (this process's main thread).
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(io_err(format!("start {}", bin.display())))?;
        std::fs::write(dir.join("padis.pid"), child.id().to_string()).map_err(io_err("write padis.pid"))?;
        Ok(Daemon { child, log })
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// RSS (kB) and open descriptors of `pid`.
fn sample(pid: i32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64;
    Some((rss, fds))
}

/// What the open descriptors of `pid` are: TCP sockets listening, accepted (their local port is one Padis listens
/// on) and outgoing (to backends, Marathon, peers), other sockets, and the rest (files, epoll, pipes, eventfds).
fn fd_kinds(pid: i32) -> String {
    let mut inodes = HashMap::new();
    let mut listening = std::collections::HashSet::new();
    for table in ["tcp", "tcp6"] {
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")) else { continue };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 10 {
                continue;
            }
            let port = f[1].rsplit(':').next().and_then(|p| u16::from_str_radix(p, 16).ok()).unwrap_or(0);
            if f[3] == "0A" {
                listening.insert(port);
            }
            inodes.insert(f[9].to_string(), (port, f[3] == "0A"));
        }
    }
    let (mut listen, mut accepted, mut outgoing, mut other_sockets, mut rest) = (0, 0, 0, 0, 0);
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { return "?".into() };
    for e in dir.flatten() {
        let Ok(link) = std::fs::read_link(e.path()) else { continue };
        let link = link.to_string_lossy().into_owned();
        match link.strip_prefix("socket:[").and_then(|l| l.strip_suffix(']')).map(|i| inodes.get(i)) {
            Some(Some((_, true))) => listen += 1,
            Some(Some((port, false))) if listening.contains(port) => accepted += 1,
            Some(Some(_)) => outgoing += 1,
            Some(None) => other_sockets += 1,
            None => rest += 1,
        }
    }
    format!(
        "tcp listening {listen}, tcp accepted {accepted}, tcp outgoing {outgoing}, other sockets {other_sockets}, \
         other {rest}"
    )
}

/// `/metrics` of the admin API.
async fn metrics(admin: SocketAddr) -> Option<String> {
    tokio::task::spawn_blocking(move || padis_tests::process::http(admin, "GET", "/metrics", None, &[]))
        .await
        .ok()?
        .ok()
        .filter(|(code, _)| *code == 200)
        .map(|(_, body)| body)
}

/// Samples of metric `name`: (labels, value).
fn samples(text: &str, name: &str) -> Vec<(HashMap<String, String>, f64)> {
    let mut out = Vec::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(name) else { continue };
        let (labels, value) = if let Some(r) = rest.strip_prefix('{') {
            let Some((l, v)) = r.split_once('}') else { continue };
            (l, v)
        } else if rest.starts_with(' ') {
            ("", rest)
        } else {
            continue;
        };
        let Ok(value) = value.trim().parse::<f64>() else {
            continue;
        };
        let mut map = HashMap::new();
        for kv in labels.split("\",") {
            if let Some((k, v)) = kv.split_once("=\"") {
                map.insert(k.trim_matches(',').trim().to_string(), v.trim_end_matches('"').to_string());
            }
        }
        out.push((map, value));
    }
    out
}

fn sum(text: &str, name: &str) -> f64 {
    samples(text, name).iter().map(|(_, v)| v).sum()
}

// --- connections -----------------------------------------------------------------------------------------------

/// A client byte stream (plain TCP or TLS).
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

async fn connect_from(src: Ipv4Addr, dst: SocketAddr) -> io::Result<TcpStream> {
    let s = TcpSocket::new_v4()?;
    s.bind(SocketAddr::new(IpAddr::V4(src), 0))?;
    let stream = s.connect(dst).await?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// A connection from `src` to `dst`, with TLS (SNI `sni`) when `tls` is given.
async fn open(
    dst: SocketAddr,
    src: Ipv4Addr,
    tls: Option<&Arc<rustls::ClientConfig>>,
    sni: &str,
) -> io::Result<Box<dyn Io>> {
    let tcp = tokio::time::timeout(LEGIT_TIMEOUT, connect_from(src, dst))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
    let Some(cfg) = tls else { return Ok(Box::new(tcp)) };
    let name = rustls_pki_types::ServerName::try_from(sni.to_string())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let s = tokio::time::timeout(LEGIT_TIMEOUT, tokio_rustls::TlsConnector::from(cfg.clone()).connect(name, tcp))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"))??;
    Ok(Box::new(s))
}

/// One legitimate HTTP request and the answer it must get.
struct Op {
    host: &'static str,
    group: Option<&'static str>,
    path: String,
    body: Option<Bytes>,
}

impl Op {
    /// A GET (4 in 5) or an echoed POST to one of the three services (two static groups, the Marathon app).
    fn random(rng: &mut fastrand::Rng, tag: &str, n: u64) -> Op {
        let (host, group) = match rng.u8(..3) {
            0 => ("api.soak.test", Some("api")),
            1 => ("web.soak.test", Some("web")),
            _ => ("shop.soak.test", None),
        };
        if rng.u8(..5) == 0 {
            let body = Bytes::from(format!("{tag}-{n}-{}", "x".repeat(rng.usize(0..2000))));
            Op { host, group, path: format!("/echo/{tag}-{n}"), body: Some(body) }
        } else {
            Op { host, group, path: format!("/r/{tag}-{n}"), body: None }
        }
    }

    fn request(&self, h2: bool) -> Request<Full<Bytes>> {
        let mut b = Request::builder();
        b = if h2 {
            b.uri(format!("https://{}{}", self.host, self.path)).version(http::Version::HTTP_2)
        } else {
            b.uri(self.path.as_str()).header("host", self.host)
        };
        let (b, body) = match &self.body {
            Some(body) => (b.method("POST"), body.clone()),
            None => (b.method("GET"), Bytes::new()),
        };
        b.body(Full::new(body)).unwrap_or_else(|_| Request::new(Full::new(Bytes::new())))
    }

    /// Whether the answer is this request's own.
    fn check(&self, status: u16, body: &[u8]) -> Result<(), String> {
        if status != 200 {
            return Err(format!(
                "{} {}: status {status}: {}",
                self.host,
                self.path,
                String::from_utf8_lossy(body).trim()
            ));
        }
        let good = match &self.body {
            Some(sent) => body == sent.as_ref(),
            None => String::from_utf8_lossy(body).lines().any(|l| l.strip_prefix("path=") == Some(self.path.as_str())),
        };
        if good {
            Ok(())
        } else {
            let shown: String = String::from_utf8_lossy(body).chars().take(200).collect();
            Err(format!("{} {}: not its answer: {shown:?}", self.host, self.path))
        }
    }
}

/// An HTTP/1.1 keep-alive client connection, reopened when it breaks.
struct H1 {
    dst: SocketAddr,
    tls: Option<Arc<rustls::ClientConfig>>,
    sender: Option<hyper::client::conn::http1::SendRequest<Full<Bytes>>>,
}

impl H1 {
    async fn send(&mut self, req: Request<Full<Bytes>>, sni: &str) -> Result<(u16, Bytes), String> {
        let r = tokio::time::timeout(LEGIT_TIMEOUT, async {
            if self.sender.as_ref().is_none_or(|s| s.is_closed()) {
                let io = open(self.dst, LEGIT, self.tls.as_ref(), sni).await.map_err(|e| format!("connect: {e}"))?;
                let (s, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
                    .await
                    .map_err(|e| format!("handshake: {e}"))?;
                tokio::spawn(conn);
                self.sender = Some(s);
            }
            let s = self.sender.as_mut().ok_or("no connection")?;
            s.ready().await.map_err(|e| format!("connection: {e}"))?;
            let resp = s.send_request(req).await.map_err(|e| format!("request: {e}"))?;
            let status = resp.status().as_u16();
            let body = resp.into_body().collect().await.map_err(|e| format!("body: {e}"))?.to_bytes();
            Ok::<_, String>((status, body))
        })
        .await;
        match r {
            Ok(Ok(x)) => Ok(x),
            Ok(Err(e)) => {
                self.sender = None;
                Err(e)
            }
            Err(_) => {
                self.sender = None;
                Err("no answer within 10 s".into())
            }
        }
    }
}

/// An h2 (TLS, ALPN h2) connection shared by several request loops, reopened when it breaks.
struct H2 {
    dst: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    sender: tokio::sync::Mutex<Option<hyper::client::conn::http2::SendRequest<Full<Bytes>>>>,
}

impl H2 {
    async fn sender(&self) -> Result<hyper::client::conn::http2::SendRequest<Full<Bytes>>, String> {
        let mut g = self.sender.lock().await;
        if let Some(s) = g.as_ref().filter(|s| !s.is_closed()) {
            return Ok(s.clone());
        }
        let io = open(self.dst, LEGIT, Some(&self.tls), "api.soak.test").await.map_err(|e| format!("connect: {e}"))?;
        let (s, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io))
            .await
            .map_err(|e| format!("h2 handshake: {e}"))?;
        tokio::spawn(conn);
        *g = Some(s.clone());
        Ok(s)
    }

    async fn send(&self, req: Request<Full<Bytes>>) -> Result<(u16, Bytes), String> {
        tokio::time::timeout(LEGIT_TIMEOUT, async {
            let mut s = self.sender().await?;
            s.ready().await.map_err(|e| format!("connection: {e}"))?;
            let resp = s.send_request(req).await.map_err(|e| format!("request: {e}"))?;
            let status = resp.status().as_u16();
            let body = resp.into_body().collect().await.map_err(|e| format!("body: {e}"))?.to_bytes();
            Ok((status, body))
        })
        .await
        .unwrap_or_else(|_| Err("no answer within 10 s".into()))
    }
}

enum Client {
    H1(H1),
    H2(Arc<H2>),
}

impl Client {
    async fn send(&mut self, op: &Op) -> Result<(), String> {
        let (status, body) = match self {
            Client::H1(c) => c.send(op.request(false), op.host).await?,
            Client::H2(c) => c.send(op.request(true)).await?,
        };
        op.check(status, &body)
    }
}

// --- legitimate traffic ----------------------------------------------------------------------------------------

/// A request loop: paced, bounded, each answer checked; a failure is retried once only when a backend of the
/// request's group was being killed.
async fn legit_http(ctx: Arc<Ctx>, mut client: Client, kind: Kind, tag: String, pace: Duration) {
    let mut rng = fastrand::Rng::with_seed(ctx.seed ^ fastrand::u64(..));
    let mut n = 0u64;
    while !ctx.stop.is_cancelled() && n < MAX_OPS {
        n += 1;
        let op = Op::random(&mut rng, &tag, n);
        let sent = Instant::now();
        match client.send(&op).await {
            Ok(()) => ctx.stats.ok(kind),
            Err(e) if ctx.chaos.may_retry(op.group, sent) => {
                ctx.stats.retried.fetch_add(1, Ordering::Relaxed);
                match client.send(&op).await {
                    Ok(()) => ctx.stats.ok(kind),
                    Err(e2) => ctx.stats.fail(kind, format!("{e}; retried after a kill: {e2}")),
                }
            }
            Err(e) => ctx.stats.fail(kind, e),
        }
        tokio::select! {
            _ = tokio::time::sleep(pace) => {}
            _ = ctx.stop.cancelled() => break,
        }
    }
}

/// A long WebSocket (plain or TLS): a text message every 250 ms must come back as sent; after 60 s the socket
/// is closed with the close handshake and a new one opened.
async fn legit_ws(ctx: Arc<Ctx>, worker: usize, tls: bool) {
    let mut n = 0u64;
    let (dst, cfg) = if tls { (ctx.https, Some(&ctx.tls_h1)) } else { (ctx.http, None) };
    while !ctx.stop.is_cancelled() && n < MAX_OPS {
        n += 1;
        let ws = async {
            let io = open(dst, LEGIT, cfg, "ws.soak.test").await.map_err(|e| format!("connect: {e}"))?;
            let url = format!("ws://ws.soak.test/chat/{worker}");
            let (ws, resp) = tokio_tungstenite::client_async(url, io).await.map_err(|e| format!("handshake: {e}"))?;
            if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
                return Err(format!("status {}", resp.status()));
            }
            Ok(ws)
        };
        let mut ws = match tokio::time::timeout(LEGIT_TIMEOUT, ws).await {
            Ok(Ok(ws)) => ws,
            Ok(Err(e)) => {
                ctx.stats.fail(Kind::Ws, format!("ws {worker} open: {e}"));
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            Err(_) => {
                ctx.stats.fail(Kind::Ws, format!("ws {worker} open: no answer within 10 s"));
                continue;
            }
        };
        let life = Instant::now() + Duration::from_secs(60);
        let mut broken = false;
        while !ctx.stop.is_cancelled() && Instant::now() < life && n < MAX_OPS {
            n += 1;
            let text = format!("ws-{worker}-{n}-{}", "y".repeat((n % 300) as usize));
            let exchange = async {
                ws.send(WsMessage::text(text.clone())).await.map_err(|e| format!("send: {e}"))?;
                loop {
                    match ws.next().await {
                        Some(Ok(WsMessage::Text(t))) if t.as_str() == text => return Ok(()),
                        Some(Ok(WsMessage::Text(t))) => return Err(format!("wrong echo {:?}", t.as_str())),
                        Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_))) => continue,
                        Some(Ok(other)) => return Err(format!("unexpected {other:?}")),
                        Some(Err(e)) => return Err(format!("receive: {e}")),
                        None => return Err("closed by the proxy".into()),
                    }
                }
            };
            match tokio::time::timeout(LEGIT_TIMEOUT, exchange).await {
                Ok(Ok(())) => ctx.stats.ok(Kind::Ws),
                Ok(Err(e)) => {
                    ctx.stats.fail(Kind::Ws, format!("ws {worker} message {n}: {e}"));
                    broken = true;
                    break;
                }
                Err(_) => {
                    ctx.stats.fail(Kind::Ws, format!("ws {worker} message {n}: no echo within 10 s"));
                    broken = true;
                    break;
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                _ = ctx.stop.cancelled() => break,
            }
        }
        if !broken {
            let _ = tokio::time::timeout(Duration::from_secs(5), async {
                let _ = ws.close(None).await;
                while let Some(Ok(_)) = ws.next().await {}
            })
            .await;
        }
    }
}

/// One DNS question over UDP; the answer to `id` or an error (timeout, garbage).
async fn dns_ask(sock: &UdpSocket, wire: &[u8], id: u16) -> Result<Message, String> {
    sock.send(wire).await.map_err(|e| format!("send: {e}"))?;
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
    loop {
        let n = match tokio::time::timeout_at(deadline, sock.recv(&mut buf)).await {
            Ok(Ok(n)) => n,
            Ok(Err(e)) => return Err(format!("receive: {e}")),
            Err(_) => return Err("timeout".into()),
        };
        match Message::from_vec(&buf[..n]) {
            Ok(m) if m.metadata.id == id => return Ok(m),
            Ok(_) => continue, // a late answer to an earlier question
            Err(e) => return Err(format!("undecodable answer: {e}")),
        }
    }
}

/// DNS queries (UDP, 20/s) of names the config and Marathon generate; each answer checked.
async fn legit_dns(ctx: Arc<Ctx>) {
    let sock = match UdpSocket::bind((LEGIT, 0)).await {
        Ok(s) => s,
        Err(e) => return ctx.stats.fail(Kind::Dns, format!("bind: {e}")),
    };
    if let Err(e) = sock.connect(ctx.dns).await {
        return ctx.stats.fail(Kind::Dns, format!("connect: {e}"));
    }
    let questions = [
        ("api.soak.test.", RecordType::A),
        ("_http._tcp.api.soak.test.", RecordType::SRV),
        ("_http._tcp.shop.soak.test.", RecordType::SRV),
        ("soak.test.", RecordType::SOA),
    ];
    let mut n = 0u64;
    while !ctx.stop.is_cancelled() && n < MAX_OPS {
        n += 1;
        let (qname, qtype) = questions[(n % questions.len() as u64) as usize];
        let id = (n % 65_536) as u16;
        let mut m = Message::new(id, MessageType::Query, OpCode::Query);
        let Ok(name) = Name::from_ascii(qname) else { return };
        m.add_query(Query::query(name, qtype));
        let Ok(wire) = m.to_vec() else { return };
        let mut answer = dns_ask(&sock, &wire, id).await;
        if matches!(&answer, Err(e) if e == "timeout") {
            // A stub resolver resends a question that got no answer.
            ctx.stats.dns_resent.fetch_add(1, Ordering::Relaxed);
            answer = dns_ask(&sock, &wire, id).await;
        }
        match answer.and_then(|a| check_dns(&ctx, qtype, &a)) {
            Ok(()) => ctx.stats.ok(Kind::Dns),
            Err(e) => ctx.stats.fail(Kind::Dns, format!("{qname} {qtype}: {e}")),
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            _ = ctx.stop.cancelled() => break,
        }
    }
}

fn check_dns(ctx: &Ctx, qtype: RecordType, m: &Message) -> Result<(), String> {
    if m.metadata.response_code != ResponseCode::NoError {
        return Err(format!("rcode {:?}", m.metadata.response_code));
    }
    if m.answers.is_empty() {
        return Err("no answer records".into());
    }
    for r in &m.answers {
        let ok = match (&r.data, qtype) {
            (RData::A(a), RecordType::A) => a.0 == LEGIT,
            (RData::SRV(s), RecordType::SRV) if m.queries.iter().any(|q| q.name().to_ascii().contains("shop")) => {
                ctx.shop_ports.contains(&s.port)
            }
            (RData::SRV(s), RecordType::SRV) => ctx.api_ports.contains(&s.port),
            (RData::SOA(_), RecordType::SOA) => m.answers.len() == 1,
            _ => false,
        };
        if !ok {
            return Err(format!("unexpected record {r}"));
        }
    }
    Ok(())
}

// --- attacks ---------------------------------------------------------------------------------------------------

/// What a held attack connection saw.
struct Outcome {
    status: Option<u16>,
    closed: bool,
    after: Duration,
}

/// Writes `first`, then (with `trickle`) one more byte every period, reading what comes back, until the peer
/// closes or `limit` passes.
async fn hold(mut s: TcpStream, first: &[u8], trickle: Option<Duration>, limit: Duration) -> Outcome {
    let start = Instant::now();
    let deadline = start + limit;
    let mut head = Vec::new();
    let mut closed = !first.is_empty() && s.write_all(first).await.is_err();
    let mut next = trickle.map(|t| start + t);
    let mut buf = [0u8; 4096];
    while !closed {
        let wake = next.map_or(deadline, |n| n.min(deadline));
        match tokio::time::timeout_at(tokio::time::Instant::from_std(wake), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => closed = true,
            Ok(Ok(n)) => {
                if head.len() < 64 {
                    head.extend_from_slice(&buf[..n]);
                }
            }
            Err(_) => {
                if Instant::now() >= deadline {
                    break;
                }
                if let (Some(t), Some(nx)) = (trickle, next.as_mut()) {
                    closed = s.write_all(b"a").await.is_err();
                    *nx += t;
                }
            }
        }
    }
    Outcome { status: parse_status(&head), closed, after: start.elapsed() }
}

fn parse_status(head: &[u8]) -> Option<u16> {
    let text = std::str::from_utf8(head.get(..12)?).ok()?;
    text.strip_prefix("HTTP/1.1 ").or_else(|| text.strip_prefix("HTTP/1.0 "))?.get(..3)?.parse().ok()
}

async fn join_all<T>(handles: Vec<JoinHandle<T>>) -> Vec<T> {
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        if let Ok(v) = h.await {
            out.push(v);
        }
    }
    out
}

const HOSTS: [&str; 3] = ["api.soak.test", "web.soak.test", "shop.soak.test"];

/// The start of a request that, if it ever reached a backend as a request of its own, would swallow the next
/// request on that backend connection (its head is never complete, so a proxy that keeps its framing never
/// forwards it as a request).
const POISON: &str = "GET /smuggled HTTP/1.1\r\nX-Poison: ";

/// Request smuggling attempts, each on its own connection from the smuggler's address.
fn smuggling_payloads(host: &str) -> Vec<String> {
    let te_body = format!("0\r\n\r\n{POISON}");
    let chunked_poison = format!("{:x}\r\n{POISON}\r\n0\r\n\r\n", POISON.len());
    let (te_len, poison_len) = (te_body.len(), POISON.len());
    let te = "Transfer-Encoding: chunked\r\n";
    let post = |name: &str, headers: String, body: &str| {
        format!("POST /r/smug-{name} HTTP/1.1\r\nHost: {host}\r\n{headers}\r\n{body}")
    };
    vec![
        // CL.TE: both framings.
        post("clte", format!("Content-Length: {te_len}\r\n{te}"), &te_body),
        // TE.CL.
        post("tecl", format!("Content-Length: 4\r\n{te}"), &chunked_poison),
        // The issue's case: Connection names Content-Length.
        post("conn", format!("Connection: Content-Length\r\nContent-Length: {poison_len}\r\n"), POISON),
        // Connection names Transfer-Encoding.
        post("conn-te", format!("Connection: Transfer-Encoding\r\n{te}"), &chunked_poison),
        // Duplicate, conflicting Content-Length.
        post("dup", format!("Content-Length: 0\r\nContent-Length: {poison_len}\r\n"), POISON),
        // obs-fold of Transfer-Encoding, with a Content-Length.
        post("fold", format!("Content-Length: {te_len}\r\nTransfer-Encoding:\r\n chunked\r\n"), &te_body),
        // Whitespace before the colon.
        post("space", format!("Content-Length: {te_len}\r\nTransfer-Encoding : chunked\r\n"), &te_body),
        // A transfer coding list not ending in chunked.
        post("list", format!("Transfer-Encoding: chunked, identity\r\nContent-Length: {te_len}\r\n"), &te_body),
    ]
}

async fn attack_smuggling(ctx: Arc<Ctx>, rng_seed: u64) {
    let mut rng = fastrand::Rng::with_seed(rng_seed);
    let mut handles = Vec::new();
    for round in 0..3 {
        for p in smuggling_payloads(HOSTS[rng.usize(..HOSTS.len())]) {
            let dst = ctx.http;
            handles.push(tokio::spawn(async move {
                let Ok(s) = connect_from(SMUGGLER, dst).await else {
                    return None;
                };
                Some(hold(s, p.as_bytes(), None, Duration::from_secs(3)).await)
            }));
        }
        if round < 2 {
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
    let outs: Vec<Outcome> = join_all(handles).await.into_iter().flatten().collect();
    // Refused (4xx) or answered once: the desync itself is counted at the backends (`smuggled`).
    let refused = outs.iter().filter(|o| o.status.is_some_and(|s| (400..500).contains(&s))).count() as u64;
    add(&ctx.attacks.smuggling, refused, outs.len() as u64);
}

/// Partial request heads, one more byte a second: cut by the header timeout (5 s).
async fn attack_slowloris(ctx: Arc<Ctx>) {
    let mut handles = Vec::new();
    for i in 0..48 {
        let dst = ctx.http;
        handles.push(tokio::spawn(async move {
            let Ok(s) = connect_from(SLOWLORIS, dst).await else {
                return None;
            };
            let head = format!("GET /r/slowloris-{i} HTTP/1.1\r\nHost: {}\r\nX-Slow: ", HOSTS[i % 3]);
            Some(hold(s, head.as_bytes(), Some(Duration::from_secs(1)), Duration::from_secs(12)).await)
        }));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let outs: Vec<Outcome> = join_all(handles).await.into_iter().flatten().collect();
    let cut = outs.iter().filter(|o| o.closed && o.after < Duration::from_secs(11)).count() as u64;
    add(&ctx.attacks.slowloris, cut, outs.len() as u64);
}

/// Bodies trickled then stalled (Content-Length and chunked): 408 after the body timeout (5 s).
async fn attack_slow_post(ctx: Arc<Ctx>) {
    let mut handles = Vec::new();
    for i in 0..18 {
        let dst = ctx.http;
        handles.push(tokio::spawn(async move {
            let Ok(mut s) = connect_from(SLOW_POST, dst).await else { return None };
            let host = HOSTS[i % 3];
            let start = format!("POST /upload/slow-{i} HTTP/1.1\r\nHost: {host}\r\n");
            let head = if i % 3 == 2 {
                format!("{start}Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
            } else {
                format!("{start}Content-Length: 100000\r\n\r\n0123456789")
            };
            if s.write_all(head.as_bytes()).await.is_err() {
                return None;
            }
            // Trickle a little more, then stall.
            for _ in 0..3 {
                tokio::time::sleep(Duration::from_millis(500)).await;
                let more: &[u8] = if i % 3 == 2 { b"1\r\nx\r\n" } else { b"x" };
                if s.write_all(more).await.is_err() {
                    break;
                }
            }
            Some(hold(s, b"", None, Duration::from_secs(15)).await)
        }));
    }
    let outs: Vec<Outcome> = join_all(handles).await.into_iter().flatten().collect();
    let timed_out = outs.iter().filter(|o| o.status == Some(408)).count() as u64;
    // Another answer is right when the backend went away during the upload (a killed backend, a Marathon task
    // scaled away: 502): printed so that a run can be read.
    let others: Vec<Option<u16>> = outs.iter().filter(|o| o.status != Some(408)).map(|o| o.status).collect();
    if !others.is_empty() {
        eprintln!("soak: slow POSTs not answered 408: {others:?}");
    }
    add(&ctx.attacks.slow_post, timed_out, outs.len() as u64);
}

/// Malformed chunked bodies: 400. (A chunk extension whose quoted string is not closed is not among them: it is
/// accepted, as nginx and HAProxy accept it — extensions are skipped to the end of the line — and the body is
/// re-framed for the backend, which never sees it.)
async fn attack_malformed_chunked(ctx: Arc<Ctx>) {
    let bodies = [
        "zz\r\nhello\r\n0\r\n\r\n",                    // not hex
        "fffffffffffffffffffff\r\nhello\r\n0\r\n\r\n", // size overflow
        "5\r\nhelloXX0\r\n\r\n",                       // no CRLF after the data
        "-5\r\nhello\r\n0\r\n\r\n",                    // negative
        "5\r\nhel",                                    // body ends early, then nothing
        "0x5\r\nhello\r\n0\r\n\r\n",                   // prefix
    ];
    let mut handles = Vec::new();
    for (i, b) in bodies.iter().cycle().take(bodies.len() * 2).enumerate() {
        let dst = ctx.http;
        let req = format!(
            "POST /echo/chunked-{i} HTTP/1.1\r\nHost: {}\r\nTransfer-Encoding: chunked\r\n\r\n{b}",
            HOSTS[i % 3]
        );
        // The body that just ends early is the slow-POST case (408); the others are malformed (400).
        let want = if b.ends_with("hel") { 408 } else { 400 };
        handles.push(tokio::spawn(async move {
            let Ok(s) = connect_from(CHUNKED, dst).await else {
                return None;
            };
            Some((hold(s, req.as_bytes(), None, Duration::from_secs(10)).await, want))
        }));
    }
    let outs: Vec<(Outcome, u16)> = join_all(handles).await.into_iter().flatten().collect();
    let good = outs.iter().filter(|(o, want)| o.status == Some(*want)).count() as u64;
    let others: Vec<Option<u16>> =
        outs.iter().filter(|(o, want)| o.status != Some(*want)).map(|(o, _)| o.status).collect();
    if !others.is_empty() {
        eprintln!("soak: malformed chunked bodies not answered as expected: {others:?}");
    }
    add(&ctx.attacks.malformed, good, outs.len() as u64);
}

/// Many connections from one address: more than the per-client limit (1024) at once, at 400 new per second
/// (under the rate limit), held 4 s without a byte. Those over the limit must be closed at once.
async fn attack_crowd(ctx: Arc<Ctx>) {
    let mut handles = Vec::new();
    for i in 0..1100u32 {
        if ctx.stop.is_cancelled() {
            break;
        }
        let dst = ctx.http;
        handles.push(tokio::spawn(async move {
            match connect_from(CROWD, dst).await {
                Ok(s) => hold(s, b"", None, Duration::from_secs(4)).await,
                Err(_) => Outcome { status: None, closed: true, after: Duration::ZERO },
            }
        }));
        if i % 4 == 3 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let outs = join_all(handles).await;
    let refused = outs.iter().filter(|o| o.closed && o.after < Duration::from_secs(1)).count() as u64;
    add(&ctx.attacks.crowd, refused, outs.len() as u64);
}

fn frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    let len = payload.len() as u32;
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    out.extend_from_slice(payload);
}

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// An h2 connection (TLS, ALPN h2) from the attacker's address, preface and SETTINGS sent.
async fn h2_open(ctx: &Ctx) -> io::Result<Box<dyn Io>> {
    let mut io = open(ctx.https, H2_ATTACKER, Some(&ctx.tls_h2), "api.soak.test").await?;
    let mut hello = PREFACE.to_vec();
    frame(&mut hello, 4, 0, 0, &[]);
    io.write_all(&hello).await?;
    Ok(io)
}

#[derive(Clone, Copy, Debug)]
enum Flood {
    Ping,
    Settings,
    Reset,
}

/// An h2 flood; true when the proxy cut the connection within 10 s of the flood's end.
async fn h2_flood(ctx: Arc<Ctx>, kind: Flood) -> Option<bool> {
    let io = h2_open(&ctx).await.ok()?;
    let (mut r, mut w) = tokio::io::split(io);
    let mut reader = tokio::spawn(async move {
        let mut buf = [0u8; 16384];
        while let Ok(n) = r.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    });
    // HPACK: :method GET, :scheme https, :path /, :authority literal (indexed name 1).
    let host = b"api.soak.test";
    let mut headers = vec![0x82, 0x87, 0x84, 0x01, host.len() as u8];
    headers.extend_from_slice(host);
    let mut batch = Vec::new();
    let mut stream = 1u32;
    'flood: for k in 0..50u64 {
        batch.clear();
        for j in 0..100u64 {
            match kind {
                Flood::Ping => frame(&mut batch, 6, 0, 0, &(k * 100 + j).to_be_bytes()),
                Flood::Settings => frame(&mut batch, 4, 0, 0, &[]),
                Flood::Reset => {
                    if j % 5 != 0 {
                        continue; // 1,000 streams per connection
                    }
                    frame(&mut batch, 1, 0x5, stream, &headers);
                    frame(&mut batch, 3, 0, stream, &8u32.to_be_bytes());
                    stream += 2;
                }
            }
        }
        match tokio::time::timeout(Duration::from_secs(5), w.write_all(&batch)).await {
            Ok(Ok(())) => {}
            _ => break 'flood,
        }
    }
    let cut = tokio::time::timeout(Duration::from_secs(10), &mut reader).await.is_ok();
    reader.abort();
    Some(cut)
}

/// An idle h2 connection (SETTINGS acknowledged, then nothing): closed after the idle timeout (15 s) and the
/// close grace (3 s); held at most 26 s.
async fn h2_idle(ctx: Arc<Ctx>) -> Option<bool> {
    let mut io = h2_open(&ctx).await.ok()?;
    let held = async {
        let mut acked = false;
        loop {
            let mut head = [0u8; 9];
            if io.read_exact(&mut head).await.is_err() {
                return;
            }
            let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
            let mut payload = vec![0u8; len];
            if io.read_exact(&mut payload).await.is_err() {
                return;
            }
            if head[3] == 4 && head[4] & 1 == 0 && !acked {
                let mut ack = Vec::new();
                frame(&mut ack, 4, 1, 0, &[]);
                if io.write_all(&ack).await.is_err() {
                    return;
                }
                acked = true;
            }
        }
    };
    Some(tokio::time::timeout(Duration::from_secs(26), held).await.is_ok())
}

async fn attack_h2(ctx: Arc<Ctx>) {
    let mut floods = Vec::new();
    for kind in [Flood::Ping, Flood::Ping, Flood::Settings, Flood::Settings, Flood::Reset, Flood::Reset] {
        floods.push(tokio::spawn(h2_flood(ctx.clone(), kind)));
    }
    let mut idle = Vec::new();
    for _ in 0..12 {
        idle.push(tokio::spawn(h2_idle(ctx.clone())));
    }
    let floods: Vec<bool> = join_all(floods).await.into_iter().flatten().collect();
    add(&ctx.attacks.h2_flood, floods.iter().filter(|c| **c).count() as u64, floods.len() as u64);
    let idle: Vec<bool> = join_all(idle).await.into_iter().flatten().collect();
    add(&ctx.attacks.h2_idle, idle.iter().filter(|c| **c).count() as u64, idle.len() as u64);
}

/// One burst of every attack at once (bounded: the longest, the idle h2 connections, take at most 26 s).
async fn burst(ctx: Arc<Ctx>, k: u64) {
    tokio::join!(
        attack_smuggling(ctx.clone(), ctx.seed ^ k),
        attack_slowloris(ctx.clone()),
        attack_slow_post(ctx.clone()),
        attack_malformed_chunked(ctx.clone()),
        attack_crowd(ctx.clone()),
        attack_h2(ctx.clone()),
    );
}

// --- churn -----------------------------------------------------------------------------------------------------

/// Sleeps `d` unless the run stops first (then false).
async fn pause(ctx: &Ctx, d: Duration) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => !ctx.stop.is_cancelled(),
        _ = ctx.stop.cancelled() => false,
    }
}

/// Every ~15 s one backend of `api` or `web` (never the fourth `web` backend that reloads add and remove) is
/// killed for 3-6 s, then restarted on its address.
async fn killer(ctx: Arc<Ctx>, victims: Vec<Arc<HttpBackend>>) {
    let mut rng = fastrand::Rng::with_seed(ctx.seed ^ 0x6b11);
    let mut n = 0u64;
    while n < MAX_OPS && pause(&ctx, Duration::from_millis(rng.u64(12_000..18_000))).await {
        n += 1;
        let b = &victims[rng.usize(..victims.len())];
        lock(&ctx.chaos.windows).push(Window { group: b.group, addr: b.addr, from: Instant::now(), to: None });
        b.kill();
        ctx.chaos.kills.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(rng.u64(3_000..6_000))).await;
        if let Err(e) = b.restart().await {
            eprintln!("soak: {e}");
        }
        let now = Instant::now();
        if let Some(w) = lock(&ctx.chaos.windows).iter_mut().rev().find(|w| w.addr == b.addr && w.to.is_none()) {
            w.to = Some(now);
        }
    }
}

/// Every ~10 s the Marathon app scales to another size in 2..=5.
async fn scaler(ctx: Arc<Ctx>, m: Arc<MarathonDouble>, slots: Arc<Mutex<Slots>>) {
    let mut rng = fastrand::Rng::with_seed(ctx.seed ^ 0x5ca1e);
    let mut current = 3u32;
    let mut n = 0u64;
    while n < MAX_OPS && pause(&ctx, Duration::from_secs(10)).await {
        n += 1;
        let mut next = rng.u32(2..=5);
        if next == current {
            next = if current == 5 { 2 } else { current + 1 };
        }
        refresh_slots(&slots, &m.task_ids(APP));
        m.scale(APP, next);
        refresh_slots(&slots, &m.task_ids(APP));
        current = next;
        ctx.chaos.scales.fetch_add(1, Ordering::Relaxed);
    }
}

/// Every ~20 s a new config generation is written and the daemon gets SIGHUP.
async fn reloader(ctx: Arc<Ctx>, setup: Arc<Setup>, config: PathBuf, pid: i32) {
    let mut generation = 0u64;
    while generation < MAX_OPS && pause(&ctx, Duration::from_secs(20)).await {
        generation += 1;
        if let Err(e) = write_config(&config, &render_config(&setup, generation)) {
            eprintln!("soak: {e}");
            continue;
        }
        // SAFETY: kill(2) on the daemon we spawned.
        unsafe {
            libc::kill(pid, libc::SIGHUP);
        }
        ctx.chaos.reloads.fetch_add(1, Ordering::Relaxed);
    }
}

/// Reads the ejection counters every second; an ejection of a backend that was not being killed is the
/// clients' doing.
async fn ejection_watch(ctx: Arc<Ctx>, admin: SocketAddr, by_clients: Arc<AtomicU64>, by_kills: Arc<AtomicU64>) {
    let mut last: HashMap<(String, String), f64> = HashMap::new();
    let mut last_at = Instant::now();
    let mut n = 0u64;
    while n < MAX_OPS && pause(&ctx, Duration::from_secs(1)).await {
        n += 1;
        let Some(text) = metrics(admin).await else { continue };
        let now = Instant::now();
        for (labels, value) in samples(&text, "padis_backend_ejections_total") {
            let key =
                (labels.get("group").cloned().unwrap_or_default(), labels.get("backend").cloned().unwrap_or_default());
            let before = last.insert(key.clone(), value).unwrap_or(0.0);
            // A series that went away and came back (Marathon churn) restarts from 0.
            let delta = if value >= before { value - before } else { value };
            if delta <= 0.0 {
                continue;
            }
            if ctx.chaos.was_killed(&key.1, last_at, now) {
                by_kills.fetch_add(delta as u64, Ordering::Relaxed);
            } else {
                by_clients.fetch_add(delta as u64, Ordering::Relaxed);
                eprintln!(
                    "soak: passive ejection of {} in group {} that was not being killed (+{delta})",
                    key.1, key.0
                );
            }
        }
        last_at = now;
    }
}

// --- the run ---------------------------------------------------------------------------------------------------

async fn wait_until<F, Fut>(what: &str, limit: Duration, mut f: F) -> Result<(), SoakError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if f().await {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(SoakError::Setup(format!("{what} not within {limit:?}")))
}

fn pct(a: u64, b: u64) -> String {
    if a == 0 {
        return "nan".into();
    }
    format!("{:.1}", (b as f64 - a as f64) * 100.0 / a as f64)
}

async fn run(args: Args) -> Result<String, SoakError> {
    let total = Duration::from_secs_f64((args.minutes * 60.0).max(30.0));
    std::fs::create_dir_all(args.dir.join("dns")).map_err(io_err("create the work directory"))?;
    let dir = args.dir.canonicalize().map_err(io_err("work directory"))?;

    // Backends: api x3 (active health checks), web x4 (the fourth comes and goes with reloads), a pool of 6 for
    // the Marathon app's tasks, 2 WebSocket echo servers.
    let smuggled = Arc::new(AtomicU64::new(0));
    let mut api = Vec::new();
    let mut web = Vec::new();
    let mut pool = Vec::new();
    for i in 0..3 {
        api.push(HttpBackend::start(format!("api{i}"), "api", smuggled.clone()).await?);
    }
    for i in 0..4 {
        web.push(HttpBackend::start(format!("web{i}"), "web", smuggled.clone()).await?);
    }
    for i in 0..6 {
        pool.push(HttpBackend::start(format!("shop{i}"), "shop", smuggled.clone()).await?);
    }
    let ws = vec![ws_backend().await?, ws_backend().await?];
    let shop_ports: Vec<u16> = pool.iter().map(|b| b.addr.port()).collect();
    let slots = Arc::new(Mutex::new(Slots { ports: shop_ports.clone(), owner: vec![None; shop_ports.len()] }));

    let marathon = Arc::new(MarathonDouble::start().await);
    let s2 = slots.clone();
    let spec = AppSpec::new(APP, &[("PADIS_GROUP", "external"), ("PADIS_0_VHOST", "shop.soak.test")])
        .with_health_check()
        .placed(move |seq| place(&s2, seq));
    marathon.add_app(spec, 3);

    let pki = Pki::new(&dir);
    let (cert, key) = pki.leaf("soak", &["soak.test", "*.soak.test"]);
    let admin: SocketAddr = SocketAddr::new(IpAddr::V4(LEGIT), free_port());
    let setup = Arc::new(Setup {
        dir: dir.clone(),
        http: free_port(),
        https: free_port(),
        dns: free_port(),
        admin,
        marathon: marathon.url(0),
        cert,
        key,
        api: api.clone(),
        web: web.clone(),
        ws,
    });
    let config = dir.join("padis.toml");
    write_config(&config, &render_config(&setup, 0))?;
    let mut daemon = Daemon::spawn(&args.padis, &config, &dir)?;
    let pid = daemon.pid();
    eprintln!("soak: padis pid {pid}, config {}, {:.1} min", config.display(), total.as_secs_f64() / 60.0);
    let ready = wait_until("padis /healthz", Duration::from_secs(30), move || async move {
        tokio::task::spawn_blocking(move || padis_tests::process::http(admin, "GET", "/healthz", None, &[]))
            .await
            .ok()
            .and_then(Result::ok)
            .is_some_and(|(code, _)| code == 200)
    })
    .await;
    if let Err(e) = ready {
        return Err(SoakError::Padis(format!("{e}; log:\n{}", daemon.log_tail())));
    }

    let loopback = |p: u16| SocketAddr::new(IpAddr::V4(LEGIT), p);
    let ctx = Arc::new(Ctx {
        stats: Stats::default(),
        attacks: AttackStats::default(),
        chaos: Chaos::default(),
        stop: CancellationToken::new(),
        seed: args.seed,
        http: loopback(setup.http),
        https: loopback(setup.https),
        dns: loopback(setup.dns),
        tls_h1: pki.client_config(&["http/1.1"]),
        tls_h2: pki.client_config(&["h2"]),
        api_ports: api.iter().map(|b| b.addr.port()).collect(),
        shop_ports,
        smuggled: smuggled.clone(),
    });

    // Every route and the DNS names answer before the clock starts.
    for host in HOSTS {
        let c = ctx.clone();
        wait_until(host, Duration::from_secs(30), move || {
            let c = c.clone();
            async move {
                let mut h1 = H1 { dst: c.http, tls: None, sender: None };
                let op = Op { host, group: None, path: "/r/ready".into(), body: None };
                matches!(h1.send(op.request(false), host).await, Ok((200, _)))
            }
        })
        .await?;
    }
    let c = ctx.clone();
    wait_until("DNS SRV of the Marathon app", Duration::from_secs(30), move || {
        let c = c.clone();
        async move {
            let Ok(sock) = UdpSocket::bind((LEGIT, 0)).await else {
                return false;
            };
            if sock.connect(c.dns).await.is_err() {
                return false;
            }
            let mut m = Message::new(1, MessageType::Query, OpCode::Query);
            let Ok(name) = Name::from_ascii("_http._tcp.shop.soak.test.") else {
                return false;
            };
            m.add_query(Query::query(name, RecordType::SRV));
            let Ok(wire) = m.to_vec() else { return false };
            dns_ask(&sock, &wire, 1).await.is_ok_and(|a| check_dns(&c, RecordType::SRV, &a).is_ok())
        }
    })
    .await?;

    // Legitimate traffic.
    let start = Instant::now();
    let mut workers: Vec<JoinHandle<()>> = Vec::new();
    for i in 0..6 {
        let client = Client::H1(H1 { dst: ctx.http, tls: None, sender: None });
        workers.push(tokio::spawn(legit_http(
            ctx.clone(),
            client,
            Kind::H1,
            format!("h1-{i}"),
            Duration::from_millis(25),
        )));
    }
    for i in 0..2 {
        let client = Client::H1(H1 { dst: ctx.https, tls: Some(ctx.tls_h1.clone()), sender: None });
        workers.push(tokio::spawn(legit_http(
            ctx.clone(),
            client,
            Kind::H1Tls,
            format!("h1tls-{i}"),
            Duration::from_millis(50),
        )));
    }
    for c in 0..2 {
        let conn = Arc::new(H2 { dst: ctx.https, tls: ctx.tls_h2.clone(), sender: tokio::sync::Mutex::new(None) });
        for s in 0..3 {
            let client = Client::H2(conn.clone());
            workers.push(tokio::spawn(legit_http(
                ctx.clone(),
                client,
                Kind::H2,
                format!("h2-{c}-{s}"),
                Duration::from_millis(40),
            )));
        }
    }
    for i in 0..8 {
        workers.push(tokio::spawn(legit_ws(ctx.clone(), i, i % 2 == 1)));
    }
    workers.push(tokio::spawn(legit_dns(ctx.clone())));

    // Churn.
    let by_clients = Arc::new(AtomicU64::new(0));
    let by_kills = Arc::new(AtomicU64::new(0));
    let victims: Vec<Arc<HttpBackend>> = api.iter().chain(web[..3].iter()).cloned().collect();
    workers.push(tokio::spawn(killer(ctx.clone(), victims)));
    workers.push(tokio::spawn(scaler(ctx.clone(), marathon.clone(), slots.clone())));
    workers.push(tokio::spawn(reloader(ctx.clone(), setup.clone(), config.clone(), pid)));
    workers.push(tokio::spawn(ejection_watch(ctx.clone(), admin, by_clients.clone(), by_kills.clone())));

    // Attack bursts back to back (2 s settle and 3 s gap between them); RSS and descriptors are sampled at quiet
    // points (no attack connection open): the first after 10% of the run, and at the end.
    let warm = total.mul_f64(0.1);
    let burst_room = Duration::from_secs(35);
    let mut warm_sample = None;
    let mut bursts = 0u64;
    while bursts < 100_000 && start.elapsed() + burst_room < total {
        bursts += 1;
        let e0 = by_clients.load(Ordering::Relaxed);
        burst(ctx.clone(), bursts).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let e1 = by_clients.load(Ordering::Relaxed);
        eprintln!(
            "soak: +{:.0}s burst {bursts} done: legit ok {} failed {}, ejections by clients during it {}, \
             (rss kB, fds) {:?}",
            start.elapsed().as_secs_f64(),
            ctx.stats.ok.iter().map(|a| a.load(Ordering::Relaxed)).sum::<u64>(),
            ctx.stats.failed.load(Ordering::Relaxed),
            e1 - e0,
            sample(pid)
        );
        if warm_sample.is_none() && start.elapsed() >= warm {
            warm_sample = sample(pid);
            eprintln!("soak: warm-up sample (rss kB, fds): {warm_sample:?}; descriptors: {}", fd_kinds(pid));
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    if warm_sample.is_none() {
        tokio::time::sleep(warm.saturating_sub(start.elapsed())).await;
        warm_sample = sample(pid);
    }
    tokio::time::sleep(total.saturating_sub(start.elapsed())).await;
    let end_sample = sample(pid);
    eprintln!("soak: end sample (rss kB, fds): {end_sample:?}; descriptors: {}", fd_kinds(pid));
    let alive = daemon.alive();
    let final_metrics = metrics(admin).await.unwrap_or_default();
    ctx.stop.cancel();
    for w in workers {
        let _ = tokio::time::timeout(Duration::from_secs(15), w).await;
    }

    let (rss0, fd0) = warm_sample.unwrap_or((0, 0));
    let (rss1, fd1) = end_sample.unwrap_or((0, 0));
    let reload_results = samples(&final_metrics, "padis_config_reloads_total");
    let reloads = |result: &str| -> f64 {
        reload_results.iter().filter(|(l, _)| l.get("result").is_some_and(|r| r == result)).map(|(_, v)| v).sum()
    };
    let s = &ctx.stats;
    let legit_ok: u64 = s.ok.iter().map(|a| a.load(Ordering::Relaxed)).sum();
    let per_kind: Vec<String> =
        KIND_NAMES.iter().zip(&s.ok).map(|(n, a)| format!("{n}={}", a.load(Ordering::Relaxed))).collect();
    eprintln!("soak: legit ok by kind: {}", per_kind.join(" "));
    eprintln!("soak: reload results: {reload_results:?}");
    if !alive {
        eprintln!("soak: padis exited during the run; log tail:\n{}", daemon.log_tail());
    }
    let a = &ctx.attacks;
    Ok(format!(
        "RESULT suite=soak failed_legit={} ejected_by_clients={} rss_growth_pct={} fd_growth={} legit_ok={legit_ok} \
         retried_after_kill={} dns_resent={} smuggled={} padis_alive={} minutes={:.1} bursts={bursts} kills={} \
         ejections_of_killed={} scales={} reloads_sent={} reloads_ok={:.0} reloads_failed={:.0} \
         rss_mb_warm={:.1} rss_mb_end={:.1} fds_warm={fd0} fds_end={fd1} slowloris_cut={} slow_post_408={} \
         malformed_chunked_as_expected={} smuggling_refused={} h2_flood_cut={} h2_idle_closed={} \
         crowd_refused={} conns_rejected={:.0} conns_cut={:.0}",
        s.failed.load(Ordering::Relaxed),
        by_clients.load(Ordering::Relaxed),
        pct(rss0, rss1),
        fd1 as i64 - fd0 as i64,
        s.retried.load(Ordering::Relaxed),
        s.dns_resent.load(Ordering::Relaxed),
        ctx.smuggled.load(Ordering::Relaxed),
        u8::from(alive),
        total.as_secs_f64() / 60.0,
        ctx.chaos.kills.load(Ordering::Relaxed),
        by_kills.load(Ordering::Relaxed),
        ctx.chaos.scales.load(Ordering::Relaxed),
        ctx.chaos.reloads.load(Ordering::Relaxed),
        reloads("success"),
        reloads("failure"),
        rss0 as f64 / 1024.0,
        rss1 as f64 / 1024.0,
        ratio(&a.slowloris),
        ratio(&a.slow_post),
        ratio(&a.malformed),
        ratio(&a.smuggling),
        ratio(&a.h2_flood),
        ratio(&a.h2_idle),
        ratio(&a.crowd),
        sum(&final_metrics, "padis_http_connections_rejected_total"),
        sum(&final_metrics, "padis_http_connections_cut_total"),
    ))
}

fn main() -> ExitCode {
    let args = Args::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("soak: runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // The daemon is spawned from this (main) thread inside block_on: its parent-death signal follows this thread.
    let result = rt.block_on(run(args));
    rt.shutdown_timeout(Duration::from_secs(2));
    match result {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("soak: {e}");
            ExitCode::FAILURE
        }
    }
}
