//! `kubetape play` as a terminal player, and `play` and `ls` against a recorder's API.
//!
//! The player runs under a real pseudo-terminal (`script`), as a person runs it: `q`
//! quits during a long pause, space pauses (what comes after waits until a second
//! space), and `--idle-limit` cuts an hour's pause short; the terminal gets its settings
//! back. Remotely, a viewer's token reads what RBAC lets its user watch (alice: all;
//! bob: nothing) through the demo's recorder, and a reader certificate reads all.

mod support;

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::{eventually, wait_with_timeout, Demo, Kubectl, OutputExt, Proto, TempDir};

const WAIT: Duration = Duration::from_secs(30);

fn write_cast(dir: &TempDir, events: &[(f64, &str)]) -> std::path::PathBuf {
    let mut text = String::from("{\"version\": 2, \"width\": 80, \"height\": 24}\n");
    for (t, s) in events {
        text.push_str(&kubetape::wire::asciicast::event_line(*t, "o", s));
        text.push('\n');
    }
    let path = dir.0.join("session.cast");
    std::fs::write(&path, text).expect("writing the cast");
    path
}

/// `kubetape ARGS` on a pseudo-terminal of its own: its output, collected as it
/// comes, and a way to type.
struct OnTerminal {
    child: Child,
    seen: Arc<Mutex<String>>,
}

