//! The L7 request policy, through real sockets on both paths (the HTTP/1.1 fast path and the hyper path): one
//! client cannot take over another client's request (the `Connection: Content-Length` smuggling case, two clients
//! on one backend connection), the Host that selects the route is the Host the backend receives, paths are
//! normalised before matching, ambiguous response framing never reaches the client, and a client's fault (a
//! malformed or stalled body) is answered 400/408 and never counted against the backend.

use std::time::Duration;

use padis_tests::l7::{temp_dir, Proxy};
use padis_tests::recording::{exchange, parse_responses, RecordingBackend, Response};

/// Both listeners route the same way: `fast` on the fast path, `hyper` on the hyper path.
const PATHS: [&str; 2] = ["fast", "hyper"];

async fn proxy(backend: &RecordingBackend, admin: &RecordingBackend, extra_group: &str) -> (Proxy, tempfile::TempDir) {
    let dir = temp_dir();
    let cfg = format!(
        "[limits]\nbody_read_timeout = \"500ms\"\n\
         [[listener]]\nname = \"fast\"\nbind = \"127.0.0.1:0\"\n\
         [[listener]]\nname = \"hyper\"\nbind = \"127.0.0.1:0\"\nfast_path = false\n\
         [[route]]\nname = \"admin\"\nhost = \"h.test\"\npath = \"/admin\"\ngroup = \"admin\"\n\
         [[route]]\nname = \"r\"\ngroup = \"g\"\n\
         [[group]]\nname = \"g\"\nretries = 0\nrequest_timeout = \"2s\"\n{extra_group}\n[[group.backend]]\naddr = \"{}\"\n\
         [[group]]\nname = \"admin\"\n[[group.backend]]\naddr = \"{}\"\n",
        backend.addr, admin.addr
    );
    (Proxy::start(&cfg, dir.path()).await, dir)
}

async fn send(p: &Proxy, listener: &str, raw: &[u8]) -> Vec<Response> {
    let (bytes, _) =
        exchange(p.addr(listener), &[raw.to_vec()], Duration::from_millis(300), Duration::from_secs(5)).await;
    parse_responses(&bytes, &[]).0
}

