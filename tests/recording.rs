//! Session recording end to end: real kubectl over SPDY and WebSocket through the
//! proxy, recorded by a real `kubetape recorder`, checked on disk, through the
//! recorder's API, and with a real asciicast player.

mod support;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::{asciinema_cat, Demo, Kubectl, OutputExt, Proto};

/// Event codes and data of a cast, without the header and timestamps.
fn events(cast: &str) -> Vec<(String, String)> {
    cast.lines().skip(1).filter_map(|l| serde_json::from_str::<Value>(l).ok()).map(|e| (e[1].as_str().unwrap_or("").to_string(), e[2].as_str().unwrap_or("").to_string())).collect()
}

fn text(cast: &str, code: &str) -> String {
    events(cast).into_iter().filter(|(c, _)| c == code).map(|(_, d)| d).collect()
}

fn header(cast: &str) -> Value {
    serde_json::from_str(cast.lines().next().unwrap_or("{}")).unwrap_or_default()
}

#[test]
fn exec_sessions_are_recorded_over_both_protocols_without_stdin() {
    let demo = Demo::start();
    for proto in [Proto::WebSocket, Proto::Spdy] {
        let k = Kubectl::new(&demo, "kubeconfig", "1.32", proto);
        let marker = format!("got-{proto}");
        let script = format!("read s; echo {marker}-${{#s}}; echo to-stderr >&2; exit 3");
        let out = k.run_timeout(&["exec", "-i", "web-0", "--", "sh", "-c", &script], Some(b"hunter2-secret\n"), Duration::from_secs(30));
        assert_eq!(out.status.code(), Some(3), "{}", out.describe());
        let (meta, cast) = demo.wait_recording(|_, c| c.contains(&marker));
        assert_eq!(meta["status"], "complete", "{meta}");
        assert_eq!(meta["exitCode"], 3);
        assert!(!cast.contains("hunter2"), "stdin leaked into the recording: {cast}");
        assert_eq!(text(&cast, "o"), format!("{marker}-14\n"));
        assert_eq!(text(&cast, "e"), "to-stderr\n");
        assert!(events(&cast).contains(&("m".into(), "exit:3".into())), "{cast}");
        let h = header(&cast);
        let kt = &h["kubetape"];
        assert_eq!(h["version"], 2);
        assert_eq!((kt["type"].as_str(), kt["namespace"].as_str(), kt["pod"].as_str(), kt["container"].as_str()), (Some("exec"), Some("default"), Some("web-0"), Some("main")));
        assert_eq!(kt["command"], serde_json::json!(["sh", "-c", script]));
        assert_eq!(kt["user"]["name"], "alice");
        assert_eq!(kt["user"]["authenticatedBy"], "x509");
        assert_eq!(kt["impersonated"]["user"], "alice");
        assert_eq!(kt["protocol"], if proto == Proto::WebSocket { "websocket" } else { "SPDY/3.1" });
        assert!(kt["startTime"].as_str().is_some_and(|t| t.contains('.')), "sub-second start time: {kt}");
        assert!(asciinema_cat(&cast).contains(&format!("{marker}-14")), "a real player reproduces the output");
    }
}

#[test]
fn terminal_attach_debug_and_run_sessions_are_recorded() {
    let demo = Demo::start();
    for proto in [Proto::WebSocket, Proto::Spdy] {
        let k = Kubectl::new(&demo, "kubeconfig", "1.32", proto);
        let out = k.run_tty(&["exec", "-it", "web-0", "--", "sh"], "echo tty-$((6*7)); exit\n", Duration::from_secs(30));
        assert!(out.status.success(), "{}", out.describe());
        let (_, cast) = demo.wait_recording(|m, c| m["session"]["tty"] == true && c.contains("tty-42") && !c.contains("\"attach\""));
        assert!(events(&cast).contains(&("r".into(), "120x40".into())), "the terminal size is recorded as COLSxROWS: {cast}");
        assert!(asciinema_cat(&cast).contains("tty-42"));

        let out = k.run_tty(&["debug", "-it", "web-0", "--image=busybox", "--target=main", "--", "sh"], "echo dbg-$((6*7)); exit\n", Duration::from_secs(30));
        assert!(out.status.success(), "{}", out.describe());
        let (meta, cast) = demo.wait_recording(|m, c| m["status"] != "recording" && c.contains("dbg-42"));
        let s = &meta["session"];
        assert_eq!((&s["type"], &s["image"], &s["targetContainer"], &s["command"]), (&json!("debug"), &json!("busybox"), &json!("main"), &json!(["sh"])), "{meta}");
        assert!(s["container"].as_str().unwrap_or("").starts_with("debugger-"), "{meta}");
        assert_eq!(meta["exitCode"], 0, "the debugger's exit status, from the pod: {meta}");
        assert!(text(&cast, "o").contains("dbg-42"));

        let name = format!("runner-{}", kubetape::net::random::hex(4));
        let out = k.run_tty(&["run", "-it", "--rm", "--restart=Never", "--image=busybox", &name, "--", "sh"], "echo run-$((6*7)); exit\n", Duration::from_secs(40));
        assert!(String::from_utf8_lossy(&out.stdout).contains("run-42"), "{}", out.describe());
        let (meta, _) = demo.wait_recording(|m, c| m["session"]["pod"] == name.as_str() && m["status"] != "recording" && c.contains("run-42"));
        assert_eq!((&meta["session"]["type"], &meta["session"]["image"], &meta["session"]["command"]), (&json!("run"), &json!("busybox"), &json!(["sh"])), "{meta}");
    }
}

