//! HTTP/2 clients that misbehave below the request level, through real sockets with a raw frame client: an idle
//! connection is closed after the idle timeout even if the client keeps sending PINGs, and within
//! `limits.close_grace` more even if it never acknowledges the PING of the GOAWAY; PING and SETTINGS floods are
//! cut (`padis_http_connections_cut_total{reason}`), on h2c and on TLS (ALPN h2), while the proxy keeps serving
//! well-behaved clients.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use padis_tests::l7::{group_toml, temp_dir, tls_connect, Backend, H2Conn, Pki, Proxy};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Mutex;
use tokio::task::JoinHandle;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const SETTINGS: u8 = 4;
const PING: u8 = 6;
const GOAWAY: u8 = 7;
const ACK: u8 = 1;

fn frame(kind: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
    let len = payload.len();
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags, 0, 0, 0, 0];
    f.extend_from_slice(payload);
    f
}

async fn proxy(limits: &str, b: &Backend) -> (Proxy, tempfile::TempDir) {
    let dir = temp_dir();
    let cfg = format!(
        "[limits]\n{limits}\n[[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\n[[route]]\nname = \"r\"\ngroup = \"g\"\n{}",
        group_toml("g", &[b], "")
    );
    (Proxy::start(&cfg, dir.path()).await, dir)
}

/// What the raw client saw of the server.
#[derive(Default)]
struct Seen {
    goaway: AtomicBool,
    /// PINGs of the server (not acknowledgements).
    pings: AtomicUsize,
    closed: AtomicBool,
}

/// A raw HTTP/2 client: the preface and an empty SETTINGS sent, then a reader that follows the server's frames,
/// acknowledges its SETTINGS, acknowledges its PINGs only if `ack_pings`, and notes when the connection ends.
struct RawH2 {
    write: Arc<Mutex<Box<dyn AsyncWrite + Send + Unpin>>>,
    seen: Arc<Seen>,
    reader: JoinHandle<()>,
    started: Instant,
}

impl RawH2 {
    async fn connect(addr: SocketAddr, ack_pings: bool) -> RawH2 {
        Self::over(TcpStream::connect(addr).await.expect("connect"), ack_pings).await
    }

    /// The client over an established stream (TLS with ALPN h2, or TCP).
    async fn over<S: AsyncRead + AsyncWrite + Send + 'static>(stream: S, ack_pings: bool) -> RawH2 {
        let (mut read, write) = tokio::io::split(stream);
        let mut write: Box<dyn AsyncWrite + Send + Unpin> = Box::new(write);
        let mut hello = PREFACE.to_vec();
        hello.extend(frame(SETTINGS, 0, &[]));
        write.write_all(&hello).await.expect("preface");
        write.flush().await.expect("preface");
        let write = Arc::new(Mutex::new(write));
        let seen = Arc::new(Seen::default());
        let (w, s) = (write.clone(), seen.clone());
        let reader = tokio::spawn(async move {
            let mut buf = Vec::new();
            let mut chunk = vec![0u8; 64 * 1024];
            loop {
                match read.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
                while buf.len() >= 9 {
                    let len = usize::from(buf[0]) << 16 | usize::from(buf[1]) << 8 | usize::from(buf[2]);
                    if buf.len() < 9 + len {
                        break;
                    }
                    let (kind, flags) = (buf[3], buf[4]);
                    let payload = buf[9..9 + len].to_vec();
                    buf.drain(..9 + len);
                    let answer = match kind {
                        SETTINGS if flags & ACK == 0 => Some(frame(SETTINGS, ACK, &[])),
                        PING if flags & ACK == 0 => {
                            s.pings.fetch_add(1, Ordering::SeqCst);
                            ack_pings.then(|| frame(PING, ACK, &payload))
                        }
                        GOAWAY => {
                            s.goaway.store(true, Ordering::SeqCst);
                            None
                        }
                        _ => None,
                    };
                    if let Some(a) = answer {
                        let mut w = w.lock().await;
                        let _ = w.write_all(&a).await;
                        let _ = w.flush().await;
                    }
                }
            }
            s.closed.store(true, Ordering::SeqCst);
        });
        RawH2 { write, seen, reader, started: Instant::now() }
    }

    /// Sends bytes; false once the connection is gone.
    async fn send(&self, bytes: &[u8]) -> bool {
        let mut w = self.write.lock().await;
        w.write_all(bytes).await.is_ok() && w.flush().await.is_ok()
    }

    /// Waits until the server closed the connection; how long after connecting.
    async fn closed_within(self, limit: Duration) -> Duration {
        tokio::time::timeout(limit, self.reader).await.expect("the server closed the connection in time").ok();
        self.started.elapsed()
    }
}

