//! The upgrade scenario, shared by the end-to-end test (tests/tests/ops_upgrade.rs) and `bench/run upgrade`: a
//! `padis` daemon with a plaintext HTTP listener, a TLS listener (h2), a TCP-mode listener, DNS (UDP and TCP) and
//! its admin API on TCP and a Unix socket, in front of real backends; and clients that keep it busy across
//! `padis upgrade` the way users would: HTTP/1.1 keep-alive, h2 over TLS, long WebSockets, long TCP flows, new
//! connections all the time, DNS queries over UDP and TCP. Every client counts what its user would call a
//! failure ([`Report`]).
//!
//! A keep-alive connection the server closes between two requests is what HTTP allows (RFC 9112 9.3.1, RFC 9113
//! 6.8 for a GOAWAY): the client sends its idempotent request again on a new connection. Such a retry is counted
//! apart (`retried`); a request that fails on a new connection is `failed`.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use crate::l7::{ws_echo_backend, Backend, Pki};
use crate::process::{free_port, Padis};

/// The zone the daemon serves (`www.up.test A 192.0.2.80`).
const ZONE: &str =
    "$ORIGIN up.test.\n$TTL 60\n@ IN SOA ns.up.test. admin.up.test. 1 60 10 600 5\n@ IN NS ns.up.test.\n\
                    ns IN A 192.0.2.1\nwww IN A 192.0.2.80\n";

/// The daemon, its backends and where clients reach it.
pub struct Stack {
    /// Scratch directory (config, certificates, zone, admin socket, log).
    pub dir: tempfile::TempDir,
    /// The config file.
    pub config: PathBuf,
    /// The admin Unix socket.
    pub admin_sock: PathBuf,
    /// Plaintext HTTP listener (HTTP/1.1 keep-alive, WebSocket, new connections).
    pub http: SocketAddr,
    /// TLS listener (h2).
    pub https: SocketAddr,
    /// TCP-mode listener (to an echo backend).
    pub tcp: SocketAddr,
    /// DNS (UDP and TCP).
    pub dns: SocketAddr,
    /// A TLS client config trusting the listener's certificate, offering h2.
    pub tls: Arc<rustls::ClientConfig>,
    /// The first daemon process (started by the test; the ones upgrades start are its descendants).
    pub first: Padis,
    _backend: Backend,
}

/// The config of a [`Stack`]; `extra` is appended (e.g. a `[bgp]` section).
#[allow(clippy::too_many_arguments)]
pub fn config(
    dir: &Path,
    admin: u16,
    http: u16,
    https: u16,
    tcp: u16,
    dns: u16,
    backends: [SocketAddr; 3],
    extra: &str,
) -> String {
    let [app, ws, echo] = backends;
    format!(
        r#"[admin]
listen = "127.0.0.1:{admin}"
socket = "{sock}"
[log]
level = "info"
access_log = false
[limits]
shutdown_grace = "20s"
max_conns_per_client = 0
new_conns_per_client_per_sec = 0

[[listener]]
name = "web"
bind = "127.0.0.1:{http}"
[[listener]]
name = "tls"
bind = "127.0.0.1:{https}"
[listener.tls]
alpn = ["h2", "http/1.1"]
[[listener]]
name = "flows"
bind = "127.0.0.1:{tcp}"
mode = "tcp"
group = "echo"

[[certificate]]
name = "main"
cert = "tls.pem"
key = "tls.key"

[[group]]
name = "app"
[[group.backend]]
addr = "{app}"
[[group]]
name = "ws"
[[group.backend]]
addr = "{ws}"
[[group]]
name = "echo"
[[group.backend]]
addr = "{echo}"

[[route]]
name = "ws"
host = "ws.test"
group = "ws"
[[route]]
name = "app"
group = "app"

[dns]
listen = ["127.0.0.1:{dns}"]
reuseport = 2
state_dir = "{state}"
[[dns.zone]]
name = "up.test"
file = "up.zone"
{extra}
"#,
        sock = dir.join("admin.sock").display(),
        state = dir.join("dns-state").display(),
    )
}

