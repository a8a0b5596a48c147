//! The BGP announcer against a real BIRD 2 in a network namespace: session with a 4-octet ASN, IPv4 and
//! IPv6 (MP-BGP) VIPs with next hop and attributes, withdraw, graceful shutdown (RFC 8326), hold timer expiry,
//! and reconnect after BIRD restarts.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use padis_bgp::{Announcement, Announcer, SessionState};
use padis_model::bgp::BgpConfig;
use padis_tests::bgp::{bird_config, wait_for, Bird, Lab, ROUTER_V4};
use padis_tests::netns::in_netns;
use tokio::sync::watch;

const OUR_ASN: u32 = 4_200_000_001;
const BIRD_ASN: u32 = 65010;
const V4: &str = "198.51.100.7/32";
const V6: &str = "2001:db8:7::7/128";
const LIMIT: Duration = Duration::from_secs(20);

fn bgp(peer_asn: u32, hold: u32, extra: &str) -> BgpConfig {
    let text = format!(
        "[bgp]\nasn = {OUR_ASN}\nrouter_id = \"10.99.0.1\"\nhold_time = \"{hold}s\"\nconnect_retry = \"300ms\"\n{extra}\n\
         [[bgp.peer]]\naddress = \"{ROUTER_V4}\"\nasn = {peer_asn}\nnext_hop6 = \"fd00:99::1\"\n"
    );
    let v = padis_model::parse_config(&text, "test.toml", Path::new(".")).unwrap_or_else(|e| panic!("{e}"));
    v.state.bgp.expect("bgp section")
}

fn routes(list: &[(&str, &str)]) -> BTreeSet<Announcement> {
    list.iter().map(|(n, p)| Announcement { prefix: p.parse().expect("prefix"), name: n.to_string() }).collect()
}

async fn learnt(bird: &Bird, prefix: &str, what: &str) -> String {
    wait_for(LIMIT, what, || async { Some(bird.route(prefix)).filter(|r| !r.is_empty()) }).await
}

async fn gone(bird: &Bird, prefix: &str, what: &str) {
    wait_for(LIMIT, what, || async { bird.route(prefix).is_empty().then_some(()) }).await
}

fn metric(reg: &prometheus::Registry, name: &str) -> f64 {
    reg.gather()
        .iter()
        .filter(|f| f.name() == name)
        .flat_map(|f| f.get_metric().iter().map(|m| m.get_gauge().value() + m.get_counter().value()))
        .sum()
}

#[test]
fn bird_learns_v4_and_v6_vips_and_withdraws() {
    let lab = Lab::new();
    let bird = Bird::start(lab.router.name(), lab.dir.path(), &bird_config(BIRD_ASN, OUR_ASN, 9));
    in_netns(lab.speaker.name(), || async {
        let (tx, rx) = watch::channel(routes(&[("web", V4), ("web6", V6)]));
        let reg = prometheus::Registry::new();
        let h = Announcer::spawn(Some(bgp(BIRD_ASN, 9, "med = 20")), None, rx, &reg).expect("spawn");

        let r4 = learnt(&bird, V4, "IPv4 VIP in BIRD").await;
        assert!(r4.contains("BGP.next_hop: 10.99.0.1"), "{r4}");
        assert!(r4.contains("BGP.as_path: 4200000001"), "{r4}");
        assert!(r4.contains("BGP.origin: IGP"), "{r4}");
        assert!(r4.contains("BGP.med: 20"), "{r4}");
        assert!(!r4.contains("BGP.community"), "{r4}");
        let r6 = learnt(&bird, V6, "IPv6 VIP in BIRD").await;
        assert!(r6.contains("BGP.next_hop: fd00:99::1"), "{r6}");
        assert!(r6.contains("BGP.as_path: 4200000001"), "{r6}");
        let p = bird.cmd("show protocols all padis");
        assert!(p.contains("Established") && p.contains("Neighbor AS:      4200000001"), "{p}");
        assert!(p.contains("ipv6") && p.contains("ipv4"), "{p}");

        let rep = h.report();
        assert_eq!(rep.peers[0].state, SessionState::Established);
        assert_eq!(rep.peers[0].routes_announced, 2);
        assert_eq!(rep.peers[0].hold_time_secs, Some(9));
        assert_eq!(metric(&reg, "padis_bgp_session_state"), 5.0);
        assert_eq!(metric(&reg, "padis_bgp_routes_announced"), 2.0);

        // Unhealthy VIP leaves the set: withdrawn; the other stays.
        tx.send_replace(routes(&[("web6", V6)]));
        gone(&bird, V4, "IPv4 VIP withdrawn").await;
        assert!(!bird.route(V6).is_empty(), "IPv6 VIP must stay");
        // Back again, and the IPv6 one away.
        tx.send_replace(routes(&[("web", V4)]));
        learnt(&bird, V4, "IPv4 VIP announced again").await;
        gone(&bird, V6, "IPv6 VIP withdrawn").await;
        assert_eq!(h.report().peers[0].routes_announced, 1);
        // `reload in` makes BIRD send ROUTE-REFRESH: we answer with our routes, the session stays up.
        let sent = metric(&reg, "padis_bgp_updates_sent_total");
        bird.cmd("reload in padis");
        wait_for(LIMIT, "ROUTE-REFRESH answered", || async {
            (metric(&reg, "padis_bgp_updates_sent_total") > sent).then_some(())
        })
        .await;
        assert!(!bird.route(V4).is_empty());
        assert_eq!(h.report().peers[0].flaps, 0);
        h.stop().await;
        gone(&bird, V4, "all withdrawn on stop").await;
    });
}

