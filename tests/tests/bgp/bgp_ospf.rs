//! OSPF sites: VIPs as kernel host routes in a table (picked up by a BIRD kernel protocol and exported to
//! OSPF), or as addresses on an interface. Everything inside a namespace; removed on stop.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use padis_bgp::{Announcement, Announcer};
use padis_model::bgp::OspfConfig;
use padis_tests::bgp::{wait_for, Bird};
use padis_tests::netns::{in_netns, Netns};
use tokio::sync::watch;

const LIMIT: Duration = Duration::from_secs(15);

fn ospf(extra: &str) -> OspfConfig {
    let text = format!("[ospf]\ntable = 100\n{extra}\n");
    let v = padis_model::parse_config(&text, "test.toml", Path::new(".")).unwrap_or_else(|e| panic!("{e}"));
    v.state.ospf.expect("ospf section")
}

fn routes(list: &[&str]) -> BTreeSet<Announcement> {
    list.iter().map(|p| Announcement { prefix: p.parse().expect("prefix"), name: format!("vip-{p}") }).collect()
}

const BIRD_OSPF: &str = r#"
log stderr all;
router id 10.98.0.1;
protocol device { scan time 1; }
ipv4 table padis4;
protocol kernel padis_vips {
  ipv4 { table padis4; import all; export none; };
  kernel table 100;
  learn;
  scan time 1;
}
protocol ospf v2 ospf_site {
  ipv4 { table padis4; import none; export filter { ospf_metric2 = krt_metric; accept; }; };
  area 0 { interface "lo" { stub; }; };
}
"#;

#[test]
fn route_mode_writes_the_table_bird_redistributes() {
    let ns = Netns::new("o").expect("netns");
    let dir = tempfile::tempdir().expect("dir");
    let bird = Bird::start(ns.name(), dir.path(), BIRD_OSPF);
    in_netns(ns.name(), || async {
        let (tx, rx) = watch::channel(routes(&["198.51.100.20/32", "2001:db8:20::1/128"]));
        let reg = prometheus::Registry::new();
        let h = Announcer::spawn(None, Some(ospf("mode = \"route\"")), rx, &reg).expect("spawn");
        let t4 = wait_for(LIMIT, "IPv4 host route in table 100", || async {
            Some(ns.try_ip(&["-4", "route", "show", "table", "100"])).filter(|t| t.contains("198.51.100.20 dev lo"))
        })
        .await;
        assert!(t4.contains("proto 237"), "{t4}");
        wait_for(LIMIT, "IPv6 host route in table 100", || async {
            Some(ns.try_ip(&["-6", "route", "show", "table", "100"])).filter(|t| t.contains("2001:db8:20::1 dev lo"))
        })
        .await;
        // BIRD's kernel protocol learns it and the OSPF protocol exports it.
        // BIRD's kernel protocol learns it and OSPF originates an external LSA for it.
        wait_for(LIMIT, "OSPF external LSA for the VIP", || async {
            Some(bird.cmd("show ospf state all")).filter(|r| r.contains("external 198.51.100.20/32 metric2 100"))
        })
        .await;
        assert_eq!(h.report().ospf.expect("ospf report").routes_installed, 2);
        assert!(t4.contains("metric 100"), "{t4}");
        // Draining raises the metric (make before break: never without a route), undrain lowers it again.
        h.set_draining(true);
        wait_for(LIMIT, "drain metric", || async {
            let t = ns.try_ip(&["-4", "route", "show", "table", "100"]);
            (t.contains("198.51.100.20 dev lo proto 237 scope link metric 65000") && !t.contains("metric 100"))
                .then_some(())
        })
        .await;
        wait_for(LIMIT, "OSPF external LSA carries the drain metric", || async {
            Some(bird.cmd("show ospf state all")).filter(|r| r.contains("external 198.51.100.20/32 metric2 65000"))
        })
        .await;
        h.set_draining(false);
        wait_for(LIMIT, "normal metric again", || async {
            let t = ns.try_ip(&["-4", "route", "show", "table", "100"]);
            (t.contains("metric 100") && !t.contains("metric 65000")).then_some(())
        })
        .await;

        tx.send_replace(routes(&["2001:db8:20::1/128"]));
        wait_for(LIMIT, "IPv4 route removed", || async {
            (!ns.try_ip(&["-4", "route", "show", "table", "100"]).contains("198.51.100.20")).then_some(())
        })
        .await;
        wait_for(LIMIT, "BIRD and OSPF forget the VIP", || async {
            let gone = !bird.cmd("show route table padis4").contains("198.51.100.20")
                && !bird.cmd("show ospf state all").contains("198.51.100.20");
            gone.then_some(())
        })
        .await;
        h.stop().await;
        assert!(ns.try_ip(&["-6", "route", "show", "table", "100"]).trim().is_empty(), "routes removed on stop");
    });
}

#[test]
fn address_mode_puts_vips_on_an_interface() {
    // A veth end stands for the dummy interface (this kernel has no dummy module); `lo` works the same way.
    let ns = Netns::new("a").expect("netns");
    ns.ip(&["link", "add", "pvip0", "type", "veth", "peer", "name", "pvip1"]);
    ns.ip(&["link", "set", "pvip0", "up"]);
    in_netns(ns.name(), || async {
        let (tx, rx) = watch::channel(routes(&["198.51.100.21/32", "2001:db8:21::1/128"]));
        let reg = prometheus::Registry::new();
        let cfg = ospf("mode = \"address\"\ninterface = \"pvip0\"");
        let h = Announcer::spawn(None, Some(cfg), rx, &reg).expect("spawn");
        wait_for(LIMIT, "VIP addresses on pvip0", || async {
            let a = ns.ip(&["addr", "show", "dev", "pvip0"]);
            (a.contains("198.51.100.21/32") && a.contains("2001:db8:21::1/128")).then_some(())
        })
        .await;
        tx.send_replace(BTreeSet::new());
        wait_for(LIMIT, "addresses removed", || async {
            let a = ns.ip(&["addr", "show", "dev", "pvip0"]);
            (!a.contains("198.51.100.21") && !a.contains("2001:db8:21::1")).then_some(())
        })
        .await;
        assert_eq!(h.report().ospf.expect("ospf report").routes_installed, 0);
        h.stop().await;
    });
}

#[test]
fn stale_routes_of_a_crashed_run_are_flushed() {
    let ns = Netns::new("f").expect("netns");
    ns.ip(&["route", "add", "198.51.100.99/32", "dev", "lo", "table", "100", "proto", "237"]);
    ns.ip(&["route", "add", "198.51.100.98/32", "dev", "lo", "table", "100", "proto", "static"]);
    in_netns(ns.name(), || async {
        let (_tx, rx) = watch::channel(routes(&["198.51.100.22/32"]));
        let h = Announcer::spawn(None, Some(ospf("")), rx, &prometheus::Registry::new()).expect("spawn");
        let t = wait_for(LIMIT, "new route installed", || async {
            Some(ns.try_ip(&["-4", "route", "show", "table", "100"])).filter(|t| t.contains("198.51.100.22"))
        })
        .await;
        assert!(!t.contains("198.51.100.99"), "our stale route flushed: {t}");
        assert!(t.contains("198.51.100.98"), "other routes untouched: {t}");
        h.stop().await;
    });
}
