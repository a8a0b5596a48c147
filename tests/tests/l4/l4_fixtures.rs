//! XDP balancer fixtures through BPF_PROG_TEST_RUN (as Katran's): input packet, expected verdict, expected output
//! frame byte for byte; checksums of generated headers verified with etherparse. Needs root (BPF).
//!
//! [`CASES`] is the table of packet fixtures (description, config, input frame, verdict, output frame, counters),
//! run in order by one runner, [`packet_fixtures`]: adding a fixture is adding a row. The tests after it are
//! scenarios that loop over many flows, change health, time or pins, or check properties (random frames).

use etherparse::{
    Icmpv4Header, Icmpv4Type, Icmpv6Header, Icmpv6Type, IpNumber, Ipv4Header, Ipv4HeaderSlice, Ipv6Header,
    PacketBuilder, SlicedPacket, TransportSlice,
};
use padis_ebpf_common::{flow_hash, stat, v4_mapped, FlowKey};
use padis_tests::l4::{verdict, Fixture};

const NODE: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const ROUTER: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
const NEXT_HOP: [u8; 6] = [0x02, 0, 0, 0, 0, 0xfe];
const B11: [u8; 6] = [0x02, 0, 0, 0, 0, 0x11];
const B12: [u8; 6] = [0x02, 0, 0, 0, 0, 0x12];
const B13: [u8; 6] = [0x02, 0, 0, 0, 0, 0x13];
const B6: [u8; 6] = [0x02, 0, 0, 0, 0x01, 0x11];
const VIP: [u8; 4] = [192, 0, 2, 1];
const VIP6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
const CLIENT: [u8; 4] = [198, 51, 100, 7];
const CLIENT6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0x99, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7];

const BASE: &str = r#"
[l4]
next_hop_mac = "02:00:00:00:00:fe"
mtu = 1500
[l4.neighbors]
"10.0.0.11" = "02:00:00:00:00:11"
"10.0.0.12" = "02:00:00:00:00:12"
"10.0.0.13" = "02:00:00:00:00:13"
"fd00::11" = "02:00:00:00:01:11"
"#;

fn config(extra: &str) -> String {
    format!("{BASE}{extra}")
}

fn one_backend_web() -> String {
    config(
        r#"
[l4.vip.web]
table_size = 101
[[vip]]
name = "web"
addr = "192.0.2.1"
port = 80
[[vip.backend]]
addr = "10.0.0.11"
"#,
    )
}

fn tcp4(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16, syn: bool, rst: bool, payload: &[u8]) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(ROUTER, NODE).ipv4(src, dst, 64).tcp(sport, dport, 1000, 64240);
    let b = if syn { b.syn() } else { b.ack(1) };
    let b = if rst { b.rst() } else { b };
    let mut v = Vec::new();
    b.write(&mut v, payload).unwrap();
    v
}

fn udp4(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    PacketBuilder::ethernet2(ROUTER, NODE).ipv4(src, dst, 64).udp(sport, dport).write(&mut v, payload).unwrap();
    v
}

fn udp6(src: [u8; 16], sport: u16, dst: [u8; 16], dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    PacketBuilder::ethernet2(ROUTER, NODE).ipv6(src, dst, 64).udp(sport, dport).write(&mut v, payload).unwrap();
    v
}

/// The DSR output: same frame, destination = backend MAC, source = the MAC it was sent to.
fn dsr(input: &[u8], backend_mac: [u8; 6]) -> Vec<u8> {
    let mut v = input.to_vec();
    v[..6].copy_from_slice(&backend_mac);
    v[6..12].copy_from_slice(&input[..6]);
    v
}

fn ipv4_checksum_ok(ip: &[u8]) -> bool {
    let s = Ipv4HeaderSlice::from_slice(ip).unwrap();
    s.to_header().calc_header_checksum() == s.header_checksum()
}

fn wire(port: u16) -> u16 {
    port.to_be()
}

/// What a case expects of the frame the program returns.
enum Out {
    /// The input, unchanged (passed or dropped).
    Same,
    /// DSR: the input with the destination MAC set to this backend's and the source MAC to the one it was sent to.
    Dsr([u8; 6]),
    /// Exactly these bytes, computed from the input.
    Frame(fn(&[u8]) -> Vec<u8>),
    /// Not compared as a whole (the case's `check` looks at it).
    Any,
}

/// Which balancer a case runs on.
enum Setup {
    /// A freshly loaded one, programmed with this config.
    Load(fn() -> String),
    /// The previous case's, re-programmed with this config (a diff, as on a reload).
    Program(fn() -> String),
    /// The previous case's, as it is (its connection table and counters included).
    Keep,
}

/// One fixture, as Katran's `KatranTestFixtures.h`: a description, the config, one input frame, the expected
/// verdict and output frame; plus the global counters (`stat::*`) expected after it and an optional extra check
/// (a generated header's checksum, the connection table). Adding a fixture is adding a row to [`CASES`].
struct Case {
    desc: &'static str,
    setup: Setup,
    input: fn() -> Vec<u8>,
    verdict: u32,
    out: Out,
    stats: &'static [(u32, u64)],
    check: Option<Check>,
}

/// A case's extra check: the fixture after the run, the input frame and the output frame.
type Check = fn(&Fixture, &[u8], &[u8]);

const fn case(desc: &'static str, setup: Setup, input: fn() -> Vec<u8>, verdict: u32, out: Out) -> Case {
    Case { desc, setup, input, verdict, out, stats: &[], check: None }
}

impl Case {
    const fn stats(mut self, stats: &'static [(u32, u64)]) -> Case {
        self.stats = stats;
        self
    }

    const fn check(mut self, check: Check) -> Case {
        self.check = Some(check);
        self
    }
}

use verdict::{DROP, PASS, TX};
use Out::{Any, Dsr, Frame, Same};
use Setup::{Keep, Load, Program};

fn ipv6_vip() -> String {
    config(
        "[[vip]]\nname = \"v6\"\naddr = \"2001:db8::1\"\nport = 53\nprotocol = \"udp\"\n[[vip.backend]]\naddr = \
         \"fd00::11\"\n[l4.vip.v6]\ntable_size = 101\n",
    )
}

fn acl_web() -> String {
    let allow = "allow = [\"198.51.100.0/24\", \"2001:db8:99::/48\"]";
    one_backend_web().replace("table_size = 101", &format!("table_size = 101\n{allow}"))
}

fn other_vip_same_backend() -> String {
    one_backend_web()
        .replace("[l4.vip.web]", "[l4.vip.other]")
        .replace("\"web\"", "\"other\"")
        .replace("192.0.2.1", "192.0.2.2")
}

fn tagged_udp6() -> Vec<u8> {
    let mut v = Vec::new();
    PacketBuilder::ethernet2(ROUTER, NODE)
        .single_vlan(etherparse::VlanId::try_new(42).unwrap())
        .ipv6(CLIENT6, VIP6, 64)
        .udp(5353, 53)
        .write(&mut v, b"query")
        .unwrap();
    v
}

fn tcp6_to_udp_port() -> Vec<u8> {
    let mut t = Vec::new();
    let b = PacketBuilder::ethernet2(ROUTER, NODE).ipv6(CLIENT6, VIP6, 64);
    b.tcp(5353, 53, 1, 100).syn().write(&mut t, b"").unwrap();
    t
}

fn ping() -> Vec<u8> {
    let mut v = Vec::new();
    let b = PacketBuilder::ethernet2(ROUTER, NODE).ipv4(CLIENT, VIP, 64);
    b.icmpv4_echo_request(1, 1).write(&mut v, b"ping").unwrap();
    v
}

