//! Request dispatch: the fast path first, then the general path (hickory messages) for everything else:
//! errors, EDNS versions, other classes and zones, ANY, TSIG, transfers, updates, NOTIFY and unknown opcodes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use hickory_proto::op::{Edns, Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::TXT;
use hickory_proto::rr::{DNSClass, RData, Record, RecordType};
use rand::seq::SliceRandom;
use tokio::sync::{mpsc, oneshot};

use crate::fast::{self, udp_limit, QueryEdns};
use crate::metrics::{Metrics, QueryCounters};
use crate::resolve::resolve;
use crate::rrl::{Rrl, Verdict};
use crate::tsig::{self, Signer};
use crate::wire::wire_of;
use crate::xfr;
use crate::zone::{ZonePolicy, ZoneSet};

/// A dynamic update for the zone manager to apply.
#[derive(Debug)]
pub struct UpdateJob {
    /// Zone index in the zone set the request was checked against.
    pub zone: Arc<crate::zone::ZoneData>,
    /// Prerequisite section.
    pub prereqs: Vec<Record>,
    /// Update section.
    pub updates: Vec<Record>,
    /// Where the result goes.
    pub reply: oneshot::Sender<ResponseCode>,
}

/// An update waiting for the manager; finish it with [`Handler::finish_update`].
#[derive(Debug)]
pub struct PendingUpdate {
    req: Message,
    signer: Option<Signer>,
    zone: String,
}

/// What to send back.
#[derive(Debug)]
pub enum Outcome {
    /// Nothing (malformed beyond reply, a response, or rate-limited).
    Drop,
    /// The reply is in the output buffer.
    Reply,
    /// Several messages (zone transfer, TCP only).
    Stream(Vec<Vec<u8>>),
    /// An update: send the job to the manager, wait for the result, then [`Handler::finish_update`].
    Update(Box<(UpdateJob, PendingUpdate, oneshot::Receiver<ResponseCode>)>),
}

/// State shared by all workers.
pub struct Handler {
    /// The zones served.
    pub zones: ArcSwap<ZoneSet>,
    /// Metrics.
    pub metrics: Metrics,
    /// Rate limiter.
    pub rrl: Rrl,
    /// Update queue to the zone manager.
    pub updates: mpsc::Sender<UpdateJob>,
    /// MACs of signed updates and NOTIFYs accepted recently (replay protection).
    pub replay: tsig::ReplayCache,
}

fn tsig_label(f: tsig::TsigFailure) -> &'static str {
    match f {
        tsig::TsigFailure::BadKey => "badkey",
        tsig::TsigFailure::BadSig => "badsig",
        tsig::TsigFailure::BadTime => "badtime",
        tsig::TsigFailure::BadTrunc => "badtrunc",
        tsig::TsigFailure::Malformed => "malformed",
    }
}

/// Per-worker state.
pub struct Worker {
    rotate: usize,
    counters: QueryCounters,
    local_latency: prometheus::local::LocalHistogram,
    local_batch: prometheus::local::LocalHistogram,
    pending: u32,
}

impl Worker {
    /// State for one worker.
    pub fn new(metrics: &Metrics) -> Worker {
        Worker {
            rotate: rand::random::<u32>() as usize,
            counters: QueryCounters::new(metrics.clone()),
            local_latency: metrics.latency.local(),
            local_batch: metrics.udp_batch.local(),
            pending: 0,
        }
    }

    fn observe(&mut self, started: Instant) {
        self.local_latency.observe(started.elapsed().as_secs_f64());
        self.pending += 1;
    }

    /// Counts a UDP receive call that took `n` datagrams.
    pub fn received(&mut self, n: usize) {
        self.local_batch.observe(n as f64);
    }

    /// Publishes the query counts of the batch just answered, and the latency observations every 256 queries.
    pub fn end_batch(&mut self) {
        self.counters.flush();
        if self.pending >= 256 {
            self.flush();
        }
    }

    /// Publishes everything accumulated locally.
    pub fn flush(&mut self) {
        self.counters.flush();
        self.local_latency.flush();
        self.local_batch.flush();
        self.pending = 0;
    }
}

fn header_only(req: &[u8], rcode: u8, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(&req[0..2]);
    out.push(0x80 | (req[2] & 0x79)); // QR, opcode and RD copied
    out.push(rcode);
    out.extend_from_slice(&[0; 8]);
}

