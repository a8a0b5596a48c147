//! Faults of a client are not faults of its backend, on both L7 paths, through real sockets: a client that stops
//! sending its request body is answered 408, a malformed chunked request body 400, and neither counts as a
//! backend failure: with passive ejection after a single failure, the backend is still up afterwards
//! (`padis_backend_up`, `padis_backend_ejections_total`) and serves the next request, while a 5xx of the backend
//! does eject it.

use std::time::{Duration, Instant};

use padis_tests::l7::{get, group_toml, raw_exchange, temp_dir, Backend, Proxy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Listeners `fast` (the fast path) and `hyper` (the hyper path only); group `g` ejects its backend after one
/// failure.
async fn proxy(b: &Backend) -> (Proxy, tempfile::TempDir) {
    let dir = temp_dir();
    let passive = "passive = { consecutive_failures = 1, base_ejection = \"60s\", max_ejection = \"60s\" }";
    let cfg = format!(
        "[limits]\nbody_read_timeout = \"500ms\"\n\
         [[listener]]\nname = \"fast\"\nbind = \"127.0.0.1:0\"\n\
         [[listener]]\nname = \"hyper\"\nbind = \"127.0.0.1:0\"\nfast_path = false\n\
         [[route]]\nname = \"r\"\ngroup = \"g\"\n{}",
        group_toml("g", &[b], passive)
    );
    (Proxy::start(&cfg, dir.path()).await, dir)
}

fn status_of(out: &[u8]) -> String {
    String::from_utf8_lossy(out).lines().next().unwrap_or("").to_string()
}

/// The backend is up, was never ejected, and serves a request through `listener`.
async fn backend_unharmed(p: &Proxy, b: &Backend, listener: &str, what: &str) {
    let addr = b.addr.to_string();
    let labels = [("group", "g"), ("backend", addr.as_str())];
    assert_eq!(p.metric("padis_backend_ejections_total", &labels), 0.0, "{what}: the backend was ejected");
    assert_eq!(p.metric("padis_backend_up", &labels), 1.0, "{what}: the backend is down");
    assert_eq!(get(p.addr(listener), "x", "/after").await.status, 200, "{what}: the next request is served");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_request_body_is_408_and_not_the_backends_fault() {
    let b = Backend::start("b").await;
    let (p, _dir) = proxy(&b).await;
    for listener in ["fast", "hyper"] {
        let mut s = TcpStream::connect(p.addr(listener)).await.expect("connect");
        let start = Instant::now();
        s.write_all(b"POST /echo-body HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789").await.unwrap();
        // Then nothing more of the body.
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
        let took = start.elapsed();
        assert!(status_of(&out).starts_with("HTTP/1.1 408"), "{listener}: {:?}", String::from_utf8_lossy(&out));
        assert!(took >= Duration::from_millis(400) && took < Duration::from_secs(4), "{listener}: after {took:?}");
        backend_unharmed(&p, &b, listener, &format!("{listener}, stalled body")).await;
    }
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_chunked_body_is_400_and_not_the_backends_fault() {
    let b = Backend::start("b").await;
    let (p, _dir) = proxy(&b).await;
    let bodies: [&[u8]; 3] = [
        // Not a chunk size.
        b"zz\r\nabc\r\n0\r\n\r\n",
        // A chunk longer than its size says.
        b"3\r\nabcdef\r\n0\r\n\r\n",
        // A chunk size that overflows 64 bits.
        b"fffffffffffffffffffffff\r\nabc\r\n0\r\n\r\n",
    ];
    for listener in ["fast", "hyper"] {
        for body in bodies {
            let mut req = b"POST /echo-body HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
            req.extend_from_slice(body);
            let out = raw_exchange(p.addr(listener), &req, Duration::from_secs(5)).await;
            let what = format!("{listener}, body {:?}", String::from_utf8_lossy(body));
            assert!(status_of(&out).starts_with("HTTP/1.1 400"), "{what}: {:?}", String::from_utf8_lossy(&out));
            backend_unharmed(&p, &b, listener, &what).await;
        }
    }
    // The control: a fault of the backend (a 5xx) does eject it, and the checks above see that.
    assert_eq!(get(p.addr("hyper"), "x", "/status/500").await.status, 500);
    let addr = b.addr.to_string();
    let labels = [("group", "g"), ("backend", addr.as_str())];
    assert_eq!(p.metric("padis_backend_ejections_total", &labels), 1.0, "a 5xx is a strike");
    assert_eq!(p.metric("padis_backend_up", &labels), 0.0, "and ejects the backend");
    p.stop().await;
}
