//! TCP proxy mode (`[[listener]] mode = "tcp"`): bytes relayed both ways through real sockets, balancing, retry on
//! a refused backend, active TCP health checks, scaling and draining under load with no failed connection, the
//! PROXY protocol header, half-close, graceful stop, metrics and config errors.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use padis_tests::l7::{temp_dir, Proxy};
use padis_tests::tcp::{echo_on, round_trip, Echo, Header};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// An address on which nothing listens (connections are refused).
async fn refused_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

fn tcp_config(group_extra: &str, backends: &[SocketAddr]) -> String {
    let mut s = "[[listener]]\nname = \"t\"\nbind = \"127.0.0.1:0\"\nmode = \"tcp\"\ngroup = \"g\"\n\n".to_string();
    s.push_str(&format!("[[group]]\nname = \"g\"\n{group_extra}\n"));
    for b in backends {
        s.push_str(&format!("[[group.backend]]\naddr = \"{b}\"\n"));
    }
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_echo_through_with_metrics() {
    let dir = temp_dir();
    let b = Echo::start(Header::None).await;
    let p = Proxy::start(&tcp_config("", &[b.addr]), dir.path()).await;
    let t = p.addr("t");
    let msg: Vec<u8> = (0..2_000_000u32).map(|i| (i % 251) as u8).collect();
    let back = round_trip(t, &msg).await.unwrap();
    assert!(back == msg, "2 MB echoed intact ({} bytes back)", back.len());
    let backend = b.addr.to_string();
    assert_eq!(p.metric("padis_tcp_connections_total", &[("listener", "t"), ("backend", &backend)]), 1.0);
    assert_eq!(p.metric("padis_tcp_bytes_total", &[("listener", "t"), ("direction", "in")]), msg.len() as f64);
    assert_eq!(p.metric("padis_tcp_bytes_total", &[("listener", "t"), ("direction", "out")]), msg.len() as f64);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(p.metric("padis_tcp_active_connections", &[("listener", "t")]), 0.0);
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_close_travels_both_ways() {
    let dir = temp_dir();
    let b = Echo::start(Header::None).await;
    let p = Proxy::start(&tcp_config("", &[b.addr]), dir.path()).await;
    let mut c = TcpStream::connect(p.addr("t")).await.unwrap();
    c.write_all(b"first").await.unwrap();
    c.shutdown().await.unwrap();
    // The backend only closes after it saw our end of stream; we still read after closing our half.
    let mut back = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut back)).await.unwrap().unwrap();
    assert_eq!(back, b"first");
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_across_three_backends() {
    let dir = temp_dir();
    let bs = [Echo::start(Header::None).await, Echo::start(Header::None).await, Echo::start(Header::None).await];
    let addrs: Vec<SocketAddr> = bs.iter().map(|b| b.addr).collect();
    let p = Proxy::start(&tcp_config("", &addrs), dir.path()).await;
    for i in 0..30 {
        assert_eq!(round_trip(p.addr("t"), format!("m{i}").as_bytes()).await.unwrap(), format!("m{i}").as_bytes());
    }
    let counts: Vec<usize> = bs.iter().map(Echo::conns).collect();
    assert_eq!(counts, vec![10, 10, 10]);
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_connections_counts_open_connections() {
    let dir = temp_dir();
    let bs = [Echo::start(Header::None).await, Echo::start(Header::None).await];
    let lc = "balance = \"least_request\"";
    let mut p = Proxy::start(&tcp_config(lc, &[bs[0].addr]), dir.path()).await;
    let mut open = Vec::new();
    for _ in 0..3 {
        let mut c = TcpStream::connect(p.addr("t")).await.unwrap();
        echo_on(&mut c, b"x").await.unwrap();
        open.push(c);
    }
    // A second backend joins: the three open connections count on the first, so new ones go to the second
    // (round robin would alternate: two of four).
    p.publish_settled(&tcp_config(lc, &[bs[0].addr, bs[1].addr])).await;
    for _ in 0..4 {
        let mut c = TcpStream::connect(p.addr("t")).await.unwrap();
        echo_on(&mut c, b"y").await.unwrap();
        open.push(c);
    }
    assert!(bs[1].conns() >= 3, "least connections: {} of 4 new on the idle backend", bs[1].conns());
    drop(open);
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_backend_is_retried_elsewhere_and_health_checks_take_it_out() {
    let dir = temp_dir();
    let dead = refused_addr().await;
    let live = [Echo::start(Header::None).await, Echo::start(Header::None).await];
    // No active check: picks of the dead backend are connect failures, retried on another backend.
    let p = Proxy::start(&tcp_config("retries = 2", &[dead, live[0].addr, live[1].addr]), dir.path()).await;
    for i in 0..12 {
        let m = format!("r{i}");
        assert_eq!(round_trip(p.addr("t"), m.as_bytes()).await.unwrap(), m.as_bytes(), "connection {i}");
    }
    let errors = |p: &Proxy| p.metric("padis_upstream_connect_errors_total", &[("backend", &dead.to_string())]);
    assert!(errors(&p) >= 1.0, "the dead backend was tried and skipped: {}", errors(&p));
    assert_eq!(live[0].conns() + live[1].conns(), 12);
    p.stop().await;

    // With an active TCP check the dead backend goes down and is never tried again.
    let health = "[group.health]\nkind = \"tcp\"\ninterval = \"100ms\"\ntimeout = \"50ms\"\nfall = 1\nrise = 1\n";
    let mut cfg = tcp_config("", &[dead, live[0].addr, live[1].addr]);
    cfg.push_str(health);
    let p = Proxy::start(&cfg, dir.path()).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = errors(&p);
    for i in 0..12 {
        let m = format!("h{i}");
        assert_eq!(round_trip(p.addr("t"), m.as_bytes()).await.unwrap(), m.as_bytes());
    }
    assert_eq!(errors(&p), before, "a backend down by its health check gets no connection attempt");
    // (The live backends also count the health checks' connections: no count check here.)
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drained_backend_keeps_its_open_connection() {
    let dir = temp_dir();
    let a = Echo::start(Header::None).await;
    let b = Echo::start(Header::None).await;
    let mut p = Proxy::start(&tcp_config("", &[a.addr]), dir.path()).await;
    let mut old = TcpStream::connect(p.addr("t")).await.unwrap();
    echo_on(&mut old, b"before").await.unwrap();
    assert_eq!(a.conns(), 1);
    // `a` removed, `b` added: the open connection lives on, new ones go to `b`.
    p.publish_settled(&tcp_config("", &[b.addr])).await;
    echo_on(&mut old, b"after the snapshot").await.unwrap();
    for _ in 0..3 {
        assert_eq!(round_trip(p.addr("t"), b"new").await.unwrap(), b"new");
    }
    assert_eq!((a.conns(), b.conns()), (1, 3));
    // Weight 0 drains the same way.
    let mut cfg = tcp_config("", &[b.addr, a.addr]);
    cfg = cfg.replacen(&format!("addr = \"{}\"\n", b.addr), &format!("addr = \"{}\"\nweight = 0\n", b.addr), 1);
    let mut on_b = TcpStream::connect(p.addr("t")).await.unwrap();
    echo_on(&mut on_b, b"on b").await.unwrap();
    p.publish_settled(&cfg).await;
    for _ in 0..3 {
        assert_eq!(round_trip(p.addr("t"), b"new").await.unwrap(), b"new");
    }
    echo_on(&mut on_b, b"b drained, still open").await.unwrap();
    echo_on(&mut old, b"still").await.unwrap();
    assert_eq!((a.conns(), b.conns()), (4, 4));
    drop((old, on_b));
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_2_6_1_under_load_fails_no_connection() {
    let dir = temp_dir();
    let mut bs = Vec::new();
    for _ in 0..6 {
        bs.push(Echo::start(Header::None).await);
    }
    let addrs: Vec<SocketAddr> = bs.iter().map(|b| b.addr).collect();
    let mut p = Proxy::start(&tcp_config("", &addrs[..2]), dir.path()).await;
    let t = p.addr("t");
    let failures = Arc::new(Mutex::new(Vec::new()));
    let mut workers = Vec::new();
    for w in 0..4 {
        let failures = failures.clone();
        workers.push(tokio::spawn(async move {
            for i in 0..50 {
                let m = format!("worker {w} connection {i} {}", "x".repeat(1000));
                match round_trip(t, m.as_bytes()).await {
                    Ok(back) if back == m.as_bytes() => {}
                    Ok(back) => failures.lock().unwrap().push(format!("{w}/{i}: {} bytes back", back.len())),
                    Err(e) => failures.lock().unwrap().push(format!("{w}/{i}: {e}")),
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(150)).await;
    p.publish(&tcp_config("", &addrs));
    tokio::time::sleep(Duration::from_millis(250)).await;
    p.publish(&tcp_config("", &addrs[5..]));
    for w in workers {
        w.await.unwrap();
    }
    let failures = failures.lock().unwrap().clone();
    assert!(failures.is_empty(), "{} failed: {:?}", failures.len(), failures.first());
    let total: usize = bs.iter().map(Echo::conns).sum();
    assert_eq!(total, 200);
    assert!(bs.iter().all(|b| b.conns() > 0), "all six served: {:?}", bs.iter().map(Echo::conns).collect::<Vec<_>>());
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_protocol_headers_name_the_client() {
    let dir = temp_dir();
    for (version, header) in [("v2", Header::V2), ("v1", Header::V1)] {
        let b = Echo::start(header).await;
        let p = Proxy::start(&tcp_config(&format!("proxy_protocol = \"{version}\""), &[b.addr]), dir.path()).await;
        let mut c = TcpStream::connect(p.addr("t")).await.unwrap();
        echo_on(&mut c, b"payload after the header").await.unwrap();
        let client = c.local_addr().unwrap();
        assert_eq!(b.seen.lock().unwrap().clone(), vec![client], "{version}");
        drop(c);
        p.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed() {
    let dir = temp_dir();
    let b = Echo::start(Header::None).await;
    let cfg = tcp_config("", &[b.addr]).replace("group = \"g\"\n", "group = \"g\"\nidle_timeout = \"300ms\"\n");
    let p = Proxy::start(&cfg, dir.path()).await;
    let mut c = TcpStream::connect(p.addr("t")).await.unwrap();
    for _ in 0..4 {
        echo_on(&mut c, b"busy").await.unwrap(); // activity keeps it open past the timeout
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let mut buf = [0u8; 8];
    let r = tokio::time::timeout(Duration::from_secs(3), c.read(&mut buf)).await.expect("closed by the proxy");
    assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_client_limit_and_graceful_stop() {
    let dir = temp_dir();
    let b = Echo::start(Header::None).await;
    let cfg = format!("[limits]\nmax_conns_per_client = 2\nshutdown_grace = \"5s\"\n{}", tcp_config("", &[b.addr]));
    let mut p = Proxy::start(&cfg, dir.path()).await;
    let t = p.addr("t");
    let mut one = TcpStream::connect(t).await.unwrap();
    let mut two = TcpStream::connect(t).await.unwrap();
    echo_on(&mut one, b"1").await.unwrap();
    echo_on(&mut two, b"2").await.unwrap();
    assert!(round_trip(t, b"3").await.map(|v| v.is_empty()).unwrap_or(true), "a third connection is refused");
    let rejected = [("listener", "t"), ("reason", "per_client_conns")];
    assert_eq!(p.metric("padis_http_connections_rejected_total", &rejected), 1.0);
    drop(two);
    tokio::time::sleep(Duration::from_millis(50)).await;
    // Graceful stop: no new connections, the open one finishes.
    p.shutdown_token().cancel();
    let handle = p.take_handle().unwrap();
    let waiting = tokio::spawn(handle.wait());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(TcpStream::connect(t).await.is_err(), "no longer accepting");
    echo_on(&mut one, b"still served during the grace").await.unwrap();
    assert!(!waiting.is_finished());
    drop(one);
    tokio::time::timeout(Duration::from_secs(3), waiting).await.expect("stops once the connection ended").unwrap();
}

/// A listener's `allow_cidrs` (marathon-lb's `BACKEND_NETWORK_ALLOWED_ACL` on a TCP port): a client from another
/// source is reset at accept, before any byte goes anywhere, and counted; an allowed one is relayed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listener_acl_resets_other_sources() {
    let dir = temp_dir();
    let b = Echo::start(Header::None).await;
    let cfg =
        tcp_config("", &[b.addr]).replacen("group = \"g\"\n", "group = \"g\"\nallow_cidrs = [\"127.0.0.2/32\"]\n", 1);
    let p = Proxy::start(&cfg, dir.path()).await;
    let t = p.addr("t");
    let from = |ip: &str| {
        let s = tokio::net::TcpSocket::new_v4().unwrap();
        s.bind(SocketAddr::new(ip.parse().unwrap(), 0)).unwrap();
        s
    };
    let mut allowed = from("127.0.0.2").connect(t).await.unwrap();
    echo_on(&mut allowed, b"from an allowed source").await.unwrap();
    // The reset can reach the client before its connect returns (a loaded machine): then connect fails with it.
    match from("127.0.0.1").connect(t).await {
        Ok(mut denied) => {
            let _ = denied.write_all(b"from elsewhere").await;
            let mut buf = [0u8; 64];
            let got =
                tokio::time::timeout(Duration::from_secs(5), denied.read(&mut buf)).await.expect("refused at once");
            assert!(matches!(got, Ok(0) | Err(_)), "nothing relayed to a denied source: {got:?}");
        }
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
    }
    let rejected = [("listener", "t"), ("reason", "acl")];
    assert_eq!(p.metric("padis_http_connections_rejected_total", &rejected), 1.0);
    let backend = b.addr.to_string();
    assert_eq!(p.metric("padis_tcp_connections_total", &[("listener", "t"), ("backend", &backend)]), 1.0);
    echo_on(&mut allowed, b"the allowed one goes on").await.unwrap();
    p.stop().await;
}

/// TLS terminated by a TCP listener (marathon-lb's `SSL_CERT` on a TCP port): the client's bytes reach the
/// backend in the clear, its close_notify is the backend's end of stream, no ALPN is offered (the bytes are the
/// app's protocol), and a client that does not speak TLS reaches no backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_is_terminated_by_a_tcp_listener() {
    let dir = temp_dir();
    let pki = padis_tests::l7::Pki::new(dir.path());
    pki.leaf("t", &["t.test"]);
    let b = Echo::start(Header::None).await;
    let cfg = tcp_config("", &[b.addr]).replacen(
        "group = \"g\"\n",
        "group = \"g\"\n[listener.tls]\ndefault_certificate = \"t\"\n",
        1,
    ) + "[[certificate]]\nname = \"t\"\ncert = \"t.pem\"\nkey = \"t.key\"\n";
    let p = Proxy::start(&cfg, dir.path()).await;
    let t = p.addr("t");
    let tcp = TcpStream::connect(t).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("t.test").unwrap();
    let mut s = tokio_rustls::TlsConnector::from(pki.client_config(&["h2", "http/1.1"]))
        .connect(name, tcp)
        .await
        .expect("TLS handshake");
    assert_eq!(s.get_ref().1.alpn_protocol(), None, "no ALPN on a TCP listener");
    let msg: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
    let (mut r, mut w) = tokio::io::split(&mut s);
    let send = async {
        w.write_all(&msg).await.unwrap();
        w.shutdown().await.unwrap();
    };
    let mut back = Vec::new();
    let recv = async { r.read_to_end(&mut back).await };
    let ((), got) = tokio::time::timeout(Duration::from_secs(10), async { tokio::join!(send, recv) }).await.unwrap();
    got.expect("ends with the backend's end of stream");
    assert!(back == msg, "echoed intact through TLS ({} of {} bytes)", back.len(), msg.len());
    assert_eq!(p.metric("padis_tls_handshakes_total", &[("listener", "t"), ("version", "TLSv1.3")]), 1.0);
    assert_eq!(p.metric("padis_tcp_bytes_total", &[("listener", "t"), ("direction", "in")]), msg.len() as f64);
    // Plaintext on the TLS port: no handshake, no backend connection.
    let mut plain = TcpStream::connect(t).await.unwrap();
    plain.write_all(b"hello in the clear\r\n\r\n").await.unwrap();
    let mut buf = [0u8; 64];
    let _ = tokio::time::timeout(Duration::from_secs(5), plain.read(&mut buf)).await.expect("closed");
    assert_eq!(p.metric("padis_tls_handshake_errors_total", &[("listener", "t")]), 1.0);
    let backend = b.addr.to_string();
    assert_eq!(p.metric("padis_tcp_connections_total", &[("listener", "t"), ("backend", &backend)]), 1.0);
    p.stop().await;
}

#[test]
fn config_errors_have_file_and_line() {
    let dir = temp_dir();
    let bad = "\
[[certificate]]
name = \"c\"
cert = \"c.pem\"
key = \"k.pem\"

[[listener]]
name = \"a\"
bind = \"127.0.0.1:0\"
mode = \"tcp\"

[[listener]]
name = \"b\"
bind = \"127.0.0.1:0\"
mode = \"tcp\"
group = \"nope\"

[[listener]]
name = \"c\"
bind = \"127.0.0.1:0\"
group = \"g\"

[[route]]
name = \"r\"
listeners = [\"a\"]
group = \"g\"

[[group]]
name = \"g\"
[[group.backend]]
addr = \"127.0.0.1:9\"
";
    let err = padis_model::parse_config(bad, "t.toml", dir.path()).expect_err("invalid").to_string();
    let expected =
        [(6, "needs a group"), (15, "no group named `nope`"), (20, "only used with mode"), (24, "`a` is a mode")];
    for (line, what) in expected {
        assert!(err.contains(&format!("t.toml:{line}:")) && err.contains(what), "{what} at {line}: {err}");
    }
    let pp = "[[group]]\nname = \"g\"\nproxy_protocol = \"v1\"\n";
    let err = padis_model::parse_config(pp, "t.toml", dir.path()).expect_err("invalid").to_string();
    assert!(err.contains("t.toml:3:") && err.contains("only sent by mode"), "{err}");
    let mode = "[[listener]]\nname = \"a\"\nbind = \"127.0.0.1:0\"\nmode = \"udp\"\n";
    let err = padis_model::parse_config(mode, "t.toml", dir.path()).expect_err("invalid").to_string();
    assert!(err.contains("t.toml:4:"), "{err}");
}
