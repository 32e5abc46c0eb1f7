//! A fail-closed session shows its user only output the recorder has made durable.
//!
//! bob (fail-closed) runs a command that prints numbered lines steadily; after a
//! seeded random number of lines has reached kubectl, the recorder is frozen
//! (SIGSTOP) or killed (SIGKILL). kubectl must then end (after the silence bound for
//! a frozen recorder, within seconds for a killed one) and say why, and every line it
//! printed must be in the recording: for a frozen recorder, in the `.cast` on disk
//! while the recorder is still frozen (what it had written when it stopped); for a
//! killed one, in the `.cast` the restarted recorder marks interrupted. alice
//! (fail-open) runs to completion through a frozen recorder, as her contract says.
//!
//! The seed is printed; `KUBETAPE_TEST_SEED=N` replays it. Each case prints K (lines
//! seen before the fault), the lines kubectl received and the lines recorded.

mod support;

use std::io::Read;
use std::process::{Child, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kubetape::wire::asciicast::{recover_stream, STDOUT};
use serde_json::Value;
use support::{Demo, Kubectl, Proto, Spawned};

/// bob's command prints this many lines (about 25 s): far past the silence bound, so
/// a session that is not ended cannot finish before the test looks.
const LINES_FAIL_CLOSED: usize = 2000;
/// alice's command, which must run to completion (about 10 s: the freeze outlasts
/// the silence bound while it runs).
const LINES_FAIL_OPEN: usize = 1000;
/// The fault comes after K lines reached kubectl, K drawn from this range.
const K_RANGE: (usize, usize) = (20, 300);
/// A frozen recorder is treated as lost after this much silence (README, Failure policy).
const SILENCE_BOUND: Duration = Duration::from_secs(5);
/// How long past the silence bound (or past a kill) kubectl may take to end.
const END_SLACK: Duration = Duration::from_secs(10);
/// kubectl must print K lines within this.
const FIRST_LINES_DEADLINE: Duration = Duration::from_secs(30);
/// alice's whole session must finish within this.
const FAIL_OPEN_DEADLINE: Duration = Duration::from_secs(60);
/// Random points per fault and protocol.
const CASES_PER_PROTO: usize = 2;

/// The cases measure a steady output stream against a recorder's pace: one at a time
/// on these two cores.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// The run's seed: `KUBETAPE_TEST_SEED`, or one drawn now; printed either way.
fn seed() -> u64 {
    static SEED: OnceLock<u64> = OnceLock::new();
    *SEED.get_or_init(|| {
        let s = std::env::var("KUBETAPE_TEST_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or_else(|| {
            let mut b = [0u8; 8];
            kubetape::net::random::fill(&mut b);
            u64::from_le_bytes(b) >> 1
        });
        eprintln!("stall: seed={s} (replay with KUBETAPE_TEST_SEED={s})");
        s
    })
}

/// splitmix64, seeded per test so each test's draws do not depend on the others'.
struct Rng(u64);

impl Rng {
    fn for_test(name: &str) -> Rng {
        let mut r = Rng(seed());
        for b in name.bytes() {
            r.0 ^= u64::from(b);
            r.next();
        }
        r
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn in_range(&mut self, (lo, hi): (usize, usize)) -> usize {
        lo + (self.next() % (hi - lo + 1) as u64) as usize
    }
}

/// Prints `line-0` … `line-{n-1}`, one every 10 ms or so. The tag lands in the
/// recording's header (its command), not in the output.
fn numbered_lines(tag: &str, n: usize) -> String {
    format!("tag={tag}; i=0; while [ $i -lt {n} ]; do echo line-$i; i=$((i+1)); sleep 0.01; done")
}

/// A kubectl whose stdout and stderr are read as they arrive.
struct Running {
    child: Child,
    out: Arc<Mutex<Vec<u8>>>,
    err: Arc<Mutex<Vec<u8>>>,
    readers: Vec<JoinHandle<()>>,
}

fn drain(mut from: impl Read + Send + 'static, into: Arc<Mutex<Vec<u8>>>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = from.read(&mut buf) {
            into.lock().unwrap_or_else(|e| e.into_inner()).extend_from_slice(&buf[..n]);
        }
    })
}

