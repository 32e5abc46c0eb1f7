//! Reading a session while it is recorded: a real kubectl shell through the proxy
//! (bob, fail-closed, so whatever kubectl has printed is durable on the recorder), read
//! from the recorder's API mid-session, followed with `?follow=true` and with
//! `kubetape play --follow`, by readers only, and by at most
//! `kubetape::recorder::MAX_FOLLOWERS` at once.

mod support;

use std::io::{Read, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use support::{eventually, Demo, Kubectl, OutputExt, Proto, RawClient};

/// How long a step may take on a busy machine.
const STEP: Duration = Duration::from_secs(30);
/// Output written while a follower does not read: more than loopback's socket
/// buffers hold (`tcp_wmem` up to 4 MiB, and a receive window that does not grow for
/// a reader that reads nothing).
const BULK: usize = 12_000_000;

/// What a reading thread has received so far.
#[derive(Default)]
struct Got {
    status: Option<u16>,
    bytes: Vec<u8>,
    /// The stream ended: a last chunk, or the end of a pipe.
    ended: bool,
}

type Shared = Arc<Mutex<Got>>;

fn text(got: &Shared) -> String {
    String::from_utf8_lossy(&got.lock().unwrap().bytes).into_owned()
}

fn ended(got: &Shared) -> bool {
    got.lock().unwrap().ended
}

/// Waits until `got` holds `want`, looking at each byte about once (bulk output
/// arrives in many pieces).
fn wait_for(got: &Shared, what: &str, want: &str) {
    let mut from = 0usize;
    eventually(STEP, || {
        let got = got.lock().unwrap();
        let start = from.saturating_sub(want.len());
        from = got.bytes.len();
        if got.bytes[start..].windows(want.len()).any(|w| w == want.as_bytes()) {
            return Ok(());
        }
        let tail = String::from_utf8_lossy(&got.bytes[got.bytes.len().saturating_sub(2000)..]).into_owned();
        Err(format!("{what} has not received {want:?} in {} bytes, ending {tail:?}", got.bytes.len()))
    });
}

/// Everything `pipe` gives, as it comes.
fn collect(mut pipe: impl Read + Send + 'static) -> Shared {
    let got = Shared::default();
    let g = got.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = pipe.read(&mut buf) {
            g.lock().unwrap().bytes.extend_from_slice(&buf[..n]);
        }
        g.lock().unwrap().ended = true;
    });
    got
}

/// `kubectl exec -i web-0 -- sh` as bob, typed into line by line; killed on drop.
struct Shell {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Shared,
}

impl Shell {
    fn start(demo: &Demo) -> Shell {
        let k = Kubectl::new(demo, "bob.kubeconfig", "1.32", Proto::WebSocket);
        let mut child = k.command(&["exec", "-i", "web-0", "--", "sh"]).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().expect("starting kubectl");
        let stdout = collect(child.stdout.take().expect("stdout"));
        Shell { stdin: child.stdin.take(), child, stdout }
    }

    fn type_line(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        stdin.write_all(format!("{line}\n").as_bytes()).expect("typing into kubectl");
        stdin.flush().expect("typing into kubectl");
    }

    /// Types `line` and waits until kubectl has printed `want`.
    fn run(&mut self, line: &str, want: &str) {
        self.type_line(line);
        wait_for(&self.stdout, "kubectl", want);
    }
}

