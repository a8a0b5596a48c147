//! Records generated from the control snapshot: services (A/AAAA of healthy instances, SRV per named port with
//! per-instance host names) and VIPs, with name collisions reported.

use std::net::IpAddr;
use std::sync::Arc;

use hickory_proto::rr::rdata::{A, AAAA, SRV};
use hickory_proto::rr::{Name, RData};
use padis_model::{l4::Vip, Service};

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

/// Cache of generated records per service, so an unchanged service costs a pointer comparison. Snapshots share
/// unchanged services (the same `Arc` from one snapshot to the next) and usually list them in the same order:
/// each service is then compared with the entry at its position by pointer, and only a service whose pointer
/// differs is compared field by field (and regenerated if it changed); the output lists are updated in place
/// (only a changed service's slot is touched). When names shift, the cache is matched by name instead. The cache
/// holds the services it saw, so a pointer seen again is never a freed and reused allocation.
#[derive(Default)]
pub struct GenCache {
    /// The services of the last call that were placed in a zone, in their order.
    entries: Vec<CacheEntry>,
    /// `entries[i]` is `services[i]` of the last call (every service was placed, none was an error).
    aligned: bool,
    /// The zones of the last call.
    zones: Vec<(usize, Name, bool)>,
    /// The VIPs of the last call.
    vips: Vec<Arc<Vip>>,
    /// The output: record groups by zone (the services' groups, then the VIPs' group).
    out: Generated,
    /// Number of service groups at the front of each zone's list in `out`.
    service_groups: FastMap<usize, usize>,
}

