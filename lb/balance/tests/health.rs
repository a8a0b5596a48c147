//! Health checking through real sockets on 127.0.0.1: active HTTP/TCP checks with rise/fall, passive ejection
//! with back-off, state kept across snapshot rebuilds, draining, per-owner target sets, metrics.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::HeaderMap;
use padis_balance::{BackendHealth, Balancers, HealthRegistry, HealthTarget, SelectCtx, TargetKey};
use padis_model::{HealthCheck, HealthKind, PassiveHealth, Snapshot};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// A tiny HTTP/1.1 server whose status and body the test changes; records requests. Stops on drop.
struct Server {
    addr: SocketAddr,
    status: Arc<AtomicU16>,
    body: Arc<Mutex<String>>,
    requests: Arc<AtomicUsize>,
    last_head: Arc<Mutex<String>>,
    task: JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Server {
    async fn start(body: &str) -> Server {
        Server::start_on(TcpListener::bind("127.0.0.1:0").await.unwrap(), body, true).await
    }

    /// `respond = false`: accept and read, never answer (for timeouts).
    async fn start_on(listener: TcpListener, body: &str, respond: bool) -> Server {
        let addr = listener.local_addr().unwrap();
        let status = Arc::new(AtomicU16::new(200));
        let body = Arc::new(Mutex::new(body.to_string()));
        let requests = Arc::new(AtomicUsize::new(0));
        let last_head = Arc::new(Mutex::new(String::new()));
        let (s, b, r, l) = (status.clone(), body.clone(), requests.clone(), last_head.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut sock, _)) = listener.accept().await else {
                    return;
                };
                let (s, b, r, l) = (s.clone(), b.clone(), r.clone(), l.clone());
                tokio::spawn(async move {
                    r.fetch_add(1, SeqCst);
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 1024];
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match sock.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    *l.lock().unwrap() = String::from_utf8_lossy(&buf).into_owned();
                    if !respond {
                        tokio::time::sleep(Duration::from_secs(5)).await;
                        return;
                    }
                    let body = b.lock().unwrap().clone();
                    let resp = format!(
                        "HTTP/1.1 {} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
                        s.load(SeqCst),
                        body.len(),
                        body
                    );
                    let _ = sock.write_all(resp.as_bytes()).await;
                });
            }
        });
        Server { addr, status, body, requests, last_head, task }
    }
}

