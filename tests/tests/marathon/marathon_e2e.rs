//! The daemon following Marathon: an app scales 10 -> 20 -> 5 instances in the Marathon double while keep-alive
//! clients send requests through the L7 listener and DNS is queried with kdig. Zero failed requests (the tasks
//! killed by the scale-down really stop answering shortly after); `/v1/state` and DNS SRV answers converge to
//! Marathon's state. And Marathon down for a minute: the last good state keeps serving (L7 and DNS), staleness is
//! reported, and Padis converges by itself when Marathon returns.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use padis_tests::l7::{Backend, Load};
use padis_tests::marathon::{AppSpec, MarathonDouble};
use padis_tests::process::{free_port, Padis};

const APP: &str = "/web";
const GROUP: &str = "marathon:/web:0";

fn config(admin: SocketAddr, web: u16, dns: u16, marathon: &str, state_dir: &std::path::Path) -> String {
    format!(
        r#"[admin]
listen = "{admin}"

[log]
level = "info"
access_log = false

[[listener]]
name = "web"
bind = "127.0.0.1:{web}"

[dns]
listen = ["127.0.0.1:{dns}"]
state_dir = "{state}"

[[dns.zone]]
name = "apps.test"
generated = true
ttl = "1s"
ns = [{{ name = "ns1.apps.test", addrs = ["127.0.0.1"] }}]

[marathon]
urls = ["{marathon}"]
group = "external"
zone = "apps.test"
drain_time = "1s"
backoff_min = "50ms"
backoff_max = "500ms"
"#,
        state = state_dir.display()
    )
}

/// (serving, draining) backends of the app's group in `/v1/state`.
fn backends(state: &serde_json::Value) -> (usize, usize) {
    // DesiredState serializes as the config file spells it: `group`, `backend`.
    let st = &state["snapshot"]["state"];
    let groups = st["group"].as_array().or_else(|| st["groups"].as_array()).cloned().unwrap_or_default();
    let Some(g) = groups.iter().find(|g| g["name"] == GROUP) else { return (0, 0) };
    let all = g["backend"].as_array().or_else(|| g["backends"].as_array()).cloned().unwrap_or_default();
    let draining = all.iter().filter(|b| b["draining"] == true).count();
    (all.len() - draining, draining)
}

/// SRV records of `_http._tcp.web.apps.test` (one per serving task), by kdig.
async fn srv_count(dns: u16) -> usize {
    let out = tokio::process::Command::new("kdig")
        .args([
            "@127.0.0.1",
            "-p",
            &dns.to_string(),
            "+short",
            "+timeout=2",
            "+retry=1",
            "SRV",
            "_http._tcp.web.apps.test",
        ])
        .output()
        .await
        .expect("kdig runs (tests/setup installs knot-dnsutils)");
    String::from_utf8_lossy(&out.stdout).lines().filter(|l| !l.trim().is_empty()).count()
}

