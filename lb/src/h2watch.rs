//! What the client I/O wrapper watches on an HTTP/2 connection, from the frames going by in both directions
//! (their 9-byte heads, and the small payloads of SETTINGS and WINDOW_UPDATE): the budget of the client's PING
//! and SETTINGS frames (each makes the server write an acknowledgement, and h2 bounds neither), and the flow-control
//! windows the client grants, so that a client that takes no more of an answer (grants no window while a response
//! is unfinished) is seen stalled, as a client that does not read its socket is.

use std::collections::HashMap;
use std::time::Instant;

const FRAME_HEAD: usize = 9;
const DATA: u8 = 0;
const HEADERS: u8 = 1;
const RST_STREAM: u8 = 3;
pub(crate) const SETTINGS: u8 = 4;
pub(crate) const PING: u8 = 6;
const WINDOW_UPDATE: u8 = 8;
pub(crate) const FLAG_ACK: u8 = 1;
const FLAG_END_STREAM: u8 = 1;
/// SETTINGS_INITIAL_WINDOW_SIZE.
const INITIAL_WINDOW_SIZE: u16 = 4;
/// The window of a connection and of a new stream until SETTINGS say otherwise (RFC 9113 §6.9.2).
const DEFAULT_WINDOW: i64 = 65_535;
/// The client's connection preface.
pub(crate) const CLIENT_PREFACE: usize = 24;
/// Payloads longer than this are not collected (SETTINGS are 6 bytes per setting, WINDOW_UPDATE 4).
const MAX_COLLECT: usize = 1024;

/// A frame head.
#[derive(Clone, Copy, Debug)]
struct Head {
    len: usize,
    kind: u8,
    flags: u8,
    stream: u32,
}

/// Splits one direction's byte stream into frames.
struct Frames {
    /// Bytes to skip before the first frame (the client preface).
    skip: usize,
    head: [u8; FRAME_HEAD],
    head_len: usize,
    /// The frame whose payload is going by, and how much of it is left.
    cur: Option<(Head, usize)>,
    payload: Vec<u8>,
}

impl Frames {
    fn new(skip: usize) -> Frames {
        Frames { skip, head: [0; FRAME_HEAD], head_len: 0, cur: None, payload: Vec::new() }
    }

    /// Follows `data`, calling `f` with each frame completed (with its payload if it is a SETTINGS or
    /// WINDOW_UPDATE frame, else an empty one); stops at the first `false` of `f`.
    fn feed(&mut self, mut data: &[u8], mut f: impl FnMut(Head, &[u8]) -> bool) -> bool {
        loop {
            if let Some((head, left)) = &mut self.cur {
                let n = (*left).min(data.len());
                let collect = matches!(head.kind, SETTINGS | WINDOW_UPDATE) && head.len <= MAX_COLLECT;
                if collect {
                    self.payload.extend_from_slice(&data[..n]);
                }
                *left -= n;
                data = &data[n..];
                if *left > 0 {
                    return true;
                }
                let head = *head;
                self.cur = None;
                let ok = f(head, &self.payload);
                self.payload.clear();
                if !ok {
                    return false;
                }
                continue;
            }
            if data.is_empty() {
                return true;
            }
            if self.skip > 0 {
                let n = self.skip.min(data.len());
                self.skip -= n;
                data = &data[n..];
                continue;
            }
            let n = (FRAME_HEAD - self.head_len).min(data.len());
            self.head[self.head_len..self.head_len + n].copy_from_slice(&data[..n]);
            self.head_len += n;
            data = &data[n..];
            if self.head_len < FRAME_HEAD {
                return true;
            }
            self.head_len = 0;
            let h = &self.head;
            let head = Head {
                len: usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]),
                kind: h[3],
                flags: h[4],
                stream: u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff,
            };
            self.cur = Some((head, head.len));
        }
    }
}

/// A token bucket for the client's PING and SETTINGS frames.
struct Budget {
    tokens: f64,
    per_sec: f64,
    last: Instant,
}

impl Budget {
    fn new(per_sec: u32) -> Budget {
        let per_sec = f64::from(per_sec.max(1));
        Budget { tokens: 2.0 * per_sec, per_sec, last: Instant::now() }
    }

