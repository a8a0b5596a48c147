//! L7 proxy client limits and bad input: 431 (header size and count), 413 (Content-Length and chunked
//! mid-stream), slowloris cut with 408, idle keep-alive timeout, max connections, malformed request line,
//! Content-Length + Transfer-Encoding smuggling (not forwarded, connection closed), invalid HTTP/2 frames. The proxy keeps serving others.

use std::time::{Duration, Instant};

use padis_tests::l7::{get, group_toml, raw_exchange, temp_dir, Backend, H1Conn, Proxy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn proxy(limits: &str, b: &Backend) -> (Proxy, tempfile::TempDir) {
    let dir = temp_dir();
    let cfg = format!(
        "[limits]\n{limits}\n[[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\n[[route]]\nname = \"r\"\ngroup = \"g\"\n{}",
        group_toml("g", &[b], "")
    );
    (Proxy::start(&cfg, dir.path()).await, dir)
}

fn status_of(out: &[u8]) -> String {
    String::from_utf8_lossy(out).lines().next().unwrap_or("").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_and_body_limits() {
    let b = Backend::start("b").await;
    let (p, _dir) = proxy("max_header_bytes = 8192\nmax_headers = 20\nmax_body_bytes = 1000", &b).await;
    let web = p.addr("web");
    let big = format!("GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "a".repeat(20_000));
    let out = raw_exchange(web, big.as_bytes(), Duration::from_secs(5)).await;
    assert!(status_of(&out).starts_with("HTTP/1.1 431"), "{}", status_of(&out));
    let mut many = String::from("GET / HTTP/1.1\r\nHost: x\r\n");
    for i in 0..40 {
        many.push_str(&format!("X-H{i}: v\r\n"));
    }
    many.push_str("\r\n");
    let out = raw_exchange(web, many.as_bytes(), Duration::from_secs(5)).await;
    assert!(status_of(&out).starts_with("HTTP/1.1 431"), "{}", status_of(&out));

    let post = format!("POST /echo-body HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n{}", "b".repeat(5000));
    let out = raw_exchange(web, post.as_bytes(), Duration::from_secs(5)).await;
    assert!(status_of(&out).starts_with("HTTP/1.1 413"), "{}", status_of(&out));

    // Chunked: the limit is crossed mid-stream.
    let mut s = TcpStream::connect(web).await.unwrap();
    s.write_all(b"POST /echo-body HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n").await.unwrap();
    for _ in 0..10 {
        let chunk = format!("200\r\n{}\r\n", "c".repeat(0x200));
        if s.write_all(chunk.as_bytes()).await.is_err() {
            break;
        }
    }
    let _ = s.write_all(b"0\r\n\r\n").await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    assert!(status_of(&out).starts_with("HTTP/1.1 413"), "{}", status_of(&out));

    // A body under the limit passes.
    let ok = "POST /echo-body HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\nConnection: close\r\n\r\n0123456789";
    let out = raw_exchange(web, ok.as_bytes(), Duration::from_secs(5)).await;
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 200") && text.ends_with("0123456789"), "{text}");
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_is_cut_and_idle_connections_close() {
    let b = Backend::start("b").await;
    let (p, _dir) = proxy("header_read_timeout = \"600ms\"\nclient_idle_timeout = \"700ms\"", &b).await;
    let web = p.addr("web");
    let mut s = TcpStream::connect(web).await.unwrap();
    let start = Instant::now();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let trickle = async {
        for i in 0..40 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if s.write_all(format!("X-{i}: y\r\n").as_bytes()).await.is_err() {
                break;
            }
        }
    };
    // Meanwhile a normal client is served.
    let normal = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        get(web, "x", "/").await.status
    };
    let (_, st) = tokio::join!(trickle, normal);
    assert_eq!(st, 200);
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut out)).await;
    assert!(status_of(&out).starts_with("HTTP/1.1 408"), "{:?}", status_of(&out));
    assert!(start.elapsed() < Duration::from_secs(5));

    // A keep-alive connection idle longer than client_idle_timeout is closed; an active one is not.
    let mut s = TcpStream::connect(web).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let t = Instant::now();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest)).await;
    let waited = t.elapsed();
    assert!(waited >= Duration::from_millis(500) && waited < Duration::from_secs(3), "closed after {waited:?}");
    p.stop().await;
}

