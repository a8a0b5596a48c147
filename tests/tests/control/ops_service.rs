//! Padis as a service: the systemd unit passes `systemd-analyze verify` and `systemd-analyze security` (offline:
//! no systemd runs here), the daemon speaks the notify protocol the unit relies on (READY once the admin API
//! answers, STATUS with the generation and the last reload, WATCHDOG pings, STOPPING on SIGTERM) to a real
//! datagram socket, and the Debian package built by dist/build-deb holds the binary, the unit, the default config
//! (valid, a conffile) and the maintainer scripts.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use padis_tests::process::{free_port, http, padis_bin};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The unit with its `/usr/bin/padis` pointing at the binary under test (verify checks that it exists).
fn unit_for_test(dir: &Path) -> PathBuf {
    let unit = std::fs::read_to_string(repo().join("dist/systemd/padis.service")).unwrap();
    let path = dir.join("padis.service");
    std::fs::write(&path, unit.replace("/usr/bin/padis", padis_bin().to_str().unwrap())).unwrap();
    path
}

fn run(cmd: &mut Command) -> (bool, String, String) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e} (tests/setup installs it)"));
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

#[test]
fn unit_passes_systemd_analyze_verify() {
    let dir = tempfile::tempdir().unwrap();
    let unit = unit_for_test(dir.path());
    let (ok, out, err) = run(Command::new("systemd-analyze").args(["verify", "--man=no"]).arg(&unit));
    assert!(ok, "verify failed:\n{out}\n{err}");
    // Any warning (unknown setting, bad value, missing executable) is a defect of the unit.
    assert!(err.trim().is_empty() && out.trim().is_empty(), "verify complained:\n{out}\n{err}");

    // A unit with a typo in a setting is reported: verify does check the settings.
    let bad = dir.path().join("bad.service");
    std::fs::write(
        &bad,
        std::fs::read_to_string(&unit).unwrap().replace("ProtectSystem=strict", "ProtectSystm=strict"),
    )
    .unwrap();
    let (_, out, err) = run(Command::new("systemd-analyze").args(["verify", "--man=no"]).arg(&bad));
    assert!(format!("{out}{err}").contains("ProtectSystm"), "verify did not notice the typo:\n{out}\n{err}");
}

#[test]
fn unit_is_hardened_and_keeps_only_the_capabilities_it_needs() {
    let dir = tempfile::tempdir().unwrap();
    let unit = unit_for_test(dir.path());
    // Exposure 0 (locked down) .. 10 (unprotected); systemd calls <= 2.0 "OK". --threshold fails above 2.5.
    let (ok, out, err) =
        run(Command::new("systemd-analyze").args(["security", "--offline=yes", "--threshold=25"]).arg(&unit));
    assert!(ok, "exposure above 2.5:\n{out}\n{err}");
    let level: f64 = out
        .lines()
        .find_map(|l| l.split("Overall exposure level for padis.service: ").nth(1))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{out}"));
    assert!(level <= 2.5, "exposure {level}:\n{out}");

    let (ok, json, err) =
        run(Command::new("systemd-analyze").args(["security", "--offline=yes", "--json=short"]).arg(&unit));
    assert!(ok, "{err}");
    let checks: serde_json::Value = serde_json::from_str(&json).unwrap();
    let set = |name: &str| {
        checks
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("no check {name} in {json}"))["set"]
            == true
    };
    for name in [
        "PrivateTmp=",
        "ProtectSystem=",
        "ProtectHome=",
        "NoNewPrivileges=",
        "ProtectKernelModules=",
        "ProtectKernelTunables=",
        "RestrictNamespaces=~user",
        "MemoryDenyWriteExecute=",
        "SystemCallArchitectures=",
        "CapabilityBoundingSet=~CAP_SYS_ADMIN",
        "CapabilityBoundingSet=~CAP_SYS_PTRACE",
        "CapabilityBoundingSet=~CAP_(DAC_*|FOWNER|IPC_OWNER)",
        "User=/DynamicUser=",
    ] {
        assert!(set(name), "{name} not hardened:\n{out}");
    }
    // XDP (BPF, PERFMON, NET_ADMIN) and ports below 1024: the four capabilities kept, and no other.
    let text = std::fs::read_to_string(&unit).unwrap();
    let caps = |key: &str| {
        let mut v: Vec<&str> = text
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .unwrap_or_else(|| panic!("no {key}"))
            .split_whitespace()
            .collect();
        v.sort();
        v
    };
    let want = ["CAP_BPF", "CAP_NET_ADMIN", "CAP_NET_BIND_SERVICE", "CAP_PERFMON"];
    assert_eq!(caps("CapabilityBoundingSet="), want);
    assert_eq!(caps("AmbientCapabilities="), want);
    for line in ["Type=notify", "ExecReload=/bin/kill -HUP $MAINPID", "WatchdogSec=30s"] {
        assert!(text.lines().any(|l| l == line), "missing {line}");
    }
}