impl Stack {
    /// Starts the backends and `exe run --config <dir>/padis.toml` (`exe`: the padis binary, or a link to it),
    /// and waits until it serves.
    pub async fn start(exe: &Path, extra: &str) -> Stack {
        let dir = tempfile::Builder::new().prefix("padis-upgrade-").tempdir().expect("temp dir");
        let backend = Backend::start("app").await;
        let ws = ws_echo_backend().await;
        let echo = tcp_echo_backend().await;
        let pki = Pki::new(dir.path());
        pki.leaf("tls", &["app.test"]);
        std::fs::write(dir.path().join("up.zone"), ZONE).expect("zone file");
        let admin = free_port();
        let (http, https, tcp, dns) = (free_port(), free_port(), free_port(), free_udp_tcp_port());
        let path = dir.path().join("padis.toml");
        let text = config(dir.path(), admin, http, https, tcp, dns, [backend.addr, ws, echo], extra);
        std::fs::write(&path, text).expect("config");
        let admin_addr: SocketAddr = format!("127.0.0.1:{admin}").parse().expect("addr");
        let mut first = Padis::start_exe(exe, &path, admin_addr);
        first.wait_ready();
        let at = |p: u16| -> SocketAddr { format!("127.0.0.1:{p}").parse().expect("addr") };
        let stack = Stack {
            admin_sock: dir.path().join("admin.sock"),
            config: path,
            http: at(http),
            https: at(https),
            tcp: at(tcp),
            dns: at(dns),
            tls: pki.client_config(&["h2"]),
            first,
            _backend: backend,
            dir,
        };
        // DNS answers once its zone is loaded.
        let deadline = Instant::now() + Duration::from_secs(10);
        while dns_udp_query(stack.dns, 1).await.is_err() {
            assert!(Instant::now() < deadline, "DNS not answering; log:\n{}", stack.first.log_text());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        stack
    }

    /// Runs `padis upgrade` against the daemon's admin socket: whether it succeeded, and what it printed.
    pub async fn upgrade(&self) -> (bool, String) {
        let out = tokio::process::Command::new(crate::process::padis_bin())
            .arg("upgrade")
            .arg("--socket")
            .arg(&self.admin_sock)
            .output()
            .await
            .expect("padis upgrade runs");
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        (out.status.success(), text)
    }

    /// The pid of the process that answers the admin API now.
    pub fn serving_pid(&self) -> u32 {
        let pid = self.first.state()["pid"].as_u64().expect("pid in /v1/state");
        u32::try_from(pid).expect("pid")
    }

    /// The daemon's log (all processes: each new one writes where the first did).
    pub fn log_text(&self) -> String {
        self.first.log_text()
    }
}

/// A port free for TCP and UDP on 127.0.0.1 now.
fn free_udp_tcp_port() -> u16 {
    loop {
        let p = free_port();
        if std::net::UdpSocket::bind(("127.0.0.1", p)).is_ok() {
            return p;
        }
    }
}

/// Processes started by upgrades (descendants of the test's child, not its children): killed on drop.
#[derive(Default)]
pub struct Reaper(pub Vec<u32>);

impl Reaper {
    /// Stops `pid` (SIGTERM, then SIGKILL after `grace`) and waits until it is gone.
    pub fn stop(pid: u32, grace: Duration) {
        let gone = || !Path::new(&format!("/proc/{pid}")).exists() || is_zombie(pid);
        // SAFETY: kill(2) with a pid of a process this test started (through an upgrade).
        unsafe { libc::kill(pid as i32, libc::SIGTERM) };
        let deadline = Instant::now() + grace;
        while !gone() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if !gone() {
            // SAFETY: as above.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
    }
}

/// Whether `pid` has ended and waits for its parent (an upgraded process whose parent exited is reparented).
pub fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| s.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('Z')))
        .unwrap_or(true)
}

