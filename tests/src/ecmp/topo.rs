//! The namespaces of the ECMP scenario: client, router (BIRD 2), an L2 segment (bridge) with the Padis nodes and
//! the backends. Built once per run with unique names; BIRD is killed and everything deleted on drop.

use std::time::{Duration, Instant};

use padis_l4::loader::Attachment;
use padis_l4::{Balancer, LoadOptions};

use super::EcmpError;
use crate::bgp::Bird;
use crate::netns::{bridge, disable_tx_checksum, mac_of, veth, Netns};

/// The VIP every node announces and balances.
pub const VIP: &str = "10.88.100.1";
/// The VIP's TCP port (backends listen on it).
pub const PORT: u16 = 7000;
/// The client's address.
pub const CLIENT: &str = "10.88.0.1";
/// The router's address on the client link.
pub const ROUTER_CLIENT: &str = "10.88.0.254";
/// The router's address on the node/backend segment (BGP peer of every node, backends' default gateway).
pub const ROUTER_LAN: &str = "10.88.1.254";
/// The router's AS.
pub const ROUTER_ASN: u32 = 65010;
/// The Padis nodes' AS.
pub const PADIS_ASN: u32 = 4_200_000_001;
/// BGP hold time used in the scenario (the smallest RFC 4271 allows; BFD detects failures first).
pub const HOLD_SECS: u32 = 3;
/// BFD Detect Mult on both sides: a dead node is detected after `BFD_MULTIPLIER x` the plan's BFD interval.
pub const BFD_MULTIPLIER: u32 = 3;

/// Address of Padis node `i` (0-based) on the segment.
pub fn node_addr(i: usize) -> String {
    format!("10.88.1.{}", i + 1)
}

/// Address of backend `i` (0-based) on the segment.
pub fn backend_addr(i: usize) -> String {
    format!("10.88.1.{}", 100 + i)
}

/// The lab: namespaces, links, BIRD on the router, pass-through XDP on the bridge side of each node's veth.
pub struct Topology {
    /// The bridge namespace (the L2 segment).
    pub lan: Netns,
    /// The router namespace (BIRD, kernel ECMP route).
    pub router: Netns,
    /// The client namespace.
    pub client: Netns,
    /// Padis node namespaces (daemons are started separately, see [`super::PadisNode`]).
    pub nodes: Vec<Netns>,
    /// Backend namespaces (servers are started separately, see [`super::BackendServer`]).
    pub backends: Vec<Netns>,
    /// MAC address of each backend's `eth0`.
    pub backend_macs: Vec<String>,
    /// Scratch directory (BIRD and Padis configs and logs).
    pub dir: tempfile::TempDir,
    bird: Option<Bird>,
    pass: Vec<(Balancer, Attachment)>,
}

impl Topology {
    /// Builds the lab for up to `nodes` Padis nodes and `backends` backends, and starts BIRD (BFD at
    /// `bfd_interval_ms` x [`BFD_MULTIPLIER`]).
    pub fn new(nodes: usize, backends: usize, bfd_interval_ms: u32) -> Result<Topology, EcmpError> {
        if nodes == 0 || nodes > 50 || backends == 0 || backends > 150 {
            return Err(EcmpError::Setup(format!("unsupported size: {nodes} nodes, {backends} backends")));
        }
        let dir = tempfile::Builder::new().prefix("padis-ecmp-").tempdir().map_err(|e| EcmpError::io("temp dir", e))?;
        let mut t = Topology {
            lan: Netns::new("el")?,
            router: Netns::new("er")?,
            client: Netns::new("ec")?,
            nodes: Vec::new(),
            backends: Vec::new(),
            backend_macs: Vec::new(),
            dir,
            bird: None,
            pass: Vec::new(),
        };
        bridge(&t.lan, "br0", &[])?;

        // Router: one leg on the segment, one towards the client; forwards with L4 multipath hashing.
        veth("lan0", &t.router, "rt", &t.lan)?;
        t.lan.run(&["ip", "link", "set", "rt", "master", "br0"])?;
        t.router.run(&["ip", "addr", "add", &format!("{ROUTER_LAN}/24"), "dev", "lan0"])?;
        veth("cli0", &t.router, "eth0", &t.client)?;
        t.router.run(&["ip", "addr", "add", &format!("{ROUTER_CLIENT}/24"), "dev", "cli0"])?;
        for kv in ["net.ipv4.ip_forward=1", "net.ipv4.fib_multipath_hash_policy=1"] {
            t.router.sysctl(kv)?;
        }
        t.client.run(&["ip", "addr", "add", &format!("{CLIENT}/24"), "dev", "eth0"])?;
        t.client.run(&["ip", "route", "add", "default", "via", ROUTER_CLIENT])?;
        // Frames towards the nodes cross native XDP and leave again by XDP_TX: their checksums must be complete
        // (a veth hands partial checksums along).
        disable_tx_checksum(&t.client, "eth0")?;
        disable_tx_checksum(&t.router, "lan0")?;

        for i in 0..nodes {
            t.add_node(i)?;
        }
        for i in 0..backends {
            t.add_backend(i)?;
        }
        let conf = bird_config(nodes, bfd_interval_ms);
        t.bird = Some(Bird::start(t.router.name(), t.dir.path(), &conf));
        Ok(t)
    }

