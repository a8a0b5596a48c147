//! L7 proxy towards backends and from h2 clients: backend keep-alive connections are reused by one client
//! connection and, once it ends, by the next one; a backend connection the backend closed while idle is not used
//! again; an h2 client gets at most `limits.h2_max_concurrent_streams` streams at once.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use padis_tests::l7::{temp_dir, Backend, H1Conn, H2Conn, Proxy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

fn cfg(limits: &str, backend: &str) -> String {
    format!(
        "{limits}\n[[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\n[[route]]\nname = \"r\"\ngroup = \"g\"\n\
         [[group]]\nname = \"g\"\nretries = 0\n[[group.backend]]\naddr = \"{backend}\"\n"
    )
}

/// Waits until `cond` holds, up to `limit`.
async fn wait_for(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cond()
}

/// Idle backend connections are cached per runtime worker (one fast-path loop each, as nginx keeps one
/// keep-alive cache per worker process): on a one-worker runtime every client connection shares them.
#[tokio::test(flavor = "current_thread")]
async fn backend_connections_reused_within_and_across_clients() {
    let dir = temp_dir();
    let b = Backend::start("a").await;
    let p = Proxy::start(&cfg("", &b.addr.to_string()), dir.path()).await;
    let web = p.addr("web");
    let mut c = H1Conn::connect(web).await;
    for i in 0..30 {
        let a = c.get("x", &format!("/n/{i}")).await.expect("request");
        assert_eq!((a.status, a.backend().as_str()), (200, "a"));
    }
    assert_eq!(b.connections(), 1, "one client connection's requests share one backend connection");
    drop(c);
    let open = || p.metric("padis_active_connections", &[("listener", "web")]);
    assert!(wait_for(Duration::from_secs(10), || open() == 0.0).await, "client connection closed: {}", open());
    let mut c2 = H1Conn::connect(web).await;
    for _ in 0..10 {
        assert_eq!(c2.get("x", "/again").await.expect("request").status, 200);
    }
    assert_eq!(b.connections(), 1, "the next client connection reuses the idle backend connection");
    assert_eq!(b.hits(), 40);
    p.stop().await;
}

/// With two workers, client connections one after the other land on either loop: each loop reuses its own idle
/// backend connection, so there are at most two however many clients come.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_connections_are_cached_per_worker() {
    let dir = temp_dir();
    let b = Backend::start("a").await;
    let p = Proxy::start(&cfg("", &b.addr.to_string()), dir.path()).await;
    let web = p.addr("web");
    for _ in 0..6 {
        let mut c = H1Conn::connect(web).await;
        for _ in 0..5 {
            assert_eq!(c.get("x", "/w").await.expect("request").status, 200);
        }
    }
    assert!(b.connections() <= 2, "backend connections: {}", b.connections());
    assert_eq!(b.hits(), 30);
    p.stop().await;
}

/// A backend that answers one request per connection, keep-alive style (no `Connection: close`), then closes
/// the connection while it is idle, as backends with a short keep-alive timeout do.
async fn closing_backend() -> (std::net::SocketAddr, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    let (accepted, closed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (a, c) = (accepted.clone(), closed.clone());
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            a.fetch_add(1, Ordering::SeqCst);
            let c = c.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\nx-backend: closing\r\n\r\nok\n").await;
                tokio::time::sleep(Duration::from_millis(50)).await;
                drop(s);
                c.fetch_add(1, Ordering::SeqCst);
            });
        }
    });
    (addr, accepted, closed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_closing_idle_connection_is_not_reused() {
    let dir = temp_dir();
    let (addr, accepted, closed) = closing_backend().await;
    let p = Proxy::start(&cfg("", &addr.to_string()), dir.path()).await;
    let mut c = H1Conn::connect(p.addr("web")).await;
    for i in 1..=3 {
        let a = c.get("x", "/").await.expect("request");
        assert_eq!((a.status, a.body.as_str()), (200, "ok\n"), "request {i} on a fresh backend connection");
        assert!(
            wait_for(Duration::from_secs(10), || closed.load(Ordering::SeqCst) == i).await,
            "backend closed connection {i}"
        );
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 3);
    p.stop().await;
}

/// SETTINGS_MAX_CONCURRENT_STREAMS of the first SETTINGS frame an h2c server sends (raw frames).
async fn advertised_max_streams(addr: std::net::SocketAddr) -> Option<u32> {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect proxy");
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0").await.expect("preface");
    let read = async {
        loop {
            let mut head = [0u8; 9];
            s.read_exact(&mut head).await.ok()?;
            let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
            let mut payload = vec![0u8; len];
            s.read_exact(&mut payload).await.ok()?;
            // SETTINGS without ACK: 6-byte entries (id, value); 0x3 is MAX_CONCURRENT_STREAMS.
            if head[3] == 0x4 && head[4] & 0x1 == 0 {
                return payload
                    .chunks_exact(6)
                    .find(|e| u16::from_be_bytes([e[0], e[1]]) == 0x3)
                    .map(|e| u32::from_be_bytes([e[2], e[3], e[4], e[5]]));
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read).await.ok().flatten()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_max_concurrent_streams_is_enforced() {
    let dir = temp_dir();
    let b = Backend::start("a").await;
    let p = Proxy::start(&cfg("[limits]\nh2_max_concurrent_streams = 2", &b.addr.to_string()), dir.path()).await;
    let web = p.addr("web");
    assert_eq!(advertised_max_streams(web).await, Some(2), "the proxy's SETTINGS allow two streams");
    let mut h2 = H2Conn::connect(web).await;
    // One exchange first, so the client has the proxy's SETTINGS (streams opened before them may be refused).
    assert_eq!(h2.get("x", "/first").await.expect("h2 request").status, 200);
    // Six requests of 400 ms at once: with two streams at a time they take three rounds.
    let started = Instant::now();
    let reqs: Vec<_> = (0..6)
        .map(|_| {
            let mut h2 = h2.clone();
            tokio::spawn(async move { h2.get("x", "/slow/400").await.map(|a| a.status) })
        })
        .collect();
    for r in reqs {
        assert_eq!(r.await.expect("task").expect("h2 request"), 200);
    }
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(1150), "6 x 400 ms with 2 streams at a time took only {took:?}");
    p.stop().await;
}
