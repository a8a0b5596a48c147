//! L7 proxy following snapshots: listeners added and removed while an old connection keeps working, reload under
//! load (100 snapshots changing routes and backends: zero failed requests, zero resets), graceful shutdown.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use padis_tests::l7::{get, temp_dir, Backend, H1Conn, Proxy};

fn listener(name: &str, ip: &str) -> String {
    format!("[[listener]]\nname = \"{name}\"\nbind = \"{ip}:0\"\n")
}

fn group(name: &str, backends: &[&Backend]) -> String {
    let mut s = format!("[[group]]\nname = \"{name}\"\n");
    for b in backends {
        s.push_str(&format!("[[group.backend]]\naddr = \"{}\"\n", b.addr));
    }
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listeners_added_and_removed() {
    let dir = temp_dir();
    let b = Backend::start("b").await;
    let base = format!("[[route]]\nname = \"r\"\ngroup = \"g\"\n{}", group("g", &[&b]));
    let mut p =
        Proxy::start(&format!("{}{}{base}", listener("one", "127.0.0.1"), listener("two", "127.0.0.2")), dir.path())
            .await;
    let one = p.addr("one");
    let two = p.addr("two");
    let mut kept = H1Conn::connect(one).await;
    assert_eq!(kept.get("x", "/").await.unwrap().status, 200);
    let mut on_removed = H1Conn::connect(two).await;
    assert_eq!(on_removed.get("x", "/").await.unwrap().status, 200);
    let slow = {
        let mut c = H1Conn::connect(two).await;
        tokio::spawn(async move { c.get("x", "/slow/600").await.map(|a| a.status) })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;

    p.publish_settled(&format!("{}{}{base}", listener("one", "127.0.0.1"), listener("three", "127.0.0.3"))).await;
    let addrs = p.addrs();
    assert!(addrs.contains_key("three") && !addrs.contains_key("two"), "{addrs:?}");
    assert_eq!(p.addr("one"), one, "a kept listener keeps its socket");
    assert_eq!(get(p.addr("three"), "x", "/").await.status, 200, "the new listener serves");
    for _ in 0..3 {
        assert_eq!(kept.get("x", "/").await.unwrap().status, 200, "an old connection keeps working");
    }
    assert_eq!(slow.await.unwrap().unwrap(), 200, "an in-flight request on the removed listener finishes");
    assert!(tokio::net::TcpStream::connect(two).await.is_err(), "the removed listener no longer accepts");
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_under_load_loses_nothing() {
    let dir = temp_dir();
    let bs = [Backend::start("a").await, Backend::start("b").await, Backend::start("c").await];
    let config = |i: usize| {
        // Routes and backends change with every generation; `/load` always has a route and a backend.
        let backends: Vec<&Backend> = match i % 3 {
            0 => vec![&bs[0], &bs[1]],
            1 => vec![&bs[1], &bs[2]],
            _ => vec![&bs[2], &bs[0]],
        };
        format!(
            "{}[[route]]\nname = \"load\"\npath = \"/load\"\ngroup = \"g{m}\"\n[[route]]\nname = \"extra{i}\"\npath = \"/extra{i}\"\ngroup = \"g{m}\"\n{}{}",
            listener("web", "127.0.0.1"),
            group(&format!("g{}", i % 2), &backends),
            group("spare", &[&bs[i % 3]]),
            m = i % 2,
        )
    };
    let mut p = Proxy::start(&config(0), dir.path()).await;
    let web = p.addr("web");
    let done = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for t in 0..4 {
        let (done, ok) = (done.clone(), ok.clone());
        tasks.push(tokio::spawn(async move {
            let mut failures = Vec::new();
            let mut c = H1Conn::connect(web).await;
            let start = Instant::now();
            for i in 0..5000 {
                if done.load(Ordering::Relaxed) || start.elapsed() > Duration::from_secs(30) {
                    break;
                }
                if i % 50 == 0 && t % 2 == 1 {
                    c = H1Conn::connect(web).await; // some new connections too
                }
                match c.get("x", "/load").await {
                    Ok(a) if a.status == 200 => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(a) => failures.push(format!("status {}: {}", a.status, a.body)),
                    Err(e) => {
                        failures.push(format!("error {e}"));
                        c = H1Conn::connect(web).await;
                    }
                }
            }
            failures
        }));
    }
    for i in 1..=100 {
        p.publish(&config(i));
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    done.store(true, Ordering::Relaxed);
    let mut failures = Vec::new();
    for t in tasks {
        failures.extend(t.await.unwrap());
    }
    assert!(failures.is_empty(), "{} failures, first: {:?}", failures.len(), failures.first());
    assert!(ok.load(Ordering::Relaxed) > 200, "load actually ran: {}", ok.load(Ordering::Relaxed));
    assert!(bs.iter().all(|b| b.hits() > 0));
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_finishes_in_flight() {
    let dir = temp_dir();
    let b = Backend::start("b").await;
    let cfg = format!(
        "[limits]\nshutdown_grace = \"5s\"\n{}[[route]]\nname = \"r\"\ngroup = \"g\"\n{}",
        listener("web", "127.0.0.1"),
        group("g", &[&b])
    );
    let mut p = Proxy::start(&cfg, dir.path()).await;
    let web = p.addr("web");
    let mut h2 = padis_tests::l7::H2Conn::connect(web).await;
    let h1 = tokio::spawn(async move { get(web, "x", "/slow/800").await.status });
    let h2req = tokio::spawn(async move { h2.get("x", "/slow/800").await.map(|a| a.status) });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let handle = p.take_handle().unwrap();
    p.shutdown_token().cancel();
    let start = Instant::now();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(tokio::net::TcpStream::connect(web).await.is_err(), "no new connections after shutdown");
    assert_eq!(h1.await.unwrap(), 200);
    assert_eq!(h2req.await.unwrap().unwrap(), 200);
    tokio::time::timeout(Duration::from_secs(5), handle.wait()).await.expect("plane stops after in-flight requests");
    assert!(start.elapsed() < Duration::from_secs(4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_waits_for_tunnels_until_grace() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = temp_dir();
    let b = Backend::start("ws").await;
    let cfg = format!(
        "[limits]\nshutdown_grace = \"700ms\"\n{}[[route]]\nname = \"r\"\ngroup = \"g\"\n{}",
        listener("web", "127.0.0.1"),
        group("g", &[&b])
    );
    let mut p = Proxy::start(&cfg, dir.path()).await;
    let web = p.addr("web");
    let mut s = tokio::net::TcpStream::connect(web).await.unwrap();
    s.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\n").await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut byte).await.unwrap(), 1);
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"));
    let handle = p.take_handle().unwrap();
    let start = Instant::now();
    p.shutdown_token().cancel();
    // The tunnel still works during the grace period.
    s.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    s.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping");
    tokio::time::timeout(Duration::from_secs(5), handle.wait()).await.expect("plane stops at the end of the grace");
    assert!(start.elapsed() >= Duration::from_millis(600), "waited for the tunnel: {:?}", start.elapsed());
    let mut rest = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut rest)).await;
    assert!(matches!(n, Ok(Ok(0)) | Ok(Err(_))), "the tunnel is closed after the grace");
}
