//! The differential check of the two L7 paths: one lane is a recording backend and an in-process proxy with a
//! listener on each path (the fast path and the hyper path); a request stream goes to both at once and what the
//! backend received from each (told apart by `X-Forwarded-Port`) and what each client got back are compared.
//! Used by `tests/tests/l7/l7_differential.rs` (generated streams) and the `l7_differential` fuzz target.
//!
//! Documented differences, normalised before comparing: header names are compared lowercase and sorted (the
//! fields of one name keep their order: hyper's header map groups them, and the hyper path updates a forwarding
//! header where the client had it while the fast path writes it after the others); `X-Forwarded-Port` names the
//! listener's port; response headers other than the status and body are not compared (`Date`, the order of
//! fields). Whether the proxy closed the connection after its last answer is not compared either. One known
//! difference of hyper's, not of the policy: when a connection the fast path handed over goes on with a request
//! that asks for an `Upgrade` and has a body, hyper may close it without writing the policy's 400 (it writes it
//! when it reads the socket itself); for such streams only the backend side is compared. A request whose body
//! turns out malformed after its head went to the backend is cut off there (the backend sees a message cut
//! short, never a second request). hyper decides to close a keep-alive connection after an answer when the
//! request's body was not read to its end by then, which depends on timing: when one path closed the connection
//! with an answer (`connection: close`), the answers and backend requests up to there are compared. hyper parses an
//! unfinished request head again only when the head's end (a blank line) arrives, and its version sniff reads the
//! first 24 bytes of a connection apart: whether an invalid head that the client's end of stream cuts before its
//! end (`POST\0 HE/`, then EOF) gets hyper's 400 or no answer depends on how and where hyper read it (the start
//! of a connection, a hand-over from the fast path, a head after a served request). When a stream ends inside an
//! unfinished head and every finished head was answered alike, a last 400 that one path wrote and the other did
//! not is not a difference (nothing reached the backend on either path).
//!
//! The TLS lane ([`Lane::start_tls`]) does the same over TLS (ALPN http/1.1): two TLS listeners, the fast path's
//! TLS and the hyper path's; a stream's end is the client's close_notify.
//!
//! The catch-all route has header rules (removed, set and added fields with variables, HSTS) and the proxy gives
//! request ids, so every case also holds the paths to the same header rules: the response fields the rules write
//! are compared too, and generated request ids (random UUIDs, different on each path by nature) are compared as
//! `<id>`.
//!

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::l7::{temp_dir, Pki, Proxy};
use crate::recording::{exchange, exchange_on, parse_responses, Recorded, RecordingBackend};

/// An answer as compared: its status, the fields header rules write (generated ids masked) and its body.
type Answer = (u16, Vec<String>, Vec<u8>);

/// Which requests of a raw stream are HEADs (their answers have no body), by their request lines.
pub fn heads_of(stream: &[u8]) -> Vec<bool> {
    let text = String::from_utf8_lossy(stream);
    text.split("\r\n\r\n").filter(|h| !h.trim().is_empty()).map(|h| h.trim_start().starts_with("HEAD ")).collect()
}

/// `v` with every UUID in it (a generated request id) written `<id>`.
fn mask_ids(v: &str) -> String {
    let uuid =
        |w: &[u8]| {
            w.len() == 36
                && w.iter().enumerate().all(|(i, &c)| {
                    if [8, 13, 18, 23].contains(&i) {
                        c == b'-'
                    } else {
                        c.is_ascii_hexdigit()
                    }
                })
        };
    let b = v.as_bytes();
    let mut out = String::with_capacity(v.len());
    let mut i = 0;
    while i < b.len() {
        if b.len() - i >= 36 && uuid(&b[i..i + 36]) {
            out.push_str("<id>");
            i += 36;
        } else {
            let c = v[i..].chars().next().unwrap_or('?');
            out.push(c);
            i += c.len_utf8();
        }
    }
    out
}

/// The response fields the lane's header rules write, as the client got them (ids masked).
const RULED: [&str; 3] = ["x-rid", "x-resp", "strict-transport-security"];