fn cut(p: &Proxy, reason: &str) -> f64 {
    p.metric("padis_http_connections_cut_total", &[("reason", reason)])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_h2_connection_is_closed_though_the_client_never_acks_the_goaway_ping() {
    let b = Backend::start("b").await;
    let (p, _dir) = proxy("client_idle_timeout = \"500ms\"\nclose_grace = \"500ms\"", &b).await;
    let c = RawH2::connect(p.addr("web"), false).await;
    let seen = c.seen.clone();
    let took = c.closed_within(Duration::from_secs(5)).await;
    assert!(seen.goaway.load(Ordering::SeqCst), "a GOAWAY came first");
    assert!(seen.pings.load(Ordering::SeqCst) >= 1, "with the PING of the graceful close");
    assert!(took >= Duration::from_millis(900), "closed after {took:?}: idle timeout and grace not both over");
    assert!(took < Duration::from_millis(2500), "closed after {took:?}");
    assert_eq!(cut(&p, "close_grace"), 1.0);
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pings_do_not_keep_an_idle_h2_connection_open() {
    let b = Backend::start("b").await;
    let (p, _dir) = proxy("client_idle_timeout = \"500ms\"\nclose_grace = \"500ms\"", &b).await;
    for ack in [true, false] {
        let c = RawH2::connect(p.addr("web"), ack).await;
        // One PING every 100 ms (within the control-frame budget), until the server closes.
        let (write, seen) = (c.write.clone(), c.seen.clone());
        tokio::spawn(async move {
            for i in 0u64..100 {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let ping = frame(PING, 0, &i.to_be_bytes());
                if seen.closed.load(Ordering::SeqCst) || write.lock().await.write_all(&ping).await.is_err() {
                    break;
                }
            }
        });
        let took = c.closed_within(Duration::from_secs(5)).await;
        // Acknowledged: closed by the graceful close itself; not acknowledged: at the end of the grace.
        let most = if ack { Duration::from_millis(1500) } else { Duration::from_millis(2500) };
        assert!(took >= Duration::from_millis(450) && took < most, "ack {ack}: closed after {took:?}");
    }
    assert_eq!(cut(&p, "h2_control_flood"), 0.0, "10 PINGs a second are within the budget");
    assert_eq!(cut(&p, "close_grace"), 1.0, "only the client that never acked needed the grace");
    p.stop().await;
}

/// A client sending copies of `one` as fast as it can (its reader takes the answers) is cut.
async fn flood_is_cut(one: Vec<u8>, reason: &str) {
    let b = Backend::start("b").await;
    let (p, _dir) = proxy("h2_max_control_frames_per_sec = 50", &b).await;
    let web = p.addr("web");
    let c = RawH2::connect(web, true).await;
    flood(c, &one).await;
    assert_eq!(cut(&p, reason), 1.0);
    // Others are served.
    let mut h2 = H2Conn::connect(web).await;
    assert_eq!(h2.get("x", "/").await.expect("a well-behaved h2 client").status, 200);
    p.stop().await;
}

/// Sends bursts of 200 copies of `one` until the server cuts the connection, which must be soon.
async fn flood(c: RawH2, one: &[u8]) {
    let burst: Vec<u8> = one.iter().copied().cycle().take(one.len() * 200).collect();
    let start = Instant::now();
    let mut sent = 0;
    while sent < 50 && c.send(&burst).await {
        sent += 1;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(sent < 50, "the flood ({} frames) was never cut", sent * 200);
    let took = c.closed_within(Duration::from_secs(5)).await;
    assert!(start.elapsed() < Duration::from_secs(3), "cut after {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ping_flood_is_cut() {
    flood_is_cut(frame(PING, 0, &[7; 8]), "h2_control_flood").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_settings_flood_is_cut() {
    flood_is_cut(frame(SETTINGS, 0, &[0, 3, 0, 0, 0, 100]), "h2_control_flood").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ping_flood_over_tls_h2_is_cut() {
    let b = Backend::start("b").await;
    let dir = temp_dir();
    let pki = Pki::new(dir.path());
    pki.leaf("site", &["h2.test"]);
    let cfg = format!(
        "[limits]\nh2_max_control_frames_per_sec = 50\n\
         [[listener]]\nname = \"tls\"\nbind = \"127.0.0.1:0\"\n[listener.tls]\n\
         [[certificate]]\nname = \"site\"\ncert = \"site.pem\"\nkey = \"site.key\"\n\
         [[route]]\nname = \"r\"\ngroup = \"g\"\n{}",
        group_toml("g", &[&b], "")
    );
    let p = Proxy::start(&cfg, dir.path()).await;
    let tls = tls_connect(p.addr("tls"), pki.client_config(&["h2"]), "h2.test").await.expect("TLS");
    assert_eq!(tls.alpn.as_deref(), Some("h2"));
    let c = RawH2::over(tls.stream, true).await;
    flood(c, &frame(PING, 0, &[9; 8])).await;
    assert_eq!(cut(&p, "h2_control_flood"), 1.0);
    p.stop().await;
}
