//! A backend that records every request it receives, byte-exact after parsing (request line, header fields in
//! order, body decoded from its framing), and answers each with a deterministic echo; and a reader of raw HTTP/1.1
//! response streams. The request policy tests and the fast-path/hyper-path differential test use them.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// One request as the backend read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    /// Backend connection it came on (1, 2, ... in accept order).
    pub conn: usize,
    pub method: String,
    pub target: String,
    /// Header fields as received (name as sent, value bytes lossily as text).
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Whether the body came chunked.
    pub chunked: bool,
}

impl Recorded {
    /// The first value of header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// What a recording backend saw: requests, bytes it could not read as a request, and messages the sender cut
/// short (its connection closed in the middle: a proxy aborting a request whose body failed).
#[derive(Debug, Default, Clone)]
pub struct Seen {
    pub requests: Vec<Recorded>,
    /// Unparseable input (connection, bytes).
    pub garbage: Vec<(usize, Vec<u8>)>,
    /// Connections that closed in the middle of a message.
    pub cut: Vec<usize>,
}

/// The recording backend. Answers every request with `200` and the body `<method> <target> <body length>`,
/// except targets starting with `/respond/`, which name a scripted answer (see [`scripted`]).
pub struct RecordingBackend {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Seen>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RecordingBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Scripted answers for `/respond/<name>`: broken framings a backend might send.
fn scripted(name: &str) -> Option<&'static [u8]> {
    Some(match name {
        "length-and-chunked" => {
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
        }
        "connection-names-length" => {
            b"HTTP/1.1 200 OK\r\nConnection: Content-Length, X-Hop\r\nX-Hop: 1\r\nContent-Length: 5\r\n\r\nhello"
        }
        "conflicting-lengths" => b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\nhello",
        _ => return None,
    })
}

impl RecordingBackend {
    /// Starts it on a fresh loopback port.
    pub async fn start() -> RecordingBackend {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind recording backend");
        let addr = l.local_addr().expect("addr");
        let seen = Arc::new(Mutex::new(Seen::default()));
        let conns = Arc::new(AtomicUsize::new(0));
        let s2 = seen.clone();
        let task = tokio::spawn(async move {
            while let Ok((sock, _)) = l.accept().await {
                let id = conns.fetch_add(1, Ordering::SeqCst) + 1;
                tokio::spawn(serve(sock, id, s2.clone()));
            }
        });
        RecordingBackend { addr, seen, task }
    }

    /// What it saw so far.
    pub fn seen(&self) -> Seen {
        self.seen.lock().expect("seen").clone()
    }

