//! One Padis node: the real `padis run` daemon inside a node namespace (`ip netns exec`, which execs in place,
//! so the child is the daemon itself), its config file, signals, and its admin API reached from inside the
//! namespace. Killed on drop.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::topo::{backend_addr, node_addr, BFD_MULTIPLIER, HOLD_SECS, PADIS_ASN, PORT, ROUTER_ASN, ROUTER_LAN, VIP};
use super::EcmpError;
use crate::netns::{unique_name, Netns};
use crate::process::{http, padis_bin};

/// Admin API address inside every node namespace.
const ADMIN: &str = "127.0.0.1:9901";

/// What a node's config says.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Node index (0-based): its address and router id.
    pub index: usize,
    /// XDP pin instance (unique per daemon start, so no state is inherited from an earlier run).
    pub instance: String,
    /// Backend indices behind the VIP.
    pub backends: Vec<usize>,
    /// MAC of every backend (static neighbours, by backend index).
    pub backend_macs: Vec<String>,
    /// Extra `[l4]` lines (e.g. the scheduler), inserted as-is.
    pub l4_extra: String,
    /// Extra top-level sections (e.g. `[l4.sync]`), appended as-is.
    pub sections: String,
    /// BFD interval towards the router (Detect Mult [`BFD_MULTIPLIER`]).
    pub bfd_interval_ms: u32,
}

impl NodeConfig {
    /// The TOML text.
    pub fn render(&self) -> String {
        let mut s = format!(
            r#"[admin]
listen = "{ADMIN}"

[log]
level = "info"

[limits]
shutdown_grace = "2s"

[l4]
interfaces = ["eth0"]
instance = "{instance}"
xdp_mode = "native"
max_vips = 4
max_backends = 256
max_flows = 262144
{extra}
[l4.neighbors]
"#,
            instance = self.instance,
            extra = self.l4_extra,
        );
        for (i, mac) in self.backend_macs.iter().enumerate() {
            s.push_str(&format!("\"{}\" = \"{mac}\"\n", backend_addr(i)));
        }
        s.push_str(&format!(
            r#"
[bgp]
asn = {PADIS_ASN}
router_id = "{addr}"
hold_time = "{HOLD_SECS}s"
connect_retry = "300ms"
drain_wait = "1s"

[bgp.bfd]
interval = "{bfd}ms"
multiplier = {BFD_MULTIPLIER}

[[bgp.peer]]
address = "{ROUTER_LAN}"
asn = {ROUTER_ASN}
bfd = true

[[vip]]
name = "web"
addr = "{VIP}"
port = {PORT}
"#,
            addr = node_addr(self.index),
            bfd = self.bfd_interval_ms,
        ));
        for &b in &self.backends {
            s.push_str(&format!("[[vip.backend]]\naddr = \"{}\"\n", backend_addr(b)));
        }
        s.push_str(&self.sections);
        s
    }
}

/// A running `padis` daemon in a node namespace.
pub struct PadisNode {
    /// Node index.
    pub index: usize,
    ns: String,
    child: Child,
    config: PathBuf,
    log: PathBuf,
    instance: String,
}

impl PadisNode {
    /// A fresh pin instance name for a node.
    pub fn new_instance() -> String {
        unique_name("ecmp")
    }