struct CacheEntry {
    service: Arc<Service>,
    zone: usize,
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

/// Whether `a` and `b` are the same item: the same allocation, or equal.
fn same<T: PartialEq>(a: &Arc<T>, b: &Arc<T>) -> bool {
    Arc::ptr_eq(a, b) || **a == **b
}

impl GenCache {
    /// Generates the records of `services` and `vips` into the generated zones (`zones`: index, apex, generated).
    pub fn generate(
        &mut self,
        services: &[Arc<Service>],
        vips: &[Arc<Vip>],
        zones: &[(usize, Name, bool)],
    ) -> &Generated {
        let positional = self.aligned && self.entries.len() == services.len() && self.zones == zones;
        if !(positional && self.in_place(services)) {
            self.by_name(services, zones);
        }
        self.zones = zones.to_vec();
        let same_vips = self.vips.len() == vips.len() && self.vips.iter().zip(vips).all(|(a, b)| same(a, b));
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
    /// updated) as soon as a position holds another service (name or zone).
    fn in_place(&mut self, services: &[Arc<Service>]) -> bool {
        for (e, s) in self.entries.iter_mut().zip(services) {
            if Arc::ptr_eq(&e.service, s) {
                continue;
            }
            if e.service.name != s.name || e.service.zone != s.zone {
                return false;
            }
            if **s != *e.service {
                let zone = self.zones.iter().find(|z| z.0 == e.zone).map(|z| &z.1);
                let slot = self.out.by_zone.get_mut(&e.zone).and_then(|l| l.get_mut(e.slot));
                let (Some(zone), Some(slot)) = (zone, slot) else { return false };
                *slot = Arc::new(service_records(s, zone));
            }
            e.service = s.clone();
        }
        true
    }

    /// Places every service (errors reported) and reuses the cached records of unchanged services by name.
    fn by_name(&mut self, services: &[Arc<Service>], zones: &[(usize, Name, bool)]) {
        let first = zones.iter().find(|z| z.2);
        let names: Vec<String> =
            zones.iter().map(|z| z.1.to_ascii().trim_end_matches('.').to_ascii_lowercase()).collect();
        let mut old_out = std::mem::take(&mut self.out);
        // By service name: its zone, the service and the records generated for it.
        type Previous = FastMap<String, (usize, Arc<Service>, Arc<Vec<GenRecord>>)>;
        let mut old: Previous = FastMap::default();
        for e in std::mem::take(&mut self.entries) {
            let Some(records) = old_out.by_zone.get_mut(&e.zone).and_then(|l| l.get(e.slot)).cloned() else { continue };
            old.insert(e.service.name.clone(), (e.zone, e.service, records));
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
                            self.out
                                .errors
                                .push(format!("service {}: zone {zn} does not publish generated records", s.name));
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
            let records = match old.remove(&s.name) {
                Some((z, was, records)) if z == zone.0 && same(&was, s) => records,
                _ => Arc::new(service_records(s, &zone.1)),
            };
            let list = self.out.by_zone.entry(zone.0).or_default();
            self.entries.push(CacheEntry { service: s.clone(), zone: zone.0, slot: list.len() });
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

    /// A service that is the same `Arc` or equal keeps its records; a changed one (any field: the comparison is
    /// the model's `PartialEq`) is regenerated, in place or after names shifted.
    #[test]
    fn cache_follows_changed_services_only() {
        let base = Arc::new(Service {
            name: "web".into(),
            zone: None,
            ports: vec![ServicePort { name: Some("http".into()), protocol: "tcp".into() }],
            instances: vec![inst("a", "10.0.0.1", 80, true)],
            origin: None,
        });
        let other = Arc::new(Service { name: "db".into(), ..(*base).clone() });
        let z = [(0, Name::from_ascii("z.").unwrap(), true)];
        let mut cache = GenCache::default();
        let g1 = cache.generate(&[base.clone(), other.clone()], &[], &z).by_zone[&0].clone();
        // An equal copy (another allocation) and the same Arc both keep their records.
        let copy = Arc::new((*base).clone());
        let g2 = cache.generate(&[copy.clone(), other.clone()], &[], &z).by_zone[&0].clone();
        assert!(Arc::ptr_eq(&g1[0], &g2[0]) && Arc::ptr_eq(&g1[1], &g2[1]), "unchanged services share their records");
        // In place: an unhealthy instance disappears on the next call; the other service is untouched.
        let mut sick = (*base).clone();
        sick.instances[0].healthy = false;
        let g3 = cache.generate(&[Arc::new(sick), other.clone()], &[], &z).by_zone[&0].clone();
        assert!(g3[0].is_empty(), "unhealthy instance unpublished");
        assert!(Arc::ptr_eq(&g1[1], &g3[1]), "unchanged service shares its records");
        // Shifted by an insertion (matched by name): the moved instance is seen, the unchanged service reused.
        let mut moved = (*base).clone();
        moved.instances[0].addr = "10.0.0.9".parse().unwrap();
        let new = Arc::new(Service { name: "new".into(), ..(*base).clone() });
        let g4 = cache.generate(&[new, Arc::new(moved), other.clone()], &[], &z).by_zone[&0].clone();
        assert_eq!(g4.len(), 3);
        assert!(g4[1].iter().any(|r| r.rdata.to_string() == "10.0.0.9"), "{:?}", g4[1]);
        assert!(Arc::ptr_eq(&g1[1], &g4[2]), "unchanged service shares its records after a shift");
    }

    #[test]
    fn colliding_names_are_kept_with_their_origins() {
        let mk = |n: &str, ip: &str| {
            Arc::new(Service {
                name: n.into(),
                zone: None,
                ports: vec![],
                instances: vec![inst("a", ip, 1, true)],
                origin: None,
            })
        };
        let z = Name::from_ascii("z.").unwrap();
        let mut cache = GenCache::default();
        let g = cache.generate(&[mk("a_b", "10.0.0.1"), mk("a-b", "10.0.0.2")], &[], &[(0, z, true)]);
        assert_eq!(g.by_zone[&0].len(), 2, "both kept");
        assert_eq!(g.by_zone[&0][0][0].name, g.by_zone[&0][1][0].name, "same mapped name");
        assert_ne!(g.by_zone[&0][0][0].origin, g.by_zone[&0][1][0].origin);
    }
}
