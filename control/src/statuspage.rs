//! The live status page of the admin API: `GET /status` (HTML) and `GET /status.js`, both built into the binary
//! (no external asset). The script reads `/v1/state` and `/metrics` every 3 seconds with the page's own
//! credentials and shows listeners, routes with request rates and 5xx ratios, backend groups with health and
//! weights, L4 VIPs with packet rates and connection-table activity, DNS zones with serials and query rates,
//! BGP/BFD sessions, sources with their staleness and rejected items, the generation and the last reload.
//!
//! Access is the admin API's: open on loopback without a token when none is configured; with a token, a
//! browser is asked for it by HTTP Basic authentication (any user name, the token as password), which it then
//! sends with the page's own requests too.

use bytes::Bytes;
use http::{header, HeaderValue, Method, Response, StatusCode};
use http_body_util::Full;

const PAGE: &str = include_str!("statuspage/status.html");
const SCRIPT: &str = include_str!("statuspage/status.js");

/// The page's Content-Security-Policy: its own script and the admin API only; no frame may embed it.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'unsafe-inline'; connect-src 'self'; \
                   img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

/// The paths served here.
pub const PATHS: [&str; 2] = ["/status", "/status.js"];

/// The response for `path` if it is one of the page's, `None` otherwise.
pub fn serve(method: &Method, path: &str) -> Option<Response<Full<Bytes>>> {
    let (content_type, body) = match path {
        "/status" => ("text/html; charset=utf-8", PAGE),
        "/status.js" => ("text/javascript; charset=utf-8", SCRIPT),
        _ => return None,
    };
    let mut resp = Response::builder()
        .header(header::CONTENT_TYPE, content_type)
        .header(header::CACHE_CONTROL, "no-store")
        .header(header::X_CONTENT_TYPE_OPTIONS, "nosniff")
        .header(header::REFERRER_POLICY, "no-referrer")
        .header(header::CONTENT_SECURITY_POLICY, CSP);
    if method == Method::GET || method == Method::HEAD {
        let body = if method == Method::HEAD { Bytes::new() } else { Bytes::from_static(body.as_bytes()) };
        resp = resp.status(StatusCode::OK);
        return resp.body(Full::new(body)).ok();
    }
    let mut r = Response::new(Full::new(Bytes::from_static(b"method not allowed\n")));
    *r.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
    r.headers_mut().insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
    Some(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_loads_nothing_from_elsewhere() {
        for text in [PAGE, SCRIPT] {
            for needle in ["http://", "https://", "//cdn", "@import"] {
                assert!(!text.contains(needle), "external reference {needle}");
            }
        }
        assert!(PAGE.contains("<script src=\"/status.js\">"));
        // No inline script: the CSP allows only the page's own.
        assert_eq!(PAGE.matches("<script").count(), 1);
        let r = serve(&Method::GET, "/status").unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()[header::CONTENT_SECURITY_POLICY], CSP);
        assert_eq!(serve(&Method::POST, "/status.js").unwrap().status(), StatusCode::METHOD_NOT_ALLOWED);
        assert!(serve(&Method::GET, "/statusx").is_none());
    }
}