async fn wait_until(what: &str, limit: Duration, cond: impl Fn() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn snapshot(text: &str, generation: u64) -> Snapshot {
    let valid = padis_model::parse_config(text, "test.toml", Path::new(".")).unwrap_or_else(|e| panic!("{e}"));
    Snapshot::new(valid, generation, Vec::new())
}

fn group(name: &str, extra: &str, backends: &[String]) -> String {
    let mut s = format!("[[group]]\nname = \"{name}\"\n{extra}\n");
    for b in backends {
        s += &format!("[[group.backend]]\naddr = \"{b}\"\n");
    }
    s
}

/// The value of a sample in the registry's text exposition, e.g. `metric(&r, "padis_backend_up", &["group=\"g\""])`.
fn metric(registry: &prometheus::Registry, name: &str, labels: &[&str]) -> Option<f64> {
    let text = prometheus::TextEncoder::new().encode_to_string(&registry.gather()).unwrap();
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .find(|l| labels.iter().all(|lab| l.contains(lab)))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

fn http_check(extra: &str) -> String {
    format!(
        "[group.health]\nkind = \"http\"\npath = \"/health\"\nhost = \"app.internal\"\nexpect_body = \"OK-7731\"\n\
         interval = \"100ms\"\ntimeout = \"100ms\"\nrise = 2\nfall = 3\n{extra}"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_check_follows_expected_string_and_status() {
    let server = Server::start("status: OK-7731 all good").await;
    let registry = prometheus::Registry::new();
    let health = HealthRegistry::new(&registry).unwrap();
    let snap = snapshot(&group("web", &http_check(""), &[server.addr.to_string()]), 1);
    let bal = Balancers::build(&snap, &health, None);
    let g = bal.group("web").unwrap().clone();
    let backend = g.backends()[0].clone();
    let b_label = format!("backend=\"{}\"", server.addr);
    wait_until("first checks", Duration::from_secs(3), || server.requests.load(SeqCst) >= 2).await;
    let head = server.last_head.lock().unwrap().clone();
    assert!(head.starts_with("GET /health HTTP/1.1\r\n"), "{head}");
    assert!(head.to_ascii_lowercase().contains("host: app.internal\r\n"), "{head}");
    assert!(backend.is_usable());
    assert_eq!(metric(&registry, "padis_backend_up", &[&b_label]), Some(1.0));

    // The page stops returning the known string: down after `fall` failed checks, never picked.
    *server.body.lock().unwrap() = "maintenance".into();
    wait_until("down after fall", Duration::from_secs(3), || !backend.health.is_usable()).await;
    let failures = metric(&registry, "padis_health_checks_total", &[&b_label, "result=\"failure\""]).unwrap();
    assert!(failures >= 3.0, "down only after 3 failures, saw {failures}");
    assert_eq!(metric(&registry, "padis_backend_up", &[&b_label]), Some(0.0));
    let h = HeaderMap::new();
    assert!(g.select(&SelectCtx { client_ip: "10.0.0.1".parse().unwrap(), headers: &h }, &[]).is_none());
    let report = health.report();
    assert!(!report[0].up && report[0].last_check_error.as_deref().unwrap().contains("expected string"));

    // Back after `rise` good checks.
    *server.body.lock().unwrap() = "OK-7731".into();
    wait_until("up after rise", Duration::from_secs(3), || backend.health.is_usable()).await;
    assert!(metric(&registry, "padis_health_checks_total", &[&b_label, "result=\"success\""]).unwrap() >= 2.0);

    // A wrong status with the right body is down too.
    server.status.store(503, SeqCst);
    wait_until("down on 503", Duration::from_secs(3), || !backend.health.is_usable()).await;
    assert!(health.report()[0].last_check_error.as_deref().unwrap().contains("503"));
}

/// A TCP connect check every 20 ms (200 ms timeout), up after `rise` successes and down after `fall` failures.
fn tcp_check(rise: u32, fall: u32) -> HealthCheck {
    HealthCheck {
        kind: HealthKind::Tcp,
        path: "/".into(),
        host: None,
        expect_status: None,
        expect_body: None,
        interval: Duration::from_millis(20),
        timeout: Duration::from_millis(200),
        rise,
        fall,
        port: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_check_down_when_port_closes_and_up_when_it_reopens() {
    let server = Server::start("").await;
    let addr = server.addr;
    let health = HealthRegistry::new(&prometheus::Registry::new()).unwrap();
    let check = tcp_check(1, 2);
    let key = TargetKey { group: "vip-a".into(), addr };
    health.sync("l4", vec![HealthTarget { key: key.clone(), check: Some(check), passive: None }]);
    let h = health.get(&key).unwrap();
    let mut changes = health.changes();
    changes.mark_unchanged();
    wait_until("checks connect", Duration::from_secs(3), || server.requests.load(SeqCst) >= 2).await;
    assert!(h.is_usable());
    drop(server); // closes the listening socket
    wait_until("down when closed", Duration::from_secs(3), || !h.is_usable()).await;
    assert!(changes.has_changed().unwrap(), "subscribers learn about the change");
    assert!(health.report()[0].last_check_error.as_deref().unwrap().contains("connect"));
    let reopened = Server::start_on(TcpListener::bind(addr).await.unwrap(), "", true).await;
    wait_until("up when reopened", Duration::from_secs(3), || h.is_usable()).await;
    wait_until("reopened port checked", Duration::from_secs(3), || reopened.requests.load(SeqCst) >= 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_check_times_out_on_silent_backend() {
    let silent = Server::start_on(TcpListener::bind("127.0.0.1:0").await.unwrap(), "", false).await;
    let registry = prometheus::Registry::new();
    let health = HealthRegistry::new(&registry).unwrap();
    let text = group(
        "slow",
        "[group.health]\ninterval = \"30ms\"\ntimeout = \"30ms\"\nfall = 2\nrise = 1",
        &[silent.addr.to_string()],
    );
    let bal = Balancers::build(&snapshot(&text, 1), &health, None);
    let b = bal.group("slow").unwrap().backends()[0].clone();
    wait_until("down on timeouts", Duration::from_secs(3), || !b.health.is_usable()).await;
    let label = format!("backend=\"{}\"", silent.addr);
    assert!(metric(&registry, "padis_health_checks_total", &[&label, "result=\"timeout\""]).unwrap() >= 2.0);
}

#[test]
fn passive_ejection_with_backoff() {
    let passive = PassiveHealth {
        consecutive_failures: 3,
        base_ejection: Duration::from_millis(80),
        max_ejection: Duration::from_millis(200),
    };
    let key = TargetKey { group: "g".into(), addr: "127.0.0.1:9".parse().unwrap() };
    let h = BackendHealth::new(key, Some(&passive));
    h.report_failure();
    h.report_failure();
    h.report_success(); // a success resets the count
    h.report_failure();
    h.report_failure();
    assert!(h.is_usable(), "2 failures in a row do not eject");
    h.report_failure();
    assert!(!h.is_usable(), "3 failures in a row eject");
    let first = h.ejected_for();
    assert!(first > Duration::ZERO && first <= Duration::from_millis(80), "{first:?}");
    for _ in 0..10 {
        h.report_failure(); // failures of requests sent before do not extend it
    }
    assert!(h.ejected_for() <= first);
    std::thread::sleep(first + Duration::from_millis(10));
    assert!(h.is_usable(), "tried again after the ejection time");
    h.report_failure(); // the trial fails: ejected again at once, twice as long
    assert!(!h.is_usable());
    let second = h.ejected_for();
    assert!(second > Duration::from_millis(80) && second <= Duration::from_millis(160), "{second:?}");
    std::thread::sleep(second + Duration::from_millis(10));
    h.report_failure();
    let third = h.ejected_for();
    assert!(third > Duration::from_millis(160) && third <= Duration::from_millis(200), "capped: {third:?}");
    assert_eq!(h.ejections(), 3);
    std::thread::sleep(third + Duration::from_millis(10));
    h.report_success(); // the trial succeeds: back in for good
    h.report_failure();
    h.report_failure();
    assert!(h.is_usable(), "after a success it takes 3 failures again");
}

#[test]
fn ejection_series_restarts_after_a_quiet_period() {
    let passive = PassiveHealth {
        consecutive_failures: 2,
        base_ejection: Duration::from_millis(50),
        max_ejection: Duration::from_millis(100),
    };
    let key = TargetKey { group: "g".into(), addr: "127.0.0.1:9".parse().unwrap() };
    let h = BackendHealth::new(key, Some(&passive));
    h.report_failure();
    h.report_failure();
    assert!(!h.is_usable());
    // The ejection ends, then no traffic for max_ejection: the next failure starts afresh.
    std::thread::sleep(Duration::from_millis(50 + 110));
    h.report_failure();
    assert!(h.is_usable(), "no probation long after the ejection");
    h.report_failure();
    let d = h.ejected_for();
    assert!(d > Duration::ZERO && d <= Duration::from_millis(50), "back to the base time: {d:?}");
}

#[test]
fn ejection_series_steps_down_while_the_backend_serves() {
    let passive = PassiveHealth {
        consecutive_failures: 1,
        base_ejection: Duration::from_millis(100),
        max_ejection: Duration::from_secs(10),
    };
    let key = TargetKey { group: "g".into(), addr: "127.0.0.1:9".parse().unwrap() };
    let ejected_twice = || {
        let h = BackendHealth::new(key.clone(), Some(&passive));
        h.report_failure();
        std::thread::sleep(Duration::from_millis(110));
        h.report_failure(); // the trial fails: the second step of the series (200 ms)
        let d = h.ejected_for();
        assert!(d > Duration::from_millis(100), "{d:?}");
        std::thread::sleep(d + Duration::from_millis(10));
        h.report_success();
        h
    };
    // Right after the series' second ejection, the next one is its third (400 ms).
    let h = ejected_twice();
    h.report_failure();
    let d = h.ejected_for();
    assert!(d > Duration::from_millis(200) && d <= Duration::from_millis(400), "third step: {d:?}");
    // One base time served: one step down (the next ejection is the second step again).
    let h = ejected_twice();
    std::thread::sleep(Duration::from_millis(120));
    h.report_failure();
    let d = h.ejected_for();
    assert!(d > Duration::from_millis(100) && d <= Duration::from_millis(200), "one step down: {d:?}");
    // Two base times served: back to the first step.
    let h = ejected_twice();
    std::thread::sleep(Duration::from_millis(230));
    h.report_failure();
    let d = h.ejected_for();
    assert!(d > Duration::ZERO && d <= Duration::from_millis(100), "two steps down: {d:?}");
}

/// A backend that the active check saw go down and come back is not kept out by a passive ejection from while it
/// was down (a restarted task): it is back with the check's rise, on probation (its first failure ejects it again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_rise_ends_a_passive_ejection_on_probation() {
    let server = Server::start("").await;
    let addr = server.addr;
    let health = HealthRegistry::new(&prometheus::Registry::new()).unwrap();
    let check = tcp_check(2, 2);
    let passive = PassiveHealth {
        consecutive_failures: 2,
        base_ejection: Duration::from_secs(60),
        max_ejection: Duration::from_secs(600),
    };
    let key = TargetKey { group: "g".into(), addr };
    health.sync("l7", vec![HealthTarget { key: key.clone(), check: Some(check), passive: Some(passive) }]);
    let h = health.get(&key).unwrap();
    wait_until("checks connect", Duration::from_secs(3), || server.requests.load(SeqCst) >= 2).await;
    drop(server);
    h.report_failure();
    h.report_failure();
    assert!(h.ejected_for() > Duration::from_secs(50), "ejected for the base time");
    wait_until("down when closed", Duration::from_secs(3), || !h.is_up()).await;
    let _back = Server::start_on(TcpListener::bind(addr).await.unwrap(), "", true).await;
    wait_until("usable when the check rises", Duration::from_secs(3), || h.is_usable()).await;
    assert_eq!(h.ejected_for(), Duration::ZERO);
    h.report_failure();
    assert!(!h.is_usable(), "on probation: one failure ejects it again");
    assert!(h.ejected_for() > Duration::from_secs(110), "the series' next step: {:?}", h.ejected_for());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_state_survives_rebuilds() {
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap() // closed when `l` drops here
    };
    let live = Server::start("").await;
    let live2 = Server::start("").await;
    let registry = prometheus::Registry::new();
    let health = HealthRegistry::new(&registry).unwrap();
    let checks = "[group.health]\nkind = \"tcp\"\ninterval = \"100ms\"\ntimeout = \"100ms\"\nfall = 1\nrise = 5\n\
                  [group.passive]\nconsecutive_failures = 2\nbase_ejection = \"60s\"\nmax_ejection = \"60s\"";
    let three = [closed.to_string(), live.addr.to_string(), live2.addr.to_string()];
    let gen1 = Balancers::build(&snapshot(&group("app", checks, &three), 1), &health, None);
    let g1 = gen1.group("app").unwrap().clone();
    wait_until("closed port down", Duration::from_secs(3), || !g1.backends()[0].health.is_usable()).await;
    g1.backends()[1].health.report_failure();
    g1.backends()[1].health.report_failure();
    assert!(!g1.backends()[1].health.is_usable(), "ejected");

    // Same config: the very same balancer (round-robin state, tables) is reused.
    let same = Balancers::build(&snapshot(&group("app", checks, &three), 2), &health, Some(&gen1));
    assert!(Arc::ptr_eq(same.group("app").unwrap(), &g1));

    // Changed config (a timeout, a new backend): state of the backends that stay is kept.
    let extra = Server::start("").await;
    let four = [three[0].clone(), three[1].clone(), three[2].clone(), extra.addr.to_string()];
    let changed = format!("connect_timeout = \"1s\"\n{checks}");
    let gen2 = Balancers::build(&snapshot(&group("app", &changed, &four), 3), &health, Some(&same));
    let g2 = gen2.group("app").unwrap();
    assert!(!Arc::ptr_eq(g2, &g1));
    assert!(!g2.backends()[0].health.is_usable(), "down state kept");
    assert!(!g2.backends()[1].health.is_usable(), "ejection kept");
    assert!(Arc::ptr_eq(&g2.backends()[1].health, &g1.backends()[1].health));
    assert!(g2.backends()[2].health.is_usable() && g2.backends()[3].health.is_usable());
    let hm = HeaderMap::new();
    for _ in 0..20 {
        let p = g2.select(&SelectCtx { client_ip: "10.0.0.1".parse().unwrap(), headers: &hm }, &[]).unwrap();
        assert!(p.backend.addr == live2.addr || p.backend.addr == extra.addr);
    }

    // A removed backend's target, checker and metric series go away.
    let gen3 = Balancers::build(&snapshot(&group("app", &changed, &four[1..]), 4), &health, Some(&gen2));
    assert_eq!(gen3.group("app").unwrap().backends().len(), 3);
    assert!(health.get(&TargetKey { group: "app".into(), addr: closed }).is_none());
    assert_eq!(health.report().len(), 3);
    assert_eq!(metric(&registry, "padis_backend_up", &[&format!("backend=\"{closed}\"")]), None);
    assert_eq!(metric(&registry, "padis_backend_ejections_total", &[&format!("backend=\"{}\"", live.addr)]), Some(1.0));
}

#[test]
fn draining_backend_is_not_picked_but_in_flight_finishes() {
    let health = HealthRegistry::new(&prometheus::Registry::new()).unwrap();
    let a = "127.0.0.1:2001";
    let b = "127.0.0.1:2002";
    let gen1 = Balancers::build(&snapshot(&group("g", "", &[a.into(), b.into()]), 1), &health, None);
    let entry_a = gen1.group("g").unwrap().backends()[0].clone();
    let guard = entry_a.begin();
    let drained = format!(
        "[[group]]\nname = \"g\"\n[[group.backend]]\naddr = \"{a}\"\ndraining = true\n[[group.backend]]\naddr = \"{b}\"\n"
    );
    let gen2 = Balancers::build(&snapshot(&drained, 2), &health, Some(&gen1));
    drop(gen1);
    let g2 = gen2.group("g").unwrap();
    assert_eq!(g2.backends()[0].in_flight(), 1, "the in-flight count follows the backend into the new snapshot");
    let hm = HeaderMap::new();
    for _ in 0..50 {
        let p = g2.select(&SelectCtx { client_ip: "10.0.0.1".parse().unwrap(), headers: &hm }, &[]).unwrap();
        assert_eq!(p.backend.addr.to_string(), b);
    }
    assert_eq!(entry_a.in_flight(), 1, "the old entry is still alive for the request holding it");
    drop(guard);
    assert_eq!(g2.backends()[0].in_flight(), 0);
    // Weight 0 drains too.
    let zero = format!("[[group]]\nname = \"g\"\n[[group.backend]]\naddr = \"{a}\"\nweight = 0\n");
    let gen3 = Balancers::build(&snapshot(&zero, 3), &health, Some(&gen2));
    assert!(gen3
        .group("g")
        .unwrap()
        .select(&SelectCtx { client_ip: "10.0.0.1".parse().unwrap(), headers: &hm }, &[])
        .is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owners_sync_independently_and_checkers_stop() {
    let server = Server::start("").await;
    let registry = prometheus::Registry::new();
    let health = HealthRegistry::new(&registry).unwrap();
    let key = TargetKey { group: "shared".into(), addr: server.addr };
    let check = HealthCheck {
        kind: HealthKind::Tcp,
        path: "/".into(),
        host: None,
        expect_status: None,
        expect_body: None,
        interval: Duration::from_millis(10),
        timeout: Duration::from_millis(100),
        rise: 1,
        fall: 1,
        port: None,
    };
    let t = HealthTarget { key: key.clone(), check: Some(check), passive: Some(PassiveHealth::default()) };
    health.sync("l4", vec![t.clone()]);
    health.sync("l7", vec![t.clone()]);
    let h = health.get(&key).unwrap();
    assert_eq!(health.report()[0].owners, ["l4", "l7"]);
    health.sync("l7", vec![]);
    assert!(Arc::ptr_eq(&health.get(&key).unwrap(), &h), "still owned by l4");
    wait_until("checks run", Duration::from_secs(3), || server.requests.load(SeqCst) >= 3).await;
    health.sync("l4", vec![]);
    assert!(health.get(&key).is_none());
    tokio::time::sleep(Duration::from_millis(30)).await;
    let after = server.requests.load(SeqCst);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(server.requests.load(SeqCst), after, "the checker stopped with its target");
    let json = serde_json::to_string(&health.report()).unwrap();
    assert_eq!(json, "[]");
    // A second registry cannot register the same metrics twice.
    assert!(HealthRegistry::new(&registry).is_err());
}

#[test]
fn report_is_serializable() {
    let health = HealthRegistry::new(&prometheus::Registry::new()).unwrap();
    let key = TargetKey { group: "g".into(), addr: "127.0.0.1:7".parse().unwrap() };
    health.sync("l7", vec![HealthTarget { key, check: None, passive: None }]);
    let v: serde_json::Value = serde_json::to_value(health.report()).unwrap();
    assert_eq!(v[0]["group"], "g");
    assert_eq!(v[0]["backend"], "127.0.0.1:7");
    assert_eq!(v[0]["usable"], true);
    assert_eq!(v[0]["check"], serde_json::Value::Null);
}
