//! TLS on the fast path: rustls' unbuffered server connection, driven by the loop with the loop's own buffers.
//!
//! Reads go socket -> ciphertext buffer -> (decrypted by rustls) -> the client's plaintext read buffer, every
//! complete record at once, so rustls never holds received plaintext between turns and can always encrypt. Writes
//! stay plaintext in the client's output buffer while the turn produces them; `flush` encrypts them, in as few
//! records as their size needs, straight into the ciphertext output buffer it then sends.
//!
//! Before the handshake the ClientHello is peeked at (rustls' `Acceptor` on a copy): a client whose ALPN offer
//! makes the listener choose h2 goes to the hyper path untouched, everyone else does the handshake here with the
//! listener's config without h2 (the same choice for them). A connection the fast path hands over after its
//! handshake goes on over [`TlsStream`], the same connection state behind `AsyncRead`/`AsyncWrite`.

use std::io::{self, ErrorKind, Write};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use rustls::server::{Acceptor, UnbufferedServerConnection};
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncodeTlsData, EncryptError, InsufficientSizeError, UnbufferedStatus,
};
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::buf::Buf;

/// The largest TLS record on the wire: 16 KiB of plaintext, 256 bytes of expansion, a 5-byte header.
const MAX_RECORD: usize = 16384 + 256 + 5;
/// Ciphertext read per turn at most (a little over two records).
const RX_MAX: usize = 2 * MAX_RECORD + 1024;
/// First size of the ciphertext buffers.
const TLS_BUF: usize = 4096;
/// Ciphertext queued by [`TlsStream`] before a write waits for the socket.
const TX_HIGH: usize = 64 * 1024;

/// A TLS failure, as an I/O error that keeps its cause.
fn tls_error(e: rustls::Error) -> io::Error {
    io::Error::new(ErrorKind::InvalidData, e)
}

fn state_error(what: &'static str) -> io::Error {
    io::Error::new(ErrorKind::InvalidData, what)
}

/// What the start of a TLS connection says.
pub(super) enum Hello {
    /// The ClientHello is not complete yet.
    Partial,
    /// The hyper path takes the connection as it is: the listener chooses h2 for this client's ALPN offer, or
    /// the bytes are not a ClientHello rustls reads (the hyper path's handshake fails and counts it), or the
    /// client closed.
    Hyper,
    /// The fast path does the handshake; the server name the client asked for (lowercase, no trailing dot).
    Fast(Option<Box<str>>),
}

/// The protocol the listener's ALPN preference (`ours`, in order) picks from a client's offer (rustls picks the
/// first of the server's list the client offers).
fn chosen<'a>(ours: &'a [Vec<u8>], offer: &[&[u8]]) -> Option<&'a [u8]> {
    ours.iter().map(Vec::as_slice).find(|p| offer.contains(p))
}

/// Looks at the ClientHello waiting on `sock` without taking it; `alpn` is the listener's ALPN list.
pub(super) fn peek_hello(sock: &mio::net::TcpStream, alpn: &[Vec<u8>], scratch: &mut Vec<u8>) -> io::Result<Hello> {
    scratch.resize(MAX_RECORD, 0);
    let n = match sock.peek(scratch) {
        Ok(0) => return Ok(Hello::Hyper),
        Ok(n) => n,
        Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::Interrupted => return Ok(Hello::Partial),
        Err(e) => return Err(e),
    };
    let mut acceptor = Acceptor::default();
    let mut rd = &scratch[..n];
    while !rd.is_empty() {
        if acceptor.read_tls(&mut rd).is_err() {
            return Ok(Hello::Hyper);
        }
    }
    match acceptor.accept() {
        Ok(Some(accepted)) => {
            let hello = accepted.client_hello();
            let offer: Vec<&[u8]> = hello.alpn().map(|a| a.collect()).unwrap_or_default();
            if chosen(alpn, &offer) == Some(b"h2".as_slice()) {
                return Ok(Hello::Hyper);
            }
            let sni = hello.server_name().map(|n| n.trim_end_matches('.').to_ascii_lowercase().into_boxed_str());
            Ok(Hello::Fast(sni))
        }
        // A ClientHello larger than one record's peek: not worth the fast path's while.
        Ok(None) if n == scratch.len() => Ok(Hello::Hyper),
        Ok(None) => Ok(Hello::Partial),
        Err(_) => Ok(Hello::Hyper),
    }
}

