//! A TCP connection, plain or TLS, split into a read half and a write half that two
//! threads can use at once (an upgraded exec stream flows both ways).
//!
//! A rustls connection cannot be split, so both halves share it behind a mutex. The
//! read half blocks on its own clone of the socket *without* the lock, then takes the
//! lock to feed `read_tls` and drain plaintext. Writers serialise on a second lock
//! that covers "encrypt, then write to the socket", so records leave in order while
//! the reader is never blocked behind a slow peer.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls::pki_types::CertificateDer;

use crate::error::{Context, Result};
use crate::net::sync::lock;

/// Raw bytes read from the socket per call.
const READ_CHUNK: usize = 16 * 1024;

struct TlsShared {
    conn: Mutex<rustls::Connection>,
    /// Held while TLS records are extracted and written, so records stay in order.
    write_order: Mutex<()>,
}

impl TlsShared {
    /// Writes every pending TLS record to `sock`.
    fn flush(&self, sock: &mut TcpStream) -> io::Result<()> {
        let _order = lock(&self.write_order);
        let mut out = Vec::new();
        {
            let mut conn = lock(&self.conn);
            while conn.wants_write() {
                conn.write_tls(&mut out)?;
            }
        }
        sock.write_all(&out)
    }
}

enum ReadInner {
    Plain(TcpStream),
    /// `scratch` is reused for every socket read, so a read costs no allocation.
    Tls {
        shared: Arc<TlsShared>,
        sock: TcpStream,
        raw: Vec<u8>,
        eof: bool,
        scratch: Vec<u8>,
    },
}

/// The read half of a connection.
pub struct ReadHalf {
    inner: ReadInner,
    socket: TcpStream,
    /// The read timeout last set, so an unchanged one costs no system call.
    timeout: std::cell::Cell<Option<Option<Duration>>>,
}

enum WriteInner {
    Plain(TcpStream),
    Tls { shared: Arc<TlsShared>, sock: TcpStream },
}

/// The write half of a connection.
pub struct WriteHalf {
    inner: WriteInner,
}

/// An accepted or dialled connection, after any TLS handshake.
pub struct Conn {
    pub read: ReadHalf,
    pub write: WriteHalf,
    pub peer: SocketAddr,
    /// The client certificate chain a TLS peer presented (verified by rustls).
    pub peer_certs: Vec<CertificateDer<'static>>,
}

impl Conn {
    pub fn plain(sock: TcpStream) -> Result<Conn> {
        let peer = sock.peer_addr().context("reading peer address")?;
        let _ = sock.set_nodelay(true);
        Ok(Conn {
            read: ReadHalf { inner: ReadInner::Plain(sock.try_clone()?), socket: sock.try_clone()?, timeout: Default::default() },
            write: WriteHalf { inner: WriteInner::Plain(sock) },
            peer,
            peer_certs: Vec::new(),
        })
    }

    /// Accepts a TLS client on `sock` within `timeout`.
    pub fn accept_tls(sock: TcpStream, config: &std::sync::Arc<rustls::ServerConfig>, timeout: Duration) -> Result<Conn> {
        let server = rustls::ServerConnection::new(config.clone())?;
        Conn::tls(sock, rustls::Connection::Server(server), timeout)
    }

    /// Opens TLS to `name` on `sock` within `timeout`.
    pub fn connect_tls(sock: TcpStream, config: &std::sync::Arc<rustls::ClientConfig>, name: rustls::pki_types::ServerName<'static>, timeout: Duration) -> Result<Conn> {
        let client = rustls::ClientConnection::new(config.clone(), name)?;
        Conn::tls(sock, rustls::Connection::Client(client), timeout)
    }

