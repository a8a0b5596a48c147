//! DNS config: `[dns]`, `[[dns.zone]]`, `[[dns.tsig_key]]`, `[dns.rrl]`. Owned by the DNS work.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::secret::{self, Secret};
use crate::validate::Validator;

/// `[dns]`: the authoritative server.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DnsConfig {
    /// UDP+TCP addresses to serve on (none = DNS disabled).
    pub listen: Vec<SocketAddr>,
    /// UDP sockets (and worker threads) per address, bound with SO_REUSEPORT.
    pub reuseport: usize,
    /// EDNS0 UDP payload size the server advertises and uses as its answer limit.
    pub edns_payload: u16,
    /// Receive coalescing under load, as NIC interrupt moderation: when a UDP receive finds several queries
    /// queued (4 to 31), the worker lets its socket queue fill for up to this long before the next receive, so
    /// that each system call and wake-up carries more queries. Light load never waits. 0 turns it off.
    #[serde(with = "humantime_serde")]
    pub udp_batch_wait: Duration,
    /// Where dynamic-update journals and serials are kept across restarts.
    pub state_dir: PathBuf,
    /// TCP connections idle (or sending a partial message) longer than this are closed.
    #[serde(with = "humantime_serde")]
    pub tcp_idle_timeout: Duration,
    /// Maximum concurrent TCP connections; more are refused.
    pub tcp_max_connections: usize,
    /// Serial changes kept per zone for IXFR (older serials get AXFR), in memory and in the on-disk journal.
    pub ixfr_journal: usize,
    /// Size bound of a zone's IXFR history (wire bytes of its changes); the oldest changes are dropped first.
    /// The on-disk journal is compacted when it grows past twice this size.
    pub ixfr_journal_bytes: u64,
    /// Authoritative zones.
    #[serde(rename = "zone")]
    pub zones: Vec<DnsZone>,
    /// TSIG keys, used by zones for transfers, NOTIFY and dynamic updates.
    #[serde(rename = "tsig_key")]
    pub tsig_keys: Vec<TsigKey>,
    /// Response rate limiting.
    pub rrl: RrlConfig,
    /// Answer to CH TXT `version.bind` / `version.server` (RFC 4892). Unset or empty: REFUSED, as Knot answers
    /// when its `version` is disabled (Knot's default gives its version; a gateway facing the Internet does not).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Answer to CH TXT `id.server` / `hostname.bind` (RFC 4892). Unset or empty: REFUSED (as `version`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
}

impl Default for DnsConfig {
    fn default() -> Self {
        DnsConfig {
            listen: Vec::new(),
            reuseport: 1,
            edns_payload: 1232,
            udp_batch_wait: Duration::from_micros(100),
            state_dir: PathBuf::from("/var/lib/padis/dns"),
            tcp_idle_timeout: Duration::from_secs(10),
            tcp_max_connections: 512,
            ixfr_journal: 64,
            ixfr_journal_bytes: 4 << 20,
            zones: Vec::new(),
            tsig_keys: Vec::new(),
            rrl: RrlConfig::default(),
            version: None,
            identity: None,
        }
    }
}

/// `[[dns.zone]]`: one authoritative zone.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DnsZone {
    /// Zone apex, e.g. `svc.example.com`.
    pub name: String,
    /// RFC 1035 master file with static records (relative to the config file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
    /// Publish records generated from services and VIPs.
    #[serde(default)]
    pub generated: bool,
    /// TTL of generated records.
    #[serde(default = "default_ttl", with = "humantime_serde")]
    pub ttl: Duration,
    /// Negative-answer TTL (SOA MINIMUM) for zones without a file SOA.
    #[serde(default = "default_ttl", with = "humantime_serde")]
    pub negative_ttl: Duration,
    /// SOA fields for zones without a file SOA.
    #[serde(default)]
    pub soa: SoaConfig,
    /// Name servers of the zone (NS records at the apex), with glue addresses for in-zone names.
    #[serde(default)]
    pub ns: Vec<NsConfig>,
    /// Who may transfer the zone (AXFR/IXFR).
    #[serde(default)]
    pub allow_transfer: Vec<IpNet>,
    /// TSIG key required for transfers (and used to sign NOTIFY).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transfer_key: Option<String>,
    /// Secondaries that get a NOTIFY on each serial change.
    #[serde(default)]
    pub notify: Vec<SocketAddr>,
    /// Who may send dynamic updates.
    #[serde(default)]
    pub allow_update: Vec<IpNet>,
    /// TSIG key required for dynamic updates (no key = updates refused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_key: Option<String>,
    /// How the SOA serial moves on each change (default: `unixtime` for zones without a master-file SOA,
    /// `increment` for zones whose file gives the SOA).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial_policy: Option<SerialPolicy>,
}