fn arp() -> Vec<u8> {
    let mut arp = vec![0xff; 6];
    arp.extend_from_slice(&ROUTER);
    arp.extend_from_slice(&[0x08, 0x06, 0, 1, 8, 0, 6, 4, 0, 1]);
    arp.extend_from_slice(&ROUTER);
    arp.extend_from_slice(&CLIENT);
    arp.extend_from_slice(&[0; 6]);
    arp.extend_from_slice(&VIP);
    arp
}

/// UDP to the VIP with the more-fragments bit.
fn more_fragments() -> Vec<u8> {
    let mut v = udp4(CLIENT, 4000, VIP, 80, &[0u8; 64]);
    v[20] |= 0x20;
    v
}

/// A non-first TCP fragment (offset 8) to the VIP.
fn later_fragment() -> Vec<u8> {
    let mut v = tcp4(CLIENT, 4000, VIP, 80, false, false, &[0u8; 64]);
    v[21] = 1;
    v
}

/// A SYN to the VIP with IPv4 options (IHL 6, one NOP word).
fn ipv4_options() -> Vec<u8> {
    let base = tcp4(CLIENT, 4000, VIP, 80, true, false, b"");
    let mut opt = base[..34].to_vec();
    opt.extend_from_slice(&[1, 1, 1, 0]);
    opt.extend_from_slice(&base[34..]);
    opt[14] = 0x46;
    let tl = u16::from_be_bytes([opt[16], opt[17]]) + 4;
    opt[16..18].copy_from_slice(&tl.to_be_bytes());
    opt
}

fn fragment_to_other_address() -> Vec<u8> {
    let mut v = udp4(CLIENT, 4000, [192, 0, 2, 77], 80, &[0u8; 16]);
    v[20] |= 0x20;
    v
}

/// UDP to the IPv6 VIP behind an IPv6 fragment header.
fn ipv6_fragment() -> Vec<u8> {
    let mut v6 = Vec::new();
    v6.extend_from_slice(&NODE);
    v6.extend_from_slice(&ROUTER);
    v6.extend_from_slice(&[0x86, 0xdd]);
    let ip = Ipv6Header {
        payload_length: 16,
        next_header: IpNumber::IPV6_FRAGMENTATION_HEADER,
        hop_limit: 64,
        source: CLIENT6,
        destination: VIP6,
        ..Default::default()
    };
    ip.write(&mut v6).unwrap();
    v6.extend_from_slice(&[17, 0, 0, 1, 0, 0, 0, 1, 0x13, 0x88, 0, 53, 0, 8, 0, 0]);
    v6
}

/// IPIP: the input inside an outer IPv4 header from 172.16.<flow hash> to backend 10.0.0.12, towards the next hop.
fn ipip4_expected(input: &[u8]) -> Vec<u8> {
    let ports = (u16::from_be_bytes([input[34], input[35]]), u16::from_be_bytes([input[36], input[37]]));
    let (src, dst) = (v4_mapped(CLIENT), v4_mapped(VIP));
    let key = FlowKey { src, dst, sport: wire(ports.0), dport: wire(ports.1), proto: 6, pad: [0; 3] };
    let h = flow_hash(&key);
    let inner = &input[14..];
    let mut outer = Ipv4Header {
        time_to_live: 64,
        protocol: IpNumber::IPV4,
        source: [172, 16, (h >> 8) as u8, h as u8],
        destination: [10, 0, 0, 12],
        dont_fragment: false,
        ..Default::default()
    };
    outer.set_payload_len(inner.len()).unwrap();
    outer.header_checksum = outer.calc_header_checksum();
    let mut expected = Vec::new();
    expected.extend_from_slice(&NEXT_HOP);
    expected.extend_from_slice(&NODE);
    expected.extend_from_slice(&[0x08, 0x00]);
    expected.extend_from_slice(&outer.to_bytes());
    expected.extend_from_slice(inner);
    expected
}

fn ipip6_web() -> String {
    config(
        "[l4.vip.web6]\ntable_size = 101\nforwarding = \"ipip\"\n[[vip]]\nname = \"web6\"\naddr = \"2001:db8::1\"\n\
         port = 443\n[[vip.backend]]\naddr = \"fd00::11\"\n",
    )
}

fn syn6_443() -> Vec<u8> {
    let mut pkt = Vec::new();
    let b = PacketBuilder::ethernet2(ROUTER, NODE).ipv6(CLIENT6, VIP6, 64);
    b.tcp(5555, 443, 7, 100).syn().write(&mut pkt, b"").unwrap();
    pkt
}

/// IPIP over IPv6: an outer IPv6 header (source 0100::<flow hash>, flow label from the hash) to fd00::11.
fn ipip6_expected(pkt: &[u8]) -> Vec<u8> {
    let h = flow_hash(&FlowKey { src: CLIENT6, dst: VIP6, sport: wire(5555), dport: wire(443), proto: 6, pad: [0; 3] });
    let mut src = [0u8; 16];
    src[0] = 1;
    src[12..16].copy_from_slice(&h.to_be_bytes());
    let outer = Ipv6Header {
        traffic_class: 0,
        flow_label: etherparse::Ipv6FlowLabel::try_new(h & 0xfffff).unwrap(),
        payload_length: (pkt.len() - 14) as u16,
        next_header: IpNumber::IPV6_HEADER_HOP_BY_HOP.0.wrapping_add(41).into(),
        hop_limit: 64,
        source: src,
        destination: "fd00::11".parse::<std::net::Ipv6Addr>().unwrap().octets(),
    };
    let mut expected = Vec::new();
    expected.extend_from_slice(&NEXT_HOP);
    expected.extend_from_slice(&NODE);
    expected.extend_from_slice(&[0x86, 0xdd]);
    outer.write(&mut expected).unwrap();
    expected.extend_from_slice(&pkt[14..]);
    expected
}

/// A 1460-byte TCP payload to the IPIP VIP, with or without DF: 1500 bytes of IP, too big once encapsulated.
fn big4(df: bool) -> Vec<u8> {
    let ip = Ipv4Header {
        time_to_live: 64,
        protocol: IpNumber::TCP,
        source: CLIENT,
        destination: VIP,
        dont_fragment: df,
        ..Default::default()
    };
    let mut big = Vec::new();
    PacketBuilder::ethernet2(ROUTER, NODE)
        .ip(etherparse::IpHeaders::Ipv4(ip, Default::default()))
        .tcp(7, 80, 1, 100)
        .ack(1)
        .write(&mut big, &[0x5au8; 1460])
        .unwrap();
    big
}

/// ICMP "fragmentation needed" back to the client: next-hop MTU 1480, the first 28 bytes quoted, checksums right.
fn check_frag_needed(_: &Fixture, input: &[u8], out: &[u8]) {
    assert_eq!(&out[..6], &ROUTER);
    assert!(ipv4_checksum_ok(&out[14..34]));
    let p = SlicedPacket::from_ethernet(out).unwrap();
    let Some(TransportSlice::Icmpv4(icmp)) = p.transport else { panic!("not ICMP: {p:?}") };
    let frag = etherparse::icmpv4::DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: 1480 };
    assert_eq!(icmp.icmp_type(), Icmpv4Type::DestinationUnreachable(frag));
    assert_eq!(Icmpv4Header::with_checksum(icmp.icmp_type(), icmp.payload()).checksum, icmp.checksum());
    assert_eq!(icmp.payload(), &input[14..42]);
}

/// An ICMPv6 "packet too big" whose checksum etherparse accepts, for the MTU the output carries.
fn check_ptb6(_: &Fixture, _: &[u8], out: &[u8]) {
    let p = SlicedPacket::from_ethernet(out).unwrap();
    let Some(TransportSlice::Icmpv6(icmp)) = p.transport else { panic!("not ICMPv6: {p:?}") };
    assert!(icmp.is_checksum_valid(VIP6, CLIENT6), "etherparse: bad ICMPv6 checksum");
    assert!(matches!(icmp.icmp_type(), Icmpv6Type::PacketTooBig { mtu: 1460 | 1480 }), "{:?}", icmp.icmp_type());
}

