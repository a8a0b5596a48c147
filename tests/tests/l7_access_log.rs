//! The access log: one `padis::access` event per proxied request, with its fields. Alone in its binary because
//! it installs the global tracing subscriber.

use padis_tests::l7::{group_toml, temp_dir, Backend, H1Conn, Proxy};

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
        "[[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\n[[route]]\nname = \"logged\"\ngroup = \"g\"\n{}",
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
    p.stop().await;
}
