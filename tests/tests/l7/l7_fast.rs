//! The HTTP/1.1 fast path of plaintext listeners, through real sockets against a scripted backend: response
//! framings passed through (chunked with trailers, close-delimited, HEAD, 204/304, 1xx before the final
//! answer), request bodies streamed (large enough to fill socket buffers both ways), pipelined requests answered
//! in order, a connection handed to the hyper path in the middle (a chunked request body after plain
//! requests), broken backends (a malformed head: 502; a body cut short: the client connection is closed, not
//! left hanging), and a client that resets before its answer (counted 499). Every answer is read by hyper's client
//! or checked byte for byte.
//!
//! The same over TLS (ALPN http/1.1 or none): pipelining, framings, keep-alive, large bodies, close_notify both
//! ways, hand-overs on the same TLS connection (a chunked upload, an Upgrade tunnel, a 421 for a Host of another
//! certificate than the SNI's), h2 clients going to the hyper path, garbage after the handshake, broken
//! ClientHellos, TLS 1.2 and resumption.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use padis_tests::l7::{curl, raw_exchange, temp_dir, tls_connect, tls_get_h2, H1Conn, Pki, Proxy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Reads one request (head, then a Content-Length or chunked body) from `s`; None when the peer closed.
async fn read_request(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<(String, String, Vec<u8>)> {
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut headers);
        if let Ok(httparse::Status::Complete(n)) = req.parse(buf) {
            let method = req.method.unwrap_or("").to_string();
            let path = req.path.unwrap_or("").to_string();
            let value = |name: &str| {
                req.headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case(name))
                    .map(|h| String::from_utf8_lossy(h.value).to_string())
            };
            let len: usize = value("content-length").map(|v| v.parse().unwrap()).unwrap_or(0);
            let chunked = value("transfer-encoding").is_some_and(|v| v.contains("chunked"));
            buf.drain(..n);
            let body = if chunked { read_chunked(s, buf).await? } else { read_exact(s, buf, len).await? };
            return Some((method, path, body));
        }
        let mut tmp = [0u8; 65536];
        match s.read(&mut tmp).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&tmp[..n]),
        }
    }
}

async fn read_exact(s: &mut TcpStream, buf: &mut Vec<u8>, len: usize) -> Option<Vec<u8>> {
    while buf.len() < len {
        let mut tmp = [0u8; 65536];
        match s.read(&mut tmp).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&tmp[..n]),
        }
    }
    Some(buf.drain(..len).collect())
}

async fn read_chunked(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        while !buf.windows(2).any(|w| w == b"\r\n") {
            let mut tmp = [0u8; 4096];
            match s.read(&mut tmp).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => buf.extend_from_slice(&tmp[..n]),
            }
        }
        let line_end = buf.windows(2).position(|w| w == b"\r\n").unwrap();
        let size = usize::from_str_radix(std::str::from_utf8(&buf[..line_end]).unwrap().trim(), 16).unwrap();
        buf.drain(..line_end + 2);
        let chunk = read_exact(s, buf, size + 2).await?;
        body.extend_from_slice(&chunk[..size]);
        if size == 0 {
            return Some(body);
        }
    }
}

/// A backend whose answer depends on the request path (see the match below). Counts its connections.
async fn scripted_backend() -> (SocketAddr, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    let conns = Arc::new(AtomicUsize::new(0));
    let c = conns.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            c.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                while let Some((method, path, body)) = read_request(&mut s, &mut buf).await {
                    let out: Vec<u8> = match path.as_str() {
                        "/chunked" => b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Backend: scripted\r\n\r\n\
                                        5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\nX-Trailer: t\r\n\r\n"
                            .to_vec(),
                        "/close" => {
                            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nX-Backend: scripted\r\n\r\nuntil the end").await;
                            return;
                        }
                        "/head" => b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n".to_vec(),
                        "/no-content" => b"HTTP/1.1 204 No Content\r\n\r\n".to_vec(),
                        "/hints" => b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n\
                                      HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfinal"
                            .to_vec(),
                        "/bad" => b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello".to_vec(),
                        "/slow" => {
                            tokio::time::sleep(Duration::from_millis(400)).await;
                            b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nslow".to_vec()
                        }
                        "/big" => {
                            let body: Vec<u8> = (0..1 << 20).map(|i| (i * 13 % 251) as u8).collect();
                            let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len());
                            let mut out = head.into_bytes();
                            out.extend_from_slice(&body);
                            out
                        }
                        "/upgrade" => {
                            // Switches to an echo of whatever comes next.
                            let head =
                                b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\n";
                            let _ = s.write_all(head).await;
                            let mut tmp = [0u8; 4096];
                            while let Ok(n) = s.read(&mut tmp).await {
                                if n == 0 || s.write_all(&tmp[..n]).await.is_err() {
                                    break;
                                }
                            }
                            return;
                        }
                        "/cut" => {
                            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten..").await;
                            return;
                        }
                        _ => {
                            // Echo: what the backend received.
                            let b = format!("{method} {path} {} {:08x}", body.len(), checksum(&body));
                            format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{b}", b.len()).into_bytes()
                        }
                    };
                    if method == "HEAD" && path != "/head" {
                        continue;
                    }
                    if s.write_all(&out).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, conns)
}

