//! `/metrics` of a running daemon with real traffic: every family's type matches its name (counters end in
//! `_total`, nothing else does), `padis_config_last_reload_successful` follows reloads, and
//! `[admin] metrics_backend_label = false` sums the per-backend series (same totals, no `backend` label),
//! applied by a reload.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use padis_tests::l7::Backend;
use padis_tests::process::{free_port, http, Padis};

fn config(admin: SocketAddr, web: u16, backends: &[&Backend], admin_extra: &str) -> String {
    let mut c = format!(
        "[admin]\nlisten = \"{admin}\"\n{admin_extra}\n\n[[listener]]\nname = \"web\"\nbind = \"127.0.0.1:{web}\"\n\n\
         [[group]]\nname = \"app\"\n[group.health]\npath = \"/\"\ninterval = \"200ms\"\ntimeout = \"150ms\"\n\
         rise = 1\nfall = 1\n"
    );
    for b in backends {
        c.push_str(&format!("[[group.backend]]\naddr = \"{}\"\n", b.addr));
    }
    c.push_str("\n[[route]]\nname = \"all\"\ngroup = \"app\"\n");
    c
}

/// `(name, labels) -> value` of every sample, and `name -> type` of every family.
type Scrape = (BTreeMap<(String, String), f64>, BTreeMap<String, String>);

fn scrape(p: &Padis) -> Scrape {
    let text = p.metrics();
    let mut samples = BTreeMap::new();
    let mut types = BTreeMap::new();
    for line in text.lines() {
        if let Some(t) = line.strip_prefix("# TYPE ") {
            let mut it = t.split_whitespace();
            types.insert(it.next().unwrap().to_string(), it.next().unwrap().to_string());
        } else if !line.starts_with('#') && !line.is_empty() {
            let (series, value) = line.rsplit_once(' ').unwrap();
            let (name, labels) = series.split_once('{').unwrap_or((series, ""));
            samples.insert((name.to_string(), labels.trim_end_matches('}').to_string()), value.parse().unwrap());
        }
    }
    (samples, types)
}

fn sum(s: &Scrape, name: &str, label_filter: &str) -> f64 {
    s.0.iter().filter(|((n, l), _)| n == name && l.contains(label_filter)).map(|(_, v)| v).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metric_types_and_the_backend_label_switch() {
    let (b1, b2) = (Backend::start("b1").await, Backend::start("b2").await);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("padis.toml");
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let web = free_port();
    let web_addr: SocketAddr = format!("127.0.0.1:{web}").parse().unwrap();
    std::fs::write(&path, config(admin, web, &[&b1, &b2], "")).unwrap();
    let mut p = Padis::start(&path, admin);
    p.wait_ready();
    p.wait_state(Duration::from_secs(10), |s| {
        s["planes"]["health"].as_array().is_some_and(|h| h.len() == 2 && h.iter().all(|x| x["usable"] == true))
    });

    // Real traffic, some of it answered 502 by the backends.
    let requests = tokio::task::spawn_blocking(move || {
        for i in 0..40 {
            let target = if i % 4 == 0 { "/status/502" } else { "/" };
            http(web_addr, "GET", target, None, &[]).unwrap();
        }
    });
    requests.await.unwrap();

    let before = scrape(&p);
    // Types match names: a counter ends in _total, and only counters do (histograms aside).
    for (name, kind) in &before.1 {
        assert_eq!(kind == "counter", name.ends_with("_total"), "{name} is a {kind}");
    }
    assert_eq!(before.1["padis_snapshots_published_total"], "counter");
    assert_eq!(before.1["padis_config_last_reload_successful"], "gauge");
    assert_eq!(sum(&before, "padis_config_last_reload_successful", ""), 1.0);
    let total = sum(&before, "padis_http_requests_total", "route=\"all\"");
    let errors = sum(&before, "padis_http_requests_total", "code=\"502\"");
    assert_eq!((total, errors), (40.0, 10.0), "{:?}", before.0);
    let per_backend: Vec<_> =
        before.0.keys().filter(|(n, l)| n == "padis_http_requests_total" && l.contains("backend=")).collect();
    assert!(per_backend.len() >= 3, "series per backend and code: {per_backend:?}");

    // The switch, applied by a reload: the same totals without the backend label.
    std::fs::write(&path, config(admin, web, &[&b1, &b2], "metrics_backend_label = false")).unwrap();
    p.signal(libc::SIGHUP);
    p.wait_state(Duration::from_secs(10), |s| s["snapshot"]["state"]["admin"]["metrics_backend_label"] == false);
    let after = scrape(&p);
    assert!(!p.metrics().contains("backend=\""), "{}", p.metrics());
    assert_eq!(sum(&after, "padis_http_requests_total", "route=\"all\""), total);
    assert_eq!(sum(&after, "padis_http_requests_total", "code=\"502\""), errors);
    assert_eq!(after.0.keys().filter(|(n, _)| n == "padis_http_requests_total").count(), 2, "{:?}", after.0);
    // padis_backend_up becomes the number of usable backends of each group.
    assert_eq!(after.0[&("padis_backend_up".to_string(), "group=\"app\"".to_string())], 2.0, "{:?}", after.0);
    for (name, kind) in &after.1 {
        assert_eq!(before.1.get(name), Some(kind), "{name} changed type");
    }

    // A refused config file: the gauge says so (the alert PadisReloadFailed), then recovers.
    std::fs::write(&path, "[admin]\nlisten = 5\n").unwrap();
    p.signal(libc::SIGHUP);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while sum(&scrape(&p), "padis_config_last_reload_successful", "") != 0.0 {
        assert!(std::time::Instant::now() < deadline, "the failed reload is not shown:\n{}", p.log_text());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    std::fs::write(&path, config(admin, web, &[&b1, &b2], "")).unwrap();
    p.signal(libc::SIGHUP);
    p.wait_state(Duration::from_secs(10), |s| s["last_reload"]["ok"] == true);
    assert_eq!(sum(&scrape(&p), "padis_config_last_reload_successful", ""), 1.0);
}
