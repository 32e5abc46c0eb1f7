//! SPDY/3.1 framing and header blocks (draft-mbelshe-httpbis-spdy-00, sections 2.2,
//! 2.6), as `kubectl exec/attach/port-forward` and the kubelet speak it. No I/O.
//!
//! ```text
//! control:  |1| version (15) = 3 | type (16) |  flags (8) | length (24) | payload
//! data:     |0| stream id (31)               |  flags (8) | length (24) | payload
//! SYN_STREAM payload: |X| stream id (31) |X| assoc id (31) | pri (3) unused (5) slot (8) | header block
//! header block (zlib, SPDY dictionary, one stream per direction):
//!           count (32) { name len (32) name  value len (32) value (NUL-separated) }*
//! ```
//!
//! Flow control: Kubernetes' spdystream neither sends nor enforces WINDOW_UPDATE,
//! so these frames are parsed and otherwise ignored.

use std::fmt;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

pub const FRAME_HEAD_LEN: usize = 8;
pub const FLAG_FIN: u8 = 0x01;
const VERSION: u16 = 3;
/// A header block that inflates past this is refused (a zip bomb, not a kubectl).
const MAX_HEADER_BLOCK: usize = 256 * 1024;

pub const TYPE_SYN_STREAM: u16 = 1;
pub const TYPE_SYN_REPLY: u16 = 2;
pub const TYPE_RST_STREAM: u16 = 3;
pub const TYPE_SETTINGS: u16 = 4;
pub const TYPE_PING: u16 = 6;
pub const TYPE_GOAWAY: u16 = 7;
pub const TYPE_HEADERS: u16 = 8;
pub const TYPE_WINDOW_UPDATE: u16 = 9;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SpdyError {
    UnsupportedVersion(u16),
    /// A control frame too short for its type.
    ShortControlFrame {
        kind: u16,
        len: usize,
    },
    BadHeaderBlock(&'static str),
    HeaderBlockTooLarge,
    Inflate(String),
}

impl fmt::Display for SpdyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SpdyError::UnsupportedVersion(v) => write!(f, "expected SPDY version 3, found {v}"),
            SpdyError::ShortControlFrame { kind, len } => {
                write!(f, "control frame of type {kind} is too short ({len} bytes)")
            }
            SpdyError::BadHeaderBlock(what) => write!(f, "malformed SPDY header block: {what}"),
            SpdyError::HeaderBlockTooLarge => {
                write!(f, "SPDY header block inflates past {MAX_HEADER_BLOCK} bytes")
            }
            SpdyError::Inflate(e) => write!(f, "inflating SPDY header block: {e}"),
        }
    }
}

impl std::error::Error for SpdyError {}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    Data {
        stream_id: u32,
        flags: u8,
        payload: &'a [u8],
    },
    SynStream {
        stream_id: u32,
        associated_id: u32,
        flags: u8,
        header_block: &'a [u8],
    },
    SynReply {
        stream_id: u32,
        flags: u8,
        header_block: &'a [u8],
    },
    Headers {
        stream_id: u32,
        flags: u8,
        header_block: &'a [u8],
    },
    RstStream {
        stream_id: u32,
        status: u32,
    },
    Ping {
        id: u32,
    },
    GoAway {
        last_good_stream_id: u32,
        status: u32,
    },
    WindowUpdate {
        stream_id: u32,
        delta: u32,
    },
    /// SETTINGS, and types this crate does not interpret.
    OtherControl {
        kind: u16,
        flags: u8,
        payload: &'a [u8],
    },
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// What the first [`FRAME_HEAD_LEN`] bytes of a frame say: enough to stream a data
/// frame's payload, or to know how much of a control frame to collect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHead {
    pub kind: FrameKind,
    pub flags: u8,
    /// Payload bytes after the head.
    pub payload_len: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameKind {
    Data {
        stream_id: u32,
    },
    /// A control frame of this type; its stream id, if any, is in the payload.
    Control(u16),
}

impl FrameHead {
    pub fn fin(&self) -> bool {
        self.flags & FLAG_FIN != 0
    }
}