fn checksum(b: &[u8]) -> u32 {
    b.iter().fold(0u32, |h, &x| h.rotate_left(5) ^ x as u32)
}

async fn proxy(backend: SocketAddr) -> (Proxy, tempfile::TempDir) {
    let dir = temp_dir();
    let cfg = format!(
        "[[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\n[[route]]\nname = \"r\"\ngroup = \"g\"\n\
         [[group]]\nname = \"g\"\nretries = 0\nrequest_timeout = \"5s\"\n[[group.backend]]\naddr = \"{backend}\"\n"
    );
    (Proxy::start(&cfg, dir.path()).await, dir)
}

fn req(method: Method, path: &str, body: Vec<u8>) -> Request<Full<Bytes>> {
    Request::builder().method(method).uri(path).header("host", "fast.test").body(Full::new(Bytes::from(body))).unwrap()
}

#[tokio::test(flavor = "current_thread")]
async fn response_framings_pass_through_on_one_keep_alive_connection() {
    let (b, conns) = scripted_backend().await;
    let (p, _dir) = proxy(b).await;
    let mut c = H1Conn::connect(p.addr("web")).await;
    let a = c.get("fast.test", "/chunked").await.expect("chunked");
    assert_eq!((a.status, a.body.as_str()), (200, "hello, world"));
    let a = c.send(req(Method::HEAD, "/head", Vec::new())).await.expect("HEAD");
    assert_eq!((a.status, a.body.as_str()), (200, ""));
    let a = c.get("fast.test", "/no-content").await.expect("204");
    assert_eq!((a.status, a.body.as_str()), (204, ""));
    let a = c.get("fast.test", "/hints").await.expect("103 then 200");
    assert_eq!((a.status, a.body.as_str()), (200, "final"));
    let a = c.get("fast.test", "/echo").await.expect("echo");
    assert_eq!(a.body, "GET /echo 0 00000000");
    assert_eq!(conns.load(Ordering::SeqCst), 1, "one backend connection carried every exchange");
    // A body that ends with the backend's close: the client gets all of it and the connection is closed.
    let raw =
        raw_exchange(p.addr("web"), b"GET /close HTTP/1.1\r\nHost: fast.test\r\n\r\n", Duration::from_secs(5)).await;
    let text = String::from_utf8_lossy(&raw);
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n") && text.contains("connection: close\r\n"), "{text}");
    assert!(text.ends_with("\r\n\r\nuntil the end"), "{text}");
    p.stop().await;
}