impl Handler {
    /// Handles one request from `src` against the zone set `set` (loaded once per received batch).
    /// `tcp`: no size limit, transfers allowed. `received`: when the request (for UDP: its batch) was received,
    /// the start of its latency observation.
    #[allow(clippy::too_many_arguments)]
    pub fn handle(
        &self,
        set: &ZoneSet,
        req: &[u8],
        src: SocketAddr,
        tcp: bool,
        out: &mut Vec<u8>,
        w: &mut Worker,
        received: Instant,
    ) -> Outcome {
        if let Some(o) = fast::answer(set, req, out, tcp, set.edns_payload, &mut w.rotate) {
            w.counters.count(set, Some(o.zone), o.qtype, u16::from(o.rcode));
            if o.truncated {
                self.metrics.truncated.inc();
            }
            w.observe(received);
            return self.rate_limit(src, tcp, req, out);
        }
        let outcome = self.general(set, req, src, tcp, out, w);
        w.observe(received);
        match outcome {
            Outcome::Reply => self.rate_limit(src, tcp, req, out),
            o => o,
        }
    }

    fn rate_limit(&self, src: SocketAddr, tcp: bool, req: &[u8], out: &mut Vec<u8>) -> Outcome {
        if tcp || !self.rrl.enabled() {
            return Outcome::Reply;
        }
        match self.rrl.check(src.ip()) {
            Verdict::Send => Outcome::Reply,
            Verdict::Drop => {
                self.metrics.rrl.with_label_values(&["drop"]).inc();
                Outcome::Drop
            }
            Verdict::Slip => {
                self.metrics.rrl.with_label_values(&["slip"]).inc();
                // Header and question only, TC set: a real client retries over TCP.
                let qend = crate::wire::after_questions(req).unwrap_or(12).min(req.len());
                out.clear();
                out.extend_from_slice(&req[..qend]);
                out[2] = 0x80 | 0x04 | 0x02 | (req[2] & 0x79);
                out[3] = 0;
                out[6..12].fill(0);
                Outcome::Reply
            }
        }
    }

    fn general(
        &self,
        set: &ZoneSet,
        req: &[u8],
        src: SocketAddr,
        tcp: bool,
        out: &mut Vec<u8>,
        w: &mut Worker,
    ) -> Outcome {
        if req.len() < 12 || req[2] & 0x80 != 0 {
            return Outcome::Drop; // too short to answer, or a response: never answer those
        }
        let parsed = match crate::wire::message_end(req) {
            Some(end) if end == req.len() => Message::from_vec(req).ok(),
            _ => None, // truncated, or trailing bytes after the announced records
        };
        let msg = match parsed {
            Some(m) => m,
            None => {
                header_only(req, 1, out);
                w.counters.count(set, None, 0, 1);
                return Outcome::Reply;
            }
        };
        // TSIG.
        let mut signer = None;
        match tsig::find(req) {
            Ok(None) => {}
            Ok(Some(found)) => {
                let key = set.keys.iter().find(|k| k.name == found.key_name.to_lowercase());
                let res = match key {
                    Some(k) => tsig::verify_request(req, &found, k).map(|mac| Signer::new((**k).clone(), mac)),
                    None => Err(tsig::TsigFailure::BadKey),
                };
                match (res, key) {
                    (Ok(s), _) => signer = Some(s),
                    (Err(tsig::TsigFailure::Malformed), _) => {
                        self.metrics.tsig.with_label_values(&["malformed"]).inc();
                        header_only(req, 1, out);
                        return Outcome::Reply;
                    }
                    (Err(f), key) => {
                        tracing::info!(%src, key = %found.key_name, failure = %f, "TSIG verification failed");
                        self.metrics.tsig.with_label_values(&[tsig_label(f)]).inc();
                        let mut resp = self.response(&msg, set, ResponseCode::NotAuth);
                        resp.additionals.clear();
                        let limit = limit_of(&msg, set, tcp);
                        return match (f, key) {
                            // BADTIME is signed with the key (RFC 8945 5.2.3): the client can trust our clock.
                            (tsig::TsigFailure::BadTime, Some(k)) => {
                                let s = Signer::bad_time((**k).clone(), found.tsig.mac.clone(), found.tsig.time);
                                self.finish(resp, set, limit, out, None, w, Some(s))
                            }
                            _ => self.finish(resp, set, limit, out, Some((f, found)), w, None),
                        };
                    }
                }
                // A signed request that changes something is accepted once: the same MAC again within its
                // window is a replay. Queries (transfers included) are reads, and clients resend them as they
                // are (UDP retries, TC then TCP), so they are not checked.
                if msg.metadata.op_code != OpCode::Query {
                    let verdict = self.replay.check(
                        &found.key_name.to_lowercase(),
                        &found.tsig.mac,
                        found.tsig.time,
                        found.tsig.fudge,
                    );
                    if verdict != tsig::Replay::Fresh {
                        let what = if verdict == tsig::Replay::Replayed { "replayed" } else { "replay_cache_full" };
                        tracing::warn!(%src, key = %found.key_name, what, "signed request refused");
                        self.metrics.tsig.with_label_values(&[what]).inc();
                        let r = Request { set, src, tcp, signer, out, w };
                        return self.reject(r, &msg, ResponseCode::Refused);
                    }
                }
                self.metrics.tsig.with_label_values(&["ok"]).inc();
            }
            Err(_) => {
                self.metrics.tsig.with_label_values(&["malformed"]).inc();
                header_only(req, 1, out);
                return Outcome::Reply;
            }
        }
        let r = Request { set, src, tcp, signer, out, w };
        match msg.metadata.op_code {
            OpCode::Query => self.query(msg, r),
            OpCode::Update => self.update(msg, r),
            _ => self.reject(r, &msg, ResponseCode::NotImp),
        }
    }

