//! Records generated from the control snapshot: services (A/AAAA of healthy instances, SRV per named port with
//! per-instance host names) and VIPs, with name collisions reported.

use std::net::IpAddr;
use std::sync::Arc;

use hickory_proto::rr::rdata::{A, AAAA, SRV};
use hickory_proto::rr::{Name, RData};
use padis_model::{l4::Vip, Instance, Service, ServicePort};

use crate::names::{label, labels};
use crate::zone::FastMap;

/// One generated record (the zone's generated TTL applies).
#[derive(Debug, Clone, PartialEq)]
pub struct GenRecord {
    /// Owner.
    pub name: Name,
    /// Data.
    pub rdata: RData,
    /// What produced it (for collision reports).
    pub origin: Arc<str>,
}

fn addr_rdata(ip: IpAddr) -> RData {
    match ip {
        IpAddr::V4(v4) => RData::A(A(v4)),
        IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
    }
}

fn under(labels: &[String], zone: &Name) -> Option<Name> {
    let mut n = zone.clone();
    for l in labels.iter().rev() {
        n = n.prepend_label(l.as_str()).ok()?;
    }
    Some(n)
}

/// The records of one service in `zone`.
pub fn service_records(s: &Service, zone: &Name) -> Vec<GenRecord> {
    let origin: Arc<str> = Arc::from(format!("service {}", s.name));
    let Some(base) = under(&labels(&s.name), zone) else { return Vec::new() };
    let live: Vec<_> = s.instances.iter().filter(|i| i.healthy && !i.draining).collect();
    let mut out = Vec::new();
    let mut seen = Vec::new();
    for i in &live {
        if !seen.contains(&i.addr) {
            seen.push(i.addr);
            out.push(GenRecord { name: base.clone(), rdata: addr_rdata(i.addr), origin: origin.clone() });
        }
    }
    let mut hosts = Vec::with_capacity(live.len());
    for i in &live {
        let Ok(host) = base.prepend_label(label(&i.id).as_str()) else { continue };
        out.push(GenRecord {
            name: host.clone(),
            rdata: addr_rdata(i.addr),
            origin: Arc::from(format!("instance {} of service {}", i.id, s.name)),
        });
        hosts.push(host);
    }
    for (pi, p) in s.ports.iter().enumerate() {
        let Some(pname) = &p.name else { continue };
        let owner = base
            .prepend_label(format!("_{}", label(&p.protocol)).as_str())
            .and_then(|n| n.prepend_label(format!("_{}", label(pname)).as_str()));
        let Ok(owner) = owner else { continue };
        for (i, host) in live.iter().zip(&hosts) {
            if let Some(port) = i.ports.get(pi) {
                out.push(GenRecord {
                    name: owner.clone(),
                    rdata: RData::SRV(SRV::new(0, i.weight, *port, host.clone())),
                    origin: origin.clone(),
                });
            }
        }
    }
    out
}

/// The record of one VIP in `zone`.
pub fn vip_records(v: &Vip, zone: &Name) -> Vec<GenRecord> {
    under(&labels(&v.name), zone)
        .map(|n| vec![GenRecord { name: n, rdata: addr_rdata(v.addr), origin: Arc::from(format!("vip {}", v.name)) }])
        .unwrap_or_default()
}

/// Cache of generated records per service, so an unchanged service costs a comparison. Services usually come in
/// the same order snapshot after snapshot: then each is compared with the entry at its position (no hashing),
/// in one contiguous buffer of flattened services read front to back, and the output lists are updated in
/// place (only a changed service's slot is touched). When names shift, the cache is matched by name instead.
#[derive(Default)]
pub struct GenCache {
    /// The services of the last call that were placed in a zone, in their order.
    entries: Vec<CacheEntry>,
    /// The flattened services of `entries`, one after the other.
    arena: Vec<u8>,
    /// `entries[i]` is `services[i]` of the last call (every service was placed, none was an error).
    aligned: bool,
    /// The zones of the last call.
    zones: Vec<(usize, Name, bool)>,
    /// The VIPs of the last call.
    vips: Vec<Vip>,
    /// The output: record groups by zone (the services' groups, then the VIPs' group).
    out: Generated,
    /// Number of service groups at the front of each zone's list in `out`.
    service_groups: FastMap<usize, usize>,
}

