//! RFC 1123 host names from service, instance and VIP names: invalid characters are mapped, never dropped.

/// Maps `s` to one RFC 1123 label: lowercase letters, digits and `-`, no leading or trailing `-`, at most 63
/// characters. Anything else becomes `-`; an empty result becomes `x`.
pub fn label(s: &str) -> String {
    let mut out: String =
        s.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' }).collect();
    out.truncate(63);
    let t = out.trim_matches('-');
    if t.is_empty() {
        "x".to_string()
    } else {
        t.to_string()
    }
}

/// Maps a dotted relative name (`web.prod`) to labels, each mapped by [`label`]; empty labels are skipped.
pub fn labels(s: &str) -> Vec<String> {
    s.split('.').filter(|l| !l.is_empty()).map(label).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_invalid_characters() {
        assert_eq!(label("Web_App"), "web-app");
        assert_eq!(label("--x--"), "x");
        assert_eq!(label("é"), "x");
        assert_eq!(label(&"a".repeat(80)).len(), 63);
        assert_eq!(labels("web.Prod"), vec!["web", "prod"]);
        assert_eq!(labels("/group/app"), vec!["-group-app".trim_matches('-').to_string()]);
    }
}