    /// A response skeleton to `req`: ID, opcode, RD/CD, question, EDNS.
    fn response(&self, req: &Message, set: &ZoneSet, rcode: ResponseCode) -> Message {
        let mut m = Message::new(req.metadata.id, MessageType::Response, req.metadata.op_code);
        m.metadata.recursion_desired = req.metadata.recursion_desired;
        m.metadata.checking_disabled = req.metadata.checking_disabled;
        m.metadata.response_code = rcode;
        m.queries.clone_from(&req.queries);
        if let Some(e) = &req.edns {
            let mut edns = Edns::new();
            edns.set_max_payload(set.edns_payload.max(512));
            edns.set_dnssec_ok(e.flags().dnssec_ok);
            m.set_edns(edns);
        }
        m
    }

    /// Answers `req` with `resp`: within the request's size limit, signed when the request was.
    fn reply(&self, r: Request<'_>, req: &Message, resp: Message) -> Outcome {
        let limit = limit_of(req, r.set, r.tcp);
        self.finish(resp, r.set, limit, r.out, None, r.w, r.signer)
    }

    /// Answers `req` with an empty response of `rcode`.
    fn reject(&self, r: Request<'_>, req: &Message, rcode: ResponseCode) -> Outcome {
        let resp = self.response(req, r.set, rcode);
        self.reply(r, req, resp)
    }

    #[allow(clippy::too_many_arguments)]
    fn finish(
        &self,
        resp: Message,
        set: &ZoneSet,
        limit: usize,
        out: &mut Vec<u8>,
        tsig_error: Option<(tsig::TsigFailure, tsig::Found)>,
        w: &mut Worker,
        mut signer: Option<Signer>,
    ) -> Outcome {
        let qtype = resp.queries.first().map_or(0, |q| u16::from(q.query_type()));
        let rcode = u16::from(resp.metadata.response_code);
        let zi = resp.queries.first().and_then(|q| set.find_index(&wire_of(q.name())));
        w.counters.count(set, zi, qtype, rcode);
        let mut bytes = match resp.to_vec() {
            Ok(b) => b,
            Err(_) => {
                let mut m = Message::new(resp.metadata.id, MessageType::Response, resp.metadata.op_code);
                m.metadata.response_code = ResponseCode::ServFail;
                m.queries.clone_from(&resp.queries);
                m.to_vec().unwrap_or_default()
            }
        };
        let reserve = if signer.is_some() { 100 } else { 0 };
        if bytes.len() + reserve > limit {
            self.metrics.truncated.inc();
            let mut t = Message::new(resp.metadata.id, MessageType::Response, resp.metadata.op_code);
            t.metadata = resp.metadata;
            t.metadata.truncation = true;
            t.queries.clone_from(&resp.queries);
            t.edns.clone_from(&resp.edns);
            bytes = t.to_vec().unwrap_or_default();
        }
        if let Some((failure, found)) = tsig_error {
            tsig::append_unsigned_error(&mut bytes, &found, failure);
        } else if let Some(s) = signer.as_mut() {
            s.sign(&mut bytes, None);
        }
        *out = bytes;
        Outcome::Reply
    }

