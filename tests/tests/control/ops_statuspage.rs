//! The live status page in a real headless browser (Debian's chromium) against a running daemon with real
//! traffic: its content read through the DevTools protocol after the page has refreshed itself for a few real
//! seconds (rates need samples in real time; `--virtual-time-budget` would run the page's clock faster than the
//! traffic), a screenshot that is a real rendering (PNG of the expected size, not blank), and the admin token
//! rules (Basic with the token as the password, which a browser can send; nothing without it).

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use padis_tests::l7::Backend;
use padis_tests::process::{free_port, http, Padis};

/// `chromium --headless` with the flags a root user without a display needs; `args` after them.
fn chromium(args: &[&str]) -> std::process::Output {
    let profile = tempfile::tempdir().unwrap();
    Command::new("chromium")
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run"])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .output()
        .expect("chromium runs (tests/setup installs it)")
}

/// A headless chromium showing one page, driven over the DevTools protocol; killed on drop.
struct Browser {
    child: std::process::Child,
    port: u16,
    _profile: tempfile::TempDir,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Browser {
    /// Opens `url` (the DevTools port is chromium's choice, read from its profile directory).
    fn open(url: &str) -> Browser {
        let profile = tempfile::tempdir().unwrap();
        let child = Command::new("chromium")
            .args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run"])
            .args(["--remote-debugging-port=0", "--window-size=1280,1400"])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg(url)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("chromium runs (tests/setup installs it)");
        let file = profile.path().join("DevToolsActivePort");
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let port = loop {
            if let Some(p) = std::fs::read_to_string(&file).ok().and_then(|t| t.lines().next()?.parse().ok()) {
                break p;
            }
            assert!(std::time::Instant::now() < deadline, "chromium did not open its DevTools port");
            std::thread::sleep(Duration::from_millis(100));
        };
        Browser { child, port, _profile: profile }
    }

    /// Evaluates `expression` in the page; its value as JSON.
    async fn eval(&self, expression: &str) -> serde_json::Value {
        let port = self.port;
        let body = tokio::task::spawn_blocking(move || devtools_get(port, "/json/list")).await.unwrap();
        let targets: serde_json::Value = serde_json::from_str(&body).unwrap();
        let ws = targets
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["type"] == "page")
            .and_then(|t| t["webSocketDebuggerUrl"].as_str())
            .unwrap_or_else(|| panic!("no page target: {body}"))
            .to_string();
        let (mut socket, _) = tokio_tungstenite::connect_async(ws.as_str()).await.expect("DevTools websocket");
        let call = serde_json::json!({"id": 1, "method": "Runtime.evaluate",
            "params": {"expression": expression, "returnByValue": true}});
        socket.send(tokio_tungstenite::tungstenite::Message::Text(call.to_string().into())).await.unwrap();
        while let Some(msg) = socket.next().await {
            let Ok(tokio_tungstenite::tungstenite::Message::Text(t)) = msg else { continue };
            let v: serde_json::Value = serde_json::from_str(&t).unwrap();
            if v["id"] == 1 {
                return v["result"]["result"]["value"].clone();
            }
        }
        panic!("DevTools closed without an answer");
    }
}

/// GET `path` of chromium's DevTools HTTP endpoint (which keeps the connection open: read by Content-Length).
fn devtools_get(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n").unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let n = s.read(&mut chunk).unwrap();
        assert!(n > 0, "DevTools closed: {}", String::from_utf8_lossy(&buf));
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len = head
                .lines()
                .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_string()))
                .and_then(|v| v.parse::<usize>().ok())
                .unwrap_or_else(|| panic!("no length: {head}"));
            if body.len() >= len {
                assert!(head.starts_with("HTTP/1.1 200"), "{head}");
                return body[..len].to_string();
            }
        }
    }
}

/// A DNS query for `name` SOA (ID 0x5ad1, RD off), as bytes.
fn dns_query(name: &str) -> Vec<u8> {
    let mut q = vec![0x5a, 0xd1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in name.trim_end_matches('.').split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 6, 0, 1]);
    q
}

