//! A capture upstream for framing tests: a TLS server on loopback that parses every
//! request it receives the way Go's net/http server does (kube-apiserver is Go),
//! records what it parsed (method, raw target, decoded path, headers, trailers, body)
//! and answers each with `200` and a small JSON body, keeping the connection alive
//! when Go would and closing it when Go would. What Go would refuse is answered as Go
//! answers it (400, 417, 431, 501 or 505, then close) and recorded as a parse error.
//! It also starts a second `kubetape proxy` in front of itself, reusing a running
//! demo's PKI, policy and tokens ([`FrontProxy`]).
//!
//! The parser (`go`) does no I/O: it takes the bytes received so far and returns
//! `Ok(None)` while it needs more. It is written from Go's sources (1.24/1.25:
//! `net/http/request.go`, `server.go`, `transfer.go`, `net/textproto/reader.go`,
//! `net/http/internal/chunked.go`, `net/url/url.go`, `x/net/http/httpguts`), and every
//! rule names the Go function it mirrors. Where net/http's behaviour depends on its
//! 4096-byte `bufio.Reader` (chunk lines, trailers), that size is modelled.
//!
//! ```text
//! request    = request-line LF *( field-line LF ) LF body    ; every LF may be CRLF
//! field-line = name ":" value  *( (SP / HTAB) more-value LF ) ; obs-fold joined by one SP
//! chunked    = *( HEX [ ";" anything ] CRLF data CRLF ) "0" [ ";" anything ] CRLF
//!              *( trailer-line LF ) CRLF                       ; trailers go to req.Trailer
//! ```

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{free_port, kubeconfig_field, wait_for_port, Demo, Spawned};

/// A capture connection idle this long is closed (the proxy holds its upstream
/// connection as long as its client's, and tests close clients promptly).
const IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// Bytes read from the socket at a time.
const READ_CHUNK: usize = 16 * 1024;
/// How much of an unparseable head a record keeps, for failure reports.
const RAW_KEPT: usize = 120;

/// One request as Go's net/http server parsed it, or the error it stopped at.
#[derive(Clone, Debug, Default)]
pub struct Seen {
    /// Which capture connection it arrived on (1, 2, ... in accept order).
    pub conn: u64,
    pub method: String,
    /// The request-target exactly as sent (`req.RequestURI`).
    pub target: String,
    /// `req.URL.Path`: percent-decoded.
    pub path: String,
    pub proto: String,
    /// `req.Host`: from an absolute-form target, else the Host header.
    pub host: String,
    /// Every header line in arrival order, names canonicalised as textproto does
    /// (`req.Header` before net/http removes Host, Transfer-Encoding, Content-Length).
    pub headers: Vec<(String, Vec<u8>)>,
    /// Trailer fields of a chunked body (`req.Trailer`, never `req.Header`).
    pub trailers: Vec<(String, Vec<u8>)>,
    /// The decoded body.
    pub body: Vec<u8>,
    /// `Some(reason)` when Go would not have handed this request to a handler.
    pub error: Option<String>,
    /// For a head Go could not parse: its first bytes, escaped.
    pub raw: String,
    /// What the capture answered.
    pub status: u16,
    /// The body ended at EOF before its framing said: no handler ever sees a whole
    /// request (io.ReadAll fails), so nothing acts on it.
    pub cut_short: bool,
}

impl Seen {
    /// Every value of the header `key` (a canonical name, e.g. `Impersonate-User`).
    pub fn values(&self, key: &str) -> Vec<&[u8]> {
        self.headers.iter().filter(|(k, _)| k == key).map(|(_, v)| v.as_slice()).collect()
    }

    /// One line for failure reports: request line, the identity-bearing headers, body.
    pub fn describe(&self) -> String {
        if let Some(e) = &self.error {
            let at = if self.method.is_empty() { format!("in {:?}", self.raw) } else { format!("after the head of {} {}", self.method, self.target) };
            return format!("conn {} parse error {} ({e}) {at}", self.conn, self.status);
        }
        let interesting: Vec<String> = self
            .headers
            .iter()
            .filter(|(k, _)| {
                let l = k.to_ascii_lowercase().replace('_', "-");
                l.starts_with("impersonate") || l.starts_with("x-remote") || l == "authorization" || l == "content-length" || l == "transfer-encoding"
            })
            .map(|(k, v)| format!("{k}: {}", String::from_utf8_lossy(v)))
            .collect();
        let trailers: Vec<String> = self.trailers.iter().map(|(k, v)| format!("{k}: {}", String::from_utf8_lossy(v))).collect();
        format!(
            "conn {} {} {} {} [{}]{} body={}",
            self.conn,
            self.method,
            self.target,
            self.proto,
            interesting.join("; "),
            if trailers.is_empty() { String::new() } else { format!(" trailers=[{}]", trailers.join("; ")) },
            escape(&self.body, 160)
        )
    }
}

/// Bytes as printable text, cut at `max` bytes.
pub fn escape(bytes: &[u8], max: usize) -> String {
    let mut out: String = bytes.iter().take(max).flat_map(|b| std::ascii::escape_default(*b)).map(char::from).collect();
    if bytes.len() > max {
        out.push_str(&format!("...({} bytes)", bytes.len()));
    }
    out
}

#[derive(Default)]
struct Record {
    seen: Vec<Seen>,
    /// Connections accepted and not yet finished.
    open: usize,
    accepted: u64,
}

