//! File transfers and port-forwards as structured events, end to end: real kubectl
//! (1.27 over SPDY, 1.32 over SPDY and WebSocket) through the proxy to the simulated
//! cluster, `kubectl cp` both ways and `kubectl port-forward` with bytes each way,
//! judged on the events the recorder stored (its events API) and, for uploads, on the
//! recording holding none of what went in on stdin. The kubelet's own WebSocket
//! port-forward protocol, which no kubectl sends, is driven by a raw client.

mod support;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Stdio;
use std::time::Duration;

use kubetape::wire::ws;
use serde_json::Value;
use support::streams::{self, Answer, Upgrade};
use support::{eventually, Demo, Kubectl, OutputExt, Proto};

/// What every pass runs: the versions and protocols the brief names.
const PASSES: &[(&str, Proto)] = &[("1.27", Proto::Spdy), ("1.32", Proto::Spdy), ("1.32", Proto::WebSocket)];
const EVENT_WAIT: Duration = Duration::from_secs(20);

/// alice's events of `kind` for `resource`, newest first.
fn stream_events(demo: &Demo, resource: &str, kind: &str) -> Vec<Value> {
    let (code, body) = demo.recorder_get(Some("recorder-reader"), &format!("/v1/events?user=alice&resource={resource}&limit=10000"));
    assert_eq!(code, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap_or_default();
    v["items"].as_array().cloned().unwrap_or_default().into_iter().filter(|e| e["kind"] == kind).collect()
}

/// The (name, size) pairs of a FileTransfer event, sorted.
fn files(ev: &Value) -> Vec<(String, u64)> {
    let mut f: Vec<(String, u64)> =
        ev["fileTransfer"]["files"].as_array().into_iter().flatten().map(|f| (f["name"].as_str().unwrap_or("").to_string(), f["size"].as_u64().unwrap_or(0))).collect();
    f.sort();
    f
}

#[test]
fn kubectl_cp_both_ways_lists_names_and_sizes() {
    let demo = Demo::start();
    let local = support::TempDir::new("cp-src");
    // Known sizes, and a marker that must never reach a recording: it goes in on stdin.
    let marker = format!("stdin-only-{}", kubetape::net::random::hex(6));
    let a = marker.repeat(1234 / marker.len() + 1)[..1234].to_string();
    std::fs::create_dir_all(local.0.join("data/sub")).unwrap();
    std::fs::write(local.0.join("data/a.txt"), &a).unwrap();
    std::fs::write(local.0.join("data/sub/b.bin"), vec![7u8; 5000]).unwrap();
    for (version, proto) in PASSES {
        let label = format!("kubectl {version} over {proto}");
        let k = Kubectl::new(&demo, "kubeconfig", version, *proto);
        let remote = format!("xfer-{}", kubetape::net::random::hex(4));
        let up = k.run_timeout(&["cp", local.0.join("data").to_str().unwrap_or_default(), &format!("web-0:{remote}")], None, Duration::from_secs(60));
        assert!(up.status.success(), "{label}: upload: {}", up.describe());
        let back = support::TempDir::new("cp-back");
        let target = back.0.join("copy");
        let down = k.run_timeout(&["cp", &format!("web-0:{remote}"), target.to_str().unwrap_or_default()], None, Duration::from_secs(60));
        assert!(down.status.success(), "{label}: download: {}", down.describe());
        assert_eq!(std::fs::read(target.join("sub/b.bin")).map(|b| b.len()).ok(), Some(5000), "{label}: the copy is whole");

        // An upload extracts into `-C` (the pod's working directory here), its names
        // carrying the remote directory; a download archives the remote directory.
        let on = |ev: &Value, dir: &str| ev["fileTransfer"]["direction"] == dir && ev["fileTransfer"].to_string().contains(&remote);
        let (upload, download) = eventually(EVENT_WAIT, || {
            let evs = stream_events(&demo, "pods/exec", "FileTransfer");
            match (evs.iter().find(|e| on(e, "upload")), evs.iter().find(|e| on(e, "download"))) {
                (Some(u), Some(d)) => Ok((u.clone(), d.clone())),
                _ => Err(format!("{label}: no upload and download events for {remote} in {evs:?}")),
            }
        });
        println!("{label}: upload event {upload}\n{label}: download event {download}");
        for (ev, dir) in [(&upload, "upload"), (&download, "download")] {
            let t = &ev["fileTransfer"];
            assert_eq!(ev["stage"], "StreamComplete", "{label} {dir}: {ev}");
            assert_eq!((t["fileCount"].as_u64(), t["totalBytes"].as_u64(), t["truncated"].as_bool()), (Some(2), Some(6234), Some(false)), "{label} {dir}: {ev}");
            // kubectl 1.32 may close a download once the tar has ended, before the status.
            assert!(t["exitCode"].is_null() || t["exitCode"] == 0, "{label} {dir}: {ev}");
            let names = files(ev);
            assert_eq!(names, [(format!("{remote}/a.txt"), 1234), (format!("{remote}/sub/b.bin"), 5000)], "{label} {dir}: {ev}");
            let session = ev["sessionId"].as_str().unwrap_or_default().to_string();
            assert!(!session.is_empty(), "{label} {dir}: linked to its session: {ev}");
            let (meta, cast) = demo.wait_recording(|m, _| m["id"] == session.as_str());
            assert!(meta["session"]["command"][0] == "tar", "{label} {dir}: the session ran tar: {meta}");
            // A download's tar is stdout, recorded as any output; an upload's is stdin.
            assert_eq!(cast.contains(&marker), dir == "download", "{label} {dir}: stdin never reaches the recording");
        }
        assert_eq!(download["fileTransfer"]["paths"], serde_json::json!([remote]), "{label}: {download}");
        assert_eq!(upload["fileTransfer"]["paths"], serde_json::json!(["."]), "{label}: {upload}");
    }
}

/// A "pod" service on loopback (the simulated pod's network is the host's): takes
/// `expect` bytes from its one connection, answers `reply` bytes, and closes.
fn one_shot_server(expect: usize, reply: usize) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        if let Ok((mut s, _)) = listener.accept() {
            let mut got = vec![0u8; expect];
            if s.read_exact(&mut got).is_ok() {
                let _ = s.write_all(&vec![b'r'; reply]);
            }
        }
    });
    port
}