    /// Forgets what it saw.
    pub fn clear(&self) {
        *self.seen.lock().expect("seen") = Seen::default();
    }
}

async fn serve(mut s: TcpStream, id: usize, seen: Arc<Mutex<Seen>>) {
    let mut buf = Vec::new();
    loop {
        match read_request(&mut s, &mut buf, id).await {
            Ok(Some(r)) => {
                let answer: Vec<u8> = match r.target.strip_prefix("/respond/") {
                    Some("slow") => {
                        tokio::time::sleep(Duration::from_secs(3)).await;
                        b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nslow".to_vec()
                    }
                    Some(name) => match scripted(name) {
                        Some(a) => a.to_vec(),
                        None => b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_vec(),
                    },
                    None => {
                        let b = format!("{} {} {}", r.method, r.target, r.body.len());
                        if r.method == "HEAD" {
                            format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", b.len()).into_bytes()
                        } else {
                            format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{b}", b.len()).into_bytes()
                        }
                    }
                };
                seen.lock().expect("seen").requests.push(r);
                if s.write_all(&answer).await.is_err() {
                    return;
                }
            }
            Ok(None) => return,
            Err(Bad::Cut) => {
                seen.lock().expect("seen").cut.push(id);
                return;
            }
            Err(Bad::Garbage) => {
                seen.lock().expect("seen").garbage.push((id, std::mem::take(&mut buf)));
                return;
            }
        }
    }
}

async fn fill(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<()> {
    let mut tmp = [0u8; 16384];
    match s.read(&mut tmp).await {
        Ok(0) | Err(_) => None,
        Ok(n) => {
            buf.extend_from_slice(&tmp[..n]);
            Some(())
        }
    }
}

/// Why a request could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bad {
    /// Bytes that are not (the rest of) a request.
    Garbage,
    /// The connection closed in the middle of a request.
    Cut,
}

/// Reads one request: `Ok(None)` at a clean end of stream.
async fn read_request(s: &mut TcpStream, buf: &mut Vec<u8>, conn: usize) -> Result<Option<Recorded>, Bad> {
    loop {
        let mut slots = [httparse::EMPTY_HEADER; 256];
        let mut req = httparse::Request::new(&mut slots);
        match req.parse(buf) {
            Ok(httparse::Status::Complete(n)) => {
                let headers: Vec<(String, String)> = req
                    .headers
                    .iter()
                    .map(|h| (h.name.to_string(), String::from_utf8_lossy(h.value).into_owned()))
                    .collect();
                let mut r = Recorded {
                    conn,
                    method: req.method.unwrap_or("").to_string(),
                    target: req.path.unwrap_or("").to_string(),
                    headers,
                    body: Vec::new(),
                    chunked: false,
                };
                buf.drain(..n);
                let te = r.header("transfer-encoding").map(str::to_ascii_lowercase);
                let lengths: Vec<&str> = r
                    .headers
                    .iter()
                    .filter(|(n, _)| n.eq_ignore_ascii_case("content-length"))
                    .map(|(_, v)| v.as_str())
                    .collect();
                if te.is_some() && !lengths.is_empty() || lengths.windows(2).any(|w| w[0] != w[1]) {
                    return Err(Bad::Garbage);
                }
                if let Some(te) = te {
                    if !te.trim_end().ends_with("chunked") {
                        return Err(Bad::Garbage);
                    }
                    r.chunked = true;
                    r.body = read_chunked(s, buf).await?;
                } else if let Some(l) = lengths.first() {
                    let len: usize = l.trim().parse().map_err(|_| Bad::Garbage)?;
                    while buf.len() < len {
                        fill(s, buf).await.ok_or(Bad::Cut)?;
                    }
                    r.body = buf.drain(..len).collect();
                }
                return Ok(Some(r));
            }
            Ok(httparse::Status::Partial) => {
                if fill(s, buf).await.is_none() {
                    return if buf.is_empty() { Ok(None) } else { Err(Bad::Cut) };
                }
            }
            Err(_) => return Err(Bad::Garbage),
        }
    }
}

async fn read_line(s: &mut TcpStream, buf: &mut Vec<u8>) -> Result<Vec<u8>, Bad> {
    loop {
        if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
            let line = buf[..i].to_vec();
            buf.drain(..i + 2);
            return Ok(line);
        }
        fill(s, buf).await.ok_or(Bad::Cut)?;
    }
}

async fn read_chunked(s: &mut TcpStream, buf: &mut Vec<u8>) -> Result<Vec<u8>, Bad> {
    let mut body = Vec::new();
    loop {
        let line = read_line(s, buf).await?;
        let size_text = std::str::from_utf8(&line).map_err(|_| Bad::Garbage)?;
        let size =
            usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16).map_err(|_| Bad::Garbage)?;
        if size == 0 {
            // Trailers up to the empty line.
            while !read_line(s, buf).await?.is_empty() {}
            return Ok(body);
        }
        while buf.len() < size + 2 {
            fill(s, buf).await.ok_or(Bad::Cut)?;
        }
        body.extend_from_slice(&buf[..size]);
        if &buf[size..size + 2] != b"\r\n" {
            return Err(Bad::Garbage);
        }
        buf.drain(..size + 2);
    }
}

/// One response read from a raw client stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    /// Header fields (lowercase name, value).
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// The first value of header `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