#[test]
fn cp_download_is_recovered_bit_exact_from_the_recording() {
    let demo = Demo::start();
    let k = Kubectl::new(&demo, "kubeconfig", "1.32", Proto::WebSocket);
    let mut data = vec![0u8; 1024 * 1024];
    kubetape::net::random::fill(&mut data);
    std::fs::write(demo.path("sim-data/default/web-0/payload.bin"), &data).unwrap();
    let local = demo.path("downloaded.bin");
    let out = k.run_timeout(&["cp", "web-0:payload.bin", local.to_str().unwrap()], None, Duration::from_secs(60));
    assert!(out.status.success(), "{}", out.describe());
    let (_, cast) = demo.wait_recording(|m, _| m["session"]["command"][0] == "tar");
    // The documented recovery: `kubetape play --raw stdout`.
    let dir = support::TempDir::new("untar");
    std::fs::write(dir.0.join("cp.cast"), &cast).unwrap();
    let play = std::process::Command::new(support::BIN).args(["play", "--raw", "stdout", "--file"]).arg(dir.0.join("cp.cast")).output().unwrap();
    assert!(play.status.success(), "{}", String::from_utf8_lossy(&play.stderr));
    let tar = play.stdout;
    let mut untar = std::process::Command::new("tar").args(["xf", "-", "-C"]).arg(&dir.0).stdin(std::process::Stdio::piped()).spawn().unwrap();
    untar.stdin.take().unwrap().write_all(&tar).unwrap();
    assert!(untar.wait().unwrap().success(), "the recovered stream is a valid tar");
    assert_eq!(std::fs::read(dir.0.join("payload.bin")).unwrap(), data, "bit-exact");
    // The same command run again produces the same bytes kubectl received.
    let again = k.run_timeout(&["exec", "web-0", "--", "tar", "cf", "-", "payload.bin"], None, Duration::from_secs(60));
    assert_eq!(again.stdout, tar);
}

fn exec_marker(k: &Kubectl, marker: &str) -> std::process::Output {
    k.run_timeout(&["exec", "web-0", "--", "touch", marker], None, Duration::from_secs(30))
}

#[test]
fn recorder_down_fail_closed_refuses_and_nothing_runs_fail_open_runs() {
    let demo = Demo::start();
    // Sessions only (tests/events.rs covers fail-closed events).
    demo.disable_events();
    demo.kill("recorder");
    let bob = Kubectl::new(&demo, "bob.kubeconfig", "1.32", Proto::WebSocket);
    for proto in [Proto::WebSocket, Proto::Spdy] {
        let bob = Kubectl { proto, ..bob.clone() };
        let marker = format!("bob-was-here-{proto}");
        let out = exec_marker(&bob, &marker);
        assert!(!out.status.success(), "{}", out.describe());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("must be recorded"), "the user is told why: {err}");
        assert!(!demo.path(&format!("sim-data/default/web-0/{marker}")).exists(), "the command ran although it could not be recorded");
    }
    let alice = Kubectl::new(&demo, "kubeconfig", "1.32", Proto::WebSocket);
    let out = exec_marker(&alice, "alice-was-here");
    assert!(out.status.success(), "fail-open runs unrecorded: {}", out.describe());
    assert!(demo.path("sim-data/default/web-0/alice-was-here").exists());
    assert!(std::fs::read_to_string(demo.path("proxy.log")).unwrap().contains("session not recorded"));
    // kubectl 1.32 retries a refused WebSocket upgrade over SPDY: at least one per run.
    assert!(demo.proxy_metric("kubetape_proxy_sessions_refused_unrecordable_total") >= 2);
    assert_eq!(demo.proxy_metric("kubetape_proxy_sessions_unrecorded_total"), 1);
}

