//! L4 micro-benchmark: ns/packet of the XDP balancer through BPF_PROG_TEST_RUN (new TCP flow, established flow,
//! UDP, IPv6, non-VIP pass to another port and to a VIP's port) against a floor program in the same object that
//! only swaps MACs and returns XDP_TX.
//! Paths whose rewrite is idempotent (DSR, pass, floor) run with `repeat` (warm caches), in rounds alternating with
//! the floor on the same packet; the median round counts. New flows need a fresh 5-tuple per run, so they run
//! with repeat = 1 over distinct flows, each followed by the floor on the same packet (also repeat = 1: same
//! per-call timer overhead, same cold caches); the median of the rounds' means counts. Every phase checks through
//! the program's own counters that it measured the path it names (misses + inserts for SYN, hits for
//! established, passes for non-VIP). The map settings are the defaults (the new-flow budget is on).
//! Prints `key=value` pairs for bench/suites/l4. Needs root.

use std::path::Path;

use padis_ebpf_common::stat;
use padis_l4::desired;
use padis_l4::programmer::Programmer;
use padis_l4::{Balancer, LoadOptions};

const CONFIG: &str = r#"
[l4.neighbors]
"10.0.0.10" = "02:00:00:00:00:10"
"10.0.0.11" = "02:00:00:00:00:11"
"10.0.0.12" = "02:00:00:00:00:12"
"10.0.0.13" = "02:00:00:00:00:13"
"10.0.0.14" = "02:00:00:00:00:14"
"10.0.0.15" = "02:00:00:00:00:15"
"10.0.0.16" = "02:00:00:00:00:16"
"10.0.0.17" = "02:00:00:00:00:17"
"10.0.0.18" = "02:00:00:00:00:18"
"10.0.0.19" = "02:00:00:00:00:19"
"fd00::10" = "02:00:00:00:01:10"
"fd00::11" = "02:00:00:00:01:11"

[[vip]]
name = "web"
addr = "192.0.2.1"
port = 80
backend = [
  { addr = "10.0.0.10" }, { addr = "10.0.0.11" }, { addr = "10.0.0.12" }, { addr = "10.0.0.13" }, { addr = "10.0.0.14" },
  { addr = "10.0.0.15" }, { addr = "10.0.0.16" }, { addr = "10.0.0.17" }, { addr = "10.0.0.18" }, { addr = "10.0.0.19" },
]

[[vip]]
name = "dns"
addr = "192.0.2.1"
port = 53
protocol = "udp"
backend = [{ addr = "10.0.0.10" }, { addr = "10.0.0.11" }, { addr = "10.0.0.12" }]

[[vip]]
name = "web6"
addr = "2001:db8::1"
port = 443
backend = [{ addr = "fd00::10" }, { addr = "fd00::11" }]
"#;

fn csum(b: &[u8]) -> u16 {
    let mut s: u32 = b.chunks(2).map(|c| u32::from(c[0]) << 8 | u32::from(*c.get(1).unwrap_or(&0))).sum();
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

fn eth(t: u16) -> Vec<u8> {
    let mut v = vec![0x02, 0, 0, 0, 0, 0x01, 0x02, 0, 0, 0, 0, 0x02];
    v.extend_from_slice(&t.to_be_bytes());
    v
}

/// IPv4 frame: TCP (flags) or UDP, 64-byte payload.
fn v4(src: [u8; 4], dst: [u8; 4], proto: u8, sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    let l4len = if proto == 6 { 20 } else { 8 };
    let payload = 64;
    let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, proto, 0, 0];
    ip[2..4].copy_from_slice(&((20 + l4len + payload) as u16).to_be_bytes());
    ip.extend_from_slice(&src);
    ip.extend_from_slice(&dst);
    let c = csum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let mut v = eth(0x0800);
    v.extend_from_slice(&ip);
    v.extend_from_slice(&sport.to_be_bytes());
    v.extend_from_slice(&dport.to_be_bytes());
    if proto == 6 {
        v.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
    } else {
        v.extend_from_slice(&[0, (8 + payload) as u8, 0, 0]);
    }
    v.extend(std::iter::repeat_n(0x61, payload));
    v
}

fn v6_tcp(src: [u8; 16], dst: [u8; 16], sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    let mut v = eth(0x86dd);
    v.extend_from_slice(&[0x60, 0, 0, 0, 0, 84, 6, 64]);
    v.extend_from_slice(&src);
    v.extend_from_slice(&dst);
    v.extend_from_slice(&sport.to_be_bytes());
    v.extend_from_slice(&dport.to_be_bytes());
    v.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
    v.extend(std::iter::repeat_n(0x61, 64));
    v
}

fn fail(msg: String) -> ! {
    eprintln!("l4-bench: {msg}");
    std::process::exit(1)
}

