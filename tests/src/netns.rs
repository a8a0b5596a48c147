//! Network namespace helpers for end-to-end tests: namespaces, veth pairs and bridges with unique names, removed
//! on drop (also when the test panics), and running a closure or a command inside a namespace.
//!
//! ```no_run
//! use padis_tests::netns::{Netns, unique_name};
//! let ns = Netns::new("demo").unwrap();              // `ip netns add demo-<pid>-<n>`
//! ns.run(&["ip", "link", "set", "lo", "up"]).unwrap();
//! // dropped: `ip netns del ...`
//! ```

use std::fs::File;
use std::future::Future;
use std::os::fd::AsRawFd;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A short unique name `<prefix><pid % 100000>x<n>` (interface names must stay under 16 bytes: keep the prefix
/// at most 4 characters for interfaces).
pub fn unique_name(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}{}x{n}", std::process::id() % 100_000)
}

/// Runs a command, failing with its stderr when it exits non-zero.
pub fn cmd(args: &[&str]) -> Result<Output, String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{}: {e}", args.join(" ")))?;
    if !out.status.success() {
        return Err(format!("{}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()));
    }
    Ok(out)
}

/// Runs `program args...`, panicking with its stderr if it fails; its stdout.
pub fn run(program: &str, args: &[&str]) -> String {
    let mut full = vec![program];
    full.extend_from_slice(args);
    let out = cmd(&full).unwrap_or_else(|e| panic!("{e}"));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A network namespace, deleted on drop (which also destroys the interfaces inside it).
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates a namespace named `unique_name(prefix)` with `lo` up.
    pub fn new(prefix: &str) -> Result<Netns, String> {
        let name = unique_name(prefix);
        cmd(&["ip", "netns", "add", &name])?;
        let ns = Netns { name };
        ns.run(&["ip", "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `ip -n <ns> args...`, panicking if it fails; its stdout.
    pub fn ip(&self, args: &[&str]) -> String {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    /// Runs `ip -n <ns> args...`; its stdout, or "" if it failed (e.g. a table that does not exist yet).
    pub fn try_ip(&self, args: &[&str]) -> String {
        let mut full = vec!["ip", "-n", self.name.as_str()];
        full.extend_from_slice(args);
        cmd(&full).map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default()
    }

    /// Runs `args` inside the namespace (`ip netns exec`).
    pub fn run(&self, args: &[&str]) -> Result<Output, String> {
        let mut full = vec!["ip", "netns", "exec", &self.name];
        full.extend_from_slice(args);
        cmd(&full)
    }

    /// A `Command` that runs `program` inside the namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// Writes a sysctl inside the namespace (`net.ipv4.conf.all.arp_ignore=1`).
    pub fn sysctl(&self, kv: &str) -> Result<(), String> {
        self.run(&["sysctl", "-q", "-w", kv]).map(|_| ())
    }

    /// Moves the current thread into the namespace for the duration of `f` (sockets created inside stay in it).
    /// Restores the thread's previous namespace afterwards.
    pub fn enter<T>(&self, f: impl FnOnce() -> T) -> Result<T, String> {
        let here = File::open("/proc/thread-self/ns/net").map_err(|e| format!("open own netns: {e}"))?;
        let there = File::open(format!("/var/run/netns/{}", self.name)).map_err(|e| format!("open netns: {e}"))?;
        setns(&there)?;
        let out = f();
        setns(&here)?;
        Ok(out)
    }

    /// Spawns a thread living in the namespace that runs `f` (e.g. a tokio runtime and servers).
    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<std::thread::JoinHandle<T>, String> {
        let there = File::open(format!("/var/run/netns/{}", self.name)).map_err(|e| format!("open netns: {e}"))?;
        Ok(std::thread::spawn(move || {
            setns(&there).expect("setns into test namespace");
            f()
        }))
    }
}

fn setns(f: &File) -> Result<(), String> {
    // SAFETY: setns on an open namespace fd for the calling thread.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(format!("setns: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).stderr(Stdio::null()).status();
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
    in_netns_on(ns, tokio::runtime::Builder::new_current_thread, make)
}

/// Like [`in_netns`], but on a multi-threaded runtime (2 workers, which inherit the namespace): spawned tasks
/// (an announcer, its BFD timers) keep running while the test's own future blocks (e.g. on `birdc`).
pub fn in_netns_threaded<F, Fut, T>(ns: &str, make: F) -> T
where
    F: FnOnce() -> Fut + Send,
    Fut: Future<Output = T>,
    T: Send,
{
    let builder = || {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(2);
        b
    };
    in_netns_on(ns, builder, make)
}

fn in_netns_on<F, Fut, T>(ns: &str, builder: fn() -> tokio::runtime::Builder, make: F) -> T
where
    F: FnOnce() -> Fut + Send,
    Fut: Future<Output = T>,
    T: Send,
{
    let path = format!("/var/run/netns/{ns}");
    std::thread::scope(|s| {
        let h = s.spawn(move || {
            let f = File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
            setns(&f).unwrap_or_else(|e| panic!("{path}: {e}"));
            let rt = builder().enable_all().build().expect("runtime");
            rt.block_on(make())
        });
        match h.join() {
            Ok(v) => v,
            Err(p) => std::panic::resume_unwind(p),
        }
    })
}

/// Creates a veth pair `a` (in `ns_a`) <-> `b` (in `ns_b`), both up. Deleted with either namespace.
pub fn veth(a: &str, ns_a: &Netns, b: &str, ns_b: &Netns) -> Result<(), String> {
    cmd(&["ip", "link", "add", a, "netns", ns_a.name(), "type", "veth", "peer", "name", b, "netns", ns_b.name()])?;
    ns_a.run(&["ip", "link", "set", a, "up"])?;
    ns_b.run(&["ip", "link", "set", b, "up"])?;
    Ok(())
}

/// Creates bridge `name` in `ns` and enslaves `ports` (already in `ns`), all up.
pub fn bridge(ns: &Netns, name: &str, ports: &[&str]) -> Result<(), String> {
    ns.run(&["ip", "link", "add", name, "type", "bridge"])?;
    ns.run(&["ip", "link", "set", name, "up"])?;
    for p in ports {
        ns.run(&["ip", "link", "set", p, "master", name])?;
        ns.run(&["ip", "link", "set", p, "up"])?;
    }
    Ok(())
}

/// MAC address of `iface` in `ns`.
pub fn mac_of(ns: &Netns, iface: &str) -> Result<String, String> {
    let out = ns.run(&["cat", &format!("/sys/class/net/{iface}/address")])?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Turns off TX checksum offload on `iface` in `ns` (ETHTOOL_STXCSUM, as `ethtool -K <iface> tx off`). Needed for
/// traffic that crosses native XDP on a veth: a veth hands partial checksums along, and a frame re-transmitted by
/// XDP (XDP_TX/redirect) leaves as a plain frame whose checksum was never filled in.
pub fn disable_tx_checksum(ns: &Netns, iface: &str) -> Result<(), String> {
    #[repr(C)]
    struct EthtoolValue {
        cmd: u32,
        data: u32,
    }
    #[repr(C)]
    struct IfReq {
        name: [u8; 16],
        data: *mut EthtoolValue,
        _pad: [u8; 16],
    }
    const SIOCETHTOOL: libc::c_ulong = 0x8946;
    const ETHTOOL_STXCSUM: u32 = 0x17;
    if iface.len() >= 16 {
        return Err(format!("interface name too long: {iface}"));
    }
    ns.enter(|| {
        let mut val = EthtoolValue { cmd: ETHTOOL_STXCSUM, data: 0 };
        let mut req = IfReq { name: [0; 16], data: &mut val, _pad: [0; 16] };
        req.name[..iface.len()].copy_from_slice(iface.as_bytes());
        // SAFETY: a datagram socket for the ioctl, closed below; the request points at live locals.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0);
            if fd < 0 {
                return Err(format!("socket: {}", std::io::Error::last_os_error()));
            }
            let r = libc::ioctl(fd, SIOCETHTOOL as _, &mut req as *mut IfReq);
            let err = std::io::Error::last_os_error();
            libc::close(fd);
            if r != 0 {
                return Err(format!("ETHTOOL_STXCSUM {iface}: {err}"));
            }
        }
        Ok(())
    })?
}