impl Drop for Reaper {
    fn drop(&mut self) {
        for &pid in &self.0 {
            Reaper::stop(pid, Duration::from_secs(3));
        }
    }
}

/// A TCP echo server.
pub async fn tcp_echo_backend() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

/// What the clients saw.
#[derive(Debug, Default, Clone)]
pub struct Report {
    /// HTTP requests answered 200 (HTTP/1.1 keep-alive, h2 over TLS, one per new connection).
    pub requests: u64,
    /// Requests not answered 200 on a new connection (or answered with another status).
    pub failed: u64,
    /// Requests sent again on a new connection after the server closed a keep-alive connection between two.
    pub retried: u64,
    /// WebSocket and TCP flows cut, or whose echo did not come back intact.
    pub broken: u64,
    /// WebSocket messages echoed.
    pub ws_messages: u64,
    /// TCP flows' exchanges echoed (long flows and short ones).
    pub tcp_exchanges: u64,
    /// DNS queries answered.
    pub queries: u64,
    /// DNS queries without an answer within 2 s.
    pub unanswered: u64,
    /// New connections measured.
    pub new_connections: u64,
    /// The longest a new connection waited (connect to the end of its answer), in milliseconds.
    pub gap_ms: f64,
    /// The first errors seen.
    pub errors: Vec<String>,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "requests={} failed={} retried={} broken={} ws_messages={} tcp_exchanges={} queries={} \
             unanswered={} new_connections={} gap_ms={:.1}",
            self.requests,
            self.failed,
            self.retried,
            self.broken,
            self.ws_messages,
            self.tcp_exchanges,
            self.queries,
            self.unanswered,
            self.new_connections,
            self.gap_ms
        )?;
        for e in &self.errors {
            write!(f, "\n  {e}")?;
        }
        Ok(())
    }
}

#[derive(Default)]
struct Tally {
    requests: AtomicU64,
    failed: AtomicU64,
    retried: AtomicU64,
    broken: AtomicU64,
    ws_messages: AtomicU64,
    tcp_exchanges: AtomicU64,
    queries: AtomicU64,
    unanswered: AtomicU64,
    new_connections: AtomicU64,
    max_wait_us: AtomicU64,
    errors: Mutex<Vec<String>>,
}

impl Tally {
    fn count(&self, c: &AtomicU64, what: &str, e: impl fmt::Display) {
        c.fetch_add(1, Ordering::Relaxed);
        let mut errors = self.errors.lock().unwrap_or_else(|p| p.into_inner());
        if errors.len() < 20 {
            errors.push(format!("{what}: {e}"));
        }
    }

    fn waited(&self, d: Duration) {
        self.new_connections.fetch_add(1, Ordering::Relaxed);
        self.max_wait_us.fetch_max(d.as_micros() as u64, Ordering::Relaxed);
    }

    fn report(&self) -> Report {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Report {
            requests: g(&self.requests),
            failed: g(&self.failed),
            retried: g(&self.retried),
            broken: g(&self.broken),
            ws_messages: g(&self.ws_messages),
            tcp_exchanges: g(&self.tcp_exchanges),
            queries: g(&self.queries),
            unanswered: g(&self.unanswered),
            new_connections: g(&self.new_connections),
            gap_ms: g(&self.max_wait_us) as f64 / 1000.0,
            errors: self.errors.lock().unwrap_or_else(|p| p.into_inner()).clone(),
        }
    }
}

/// Where the clients go.
#[derive(Clone)]
pub struct Targets {
    /// Plaintext HTTP listener.
    pub http: SocketAddr,
    /// TLS listener (h2).
    pub https: SocketAddr,
    /// TCP-mode listener to an echo backend.
    pub tcp: SocketAddr,
    /// DNS.
    pub dns: SocketAddr,
    /// TLS client config.
    pub tls: Arc<rustls::ClientConfig>,
}