/// How a zone's SOA serial moves on a change; both are monotonic in RFC 1982 arithmetic.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SerialPolicy {
    /// The current unix time, or the previous serial + 1 when that is not greater (Knot's `unixtime`);
    /// a new zone starts at the current unix time.
    Unixtime,
    /// The previous serial + 1; a new zone starts at the file's serial, or 1.
    Increment,
}

fn default_ttl() -> Duration {
    Duration::from_secs(5)
}

/// SOA fields of a zone.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SoaConfig {
    /// Primary name server (default: the first `ns`, else `ns.<zone>`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mname: Option<String>,
    /// Responsible mailbox as a name (default: `hostmaster.<zone>`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rname: Option<String>,
    /// SOA REFRESH.
    #[serde(with = "humantime_serde")]
    pub refresh: Duration,
    /// SOA RETRY.
    #[serde(with = "humantime_serde")]
    pub retry: Duration,
    /// SOA EXPIRE.
    #[serde(with = "humantime_serde")]
    pub expire: Duration,
}

impl Default for SoaConfig {
    fn default() -> Self {
        SoaConfig {
            mname: None,
            rname: None,
            refresh: Duration::from_secs(60),
            retry: Duration::from_secs(10),
            expire: Duration::from_secs(7 * 86400),
        }
    }
}

/// A name server of a zone.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NsConfig {
    /// Host name of the server.
    pub name: String,
    /// Glue addresses (used when the name is inside the zone).
    #[serde(default)]
    pub addrs: Vec<IpAddr>,
}

/// `[[dns.tsig_key]]`: a shared secret (RFC 8945).
///
/// ```toml
/// [[dns.tsig_key]]
/// name = "xfr-key"
/// algorithm = "hmac-sha512"
/// secret_file = "/etc/padis/xfr-key.b64"   # mode 0600 or 0400; or `secret = "<base64>"`
/// ```
///
/// The secret never shows in `Debug`, serialized state (`/v1/state`, `padis status --json`) or `padis check`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TsigKey {
    /// Key name, as sent on the wire (e.g. `xfr-key`).
    pub name: String,
    /// One of [`TSIG_ALGORITHMS`] (default `hmac-sha256`).
    #[serde(default = "default_alg")]
    pub algorithm: String,
    /// Base64 secret (or read from `secret_file` when the config is loaded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<Secret>,
    /// File holding the base64 secret; neither group nor others may read it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_file: Option<PathBuf>,
}

impl TsigKey {
    /// The base64 secret (empty when none was given: validation refuses such a key). Never log it.
    pub fn secret_value(&self) -> &str {
        self.secret.as_ref().map_or("", Secret::expose)
    }
}

/// TSIG algorithms a key may use.
pub const TSIG_ALGORITHMS: [&str; 5] = ["hmac-sha1", "hmac-sha224", "hmac-sha256", "hmac-sha384", "hmac-sha512"];

fn default_alg() -> String {
    "hmac-sha256".into()
}

