//! `bench/suites/control`: the Marathon source against the test double with 1,000 apps / 10,000 tasks.
//!
//! Measures the full sync (spawn -> first published state, cold, median of several sources), the latency from a
//! Marathon event (task started / task killed) to the change being visible in the published `MarathonState`
//! while a background stream of other task changes runs, the CPU it costs, and the process RSS (which includes
//! the in-process double; the source's own share is printed too). Ends with
//! `RESULT suite=control apps=… tasks=… p50_ms=… p99_ms=… full_sync_ms=… rss_mb=…`.

use std::time::{Duration, Instant};

use padis_marathon::{MarathonSource, MarathonState};
use padis_model::marathon::MarathonConfig;
use padis_tests::marathon::{AppSpec, MarathonDouble, World};
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

async fn wait(rx: &mut watch::Receiver<Option<MarathonState>>, limit: Duration, pred: impl Fn(&MarathonState) -> bool) -> bool {
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

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let apps = env_usize("CONTROL_APPS", 1000);
    let per_app = env_usize("CONTROL_TASKS_PER_APP", 10);
    let changes = env_usize("CONTROL_CHANGES", 400);
    let background = env_usize("CONTROL_BACKGROUND_PER_CHANGE", 4);

    let double = MarathonDouble::start().await;
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
        let h = MarathonSource::spawn(config(double.url(0)), tx, &prometheus::Registry::new(), stop.clone()).expect("spawn");
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
        .flat_map(|f| f.get_metric().iter().map(|m| (m.get_histogram().get_sample_count(), m.get_histogram().get_sample_sum())).collect::<Vec<_>>())
        .fold((0u64, 0.0f64), |a, b| (a.0 + b.0, a.1 + b.1));
    eprintln!(
        "control: {apps} apps, {tasks} tasks; full sync (cold, median of 5) {full_sync_ms:.1} ms; {} measured changes \
         ({timeouts} timed out) with {background} background changes each, {events_total} events in {:.1} s; \
         {sync_count} full syncs during the run (mean {:.1} ms); CPU {:.0}% of one core; RSS {rss:.0} MB \
         (double alone {rss_double:.0} MB, source ~{:.0} MB)",
        lat.len(),
        phase.as_secs_f64(),
        if sync_count > 0 { sync_sum / sync_count as f64 * 1000.0 } else { 0.0 },
        cpu.as_secs_f64() / phase.as_secs_f64() * 100.0,
        (rss_before.max(rss) - rss_double).max(0.0),
    );
    println!(
        "RESULT suite=control apps={apps} tasks={tasks} p50_ms={:.1} p99_ms={:.1} full_sync_ms={full_sync_ms:.1} rss_mb={rss:.0}",
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
    );
}
