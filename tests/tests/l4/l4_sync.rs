//! Connection-table sync among Padis nodes, end to end in network namespaces: two L4 planes (XDP, native mode) on
//! one L2 segment with the client and the backends. Connections opened through node A; the backend set grows
//! 4 -> 8 (Maglev moves about half the flows); then the client's route moves every flow to node B, as an ECMP
//! change would. With sync every connection keeps its server socket; with a wrong key nothing is inserted (auth
//! failures counted) and some connections break. A restarted node gets the table again by bulk dump; records
//! lost in transit reach the peer at the next re-announcement. The L4 report shows the sync status. Needs root.

use std::path::Path;
use std::time::{Duration, Instant};

use padis_tests::l4::{backend_addr, node_addr, Conn, Lan, PadisL4, PinGuard, PADIS, VIP};
use padis_tests::netns::unique_name;

const PORT: u16 = 8080;
const SYNC_PORT: u16 = 7400;

fn config(instance: &str, node: &str, me: &str, backends: &[usize], key: &Path) -> String {
    let mut s = format!(
        r#"
[l4]
interfaces = ["eth0"]
instance = "{instance}"
xdp_mode = "native"
node_id = "{node}"
max_vips = 4
max_backends = 64
max_flows = 65536

[l4.sync]
listen = "{me}:{SYNC_PORT}"
peers = ["{PADIS}:{SYNC_PORT}", "{b}:{SYNC_PORT}"]
key_file = "{key}"
batch_interval = "10ms"
dump_rate = 2000

[l4.vip.web]
table_size = 2003

[[vip]]
name = "web"
addr = "{VIP}"
port = {PORT}
"#,
        b = node_addr(0),
        key = key.display(),
    );
    for &i in backends {
        s.push_str(&format!("[[vip.backend]]\naddr = \"{}\"\n", backend_addr(i)));
    }
    s
}

/// A metric's value in the plane's exposition (0 when absent: counters not yet incremented).
fn metric(p: &PadisL4, name: &str) -> f64 {
    let text = p.metrics().expect("metrics");
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Waits (bounded) until `cond` holds.
fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until the plane has exactly `want` backends of VIP `web` in its table.
fn wait_in_table(p: &PadisL4, want: &[usize]) {
    let want: Vec<String> = want.iter().map(|&i| backend_addr(i)).collect();
    wait_for("backends in table", Duration::from_secs(20), || {
        let r = p.report().expect("report");
        let mut got: Vec<String> =
            r.vips[0].backends.iter().filter(|b| b.in_table).map(|b| b.addr.to_string()).collect();
        got.sort();
        let mut w = want.clone();
        w.sort();
        got == w
    });
}

fn open(lan: &Lan, n: usize) -> Vec<(Conn, String)> {
    (0..n)
        .map(|_| {
            let mut c = lan.connect().expect("connect through node A");
            let b = c.ask().expect("first answer");
            (c, b)
        })
        .collect()
}

/// Connections whose next request fails or reaches another server.
fn broken(conns: &mut [(Conn, String)]) -> usize {
    let mut n = 0;
    for (c, b) in conns.iter_mut() {
        if c.ask().ok().as_deref() != Some(b.as_str()) {
            n += 1;
        }
    }
    n
}

/// The sync part of the plane's report.
fn sync_report(p: &PadisL4) -> padis_l4::sync::SyncReport {
    p.report().expect("report").sync.expect("sync status in the L4 report")
}

fn key_file(dir: &Path, name: &str, secret: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, secret).expect("write key");
    p
}

