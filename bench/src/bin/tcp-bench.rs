//! TCP benchmark peers for `bench/suites/tcp`: a sink backend, a one-byte-answer backend, a bulk sender and a
//! connections-per-second client (blocking std sockets; the backends serve from a fixed set of threads, each
//! accepting in turn, so that no thread is started per connection: the peers' cost stays small and the same for
//! every proxy measured).
//!
//! - `tcp-bench sink ADDR`: accepts; reads and discards until end of stream (bulk backend).
//! - `tcp-bench hello ADDR`: accepts; writes one byte and closes (connections-per-second backend).
//! - `tcp-bench bulk ADDR SECS STREAMS`: sends 1 MiB writes on STREAMS connections for SECS seconds; prints Gbit/s.
//! - `tcp-bench cps ADDR SECS CLIENTS`: CLIENTS threads connect, read the byte and close, for SECS seconds; prints
//!   completed connections per second and the failures.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Threads of a backend: each accepts one connection and serves it to its end, then accepts the next (more than
/// the clients or streams of any run, so that a connection never waits for a thread).
const SERVER_THREADS: usize = 128;

fn serve(addr: SocketAddr, handle: fn(TcpStream)) -> std::io::Result<()> {
    let l = TcpListener::bind(addr)?;
    let threads: Vec<_> = (0..SERVER_THREADS)
        .map(|_| {
            let l = l.try_clone()?;
            Ok(std::thread::spawn(move || loop {
                match l.accept() {
                    Ok((s, _)) => handle(s),
                    Err(e) => {
                        eprintln!("tcp-bench: accept: {e}");
                        std::thread::sleep(Duration::from_millis(10));
                    }
                }
            }))
        })
        .collect::<std::io::Result<_>>()?;
    for t in threads {
        let _ = t.join();
    }
    Ok(())
}

fn sink(mut s: TcpStream) {
    let mut buf = vec![0u8; 1 << 20];
    while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
}

fn hello(mut s: TcpStream) {
    let _ = s.write_all(b"h");
    let _ = s.shutdown(Shutdown::Write);
    let mut b = [0u8; 16];
    let _ = s.read(&mut b); // the client's close: its TIME_WAIT, not ours
}

/// SO_LINGER 0: close sends a reset (no TIME_WAIT on the client over a long run).
fn reset_on_close(c: &TcpStream) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let l = libc::linger { l_onoff: 1, l_linger: 0 };
    let len = std::mem::size_of::<libc::linger>() as libc::socklen_t;
    // SAFETY: an open socket; `l` is a valid linger struct of `len` bytes.
    let r = unsafe {
        libc::setsockopt(c.as_raw_fd(), libc::SOL_SOCKET, libc::SO_LINGER, (&l as *const libc::linger).cast(), len)
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

type Work = dyn Fn(&AtomicBool, &AtomicU64, &AtomicU64) + Send + Sync;

fn run_for(
    secs: u64,
    threads: usize,
    work: impl Fn(&AtomicBool, &AtomicU64, &AtomicU64) + Send + Sync + 'static,
) -> (f64, u64, u64) {
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let work: Arc<Work> = Arc::new(work);
    let start = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let (stop, done, failed, work) = (stop.clone(), done.clone(), failed.clone(), work.clone());
            std::thread::spawn(move || work(&stop, &done, &failed))
        })
        .collect();
    std::thread::sleep(Duration::from_secs(secs));
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        let _ = h.join();
    }
    (start.elapsed().as_secs_f64(), done.load(Ordering::Relaxed), failed.load(Ordering::Relaxed))
}

fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let usage = || std::io::Error::other("usage: tcp-bench sink|hello ADDR | bulk|cps ADDR SECS N");
    let addr: SocketAddr = args.get(2).and_then(|a| a.parse().ok()).ok_or_else(usage)?;
    let num = |i: usize| args.get(i).and_then(|a| a.parse::<u64>().ok()).ok_or_else(usage);
    match args[1].as_str() {
        "sink" => serve(addr, sink),
        "hello" => serve(addr, hello),
        "bulk" => {
            let (secs, streams) = (num(3)?, num(4)? as usize);
            let (elapsed, bytes, failed) = run_for(secs, streams, move |stop, done, failed| {
                let Ok(mut c) = TcpStream::connect(addr) else {
                    failed.fetch_add(1, Ordering::Relaxed);
                    return;
                };
                let buf = vec![7u8; 1 << 20];
                while !stop.load(Ordering::Relaxed) {
                    if c.write_all(&buf).is_err() {
                        failed.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                    done.fetch_add(buf.len() as u64, Ordering::Relaxed);
                }
            });
            println!("{:.3} {failed}", bytes as f64 * 8.0 / elapsed / 1e9);
            Ok(())
        }
        "cps" => {
            let (secs, clients) = (num(3)?, num(4)? as usize);
            let (elapsed, conns, failed) = run_for(secs, clients, move |stop, done, failed| {
                while !stop.load(Ordering::Relaxed) {
                    let ok = TcpStream::connect(addr).and_then(|mut c| {
                        let mut b = [0u8; 1];
                        c.read_exact(&mut b)?;
                        // Reset on close: the client does not pile up TIME_WAIT over the run.
                        reset_on_close(&c)
                    });
                    match ok {
                        Ok(()) => done.fetch_add(1, Ordering::Relaxed),
                        Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                    };
                }
            });
            println!("{:.0} {failed}", conns as f64 / elapsed);
            Ok(())
        }
        _ => Err(usage()),
    }
}
