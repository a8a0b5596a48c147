//! `bench/suites/control`: Padis following the Marathon test double with 1,000 apps / 10,000 tasks.
//!
//! Measures the full sync of the Marathon source (spawn -> first published state, cold, median of several
//! sources), then runs the real `padis` daemon against the double and measures, from a Marathon event to the
//! change being visible **in the data planes** — a task started or killed until the DNS server's SRV answer
//! for the app changes; a new app deployed until the L7 listener routes its virtual host (no longer 404) — while
//! a background stream of other task changes runs, plus the daemon's CPU and RSS. Ends with
//! `RESULT suite=control apps=… tasks=… p50_ms=… p99_ms=… full_sync_ms=… rss_mb=…` (latencies at the data
//! planes; RSS of the daemon). The latency at the source's output is printed on stderr for comparison.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RecordType};

use padis_marathon::{MarathonSource, MarathonState};
use padis_model::marathon::MarathonConfig;
use padis_tests::marathon::{AppSpec, MarathonDouble, World};
use padis_tests::process::{free_port, Padis};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

/// Process CPU time (user + system).
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    let ticks: u64 = fields.get(11).and_then(|u| u.parse::<u64>().ok()).unwrap_or(0)
        + fields.get(12).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
    // USER_HZ is 100 on Linux.
    Duration::from_millis(ticks * 10)
}

fn app_id(i: usize) -> String {
    format!("/bench/app-{i:04}")
}

fn spec(i: usize) -> AppSpec {
    let host = format!("app-{i:04}.bench.test");
    AppSpec::new(&app_id(i), &[("PADIS_GROUP", "external"), ("PADIS_0_VHOST", host.as_str())]).with_health_check()
}

fn config(url: String) -> MarathonConfig {
    MarathonConfig {
        urls: vec![url],
        drain_time: Duration::from_millis(200),
        zone: Some("bench.test".into()),
        ..MarathonConfig::default()
    }
}

fn backends(s: &MarathonState, app: &str) -> (usize, usize) {
    let name = format!("marathon:{app}:0");
    s.groups
        .iter()
        .find(|g| g.name == name)
        .map(|g| (g.backends.iter().filter(|b| !b.draining).count(), g.backends.len()))
        .unwrap_or((0, 0))
}

async fn wait(
    rx: &mut watch::Receiver<Option<MarathonState>>,
    limit: Duration,
    pred: impl Fn(&MarathonState) -> bool,
) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if rx.borrow_and_update().as_ref().is_some_and(&pred) {
            return true;
        }
        if tokio::time::timeout_at(deadline, rx.changed()).await.is_err() {
            return false;
        }
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

/// The daemon's config: L7 listener, DNS with the generated zone, the double as Marathon.
fn daemon_config(admin: u16, web: u16, dns: u16, marathon: &str, state: &Path) -> String {
    format!(
        r#"[admin]
listen = "127.0.0.1:{admin}"

[log]
level = "warn"
access_log = false

[[listener]]
name = "web"
bind = "127.0.0.1:{web}"

[dns]
listen = ["127.0.0.1:{dns}"]
state_dir = "{state}"

[[dns.zone]]
name = "bench.test"
generated = true
ttl = "1s"
ns = [{{ name = "ns1.bench.test", addrs = ["127.0.0.1"] }}]

[marathon]
urls = ["{marathon}"]
group = "external"
zone = "bench.test"
drain_time = "200ms"
"#,
        state = state.display()
    )
}

/// Asks the daemon's DNS for the app's SRV records (over TCP when the UDP answer is truncated); `None` if it does
/// not answer.
fn srv_count(sock: &UdpSocket, dns: SocketAddr, app: &str, id: u16) -> Option<usize> {
    let name = format!("_http._tcp.{}.bench.test.", padis_marathon::default_dns_name(app));
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.add_query(Query::query(Name::from_ascii(&name).ok()?, RecordType::SRV));
    let mut edns = Edns::new();
    edns.set_max_payload(4096);
    m.set_edns(edns);
    let query = m.to_vec().ok()?;
    sock.send_to(&query, dns).ok()?;
    let mut buf = [0u8; 4096];
    let r = loop {
        let (n, _) = sock.recv_from(&mut buf).ok()?;
        let r = Message::from_vec(&buf[..n]).ok()?;
        if r.metadata.id == id {
            break r;
        }
    };
    if !r.metadata.truncation {
        return Some(r.answers.len());
    }
    let mut tcp = TcpStream::connect_timeout(&dns, Duration::from_millis(500)).ok()?;
    tcp.set_read_timeout(Some(Duration::from_millis(500))).ok()?;
    tcp.write_all(&[(query.len() >> 8) as u8, query.len() as u8]).ok()?;
    tcp.write_all(&query).ok()?;
    let mut len = [0u8; 2];
    tcp.read_exact(&mut len).ok()?;
    let mut body = vec![0u8; u16::from_be_bytes(len) as usize];
    tcp.read_exact(&mut body).ok()?;
    Message::from_vec(&body).ok().map(|r| r.answers.len())
}

