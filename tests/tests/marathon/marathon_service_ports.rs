//! marathon-lb's service ports through the daemon, with apps of the Marathon test double shaped like marathon-lb's
//! test apps: a TCP app (no VHOST) served on its service port by the TCP mode while it scales 2 -> 6 -> 1 under a
//! bounded load with no failed connection (open connections outlive the scale-down); an HTTP app served on its
//! service port without a VHOST, on its `BIND_ADDR`, whatever the Host, and closed when the app goes; a port the
//! config file or an older app takes, or another process holds, reported for that app alone while the rest
//! serves; `SSL_CERT` by certificate name or path terminating TLS, an unknown one reported; an L4 VIP on random host
//! ports refused with a problem; `BACKEND_HEALTHCHECK_PORT_INDEX` probing the tasks' other port.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use padis_tests::l7::{self, Backend, Pki};
use padis_tests::marathon::{AppSpec, MarathonDouble};
use padis_tests::process::{free_port, Padis};
use padis_tests::tcp::{echo_on, round_trip, wait_closed, wait_open, Echo, Header};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// `s3cret`, as `openssl passwd -6 -salt padissalt s3cret` writes it (an HAProxy userlist `password`).
const HASH: &str =
    "$6$padissalt$94FHgKs1h6IHsjxK0JcIa8G2o.XPxuZHgseXF.orWnhISP2q7VjwTNuwVY5FStqhwtWxY1mpuCL13z6U3AduW0";

fn config(admin: SocketAddr, web: u16, marathon: &str, extra: &str) -> String {
    format!(
        r#"[admin]
listen = "{admin}"

[log]
level = "info"
access_log = false

[limits]
# The load opens connections faster than the default per-client rate (one client address).
new_conns_per_client_per_sec = 0

[[listener]]
name = "web"
bind = "127.0.0.1:{web}"

[marathon]
urls = ["{marathon}"]
group = "external"
drain_time = "1s"
backoff_min = "50ms"
backoff_max = "500ms"
dns_by_default = false
service_port_bind = "127.0.0.1"
{extra}"#
    )
}

/// Starts `padis` following `m` (`extra` ends the file: `[[certificate]]` sections); returns it and its `web` port.
async fn start_padis(m: &MarathonDouble, dir: &Path, extra: &str) -> (Padis, u16) {
    let path = dir.join("padis.toml");
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let web = free_port();
    std::fs::write(&path, config(admin, web, &m.url(0), extra)).expect("config");
    let padis = tokio::task::spawn_blocking(move || {
        let mut p = Padis::start(&path, admin);
        p.wait_ready();
        p
    })
    .await
    .expect("padis starts");
    (padis, web)
}

