//! Backend selection micro-benchmarks: Maglev table build and lookup, and `GroupBalancer::select` per algorithm
//! (one thread, and two threads sharing a group). Prints `RESULT suite=balance ...` lines.
//!
//! Run: `cargo bench -p padis-balance --bench select`

use std::hint::black_box;
use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use http::HeaderMap;
use padis_balance::{Balancers, HealthRegistry, Maglev, SelectCtx, DEFAULT_TABLE_SIZE};
use padis_model::{parse_config, Snapshot};

fn result(name: &str, value: f64, unit: &str) {
    println!("RESULT suite=balance name={name} value={value:.3} unit={unit}");
}

/// Runs `f` in batches until `budget` has passed (bounded), returns ns per call.
fn per_call(budget: Duration, mut f: impl FnMut(u64)) -> f64 {
    let start = Instant::now();
    let mut calls = 0u64;
    while start.elapsed() < budget && calls < 200_000_000 {
        for _ in 0..10_000 {
            f(calls);
            calls += 1;
        }
    }
    start.elapsed().as_nanos() as f64 / calls as f64
}

fn backends(n: usize) -> Vec<(String, u32)> {
    (0..n).map(|i| (format!("10.{}.{}.1:80", i / 250, i % 250), 1)).collect()
}

fn group_config(balance: &str, n: usize) -> String {
    let mut s = format!("[[group]]\nname = \"g\"\nbalance = \"{balance}\"\n");
    for (addr, _) in backends(n) {
        s += &format!("[[group.backend]]\naddr = \"{addr}\"\n");
    }
    s
}

fn main() {
    let budget = Duration::from_millis(500);
    for n in [10usize, 100, 1000] {
        let b = backends(n);
        let size = padis_balance::group::table_size_for(n);
        let start = Instant::now();
        let runs = 5;
        for _ in 0..runs {
            black_box(Maglev::new(&b, size).unwrap());
        }
        result(
            &format!("maglev_build_{n}_backends_{size}_slots"),
            start.elapsed().as_secs_f64() * 1e3 / runs as f64,
            "ms",
        );
    }
    for n in [10usize, 100, 1000] {
        let size = padis_balance::group::table_size_for(n + 1);
        let all = backends(n + 1);
        let fewer = &all[..n];
        let ident = |m: &Maglev, b: &[(String, u32)]| -> Vec<String> {
            m.table().iter().map(|&i| b[i as usize].0.clone()).collect()
        };
        let before = ident(&Maglev::new(&all, size).unwrap(), &all);
        let after = ident(&Maglev::new(fewer, size).unwrap(), fewer);
        let moved = before.iter().zip(&after).filter(|(a, b)| a != b).count() as f64 / size as f64;
        result(&format!("maglev_moved_on_remove_1_of_{}_pct", n + 1), moved * 100.0, "pct");
        result(&format!("maglev_moved_on_remove_1_of_{}_ideal_pct", n + 1), 100.0 / (n + 1) as f64, "pct");
        let mut counts = std::collections::HashMap::new();
        for b in &before {
            *counts.entry(b).or_insert(0usize) += 1;
        }
        let peak = *counts.values().max().unwrap() as f64;
        result(&format!("maglev_peak_over_mean_{}_backends", n + 1), peak / (size as f64 / (n + 1) as f64), "ratio");
    }
    let m = Maglev::new(&backends(100), DEFAULT_TABLE_SIZE).unwrap();
    result(
        "maglev_lookup",
        per_call(budget, |i| {
            black_box(m.lookup(black_box(i.wrapping_mul(0x9E37_79B9_7F4A_7C15))));
        }),
        "ns",
    );

    let health = HealthRegistry::new(&prometheus::Registry::new()).unwrap();
    let headers = HeaderMap::new();
    for balance in ["round_robin", "least_request", "maglev", "sticky"] {
        for n in [10usize, 100] {
            let valid = parse_config(&group_config(balance, n), "bench.toml", Path::new(".")).unwrap();
            let bal = Balancers::build(&Snapshot::new(valid, 1, Vec::new()), &health, None);
            let g = bal.group("g").unwrap().clone();
            let ns = per_call(budget, |i| {
                let ctx = SelectCtx { client_ip: IpAddr::from((i as u32).to_be_bytes()), headers: &headers };
                black_box(g.select(&ctx, &[]));
            });
            result(&format!("select_{balance}_{n}_backends_1_thread"), ns, "ns");
            let threads: Vec<_> = (0..2)
                .map(|_| {
                    let g = g.clone();
                    std::thread::spawn(move || {
                        let headers = HeaderMap::new();
                        per_call(budget, |i| {
                            let ctx =
                                SelectCtx { client_ip: IpAddr::from((i as u32).to_be_bytes()), headers: &headers };
                            black_box(g.select(&ctx, &[]));
                        })
                    })
                })
                .collect();
            let ns: Vec<f64> = threads.into_iter().map(|t| t.join().unwrap()).collect();
            result(&format!("select_{balance}_{n}_backends_2_threads"), ns.iter().sum::<f64>() / 2.0, "ns");
        }
    }
}
