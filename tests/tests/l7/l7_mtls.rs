//! Client certificates (mTLS) on listeners and by server name, backend mTLS, shared session ticket keys — through
//! real sockets with real clients: curl with and without client certificates (required: refused without one, with
//! one of another CA, with a revoked one; optional: served without identity), the subject header at the backend
//! (a client's copy removed on every listener, the fast path's included), a group presenting its client
//! certificate to an nginx that requires one, and `openssl s_client` resuming on node B with a ticket from node A
//! (two `padis` processes sharing their ticket keys over the `[l4.sync]` channel), also after a key rotation,
//! and not on a node that does not share them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use padis_tests::l7::{curl, get, get_req, temp_dir, Backend, H1Conn, Pki, Proxy};
use padis_tests::process::{free_port, Padis};

/// The subject as `openssl x509 -nameopt RFC2253` prints it (an implementation independent of ours).
fn openssl_subject(cert: &Path) -> String {
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-subject", "-nameopt", "RFC2253", "-in"])
        .arg(cert)
        .output()
        .expect("openssl runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().trim_start_matches("subject=").to_string()
}

fn proxy_config(b: &Backend) -> String {
    format!(
        r#"
[[listener]]
name = "req"
bind = "127.0.0.1:0"
[listener.tls]
[listener.tls.client_auth]
mode = "required"
ca = "partners/ca.pem"
crl = ["partners/revoked.crl"]

[[listener]]
name = "opt"
bind = "127.0.0.2:0"
[listener.tls]
[listener.tls.client_auth]
mode = "optional"
ca = "partners/ca.pem"
subject_header = "X-Partner"

[[listener]]
name = "sni"
bind = "127.0.0.3:0"
[listener.tls]
[[listener.tls.by_name]]
names = ["partners.example.com"]
client_auth = {{ mode = "required", ca = "partners/ca.pem" }}

[[listener]]
name = "plain"
bind = "127.0.0.4:0"

[[certificate]]
name = "site"
cert = "site.pem"
key = "site.key"

[[route]]
name = "all"
group = "g"
[[group]]
name = "g"
[[group.backend]]
addr = "{}"
"#,
        b.addr
    )
}

/// A client certificate for curl: `--cert`/`--key` arguments.
struct Client(PathBuf, PathBuf);

/// curl to `name` on `addr` (resolved there), with the server CA, a client certificate and extra headers.
async fn curl_to(addr: SocketAddr, ca: &Path, name: &str, cert: Option<&Client>, headers: &[&str]) -> (bool, String) {
    let resolve = format!("{name}:{}:{}", addr.port(), addr.ip());
    let url = format!("https://{name}:{}/mtls", addr.port());
    let ca = ca.to_string_lossy().to_string();
    let mut args: Vec<String> = vec!["--cacert".into(), ca, "--resolve".into(), resolve, "--http1.1".into()];
    if let Some(Client(c, k)) = cert {
        args.extend(["--cert".into(), c.to_string_lossy().into(), "--key".into(), k.to_string_lossy().into()]);
    }
    for h in headers {
        args.extend(["-H".into(), h.to_string()]);
    }
    args.push(url);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (ok, out, err) = curl(&args).await;
    (ok, if ok { out } else { err })
}

/// A `h:<name>=` line of the backend's description of the request it got.
fn seen(body: &str, name: &str) -> Option<String> {
    let prefix = format!("h:{name}=");
    body.lines().find_map(|l| l.strip_prefix(&prefix)).map(str::to_string)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_required_optional_revoked_by_name_and_subject_header() {
    let dir = temp_dir();
    let site = Pki::new(dir.path());
    site.leaf("site", &["api.example.com", "partners.example.com", "public.example.com"]);
    std::fs::create_dir_all(dir.path().join("partners")).unwrap();
    std::fs::create_dir_all(dir.path().join("rogue")).unwrap();
    let partners = Pki::new(&dir.path().join("partners"));
    let rogue = Pki::new(&dir.path().join("rogue"));
    let good = partners.client_leaf("good", "partner-1", "Partner Bank", 7);
    let odd = partners.client_leaf("odd", "Doe, John+x", "Partner Bank", 8);
    let revoked = partners.client_leaf("revoked", "partner-2", "Partner Bank", 666);
    let stranger = rogue.client_leaf("stranger", "partner-1", "Partner Bank", 7);
    partners.crl("revoked.crl", &[666]);
    let (good, odd, revoked, stranger) =
        (Client(good.0, good.1), Client(odd.0, odd.1), Client(revoked.0, revoked.1), Client(stranger.0, stranger.1));

    let b = Backend::start("b").await;
    let mut p = Proxy::start(&proxy_config(&b), dir.path()).await;
    let (req, opt, sni, plain) = (p.addr("req"), p.addr("opt"), p.addr("sni"), p.addr("plain"));
    let ca = site.ca_pem.clone();
    let subject = openssl_subject(&good.0);
    assert!(subject.contains("CN=partner-1") && subject.contains("O=Partner Bank"), "{subject}");

    // Required: no certificate, another CA's, a revoked one — each refused in the handshake, nothing forwarded.
    let hits = b.hits();
    let errors = p.metric("padis_tls_handshake_errors_total", &[("listener", "req")]);
    for (what, cert) in [("none", None), ("another CA", Some(&stranger)), ("revoked", Some(&revoked))] {
        let (ok, out) = curl_to(req, &ca, "api.example.com", cert, &[]).await;
        assert!(!ok, "{what}: served:\n{out}");
    }
    assert_eq!(b.hits(), hits, "nothing reached the backend");
    let refused = p.metric("padis_tls_handshake_errors_total", &[("listener", "req")]) - errors;
    assert_eq!(refused, 3.0, "three failed handshakes counted");

    // A verified certificate: the subject goes to the backend, a client's copy of the header is replaced.
    let (ok, out) = curl_to(req, &ca, "api.example.com", Some(&good), &["X-Client-Cert-Subject: CN=admin"]).await;
    assert!(ok, "{out}");
    assert_eq!(seen(&out, "x-client-cert-subject").as_deref(), Some(subject.as_str()), "{out}");
    assert_eq!(out.matches("h:x-client-cert-subject=").count(), 1, "{out}");
    // RFC 4514 escaping, as openssl's.
    let (ok, out) = curl_to(req, &ca, "api.example.com", Some(&odd), &[]).await;
    assert!(ok, "{out}");
    let odd_subject = openssl_subject(&odd.0);
    assert!(odd_subject.contains(r"CN=Doe\, John\+x"), "{odd_subject}");
    assert_eq!(seen(&out, "x-client-cert-subject"), Some(odd_subject), "{out}");

    // Optional: served without a certificate, without the header (a forged one removed, of any listener's name).
    let (ok, out) =
        curl_to(opt, &ca, "api.example.com", None, &["X-Partner: CN=forged", "X-Client-Cert-Subject: CN=x"]).await;
    assert!(ok, "{out}");
    assert_eq!(seen(&out, "x-partner"), None, "{out}");
    assert_eq!(seen(&out, "x-client-cert-subject"), None, "{out}");
    let (ok, out) = curl_to(opt, &ca, "api.example.com", Some(&good), &["X-Partner: CN=forged"]).await;
    assert!(ok, "{out}");
    assert_eq!(seen(&out, "x-partner").as_deref(), Some(subject.as_str()), "{out}");
    // A certificate sent must verify, even when optional.
    let (ok, out) = curl_to(opt, &ca, "api.example.com", Some(&stranger), &[]).await;
    assert!(!ok, "another CA's certificate served:\n{out}");

    // By server name: the public name asks for nothing, the partners' name requires a certificate.
    let (ok, out) = curl_to(sni, &ca, "public.example.com", None, &[]).await;
    assert!(ok, "{out}");
    let (ok, out) = curl_to(sni, &ca, "partners.example.com", None, &[]).await;
    assert!(!ok, "partners' name without a certificate served:\n{out}");
    let (ok, out) = curl_to(sni, &ca, "partners.example.com", Some(&good), &[]).await;
    assert!(ok, "{out}");
    assert_eq!(seen(&out, "x-client-cert-subject").as_deref(), Some(subject.as_str()), "{out}");
    // The partners' Host over a connection made for the public name, or without SNI (an IP address), is
    // misdirected (421), though one certificate serves all names: the client authentication differs.
    let hits = b.hits();
    let (ok, out) = curl_to(sni, &ca, "public.example.com", None, &["Host: partners.example.com"]).await;
    assert!(ok && out.contains("misdirected"), "{out}");
    let (_, out, _) = curl(&[
        "-k",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-H",
        "Host: partners.example.com",
        &format!("https://{sni}/x"),
    ])
    .await;
    assert_eq!(out, "421");
    let (_, out, _) = curl(&[
        "-k",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "--resolve",
        &format!("public.example.com:{}:{}", sni.port(), sni.ip()),
        "-H",
        "Host: partners.example.com",
        &format!("https://public.example.com:{}/x", sni.port()),
    ])
    .await;
    assert_eq!(out, "421");
    assert_eq!(b.hits(), hits, "nothing reached the backend");
    // Without SNI, the public Host is not that listener's default either: the listener itself asks nothing.
    let (_, out, _) = curl(&[
        "-k",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-H",
        "Host: public.example.com",
        &format!("https://{sni}/x"),
    ])
    .await;
    assert_eq!(out, "200");

    // A plaintext listener on the fast path removes the subject headers too.
    let mut c = H1Conn::connect(plain).await;
    let mut r = get_req("api.example.com", "/plain");
    r.headers_mut().insert("x-client-cert-subject", http::HeaderValue::from_static("CN=admin"));
    r.headers_mut().insert("x-partner", http::HeaderValue::from_static("CN=admin"));
    let a = c.send(r).await.expect("answer");
    assert_eq!(a.status, 200);
    assert_eq!(a.seen_header("x-client-cert-subject"), None, "{}", a.body);
    assert_eq!(a.seen_header("x-partner"), None, "{}", a.body);
    assert!(p.metric("padis_fast_requests_total", &[]) >= 0.0);

    // openssl s_client: the required listener's handshake ends in an alert without a certificate.
    let out = s_client(req, "api.example.com", &ca, None, &[]);
    assert!(out.contains("alert") || out.contains("certificate required"), "{out}");
    let out = s_client(req, "api.example.com", &ca, Some(&good), &[]);
    assert!(out.contains("HTTP/1.1 200"), "{out}");

    // A new CRL revoking the good certificate too, with the same config text: a different state (a reload
    // publishes it), which refuses the certificate.
    let before = padis_tests::l7::snapshot(&proxy_config(&b), dir.path(), 2);
    partners.crl("revoked.crl", &[666, 7]);
    let after = padis_tests::l7::snapshot(&proxy_config(&b), dir.path(), 3);
    assert!(!before.state.same_as(&after.state), "a changed CRL file changes the state");
    p.publish_settled(&proxy_config(&b)).await;
    let (ok, out) = curl_to(req, &ca, "api.example.com", Some(&good), &[]).await;
    assert!(!ok, "revoked by the new CRL, still served:\n{out}");
    p.stop().await;
}

/// Runs `openssl s_client` against `addr` with an HTTP/1.1 request (`Connection: close`: it ends when Padis
/// closes) on stdin, kept open one second so that the session tickets sent after the handshake are read; returns
/// its stdout and stderr.
fn s_client(addr: SocketAddr, name: &str, ca: &Path, cert: Option<&Client>, extra: &[&str]) -> String {
    let mut cmd = Command::new("sh");
    let mut args = format!(
        "(printf 'GET / HTTP/1.1\\r\\nHost: {name}\\r\\nConnection: close\\r\\n\\r\\n'; sleep 1) | timeout 10 openssl s_client -connect {addr} \
         -servername {name} -CAfile {} -ign_eof",
        ca.display()
    );
    if let Some(Client(c, k)) = cert {
        args.push_str(&format!(" -cert {} -key {}", c.display(), k.display()));
    }
    for e in extra {
        args.push(' ');
        args.push_str(e);
    }
    cmd.args(["-c", &args]);
    let out = cmd.output().expect("openssl runs");
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// nginx serving TLS on `port` and requiring a client certificate of `client_ca`; it answers with the DN of the
/// certificate it verified.
struct Nginx(Child);

impl Nginx {
    fn start(dir: &Path, port: u16, cert: &Path, key: &Path, client_ca: &Path) -> Nginx {
        let conf = dir.join("nginx.conf");
        std::fs::create_dir_all(dir.join("nginx-tmp")).unwrap();
        let d = dir.display();
        std::fs::write(
            &conf,
            format!(
                "daemon off;\nmaster_process off;\npid {d}/nginx.pid;\nerror_log {d}/nginx.err info;\n\
                 events {{ worker_connections 64; }}\n\
                 http {{\n access_log off;\n client_body_temp_path {d}/nginx-tmp;\n proxy_temp_path {d}/nginx-tmp;\n\
                 fastcgi_temp_path {d}/nginx-tmp;\n uwsgi_temp_path {d}/nginx-tmp;\n scgi_temp_path {d}/nginx-tmp;\n\
                 server {{\n  listen 127.0.0.1:{port} ssl;\n  ssl_certificate {};\n  ssl_certificate_key {};\n\
                 ssl_client_certificate {};\n  ssl_verify_client on;\n\
                 location / {{ return 200 \"dn=$ssl_client_s_dn verify=$ssl_client_verify\\n\"; }}\n }}\n}}\n",
                cert.display(),
                key.display(),
                client_ca.display()
            ),
        )
        .unwrap();
        let child = Command::new("nginx")
            .args(["-p", &d.to_string(), "-c"])
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nginx starts");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "nginx not listening: {}",
                std::fs::read_to_string(dir.join("nginx.err")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Nginx(child)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_mtls_to_an_nginx_requiring_client_certificates() {
    let dir = temp_dir();
    let backends = Pki::new(dir.path());
    let (nginx_cert, nginx_key) = backends.leaf("nginx", &["backend.internal"]);
    std::fs::create_dir_all(dir.path().join("gw")).unwrap();
    let gw = Pki::new(&dir.path().join("gw"));
    let (client_cert, client_key) = gw.client_leaf("padis", "padis-gw", "Padis", 11);
    let port = free_port();
    let _nginx = Nginx::start(dir.path(), port, &nginx_cert, &nginx_key, &gw.ca_pem);
    let group = |name: &str, client: &str| {
        format!(
            "[[group]]\nname = \"{name}\"\n[group.tls]\nca = \"ca.pem\"\nserver_name = \"backend.internal\"\n{client}\
             [[group.backend]]\naddr = \"127.0.0.1:{port}\"\n"
        )
    };
    let config = format!(
        "[[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\n\
         [[route]]\nname = \"secure\"\nhost = \"secure.test\"\ngroup = \"secure\"\n\
         [[route]]\nname = \"anon\"\nhost = \"anon.test\"\ngroup = \"anon\"\n{}{}",
        group("secure", &format!("cert = \"{}\"\nkey = \"{}\"\n", client_cert.display(), client_key.display())),
        group("anon", ""),
    );
    let p = Proxy::start(&config, dir.path()).await;
    let addr = p.addr("web");
    let a = get(addr, "secure.test", "/").await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.body.trim(), format!("dn={} verify=SUCCESS", openssl_subject(&client_cert)));
    // Without the group's certificate, nginx refuses the request (400: no required certificate was sent).
    let a = get(addr, "anon.test", "/").await;
    assert_eq!(a.status, 400, "{}", a.body);
    assert!(a.body.contains("No required SSL certificate"), "{}", a.body);
    p.stop().await;
}

/// One Padis node of the ticket test: a TLS listener, `[l4.sync]` with its peer, ticket keys shared or not.
fn node_config(admin: SocketAddr, web: u16, sync: u16, peer: u16, share: bool, rotation: &str) -> String {
    format!(
        r#"[admin]
listen = "{admin}"

[tls]
ticket_key_rotation = "{rotation}"
share_ticket_keys = {share}

[l4]
node_id = "node-{sync}"

[l4.sync]
listen = "127.0.0.1:{sync}"
peers = ["127.0.0.1:{sync}", "127.0.0.1:{peer}"]
key_file = "sync.key"

[[listener]]
name = "tls"
bind = "127.0.0.1:{web}"
fast_path = true
[listener.tls]

[[certificate]]
name = "site"
cert = "site.pem"
key = "site.key"

[[route]]
name = "local"
group = "g"
[[group]]
name = "g"
[[group.backend]]
addr = "127.0.0.1:9"
"#
    )
}

struct Node {
    padis: Padis,
    web: SocketAddr,
}

fn start_node(dir: &Path, name: &str, sync: u16, peer: u16, share: bool, rotation: &str) -> Node {
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let web = free_port();
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, node_config(admin, web, sync, peer, share, rotation)).unwrap();
    let mut padis = Padis::start(&path, admin);
    padis.wait_ready();
    Node { padis, web: format!("127.0.0.1:{web}").parse().unwrap() }
}

/// Whether `openssl s_client` resumed the session of `sess_in` (and writes the new one to `sess_out`).
fn resumed(node: &Node, ca: &Path, sess_in: Option<&Path>, sess_out: &Path) -> (bool, String) {
    let mut extra = vec![format!("-sess_out {}", sess_out.display())];
    if let Some(s) = sess_in {
        extra.push(format!("-sess_in {}", s.display()));
    }
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let out = s_client(node.web, "api.example.com", ca, None, &extra);
    assert!(out.contains("Verify return code: 0 (ok)"), "{out}\n{}", node.padis.log_text());
    if out.contains("Reused, TLSv1.3") {
        return (true, out);
    }
    assert!(out.contains("New, TLSv1.3"), "{out}");
    (false, out)
}

fn tickets(n: &Node) -> serde_json::Value {
    n.padis.state()["planes"]["tls_tickets"].clone()
}

#[test]
fn ticket_resumption_on_another_node_sharing_keys_and_after_rotation() {
    let dir = temp_dir();
    let site = Pki::new(dir.path());
    site.leaf("site", &["api.example.com"]);
    let key = dir.path().join("sync.key");
    std::fs::write(&key, "ticket-test-sync-key-0123456789").unwrap();
    let (sa, sb, sc, sd) = (free_port(), free_port(), free_port(), free_port());
    // A 6 s rotation: a test can see it; the keys of the next epoch are shared one epoch ahead.
    let a = start_node(dir.path(), "a", sa, sb, true, "6s");
    let b = start_node(dir.path(), "b", sb, sa, true, "6s");
    // C runs the same sync channel with D but keeps its keys to itself (the control case).
    let c = start_node(dir.path(), "c", sc, sd, false, "6s");
    for n in [&a, &b] {
        n.padis.wait_state(Duration::from_secs(10), |s| {
            s["planes"]["tls_tickets"]["keys_from_peers"].as_u64().unwrap_or(0) >= 2
        });
    }
    let t = tickets(&a);
    assert_eq!(t["shared"], true, "{t}");
    assert_eq!(t["rotation_secs"], 6, "{t}");
    let ca = site.ca_pem.clone();
    let s1 = dir.path().join("s1.pem");
    let s2 = dir.path().join("s2.pem");

    // A ticket from A resumes on B (and on A), not on C.
    let (r, out) = resumed(&a, &ca, None, &s1);
    assert!(!r, "a first connection is new\n{out}");
    let (r, out) = resumed(&b, &ca, Some(&s1), &s2);
    assert!(r, "A's ticket resumes on B\n{out}\n{}", b.padis.log_text());
    let (r, out) = resumed(&a, &ca, Some(&s1), &s2);
    assert!(r, "and on A\n{out}\n{}", a.padis.log_text());
    let (r, out) = resumed(&c, &ca, Some(&s1), &s2);
    assert!(!r, "C does not share A's keys\n{out}");

    // After a rotation (the epoch moves on), a new ticket from B resumes on A; the old one still does (the
    // previous two epochs are accepted).
    let epoch = tickets(&a)["epoch"].as_u64().unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while tickets(&a)["epoch"].as_u64().unwrap() == epoch {
        assert!(Instant::now() < deadline, "no rotation");
        std::thread::sleep(Duration::from_millis(200));
    }
    let s3 = dir.path().join("s3.pem");
    let (r, out) = resumed(&b, &ca, None, &s3);
    assert!(!r, "new session on B\n{out}");
    let (r, out) = resumed(&a, &ca, Some(&s3), &s2);
    assert!(r, "B's ticket after the rotation resumes on A\n{out}");
    let (r, out) = resumed(&b, &ca, Some(&s1), &s2);
    assert!(r, "the previous epoch's ticket still resumes\n{out}");
    let m = a.padis.metrics();
    assert!(m.contains("padis_l4_sync_ticket_keys_received_total"), "{m}");
    drop(c);
}

/// Mistakes in client authentication, backend certificates and `[tls]` are errors with file:line and field.
#[test]
fn config_errors_name_file_and_line() {
    let dir = temp_dir();
    let site = Pki::new(dir.path());
    site.leaf("site", &["api.example.com"]);
    site.client_leaf("client", "c", "o", 3);
    std::fs::write(dir.path().join("empty.pem"), "").unwrap();
    std::fs::write(dir.path().join("bad.crl"), "-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n").unwrap();
    let base = "[[certificate]]\nname = \"site\"\ncert = \"site.pem\"\nkey = \"site.key\"\n\
                [[listener]]\nname = \"l\"\nbind = \"127.0.0.1:0\"\n[listener.tls]\n";
    let check = |extra: &str| {
        let text = format!("{base}{extra}");
        match padis_model::parse_config(&text, "mtls.toml", dir.path()) {
            Ok(_) => String::new(),
            Err(e) => e.to_string(),
        }
    };
    assert_eq!(check("[listener.tls.client_auth]\nmode = \"required\"\nca = \"ca.pem\"\n"), "");
    let cases: [(&str, &str); 9] = [
        ("[listener.tls.client_auth]\nmode = \"required\"\nca = \"empty.pem\"\n", "mtls.toml:11:1: listener[0].tls.client_auth.ca:"),
        ("[listener.tls.client_auth]\nmode = \"required\"\nca = \"nope.pem\"\n", "listener[0].tls.client_auth.ca:"),
        ("[listener.tls.client_auth]\nmode = \"required\"\nca = \"ca.pem\"\ncrl = [\"bad.crl\"]\n", "mtls.toml:12:8: listener[0].tls.client_auth.crl[0]:"),
        ("[listener.tls.client_auth]\nmode = \"required\"\nca = \"ca.pem\"\nsubject_header = \"X-Forwarded-For\"\n", "mtls.toml:12:1: listener[0].tls.client_auth.subject_header: `X-Forwarded-For`: written by the proxy"),
        ("[listener.tls.client_auth]\nmode = \"required\"\nca = \"ca.pem\"\nsubject_header = \"bad header\"\n", "subject_header: `bad header`: not a header field name"),
        ("[listener.tls.client_auth]\nmode = \"sometimes\"\nca = \"ca.pem\"\n", "mtls.toml:10:"),
        ("[[listener.tls.by_name]]\nnames = []\n", "listener[0].tls.by_name[0].names: empty"),
        ("[[listener.tls.by_name]]\nnames = [\"a.example.com\"]\n[[listener.tls.by_name]]\nnames = [\"a.example.com\"]\n", "listener[0].tls.by_name[1].names[0]: `a.example.com` is named by an earlier entry"),
        ("[tls]\nshare_ticket_keys = true\n", "tls.share_ticket_keys: keys are shared over the [l4.sync] channel"),
    ];
    for (extra, want) in cases {
        let e = check(extra);
        assert!(e.contains(want), "{extra}: {e}");
    }
    assert!(check("[tls]\nticket_key_rotation = \"500ms\"\n").contains("tls.ticket_key_rotation"));
    let group = "[[group]]\nname = \"g\"\n[group.tls]\nca = \"ca.pem\"\n";
    let e = check(&format!("{group}cert = \"client.pem\"\n"));
    assert!(e.contains("group[0].tls.cert: a client certificate needs its `key`"), "{e}");
    let e = check(&format!("{group}cert = \"client.pem\"\nkey = \"site.pem\"\n"));
    assert!(e.contains("group[0].tls.cert:"), "{e}");
    assert_eq!(check(&format!("{group}cert = \"client.pem\"\nkey = \"client.key\"\n")), "");
}

/// The `${tls_subject}` and `${tls_sni}` variables of header rules (issue 15) with real client certificates, on
/// the fast path's TLS and the hyper path's alike: the verified subject set into a header the route names, the
/// client's own copy of it replaced; without a certificate (an `optional` listener) the header is not written at
/// all, even when the client sends one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_subject_variable_of_header_rules_on_both_paths() {
    let dir = temp_dir();
    let site = Pki::new(dir.path());
    site.leaf("site", &["api.example.com"]);
    std::fs::create_dir_all(dir.path().join("partners")).unwrap();
    let partners = Pki::new(&dir.path().join("partners"));
    let good = partners.client_leaf("good", "partner-1", "Partner Bank", 7);
    let good = Client(good.0, good.1);
    let subject = openssl_subject(&good.0);
    let b = Backend::start("b").await;
    let mut cfg = String::new();
    for (name, ip, fast) in [("fast", "127.0.0.1", true), ("hyper", "127.0.0.2", false)] {
        cfg.push_str(&format!(
            "[[listener]]\nname = \"{name}\"\nbind = \"{ip}:0\"\nfast_path = {fast}\n[listener.tls]\n\
             [listener.tls.client_auth]\nmode = \"optional\"\nca = \"partners/ca.pem\"\n"
        ));
    }
    cfg.push_str(&format!(
        "[[certificate]]\nname = \"site\"\ncert = \"site.pem\"\nkey = \"site.key\"\n\
         [[route]]\nname = \"all\"\ngroup = \"g\"\n[route.headers]\n\
         request_set = {{ \"x-subject\" = \"${{tls_subject}}\", \"x-sni\" = \"sni=${{tls_sni}} ${{scheme}}\" }}\n\
         [[group]]\nname = \"g\"\n[[group.backend]]\naddr = \"{}\"\n",
        b.addr
    ));
    let p = Proxy::start(&cfg, dir.path()).await;
    let ca = site.ca_pem.clone();
    for l in ["fast", "hyper"] {
        let (ok, body) = curl_to(p.addr(l), &ca, "api.example.com", Some(&good), &["X-Subject: CN=admin"]).await;
        assert!(ok, "{l}: {body}");
        assert_eq!(seen(&body, "x-subject").as_deref(), Some(subject.as_str()), "{l}: {body}");
        assert_eq!(seen(&body, "x-sni").as_deref(), Some("sni=api.example.com https"), "{l}: {body}");
        let (ok, body) = curl_to(p.addr(l), &ca, "api.example.com", None, &["X-Subject: CN=admin"]).await;
        assert!(ok, "{l}: {body}");
        assert_eq!(seen(&body, "x-subject"), None, "{l}: no certificate, no subject: {body}");
    }
    p.stop().await;
}