#[tokio::test(flavor = "current_thread")]
async fn connection_naming_content_length_cannot_smuggle_a_request_into_another_clients() {
    for path in PATHS {
        let b = RecordingBackend::start().await;
        let admin = RecordingBackend::start().await;
        let (p, _dir) = proxy(&b, &admin, "").await;
        // The attacker: a body that is a request head waiting for the next request to complete it.
        let smuggled = "GET /stolen HTTP/1.1\r\nHost: h.test\r\nX-Ignore: ";
        let attack = format!(
            "POST /upload HTTP/1.1\r\nHost: h.test\r\nConnection: keep-alive, Content-Length\r\n\
             Content-Length: {}\r\n\r\n{smuggled}",
            smuggled.len()
        );
        let a = send(&p, path, attack.as_bytes()).await;
        assert_eq!(a.len(), 1, "{path}: {a:?}");
        let echo = format!("POST /upload {}", smuggled.len());
        assert_eq!((a[0].status, String::from_utf8_lossy(&a[0].body)), (200, echo.as_str().into()), "{path}");
        // The victim, on a connection of its own: its request must reach the backend as its own.
        let v = send(
            &p,
            path,
            b"GET /account HTTP/1.1\r\nHost: h.test\r\nCookie: session=victim\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert_eq!(v.len(), 1, "{path}: {v:?}");
        assert_eq!(String::from_utf8_lossy(&v[0].body), "GET /account 0", "{path}: the victim got another answer");
        let seen = b.seen();
        assert!(seen.garbage.is_empty(), "{path}: {:?}", seen.garbage);
        let reqs = &seen.requests;
        assert_eq!(reqs.len(), 2, "{path}: {reqs:?}");
        assert_eq!((reqs[0].method.as_str(), reqs[0].body.as_slice()), ("POST", smuggled.as_bytes()), "{path}");
        assert_eq!(reqs[0].header("content-length"), Some(smuggled.len().to_string().as_str()), "{path}: length kept");
        assert_eq!((reqs[1].target.as_str(), reqs[1].header("cookie")), ("/account", Some("session=victim")), "{path}");
        assert_eq!(reqs[0].conn, reqs[1].conn, "{path}: both requests shared one backend connection");
        p.stop().await;
    }
}

#[tokio::test(flavor = "current_thread")]
async fn the_path_a_route_matches_is_the_path_the_backend_receives() {
    for path in PATHS {
        let b = RecordingBackend::start().await;
        let admin = RecordingBackend::start().await;
        let (p, _dir) = proxy(&b, &admin, "").await;
        for (target, route_admin, received) in [
            ("/x/../admin/a", true, "/admin/a"),
            ("//admin", true, "/admin"),
            ("/%61dmin", true, "/admin"),
            ("/%2e%2e/admin?q=/../x", true, "/admin?q=/../x"),
            ("/admin/../secret", false, "/secret"),
            ("/adminx", false, "/adminx"),
        ] {
            b.clear();
            admin.clear();
            let raw = format!("GET {target} HTTP/1.1\r\nHost: h.test\r\nConnection: close\r\n\r\n");
            let r = send(&p, path, raw.as_bytes()).await;
            assert_eq!(r.len(), 1, "{path} {target}");
            let (hit, other) = if route_admin { (&admin, &b) } else { (&b, &admin) };
            let seen = hit.seen().requests;
            assert_eq!(seen.len(), 1, "{path} {target}: wrong route");
            assert!(other.seen().requests.is_empty(), "{path} {target}");
            assert_eq!(seen[0].target, received, "{path} {target}");
        }
        // A bad escape is a bad request.
        let r = send(&p, path, b"GET /a%zz HTTP/1.1\r\nHost: h.test\r\n\r\n").await;
        assert_eq!(r[0].status, 400, "{path}");
        p.stop().await;
    }
}

#[tokio::test(flavor = "current_thread")]
async fn the_host_that_routes_is_the_host_the_backend_receives() {
    for path in PATHS {
        let b = RecordingBackend::start().await;
        let admin = RecordingBackend::start().await;
        let (p, _dir) = proxy(&b, &admin, "").await;
        // Absolute-form: its authority routes and is the Host sent on (nginx does the same).
        let r =
            send(&p, path, b"GET http://h.test/admin HTTP/1.1\r\nHost: other.test\r\nConnection: close\r\n\r\n").await;
        assert_eq!(r[0].status, 200, "{path}");
        let seen = admin.seen().requests;
        assert_eq!(seen.len(), 1, "{path}: routed by the authority");
        assert_eq!((seen[0].header("host"), seen[0].target.as_str()), (Some("h.test"), "/admin"), "{path}");
        for bad in [
            "GET / HTTP/1.1\r\nHost: user@h.test\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: h.test:80@evil.test\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: h.test:abc\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: h test\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: h.test\r\nHost: h.test\r\n\r\n",
            "GET / HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.0\r\n\r\n",
            "GET http://user@h.test/ HTTP/1.1\r\nHost: h.test\r\n\r\n",
            // An upgrade's bytes after the head are the new protocol's: a body would be dropped or misread.
            "POST / HTTP/1.1\r\nHost: h.test\r\nConnection: Upgrade\r\nContent-Length: 3\r\n\r\nabc",
            "GET / HTTP/1.1\r\nHost: h.test\r\nConnection: upgrade\r\nUpgrade: websocket\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        ] {
            let r = send(&p, path, bad.as_bytes()).await;
            assert_eq!(r.first().map(|r| r.status), Some(400), "{path}: {bad:?}");
        }
        assert!(b.seen().requests.is_empty(), "{path}: nothing bad reached the backend");
        p.stop().await;
    }
}

#[tokio::test(flavor = "current_thread")]
async fn ambiguous_response_framing_never_reaches_the_client() {
    for path in PATHS {
        let b = RecordingBackend::start().await;
        let admin = RecordingBackend::start().await;
        let (p, _dir) = proxy(&b, &admin, "").await;
        for name in ["length-and-chunked", "conflicting-lengths"] {
            let raw = format!("GET /respond/{name} HTTP/1.1\r\nHost: h.test\r\n\r\n");
            let r = send(&p, path, raw.as_bytes()).await;
            assert_eq!(r.first().map(|r| r.status), Some(502), "{path} {name}: {r:?}");
        }
        // A Connection header naming Content-Length does not take the length away from the client.
        let raw = b"GET /respond/connection-names-length HTTP/1.1\r\nHost: h.test\r\n\r\nGET /after HTTP/1.1\r\nHost: h.test\r\nConnection: close\r\n\r\n";
        let r = send(&p, path, raw).await;
        assert_eq!(r.len(), 2, "{path}: {r:?}");
        assert_eq!((r[0].header("content-length"), r[0].body.as_slice()), (Some("5"), b"hello".as_slice()), "{path}");
        assert!(r[0].header("x-hop").is_none(), "{path}");
        assert_eq!(r[1].body, b"GET /after 0", "{path}");
        p.stop().await;
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_clients_bad_or_stalled_body_is_its_own_fault_not_the_backends() {
    // One failure ejects: any client fault counted against the backend would take it out.
    let passive = "[group.passive]\nconsecutive_failures = 1\nbase_ejection = \"60s\"\nmax_ejection = \"60s\"";
    for path in PATHS {
        let b = RecordingBackend::start().await;
        let admin = RecordingBackend::start().await;
        let (p, _dir) = proxy(&b, &admin, passive).await;
        // A malformed chunk size.
        let r = send(
            &p,
            path,
            b"POST /c HTTP/1.1\r\nHost: h.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n\r\n",
        )
        .await;
        assert_eq!(r.first().map(|r| r.status), Some(400), "{path}: {r:?}");
        // A body that stops coming: 408 after limits.body_read_timeout.
        let (bytes, _) = exchange(
            p.addr(path),
            &[b"POST /s HTTP/1.1\r\nHost: h.test\r\nContent-Length: 100\r\n\r\nonly some".to_vec()],
            Duration::from_secs(3),
            Duration::from_secs(5),
        )
        .await;
        let r = parse_responses(&bytes, &[]).0;
        assert_eq!(r.first().map(|r| r.status), Some(408), "{path}: {}", String::from_utf8_lossy(&bytes));
        // The backend is still in: the next requests reach it.
        for i in 0..3 {
            let raw = format!("GET /ok{i} HTTP/1.1\r\nHost: h.test\r\nConnection: close\r\n\r\n");
            let r = send(&p, path, raw.as_bytes()).await;
            assert_eq!(r.first().map(|r| r.status), Some(200), "{path}: backend ejected by a client's fault");
        }
        p.stop().await;
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_host_the_connections_certificate_was_not_chosen_for_is_misdirected() {
    let b = RecordingBackend::start().await;
    let dir = temp_dir();
    let pki = padis_tests::l7::Pki::new(dir.path());
    pki.leaf("a", &["a.example"]);
    pki.leaf("wild", &["*.shared.example"]);
    let cfg = format!(
        "[[listener]]\nname = \"tls\"\nbind = \"127.0.0.1:0\"\n[listener.tls]\ndefault_certificate = \"a\"\n\
         [[certificate]]\nname = \"a\"\ncert = \"a.pem\"\nkey = \"a.key\"\n\
         [[certificate]]\nname = \"wild\"\ncert = \"wild.pem\"\nkey = \"wild.key\"\n\
         [[route]]\nname = \"r\"\ngroup = \"g\"\n[[group]]\nname = \"g\"\n[[group.backend]]\naddr = \"{}\"\n",
        b.addr
    );
    let p = Proxy::start(&cfg, dir.path()).await;
    let client = pki.client_config(&["h2", "http/1.1"]);
    for (sni, host, status) in [
        ("a.example", "a.example", 200),
        ("a.example", "x.shared.example", 421),
        ("x.shared.example", "a.example", 421),
        // One certificate serves both names: the connection may be reused (h2 coalescing).
        ("x.shared.example", "y.shared.example", 200),
        ("x.shared.example", "X.Shared.Example:443", 200),
    ] {
        let info = padis_tests::l7::tls_connect(p.addr("tls"), client.clone(), sni).await.expect("tls");
        let a = padis_tests::l7::tls_get(info, host, "/").await;
        assert_eq!(a.status, status, "SNI {sni}, Host {host}");
    }
    assert_eq!(b.seen().requests.len(), 3, "misdirected requests never reach the backend");
    p.stop().await;
}

#[tokio::test(flavor = "current_thread")]
async fn a_connect_failure_sends_any_request_to_another_backend() {
    // The first backend refuses connections (a port nothing listens on); retries = 1, no ejection.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr");
    for path in PATHS {
        let b = RecordingBackend::start().await;
        let dir = temp_dir();
        let cfg = format!(
            "[[listener]]\nname = \"fast\"\nbind = \"127.0.0.1:0\"\n\
             [[listener]]\nname = \"hyper\"\nbind = \"127.0.0.1:0\"\nfast_path = false\n\
             [[route]]\nname = \"r\"\ngroup = \"g\"\n\
             [[group]]\nname = \"g\"\nbalance = \"round_robin\"\nretries = 1\n\
             [group.passive]\nconsecutive_failures = 1000\n\
             [[group.backend]]\naddr = \"{dead}\"\n[[group.backend]]\naddr = \"{}\"\n",
            b.addr
        );
        let p = Proxy::start(&cfg, dir.path()).await;
        for i in 0..4 {
            // POST is not idempotent, but nothing of it was sent to the refusing backend.
            let raw =
                format!("POST /p{i} HTTP/1.1\r\nHost: h.test\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc");
            let r = send(&p, path, raw.as_bytes()).await;
            assert_eq!(r.first().map(|r| r.status), Some(200), "{path}: POST /p{i}: {r:?}");
        }
        assert_eq!(b.seen().requests.len(), 4, "{path}");
        assert!(b.seen().requests.iter().all(|r| r.body == b"abc"), "{path}");
        p.stop().await;
    }
}