/// A backend request with the documented differences normalised.
fn normalised(r: &Recorded) -> String {
    let mut names: Vec<String> = r.headers.iter().map(|(n, _)| n.to_ascii_lowercase()).collect();
    names.sort();
    names.dedup();
    let mut s = format!("{} {} chunked={}\n", r.method, r.target, r.chunked);
    for n in names.iter().filter(|n| *n != "x-forwarded-port") {
        for (_, v) in r.headers.iter().filter(|(h, _)| h.eq_ignore_ascii_case(n)) {
            let _ = writeln!(s, "{n}: {}", mask_ids(v));
        }
    }
    let _ = write!(s, "\n{}", String::from_utf8_lossy(&r.body));
    s
}

/// Whether a request of the stream asks for an `Upgrade` and has a body (see the module doc).
fn upgrade_with_body(stream: &[u8]) -> bool {
    let text = String::from_utf8_lossy(stream);
    text.split("\r\n\r\n").any(|head| {
        head.contains("\nUpgrade:") && (head.contains("\nTransfer-Encoding:") || head.contains("\nContent-Length:"))
    })
}

/// Whether `stream` ends inside a request head that never finished, every finished one having had its answer
/// (`answered`) — see the module doc. Conservative: every blank line counts as the end of a head (a body's too), so
/// a stream with a head left unanswered is never taken for one.
fn ends_in_unfinished_head(stream: &[u8], answered: usize) -> bool {
    let ends = stream.windows(4).filter(|w| w == b"\r\n\r\n").count();
    !stream.is_empty() && !stream.ends_with(b"\r\n\r\n") && ends <= answered
}

/// [`exchange`] over TLS (server name `h.test`).
async fn tls_exchange(
    addr: SocketAddr,
    cfg: Arc<rustls::ClientConfig>,
    chunks: &[Vec<u8>],
    quiet: Duration,
    limit: Duration,
) -> (Vec<u8>, bool) {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect proxy");
    let _ = tcp.set_nodelay(true);
    let name = rustls_pki_types::ServerName::try_from("h.test").expect("name");
    let s = tokio_rustls::TlsConnector::from(cfg).connect(name, tcp).await.expect("TLS handshake");
    exchange_on(s, chunks, quiet, limit).await
}

/// One lane: a backend and a proxy with a listener on each path; cases run one after another.
pub struct Lane {
    backend: RecordingBackend,
    proxy: Proxy,
    /// The client config of a TLS lane.
    tls: Option<Arc<rustls::ClientConfig>>,
    _dir: tempfile::TempDir,
}

impl Lane {
    /// A plaintext lane.
    pub async fn start() -> Lane {
        Self::start_with(false).await
    }

    /// A TLS lane: both listeners terminate TLS (certificate for `h.test`), the client offers http/1.1.
    pub async fn start_tls() -> Lane {
        Self::start_with(true).await
    }

    async fn start_with(tls: bool) -> Lane {
        let backend = RecordingBackend::start().await;
        let dir = temp_dir();
        let (listener_tls, certificate, client) = if tls {
            let pki = Pki::new(dir.path());
            pki.leaf("h", &["h.test"]);
            (
                "[listener.tls]\ndefault_certificate = \"h\"\n",
                "[[certificate]]\nname = \"h\"\ncert = \"h.pem\"\nkey = \"h.key\"\n",
                Some(pki.client_config(&["http/1.1"])),
            )
        } else {
            ("", "", None)
        };
        let cfg = format!(
            "[limits]\nbody_read_timeout = \"1s\"\n\
             [[listener]]\nname = \"fast\"\nbind = \"127.0.0.1:0\"\n{listener_tls}\
             [[listener]]\nname = \"hyper\"\nbind = \"127.0.0.1:0\"\nfast_path = false\n{listener_tls}{certificate}\
             [[route]]\nname = \"admin\"\nhost = \"h.test\"\npath = \"/admin\"\ngroup = \"g\"\n\
             [request_id]\ntrusted = [\"127.0.0.0/8\"]\n\
             [[route]]\nname = \"r\"\ngroup = \"g\"\nhsts = true\n[route.headers]\n\
             request_remove = [\"cookie\"]\n\
             request_set = {{ \"via\" = \"padis ${{scheme}}\", \"x-c\" = \"${{client_ip}} ${{tls_sni}}\" }}\n\
             request_add = {{ \"accept\" = \"x/${{request_id}}\" }}\n\
             response_set = {{ \"x-rid\" = \"${{request_id}}\" }}\nresponse_add = {{ \"x-resp\" = \"1\" }}\n\
             [[group]]\nname = \"g\"\nretries = 0\nrequest_timeout = \"3s\"\n[group.passive]\nconsecutive_failures = 1000\n\
             [[group.backend]]\naddr = \"{}\"\n",
            backend.addr
        );
        let proxy = Proxy::start(&cfg, dir.path()).await;
        Lane { backend, proxy, tls: client, _dir: dir }
    }