#[test]
fn l4_sync_flows_survive_churn_and_ecmp_move() {
    let mut lan = Lan::new(8, PORT).expect("topology");
    lan.add_node().expect("second Padis node");
    let dir = tempfile::tempdir().expect("tempdir");
    let key = key_file(dir.path(), "sync.key", "a shared secret of 32 bytes!!!!!\n");
    let (ia, ib) = (unique_name("sya"), unique_name("syb"));
    let _pins = (PinGuard(ia.clone()), PinGuard(ib.clone()));
    let four: Vec<usize> = (0..4).collect();
    let eight: Vec<usize> = (0..8).collect();

    let a = PadisL4::start(&lan.padis, &config(&ia, "a", PADIS, &four, &key)).expect("start node A");
    wait_in_table(&a, &four);
    // Alone (its peer is not running), A is ready to be announced after the grace period.
    wait_for("A alone to be ready", Duration::from_secs(20), || sync_report(&a).ready);
    // Flows opened before node B exists: B learns them from A's bulk dump when it says hello, and is ready (to be
    // announced) only once the dump is complete.
    let mut conns = open(&lan, 16);
    let b = PadisL4::start(&lan.nodes[0], &config(&ib, "b", &node_addr(0), &four, &key)).expect("start node B");
    wait_in_table(&b, &four);
    // Ready by the dump-end message, well before the 30 s a node waits at most.
    wait_for("B to be ready", Duration::from_secs(20), || sync_report(&b).ready);
    let rb = sync_report(&b);
    assert!(rb.records_inserted >= 16, "B ready before A's dump was in: {rb:?}");
    assert!(metric(&a, "padis_l4_sync_dumps_sent_total") >= 1.0);
    // Flows opened while both run: streamed in batches.
    conns.extend(open(&lan, 16));
    wait_for("B to insert A's live records", Duration::from_secs(30), || {
        metric(&b, "padis_l4_sync_records_inserted_total") >= 32.0
    });
    assert!(metric(&a, "padis_l4_sync_records_sent_total") >= 32.0);
    wait_for("peers to see each other", Duration::from_secs(10), || {
        metric(&a, "padis_l4_sync_peers_seen") == 1.0 && metric(&b, "padis_l4_sync_peers_seen") == 1.0
    });
    // The plane's report (what /v1/state and `padis status` show) carries the sync status.
    let (ra, rb) = (sync_report(&a), sync_report(&b));
    assert_eq!(rb.peers.len(), 1, "{rb:?}");
    let pa = &rb.peers[0];
    assert_eq!(pa.addr.to_string(), format!("{PADIS}:{SYNC_PORT}"));
    assert!(pa.up && pa.last_hello_ms.is_some_and(|ms| ms < 3000), "{pa:?}");
    assert_eq!(pa.node.as_deref(), Some(ra.node.as_str()));
    assert_eq!(pa.incarnation, Some(ra.incarnation));
    assert!(rb.records_received >= 32 && rb.records_inserted >= 32, "{rb:?}");
    assert_eq!(rb.records_inserted as f64, metric(&b, "padis_l4_sync_records_inserted_total"));
    assert!(ra.records_sent >= 32 && ra.dumps_sent >= 1, "{ra:?}");
    assert_eq!((ra.auth_failures, rb.auth_failures, ra.replays.len(), rb.replays.len()), (0, 0, 0, 0));

    // The backend set doubles on both nodes, then ECMP moves every flow to B.
    a.publish(&config(&ia, "a", PADIS, &eight, &key)).unwrap();
    b.publish(&config(&ib, "b", &node_addr(0), &eight, &key)).unwrap();
    wait_in_table(&a, &eight);
    wait_in_table(&b, &eight);
    lan.steer(&node_addr(0)).expect("route to node B");
    assert_eq!(broken(&mut conns), 0, "connections broken after the move to node B");
    let hits = b.report().unwrap().stats["ct_hit"].packets;
    assert!(hits >= 32, "node B forwarded the moved flows from its connection table ({hits} hits)");
    // New connections through B are balanced over the eight backends (and announced to A).
    let before = metric(&a, "padis_l4_sync_records_inserted_total");
    let mut fresh = open(&lan, 8);
    assert_eq!(broken(&mut fresh), 0);
    wait_for("A to insert B's records", Duration::from_secs(30), || {
        metric(&a, "padis_l4_sync_records_inserted_total") >= before + 8.0
    });
    assert_eq!(metric(&a, "padis_l4_sync_auth_failures_total") + metric(&b, "padis_l4_sync_auth_failures_total"), 0.0);

    // B restarts with an empty table (fresh maps): its hello carries a new incarnation, A dumps its table again
    // (its own flows and those it learnt from B), and every connection still works through B.
    b.stop();
    let ib2 = unique_name("syb");
    let _pins2 = PinGuard(ib2.clone());
    let dumps = metric(&a, "padis_l4_sync_dumps_sent_total");
    let b = PadisL4::start(&lan.nodes[0], &config(&ib2, "b", &node_addr(0), &eight, &key)).expect("restart node B");
    wait_in_table(&b, &eight);
    wait_for("restarted B to be ready", Duration::from_secs(20), || sync_report(&b).ready);
    // Every record of A's dump is in when B is ready (inserted, or already known: the client route points at B
    // during its restart, so a late ACK may have created an entry there first).
    let rb = sync_report(&b);
    assert!(rb.records_received >= 40, "restarted B ready before A's second dump was in: {rb:?}");
    assert!(sync_report(&a).ready, "a peer's restart does not make A unready");
    assert!(metric(&a, "padis_l4_sync_dumps_sent_total") > dumps);
    conns.extend(fresh);
    assert_eq!(broken(&mut conns), 0, "connections broken after node B restarted");
}