#[test]
fn kubectl_port_forward_counts_ports_bytes_and_time() {
    let demo = Demo::start();
    let (to_pod, from_pod) = (3000usize, 5000usize);
    for (version, proto) in PASSES {
        let label = format!("kubectl {version} over {proto}");
        let port = one_shot_server(to_pod, from_pod);
        let k = Kubectl::new(&demo, "kubeconfig", version, *proto);
        let mut cmd = k.command(&["port-forward", "pod/web-0", &format!(":{port}")]);
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).stdin(Stdio::null());
        let mut child = cmd.spawn().expect("kubectl port-forward");
        let mut stdout = child.stdout.take().expect("stdout");
        let mut seen = String::new();
        let local = eventually(Duration::from_secs(30), || {
            let mut buf = [0u8; 256];
            match stdout.read(&mut buf) {
                Ok(n) if n > 0 => seen.push_str(&String::from_utf8_lossy(&buf[..n])),
                _ => return Ok(None),
            }
            match seen.lines().find_map(|l| l.strip_prefix("Forwarding from 127.0.0.1:")).and_then(|r| r.split(' ').next()) {
                Some(p) => Ok(Some(p.to_string())),
                None => Err(format!("{label}: no forwarding line in {seen:?}")),
            }
        });
        let local = local.unwrap_or_else(|| panic!("{label}: kubectl port-forward ended: {seen}"));
        let mut c = TcpStream::connect(format!("127.0.0.1:{local}")).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        c.write_all(&vec![b's'; to_pod]).unwrap();
        let mut reply = Vec::new();
        let _ = c.read_to_end(&mut reply);
        assert_eq!(reply.len(), from_pod, "{label}: the round trip");
        let _ = child.kill();
        let _ = child.wait();

        let ev = port_forward_event(&demo, port, &label);
        println!("{label}: {ev}");
        let pf = &ev["portForward"];
        let p = &pf["ports"][0];
        assert_eq!(
            (p["connections"].as_u64(), p["bytesToPod"].as_u64(), p["bytesFromPod"].as_u64(), pf["truncated"].as_bool(), pf["ports"].as_array().map(Vec::len)),
            (Some(1), Some(to_pod as u64), Some(from_pod as u64), Some(false), Some(1)),
            "{label}: {ev}"
        );
        assert!(pf["durationMs"].as_u64().is_some_and(|d| d > 0), "{label}: {ev}");
        assert_eq!((ev["stage"].as_str(), ev["status"].as_u64()), (Some("StreamComplete"), Some(101)), "{label}: {ev}");
        // WebSocket is a GET (SPDY tunnelled in it, answered by the sim); SPDY a POST.
        let verb = if *proto == Proto::WebSocket { "get" } else { "create" };
        assert_eq!(ev["verb"], verb, "{label}: {ev}");
    }
}

/// The PortForward event for `port`, once the recorder has it.
fn port_forward_event(demo: &Demo, port: u16, label: &str) -> Value {
    eventually(EVENT_WAIT, || {
        let evs = stream_events(demo, "pods/portforward", "PortForward");
        evs.into_iter().find(|e| e["portForward"]["ports"][0]["port"] == port).ok_or_else(|| format!("{label}: no PortForward event for port {port}"))
    })
}

#[test]
fn port_forward_over_the_kubelet_channel_protocol_is_counted() {
    let demo = Demo::start();
    let (to_pod, from_pod) = (1500usize, 2500usize);
    let port = one_shot_server(to_pod, from_pod);
    let target = format!("/api/v1/namespaces/default/pods/web-0/portforward?ports={port}");
    let answer = streams::send(&demo.proxy_addr(), &demo.path("kubeconfig"), "GET", &target, Upgrade::WebSocket("v4.channel.k8s.io")).expect("the upgrade");
    let Answer::Switched(mut s) = answer else { panic!("not switched: {}", demo.logs()) };
    assert_eq!(s.subprotocol, "v4.channel.k8s.io");
    // Two frames on the data channel, the second a continuation: to the kubelet's
    // x/net/websocket each is a message starting with its channel byte.
    let data = vec![b's'; to_pod];
    let first = streams::ws_frame(false, ws::OP_BINARY, &[&[0u8][..], &data[..700]].concat());
    let second = streams::ws_frame(true, ws::OP_CONTINUATION, &[&[0u8][..], &data[700..]].concat());
    s.send(&[first, second].concat()).unwrap();
    let got = s.wait(Duration::from_secs(20), |r| r.bytes(0).len() >= 2 + from_pod);
    assert_eq!((&got.bytes(0)[..2], got.bytes(0).len()), (&port.to_le_bytes()[..], 2 + from_pod), "the port, then the pod's answer");
    s.hang_up();
    let ev = port_forward_event(&demo, port, "channel protocol");
    println!("channel protocol: {ev}");
    let p = &ev["portForward"]["ports"][0];
    assert_eq!(
        (p["connections"].as_u64(), p["bytesToPod"].as_u64(), p["bytesFromPod"].as_u64(), ev["portForward"]["truncated"].as_bool()),
        (Some(1), Some(to_pod as u64), Some(from_pod as u64), Some(false)),
        "{ev}"
    );
}
