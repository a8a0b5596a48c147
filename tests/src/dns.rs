//! Test helpers: dns.
//!
//! Most DNS end-to-end tests live with the crate, in `dns/tests/dns_*.rs` (in-process server on 127.0.0.1:0 and
//! ::1, driven by kdig, nsupdate, a Knot secondary and raw sockets); their helpers are in `dns/tests/common`.
//! The tests here (`tests/tests/control/dns_*.rs`) run the `padis` daemon itself, for what goes through it: SIGHUP and
//! `POST /v1/reload`, `/v1/state`, `/metrics`, `padis check`. Their helpers: [`kdig`] and a BIND 9 secondary
//! ([`Bind`]).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// kdig's answer: its status and the records of its answer section (one line each, fields tab-separated).
#[derive(Debug, Default)]
pub struct Dig {
    /// `NOERROR`, `NXDOMAIN`, ...
    pub status: String,
    /// Answer section lines.
    pub answer: Vec<String>,
    /// The whole output.
    pub raw: String,
}

impl Dig {
    /// Data fields (after the type) of the answer records of `rtype`.
    pub fn data(&self, rtype: &str) -> Vec<String> {
        self.answer
            .iter()
            .filter(|l| l.split_whitespace().nth(3) == Some(rtype))
            .map(|l| l.split_whitespace().skip(4).collect::<Vec<_>>().join(" "))
            .collect()
    }
}

/// Runs kdig against `addr` with `args` (e.g. `["-y", key, "zone", "IXFR=100"]`).
pub fn kdig(addr: SocketAddr, args: &[&str]) -> Dig {
    let out = Command::new("kdig")
        .arg(format!("@{}", addr.ip()))
        .arg("-p")
        .arg(addr.port().to_string())
        .args(["+time=2", "+retry=1"])
        .args(args)
        .output()
        .expect("kdig (knot-dnsutils) must be installed");
    let raw = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let mut d = Dig { raw: raw.clone(), ..Dig::default() };
    let mut in_answer = false;
    for l in raw.lines().map(str::trim) {
        if let Some(i) = l.find("status: ") {
            d.status = l[i + 8..].split([';', ',']).next().unwrap_or("").trim().to_string();
        }
        if l.starts_with(";; ANSWER SECTION") {
            in_answer = true;
        } else if l.is_empty() || l.starts_with(";;") {
            in_answer = false;
        } else if in_answer {
            d.answer.push(l.to_string());
        }
    }
    d
}

/// A BIND 9 (`named`) secondary on 127.0.0.1, killed on drop.
pub struct Bind {
    child: Child,
    /// Where it answers.
    pub addr: SocketAddr,
    /// Its log (named -g writes to stderr).
    pub log: PathBuf,
}

impl Bind {
    /// Starts named in `dir` as a secondary of `zone` from `primary`, transferring with the TSIG key
    /// `key_name`/`algorithm`/`secret`, and accepting NOTIFY from 127.0.0.1.
    pub fn secondary(dir: &Path, zone: &str, primary: SocketAddr, key: (&str, &str, &str), port: u16) -> Bind {
        let (key_name, algorithm, secret) = key;
        let d = dir.display();
        let conf = format!(
            r#"options {{
    directory "{d}";
    pid-file none;
    session-keyfile none;
    managed-keys-directory "{d}";
    listen-on port {port} {{ 127.0.0.1; }};
    listen-on-v6 {{ none; }};
    recursion no;
    dnssec-validation no;
    notify no;
}};
controls {{ }};
key "{key_name}" {{ algorithm {algorithm}; secret "{secret}"; }};
zone "{zone}" {{
    type secondary;
    file "{d}/{zone}.bak";
    primaries {{ {ip} port {pport} key "{key_name}"; }};
    allow-notify {{ 127.0.0.1; }};
}};
"#,
            ip = primary.ip(),
            pport = primary.port(),
        );
        let path = dir.join("named.conf");
        std::fs::write(&path, conf).expect("named.conf");
        let log = dir.join("named.log");
        let err = std::fs::File::create(&log).expect("log file");
        let child = Command::new("/usr/sbin/named")
            .args(["-g", "-4", "-c"])
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .expect("named (bind9) must be installed; tests/setup installs it");
        Bind { child, addr: SocketAddr::from(([127, 0, 0, 1], port)), log }
    }

    /// named's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits (bounded by `timeout`) until `zone`'s SOA serial served by named is `serial`.
    pub fn wait_serial(&self, zone: &str, serial: u32, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let d = kdig(self.addr, &[zone, "SOA"]);
            let got = d.data("SOA").first().and_then(|s| s.split_whitespace().nth(2).map(str::to_string));
            if got.as_deref() == Some(&serial.to_string()) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "BIND never served serial {serial} (got {got:?}); log:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Bind {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
