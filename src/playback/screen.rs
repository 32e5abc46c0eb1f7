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

use std::collections::HashMap;

use avt::observer::DirtyRows;
use avt::Terminal;
use serde_json::Value;

use crate::wire::asciicast::{self, Item};

/// The size asciicast assumes when the header names none.
const DEFAULT_SIZE: (usize, usize) = (80, 24);
/// A recording is peer input: a header or resize asking for a larger terminal gets
/// this one (the cells are allocated up front, and kept per scrollback line).
pub const MAX_SIZE: (usize, usize) = (500, 200);
/// Lines kept above the screen for [`Rendered::text`]; older ones are dropped.
const SCROLLBACK: usize = 10_000;
/// Search renders on a terminal at most this large (wider text wraps, as it would).
const SEARCH_SIZE: (usize, usize) = (300, 100);
/// What rendering one recording for search may cost: cells of rows looked at (a line
/// scrolling a full 80x24 screen costs 1,920), resizes (each re-wraps the screen) and
/// the history's text. Past any of them the rest of the recording is not searched,
/// and [`Rendered::truncated`] says so.
const SEARCH_CELLS: usize = 400_000_000;
const SEARCH_RESIZES: usize = 1_000;
const SEARCH_HISTORY_BYTES: usize = 16 * 1024 * 1024;

/// What a rendering is for, and so what it may cost.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose {
    /// `play --text`: the lines as they finally stood, scrollback kept; the cost is
    /// the caller's own.
    Text,
    /// Search, on a recorder serving many: the history only, no scrollback, a
    /// bounded screen and a budget.
    Search,
}

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
    /// Why the recording was not rendered to its end, when it was not (search's budget).
    pub truncated: Option<&'static str>,
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
}

/// `COLSxROWS`, as the header's `width`/`height` and an `r` event give it, within bounds.
pub fn size(cols: Option<u64>, rows: Option<u64>) -> Option<(usize, usize)> {
    let clamp = |v: u64, max: usize| usize::try_from(v).map_or(max, |v| v.clamp(1, max));
    Some((clamp(cols?, MAX_SIZE.0), clamp(rows?, MAX_SIZE.1)))
}

pub fn resize_event(data: &str) -> Option<(usize, usize)> {
    let (c, r) = data.split_once('x')?;
    size(c.trim().parse().ok(), r.trim().parse().ok())
}

/// Runs a recording's output (both streams: a terminal shows stderr too) through the
/// emulator, following its resizes.
pub fn render(header: &Value, items: &[Item<'_>], purpose: Purpose) -> Result<Rendered, String> {
    let bound = |(c, r): (usize, usize)| match purpose {
        Purpose::Text => (c, r),
        Purpose::Search => (c.min(SEARCH_SIZE.0), r.min(SEARCH_SIZE.1)),
    };
    let (cols, rows) = bound(size(header["width"].as_u64(), header["height"].as_u64()).unwrap_or(DEFAULT_SIZE));
    let scrollback = if purpose == Purpose::Text { SCROLLBACK } else { 0 };
    let mut terminal = Terminal::with_scrollback(cols, rows, Some(scrollback)).map_err(|e| e.to_string())?;
    let mut dirty = DirtyRows::new();
    if asciicast::without_terminal(header) {
        terminal.feed_with(asciicast::NEWLINE_MODE, &mut dirty);
    }
    let mut history = History::default();
    let (mut cells, mut resizes) = (0usize, 0usize);
    let over = |cells: usize, resizes: usize, history: &History| match purpose {
        Purpose::Text => None,
        Purpose::Search if cells > SEARCH_CELLS => Some("the rest was not searched: it redraws more than search renders per recording"),
        Purpose::Search if resizes > SEARCH_RESIZES => Some("the rest was not searched: it resizes the terminal more than search follows per recording"),
        Purpose::Search if history.bytes > SEARCH_HISTORY_BYTES => Some("the rest was not searched: it shows more text than search keeps per recording"),
        Purpose::Search => None,
    };
    let mut truncated = None;
    'items: for item in items {
        match item {
            Item::Output(o) => {
                for piece in pieces(&o.text) {
                    let rows = terminal.feed_with(piece, &mut dirty);
                    cells += rows.len() * terminal.size().0;
                    history.note(&terminal, &rows, o.at);
                    truncated = over(cells, resizes, &history);
                    if truncated.is_some() {
                        break 'items;
                    }
                }
            }
            Item::Other(ev) if ev.code == "r" => {
                if let Some(size) = resize_event(&ev.data) {
                    let (cols, rows) = bound(size);
                    let changed = terminal.resize_with(cols, rows, &mut dirty);
                    resizes += 1;
                    history.note(&terminal, &changed, ev.seconds);
                    truncated = over(cells, resizes, &history);
                    if truncated.is_some() {
                        break 'items;
                    }
                }
            }
            Item::Other(_) => {}
        }
    }
    Ok(Rendered { terminal, history: history.shown, truncated })
}

/// A chunk of output cut where the screen is worth looking at: after each line (what
/// scrolls past within one chunk is seen), and before each backspace, carriage
/// return and escape sequence (what a chunk writes and then erases or overwrites is
/// seen before it goes). The emulator keeps its parser's state across pieces, so a cut never
/// changes what is drawn.
fn pieces(text: &str) -> impl Iterator<Item = &str> {
    let mut rest = text;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let cut = rest.char_indices().skip(1).find(|&(i, c)| matches!(c, '\x08' | '\x1b' | '\r') || rest.as_bytes()[i - 1] == b'\n').map_or(rest.len(), |(i, _)| i);
        let (piece, after) = rest.split_at(cut);
        rest = after;
        Some(piece)
    })
}