/// Reads notify datagrams until one contains `want` (panics after `timeout`); returns every message read.
fn wait_message(sock: &UnixDatagram, want: &str, timeout: Duration) -> Vec<String> {
    let deadline = Instant::now() + timeout;
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        sock.set_read_timeout(Some(deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1))))
            .unwrap();
        if let Ok(n) = sock.recv(&mut buf) {
            let m = String::from_utf8_lossy(&buf[..n]).into_owned();
            let hit = m.lines().any(|l| l == want || l.starts_with(want));
            seen.push(m);
            if hit {
                return seen;
            }
        }
    }
    panic!("no {want:?} within {timeout:?}; got {seen:?}");
}

/// A child process killed when the test ends, however it ends.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

#[test]
fn daemon_speaks_the_notify_protocol() {
    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let config = dir.path().join("padis.toml");
    let good = format!("[admin]\nlisten = \"{admin}\"\n");
    std::fs::write(&config, &good).unwrap();
    let log = std::fs::File::create(dir.path().join("padis.log")).unwrap();
    let mut child = KillOnDrop(
        Command::new(padis_bin())
            .args(["run", "--config"])
            .arg(&config)
            .env("NOTIFY_SOCKET", &sock_path)
            .env("WATCHDOG_USEC", "300000")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let child = &mut child.0;
    let log_text = || std::fs::read_to_string(dir.path().join("padis.log")).unwrap_or_default();

    let seen = wait_message(&sock, "READY=1", Duration::from_secs(20));
    // Ready means ready: the admin API answers as soon as READY=1 arrives.
    assert_eq!(http(admin, "GET", "/healthz", None, &[]).map(|r| r.0).ok(), Some(200), "{seen:?}\n{}", log_text());
    let ready = seen.last().unwrap();
    assert!(ready.contains("STATUS=serving generation 1; last reload ok"), "{ready}");

    // Pings at half of WATCHDOG_USEC: several within a second.
    let start = Instant::now();
    for _ in 0..3 {
        wait_message(&sock, "WATCHDOG=1", Duration::from_secs(2));
    }
    assert!(start.elapsed() < Duration::from_millis(1500), "pings too slow: {:?}", start.elapsed());

    // A failed reload (SIGHUP, as ExecReload sends) shows in the status line; the running config stays.
    std::fs::write(&config, "[admin]\nlisten = 5\n").unwrap();
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGHUP) };
    wait_message(&sock, "STATUS=serving generation 1; LAST RELOAD FAILED", Duration::from_secs(10));
    // A good change: the next generation.
    std::fs::write(&config, format!("{good}[log]\nlevel = \"debug\"\n")).unwrap();
    unsafe { libc::kill(child.id() as i32, libc::SIGHUP) };
    wait_message(&sock, "STATUS=serving generation 2; last reload ok", Duration::from_secs(10));

    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    wait_message(&sock, "STOPPING=1", Duration::from_secs(10));
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "padis did not stop:\n{}", log_text());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(child.wait().unwrap().success(), "{}", log_text());
}

#[test]
fn without_notify_socket_nothing_is_sent_and_it_serves() {
    // Run by hand or by another supervisor: no NOTIFY_SOCKET, no watchdog, the daemon serves as always.
    let dir = tempfile::tempdir().unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let config = dir.path().join("padis.toml");
    std::fs::write(&config, format!("[admin]\nlisten = \"{admin}\"\n")).unwrap();
    let mut p = padis_tests::process::Padis::start(&config, admin);
    p.wait_ready();
    assert!(!p.log_text().contains("cannot notify"), "{}", p.log_text());
}