/// Kernel ns of one run of `pkt` (repeat = 1), by the balancer or the floor; checks the verdict.
fn once(b: &Balancer, pkt: &[u8], want: u32, floor: bool) -> f64 {
    let (v, ns) =
        if floor { b.test_run_floor(pkt) } else { b.test_run_timed(pkt) }.unwrap_or_else(|e| fail(e.to_string()));
    if v != want {
        fail(format!("unexpected verdict {v} (want {want}, floor {floor})"));
    }
    ns
}

/// New-flow style measurement: `pkts` split into `ROUNDS` rounds; each packet is run once by the balancer, then
/// once by the floor. Returns the medians of the rounds' means (balancer, floor).
fn once_rounds(b: &Balancer, pkts: &[Vec<u8>], want: u32) -> (f64, f64) {
    let per = (pkts.len() / ROUNDS).max(1);
    let (mut prog, mut floor): (Vec<f64>, Vec<f64>) = pkts
        .chunks(per)
        .map(|round| {
            let (mut p, mut f) = (0.0, 0.0);
            for pkt in round {
                p += once(b, pkt, want, false);
                f += once(b, pkt, want, true);
            }
            (p / round.len() as f64, f / round.len() as f64)
        })
        .unzip();
    (median(&mut prog), median(&mut floor))
}

/// Rounds of the balancer on `pkt` repeated `repeat` times, alternating with rounds of the floor on the same
/// packet. Returns the medians of the per-round mean ns (balancer, floor).
fn repeated(b: &Balancer, pkt: &[u8], repeat: u32, want: u32) -> (f64, f64) {
    let (mut prog, mut floor) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let (verdict, ns) = b.test_run_repeat(pkt, repeat).unwrap_or_else(|e| fail(e.to_string()));
        if verdict != want {
            fail(format!("unexpected verdict {verdict} (want {want})"));
        }
        prog.push(ns);
        floor.push(b.test_run_floor_repeat(pkt, repeat).unwrap_or_else(|e| fail(e.to_string())));
    }
    (median(&mut prog), median(&mut floor))
}

/// Rounds per measurement.
const ROUNDS: usize = 5;

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Global counter `idx` summed over CPUs (packets).
fn counter(b: &Balancer, idx: u32) -> u64 {
    padis_l4::stats::global_one(&b.maps, idx).unwrap_or_else(|e| fail(e.to_string())).packets
}

/// Runs `f` and checks that it moved global counter `idx` by at least `min` (the path measured is the one named).
fn expect<T>(b: &Balancer, what: &str, idx: u32, min: u64, f: impl FnOnce() -> T) -> T {
    let before = counter(b, idx);
    let r = f();
    let moved = counter(b, idx) - before;
    if moved < min {
        fail(format!("{what}: counter {} moved by {moved}, expected at least {min}", stat::NAMES[idx as usize]));
    }
    r
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("micro") | None => micro(),
        Some(other) => fail(format!("unknown mode {other} (micro)")),
    }
}

