//! App labels: `PADIS_GROUP`, `PADIS_{n}_VHOST`, … and their marathon-lb aliases (`HAPROXY_GROUP`, …).
//!
//! Prefixes are tried in the configured order: a `PADIS_` label wins over the same `HAPROXY_` label. Every key
//! under a prefix is accounted for: a label Padis honours is read into [`AppLabels`] with the key as the app wrote
//! it (problems name `HAPROXY_0_VHOST`, not `PADIS_0_VHOST`); a marathon-lb label Padis does not honour
//! (HAProxy config templates) is listed in [`AppLabels::unsupported`], reported for
//! the app and counted; an unknown key is an error under a Padis prefix (a typo must not pass) and reported as
//! unknown under `HAPROXY_`.

use std::collections::BTreeMap;

/// A label value with its key as the app spelt it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Label {
    /// The key, e.g. `HAPROXY_0_VHOST`.
    pub key: String,
    /// The value, trimmed.
    pub value: String,
}

/// Labels of one service port index.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PortLabels {
    /// `VHOST`: comma-separated host names (L7 routes).
    pub vhost: Option<Label>,
    /// `PATH`: path prefixes, space-separated, optionally preceded by `-i` (case-insensitive).
    pub path: Option<Label>,
    /// `VIP`: `ip:port` served by L4.
    pub vip: Option<Label>,
    /// `DNS`: service name.
    pub dns: Option<Label>,
    /// `MODE`: `http` or `tcp`.
    pub mode: Option<Label>,
    /// `BALANCE`: algorithm.
    pub balance: Option<Label>,
    /// `STICKY`: cookie stickiness.
    pub sticky: Option<Label>,
    /// `REDIRECT_TO_HTTPS`.
    pub redirect_https: Option<Label>,
    /// `HEALTHCHECK_PATH`: active HTTP check path.
    pub healthcheck_path: Option<Label>,
    /// `ENABLED`: `false` leaves the port unserved.
    pub enabled: Option<Label>,
    /// `GROUP`: groups of this port (overrides the app's `GROUP`).
    pub group: Option<Label>,
    /// `BACKEND_WEIGHT`: order among apps claiming the same host and path (highest wins).
    pub backend_weight: Option<Label>,
    /// `BACKEND_HEALTHCHECK_PORT_INDEX`: the port whose Marathon health check decides this port's backends.
    pub healthcheck_port_index: Option<Label>,
    /// `USE_HSTS`.
    pub use_hsts: Option<Label>,
    /// `AUTH`: `realm:user:hash`.
    pub auth: Option<Label>,
    /// `BACKEND_NETWORK_ALLOWED_ACL`: space-separated source addresses or networks.
    pub network_allowed: Option<Label>,
    /// `HTTP_BACKEND_PROXYPASS_PATH`.
    pub proxypass_path: Option<Label>,
    /// `HTTP_BACKEND_REVPROXY_PATH`.
    pub revproxy_path: Option<Label>,
    /// `PORT`: the service port (overrides Marathon's `servicePort`).
    pub port: Option<Label>,
    /// `BIND_ADDR`: address of the service-port listener.
    pub bind_addr: Option<Label>,
    /// `BIND_OPTIONS`: HAProxy `bind` options of the service-port listener.
    pub bind_options: Option<Label>,
    /// `SSL_CERT`: certificate (name or file path) making the service-port listener TLS.
    pub ssl_cert: Option<Label>,
}

/// All Padis-relevant labels of an app.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AppLabels {
    /// `GROUP`: comma-separated Padis groups serving the app.
    pub group: Option<Label>,
    /// `DNS`: app-level service name (all ports).
    pub dns: Option<Label>,
    /// `DEPLOYMENT_GROUP`: blue/green deployment group (apps of one group are served as one).
    pub deployment_group: Option<Label>,
    /// `DEPLOYMENT_ALT_PORT`: the service port the other colour uses during a deployment.
    pub deployment_alt_port: Option<Label>,
    /// `DEPLOYMENT_COLOUR`: `blue` or `green`.
    pub deployment_colour: Option<Label>,
    /// `DEPLOYMENT_STARTED_AT`: when this colour's deployment started (the later one is the new colour).
    pub deployment_started_at: Option<Label>,
    /// `DEPLOYMENT_TARGET_INSTANCES`: instances the deployment aims at.
    pub deployment_target_instances: Option<Label>,
    /// `DEPLOYMENT_NEW_INSTANCES`: instances of the new colour at the start of a deployment (set by zdd).
    pub deployment_new_instances: Option<Label>,
    /// `APP_ID`: the app id before a blue/green deployment renamed it (informational).
    pub app_id: Option<Label>,
    /// Per port index.
    pub ports: BTreeMap<usize, PortLabels>,
    /// marathon-lb labels Padis does not honour.
    pub unsupported: Vec<Unsupported>,
}

/// A marathon-lb label Padis does not honour.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsupported {
    /// The key as the app wrote it.
    pub key: String,
    /// Its generic name (`HAPROXY_{n}_BACKEND_HEAD`), or `unknown` for keys marathon-lb does not know either;
    /// the metric's label value (bounded).
    pub name: String,
    /// Why it is not honoured.
    pub reason: &'static str,
    /// Whether serving the port without it could widen access (auth or network ACL templates): the port is then
    /// not served at all.
    pub fail_closed: bool,
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

