//! WebSocket framing (RFC 6455 section 5), no I/O.
//!
//! ```text
//!  0               1               2               3
//! |F|R|R|R| opcode|M| len (7)     | ext len (16 or 64, if len is 126 or 127)
//! | masking key (32, if M)        | payload ...
//! ```

use std::fmt;

pub const OP_CONTINUATION: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xa;

/// Larger frames are refused: kubectl writes at most 32 KiB per message, and this
/// bounds what one peer can make the parser buffer.
pub const MAX_PAYLOAD: u64 = 64 * 1024 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHead {
    pub fin: bool,
    pub opcode: u8,
    pub mask: Option<[u8; 4]>,
    pub payload_len: u64,
    /// Bytes taken by the head itself.
    pub head_len: usize,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WsError {
    ReservedBits(u8),
    UnknownOpcode(u8),
    FragmentedControl(u8),
    ControlTooLong(u64),
    PayloadTooLarge(u64),
}

impl fmt::Display for WsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WsError::ReservedBits(b) => write!(f, "expected reserved bits clear, found 0x{b:02x}"),
            WsError::UnknownOpcode(o) => write!(f, "unknown WebSocket opcode 0x{o:x}"),
            WsError::FragmentedControl(o) => write!(f, "control frame 0x{o:x} is fragmented"),
            WsError::ControlTooLong(n) => write!(f, "control frame payload of {n} bytes (max 125)"),
            WsError::PayloadTooLarge(n) => write!(f, "frame payload of {n} bytes exceeds {MAX_PAYLOAD}"),
        }
    }
}

impl std::error::Error for WsError {}

/// Parses one frame head from the front of `buf`.
/// Returns `Ok(None)` when more bytes are needed; nothing is consumed then.
pub fn parse_head(buf: &[u8]) -> Result<Option<FrameHead>, WsError> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let (b0, b1) = (buf[0], buf[1]);
    if b0 & 0x70 != 0 {
        return Err(WsError::ReservedBits(b0 & 0x70));
    }
    let fin = b0 & 0x80 != 0;
    let opcode = b0 & 0x0f;
    match opcode {
        OP_CONTINUATION | OP_TEXT | OP_BINARY => {}
        OP_CLOSE | OP_PING | OP_PONG if !fin => return Err(WsError::FragmentedControl(opcode)),
        OP_CLOSE | OP_PING | OP_PONG => {}
        _ => return Err(WsError::UnknownOpcode(opcode)),
    }
    let masked = b1 & 0x80 != 0;
    let (payload_len, mut at) = match b1 & 0x7f {
        126 => {
            if buf.len() < 4 {
                return Ok(None);
            }
            (u16::from_be_bytes([buf[2], buf[3]]) as u64, 4)
        }
        127 => {
            if buf.len() < 10 {
                return Ok(None);
            }
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[2..10]);
            (u64::from_be_bytes(b), 10)
        }
        n => (n as u64, 2),
    };
    if opcode >= OP_CLOSE && payload_len > 125 {
        return Err(WsError::ControlTooLong(payload_len));
    }
    if payload_len > MAX_PAYLOAD {
        return Err(WsError::PayloadTooLarge(payload_len));
    }
    let mask = if masked {
        if buf.len() < at + 4 {
            return Ok(None);
        }
        let key = [buf[at], buf[at + 1], buf[at + 2], buf[at + 3]];
        at += 4;
        Some(key)
    } else {
        None
    };
    Ok(Some(FrameHead { fin, opcode, mask, payload_len, head_len: at }))
}

/// A whole frame with its payload unmasked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub fin: bool,
    pub opcode: u8,
    pub payload: Vec<u8>,
}

/// Parses one whole frame from the front of `buf`, unmasking a copy of its payload.
/// Returns `Ok(None)` when more bytes are needed; nothing is consumed then.
pub fn parse_frame(buf: &[u8]) -> Result<Option<(Frame, usize)>, WsError> {
    let Some(head) = parse_head(buf)? else { return Ok(None) };
    let total = head.head_len as u64 + head.payload_len;
    if (buf.len() as u64) < total {
        return Ok(None);
    }
    let mut payload = buf[head.head_len..total as usize].to_vec();
    if let Some(key) = head.mask {
        apply_mask(&mut payload, key, 0);
    }
    Ok(Some((Frame { fin: head.fin, opcode: head.opcode, payload }, total as usize)))
}