/// Encapsulated towards the next hop, the inner packet intact after the outer header of the backend's family.
fn check_encapsulated(_: &Fixture, input: &[u8], out: &[u8]) {
    let l2 = if input[12..14] == [0x81, 0x00] { 18 } else { 14 };
    let olen = if input[l2 + 6] == 6 { 40 } else { 20 };
    assert_eq!(&out[..6], &NEXT_HOP, "encapsulated towards the next hop");
    assert_eq!(out.len(), input.len() + olen);
    assert_eq!(&out[l2 + olen..], &input[l2..], "inner packet intact");
}

/// An ICMPv6 error to the VIP quoting one of its flows, too big to be encapsulated.
fn big_icmp6_error() -> Vec<u8> {
    let mut quoted = Vec::new();
    PacketBuilder::ipv6(VIP6, CLIENT6, 60).tcp(443, 5555, 1, 100).ack(1).write(&mut quoted, &[0u8; 1400]).unwrap();
    let mut err = Vec::new();
    PacketBuilder::ethernet2(ROUTER, NODE)
        .ipv6(CLIENT6, VIP6, 64)
        .icmpv6(Icmpv6Type::DestinationUnreachable(etherparse::icmpv6::DestUnreachableCode::Address))
        .write(&mut err, &quoted[..1452])
        .unwrap();
    err
}

fn no_flow(f: &Fixture, _: &[u8], _: &[u8]) {
    assert_eq!(f.flows(), 0, "connection entries");
}

fn one_flow(f: &Fixture, _: &[u8], _: &[u8]) {
    assert_eq!(f.flows(), 1, "connection entries");
}

fn base() -> String {
    BASE.to_string()
}

fn udp6_dns() -> String {
    config(
        "[l4.vip.dns6]\ntable_size = 101\n[[vip]]\nname = \"dns6\"\naddr = \"2001:db8::1\"\nport = 53\n\
         protocol = \"udp\"\n[[vip.backend]]\naddr = \"fd00::11\"\n",
    )
}

fn ipip_web() -> String {
    config(IPIP)
}

fn ipip6_both() -> String {
    config(IPIP6)
}

/// The packet fixtures, run in order by [`packet_fixtures`]; a `Keep` row continues on the previous row's balancer.
const CASES: &[Case] = &[
    // DSR.
    case(
        "TCP SYN to an IPv4 VIP: DSR rewrites only the MACs",
        Load(one_backend_web),
        || tcp4(CLIENT, 40000, VIP, 80, true, false, b""),
        TX,
        Dsr(B11),
    )
    .stats(&[(stat::FORWARDED, 1), (stat::CT_MISS, 1)])
    .check(one_flow),
    case(
        "established packet of that flow: connection-table hit",
        Keep,
        || tcp4(CLIENT, 40000, VIP, 80, false, false, b"GET / HTTP/1.1\r\n\r\n"),
        TX,
        Dsr(B11),
    )
    .stats(&[(stat::CT_HIT, 1), (stat::FORWARDED, 2)]),
    case("UDP to an IPv6 VIP: DSR", Load(udp6_dns), || udp6(CLIENT6, 5353, VIP6, 53, b"query"), TX, Dsr(B6)),
    case("the same behind an 802.1Q tag: the tag stays", Keep, tagged_udp6, TX, Dsr(B6)),
    case("TCP to the UDP VIP's port is no VIP: passed", Keep, tcp6_to_udp_port, PASS, Same),
    // Not ours.
    case(
        "TCP to a non-VIP address: passed untouched",
        Load(one_backend_web),
        || tcp4(CLIENT, 40000, [192, 0, 2, 99], 80, true, false, b""),
        PASS,
        Same,
    ),
    case(
        "TCP to a VIP address on another port: passed",
        Keep,
        || tcp4(CLIENT, 40000, VIP, 22, true, false, b""),
        PASS,
        Same,
    ),
    case("ICMP echo to a VIP address is the node's business", Keep, ping, PASS, Same),
    case("ARP: passed", Keep, arp, PASS, Same).stats(&[(stat::FORWARDED, 0)]).check(no_flow),
    // Fragments and options.
    case("IPv4 more-fragments to a VIP: dropped", Load(one_backend_web), more_fragments, DROP, Same),
    case("IPv4 non-first fragment to a TCP VIP: dropped", Keep, later_fragment, DROP, Same)
        .stats(&[(stat::DROP_FRAGMENT, 2)]),
    case("IPv4 options to a VIP: dropped", Keep, ipv4_options, DROP, Same).stats(&[(stat::DROP_IP_OPTIONS, 1)]),
    case("a fragment to a non-VIP address is not ours", Keep, fragment_to_other_address, PASS, Same),
    case("IPv6 fragment header to a VIP: dropped", Load(ipv6_vip), ipv6_fragment, DROP, Same)
        .stats(&[(stat::DROP_FRAGMENT, 1)]),
    // ACL.
    case(
        "ACL: a listed source is forwarded",
        Load(acl_web),
        || tcp4(CLIENT, 1234, VIP, 80, true, false, b""),
        TX,
        Dsr(B11),
    ),
    case(
        "ACL: another source is dropped, no entry",
        Keep,
        || tcp4([203, 0, 113, 5], 1234, VIP, 80, true, false, b""),
        DROP,
        Same,
    )
    .stats(&[(stat::DROP_ACL, 1)])
    .check(one_flow),
    // IPIP.
    case(
        "IPIP to an IPv4 backend, byte for byte",
        Load(ipip_web),
        || tcp4(CLIENT, 40001, VIP, 80, true, false, b"hello"),
        TX,
        Frame(ipip4_expected),
    )
    .check(|_, _, out| assert!(ipv4_checksum_ok(&out[14..]), "outer checksum")),
    case("IPIP over IPv6 to an IPv6 backend", Load(ipip6_web), syn6_443, TX, Frame(ipip6_expected)),
    case("IPIP: too big with DF: ICMP fragmentation needed", Load(ipip_web), || big4(true), TX, Any)
        .check(check_frag_needed),
    case("IPIP: too big without DF: dropped", Keep, || big4(false), DROP, Same).stats(&[(stat::DROP_ENCAP, 1)]),
    case(
        "IPv6 too big for the IPv6 backend: packet too big 1460",
        Load(ipip6_both),
        || big6(true, false, 1500),
        TX,
        Frame(|i| ptb6_expected(i, 14, 1460)),
    )
    .check(check_ptb6),
    case("the same with a tag", Keep, || big6(true, true, 1500), TX, Frame(|i| ptb6_expected(i, 18, 1460)))
        .check(check_ptb6),
    case(
        "UDP too big for the IPv4 backend: packet too big 1480",
        Keep,
        || big6(false, false, 1500),
        TX,
        Frame(|i| ptb6_expected(i, 14, 1480)),
    )
    .check(check_ptb6),
    case("the same with a tag", Keep, || big6(false, true, 1500), TX, Frame(|i| ptb6_expected(i, 18, 1480)))
        .stats(&[(stat::ICMP_TOO_BIG_SENT, 4), (stat::FORWARDED, 0), (stat::DROP_ENCAP, 0)])
        .check(check_ptb6),
    case("an oversize ICMPv6 error is never answered: dropped", Keep, big_icmp6_error, DROP, Same)
        .stats(&[(stat::DROP_ENCAP, 1), (stat::ICMP_TOO_BIG_SENT, 4)]),
    case("IPv6 + 40 = MTU exactly: encapsulated", Load(ipip6_both), || big6(true, false, 1460), TX, Any)
        .check(check_encapsulated),
    case("one byte more: packet too big", Keep, || big6(true, false, 1461), TX, Any).check(check_ptb6),
    case("tagged, exactly the MTU: encapsulated", Keep, || big6(true, true, 1460), TX, Any).check(check_encapsulated),
    case("tagged, one byte more: packet too big", Keep, || big6(true, true, 1461), TX, Any).check(check_ptb6),
    case("IPv4 outer + 20 = MTU exactly: encapsulated", Keep, || big6(false, false, 1480), TX, Any)
        .check(check_encapsulated),
    case("one byte more: packet too big", Keep, || big6(false, false, 1481), TX, Any).check(check_ptb6),
    case("tagged, exactly the MTU: encapsulated", Keep, || big6(false, true, 1480), TX, Any).check(check_encapsulated),
    case("tagged, one byte more: packet too big", Keep, || big6(false, true, 1481), TX, Any)
        .stats(&[(stat::FORWARDED, 4), (stat::ICMP_TOO_BIG_SENT, 4)])
        .check(check_ptb6),
    // Ids are reused: a stale entry of a removed VIP never forwards.
    case("a flow to web", Load(one_backend_web), || tcp4(CLIENT, 41000, VIP, 80, true, false, b""), TX, Dsr(B11)),
    case(
        "web removed (its entry stays), its id goes to another VIP with the same backend",
        Program(base),
        || tcp4(CLIENT, 41000, VIP, 80, false, false, b"x"),
        PASS,
        Same,
    )
    .check(one_flow),
    case(
        "the stale entry does not forward for the removed VIP",
        Program(other_vip_same_backend),
        || tcp4(CLIENT, 41000, VIP, 80, false, false, b"x"),
        PASS,
        Same,
    )
    .stats(&[(stat::CT_HIT, 0)])
    .check(one_flow),
    case("the new VIP works", Keep, || tcp4(CLIENT, 41001, [192, 0, 2, 2], 80, true, false, b""), TX, Dsr(B11)),
    case(
        "and its established packets hit",
        Keep,
        || tcp4(CLIENT, 41001, [192, 0, 2, 2], 80, false, false, b"x"),
        TX,
        Dsr(B11),
    )
    .stats(&[(stat::CT_HIT, 1)]),
];

