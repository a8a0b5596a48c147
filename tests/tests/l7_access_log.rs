//! The access log: one `padis::access` event per proxied request, with its fields (the client's address, the
//! request id and a valid W3C `traceparent` among them), alike on the fast path and the hyper path. Alone in its
//! binary because it installs the global tracing subscriber.

use padis_tests::l7::{get_req, group_toml, temp_dir, Backend, H1Conn, Proxy};

/// Collects the fields of `padis::access` events.
#[derive(Clone, Default)]
struct AccessLog(std::sync::Arc<std::sync::Mutex<Vec<String>>>);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for AccessLog {
    fn on_event(&self, event: &tracing::Event<'_>, _cx: tracing_subscriber::layer::Context<'_, S>) {
        if event.metadata().target() != "padis::access" {
            return;
        }
        struct V(String);
        impl tracing::field::Visit for V {
            fn record_debug(&mut self, f: &tracing::field::Field, v: &dyn std::fmt::Debug) {
                self.0.push_str(&format!("{}={:?} ", f.name(), v));
            }
            fn record_str(&mut self, f: &tracing::field::Field, v: &str) {
                self.0.push_str(&format!("{}={} ", f.name(), v));
            }
        }
        let mut v = V(String::new());
        event.record(&mut v);
        self.0.lock().unwrap().push(v.0);
    }
}

// The only test of this binary, so the collector can be the global subscriber: a thread-local default races
// with the callsite interest cache of other tests running in parallel (events were lost under load).
#[tokio::test]
async fn access_log_one_event_per_request() {
    use tracing_subscriber::layer::SubscriberExt;
    let log = AccessLog::default();
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(log.clone()))
        .expect("first subscriber");
    let dir = temp_dir();
    let b = Backend::start("b").await;
    let cfg = format!(
        "[request_id]\n[[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\n\
         [[listener]]\nname = \"hyper\"\nbind = \"127.0.0.1:0\"\nfast_path = false\n\
         [[route]]\nname = \"logged\"\ngroup = \"g\"\n{}",
        group_toml("g", &[&b], "")
    );
    let p = Proxy::start(&cfg, dir.path()).await;
    let web = p.addr("web");
    let mut c = H1Conn::connect(web).await;
    c.get("app.example", "/one").await.unwrap();
    c.get("app.example", "/two?x=1").await.unwrap();
    let lines = log.0.lock().unwrap().clone();
    assert_eq!(lines.len(), 2, "{lines:?}");
    let first = &lines[0];
    for want in [
        "method=GET",
        "host=app.example",
        "path=/one",
        "status=200",
        "route=logged",
        &format!("backend={}", b.addr),
        "bytes=",
    ] {
        assert!(first.contains(want), "{want} missing in {first}");
    }
    assert!(lines[1].contains("path=/two"), "{}", lines[1]);
    drop(c);

    // Client address, request id (the one the backend got) and traceparent (only a valid one), on both paths.
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    for listener in ["web", "hyper"] {
        log.0.lock().unwrap().clear();
        let mut c = H1Conn::connect(p.addr(listener)).await;
        let mut req = get_req("app.example", "/traced");
        req.headers_mut().insert("traceparent", tp.parse().unwrap());
        let a = c.send(req).await.unwrap();
        let id = a.seen_header("x-request-id").expect("a request id at the backend");
        let mut req = get_req("app.example", "/untraced");
        req.headers_mut().insert("traceparent", "00-junk".parse().unwrap());
        c.send(req).await.unwrap();
        let lines = log.0.lock().unwrap().clone();
        assert_eq!(lines.len(), 2, "{lines:?}");
        for want in [
            format!("listener={listener}"),
            "client=127.0.0.1:".into(),
            format!("request_id={id} "),
            format!("traceparent={tp} "),
        ] {
            assert!(lines[0].contains(&want), "{want} missing in {}", lines[0]);
        }
        assert_eq!(id.len(), 36, "{id}");
        assert!(lines[1].contains("traceparent= ") && !lines[1].contains(&id), "{}", lines[1]);
    }
    p.stop().await;
}
