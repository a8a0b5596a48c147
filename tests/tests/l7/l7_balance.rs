//! L7 proxy with `padis-balance`: every algorithm's distribution through the proxy, retries on a dead backend,
//! passive ejection, draining while a slow request finishes, Upgrade echo (raw bytes; real WebSocket framing is in
//! l7_websocket.rs).

use std::collections::HashMap;
use std::time::Duration;

use padis_tests::l7::{get, temp_dir, Backend, H1Conn, Proxy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn cfg(group_extra: &str, backends: &[(String, u32)]) -> String {
    let mut s = String::from(
        "[[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\n[[route]]\nname = \"r\"\ngroup = \"g\"\n[[group]]\nname = \"g\"\n",
    );
    s.push_str(group_extra);
    s.push('\n');
    for (addr, w) in backends {
        s.push_str(&format!("[[group.backend]]\naddr = \"{addr}\"\nweight = {w}\n"));
    }
    s
}

fn dead_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

async fn count(web: std::net::SocketAddr, n: usize, host: &str, headers: &[(&str, &str)]) -> HashMap<String, usize> {
    let mut c = H1Conn::connect(web).await;
    let mut out = HashMap::new();
    for _ in 0..n {
        let mut req = http::Request::builder().uri("/").header("host", host);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let a = c.send(req.body(http_body_util::Full::new(bytes::Bytes::new())).unwrap()).await.expect("req");
        assert_eq!(a.status, 200);
        *out.entry(a.backend()).or_insert(0) += 1;
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_and_least_request_distribution() {
    let dir = temp_dir();
    let bs = [Backend::start("a").await, Backend::start("b").await, Backend::start("c").await];
    let weighted: Vec<(String, u32)> = bs.iter().zip([1, 2, 3]).map(|(b, w)| (b.addr.to_string(), w)).collect();
    let mut p = Proxy::start(&cfg("balance = \"round_robin\"", &weighted), dir.path()).await;
    let web = p.addr("web");
    let c = count(web, 600, "x", &[]).await;
    for (name, want) in [("a", 100), ("b", 200), ("c", 300)] {
        let got = c.get(name).copied().unwrap_or(0);
        assert!(got.abs_diff(want) <= 6, "round robin {c:?}");
    }
    let equal: Vec<(String, u32)> = bs.iter().map(|b| (b.addr.to_string(), 1)).collect();
    p.publish_settled(&cfg("balance = \"least_request\"", &equal)).await;
    // Concurrent slow requests: least-request spreads in-flight load evenly.
    let mut tasks = Vec::new();
    for _ in 0..30 {
        tasks.push(tokio::spawn(async move { get(web, "x", "/slow/300").await.backend() }));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut c: HashMap<String, usize> = HashMap::new();
    for t in tasks {
        *c.entry(t.await.unwrap()).or_insert(0) += 1;
    }
    for name in ["a", "b", "c"] {
        let got = c.get(name).copied().unwrap_or(0);
        assert!((5..=15).contains(&got), "least request {c:?}");
    }
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maglev_and_sticky() {
    let dir = temp_dir();
    let bs = [Backend::start("a").await, Backend::start("b").await, Backend::start("c").await];
    let equal: Vec<(String, u32)> = bs.iter().map(|b| (b.addr.to_string(), 1)).collect();
    let mut p = Proxy::start(&cfg("balance = \"maglev\"\nhash_key = \"header:x-user\"", &equal), dir.path()).await;
    let web = p.addr("web");
    let mut seen = std::collections::HashSet::new();
    for user in ["alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi"] {
        let c = count(web, 10, "x", &[("x-user", user)]).await;
        assert_eq!(c.len(), 1, "one backend per key: {user} {c:?}");
        seen.extend(c.into_keys());
    }
    assert!(seen.len() >= 2, "keys spread over backends: {seen:?}");

    p.publish_settled(&cfg("balance = \"sticky\"\nsticky_cookie = \"pin\"", &equal)).await;
    let a = get(web, "x", "/").await;
    let cookie = a.headers.get("set-cookie").expect("sticky cookie set").to_str().unwrap().to_string();
    assert!(cookie.starts_with("pin="), "{cookie}");
    let pair = cookie.split(';').next().unwrap().to_string();
    let c = count(web, 20, "x", &[("cookie", &pair)]).await;
    assert_eq!(c.len(), 1, "{c:?}");
    assert_eq!(c.keys().next().unwrap(), &a.backend());
    let spread = count(web, 30, "x", &[]).await;
    assert_eq!(spread.len(), 3, "without the cookie requests spread: {spread:?}");
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_and_passive_ejection() {
    let dir = temp_dir();
    let alive = Backend::start("alive").await;
    let dead = dead_addr();
    let backends = vec![(dead.clone(), 1), (alive.addr.to_string(), 1)];
    let extra = "retries = 1\npassive = { consecutive_failures = 2, base_ejection = \"30s\", max_ejection = \"60s\" }";
    let mut p = Proxy::start(&cfg(extra, &backends), dir.path()).await;
    let web = p.addr("web");
    let c = count(web, 20, "x", &[]).await;
    assert_eq!(c.get("alive"), Some(&20), "every request retried onto the live backend: {c:?}");
    let errors = p.metric("padis_upstream_connect_errors_total", &[("group", "g"), ("backend", dead.as_str())]);
    assert!((1.0..=2.0).contains(&errors), "the dead backend is ejected after 2 failures, got {errors} errors");
    // A POST after the ejection: the ejected backend is not picked.
    let mut h = H1Conn::connect(web).await;
    let post =
        http::Request::post("/").header("host", "x").body(http_body_util::Full::new(bytes::Bytes::from("x"))).unwrap();
    assert_eq!(h.send(post).await.unwrap().status, 200);

    // Without retries and with ejection off, half the requests fail with 502.
    let extra = "retries = 0\npassive = { consecutive_failures = 1000, base_ejection = \"1s\", max_ejection = \"1s\" }";
    // (A fresh dead backend: the first one stays ejected, health is kept across snapshots.)
    let backends = vec![(dead_addr(), 1), (alive.addr.to_string(), 1)];
    p.publish_settled(&cfg(extra, &backends)).await;
    assert_eq!(
        p.metric("padis_upstream_connect_errors_total", &[("backend", dead.as_str())]),
        0.0,
        "series of a backend no longer configured are dropped (bounded cardinality)"
    );
    let mut h = H1Conn::connect(web).await;
    let mut codes = HashMap::new();
    for _ in 0..10 {
        *codes.entry(h.get("x", "/").await.unwrap().status).or_insert(0) += 1;
    }
    assert_eq!(codes.get(&502), Some(&5), "{codes:?}");
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_backend_finishes_in_flight_request() {
    let dir = temp_dir();
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let mut p = Proxy::start(&cfg("", &[(a.addr.to_string(), 1), (b.addr.to_string(), 0)]), dir.path()).await;
    let web = p.addr("web");
    let slow = tokio::spawn(async move { get(web, "x", "/slow/1200").await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    p.publish_settled(&cfg("", &[(a.addr.to_string(), 0), (b.addr.to_string(), 1)])).await;
    let c = count(web, 10, "x", &[]).await;
    assert_eq!(c.get("b"), Some(&10), "no new requests to the draining backend: {c:?}");
    let s = slow.await.unwrap();
    assert_eq!((s.status, s.backend().as_str()), (200, "a"), "the in-flight request completes");
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrade_echo() {
    let dir = temp_dir();
    let b = Backend::start("ws").await;
    // A short header timeout must not cut an upgraded connection that stays quiet longer than it.
    let config = format!("[limits]\nheader_read_timeout = \"300ms\"\n{}", cfg("", &[(b.addr.to_string(), 1)]));
    let p = Proxy::start(&config, dir.path()).await;
    let web = p.addr("web");
    let mut s = TcpStream::connect(web).await.unwrap();
    s.write_all(b"GET /chat HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n").await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut byte)).await.unwrap().unwrap();
        assert!(n == 1, "closed early: {}", String::from_utf8_lossy(&head));
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: echo") && head.contains("connection: upgrade"), "{head}");
    for msg in [&b"hello"[..], b"second message", &[0u8, 1, 2, 255]] {
        tokio::time::sleep(Duration::from_millis(400)).await;
        s.write_all(msg).await.unwrap();
        let mut buf = vec![0u8; msg.len()];
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut buf)).await.unwrap().unwrap();
        assert_eq!(&buf, msg);
    }
    drop(s); // the open tunnel would otherwise hold shutdown for the grace period
    p.stop().await;
}