/// Splits the bytes a client received into responses (`head_requests[i]`: the i-th answers a HEAD). What is
/// left that is not a whole response comes back as the second value.
pub fn parse_responses(mut raw: &[u8], head_requests: &[bool]) -> (Vec<Response>, Vec<u8>) {
    let mut out = Vec::new();
    loop {
        let mut slots = [httparse::EMPTY_HEADER; 128];
        let mut resp = httparse::Response::new(&mut slots);
        let Ok(httparse::Status::Complete(n)) = resp.parse(raw) else { return (out, raw.to_vec()) };
        let status = resp.code.unwrap_or(0);
        let headers: Vec<(String, String)> = resp
            .headers
            .iter()
            .map(|h| (h.name.to_ascii_lowercase(), String::from_utf8_lossy(h.value).into_owned()))
            .collect();
        let rest = &raw[n..];
        if (100..200).contains(&status) {
            raw = rest;
            continue;
        }
        let head = head_requests.get(out.len()).copied().unwrap_or(false);
        let r = Response { status, headers, body: Vec::new() };
        let len = r.header("content-length").and_then(|v| v.parse::<usize>().ok());
        let chunked = r.header("transfer-encoding").is_some_and(|v| v.contains("chunked"));
        let (body, used) = if head || status == 204 || status == 304 {
            (Vec::new(), 0)
        } else if chunked {
            match dechunk(rest) {
                Some(x) => x,
                None => return (out, raw.to_vec()),
            }
        } else if let Some(l) = len {
            if rest.len() < l {
                return (out, raw.to_vec());
            }
            (rest[..l].to_vec(), l)
        } else {
            (rest.to_vec(), rest.len())
        };
        out.push(Response { body, ..r });
        raw = &rest[used..];
    }
}

fn dechunk(mut b: &[u8]) -> Option<(Vec<u8>, usize)> {
    let start = b.len();
    let mut body = Vec::new();
    loop {
        let i = b.windows(2).position(|w| w == b"\r\n")?;
        let size = usize::from_str_radix(std::str::from_utf8(&b[..i]).ok()?.split(';').next()?.trim(), 16).ok()?;
        b = &b[i + 2..];
        if size == 0 {
            loop {
                let j = b.windows(2).position(|w| w == b"\r\n")?;
                b = &b[j + 2..];
                if j == 0 {
                    return Some((body, start - b.len()));
                }
            }
        }
        if b.len() < size + 2 {
            return None;
        }
        body.extend_from_slice(&b[..size]);
        b = &b[size + 2..];
    }
}

/// Sends `chunks` on a new connection to `addr` (a pause between chunks), then reads until the proxy closes:
/// after `quiet` without an answer the write side is shut (the proxy sees the client's end), and after `limit`
/// the read stops. Returns what was read and whether the proxy closed.
pub async fn exchange(addr: SocketAddr, chunks: &[Vec<u8>], quiet: Duration, limit: Duration) -> (Vec<u8>, bool) {
    let s = TcpStream::connect(addr).await.expect("connect proxy");
    let _ = s.set_nodelay(true);
    exchange_on(s, chunks, quiet, limit).await
}

/// [`exchange`] on a connection already open (plain TCP or a TLS stream).
pub async fn exchange_on<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    chunks: &[Vec<u8>],
    quiet: Duration,
    limit: Duration,
) -> (Vec<u8>, bool) {
    for (i, c) in chunks.iter().enumerate() {
        if i > 0 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        if s.write_all(c).await.is_err() {
            break;
        }
    }
    let mut out = Vec::new();
    let mut tmp = [0u8; 16384];
    let deadline = tokio::time::Instant::now() + limit;
    let mut shut = false;
    loop {
        let wait = if shut { deadline.saturating_duration_since(tokio::time::Instant::now()) } else { quiet };
        match tokio::time::timeout(wait, s.read(&mut tmp)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (out, true),
            Ok(Ok(n)) => out.extend_from_slice(&tmp[..n]),
            Err(_) if !shut => {
                shut = true;
                let _ = s.shutdown().await;
            }
            Err(_) => return (out, false),
        }
        if tokio::time::Instant::now() >= deadline {
            return (out, false);
        }
    }
}
