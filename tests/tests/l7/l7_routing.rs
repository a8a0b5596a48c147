//! L7 proxy: HTTP/1.1 and h2c through the proxy, routing precedence, weighted split, redirect, forwarding headers,
//! hop-by-hop removal, local error answers (404, 502, 503, 504).

use std::time::Duration;

use padis_tests::l7::{curl, get, group_toml, temp_dir, Backend, H1Conn, H2Conn, Proxy};

fn listener(name: &str) -> String {
    listener_on(name, "127.0.0.1")
}

fn listener_on(name: &str, ip: &str) -> String {
    format!("[[listener]]\nname = \"{name}\"\nbind = \"{ip}:0\"\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h1_h2c_and_curl_reach_backend() {
    let dir = temp_dir();
    let b = Backend::start("b1").await;
    let cfg = format!("{}[[route]]\nname = \"all\"\ngroup = \"g\"\n{}", listener("web"), group_toml("g", &[&b], ""));
    let p = Proxy::start(&cfg, dir.path()).await;
    let addr = p.addr("web");

    let mut c = H1Conn::connect(addr).await;
    for _ in 0..3 {
        let a = c.get("example.com", "/hello?x=1").await.expect("h1");
        assert_eq!(a.status, 200);
        assert_eq!(a.backend(), "b1");
        assert!(a.body.contains("path=/hello?x=1"), "{}", a.body);
    }
    let mut h2 = H2Conn::connect(addr).await;
    let a = h2.get("example.com", "/h2").await.expect("h2c");
    assert_eq!(a.status, 200);
    assert_eq!(a.seen_header("host").as_deref(), Some("example.com"));

    let url = format!("http://{addr}/curl");
    let (ok, out, err) = curl(&["--http2-prior-knowledge", "-H", "Host: example.com", &url]).await;
    assert!(ok, "{err}");
    assert!(out.contains("backend=b1"), "{out}");
    let (ok, out, err) = curl(&["--http1.1", "-H", "Host: example.com", &url]).await;
    assert!(ok, "{err}");
    assert!(out.contains("path=/curl"), "{out}");
    assert!(p.metric("padis_http_requests_total", &[("listener", "web"), ("route", "all"), ("code", "200")]) >= 6.0);
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_precedence_and_listener_scoping() {
    let dir = temp_dir();
    let (bany, bapi, bwild, bexact, badmin) = (
        Backend::start("any").await,
        Backend::start("api").await,
        Backend::start("wild").await,
        Backend::start("exact").await,
        Backend::start("admin").await,
    );
    let cfg = format!(
        "{}{}
[[route]]
name = \"any\"
group = \"any\"
[[route]]
name = \"api\"
path = \"/api\"
group = \"api\"
[[route]]
name = \"wild\"
host = \"*.example.com\"
group = \"wild\"
[[route]]
name = \"exact\"
host = \"www.example.com\"
path = \"/\"
group = \"exact\"
[[route]]
name = \"admin\"
listeners = [\"internal\"]
path = \"/admin\"
group = \"admin\"
{}{}{}{}{}",
        listener("web"),
        listener_on("internal", "127.0.0.2"),
        group_toml("any", &[&bany], ""),
        group_toml("api", &[&bapi], ""),
        group_toml("wild", &[&bwild], ""),
        group_toml("exact", &[&bexact], ""),
        group_toml("admin", &[&badmin], ""),
    );
    let p = Proxy::start(&cfg, dir.path()).await;
    let web = p.addr("web");
    let internal = p.addr("internal");
    let cases = [
        ("other.org", "/", "any"),
        ("other.org", "/api", "api"),
        ("other.org", "/api/v1/x", "api"),
        ("other.org", "/apix", "any"),
        ("a.example.com", "/api", "wild"),
        ("a.b.example.com:8080", "/", "wild"),
        ("www.example.com", "/x", "exact"),
        ("WWW.EXAMPLE.COM:80", "/api", "exact"),
        ("other.org", "/admin", "any"),
    ];
    for (host, path, want) in cases {
        let a = get(web, host, path).await;
        assert_eq!(a.backend(), want, "{host}{path}");
    }
    assert_eq!(get(internal, "other.org", "/admin/x").await.backend(), "admin");
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_split_and_redirect() {
    let dir = temp_dir();
    let (stable, canary) = (Backend::start("stable").await, Backend::start("canary").await);
    let cfg = format!(
        "{}
[[route]]
name = \"split\"
split = [{{ group = \"stable\", weight = 3 }}, {{ group = \"canary\", weight = 1 }}]
[[route]]
name = \"secure\"
host = \"secure.example.com\"
group = \"stable\"
redirect_https = true
https_port = 8443
[[route]]
name = \"secure443\"
host = \"s443.example.com\"
group = \"stable\"
redirect_https = true
{}{}",
        listener("web"),
        group_toml("stable", &[&stable], ""),
        group_toml("canary", &[&canary], ""),
    );
    let p = Proxy::start(&cfg, dir.path()).await;
    let web = p.addr("web");
    let mut c = H1Conn::connect(web).await;
    for _ in 0..400 {
        c.get("x.org", "/").await.expect("req");
    }
    let (s, k) = (stable.hits(), canary.hits());
    assert_eq!(s + k, 400);
    assert!((240..=360).contains(&s), "stable {s} canary {k}");
    let a = c.get("secure.example.com", "/a/b?q=1").await.expect("req");
    assert_eq!(a.status, 308);
    assert_eq!(a.headers["location"], "https://secure.example.com:8443/a/b?q=1");
    let a = c.get("S443.example.com", "/").await.expect("req");
    assert_eq!(a.headers["location"], "https://s443.example.com/");
    assert_eq!(stable.hits() + canary.hits(), 400, "redirects do not reach backends");
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_headers_and_hop_by_hop() {
    let dir = temp_dir();
    let b = Backend::start("b").await;
    let cfg = format!("{}[[route]]\nname = \"r\"\ngroup = \"g\"\n{}", listener("web"), group_toml("g", &[&b], ""));
    let p = Proxy::start(&cfg, dir.path()).await;
    let web = p.addr("web");
    let mut c = H1Conn::connect(web).await;
    let req = http::Request::builder()
        .uri("/h")
        .header("host", "app.example.com")
        .header("x-forwarded-for", "203.0.113.9")
        .header("forwarded", "for=203.0.113.9")
        .header("connection", "keep-alive, x-private")
        .header("x-private", "secret")
        .header("keep-alive", "timeout=5")
        .header("proxy-authorization", "Basic Zm9vOmJhcg==")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let a = c.send(req).await.expect("req");
    assert_eq!(a.status, 200);
    assert_eq!(a.seen_header("x-forwarded-for").as_deref(), Some("203.0.113.9, 127.0.0.1"));
    assert_eq!(a.seen_header("x-forwarded-proto").as_deref(), Some("http"));
    assert_eq!(a.seen_header("x-forwarded-port").as_deref(), Some(web.port().to_string().as_str()));
    assert_eq!(
        a.seen_header("forwarded").as_deref(),
        Some("for=203.0.113.9, for=127.0.0.1;proto=http;host=app.example.com")
    );
    assert_eq!(a.seen_header("host").as_deref(), Some("app.example.com"));
    for h in ["x-private", "keep-alive", "proxy-authorization"] {
        assert!(a.seen_header(h).is_none(), "{h} forwarded: {}", a.body);
    }
    // Forwarded's host= is the Host as received, port included (quoted: ':' is not a token character).
    let authority = format!("app.example.com:{}", web.port());
    let req = http::Request::builder()
        .uri("/h")
        .header("host", authority.as_str())
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let a = c.send(req).await.expect("req with a port in Host");
    assert_eq!(a.status, 200);
    assert_eq!(
        a.seen_header("forwarded").as_deref(),
        Some(format!("for=127.0.0.1;proto=http;host=\"{authority}\"").as_str())
    );
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_answers_404_502_503_504() {
    let dir = temp_dir();
    let b = Backend::start("b").await;
    // A port with nothing listening: bind, read the port, close.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let cfg = format!(
        "{}
[[route]]
name = \"dead\"
path = \"/dead\"
group = \"dead\"
[[route]]
name = \"empty\"
path = \"/empty\"
group = \"empty\"
[[route]]
name = \"slow\"
path = \"/slow\"
group = \"slow\"
[[route]]
name = \"ok\"
host = \"ok.example\"
group = \"slow\"
[[group]]
name = \"dead\"
retries = 0
[[group.backend]]
addr = \"{dead}\"
[[group]]
name = \"empty\"
{}",
        listener("web"),
        group_toml("slow", &[&b], "request_timeout = \"300ms\""),
    );
    let p = Proxy::start(&cfg, dir.path()).await;
    let web = p.addr("web");
    let a = get(web, "nowhere.example", "/nothing").await;
    assert_eq!(a.status, 404);
    let a = get(web, "x", "/dead").await;
    assert_eq!(a.status, 502, "{}", a.body);
    let a = get(web, "x", "/empty").await;
    assert_eq!(a.status, 503);
    let a = get(web, "x", "/slow/2000").await;
    assert_eq!(a.status, 504);
    let a = get(web, "ok.example", "/slow/10").await;
    assert_eq!(a.status, 200);
    assert!(p.metric("padis_upstream_connect_errors_total", &[("group", "dead")]) >= 1.0);
    tokio::time::sleep(Duration::from_millis(10)).await;
    p.stop().await;
}
