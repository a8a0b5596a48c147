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

/// Cache of generated records per service, so an unchanged service costs a comparison. Services usually come in
/// the same order snapshot after snapshot: then each is compared with the entry at its position (no hashing);
/// when names shift, the cache is matched by name instead.
#[derive(Default)]
pub struct GenCache {
    /// The services of the last call that were placed in a zone, in their order.
    entries: Vec<CacheEntry>,
    /// `entries[i]` is `services[i]` of the last call (every service was placed, none was an error).
    aligned: bool,
    /// The zones of the last call.
    zones: Vec<(usize, Name, bool)>,
}

struct CacheEntry {
    zone: usize,
    service: Service,
    records: Arc<Vec<GenRecord>>,
}

/// Generated records of every zone, with problems found.
#[derive(Default)]
pub struct Generated {
    /// Records by zone index.
    pub by_zone: FastMap<usize, Vec<Arc<Vec<GenRecord>>>>,
    /// Services that could not be placed.
    pub errors: Vec<String>,
}

impl GenCache {
    /// Generates the records of `services` and `vips` into the generated zones (`zones`: index, apex, generated).
    pub fn generate(&mut self, services: &[Service], vips: &[Vip], zones: &[(usize, Name, bool)]) -> Generated {
        let mut g = Generated::default();
        let positional = self.aligned && self.entries.len() == services.len() && self.zones == zones;
        if !(positional && self.in_place(services, &mut g)) {
            g = Generated::default();
            self.by_name(services, zones, &mut g);
        }
        self.zones = zones.to_vec();
        for (zi, zname, generated) in zones {
            if !generated {
                continue;
            }
            let recs: Vec<GenRecord> = vips.iter().flat_map(|v| vip_records(v, zname)).collect();
            if !recs.is_empty() {
                g.by_zone.entry(*zi).or_default().push(Arc::new(recs));
            }
        }
        g
    }

    /// Compares each service with the entry at its position. Returns false (the cache still valid, partly
    /// updated) as soon as a position holds another service.
    fn in_place(&mut self, services: &[Service], g: &mut Generated) -> bool {
        for (e, s) in self.entries.iter_mut().zip(services) {
            if e.service != *s {
                if e.service.name != s.name || e.service.zone != s.zone {
                    return false;
                }
                let Some((_, zone, _)) = self.zones.iter().find(|z| z.0 == e.zone) else { return false };
                e.records = Arc::new(service_records(s, zone));
                e.service.clone_from(s);
            }
            g.by_zone.entry(e.zone).or_insert_with(|| Vec::with_capacity(services.len())).push(e.records.clone());
        }
        true
    }

    /// Places every service (errors reported) and reuses the cached records of unchanged services by name.
    fn by_name(&mut self, services: &[Service], zones: &[(usize, Name, bool)], g: &mut Generated) {
        let first = zones.iter().find(|z| z.2);
        let names: Vec<String> = zones.iter().map(|z| z.1.to_ascii().trim_end_matches('.').to_ascii_lowercase()).collect();
        let mut old: FastMap<String, CacheEntry> =
            std::mem::take(&mut self.entries).into_iter().map(|e| (e.service.name.clone(), e)).collect();
        let mut seen: FastMap<&str, ()> = FastMap::default();
        let mut aligned = true;
        for s in services {
            let zone = match &s.zone {
                Some(zn) => {
                    let want = zn.trim_end_matches('.');
                    match zones.iter().zip(&names).find(|(_, n)| n.eq_ignore_ascii_case(want)).map(|(z, _)| z) {
                        Some(z) if z.2 => z,
                        Some(_) => {
                            g.errors.push(format!("service {}: zone {zn} does not publish generated records", s.name));
                            aligned = false;
                            continue;
                        }
                        None => {
                            g.errors.push(format!("service {}: no zone {zn}", s.name));
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
                g.errors.push(format!("service {}: defined twice", s.name));
                aligned = false;
                continue;
            }
            let entry = match old.remove(s.name.as_str()) {
                Some(e) if e.zone == zone.0 && e.service == *s => e,
                _ => CacheEntry { zone: zone.0, service: s.clone(), records: Arc::new(service_records(s, &zone.1)) },
            };
            g.by_zone.entry(zone.0).or_default().push(entry.records.clone());
            self.entries.push(entry);
        }
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
        let g = GenCache::default().generate(&[mk("a_b", "10.0.0.1"), mk("a-b", "10.0.0.2")], &[], &[(0, z, true)]);
        assert_eq!(g.by_zone[&0].len(), 2, "both kept");
        assert_eq!(g.by_zone[&0][0][0].name, g.by_zone[&0][1][0].name, "same mapped name");
        assert_ne!(g.by_zone[&0][0][0].origin, g.by_zone[&0][1][0].origin);
    }
}
