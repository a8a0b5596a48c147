//! End-to-end L4 in network namespaces: client -> Padis (XDP, native mode, on a veth) -> backends (VIP on `lo`,
//! DSR by MAC rewrite) on one bridged L2 segment. Real TCP connections, real health checks. Needs root.

use std::collections::HashSet;
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
        let got: HashSet<String> = r.vips[0].backends.iter().filter(|b| b.in_table).map(|b| b.addr.to_string()).collect();
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