struct Inner {
    record: Mutex<Record>,
    changed: Condvar,
    stopping: AtomicBool,
    /// Each connection's socket (to shut it down on drop) and thread.
    conns: Mutex<Vec<(TcpStream, JoinHandle<()>)>>,
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, Record> {
        self.record.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn push(&self, seen: Seen) {
        self.lock().seen.push(seen);
        self.changed.notify_all();
    }
}

/// The capture upstream; stops on drop.
pub struct Capture {
    pub port: u16,
    /// The CA that signed its serving certificate (for a kubeconfig).
    pub ca_pem: String,
    inner: Arc<Inner>,
    accept: Option<JoinHandle<()>>,
}

impl Capture {
    pub fn start() -> Capture {
        super::init_crypto();
        let ca = kubetape::net::pki::Ca::new("kubetape-capture-ca").expect("capture CA");
        let cert = ca.server("kubetape-capture", &["127.0.0.1", "localhost"]).expect("capture certificate");
        let chain = kubetape::net::tls::certs_from_pem(cert.cert.as_bytes(), "capture cert").expect("capture cert");
        let key = kubetape::net::tls::key_from_pem(cert.key.as_bytes(), "capture key").expect("capture key");
        let tls = kubetape::net::tls::server_config(chain, key, None).expect("capture TLS config");
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding the capture port");
        let port = listener.local_addr().expect("capture address").port();
        let inner = Arc::new(Inner { record: Mutex::default(), changed: Condvar::new(), stopping: AtomicBool::new(false), conns: Mutex::default() });
        let accept = {
            let inner = inner.clone();
            std::thread::Builder::new().name("capture-accept".into()).spawn(move || accept_loop(listener, tls, inner)).expect("starting the capture accept thread")
        };
        Capture { port, ca_pem: ca.cert_pem.clone(), inner, accept: Some(accept) }
    }

    /// Everything parsed so far, in arrival order.
    pub fn requests(&self) -> Vec<Seen> {
        self.inner.lock().seen.clone()
    }

    /// How many requests (and parse errors) have been recorded.
    pub fn count(&self) -> usize {
        self.inner.lock().seen.len()
    }

    /// Waits until at least `n` records exist; false if `timeout` passes first.
    pub fn wait_count(&self, n: usize, timeout: Duration) -> bool {
        self.wait_until(timeout, |r| r.seen.len() >= n)
    }

    /// Waits until no connection is open (every one the proxy opened has ended and
    /// all it carried is recorded); false if `timeout` passes first.
    pub fn wait_idle(&self, timeout: Duration) -> bool {
        self.wait_until(timeout, |r| r.open == 0)
    }

    pub fn open_connections(&self) -> usize {
        self.inner.lock().open
    }

    fn wait_until(&self, timeout: Duration, done: impl Fn(&Record) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        let mut record = self.inner.lock();
        loop {
            if done(&record) {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            record = self.inner.changed.wait_timeout(record, left).unwrap_or_else(|e| e.into_inner()).0;
        }
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.inner.stopping.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port)); // wakes the accept loop
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
        let conns = std::mem::take(&mut *self.inner.conns.lock().unwrap_or_else(|e| e.into_inner()));
        for (sock, thread) in conns {
            let _ = sock.shutdown(Shutdown::Both);
            let _ = thread.join();
        }
    }
}

fn accept_loop(listener: TcpListener, tls: Arc<rustls::ServerConfig>, inner: Arc<Inner>) {
    for sock in listener.incoming() {
        if inner.stopping.load(Ordering::SeqCst) {
            return;
        }
        let Ok(sock) = sock else { continue };
        let id = {
            let mut r = inner.lock();
            r.open += 1;
            r.accepted += 1;
            r.accepted
        };
        let Ok(handle) = sock.try_clone() else { continue };
        let (inner2, tls) = (inner.clone(), tls.clone());
        let thread = std::thread::Builder::new().name(format!("capture-{id}")).spawn(move || {
            serve_connection(&inner2, id, sock, tls);
            inner2.lock().open -= 1;
            inner2.changed.notify_all();
        });
        match thread {
            Ok(t) => inner.conns.lock().unwrap_or_else(|e| e.into_inner()).push((handle, t)),
            Err(_) => {
                inner.lock().open -= 1;
            }
        }
    }
}

type Tls = rustls::StreamOwned<rustls::ServerConnection, TcpStream>;

/// Reads more bytes into `buf`; false at end of stream (or an error, or idle timeout).
fn fill(s: &mut Tls, buf: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; READ_CHUNK];
    match s.read(&mut chunk) {
        Ok(0) | Err(_) => false,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            true
        }
    }
}

