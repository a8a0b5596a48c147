//! The admin API's access rules and limits, through raw sockets against a spawned daemon: changing endpoints
//! need the token (also on loopback) or the Unix socket (mode 0600); reading endpoints stay open on loopback
//! without a token; a configured token guards everything but `/healthz`; a client that sends no request head
//! is cut off after `header_read_timeout`; connections beyond `max_connections` are closed at once.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use padis_tests::process::{free_port, http, padis_bin, Padis};

fn config(admin: SocketAddr, admin_extra: &str) -> String {
    format!(
        "[admin]\nlisten = \"{admin}\"\n{admin_extra}\n[log]\nlevel = \"info\"\n\n[[listener]]\nname = \"web\"\n\
         bind = \"127.0.0.1:{}\"\n\n[[group]]\nname = \"app\"\n[[group.backend]]\naddr = \"127.0.0.1:1\"\n\n\
         [[route]]\nname = \"all\"\ngroup = \"app\"\n",
        free_port()
    )
}

/// One HTTP/1.1 request over the Unix socket; (status, body).
fn unix_http(path: &Path, method: &str, target: &str) -> (u16, String) {
    let mut s = UnixStream::connect(path).expect("the admin socket accepts");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "{method} {target} HTTP/1.1\r\nHost: padis\r\nConnection: close\r\nContent-Length: 0\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let code = out.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    (code, out.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default())
}

fn padis(args: &[&str]) -> std::process::Output {
    Command::new(padis_bin()).args(args).output().expect("padis runs")
}

#[test]
fn changing_endpoints_need_the_token_or_the_socket() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("padis.toml");
    let sock = dir.path().join("admin.sock");
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    std::fs::write(&path, config(admin, &format!("socket = \"{}\"", sock.display()))).unwrap();
    let mut p = Padis::start(&path, admin);
    p.wait_ready();

    // The socket exists with mode 0600 only.
    let mode = std::fs::metadata(&sock).expect("socket created").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "socket mode {mode:o}");

    // No token configured: reading over TCP is open on loopback, changing is refused (whatever is sent).
    assert_eq!(http(admin, "GET", "/v1/state", None, &[]).unwrap().0, 200);
    assert_eq!(http(admin, "GET", "/metrics", None, &[]).unwrap().0, 200);
    let (code, body) = http(admin, "POST", "/v1/reload", None, &[]).unwrap();
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("Unix socket"), "{body}");
    assert_eq!(http(admin, "POST", "/v1/drain", None, &[]).unwrap().0, 403);
    assert_eq!(http(admin, "POST", "/v1/reload", None, &[("Authorization", "Bearer guess")]).unwrap().0, 403);
    assert_eq!(http(admin, "DELETE", "/v1/state", None, &[]).unwrap().0, 403, "any writing method is refused");
    let gen = p.state()["generation"].as_u64().unwrap();

    // Over the socket everything is served.
    let (code, body) = unix_http(&sock, "POST", "/v1/reload");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"ok\": true"), "{body}");
    assert_eq!(unix_http(&sock, "GET", "/v1/state").0, 200);
    assert_eq!(unix_http(&sock, "POST", "/v1/drain").0, 409, "reaches the handler: nothing announces routes");

    // The CLI: through the socket it reloads; over TCP without a token it is refused.
    let out = padis(&["reload", "--socket", sock.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = padis(&["reload", "--admin", &admin.to_string()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("403"), "{}", String::from_utf8_lossy(&out.stderr));
    let out = padis(&["status", "--socket", sock.to_str().unwrap()]);
    assert!(out.status.success() && String::from_utf8_lossy(&out.stdout).contains("ROUTES"));
    assert_eq!(p.state()["generation"].as_u64().unwrap(), gen, "reloads of an unchanged file publish nothing");

    // Stopping removes the socket.
    p.signal(libc::SIGTERM);
    assert!(p.wait_exit(Duration::from_secs(15)).is_some_and(|s| s.success()), "{}", p.log_text());
    assert!(!sock.exists(), "socket left behind");
}

#[test]
fn a_configured_token_guards_every_endpoint_but_healthz() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("padis.toml");
    let token_file = dir.path().join("admin.token");
    std::fs::write(&token_file, "t0k-3n-value\n").unwrap();
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    std::fs::write(&path, config(admin, &format!("token_file = \"{}\"", token_file.display()))).unwrap();
    let mut p = Padis::start(&path, admin);
    p.wait_ready();

    let good = [("Authorization", "Bearer t0k-3n-value")];
    assert_eq!(http(admin, "GET", "/healthz", None, &[]).unwrap().0, 200);
    for (method, target) in [("GET", "/v1/state"), ("GET", "/metrics"), ("POST", "/v1/reload"), ("POST", "/v1/drain")] {
        assert_eq!(http(admin, method, target, None, &[]).unwrap().0, 401, "{method} {target} without token");
        for wrong in ["Bearer t0k-3n-valuf", "Bearer t0k-3n-value2", "Bearer ", "Basic t0k-3n-value", "t0k-3n-value"] {
            let code = http(admin, method, target, None, &[("Authorization", wrong)]).unwrap().0;
            assert_eq!(code, 401, "{method} {target} with {wrong:?}");
        }
    }
    assert_eq!(http(admin, "GET", "/v1/state", None, &good).unwrap().0, 200);
    let (code, body) = http(admin, "POST", "/v1/reload", None, &good).unwrap();
    assert_eq!(code, 200, "{body}");

    // The CLI reads the token from a file.
    let out = padis(&["reload", "--admin", &admin.to_string(), "--token-file", token_file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = padis(&["status", "--admin", &admin.to_string()]);
    assert_eq!(out.status.code(), Some(1), "no token: refused");
}

/// Reads until EOF or error; returns whether the peer closed within `within`.
fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    s.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 512];
    let start = Instant::now();
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {} // an error answer (e.g. 408) before the close
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
        if start.elapsed() > within {
            return false;
        }
    }
}