    fn query(&self, msg: Message, r: Request<'_>) -> Outcome {
        let set = r.set;
        if msg.queries.len() != 1 {
            return self.reject(r, &msg, ResponseCode::FormErr);
        }
        if msg.edns.as_ref().is_some_and(|e| e.version() > 0) {
            return self.reject(r, &msg, ResponseCode::BADVERS);
        }
        let q = &msg.queries[0];
        if q.query_class() == DNSClass::CH {
            return self.chaos(msg, r);
        }
        if !matches!(q.query_class(), DNSClass::IN | DNSClass::ANY) {
            return self.reject(r, &msg, ResponseCode::Refused);
        }
        let qwire = wire_of(q.name());
        let Some((zone, _)) = set.find(&qwire) else {
            return self.reject(r, &msg, ResponseCode::Refused);
        };
        let qtype = q.query_type();
        if matches!(qtype, RecordType::AXFR | RecordType::IXFR) {
            return self.transfer(zone, msg, r);
        }
        if matches!(qtype, RecordType::OPT | RecordType::TSIG) {
            return self.reject(r, &msg, ResponseCode::FormErr);
        }
        let dnssec_ok = msg.edns.as_ref().is_some_and(|e| e.flags().dnssec_ok);
        let mut ans = resolve(zone, q.name(), qtype, r.tcp);
        if dnssec_ok && zone.signed {
            crate::resolve::add_dnssec(zone, q.name(), qtype, &mut ans);
        }
        if let Some((s, e)) = ans.shuffle {
            ans.answers[s..e].shuffle(&mut rand::rng());
        }
        let mut resp = self.response(&msg, set, ans.rcode);
        resp.metadata.authoritative = ans.aa;
        resp.answers = ans.answers;
        resp.authorities = ans.authority;
        resp.additionals = ans.additional;
        self.reply(r, &msg, resp)
    }

    /// CH TXT `version.bind`/`version.server` and `id.server`/`hostname.bind` (RFC 4892), as `[dns] version`
    /// and `identity` say; REFUSED when they are not set (Knot's answer when they are disabled) and for any
    /// other CH query.
    fn chaos(&self, msg: Message, r: Request<'_>) -> Outcome {
        let set = r.set;
        let q = &msg.queries[0];
        let name = q.name().to_lowercase().to_ascii();
        let text = match name.as_str() {
            "version.bind." | "version.server." => set.version.clone(),
            "id.server." | "hostname.bind." => set.identity.clone(),
            _ => None,
        };
        let Some(text) = text else {
            return self.reject(r, &msg, ResponseCode::Refused);
        };
        let mut resp = self.response(&msg, set, ResponseCode::NoError);
        resp.metadata.authoritative = true;
        if matches!(q.query_type(), RecordType::TXT | RecordType::ANY) {
            let mut r = Record::from_rdata(q.name().clone(), 0, RData::TXT(TXT::new(vec![text.to_string()])));
            r.dns_class = DNSClass::CH;
            resp.answers.push(r);
        }
        self.reply(r, &msg, resp)
    }

    fn transfer(&self, zone: &Arc<crate::zone::ZoneData>, msg: Message, r: Request<'_>) -> Outcome {
        let (set, src) = (r.set, r.src);
        let zname = zone.origin.to_ascii();
        let kind = if msg.queries[0].query_type() == RecordType::AXFR { "axfr" } else { "ixfr" };
        let refuse = |rcode| {
            self.metrics.transfers.with_label_values(&[&zname, "refused"]).inc();
            self.response(&msg, set, rcode)
        };
        if !ZonePolicy::allowed(&zone.policy.allow_transfer, src.ip()) {
            tracing::info!(%src, zone = %zname, "transfer refused by ACL");
            let resp = refuse(ResponseCode::Refused);
            return self.reply(r, &msg, resp);
        }
        if let Some(k) = &zone.policy.transfer_key {
            if r.signer.as_ref().is_none_or(|s| s.key_name() != &k.name) {
                // As BIND: a transfer not signed with the zone's key is REFUSED (even from an allowed address).
                tracing::info!(%src, zone = %zname, "transfer without the zone's TSIG key refused");
                let resp = refuse(ResponseCode::Refused);
                return self.reply(r, &msg, resp);
            }
        }
        if !r.tcp {
            if kind == "axfr" {
                let resp = refuse(ResponseCode::FormErr);
                return self.reply(r, &msg, resp);
            }
            // IXFR over UDP: the current SOA tells the client to come back over TCP.
            let mut resp = self.response(&msg, set, ResponseCode::NoError);
            resp.metadata.authoritative = true;
            resp.answers.push(zone.soa_record());
            return self.reply(r, &msg, resp);
        }
        let client_serial = msg.authorities.iter().find_map(|r| match &r.data {
            hickory_proto::rr::RData::SOA(s) => Some(s.serial),
            _ => None,
        });
        let (records, what) = xfr::transfer_records(zone, kind == "ixfr", client_serial);
        self.metrics.transfers.with_label_values(&[&zname, what]).inc();
        tracing::info!(%src, zone = %zname, kind = what, serial = zone.serial, "zone transfer");
        let qtype = u16::from(msg.queries[0].query_type());
        r.w.counters.count(set, set.by_origin.get(&zone.origin_wire[..]).copied(), qtype, 0);
        Outcome::Stream(xfr::messages(&msg, records, r.signer))
    }