/// Parses the head of the frame at the front of `buf`.
/// Returns `Ok(None)` when fewer than [`FRAME_HEAD_LEN`] bytes are there.
pub fn parse_head(buf: &[u8]) -> Result<Option<FrameHead>, SpdyError> {
    if buf.len() < FRAME_HEAD_LEN {
        return Ok(None);
    }
    let word = be32(buf);
    let flags = buf[4];
    let payload_len = (be32(&buf[4..]) & 0x00ff_ffff) as usize;
    if buf[0] & 0x80 == 0 {
        return Ok(Some(FrameHead { kind: FrameKind::Data { stream_id: word & 0x7fff_ffff }, flags, payload_len }));
    }
    let version = ((word >> 16) & 0x7fff) as u16;
    if version != VERSION {
        return Err(SpdyError::UnsupportedVersion(version));
    }
    Ok(Some(FrameHead { kind: FrameKind::Control((word & 0xffff) as u16), flags, payload_len }))
}

/// Parses one frame from the front of `buf`.
/// Returns `Ok(None)` when more bytes are needed; nothing is consumed then.
pub fn parse_frame(buf: &[u8]) -> Result<Option<(Frame<'_>, usize)>, SpdyError> {
    let Some(head) = parse_head(buf)? else { return Ok(None) };
    let total = FRAME_HEAD_LEN + head.payload_len;
    if buf.len() < total {
        return Ok(None);
    }
    Ok(Some((parse_payload(head, &buf[FRAME_HEAD_LEN..total])?, total)))
}

/// The frame `head` announced, from its whole payload (for callers that collect
/// payloads themselves).
pub fn parse_payload(head: FrameHead, payload: &[u8]) -> Result<Frame<'_>, SpdyError> {
    let flags = head.flags;
    let kind = match head.kind {
        FrameKind::Data { stream_id } => return Ok(Frame::Data { stream_id, flags, payload }),
        FrameKind::Control(kind) => kind,
    };
    let need = match kind {
        TYPE_SYN_STREAM => 10,
        TYPE_SYN_REPLY | TYPE_HEADERS | TYPE_PING => 4,
        TYPE_RST_STREAM | TYPE_GOAWAY | TYPE_WINDOW_UPDATE => 8,
        _ => 0,
    };
    if payload.len() < need {
        return Err(SpdyError::ShortControlFrame { kind, len: payload.len() });
    }
    let id = || be32(payload) & 0x7fff_ffff;
    Ok(match kind {
        TYPE_SYN_STREAM => Frame::SynStream { stream_id: id(), associated_id: be32(&payload[4..]) & 0x7fff_ffff, flags, header_block: &payload[10..] },
        TYPE_SYN_REPLY => Frame::SynReply { stream_id: id(), flags, header_block: &payload[4..] },
        TYPE_HEADERS => Frame::Headers { stream_id: id(), flags, header_block: &payload[4..] },
        TYPE_RST_STREAM => Frame::RstStream { stream_id: id(), status: be32(&payload[4..]) },
        TYPE_PING => Frame::Ping { id: be32(payload) },
        TYPE_GOAWAY => Frame::GoAway { last_good_stream_id: id(), status: be32(&payload[4..]) },
        TYPE_WINDOW_UPDATE => Frame::WindowUpdate { stream_id: id(), delta: be32(&payload[4..]) & 0x7fff_ffff },
        _ => Frame::OtherControl { kind, flags, payload },
    })
}

fn control_head(kind: u16, flags: u8, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(FRAME_HEAD_LEN + len);
    out.extend_from_slice(&(0x8000 | VERSION).to_be_bytes());
    out.extend_from_slice(&kind.to_be_bytes());
    out.extend_from_slice(&((flags as u32) << 24 | len as u32).to_be_bytes());
    out
}

