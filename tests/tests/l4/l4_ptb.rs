//! End-to-end ICMPv6 "packet too big": a client namespace sends an IPv6 datagram that fits its link but not the
//! IP-in-IP encapsulation Padis (native XDP on a veth) would add; Padis answers with ICMPv6 "packet too big" and
//! the client's Linux kernel accepts it: its route cache to the VIP shows the lower MTU and the connected socket
//! gets EMSGSIZE. (Nothing is decapsulated here: the machine has no IPIP/ip6_tunnel module, and the error is
//! generated before any encapsulation.) Needs root.

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use padis_tests::l4::{Lan, PadisL4, PinGuard};
use padis_tests::netns::unique_name;

const VIP6: &str = "fd77:100::1";
const CLIENT6: &str = "fd77::1";
const PADIS6: &str = "fd77::2";
const PORT: u16 = 9999;

fn config(instance: &str) -> String {
    format!(
        r#"
[l4]
interfaces = ["eth0"]
instance = "{instance}"
xdp_mode = "native"
next_hop_mac = "02:00:00:00:00:fe"
mtu = 1500
max_vips = 4
max_backends = 16
max_flows = 4096

[l4.vip.ptb]
table_size = 101
forwarding = "ipip"

[[vip]]
name = "ptb"
addr = "{VIP6}"
port = {PORT}
protocol = "udp"
[[vip.backend]]
addr = "fd00::99"
"#
    )
}

/// `ip -6 route get VIP6` in the client namespace.
fn route_to_vip(lan: &Lan) -> String {
    lan.client.try_ip(&["-6", "route", "get", VIP6])
}

#[test]
fn l4_ptb_client_kernel_lowers_its_path_mtu() {
    let lan = Lan::new(0, PORT).expect("topology");
    lan.client.run(&["ip", "addr", "add", &format!("{CLIENT6}/64"), "dev", "eth0", "nodad"]).expect("client v6");
    lan.padis.run(&["ip", "addr", "add", &format!("{PADIS6}/64"), "dev", "eth0", "nodad"]).expect("padis v6");
    lan.client.run(&["ip", "-6", "route", "add", &format!("{VIP6}/128"), "via", PADIS6]).expect("route to VIP");
    let instance = unique_name("ptb");
    let _pins = PinGuard(instance.clone());
    let padis = PadisL4::start(&lan.padis, &config(&instance)).expect("start L4 plane");
    assert!(!route_to_vip(&lan).contains("mtu"), "a path MTU before any error: {}", route_to_vip(&lan));

    let sock = lan
        .client
        .enter(|| UdpSocket::bind(format!("[{CLIENT6}]:0")))
        .expect("enter client netns")
        .expect("bind client socket");
    sock.connect(format!("[{VIP6}]:{PORT}")).expect("connect");
    // 40 (IPv6) + 8 (UDP) + 1452 = 1500: fits the client's link, not 1500 + the 40-byte outer header.
    let datagram = [0x5a; 1452];
    let deadline = Instant::now() + Duration::from_secs(20);
    let (mut sent, mut told) = (0, false);
    let (route, pending) = loop {
        // Resent until the error is seen: the first datagram may wait for neighbour discovery.
        match sock.send(&datagram) {
            Ok(_) => sent += 1,
            Err(e) if e.raw_os_error() == Some(libc::EMSGSIZE) => told = true,
            Err(e) => panic!("send: {e}"),
        }
        std::thread::sleep(Duration::from_millis(200));
        let route = route_to_vip(&lan);
        if route.contains("mtu 1460") {
            break (route, sock.take_error());
        }
        assert!(
            Instant::now() < deadline,
            "no path MTU after {sent} datagrams: route {route}; Padis counters {:?}",
            padis.report().map(|r| r.stats)
        );
    };
    assert!(route.contains("expires"), "a learnt (expiring) path MTU: {route}");
    let stats = padis.report().expect("report").stats;
    let too_big = stats.get("icmp_too_big_sent").map(|c| c.packets).unwrap_or(0);
    assert!(too_big >= 1, "icmp_too_big_sent {too_big}: {stats:?}");
    assert_eq!(stats.get("forwarded").map(|c| c.packets), Some(0), "nothing oversize was forwarded");
    // The connected socket was told too (a pending error, or already returned by a later send).
    match pending.expect("take_error") {
        Some(e) => assert_eq!(e.raw_os_error(), Some(libc::EMSGSIZE), "{e}"),
        None => assert!(told, "no EMSGSIZE reported to the socket"),
    }
}
