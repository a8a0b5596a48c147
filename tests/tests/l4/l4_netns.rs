//! End-to-end L4 in network namespaces: client -> Padis (XDP, native mode, on a veth) -> backends (VIP on `lo`,
//! DSR by MAC rewrite) on one bridged L2 segment. Real TCP connections, real health checks. Needs root.

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use padis_tests::l4::{backend_addr, Lan, PadisL4, PinGuard, VIP};
use padis_tests::netns::unique_name;

const PORT: u16 = 8080;

fn config(instance: &str, backends: &[usize], keep_attached: bool) -> String {
    let mut s = format!(
        r#"
[l4]
interfaces = ["eth0"]
instance = "{instance}"
xdp_mode = "native"
keep_attached = {keep_attached}
max_vips = 4
max_backends = 64
max_flows = 65536

[l4.vip.web]
table_size = 2003
health = {{ kind = "tcp", interval = "200ms", timeout = "200ms", rise = 1, fall = 2 }}

[[vip]]
name = "web"
addr = "{VIP}"
port = {PORT}
"#
    );
    for &i in backends {
        s.push_str(&format!("[[vip.backend]]\naddr = \"{}\"\n", backend_addr(i)));
    }
    s
}

/// Waits (bounded) until the plane has exactly `want` backends of VIP `web` in its table.
fn wait_in_table(p: &PadisL4, want: &[usize]) {
    let want: HashSet<String> = want.iter().map(|&i| backend_addr(i)).collect();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let r = p.report().expect("report");
        let got: HashSet<String> =
            r.vips[0].backends.iter().filter(|b| b.in_table).map(|b| b.addr.to_string()).collect();
        if got == want {
            return;
        }
        assert!(Instant::now() < deadline, "backends in table {got:?}, want {want:?}; report {r:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn l4_e2e_spread_churn_and_health() {
    let mut lan = Lan::new(3, PORT).expect("topology");
    let instance = unique_name("e2e");
    let _pins = PinGuard(instance.clone());
    let padis = PadisL4::start(&lan.padis, &config(&instance, &[0, 1, 2], false)).expect("start L4 plane");
    wait_in_table(&padis, &[0, 1, 2]);
    assert_eq!(padis.report().unwrap().interfaces, vec![("eth0".to_string(), "native".to_string())]);

    // Many connections spread over every backend.
    let mut seen = HashSet::new();
    for _ in 0..60 {
        match lan.ask_once() {
            Ok(b) => seen.insert(b),
            Err(e) => {
                if std::env::var("L4_DEBUG_SLEEP").is_ok() {
                    std::thread::sleep(Duration::from_secs(40));
                }
                panic!("request through the VIP: {e}; report {:?}", padis.report())
            }
        };
    }
    assert_eq!(seen, HashSet::from(["b0".to_string(), "b1".into(), "b2".into()]));

    // Long-lived connections.
    let mut long: Vec<_> = (0..24)
        .map(|_| {
            let mut c = lan.connect().expect("connect");
            let b = c.ask().expect("first answer");
            (c, b)
        })
        .collect();

    // Ten more backends: established connections stay where they are, new ones reach the newcomers.
    for _ in 0..10 {
        lan.add_backend().expect("backend");
    }
    let all: Vec<usize> = (0..13).collect();
    padis.publish(&config(&instance, &all, false)).unwrap();
    wait_in_table(&padis, &all);
    for (c, b) in long.iter_mut() {
        assert_eq!(&c.ask().expect("long-lived connection after adding backends"), b);
    }
    let mut newcomers = 0;
    for _ in 0..80 {
        let b = lan.ask_once().expect("request");
        if b[1..].parse::<usize>().unwrap() >= 3 {
            newcomers += 1;
        }
    }
    assert!(newcomers > 20, "new flows reach the new backends ({newcomers}/80)");

    // Five of the new backends removed: the long-lived connections are unaffected.
    let kept: Vec<usize> = (0..8).collect();
    padis.publish(&config(&instance, &kept, false)).unwrap();
    wait_in_table(&padis, &kept);
    for (c, b) in long.iter_mut() {
        assert_eq!(&c.ask().expect("long-lived connection after removing backends"), b);
    }
    for _ in 0..40 {
        let b = lan.ask_once().expect("request");
        assert!(b[1..].parse::<usize>().unwrap() < 8, "flow sent to removed backend {b}");
    }

    // A killed backend leaves the table by its health check; requests keep succeeding on the others.
    if let Some(s) = lan.servers[1].as_mut() {
        s.stop();
    }
    let alive: Vec<usize> = kept.iter().copied().filter(|&i| i != 1).collect();
    wait_in_table(&padis, &alive);
    for _ in 0..40 {
        assert_ne!(lan.ask_once().expect("request after a backend died"), "b1");
    }
    let r = padis.report().unwrap();
    assert!(r.vips[0].packets > 100, "VIP counters: {:?}", r.vips[0]);
    assert!(r.stats["forwarded"].packets > 100 && r.stats["ct_hit"].packets > 0, "{:?}", r.stats);
    assert!(!r.vips[0].backends.iter().find(|b| b.addr.to_string() == backend_addr(1)).unwrap().usable);
    // The same counters as Prometheus metrics.
    let m = padis.metrics().unwrap();
    let vip_packets: f64 = m
        .lines()
        .find(|l| l.starts_with("padis_l4_vip_packets_total{vip=\"web\"}"))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no padis_l4_vip_packets_total in\n{m}"));
    assert!(vip_packets > 100.0);
    assert!(m.contains("padis_l4_packets_total{event=\"forwarded\"}"));
    assert!(m.contains("padis_l4_vip_backends_in_table{vip=\"web\"} 7"), "{m}");

    // Shutdown without keep_attached detaches the program from the interface.
    padis.stop();
    let link = lan.padis.run(&["ip", "link", "show", "eth0"]).unwrap();
    let link = String::from_utf8_lossy(&link.stdout);
    assert!(!link.contains("prog/xdp"), "still attached after shutdown: {link}");
    assert!(lan.ask_once().is_err(), "VIP still served after Padis stopped and detached");
}

#[test]
fn l4_e2e_restart_keeps_flows() {
    let lan = Lan::new(3, PORT).expect("topology");
    let instance = unique_name("e2e");
    let _pins = PinGuard(instance.clone());
    let cfg = config(&instance, &[0, 1, 2], true);
    let padis = PadisL4::start(&lan.padis, &cfg).expect("start L4 plane");
    wait_in_table(&padis, &[0, 1, 2]);
    let mut long: Vec<_> = (0..12)
        .map(|_| {
            let mut c = lan.connect().expect("connect");
            let b = c.ask().expect("first answer");
            (c, b)
        })
        .collect();

    // Padis stops with keep_attached: the program keeps forwarding from its pinned maps.
    padis.stop();
    for (c, b) in long.iter_mut() {
        assert_eq!(&c.ask().expect("connection while Padis is down"), b);
    }
    lan.ask_once().expect("new connection while Padis is down");

    // Padis starts again: takes the attachment and the state over; nothing moves.
    let padis = PadisL4::start(&lan.padis, &cfg).expect("restart L4 plane");
    wait_in_table(&padis, &[0, 1, 2]);
    for (c, b) in long.iter_mut() {
        assert_eq!(&c.ask().expect("connection after restart"), b);
    }
    let r = padis.report().unwrap();
    assert_eq!(r.interfaces, vec![("eth0".to_string(), "pinned".to_string())]);
    let mut seen = HashSet::new();
    for _ in 0..30 {
        seen.insert(lan.ask_once().expect("request after restart"));
    }
    assert_eq!(seen.len(), 3);
}

/// A second address of the client namespace, the source of the SYN flood.
const FLOODER: [u8; 4] = [10, 77, 0, 5];

/// Sends `count` TCP SYNs from `src` (source ports cycling from 10000) to the VIP through a raw socket, at most
/// `per_sec` a second. Returns (SYNs sent, seconds taken).
fn syn_flood(src: [u8; 4], count: u32, per_sec: u32) -> (u32, f64) {
    let vip: Ipv4Addr = VIP.parse().expect("VIP");
    // SAFETY: plain socket(2) call; the fd is closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
    assert!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
    let dst = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(vip.octets()) },
        sin_zero: [0; 8],
    };
    let start = Instant::now();
    let mut sent = 0;
    for i in 0..count {
        let due = start + Duration::from_secs_f64(f64::from(i) / f64::from(per_sec));
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let mut pkt = Vec::new();
        etherparse::PacketBuilder::ipv4(src, vip.octets(), 64)
            .tcp(10000 + (i % 50000) as u16, PORT, i, 64240)
            .syn()
            .write(&mut pkt, &[])
            .expect("build SYN");
        // SAFETY: the buffer and the address outlive the call; lengths are theirs.
        let n = unsafe {
            libc::sendto(
                fd,
                pkt.as_ptr().cast(),
                pkt.len(),
                0,
                (&dst as *const libc::sockaddr_in).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        if n == pkt.len() as isize {
            sent += 1;
        }
    }
    // SAFETY: closes the fd opened above.
    unsafe { libc::close(fd) };
    (sent, start.elapsed().as_secs_f64())
}

#[test]
fn l4_e2e_source_limit_drops_one_sources_syn_flood() {
    let lan = Lan::new(2, PORT).expect("topology");
    let flooder = Ipv4Addr::from(FLOODER).to_string();
    lan.client.run(&["ip", "addr", "add", &format!("{flooder}/24"), "dev", "eth0"]).expect("flooder address");
    let instance = unique_name("e2e");
    let _pins = PinGuard(instance.clone());
    let (rate, burst) = (20.0, 20.0);
    let limit = "[l4.source_limit]\nnew_flows_per_sec = 20\nburst = 20\n";
    let cfg = format!("{}\n{limit}", config(&instance, &[0, 1], false));
    let padis = PadisL4::start(&lan.padis, &cfg).expect("start L4 plane");
    wait_in_table(&padis, &[0, 1]);

    // One source floods (3000 SYNs at 2000/s) while the client's own address opens real connections.
    let flood = lan.client.spawn(|| syn_flood(FLOODER, 3000, 2000)).expect("flood thread");
    let mut answered = 0;
    let deadline = Instant::now() + Duration::from_secs(20);
    while !flood.is_finished() && Instant::now() < deadline {
        lan.ask_once().expect("a connection from another source during the flood");
        answered += 1;
    }
    let (sent, secs) = flood.join().expect("flood");
    assert!(sent >= 2900, "flood sent {sent}");
    assert!(answered >= 5, "only {answered} connections while the flood ran");

    // At most burst + rate x time of the flood's SYNs passed (plus slack for CPUs racing on one prefix).
    let r = padis.report().expect("report");
    let limited = r.vips[0].rate_limited;
    let allowed = burst + rate * (secs + 1.0) + f64::from(sent) * 0.02;
    assert!(limited <= u64::from(sent), "{limited} dropped of {sent}");
    assert!(
        f64::from(sent) - limited as f64 <= allowed,
        "{limited} of {sent} dropped in {secs:.2}s, allowed {allowed}"
    );
    let m = padis.metrics().expect("metrics");
    let metric = format!("padis_l4_vip_rate_limited_packets_total{{vip=\"web\"}} {limited}");
    assert!(m.contains(&metric), "no `{metric}` in\n{m}");
    // The other source was never limited: more connections succeed at once.
    for _ in 0..10 {
        lan.ask_once().expect("connection after the flood");
    }
    assert_eq!(padis.report().expect("report").vips[0].rate_limited, limited, "no drop for the other source");
}