/// A listener's server config for the fast path: the same certificates, resumption state and everything else, but
/// without h2 in ALPN (the fast path only takes clients for whom the listener would not choose h2; see
/// [`peek_hello`]).
pub(crate) fn fast_config(cfg: &Arc<ServerConfig>) -> Arc<ServerConfig> {
    if !cfg.alpn_protocols.iter().any(|p| p == b"h2") {
        return cfg.clone();
    }
    let mut fast = (**cfg).clone();
    fast.alpn_protocols.retain(|p| p != b"h2");
    Arc::new(fast)
}

/// One TLS connection's state on the fast path.
pub(super) struct Tls {
    conn: UnbufferedServerConnection,
    /// Ciphertext read and not processed yet (part of a record, between turns).
    rx: Buf,
    /// Ciphertext to send.
    tx: Buf,
    /// The server name the client asked for.
    pub sni: Option<Box<str>>,
    /// The verified subject of the client's certificate, once the handshake is complete
    /// (`crate::tls::client_subject`).
    pub subject: Option<Arc<str>>,
    /// The handshake is complete.
    pub open: bool,
    /// The client sent its close_notify: nothing more comes from it.
    pub peer_closed: bool,
    close_sent: bool,
}

impl Tls {
    pub fn new(cfg: Arc<ServerConfig>, sni: Option<Box<str>>) -> io::Result<Tls> {
        Ok(Tls {
            conn: UnbufferedServerConnection::new(cfg).map_err(tls_error)?,
            rx: Buf::new(TLS_BUF),
            tx: Buf::new(TLS_BUF),
            sni,
            subject: None,
            open: false,
            peer_closed: false,
            close_sent: false,
        })
    }