impl Drop for Shell {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A reader's follow request; the answer is read as it arrives, by a thread.
fn follow(demo: &Demo, id: &str) -> Shared {
    let mut c = demo.recorder_client(Some("recorder-reader"));
    // The session may be quiet for a while between what the test types.
    c.stream.sock.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    c.send(format!("GET /v1/recordings/{id}/cast?follow=true HTTP/1.1\r\nHost: r\r\n\r\n").as_bytes()).unwrap();
    let got = Shared::default();
    let g = got.clone();
    std::thread::spawn(move || {
        let Some((head, rest)) = c.head() else { return };
        g.lock().unwrap().status = Some(head.status);
        let whole = c.body(&head, rest, |piece| g.lock().unwrap().bytes.extend_from_slice(piece));
        g.lock().unwrap().ended = whole == Some(true);
    });
    got
}

/// A follow request whose answer's head is read, and nothing more: a follower that
/// holds its place without reading.
fn follow_head(demo: &Demo, id: &str) -> (u16, RawClient) {
    let mut c = demo.recorder_client(Some("recorder-reader"));
    c.send(format!("GET /v1/recordings/{id}/cast?follow=true HTTP/1.1\r\nHost: r\r\n\r\n").as_bytes()).unwrap();
    let (head, _) = c.head().expect("a response head");
    (head.status, c)
}

fn play(demo: &Demo, extra: &[&str]) -> Command {
    let pki = |f: &str| demo.path("pki").join(f);
    let mut c = Command::new(support::BIN);
    c.arg("play").arg("--recorder").arg(format!("https://127.0.0.1:{}", demo.listen_port("recorder")));
    c.arg("--ca").arg(pki("recorder-ca.pem")).arg("--cert").arg(pki("recorder-reader.pem")).arg("--key").arg(pki("recorder-reader-key.pem"));
    c.args(extra);
    c
}

/// A child process killed on drop.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_running_session_is_read_followed_and_played_as_it_is_recorded() {
    let demo = Demo::start();
    let mut shell = Shell::start(&demo);
    shell.run("echo first-$((6*7))", "first-42");
    let id = eventually(STEP, || {
        let (code, body) = demo.recorder_get(Some("recorder-reader"), "/v1/recordings?user=bob");
        let list: Value = serde_json::from_str(&body).map_err(|e| format!("{code} {body}: {e}"))?;
        let running = list["items"].as_array().and_then(|items| items.iter().find(|m| m["status"] == "recording").cloned());
        running.and_then(|m| m["id"].as_str().map(String::from)).ok_or_else(|| format!("no running session: {body}"))
    });
    let cast = format!("/v1/recordings/{id}/cast");