#[test]
fn drain_announces_graceful_shutdown_then_withdraws() {
    let lab = Lab::new();
    // iBGP, so that LOCAL_PREF is sent (lowered to 0 on drain).
    let bird = Bird::start(lab.router.name(), lab.dir.path(), &bird_config(OUR_ASN, OUR_ASN, 9));
    in_netns(lab.speaker.name(), || async {
        let (_tx, rx) = watch::channel(routes(&[("web", V4), ("web6", V6)]));
        let reg = prometheus::Registry::new();
        let h = Announcer::spawn(Some(bgp(OUR_ASN, 9, "drain_wait = \"3s\"")), None, rx, &reg).expect("spawn");
        let before = learnt(&bird, V4, "IPv4 VIP in BIRD").await;
        assert!(before.contains("BGP.local_pref: 100") && !before.contains("65535"), "{before}");
        learnt(&bird, V6, "IPv6 VIP in BIRD").await;

        let started = Instant::now();
        let drain = tokio::spawn(h.drain_and_stop());
        let gs = wait_for(LIMIT, "GRACEFUL_SHUTDOWN community", || async {
            Some(bird.route(V4)).filter(|r| r.contains("(65535,0)"))
        })
        .await;
        let gs_at = started.elapsed();
        assert!(gs.contains("BGP.local_pref: 0"), "{gs}");
        assert!(gs.contains("BGP.med: 4294967295"), "{gs}");
        let gs6 = bird.route(V6);
        assert!(gs6.contains("(65535,0)"), "{gs6}");
        gone(&bird, V4, "withdraw after drain_wait").await;
        let withdrawn_at = started.elapsed();
        assert!(withdrawn_at >= Duration::from_millis(2500), "withdrawn after {withdrawn_at:?}, GS at {gs_at:?}");
        gone(&bird, V6, "IPv6 withdraw").await;
        drain.await.expect("drain task");
        let p = wait_for(LIMIT, "BIRD sees the administrative shutdown", || async {
            Some(bird.cmd("show protocols all padis")).filter(|p| p.contains("Administrative shutdown"))
        })
        .await;
        assert!(!p.contains("Established"), "{p}");
    });
}

#[test]
fn reconnects_after_bird_restart() {
    let lab = Lab::new();
    let mut bird = Bird::start(lab.router.name(), lab.dir.path(), &bird_config(BIRD_ASN, OUR_ASN, 9));
    in_netns(lab.speaker.name(), || async {
        let (_tx, rx) = watch::channel(routes(&[("web", V4)]));
        let reg = prometheus::Registry::new();
        let h = Announcer::spawn(Some(bgp(BIRD_ASN, 9, "")), None, rx, &reg).expect("spawn");
        learnt(&bird, V4, "IPv4 VIP in BIRD").await;
        bird.restart();
        assert!(bird.route(V4).is_empty(), "fresh BIRD has no routes yet");
        learnt(&bird, V4, "IPv4 VIP relearnt after BIRD restart").await;
        let rep = h.report();
        assert_eq!(rep.peers[0].state, SessionState::Established);
        assert!(rep.peers[0].flaps >= 1, "{rep:?}");
        assert!(metric(&reg, "padis_bgp_session_flaps_total") >= 1.0);
        h.stop().await;
    });
}

