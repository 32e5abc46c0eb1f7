//! HTTP/1.1 message heads and body framing (RFC 9112), with no I/O.
//!
//! Heads are parsed with `httparse` after a strict pre-scan; framing follows RFC 9112
//! section 6 with the smuggling defences of section 6.3: a message with both
//! Transfer-Encoding and Content-Length, more than one Content-Length, a
//! Transfer-Encoding other than `chunked`, or an obsolete folded header line is
//! rejected rather than guessed at.
//!
//! ```text
//! chunked body:  1a;ext=1\r\n <26 bytes> \r\n  ...  0\r\n <trailer lines> \r\n
//! ```

use std::fmt;

/// More header lines than this is an attack or a bug, never a real kubectl.
pub const MAX_HEADERS: usize = 128;
/// A chunk-size line (size plus extensions) or trailer line longer than this is refused.
const MAX_CHUNK_LINE: usize = 4096;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    pub name: String,
    pub value: Vec<u8>,
}

/// Header fields in arrival order; names compare case-insensitively.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Headers(pub Vec<Header>);

impl Headers {
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.0.iter().find(|h| h.name.eq_ignore_ascii_case(name)).map(|h| h.value.as_slice())
    }

    pub fn get_str(&self, name: &str) -> Option<&str> {
        self.get(name).and_then(|v| std::str::from_utf8(v).ok())
    }

    pub fn get_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.0.iter().filter(move |h| h.name.eq_ignore_ascii_case(name)).map(|h| h.value.as_slice())
    }

    pub fn count(&self, name: &str) -> usize {
        self.get_all(name).count()
    }

    pub fn remove(&mut self, name: &str) {
        self.0.retain(|h| !h.name.eq_ignore_ascii_case(name));
    }

    pub fn retain(&mut self, keep: impl FnMut(&Header) -> bool) {
        self.0.retain(keep);
    }

    pub fn push(&mut self, name: &str, value: impl Into<Vec<u8>>) {
        self.0.push(Header { name: name.to_string(), value: value.into() });
    }

    pub fn set(&mut self, name: &str, value: impl Into<Vec<u8>>) {
        self.remove(name);
        self.push(name, value);
    }

    /// Whether a comma-separated header (`Connection: keep-alive, Upgrade`) holds `token`.
    pub fn has_token(&self, name: &str, token: &str) -> bool {
        self.tokens(name).any(|t| t.eq_ignore_ascii_case(token))
    }

    /// The comma-separated tokens of every `name` field, trimmed.
    pub fn tokens<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.get_all(name).filter_map(|v| std::str::from_utf8(v).ok()).flat_map(|v| v.split(',')).map(str::trim).filter(|t| !t.is_empty())
    }

    fn encode_into(&self, out: &mut Vec<u8>) {
        for h in &self.0 {
            out.extend_from_slice(h.name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(&h.value);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestHead {
    pub method: String,
    pub target: String,
    pub headers: Headers,
}

impl RequestHead {
    pub fn new(method: &str, target: &str) -> Self {
        RequestHead { method: method.into(), target: target.into(), headers: Headers::default() }
    }

    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }

    pub fn query(&self) -> &str {
        self.target.split_once('?').map(|(_, q)| q).unwrap_or("")
    }

    /// Whether the request asks to switch protocols (`Connection: upgrade` plus `Upgrade`).
    pub fn upgrade(&self) -> Option<&str> {
        if self.headers.has_token("connection", "upgrade") {
            self.headers.get_str("upgrade")
        } else {
            None
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = format!("{} {} HTTP/1.1\r\n", self.method, self.target).into_bytes();
        self.headers.encode_into(&mut out);
        out
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResponseHead {
    pub status: u16,
    pub reason: String,
    pub headers: Headers,
}

impl ResponseHead {
    pub fn new(status: u16) -> Self {
        ResponseHead { status, reason: reason_phrase(status).into(), headers: Headers::default() }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = format!("HTTP/1.1 {} {}\r\n", self.status, self.reason).into_bytes();
        self.headers.encode_into(&mut out);
        out
    }
}

/// A whole response with a Content-Length body.
pub fn response(status: u16, content_type: &str, body: &[u8]) -> Vec<u8> {
    let mut head = ResponseHead::new(status);
    head.headers.push("Content-Type", content_type);
    head.headers.push("Content-Length", body.len().to_string());
    let mut out = head.encode();
    out.extend_from_slice(body);
    out
}

pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        417 => "Expectation Failed",
        422 => "Unprocessable Entity",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Unknown",
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HeadError {
    /// httparse refused the head; `offset` is where the head started to be scanned.
    Malformed(&'static str),
    TooManyHeaders,
    /// A header line starting with space or tab (RFC 9112 section 5.2).
    ObsoleteLineFolding {
        offset: usize,
    },
    UnsupportedVersion(u8),
    NonUtf8(&'static str),
    /// A LF without CR, or a CR without LF (Go and RFC 9112 section 2.2 may differ on
    /// these, so neither is accepted).
    BareLineEnd {
        offset: usize,
    },
}

impl fmt::Display for HeadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HeadError::Malformed(what) => write!(f, "malformed HTTP head: {what}"),
            HeadError::TooManyHeaders => write!(f, "more than {MAX_HEADERS} header fields"),
            HeadError::ObsoleteLineFolding { offset } => {
                write!(f, "obsolete line folding at byte {offset}")
            }
            HeadError::UnsupportedVersion(v) => write!(f, "expected HTTP/1.1, found HTTP/1.{v}"),
            HeadError::NonUtf8(what) => write!(f, "{what} is not UTF-8"),
            HeadError::BareLineEnd { offset } => write!(f, "expected CRLF at byte {offset}, found a bare line end"),
        }
    }
}

impl std::error::Error for HeadError {}

/// Scans `buf` for the end of a head (the index after `\r\n\r\n`), starting at
/// `from`: bytes before it were scanned by an earlier call, so a head that arrives a
/// byte at a time costs linear time in all. A bare LF or CR anywhere is an error.
pub fn scan_head(buf: &[u8], from: usize) -> Result<Option<usize>, HeadError> {
    // Step back over a possibly partial terminator so it is seen whole.
    let mut i = from.saturating_sub(3).min(buf.len());
    while let Some(at) = buf[i..].iter().position(|&b| b == b'\r' || b == b'\n') {
        let at = i + at;
        let bare = match buf[at] {
            b'\n' => at == 0 || buf[at - 1] != b'\r',
            _ => buf.get(at + 1).is_some_and(|&next| next != b'\n'),
        };
        if bare {
            return Err(HeadError::BareLineEnd { offset: at });
        }
        if buf[at] == b'\n' && at >= 3 && &buf[at - 3..=at] == b"\r\n\r\n" {
            return Ok(Some(at + 1));
        }
        i = at + 1;
    }
    Ok(None)
}

/// A line that starts with space or tab continues the one before: refused.
fn check_folding(head: &[u8]) -> Result<(), HeadError> {
    match head.windows(2).position(|w| w[0] == b'\n' && (w[1] == b' ' || w[1] == b'\t')) {
        Some(i) => Err(HeadError::ObsoleteLineFolding { offset: i + 1 }),
        None => Ok(()),
    }
}

fn convert_headers(raw: &[httparse::Header<'_>]) -> Result<Headers, HeadError> {
    raw.iter().map(|h| Ok(Header { name: h.name.to_string(), value: h.value.to_vec() })).collect::<Result<Vec<_>, HeadError>>().map(Headers)
}

fn map_httparse(e: httparse::Error) -> HeadError {
    match e {
        httparse::Error::TooManyHeaders => HeadError::TooManyHeaders,
        httparse::Error::HeaderName => HeadError::Malformed("invalid header name"),
        httparse::Error::HeaderValue => HeadError::Malformed("invalid header value"),
        httparse::Error::NewLine => HeadError::Malformed("invalid line ending"),
        httparse::Error::Status => HeadError::Malformed("invalid status"),
        httparse::Error::Token => HeadError::Malformed("invalid token"),
        httparse::Error::Version => HeadError::Malformed("invalid version"),
    }
}

/// Parses a request head from the front of `buf`.
/// Returns `Ok(None)` when more bytes are needed; nothing is consumed then.
pub fn parse_request(buf: &[u8]) -> Result<Option<(RequestHead, usize)>, HeadError> {
    let Some(end) = scan_head(buf, 0)? else { return Ok(None) };
    check_folding(&buf[..end])?;
    let mut raw = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut raw);
    match req.parse(&buf[..end]).map_err(map_httparse)? {
        httparse::Status::Partial => Err(HeadError::Malformed("incomplete head")),
        httparse::Status::Complete(n) => {
            let version = req.version.unwrap_or(0);
            if version != 1 {
                return Err(HeadError::UnsupportedVersion(version));
            }
            let head = RequestHead { method: req.method.unwrap_or_default().to_string(), target: req.path.unwrap_or_default().to_string(), headers: convert_headers(req.headers)? };
            // Origin form only: no absolute form, and no `*` (OPTIONS to the server
            // itself is nothing the API server serves).
            if !head.target.starts_with('/') {
                return Err(HeadError::Malformed("request target must be in origin form"));
            }
            Ok(Some((head, n)))
        }
    }
}

/// Parses a response head from the front of `buf`.
/// Returns `Ok(None)` when more bytes are needed; nothing is consumed then.
pub fn parse_response(buf: &[u8]) -> Result<Option<(ResponseHead, usize)>, HeadError> {
    let Some(end) = scan_head(buf, 0)? else { return Ok(None) };
    check_folding(&buf[..end])?;
    let mut raw = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut raw);
    match resp.parse(&buf[..end]).map_err(map_httparse)? {
        httparse::Status::Partial => Err(HeadError::Malformed("incomplete head")),
        httparse::Status::Complete(n) => {
            // Go's client refuses these too; re-encoded they would not parse.
            if resp.code.unwrap_or(0) < 100 {
                return Err(HeadError::Malformed("status code below 100"));
            }
            let head = ResponseHead { status: resp.code.unwrap_or(0), reason: resp.reason.unwrap_or_default().to_string(), headers: convert_headers(resp.headers)? };
            Ok(Some((head, n)))
        }
    }
}

/// How a message body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyLength {
    Empty,
    Length(u64),
    Chunked,
    /// Response bodies only: the body ends when the connection closes.
    UntilClose,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FramingError {
    ConflictingFraming,
    DuplicateContentLength,
    BadContentLength(String),
    UnsupportedTransferEncoding(String),
}

impl fmt::Display for FramingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FramingError::ConflictingFraming => {
                write!(f, "both Transfer-Encoding and Content-Length are present")
            }
            FramingError::DuplicateContentLength => write!(f, "more than one Content-Length"),
            FramingError::BadContentLength(v) => {
                write!(f, "expected a decimal Content-Length, found {v:?}")
            }
            FramingError::UnsupportedTransferEncoding(v) => {
                write!(f, "expected Transfer-Encoding chunked, found {v:?}")
            }
        }
    }
}

