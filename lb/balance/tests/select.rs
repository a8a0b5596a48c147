//! Distribution of every algorithm through the public `GroupBalancer` / `Balancers` API.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use http::header::{COOKIE, SET_COOKIE};
use http::{HeaderMap, HeaderValue};
use padis_balance::{Balancers, HealthRegistry, SelectCtx};
use padis_model::{parse_config, Snapshot};

fn snapshot(groups: &str, generation: u64) -> Snapshot {
    let valid = parse_config(groups, "test.toml", Path::new(".")).unwrap_or_else(|e| panic!("{e}"));
    Snapshot::new(valid, generation, Vec::new())
}

fn group_toml(name: &str, extra: &str, backends: &[(&str, u32)]) -> String {
    let mut s = format!("[[group]]\nname = \"{name}\"\n{extra}\n");
    for (addr, w) in backends {
        s += &format!("[[group.backend]]\naddr = \"{addr}\"\nweight = {w}\n");
    }
    s
}

fn build(text: &str) -> (Balancers, HealthRegistry) {
    let health = HealthRegistry::new(&prometheus::Registry::new()).unwrap();
    let b = Balancers::build(&snapshot(text, 1), &health, None);
    (b, health)
}

fn ctx<'a>(ip: &str, headers: &'a HeaderMap) -> SelectCtx<'a> {
    SelectCtx { client_ip: ip.parse().unwrap(), headers }
}

const A: &str = "127.0.0.1:1001";
const B: &str = "127.0.0.1:1002";
const C: &str = "127.0.0.1:1003";
const D: &str = "127.0.0.1:1004";

fn port(a: SocketAddr) -> u16 {
    a.port()
}

#[test]
fn round_robin_exact_and_smooth() {
    let (bal, _h) = build(&group_toml("g", "", &[(A, 5), (B, 1), (C, 1)]));
    let g = bal.group("g").unwrap();
    let h = HeaderMap::new();
    let seq: Vec<u16> = (0..7).map(|_| port(g.select(&ctx("10.0.0.1", &h), &[]).unwrap().backend.addr)).collect();
    assert_eq!(seq, [1001, 1001, 1002, 1001, 1003, 1001, 1001], "smooth interleave like nginx");
    let mut n = HashMap::new();
    for _ in 0..700 {
        *n.entry(port(g.select(&ctx("10.0.0.1", &h), &[]).unwrap().backend.addr)).or_insert(0) += 1;
    }
    assert_eq!((n[&1001], n[&1002], n[&1003]), (500, 100, 100));
    // Excluded backends (already tried by a retry) are skipped.
    let ex = [A.parse().unwrap()];
    for _ in 0..20 {
        assert_ne!(g.select(&ctx("10.0.0.1", &h), &ex).unwrap().backend.addr.port(), 1001);
    }
    let all: Vec<SocketAddr> = [A, B, C].iter().map(|a| a.parse().unwrap()).collect();
    assert!(g.select(&ctx("10.0.0.1", &h), &all).is_none());
}

#[test]
fn draining_and_zero_weight_never_picked() {
    let text = format!(
        "{}[[group.backend]]\naddr = \"{C}\"\ndraining = true\n",
        group_toml("g", "balance = \"least_request\"", &[(A, 1), (B, 0)])
    );
    let (bal, _h) = build(&text);
    let g = bal.group("g").unwrap();
    let h = HeaderMap::new();
    for _ in 0..300 {
        assert_eq!(g.select(&ctx("10.0.0.1", &h), &[]).unwrap().backend.addr.port(), 1001);
    }
}

#[test]
fn least_request_favours_least_loaded() {
    let (bal, _h) = build(&group_toml("g", "balance = \"least_request\"", &[(A, 1), (B, 1), (C, 1), (D, 1)]));
    let g = bal.group("g").unwrap();
    let h = HeaderMap::new();
    let busy: Vec<_> = (0..20).map(|_| g.backends()[0].begin()).collect();
    let mut n = [0usize; 4];
    for _ in 0..2000 {
        let p = g.select(&ctx("10.0.0.1", &h), &[]).unwrap();
        n[(p.backend.addr.port() - 1001) as usize] += 1;
    }
    assert_eq!(n[0], 0, "the loaded backend loses every comparison: {n:?}");
    assert!(n[1..].iter().all(|&x| x > 500), "{n:?}");
    drop(busy);
    assert_eq!(g.backends()[0].in_flight(), 0);
    // Picks that stay in flight spread evenly.
    let held: Vec<_> = (0..400).map(|_| g.select(&ctx("10.0.0.1", &h), &[]).unwrap().backend.begin()).collect();
    let loads: Vec<usize> = g.backends().iter().map(|b| b.in_flight()).collect();
    let (min, max) = (loads.iter().min().unwrap(), loads.iter().max().unwrap());
    assert!(max - min <= 4, "P2C keeps loads close: {loads:?}");
    drop(held);
}