#[test]
fn hold_timer_expires_when_keepalives_stop_then_recovers() {
    let lab = Lab::new();
    let bird = Bird::start(lab.router.name(), lab.dir.path(), &bird_config(BIRD_ASN, OUR_ASN, 3));
    let rules = lab.dir.path().join("drop.nft");
    std::fs::write(
        &rules,
        "table inet padis_test {\n chain input {\n  type filter hook input priority 0;\n  \
         ip saddr 10.99.0.1 tcp dport 179 drop\n  ip saddr 10.99.0.1 tcp sport 179 drop\n }\n}\n",
    )
    .expect("nft rules");
    let nft = |args: &[&str]| {
        let mut a = vec!["netns", "exec", lab.router.name(), "nft"];
        a.extend_from_slice(args);
        padis_tests::netns::run("ip", &a);
    };
    in_netns(lab.speaker.name(), || async {
        let (_tx, rx) = watch::channel(routes(&[("web", V4)]));
        let reg = prometheus::Registry::new();
        let h = Announcer::spawn(Some(bgp(BIRD_ASN, 3, "")), None, rx, &reg).expect("spawn");
        learnt(&bird, V4, "IPv4 VIP in BIRD").await;
        assert_eq!(h.report().peers[0].hold_time_secs, Some(3));
        // Nothing from us reaches BIRD any more: our KEEPALIVEs stop arriving.
        nft(&["-f", rules.to_str().expect("path")]);
        let t = Instant::now();
        let p = wait_for(LIMIT, "BIRD hold timer expiry", || async {
            Some(bird.cmd("show protocols all padis")).filter(|p| p.contains("Hold timer expired"))
        })
        .await;
        assert!(t.elapsed() >= Duration::from_secs(1), "expired too early: {p}");
        assert!(bird.route(V4).is_empty(), "route must be gone with the session");
        wait_for(LIMIT, "our side notices", || async {
            (h.report().peers[0].state != SessionState::Established).then_some(())
        })
        .await;
        nft(&["delete", "table", "inet", "padis_test"]);
        learnt(&bird, V4, "route back after the path recovers").await;
        assert!(h.report().peers[0].flaps >= 1);
        h.stop().await;
    });
}

#[test]
fn ipv6_session_carries_both_families() {
    let lab = Lab::new();
    let conf = padis_tests::bgp::bird_config_on(BIRD_ASN, OUR_ASN, 9, "fd00:99::2", "fd00:99::1");
    let bird = Bird::start(lab.router.name(), lab.dir.path(), &conf);
    let text = format!(
        "[bgp]\nasn = {OUR_ASN}\nrouter_id = \"10.99.0.1\"\nconnect_retry = \"300ms\"\n\
         [[bgp.peer]]\naddress = \"fd00:99::2\"\nasn = {BIRD_ASN}\nnext_hop = \"10.99.0.1\"\n"
    );
    let cfg = padis_model::parse_config(&text, "test.toml", Path::new(".")).unwrap_or_else(|e| panic!("{e}"));
    in_netns(lab.speaker.name(), || async {
        let (_tx, rx) = watch::channel(routes(&[("web", V4), ("web6", V6)]));
        let h = Announcer::spawn(cfg.state.bgp, None, rx, &prometheus::Registry::new()).expect("spawn");
        let r6 = learnt(&bird, V6, "IPv6 VIP over the IPv6 session").await;
        assert!(r6.contains("BGP.next_hop: fd00:99::1"), "our session address is the next hop: {r6}");
        let r4 = learnt(&bird, V4, "IPv4 VIP over the IPv6 session").await;
        assert!(r4.contains("BGP.next_hop: 10.99.0.1"), "configured next_hop: {r4}");
        h.stop().await;
    });
}

