//! Shared helpers of the DNS end-to-end tests: an in-process server (SnapshotStore + DnsPlane) on 127.0.0.1:0 and
//! ::1, driven by kdig/dig/nsupdate, and child processes killed on drop.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use padis_dns::{DnsHandle, DnsPlane};
use padis_model::{load_config, Snapshot, SnapshotStore};
use tokio_util::sync::CancellationToken;

/// A running in-process DNS server.
pub struct Server {
    pub store: SnapshotStore,
    pub handle: Option<DnsHandle>,
    pub shutdown: CancellationToken,
    pub addrs: Vec<SocketAddr>,
    pub dir: PathBuf,
    pub registry: prometheus::Registry,
    generation: u64,
}

/// Writes `config` (with `@DIR@` replaced by `dir`) into `dir/padis.toml` and loads it.
fn snapshot(dir: &Path, config: &str, generation: u64) -> Snapshot {
    let text = config.replace("@DIR@", &dir.display().to_string());
    let path = dir.join("padis.toml");
    std::fs::write(&path, text).unwrap();
    let valid = load_config(&path).unwrap_or_else(|e| panic!("config: {e}"));
    Snapshot::new(valid, generation, Vec::new())
}

impl Server {
    /// Starts a server for `config` in `dir`.
    pub async fn start(dir: &Path, config: &str) -> Server {
        let store = SnapshotStore::new(snapshot(dir, config, 1));
        let registry = prometheus::Registry::new();
        let shutdown = CancellationToken::new();
        let handle =
            DnsPlane::start(store.reader(), &registry, shutdown.clone()).await.unwrap_or_else(|e| panic!("start: {e}"));
        let addrs = handle.local_addrs();
        Server { store, handle: Some(handle), shutdown, addrs, dir: dir.to_path_buf(), registry, generation: 1 }
    }

    /// The IPv4 address.
    pub fn addr(&self) -> SocketAddr {
        self.addrs[0]
    }

    /// Publishes a new config.
    pub fn publish(&mut self, config: &str) {
        self.generation += 1;
        self.store.publish(snapshot(&self.dir, config, self.generation));
    }

    /// Stops the server and waits for it.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(h) = self.handle.take() {
            h.wait().await;
        }
    }

    /// The current serial of `zone` (from the report).
    pub fn serial(&self, zone: &str) -> u32 {
        let r = self.handle.as_ref().unwrap().report();
        r.zones.iter().find(|z| z.name.trim_end_matches('.') == zone).map(|z| z.serial).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A parsed kdig answer.
#[derive(Debug, Default)]
pub struct Dig {
    pub status: String,
    pub flags: Vec<String>,
    pub answer: Vec<String>,
    pub authority: Vec<String>,
    pub additional: Vec<String>,
    pub raw: String,
}

impl Dig {
    pub fn has_flag(&self, f: &str) -> bool {
        self.flags.iter().any(|x| x == f)
    }
    /// Data fields (last column) of answer records of `rtype`.
    pub fn data(&self, rtype: &str) -> Vec<String> {
        self.answer
            .iter()
            .filter(|l| l.split_whitespace().nth(3) == Some(rtype))
            .map(|l| l.split_whitespace().skip(4).collect::<Vec<_>>().join(" "))
            .collect()
    }
}

/// Runs kdig against `addr` with `args` and parses its output.
pub fn kdig(addr: SocketAddr, args: &[&str]) -> Dig {
    let out = Command::new("kdig")
        .arg(format!("@{}", addr.ip()))
        .arg("-p")
        .arg(addr.port().to_string())
        .args(["+time=2", "+retry=1"])
        .args(args)
        .output()
        .expect("kdig (knot-dnsutils) must be installed");
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    parse(&text)
}

/// Parses kdig/dig output.
pub fn parse(text: &str) -> Dig {
    let mut d = Dig { raw: text.to_string(), ..Dig::default() };
    let mut section = 0;
    for line in text.lines() {
        let l = line.trim();
        if let Some(i) = l.find("status: ") {
            d.status = l[i + 8..].split([';', ',']).next().unwrap_or("").trim().to_string();
        }
        if let Some(rest) = l.strip_prefix(";; Flags: ").or_else(|| l.strip_prefix(";; flags: ")) {
            d.flags = rest.split(';').next().unwrap_or("").split_whitespace().map(str::to_string).collect();
        }
        if l.starts_with(";; ANSWER SECTION") {
            section = 1;
        } else if l.starts_with(";; AUTHORITY SECTION") {
            section = 2;
        } else if l.starts_with(";; ADDITIONAL SECTION") {
            section = 3;
        } else if l.starts_with(";;") && !l.starts_with(";; ->>") {
            if l.contains("SECTION") || l.starts_with(";; Received") || l.starts_with(";; Query time") {
                section = 0;
            }
        } else if l.is_empty() {
            section = 0;
        } else if !l.starts_with(';') {
            match section {
                1 => d.answer.push(l.to_string()),
                2 => d.authority.push(l.to_string()),
                3 => d.additional.push(l.to_string()),
                _ => {}
            }
        }
    }
    d
}

/// RFC 1982: whether serial `a` is greater than `b`.
pub fn serial_gt(a: u32, b: u32) -> bool {
    a != b && a.wrapping_sub(b) < (1 << 31)
}

/// The current unix time in seconds.
pub fn unix_now() -> u32 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as u32
}

/// Waits (bounded) until `f` returns true.
pub async fn eventually(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

/// A child process killed (and reaped) on drop.
pub struct ChildGuard(pub Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Spawns a command with output discarded.
pub fn spawn(cmd: &mut Command) -> ChildGuard {
    ChildGuard(cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("spawn"))
}

/// A free TCP+UDP port on 127.0.0.1 (bound then released).
pub fn free_port() -> u16 {
    for _ in 0..50 {
        let t = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let p = t.local_addr().unwrap().port();
        if std::net::UdpSocket::bind(("127.0.0.1", p)).is_ok() {
            return p;
        }
    }
    panic!("no free port");
}