struct CacheEntry {
    zone: usize,
    /// Where the service, as [`flatten`] wrote it, lies in the arena.
    at: usize,
    len: usize,
    /// Index of its records in its zone's list.
    slot: usize,
}

/// Generated records of every zone, with problems found.
#[derive(Default)]
pub struct Generated {
    /// Records by zone index.
    pub by_zone: FastMap<usize, Vec<Arc<Vec<GenRecord>>>>,
    /// Services that could not be placed.
    pub errors: Vec<String>,
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_opt(out: &mut Vec<u8>, o: &Option<String>) {
    match o {
        None => out.push(0),
        Some(s) => {
            out.push(1);
            put_str(out, s);
        }
    }
}

/// Writes `s` into `out` as one byte string (lengths before every variable part, so equal strings mean equal
/// services: an exact comparison, not a hash). Comparing a service with a cached one then reads one contiguous
/// buffer instead of chasing every string and vector of a cached copy. Returns the length of the prefix that
/// holds the name and the zone. Appends to `out`.
fn flatten(s: &Service, out: &mut Vec<u8>) -> usize {
    let start = out.len();
    // Destructured so that a new field of the model cannot be left out of the comparison.
    let Service { name, zone, ports, instances, origin } = s;
    put_str(out, name);
    put_opt(out, zone);
    let key = out.len() - start;
    put_opt(out, origin);
    out.extend_from_slice(&(ports.len() as u32).to_le_bytes());
    for p in ports {
        let ServicePort { name, protocol } = p;
        put_opt(out, name);
        put_str(out, protocol);
    }
    out.extend_from_slice(&(instances.len() as u32).to_le_bytes());
    for i in instances {
        let Instance { id, addr, ports, weight, healthy, draining } = i;
        put_str(out, id);
        match addr {
            IpAddr::V4(a) => {
                out.push(4);
                out.extend_from_slice(&a.octets());
            }
            IpAddr::V6(a) => {
                out.push(6);
                out.extend_from_slice(&a.octets());
            }
        }
        out.extend_from_slice(&(ports.len() as u32).to_le_bytes());
        for p in ports {
            out.extend_from_slice(&p.to_le_bytes());
        }
        out.extend_from_slice(&weight.to_le_bytes());
        out.push(u8::from(*healthy) | u8::from(*draining) << 1);
    }
    key
}

/// The length of the name-and-zone prefix of a flattened service.
fn key_len(flat: &[u8]) -> usize {
    let str_end = |at: usize| {
        let len = flat.get(at..at + 4).map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize);
        at + 4 + len
    };
    let after_name = str_end(0);
    match flat.get(after_name) {
        Some(1) => str_end(after_name + 1),
        _ => after_name + 1,
    }
}

impl GenCache {
    /// Generates the records of `services` and `vips` into the generated zones (`zones`: index, apex, generated).
    pub fn generate(&mut self, services: &[Service], vips: &[Vip], zones: &[(usize, Name, bool)]) -> &Generated {
        let positional = self.aligned && self.entries.len() == services.len() && self.zones == zones;
        if !(positional && self.in_place(services)) {
            self.by_name(services, zones);
        }
        self.zones = zones.to_vec();
        let same_vips = self.vips == vips;
        for (zi, zname, generated) in zones {
            if !generated {
                continue;
            }
            let list = self.out.by_zone.entry(*zi).or_default();
            let n = self.service_groups.get(zi).copied().unwrap_or(0);
            if same_vips && list.len() == n + 1 {
                continue; // the VIPs' group of the last call stands
            }
            list.truncate(n);
            let recs: Vec<GenRecord> = vips.iter().flat_map(|v| vip_records(v, zname)).collect();
            if !recs.is_empty() {
                list.push(Arc::new(recs));
            }
        }
        if !same_vips {
            self.vips = vips.to_vec();
        }
        &self.out
    }

    /// The output of the last call.
    pub fn output(&self) -> &Generated {
        &self.out
    }

