//! The differential test of the two L7 paths: generated HTTP/1.1 request streams (valid grammar plus
//! mutations: duplicate and conflicting framing headers, `Connection` naming every header, obs-fold, bare CR/LF,
//! NUL, chunk-size overflow, chunk extensions, trailers, pipelining, absolute-form, odd Host forms, split at
//! random byte boundaries) go to the fast path and to the hyper path of one proxy, against a recording backend.
//! For every input both paths must send the backend the same requests and the client the same answers.
//!
//! The comparison and its documented differences are in `padis_tests::differential`.
//!
//! `PADIS_DIFF_CASES` (default 300) and `PADIS_DIFF_SEED` set the run; `PADIS_DIFF_CASES=0` runs until
//! `PADIS_DIFF_SECONDS` (default 600) pass, the open-ended form. The TLS lanes (the fast path's TLS against the
//! hyper path's) run `PADIS_DIFF_TLS_CASES` (default 120) of the same cases.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use padis_tests::differential::Lane;

/// splitmix64: a small, seedable generator (the case stream must be reproducible from the seed alone).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }
    fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len())]
    }
}

const METHODS: [&str; 8] = ["GET", "GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"];
const TARGETS: [&str; 14] = [
    "/",
    "/a/b",
    "/a/../b",
    "//x//y",
    "/%61dmin",
    "/a?x=/../1",
    "/admin/../secret",
    "/%2e%2e/x",
    "*",
    "http://h.test/abs",
    "http://other.test/abs?q",
    "/a%zz",
    "/sp ace",
    "/a/./b/.",
];
const HOSTS: [&str; 12] = [
    "h.test",
    "H.TEST:8080",
    "h.test.",
    "user@h.test",
    "h test",
    "[::1]",
    "[::1]:80",
    "h.test:abc",
    "",
    "h.test:",
    "10.0.0.1",
    "h\u{0}.test",
];
const EXTRA: [(&str, &str); 12] = [
    ("Accept", "*/*"),
    ("Cookie", "a=1"),
    ("X-Forwarded-For", "192.0.2.1"),
    ("Forwarded", "for=192.0.2.9"),
    ("Via", "1.1 edge"),
    ("TE", "trailers"),
    ("Keep-Alive", "timeout=5"),
    ("Proxy-Connection", "keep-alive"),
    ("Upgrade", "websocket"),
    ("Expect", "100-continue"),
    ("Trailer", "X-T"),
    ("Accept", "text/plain"),
];

/// One generated request; `head` tells whether it is a HEAD (its answer has no body).
fn request(rng: &mut Rng, last: bool, out: &mut Vec<u8>) -> bool {
    let method = *rng.pick(&METHODS);
    let target = *rng.pick(&TARGETS);
    let version = if rng.chance(5) { "HTTP/1.0" } else { "HTTP/1.1" };
    let eol = |rng: &mut Rng| if rng.chance(3) { "\n" } else { "\r\n" };
    let mut head = String::new();
    let _ = write!(head, "{method} {target} {version}{}", eol(rng));
    let mut names: Vec<&str> = Vec::new();
    // Host: usually one good one, sometimes odd, missing or doubled.
    match rng.below(10) {
        0 => {}
        1 => {
            let _ = write!(head, "Host: h.test\r\nHost: {}\r\n", rng.pick(&HOSTS));
        }
        2 | 3 => {
            let _ = write!(head, "Host: {}\r\n", rng.pick(&HOSTS));
        }
        _ => head.push_str("Host: h.test\r\n"),
    }
    names.push("Host");
    for _ in 0..rng.below(4) {
        let (n, v) = *rng.pick(&EXTRA);
        let _ = write!(head, "{n}: {v}{}", eol(rng));
        names.push(n);
    }
    // Framing.
    let body_len = rng.below(40);
    let body: String = (0..body_len).map(|i| (b'a' + (i % 26) as u8) as char).collect();
    let mut body_bytes: Vec<u8> = Vec::new();
    match rng.below(16) {
        0..=5 => {}
        6..=8 => {
            let _ = write!(head, "Content-Length: {body_len}\r\n");
            body_bytes.extend_from_slice(body.as_bytes());
        }
        9 => {
            let _ = write!(head, "Content-Length: {body_len}\r\nContent-Length: {}\r\n", body_len + rng.below(2));
            body_bytes.extend_from_slice(body.as_bytes());
        }
        10 => {
            let _ = write!(head, "Content-Length: {body_len}\r\nTransfer-Encoding: chunked\r\n");
            let _ = write!(body_bytes_str(&mut body_bytes), "{body_len:x}\r\n{body}\r\n0\r\n\r\n");
        }
        11 | 12 => {
            head.push_str(if rng.chance(80) {
                "Transfer-Encoding: chunked\r\n"
            } else {
                "Transfer-Encoding: gzip, chunked\r\n"
            });
            let mut s = String::new();
            let mut rest = body.as_str();
            while !rest.is_empty() {
                let n = 1 + rng.below(rest.len());
                let ext = if rng.chance(20) { ";ext=1" } else { "" };
                let _ = write!(s, "{n:x}{ext}\r\n{}\r\n", &rest[..n]);
                rest = &rest[n..];
            }
            s.push_str(if rng.chance(20) { "0\r\nX-T: t\r\n\r\n" } else { "0\r\n\r\n" });
            body_bytes.extend_from_slice(s.as_bytes());
        }
        13 => {
            head.push_str("Transfer-Encoding: chunked\r\n");
            body_bytes.extend_from_slice(b"fffffffffffffffff1\r\nab\r\n0\r\n\r\n");
        }
        14 => {
            let v = *rng.pick(&["+5", " 5", "", "0x5", "5, 5", "-1", "99999999999999999999"]);
            let _ = write!(head, "Content-Length: {v}\r\n");
            body_bytes.extend_from_slice(b"hello");
        }
        _ => {
            head.push_str("Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n");
            body_bytes.extend_from_slice(b"3\r\nabc\r\n0\r\n\r\n");
        }
    }
    // Head mutations.
    match rng.below(12) {
        0 => head.push_str("X-Folded: a\r\n b\r\n"),
        1 => head.push_str("X-Cr: a\rb\r\n"),
        2 => head.push_str("X-Nul: a\0b\r\n"),
        3 => head.push_str("X-Space : a\r\n"),
        4 => head.push_str("NoColon\r\n"),
        _ => {}
    }
    // Connection: sometimes naming every header of the request, framing and Host included.
    let close = last && rng.chance(70);
    let mut connection: Vec<&str> = Vec::new();
    if close {
        connection.push("close");
    }
    match rng.below(6) {
        0 => connection.extend(names.iter().copied().chain(["Content-Length", "Transfer-Encoding", "X-Folded"])),
        1 => connection.push("keep-alive"),
        2 => connection.push("Upgrade"),
        _ => {}
    }
    if !connection.is_empty() {
        let _ = write!(head, "Connection: {}\r\n", connection.join(", "));
    }
    head.push_str("\r\n");
    out.extend_from_slice(head.as_bytes());
    out.extend_from_slice(&body_bytes);
    method == "HEAD"
}