/// Waits (off the runtime threads) until `/v1/state` satisfies `pred`.
async fn wait_state(padis: &Padis, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let admin = padis.admin;
        let s = tokio::task::spawn_blocking(move || padis_tests::process::http(admin, "GET", "/v1/state", None, &[]))
            .await
            .expect("join")
            .ok()
            .and_then(|(_, b)| serde_json::from_str::<Value>(&b).ok())
            .unwrap_or_default();
        if pred(&s) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: never reached\nsources: {:#}\nreports: {:#}\nlog:\n{}",
            s["sources"],
            s["planes"],
            padis.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Names of the listeners in force.
fn listeners(s: &Value) -> Vec<String> {
    let st = &s["snapshot"]["state"];
    st["listener"].as_array().into_iter().flatten().filter_map(|l| l["name"].as_str().map(str::to_string)).collect()
}

/// (serving, draining) backends of a group in force.
fn backends(s: &Value, group: &str) -> (usize, usize) {
    let groups = s["snapshot"]["state"]["group"].as_array().cloned().unwrap_or_default();
    let Some(g) = groups.iter().find(|g| g["name"] == group) else {
        return (0, 0);
    };
    let all = g["backend"].as_array().cloned().unwrap_or_default();
    let draining = all.iter().filter(|b| b["draining"] == true).count();
    (all.len() - draining, draining)
}

/// The Marathon problems of `app`.
fn problems_of(s: &Value, app: &str) -> Vec<Value> {
    let all = s["sources"]["marathon"]["problems"].as_array().cloned().unwrap_or_default();
    all.into_iter().filter(|p| p["app"] == app).collect()
}

/// Items of the Marathon source the reconciler left out.
fn rejected(s: &Value) -> Vec<Value> {
    s["sources"]["marathon"]["rejected"].as_array().cloned().unwrap_or_default()
}

/// A TCP app without VHOST (marathon-lb's `mode tcp`) on its service port: 2 -> 6 -> 1 instances while 4 clients
/// open connection after connection (each bounded in count and time); none fails, the new tasks take connections,
/// and connections opened before the scale-down keep working after their tasks left the group.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_app_on_its_service_port_scales_2_6_1_under_load() {
    let mut pool = Vec::new();
    for _ in 0..6 {
        pool.push(Echo::start(Header::None).await);
    }
    let ports: Vec<u32> = pool.iter().map(|e| u32::from(e.addr.port())).collect();
    let sp = free_port();
    let m = MarathonDouble::start().await;
    // Task n (1-based) runs on echo backend n-1; the scale-down kills the youngest (tasks 6..2).
    let spec = AppSpec::new("/db", &[("HAPROXY_GROUP", "external")])
        .with_service_ports(&[u32::from(sp)])
        .placed(move |seq| ("127.0.0.1".to_string(), vec![ports[((seq - 1) % 6) as usize]]));
    m.add_app(spec, 2);
    let dir = tempfile::tempdir().expect("tempdir");
    let (padis, _) = start_padis(&m, dir.path(), "").await;
    let s = wait_state(&padis, "TCP listener with 2 backends", |s| {
        listeners(s).contains(&"marathon:/db:0".to_string()) && backends(s, "marathon:/db:0") == (2, 0)
    })
    .await;
    let l = s["snapshot"]["state"]["listener"].as_array().unwrap().iter().find(|l| l["name"] == "marathon:/db:0");
    assert_eq!(l.map(|l| (l["mode"].clone(), l["group"].clone())), Some(("tcp".into(), "marathon:/db:0".into())));
    assert!(problems_of(&s, "/db").is_empty(), "{:#}", s["sources"]);
    let addr: SocketAddr = format!("127.0.0.1:{sp}").parse().expect("addr");
    wait_open(addr).await;

    // Bounded load: 4 clients, each at most 5,000 connections and 60 s.
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let clients: Vec<_> = (0..4)
        .map(|c| {
            let (stop, ok, failures) = (stop.clone(), ok.clone(), failures.clone());
            tokio::spawn(async move {
                let deadline = Instant::now() + Duration::from_secs(60);
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline && n < 5_000 {
                    n += 1;
                    let msg = format!("client {c} connection {n}\n");
                    match round_trip(addr, msg.as_bytes()).await {
                        Ok(back) if back == msg.as_bytes() => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(back) => failures.lock().expect("lock").push(format!("{c}/{n}: {} bytes back", back.len())),
                        Err(e) => failures.lock().expect("lock").push(format!("{c}/{n}: {e}")),
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;

    // 2 -> 6: the new tasks take connections.
    m.scale("/db", 6);
    wait_state(&padis, "6 backends", |s| backends(s, "marathon:/db:0") == (6, 0)).await;
    let before: Vec<usize> = pool[2..].iter().map(Echo::conns).collect();
    tokio::time::sleep(Duration::from_millis(800)).await;
    let fresh = pool[2..].iter().zip(&before).filter(|(e, b)| e.conns() > **b).count();
    assert!(fresh >= 3, "new tasks take no connections: {fresh} of 4");

    // Connections opened now reach all six tasks (round robin) and stay open across the scale-down.
    let mut kept = Vec::new();
    for _ in 0..6 {
        let mut c = TcpStream::connect(addr).await.expect("connect");
        echo_on(&mut c, b"hello\n").await.expect("echo before the scale-down");
        kept.push(c);
    }

    // 6 -> 1: killed tasks drain then leave the group; their open connections go on.
    m.scale("/db", 1);
    wait_state(&padis, "1 backend left", |s| backends(s, "marathon:/db:0") == (1, 0)).await;
    for (i, c) in kept.iter_mut().enumerate() {
        echo_on(c, b"still here\n").await.unwrap_or_else(|e| panic!("kept connection {i} cut: {e}"));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let others: Vec<usize> = pool[1..].iter().map(Echo::conns).collect();
    let first = pool[0].conns();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(pool[1..].iter().map(Echo::conns).collect::<Vec<_>>(), others, "removed tasks get no connection");
    assert!(pool[0].conns() > first, "the remaining task serves");

    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.expect("client");
    }
    let failures = failures.lock().expect("lock").clone();
    assert!(failures.is_empty(), "{} failed connections: {:?}", failures.len(), &failures[..failures.len().min(10)]);
    let ok = ok.load(Ordering::Relaxed);
    assert!(ok > 200, "too little load: {ok}");
    for (i, mut c) in kept.into_iter().enumerate() {
        echo_on(&mut c, b"bye\n").await.unwrap_or_else(|e| panic!("kept connection {i} cut: {e}"));
    }

    // The app goes: its listener closes, with no reload.
    m.remove_app("/db");
    wait_closed(addr).await;
}

/// An HTTP app (MODE=http, no VHOST) on its service port and `BIND_ADDR`: every request there goes to it, whatever
/// its Host (another app's VHOST included); the config file's listener does not serve it; nothing listens on the
/// default address; the listener closes when the app goes. An app's AUTH holds on its service port too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_app_on_its_service_port_without_vhost_on_its_bind_addr() {
    let api = Backend::start("api").await;
    let other = Backend::start("other").await;
    let sp = free_port();
    let m = MarathonDouble::start().await;
    let (a, o) = (u32::from(api.addr.port()), u32::from(other.addr.port()));
    m.add_app(
        AppSpec::new(
            "/api",
            &[("HAPROXY_GROUP", "external"), ("HAPROXY_0_MODE", "http"), ("HAPROXY_0_BIND_ADDR", "127.0.0.3")],
        )
        .with_service_ports(&[u32::from(sp)])
        .placed(move |_| ("127.0.0.1".to_string(), vec![a])),
        1,
    );
    m.add_app(
        AppSpec::new("/other", &[("HAPROXY_GROUP", "external"), ("HAPROXY_0_VHOST", "other.test")])
            .placed(move |_| ("127.0.0.1".to_string(), vec![o])),
        1,
    );
    // With AUTH: its service port asks for the password too (marathon-lb's service-port frontend does not).
    let secret_port = free_port();
    let auth = format!("Staff:alice:{HASH}");
    m.add_app(
        AppSpec::new(
            "/secret",
            &[("HAPROXY_GROUP", "external"), ("HAPROXY_0_VHOST", "secret.test"), ("HAPROXY_0_AUTH", &auth)],
        )
        .with_service_ports(&[u32::from(secret_port)])
        .placed(move |_| ("127.0.0.1".to_string(), vec![a])),
        1,
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let (padis, web) = start_padis(&m, dir.path(), "").await;
    let s = wait_state(&padis, "HTTP service-port listener", |s| {
        listeners(s).contains(&"marathon:/secret:0".to_string())
            && listeners(s).contains(&"marathon:/api:0".to_string())
            && backends(s, "marathon:/other:0") == (1, 0)
    })
    .await;
    assert!(problems_of(&s, "/api").is_empty(), "{:#}", s["sources"]);
    let addr: SocketAddr = format!("127.0.0.3:{sp}").parse().expect("addr");
    wait_open(addr).await;
    for host in ["anything.test", "other.test", "127.0.0.3"] {
        let a = l7::get(addr, host, "/x").await;
        assert_eq!((a.status, a.backend()), (200, "api".to_string()), "Host {host}");
    }
    let web: SocketAddr = format!("127.0.0.1:{web}").parse().expect("addr");
    assert_eq!(l7::get(web, "anything.test", "/x").await.status, 404, "no VHOST: not on the config's listener");
    assert_eq!(l7::get(web, "other.test", "/x").await.backend(), "other");
    // Bound on BIND_ADDR, not on service_port_bind (read from the snapshot: whether some socket answers on
    // 127.0.0.1 at that port depends on what other tests running beside this one bound since the port was picked).
    let bind = s["snapshot"]["state"]["listener"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|l| l["name"] == "marathon:/api:0")
        .map(|l| l["bind"].clone());
    assert_eq!(bind, Some(Value::from(format!("127.0.0.3:{sp}"))), "BIND_ADDR, not service_port_bind");
    let secret: SocketAddr = format!("127.0.0.1:{secret_port}").parse().expect("addr");
    wait_open(secret).await;
    assert_eq!(l7::get(secret, "any.test", "/").await.status, 401);
    let mut req = l7::get_req("any.test", "/");
    // alice:s3cret
    req.headers_mut().insert("authorization", "Basic YWxpY2U6czNjcmV0".parse().expect("header"));
    let a = l7::H1Conn::connect(secret).await.send(req).await.expect("answer");
    assert_eq!((a.status, a.backend()), (200, "api".to_string()));

    m.remove_app("/api");
    wait_closed(addr).await;
    assert_eq!(l7::get(web, "other.test", "/x").await.backend(), "other", "the other app is unaffected");
}

/// Ports taken: by the config file's listener (the app's listener is rejected, its VHOST route served), by an
/// older app (the newer app's listener skipped, the older serves), and by another process (the bind failure is
/// reported, then the port opens once free). Each reported for that app alone, in `/v1/state` and metrics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn taken_ports_are_reported_for_that_app_alone() {
    let (first, second, cfg_app, held_app) = (
        Backend::start("first").await,
        Backend::start("second").await,
        Backend::start("cfgclash").await,
        Backend::start("held").await,
    );
    let (q, h) = (free_port(), free_port());
    let holder = std::net::TcpListener::bind(("127.0.0.1", h)).expect("hold a port");
    let m = MarathonDouble::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    // The config file's listener port, which an app claims by PORT label.
    let web_port = free_port();
    let app = |id: &str, b: &Backend, labels: &[(&str, &str)], sp: u16| {
        let port = u32::from(b.addr.port());
        let mut all = vec![("HAPROXY_GROUP", "external")];
        all.extend_from_slice(labels);
        AppSpec::new(id, &all)
            .with_service_ports(&[u32::from(sp)])
            .placed(move |_| ("127.0.0.1".to_string(), vec![port]))
    };
    m.add_app(app("/first", &first, &[("HAPROXY_0_VHOST", "first.test")], q), 1);
    tokio::time::sleep(Duration::from_millis(20)).await;
    let wp = web_port.to_string();
    let qs = q.to_string();
    m.add_app(app("/second", &second, &[("HAPROXY_0_VHOST", "second.test"), ("HAPROXY_0_PORT", &qs)], 0), 1);
    tokio::time::sleep(Duration::from_millis(20)).await;
    m.add_app(app("/cfgclash", &cfg_app, &[("HAPROXY_0_VHOST", "cfg.test"), ("HAPROXY_0_PORT", &wp)], 0), 1);
    m.add_app(app("/held", &held_app, &[("HAPROXY_0_VHOST", "held.test")], h), 1);

    let path = dir.path().join("padis.toml");
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    std::fs::write(&path, config(admin, web_port, &m.url(0), "")).expect("config");
    let padis = tokio::task::spawn_blocking(move || {
        let mut p = Padis::start(&path, admin);
        p.wait_ready();
        p
    })
    .await
    .expect("padis starts");
    let s = wait_state(&padis, "clashes reported", |s| {
        let listed = listeners(s);
        listed.contains(&"marathon:/first:0".to_string())
            && rejected(s).iter().any(|r| r["name"] == "marathon:/cfgclash:0")
            && !problems_of(s, "/second").is_empty()
            && s["planes"]["l7"]["bind_failures"]["marathon:/held:0"].is_string()
    })
    .await;
    let web: SocketAddr = format!("127.0.0.1:{web_port}").parse().expect("addr");

    // The config file's port: the app's listener is left out (and the route naming it), its VHOST is served.
    let r = rejected(&s);
    let cfg_listener = r.iter().find(|r| r["name"] == "marathon:/cfgclash:0").expect("rejected listener");
    assert_eq!(
        (cfg_listener["kind"].as_str(), cfg_listener["reason"].as_str()),
        (Some("listener"), Some("port_owned_by_config"))
    );
    assert_eq!(cfg_listener["origin"], "marathon:/cfgclash");
    assert_eq!(l7::get(web, "cfg.test", "/").await.backend(), "cfgclash");
    assert_eq!(l7::get(web, "nothing.test", "/").await.status, 404, "the config's listener is not the app's");

    // An older app's port: the newer app's listener is skipped, the older one serves it; both VHOSTs work.
    let p = problems_of(&s, "/second");
    assert_eq!(p.len(), 1, "{p:#?}");
    assert_eq!(p[0]["effect"], "listener_skipped");
    assert!(p[0]["message"].as_str().unwrap_or("").contains("already used by /first"), "{p:#?}");
    let qa: SocketAddr = format!("127.0.0.1:{q}").parse().expect("addr");
    wait_open(qa).await;
    assert_eq!(l7::get(qa, "second.test", "/").await.backend(), "first");
    assert_eq!(l7::get(web, "second.test", "/").await.backend(), "second");
    assert_eq!(l7::get(web, "first.test", "/").await.backend(), "first");
    assert!(problems_of(&s, "/first").is_empty() && problems_of(&s, "/cfgclash").is_empty());

    // Held by another process: reported (state, metric) while the rest serves; once free, the next snapshot
    // opens it.
    let metrics = padis.metrics();
    assert!(metrics.contains("padis_listener_bind_failed{listener=\"marathon:/held:0\"} 1"), "{metrics}");
    assert!(
        metrics.lines().any(|l| l.starts_with("padis_source_items_rejected")
            && l.contains("reason=\"port_owned_by_config\"")
            && l.ends_with(" 2")),
        "listener and its route: {metrics}"
    );
    assert_eq!(l7::get(web, "held.test", "/").await.backend(), "held");
    drop(holder);
    // Any change publishes a new snapshot, which binds the listeners still missing.
    let nudge = app("/nudge", &first, &[("HAPROXY_0_VHOST", "nudge.test")], 0);
    m.add_app(nudge, 1);
    wait_state(&padis, "held port bound", |s| {
        s["planes"]["l7"]["bind_failures"].as_object().is_some_and(|f| f.is_empty())
    })
    .await;
    let ha: SocketAddr = format!("127.0.0.1:{h}").parse().expect("addr");
    wait_open(ha).await;
    assert_eq!(l7::get(ha, "x.test", "/").await.backend(), "held");
    assert!(!padis.metrics().contains("padis_listener_bind_failed{listener=\"marathon:/held:0\"} 1"));
}

/// Reads one HTTP/1.1 answer's status line on a TLS stream after sending a request.
async fn https_status(info: &mut l7::TlsInfo, host: &str) -> String {
    let req = format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    info.stream.write_all(req.as_bytes()).await.expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), info.stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).lines().next().unwrap_or("").to_string()
}

/// `SSL_CERT` naming a `[[certificate]]`, or giving its file path, makes the service-port listener TLS with that
/// certificate; an unknown certificate leaves the listener out (reported), the app's other items served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssl_cert_by_name_or_path_terminates_tls_unknown_is_reported() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = Pki::new(dir.path());
    let (cert, key) = pki.leaf("svc", &["svc.test"]);
    let backend = Backend::start("tls-app").await;
    let bp = u32::from(backend.addr.port());
    let (t1, t2, t3) = (free_port(), free_port(), free_port());
    let m = MarathonDouble::start().await;
    let cert_path = cert.display().to_string();
    for (id, value, sp) in [("/byname", "svc-cert", t1), ("/bypath", cert_path.as_str(), t2), ("/unknown", "nope", t3)]
    {
        let labels = [("HAPROXY_GROUP", "external"), ("HAPROXY_0_MODE", "http"), ("HAPROXY_0_SSL_CERT", value)];
        let spec = AppSpec::new(id, &labels)
            .with_service_ports(&[u32::from(sp)])
            .placed(move |_| ("127.0.0.1".into(), vec![bp]));
        m.add_app(spec, 1);
    }
    let extra =
        format!("\n[[certificate]]\nname = \"svc-cert\"\ncert = \"{}\"\nkey = \"{}\"\n", cert.display(), key.display());
    let (padis, _) = start_padis(&m, dir.path(), &extra).await;
    let s = wait_state(&padis, "TLS listeners", |s| {
        let l = listeners(s);
        l.contains(&"marathon:/byname:0".to_string())
            && l.contains(&"marathon:/bypath:0".to_string())
            && rejected(s).iter().any(|r| r["name"] == "marathon:/unknown:0")
    })
    .await;
    let leaf = l7::pem_der(&cert);
    for sp in [t1, t2] {
        let addr: SocketAddr = format!("127.0.0.1:{sp}").parse().expect("addr");
        wait_open(addr).await;
        let mut info =
            l7::tls_connect(addr, pki.client_config(&["http/1.1"]), "svc.test").await.expect("TLS handshake");
        assert_eq!(info.leaf_der, leaf, "the named certificate is served");
        let status = https_status(&mut info, "svc.test").await;
        assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    }
    let r = rejected(&s);
    let bad = r.iter().find(|r| r["name"] == "marathon:/unknown:0").expect("rejected");
    assert_eq!(bad["reason"], "missing_reference", "{bad:#}");
    assert!(bad["message"].as_str().unwrap_or("").contains("no certificate named `nope`"), "{bad:#}");
    let t3a: SocketAddr = format!("127.0.0.1:{t3}").parse().expect("addr");
    assert!(TcpStream::connect(t3a).await.is_err(), "never served in plaintext");
}

/// An L4 VIP on an app whose tasks use random host ports is refused for that app (direct server return keeps the
/// port: tasks of one agent would collapse into one backend), with a problem pointing at the TCP mode; with the
/// host port pinned to the VIP's port (`requirePorts`) it is published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vip_on_random_host_ports_is_refused_pinned_one_published() {
    let m = MarathonDouble::start().await;
    m.add_app(AppSpec::new("/pg", &[("HAPROXY_GROUP", "external"), ("PADIS_0_VIP", "10.99.0.1:5432")]), 3);
    m.add_app(
        AppSpec::new("/pinned", &[("HAPROXY_GROUP", "external"), ("PADIS_0_VIP", "10.99.0.2:5433")])
            .with_service_ports(&[5433])
            .requiring_ports()
            .placed(|seq| (format!("127.0.9.{seq}"), vec![5433])),
        2,
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let extra = "service_ports = false\n";
    let (padis, _) = start_padis(&m, dir.path(), extra).await;
    let s = wait_state(&padis, "VIP problem", |s| !problems_of(s, "/pg").is_empty()).await;
    let p = problems_of(&s, "/pg");
    assert_eq!((p[0]["effect"].as_str(), p[0]["label"].as_str()), (Some("vip_skipped"), Some("PADIS_0_VIP")), "{p:#?}");
    let msg = p[0]["message"].as_str().unwrap_or("");
    assert!(msg.contains("tasks of one agent would be one backend") && msg.contains("MODE = tcp"), "{msg}");
    let vips = s["snapshot"]["state"]["vip"].as_array().cloned().unwrap_or_default();
    let names: Vec<&str> = vips.iter().filter_map(|v| v["name"].as_str()).collect();
    assert_eq!(names, ["marathon-pinned-0"], "{vips:#?}");
    assert_eq!(vips[0]["backend"].as_array().map(Vec::len), Some(2));
    let metrics = padis.metrics();
    assert!(metrics.contains("padis_marathon_labels_unsupported{label=\"VIP on host ports\"} 1"), "{metrics}");
}

/// `BACKEND_HEALTHCHECK_PORT_INDEX=1`: port 0's backends are checked on each task's port 1 (HAProxy `check port`);
/// the task whose port 1 does not answer takes no request although its port 0 does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthcheck_port_index_probes_the_other_port() {
    let (good, bad) = (Backend::start("good").await, Backend::start("bad").await);
    let health = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let live = u32::from(health.local_addr().expect("addr").port());
    let dead = {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        u32::from(l.local_addr().expect("addr").port())
    };
    tokio::spawn(async move {
        while let Ok((s, _)) = health.accept().await {
            drop(s);
        }
    });
    let (g, b) = (u32::from(good.addr.port()), u32::from(bad.addr.port()));
    let m = MarathonDouble::start().await;
    let spec = AppSpec::new(
        "/hc",
        &[
            ("HAPROXY_GROUP", "external"),
            ("HAPROXY_0_VHOST", "hc.test"),
            ("HAPROXY_0_BACKEND_HEALTHCHECK_PORT_INDEX", "1"),
        ],
    )
    .with_ports(&[("http", "tcp"), ("health", "tcp")])
    .placed(move |seq| ("127.0.0.1".to_string(), if seq == 1 { vec![g, live] } else { vec![b, dead] }));
    m.add_app(spec, 2);
    let dir = tempfile::tempdir().expect("tempdir");
    let (padis, web) = start_padis(&m, dir.path(), "").await;
    let s = wait_state(&padis, "the bad task checked down on port 1", |s| {
        let report = s["planes"]["health"].as_array().cloned().unwrap_or_default();
        let usable = |port: u32| {
            report
                .iter()
                .find(|h| h["group"] == "marathon:/hc:0" && h["backend"] == format!("127.0.0.1:{port}"))
                .map(|h| h["usable"] == true)
        };
        usable(g) == Some(true) && usable(b) == Some(false)
    })
    .await;
    let group =
        s["snapshot"]["state"]["group"].as_array().unwrap().iter().find(|x| x["name"] == "marathon:/hc:0").cloned();
    let group = group.expect("group");
    assert_eq!(group["health"]["kind"], "tcp", "no Marathon check on port 1: a TCP connect");
    let check_ports: Vec<u64> =
        group["backend"].as_array().unwrap().iter().filter_map(|b| b["check_port"].as_u64()).collect();
    assert_eq!(check_ports, [u64::from(live), u64::from(dead)]);
    let web: SocketAddr = format!("127.0.0.1:{web}").parse().expect("addr");
    for i in 0..20 {
        let a = l7::get(web, "hc.test", &format!("/{i}")).await;
        assert_eq!((a.status, a.backend()), (200, "good".to_string()));
    }
}