#[tokio::test(flavor = "current_thread")]
async fn request_bodies_stream_both_ways_and_pipelined_requests_keep_their_order() {
    let (b, _) = scripted_backend().await;
    let (p, _dir) = proxy(b).await;
    let mut c = H1Conn::connect(p.addr("web")).await;
    // 4 MB: more than the socket buffers and the loop's high-water mark hold, so reads pause and resume.
    let body: Vec<u8> = (0..4 << 20).map(|i| (i * 7 % 251) as u8).collect();
    let a = c.send(req(Method::POST, "/upload", body.clone())).await.expect("POST");
    assert_eq!(a.body, format!("POST /upload {} {:08x}", body.len(), checksum(&body)));
    let a = c.send(req(Method::PUT, "/small", b"abc".to_vec())).await.expect("PUT");
    assert_eq!(a.body, format!("PUT /small 3 {:08x}", checksum(b"abc")));
    // Three requests in one write.
    let mut pipelined = Vec::new();
    for i in 0..3 {
        pipelined.extend_from_slice(format!("GET /p{i} HTTP/1.1\r\nHost: fast.test\r\n\r\n").as_bytes());
    }
    pipelined.extend_from_slice(b"GET /last HTTP/1.1\r\nHost: fast.test\r\nConnection: close\r\n\r\n");
    let raw = raw_exchange(p.addr("web"), &pipelined, Duration::from_secs(5)).await;
    let text = String::from_utf8_lossy(&raw);
    let order: Vec<usize> =
        ["GET /p0 ", "GET /p1 ", "GET /p2 ", "GET /last "].iter().map(|s| text.find(s).expect(s)).collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{text}");
    assert_eq!(text.matches("HTTP/1.1 200 OK").count(), 4, "{text}");
    p.stop().await;
}