/// Routes BIRD holds from us, summed over its tables (from `show route count protocol padis`).
fn bird_count(bird: &Bird) -> usize {
    bird.cmd("show route count protocol padis")
        .lines()
        .filter(|l| l.contains("routes for"))
        .filter_map(|l| l.split_whitespace().next()?.parse::<usize>().ok())
        .sum()
}

/// Benchmark, run explicitly:
/// `cargo test -p padis-tests --test bgp -- --ignored --nocapture bgp_bird::bench_`.
/// Time for BIRD to learn 10,000 IPv4 + 2,000 IPv6 VIPs from a fresh session, to follow a churn of 1,000
/// VIPs out and 1,000 others in, and to withdraw everything.
#[test]
#[ignore = "benchmark"]
fn bench_bird_learns_12k_vips() {
    let lab = Lab::new();
    let bird = Bird::start(lab.router.name(), lab.dir.path(), &bird_config(BIRD_ASN, OUR_ASN, 90));
    let v4 = |i: u32| format!("10.{}.{}.{}/32", 100 + (i >> 16), (i >> 8) & 255, i & 255);
    let v6 = |i: u32| format!("2001:db8:1::{i:x}/128");
    let set = |a: std::ops::Range<u32>, b: std::ops::Range<u32>| -> BTreeSet<Announcement> {
        a.map(|i| (format!("v{i}"), v4(i)))
            .chain(b.map(|i| (format!("w{i}"), v6(i))))
            .map(|(n, p)| Announcement { prefix: p.parse().expect("prefix"), name: n })
            .collect()
    };
    in_netns(lab.speaker.name(), || async {
        let limit = Duration::from_secs(120);
        let (tx, rx) = watch::channel(set(0..10_000, 0..2_000));
        let t = Instant::now();
        let h = Announcer::spawn(Some(bgp(BIRD_ASN, 90, "")), None, rx, &prometheus::Registry::new()).expect("spawn");
        wait_for(limit, "12k routes", || async { (bird_count(&bird) == 12_000).then_some(()) }).await;
        let full = t.elapsed();
        let t = Instant::now();
        tx.send_replace(set(1_000..11_000, 0..2_000));
        wait_for(limit, "churn", || async {
            (bird_count(&bird) == 12_000 && bird.route(&v4(10_500)).contains("BGP")).then_some(())
        })
        .await;
        let churn = t.elapsed();
        let t = Instant::now();
        tx.send_replace(BTreeSet::new());
        wait_for(limit, "all withdrawn", || async { (bird_count(&bird) == 0).then_some(()) }).await;
        let withdraw = t.elapsed();
        println!(
            "RESULT suite=bgp full_table_12k_ms={} churn_2k_ms={} withdraw_12k_ms={}",
            full.as_millis(),
            churn.as_millis(),
            withdraw.as_millis()
        );
        h.stop().await;
    });
}

/// A `[bgp]` config with one peer (BIRD) whose `[[bgp.peer]]` gets `peer_extra` and `[bgp]` gets `extra`,
/// validated from `dir` (for relative secret files).
fn bgp_with(dir: &Path, extra: &str, peer_extra: &str) -> BgpConfig {
    let text = format!(
        "[bgp]\nasn = {OUR_ASN}\nrouter_id = \"10.99.0.1\"\nhold_time = \"9s\"\nconnect_retry = \"300ms\"\n{extra}\n\
         [[bgp.peer]]\naddress = \"{ROUTER_V4}\"\nasn = {BIRD_ASN}\n{peer_extra}\n"
    );
    let v = padis_model::parse_config(&text, "test.toml", dir).unwrap_or_else(|e| panic!("{e}"));
    v.state.bgp.expect("bgp section")
}

/// `bird_config` with `lines` added to its BGP protocol.
fn bird_with(lines: &str) -> String {
    bird_config(BIRD_ASN, OUR_ASN, 9).replacen("  keepalive time 1;\n", &format!("  keepalive time 1;\n{lines}\n"), 1)
}

/// A `TcpExt` counter of namespace `ns`'s kernel (`/proc/net/netstat`).
fn tcp_ext(ns: &str, name: &str) -> u64 {
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", ns, "cat", "/proc/net/netstat"])
        .output()
        .expect("read /proc/net/netstat");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let lines: Vec<&str> = text.lines().filter(|l| l.starts_with("TcpExt:")).collect();
    let (names, values) = (lines[0].split_whitespace(), lines[1].split_whitespace());
    names
        .zip(values)
        .find(|(n, _)| *n == name)
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or_else(|| panic!("no TcpExt {name} in {text}"))
}