/// Runs [`CASES`] in order; a failure names the row.
#[test]
fn packet_fixtures() {
    let mut f: Option<Fixture> = None;
    for (i, c) in CASES.iter().enumerate() {
        let what = format!("case {i} `{}`", c.desc);
        match &c.setup {
            Load(cfg) => f = Some(Fixture::new(&cfg())),
            Program(cfg) => {
                f.as_mut().unwrap_or_else(|| panic!("{what}: nothing loaded before")).program(&cfg());
            }
            Keep => {}
        }
        let fx = f.as_ref().unwrap_or_else(|| panic!("{what}: nothing loaded before"));
        let input = (c.input)();
        let (v, out) = fx.run(&input);
        assert_eq!(v, c.verdict, "{what}: verdict");
        match &c.out {
            Same => assert_eq!(out, input, "{what}: frame changed"),
            Dsr(mac) => assert_eq!(out, dsr(&input, *mac), "{what}: DSR output"),
            Frame(expected) => assert_eq!(out, expected(&input), "{what}: output"),
            Any => {}
        }
        for (idx, n) in c.stats {
            assert_eq!(fx.stat(*idx), *n, "{what}: counter {}", stat::NAMES[*idx as usize]);
        }
        if let Some(check) = c.check {
            check(fx, &input, &out);
        }
    }
}

/// The "packet too big" frames of the table, parsed by scapy (an independent implementation).
#[test]
fn packet_too_big_frames_parse_in_scapy() {
    let f = Fixture::new(&ipip6_both());
    let outs: Vec<Vec<u8>> = [(true, false), (true, true), (false, false), (false, true)]
        .iter()
        .map(|&(tcp, vlan)| f.run(&big6(tcp, vlan, 1500)).1)
        .collect();
    let client6 = std::net::Ipv6Addr::from(CLIENT6).to_string();
    let vip6 = std::net::Ipv6Addr::from(VIP6).to_string();
    let lines = scapy_ptb6(&outs);
    assert_eq!(lines.len(), 4, "{lines:?}");
    for (line, mtu) in lines.iter().zip([1460, 1460, 1480, 1480]) {
        assert_eq!(line, &format!("2 0 {mtu} 64 {vip6} {client6} True {client6} {vip6}"));
    }
}

/// `web` (IPv4) and `web6` (IPv6) with a per-source-prefix limit of one new flow per second, burst 5.
fn limited() -> String {
    config(
        r#"
[l4.source_limit]
new_flows_per_sec = 1
burst = 5
prefix_v4 = 24
prefix_v6 = 64
[l4.vip.web]
table_size = 101
[[vip]]
name = "web"
addr = "192.0.2.1"
port = 80
[[vip.backend]]
addr = "10.0.0.11"
[l4.vip.web6]
table_size = 101
[[vip]]
name = "web6"
addr = "2001:db8::1"
port = 443
[[vip.backend]]
addr = "fd00::11"
"#,
    )
}

fn tcp6_syn(src: [u8; 16], sport: u16) -> Vec<u8> {
    let mut v = Vec::new();
    let b = PacketBuilder::ethernet2(ROUTER, NODE).ipv6(src, VIP6, 64);
    b.tcp(sport, 443, 7, 100).syn().write(&mut v, b"").unwrap();
    v
}

#[test]
fn source_prefix_limit_drops_a_syn_flood_and_counts_it_per_vip() {
    let mut f = Fixture::new(&limited());
    // A flood from one source: the burst passes (plus at most one more if a second elapses), the rest is dropped.
    let verdicts: Vec<u32> = (0..30u16).map(|i| f.run(&tcp4(CLIENT, 20000 + i, VIP, 80, true, false, b"")).0).collect();
    let passed = verdicts.iter().filter(|v| **v == verdict::TX).count() as u64;
    assert!(verdicts.iter().all(|v| *v == verdict::TX || *v == verdict::DROP), "{verdicts:?}");
    assert!((5..=6).contains(&passed), "burst 5 at 1/s: {verdicts:?}");
    assert_eq!(verdicts[..5], [verdict::TX; 5], "the burst comes first");
    assert_eq!(f.rate_limited("web"), 30 - passed, "dropped new flows counted for their VIP");
    assert_eq!(f.stat(stat::FORWARDED), passed);
    assert_eq!(f.flows() as u64, passed, "dropped SYNs create no connection entry");
    // The same /24 shares the prefix's budget; another /24 has its own.
    assert_eq!(f.run(&tcp4([198, 51, 100, 99], 20000, VIP, 80, true, false, b"")).0, verdict::DROP);
    let other = tcp4([198, 51, 101, 7], 20000, VIP, 80, true, false, b"");
    assert_eq!(f.run(&other), (verdict::TX, dsr(&other, B11)));
    // Established flows of the limited prefix keep flowing (connection-table hits are not new flows).
    let ack = tcp4(CLIENT, 20000, VIP, 80, false, false, b"data");
    assert_eq!(f.run(&ack), (verdict::TX, dsr(&ack, B11)));
    // IPv6: grouped by /64, counted for the IPv6 VIP only.
    let web_drops = f.rate_limited("web");
    let v6: Vec<u32> = (0..8u16).map(|i| f.run(&tcp6_syn(CLIENT6, 30000 + i)).0).collect();
    assert_eq!(v6[..5], [verdict::TX; 5], "{v6:?}");
    assert_eq!(v6[7], verdict::DROP, "{v6:?}");
    let mut same64 = CLIENT6;
    same64[15] = 0x42;
    assert_eq!(f.run(&tcp6_syn(same64, 30000)).0, verdict::DROP);
    let mut other64 = CLIENT6;
    other64[7] = 1;
    let syn = tcp6_syn(other64, 30000);
    assert_eq!(f.run(&syn), (verdict::TX, dsr(&syn, B6)));
    let v6_drops = v6.iter().filter(|v| **v == verdict::DROP).count() as u64 + 1;
    assert_eq!((f.rate_limited("web6"), f.rate_limited("web")), (v6_drops, web_drops));
    // The limit is a live setting: without [l4.source_limit] the flooding source opens flows again.
    f.program(
        &limited()
            .replace("new_flows_per_sec = 1\nburst = 5\nprefix_v4 = 24\nprefix_v6 = 64\n", "")
            .replace("[l4.source_limit]\n", ""),
    );
    for i in 0..10u16 {
        assert_eq!(f.run(&tcp4(CLIENT, 40000 + i, VIP, 80, true, false, b"")).0, verdict::TX);
    }
}

