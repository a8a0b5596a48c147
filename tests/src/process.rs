//! Running the `padis` binary in tests: building it once, free ports, a child that is killed on drop, and a
//! small HTTP client for the admin API.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Path of the `padis` binary, built (once per test process) from the workspace.
/// `PADIS_BIN` overrides it.
pub fn padis_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Ok(p) = std::env::var("PADIS_BIN") {
            return PathBuf::from(p);
        }
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(["build", "--quiet", "-p", "padis-control", "--bin", "padis"])
            .current_dir(&manifest)
            .status()
            .expect("cargo runs");
        assert!(status.success(), "building padis failed");
        // target/debug/deps/<test> -> target/debug/padis
        let exe = std::env::current_exe().expect("current exe");
        let dir = exe.parent().and_then(Path::parent).expect("target dir");
        dir.join("padis")
    })
    .clone()
}

/// A TCP port free on 127.0.0.1 right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// A running `padis` process; killed (SIGKILL) on drop unless it already exited.
pub struct Padis {
    /// The child process.
    pub child: Child,
    /// Admin API address.
    pub admin: SocketAddr,
    /// Where its stderr goes.
    pub log: PathBuf,
}

impl Padis {
    /// Starts `padis run --config <config>`; `admin` must match the config's `[admin] listen`.
    pub fn start(config: &Path, admin: SocketAddr) -> Padis {
        Padis::start_exe(&padis_bin(), config, admin)
    }

    /// Starts `<exe> run --config <config>` (`exe`: the padis binary, or a link to it).
    pub fn start_exe(exe: &Path, config: &Path, admin: SocketAddr) -> Padis {
        let log = config.with_extension("log");
        let err = std::fs::File::create(&log).expect("log file");
        let child = Command::new(exe)
            .args(["run", "--config"])
            .arg(config)
            .env("PADIS_LOG", "info")
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .expect("padis starts");
        Padis { child, admin, log }
    }

    /// Waits until the admin API answers `/healthz` with 200.
    pub fn wait_ready(&mut self) -> &mut Self {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some(st) = self.child.try_wait().expect("wait") {
                panic!("padis exited early ({st}); log:\n{}", self.log_text());
            }
            if matches!(http(self.admin, "GET", "/healthz", None, &[]), Ok((200, _))) {
                return self;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("padis not ready; log:\n{}", self.log_text());
    }

    /// The process's stderr so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends a signal.
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as i32, sig);
        }
    }

    /// `/v1/state` as JSON.
    pub fn state(&self) -> serde_json::Value {
        let (code, body) = http(self.admin, "GET", "/v1/state", None, &[]).expect("admin API answers");
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).expect("json")
    }

    /// `/metrics` text.
    pub fn metrics(&self) -> String {
        http(self.admin, "GET", "/metrics", None, &[]).expect("admin API answers").1
    }

    /// Waits until `/v1/state` satisfies `pred` (panics after `timeout`).
    pub fn wait_state(&self, timeout: Duration, pred: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.state();
            if pred(&s) {
                return s;
            }
            assert!(Instant::now() < deadline, "state never matched; last:\n{s:#}\nlog:\n{}", self.log_text());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for the process to exit, up to `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(st) = self.child.try_wait().expect("wait") {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Padis {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A minimal blocking HTTP/1.1 request (Connection: close); returns status and body.
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
    headers: &[(&str, &str)],
) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut req = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        req.push_str(&format!("Host: {addr}\r\n"));
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    let body = body.unwrap_or("");
    req.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    s.write_all(req.as_bytes())?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    let text = String::from_utf8_lossy(&out).into_owned();
    let code = text.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Ok((code, body))
}
