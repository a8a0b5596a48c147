//! The request target and Host as both paths read them: a strict authority parser (RFC 3986 §3.2: reg-name,
//! IPv4 or bracketed IPv6, an optional port; no userinfo, nothing else) and path normalisation (percent-encoded
//! unreserved characters decoded, duplicate slashes merged, dot-segments removed, RFC 3986 §5.2.4), so that the
//! path a route matches is the path the backend receives.

use std::borrow::Cow;

/// The routing host of an authority (`host[:port]`): lowercase, port and trailing dot removed, written into
/// `buf`. `None` when it is not a plain authority (empty, userinfo, a bad port, characters no host has).
pub(crate) fn routing_host(raw: &str, buf: &mut String) -> Option<()> {
    let (host, port) = if let Some(rest) = raw.strip_prefix('[') {
        let end = rest.find(']')?;
        let literal = &rest[..end];
        if literal.is_empty() || !literal.bytes().all(|b| b.is_ascii_hexdigit() || matches!(b, b':' | b'.')) {
            return None;
        }
        (&raw[..end + 2], &rest[end + 1..])
    } else {
        match raw.find(':') {
            Some(i) => (&raw[..i], &raw[i..]),
            None => (raw, ""),
        }
    };
    match port.strip_prefix(':') {
        None if port.is_empty() => {}
        Some(p)
            if p.len() <= 5
                && p.bytes().all(|b| b.is_ascii_digit())
                && p.parse::<u32>().map_or(true, |n| n <= 65535) => {}
        _ => return None,
    }
    let name = host.strip_suffix('.').unwrap_or(host);
    let reg_name = !name.starts_with('[');
    if name.is_empty()
        || (reg_name && !name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_')))
        || (reg_name && name.contains(".."))
    {
        return None;
    }
    buf.clear();
    buf.push_str(name);
    buf.make_ascii_lowercase();
    Some(())
}

/// Whether `b` is an unreserved character (RFC 3986 §2.3), which percent-encoding must not change the meaning of.
fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Whether the path of an origin-form target is already in normal form (the common case: no copy).
fn is_normal(path: &str) -> bool {
    let b = path.as_bytes();
    if b.first() != Some(&b'/') {
        return false;
    }
    let mut prev = 0u8;
    for (i, &c) in b.iter().enumerate() {
        match c {
            b'/' if prev == b'/' => return false,
            b'%' => {
                let decoded = (b.get(i + 1).copied().and_then(hex), b.get(i + 2).copied().and_then(hex));
                match decoded {
                    (Some(h), Some(l)) if unreserved(h << 4 | l) => return false,
                    (Some(_), Some(_)) => {}
                    _ => return false,
                }
            }
            b'.' if prev == b'/' => {
                let rest = &b[i..];
                if rest == b"." || rest == b".." || rest.starts_with(b"./") || rest.starts_with(b"../") {
                    return false;
                }
            }
            _ => {}
        }
        prev = c;
    }
    true
}

/// Why a target cannot be normalised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BadTarget {
    /// Not origin-form (`/...`).
    NotOriginForm,
    /// A `%` not followed by two hex digits.
    BadEscape,
}

/// The normal form of an origin-form target (`path[?query]`): the path normalised, the query as it was.
pub(crate) fn normalise_target(target: &str) -> Result<Cow<'_, str>, BadTarget> {
    let (path, query) = match target.find('?') {
        Some(i) => (&target[..i], Some(&target[i..])),
        None => (target, None),
    };
    if !path.starts_with('/') {
        return Err(BadTarget::NotOriginForm);
    }
    if is_normal(path) {
        return Ok(Cow::Borrowed(target));
    }
    // Decode the unreserved escapes; the others stay as they are.
    let b = path.as_bytes();
    let mut decoded = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let (Some(h), Some(l)) = (b.get(i + 1).copied().and_then(hex), b.get(i + 2).copied().and_then(hex)) else {
                return Err(BadTarget::BadEscape);
            };
            let v = h << 4 | l;
            if unreserved(v) {
                decoded.push(v);
            } else {
                decoded.extend_from_slice(&b[i..i + 3]);
            }
            i += 3;
        } else {
            decoded.push(b[i]);
            i += 1;
        }
    }
    // Segments: empty ones (duplicate slashes) and "." dropped, ".." removes the one before (never above the root).
    let segments: Vec<&[u8]> = decoded[1..].split(|&c| c == b'/').collect();
    let trailing = matches!(segments.last(), Some(&(b"" | b"." | b"..")));
    let mut out: Vec<&[u8]> = Vec::with_capacity(segments.len());
    for seg in segments {
        match seg {
            b"" | b"." => {}
            b".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    let mut s = String::with_capacity(decoded.len() + query.map_or(0, str::len));
    for seg in &out {
        s.push('/');
        // Only ASCII and escapes were copied from a &str: still UTF-8.
        s.push_str(std::str::from_utf8(seg).map_err(|_| BadTarget::BadEscape)?);
    }
    if out.is_empty() || trailing {
        s.push('/');
    }
    if let Some(q) = query {
        s.push_str(q);
    }
    Ok(Cow::Owned(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts() {
        let mut b = String::new();
        for (raw, want) in [
            ("WWW.Example.COM:8080", Some("www.example.com")),
            ("a.example.", Some("a.example")),
            ("[::1]:80", Some("[::1]")),
            ("[2001:db8::1]", Some("[2001:db8::1]")),
            ("10.0.0.1:443", Some("10.0.0.1")),
            ("a:", Some("a")),
            ("user@a.example", None),
            ("a.example:80@evil", None),
            ("a b", None),
            ("a/b", None),
            ("a:80:90", None),
            ("a:x", None),
            ("a:99999", None),
            ("[::1]junk", None),
            ("[zz]", None),
            ("", None),
            (":80", None),
            ("a..b", None),
        ] {
            assert_eq!(routing_host(raw, &mut b).map(|_| b.clone()).as_deref(), want, "{raw:?}");
        }
    }

    #[test]
    fn paths() {
        for (raw, want) in [
            ("/", "/"),
            ("/a/b?x=/../y", "/a/b?x=/../y"),
            ("/admin/../secret", "/secret"),
            ("//admin", "/admin"),
            ("/%61dmin", "/admin"),
            ("/%2e%2e/admin", "/admin"),
            ("/a/./b/", "/a/b/"),
            ("/a/b/..", "/a/"),
            ("/a/b/.", "/a/b/"),
            ("/..", "/"),
            ("/../../x", "/x"),
            ("/a//b///c", "/a/b/c"),
            ("/a%2fb", "/a%2fb"),
            ("/a%2Fb%7e/", "/a%2Fb~/"),
            ("/.hidden/..x", "/.hidden/..x"),
            ("/a/..b", "/a/..b"),
            ("/a?", "/a?"),
        ] {
            assert_eq!(normalise_target(raw).unwrap(), want, "{raw:?}");
        }
        assert_eq!(normalise_target("/a%zz"), Err(BadTarget::BadEscape));
        assert_eq!(normalise_target("/a%2"), Err(BadTarget::BadEscape));
        assert_eq!(normalise_target("*"), Err(BadTarget::NotOriginForm));
        assert!(matches!(normalise_target("/plain/path?q=1").unwrap(), Cow::Borrowed(_)));
    }
}
