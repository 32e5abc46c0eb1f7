//! A fail-closed user is told the kubetape reason by every kubectl from 1.27 to 1.33,
//! over SPDY and (1.29 on) WebSocket: when a session is refused because nothing can
//! record it, and when the recorder stalls mid-session. kubectl shows a refused
//! upgrade's Status, and mid-session the Status on the error channel only if the
//! WebSocket then closes normally; these tests hold that for each version.

mod support;

use std::time::Duration;

use support::{eventually, kubectl, Demo, Kubectl, OutputExt, Proto};

const VERSIONS: &[&str] = &["1.27", "1.28", "1.29", "1.30", "1.31", "1.32", "1.33"];
/// The words every message about an unrecordable session carries.
const REASON: &str = "must be recorded";

/// Every (version, protocol) pair kubectl supports: SPDY always, WebSocket from 1.29.
fn clients(demo: &Demo) -> Vec<Kubectl> {
    let mut out = Vec::new();
    for v in VERSIONS {
        let k = Kubectl { bin: kubectl(v), kubeconfig: demo.path("bob.kubeconfig"), proto: Proto::Spdy, version: v.to_string() };
        if *v >= "1.29" {
            out.push(Kubectl { proto: Proto::WebSocket, ..k.clone() });
        }
        out.push(k);
    }
    out
}

#[test]
fn refused_sessions_tell_every_kubectl_why() {
    let demo = Demo::start();
    demo.disable_events();
    demo.kill("recorder");
    let mut failures = Vec::new();
    for k in clients(&demo) {
        let marker = format!("ran-{}-{}", k.version, k.proto);
        let out = k.run_timeout(&["exec", "web-0", "--", "touch", &marker], None, Duration::from_secs(30));
        let told = String::from_utf8_lossy(&out.stderr).contains(REASON);
        if out.status.success() || !told || demo.path(&format!("sim-data/default/web-0/{marker}")).exists() {
            failures.push(format!("kubectl {} over {}: {}", k.version, k.proto, out.describe()));
        }
    }
    assert!(failures.is_empty(), "not told why, or the command ran:\n{}", failures.join("\n"));
}

#[test]
fn a_stalled_recorder_tells_every_kubectl_why() {
    let demo = Demo::start();
    demo.disable_events();
    let clients = clients(&demo);
    let script = "i=0; while [ $i -lt 600 ]; do echo line-$i; i=$((i+1)); sleep 0.05; done";
    let running: Vec<_> = clients
        .iter()
        .map(|k| {
            let k = k.clone();
            std::thread::spawn(move || k.run_timeout(&["exec", "web-0", "--", "sh", "-c", script], None, Duration::from_secs(60)))
        })
        .collect();
    // Every session is being recorded before the recorder freezes.
    eventually(Duration::from_secs(30), || {
        let open = demo.recordings().iter().filter(|(m, _)| m["status"] == "recording").count();
        if open == clients.len() {
            Ok(())
        } else {
            Err(format!("{open} of {} sessions started: {:#?}", clients.len(), demo.recordings()))
        }
    });
    demo.signal("recorder", libc::SIGSTOP);
    let outputs: Vec<_> = running.into_iter().map(|t| t.join().expect("kubectl thread")).collect();
    demo.signal("recorder", libc::SIGCONT);
    let failures: Vec<String> = clients
        .iter()
        .zip(&outputs)
        .filter(|(_, out)| out.status.success() || !String::from_utf8_lossy(&out.stderr).contains(REASON) || out.stdout_str().contains("line-599"))
        .map(|(k, out)| format!("kubectl {} over {}: {}", k.version, k.proto, out.describe()))
        .collect();
    assert!(failures.is_empty(), "not told why, or the session ran on unrecorded:\n{}", failures.join("\n"));
}
