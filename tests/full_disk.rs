//! The recorder's disk fills up mid-session: the recorder reports and survives, a
//! fail-open session carries on with its recording truncated, a fail-closed one ends
//! with a message; then API events cannot be stored either: fail-closed requests are
//! refused, fail-open ones go on with their events counted as dropped. Needs root (it
//! mounts a 256 KiB tmpfs), as CI runs.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use support::{Demo, Kubectl, OutputExt, Proto, Spawned};

struct Mount(std::path::PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_full_recorder_disk_truncates_fail_open_and_ends_fail_closed() {
    let demo = Demo::start();
    let small = demo.path("small-disk");
    std::fs::create_dir_all(&small).unwrap();
    let status = Command::new("mount").args(["-t", "tmpfs", "-o", "size=256k", "tmpfs"]).arg(&small).status().expect("mount");
    assert!(status.success(), "mounting a tmpfs failed: this test needs root (CI runs as root)");
    let _mount = Mount(small.clone());

    // The recorder again, from its command line, now storing on the small disk.
    demo.kill("recorder");
    let cmdline = std::fs::read_to_string(demo.path("recorder.cmdline")).unwrap();
    let mut args: Vec<String> = cmdline.split_whitespace().skip(1).map(String::from).collect();
    let i = args.iter().position(|a| a == "--storage-dir").unwrap();
    args[i + 1] = small.display().to_string();
    let port: u16 = args[args.iter().position(|a| a == "--listen").unwrap() + 1].rsplit(':').next().unwrap().parse().unwrap();
    let _recorder = Spawned::start(&args, &demo.path("recorder-small.log"));
    support::wait_for_port(port);

    // About 1 MiB of text, four times what the disk holds.
    let script = "i=0; while [ $i -lt 16 ]; do head -c 65536 /dev/zero | tr '\\0' 'a'; echo; i=$((i+1)); sleep 0.05; done; echo done-writing";
    let alice = Kubectl::new(&demo, "kubeconfig", "1.32", Proto::WebSocket);
    let out = alice.run_timeout(&["exec", "web-0", "--", "sh", "-c", script], None, Duration::from_secs(60));
    assert!(out.status.success() && out.stdout_str().ends_with("done-writing"), "fail-open carries on: {}", out.describe());
    assert!(out.stdout.len() > 1_000_000, "all output reached the user");

    let bob = Kubectl::new(&demo, "bob.kubeconfig", "1.32", Proto::WebSocket);
    let out = bob.run_timeout(&["exec", "web-0", "--", "sh", "-c", script], None, Duration::from_secs(60));
    assert!(!out.status.success(), "fail-closed ends: {}", out.describe());
    // Either the session ended with the message, or (disk already full) it never started.
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("must be recorded"), "bob is told why: {err}");
    assert!(!out.stdout_str().contains("done-writing"));

    let deadline = Instant::now() + Duration::from_secs(10);
    while demo.proxy_metric("kubetape_proxy_recordings_truncated_total") < 1 {
        assert!(Instant::now() < deadline, "no truncated recording counted:\n{}", demo.logs());
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = std::fs::read_to_string(demo.path("recorder-small.log")).unwrap();
    assert!(log.contains("No space left on device"), "the recorder says why: {log}");
    assert!(support::port_alive(port), "the recorder survives a full disk");

    // The event segment's last page may still take a few events; then nothing fits.
    let refused = (0..10).find_map(|_| {
        let out = bob.run(&["get", "pods"]);
        (!out.status.success()).then(|| String::from_utf8_lossy(&out.stderr).into_owned())
    });
    let refused = refused.unwrap_or_else(|| panic!("fail-closed requests go on with a full disk:\n{}", demo.logs()));
    assert!(refused.contains("must be recorded"), "bob is told why: {refused}");
    let dropped = demo.proxy_metric("kubetape_proxy_events_dropped_total");
    for _ in 0..3 {
        let out = alice.run(&["get", "pods"]);
        assert!(out.status.success(), "fail-open requests go on: {}", out.describe());
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while demo.proxy_metric("kubetape_proxy_events_dropped_total") <= dropped {
        assert!(Instant::now() < deadline, "alice's lost events are not counted:\n{}", demo.logs());
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = std::fs::read_to_string(demo.path("recorder-small.log")).unwrap();
    assert!(log.contains("event storage failed"), "the recorder says why: {log}");
    assert!(support::port_alive(port), "the recorder survives");
}
