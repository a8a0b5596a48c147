//! Test helpers for the BGP/OSPF announcer: a two-namespace lab joined by a veth pair (speaker side and router
//! side), a BIRD 2 or FRR instance as the real peer, and bounded polling. Namespaces themselves (and running code
//! inside one) are [`crate::netns`]'s.
//!
//! Everything is removed on drop (also on panic): BIRD and FRR are killed, the namespaces are deleted.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::netns::{run, Netns};

/// Speaker-side addresses in a [`Lab`].
pub const SPEAKER_V4: &str = "10.99.0.1";
/// Router-side (BIRD) IPv4 address in a [`Lab`].
pub const ROUTER_V4: &str = "10.99.0.2";
/// Speaker-side IPv6 address in a [`Lab`].
pub const SPEAKER_V6: &str = "fd00:99::1";
/// Router-side IPv6 address in a [`Lab`].
pub const ROUTER_V6: &str = "fd00:99::2";

/// Two namespaces joined by a veth pair: `speaker` (10.99.0.1, fd00:99::1) and `router` (10.99.0.2,
/// fd00:99::2), plus a temp dir for configs and sockets.
pub struct Lab {
    /// Where the announcer runs.
    pub speaker: Netns,
    /// Where BIRD runs.
    pub router: Netns,
    /// Scratch directory.
    pub dir: tempfile::TempDir,
}

impl Lab {
    /// Builds the lab.
    pub fn new() -> Self {
        let speaker = Netns::new("s").expect("speaker netns");
        let router = Netns::new("r").expect("router netns");
        speaker.ip(&["link", "add", "vs", "type", "veth", "peer", "name", "vr", "netns", router.name()]);
        speaker.ip(&["addr", "add", &format!("{SPEAKER_V4}/30"), "dev", "vs"]);
        speaker.ip(&["addr", "add", &format!("{SPEAKER_V6}/64"), "dev", "vs", "nodad"]);
        speaker.ip(&["link", "set", "vs", "up"]);
        router.ip(&["addr", "add", &format!("{ROUTER_V4}/30"), "dev", "vr"]);
        router.ip(&["addr", "add", &format!("{ROUTER_V6}/64"), "dev", "vr", "nodad"]);
        router.ip(&["link", "set", "vr", "up"]);
        let dir = tempfile::Builder::new().prefix("padis-bgp-").tempdir().expect("temp dir");
        Lab { speaker, router, dir }
    }
}

impl Default for Lab {
    fn default() -> Self {
        Self::new()
    }
}

/// A BIRD 2 daemon in a namespace, killed on drop.
pub struct Bird {
    child: Option<Child>,
    ns: String,
    conf: PathBuf,
    /// Control socket (for `birdc -s`).
    pub sock: PathBuf,
}

impl Bird {
    /// Writes `config` into `dir` and starts BIRD in the foreground inside `ns`.
    pub fn start(ns: &str, dir: &Path, config: &str) -> Self {
        let conf = dir.join("bird.conf");
        let sock = dir.join("bird.ctl");
        std::fs::write(&conf, config).expect("write bird.conf");
        let mut b = Bird { child: None, ns: ns.into(), conf, sock };
        b.spawn();
        b
    }