/// net/http's conn.serve loop: read a request, hand it to the handler (which reads
/// the whole body), answer, and go on while the connection may be reused.
fn serve_connection(inner: &Inner, id: u64, sock: TcpStream, tls: Arc<rustls::ServerConfig>) {
    let _ = sock.set_read_timeout(Some(IDLE_TIMEOUT));
    let Ok(conn) = rustls::ServerConnection::new(tls) else { return };
    let mut s = rustls::StreamOwned::new(conn, sock);
    let mut buf: Vec<u8> = Vec::new();
    let mut eof = false;
    let mut after_post = false;
    let error = |seen: Seen, e: &go::GoError| Seen { conn: id, error: Some(e.reason.clone()), status: e.status, ..seen };
    loop {
        // server.go conn.readRequest, then request.go readRequest.
        let (head, head_len) = loop {
            let skip = match go::leading_crlf(&buf, after_post, eof) {
                Some(n) => n,
                None => {
                    eof = eof || !fill(&mut s, &mut buf);
                    continue;
                }
            };
            match go::parse_head(&buf[skip..]) {
                Ok(Some((head, n))) if skip + n <= go::READ_LIMIT => break (head, skip + n),
                Ok(Some(_)) => return refuse(inner, &mut s, error(raw(&buf[skip..]), &go::GoError::too_large())),
                Ok(None) if buf.len() > go::READ_LIMIT => return refuse(inner, &mut s, error(raw(&buf[skip..]), &go::GoError::too_large())),
                Ok(None) if eof => {
                    if buf.len() > skip {
                        let e = go::GoError::bad(format!("unexpected EOF in request head after {} bytes", buf.len() - skip));
                        inner.push(error(raw(&buf[skip..]), &e));
                    }
                    return close(&mut s);
                }
                Ok(None) => eof = !fill(&mut s, &mut buf),
                Err(e) => return refuse(inner, &mut s, error(raw(&buf[skip..]), &e)),
            }
        };
        let seen = Seen {
            conn: id,
            method: head.method.clone(),
            target: head.target.clone(),
            path: head.path.clone(),
            proto: head.proto.clone(),
            host: head.host.clone(),
            headers: head.headers.clone(),
            ..Seen::default()
        };
        // server.go conn.serve: an Expect other than 100-continue is answered 417.
        if head.expect_other {
            return refuse(inner, &mut s, error(seen, &go::GoError { status: 417, reason: "Expect other than 100-continue".into() }));
        }
        // server.go expectContinueReader: "100 Continue" on the handler's first body read.
        if head.expect_continue
            && (head.major, head.minor) >= (1, 1)
            && head.framing != go::Framing::None
            && s.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").and_then(|_| s.flush()).is_err()
        {
            return;
        }
        let (body, trailers, body_len) = loop {
            match go::parse_body(&buf[head_len..], head.framing) {
                Ok(Some(b)) => break b,
                Ok(None) if eof => {
                    let e = go::GoError::bad(format!("unexpected EOF in body after {} bytes", buf.len() - head_len));
                    inner.push(Seen { cut_short: true, ..error(seen, &e) });
                    return close(&mut s);
                }
                Ok(None) => eof = !fill(&mut s, &mut buf),
                // The handler's Body.Read fails; the connection cannot be reused.
                Err(e) => return refuse(inner, &mut s, error(seen, &e)),
            }
        };
        let number = {
            let mut r = inner.lock();
            r.seen.push(Seen { body, trailers, status: 200, ..seen });
            r.seen.len()
        };
        inner.changed.notify_all();
        let reply = go::ok_response(&head, number);
        if s.write_all(&reply).and_then(|_| s.flush()).is_err() || head.close {
            return close(&mut s);
        }
        after_post = head.method == "POST";
        buf.drain(..head_len + body_len);
    }
}

/// A record of input that did not parse as a head, keeping its first bytes.
fn raw(bytes: &[u8]) -> Seen {
    Seen { raw: escape(bytes, RAW_KEPT), ..Seen::default() }
}

/// Records `seen` (an error), answers it as Go does, and closes.
fn refuse(inner: &Inner, s: &mut Tls, seen: Seen) {
    let reply = go::error_response(seen.status, seen.error.as_deref().unwrap_or(""));
    inner.push(seen);
    let _ = s.write_all(&reply).and_then(|_| s.flush());
    close(s);
}

fn close(s: &mut Tls) {
    s.conn.send_close_notify();
    let _ = s.flush();
    let _ = s.sock.shutdown(Shutdown::Both);
}

/// Go's net/http request parsing, as pure functions over the bytes received so far.
pub mod go {
    /// Header or trailer fields in arrival order.
    pub type Fields = Vec<(String, Vec<u8>)>;

    /// kube-apiserver's http.Server sets MaxHeaderBytes to 1 MiB
    /// (k8s.io/apiserver secure_serving.go).
    pub const MAX_HEADER_BYTES: usize = 1 << 20;
    /// server.go initialReadLimitSize: a request head may use MaxHeaderBytes plus
    /// this much before net/http answers 431.
    pub const READ_LIMIT: usize = MAX_HEADER_BYTES + 4096;
    /// server.go newBufioReader: the connection's bufio.Reader size, which bounds a
    /// chunk line (bufio.ErrBufferFull) and a trailer section (seeUpcomingDoubleCRLF).
    pub const BUFIO_SIZE: usize = 4096;
    /// internal/chunked.go maxLineLength.
    pub const MAX_CHUNK_LINE: usize = 4096;
    /// internal/chunked.go beginChunk: non-data bytes allowed beyond 16 per chunk plus
    /// twice the data.
    pub const MAX_CHUNK_EXCESS: i128 = 16 * 1024;
    /// server.go conn.readRequest: after a POST, up to this many leading CR or LF
    /// bytes are discarded (numLeadingCRorLF on Peek(4)).
    pub const POST_CRLF_PEEK: usize = 4;

    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct GoError {
        pub status: u16,
        pub reason: String,
    }

    impl GoError {
        pub fn bad(reason: impl Into<String>) -> GoError {
            GoError { status: 400, reason: reason.into() }
        }
        fn not_implemented(reason: impl Into<String>) -> GoError {
            GoError { status: 501, reason: reason.into() }
        }
        pub fn too_large() -> GoError {
            GoError { status: 431, reason: "request head exceeds MaxHeaderBytes".into() }
        }
    }

    type Result<T> = std::result::Result<T, GoError>;

    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Framing {
        None,
        Length(u64),
        Chunked,
    }

    #[derive(Clone, Debug)]
    pub struct Head {
        pub method: String,
        pub target: String,
        pub path: String,
        pub proto: String,
        pub major: u8,
        pub minor: u8,
        pub host: String,
        pub headers: Vec<(String, Vec<u8>)>,
        pub framing: Framing,
        /// `req.Close`: the connection ends after the response.
        pub close: bool,
        pub expect_continue: bool,
        pub expect_other: bool,
    }

    fn lossy(b: &[u8]) -> String {
        String::from_utf8_lossy(b).into_owned()
    }

    /// server.go conn.readRequest: after a POST, leading CR/LF bytes among the first
    /// four are skipped. `None` when the peek needs more bytes.
    pub fn leading_crlf(buf: &[u8], after_post: bool, eof: bool) -> Option<usize> {
        if !after_post {
            return Some(0);
        }
        if buf.len() < POST_CRLF_PEEK && !eof {
            return None;
        }
        Some(buf.iter().take(POST_CRLF_PEEK).take_while(|b| **b == b'\r' || **b == b'\n').count())
    }

