//! A pre-signed zone (signed here by BIND's dnssec-keygen + dnssec-signzone) is served as it is: RRSIG, NSEC and
//! DNSKEY answered to queries with the DO bit, none without it, and BIND's `delv` validates positive and
//! negative answers against the zone's key as a trust anchor.

mod common;

use std::process::Command;

use common::{kdig, Server};

const ZONE: &str = "$ORIGIN sec.test.\n$TTL 60\n@ IN SOA ns.sec.test. admin.sec.test. 7 60 10 600 5\n@ IN NS ns\n\
                    ns IN A 192.0.2.1\nwww IN A 192.0.2.80\nWeb IN CNAME www\nsub IN NS ns.sub\n\
                    ns.sub IN A 192.0.2.53\n";

fn run(dir: &std::path::Path, cmd: &mut Command) -> String {
    let out =
        cmd.current_dir(dir).output().expect("bind9-utils (dnssec-keygen, dnssec-signzone; tests/setup installs it)");
    assert!(out.status.success(), "{:?}: {}", cmd, String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn delv(addr: std::net::SocketAddr, anchors: &std::path::Path, name: &str, t: &str) -> String {
    let out = Command::new("delv")
        .args([
            format!("@{}", addr.ip()),
            "-p".into(),
            addr.port().to_string(),
            "-a".into(),
            anchors.display().to_string(),
        ])
        .args(["+root=sec.test", name, t])
        .output()
        .expect("delv (bind9-dnsutils)");
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presigned_zone_served_and_validated() {
    served_and_validated(&[], "NSEC").await;
}

/// NSEC3 (salted, iterated): the closest-encloser proof of an NXDOMAIN and the NODATA proof validate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nsec3_zone_served_and_validated() {
    served_and_validated(&["-3", "aabbccdd", "-H", "2"], "NSEC3").await;
}

async fn served_and_validated(sign_args: &[&str], proof: &str) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ksk = run(
        d,
        Command::new("dnssec-keygen").args(["-q", "-a", "ECDSAP256SHA256", "-f", "KSK", "-n", "ZONE", "sec.test"]),
    );
    let zsk = run(d, Command::new("dnssec-keygen").args(["-q", "-a", "ECDSAP256SHA256", "-n", "ZONE", "sec.test"]));
    std::fs::write(d.join("sec.zone"), format!("{ZONE}$INCLUDE {ksk}.key\n$INCLUDE {zsk}.key\n")).unwrap();
    run(d, Command::new("dnssec-signzone").args(sign_args).args(["-o", "sec.test", "-f", "sec.signed", "sec.zone"]));
    let config = "[dns]\nlisten = [\"127.0.0.1:0\"]\nstate_dir = \"@DIR@/state\"\n[[dns.tsig_key]]\nname = \"upd\"\n\
                  secret = \"dXBkYXRlLXVwZGF0ZS11cGRhdGUtdXBkYXRlLTEyMzQ=\"\n\
                  [[dns.zone]]\nname = \"sec.test\"\nfile = \"sec.signed\"\n\
                  update_key = \"upd\"\n";
    let s = Server::start(d, config).await;
    let a = s.addr();
    let r = s.handle.as_ref().unwrap().report();
    assert!(r.zones[0].error.is_none() && r.zones[0].serial == 7, "{r:?}");

    let with = kdig(a, &["+dnssec", "www.sec.test", "A"]);
    assert_eq!(with.data("A"), ["192.0.2.80"]);
    assert_eq!(with.data("RRSIG").len(), 1, "{}", with.raw);
    let without = kdig(a, &["www.sec.test", "A"]);
    assert!(without.data("RRSIG").is_empty(), "no signatures without DO: {}", without.raw);
    let keys = kdig(a, &["+dnssec", "sec.test", "DNSKEY"]);
    assert_eq!(keys.data("DNSKEY").len(), 2, "{}", keys.raw);
    assert!(!keys.data("RRSIG").is_empty(), "{}", keys.raw);
    let nx = kdig(a, &["+dnssec", "nothere.sec.test", "A"]);
    assert_eq!(nx.status, "NXDOMAIN");
    let proofs = nx.authority.iter().filter(|l| l.contains(&format!("\t{proof}\t"))).count();
    // NSEC: one record may cover both the name and the wildcard; NSEC3: the closest encloser and more.
    assert!(
        proofs >= if proof == "NSEC3" { 2 } else { 1 } && nx.authority.iter().any(|l| l.contains("\tRRSIG\t")),
        "{}",
        nx.raw
    );

    // Dynamic updates would be served unsigned: refused.
    let mut child = Command::new("nsupdate")
        .args(["-t", "3", "-y", "hmac-sha256:upd:dXBkYXRlLXVwZGF0ZS11cGRhdGUtdXBkYXRlLTEyMzQ="])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("nsupdate");
    let script =
        format!("server {} {}\nzone sec.test\nupdate add x.sec.test. 30 A 192.0.2.9\nsend\nquit\n", a.ip(), a.port());
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), script.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success() && text.contains("REFUSED"), "{text}");
    assert_eq!(kdig(a, &["x.sec.test", "A"]).status, "NXDOMAIN");

    // Validation against the KSK as trust anchor.
    let key = std::fs::read_to_string(d.join(format!("{ksk}.key"))).unwrap();
    let line = key.lines().find(|l| l.contains("DNSKEY")).unwrap();
    let f: Vec<&str> = line.split_whitespace().collect();
    let i = f.iter().position(|t| *t == "DNSKEY").unwrap();
    let anchors = d.join("anchors.conf");
    std::fs::write(
        &anchors,
        format!(
            "trust-anchors {{ sec.test. static-key {} {} {} \"{}\"; }};\n",
            f[i + 1],
            f[i + 2],
            f[i + 3],
            f[i + 4..].concat()
        ),
    )
    .unwrap();
    for (name, t, want) in [
        ("www.sec.test", "A", "fully validated"),
        ("Web.sec.test", "A", "fully validated"),
        ("nothere.sec.test", "A", "negative response, fully validated"),
        ("www.sec.test", "TXT", "negative response, fully validated"),
    ] {
        let out = delv(a, &anchors, name, t);
        assert!(out.contains(want), "{name} {t}: {out}");
    }
    s.stop().await;
}
