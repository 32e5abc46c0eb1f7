//! asciicast v2 (https://docs.asciinema.org/manual/asciicast/v2/): a JSON header line,
//! then one JSON array per event: `[seconds, code, data]`. No I/O.
//!
//! ```text
//! {"version": 2, "width": 80, "height": 24, "timestamp": 1764110000, "kubetape": {...}}
//! [0.012345, "o", "stdout text"]
//! [0.013000, "e", "stderr text"]            kubetape: stderr (players show "o" only)
//! [0.020000, "v", "stdout:Qf9CDQo="]        kubetape: the exact bytes of the next "o" ...
//! [0.020000, "o", "A\ufffdB\r\n"]           ... which shows them, invalid UTF-8 as U+FFFD
//! [0.500000, "r", "120x40"]                 terminal resize, COLSxROWS
//! [3.100000, "m", "exit:3"]                 marker: the command's exit status
//! ```
//!
//! Every byte of output is in a text event (`o` stdout, `e` stderr), so every player
//! shows it: a chunk that is not UTF-8 is shown as `String::from_utf8_lossy` shows it
//! (each maximal invalid sequence one U+FFFD), and its exact bytes go, base64, into a
//! `v` (verbatim) event on the line before, tagged with the stream. A stream (a
//! `kubectl cp` tar) is recovered bit-exact by concatenating, in order, its text events'
//! UTF-8 bytes, a `v` event's bytes standing in for the text event after it. A UTF-8
//! sequence split across writes is held back until it completes, so it never shows as
//! U+FFFD. Recordings made before `v` existed carry a chunk that is not UTF-8 in a `b`
//! event instead (`stdout:<base64>`, in no text event); they are still read.

use std::borrow::Cow;

use serde_json::Value;

use crate::wire::base64;

pub const STDOUT: u8 = 1;
pub const STDERR: u8 = 2;

/// Sets the terminal's newline mode (LNM), in which a line feed also returns the
/// carriage. A session without a terminal writes bare `\n` (no pty turned it into
/// `\r\n`), so its output is shown in this mode, as a terminal running it would.
pub const NEWLINE_MODE: &str = "\x1b[20h";

/// Whether a recording's session had no terminal, from its header's `kubetape` object.
pub fn without_terminal(header: &Value) -> bool {
    header["kubetape"]["tty"] == Value::Bool(false)
}

/// The exact bytes of the text event after it, which shows them lossily. Not a code
/// asciicast v2 or v3 defines (v3 took `x` for the exit status), so players skip it.
const VERBATIM: &str = "v";
/// Recordings before `v`: a chunk that is not UTF-8, whole, in no text event.
const LEGACY_BINARY: &str = "b";
/// The longest UTF-8 sequence: an incomplete one at a chunk's end is shorter.
const MAX_UTF8_LEN: usize = 4;

/// One event line, without its trailing newline.
pub fn event_line(seconds: f64, code: &str, data: &str) -> String {
    let data = Value::String(data.to_string()).to_string();
    format!("[{seconds:.6}, \"{code}\", {data}]")
}

/// The text event code and the `v`/`b` tag of a stream.
fn stream_names(stream: u8) -> (&'static str, &'static str) {
    if stream == STDERR {
        ("e", "stderr")
    } else {
        ("o", "stdout")
    }
}

/// Cuts output into pieces at UTF-8 sequence boundaries, holding back an incomplete
/// sequence at the end of a chunk until the next chunk completes it.
#[derive(Default)]
pub struct Utf8Splitter {
    carry: Vec<u8>,
}

/// A piece of output: its bytes and the text that shows them.
#[derive(Debug, PartialEq, Eq)]
pub enum Piece {
    /// Valid UTF-8: the text is the bytes.
    Text(String),
    /// Not valid UTF-8: the exact bytes, and the text players show for them.
    Lossy { bytes: Vec<u8>, text: String },
}

impl Piece {
    fn of(bytes: Vec<u8>) -> Option<Piece> {
        if bytes.is_empty() {
            return None;
        }
        Some(match String::from_utf8(bytes) {
            Ok(text) => Piece::Text(text),
            Err(e) => {
                let bytes = e.into_bytes();
                Piece::Lossy { text: String::from_utf8_lossy(&bytes).into_owned(), bytes }
            }
        })
    }

