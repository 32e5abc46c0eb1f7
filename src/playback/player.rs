//! `kubetape play` at the session's own pace: each output waits for its time in the
//! recording, divided by `--speed`, with pauses longer than `--idle-limit` cut to it.
//! On a terminal, keys steer it: space pauses and resumes, `q` (or Ctrl-C) quits.
//! The keyboard is read raw (no echo, no line buffering) and given back as it was.

use std::io::{Read, Write};
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError};

use super::exit_marker;
use crate::error::Result;
use crate::wire::asciicast::Item;

/// How fast to play.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Pace {
    pub speed: f64,
    /// The longest wait between two outputs, in the recording's seconds.
    pub idle_limit: Option<f64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Key {
    /// Pauses, or resumes when paused.
    Pause,
    Quit,
}

/// How a timed play ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Played {
    Whole,
    Quit,
}

fn time_of(item: &Item<'_>) -> f64 {
    match item {
        Item::Output(o) => o.at,
        Item::Other(ev) => ev.seconds,
    }
}

/// The wait before each item: its distance from the one before (times going backwards
/// count as none), cut to the idle limit, divided by the speed.
pub fn waits(items: &[Item<'_>], pace: Pace) -> Vec<Duration> {
    let mut last = 0.0f64;
    items
        .iter()
        .map(|item| {
            let at = time_of(item);
            let gap = (at - last).max(0.0);
            last = last.max(at);
            let gap = pace.idle_limit.map_or(gap, |limit| gap.min(limit));
            Duration::try_from_secs_f64(gap / pace.speed).unwrap_or(Duration::MAX)
        })
        .collect()
}

/// Waits `wait`, or less when a key says to quit; a pause stops the clock until the
/// next one. Without a keyboard (`keys` closed), just waits.
fn wait(wait: Duration, keys: &Receiver<Key>, out: &mut impl Write) -> Result<Option<Played>> {
    loop {
        match keys.recv_timeout(wait) {
            Err(RecvTimeoutError::Timeout) => return Ok(None),
            Err(RecvTimeoutError::Disconnected) => {
                std::thread::sleep(wait);
                return Ok(None);
            }
            Ok(Key::Quit) => return Ok(Some(Played::Quit)),
            Ok(Key::Pause) => {
                out.flush()?;
                // The rest of this wait comes after the pause: a pause is not a skip.
                match keys.recv() {
                    Ok(Key::Pause) => continue,
                    Ok(Key::Quit) | Err(_) => return Ok(Some(Played::Quit)),
                }
            }
        }
    }
}

/// Writes the session's output (and its exit status) at its pace.
pub fn play(items: &[Item<'_>], pace: Pace, keys: &Receiver<Key>, out: &mut impl Write) -> Result<Played> {
    for (item, delay) in items.iter().zip(waits(items, pace)) {
        if let Some(ended) = wait(delay, keys, out)? {
            return Ok(ended);
        }
        match item {
            Item::Output(o) => out.write_all(o.text.as_bytes())?,
            Item::Other(ev) if ev.code == "m" => exit_marker(out, &ev.data)?,
            Item::Other(_) => {}
        }
        out.flush()?;
    }
    Ok(Played::Whole)
}

/// The terminal's settings before the keyboard was made raw, put back on drop.
pub struct RawKeyboard(libc::termios);

impl Drop for RawKeyboard {
    fn drop(&mut self) {
        // SAFETY: restores the settings read from the same descriptor.
        unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &self.0) };
    }
}