#[test]
fn l4_sync_wrong_key_inserts_nothing_and_flows_break() {
    let mut lan = Lan::new(8, PORT).expect("topology");
    lan.add_node().expect("second Padis node");
    let dir = tempfile::tempdir().expect("tempdir");
    let key_a = key_file(dir.path(), "a.key", "a shared secret of 32 bytes!!!!!\n");
    let key_b = key_file(dir.path(), "b.key", "another secret, also long enough\n");
    let (ia, ib) = (unique_name("sya"), unique_name("syb"));
    let _pins = (PinGuard(ia.clone()), PinGuard(ib.clone()));
    let four: Vec<usize> = (0..4).collect();
    let eight: Vec<usize> = (0..8).collect();

    let a = PadisL4::start(&lan.padis, &config(&ia, "a", PADIS, &four, &key_a)).expect("start node A");
    let b = PadisL4::start(&lan.nodes[0], &config(&ib, "b", &node_addr(0), &four, &key_b)).expect("start node B");
    wait_in_table(&a, &four);
    wait_in_table(&b, &four);
    let mut conns = open(&lan, 32);
    wait_for("A to send its records", Duration::from_secs(30), || {
        metric(&a, "padis_l4_sync_records_sent_total") >= 32.0
    });
    // Hellos (every second) and the batches all fail authentication at B.
    wait_for("B to refuse A's datagrams", Duration::from_secs(30), || {
        metric(&b, "padis_l4_sync_auth_failures_total") >= 4.0
    });
    assert_eq!(metric(&b, "padis_l4_sync_records_received_total"), 0.0);
    assert_eq!(metric(&b, "padis_l4_sync_records_inserted_total"), 0.0);
    assert_eq!(metric(&b, "padis_l4_sync_peers_seen"), 0.0);
    let rb = sync_report(&b);
    assert!(rb.auth_failures >= 4 && rb.records_received == 0, "{rb:?}");
    assert!(!rb.peers[0].up && rb.peers[0].last_hello_ms.is_none(), "A's hellos are not authentic: {rb:?}");

    a.publish(&config(&ia, "a", PADIS, &eight, &key_a)).unwrap();
    b.publish(&config(&ib, "b", &node_addr(0), &eight, &key_b)).unwrap();
    wait_in_table(&a, &eight);
    wait_in_table(&b, &eight);
    lan.steer(&node_addr(0)).expect("route to node B");
    let n = broken(&mut conns);
    // Maglev 4 -> 8 moves about half the flows: without B knowing them, those connections break.
    assert!(n > 0 && n < 32, "{n}/32 connections broke without sync");
}

/// Drops sync datagrams from node A at node B (nftables in B's namespace) while alive.
struct DropFromA<'a>(&'a padis_tests::netns::Netns);

impl<'a> DropFromA<'a> {
    fn new(ns: &'a padis_tests::netns::Netns) -> DropFromA<'a> {
        ns.run(&["nft", "add", "table", "inet", "padis_sync_test"]).expect("nft table");
        ns.run(&["nft", "add chain inet padis_sync_test input { type filter hook input priority 0 ; }"])
            .expect("nft chain");
        let port = SYNC_PORT.to_string();
        ns.run(&[
            "nft",
            "add",
            "rule",
            "inet",
            "padis_sync_test",
            "input",
            "ip",
            "saddr",
            PADIS,
            "udp",
            "dport",
            &port,
            "drop",
        ])
        .expect("nft rule");
        DropFromA(ns)
    }
}

impl Drop for DropFromA<'_> {
    fn drop(&mut self) {
        let _ = self.0.run(&["nft", "delete", "table", "inet", "padis_sync_test"]);
    }
}