impl OnTerminal {
    fn start(args: &[&str]) -> OnTerminal {
        let cmd: Vec<String> = std::iter::once(support::BIN.to_string()).chain(args.iter().map(|a| support::shell_quote(a))).collect();
        // `stty -a` after the player: whether it gave the terminal its settings back.
        let inner = format!("{}; echo; stty -a", cmd.join(" "));
        let mut child = Command::new("script")
            .args(["-qec", &inner, "/dev/null"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting script(1): install bsdutils");
        let mut stdout = child.stdout.take().expect("stdout");
        let seen = Arc::new(Mutex::new(String::new()));
        let into = seen.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 {
                    break;
                }
                into.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        OnTerminal { child, seen }
    }

    fn wait_for(&self, text: &str) {
        eventually(WAIT, || match self.seen.lock().unwrap().clone() {
            s if s.contains(text) => Ok(()),
            s => Err(format!("waiting for {text:?}, the terminal shows {s:?}")),
        });
    }

    fn type_keys(&mut self, keys: &str) {
        self.child.stdin.as_mut().expect("stdin").write_all(keys.as_bytes()).expect("typing");
    }

    fn shown(&self) -> String {
        self.seen.lock().unwrap().clone()
    }

    /// Waits for the player (and the `stty -a` after it) to end.
    fn wait_done(mut self) -> String {
        let status = eventually(WAIT, || self.child.try_wait().map_err(|e| e.to_string())?.ok_or_else(|| format!("still running: {:?}", self.shown())));
        assert!(status.success(), "{status}: {}", self.shown());
        self.shown()
    }
}

/// The terminal's settings as `stty -a` printed them: echo and line editing back on.
fn terminal_restored(shown: &str) {
    let settings = shown.rsplit_once("speed ").map(|(_, s)| s).unwrap_or_default();
    for flag in ["icanon", "echo", "isig"] {
        assert!(settings.split_whitespace().any(|w| w == flag), "{flag} is back on: {settings}");
    }
}

#[test]
fn q_quits_during_a_long_pause_and_gives_the_terminal_back() {
    let dir = TempDir::new("player-quit");
    let cast = write_cast(&dir, &[(0.1, "first-line\r\n"), (3600.0, "an-hour-later\r\n")]);
    let mut term = OnTerminal::start(&["play", "--file", &cast.display().to_string()]);
    term.wait_for("first-line");
    term.type_keys("q");
    let shown = term.wait_done();
    assert!(!shown.contains("an-hour-later"), "{shown}");
    terminal_restored(&shown);
}

#[test]
fn space_pauses_and_resumes() {
    let dir = TempDir::new("player-pause");
    let cast = write_cast(&dir, &[(0.1, "one\r\n"), (1.5, "two\r\n")]);
    let mut term = OnTerminal::start(&["play", "--file", &cast.display().to_string()]);
    term.wait_for("one");
    term.type_keys(" ");
    // Paused: "two" is due 1.4 s later and must not come while paused. The terminal
    // is watched for three times that; a player that ignored the pause would show it.
    let watched = std::time::Instant::now();
    while watched.elapsed() < Duration::from_millis(4200) {
        assert!(!term.shown().contains("two"), "shown while paused: {}", term.shown());
        std::thread::sleep(Duration::from_millis(100));
    }
    term.type_keys(" ");
    term.wait_for("two");
    terminal_restored(&term.wait_done());
}

#[test]
fn idle_limit_cuts_an_hour_short_and_speed_plays_into_a_pipe() {
    let dir = TempDir::new("player-idle");
    let cast = write_cast(&dir, &[(0.1, "before\r\n"), (3600.0, "after\r\n")]);
    let term = OnTerminal::start(&["play", "--file", &cast.display().to_string(), "--idle-limit", "0.2"]);
    let shown = term.wait_done();
    assert!(shown.contains("before") && shown.contains("after"), "{shown}");
    // Into a pipe, --speed plays at that pace too; an hour at 36000× is 0.1 s.
    let out = wait_with_timeout(
        Command::new(support::BIN)
            .args(["play", "--file", &cast.display().to_string(), "--speed", "36000"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kubetape play"),
        WAIT,
    );
    assert!(out.status.success(), "{}", out.describe());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "before\r\nafter\r\n");
    for bad in [["--speed", "0"], ["--speed", "fast"], ["--idle-limit", "-1"]] {
        let out = Command::new(support::BIN).args(["play", "--file", &cast.display().to_string()]).args(bad).output().expect("kubetape play");
        assert_eq!(out.status.code(), Some(2), "{bad:?}: {}", out.describe());
    }
}

fn kubetape(demo: &Demo, args: &[&str]) -> std::process::Output {
    let mut c = Command::new(support::BIN);
    c.args(args).args(["--recorder", &format!("https://localhost:{}", demo.listen_port("recorder")), "--ca"]).arg(demo.path("pki/recorder-ca.pem"));
    c.output().expect("running kubetape")
}

fn as_viewer(demo: &Demo, user: &str) -> [String; 2] {
    ["--token-file".into(), demo.path(&format!("{user}.token")).display().to_string()]
}

#[test]
fn ls_and_play_read_a_recorder_with_a_token_or_a_certificate() {
    let demo = Demo::start();
    let alice = Kubectl::new(&demo, "kubeconfig", "1.27", Proto::Spdy);
    let word = format!("remote{}", kubetape::net::random::hex(4));
    let out = alice.run(&["exec", "web-0", "--", "printf", &format!("{word}X\\bY\\n")]);
    assert!(out.status.success(), "{}", out.describe());
    let (meta, _) = demo.wait_recording(|_, cast| cast.contains(&word));
    let id = meta["id"].as_str().expect("id").to_string();
    let reader = ["--cert".to_string(), demo.path("pki/recorder-reader.pem").display().to_string(), "--key".into(), demo.path("pki/recorder-reader-key.pem").display().to_string()];

    for who in [as_viewer(&demo, "alice").to_vec(), reader.to_vec()] {
        let who: Vec<&str> = who.iter().map(String::as_str).collect();
        let ls = kubetape(&demo, &[&["ls"], who.as_slice(), &["--user", "alice"]].concat());
        assert!(ls.status.success(), "{}", ls.describe());
        assert!(String::from_utf8_lossy(&ls.stdout).contains(&id), "{}", ls.describe());
        // What search sees: the backspace resolved.
        let text = kubetape(&demo, &[&["play", "--id", &id, "--text"], who.as_slice()].concat());
        assert!(text.status.success(), "{}", text.describe());
        assert!(String::from_utf8_lossy(&text.stdout).contains(&format!("{word}Y")), "{}", text.describe());
        let raw = kubetape(&demo, &[&["play", "--id", &id, "--raw", "stdout"], who.as_slice()].concat());
        assert_eq!(String::from_utf8_lossy(&raw.stdout), format!("{word}X\u{8}Y\n"), "{}", raw.describe());
    }
    // bob may watch nothing: an empty list, and a refusal that shows no output.
    let bob = as_viewer(&demo, "bob");
    let bob: Vec<&str> = bob.iter().map(String::as_str).collect();
    let ls = kubetape(&demo, &[&["ls"], bob.as_slice()].concat());
    assert!(ls.status.success(), "{}", ls.describe());
    assert_eq!(String::from_utf8_lossy(&ls.stdout).lines().count(), 1, "the heading only: {}", ls.describe());
    let play = kubetape(&demo, &[&["play", "--id", &id], bob.as_slice()].concat());
    assert!(!play.status.success() && !String::from_utf8_lossy(&play.stdout).contains(&word), "{}", play.describe());
    assert!(String::from_utf8_lossy(&play.stderr).contains("403"), "{}", play.describe());
    // Without a credential, or with two, the command says what to give.
    for args in [vec!["ls"], [vec!["ls"], bob.clone(), reader.iter().map(String::as_str).collect()].concat()] {
        let out = kubetape(&demo, &args);
        assert_eq!(out.status.code(), Some(2), "{}", out.describe());
    }
    let missing = Path::new("/nonexistent/token");
    let out = kubetape(&demo, &["ls", "--token-file", &missing.display().to_string()]);
    assert_eq!(out.status.code(), Some(2), "{}", out.describe());
}