    fn take(&mut self) -> bool {
        let now = Instant::now();
        let refill = now.duration_since(self.last).as_secs_f64() * self.per_sec;
        self.last = now;
        self.tokens = (self.tokens + refill).min(2.0 * self.per_sec);
        if self.tokens < 1.0 {
            return false;
        }
        self.tokens -= 1.0;
        true
    }
}

/// The send windows the client granted: the connection's and those of the streams the server is answering.
struct Windows {
    conn: i64,
    initial: i64,
    /// Streams with an unfinished response, and their windows.
    streams: HashMap<u32, i64>,
    /// Streams whose window is used up.
    blocked: usize,
}

impl Windows {
    fn new() -> Windows {
        Windows { conn: DEFAULT_WINDOW, initial: DEFAULT_WINDOW, streams: HashMap::new(), blocked: 0 }
    }

    /// Adds `delta` to stream `id`'s window (tracking it from the initial window if new).
    fn add(&mut self, id: u32, delta: i64) {
        let initial = self.initial;
        let w = self.streams.entry(id).or_insert_with(|| {
            if initial <= 0 {
                self.blocked += 1;
            }
            initial
        });
        let before = *w;
        *w += delta;
        match (before <= 0, *w <= 0) {
            (false, true) => self.blocked += 1,
            (true, false) => self.blocked -= 1,
            _ => {}
        }
    }

    fn end(&mut self, id: u32) {
        if self.streams.remove(&id).is_some_and(|w| w <= 0) {
            self.blocked -= 1;
        }
    }

    fn set_initial(&mut self, value: i64) {
        let delta = value - self.initial;
        self.initial = value;
        let ids: Vec<u32> = self.streams.keys().copied().collect();
        for id in ids {
            self.add(id, delta);
        }
    }

    /// A response cannot go on for want of window.
    fn stalled(&self) -> bool {
        !self.streams.is_empty() && (self.conn <= 0 || self.blocked > 0)
    }
}

/// Why the client side of an HTTP/2 connection is to be cut.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Flood;

/// The watch over one HTTP/2 client connection.
pub(crate) struct H2Watch {
    inbound: Frames,
    outbound: Frames,
    budget: Budget,
    windows: Windows,
    /// Since when a response waits for window.
    stalled_since: Option<Instant>,
}

impl H2Watch {
    /// A watch from the start of the connection (the client preface comes first), with a budget of `per_sec`
    /// PING/SETTINGS frames per second (burst twice that).
    pub fn new(control_per_sec: u32) -> H2Watch {
        H2Watch {
            inbound: Frames::new(CLIENT_PREFACE),
            outbound: Frames::new(0),
            budget: Budget::new(control_per_sec),
            windows: Windows::new(),
            stalled_since: None,
        }
    }

