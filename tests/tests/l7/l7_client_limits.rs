//! L7 per-client-address limits and the send timeout, through real sockets: the concurrent connections of one
//! address are counted over all listeners (fast path and hyper path) and the one over the limit is closed at
//! once while another address (127.0.0.2) still connects; new connections per second likewise; both counted in
//! `padis_http_connections_rejected_total{reason}`; upgraded tunnels count as long as they are open. A client that
//! never reads its (large) answer is cut after `limits.send_timeout` on both paths (and on HTTP/2 one that grants
//! no flow-control window), and the backend connection carrying that answer is closed with it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use padis_tests::l7::{get_req, group_toml, temp_dir, Backend, Proxy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// Two listeners, `fast` (the fast path) and `hyper` (the hyper path only), one route to group `g`.
async fn proxy(limits: &str, group: &str) -> (Proxy, tempfile::TempDir) {
    let dir = temp_dir();
    let cfg = format!(
        "[limits]\n{limits}\n[[listener]]\nname = \"fast\"\nbind = \"127.0.0.1:0\"\n\
         [[listener]]\nname = \"hyper\"\nbind = \"127.0.0.1:0\"\nfast_path = false\n\
         [[route]]\nname = \"r\"\ngroup = \"g\"\n{group}"
    );
    (Proxy::start(&cfg, dir.path()).await, dir)
}

/// A TCP connection to `to` from source address `from` (an error if the proxy reset it at once).
async fn connect_from(from: &str, to: SocketAddr) -> std::io::Result<TcpStream> {
    let s = TcpSocket::new_v4().expect("socket");
    s.bind(format!("{from}:0").parse().expect("addr")).expect("bind source");
    s.connect(to).await
}

/// A keep-alive HTTP/1.1 connection.
struct Conn(hyper::client::conn::http1::SendRequest<Full<Bytes>>);

impl Conn {
    /// GET `path`: the status, or None if the connection failed (the proxy closed it).
    async fn get(&mut self, path: &str) -> Option<u16> {
        let ask = async {
            self.0.ready().await.ok()?;
            let resp = self.0.send_request(get_req("x", path)).await.ok()?;
            let status = resp.status().as_u16();
            resp.into_body().collect().await.ok()?;
            Some(status)
        };
        tokio::time::timeout(Duration::from_secs(5), ask).await.expect("an answer or a close")
    }
}

/// A keep-alive HTTP/1.1 connection from `from` that got its first answer (200), or None if the proxy closed it.
async fn h1_from(from: &str, to: SocketAddr) -> Option<Conn> {
    let stream = connect_from(from, to).await.ok()?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.ok()?;
    tokio::spawn(conn);
    let mut c = Conn(sender);
    (c.get("/").await? == 200).then_some(c)
}

