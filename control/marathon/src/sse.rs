//! Server-Sent Events framing (the WHATWG `text/event-stream` rules), fed with arbitrary chunks.
//!
//! Lines end with LF, CRLF or CR (a CR at the end of one chunk and an LF at the start of the next are one line
//! end). `:` lines are comments; `data` lines of one event are joined with `\n`; a blank line dispatches.
//! Lines and events larger than `max_bytes` are dropped (counted in [`SseParser::oversized`]) without buffering
//! them, so a hostile or broken stream cannot grow memory. Event-stream parsing crates do not cap sizes, which
//! is why this small parser exists.

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// `event:` field (`message` when absent).
    pub event: String,
    /// `data:` lines joined with `\n`.
    pub data: String,
}

/// Incremental parser.
#[derive(Debug)]
pub struct SseParser {
    max_bytes: usize,
    line: Vec<u8>,
    skipping_line: bool,
    after_cr: bool,
    event: Option<String>,
    data: String,
    has_data: bool,
    event_too_big: bool,
    /// Lines or events dropped for being larger than the cap.
    pub oversized: u64,
    /// Lines that were not UTF-8 (dropped).
    pub invalid: u64,
}

impl SseParser {
    /// A parser dropping lines and events above `max_bytes`.
    pub fn new(max_bytes: usize) -> SseParser {
        SseParser {
            max_bytes,
            line: Vec::new(),
            skipping_line: false,
            after_cr: false,
            event: None,
            data: String::new(),
            has_data: false,
            event_too_big: false,
            oversized: 0,
            invalid: 0,
        }
    }

    /// Feeds a chunk; returns the events it completed.
    pub fn feed(&mut self, chunk: &[u8]) -> Vec<SseEvent> {
        let mut out = Vec::new();
        let mut rest = chunk;
        if self.after_cr {
            self.after_cr = false;
            if let Some(b'\n') = rest.first() {
                rest = &rest[1..];
            }
        }
        while !rest.is_empty() {
            match rest.iter().position(|b| *b == b'\n' || *b == b'\r') {
                Some(i) => {
                    self.push(&rest[..i]);
                    let cr = rest[i] == b'\r';
                    rest = &rest[i + 1..];
                    if cr {
                        match rest.first() {
                            Some(b'\n') => rest = &rest[1..],
                            None => self.after_cr = true,
                            _ => {}
                        }
                    }
                    self.end_line(&mut out);
                }
                None => {
                    self.push(rest);
                    rest = &[];
                }
            }
        }
        out
    }

    fn push(&mut self, bytes: &[u8]) {
        if self.skipping_line {
            return;
        }
        if self.line.len() + bytes.len() > self.max_bytes {
            self.skipping_line = true;
            self.line = Vec::new();
            return;
        }
        self.line.extend_from_slice(bytes);
    }

    fn end_line(&mut self, out: &mut Vec<SseEvent>) {
        if self.skipping_line {
            self.skipping_line = false;
            self.oversized += 1;
            // A dropped data line spoils its event.
            self.event_too_big = true;
            return;
        }
        let line = std::mem::take(&mut self.line);
        if line.is_empty() {
            self.dispatch(out);
            return;
        }
        let Ok(line) = std::str::from_utf8(&line) else {
            self.invalid += 1;
            return;
        };
        if line.starts_with(':') {
            return;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "event" => self.event = Some(value.to_string()),
            "data" => {
                if self.data.len() + value.len() + 1 > self.max_bytes {
                    self.event_too_big = true;
                    self.data.clear();
                } else if !self.event_too_big {
                    if self.has_data {
                        self.data.push('\n');
                    }
                    self.data.push_str(value);
                }
                self.has_data = true;
            }
            _ => {} // id, retry and unknown fields: not used by Marathon's stream
        }
    }

    fn dispatch(&mut self, out: &mut Vec<SseEvent>) {
        let event = self.event.take();
        let data = std::mem::take(&mut self.data);
        let had = std::mem::replace(&mut self.has_data, false);
        if std::mem::replace(&mut self.event_too_big, false) {
            self.oversized += 1;
            return;
        }
        if had {
            out.push(SseEvent { event: event.unwrap_or_else(|| "message".into()), data });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(p: &mut SseParser, chunks: &[&[u8]]) -> Vec<SseEvent> {
        chunks.iter().flat_map(|c| p.feed(c)).collect()
    }

    #[test]
    fn framing_across_chunks_crlf_comments_multiline() {
        let mut p = SseParser::new(1024);
        let ev = all(
            &mut p,
            &[
                b"event: a\r",
                b"\ndata: {\"x\"",
                b":1}\r\n\r\n: keepalive\n\nevent:b\ndata: l1\ndata: l2\r\rdata",
                b": c\n\n",
            ],
        );
        assert_eq!(
            ev,
            vec![
                SseEvent { event: "a".into(), data: "{\"x\":1}".into() },
                SseEvent { event: "b".into(), data: "l1\nl2".into() },
                SseEvent { event: "message".into(), data: "c".into() },
            ]
        );
    }

    #[test]
    fn huge_lines_are_dropped_without_buffering() {
        let mut p = SseParser::new(64);
        let big = vec![b'x'; 10_000];
        let mut ev = p.feed(b"event: big\ndata: ");
        for _ in 0..100 {
            ev.extend(p.feed(&big));
            assert!(p.line.len() <= 64);
        }
        ev.extend(p.feed(b"\n\nevent: ok\ndata: 1\n\n"));
        assert_eq!(ev, vec![SseEvent { event: "ok".into(), data: "1".into() }]);
        assert_eq!(p.oversized, 2);
    }
}