/// marathon-lb's HAProxy config templates, which an app may override per port (`HAPROXY_{n}_<TEMPLATE>`).
pub const TEMPLATES: &[&str] = &[
    "BACKEND_HEAD",
    "BACKEND_HSTS_OPTIONS",
    "BACKEND_HTTP_HEALTHCHECK_OPTIONS",
    "BACKEND_HTTP_OPTIONS",
    "BACKEND_REDIRECT_HTTP_TO_HTTPS",
    "BACKEND_REDIRECT_HTTP_TO_HTTPS_WITH_PATH",
    "BACKEND_SERVER_HTTP_HEALTHCHECK_OPTIONS",
    "BACKEND_SERVER_OPTIONS",
    "BACKEND_SERVER_TCP_HEALTHCHECK_OPTIONS",
    "BACKEND_STICKY_OPTIONS",
    "BACKEND_TCP_HEALTHCHECK_OPTIONS",
    "FRONTEND_BACKEND_GLUE",
    "FRONTEND_HEAD",
    "HTTPS_FRONTEND_ACL",
    "HTTPS_FRONTEND_ACL_ONLY_WITH_PATH",
    "HTTPS_FRONTEND_ACL_WITH_AUTH",
    "HTTPS_FRONTEND_ACL_WITH_AUTH_AND_PATH",
    "HTTPS_FRONTEND_ACL_WITH_PATH",
    "HTTPS_FRONTEND_AUTH_ACL_ONLY",
    "HTTPS_FRONTEND_AUTH_REQUEST_ONLY",
    "HTTPS_FRONTEND_ROUTING_ONLY_WITH_PATH_AND_AUTH",
    "HTTP_BACKEND_ACL_ALLOW_DENY",
    "HTTP_BACKEND_NETWORK_ALLOWED_ACL",
    "HTTP_BACKEND_PROXYPASS_GLUE",
    "HTTP_BACKEND_REVPROXY_GLUE",
    "HTTP_FRONTEND_ACL",
    "HTTP_FRONTEND_ACL_ONLY",
    "HTTP_FRONTEND_ACL_ONLY_WITH_PATH",
    "HTTP_FRONTEND_ACL_ONLY_WITH_PATH_AND_AUTH",
    "HTTP_FRONTEND_ACL_WITH_AUTH",
    "HTTP_FRONTEND_ACL_WITH_AUTH_AND_PATH",
    "HTTP_FRONTEND_ACL_WITH_PATH",
    "HTTP_FRONTEND_APPID_ACL",
    "HTTP_FRONTEND_ROUTING_ONLY",
    "HTTP_FRONTEND_ROUTING_ONLY_WITH_AUTH",
    "HTTP_FRONTEND_ROUTING_ONLY_WITH_PATH",
    "HTTP_FRONTEND_ROUTING_ONLY_WITH_PATH_AND_AUTH",
    "MAP_HTTPS_FRONTEND_ACL",
    "MAP_HTTP_FRONTEND_ACL",
    "MAP_HTTP_FRONTEND_ACL_ONLY",
    "MAP_HTTP_FRONTEND_APPID_ACL",
    "TCP_BACKEND_ACL_ALLOW_DENY",
    "TCP_BACKEND_NETWORK_ALLOWED_ACL",
    "USERLIST_HEAD",
];

/// Per-port marathon-lb labels not honoured for other reasons.
const OTHER_UNSUPPORTED: &[(&str, &str)] = &[("HTTP_BACKEND_REDIR", "redirect of the domain root is not supported")];

/// Whether ignoring the template could serve a port more widely than the app asked (auth, network ACLs).
fn widens_access(name: &str) -> bool {
    name.contains("AUTH")
        || name.contains("USERLIST")
        || name.contains("NETWORK_ALLOWED")
        || name.contains("ALLOW_DENY")
}