impl Running {
    fn start(k: &Kubectl, args: &[&str]) -> Running {
        let mut c = k.command(args);
        c.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = c.spawn().expect("starting kubectl");
        let (out, err) = (Arc::new(Mutex::new(Vec::new())), Arc::new(Mutex::new(Vec::new())));
        let readers = vec![drain(child.stdout.take().expect("stdout pipe"), out.clone()), drain(child.stderr.take().expect("stderr pipe"), err.clone())];
        Running { child, out, err, readers }
    }

    fn lines(&self) -> usize {
        self.out.lock().unwrap_or_else(|e| e.into_inner()).iter().filter(|b| **b == b'\n').count()
    }

    /// Waits until kubectl printed `n` lines; false if it exited first or time ran out.
    fn wait_lines(&mut self, n: usize, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while self.lines() < n {
            if Instant::now() > deadline || matches!(self.child.try_wait(), Ok(Some(_))) {
                return self.lines() >= n;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        true
    }

    /// Waits for kubectl to exit; `None` if it is still running after `within`.
    fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills kubectl if it still runs; returns its stdout and stderr.
    fn finish(mut self) -> (Vec<u8>, String) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        let out = std::mem::take(&mut *self.out.lock().unwrap_or_else(|e| e.into_inner()));
        let err = String::from_utf8_lossy(&self.err.lock().unwrap_or_else(|e| e.into_inner())).into_owned();
        (out, err)
    }
}

/// The demo's recorder, or the one started again after it was killed.
struct Recorder<'a> {
    demo: &'a Demo,
    restarted: Option<Spawned>,
}

impl Recorder<'_> {
    fn signal(&self, sig: i32) {
        let pid = self.restarted.as_ref().map(|s| s.0.id() as i32).unwrap_or_else(|| self.demo.pid("recorder"));
        // SAFETY: signalling the recorder this test runs, by its pid.
        unsafe { libc::kill(pid, sig) };
    }

    /// Starts the recorder again from its command line; on start it marks recordings
    /// still saying `recording` as interrupted.
    fn restart(&mut self) {
        self.restarted = None;
        self.restarted = Some(self.demo.restart("recorder"));
    }
}

/// The recording whose header names `tag` (its command), as it is on disk now.
fn recording(demo: &Demo, tag: &str) -> Option<(Value, String)> {
    let needle = format!("tag={tag};");
    demo.recordings().into_iter().find(|(_, cast)| cast.lines().next().is_some_and(|h| h.contains(&needle)))
}