#[tokio::test(flavor = "current_thread")]
async fn a_request_the_fast_path_does_not_serve_hands_the_connection_over_mid_stream() {
    let (b, _) = scripted_backend().await;
    let (p, _dir) = proxy(b).await;
    let mut s = TcpStream::connect(p.addr("web")).await.expect("connect");
    // A plain request (fast path), then a chunked upload (hyper path) in the same write, then a plain one.
    s.write_all(
        b"GET /first HTTP/1.1\r\nHost: fast.test\r\n\r\n\
          POST /chunked-up HTTP/1.1\r\nHost: fast.test\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n\
          GET /third HTTP/1.1\r\nHost: fast.test\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out);
    assert!(text.contains("GET /first 0 "), "{text}");
    assert!(text.contains(&format!("POST /chunked-up 5 {:08x}", checksum(b"abcde"))), "{text}");
    assert!(text.contains("GET /third 0 "), "{text}");
    assert!(text.find("/first").unwrap() < text.find("/chunked-up").unwrap());
    assert!(text.find("/chunked-up").unwrap() < text.find("/third").unwrap());
    p.stop().await;
}

#[tokio::test(flavor = "current_thread")]
async fn broken_backends_get_a_502_or_a_closed_connection() {
    let (b, _) = scripted_backend().await;
    let (p, _dir) = proxy(b).await;
    let mut c = H1Conn::connect(p.addr("web")).await;
    let a = c.get("fast.test", "/bad").await.expect("502");
    assert_eq!((a.status, a.body.as_str()), (502, "bad gateway\n"));
    // The client connection carries on after a local answer.
    assert_eq!(c.get("fast.test", "/after").await.expect("after").status, 200);
    // A body cut short after its head went out: the connection must end (no hang), the body is incomplete.
    let stream = TcpStream::connect(p.addr("web")).await.expect("connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.expect("handshake");
    tokio::spawn(conn);
    let resp = sender.send_request(req(Method::GET, "/cut", Vec::new())).await.expect("head");
    assert_eq!(resp.status(), 200);
    let body = tokio::time::timeout(Duration::from_secs(5), resp.into_body().collect()).await.expect("no hang");
    assert!(body.is_err(), "the client sees the body end early");
    assert_eq!(p.metric("padis_http_requests_total", &[("code", "502")]), 1.0);
    p.stop().await;
}

#[tokio::test(flavor = "current_thread")]
async fn a_client_that_resets_before_its_answer_counts_as_499() {
    let (b, _) = scripted_backend().await;
    let (p, _dir) = proxy(b).await;
    let s = TcpStream::connect(p.addr("web")).await.expect("connect");
    let (r, mut w) = s.into_split();
    w.write_all(b"GET /slow HTTP/1.1\r\nHost: fast.test\r\n\r\n").await.unwrap();
    // The request is in; the client goes away with a reset while the backend takes its time.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let s = r.reunite(w).expect("same stream");
    s.set_zero_linger().expect("linger");
    drop(s);
    let code = |c: &str| p.metric("padis_http_requests_total", &[("code", c)]);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while code("499") < 1.0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!((code("499"), code("200")), (1.0, 0.0), "counted as the client's doing, not the backend's");
    // The proxy goes on serving.
    let mut c = H1Conn::connect(p.addr("web")).await;
    assert_eq!(c.get("fast.test", "/after").await.expect("after").status, 200);
    p.stop().await;
}

// --- TLS: HTTP/1.1 over TLS (ALPN http/1.1 or none) on the fast path ----------------------------------------------

/// A proxy with two TLS listeners to `backend`: `tls` (fast path) and `hyper` (`fast_path = false`); certificates
/// `api` (api.example.com, the default) and `other` (other.test).
async fn tls_proxy(backend: SocketAddr) -> (Proxy, tempfile::TempDir, Pki) {
    let dir = temp_dir();
    let pki = Pki::new(dir.path());
    pki.leaf("api", &["api.example.com"]);
    pki.leaf("other", &["other.test"]);
    let tls = "[listener.tls]\ndefault_certificate = \"api\"\n";
    let cfg = format!(
        "[[listener]]\nname = \"tls\"\nbind = \"127.0.0.1:0\"\n{tls}\
         [[listener]]\nname = \"hyper\"\nbind = \"127.0.0.1:0\"\nfast_path = false\n{tls}\
         [[certificate]]\nname = \"api\"\ncert = \"api.pem\"\nkey = \"api.key\"\n\
         [[certificate]]\nname = \"other\"\ncert = \"other.pem\"\nkey = \"other.key\"\n\
         [[route]]\nname = \"r\"\ngroup = \"g\"\n\
         [[group]]\nname = \"g\"\nretries = 0\nrequest_timeout = \"5s\"\n[[group.backend]]\naddr = \"{backend}\"\n"
    );
    (Proxy::start(&cfg, dir.path()).await, dir, pki)
}

type Tls = tokio_rustls::client::TlsStream<TcpStream>;

async fn tls(addr: SocketAddr, pki: &Pki, alpn: &[&str], sni: &str) -> Tls {
    tls_connect(addr, pki.client_config(alpn), sni).await.expect("TLS handshake").stream
}

/// Writes `bytes`, then reads until the proxy closes (cleanly: with its close_notify) or `limit` passes.
async fn tls_exchange(mut s: Tls, bytes: &[u8], limit: Duration) -> (Vec<u8>, std::io::Result<usize>) {
    s.write_all(bytes).await.expect("write");
    let mut out = Vec::new();
    let r = tokio::time::timeout(limit, s.read_to_end(&mut out)).await.unwrap_or(Ok(0));
    (out, r)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_connections_take_the_fast_path_with_pipelining_framings_and_large_bodies() {
    let (b, conns) = scripted_backend().await;
    let (p, _dir, pki) = tls_proxy(b).await;
    let pipelined = b"GET /chunked HTTP/1.1\r\nHost: api.example.com\r\n\r\n\
                      HEAD /head HTTP/1.1\r\nHost: api.example.com\r\n\r\n\
                      GET /no-content HTTP/1.1\r\nHost: api.example.com\r\n\r\n\
                      GET /hints HTTP/1.1\r\nHost: api.example.com\r\n\r\n\
                      POST /echo HTTP/1.1\r\nHost: api.example.com\r\nContent-Length: 3\r\n\r\nabc\
                      GET /last HTTP/1.1\r\nHost: api.example.com\r\nConnection: close\r\n\r\n";
    for (listener, alpn) in [("tls", &["http/1.1"][..]), ("tls", &[][..]), ("hyper", &["http/1.1"][..])] {
        let s = tls(p.addr(listener), &pki, alpn, "api.example.com").await;
        let (out, end) = tls_exchange(s, pipelined, Duration::from_secs(5)).await;
        let text = String::from_utf8_lossy(&out).to_ascii_lowercase();
        assert!(end.is_ok(), "{listener} {alpn:?}: the connection ends with close_notify: {end:?}");
        let order: Vec<usize> = ["x-backend: scripted", "http/1.1 204", "final", "post /echo 3 ", "get /last 0 "]
            .iter()
            .map(|s| text.find(s).unwrap_or_else(|| panic!("{listener} {alpn:?}: {s} in {text}")))
            .collect();
        assert!(order.windows(2).all(|w| w[0] < w[1]), "{text}");
        assert_eq!(text.matches("http/1.1 200 ok").count(), 5, "{text}");
        // The hyper path dates its answers (and drops chunk extensions and trailers); the fast path passes the
        // backend's head and body through (this backend's head has no Date): which path served is visible.
        assert_eq!(text.contains("x-trailer: t"), listener == "tls", "{listener}: {text}");
        assert_eq!(text.contains("\r\ndate: "), listener == "hyper", "{listener}: {text}");
    }
    // Keep-alive and large bodies both ways (many TLS records), one backend connection throughout.
    let before = conns.load(Ordering::SeqCst);
    let s = tls(p.addr("tls"), &pki, &["http/1.1"], "api.example.com").await;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s)).await.expect("h1");
    tokio::spawn(conn);
    let body: Vec<u8> = (0..4 << 20).map(|i| (i * 7 % 251) as u8).collect();
    for _ in 0..2 {
        let resp = sender.send_request(tls_req(Method::POST, "/upload", body.clone())).await.expect("POST");
        let got = resp.into_body().collect().await.expect("body").to_bytes();
        assert_eq!(got, format!("POST /upload {} {:08x}", body.len(), checksum(&body)));
        let resp = sender.send_request(tls_req(Method::GET, "/big", Vec::new())).await.expect("GET");
        assert!(!resp.headers().contains_key("date"), "fast path");
        let got = resp.into_body().collect().await.expect("body").to_bytes();
        assert_eq!(got.len(), 1 << 20);
        assert!(got.iter().enumerate().all(|(i, &x)| x == (i * 13 % 251) as u8));
    }
    assert!(conns.load(Ordering::SeqCst) <= before + 1, "backend connections reused");
    assert!(p.metric("padis_tls_handshakes_total", &[("listener", "tls"), ("version", "TLSv1.3")]) >= 3.0);
    p.stop().await;
}

fn tls_req(method: Method, path: &str, body: Vec<u8>) -> Request<Full<Bytes>> {
    Request::builder()
        .method(method)
        .uri(path)
        .header("host", "api.example.com")
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_fast_path_hands_over_upgrades_chunked_uploads_and_misdirected_requests() {
    let (b, _) = scripted_backend().await;
    let (p, _dir, pki) = tls_proxy(b).await;
    let addr = p.addr("tls");
    // A plain request, a chunked upload (the hyper path, over the same TLS connection), then a plain one.
    let s = tls(addr, &pki, &["http/1.1"], "api.example.com").await;
    let (out, _) = tls_exchange(
        s,
        b"GET /first HTTP/1.1\r\nHost: api.example.com\r\n\r\n\
          POST /chunked-up HTTP/1.1\r\nHost: api.example.com\r\nTransfer-Encoding: chunked\r\n\r\n\
          3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n\
          GET /third HTTP/1.1\r\nHost: api.example.com\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    let text = String::from_utf8_lossy(&out);
    let at = |s: &str| text.find(s).unwrap_or_else(|| panic!("{s} in {text}"));
    assert!(at("GET /first 0 ") < at(&format!("POST /chunked-up 5 {:08x}", checksum(b"abcde"))), "{text}");
    assert!(at("POST /chunked-up") < at("GET /third 0 "), "{text}");

    // An Upgrade: handed over, and the tunnel runs over the same TLS connection.
    let mut s = tls(addr, &pki, &["http/1.1"], "api.example.com").await;
    s.write_all(b"GET /upgrade HTTP/1.1\r\nHost: api.example.com\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\n")
        .await
        .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut byte)).await.expect("101").expect("read");
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&head));
    for msg in [&b"ping"[..], &[7u8; 40_000][..]] {
        s.write_all(msg).await.unwrap();
        let mut back = vec![0u8; msg.len()];
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut back)).await.expect("echo").expect("read");
        assert_eq!(back, msg);
    }
    drop(s);

    // SNI api.example.com, Host other.test (another certificate): 421, as the hyper path answers.
    let s = tls(addr, &pki, &["http/1.1"], "api.example.com").await;
    let (out, _) = tls_exchange(
        s,
        b"GET /x HTTP/1.1\r\nHost: other.test\r\n\r\n\
          GET /y HTTP/1.1\r\nHost: api.example.com\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 421 "), "{text}");
    assert!(text.contains("GET /y 0 "), "the connection goes on: {text}");
    // The same name as the certificate's but another case and a port: not misdirected.
    let s = tls(addr, &pki, &["http/1.1"], "api.example.com").await;
    let z = b"GET /z HTTP/1.1\r\nHost: API.example.com:443\r\nConnection: close\r\n\r\n";
    let (out, _) = tls_exchange(s, z, Duration::from_secs(5)).await;
    assert!(String::from_utf8_lossy(&out).contains("GET /z 0 "), "{}", String::from_utf8_lossy(&out));

    // A client offering h2 gets h2 (the hyper path).
    let info = tls_connect(addr, pki.client_config(&["h2", "http/1.1"]), "api.example.com").await.expect("tls");
    assert_eq!(info.alpn.as_deref(), Some("h2"));
    assert_eq!(tls_get_h2(info, "api.example.com", "/h2").await.body, "GET /h2 0 00000000");
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_fast_path_garbage_after_the_handshake_close_notify_and_bad_hellos() {
    let (b, _) = scripted_backend().await;
    let (p, _dir, pki) = tls_proxy(b).await;
    let addr = p.addr("tls");
    // Garbage after the handshake (bytes that are no TLS record): an alert, then the close; the proxy serves on.
    let s = tls(addr, &pki, &["http/1.1"], "api.example.com").await;
    let (mut tcp, _) = s.into_inner();
    tcp.write_all(b"this is not a TLS record\r\n\r\n").await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut out)).await.expect("closed").ok();
    assert!(out.first().is_none_or(|&b| b == 0x15 || b == 0x17), "an alert record or nothing: {out:?}");
    // close_notify from the client after a request: the answer, then the proxy's close_notify.
    let mut s = tls(addr, &pki, &["http/1.1"], "api.example.com").await;
    s.write_all(b"GET /before-close HTTP/1.1\r\nHost: api.example.com\r\n\r\n").await.unwrap();
    s.shutdown().await.expect("close_notify");
    let mut out = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await.expect("no hang");
    assert!(r.is_ok(), "a clean close: {r:?}");
    assert!(String::from_utf8_lossy(&out).contains("GET /before-close 0 "), "{}", String::from_utf8_lossy(&out));
    // Plaintext and a broken ClientHello: no answer but an alert; both counted as failed handshakes.
    let out = raw_exchange(addr, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", Duration::from_secs(3)).await;
    assert!(!out.starts_with(b"HTTP/1.1 200"), "plaintext on a TLS listener is not served");
    let out = raw_exchange(addr, &[0x16, 0x03, 0x01, 0x00, 0x05, 1, 2, 3, 4, 5], Duration::from_secs(3)).await;
    assert!(out.is_empty() || out[0] == 0x15, "an alert or a close");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while p.metric("padis_tls_handshake_errors_total", &[("listener", "tls")]) < 2.0 {
        assert!(std::time::Instant::now() < deadline, "failed handshakes not counted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // TLS 1.2 and session resumption on the fast path.
    let cfg = pki.client_config(&["http/1.1"]);
    let first = tls_connect(addr, cfg.clone(), "api.example.com").await.expect("tls");
    let r = b"GET /r HTTP/1.1\r\nHost: api.example.com\r\nConnection: close\r\n\r\n";
    let (out, _) = tls_exchange(first.stream, r, Duration::from_secs(5)).await;
    assert!(String::from_utf8_lossy(&out).contains("GET /r 0 "));
    let second = tls_connect(addr, cfg, "api.example.com").await.expect("tls");
    assert_eq!(second.stream.get_ref().1.handshake_kind(), Some(rustls::HandshakeKind::Resumed));
    let (ok, out, err) = curl(&[
        "--cacert",
        &pki.ca_pem.to_string_lossy(),
        "--resolve",
        &format!("api.example.com:{}:127.0.0.1", addr.port()),
        "--http1.1",
        "--tls-max",
        "1.2",
        "-w",
        "%{http_version}",
        &format!("https://api.example.com:{}/curl12", addr.port()),
    ])
    .await;
    assert!(ok, "{err}");
    assert!(out.starts_with("GET /curl12 0 ") && out.ends_with("1.1"), "{out}");
    assert!(p.metric("padis_tls_handshakes_total", &[("listener", "tls"), ("version", "TLSv1.2")]) >= 1.0);
    p.stop().await;
}