const IPIP: &str = r#"
[l4.vip.web]
table_size = 101
forwarding = "ipip"
[[vip]]
name = "web"
addr = "192.0.2.1"
port = 80
[[vip.backend]]
addr = "10.0.0.12"
"#;

/// Two IPv6 IPIP VIPs: TCP 443 to an IPv6 backend (outer header 40 bytes), UDP 53 to an IPv4 one (20 bytes).
const IPIP6: &str = r#"
[l4.vip.web6]
table_size = 101
forwarding = "ipip"
[[vip]]
name = "web6"
addr = "2001:db8::1"
port = 443
[[vip.backend]]
addr = "fd00::11"
[l4.vip.dns6]
table_size = 101
forwarding = "ipip"
[[vip]]
name = "dns6"
addr = "2001:db8::1"
port = 53
protocol = "udp"
[[vip.backend]]
addr = "10.0.0.12"
"#;

/// An IPv6 frame client -> VIP of `ip_len` bytes from the IPv6 header on (TCP ACK to 443, or UDP to 53),
/// optionally with an 802.1Q tag.
fn big6(tcp: bool, vlan: bool, ip_len: usize) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(ROUTER, NODE);
    let mut v = Vec::new();
    let fill = |n: usize| (0..n).map(|i| i as u8).collect::<Vec<u8>>();
    match (tcp, vlan) {
        (true, false) => b.ipv6(CLIENT6, VIP6, 64).tcp(5555, 443, 7, 100).ack(1).write(&mut v, &fill(ip_len - 60)),
        (true, true) => b
            .single_vlan(etherparse::VlanId::try_new(42).unwrap())
            .ipv6(CLIENT6, VIP6, 64)
            .tcp(5555, 443, 7, 100)
            .ack(1)
            .write(&mut v, &fill(ip_len - 60)),
        (false, false) => b.ipv6(CLIENT6, VIP6, 64).udp(5353, 53).write(&mut v, &fill(ip_len - 48)),
        (false, true) => b
            .single_vlan(etherparse::VlanId::try_new(42).unwrap())
            .ipv6(CLIENT6, VIP6, 64)
            .udp(5353, 53)
            .write(&mut v, &fill(ip_len - 48)),
    }
    .unwrap();
    v
}

/// The ICMPv6 "packet too big" the program must send for `input` (L2 header of `l2` bytes): MACs swapped, tag
/// kept, VIP -> client, hop limit 64, the MTU, and the first 88 bytes of the client's packet; the checksum is
/// etherparse's.
fn ptb6_expected(input: &[u8], l2: usize, mtu: u32) -> Vec<u8> {
    let quote = &input[l2..l2 + 88];
    let icmp = Icmpv6Header::with_checksum(Icmpv6Type::PacketTooBig { mtu }, VIP6, CLIENT6, quote).unwrap();
    let ip = Ipv6Header {
        payload_length: (icmp.header_len() + quote.len()) as u16,
        next_header: IpNumber::IPV6_ICMP,
        hop_limit: 64,
        source: VIP6,
        destination: CLIENT6,
        ..Default::default()
    };
    let mut v = Vec::new();
    v.extend_from_slice(&input[6..12]);
    v.extend_from_slice(&input[..6]);
    v.extend_from_slice(&input[12..l2]);
    ip.write(&mut v).unwrap();
    icmp.write(&mut v).unwrap();
    v.extend_from_slice(quote);
    v
}