    /// Follows bytes the client sent.
    pub fn received(&mut self, data: &[u8]) -> Result<(), Flood> {
        let (budget, windows) = (&mut self.budget, &mut self.windows);
        let ok = self.inbound.feed(data, |h, payload| {
            match h.kind {
                PING | SETTINGS if h.flags & FLAG_ACK == 0 && !budget.take() => return false,
                SETTINGS if h.flags & FLAG_ACK == 0 => {
                    for s in payload.chunks_exact(6) {
                        if u16::from_be_bytes([s[0], s[1]]) == INITIAL_WINDOW_SIZE {
                            windows.set_initial(i64::from(u32::from_be_bytes([s[2], s[3], s[4], s[5]])));
                        }
                    }
                }
                WINDOW_UPDATE if payload.len() == 4 => {
                    let inc =
                        i64::from(u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]) & 0x7fff_ffff);
                    if h.stream == 0 {
                        windows.conn += inc;
                    } else if windows.streams.contains_key(&h.stream) {
                        windows.add(h.stream, inc);
                    }
                }
                RST_STREAM => windows.end(h.stream),
                _ => {}
            }
            true
        });
        self.note_stall();
        if ok {
            Ok(())
        } else {
            Err(Flood)
        }
    }

    /// Follows bytes the server wrote.
    pub fn sent(&mut self, data: &[u8]) {
        let windows = &mut self.windows;
        self.outbound.feed(data, |h, _| {
            match h.kind {
                DATA if h.stream != 0 => {
                    windows.conn -= h.len as i64;
                    windows.add(h.stream, -(h.len as i64));
                    if h.flags & FLAG_END_STREAM != 0 {
                        windows.end(h.stream);
                    }
                }
                HEADERS if h.flags & FLAG_END_STREAM != 0 => windows.end(h.stream),
                HEADERS if h.stream != 0 => windows.add(h.stream, 0),
                RST_STREAM => windows.end(h.stream),
                _ => {}
            }
            true
        });
        self.note_stall();
    }

    fn note_stall(&mut self) {
        match (self.windows.stalled(), self.stalled_since) {
            (true, None) => self.stalled_since = Some(Instant::now()),
            (false, Some(_)) => self.stalled_since = None,
            _ => {}
        }
    }

    /// Since when a response has been waiting for the client to grant window, if one is.
    pub fn stalled_since(&self) -> Option<Instant> {
        self.stalled_since
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len();
        let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    fn preface() -> Vec<u8> {
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec()
    }

    #[test]
    fn control_frame_budget_across_splits() {
        let mut w = H2Watch::new(5);
        let mut stream = preface();
        stream.extend(frame(SETTINGS, 0, 0, &[0, 3, 0, 0, 0, 100]));
        // Acknowledgements and other frames (a DATA frame whose payload looks like a PING head) are free.
        stream.extend(frame(SETTINGS, FLAG_ACK, 0, &[]));
        stream.extend(frame(DATA, 0, 1, &frame(PING, 0, 0, &[0; 8])));
        for _ in 0..20 {
            stream.extend(frame(PING, FLAG_ACK, 0, &[0; 8]));
        }
        for _ in 0..9 {
            stream.extend(frame(PING, 0, 0, &[1; 8]));
        }
        // One byte at a time: frame heads split at every boundary.
        for byte in stream.chunks(1) {
            assert_eq!(w.received(byte), Ok(()), "within the burst of 10");
        }
        assert_eq!(w.received(&frame(PING, 0, 0, &[2; 8])), Err(Flood), "the 11th control frame is over the budget");
    }

    #[test]
    fn a_response_without_window_is_stalled_until_the_client_grants_some() {
        let mut w = H2Watch::new(100);
        let mut hello = preface();
        // The client's initial stream window: 100 bytes.
        hello.extend(frame(SETTINGS, 0, 0, &[0, 4, 0, 0, 0, 100]));
        assert_eq!(w.received(&hello), Ok(()));
        w.sent(&frame(HEADERS, 4, 1, &[0x88]));
        w.sent(&frame(DATA, 0, 1, &[0; 60]));
        assert!(w.stalled_since().is_none(), "40 bytes of window left");
        // Split writes: the frame counts once whole.
        let data = frame(DATA, 0, 1, &[0; 40]);
        w.sent(&data[..5]);
        w.sent(&data[5..]);
        assert!(w.stalled_since().is_some(), "the stream's window is used up");
        assert_eq!(w.received(&frame(WINDOW_UPDATE, 0, 1, &[0, 0, 0, 50])), Ok(()));
        assert!(w.stalled_since().is_none(), "granted more");
        // The connection window (65535) is used up by another stream.
        w.sent(&frame(HEADERS, 4, 3, &[0x88]));
        w.set_initial_for_test(1 << 20);
        w.sent(&frame(DATA, 0, 3, &vec![0; 65_535 - 100]));
        assert!(w.stalled_since().is_some(), "no connection window left");
        assert_eq!(w.received(&frame(WINDOW_UPDATE, 0, 0, &[0, 1, 0, 0])), Ok(()));
        assert!(w.stalled_since().is_none());
        // Finished responses wait for nothing, whatever their window.
        w.sent(&frame(DATA, FLAG_END_STREAM, 1, &[0; 50]));
        w.sent(&frame(RST_STREAM, 0, 3, &[0, 0, 0, 8]));
        assert!(w.windows.streams.is_empty() && w.windows.blocked == 0);
        assert!(w.stalled_since().is_none());
    }

    impl H2Watch {
        fn set_initial_for_test(&mut self, v: i64) {
            self.windows.set_initial(v);
        }
    }
}
