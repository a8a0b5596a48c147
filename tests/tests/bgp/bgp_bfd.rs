//! BFD (RFC 5880/5881) between the BGP announcer and a real BIRD 2 in a network namespace: the session comes Up
//! with BIRD, a silently dead path makes BIRD drop the route in well under a second (with 100 ms x 3; the same
//! cut without BFD takes the 3 s hold time), a one-way failure makes our side reset BGP at once, a graceful stop
//! ends with BFD AdminDown (after the router took the Cease: BIRD 2.0 would count an earlier AdminDown as a BFD
//! failure), and forged or malformed packets are dropped and counted without touching the session.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::net::UdpSocket;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use padis_bgp::bfd::{ControlPacket, Diag, State};
use padis_bgp::{Announcement, Announcer, SessionState};
use padis_model::bgp::BgpConfig;
use padis_tests::bgp::{bird_config, wait_for, with_bfd, Bird, Frr, Lab, ROUTER_V4, SPEAKER_V4};
use padis_tests::netns::{in_netns, in_netns_threaded};
use tokio::sync::watch;

const OUR_ASN: u32 = 4_200_000_001;
const BIRD_ASN: u32 = 65010;
const V4: &str = "198.51.100.7/32";
const LIMIT: Duration = Duration::from_secs(20);

/// BFD timers (interval ms, multiplier) of the tests about detection speed.
const FAST: (u32, u32) = (100, 3);
/// BFD timers of the tests about something else: a loaded test machine must not make the session flap.
const RELAXED: (u32, u32) = (300, 5);

fn bgp(bfd: bool, (interval, mult): (u32, u32), extra: &str) -> BgpConfig {
    let text = format!(
        "[bgp]\nasn = {OUR_ASN}\nrouter_id = \"10.99.0.1\"\nhold_time = \"3s\"\nconnect_retry = \"300ms\"\n{extra}\n\
         [bgp.bfd]\ninterval = \"{interval}ms\"\nmultiplier = {mult}\n\
         [[bgp.peer]]\naddress = \"{ROUTER_V4}\"\nasn = {BIRD_ASN}\nbfd = {bfd}\n"
    );
    let v = padis_model::parse_config(&text, "test.toml", Path::new(".")).unwrap_or_else(|e| panic!("{e}"));
    v.state.bgp.expect("bgp section")
}

fn routes() -> BTreeSet<Announcement> {
    [Announcement { prefix: V4.parse().expect("prefix"), name: "web".into() }].into_iter().collect()
}

/// Sum of a metric's samples whose labels contain all of `labels`.
fn metric(reg: &prometheus::Registry, name: &str, labels: &[(&str, &str)]) -> f64 {
    reg.gather()
        .iter()
        .filter(|f| f.name() == name)
        .flat_map(|f| f.get_metric().iter())
        .filter(|m| labels.iter().all(|(k, v)| m.get_label().iter().any(|l| l.name() == *k && l.value() == *v)))
        .map(|m| m.get_gauge().value() + m.get_counter().value())
        .sum()
}

async fn learnt(bird: &Bird, what: &str) {
    wait_for(LIMIT, what, || async { (!bird.route(V4).is_empty()).then_some(()) }).await;
}

/// BIRD's BFD session line for our address, once it says `state`.
async fn bird_bfd(bird: &Bird, state: &str) -> String {
    wait_for(LIMIT, &format!("BIRD BFD session {state}"), || async {
        let out = bird.cmd("show bfd sessions");
        out.lines().find(|l| l.starts_with(SPEAKER_V4) && l.split_whitespace().any(|w| w == state)).map(str::to_string)
    })
    .await
}

/// Everything from `from` is dropped in namespace `ns` from now on (a dead node, or a one-way failure).
struct Silence {
    ns: String,
}

impl Silence {
    fn start(ns: &str, dir: &Path, from: &str) -> Self {
        let rules = dir.join(format!("silence-{ns}.nft"));
        std::fs::write(
            &rules,
            format!("table inet padis_bfd_test {{\n chain input {{\n  type filter hook input priority 0;\n  ip saddr {from} drop\n }}\n}}\n"),
        )
        .expect("nft rules");
        padis_tests::netns::run("ip", &["netns", "exec", ns, "nft", "-f", rules.to_str().expect("path")]);
        Silence { ns: ns.to_string() }
    }
}