    /// Compares each service with the entry at its position. Returns false (the cache left consistent, partly
    /// updated) as soon as a position holds another service.
    fn in_place(&mut self, services: &[Service]) -> bool {
        let old = std::mem::take(&mut self.arena);
        let mut arena = Vec::with_capacity(old.len() + 256);
        for (i, s) in services.iter().enumerate() {
            let e = &mut self.entries[i];
            let start = arena.len();
            let key = flatten(s, &mut arena);
            let (was, now) = (&old[e.at..e.at + e.len], &arena[start..]);
            if was != now {
                let zone = self.zones.iter().find(|z| z.0 == e.zone).map(|z| &z.1);
                let list = self.out.by_zone.get_mut(&e.zone).and_then(|l| l.get_mut(e.slot));
                let (Some(zone), Some(slot), true) = (zone, list, key_len(was) == key && was[..key] == now[..key]) else {
                    // Another service (name or zone) at this position: keep the rest as it was, match by name.
                    arena.truncate(start);
                    for e in &mut self.entries[i..] {
                        let at = arena.len();
                        arena.extend_from_slice(&old[e.at..e.at + e.len]);
                        e.at = at;
                    }
                    self.arena = arena;
                    return false;
                };
                *slot = Arc::new(service_records(s, zone));
            }
            e.at = start;
            e.len = arena.len() - start;
        }
        self.arena = arena;
        true
    }