pub fn encode_data(stream_id: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(FRAME_HEAD_LEN + payload.len());
    out.extend_from_slice(&(stream_id & 0x7fff_ffff).to_be_bytes());
    out.extend_from_slice(&((flags as u32) << 24 | payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

pub fn encode_syn_stream(stream_id: u32, flags: u8, header_block: &[u8]) -> Vec<u8> {
    let mut out = control_head(TYPE_SYN_STREAM, flags, 10 + header_block.len());
    out.extend_from_slice(&stream_id.to_be_bytes());
    out.extend_from_slice(&[0; 6]);
    out.extend_from_slice(header_block);
    out
}

pub fn encode_syn_reply(stream_id: u32, flags: u8, header_block: &[u8]) -> Vec<u8> {
    let mut out = control_head(TYPE_SYN_REPLY, flags, 4 + header_block.len());
    out.extend_from_slice(&stream_id.to_be_bytes());
    out.extend_from_slice(header_block);
    out
}

pub fn encode_rst_stream(stream_id: u32, status: u32) -> Vec<u8> {
    let mut out = control_head(TYPE_RST_STREAM, 0, 8);
    out.extend_from_slice(&stream_id.to_be_bytes());
    out.extend_from_slice(&status.to_be_bytes());
    out
}

pub fn encode_ping(id: u32) -> Vec<u8> {
    let mut out = control_head(TYPE_PING, 0, 4);
    out.extend_from_slice(&id.to_be_bytes());
    out
}

pub fn encode_goaway(last_good_stream_id: u32, status: u32) -> Vec<u8> {
    let mut out = control_head(TYPE_GOAWAY, 0, 8);
    out.extend_from_slice(&last_good_stream_id.to_be_bytes());
    out.extend_from_slice(&status.to_be_bytes());
    out
}

/// The SPDY/3 header compression dictionary (section 2.6.10.1): length-prefixed
/// words, then a run of common values.
fn dictionary() -> Vec<u8> {
    const WORDS: &[&str] = &[
        "options",
        "head",
        "post",
        "put",
        "delete",
        "trace",
        "accept",
        "accept-charset",
        "accept-encoding",
        "accept-language",
        "accept-ranges",
        "age",
        "allow",
        "authorization",
        "cache-control",
        "connection",
        "content-base",
        "content-encoding",
        "content-language",
        "content-length",
        "content-location",
        "content-md5",
        "content-range",
        "content-type",
        "date",
        "etag",
        "expect",
        "expires",
        "from",
        "host",
        "if-match",
        "if-modified-since",
        "if-none-match",
        "if-range",
        "if-unmodified-since",
        "last-modified",
        "location",
        "max-forwards",
        "pragma",
        "proxy-authenticate",
        "proxy-authorization",
        "range",
        "referer",
        "retry-after",
        "server",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "user-agent",
        "vary",
        "via",
        "warning",
        "www-authenticate",
        "method",
        "get",
        "status",
        "200 OK",
        "version",
        "HTTP/1.1",
        "url",
        "public",
        "set-cookie",
        "keep-alive",
        "origin",
    ];
    const TAIL: &str = concat!(
        "100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505",
        "203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request401 Unauthorized",
        "403 Forbidden404 Not Found500 Internal Server Error501 Not Implemented503 Service Unavailable",
        "Jan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMT",
        "chunked,text/html,image/png,image/jpg,image/gif,application/xml,application/xhtml+xml,text/plain,",
        "text/javascript,publicprivatemax-age=gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0."
    );
    let mut out = Vec::with_capacity(1500);
    for w in WORDS {
        out.extend_from_slice(&(w.len() as u32).to_be_bytes());
        out.extend_from_slice(w.as_bytes());
    }
    out.extend_from_slice(TAIL.as_bytes());
    out
}

/// Header name and its values (a SPDY value may hold several, NUL-separated).
pub type HeaderList = Vec<(String, Vec<String>)>;

/// Inflates the header blocks of one direction of one connection, in order.
pub struct HeaderInflater {
    z: Decompress,
}

impl Default for HeaderInflater {
    fn default() -> Self {
        HeaderInflater { z: Decompress::new(true) }
    }
}

impl HeaderInflater {
    pub fn inflate(&mut self, block: &[u8]) -> Result<HeaderList, SpdyError> {
        let mut out = Vec::with_capacity(block.len() * 4 + 64);
        let mut input = block;
        loop {
            if out.capacity() - out.len() < 1024 {
                out.reserve(4096);
            }
            let before_in = self.z.total_in();
            let result = self.z.decompress_vec(input, &mut out, FlushDecompress::Sync);
            let used = (self.z.total_in() - before_in) as usize;
            input = &input[used..];
            match result {
                Ok(Status::StreamEnd) => break,
                Ok(_) if input.is_empty() && out.len() < out.capacity() => break,
                Ok(_) => {}
                Err(e) if e.needs_dictionary().is_some() => {
                    self.z.set_dictionary(&dictionary()).map_err(|e| SpdyError::Inflate(e.to_string()))?;
                }
                Err(e) => return Err(SpdyError::Inflate(e.to_string())),
            }
            if out.len() > MAX_HEADER_BLOCK {
                return Err(SpdyError::HeaderBlockTooLarge);
            }
        }
        decode_header_list(&out)
    }
}

fn decode_header_list(raw: &[u8]) -> Result<HeaderList, SpdyError> {
    fn take<'a>(raw: &mut &'a [u8], n: usize) -> Result<&'a [u8], SpdyError> {
        if raw.len() < n {
            return Err(SpdyError::BadHeaderBlock("truncated"));
        }
        let (head, rest) = raw.split_at(n);
        *raw = rest;
        Ok(head)
    }
    let mut raw = raw;
    let count = be32(take(&mut raw, 4)?) as usize;
    let mut list = Vec::with_capacity(count.min(64));
    for _ in 0..count {
        let n = be32(take(&mut raw, 4)?) as usize;
        let name = std::str::from_utf8(take(&mut raw, n)?).map_err(|_| SpdyError::BadHeaderBlock("name is not UTF-8"))?;
        let n = be32(take(&mut raw, 4)?) as usize;
        let value = take(&mut raw, n)?;
        let values = value.split(|b| *b == 0).map(|v| String::from_utf8_lossy(v).into_owned()).collect();
        list.push((name.to_ascii_lowercase(), values));
    }
    Ok(list)
}

/// Deflates the header blocks of one direction of one connection, in order.
pub struct HeaderDeflater {
    z: Compress,
    primed: bool,
}

impl Default for HeaderDeflater {
    fn default() -> Self {
        HeaderDeflater { z: Compress::new(Compression::default(), true), primed: false }
    }
}

impl HeaderDeflater {
    pub fn deflate(&mut self, headers: &[(&str, &str)]) -> Vec<u8> {
        let mut raw = (headers.len() as u32).to_be_bytes().to_vec();
        for (name, value) in headers {
            raw.extend_from_slice(&(name.len() as u32).to_be_bytes());
            raw.extend_from_slice(name.to_ascii_lowercase().as_bytes());
            raw.extend_from_slice(&(value.len() as u32).to_be_bytes());
            raw.extend_from_slice(value.as_bytes());
        }
        if !self.primed {
            // Setting a dictionary on a fresh deflater cannot fail.
            let _ = self.z.set_dictionary(&dictionary());
            self.primed = true;
        }
        let mut out = Vec::with_capacity(raw.len() + 64);
        let mut input = &raw[..];
        loop {
            out.reserve(256);
            let before = self.z.total_in();
            let _ = self.z.compress_vec(input, &mut out, FlushCompress::Sync);
            input = &input[(self.z.total_in() - before) as usize..];
            if input.is_empty() && out.len() < out.capacity() {
                break;
            }
        }
        out
    }
}

/// The first value of `name` in a header list.
pub fn header<'a>(list: &'a HeaderList, name: &str) -> Option<&'a str> {
    list.iter().find(|(n, _)| n == name).and_then(|(_, v)| v.first()).map(String::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::testutil::for_each_split;

    #[test]
    fn dictionary_matches_spec_checksum() {
        // zlib identifies a preset dictionary by its Adler-32; peers refuse any other.
        let d = dictionary();
        let (mut a, mut b) = (1u32, 0u32);
        for &x in &d {
            a = (a + x as u32) % 65521;
            b = (b + a) % 65521;
        }
        assert_eq!(d.len(), 1423);
        assert_eq!(b << 16 | a, 0xe3c6_a7c2);
    }

    #[test]
    fn headers_round_trip_across_frames() {
        let mut tx = HeaderDeflater::default();
        let mut rx = HeaderInflater::default();
        for i in 0..3 {
            let value = format!("stdout{i}");
            let block = tx.deflate(&[("streamtype", &value), ("port", "8080")]);
            let list = rx.inflate(&block).unwrap();
            assert_eq!(header(&list, "streamtype"), Some(value.as_str()));
            assert_eq!(header(&list, "port"), Some("8080"));
        }
    }

    #[test]
    fn frames_split_everywhere() {
        let mut tx = HeaderDeflater::default();
        let block = tx.deflate(&[("streamtype", "stdout")]);
        let mut stream = encode_syn_stream(7, 0, &block);
        stream.extend(encode_data(0x7fff_fff1, FLAG_FIN, b"hello"));
        stream.extend(encode_ping(9));
        stream.extend(encode_goaway(7, 0));
        let mut want = Vec::new();
        let mut rest = &stream[..];
        while let Some((f, n)) = parse_frame(rest).unwrap() {
            want.push(format!("{f:?}"));
            rest = &rest[n..];
        }
        assert_eq!(want.len(), 4);
        assert!(want[1].contains("stream_id: 2147483633"), "31-bit ids survive: {}", want[1]);
        for_each_split(&stream, |pieces| {
            let mut buf = Vec::new();
            let mut got = Vec::new();
            for p in pieces {
                buf.extend_from_slice(p);
                while let Some((f, n)) = parse_frame(&buf).unwrap() {
                    got.push(format!("{f:?}"));
                    buf.drain(..n);
                }
            }
            assert_eq!(got, want);
        });
    }

    #[test]
    fn heads_say_enough_to_stream_a_payload() {
        let data = encode_data(0x7fff_fff1, FLAG_FIN, b"hello");
        let head = parse_head(&data[..FRAME_HEAD_LEN]).unwrap().unwrap();
        assert_eq!(head, FrameHead { kind: FrameKind::Data { stream_id: 0x7fff_fff1 }, flags: FLAG_FIN, payload_len: 5 });
        assert!(head.fin());
        let ping = encode_ping(9);
        assert_eq!(parse_head(&ping).unwrap(), Some(FrameHead { kind: FrameKind::Control(TYPE_PING), flags: 0, payload_len: 4 }));
        assert_eq!(parse_head(&ping[..FRAME_HEAD_LEN - 1]).unwrap(), None);
        assert_eq!(parse_payload(head, b"hel").unwrap(), Frame::Data { stream_id: 0x7fff_fff1, flags: FLAG_FIN, payload: b"hel" }, "data payloads may come in pieces");
        let short = FrameHead { kind: FrameKind::Control(TYPE_GOAWAY), flags: 0, payload_len: 8 };
        assert_eq!(parse_payload(short, &[0; 4]).unwrap_err(), SpdyError::ShortControlFrame { kind: TYPE_GOAWAY, len: 4 }, "what was given counts, not what the head said");
    }

    #[test]
    fn frame_errors() {
        assert_eq!(parse_frame(&[0x80, 2, 0, 1, 0, 0, 0, 0]).unwrap_err(), SpdyError::UnsupportedVersion(2));
        assert_eq!(parse_frame(&[0x80, 3, 0, 3, 0, 0, 0, 4, 0, 0, 0, 1]).unwrap_err(), SpdyError::ShortControlFrame { kind: 3, len: 4 });
        assert_eq!(decode_header_list(&[0, 0, 0, 1, 0, 0, 0, 9]).unwrap_err(), SpdyError::BadHeaderBlock("truncated"));
    }
}