impl Stack {
    /// Where the clients go.
    pub fn targets(&self) -> Targets {
        Targets { http: self.http, https: self.https, tcp: self.tcp, dns: self.dns, tls: self.tls.clone() }
    }
}

/// The clients, running until [`Load::finish`] (every loop is paced and ends with it).
pub struct Load {
    stop: CancellationToken,
    tasks: JoinSet<()>,
    tally: Arc<Tally>,
}

impl Load {
    /// Starts the clients: 2 HTTP/1.1 keep-alive, 2 h2-over-TLS, 2 WebSockets, 2 long TCP flows, a new HTTP
    /// connection and a new TCP flow every few milliseconds, 2 DNS clients over UDP and one over TCP.
    pub fn start(t: &Targets) -> Load {
        let stop = CancellationToken::new();
        let tally = Arc::new(Tally::default());
        let mut tasks = JoinSet::new();
        for _ in 0..2 {
            tasks.spawn(h1_keepalive(t.http, tally.clone(), stop.clone()));
            tasks.spawn(h2_tls(t.https, t.tls.clone(), tally.clone(), stop.clone()));
            tasks.spawn(websocket(t.http, tally.clone(), stop.clone()));
            tasks.spawn(tcp_flow(t.tcp, tally.clone(), stop.clone()));
            tasks.spawn(dns_udp(t.dns, tally.clone(), stop.clone()));
        }
        tasks.spawn(new_http_connections(t.http, tally.clone(), stop.clone()));
        tasks.spawn(new_tcp_flows(t.tcp, tally.clone(), stop.clone()));
        tasks.spawn(dns_tcp(t.dns, tally.clone(), stop.clone()));
        Load { stop, tasks, tally }
    }

    /// What the clients saw so far.
    pub fn report(&self) -> Report {
        self.tally.report()
    }

    /// Stops the clients (WebSockets and flows close cleanly) and returns what they saw.
    pub async fn finish(mut self) -> Report {
        self.stop.cancel();
        let all = async { while self.tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(Duration::from_secs(15), all).await.is_err() {
            self.tally.count(&self.tally.broken, "load", "clients did not finish within 15 s");
            self.tasks.abort_all();
        }
        self.tally.report()
    }
}

type H1Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;
type H2Sender = hyper::client::conn::http2::SendRequest<Full<Bytes>>;

fn get(uri: &str, host: &str, version: http::Version) -> Request<Full<Bytes>> {
    Request::builder().uri(uri).header("host", host).version(version).body(Full::new(Bytes::new())).expect("request")
}

/// Sends a request and reads the whole answer: its status.
async fn status_of<B>(
    send: impl std::future::Future<Output = Result<http::Response<B>, hyper::Error>>,
) -> Result<u16, String>
where
    B: hyper::body::Body,
    B::Error: fmt::Display,
{
    let resp = tokio::time::timeout(Duration::from_secs(5), send)
        .await
        .map_err(|_| "no answer within 5 s".to_string())?
        .map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    resp.into_body().collect().await.map_err(|e| e.to_string())?;
    Ok(status)
}

async fn h1_connect(addr: SocketAddr) -> Result<H1Sender, String> {
    let s = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s)).await.map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    Ok(sender)
}

