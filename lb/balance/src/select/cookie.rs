//! Reading a cookie from request headers.

use http::header::COOKIE;
use http::HeaderMap;

/// The value of cookie `name` in the request's `Cookie` header(s), if present.
pub fn cookie_value<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v.trim().trim_matches('"'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn finds_cookies_across_headers_and_pairs() {
        let mut h = HeaderMap::new();
        h.append(COOKIE, HeaderValue::from_static("a=1;b=2"));
        h.append(COOKIE, HeaderValue::from_static(" sid = \"x y\" ; padis_sticky=abc"));
        assert_eq!(cookie_value(&h, "b"), Some("2"));
        assert_eq!(cookie_value(&h, "padis_sticky"), Some("abc"));
        assert_eq!(cookie_value(&h, "c"), None);
        assert_eq!(cookie_value(&HeaderMap::new(), "a"), None);
        assert_eq!(cookie_value(&h, "sid"), None, "names are exact (no spaces around them)");
    }
}