/// When stdin is a terminal: reads it raw on a thread of its own and sends its keys.
/// The guard gives the terminal its settings back. `None` (and a closed channel)
/// without a terminal.
pub fn keyboard() -> (Option<RawKeyboard>, Receiver<Key>) {
    let (tx, rx) = crossbeam_channel::bounded(16);
    // SAFETY: isatty, tcgetattr and tcsetattr on stdin with a termios of our own.
    let raw = unsafe {
        let mut t: libc::termios = std::mem::zeroed();
        if libc::isatty(libc::STDIN_FILENO) != 1 || libc::tcgetattr(libc::STDIN_FILENO, &mut t) != 0 {
            return (None, rx);
        }
        let saved = RawKeyboard(t);
        // No echo, no line buffering, and Ctrl-C as a key (so quitting restores the terminal).
        t.c_lflag &= !(libc::ICANON | libc::ECHO | libc::ISIG);
        t.c_cc[libc::VMIN] = 1;
        t.c_cc[libc::VTIME] = 0;
        if libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &t) != 0 {
            return (None, rx);
        }
        saved
    };
    let spawned = std::thread::Builder::new().name("keys".into()).spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut b = [0u8; 1];
        while let Ok(1) = stdin.read(&mut b) {
            let key = match b[0] {
                b' ' => Key::Pause,
                b'q' | b'Q' | 3 => Key::Quit,
                _ => continue,
            };
            if tx.send(key).is_err() {
                return;
            }
        }
    });
    (spawned.is_ok().then_some(raw), rx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::asciicast;

    fn cast(events: &[(f64, &str)]) -> asciicast::Recording {
        let mut text = String::from("{\"version\": 2}\n");
        for (t, s) in events {
            text.push_str(&asciicast::event_line(*t, "o", s));
            text.push('\n');
        }
        asciicast::parse(text.as_bytes()).unwrap()
    }

    fn keys(pressed: &[Key]) -> Receiver<Key> {
        let (tx, rx) = crossbeam_channel::unbounded();
        for k in pressed {
            tx.send(*k).unwrap();
        }
        rx
    }

    #[test]
    fn waits_follow_the_recording_at_its_speed_with_idle_time_cut() {
        let rec = cast(&[(0.5, "a"), (1.5, "b"), (61.5, "c"), (61.0, "d")]);
        let items = asciicast::items(&rec.events).unwrap();
        let secs = |pace| waits(&items, pace).iter().map(Duration::as_secs_f64).collect::<Vec<_>>();
        assert_eq!(secs(Pace { speed: 1.0, idle_limit: None }), [0.5, 1.0, 60.0, 0.0], "time going backwards waits for nothing");
        assert_eq!(secs(Pace { speed: 2.0, idle_limit: None }), [0.25, 0.5, 30.0, 0.0]);
        assert_eq!(secs(Pace { speed: 1.0, idle_limit: Some(2.0) }), [0.5, 1.0, 2.0, 0.0]);
        assert_eq!(secs(Pace { speed: 4.0, idle_limit: Some(2.0) }), [0.125, 0.25, 0.5, 0.0]);
    }

    #[test]
    fn quit_stops_before_what_is_still_to_come() {
        let rec = cast(&[(0.0, "a"), (3600.0, "b")]);
        let items = asciicast::items(&rec.events).unwrap();
        let mut out = Vec::new();
        assert_eq!(play(&items, Pace { speed: 1.0, idle_limit: None }, &keys(&[Key::Quit]), &mut out).unwrap(), Played::Quit);
        assert!(out.is_empty());
    }

    #[test]
    fn a_pause_holds_the_clock_and_a_second_resumes() {
        let rec = cast(&[(0.0, "a"), (0.01, "b"), (0.02, "\u{1b}[31mc")]);
        let items = asciicast::items(&rec.events).unwrap();
        let mut out = Vec::new();
        let ended = play(&items, Pace { speed: 1.0, idle_limit: None }, &keys(&[Key::Pause, Key::Pause]), &mut out).unwrap();
        assert_eq!((ended, String::from_utf8(out).unwrap()), (Played::Whole, "ab\u{1b}[31mc".to_string()), "escape sequences go to the terminal as they are");
        // Quitting while paused.
        let mut out = Vec::new();
        assert_eq!(play(&items, Pace { speed: 1.0, idle_limit: None }, &keys(&[Key::Pause, Key::Quit]), &mut out).unwrap(), Played::Quit);
    }
}