/// The visible text of a DOM dump, whitespace collapsed.
fn text_of(dom: &str) -> String {
    let mut out = String::new();
    let mut rest = dom;
    // Drop <style> and <script> bodies, then tags.
    while let Some(i) = rest.find('<') {
        out.push_str(&rest[..i]);
        out.push(' ');
        let tail = &rest[i..];
        let skip_to = ["<style", "<script"]
            .iter()
            .find(|t| tail.starts_with(**t))
            .map(|t| format!("</{}>", &t[1..]))
            .and_then(|end| tail.find(&end).map(|j| j + end.len()))
            .or_else(|| tail.find('>').map(|j| j + 1))
            .unwrap_or(tail.len());
        rest = &tail[skip_to..];
    }
    out.push_str(rest);
    let out = out.replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">").replace("&nbsp;", " ");
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Width, height and the share of pixel rows that differ from the first row, of an 8-bit RGB(A) PNG: decoded by
/// python3's zlib (no image crate in the workspace).
fn png_facts(path: &Path) -> (u32, u32, f64) {
    let script = r#"
import sys, zlib, struct
d = open(sys.argv[1], 'rb').read()
assert d[:8] == b'\x89PNG\r\n\x1a\n', 'not a PNG'
i, idat = 8, b''
while i < len(d):
    n, t = struct.unpack('>I4s', d[i:i+8]); c = d[i+8:i+8+n]; i += 12 + n
    if t == b'IHDR': w, h, depth, ctype = struct.unpack('>IIBB', c[:10])
    if t == b'IDAT': idat += c
assert depth == 8 and ctype in (2, 6), (depth, ctype)
bpp = 3 if ctype == 2 else 4
raw = zlib.decompress(idat); stride = w * bpp
prev = bytearray(stride); rows = []
for y in range(h):
    f = raw[y*(stride+1)]; line = bytearray(raw[y*(stride+1)+1:(y+1)*(stride+1)])
    for x in range(stride):
        a = line[x-bpp] if x >= bpp else 0; b = prev[x]; c = prev[x-bpp] if x >= bpp else 0
        if f == 1: line[x] = (line[x] + a) & 255
        elif f == 2: line[x] = (line[x] + b) & 255
        elif f == 3: line[x] = (line[x] + (a + b) // 2) & 255
        elif f == 4:
            p = a + b - c; pa, pb, pc = abs(p-a), abs(p-b), abs(p-c)
            line[x] = (line[x] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
    rows.append(bytes(line)); prev = line
print(w, h, sum(1 for r in rows if r != rows[0]) / h)
"#;
    let out = Command::new("python3").arg("-c").arg(script).arg(path).output().expect("python3 runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    let v: Vec<&str> = text.split_whitespace().collect();
    (v[0].parse().unwrap(), v[1].parse().unwrap(), v[2].parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_in_a_headless_browser() {
    let (b1, b2) = (Backend::start("b1").await, Backend::start("b2").await);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("padis.toml");
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let web: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let dns_port = free_port();
    std::fs::write(
        &path,
        format!(
            "[admin]\nlisten = \"{admin}\"\n\n[[listener]]\nname = \"web\"\nbind = \"{web}\"\n\n\
             [[group]]\nname = \"shop\"\n[group.health]\npath = \"/\"\ninterval = \"200ms\"\ntimeout = \"150ms\"\n\
             rise = 1\nfall = 1\n[[group.backend]]\naddr = \"{}\"\n[[group.backend]]\naddr = \"{}\"\nweight = 3\n\n\
             [[route]]\nname = \"shop-route\"\nhost = \"shop.example\"\ngroup = \"shop\"\n\n\
             [dns]\nlisten = [\"127.0.0.1:{dns_port}\"]\nstate_dir = \"{}\"\n\n\
             [[dns.zone]]\nname = \"ops.test\"\ngenerated = true\n\
             ns = [{{ name = \"ns1.ops.test\", addrs = [\"127.0.0.1\"] }}]\n",
            b1.addr,
            b2.addr,
            dir.path().join("dns").display()
        ),
    )
    .unwrap();
    let mut p = Padis::start(&path, admin);
    p.wait_ready();
    p.wait_state(Duration::from_secs(10), |s| {
        s["planes"]["health"].as_array().is_some_and(|h| h.len() == 2 && h.iter().all(|x| x["usable"] == true))
    });

    // Traffic while the page samples: HTTP (one request in five answered 503) and DNS, for ~8 s.
    let dns: SocketAddr = format!("127.0.0.1:{dns_port}").parse().unwrap();
    let traffic = tokio::task::spawn_blocking(move || {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let end = std::time::Instant::now() + Duration::from_secs(8);
        let mut n = 0;
        while std::time::Instant::now() < end && n < 4000 {
            let target = if n % 5 == 0 { "/status/503" } else { "/" };
            let _ = http(web, "GET", target, None, &[("Host", "shop.example")]);
            let _ = udp.send_to(&dns_query("ops.test"), dns);
            n += 1;
            std::thread::sleep(Duration::from_millis(10));
        }
        n
    });

    let url = format!("http://{admin}/status");
    let browser = tokio::task::spawn_blocking({
        let url = url.clone();
        move || Browser::open(&url)
    })
    .await
    .unwrap();
    // The page samples at once and every 3 s: after 7 s it has rates over a 3 s window of live traffic.
    tokio::time::sleep(Duration::from_secs(7)).await;
    let text = browser.eval("document.body.innerText").await;
    let text = text.as_str().unwrap_or_default().split_whitespace().collect::<Vec<_>>().join(" ");
    drop(browser);
    let sent = traffic.await.unwrap();

    // Every section, with the data of this daemon.
    for needle in [
        "generation 1",
        "last reload ok",
        "(every 3 s)",
        "web",
        &web.to_string(),
        "shop-route shop.example",
        &format!("shop round_robin {} 1 up", b1.addr),
        &format!("shop round_robin {} 3 up", b2.addr),
        "L4 VIPs (XDP) disabled (no [l4] interfaces)",
        "ops.test. ok",
        "BGP / BFD sessions disabled (no [bgp] or [ospf])",
        "config ok",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in the page:\n{text}\n(sent {sent} requests)");
    }
    assert!(!text.contains("Cannot read the admin API"), "{text}");
    // Rates from successive samples: the route's request rate is a number, its 5xx ratio about 20%.
    let route = text.split("shop-route shop.example / shop ").nth(1).unwrap_or_else(|| panic!("{text}"));
    let mut cells = route.split_whitespace();
    let (rate, ratio) = (cells.next().unwrap(), cells.next().unwrap());
    let rate: f64 =
        rate.strip_suffix("/s").and_then(|r| r.parse().ok()).unwrap_or_else(|| panic!("rate {rate}: {text}"));
    let ratio: f64 =
        ratio.strip_suffix('%').and_then(|r| r.parse().ok()).unwrap_or_else(|| panic!("ratio {ratio}: {text}"));
    assert!(rate > 1.0, "request rate {rate}: {text}\n(sent {sent})");
    assert!((5.0..=40.0).contains(&ratio), "5xx ratio {ratio}%: {text}\n(sent {sent})");
    // The zone's serial as the DNS plane reports it, and its query rate.
    let serial = p.state()["planes"]["dns"]["zones"][0]["serial"].to_string();
    let zone =
        text.split(&format!("ops.test. ok {serial} ")).nth(1).unwrap_or_else(|| panic!("serial {serial}: {text}"));
    let queries = zone.split_whitespace().nth(1).unwrap_or_default();
    let queries: f64 = queries.strip_suffix("/s").and_then(|r| r.parse().ok()).unwrap_or_else(|| panic!("{text}"));
    assert!(queries > 1.0, "DNS query rate {queries}: {text}");

    // A screenshot (virtual time is enough for a rendering).
    let shot = dir.path().join("status.png");
    let png = tokio::task::spawn_blocking({
        let (url, shot) = (url.clone(), shot.clone());
        move || {
            chromium(&[
                "--virtual-time-budget=5000",
                "--window-size=1280,1400",
                "--hide-scrollbars",
                &format!("--screenshot={}", shot.display()),
                &url,
            ])
        }
    })
    .await
    .unwrap();

    // The screenshot: a PNG of the window size with content all over it (a blank page has every row alike).
    assert!(png.status.success(), "{}", String::from_utf8_lossy(&png.stderr));
    let size = std::fs::metadata(&shot).expect("screenshot written").len();
    assert!(size > 20_000, "screenshot of {size} bytes");
    let (w, h, varied) = png_facts(&shot);
    assert_eq!((w, h), (1280, 1400));
    assert!(varied > 0.5, "only {:.0}% of the rows differ from the first: blank?", varied * 100.0);
}

#[test]
fn status_page_follows_the_admin_token_rules() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("padis.toml");
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    std::fs::write(&path, format!("[admin]\nlisten = \"{admin}\"\ntoken = \"page-token\"\n")).unwrap();
    let mut p = Padis::start(&path, admin);
    p.wait_ready();

    // Without the token: 401, offering Basic so that a browser asks for it.
    let raw = |auth: Option<&str>| {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(admin).unwrap();
        let auth = auth.map(|a| format!("Authorization: {a}\r\n")).unwrap_or_default();
        write!(s, "GET /status HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    };
    let refused = raw(None);
    assert!(refused.starts_with("HTTP/1.1 401"), "{refused}");
    assert!(refused.to_ascii_lowercase().contains("www-authenticate: basic realm=\"padis admin\""), "{refused}");
    assert!(!refused.contains("<html"), "{refused}");
    // base64("ops:page-token") and base64("ops:wrong").
    assert!(raw(Some("Basic b3BzOnBhZ2UtdG9rZW4=")).starts_with("HTTP/1.1 200"));
    assert!(raw(Some("Basic b3BzOndyb25n")).starts_with("HTTP/1.1 401"));
    assert!(raw(Some("Bearer page-token")).starts_with("HTTP/1.1 200"));
    let page = raw(Some("Bearer page-token"));
    assert!(page.contains("content-security-policy: default-src 'none'"), "{page}");

    // A browser given the token as the password (URL credentials) loads the page and its data.
    let url = format!("http://ops:page-token@{admin}/status");
    let out = chromium(&["--virtual-time-budget=4000", "--dump-dom", &url]);
    let text = text_of(&String::from_utf8_lossy(&out.stdout));
    assert!(text.contains("generation 1") && text.contains("config ok"), "{text}");
    assert!(!text.contains("Cannot read the admin API"), "{text}");
    // With a wrong password it gets nothing.
    let out = chromium(&["--virtual-time-budget=2000", "--dump-dom", &format!("http://ops:nope@{admin}/status")]);
    let text = text_of(&String::from_utf8_lossy(&out.stdout));
    assert!(!text.contains("generation"), "{text}");
}

#[test]
fn a_listener_that_cannot_bind_shows_on_the_page_and_in_status() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("padis.toml");
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let base = format!(
        "[admin]\nlisten = \"{admin}\"\n\n[[listener]]\nname = \"web\"\nbind = \"127.0.0.1:{}\"\n\n\
         [[group]]\nname = \"g\"\n[[group.backend]]\naddr = \"127.0.0.1:1\"\n\n\
         [[route]]\nname = \"r\"\ngroup = \"g\"\n",
        free_port()
    );
    std::fs::write(&path, &base).unwrap();
    let mut p = Padis::start(&path, admin);
    p.wait_ready();
    // A second listener on a port another socket holds: the reload applies, the listener is reported.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    std::fs::write(&path, format!("{base}\n[[listener]]\nname = \"web2\"\nbind = \"127.0.0.1:{port}\"\n")).unwrap();
    p.signal(libc::SIGHUP);
    p.wait_state(Duration::from_secs(10), |s| {
        s["planes"]["l7"]["bind_failures"].as_object().is_some_and(|f| f.contains_key("web2"))
    });

    let out = Command::new(padis_tests::process::padis_bin())
        .args(["status", "--admin", &admin.to_string()])
        .output()
        .unwrap();
    let status = String::from_utf8_lossy(&out.stdout);
    assert!(
        status.contains("LISTENERS NOT BOUND (retried with each new state)\n  LISTENER  ERROR\n  web2"),
        "{status}"
    );

    let out = chromium(&["--virtual-time-budget=3000", "--dump-dom", &format!("http://{admin}/status")]);
    let text = text_of(&String::from_utf8_lossy(&out.stdout));
    assert!(text.contains("Listener web2 is not bound: "), "{text}");
    assert!(text.contains("Address already in use"), "{text}");
    drop(taken);
}
