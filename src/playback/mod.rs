//! `kubetape play`: plays a recording's output at the session's pace on a terminal
//! (`player`: `--speed`, `--idle-limit`, space pauses, q quits) and all at once into a
//! pipe, or recovers one stream's exact bytes (`--raw stdout` turns a recorded
//! `kubectl cp` download back into its tar), and says on stderr when the recording is
//! not whole: still being recorded, truncated, interrupted, or ending in a torn line.
//! `--raw` then exits non-zero after writing what there is, since those are not all
//! of the stream's bytes. `--text` shows instead the lines as the session's terminal
//! finally showed them (`screen`: escape sequences resolved, erased text gone).
//! `kubetape ls`: lists the recordings in a recorder's storage directory.
//! With `--recorder URL` both read a recorder's API instead (`remote`), with a reader
//! certificate or a viewer's token; `play --follow` prints a running session as it
//! is recorded. All stop quietly when their reader goes away (`| head`).

mod player;
mod remote;
pub mod screen;

use std::io::{self, IsTerminal, Write};
use std::path::Path;

use serde_json::Value;

use crate::args::{Args, Flag};
use crate::error::{Context, Error, Result};
use crate::record::protocol::{valid_id, SessionMeta, Status};
use crate::wire::asciicast::{self, Item, STDERR, STDOUT};
use player::Pace;
use remote::Recorder;

pub const FLAGS: &[Flag] = &[
    Flag { name: "file", default: None, help: "the .cast file, required unless --recorder is given; its <id>.json sidecar beside it says whether the recording is complete" },
    Flag { name: "raw", default: None, help: "stdout or stderr: write that stream's exact bytes instead of the session's text; fails unless the recording is whole" },
    remote::FLAGS[0],
    Flag { name: "id", default: None, help: "with --recorder: the session id" },
    remote::FLAGS[1],
    remote::FLAGS[2],
    remote::FLAGS[3],
    remote::FLAGS[4],
    Flag { name: "follow", default: Some("false"), help: "with --recorder: print a running session as it is recorded, until it ends" },
    Flag {
        name: "text",
        default: Some("false"),
        help: "print the session's lines as its terminal finally showed them (escape sequences resolved, erased text gone): what search sees",
    },
    Flag { name: "speed", default: None, help: "play at this multiple of the session's pace [default: 1 on a terminal (space pauses, q quits); all at once into a pipe]" },
    Flag { name: "idle-limit", default: None, help: "while playing, cut pauses longer than this many seconds to it" },
];

/// A number of seconds or a speed: finite and above zero.
fn positive(args: &Args, flag: &str) -> Result<Option<f64>> {
    match args.opt(flag) {
        None => Ok(None),
        Some(v) => match v.parse::<f64>() {
            Ok(n) if n.is_finite() && n > 0.0 => Ok(Some(n)),
            _ => crate::bail!("--{flag}: expected a number above 0, found {v:?}"),
        },
    }
}

/// Where a recording came from: as errors say it (`at`), and as notes do (`name`).
struct Source {
    at: String,
    name: String,
}