    /// textproto Reader.readLineSlice over bufio.Reader.ReadLine: a line ends at LF
    /// (a bare LF is accepted); a CR right before the LF is dropped, any other CR stays.
    fn read_line(buf: &[u8], at: usize) -> Option<(&[u8], usize)> {
        let rel = buf.get(at..)?.iter().position(|&b| b == b'\n')?;
        let end = at + rel;
        let mut line = &buf[at..end];
        if line.last() == Some(&b'\r') {
            line = &line[..line.len() - 1];
        }
        Some((line, end + 1))
    }

    /// httpguts isTokenTable: RFC 7230 tchar.
    pub fn is_token_byte(b: u8) -> bool {
        b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
    }

    /// request.go parseRequestLine: method, target and version split at the first two
    /// spaces (so a double space leaves an empty target and a version with a space).
    fn parse_request_line(line: &[u8]) -> Option<(&[u8], &[u8], &[u8])> {
        let sp = line.iter().position(|&b| b == b' ')?;
        let (method, rest) = (&line[..sp], &line[sp + 1..]);
        let sp2 = rest.iter().position(|&b| b == b' ')?;
        Some((method, &rest[..sp2], &rest[sp2 + 1..]))
    }

    /// request.go ParseHTTPVersion: "HTTP/1.1", "HTTP/1.0", or "HTTP/" digit "." digit.
    fn parse_http_version(v: &[u8]) -> Option<(u8, u8)> {
        match v {
            b"HTTP/1.1" => return Some((1, 1)),
            b"HTTP/1.0" => return Some((1, 0)),
            _ => {}
        }
        if v.len() != b"HTTP/X.Y".len() || !v.starts_with(b"HTTP/") || v[6] != b'.' || !v[5].is_ascii_digit() || !v[7].is_ascii_digit() {
            return None;
        }
        Some((v[5] - b'0', v[7] - b'0'))
    }

    /// What net/url.ParseRequestURI yields that the server uses.
    struct RequestUri {
        path: String,
        host: String,
    }

    /// url.go getScheme.
    fn get_scheme(raw: &[u8]) -> Result<(&[u8], &[u8])> {
        for (i, &c) in raw.iter().enumerate() {
            match c {
                b'a'..=b'z' | b'A'..=b'Z' => {}
                b'0'..=b'9' | b'+' | b'-' | b'.' if i > 0 => {}
                b':' if i == 0 => return Err(GoError::bad("missing protocol scheme")),
                b':' => return Ok((&raw[..i], &raw[i + 1..])),
                _ => return Ok((&[], raw)),
            }
        }
        Ok((&[], raw))
    }