/// Parses each frame with scapy (an independent implementation) and returns one line per frame:
/// `type code mtu hlim src dst checksum_ok quoted_src quoted_dst`.
fn scapy_ptb6(frames: &[Vec<u8>]) -> Vec<String> {
    const SCRIPT: &str = r#"
import sys
from scapy.all import Ether, IPv6, ICMPv6PacketTooBig, IPerror6
from scapy.layers.inet6 import in6_chksum
for h in sys.argv[1:]:
    p = Ether(bytes.fromhex(h))
    ip = p[IPv6]
    t = p[ICMPv6PacketTooBig]
    raw = bytearray(bytes(ip.payload)[:ip.plen])
    raw[2:4] = b"\0\0"
    ok = in6_chksum(58, ip, bytes(raw)) == t.cksum
    q = t[IPerror6]
    print(t.type, t.code, t.mtu, ip.hlim, ip.src, ip.dst, ok, q.src, q.dst)
"#;
    let hex: Vec<String> = frames.iter().map(|f| f.iter().map(|b| format!("{b:02x}")).collect()).collect();
    // Debian's interpreter: python3-scapy is installed for it by tests/setup.
    let out = std::process::Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(SCRIPT)
        .args(&hex)
        .output()
        .expect("/usr/bin/python3 with scapy");
    assert!(out.status.success(), "scapy: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect()
}

/// VIP "web" with the first of [`three`]'s backends only.
fn one() -> String {
    three().replace("[[vip.backend]]\naddr = \"10.0.0.12\"\n[[vip.backend]]\naddr = \"10.0.0.13\"\n", "")
}

fn three() -> String {
    config(
        r#"
[l4.vip.web]
table_size = 1009
[[vip]]
name = "web"
addr = "192.0.2.1"
port = 80
[[vip.backend]]
addr = "10.0.0.11"
[[vip.backend]]
addr = "10.0.0.12"
[[vip.backend]]
addr = "10.0.0.13"
"#,
    )
}

fn backend_of(out: &[u8]) -> [u8; 6] {
    out[..6].try_into().unwrap()
}

#[test]
fn conntrack_keeps_flows_when_backends_change_and_drain() {
    let mut f = Fixture::new(&one());
    let flows: Vec<u16> = (20000..20200).collect();
    for &p in &flows {
        let (v, out) = f.run(&tcp4(CLIENT, p, VIP, 80, true, false, b""));
        assert_eq!((v, backend_of(&out)), (verdict::TX, B11));
    }
    // Two more backends: established flows stay on .11 (hits), new flows spread over all three.
    let rep = f.program(&three());
    assert_eq!(rep.vips_updated, 1);
    for &p in &flows {
        let (_, out) = f.run(&tcp4(CLIENT, p, VIP, 80, false, false, b"x"));
        assert_eq!(backend_of(&out), B11, "established flow {p} moved");
    }
    let mut seen = std::collections::HashSet::new();
    for p in 30000..30300u16 {
        seen.insert(backend_of(&f.run(&tcp4(CLIENT, p, VIP, 80, true, false, b"")).1));
    }
    assert_eq!(seen.len(), 3, "new flows use every backend: {seen:?}");
    // Drain .12 (weight 0): its established flows stay, no new flow reaches it.
    let on12: Vec<u16> = (30000..30300u16)
        .filter(|&p| backend_of(&f.run(&tcp4(CLIENT, p, VIP, 80, false, false, b"")).1) == B12)
        .collect();
    assert!(!on12.is_empty());
    f.program(&three().replace("addr = \"10.0.0.12\"", "addr = \"10.0.0.12\"\nweight = 0"));
    for &p in &on12 {
        assert_eq!(backend_of(&f.run(&tcp4(CLIENT, p, VIP, 80, false, false, b"")).1), B12, "drained flow {p} moved");
    }
    for p in 40000..40300u16 {
        let out = f.run(&tcp4(CLIENT, p, VIP, 80, true, false, b"")).1;
        assert_ne!(backend_of(&out), B12, "new flow on a draining backend");
    }
    // Remove .12 entirely: its flows are re-balanced to live backends.
    f.program(&three().replace("[[vip.backend]]\naddr = \"10.0.0.12\"\n", ""));
    for &p in &on12 {
        let b = backend_of(&f.run(&tcp4(CLIENT, p, VIP, 80, false, false, b"")).1);
        assert!(b == B11 || b == B13, "flow {p} still sent to a removed backend");
    }
    // Unchanged config: nothing rewritten.
    let rep = f.program(&three().replace("[[vip.backend]]\naddr = \"10.0.0.12\"\n", ""));
    assert_eq!((rep.vips_unchanged, rep.vips_updated, rep.ring_entries_written), (1, 0, 0));
}

#[test]
fn a_syn_is_balanced_by_maglev_without_a_connection_lookup() {
    // As Katran: a SYN opens a flow, so it skips the connection table, goes to the VIP's Maglev table and
    // (re)writes its entry. A SYN retransmitted after the backend set changed may therefore move: its connection
    // is not established yet. ACKs of established flows keep their backend.
    let mut f = Fixture::new(&one());
    let ports: Vec<u16> = (21000..21200).collect();
    for &p in &ports {
        assert_eq!(backend_of(&f.run(&tcp4(CLIENT, p, VIP, 80, true, false, b"")).1), B11);
    }
    f.program(&three());
    let (hits, misses) = (f.stat(stat::CT_HIT), f.stat(stat::CT_MISS));
    let mut moved = Vec::new();
    for &p in &ports {
        let b = backend_of(&f.run(&tcp4(CLIENT, p, VIP, 80, true, false, b"")).1);
        if b != B11 {
            moved.push((p, b));
        }
    }
    assert_eq!(f.stat(stat::CT_HIT), hits, "a SYN looked its connection entry up");
    assert_eq!(f.stat(stat::CT_MISS), misses + ports.len() as u64);
    let n = ports.len();
    assert!(moved.len() > 50, "retransmitted SYNs follow the new Maglev table: {} of {n} moved", moved.len());
    // Their entries were rewritten: the connections' next packets follow the retransmitted SYN.
    for &(p, b) in &moved {
        assert_eq!(backend_of(&f.run(&tcp4(CLIENT, p, VIP, 80, false, false, b"x")).1), b, "flow {p}");
    }
    assert_eq!(f.stat(stat::CT_HIT), hits + moved.len() as u64);
    assert_eq!(f.flows(), ports.len(), "one entry per flow, rewritten in place");
}

#[test]
fn rst_never_creates_entries_and_unhealthy_backends_leave_the_table() {
    let mut f = Fixture::new(&three());
    let (v, _) = f.run(&tcp4(CLIENT, 1111, VIP, 80, false, true, b""));
    assert_eq!(v, verdict::TX, "a RST is still forwarded");
    assert_eq!(f.flows(), 0, "a RST created a connection entry");
    f.unusable.insert(("web".into(), "10.0.0.11".parse().unwrap()), true);
    f.program(&three());
    for p in 50000..50300u16 {
        assert_ne!(backend_of(&f.run(&tcp4(CLIENT, p, VIP, 80, true, false, b"")).1), B11);
    }
    // No usable backend at all: dropped and counted.
    for b in ["10.0.0.12", "10.0.0.13"] {
        f.unusable.insert(("web".into(), b.parse().unwrap()), true);
    }
    f.program(&three());
    assert_eq!(f.run(&tcp4(CLIENT, 7, VIP, 80, true, false, b"")).0, verdict::DROP);
    assert_eq!(f.stat(stat::DROP_NO_BACKEND), 1);
}

#[test]
fn source_hash_ignores_client_ports() {
    let f = Fixture::new(
        &three()
            .replace("table_size = 1009", "table_size = 1009\nhash = \"source\"")
            .replace("port = 80", "port = 80\nprotocol = \"udp\""),
    );
    let (v, out) = f.run(&udp4(CLIENT, 1000, VIP, 80, b""));
    assert_eq!(v, verdict::TX);
    let first = backend_of(&out);
    for p in 1001..1100u16 {
        assert_eq!(f.run(&udp4(CLIENT, p, VIP, 80, b"")), (verdict::TX, dsr(&udp4(CLIENT, p, VIP, 80, b""), first)));
    }
    assert_eq!(f.flows(), 1, "one entry per client address");
    // Other clients spread over the backends.
    let mut seen = std::collections::HashSet::new();
    for c in 1..=60u8 {
        seen.insert(backend_of(&f.run(&udp4([198, 51, 100, c], 1000, VIP, 80, b"")).1));
    }
    assert_eq!(seen.len(), 3);
}

#[test]
fn icmp_fragmentation_needed_follows_its_flow() {
    let f = Fixture::new(&three());
    let (_, out) = f.run(&tcp4(CLIENT, 45000, VIP, 80, true, false, b""));
    let owner = backend_of(&out);
    // A router on the way back tells the VIP its packet (VIP:80 -> client:45000) was too big.
    let quoted = {
        let mut q = Vec::new();
        PacketBuilder::ipv4(VIP, CLIENT, 60).tcp(80, 45000, 1, 100).ack(1).write(&mut q, &[0u8; 8]).unwrap();
        q[..28].to_vec()
    };
    let mut icmp = Vec::new();
    PacketBuilder::ethernet2(ROUTER, NODE)
        .ipv4([203, 0, 113, 1], VIP, 64)
        .icmpv4(Icmpv4Type::DestinationUnreachable(etherparse::icmpv4::DestUnreachableHeader::FragmentationNeeded {
            next_hop_mtu: 1400,
        }))
        .write(&mut icmp, &quoted)
        .unwrap();
    let (v, out) = f.run(&icmp);
    assert_eq!((v, out.clone()), (verdict::TX, dsr(&icmp, owner)));
    assert_eq!(f.stat(stat::ICMP_FORWARDED), 1);
}

#[test]
fn flood_cannot_evict_established_flows() {
    let cfg = BASE.replace("mtu = 1500", "mtu = 1500\nmax_new_flows_per_sec = 50")
        + "[[vip]]\nname = \"web\"\naddr = \"192.0.2.1\"\nport = 80\n[[vip.backend]]\naddr = \"10.0.0.11\"\n\
           [l4.vip.web]\ntable_size = 101\n";
    let f = Fixture::new(&cfg);
    for p in 0..500u16 {
        assert_eq!(f.run(&tcp4(CLIENT, 10000 + p, VIP, 80, true, false, b"")).0, verdict::TX);
    }
    assert!(f.flows() <= 50 * 2, "insertions bounded per CPU per second: {}", f.flows());
    assert!(f.stat(stat::CT_INSERT_SKIPPED) >= 400, "flood insertions were skipped");
}

#[test]
fn random_and_truncated_packets_never_misforward() {
    let f = Fixture::new(&three());
    let macs = [B11, B12, B13];
    let valid = [
        tcp4(CLIENT, 999, VIP, 80, true, false, b"abc"),
        udp4(CLIENT, 999, VIP, 80, b"abc"),
        udp6(CLIENT6, 1, VIP6, 53, b"x"),
    ];
    // Every truncation of valid VIP packets.
    for p in &valid {
        for n in 14..p.len() {
            let (v, out) = f.run(&p[..n]);
            assert!(v == verdict::PASS || v == verdict::DROP || v == verdict::TX, "verdict {v}");
            if v == verdict::TX {
                assert!(macs.contains(&backend_of(&out)), "truncated packet sent to {:?}", &out[..6]);
            }
        }
    }
    // Random frames (xorshift, fixed seed, bounded count), some with a VIP destination planted.
    let mut s: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    };
    for i in 0..3000 {
        let len = 14 + (next() % 120) as usize;
        let mut p: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        if i % 2 == 0 && len >= 34 {
            p[12] = 0x08;
            p[13] = 0x00;
            p[30..34].copy_from_slice(&VIP);
        }
        let (v, out) = f.run(&p);
        assert!(v == verdict::PASS || v == verdict::DROP || v == verdict::TX);
        if v == verdict::TX {
            assert!(macs.contains(&backend_of(&out)), "random frame forwarded to {:?}", &out[..6]);
            assert_eq!(&out[12..], &p[12..], "forwarded frame altered beyond MACs");
        } else {
            assert_eq!(out, p, "non-forwarded frame altered");
        }
    }
}

