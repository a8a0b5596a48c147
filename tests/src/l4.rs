//! Test helpers: L4. A [`Fixture`] loads the XDP balancer with private (unpinned) maps, programs it from a TOML
//! config through the same path the daemon uses (`desired::compute` + `Programmer::apply`), and runs packets
//! through it with BPF_PROG_TEST_RUN.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use padis_l4::desired;
use padis_l4::programmer::{ApplyReport, Programmer};
use padis_l4::{Balancer, LoadOptions};

/// XDP verdicts.
pub mod verdict {
    /// XDP_DROP.
    pub const DROP: u32 = 1;
    /// XDP_PASS.
    pub const PASS: u32 = 2;
    /// XDP_TX.
    pub const TX: u32 = 3;
}

/// A loaded, programmable balancer for packet fixtures.
pub struct Fixture {
    /// The balancer (maps accessible for assertions).
    pub bal: Balancer,
    /// Its programmer.
    pub prog: Programmer,
    /// Health per (VIP name, backend): absent = usable.
    pub unusable: HashMap<(String, IpAddr), bool>,
}

impl Fixture {
    /// Loads the program (small private maps) and programs `toml`.
    pub fn new(toml: &str) -> Fixture {
        let opts = LoadOptions::private(8, 64, 4096);
        let bal = Balancer::load(opts.clone()).expect("load XDP program (needs root and BPF)");
        let prog = Programmer::new(opts.max_vips, opts.max_rings(), opts.max_backends);
        let mut f = Fixture { bal, prog, unusable: HashMap::new() };
        f.program(toml);
        f
    }

    /// Re-programs the maps from `toml` (a diff against what is installed).
    pub fn program(&mut self, toml: &str) -> ApplyReport {
        let valid = padis_model::parse_config(toml, "fixture.toml", Path::new("."))
            .unwrap_or_else(|e| panic!("fixture config: {e}"));
        let unusable = self.unusable.clone();
        let usable = move |vip: &str, a: SocketAddr| !unusable.contains_key(&(vip.to_string(), a.ip()));
        let d = desired::compute(&valid.state.l4, &valid.state.vips, &usable, &mut |_| None);
        self.prog.apply(&mut self.bal.maps, &d).expect("program maps")
    }

    /// Runs one packet: (verdict, output frame).
    pub fn run(&self, pkt: &[u8]) -> (u32, Vec<u8>) {
        self.bal.test_run(pkt).expect("BPF_PROG_TEST_RUN")
    }

    /// Packets counted under global counter `idx` (`padis_ebpf_common::stat::*`).
    pub fn stat(&self, idx: u32) -> u64 {
        padis_l4::stats::global_one(&self.bal.maps, idx).expect("read stats").packets
    }

    /// Entries in the connection table.
    pub fn flows(&self) -> usize {
        self.bal.maps.conntrack.len()
    }

    /// New flows of VIP `name` dropped by the per-source-prefix limit (0 for a VIP not installed).
    pub fn rate_limited(&self, name: &str) -> u64 {
        let Some((_, v)) = self.prog.installed().into_iter().find(|(_, v)| v.name == name) else { return 0 };
        padis_l4::stats::vip_rate_drops(&self.bal.maps, v.id).expect("read VIP_RATE_DROPS").packets
    }
}

pub use e2e::*;

/// End-to-end helpers: an L2 segment of network namespaces (client, Padis, backends with the VIP on `lo`),
/// backend servers, and an in-process L4 plane running inside the Padis namespace.
mod e2e {
    use std::io::{BufRead, BufReader, Write};
    use std::net::{SocketAddr, TcpListener, TcpStream};
    use std::path::Path;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{mpsc, Arc};
    use std::thread::JoinHandle;
    use std::time::Duration;

    use padis_l4::{Balancer, L4Handle, L4Plane, L4Report, LoadOptions};
    use padis_model::{Snapshot, SnapshotStore};
    use tokio_util::sync::CancellationToken;

    use crate::netns::{bridge, cmd, mac_of, unique_name, veth, Netns};

    /// The VIP address used by the e2e topology.
    pub const VIP: &str = "10.77.100.1";
    /// The client's address.
    pub const CLIENT: &str = "10.77.0.1";
    /// Padis' address on the segment.
    pub const PADIS: &str = "10.77.0.2";

    /// Address of extra Padis node `i` (0-based, see [`Lan::add_node`]): 10.77.0.3 and up.
    pub fn node_addr(i: usize) -> String {
        format!("10.77.0.{}", 3 + i)
    }

    /// Address of backend `i` (0-based).
    pub fn backend_addr(i: usize) -> String {
        format!("10.77.0.{}", 10 + i)
    }

