//! The running source: an event-stream task feeding a follower loop that owns the cached apps, the timers
//! (coalesced publish, event-triggered and periodic full syncs, drain expiry) and publication.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http_body_util::BodyExt;
use padis_model::marathon::MarathonConfig;
use padis_model::SourceStatus;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::apps::{App, Apps, ParseCache};
use crate::backoff::Backoff;
use crate::client::Client;
use crate::drain::Drainer;
use crate::events::{self, Event};
use crate::map::Mapper;
use crate::metrics::Metrics;
use crate::sse::SseParser;
use crate::{Effect, MarathonError, MarathonState};

/// Follows Marathon and publishes [`MarathonState`]s.
pub struct MarathonSource;

impl MarathonSource {
    /// Runs until `shutdown`: full syncs + SSE, publishing each new state (only when it changed) on `tx`.
    /// Never publishes an empty state because Marathon is unreachable: on errors only `status` changes.
    /// Must be called inside a Tokio runtime.
    pub fn spawn(
        cfg: MarathonConfig,
        tx: watch::Sender<Option<MarathonState>>,
        metrics: &prometheus::Registry,
        shutdown: CancellationToken,
    ) -> Result<JoinHandle<()>, MarathonError> {
        let client = Arc::new(Client::new(&cfg)?);
        let m = Metrics::new(metrics).map_err(|e| MarathonError::Config(format!("metrics: {e}")))?;
        let (ev_tx, ev_rx) = mpsc::channel(4096);
        let stream = tokio::spawn(stream_loop(client.clone(), cfg.clone(), ev_tx, m.clone(), shutdown.clone()));
        let follower = Follower::new(cfg, client, tx, m, shutdown);
        Ok(tokio::spawn(async move {
            follower.run(ev_rx).await;
            stream.abort();
        }))
    }
}

/// What the stream task tells the follower.
enum StreamMsg {
    /// The stream is open (a full sync must follow, events may have been missed).
    Connected(String),
    /// An event.
    Event(Event),
    /// The stream is gone (reason).
    Down(String),
}

fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// How long the first full sync waits for the event stream to attach.
const STREAM_WAIT: Duration = Duration::from_secs(1);