/// Status of `GET /` with `Host: host` through the daemon's L7 listener.
fn l7_status(web: SocketAddr, host: &str) -> Option<u16> {
    padis_tests::process::http(web, "GET", "/", None, &[("Host", host)]).ok().map(|(code, _)| code)
}

/// RSS (MB) and CPU time of another process.
fn proc_usage(pid: u32) -> (f64, Duration) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let f: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    let ticks: u64 = f.get(11).and_then(|u| u.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
    (rss, Duration::from_millis(ticks * 10))
}

/// Where a process's resident memory is (MB), from `/proc/<pid>/smaps_rollup`: anonymous (heap), of which in
/// transparent huge pages, and file-backed (binary, libraries).
fn rss_breakdown(pid: u32) -> String {
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    let field = |name: &str| {
        rollup
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    };
    let (rss, anon, huge) = (field("Rss:"), field("Anonymous:"), field("AnonHugePages:"));
    format!("anonymous {anon:.0} MB (in huge pages {huge:.0} MB), file-backed {:.0} MB", (rss - anon).max(0.0))
}

/// What the daemon phase measured.
struct DataPlane {
    lat: Vec<f64>,
    dns_lat: Vec<f64>,
    l7_lat: Vec<f64>,
    timeouts: usize,
    rss: f64,
    rss_detail: String,
    cpu_pct: f64,
}

/// Polls `probe` (about every millisecond) until it is true or `limit` passes; the elapsed time if it became true.
fn poll_until(t0: Instant, limit: Duration, mut probe: impl FnMut() -> bool) -> Option<f64> {
    loop {
        if probe() {
            return Some(t0.elapsed().as_secs_f64() * 1000.0);
        }
        if t0.elapsed() > limit {
            return None;
        }
        std::thread::sleep(Duration::from_micros(500));
    }
}

