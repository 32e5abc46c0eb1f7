//! Recorders that come and go, as the proxy sees them: one that hangs is skipped by
//! the sessions that follow its failure instead of costing each its connect timeout;
//! the API event stream follows a policy reload to the recorders it names now; and a
//! fail-open session goes on recording once its recorder is back from a crash.

mod support;

use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use support::{eventually, Demo, Kubectl, OutputExt, Proto, Spawned};

/// A listener that accepts and then says nothing: a recorder that hangs. Counts the
/// connections it was offered.
fn hung_recorder() -> (u16, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in l.incoming().flatten() {
            count.fetch_add(1, Ordering::SeqCst);
            held.push(s);
        }
    });
    (port, accepted)
}

#[test]
fn a_hung_recorder_is_skipped_by_the_sessions_after_its_failure() {
    let demo = Demo::start();
    demo.disable_events();
    let (port, accepted) = hung_recorder();
    demo.edit_policy(|v| {
        let first = json!({"name": "hung", "url": format!("https://127.0.0.1:{port}"), "tags": ["tag:recorder"], "caFile": "pki/recorder-ca.pem"});
        v["recorders"].as_array_mut().unwrap().insert(0, first);
    });
    let k = Kubectl::new(&demo, "kubeconfig", "1.32", Proto::WebSocket);
    let exec = |marker: String| {
        let k = k.clone();
        std::thread::spawn(move || {
            let out = k.run(&["exec", "web-0", "--", "echo", &marker]);
            assert!(out.status.success(), "{}", out.describe());
        })
    };
    // The first session pays the hung recorder's timeout, then goes to the next one.
    exec("after-hung-0".into()).join().unwrap();
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
    // Sessions started right after are not held up by it: none even connects.
    let sessions: Vec<_> = (1..=4).map(|i| exec(format!("after-hung-{i}"))).collect();
    for s in sessions {
        s.join().unwrap();
    }
    for i in 0..=4 {
        let marker = format!("after-hung-{i}");
        demo.wait_recording(|m, c| m["status"] == "complete" && c.contains(&marker));
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1, "the sessions after the failure skipped the hung recorder");
}

#[test]
fn api_events_follow_a_policy_reload_to_another_recorder() {
    let demo = Demo::start();
    let k = Kubectl::new(&demo, "kubeconfig", "1.32", Proto::WebSocket);
    let has_event = |port: u16, marker: &str| {
        let (code, body) = demo.recorder_get_at(port, Some("recorder-reader"), "/v1/events?user=alice&limit=10000");
        assert_eq!(code, 200, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        v["items"].as_array().unwrap().iter().any(|e| e["query"].as_str().unwrap_or("").contains(marker))
    };
    let first = demo.listen_port("recorder");
    assert!(k.run(&["get", "pods", "-l", "before=reload"]).status.success());
    eventually(Duration::from_secs(10), || if has_event(first, "before") { Ok(()) } else { Err("no event before the reload".into()) });

    // A second recorder on the demo's PKI, with storage of its own.
    let cmdline = std::fs::read_to_string(demo.path("recorder.cmdline")).unwrap();
    let port = support::free_port();
    let dir = support::TempDir::new("second-recorder");
    let mut args: Vec<String> = cmdline.split_whitespace().skip(1).map(String::from).collect();
    args.extend(["--listen".into(), format!("127.0.0.1:{port}"), "--storage-dir".into(), dir.0.display().to_string()]);
    let _second = Spawned::start(&args, &dir.0.join("recorder.log"));
    support::wait_for_port(port);
    demo.edit_policy(|v| v["recorders"][0]["url"] = json!(format!("https://127.0.0.1:{port}")));

    assert!(k.run(&["get", "pods", "-l", "after=reload"]).status.success());
    eventually(
        Duration::from_secs(10),
        || if has_event(port, "after") { Ok(()) } else { Err(format!("the event did not reach the recorder the policy names now: {}", demo.logs())) },
    );
    assert!(!has_event(first, "after"), "the recorder the policy no longer names got it");
}

#[test]
fn a_fail_open_session_resumes_recording_when_its_recorder_comes_back() {
    let demo = Demo::start();
    demo.disable_events();
    let lines = 60;
    let k = Kubectl::new(&demo, "kubeconfig", "1.32", Proto::WebSocket);
    let session = k
        .command(&["exec", "web-0", "--", "sh", "-c", &format!("for i in $(seq 1 {lines}); do echo open-$i; sleep 0.25; done")])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("kubectl");
    let id = demo.wait_running("open-4\\n");
    // The recorder crashes and is back (its spool kept) while the session runs.
    demo.kill("recorder");
    let _again = demo.restart("recorder");
    let out = support::wait_with_timeout(session, Duration::from_secs(90));
    let want: String = (1..=lines).map(|i| format!("open-{i}\n")).collect();
    assert!(out.status.success() && String::from_utf8_lossy(&out.stdout) == want, "{}", out.describe());
    let (meta, cast) = demo.wait_recording(|m, _| m["id"] == id.as_str());
    assert_eq!(meta["status"], "complete", "{meta}");
    let recorded: Vec<String> =
        cast.lines().skip(1).filter_map(|l| serde_json::from_str::<Value>(l).ok()).filter(|v| v[1] == "o").map(|v| v[2].as_str().unwrap_or("").to_string()).collect();
    let text: String = recorded.concat();
    // Lines from before the crash and after it, each once and in order; what no
    // recorder took is said by a marker.
    let mut last = 0;
    for line in text.lines() {
        let n: usize = line.strip_prefix("open-").and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("{line:?} in\n{cast}"));
        assert!(n > last, "open-{n} after open-{last}: twice or out of order:\n{cast}");
        last = n;
    }
    assert!(text.contains("open-1\n") && text.contains(&format!("open-{lines}\n")), "recorded before and after the crash:\n{cast}");
    if text.lines().count() < lines {
        assert!(cast.contains("not recorded"), "the gap is marked:\n{cast}");
    }
}

