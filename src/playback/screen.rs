//! What a recording showed, as a terminal showed it: its output run through
//! asciinema's own terminal emulator (`avt`, the one asciinema-player and the
//! asciinema server use, so the text here is the text the player draws). Escape
//! sequences are resolved: a word drawn piece by piece with cursor moves reads whole,
//! a word typed and then erased is not on the screen.
//!
//! Two views of it: [`Rendered::text`], the session's lines as they finally stood
//! (`kubetape play --text`), and [`Rendered::history`], every text a screen row held
//! and when it first did, which is what search looks through: the erased word is
//! there, at the time it was shown.

use std::collections::HashSet;

use avt::observer::DirtyRows;
use avt::Terminal;
use serde_json::Value;

use crate::wire::asciicast::Item;

/// The size asciicast assumes when the header names none.
const DEFAULT_SIZE: (usize, usize) = (80, 24);
/// A recording is peer input: a header or resize asking for a larger terminal gets
/// this one (the cells are allocated up front).
const MAX_SIZE: (usize, usize) = (1000, 500);
/// Lines kept above the screen for [`Rendered::text`]; older ones are dropped (the
/// history keeps them), so a session that printed gigabytes is not held whole.
const SCROLLBACK: usize = 100_000;

/// A text a screen row showed, and when it first did (seconds from the start).
#[derive(Clone, Debug, PartialEq)]
pub struct Shown {
    pub at: f64,
    pub text: String,
}

pub struct Rendered {
    terminal: Terminal,
    /// Every new text a row came to show, in order.
    pub history: Vec<Shown>,
}

impl Rendered {
    /// The session's lines as they finally stood: scrollback, then the screen (soft
    /// wraps joined, trailing blanks trimmed, trailing empty lines dropped).
    pub fn text(&self) -> Vec<String> {
        let mut lines = self.terminal.primary_screen().text();
        while lines.last().is_some_and(|l| l.is_empty()) {
            lines.pop();
        }
        lines
    }

    /// Where `word` was shown: each row text holding it (case-insensitive), in order.
    pub fn find(&self, word: &str) -> Vec<&Shown> {
        let needle = word.to_lowercase();
        self.history.iter().filter(|s| s.text.to_lowercase().contains(&needle)).collect()
    }
}

/// `COLSxROWS`, as the header's `width`/`height` and an `r` event give it, within bounds.
fn size(cols: Option<u64>, rows: Option<u64>) -> Option<(usize, usize)> {
    let clamp = |v: u64, max: usize| usize::try_from(v).map_or(max, |v| v.clamp(1, max));
    Some((clamp(cols?, MAX_SIZE.0), clamp(rows?, MAX_SIZE.1)))
}

fn resize_event(data: &str) -> Option<(usize, usize)> {
    let (c, r) = data.split_once('x')?;
    size(c.trim().parse().ok(), r.trim().parse().ok())
}

/// Runs a recording's output (both streams: a terminal shows stderr too) through the
/// emulator, following its resizes.
pub fn render(header: &Value, items: &[Item<'_>]) -> Result<Rendered, String> {
    let (cols, rows) = size(header["width"].as_u64(), header["height"].as_u64()).unwrap_or(DEFAULT_SIZE);
    let mut terminal = Terminal::with_scrollback(cols, rows, Some(SCROLLBACK)).map_err(|e| e.to_string())?;
    let mut dirty = DirtyRows::new();
    let mut history = History::default();
    for item in items {
        match item {
            Item::Output(o) => {
                for piece in pieces(&o.text) {
                    let rows = terminal.feed_with(piece, &mut dirty);
                    history.note(&terminal, &rows, o.at);
                }
            }
            Item::Other(ev) if ev.code == "r" => {
                if let Some((cols, rows)) = resize_event(&ev.data) {
                    let changed = terminal.resize_with(cols, rows, &mut dirty);
                    history.note(&terminal, &changed, ev.seconds);
                }
            }
            Item::Other(_) => {}
        }
    }
    Ok(Rendered { terminal, history: history.shown })
}

/// A chunk of output cut where the screen is worth looking at: after each line (what
/// scrolls past within one chunk is seen), and before each backspace and escape
/// sequence (what a chunk writes and then erases or overwrites is seen before it
/// goes). The emulator keeps its parser's state across pieces, so a cut never
/// changes what is drawn.
fn pieces(text: &str) -> impl Iterator<Item = &str> {
    let mut rest = text;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let cut = rest.char_indices().skip(1).find(|&(i, c)| c == '\x08' || c == '\x1b' || rest.as_bytes()[i - 1] == b'\n').map_or(rest.len(), |(i, _)| i);
        let (piece, after) = rest.split_at(cut);
        rest = after;
        Some(piece)
    })
}

/// The rows' texts as last noted, to tell a new text from one that only moved.
#[derive(Default)]
struct History {
    rows: Vec<String>,
    shown: Vec<Shown>,
}

