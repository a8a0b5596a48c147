//! Test helpers for the BGP/OSPF announcer: a two-namespace lab joined by a veth pair (speaker side and router
//! side), running code inside a namespace, a BIRD 2 instance as the real peer, and bounded polling.
//!
//! Everything is removed on drop (also on panic): BIRD is killed, the namespaces are deleted.

use std::future::Future;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Speaker-side addresses in a [`Lab`].
pub const SPEAKER_V4: &str = "10.99.0.1";
/// Router-side (BIRD) IPv4 address in a [`Lab`].
pub const ROUTER_V4: &str = "10.99.0.2";
/// Speaker-side IPv6 address in a [`Lab`].
pub const SPEAKER_V6: &str = "fd00:99::1";
/// Router-side IPv6 address in a [`Lab`].
pub const ROUTER_V6: &str = "fd00:99::2";

/// A unique name for this process and call (netns names, ...), at most 15 characters.
pub fn unique(tag: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let mut s = format!("pb{}{}{}", std::process::id() % 100_000, n, tag);
    s.truncate(15);
    s
}

/// Runs a command, panicking with its stderr if it fails.
pub fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A network namespace, deleted on drop.
#[derive(Debug)]
pub struct Netns {
    /// Its name (`ip netns` name).
    pub name: String,
}

impl Netns {
    /// Creates a namespace with `lo` up.
    pub fn new(tag: &str) -> Self {
        let name = unique(tag);
        run("ip", &["netns", "add", &name]);
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// Runs `ip -n <ns> args...`.
    pub fn ip(&self, args: &[&str]) -> String {
        let mut a = vec!["-n", self.name.as_str()];
        a.extend_from_slice(args);
        run("ip", &a)
    }

    /// Runs `ip -n <ns> args...`; its stdout, or "" if it failed (e.g. a table that does not exist yet).
    pub fn try_ip(&self, args: &[&str]) -> String {
        Command::new("ip")
            .args(["-n", self.name.as_str()])
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stderr(Stdio::null())
            .status();
    }
}

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
        let speaker = Netns::new("s");
        let router = Netns::new("r");
        speaker.ip(&[
            "link",
            "add",
            "vs",
            "type",
            "veth",
            "peer",
            "name",
            "vr",
            "netns",
            &router.name,
        ]);
        speaker.ip(&["addr", "add", &format!("{SPEAKER_V4}/30"), "dev", "vs"]);
        speaker.ip(&[
            "addr",
            "add",
            &format!("{SPEAKER_V6}/64"),
            "dev",
            "vs",
            "nodad",
        ]);
        speaker.ip(&["link", "set", "vs", "up"]);
        router.ip(&["addr", "add", &format!("{ROUTER_V4}/30"), "dev", "vr"]);
        router.ip(&[
            "addr",
            "add",
            &format!("{ROUTER_V6}/64"),
            "dev",
            "vr",
            "nodad",
        ]);
        router.ip(&["link", "set", "vr", "up"]);
        let dir = tempfile::Builder::new()
            .prefix("padis-bgp-")
            .tempdir()
            .expect("temp dir");
        Lab {
            speaker,
            router,
            dir,
        }
    }
}

impl Default for Lab {
    fn default() -> Self {
        Self::new()
    }
}

/// Runs `make()`'s future on a fresh current-thread tokio runtime in a thread that has entered namespace `ns`:
/// every socket it opens (and every child it starts) lives in that namespace. Panics propagate.
pub fn in_netns<F, Fut, T>(ns: &str, make: F) -> T
where
    F: FnOnce() -> Fut + Send,
    Fut: Future<Output = T>,
    T: Send,
{
    let path = format!("/var/run/netns/{ns}");
    std::thread::scope(|s| {
        let h = s.spawn(move || {
            let f = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
            // SAFETY: setns on this thread only, with a valid namespace fd.
            let r = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(r, 0, "setns {path}: {}", std::io::Error::last_os_error());
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(make())
        });
        match h.join() {
            Ok(v) => v,
            Err(p) => std::panic::resume_unwind(p),
        }
    })
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
        let mut b = Bird {
            child: None,
            ns: ns.into(),
            conf,
            sock,
        };
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
            .stderr(
                std::fs::File::create(self.sock.with_extension("stderr"))
                    .expect("bird stderr file"),
            )
            .spawn()
            .expect("start bird (bird2 installed by tests/setup)");
        self.child = Some(child);
        let t = Instant::now();
        while !self.sock.exists() {
            if let Some(Ok(Some(st))) = self.child.as_mut().map(|c| c.try_wait()) {
                let err =
                    std::fs::read_to_string(self.sock.with_extension("stderr")).unwrap_or_default();
                panic!("bird exited ({st}): {err}");
            }
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "bird did not create its control socket"
            );
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
        let out = Command::new("birdc")
            .arg("-s")
            .arg(&self.sock)
            .args(args.split_whitespace())
            .output()
            .expect("birdc");
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
pub fn bird_config_on(
    router_asn: u32,
    speaker_asn: u32,
    hold_secs: u32,
    local: &str,
    neighbor: &str,
) -> String {
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
        assert!(
            t.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