    pub fn bytes(&self) -> &[u8] {
        match self {
            Piece::Text(t) => t.as_bytes(),
            Piece::Lossy { bytes, .. } => bytes,
        }
    }

    pub fn text(&self) -> &str {
        match self {
            Piece::Text(t) | Piece::Lossy { text: t, .. } => t,
        }
    }
}

/// The length of an incomplete UTF-8 sequence at the end of `b` (0 when there is
/// none): a lead byte in the last three with only continuation bytes after it, fewer
/// than it announces, all of them allowed after it. Bytes before a lead byte never
/// reach into its sequence, so cutting there decodes as the whole stream does.
fn incomplete_tail(b: &[u8]) -> usize {
    let window = b.len().saturating_sub(MAX_UTF8_LEN - 1);
    let Some(lead) = (window..b.len()).rev().find(|&i| b[i] & 0xC0 != 0x80) else {
        return 0;
    };
    match std::str::from_utf8(&b[lead..]) {
        Err(e) if e.valid_up_to() == 0 && e.error_len().is_none() => b.len() - lead,
        _ => 0,
    }
}

impl Utf8Splitter {
    /// One chunk of output as at most one piece (an incomplete sequence at its end
    /// waits for the next chunk). A chunk that is not UTF-8 stays one piece, so a
    /// binary stream (a tar) costs two events a chunk, not one per accidental text run.
    pub fn push(&mut self, data: &[u8]) -> Option<Piece> {
        let mut buf = std::mem::take(&mut self.carry);
        buf.extend_from_slice(data);
        self.carry = buf.split_off(buf.len() - incomplete_tail(&buf));
        Piece::of(buf)
    }

    /// Whatever is held back: the stream ended mid-sequence (shown as one U+FFFD).
    pub fn finish(&mut self) -> Option<Piece> {
        Piece::of(std::mem::take(&mut self.carry))
    }
}

/// The event lines for one piece of output on `stream`, each newline-terminated: the
/// text event, after a `v` event with the exact bytes when the text shows them lossily.
pub fn output_lines(seconds: f64, stream: u8, piece: &Piece) -> String {
    let (code, tag) = stream_names(stream);
    let text = event_line(seconds, code, piece.text());
    match piece {
        Piece::Text(_) => format!("{text}\n"),
        Piece::Lossy { bytes, .. } => format!("{}\n{text}\n", event_line(seconds, VERBATIM, &format!("{tag}:{}", base64::encode(bytes)))),
    }
}

/// One event of a recording: its line number (from 1, the header's), time (seconds
/// from the start), code and data.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    pub line: usize,
    pub seconds: f64,
    pub code: String,
    pub data: String,
}

/// A recording read from its bytes.
#[derive(Debug)]
pub struct Recording {
    pub header: Value,
    pub events: Vec<Event>,
    /// Bytes after the last newline: a line being written now, or cut off by a crash.
    /// They are not read.
    pub torn: usize,
}

/// Reads a recording: the header must be an asciicast v2 header, every whole line
/// after it an event (blank lines are skipped); a last line without its newline is
/// left out and counted in `torn`.
pub fn parse(cast: &[u8]) -> Result<Recording, String> {
    let whole = cast.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    let (first, rest) = cast[..whole].split_at(cast.iter().position(|b| *b == b'\n').map_or(0, |i| i + 1));
    let Some(header) = serde_json::from_slice::<Value>(first).ok().filter(|h| h.is_object() && h["version"] == 2) else {
        return Err("not an asciicast v2 recording: its first line is not a header with \"version\": 2".into());
    };
    let rest = std::str::from_utf8(rest).map_err(|e| format!("line {}: not UTF-8", 2 + rest[..e.valid_up_to()].iter().filter(|b| **b == b'\n').count()))?;
    Ok(Recording { header, events: events(rest.lines().enumerate().map(|(i, l)| (i + 1, l)))?, torn: cast.len() - whole })
}

/// The events of numbered lines (from 0), blank lines skipped.
fn events<'a>(lines: impl Iterator<Item = (usize, &'a str)>) -> Result<Vec<Event>, String> {
    let mut out = Vec::new();
    for (i, l) in lines.filter(|(_, l)| !l.trim().is_empty()) {
        let line = i + 1;
        let ev: Value = serde_json::from_str(l).map_err(|e| format!("line {line}: {e}"))?;
        match (ev[0].as_f64(), ev[1].as_str(), ev[2].as_str()) {
            (Some(seconds), Some(code), Some(data)) if ev.as_array().map(Vec::len) == Some(3) => out.push(Event { line, seconds, code: code.into(), data: data.into() }),
            _ => return Err(format!("line {line}: not an event ([seconds, code, data])")),
        }
    }
    Ok(out)
}