pub fn run(args: &Args) -> Result<()> {
    let raw = match args.opt("raw").as_deref() {
        None => None,
        Some("stdout") => Some(("stdout", STDOUT)),
        Some("stderr") => Some(("stderr", STDERR)),
        Some(other) => crate::bail!("--raw: expected stdout or stderr, found {other:?}"),
    };
    let text = args.bool("text")?;
    if text && raw.is_some() {
        crate::bail!("--text and --raw: give one of them");
    }
    let (speed, idle_limit) = (positive(args, "speed")?, positive(args, "idle-limit")?);
    let follow = args.bool("follow")?;
    let recorder = Recorder::from_args(args)?;
    let (meta, data, source) = match (&recorder, args.path("file")) {
        (Some(_), Some(_)) => crate::bail!("--recorder: --file goes without it"),
        (Some(r), None) => {
            let id = args.required("id")?;
            if !valid_id(&id) {
                crate::bail!("--id {id:?}: expected a session id ([A-Za-z0-9-], at most 64 characters)");
            }
            if follow {
                if raw.is_some() || text || speed.is_some() || idle_limit.is_some() {
                    crate::bail!("--follow prints the session as it is recorded: --raw, --text, --speed and --idle-limit are for what is recorded already");
                }
                return until_the_reader_leaves(r.follow(&id, &mut io::stdout().lock()));
            }
            let (meta, data) = r.recording(&id)?;
            (Some(meta), data, Source { at: format!("recording {id}"), name: format!("recording {id}") })
        }
        (None, path) => {
            if follow || args.opt("id").is_some() {
                crate::bail!("--follow and --id: only used with --recorder");
            }
            let path = path.ok_or_else(|| Error::new("--file (or --recorder and --id) is required"))?;
            // The sidecar before the cast: one that says `complete` was written after the last line.
            let meta = sidecar(&path)?;
            let data = std::fs::read(&path).with_context(|| format!("--file {}", path.display()))?;
            (meta, data, Source { at: format!("--file {}", path.display()), name: path.display().to_string() })
        }
    };
    let recording = asciicast::parse(&data).map_err(Error::new).with_context(|| source.at.clone())?;
    let items = asciicast::items(&recording.events).map_err(Error::new).with_context(|| source.at.clone())?;
    let gaps = gaps(meta.as_ref(), &recording, data.len());
    if meta.is_none() {
        eprintln!("kubetape play: {}: no sidecar beside it, so whether the recording is complete is not known", source.name);
    }
    for gap in &gaps {
        eprintln!("kubetape play: {}: {gap}", source.name);
    }
    // At the session's pace when asked, or when a person is watching.
    let pace = match (speed, raw.is_none() && !text && io::stdout().is_terminal()) {
        (Some(speed), _) => Some(Pace { speed, idle_limit }),
        (None, true) => Some(Pace { speed: 1.0, idle_limit }),
        (None, false) => None,
    };
    if pace.is_some() && (raw.is_some() || text) {
        crate::bail!("--speed: plays the session's output; --raw and --text print at once");
    }
    if pace.is_none() && idle_limit.is_some() {
        crate::bail!("--idle-limit: only while playing (on a terminal, or with --speed)");
    }
    let mut out = io::stdout().lock();
    until_the_reader_leaves(match (raw, pace) {
        (Some((_, stream)), _) => out.write_all(&asciicast::stream_bytes(&items, stream)).map_err(Error::from),
        (None, _) if text => write_screen_text(&mut out, &recording.header, &items).with_context(|| source.at.clone()),
        (None, Some(pace)) => {
            let (_terminal, keys) = player::keyboard();
            player::play(&items, pace, &keys, &mut out).map(|_| ())
        }
        (None, None) => write_text(&mut out, &items),
    })?;
    match raw {
        Some((name, _)) if !gaps.is_empty() => crate::bail!("--raw {name}: not all of the stream's bytes: {}", gaps.join("; ")),
        _ => Ok(()),
    }
}