    /// A TCP server in a backend namespace: answers each line with its name; stopped (listener closed, and
    /// connections closed) on `stop` or drop.
    pub struct Server {
        stop: Arc<AtomicBool>,
        thread: Option<JoinHandle<()>>,
    }

    impl Server {
        /// Stops accepting and closes the connections.
        pub fn stop(&mut self) {
            self.stop.store(true, Ordering::SeqCst);
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
        }
    }

    impl Drop for Server {
        fn drop(&mut self) {
            self.stop();
        }
    }

    fn serve(name: String, port: u16, stop: Arc<AtomicBool>) {
        let listener = TcpListener::bind(("0.0.0.0", port)).expect("bind backend server");
        listener.set_nonblocking(true).expect("nonblocking");
        let mut conns = Vec::new();
        while !stop.load(Ordering::SeqCst) {
            match listener.accept() {
                Ok((s, _)) => {
                    let _ = s.set_nonblocking(false);
                    let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
                    let name = name.clone();
                    let stop = stop.clone();
                    let keep = s.try_clone().ok();
                    conns.push(keep);
                    std::thread::spawn(move || {
                        let mut w = match s.try_clone() {
                            Ok(w) => w,
                            Err(_) => return,
                        };
                        let mut r = BufReader::new(s);
                        let mut line = String::new();
                        while !stop.load(Ordering::SeqCst) {
                            line.clear();
                            match r.read_line(&mut line) {
                                Ok(0) => break,
                                Ok(_) => {
                                    if w.write_all(format!("{name}\n").as_bytes()).is_err() {
                                        break;
                                    }
                                }
                                Err(e)
                                    if e.kind() == std::io::ErrorKind::WouldBlock
                                        || e.kind() == std::io::ErrorKind::TimedOut => {}
                                Err(_) => break,
                            }
                        }
                    });
                }
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
        for c in conns.into_iter().flatten() {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
    }

    /// One L2 segment (a bridge in its own namespace) with a client, Padis and backends; all removed on drop.
    pub struct Lan {
        /// The bridge namespace.
        pub lan: Netns,
        /// The client namespace.
        pub client: Netns,
        /// The Padis namespace (XDP runs on its `eth0`).
        pub padis: Netns,
        /// Backend namespaces.
        pub backends: Vec<Netns>,
        /// Backend servers (same index as `backends`).
        pub servers: Vec<Option<Server>>,
        /// MAC of Padis' interface.
        pub padis_mac: String,
        peer_pass: Option<(Balancer, padis_l4::loader::Attachment)>,
        port: u16,
        /// Extra Padis node namespaces (see [`Lan::add_node`]).
        pub nodes: Vec<Netns>,
        nodes_pass: Vec<(Balancer, padis_l4::loader::Attachment)>,
    }

    impl Lan {
        /// Builds the segment with `n` backends serving `port` (VIP on `lo`, ARP for it suppressed).
        pub fn new(n: usize, port: u16) -> Result<Lan, String> {
            let lan = Netns::new("l4lan")?;
            let client = Netns::new("l4cli")?;
            let padis = Netns::new("l4pad")?;
            let br = unique_name("br");
            lan.run(&["ip", "link", "add", &br, "type", "bridge"])?;
            lan.run(&["ip", "link", "set", &br, "up"])?;
            let mut me = Lan {
                lan,
                client,
                padis,
                backends: Vec::new(),
                servers: Vec::new(),
                padis_mac: String::new(),
                peer_pass: None,
                port,
                nodes: Vec::new(),
                nodes_pass: Vec::new(),
            };
            let p = unique_name("p");
            veth("eth0", &me.client, &p, &me.lan)?;
            bridge_port(&me.lan, &br, &p)?;
            me.client.run(&["ip", "addr", "add", &format!("{CLIENT}/24"), "dev", "eth0"])?;
            // Client frames cross native XDP and are re-sent by XDP_TX: their checksums must be complete.
            crate::netns::disable_tx_checksum(&me.client, "eth0")?;
            me.client.run(&["ip", "route", "add", &format!("{VIP}/32"), "via", PADIS])?;
            let pp = unique_name("p");
            veth("eth0", &me.padis, &pp, &me.lan)?;
            bridge_port(&me.lan, &br, &pp)?;
            me.padis.run(&["ip", "addr", "add", &format!("{PADIS}/24"), "dev", "eth0"])?;
            me.padis_mac = mac_of(&me.padis, "eth0")?;
            // XDP_TX on a veth is delivered by the peer only if the peer runs XDP (or GRO): a pass-through
            // instance of the program (no VIPs) on the bridge-side peer.
            let pass = me.lan.enter(|| -> Result<_, String> {
                let mut b = Balancer::load(LoadOptions::private(1, 1, 16)).map_err(|e| e.to_string())?;
                let a = b.attach(&pp, false, false, None).map_err(|e| e.to_string())?;
                Ok((b, a))
            })??;
            me.peer_pass = Some(pass);
            for _ in 0..n {
                me.add_backend()?;
            }
            Ok(me)
        }

        /// Adds one more backend namespace with its server; returns its index.
        pub fn add_backend(&mut self) -> Result<usize, String> {
            let i = self.backends.len();
            let ns = Netns::new("l4be")?;
            let p = unique_name("p");
            veth("eth0", &ns, &p, &self.lan)?;
            let br = self.bridge_name()?;
            bridge_port(&self.lan, &br, &p)?;
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
            let stop = Arc::new(AtomicBool::new(false));
            let name = format!("b{i}");
            let port = self.port;
            let s = stop.clone();
            let thread = ns.spawn(move || serve(name, port, s))?;
            self.backends.push(ns);
            self.servers.push(Some(Server { stop, thread: Some(thread) }));
            Ok(i)
        }

        /// Adds one more Padis node namespace (`eth0` at [`node_addr`]`(i)` on the segment, ready for an XDP plane);
        /// returns its index in `nodes`.
        pub fn add_node(&mut self) -> Result<usize, String> {
            let i = self.nodes.len();
            let ns = Netns::new("l4nd")?;
            let p = unique_name("p");
            veth("eth0", &ns, &p, &self.lan)?;
            let br = self.bridge_name()?;
            bridge_port(&self.lan, &br, &p)?;
            ns.run(&["ip", "addr", "add", &format!("{}/24", node_addr(i)), "dev", "eth0"])?;
            // As for the first node: XDP_TX frames need a program on the bridge-side peer.
            let pass = self.lan.enter(|| -> Result<_, String> {
                let mut b = Balancer::load(LoadOptions::private(1, 1, 16)).map_err(|e| e.to_string())?;
                let a = b.attach(&p, false, false, None).map_err(|e| e.to_string())?;
                Ok((b, a))
            })??;
            self.nodes_pass.push(pass);
            self.nodes.push(ns);
            Ok(i)
        }

        /// Steers the client's VIP traffic (established connections included) to the Padis node at `addr` (its
        /// next hop), as an ECMP change would.
        pub fn steer(&self, addr: &str) -> Result<(), String> {
            self.client.run(&["ip", "route", "replace", &format!("{VIP}/32"), "via", addr]).map(|_| ())
        }

        fn bridge_name(&self) -> Result<String, String> {
            let out = self.lan.run(&["ip", "-o", "link", "show", "type", "bridge"])?;
            let s = String::from_utf8_lossy(&out.stdout);
            s.split(':').nth(1).map(|n| n.trim().to_string()).ok_or_else(|| "no bridge".into())
        }

        /// Opens a TCP connection from the client namespace to `VIP:port`.
        pub fn connect(&self) -> Result<Conn, String> {
            let addr: SocketAddr = format!("{VIP}:{}", self.port).parse().map_err(|e| format!("{e}"))?;
            let s = self.client.enter(|| TcpStream::connect_timeout(&addr, Duration::from_secs(3)))?;
            let s = s.map_err(|e| format!("connect {addr}: {e}"))?;
            s.set_read_timeout(Some(Duration::from_secs(3))).map_err(|e| e.to_string())?;
            Ok(Conn { r: BufReader::new(s.try_clone().map_err(|e| e.to_string())?), w: s })
        }

        /// A client request on a fresh connection: the name of the backend that answered.
        pub fn ask_once(&self) -> Result<String, String> {
            self.connect()?.ask()
        }
    }

    fn bridge_port(lan: &Netns, br: &str, port: &str) -> Result<(), String> {
        bridge(lan, br, &[]).ok();
        lan.run(&["ip", "link", "set", port, "master", br])?;
        lan.run(&["ip", "link", "set", port, "up"])?;
        Ok(())
    }

    impl Drop for Lan {
        fn drop(&mut self) {
            for s in self.servers.iter_mut().flatten() {
                s.stop();
            }
            if let Some((_b, a)) = self.peer_pass.take() {
                a.release(false);
            }
            for (_b, a) in self.nodes_pass.drain(..) {
                a.release(false);
            }
            let _ = cmd(&["true"]);
        }
    }

    /// A client connection.
    pub struct Conn {
        r: BufReader<TcpStream>,
        w: TcpStream,
    }

    impl Conn {
        /// Sends a line; returns the answering backend's name.
        pub fn ask(&mut self) -> Result<String, String> {
            self.w.write_all(b"who\n").map_err(|e| format!("send: {e}"))?;
            let mut line = String::new();
            match self.r.read_line(&mut line) {
                Ok(0) => Err("connection closed".into()),
                Ok(_) => Ok(line.trim().to_string()),
                Err(e) => Err(format!("read: {e}")),
            }
        }
    }

    enum Cmd {
        Publish(String, mpsc::Sender<Result<(), String>>),
        Report(mpsc::Sender<L4Report>),
        Metrics(mpsc::Sender<String>),
        Stop,
    }

    /// `L4Plane` running on its own thread inside the Padis namespace (current-thread tokio runtime), fed by a
    /// `SnapshotStore` that the test publishes TOML configs into.
    pub struct PadisL4 {
        tx: tokio::sync::mpsc::UnboundedSender<Cmd>,
        thread: Option<JoinHandle<()>>,
    }

    fn snapshot(toml: &str, generation: u64) -> Result<Snapshot, String> {
        let valid = padis_model::parse_config(toml, "e2e.toml", Path::new(".")).map_err(|e| e.to_string())?;
        Ok(Snapshot::new(valid, generation, Vec::new()))
    }

    impl PadisL4 {
        /// Starts the plane in `ns` with `toml`.
        pub fn start(ns: &Netns, toml: &str) -> Result<PadisL4, String> {
            let first = snapshot(toml, 1)?;
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Cmd>();
            let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();
            let thread = ns.spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.to_string()));
                        return;
                    }
                };
                rt.block_on(async move {
                    let metrics = prometheus::Registry::new();
                    let health = match padis_balance::HealthRegistry::new(&metrics) {
                        Ok(h) => h,
                        Err(e) => {
                            let _ = ready_tx.send(Err(e.to_string()));
                            return;
                        }
                    };
                    let store = SnapshotStore::new(first);
                    let token = CancellationToken::new();
                    let handle: L4Handle =
                        match L4Plane::start(store.reader(), health, &metrics, None, token.clone()).await {
                            Ok(h) => h,
                            Err(e) => {
                                let _ = ready_tx.send(Err(e.to_string()));
                                return;
                            }
                        };
                    let _ = ready_tx.send(Ok(()));
                    let mut generation = 1;
                    while let Some(cmd) = rx.recv().await {
                        match cmd {
                            Cmd::Publish(toml, done) => {
                                generation += 1;
                                let r = snapshot(&toml, generation).map(|s| {
                                    store.publish(s);
                                });
                                let _ = done.send(r);
                            }
                            Cmd::Report(tx) => {
                                let _ = tx.send(handle.report());
                            }
                            Cmd::Metrics(tx) => {
                                let mut out = String::new();
                                let _ = prometheus::TextEncoder::new().encode_utf8(&metrics.gather(), &mut out);
                                let _ = tx.send(out);
                            }
                            Cmd::Stop => break,
                        }
                    }
                    token.cancel();
                    handle.wait().await;
                });
            })?;
            match ready_rx.recv_timeout(Duration::from_secs(30)) {
                Ok(Ok(())) => Ok(PadisL4 { tx, thread: Some(thread) }),
                Ok(Err(e)) => Err(e),
                Err(e) => Err(format!("L4 plane did not start: {e}")),
            }
        }

        /// Publishes a new config (the plane re-programs the maps as a diff).
        pub fn publish(&self, toml: &str) -> Result<(), String> {
            let (tx, rx) = mpsc::channel();
            self.tx.send(Cmd::Publish(toml.to_string(), tx)).map_err(|_| "plane gone".to_string())?;
            rx.recv_timeout(Duration::from_secs(10)).map_err(|e| e.to_string())?
        }

        /// The plane's report.
        pub fn report(&self) -> Result<L4Report, String> {
            let (tx, rx) = mpsc::channel();
            self.tx.send(Cmd::Report(tx)).map_err(|_| "plane gone".to_string())?;
            rx.recv_timeout(Duration::from_secs(10)).map_err(|e| e.to_string())
        }

        /// The Prometheus text exposition of the plane's registry.
        pub fn metrics(&self) -> Result<String, String> {
            let (tx, rx) = mpsc::channel();
            self.tx.send(Cmd::Metrics(tx)).map_err(|_| "plane gone".to_string())?;
            rx.recv_timeout(Duration::from_secs(10)).map_err(|e| e.to_string())
        }

        /// Stops the plane (detaching unless the config says `keep_attached`) and waits for it.
        pub fn stop(mut self) {
            self.shutdown();
        }

        fn shutdown(&mut self) {
            let _ = self.tx.send(Cmd::Stop);
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
        }
    }

    impl Drop for PadisL4 {
        fn drop(&mut self) {
            self.shutdown();
        }
    }

    /// Removes an instance's pins on drop (maps and links survive the process otherwise).
    pub struct PinGuard(pub String);

    impl Drop for PinGuard {
        fn drop(&mut self) {
            let _ = padis_l4::bpffs::remove_instance(&self.0);
        }
    }
}
