//! SIGTERM: the proxy stops accepting and lets open sessions finish.

mod support;

use std::time::Duration;

use support::{eventually, Demo, Kubectl, OutputExt, Proto};

#[test]
fn sigterm_lets_open_sessions_finish() {
    let demo = Demo::start();
    let k = Kubectl::new(&demo, "kubeconfig", "1.32", Proto::WebSocket);
    let session = {
        let k = k.clone();
        std::thread::spawn(move || k.run_timeout(&["exec", "web-0", "--", "sh", "-c", "sleep 2; echo finished"], None, Duration::from_secs(30)))
    };
    // The session is open once its recording is.
    eventually(Duration::from_secs(20), || {
        if demo.recordings().iter().any(|(m, _)| m["status"] == "recording") {
            Ok(())
        } else {
            Err(format!("the session did not start: {}", demo.logs()))
        }
    });
    let proxy = demo.pid("proxy");
    // SAFETY: signalling the demo's proxy child by its recorded pid.
    unsafe { libc::kill(proxy, libc::SIGTERM) };
    // Draining: the listener closes, open sessions go on.
    let port = demo.listen_port("proxy");
    eventually(Duration::from_secs(10), || if support::port_alive(port) { Err("the proxy still accepts after SIGTERM".to_string()) } else { Ok(()) });
    let refused = k.run_timeout(&["get", "pods"], None, Duration::from_secs(20));
    assert!(!refused.status.success(), "new requests are refused while draining: {}", refused.describe());
    let out = session.join().expect("session thread");
    assert!(out.status.success() && out.stdout_str() == "finished", "open session cut short: {}\n{}", out.describe(), demo.logs());
}

#[test]
fn stopping_the_demo_stops_a_component_restarted_by_hand() {
    let demo = Demo::start();
    demo.kill("recorder");
    // As the README says: the command in recorder.cmdline, run from another shell.
    let mut restarted = demo.restart("recorder");
    drop(demo); // SIGTERM to the demo, as Ctrl-C
    eventually(Duration::from_secs(10), || match restarted.0.try_wait() {
        Ok(Some(_)) => Ok(()),
        other => Err(format!("the restarted recorder still runs: {other:?}")),
    });
}