/// `[dns.rrl]`: response rate limiting per source prefix.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RrlConfig {
    /// Responses per second allowed per prefix (0 = off).
    pub responses_per_second: u32,
    /// Burst allowance, in seconds of rate.
    pub window: u32,
    /// Every `slip`-th limited response is sent truncated (TC) instead of dropped (0 = always drop).
    pub slip: u32,
    /// IPv4 prefix length that groups clients.
    pub ipv4_prefix: u8,
    /// IPv6 prefix length that groups clients.
    pub ipv6_prefix: u8,
}

impl Default for RrlConfig {
    fn default() -> Self {
        RrlConfig { responses_per_second: 0, window: 2, slip: 2, ipv4_prefix: 24, ipv6_prefix: 56 }
    }
}

/// Whether `name` is a valid DNS name in presentation form (labels of letters, digits, `-`, `_`, `*`).
pub fn dns_name_ok(name: &str) -> bool {
    let n = name.strip_suffix('.').unwrap_or(name);
    !n.is_empty()
        && n.len() <= 253
        && n.split('.').all(|l| {
            !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

fn base64_ok(s: &str) -> bool {
    let t = s.trim();
    !t.is_empty()
        && t.len().is_multiple_of(4)
        && t.trim_end_matches('=').bytes().all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
        && t.len() - t.trim_end_matches('=').len() <= 2
}

impl DnsConfig {
    /// Reads every `secret_file` of the TSIG keys into `secret` (when the config file is loaded); a file that
    /// cannot be read or that group or others may access is an error at its `secret_file`.
    pub fn resolve_secrets(&mut self, cx: &mut Validator, base: &Path) {
        for (i, k) in self.tsig_keys.iter_mut().enumerate() {
            let (inline, file) = (format!("dns.tsig_key[{i}].secret"), format!("dns.tsig_key[{i}].secret_file"));
            secret::resolve(cx, &inline, &mut k.secret, &file, k.secret_file.as_deref(), base);
        }
    }

    /// Validates `[dns]`.
    pub fn validate(&self, cx: &mut Validator) {
        if !(1..=64).contains(&self.reuseport) {
            cx.error("dns.reuseport", "must be between 1 and 64");
        }
        if self.edns_payload < 512 {
            cx.error("dns.edns_payload", "must be at least 512");
        }
        if self.udp_batch_wait > Duration::from_millis(1) {
            cx.error("dns.udp_batch_wait", "must be at most 1ms (it adds to answers' latency under load)");
        }
        if self.tcp_idle_timeout.is_zero() {
            cx.error("dns.tcp_idle_timeout", "must be greater than 0");
        }
        if self.tcp_max_connections == 0 {
            cx.error("dns.tcp_max_connections", "must be at least 1");
        }
        let mut seen = HashSet::new();
        for (i, l) in self.listen.iter().enumerate() {
            if !seen.insert(*l) {
                cx.error(format!("dns.listen[{i}]"), format!("{l} is listed twice"));
            }
        }
        let mut keys = HashSet::new();
        for (i, k) in self.tsig_keys.iter().enumerate() {
            let p = format!("dns.tsig_key[{i}]");
            if !dns_name_ok(&k.name) {
                cx.error(format!("{p}.name"), format!("`{}`: not a valid key name", k.name));
            } else if !keys.insert(k.name.to_ascii_lowercase().trim_end_matches('.').to_string()) {
                cx.error(format!("{p}.name"), format!("duplicate key `{}`", k.name));
            }
            if !TSIG_ALGORITHMS.contains(&k.algorithm.to_ascii_lowercase().as_str()) {
                cx.error(
                    format!("{p}.algorithm"),
                    format!("`{}`: expected one of {}", k.algorithm, TSIG_ALGORITHMS.join(", ")),
                );
            }
            match &k.secret {
                None if k.secret_file.is_none() => cx.error(format!("{p}.secret"), "set `secret` or `secret_file`"),
                None => {} // the file was refused when the config was loaded (reported there)
                Some(s) if !base64_ok(s.expose()) => {
                    let f = if k.secret_file.is_some() { "secret_file" } else { "secret" };
                    cx.error(format!("{p}.{f}"), "not valid base64");
                }
                Some(_) => {}
            }
        }
        let key_known = |k: &str| keys.contains(k.to_ascii_lowercase().trim_end_matches('.'));
        let mut zones = HashSet::new();
        for (i, z) in self.zones.iter().enumerate() {
            let p = format!("dns.zone[{i}]");
            if !dns_name_ok(&z.name) {
                cx.error(format!("{p}.name"), format!("`{}`: not a valid zone name", z.name));
            } else if !zones.insert(z.name.to_ascii_lowercase().trim_end_matches('.').to_string()) {
                cx.error(format!("{p}.name"), format!("duplicate zone `{}`", z.name));
            }
            if z.file.is_none() && !z.generated {
                cx.error(format!("{p}.file"), "a zone needs a master `file`, `generated = true`, or both");
            }
            if z.ttl.as_secs() > i32::MAX as u64 {
                cx.error(format!("{p}.ttl"), "too large");
            }
            if z.negative_ttl.as_secs() > 86400 * 7 {
                cx.error(format!("{p}.negative_ttl"), "must be at most 7 days");
            }
            for (f, d) in [("refresh", z.soa.refresh), ("retry", z.soa.retry), ("expire", z.soa.expire)] {
                if d.is_zero() || d.as_secs() > i32::MAX as u64 {
                    cx.error(format!("{p}.soa.{f}"), "must be between 1 s and 68 years");
                }
            }
            for (f, v) in [("mname", &z.soa.mname), ("rname", &z.soa.rname)] {
                if let Some(v) = v {
                    if !dns_name_ok(v) {
                        cx.error(format!("{p}.soa.{f}"), format!("`{v}`: not a valid name"));
                    }
                }
            }
            for (j, ns) in z.ns.iter().enumerate() {
                if !dns_name_ok(&ns.name) {
                    cx.error(format!("{p}.ns[{j}].name"), format!("`{}`: not a valid name", ns.name));
                }
            }
            for (f, k) in [("transfer_key", &z.transfer_key), ("update_key", &z.update_key)] {
                if let Some(k) = k {
                    if !key_known(k) {
                        cx.error(format!("{p}.{f}"), format!("no [[dns.tsig_key]] named `{k}`"));
                    }
                }
            }
            if !z.allow_update.is_empty() && z.update_key.is_none() {
                cx.error(format!("{p}.update_key"), "dynamic updates need a TSIG key");
            }
        }
        for (f, v) in [("version", &self.version), ("identity", &self.identity)] {
            if v.as_ref().is_some_and(|v| v.len() > 255 || !v.is_ascii()) {
                cx.error(format!("dns.{f}"), "must be at most 255 ASCII characters");
            }
        }
        if self.ixfr_journal_bytes < 4096 {
            cx.error("dns.ixfr_journal_bytes", "must be at least 4096");
        }
        if self.rrl.responses_per_second > 0 && self.rrl.window == 0 {
            cx.error("dns.rrl.window", "must be at least 1");
        }
        if self.rrl.ipv4_prefix > 32 {
            cx.error("dns.rrl.ipv4_prefix", "must be at most 32");
        }
        if self.rrl.ipv6_prefix > 128 {
            cx.error("dns.rrl.ipv6_prefix", "must be at most 128");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::parse_config;

    #[test]
    fn dns_section_parses_with_defaults() {
        let v = parse_config(
            "[dns]\nlisten = [\"127.0.0.1:5353\"]\n[[dns.zone]]\nname = \"svc.example\"\ngenerated = true\n",
            "t.toml",
            Path::new("."),
        )
        .unwrap();
        assert_eq!(v.state.dns.zones[0].ttl.as_secs(), 5);
        assert_eq!(v.state.dns.edns_payload, 1232);
        assert_eq!(v.state.dns.udp_batch_wait, std::time::Duration::from_micros(100));
        assert_eq!(v.state.dns.zones[0].serial_policy, None);
        let v = parse_config(
            "[dns]\nixfr_journal_bytes = 65536\n[[dns.zone]]\nname = \"s\"\ngenerated = true\nserial_policy = \"increment\"\n",
            "t.toml",
            Path::new("."),
        )
        .unwrap();
        assert_eq!(v.state.dns.zones[0].serial_policy, Some(super::SerialPolicy::Increment));
        assert_eq!(v.state.dns.ixfr_journal_bytes, 65536);
        let e = parse_config("[dns]\nixfr_journal_bytes = 10\n", "t.toml", Path::new(".")).unwrap_err();
        assert!(e.to_string().contains("dns.ixfr_journal_bytes"), "{e}");
        let e = parse_config("[dns]\nudp_batch_wait = \"2ms\"\n", "t.toml", Path::new(".")).unwrap_err();
        assert!(e.to_string().contains("t.toml:2:1: dns.udp_batch_wait"), "{e}");
        let v = parse_config("[dns]\nudp_batch_wait = \"0s\"\n", "t.toml", Path::new(".")).unwrap();
        assert!(v.state.dns.udp_batch_wait.is_zero());
        let e = parse_config(
            "[dns]\n[[dns.zone]]\nname = \"s\"\ngenerated = true\nserial_policy = \"date\"\n",
            "t.toml",
            Path::new("."),
        );
        assert!(e.is_err());
    }

    /// TSIG secrets: every algorithm of RFC 8945's list, a secret read from a private file, refused from a file
    /// others may read (with the config's file:line), and never in Debug or serialized output.
    #[test]
    fn tsig_secrets_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("padis-tsig-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("k.b64");
        std::fs::write(&f, "c2VjcmV0LXNlY3JldC1zZWNyZXQ=\n").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        let text = format!(
            "[dns]\n[[dns.tsig_key]]\nname = \"a\"\nalgorithm = \"hmac-sha1\"\nsecret = \"aW5saW5lLXNlY3JldA==\"\n\
             [[dns.tsig_key]]\nname = \"b\"\nalgorithm = \"hmac-sha512\"\nsecret_file = \"{}\"\n",
            f.display()
        );
        let v = parse_config(&text, "t.toml", &dir).unwrap();
        let keys = &v.state.dns.tsig_keys;
        assert_eq!(keys[1].secret_value(), "c2VjcmV0LXNlY3JldC1zZWNyZXQ=");
        let shown = format!("{:?} {}", v.state.dns, serde_json::to_string(&v.state.dns).unwrap());
        assert!(!shown.contains("aW5saW5lLXNlY3JldA") && !shown.contains("c2VjcmV0LXNlY3JldC1zZWNyZXQ"), "{shown}");
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = parse_config(&text, "t.toml", &dir).unwrap_err().to_string();
        assert!(e.contains("t.toml:9:1: dns.tsig_key[1].secret_file") && e.contains("mode 0644"), "{e}");
        let e = parse_config("[dns]\n[[dns.tsig_key]]\nname = \"a\"\nalgorithm = \"hmac-md5\"\n", "t.toml", &dir)
            .unwrap_err();
        let e = e.to_string();
        assert!(e.contains("dns.tsig_key[0].algorithm") && e.contains("dns.tsig_key[0].secret"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn dns_errors_have_lines() {
        let e = parse_config(
            "[dns]\n[[dns.zone]]\nname = \"a\"\ngenerated = true\n[[dns.zone]]\nname = \"b..c\"\nupdate_key = \"k\"\n\
             [[dns.tsig_key]]\nname = \"x\"\nsecret = \"not base64!\"\n",
            "t.toml",
            Path::new("."),
        )
        .unwrap_err();
        let s = e.to_string();
        for needle in
            ["t.toml:6:1: dns.zone[1].name", "dns.zone[1].file", "dns.zone[1].update_key", "dns.tsig_key[0].secret"]
        {
            assert!(s.contains(needle), "missing {needle} in\n{s}");
        }
    }
}