impl std::error::Error for FramingError {}

fn declared_length(headers: &Headers) -> Result<Option<BodyLength>, FramingError> {
    let has_te = headers.get("transfer-encoding").is_some();
    let cl_count = headers.count("content-length");
    if has_te && cl_count > 0 {
        return Err(FramingError::ConflictingFraming);
    }
    if has_te {
        let codings: Vec<&str> = headers.tokens("transfer-encoding").collect();
        if codings.len() != 1 || !codings[0].eq_ignore_ascii_case("chunked") {
            return Err(FramingError::UnsupportedTransferEncoding(codings.join(", ")));
        }
        return Ok(Some(BodyLength::Chunked));
    }
    match cl_count {
        0 => Ok(None),
        1 => {
            let raw = headers.get("content-length").unwrap_or_default();
            let text = String::from_utf8_lossy(raw).into_owned();
            if text.is_empty() || text.len() > 19 || !text.bytes().all(|b| b.is_ascii_digit()) {
                return Err(FramingError::BadContentLength(text));
            }
            // Go reads lengths as int64 (`strconv.ParseUint(v, 10, 63)`): anything larger
            // would be framed differently there.
            let n: u64 = text.parse().ok().filter(|&n| n <= i64::MAX as u64).ok_or(FramingError::BadContentLength(text))?;
            Ok(Some(if n == 0 { BodyLength::Empty } else { BodyLength::Length(n) }))
        }
        _ => Err(FramingError::DuplicateContentLength),
    }
}

