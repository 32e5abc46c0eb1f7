//! `kubetape play` and `kubetape ls` as their users run them: the built binary on
//! recordings a store holds in each state (written through `FsStore`, as the recorder
//! writes them, and one still being recorded through real kubectl), asserting on what
//! they print and how they exit: a recording that is not whole is said to be so, and
//! `--raw` fails rather than pass part of a stream off as all of it; a torn last line
//! is left out; a flag without its value, a file that is not a recording and a reader
//! that goes away are each handled as a user expects.

mod support;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use kubetape::record::protocol::{SessionMeta, Status};
use kubetape::recording::cast::CastWriter;
use kubetape::recording::tap::TapEvent;
use kubetape::storage::fs::{FsStore, SessionFile};
use kubetape::wire::asciicast;
use support::{eventually, Demo, Kubectl, OutputExt, Proto, TempDir};

const HEADER: &[u8] = b"{\"version\": 2, \"width\": 80, \"height\": 24}\n";
/// What every stored recording below printed on stdout, in two writes.
const FIRST: &[u8] = b"first \xff\n";
const SECOND: &[u8] = b"second\n";
/// A last line being written, or cut off.
const TORN: &[u8] = b"[0.6, \"o\", \"sec";
/// A recording big enough that its listing or text fills a pipe (64 KiB) many times.
const PIPE_FILLER: usize = 4000;

fn kubetape(args: &[&str], file: Option<&Path>) -> Output {
    let mut c = Command::new(support::BIN);
    c.args(args);
    if let Some(f) = file {
        c.arg("--file").arg(f);
    }
    c.output().expect("running kubetape")
}

/// The sidecar a proxy's session starts with.
fn meta(id: &str) -> SessionMeta {
    let session = serde_json::json!({"user": {"name": "alice"}, "namespace": "default", "pod": "web-0", "command": ["sh"]});
    let sidecar = serde_json::json!({"id": id, "status": "recording", "bytes": 0, "started": "2026-11-25T22:00:00Z", "writer": "kubetape-proxy", "session": session});
    serde_json::from_value(sidecar).expect("a sidecar")
}

/// A recording in `store`, its output written as the proxy writes it, left open.
fn started(store: &FsStore, id: &str, outputs: &[&[u8]]) -> SessionFile {
    let mut file = store.create(meta(id), HEADER).expect("creating a recording");
    let mut writer = CastWriter::default();
    for data in outputs {
        let lines = writer.lines(0.5, vec![TapEvent::Output { stream: 1, data: data.to_vec() }]);
        file.append(lines.as_bytes()).expect("appending");
    }
    file.sync().expect("syncing");
    file
}