/// XORs `data` with `key`, where `data` starts `offset` bytes into the payload.
pub fn apply_mask(data: &mut [u8], key: [u8; 4], offset: usize) {
    for (i, b) in data.iter_mut().enumerate() {
        *b ^= key[(offset + i) % 4];
    }
}

/// Encodes one frame; `mask` is required from clients and forbidden from servers.
pub fn encode_frame(fin: bool, opcode: u8, mask: Option<[u8; 4]>, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 14);
    out.push(if fin { 0x80 } else { 0 } | opcode);
    let m = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.push(m | n as u8),
        n if n <= 0xffff => {
            out.push(m | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(m | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    let start = out.len();
    if let Some(key) = mask {
        out.extend_from_slice(&key);
    }
    let body = out.len();
    out.extend_from_slice(payload);
    if let Some(key) = mask {
        apply_mask(&mut out[body..], key, 0);
    }
    debug_assert!(start <= body);
    out
}

/// The close frame payload: status code then a UTF-8 reason.
pub fn close_payload(code: u16, reason: &str) -> Vec<u8> {
    let mut p = code.to_be_bytes().to_vec();
    p.extend_from_slice(&reason.as_bytes()[..reason.len().min(123)]);
    p
}

/// A whole close frame; `mask` as for [`encode_frame`].
pub fn close_frame(code: u16, reason: &str, mask: Option<[u8; 4]>) -> Vec<u8> {
    encode_frame(true, OP_CLOSE, mask, &close_payload(code, reason))
}

/// The reason a close frame's payload gives, after its status code.
pub fn close_reason(payload: &[u8]) -> String {
    String::from_utf8_lossy(payload.get(2..).unwrap_or_default()).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::testutil::for_each_split;

    #[test]
    fn lengths_and_masks_split_everywhere() {
        let big = vec![7u8; 70_000];
        let mid = vec![3u8; 300];
        let mut stream = encode_frame(true, OP_BINARY, Some([1, 2, 3, 4]), b"\x01hello");
        stream.extend(encode_frame(false, OP_BINARY, None, &mid));
        stream.extend(encode_frame(true, OP_PING, Some([9, 9, 9, 9]), b"p"));
        stream.extend(encode_frame(true, OP_CONTINUATION, None, &big));
        let want = vec![
            Frame { fin: true, opcode: OP_BINARY, payload: b"\x01hello".to_vec() },
            Frame { fin: false, opcode: OP_BINARY, payload: mid.clone() },
            Frame { fin: true, opcode: OP_PING, payload: b"p".to_vec() },
            Frame { fin: true, opcode: OP_CONTINUATION, payload: big.clone() },
        ];
        for_each_split(&stream, |pieces| {
            let mut buf = Vec::new();
            let mut got = Vec::new();
            for p in pieces {
                buf.extend_from_slice(p);
                while let Some((f, n)) = parse_frame(&buf).unwrap() {
                    got.push(f);
                    buf.drain(..n);
                }
            }
            assert_eq!(got, want);
        });
    }

    #[test]
    fn head_errors() {
        let cases: &[(&str, &[u8], WsError)] = &[
            ("rsv", &[0xc2, 0], WsError::ReservedBits(0x40)),
            ("opcode", &[0x83, 0], WsError::UnknownOpcode(3)),
            ("fragmented ping", &[0x09, 0], WsError::FragmentedControl(9)),
            ("long close", &[0x88, 126, 0, 200], WsError::ControlTooLong(200)),
            ("huge", &[0x82, 127, 0, 0, 0, 1, 0, 0, 0, 0], WsError::PayloadTooLarge(1 << 32)),
        ];
        for (name, raw, want) in cases {
            assert_eq!(parse_head(raw).unwrap_err(), *want, "{name}");
        }
    }
}