/// WARN events logged on this thread while `f` runs (rendered `field=value` lists), and `f`'s result.
fn warnings_during<T>(f: impl FnOnce() -> T) -> (Vec<String>, T) {
    use std::sync::{Arc, Mutex};
    use tracing_subscriber::layer::SubscriberExt;

    struct Render(String);
    impl tracing::field::Visit for Render {
        fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
            self.0.push_str(&format!("{}={:?} ", field.name(), value));
        }
    }
    struct Warnings(Arc<Mutex<Vec<String>>>);
    impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Warnings {
        fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
            if *event.metadata().level() == tracing::Level::WARN {
                let mut r = Render(String::new());
                event.record(&mut r);
                self.0.lock().unwrap().push(r.0);
            }
        }
    }
    let seen = Arc::new(Mutex::new(Vec::new()));
    let out = tracing::subscriber::with_default(tracing_subscriber::registry().with(Warnings(seen.clone())), f);
    let v = seen.lock().unwrap().clone();
    (v, out)
}

#[test]
fn native_attach_failure_falls_back_to_generic_with_a_warning() {
    // A bridge has no native XDP support: native attach fails there.
    let ns = padis_tests::netns::Netns::new("l4fb").expect("netns");
    ns.run(&["ip", "link", "add", "br0", "type", "bridge"]).expect("bridge interface");
    ns.run(&["ip", "link", "set", "br0", "up"]).expect("bridge up");
    let xdp_mode = || {
        let out = ns.run(&["ip", "-d", "link", "show", "br0"]).expect("ip link show");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        if text.contains("xdpgeneric") {
            "generic"
        } else if text.contains("xdp") {
            "other"
        } else {
            "none"
        }
    };
    let mut f = Fixture::new(&one_backend_web());
    let strict = ns.enter(|| f.bal.attach("br0", false, false, None)).expect("enter netns");
    assert!(strict.is_err(), "native attach to a bridge should fail");
    assert_eq!(xdp_mode(), "none");
    let (warnings, att) = warnings_during(|| ns.enter(|| f.bal.attach("br0", false, true, None)).expect("enter netns"));
    let att = att.expect("attach with fallback");
    assert_eq!(att.mode, "generic");
    assert!(
        warnings.iter().any(|w| w.contains("falling back to generic") && w.contains("br0")),
        "no fallback warning in {warnings:?}"
    );
    assert_eq!(xdp_mode(), "generic", "the program is attached in generic (SKB) mode");
    att.release(false);
    assert_eq!(xdp_mode(), "none", "release detaches");
}

#[test]
fn source_hashed_and_full_hashed_vips_share_a_port() {
    // Two VIPs on port 80: one hashes the 5-tuple, one the source only (its connection key has no source port).
    let mut f = Fixture::new(&three());
    let both = format!(
        "{}{}",
        three(),
        r#"
[l4.vip.sticky]
table_size = 1009
hash = "source"
[[vip]]
name = "sticky"
addr = "192.0.2.2"
port = 80
[[vip.backend]]
addr = "10.0.0.11"
[[vip.backend]]
addr = "10.0.0.12"
[[vip.backend]]
addr = "10.0.0.13"
"#
    );
    f.program(&both);
    let sticky = [192, 0, 2, 2];
    let first = backend_of(&f.run(&tcp4(CLIENT, 1000, sticky, 80, true, false, b"")).1);
    for p in 1001..1040u16 {
        let out = f.run(&tcp4(CLIENT, p, sticky, 80, true, false, b"")).1;
        assert_eq!(backend_of(&out), first, "client port {p} moved");
    }
    assert_eq!(f.flows(), 1, "one source-only entry for every client port");
    let mut seen = std::collections::HashSet::new();
    for p in 1000..1100u16 {
        seen.insert(backend_of(&f.run(&tcp4(CLIENT, p, VIP, 80, true, false, b"")).1));
    }
    assert_eq!(seen.len(), 3, "the 5-tuple VIP on the same port still spreads client ports: {seen:?}");
    // Established packets of both hit.
    let hits = f.stat(stat::CT_HIT);
    f.run(&tcp4(CLIENT, 1000, VIP, 80, false, false, b"x"));
    f.run(&tcp4(CLIENT, 5555, sticky, 80, false, false, b"x"));
    assert_eq!(f.stat(stat::CT_HIT), hits + 2);
}

/// A pin directory for one test, removed on drop.
struct PinInstance(String);

impl PinInstance {
    fn new(tag: &str) -> PinInstance {
        let name = format!("test-{tag}-{}", std::process::id());
        padis_l4::bpffs::remove_instance(&name).expect("clean pin dir");
        padis_l4::bpffs::pin_dir(&name).expect("pin dir");
        PinInstance(name)
    }

    fn dir(&self) -> std::path::PathBuf {
        std::path::Path::new(padis_l4::bpffs::PIN_ROOT).join(&self.0)
    }

    fn load(&self) -> (padis_l4::Balancer, padis_l4::programmer::Programmer) {
        let opts = padis_l4::LoadOptions { pin_dir: Some(self.dir()), ..padis_l4::LoadOptions::private(8, 64, 4096) };
        let bal = padis_l4::Balancer::load(opts.clone()).expect("load with pins");
        let prog = if bal.reused_pins {
            padis_l4::programmer::Programmer::recover(&bal.maps, opts.max_vips, opts.max_rings(), opts.max_backends)
                .expect("recover")
        } else {
            padis_l4::programmer::Programmer::new(opts.max_vips, opts.max_rings(), opts.max_backends)
        };
        (bal, prog)
    }
}

impl Drop for PinInstance {
    fn drop(&mut self) {
        let _ = padis_l4::bpffs::remove_instance(&self.0);
    }
}

fn program(bal: &mut padis_l4::Balancer, prog: &mut padis_l4::programmer::Programmer, toml: &str) {
    let valid = padis_model::parse_config(toml, "fixture.toml", std::path::Path::new(".")).expect("config");
    let d = padis_l4::desired::compute(&valid.state.l4, &valid.state.vips, &|_, _| true, &mut |_| None);
    prog.apply(&mut bal.maps, &d).expect("program");
}

fn global(bal: &padis_l4::Balancer, idx: u32) -> u64 {
    padis_l4::stats::global_one(&bal.maps, idx).expect("stats").packets
}