#[test]
fn least_request_respects_weights() {
    let (bal, _h) = build(&group_toml("g", "balance = \"least_request\"", &[(A, 3), (B, 1)]));
    let g = bal.group("g").unwrap();
    let h = HeaderMap::new();
    let mut held = Vec::new();
    for _ in 0..400 {
        held.push(g.select(&ctx("10.0.0.1", &h), &[]).unwrap().backend.begin());
    }
    let a = g.backends()[0].in_flight() as f64;
    let b = g.backends()[1].in_flight() as f64;
    assert!((2.5..=3.5).contains(&(a / b)), "in-flight per weight stays even: {a} vs {b}");
}

#[test]
fn maglev_same_key_same_backend_and_spread() {
    let (bal, _h) = build(&group_toml("g", "balance = \"maglev\"", &[(A, 1), (B, 1), (C, 1), (D, 1)]));
    let g = bal.group("g").unwrap();
    let h = HeaderMap::new();
    let mut n = [0usize; 4];
    for i in 0..2000u32 {
        let ip = IpAddr::from([10, 1, (i >> 8) as u8, i as u8]);
        let c = SelectCtx { client_ip: ip, headers: &h };
        let first = g.select(&c, &[]).unwrap().backend.addr;
        for _ in 0..3 {
            assert_eq!(g.select(&c, &[]).unwrap().backend.addr, first);
        }
        n[(first.port() - 1001) as usize] += 1;
    }
    assert!(n.iter().all(|&x| (400..=600).contains(&x)), "keys spread: {n:?}");
    // IPv4-mapped IPv6 is the same client.
    let v4 = g.select(&ctx("10.9.9.9", &h), &[]).unwrap().backend.addr;
    let mapped = g.select(&ctx("::ffff:10.9.9.9", &h), &[]).unwrap().backend.addr;
    assert_eq!(v4, mapped);
    // A rebuilt balancer (another node, a restart) maps the same way.
    let (bal2, _h2) = build(&group_toml("g", "balance = \"maglev\"", &[(D, 1), (C, 1), (B, 1), (A, 1)]));
    for i in 0..200u32 {
        let ip = IpAddr::from([10, 2, 0, i as u8]);
        let c = SelectCtx { client_ip: ip, headers: &h };
        assert_eq!(
            g.select(&c, &[]).unwrap().backend.addr,
            bal2.group("g").unwrap().select(&c, &[]).unwrap().backend.addr
        );
    }
}

#[test]
fn maglev_header_and_cookie_keys() {
    let text = group_toml("h", "balance = \"maglev\"\nhash_key = \"header:X-User\"", &[(A, 1), (B, 1), (C, 1)])
        + &group_toml("c", "balance = \"maglev\"\nhash_key = \"cookie:session\"", &[(A, 1), (B, 1), (C, 1)]);
    let (bal, _h) = build(&text);
    for (group, header, fmt) in [("h", "x-user", "{}"), ("c", "cookie", "a=1; session={}; z=2")] {
        let g = bal.group(group).unwrap();
        let mut seen = std::collections::HashSet::new();
        for user in 0..60 {
            let mut hm = HeaderMap::new();
            hm.insert(header, HeaderValue::from_str(&fmt.replace("{}", &format!("user{user}"))).unwrap());
            // Same key from different client IPs -> same backend.
            let a = g.select(&ctx("10.0.0.1", &hm), &[]).unwrap().backend.addr;
            let b = g.select(&ctx("192.168.7.7", &hm), &[]).unwrap().backend.addr;
            assert_eq!(a, b, "{group}: key decides, not the client IP");
            seen.insert(a);
        }
        assert_eq!(seen.len(), 3, "{group}: keys spread over all backends");
    }
}

#[test]
fn maglev_skips_ejected_backend_and_others_stay() {
    let passive = "balance = \"maglev\"\n[group.passive]\nconsecutive_failures = 1\nbase_ejection = \"30s\"\nmax_ejection = \"60s\"";
    let (bal, _h) = build(&group_toml("g", passive, &[(A, 1), (B, 1), (C, 1), (D, 1)]));
    let g = bal.group("g").unwrap();
    let h = HeaderMap::new();
    let ips: Vec<IpAddr> = (0..400u32).map(|i| IpAddr::from([10, 3, (i >> 8) as u8, i as u8])).collect();
    let before: Vec<SocketAddr> =
        ips.iter().map(|&ip| g.select(&SelectCtx { client_ip: ip, headers: &h }, &[]).unwrap().backend.addr).collect();
    g.backends()[1].health.report_failure();
    assert!(!g.backends()[1].health.is_usable());
    for (ip, old) in ips.iter().zip(&before) {
        let now = g.select(&SelectCtx { client_ip: *ip, headers: &h }, &[]).unwrap().backend.addr;
        if old.port() == 1002 {
            assert_ne!(now.port(), 1002);
        } else {
            assert_eq!(now, *old, "keys of healthy backends do not move");
        }
    }
}