    // (a) What kubectl has printed is durable (bob is fail-closed): one GET has it,
    // whole lines only, and the metadata counts it while the session runs.
    let (code, body) = demo.recorder_get(Some("recorder-reader"), &cast);
    eprintln!("mid-session GET {cast}:\n{body}");
    assert_eq!(code, 200, "{body}");
    assert!(body.ends_with('\n'), "ends on a whole line: {body:?}");
    let lines: Vec<Value> = body.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}"))).collect();
    assert_eq!(lines[0]["version"], 2, "the header first: {body}");
    assert!(lines.iter().any(|e| e[1] == "o" && e[2].as_str().is_some_and(|t| t.contains("first-42"))), "what kubectl printed is there: {body}");
    let (_, meta) = demo.recorder_get(Some("recorder-reader"), &format!("/v1/recordings/{id}"));
    let meta: Value = serde_json::from_str(&meta).unwrap();
    assert_eq!(meta["status"], "recording", "{meta}");
    assert!(meta["bytes"].as_u64().unwrap() >= body.len() as u64, "the running session's durable bytes are counted: {meta}");

    // (d) Readers only, following too.
    for path in [cast.clone(), format!("{cast}?follow=true")] {
        assert_eq!(demo.recorder_get(Some("recorder-writer"), &path).0, 403, "a writer may not read {path}");
        assert_eq!(demo.recorder_get(None, &path).0, 401, "no certificate, no {path}");
    }

    // (b) and (c): a follower and `kubetape play --follow` get everything so far first.
    let follower = follow(&demo, &id);
    wait_for(&follower, "the follower", "first-42");
    assert_eq!(follower.lock().unwrap().status, Some(200));
    let mut player = Killed(play(&demo, &["--id", &id, "--follow"]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("kubetape play"));
    let played = collect(player.0.stdout.take().expect("stdout"));
    wait_for(&played, "kubetape play --follow", "first-42");

    // (e) Followers are bounded; one that went away leaves its place.
    let mut holders: Vec<RawClient> = (2..kubetape::recorder::MAX_FOLLOWERS)
        .map(|i| {
            let (code, c) = follow_head(&demo, &id);
            assert_eq!(code, 200, "follower {}", i + 1);
            c
        })
        .collect();
    let (code, _) = follow_head(&demo, &id);
    assert_eq!(code, 503, "one follower more than {}", kubetape::recorder::MAX_FOLLOWERS);
    let stalled = holders.pop().expect("a follower that does not read");
    drop(holders);
    let again = eventually(STEP, || match follow_head(&demo, &id) {
        (200, c) => Ok(c),
        (code, _) => Err(format!("a departed follower's place is still taken: {code}")),
    });
    drop(again);

    // A follower that stops reading does not hold the session up: far more output
    // than the socket buffers of `stalled` take reaches bob (fail-closed: every byte
    // acknowledged) and the followers that read.
    let started = std::time::Instant::now();
    shell.run(&format!("head -c {BULK} /dev/zero | tr '\\0' a; echo; echo bulk-$((6*7))"), "bulk-42");
    eprintln!("{BULK} bytes of output with a stalled follower took {:?}", started.elapsed());
    wait_for(&follower, "the follower", "bulk-42");
    wait_for(&played, "kubetape play --follow", "bulk-42");
    drop(stalled);

    // Typed after they started: both receive it while the session is still running.
    shell.run("echo second-$((6*7))", "second-42");
    wait_for(&follower, "the follower", "second-42");
    wait_for(&played, "kubetape play --follow", "second-42");
    assert!(!ended(&follower) && !ended(&played), "nothing ends before the session does");

    // The session ends: so do the follower's response and `play --follow`.
    shell.type_line("exit 0");
    drop(shell.stdin.take());
    let (_, recorded) = demo.wait_recording(|m, _| m["id"] == id.as_str());
    eventually(STEP, || if ended(&follower) { Ok(()) } else { Err(format!("the follow response did not end: {:?}", text(&follower))) });
    let followed = text(&follower);
    let short: Vec<&str> = followed.lines().filter(|l| l.len() < 1000).collect();
    eprintln!("followed {cast}?follow=true ({} lines, {} bytes), the short lines:\n{}", followed.lines().count(), followed.len(), short.join("\n"));
    assert_eq!(text(&follower), recorded, "the follower received the whole recording");
    eventually(STEP, || if ended(&played) { Ok(()) } else { Err(format!("kubetape play --follow still running: {:?}", text(&played))) });
    let status = player.0.wait().unwrap();
    let mut err = String::new();
    let _ = player.0.stderr.take().expect("stderr").read_to_string(&mut err);
    assert!(status.success(), "kubetape play --follow: {status} {err}");
    // The same rendering as `play --file` of the finished recording.
    let dir = support::TempDir::new("live");
    std::fs::write(dir.0.join("s.cast"), &recorded).unwrap();
    let from_file = Command::new(support::BIN).args(["play", "--file"]).arg(dir.0.join("s.cast")).output().unwrap();
    assert!(from_file.status.success(), "{}", from_file.describe());
    assert_eq!(text(&played), String::from_utf8_lossy(&from_file.stdout), "play --follow prints what play --file prints");
    assert!(text(&played).contains("[kubetape: exit:0]"), "{}", text(&played));

    // `play` without --follow fetches the finished recording; a writer's certificate is refused.
    let fetched = play(&demo, &["--id", &id]).output().unwrap();
    assert_eq!(fetched.stdout, from_file.stdout, "{}", fetched.describe());
    let pki = demo.path("pki");
    let refused = play(&demo, &["--id", &id, "--cert"]).arg(pki.join("recorder-writer.pem")).arg("--key").arg(pki.join("recorder-writer-key.pem")).output().unwrap();
    assert!(!refused.status.success() && String::from_utf8_lossy(&refused.stderr).contains("403"), "{}", refused.describe());
}