    /// url.go unescape in encodePath mode: every '%' needs two hex digits; '+' stays.
    fn unescape_path(s: &[u8]) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(s.len());
        let mut i = 0;
        while i < s.len() {
            if s[i] == b'%' {
                if i + 2 >= s.len() || !s[i + 1].is_ascii_hexdigit() || !s[i + 2].is_ascii_hexdigit() {
                    return Err(GoError::bad(format!("invalid URL escape {:?}", lossy(&s[i..(i + 3).min(s.len())]))));
                }
                let hex = std::str::from_utf8(&s[i + 1..i + 3]).unwrap_or("00");
                out.push(u8::from_str_radix(hex, 16).unwrap_or(0));
                i += 3;
            } else {
                out.push(s[i]);
                i += 1;
            }
        }
        Ok(out)
    }

    /// url.go parse(rawURL, viaRequest=true), as ParseRequestURI calls it.
    fn parse_request_uri(raw: &[u8]) -> Result<RequestUri> {
        // url.go stringContainsCTLByte
        if raw.iter().any(|&b| b < 0x20 || b == 0x7f) {
            return Err(GoError::bad("net/url: invalid control character in URL"));
        }
        if raw.is_empty() {
            return Err(GoError::bad("empty url"));
        }
        if raw == b"*" {
            return Ok(RequestUri { path: "*".into(), host: String::new() });
        }
        let (scheme, rest) = get_scheme(raw)?;
        let rest =
            if rest.ends_with(b"?") && rest.iter().filter(|&&b| b == b'?').count() == 1 { &rest[..rest.len() - 1] } else { rest.split(|&b| b == b'?').next().unwrap_or(rest) };
        if !rest.starts_with(b"/") {
            if !scheme.is_empty() {
                return Ok(RequestUri { path: String::new(), host: String::new() });
                // opaque
            }
            return Err(GoError::bad("invalid URI for request"));
        }
        let mut host = String::new();
        let mut path = rest;
        if !scheme.is_empty() && rest.starts_with(b"//") {
            let authority_and_path = &rest[2..];
            let slash = authority_and_path.iter().position(|&b| b == b'/').unwrap_or(authority_and_path.len());
            let authority = &authority_and_path[..slash];
            path = &authority_and_path[slash..];
            // url.go parseAuthority: the host follows the last '@'.
            let h = match authority.iter().rposition(|&b| b == b'@') {
                Some(at) => &authority[at + 1..],
                None => authority,
            };
            // url.go parseHost / validOptionalPort: a port is digits only.
            let port = if h.starts_with(b"[") {
                let close = h.iter().position(|&b| b == b']').ok_or_else(|| GoError::bad("missing ']' in host"))?;
                &h[close + 1..]
            } else {
                match h.iter().rposition(|&b| b == b':') {
                    Some(c) => &h[c..],
                    None => &h[h.len()..],
                }
            };
            if !port.is_empty() && (port[0] != b':' || !port[1..].iter().all(u8::is_ascii_digit)) {
                return Err(GoError::bad(format!("invalid port {:?} after host", lossy(port))));
            }
            host = lossy(&unescape_path(h)?);
        }
        Ok(RequestUri { path: lossy(&unescape_path(path)?), host })
    }

    /// textproto validHeaderFieldByte (a tchar).
    fn valid_header_field_byte(b: u8) -> bool {
        is_token_byte(b)
    }

    /// textproto validHeaderValueByte: VCHAR, obs-text, SP and HTAB; no other CTL, no DEL.
    fn valid_header_value_byte(b: u8) -> bool {
        b == b'\t' || b == b' ' || (0x21..=0x7e).contains(&b) || b >= 0x80
    }

    /// textproto canonicalMIMEHeaderKey: `None` for a key with a byte that is neither
    /// a tchar nor a space; a key holding a space is kept as it is (go.dev/issue/34540,
    /// refused later by server.go); otherwise "content-length" becomes "Content-Length".
    pub fn canonical_key(k: &[u8]) -> Option<String> {
        if k.is_empty() {
            return None;
        }
        let mut no_canon = false;
        for &c in k {
            if valid_header_field_byte(c) {
                continue;
            }
            if c == b' ' {
                no_canon = true;
                continue;
            }
            return None;
        }
        if no_canon {
            return Some(lossy(k));
        }
        let mut upper = true;
        let out: Vec<u8> = k
            .iter()
            .map(|&c| {
                let c = if upper { c.to_ascii_uppercase() } else { c.to_ascii_lowercase() };
                upper = c == b'-';
                c
            })
            .collect();
        Some(lossy(&out))
    }

    /// textproto trim: leading and trailing SP and HTAB.
    fn trim(s: &[u8]) -> &[u8] {
        let start = s.iter().position(|&b| b != b' ' && b != b'\t').unwrap_or(s.len());
        let end = s.iter().rposition(|&b| b != b' ' && b != b'\t').map(|i| i + 1).unwrap_or(start);
        &s[start..end.max(start)]
    }

    /// textproto TrimString: leading and trailing SP, HTAB, CR, LF.
    fn trim_string(s: &[u8]) -> &[u8] {
        let sp = |b: &u8| matches!(b, b' ' | b'\t' | b'\r' | b'\n');
        let start = s.iter().position(|b| !sp(b)).unwrap_or(s.len());
        let end = s.iter().rposition(|b| !sp(b)).map(|i| i + 1).unwrap_or(start);
        &s[start..end.max(start)]
    }

    /// textproto Reader.readMIMEHeader (and readContinuedLineSlice): field lines up to
    /// an empty line. The first line may not start with SP/HTAB; a later line that does
    /// continues the one before (obs-fold, joined by one SP); every line needs a colon
    /// (mustHaveFieldNameColon); keys are canonicalised; values are checked byte by byte
    /// and trimmed. Returns the fields and the offset after the empty line.
    pub fn read_mime_header(buf: &[u8], mut at: usize) -> Result<Option<(Fields, usize)>> {
        let mut fields = Vec::new();
        match buf.get(at) {
            None => return Ok(None),
            Some(b' ' | b'\t') => {
                let line = read_line(buf, at).map(|l| lossy(l.0)).unwrap_or_default();
                return Err(GoError::bad(format!("malformed MIME header initial line: {line:?}")));
            }
            Some(_) => {}
        }
        loop {
            let Some((line, next)) = read_line(buf, at) else { return Ok(None) };
            if line.is_empty() {
                return Ok(Some((fields, next)));
            }
            if !line.contains(&b':') {
                return Err(GoError::bad(format!("malformed MIME header: missing colon: {:?}", lossy(line))));
            }
            let mut kv = trim(line).to_vec();
            at = next;
            // readContinuedLineSlice: skipSpace, then the next line, for as long as
            // lines start with SP or HTAB.
            loop {
                let Some(&first) = buf.get(at) else { return Ok(None) };
                if first != b' ' && first != b'\t' {
                    break;
                }
                while matches!(buf.get(at), Some(b' ' | b'\t')) {
                    at += 1;
                }
                let Some((more, next)) = read_line(buf, at) else { return Ok(None) };
                kv.push(b' ');
                kv.extend_from_slice(trim(more));
                at = next;
            }
            let colon = kv.iter().position(|&b| b == b':').unwrap_or(kv.len());
            let (k, v) = (&kv[..colon], &kv[colon + 1..]);
            let key = canonical_key(k).ok_or_else(|| GoError::bad(format!("malformed MIME header line: {:?}", lossy(&kv))))?;
            if !v.iter().all(|&c| valid_header_value_byte(c)) {
                return Err(GoError::bad(format!("malformed MIME header line: {:?}", lossy(&kv))));
            }
            let value = v.iter().position(|&b| b != b' ' && b != b'\t').map(|i| v[i..].to_vec()).unwrap_or_default();
            fields.push((key, value));
        }
    }

    fn values<'a>(headers: &'a [(String, Vec<u8>)], key: &str) -> Vec<&'a [u8]> {
        headers.iter().filter(|(k, _)| k == key).map(|(_, v)| v.as_slice()).collect()
    }

    /// httpguts headerValueContainsToken: comma-separated elements, OWS-trimmed,
    /// compared ASCII case-insensitively.
    pub fn header_values_contain_token(vals: &[&[u8]], token: &str) -> bool {
        vals.iter().any(|v| v.split(|&b| b == b',').any(|e| trim(e).eq_ignore_ascii_case(token.as_bytes())))
    }

    /// transfer.go shouldClose: HTTP/0.x always closes; HTTP/1.0 closes unless
    /// `Connection: keep-alive`; HTTP/1.1 closes on `Connection: close`.
    fn should_close(major: u8, minor: u8, headers: &[(String, Vec<u8>)]) -> bool {
        if major < 1 {
            return true;
        }
        let conv = values(headers, "Connection");
        let has_close = header_values_contain_token(&conv, "close");
        if major == 1 && minor == 0 {
            return has_close || !header_values_contain_token(&conv, "keep-alive");
        }
        has_close
    }

    /// transfer.go parseContentLength: TrimString, then strconv.ParseUint(cl, 10, 63):
    /// decimal digits only (no sign, no spaces inside), below 2^63; empty is an error
    /// since Go 1.22 (httplaxcontentlength=0).
    pub fn parse_content_length(raw: &[u8]) -> Result<u64> {
        let cl = trim_string(raw);
        if cl.is_empty() {
            return Err(GoError::bad("invalid empty Content-Length"));
        }
        let bad = || GoError::bad(format!("bad Content-Length {:?}", lossy(cl)));
        if !cl.iter().all(u8::is_ascii_digit) {
            return Err(bad());
        }
        let n: u64 = std::str::from_utf8(cl).ok().and_then(|s| s.parse().ok()).ok_or_else(bad)?;
        if n >= 1 << 63 {
            return Err(bad());
        }
        Ok(n)
    }

    /// x/net/http/httpguts validHostByte and ValidHostHeader.
    fn valid_host_header(h: &[u8]) -> bool {
        h.iter().all(|&b| b.is_ascii_alphanumeric() || b"!$%&'()*+,-.:;=[]_~".contains(&b))
    }

    /// x/net/http/httpguts ValidHeaderFieldValue: no CTL but SP and HTAB.
    fn valid_header_field_value(v: &[u8]) -> bool {
        v.iter().all(|&b| !(b < b' ' || b == 0x7f) || b == b' ' || b == b'\t')
    }

    /// server.go hasToken (the Expect check): `token` at token boundaries (SP, ',',
    /// HTAB), ASCII case-insensitively.
    fn has_token(v: &[u8], token: &[u8]) -> bool {
        if token.len() > v.len() || token.is_empty() {
            return false;
        }
        let boundary = |b: u8| b == b' ' || b == b',' || b == b'\t';
        (0..=v.len() - token.len())
            .any(|sp| (sp == 0 || boundary(v[sp - 1])) && (sp + token.len() == v.len() || boundary(v[sp + token.len()])) && v[sp..sp + token.len()].eq_ignore_ascii_case(token))
    }

    /// request.go readRequest (request line, URL, header, Host count, readTransfer) and
    /// then the checks of server.go conn.readRequest (version, Host presence and
    /// syntax, header names and values). Returns the head and its length.
    pub fn parse_head(buf: &[u8]) -> Result<Option<(Head, usize)>> {
        let Some((line, at)) = read_line(buf, 0) else { return Ok(None) };
        let (method, target, proto) = parse_request_line(line).ok_or_else(|| GoError::bad(format!("malformed HTTP request {:?}", lossy(line))))?;
        // request.go validMethod
        if method.is_empty() || !method.iter().all(|&b| is_token_byte(b)) {
            return Err(GoError::bad(format!("invalid method {:?}", lossy(method))));
        }
        let (major, minor) = parse_http_version(proto).ok_or_else(|| GoError::bad(format!("malformed HTTP version {:?}", lossy(proto))))?;
        // request.go readRequest: CONNECT host:port is parsed as "http://" + target.
        let uri = if method == b"CONNECT" && !target.starts_with(b"/") {
            let mut u = b"http://".to_vec();
            u.extend_from_slice(target);
            parse_request_uri(&u)?
        } else {
            parse_request_uri(target)?
        };
        let Some((headers, end)) = read_mime_header(buf, at)? else { return Ok(None) };
        let hosts = values(&headers, "Host");
        if hosts.len() > 1 {
            return Err(GoError::bad("too many Host headers"));
        }
        let host = if uri.host.is_empty() { hosts.first().map(|h| lossy(h)).unwrap_or_default() } else { uri.host.clone() };
        let mut close = should_close(major, minor, &headers);

        // transfer.go readTransfer → parseTransferEncoding: ignored before HTTP/1.1;
        // otherwise exactly one field whose value equals "chunked" (ASCII
        // case-insensitively, after textproto trimmed it), else 501.
        let te = values(&headers, "Transfer-Encoding");
        let mut chunked = false;
        if !te.is_empty() && (major, minor) >= (1, 1) {
            if te.len() != 1 {
                return Err(GoError::not_implemented(format!("too many transfer encodings: {:?}", te.iter().map(|v| lossy(v)).collect::<Vec<_>>())));
            }
            if !te[0].eq_ignore_ascii_case(b"chunked") {
                return Err(GoError::not_implemented(format!("unsupported transfer encoding: {:?}", lossy(te[0]))));
            }
            chunked = true;
        }
        // transfer.go fixLength: several Content-Lengths must agree once trimmed;
        // the first is parsed even when chunked (and then dropped); no framing header
        // on a request means no body (a GET may carry one if declared).
        let cls = values(&headers, "Content-Length");
        if let Some(first) = cls.first() {
            if cls[1..].iter().any(|c| trim_string(c) != trim_string(first)) {
                return Err(GoError::bad(format!("http: message cannot contain multiple Content-Length headers; got {:?}", cls.iter().map(|v| lossy(v)).collect::<Vec<_>>())));
            }
        }
        let length = match cls.first() {
            Some(cl) => Some(parse_content_length(cl)?),
            None => None,
        };
        let mut framing = match (chunked, length) {
            (true, _) => Framing::Chunked,
            (false, Some(0)) | (false, None) => Framing::None,
            (false, Some(n)) => Framing::Length(n),
        };
        // transfer.go fixTrailer: with chunked framing the declared trailer keys may
        // not be Transfer-Encoding, Trailer or Content-Length.
        if chunked {
            for v in values(&headers, "Trailer") {
                for key in v.split(|&b| b == b',').map(trim).filter(|k| !k.is_empty()) {
                    if let Some(k) = canonical_key(key) {
                        if ["Transfer-Encoding", "Trailer", "Content-Length"].contains(&k.as_str()) {
                            return Err(GoError::bad(format!("bad trailer key {k:?}")));
                        }
                    }
                }
            }
        }
        // request.go Request.isH2Upgrade: the HTTP/2 preface read as a request.
        let h2_preface = method == b"PRI" && headers.is_empty() && uri.path == "*" && proto == b"HTTP/2.0";
        if h2_preface {
            framing = Framing::None;
            close = true;
        }
        // server.go http1ServerSupportsRequest: HTTP/1.x, or the HTTP/2 preface.
        if !(major == 1 || (major == 2 && minor == 0 && method == b"PRI" && target == b"*")) {
            return Err(GoError { status: 505, reason: "unsupported protocol version".into() });
        }
        if (major, minor) >= (1, 1) && hosts.is_empty() && !h2_preface && method != b"CONNECT" {
            return Err(GoError::bad("missing required Host header"));
        }
        if hosts.len() == 1 && !valid_host_header(hosts[0]) {
            return Err(GoError::bad("malformed Host header"));
        }
        for (k, v) in &headers {
            if k.is_empty() || !k.bytes().all(is_token_byte) {
                return Err(GoError::bad(format!("invalid header name {k:?}")));
            }
            if !valid_header_field_value(v) {
                return Err(GoError::bad(format!("invalid header value for {k}")));
            }
        }
        // server.go conn.serve: Request.expectsContinue, else any Expect → 417.
        let expect = values(&headers, "Expect").first().map(|v| v.to_vec()).unwrap_or_default();
        let expect_continue = has_token(&expect, b"100-continue");
        let head = Head {
            method: lossy(method),
            target: lossy(target),
            path: uri.path,
            proto: lossy(proto),
            major,
            minor,
            host,
            headers,
            framing,
            close,
            expect_continue,
            expect_other: !expect_continue && !expect.is_empty(),
        };
        Ok(Some((head, end)))
    }

    /// internal/chunked.go parseHexUint: 1 to 16 hex digits, nothing else.
    pub fn parse_hex_uint(v: &[u8]) -> Result<u64> {
        if v.is_empty() {
            return Err(GoError::bad("empty hex number for chunk length"));
        }
        let mut n: u64 = 0;
        for (i, &b) in v.iter().enumerate() {
            let d = (b as char).to_digit(16).filter(|_| b.is_ascii_hexdigit()).ok_or_else(|| GoError::bad("invalid byte in chunk length"))?;
            if i == 16 {
                return Err(GoError::bad("http chunk length too large"));
            }
            n = n << 4 | d as u64;
        }
        Ok(n)
    }

    /// The body of a request framed as `framing`, from the front of `buf`: the decoded
    /// bytes, the trailers, and how many bytes it took. `Ok(None)` while incomplete.
    pub fn parse_body(buf: &[u8], framing: Framing) -> Result<Option<(Vec<u8>, Fields, usize)>> {
        match framing {
            Framing::None => Ok(Some((Vec::new(), Vec::new(), 0))),
            // transfer.go readTransfer: io.LimitReader(r, realLength).
            Framing::Length(n) => match usize::try_from(n) {
                Ok(n) if buf.len() >= n => Ok(Some((buf[..n].to_vec(), Vec::new(), n))),
                _ => Ok(None),
            },
            Framing::Chunked => parse_chunked(buf),
        }
    }

    /// internal/chunked.go chunkedReader (beginChunk, readChunkLine, Read) and
    /// transfer.go body.readTrailer.
    fn parse_chunked(buf: &[u8]) -> Result<Option<(Vec<u8>, Fields, usize)>> {
        let mut pos = 0;
        let mut out = Vec::new();
        let mut excess: i128 = 0;
        loop {
            // readChunkLine: bufio ReadSlice('\n') fails once the 4096-byte buffer
            // holds no LF; the line must end in CRLF with no other CR in it.
            let window = &buf[pos..buf.len().min(pos + BUFIO_SIZE)];
            let Some(nl) = window.iter().position(|&b| b == b'\n') else {
                if window.len() >= BUFIO_SIZE {
                    return Err(GoError::bad("header line too long"));
                }
                return Ok(None);
            };
            let p = &window[..=nl];
            match p.iter().position(|&b| b == b'\r') {
                None => return Err(GoError::bad("chunked line ends with bare LF")),
                Some(i) if i != p.len() - 2 => return Err(GoError::bad("invalid CR in chunked line")),
                Some(_) => {}
            }
            let line = &p[..p.len() - 2];
            if line.len() >= MAX_CHUNK_LINE {
                return Err(GoError::bad("header line too long"));
            }
            pos += nl + 1;
            // beginChunk: count the overhead, trim trailing whitespace, drop the
            // extension (everything from the first ';', quotes or not), parse hex.
            excess += line.len() as i128 + 2;
            let trimmed_end = line.iter().rposition(|b| !matches!(b, b' ' | b'\t' | b'\r' | b'\n')).map(|i| i + 1).unwrap_or(0);
            let line = &line[..trimmed_end];
            let size_text = line.split(|&b| b == b';').next().unwrap_or(line);
            let n = parse_hex_uint(size_text)?;
            excess = (excess - 16 - 2 * n as i128).max(0);
            if excess > MAX_CHUNK_EXCESS {
                return Err(GoError::bad("chunked encoding contains too much non-data"));
            }
            if n == 0 {
                break;
            }
            // Read: the data, then exactly CRLF.
            let Ok(n) = usize::try_from(n) else { return Ok(None) };
            if buf.len() - pos < n.saturating_add(2) {
                return Ok(None);
            }
            out.extend_from_slice(&buf[pos..pos + n]);
            pos += n;
            if &buf[pos..pos + 2] != b"\r\n" {
                return Err(GoError::bad("malformed chunked encoding"));
            }
            pos += 2;
        }
        // body.readTrailer: CRLF ends the body at once; otherwise a CRLFCRLF must be
        // visible within the bufio buffer, then the trailer is a MIME header.
        let rest = &buf[pos..];
        if rest.len() < 2 {
            return Ok(None);
        }
        if &rest[..2] == b"\r\n" {
            return Ok(Some((out, Vec::new(), pos + 2)));
        }
        let window = &rest[..rest.len().min(BUFIO_SIZE)];
        if !window.windows(4).any(|w| w == b"\r\n\r\n") {
            if window.len() >= BUFIO_SIZE {
                return Err(GoError::bad("http: suspiciously long trailer after chunked body"));
            }
            return Ok(None);
        }
        match read_mime_header(rest, 0)? {
            Some((trailers, used)) => Ok(Some((out, trailers, pos + used))),
            None => Ok(None),
        }
    }

    /// The handler's answer: 200 with a small JSON body. Go adds `Connection: close`
    /// when it will close, and `Connection: keep-alive` to an HTTP/1.0 client that
    /// asked for it (server.go response.WriteHeader / cw.writeHeader).
    pub fn ok_response(head: &Head, number: usize) -> Vec<u8> {
        let body = format!("{{\"kind\":\"CaptureResult\",\"seen\":{number}}}");
        let mut out = format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n", body.len());
        if head.close {
            out.push_str("Connection: close\r\n");
        } else if (head.major, head.minor) == (1, 0) {
            out.push_str("Connection: keep-alive\r\n");
        }
        out.push_str("\r\n");
        if head.method != "HEAD" {
            out.push_str(&body);
        }
        out.into_bytes()
    }

    /// server.go conn.serve's answers to a request it cannot read (no Content-Length;
    /// the connection closes), and a handler's 400 for a body it could not read.
    pub fn error_response(status: u16, reason: &str) -> Vec<u8> {
        const ERROR_HEADERS: &str = "\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\n";
        match status {
            431 => format!("HTTP/1.1 431 Request Header Fields Too Large{ERROR_HEADERS}431 Request Header Fields Too Large"),
            501 => format!("HTTP/1.1 501 Not Implemented{ERROR_HEADERS}Unsupported transfer encoding"),
            505 => format!("HTTP/1.1 505 HTTP Version Not Supported: {reason}{ERROR_HEADERS}505 HTTP Version Not Supported: {reason}"),
            417 => "HTTP/1.1 417 Expectation Failed\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_string(),
            _ => {
                let reason: String = reason.chars().filter(|c| !c.is_control()).take(200).collect();
                format!("HTTP/1.1 400 Bad Request: {reason}{ERROR_HEADERS}400 Bad Request: {reason}")
            }
        }
        .into_bytes()
    }
}