    /// Completes a TLS handshake on `sock` within `timeout`, then splits.
    pub fn tls(sock: TcpStream, mut conn: rustls::Connection, timeout: Duration) -> Result<Conn> {
        let peer = sock.peer_addr().context("reading peer address")?;
        let _ = sock.set_nodelay(true);
        let deadline = Instant::now() + timeout;
        let mut s = sock.try_clone()?;
        // One socket read per check of the deadline: a peer trickling its handshake a
        // byte at a time cannot stretch it (rustls' `complete_io` reads on and on).
        while conn.is_handshaking() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                crate::bail!("TLS handshake: timed out after {timeout:?}");
            }
            s.set_read_timeout(Some(left))?;
            s.set_write_timeout(Some(left))?;
            while conn.wants_write() {
                conn.write_tls(&mut s).context("TLS handshake")?;
            }
            if conn.is_handshaking() && conn.wants_read() {
                match conn.read_tls(&mut s) {
                    Ok(0) => crate::bail!("TLS handshake: the peer closed the connection"),
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(crate::error::Error::from(e)).context("TLS handshake"),
                }
                if let Err(e) = conn.process_new_packets() {
                    // Tell the peer why (a TLS alert) before giving up.
                    let _ = conn.write_tls(&mut s);
                    return Err(e).context("TLS handshake");
                }
            }
        }
        while conn.wants_write() {
            conn.write_tls(&mut s).context("TLS handshake")?;
        }
        s.set_read_timeout(None)?;
        s.set_write_timeout(None)?;
        let peer_certs = conn.peer_certificates().map(|c| c.iter().map(|c| c.clone().into_owned()).collect()).unwrap_or_default();
        let shared = Arc::new(TlsShared { conn: Mutex::new(conn), write_order: Mutex::new(()) });
        Ok(Conn {
            read: ReadHalf {
                inner: ReadInner::Tls { shared: shared.clone(), sock: sock.try_clone()?, raw: Vec::new(), eof: false, scratch: vec![0u8; READ_CHUNK] },
                socket: sock.try_clone()?,
                timeout: Default::default(),
            },
            write: WriteHalf { inner: WriteInner::Tls { shared, sock } },
            peer,
            peer_certs,
        })
    }
}

impl ReadHalf {
    /// Bounds how long one read may block (`None`: forever). Applies to the socket,
    /// so it also bounds a TLS record that arrives byte by byte.
    pub fn set_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        let timeout = timeout.map(|t| t.max(Duration::from_millis(1)));
        if self.timeout.get() == Some(timeout) {
            return Ok(());
        }
        self.socket.set_read_timeout(timeout)?;
        self.timeout.set(Some(timeout));
        Ok(())
    }

    /// Shuts down both directions of the socket, waking any blocked reader or writer.
    pub fn shutdown(&self) {
        let _ = self.socket.shutdown(Shutdown::Both);
    }

    /// Whether an idle connection is still usable: nothing has arrived since the last
    /// response (not even a close) and the peer has not closed. A keep-alive
    /// connection the server dropped while idle fails this check instead of the next
    /// request.
    pub fn is_reusable(&self) -> bool {
        if let ReadInner::Tls { raw, eof, .. } = &self.inner {
            if !raw.is_empty() || *eof {
                return false;
            }
        }
        if self.socket.set_nonblocking(true).is_err() {
            return false;
        }
        let mut b = [0u8; 1];
        let usable = matches!(self.socket.peek(&mut b), Err(e) if e.kind() == io::ErrorKind::WouldBlock);
        let _ = self.socket.set_nonblocking(false);
        usable
    }

    /// A handle that can shut the socket down from another thread.
    pub fn shutdown_handle(&self) -> io::Result<TcpStream> {
        self.socket.try_clone()
    }
}

impl Read for ReadHalf {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let (shared, sock, raw, eof, scratch) = match &mut self.inner {
            ReadInner::Plain(s) => return read_retrying(s, out),
            ReadInner::Tls { shared, sock, raw, eof, scratch } => (shared, sock, raw, eof, scratch),
        };
        if out.is_empty() {
            return Ok(0);
        }
        loop {
            let wants_write;
            {
                let mut conn = lock(&shared.conn);
                // Feed what the socket gave us, as far as rustls takes it.
                while !raw.is_empty() {
                    let mut slice = &raw[..];
                    match conn.read_tls(&mut slice) {
                        Ok(0) => break,
                        Ok(n) => {
                            raw.drain(..n);
                        }
                        // Plaintext buffer full: drain it below first.
                        Err(e) if e.kind() == io::ErrorKind::Other => break,
                        Err(e) => return Err(e),
                    }
                    if let Err(e) = conn.process_new_packets() {
                        let _ = conn.write_tls(&mut *sock);
                        return Err(io::Error::new(io::ErrorKind::InvalidData, e));
                    }
                }
                if *eof && raw.is_empty() {
                    let _ = conn.read_tls(&mut &[][..]);
                    let _ = conn.process_new_packets();
                }
                match conn.reader().read(out) {
                    Ok(n) => return Ok(n),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    // A peer that closes without close_notify: end of stream all the same.
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
                    Err(e) => return Err(e),
                }
                if *eof && raw.is_empty() {
                    return Ok(0);
                }
                wants_write = conn.wants_write();
            }
            if wants_write {
                shared.flush(sock)?;
            }
            if raw.is_empty() {
                let n = read_retrying(sock, scratch)?;
                if n == 0 {
                    *eof = true;
                } else {
                    raw.extend_from_slice(&scratch[..n]);
                }
            }
        }
    }
}