/// The real daemon against the double: event -> DNS answer / L7 route latency (blocking; run off the runtime that
/// serves the double).
fn data_plane_phase(
    double: Arc<MarathonDouble>,
    apps: usize,
    per_app: usize,
    changes: usize,
    background: usize,
) -> DataPlane {
    let dir = tempfile::tempdir().expect("temp dir");
    let (admin, web, dns) = (free_port(), free_port(), free_port());
    std::fs::create_dir_all(dir.path().join("dns")).expect("dns dir");
    let cfg = dir.path().join("padis.toml");
    std::fs::write(&cfg, daemon_config(admin, web, dns, &double.url(0), &dir.path().join("dns"))).expect("config");
    let mut padis = Padis::start(&cfg, SocketAddr::from(([127, 0, 0, 1], admin)));
    padis.wait_ready();
    let pid = padis.child.id();
    let dns = SocketAddr::from(([127, 0, 0, 1], dns));
    let web = SocketAddr::from(([127, 0, 0, 1], web));
    let sock = UdpSocket::bind("127.0.0.1:0").expect("udp");
    sock.set_read_timeout(Some(Duration::from_millis(200))).expect("timeout");
    let mut qid: u16 = 0;
    let mut next_id = || {
        qid = qid.wrapping_add(1);
        qid
    };
    // Loaded: the last app's SRV set is complete.
    let last = app_id(apps - 1);
    let loaded = poll_until(Instant::now(), Duration::from_secs(60), || {
        srv_count(&sock, dns, &last, next_id()) == Some(per_app)
    });
    assert!(loaded.is_some(), "the daemon never served the full Marathon state; log:\n{}", padis.log_text());
    std::thread::sleep(Duration::from_millis(300));

    let (_, cpu0) = proc_usage(pid);
    let t_phase = Instant::now();
    let mut rng = fastrand::Rng::with_seed(11);
    let (mut lat, mut dns_lat, mut l7_lat, mut timeouts) = (Vec::new(), Vec::new(), Vec::new(), 0);
    let limit = Duration::from_secs(5);
    for k in 0..changes {
        for _ in 0..background {
            let j = apps / 2 + rng.usize(0..apps - apps / 2);
            let id = app_id(j);
            let n = double.task_ids(&id).len() as u32;
            double.scale(&id, if n > per_app as u32 { n - 1 } else { n + 1 });
        }
        let got = if k % 10 == 9 {
            // A new app is deployed: its virtual host becomes routable.
            let i = apps + k;
            let host = format!("app-{i:04}.bench.test");
            let t0 = Instant::now();
            double.add_app(spec(i), 1);
            let r = poll_until(t0, limit, || l7_status(web, &host).is_some_and(|c| c != 404));
            if let Some(ms) = r {
                l7_lat.push(ms);
            }
            r
        } else {
            let id = app_id(rng.usize(0..(apps / 2).max(1)));
            let before = srv_count(&sock, dns, &id, next_id()).unwrap_or(0);
            let r = if k % 2 == 0 {
                let t0 = Instant::now();
                double.script(|w| w.start_task(&id));
                poll_until(t0, limit, || srv_count(&sock, dns, &id, next_id()).is_some_and(|n| n > before))
            } else {
                match double.task_ids(&id).last().cloned() {
                    Some(t) => {
                        let t0 = Instant::now();
                        double.script(|w| w.kill_begin(&id, &t));
                        let r =
                            poll_until(t0, limit, || srv_count(&sock, dns, &id, next_id()).is_some_and(|n| n < before));
                        double.script(|w| w.kill_finish(&id, &t));
                        r
                    }
                    None => continue,
                }
            };
            if let Some(ms) = r {
                dns_lat.push(ms);
            }
            r
        };
        match got {
            Some(ms) => lat.push(ms),
            None => timeouts += 1,
        }
        std::thread::sleep(Duration::from_millis(rng.u64(0..10)));
    }
    let phase = t_phase.elapsed();
    let (rss, cpu1) = proc_usage(pid);
    let rss_detail = rss_breakdown(pid);
    let cpu_pct = cpu1.saturating_sub(cpu0).as_secs_f64() / phase.as_secs_f64() * 100.0;
    for v in [&mut lat, &mut dns_lat, &mut l7_lat] {
        v.sort_by(f64::total_cmp);
    }
    DataPlane { lat, dns_lat, l7_lat, timeouts, rss, rss_detail, cpu_pct }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let apps = env_usize("CONTROL_APPS", 1000);
    let per_app = env_usize("CONTROL_TASKS_PER_APP", 10);
    let changes = env_usize("CONTROL_CHANGES", 400);
    let background = env_usize("CONTROL_BACKGROUND_PER_CHANGE", 4);

    let double = Arc::new(MarathonDouble::start().await);
    double.quietly(|w: &mut World| {
        for i in 0..apps {
            w.add_app(spec(i), per_app as u32);
        }
        w.render(true).len()
    });
    let tasks = apps * per_app;
    let rss_double = rss_mb();

    // Full sync, cold: spawn -> first state with every app, median of 5 sources.
    let mut full = Vec::new();
    for _ in 0..5 {
        let (tx, mut rx) = watch::channel(None);
        let stop = CancellationToken::new();
        let t0 = Instant::now();
        let h = MarathonSource::spawn(config(double.url(0)), tx, &prometheus::Registry::new(), stop.clone())
            .expect("spawn");
        let ok = wait(&mut rx, Duration::from_secs(30), |s| s.groups.len() == apps && s.backend_count() == tasks).await;
        assert!(ok, "full sync did not complete");
        full.push(t0.elapsed().as_secs_f64() * 1000.0);
        stop.cancel();
        let _ = h.await;
    }
    full.sort_by(f64::total_cmp);
    let full_sync_ms = full[full.len() / 2];

    // Event -> state latency with a background stream of task changes.
    let registry = prometheus::Registry::new();
    let (tx, mut rx) = watch::channel(None);
    let stop = CancellationToken::new();
    let h = MarathonSource::spawn(config(double.url(0)), tx, &registry, stop.clone()).expect("spawn");
    assert!(wait(&mut rx, Duration::from_secs(30), |s| s.groups.len() == apps).await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss_before = rss_mb();
    let cpu0 = cpu_time();
    let t_phase = Instant::now();
    let mut lat = Vec::with_capacity(changes);
    let mut timeouts = 0;
    let mut rng = fastrand::Rng::with_seed(7);
    for k in 0..changes {
        // Background: apps of the other half scale up or down by one (not measured, keeps the stream busy).
        for _ in 0..background {
            let j = apps / 2 + rng.usize(0..apps - apps / 2);
            let id = app_id(j);
            let n = double.task_ids(&id).len() as u32;
            let target = if n > per_app as u32 { n - 1 } else { n + 1 };
            double.scale(&id, target);
        }
        let i = rng.usize(0..(apps / 2).max(1));
        let id = app_id(i);
        let before = rx.borrow().as_ref().map(|s| backends(s, &id)).unwrap_or((0, 0));
        let t0 = Instant::now();
        let ok = if k % 2 == 0 {
            // A task starts (running + healthy): one more serving backend.
            double.script(|w| w.start_task(&id));
            wait(&mut rx, Duration::from_secs(5), |s| backends(s, &id).0 > before.0).await
        } else {
            // A task is being killed: it turns draining.
            let victim = double.task_ids(&id).last().cloned();
            match victim {
                Some(t) => {
                    double.script(|w| w.kill_begin(&id, &t));
                    let ok = wait(&mut rx, Duration::from_secs(5), |s| backends(s, &id).0 < before.0).await;
                    double.script(|w| w.kill_finish(&id, &t));
                    ok
                }
                None => continue,
            }
        };
        if ok {
            lat.push(t0.elapsed().as_secs_f64() * 1000.0);
        } else {
            timeouts += 1;
        }
        tokio::time::sleep(Duration::from_millis(rng.u64(0..10))).await;
    }
    let phase = t_phase.elapsed();
    let cpu = cpu_time().saturating_sub(cpu0);
    let rss = rss_mb();
    stop.cancel();
    let _ = h.await;
    lat.sort_by(f64::total_cmp);
    let events_total: f64 = registry
        .gather()
        .iter()
        .filter(|f| f.name() == "padis_marathon_events_total")
        .flat_map(|f| f.get_metric().iter().map(|m| m.get_counter().value()).collect::<Vec<_>>())
        .sum();
    let (sync_count, sync_sum) = registry
        .gather()
        .iter()
        .filter(|f| f.name() == "padis_marathon_sync_seconds")
        .flat_map(|f| {
            f.get_metric()
                .iter()
                .map(|m| (m.get_histogram().get_sample_count(), m.get_histogram().get_sample_sum()))
                .collect::<Vec<_>>()
        })
        .fold((0u64, 0.0f64), |a, b| (a.0 + b.0, a.1 + b.1));
    eprintln!(
        "control (source alone): {apps} apps, {tasks} tasks; full sync (cold, median of 5) {full_sync_ms:.1} ms; \
         {} measured changes ({timeouts} timed out) with {background} background changes each, {events_total} events \
         in {:.1} s; event -> published state p50 {:.1} ms p99 {:.1} ms; {sync_count} full syncs during the run \
         (mean {:.1} ms); CPU {:.0}% of one core; RSS {rss:.0} MB (double alone {rss_double:.0} MB, source ~{:.0} MB)",
        lat.len(),
        phase.as_secs_f64(),
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        if sync_count > 0 { sync_sum / sync_count as f64 * 1000.0 } else { 0.0 },
        cpu.as_secs_f64() / phase.as_secs_f64() * 100.0,
        (rss_before.max(rss) - rss_double).max(0.0),
    );

    // The real daemon: event -> data plane.
    let d = double.clone();
    let dp = tokio::task::spawn_blocking(move || data_plane_phase(d, apps, per_app, changes, background))
        .await
        .expect("data plane phase");
    eprintln!(
        "control (padis daemon): {} changes measured at the data planes ({} timed out): DNS SRV answer p50 {:.1} ms \
         p99 {:.1} ms ({} changes), L7 route of a new app p50 {:.1} ms p99 {:.1} ms ({} deploys); daemon CPU {:.0}% \
         of one core, RSS {:.0} MB ({})",
        dp.lat.len(),
        dp.timeouts,
        percentile(&dp.dns_lat, 0.5),
        percentile(&dp.dns_lat, 0.99),
        dp.dns_lat.len(),
        percentile(&dp.l7_lat, 0.5),
        percentile(&dp.l7_lat, 0.99),
        dp.l7_lat.len(),
        dp.cpu_pct,
        dp.rss,
        dp.rss_detail,
    );
    println!(
        "RESULT suite=control apps={apps} tasks={tasks} p50_ms={:.1} p99_ms={:.1} full_sync_ms={full_sync_ms:.1} rss_mb={:.0}",
        percentile(&dp.lat, 0.5),
        percentile(&dp.lat, 0.99),
        dp.rss,
    );
}
