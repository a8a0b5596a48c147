//! L7 proxy TLS: certificates by SNI (exact, wildcard, default), ALPN h2/http1.1, curl over TLS, session
//! resumption, certificate swap by a new snapshot, TLS to backends, garbage instead of a ClientHello.

use std::time::Duration;

use padis_tests::l7::{curl, pem_der, raw_exchange, temp_dir, tls_connect, tls_get, tls_get_h2, Backend, Pki, Proxy};

fn config(dir: &std::path::Path, backend: &Backend, default: &str, extra_cert: &str) -> String {
    let _ = dir;
    format!(
        "[[listener]]
name = \"tls\"
bind = \"127.0.0.1:0\"
[listener.tls]
default_certificate = \"{default}\"
[[listener]]
name = \"plain\"
bind = \"127.0.0.2:0\"
[[certificate]]
name = \"api\"
cert = \"api.pem\"
key = \"api.key\"
[[certificate]]
name = \"wild\"
cert = \"wild.pem\"
key = \"wild.key\"
[[certificate]]
name = \"fallback\"
cert = \"fallback.pem\"
key = \"fallback.key\"
{extra_cert}
[[route]]
name = \"all\"
group = \"g\"
[[group]]
name = \"g\"
[[group.backend]]
addr = \"{}\"
",
        backend.addr
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_alpn_default_and_curl() {
    let dir = temp_dir();
    let pki = Pki::new(dir.path());
    let (api_pem, _) = pki.leaf("api", &["api.example.com"]);
    let (wild_pem, _) = pki.leaf("wild", &["*.example.com"]);
    let (fb_pem, _) = pki.leaf("fallback", &["fallback.test"]);
    let b = Backend::start("b").await;
    let p = Proxy::start(&config(dir.path(), &b, "fallback", ""), dir.path()).await;
    let addr = p.addr("tls");

    let h2 = pki.client_config(&["h2", "http/1.1"]);
    let info = tls_connect(addr, h2.clone(), "api.example.com").await.expect("tls");
    assert_eq!(info.leaf_der, pem_der(&api_pem), "exact SNI picks the api certificate");
    assert_eq!(info.alpn.as_deref(), Some("h2"));
    let a = tls_get_h2(info, "api.example.com", "/x").await;
    assert_eq!(a.status, 200);
    assert_eq!(a.seen_header("x-forwarded-proto").as_deref(), Some("https"));

    let h1 = pki.client_config(&["http/1.1"]);
    let info = tls_connect(addr, h1.clone(), "shop.example.com").await.expect("tls");
    assert_eq!(info.leaf_der, pem_der(&wild_pem), "wildcard");
    assert_eq!(info.alpn.as_deref(), Some("http/1.1"));
    let a = tls_get(info, "shop.example.com", "/").await;
    assert_eq!(a.status, 200);

    // Unknown name: the listener default (which the client does not accept for that name).
    let err = tls_connect(addr, h1.clone(), "unknown.org").await.err().expect("name mismatch");
    assert!(err.to_string().contains("NotValidForName") || err.to_string().contains("certificate"), "{err}");
    let info = tls_connect(addr, h1.clone(), "fallback.test").await.expect("tls");
    assert_eq!(info.leaf_der, pem_der(&fb_pem));

    // curl, h2 and http/1.1 over TLS, verifying against the test CA.
    let resolve = format!("api.example.com:{}:127.0.0.1", addr.port());
    let url = format!("https://api.example.com:{}/curl", addr.port());
    let ca = pki.ca_pem.to_string_lossy().to_string();
    let (ok, out, err) =
        curl(&["--cacert", &ca, "--resolve", &resolve, "--http2", "-w", "%{http_version}", &url]).await;
    assert!(ok, "{err}");
    assert!(out.contains("backend=b") && out.ends_with('2'), "{out}");
    let (ok, out, err) = curl(&[
        "--cacert",
        &ca,
        "--resolve",
        &resolve,
        "--http1.1",
        "--tlsv1.2",
        "--tls-max",
        "1.2",
        "-w",
        "%{http_version}",
        &url,
    ])
    .await;
    assert!(ok, "{err}");
    assert!(out.ends_with("1.1"), "{out}");
    assert!(p.metric("padis_tls_handshakes_total", &[("listener", "tls"), ("version", "TLSv1.2")]) >= 1.0);
    assert!(p.metric("padis_tls_handshakes_total", &[("listener", "tls"), ("version", "TLSv1.3")]) >= 1.0);
    assert!(p.metric("padis_certificate_expiry_timestamp_seconds", &[("certificate", "api")]) > 1.0e9);

    // Session resumption: the second connection with the same client config resumes.
    let cfg = pki.client_config(&["http/1.1"]);
    let first = tls_connect(addr, cfg.clone(), "api.example.com").await.expect("tls");
    let _ = tls_get(first, "api.example.com", "/").await;
    let second = tls_connect(addr, cfg.clone(), "api.example.com").await.expect("tls");
    assert_eq!(second.stream.get_ref().1.handshake_kind(), Some(rustls::HandshakeKind::Resumed));
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_instead_of_client_hello_and_certificate_swap() {
    let dir = temp_dir();
    let pki = Pki::new(dir.path());
    pki.leaf("api", &["api.example.com"]);
    pki.leaf("wild", &["*.example.com"]);
    pki.leaf("fallback", &["fallback.test"]);
    let b = Backend::start("b").await;
    let mut p = Proxy::start(&config(dir.path(), &b, "fallback", ""), dir.path()).await;
    let addr = p.addr("tls");
    let out = raw_exchange(addr, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", Duration::from_secs(3)).await;
    assert!(!out.starts_with(b"HTTP/1.1 200"), "plaintext on a TLS listener must not be served");
    let out = raw_exchange(addr, &[0x16, 0x03, 0x01, 0x00, 0x05, 1, 2, 3, 4, 5], Duration::from_secs(3)).await;
    assert!(out.is_empty() || out[0] == 0x15, "garbage gets an alert or a close");
    // The server counts the failed handshake when its task ends, which may be after the client saw the close.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while p.metric("padis_tls_handshake_errors_total", &[("listener", "tls")]) < 2.0 {
        assert!(std::time::Instant::now() < deadline, "two failed handshakes not counted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cfg = pki.client_config(&["http/1.1"]);
    let kept = tls_connect(addr, cfg.clone(), "api.example.com").await.expect("still serving");

    // Swap: a new certificate for api.example.com in a new snapshot.
    let (new_pem, _) = pki.leaf("api2", &["api.example.com"]);
    let swapped = config(dir.path(), &b, "fallback", "")
        .replace("cert = \"api.pem\"", "cert = \"api2.pem\"")
        .replace("key = \"api.key\"", "key = \"api2.key\"");
    p.publish_settled(&swapped).await;
    let info = tls_connect(addr, pki.client_config(&["http/1.1"]), "api.example.com").await.expect("tls");
    assert_eq!(info.leaf_der, pem_der(&new_pem), "new handshakes get the new certificate");
    assert_eq!(tls_get(kept, "api.example.com", "/").await.status, 200, "an old connection keeps working");
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_h2_to_backends() {
    let dir = temp_dir();
    let pki = Pki::new(dir.path());
    pki.leaf("backend", &["backend.internal"]);
    let tls_backend = Backend::start_with("tlsb", Some(pki.server_config("backend"))).await;
    let h2_backend = Backend::start("h2b").await;
    let ca = pki.ca_pem.display();
    let other_dir = dir.path().join("other");
    std::fs::create_dir(&other_dir).unwrap();
    let other = Pki::new(&other_dir);
    let cfg = format!(
        "[[listener]]
name = \"web\"
bind = \"127.0.0.1:0\"
[[route]]
name = \"tls\"
path = \"/tls\"
group = \"tls\"
[[route]]
name = \"tls-h2\"
path = \"/tlsh2\"
group = \"tlsh2\"
[[route]]
name = \"bad-ca\"
path = \"/badname\"
group = \"badname\"
[[route]]
name = \"h2c\"
path = \"/h2c\"
group = \"h2c\"
[[route]]
name = \"insecure\"
path = \"/insecure\"
group = \"insecure\"
[[route]]
name = \"untrusted\"
path = \"/untrusted\"
group = \"untrusted\"
[[group]]
name = \"insecure\"
tls = {{ insecure_skip_verify = true }}
[[group.backend]]
addr = \"{t}\"
[[group]]
name = \"untrusted\"
retries = 0
tls = {{ ca = \"{other_ca}\", server_name = \"backend.internal\" }}
[[group.backend]]
addr = \"{t}\"
[[group]]
name = \"tls\"
tls = {{ ca = \"{ca}\", server_name = \"backend.internal\" }}
[[group.backend]]
addr = \"{t}\"
[[group]]
name = \"tlsh2\"
protocol = \"h2\"
tls = {{ ca = \"{ca}\", server_name = \"backend.internal\" }}
[[group.backend]]
addr = \"{t}\"
[[group]]
name = \"badname\"
retries = 0
tls = {{ ca = \"{ca}\", server_name = \"other.internal\" }}
[[group.backend]]
addr = \"{t}\"
[[group]]
name = \"h2c\"
protocol = \"h2\"
[[group.backend]]
addr = \"{h}\"
",
        t = tls_backend.addr,
        h = h2_backend.addr,
        other_ca = other.ca_pem.display(),
    );
    let p = Proxy::start(&cfg, dir.path()).await;
    let web = p.addr("web");
    let a = padis_tests::l7::get(web, "x", "/tls").await;
    assert_eq!((a.status, a.backend().as_str()), (200, "tlsb"));
    assert!(a.body.contains("version=HTTP/1.1"), "{}", a.body);
    let a = padis_tests::l7::get(web, "x", "/tlsh2").await;
    assert_eq!(a.status, 200);
    assert!(a.body.contains("version=HTTP/2.0"), "{}", a.body);
    let a = padis_tests::l7::get(web, "x", "/badname").await;
    assert_eq!(a.status, 502, "certificate not valid for server_name");
    let a = padis_tests::l7::get(web, "x", "/insecure").await;
    assert_eq!((a.status, a.backend().as_str()), (200, "tlsb"), "insecure_skip_verify accepts any certificate");
    let a = padis_tests::l7::get(web, "x", "/untrusted").await;
    assert_eq!(a.status, 502, "a certificate from another CA is not trusted");
    let a = padis_tests::l7::get(web, "x", "/h2c").await;
    assert_eq!(a.status, 200);
    assert!(a.body.contains("version=HTTP/2.0"), "{}", a.body);
    p.stop().await;
}
