//! Marathon source config: `[marathon]`. Owned by the Marathon work.
//!
//! ```toml
//! [marathon]
//! urls = ["http://marathon-1:8080", "http://marathon-2:8080"]  # the leader is followed
//! group = ["external"]          # PADIS_GROUP / HAPROXY_GROUP values this node serves ("*" = all apps)
//! ca = "/etc/padis/marathon-ca.pem"
//! resync_interval = "5m"        # periodic full sync (safety net)
//! coalesce = "20ms"             # events within this window become one published update
//! resync_delay = "1s"           # an event schedules a full sync at most this much later
//! stream_idle_timeout = "2m"    # no byte on the event stream for this long: reconnect
//! backoff_min = "250ms"
//! backoff_max = "30s"
//! drain_time = "30s"            # a killed task stays as a draining backend this long
//! zone = "marathon.example.com" # DNS zone of the generated services
//! label_prefixes = ["PADIS_", "HAPROXY_"]
//! service_ports = true          # a listener on each app port's service port (marathon-lb's frontends)
//! service_port_bind = "0.0.0.0" # their address unless the app sets HAPROXY_{n}_BIND_ADDR
//! accept_proxy_from = ["10.1.0.0/24"]  # BIND_OPTIONS accept-proxy: PROXY headers from these sources only
//!
//! [marathon.auth]
//! user = "padis"
//! password_env = "MARATHON_PASSWORD"   # or password_file / password = "...", or token_file / token_env / token
//! ```

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};

use crate::secret::Secret;
use crate::validate::Validator;

/// `[marathon]`: where to follow Marathon and how to map its apps.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MarathonConfig {
    /// Marathon base URLs (several: the leader is followed).
    pub urls: Vec<String>,
    /// Padis groups (`PADIS_GROUP` / `HAPROXY_GROUP` label values) this node serves; `*` serves every app.
    /// A single string is accepted too.
    #[serde(default = "default_group", deserialize_with = "one_or_many")]
    pub group: Vec<String>,
    /// Authentication towards Marathon.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<MarathonAuth>,
    /// PEM CA bundle to verify Marathon's certificate on `https://` URLs (default: the system roots).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
    /// Period of the safety-net full sync.
    #[serde(default = "default_resync", with = "humantime_serde")]
    pub resync_interval: Duration,
    /// Events arriving within this window are published as one update.
    #[serde(default = "default_coalesce", with = "humantime_serde")]
    pub coalesce: Duration,
    /// Longest time between an event and the full sync it triggers (bursts share one sync).
    #[serde(default = "default_resync_delay", with = "humantime_serde")]
    pub resync_delay: Duration,
    /// An event stream silent (not one byte) for this long is reopened.
    #[serde(default = "default_idle", with = "humantime_serde")]
    pub stream_idle_timeout: Duration,
    /// Timeout of one REST request (connect + complete body).
    #[serde(default = "default_request_timeout", with = "humantime_serde")]
    pub request_timeout: Duration,
    /// First reconnect delay; doubled (with jitter) per failure up to `backoff_max`.
    #[serde(default = "default_backoff_min", with = "humantime_serde")]
    pub backoff_min: Duration,
    /// Longest reconnect delay.
    #[serde(default = "default_backoff_max", with = "humantime_serde")]
    pub backoff_max: Duration,
    /// How long a killed task stays as a draining backend (no new requests, in-flight ones finish).
    #[serde(default = "default_drain", with = "humantime_serde")]
    pub drain_time: Duration,
    /// DNS zone the generated services are published in (default: the DNS server's first zone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    /// Publish a DNS service for every served app (named from its id, `/prod/web` -> `web.prod`) even without a
    /// `PADIS_{n}_DNS` label.
    #[serde(default = "default_true")]
    pub dns_by_default: bool,
    /// Label prefixes understood, in priority order (`PADIS_` wins over the marathon-lb alias `HAPROXY_`).
    #[serde(default = "default_prefixes")]
    pub label_prefixes: Vec<String>,
    /// Open a listener on the service port of each served app port (`servicePort`, `portDefinitions[].port`,
    /// or the `PORT` label), as marathon-lb does: HTTP or TCP by the port's mode.
    #[serde(default = "default_true")]
    pub service_ports: bool,
    /// Address service-port listeners bind when the app gives no `BIND_ADDR` (marathon-lb binds `*`).
    #[serde(default = "default_service_bind")]
    pub service_port_bind: IpAddr,
    /// The sources trusted to send a PROXY protocol header on a service port whose app asks for it
    /// (`BIND_OPTIONS accept-proxy`): the listener's `proxy_protocol.trusted`. Empty (the default): such ports
    /// are not opened — marathon-lb accepts the header from anyone, which lets any client claim any address.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub accept_proxy_from: Vec<ipnet::IpNet>,
    /// Largest `/v2/apps` body accepted, in bytes.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
    /// Largest single event (or SSE line) accepted, in bytes; larger ones are skipped.
    #[serde(default = "default_max_event")]
    pub max_event_bytes: usize,
}

