//! Settings read only at start: which of them a reloaded config changes (reported by the reload result,
//! `/v1/state` and a log line as "restart required: <section.field>"; the running value stays until then).
//!
//! Everything else is applied by a reload: routes, groups, listeners, limits, certificates, log level and access
//! log, admin token and limits, DNS zones, VIPs, the Marathon source (restarted with its new settings).

use padis_model::DesiredState;
use serde_json::Value;

/// `[section]` fields read only at start, as `(section, fields)`; an empty list is the whole section.
const START_ONLY: [(&str, &[&str]); 8] = [
    ("runtime", &[]),
    ("tls", &[]),
    ("log", &["format"]),
    ("admin", &["listen", "socket"]),
    ("l4", &["interfaces", "instance", "xdp_mode", "max_flows", "max_vips", "max_backends", "max_sources", "sync"]),
    ("dns", &["listen", "reuseport", "udp_batch_wait"]),
    ("bgp", &[]),
    ("ospf", &[]),
];

/// The start-only settings `now` changes from `started`, as `section.field` (or `section` when the section
/// was added or removed).
pub fn required(started: &DesiredState, now: &DesiredState) -> Vec<String> {
    let (a, b) = match (serde_json::to_value(started), serde_json::to_value(now)) {
        (Ok(a), Ok(b)) => (a, b),
        // Not reachable for the model's types; if it were, saying nothing would hide a change.
        _ => return vec!["(config could not be compared)".into()],
    };
    let mut out = Vec::new();
    for (section, fields) in START_ONLY {
        let (x, y) = (&a[section], &b[section]);
        if x == y {
            continue;
        }
        match (x, y, fields.is_empty()) {
            (Value::Object(x), Value::Object(y), true) => {
                let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
                keys.sort();
                keys.dedup();
                out.extend(keys.into_iter().filter(|k| x.get(*k) != y.get(*k)).map(|k| format!("{section}.{k}")));
            }
            (Value::Object(_), Value::Object(_), false) => {
                out.extend(fields.iter().filter(|f| x.get(**f) != y.get(**f)).map(|f| format!("{section}.{f}")));
            }
            _ => out.push(section.to_string()),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn state(text: &str) -> DesiredState {
        padis_model::parse_config(text, "t.toml", Path::new(".")).map_err(|e| e.to_string()).unwrap().state
    }

    #[test]
    fn start_only_changes_are_named() {
        let bgp = "[bgp]\nasn = 65001\nrouter_id = \"10.0.0.1\"\n[[bgp.peer]]\naddress = \"10.0.0.2\"\nasn = 65000\n";
        let a = state(&format!("[admin]\nlisten = \"127.0.0.1:9901\"\n[log]\nlevel = \"info\"\n{bgp}"));
        assert!(required(&a, &a).is_empty());
        let b = state(&format!(
            "[admin]\nlisten = \"127.0.0.1:9902\"\n[log]\nlevel = \"debug\"\nformat = \"json\"\n\
             [runtime]\nworker_threads = 2\n{}",
            bgp.replace("65000", "65002")
        ));
        assert_eq!(required(&a, &b), ["runtime.worker_threads", "log.format", "admin.listen", "bgp.peer"]);
        let c = state("[admin]\nlisten = \"127.0.0.1:9901\"\n[ospf]\ntable = 100\n");
        assert_eq!(required(&a, &c), ["bgp", "ospf"]);
    }
}