    fn update(&self, msg: Message, r: Request<'_>) -> Outcome {
        let (set, src) = (r.set, r.src);
        let zone_q = match msg.queries.as_slice() {
            [q] if q.query_type() == RecordType::SOA => q,
            _ => {
                return self.reject(r, &msg, ResponseCode::FormErr);
            }
        };
        let zwire = wire_of(zone_q.name());
        let zone = set.by_origin.get(&zwire).and_then(|i| set.zones.get(*i));
        let Some(zone) = zone else {
            return self.reject(r, &msg, ResponseCode::NotAuth);
        };
        let zname = zone.origin.to_ascii();
        let result = |rcode: ResponseCode| {
            self.metrics.updates.with_label_values(&[&zname, crate::metrics::rcode_label(u16::from(rcode))]).inc();
            self.response(&msg, set, rcode)
        };
        let Some(key) = &zone.policy.update_key else {
            let resp = result(ResponseCode::Refused);
            return self.reply(r, &msg, resp);
        };
        if zone.signed {
            // Its signatures come from the signer: a change made here would be served unsigned (and its SOA's
            // new serial would break the SOA's signature). A pre-signed zone changes through its file.
            tracing::info!(%src, zone = %zname, "update of a pre-signed zone refused");
            let resp = result(ResponseCode::Refused);
            return self.reply(r, &msg, resp);
        }
        if !zone.policy.allow_update.is_empty() && !ZonePolicy::allowed(&zone.policy.allow_update, src.ip()) {
            let resp = result(ResponseCode::Refused);
            return self.reply(r, &msg, resp);
        }
        if r.signer.as_ref().is_none_or(|s| s.key_name() != &key.name) {
            let resp = result(ResponseCode::Refused);
            return self.reply(r, &msg, resp);
        }
        if let Err(rcode) = crate::update::prescan(&zone.origin_wire, &msg.authorities) {
            let resp = result(rcode);
            return self.reply(r, &msg, resp);
        }
        let (tx, rx) = oneshot::channel();
        let job =
            UpdateJob { zone: zone.clone(), prereqs: msg.answers.clone(), updates: msg.authorities.clone(), reply: tx };
        Outcome::Update(Box::new((job, PendingUpdate { req: msg, signer: r.signer, zone: zname }, rx)))
    }

    /// Builds the reply to an update once the manager answered (`None`: the manager is gone → SERVFAIL).
    pub fn finish_update(
        &self,
        p: PendingUpdate,
        rcode: Option<ResponseCode>,
        tcp: bool,
        out: &mut Vec<u8>,
        w: &mut Worker,
    ) -> Outcome {
        let rcode = rcode.unwrap_or(ResponseCode::ServFail);
        self.metrics.updates.with_label_values(&[&p.zone, crate::metrics::rcode_label(u16::from(rcode))]).inc();
        let set = self.zones.load();
        let resp = self.response(&p.req, &set, rcode);
        let limit = limit_of(&p.req, &set, tcp);
        self.finish(resp, &set, limit, out, None, w, p.signer)
    }
}

/// A request being answered, and what every answer to it needs: the zone set it is answered from, its source and
/// transport, the TSIG signer of a signed request, the output and the worker's counters.
struct Request<'a> {
    set: &'a ZoneSet,
    src: SocketAddr,
    tcp: bool,
    signer: Option<Signer>,
    out: &'a mut Vec<u8>,
    w: &'a mut Worker,
}

/// The size limit for the answer to `req`.
fn limit_of(req: &Message, set: &ZoneSet, tcp: bool) -> usize {
    if tcp {
        return 65535;
    }
    udp_limit(req.edns.as_ref().map(|e| QueryEdns { payload: e.max_payload(), dnssec_ok: false }), set.edns_payload)
}
