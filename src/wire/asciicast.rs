//! asciicast v2 (https://docs.asciinema.org/manual/asciicast/v2/): a JSON header line,
//! then one JSON array per event: `[seconds, code, data]`. No I/O.
//!
//! ```text
//! {"version": 2, "width": 80, "height": 24, "timestamp": 1764110000, "kubetape": {...}}
//! [0.012345, "o", "stdout text"]
//! [0.013000, "e", "stderr text"]            kubetape: stderr (players show "o" only)
//! [0.020000, "b", "stdout:H4sIAAAA..."]     kubetape: bytes that are not UTF-8, base64
//! [0.500000, "r", "120x40"]                 terminal resize, COLSxROWS
//! [3.100000, "m", "exit:3"]                 marker: the command's exit status
//! ```
//!
//! Output is UTF-8 text where it is text: a sequence split across writes is held back
//! until it completes. A chunk that is not UTF-8 goes whole into a `"b"` event, base64,
//! tagged with its stream, so a stream (a `kubectl cp` tar) is recovered bit-exact by
//! concatenating, in order, its text events' UTF-8 bytes and its `"b"` events' bytes.

use serde_json::Value;

use crate::wire::base64;

pub const STDOUT: u8 = 1;
pub const STDERR: u8 = 2;

/// One event line, without its trailing newline.
pub fn event_line(seconds: f64, code: &str, data: &str) -> String {
    let data = Value::String(data.to_string()).to_string();
    format!("[{seconds:.6}, \"{code}\", {data}]")
}

/// Splits output into text and binary events, holding back an incomplete UTF-8
/// sequence at the end of a chunk until the next chunk completes it.
#[derive(Default)]
pub struct Utf8Splitter {
    carry: Vec<u8>,
}

/// A piece of output: text, or bytes that are not valid UTF-8.
#[derive(Debug, PartialEq, Eq)]
pub enum Piece {
    Text(String),
    Binary(Vec<u8>),
}

impl Utf8Splitter {
    /// One chunk of output as at most one piece: text when it is UTF-8 (an incomplete
    /// sequence at its end waits for the next chunk), otherwise the whole chunk as
    /// bytes. Whole chunks keep binary streams (a tar) compact: splitting them into
    /// their accidental text runs would cost an event per run.
    pub fn push(&mut self, data: &[u8]) -> Vec<Piece> {
        let mut buf = std::mem::take(&mut self.carry);
        buf.extend_from_slice(data);
        let text_end = match std::str::from_utf8(&buf) {
            Ok(_) => buf.len(),
            // Valid up to an incomplete sequence at the very end: carry it.
            Err(e) if e.error_len().is_none() => e.valid_up_to(),
            Err(_) => return vec![Piece::Binary(buf)],
        };
        self.carry = buf.split_off(text_end);
        if buf.is_empty() {
            return Vec::new();
        }
        match String::from_utf8(buf) {
            Ok(text) => vec![Piece::Text(text)],
            Err(e) => vec![Piece::Binary(e.into_bytes())],
        }
    }

    /// Whatever is held back, as bytes: the stream ended mid-sequence.
    pub fn finish(&mut self) -> Option<Piece> {
        (!self.carry.is_empty()).then(|| Piece::Binary(std::mem::take(&mut self.carry)))
    }
}

/// The event lines for one piece of output on `stream`.
pub fn output_line(seconds: f64, stream: u8, piece: &Piece) -> String {
    match piece {
        Piece::Text(t) => event_line(seconds, if stream == STDERR { "e" } else { "o" }, t),
        Piece::Binary(b) => {
            let tag = if stream == STDERR { "stderr" } else { "stdout" };
            event_line(seconds, "b", &format!("{tag}:{}", base64::encode(b)))
        }
    }
}

/// Recovers one stream's bytes from a recording's event lines, bit-exact.
pub fn recover_stream(cast: &str, stream: u8) -> Result<Vec<u8>, String> {
    let (text_code, tag) = if stream == STDERR { ("e", "stderr:") } else { ("o", "stdout:") };
    let mut out = Vec::new();
    for (i, line) in cast.lines().enumerate().skip(1) {
        if line.trim().is_empty() {
            continue;
        }
        let ev: Value = serde_json::from_str(line).map_err(|e| format!("line {}: {e}", i + 1))?;
        let (code, data) = (ev[1].as_str().unwrap_or(""), ev[2].as_str().unwrap_or(""));
        if code == text_code {
            out.extend_from_slice(data.as_bytes());
        } else if let Some(b64) = data.strip_prefix(tag).filter(|_| code == "b") {
            out.extend(base64::decode(b64).ok_or_else(|| format!("line {}: bad base64", i + 1))?);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::testutil::for_each_split;

    fn run(pieces: &[&[u8]]) -> Vec<u8> {
        let mut s = Utf8Splitter::default();
        let mut lines = vec!["{}".to_string()];
        for p in pieces {
            for piece in s.push(p) {
                if let Piece::Text(t) = &piece {
                    assert!(!t.contains('\u{fffd}'), "no replacement characters: {t:?}");
                }
                lines.push(output_line(0.0, STDOUT, &piece));
            }
        }
        if let Some(p) = s.finish() {
            lines.push(output_line(0.0, STDOUT, &p));
        }
        recover_stream(&lines.join("\n"), STDOUT).unwrap()
    }

    #[test]
    fn text_and_binary_recover_bit_exact_at_any_split() {
        let mut stream = "héllo → wörld ✓ 😀\n".as_bytes().to_vec();
        stream.extend_from_slice(&[0xff, 0xfe, 0x00, 0xc3]); // invalid, NUL, and a lone lead byte
        stream.extend_from_slice("é end".as_bytes());
        stream.extend_from_slice(&[0xf0, 0x9f]); // truncated at the very end
        for_each_split(&stream, |pieces| assert_eq!(run(pieces), stream));
    }

    #[test]
    fn split_sequences_stay_whole() {
        let mut s = Utf8Splitter::default();
        let euro = "€".as_bytes();
        assert_eq!(s.push(&euro[..1]), vec![]);
        assert_eq!(s.push(&euro[1..2]), vec![]);
        assert_eq!(s.push(&euro[2..]), vec![Piece::Text("€".into())]);
        assert_eq!(s.finish(), None);
    }

    #[test]
    fn random_binary_round_trips_compactly() {
        let mut data = vec![0u8; 64 * 1024];
        crate::net::random::fill(&mut data);
        assert_eq!(run(&[&data[..1000], &data[1000..]]), data);
        let mut s = Utf8Splitter::default();
        let pieces = s.push(&data);
        assert_eq!(pieces.len(), 1, "one event per binary chunk");
        let line = output_line(0.0, STDOUT, &pieces[0]);
        assert!(line.len() < data.len() * 14 / 10, "base64 overhead only: {} for {}", line.len(), data.len());
    }

    #[test]
    fn event_lines_are_asciicast() {
        assert_eq!(event_line(1.5, "o", "a\"b\n"), r#"[1.500000, "o", "a\"b\n"]"#);
        assert_eq!(event_line(0.0, "r", "120x40"), r#"[0.000000, "r", "120x40"]"#);
    }
}