#[test]
fn l4_sync_lost_records_known_at_next_reannouncement() {
    let mut lan = Lan::new(8, PORT).expect("topology");
    lan.add_node().expect("second Padis node");
    let dir = tempfile::tempdir().expect("tempdir");
    let key = key_file(dir.path(), "sync.key", "a shared secret of 32 bytes!!!!!\n");
    let (ia, ib) = (unique_name("sya"), unique_name("syb"));
    let _pins = (PinGuard(ia.clone()), PinGuard(ib.clone()));
    let four: Vec<usize> = (0..4).collect();
    let eight: Vec<usize> = (0..8).collect();
    let refresh = |c: String| c.replace("dump_rate = 2000", "dump_rate = 2000\nrefresh_interval = \"2s\"");

    let a = PadisL4::start(&lan.padis, &refresh(config(&ia, "a", PADIS, &four, &key))).expect("start node A");
    let b = PadisL4::start(&lan.nodes[0], &refresh(config(&ib, "b", &node_addr(0), &four, &key))).expect("start B");
    wait_in_table(&a, &four);
    wait_in_table(&b, &four);
    wait_for("peers to see each other", Duration::from_secs(10), || {
        sync_report(&a).peers[0].up && sync_report(&b).peers[0].up
    });
    let dumps = sync_report(&a).dumps_sent;

    // Everything A sends is lost on the way to B (both nodes keep running): the live records of new flows, the
    // hellos and any re-announcement.
    let lost = DropFromA::new(&lan.nodes[0]);
    wait_for("B to notice A's silence", Duration::from_secs(20), || !sync_report(&b).peers[0].up);
    let mut conns = open(&lan, 16);
    wait_for("A to send the new flows' records", Duration::from_secs(30), || sync_report(&a).records_sent >= 16);
    let passes = sync_report(&a).refresh_passes;
    wait_for("a re-announcement pass lost too", Duration::from_secs(30), || sync_report(&a).refresh_passes > passes);
    assert_eq!(sync_report(&b).records_received, 0, "the drop rule let records through");

    // The path heals: no node restarted (no dump), the next re-announcement brings the flows to B.
    drop(lost);
    wait_for("B to learn the lost flows", Duration::from_secs(30), || sync_report(&b).records_inserted >= 16);
    let (ra, rb) = (sync_report(&a), sync_report(&b));
    assert_eq!(ra.dumps_sent, dumps, "a bulk dump, not a re-announcement, brought the flows: {ra:?}");
    assert!(rb.peers[0].up, "{rb:?}");
    assert!(rb.replays.is_empty() && rb.auth_failures == 0, "{rb:?}");

    // And the flows survive a backend change plus the move to B.
    a.publish(&refresh(config(&ia, "a", PADIS, &eight, &key))).unwrap();
    b.publish(&refresh(config(&ib, "b", &node_addr(0), &eight, &key))).unwrap();
    wait_in_table(&a, &eight);
    wait_in_table(&b, &eight);
    lan.steer(&node_addr(0)).expect("route to node B");
    assert_eq!(broken(&mut conns), 0, "connections broken after the move to node B");
}