/// One piece of a recording's output: when, its stream, its exact bytes, the text shown.
#[derive(Debug, PartialEq)]
pub struct Output<'a> {
    pub at: f64,
    pub stream: u8,
    pub bytes: Cow<'a, [u8]>,
    pub text: Cow<'a, str>,
}

/// A recording's event, with output resolved.
#[derive(Debug, PartialEq)]
pub enum Item<'a> {
    Output(Output<'a>),
    /// Anything else: resizes, markers, codes of other tools.
    Other(&'a Event),
}

/// What a recording's events output, in order: a `v` event and the text event after it
/// are one output (the text must show its bytes, or the recording is refused as
/// inconsistent), a legacy `b` event is shown lossily.
pub fn items(events: &[Event]) -> Result<Vec<Item<'_>>, String> {
    let mut out = Vec::new();
    // Per stream (stdout, stderr): a `v` event's line and bytes, waiting for the text.
    let mut verbatim: [Option<(usize, Vec<u8>)>; 2] = [None, None];
    for ev in events {
        let Some(stream) = [STDOUT, STDERR].into_iter().find(|s| ev.code == stream_names(*s).0 || tagged(ev, *s).is_some()) else {
            out.push(Item::Other(ev));
            continue;
        };
        let waiting = &mut verbatim[usize::from(stream == STDERR)];
        let Some(b64) = tagged(ev, stream) else {
            // A text event, standing for itself or showing the bytes waiting for it.
            let bytes = match waiting.take() {
                Some((line, bytes)) if String::from_utf8_lossy(&bytes) != ev.data => {
                    return Err(format!("line {}: the text does not show the verbatim bytes on line {line}", ev.line))
                }
                Some((_, bytes)) => Cow::Owned(bytes),
                None => Cow::Borrowed(ev.data.as_bytes()),
            };
            out.push(Item::Output(Output { at: ev.seconds, stream, bytes, text: Cow::Borrowed(&ev.data) }));
            continue;
        };
        if let Some((line, _)) = waiting {
            return Err(format!("line {}: the verbatim bytes on line {line} are not followed by their text", ev.line));
        }
        let bytes = base64::decode(b64).ok_or_else(|| format!("line {}: bad base64", ev.line))?;
        if ev.code == VERBATIM {
            *waiting = Some((ev.line, bytes));
        } else {
            out.push(lossy(ev.seconds, stream, bytes));
        }
    }
    // A recording cut between a `v` event and its text: the bytes were output all the same.
    let mut cut: Vec<(u8, (usize, Vec<u8>))> = [STDOUT, STDERR].into_iter().zip(verbatim).filter_map(|(s, v)| Some((s, v?))).collect();
    cut.sort_by_key(|(_, (line, _))| *line);
    let last = events.last().map_or(0.0, |e| e.seconds);
    out.extend(cut.into_iter().map(|(stream, (_, bytes))| lossy(last, stream, bytes)));
    Ok(out)
}

/// Bytes no text event shows, shown as `String::from_utf8_lossy` shows them.
fn lossy(at: f64, stream: u8, bytes: Vec<u8>) -> Item<'static> {
    let text = Cow::Owned(String::from_utf8_lossy(&bytes).into_owned());
    Item::Output(Output { at, stream, bytes: Cow::Owned(bytes), text })
}

/// The base64 of a `v` or `b` event of `stream`.
fn tagged(ev: &Event, stream: u8) -> Option<&str> {
    let tag = stream_names(stream).1;
    [VERBATIM, LEGACY_BINARY].contains(&ev.code.as_str()).then(|| ev.data.strip_prefix(tag)?.strip_prefix(':')).flatten()
}

