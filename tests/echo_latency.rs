//! Typing latency through a recorded terminal session: one byte sent on stdin of a
//! tty exec session whose command echoes it at once (`stty raw -echo; cat`, after a
//! `R` saying the terminal is raw), timed
//! until it comes back on stdout, for alice (fail-open) and bob (fail-closed, whose
//! output waits for the recorder's acknowledgement) in turn on the same demo.
//!
//! The test asserts what must hold whatever the timing: every byte comes back, in
//! order, and is in each session's recording. It prints the round-trip figures
//! (p50, p99, max) for `scripts/bench`, which runs it with more samples in release
//! mode; it never judges them. Samples per user: `KUBETAPE_ECHO_SAMPLES` (default 40).

mod support;

use std::time::{Duration, Instant};

use kubetape::wire::asciicast::{recover_stream, STDOUT};
use support::streams::{self, Answer, Session, Upgrade};
use support::Demo;

const DEFAULT_SAMPLES: usize = 40;
/// One byte must come back within this, or the session is broken (not slow).
const ROUND_TRIP_LIMIT: Duration = Duration::from_secs(10);

fn open(demo: &Demo, kubeconfig: &str, marker: &str) -> Box<Session> {
    let target =
        format!("/api/v1/namespaces/default/pods/web-0/exec?command=sh&command=-c&command=stty+raw+-echo+%26%26+printf+R+%26%26+cat+%23+{marker}&stdin=true&stdout=true&tty=true");
    match streams::send(&demo.proxy_addr(), &demo.path(kubeconfig), "GET", &target, Upgrade::WebSocket("v5.channel.k8s.io")) {
        Ok(Answer::Switched(s)) => s,
        Ok(Answer::Response { status, body }) => panic!("{kubeconfig}: exec answered {status}: {body}"),
        Err(e) => panic!("{kubeconfig}: {e}"),
    }
}

/// Sends one byte on stdin and waits for stdout to reach `want` bytes.
fn round_trip(s: &mut Session, byte: u8, want: usize) -> Duration {
    let sent = Instant::now();
    s.send(&streams::ws_frame(true, kubetape::wire::ws::OP_BINARY, &[kubetape::wire::channel::STDIN, byte])).expect("stdin");
    let got = s.wait(ROUND_TRIP_LIMIT, |r| r.bytes(STDOUT.into()).len() >= want);
    let took = sent.elapsed();
    assert!(got.bytes(STDOUT.into()).len() >= want, "byte {want} did not come back within {ROUND_TRIP_LIMIT:?}: {got:?}");
    took
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

#[test]
fn typing_through_fail_open_and_fail_closed_sessions() {
    let samples: usize = std::env::var("KUBETAPE_ECHO_SAMPLES").ok().and_then(|v| v.parse().ok()).unwrap_or(DEFAULT_SAMPLES);
    let demo = Demo::start();
    let users = [("fail-open", "kubeconfig"), ("fail-closed", "bob.kubeconfig")];
    let markers: Vec<String> = users.iter().map(|(mode, _)| format!("echo-{mode}-{}", kubetape::net::random::hex(4))).collect();
    let mut sessions: Vec<Box<Session>> = users.iter().zip(&markers).map(|((_, kc), m)| open(&demo, kc, m)).collect();
    // Nothing is typed before the terminal is raw, or the PTY would echo it too.
    for s in &sessions {
        let got = s.wait(ROUND_TRIP_LIMIT, |r| !r.bytes(STDOUT.into()).is_empty());
        assert_eq!(got.bytes(STDOUT.into()), b"R", "the session starts: {got:?}");
    }
    let mut times: Vec<Vec<Duration>> = vec![Vec::new(); users.len()];
    for i in 0..samples {
        // Interleaved, so both modes see the same machine at the same moments.
        for (s, t) in sessions.iter_mut().zip(&mut times) {
            t.push(round_trip(s, b'a' + (i % 26) as u8, i + 2));
        }
    }
    let sent: Vec<u8> = std::iter::once(b'R').chain((0..samples).map(|i| b'a' + (i % 26) as u8)).collect();
    for ((s, (mode, _)), marker) in sessions.into_iter().zip(&users).zip(&markers) {
        let got = s.hang_up();
        assert_eq!(got.bytes(STDOUT.into()), &sent[..], "{mode}: what came back");
        let (meta, cast) = demo.wait_recording(|m, _| m["session"]["command"].to_string().contains(marker.as_str()));
        let recorded = recover_stream(&cast, STDOUT).expect("recording parses");
        assert_eq!(recorded, sent, "{mode}: the recording holds every echoed byte ({meta})");
    }
    for ((mode, _), t) in users.iter().zip(&mut times) {
        t.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        println!("echo latency: {mode} n={} p50={:.2}ms p99={:.2}ms max={:.2}ms", t.len(), ms(percentile(t, 0.5)), ms(percentile(t, 0.99)), ms(*t.last().expect("samples")));
    }
}