fn cookie_headers(v: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(COOKIE, HeaderValue::from_str(v).unwrap());
    h
}

#[test]
fn sticky_cookie_round_trip() {
    let passive = "balance = \"sticky\"\n[group.passive]\nconsecutive_failures = 1\nbase_ejection = \"30s\"\nmax_ejection = \"60s\"";
    let (bal, _h) = build(&group_toml("g", passive, &[(A, 1), (B, 1), (C, 1)]));
    let g = bal.group("g").unwrap();
    let none = HeaderMap::new();
    let first = g.select(&ctx("10.0.0.1", &none), &[]).unwrap();
    let set = first.set_cookie.expect("a new client gets a cookie").to_str().unwrap().to_string();
    assert!(set.starts_with("padis_sticky="), "{set}");
    assert!(!set.contains("127.0.0.1") && !set.contains("1001"), "the cookie does not reveal the address: {set}");
    let cookie = set.split(';').next().unwrap().to_string();
    // Sent back (among other cookies): always the same backend, no new cookie.
    let h = cookie_headers(&format!("other=1; {cookie}"));
    for _ in 0..50 {
        let p = g.select(&ctx("10.0.0.1", &h), &[]).unwrap();
        assert_eq!(p.backend.addr, first.backend.addr);
        assert!(p.set_cookie.is_none());
    }
    // A response header built from it is a valid Set-Cookie.
    let mut resp = HeaderMap::new();
    resp.insert(SET_COOKIE, HeaderValue::from_str(&set).unwrap());
    // Its backend is ejected: another one, with a new cookie.
    first.backend.health.report_failure();
    let p = g.select(&ctx("10.0.0.1", &h), &[]).unwrap();
    assert_ne!(p.backend.addr, first.backend.addr);
    assert!(p.set_cookie.unwrap().to_str().unwrap().contains(p.backend.sticky_id()));
    // An unknown id: round robin and a cookie.
    let p = g.select(&ctx("10.0.0.1", &cookie_headers("padis_sticky=ffffffffffff")), &[]).unwrap();
    assert!(p.set_cookie.is_some());
}

#[test]
fn sticky_custom_cookie_name_and_spread() {
    let (bal, _h) = build(&group_toml("g", "balance = \"sticky\"\nsticky_cookie = \"SRV\"", &[(A, 1), (B, 1)]));
    let g = bal.group("g").unwrap();
    let none = HeaderMap::new();
    let mut ports = std::collections::HashSet::new();
    for _ in 0..4 {
        let p = g.select(&ctx("10.0.0.1", &none), &[]).unwrap();
        assert!(p.set_cookie.unwrap().to_str().unwrap().starts_with("SRV="));
        ports.insert(p.backend.addr.port());
    }
    assert_eq!(ports.len(), 2, "new clients are spread by round robin");
}

#[test]
fn all_ejected_falls_back_to_panic_mode_but_never_to_excluded_or_down() {
    let passive = "[group.passive]\nconsecutive_failures = 1\nbase_ejection = \"30s\"\nmax_ejection = \"60s\"";
    let (bal, _h) = build(&group_toml("g", passive, &[(A, 1), (B, 1), (C, 0)]));
    let g = bal.group("g").unwrap();
    let h = HeaderMap::new();
    g.backends()[0].health.report_failure();
    // One ejected: only B.
    for _ in 0..10 {
        assert_eq!(g.select(&ctx("10.0.0.1", &h), &[]).unwrap().backend.addr.port(), 1002);
    }
    // B usable but already tried by this request (it just failed): the ejected A, up by its check, is tried
    // rather than failing the request; with both tried, nothing (never C, weight 0).
    assert_eq!(g.select(&ctx("10.0.0.1", &h), &[B.parse().unwrap()]).unwrap().backend.addr.port(), 1001);
    assert!(g.select(&ctx("10.0.0.1", &h), &[A.parse().unwrap(), B.parse().unwrap()]).is_none());
    // All ejected: traffic still flows to A and B (not to C, weight 0).
    g.backends()[1].health.report_failure();
    let mut seen = std::collections::HashSet::new();
    for _ in 0..10 {
        seen.insert(g.select(&ctx("10.0.0.1", &h), &[]).unwrap().backend.addr.port());
    }
    assert_eq!(seen, [1001, 1002].into_iter().collect());
}
