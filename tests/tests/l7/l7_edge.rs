//! What a gateway at the Internet/DMZ edge needs (issue 15), through real sockets and real peers.
//!
//! PROXY protocol accepted on a listener: haproxy (`mode tcp`, `send-proxy-v2`) in front of Padis, clients
//! connecting to haproxy from 127.0.0.5 / 127.0.0.6; the backend sees the original client in `X-Forwarded-For`
//! on the fast path and the hyper path, a route's `allow_cidrs` and the per-client connection limit apply to the
//! announced address, and a TCP listener passes the announced client on in its own PROXY header. A PROXY header
//! from an untrusted source, and a connection from a trusted source without one, are refused and counted.
//!
//! Rate limits of routes: one client flooding a limited route over both paths and several connections gets 200s
//! at the configured rate (within 10 %) and 429s with `Retry-After` beyond, counted; an allow-listed client is
//! never limited; a per-route bucket is shared by all clients.
//!
//! Header rules and request ids: a route's rules applied alike on both paths (spoofed fields removed or
//! replaced, variables expanded, HSTS), a spoofed request id from an untrusted client replaced, a trusted one kept.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use padis_tests::l7::{get_req, group_toml, temp_dir, Backend, Proxy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// A TCP connection to `to` from source address `from`.
async fn connect_from(from: &str, to: SocketAddr) -> std::io::Result<TcpStream> {
    let s = TcpSocket::new_v4()?;
    s.bind(format!("{from}:0").parse().expect("source addr"))?;
    s.connect(to).await
}

/// Writes `bytes` from `from` and reads until the peer closes (or 5 s): the answer, or the error a reset gives.
async fn exchange_from(from: &str, to: SocketAddr, bytes: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut s = connect_from(from, to).await?;
    s.write_all(bytes).await?;
    let mut out = Vec::new();
    match tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await {
        Ok(r) => r.map(|_| out),
        Err(_) => panic!("no answer and no close within 5 s"),
    }
}

/// A free port on 127.0.0.1 (for a peer that cannot bind port 0 and tell).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// haproxy in the foreground with a config of `mode tcp` frontends, each relaying to a Padis listener with
/// `send-proxy-v2`; killed on drop.
struct Haproxy {
    child: Child,
}

impl Haproxy {
    /// `fronts`: (frontend port, Padis address, extra `server` options).
    fn start(dir: &Path, fronts: &[(u16, SocketAddr, &str)]) -> Haproxy {
        let mut cfg = String::from(
            "global\n  maxconn 256\ndefaults\n  mode tcp\n  timeout connect 2s\n  timeout client 10s\n  \
             timeout server 10s\n",
        );
        for (i, (port, to, extra)) in fronts.iter().enumerate() {
            cfg.push_str(&format!(
                "frontend f{i}\n  bind 127.0.0.1:{port}\n  default_backend b{i}\n\
                 backend b{i}\n  server s{i} {to} send-proxy-v2 {extra}\n"
            ));
        }
        let path = dir.join("haproxy.cfg");
        std::fs::write(&path, cfg).expect("haproxy config");
        let child = Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("haproxy runs (tests/setup installs it)");
        let h = Haproxy { child };
        let deadline = Instant::now() + Duration::from_secs(10);
        for (port, _, _) in fronts {
            while std::net::TcpStream::connect(("127.0.0.1", *port)).is_err() {
                assert!(Instant::now() < deadline, "haproxy does not listen on {port}");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        h
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP backend that reads the PROXY v1 line Padis sends, answers it back and closes.
async fn proxy_line_backend() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut line = Vec::new();
                let mut b = [0u8; 1];
                while !line.ends_with(b"\r\n") && line.len() < 200 {
                    if s.read_exact(&mut b).await.is_err() {
                        return;
                    }
                    line.push(b[0]);
                }
                let _ = s.write_all(&line).await;
            });
        }
    });
    addr
}

fn rejected(p: &Proxy, listener: &str, reason: &str) -> f64 {
    p.metric("padis_http_connections_rejected_total", &[("listener", listener), ("reason", reason)])
}