/// The body framing of a request (RFC 9112 section 6.3): no framing header means no body.
pub fn request_body(head: &RequestHead) -> Result<BodyLength, FramingError> {
    Ok(declared_length(&head.headers)?.unwrap_or(BodyLength::Empty))
}

/// The body framing of a response to a request with `method`.
pub fn response_body(method: &str, head: &ResponseHead) -> Result<BodyLength, FramingError> {
    if method == "HEAD" || head.status < 200 || head.status == 204 || head.status == 304 {
        return Ok(BodyLength::Empty);
    }
    Ok(declared_length(&head.headers)?.unwrap_or(BodyLength::UntilClose))
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChunkError {
    BadSize { offset: usize, byte: u8 },
    SizeTooLarge,
    LineTooLong,
    ExpectedCrlf { offset: usize, found: u8 },
}

impl fmt::Display for ChunkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChunkError::BadSize { offset, byte } => {
                write!(f, "expected a hex chunk size at byte {offset}, found 0x{byte:02x}")
            }
            ChunkError::SizeTooLarge => write!(f, "chunk size does not fit in 64 bits"),
            ChunkError::LineTooLong => write!(f, "chunk line longer than {MAX_CHUNK_LINE} bytes"),
            ChunkError::ExpectedCrlf { offset, found } => {
                write!(f, "expected CRLF at byte {offset}, found 0x{found:02x}")
            }
        }
    }
}