    fn spawn(&mut self) {
        let _ = std::fs::remove_file(&self.sock);
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns, "bird", "-f", "-c"])
            .arg(&self.conf)
            .arg("-s")
            .arg(&self.sock)
            .arg("-P")
            .arg(self.sock.with_extension("pid"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.sock.with_extension("stderr")).expect("bird stderr file"))
            .spawn()
            .expect("start bird (bird2 installed by tests/setup)");
        self.child = Some(child);
        let t = Instant::now();
        while !self.sock.exists() {
            if let Some(Ok(Some(st))) = self.child.as_mut().map(|c| c.try_wait()) {
                let err = std::fs::read_to_string(self.sock.with_extension("stderr")).unwrap_or_default();
                panic!("bird exited ({st}): {err}");
            }
            assert!(t.elapsed() < Duration::from_secs(10), "bird did not create its control socket");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills BIRD (like a crash), then starts it again with the same config.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Kills BIRD.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// `birdc -s <sock> <args>` output.
    pub fn cmd(&self, args: &str) -> String {
        let out =
            Command::new("birdc").arg("-s").arg(&self.sock).args(args.split_whitespace()).output().expect("birdc");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `show route all` for one prefix in all tables ("" when not present).
    pub fn route(&self, prefix: &str) -> String {
        let out = self.cmd(&format!("show route all for {prefix}"));
        if out.contains(prefix) {
            out
        } else {
            String::new()
        }
    }
}

impl Drop for Bird {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A BIRD config peering with the speaker of a [`Lab`] over IPv4, importing IPv4 and IPv6 routes.
pub fn bird_config(router_asn: u32, speaker_asn: u32, hold_secs: u32) -> String {
    bird_config_on(router_asn, speaker_asn, hold_secs, ROUTER_V4, SPEAKER_V4)
}

/// A BIRD config peering from `local` with the speaker at `neighbor` (IPv4 or IPv6 transport), importing IPv4
/// and IPv6 routes.
pub fn bird_config_on(router_asn: u32, speaker_asn: u32, hold_secs: u32, local: &str, neighbor: &str) -> String {
    format!(
        r#"
log stderr all;
router id {ROUTER_V4};
protocol device {{ scan time 1; }}
protocol direct {{ ipv4; ipv6; interface "vr"; }}
protocol bgp padis {{
  local {local} as {router_asn};
  neighbor {neighbor} as {speaker_asn};
  hold time {hold_secs};
  keepalive time 1;
  connect retry time 1;
  error wait time 1, 2;
  ipv4 {{ import all; export none; }};
  ipv6 {{ import all; export none; }};
}}
"#
    )
}

/// `config` (from [`bird_config`] / [`bird_config_on`]) with BFD: `bfd on` in the BGP protocol and a BFD
/// protocol on the lab's link with `interval_ms` (min rx / min tx) and `multiplier`.
pub fn with_bfd(config: &str, interval_ms: u32, multiplier: u32) -> String {
    let mut s = config.replacen("  keepalive time 1;\n", "  keepalive time 1;\n  bfd on;\n", 1);
    s.push_str(&format!(
        "protocol bfd {{\n  debug {{ states, events }};\n  interface \"vr\" {{ min rx interval {interval_ms} ms; \
         min tx interval {interval_ms} ms; idle tx interval 1 s; multiplier {multiplier}; }};\n}}\n"
    ));
    s
}

/// Polls `probe` every 100 ms until it returns `Some`, at most `limit`; panics naming `what` on timeout.
pub async fn wait_for<T, F, Fut>(limit: Duration, what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let t = Instant::now();
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(t.elapsed() < limit, "timed out after {limit:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// FRR daemons (zebra first, then bgpd/ospfd/...) in one namespace with their own config files, pid files,
/// vty sockets and zebra socket in a private directory; all killed on drop (also on panic).
///
/// The daemons run as the `frr` user (created by the Debian package, member of `frrvty`), as FRR requires the
/// vty group for its sockets; they keep the capabilities they need to program the namespace's kernel tables.
pub struct Frr {
    children: Vec<(String, Child)>,
    /// Holds configs, pid files, vty sockets (`<daemon>.vty`), `zserv.api` and `<daemon>.log`.
    dir: tempfile::TempDir,
}

impl Frr {
    /// Starts `daemons` (name under /usr/lib/frr, config text) in this order inside namespace `ns`, each in
    /// the foreground, waiting for each one's vty socket. The first must be `zebra`.
    pub fn start(ns: &str, daemons: &[(&str, &str)]) -> Self {
        assert_eq!(daemons.first().map(|d| d.0), Some("zebra"), "zebra starts first");
        let dir = tempfile::Builder::new().prefix("padis-frr-").tempdir().expect("temp dir");
        let path = dir.path().to_path_buf();
        let mut frr = Frr { children: Vec::new(), dir };
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod frr dir");
        }
        for (name, config) in daemons {
            std::fs::write(path.join(format!("{name}.conf")), config).expect("write frr config");
        }
        run("chown", &["-R", "frr:frr", &path.to_string_lossy()]);
        for (name, _) in daemons {
            frr.spawn(ns, name);
        }
        frr
    }

    fn spawn(&mut self, ns: &str, name: &str) {
        let dir = self.dir.path();
        let file = |ext: &str| dir.join(format!("{name}.{ext}"));
        let vty = file("vty");
        let child = Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(format!("/usr/lib/frr/{name}"))
            .args(["-u", "frr", "-g", "frr", "-P", "0", "--vty_socket"])
            .arg(dir)
            .arg("-z")
            .arg(dir.join("zserv.api"))
            .arg("-i")
            .arg(file("pid"))
            .arg("-f")
            .arg(file("conf"))
            .arg("--log")
            .arg(format!("file:{}", file("log").display()))
            // bfdd's control socket, private to this instance (bgpd reaches bfdd through zebra).
            .args(if name == "bfdd" {
                vec!["--bfdctl".into(), dir.join("bfdd.sock").into_os_string()]
            } else {
                Vec::new()
            })
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(file("stderr")).expect("frr stderr file"))
            .spawn()
            .expect("start FRR (frr installed by tests/setup)");
        self.children.push((name.to_string(), child));
        let t = Instant::now();
        while !vty.exists() {
            if let Some((_, c)) = self.children.last_mut() {
                if let Ok(Some(st)) = c.try_wait() {
                    panic!("{name} exited ({st}): {}", self.logs());
                }
            }
            assert!(t.elapsed() < Duration::from_secs(20), "{name} did not create its vty socket: {}", self.logs());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `vtysh -c <command>` against these daemons; its stdout ("" if vtysh failed).
    pub fn vtysh(&self, command: &str) -> String {
        Command::new("vtysh")
            .arg("--vty_socket")
            .arg(self.dir.path())
            .args(["-c", command])
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    }

    /// `vtysh -c <command>` parsed as JSON (`Null` when the output is not JSON, e.g. while starting).
    pub fn json(&self, command: &str) -> serde_json::Value {
        serde_json::from_str(&self.vtysh(command)).unwrap_or(serde_json::Value::Null)
    }

    /// The daemons' log files and stderr, for failure messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for (name, _) in &self.children {
            for ext in ["log", "stderr"] {
                let text = std::fs::read_to_string(self.dir.path().join(format!("{name}.{ext}"))).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(20).collect();
                for l in tail.iter().rev() {
                    out.push_str(&format!("\n{name}: {l}"));
                }
            }
        }
        out
    }
}

impl Drop for Frr {
    fn drop(&mut self) {
        // Protocol daemons before zebra, like FRR's own stop order.
        while let Some((_, mut c)) = self.children.pop() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