fn rejected(p: &Proxy, reason: &str) -> f64 {
    p.metric("padis_http_connections_rejected_total", &[("reason", reason)])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_connections_per_client_address_over_all_listeners() {
    let b = Backend::start("b").await;
    let (p, _dir) =
        proxy("max_conns_per_client = 3\nnew_conns_per_client_per_sec = 0", &group_toml("g", &[&b], "")).await;
    let (fast, hyper) = (p.addr("fast"), p.addr("hyper"));
    let mut open = Vec::new();
    for to in [fast, hyper, fast] {
        open.push(h1_from("127.0.0.1", to).await.expect("within the limit"));
    }
    for to in [fast, hyper] {
        assert!(h1_from("127.0.0.1", to).await.is_none(), "a 4th connection of 127.0.0.1 is closed");
    }
    assert_eq!(rejected(&p, "per_client_conns"), 2.0);
    assert_eq!(rejected(&p, "per_client_rate"), 0.0);
    // Another address is not affected, on either listener, up to its own limit.
    let mut other = Vec::new();
    for to in [hyper, fast, hyper] {
        other.push(h1_from("127.0.0.2", to).await.expect("another client address connects"));
    }
    assert!(h1_from("127.0.0.2", fast).await.is_none());
    assert_eq!(rejected(&p, "per_client_conns"), 3.0);
    // The open connections still work.
    for c in open.iter_mut() {
        assert_eq!(c.get("/again").await, Some(200), "still served");
    }
    // A closed connection frees its slot (once the proxy saw the close).
    drop(open.pop());
    let deadline = Instant::now() + Duration::from_secs(5);
    let back = loop {
        if let Some(c) = h1_from("127.0.0.1", hyper).await {
            break c;
        }
        assert!(Instant::now() < deadline, "the slot of a closed connection never came back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    drop(back);
    drop(other);
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_connections_per_second_per_client_address() {
    let b = Backend::start("b").await;
    let (p, _dir) = proxy("new_conns_per_client_per_sec = 5", &group_toml("g", &[&b], "")).await;
    let (fast, hyper) = (p.addr("fast"), p.addr("hyper"));
    let start = Instant::now();
    let mut served = 0;
    let mut refused = 0;
    for i in 0..20 {
        match h1_from("127.0.0.1", if i % 2 == 0 { fast } else { hyper }).await {
            Some(_) => served += 1,
            None => refused += 1,
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    // A burst of one second's worth (5), plus what the rate refilled meanwhile.
    let most = 5 + (elapsed * 5.0).ceil() as usize;
    assert!(served >= 5 && served <= most, "served {served} of 20 in {elapsed:.2}s (at most {most})");
    assert_eq!(rejected(&p, "per_client_rate"), refused as f64);
    assert_eq!(rejected(&p, "per_client_conns"), 0.0);
    // Another address has its own budget.
    for to in [fast, hyper, fast] {
        assert!(h1_from("127.0.0.2", to).await.is_some(), "127.0.0.2 is not limited by 127.0.0.1's rate");
    }
    // The budget refills at the rate.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for to in [fast, hyper, fast] {
        assert!(h1_from("127.0.0.1", to).await.is_some(), "refilled after a second");
    }
    p.stop().await;
}

/// A backend that answers every request with a `size`-byte body, written for as long as the proxy takes it;
/// `closed` is set when a write fails (the proxy closed a connection), `sent` counts the bytes that went out.
struct BigBackend {
    addr: SocketAddr,
    closed: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
}

impl BigBackend {
    async fn start(size: u64) -> BigBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let closed = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let (c, s) = (closed.clone(), sent.clone());
        tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                tokio::spawn(Self::answer(conn, size, c.clone(), s.clone()));
            }
        });
        BigBackend { addr, closed, sent }
    }

    /// Answers one request on `conn`.
    async fn answer(mut conn: TcpStream, size: u64, closed: Arc<AtomicBool>, sent: Arc<AtomicU64>) {
        let mut head = Vec::new();
        let mut buf = [0u8; 4096];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match conn.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
        let answer = format!("HTTP/1.1 200 OK\r\ncontent-length: {size}\r\n\r\n");
        if conn.write_all(answer.as_bytes()).await.is_err() {
            closed.store(true, Ordering::SeqCst);
            return;
        }
        let chunk = vec![b'z'; 64 * 1024];
        let mut left = size;
        while left > 0 {
            let n = left.min(chunk.len() as u64) as usize;
            match conn.write(&chunk[..n]).await {
                Ok(0) | Err(_) => {
                    closed.store(true, Ordering::SeqCst);
                    return;
                }
                Ok(n) => {
                    left -= n as u64;
                    sent.fetch_add(n as u64, Ordering::SeqCst);
                }
            }
        }
    }
}

/// A client on `listener` asks for a 1 GiB answer and never reads it: it is cut about `send_timeout` (1 s) after
/// the proxy's writes stopped going out, and the backend connection is closed.
async fn slow_reader_is_cut(listener: &str) {
    const SIZE: u64 = 1 << 30;
    let big = BigBackend::start(SIZE).await;
    let group = format!("[[group]]\nname = \"g\"\n[[group.backend]]\naddr = \"{}\"\n", big.addr);
    let (p, _dir) = proxy("send_timeout = \"1s\"", &group).await;
    let web = p.addr(listener);
    let mut client = TcpStream::connect(web).await.expect("connect");
    let start = Instant::now();
    client.write_all(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n").await.expect("request");
    // Never read. The backend connection is closed once the send timeout cut the client.
    while !big.closed.load(Ordering::SeqCst) {
        assert!(start.elapsed() < Duration::from_secs(15), "the backend connection was never closed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = start.elapsed();
    let sent = big.sent.load(Ordering::SeqCst);
    assert!(sent < SIZE / 4, "the answer stopped at the buffers ({sent} bytes went out)");
    assert!(took >= Duration::from_millis(900), "cut after {took:?}, before the send timeout");
    assert_eq!(
        p.metric("padis_http_connections_cut_total", &[("listener", listener), ("reason", "send_timeout")]),
        1.0
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while p.metric("padis_active_connections", &[("listener", listener)]) != 0.0 {
        assert!(Instant::now() < deadline, "the client connection is still counted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The client sees the end of the connection after the bytes that made it into its buffers.
    let mut sink = vec![0u8; 1 << 20];
    let read_all = async {
        loop {
            match client.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read_all).await.expect("the client connection was closed");
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_reader_is_cut_after_send_timeout_on_the_hyper_path() {
    slow_reader_is_cut("hyper").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_reader_is_cut_after_send_timeout_on_the_fast_path() {
    slow_reader_is_cut("fast").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_but_steady_reader_is_not_cut() {
    const SIZE: u64 = 1 << 30;
    let big = BigBackend::start(SIZE).await;
    let group = format!("[[group]]\nname = \"g\"\n[[group.backend]]\naddr = \"{}\"\n", big.addr);
    let (p, _dir) = proxy("send_timeout = \"1s\"", &group).await;
    for listener in ["hyper", "fast"] {
        let mut client = TcpStream::connect(p.addr(listener)).await.expect("connect");
        client.write_all(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n").await.expect("request");
        // Reads 1 MiB every 100 ms: far slower than the backend (the proxy's writes wait most of the time), but
        // never stalled for a whole send timeout.
        let start = Instant::now();
        let mut buf = vec![0u8; 1 << 20];
        while start.elapsed() < Duration::from_secs(3) {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let mut got = 0;
            while got < buf.len() {
                let n = client.read(&mut buf[got..]).await.expect("still open");
                assert!(n > 0, "{listener}: closed after {:?}", start.elapsed());
                got += n;
            }
        }
        assert!(!big.closed.load(Ordering::SeqCst), "{listener}: the backend connection is still in use");
        assert_eq!(p.metric("padis_http_connections_cut_total", &[("reason", "send_timeout")]), 0.0, "{listener}");
        // Gone with its client: the backend sees it, and the next round starts afresh.
        drop(client);
        let deadline = Instant::now() + Duration::from_secs(5);
        while !big.closed.swap(false, Ordering::SeqCst) {
            assert!(Instant::now() < deadline, "{listener}: the backend connection outlived its client");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    p.stop().await;
}

/// An HTTP/2 client that reads its socket but never grants flow-control window asks for a 1 GiB answer: the
/// answer stops at the client's window, and after `send_timeout` the connection is cut and the backend connection
/// closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_client_that_grants_no_window_is_cut_after_send_timeout() {
    const SIZE: u64 = 1 << 30;
    let big = BigBackend::start(SIZE).await;
    let group = format!("[[group]]\nname = \"g\"\n[[group.backend]]\naddr = \"{}\"\n", big.addr);
    let (p, _dir) = proxy("send_timeout = \"1s\"", &group).await;
    let mut client = TcpStream::connect(p.addr("fast")).await.expect("connect");
    let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    hello.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]); // SETTINGS (defaults: 64 KiB windows)
                                                           // HEADERS, END_STREAM | END_HEADERS, stream 1: GET http://x/ (HPACK: indexed :method GET, :scheme http,
                                                           // :path /, literal :authority x).
    let block = [0x82, 0x86, 0x84, 0x01, 0x01, b'x'];
    hello.extend_from_slice(&[0, 0, block.len() as u8, 1, 5, 0, 0, 0, 1]);
    hello.extend_from_slice(&block);
    let start = Instant::now();
    client.write_all(&hello).await.expect("request");
    // Reads everything the server sends (no WINDOW_UPDATE ever) until it closes.
    let reader = tokio::spawn(async move {
        let mut got = 0u64;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match client.read(&mut buf).await {
                Ok(0) | Err(_) => return got,
                Ok(n) => got += n as u64,
            }
        }
    });
    while !big.closed.load(Ordering::SeqCst) {
        assert!(start.elapsed() < Duration::from_secs(15), "the backend connection was never closed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = start.elapsed();
    assert!(took >= Duration::from_millis(900), "cut after {took:?}, before the send timeout");
    let got = tokio::time::timeout(Duration::from_secs(5), reader).await.expect("the client was cut").expect("reader");
    assert!(got < 256 * 1024, "the answer stopped at the client's window ({got} bytes came)");
    assert_eq!(p.metric("padis_http_connections_cut_total", &[("reason", "send_timeout")]), 1.0);
    p.stop().await;
}

/// An upgraded connection (a WebSocket-style tunnel) on `to`, its upgrade answered and one echo seen.
async fn tunnel(to: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(to).await.expect("connect");
    s.write_all(b"GET /chat HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n").await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut byte)).await.expect("head").expect("read");
        assert_eq!(n, 1, "closed early: {}", String::from_utf8_lossy(&head));
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&head));
    s.write_all(b"ping").await.unwrap();
    let mut echo = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut echo)).await.expect("echo").expect("read");
    assert_eq!(&echo, b"ping");
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgraded_tunnels_count_against_the_client_limit() {
    let b = Backend::start("b").await;
    let (p, _dir) =
        proxy("max_conns_per_client = 2\nnew_conns_per_client_per_sec = 0", &group_toml("g", &[&b], "")).await;
    let (fast, hyper) = (p.addr("fast"), p.addr("hyper"));
    let mut tunnels = vec![tunnel(fast).await, tunnel(hyper).await];
    assert_eq!(p.metric("padis_active_connections", &[]), 2.0, "open tunnels are open connections");
    assert!(h1_from("127.0.0.1", hyper).await.is_none(), "a 3rd connection while 2 tunnels are open is refused");
    assert_eq!(rejected(&p, "per_client_conns"), 1.0);
    // A tunnel that ends frees its slot.
    drop(tunnels.pop());
    let deadline = Instant::now() + Duration::from_secs(5);
    while h1_from("127.0.0.1", fast).await.is_none() {
        assert!(Instant::now() < deadline, "the slot of a closed tunnel never came back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // (An open tunnel would hold the shutdown for its grace.)
    drop(tunnels);
    p.stop().await;
}
