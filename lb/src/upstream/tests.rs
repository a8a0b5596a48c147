//! The HTTP/1.1 backend connection cache through real sockets: a scripted backend records which of its
//! connections each request arrived on, and whether the proxy side closed them.

use std::collections::HashMap;
use std::future::poll_fn;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{Method, Request};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::{build_all, LocalConns, SendError, Upstream};
use crate::body::UpstreamBody;

/// How the scripted backend answers the n-th request (1-based) of a connection.
#[derive(Clone, Copy)]
enum Script {
    /// 200 after `delay`, keep-alive.
    Ok { delay: Duration },
    /// 200 with `Connection: close`, then closes.
    Close,
    /// 200 with `Keep-Alive: timeout=N`.
    KeepAliveTimeout(u64),
    /// Closes the connection when the 2nd request arrives, without a byte of answer.
    DropSecond,
    /// Sends part of a response head on the 2nd request, then closes.
    PartialSecond,
}

#[derive(Default)]
struct Seen {
    /// (connection number, method) of every request, in arrival order.
    requests: Mutex<Vec<(usize, String)>>,
    accepted: AtomicUsize,
    /// Connections the proxy side closed (EOF read while waiting for a request).
    closed_by_peer: AtomicUsize,
}

impl Seen {
    fn conns(&self) -> Vec<usize> {
        self.requests.lock().unwrap_or_else(|p| p.into_inner()).iter().map(|r| r.0).collect()
    }
}

async fn backend(script: Script) -> (SocketAddr, Arc<Seen>) {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    let seen = Arc::new(Seen::default());
    let s = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = l.accept().await {
            let id = s.accepted.fetch_add(1, Ordering::SeqCst) + 1;
            let s = s.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut n = 0;
                loop {
                    let mut chunk = [0u8; 2048];
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        match sock.read(&mut chunk).await {
                            Ok(0) | Err(_) => {
                                s.closed_by_peer.fetch_add(1, Ordering::SeqCst);
                                return;
                            }
                            Ok(k) => buf.extend_from_slice(&chunk[..k]),
                        }
                        continue;
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).to_string();
                    buf.drain(..end + 4);
                    n += 1;
                    let method = head.split(' ').next().unwrap_or("").to_string();
                    s.requests.lock().unwrap_or_else(|p| p.into_inner()).push((id, method));
                    let body = id.to_string();
                    let extra = match script {
                        Script::Ok { delay } => {
                            tokio::time::sleep(delay).await;
                            String::new()
                        }
                        Script::Close => "connection: close\r\n".into(),
                        Script::KeepAliveTimeout(t) => format!("keep-alive: timeout={t}\r\n"),
                        Script::DropSecond if n == 2 => return,
                        Script::PartialSecond if n == 2 => {
                            let _ = sock.write_all(b"HTTP/1.1 200").await;
                            return;
                        }
                        Script::DropSecond | Script::PartialSecond => String::new(),
                    };
                    let resp = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n{extra}\r\n{body}", body.len());
                    if sock.write_all(resp.as_bytes()).await.is_err() || matches!(script, Script::Close) {
                        return;
                    }
                }
            });
        }
    });
    (addr, seen)
}

fn group_config(backends: &[(SocketAddr, &str)], extra: &str) -> String {
    let mut s = format!("[[group]]\nname = \"g\"\n{extra}\n");
    for (addr, more) in backends {
        s += &format!("[[group.backend]]\naddr = \"{addr}\"\n{more}\n");
    }
    s
}

fn upstreams(text: &str, previous: Option<&HashMap<Arc<str>, Arc<Upstream>>>) -> HashMap<Arc<str>, Arc<Upstream>> {
    let valid = padis_model::parse_config(text, "test.toml", Path::new(".")).unwrap_or_else(|e| panic!("{e}"));
    build_all(&valid.state.groups, previous)
}

/// A client connection: its backend connections are driven by a task of its own, as a client connection's
/// task does.
fn client() -> Arc<LocalConns> {
    let local = Arc::new(LocalConns::default());
    let l = local.clone();
    tokio::spawn(async move { poll_fn(|cx| l.poll_drive(cx)).await });
    local
}

/// Sends one request with no body and returns the backend connection number from the answer, once the
/// connection is back in the cache (or closed).
async fn get(up: &Upstream, local: &LocalConns, addr: SocketAddr, method: Method) -> Result<usize, SendError> {
    let r = exchange(up, local, addr, method).await;
    assert!(wait_for(Duration::from_secs(10), || local.in_use() == 0).await, "backend connection released");
    r
}

async fn exchange(up: &Upstream, local: &LocalConns, addr: SocketAddr, method: Method) -> Result<usize, SendError> {
    let conn = up.acquire(local, addr, false).await?;
    let req = Request::builder().method(method.clone()).uri("/x").header("host", "t").body(UpstreamBody::empty());
    let req = req.expect("request");
    let idempotent = method != Method::POST;
    let resp = conn.send(local, addr, req, idempotent).await?;
    let body = http_body_util::BodyExt::collect(resp.into_body()).await?.to_bytes();
    Ok(String::from_utf8_lossy(&body).parse().expect("connection number"))
}

async fn wait_for(limit: Duration, cond: impl Fn() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    cond()
}