/// Watches the session for `secs`: panics if BIRD ever has it Established or learns [`V4`], or (with `ours`) if
/// our side ever reaches Established; returns our last error.
async fn never_established(h: &padis_bgp::AnnouncerHandle, bird: &Bird, secs: u64, ours: bool) -> Option<String> {
    let end = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < end {
        let p = h.report().peers[0].clone();
        assert!(!ours || p.state != SessionState::Established, "session established: {p:?}");
        assert!(!bird.cmd("show protocols padis").contains("Established"));
        assert!(bird.route(V4).is_empty(), "BIRD learnt the VIP");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    h.report().peers[0].last_error.clone()
}

#[test]
fn md5_same_password_establishes_wrong_one_never_does() {
    let lab = Lab::new();
    let key = "padis-md5-0123456789";
    let mut bird = Bird::start(lab.router.name(), lab.dir.path(), &bird_with(&format!("  password \"{key}\";")));
    let file = lab.dir.path().join("r1.key");
    std::fs::write(&file, format!("{key}\n")).expect("key file");
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    }
    let dir = lab.dir.path().to_path_buf();
    let router = lab.router.name().to_string();
    in_netns(lab.speaker.name(), || async {
        // Same key, from an owner-only file: up, routes learnt, every segment signed.
        let (_tx, rx) = watch::channel(routes(&[("web", V4)]));
        let reg = prometheus::Registry::new();
        let cfg = bgp_with(&dir, "", "password_file = \"r1.key\"");
        let h = Announcer::spawn(Some(cfg), None, rx.clone(), &reg).expect("spawn");
        learnt(&bird, V4, "VIP over an MD5-signed session").await;
        assert_eq!(h.report().peers[0].state, SessionState::Established);
        assert!(!format!("{:?}", h.report()).contains(key));
        h.stop().await;

        // A wrong key: BIRD's kernel drops our signed SYNs (counted), nothing is ever established.
        let failures = tcp_ext(&router, "TCPMD5Failure");
        let cfg = bgp_with(&dir, "", "password = \"not-the-key\"");
        let h = Announcer::spawn(Some(cfg), None, rx.clone(), &reg).expect("spawn");
        let err = never_established(&h, &bird, 6, true).await;
        assert!(err.is_some_and(|e| e.contains("timed out")), "{:?}", h.report().peers[0]);
        assert!(tcp_ext(&router, "TCPMD5Failure") > failures, "BIRD's kernel saw no bad signature");
        assert!(bird.route(V4).is_empty());
        h.stop().await;

        // Passive, bound to the local address only, the key on the listener: BIRD connects with its key.
        bird.restart();
        let cfg = bgp_with(&dir, "local_address = \"10.99.0.1\"", "passive = true\npassword_file = \"r1.key\"");
        let h = Announcer::spawn(Some(cfg), None, rx.clone(), &reg).expect("spawn");
        learnt(&bird, V4, "VIP over a passive MD5-signed session").await;
        let ss = std::process::Command::new("ss").args(["-Hltn", "sport = :179"]).output().expect("ss");
        let ss = String::from_utf8_lossy(&ss.stdout).into_owned();
        let local: Vec<&str> = ss.lines().filter_map(|l| l.split_whitespace().nth(3)).collect();
        assert_eq!(local, ["10.99.0.1:179"], "{ss}");
        h.stop().await;
    });
}