/// A socket read that a signal cannot fail: EINTR (after SIGSTOP and SIGCONT, say)
/// means "try again", not a broken connection.
fn read_retrying(sock: &mut TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match sock.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

impl WriteHalf {
    /// Ends our direction: TLS close_notify, then a TCP half-close. The peer may go on
    /// sending (half-close), which a `kubectl exec -i` whose stdin ended relies on.
    pub fn shutdown_write(&mut self) -> io::Result<()> {
        match &mut self.inner {
            WriteInner::Plain(s) => s.shutdown(Shutdown::Write),
            WriteInner::Tls { shared, sock } => {
                lock(&shared.conn).send_close_notify();
                shared.flush(sock)?;
                sock.shutdown(Shutdown::Write)
            }
        }
    }
}

impl Write for WriteHalf {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut self.inner {
            WriteInner::Plain(s) => s.write(buf),
            WriteInner::Tls { shared, sock } => {
                let _order = lock(&shared.write_order);
                let mut out = Vec::with_capacity(buf.len() + 64);
                let n = {
                    let mut conn = lock(&shared.conn);
                    let n = conn.writer().write(buf)?;
                    while conn.wants_write() {
                        conn.write_tls(&mut out)?;
                    }
                    n
                };
                sock.write_all(&out)?;
                Ok(n)
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A read half with a buffer, for parsing heads and handing leftover bytes on.
pub struct Input {
    pub half: ReadHalf,
    buf: Vec<u8>,
    scratch: Vec<u8>,
}

impl Input {
    pub fn new(half: ReadHalf) -> Self {
        Input { half, buf: Vec::new(), scratch: vec![0u8; READ_CHUNK] }
    }

    /// Bytes read but not yet consumed.
    pub fn buffered(&self) -> &[u8] {
        &self.buf
    }

    pub fn consume(&mut self, n: usize) {
        self.buf.drain(..n);
    }

    /// Reads more bytes into the buffer; `Ok(0)` at end of stream.
    pub fn fill(&mut self) -> io::Result<usize> {
        let n = self.half.read(&mut self.scratch)?;
        self.buf.extend_from_slice(&self.scratch[..n]);
        Ok(n)
    }

    /// Parses a head with `parse`, reading until it is complete. `Ok(None)` if the
    /// stream ended cleanly before the first byte. `first_byte` bounds the wait for the
    /// head to start (an idle keep-alive connection); `whole` bounds the rest, so a
    /// client that sends a byte at a time cannot hold the thread.
    pub fn read_head<T, E>(
        &mut self,
        parse: impl Fn(&[u8]) -> std::result::Result<Option<(T, usize)>, E>,
        max_len: usize,
        first_byte: Duration,
        whole: Duration,
    ) -> Result<Option<T>>
    where
        E: Into<crate::error::Error>,
    {
        let mut deadline: Option<Instant> = None;
        let mut scanned = 0;
        loop {
            if !self.buf.is_empty() {
                // Only the new bytes are scanned for the end of the head; the parser
                // runs once, on a whole head.
                match crate::wire::http::scan_head(&self.buf, scanned)? {
                    Some(end) if end > max_len => crate::bail!("head exceeds {max_len} bytes"),
                    Some(end) => {
                        if let Some((head, n)) = parse(&self.buf[..end]).map_err(Into::into)? {
                            self.consume(n);
                            return Ok(Some(head));
                        }
                        crate::bail!("malformed head");
                    }
                    None if self.buf.len() > max_len => crate::bail!("head exceeds {max_len} bytes"),
                    None => scanned = self.buf.len(),
                }
            }
            let timeout = match deadline {
                None if self.buf.is_empty() => first_byte,
                None => {
                    deadline = Some(Instant::now() + whole);
                    whole
                }
                Some(d) => d.saturating_duration_since(Instant::now()),
            };
            if timeout.is_zero() {
                crate::bail!("head not complete within {whole:?}");
            }
            self.half.set_timeout(Some(timeout))?;
            let n = self.fill().context("waiting for a head")?;
            if n == 0 {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                crate::bail!("connection closed in the middle of a head");
            }
            if deadline.is_none() {
                deadline = Some(Instant::now() + whole);
            }
        }
    }
}

impl Read for Input {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if !self.buf.is_empty() {
            let n = out.len().min(self.buf.len());
            out[..n].copy_from_slice(&self.buf[..n]);
            self.buf.drain(..n);
            return Ok(n);
        }
        self.half.read(out)
    }
}