/// Reads the labels under `prefixes` (highest priority first).
pub fn parse(labels: &BTreeMap<String, String>, prefixes: &[String]) -> (AppLabels, Vec<LabelError>) {
    let mut out = AppLabels::default();
    let mut errors = Vec::new();
    // Lowest priority first, so that higher-priority prefixes overwrite.
    for prefix in prefixes.iter().rev() {
        for (key, value) in labels.range(prefix.clone()..) {
            let Some(rest) = key.strip_prefix(prefix.as_str()) else { break };
            let label = Some(Label { key: key.clone(), value: value.trim().to_string() });
            let app_slot = match rest {
                "GROUP" => Some(&mut out.group),
                "DNS" => Some(&mut out.dns),
                "DEPLOYMENT_GROUP" => Some(&mut out.deployment_group),
                "DEPLOYMENT_ALT_PORT" => Some(&mut out.deployment_alt_port),
                "DEPLOYMENT_COLOUR" => Some(&mut out.deployment_colour),
                "DEPLOYMENT_STARTED_AT" => Some(&mut out.deployment_started_at),
                "DEPLOYMENT_TARGET_INSTANCES" => Some(&mut out.deployment_target_instances),
                "DEPLOYMENT_NEW_INSTANCES" => Some(&mut out.deployment_new_instances),
                "APP_ID" => Some(&mut out.app_id),
                _ => None,
            };
            if let Some(slot) = app_slot {
                *slot = label;
                continue;
            }
            let Some((Ok(n), k)) = rest.split_once('_').map(|(n, k)| (n.parse::<usize>(), k)) else {
                unknown(&mut out, &mut errors, prefix, key);
                continue;
            };
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
                "ENABLED" => &mut p.enabled,
                "GROUP" => &mut p.group,
                "BACKEND_WEIGHT" => &mut p.backend_weight,
                "BACKEND_HEALTHCHECK_PORT_INDEX" => &mut p.healthcheck_port_index,
                "USE_HSTS" => &mut p.use_hsts,
                "AUTH" => &mut p.auth,
                "BACKEND_NETWORK_ALLOWED_ACL" => &mut p.network_allowed,
                "HTTP_BACKEND_PROXYPASS_PATH" => &mut p.proxypass_path,
                "HTTP_BACKEND_REVPROXY_PATH" => &mut p.revproxy_path,
                "PORT" => &mut p.port,
                "BIND_ADDR" => &mut p.bind_addr,
                "BIND_OPTIONS" => &mut p.bind_options,
                "SSL_CERT" => &mut p.ssl_cert,
                _ => {
                    let generic = format!("{prefix}{{n}}_{k}");
                    let (reason, fail_closed) = if TEMPLATES.contains(&k) {
                        ("an HAProxy config template: Padis generates no HAProxy config", widens_access(k))
                    } else if let Some((_, r)) = OTHER_UNSUPPORTED.iter().find(|(name, _)| *name == k) {
                        (*r, false)
                    } else {
                        unknown(&mut out, &mut errors, prefix, key);
                        continue;
                    };
                    out.unsupported.push(Unsupported { key: key.clone(), name: generic, reason, fail_closed });
                    continue;
                }
            };
            *slot = label;
        }
    }
    out.ports.retain(|_, p| *p != PortLabels::default());
    out.unsupported.sort_by(|a, b| a.key.cmp(&b.key));
    (out, errors)
}

/// An unknown key: an error under a strict prefix, reported as an unknown label under `HAPROXY_`.
fn unknown(out: &mut AppLabels, errors: &mut Vec<LabelError>, prefix: &str, key: &str) {
    if strict(prefix) {
        errors.push(LabelError { label: key.to_string(), message: "unknown label".into() });
    } else {
        out.unsupported.push(Unsupported {
            key: key.to_string(),
            name: "unknown".into(),
            reason: "not a marathon-lb label (a typo?)",
            fail_closed: false,
        });
    }
}

/// Reads a boolean label value.
pub fn boolean(v: &str) -> Option<bool> {
    match v.to_ascii_lowercase().as_str() {
        "true" | "t" | "1" | "yes" | "y" | "on" => Some(true),
        "false" | "f" | "0" | "no" | "n" | "off" | "" => Some(false),
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
                ("HAPROXY_0_BACKEND_HEAD", "backend {backend}"),
                ("HAPROXY_0_USERLIST_HEAD", "userlist x"),
                ("HAPROXY_0_PORT", "8080"),
                ("HAPROXY_0_VHSOT", "typo"),
                ("HAPROXY_HEAD", "global"),
                ("HAPROXY_DEPLOYMENT_GROUP", "web"),
                ("PADIS_0_VHOST", "new.example.com"),
                ("PADIS_1_VIP", "10.0.0.1:80"),
                ("PADIS_0_VHSOT", "typo"),
                ("OTHER", "x"),
            ]),
            &p,
        );
        assert_eq!(l.group.as_ref().map(|g| g.key.as_str()), Some("HAPROXY_GROUP"));
        assert_eq!(l.ports[&0].vhost, Some(Label { key: "PADIS_0_VHOST".into(), value: "new.example.com".into() }));
        assert_eq!(l.ports[&1].vip.as_ref().map(|v| v.value.as_str()), Some("10.0.0.1:80"));
        assert_eq!(l.deployment_group.as_ref().map(|v| v.value.as_str()), Some("web"));
        assert_eq!(l.ports[&0].port.as_ref().map(|v| v.value.as_str()), Some("8080"));
        assert_eq!(e, vec![LabelError { label: "PADIS_0_VHSOT".into(), message: "unknown label".into() }]);
        let u: Vec<(&str, &str, bool)> =
            l.unsupported.iter().map(|u| (u.key.as_str(), u.name.as_str(), u.fail_closed)).collect();
        assert_eq!(
            u,
            vec![
                ("HAPROXY_0_BACKEND_HEAD", "HAPROXY_{n}_BACKEND_HEAD", false),
                ("HAPROXY_0_USERLIST_HEAD", "HAPROXY_{n}_USERLIST_HEAD", true),
                ("HAPROXY_0_VHSOT", "unknown", false),
                ("HAPROXY_HEAD", "unknown", false),
            ]
        );
    }
}