#[tokio::test]
async fn idle_connections_are_shared_by_all_clients_most_recent_first() {
    let (addr, seen) = backend(Script::Ok { delay: Duration::from_millis(100) }).await;
    let ups = upstreams(&group_config(&[(addr, "")], ""), None);
    let up = ups.get("g").expect("group");
    let clients: Vec<_> = (0..3).map(|_| client()).collect();
    // Three requests at once need three connections.
    let firsts = futures_util::future::join_all(clients.iter().map(|c| get(up, c, addr, Method::GET))).await;
    assert!(firsts.iter().all(|r| r.is_ok()), "{firsts:?}");
    assert_eq!(seen.accepted.load(Ordering::SeqCst), 3);
    // One at a time, from every client in turn: the most recently used idle connection serves them all.
    let mut used = Vec::new();
    for i in 0..9 {
        used.push(get(up, &clients[i % 3], addr, Method::GET).await.expect("request"));
    }
    assert!(used.iter().all(|c| *c == used[0]), "one hot connection, whichever client: {used:?}");
    assert_eq!(seen.accepted.load(Ordering::SeqCst), 3, "no new connection");
}

#[tokio::test]
async fn reused_connection_closed_before_any_answer_byte_is_retried_for_idempotent_requests_only() {
    let (addr, seen) = backend(Script::DropSecond).await;
    let ups = upstreams(&group_config(&[(addr, "")], ""), None);
    let up = ups.get("g").expect("group");
    let c = client();
    assert_eq!(get(up, &c, addr, Method::GET).await.expect("first request"), 1);
    // The backend drops connection 1 as the second request arrives: sent again on connection 2.
    assert_eq!(get(up, &c, addr, Method::GET).await.expect("retried"), 2);
    assert_eq!(seen.conns(), vec![1, 1, 2]);
    // A POST is not sent twice.
    let err = get(up, &c, addr, Method::POST).await;
    assert!(matches!(err, Err(SendError::Http(_))), "POST on a dropped reused connection fails: {err:?}");
    assert_eq!(seen.conns(), vec![1, 1, 2, 2]);
    assert_eq!(seen.accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_request_that_got_part_of_an_answer_is_not_sent_again() {
    let (addr, seen) = backend(Script::PartialSecond).await;
    let ups = upstreams(&group_config(&[(addr, "")], ""), None);
    let up = ups.get("g").expect("group");
    let c = client();
    assert_eq!(get(up, &c, addr, Method::GET).await.expect("first request"), 1);
    let err = get(up, &c, addr, Method::GET).await;
    assert!(matches!(err, Err(SendError::Http(_))), "{err:?}");
    assert_eq!(seen.conns(), vec![1, 1]);
    assert_eq!(seen.accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn connection_close_and_a_short_backend_keep_alive_are_not_reused() {
    for (script, reused) in
        [(Script::Close, false), (Script::KeepAliveTimeout(1), false), (Script::KeepAliveTimeout(5), true)]
    {
        let (addr, seen) = backend(script).await;
        let ups = upstreams(&group_config(&[(addr, "")], ""), None);
        let up = ups.get("g").expect("group");
        let c = client();
        let a = get(up, &c, addr, Method::GET).await.expect("first");
        let b = get(up, &c, addr, Method::GET).await.expect("second");
        assert_eq!(a == b, reused, "connections {a} then {b}");
        if !reused && !matches!(script, Script::Close) {
            let closed = || seen.closed_by_peer.load(Ordering::SeqCst) == 2;
            assert!(wait_for(Duration::from_secs(10), closed).await, "both connections closed, not kept");
        }
    }
}

#[tokio::test]
async fn idle_timeout_and_removed_or_draining_backends_close_idle_connections() {
    let (a, seen_a) = backend(Script::Ok { delay: Duration::ZERO }).await;
    let (b, seen_b) = backend(Script::Ok { delay: Duration::ZERO }).await;
    let cfg = |a_extra: &str| group_config(&[(a, a_extra), (b, "")], "idle_timeout = \"300ms\"");
    let ups = upstreams(&cfg(""), None);
    let up = ups.get("g").expect("group").clone();
    let c = client();
    // Past the idle timeout, an idle connection is not used again (and the pruner closes it).
    get(&up, &c, a, Method::GET).await.expect("request");
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(get(&up, &c, a, Method::GET).await.expect("request"), 2);
    assert!(wait_for(Duration::from_secs(10), || seen_a.closed_by_peer.load(Ordering::SeqCst) == 1).await);
    // A backend set to drain: its idle connection is closed at once, its other backends' kept.
    get(&up, &c, b, Method::GET).await.expect("request");
    let ups2 = upstreams(&cfg("draining = true"), Some(&ups));
    assert!(wait_for(Duration::from_secs(10), || seen_a.closed_by_peer.load(Ordering::SeqCst) == 2).await);
    assert_eq!(seen_b.closed_by_peer.load(Ordering::SeqCst), 0);
    // Removed from the group: the same.
    let up2 = ups2.get("g").expect("group");
    assert_eq!(get(up2, &c, b, Method::GET).await.expect("request"), 1, "kept across snapshots");
    let only_a = group_config(&[(a, "")], "idle_timeout = \"300ms\"");
    let _ups3 = upstreams(&only_a, Some(&ups2));
    assert!(wait_for(Duration::from_secs(10), || seen_b.closed_by_peer.load(Ordering::SeqCst) == 1).await);
}
