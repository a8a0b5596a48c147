//! Benchmark of connection-table sync (root, BPF): the XDP new-flow cost with sync off and on
//! (BPF_PROG_TEST_RUN, repeat = 1, distinct SYNs), the codec (encode + authenticate + decode) and the
//! `BPF_NOEXIST` insert rate of received records. Ends with a `RESULT suite=l4-sync ...` line.
//!
//! `CARGO_TARGET_DIR=target-l4sync cargo run --release -p padis-l4 --example sync_bench [flows]`

use std::path::Path;
use std::time::Instant;

use padis_ebpf_common::{config_flags, v4_mapped, FlowKey, FlowState};
use padis_l4::conntrack::Inserted;
use padis_l4::programmer::Programmer;
use padis_l4::sync::{decode, encode_flows, Origin, SyncKey, WireFlow};
use padis_l4::{desired, Balancer, LoadOptions};

const CONFIG: &str = r#"
[l4]
max_new_flows_per_sec = 0
[l4.neighbors]
"10.0.0.11" = "02:00:00:00:00:11"
"10.0.0.12" = "02:00:00:00:00:12"
"10.0.0.13" = "02:00:00:00:00:13"
[[vip]]
name = "web"
addr = "192.0.2.1"
port = 80
backend = [{ addr = "10.0.0.11" }, { addr = "10.0.0.12" }, { addr = "10.0.0.13" }]
"#;

/// An Ethernet + IPv4 + TCP SYN frame from `src:sport` to 192.0.2.1:80.
fn syn(src: [u8; 4], sport: u16) -> Vec<u8> {
    let mut f = vec![2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2, 0x08, 0x00];
    let mut ip = vec![0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, 6, 0, 0];
    ip.extend_from_slice(&src);
    ip.extend_from_slice(&[192, 0, 2, 1]);
    let sum = ip.chunks(2).fold(0u32, |a, w| a + u16::from_be_bytes([w[0], w[1]]) as u32);
    let sum = !(((sum & 0xffff) + (sum >> 16)) as u16);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&sport.to_be_bytes());
    f.extend_from_slice(&80u16.to_be_bytes());
    f.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xfa, 0xf0, 0, 0, 0, 0]);
    f
}

fn flow_src(i: u32) -> [u8; 4] {
    [10, 100 + (i >> 16) as u8, (i >> 8) as u8, i as u8]
}

/// Mean kernel ns per SYN over `n` distinct flows (`salt` keeps runs' flows apart); drains the ring as it goes.
fn syn_cost(bal: &mut Balancer, n: u32, salt: u16) -> Result<f64, Box<dyn std::error::Error>> {
    let mut total = 0.0;
    for i in 0..n {
        let (_, ns) = bal.test_run_timed(&syn(flow_src(i), 1024 + salt))?;
        total += ns;
        if i % 4096 == 4095 {
            if let Some(r) = bal.maps.sync_ring.as_mut() {
                while r.next().is_some() {}
            }
        }
    }
    Ok(total / n as f64)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n: u32 = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(50_000);
    let valid = padis_model::parse_config(CONFIG, "bench.toml", Path::new("."))?;
    let opts = LoadOptions::private(4, 16, 1 << 20);
    let mut bal = Balancer::load(opts.clone())?;
    let mut prog = Programmer::new(opts.max_vips, opts.max_rings(), opts.max_backends);
    let mut d = desired::compute(&valid.state.l4, &valid.state.vips, &|_, _| true, &mut |_| None);
    prog.apply(&mut bal.maps, &d)?;

    // Alternate rounds so that machine noise hits both alike.
    let (mut off, mut on) = (Vec::new(), Vec::new());
    for round in 0..3u16 {
        d.global.flags = 0;
        prog.apply(&mut bal.maps, &d)?;
        off.push(syn_cost(&mut bal, n, round * 2)?);
        d.global.flags = config_flags::SYNC;
        prog.apply(&mut bal.maps, &d)?;
        on.push(syn_cost(&mut bal, n, round * 2 + 1)?);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    let (off, on) = (median(&mut off), median(&mut on));
    println!("new flow (SYN), sync off: {off:.0} ns/packet; sync on: {on:.0} ns/packet (median of 3 x {n} flows)");

    // Codec: encode + HMAC + verify + decode.
    let key = SyncKey::new(b"a shared secret of 32 bytes!!!!!");
    let flows: Vec<WireFlow> = (0..n)
        .map(|i| WireFlow {
            key: FlowKey {
                src: v4_mapped(flow_src(i)),
                dst: v4_mapped([192, 0, 2, 1]),
                sport: 7777u16.to_be(),
                dport: 80u16.to_be(),
                proto: 6,
                pad: [0; 3],
            },
            backend: v4_mapped([10, 0, 0, 11]),
        })
        .collect();
    let t = Instant::now();
    let wire = encode_flows(&Origin::new(1, 1), &flows, &key);
    let mut decoded = 0usize;
    for d in &wire {
        if let Ok(padis_l4::sync::Message { body: padis_l4::sync::Body::Flows(f), .. }) = decode(d, &key) {
            decoded += f.len();
        }
    }
    let codec = decoded as f64 / t.elapsed().as_secs_f64();
    println!("codec: {codec:.0} records/s ({} datagrams for {decoded} records)", wire.len());

    // Receiver side: inserts of new flows only (the daemon's insert path; IPv4 flows are written in the mapped table).
    let idx = prog.backend_slots().first().map(|s| s.1).unwrap_or(0);
    let t = Instant::now();
    let mut inserted = 0u64;
    for f in &flows {
        if bal
            .maps
            .conntrack
            .insert(f.key, FlowState { backend: idx, vip: 0 }, true)
            .is_ok_and(|i| i == Inserted::Added)
        {
            inserted += 1;
        }
    }
    let insert = inserted as f64 / t.elapsed().as_secs_f64();
    println!("connection-table inserts (new flows only): {insert:.0} records/s ({inserted} inserted)");
    println!(
        "RESULT suite=l4-sync syn_ns_off={off:.0} syn_ns_on={on:.0} sync_overhead_ns={:.0} codec_records_per_s={codec:.0} insert_records_per_s={insert:.0}",
        on - off
    );
    Ok(())
}
