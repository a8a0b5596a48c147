//! DNS benchmark helper for `bench/suites/dns`.
//!
//! - `dns-bench gen <dir> <services>`: writes `bench.zone` (the zone Padis generates, as a master file for Knot and
//!   NSD) and `queries.txt` (dnsperf input: 50% A hits, 25% SRV, 25% NXDOMAIN).
//! - `dns-bench serve <dir> <port> <services> [churn]`: runs the Padis DNS plane on 127.0.0.1:<port> (one UDP
//!   worker) for a generated zone of `<services>` services (3 instances, one SRV port each); with `churn`, publishes
//!   a new snapshot every 100 ms moving 5 instances to new addresses (10 A records: 100 record changes per second).
//!   Prints `READY` when serving and, on SIGTERM, the server-side latency p99 and the number of snapshots.
//!   `DNS_BENCH_BATCH_WAIT_US` sets `dns.udp_batch_wait` in microseconds (receive coalescing under load; 0: off).

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use padis_model::dns::{DnsConfig, DnsZone, NsConfig, SoaConfig};
use padis_model::{
    validate_state, validate_update, DesiredState, Instance, Service, ServicePort, Snapshot, SnapshotStore,
};

const ZONE: &str = "bench.test";

fn addr(i: usize, j: usize, epoch: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10 + epoch % 100, (i / 256) as u8, (i % 256) as u8, j as u8 + 1))
}

fn services(n: usize) -> Vec<Arc<Service>> {
    (0..n)
        .map(|i| {
            Arc::new(Service {
                name: format!("svc{i}"),
                zone: None,
                ports: vec![ServicePort { name: Some("http".into()), protocol: "tcp".into() }],
                instances: (0..3)
                    .map(|j| Instance {
                        id: format!("i{i}-{j}"),
                        addr: addr(i, j, 0),
                        ports: vec![8000 + j as u16],
                        weight: 1,
                        healthy: true,
                        draining: false,
                    })
                    .collect(),
                origin: None,
            })
        })
        .collect()
}

fn state(dir: &Path, port: u16, svcs: Vec<Arc<Service>>) -> DesiredState {
    let dns = DnsConfig {
        listen: vec![SocketAddr::from(([127, 0, 0, 1], port))],
        reuseport: 1,
        state_dir: dir.join("padis-state"),
        zones: vec![DnsZone {
            name: ZONE.into(),
            file: None,
            generated: true,
            ttl: Duration::from_secs(5),
            negative_ttl: Duration::from_secs(5),
            soa: SoaConfig::default(),
            ns: vec![NsConfig { name: format!("ns1.{ZONE}"), addrs: vec![IpAddr::V4(Ipv4Addr::LOCALHOST)] }],
            allow_transfer: Vec::new(),
            transfer_key: None,
            notify: Vec::new(),
            allow_update: Vec::new(),
            update_key: None,
            serial_policy: None,
        }],
        udp_batch_wait: batch_wait(),
        ..DnsConfig::default()
    };
    DesiredState { services: svcs, dns, ..DesiredState::default() }
}

/// `dns.udp_batch_wait`: the default, or `DNS_BENCH_BATCH_WAIT_US` microseconds (`0` for the A/B of coalescing).
fn batch_wait() -> Duration {
    match std::env::var("DNS_BENCH_BATCH_WAIT_US") {
        Ok(v) => Duration::from_micros(v.parse().unwrap_or_else(|e| {
            eprintln!("dns-bench: DNS_BENCH_BATCH_WAIT_US={v}: {e}");
            std::process::exit(2)
        })),
        Err(_) => DnsConfig::default().udp_batch_wait,
    }
}

/// A snapshot of `svcs`; with `previous` (the state in force), validated the way the reconciler does: only
/// services that are new allocations are checked on their own.
fn snapshot(
    dir: &Path,
    port: u16,
    svcs: Vec<Arc<Service>>,
    generation: u64,
    previous: Option<&DesiredState>,
) -> Snapshot {
    let st = state(dir, port, svcs);
    let valid = match previous {
        Some(p) => validate_update(st, "dns-bench", dir, None, p),
        None => validate_state(st, "dns-bench", dir, None),
    };
    let valid = valid.unwrap_or_else(|e| {
        eprintln!("dns-bench: invalid state: {e}");
        std::process::exit(1)
    });
    Snapshot::new(valid, generation, Vec::new())
}

/// A small deterministic generator (the query mix must be the same for every server).
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> usize {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 33) as usize
    }
}