async fn h2_connect(addr: SocketAddr, tls: Arc<rustls::ClientConfig>) -> Result<H2Sender, String> {
    let info = crate::l7::tls_connect(addr, tls, "app.test").await.map_err(|e| e.to_string())?;
    if info.alpn.as_deref() != Some("h2") {
        return Err(format!("ALPN {:?} instead of h2", info.alpn));
    }
    let (sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(info.stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    Ok(sender)
}

/// One client on one keep-alive connection at a time (`used`: requests it carried).
struct KeepAlive<S> {
    conn: Option<(S, u64)>,
}

impl<S> KeepAlive<S> {
    /// Counts one request's outcome; the connection is dropped after an error.
    fn outcome(&mut self, tally: &Tally, what: &str, r: Result<u16, String>) {
        let used = self.conn.as_ref().map_or(0, |c| c.1);
        match r {
            Ok(200) => {
                tally.requests.fetch_add(1, Ordering::Relaxed);
                if let Some(c) = self.conn.as_mut() {
                    c.1 += 1;
                }
            }
            Ok(code) => {
                tally.count(&tally.failed, what, format!("status {code}"));
                self.conn = None;
            }
            // Closed between two requests: sent again on a new connection.
            Err(_) if used > 0 => {
                tally.retried.fetch_add(1, Ordering::Relaxed);
                self.conn = None;
            }
            Err(e) => {
                tally.count(&tally.failed, what, e);
                self.conn = None;
            }
        }
    }
}

async fn pace(stop: &CancellationToken, d: Duration) -> bool {
    tokio::select! {
        _ = stop.cancelled() => false,
        _ = tokio::time::sleep(d) => true,
    }
}

async fn h1_keepalive(addr: SocketAddr, tally: Arc<Tally>, stop: CancellationToken) {
    let mut ka = KeepAlive::<H1Sender> { conn: None };
    while pace(&stop, Duration::from_millis(2)).await {
        if ka.conn.is_none() {
            match h1_connect(addr).await {
                Ok(s) => ka.conn = Some((s, 0)),
                Err(e) => {
                    tally.count(&tally.failed, "http/1.1 connect", e);
                    continue;
                }
            }
        }
        let Some((s, _)) = ka.conn.as_mut() else { continue };
        let r = match s.ready().await {
            Ok(()) => status_of(s.send_request(get("/", "app.test", http::Version::HTTP_11))).await,
            Err(e) => Err(e.to_string()),
        };
        ka.outcome(&tally, "http/1.1", r);
    }
}

async fn h2_tls(addr: SocketAddr, tls: Arc<rustls::ClientConfig>, tally: Arc<Tally>, stop: CancellationToken) {
    let mut ka = KeepAlive::<H2Sender> { conn: None };
    while pace(&stop, Duration::from_millis(2)).await {
        if ka.conn.is_none() {
            match h2_connect(addr, tls.clone()).await {
                Ok(s) => ka.conn = Some((s, 0)),
                Err(e) => {
                    tally.count(&tally.failed, "h2 connect", e);
                    continue;
                }
            }
        }
        let Some((s, _)) = ka.conn.as_mut() else { continue };
        let r = match s.ready().await {
            Ok(()) => status_of(s.send_request(get("https://app.test/", "app.test", http::Version::HTTP_2))).await,
            Err(e) => Err(e.to_string()),
        };
        ka.outcome(&tally, "h2", r);
    }
}

/// A new connection with one request every 5 ms; each one's wait is measured.
async fn new_http_connections(addr: SocketAddr, tally: Arc<Tally>, stop: CancellationToken) {
    while pace(&stop, Duration::from_millis(5)).await {
        let t = Instant::now();
        let r = async {
            let mut s = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
            s.write_all(b"GET / HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n")
                .await
                .map_err(|e| e.to_string())?;
            let mut out = Vec::new();
            tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
                .await
                .map_err(|_| "no answer within 5 s".to_string())?
                .map_err(|e| e.to_string())?;
            if out.starts_with(b"HTTP/1.1 200") {
                Ok(())
            } else {
                Err(format!("answer {:?}", String::from_utf8_lossy(&out[..out.len().min(40)])))
            }
        }
        .await;
        match r {
            Ok(()) => {
                tally.waited(t.elapsed());
                tally.requests.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => tally.count(&tally.failed, "new connection", e),
        }
    }
}

/// A WebSocket open for the whole run: a message every 20 ms, each echoed within 3 s.
async fn websocket(addr: SocketAddr, tally: Arc<Tally>, stop: CancellationToken) {
    'connect: while !stop.is_cancelled() {
        let ws = async {
            let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
            let (ws, _) =
                tokio_tungstenite::client_async("ws://ws.test/socket", tcp).await.map_err(|e| e.to_string())?;
            Ok::<_, String>(ws)
        };
        let mut ws = match tokio::time::timeout(Duration::from_secs(5), ws).await {
            Ok(Ok(ws)) => ws,
            Ok(Err(e)) => {
                tally.count(&tally.broken, "websocket connect", e);
                pace(&stop, Duration::from_millis(20)).await;
                continue;
            }
            Err(_) => {
                tally.count(&tally.broken, "websocket connect", "no handshake within 5 s");
                continue;
            }
        };
        let mut n = 0u64;
        while pace(&stop, Duration::from_millis(20)).await {
            n += 1;
            let text = format!("message {n}");
            let echoed = async {
                ws.send(Message::text(text.clone())).await.map_err(|e| e.to_string())?;
                loop {
                    match ws.next().await {
                        Some(Ok(Message::Text(t))) if t.as_str() == format!("echo: {text}") => return Ok(()),
                        Some(Ok(Message::Text(t))) => return Err(format!("wrong echo {t:?}")),
                        Some(Ok(_)) => continue,
                        Some(Err(e)) => return Err(e.to_string()),
                        None => return Err("closed".to_string()),
                    }
                }
            };
            match tokio::time::timeout(Duration::from_secs(3), echoed).await {
                Ok(Ok(())) => {
                    tally.ws_messages.fetch_add(1, Ordering::Relaxed);
                }
                Ok(Err(e)) => {
                    tally.count(&tally.broken, "websocket", format!("after {n} messages: {e}"));
                    continue 'connect;
                }
                Err(_) => {
                    tally.count(&tally.broken, "websocket", format!("after {n} messages: no echo within 3 s"));
                    continue 'connect;
                }
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(3), ws.close(None)).await;
        return;
    }
}

/// Writes `msg` and reads it back.
async fn echo(s: &mut TcpStream, msg: &[u8]) -> Result<(), String> {
    let exchange = async {
        s.write_all(msg).await.map_err(|e| e.to_string())?;
        let mut back = vec![0u8; msg.len()];
        s.read_exact(&mut back).await.map_err(|e| e.to_string())?;
        if back == msg {
            Ok(())
        } else {
            Err("echo differs".to_string())
        }
    };
    tokio::time::timeout(Duration::from_secs(3), exchange).await.map_err(|_| "no echo within 3 s".to_string())?
}

/// A TCP flow open for the whole run through the TCP-mode listener: 64 bytes every 20 ms, echoed.
async fn tcp_flow(addr: SocketAddr, tally: Arc<Tally>, stop: CancellationToken) {
    'connect: while !stop.is_cancelled() {
        let mut s = match TcpStream::connect(addr).await {
            Ok(s) => s,
            Err(e) => {
                tally.count(&tally.broken, "tcp flow connect", e);
                pace(&stop, Duration::from_millis(20)).await;
                continue;
            }
        };
        let mut n = 0u64;
        while pace(&stop, Duration::from_millis(20)).await {
            n += 1;
            let msg = format!("{n:064}");
            match echo(&mut s, msg.as_bytes()).await {
                Ok(()) => {
                    tally.tcp_exchanges.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    tally.count(&tally.broken, "tcp flow", format!("after {n} exchanges: {e}"));
                    continue 'connect;
                }
            }
        }
        return;
    }
}

/// A new TCP flow every 10 ms: connect, one exchange, close; each one's wait is measured.
async fn new_tcp_flows(addr: SocketAddr, tally: Arc<Tally>, stop: CancellationToken) {
    while pace(&stop, Duration::from_millis(10)).await {
        let t = Instant::now();
        let r = async {
            let mut s = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
            echo(&mut s, b"short flow").await
        }
        .await;
        match r {
            Ok(()) => {
                tally.waited(t.elapsed());
                tally.tcp_exchanges.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => tally.count(&tally.failed, "new tcp flow", e),
        }
    }
}

/// A query for `www.up.test A` with `id`.
fn dns_query(id: u16) -> Vec<u8> {
    let mut q = Vec::with_capacity(32);
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in ["www", "up", "test"] {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

/// Whether `a` answers query `id` with NOERROR and at least one record.
fn dns_answered(a: &[u8], id: u16) -> Result<bool, String> {
    if a.len() < 12 || a[..2] != id.to_be_bytes() {
        return Ok(false);
    }
    let rcode = a[3] & 0x0f;
    let ancount = u16::from_be_bytes([a[6], a[7]]);
    if a[2] & 0x80 == 0 || rcode != 0 || ancount == 0 {
        return Err(format!("answer rcode {rcode}, {ancount} records"));
    }
    Ok(true)
}

/// One query over UDP, answered within 2 s.
pub async fn dns_udp_query(addr: SocketAddr, id: u16) -> Result<(), String> {
    let sock = UdpSocket::bind("127.0.0.1:0").await.map_err(|e| e.to_string())?;
    udp_exchange(&sock, addr, id).await
}

async fn udp_exchange(sock: &UdpSocket, addr: SocketAddr, id: u16) -> Result<(), String> {
    sock.send_to(&dns_query(id), addr).await.map_err(|e| e.to_string())?;
    let mut buf = [0u8; 1500];
    let wait = async {
        loop {
            let (n, _) = sock.recv_from(&mut buf).await.map_err(|e| e.to_string())?;
            if dns_answered(&buf[..n], id)? {
                return Ok(());
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(2), wait).await.map_err(|_| "no answer within 2 s".to_string())?
}

/// Queries over UDP, one every 2 ms from one socket.
async fn dns_udp(addr: SocketAddr, tally: Arc<Tally>, stop: CancellationToken) {
    let sock = UdpSocket::bind("127.0.0.1:0").await.expect("client socket");
    let mut id = fastrand_id();
    while pace(&stop, Duration::from_millis(2)).await {
        id = id.wrapping_add(1);
        match udp_exchange(&sock, addr, id).await {
            Ok(()) => {
                tally.queries.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => tally.count(&tally.unanswered, "dns udp", e),
        }
    }
}

fn fastrand_id() -> u16 {
    (std::process::id() as u16).wrapping_mul(31).wrapping_add(Instant::now().elapsed().subsec_nanos() as u16)
}

/// Queries over TCP, a new connection every 10 ms.
async fn dns_tcp(addr: SocketAddr, tally: Arc<Tally>, stop: CancellationToken) {
    let mut id = fastrand_id();
    while pace(&stop, Duration::from_millis(10)).await {
        id = id.wrapping_add(1);
        let r = async {
            let mut s = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
            let q = dns_query(id);
            let mut framed = (q.len() as u16).to_be_bytes().to_vec();
            framed.extend_from_slice(&q);
            s.write_all(&framed).await.map_err(|e| e.to_string())?;
            let mut len = [0u8; 2];
            s.read_exact(&mut len).await.map_err(|e| e.to_string())?;
            let mut a = vec![0u8; u16::from_be_bytes(len).into()];
            s.read_exact(&mut a).await.map_err(|e| e.to_string())?;
            match dns_answered(&a, id)? {
                true => Ok(()),
                false => Err("answer to another query".to_string()),
            }
        };
        match tokio::time::timeout(Duration::from_secs(2), r).await {
            Ok(Ok(())) => {
                tally.queries.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Err(e)) => tally.count(&tally.unanswered, "dns tcp", e),
            Err(_) => tally.count(&tally.unanswered, "dns tcp", "no answer within 2 s"),
        }
    }
}

/// The VIP the routed scenario announces over BGP.
#[cfg(feature = "l4")]
pub const VIP: &str = "198.51.100.80";

/// What the routed scenario saw.
#[cfg(feature = "l4")]
#[derive(Debug, Clone)]
pub struct Routed {
    /// The clients' view.
    pub report: Report,
    /// Upgrades done.
    pub upgrades: usize,
    /// Times BIRD removed the VIP's route (its route log).
    pub withdrawn: usize,
    /// Graceful restarts BIRD saw complete.
    pub graceful_restarts: usize,
    /// BIRD's log (for a failure's message).
    pub bird_log: String,
}

/// The whole gateway across `upgrades` upgrades under load, `spacing` apart: the [`Stack`] runs in a network
/// namespace with its XDP program on the link to a BIRD router, announcing [`VIP`] over BGP with graceful
/// restart; the clients of [`Load`] run in the same namespace. BIRD's route log says whether the VIP's route
/// ever left its table.
#[cfg(feature = "l4")]
pub fn routed(upgrades: usize, spacing: Duration) -> Routed {
    use crate::bgp::{bird_config, Bird, Lab, ROUTER_V4, SPEAKER_V4};
    let lab = Lab::new();
    let bird_cfg = bird_config(65010, 4_200_000_001, 9).replacen(
        "  keepalive time 1;\n",
        "  keepalive time 1;\n  debug { states, routes, events };\n",
        1,
    );
    let bird = Bird::start(lab.router.name(), lab.dir.path(), &bird_cfg);
    let bird_log = || std::fs::read_to_string(lab.dir.path().join("bird.stderr")).unwrap_or_default();
    let instance = crate::netns::unique_name("upg");
    let _pins = crate::l4::PinGuard(instance.clone());
    let extra = format!(
        r#"
[bgp]
asn = 4200000001
router_id = "{SPEAKER_V4}"
hold_time = "9s"
connect_retry = "300ms"
graceful_restart = "60s"
[[bgp.peer]]
address = "{ROUTER_V4}"
asn = 65010

[l4]
interfaces = ["vs"]
instance = "{instance}"
xdp_mode = "native"
max_vips = 4
max_backends = 64
max_flows = 65536
[[vip]]
name = "web"
addr = "{VIP}"
port = 80
[[vip.backend]]
addr = "{ROUTER_V4}"
"#
    );
    let prefix = format!("{VIP}/32");
    let route = |b: &Bird| !b.route(&prefix).is_empty();
    let (report, done) = crate::netns::in_netns_threaded(lab.speaker.name(), || async {
        let stack = Stack::start(&crate::process::padis_bin(), &extra).await;
        let mut reaper = Reaper::default();
        let deadline = Instant::now() + Duration::from_secs(30);
        while !route(&bird) {
            assert!(Instant::now() < deadline, "BIRD never learnt the VIP; log:\n{}\n{}", stack.log_text(), bird_log());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let load = Load::start(&stack.targets());
        tokio::time::sleep(spacing).await;
        let mut done = 0;
        for _ in 0..upgrades {
            let (ok, out) = stack.upgrade().await;
            assert!(ok, "padis upgrade failed: {out}\nlog:\n{}", stack.log_text());
            let pid = out
                .split("upgraded: process ")
                .nth(1)
                .and_then(|r| r.split_whitespace().next())
                .and_then(|p| p.parse().ok())
                .unwrap_or_else(|| panic!("no pid in {out:?}"));
            reaper.0.push(pid);
            done += 1;
            tokio::time::sleep(spacing).await;
        }
        let report = load.finish().await;
        assert!(route(&bird), "the VIP's route is gone at the end; log:\n{}\n{}", stack.log_text(), bird_log());
        (report, done)
    });
    let log = bird_log();
    let withdrawn = log.lines().filter(|l| l.contains("removed") && l.contains(&prefix)).count();
    // (A restart BIRD saw end: the speaker came back and sent its End-of-RIB.)
    let graceful_restarts = log.lines().filter(|l| l.contains("Neighbor graceful restart done")).count();
    Routed { report, upgrades: done, withdrawn, graceful_restarts, bird_log: log }
}
