//! A session's asciicast v2 event lines (`wire::asciicast`) from what the taps saw:
//! output held back until its UTF-8 sequences are whole, resizes, failures on the
//! error channel as markers, and the exit status at the end. Pure: the caller hands
//! in the time, so the lines for a sequence of events can be checked exactly. No I/O.

use crate::recording::tap::TapEvent;
use crate::wire::asciicast::{self, Utf8Splitter};

/// The writer for one session.
#[derive(Default)]
pub struct CastWriter {
    /// stdout, stderr.
    splitters: [Utf8Splitter; 2],
    exit_code: Option<i32>,
}

impl CastWriter {
    /// The lines for `events` seen `seconds` into the session (newline-terminated;
    /// empty when there is nothing to write yet).
    pub fn lines(&mut self, seconds: f64, events: Vec<TapEvent>) -> String {
        let mut out = String::new();
        for e in events {
            match e {
                TapEvent::Output { stream, data } => {
                    let i = usize::from(stream == asciicast::STDERR);
                    for piece in self.splitters[i].push(&data) {
                        push_line(&mut out, asciicast::output_line(seconds, stream, &piece));
                    }
                }
                TapEvent::Resize(s) => push_line(&mut out, asciicast::event_line(seconds, "r", &format!("{}x{}", s.width, s.height))),
                TapEvent::Exit(code) => self.exit_code = Some(code),
                TapEvent::Failure(msg) => push_line(&mut out, marker(seconds, &format!("error:{msg}"))),
            }
        }
        out
    }

    /// The lines that end the session: output still held back, then the exit status.
    pub fn finish(&mut self, seconds: f64) -> String {
        let mut out = String::new();
        for (i, stream) in [asciicast::STDOUT, asciicast::STDERR].into_iter().enumerate() {
            if let Some(piece) = self.splitters[i].finish() {
                push_line(&mut out, asciicast::output_line(seconds, stream, &piece));
            }
        }
        if let Some(code) = self.exit_code {
            push_line(&mut out, marker(seconds, &format!("exit:{code}")));
        }
        out
    }

    /// The exit status the error channel reported, if it did.
    pub fn exit_code(&self) -> Option<i32> {
        self.exit_code
    }
}

/// One marker (`m`) line, newline-terminated.
pub fn marker_line(seconds: f64, text: &str) -> String {
    format!("{}\n", marker(seconds, text))
}

fn marker(seconds: f64, text: &str) -> String {
    asciicast::event_line(seconds, "m", text)
}

fn push_line(out: &mut String, line: String) {
    out.push_str(&line);
    out.push('\n');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::channel::TerminalSize;

    #[test]
    fn events_become_lines_and_the_exit_comes_last() {
        let mut w = CastWriter::default();
        let euro = "€".as_bytes();
        let first = w.lines(1.5, vec![
            TapEvent::Resize(TerminalSize { width: 120, height: 40 }),
            TapEvent::Output { stream: asciicast::STDOUT, data: [b"a".as_slice(), &euro[..1]].concat() },
            TapEvent::Exit(3),
        ]);
        assert_eq!(first, "[1.500000, \"r\", \"120x40\"]\n[1.500000, \"o\", \"a\"]\n", "a split UTF-8 sequence is held back");
        let second = w.lines(2.0, vec![TapEvent::Output { stream: asciicast::STDOUT, data: euro[1..].to_vec() }, TapEvent::Failure("x".into())]);
        assert_eq!(second, "[2.000000, \"o\", \"€\"]\n[2.000000, \"m\", \"error:x\"]\n");
        let tail = w.lines(2.5, vec![TapEvent::Output { stream: asciicast::STDERR, data: euro[..2].to_vec() }]);
        assert_eq!(tail, "");
        let end = w.finish(3.0);
        assert!(end.ends_with("[3.000000, \"m\", \"exit:3\"]\n"), "{end}");
        assert!(end.lines().next().unwrap().contains("stderr:"), "an unfinished sequence is kept as binary: {end}");
        assert_eq!(w.exit_code(), Some(3));
    }
}