#[test]
fn l4_sync_replayed_datagrams_refused() {
    use padis_ebpf_common::{v4_mapped, FlowKey};
    use padis_l4::sync::{encode, Body, Message, SyncKey, WireFlow};

    let mut lan = Lan::new(2, PORT).expect("topology");
    lan.add_node().expect("second Padis node");
    let dir = tempfile::tempdir().expect("tempdir");
    let secret = "a shared secret of 32 bytes!!!!!";
    let key = key_file(dir.path(), "sync.key", secret);
    let ib = unique_name("syb");
    let _pins = PinGuard(ib.clone());
    let b = PadisL4::start(&lan.nodes[0], &config(&ib, "b", &node_addr(0), &[0, 1], &key)).expect("start node B");
    wait_in_table(&b, &[0, 1]);

    // Authentic datagrams of a node "A" (signed with the shared key), sent from A's address; each is sent twice.
    let key = SyncKey::new(secret.as_bytes());
    let flow = |port: u16| WireFlow {
        key: FlowKey {
            src: v4_mapped([198, 51, 100, 7]),
            dst: v4_mapped(VIP.parse::<std::net::Ipv4Addr>().expect("VIP").octets()),
            sport: port.to_be(),
            dport: PORT.to_be(),
            proto: 6,
            pad: [0; 3],
        },
        backend: v4_mapped(backend_addr(0).parse::<std::net::Ipv4Addr>().expect("backend").octets()),
    };
    let msg = |incarnation: u64, seq: u64, port: u16| {
        encode(&Message { node: 42, incarnation, seq, body: Body::Flows(vec![flow(port)]) }, &key).expect("encode")
    };
    let to = format!("{}:{SYNC_PORT}", node_addr(0));
    let send = |datagrams: &[Vec<u8>]| {
        lan.padis
            .enter(|| {
                let sock = std::net::UdpSocket::bind(format!("{PADIS}:0")).expect("bind in A's namespace");
                for d in datagrams {
                    sock.send_to(d, &to).expect("send");
                }
            })
            .expect("enter A's namespace")
    };
    let (first, second) = (msg(1000, 5, 40001), msg(1000, 6, 40002));
    send(&[first.clone(), first.clone(), second.clone()]);
    wait_for("B to take the two fresh datagrams", Duration::from_secs(20), || sync_report(&b).records_inserted == 2);
    wait_for("B to refuse the duplicate", Duration::from_secs(20), || {
        sync_report(&b).replays.get("duplicate") == Some(&1)
    });
    // Replayed later, and datagrams of an older incarnation: refused, nothing received.
    send(&[second, first, msg(999, 7, 40003)]);
    wait_for("B to refuse the replays", Duration::from_secs(20), || {
        let r = sync_report(&b);
        r.replays.get("duplicate") == Some(&3) && r.replays.get("old_incarnation") == Some(&1)
    });
    // A restarted sender (newer incarnation) starts a new window: its datagram number 0 is taken.
    send(&[msg(2000, 0, 40004)]);
    wait_for("B to take the restarted sender's record", Duration::from_secs(20), || {
        sync_report(&b).records_inserted == 3
    });
    let r = sync_report(&b);
    assert_eq!((r.records_received, r.auth_failures, r.malformed), (3, 0, 0), "{r:?}");
}

mod ring {
    //! The XDP side through BPF_PROG_TEST_RUN: what the program announces in `SYNC_RING`.

    use etherparse::PacketBuilder;
    use padis_ebpf_common::{stat, v4_mapped, SyncRecord};
    use padis_tests::l4::{verdict, Fixture};

    const VIP: [u8; 4] = [192, 0, 2, 1];

    fn toml(sync: Option<&std::path::Path>) -> String {
        let mut s = String::from(
            "[l4]\n[l4.neighbors]\n\"10.0.0.11\" = \"02:00:00:00:00:11\"\n\"10.0.0.12\" = \"02:00:00:00:00:12\"\n",
        );
        if let Some(k) = sync {
            s.push_str(&format!(
                "[l4.sync]\nlisten = \"10.0.0.2:7400\"\npeers = [\"10.0.0.3:7400\"]\nkey_file = \"{}\"\n",
                k.display()
            ));
        }
        s.push_str("[l4.vip.web]\ntable_size = 1009\n[[vip]]\nname = \"web\"\naddr = \"192.0.2.1\"\nport = 80\n");
        s.push_str("[[vip.backend]]\naddr = \"10.0.0.11\"\n[[vip.backend]]\naddr = \"10.0.0.12\"\n");
        s
    }

