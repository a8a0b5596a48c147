//! Owner names keep the zone's case (as BIND answers), on the fast path and the general path, whatever case the
//! query uses; CH TXT version.bind / id.server answer what `[dns]` says, or REFUSED when unset (Knot's answer
//! when they are disabled).

mod common;

use common::{kdig, parse, Dig, Server};

/// dig (kdig sends every query name in lower case; dig sends it as given).
fn dig(addr: std::net::SocketAddr, q: &str, t: &str) -> Dig {
    let out = std::process::Command::new("dig")
        .args([format!("@{}", addr.ip()), "-p".into(), addr.port().to_string(), "+time=2".into(), "+tries=1".into()])
        .args([q, t])
        .output()
        .expect("dig (bind9-dnsutils)");
    parse(&String::from_utf8_lossy(&out.stdout))
}

const ZONE: &str =
    "$ORIGIN case.test.\n$TTL 60\n@ IN SOA ns.case.test. admin.case.test. 1 60 10 600 5\n@ IN NS ns.case.test.\n\
                    ns IN A 192.0.2.1\nMixed.Case.test. IN A 192.0.2.2\nlower IN A 192.0.2.3\nAlias IN CNAME Mixed\n";

fn config(chaos: &str) -> String {
    format!(
        "[dns]\nlisten = [\"127.0.0.1:0\"]\nstate_dir = \"@DIR@/state\"\n{chaos}\n\
         [[dns.zone]]\nname = \"case.test\"\nfile = \"case.zone\"\n"
    )
}

fn owners(d: &Dig) -> Vec<String> {
    d.answer.iter().filter_map(|l| l.split_whitespace().next().map(str::to_string)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_keep_the_zones_case() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("case.zone"), ZONE).unwrap();
    let s = Server::start(dir.path(), &config("")).await;
    let a = s.addr();
    for q in ["mixed.case.test", "MIXED.CASE.TEST", "Mixed.Case.test", "mIxEd.case.TEST"] {
        let d = dig(a, q, "A");
        assert_eq!(owners(&d), ["Mixed.Case.test."], "query {q}: {}", d.raw);
        assert!(d.raw.contains(&format!(";{q}.")), "the question echoes the query's case: {}", d.raw);
    }
    // Through a CNAME: both owners as written.
    let d = dig(a, "alias.case.test", "A");
    assert_eq!(owners(&d), ["Alias.case.test.", "Mixed.Case.test."], "{}", d.raw);
    // A name written in lower case answers in lower case, also to an upper-case query.
    let d = dig(a, "LOWER.CASE.TEST", "A");
    assert_eq!(owners(&d), ["lower.case.test."], "{}", d.raw);
    assert_eq!(d.data("A"), ["192.0.2.3"]);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_txt_is_configurable() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("case.zone"), ZONE).unwrap();
    let s = Server::start(dir.path(), &config("")).await;
    for q in ["version.bind", "id.server", "hostname.bind", "version.server", "authors.bind"] {
        assert_eq!(kdig(s.addr(), &["-c", "CH", q, "TXT"]).status, "REFUSED", "{q} unset");
    }
    s.stop().await;
    let s = Server::start(dir.path(), &config("version = \"gateway DNS\"\nidentity = \"gw-1\"")).await;
    let a = s.addr();
    for (q, want) in [
        ("version.bind", "\"gateway DNS\""),
        ("VERSION.SERVER", "\"gateway DNS\""),
        ("id.server", "\"gw-1\""),
        ("hostname.bind", "\"gw-1\""),
    ] {
        let d = kdig(a, &["-c", "CH", q, "TXT"]);
        assert_eq!(d.status, "NOERROR", "{q}: {}", d.raw);
        assert_eq!(d.data("TXT"), [want], "{q}: {}", d.raw);
        assert!(d.answer[0].contains("\tCH\t"), "{}", d.raw);
    }
    assert_eq!(kdig(a, &["-c", "CH", "authors.bind", "TXT"]).status, "REFUSED");
    s.stop().await;
}