    /// Runs one case on both paths at once; the differences found, if any.
    pub async fn run(&self, chunks: &[Vec<u8>], heads: &[bool]) -> Option<String> {
        self.backend.clear();
        let quiet = Duration::from_millis(300);
        let limit = Duration::from_secs(5);
        let (fast, hyper) = match &self.tls {
            None => {
                tokio::join!(
                    exchange(self.proxy.addr("fast"), chunks, quiet, limit),
                    exchange(self.proxy.addr("hyper"), chunks, quiet, limit)
                )
            }
            Some(cfg) => {
                tokio::join!(
                    tls_exchange(self.proxy.addr("fast"), cfg.clone(), chunks, quiet, limit),
                    tls_exchange(self.proxy.addr("hyper"), cfg.clone(), chunks, quiet, limit)
                )
            }
        };
        // Answers the backend gives reach the client before the next request of a stream: wait for stragglers.
        tokio::time::sleep(Duration::from_millis(5)).await;
        let seen = self.backend.seen();
        let port = |l: &str| self.proxy.addr(l).port().to_string();
        let of = |l: &str| -> Vec<String> {
            seen.requests.iter().filter(|r| r.header("x-forwarded-port") == Some(&port(l))).map(normalised).collect()
        };
        let mut diff = String::new();
        if !seen.garbage.is_empty() {
            let _ = writeln!(diff, "the backend received bytes that are not a request: {:?}", seen.garbage);
        }
        let stray = seen.requests.iter().filter(|r| r.header("x-forwarded-port").is_none()).count();
        if stray > 0 {
            let _ = writeln!(diff, "{stray} request(s) reached the backend without the proxy's headers (smuggled)");
        }
        let (mut fr, mut hr) = (of("fast"), of("hyper"));
        let answers = |raw: &[u8]| -> (Vec<Answer>, bool) {
            let (rs, _) = parse_responses(raw, heads);
            let closed = rs.last().and_then(|r| r.header("connection")).is_some_and(|v| v.contains("close"));
            let ruled = |r: &crate::recording::Response| -> Vec<String> {
                RULED.iter().map(|n| r.header(n).map(mask_ids).unwrap_or_default()).collect()
            };
            (rs.into_iter().map(|r| (r.status, ruled(&r), r.body)).collect(), closed)
        };
        let ((mut fa, fast_closed), (mut ha, hyper_closed)) = (answers(&fast.0), answers(&hyper.0));
        // A path that closed the connection with its last answer serves no later request of the stream: compare
        // what both paths did up to there (see the module doc).
        if fast_closed && fa.len() < ha.len() {
            ha.truncate(fa.len());
            hr.truncate(fr.len());
        } else if hyper_closed && ha.len() < fa.len() {
            fa.truncate(ha.len());
            fr.truncate(hr.len());
        }
        // A last 400 one path wrote and the other did not, for an invalid head the client's end cut (see the
        // module doc).
        let stream = chunks.concat();
        let extra_400 = |more: &[Answer], less: &[Answer]| {
            more.len() == less.len() + 1
                && more[..less.len()] == less[..]
                && more.last().is_some_and(|(status, _, _)| *status == 400)
                && ends_in_unfinished_head(&stream, less.len())
        };
        if extra_400(&fa, &ha) {
            fa.pop();
        } else if extra_400(&ha, &fa) {
            ha.pop();
        }
        if fr != hr {
            let _ = writeln!(diff, "backend requests differ:\n fast:  {fr:?}\n hyper: {hr:?}");
        }
        if fa != ha && !upgrade_with_body(&chunks.concat()) {
            let _ = writeln!(
                diff,
                "client answers differ:\n fast:  {}\n hyper: {}",
                String::from_utf8_lossy(&fast.0),
                String::from_utf8_lossy(&hyper.0)
            );
        }
        (!diff.is_empty()).then_some(diff)
    }
}