async fn wait_srv(dns: u16, want: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = 0;
    while Instant::now() < deadline {
        last = srv_count(dns).await;
        if last == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("DNS never converged to {want} SRV records (last {last})");
}

async fn wait_backends(padis: &Padis, want: (usize, usize)) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let admin = padis.admin;
        let s = tokio::task::spawn_blocking(move || padis_tests::process::http(admin, "GET", "/v1/state", None, &[]))
            .await
            .expect("join")
            .ok()
            .and_then(|(_, b)| serde_json::from_str::<serde_json::Value>(&b).ok())
            .unwrap_or_default();
        if backends(&s) == want {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "backends never became {want:?}: {:?}\ngroups: {:#}\nsources: {:#}\nlog:\n{}",
            backends(&s),
            s["snapshot"]["state"]["group"],
            s["sources"],
            padis.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Starts `padis` on a fresh config following `m`; returns it with its (web, dns) ports.
async fn start_padis(m: &MarathonDouble, dir: &std::path::Path) -> (Padis, u16, u16) {
    let path = dir.join("padis.toml");
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let (web, dns) = (free_port(), free_port());
    std::fs::create_dir_all(dir.join("dns")).expect("dns dir");
    std::fs::write(&path, config(admin, web, dns, &m.url(0), &dir.join("dns"))).expect("config");
    let padis = tokio::task::spawn_blocking(move || {
        let mut p = Padis::start(&path, admin);
        p.wait_ready();
        p
    })
    .await
    .expect("padis starts");
    (padis, web, dns)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_10_20_5_under_load_with_dns_following() {
    let mut pool = Vec::new();
    for i in 0..20 {
        pool.push(Backend::start(&format!("task{i}")).await);
    }
    let ports: Vec<u32> = pool.iter().map(|b| u32::from(b.addr.port())).collect();
    let m = MarathonDouble::start().await;
    // Task n (1-based) runs on backend n-1: scale-up adds tasks 11..20, the scale-down kills 20..6 (youngest).
    let spec = AppSpec::new(APP, &[("PADIS_GROUP", "external"), ("PADIS_0_VHOST", "web.test")])
        .with_health_check()
        .placed(move |seq| ("127.0.0.1".to_string(), vec![ports[((seq - 1) % 20) as usize]]));
    m.add_app(spec, 10);

    let dir = tempfile::tempdir().expect("tempdir");
    let (padis, web, dns) = start_padis(&m, dir.path()).await;
    wait_backends(&padis, (10, 0)).await;
    wait_srv(dns, 10).await;

    // Bounded load: 4 keep-alive clients, at most 60 s / 50,000 requests each.
    let proxy: SocketAddr = format!("127.0.0.1:{web}").parse().expect("addr");
    let load = Load::start(proxy, "web.test", 4, Duration::from_secs(60));
    tokio::time::sleep(Duration::from_millis(500)).await;

    // 10 -> 20: the new tasks take traffic, DNS lists them.
    m.scale(APP, 20);
    wait_backends(&padis, (20, 0)).await;
    wait_srv(dns, 20).await;
    let hits: Vec<usize> = pool[10..].iter().map(Backend::hits).collect();
    tokio::time::sleep(Duration::from_millis(800)).await;
    let fresh = pool[10..].iter().zip(&hits).filter(|(b, h)| b.hits() > **h).count();
    assert!(fresh >= 8, "new tasks get no traffic: {fresh} of 10");

    // 20 -> 5: killed tasks drain, then really stop answering (their process exits) 300 ms later.
    m.scale(APP, 5);
    let t0 = Instant::now();
    wait_backends(&padis, (5, 15)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    for b in &pool[5..] {
        b.kill();
    }
    wait_srv(dns, 5).await;
    wait_backends(&padis, (5, 0)).await;
    assert!(t0.elapsed() >= Duration::from_millis(900), "drained tasks left before drain_time");
    let before: Vec<usize> = pool[..5].iter().map(Backend::hits).collect();
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(pool[..5].iter().zip(&before).all(|(b, h)| b.hits() > *h), "remaining tasks must serve");

    let (ok, failures) = load.finish().await;
    assert!(failures.is_empty(), "{} failed requests: {:?}", failures.len(), &failures[..failures.len().min(10)]);
    assert!(ok > 500, "too little load: {ok}");

    // /v1/state reports the source as fresh, without problems.
    let s = padis.state();
    assert_eq!(s["sources"]["marathon"]["status"]["ok"], true, "{:#}", s["sources"]);
    assert_eq!(s["sources"]["marathon"]["problems"], serde_json::json!([]));
}

/// The metric's value in `/metrics` text (0 when absent).
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn marathon_down_for_a_minute_keeps_serving_the_last_good_state() {
    let mut pool = Vec::new();
    for i in 0..3 {
        pool.push(Backend::start(&format!("task{i}")).await);
    }
    let ports: Vec<u32> = pool.iter().map(|b| u32::from(b.addr.port())).collect();
    let m = MarathonDouble::start().await;
    let spec = AppSpec::new(APP, &[("PADIS_GROUP", "external"), ("PADIS_0_VHOST", "web.test")])
        .with_health_check()
        .placed(move |seq| ("127.0.0.1".to_string(), vec![ports[((seq - 1) % 3) as usize]]));
    m.add_app(spec, 3);
    let dir = tempfile::tempdir().expect("tempdir");
    let (padis, web, dns) = start_padis(&m, dir.path()).await;
    wait_backends(&padis, (3, 0)).await;
    wait_srv(dns, 3).await;
    let load = Load::start(format!("127.0.0.1:{web}").parse().expect("addr"), "web.test", 2, Duration::from_secs(120));

    // Marathon goes away (every instance, streams cut) for a minute.
    m.down_all();
    let t0 = Instant::now();
    let mut checks = 0;
    while t0.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_secs(5)).await;
        let s = padis.state();
        assert_eq!(backends(&s), (3, 0), "the last good state must stay in force");
        assert_eq!(srv_count(dns).await, 3, "DNS must keep answering the last good state");
        if t0.elapsed() > Duration::from_secs(15) {
            assert_eq!(
                s["sources"]["marathon"]["status"]["ok"],
                false,
                "{:#}\nlog:\n{}",
                s["sources"],
                padis.log_text()
            );
        }
        checks += 1;
    }
    assert!(checks >= 10);
    let stale = metric(&padis.metrics(), "padis_marathon_stale_seconds");
    assert!(stale >= 50.0, "staleness not reported: {stale}");

    // It comes back with a changed world (nobody saw the scale-down happen): Padis converges on its own.
    m.quietly(|w| {
        w.scale(APP, 2);
    });
    m.up_all().await;
    wait_srv(dns, 2).await;
    wait_backends(&padis, (2, 0)).await;
    let (ok, failures) = load.finish().await;
    assert!(failures.is_empty(), "{} failed requests: {:?}", failures.len(), &failures[..failures.len().min(10)]);
    assert!(ok > 200, "too little load: {ok}");
    let s = padis.state();
    assert_eq!(s["sources"]["marathon"]["status"]["ok"], true, "{:#}", s["sources"]);
    assert!(metric(&padis.metrics(), "padis_marathon_stale_seconds") < 5.0);
}