impl std::error::Error for ChunkError {}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ChunkState {
    /// Reading hex digits; `digits` counts them.
    Size {
        digits: u8,
    },
    /// After the size: `;extensions` up to CR.
    Extension,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    /// At the start of a trailer line (or the final empty line).
    TrailerStart,
    TrailerLine,
    TrailerLf {
        empty: bool,
    },
    Done,
}

/// An incremental decoder for `Transfer-Encoding: chunked`.
#[derive(Debug)]
pub struct ChunkedDecoder {
    state: ChunkState,
    size: u64,
    line_len: usize,
    /// Bytes consumed so far, for error offsets.
    offset: usize,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        ChunkedDecoder { state: ChunkState::Size { digits: 0 }, size: 0, line_len: 0, offset: 0 }
    }
}

impl ChunkedDecoder {
    pub fn is_done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// Decodes from `input`, appending body bytes to `out`. Returns how many input bytes
    /// were consumed; stops at the end of the body (see [`Self::is_done`]).
    pub fn decode(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<usize, ChunkError> {
        let mut i = 0;
        while i < input.len() && self.state != ChunkState::Done {
            let b = input[i];
            let at = self.offset + i;
            match self.state {
                ChunkState::Size { digits } => {
                    if let Some(d) = (b as char).to_digit(16) {
                        if digits >= 16 {
                            return Err(ChunkError::SizeTooLarge);
                        }
                        self.size = self.size << 4 | d as u64;
                        self.state = ChunkState::Size { digits: digits + 1 };
                    } else if digits == 0 {
                        return Err(ChunkError::BadSize { offset: at, byte: b });
                    } else if b == b';' || b == b' ' || b == b'\t' {
                        self.line_len = 0;
                        self.state = ChunkState::Extension;
                    } else if b == b'\r' {
                        self.state = ChunkState::SizeLf;
                    } else {
                        return Err(ChunkError::BadSize { offset: at, byte: b });
                    }
                    i += 1;
                }
                ChunkState::Extension => {
                    if b == b'\r' {
                        self.state = ChunkState::SizeLf;
                    } else if b == b'\n' {
                        return Err(ChunkError::ExpectedCrlf { offset: at, found: b });
                    } else {
                        self.line_len += 1;
                        if self.line_len > MAX_CHUNK_LINE {
                            return Err(ChunkError::LineTooLong);
                        }
                    }
                    i += 1;
                }
                ChunkState::SizeLf => {
                    if b != b'\n' {
                        return Err(ChunkError::ExpectedCrlf { offset: at, found: b });
                    }
                    i += 1;
                    self.state = if self.size == 0 { ChunkState::TrailerStart } else { ChunkState::Data };
                }
                ChunkState::Data => {
                    let take = (input.len() - i).min(usize::try_from(self.size).unwrap_or(usize::MAX));
                    out.extend_from_slice(&input[i..i + take]);
                    i += take;
                    self.size -= take as u64;
                    if self.size == 0 {
                        self.state = ChunkState::DataCr;
                    }
                }
                ChunkState::DataCr | ChunkState::DataLf => {
                    let want = if self.state == ChunkState::DataCr { b'\r' } else { b'\n' };
                    if b != want {
                        return Err(ChunkError::ExpectedCrlf { offset: at, found: b });
                    }
                    i += 1;
                    self.state = if want == b'\r' { ChunkState::DataLf } else { ChunkState::Size { digits: 0 } };
                }
                ChunkState::TrailerStart | ChunkState::TrailerLine if b == b'\n' => {
                    return Err(ChunkError::ExpectedCrlf { offset: at, found: b });
                }
                ChunkState::TrailerStart => {
                    i += 1;
                    self.line_len = 0;
                    self.state = if b == b'\r' { ChunkState::TrailerLf { empty: true } } else { ChunkState::TrailerLine };
                }
                ChunkState::TrailerLine => {
                    i += 1;
                    if b == b'\r' {
                        self.state = ChunkState::TrailerLf { empty: false };
                    } else {
                        self.line_len += 1;
                        if self.line_len > MAX_CHUNK_LINE {
                            return Err(ChunkError::LineTooLong);
                        }
                    }
                }
                ChunkState::TrailerLf { empty } => {
                    if b != b'\n' {
                        return Err(ChunkError::ExpectedCrlf { offset: at, found: b });
                    }
                    i += 1;
                    self.state = if empty { ChunkState::Done } else { ChunkState::TrailerStart };
                }
                ChunkState::Done => {}
            }
        }
        self.offset += i;
        Ok(i)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PathError {
    /// A `%` not followed by two hex digits (Go's `url.PathUnescape` refuses it too).
    BadEscape { offset: usize },
    /// The decoded path is not UTF-8 or holds a control byte.
    BadByte { offset: usize },
    /// An empty, `.` or `..` segment: routers differ on these, so none is accepted.
    BadSegment(String),
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PathError::BadEscape { offset } => write!(f, "expected two hex digits after '%' at byte {offset} of the path"),
            PathError::BadByte { offset } => write!(f, "the decoded path has a control or non-UTF-8 byte at {offset}"),
            PathError::BadSegment(seg) => write!(f, "the path may not hold the segment {seg:?}"),
        }
    }
}

impl std::error::Error for PathError {}

/// Decodes a request path as Go's `net/url` does for `URL.Path` (the path the API
/// server routes on): every `%XX` becomes its byte, `%2F` included, and `+` stays.
/// Refuses what could be routed differently by different readers: bad escapes,
/// control bytes, non-UTF-8, and empty, `.` or `..` segments (a trailing `/` is kept,
/// as kube-apiserver trims it).
pub fn decode_path(raw: &str) -> Result<String, PathError> {
    let b = raw.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = |k: usize| b.get(k).and_then(|c| (*c as char).to_digit(16));
            match (hex(i + 1), hex(i + 2)) {
                (Some(h), Some(l)) => out.push((h * 16 + l) as u8),
                _ => return Err(PathError::BadEscape { offset: i }),
            }
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    if let Some(at) = out.iter().position(|c| c.is_ascii_control()) {
        return Err(PathError::BadByte { offset: at });
    }
    let path = String::from_utf8(out).map_err(|e| PathError::BadByte { offset: e.utf8_error().valid_up_to() })?;
    let inner = path.strip_prefix('/').unwrap_or(&path);
    let inner = inner.strip_suffix('/').unwrap_or(inner);
    if !inner.is_empty() {
        if let Some(seg) = inner.split('/').find(|s| s.is_empty() || *s == "." || *s == "..") {
            return Err(PathError::BadSegment(seg.to_string()));
        }
    }
    Ok(path)
}

/// The canonical encoding of a decoded path, as Go's `url.URL.EscapedPath` writes
/// one with no raw form: unreserved bytes and `$&+,/:;=@` as they are, every other
/// byte as `%XX`. `decode_path` of the result gives `path` back.
pub fn encode_path(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for &c in path.as_bytes() {
        if c.is_ascii_alphanumeric() || b"-_.~$&+,/:;=@".contains(&c) {
            out.push(c as char);
        } else {
            out.push_str(&format!("%{c:02X}"));
        }
    }
    out
}

/// Whether Go's `url.ParseQuery` reads `query` exactly as [`query_pairs`] does: no
/// `;` (Go 1.17+ drops such a pair) and no bad `%` escape (Go drops that pair too).
pub fn query_is_unambiguous(query: &str) -> bool {
    let b = query.as_bytes();
    !b.contains(&b';')
        && b.iter().enumerate().all(|(i, &c)| c != b'%' || b.get(i + 1..i + 3).is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)))
        && query.split('&').all(|p| p.split('=').all(|part| std::str::from_utf8(&percent_decode_bytes(part)).is_ok()))
}