/// Reads the event stream, reconnecting with jittered back-off; a stream silent for `stream_idle_timeout` is
/// reopened.
async fn stream_loop(
    client: Arc<Client>,
    cfg: MarathonConfig,
    tx: mpsc::Sender<StreamMsg>,
    m: Metrics,
    shutdown: CancellationToken,
) {
    let mut backoff = Backoff::new(cfg.backoff_min, cfg.backoff_max);
    loop {
        let (got_events, reason) = stream_once(&client, &cfg, &tx, &m, &shutdown).await;
        m.stream_up.set(0);
        if shutdown.is_cancelled() {
            return;
        }
        let label = match &reason {
            MarathonError::Stream(r) if r.starts_with("idle") => "idle",
            MarathonError::Stream(_) => "closed",
            _ => "connect",
        };
        m.stream_failures.with_label_values(&[label]).inc();
        debug!(error = %reason, "marathon event stream lost");
        if tx.send(StreamMsg::Down(reason.to_string())).await.is_err() {
            return;
        }
        if got_events {
            backoff.reset();
        }
        let delay = backoff.next_delay();
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

/// One connection of the event stream; returns whether it delivered anything, and why it ended.
async fn stream_once(
    client: &Client,
    cfg: &MarathonConfig,
    tx: &mpsc::Sender<StreamMsg>,
    m: &Metrics,
    shutdown: &CancellationToken,
) -> (bool, MarathonError) {
    let resp = tokio::select! {
        r = client.events(events::SUBSCRIBED) => r,
        _ = shutdown.cancelled() => return (false, MarathonError::Stream("shutdown".into())),
    };
    let resp = match resp {
        Ok(r) => r,
        Err(e) => return (false, e),
    };
    m.stream_connects.inc();
    m.stream_up.set(1);
    let url = client.current().unwrap_or_default();
    if tx.send(StreamMsg::Connected(url)).await.is_err() {
        return (false, MarathonError::Stream("follower gone".into()));
    }
    let mut body = resp.into_body();
    let mut parser = SseParser::new(cfg.max_event_bytes);
    let mut bad_seen = 0;
    let mut delivered = false;
    loop {
        let frame = tokio::select! {
            f = tokio::time::timeout(cfg.stream_idle_timeout, body.frame()) => f,
            _ = shutdown.cancelled() => return (delivered, MarathonError::Stream("shutdown".into())),
        };
        let data = match frame {
            Err(_) => return (delivered, MarathonError::Stream(format!("idle for {:?}", cfg.stream_idle_timeout))),
            Ok(None) => return (delivered, MarathonError::Stream("closed by Marathon".into())),
            Ok(Some(Err(e))) => return (delivered, MarathonError::Stream(e.to_string())),
            Ok(Some(Ok(f))) => match f.into_data() {
                Ok(d) => d,
                Err(_) => continue,
            },
        };
        for ev in parser.feed(&data) {
            delivered = true;
            m.events.with_label_values(&[label_of(&ev.event)]).inc();
            match events::decode(&ev.event, &ev.data) {
                Ok(e) => {
                    if tx.send(StreamMsg::Event(e)).await.is_err() {
                        return (delivered, MarathonError::Stream("follower gone".into()));
                    }
                }
                Err(e) => {
                    m.bad_events.inc();
                    warn!(error = %e, "malformed Marathon event skipped");
                }
            }
        }
        let bad = parser.oversized + parser.invalid;
        if bad > bad_seen {
            m.bad_events.inc_by(bad - bad_seen);
            warn!(count = bad - bad_seen, limit = cfg.max_event_bytes, "oversized or non-UTF-8 Marathon event skipped");
            bad_seen = bad;
        }
    }
}

/// Metric label of an event type (subscribed types only, so a hostile stream cannot grow label sets).
fn label_of(event: &str) -> &'static str {
    events::SUBSCRIBED.iter().find(|t| **t == event).copied().unwrap_or("other")
}

type Resolved = Arc<Mutex<HashMap<String, (IpAddr, Instant)>>>;

/// How long an agent host name's address is reused.
const RESOLVE_TTL: Duration = Duration::from_secs(300);

/// Resolves agent host names that are not addresses (cached).
async fn resolve_hosts(apps: &mut Apps, cache: &Resolved) {
    let mut names: Vec<String> = apps
        .apps
        .iter()
        .flat_map(|a| &a.tasks)
        .filter(|t| t.host.parse::<IpAddr>().is_err() && !t.host.is_empty())
        .map(|t| t.host.clone())
        .collect();
    names.sort_unstable();
    names.dedup();
    let now = Instant::now();
    for name in names {
        let fresh = cache
            .lock()
            .ok()
            .and_then(|c| c.get(&name).filter(|(_, at)| now.duration_since(*at) < RESOLVE_TTL).map(|e| e.0));
        if fresh.is_some() {
            continue;
        }
        let lookup = tokio::time::timeout(Duration::from_secs(2), tokio::net::lookup_host((name.as_str(), 0))).await;
        match lookup {
            Ok(Ok(mut addrs)) => {
                let first = addrs.next();
                if let (Some(a), Ok(mut c)) = (first, cache.lock()) {
                    c.insert(name.clone(), (a.ip(), now));
                }
            }
            _ => warn!(host = %name, "cannot resolve Marathon agent host name; its tasks are skipped"),
        }
    }
    fill_resolved(apps, cache);
}

/// Fills `resolved_host` from the cache (apps are copied only when one of their tasks changes).
fn fill_resolved(apps: &mut Apps, cache: &Resolved) {
    let Ok(c) = cache.lock() else { return };
    if c.is_empty() {
        return;
    }
    let missing = |t: &crate::apps::Task| t.resolved_host.is_none() && c.contains_key(&t.host);
    for a in apps.apps.iter_mut().filter(|a| a.tasks.iter().any(missing)) {
        for t in Arc::make_mut(a).tasks.iter_mut() {
            if t.resolved_host.is_none() {
                t.resolved_host = c.get(&t.host).map(|e| e.0);
            }
        }
    }
}

/// After a full sync: apps equal to the ones already held keep the held allocation (so unchanged apps stay
/// recognisable by pointer, and only one copy of each is alive).
fn keep_unchanged(apps: &mut Apps, old: &Apps) {
    let by_id: HashMap<&str, &Arc<App>, foldhash::fast::RandomState> =
        old.apps.iter().map(|a| (a.id.as_str(), a)).collect();
    for a in &mut apps.apps {
        if let Some(o) = by_id.get(a.id.as_str()) {
            if !Arc::ptr_eq(o, a) && ***o == **a {
                *a = Arc::clone(o);
            }
        }
    }
}

/// Status-only changes are republished at most this often, so `last_ok_unix_ms` stays meaningful.
const STATUS_REFRESH: Duration = Duration::from_secs(30);

struct Follower {
    cfg: MarathonConfig,
    client: Arc<Client>,
    tx: watch::Sender<Option<MarathonState>>,
    m: Metrics,
    shutdown: CancellationToken,
    apps: Option<Apps>,
    drainer: Drainer,
    status: SourceStatus,
    last_pub_at: Instant,
    publish_at: Option<Instant>,
    resync_at: Option<Instant>,
    periodic_at: Instant,
    sync: Option<JoinHandle<Result<Apps, MarathonError>>>,
    sync_started: Instant,
    journal: Vec<Event>,
    sync_backoff: Backoff,
    resolved: Resolved,
    last_ok: Option<Instant>,
    /// Apps of the last `/v2/apps` body, so that unchanged ones are not parsed again.
    parsed: Arc<Mutex<ParseCache>>,
    /// Per-app mapping results, so that unchanged apps are not mapped again.
    mapper: Mapper,
}

impl Follower {
    fn new(
        cfg: MarathonConfig,
        client: Arc<Client>,
        tx: watch::Sender<Option<MarathonState>>,
        m: Metrics,
        shutdown: CancellationToken,
    ) -> Follower {
        let now = Instant::now();
        let first_sync = now + STREAM_WAIT.min(cfg.request_timeout);
        Follower {
            drainer: Drainer::new(cfg.drain_time),
            sync_backoff: Backoff::new(cfg.backoff_min, cfg.backoff_max),
            periodic_at: now + cfg.resync_interval,
            cfg,
            client,
            tx,
            m,
            shutdown,
            apps: None,
            status: MarathonState::default().status,
            last_pub_at: now,
            publish_at: None,
            // The first full sync waits for the event stream (up to STREAM_WAIT) so that one sync, taken after
            // the stream is attached, misses no event; a stream that fails or is slow does not hold it longer.
            resync_at: Some(first_sync),
            sync: None,
            sync_started: now,
            journal: Vec::new(),
            resolved: Arc::new(Mutex::new(HashMap::new())),
            last_ok: None,
            parsed: Arc::new(Mutex::new(ParseCache::default())),
            mapper: Mapper::default(),
        }
    }

    async fn run(mut self, mut rx: mpsc::Receiver<StreamMsg>) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            let now = Instant::now();
            let mut next = self.periodic_at;
            for t in [self.publish_at, self.resync_at.filter(|_| self.sync.is_none()), self.drainer.next_expiry()]
                .into_iter()
                .flatten()
            {
                next = next.min(t);
            }
            let sleep = tokio::time::sleep_until(tokio::time::Instant::from_std(next.max(now)));
            tokio::select! {
                _ = self.shutdown.cancelled() => break,
                msg = rx.recv() => match msg {
                    Some(m) => self.on_stream(m),
                    None => break,
                },
                r = async { self.sync.as_mut().expect("guarded").await }, if self.sync.is_some() => {
                    self.sync = None;
                    let r = r.unwrap_or_else(|e| Err(MarathonError::Stream(format!("sync task: {e}"))));
                    self.on_sync(r);
                }
                _ = tick.tick() => {
                    if let Some(ok) = self.last_ok {
                        self.m.stale_seconds.set(ok.elapsed().as_secs() as i64);
                    }
                }
                _ = sleep => self.on_timers(),
            }
        }
        if let Some(s) = self.sync.take() {
            s.abort();
        }
    }

    fn schedule_publish(&mut self, delay: Duration) {
        let at = Instant::now() + delay;
        self.publish_at = Some(self.publish_at.map_or(at, |p| p.min(at)));
    }

    fn schedule_resync(&mut self, delay: Duration) {
        let at = Instant::now() + delay;
        self.resync_at = Some(self.resync_at.map_or(at, |p| p.min(at)));
    }

    fn on_stream(&mut self, msg: StreamMsg) {
        match msg {
            StreamMsg::Connected(url) => {
                info!(%url, "marathon event stream attached");
                // Events may have been missed while the stream was down: full sync now.
                self.schedule_resync(Duration::ZERO);
            }
            StreamMsg::Down(reason) => {
                debug!(%reason, "marathon event stream down");
                // Without the stream, only a sync tells whether Marathon is still there (and what was missed):
                // one now; if Marathon is gone it fails, the status says so, and retries back off.
                self.schedule_resync(Duration::ZERO);
            }
            StreamMsg::Event(ev) => {
                // `event_stream_attached` is broadcast for every subscriber attaching: nothing to sync.
                if ev == Event::Attached {
                    return;
                }
                if self.sync.is_some() {
                    self.journal.push(ev.clone());
                }
                if let Some(apps) = &mut self.apps {
                    if let Event::AppTerminated { app_id } = &ev {
                        if let Some(a) = apps.apps.iter().find(|a| &a.id == app_id) {
                            self.drainer.app_gone(a);
                        }
                    }
                    if events::apply(apps, &ev) {
                        fill_resolved(apps, &self.resolved);
                        self.schedule_publish(self.cfg.coalesce);
                    }
                }
                self.schedule_resync(self.cfg.resync_delay);
            }
        }
    }

    fn on_timers(&mut self) {
        let now = Instant::now();
        if now >= self.periodic_at {
            self.periodic_at = now + self.cfg.resync_interval;
            self.schedule_resync(Duration::ZERO);
        }
        if self.sync.is_none() && self.resync_at.is_some_and(|t| t <= now) {
            self.resync_at = None;
            self.journal.clear();
            self.sync_started = now;
            let client = self.client.clone();
            let cache = self.resolved.clone();
            let parsed = self.parsed.clone();
            self.sync = Some(tokio::spawn(async move {
                let mut apps = client.apps(parsed).await?;
                resolve_hosts(&mut apps, &cache).await;
                Ok(apps)
            }));
        }
        if self.publish_at.is_some_and(|t| t <= now) || self.drainer.next_expiry().is_some_and(|t| t <= now) {
            self.publish_at = None;
            self.publish();
        }
    }

    fn on_sync(&mut self, r: Result<Apps, MarathonError>) {
        match r {
            Ok(mut apps) => {
                for ev in self.journal.drain(..) {
                    events::apply(&mut apps, &ev);
                }
                fill_resolved(&mut apps, &self.resolved);
                self.m.syncs.with_label_values(&["ok"]).inc();
                self.m.sync_seconds.observe(self.sync_started.elapsed().as_secs_f64());
                self.m.apps.set(apps.apps.len() as i64);
                self.m.tasks.set(apps.task_count() as i64);
                self.m.last_sync_timestamp.set((unix_ms() / 1000) as i64);
                self.m.stale_seconds.set(0);
                if !self.status.ok {
                    info!(url = %self.client.current().unwrap_or_default(), apps = apps.apps.len(), "marathon sync ok");
                }
                self.status.ok = true;
                self.status.last_ok_unix_ms = Some(unix_ms());
                self.status.last_error = None;
                self.last_ok = Some(Instant::now());
                self.sync_backoff.reset();
                if let Some(old) = &self.apps {
                    let ids: std::collections::HashSet<&str> = apps.apps.iter().map(|a| a.id.as_str()).collect();
                    for a in old.apps.iter().filter(|a| !ids.contains(a.id.as_str())) {
                        self.drainer.app_gone(a);
                    }
                    keep_unchanged(&mut apps, old);
                    self.parsed.lock().unwrap_or_else(|p| p.into_inner()).share_with(&apps.apps);
                }
                self.apps = Some(apps);
                self.publish_at = None;
                self.publish();
            }
            Err(e) => {
                self.m.syncs.with_label_values(&["error"]).inc();
                let msg = e.to_string();
                if self.status.last_error.as_deref() != Some(&msg) {
                    warn!(error = %msg, "marathon sync failed; keeping the last good state");
                }
                self.status.ok = false;
                self.status.last_error = Some(msg);
                self.journal.clear();
                let delay = self.sync_backoff.next_delay();
                self.schedule_resync(delay);
                self.publish();
            }
        }
    }

    /// Maps the cached apps (with draining tasks) and publishes when the state differs from the last one.
    fn publish(&mut self) {
        let Some(apps) = &self.apps else { return };
        let list = self.drainer.process(apps, Instant::now());
        let mut state = self.mapper.map(&list, &apps.rejected, &self.cfg);
        drop(list);
        state.status = self.status.clone();
        let refresh = self.last_pub_at.elapsed() >= STATUS_REFRESH;
        let (changed, new_problems): (bool, Vec<(String, Effect)>) = {
            let last = self.tx.borrow();
            match last.as_ref() {
                None => (true, state.problems.iter().map(|p| (p.to_string(), p.effect)).collect()),
                Some(last) => (
                    !last.same_content(&state)
                        || last.status.ok != state.status.ok
                        || last.status.last_error != state.status.last_error
                        || refresh,
                    state
                        .problems
                        .iter()
                        .filter(|p| !last.problems.contains(p))
                        .map(|p| (p.to_string(), p.effect))
                        .collect(),
                ),
            }
        };
        if !changed {
            return;
        }
        for (p, effect) in new_problems {
            match effect {
                Effect::AppSkipped => warn!(problem = %p, "marathon app skipped"),
                Effect::PortSkipped => warn!(problem = %p, "marathon app port not served"),
                Effect::RouteSkipped => warn!(problem = %p, "marathon app route not served"),
                Effect::LabelIgnored => warn!(problem = %p, "marathon app label not honoured"),
                Effect::ListenerSkipped => warn!(problem = %p, "marathon app service port not opened"),
                Effect::VipSkipped => warn!(problem = %p, "marathon app VIP not published"),
            }
        }
        self.m.problems.set(state.problems.len() as i64);
        let mut unsupported: HashMap<&str, std::collections::HashSet<&str>> = HashMap::new();
        for p in &state.problems {
            if let Some(name) = &p.unsupported {
                unsupported.entry(name.as_str()).or_default().insert(p.app.as_str());
            }
        }
        self.m.labels_unsupported.reset();
        for (name, apps) in unsupported {
            self.m.labels_unsupported.with_label_values(&[name]).set(apps.len() as i64);
        }
        self.m.backends.set(state.backend_count() as i64);
        self.m.publishes.inc();
        self.last_pub_at = Instant::now();
        self.tx.send_replace(Some(state));
    }
}
