//! The framing of a `Transfer-Encoding: chunked` body (RFC 9112 §7.1), tracked as it passes through unchanged:
//! the fast path copies a backend's chunked body to the client byte for byte and only needs to know where it ends.

/// Largest chunk-size line accepted (digits, extensions and whitespace).
const MAX_SIZE_LINE: usize = 4096;
/// Largest trailer section accepted.
const MAX_TRAILERS: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Hex digits of a chunk size (at least one).
    Size,
    /// After the digits: extensions or whitespace, up to CR.
    SizeRest,
    /// The LF ending the size line.
    SizeLf,
    /// Chunk data.
    Data,
    /// CRLF after the data.
    DataCr,
    DataLf,
    /// Start of a trailer line (or of the final CRLF).
    TrailerStart,
    /// Inside a trailer field line.
    TrailerLine,
    /// The LF ending a trailer line.
    TrailerLf,
    /// The final LF.
    EndLf,
    /// The body is complete.
    Done,
}

/// A malformed chunked body.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("malformed chunked body")]
pub(crate) struct ChunkError;

/// Where a chunked body is.
#[derive(Debug, Clone)]
pub(crate) struct Chunked {
    state: State,
    /// Data bytes left in the current chunk, or the size being read.
    size: u64,
    digits: usize,
    /// Bytes of the current size line or of the trailer section.
    line: usize,
}

impl Default for Chunked {
    fn default() -> Self {
        Chunked { state: State::Size, size: 0, digits: 0, line: 0 }
    }
}

impl Chunked {
    /// Takes the part of `buf` that belongs to the body (all of it, or up to the end of the body): returns the
    /// number of bytes taken and whether the body is complete.
    pub fn advance(&mut self, buf: &[u8]) -> Result<(usize, bool), ChunkError> {
        let mut i = 0;
        while i < buf.len() {
            if self.state == State::Data {
                let n = (buf.len() - i).min(usize::try_from(self.size).unwrap_or(usize::MAX));
                i += n;
                self.size -= n as u64;
                if self.size == 0 {
                    self.state = State::DataCr;
                }
                continue;
            }
            let b = buf[i];
            i += 1;
            self.state = match self.state {
                State::Size => match b {
                    b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                        let d = (b as char).to_digit(16).unwrap_or(0) as u64;
                        self.digits += 1;
                        if self.digits > 16 {
                            return Err(ChunkError);
                        }
                        self.size = self.size.checked_mul(16).ok_or(ChunkError)? + d;
                        State::Size
                    }
                    _ if self.digits == 0 => return Err(ChunkError),
                    b'\r' => State::SizeLf,
                    b';' | b' ' | b'\t' => State::SizeRest,
                    _ => return Err(ChunkError),
                },
                State::SizeRest => match b {
                    b'\r' => State::SizeLf,
                    b'\n' => return Err(ChunkError),
                    _ => State::SizeRest,
                },
                State::SizeLf if b == b'\n' => {
                    self.digits = 0;
                    self.line = 0;
                    if self.size == 0 {
                        State::TrailerStart
                    } else {
                        State::Data
                    }
                }
                State::DataCr if b == b'\r' => State::DataLf,
                State::DataLf if b == b'\n' => State::Size,
                State::TrailerStart => match b {
                    b'\r' => State::EndLf,
                    b'\n' => return Err(ChunkError),
                    _ => State::TrailerLine,
                },
                State::TrailerLine => match b {
                    b'\r' => State::TrailerLf,
                    b'\n' => return Err(ChunkError),
                    _ => State::TrailerLine,
                },
                State::TrailerLf if b == b'\n' => State::TrailerStart,
                State::EndLf if b == b'\n' => {
                    self.state = State::Done;
                    return Ok((i, true));
                }
                _ => return Err(ChunkError),
            };
            self.line += 1;
            let limit = if matches!(self.state, State::Size | State::SizeRest | State::SizeLf) {
                MAX_SIZE_LINE
            } else {
                MAX_TRAILERS
            };
            if self.line > limit {
                return Err(ChunkError);
            }
        }
        Ok((i, self.state == State::Done))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `body` in pieces of `step` bytes; the bytes taken and whether it completed.
    fn feed(body: &[u8], step: usize) -> Result<(usize, bool), ChunkError> {
        let mut c = Chunked::default();
        let mut taken = 0;
        for piece in body.chunks(step) {
            let (n, done) = c.advance(piece)?;
            taken += n;
            if done {
                return Ok((taken, true));
            }
        }
        Ok((taken, false))
    }

    #[test]
    fn finds_the_end_in_any_split() {
        let body = b"5\r\nhello\r\n1a;ext=1\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nx-trailer: 1\r\n\r\n";
        let mut with_next = body.to_vec();
        with_next.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
        for step in [1, 2, 3, 7, 64, 1000] {
            assert_eq!(feed(&with_next, step), Ok((body.len(), true)), "step {step}");
        }
        assert_eq!(feed(b"0\r\n\r\n", 1), Ok((5, true)));
        assert_eq!(feed(b"A\r\n0123456789\r\n", 4), Ok((15, false)), "not over yet");
    }

    #[test]
    fn rejects_malformed_framing() {
        for bad in [
            &b"\r\n"[..],
            b"g\r\n",
            b"5\nhello\r\n0\r\n\r\n",
            b"5\r\nhelloX\r\n",
            b"11111111111111111\r\n",
            b"ffffffffffffffff0\r\n",
            b"0\r\nbad\ntrailer\r\n\r\n",
        ] {
            assert_eq!(feed(bad, 3), Err(ChunkError), "{:?}", String::from_utf8_lossy(bad));
        }
        let long = [b"1;".as_slice(), &[b'x'; MAX_SIZE_LINE]].concat();
        assert_eq!(feed(&long, 100), Err(ChunkError));
    }
}
