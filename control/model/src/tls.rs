//! Certificate material loaded (and checked) while validating, so a snapshot never names a file that
//! cannot be served.

use std::path::Path;
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
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