/// Waits for that recording to leave status `recording`.
fn settled(demo: &Demo, tag: &str) -> Option<(Value, String)> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match recording(demo, tag) {
            Some(r) if r.0["status"] != "recording" => return Some(r),
            _ if Instant::now() > deadline => return recording(demo, tag),
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// The stdout a cast holds, up to its last whole line (a frozen recorder may have
/// stopped in the middle of one).
fn recorded_stdout(cast: &str) -> Vec<u8> {
    let whole = &cast[..cast.rfind('\n').map_or(0, |i| i + 1)];
    recover_stream(whole, STDOUT).unwrap_or_else(|e| panic!("recovering stdout: {e}\n{whole}"))
}

fn count_lines(b: &[u8]) -> usize {
    b.iter().filter(|c| **c == b'\n').count()
}

/// Err unless what kubectl received is a prefix of what the recording holds.
fn all_received_recorded(received: &[u8], recorded: &[u8], which: &str) -> Result<(), String> {
    if recorded.starts_with(received) {
        return Ok(());
    }
    let rec = String::from_utf8_lossy(recorded);
    let kept: std::collections::HashSet<&str> = rec.lines().collect();
    let got = String::from_utf8_lossy(received);
    let missing: Vec<&str> = got.lines().filter(|l| !kept.contains(l)).collect();
    Err(format!(
        "{} of the {} lines kubectl received are not in the recording {which} (it holds {}): first {:?}, last {:?}",
        missing.len(),
        count_lines(received),
        count_lines(recorded),
        missing.first().copied().unwrap_or("(none: the order differs)"),
        missing.last().copied().unwrap_or(""),
    ))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    Stop,
    Kill,
}

/// One fail-closed case: returns its summary line and what went wrong, if anything.
fn fail_closed_case(demo: &Demo, recorder: &mut Recorder, proto: Proto, fault: Fault, k: usize, tag: &str) -> (String, Vec<String>) {
    let bob = Kubectl::new(demo, "bob.kubeconfig", "1.32", proto);
    let script = numbered_lines(tag, LINES_FAIL_CLOSED);
    let mut run = Running::start(&bob, &["exec", "web-0", "--", "sh", "-c", &script]);
    let mut failures = Vec::new();
    if !run.wait_lines(k, FIRST_LINES_DEADLINE) {
        let lines = run.lines();
        let (_, err) = run.finish();
        failures.push(format!("kubectl printed only {lines} lines before exiting or {FIRST_LINES_DEADLINE:?}, wanted {k}: {err}"));
        return (format!("{tag}: K={k} never reached"), failures);
    }
    let signal = if fault == Fault::Stop { libc::SIGSTOP } else { libc::SIGKILL };
    recorder.signal(signal);
    let faulted_at = Instant::now();
    let at_fault = run.lines();
    let bound = if fault == Fault::Stop { SILENCE_BOUND + END_SLACK } else { END_SLACK };
    let status = run.wait_exit(bound);
    let ended_after = faulted_at.elapsed();
    // Still frozen: the disk holds exactly what the recorder wrote before it stopped.
    let at_freeze = match fault {
        Fault::Stop => recording(demo, tag).map(|(_, cast)| recorded_stdout(&cast)),
        Fault::Kill => None,
    };
    let (out, err) = run.finish();
    match fault {
        Fault::Stop => recorder.signal(libc::SIGCONT),
        Fault::Kill => recorder.restart(),
    }
    let final_rec = settled(demo, tag);
    let final_stdout = final_rec.as_ref().map(|(_, c)| recorded_stdout(c));
    let last_line = format!("line-{}\n", LINES_FAIL_CLOSED - 1);

    let summary = format!(
        "{tag}: K={k} lines_at_fault={at_fault} received={} recorded_while_frozen={} recorded_final={} status={} kubectl={} after {:.1}s",
        count_lines(&out),
        at_freeze.as_deref().map_or("-".into(), |s| count_lines(s).to_string()),
        final_stdout.as_deref().map_or("none".into(), |s| count_lines(s).to_string()),
        final_rec.as_ref().map_or("none".into(), |(m, _)| m["status"].to_string()),
        status.map_or("still running".into(), |s| s.to_string()),
        ended_after.as_secs_f64(),
    );
    match status {
        None => failures.push(format!("kubectl still running {bound:?} after the recorder was {fault:?}ped: the session was not ended")),
        Some(s) if s.success() => failures.push("kubectl exited 0: the session was not ended".into()),
        Some(_) => {}
    }
    if String::from_utf8_lossy(&out).contains(last_line.trim_end()) {
        failures.push(format!("the session ran to completion ({}) with the recorder {fault:?}ped", last_line.trim_end()));
    }
    if status.is_some() && !err.contains("recording failed") {
        failures.push(format!("kubectl is not told why the session ended: stderr={err:?}"));
    }
    match (&at_freeze, fault) {
        (Some(rec), Fault::Stop) => failures.extend(all_received_recorded(&out, rec, "written before the recorder froze").err()),
        (None, Fault::Stop) => failures.push("no recording on disk while the recorder was frozen".into()),
        _ => {}
    }
    match (&final_rec, &final_stdout) {
        (Some((meta, _)), Some(rec)) => {
            failures.extend(all_received_recorded(&out, rec, "once settled").err());
            if fault == Fault::Kill && meta["status"] != "interrupted" {
                failures.push(format!("the restarted recorder did not mark the recording interrupted: {meta}"));
            }
        }
        _ => failures.push("no recording of the session".into()),
    }
    (summary, failures)
}

fn fail_closed_cases(fault: Fault, test: &str) {
    let _serial = serial();
    let mut rng = Rng::for_test(test);
    let demo = Demo::start();
    demo.disable_events();
    let mut recorder = Recorder { demo: &demo, restarted: None };
    let started = Instant::now();
    let mut failed = Vec::new();
    for (i, proto) in [Proto::WebSocket, Proto::Spdy].iter().flat_map(|p| std::iter::repeat_n(*p, CASES_PER_PROTO)).enumerate() {
        let k = rng.in_range(K_RANGE);
        let tag = format!("{fault:?}-{proto}-{i}").to_lowercase();
        let (summary, failures) = fail_closed_case(&demo, &mut recorder, proto, fault, k, &tag);
        eprintln!("stall: {summary}");
        for f in &failures {
            eprintln!("stall:   FAIL {f}");
        }
        failed.extend(failures.into_iter().map(|f| format!("{tag} (K={k}): {f}")));
    }
    eprintln!("stall: {test} took {:.1}s", started.elapsed().as_secs_f64());
    assert!(failed.is_empty(), "seed={} (KUBETAPE_TEST_SEED to replay):\n{}", seed(), failed.join("\n"));
}

#[test]
fn fail_closed_output_reaches_kubectl_only_once_recorded_recorder_frozen() {
    fail_closed_cases(Fault::Stop, "frozen");
}

#[test]
fn fail_closed_output_reaches_kubectl_only_once_recorded_recorder_killed() {
    fail_closed_cases(Fault::Kill, "killed");
}

#[test]
fn fail_open_session_runs_to_completion_through_a_frozen_recorder() {
    let _serial = serial();
    let mut rng = Rng::for_test("fail-open");
    let demo = Demo::start();
    demo.disable_events();
    let recorder = Recorder { demo: &demo, restarted: None };
    let proto = if rng.next() % 2 == 0 { Proto::WebSocket } else { Proto::Spdy };
    let k = rng.in_range(K_RANGE);
    let tag = format!("open-{proto}");
    let alice = Kubectl::new(&demo, "kubeconfig", "1.32", proto);
    let script = numbered_lines(&tag, LINES_FAIL_OPEN);
    let mut run = Running::start(&alice, &["exec", "web-0", "--", "sh", "-c", &script]);
    assert!(run.wait_lines(k, FIRST_LINES_DEADLINE), "kubectl printed only {} lines, wanted {k}", run.lines());
    recorder.signal(libc::SIGSTOP);
    let frozen_at = Instant::now();
    let status = run.wait_exit(FAIL_OPEN_DEADLINE);
    let took = frozen_at.elapsed();
    let (out, err) = run.finish();
    recorder.signal(libc::SIGCONT);
    let rec = settled(&demo, &tag);
    let recorded = rec.as_ref().map(|(_, c)| recorded_stdout(c)).unwrap_or_default();
    eprintln!(
        "stall: {tag}: K={k} received={} recorded={} status={} kubectl={} {:.1}s after the freeze",
        count_lines(&out),
        count_lines(&recorded),
        rec.as_ref().map_or("none".into(), |(m, _)| m["status"].to_string()),
        status.map_or("still running".into(), |s| s.to_string()),
        took.as_secs_f64()
    );
    let expected: String = (0..LINES_FAIL_OPEN).map(|i| format!("line-{i}\n")).collect();
    assert!(status.is_some_and(|s| s.success()), "seed={}: fail-open ran to completion: status={status:?} stderr={err:?}", seed());
    assert_eq!(String::from_utf8_lossy(&out), expected, "seed={}: alice saw every line", seed());
    assert!(rec.is_some(), "the session has a recording");
    assert!(out.starts_with(&recorded), "seed={}: the recording holds only what alice saw, in order", seed());
}