#[test]
fn slow_clients_are_cut_off_and_connections_are_limited() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("padis.toml");
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    std::fs::write(&path, config(admin, "header_read_timeout = \"700ms\"\nmax_connections = 4")).unwrap();
    let mut p = Padis::start(&path, admin);
    p.wait_ready();
    // Let wait_ready's connections go.
    std::thread::sleep(Duration::from_millis(200));

    // Four clients hold connections: two send nothing, two half a request head.
    let started = Instant::now();
    let mut held: Vec<TcpStream> = (0..4).map(|_| TcpStream::connect(admin).unwrap()).collect();
    for s in &mut held[2..] {
        s.write_all(b"GET /v1/state HTTP/1.1\r\nHost: x\r\n").unwrap();
    }
    std::thread::sleep(Duration::from_millis(150));
    // A fifth is closed at once, without an answer.
    let mut fifth = TcpStream::connect(admin).unwrap();
    let _ = fifth.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(closed_within(&mut fifth, Duration::from_millis(500)), "a connection over the limit is served");

    // The held ones are closed once the head timeout passes (not before, not much after).
    for (i, s) in held.iter_mut().enumerate() {
        assert!(closed_within(s, Duration::from_secs(3)), "held connection {i} never closed");
    }
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(600) && took < Duration::from_secs(3), "closed after {took:?}");

    // Then the API serves again, and the refusal is counted.
    let (code, metrics) = http(admin, "GET", "/metrics", None, &[]).unwrap();
    assert_eq!(code, 200);
    let refused: f64 = metrics
        .lines()
        .find(|l| l.starts_with("padis_admin_connections_refused_total{transport=\"tcp\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no refusal counter in\n{metrics}"));
    assert!(refused >= 1.0, "{refused}");
}
