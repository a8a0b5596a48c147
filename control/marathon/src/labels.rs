//! App labels: `PADIS_GROUP`, `PADIS_{n}_VHOST`, … and their marathon-lb aliases (`HAPROXY_GROUP`, …).
//!
//! Prefixes are tried in the configured order: a `PADIS_` label wins over the same `HAPROXY_` label. Unknown
//! keys under a Padis prefix are errors (typos must not pass silently); unknown `HAPROXY_` keys are ignored,
//! since marathon-lb estates carry many templates Padis has no use for.

use std::collections::BTreeMap;

/// Labels of one service port index.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PortLabels {
    /// `VHOST`: comma-separated host names (L7 routes).
    pub vhost: Option<String>,
    /// `PATH`: path prefix (L7 routes).
    pub path: Option<String>,
    /// `VIP`: `ip:port` served by L4.
    pub vip: Option<String>,
    /// `DNS`: service name.
    pub dns: Option<String>,
    /// `MODE`: `http` or `tcp`.
    pub mode: Option<String>,
    /// `BALANCE`: algorithm.
    pub balance: Option<String>,
    /// `STICKY`: cookie stickiness.
    pub sticky: Option<String>,
    /// `REDIRECT_TO_HTTPS`.
    pub redirect_https: Option<String>,
    /// `HEALTHCHECK_PATH`: active HTTP check path.
    pub healthcheck_path: Option<String>,
}

/// All Padis-relevant labels of an app.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AppLabels {
    /// `GROUP`: comma-separated Padis groups serving the app.
    pub group: Option<String>,
    /// `DNS`: app-level service name (all ports).
    pub dns: Option<String>,
    /// Per port index.
    pub ports: BTreeMap<usize, PortLabels>,
}

/// A label that could not be understood.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelError {
    /// The label key.
    pub label: String,
    /// What is wrong.
    pub message: String,
}

/// Whether unknown keys under this prefix are errors.
fn strict(prefix: &str) -> bool {
    !prefix.eq_ignore_ascii_case("HAPROXY_")
}

/// Reads the labels under `prefixes` (highest priority first).
pub fn parse(labels: &BTreeMap<String, String>, prefixes: &[String]) -> (AppLabels, Vec<LabelError>) {
    let mut out = AppLabels::default();
    let mut errors = Vec::new();
    // Lowest priority first, so that higher-priority prefixes overwrite.
    for prefix in prefixes.iter().rev() {
        for (key, value) in labels.range(prefix.clone()..) {
            let Some(rest) = key.strip_prefix(prefix.as_str()) else { break };
            let value = value.trim().to_string();
            match rest {
                "GROUP" => out.group = Some(value),
                "DNS" => out.dns = Some(value),
                _ => match rest.split_once('_').map(|(n, k)| (n.parse::<usize>(), k)) {
                    Some((Ok(n), k)) => {
                        let p = out.ports.entry(n).or_default();
                        let slot = match k {
                            "VHOST" => &mut p.vhost,
                            "PATH" => &mut p.path,
                            "VIP" => &mut p.vip,
                            "DNS" => &mut p.dns,
                            "MODE" => &mut p.mode,
                            "BALANCE" => &mut p.balance,
                            "STICKY" => &mut p.sticky,
                            "REDIRECT_TO_HTTPS" => &mut p.redirect_https,
                            "HEALTHCHECK_PATH" => &mut p.healthcheck_path,
                            _ => {
                                if strict(prefix) {
                                    errors.push(LabelError { label: key.clone(), message: "unknown label".into() });
                                }
                                continue;
                            }
                        };
                        *slot = Some(value);
                    }
                    _ if strict(prefix) => {
                        errors.push(LabelError { label: key.clone(), message: "unknown label".into() })
                    }
                    _ => {}
                },
            }
        }
    }
    out.ports.retain(|_, p| *p != PortLabels::default());
    (out, errors)
}

/// Reads a boolean label value.
pub fn boolean(v: &str) -> Option<bool> {
    match v.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Some(true),
        "false" | "0" | "no" | "off" | "" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn padis_wins_over_haproxy_and_unknowns() {
        let p = vec!["PADIS_".to_string(), "HAPROXY_".to_string()];
        let (l, e) = parse(
            &labels(&[
                ("HAPROXY_GROUP", "external"),
                ("HAPROXY_0_VHOST", "old.example.com"),
                ("HAPROXY_0_BACKEND_HEAD", "ignored"),
                ("PADIS_0_VHOST", "new.example.com"),
                ("PADIS_1_VIP", "10.0.0.1:80"),
                ("PADIS_0_VHSOT", "typo"),
                ("OTHER", "x"),
            ]),
            &p,
        );
        assert_eq!(l.group.as_deref(), Some("external"));
        assert_eq!(l.ports[&0].vhost.as_deref(), Some("new.example.com"));
        assert_eq!(l.ports[&1].vip.as_deref(), Some("10.0.0.1:80"));
        assert_eq!(e, vec![LabelError { label: "PADIS_0_VHSOT".into(), message: "unknown label".into() }]);
    }
}