/// Whether a GET on a new connection is answered (a refused connection is reset, maybe before `connect` returns).
async fn served_on_new_connection(web: std::net::SocketAddr) -> bool {
    let Ok(stream) = TcpStream::connect(web).await else { return false };
    let Ok((mut sender, conn)) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await
    else {
        return false;
    };
    tokio::spawn(conn);
    let req = padis_tests::l7::get_req("x", "/");
    matches!(sender.send_request(req).await, Ok(r) if r.status() == 200)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections() {
    let b = Backend::start("b").await;
    let (p, _dir) = proxy("max_connections = 3", &b).await;
    let web = p.addr("web");
    let mut conns = Vec::new();
    for _ in 0..3 {
        let mut c = H1Conn::connect(web).await;
        assert_eq!(c.get("x", "/").await.expect("within limit").status, 200);
        conns.push(c);
    }
    assert!(!served_on_new_connection(web).await, "the 4th connection is refused");
    assert_eq!(p.metric("padis_http_connections_rejected_total", &[("reason", "max_connections")]), 1.0);
    // The refused connection leaves the gauge when the server's task has dropped it (maybe after the client saw it).
    let deadline = Instant::now() + Duration::from_secs(10);
    while p.metric("padis_active_connections", &[("listener", "web")]) != 3.0 {
        assert!(Instant::now() < deadline, "active connections never settled at the limit");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(conns.pop());
    let mut ok = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        if served_on_new_connection(web).await {
            ok = true;
            break;
        }
    }
    assert!(ok, "a slot frees up when a connection closes");
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_errors_and_others_are_served() {
    let b = Backend::start("b").await;
    let (p, _dir) = proxy("", &b).await;
    let web = p.addr("web");
    let out = raw_exchange(web, b"GARBAGE\r\n\r\n", Duration::from_secs(3)).await;
    assert!(status_of(&out).starts_with("HTTP/1.1 400"), "{}", status_of(&out));
    let out = raw_exchange(web, b"GET /\x01bad HTTP/1.1\r\nHost: x\r\n\r\n", Duration::from_secs(3)).await;
    assert!(status_of(&out).starts_with("HTTP/1.1 400"), "{}", status_of(&out));
    let smuggle = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n";
    let dup_cl = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 5\r\n\r\nabcde";
    let out = raw_exchange(web, dup_cl, Duration::from_secs(3)).await;
    assert!(status_of(&out).starts_with("HTTP/1.1 400"), "{}", status_of(&out));
    let two_hosts = b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n";
    let out = raw_exchange(web, two_hosts, Duration::from_secs(3)).await;
    assert!(status_of(&out).starts_with("HTTP/1.1 400"), "{}", status_of(&out));
    assert_eq!(b.hits(), 0, "no bad request reached the backend");

    // HTTP/2 preface followed by a frame with an invalid stream id (DATA on stream 0): GOAWAY.
    let mut h2 = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    h2.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]); // empty SETTINGS
    h2.extend_from_slice(&[0, 0, 4, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4]); // DATA on stream 0
    let out = raw_exchange(web, &h2, Duration::from_secs(3)).await;
    let has_goaway = out.windows(4).any(|w| w[3] == 7 && w[0] == 0) || out.is_empty();
    assert!(has_goaway, "{out:?}");
    let out =
        raw_exchange(web, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\xff\xff\xff\xff\xff\xff", Duration::from_secs(3)).await;
    assert!(!String::from_utf8_lossy(&out).contains("200"));

    // Content-Length + Transfer-Encoding: framed as chunked (RFC 9112 §6.3), Content-Length not forwarded, the
    // connection closed after the answer, so the smuggled request is never executed.
    let out = raw_exchange(web, smuggle, Duration::from_secs(3)).await;
    let text = String::from_utf8_lossy(&out);
    assert_eq!(text.matches("HTTP/1.1 ").count(), 1, "{text}");
    assert!(text.contains("path=/\n") && !text.contains("h:content-length=6"), "{text}");
    assert!(!text.contains("smuggled"), "{text}");
    assert_eq!(b.hits(), 1, "only the outer request reached the backend");

    let a = get(web, "x", "/after").await;
    assert_eq!(a.status, 200, "still serving");
    assert_eq!(b.hits(), 2);
    p.stop().await;
}

#[test]
fn client_limit_settings_have_defaults_and_are_validated_with_file_and_line() {
    let dir = temp_dir();
    let base = "[[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\n";
    let valid = padis_model::parse_config(base, "p.toml", dir.path()).expect("defaults are valid");
    let limits = &valid.state.limits;
    assert_eq!((limits.max_conns_per_client, limits.new_conns_per_client_per_sec), (1024, 512));
    assert_eq!((limits.send_timeout, limits.close_grace), (Duration::from_secs(30), Duration::from_secs(5)));
    assert_eq!(limits.h2_max_control_frames_per_sec, 100);
    let bad = format!(
        "{base}[limits]\nmax_conns_per_client = 0\nsend_timeout = \"10ms\"\nclose_grace = \"0s\"\n\
         h2_max_control_frames_per_sec = 0\n"
    );
    let err = padis_model::parse_config(&bad, "p.toml", dir.path()).expect_err("invalid").to_string();
    for (line, field) in
        [(6, "limits.send_timeout"), (7, "limits.close_grace"), (8, "limits.h2_max_control_frames_per_sec")]
    {
        assert!(err.contains(&format!("p.toml:{line}:")) && err.contains(field), "{field}: {err}");
    }
    assert!(!err.contains("max_conns_per_client"), "0 turns the limit off: {err}");
}