    /// The negotiated protocol version, as the handshake metric labels it.
    pub fn version(&self) -> &'static str {
        match self.conn.protocol_version() {
            Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
            Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
            _ => "other",
        }
    }

    /// The negotiated ALPN protocol.
    pub fn alpn(&self) -> Option<&[u8]> {
        self.conn.alpn_protocol()
    }

    /// Takes the verified subject of the client's certificate once the handshake is complete.
    pub fn read_subject(&mut self) {
        self.subject = crate::tls::client_subject(&self.conn);
    }

    /// Ciphertext waiting to be sent.
    pub fn unsent(&self) -> &[u8] {
        self.tx.filled()
    }

    pub fn pending(&self) -> usize {
        self.tx.len()
    }

    /// Reads from `sock` until it would block, the peer closed, or `inb` holds `max` bytes, and decrypts every
    /// complete record into `inb` (answering handshake messages into the output): whether the client closed
    /// (its close_notify or the end of the stream) and whether reading stopped for want of room.
    pub fn fill(
        &mut self,
        sock: &mut mio::net::TcpStream,
        inb: &mut Buf,
        max: usize,
        to_end: bool,
    ) -> io::Result<(bool, bool)> {
        loop {
            if inb.len() >= max {
                return Ok((false, true));
            }
            let (eof, full) = self.rx.fill(sock, RX_MAX, to_end)?;
            self.process(inb)?;
            if eof || self.peer_closed {
                return Ok((true, false));
            }
            if !full {
                return Ok((false, false));
            }
        }
    }

    /// Processes the complete records read so far.
    fn process(&mut self, inb: &mut Buf) -> io::Result<()> {
        self.drive(inb, None)
    }

    /// After a failure: the alert rustls queued, into the output.
    fn take_alert(&mut self) {
        let UnbufferedStatus { state, .. } = self.conn.process_tls_records(&mut []);
        if let Ok(ConnectionState::EncodeTlsData(mut e)) = state {
            let _ = encode(&mut e, &mut self.tx);
        }
    }

    /// Encrypts `plain` into the output (application data after the handshake). Plaintext rustls still had for
    /// the reader goes to `inb`.
    pub fn seal(&mut self, plain: &[u8], inb: &mut Buf) -> io::Result<()> {
        self.drive(inb, Some(plain))
    }

    /// Runs rustls over the records read so far until it waits: received plaintext goes to `inb`, handshake and
    /// alert records to the output; with `send`, until `send` is encrypted into the output (an error if the
    /// connection cannot send), without, until the handshake blocks or application data may flow.
    fn drive(&mut self, inb: &mut Buf, send: Option<&[u8]>) -> io::Result<()> {
        loop {
            let UnbufferedStatus { mut discard, state } = self.conn.process_tls_records(self.rx.filled_mut());
            let state = match state {
                Ok(s) => s,
                Err(e) => {
                    self.rx.consume(discard);
                    self.take_alert();
                    return Err(tls_error(e));
                }
            };
            let mut done = false;
            match (state, send) {
                (ConnectionState::ReadTraffic(mut r), _) => {
                    while let Some(rec) = r.next_record() {
                        let rec = rec.map_err(tls_error)?;
                        discard += rec.discard;
                        inb.push(rec.payload);
                    }
                }
                (ConnectionState::EncodeTlsData(mut e), _) => encode(&mut e, &mut self.tx)?,
                (ConnectionState::TransmitTlsData(t), _) => t.done(),
                (ConnectionState::PeerClosed, _) => self.peer_closed = true,
                (ConnectionState::WriteTraffic(mut w), Some(plain)) => {
                    // Enough room for the records (each adds at most 256 bytes to at most 16 KiB), else as much as
                    // rustls says it needs.
                    let mut room = plain.len() + (plain.len() / 16384 + 1) * 256;
                    loop {
                        let out = self.tx.reserve(room);
                        match w.encrypt(plain, out) {
                            Ok(n) => {
                                self.tx.commit(n);
                                break;
                            }
                            Err(EncryptError::InsufficientSize(InsufficientSizeError { required_size }))
                                if required_size > room =>
                            {
                                room = required_size
                            }
                            Err(e) => return Err(io::Error::new(ErrorKind::InvalidData, e)),
                        }
                    }
                    done = true;
                }
                (ConnectionState::WriteTraffic(_), None) => {
                    // TLS 1.3 allows the server's data before the client's Finished: open means complete.
                    self.open |= !self.conn.is_handshaking();
                    done = true;
                }
                (ConnectionState::BlockedHandshake, None) => done = true,
                (ConnectionState::Closed, None) => {
                    self.peer_closed = true;
                    done = true;
                }
                (_, None) => {
                    self.rx.consume(discard);
                    return Err(state_error("unexpected TLS state (early data)"));
                }
                (_, Some(_)) => {
                    self.rx.consume(discard);
                    return Err(state_error("TLS connection cannot send"));
                }
            }
            self.rx.consume(discard);
            if done {
                return Ok(());
            }
        }
    }

    /// Queues the close_notify alert (once).
    pub fn close_notify(&mut self) {
        if self.close_sent || !self.open {
            return;
        }
        self.close_sent = true;
        let UnbufferedStatus { discard, state } = self.conn.process_tls_records(self.rx.filled_mut());
        if let Ok(ConnectionState::WriteTraffic(mut w)) = state {
            let out = self.tx.reserve(64);
            if let Ok(n) = w.queue_close_notify(out) {
                self.tx.commit(n);
            }
        }
        self.rx.consume(discard);
    }

    /// Takes the result of a send of the output (bytes sent or a negative errno), writing on if it was cut
    /// short; `Ok(true)` when everything went out.
    pub fn sent(&mut self, result: i32, sock: &mut mio::net::TcpStream) -> io::Result<bool> {
        match result {
            n if n >= 0 => self.tx.consume(n as usize),
            e if -e == libc::EAGAIN || -e == libc::EINTR => return Ok(false),
            e => return Err(io::Error::from_raw_os_error(-e)),
        }
        self.write_to(sock)
    }

    /// Writes what it can of the output; `Ok(true)` when everything went out.
    pub fn write_to(&mut self, sock: &mut impl Write) -> io::Result<bool> {
        while !self.tx.is_empty() {
            match sock.write(self.tx.filled()) {
                Ok(0) => return Err(ErrorKind::WriteZero.into()),
                Ok(n) => self.tx.consume(n),
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }
}

/// Copies a handshake message rustls has for the peer into `tx`.
fn encode<D>(e: &mut EncodeTlsData<'_, D>, tx: &mut Buf) -> io::Result<()> {
    let mut room = 4096;
    loop {
        match e.encode(tx.reserve(room)) {
            Ok(n) => {
                tx.commit(n);
                return Ok(());
            }
            Err(EncodeError::InsufficientSize(InsufficientSizeError { required_size })) if required_size > room => {
                room = required_size
            }
            Err(e) => return Err(io::Error::new(ErrorKind::InvalidData, e.to_string())),
        }
    }
}

/// A TLS connection the fast path handed over after its handshake, for the hyper path: the socket and the same
/// rustls connection, with the plaintext the fast path had read and not served.
pub(crate) struct TlsStream {
    sock: tokio::net::TcpStream,
    tls: Tls,
    plain: Buf,
    eof: bool,
}

impl TlsStream {
    /// The stream of `tls` over `sock`, reads giving `prefix` (plaintext already decrypted) first.
    pub(super) fn new(sock: tokio::net::TcpStream, tls: Tls, prefix: &[u8]) -> TlsStream {
        let mut plain = Buf::new(TLS_BUF);
        plain.push(prefix);
        TlsStream { sock, tls, plain, eof: false }
    }

    /// The server name the client asked for.
    pub fn sni(&self) -> Option<Box<str>> {
        self.tls.sni.clone()
    }

    /// The negotiated ALPN protocol.
    pub fn alpn(&self) -> Option<&[u8]> {
        self.tls.alpn()
    }

    /// The verified subject of the client's certificate.
    pub fn subject(&self) -> Option<Arc<str>> {
        self.tls.subject.clone()
    }

    /// Sends the queued ciphertext.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.tls.tx.is_empty() {
            let n = ready!(Pin::new(&mut self.sock).poll_write(cx, self.tls.tx.filled()))?;
            if n == 0 {
                return Poll::Ready(Err(ErrorKind::WriteZero.into()));
            }
            self.tls.tx.consume(n);
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncRead for TlsStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.plain.is_empty() {
                let n = this.plain.len().min(buf.remaining());
                buf.put_slice(&this.plain.filled()[..n]);
                this.plain.consume(n);
                return Poll::Ready(Ok(()));
            }
            if this.eof || this.tls.peer_closed {
                return Poll::Ready(Ok(()));
            }
            let processed = this.tls.process(&mut this.plain);
            // Whatever that produced for the peer (a key update's answer, an alert) goes as soon as it can.
            if !this.tls.tx.is_empty() {
                let _ = this.poll_send(cx)?;
            }
            processed?;
            if !this.plain.is_empty() || this.tls.peer_closed {
                continue;
            }
            let room = this.tls.rx.reserve(MAX_RECORD);
            let mut rb = ReadBuf::new(room);
            ready!(Pin::new(&mut this.sock).poll_read(cx, &mut rb))?;
            let n = rb.filled().len();
            if n == 0 {
                this.eof = true;
            }
            this.tls.rx.commit(n);
        }
    }
}

impl AsyncWrite for TlsStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.tls.tx.len() > TX_HIGH {
            ready!(this.poll_send(cx))?;
        }
        this.tls.seal(data, &mut this.plain)?;
        // Sent now if the socket takes it, else by the next write or flush.
        let _ = this.poll_send(cx)?;
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send(cx))?;
        Pin::new(&mut this.sock).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.tls.close_notify();
        ready!(this.poll_send(cx))?;
        Pin::new(&mut this.sock).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alpn_choice_follows_the_listener_order() {
        let ours = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        assert_eq!(chosen(&ours, &[b"http/1.1", b"h2"]), Some(b"h2".as_slice()));
        assert_eq!(chosen(&ours, &[b"http/1.1"]), Some(b"http/1.1".as_slice()));
        assert_eq!(chosen(&ours, &[]), None);
        let h1_first = vec![b"http/1.1".to_vec(), b"h2".to_vec()];
        assert_eq!(chosen(&h1_first, &[b"h2", b"http/1.1"]), Some(b"http/1.1".as_slice()));
    }
}