fn micro() {
    let flows: usize = std::env::var("L4_BENCH_FLOWS").ok().and_then(|s| s.parse().ok()).unwrap_or(50_000);
    let repeat: u32 = std::env::var("L4_BENCH_REPEAT").ok().and_then(|s| s.parse().ok()).unwrap_or(100_000);
    // L4_BENCH_MAX_NEW_FLOWS overrides the new-flow budget (0 = off), to see what the budget costs a SYN.
    let config = match std::env::var("L4_BENCH_MAX_NEW_FLOWS") {
        Ok(n) => CONFIG.replacen("[l4.neighbors]", &format!("[l4]\nmax_new_flows_per_sec = {n}\n[l4.neighbors]"), 1),
        Err(_) => CONFIG.to_string(),
    };
    let valid = padis_model::parse_config(&config, "l4-bench", Path::new(".")).unwrap_or_else(|e| fail(e.to_string()));
    // The connection table has the daemon's default size (`[l4] max_flows`, 1 Mi entries): a smaller table would
    // keep a SYN's buckets and elements warmer than in production. L4_BENCH_MAX_FLOWS overrides it.
    let max_flows = std::env::var("L4_BENCH_MAX_FLOWS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(valid.state.l4.max_flows)
        .max(flows as u32 * 2);
    let opts = LoadOptions::private(8, 64, max_flows);
    let mut bal = Balancer::load(opts.clone()).unwrap_or_else(|e| fail(e.to_string()));
    bal.load_floor().unwrap_or_else(|e| fail(e.to_string()));
    let d = desired::compute(&valid.state.l4, &valid.state.vips, &|_, _| true, &mut |_| None);
    let mut prog = Programmer::new(opts.max_vips, opts.max_rings(), opts.max_backends);
    prog.apply(&mut bal.maps, &d).unwrap_or_else(|e| fail(e.to_string()));

    const TX: u32 = 3;
    const PASS: u32 = 2;
    let vip = [192, 0, 2, 1];
    let syns: Vec<Vec<u8>> = (0..flows)
        .map(|i| v4([10, 1 + (i >> 16) as u8, (i >> 8) as u8, i as u8], vip, 6, 1024 + (i % 50_000) as u16, 80, 0x02))
        .collect();
    let skipped = counter(&bal, stat::CT_INSERT_SKIPPED);
    let (syn_ns, floor1_ns) =
        expect(&bal, "SYN phase (misses)", stat::CT_MISS, flows as u64, || once_rounds(&bal, &syns, TX));
    eprintln!("l4-bench: SYN {syn_ns:.1} ns, floor at repeat 1 {floor1_ns:.1} ns");
    if counter(&bal, stat::CT_INSERT_SKIPPED) != skipped {
        fail("SYN phase: some new flows were not inserted (budget); the phase would not measure inserts".into());
    }
    let acks: Vec<Vec<u8>> = (0..flows)
        .map(|i| v4([10, 1 + (i >> 16) as u8, (i >> 8) as u8, i as u8], vip, 6, 1024 + (i % 50_000) as u16, 80, 0x10))
        .collect();
    let (est1_ns, est1_floor_ns) =
        expect(&bal, "cold established phase (hits)", stat::CT_HIT, flows as u64, || once_rounds(&bal, &acks, TX));
    let runs = u64::from(repeat) * ROUNDS as u64;
    let (est_ns, floor_ns) =
        expect(&bal, "established phase (hits)", stat::CT_HIT, runs, || repeated(&bal, &acks[7], repeat, TX));
    let udp = v4([10, 9, 9, 9], vip, 17, 5353, 53, 0);
    let (udp_ns, udp_floor_ns) =
        expect(&bal, "UDP phase (hits)", stat::CT_HIT, runs - 1, || repeated(&bal, &udp, repeat, TX));
    let mut c6 = [0u8; 16];
    c6[..4].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
    c6[15] = 7;
    let mut vip6 = [0u8; 16];
    vip6[..4].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
    vip6[15] = 1;
    let tcp6 = v6_tcp(c6, vip6, 4000, 443, 0x10);
    let (v6_ns, v6_floor_ns) =
        expect(&bal, "IPv6 phase (hits)", stat::CT_HIT, runs - 1, || repeated(&bal, &tcp6, repeat, TX));
    let other = v4([10, 9, 9, 9], [192, 0, 2, 99], 6, 4000, 22, 0x10);
    let (pass_ns, pass_floor_ns) =
        expect(&bal, "pass phase", stat::PASSED, runs, || repeated(&bal, &other, repeat, PASS));
    // Not a VIP, but to a port some VIP uses: the port prefilter lets it through to the connection and VIP lookups.
    let other80 = v4([10, 9, 9, 9], [192, 0, 2, 99], 6, 4000, 80, 0x10);
    let (pass80_ns, pass80_floor_ns) =
        expect(&bal, "pass phase (VIP port)", stat::PASSED, runs, || repeated(&bal, &other80, repeat, PASS));
    // A run with repeat = 1 costs more than the program: timer reads around the single run, and caches the
    // syscall path cooled. The floor shows that extra (floor1 - floor); syn_net subtracts it, for a ratio against
    // the warm floor. (It also subtracts the floor's own cold-cache cost, so it is an estimate, not a bound.)
    let overhead = (floor1_ns - floor_ns).max(0.0);
    let syn_net = syn_ns - overhead;
    println!(
        "syn_ns={syn_ns:.1} est_ns={est_ns:.1} floor_ns={floor_ns:.1} est_vs_floor={:.2} syn_vs_floor={:.2} \
         syn_net_ns={syn_net:.1} syn_net_vs_floor={:.2} est1_ns={est1_ns:.1} floor1_ns={floor1_ns:.1} \
         est1_vs_floor1={:.2} udp_ns={udp_ns:.1} udp_vs_floor={:.2} v6_ns={v6_ns:.1} v6_vs_floor={:.2} \
         pass_ns={pass_ns:.1} pass_vs_floor={:.2} pass_vip_port_ns={pass80_ns:.1} pass_vip_port_vs_floor={:.2}",
        est_ns / floor_ns,
        syn_ns / floor1_ns,
        syn_net / floor_ns,
        est1_ns / est1_floor_ns,
        udp_ns / udp_floor_ns,
        v6_ns / v6_floor_ns,
        pass_ns / pass_floor_ns,
        pass80_ns / pass80_floor_ns,
    );
}