    fn add_node(&mut self, i: usize) -> Result<(), EcmpError> {
        let ns = Netns::new("en")?;
        let peer = format!("n{i}");
        veth("eth0", &ns, &peer, &self.lan)?;
        self.lan.run(&["ip", "link", "set", &peer, "master", "br0"])?;
        ns.run(&["ip", "addr", "add", &format!("{}/24", node_addr(i)), "dev", "eth0"])?;
        // XDP_TX on a veth is delivered only if the peer runs XDP: a pass-through instance (no VIPs) there.
        let pass = self.lan.enter(|| -> Result<_, String> {
            let mut b = Balancer::load(LoadOptions::private(1, 1, 16)).map_err(|e| e.to_string())?;
            let a = b.attach(&peer, false, false, None).map_err(|e| e.to_string())?;
            Ok((b, a))
        })??;
        self.pass.push(pass);
        self.nodes.push(ns);
        Ok(())
    }

    fn add_backend(&mut self, i: usize) -> Result<(), EcmpError> {
        let ns = Netns::new("eb")?;
        let peer = format!("b{i}");
        veth("eth0", &ns, &peer, &self.lan)?;
        self.lan.run(&["ip", "link", "set", &peer, "master", "br0"])?;
        ns.run(&["ip", "addr", "add", &format!("{}/24", backend_addr(i)), "dev", "eth0"])?;
        ns.run(&["ip", "addr", "add", &format!("{VIP}/32"), "dev", "lo"])?;
        for kv in [
            "net.ipv4.conf.all.arp_ignore=1",
            "net.ipv4.conf.all.arp_announce=2",
            "net.ipv4.conf.eth0.arp_ignore=1",
            "net.ipv4.conf.eth0.arp_announce=2",
        ] {
            ns.sysctl(kv)?;
        }
        // DSR: replies leave with the VIP as source straight to the client through the router.
        ns.run(&["ip", "route", "add", "default", "via", ROUTER_LAN])?;
        self.backend_macs.push(mac_of(&ns, "eth0")?);
        self.backends.push(ns);
        Ok(())
    }

    /// Next hops of the router's kernel route to the VIP (node addresses, sorted; empty when there is none).
    pub fn nexthops(&self) -> Vec<String> {
        let out = match self.router.run(&["ip", "-4", "route", "show", VIP]) {
            Ok(o) => String::from_utf8_lossy(&o.stdout).into_owned(),
            Err(_) => return Vec::new(),
        };
        let words: Vec<&str> = out.split_whitespace().collect();
        let mut v: Vec<String> = words.windows(2).filter(|w| w[0] == "via").map(|w| w[1].to_string()).collect();
        v.sort();
        v
    }

    /// Waits until the router's ECMP route goes exactly through `nodes` (indices); returns when it did.
    pub fn wait_nexthops(&self, nodes: &[usize], limit: Duration) -> Result<Instant, EcmpError> {
        let mut want: Vec<String> = nodes.iter().map(|&i| node_addr(i)).collect();
        want.sort();
        let t = Instant::now();
        loop {
            if self.nexthops() == want {
                return Ok(Instant::now());
            }
            if t.elapsed() > limit {
                return Err(EcmpError::Timeout {
                    what: format!("router ECMP next hops {want:?} (have {:?})", self.nexthops()),
                    limit,
                });
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Cuts node `i` off the segment (its link goes down: a dead machine, as seen by the router).
    pub fn unplug(&self, i: usize) -> Result<(), EcmpError> {
        self.nodes[i].run(&["ip", "link", "set", "eth0", "down"])?;
        Ok(())
    }

    /// Plugs node `i` back in.
    pub fn plug(&self, i: usize) -> Result<(), EcmpError> {
        self.nodes[i].run(&["ip", "link", "set", "eth0", "up"])?;
        Ok(())
    }

    /// BIRD's log so far (for failure messages).
    pub fn bird_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("bird.stderr")).unwrap_or_default()
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        if let Some(mut b) = self.bird.take() {
            b.kill();
        }
        for (_b, a) in self.pass.drain(..) {
            a.release(false);
        }
    }
}

/// BIRD on the router: one eBGP session per node (short timers) with BFD (`bfd on`: a BFD failure takes the
/// session down at once), GRACEFUL_SHUTDOWN lowers the preference, the kernel protocol merges the equal best paths
/// into one multipath route.
fn bird_config(nodes: usize, bfd_interval_ms: u32) -> String {
    let mut s = format!(
        r#"log stderr {{ warning, error, fatal }};
router id {ROUTER_LAN};
protocol device {{ scan time 1; }}
protocol kernel {{
  ipv4 {{ export all; }};
  merge paths yes limit 16;
}}
filter padis_in {{
  if net.len != 32 then reject;
  if (65535, 0) ~ bgp_community then bgp_local_pref = 0;
  accept;
}}
template bgp padis {{
  local {ROUTER_LAN} as {ROUTER_ASN};
  hold time {HOLD_SECS};
  keepalive time 1;
  connect retry time 1;
  error wait time 1, 2;
  bfd on;
  ipv4 {{ import filter padis_in; export none; }};
}}
protocol bfd {{
  interface "lan0" {{
    min rx interval {bfd_interval_ms} ms;
    min tx interval {bfd_interval_ms} ms;
    idle tx interval 1 s;
    multiplier {BFD_MULTIPLIER};
  }};
}}
"#
    );
    for i in 0..nodes {
        s.push_str(&format!("protocol bgp node{i} from padis {{ neighbor {} as {PADIS_ASN}; }}\n", node_addr(i)));
    }
    s
}