/// A GET through haproxy's frontend `port` from client address `from`: status and body.
async fn get_via(from: &str, port: u16, path: &str) -> (u16, String) {
    let to: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let req = format!("GET {path} HTTP/1.1\r\nHost: edge.test\r\nConnection: close\r\n\r\n");
    let out = exchange_from(from, to, req.as_bytes()).await.expect("an answer through haproxy");
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_protocol_from_haproxy_gives_the_real_client_to_routes_limits_and_backends() {
    let dir = temp_dir();
    let backend = Backend::start("b1").await;
    let line = proxy_line_backend().await;
    let trusted = "proxy_protocol = { trusted = [\"127.0.0.1/32\"] }";
    let cfg = |limits: &str| {
        format!(
            "[limits]\n{limits}\n\
         [[listener]]\nname = \"fast\"\nbind = \"127.0.0.1:0\"\n{trusted}\n\
         [[listener]]\nname = \"hyper\"\nbind = \"127.0.0.1:0\"\nfast_path = false\n{trusted}\n\
         [[listener]]\nname = \"tcp\"\nbind = \"127.0.0.1:0\"\nmode = \"tcp\"\ngroup = \"line\"\n{trusted}\n\
         [[route]]\nname = \"only5\"\npath = \"/only5\"\ngroup = \"g\"\nallow_cidrs = [\"127.0.0.5/32\"]\n\
         [[route]]\nname = \"r\"\ngroup = \"g\"\n{}\
         [[group]]\nname = \"line\"\nproxy_protocol = \"v1\"\n[[group.backend]]\naddr = \"{line}\"\n",
            group_toml("g", &[&backend], ""),
        )
    };
    let mut p = Proxy::start(&cfg(""), dir.path()).await;
    let (fast, hyper, tcp) = (p.addr("fast"), p.addr("hyper"), p.addr("tcp"));
    let ports = [free_port(), free_port(), free_port(), free_port()];
    let fronts =
        [(ports[0], fast, ""), (ports[1], hyper, ""), (ports[2], tcp, ""), (ports[3], fast, "source 127.0.0.3")];
    let _h = Haproxy::start(dir.path(), &fronts);

    for (port, listener) in [(ports[0], "fast"), (ports[1], "hyper")] {
        let (status, text) = get_via("127.0.0.5", port, "/").await;
        assert_eq!(status, 200, "{listener}: {text}");
        assert!(text.contains("h:x-forwarded-for=127.0.0.5\n"), "{listener}: backend sees the client: {text}");
        assert!(text.contains(&format!("h:x-forwarded-port={port}\n")), "{listener}: the port it reached: {text}");
        let (status, _) = get_via("127.0.0.5", port, "/only5").await;
        assert_eq!(status, 200, "{listener}: allow_cidrs admits the announced client");
        let (status, text) = get_via("127.0.0.6", port, "/only5").await;
        assert_eq!(status, 403, "{listener}: allow_cidrs refuses another announced client: {text}");
    }
    assert!(p.metric("padis_http_requests_total", &[("route", "only5"), ("code", "403")]) == 2.0);

    // The TCP listener sends the announced client on in its own header.
    let to: SocketAddr = format!("127.0.0.1:{}", ports[2]).parse().expect("addr");
    let out = exchange_from("127.0.0.7", to, b"").await.expect("relayed");
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("PROXY TCP4 127.0.0.7 127.0.0.1 "), "{text}");
    assert!(text.trim_end().ends_with(&format!(" {}", ports[2])), "{text}");

    // haproxy connecting from an untrusted source (127.0.0.3): its header is refused, nothing is served.
    let (status, text) = get_via("127.0.0.5", ports[3], "/").await;
    assert_eq!(status, 0, "through an untrusted haproxy: {text}");
    assert!(rejected(&p, "fast", "proxy_untrusted") >= 1.0);

    // max_conns_per_client = 1 counts the announced client: a second connection of 127.0.0.5 is refused while
    // its first is open, one of 127.0.0.6 is not (all come from haproxy's 127.0.0.1).
    p.publish_settled(&cfg("max_conns_per_client = 1")).await;
    let front: SocketAddr = format!("127.0.0.1:{}", ports[1]).parse().expect("addr");
    let mut held = connect_from("127.0.0.5", front).await.expect("first connection");
    held.write_all(b"GET / HTTP/1.1\r\nHost: edge.test\r\n\r\n").await.expect("write");
    let mut buf = [0u8; 12];
    held.read_exact(&mut buf).await.expect("first answer");
    assert_eq!(&buf, b"HTTP/1.1 200");
    let before = rejected(&p, "hyper", "per_client_conns");
    let second = exchange_from("127.0.0.5", front, b"GET / HTTP/1.1\r\nHost: e\r\nConnection: close\r\n\r\n").await;
    assert!(second.map_or(true, |b| b.is_empty()), "the same announced client over its limit is refused");
    assert_eq!(rejected(&p, "hyper", "per_client_conns"), before + 1.0);
    assert_eq!(get_via("127.0.0.6", ports[1], "/").await.0, 200, "another announced client is not limited");
    drop(held);
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_headers_from_untrusted_sources_and_trusted_sources_without_one_are_refused() {
    let dir = temp_dir();
    let backend = Backend::start("b1").await;
    let line = proxy_line_backend().await;
    let trusted = "proxy_protocol = { trusted = [\"127.0.0.1/32\", \"127.0.0.2/32\"] }";
    let cfg = format!(
        "[limits]\nheader_read_timeout = \"500ms\"\n\
         [[listener]]\nname = \"fast\"\nbind = \"127.0.0.1:0\"\n{trusted}\n\
         [[listener]]\nname = \"hyper\"\nbind = \"127.0.0.1:0\"\nfast_path = false\n{trusted}\n\
         [[listener]]\nname = \"tcp\"\nbind = \"127.0.0.1:0\"\nmode = \"tcp\"\ngroup = \"line\"\n{trusted}\n\
         [[route]]\nname = \"r\"\ngroup = \"g\"\n{}\
         [[group]]\nname = \"line\"\nproxy_protocol = \"v1\"\n[[group.backend]]\naddr = \"{line}\"\n",
        group_toml("g", &[&backend], ""),
    );
    let p = Proxy::start(&cfg, dir.path()).await;
    let get = b"GET / HTTP/1.1\r\nHost: edge.test\r\nConnection: close\r\n\r\n";
    let header = b"PROXY TCP4 192.0.2.66 127.0.0.1 4000 80\r\n";
    for listener in ["fast", "hyper", "tcp"] {
        let to = p.addr(listener);
        // A trusted source with a header is served (the control case).
        let ok = exchange_from("127.0.0.2", to, &[&header[..], get].concat()).await.expect("served");
        let text = String::from_utf8_lossy(&ok);
        if listener == "tcp" {
            assert!(text.starts_with("PROXY TCP4 192.0.2.66 127.0.0.1 4000 80\r\n"), "{listener}: {text}");
        } else {
            assert!(text.starts_with("HTTP/1.1 200") && text.contains("x-forwarded-for=192.0.2.66"), "{text}");
        }
        // A header from an untrusted source (127.0.0.3) claims nothing: refused at accept.
        let out = exchange_from("127.0.0.3", to, &[&header[..], get].concat()).await;
        assert!(out.map_or(true, |b| b.is_empty()), "{listener}: untrusted source answered");
        assert_eq!(rejected(&p, listener, "proxy_untrusted"), 1.0, "{listener}");
        // A trusted source without a header: refused, whatever it sends instead.
        let out = exchange_from("127.0.0.2", to, get).await;
        assert!(out.map_or(true, |b| b.is_empty()), "{listener}: a trusted source without a header answered");
        assert_eq!(rejected(&p, listener, "proxy_header_missing"), 1.0, "{listener}");
        // A malformed header, and a trusted source that sends nothing within the header timeout.
        let out = exchange_from("127.0.0.2", to, b"PROXY TCP4 192.0.2.66 127.0.0.1 4000 99999\r\n").await;
        assert!(out.map_or(true, |b| b.is_empty()));
        assert_eq!(rejected(&p, listener, "proxy_header_invalid"), 1.0, "{listener}");
        let mut silent = connect_from("127.0.0.2", to).await.expect("connect");
        let mut buf = Vec::new();
        let closed = tokio::time::timeout(Duration::from_secs(5), silent.read_to_end(&mut buf)).await;
        assert!(closed.is_ok() && buf.is_empty(), "{listener}: a silent trusted source is closed after the timeout");
        assert_eq!(rejected(&p, listener, "proxy_header_timeout"), 1.0, "{listener}");
    }
    assert_eq!(backend.hits(), 2, "only the two requests with a trusted header reached the backend");
    p.stop().await;
}

/// A keep-alive HTTP/1.1 connection from source address `from`.
async fn h1_from(from: &str, to: SocketAddr) -> hyper::client::conn::http1::SendRequest<Full<Bytes>> {
    let stream = connect_from(from, to).await.expect("connect");
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.expect("handshake");
    tokio::spawn(conn);
    sender
}

/// What a flood of requests got: 200s, 429s (with their `Retry-After` values), the time from the first answer
/// to the last.
#[derive(Default, Debug)]
struct Flood {
    ok: usize,
    limited: usize,
    retry_after: Vec<String>,
    first: Option<Instant>,
    last: Option<Instant>,
}

/// GETs `path` from `from` on `conns` keep-alive connections to each address of `to` for `secs` seconds (at most
/// 20,000 requests).
async fn flood(from: &str, to: &[SocketAddr], host: &str, path: &str, conns: usize, secs: f64) -> Flood {
    let end = Instant::now() + Duration::from_secs_f64(secs);
    let mut tasks = Vec::new();
    for addr in to {
        for _ in 0..conns {
            let mut s = h1_from(from, *addr).await;
            let (host, path) = (host.to_string(), path.to_string());
            tasks.push(tokio::spawn(async move {
                let mut f = Flood::default();
                for _ in 0..20_000 / (conns * 2) {
                    if Instant::now() >= end {
                        break;
                    }
                    s.ready().await.expect("connection kept");
                    let resp = s.send_request(get_req(&host, &path)).await.expect("answer");
                    let at = Instant::now();
                    f.first = Some(f.first.map_or(at, |t| t.min(at)));
                    f.last = Some(at);
                    match resp.status().as_u16() {
                        200 => f.ok += 1,
                        429 => {
                            f.limited += 1;
                            let v = resp.headers().get("retry-after").map(|v| v.to_str().unwrap_or("?").to_string());
                            f.retry_after.push(v.unwrap_or_default());
                        }
                        s => panic!("status {s}"),
                    }
                    resp.into_body().collect().await.expect("body");
                }
                f
            }));
        }
    }
    let mut all = Flood::default();
    for t in tasks {
        let f = t.await.expect("flood task");
        all.ok += f.ok;
        all.limited += f.limited;
        all.retry_after.extend(f.retry_after);
        all.first = match (all.first, f.first) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        all.last = all.last.max(f.last);
    }
    all
}

impl Flood {
    /// What a token bucket of `burst` refilled at `rate` per second lets through over the flood's time.
    fn expected(&self, rate: f64, burst: f64) -> f64 {
        let secs = match (self.first, self.last) {
            (Some(a), Some(b)) => (b - a).as_secs_f64(),
            _ => 0.0,
        };
        burst + rate * secs
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limited_routes_answer_429_at_the_configured_rate() {
    let dir = temp_dir();
    let backend = Backend::start("b1").await;
    let cfg = format!(
        "[[listener]]\nname = \"fast\"\nbind = \"127.0.0.1:0\"\n\
         [[listener]]\nname = \"hyper\"\nbind = \"127.0.0.1:0\"\nfast_path = false\n\
         [[route]]\nname = \"limited\"\nhost = \"limited.test\"\ngroup = \"g\"\n\
         rate_limit = {{ rate = 40, burst = 10, allow = [\"127.0.0.2/32\"] }}\n\
         [[route]]\nname = \"shared\"\nhost = \"shared.test\"\ngroup = \"g\"\n\
         rate_limit = {{ rate = 30, period = \"1s\", burst = 5, per = \"route\" }}\n\
         [[route]]\nname = \"free\"\ngroup = \"g\"\n{}",
        group_toml("g", &[&backend], ""),
    );
    let p = Proxy::start(&cfg, dir.path()).await;
    let both = [p.addr("fast"), p.addr("hyper")];

    // One client on 2 x 2 connections over both paths and all worker threads: one bucket. The allow-listed
    // client floods the same route at the same time and is never limited.
    let (limited, allowed) = tokio::join!(
        flood("127.0.0.1", &both, "limited.test", "/", 2, 2.5),
        flood("127.0.0.2", &both[..1], "limited.test", "/", 1, 2.5),
    );
    let want = limited.expected(40.0, 10.0);
    let got = limited.ok as f64;
    assert!(
        (got - want).abs() <= want * 0.1,
        "{got} requests let through, a bucket lets {want:.0} through: {limited:?}"
    );
    assert!(limited.limited > 2 * limited.ok, "the flood was over the limit: {limited:?}");
    assert!(limited.retry_after.iter().all(|v| v == "1"), "Retry-After: {:?}", &limited.retry_after[..5]);
    assert_eq!(allowed.limited, 0, "the allow-listed client: {allowed:?}");
    assert!(allowed.ok > 100, "{allowed:?}");
    let counted = p.metric("padis_http_rate_limited_total", &[("route", "limited")]);
    assert_eq!(counted, limited.limited as f64);
    assert_eq!(p.metric("padis_http_requests_total", &[("route", "limited"), ("code", "429")]), counted);

    // per = "route": two clients share one bucket.
    let (a, b) = tokio::join!(
        flood("127.0.0.3", &both[..1], "shared.test", "/", 1, 2.0),
        flood("127.0.0.4", &both[1..], "shared.test", "/", 1, 2.0),
    );
    let first = a.first.min(b.first);
    let last = a.last.max(b.last);
    let together = Flood { ok: a.ok + b.ok, first, last, ..Flood::default() };
    let want = together.expected(30.0, 5.0);
    let got = together.ok as f64;
    assert!((got - want).abs() <= want * 0.1, "{got} let through for both clients, a bucket lets {want:.0}");
    assert!(a.ok > 0 && b.ok > 0);
    // A route without a limit.
    let free = flood("127.0.0.1", &both, "free.test", "/", 1, 0.5).await;
    assert_eq!(free.limited, 0);
    p.stop().await;
}

/// A GET of `/rules` with `headers` from source address `from`: the answer's headers and the backend's
/// description of the request it received (`h:<name>=<value>` lines).
async fn get_from(from: &str, to: SocketAddr, headers: &[(&str, &str)]) -> (http::HeaderMap, String) {
    let mut tx = h1_from(from, to).await;
    let mut req = get_req("rules.test", "/rules");
    for (n, v) in headers {
        req.headers_mut().append(http::HeaderName::from_bytes(n.as_bytes()).unwrap(), v.parse().unwrap());
    }
    let resp = tx.send_request(req).await.expect("an answer");
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    (parts.headers, String::from_utf8_lossy(&body).into_owned())
}

/// The values of header `name` the backend described.
fn seen(desc: &str, name: &str) -> Vec<String> {
    let prefix = format!("h:{name}=");
    desc.lines().filter_map(|l| l.strip_prefix(&prefix)).map(str::to_string).collect()
}

fn is_uuid(v: &str) -> bool {
    let b = v.as_bytes();
    b.len() == 36
        && b.iter()
            .enumerate()
            .all(|(i, &c)| if [8, 13, 18, 23].contains(&i) { c == b'-' } else { c.is_ascii_hexdigit() })
        && b[14] == b'4'
}

/// Header rules of a route and the request id (issue 15), on the fast path and the hyper path alike: the client's
/// fields a rule removes or sets never reach the backend (a spoofed client address or certificate subject among
/// them), the set and added fields carry their variables, the backend's fields a rule removes never reach the
/// client, HSTS and a response field with the request id are added; a request id from an untrusted client (or an
/// invalid one from a trusted client) is replaced by a generated one, a trusted client's is kept, and the backend
/// and the client see the same id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_rules_and_request_ids_on_both_paths() {
    let dir = temp_dir();
    let b = Backend::start("b").await;
    let cfg = format!(
        "[request_id]\ntrusted = [\"127.0.0.7/32\"]\n\
         [[listener]]\nname = \"fast\"\nbind = \"127.0.0.1:0\"\n\
         [[listener]]\nname = \"hyper\"\nbind = \"127.0.0.1:0\"\nfast_path = false\n\
         [[route]]\nname = \"rules\"\ngroup = \"g\"\nhsts = {{ max_age = 31536000, include_subdomains = true }}\n\
         [route.headers]\nrequest_remove = [\"x-internal\", \"x-forwarded-for\"]\n\
         request_set = {{ \"x-client\" = \"${{client_ip}}\", \"x-client-subject\" = \"${{tls_subject}}\", \"x-id\" = \"id=${{request_id}}\" }}\n\
         request_add = {{ \"x-added\" = \"$$1 ${{scheme}}\" }}\n\
         response_remove = [\"x-backend\"]\n\
         response_set = {{ \"x-request-id\" = \"${{request_id}}\" }}\n\
         response_add = {{ \"x-via\" = \"padis\" }}\n{}",
        group_toml("g", &[&b], "")
    );
    let p = Proxy::start(&cfg, dir.path()).await;
    for listener in ["fast", "hyper"] {
        let to = p.addr(listener);
        let spoof = [
            ("x-request-id", "spoofed-id"),
            ("x-internal", "secret"),
            ("x-client", "6.6.6.6"),
            ("x-client-subject", "CN=admin"),
            ("x-forwarded-for", "6.6.6.6"),
            ("x-added", "client"),
            ("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        ];
        let (h, desc) = get_from("127.0.0.1", to, &spoof).await;
        let id = seen(&desc, "x-request-id");
        assert!(id.len() == 1 && is_uuid(&id[0]), "{listener}: a generated id, not the untrusted one: {desc}");
        let id = &id[0];
        assert_eq!(seen(&desc, "x-internal"), Vec::<String>::new(), "{listener}: {desc}");
        assert_eq!(seen(&desc, "x-client"), ["127.0.0.1"], "{listener}: {desc}");
        assert_eq!(seen(&desc, "x-client-subject"), Vec::<String>::new(), "{listener}: no certificate, no subject");
        assert_eq!(seen(&desc, "x-forwarded-for"), ["127.0.0.1"], "{listener}: the client's XFF removed first");
        assert_eq!(seen(&desc, "x-id"), [format!("id={id}")], "{listener}");
        assert_eq!(seen(&desc, "x-added"), ["client", "$1 http"], "{listener}: appended after the client's");
        assert_eq!(
            seen(&desc, "traceparent"),
            ["00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"],
            "{listener}: passed through"
        );
        assert!(h.get("x-backend").is_none(), "{listener}: {h:?}");
        assert_eq!(h["x-request-id"], id.as_str(), "{listener}");
        assert_eq!(h["x-via"], "padis", "{listener}");
        assert_eq!(h["strict-transport-security"], "max-age=31536000; includeSubDomains", "{listener}");

        // A trusted client keeps its id; an invalid one is replaced all the same.
        let (h, desc) = get_from("127.0.0.7", to, &[("X-Request-Id", "edge-42.a:b")]).await;
        assert_eq!(seen(&desc, "x-request-id"), ["edge-42.a:b"], "{listener}: {desc}");
        assert_eq!(h["x-request-id"], "edge-42.a:b", "{listener}");
        assert_eq!(seen(&desc, "x-client"), ["127.0.0.7"], "{listener}");
        let (_, desc) = get_from("127.0.0.7", to, &[("x-request-id", "two words")]).await;
        let id = seen(&desc, "x-request-id");
        assert!(id.len() == 1 && is_uuid(&id[0]), "{listener}: {desc}");
        let (_, desc) = get_from("127.0.0.7", to, &[]).await;
        assert!(is_uuid(&seen(&desc, "x-request-id")[0]), "{listener}: {desc}");
    }
    p.stop().await;
}
