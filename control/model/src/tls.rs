//! Certificate material loaded (and checked) while validating, so a snapshot never names a file that
//! cannot be served.

use std::path::Path;
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use serde::Serialize;

/// A certificate chain and key ready for rustls, with what metrics and SNI need from the leaf.
#[derive(Debug, Serialize)]
pub struct CertMaterial {
    /// Config name.
    pub name: String,
    /// Chain, leaf first.
    #[serde(skip)]
    pub chain: Vec<CertificateDer<'static>>,
    /// Private key.
    #[serde(skip)]
    pub key: Arc<PrivateKeyDer<'static>>,
    /// SNI names (configured, or the leaf's DNS subjectAltNames).
    pub server_names: Vec<String>,
    /// Leaf `notAfter`, seconds since the epoch.
    pub not_after_unix: i64,
}

impl PartialEq for CertMaterial {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
            && self.chain == other.chain
            && self.key.secret_der() == other.key.secret_der()
            && self.server_names == other.server_names
    }
}

/// Reads and checks a certificate and key. `base` resolves relative paths.
pub fn load(name: &str, cert: &Path, key: &Path, server_names: &[String], base: &Path) -> Result<CertMaterial, String> {
    let cert_path = base.join(cert);
    let key_path = base.join(key);
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert_path)
        .map_err(|e| format!("{}: {e}", cert_path.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", cert_path.display()))?;
    let leaf = chain.first().ok_or_else(|| format!("{}: no certificate in file", cert_path.display()))?;
    let key = PrivateKeyDer::from_pem_file(&key_path).map_err(|e| format!("{}: {e}", key_path.display()))?;
    let (_, parsed) = x509_parser::parse_x509_certificate(leaf.as_ref())
        .map_err(|e| format!("{}: bad certificate: {e}", cert_path.display()))?;
    let mut names: Vec<String> = server_names.iter().map(|n| n.to_ascii_lowercase()).collect();
    if names.is_empty() {
        if let Ok(Some(san)) = parsed.subject_alternative_name() {
            for gn in &san.value.general_names {
                if let x509_parser::extensions::GeneralName::DNSName(n) = gn {
                    names.push(n.to_ascii_lowercase());
                }
            }
        }
    }
    let not_after_unix = parsed.validity().not_after.timestamp();
    Ok(CertMaterial {
        name: name.to_string(),
        chain: chain.clone(),
        key: Arc::new(key),
        server_names: names,
        not_after_unix,
    })
}

/// Reads a PEM bundle of CA certificates (at least one), checking each parses as X.509.
pub fn load_ca_bundle(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no PEM certificate in file", path.display()));
    }
    for (i, c) in certs.iter().enumerate() {
        x509_parser::parse_x509_certificate(c.as_ref())
            .map_err(|e| format!("{}: certificate #{}: {e}", path.display(), i + 1))?;
    }
    Ok(certs)
}

/// Reads a certificate revocation list file: one DER CRL, or PEM `X509 CRL` blocks (at least one), each parsed.
pub fn load_crls(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, String> {
    let raw = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let crls: Vec<CertificateRevocationListDer<'static>> = if raw.first() == Some(&0x30) {
        vec![CertificateRevocationListDer::from(raw)]
    } else {
        CertificateRevocationListDer::pem_slice_iter(&raw)
            .collect::<Result<_, _>>()
            .map_err(|e| format!("{}: {e}", path.display()))?
    };
    if crls.is_empty() {
        return Err(format!("{}: no CRL in file (expected DER or PEM `X509 CRL`)", path.display()));
    }
    for (i, c) in crls.iter().enumerate() {
        <x509_parser::revocation_list::CertificateRevocationList as x509_parser::prelude::FromDer<_>>::from_der(
            c.as_ref(),
        )
        .map_err(|e| format!("{}: CRL #{}: {e}", path.display(), i + 1))?;
    }
    Ok(crls)
}

/// The subject of a DER certificate as an RFC 4514 string (`CN=client,O=Partner`), most specific first.
pub fn subject(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let mut rdns: Vec<String> = cert
        .subject()
        .iter_rdn()
        .map(|rdn| {
            rdn.iter()
                .map(|atv| {
                    let name = x509_parser::objects::oid2abbrev(atv.attr_type(), x509_parser::objects::oid_registry())
                        .map(str::to_string)
                        .unwrap_or_else(|_| atv.attr_type().to_id_string());
                    let value = atv.as_str().map(escape_dn_value).unwrap_or_else(|_| {
                        let hex: String = atv.attr_value().data.iter().map(|b| format!("{b:02x}")).collect();
                        format!("#{hex}")
                    });
                    format!("{name}={value}")
                })
                .collect::<Vec<_>>()
                .join("+")
        })
        .collect();
    rdns.reverse();
    Some(rdns.join(","))
}

/// An attribute value escaped as RFC 4514 asks (and control characters as `\XX`, so it fits a header).
fn escape_dn_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    let last = v.chars().count().saturating_sub(1);
    for (i, ch) in v.chars().enumerate() {
        match ch {
            '"' | '+' | ',' | ';' | '<' | '>' | '\\' => {
                out.push('\\');
                out.push(ch);
            }
            '#' if i == 0 => out.push_str("\\#"),
            ' ' if i == 0 || i == last => out.push_str("\\ "),
            c if c.is_control() || !c.is_ascii() => {
                let mut b = [0u8; 4];
                for byte in c.encode_utf8(&mut b).bytes() {
                    out.push_str(&format!("\\{byte:02X}"));
                }
            }
            c => out.push(c),
        }
    }
    out
}