fn percent_decode_bytes(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let hex = |k: usize| b.get(k).and_then(|c| (*c as char).to_digit(16));
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match (b[i], hex(i + 1), hex(i + 2)) {
            (b'+', _, _) => out.push(b' '),
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 2;
            }
            (c, _, _) => out.push(c),
        }
        i += 1;
    }
    out
}

/// Decodes `%XX` escapes and `+` (as a space) in a query component.
pub fn percent_decode(s: &str) -> String {
    String::from_utf8_lossy(&percent_decode_bytes(s)).into_owned()
}

/// The `name=value` pairs of a query string, decoded, in order (names may repeat).
pub fn query_pairs(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (percent_decode(k), percent_decode(v)),
            None => (percent_decode(p), String::new()),
        })
        .collect()
}

/// The line that starts a chunk of `len` bytes (`len` > 0).
pub fn chunk_header(len: usize) -> Vec<u8> {
    format!("{len:x}\r\n").into_bytes()
}

/// The last chunk with no trailers.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// Encodes `data` as one chunk; nothing for no data (an empty chunk is the last).
pub fn encode_chunk(data: &[u8]) -> Vec<u8> {
    if data.is_empty() {
        return Vec::new();
    }
    let mut out = chunk_header(data.len());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::testutil::for_each_split;

    #[test]
    fn request_head_parses() {
        let raw = b"GET /api/v1/pods?watch=1 HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n\r\nrest";
        let (head, n) = parse_request(raw).unwrap().unwrap();
        assert_eq!(n, raw.len() - 4);
        assert_eq!(head.method, "GET");
        assert_eq!(head.path(), "/api/v1/pods");
        assert_eq!(head.query(), "watch=1");
        assert_eq!(head.upgrade(), Some("websocket"));
    }

    #[test]
    fn request_head_incomplete_is_none() {
        assert_eq!(parse_request(b"GET / HTTP/1.1\r\nHost: x\r\n").unwrap(), None);
    }

    #[test]
    fn request_head_errors() {
        let cases: &[(&str, &[u8], HeadError)] = &[
            ("folding", b"GET / HTTP/1.1\r\nA: b\r\n c\r\n\r\n", HeadError::ObsoleteLineFolding { offset: 22 }),
            ("http10", b"GET / HTTP/1.0\r\n\r\n", HeadError::UnsupportedVersion(0)),
            ("absolute form", b"GET http://x/ HTTP/1.1\r\n\r\n", HeadError::Malformed("request target must be in origin form")),
            ("asterisk form", b"OPTIONS * HTTP/1.1\r\n\r\n", HeadError::Malformed("request target must be in origin form")),
            ("bad name", b"GET / HTTP/1.1\r\nA b: c\r\n\r\n", HeadError::Malformed("invalid header name")),
        ];
        for (name, raw, want) in cases {
            assert_eq!(parse_request(raw).unwrap_err(), *want, "{name}");
        }
    }

    #[test]
    fn bare_line_ends_are_refused() {
        let cases: &[(&str, &[u8], usize)] = &[
            ("bare lf head", b"GET / HTTP/1.1\nHost: x\n\n", 14),
            ("bare lf header", b"GET / HTTP/1.1\r\nHost: x\n\r\n", 23),
            ("bare cr", b"GET / HTTP/1.1\rHost: x\r\n\r\n", 14),
        ];
        for (name, raw, offset) in cases {
            assert_eq!(parse_request(raw).unwrap_err(), HeadError::BareLineEnd { offset: *offset }, "{name}");
        }
    }

    #[test]
    fn head_scan_resumes_where_it_stopped() {
        let raw = b"GET / HTTP/1.1\r\nHost: x\r\n\r\nbody";
        let want = raw.len() - 4;
        for cut in 0..raw.len() {
            let first = scan_head(&raw[..cut], 0).unwrap();
            if first.is_some() {
                assert_eq!(first, Some(want));
                continue;
            }
            assert_eq!(scan_head(raw, cut).unwrap(), Some(want), "resumed at {cut}");
        }
    }

    #[test]
    fn too_many_headers() {
        let mut raw = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..=MAX_HEADERS {
            raw.extend_from_slice(format!("X-{i}: y\r\n").as_bytes());
        }
        raw.extend_from_slice(b"\r\n");
        assert_eq!(parse_request(&raw).unwrap_err(), HeadError::TooManyHeaders);
    }

    fn req_with(headers: &[(&str, &str)]) -> RequestHead {
        let mut head = RequestHead::new("POST", "/");
        for (n, v) in headers {
            head.headers.push(n, v.as_bytes());
        }
        head
    }

    type Case<'a, T> = (&'a str, &'a [(&'a str, &'a str)], T);

    #[test]
    fn framing_table() {
        use BodyLength::*;
        let ok: &[Case<'_, BodyLength>] = &[
            ("none", &[], Empty),
            ("length", &[("Content-Length", "12")], Length(12)),
            ("zero", &[("Content-Length", "0")], Empty),
            ("chunked", &[("Transfer-Encoding", "Chunked")], Chunked),
        ];
        for (name, h, want) in ok {
            assert_eq!(request_body(&req_with(h)).unwrap(), *want, "{name}");
        }
        let bad: &[Case<'_, FramingError>] = &[
            ("te and cl", &[("Transfer-Encoding", "chunked"), ("Content-Length", "3")], FramingError::ConflictingFraming),
            ("two cl", &[("Content-Length", "3"), ("Content-Length", "3")], FramingError::DuplicateContentLength),
            ("signed cl", &[("Content-Length", "+3")], FramingError::BadContentLength("+3".into())),
            ("list cl", &[("Content-Length", "3, 3")], FramingError::BadContentLength("3, 3".into())),
            ("cl of 2^63", &[("Content-Length", "9223372036854775808")], FramingError::BadContentLength("9223372036854775808".into())),
            ("gzip te", &[("Transfer-Encoding", "gzip, chunked")], FramingError::UnsupportedTransferEncoding("gzip, chunked".into())),
        ];
        for (name, h, want) in bad {
            assert_eq!(request_body(&req_with(h)).unwrap_err(), *want, "{name}");
        }
    }

    #[test]
    fn response_framing() {
        let mut head = ResponseHead::new(200);
        assert_eq!(response_body("GET", &head).unwrap(), BodyLength::UntilClose);
        assert_eq!(response_body("HEAD", &head).unwrap(), BodyLength::Empty);
        head.status = 101;
        assert_eq!(response_body("GET", &head).unwrap(), BodyLength::Empty);
    }

    fn decode_all(pieces: &[&[u8]]) -> Result<(Vec<u8>, usize), ChunkError> {
        let mut dec = ChunkedDecoder::default();
        let mut out = Vec::new();
        let mut used = 0;
        for p in pieces {
            let n = dec.decode(p, &mut out)?;
            used += n;
            if dec.is_done() {
                break;
            }
            assert_eq!(n, p.len(), "a piece is consumed whole until the end");
        }
        assert!(dec.is_done());
        Ok((out, used))
    }

    #[test]
    fn chunked_split_everywhere() {
        let body = b"5;name=val\r\nhello\r\n1A\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nX-Trailer: 1\r\n\r\nNEXT";
        let want = b"helloabcdefghijklmnopqrstuvwxyz".to_vec();
        for_each_split(body, |pieces| {
            let (out, used) = decode_all(pieces).unwrap();
            assert_eq!(out, want);
            assert_eq!(used, body.len() - 4);
        });
    }

    #[test]
    fn chunked_errors() {
        let cases: &[(&str, &[u8], ChunkError)] = &[
            ("empty size", b"\r\n", ChunkError::BadSize { offset: 0, byte: b'\r' }),
            ("non hex", b"5x\r\n", ChunkError::BadSize { offset: 1, byte: b'x' }),
            ("negative", b"-5\r\n", ChunkError::BadSize { offset: 0, byte: b'-' }),
            ("overflow", b"11111111111111111\r\n", ChunkError::SizeTooLarge),
            ("bare lf", b"5\n", ChunkError::BadSize { offset: 1, byte: b'\n' }),
            ("missing crlf", b"1\r\naXY", ChunkError::ExpectedCrlf { offset: 4, found: b'X' }),
            ("bare lf ending the body", b"0\r\n\n", ChunkError::ExpectedCrlf { offset: 3, found: b'\n' }),
            ("bare lf in a trailer", b"0\r\nX: 1\n", ChunkError::ExpectedCrlf { offset: 7, found: b'\n' }),
        ];
        for (name, raw, want) in cases {
            let mut dec = ChunkedDecoder::default();
            assert_eq!(dec.decode(raw, &mut Vec::new()).unwrap_err(), *want, "{name}");
        }
    }

    #[test]
    fn queries_decode() {
        let q = query_pairs("command=sh&command=-c&command=echo%20a+b%2&tty=true&x");
        let want: Vec<(String, String)> =
            [("command", "sh"), ("command", "-c"), ("command", "echo a b%2"), ("tty", "true"), ("x", "")].iter().map(|(a, b)| (a.to_string(), b.to_string())).collect();
        assert_eq!(q, want);
        assert_eq!(percent_decode("%"), "%");
        assert_eq!(percent_decode("%e2%82%ac"), "€");
    }

    #[test]
    fn paths_decode_as_go_routes_them() {
        let ok = [
            ("/api/v1/namespaces/default/pods/web-0/exec", "/api/v1/namespaces/default/pods/web-0/exec"),
            ("/api/v1/namespaces/default/pods/web-0/%65xec", "/api/v1/namespaces/default/pods/web-0/exec"),
            ("/api/v1/namespaces/default/pods/web-0%2Fexec", "/api/v1/namespaces/default/pods/web-0/exec"),
            ("/api/v1/namespaces/default/pods/web-0/exec%2F", "/api/v1/namespaces/default/pods/web-0/exec/"),
            ("/api/v1/namespaces/default/pods/a+b", "/api/v1/namespaces/default/pods/a+b"),
            ("/", "/"),
        ];
        for (raw, want) in ok {
            let path = decode_path(raw).unwrap();
            assert_eq!(path, want, "{raw}");
            assert_eq!(decode_path(&encode_path(&path)).unwrap(), path, "{raw} round trip");
        }
        let bad = [
            ("/api/%zz", PathError::BadEscape { offset: 5 }),
            ("/api/%2", PathError::BadEscape { offset: 5 }),
            ("/api/%+f", PathError::BadEscape { offset: 5 }),
            ("/api/%00", PathError::BadByte { offset: 5 }),
            ("/api/%ff", PathError::BadByte { offset: 5 }),
            ("/api//v1", PathError::BadSegment(String::new())),
            ("/api/./v1", PathError::BadSegment(".".into())),
            ("/api/v1/%2E%2E/x", PathError::BadSegment("..".into())),
            ("/api/v1/pods/web-0%2F%2Fexec", PathError::BadSegment(String::new())),
        ];
        for (raw, want) in bad {
            assert_eq!(decode_path(raw), Err(want), "{raw}");
        }
        assert_eq!(encode_path("/a b/ü?#%"), "/a%20b/%C3%BC%3F%23%25");
    }

    #[test]
    fn queries_go_would_read_differently_are_flagged() {
        for q in ["command=sh&command=-c", "command=echo%20a+b", "", "tty=1&x"] {
            assert!(query_is_unambiguous(q), "{q}");
        }
        for q in ["command=rm&command=%zz&command=-rf", "command=sh;command=x", "a=%", "a=%2", "a=%+f", "a=%ff"] {
            assert!(!query_is_unambiguous(q), "{q}");
        }
    }

    #[test]
    fn chunk_encoding_round_trips() {
        let mut enc = encode_chunk(b"hello world");
        enc.extend_from_slice(LAST_CHUNK);
        let (out, _) = decode_all(&[&enc]).unwrap();
        assert_eq!(out, b"hello world");
    }
}