impl Drop for Silence {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "exec", &self.ns, "nft", "delete", "table", "inet", "padis_bfd_test"])
            .stderr(Stdio::null())
            .status();
    }
}

/// Makes the speaker silent for the router, returns how long BIRD kept the route (polled every 20 ms).
fn time_until_route_gone(bird: &Bird, ns: &str, dir: &Path) -> (Duration, Silence) {
    let cut = Silence::start(ns, dir, SPEAKER_V4);
    let t = Instant::now();
    while !bird.route(V4).is_empty() {
        assert!(t.elapsed() < LIMIT, "BIRD kept the route for {LIMIT:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    (t.elapsed(), cut)
}

#[test]
fn bfd_comes_up_with_bird_and_a_dead_path_drops_the_route_in_under_a_second() {
    let lab = Lab::new();
    let bird = Bird::start(lab.router.name(), lab.dir.path(), &with_bfd(&bird_config(BIRD_ASN, OUR_ASN, 3), 100, 3));
    in_netns_threaded(lab.speaker.name(), || async {
        let (_tx, rx) = watch::channel(routes());
        let reg = prometheus::Registry::new();
        let h = Announcer::spawn(Some(bgp(true, FAST, "")), None, rx, &reg).expect("spawn");
        learnt(&bird, "VIP in BIRD").await;
        let line = bird_bfd(&bird, "Up").await;
        // BIRD runs our negotiated timers: 100 ms interval, 300 ms timeout.
        assert!(line.contains("0.100") && line.contains("0.300"), "{line}");
        let r = wait_for(LIMIT, "our BFD session Up", || async {
            h.report().peers[0].bfd.clone().filter(|b| b.state == State::Up && b.tx_interval_ms == 100)
        })
        .await;
        assert_eq!((r.remote_state, r.detection_time_ms), (State::Up, 300), "{r:?}");
        assert_ne!(r.remote_discriminator, 0);
        assert_eq!(metric(&reg, "padis_bfd_session_up", &[("peer", ROUTER_V4)]), 1.0);
        // (More than one Up only if a loaded machine made the session flap before this point.)
        assert!(metric(&reg, "padis_bfd_transitions_total", &[("peer", ROUTER_V4), ("to", "up")]) >= 1.0);
        let shown = h.report().to_string();
        assert!(shown.contains("established") && shown.contains(" bfd up failures "), "{shown}");

        // The node dies silently: BIRD's BFD notices in 3 x 100 ms and takes BGP (and the route) down.
        let (took, cut) = time_until_route_gone(&bird, lab.router.name(), lab.dir.path());
        assert!(took < Duration::from_secs(1), "route kept {took:?} with BFD 100 ms x 3");
        let p = bird.cmd("show protocols all padis");
        assert!(p.contains("BFD session down"), "{p}");
        // Our side hears BIRD's Down (its packets still reach us): a BFD failure here too.
        let r = wait_for(LIMIT, "our BFD failure", || async {
            h.report().peers[0].bfd.clone().filter(|b| b.failures >= 1)
        })
        .await;
        assert_ne!(r.state, State::Up, "{r:?}");
        assert!(metric(&reg, "padis_bfd_transitions_total", &[("to", "down")]) >= 1.0);

        // The path heals: BFD comes back Up and BGP re-establishes.
        drop(cut);
        learnt(&bird, "route back after the path heals").await;
        bird_bfd(&bird, "Up").await;
        wait_for(LIMIT, "BGP and BFD up again", || async {
            let p = h.report().peers[0].clone();
            (p.state == SessionState::Established && p.bfd.is_some_and(|b| b.state == State::Up)).then_some(())
        })
        .await;

        // One-way failure: we stop hearing BIRD. Our BFD detects it and closes the BGP session at once (Cease /
        // BFD Down), well before the 3 s hold time.
        let flaps = h.report().peers[0].flaps;
        let cut = Silence::start(lab.speaker.name(), lab.dir.path(), ROUTER_V4);
        let t = Instant::now();
        let p = wait_for(LIMIT, "our BGP session reset by BFD", || async {
            Some(h.report().peers[0].clone()).filter(|p| p.flaps > flaps)
        })
        .await;
        let took = t.elapsed();
        assert_eq!(p.last_error.as_deref(), Some("BFD session down"), "{p:?}");
        assert!(took < Duration::from_millis(1500), "BGP reset after {took:?}");
        assert!(p.bfd.is_some_and(|b| b.failures >= 2 && b.diag == Diag::DetectionTimeExpired));
        drop(cut);
        learnt(&bird, "route back after the second cut").await;
        h.stop().await;
    });
}

#[test]
fn bfd_over_ipv6_comes_up_and_checks_the_hop_limit() {
    let lab = Lab::new();
    let conf = padis_tests::bgp::bird_config_on(BIRD_ASN, OUR_ASN, 3, "fd00:99::2", "fd00:99::1");
    let bird = Bird::start(lab.router.name(), lab.dir.path(), &with_bfd(&conf, 100, 3));
    let text = format!(
        "[bgp]\nasn = {OUR_ASN}\nrouter_id = \"10.99.0.1\"\nhold_time = \"3s\"\nconnect_retry = \"300ms\"\n\
         [bgp.bfd]\ninterval = \"100ms\"\n\
         [[bgp.peer]]\naddress = \"fd00:99::2\"\nasn = {BIRD_ASN}\nnext_hop = \"10.99.0.1\"\nbfd = true\n"
    );
    let cfg = padis_model::parse_config(&text, "test.toml", Path::new(".")).unwrap_or_else(|e| panic!("{e}")).state.bgp;
    in_netns_threaded(lab.speaker.name(), || async {
        let (_tx, rx) = watch::channel(routes());
        let reg = prometheus::Registry::new();
        let h = Announcer::spawn(cfg, None, rx, &reg).expect("spawn");
        learnt(&bird, "VIP in BIRD over the IPv6 session").await;
        let line = wait_for(LIMIT, "BIRD BFD session Up over IPv6", || async {
            let out = bird.cmd("show bfd sessions");
            out.lines().find(|l| l.starts_with("fd00:99::1") && l.contains("Up")).map(str::to_string)
        })
        .await;
        assert!(line.contains("0.100") && line.contains("0.300"), "{line}");
        let r = wait_for(LIMIT, "our BFD session Up", || async {
            h.report().peers[0].bfd.clone().filter(|b| b.state == State::Up)
        })
        .await;
        // A packet from the router with hop limit 254 is dropped.
        let kill = ControlPacket {
            diag: Diag::AdminDown,
            state: State::AdminDown,
            poll: false,
            final_: false,
            cpi: false,
            demand: false,
            detect_mult: 3,
            my_discr: r.remote_discriminator,
            your_discr: r.local_discriminator,
            desired_min_tx: 100_000,
            required_min_rx: 100_000,
            required_min_echo_rx: 0,
        };
        let pkt = kill.encode();
        in_netns(lab.router.name(), || async move {
            use std::os::fd::AsRawFd;
            let s = UdpSocket::bind("[fd00:99::2]:0").expect("bind");
            let hops: libc::c_int = 254;
            // SAFETY: setsockopt on our own socket with a c_int option value of the right size.
            let r = unsafe {
                libc::setsockopt(
                    s.as_raw_fd(),
                    libc::IPPROTO_IPV6,
                    libc::IPV6_UNICAST_HOPS,
                    (&hops as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            assert_eq!(r, 0, "IPV6_UNICAST_HOPS: {}", std::io::Error::last_os_error());
            s.send_to(&pkt, "[fd00:99::1]:3784").expect("send");
        });
        wait_for(LIMIT, "hop-limit drop counted", || async {
            (metric(&reg, "padis_bfd_packets_dropped_total", &[("reason", "ttl")]) == 1.0).then_some(())
        })
        .await;
        assert_eq!(h.report().peers[0].bfd.as_ref().map(|b| b.state), Some(State::Up));
        h.stop().await;
    });
}

/// The control case: the same cut without BFD waits for BGP's hold time (3 s).
#[test]
fn without_bfd_the_same_cut_takes_the_hold_time() {
    let lab = Lab::new();
    let bird = Bird::start(lab.router.name(), lab.dir.path(), &bird_config(BIRD_ASN, OUR_ASN, 3));
    in_netns_threaded(lab.speaker.name(), || async {
        let (_tx, rx) = watch::channel(routes());
        let reg = prometheus::Registry::new();
        let h = Announcer::spawn(Some(bgp(false, FAST, "")), None, rx, &reg).expect("spawn");
        learnt(&bird, "VIP in BIRD").await;
        assert!(h.report().peers[0].bfd.is_none());
        let (took, _cut) = time_until_route_gone(&bird, lab.router.name(), lab.dir.path());
        assert!(took > Duration::from_millis(1500), "route gone after {took:?} without BFD");
        h.stop().await;
    });
}

/// tshark on the router's link, printing BFD packets from the speaker as `state diag` lines.
struct Capture {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Capture {
    fn start(ns: &str) -> Self {
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns, "tshark", "-i", "vr", "-l", "-n", "-f"])
            .arg(format!("udp dst port 3784 and src host {SPEAKER_V4}"))
            .args(["-T", "fields", "-e", "bfd.sta", "-e", "bfd.diag"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("tshark (installed by tests/setup)");
        let (tx, lines) = mpsc::channel();
        let out = child.stdout.take().expect("stdout");
        let err = child.stderr.take().expect("stderr");
        let (ready_tx, ready) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(err).lines().map_while(Result::ok) {
                if l.contains("Capturing on") {
                    let _ = ready_tx.send(());
                }
            }
        });
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        ready.recv_timeout(LIMIT).expect("tshark capturing");
        Capture { child, lines }
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn graceful_stop_sends_bfd_admin_down_and_bird_sees_no_failure() {
    let lab = Lab::new();
    let bird = Bird::start(
        lab.router.name(),
        lab.dir.path(),
        &with_bfd(&bird_config(BIRD_ASN, OUR_ASN, 3), RELAXED.0, RELAXED.1),
    );
    in_netns_threaded(lab.speaker.name(), || async {
        let (_tx, rx) = watch::channel(routes());
        let reg = prometheus::Registry::new();
        let h = Announcer::spawn(Some(bgp(true, RELAXED, "drain_wait = \"1s\"")), None, rx, &reg).expect("spawn");
        learnt(&bird, "VIP in BIRD").await;
        bird_bfd(&bird, "Up").await;
        let cap = Capture::start(lab.router.name());
        h.drain_and_stop().await;
        // Our last packets say AdminDown (state 0) with diag 7 (Administratively Down).
        let mut seen = Vec::new();
        let t = Instant::now();
        while t.elapsed() < LIMIT {
            match cap.lines.recv_timeout(Duration::from_millis(500)) {
                Ok(l) => seen.push(l),
                Err(_) if seen.iter().any(|l| is_admin_down(l)) => break,
                Err(_) => {}
            }
        }
        assert!(seen.iter().any(|l| is_admin_down(l)), "no AdminDown packet: {seen:?}");
        // BIRD did not count a BFD failure: the session ended by our Cease, not "BFD session down". Read from
        // its log: `show protocols` shows only the last event, and BIRD's first reconnection attempt (after a
        // random delay, refused) soon replaces the Cease there.
        let bird_log = || std::fs::read_to_string(lab.dir.path().join("bird.stderr")).unwrap_or_default();
        let log = wait_for(LIMIT, "BIRD sees the administrative shutdown", || async {
            Some(bird_log()).filter(|l| l.contains("Received: Administrative shutdown"))
        })
        .await;
        assert!(!log.contains("BFD session down"), "{log}");
        assert!(!log.contains("Timeout"), "BIRD's BFD timed out instead of seeing AdminDown: {log}");
        assert_eq!(metric(&reg, "padis_bfd_transitions_total", &[("to", "admindown")]), 1.0);
    });
}

/// BFD runs on its own thread: a daemon runtime that is blocked for four detection times (a long reconcile, a
/// burst of work on the one worker) delays BGP's keepalives but not BFD's packets, so the router sees no failure.
#[test]
fn a_blocked_runtime_does_not_make_bfd_fail() {
    let lab = Lab::new();
    let bird =
        Bird::start(lab.router.name(), lab.dir.path(), &with_bfd(&bird_config(BIRD_ASN, OUR_ASN, 3), FAST.0, FAST.1));
    // One current-thread runtime for the announcer and this test: blocking it blocks every task on it.
    in_netns(lab.speaker.name(), || async {
        let (_tx, rx) = watch::channel(routes());
        let reg = prometheus::Registry::new();
        let h = Announcer::spawn(Some(bgp(true, FAST, "")), None, rx, &reg).expect("spawn");
        learnt(&bird, "VIP in BIRD").await;
        bird_bfd(&bird, "Up").await;
        let before = h.report().peers[0].bfd.clone().expect("bfd report");
        let downs = metric(&reg, "padis_bfd_transitions_total", &[("to", "down")]);
        let log = lab.dir.path().join("bird.stderr");
        let logged = std::fs::read_to_string(&log).unwrap_or_default().len();

        std::thread::sleep(Duration::from_millis(1200));
        // Let the BGP session task run again (its keepalive is late, well within the 3 s hold time).
        tokio::time::sleep(Duration::from_millis(500)).await;

        let after = h.report().peers[0].bfd.clone().expect("bfd report");
        assert_eq!(after.state, State::Up, "{after:?}");
        assert_eq!(after.failures, before.failures, "{before:?} -> {after:?}");
        assert_eq!(metric(&reg, "padis_bfd_transitions_total", &[("to", "down")]), downs);
        let log = std::fs::read_to_string(&log).unwrap_or_default();
        let new = log.get(logged..).unwrap_or_default();
        assert!(
            !new.contains("Timeout") && !new.contains("Down"),
            "BIRD's BFD saw a failure while our runtime was blocked: {new}"
        );
        assert!(!bird.route(V4).is_empty(), "route lost");
        assert_eq!(h.report().peers[0].state, SessionState::Established);
        h.stop().await;
    });
}

fn is_admin_down(line: &str) -> bool {
    let f: Vec<&str> = line.split_whitespace().collect();
    let num = |s: &str| s.strip_prefix("0x").map(|h| u8::from_str_radix(h, 16).ok()).unwrap_or_else(|| s.parse().ok());
    f.len() == 2 && num(f[0]) == Some(0) && num(f[1]) == Some(7)
}

/// Sends `pkt` from the router's namespace to our BFD port with `ttl`.
fn forge(router_ns: &str, pkt: &[u8], ttl: u32) {
    let pkt = pkt.to_vec();
    in_netns(router_ns, || async move {
        let s = UdpSocket::bind((ROUTER_V4, 0)).expect("bind");
        s.set_ttl(ttl).expect("ttl");
        s.send_to(&pkt, (SPEAKER_V4, padis_bgp::bfd::CONTROL_PORT)).expect("send");
    });
}

#[test]
fn forged_and_malformed_packets_are_dropped_and_counted() {
    let lab = Lab::new();
    let bird = Bird::start(
        lab.router.name(),
        lab.dir.path(),
        &with_bfd(&bird_config(BIRD_ASN, OUR_ASN, 3), RELAXED.0, RELAXED.1),
    );
    in_netns_threaded(lab.speaker.name(), || async {
        let (_tx, rx) = watch::channel(routes());
        let reg = prometheus::Registry::new();
        let h = Announcer::spawn(Some(bgp(true, RELAXED, "")), None, rx, &reg).expect("spawn");
        learnt(&bird, "VIP in BIRD").await;
        let r = wait_for(LIMIT, "our BFD session Up", || async {
            h.report().peers[0].bfd.clone().filter(|b| b.state == State::Up)
        })
        .await;
        let dropped = |reason: &str| metric(&reg, "padis_bfd_packets_dropped_total", &[("reason", reason)]);
        // A packet that would take the session down if accepted: the router's AdminDown, right discriminators.
        let kill = ControlPacket {
            diag: Diag::AdminDown,
            state: State::AdminDown,
            poll: false,
            final_: false,
            cpi: false,
            demand: false,
            detect_mult: 3,
            my_discr: r.remote_discriminator,
            your_discr: r.local_discriminator,
            desired_min_tx: 100_000,
            required_min_rx: 100_000,
            required_min_echo_rx: 0,
        };
        // From two hops away (TTL 254): GTSM drops it.
        forge(lab.router.name(), &kill.encode(), 254);
        wait_for(LIMIT, "TTL drop counted", || async { (dropped("ttl") == 1.0).then_some(()) }).await;
        // Right TTL, wrong Your Discriminator.
        let wrong = ControlPacket { your_discr: r.local_discriminator.wrapping_add(1).max(1), ..kill };
        forge(lab.router.name(), &wrong.encode(), 255);
        wait_for(LIMIT, "discriminator drop counted", || async { (dropped("discriminator") == 1.0).then_some(()) })
            .await;
        // Malformed: version 2, and a truncated packet.
        let mut v2 = kill.encode();
        v2[0] = (2 << 5) | 7;
        forge(lab.router.name(), &v2, 255);
        forge(lab.router.name(), &kill.encode()[..20], 255);
        wait_for(LIMIT, "malformed drops counted", || async { (dropped("malformed") == 2.0).then_some(()) }).await;
        // None of them touched the session, on either side.
        let now = h.report().peers[0].bfd.clone().expect("bfd report");
        assert_eq!((now.state, now.failures), (State::Up, 0), "{now:?}");
        assert_eq!(metric(&reg, "padis_bfd_transitions_total", &[("to", "down")]), 0.0);
        assert_eq!(h.report().peers[0].state, SessionState::Established);
        bird_bfd(&bird, "Up").await;

        // The control: the same AdminDown packet with TTL 255 and the right discriminators is obeyed.
        forge(lab.router.name(), &kill.encode(), 255);
        wait_for(LIMIT, "a genuine-looking AdminDown is obeyed", || async {
            (metric(&reg, "padis_bfd_transitions_total", &[("to", "down")]) >= 1.0).then_some(())
        })
        .await;
        h.stop().await;
    });
}

/// The README's FRR configuration: bfdd with a 100 ms x 3 profile, bgpd with `neighbor ... bfd`.
const FRR_BFDD: &str =
    "bfd\n profile padis\n  receive-interval 100\n  transmit-interval 100\n  detect-multiplier 3\n !\n!\n";
const FRR_BGPD: &str = "router bgp 65010\n bgp router-id 10.99.0.2\n neighbor 10.99.0.1 remote-as 4200000001\n \
     neighbor 10.99.0.1 timers 1 3\n neighbor 10.99.0.1 timers connect 1\n neighbor 10.99.0.1 bfd\n \
     neighbor 10.99.0.1 bfd profile padis\n address-family ipv4 unicast\n  neighbor 10.99.0.1 route-map ALL in\n \
     exit-address-family\n!\nroute-map ALL permit 10\n!\n";

/// FRR bfdd's view of our session (`show bfd peers json`), once `probe` accepts it.
async fn frr_peer(frr: &Frr, what: &str, probe: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    wait_for(LIMIT, what, || async {
        let v = frr.json("show bfd peers json");
        v.as_array().and_then(|a| a.iter().find(|p| p["peer"] == SPEAKER_V4).cloned()).filter(|p| probe(p))
    })
    .await
}

#[test]
fn frr_bfdd_comes_up_drops_a_dead_node_in_under_a_second_and_sees_admin_down() {
    let lab = Lab::new();
    let frr = Frr::start(lab.router.name(), &[("zebra", "hostname router\n"), ("bfdd", FRR_BFDD), ("bgpd", FRR_BGPD)]);
    let kernel_route = || !lab.router.try_ip(&["route", "show", "198.51.100.7"]).trim().is_empty();
    in_netns_threaded(lab.speaker.name(), || async {
        let (_tx, rx) = watch::channel(routes());
        let reg = prometheus::Registry::new();
        let h = Announcer::spawn(Some(bgp(true, FAST, "drain_wait = \"0s\"")), None, rx, &reg).expect("spawn");
        wait_for(LIMIT, "VIP in FRR's kernel", || async { kernel_route().then_some(()) }).await;
        let p = frr_peer(&frr, "FRR BFD peer up", |p| p["status"] == "up").await;
        assert_eq!(p["remote-detect-multiplier"], 3, "{p}");
        assert_eq!(p["remote-receive-interval"], 100, "{p}");
        wait_for(LIMIT, "our BFD Up at 100 ms", || async {
            h.report().peers[0].bfd.clone().filter(|b| b.state == State::Up && b.tx_interval_ms == 100)
        })
        .await;

        // Dead node: FRR's BFD takes BGP down and zebra removes the route.
        let cut = Silence::start(lab.router.name(), lab.dir.path(), SPEAKER_V4);
        let t = Instant::now();
        while kernel_route() {
            assert!(t.elapsed() < LIMIT, "FRR kept the route for {LIMIT:?}: {}", frr.logs());
            std::thread::sleep(Duration::from_millis(20));
        }
        let took = t.elapsed();
        assert!(took < Duration::from_secs(1), "FRR kept the route {took:?} with BFD 100 ms x 3");
        drop(cut);
        wait_for(LIMIT, "route back after the path heals", || async { kernel_route().then_some(()) }).await;
        frr_peer(&frr, "FRR BFD peer up again", |p| p["status"] == "up").await;

        // Graceful stop: FRR sees the AdminDown as such.
        h.drain_and_stop().await;
        let p = frr_peer(&frr, "FRR BFD peer down by AdminDown", |p| p["status"] == "down").await;
        assert_eq!(p["remote-diagnostic"], "administratively down", "{p}");
    });
}
