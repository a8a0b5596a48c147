//! Raw TCP helpers shared by the TCP-mode tests (`[[listener]] mode = "tcp"`, Marathon service ports): an echo
//! backend that can expect a PROXY protocol header, and the client side of an echo exchange.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// What an echo backend expects before the bytes it echoes.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Header {
    /// Nothing: every byte is echoed.
    None,
    /// A PROXY protocol v1 line (TCP4).
    V1,
    /// A PROXY protocol v2 header (PROXY, TCP over IPv4).
    V2,
}

/// A TCP backend on 127.0.0.1 that echoes every byte until end of stream, then closes its sending half. Counts
/// connections; records the client address of PROXY protocol headers. Stops accepting when dropped.
pub struct Echo {
    pub addr: SocketAddr,
    conns: Arc<AtomicUsize>,
    /// The client addresses the PROXY protocol headers announced, in order.
    pub seen: Arc<Mutex<Vec<SocketAddr>>>,
    stop: CancellationToken,
}

impl Echo {
    /// Starts an echo backend expecting `header` on every connection.
    pub async fn start(header: Header) -> Echo {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        let conns = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = CancellationToken::new();
        let (c, s, st) = (conns.clone(), seen.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let (sock, _) = tokio::select! {
                    r = l.accept() => match r { Ok(a) => a, Err(_) => continue },
                    _ = st.cancelled() => return,
                };
                c.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve(sock, header, s.clone()));
            }
        });
        Echo { addr, conns, seen, stop }
    }

    /// Connections accepted so far.
    pub fn conns(&self) -> usize {
        self.conns.load(Ordering::SeqCst)
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// One echo connection: its header read (and its client address recorded), then every byte sent back.
async fn serve(mut sock: TcpStream, header: Header, seen: Arc<Mutex<Vec<SocketAddr>>>) {
    let mut pending = Vec::new();
    match header {
        Header::None => {}
        Header::V1 => {
            let mut line = Vec::new();
            let mut b = [0u8; 1];
            while !line.ends_with(b"\r\n") {
                if sock.read_exact(&mut b).await.is_err() {
                    return;
                }
                line.push(b[0]);
            }
            let text = String::from_utf8(line).expect("v1 header is text");
            let f: Vec<&str> = text.trim_end().split(' ').collect();
            assert_eq!(&f[..2], &["PROXY", "TCP4"], "{text}");
            seen.lock().expect("lock").push(SocketAddr::new(f[2].parse().expect("ip"), f[4].parse().expect("port")));
        }
        Header::V2 => {
            let mut h = [0u8; 16];
            if sock.read_exact(&mut h).await.is_err() {
                return;
            }
            assert_eq!(&h[..12], b"\r\n\r\n\0\r\nQUIT\n", "v2 signature");
            assert_eq!(h[12], 0x21, "v2, PROXY");
            assert_eq!(h[13], 0x11, "TCP over IPv4");
            let len = u16::from_be_bytes([h[14], h[15]]) as usize;
            let mut body = vec![0u8; len];
            if sock.read_exact(&mut body).await.is_err() {
                return;
            }
            let ip = std::net::Ipv4Addr::new(body[0], body[1], body[2], body[3]);
            let port = u16::from_be_bytes([body[8], body[9]]);
            seen.lock().expect("lock").push(SocketAddr::new(ip.into(), port));
            pending.extend_from_slice(&body[12..]);
        }
    }
    let _ = sock.write_all(&pending).await;
    let (mut r, mut w) = sock.split();
    if tokio::io::copy(&mut r, &mut w).await.is_ok() {
        let _ = w.shutdown().await;
    }
}

/// Sends `msg` on a new connection to `addr`, closes the sending half and reads everything back (10 s at most).
pub async fn round_trip(addr: SocketAddr, msg: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut c = TcpStream::connect(addr).await?;
    let (mut r, mut w) = c.split();
    let send = async {
        w.write_all(msg).await?;
        w.shutdown().await
    };
    let mut back = Vec::new();
    let recv = r.read_to_end(&mut back);
    let (s, rv) = tokio::time::timeout(Duration::from_secs(10), async { tokio::join!(send, recv) })
        .await
        .map_err(|_| std::io::Error::other("timed out"))?;
    s?;
    rv?;
    Ok(back)
}

/// On an open connection: writes `msg` and reads its echo (5 s at most); an echo that differs is an error.
pub async fn echo_on(c: &mut TcpStream, msg: &[u8]) -> std::io::Result<()> {
    c.write_all(msg).await?;
    let mut back = vec![0u8; msg.len()];
    tokio::time::timeout(Duration::from_secs(5), c.read_exact(&mut back)).await.map_err(std::io::Error::other)??;
    if back != msg {
        return Err(std::io::Error::other(format!("wrong echo: {:?}", String::from_utf8_lossy(&back))));
    }
    Ok(())
}

/// Waits until a connection to `addr` is accepted (the listener is open), or panics after 10 s.
pub async fn wait_open(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(addr).await.is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {addr}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until connections to `addr` are refused (the listener is closed), or panics after 10 s.
pub async fn wait_closed(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(addr).await.is_ok() {
        assert!(Instant::now() < deadline, "{addr} still accepts");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