/// The rows' texts as last noted, to tell a new text from one that only moved.
#[derive(Default)]
struct History {
    rows: Vec<String>,
    /// How many rows hold each text now.
    on_screen: HashMap<String, usize>,
    shown: Vec<Shown>,
    /// The text `shown` holds.
    bytes: usize,
}

impl History {
    /// Notes the texts of the `changed` rows. A text a row already showed is a line
    /// scrolling, not a new one: scrolling output is noted once per line, not once
    /// per row it passes through.
    fn note(&mut self, terminal: &Terminal, changed: &[usize], at: f64) {
        if changed.is_empty() {
            return;
        }
        let screen = terminal.screen();
        let (_, height) = terminal.size();
        if self.rows.len() != height {
            for gone in self.rows.drain(height.min(self.rows.len())..) {
                forget(&mut self.on_screen, &gone);
            }
            self.rows.resize(height, String::new());
        }
        for &r in changed.iter().filter(|&&r| r < height) {
            let Some(text) = screen.line(r).map(|l| l.text().trim_end().to_string()) else { continue };
            if text == self.rows[r] {
                continue;
            }
            if !text.is_empty() && !self.on_screen.contains_key(&text) && self.shown.last().is_none_or(|s| s.text != text) {
                self.bytes += text.len();
                self.shown.push(Shown { at, text: text.clone() });
            }
            *self.on_screen.entry(text.clone()).or_default() += 1;
            let old = std::mem::replace(&mut self.rows[r], text);
            forget(&mut self.on_screen, &old);
        }
    }
}

/// One row fewer holds `text`.
fn forget(on_screen: &mut HashMap<String, usize>, text: &str) {
    if let Some(n) = on_screen.get_mut(text) {
        *n -= 1;
        if *n == 0 {
            on_screen.remove(text);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::asciicast;

    impl Rendered {
        /// Where `word` was shown (case-insensitive), as search looks.
        fn find(&self, word: &str) -> Vec<&Shown> {
            let needle = word.to_lowercase();
            self.history.iter().filter(|s| s.text.to_lowercase().contains(&needle)).collect()
        }
    }

    fn rendered(events: &[(f64, &str, &str)]) -> Rendered {
        let mut cast = String::from("{\"version\": 2, \"width\": 40, \"height\": 5}\n");
        for (t, code, data) in events {
            cast.push_str(&asciicast::event_line(*t, code, data));
            cast.push('\n');
        }
        let rec = asciicast::parse(cast.as_bytes()).unwrap();
        let items = asciicast::items(&rec.events).unwrap();
        render(&rec.header, &items, Purpose::Text).unwrap()
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
        assert_eq!(pieces("a\rb\r\n").collect::<Vec<_>>(), ["a", "\rb", "\r\n"]);
        assert_eq!(pieces("").count(), 0);
    }

    #[test]
    fn what_a_carriage_return_overwrites_is_in_the_history() {
        let r = rendered(&[(0.1, "o", "password: hunter2\rpassword: *******\r\n")]);
        assert_eq!(r.text(), ["password: *******"]);
        assert_eq!(r.find("hunter2").len(), 1);
    }

    fn search_render(header: Value, events: &[(f64, &str, String)]) -> Rendered {
        let events: Vec<asciicast::Event> =
            events.iter().enumerate().map(|(i, (t, c, d))| asciicast::Event { line: i + 2, seconds: *t, code: c.to_string(), data: d.clone() }).collect();
        render(&header, &asciicast::items(&events).unwrap(), Purpose::Search).unwrap()
    }

    #[test]
    fn search_renders_within_a_budget_a_recorded_user_cannot_raise() {
        // A huge terminal asked for by the header and by resizes: search's screen.
        let r = search_render(serde_json::json!({"width": 1000, "height": 500}), &[(0.1, "r", "1000x500".into()), (0.2, "o", "x".into())]);
        assert_eq!(r.terminal.size(), SEARCH_SIZE);
        assert_eq!(r.truncated, None);
        // A flood of resizes stops the rendering, and says so.
        let flood: Vec<(f64, &str, String)> = (0..SEARCH_RESIZES + 5).map(|i| (i as f64, "r", format!("{}x24", 40 + i % 2))).collect();
        let r = search_render(serde_json::json!({}), &flood);
        assert!(r.truncated.is_some_and(|t| t.contains("resizes")), "{:?}", r.truncated);
        // Rows redrawn over and over: the history stops growing at its bound.
        let row = "y".repeat(299);
        let redraws: Vec<(f64, &str, String)> = (0..60_000).map(|i| (0.1, "o", format!("\x1b[H{row}{}", i % 10))).collect();
        let r = search_render(serde_json::json!({"width": 300, "height": 100}), &redraws);
        assert!(r.truncated.is_some_and(|t| t.contains("more text")), "{:?}", r.truncated);
        assert!(r.history.iter().map(|s| s.text.len()).sum::<usize>() <= SEARCH_HISTORY_BYTES + 300);
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
        let huge = render(&serde_json::json!({"width": u64::MAX, "height": 0}), &[], Purpose::Text).unwrap();
        assert_eq!(huge.terminal.size(), (MAX_SIZE.0, 1));
    }
}