/// The proxy's count of acknowledged bytes for a session, from its end-of-session log line.
fn acked_from_log(demo: &Demo, session_marker: &str) -> Option<u64> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let log = std::fs::read_to_string(demo.path("proxy.log")).ok()?;
        if let Some(line) = log.lines().rev().find(|l| l.contains("session ended") && l.contains(session_marker)) {
            return line.split_whitespace().find_map(|f| f.strip_prefix("acked_bytes=")).and_then(|v| v.parse().ok());
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn recorder_killed_mid_session_fail_closed_ends_it_fail_open_carries_on() {
    let demo = Demo::start();
    let script = "i=0; while [ $i -lt 30 ]; do echo line-$i; i=$((i+1)); sleep 0.2; done";
    let run = |kc: &str| {
        let k = Kubectl::new(&demo, kc, "1.32", Proto::WebSocket);
        std::thread::spawn(move || k.run_timeout(&["exec", "web-0", "--", "sh", "-c", script], None, Duration::from_secs(60)))
    };
    let bob = run("bob.kubeconfig");
    let alice = run("kubeconfig");
    std::thread::sleep(Duration::from_millis(1500));
    let killed_at = Instant::now();
    demo.signal("recorder", libc::SIGKILL);
    let bob = bob.join().unwrap();
    let bob_took = killed_at.elapsed();
    let alice = alice.join().unwrap();
    assert!(!bob.status.success(), "fail-closed session ended: {}", bob.describe());
    // The Status on the error channel, not a close code: kubectl prints the reason.
    assert!(String::from_utf8_lossy(&bob.stderr).contains("must be recorded"), "bob is told why: {}", bob.describe());
    assert!(bob_took < Duration::from_secs(15), "ended within seconds, took {bob_took:?}");
    assert!(!bob.stdout_str().contains("line-29"));
    assert!(alice.status.success() && alice.stdout_str().contains("line-29"), "fail-open carries on: {}", alice.describe());
    let deadline = Instant::now() + Duration::from_secs(15);
    while demo.proxy_metric("kubetape_proxy_recordings_truncated_total") < 2 {
        assert!(Instant::now() < deadline, "{}", demo.logs());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(demo.proxy_metric("kubetape_proxy_sessions_ended_by_recording_failure_total"), 1);

    // Every acknowledged byte is on disk: restart the recorder, which marks both
    // recordings interrupted and keeps their acknowledged lines.
    let _recorder = demo.restart("recorder");
    let recs = demo.recordings();
    assert_eq!(recs.len(), 2, "{recs:#?}");
    for (meta, cast) in &recs {
        assert_eq!(meta["status"], "interrupted", "{meta}");
        assert!(cast.ends_with('\n'), "only whole lines are kept");
        assert!(text(cast, "o").starts_with("line-0\nline-1\n"), "{cast}");
        let id = meta["id"].as_str().unwrap();
        let acked = acked_from_log(&demo, id).unwrap_or_else(|| panic!("no acked_bytes for {id} in the proxy log:\n{}", demo.logs()));
        assert!(cast.len() as u64 >= acked, "{} bytes on disk, {acked} were acknowledged", cast.len());
    }
}

/// A TCP relay that writes what it reads one byte at a time.
fn one_byte_relay(target: String) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let Ok(up) = TcpStream::connect(&target) else { continue };
            for (mut from, mut to) in [(conn.try_clone().unwrap(), up.try_clone().unwrap()), (up, conn)] {
                std::thread::spawn(move || {
                    let _ = to.set_nodelay(true);
                    let mut buf = [0u8; 4096];
                    while let Ok(n @ 1..) = from.read(&mut buf) {
                        for b in &buf[..n] {
                            if to.write_all(&[*b]).is_err() {
                                return;
                            }
                        }
                    }
                    let _ = to.shutdown(std::net::Shutdown::Write);
                });
            }
        }
    });
    port
}