#[test]
fn gtsm_against_bird_ttl_security() {
    let lab = Lab::new();
    let bird = Bird::start(lab.router.name(), lab.dir.path(), &bird_with("  ttl security yes;"));
    let dir = lab.dir.path().to_path_buf();
    in_netns(lab.speaker.name(), || async {
        let (_tx, rx) = watch::channel(routes(&[("web", V4)]));
        let reg = prometheus::Registry::new();
        // Both sides GTSM: up.
        let h = Announcer::spawn(Some(bgp_with(&dir, "", "gtsm = true")), None, rx.clone(), &reg).expect("spawn");
        learnt(&bird, V4, "VIP over a GTSM session").await;
        h.stop().await;
        // Without GTSM our eBGP packets leave with TTL 1: BIRD (minimum TTL 255) never takes the session. (BIRD
        // sets its minimum on a connection after accepting it, so it may read an OPEN that came first and answer:
        // our side can see its KEEPALIVE, BIRD never sees ours.)
        let h = Announcer::spawn(Some(bgp_with(&dir, "", "")), None, rx.clone(), &reg).expect("spawn");
        never_established(&h, &bird, 5, false).await;
        h.stop().await;
    });
    // BIRD without TTL security sends TTL 1: our minimum of 254 drops its answers.
    let lab = Lab::new();
    let bird = Bird::start(lab.router.name(), lab.dir.path(), &bird_with(""));
    let dir = lab.dir.path().to_path_buf();
    in_netns(lab.speaker.name(), || async {
        let (_tx, rx) = watch::channel(routes(&[("web", V4)]));
        let reg = prometheus::Registry::new();
        let h = Announcer::spawn(Some(bgp_with(&dir, "", "gtsm = true")), None, rx, &reg).expect("spawn");
        never_established(&h, &bird, 5, true).await;
        h.stop().await;
    });
}

/// Graceful restart (RFC 4724) across an upgrade: the old process's session closes without a withdrawal, BIRD
/// keeps the routes (stale) until the new process's session (Restart State bit) announces them again and sends
/// its End-of-RIB; the route announced again is never removed, the one no longer announced is removed at the
/// End-of-RIB.
#[test]
fn graceful_restart_keeps_routes_across_a_session_handover() {
    let lab = Lab::new();
    let config = bird_config(BIRD_ASN, OUR_ASN, 9).replacen(
        "  keepalive time 1;\n",
        "  keepalive time 1;\n  debug { states, routes, events };\n",
        1,
    );
    let bird = Bird::start(lab.router.name(), lab.dir.path(), &config);
    let log = || std::fs::read_to_string(lab.dir.path().join("bird.stderr")).unwrap_or_default();
    in_netns(lab.speaker.name(), || async {
        let gr = "graceful_restart = \"60s\"";
        let (_tx, rx) = watch::channel(routes(&[("web", V4), ("web6", V6)]));
        let old = Announcer::spawn(Some(bgp(BIRD_ASN, 9, gr)), None, rx, &prometheus::Registry::new()).expect("spawn");
        learnt(&bird, V4, "IPv4 VIP in BIRD").await;
        learnt(&bird, V6, "IPv6 VIP in BIRD").await;
        let p = bird.cmd("show protocols all padis");
        assert!(p.contains("Neighbor GR") || p.contains("graceful restart"), "{p}");

        // The old process hands over: its session closes, no withdrawal, no NOTIFICATION.
        old.hand_over().await;
        let seen =
            wait_for(LIMIT, "BIRD notices the restart", || async { log().contains("graceful restart").then_some(()) });
        seen.await;
        // The routes stay while no session is up.
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(!bird.route(V4).is_empty() && !bird.route(V6).is_empty(), "stale routes kept:\n{}", log());

        // The new process announces the IPv4 VIP only.
        let (_tx2, rx2) = watch::channel(routes(&[("web", V4)]));
        let reg = prometheus::Registry::new();
        let new = Announcer::spawn_restarted(Some(bgp(BIRD_ASN, 9, gr)), None, rx2, &reg).expect("spawn");
        gone(&bird, V6, "the route not announced again is removed at the End-of-RIB").await;
        assert!(!bird.route(V4).is_empty(), "{}", log());
        assert_eq!(new.report().peers[0].state, SessionState::Established);
        let text = log();
        let removed: Vec<&str> = text.lines().filter(|l| l.contains("removed") && l.contains(V4)).collect();
        assert!(removed.is_empty(), "the IPv4 VIP was withdrawn during the handover: {removed:?}\n{text}");
        // (The log does show removals: the IPv6 VIP's.)
        assert!(text.lines().any(|l| l.contains("removed") && l.contains(V6)), "{text}");
        assert!(text.contains("graceful restart done") || text.contains("Graceful restart done"), "{text}");

        // A stop (Cease) is not a restart: the route goes at once.
        new.stop().await;
        gone(&bird, V4, "withdrawn on stop").await;
    });
}