    /// Places every service (errors reported) and reuses the cached records of unchanged services by name.
    fn by_name(&mut self, services: &[Service], zones: &[(usize, Name, bool)]) {
        let first = zones.iter().find(|z| z.2);
        let names: Vec<String> = zones.iter().map(|z| z.1.to_ascii().trim_end_matches('.').to_ascii_lowercase()).collect();
        let old_arena = std::mem::take(&mut self.arena);
        let mut old_out = std::mem::take(&mut self.out);
        let mut old: FastMap<&[u8], (usize, &[u8], Arc<Vec<GenRecord>>)> = FastMap::default();
        for e in std::mem::take(&mut self.entries) {
            let flat = &old_arena[e.at..e.at + e.len];
            let Some(records) = old_out.by_zone.get_mut(&e.zone).and_then(|l| l.get(e.slot)).cloned() else { continue };
            old.insert(&flat[..key_len(flat)], (e.zone, flat, records));
        }
        drop(old_out);
        self.service_groups.clear();
        let mut seen: FastMap<&str, ()> = FastMap::default();
        let mut aligned = true;
        for s in services {
            let zone = match &s.zone {
                Some(zn) => {
                    let want = zn.trim_end_matches('.');
                    match zones.iter().zip(&names).find(|(_, n)| n.eq_ignore_ascii_case(want)).map(|(z, _)| z) {
                        Some(z) if z.2 => z,
                        Some(_) => {
                            self.out.errors.push(format!("service {}: zone {zn} does not publish generated records", s.name));
                            aligned = false;
                            continue;
                        }
                        None => {
                            self.out.errors.push(format!("service {}: no zone {zn}", s.name));
                            aligned = false;
                            continue;
                        }
                    }
                }
                None => match first {
                    Some(z) => z,
                    None => {
                        aligned = false;
                        continue;
                    }
                },
            };
            if seen.insert(s.name.as_str(), ()).is_some() {
                self.out.errors.push(format!("service {}: defined twice", s.name));
                aligned = false;
                continue;
            }
            let at = self.arena.len();
            let key = flatten(s, &mut self.arena);
            let flat = &self.arena[at..];
            let records = match old.remove(&flat[..key]) {
                Some((z, was, records)) if z == zone.0 && was == flat => records,
                _ => Arc::new(service_records(s, &zone.1)),
            };
            let list = self.out.by_zone.entry(zone.0).or_default();
            self.entries.push(CacheEntry { zone: zone.0, at, len: self.arena.len() - at, slot: list.len() });
            list.push(records);
            *self.service_groups.entry(zone.0).or_default() += 1;
        }
        self.vips.clear(); // the VIPs' groups were dropped with the old output
        self.aligned = aligned;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use padis_model::{Instance, ServicePort};

    fn inst(id: &str, ip: &str, port: u16, healthy: bool) -> Instance {
        Instance { id: id.into(), addr: ip.parse().unwrap(), ports: vec![port], weight: 2, healthy, draining: false }
    }

    #[test]
    fn healthy_instances_only_and_srv() {
        let s = Service {
            name: "Web_App".into(),
            zone: None,
            ports: vec![ServicePort { name: Some("http".into()), protocol: "tcp".into() }],
            instances: vec![inst("t.1", "10.0.0.1", 8080, true), inst("t.2", "10.0.0.2", 8081, false)],
            origin: None,
        };
        let z = Name::from_ascii("svc.example.").unwrap();
        let r = service_records(&s, &z);
        let text: Vec<String> = r.iter().map(|r| format!("{} {}", r.name, r.rdata)).collect();
        assert!(text.contains(&"web-app.svc.example. 10.0.0.1".to_string()), "{text:?}");
        assert!(text.contains(&"t-1.web-app.svc.example. 10.0.0.1".to_string()), "{text:?}");
        assert!(text.iter().any(|t| t.starts_with("_http._tcp.web-app.svc.example. 0 2 8080 t-1.web-app")), "{text:?}");
        assert!(!text.iter().any(|t| t.contains("10.0.0.2")), "{text:?}");
    }

    /// Any field of a service makes its flattened form differ, so the cache never keeps stale records.
    #[test]
    fn cache_sees_every_field() {
        let base = Service {
            name: "web".into(),
            zone: None,
            ports: vec![ServicePort { name: Some("http".into()), protocol: "tcp".into() }],
            instances: vec![inst("a", "10.0.0.1", 80, true)],
            origin: None,
        };
        let edits: Vec<fn(&mut Service)> = vec![
            |s| s.name.push('x'),
            |s| s.zone = Some("z".into()),
            |s| s.origin = Some("marathon".into()),
            |s| s.ports[0].name = None,
            |s| s.ports[0].protocol = "udp".into(),
            |s| s.instances[0].id.push('x'),
            |s| s.instances[0].addr = "::1".parse().unwrap(),
            |s| s.instances[0].ports = vec![80, 81],
            |s| s.instances[0].weight = 9,
            |s| s.instances[0].healthy = false,
            |s| s.instances[0].draining = true,
            |s| s.instances.push(s.instances[0].clone()),
        ];
        let (mut a, mut b) = (Vec::new(), Vec::new());
        flatten(&base, &mut a);
        for (i, edit) in edits.iter().enumerate() {
            let mut v = base.clone();
            edit(&mut v);
            flatten(&v, &mut b);
            assert_ne!(a, b, "edit {i} not seen");
        }
        // In place: an unhealthy instance disappears on the next call, an unchanged service keeps its records.
        let z = [(0, Name::from_ascii("z.").unwrap(), true)];
        let other = Service { name: "db".into(), ..base.clone() };
        let mut cache = GenCache::default();
        let kept = cache.generate(&[base.clone(), other.clone()], &[], &z).by_zone[&0][1].clone();
        let mut sick = base.clone();
        sick.instances[0].healthy = false;
        let g2 = cache.generate(&[sick, other], &[], &z);
        assert!(g2.by_zone[&0][0].is_empty(), "unhealthy instance unpublished");
        assert!(Arc::ptr_eq(&kept, &g2.by_zone[&0][1]), "unchanged service shares its records");
    }

    #[test]
    fn colliding_names_are_kept_with_their_origins() {
        let mk = |n: &str, ip: &str| Service {
            name: n.into(),
            zone: None,
            ports: vec![],
            instances: vec![inst("a", ip, 1, true)],
            origin: None,
        };
        let z = Name::from_ascii("z.").unwrap();
        let mut cache = GenCache::default();
        let g = cache.generate(&[mk("a_b", "10.0.0.1"), mk("a-b", "10.0.0.2")], &[], &[(0, z, true)]);
        assert_eq!(g.by_zone[&0].len(), 2, "both kept");
        assert_eq!(g.by_zone[&0][0][0].name, g.by_zone[&0][1][0].name, "same mapped name");
        assert_ne!(g.by_zone[&0][0][0].origin, g.by_zone[&0][1][0].origin);
    }
}