/// Lets `write!` append to a byte vector through a string.
fn body_bytes_str(v: &mut Vec<u8>) -> BytesWriter<'_> {
    BytesWriter(v)
}

struct BytesWriter<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for BytesWriter<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

/// A generated case: the byte stream, cut into the chunks it is sent in, and which requests are HEADs.
fn case(rng: &mut Rng) -> (Vec<Vec<u8>>, Vec<bool>) {
    let n = 1 + rng.below(3);
    let mut stream = Vec::new();
    let heads: Vec<bool> = (0..n).map(|i| request(rng, i + 1 == n, &mut stream)).collect();
    let mut cuts: Vec<usize> = (0..rng.below(4)).map(|_| rng.below(stream.len())).collect();
    cuts.sort_unstable();
    cuts.dedup();
    let mut chunks = Vec::new();
    let mut at = 0;
    for c in cuts.into_iter().filter(|&c| c > 0) {
        chunks.push(stream[at..c].to_vec());
        at = c;
    }
    chunks.push(stream[at..].to_vec());
    (chunks, heads)
}

/// Runs `cases` generated cases (from `seed`) on `lanes` lanes made by `start`: the failures.
async fn run_lanes<F, Fut>(start: F, lanes: u64, cases: u64, seed: u64, until: Instant) -> Vec<String>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Lane> + Send + 'static,
{
    let mut tasks = Vec::new();
    for lane in 0..lanes {
        let started = start();
        tasks.push(tokio::spawn(async move {
            let l = started.await;
            let mut failures = Vec::new();
            let mut i = lane;
            while (cases == 0 && Instant::now() < until) || i < cases {
                let mut rng = Rng(seed ^ i.wrapping_mul(0x2545_f491_4f6c_dd1d));
                let (chunks, heads) = case(&mut rng);
                if let Some(d) = l.run(&chunks, &heads).await {
                    let stream: Vec<u8> = chunks.concat();
                    failures.push(format!("case {i} (seed {seed:#x}): {:?}\n{d}", String::from_utf8_lossy(&stream)));
                }
                i += lanes;
            }
            failures
        }));
    }
    let mut failures = Vec::new();
    for t in tasks {
        failures.extend(t.await.expect("lane"));
    }
    failures
}

fn env(k: &str, d: u64) -> u64 {
    std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(d)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_paths_send_the_same_requests_and_answers_for_every_generated_stream() {
    let cases = env("PADIS_DIFF_CASES", 300);
    let seed = env("PADIS_DIFF_SEED", 0x5eed_0011);
    let until = Instant::now() + Duration::from_secs(env("PADIS_DIFF_SECONDS", 600));
    let failures = run_lanes(Lane::start, 6, cases, seed, until).await;
    assert!(failures.is_empty(), "{} of the cases differ:\n{}", failures.len(), failures.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_tls_paths_send_the_same_requests_and_answers_for_every_generated_stream() {
    let cases = env("PADIS_DIFF_TLS_CASES", 120);
    let seed = env("PADIS_DIFF_SEED", 0x5eed_0011);
    let until = Instant::now() + Duration::from_secs(env("PADIS_DIFF_SECONDS", 600));
    let failures = run_lanes(Lane::start_tls, 3, cases, seed, until).await;
    assert!(failures.is_empty(), "{} of the cases differ:\n{}", failures.len(), failures.join("\n"));
}