/// Creates a pinned LRU hash `CONNTRACK4` as the previous layout had it (IPv4 flows, 16-byte keys) holding
/// `key` -> `st`.
fn pin_old_conntrack4(path: &std::path::Path, key: &padis_ebpf_common::FlowKey4, st: &padis_ebpf_common::FlowState) {
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<Vec<_>>();
    // SAFETY: both types are plain repr(C) data without padding.
    let kb: [u8; 16] = unsafe { std::mem::transmute(*key) };
    // SAFETY: as above.
    let vb: [u8; 8] = unsafe { std::mem::transmute(*st) };
    let run = |args: Vec<String>| {
        let out = std::process::Command::new("bpftool").args(&args).output().expect("bpftool");
        assert!(out.status.success(), "bpftool {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    let p = path.display().to_string();
    run(["map", "create", &p, "type", "lru_hash", "key", "16", "value", "8", "entries", "1024", "name", "CONNTRACK4"]
        .iter()
        .map(|s| s.to_string())
        .collect());
    let mut args: Vec<String> = ["map", "update", "pinned", &p, "key", "hex"].iter().map(|s| s.to_string()).collect();
    args.extend(hex(&kb));
    args.extend(["value", "hex"].iter().map(|s| s.to_string()));
    args.extend(hex(&vb));
    run(args);
}

#[test]
fn pinned_maps_of_older_layouts_are_upgraded_without_losing_flows() {
    let inst = PinInstance::new("upgrade");
    let key = |port: u16| FlowKey {
        src: v4_mapped(CLIENT),
        dst: v4_mapped(VIP),
        sport: wire(port),
        dport: wire(80),
        proto: 6,
        pad: [0; 3],
    };
    let (a, b) = (key(42000), key(42001));
    let (st_a, st_b) = {
        let (mut bal, mut prog) = inst.load();
        program(&mut bal, &mut prog, &three());
        for port in [42000, 42001] {
            assert_eq!(bal.test_run(&tcp4(CLIENT, port, VIP, 80, true, false, b"")).expect("run").0, verdict::TX);
        }
        let (st_a, st_b) = (bal.maps.conntrack.get(&a).expect("entry a"), bal.maps.conntrack.get(&b).expect("entry b"));
        // What older layouts pinned: flow a in the LRU CONNTRACK4 of the previous one, flow b in CONNTRACK
        // (IPv4-mapped key) of the one before; neither had FLOWS4, VIP_BY_ID or VIP_PORTS.
        bal.maps.conntrack.v6.insert(b, st_b, 0).expect("old-layout entry");
        (st_a, st_b)
    };
    pin_old_conntrack4(&inst.dir().join("CONNTRACK4"), &a.to_v4().expect("v4"), &st_a);
    for m in ["FLOWS4", "VIP_BY_ID", "VIP_PORTS"] {
        std::fs::remove_file(inst.dir().join(m)).expect("unpin");
    }
    let (mut bal, mut prog) = inst.load();
    assert!(bal.reused_pins);
    assert!(!inst.dir().join("CONNTRACK4").exists(), "the old table's pin is gone");
    assert!(bal.maps.conntrack.v6.get(&b, 0).is_err(), "the IPv4 entry left CONNTRACK");
    assert_eq!(bal.maps.conntrack.v4.get(&a.to_v4().expect("v4")), Some(st_a), "moved from CONNTRACK4");
    assert_eq!(bal.maps.conntrack.v4.get(&b.to_v4().expect("v4")), Some(st_b), "moved from CONNTRACK");
    program(&mut bal, &mut prog, &three());
    // The flows' packets hit their entries (no re-balancing), to the backends they had.
    for (port, st) in [(42000, st_a), (42001, st_b)] {
        let (v, out) = bal.test_run(&tcp4(CLIENT, port, VIP, 80, false, false, b"x")).expect("run");
        assert_eq!(v, verdict::TX);
        assert_eq!(out[5], 0x10 + st.backend as u8 + 1, "backend slot {} of .11/.12/.13", st.backend);
    }
    assert_eq!(global(&bal, stat::CT_HIT), 2);
}

#[test]
fn pinned_maps_of_an_incompatible_layout_are_replaced_with_a_warning() {
    let inst = PinInstance::new("incompat");
    // An older build's STATS: 13 counters (this layout has more).
    let path = inst.dir().join("STATS");
    let out = std::process::Command::new("bpftool")
        .args(["map", "create"])
        .arg(&path)
        .args(["type", "percpu_array", "key", "4", "value", "16", "entries", "13", "name", "STATS"])
        .output()
        .expect("bpftool");
    assert!(out.status.success(), "bpftool map create: {}", String::from_utf8_lossy(&out.stderr));
    let (warnings, loaded) = warnings_during(|| inst.load());
    let (mut bal, mut prog) = loaded;
    assert!(
        warnings.iter().any(|w| w.contains("incompatible layout") && w.contains("STATS")),
        "no layout warning in {warnings:?}"
    );
    assert!(!bal.reused_pins, "an incompatible instance starts empty");
    let show =
        std::process::Command::new("bpftool").args(["map", "show", "pinned"]).arg(&path).output().expect("bpftool");
    let text = String::from_utf8_lossy(&show.stdout).to_string();
    assert!(text.contains(&format!("max_entries {}", stat::COUNT)), "STATS not replaced: {text}");
    // And it works.
    program(&mut bal, &mut prog, &one_backend_web());
    let syn = tcp4(CLIENT, 40000, VIP, 80, true, false, b"");
    assert_eq!(bal.test_run(&syn).expect("run"), (verdict::TX, dsr(&syn, B11)));
    assert_eq!(global(&bal, stat::FORWARDED), 1);
}

/// The `FLOWS4` bucket of flow CLIENT:`sport` -> VIP:80/TCP, computed as the program does.
fn bucket_of(sport: u16, buckets: u32) -> u32 {
    let p = sport.to_be_bytes();
    let words = [
        u32::from_ne_bytes(CLIENT),
        u32::from_ne_bytes(VIP),
        u32::from_ne_bytes([p[0], p[1], 0, 80]),
        u32::from_ne_bytes([6, 0, 0, 0]),
    ];
    padis_ebpf_common::flows4::hash(&words) as u32 & (buckets - 1)
}

#[test]
fn a_full_bucket_gives_its_least_recently_used_slot_to_a_new_flow() {
    let mut f = Fixture::new(&three());
    let buckets = f.bal.maps.conntrack.v4.buckets();
    let target = bucket_of(30000, buckets);
    let ports: Vec<u16> = (30000..u16::MAX).filter(|&p| bucket_of(p, buckets) == target).take(5).collect();
    assert_eq!(ports.len(), 5, "five flows of one bucket");
    let (src, dst) = (v4_mapped(CLIENT), v4_mapped(VIP));
    let key = |p: u16| FlowKey { src, dst, sport: p.to_be(), dport: 80u16.to_be(), proto: 6, pad: [0; 3] };
    for &p in &ports[..4] {
        assert_eq!(f.run(&tcp4(CLIENT, p, VIP, 80, true, false, b"")).0, verdict::TX);
    }
    assert!(ports[..4].iter().all(|&p| f.bal.maps.conntrack.get(&key(p)).is_some()), "four ways, four flows");
    // Entries age in ~1.07 s units of the coarse clock: flows 1-3 are used again a unit later, flow 0 is not.
    std::thread::sleep(std::time::Duration::from_millis(1300));
    let hits = f.stat(stat::CT_HIT);
    for &p in &ports[1..4] {
        assert_eq!(f.run(&tcp4(CLIENT, p, VIP, 80, false, false, b"x")).0, verdict::TX);
    }
    assert_eq!(f.stat(stat::CT_HIT), hits + 3);
    // A fifth flow takes the least recently used slot: flow 0's.
    assert_eq!(f.run(&tcp4(CLIENT, ports[4], VIP, 80, true, false, b"")).0, verdict::TX);
    assert!(f.bal.maps.conntrack.get(&key(ports[0])).is_none(), "flow 0 pushed out");
    for &p in &ports[1..5] {
        assert!(f.bal.maps.conntrack.get(&key(p)).is_some(), "flow {p} kept");
    }
    // Userspace reads and writes the same table: an entry it adds is what the program finds.
    let st = f.bal.maps.conntrack.get(&key(ports[1])).expect("entry");
    f.bal.maps.conntrack.insert(key(ports[0]), st, false).expect("insert");
    let hits = f.stat(stat::CT_HIT);
    assert_eq!(f.run(&tcp4(CLIENT, ports[0], VIP, 80, false, false, b"x")).0, verdict::TX);
    assert_eq!(f.stat(stat::CT_HIT), hits + 1, "the program hits the entry userspace wrote");
}