    fn packet(sport: u16, syn: bool, rst: bool) -> Vec<u8> {
        let b = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 2], [2, 0, 0, 0, 0, 1])
            .ipv4([198, 51, 100, (sport % 200) as u8], VIP, 64)
            .tcp(sport, 80, 1000, 64240);
        let b = if syn { b.syn() } else { b.ack(1) };
        let b = if rst { b.rst() } else { b };
        let mut v = Vec::new();
        b.write(&mut v, &[]).expect("build packet");
        v
    }

    fn drain(f: &mut Fixture) -> Vec<SyncRecord> {
        let ring = f.bal.maps.sync_ring.as_mut().expect("sync ring");
        let mut out = Vec::new();
        while let Some(item) = ring.next() {
            assert_eq!(item.len(), std::mem::size_of::<SyncRecord>());
            // SAFETY: the program writes whole SyncRecords; the length was checked.
            out.push(unsafe { std::ptr::read_unaligned(item.as_ptr() as *const SyncRecord) });
        }
        out
    }

    #[test]
    fn l4_sync_ring_announces_new_entries_only_when_on() {
        // Sync off: new flows are forwarded and remembered, nothing is announced.
        let mut f = Fixture::new(&toml(None));
        assert_eq!(f.run(&packet(40000, true, false)).0, verdict::TX);
        assert_eq!(f.flows(), 1);
        assert!(drain(&mut f).is_empty());

        let dir = tempfile::tempdir().expect("tempdir");
        let key = dir.path().join("k");
        std::fs::write(&key, "0123456789abcdef").expect("key");
        let mut f = Fixture::new(&toml(Some(&key)));
        // A SYN creates an entry and announces it once: key as in the table, local VIP id and backend index.
        assert_eq!(f.run(&packet(40001, true, false)).0, verdict::TX);
        assert_eq!(f.run(&packet(40001, false, false)).0, verdict::TX);
        let recs = drain(&mut f);
        assert_eq!(recs.len(), 1, "{recs:?}");
        let r = recs[0];
        assert_eq!((r.key.src, r.key.dst), (v4_mapped([198, 51, 100, 1]), v4_mapped(VIP)));
        assert_eq!((u16::from_be(r.key.sport), u16::from_be(r.key.dport), r.key.proto), (40001, 80, 6));
        let entry = f.bal.maps.conntrack.get(&r.key).expect("entry in the connection table");
        assert_eq!(entry, r.state);
        let slots = f.prog.backend_slots();
        assert!(slots.iter().any(|(_, i)| *i == r.state.backend), "{slots:?} vs {r:?}");
        // A RST creates no entry, so announces nothing.
        assert_eq!(f.run(&packet(40002, false, true)).0, verdict::TX);
        assert!(drain(&mut f).is_empty());

        // A full ring is counted and never stops forwarding (1 MiB ring, 56 bytes a record: ~18.7k records).
        let mut tx = 0;
        for i in 0..20_000u32 {
            let mut p = packet(1024 + (i % 60_000) as u16, true, false);
            // Distinct flows: vary the client address too.
            p[14 + 12 + 2] = (i >> 8) as u8;
            p[14 + 12 + 3] = i as u8;
            if f.run(&p).0 == verdict::TX {
                tx += 1;
            }
        }
        assert_eq!(tx, 20_000);
        let full = f.stat(stat::SYNC_RING_FULL);
        assert!(full > 0, "no ring-full drops counted");
        let got = drain(&mut f).len() as u64;
        assert_eq!(got + full, 20_000, "every new entry is either announced or counted");
    }
}

mod index {
    //! Translation of peers' records to local ids.

    use std::net::SocketAddr;
    use std::path::Path;

    use padis_ebpf_common::{v4_mapped, FlowKey};
    use padis_l4::desired;
    use padis_l4::sync::index::Unknown;
    use padis_l4::sync::SyncIndex;
    use padis_tests::l4::Fixture;

    const TOML: &str = "[l4]\n[l4.neighbors]\n\"10.0.0.11\" = \"02:00:00:00:00:11\"\n\
        [[vip]]\nname = \"web\"\naddr = \"192.0.2.1\"\nport = 80\n\
        backend = [{ addr = \"10.0.0.11\" }, { addr = \"10.0.0.12\", weight = 0 }]\n\
        [[vip]]\nname = \"dns\"\naddr = \"192.0.2.1\"\nport = 53\nprotocol = \"udp\"\nbackend = [{ addr = \"10.0.0.13\" }]\n";

    fn key(dport: u16, proto: u8) -> FlowKey {
        FlowKey {
            src: v4_mapped([198, 51, 100, 1]),
            dst: v4_mapped([192, 0, 2, 1]),
            sport: 40000u16.to_be(),
            dport: dport.to_be(),
            proto,
            pad: [0; 3],
        }
    }