fn gen(dir: &Path, n: usize) -> std::io::Result<()> {
    let mut z = String::new();
    let _ = writeln!(z, "$ORIGIN {ZONE}.\n$TTL 5");
    let _ = writeln!(z, "@ 5 IN SOA ns1.{ZONE}. hostmaster.{ZONE}. 1 60 10 604800 5");
    let _ = writeln!(z, "@ 60 IN NS ns1.{ZONE}.\nns1 60 IN A 127.0.0.1");
    for i in 0..n {
        for j in 0..3 {
            let _ = writeln!(z, "svc{i} IN A {}", addr(i, j, 0));
            let _ = writeln!(z, "i{i}-{j}.svc{i} IN A {}", addr(i, j, 0));
            let _ = writeln!(z, "_http._tcp.svc{i} IN SRV 0 1 {} i{i}-{j}.svc{i}.{ZONE}.", 8000 + j);
        }
    }
    std::fs::write(dir.join("bench.zone"), z)?;
    let mut q = String::new();
    let mut rng = Lcg(42);
    for _ in 0..200_000 {
        let i = rng.next() % n;
        let _ = match rng.next() % 4 {
            0 | 1 => writeln!(q, "svc{i}.{ZONE} A"),
            2 => writeln!(q, "_http._tcp.svc{i}.{ZONE} SRV"),
            _ => writeln!(q, "nx{i}.{ZONE} A"),
        };
    }
    std::fs::write(dir.join("queries.txt"), q)
}

async fn serve(dir: PathBuf, port: u16, n: usize, churn: bool) {
    let base = services(n);
    let store = SnapshotStore::new(snapshot(&dir, port, base.clone(), 1, None));
    let registry = prometheus::Registry::new();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let handle = match padis_dns::DnsPlane::start(store.reader(), &registry, shutdown.clone()).await {
        Ok(h) => h,
        Err(e) => {
            eprintln!("dns-bench: {e}");
            std::process::exit(1);
        }
    };
    println!("READY {}", handle.local_addrs()[0]);
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("dns-bench: {e}");
            std::process::exit(1);
        }
    };
    // The control side (building and publishing snapshots) runs on its own thread, `bench-control`, so the
    // suite can leave its CPU time out of the DNS plane's.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let control = churn.then(|| {
        let (stop, dir) = (stop.clone(), dir.clone());
        std::thread::Builder::new().name("bench-control".into()).spawn(move || {
            let mut generation = 1u64;
            // The current services, shared with the published snapshot: like the reconciler, a tick replaces
            // only the services it changes (new allocations); the others stay the same `Arc`.
            let mut svcs = base;
            let mut rng = Lcg(7);
            let mut next = std::time::Instant::now();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                next += Duration::from_millis(100);
                std::thread::sleep(next.saturating_duration_since(std::time::Instant::now()));
                generation += 1;
                for _ in 0..5 {
                    let inst = rng.next() % (n * 3);
                    let epoch = (generation % 50) as u8 + 1;
                    Arc::make_mut(&mut svcs[inst / 3]).instances[inst % 3].addr = addr(inst / 3, inst % 3, epoch);
                }
                let previous = store.load();
                store.publish(snapshot(&dir, port, svcs.clone(), generation, Some(&previous.state)));
            }
            (generation, store)
        })
    });
    tokio::select! {
        _ = term.recv() => (),
        _ = tokio::signal::ctrl_c() => (),
    };
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let generation = match control {
        Some(Ok(t)) => t.join().map(|(g, _store)| g).unwrap_or(0),
        _ => 1,
    };
    // Server-side p99 from the latency histogram (text exposition: independent of prometheus features).
    let text = prometheus::TextEncoder::new().encode_to_string(&registry.gather()).unwrap_or_default();
    let mut buckets = Vec::new();
    let mut total = 0.0;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("padis_dns_query_duration_seconds_bucket{le=\"") {
            let mut it = rest.splitn(2, "\"} ");
            if let (Some(le), Some(n)) = (it.next(), it.next()) {
                buckets.push((le.parse::<f64>().unwrap_or(f64::INFINITY), n.trim().parse::<f64>().unwrap_or(0.0)));
            }
        } else if let Some(n) = line.strip_prefix("padis_dns_query_duration_seconds_count ") {
            total = n.trim().parse().unwrap_or(0.0);
        }
    }
    let p99 = buckets.iter().find(|b| b.1 >= total * 0.99).map_or(0.0, |b| b.0);
    let serial = handle.report().zones.first().map_or(0, |z| z.serial);
    println!("DONE server_p99_ms={:.4} snapshots={generation} serial={serial}", p99 * 1000.0);
    shutdown.cancel();
    handle.wait().await;
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = || -> ! {
        eprintln!("usage: dns-bench gen <dir> <services> | dns-bench serve <dir> <port> <services> [churn]");
        std::process::exit(2)
    };
    match args.get(1).map(String::as_str) {
        Some("gen") if args.len() == 4 => {
            let n = args[3].parse().unwrap_or_else(|_| usage());
            if let Err(e) = gen(Path::new(&args[2]), n) {
                eprintln!("dns-bench: {e}");
                std::process::exit(1);
            }
        }
        Some("serve") if args.len() >= 5 => {
            let port = args[3].parse().unwrap_or_else(|_| usage());
            let n = args[4].parse().unwrap_or_else(|_| usage());
            let churn = args.get(5).is_some_and(|a| a == "churn");
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build();
            match rt {
                Ok(rt) => rt.block_on(serve(PathBuf::from(&args[2]), port, n, churn)),
                Err(e) => {
                    eprintln!("dns-bench: {e}");
                    std::process::exit(1);
                }
            }
        }
        _ => usage(),
    }
}