/// A second `kubetape proxy`, started from the demo's own command line with its
/// upstream pointed at a capture server; killed on drop.
pub struct FrontProxy {
    /// `127.0.0.1:PORT`, for [`super::RawClient::connect`].
    pub addr: String,
    /// The `Authorization` value the proxy presents upstream (its own credential).
    pub authorization: String,
    pub process: Spawned,
}

/// Where a flag's value sits in a command line; panics if the flag is missing.
fn flag_value<'a>(args: &'a mut [String], flag: &str) -> &'a mut String {
    let i = args.iter().position(|a| a == flag).unwrap_or_else(|| panic!("{flag} missing from proxy.cmdline"));
    args.get_mut(i + 1).unwrap_or_else(|| panic!("{flag} has no value in proxy.cmdline"))
}

impl FrontProxy {
    /// Runs `DIR/proxy.cmdline` again with `--kubeconfig` replaced by one that points
    /// at `capture` (with the proxy's own client certificate from the kubeconfig the
    /// command line names, plus a bearer token so its upstream Authorization is known),
    /// and fresh `--listen` and `--metrics-listen` ports.
    pub fn start(demo: &Demo, capture: &Capture) -> FrontProxy {
        let cmdline = std::fs::read_to_string(demo.path("proxy.cmdline")).expect("proxy.cmdline");
        let mut args: Vec<String> = cmdline.split_whitespace().skip(1).map(String::from).collect();
        let own = std::path::PathBuf::from(flag_value(&mut args, "--kubeconfig").clone());
        let token = format!("capture-{}", kubetape::net::random::hex(16));
        let kubeconfig = demo.path("capture-upstream.kubeconfig");
        std::fs::write(&kubeconfig, capture_kubeconfig(capture, &own, &token)).expect("writing the capture kubeconfig");
        *flag_value(&mut args, "--kubeconfig") = kubeconfig.display().to_string();
        let port = free_port();
        *flag_value(&mut args, "--listen") = format!("127.0.0.1:{port}");
        *flag_value(&mut args, "--metrics-listen") = format!("127.0.0.1:{}", free_port());
        let process = Spawned::start(&args, &demo.path("front-proxy.log"));
        wait_for_port(port);
        FrontProxy { addr: format!("127.0.0.1:{port}"), authorization: format!("Bearer {token}"), process }
    }
}

/// A kubeconfig for the proxy: the capture server, trusted by its CA, reached with
/// the client certificate of `own` (the demo proxy's upstream kubeconfig) and `token`.
fn capture_kubeconfig(capture: &Capture, own: &Path, token: &str) -> String {
    let b64 = |b: &[u8]| kubetape::wire::base64::encode(b);
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: capture\n  cluster:\n    server: https://127.0.0.1:{port}\n    certificate-authority-data: {ca}\nusers:\n- name: kubetape-proxy\n  user:\n    client-certificate-data: {cert}\n    client-key-data: {key}\n    token: {token}\ncontexts:\n- name: capture\n  context:\n    cluster: capture\n    user: kubetape-proxy\ncurrent-context: capture\n",
        port = capture.port,
        ca = b64(capture.ca_pem.as_bytes()),
        cert = b64(&kubeconfig_field(own, "client-certificate-data")),
        key = b64(&kubeconfig_field(own, "client-key-data")),
    )
}