    /// Writes `cfg` under `dir` and starts the daemon in `ns`; waits until its admin API answers.
    pub fn start(ns: &Netns, dir: &Path, cfg: &NodeConfig) -> Result<PadisNode, EcmpError> {
        let config = dir.join(format!("node{}-{}.toml", cfg.index, cfg.instance));
        std::fs::write(&config, cfg.render()).map_err(|e| EcmpError::io("write node config", e))?;
        let log = config.with_extension("log");
        let err = std::fs::File::create(&log).map_err(|e| EcmpError::io("node log", e))?;
        let child = Command::new("ip")
            .args(["netns", "exec", ns.name()])
            .arg(padis_bin())
            .args(["run", "--config"])
            .arg(&config)
            .env("PADIS_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .map_err(|e| EcmpError::io("spawn padis", e))?;
        let mut node = PadisNode {
            index: cfg.index,
            ns: ns.name().to_string(),
            child,
            config,
            log,
            instance: cfg.instance.clone(),
        };
        node.wait_ready(ns)?;
        Ok(node)
    }

    fn wait_ready(&mut self, ns: &Netns) -> Result<(), EcmpError> {
        let limit = Duration::from_secs(60);
        let t = Instant::now();
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Err(self.error(format!("exited early ({st})")));
            }
            if matches!(self.get(ns, "/healthz"), Ok((200, _))) {
                return Ok(());
            }
            if t.elapsed() > limit {
                return Err(self.error("admin API not ready".into()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn get(&self, ns: &Netns, path: &str) -> Result<(u16, String), EcmpError> {
        let addr: SocketAddr = ADMIN.parse().map_err(|e| EcmpError::Setup(format!("{e}")))?;
        ns.enter(|| http(addr, "GET", path, None, &[]))?.map_err(|e| EcmpError::io(format!("GET {path}"), e))
    }

    /// An error about this node with the end of its log.
    pub fn error(&self, msg: String) -> EcmpError {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(30).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        EcmpError::Node { node: self.index, msg: format!("{msg} (netns {}); log tail:\n{}", self.ns, tail.join("\n")) }
    }

    /// Rewrites the config file and makes the daemon reload it (SIGHUP).
    pub fn reconfigure(&self, cfg: &NodeConfig) -> Result<(), EcmpError> {
        let tmp = self.config.with_extension("toml.new");
        std::fs::write(&tmp, cfg.render()).map_err(|e| EcmpError::io("write node config", e))?;
        std::fs::rename(&tmp, &self.config).map_err(|e| EcmpError::io("replace node config", e))?;
        self.signal(libc::SIGHUP);
        Ok(())
    }

    /// Backends of VIP `web` in this node's Maglev table, from `/v1/state`.
    pub fn backends_in_table(&self, ns: &Netns) -> Result<BTreeSet<String>, EcmpError> {
        let (code, body) = self.get(ns, "/v1/state")?;
        if code != 200 {
            return Err(self.error(format!("/v1/state answered {code}")));
        }
        let v: serde_json::Value =
            serde_json::from_str(&body).map_err(|e| self.error(format!("/v1/state is not JSON: {e}")))?;
        let backends = v["planes"]["l4"]["vips"]
            .as_array()
            .and_then(|vips| vips.iter().find(|x| x["name"] == "web"))
            .and_then(|vip| vip["backends"].as_array())
            .map(|bs| {
                bs.iter()
                    .filter(|b| b["in_table"].as_bool().unwrap_or(false))
                    .filter_map(|b| b["addr"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        Ok(backends)
    }

    /// Packets this node's XDP program forwarded so far (`forwarded` counter in `/v1/state`).
    pub fn forwarded(&self, ns: &Netns) -> Result<u64, EcmpError> {
        let (_, body) = self.get(ns, "/v1/state")?;
        let v: serde_json::Value =
            serde_json::from_str(&body).map_err(|e| self.error(format!("/v1/state is not JSON: {e}")))?;
        Ok(v["planes"]["l4"]["stats"]["forwarded"]["packets"].as_u64().unwrap_or(0))
    }

    /// Waits until the node's table holds exactly `backends` (indices).
    pub fn wait_backends(&mut self, ns: &Netns, backends: &[usize], limit: Duration) -> Result<(), EcmpError> {
        let want: BTreeSet<String> = backends.iter().map(|&b| backend_addr(b)).collect();
        let t = Instant::now();
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Err(self.error(format!("exited ({st})")));
            }
            let have = self.backends_in_table(ns)?;
            if have == want {
                return Ok(());
            }
            if t.elapsed() > limit {
                return Err(self.error(format!("table has {have:?}, want {want:?}")));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends `sig` to the daemon.
    pub fn signal(&self, sig: i32) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            // SAFETY: kill(2) on our own child's pid (not yet reaped: `wait` consumes the node).
            unsafe {
                libc::kill(pid, sig);
            }
        }
    }

    /// Kills the daemon at once (SIGKILL) and reaps it.
    pub fn kill(mut self) {
        self.reap_now();
    }

    fn reap_now(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    /// Waits for the daemon to exit (after SIGTERM), up to `limit`; kills it past that.
    pub fn wait_exit(mut self, limit: Duration) -> Result<(), EcmpError> {
        let t = Instant::now();
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) => return Ok(()),
                Ok(None) if t.elapsed() < limit => std::thread::sleep(Duration::from_millis(20)),
                _ => {
                    let e = self.error(format!("did not exit within {limit:?}"));
                    self.reap_now();
                    return Err(e);
                }
            }
        }
    }

    /// Its pin instance.
    pub fn instance(&self) -> &str {
        &self.instance
    }
}

impl Drop for PadisNode {
    fn drop(&mut self) {
        self.reap_now();
        // `ip netns exec` gave the daemon its own /sys, so its pins lived in a private bpffs; remove any that
        // reached the host's bpffs all the same.
        let _ = padis_l4::bpffs::remove_instance(&self.instance);
    }
}