/// `[marathon.auth]`: HTTP basic auth or a bearer token; secrets inline, from the environment or from a file.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MarathonAuth {
    /// Basic auth user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Basic auth password (prefer `password_file` or `password_env`). Never shown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<Secret>,
    /// File holding the basic auth password (mode 0600 or stricter; read when the config is loaded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    /// Environment variable holding the basic auth password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_env: Option<String>,
    /// Bearer token (prefer `token_file` or `token_env`). Never shown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<Secret>,
    /// Environment variable holding the bearer token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_env: Option<String>,
    /// File holding the bearer token (mode 0600 or stricter; read into `token` when the config is loaded,
    /// surrounding whitespace trimmed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
}

fn default_group() -> Vec<String> {
    vec!["external".into()]
}
fn default_resync() -> Duration {
    Duration::from_secs(300)
}
fn default_coalesce() -> Duration {
    Duration::from_millis(20)
}
fn default_resync_delay() -> Duration {
    Duration::from_secs(1)
}
fn default_idle() -> Duration {
    Duration::from_secs(120)
}
fn default_request_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_backoff_min() -> Duration {
    Duration::from_millis(250)
}
fn default_backoff_max() -> Duration {
    Duration::from_secs(30)
}
fn default_drain() -> Duration {
    Duration::from_secs(30)
}
fn default_true() -> bool {
    true
}
fn default_service_bind() -> IpAddr {
    IpAddr::V4(Ipv4Addr::UNSPECIFIED)
}
fn default_prefixes() -> Vec<String> {
    vec!["PADIS_".into(), "HAPROXY_".into()]
}
fn default_max_body() -> usize {
    256 * 1024 * 1024
}
fn default_max_event() -> usize {
    1024 * 1024
}

fn one_or_many<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    })
}

impl Default for MarathonConfig {
    fn default() -> Self {
        MarathonConfig {
            urls: Vec::new(),
            group: default_group(),
            auth: None,
            ca: None,
            resync_interval: default_resync(),
            coalesce: default_coalesce(),
            resync_delay: default_resync_delay(),
            stream_idle_timeout: default_idle(),
            request_timeout: default_request_timeout(),
            backoff_min: default_backoff_min(),
            backoff_max: default_backoff_max(),
            drain_time: default_drain(),
            zone: None,
            dns_by_default: true,
            label_prefixes: default_prefixes(),
            service_ports: true,
            service_port_bind: default_service_bind(),
            accept_proxy_from: Vec::new(),
            max_body_bytes: default_max_body(),
            max_event_bytes: default_max_event(),
        }
    }
}

impl MarathonConfig {
    /// Whether apps labelled with `group` are served by this node.
    pub fn serves_group(&self, group: &str) -> bool {
        self.group.iter().any(|g| g == "*" || group.split(',').any(|x| x.trim() == g))
    }