/// One stream's exact bytes from resolved events.
pub fn stream_bytes(items: &[Item<'_>], stream: u8) -> Vec<u8> {
    let mut out = Vec::new();
    for item in items {
        if let Item::Output(o) = item {
            if o.stream == stream {
                out.extend_from_slice(&o.bytes);
            }
        }
    }
    out
}

/// Recovers one stream's bytes from a recording's lines (the first, the header, is
/// not read), bit-exact.
pub fn recover_stream(cast: &str, stream: u8) -> Result<Vec<u8>, String> {
    let events = events(cast.lines().enumerate().skip(1))?;
    Ok(stream_bytes(&items(&events)?, stream))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::testutil::for_each_split;

    const HEADER: &str = "{\"version\": 2}\n";

    /// The recording of `pieces` written on stdout, and the text of its `o` events.
    fn record(pieces: &[&[u8]]) -> (String, String) {
        let mut s = Utf8Splitter::default();
        let mut cast = HEADER.to_string();
        let mut made: Vec<Piece> = pieces.iter().filter_map(|p| s.push(p)).collect();
        made.extend(s.finish());
        for piece in &made {
            cast.push_str(&output_lines(0.0, STDOUT, piece));
        }
        let rec = parse(cast.as_bytes()).unwrap();
        let shown = rec.events.iter().filter(|e| e.code == "o").map(|e| e.data.as_str()).collect();
        (cast, shown)
    }

    fn check_any_split(stream: &[u8]) {
        let lossy = String::from_utf8_lossy(stream);
        for_each_split(stream, |pieces| {
            let (cast, shown) = record(pieces);
            assert_eq!(shown, lossy, "the o events show what from_utf8_lossy shows, for {pieces:?}");
            assert_eq!(recover_stream(&cast, STDOUT).unwrap(), stream, "bit-exact for {pieces:?}");
        });
    }

    #[test]
    fn every_byte_value_is_shown_and_recovered_at_any_split() {
        let every: Vec<u8> = (0..=255).collect();
        check_any_split(&every);
        // Text, invalid bytes between sequences, and sequences cut off by the end.
        let mut stream = "héllo → wörld ✓ 😀\n".as_bytes().to_vec();
        stream.extend_from_slice(&[0xff, 0xe2, 0x82, 0xac, 0xfe, 0x00, 0xc3]); // invalid, €, invalid, NUL, a lone lead byte
        stream.extend_from_slice("é \x1b[31mred\x1b[0m".as_bytes());
        stream.extend_from_slice(&[0xed, 0xa0, 0x80, 0xf0, 0x9f]); // a surrogate, then 😀 cut off at the very end
        check_any_split(&stream);
    }

    #[test]
    fn split_sequences_stay_whole_and_valid_text_is_one_event() {
        let mut s = Utf8Splitter::default();
        let euro = "€".as_bytes();
        assert_eq!(s.push(&euro[..1]), None);
        assert_eq!(s.push(&euro[1..2]), None);
        assert_eq!(s.push(&euro[2..]), Some(Piece::Text("€".into())));
        assert_eq!(s.finish(), None);
        // Held back even after an invalid byte, so the € is not shown as U+FFFD.
        assert_eq!(s.push(b"\xff\xe2\x82"), Some(Piece::Lossy { bytes: vec![0xff], text: "\u{fffd}".into() }));
        assert_eq!(s.push(b"\xac"), Some(Piece::Text("€".into())));
        assert_eq!(output_lines(1.0, STDERR, &Piece::Text("x".into())), "[1.000000, \"e\", \"x\"]\n");
    }

    #[test]
    fn a_chunk_that_is_not_utf8_is_shown_with_its_escapes_and_kept_exact() {
        let mut s = Utf8Splitter::default();
        let piece = s.push(b"A\xffB\r\n\x1b[31mred\x1b[0m\r\n").unwrap();
        assert_eq!(
            output_lines(0.5, STDOUT, &piece),
            "[0.500000, \"v\", \"stdout:Qf9CDQobWzMxbXJlZBtbMG0NCg==\"]\n[0.500000, \"o\", \"A\u{fffd}B\\r\\n\\u001b[31mred\\u001b[0m\\r\\n\"]\n"
        );
    }

    #[test]
    fn random_binary_round_trips_in_two_events_a_chunk() {
        let mut data = vec![0u8; 64 * 1024];
        crate::net::random::fill(&mut data);
        let (cast, shown) = record(&[&data[..1000], &data[1000..]]);
        assert_eq!(recover_stream(&cast, STDOUT).unwrap(), data);
        assert_eq!(shown, String::from_utf8_lossy(&data));
        let mut s = Utf8Splitter::default();
        let lines = output_lines(0.0, STDOUT, &s.push(&data).unwrap());
        assert_eq!(lines.lines().count(), 2, "a v event and its o event");
        // Base64 (4/3), and the text: U+FFFD (3 bytes) for most bytes over 0x7f, \u00XX (6) for most controls.
        assert!(lines.len() < data.len() * 4, "{} bytes for {}", lines.len(), data.len());
    }

    #[test]
    fn legacy_binary_events_are_read_and_shown() {
        let cast = format!("{HEADER}[0.1, \"o\", \"a\"]\n[0.2, \"b\", \"stdout:{}\"]\n[0.3, \"e\", \"err\"]\n", base64::encode(b"\xffZ"));
        assert_eq!(recover_stream(&cast, STDOUT).unwrap(), b"a\xffZ");
        assert_eq!(recover_stream(&cast, STDERR).unwrap(), b"err");
        let rec = parse(cast.as_bytes()).unwrap();
        let shown: Vec<String> = items(&rec.events).unwrap().into_iter().filter_map(|i| if let Item::Output(o) = i { Some(o.text.into_owned()) } else { None }).collect();
        assert_eq!(shown, ["a", "\u{fffd}Z", "err"]);
    }

    #[test]
    fn inconsistent_verbatim_events_are_refused_and_a_cut_pair_keeps_its_bytes() {
        let v = |b: &[u8]| format!("[0.1, \"v\", \"stdout:{}\"]\n", base64::encode(b));
        let lied = format!("{HEADER}{}[0.1, \"o\", \"harmless\"]\n", v(b"rm -rf \xff"));
        assert_eq!(recover_stream(&lied, STDOUT).unwrap_err(), "line 3: the text does not show the verbatim bytes on line 2");
        let unpaired = format!("{HEADER}{}[0.1, \"m\", \"x\"]\n{}", v(b"\xff"), v(b"\xfe"));
        assert_eq!(recover_stream(&unpaired, STDOUT).unwrap_err(), "line 4: the verbatim bytes on line 2 are not followed by their text");
        let cut = format!("{HEADER}[0.1, \"e\", \"e\"]\n{}", v(b"\xff"));
        assert_eq!(recover_stream(&cut, STDOUT).unwrap(), b"\xff");
        assert_eq!(recover_stream(&format!("{HEADER}[0.1, \"v\", \"stdout:!!\"]\n"), STDOUT).unwrap_err(), "line 2: bad base64");
    }

    #[test]
    fn parse_wants_a_header_and_events_and_leaves_a_torn_line_out() {
        let rec = parse(format!("{HEADER}[0.1, \"o\", \"a\"]\n\n[0.2, \"o\", \"b").as_bytes()).unwrap();
        assert_eq!(rec.events, vec![Event { line: 2, seconds: 0.1, code: "o".into(), data: "a".into() }]);
        assert_eq!(rec.torn, "[0.2, \"o\", \"b".len());
        let bad: [(&[u8], &str); 9] = [
            (b"", "not an asciicast v2 recording"),
            (b"{\"version\": 1}\n", "not an asciicast v2 recording"),
            (b"[1, \"o\", \"x\"]\n", "not an asciicast v2 recording"),
            (b"{\"version\": 2}", "not an asciicast v2 recording"),
            (b"{\"version\": 2}\n{}\n", "line 2: not an event"),
            (b"{\"version\": 2}\n[1, \"o\"]\n", "line 2: not an event"),
            (b"{\"version\": 2}\n[1, \"o\", \"x\", 4]\n", "line 2: not an event"),
            (b"{\"version\": 2}\n[1, \"o\", \"x\"]\n\n[1, \"o\", \"\xff\"]\n", "line 4: not UTF-8"),
            (b"\xff\xfe\n\x00\n", "not an asciicast v2 recording"),
        ];
        for (cast, why) in bad {
            let e = parse(cast).unwrap_err();
            assert!(e.starts_with(why), "{:?}: {e}", String::from_utf8_lossy(cast));
        }
    }

    #[test]
    fn event_lines_are_asciicast() {
        assert_eq!(event_line(1.5, "o", "a\"b\n"), r#"[1.500000, "o", "a\"b\n"]"#);
        assert_eq!(event_line(0.0, "r", "120x40"), r#"[0.000000, "r", "120x40"]"#);
    }
}