/// The `.cast` path of recording `id` in a store rooted at `root`.
fn cast_path(root: &Path, id: &str) -> PathBuf {
    root.join("2026-11-25").join(format!("{id}.cast"))
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn play_says_when_a_recording_is_not_whole_and_raw_then_fails() {
    let dir = TempDir::new("play-states");
    let store = FsStore::open(&dir.0).expect("a store");
    started(&store, "complete", &[FIRST, SECOND]).finish(Status::Complete, Some(0), None, "2026-11-25T22:00:01Z".into()).expect("finishing");
    let _live = started(&store, "live", &[FIRST]);
    started(&store, "truncated", &[FIRST]).finish(Status::Truncated, None, Some("the recorder stopped acknowledging".into()), "2026-11-25T22:00:01Z".into()).expect("finishing");
    started(&store, "torn", &[FIRST]).finish(Status::Complete, Some(0), None, "2026-11-25T22:00:01Z".into()).expect("finishing");
    std::fs::OpenOptions::new().append(true).open(cast_path(&dir.0, "torn")).and_then(|mut f| f.write_all(TORN)).expect("tearing");
    // A recorder that died mid-session: the next one to open the store marks it.
    let other = TempDir::new("play-interrupted");
    drop(started(&FsStore::open(&other.0).expect("a store"), "interrupted", &[FIRST]));
    FsStore::open(&other.0).expect("recovering");

    let whole = [FIRST, SECOND].concat();
    let out = kubetape(&["play", "--raw", "stdout"], Some(&cast_path(&dir.0, "complete")));
    assert_eq!((out.status.code(), out.stdout.as_slice(), stderr(&out).as_str()), (Some(0), whole.as_slice(), ""), "a complete recording");

    for (path, gap) in [
        (cast_path(&dir.0, "live"), "recording live is still being recorded (status recording): this is what was written so far".to_string()),
        (cast_path(&dir.0, "truncated"), "recording truncated is truncated (the recorder stopped acknowledging)".into()),
        (cast_path(&other.0, "interrupted"), "recording interrupted was interrupted (the recorder stopped while this session was recording)".into()),
        (cast_path(&dir.0, "torn"), format!("its last line is torn ({} bytes without a newline), left out", TORN.len())),
    ] {
        let said = format!("kubetape play: {}: {gap}\n", path.display());
        let text = kubetape(&["play"], Some(&path));
        assert_eq!((text.status.code(), stderr(&text)), (Some(0), said.clone()), "{}", text.describe());
        assert_eq!(text.stdout, String::from_utf8_lossy(FIRST).as_bytes(), "the text there is, shown");
        let raw = kubetape(&["play", "--raw", "stdout"], Some(&path));
        assert_eq!(raw.status.code(), Some(2), "--raw fails on a recording that is not whole: {}", raw.describe());
        assert_eq!(stderr(&raw), format!("{said}kubetape play: --raw stdout: not all of the stream's bytes: {gap}\n"));
        assert_eq!(raw.stdout, FIRST, "the bytes there are, written");
    }
}

#[test]
fn play_right_after_a_session_says_it_is_still_being_recorded() {
    let demo = Demo::start();
    let k = Kubectl::new(&demo, "kubeconfig", "1.32", Proto::WebSocket);
    // The container's command waits for a file the test creates, so the session is
    // open for as long as the test needs.
    let script = "echo started; while [ ! -e stop-live ]; do sleep 0.1; done; echo done # live";
    let session = std::thread::spawn(move || k.run_timeout(&["exec", "web-0", "--", "sh", "-c", script], None, Duration::from_secs(60)));
    let id = eventually(Duration::from_secs(20), || {
        let live = demo.recordings().into_iter().find(|(m, c)| m["status"] == "recording" && asciicast::recover_stream(c, asciicast::STDOUT).is_ok_and(|o| o == b"started\n"));
        live.and_then(|(m, _)| m["id"].as_str().map(String::from)).ok_or_else(|| format!("no live recording yet: {:#?}", demo.recordings()))
    });
    let path = demo.cast_path(&id);
    let raw = kubetape(&["play", "--raw", "stdout"], Some(&path));
    assert_eq!(raw.status.code(), Some(2), "{}", raw.describe());
    assert!(stderr(&raw).contains(&format!("recording {id} is still being recorded (status recording)")), "{}", raw.describe());
    assert_eq!(raw.stdout, b"started\n");

    std::fs::write(demo.path("sim-data/default/web-0/stop-live"), "").expect("stopping the session");
    let out = session.join().expect("kubectl thread");
    assert!(out.status.success(), "{}", out.describe());
    demo.wait_recording(|m, _| m["id"] == id.as_str());
    let raw = kubetape(&["play", "--raw", "stdout"], Some(&path));
    assert_eq!((raw.status.code(), raw.stdout.as_slice(), stderr(&raw).as_str()), (Some(0), b"started\ndone\n".as_slice(), ""), "once complete");
}

#[test]
fn a_flag_without_its_value_and_a_file_that_is_not_a_recording_are_errors() {
    let out = kubetape(&["play", "--file"], None);
    assert_eq!((out.status.code(), stderr(&out).as_str()), (Some(2), "kubetape play: --file: needs a value (--file VALUE or --file=VALUE)\n"));
    let out = kubetape(&["play", "--raw", "--file", "x.cast"], None);
    assert_eq!((out.status.code(), stderr(&out).as_str()), (Some(2), "kubetape play: --raw: needs a value (--raw VALUE or --raw=VALUE)\n"));
    let out = kubetape(&["ls", "--storage-dir"], None);
    assert_eq!((out.status.code(), stderr(&out).as_str()), (Some(2), "kubetape ls: --storage-dir: needs a value (--storage-dir VALUE or --storage-dir=VALUE)\n"));

    let dir = TempDir::new("not-a-recording");
    for (name, content) in
        [("empty", &b""[..]), ("text", b"hello\nworld\n"), ("json", b"{}\n"), ("binary", b"\x1f\x8b\x08\x00\xff\n\x00\x01"), ("v1", b"{\"version\": 1, \"stdout\": []}\n")]
    {
        let path = dir.0.join(format!("{name}.cast"));
        std::fs::write(&path, content).expect("writing");
        let out = kubetape(&["play"], Some(&path));
        let want = format!("kubetape play: --file {}: not an asciicast v2 recording: its first line is not a header with \"version\": 2\n", path.display());
        assert_eq!((out.status.code(), stderr(&out), out.stdout.len()), (Some(2), want, 0), "{name}");
    }
    let path = dir.0.join("events.cast");
    std::fs::write(&path, [HEADER, b"[0.1, \"o\", \"fine\"]\n{\"not\": \"an event\"}\n"].concat()).expect("writing");
    let out = kubetape(&["play"], Some(&path));
    assert_eq!((out.status.code(), stderr(&out)), (Some(2), format!("kubetape play: --file {}: line 3: not an event ([seconds, code, data])\n", path.display())));
}

/// Runs `args`, reads a little of its stdout, then closes it; returns how it ended.
fn read_a_little_then_leave(args: &[&str], file: Option<&Path>) -> Output {
    let mut c = Command::new(support::BIN);
    c.args(args);
    if let Some(f) = file {
        c.arg("--file").arg(f);
    }
    let mut child = c.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("running kubetape");
    let mut stdout = child.stdout.take().expect("stdout");
    let mut first = [0u8; 100];
    stdout.read_exact(&mut first).expect("the first bytes");
    drop(stdout);
    child.wait_with_output().expect("waiting for kubetape")
}

#[test]
fn ls_and_play_stop_quietly_when_their_reader_goes_away() {
    let dir = TempDir::new("broken-pipe");
    let day = dir.0.join("2026-11-25");
    std::fs::create_dir_all(&day).expect("a day directory");
    for i in 0..PIPE_FILLER {
        let m = SessionMeta { status: Status::Complete, ..meta(&format!("s-{i:05}")) };
        std::fs::write(day.join(format!("{}.json", m.id)), serde_json::to_vec(&m).expect("a sidecar")).expect("writing a sidecar");
    }
    let out = read_a_little_then_leave(&["ls", "--storage-dir", dir.0.to_str().expect("a UTF-8 path")], None);
    assert_eq!((out.status.code(), stderr(&out).as_str()), (Some(0), ""), "ls | head");

    let lines: Vec<Vec<u8>> = (0..PIPE_FILLER).map(|i| format!("line {i} of a long session\n").into_bytes()).collect();
    let store = FsStore::open(&dir.0).expect("a store");
    let long: Vec<&[u8]> = lines.iter().map(Vec::as_slice).collect();
    started(&store, "long", &long).finish(Status::Complete, Some(0), None, "2026-11-25T22:00:01Z".into()).expect("finishing");
    for args in [&["play"][..], &["play", "--raw", "stdout"]] {
        let out = read_a_little_then_leave(args, Some(&cast_path(&dir.0, "long")));
        assert_eq!((out.status.code(), stderr(&out).as_str()), (Some(0), ""), "{args:?} | head");
    }
}

#[test]
fn text_shows_the_lines_as_the_terminal_left_them() {
    let dir = TempDir::new("play-text");
    let store = FsStore::open(&dir.0).expect("a store");
    // A prompt, a password typed then erased, a word drawn right half first, colour.
    let outputs: [&[u8]; 4] = [b"$ hunter2", b"\x08\x08\x08\x08\x08\x08\x08\x1b[K", b"ls\r\n\x1b[3;4Hld\x1b[3;1Hwor\r\n", b"\x1b[1;31mred\x1b[0m\r\n$ "];
    let file = started(&store, "s-text", &outputs);
    drop(file);
    let out = kubetape(&["play", "--text"], Some(&cast_path(&dir.0, "s-text")));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "$ ls\n\nworld\nred\n$\n");
    // The plain text shows what was sent, password and escape codes included.
    let plain = kubetape(&["play"], Some(&cast_path(&dir.0, "s-text")));
    assert!(String::from_utf8_lossy(&plain.stdout).contains("hunter2"));
    let both = kubetape(&["play", "--text", "--raw", "stdout"], Some(&cast_path(&dir.0, "s-text")));
    assert_eq!((both.status.code(), stderr(&both).as_str()), (Some(2), "kubetape play: --text and --raw: give one of them\n"));
}