    /// Validates `[marathon]`.
    pub fn validate(&self, cx: &mut Validator) {
        if self.urls.is_empty() {
            cx.error("marathon.urls", "at least one URL is needed");
        }
        for (i, u) in self.urls.iter().enumerate() {
            let rest = u.strip_prefix("http://").or_else(|| u.strip_prefix("https://"));
            match rest {
                Some(r) if !r.is_empty() && !r.starts_with('/') && !r.contains(char::is_whitespace) => {}
                _ => cx.error(
                    format!("marathon.urls[{i}]"),
                    format!("`{u}`: expected http://host[:port][/path] or https://…"),
                ),
            }
        }
        if self.group.is_empty() || self.group.iter().any(|g| g.trim().is_empty()) {
            cx.error("marathon.group", "needs at least one non-empty group name (or \"*\")");
        }
        for (field, d) in [
            ("resync_interval", self.resync_interval),
            ("stream_idle_timeout", self.stream_idle_timeout),
            ("request_timeout", self.request_timeout),
            ("backoff_min", self.backoff_min),
            ("resync_delay", self.resync_delay),
        ] {
            if d.is_zero() {
                cx.error(format!("marathon.{field}"), "must be greater than 0");
            }
        }
        if self.backoff_max < self.backoff_min {
            cx.error("marathon.backoff_max", "must be at least backoff_min");
        }
        if self.label_prefixes.is_empty() || self.label_prefixes.iter().any(|p| p.is_empty()) {
            cx.error("marathon.label_prefixes", "needs at least one non-empty prefix");
        }
        if self.max_event_bytes < 1024 {
            cx.error("marathon.max_event_bytes", "must be at least 1024");
        }
        if self.max_body_bytes < 1024 {
            cx.error("marathon.max_body_bytes", "must be at least 1024");
        }
        if let Some(z) = &self.zone {
            let z = z.trim_end_matches('.');
            if z.is_empty() || z.split('.').any(|l| l.is_empty() || l.len() > 63) {
                cx.error("marathon.zone", format!("`{z}`: not a DNS name"));
            }
        }
        if let Some(a) = &self.auth {
            let basic = a.user.is_some();
            // A `*_file` was read into the inline field when the config was loaded (both set there is an error).
            let password = a.password.is_some() || a.password_env.is_some();
            let token = [a.token.is_some(), a.token_env.is_some()];
            let tokens = token.iter().filter(|t| **t).count();
            if basic && tokens > 0 {
                cx.error("marathon.auth", "use either basic auth (user) or a token, not both");
            }
            if basic && !password {
                cx.error("marathon.auth.user", "basic auth needs `password`, `password_file` or `password_env`");
            }
            if !basic && password {
                cx.error("marathon.auth.user", "a password needs a `user`");
            }
            if tokens > 1 {
                cx.error("marathon.auth.token", "use only one of token, token_file, token_env");
            }
            if !basic && tokens == 0 && !password {
                cx.error("marathon.auth", "empty: set user + password, or a token");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::parse_config;

    #[test]
    fn defaults_and_single_group() {
        let v =
            parse_config("[marathon]\nurls = [\"http://m:8080\"]\ngroup = \"internal\"\n", "t.toml", Path::new("."))
                .unwrap();
        let m = v.state.marathon.unwrap();
        assert_eq!(m.group, vec!["internal".to_string()]);
        assert_eq!(m.drain_time, std::time::Duration::from_secs(30));
        assert!(m.serves_group("a, internal"));
        assert!(!m.serves_group("external"));
        assert!(m.service_ports, "service-port listeners by default, as marathon-lb");
        assert_eq!(m.service_port_bind.to_string(), "0.0.0.0");
        let v = parse_config(
            "[marathon]\nurls = [\"http://m:8080\"]\nservice_ports = false\nservice_port_bind = \"::1\"\n",
            "t.toml",
            Path::new("."),
        )
        .unwrap();
        let m = v.state.marathon.unwrap();
        assert_eq!((m.service_ports, m.service_port_bind.to_string()), (false, "::1".to_string()));
    }

    /// Listeners that cannot both be bound (the same port on the same or the unspecified address of one family)
    /// are refused, whether they come from the file or from Marathon service ports (the same check).
    #[test]
    fn overlapping_binds_are_refused() {
        let l = |n: &str, a: &str| format!("[[listener]]\nname = \"{n}\"\nbind = \"{a}\"\n");
        let text = [l("a", "0.0.0.0:8080"), l("b", "127.0.0.1:8080"), l("c", "[::]:8080"), l("d", "127.0.0.1:0")];
        let e = parse_config(&text.concat(), "t.toml", Path::new(".")).unwrap_err().to_string();
        assert!(e.contains("listener[1].bind: 127.0.0.1:8080 is bound by another listener"), "{e}");
        assert!(!e.contains("listener[2]") && !e.contains("listener[3]"), "{e}");
        assert!(crate::binds_overlap("[::1]:53".parse().unwrap(), "[::]:53".parse().unwrap()));
        assert!(!crate::binds_overlap("127.0.0.1:53".parse().unwrap(), "127.0.0.2:53".parse().unwrap()));
    }

    /// The check port of marathon-lb's `BACKEND_HEALTHCHECK_PORT_INDEX` (a backend's `check_port`, a check's
    /// `port`) is a real port.
    #[test]
    fn check_ports_must_not_be_zero() {
        let text = "[[group]]\nname = \"g\"\n[group.health]\nkind = \"tcp\"\nport = 0\n\
                    [[group.backend]]\naddr = \"127.0.0.1:80\"\ncheck_port = 0\n";
        let e = parse_config(text, "t.toml", Path::new(".")).unwrap_err().to_string();
        assert!(e.contains("group[0].health.port: must not be 0"), "{e}");
        assert!(e.contains("group[0].backend[0].check_port: must not be 0"), "{e}");
        let ok = text.replace("port = 0", "port = 8081");
        let v = parse_config(&ok, "t.toml", Path::new(".")).unwrap();
        assert_eq!(v.state.groups[0].backends[0].check_port, Some(8081));
        assert_eq!(v.state.groups[0].health.as_ref().and_then(|h| h.port), Some(8081));
    }

    #[test]
    fn bad_values_have_lines() {
        let e = parse_config(
            "[marathon]\nurls = [\"ftp://m\"]\nbackoff_min = \"2s\"\nbackoff_max = \"1s\"\n[marathon.auth]\nuser = \"u\"\n",
            "t.toml",
            Path::new("."),
        )
        .unwrap_err();
        let s = e.to_string();
        assert!(s.contains("t.toml:2:") && s.contains("marathon.urls[0]"), "{s}");
        assert!(s.contains("marathon.backoff_max"), "{s}");
        assert!(s.contains("marathon.auth.user: basic auth needs"), "{s}");
    }
}
