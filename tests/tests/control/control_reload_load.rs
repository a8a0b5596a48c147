//! The daemon under load: 100 config reloads (routes and backends changing) through the real `padis` binary
//! while keep-alive clients send requests: zero failed requests, zero reset connections.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use padis_tests::l7::{Backend, H1Conn};
use padis_tests::process::{free_port, Padis};

fn config(admin: SocketAddr, sock: &Path, web: u16, backends: &[&Backend], round: usize) -> String {
    let mut s = format!(
        "[admin]\nlisten = \"{admin}\"\nsocket = \"{}\"\n[log]\nlevel = \"info\"\naccess_log = true\n\n\
         [[listener]]\nname = \"web\"\nbind = \"127.0.0.1:{web}\"\n\n[[group]]\nname = \"app\"\n",
        sock.display()
    );
    for b in backends {
        s.push_str(&format!("[[group.backend]]\naddr = \"{}\"\n", b.addr));
    }
    s.push_str("\n[[route]]\nname = \"main\"\ngroup = \"app\"\n");
    // Routes that come and go with the rounds.
    for r in 0..(round % 5) {
        s.push_str(&format!("\n[[route]]\nname = \"extra{r}\"\npath = \"/extra/{r}\"\ngroup = \"app\"\n"));
    }
    s
}

/// `POST /v1/reload` over the admin socket: (status, body).
fn reload(sock: &Path) -> std::io::Result<(u16, String)> {
    let mut s = UnixStream::connect(sock)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(b"POST /v1/reload HTTP/1.1\r\nHost: padis\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let code = out.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    Ok((code, out.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_reloads_under_load_fail_no_request() {
    let pool: Vec<Backend> = futures_join(6).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("padis.toml");
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let web = free_port();
    // Reloads go through the admin socket: a changing endpoint needs it (or the token).
    let sock = dir.path().join("admin.sock");
    std::fs::write(&path, config(admin, &sock, web, &[&pool[0], &pool[1], &pool[2]], 0)).unwrap();
    let mut padis = Padis::start(&path, admin);
    padis.wait_ready();
    let proxy: SocketAddr = format!("127.0.0.1:{web}").parse().unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut clients = Vec::new();
    for c in 0..4 {
        let (stop, ok, failures) = (stop.clone(), ok.clone(), failures.clone());
        clients.push(tokio::spawn(async move {
            let mut conn = H1Conn::connect(proxy).await;
            let deadline = Instant::now() + Duration::from_secs(60);
            let mut n = 0u32;
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline && n < 200_000 {
                n += 1;
                match conn.get("load.test", &format!("/c{c}/{n}")).await {
                    Ok(a) if a.status == 200 => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(a) => failures.lock().unwrap().push(format!("client {c}: status {}", a.status)),
                    Err(e) => {
                        failures.lock().unwrap().push(format!("client {c}: {e}"));
                        // Reconnect only once the proxy accepts again (a refused connect is a failure too).
                        while tokio::net::TcpStream::connect(proxy).await.is_err() {
                            failures.lock().unwrap().push(format!("client {c}: connect refused"));
                            if stop.load(Ordering::Relaxed) {
                                return;
                            }
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        conn = H1Conn::connect(proxy).await;
                    }
                }
            }
        }));
    }

    // 100 reloads, each changing the backend set (a window of 3 of 6 backends) and the extra routes.
    for round in 1..=100 {
        let set: Vec<&Backend> = (0..3).map(|i| &pool[(round + i) % pool.len()]).collect();
        std::fs::write(&path, config(admin, &sock, web, &set, round)).unwrap();
        let s = sock.clone();
        let (code, body) = tokio::task::spawn_blocking(move || reload(&s)).await.unwrap().unwrap();
        assert_eq!(code, 200, "reload {round}: {body}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    let state = padis.state();
    let failures = failures.lock().unwrap();
    if !failures.is_empty() {
        let log = padis.log_text();
        let interesting: Vec<&str> = log.lines().filter(|l| !l.contains("status=200")).collect();
        std::fs::write("/tmp/reload-load.log", &log).ok();
        panic!(
            "{} failed requests, first: {:?}\n{}",
            failures.len(),
            &failures[..failures.len().min(5)],
            interesting[interesting.len().saturating_sub(40)..].join("\n")
        );
    }
    assert!(ok.load(Ordering::Relaxed) > 1000, "too little load: {}", ok.load(Ordering::Relaxed));
    assert!(state["generation"].as_u64().unwrap() >= 100, "{}", state["generation"]);
    // Every backend of the pool served some of the load as the window moved.
    for b in &pool {
        assert!(b.hits() > 0, "{} never served", b.name);
    }
}

use std::sync::Mutex;

async fn futures_join(n: usize) -> Vec<Backend> {
    let mut v = Vec::new();
    for i in 0..n {
        v.push(Backend::start(&format!("b{i}")).await);
    }
    v
}
