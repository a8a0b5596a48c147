//! Demo backends for `padis demo`: small HTTP servers the embedded default config points at, so a newcomer
//! sees requests proxied with no other set-up.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

/// Addresses of the demo backends (they must match `examples/default.toml`).
pub const DEMO_BACKENDS: [&str; 3] = ["127.0.0.1:9101", "127.0.0.1:9102", "127.0.0.1:9103"];

/// Starts the demo backends. Each answers `/health` with `OK` and everything else with its name and the
/// request it saw (path and forwarding headers), so the proxying is visible.
pub async fn start() -> std::io::Result<()> {
    for (i, addr) in DEMO_BACKENDS.iter().enumerate() {
        let addr: SocketAddr = addr.parse().expect("demo backend addresses are valid");
        let listener = TcpListener::bind(addr).await?;
        let name = format!("demo backend {} ({})", i + 1, if i < 2 { "v1" } else { "v2" });
        tokio::spawn(serve(listener, name));
    }
    Ok(())
}

async fn serve(listener: TcpListener, name: String) {
    let http = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let name = name.clone();
        let http = http.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let body = if req.uri().path() == "/health" {
                    "OK\n".to_string()
                } else {
                    let xff = req.headers().get("x-forwarded-for").and_then(|v| v.to_str().ok()).unwrap_or("-");
                    format!("hello from {name}: {} {} (x-forwarded-for: {xff})\n", req.method(), req.uri())
                };
                async move { Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from(body)))) }
            });
            let _ = http.serve_connection(TokioIo::new(stream), svc).await;
        });
    }
}