impl History {
    /// Notes the texts of the `changed` rows. A text another row already showed is
    /// a line scrolling, not a new one: scrolling output is noted once per line, not
    /// once per row it passes through.
    fn note(&mut self, terminal: &Terminal, changed: &[usize], at: f64) {
        let screen = terminal.screen();
        let (_, height) = terminal.size();
        self.rows.resize(height, String::new());
        let before: HashSet<&str> = self.rows.iter().map(String::as_str).collect();
        let now: Vec<(usize, String)> = changed.iter().filter_map(|&r| Some((r, screen.line(r)?.text().trim_end().to_string()))).filter(|(r, _)| *r < height).collect();
        for (_, text) in &now {
            if !text.is_empty() && !before.contains(text.as_str()) && self.shown.last().is_none_or(|s| s.text != *text) {
                self.shown.push(Shown { at, text: text.clone() });
            }
        }
        for (r, text) in now {
            self.rows[r] = text;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::asciicast;

    fn rendered(events: &[(f64, &str, &str)]) -> Rendered {
        let mut cast = String::from("{\"version\": 2, \"width\": 40, \"height\": 5}\n");
        for (t, code, data) in events {
            cast.push_str(&asciicast::event_line(*t, code, data));
            cast.push('\n');
        }
        let rec = asciicast::parse(cast.as_bytes()).unwrap();
        let items = asciicast::items(&rec.events).unwrap();
        render(&rec.header, &items).unwrap()
    }

    #[test]
    fn a_word_drawn_by_cursor_moves_is_found_whole_when_it_is_complete() {
        // "ld" first at column 4, then "wor" before it: the screen reads "world".
        let r = rendered(&[(0.5, "o", "\x1b[2;4Hld"), (1.5, "o", "\x1b[2;1Hwor"), (2.0, "o", "\x1b[1;1H\x1b[31mred\x1b[0m")]);
        assert_eq!(r.text(), ["red", "world"]);
        let hits = r.find("WORLD");
        assert_eq!(hits.len(), 1);
        assert_eq!(hits[0].at, 1.5, "found when it was drawn whole");
        assert!(r.history.iter().all(|s| !s.text.contains('\x1b')), "no escape sequences in what search sees");
    }

    #[test]
    fn a_word_typed_then_erased_is_not_on_the_screen_but_is_in_the_history() {
        let r = rendered(&[(0.1, "o", "$ "), (1.0, "o", "hunter2"), (2.0, "o", "\x08\x08\x08\x08\x08\x08\x08\x1b[K"), (3.0, "o", "ls\r\nfile\r\n$ ")]);
        assert_eq!(r.text(), ["$ ls", "file", "$"]);
        assert!(!r.text().join("\n").contains("hunter2"));
        assert_eq!(r.find("hunter2").iter().map(|s| s.at).collect::<Vec<_>>(), [1.0]);
    }

    #[test]
    fn what_one_write_shows_and_then_erases_is_in_the_history() {
        let r = rendered(&[(0.1, "o", "$ hunter2\x08\x08\x08\x08\x08\x08\x08\x1b[Kls\r\n")]);
        assert_eq!(r.text(), ["$ ls"]);
        assert_eq!(r.find("hunter2").len(), 1);
        let cuts: Vec<&str> = pieces("a\nb\x08c\x1b[1md\n").collect();
        assert_eq!(cuts, ["a\n", "b", "\x08c", "\x1b[1md\n"]);
        assert_eq!(pieces("").count(), 0);
    }

    #[test]
    fn scrolling_output_is_noted_once_per_line_and_kept_past_the_screen() {
        let lines: String = (1..=20).map(|i| format!("line {i}\r\n")).collect();
        let r = rendered(&[(0.1, "o", &lines)]);
        let texts: Vec<&str> = r.history.iter().map(|s| s.text.as_str()).collect();
        let expected: Vec<String> = (1..=20).map(|i| format!("line {i}")).collect();
        assert_eq!(texts, expected);
        assert_eq!(r.text(), expected, "the scrollback holds what scrolled off the 5 rows");
    }

    #[test]
    fn resizes_and_sizes_from_the_recording_are_bounded() {
        let r = rendered(&[(0.1, "r", "100000x100000"), (0.2, "o", "x"), (0.3, "r", "0x0"), (0.4, "r", "garbage"), (0.5, "o", "y")]);
        assert_eq!(r.terminal.size(), (1, 1));
        assert_eq!(resize_event("100000x100000"), Some(MAX_SIZE));
        assert_eq!(size(None, Some(3)), None);
        let huge = render(&serde_json::json!({"width": u64::MAX, "height": 0}), &[]).unwrap();
        assert_eq!(huge.terminal.size(), (MAX_SIZE.0, 1));
    }
}