/// What the session showed: both streams' text in order, and its exit status.
fn write_text(out: &mut impl Write, items: &[Item<'_>]) -> Result<()> {
    for item in items {
        match item {
            Item::Output(o) => out.write_all(o.text.as_bytes())?,
            Item::Other(ev) if ev.code == "m" => exit_marker(out, &ev.data)?,
            Item::Other(_) => {}
        }
    }
    Ok(out.flush()?)
}

/// The session's lines as its terminal finally showed them, then its exit status.
fn write_screen_text(out: &mut impl Write, header: &Value, items: &[Item<'_>]) -> Result<()> {
    let rendered = screen::render(header, items, screen::Purpose::Text).map_err(Error::new)?;
    for line in rendered.text() {
        writeln!(out, "{line}")?;
    }
    for item in items {
        if let Item::Other(ev) = item {
            if ev.code == "m" && ev.data.starts_with("exit:") {
                writeln!(out, "[kubetape: {}]", ev.data)?;
            }
        }
    }
    Ok(out.flush()?)
}

/// Prints one event line of a cast (any line but the header) as it arrives, for
/// `follow`: the text of `o` and `e` events (a `v` event's exact bytes are for
/// `--raw`), and the exit status.
fn render_line(out: &mut impl Write, line: &str) -> Result<()> {
    let ev: Value = serde_json::from_str(line)?;
    match (ev[1].as_str(), ev[2].as_str()) {
        (Some("o" | "e"), Some(text)) => out.write_all(text.as_bytes())?,
        (Some("m"), Some(mark)) => exit_marker(out, mark)?,
        _ => {}
    }
    Ok(())
}

/// A marker as `play` shows it: only the exit status.
fn exit_marker(out: &mut impl Write, mark: &str) -> io::Result<()> {
    match mark.starts_with("exit:") {
        true => writeln!(out, "\r\n[kubetape: {mark}]"),
        false => Ok(()),
    }
}

/// The recording's sidecar (`<id>.json` beside `<id>.cast`), if there is one.
fn sidecar(cast: &Path) -> Result<Option<SessionMeta>> {
    let path = cast.with_extension("json");
    match std::fs::read(&path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        read => Ok(Some(serde_json::from_slice(&read?).with_context(|| format!("{}: not a recording's sidecar", path.display()))?)),
    }
}

/// Why the recording does not hold the whole session, each as a sentence; none when
/// it does (as far as its sidecar knows).
fn gaps(meta: Option<&SessionMeta>, recording: &asciicast::Recording, cast_len: usize) -> Vec<String> {
    let mut gaps = Vec::new();
    if let Some(m) = meta {
        let reason = m.reason.as_deref().map(|r| format!(" ({r})")).unwrap_or_default();
        match m.status {
            Status::Complete => {}
            Status::Recording => gaps.push(format!("recording {} is still being recorded (status recording): this is what was written so far", m.id)),
            Status::Truncated => gaps.push(format!("recording {} is truncated{reason}", m.id)),
            Status::Interrupted => gaps.push(format!("recording {} was interrupted{reason}", m.id)),
        }
        if m.status != Status::Recording && (cast_len as u64) < m.bytes {
            gaps.push(format!("the file holds {cast_len} of the {} bytes its sidecar says were recorded", m.bytes));
        }
    }
    if recording.torn > 0 {
        gaps.push(format!("its last line is torn ({} bytes without a newline), left out", recording.torn));
    }
    gaps
}

/// Output cut short because its reader went away (`| head`) is not a failure: the
/// command stops quietly, as ls does.
fn until_the_reader_leaves(written: Result<()>) -> Result<()> {
    match written {
        Err(e) if e.io_kind() == Some(io::ErrorKind::BrokenPipe) => Ok(()),
        other => other,
    }
}

pub const LS_FLAGS: &[Flag] = &[
    Flag { name: "storage-dir", default: None, help: "the recorder's --storage-dir, required unless --recorder is given" },
    remote::FLAGS[0],
    remote::FLAGS[1],
    remote::FLAGS[2],
    remote::FLAGS[3],
    remote::FLAGS[4],
    Flag { name: "user", default: None, help: "only this user's sessions" },
    Flag { name: "namespace", default: None, help: "only sessions in this namespace" },
    Flag { name: "pod", default: None, help: "only sessions in this pod" },
];

/// Lists recordings, newest first: id, start, status, who, where, what.
pub fn ls(args: &Args) -> Result<()> {
    let (user, ns, pod) = (args.opt("user"), args.opt("namespace"), args.opt("pod"));
    let recordings = match (Recorder::from_args(args)?, args.path("storage-dir")) {
        (Some(_), Some(_)) => crate::bail!("--recorder: --storage-dir goes without it"),
        // The recorder filters, and lists only what this reader or viewer may watch.
        (Some(r), None) => r.list(&remote::query(&[("user", user.as_deref()), ("namespace", ns.as_deref()), ("pod", pod.as_deref())]))?,
        (None, dir) => {
            let dir = dir.ok_or_else(|| Error::new("--storage-dir (or --recorder) is required"))?;
            if !dir.is_dir() {
                crate::bail!("--storage-dir {}: not a directory", dir.display());
            }
            let store = crate::storage::fs::FsStore::open_read_only(&dir);
            let all = store.list().context("--storage-dir")?;
            all.into_iter()
                .filter(|m| user.as_deref().is_none_or(|u| m.user() == u) && ns.as_deref().is_none_or(|n| m.namespace() == n) && pod.as_deref().is_none_or(|p| m.pod() == p))
                .collect()
        }
    };
    let mut out = io::stdout().lock();
    until_the_reader_leaves((|| {
        writeln!(out, "{:<30} {:<20} {:<11} {:<10} {:<28} COMMAND", "ID", "STARTED", "STATUS", "USER", "NAMESPACE/POD")?;
        for m in recordings {
            let command: Vec<&str> = m.session["command"].as_array().map(|a| a.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
            writeln!(out, "{:<30} {:<20} {:<11} {:<10} {:<28} {}", m.id, m.started, m.status.as_str(), m.user(), format!("{}/{}", m.namespace(), m.pod()), command.join(" "))?;
        }
        Ok(out.flush()?)
    })())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn meta(status: Status, bytes: u64, reason: Option<&str>) -> SessionMeta {
        SessionMeta {
            id: "s-1".into(),
            status,
            bytes,
            exit_code: None,
            reason: reason.map(String::from),
            started: "2026-11-25T22:00:00Z".into(),
            ended: None,
            writer: "proxy".into(),
            session: json!({}),
            recorder: None,
        }
    }

    #[test]
    fn gaps_name_the_status_a_short_file_and_a_torn_line() {
        let cast = b"{\"version\": 2}\n[0.1, \"o\", \"a\"]\n[0.2, \"o\", \"b";
        let whole = asciicast::parse(&cast[..31]).unwrap();
        let torn = asciicast::parse(cast).unwrap();
        assert_eq!(gaps(Some(&meta(Status::Complete, 31, None)), &whole, 31), Vec::<String>::new());
        assert_eq!(gaps(None, &whole, 31), Vec::<String>::new());
        assert_eq!(gaps(Some(&meta(Status::Truncated, 31, Some("recorder lost"))), &whole, 31), ["recording s-1 is truncated (recorder lost)"]);
        assert_eq!(gaps(Some(&meta(Status::Interrupted, 31, None)), &whole, 31), ["recording s-1 was interrupted"]);
        assert_eq!(gaps(Some(&meta(Status::Complete, 40, None)), &whole, 31), ["the file holds 31 of the 40 bytes its sidecar says were recorded"]);
        assert_eq!(
            gaps(Some(&meta(Status::Recording, 0, None)), &torn, cast.len()),
            ["recording s-1 is still being recorded (status recording): this is what was written so far", "its last line is torn (13 bytes without a newline), left out"]
        );
    }

    #[test]
    fn text_shows_both_streams_and_the_exit_status() {
        let cast = b"{\"version\": 2}\n[0.1, \"o\", \"out \"]\n[0.2, \"e\", \"err\"]\n[0.3, \"r\", \"80x24\"]\n[0.4, \"m\", \"exit:3\"]\n";
        let rec = asciicast::parse(cast).unwrap();
        let mut out = Vec::new();
        write_text(&mut out, &asciicast::items(&rec.events).unwrap()).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "out err\r\n[kubetape: exit:3]\n");
    }

    #[test]
    fn a_reader_going_away_is_not_a_failure() {
        assert!(until_the_reader_leaves(Err(io::Error::from(io::ErrorKind::BrokenPipe).into())).is_ok());
        assert!(until_the_reader_leaves(Err(io::Error::from(io::ErrorKind::PermissionDenied).into())).is_err());
    }
}