    #[test]
    fn l4_sync_index_maps_identities_to_local_ids() {
        let f = Fixture::new(TOML);
        let valid = padis_model::parse_config(TOML, "t.toml", Path::new(".")).expect("config");
        let d = desired::compute(&valid.state.l4, &valid.state.vips, &|_: &str, _: SocketAddr| true, &mut |_| None);
        let idx = SyncIndex::build(&f.prog, &d);
        let slot = |a: &str| f.prog.backend_index(a.parse().expect("addr")).expect("slot");
        let web = f.prog.installed().into_iter().find(|(_, v)| v.name == "web").expect("web").1.id;
        // A known VIP and backend (a draining one too: it keeps established flows).
        assert_eq!(idx.local(&key(80, 6), &v4_mapped([10, 0, 0, 11])), Ok((web, slot("10.0.0.11"))));
        assert_eq!(idx.local(&key(80, 6), &v4_mapped([10, 0, 0, 12])), Ok((web, slot("10.0.0.12"))));
        // A backend of another VIP, an unknown backend, an unknown VIP (other port, other protocol).
        assert_eq!(idx.local(&key(80, 6), &v4_mapped([10, 0, 0, 13])), Err(Unknown::Backend));
        assert_eq!(idx.local(&key(80, 6), &v4_mapped([10, 0, 0, 99])), Err(Unknown::Backend));
        assert_eq!(idx.local(&key(8080, 6), &v4_mapped([10, 0, 0, 11])), Err(Unknown::Vip));
        assert_eq!(idx.local(&key(80, 17), &v4_mapped([10, 0, 0, 11])), Err(Unknown::Vip));
        // And back: local index -> address.
        assert_eq!(idx.backend_addr(slot("10.0.0.13")), Some(v4_mapped([10, 0, 0, 13])));
    }
}

mod naive {
    //! `scheduler = "naive"`, the ECMP benchmark's control case: nodes disagree on new flows.

    use etherparse::PacketBuilder;
    use padis_tests::l4::{verdict, Fixture};

    fn toml(scheduler: &str, node: &str) -> String {
        format!(
            "[l4]\nscheduler = \"{scheduler}\"\nnode_id = \"{node}\"\n[l4.neighbors]\n\
             \"10.0.0.11\" = \"02:00:00:00:00:11\"\n\"10.0.0.12\" = \"02:00:00:00:00:12\"\n\
             \"10.0.0.13\" = \"02:00:00:00:00:13\"\n\"10.0.0.14\" = \"02:00:00:00:00:14\"\n\
             [l4.vip.web]\ntable_size = 1009\n[[vip]]\nname = \"web\"\naddr = \"192.0.2.1\"\nport = 80\n\
             backend = [{{ addr = \"10.0.0.11\" }}, {{ addr = \"10.0.0.12\" }}, {{ addr = \"10.0.0.13\" }}, {{ addr = \"10.0.0.14\" }}]\n"
        )
    }

    /// Destination MACs (= backends) chosen for 200 distinct SYNs.
    fn choices(f: &Fixture) -> Vec<[u8; 6]> {
        (0..200u16)
            .map(|i| {
                let mut p = Vec::new();
                PacketBuilder::ethernet2([2, 0, 0, 0, 0, 2], [2, 0, 0, 0, 0, 1])
                    .ipv4([198, 51, 100, 1], [192, 0, 2, 1], 64)
                    .tcp(20000 + i, 80, 1, 64240)
                    .syn()
                    .write(&mut p, &[])
                    .expect("packet");
                let (v, out) = f.run(&p);
                assert_eq!(v, verdict::TX);
                let mut mac = [0u8; 6];
                mac.copy_from_slice(&out[..6]);
                mac
            })
            .collect()
    }

    fn agree(a: &[[u8; 6]], b: &[[u8; 6]]) -> usize {
        a.iter().zip(b).filter(|(x, y)| x == y).count()
    }

    #[test]
    fn l4_naive_scheduler_differs_per_node_maglev_does_not() {
        let (m1, m2) = (Fixture::new(&toml("maglev", "n1")), Fixture::new(&toml("maglev", "n2")));
        assert_eq!(agree(&choices(&m1), &choices(&m2)), 200, "Maglev: every node picks the same backend");
        let (n1, n2) = (Fixture::new(&toml("naive", "n1")), Fixture::new(&toml("naive", "n2")));
        let (c1, c2) = (choices(&n1), choices(&n2));
        // Four backends: two independent shuffles agree on about a quarter of the flows.
        assert!(agree(&c1, &c2) < 100, "naive tables of two nodes agree on {}/200 flows", agree(&c1, &c2));
        assert_eq!(c1, choices(&Fixture::new(&toml("naive", "n1"))), "naive is deterministic per node");
        let spread: std::collections::HashSet<_> = c1.iter().collect();
        assert_eq!(spread.len(), 4, "naive still balances over every backend");
    }
}
