//! Secrets of the config (admin tokens, Marathon credentials, TSIG keys): a [`Secret`] never prints or
//! serializes its value, compares in constant time and is wiped from memory when dropped; [`Secret::from_file`]
//! reads one from a file that only its owner may read.
//!
//! ```toml
//! [admin]
//! token_file = "/etc/padis/admin.token"   # mode 0600 (or 0400); beside the inline `token = "..."`
//! ```

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::validate::Validator;

/// What a [`Secret`] prints and serializes as.
pub const REDACTED: &str = "<redacted>";

/// A secret string. `Debug` and `Serialize` give [`REDACTED`]; there is no `Display`: the value is reached
/// only through [`Secret::expose`], at the place that needs it (a header, a MAC key).
#[derive(Clone, Default)]
pub struct Secret(Zeroizing<String>);

impl Secret {
    /// Wraps `value`.
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(Zeroizing::new(value.into()))
    }

    /// The secret value. Never log or serialize it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether the value is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Compares `given` with the secret in time independent of where they differ (the length may show).
    pub fn matches(&self, given: &[u8]) -> bool {
        self.0.as_bytes().ct_eq(given).into()
    }

    /// Reads a secret from `path`: a regular file that neither group nor others may read or write (mode 0600
    /// or stricter), not empty; surrounding whitespace (a trailing newline) is trimmed.
    pub fn from_file(path: &Path) -> Result<Secret, SecretFileError> {
        use std::os::unix::fs::PermissionsExt;
        let err = |kind| SecretFileError { path: path.to_path_buf(), kind };
        let meta = std::fs::metadata(path).map_err(|e| err(SecretFileErrorKind::Io(e)))?;
        if !meta.is_file() {
            return Err(err(SecretFileErrorKind::NotAFile));
        }
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(err(SecretFileErrorKind::Permissions(mode)));
        }
        let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| err(SecretFileErrorKind::Io(e)))?);
        let value = text.trim();
        if value.is_empty() {
            return Err(err(SecretFileErrorKind::Empty));
        }
        Ok(Secret::new(value))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl PartialEq for Secret {
    fn eq(&self, other: &Secret) -> bool {
        self.matches(other.0.as_bytes())
    }
}

impl Eq for Secret {}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(REDACTED)
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Secret, D::Error> {
        String::deserialize(d).map(Secret::new)
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Secret {
        Secret::new(s)
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Secret {
        Secret::new(s)
    }
}

/// Why a secret file was refused.
#[derive(Debug, thiserror::Error)]
#[error("{}: {kind}", path.display())]
pub struct SecretFileError {
    /// The file.
    pub path: PathBuf,
    /// What is wrong with it.
    pub kind: SecretFileErrorKind,
}

/// What is wrong with a secret file.
#[derive(Debug, thiserror::Error)]
pub enum SecretFileErrorKind {
    /// It cannot be read.
    #[error("cannot read: {0}")]
    Io(#[source] std::io::Error),
    /// It is a directory or a special file.
    #[error("not a regular file")]
    NotAFile,
    /// Group or others have access to it.
    #[error("mode {0:04o} lets group or others access this secret; `chmod 600` it (or 400)")]
    Permissions(u32),
    /// It holds nothing but whitespace.
    #[error("empty")]
    Empty,
}

/// Resolves an inline secret and its `*_file` alternative while a config file is loaded: both set is an error
/// at `file_field`; a file is read (relative to `base`) with [`Secret::from_file`] into `inline`, and a refusal
/// is an error at `file_field` (so it gets the config's file:line). Used for every `secret`/`*_file` pair.
pub fn resolve(
    cx: &mut Validator,
    inline_field: &str,
    inline: &mut Option<Secret>,
    file_field: &str,
    file: Option<&Path>,
    base: &Path,
) {
    let Some(file) = file else { return };
    if inline.is_some() {
        cx.error(file_field, format!("set either `{inline_field}` or `{file_field}`, not both"));
        return;
    }
    match Secret::from_file(&base.join(file)) {
        Ok(s) => *inline = Some(s),
        Err(e) => cx.error(file_field, e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn never_printed_nor_serialized() {
        let s = Secret::new("hunter2-value");
        assert_eq!(format!("{s:?}"), REDACTED);
        assert_eq!(format!("{:?}", Some(&s)), format!("Some({REDACTED})"));
        assert_eq!(serde_json::to_string(&s).unwrap(), format!("\"{REDACTED}\""));
        assert_eq!(s.expose(), "hunter2-value");
        let back: Secret = serde_json::from_str("\"hunter2-value\"").unwrap();
        assert_eq!(back, s);
        assert_ne!(Secret::new("hunter2-valuf"), s);
        assert!(s.matches(b"hunter2-value") && !s.matches(b"hunter2") && !s.matches(b""));
    }

    #[test]
    fn files_must_be_private() {
        let dir = std::env::temp_dir().join(format!("padis-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("tok");
        std::fs::write(&f, "s3cret\n").unwrap();
        for (mode, ok) in [(0o600, true), (0o400, true), (0o640, false), (0o604, false), (0o620, false)] {
            std::fs::set_permissions(&f, std::fs::Permissions::from_mode(mode)).unwrap();
            let r = Secret::from_file(&f);
            assert_eq!(r.is_ok(), ok, "mode {mode:o}: {r:?}");
            if let Err(e) = r {
                assert!(e.to_string().contains(&format!("mode {mode:04o}")), "{e}");
            }
        }
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(Secret::from_file(&f).unwrap().expose(), "s3cret");
        std::fs::write(&f, " \n").unwrap();
        assert!(matches!(Secret::from_file(&f).unwrap_err().kind, SecretFileErrorKind::Empty));
        assert!(matches!(Secret::from_file(&dir).unwrap_err().kind, SecretFileErrorKind::NotAFile));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// `*_file` secrets are read when a config file is loaded, relative to it; both forms at once is an error at
    /// the file field's line; a state validated later (merged with sources) keeps what was read.
    #[test]
    fn config_files_name_their_secret_files() {
        let dir = std::env::temp_dir().join(format!("padis-secret-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("admin.token"), "tok\n").unwrap();
        std::fs::set_permissions(dir.join("admin.token"), std::fs::Permissions::from_mode(0o600)).unwrap();
        let v = crate::parse_config("[admin]\ntoken_file = \"admin.token\"\n", "t.toml", &dir).unwrap();
        assert_eq!(v.state.admin.token.as_ref().map(Secret::expose), Some("tok"));
        let again = crate::validate_state(v.state.clone(), "t.toml", &dir, None).unwrap();
        assert_eq!(again.state.admin.token, v.state.admin.token);
        let e = crate::parse_config("[admin]\ntoken = \"x\"\ntoken_file = \"admin.token\"\n", "t.toml", &dir)
            .unwrap_err()
            .to_string();
        assert!(e.contains("t.toml:3:1: admin.token_file: set either `admin.token` or `admin.token_file`"), "{e}");
        let e = crate::parse_config(
            "[marathon]\nurls = [\"http://m\"]\n[marathon.auth]\nuser = \"u\"\npassword_file = \"nope\"\n",
            "t.toml",
            &dir,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("t.toml:5:1: marathon.auth.password_file:") && e.contains("cannot read"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