#[test]
fn debian_package_holds_the_service() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("out");
    // The package of the binary under test (dist/build-deb --debug packages the debug build without building).
    let bin = padis_bin();
    let target = bin.parent().and_then(Path::parent).unwrap().to_path_buf();
    let (ok, stdout, err) = run(Command::new(repo().join("dist/build-deb"))
        .args(["--debug", "--output"])
        .arg(&out_dir)
        .env("CARGO_TARGET_DIR", &target));
    assert!(ok, "build-deb failed:\n{stdout}\n{err}");
    let debs: Vec<PathBuf> = std::fs::read_dir(&out_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "deb"))
        .collect();
    assert_eq!(debs.len(), 1, "{debs:?}");
    let deb = &debs[0];

    let (ok, info, err) = run(Command::new("dpkg-deb").arg("--info").arg(deb));
    assert!(ok, "{err}");
    for needle in ["Package: padis", "Section: net", "Depends:", "adduser", "conffiles"] {
        assert!(info.contains(needle), "missing {needle} in\n{info}");
    }
    let (ok, contents, err) = run(Command::new("dpkg-deb").arg("--contents").arg(deb));
    assert!(ok, "{err}");
    let entry = |path: &str| contents.lines().find(|l| l.ends_with(path)).map(str::to_string);
    let bin_line = entry("./usr/bin/padis").unwrap_or_else(|| panic!("no binary in\n{contents}"));
    let root_owned = |l: &str| l.split_whitespace().nth(1).is_some_and(|o| o == "root/root" || o == "0/0");
    assert!(bin_line.starts_with("-rwxr-xr-x") && root_owned(&bin_line), "{bin_line}");
    let conf_line = entry("./etc/padis/padis.toml").unwrap_or_else(|| panic!("no config in\n{contents}"));
    assert!(conf_line.starts_with("-rw-r-----") && root_owned(&conf_line), "{conf_line}");
    assert!(entry("./etc/padis/").is_some(), "no config directory in\n{contents}");
    let unit_path = ["./lib/systemd/system/padis.service", "./usr/lib/systemd/system/padis.service"]
        .into_iter()
        .find(|p| entry(p).is_some())
        .unwrap_or_else(|| panic!("no unit in\n{contents}"));

    // Unpacked into a scratch root: the files are the repository's, the binary runs, the config is valid.
    let root = dir.path().join("root");
    let (ok, _, err) = run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(&root));
    assert!(ok, "{err}");
    let unit = std::fs::read_to_string(root.join(unit_path)).unwrap();
    assert_eq!(unit, std::fs::read_to_string(repo().join("dist/systemd/padis.service")).unwrap());
    let packaged_bin = root.join("usr/bin/padis");
    assert_eq!(std::fs::metadata(&packaged_bin).unwrap().permissions().mode() & 0o777, 0o755);
    let (ok, version, err) = run(Command::new(&packaged_bin).arg("--version"));
    assert!(ok && version.starts_with("padis "), "{version}{err}");
    let (ok, out, err) =
        run(Command::new(&packaged_bin).args(["check", "--config"]).arg(root.join("etc/padis/padis.toml")));
    assert!(ok, "the packaged default config does not validate:\n{out}\n{err}");
    for doc in ["README.md", "configuration.md", "marathon-lb.md"] {
        assert!(root.join("usr/share/doc/padis").join(doc).is_file(), "{doc} not in the package");
    }
    for (packaged, source) in [
        ("usr/share/padis/grafana/padis.json", "dist/grafana/padis.json"),
        ("usr/share/padis/prometheus/padis-alerts.yml", "dist/prometheus/padis-alerts.yml"),
    ] {
        assert_eq!(std::fs::read(root.join(packaged)).unwrap(), std::fs::read(repo().join(source)).unwrap());
    }

    // Maintainer scripts: the padis user and the config's owner, the unit enabled by deb-systemd-helper.
    let control = dir.path().join("control");
    let (ok, _, err) = run(Command::new("dpkg-deb").arg("-e").arg(deb).arg(&control));
    assert!(ok, "{err}");
    let conffiles = std::fs::read_to_string(control.join("conffiles")).unwrap();
    assert!(conffiles.lines().any(|l| l == "/etc/padis/padis.toml"), "{conffiles}");
    let postinst = std::fs::read_to_string(control.join("postinst")).unwrap();
    for needle in ["adduser --system", "chown root:padis /etc/padis", "deb-systemd-helper", "padis.service", "SIGUSR2"]
    {
        assert!(postinst.contains(needle), "postinst lacks {needle}:\n{postinst}");
    }
    assert!(!postinst.contains("#DEBHELPER#"), "{postinst}");
    let (ok, _, err) = run(Command::new("sh").arg("-n").arg(control.join("postinst")));
    assert!(ok, "postinst is not valid sh: {err}");
}