/// A writer's raw connection to the demo recorder, speaking the recorder protocol.
struct Writer {
    input: kubetape::net::conn::Input,
    out: kubetape::net::conn::WriteHalf,
}

impl Writer {
    fn connect(demo: &Demo) -> Writer {
        support::init_crypto();
        let pem = |name: &str| std::fs::read(demo.path(&format!("pki/{name}"))).expect(name);
        let roots = kubetape::net::tls::roots_from_pem(&pem("recorder-ca.pem"), "ca").expect("roots");
        let certs = kubetape::net::tls::certs_from_pem(&pem("recorder-writer.pem"), "cert").expect("cert");
        let key = kubetape::net::tls::key_from_pem(&pem("recorder-writer-key.pem"), "key").expect("key");
        let url = format!("https://127.0.0.1:{}", demo.listen_port("recorder"));
        let target = kubetape::recording::client::target("demo", &url, roots, Some((certs, key))).expect("target");
        let (input, out, _) =
            kubetape::recording::client::dial(&target, kubetape::record::protocol::PATH, kubetape::record::protocol::SUBPROTOCOL, Duration::from_secs(10)).expect("dial");
        Writer { input, out }
    }

    fn text(&mut self, msg: &Value) {
        use std::io::Write;
        self.out.write_all(&kubetape::wire::ws::encode_frame(true, kubetape::wire::ws::OP_TEXT, Some([1, 2, 3, 4]), msg.to_string().as_bytes())).expect("send");
    }

    fn lines(&mut self, lines: &str) {
        use std::io::Write;
        self.out.write_all(&kubetape::wire::ws::encode_frame(true, kubetape::wire::ws::OP_BINARY, Some([1, 2, 3, 4]), lines.as_bytes())).expect("send");
    }

    /// The next acknowledgement, or the close's reason.
    fn answer(&mut self) -> Result<u64, String> {
        loop {
            match kubetape::net::websocket::next_frame(&mut self.input) {
                Ok(Some(f)) if f.opcode == kubetape::wire::ws::OP_TEXT => {
                    return Ok(serde_json::from_slice::<Value>(&f.payload).ok().and_then(|v| v["acked"].as_u64()).expect("an ack"))
                }
                Ok(Some(f)) if f.opcode == kubetape::wire::ws::OP_CLOSE => return Err(kubetape::wire::ws::close_reason(&f.payload)),
                Ok(Some(_)) => continue,
                other => return Err(format!("connection ended: {other:?}")),
            }
        }
    }

    /// Acknowledgements until one reaches `n`.
    fn acked(&mut self, n: u64) {
        while self.answer().expect("acknowledged") < n {}
    }
}

#[test]
fn a_writer_cannot_rewrite_a_recording_by_continuing_it() {
    let demo = Demo::start();
    demo.disable_events();
    let header = json!({"version": 2, "width": 80, "height": 24, "kubetape": {"sessionId": "w-1", "user": {"name": "alice"}, "startTime": "2026-12-01T10:00:00.000Z"}});
    let header_len = format!("{header}\n").len() as u64;
    let line = "[0.100000, \"o\", \"first\\n\"]\n";

    // A session whose stream breaks: the recording is truncated, its bytes kept.
    let mut w = Writer::connect(&demo);
    w.text(&json!({"type": "start", "id": "w-1", "header": header}));
    w.acked(header_len);
    w.lines(line);
    w.acked(header_len + line.len() as u64);
    drop(w);
    let (meta, before) = demo.wait_recording(|m, _| m["id"] == "w-1");
    assert_eq!(meta["status"], "truncated", "{meta}");
    let at = before.len() as u64;

    // Another header (someone else's session under this id), a place before the
    // header, a gap larger than any lost recorder leaves: refused, the recording intact.
    let other = json!({"version": 2, "kubetape": {"sessionId": "w-1", "user": {"name": "mallory"}}});
    for (h, offset, want) in
        [(&other, at, "another writer or header"), (&header, header_len - 1, "cannot be continued at byte"), (&header, at + (1 << 40), "cannot be continued at byte")]
    {
        let mut w = Writer::connect(&demo);
        w.text(&json!({"type": "start", "id": "w-1", "header": h, "resume": offset}));
        let refused = w.answer().expect_err("refused");
        assert!(refused.contains(want), "{want:?}: {refused}");
    }
    assert_eq!(demo.wait_recording(|m, _| m["id"] == "w-1").1, before, "untouched");

    // The same writer and header continue it where it was acknowledged, then end it.
    let mut w = Writer::connect(&demo);
    w.text(&json!({"type": "start", "id": "w-1", "header": header, "resume": at}));
    assert_eq!(w.answer(), Ok(at), "continued at the acknowledged byte");
    let more = "[0.200000, \"o\", \"second\\n\"]\n";
    w.lines(more);
    w.acked(at + more.len() as u64);
    w.text(&json!({"type": "end", "outcome": "complete", "exitCode": 0, "reason": null}));
    let (meta, cast) = demo.wait_recording(|m, _| m["id"] == "w-1" && m["status"] == "complete");
    assert_eq!(cast, format!("{before}{more}"), "{meta}");

    // Complete, it can no longer be continued (nor cut back).
    let mut w = Writer::connect(&demo);
    w.text(&json!({"type": "start", "id": "w-1", "header": header, "resume": header_len}));
    let refused = w.answer().expect_err("refused");
    assert!(refused.contains("is complete"), "{refused}");
    assert_eq!(demo.wait_recording(|m, _| m["id"] == "w-1").1, cast);
}