#[test]
fn a_relay_writing_one_byte_at_a_time_yields_the_same_recording() {
    let demo = Demo::start();
    let direct = Kubectl::new(&demo, "kubeconfig", "1.32", Proto::Spdy);
    let port = one_byte_relay(demo.proxy_addr());
    let relayed_kc = demo.path("relayed.kubeconfig");
    let kc = std::fs::read_to_string(demo.path("kubeconfig")).unwrap().replace(&demo.proxy_addr(), &format!("127.0.0.1:{port}"));
    std::fs::write(&relayed_kc, kc).unwrap();
    let relayed = Kubectl { kubeconfig: relayed_kc, ..direct.clone() };
    let mut casts = Vec::new();
    for (name, k) in [("direct", &direct), ("relayed", &relayed)] {
        // The comment names the run, so each run's own recording is the one compared.
        let script = format!("printf 'héllo wörld ✓\\n'; printf 'e\\n' >&2; seq 1 300; exit 4 # {name}");
        let out = k.run_timeout(&["exec", "web-0", "--", "sh", "-c", &script], None, Duration::from_secs(60));
        assert_eq!(out.status.code(), Some(4), "{name}: {}", out.describe());
        let (_, cast) = demo.wait_recording(|m, _| m["session"]["command"].to_string().contains(&format!("# {name}")));
        casts.push(events(&cast));
    }
    // stdout and stderr come from two pipes, so only the order within each is fixed.
    let by_code = |evs: &Vec<(String, String)>, code: &str| -> String { evs.iter().filter(|(c, _)| c == code).map(|(_, d)| d.as_str()).collect() };
    for code in ["o", "e", "m", "v", "b"] {
        assert_eq!(by_code(&casts[0], code), by_code(&casts[1], code), "events {code}");
    }
    assert!(by_code(&casts[0], "o").starts_with("héllo wörld ✓\n1\n2\n"));
}

#[test]
fn the_recorder_api_serves_readers_only() {
    let demo = Demo::start();
    let k = Kubectl::new(&demo, "kubeconfig", "1.32", Proto::WebSocket);
    assert!(k.run(&["exec", "web-0", "--", "echo", "api-check"]).status.success());
    let (meta, _) = demo.wait_recording(|_, c| c.contains("api-check"));
    let id = meta["id"].as_str().unwrap().to_string();
    let get = |who: Option<&str>, path: &str| demo.recorder_get(who, path);
    let (code, body) = get(Some("recorder-reader"), "/v1/recordings?user=alice&namespace=default&pod=web-0");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains(&id), "{body}");
    let (code, body) = get(Some("recorder-reader"), "/v1/recordings?user=bob");
    assert_eq!((code, body.contains(&id)), (200, false), "{body}");
    let (code, body) = get(Some("recorder-reader"), &format!("/v1/recordings/{id}/cast"));
    assert_eq!(code, 200);
    assert!(body.contains("api-check"));
    let (code, body) = get(Some("recorder-reader"), "/metrics");
    assert_eq!(code, 200);
    assert!(body.contains("kubetape_recorder_sessions_complete_total 1"), "{body}");
    assert_eq!(get(Some("recorder-writer"), "/v1/recordings").0, 403, "writers cannot read");
    assert_eq!(get(None, "/v1/recordings").0, 401, "no certificate, no recordings");
    assert_eq!(get(Some("recorder-reader"), "/v1/recordings/..%2F..%2Fetc").0, 404);
    assert_eq!(get(None, "/healthz").0, 200);
    // The same list from the storage directory, read-only.
    let ls = std::process::Command::new(support::BIN).args(["ls", "--user", "alice", "--storage-dir"]).arg(demo.path("recordings")).output().unwrap();
    let text = String::from_utf8_lossy(&ls.stdout);
    assert!(ls.status.success() && text.contains(&id) && text.contains("default/web-0") && text.contains("echo api-check"), "{text}");
}

#[test]
fn a_command_that_cannot_start_says_why_in_its_recording() {
    let demo = Demo::start();
    let k = Kubectl::new(&demo, "kubeconfig", "1.32", Proto::WebSocket);
    let out = k.run(&["exec", "web-0", "--", "no-such-command-42"]);
    assert!(!out.status.success(), "{}", out.describe());
    let (meta, _) = demo.wait_recording(|m, _| m["session"]["command"][0] == "no-such-command-42" && m["status"] != "recording");
    let reason = meta["reason"].as_str().unwrap_or("");
    assert!(reason.contains("no-such-command-42") && !reason.starts_with('{'), "the sidecar says why, as kubectl does: {meta}");
}
