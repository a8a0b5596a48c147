//! Two Padis speakers (two nodes) announce the same VIP to one BIRD router that installs it as an ECMP route
//! in its kernel (the README's BIRD config: `merge paths`, GRACEFUL_SHUTDOWN lowers LOCAL_PREF): draining
//! one node takes it out of the multipath route, stopping the other leaves a single path.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use padis_bgp::{Announcement, Announcer};
use padis_tests::bgp::{wait_for, Bird};
use padis_tests::netns::{in_netns, Netns};
use tokio::sync::watch;

const OUR_ASN: u32 = 4_200_000_001;
const LIMIT: Duration = Duration::from_secs(20);
const VIP: &str = "198.51.100.7";

const BIRD_ECMP: &str = r#"
log stderr all;
router id 10.97.0.254;
protocol device { scan time 1; }
protocol kernel {
  ipv4 { export all; };
  merge paths yes limit 16;
}
filter padis_in {
  if net.len != 32 then reject;
  if (65535, 0) ~ bgp_community then bgp_local_pref = 0;
  accept;
}
template bgp padis {
  local as 65010;
  hold time 9;
  connect retry time 1;
  error wait time 1, 2;
  ipv4 { import filter padis_in; export none; };
}
protocol bgp node1 from padis { neighbor 10.97.1.1 as 4200000001; }
protocol bgp node2 from padis { neighbor 10.97.2.1 as 4200000001; }
"#;

/// Router namespace `r` and two node namespaces linked to it: node i is 10.97.i.1, the router 10.97.i.2.
fn topology() -> (Netns, Vec<Netns>) {
    let r = Netns::new("er").expect("netns");
    let nodes: Vec<Netns> = (1..=2).map(|i| Netns::new(&format!("e{i}")).expect("netns")).collect();
    for (i, n) in nodes.iter().enumerate() {
        let i = i + 1;
        let peer = format!("vr{i}");
        n.ip(&["link", "add", "vs", "type", "veth", "peer", "name", &peer, "netns", r.name()]);
        n.ip(&["addr", "add", &format!("10.97.{i}.1/30"), "dev", "vs"]);
        n.ip(&["link", "set", "vs", "up"]);
        r.ip(&["addr", "add", &format!("10.97.{i}.2/30"), "dev", &peer]);
        r.ip(&["link", "set", &peer, "up"]);
    }
    (r, nodes)
}

fn node_config(i: usize) -> padis_model::bgp::BgpConfig {
    let text = format!(
        "[bgp]\nasn = {OUR_ASN}\nrouter_id = \"10.97.{i}.1\"\nconnect_retry = \"300ms\"\n\
         [[bgp.peer]]\naddress = \"10.97.{i}.2\"\nasn = 65010\n"
    );
    let v = padis_model::parse_config(&text, "test.toml", Path::new(".")).unwrap_or_else(|e| panic!("{e}"));
    v.state.bgp.expect("bgp section")
}

/// Next hops of the router's kernel route to the VIP.
fn nexthops(r: &Netns) -> Vec<String> {
    let out = r.try_ip(&["-4", "route", "show", VIP]);
    let mut v: Vec<String> = out
        .split_whitespace()
        .collect::<Vec<_>>()
        .windows(2)
        .filter(|w| w[0] == "via")
        .map(|w| w[1].to_string())
        .collect();
    v.sort();
    v
}

#[test]
fn two_nodes_make_an_ecmp_route_and_a_draining_node_leaves_it() {
    let (r, nodes) = topology();
    let dir = tempfile::tempdir().expect("dir");
    let _bird = Bird::start(r.name(), dir.path(), BIRD_ECMP);
    let vip: BTreeSet<Announcement> =
        [Announcement { prefix: format!("{VIP}/32").parse().expect("prefix"), name: "web".into() }].into();

    // Each node runs its own announcer in its own namespace, driven from here through channels.
    let (cmd1, mut rx1) = tokio::sync::mpsc::unbounded_channel::<&'static str>();
    let (cmd2, mut rx2) = tokio::sync::mpsc::unbounded_channel::<&'static str>();
    std::thread::scope(|s| {
        for (i, (node, rx)) in nodes.iter().zip([&mut rx1, &mut rx2]).enumerate() {
            let vip = vip.clone();
            s.spawn(move || {
                in_netns(node.name(), || async move {
                    let (_tx, routes) = watch::channel(vip);
                    let reg = prometheus::Registry::new();
                    let h = Announcer::spawn(Some(node_config(i + 1)), None, routes, &reg).expect("spawn");
                    while let Some(c) = rx.recv().await {
                        match c {
                            "drain" => h.set_draining(true),
                            "undrain" => h.set_draining(false),
                            _ => break,
                        }
                    }
                    h.stop().await;
                })
            });
        }
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        rt.block_on(async {
            let both = vec!["10.97.1.1".to_string(), "10.97.2.1".to_string()];
            let want = |v: Vec<String>| {
                let r = &r;
                move || {
                    let v = v.clone();
                    async move { (nexthops(r) == v).then_some(()) }
                }
            };
            wait_for(LIMIT, "ECMP route over both nodes", want(both.clone())).await;
            cmd1.send("drain").expect("node 1");
            wait_for(LIMIT, "node 1 leaves the ECMP set on drain", want(vec!["10.97.2.1".into()])).await;
            cmd1.send("undrain").expect("node 1");
            wait_for(LIMIT, "node 1 back", want(both.clone())).await;
            cmd2.send("stop").expect("node 2");
            wait_for(LIMIT, "single path after node 2 stops", want(vec!["10.97.1.1".into()])).await;
            cmd1.send("stop").expect("node 1");
            wait_for(LIMIT, "no route when no node announces", want(vec![])).await;
        });
        drop((cmd1, cmd2));
    });
}
